"""Types the store speaks in, independent of the backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.model import SmsState


class StoreError(Exception):
    """The store could not read or commit. The edges turn this into 451 / ESME_RX_T_APPN."""


@dataclass(frozen=True)
class Outgoing:
    """An email to queue in the durable mail outbox."""

    kind: str  # "dsn", "reply", "notification"
    mail_from: str  # "" for the null reverse path (DSNs, RFC 3464 §2)
    rcpt_to: tuple[str, ...]
    data: bytes
    ref: str | None = None


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
