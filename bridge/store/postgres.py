"""PostgreSQL store: several bridge instances sharing one queue (store.url).

Same methods, arguments and results as SqliteStore (bridge/store/sqlite.py): both are a
`Store` (bridge/store/base.py), so the intake, dispatcher, inbound router and mailer do not
know which one they talk to. Every method is one
transaction on a connection from a small asyncpg pool; PostgreSQL's own group commit does what
the SQLite writer thread does by hand.

What several instances need beyond SQLite's semantics:

* claim_sms takes rows with ``FOR UPDATE SKIP LOCKED`` (two instances never claim the same
  message, and neither waits for the other) and stamps them with this instance's id and a lease
  (``lease_until = now + lease_s``). A background task renews the leases of this instance's
  in-flight messages every lease_s / 3; once an instance dies, its leases run out and any
  instance claims those messages again (the outcome of a submit in flight at the death is
  unknown: at worst the patron gets that text twice, as after a single-instance crash).
* requeue_inflight(now) at start gives back only this instance's own claims (and expired or
  unowned ones), never a live peer's in-flight work.
* Checks that must not race across instances (Message-ID dedup, concatenated MO parts) hold a
  transaction-level advisory lock on their key; receipts lock the message row.
* heartbeat() and try_lead() back the shared rate budget (bridge/ratebudget.py) and scheduled
  work done once for all instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bridge import defaults
from bridge.defaults import HEARTBEAT_ALIVE_S as ALIVE_S
from bridge.model import (
    EnqueueResult,
    MailRecord,
    NewSms,
    OptoutRecord,
    Outgoing,
    Peer,
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
from bridge.store.pg_migrations import MIGRATION_LOCK_KEY, MIGRATIONS

log = logging.getLogger(__name__)

# A handful of connections: the dispatcher, intake, inbound router and mailer each hold one
# for a few milliseconds at a time. Many instances times a large pool would exhaust the
# server's max_connections (100 by default) for no gain.
_POOL_MIN = 1
_POOL_MAX = 6
# A statement that takes longer than this means the server is in trouble: fail the call
# (the edges answer 451 / retry later) rather than hang an SMTP session forever.
_COMMAND_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 10.0
# Heartbeat rows of instances gone this long are deleted (they no longer count anyway).
_FORGET_INSTANCE_S = 3600.0

_Errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def safe_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = urllib.parse.quote(parts.username or "", safe="")
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "the configured store.url"


def open_problem(url: str, exc: BaseException) -> str:
    """One line saying why the PostgreSQL store cannot be opened, and what to check (pure)."""
    where = f"cannot open the PostgreSQL store at {safe_url(url)}"
    if isinstance(exc, TimeoutError):
        return (
            f"{where}: no answer within {_CONNECT_TIMEOUT_S:g} s (check store.url, and that "
            "PostgreSQL runs there and no firewall drops the connection)"
        )
    if isinstance(exc, OSError):
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else None
        return (
            f"{where}: {reason or exc.strerror or exc} (check store.url, and that PostgreSQL "
            "runs and listens on that address)"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return f"{where}: {exc} (check store.url: user, database, and pg_hba.conf)"
    return f"{where}: {exc}"


def _rowcount(status: str) -> int:
    """Rows touched, from a command tag such as "UPDATE 3" or "INSERT 0 1"."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    def __init__(
        self,
        url: str,
        *,
        instance_id: str,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        renew_leases: bool = True,
        region: str = defaults.TENANT_REGION,
    ) -> None:
        self.url = url
        # Where national-form numbers already in the store are read when a migration makes
        # them canonical (migration 2): the first tenant's region.
        self.region = region
        self.instance_id = instance_id
        self.lease_s = lease_s
        self.clock = clock
        self._auto_renew = renew_leases
        self._pool: Any = None
        self._renewer: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=_POOL_MIN,
                max_size=_POOL_MAX,
                command_timeout=_COMMAND_TIMEOUT_S,
                timeout=_CONNECT_TIMEOUT_S,
            )
        except (*_Errors, ValueError) as exc:
            raise StoreError(open_problem(self.url, exc)) from exc
        try:
            await self._migrate()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        if self._auto_renew:
            self._renewer = asyncio.create_task(self._renew_loop(), name="store-lease-renewer")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _migrate(self) -> None:
        try:
            async with self._pool.acquire() as conn:
                # Session-level lock: instances starting together migrate one after the other.
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
                try:
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                    )
                    version = await conn.fetchval("SELECT max(version) FROM schema_version")
                    version = int(version or 0)
                    if version > len(MIGRATIONS):
                        raise StoreError(
                            f"the store schema is version {version}, newer than this bridge"
                            f" knows ({len(MIGRATIONS)}); run the newer release"
                        )
                    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                        async with conn.transaction():
                            if callable(script):
                                await script(conn, self.region)
                            else:
                                await conn.execute(script)
                            await conn.execute(
                                "INSERT INTO schema_version (version) VALUES ($1)", number
                            )
                        log.info("store schema migrated to version %d", number)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        except _Errors as exc:
            raise StoreError(f"cannot migrate the PostgreSQL store: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Any]:
        """One pooled connection inside one transaction; database errors become StoreError."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn
        except _Errors as exc:
            raise StoreError(f"the store could not commit: {exc}") from exc

    async def _renew_loop(self) -> None:
        every = max(0.2, self.lease_s / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew_leases(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("store: lease renewal failed (%s); next try in %.1f s", exc, every)

    async def ping(self) -> int:
        """1 when the database answers (health checks)."""
        async with self._tx() as conn:
            return int(await conn.fetchval("SELECT 1"))

    # --- several instances ---------------------------------------------------------------------

    async def renew_leases(self, now: float) -> int:
        """Extend the lease of every message this instance has in flight (run by open())."""
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE sms SET lease_until=$1 WHERE state='sending' AND claimed_by=$2",
                now + self.lease_s,
                self.instance_id,
            )
        return _rowcount(status)

    async def heartbeat(self, alive_s: float = ALIVE_S) -> tuple[float, list[Peer]]:
        """Record that this instance is alive; (database time, every instance's row).

        The database clock, not ours: hosts' clocks differ, the server's is one. An instance
        whose last beat is older than alive_s starts a new life (joined_at reset), so it
        settles in again before taking a share of the rate budget."""
        async with self._tx() as conn:
            now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
            await conn.execute(
                "INSERT INTO instance (instance_id, joined_at, beat_at) VALUES ($1,$2,$2)"
                " ON CONFLICT (instance_id) DO UPDATE SET beat_at=excluded.beat_at,"
                " joined_at=CASE WHEN instance.beat_at < excluded.beat_at - $3"
                " THEN excluded.joined_at ELSE instance.joined_at END",
                self.instance_id,
                now,
                alive_s,
            )
            await conn.execute("DELETE FROM instance WHERE beat_at < $1", now - _FORGET_INSTANCE_S)
            rows = await conn.fetch(
                "SELECT instance_id, joined_at, beat_at FROM instance ORDER BY instance_id"
            )
        return now, [Peer(r[0], float(r[1]), float(r[2])) for r in rows]

    async def try_lead(self, job: str, now: float, every_s: float) -> bool:
        """True for exactly one instance per period of `every_s`: that one runs `job`.

        A row per job holds the last run; the conditional UPDATE takes the row lock, and under
        READ COMMITTED a second instance waiting on that lock re-checks the condition against
        the committed row, finds the period taken, and gets False."""
        return await self._claim_period(job, now, every_s, first_run=True)

    # --- outbound SMS queue --------------------------------------------------------------------

    async def enqueue_sms(
        self,
        items: Sequence[NewSms],
        now: float,
        dedup_window_s: float,
        dup_window_s: float = 0.0,
        lint: Sequence[CostLintRow] = (),
    ) -> list[EnqueueResult]:
        """Commit every recipient of one email at once (SqliteStore.enqueue_sms).

        The dedup checks hold an advisory lock on their key for the transaction: the same
        email retried to two instances at once must still be queued once."""
        plan = common.enqueue_plan(items, now, dedup_window_s, dup_window_s, lint)
        async with self._tx() as conn:
            return await common.run_plan_async(plan, lambda step: _enqueue_step(conn, step, now))

    async def backlog(self) -> int:
        async with self._tx() as conn:
            n = await conn.fetchval("SELECT count(*) FROM sms WHERE state IN ('queued','sending')")
        return int(n)

    async def requeue_inflight(self, now: float) -> int:
        """At start: give back what a crash of *this* instance left claimed, and whatever no
        live instance holds (expired or unowned leases). A live peer's work stays its own."""
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE sms SET state='queued', updated_at=$1, next_attempt_at=$1,"
                " claimed_by=NULL, lease_until=NULL WHERE state='sending' AND (claimed_by=$2"
                " OR claimed_by IS NULL OR lease_until IS NULL OR lease_until < $1)",
                now,
                self.instance_id,
            )
        return _rowcount(status)

    async def claim_sms(self, now: float, limit: int) -> list[SmsRecord]:
        """Claim due messages, and messages whose claimer's lease ran out (it died)."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT queue_id FROM sms WHERE (state='queued'"
                " AND next_attempt_at<=$1) OR (state='sending' AND lease_until<$1)"
                " ORDER BY next_attempt_at, created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE sms SET state='sending', attempts=sms.attempts+1, updated_at=$1,"
                " claimed_by=$3, lease_until=$4 FROM due WHERE sms.queue_id=due.queue_id"
                f" RETURNING {', '.join('sms.' + c.strip() for c in SMS_COLUMNS.split(','))}",
                now,
                limit,
                self.instance_id,
                now + self.lease_s,
            )
        out = [sms_record(r) for r in rows]
        # RETURNING has no order: keep the queue's (due time, then arrival).
        out.sort(key=lambda r: (r.next_attempt_at, r.created_at))
        return out

    async def next_due(self) -> float | None:
        """When the earliest queued message becomes due (or an in-flight lease expires)."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT min(next_attempt_at) FROM sms WHERE state='queued'),"
                " (SELECT min(lease_until) FROM sms WHERE state='sending' AND claimed_by<>$1)",
                self.instance_id,
            )
        values = [float(v) for v in row if v is not None]
        return min(values) if values else None

    async def next_concat_ref(self) -> int:
        """Concatenation reference (3GPP TS 23.040 §9.2.3.24.1) from a cycling sequence: no
        two instances hand out the same one, and it survives restarts."""
        async with self._tx() as conn:
            return int(await conn.fetchval("SELECT nextval('concat_ref')"))

    async def record_submitted_many(self, items: Sequence[SubmittedSms]) -> None:
        """Every text of `items` in one transaction (bridge/batcher.py groups them)."""
        if not items:
            return
        rows = common.submitted_rows(items)
        async with self._tx() as conn:
            if rows.first_contacts:
                await conn.executemany(
                    "INSERT INTO first_contact (msisdn, scope, first_at, queue_id)"
                    " VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
                    rows.first_contacts,
                )
            # claimed_by stays: it tells which instance (which bind) sent the message.
            await conn.executemany(
                "UPDATE sms SET state=$1, reason=$2, submitted_at=$3, updated_at=$3, segments=$4,"
                " coding=$5, shaped=coalesce($6, shaped), final_at=coalesce($7, final_at),"
                " lease_until=NULL WHERE queue_id=$8",
                rows.updates,
            )
            await conn.execute(
                "DELETE FROM sms_segment WHERE queue_id = ANY($1::text[])",
                [q for (q,) in rows.queue_ids],
            )
            if rows.segments:
                await conn.executemany(
                    "INSERT INTO sms_segment (queue_id, seq, smsc_message_id, state, updated_at)"
                    " VALUES ($1,$2,$3,'submitted',$4)",
                    rows.segments,
                )

    async def record_retry(
        self, queue_id: str, reason: str, next_at: float, now: float, *, count: bool = True
    ) -> None:
        """Give a claimed message back; only while this instance still holds the claim (a
        peer that took it over after our lease expired owns it now)."""
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE sms SET state='queued', reason=$1, next_attempt_at=$2, updated_at=$3,"
                " attempts=attempts-$4, lease_until=NULL WHERE queue_id=$5 AND state='sending'"
                " AND (claimed_by=$6 OR claimed_by IS NULL)",
                reason,
                next_at,
                now,
                0 if count else 1,
                queue_id,
                self.instance_id,
            )

    async def record_final(
        self,
        queue_id: str,
        state: SmsState,
        reason: str | None,
        now: float,
        mails: Sequence[Outgoing] = (),
    ) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE sms SET state=$1, reason=$2, final_at=$3, updated_at=$3,"
                " lease_until=NULL WHERE queue_id=$4",
                state.value,
                reason,
                now,
                queue_id,
            )
            for mail in mails:
                await _insert_mail(conn, mail, now)

    async def get_sms(self, queue_id: str) -> SmsRecord | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(f"SELECT {SMS_COLUMNS} FROM sms WHERE queue_id=$1", queue_id)
        return None if row is None else sms_record(row)

    async def list_sms(self, flt: SmsFilter, now: float) -> list[SmsRecord]:
        where, args = common.sms_filter(flt, now, lambda n: f"${n}")
        async with self._tx() as conn:
            rows = await conn.fetch(
                f"SELECT {SMS_COLUMNS} FROM sms WHERE {where}"
                f" ORDER BY created_at DESC LIMIT ${len(args)}",
                *args,
            )
        return [sms_record(r) for r in rows]

    async def retry_sms(self, queue_id: str, now: float) -> bool:
        """Admin: put a failed/expired (or stuck) message back in the queue, attempts reset."""
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE sms SET state='queued', attempts=0, next_attempt_at=$1, updated_at=$1,"
                " created_at=$1, reason='retried by admin', lease_until=NULL WHERE queue_id=$2"
                " AND body IS NOT NULL AND state IN ('queued','failed','expired','unconfirmed')",
                now,
                queue_id,
            )
        return _rowcount(status) == 1

    async def drop_sms(self, queue_id: str, now: float) -> bool:
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE sms SET state='failed', reason='dropped by admin', final_at=$1,"
                " updated_at=$1, lease_until=NULL WHERE queue_id=$2"
                " AND state IN ('queued','sending')",
                now,
                queue_id,
            )
        return _rowcount(status) == 1

    async def activity(self, since: float) -> Activity:
        """Notices, replies and opt-out changes since `since`, in buckets (the status page)."""
        b = ACTIVITY_BUCKET_S
        async with self._tx() as conn:
            texts = await conn.fetch(
                f"SELECT tenant_id, floor(created_at / {b})::bigint AS k, state, count(*)"
                " FROM sms WHERE kind='notice' AND created_at>=$1 GROUP BY tenant_id, k, state",
                since,
            )
            replies = await conn.fetch(
                f"SELECT tenant_id, floor(created_at / {b})::bigint AS k, count(*)"
                " FROM conversation WHERE created_at>=$1 GROUP BY tenant_id, k",
                since,
            )
            optouts = await conn.fetch(
                f"SELECT scope, floor(changed_at / {b})::bigint AS k, opted_out, count(*)"
                " FROM optout_audit WHERE changed_at>=$1 GROUP BY scope, k, opted_out",
                since,
            )
            to_fix = await conn.fetch(
                "SELECT tenant_id, msisdn, coalesce(reason, ''), count(*) FROM sms"
                " WHERE kind='notice' AND state IN ('failed','expired') AND created_at>=$1"
                " GROUP BY tenant_id, msisdn, reason ORDER BY count(*) DESC LIMIT 100",
                since,
            )
        return common.activity(texts, replies, optouts, to_fix)

    async def counts(self) -> dict[str, int]:
        async with self._tx() as conn:
            rows = await conn.fetch("SELECT state, count(*) FROM sms GROUP BY state")
        return common.state_counts(rows)

    # --- delivery receipts ---------------------------------------------------------------------

    async def find_segments(self, smsc_ids: Sequence[str]) -> list[SegmentRef]:
        """Segments whose SMSC message id is any of `smsc_ids`, whichever instance sent them."""
        if not smsc_ids:
            return []
        async with self._tx() as conn:
            return [seg for _, seg in await _segments(conn, smsc_ids)]

    @staticmethod
    async def _apply_segment(
        conn: Any,
        queue_id: str,
        seq: int,
        segment_state: str,
        error: str | None,
        now: float,
        rollup: Rollup,
        bounces: Bouncer,
    ) -> SmsState | None:
        """One segment's receipt and the roll-up of its text, inside a transaction on `conn`;
        the text's row is locked first (receipts for two segments can reach two instances)."""
        row = await conn.fetchrow(
            f"SELECT {SMS_COLUMNS} FROM sms WHERE queue_id=$1 FOR UPDATE", queue_id
        )
        await conn.execute(
            "UPDATE sms_segment SET state=$1, error=$2, updated_at=$3 WHERE queue_id=$4 AND seq=$5",
            segment_state,
            error,
            now,
            queue_id,
            seq,
        )
        if row is None:
            return None
        rec = sms_record(row)
        states = [
            str(r[0])
            for r in await conn.fetch(
                "SELECT state FROM sms_segment WHERE queue_id=$1 ORDER BY seq", queue_id
            )
        ]
        change = common.receipt_change(rec, states, rollup)
        if change is None:
            return None
        state, reason = change
        await conn.execute(
            "UPDATE sms SET state=$1, reason=$2, final_at=$3, updated_at=$4 WHERE queue_id=$5",
            state.value,
            reason,
            now if state.final else None,
            now,
            queue_id,
        )
        if common.bounces_on(state):
            for mail in bounces(rec, state, reason):
                await _insert_mail(conn, mail, now)
        return state

    async def apply_receipts(
        self,
        items: Sequence[ReceiptItem],
        now: float,
        rollup: Rollup,
        bounces: ReceiptBouncer,
        same_number: SameNumber,
    ) -> list[ReceiptOutcome]:
        """SqliteStore.apply_receipts: match, apply or hold all of `items` in one transaction.

        Every exact id is looked up in one query; then the matched messages' rows are locked
        in queue_id order before any is changed, so two instances applying receipts for the
        same texts in different orders wait for each other instead of deadlocking. Under READ
        COMMITTED a receipt held here while another instance commits the submit it answers
        may be missed by that instance's held_for; the sweeper matches it after
        inbound.receipt_match_delay_s."""
        if not items:
            return []
        async with self._tx() as conn:
            exact = await _segments(conn, sorted({item.smsc_id for item in items}))
            by_id: dict[str, list[SegmentRef]] = {}
            for smsc_id, ref in exact:
                by_id.setdefault(smsc_id, []).append(ref)
            matched: list[SegmentRef | None] = []
            for item in items:
                seg = common.pick_segment(by_id.get(item.smsc_id, []), item.patron, same_number)
                for ids in common.receipt_tries(item)[1:]:
                    if seg is None:
                        found = [g for _, g in await _segments(conn, ids)]
                        seg = common.pick_segment(found, item.patron, same_number)
                matched.append(seg)
            locks = sorted({seg.queue_id for seg in matched if seg is not None})
            if locks:
                await conn.execute(
                    "SELECT 1 FROM sms WHERE queue_id = ANY($1::text[])"
                    " ORDER BY queue_id FOR UPDATE",
                    locks,
                )
            out: list[ReceiptOutcome] = []
            held: list[tuple[object, ...]] = []
            dropped: list[int] = []
            for item, seg in zip(items, matched, strict=True):
                if seg is None:
                    if item.held_id is None:
                        held.append(
                            (item.smsc_id, item.patron, item.state, item.error, item.raw, now)
                        )
                    out.append(ReceiptOutcome(None, None))
                    continue
                bouncer = common.item_bouncer(bounces, item)
                new_state = await self._apply_segment(
                    conn, seg.queue_id, seg.seq, item.state, item.error, now, rollup, bouncer
                )
                if item.held_id is not None:
                    dropped.append(item.held_id)
                out.append(ReceiptOutcome(seg, new_state))
            if held:
                await conn.executemany(
                    "INSERT INTO pending_receipt (smsc_message_id, patron, state, error,"
                    " raw_stat, received_at) VALUES ($1,$2,$3,$4,$5,$6)",
                    held,
                )
            if dropped:
                await conn.execute(
                    "DELETE FROM pending_receipt WHERE id = ANY($1::bigint[])", dropped
                )
        return out

    async def settle_overdue(
        self, submitted_before: float, state: SmsState, reason: str, now: float, limit: int = 500
    ) -> list[tuple[str, str, str]]:
        """SqliteStore.settle_overdue. Every instance sweeps; SKIP LOCKED and the state check
        let each text be settled (and logged) by exactly one of them."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "UPDATE sms SET state=$1, reason=$2, final_at=$3, updated_at=$3"
                " WHERE queue_id IN (SELECT queue_id FROM sms WHERE state='submitted'"
                " AND submitted_at<$4 ORDER BY submitted_at LIMIT $5 FOR UPDATE SKIP LOCKED)"
                " AND state='submitted' RETURNING queue_id, tenant_id, msisdn",
                state.value,
                reason,
                now,
                submitted_before,
                limit,
            )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def held_for(self, smsc_ids: Sequence[str]) -> list[HeldReceipt]:
        """Held receipts for any of `smsc_ids`, oldest first, whichever instance held them."""
        if isinstance(smsc_ids, str):
            raise TypeError("held_for takes a sequence of ids, not one id")
        if not smsc_ids:
            return []
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT id, smsc_message_id, patron, state, error, raw_stat, received_at"
                " FROM pending_receipt WHERE smsc_message_id = ANY($1::text[]) ORDER BY id",
                list(smsc_ids),
            )
        return [common.held_receipt(r) for r in rows]

    async def held_receipts(self, older_than: float) -> list[HeldReceipt]:
        """Held receipts received before `older_than`:
        (row id, smsc id, patron, state, error, raw stat, received_at)."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT id, smsc_message_id, patron, state, error, raw_stat, received_at"
                " FROM pending_receipt WHERE received_at<$1 ORDER BY id LIMIT 1000",
                older_than,
            )
        return [common.held_receipt(r) for r in rows]

    async def drop_held_receipt(self, row_id: int) -> None:
        async with self._tx() as conn:
            await conn.execute("DELETE FROM pending_receipt WHERE id=$1", row_id)

    # --- inbound (MO) --------------------------------------------------------------------------

    async def add_mo_part(
        self, group_key: str, seq: int, total: int, text: str, now: float
    ) -> list[str] | None:
        """Keep one part of a concatenated MO; all texts in order once every part is here.

        Parts of one text may arrive on different instances' binds at the same moment: the
        advisory lock on the group makes the last one see all the others."""
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "mo:" + group_key)
            await conn.execute(
                "INSERT INTO mo_part (group_key, seq, total, text, received_at)"
                " VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
                group_key,
                seq,
                total,
                text,
                now,
            )
            rows = await conn.fetch(
                "SELECT seq, text FROM mo_part WHERE group_key=$1 ORDER BY seq", group_key
            )
        return common.reassembled(rows, total)

    async def stale_mo_groups(
        self, older_than: float
    ) -> list[tuple[str, int, list[tuple[int, str]]]]:
        """Concatenated MOs still missing parts after the reassembly timeout:
        (group, total parts, [(seq, text)] of the parts that came)."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT group_key, max(total), array_agg(seq ORDER BY seq),"
                " array_agg(text ORDER BY seq) FROM mo_part GROUP BY group_key"
                " HAVING max(received_at)<$1 ORDER BY group_key",
                older_than,
            )
        return [
            (str(r[0]), int(r[1]), [(int(q), str(t)) for q, t in zip(r[2], r[3], strict=True)])
            for r in rows
        ]

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
        """Commit everything one MO causes, atomically (SqliteStore.commit_mo). The primary key
        on mo_seen makes a redelivery to another instance's bind a no-op as well."""
        async with self._tx() as conn:
            await conn.execute("DELETE FROM mo_seen WHERE received_at<$1", now - window_s)
            status = await conn.execute(
                "INSERT INTO mo_seen (dedup_key, received_at) VALUES ($1,$2)"
                " ON CONFLICT DO NOTHING",
                dedup_key,
                now,
            )
            if _rowcount(status) == 0:
                return False
            for mail in mails:
                await _insert_mail(conn, mail, now)
            for item in sms:
                await _insert_sms(conn, item, now)
            if conversations:
                await conn.executemany(
                    "INSERT INTO conversation"
                    " (mail_message_id, tenant_id, msisdn, source_addr, created_at)"
                    " VALUES ($1,$2,$3,$4,$5) ON CONFLICT (mail_message_id) DO UPDATE SET"
                    " tenant_id=excluded.tenant_id, msisdn=excluded.msisdn,"
                    " source_addr=excluded.source_addr, created_at=excluded.created_at",
                    [(*c, now) for c in conversations],
                )
            if done_group is not None:
                await conn.execute("DELETE FROM mo_part WHERE group_key=$1", done_group)
            if optout is not None:
                await _write_optout(conn, optout, dedup_key)
            return True

    async def last_sms_to(self, msisdn: str, source_addr: str, since: float) -> SmsRecord | None:
        """The most recent text to this patron from this sending number (reply routing)."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                f"SELECT {SMS_COLUMNS} FROM sms WHERE msisdn=$1 AND source_addr=$2"
                " AND created_at>=$3 ORDER BY created_at DESC LIMIT 1",
                msisdn,
                source_addr,
                since,
            )
        return None if row is None else sms_record(row)

    async def conversation_for(self, message_ids: Sequence[str]) -> tuple[str, str] | None:
        """(tenant_id, msisdn) of a reply email the bridge sent, by its Message-ID."""
        if not message_ids:
            return None
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT tenant_id, msisdn FROM conversation"
                " WHERE mail_message_id = ANY($1::text[]) ORDER BY created_at DESC LIMIT 1",
                list(message_ids),
            )
        return None if row is None else (str(row[0]), str(row[1]))

    # --- compliance ----------------------------------------------------------------------------

    async def optout_status(self, msisdn: str, scope: str) -> OptoutRecord | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout"
                " WHERE msisdn=$1 AND scope=$2",
                msisdn,
                scope,
            )
        return None if row is None else common.optout_record(row)

    async def set_optout(self, record: OptoutRecord, mo_ref: str | None = None) -> None:
        async with self._tx() as conn:
            await _write_optout(conn, record, mo_ref)

    async def list_optouts(self, scope: str | None = None) -> list[OptoutRecord]:
        sql = "SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout"
        sql += " WHERE opted_out" + (" AND scope=$1" if scope else "")
        async with self._tx() as conn:
            rows = await conn.fetch(sql + " ORDER BY changed_at", *((scope,) if scope else ()))
        return [common.optout_record(r) for r in rows]

    async def optout_history(self, msisdn: str) -> list[tuple[OptoutRecord, str | None]]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT msisdn, scope, opted_out, keyword, changed_at, actor, mo_ref"
                " FROM optout_audit WHERE msisdn=$1 ORDER BY id",
                msisdn,
            )
        return [(common.optout_record(r), r[6]) for r in rows]

    async def had_first_contact(self, msisdn: str, scope: str) -> bool:
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT 1 FROM first_contact WHERE msisdn=$1 AND scope=$2", msisdn, scope
            )
        return row is not None

    async def mark_first_contact(self, msisdn: str, scope: str, queue_id: str, now: float) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO first_contact (msisdn, scope, first_at, queue_id)"
                " VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
                msisdn,
                scope,
                now,
                queue_id,
            )

    async def sent_times(self, msisdn: str, tenant_id: str, since: float) -> list[float]:
        """When this library's texts to this number were submitted (frequency caps)."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT submitted_at FROM sms WHERE msisdn=$1 AND tenant_id=$2 AND kind='notice'"
                " AND submitted_at IS NOT NULL AND submitted_at>=$3",
                msisdn,
                tenant_id,
                since,
            )
        return [float(r[0]) for r in rows]

    async def cost_report(self, since: float) -> list[tuple[str, str, int, int, int, str]]:
        """(tenant, template, texts, UCS-2 texts, segments, culprits) since a time."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, template, count(*), count(*) FILTER (WHERE coding='ucs2'),"
                " sum(segments), string_agg(DISTINCT culprits, ',') FROM cost_lint"
                " WHERE created_at>=$1 GROUP BY tenant_id, template"
                " ORDER BY sum(segments) DESC",
                since,
            )
        return common.cost_rows(rows)

    # --- IMAP intake ---------------------------------------------------------------------------

    async def imap_state(self, mailbox: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, highest UID committed) for a mailbox (RFC 3501 §2.3.1.1)."""
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT uidvalidity, last_uid FROM imap_state WHERE mailbox=$1", mailbox
            )
        return None if row is None else (int(row[0]), int(row[1]))

    async def set_imap_state(
        self, mailbox: str, uidvalidity: int, last_uid: int, now: float
    ) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO imap_state (mailbox, uidvalidity, last_uid, updated_at)"
                " VALUES ($1,$2,$3,$4) ON CONFLICT (mailbox) DO UPDATE SET"
                " uidvalidity=excluded.uidvalidity, last_uid=excluded.last_uid,"
                " updated_at=excluded.updated_at",
                mailbox,
                uidvalidity,
                last_uid,
                now,
            )

    # --- outbound mail -------------------------------------------------------------------------

    async def enqueue_mail(self, mail: Outgoing, now: float) -> int:
        async with self._tx() as conn:
            return await _insert_mail(conn, mail, now)

    async def claim_mail(self, now: float, limit: int) -> list[MailRecord]:
        """Due emails. Like SqliteStore, a claimed email stays queued (attempts counted) until
        mail_done(); here its due time also moves lease_s ahead, so another instance's mailer
        does not send it again meanwhile, and takes it over if this instance dies. SKIP LOCKED:
        two mailers claiming at the same moment take different emails."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT id FROM mail_outbox WHERE state='queued'"
                " AND next_attempt_at<=$1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE mail_outbox m SET attempts=m.attempts+1, updated_at=$1,"
                " next_attempt_at=$3 FROM due WHERE m.id=due.id"
                " RETURNING m.id, m.kind, m.mail_from, m.rcpt_to, m.data, m.attempts, m.ref,"
                " m.tenant_id, m.fallback_of",
                now,
                limit,
                now + self.lease_s,
            )
        out = [common.mail_record(r) for r in rows]
        out.sort(key=lambda m: m.id)
        return out

    async def mail_done(
        self, mail_id: int, state: str, reason: str | None, now: float, next_at: float = 0.0
    ) -> None:
        """state: 'sent' (bytes dropped, a reply's kept for a fallback copy: see
        SqliteStore.mail_done), 'queued' (retry at next_at) or 'dead'."""
        async with self._tx() as conn:
            if state == "sent":
                await conn.execute(
                    "UPDATE mail_outbox SET state='sent',"
                    " data=CASE WHEN kind='reply' THEN data ELSE ''::bytea END, reason=NULL,"
                    " updated_at=$1 WHERE id=$2 AND state='queued'",
                    now,
                    mail_id,
                )
            else:
                await conn.execute(
                    "UPDATE mail_outbox SET state=$1, reason=$2, next_attempt_at=$3,"
                    " updated_at=$4 WHERE id=$5 AND state='queued'",
                    state,
                    reason,
                    next_at,
                    now,
                    mail_id,
                )

    async def get_mail(self, mail_id: int) -> MailInfo | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT id, kind, state, rcpt_to, data, tenant_id, ref, fallback_of"
                " FROM mail_outbox WHERE id=$1",
                mail_id,
            )
        return None if row is None else common.mail_info(row)

    async def mail_lost(
        self,
        mail_id: int,
        state: str,
        reason: str,
        now: float,
        fallback: Outgoing | None = None,
    ) -> int | None:
        """See SqliteStore.mail_lost. The conditional UPDATE decides under the row lock, so of
        two instances taking the same DSN at once exactly one queues the fallback copy."""
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE mail_outbox SET state=$1, reason=$2, lost_at=$3, updated_at=$3,"
                " data=''::bytea WHERE id=$4 AND state NOT IN ('dead','bounced')",
                state,
                reason,
                now,
                mail_id,
            )
            if _rowcount(status) != 1:
                return None
            return await _insert_mail(conn, fallback, now) if fallback is not None else 0

    async def lost_mail(
        self, since: float, tenant_id: str | None = None, limit: int = 20
    ) -> list[LostMail]:
        """Emails lost since `since`, newest first (all libraries when tenant_id is None)."""
        async with self._tx() as conn:
            rows = await conn.fetch(
                LOST_SELECT + " WHERE m.lost_at IS NOT NULL AND m.lost_at>=$1"
                " AND ($2::text IS NULL OR m.tenant_id=$2)"
                " ORDER BY m.lost_at DESC, m.id DESC LIMIT $3",
                since,
                tenant_id,
                limit,
            )
        return [common.lost_mail(r) for r in rows]

    async def meta_setdefault(self, key: str, value: str) -> str:
        """See SqliteStore.meta_setdefault; every instance reads the same value."""
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1,$2) ON CONFLICT DO NOTHING", key, value
            )
            return str(await conn.fetchval("SELECT value FROM meta WHERE key=$1", key))

    async def mail_counts(self) -> dict[str, int]:
        async with self._tx() as conn:
            rows = await conn.fetch("SELECT state, count(*) FROM mail_outbox GROUP BY state")
        return common.state_counts(rows)

    async def next_mail_due(self) -> float | None:
        async with self._tx() as conn:
            value = await conn.fetchval(
                "SELECT min(next_attempt_at) FROM mail_outbox WHERE state='queued'"
            )
        return None if value is None else float(value)

    # --- maintenance ---------------------------------------------------------------------------

    async def purge(self, bodies_before: float, records_before: float, now: float) -> PurgeCounts:
        """Patron privacy (SqliteStore.purge). Segments go with their message (ON DELETE
        CASCADE); opt-out records and their audit trail are kept."""
        done = common.sql_list(common.PURGED_SMS_STATES)
        gone = common.sql_list(common.PURGED_MAIL_STATES)
        async with self._tx() as conn:
            bodies = _rowcount(
                await conn.execute(
                    "UPDATE sms SET body=NULL WHERE body IS NOT NULL AND final_at IS NOT NULL"
                    " AND final_at<=$1",
                    bodies_before,
                )
            )
            await conn.execute(
                "DELETE FROM cost_lint WHERE queue_id IN (SELECT queue_id FROM sms"
                f" WHERE created_at<$1 AND state IN {done})",
                records_before,
            )
            records = _rowcount(
                await conn.execute(
                    f"DELETE FROM sms WHERE created_at<$1 AND state IN {done}", records_before
                )
            )
            mails = _rowcount(
                await conn.execute(
                    f"DELETE FROM mail_outbox WHERE state IN {gone} AND updated_at<$1",
                    bodies_before,
                )
            )
            await conn.execute("DELETE FROM conversation WHERE created_at<$1", records_before)
            await conn.execute("DELETE FROM mo_seen WHERE received_at<$1", bodies_before)
        return PurgeCounts(bodies, records, mails)

    async def job_due(self, name: str, now: float, every_s: float) -> bool:
        """True (and the run recorded) when `name` last ran `every_s` ago or more; the first
        call only starts the clock (SqliteStore.job_due). Across instances exactly one gets
        True per period: the conditional UPDATE is decided under the row lock (see try_lead)."""
        return await self._claim_period(name, now, every_s, first_run=False)

    async def _claim_period(
        self, name: str, now: float, every_s: float, *, first_run: bool
    ) -> bool:
        """The job row decides who runs a period; `first_run` is the answer for a new job."""
        async with self._tx() as conn:
            status = await conn.execute(
                "INSERT INTO job (name, last_run) VALUES ($1,$2) ON CONFLICT (name) DO NOTHING",
                name,
                now,
            )
            if _rowcount(status) == 1:
                return first_run
            status = await conn.execute(
                "UPDATE job SET last_run=$2 WHERE name=$1 AND last_run <= $3",
                name,
                now,
                now - every_s,
            )
            return _rowcount(status) == 1

    async def tenant_report(
        self, tenant_id: str, scope: str, since: float, until: float
    ) -> ReportData:
        """What a library's periodic report shows, for texts created in [since, until)."""
        async with self._tx() as conn:
            states = await conn.fetch(
                "SELECT state, count(*) FROM sms WHERE tenant_id=$1 AND kind='notice'"
                " AND created_at>=$2 AND created_at<$3 GROUP BY state",
                tenant_id,
                since,
                until,
            )
            failed = await conn.fetch(
                "SELECT msisdn, reason, subject, created_at FROM sms WHERE tenant_id=$1"
                " AND kind='notice' AND state IN ('failed','expired')"
                " AND created_at>=$2 AND created_at<$3 ORDER BY created_at",
                tenant_id,
                since,
                until,
            )
            unconfirmed = await conn.fetch(
                "SELECT msisdn, subject, created_at FROM sms WHERE tenant_id=$1"
                " AND kind='notice' AND state='unconfirmed'"
                " AND created_at>=$2 AND created_at<$3 ORDER BY created_at",
                tenant_id,
                since,
                until,
            )
            changes = await conn.fetch(
                "SELECT msisdn, opted_out, keyword, changed_at FROM optout_audit"
                " WHERE scope=$1 AND changed_at>=$2 AND changed_at<$3 ORDER BY changed_at, id",
                scope,
                since,
                until,
            )
            costly = await conn.fetch(
                "SELECT template, count(*), count(*) FILTER (WHERE coding='ucs2'),"
                " sum(segments), string_agg(DISTINCT culprits, ',') FROM cost_lint"
                " WHERE tenant_id=$1 AND created_at>=$2 AND created_at<$3 GROUP BY template"
                " ORDER BY sum(segments) DESC LIMIT 10",
                tenant_id,
                since,
                until,
            )
            lost = await conn.fetch(
                LOST_SELECT + " WHERE m.tenant_id=$1 AND m.lost_at>=$2 AND m.lost_at<$3"
                " ORDER BY m.lost_at",
                tenant_id,
                since,
                until,
            )
        return common.report_data(states, failed, unconfirmed, changes, costly, lost)


