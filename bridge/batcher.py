"""Group many callers' store writes into one call: group commit at the asyncio level.

Twenty texts whose submit_sm_resp arrive in the same few milliseconds each want one small
write. Issued one by one, every write pays a thread hand-off, a transaction and a loop
wake-up; the SQLite writer already folds waiting calls into one commit, but the per-call
overhead stays. `Batcher` queues the items and runs one `run(items)` for all that arrived
while the previous run was busy (Nagle-style, no timer: the first item of an idle batcher goes
out at once, so a lone write is not delayed). With `linger_s`, a run first waits that long for
more items: for a trickle of writes (receipts a few milliseconds apart) that turns one commit
per item into one per few, for that much more latency; see `_maybe_linger` for the peer that
sends one item at a time.

Durability is unchanged: each caller's `await` returns only after the run holding its item
returned, i.e. after that transaction committed; when the run raises, every caller of that
batch gets the exception (the whole transaction failed, nothing of it was written).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

# Lingers in a row that gathered no other item before the batcher stops lingering. A trickle
# at a few hundred per second leaves one 2 ms linger in three empty by chance (Poisson), so
# eight in a row happen within a drain; thirty-two do not, and cost a one-at-a-time SMSC
# 64 ms once.
LONELY_LIMIT = 32

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """`await batcher(item)` → that item's result from `run(items)`.

    `run` takes a batch and returns one result per item, in order. At most `max_batch` items
    go in one run, so one transaction stays short.
    """

    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 64,
        linger_s: float = 0.0,
        company: Callable[[], bool] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run = run
        self._max = max_batch
        self._linger = linger_s
        # Lingering pays only when more items come in the meantime. A peer that sends one
        # item and waits for its answer (an SMSC with a deliver_sm window of 1) would only be
        # slowed down by it, so it stops after LONELY_LIMIT lingers in a row that gathered
        # nothing, and starts again once items pile up by themselves.
        self._lingering = linger_s > 0
        self._lonely = 0
        # Whether more items are on their way (e.g. other texts awaiting their answer): with
        # none, a linger could only delay the item, so the run goes at once.
        self._company = company
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.runs = 0  # how many run() calls so far (for tests and benchmarks)

    async def __call__(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._runner is None:
            self._runner = asyncio.create_task(self._drain(), name=self._name)
        # shield: a caller that is cancelled (e.g. at shutdown) must not cancel the write of
        # the others in its batch; its own item is still written, as with a direct call.
        return await asyncio.shield(fut)

    async def _maybe_linger(self) -> None:
        if self._company is not None and not self._company():
            return
        waiting = len(self._pending)
        if not self._lingering:
            if waiting > 1:  # items piled up on their own: the peer sends in parallel
                self._lingering, self._lonely = True, 0
            return
        if waiting >= self._max:
            return
        await asyncio.sleep(self._linger)
        if len(self._pending) > waiting:
            self._lonely = 0
            return
        self._lonely += 1
        if self._lonely >= LONELY_LIMIT:
            self._lingering = False

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self._linger > 0:
                    await self._maybe_linger()
                batch = self._pending[: self._max]
                del self._pending[: self._max]
                self.runs += 1
                try:
                    results = await self._run([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, fut in batch:
                        fut.cancel()
                    raise
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if len(results) != len(batch):
                    err = RuntimeError(
                        f"{self._name}: run returned {len(results)} results for {len(batch)}"
                    )
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._runner = None
            # Cancelled with items still waiting (the loop is closing): fail them rather than
            # leave their callers hanging.
            for _, fut in self._pending:
                fut.cancel()
            self._pending.clear()
