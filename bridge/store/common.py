"""What both backends decide the same way, apart from SQL: which duplicate checks run in which
order, which cost-lint rows go with which text, how a receipt changes a message, what the purge
keeps, and how rows become records. bridge/store/sqlite.py and bridge/store/postgres.py hold
the SQL and the connection handling; they read rows in the column orders named here.

A multi-step decision that needs the database between its steps (enqueue_sms) is written once
as a plan: a generator that yields what it needs (a lookup, an insert) and is sent the answer.
SQLite runs it with `run_plan` inside its writer thread, PostgreSQL with `run_plan_async` on
its connection; neither repeats the logic.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias, TypeVar

from bridge.model import (
    EnqueueResult,
    MailRecord,
    NewSms,
    OptoutRecord,
    Outgoing,
    SmsRecord,
    SmsState,
)
from bridge.store.base import (
    Activity,
    Bouncer,
    CostLintRow,
    HeldReceipt,
    LostMail,
    MailInfo,
    ReceiptBouncer,
    ReceiptItem,
    ReportData,
    Rollup,
    SameNumber,
    SegmentRef,
    SmsFilter,
    SubmittedSms,
)

Step = TypeVar("Step")
Answer = TypeVar("Answer")
Result = TypeVar("Result")


def run_plan(plan: Generator[Step, Answer, Result], do: Callable[[Step], Answer]) -> Result:
    """Run a plan, answering each step it yields with `do(step)`."""
    try:
        step = next(plan)
        while True:
            step = plan.send(do(step))
    except StopIteration as stop:
        result: Result = stop.value
        return result


async def run_plan_async(
    plan: Generator[Step, Answer, Result], do: Callable[[Step], Awaitable[Answer]]
) -> Result:
    """run_plan for a backend whose database calls are awaited."""
    try:
        step = next(plan)
        while True:
            step = plan.send(await do(step))
    except StopIteration as stop:
        result: Result = stop.value
        return result


# --------------------------------------------------------------------------- enqueue_sms


@dataclass(frozen=True)
class FindDuplicate:
    """Answer the queue id of a text queued since `since` that `item` repeats, or None.

    by="dup_key": the same words from the same library to the same number (an ILS
    regenerating a notice); by="message_id": the same Message-ID to the same number and
    library (a client retrying after a lost 250)."""

    item: NewSms
    by: Literal["dup_key", "message_id"]
    since: float


@dataclass(frozen=True)
class InsertSms:
    """Queue `item`; answer its new queue id."""

    item: NewSms


@dataclass(frozen=True)
class InsertLint:
    """Record the cost lint `row` with the text `queue_id` (of `item`); answer None."""

    queue_id: str
    item: NewSms
    row: CostLintRow


EnqueueStep = FindDuplicate | InsertSms | InsertLint
EnqueuePlan = Generator[EnqueueStep, str | None, list[EnqueueResult]]


def enqueue_plan(
    items: Sequence[NewSms],
    now: float,
    dedup_window_s: float,
    dup_window_s: float,
    lint: Sequence[CostLintRow],
) -> EnqueuePlan:
    """Every recipient of one email, in order: the duplicate-words check first, then the
    Message-ID check (each only when its window is on and the item has the key); a text found
    by either is not queued again. `lint` rows go with the item their item_index names."""
    out: list[EnqueueResult] = []
    for index, item in enumerate(items):
        dup: str | None = None
        if item.dup_key and dup_window_s > 0:
            dup = yield FindDuplicate(item, "dup_key", now - dup_window_s)
        if dup is None and item.message_id and dedup_window_s > 0:
            dup = yield FindDuplicate(item, "message_id", now - dedup_window_s)
        if dup is not None:
            out.append(EnqueueResult(dup, duplicate=True))
            continue
        queue_id = yield InsertSms(item)
        if queue_id is None:
            raise AssertionError("InsertSms answers the new queue id")
        for row in lint:
            if row.item_index == index:
                yield InsertLint(queue_id, item, row)
        out.append(EnqueueResult(queue_id, duplicate=False))
    return out


# --------------------------------------------------------------------------- new rows

# A row to insert: the columns it names and their values in that order. Each backend writes
# the INSERT with its own placeholders (and its own ON CONFLICT, where there is one). Flags go
# as bool: PostgreSQL's columns are boolean, SQLite stores a bool as 0/1.
NewRow: TypeAlias = tuple[str, tuple[object, ...]]


def sms_row(queue_id: str, item: NewSms, now: float) -> NewRow:
    """A new text, queued and due now."""
    return (
        "queue_id, tenant_id, msisdn, rcpt_addr, source_addr, envelope_from, message_id,"
        " subject, body, in_reply_to, state, attempts, created_at, updated_at, next_attempt_at,"
        " kind, dup_key, urgent",
        (
            queue_id,
            item.tenant_id,
            item.msisdn,
            item.rcpt_addr,
            item.source_addr,
            item.envelope_from,
            item.message_id,
            item.subject,
            item.body,
            item.in_reply_to,
            SmsState.QUEUED.value,
            0,
            now,
            now,
            now,
            item.kind,
            item.dup_key,
            item.urgent,
        ),
    )


def lint_row(step: InsertLint, now: float) -> NewRow:
    row = step.row
    return (
        "queue_id, tenant_id, coding, segments, gsm_segments, culprits, template, created_at",
        (
            step.queue_id,
            step.item.tenant_id,
            row.coding,
            row.segments,
            row.gsm_segments,
            row.culprits,
            row.template,
            now,
        ),
    )


def mail_row(mail: Outgoing, now: float) -> NewRow:
    """A new email, queued and due now; its recipients as a JSON list."""
    return (
        "kind, mail_from, rcpt_to, data, state, attempts, next_attempt_at, created_at,"
        " updated_at, ref, tenant_id, fallback_of",
        (
            mail.kind,
            mail.mail_from,
            json.dumps(list(mail.rcpt_to)),
            mail.data,
            "queued",
            0,
            now,
            now,
            now,
            mail.ref,
            mail.tenant_id,
            mail.fallback_of,
        ),
    )


def optout_row(rec: OptoutRecord) -> NewRow:
    """The current opt-out of a number for a sending number (upserted on (msisdn, scope))."""
    return (
        "msisdn, scope, opted_out, keyword, changed_at, actor",
        (rec.msisdn, rec.scope, rec.opted_out, rec.keyword, rec.changed_at, rec.actor),
    )


def optout_audit_row(rec: OptoutRecord, mo_ref: str | None) -> NewRow:
    """The audit trail's record of the same change, with the MO that made it."""
    columns, values = optout_row(rec)
    return columns + ", mo_ref", (*values, mo_ref)


