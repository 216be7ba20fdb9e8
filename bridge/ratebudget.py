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
floor(share) sends per second (and at least one); the sum of floor(max_tps / n) over n instances
never exceeds max_tps. When there are more instances than texts per second (two instances on a
1 tps long code, say), splitting further would let every instance send one text in the same
second, so the oldest floor(max_tps) instances (at least one) share the whole budget and the
others stand by: they take mail, receipts and replies, but claim nothing to send until a sender
dies (its beat expires after ALIVE_S, longer than the carrier's one-second window, so the
promoted instance cannot overlap with it) or the budget grows. A newcomer is always the youngest,
so it never displaces a sender.

Heartbeat times come from the database server's clock, so clock skew between hosts cannot make
a live instance look dead.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bridge import defaults
from bridge.model import Peer
from bridge.worker import Worker

log = logging.getLogger(__name__)

# The heartbeat timings live in bridge/defaults.py and Peer in bridge/model.py: the store's
# heartbeat query (bridge/store/postgres.py) applies ALIVE_S and returns Peers too, and the
# store imports no service module.
BEAT_EVERY_S = defaults.HEARTBEAT_BEAT_EVERY_S
ALIVE_S = defaults.HEARTBEAT_ALIVE_S
SETTLE_S = defaults.HEARTBEAT_SETTLE_S

# Rate applied while this instance must not send (it lost its heartbeat long enough for the
# peers to count it dead, and is settling in again): one text per quarter hour, in effect a
# pause, since the RateLimiter needs a positive rate.
PAUSED_TPS = 1.0 / 900


def live_peers(peers: Sequence[Peer], now: float, alive_s: float = ALIVE_S) -> list[Peer]:
    """Instances whose heartbeat is fresh at `now`."""
    return [p for p in peers if now - p.beat_at < alive_s]


@dataclass(frozen=True)
class Share:
    """What this instance may send: `rate` texts per second (0.0: nothing), and whether it has
    settled in (False while new, or after its heartbeat lapsed)."""

    rate: float
    settled: bool

    @property
    def standby(self) -> bool:
        """Settled, but another instance holds the budget (more instances than max_tps)."""
        return self.settled and self.rate == 0.0


def plan(
    max_tps: float,
    me: str,
    peers: Sequence[Peer],
    now: float,
    *,
    alive_s: float = ALIVE_S,
    settle_s: float = SETTLE_S,
) -> Share:
    """This instance's part of max_tps at `now` (see the module docstring).

    It must not send while settling in, nor when its own beat is missing or stale: the peers
    no longer count it and have taken its share over.
    """
    live = live_peers(peers, now, alive_s)
    mine = next((p for p in live if p.instance_id == me), None)
    if mine is None or now - mine.joined_at < settle_s:
        return Share(0.0, settled=False)
    if max_tps >= len(live):
        return Share(max_tps / len(live), settled=True)
    # Oldest first; the id breaks ties so that every instance elects the same senders.
    senders = max(1, math.floor(max_tps))
    elected = sorted(live, key=lambda p: (p.joined_at, p.instance_id))[:senders]
    if any(p.instance_id == me for p in elected):
        return Share(max_tps / senders, settled=True)
    return Share(0.0, settled=True)


def share(
    max_tps: float,
    me: str,
    peers: Sequence[Peer],
    now: float,
    *,
    alive_s: float = ALIVE_S,
    settle_s: float = SETTLE_S,
) -> float:
    """plan()'s rate: this instance's texts per second, 0.0 while it must not send."""
    return plan(max_tps, me, peers, now, alive_s=alive_s, settle_s=settle_s).rate


Beat = Callable[[], Awaitable[tuple[float, list[Peer]]]]


class RateBudget(Worker):
    """Beats every `beat_every_s` and hands this instance's share to `apply` when it changes.

    `beat` is the store's heartbeat (PostgresStore.heartbeat): it records this instance and
    returns (database time, every instance's row). `apply` sets the session's rate
    (SmppSession.set_max_tps). start() returns once this instance has settled in and its first
    share is applied: start the dispatcher after it.
    """

    name = "rate-budget"

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
        self.standby = False  # settled, while other instances hold the whole budget
        super().__init__()

    def reload(self, max_tps: float) -> None:
        self.max_tps = max_tps

    def sending(self) -> bool:
        """Whether this instance may claim texts to send now (the dispatcher asks)."""
        return self.current > 0

    async def start(self) -> None:
        """Beat until settled in (SETTLE_S after the first beat), apply the first share
        (or stand by).

        Raises what `beat` raises (StoreError) when the very first beat fails: an instance
        that cannot reach the database must not start sending at an unknown share."""
        while True:
            got = await self._tick()
            if got.settled:
                break
            await asyncio.sleep(self.beat_every_s)
        await super().start()

    async def _tick(self) -> Share:
        now, peers = await self._beat()
        got = plan(
            self.max_tps,
            self.instance_id,
            peers,
            now,
            alive_s=self.alive_s,
            settle_s=self.settle_s,
        )
        self.live = len(live_peers(peers, now, self.alive_s))
        if got.standby and not self.standby:
            log.warning(
                "rate budget: %d live instances for smpp.max_tps %g; this one stands by"
                " (takes mail, sends no texts) while the older ones send",
                self.live,
                self.max_tps,
            )
            self._apply(PAUSED_TPS)
            self.current = 0.0
        elif not got.settled and self.current > 0:
            # Our heartbeat expired (a long store outage): the peers took over our share, so
            # stop until settled in again.
            log.warning("rate budget: heartbeat lapsed; pausing until settled in again")
            self._apply(PAUSED_TPS)
            self.current = 0.0
        self.standby = got.standby
        if got.rate > 0 and got.rate != self.current:
            log.info(
                "rate budget: %d live instance(s), this one sends at most %.2f/s of %g/s",
                self.live,
                got.rate,
                self.max_tps,
            )
            self._apply(got.rate)
            self.current = got.rate
        return got

    async def step(self) -> float:
        # The loop's first round comes one beat after start(), whose beats settled us in.
        await self.sleep(self.beat_every_s)
        if self.stopping:
            return 0.0
        try:
            await self._tick()
        except Exception as exc:
            # Keep the last share: peers still count this instance until its beat expires,
            # and a store that is down stops the dispatcher from claiming anyway. (Not the
            # base's error pause: the next beat comes at the usual time.)
            log.error("rate budget: heartbeat failed (%s); keeping %.2f/s", exc, self.current)
        return 0.0
