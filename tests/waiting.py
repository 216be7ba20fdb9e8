"""Tests wait for conditions, never for time: `eventually` polls until a predicate holds.

A fixed sleep either wastes time or, under load, is too short and makes the test flaky; a
deadline on a condition is as fast as the system allows and fails with a message naming what
never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Short enough not to slow a test down, long enough not to busy-poll a store another process
# writes to.
POLL_S = 0.02


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 (a deadline on a condition, named in the failure)
    what: str | Callable[[], str] = "the condition",
) -> T:
    """Call `predicate` (plain or async) until it returns something truthy; return that.

    After `timeout` seconds raise AssertionError naming `what` (a callable is called then, so
    the message can show the last state seen).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {said}")
        await asyncio.sleep(POLL_S)


def eventually_blocking(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """`eventually` for synchronous fixtures (starting a peer's process before any loop runs)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {said}")
        time.sleep(POLL_S)
