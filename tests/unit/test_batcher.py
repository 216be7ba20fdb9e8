"""Group commit at the asyncio level (bridge/batcher.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bridge.batcher import Batcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on

    async def run(self, items: Sequence[int]) -> list[int]:
        await self.gate.wait()
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise OSError("disk full")
        return [i * 10 for i in items]


async def test_lone_item_goes_at_once_and_gets_its_own_result() -> None:
    rec = Recorder()
    b: Batcher[int, int] = Batcher(rec.run)
    assert await asyncio.wait_for(b(7), 1) == 70
    assert rec.batches == [[7]]


async def test_items_arriving_while_a_run_is_busy_share_the_next_run() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: Batcher[int, int] = Batcher(rec.run, max_batch=3)
    first = asyncio.ensure_future(b(0))
    await asyncio.sleep(0)  # the first run starts and waits at the gate
    rest = [asyncio.ensure_future(b(i)) for i in range(1, 6)]
    rec.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 1)
    assert results == [0, 10, 20, 30, 40, 50]
    # one run for the first, then the five that waited, at most three per run
    assert rec.batches == [[0], [1, 2, 3], [4, 5]]
    assert b.runs == 3


async def test_a_failed_run_fails_every_caller_of_that_batch_only() -> None:
    rec = Recorder(fail_on=2)
    rec.gate.clear()
    b: Batcher[int, int] = Batcher(rec.run, max_batch=2)
    calls = [asyncio.ensure_future(b(i)) for i in range(4)]
    await asyncio.sleep(0)
    rec.gate.set()
    done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 1)
    assert done[0] == 0 and done[1] == 10
    assert isinstance(done[2], OSError) and isinstance(done[3], OSError)
    # the batcher keeps working after a failed run
    assert await asyncio.wait_for(b(9), 1) == 90


async def test_a_cancelled_caller_does_not_cancel_the_write() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: Batcher[int, int] = Batcher(rec.run)
    caller = asyncio.ensure_future(b(1))
    other = asyncio.ensure_future(b(2))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    rec.gate.set()
    assert await asyncio.wait_for(other, 1) == 20
    assert any(1 in batch for batch in rec.batches)  # the cancelled caller's item was written


async def test_wrong_result_count_is_an_error_not_a_mismatch() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return []

    b: Batcher[int, int] = Batcher(short)
    with pytest.raises(RuntimeError, match="0 results for 1"):
        await asyncio.wait_for(b(1), 1)


async def test_linger_gathers_a_trickle_into_one_run() -> None:
    rec = Recorder()
    b: Batcher[int, int] = Batcher(rec.run, linger_s=0.05)

    async def trickle() -> list[int]:
        calls = []
        for i in range(3):
            calls.append(asyncio.ensure_future(b(i)))
            await asyncio.sleep(0.005)  # the items' pace: a peer sending, not a wait
        return await asyncio.wait_for(asyncio.gather(*calls), 2)

    assert await trickle() == [0, 10, 20]
    assert rec.batches == [[0, 1, 2]]  # without the linger: [[0], [1], [2]]


async def test_linger_stops_for_a_peer_that_sends_one_at_a_time() -> None:
    import bridge.batcher as mod

    rec = Recorder()
    b: Batcher[int, int] = Batcher(rec.run, linger_s=0.05)
    loop = asyncio.get_running_loop()
    spent = []
    for i in range(mod.LONELY_LIMIT + 3):  # each waits for its answer before the next
        t0 = loop.time()
        assert await asyncio.wait_for(b(i), 2) == i * 10
        spent.append(loop.time() - t0)
    # the first LONELY_LIMIT each waited the linger, then the batcher stopped waiting
    assert min(spent[: mod.LONELY_LIMIT]) >= 0.05
    assert max(spent[mod.LONELY_LIMIT :]) < 0.05

    # items piling up by themselves turn the linger back on
    rec.gate.clear()
    first = asyncio.ensure_future(b(100))
    await asyncio.sleep(0)
    more = [asyncio.ensure_future(b(101)), asyncio.ensure_future(b(102))]
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *more), 2)
    assert b._lingering


async def test_no_linger_when_no_company_is_on_its_way() -> None:
    # The dispatcher's records: with no other text awaiting its answer, nothing can join the
    # run, so the item goes at once (a linger of 10 s would fail the 1 s bound).
    alone = Recorder()
    b: Batcher[int, int] = Batcher(alone.run, linger_s=10.0, company=lambda: False)
    assert await asyncio.wait_for(b(1), 1) == 10
    # with company on its way, the linger gathers it
    rec = Recorder()
    b2: Batcher[int, int] = Batcher(rec.run, linger_s=0.05, company=lambda: True)
    calls = [asyncio.ensure_future(b2(0))]
    await asyncio.sleep(0.01)  # the second item's arrival within the linger, not a wait
    calls.append(asyncio.ensure_future(b2(1)))
    assert await asyncio.wait_for(asyncio.gather(*calls), 2) == [0, 10]
    assert rec.batches == [[0, 1]]