async def _insert(conn: Any, table: str, row: common.NewRow, tail: str = "") -> Any:
    """INSERT one common.NewRow; what `tail` returns (RETURNING ...), else None."""
    columns, values = row
    marks = ",".join(f"${i}" for i in range(1, len(values) + 1))
    return await conn.fetchval(f"INSERT INTO {table} ({columns}) VALUES ({marks}){tail}", *values)


async def _insert_sms(conn: Any, item: NewSms, now: float) -> str:
    qid = new_queue_id()
    await _insert(conn, "sms", common.sms_row(qid, item, now))
    return qid


async def _segments(conn: Any, smsc_ids: Sequence[str]) -> list[tuple[str, SegmentRef]]:
    """(smsc id, segment) for every segment whose SMSC message id is any of `smsc_ids`,
    newest text first."""
    rows = await conn.fetch(
        "SELECT g.smsc_message_id, g.queue_id, g.seq, s.msisdn, s.tenant_id, s.state"
        " FROM sms_segment g JOIN sms s ON s.queue_id = g.queue_id"
        " WHERE g.smsc_message_id = ANY($1::text[]) ORDER BY s.created_at DESC",
        list(smsc_ids),
    )
    return [(str(r[0]), SegmentRef(r[1], int(r[2]), r[3], r[4], SmsState(r[5]))) for r in rows]


