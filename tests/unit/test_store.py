from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.model import NewSms
from bridge.store import SqliteStore, Store, StoreError
from bridge.store.migrations import MIGRATIONS
from bridge.store.sqlite import _OVERDUE
from bridge.testing.sms_samples import sample_sms
from tests.conftest import record_submitted
from tests.waiting import eventually


def sms(n: int = 0, message_id: str | None = "<m1@lib>", msisdn: str = "+12025550143") -> NewSms:
    return sample_sms(n, msisdn=msisdn, message_id=message_id, source_addr="12025550100")


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


async def _held_writer(s: SqliteStore) -> tuple[threading.Event, asyncio.Task[None]]:
    """Keep the writer thread busy in a call of its own until the event is set, so the calls
    queued meanwhile run as one group."""
    release, busy = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait(10.0)

    task = asyncio.create_task(s.run(hold))
    await eventually(busy.is_set, what="the writer in the holding call")
    return release, task


async def _in_one_group(s: SqliteStore, middle: Callable[[sqlite3.Connection], Any]) -> list[Any]:
    """meta_setdefault("a", "1"), `middle`, meta_setdefault("b", "2"), queued behind a busy
    writer so that they run as one group; their outcomes (an exception for a failed call)."""
    release, hold = await _held_writer(s)
    calls = [
        asyncio.create_task(s.meta_setdefault("a", "1")),
        asyncio.create_task(s.run(middle)),
        asyncio.create_task(s.meta_setdefault("b", "2")),
    ]
    await eventually(lambda: s._q.qsize() == 3, what="three calls queued")
    release.set()
    await hold
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_a_failing_call_in_a_group_rolls_back_only_its_own_writes(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db")
    await s.open()
    try:

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('half', 'written')")
            raise ValueError("fails after a write")

        before, bad, after = await _in_one_group(s, half_then_fail)
        assert (before, after) == ("1", "2")
        assert isinstance(bad, ValueError)
        keys = await s.run(lambda c: [r[0] for r in c.execute("SELECT key FROM meta")])
        assert "a" in keys and "b" in keys and "half" not in keys
    finally:
        await s.close()


async def test_a_lone_failing_call_leaves_nothing_behind(store: Store) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('half', 'written')")
        raise ValueError("fails after a write")

    with pytest.raises(ValueError, match="fails after a write"):
        await store.run(half_then_fail)
    # the next call starts its own transaction (none left open) and sees no half write
    assert await store.meta_setdefault("half", "fresh") == "fresh"


async def test_a_failed_commit_fails_every_caller_of_the_group(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    await s.open()
    try:
        # A segment of no text, with the foreign key check deferred to COMMIT: every
        # statement succeeds, the group's COMMIT fails, and nothing of it is durable.
        def orphan(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA defer_foreign_keys=ON")
            conn.execute(
                "INSERT INTO sms_segment (queue_id, seq, smsc_message_id, state, updated_at)"
                " VALUES ('no-such-text', 1, 'x', 'submitted', 1.0)"
            )

        results = await _in_one_group(s, orphan)
        assert all(isinstance(r, StoreError) for r in results), results
        assert await s.meta_setdefault("a", "new") == "new"
    finally:
        await s.close()


async def test_a_transaction_sqlite_rolled_back_fails_every_call_of_its_group(
    tmp_path: Path,
) -> None:
    """SQLite rolls a whole transaction back on some errors (SQLITE_FULL, SQLITE_IOERR): the
    calls of the group before the failing one lost their work too, so none may hear "done"."""
    s = SqliteStore(tmp_path / "r.db")
    await s.open()
    try:

        def rolled_back(conn: sqlite3.Connection) -> None:
            conn.execute("ROLLBACK")  # as SQLite does on a full disk
            raise sqlite3.OperationalError("database or disk is full")

        with pytest.raises(StoreError, match="disk is full"):
            await s.run(rolled_back)  # alone in its group
        results = await _in_one_group(s, rolled_back)
        assert all(isinstance(r, StoreError) for r in results), results
        assert await s.meta_setdefault("a", "new") == "new"
    finally:
        await s.close()


async def test_schema_version_and_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    s = SqliteStore(path)
    await s.open()
    await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this bridge"):
        await SqliteStore(path).open()


async def test_read_only_store_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    s = SqliteStore(path)
    await s.open()
    await s.close()
    # Simulate a store that can no longer commit: a read-only connection underneath.
    s = SqliteStore(path)
    await s.open()
    await s.run(lambda conn: conn.execute("PRAGMA query_only=ON"))
    with pytest.raises(StoreError):
        await s.enqueue_sms([sms()], now=1.0, dedup_window_s=0)
    await s.close()


async def test_optout_lookup_sees_other_connections_and_survives_a_broken_fast_path(
    tmp_path: Path,
) -> None:
    """The RCPT-time opt-out lookup reads on the loop's thread; it must see a change made by
    another process (`sms-bridge optout` writes to the same file) at once, and fall back to
    the reader thread when its own connection fails."""
    s = SqliteStore(tmp_path / "o.db")
    await s.open()
    try:
        num, scope = "+12025550143", "12025550100"
        assert await s.optout_status(num, scope) is None
        other = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
        other.execute(
            "INSERT INTO optout (msisdn, scope, opted_out, keyword, changed_at, actor)"
            " VALUES (?,?,1,'STOP',5.0,'admin:cli')",
            (num, scope),
        )
        rec = await s.optout_status(num, scope)
        assert rec is not None and rec.opted_out and rec.actor == "admin:cli"
        other.execute("UPDATE optout SET opted_out=0, keyword='START' WHERE msisdn=?", (num,))
        other.close()
        assert s._lconn is not None
        s._lconn.close()  # the fast path's connection is now unusable
        rec = await s.optout_status(num, scope)
        assert rec is not None and not rec.opted_out and rec.keyword == "START"
        assert s._lconn is None  # dropped, and opened afresh by the next lookup
        assert await s.optout_status("+12025550144", scope) is None
        assert s._lconn is not None
    finally:
        await s.close()


async def test_per_text_lookups_read_on_the_loop_and_see_each_commit(tmp_path: Path) -> None:
    """First contact and the frequency cap's sent times are read on the loop's connection
    (no thread hand-off), and see every commit made before them: the dispatcher records a
    text, then asks about the next one to the same number."""
    s = SqliteStore(tmp_path / "p.db")
    await s.open()
    try:
        num, scope = "+12025550143", "12025550100"
        assert not await s.had_first_contact(num, scope)
        assert s._lconn is not None
        assert await s.sent_times(num, "riverside", 0.0) == []
        assert await s.next_due() is None
        [res] = await s.enqueue_sms([sms()], now=10.0, dedup_window_s=0)
        assert await s.next_due() == 10.0
        await s.claim_sms(now=11.0, limit=1)
        await record_submitted(
            s, res.queue_id, ["abc"], 1, "gsm7", 12.0, first_contact=(num, scope)
        )
        assert await s.had_first_contact(num, scope)
        assert await s.sent_times(num, "riverside", 0.0) == [12.0]
        assert await s.sent_times(num, "riverside", 12.5) == []
        assert await s.next_due() is None
    finally:
        await s.close()
    assert s._lconn is None


async def test_the_receipt_deadline_sweep_reads_its_partial_index(store: Store) -> None:
    """settle_overdue reads the `limit` oldest texts awaiting a receipt from the partial index
    made for it, not every such text through sms_due and a sort."""
    plan = await store.run(
        lambda conn: [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _OVERDUE, (1.0, 10))]
    )
    assert plan == ["SEARCH sms USING INDEX sms_awaiting_receipt (submitted_at<?)"], plan


async def test_a_group_without_failures_runs_without_savepoints(tmp_path: Path) -> None:
    # The optimistic group: one transaction, no SAVEPOINT/RELEASE per call; a failure only
    # (the tests above) makes the group run again, call by call in savepoints.
    s = SqliteStore(tmp_path / "o.db")
    await s.open()
    try:
        statements: list[str] = []
        await s.run(lambda c: c.set_trace_callback(statements.append))
        release, hold = await _held_writer(s)
        calls = [
            asyncio.create_task(s.enqueue_sms([sms(i, message_id=f"<o{i}@lib>")], 1.0, 0))
            for i in range(3)
        ]
        await eventually(lambda: s._q.qsize() == 3, what="three calls queued")
        statements.clear()
        release.set()
        await hold
        await asyncio.gather(*calls)
        assert await s.backlog() == 3
        words = [x.split()[0].upper() for x in statements]
        group = words[words.index("BEGIN") :]  # before it: the holding call's own COMMIT
        assert group == ["BEGIN", "INSERT", "INSERT", "INSERT", "COMMIT"], words
    finally:
        await s.close()