def clears_first_contact(rec: OptoutRecord) -> bool:
    """The first text after an opt-in carries the opt-out footer again."""
    return not rec.opted_out


# --------------------------------------------------------------------------- rows to records

# The column order `sms_record` reads (SELECT {SMS_COLUMNS} FROM sms ...).
SMS_COLUMNS = (
    "queue_id, tenant_id, msisdn, rcpt_addr, source_addr, envelope_from, message_id, subject,"
    " body, state, attempts, reason, created_at, updated_at, next_attempt_at, segments, coding,"
    " kind, urgent"
)


def sms_record(row: Sequence[Any]) -> SmsRecord:
    return SmsRecord(
        queue_id=row[0],
        tenant_id=row[1],
        msisdn=row[2],
        rcpt_addr=row[3],
        source_addr=row[4],
        envelope_from=row[5],
        message_id=row[6],
        subject=row[7],
        body=row[8],
        state=SmsState(row[9]),
        attempts=int(row[10]),
        reason=row[11],
        created_at=float(row[12]),
        updated_at=float(row[13]),
        next_attempt_at=float(row[14]),
        segments=row[15],
        coding=row[16],
        kind=row[17],
        urgent=bool(row[18]),
    )


def as_claimed(rec: SmsRecord, now: float) -> SmsRecord:
    """A queued text as claim_sms hands it out: sending, one more attempt."""
    return replace(rec, state=SmsState.SENDING, attempts=rec.attempts + 1, updated_at=now)


@dataclass(frozen=True)
class SubmittedRows:
    """record_submitted_many's parameters, one list per statement (executemany), in the
    column orders of the SQL in both backends."""

    # (msisdn, scope, first_at, queue_id): INSERT into first_contact, an existing row kept
    first_contacts: list[tuple[str, str, float, str]]
    # (state, reason, submitted_at, segments, coding, shaped, final_at, queue_id): the UPDATE
    # of sms; shaped and final_at None keep the column's value
    updates: list[tuple[str, str | None, float, int, str, str | None, float | None, str]]
    # (queue_id,): DELETE the segments of an earlier attempt
    queue_ids: list[tuple[str]]
    # (queue_id, seq, smsc_message_id, updated_at): INSERT into sms_segment
    segments: list[tuple[str, int, str, float]]


