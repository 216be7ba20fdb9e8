"""One background loop, started and stopped the same way everywhere.

The queue runners of GNU Mailman and the dispatcher/mailer here share a shape: take a batch,
work it, sleep until the next thing is due or somebody wakes you; a store outage or a bug in
one round is logged and the loop goes on after a pause, never dies. `Worker` is that shape
once: subclasses write `step()` (one round, returning how long to sleep) and get `start`,
`stop`, `wake` and the error handling.

`stop(grace_s)` first asks the loop to finish (`stopping` is set and the sleep is cut short),
so a round that is half way through an email or a submit can end cleanly; only after
`grace_s` is the task cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from bridge.store.base import StoreError

log = logging.getLogger(__name__)

# After a failed round: long enough not to spin on a store that is down, short enough that
# the queue moves again within a second of it coming back.
ERROR_PAUSE_S = 1.0


class Worker(ABC):
    """A component with one loop task. `name` names the task and the log lines."""

    name: str = "worker"

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wake(self) -> None:
        """Cut the current sleep short: new work was committed."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Ask the loop to end, give the current round up to grace_s, then cancel it."""
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        _, pending = await asyncio.wait({task}, timeout=grace_s)
        if pending:
            if grace_s > 0:
                log.warning("%s: still busy after %.0f s at stop; cancelled", self.name, grace_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until `wake()` or `stop()`."""
        self._wake.clear()
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))

    @abstractmethod
    async def step(self) -> float:
        """One round of work; returns the seconds to sleep before the next (0: go on now)."""

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                pause = await self.step()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.error(
                    "%s: store unavailable (%s); retrying in %.0f s", self.name, exc, ERROR_PAUSE_S
                )
                pause = ERROR_PAUSE_S
            except Exception:
                # Loop boundary: one bad round must not end the component.
                log.exception("%s: round failed; continuing in %.0f s", self.name, ERROR_PAUSE_S)
                pause = ERROR_PAUSE_S
            if pause > 0:
                await self.sleep(pause)
