"""Types the store speaks in, independent of the backend, and the interface both backends
(bridge/store/sqlite.py, bridge/store/postgres.py) implement: one Protocol per area, and
`Store`, all of them together. A consumer names the narrowest area it uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from bridge.model import (
    EnqueueResult,
    MailRecord,
    NewSms,
    OptoutRecord,
    Outgoing,
    SmsRecord,
    SmsState,
)


class StoreError(Exception):
    """The store could not read or commit. The edges turn this into 451 / ESME_RX_T_APPN."""


@dataclass(frozen=True)
class MailInfo:
    """One email of the mail outbox as a bounce handler needs it."""

    id: int
    kind: str
    state: str  # "queued", "sent", "dead" (refused by the relay), "bounced" (a DSN came back)
    rcpt_to: tuple[str, ...]
    data: bytes  # empty once sent, except for replies (kept for a fallback copy until purged)
    tenant_id: str | None
    ref: str | None
    fallback_of: int | None


@dataclass(frozen=True)
class LostMail:
    """An email that never reached its recipient, for the status page and reports."""

    id: int
    kind: str
    state: str  # "dead" or "bounced"
    rcpt_to: tuple[str, ...]
    tenant_id: str | None
    reason: str
    lost_at: float
    fallback_state: str | None  # the fallback copy's state, None when there is none


@dataclass(frozen=True)
class SmsFilter:
    state: str | None = None
    tenant_id: str | None = None
    older_than_s: float | None = None
    limit: int = 100


@dataclass(frozen=True)
class SegmentRef:
    """A submitted segment found by its SMSC message id (receipt matching)."""

    queue_id: str
    seq: int
    msisdn: str
    tenant_id: str
    state: SmsState


@dataclass(frozen=True)
class SubmittedSms:
    """A text whose every segment the SMSC accepted, as `record_submitted_many` records it:
    the segments' SMSC ids (receipts may come days later), the first-contact mark (msisdn,
    scope) when this text carried the footer, what shaping did, and `settle`, the final state
    and reason when no receipt will come (smpp.registered_delivery none)."""

    queue_id: str
    smsc_ids: tuple[str, ...]
    segments: int
    coding: str
    now: float
    first_contact: tuple[str, str] | None = None
    shaped: str | None = None
    settle: tuple[SmsState, str] | None = None


@dataclass(frozen=True)
class CostLintRow:
    """A notice that costs more than one GSM-7 segment, and what made it so."""

    item_index: int  # which of the enqueued items it describes
    coding: str
    segments: int
    gsm_segments: int | None  # with accents and punctuation folded, when that helps
    culprits: str  # the characters that forced UCS-2
    template: str  # subject and first words: which ILS template to fix


@dataclass(frozen=True)
class PurgeCounts:
    bodies: int  # message texts erased
    records: int  # message records deleted
    mails: int  # delivered or dead emails deleted


@dataclass(frozen=True)
class ReportData:
    states: dict[str, int]  # notices by state
    failed: list[tuple[str, str, str, float]]  # (msisdn, reason, subject, created_at)
    optout_changes: list[tuple[str, bool, str | None, float]]  # (msisdn, opted_out, keyword, at)
    costly: list[tuple[str, int, int, int, str]]  # (template, texts, ucs2, segments, culprits)
    # accepted by the carrier, never confirmed by a receipt: (msisdn, subject, created_at)
    unconfirmed: list[tuple[str, str, float]] = field(default_factory=list)
    lost_mail: list[LostMail] = field(default_factory=list)  # replies and notices that bounced


# Activity is counted in buckets of this many seconds: fine enough for "today" in any time zone
# (offsets are whole quarter hours), coarse enough that a week is a few hundred rows per library.
ACTIVITY_BUCKET_S = 900


@dataclass(frozen=True)
class Activity:
    """What the status page charts: notices, replies and opt-out changes since a time.

    Times are bucket numbers (`int(t // ACTIVITY_BUCKET_S)`); no patron number is included
    except in `to_fix`, which the page masks.
    """

    texts: list[tuple[str, int, str, int]]  # tenant_id, bucket, state, count (notices)
    replies: list[tuple[str, int, int]]  # tenant_id, bucket, count (replies mailed to staff)
    optouts: list[tuple[str, int, bool, int]]  # scope, bucket, opted_out, count
    to_fix: list[tuple[str, str, str, int]]  # tenant_id, msisdn, reason, failed notices


# A receipt kept until its message's submit_sm_resp is committed:
# (row id, smsc id, patron, state, error, raw stat, received_at).
HeldReceipt: TypeAlias = tuple[int, str, str, str, str | None, str | None, float]

# How a receipt's segment states decide the message's state (bridge/inbound.py), and the bounce
# emails a new final failure produces: both pure, run inside the receipt's transaction.
Rollup: TypeAlias = Callable[[SmsRecord, list[str]], tuple[SmsState, str | None] | None]
Bouncer: TypeAlias = Callable[[SmsRecord, SmsState, str | None], Sequence[Outgoing]]


@dataclass(frozen=True)
class ReceiptItem:
    """One delivery receipt for `apply_receipts`: matched to a segment, applied, or held."""

    smsc_id: str
    patron: str  # canonical (bridge.addressing); "" when the SMSC gave none
    state: str  # the segment state (bridge/smpp/receipts.py)
    error: str | None
    raw: str  # the stat as the SMSC wrote it: the bounce quotes it, a held row keeps it
    # A held receipt tried again: its row is dropped when it matches and kept when not (no
    # second row). None: a fresh receipt, held when nothing matches.
    held_id: int | None = None
    # Other forms of smsc_id (hex/decimal), tried only when the exact id matches nothing and
    # only for the same patron: the sweeper's fallback.
    variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReceiptOutcome:
    """What `apply_receipts` did with one ReceiptItem."""

    segment: SegmentRef | None  # the segment it matched; None: held (or kept held)
    new_state: SmsState | None  # the message's new state, when the receipt changed it


# apply_receipts' bounce builder: Bouncer, told which receipt caused the failure.
ReceiptBouncer: TypeAlias = Callable[
    [ReceiptItem, SmsRecord, SmsState, str | None], Sequence[Outgoing]
]
# Whether a segment's number (first) is the receipt's patron (second): bridge/inbound.py.
SameNumber: TypeAlias = Callable[[str, str], bool]


# --------------------------------------------------------------------------- the interface


class Lifecycle(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


class SmsOutbox(Protocol):
    """The outbound SMS queue: enqueue, claim, record the outcome, retry; admin listing."""

    async def enqueue_sms(
        self,
        items: Sequence[NewSms],
        now: float,
        dedup_window_s: float,
        dup_window_s: float = 0.0,
        lint: Sequence[CostLintRow] = (),
    ) -> list[EnqueueResult]: ...

    async def backlog(self) -> int: ...

    async def requeue_inflight(self, now: float) -> int: ...

    async def claim_sms(self, now: float, limit: int) -> list[SmsRecord]: ...

    async def next_due(self) -> float | None: ...

    async def next_concat_ref(self) -> int: ...

    async def record_submitted_many(self, items: Sequence[SubmittedSms]) -> None: ...

    async def record_retry(
        self, queue_id: str, reason: str, next_at: float, now: float, *, count: bool = True
    ) -> None: ...

    async def record_final(
        self,
        queue_id: str,
        state: SmsState,
        reason: str | None,
        now: float,
        mails: Sequence[Outgoing] = (),
    ) -> None: ...

    async def get_sms(self, queue_id: str) -> SmsRecord | None: ...

    async def list_sms(self, flt: SmsFilter, now: float) -> list[SmsRecord]: ...

    async def retry_sms(self, queue_id: str, now: float) -> bool: ...

    async def drop_sms(self, queue_id: str, now: float) -> bool: ...

    async def counts(self) -> dict[str, int]: ...


class Receipts(Protocol):
    """Delivery receipts: segments by SMSC id, the roll-up, held receipts, the deadline."""

    async def find_segments(self, smsc_ids: Sequence[str]) -> list[SegmentRef]: ...

    async def settle_overdue(
        self, submitted_before: float, state: SmsState, reason: str, now: float, limit: int = 500
    ) -> list[tuple[str, str, str]]: ...

    async def apply_receipts(
        self,
        items: Sequence[ReceiptItem],
        now: float,
        rollup: Rollup,
        bounces: ReceiptBouncer,
        same_number: SameNumber,
    ) -> list[ReceiptOutcome]: ...

    async def held_for(self, smsc_ids: Sequence[str]) -> list[HeldReceipt]: ...

    async def held_receipts(self, older_than: float) -> list[HeldReceipt]: ...

    async def drop_held_receipt(self, row_id: int) -> None: ...


class Inbound(Protocol):
    """Patron messages (MO): concatenated parts, the atomic commit of what one causes, and the
    conversations replies are routed by."""

    async def add_mo_part(
        self, group_key: str, seq: int, total: int, text: str, now: float
    ) -> list[str] | None: ...

    async def stale_mo_groups(
        self, older_than: float
    ) -> list[tuple[str, int, list[tuple[int, str]]]]: ...

    async def commit_mo(
        self,
        dedup_key: str,
        now: float,
        window_s: float,
        *,
        mails: Sequence[Outgoing] = (),
        sms: Sequence[NewSms] = (),
        conversations: Sequence[tuple[str, str, str, str]] = (),
        done_group: str | None = None,
        optout: OptoutRecord | None = None,
    ) -> bool: ...

    async def last_sms_to(
        self, msisdn: str, source_addr: str, since: float
    ) -> SmsRecord | None: ...

    async def conversation_for(self, message_ids: Sequence[str]) -> tuple[str, str] | None: ...


class Optouts(Protocol):
    """Compliance: opt-outs and their audit trail, first contact (the footer), frequency caps."""

    async def optout_status(self, msisdn: str, scope: str) -> OptoutRecord | None: ...

    async def set_optout(self, record: OptoutRecord, mo_ref: str | None = None) -> None: ...

    async def list_optouts(self, scope: str | None = None) -> list[OptoutRecord]: ...

    async def optout_history(self, msisdn: str) -> list[tuple[OptoutRecord, str | None]]: ...

    async def had_first_contact(self, msisdn: str, scope: str) -> bool: ...

    async def mark_first_contact(
        self, msisdn: str, scope: str, queue_id: str, now: float
    ) -> None: ...

    async def sent_times(self, msisdn: str, tenant_id: str, since: float) -> list[float]: ...


class MailOutbox(Protocol):
    """The outbound email queue, lost emails and their fallback copies, bridge-wide settings."""

    async def enqueue_mail(self, mail: Outgoing, now: float) -> int: ...

    async def claim_mail(self, now: float, limit: int) -> list[MailRecord]: ...

    async def mail_done(
        self, mail_id: int, state: str, reason: str | None, now: float, next_at: float = 0.0
    ) -> None: ...

    async def get_mail(self, mail_id: int) -> MailInfo | None: ...

    async def mail_lost(
        self,
        mail_id: int,
        state: str,
        reason: str,
        now: float,
        fallback: Outgoing | None = None,
    ) -> int | None: ...

    async def lost_mail(
        self, since: float, tenant_id: str | None = None, limit: int = 20
    ) -> list[LostMail]: ...

    async def meta_setdefault(self, key: str, value: str) -> str: ...

    async def mail_counts(self) -> dict[str, int]: ...

    async def next_mail_due(self) -> float | None: ...


class Operations(Protocol):
    """What operators and scheduled work read and do: health, figures, reports, the privacy
    purge, once-per-period jobs, the IMAP high-water mark."""

    async def ping(self) -> int: ...

    async def counts(self) -> dict[str, int]: ...

    async def mail_counts(self) -> dict[str, int]: ...

    async def activity(self, since: float) -> Activity: ...

    async def tenant_report(
        self, tenant_id: str, scope: str, since: float, until: float
    ) -> ReportData: ...

    async def cost_report(self, since: float) -> list[tuple[str, str, int, int, int, str]]: ...

    async def purge(
        self, bodies_before: float, records_before: float, now: float
    ) -> PurgeCounts: ...

    async def job_due(self, name: str, now: float, every_s: float) -> bool: ...

    async def imap_state(self, mailbox: str) -> tuple[int, int] | None: ...

    async def set_imap_state(
        self, mailbox: str, uidvalidity: int, last_uid: int, now: float
    ) -> None: ...


class Store(Lifecycle, SmsOutbox, Receipts, Inbound, Optouts, MailOutbox, Operations, Protocol):
    """Everything the bridge keeps: SqliteStore and PostgresStore both are one (checked by
    mypy in bridge/store/__init__.py). What only several instances on PostgreSQL need
    (leases, heartbeats, leadership) is PostgresStore's own."""
