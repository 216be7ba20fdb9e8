from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.model import NewSms, SmsState
from bridge.store import Outgoing, SmsFilter, Store, StoreError
from bridge.store.migrations import MIGRATIONS


def sms(n: int = 0, message_id: str | None = "<m1@lib>", msisdn: str = "+12025550143") -> NewSms:
    return NewSms(
        tenant_id="riverside",
        msisdn=msisdn,
        rcpt_addr=f"{msisdn[1:]}@sms.example.org",
        source_addr="12025550100",
        envelope_from="ils@riverside.example.org",
        message_id=message_id,
        subject="Hold",
        body=f"Your hold {n} is ready",
    )


async def test_enqueue_claim_submit(store: Store) -> None:
    (res,) = await store.enqueue_sms([sms()], now=100.0, dedup_window_s=60)
    assert not res.duplicate
    assert await store.backlog() == 1
    assert await store.claim_sms(now=99.0, limit=10) == []  # not due yet
    (rec,) = await store.claim_sms(now=100.0, limit=10)
    assert rec.state is SmsState.SENDING and rec.attempts == 1
    assert await store.claim_sms(now=100.0, limit=10) == []  # claimed once only
    await store.record_submitted(rec.queue_id, ["a1", "a2"], 2, "gsm7", now=101.0)
    got = await store.get_sms(rec.queue_id)
    assert got is not None and got.state is SmsState.SUBMITTED and got.segments == 2
    assert await store.backlog() == 0


async def test_dedup_window(store: Store) -> None:
    (a,) = await store.enqueue_sms([sms()], now=100.0, dedup_window_s=60)
    (b,) = await store.enqueue_sms([sms()], now=130.0, dedup_window_s=60)
    assert b.duplicate and b.queue_id == a.queue_id
    (c,) = await store.enqueue_sms([sms()], now=200.0, dedup_window_s=60)
    assert not c.duplicate and c.queue_id != a.queue_id
    (d,) = await store.enqueue_sms([sms(message_id=None)], now=200.0, dedup_window_s=60)
    assert not d.duplicate


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
    bounce = Outgoing("dsn", "", ("ils@riverside.example.org",), b"Subject: x\r\n\r\nx\r\n")
    await store.record_final(rec.queue_id, SmsState.FAILED, "bad number", 2.0, [bounce])
    (mail,) = await store.claim_mail(now=2.0, limit=10)
    assert mail.kind == "dsn" and mail.rcpt_to == ("ils@riverside.example.org",)
    assert mail.data == bounce.data and mail.attempts == 1
    await store.mail_done(mail.id, "queued", "relay down", now=2.0, next_at=10.0)
    assert await store.claim_mail(now=5.0, limit=10) == []
    (again,) = await store.claim_mail(now=10.0, limit=10)
    assert again.attempts == 2
    await store.mail_done(again.id, "sent", None, now=11.0)
    assert await store.mail_counts() == {"sent": 1}


async def test_admin_retry_drop_and_list(store: Store) -> None:
    r1, r2 = await store.enqueue_sms(
        [sms(1, msisdn="+12025550143"), sms(2, msisdn="+12025550167")], now=1.0, dedup_window_s=0
    )
    assert await store.drop_sms(r1.queue_id, now=2.0)
    assert not await store.drop_sms(r1.queue_id, now=2.0)  # already final
    assert await store.retry_sms(r1.queue_id, now=3.0)
    listed = await store.list_sms(SmsFilter(state="queued"), now=4.0)
    assert {r.queue_id for r in listed} == {r1.queue_id, r2.queue_id}
    assert await store.counts() == {"queued": 2}


async def test_privacy_purge(store: Store) -> None:
    await store.enqueue_sms([sms()], now=1.0, dedup_window_s=0)
    (rec,) = await store.claim_sms(now=1.0, limit=1)
    await store.record_final(rec.queue_id, SmsState.DELIVERED, None, now=2.0)
    counts = await store.purge(bodies_before=1.0, records_before=0.5, now=50.0)
    assert (counts.bodies, counts.records) == (0, 0)
    counts = await store.purge(bodies_before=100.0, records_before=0.5, now=200.0)
    assert counts.bodies == 1
    got = await store.get_sms(rec.queue_id)
    assert got is not None and got.body is None and got.msisdn == "+12025550143"
    counts = await store.purge(bodies_before=100.0, records_before=100.0, now=200.0)
    assert counts.records == 1 and await store.get_sms(rec.queue_id) is None


async def test_jobs_run_once_per_period(store: Store) -> None:
    assert not await store.job_due("report:x", now=0.0, every_s=100)  # starts the clock
    assert not await store.job_due("report:x", now=50.0, every_s=100)
    assert await store.job_due("report:x", now=100.0, every_s=100)
    assert not await store.job_due("report:x", now=150.0, every_s=100)


async def test_concat_ref_is_persistent(tmp_path: Path) -> None:
    s = Store(tmp_path / "x.db")
    await s.open()
    refs = [await s.next_concat_ref() for _ in range(3)]
    await s.close()
    s = Store(tmp_path / "x.db")
    await s.open()
    nxt = await s.next_concat_ref()
    await s.close()
    assert refs == [1, 2, 3] and nxt == 4


async def test_group_commit_many_concurrent_writers(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.enqueue_sms([sms(i, message_id=f"<m{i}@lib>")], now=1.0, dedup_window_s=60)
            for i in range(300)
        )
    )
    assert len({r[0].queue_id for r in results}) == 300
    assert await store.backlog() == 300


async def test_one_failing_call_does_not_spoil_the_group(store: Store) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    ok, bad = await asyncio.gather(
        store.enqueue_sms([sms()], now=1.0, dedup_window_s=0),
        store.run(boom),
        return_exceptions=True,
    )
    assert isinstance(bad, StoreError)
    assert not isinstance(ok, BaseException) and await store.backlog() == 1


async def test_schema_version_and_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    s = Store(path)
    await s.open()
    await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this bridge"):
        await Store(path).open()


async def test_read_only_store_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    s = Store(path)
    await s.open()
    await s.close()
    # Simulate a store that can no longer commit: a read-only connection underneath.
    s = Store(path)
    await s.open()
    await s.run(lambda conn: conn.execute("PRAGMA query_only=ON"))
    with pytest.raises(StoreError):
        await s.enqueue_sms([sms()], now=1.0, dedup_window_s=0)
    await s.close()
