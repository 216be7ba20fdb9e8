"""Admission: the one path every notice takes into the queue, whatever brought it (SMTP or IMAP).

Tenant lookup → recipient addressing → text extraction → durable enqueue. No sockets here: the
SMTP edge (smtp_intake.py) and the IMAP edge turn `Rejected` into protocol replies.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING

from bridge import addressing, defaults, gateways
from bridge.bounce_intake import BounceIntake
from bridge.config import Config, TenantConfig
from bridge.emailparse import (
    NoTextError,
    NoticeLimitError,
    ParsedNotice,
    ParseLimits,
    TextOptions,
    parse_notice,
)
from bridge.model import EnqueueResult, NewSms, Wake
from bridge.policy import cost_lint, duplicate_key_of, duplicate_words
from bridge.store import CostLintRow, Store, StoreError

if TYPE_CHECKING:
    from bridge.metrics import Metrics

log = logging.getLogger(__name__)


class Rejected(Exception):
    """A notice (or one recipient of it) cannot be taken; `code` and `status` are SMTP terms.

    `text` is a sentence for the sender saying what to fix. It ends up in an SMTP reply, so it
    is kept to printable ASCII.
    """

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True)
class Recipient:
    address: str  # as given in RCPT TO
    msisdn: str  # E.164


def text_options(tenant: TenantConfig) -> TextOptions:
    return TextOptions(
        subject=tenant.subject,
        start_delimiter=tenant.start_delimiter,
        end_marker=tenant.end_marker,
        strip_signature=not tenant.keep_signature,
        fold_accents=tenant.fold_accents,
    )


# Notice parsing runs here, never on the event loop (ARCHITECTURE.md principle 12): the loop
# also drives the SMPP session (enquire_link), the systemd watchdog and every other library's
# SMTP session. Threads rather than a process pool: a notice parses in a few hundred
# microseconds, about what pickling it to a process and back would cost, and a process per core
# on a 2-core host would compete with the store. A thread cannot be killed, so the promise that a
# parse ends soon comes from emailparse being linear in bounded input (ParseLimits); CPython's
# GIL switch interval (5 ms) hands the loop the interpreter while a parse runs, and no single C
# call in a parse runs long (see emailparse's HTML tokenizer). One pool per process, shared by
# reloads and by the SMTP and IMAP intakes; a few workers so that one heavy notice does not
# queue the others, not more, since each extra busy thread thins the loop's share of the GIL.
_PARSE_POOL = ThreadPoolExecutor(
    max_workers=defaults.PARSE_WORKERS, thread_name_prefix="sms-bridge-parse"
)

# The end of the header section (RFC 5322 §2.1: the first empty line).
_HEADER_END = re.compile(rb"\r?\n\r?\n")

# Peer addresses whose tenants network_tenants remembers (cleared whole when full).
_NETWORK_CACHE_MAX = 1024

ERR_451_PARSE_BUDGET = "Temporary overload: the notice could not be read in time; try again later"


class Intake:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        *,
        wake: Wake | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.parse_budget_s = defaults.PARSE_TIME_BUDGET_S
        # wake.sms right after a commit, so the dispatcher need not wait for its next poll
        self.wake = wake or Wake()
        self._backlog = 0
        self._backlog_at = float("-inf")
        self._by_network: dict[str, tuple[TenantConfig, ...]] = {}
        # Asked at every RCPT; derived from the configuration, so kept until a reload.
        self._sms_domains = frozenset(cfg.smtp.sms_domains)
        self._limits = ParseLimits(max_bytes=cfg.smtp.max_message_bytes)
        # Per tenant id: the tenant configuration they were made from, and its TextOptions.
        self._options: dict[str, tuple[TenantConfig, TextOptions]] = {}
        # Bounces to the bridge's own addresses take a separate path (null sender, no tenant).
        self.bounces = BounceIntake(cfg, store, clock=clock, wake=self.wake, metrics=metrics)

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self._by_network.clear()
        self._sms_domains = frozenset(cfg.smtp.sms_domains)
        self._limits = ParseLimits(max_bytes=cfg.smtp.max_message_bytes)
        self._options.clear()
        addressing.clear_number_cache()
        self.bounces.reload(cfg)

    # --- who may send ------------------------------------------------------------------------

    def tenant_for_login(self, login: str) -> TenantConfig | None:
        for tenant in self.cfg.tenants:
            if login in tenant.users:
                return tenant
        return None

    def network_tenants(self, peer_ip: str) -> list[TenantConfig]:
        """The tenants whose `networks` hold `peer_ip`: asked at every connection and every
        MAIL, by the same few ILS hosts, so the answer is kept per address until a reload."""
        found = self._by_network.get(peer_ip)
        if found is not None:
            return list(found)
        try:
            ip = ipaddress.ip_address(peer_ip)
        except ValueError:
            return []
        tenants = tuple(t for t in self.cfg.tenants if any(ip in net for net in t.networks))
        if len(self._by_network) >= _NETWORK_CACHE_MAX:
            self._by_network.clear()  # many addresses (a scan): start over, stay bounded
        self._by_network[peer_ip] = tenants
        return list(tenants)

    def tenant_for_sender(self, peer_ip: str, login: str | None, mail_from: str) -> TenantConfig:
        """The tenant this envelope belongs to, or Rejected.

        An authenticated client speaks for its own tenant only; an unauthenticated one for the
        tenants whose `networks` hold its address. Either way the envelope sender must match
        one of that tenant's `senders` patterns: this is what keeps the bridge from being an
        open relay (RFC 5321 §7.1) and a library from texting under another library's name.
        """
        if login is not None:
            tenant = self.tenant_for_login(login)
            candidates = [tenant] if tenant else []
        else:
            candidates = self.network_tenants(peer_ip)
            if not candidates:
                raise Rejected(
                    530,
                    "5.7.0",
                    f"Authentication required: {peer_ip} is not in any library's networks;"
                    " log in with SMTP AUTH or ask the bridge admin to add your network",
                )
        for tenant in candidates:
            if any(addressing.sender_matches(p, mail_from) for p in tenant.senders):
                return tenant
        shown = mail_from or "<>"
        raise Rejected(
            550,
            "5.7.1",
            f"Sender {shown} is not allowed for "
            + (candidates[0].name if len(candidates) == 1 else "this client")
            + "; send from an address listed in the library's senders",
        )

    # --- recipients --------------------------------------------------------------------------

    def recipient(self, tenant: TenantConfig, address: str) -> Recipient:
        try:
            local, domain = addressing.split_address(address)
        except addressing.AddressError as exc:
            raise Rejected(553, "5.1.3", exc.reason) from None
        if domain not in self._sms_domains:
            raise Rejected(
                550,
                "5.7.1",
                f"Relaying denied: {domain} is not an SMS domain of this bridge;"
                f" address texts as <number>@{self.cfg.smtp.domains[0]}",
            )
        try:
            msisdn = addressing.local_part_to_e164(
                gateways.number_part(local, domain), tenant.region
            )
        except addressing.AddressError as exc:
            raise Rejected(553, "5.1.3", exc.reason) from None
        return Recipient(address=address, msisdn=msisdn)

    async def check_optout(self, tenant: TenantConfig, rcpt: Recipient) -> None:
        """RCPT-time refusal for a patron who texted STOP to this library's sending number."""
        if tenant.optout_mode != "refuse":
            return  # accepted; the dispatcher fails it and the library gets a bounce
        scope = self.cfg.source_addr_for(tenant)
        try:
            rec = await self.store.optout_status(rcpt.msisdn, scope)
        except StoreError:
            raise Rejected(451, "4.3.0", "Temporary storage failure; try again later") from None
        if rec is not None and rec.opted_out:
            day = time.strftime("%Y-%m-%d", time.gmtime(rec.changed_at))
            how = f" (replied {rec.keyword})" if rec.keyword else ""
            raise Rejected(
                550,
                "5.7.1",
                f"{addressing.format_msisdn(rcpt.msisdn)} opted out of text messages from "
                f"this library on {day}{how}; update the patron's notice preference in the ILS",
            )

    async def check_backlog(self) -> None:
        """Defer new mail when the queue is over `smtp.max_backlog` (cached for one second)."""
        now = time.monotonic()
        if now - self._backlog_at > 1.0:
            try:
                self._backlog = await self.store.backlog()
            except StoreError as exc:
                log.error("store unavailable at MAIL: %s", exc)
                raise Rejected(451, "4.3.0", "Temporary storage failure; try again later") from None
            self._backlog_at = now
        if self._backlog >= self.cfg.smtp.max_backlog:
            raise Rejected(
                452,
                "4.3.1",
                "Insufficient system storage: the SMS queue is full, try again later",
            )

    # --- the message -------------------------------------------------------------------------

    async def parse(self, tenant: TenantConfig, raw: bytes) -> ParsedNotice:
        """The notice's text, parsed in a worker thread within `parse_budget_s` (or inline
        when it is at most PARSE_INLINE_MAX_BYTES: see bridge/defaults.py).

        Over a ParseLimits bound: 554 (permanent; the reason says what to change). No text: 550.
        Over the time budget: 451, not 554. With bounded, linear parsing a notice takes
        milliseconds and the worst input within the bounds about a second, so a parse that
        outlasts the budget says the host is overloaded (or waiting for a free worker), not
        that the notice is bad: refusing it for good would lose a real library notice, while a
        retry costs the sender nothing (RFC 5321 §4.2.5: 4yz, try again later). The worker is
        left to finish in the background (threads cannot be stopped) and its result dropped.
        """
        limits = self._limits
        opts = self._text_options(tenant)
        try:
            if len(raw) <= defaults.PARSE_INLINE_MAX_BYTES:
                return parse_notice(raw, opts, limits)
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(_PARSE_POOL, parse_notice, raw, opts, limits)
            async with asyncio.timeout(self.parse_budget_s):
                return await work
        except NoticeLimitError as exc:
            raise Rejected(554, exc.status, exc.reason) from None
        except NoTextError as exc:
            raise Rejected(550, "5.6.0", exc.reason) from None
        except TimeoutError:
            log.warning(
                "notice parse over budget tenant=%s bytes=%d budget_s=%.1f",
                tenant.id,
                len(raw),
                self.parse_budget_s,
            )
            raise Rejected(451, "4.3.0", ERR_451_PARSE_BUDGET) from None

    def _text_options(self, tenant: TenantConfig) -> TextOptions:
        """text_options(tenant), made once per tenant configuration."""
        kept = self._options.get(tenant.id)
        if kept is None or kept[0] is not tenant:
            kept = self._options[tenant.id] = (tenant, text_options(tenant))
        return kept[1]

    async def read_headers(self, raw: bytes) -> Message:
        """The header section of `raw` as a compat32 Message (no body), parsed in a worker
        thread: IMAP intake reads From/To/Return-Path before it knows the tenant, and even
        that must not hold the event loop for a large message. Cut at the first empty line
        (RFC 5322 §2.1) so the stdlib parser never walks the body."""
        end = _HEADER_END.search(raw)
        head = raw if end is None else raw[: end.end()]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            _PARSE_POOL, lambda: email.message_from_bytes(head, policy=email.policy.compat32)
        )

    async def _check_thread(
        self, tenant: TenantConfig, notice: ParsedNotice, recipients: Sequence[Recipient]
    ) -> str:
        """The notice's kind, "notice" or a staff "reply" (thread_kind), after the one store
        lookup that needs."""
        refs = thread_refs(notice)
        if not refs:
            return "notice"
        try:
            owner = await self.store.conversation_for(refs)
        except StoreError:
            raise Rejected(451, "4.3.0", "Temporary storage failure; try again later") from None
        kind = thread_kind(tenant, notice, owner)
        if kind == "reply" and owner is not None and any(r.msisdn != owner[1] for r in recipients):
            log.info("staff reply addressed to a number other than the conversation's")
        return kind

    async def accept(
        self,
        tenant: TenantConfig,
        mail_from: str,
        recipients: Sequence[Recipient],
        raw: bytes,
        *,
        via: str,
    ) -> list[EnqueueResult]:
        """Parse and commit. Returns only after the commit (the caller then says 250).

        What becomes of each recipient is decided by `plan_accept` (pure); this method only
        does what needs the world: the parse, the thread lookup, the commit, the wake."""
        notice = await self.parse(tenant, raw)
        kind = await self._check_thread(tenant, notice, recipients)
        plan = plan_accept(
            tenant, mail_from, recipients, notice, kind, self.cfg.source_addr_for(tenant)
        )
        results = await self.store.enqueue_sms(
            plan.items,
            self.clock(),
            self.cfg.smtp.dedup_window_s,
            tenant.duplicate_window_s,
            plan.lint,
        )
        self._backlog += sum(1 for r in results if not r.duplicate)
        self.wake.sms()
        if log.isEnabledFor(logging.INFO):
            for line in accepted_lines(plan, results, tenant.id, via):
                log.info("%s", line)
        return results


