"""SQLite store: the embedded default.

One connection, owned by one writer thread. Callers submit small functions; the thread runs every
function waiting at that moment inside one transaction and commits once (group commit, as
PostgreSQL and Postfix's queue manager do), then resolves each caller's future. With WAL and
synchronous=FULL a commit is on disk when COMMIT returns, so "250" after the future resolves is
an honest promise. In a group of several, each function runs in its own SAVEPOINT: one failing
call does not take the rest of the group down with it (a lone call needs none: the transaction
is its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bridge import defaults
from bridge.model import (
    EnqueueResult,
    MailRecord,
    NewSms,
    OptoutRecord,
    Outgoing,
    SmsRecord,
    SmsState,
    new_queue_id,
)
from bridge.store import common
from bridge.store.base import (
    ACTIVITY_BUCKET_S,
    Activity,
    Bouncer,
    CostLintRow,
    HeldReceipt,
    LostMail,
    MailInfo,
    PurgeCounts,
    ReceiptBouncer,
    ReceiptItem,
    ReceiptOutcome,
    ReportData,
    Rollup,
    SameNumber,
    SegmentRef,
    SmsFilter,
    StoreError,
    SubmittedSms,
)
from bridge.store.common import LOST_SELECT, SMS_COLUMNS, sms_record
from bridge.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")
Fn = Callable[[sqlite3.Connection], Any]

# What to check when SQLite cannot open or write the file. Root never meets this; the service
# user does when the database or its directory is not writable to it (SQLite creates the -wal
# and -shm files next to the database, so the directory needs write access too).
_PERMISSION_HINT = (
    "check the file and directory permissions: the service user needs write access to both"
)
_NOT_A_DB_HINT = "it is not a readable SQLite database: check store.path, or restore a backup"


def open_problem(path: Path, exc: BaseException) -> str:
    """One line saying why the store at ``path`` cannot be used, and what to check (pure)."""
    if isinstance(exc, StoreError):
        return str(exc)
    where = f"cannot open the store at {path}"
    if isinstance(exc, sqlite3.Error):
        name = str(getattr(exc, "sqlite_errorname", ""))
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            return f"{where}: {exc} ({_PERMISSION_HINT})"
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return f"{where}: {exc} ({_NOT_A_DB_HINT})"
        return f"{where}: {exc}"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc} ({_PERMISSION_HINT})"
    return f"{where}: {type(exc).__name__}: {exc}"


# The receipt deadline sweep's texts, oldest first. INDEXED BY: without statistics the planner
# takes sms_due (state=?) and sorts every text awaiting a receipt (13 ms for 50,000, in the
# writer thread, every sweep); the partial index made for this query reads only the `limit`
# oldest (0.2 ms).
_OVERDUE = (
    "SELECT queue_id, tenant_id, msisdn FROM sms INDEXED BY sms_awaiting_receipt"
    " WHERE state='submitted' AND submitted_at<? ORDER BY submitted_at LIMIT ?"
)

# Upper bound on calls folded into one transaction: keeps one commit's latency bounded when a
# burst arrives, while still turning hundreds of small commits into a handful.
_GROUP_MAX = 256


@dataclass
class _Call:
    fn: Fn
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in settled:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class SqliteStore:
    def __init__(self, path: Path, *, region: str = defaults.TENANT_REGION) -> None:
        self.path = path
        # Where national-form numbers already in the store are read when a migration makes
        # them canonical (migration 8): the first tenant's region.
        self.region = region
        self._q: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        # Reads go to their own connection on their own thread: in WAL mode a reader never
        # waits for the writer (and its fsync), so an SMTP session's opt-out lookup at RCPT
        # does not queue behind another session's commit.
        self._reader = concurrent.futures.ThreadPoolExecutor(1, "store-reader")
        self._rconn: sqlite3.Connection | None = None
        # One more read connection, used on the event loop's thread for the indexed point
        # lookups on a hot path (the opt-out check at every RCPT; per text, first contact and
        # the frequency cap; per reply, its thread; the dispatcher's next due time): such a
        # lookup costs about 4 µs of CPU here, against about 80 µs through the reader thread
        # (its two thread hand-offs and their futures), and it never waits: busy_timeout is 0,
        # and a busy database sends the read to the reader thread.
        self._lconn: sqlite3.Connection | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (and migrate) the database; StoreError with a one-line reason when it cannot
        be opened for writing."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot open the store at {self.path}: cannot create the directory "
                f"{self.path.parent}: {exc.strerror or exc} ({_PERMISSION_HINT})"
            ) from exc
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
        if self._open_error is not None:
            raise StoreError(open_problem(self.path, self._open_error)) from self._open_error

    async def close(self) -> None:
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        if self._lconn is not None:
            self._lconn.close()
            self._lconn = None
        await loop.run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=True)
        self._q.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: fsync the WAL at every commit, so a power cut after "250" loses nothing.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._migrate(conn)
        self._check_writable(conn)
        return conn

    @staticmethod
    def _check_writable(conn: sqlite3.Connection) -> None:
        """A database SQLite could open only read-only (a read-only file or mount) opens and
        reads fine, and would first fail on the first notice's commit: a 451 for every
        message of a bridge that looks healthy. Write once, rolled back, to find out now."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE start_write_probe (x INTEGER)")
        finally:
            conn.execute("ROLLBACK")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store schema is version {version}, newer than this bridge knows "
                f"({len(MIGRATIONS)}); run the newer release or restore a backup"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if callable(script):
                    script(conn, self.region)
                else:
                    for statement in script.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("store schema migrated to version %d", number)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to open()
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._q.get()
                if first is None:
                    return
                group = [first]
                stop = False
                # Take what else is waiting; empty() first, so a lone call (the usual case on
                # a quiet bridge) does not pay for a queue.Empty raised and caught.
                while len(group) < _GROUP_MAX and not self._q.empty():
                    nxt = self._q.get_nowait()
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                self._run_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _run_group(self, conn: sqlite3.Connection, group: list[_Call]) -> None:
        results: list[tuple[bool, Any]]
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(group) == 1:
                # Alone in its transaction, a call needs no savepoint: when it fails, rolling
                # back the transaction undoes exactly its own work, as ROLLBACK TO would.
                results = [self._run_alone(conn, group[0])]
            else:
                results = self._run_together(conn, group)
        except Exception as exc:
            # The commit itself failed (disk full, read-only file system, I/O error), or
            # SQLite rolled the transaction back under a call: nothing in this group is
            # durable, so every caller hears about it.
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            log.error("store commit failed: %s", exc)
            err = StoreError(f"the store could not commit: {exc}")
            results = [(False, err)] * len(group)
        # One wake-up per event loop for the whole group, not one per call: each
        # call_soon_threadsafe writes to the loop's self-pipe (a syscall and a wake-up).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for call, (ok, value) in zip(group, results, strict=True):
            if isinstance(value, sqlite3.Error) and not ok:
                value = StoreError(str(value))
            by_loop.setdefault(call.loop, []).append((call.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(_settle_all, settled)

    @staticmethod
    def _run_alone(conn: sqlite3.Connection, call: _Call) -> tuple[bool, Any]:
        try:
            value = call.fn(conn)
        except Exception as exc:
            if not conn.in_transaction:
                raise  # rolled back by SQLite itself (see _run_isolated)
            conn.execute("ROLLBACK")
            return False, exc
        conn.execute("COMMIT")
        return True, value

    def _run_together(self, conn: sqlite3.Connection, group: list[_Call]) -> list[tuple[bool, Any]]:
        """Every call of the group in the open transaction, then one COMMIT.

        Optimistic: the calls run one after another with no savepoint, since a call nearly
        never fails and SAVEPOINT/RELEASE are two statements more per call, each a trip
        through the GIL that the busy event loop thread makes the writer wait for (measured
        without them: SMTP intake 9 % faster at 4 connections, 3 % at 16). When one
        fails, the transaction is rolled back and the group runs again in _run_isolated,
        where only the failing call fails. So a call runs twice then: every call's fn must
        do nothing but its SQL and return its answer (no Python side effects), which is
        what the methods of this class hand the writer."""
        values: list[Any] = []
        try:
            for call in group:
                values.append(call.fn(conn))
        except Exception:
            if not conn.in_transaction:
                raise  # rolled back by SQLite itself: every call of the group fails
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            return self._run_isolated(conn, group)
        conn.execute("COMMIT")
        return [(True, value) for value in values]

    @staticmethod
    def _run_isolated(conn: sqlite3.Connection, group: list[_Call]) -> list[tuple[bool, Any]]:
        """The group again, each call in its own savepoint: a failing call's writes are
        rolled back to its savepoint and it alone hears of it; the others commit."""
        results: list[tuple[bool, Any]] = []
        for call in group:
            # One name for every call's savepoint: each is released before the next opens,
            # and one SQL text keeps one prepared statement in the cache.
            conn.execute("SAVEPOINT call")
            try:
                value = call.fn(conn)
            except Exception as exc:
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back itself (SQLITE_FULL,
                    # SQLITE_IOERR...: sqlite.org/lang_transaction.html, "Response To Errors
                    # Within A Transaction"): the calls before this one are gone too, and
                    # every caller hears of it.
                    raise
                conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
                results.append((False, exc))
            else:
                conn.execute("RELEASE call")
                results.append((True, value))
        conn.execute("COMMIT")
        return results

    def _close_reader(self) -> None:
        if self._rconn is not None:
            self._rconn.close()
            self._rconn = None

    def _read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            self._rconn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._rconn.execute("PRAGMA busy_timeout=5000")
        conn = self._rconn
        try:
            conn.execute("BEGIN")  # one snapshot for every statement of fn
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"the store could not be read: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_in_thread, fn)

    async def _point_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read of a row or two by index, on the loop's own thread (see __init__); falls
        back to the reader thread when the database is busy or the connection fails."""
        if self._thread is None:
            raise StoreError("the store is not open")
        try:
            if self._lconn is None:
                conn = sqlite3.connect(self.path, isolation_level=None)
                conn.execute("PRAGMA busy_timeout=0")
                conn.execute("PRAGMA query_only=1")
                self._lconn = conn
            return fn(self._lconn)
        except sqlite3.Error:
            # SQLITE_BUSY (a checkpoint or recovery holds a lock) or anything else: the
            # reader thread waits up to busy_timeout and reports a real failure as StoreError;
            # the next lookup starts on a fresh connection.
            if self._lconn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._lconn.close()
                self._lconn = None
            return await self._read(fn)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._q.put(_Call(fn, fut, loop))
        return await fut

    # --- outbound SMS queue --------------------------------------------------------------------

    async def enqueue_sms(
        self,
        items: Sequence[NewSms],
        now: float,
        dedup_window_s: float,
        dup_window_s: float = 0.0,
        lint: Sequence[CostLintRow] = (),
    ) -> list[EnqueueResult]:
        """Commit every recipient of one email at once.

        Skipped as duplicates: the same Message-ID to the same number within dedup_window_s (a
        client retrying after a lost 250), and the same words from the same library to the
        same number within dup_window_s (an ILS regenerating a notice). `lint` rows (cost
        lint, indexed like items) are recorded with the messages they describe.
        """

        def fn(conn: sqlite3.Connection) -> list[EnqueueResult]:
            plan = common.enqueue_plan(items, now, dedup_window_s, dup_window_s, lint)
            return common.run_plan(plan, lambda step: _enqueue_step(conn, step, now))

        return await self._call(fn)

    async def backlog(self) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM sms WHERE state IN ('queued','sending')")
            return int(row.fetchone()[0])

        return await self._read(fn)

    async def requeue_inflight(self, now: float) -> int:
        """At start: a crash may have left messages claimed but not finished."""

        def fn(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE sms SET state='queued', updated_at=?, next_attempt_at=?"
                " WHERE state='sending'",
                (now, now),
            )
            return cur.rowcount

        return await self._call(fn)

    async def claim_sms(self, now: float, limit: int) -> list[SmsRecord]:
        def fn(conn: sqlite3.Connection) -> list[SmsRecord]:
            rows = conn.execute(
                f"SELECT {SMS_COLUMNS} FROM sms WHERE state='queued' AND next_attempt_at<=?"
                " ORDER BY next_attempt_at, created_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE sms SET state='sending', attempts=attempts+1, updated_at=?"
                " WHERE queue_id=?",
                [(now, row[0]) for row in rows],
            )
            return [common.as_claimed(sms_record(row), now) for row in rows]

        return await self._call(fn)

    async def next_due(self) -> float | None:
        """When the earliest queued message becomes due (for the dispatcher's sleep)."""

        def fn(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT min(next_attempt_at) FROM sms WHERE state='queued'")
            value = row.fetchone()[0]
            return None if value is None else float(value)

        return await self._point_read(fn)

    async def next_concat_ref(self) -> int:
        """A persistent counter for concatenation references (3GPP TS 23.040 §9.2.3.24.1):
        two long texts to one handset must not share a reference, even across restarts."""

        def fn(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT INTO counter (name, value) VALUES ('concat_ref', 1)"
                " ON CONFLICT(name) DO UPDATE SET value = (value + 1) % 65536"
            )
            row = conn.execute("SELECT value FROM counter WHERE name='concat_ref'").fetchone()
            return int(row[0])

        return await self._call(fn)

    async def record_submitted_many(self, items: Sequence[SubmittedSms]) -> None:
        """Every text of `items` in one transaction: the dispatcher records the texts whose
        submit_sm_resp arrived while the previous write ran (bridge/batcher.py)."""
        if not items:
            return
        rows = common.submitted_rows(items)

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO first_contact (msisdn, scope, first_at, queue_id)"
                " VALUES (?,?,?,?)",
                rows.first_contacts,
            )
            conn.executemany(
                "UPDATE sms SET state=?1, reason=?2, submitted_at=?3, updated_at=?3, segments=?4,"
                " coding=?5, shaped=coalesce(?6, shaped), final_at=coalesce(?7, final_at)"
                " WHERE queue_id=?8",
                rows.updates,
            )
            conn.executemany("DELETE FROM sms_segment WHERE queue_id=?", rows.queue_ids)
            conn.executemany(
                "INSERT INTO sms_segment (queue_id, seq, smsc_message_id, state, updated_at)"
                " VALUES (?,?,?,'submitted',?)",
                rows.segments,
            )

        await self._call(fn)

    async def record_retry(
        self, queue_id: str, reason: str, next_at: float, now: float, *, count: bool = True
    ) -> None:
        """Give a claimed message back. count=False: the attempt did not reach the SMSC
        (link down, policy deferral), so it does not use up one of smpp.max_attempts."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sms SET state='queued', reason=?, next_attempt_at=?, updated_at=?,"
                " attempts=attempts-? WHERE queue_id=? AND state='sending'",
                (reason, next_at, now, 0 if count else 1, queue_id),
            )

        await self._call(fn)

    async def record_final(
        self,
        queue_id: str,
        state: SmsState,
        reason: str | None,
        now: float,
        mails: Sequence[Outgoing] = (),
    ) -> None:
        """Finish a message and queue its bounce email in the same transaction."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sms SET state=?, reason=?, final_at=?, updated_at=? WHERE queue_id=?",
                (state.value, reason, now, now, queue_id),
            )
            for mail in mails:
                _insert_mail(conn, mail, now)

        await self._call(fn)

    async def get_sms(self, queue_id: str) -> SmsRecord | None:
        def fn(conn: sqlite3.Connection) -> SmsRecord | None:
            row = conn.execute(
                f"SELECT {SMS_COLUMNS} FROM sms WHERE queue_id=?", (queue_id,)
            ).fetchone()
            return None if row is None else sms_record(row)

        return await self._read(fn)

    async def list_sms(self, flt: SmsFilter, now: float) -> list[SmsRecord]:
        where, args = common.sms_filter(flt, now, lambda n: "?")

        def fn(conn: sqlite3.Connection) -> list[SmsRecord]:
            rows = conn.execute(
                f"SELECT {SMS_COLUMNS} FROM sms WHERE {where} ORDER BY created_at DESC LIMIT ?",
                args,
            ).fetchall()
            return [sms_record(r) for r in rows]

        return await self._read(fn)

    async def retry_sms(self, queue_id: str, now: float) -> bool:
        """Admin: put a failed/expired (or stuck) message back in the queue, attempts reset."""

        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE sms SET state='queued', attempts=0, next_attempt_at=?, updated_at=?,"
                " created_at=?, reason='retried by admin' WHERE queue_id=? AND body IS NOT NULL"
                " AND state IN ('queued','failed','expired','unconfirmed')",
                (now, now, now, queue_id),
            )
            return cur.rowcount == 1

        return await self._call(fn)

    async def drop_sms(self, queue_id: str, now: float) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE sms SET state='failed', reason='dropped by admin', final_at=?, updated_at=?"
                " WHERE queue_id=? AND state IN ('queued','sending')",
                (now, now, queue_id),
            )
            return cur.rowcount == 1

        return await self._call(fn)

    async def counts(self) -> dict[str, int]:
        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, count(*) FROM sms GROUP BY state").fetchall()
            return common.state_counts(rows)

        return await self._read(fn)

    # --- delivery receipts ---------------------------------------------------------------------

    async def find_segments(self, smsc_ids: Sequence[str]) -> list[SegmentRef]:
        """Segments whose SMSC message id is any of `smsc_ids` (the id's hex/decimal variants)."""

        return await self._read(lambda conn: _segments(conn, smsc_ids)) if smsc_ids else []

    @staticmethod
    def _apply_segment(
        conn: sqlite3.Connection,
        queue_id: str,
        seq: int,
        segment_state: str,
        error: str | None,
        now: float,
        rollup: Rollup,
        bounces: Bouncer,
    ) -> SmsState | None:
        """One segment's receipt and the roll-up of its text, inside the writer's transaction."""
        conn.execute(
            "UPDATE sms_segment SET state=?, error=?, updated_at=? WHERE queue_id=? AND seq=?",
            (segment_state, error, now, queue_id, seq),
        )
        row = conn.execute(
            f"SELECT {SMS_COLUMNS} FROM sms WHERE queue_id=?", (queue_id,)
        ).fetchone()
        if row is None:
            return None
        rec = sms_record(row)
        states = [
            r[0]
            for r in conn.execute(
                "SELECT state FROM sms_segment WHERE queue_id=? ORDER BY seq", (queue_id,)
            )
        ]
        change = common.receipt_change(rec, states, rollup)
        if change is None:
            return None
        state, reason = change
        conn.execute(
            "UPDATE sms SET state=?, reason=?, final_at=?, updated_at=? WHERE queue_id=?",
            (state.value, reason, now if state.final else None, now, queue_id),
        )
        if common.bounces_on(state):
            for mail in bounces(rec, state, reason):
                _insert_mail(conn, mail, now)
        return state

    async def apply_receipts(
        self,
        items: Sequence[ReceiptItem],
        now: float,
        rollup: Rollup,
        bounces: ReceiptBouncer,
        same_number: SameNumber,
    ) -> list[ReceiptOutcome]:
        """Match, apply or hold every receipt of `items` in one write transaction.

        Each is looked up as find_segments does and matched by `common.pick_segment` (its
        exact id, then `variants` for the same patron); a match updates its segment, rolls its
        text up (`_apply_segment`) and drops the item's held row; no match holds a fresh
        receipt in pending_receipt and keeps a held one. Matching in the writer, in the same
        transaction as the hold, means a receipt is either matched or held before any submit
        recorded after it commits, so `held_for` after record_submitted_many always finds it."""

        def fn(conn: sqlite3.Connection) -> list[ReceiptOutcome]:
            out: list[ReceiptOutcome] = []
            for item in items:
                seg = None
                for ids in common.receipt_tries(item):
                    seg = common.pick_segment(_segments(conn, ids), item.patron, same_number)
                    if seg is not None:
                        break
                if seg is None:
                    if item.held_id is None:
                        conn.execute(
                            "INSERT INTO pending_receipt (smsc_message_id, patron, state, error,"
                            " raw_stat, received_at) VALUES (?,?,?,?,?,?)",
                            (item.smsc_id, item.patron, item.state, item.error, item.raw, now),
                        )
                    out.append(ReceiptOutcome(None, None))
                    continue
                bouncer = common.item_bouncer(bounces, item)
                new_state = self._apply_segment(
                    conn, seg.queue_id, seg.seq, item.state, item.error, now, rollup, bouncer
                )
                if item.held_id is not None:
                    conn.execute("DELETE FROM pending_receipt WHERE id=?", (item.held_id,))
                out.append(ReceiptOutcome(seg, new_state))
            return out

        return await self._call(fn) if items else []

    async def settle_overdue(
        self, submitted_before: float, state: SmsState, reason: str, now: float, limit: int = 500
    ) -> list[tuple[str, str, str]]:
        """Receipt deadline: texts still `submitted` since before `submitted_before` become
        `state` (no bounce: bridge/receipt_watch.py). Returns their (queue_id, tenant, msisdn)."""

        def fn(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
            rows = conn.execute(_OVERDUE, (submitted_before, limit)).fetchall()
            conn.executemany(
                "UPDATE sms SET state=?, reason=?, final_at=?, updated_at=?"
                " WHERE queue_id=? AND state='submitted'",
                [(state.value, reason, now, now, r[0]) for r in rows],
            )
            return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

        return await self._call(fn)

    async def held_for(self, smsc_ids: Sequence[str]) -> list[HeldReceipt]:
        """Held receipts for any of `smsc_ids`, oldest first. Called after every submit, and
        nearly always empty: an indexed point read on the loop's thread (_point_read), not a
        write. A read sees every receipt held before it: apply_receipts matches or holds in
        one transaction, so one held before the submit's commit is visible after it."""
        if isinstance(smsc_ids, str):
            raise TypeError("held_for takes a sequence of ids, not one id")
        if not smsc_ids:
            return []

        def fn(conn: sqlite3.Connection) -> list[HeldReceipt]:
            marks = ",".join("?" * len(smsc_ids))
            rows = conn.execute(
                "SELECT id, smsc_message_id, patron, state, error, raw_stat, received_at"
                f" FROM pending_receipt WHERE smsc_message_id IN ({marks}) ORDER BY id",
                list(smsc_ids),
            ).fetchall()
            return [common.held_receipt(r) for r in rows]

        return await self._point_read(fn)

    async def held_receipts(self, older_than: float) -> list[HeldReceipt]:
        """Held receipts received before `older_than` (HeldReceipt)."""

        def fn(conn: sqlite3.Connection) -> list[HeldReceipt]:
            rows = conn.execute(
                "SELECT id, smsc_message_id, patron, state, error, raw_stat, received_at"
                " FROM pending_receipt WHERE received_at<? ORDER BY id LIMIT 1000",
                (older_than,),
            ).fetchall()
            return [common.held_receipt(r) for r in rows]

        return await self._call(fn)

    async def drop_held_receipt(self, row_id: int) -> None:
        await self._call(
            lambda conn: conn.execute("DELETE FROM pending_receipt WHERE id=?", (row_id,))
        )

    # --- inbound (MO) --------------------------------------------------------------------------

    async def add_mo_part(
        self, group_key: str, seq: int, total: int, text: str, now: float
    ) -> list[str] | None:
        """Keep one part of a concatenated MO; all texts in order once every part is here."""

        def fn(conn: sqlite3.Connection) -> list[str] | None:
            conn.execute(
                "INSERT OR IGNORE INTO mo_part (group_key, seq, total, text, received_at)"
                " VALUES (?,?,?,?,?)",
                (group_key, seq, total, text, now),
            )
            rows = conn.execute(
                "SELECT seq, text FROM mo_part WHERE group_key=? ORDER BY seq", (group_key,)
            ).fetchall()
            return common.reassembled(rows, total)

        return await self._call(fn)

    async def stale_mo_groups(
        self, older_than: float
    ) -> list[tuple[str, int, list[tuple[int, str]]]]:
        """Concatenated MOs still missing parts after the reassembly timeout:
        (group, total parts, [(seq, text)] of the parts that came)."""

        def fn(conn: sqlite3.Connection) -> list[tuple[str, int, list[tuple[int, str]]]]:
            groups = conn.execute(
                "SELECT group_key, max(total) FROM mo_part GROUP BY group_key"
                " HAVING max(received_at)<? ORDER BY group_key",
                (older_than,),
            ).fetchall()
            return [
                (
                    key,
                    int(total),
                    [
                        (int(r[0]), str(r[1]))
                        for r in conn.execute(
                            "SELECT seq, text FROM mo_part WHERE group_key=? ORDER BY seq", (key,)
                        )
                    ],
                )
                for key, total in groups
            ]

        return await self._call(fn)

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
    ) -> bool:
        """Commit everything one MO causes, atomically: its dedup mark, the emails it produces,
        any SMS answer, reply-thread records (message id, tenant, msisdn, source) and the
        removal of its reassembled parts. False (and nothing written) for a redelivery."""

        def fn(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM mo_seen WHERE received_at<?", (now - window_s,))
            cur = conn.execute(
                "INSERT OR IGNORE INTO mo_seen (dedup_key, received_at) VALUES (?,?)",
                (dedup_key, now),
            )
            if cur.rowcount == 0:
                return False
            for mail in mails:
                _insert_mail(conn, mail, now)
            for item in sms:
                _insert_sms(conn, item, now)
            conn.executemany(
                "INSERT OR REPLACE INTO conversation"
                " (mail_message_id, tenant_id, msisdn, source_addr, created_at)"
                " VALUES (?,?,?,?,?)",
                [(*c, now) for c in conversations],
            )
            if done_group is not None:
                conn.execute("DELETE FROM mo_part WHERE group_key=?", (done_group,))
            if optout is not None:
                _write_optout(conn, optout, dedup_key)
            return True

        return await self._call(fn)

    async def last_sms_to(self, msisdn: str, source_addr: str, since: float) -> SmsRecord | None:
        """The most recent text to this patron from this sending number (reply routing)."""

        def fn(conn: sqlite3.Connection) -> SmsRecord | None:
            row = conn.execute(
                f"SELECT {SMS_COLUMNS} FROM sms WHERE msisdn=? AND source_addr=?"
                " AND created_at>=? ORDER BY created_at DESC LIMIT 1",
                (msisdn, source_addr, since),
            ).fetchone()
            return None if row is None else sms_record(row)

        return await self._point_read(fn)

    async def conversation_for(self, message_ids: Sequence[str]) -> tuple[str, str] | None:
        """(tenant_id, msisdn) of a reply email the bridge sent, by its Message-ID."""

        def fn(conn: sqlite3.Connection) -> tuple[str, str] | None:
            marks = ",".join("?" * len(message_ids))
            row = conn.execute(
                "SELECT tenant_id, msisdn FROM conversation"
                f" WHERE mail_message_id IN ({marks}) ORDER BY created_at DESC LIMIT 1",
                list(message_ids),
            ).fetchone()
            return None if row is None else (row[0], row[1])

        return await self._point_read(fn) if message_ids else None

    # --- compliance ----------------------------------------------------------------------------

    async def optout_status(self, msisdn: str, scope: str) -> OptoutRecord | None:
        """The number's current opt-out for a sending number, or None if it never changed."""

        def fn(conn: sqlite3.Connection) -> OptoutRecord | None:
            row = conn.execute(
                "SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout"
                " WHERE msisdn=? AND scope=?",
                (msisdn, scope),
            ).fetchone()
            return None if row is None else common.optout_record(row)

        return await self._point_read(fn)

    async def set_optout(self, record: OptoutRecord, mo_ref: str | None = None) -> None:
        await self._call(lambda conn: _write_optout(conn, record, mo_ref))

    async def list_optouts(self, scope: str | None = None) -> list[OptoutRecord]:
        def fn(conn: sqlite3.Connection) -> list[OptoutRecord]:
            sql = "SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout"
            sql += " WHERE opted_out=1" + (" AND scope=?" if scope else "")
            rows = conn.execute(sql + " ORDER BY changed_at", (scope,) if scope else ())
            return [common.optout_record(r) for r in rows.fetchall()]

        return await self._read(fn)

    async def optout_history(self, msisdn: str) -> list[tuple[OptoutRecord, str | None]]:
        def fn(conn: sqlite3.Connection) -> list[tuple[OptoutRecord, str | None]]:
            rows = conn.execute(
                "SELECT msisdn, scope, opted_out, keyword, changed_at, actor, mo_ref"
                " FROM optout_audit WHERE msisdn=? ORDER BY id",
                (msisdn,),
            ).fetchall()
            return [(common.optout_record(r), r[6]) for r in rows]

        return await self._read(fn)

    async def had_first_contact(self, msisdn: str, scope: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM first_contact WHERE msisdn=? AND scope=?", (msisdn, scope)
            ).fetchone()
            return row is not None

        return await self._point_read(fn)

    async def mark_first_contact(self, msisdn: str, scope: str, queue_id: str, now: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO first_contact (msisdn, scope, first_at, queue_id)"
                " VALUES (?,?,?,?)",
                (msisdn, scope, now, queue_id),
            )

        await self._call(fn)

    async def sent_times(self, msisdn: str, tenant_id: str, since: float) -> list[float]:
        """When this library's texts to this number were submitted (frequency caps)."""

        def fn(conn: sqlite3.Connection) -> list[float]:
            rows = conn.execute(
                "SELECT submitted_at FROM sms WHERE msisdn=? AND tenant_id=? AND kind='notice'"
                " AND submitted_at IS NOT NULL AND submitted_at>=?",
                (msisdn, tenant_id, since),
            )
            return [float(r[0]) for r in rows.fetchall()]

        return await self._point_read(fn)

    async def cost_report(self, since: float) -> list[tuple[str, str, int, int, int, str]]:
        """(tenant, template, texts, UCS-2 texts, segments, culprits) since a time."""

        def fn(conn: sqlite3.Connection) -> list[tuple[str, str, int, int, int, str]]:
            rows = conn.execute(
                "SELECT tenant_id, template, count(*), sum(coding='ucs2'), sum(segments),"
                " group_concat(DISTINCT culprits) FROM cost_lint WHERE created_at>=?"
                " GROUP BY tenant_id, template ORDER BY sum(segments) DESC",
                (since,),
            )
            return common.cost_rows(rows.fetchall())

        return await self._read(fn)

    # --- IMAP intake ---------------------------------------------------------------------------

    async def imap_state(self, mailbox: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, highest UID committed) for a mailbox (RFC 3501 §2.3.1.1)."""

        def fn(conn: sqlite3.Connection) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT uidvalidity, last_uid FROM imap_state WHERE mailbox=?", (mailbox,)
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

        return await self._read(fn)

    async def set_imap_state(
        self, mailbox: str, uidvalidity: int, last_uid: int, now: float
    ) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO imap_state (mailbox, uidvalidity, last_uid, updated_at)"
                " VALUES (?,?,?,?) ON CONFLICT (mailbox) DO UPDATE SET"
                " uidvalidity=excluded.uidvalidity, last_uid=excluded.last_uid,"
                " updated_at=excluded.updated_at",
                (mailbox, uidvalidity, last_uid, now),
            )

        await self._call(fn)

    # --- outbound mail -------------------------------------------------------------------------

    async def enqueue_mail(self, mail: Outgoing, now: float) -> int:
        return await self._call(lambda conn: _insert_mail(conn, mail, now))

    async def claim_mail(self, now: float, limit: int) -> list[MailRecord]:
        def fn(conn: sqlite3.Connection) -> list[MailRecord]:
            rows = conn.execute(
                # attempts+1: as it is once the claim below commits
                "SELECT id, kind, mail_from, rcpt_to, data, attempts+1, ref, tenant_id,"
                " fallback_of FROM mail_outbox"
                " WHERE state='queued' AND next_attempt_at<=? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE mail_outbox SET attempts=attempts+1, updated_at=? WHERE id=?",
                    (now, row[0]),
                )
            return [common.mail_record(r) for r in rows]

        return await self._call(fn)

    async def mail_done(
        self, mail_id: int, state: str, reason: str | None, now: float, next_at: float = 0.0
    ) -> None:
        """state: 'sent' (bytes dropped, but a reply's are kept: a bounce may still make a
        fallback copy of it; the purge erases them), 'queued' (retry at next_at) or 'dead'.
        Only a queued email changes: a bounce can come back, and be recorded, before the
        mailer that sent the email gets to record it sent."""

        def fn(conn: sqlite3.Connection) -> None:
            if state == "sent":
                conn.execute(
                    "UPDATE mail_outbox SET state='sent',"
                    " data=CASE WHEN kind='reply' THEN data ELSE x'' END, reason=NULL,"
                    " updated_at=? WHERE id=? AND state='queued'",
                    (now, mail_id),
                )
            else:
                conn.execute(
                    "UPDATE mail_outbox SET state=?, reason=?, next_attempt_at=?, updated_at=?"
                    " WHERE id=? AND state='queued'",
                    (state, reason, next_at, now, mail_id),
                )

        await self._call(fn)

    async def get_mail(self, mail_id: int) -> MailInfo | None:
        def fn(conn: sqlite3.Connection) -> MailInfo | None:
            row = conn.execute(
                "SELECT id, kind, state, rcpt_to, data, tenant_id, ref, fallback_of"
                " FROM mail_outbox WHERE id=?",
                (mail_id,),
            ).fetchone()
            return None if row is None else common.mail_info(row)

        return await self._read(fn)

    async def mail_lost(
        self,
        mail_id: int,
        state: str,
        reason: str,
        now: float,
        fallback: Outgoing | None = None,
    ) -> int | None:
        """Mark an email lost: 'dead' (the relay refused it) or 'bounced' (a DSN came back).

        Only once: an email already lost stays as it is (a replayed or duplicate DSN changes
        nothing) and returns None. Otherwise the fallback copy, if any, is queued in the same
        transaction and its id returned (0 when there is no fallback). The lost email's bytes
        are erased: the fallback copy carries them from now on.
        """

        def fn(conn: sqlite3.Connection) -> int | None:
            cur = conn.execute(
                "UPDATE mail_outbox SET state=?, reason=?, lost_at=?, updated_at=?, data=x''"
                " WHERE id=? AND state NOT IN ('dead','bounced')",
                (state, reason, now, now, mail_id),
            )
            if cur.rowcount != 1:
                return None
            return _insert_mail(conn, fallback, now) if fallback is not None else 0

        return await self._call(fn)

    async def lost_mail(
        self, since: float, tenant_id: str | None = None, limit: int = 20
    ) -> list[LostMail]:
        """Emails lost since `since`, newest first (all libraries when tenant_id is None)."""

        def fn(conn: sqlite3.Connection) -> list[LostMail]:
            sql = LOST_SELECT + " WHERE m.lost_at IS NOT NULL AND m.lost_at>=?"
            args: list[Any] = [since]
            if tenant_id is not None:
                sql += " AND m.tenant_id=?"
                args.append(tenant_id)
            sql += " ORDER BY m.lost_at DESC, m.id DESC LIMIT ?"
            args.append(limit)
            return [common.lost_mail(r) for r in conn.execute(sql, args).fetchall()]

        return await self._read(fn)

    async def meta_setdefault(self, key: str, value: str) -> str:
        """The stored value of `key`, storing `value` first if there is none (bridge-wide
        settings that must survive restarts, such as the VERP secret)."""

        def fn(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?,?) ON CONFLICT DO NOTHING", (key, value)
            )
            return str(conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

        return await self._call(fn)

    async def mail_counts(self) -> dict[str, int]:
        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, count(*) FROM mail_outbox GROUP BY state")
            return common.state_counts(rows.fetchall())

        return await self._read(fn)

    async def next_mail_due(self) -> float | None:
        def fn(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT min(next_attempt_at) FROM mail_outbox WHERE state='queued'")
            value = row.fetchone()[0]
            return None if value is None else float(value)

        return await self._read(fn)

    # --- maintenance ---------------------------------------------------------------------------

    async def purge(self, bodies_before: float, records_before: float, now: float) -> PurgeCounts:
        """Patron privacy: erase message text of texts final before `bodies_before`, delete
        message records created before `records_before`, and drop delivered emails and old
        bookkeeping. Opt-out records and their audit trail are kept."""

        done = common.sql_list(common.PURGED_SMS_STATES)
        gone = common.sql_list(common.PURGED_MAIL_STATES)

        def fn(conn: sqlite3.Connection) -> PurgeCounts:
            bodies = conn.execute(
                "UPDATE sms SET body=NULL WHERE body IS NOT NULL AND final_at IS NOT NULL"
                " AND final_at<=?",
                (bodies_before,),
            ).rowcount
            old = f"SELECT queue_id FROM sms WHERE created_at<? AND state IN {done}"
            conn.execute(f"DELETE FROM sms_segment WHERE queue_id IN ({old})", (records_before,))
            conn.execute(f"DELETE FROM cost_lint WHERE queue_id IN ({old})", (records_before,))
            records = conn.execute(
                f"DELETE FROM sms WHERE created_at<? AND state IN {done}", (records_before,)
            ).rowcount
            mails = conn.execute(
                f"DELETE FROM mail_outbox WHERE state IN {gone} AND updated_at<?", (bodies_before,)
            ).rowcount
            conn.execute("DELETE FROM conversation WHERE created_at<?", (records_before,))
            conn.execute("DELETE FROM mo_seen WHERE received_at<?", (bodies_before,))
            return PurgeCounts(bodies, records, mails)

        return await self._call(fn)

    async def job_due(self, name: str, now: float, every_s: float) -> bool:
        """True (and the run recorded) when `name` last ran `every_s` ago or more. The first
        call only starts the clock, so a new install does not send a report on its first day."""

        def fn(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT last_run FROM job WHERE name=?", (name,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO job (name, last_run) VALUES (?,?)", (name, now))
                return False
            if float(row[0]) > now - every_s:
                return False
            conn.execute("UPDATE job SET last_run=? WHERE name=?", (now, name))
            return True

        return await self._call(fn)

    async def tenant_report(
        self, tenant_id: str, scope: str, since: float, until: float
    ) -> ReportData:
        """What a library's periodic report shows, for texts created in [since, until)."""

        def fn(conn: sqlite3.Connection) -> ReportData:
            args = (tenant_id, since, until)
            return common.report_data(
                states=conn.execute(
                    "SELECT state, count(*) FROM sms WHERE tenant_id=? AND kind='notice'"
                    " AND created_at>=? AND created_at<? GROUP BY state",
                    args,
                ).fetchall(),
                failed=conn.execute(
                    "SELECT msisdn, reason, subject, created_at FROM sms WHERE tenant_id=?"
                    " AND kind='notice' AND state IN ('failed','expired')"
                    " AND created_at>=? AND created_at<? ORDER BY created_at",
                    args,
                ).fetchall(),
                unconfirmed=conn.execute(
                    "SELECT msisdn, subject, created_at FROM sms WHERE tenant_id=?"
                    " AND kind='notice' AND state='unconfirmed'"
                    " AND created_at>=? AND created_at<? ORDER BY created_at",
                    args,
                ).fetchall(),
                changes=conn.execute(
                    "SELECT msisdn, opted_out, keyword, changed_at FROM optout_audit"
                    " WHERE scope=? AND changed_at>=? AND changed_at<? ORDER BY changed_at, id",
                    (scope, since, until),
                ).fetchall(),
                costly=conn.execute(
                    "SELECT template, count(*), sum(coding='ucs2'), sum(segments),"
                    " group_concat(DISTINCT culprits) FROM cost_lint WHERE tenant_id=?"
                    " AND created_at>=? AND created_at<? GROUP BY template"
                    " ORDER BY sum(segments) DESC LIMIT 10",
                    args,
                ).fetchall(),
                lost=conn.execute(
                    LOST_SELECT + " WHERE m.tenant_id=? AND m.lost_at>=? AND m.lost_at<?"
                    " ORDER BY m.lost_at",
                    args,
                ).fetchall(),
            )

        return await self._read(fn)

    async def activity(self, since: float) -> Activity:
        """Notices, replies and opt-out changes since `since`, in buckets (the status page)."""
        b = ACTIVITY_BUCKET_S

        def fn(conn: sqlite3.Connection) -> Activity:
            texts = conn.execute(
                f"SELECT tenant_id, CAST(created_at / {b} AS INTEGER) AS k, state, count(*)"
                " FROM sms WHERE kind='notice' AND created_at>=? GROUP BY tenant_id, k, state",
                (since,),
            ).fetchall()
            replies = conn.execute(
                f"SELECT tenant_id, CAST(created_at / {b} AS INTEGER) AS k, count(*)"
                " FROM conversation WHERE created_at>=? GROUP BY tenant_id, k",
                (since,),
            ).fetchall()
            optouts = conn.execute(
                f"SELECT scope, CAST(changed_at / {b} AS INTEGER) AS k, opted_out, count(*)"
                " FROM optout_audit WHERE changed_at>=? GROUP BY scope, k, opted_out",
                (since,),
            ).fetchall()
            to_fix = conn.execute(
                "SELECT tenant_id, msisdn, coalesce(reason, ''), count(*) FROM sms"
                " WHERE kind='notice' AND state IN ('failed','expired') AND created_at>=?"
                " GROUP BY tenant_id, msisdn, reason ORDER BY count(*) DESC LIMIT 100",
                (since,),
            ).fetchall()
            return common.activity(texts, replies, optouts, to_fix)

        return await self._read(fn)

    async def ping(self) -> int:
        """1 when a write transaction can be opened and committed (health checks)."""
        return await self._call(lambda conn: int(conn.execute("SELECT 1").fetchone()[0]))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Escape hatch for modules that own their own tables (inbound, policy). `fn` may run
        twice, the first run rolled back (see _run_together): SQL only, no Python side
        effects."""
        return await self._call(fn)


def _insert(conn: sqlite3.Connection, table: str, row: common.NewRow, tail: str = "") -> int:
    """INSERT one common.NewRow; the new row's rowid."""
    columns, values = row
    marks = ",".join("?" * len(values))
    cur = conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks}){tail}", values)
    return int(cur.lastrowid or 0)


