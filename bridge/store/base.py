"""Types the store speaks in, independent of the backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.model import SmsState


class StoreError(Exception):
    """The store could not read or commit. The edges turn this into 451 / ESME_RX_T_APPN."""


@dataclass(frozen=True)
class Outgoing:
    """An email to queue in the durable mail outbox."""

    kind: str  # "dsn", "reply", "notification", "report", "fallback"
    # The envelope sender the builder chose. The mailer sends every kind but "dsn" from the
    # email's own bounce address instead (bridge/verp.py); a DSN keeps the null reverse path
    # "" (RFC 3464 §2, RFC 5321 §4.5.5).
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes
    ref: str | None = None
    tenant_id: str | None = None  # the library it concerns, when one does
    fallback_of: int | None = None  # the lost email this is the fallback copy of


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
