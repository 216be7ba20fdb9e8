"""YAML configuration → one frozen, typed object.

Parsed once at start (and again on reload); nothing else in the bridge reads raw YAML or dicts.
Every model forbids unknown keys, so a typo is an error that names its YAML path instead of a
setting silently ignored. Secrets come from the YAML, a `*_file` key, or `${ENV_VAR}`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import addressing, defaults, gateways
from bridge.eventloop import UVLOOP_MISSING, EventLoopChoice, uvloop_available
from bridge.smpp.pdu import source_ton_npi


class ConfigError(Exception):
    """The configuration cannot be used; `problems` are one line each, YAML path first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError('expected "host:port", e.g. "127.0.0.1:2525"')
    m = re.fullmatch(r"\[(?P<h6>[0-9a-fA-F:.]+)\]:(?P<p1>\d+)|(?P<h>[^:\s]+):(?P<p2>\d+)", value)
    if m is None:
        raise ValueError(f'{value!r} is not "host:port" (IPv6 as "[::1]:2525")')
    host = m.group("h6") or m.group("h")
    port = int(m.group("p1") or m.group("p2"))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return HostPort(host, port)


_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<u>ms|s|m|h|d)?")


def parse_duration(value: object) -> float:
    """Seconds from a number or "250ms", "30s", "5m", "24h", "7d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 24h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group("u") or "s"]
            return float(m.group("n")) * scale
    raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 24h or a number of seconds")


def _check_region(value: str) -> str:
    region = value.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{value!r} is not a region code; use ISO 3166 letters such as US or CA")
    return region


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> Any:
        # Keys ending in _s are durations; accept "30s", "5m", "24h" as well as plain numbers.
        name = info.field_name or ""
        if (name.endswith("_s") or name == "max_age") and value is not None:
            return parse_duration(value)
        return value


# --- sections ------------------------------------------------------------------------------------


class TlsFiles(_Model):
    cert: Path
    key: Path


class SmtpConfig(_Model):
    listen: HostPort = Field(default_factory=lambda: parse_host_port(defaults.SMTP_LISTEN))
    domains: tuple[str, ...] = Field(min_length=1)
    # Carriers' email-to-text gateway domains taken as SMS domains too (bridge/gateways.py);
    # the entry `known` stands for every gateway the bridge knows.
    gateway_domains: tuple[str, ...] = ()
    hostname: str | None = None
    tls: TlsFiles | None = None
    max_message_bytes: int = Field(default=defaults.SMTP_MAX_MESSAGE_BYTES, ge=1024)
    max_recipients: int = Field(default=defaults.SMTP_MAX_RECIPIENTS, ge=1)
    max_connections: int = Field(default=defaults.SMTP_MAX_CONNECTIONS, ge=1)
    max_connections_per_address: int = Field(
        default=defaults.SMTP_MAX_CONNECTIONS_PER_ADDRESS, ge=1
    )
    max_connections_outside_networks: int = Field(
        default=defaults.SMTP_MAX_CONNECTIONS_OUTSIDE_NETWORKS, ge=0
    )
    idle_timeout_s: float = Field(default=defaults.SMTP_IDLE_TIMEOUT_S, gt=0)
    idle_timeout_before_mail_s: float = Field(
        default=defaults.SMTP_IDLE_TIMEOUT_BEFORE_MAIL_S, gt=0
    )
    stress_timeout_s: float = Field(default=defaults.SMTP_STRESS_TIMEOUT_S, gt=0)
    max_backlog: int = Field(default=defaults.SMTP_MAX_BACKLOG, ge=1)
    dedup_window_s: float = Field(default=defaults.DEDUP_WINDOW_S, ge=0)
    auth_failure_delay_step_s: float = Field(default=defaults.AUTH_FAILURE_DELAY_STEP_S, ge=0)
    auth_failure_delay_max_s: float = Field(default=defaults.AUTH_FAILURE_DELAY_MAX_S, ge=0)
    auth_parallel_checks: int = Field(default=defaults.AUTH_PARALLEL_CHECKS, ge=1, le=64)

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> HostPort:
        return parse_host_port(value)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for d in value:
            d = d.strip().lower().rstrip(".")
            if not re.fullmatch(
                r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", d
            ):
                raise ValueError(f"{d!r} is not a domain name")
            out.append(d)
        return tuple(out)

    @field_validator("gateway_domains")
    @classmethod
    def _gateway_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        expanded = gateways.expand(value)
        return cls._domains(expanded) if expanded else ()

    @property
    def sms_domains(self) -> tuple[str, ...]:
        """Every recipient domain texted for: `domains` first, then the gateway domains."""
        return self.domains + tuple(d for d in self.gateway_domains if d not in self.domains)


# Validation-context key: the regions the shared smpp.source_addr is read in.
_SHARED_NUMBER_REGIONS = "shared_number_regions"


def _canonical_source(value: str, regions: tuple[str, ...]) -> str:
    """A configured sending number in the canonical form every MO, receipt and opt-out is
    compared in (bridge.addressing.canonical_address), or ValueError saying how to fix it."""
    readings = {r: addressing.canonical_address(value, r) for r in regions}
    kinds = {a.kind for a in readings.values()}
    if kinds == {"alphanumeric"}:
        # GSM 03.40 §9.1.2.5: an alphanumeric sender is at most 11 GSM-7 characters.
        if len(value.strip()) > 11:
            raise ValueError("an alphanumeric sender has at most 11 characters")
        return value.strip()
    if "other" in kinds or "alphanumeric" in kinds:
        where = " or ".join(regions)
        raise ValueError(
            f"{value!r} is not a valid phone number for region {where}, a short code "
            "(3-8 digits) or an alphanumeric sender id; write the number in international "
            'form with + and the country code, e.g. "+12025550100"'
        )
    values = {a.value for a in readings.values()}
    if len(values) > 1:
        read = ", ".join(f"{a.value} in region {r}" for r, a in readings.items())
        raise ValueError(
            f"{value!r} reads as {read}; write it in international form with + and the "
            "country code so every library on it means the same number"
        )
    (canonical,) = values
    try:
        source_ton_npi(canonical)
    except ValueError as exc:
        raise ValueError(f"{value!r} cannot be sent over SMPP: {exc}") from None
    return canonical


class SmppConfig(_Model):
    host: str = defaults.SMPP_HOST
    port: int = Field(default=defaults.SMPP_PORT, ge=0, le=65535)
    system_id: str = Field(max_length=15)  # SMPP 3.4 §4.1.1: C-Octet String, max 16 incl. NUL
    password: str = Field(max_length=8)  # SMPP 3.4 §4.1.1: max 9 incl. NUL
    system_type: str = Field(default="", max_length=12)
    source_addr: str = Field(min_length=1, max_length=20)
    bind_mode: Literal["transceiver", "transmitter_receiver"] = "transceiver"
    tls: bool = False
    tls_verify: bool = True
    # CA bundle (PEM) for a carrier whose SMSC certificate is signed by a private CA.
    tls_ca_file: Path | None = None
    window: int = Field(default=defaults.SMPP_WINDOW, ge=1, le=1000)
    inbound_window: int = Field(default=defaults.SMPP_INBOUND_WINDOW, ge=1, le=1000)
    max_tps: float = Field(default=defaults.SMPP_MAX_TPS, gt=0)
    enquire_link_s: float = Field(default=defaults.SMPP_ENQUIRE_LINK_S, gt=0)
    enquire_link_timeout_s: float = Field(default=defaults.SMPP_ENQUIRE_LINK_TIMEOUT_S, gt=0)
    response_timeout_s: float = Field(default=defaults.SMPP_RESPONSE_TIMEOUT_S, gt=0)
    reconnect_min_s: float = Field(default=defaults.SMPP_RECONNECT_MIN_S, gt=0)
    reconnect_max_s: float = Field(default=defaults.SMPP_RECONNECT_MAX_S, gt=0)
    throttle_recovery_s: float = Field(default=defaults.SMPP_THROTTLE_RECOVERY_S, gt=0)
    max_age: float = Field(default=defaults.SMPP_MAX_AGE_S, gt=0)
    max_attempts: int = Field(default=defaults.SMPP_MAX_ATTEMPTS, ge=1)
    retry_min_s: float = Field(default=defaults.SMPP_RETRY_MIN_S, ge=0)
    retry_max_s: float = Field(default=defaults.SMPP_RETRY_MAX_S, ge=0)
    drain_timeout_s: float = Field(default=defaults.SMPP_DRAIN_TIMEOUT_S, ge=0)
    # How long segments are concatenated on the carrier: UDH with an 8- or 16-bit reference,
    # SAR TLVs, or the whole text in message_payload (ask the carrier which it supports).
    concat: Literal["udh8", "udh16", "sar", "payload"] = "udh8"
    # Every text reaches a final state: without a final receipt by then it is `unconfirmed`.
    # At most 30 days: the relative validity_period (SMPP 3.4 §7.1.1.2) is written in days here.
    receipt_timeout_s: float = Field(
        default=defaults.SMPP_RECEIPT_TIMEOUT_S, ge=1, le=30 * 24 * 3600.0
    )
    # Which receipts to ask for (submit_sm registered_delivery, SMPP 3.4 §5.2.17): "all" (1),
    # "failures" (2: a text with no failure receipt by receipt_timeout_s counts as delivered),
    # "none" (0: a text is final, `unconfirmed`, once the carrier accepts it).
    registered_delivery: Literal["all", "failures", "none"] = defaults.SMPP_REGISTERED_DELIVERY
    # Send receipt_timeout_s as the submit_sm validity_period; false for a carrier that refuses
    # the field (ESME_RINVEXPIRY) or applies its own.
    send_validity_period: bool = defaults.SMPP_SEND_VALIDITY_PERIOD
    receipts_missing_after_submits: int = Field(
        default=defaults.SMPP_RECEIPTS_MISSING_AFTER_SUBMITS, ge=1
    )
    receipts_missing_after_s: float = Field(default=defaults.SMPP_RECEIPTS_MISSING_AFTER_S, gt=0)
    # Start the bundled SMSC simulator in-process at host:port (the embedded default for trying
    # the bridge out; never with a real carrier).
    simulator: bool = False

    @field_validator("source_addr")
    @classmethod
    def _source(cls, value: str, info: ValidationInfo) -> str:
        # The shared number has no region of its own: it is read in the region(s) of the
        # tenants that send from it, which load_config_text passes in the validation context.
        regions = (info.context or {}).get(_SHARED_NUMBER_REGIONS) or (defaults.TENANT_REGION,)
        return _canonical_source(value, tuple(regions))


class StoreConfig(_Model):
    path: Path = Path(defaults.STORE_PATH)
    # postgresql://user@host/db selects PostgreSQL (several bridge instances sharing one
    # queue); without it, SQLite at `path`.
    url: str | None = None
    # PostgreSQL: a claimed message whose instance stopped renewing this lease is taken over.
    lease_s: float = Field(default=defaults.STORE_LEASE_S, gt=0)
    # PostgreSQL: this instance's name in the shared database (its claims and heartbeat). Keep
    # it stable across restarts so a restart takes back its own in-flight work at once;
    # default: the host name.
    instance_id: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("store.url must be a postgresql:// URL (or leave it out for SQLite)")
        return value


class MailConfig(_Model):
    from_: str = Field(alias="from")
    relay: HostPort | None = None
    starttls: Literal["auto", "always", "never"] = "auto"
    tls_verify: bool = True
    username: str | None = None
    password: str | None = None
    maildir: Path = Path(defaults.MAIL_MAILDIR)
    timeout_s: float = Field(default=defaults.MAIL_TIMEOUT_S, gt=0)
    max_attempts: int = Field(default=defaults.MAIL_MAX_ATTEMPTS, ge=1)
    retry_min_s: float = Field(default=defaults.MAIL_RETRY_MIN_S, ge=0)
    retry_max_s: float = Field(default=defaults.MAIL_RETRY_MAX_S, ge=0)
    # Bounces (bridge/verp.py): every email but a DSN leaves from its own address
    # bounce+<id>-<token>@<bounce_domain>; default domain: smtp.domains[0], which the
    # library's mail server already routes to the bridge. The token is an HMAC with
    # verp_secret; default: a random secret made once and kept in the store (shared by every
    # instance on PostgreSQL). Changing it makes bounces for emails already sent unreadable.
    bounce_domain: str | None = None
    verp_secret: str | None = Field(default=None, min_length=defaults.VERP_SECRET_MIN_CHARS)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(
            r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+",
            value,
        ):
            raise ValueError(
                f"{value!r} is not a domain name; give a domain your mail server routes to"
                " the bridge, such as sms.example.org"
            )
        return value.lower() if value else value

    @field_validator("relay", mode="before")
    @classmethod
    def _relay(cls, value: object) -> HostPort | None:
        return None if value is None else parse_host_port(value)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value):
            raise ValueError(f"{value!r} is not an address like sms-bridge@sms.example.org")
        return value


class InboundConfig(_Model):
    """Patron replies (MO) and receipts."""

    # A patron's reply goes to the library that texted them last from that number within
    # this window (shared sending numbers); after it, to fallback_to or the patron gets
    # unknown_reply_text.
    reply_window_s: float = Field(default=defaults.INBOUND_REPLY_WINDOW_S, gt=0)
    fallback_to: str | None = None
    unknown_reply_text: str | None = defaults.INBOUND_UNKNOWN_REPLY_TEXT
    # The SMSC redelivers a deliver_sm whose response it missed; the same MO within this
    # window is acknowledged without a second email.
    dedup_window_s: float = Field(default=defaults.INBOUND_DEDUP_WINDOW_S, ge=0)
    # A receipt whose id matches no submitted segment exactly is held (its submit_sm_resp may
    # not be committed yet). After this delay the hex/decimal forms of its id are tried too
    # (carriers that give a hex id in submit_sm_resp and a decimal one in the receipt), and
    # after receipt_hold_s it is dropped as unknown.
    receipt_match_delay_s: float = Field(default=defaults.INBOUND_RECEIPT_MATCH_DELAY_S, ge=0)
    receipt_hold_s: float = Field(default=defaults.INBOUND_RECEIPT_HOLD_S, gt=0)
    # Parts of a long MO still missing after this long are passed on as they are.
    reassembly_timeout_s: float = Field(default=defaults.INBOUND_REASSEMBLY_TIMEOUT_S, gt=0)


class QuietHoursConfig(_Model):
    """No texts between start and end (local time); deferred texts go out when it ends."""

    start: str = defaults.QUIET_START
    end: str = defaults.QUIET_END
    timezone: str = defaults.QUIET_TIMEZONE
    # Use the patron's own time zone when the number tells it unambiguously.
    use_recipient_timezone: bool = False

    @model_validator(mode="after")
    def _check(self) -> QuietHoursConfig:
        from bridge.policy import QuietHours, validate_quiet_hours

        validate_quiet_hours(
            QuietHours(self.start, self.end, self.timezone, self.use_recipient_timezone)
        )
        return self


class FrequencyCapConfig(_Model):
    max_messages: int = Field(ge=1)
    per_s: float = Field(gt=0)
    mode: Literal["defer", "refuse"] = "defer"


class ComplianceConfig(_Model):
    """Keywords (CTIA / FCC 47 CFR 64.1200(a)(10)) and the texts that answer them."""

    optout_keywords: tuple[str, ...] = defaults.OPTOUT_KEYWORDS
    optin_keywords: tuple[str, ...] = defaults.OPTIN_KEYWORDS
    help_keywords: tuple[str, ...] = defaults.HELP_KEYWORDS
    # Named in every confirmation and help text, e.g. "Riverside Libraries text alerts".
    program_name: str = Field(default=defaults.PROGRAM_NAME, min_length=1, max_length=40)
    # How to get help, e.g. "call 202-555-0100" (in the HELP answer).
    help_contact: str = Field(default=defaults.HELP_CONTACT, min_length=1, max_length=45)
    optout_text: str | None = None
    optin_text: str | None = None
    help_text: str | None = None
    # Sent after START and, with welcome_on_first_contact, before a patron's first notice:
    # program name, expected frequency, rates, HELP and STOP.
    welcome_text: str | None = None
    welcome_on_first_contact: bool = False
    # For the welcome text, e.g. "up to 4 msgs/month".
    frequency_text: str = Field(default=defaults.FREQUENCY_TEXT, max_length=40)

    @field_validator("optout_keywords", "optin_keywords", "help_keywords", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            for word in value:
                if isinstance(word, bool):
                    # YAML 1.1 reads bare YES/NO/ON/OFF as booleans.
                    raise ValueError('a keyword read as true/false: quote it, e.g. "YES"')
        return value

    @model_validator(mode="after")
    def _check(self) -> ComplianceConfig:
        from bridge.policy import validate_keywords

        validate_keywords(self.keyword_set(()))
        return self

    def keyword_set(self, custom: tuple[str, ...]) -> Any:
        from bridge.policy import KeywordSet

        return KeywordSet(
            optout=self.optout_keywords,
            optin=self.optin_keywords,
            help=self.help_keywords,
            custom=custom,
        )


class ImapConfig(_Model):
    """A mailbox the bridge pulls notices from (for an ILS that can only mail a mailbox)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")  # in logs and the stored UID state
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)  # default 993 (tls) or 143
    security: Literal["tls", "starttls", "none"] = "tls"
    tls_verify: bool = True
    tls_ca_file: Path | None = None  # CA bundle (PEM) for a server with a private CA
    user: str
    password: str
    mailbox: str = "INBOX"
    # The library these notices belong to; without it, a notice's From must match one
    # tenant's senders.
    tenant: str | None = None
    # After a notice is committed: mark it \Seen, move it to move_to, or delete it.
    after: Literal["seen", "move", "delete"] = "seen"
    move_to: str | None = None
    # Notices that cannot be sent (bad number, opted out, no text) go here, with a bounce to
    # their sender, so they are never retried forever.
    error_folder: str = defaults.IMAP_ERROR_FOLDER
    poll_s: float = Field(default=defaults.IMAP_POLL_S, gt=0)
    # RFC 2177 §3: servers may drop IDLE after 30 minutes; re-issue it before that.
    idle_renew_s: float = Field(default=defaults.IMAP_IDLE_RENEW_S, gt=0, le=29 * 60)
    timeout_s: float = Field(default=defaults.IMAP_TIMEOUT_S, gt=0)
    reconnect_min_s: float = Field(default=defaults.IMAP_RECONNECT_MIN_S, gt=0)
    reconnect_max_s: float = Field(default=defaults.IMAP_RECONNECT_MAX_S, gt=0)

    @model_validator(mode="after")
    def _after(self) -> ImapConfig:
        if self.after == "move" and not self.move_to:
            raise ValueError("after: move needs move_to (a folder name)")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)