# --- planning: what becomes of each recipient (pure) ------------------------------------------


@dataclass(frozen=True)
class AcceptPlan:
    """The store write one accepted notice makes, decided before anything is written.

    `items`: one text per distinct number, in RCPT order (two spellings of one number, e.g.
    "2025550143@" and "+12025550143@", are one patron and get one text). `lint`: the cost-lint
    rows, one per item, when the text costs more than one GSM-7 segment."""

    items: tuple[NewSms, ...]
    lint: tuple[CostLintRow, ...]
    message_id: str | None
    chars: int


def thread_refs(notice: ParsedNotice) -> list[str]:
    """The Message-IDs a notice answers (RFC 5322 §3.6.4: In-Reply-To, then References)."""
    return [r for r in (notice.in_reply_to, *notice.references) if r]


def thread_kind(tenant: TenantConfig, notice: ParsedNotice, owner: tuple[str, str] | None) -> str:
    """A reply to a patron-reply email the bridge sent is a staff answer ("reply"), anything
    else a "notice". `owner`: (tenant id, msisdn) of the conversation the notice's references
    name, None when they name none.

    Only the library that owns the conversation may answer it, and an auto-responder's reply
    (RFC 3834 Auto-Submitted) is never texted to a patron: that is how an out-of-office
    message would otherwise loop between the bridge and a staff inbox.
    """
    if owner is None:
        return "notice"
    if notice.auto_submitted and notice.auto_submitted.strip().lower() != "no":
        raise Rejected(550, "5.7.1", "Automatic replies are not texted to patrons (Auto-Submitted)")
    if owner[0] != tenant.id:
        raise Rejected(
            550,
            "5.7.1",
            "This conversation belongs to another library; only it may answer the patron",
        )
    return "reply"


