"""The carrier's max_tps shared by several bridge instances (PostgreSQL deployments).

A carrier contract caps submits per second per account, not per bind: three instances each
sending at max_tps would send three times too much and be throttled (ESME_RTHROTTLED) or cut
off. Each instance heartbeats into the shared database every BEAT_EVERY_S; an instance is alive
while its last beat is younger than ALIVE_S; each live instance gets max_tps / live instances.

Every change errs on the low side, so the total stays under max_tps through joins and deaths:

* an instance that dies keeps its share reserved until its heartbeat expires (ALIVE_S): the
  survivors are briefly under the budget, never over;
* an instance that joins is counted by the others at their next beat, but sends nothing itself
  until SETTLE_S after its first beat: by then every peer has seen it and lowered its own rate,
  and the sends those peers made at the old rate have left the carrier's one-second window.

The share is applied to the session's RateLimiter, whose sliding window holds at most
floor(share) sends per second; the sum of floor(max_tps / n) over n instances never exceeds
max_tps. Below 1 tps per instance that bound no longer holds (each instance may send one text
in any second), so deployments need max_tps >= the number of instances; `share` logs nothing,
`RateBudget` warns once.

Heartbeat times come from the database server's clock, so clock skew between hosts cannot make
a live instance look dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0
# Three missed beats: a busy event loop or one slow commit is not a death.
ALIVE_S = 3.0
# Two beats for every peer to see a newcomer, plus the carrier's one-second window.
SETTLE_S = 2 * BEAT_EVERY_S + 1.0
# Rate applied while this instance must not send (it lost its heartbeat long enough for the
# peers to count it dead, and is settling in again): one text per quarter hour, in effect a
# pause, since the RateLimiter needs a positive rate.
PAUSED_TPS = 1.0 / 900


@dataclass(frozen=True)
class Peer:
    """One instance's row in the shared heartbeat table (times from the database clock)."""

    instance_id: str
    joined_at: float  # first beat of its current life (reset after its heartbeat expired)
    beat_at: float


def live_peers(peers: Sequence[Peer], now: float, alive_s: float = ALIVE_S) -> list[Peer]:
    """Instances whose heartbeat is fresh at `now`."""
    return [p for p in peers if now - p.beat_at < alive_s]


def share(
    max_tps: float,
    me: str,
    peers: Sequence[Peer],
    now: float,
    *,
    alive_s: float = ALIVE_S,
    settle_s: float = SETTLE_S,
) -> float:
    """This instance's part of max_tps at `now`; 0.0 while it must not send.

    It must not send while settling in, nor when its own beat is missing or stale: the peers
    no longer count it and have taken its share over.
    """
    live = live_peers(peers, now, alive_s)
    mine = next((p for p in live if p.instance_id == me), None)
    if mine is None or now - mine.joined_at < settle_s:
        return 0.0
    return max_tps / len(live)


Beat = Callable[[], Awaitable[tuple[float, list[Peer]]]]


class RateBudget:
    """Beats every `beat_every_s` and hands this instance's share to `apply` when it changes.

    `beat` is the store's heartbeat (PostgresStore.heartbeat): it records this instance and
    returns (database time, every instance's row). `apply` sets the session's rate
    (SmppSession.set_max_tps). start() returns once this instance has settled in and its first
    share is applied: start the dispatcher after it.
    """

    def __init__(
        self,
        beat: Beat,
        apply: Callable[[float], None],
        *,
        instance_id: str,
        max_tps: float,
        beat_every_s: float = BEAT_EVERY_S,
        alive_s: float = ALIVE_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._beat = beat
        self._apply = apply
        self.instance_id = instance_id
        self.max_tps = max_tps
        self.beat_every_s = beat_every_s
        self.alive_s = alive_s
        self.settle_s = settle_s
        self.current: float = 0.0  # the share last applied
        self.live: int = 0  # live instances at the last beat
        self._task: asyncio.Task[None] | None = None
        self._warned_low = False

    def reload(self, max_tps: float) -> None:
        self.max_tps = max_tps

    async def start(self) -> None:
        """Beat until settled in (SETTLE_S after the first beat), apply the first share.

        Raises what `beat` raises (StoreError) when the very first beat fails: an instance
        that cannot reach the database must not start sending at an unknown share."""
        while True:
            got = await self._tick()
            if got > 0:
                break
            await asyncio.sleep(self.beat_every_s)
        self._task = asyncio.create_task(self._run(), name="rate-budget")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _tick(self) -> float:
        now, peers = await self._beat()
        value = share(
            self.max_tps,
            self.instance_id,
            peers,
            now,
            alive_s=self.alive_s,
            settle_s=self.settle_s,
        )
        self.live = len(live_peers(peers, now, self.alive_s))
        if value == 0 and self.current > 0:
            # Our heartbeat expired (a long store outage): the peers took over our share, so
            # stop until settled in again.
            log.warning("rate budget: heartbeat lapsed; pausing until settled in again")
            self._apply(PAUSED_TPS)
            self.current = 0.0
        if value > 0 and value != self.current:
            log.info(
                "rate budget: %d live instance(s), this one sends at most %.2f/s of %g/s",
                self.live,
                value,
                self.max_tps,
            )
            if value < 1.0 and not self._warned_low:
                self._warned_low = True
                log.warning(
                    "rate budget: smpp.max_tps %g shared by %d instances is below 1/s each;"
                    " the carrier may see up to one text per instance in one second",
                    self.max_tps,
                    self.live,
                )
            self._apply(value)
            self.current = value
        return value

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.beat_every_s)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep the last share: peers still count this instance until its beat
                # expires, and a store that is down stops the dispatcher from claiming anyway.
                log.error("rate budget: heartbeat failed (%s); keeping %.2f/s", exc, self.current)
