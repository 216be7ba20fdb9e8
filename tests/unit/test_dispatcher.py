"""The dispatcher: its pure planning (PDUs for a text, what a submit_sm_resp means) without
sockets, and its send-then-record loop against a scripted session and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest

from bridge.config import Config
from bridge.dispatcher import (
    NOT_BOUND,
    Accepted,
    Dispatcher,
    Fail,
    Retry,
    no_answer,
    plan_submit,
    resp_outcome,
    shaped_note,
    submitted,
)
from bridge.model import SmsRecord, SmsState
from bridge.shaping import Shaped
from bridge.smpp import errors
from bridge.smpp.encoding import encode_sms
from bridge.smpp.pdu import SubmitSm
from bridge.smpp.session import ConnectionLost, ResponseTimeout, SubmitResult
from bridge.store import SqliteStore, Store
from bridge.testing.sms_samples import sample_sms
from tests.conftest import MakeConfig
from tests.waiting import eventually


def record(kind: str = "notice", msisdn: str = "+12025550143") -> SmsRecord:
    return SmsRecord(
        queue_id="q1",
        tenant_id="riverside",
        msisdn=msisdn,
        rcpt_addr=f"{msisdn[1:]}@sms.example.org",
        source_addr="+12025550100",
        envelope_from="ils@riverside.example.org",
        message_id=None,
        subject="Hold",
        body="Your hold is ready",
        state=SmsState.SENDING,
        attempts=1,
        reason=None,
        created_at=1.0,
        updated_at=1.0,
        next_attempt_at=1.0,
        segments=None,
        coding=None,
        kind=kind,
    )


# --- planning ------------------------------------------------------------------------------------


def test_plan_one_part_text(make_config: MakeConfig) -> None:
    cfg = make_config({"smpp": {"registered_delivery": "failures"}})
    plan = plan_submit(record(), encode_sms("Your hold is ready", ref=0), cfg.smpp)
    (pdu,) = plan.pdus
    # E.164 on the wire without '+', TON 1 / NPI 1 (SMPP 3.4 §5.2.5)
    assert (pdu.source_addr, pdu.source_addr_ton, pdu.source_addr_npi) == ("12025550100", 1, 1)
    assert pdu.destination_addr == "12025550143"
    assert pdu.short_message == b"Your hold is ready" and pdu.sar is None
    assert pdu.registered_delivery == 2  # failures only (§5.2.17)
    assert pdu.validity_period is not None and pdu.validity_period == plan.validity


def test_plan_without_validity_period(make_config: MakeConfig) -> None:
    cfg = make_config({"smpp": {"send_validity_period": False}})
    plan = plan_submit(record(), encode_sms("Hi", ref=0), cfg.smpp)
    assert plan.validity is None and plan.pdus[0].validity_period is None


def test_plan_one_pdu_per_part_in_order(make_config: MakeConfig) -> None:
    cfg = make_config({"smpp": {"concat": "sar"}})
    encoded = encode_sms("x" * 300, ref=7, concat="sar")
    plan = plan_submit(record(), encoded, cfg.smpp)
    assert [pdu.sar for pdu in plan.pdus] == [(7, 2, 1), (7, 2, 2)]
    assert b"".join(pdu.short_message for pdu in plan.pdus) == b"x" * 300


def test_plan_payload_mode_is_one_pdu(make_config: MakeConfig) -> None:
    cfg = make_config({"smpp": {"concat": "payload"}})
    encoded = encode_sms("x" * 300, ref=0, concat="payload")
    (pdu,) = plan_submit(record(), encoded, cfg.smpp).pdus
    assert pdu.short_message == b"" and pdu.message_payload == b"x" * 300


# --- what a submit_sm_resp means -----------------------------------------------------------------


def test_ok_is_accepted_with_its_id() -> None:
    assert resp_outcome(errors.ESME_ROK, "abc", None) == Accepted("abc")
    assert resp_outcome(errors.ESME_ROK, None, None) == Accepted("")


@pytest.mark.parametrize("status", [errors.ESME_RTHROTTLED, errors.ESME_RSYSERR])
def test_temporary_statuses_retry_and_count(status: int) -> None:
    outcome = resp_outcome(status, None, None)
    assert isinstance(outcome, Retry) and outcome.count
    assert outcome.reason.startswith(errors.status_name(status) + ": ")


@pytest.mark.parametrize(
    ("status", "dsn"), [(errors.ESME_RINVDSTADR, "5.1.1"), (errors.ESME_RINVSRCADR, "5.1.7")]
)
def test_permanent_statuses_fail_with_their_dsn_code(status: int, dsn: str) -> None:
    outcome = resp_outcome(status, None, "000002000000000R")
    assert isinstance(outcome, Fail)
    failure = outcome.failure
    assert failure.state is SmsState.FAILED and failure.status == dsn
    assert failure.diagnostic == f"X-SMPP; {errors.status_name(status)} (0x{status:08X})"
    assert "validity_period" not in failure.reason


def test_refused_validity_period_says_how_to_stop_sending_it() -> None:
    outcome = resp_outcome(errors.ESME_RINVEXPIRY, None, "000002000000000R")
    assert isinstance(outcome, Fail)
    assert "(validity_period 000002000000000R)" in outcome.failure.reason
    assert "smpp.send_validity_period: false" in outcome.failure.reason
    plain = resp_outcome(errors.ESME_RINVEXPIRY, None, None)
    assert isinstance(plain, Fail) and "validity_period" not in plain.failure.reason


def test_unanswered_submits() -> None:
    assert Retry("the SMSC link is down", count=False) == NOT_BOUND
    assert no_answer(ResponseTimeout()) == Retry("no answer from the SMSC (ResponseTimeout)")
    assert no_answer(ConnectionLost()).reason == "no answer from the SMSC (ConnectionLost)"


def test_shaped_note_and_submitted_record(make_config: MakeConfig) -> None:
    assert shaped_note(None) is None
    assert shaped_note(Shaped("t", False, False, 1, 1, False)) is None
    note = shaped_note(Shaped("t", True, True, 2, 1, False))
    assert note == "prefix,footer,+1segment"
    encoded = encode_sms("Hi", ref=0)
    cfg = make_config({"smpp": {"registered_delivery": "none"}})
    item = submitted(record(), ["a"], encoded, None, cfg.smpp, 5.0)
    assert item.first_contact == ("+12025550143", "+12025550100")
    assert item.settle is not None and item.settle[0] is SmsState.UNCONFIRMED
    assert (item.smsc_ids, item.segments, item.coding, item.now) == (("a",), 1, "gsm7", 5.0)
    other = submitted(record(kind="reply"), ["b"], encoded, None, make_config().smpp, 5.0)
    assert other.first_contact is None and other.settle is None


# --- the loop: send, then record -----------------------------------------------------------------


class ScriptedSession:
    """Bound at once; every submit_sm waits for `release` (or, with `pace_s`, answers that
    long after it arrives, as an SMSC does; with `one_every_s` too, answers come in order at
    most one per that interval), then answers ESME_ROK."""

    bound = True

    def __init__(self, pace_s: float | None = None, *, one_every_s: float = 0.0) -> None:
        self.pace_s = pace_s
        self.one_every_s = one_every_s
        self._next_answer = 0.0
        self.release = asyncio.Event()
        self.sent: list[SubmitSm] = []
        self.count = 0

    async def wait_bound(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def submit(
        self,
        sm: SubmitSm,
        *,
        timeout: float,  # noqa: ASYNC109 (the session's signature)
        on_sent: Callable[[], None],
    ) -> SubmitResult:
        self.sent.append(sm)
        on_sent()
        if self.pace_s is None:
            await self.release.wait()
        else:
            loop = asyncio.get_running_loop()
            at = max(loop.time() + self.pace_s, self._next_answer + self.one_every_s)
            self._next_answer = at
            await asyncio.sleep(at - loop.time())  # the SMSC's pace, not a wait for a condition
        self.count += 1
        return SubmitResult(errors.ESME_ROK, f"id{self.count}")


@pytest.fixture
def sqlite(store: Store) -> SqliteStore:
    """conftest's store, typed as the SQLite store the wrappers below take."""
    assert isinstance(store, SqliteStore)
    return store


