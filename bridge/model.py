"""Value types shared by the intake, the store, the dispatcher and the inbound router.

A type that more than one module passes around lives here, not in the service that happens to
produce it: a module imports another service for what it does, never only for a type.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal


class SmsState(enum.StrEnum):
    """Life of one outbound SMS (MT). Final states never change again, except by `queue retry`."""

    QUEUED = "queued"  # committed, waiting for its turn (or for a retry time)
    SENDING = "sending"  # claimed by the dispatcher; requeued at start if a crash left it here
    SUBMITTED = "submitted"  # every segment got submit_sm_resp ESME_ROK; waiting for receipts
    DELIVERED = "delivered"  # receipts say every segment reached the handset
    FAILED = "failed"  # permanent error; the library gets a bounce email
    EXPIRED = "expired"  # older than smpp.max_age before it could be sent, or the SMSC gave up
    # Accepted by the carrier, but no final receipt came by smpp.receipt_timeout_s (or none was
    # asked for: smpp.registered_delivery none). Not a failure: no bounce. A receipt that still
    # arrives later settles it as delivered/failed/expired (the only final state that may change).
    UNCONFIRMED = "unconfirmed"

    @property
    def final(self) -> bool:
        return self in (
            SmsState.DELIVERED,
            SmsState.FAILED,
            SmsState.EXPIRED,
            SmsState.UNCONFIRMED,
        )


def new_queue_id() -> str:
    """Short, sortable, unguessable id: 10 hex digits of time + 8 random ones.

    Like Postfix queue ids it appears in every log line and SMTP reply ("250 2.0.0 queued as ...")
    so an operator can follow one message across the whole system.
    """
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class NewSms:
    """An accepted notice for one recipient, as the intake hands it to the store."""

    tenant_id: str
    msisdn: str  # E.164, "+12025550143"
    rcpt_addr: str  # the envelope recipient it came for: "2025550143@sms.example.org"
    source_addr: str  # sending number / sender id on the SMPP side
    envelope_from: str  # "" for a null reverse path (never bounced)
    message_id: str | None
    subject: str
    body: str
    in_reply_to: str | None = None  # email the staff member answered (reply threads)
    kind: str = "notice"  # "notice", "reply" (staff answer), "confirmation" (keyword answers)
    dup_key: str | None = None  # bridge.policy.duplicate_key of tenant, number and text
    urgent: bool = False  # the tenant's urgent header: sent even in quiet hours


@dataclass(frozen=True)
class SmsRecord:
    queue_id: str
    tenant_id: str
    msisdn: str
    rcpt_addr: str
    source_addr: str
    envelope_from: str
    message_id: str | None
    subject: str
    body: str | None  # None once purged (privacy retention)
    state: SmsState
    attempts: int
    reason: str | None
    created_at: float
    updated_at: float
    next_attempt_at: float
    segments: int | None
    coding: str | None
    kind: str = "notice"
    urgent: bool = False


@dataclass(frozen=True)
class OptoutRecord:
    msisdn: str
    scope: str  # the sending number (the "program") the opt-out applies to
    opted_out: bool
    keyword: str | None
    changed_at: float
    actor: str  # "patron" (keyword) or "admin:<who>"


@dataclass(frozen=True)
class EnqueueResult:
    queue_id: str
    duplicate: bool  # an identical (Message-ID, number) was accepted within the dedup window


@dataclass(frozen=True)
class Outgoing:
    """One email: what a builder (bridge/mailbuild.py) returns, the store queues in its mail
    outbox and a transport (bridge/mail_transport.py) sends. The SMTP envelope, the RFC 5322
    bytes (CRLF line ends, 7-bit), and what the bridge needs to know about it."""

    kind: str  # "dsn", "reply", "notification", "report", "fallback"
    # The envelope sender the builder chose. The mailer sends every kind but "dsn" from the
    # email's own bounce address instead (bridge/verp.py); a DSN keeps the null reverse path
    # "" (RFC 3464 §2, RFC 5321 §4.5.5).
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes
    ref: str | None = None  # queue id or inbound id it came from, for logs
    tenant_id: str | None = None  # the library it concerns, when one does
    fallback_of: int | None = None  # the lost email this is the fallback copy of

    @property
    def message_id(self) -> str:
        """The Message-ID field of `data` (RFC 5322 §3.6.4), unfolded. Every email the bridge
        builds has one; bytes without one raise ValueError."""
        found: list[bytes] | None = None
        for line in self.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if found is not None:
                if line[:1] not in (b" ", b"\t"):
                    break
                found.append(line)  # a continuation line (RFC 5322 §2.2.3)
                continue
            name, colon, rest = line.partition(b":")
            if colon and name.lower() == b"message-id":
                found = [rest]
        value = b"".join(found or ()).strip().decode("ascii", "replace")
        if not value:
            raise ValueError("the email has no Message-ID field")
        return value


@dataclass(frozen=True)
class MailRecord:
    """An email of the mail outbox as the mailer claims it."""

    id: int
    attempts: int  # this one included
    mail: Outgoing


@dataclass(frozen=True)
class Failure:
    """Why a message ended without delivery, in the terms the bounce email needs."""

    state: SmsState  # FAILED or EXPIRED
    reason: str  # plain words for library staff
    status: str  # RFC 3463 code for the DSN, e.g. "5.1.1"
    diagnostic: str  # e.g. "X-SMPP; ESME_RINVDSTADR (0x0000000B)"


@dataclass(frozen=True)
class Decision:
    """A dispatch-time check's answer for one text (bridge/compliance.py answers it)."""

    action: Literal["send", "defer", "drop"]
    until: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class MoOutcome:
    """What one patron message causes; committed atomically by the inbound router."""

    mails: Sequence[Outgoing] = ()
    sms: Sequence[NewSms] = ()
    conversations: Sequence[tuple[str, str, str, str]] = ()
    optout: OptoutRecord | None = None
    # Mixed into the redelivery key. A patron's second STOP after a START is a new message,
    # byte-identical to the first; its key must differ from the first's, or it would be
    # taken for an SMSC redelivery and dropped. Keyword outcomes salt it with the opt-out state.
    dedup_salt: str = ""


@dataclass(frozen=True)
class Peer:
    """One instance's row in the shared heartbeat table (times from the database clock)."""

    instance_id: str
    joined_at: float  # first beat of its current life (reset after its heartbeat expired)
    beat_at: float


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Wake:
    """Wakes the workers after a commit handed them work: `mail` the mailer, `sms` the
    dispatcher. Both poll the store anyway; a wake only saves the wait for the next poll.
    The composition root (bridge/app.py) builds one and passes it to every producer."""

    mail: Callable[[], None] = _nothing
    sms: Callable[[], None] = _nothing