def _insert_sms(conn: sqlite3.Connection, item: NewSms, now: float) -> str:
    qid = new_queue_id()
    _insert(conn, "sms", common.sms_row(qid, item, now))
    return qid


def _write_optout(conn: sqlite3.Connection, rec: OptoutRecord, mo_ref: str | None) -> None:
    if common.clears_first_contact(rec):
        conn.execute(
            "DELETE FROM first_contact WHERE msisdn=? AND scope=?", (rec.msisdn, rec.scope)
        )
    _insert(
        conn,
        "optout",
        common.optout_row(rec),
        " ON CONFLICT (msisdn, scope) DO UPDATE SET opted_out=excluded.opted_out,"
        " keyword=excluded.keyword, changed_at=excluded.changed_at, actor=excluded.actor",
    )
    _insert(conn, "optout_audit", common.optout_audit_row(rec, mo_ref))


def _insert_mail(conn: sqlite3.Connection, mail: Outgoing, now: float) -> int:
    return _insert(conn, "mail_outbox", common.mail_row(mail, now))


def _segments(conn: sqlite3.Connection, smsc_ids: Sequence[str]) -> list[SegmentRef]:
    """Segments whose SMSC message id is any of `smsc_ids`, newest text first."""
    marks = ",".join("?" * len(smsc_ids))
    rows = conn.execute(
        "SELECT g.queue_id, g.seq, s.msisdn, s.tenant_id, s.state FROM sms_segment g"
        f" JOIN sms s ON s.queue_id = g.queue_id WHERE g.smsc_message_id IN ({marks})"
        " ORDER BY s.created_at DESC",
        list(smsc_ids),
    ).fetchall()
    return [SegmentRef(r[0], r[1], r[2], r[3], SmsState(r[4])) for r in rows]


def _enqueue_step(conn: sqlite3.Connection, step: common.EnqueueStep, now: float) -> str | None:
    """One step of common.enqueue_plan."""
    if isinstance(step, common.FindDuplicate):
        item = step.item
        if step.by == "dup_key":
            row = conn.execute(
                "SELECT queue_id FROM sms INDEXED BY sms_dup_key"
                " WHERE dup_key=? AND created_at>=? LIMIT 1",
                (item.dup_key, step.since),
            ).fetchone()
        else:
            row = conn.execute(
                # INDEXED BY: without statistics the planner picked the
                # (msisdn, tenant) index and scanned a patron's whole history.
                "SELECT queue_id FROM sms INDEXED BY sms_dedup WHERE message_id=?"
                " AND msisdn=? AND tenant_id=? AND created_at>=? LIMIT 1",
                (item.message_id, item.msisdn, item.tenant_id, step.since),
            ).fetchone()
        return None if row is None else str(row[0])
    if isinstance(step, common.InsertSms):
        return _insert_sms(conn, step.item, now)
    _insert(conn, "cost_lint", common.lint_row(step, now))
    return None