class AdminConfig(_Model):
    """The HTTP listener for /metrics, /healthz and the status page. It has no
    authentication: keep it on loopback (or behind a reverse proxy that adds some)."""

    listen: HostPort | None = Field(default_factory=lambda: parse_host_port(defaults.ADMIN_LISTEN))

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> HostPort | None:
        return None if value is None else parse_host_port(value)


class PrivacyConfig(_Model):
    """What the bridge keeps about patrons, and for how long (library patron privacy)."""

    # Message text is erased this long after a text is final (delivered, failed, expired).
    retain_bodies_days: float = Field(default=defaults.PRIVACY_RETAIN_BODIES_DAYS, ge=0)
    # The rest of a message's record (number, state, times, reason) is deleted after this.
    retain_metadata_days: float = Field(default=defaults.PRIVACY_RETAIN_METADATA_DAYS, ge=1)


class ReportsConfig(_Model):
    """A scheduled email per library: sent, delivered, failed (with the numbers to fix),
    opt-outs, and the notices that cost most."""

    every_days: float | None = Field(default=defaults.REPORT_EVERY_DAYS, gt=0)  # null: off


class LogConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class RunConfig(_Model):
    """The process itself. event_loop: asyncio (default), uvloop, or auto (uvloop when it is
    installed); see bridge/eventloop.py. Read at start only."""

    event_loop: EventLoopChoice = defaults.EVENT_LOOP

    @field_validator("event_loop")
    @classmethod
    def _installed(cls, value: EventLoopChoice) -> EventLoopChoice:
        if value == "uvloop" and not uvloop_available():
            raise ValueError(UVLOOP_MISSING)
        return value


