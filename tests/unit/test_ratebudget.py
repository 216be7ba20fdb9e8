"""The shared carrier rate: pure share logic, and the beat loop with a fake heartbeat."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ratebudget import (
    ALIVE_S,
    PAUSED_TPS,
    SETTLE_S,
    Peer,
    RateBudget,
    Share,
    live_peers,
    plan,
    share,
)
from bridge.store.base import StoreError
from tests.waiting import eventually


def test_alone_after_settling_gets_everything() -> None:
    me = Peer("a", joined_at=100.0, beat_at=110.0)
    assert share(10.0, "a", [me], now=100.0 + SETTLE_S - 0.01) == 0.0
    assert share(10.0, "a", [me], now=110.5) == 10.0


def test_split_between_live_instances() -> None:
    peers = [Peer("a", 0.0, 50.0), Peer("b", 0.0, 49.0), Peer("c", 0.0, 48.5)]
    assert share(12.0, "a", peers, now=50.0) == 4.0
    assert [p.instance_id for p in live_peers(peers, 50.0)] == ["a", "b", "c"]


def test_dead_instance_share_held_until_its_beat_expires() -> None:
    peers = [Peer("a", 0.0, 50.0), Peer("b", 0.0, 50.0), Peer("dead", 0.0, 47.5)]
    # dead's last beat is 2.5 s old: still counted (survivors under budget, never over)
    assert share(9.0, "a", peers, now=50.0) == 3.0
    # ALIVE_S after its last beat it no longer counts
    assert share(9.0, "a", peers, now=47.5 + ALIVE_S) == 4.5


def test_newcomer_counted_by_others_at_once_but_waits_itself() -> None:
    peers = [Peer("a", 0.0, 60.0), Peer("new", 59.5, 59.5)]
    assert share(10.0, "a", peers, now=60.0) == 5.0
    assert share(10.0, "new", peers, now=60.0) == 0.0
    later = [Peer("a", 0.0, 62.4), Peer("new", 59.5, 62.5)]
    assert share(10.0, "new", later, now=59.5 + SETTLE_S) == 5.0


def test_missing_or_stale_own_row_means_do_not_send() -> None:
    peers = [Peer("a", 0.0, 10.0), Peer("me", 0.0, 10.0 - ALIVE_S)]  # my beats failed lately
    assert share(10.0, "me", peers, now=10.0) == 0.0  # a already took my share over
    assert share(10.0, "a", peers, now=10.0) == 10.0
    assert share(10.0, "ghost", [Peer("a", 0.0, 10.0)], now=10.0) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    max_tps=st.integers(min_value=1, max_value=200),
    beats=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=8),
)
def test_sum_of_whole_shares_never_exceeds_budget(max_tps: int, beats: list[float]) -> None:
    """Each instance's RateLimiter allows floor(share) sends per second: the sum over every
    instance that believes it may send stays within max_tps, whatever the beat ages."""
    now = 10.0
    peers = [Peer(f"i{n}", 0.0, beat) for n, beat in enumerate(beats)]
    senders = [p for p in peers if share(max_tps, p.instance_id, peers, now) > 0]
    # More instances than texts per second included: the RateLimiter lets each sender send
    # at least one text in a second, so the senders must be few enough.
    total = sum(max(1, math.floor(share(max_tps, p.instance_id, peers, now))) for p in senders)
    assert total <= max_tps
    # And the budget is not left unused while some instance could send.
    if live_peers(peers, now):
        assert senders


def test_more_instances_than_texts_per_second_elects_the_oldest() -> None:
    peers = [Peer("b", 5.0, 20.0), Peer("a", 1.0, 20.0), Peer("c", 5.0, 20.0)]
    now = 20.0
    assert plan(1.0, "a", peers, now) == Share(1.0, settled=True)
    assert plan(1.0, "b", peers, now).standby
    assert plan(1.0, "c", peers, now).standby
    # Two texts a second for three: the two oldest, ties broken by id (every instance agrees).
    assert [share(2.0, p, peers, now) for p in "abc"] == [1.0, 1.0, 0.0]
    # Below one text a second, one instance sends at the whole (slow) rate.
    assert [share(0.5, p, peers, now) for p in "abc"] == [0.5, 0.0, 0.0]
    # The sender's beat expires: the next oldest takes over, at once.
    gone = [Peer("a", 1.0, now - ALIVE_S - 0.1), *peers[::2]]
    assert plan(1.0, "b", gone, now) == Share(1.0, settled=True)
    assert plan(1.0, "c", gone, now).standby
    # A standby instance still settling in is not yet standing by: it is not settled.
    assert plan(1.0, "d", [*peers, Peer("d", now - 0.5, now)], now) == Share(0.0, False)


async def test_budget_loop_settles_then_applies_and_follows_changes() -> None:
    clock = [100.0]
    rows = {"a": Peer("a", 100.0, 100.0)}
    applied: list[float] = []

    async def beat() -> tuple[float, list[Peer]]:
        clock[0] += 1.0
        me = rows["a"]
        rows["a"] = Peer("a", me.joined_at, clock[0])
        return clock[0], list(rows.values())

    budget = RateBudget(
        beat, applied.append, instance_id="a", max_tps=10.0, beat_every_s=0.01, settle_s=3.0
    )
    await asyncio.wait_for(budget.start(), timeout=5)
    assert applied == [10.0] and budget.current == 10.0
    rows["b"] = Peer("b", clock[0], clock[0] + 100)  # b joins (beats far ahead: stays live)
    await eventually(lambda: applied[-1] == 5.0, 5, "the rate 5.0 applied")
    del rows["b"]
    await eventually(lambda: applied[-1] == 10.0, 5, "the rate 10.0 applied")
    # a lost its heartbeat long enough to restart its life: it pauses until settled again
    rows["a"] = Peer("a", clock[0] + 1.0, clock[0])
    await eventually(lambda: PAUSED_TPS in applied, 5, "the pause rate applied")
    await eventually(lambda: applied[-1] == 10.0, 5, "the rate 10.0 applied")
    await budget.stop()
    assert budget.live == 1


async def test_budget_stands_by_behind_an_older_instance_then_takes_over() -> None:
    clock = [100.0]
    rows = {"a": Peer("a", 0.0, 100.0), "b": Peer("b", 100.0, 100.0)}
    applied: list[float] = []

    async def beat() -> tuple[float, list[Peer]]:
        clock[0] += 1.0
        rows["b"] = Peer("b", rows["b"].joined_at, clock[0])
        if "a" in rows:
            rows["a"] = Peer("a", 0.0, clock[0])
        return clock[0], list(rows.values())

    budget = RateBudget(
        beat, applied.append, instance_id="b", max_tps=1.0, beat_every_s=0.01, settle_s=3.0
    )
    await asyncio.wait_for(budget.start(), timeout=5)  # settles in even though it may not send
    assert budget.standby and not budget.sending()
    assert applied == [PAUSED_TPS]
    del rows["a"]  # a stops beating; once its beat expires, b is the oldest
    await eventually(lambda: applied[-1] == 1.0, 5, "the rate 1.0 applied")
    assert budget.sending() and not budget.standby
    await budget.stop()


async def test_first_beat_must_succeed_and_a_later_failure_keeps_the_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [100.0]
    failing = [True]
    beats = [0]
    applied: list[float] = []

    async def beat() -> tuple[float, list[Peer]]:
        beats[0] += 1
        if failing[0]:
            raise StoreError("database down")
        clock[0] += 1.0
        return clock[0], [Peer("a", 0.0, clock[0])]

    budget = RateBudget(
        beat, applied.append, instance_id="a", max_tps=10.0, beat_every_s=0.01, settle_s=3.0
    )
    with pytest.raises(StoreError):
        await asyncio.wait_for(budget.start(), timeout=5)
    assert applied == [] and not budget.sending()
    failing[0] = False
    await asyncio.wait_for(budget.start(), timeout=5)
    assert applied == [10.0]
    failing[0] = True
    seen = beats[0]
    await eventually(lambda: beats[0] >= seen + 3, 5, "three more (failing) beats")
    assert applied == [10.0] and budget.current == 10.0 and budget.sending()
    assert "heartbeat failed (database down); keeping 10.00/s" in caplog.text
    failing[0] = False
    seen = beats[0]
    await eventually(lambda: beats[0] >= seen + 2, 5, "beats again")
    await budget.stop()
    assert applied == [10.0] and budget.current == 10.0
    assert budget._task is None
