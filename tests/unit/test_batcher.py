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