async def _write_optout(conn: Any, rec: OptoutRecord, mo_ref: str | None) -> None:
    if common.clears_first_contact(rec):
        await conn.execute(
            "DELETE FROM first_contact WHERE msisdn=$1 AND scope=$2", rec.msisdn, rec.scope
        )
    await _insert(
        conn,
        "optout",
        common.optout_row(rec),
        " ON CONFLICT (msisdn, scope) DO UPDATE SET opted_out=excluded.opted_out,"
        " keyword=excluded.keyword, changed_at=excluded.changed_at, actor=excluded.actor",
    )
    await _insert(conn, "optout_audit", common.optout_audit_row(rec, mo_ref))


async def _insert_mail(conn: Any, mail: Outgoing, now: float) -> int:
    return int(await _insert(conn, "mail_outbox", common.mail_row(mail, now), " RETURNING id"))


async def _enqueue_step(conn: Any, step: common.EnqueueStep, now: float) -> str | None:
    """One step of common.enqueue_plan. Each duplicate check holds an advisory lock on its key
    for the transaction: the same email retried to two instances at once is queued once."""
    if isinstance(step, common.FindDuplicate):
        item = step.item
        if step.by == "dup_key":
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"dup:{item.dup_key}")
            row = await conn.fetchrow(
                "SELECT queue_id FROM sms WHERE dup_key=$1 AND created_at>=$2 LIMIT 1",
                item.dup_key,
                step.since,
            )
        else:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                f"mid:{item.message_id}:{item.msisdn}",
            )
            row = await conn.fetchrow(
                "SELECT queue_id FROM sms WHERE message_id=$1 AND msisdn=$2"
                " AND tenant_id=$3 AND created_at>=$4 LIMIT 1",
                item.message_id,
                item.msisdn,
                item.tenant_id,
                step.since,
            )
        return None if row is None else str(row[0])
    if isinstance(step, common.InsertSms):
        return await _insert_sms(conn, step.item, now)
    await _insert(conn, "cost_lint", common.lint_row(step, now))
    return None