async def enqueue(store: SqliteStore, n: int) -> None:
    items = [sample_sms(i, msisdn=f"+1202555{1000 + i:04d}") for i in range(n)]
    await store.enqueue_sms(items, time.time(), 0.0)


def dispatcher(cfg: Config, store: Store, session: ScriptedSession, **kw: Any) -> Dispatcher:
    return Dispatcher(cfg, store, session, **kw)


class GatedStore:
    """The SQLite store with record_submitted_many held until `open` is set, counting the
    calls, and the texts given back (record_retry)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0
        self.calls = 0
        self.given_back: list[str] = []

    async def record_retry(self, queue_id: str, *args: Any, **kw: Any) -> None:
        self.given_back.append(queue_id)
        await self.inner.record_retry(queue_id, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def record_submitted_many(self, items: Sequence[Any]) -> None:
        self.waiting += 1
        await self.open.wait()
        self.calls += 1
        await self.inner.record_submitted_many(items)


async def _answered_but_unrecorded(
    cfg: Config, sqlite: SqliteStore, n: int
) -> tuple[Dispatcher, GatedStore, ScriptedSession]:
    """A started dispatcher with `n` texts queued, whose SMSC answers every submit_sm at once
    and whose store holds every record write until `gated.open` is set. The wrapper forwards
    every other Store method to the SQLite store it wraps."""
    session = ScriptedSession()
    session.release.set()
    gated = GatedStore(sqlite)
    gated.open.clear()
    await enqueue(sqlite, n)
    d = dispatcher(cfg, cast(Store, gated), session)
    await d.start()
    return d, gated, session


async def test_texts_answered_together_are_recorded_together_before_the_hook(
    make_config: MakeConfig, sqlite: SqliteStore
) -> None:
    cfg = make_config({"smpp": {"window": 5}})
    session = ScriptedSession()
    states_seen: list[SmsState] = []

    async def on_submitted(rec: SmsRecord, ids: Sequence[str]) -> None:
        # the hook runs only once the text's state is committed
        got = await sqlite.get_sms(rec.queue_id)
        assert got is not None
        states_seen.append(got.state)

    await enqueue(sqlite, 10)
    store = GatedStore(sqlite)
    d = dispatcher(cfg, cast(Store, store), session, on_submitted=on_submitted)
    await d.start()
    try:
        await eventually(lambda: len(session.sent) == 10, 5, "ten submit_sm on the wire")
        session.release.set()
        await eventually(lambda: len(states_seen) == 10, 5, "ten texts recorded")
    finally:
        await d.stop(1.0)
    assert states_seen == [SmsState.SUBMITTED] * 10
    assert await sqlite.counts() == {"submitted": 10}
    # ten resps at once: fewer writes than texts (the first goes alone, the rest together)
    assert 0 < store.calls < 10


async def test_texts_answered_a_few_ms_apart_share_one_record_write(
    make_config: MakeConfig, sqlite: SqliteStore
) -> None:
    # Answers that trickle in (one every 2 ms, as from an SMSC at 20 ms per answer with a
    # window of 10) are recorded in a few transactions, not one each (RECORD_LINGER_S).
    session = ScriptedSession(pace_s=0.02, one_every_s=0.002)
    recorded: list[str] = []

    async def on_submitted(rec: SmsRecord, ids: Sequence[str]) -> None:
        recorded.append(rec.queue_id)

    await enqueue(sqlite, 10)
    d = dispatcher(
        make_config({"smpp": {"window": 10}}), sqlite, session, on_submitted=on_submitted
    )
    await d.start()
    try:
        await eventually(lambda: len(recorded) == 10, 5, "ten texts recorded")
    finally:
        await d.stop(1.0)
    assert await sqlite.counts() == {"submitted": 10}
    # one write each without the linger; a few with it (the last run is stop's barrier)
    assert d._record.runs <= 5, d._record.runs


async def test_a_text_waiting_for_its_record_gives_its_slot_to_the_next(
    make_config: MakeConfig, sqlite: SqliteStore
) -> None:
    # Window 1: two slots. Every answered text waits for a record write that does not
    # commit yet; the texts after it still go on the wire, one at a time.
    d, gated, session = await _answered_but_unrecorded(
        make_config({"smpp": {"window": 1}}), sqlite, 6
    )
    try:
        await eventually(lambda: len(session.sent) == 6, 5, "six submit_sm on the wire")
        assert await sqlite.counts() == {"sending": 6}  # none recorded yet
        gated.open.set()
        await eventually(lambda: gated.calls >= 1 and not d._tasks, 5, "the records committed")
    finally:
        await asyncio.wait_for(d.stop(1.0), 10)
    assert await sqlite.counts() == {"submitted": 6}


async def test_stop_gives_back_texts_whose_resp_never_came(
    make_config: MakeConfig, sqlite: SqliteStore
) -> None:
    session = ScriptedSession()
    await enqueue(sqlite, 2)
    d = dispatcher(make_config(), sqlite, session)
    await d.start()
    await eventually(lambda: len(session.sent) == 2, 5, "two submit_sm on the wire")
    await asyncio.wait_for(d.stop(0.05), 5)
    assert await sqlite.counts() == {"queued": 2}
    rec = (await sqlite.claim_sms(10.0**10, 5))[0]
    assert rec.reason == "interrupted by shutdown"


async def test_stop_waits_for_the_write_of_a_text_it_cancels(
    make_config: MakeConfig, sqlite: SqliteStore
) -> None:
    d, gated, _ = await _answered_but_unrecorded(make_config(), sqlite, 1)
    await eventually(lambda: gated.waiting == 1, 5, "the submitted text's write under way")
    stopping = asyncio.ensure_future(d.stop(0.01))
    await eventually(lambda: not d._tasks, 5, "the text cancelled at stop")
    assert not stopping.done()  # its write is not committed yet: stop waits for it
    # answered by the SMSC: never given back meanwhile, where another instance could claim it
    assert gated.given_back == []
    assert await sqlite.counts() == {"sending": 1}
    gated.open.set()
    await asyncio.wait_for(stopping, 5)
    assert await sqlite.counts() == {"submitted": 1}


async def test_texts_to_one_number_do_not_hold_the_slots_of_others(
    make_config: MakeConfig, sqlite: SqliteStore
) -> None:
    # Six notices to one patron queued first, then four to four other patrons: the one
    # patron's texts go one after another (per-number order), the others meanwhile.
    same = "+12025551000"
    items = [
        sample_sms(i, msisdn=number)
        for i, number in enumerate([same] * 6 + [f"+1202555{1001 + k:04d}" for k in range(4)])
    ]
    for item in items:  # one by one: claim order is creation order
        await sqlite.enqueue_sms([item], time.time(), 0.0)
    session = ScriptedSession(pace_s=0.02)
    d = dispatcher(make_config({"smpp": {"window": 2}}), sqlite, session)
    await d.start()
    try:
        await eventually(lambda: len(session.sent) == 10, 10, "every text on the wire")
    finally:
        await asyncio.wait_for(d.stop(5.0), 10)
    order = [sm.destination_addr for sm in session.sent]
    last_same = max(i for i, dest in enumerate(order) if dest == same[1:])
    others = [i for i, dest in enumerate(order) if dest != same[1:]]
    # Before, the one patron's waiting texts filled every slot: the others went out last.
    assert max(others) < last_same, order
    assert await sqlite.counts() == {"submitted": 10}