def is_urgent(tenant: TenantConfig, notice: ParsedNotice) -> bool:
    """The tenant's urgent header says yes (anything but empty, "no", "0", "false")."""
    if tenant.urgent_header is None:
        return False
    value = notice.headers.get(tenant.urgent_header.lower(), "no")
    return value.strip().lower() not in ("", "no", "0", "false")


def plan_accept(
    tenant: TenantConfig,
    mail_from: str,
    recipients: Sequence[Recipient],
    notice: ParsedNotice,
    kind: str,
    source: str,
) -> AcceptPlan:
    """The texts one notice becomes (see AcceptPlan). Pure: no store, no clock, no logging."""
    urgent = is_urgent(tenant, notice)
    # Folded once per notice, not once per recipient: the key differs only by number.
    dup_words = duplicate_words(notice.text) if kind == "notice" else None
    seen: set[str] = set()
    items: list[NewSms] = []
    for rcpt in recipients:
        if rcpt.msisdn in seen:  # two spellings of one number: one text
            continue
        seen.add(rcpt.msisdn)
        items.append(
            NewSms(
                tenant_id=tenant.id,
                msisdn=rcpt.msisdn,
                rcpt_addr=rcpt.address,
                source_addr=source,
                envelope_from=mail_from,
                message_id=notice.message_id,
                subject=notice.subject,
                body=notice.text,
                in_reply_to=notice.in_reply_to,
                kind=kind,
                dup_key=None
                if dup_words is None
                else duplicate_key_of(tenant.id, rcpt.msisdn, dup_words),
                urgent=urgent,
            )
        )
    lint = cost_lint(notice.text)
    lint_rows: tuple[CostLintRow, ...] = ()
    if lint.coding == "ucs2" or lint.segments > 1:
        template = _template(notice)
        culprits = "".join(lint.culprits)
        lint_rows = tuple(
            CostLintRow(i, lint.coding, lint.segments, lint.gsm_segments, culprits, template)
            for i in range(len(items))
        )
    return AcceptPlan(
        items=tuple(items),
        lint=lint_rows,
        message_id=notice.message_id,
        chars=len(notice.text),
    )


def accepted_lines(
    plan: AcceptPlan, results: Sequence[EnqueueResult], tenant_id: str, via: str
) -> list[str]:
    """One log line per text of `plan` once the store answered `results` (same order)."""
    return [
        f"{'duplicate of' if res.duplicate else 'accepted'} queue_id={res.queue_id}"
        f" tenant={tenant_id} via={via} to={addressing.mask_msisdn(item.msisdn)}"
        f" message_id={plan.message_id or '-'} chars={plan.chars}"
        + (" duplicate=yes: not sent again" if res.duplicate else "")
        for item, res in zip(plan.items, results, strict=True)
    ]


def _template(notice: ParsedNotice) -> str:
    """Which ILS template a notice came from, for the cost report: subject and first words."""
    words = " ".join(notice.text.split()[:6])
    return f"{notice.subject[:60]} | {words}"[:120]
