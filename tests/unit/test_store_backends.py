"""The store interface, one set of tests run against both backends (SQLite and PostgreSQL).

`store` is parametrized: every test here runs once per backend. Tests for what only several
instances on PostgreSQL do (leases, SKIP LOCKED, heartbeats, once-only jobs) are at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from bridge.model import NewSms, OptoutRecord, Outgoing, SmsRecord, SmsState
from bridge.ratebudget import Peer, share
from bridge.store import common
from bridge.store.base import (
    ACTIVITY_BUCKET_S,
    CostLintRow,
    ReceiptItem,
    ReceiptOutcome,
    SmsFilter,
    Store,
    SubmittedSms,
)
from bridge.store.postgres import PostgresStore
from bridge.testing.sms_samples import sample_sms
from tests.conftest import Opener, record_submitted, stores_on

PgOpener = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def store(open_store: Opener) -> Store:
    return await open_store()


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[PgOpener]:
    """PostgreSQL only: stores of several instances on one database."""
    async with stores_on("postgres", tmp_path) as opener:
        yield opener  # every store it opens is a PostgresStore


def sms(n: int = 0, message_id: str | None = "<m1@lib>", msisdn: str = "+12025550143") -> NewSms:
    return sample_sms(n, msisdn=msisdn, message_id=message_id, source_addr="12025550100")


BOUNCE = Outgoing("dsn", "", ("ils@riverside.example.org",), b"Subject: x\r\n\r\nx\r\n", ref="q")


# --- outbound queue ------------------------------------------------------------------------------


async def test_enqueue_claim_submit(store: Store) -> None:
    (res,) = await store.enqueue_sms([sms()], now=100.0, dedup_window_s=60)
    assert not res.duplicate
    assert await store.backlog() == 1
    assert await store.claim_sms(now=99.0, limit=10) == []  # not due yet
    (rec,) = await store.claim_sms(now=100.0, limit=10)
    assert rec.state is SmsState.SENDING and rec.attempts == 1 and rec.queue_id == res.queue_id
    assert rec.body == "Your hold 0 is ready" and rec.urgent is False and rec.kind == "notice"
    assert await store.claim_sms(now=100.0, limit=10) == []  # claimed once only
    await record_submitted(store, rec.queue_id, ["a1", "a2"], 2, "gsm7", now=101.0)
    got = await store.get_sms(rec.queue_id)
    assert got is not None and got.state is SmsState.SUBMITTED and got.segments == 2
    assert got.coding == "gsm7" and got.updated_at == 101.0
    assert await store.backlog() == 0


async def test_claim_order_and_limit(store: Store) -> None:
    a, b, c = await store.enqueue_sms(
        [sms(1, None), sms(2, None), sms(3, None)], now=10.0, dedup_window_s=0
    )
    (late,) = await store.enqueue_sms([sms(4, None)], now=5.0, dedup_window_s=0)
    got = await store.claim_sms(now=20.0, limit=3)
    assert got[0].queue_id == late.queue_id
    assert len(got) == 3
    rest = await store.claim_sms(now=20.0, limit=3)
    assert len(rest) == 1
    assert {r.queue_id for r in got + rest} == {a.queue_id, b.queue_id, c.queue_id, late.queue_id}


async def test_dedup_window(store: Store) -> None:
    (a,) = await store.enqueue_sms([sms()], now=100.0, dedup_window_s=60)
    (b,) = await store.enqueue_sms([sms()], now=130.0, dedup_window_s=60)
    assert b.duplicate and b.queue_id == a.queue_id
    (c,) = await store.enqueue_sms([sms()], now=200.0, dedup_window_s=60)
    assert not c.duplicate and c.queue_id != a.queue_id
    (d,) = await store.enqueue_sms([sms(message_id=None)], now=200.0, dedup_window_s=60)
    assert not d.duplicate


async def test_duplicate_words_window_and_cost_lint(store: Store) -> None:
    item = NewSms(**{**sms(1, None).__dict__, "dup_key": "k1"})
    lint = [CostLintRow(0, "ucs2", 2, 1, "’", "Hold ready: Your")]
    (a,) = await store.enqueue_sms([item], now=10.0, dedup_window_s=0, dup_window_s=50, lint=lint)
    (b,) = await store.enqueue_sms([item], now=40.0, dedup_window_s=0, dup_window_s=50)
    assert b.duplicate and b.queue_id == a.queue_id
    (c,) = await store.enqueue_sms([item], now=61.0, dedup_window_s=0, dup_window_s=50)
    assert not c.duplicate
    assert await store.cost_report(since=0.0) == [("riverside", "Hold ready: Your", 1, 1, 2, "’")]
    assert await store.cost_report(since=11.0) == []


async def test_requeue_inflight_and_retry_counting(store: Store) -> None:
    await store.enqueue_sms([sms()], now=1.0, dedup_window_s=0)
    (rec,) = await store.claim_sms(now=1.0, limit=1)
    assert await store.requeue_inflight(now=2.0) == 1
    (rec,) = await store.claim_sms(now=2.0, limit=1)
    assert rec.attempts == 2
    await store.record_retry(rec.queue_id, "link down", next_at=5.0, now=2.0, count=False)
    got = await store.get_sms(rec.queue_id)
    assert got is not None and got.attempts == 1 and got.state is SmsState.QUEUED
    assert got.reason == "link down" and await store.next_due() == 5.0


async def test_final_state_queues_bounce_in_same_transaction(store: Store) -> None:
    await store.enqueue_sms([sms()], now=1.0, dedup_window_s=0)
    (rec,) = await store.claim_sms(now=1.0, limit=1)
    await store.record_final(rec.queue_id, SmsState.FAILED, "bad number", 2.0, [BOUNCE])
    got = await store.get_sms(rec.queue_id)
    assert got is not None and got.state is SmsState.FAILED and got.reason == "bad number"
    assert await store.next_mail_due() == 2.0
    (mail,) = await store.claim_mail(now=2.0, limit=10)
    assert mail.mail == BOUNCE and mail.attempts == 1
    await store.mail_done(mail.id, "queued", "relay down", now=2.0, next_at=10.0)
    assert await store.claim_mail(now=5.0, limit=10) == []
    (again,) = await store.claim_mail(now=10.0, limit=10)
    assert again.attempts == 2
    await store.mail_done(again.id, "sent", None, now=11.0)
    assert await store.mail_counts() == {"sent": 1}
    assert await store.next_mail_due() is None
    assert await store.enqueue_mail(BOUNCE, now=12.0) > again.id


async def test_admin_retry_drop_and_list(store: Store) -> None:
    r1, r2 = await store.enqueue_sms(
        [sms(1, msisdn="+12025550143"), sms(2, msisdn="+12025550167")], now=1.0, dedup_window_s=0
    )
    assert await store.drop_sms(r1.queue_id, now=2.0)
    assert not await store.drop_sms(r1.queue_id, now=2.0)  # already final
    assert await store.counts() == {"queued": 1, "failed": 1}
    assert await store.retry_sms(r1.queue_id, now=3.0)
    listed = await store.list_sms(SmsFilter(state="queued"), now=4.0)
    assert {r.queue_id for r in listed} == {r1.queue_id, r2.queue_id}
    assert listed[0].queue_id == r1.queue_id  # newest first (retry renews it)
    assert await store.list_sms(SmsFilter(tenant_id="elsewhere"), now=4.0) == []
    old = await store.list_sms(SmsFilter(older_than_s=2.5, limit=5), now=4.0)
    assert [r.queue_id for r in old] == [r2.queue_id]
    assert await store.counts() == {"queued": 2}


async def test_privacy_purge(store: Store) -> None:
    await store.enqueue_sms([sms()], now=1.0, dedup_window_s=0)
    (rec,) = await store.claim_sms(now=1.0, limit=1)
    await record_submitted(store, rec.queue_id, ["p1"], 1, "gsm7", now=1.5)
    await store.record_final(rec.queue_id, SmsState.DELIVERED, None, now=2.0)
    counts = await store.purge(bodies_before=1.0, records_before=0.5, now=50.0)
    assert (counts.bodies, counts.records) == (0, 0)
    counts = await store.purge(bodies_before=100.0, records_before=0.5, now=200.0)
    assert counts.bodies == 1
    got = await store.get_sms(rec.queue_id)
    assert got is not None and got.body is None and got.msisdn == "+12025550143"
    counts = await store.purge(bodies_before=100.0, records_before=100.0, now=200.0)
    assert counts.records == 1 and await store.get_sms(rec.queue_id) is None
    assert await store.find_segments(["p1"]) == []


async def test_jobs_run_once_per_period(store: Store) -> None:
    assert not await store.job_due("report:x", now=0.0, every_s=100)  # starts the clock
    assert not await store.job_due("report:x", now=50.0, every_s=100)
    assert await store.job_due("report:x", now=100.0, every_s=100)
    assert not await store.job_due("report:x", now=150.0, every_s=100)


async def test_concat_ref_is_persistent(open_store: Opener) -> None:
    s = await open_store()
    refs = [await s.next_concat_ref() for _ in range(3)]
    await s.close()
    s = await open_store()
    assert refs == [1, 2, 3] and await s.next_concat_ref() == 4


async def test_many_concurrent_writers(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.enqueue_sms([sms(i, message_id=f"<m{i}@lib>")], now=1.0, dedup_window_s=60)
            for i in range(300)
        )
    )
    assert len({r[0].queue_id for r in results}) == 300
    assert await store.backlog() == 300


# --- receipts ------------------------------------------------------------------------------------


def _rollup(rec: SmsRecord, states: list[str]) -> tuple[SmsState, str | None] | None:
    if any(s == "undelivered" for s in states):
        return SmsState.FAILED, "undeliverable"
    if all(s == "delivered" for s in states):
        return SmsState.DELIVERED, None
    return None


async def test_receipts_roll_up_and_bounce(store: Store) -> None:
    await store.enqueue_sms([sms(1, None), sms(2, None)], now=1.0, dedup_window_s=0)
    a, b = await store.claim_sms(now=1.0, limit=2)
    await record_submitted(store, a.queue_id, ["10", "11"], 2, "gsm7", now=2.0)
    await record_submitted(store, b.queue_id, ["12"], 1, "gsm7", now=2.0)
    (seg,) = await store.find_segments(["11", "0xB"])
    assert (seg.queue_id, seg.seq, seg.msisdn, seg.tenant_id, seg.state) == (
        a.queue_id,
        1,
        "+12025550143",
        "riverside",
        SmsState.SUBMITTED,
    )
    assert await store.find_segments([]) == []

    async def one(smsc_id: str, state: str, error: str | None) -> SmsState | None:
        (out,) = await _apply(store, [ReceiptItem(smsc_id, "", state, error, state)], 3.0)
        return out.new_state

    assert await one("11", "delivered", None) is None  # a's other segment still open
    assert await one("10", "delivered", None) is SmsState.DELIVERED
    # a late duplicate receipt changes nothing on a final message
    assert await one("10", "undelivered", "1") is None
    assert await one("12", "undelivered", "001") is SmsState.FAILED
    got = await store.get_sms(b.queue_id)
    assert got is not None and got.state is SmsState.FAILED and got.reason == "undeliverable"
    (mail,) = await store.claim_mail(now=3.0, limit=5)
    assert mail.mail == Outgoing("dsn", "", ("ils@riverside.example.org",), b"failed: undelivered")


async def test_held_receipts(store: Store) -> None:
    p = "12025550143"
    await _apply(store, [ReceiptItem("77", p, "delivered", None, "DELIVRD")], now=5.0)
    await _apply(store, [ReceiptItem("78", p, "undelivered", "001", "UNDELIV")], now=6.0)
    (held,) = await store.held_for(["77"])
    assert held[1:] == ("77", "12025550143", "delivered", None, "DELIVRD", 5.0)
    old = await store.held_receipts(older_than=5.5)
    assert [h[1] for h in old] == ["77"]
    await store.drop_held_receipt(held[0])
    assert await store.held_for(["77", "79"]) == []
    assert [h[1] for h in await store.held_for(["78", "77", "79"])] == ["78"]
    assert await store.held_for([]) == []
    assert [h[1] for h in await store.held_receipts(older_than=10.0)] == ["78"]


def _same(msisdn: str, patron: str) -> bool:
    return msisdn.lstrip("+") == patron.lstrip("+")


def _receipt_bounces(
    item: ReceiptItem, rec: SmsRecord, state: SmsState, reason: str | None
) -> Sequence[Outgoing]:
    return [Outgoing("dsn", "", (rec.envelope_from,), f"{state.value}: {item.raw}".encode())]


async def _apply(store: Store, items: Sequence[ReceiptItem], now: float) -> list[ReceiptOutcome]:
    return await store.apply_receipts(items, now, _rollup, _receipt_bounces, _same)


async def test_apply_receipts_matches_applies_and_holds_in_one_call(store: Store) -> None:
    await store.enqueue_sms([sms(1, None), sms(2, None)], now=1.0, dedup_window_s=0)
    a, b = await store.claim_sms(now=1.0, limit=2)
    await record_submitted(store, a.queue_id, ["10", "11"], 2, "gsm7", now=2.0)
    await record_submitted(store, b.queue_id, ["12"], 1, "gsm7", now=2.0)
    p = "12025550143"
    out = await _apply(
        store,
        [
            ReceiptItem("10", p, "delivered", None, "DELIVRD"),
            ReceiptItem("11", p, "delivered", None, "DELIVRD"),  # a's last segment: delivered
            ReceiptItem("12", "12025550199", "delivered", None, "DELIVRD"),  # another patron
            ReceiptItem("0xC", p, "delivered", None, "DELIVRD"),  # no variants: held
            ReceiptItem("12", "", "undelivered", "001", "UNDELIV"),  # no patron: any segment
        ],
        now=3.0,
    )
    assert [(o.segment and (o.segment.queue_id, o.segment.seq), o.new_state) for o in out] == [
        ((a.queue_id, 0), None),
        ((a.queue_id, 1), SmsState.DELIVERED),
        (None, None),
        (None, None),
        ((b.queue_id, 0), SmsState.FAILED),
    ]
    got = await store.get_sms(b.queue_id)
    assert got is not None and got.state is SmsState.FAILED
    (mail,) = await store.claim_mail(now=3.0, limit=5)
    assert mail.mail.data == b"failed: UNDELIV"  # the bounce names its own receipt's stat
    held = await store.held_receipts(older_than=10.0)
    assert [(h[1], h[2], h[3], h[5], h[6]) for h in held] == [
        ("12", "12025550199", "delivered", "DELIVRD", 3.0),
        ("0xC", p, "delivered", "DELIVRD", 3.0),
    ]
    assert await _apply(store, [], now=4.0) == []


async def test_apply_receipts_held_rows_and_variants(store: Store) -> None:
    await store.enqueue_sms([sms(1, None)], now=1.0, dedup_window_s=0)
    await store.enqueue_sms([sms(2, None)], now=1.5, dedup_window_s=0)  # created later
    old, new = await store.claim_sms(now=2.0, limit=2)
    p = "12025550143"
    # an unknown id, held; then retried as held (kept, no second row) before its submit
    (first,) = await _apply(store, [ReceiptItem("20", p, "delivered", None, "DELIVRD")], 2.0)
    assert first.segment is None
    (row,) = await store.held_for(["20"])
    retry = ReceiptItem("20", p, "delivered", None, "DELIVRD", held_id=row[0])
    assert (await _apply(store, [retry], 2.5))[0].segment is None
    assert await store.held_for(["20"]) == [row]
    # its submit recorded: the held row matches and is dropped in the same transaction
    await record_submitted(store, old.queue_id, ["20"], 1, "gsm7", now=3.0)
    (done,) = await _apply(store, [retry], 3.5)
    assert done.segment is not None and done.segment.queue_id == old.queue_id
    assert done.new_state is SmsState.DELIVERED and await store.held_for(["20"]) == []
    # an id reused by the SMSC: the newest text first
    await record_submitted(store, new.queue_id, ["20", "0x1F"], 2, "gsm7", now=4.0)
    (reused,) = await _apply(store, [ReceiptItem("20", p, "delivered", None, "x")], 5.0)
    assert reused.segment is not None and reused.segment.queue_id == new.queue_id
    # variants: only when the exact id matches nothing, and only for a known patron
    swept = ReceiptItem("31", p, "delivered", None, "DELIVRD", variants=("0x1F", "0x1f"))
    (by_variant,) = await _apply(store, [swept], 6.0)
    assert by_variant.segment is not None
    assert (by_variant.segment.queue_id, by_variant.segment.seq) == (new.queue_id, 1)
    assert by_variant.new_state is SmsState.DELIVERED
    nobody = ReceiptItem("31", "", "delivered", None, "DELIVRD", variants=("0x1F",))
    assert (await _apply(store, [nobody], 7.0))[0].segment is None


async def test_apply_receipts_crossing_groups(open_store: Opener) -> None:
    """Two stores (on PostgreSQL two instances) apply receipts for the same texts in opposite
    orders at once: both commit, neither deadlocks, every segment ends delivered."""
    a, b = await open_store("a"), await open_store("b")
    await a.enqueue_sms([sms(i, None) for i in range(6)], now=1.0, dedup_window_s=0)
    recs = await a.claim_sms(now=1.0, limit=6)
    for i, rec in enumerate(recs):
        await record_submitted(a, rec.queue_id, [f"s{i}", f"t{i}"], 2, "gsm7", now=2.0)
    p = "12025550143"
    first = [ReceiptItem(f"s{i}", p, "delivered", None, "DELIVRD") for i in range(6)]
    second = [ReceiptItem(f"t{i}", p, "delivered", None, "DELIVRD") for i in reversed(range(6))]
    for _ in range(3):
        outs = await asyncio.gather(_apply(a, first, 3.0), _apply(b, second, 3.0))
        assert all(o.segment is not None for group in outs for o in group)
    assert await a.counts() == {"delivered": 6}


# --- inbound -------------------------------------------------------------------------------------


async def test_mo_parts_reassemble_and_go_stale(store: Store) -> None:
    assert await store.add_mo_part("g1", 2, 2, "world", now=1.0) is None
    assert await store.add_mo_part("g1", 2, 2, "world", now=1.5) is None  # redelivered part
    assert await store.add_mo_part("g1", 1, 2, "hello ", now=2.0) == ["hello ", "world"]
    assert await store.add_mo_part("g2", 1, 3, "a", now=3.0) is None
    assert await store.add_mo_part("g2", 3, 3, "c", now=4.0) is None
    assert await store.stale_mo_groups(older_than=3.5) == [("g1", 2, [(1, "hello "), (2, "world")])]
    stale = await store.stale_mo_groups(older_than=10.0)
    assert stale == [("g1", 2, [(1, "hello "), (2, "world")]), ("g2", 3, [(1, "a"), (3, "c")])]


async def test_commit_mo_is_atomic_and_deduplicated(store: Store) -> None:
    await store.add_mo_part("g", 1, 1, "STOP", now=1.0)
    reply = Outgoing("reply", "sms-bridge@x", ("circ@lib",), b"reply", ref="mo1")
    optout = OptoutRecord("+12025550143", "12025550100", True, "STOP", 1.0, "patron")
    confirm = NewSms(**{**sms(9, None).__dict__, "kind": "confirmation"})
    done = await store.commit_mo(
        "mo1",
        now=1.0,
        window_s=600,
        mails=[reply],
        sms=[confirm],
        conversations=[("<r1@bridge>", "riverside", "+12025550143", "12025550100")],
        done_group="g",
        optout=optout,
    )
    assert done
    again = await store.commit_mo("mo1", now=2.0, window_s=600, mails=[reply])
    assert not again
    assert await store.mail_counts() == {"queued": 1}
    assert await store.stale_mo_groups(older_than=100.0) == []
    assert await store.conversation_for(["<x@y>", "<r1@bridge>"]) == ("riverside", "+12025550143")
    assert await store.conversation_for([]) is None
    assert await store.optout_status("+12025550143", "12025550100") == optout
    ((rec, ref),) = await store.optout_history("+12025550143")
    assert rec == optout and ref == "mo1"
    (queued,) = await store.claim_sms(now=1.0, limit=5)
    assert queued.kind == "confirmation"
    # outside the dedup window the same key is new again
    assert await store.commit_mo("mo1", now=700.0, window_s=600)


async def test_last_sms_to(store: Store) -> None:
    (a,) = await store.enqueue_sms([sms(1, None)], now=1.0, dedup_window_s=0)
    (b,) = await store.enqueue_sms([sms(2, None)], now=2.0, dedup_window_s=0)
    got = await store.last_sms_to("+12025550143", "12025550100", since=0.0)
    assert got is not None and got.queue_id == b.queue_id
    assert await store.last_sms_to("+12025550143", "12025550100", since=3.0) is None
    assert await store.last_sms_to("+12025550167", "12025550100", since=0.0) is None
    assert a.queue_id != b.queue_id


# --- compliance ----------------------------------------------------------------------------------


async def test_optouts_first_contact_and_caps(store: Store) -> None:
    num, scope = "+12025550143", "12025550100"
    assert await store.optout_status(num, scope) is None
    await store.enqueue_sms([sms(1, None)], now=1.0, dedup_window_s=0)
    (rec,) = await store.claim_sms(now=1.0, limit=1)
    await record_submitted(
        store, rec.queue_id, ["1"], 1, "gsm7", now=5.0, first_contact=(num, scope), shaped="footer"
    )
    assert await store.had_first_contact(num, scope)
    assert await store.sent_times(num, "riverside", since=0.0) == [5.0]
    assert await store.sent_times(num, "riverside", since=6.0) == []
    out = OptoutRecord(num, scope, True, "STOP", 10.0, "patron")
    await store.set_optout(out, mo_ref="m1")
    assert await store.list_optouts() == [out]
    assert await store.list_optouts(scope="other") == []
    back = OptoutRecord(num, scope, False, "START", 20.0, "admin:kim")
    await store.set_optout(back)
    assert await store.list_optouts(scope=scope) == []
    assert await store.optout_status(num, scope) == back
    assert not await store.had_first_contact(num, scope)  # the footer goes out again
    history = await store.optout_history(num)
    assert history == [(out, "m1"), (back, None)]
    await store.mark_first_contact(num, scope, "q1", now=30.0)
    await store.mark_first_contact(num, scope, "q2", now=31.0)  # the first one stays
    assert await store.had_first_contact(num, scope)


async def test_tenant_report(store: Store) -> None:
    lint = [CostLintRow(0, "ucs2", 3, 2, "“”", "Overdue: Your")]
    await store.enqueue_sms([sms(1, None)], now=10.0, dedup_window_s=0, lint=lint)
    await store.enqueue_sms([sms(2, None)], now=11.0, dedup_window_s=0)
    (a, b) = await store.claim_sms(now=11.0, limit=5)
    await store.record_final(a.queue_id, SmsState.FAILED, "bad number", now=12.0)
    await store.set_optout(OptoutRecord("+12025550143", "12025550100", True, "STOP", 13.0, "p"))
    data = await store.tenant_report("riverside", "12025550100", since=0.0, until=100.0)
    assert data.states == {"failed": 1, "sending": 1}
    assert data.failed == [("+12025550143", "bad number", "Hold", 10.0)]
    assert data.optout_changes == [("+12025550143", True, "STOP", 13.0)]
    assert data.costly == [("Overdue: Your", 1, 1, 3, "“”")]
    empty = await store.tenant_report("riverside", "12025550100", since=50.0, until=100.0)
    assert (empty.states, empty.failed, empty.optout_changes, empty.costly) == ({}, [], [], [])
    assert b.queue_id != a.queue_id


# --- IMAP ----------------------------------------------------------------------------------------


async def test_imap_state(store: Store) -> None:
    assert await store.imap_state("INBOX") is None
    await store.set_imap_state("INBOX", 1234, 7, now=1.0)
    await store.set_imap_state("INBOX", 1234, 9, now=2.0)
    assert await store.imap_state("INBOX") == (1234, 9)


REPLY = Outgoing(
    "reply", "", ("circ@riverside.example.org",), b"Subject: r\r\n\r\nhi\r\n", "mo1", "riverside"
)


async def test_lost_mail_is_recorded_once_with_its_fallback(store: Store) -> None:
    rid = await store.enqueue_mail(REPLY, now=1.0)
    (rec,) = await store.claim_mail(now=1.0, limit=5)
    assert rec.mail == REPLY
    await store.mail_done(rid, "sent", None, now=2.0)
    info = await store.get_mail(rid)
    # A sent reply keeps its bytes (a bounce may still need a fallback copy); other kinds don't.
    assert (info.state, info.data, info.tenant_id) == ("sent", REPLY.data, "riverside")
    did = await store.enqueue_mail(BOUNCE, now=2.0)
    await store.claim_mail(now=2.0, limit=5)
    await store.mail_done(did, "sent", None, now=2.0)
    assert (await store.get_mail(did)).data == b""

    copy = Outgoing(
        "fallback",
        "",
        ("desk@riverside.example.org",),
        b"copy",
        "mo1",
        "riverside",
        fallback_of=rid,
    )
    fid = await store.mail_lost(rid, "bounced", "5.1.1 user unknown", 3.0, copy)
    assert fid is not None and fid > rid
    # A replay (the same DSN again, or a dead letter afterwards) changes nothing.
    assert await store.mail_lost(rid, "bounced", "again", 4.0, copy) is None
    assert await store.mail_lost(rid, "dead", "again", 4.0) is None
    info = await store.get_mail(rid)
    assert (info.state, info.data) == ("bounced", b"")  # the copy carries the text now
    (queued,) = await store.claim_mail(now=5.0, limit=5)
    assert (queued.id, queued.mail) == (fid, copy)
    assert (await store.mail_counts()) == {"bounced": 1, "queued": 1, "sent": 1}

    (lost,) = await store.lost_mail(since=0.0)
    assert (lost.id, lost.kind, lost.state, lost.reason, lost.lost_at) == (
        rid,
        "reply",
        "bounced",
        "5.1.1 user unknown",
        3.0,
    )
    assert (lost.rcpt_to, lost.tenant_id, lost.fallback_state) == (
        ("circ@riverside.example.org",),
        "riverside",
        "queued",
    )
    assert await store.lost_mail(since=3.5) == []
    assert await store.lost_mail(since=0.0, tenant_id="ashland") == []
    # The fallback copy bounces too: recorded, nothing queued.
    assert await store.mail_lost(fid, "bounced", "also gone", 6.0) == 0
    assert [m.fallback_state for m in await store.lost_mail(since=0.0)] == [None, "bounced"]
    report = await store.tenant_report("riverside", "12025550100", 0.0, 10.0)
    assert [m.id for m in report.lost_mail] == [rid, fid]
    assert await store.get_mail(999) is None


async def test_meta_value_is_made_once(store: Store) -> None:
    assert await store.meta_setdefault("verp_secret", "first") == "first"
    assert await store.meta_setdefault("verp_secret", "second") == "first"


async def test_ping_answers_one_while_open(open_store: Opener) -> None:
    s = await open_store()
    assert await s.ping() == 1


# --- several instances on PostgreSQL -------------------------------------------------------------


async def test_instances_share_one_generated_secret(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    values = await asyncio.gather(
        *(s.meta_setdefault("verp_secret", f"made-by-{i}") for i, s in enumerate((a, b, a, b)))
    )
    assert len(set(values)) == 1


async def test_one_instance_records_a_bounce_seen_by_two(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    rid = await a.enqueue_mail(REPLY, now=1.0)
    copy = Outgoing("fallback", "", ("d@x.example",), b"c", fallback_of=rid)
    results = await asyncio.gather(
        a.mail_lost(rid, "bounced", "x", 2.0, copy), b.mail_lost(rid, "bounced", "x", 2.0, copy)
    )
    assert sorted(r is None for r in results) == [False, True]
    assert (await a.mail_counts()) == {"bounced": 1, "queued": 1}


async def test_instances_never_claim_the_same_message(pg: PgOpener) -> None:
    a, b, c = (await pg("a"), await pg("b"), await pg("c"))
    await a.enqueue_sms([sms(i, None) for i in range(60)], now=1.0, dedup_window_s=0)

    async def drain(s: PostgresStore) -> list[str]:
        got: list[str] = []
        while batch := await s.claim_sms(now=2.0, limit=4):
            got += [r.queue_id for r in batch]
        return got

    claimed = await asyncio.gather(drain(a), drain(b), drain(c))
    every = [q for part in claimed for q in part]
    assert len(every) == 60 and len(set(every)) == 60
    owners = await a.list_sms(SmsFilter(state="sending", limit=100), now=3.0)
    assert len(owners) == 60


async def test_lease_expiry_hands_work_to_a_survivor(pg: PgOpener) -> None:
    a, b = await pg("a", lease_s=10.0), await pg("b", lease_s=10.0)
    await a.enqueue_sms([sms(1, None)], now=1.0, dedup_window_s=0)
    (rec,) = await a.claim_sms(now=1.0, limit=5)
    assert await b.claim_sms(now=5.0, limit=5) == []  # a's lease holds until 11.0
    assert await b.requeue_inflight(now=5.0) == 0  # a restart of b steals nothing
    assert await a.renew_leases(now=8.0) == 1  # lease now until 18.0
    assert await b.claim_sms(now=12.0, limit=5) == []
    assert await b.next_due() == 18.0  # b wakes when a's lease runs out
    (taken,) = await b.claim_sms(now=18.5, limit=5)  # a died: no renewal
    assert taken.queue_id == rec.queue_id and taken.attempts == 2
    # a (if it was only slow) cannot give back what b now owns
    await a.record_retry(rec.queue_id, "late", next_at=19.0, now=19.0)
    got = await a.get_sms(rec.queue_id)
    assert got is not None and got.state is SmsState.SENDING and got.reason is None
    assert await a.renew_leases(now=19.0) == 0


async def test_requeue_inflight_takes_only_own_and_expired(pg: PgOpener) -> None:
    a, b = await pg("a", lease_s=10.0), await pg("b", lease_s=10.0)
    await a.enqueue_sms([sms(i, None) for i in range(3)], now=1.0, dedup_window_s=0)
    await a.claim_sms(now=1.0, limit=1)
    await b.claim_sms(now=1.0, limit=1)
    # a restarts at 2.0: its own claim comes back, b's stays b's
    assert await a.requeue_inflight(now=2.0) == 1
    assert (await a.counts())["sending"] == 1
    # b died long ago: its expired claim comes back at a's next start
    assert await a.requeue_inflight(now=20.0) == 1
    assert await a.counts() == {"queued": 3}


async def test_receipt_matched_by_another_instance(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    await a.enqueue_sms([sms(1, None)], now=1.0, dedup_window_s=0)
    (rec,) = await a.claim_sms(now=1.0, limit=1)
    await record_submitted(a, rec.queue_id, ["900"], 1, "gsm7", now=2.0)
    (seg,) = await b.find_segments(["900"])
    assert seg.queue_id == rec.queue_id
    (out,) = await _apply(b, [ReceiptItem("900", "", "delivered", None, "DELIVRD")], 3.0)
    assert out.new_state is SmsState.DELIVERED


async def test_concurrent_mo_parts_on_two_instances(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    results = await asyncio.gather(
        a.add_mo_part("g", 1, 2, "one ", now=1.0), b.add_mo_part("g", 2, 2, "two", now=1.0)
    )
    assert sorted(results, key=lambda r: r is None) == [["one ", "two"], None]


async def test_once_only_jobs_and_leader(pg: PgOpener) -> None:
    stores = [await pg(name) for name in "abc"]
    assert not any(await asyncio.gather(*(s.job_due("purge", 0.0, 60) for s in stores)))
    wins = await asyncio.gather(*(s.job_due("purge", 60.0, 60) for s in stores))
    assert sorted(wins) == [False, False, True]
    leads = await asyncio.gather(*(s.try_lead("report", 0.0, 60) for s in stores))
    assert sorted(leads) == [False, False, True]  # the first period runs at once
    assert not await stores[0].try_lead("report", 59.0, 60)
    assert await stores[1].try_lead("report", 60.0, 60)


async def test_concat_refs_distinct_across_instances(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    refs = await asyncio.gather(*(s.next_concat_ref() for s in (a, b) * 20))
    assert sorted(refs) == list(range(1, 41))


async def test_duplicate_email_to_two_instances_queued_once(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    (ra,), (rb,) = await asyncio.gather(
        a.enqueue_sms([sms(1, "<same@lib>")], now=1.0, dedup_window_s=60),
        b.enqueue_sms([sms(1, "<same@lib>")], now=1.0, dedup_window_s=60),
    )
    assert ra.queue_id == rb.queue_id and sorted([ra.duplicate, rb.duplicate]) == [False, True]
    assert await a.backlog() == 1


async def test_mail_claimed_by_one_instance_only(pg: PgOpener) -> None:
    a, b = await pg("a", lease_s=30.0), await pg("b", lease_s=30.0)
    mid = await a.enqueue_mail(BOUNCE, now=1.0)
    (mail,) = await a.claim_mail(now=1.0, limit=5)
    assert mail.id == mid
    assert await b.claim_mail(now=2.0, limit=5) == []  # a is sending it
    (again,) = await b.claim_mail(now=31.5, limit=5)  # a died without mail_done
    assert again.id == mid and again.attempts == 2


async def test_heartbeat_and_shares(pg: PgOpener) -> None:
    a, b = await pg("a"), await pg("b")
    now_a, peers = await a.heartbeat()
    assert [p.instance_id for p in peers] == ["a"]
    assert share(10.0, "a", peers, now_a) == 0.0  # settling in
    now_b, peers = await b.heartbeat()
    assert [p.instance_id for p in peers] == ["a", "b"] and now_b >= now_a
    # three seconds on, both beating: a has settled and sees b (half the budget each)
    later = peers[0].joined_at + 3.0
    beating = [Peer(p.instance_id, p.joined_at, later - 0.5) for p in peers]
    assert share(10.0, "a", beating, later) == 5.0
    assert share(10.0, "b", beating, peers[1].joined_at + 2.9) == 0.0  # b still settling
    # a beat again, its joined_at kept (it never lapsed)
    _, again = await a.heartbeat()
    assert again[0].joined_at == peers[0].joined_at and again[0].beat_at > peers[0].beat_at
    assert await a.ping() == 1


async def test_bounce_recorded_before_the_mailer_records_sent_stays(store: Store) -> None:
    # A local relay can bounce faster than the mailer commits "sent" for the same email.
    rid = await store.enqueue_mail(REPLY, now=1.0)
    await store.claim_mail(now=1.0, limit=5)
    assert await store.mail_lost(rid, "bounced", "5.1.1", 2.0) == 0
    await store.mail_done(rid, "sent", None, now=2.1)
    await store.mail_done(rid, "queued", "late retry", now=2.2, next_at=3.0)
    info = await store.get_mail(rid)
    assert info is not None and info.state == "bounced"
    assert await store.claim_mail(now=10.0, limit=5) == []


# --- status page ---------------------------------------------------------------------------------


async def test_activity_counts_notices_replies_and_optouts_by_bucket(store: Store) -> None:
    bucket = ACTIVITY_BUCKET_S
    _, b = await store.enqueue_sms([sms(1, None), sms(2, None)], now=10 * bucket, dedup_window_s=0)
    await store.enqueue_sms([sms(3, None)], now=1.0, dedup_window_s=0)  # before `since`
    await store.claim_sms(now=10 * bucket, limit=10)
    await store.record_final(b.queue_id, SmsState.FAILED, "rejected", now=10 * bucket + 5)
    assert await store.commit_mo(
        "mo1", 11 * bucket + 1, 60.0, conversations=[("<r@x>", "riverside", "+1202", "+1999")]
    )
    await store.set_optout(
        OptoutRecord("+12025550188", "12025550100", True, "STOP", 12 * bucket, "patron")
    )
    act = await store.activity(since=5 * bucket)
    assert sorted(act.texts) == [
        ("riverside", 10, "failed", 1),
        ("riverside", 10, "sending", 1),
    ]
    assert act.replies == [("riverside", 11, 1)]
    assert act.optouts == [("12025550100", 12, True, 1)]
    assert act.to_fix == [("riverside", "+12025550143", "rejected", 1)]


# --- receipt deadline ----------------------------------------------------------------------------


async def test_receipt_deadline_settles_only_overdue_submitted(store: Store) -> None:
    await store.enqueue_sms([sms(i, None) for i in range(4)], now=1.0, dedup_window_s=0)
    a, b, c, d = await store.claim_sms(now=1.0, limit=4)
    await record_submitted(store, a.queue_id, ["20"], 1, "gsm7", now=10.0)
    await record_submitted(store, b.queue_id, ["21"], 1, "gsm7", now=50.0)  # not overdue yet
    await record_submitted(store, c.queue_id, ["22"], 1, "gsm7", now=10.0)
    (out,) = await _apply(store, [ReceiptItem("22", "", "delivered", None, "DELIVRD")], 11.0)
    assert out.new_state is SmsState.DELIVERED
    # d stays `sending`: not submitted, never settled by the deadline
    got = await store.settle_overdue(40.0, SmsState.UNCONFIRMED, "no receipt", now=60.0)
    assert got == [(a.queue_id, "riverside", "+12025550143")]
    rec = await store.get_sms(a.queue_id)
    assert rec is not None and rec.state is SmsState.UNCONFIRMED and rec.reason == "no receipt"
    assert await store.settle_overdue(40.0, SmsState.UNCONFIRMED, "again", now=61.0) == []
    states = {r.queue_id: r.state for r in await store.list_sms(SmsFilter(limit=10), 70.0)}
    assert states == {
        a.queue_id: SmsState.UNCONFIRMED,
        b.queue_id: SmsState.SUBMITTED,
        c.queue_id: SmsState.DELIVERED,
        d.queue_id: SmsState.SENDING,
    }
    assert await store.claim_mail(now=70.0, limit=5) == []  # no bounce for unconfirmed
    # a receipt that still comes settles it after all (and a failure bounces then)
    (out,) = await _apply(store, [ReceiptItem("20", "", "undelivered", "1", "UNDELIV")], 70.0)
    assert out.new_state is SmsState.FAILED
    assert len(await store.claim_mail(now=70.0, limit=5)) == 1
    listed = await store.list_sms(SmsFilter(state="unconfirmed"), 70.0)
    assert listed == []


async def test_submitted_and_settled_at_once_without_receipts(store: Store) -> None:
    await store.enqueue_sms([sms(1, None)], now=1.0, dedup_window_s=0)
    (a,) = await store.claim_sms(now=1.0, limit=1)
    await record_submitted(
        store,
        a.queue_id,
        ["30"],
        1,
        "gsm7",
        now=2.0,
        settle=(SmsState.UNCONFIRMED, "no receipt asked"),
    )
    rec = await store.get_sms(a.queue_id)
    assert (
        rec is not None and rec.state is SmsState.UNCONFIRMED and rec.reason == "no receipt asked"
    )
    assert await store.counts() == {"unconfirmed": 1}


async def test_record_submitted_many_records_each_text_in_one_call(store: Store) -> None:
    items = [sms(i, None, msisdn=f"+1202555014{i}") for i in range(4)]
    await store.enqueue_sms(items, now=1.0, dedup_window_s=0)
    a, b, c, d = await store.claim_sms(now=1.0, limit=4)
    # b was submitted once before (a lost resp, then a retry): its old segment goes
    await record_submitted(store, b.queue_id, ["old"], 1, "gsm7", now=1.5)
    await store.record_submitted_many(
        [
            SubmittedSms(a.queue_id, ("a1", "a2"), 2, "gsm7", 2.0),
            SubmittedSms(b.queue_id, ("b1",), 1, "ucs2", 2.0, first_contact=(b.msisdn, "S")),
            SubmittedSms(
                c.queue_id, ("c1",), 1, "gsm7", 2.0, settle=(SmsState.UNCONFIRMED, "no receipt")
            ),
        ]
    )
    await store.record_submitted_many([])  # nothing to do: no transaction, no error
    got = {r.queue_id: r for r in [await store.get_sms(x.queue_id) for x in (a, b, c, d)] if r}
    assert got[a.queue_id].state is SmsState.SUBMITTED and got[a.queue_id].segments == 2
    assert got[b.queue_id].coding == "ucs2" and got[b.queue_id].updated_at == 2.0
    assert got[c.queue_id].state is SmsState.UNCONFIRMED and got[c.queue_id].reason == "no receipt"
    assert got[d.queue_id].state is SmsState.SENDING  # not in the batch: untouched
    assert [(s.queue_id, s.seq) for s in await store.find_segments(["a1", "a2"])] in (
        [(a.queue_id, 0), (a.queue_id, 1)],
        [(a.queue_id, 1), (a.queue_id, 0)],
    )
    assert await store.find_segments(["old"]) == []
    (seg,) = await store.find_segments(["b1"])
    assert seg.queue_id == b.queue_id and seg.state is SmsState.SUBMITTED
    assert await store.had_first_contact(b.msisdn, "S")
    assert not await store.had_first_contact(a.msisdn, "S")
    assert await store.counts() == {"submitted": 2, "unconfirmed": 1, "sending": 1}


async def test_tenant_report_lists_unconfirmed(store: Store) -> None:
    await store.enqueue_sms([sms(1, None)], now=10.0, dedup_window_s=0)
    (a,) = await store.claim_sms(now=10.0, limit=1)
    await record_submitted(store, a.queue_id, ["40"], 1, "gsm7", now=11.0)
    await store.settle_overdue(20.0, SmsState.UNCONFIRMED, "no receipt", now=30.0)
    data = await store.tenant_report("riverside", "12025550100", since=0.0, until=100.0)
    assert data.states == {"unconfirmed": 1}
    assert data.unconfirmed == [("+12025550143", "Hold", 10.0)] and data.failed == []


# --- the shared plan (bridge/store/common.py), without a database --------------------------------


def test_enqueue_plan_checks_words_then_message_id_and_places_lint() -> None:
    first = NewSms(**{**sms(1).__dict__, "dup_key": "k1"})
    second = sms(2, message_id=None)
    lint = [CostLintRow(1, "ucs2", 2, 1, "’", "Hold")]
    plan = common.enqueue_plan([first, second], 100.0, 60.0, 30.0, lint)
    asked: list[common.EnqueueStep] = []
    answers = {"dup_key": None, "message_id": "q-old"}

    def do(step: common.EnqueueStep) -> str | None:
        asked.append(step)
        if isinstance(step, common.FindDuplicate):
            return answers[step.by]
        return "q-new" if isinstance(step, common.InsertSms) else None

    results = common.run_plan(plan, do)
    assert [(r.queue_id, r.duplicate) for r in results] == [("q-old", True), ("q-new", False)]
    assert asked == [
        common.FindDuplicate(first, "dup_key", 70.0),
        common.FindDuplicate(first, "message_id", 40.0),
        common.InsertSms(second),  # no key of either kind: no lookup
        common.InsertLint("q-new", second, lint[0]),
    ]