def submitted_rows(items: Sequence[SubmittedSms]) -> SubmittedRows:
    rows = SubmittedRows([], [], [], [])
    for it in items:
        if it.first_contact is not None:
            rows.first_contacts.append((*it.first_contact, it.now, it.queue_id))
        state, reason = (
            (SmsState.SUBMITTED.value, None)
            if it.settle is None
            else (it.settle[0].value, it.settle[1])
        )
        final_at = None if it.settle is None else it.now
        rows.updates.append(
            (state, reason, it.now, it.segments, it.coding, it.shaped, final_at, it.queue_id)
        )
        rows.queue_ids.append((it.queue_id,))
        rows.segments.extend((it.queue_id, i, sid, it.now) for i, sid in enumerate(it.smsc_ids))
    return rows


# SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout (or optout_audit)
def optout_record(row: Sequence[Any]) -> OptoutRecord:
    return OptoutRecord(row[0], row[1], bool(row[2]), row[3], float(row[4]), row[5])


# SELECT id, smsc_message_id, patron, state, error, raw_stat, received_at FROM pending_receipt
def held_receipt(row: Sequence[Any]) -> HeldReceipt:
    return (int(row[0]), row[1], row[2], row[3], row[4], row[5], float(row[6]))


# SELECT id, kind, mail_from, rcpt_to, data, attempts (after the claim), ref, tenant_id,
# fallback_of FROM mail_outbox
def mail_record(row: Sequence[Any]) -> MailRecord:
    return MailRecord(
        id=int(row[0]),
        attempts=int(row[5]),
        mail=Outgoing(
            kind=row[1],
            mail_from=row[2],
            rcpt_to=tuple(json.loads(row[3])),
            data=bytes(row[4]),
            ref=row[6],
            tenant_id=row[7],
            fallback_of=None if row[8] is None else int(row[8]),
        ),
    )


# SELECT id, kind, state, rcpt_to, data, tenant_id, ref, fallback_of FROM mail_outbox
def mail_info(row: Sequence[Any]) -> MailInfo:
    return MailInfo(
        int(row[0]),
        row[1],
        row[2],
        tuple(json.loads(row[3])),
        bytes(row[4]),
        row[5],
        row[6],
        None if row[7] is None else int(row[7]),
    )


# A lost email and the state of its fallback copy (LostMail); `lost_mail` reads its columns.
LOST_SELECT = (
    "SELECT m.id, m.kind, m.state, m.rcpt_to, m.tenant_id, m.reason, m.lost_at,"
    " (SELECT f.state FROM mail_outbox f WHERE f.fallback_of=m.id ORDER BY f.id LIMIT 1)"
    " FROM mail_outbox m"
)


def lost_mail(row: Sequence[Any]) -> LostMail:
    return LostMail(
        int(row[0]),
        row[1],
        row[2],
        tuple(json.loads(row[3])),
        row[4],
        row[5] or "",
        float(row[6]),
        row[7],
    )