_NOREPLY = re.compile(r"^(no-?reply|do-?not-?reply|donotreply|mailer-daemon)[@+.-]", re.I)
_HASH = re.compile(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+")


class TenantConfig(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = Field(min_length=1)
    senders: tuple[str, ...] = Field(min_length=1)
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    users: Mapping[str, str] = Field(default_factory=dict)
    reply_to: str | None = None
    region: Annotated[str, AfterValidator(_check_region)] = defaults.TENANT_REGION
    # Sending number for this library; default: smpp.source_addr (shared number). Read in
    # `region` when written without a country code; stored as E.164 (+12025550100).
    source_addr: str | None = Field(default=None, min_length=1, max_length=20)
    # Email → SMS text (see bridge/emailparse.py).
    subject: Literal["ignore", "prepend", "only"] = "ignore"
    start_delimiter: str | None = None
    end_marker: str | None = None
    keep_signature: bool = False
    fold_accents: bool = False
    max_segments: int = Field(default=defaults.TENANT_MAX_SEGMENTS, ge=1, le=255)
    on_too_long: Literal["truncate", "fail"] = "truncate"
    # Bounce emails (RFC 3464) for failed texts: to the envelope sender, a fixed address, or both.
    bounce_to: str | None = None
    bounce_mode: Literal["sender", "fixed", "both"] = "sender"
    # Compliance (issue: STOP/START/HELP, quiet hours, caps, duplicates).
    quiet_hours: QuietHoursConfig | None = QuietHoursConfig()
    # A notice with this header (any value but "no") is sent even in quiet hours.
    urgent_header: str | None = None
    frequency_cap: FrequencyCapConfig | None = None
    # The same text to the same number within this window is sent once (the ILS often
    # regenerates notices with a new Message-ID). 0 turns it off.
    duplicate_window_s: float = Field(default=defaults.DUPLICATE_WINDOW_S, ge=0)
    # A notice to a number that opted out: refuse it at RCPT (550 5.7.1), or accept it and
    # send the library a bounce email.
    optout_mode: Literal["refuse", "bounce"] = "refuse"
    # Extra MO keywords forwarded to the library as tagged emails, e.g. [RENEW].
    keywords: tuple[str, ...] = ()
    # Shaping (bridge/shaping.py): who is texting, and how to stop it.
    # Put before a notice that does not already start with it, e.g. "Riverside Library: ".
    prefix: str | None = None
    # On the first text this library's sending number sends a patron (and the first after an
    # opt-in); on every text with footer_every_time.
    footer: str | None = defaults.FIRST_CONTACT_FOOTER
    footer_every_time: bool = False
    # When prefix or footer would cost one more segment: drop_footer, shorten (cut the
    # notice, ending in "..."), or accept (pay the extra segment).
    extra_segment: Literal["drop_footer", "shorten", "accept"] = "drop_footer"
    # What a patron who replies gets when this library takes no replies (no reply_to, or a
    # no-reply address): one SMS with this text.
    noreply_text: str | None = None
    # Where the scheduled report goes (default: reply_to, else bounce_to).
    report_to: str | None = None
    # Where a patron's reply goes when reply_to bounces it (a broken alias, a full mailbox):
    # one copy, with the reason (default: bounce_to, else inbound.fallback_to).
    fallback_to: str | None = None

    @field_validator("source_addr")
    @classmethod
    def _source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        region = info.data.get("region")
        if region is None:
            return value  # the region's own error is reported; nothing to read it in
        return _canonical_source(value, (region,))

    @field_validator("networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            out = []
            for item in value:
                try:
                    out.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError as exc:
                    raise ValueError(
                        f"{item!r} is not a CIDR network such as 192.0.2.0/24"
                    ) from exc
            return tuple(out)
        return value

    @field_validator("users")
    @classmethod
    def _users(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        for login, hashed in value.items():
            if not _HASH.fullmatch(hashed):
                raise ValueError(
                    f"the password for user {login!r} must be a hash from "
                    "`sms-bridge hash-password`, not the password itself"
                )
        return dict(value)

    @property
    def zone(self) -> str:
        """The library's local time zone (its quiet hours'), for "today" on the status page."""
        return (
            self.quiet_hours.timezone if self.quiet_hours is not None else defaults.QUIET_TIMEZONE
        )

    @property
    def takes_replies(self) -> bool:
        return self.reply_to is not None and not _NOREPLY.match(self.reply_to)

    @property
    def noreply_answer(self) -> str:
        return self.noreply_text or (
            f"{self.name} cannot read replies to this number. Please contact the library."
        )

    @model_validator(mode="after")
    def _bounce(self) -> TenantConfig:
        if self.bounce_mode != "sender" and not self.bounce_to:
            raise ValueError(f"bounce_mode {self.bounce_mode!r} needs bounce_to (an address)")
        return self


class Config(_Model):
    smtp: SmtpConfig
    smpp: SmppConfig
    store: StoreConfig = StoreConfig()
    mail: MailConfig
    inbound: InboundConfig = InboundConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    imap: tuple[ImapConfig, ...] = ()
    admin: AdminConfig = AdminConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    reports: ReportsConfig = ReportsConfig()
    log: LogConfig = LogConfig()
    run: RunConfig = RunConfig()
    tenants: tuple[TenantConfig, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out is YAML null: it means "all defaults".
        if isinstance(data, dict):
            for key in (
                "store",
                "inbound",
                "compliance",
                "log",
                "admin",
                "privacy",
                "reports",
                "run",
            ):
                if key in data and data[key] is None:
                    data = {**data, key: {}}
            if data.get("imap", ()) is None:
                data = {**data, "imap": ()}
        return data

    @model_validator(mode="after")
    def _unique(self) -> Config:
        ids = {t.id for t in self.tenants}
        for box in self.imap:
            if box.tenant is not None and box.tenant not in ids:
                raise ValueError(f"imap {box.name!r}: tenant {box.tenant!r} is not a tenant id")
        if len({b.name for b in self.imap}) != len(self.imap):
            raise ValueError("imap names must be unique")
        seen: set[str] = set()
        users: set[str] = set()
        for t in self.tenants:
            if t.id in seen:
                raise ValueError(f"tenant id {t.id!r} appears twice; ids must be unique")
            seen.add(t.id)
            for login in t.users:
                if login in users:
                    raise ValueError(
                        f"SMTP user {login!r} belongs to two tenants; logins must be unique"
                    )
                users.add(login)
        return self

    def tenant(self, tenant_id: str) -> TenantConfig:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise KeyError(tenant_id)

    def source_addr_for(self, tenant: TenantConfig) -> str:
        return tenant.source_addr or self.smpp.source_addr

    def tenant_or_none(self, tenant_id: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)


# --- loading -------------------------------------------------------------------------------------

# Keys whose value may instead come from a file, `<key>_file: /path` (systemd's LoadCredential
# puts secrets in files). Other keys ending in _file (tls_ca_file) are paths, not secrets.
_SECRET_KEYS = frozenset({"password", "username", "user", "system_id"})

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _resolve_secrets(node: Any, path: str, base: Path, problems: list[str]) -> Any:
    """Expand `${ENV}` in strings and turn `password_file: F` into `password: <contents of F>`."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.endswith("_file") and key[:-5] in _SECRET_KEYS:
                target = key[: -len("_file")]
                if target in node:
                    problems.append(f"{sub}: give either {target} or {key}, not both")
                    continue
                # The path may use ${ENV} too: ${CREDENTIALS_DIRECTORY}/smpp-password is how
                # systemd's LoadCredential= hands a secret over (systemd.exec(5)).
                file = Path(str(_resolve_secrets(value, sub, base, problems)))
                file = file if file.is_absolute() else base / file
                try:
                    out[target] = file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    problems.append(f"{sub}: cannot read {file}: {exc.strerror}")
                continue
            out[key] = _resolve_secrets(value, sub, base, problems)
        return out
    if isinstance(node, list):
        return [_resolve_secrets(v, f"{path}[{i}]", base, problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def env(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                problems.append(f"{path}: environment variable {m.group(1)} is not set")
                return ""
            return value

        return _ENV.sub(env, node)
    return node


def _yaml_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each YAML path to its line number so errors can say where to look."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_HINTS = {
    "extra_forbidden": "unknown key; check the spelling against config.example.yaml",
    "missing": "required key is missing; see config.example.yaml",
}


def _format_errors(exc: ValidationError, lines: Mapping[tuple[str | int, ...], int]) -> list[str]:
    problems = []
    errors = exc.errors()
    for err in errors:
        # pydantic adds "should have at least 1 item" for a list whose only item failed: noise.
        if err["type"] == "too_short" and any(
            len(o["loc"]) > len(err["loc"]) and o["loc"][: len(err["loc"])] == err["loc"]
            for o in errors
        ):
            continue
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic reports the alias-less name for "from"
        loc = tuple("from" if p == "from_" else p for p in loc)
        msg = _HINTS.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        line = None
        for n in range(len(loc), -1, -1):
            line = lines.get(loc[:n])
            if line is not None:
                break
        where = f" (line {line})" if line else ""
        problems.append(f"{_dotted(loc)}{where}: {msg}")
    return problems


def load_config_text(text: str, base: Path = Path(".")) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"the file is not valid YAML{where}: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(["the file must be a YAML mapping with smtp:, smpp:, mail:, tenants:"])
    problems: list[str] = []
    resolved = _resolve_secrets(raw, "", base, problems)
    if problems:
        raise ConfigError(problems)
    try:
        cfg = Config.model_validate(
            resolved, context={_SHARED_NUMBER_REGIONS: _shared_number_regions(resolved)}
        )
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, _yaml_lines(text))) from None
    # Relative paths are relative to the config file, like most daemons' configs.
    return cfg.model_copy(
        update={
            "store": cfg.store.model_copy(update={"path": _rebase(cfg.store.path, base)}),
            "mail": cfg.mail.model_copy(update={"maildir": _rebase(cfg.mail.maildir, base)}),
        }
    )


def _shared_number_regions(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The regions of the tenants sending from smpp.source_addr (those without their own
    source_addr), in which a national-form shared number is read; the first tenant's when
    every tenant has its own. Invalid regions are left to the tenant's own validation."""
    tenants = raw.get("tenants")
    if not isinstance(tenants, list):
        return (defaults.TENANT_REGION,)
    regions: list[str] = []
    for t in tenants:
        if not isinstance(t, Mapping) or t.get("source_addr"):
            continue
        region = str(t.get("region") or defaults.TENANT_REGION).upper()
        if region in phonenumbers.SUPPORTED_REGIONS and region not in regions:
            regions.append(region)
    if not regions and tenants and isinstance(tenants[0], Mapping):
        region = str(tenants[0].get("region") or defaults.TENANT_REGION).upper()
        if region in phonenumbers.SUPPORTED_REGIONS:
            regions.append(region)
    return tuple(regions) or (defaults.TENANT_REGION,)


def _rebase(p: Path, base: Path) -> Path:
    return p if p.is_absolute() else base / p


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None
    return load_config_text(text, path.resolve().parent)


def summary(cfg: Config) -> Iterator[str]:
    """Short human summary for `check-config`."""
    tls = "STARTTLS" if cfg.smtp.tls else "no TLS"
    yield f"SMTP intake  {cfg.smtp.listen} ({tls}) for {', '.join(cfg.smtp.domains)}"
    sim = " (bundled simulator)" if cfg.smpp.simulator else ""
    yield (
        f"SMSC         {cfg.smpp.host}:{cfg.smpp.port}{sim} as {cfg.smpp.system_id}, "
        f"{cfg.smpp.bind_mode}, window {cfg.smpp.window}, {cfg.smpp.max_tps:g} msg/s"
    )
    rd = cfg.smpp.registered_delivery
    yield (
        f"receipts     {rd}; no final receipt within {cfg.smpp.receipt_timeout_s / 3600:g} h:"
        f" {'delivered' if rd == 'failures' else 'unconfirmed'}"
        if rd != "none"
        else "receipts     none asked for: texts are 'unconfirmed' once the carrier accepts them"
    )
    yield f"store        SQLite {cfg.store.path}"
    relay = f"relay {cfg.mail.relay}" if cfg.mail.relay else f"Maildir {cfg.mail.maildir}"
    yield f"mail out     {relay} from {cfg.mail.from_}"
    if cfg.admin.listen is not None:
        yield f"admin HTTP   http://{cfg.admin.listen}/ (status page, /metrics, /healthz)"
    for box in cfg.imap:
        yield f"IMAP         {box.name}: {box.user}@{box.host}:{box.effective_port}/{box.mailbox}"
    for t in cfg.tenants:
        auth = f"{len(t.networks)} network(s), {len(t.users)} user(s)"
        yield f"tenant       {t.id}: {t.name} ({auth}; senders {', '.join(t.senders)})"
