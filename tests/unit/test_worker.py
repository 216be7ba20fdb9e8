"""The one loop shape every background component uses (bridge/worker.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.store.base import StoreError
from bridge.worker import Worker
from tests.waiting import eventually


class Scripted(Worker):
    name = "scripted"

    def __init__(self, script: list[object]) -> None:
        super().__init__()
        self.script = script
        self.rounds = 0

    async def step(self) -> float:
        self.rounds += 1
        what = self.script.pop(0) if self.script else 3600.0
        if isinstance(what, BaseException):
            raise what
        if what == "slow":
            await asyncio.sleep(3600)
        assert isinstance(what, float)
        return what


async def test_errors_pause_the_loop_but_never_end_it(caplog: pytest.LogCaptureFixture) -> None:
    w = Scripted([StoreError("locked"), ValueError("bug"), 0.0])
    w_pause = 0.01
    import bridge.worker as mod

    old, mod.ERROR_PAUSE_S = mod.ERROR_PAUSE_S, w_pause
    try:
        with caplog.at_level(logging.ERROR, logger="bridge.worker"):
            await w.start()
            await eventually(lambda: w.rounds >= 4, 2, "the loop went on after two errors")
            await w.stop()
    finally:
        mod.ERROR_PAUSE_S = old
    text = caplog.text
    assert "scripted: store unavailable (locked)" in text
    assert "scripted: round failed" in text


async def test_wake_cuts_a_long_sleep_short() -> None:
    w = Scripted([3600.0, 3600.0])
    await w.start()
    await eventually(lambda: w.rounds == 1, 2, "first round")
    w.wake()
    await eventually(lambda: w.rounds == 2, 2, "a wake starts the next round at once")
    await asyncio.wait_for(w.stop(), 2)


async def test_stop_waits_for_grace_then_cancels_a_busy_round() -> None:
    w = Scripted(["slow"])
    await w.start()
    await eventually(lambda: w.rounds == 1, 2, "busy round started")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(w.stop(grace_s=0.05), 2)
    assert loop.time() - t0 >= 0.05
    assert w._task is None


async def test_stop_lets_an_idle_loop_end_by_itself() -> None:
    w = Scripted([3600.0])
    await w.start()
    await eventually(lambda: w.rounds == 1, 2, "first round")
    await asyncio.wait_for(w.stop(grace_s=5), 1)  # ends at once: the sleep is cut short
    assert w.rounds == 1