def state_counts(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """(state, count) rows as a dict."""
    return {str(r[0]): int(r[1]) for r in rows}


# --------------------------------------------------------------------------- admin listing


def sms_filter(
    flt: SmsFilter, now: float, mark: Callable[[int], str]
) -> tuple[str, list[str | float | int]]:
    """The WHERE clause and arguments of list_sms; `mark(n)` is the backend's placeholder for
    the n-th argument. The LIMIT is the last argument."""
    where: list[str] = ["1=1"]
    args: list[str | float | int] = []
    if flt.state:
        args.append(flt.state)
        where.append(f"state={mark(len(args))}")
    if flt.tenant_id:
        args.append(flt.tenant_id)
        where.append(f"tenant_id={mark(len(args))}")
    if flt.older_than_s is not None:
        args.append(now - flt.older_than_s)
        where.append(f"created_at<={mark(len(args))}")
    args.append(flt.limit)
    return " AND ".join(where), args


# --------------------------------------------------------------------------- receipts


def settled(state: SmsState) -> bool:
    """Final for a receipt: `unconfirmed` is the one final state a late receipt may still
    settle (the carrier did answer after all)."""
    return state.final and state is not SmsState.UNCONFIRMED


def receipt_change(
    rec: SmsRecord, segment_states: list[str], rollup: Rollup
) -> tuple[SmsState, str | None] | None:
    """The message's new state and reason after a receipt, or None when it does not change
    (the roll-up decides nothing yet, the same state, or a message already settled)."""
    decided = rollup(rec, segment_states)
    if decided is None or decided[0] == rec.state or settled(rec.state):
        return None
    return decided


def bounces_on(state: SmsState) -> bool:
    """A receipt that makes a message one of these queues its bounce (DSN) emails."""
    return state in (SmsState.FAILED, SmsState.EXPIRED)


def pick_segment(
    found: Sequence[SegmentRef], patron: str, same_number: SameNumber
) -> SegmentRef | None:
    """The segment a receipt is for among `found` (newest first: SMSCs reuse ids after a
    restart): the first sent to the receipt's patron, or the first when it names none."""
    for seg in found:
        if not patron or same_number(seg.msisdn, patron):
            return seg
    return None


def receipt_tries(item: ReceiptItem) -> list[tuple[str, ...]]:
    """The id lists to look a receipt up by, in order: its exact id; then, for the sweeper, the
    id's other bases, only for a known patron (a short all-digit id reads validly in both
    bases, so another text's segment could carry it)."""
    tries: list[tuple[str, ...]] = [(item.smsc_id,)]
    if item.variants and item.patron:
        tries.append(item.variants)
    return tries


# --------------------------------------------------------------------------- purge


# Texts old enough to delete are in one of these states: final, or submitted and never
# confirmed. Queued and in-flight texts are kept whatever their age.
PURGED_SMS_STATES = ("delivered", "failed", "expired", "unconfirmed", "submitted")
# Emails done with: delivered, refused by the relay, or bounced.
PURGED_MAIL_STATES = ("sent", "dead", "bounced")


def sql_list(values: Sequence[str]) -> str:
    """A constant list for `IN (...)`: the states above (fixed words, never input)."""
    return "(" + ",".join(f"'{v}'" for v in values) + ")"


# --------------------------------------------------------------------------- reports


def report_data(
    states: Sequence[Sequence[Any]],
    failed: Sequence[Sequence[Any]],
    unconfirmed: Sequence[Sequence[Any]],
    changes: Sequence[Sequence[Any]],
    costly: Sequence[Sequence[Any]],
    lost: Sequence[Sequence[Any]],
) -> ReportData:
    """tenant_report's rows as ReportData: (state, count); (msisdn, reason, subject,
    created_at); (msisdn, subject, created_at); (msisdn, opted_out, keyword, changed_at);
    (template, texts, ucs2, segments, culprits); LOST_SELECT rows."""
    return ReportData(
        state_counts(states),
        [(r[0], r[1] or "", r[2] or "", float(r[3])) for r in failed],
        [(r[0], bool(r[1]), r[2], float(r[3])) for r in changes],
        [(r[0], int(r[1]), int(r[2]), int(r[3]), r[4] or "") for r in costly],
        lost_mail=[lost_mail(r) for r in lost],
        unconfirmed=[(r[0], r[1] or "", float(r[2])) for r in unconfirmed],
    )


def activity(
    texts: Sequence[Sequence[Any]],
    replies: Sequence[Sequence[Any]],
    optouts: Sequence[Sequence[Any]],
    to_fix: Sequence[Sequence[Any]],
) -> Activity:
    """activity()'s rows as Activity (see there for the columns)."""
    return Activity(
        [(str(t), int(k), str(st), int(n)) for t, k, st, n in texts],
        [(str(t), int(k), int(n)) for t, k, n in replies],
        [(str(sc), int(k), bool(o), int(n)) for sc, k, o, n in optouts],
        [(str(t), str(m), str(r), int(n)) for t, m, r, n in to_fix],
    )


def cost_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[str, str, int, int, int, str]]:
    """cost_report's rows: (tenant, template, texts, UCS-2 texts, segments, culprits)."""
    return [(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), r[5] or "") for r in rows]


def reassembled(rows: Sequence[Sequence[Any]], total: int) -> list[str] | None:
    """A concatenated MO's texts in order once all `total` parts are in (seq, text) `rows`."""
    if len(rows) < total:
        return None
    return [str(r[1]) for r in rows]


def item_bouncer(bounces: ReceiptBouncer, item: ReceiptItem) -> Bouncer:
    """The bounce builder for one receipt of a group: the DSN names that receipt's own stat
    (apply_receipts hands each text's state change the receipt that caused it)."""

    def bouncer(rec: SmsRecord, state: SmsState, why: str | None) -> Sequence[Outgoing]:
        return bounces(item, rec, state, why)

    return bouncer
