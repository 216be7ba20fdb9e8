"""SMPP 3.4 ESME session over asyncio: bind, window, rate limit, keep-alive, reconnect.

smpplib's ``Client`` is not used (it blocks, sends no unbind_resp, dies on unknown commands and
never notices a dead link, see ARCHITECTURE.md); only its PDU codec is, through
:mod:`bridge.smpp.pdu`.

Shape: one supervisor task per session connects, binds, waits until the link dies, backs off and
starts again. Each live link owns a reader task and an enquire_link task. Submits from any number
of callers share the window (a semaphore) and the rate limiter, and are matched to their
responses by sequence number and command_id. deliver_sm handlers run as tracked tasks so a slow
handler never stalls the reader; each deliver_sm_resp is written only after its handler
returned. At most ``inbound_window`` handlers run at once: beyond that the reader stops reading
and TCP backpressure paces the SMSC.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.backoff import backoff_delay
from bridge.smpp import errors
from bridge.smpp import pdu as p
from bridge.smpp.pdu import DeliverSm, SubmitSm

log = logging.getLogger(__name__)

DeliverHandler = Callable[[DeliverSm], Awaitable[int]]
BindMode = Literal["transceiver", "transmitter_receiver"]

# Lowest rate the throttle back-off goes to. Below one message every two seconds a throttling
# carrier is effectively down; the dispatcher's retries (not a slower session) handle that.
MIN_THROTTLED_TPS = 0.5
# A burst of throttled responses (the whole window comes back 0x58 at once) is one signal, not
# `window` signals: halve at most once per this many seconds.
THROTTLE_COOLDOWN_S = 1.0
# Slack kept at the edge of every one-second window, for arrival jitter at the SMSC (~0.5 %
# of the rate): cheaper than one ESME_RTHROTTLED, which halves the rate for recovery_s.
WINDOW_GUARD_S = 0.005


class NotBound(Exception):
    """The session was not bound in time (or is stopping); nothing was sent."""


class ResponseTimeout(Exception):
    """No submit_sm_resp in time. The outcome is UNKNOWN: the SMSC may have accepted the
    message. Retry and accept a possible duplicate."""


class ConnectionLost(ResponseTimeout):
    """The link died while the response was awaited: outcome unknown, as for a timeout."""


class SessionListener(Protocol):
    """Optional hooks for metrics and logging; called synchronously, must not block."""

    def on_state(self, state: str) -> None: ...

    def on_throttled(self) -> None: ...

    def on_reconnect(self) -> None: ...

    def on_protocol_error(self, kind: str) -> None: ...

    def on_inbound(self, in_flight: int) -> None: ...

    def on_inbound_paused(self) -> None: ...


@dataclass(frozen=True)
class SessionSettings:
    host: str
    port: int
    system_id: str
    password: str
    system_type: str = ""
    bind_mode: BindMode = "transceiver"
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None  # PEM bundle for a private CA; None: the system's CAs
    window: int = 10
    # deliver_sm / data_sm handled at once; while that many are in hand the reader stops
    # reading, so a flood waits in TCP (see _Link._read_loop).
    inbound_window: int = 32  # bridge/defaults.py SMPP_INBOUND_WINDOW
    response_timeout_s: float = 30.0
    enquire_link_s: float = 30.0
    enquire_link_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_tps: float = 10.0
    throttle_recovery_s: float = 30.0  # time to climb back to max_tps after ESME_RTHROTTLED
    unbind_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.inbound_window < 1:
            raise ValueError("inbound_window must be at least 1")
        if self.max_tps <= 0:
            raise ValueError("max_tps must be positive")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        for name in ("response_timeout_s", "enquire_link_s", "enquire_link_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class SubmitResult:
    status: int
    message_id: str | None


# ----------------------------------------------------------------------------- pure parts


class RateLimiter:
    """Paces sends at the current rate with no burst (a GCRA with zero tolerance).

    Each send gets its own slot ``1/rate`` after the previous one; an idle period does not
    bank credit. So any half-open one-second interval holds at most ``ceil(rate)`` sends and a
    closed one at most ``rate + 1``: a 10-second window never exceeds ``max_tps * 10 + 1``.

    On ESME_RTHROTTLED the rate halves (at most once per THROTTLE_COOLDOWN_S, floor
    MIN_THROTTLED_TPS) and then climbs back linearly to ``max_tps`` over ``recovery_s``.
    Time is passed in, so the schedule is testable without sleeping.
    """

    def __init__(self, max_tps: float, recovery_s: float) -> None:
        self.max_tps = max_tps
        self.recovery_s = recovery_s
        self._next = float("-inf")
        self._last_slot = float("-inf")  # the latest slot reserve() handed out
        self._recent: collections.deque[float] = collections.deque(
            maxlen=max(1, math.ceil(max_tps))
        )
        self._low = max_tps  # rate right after the last throttle
        self._since = float("-inf")  # when the last throttle happened

    def rate(self, now: float) -> float:
        if self._low >= self.max_tps:
            return self.max_tps
        if self.recovery_s <= 0:
            return self.max_tps
        climbed = (self.max_tps - self._low) * (now - self._since) / self.recovery_s
        return min(self.max_tps, self._low + max(0.0, climbed))

    def reserve(self, now: float) -> float:
        """Claim the next send slot; returns the time at which to send (>= now)."""
        start = max(now, self._next)
        rate = self.rate(start)
        # Sliding-window guard, on *actual* send times (mark_sent): a carrier that counts
        # arrivals per second must never see more than floor(rate) of them, even when one
        # send woke late and the next on time. GUARD_S absorbs arrival jitter at the SMSC.
        per_second = max(1, math.floor(rate))
        if len(self._recent) >= per_second:
            start = max(start, self._recent[-per_second] + 1.0 + WINDOW_GUARD_S)
        # The nanosecond keeps float rounding (0.1 * 10 < 1.0) from letting rate + 1 sends
        # into a half-open second.
        self._next = start + 1.0 / rate + 1e-9
        self._last_slot = start
        return start

    def mark_sent(self, at: float) -> None:
        """Record when a send actually went out. The schedule itself stays on the ideal
        slots (a late wake-up does not push every later slot back, which would cost rate);
        the sliding-window guard in reserve() works on these actual times."""
        self._recent.append(at)

    def set_max_tps(self, max_tps: float, now: float) -> None:
        """A new ceiling: this instance's share of the carrier's max_tps changed (several
        instances, bridge/ratebudget.py). The next slot is spaced from the last one at the new
        rate; the sliding window applies the new rate from the next reservation on."""
        if max_tps <= 0:
            raise ValueError("max_tps must be positive")
        self.max_tps = max_tps
        self._low = min(self._low, max_tps)
        want = max(1, math.ceil(max_tps))
        if self._recent.maxlen is None or self._recent.maxlen < want:
            self._recent = collections.deque(self._recent, maxlen=want)
        if self._last_slot > float("-inf"):
            self._next = self._last_slot + 1.0 / self.rate(now) + 1e-9

    def throttled(self, now: float) -> bool:
        """Record an ESME_RTHROTTLED; True when the rate was actually lowered."""
        if now - self._since < THROTTLE_COOLDOWN_S:
            return False
        current = self.rate(now)
        self._low = max(min(MIN_THROTTLED_TPS, self.max_tps), current / 2.0)
        self._since = now
        # Slots already handed out at the old rate stay; the next one is spaced at the new rate.
        self._next = max(self._next, now + 1.0 / self._low)
        return True


def _with_sequence(raw: bytes, sequence: int) -> bytes:
    return raw[:12] + struct.pack(">L", sequence) + raw[16:]


# ----------------------------------------------------------------------------- one link


class _BindRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(errors.status_name(status))
        self.status = status


class _Link:
    """One TCP (or TLS) connection carrying one bind."""

    def __init__(
        self,
        session: SmppSession,
        role: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.session = session
        self.role = role  # "transceiver", "transmitter" or "receiver"
        self.reader = reader
        self.writer = writer
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._seq = 0
        # sequence -> (the command_id its response must carry, the waiter)
        self._pending: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        self._paused_logged = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_lock = asyncio.Lock()
        # PDUs written in one turn of the event loop go out in one write: with a window of
        # submits and a burst of deliver_sm_resp, one send(2) per PDU was the largest single
        # cost per text (each loopback or LAN send also does the receiver's TCP work).
        self._out: list[bytes] = []
        self._flush_scheduled = False

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set()

    @property
    def receives(self) -> bool:
        return self.role in ("transceiver", "receiver")

    def start(self) -> None:
        self._spawn(self._read_loop(), "reader")

    def start_keepalive(self) -> None:
        self._spawn(self._enquire_loop(), "enquire_link")

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"smpp-{self.session.name}-{self.role}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def next_sequence(self) -> int:
        self._seq = p.next_sequence(self._seq)
        return self._seq

    def send(self, raw: bytes) -> bool:
        """Queue one PDU for this turn's write; False when the link is already closed."""
        if self.closed.is_set() or self.writer.is_closing():
            return False
        self._out.append(raw)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out or self.writer.is_closing():
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self.writer.write(data)

    async def request(self, raw: bytes, timeout_s: float) -> bytes:
        """Send a request (its sequence number is assigned here) and await the matching
        response or generic_nack. Raises NotBound if the link closed before the write (nothing
        was sent), ResponseTimeout / ConnectionLost afterwards (outcome unknown)."""
        seq = self.next_sequence()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[seq] = (p.parse_header(raw).command_id | p.RESP_BIT, future)
        try:
            if not self.send(_with_sequence(raw, seq)):
                raise NotBound(f"link closed ({self.close_reason})")
            try:
                async with asyncio.timeout(timeout_s):
                    async with self._drain_lock:
                        await self.writer.drain()
                    return await future
            except TimeoutError:
                raise ResponseTimeout(
                    f"no response to {p.command_name(p.parse_header(raw).command_id)} "
                    f"seq {seq} within {timeout_s:g} s"
                ) from None
            except ConnectionError as exc:
                raise ConnectionLost(f"connection lost: {exc}") from exc
        finally:
            self._pending.pop(seq, None)

    def close(self, reason: str) -> None:
        """Close now; fail every awaited response with ConnectionLost. Safe to call twice and
        from the link's own tasks (those are not cancelled from inside themselves)."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._flush()  # what was sent before the close (an unbind_resp, say) still goes out
        self.writer.close()
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"connection lost: {reason}"))
        self._pending.clear()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def aclose(self, reason: str) -> None:
        self.close(reason)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await p.frame_reader(self.reader)
                header = p.parse_header(raw)
                if header.command_id in (p.DELIVER_SM, p.DATA_SM) and self.receives:
                    # Bounded inbound work: with inbound_window deliver_sm in hand, do not
                    # read the next PDU until one is answered. The SMSC's PDUs then wait in
                    # our socket buffer and TCP's closing window slows the SMSC down (its own
                    # window, §2.6, does the rest), instead of thousands of handlers queueing
                    # at the store in front of the libraries' SMTP commits.
                    await self.session._inbound_slot(self)
                self._dispatch(header, raw)
                if self.closed.is_set():
                    return
        except p.FrameError as exc:
            # §3.1: command_length is the only frame delimiter; after a bad one the stream
            # cannot be resynchronised. Tell the SMSC why, then start a fresh connection.
            log.warning("SMPP %s: malformed PDU from SMSC (%s); reconnecting", self.label, exc)
            self.send(p.build_header_only(p.GENERIC_NACK, exc.header.sequence, exc.status))
            self.close(f"malformed PDU: {exc}")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            self.close(f"connection closed by SMSC ({type(exc).__name__})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # loop boundary: a bug here must drop the link, not hang it
            log.exception("SMPP %s: reader failed", self.label)
            self.close(f"reader error: {exc}")

    @property
    def label(self) -> str:
        return f"{self.session.name}/{self.role}"

    def note_paused(self) -> None:
        """The reader stopped for the inbound window: said once per link at INFO (a flood
        would say it thousands of times; the metric counts every pause)."""
        if not self._paused_logged:
            self._paused_logged = True
            log.info(
                "SMPP %s: %d deliver_sm in hand (smpp.inbound_window); reading paused until "
                "one is answered",
                self.label,
                self.session.settings.inbound_window,
            )

    def _dispatch(self, header: p.Header, raw: bytes) -> None:
        cid = header.command_id
        if cid & p.RESP_BIT:
            pending = self._pending.get(header.sequence)
            if pending is not None and cid not in (pending[0], p.GENERIC_NACK):
                # §3.2: a response carries its request's command_id with bit 31 set, and
                # generic_nack may answer anything. Anything else with this sequence number
                # (an enquire_link_resp echoing a submit's number) is not the answer: taking
                # it would mark a text submitted with no message id, so its receipt could
                # never match. The request stays pending until its own response or timeout.
                log.warning(
                    "SMPP %s: %s (0x%08X) with seq %d does not answer the pending %s; "
                    "ignored (protocol error)",
                    self.label,
                    header.name,
                    cid,
                    header.sequence,
                    p.command_name(pending[0] & ~p.RESP_BIT),
                )
                self.session._protocol_error("mismatched_response")
                return
            future = None if pending is None else pending[1]
            if future is not None and not future.done():
                future.set_result(raw)
            elif cid == p.GENERIC_NACK:
                log.warning(
                    "SMPP %s: generic_nack %s for seq %d",
                    self.label,
                    errors.status_name(header.status),
                    header.sequence,
                )
            else:
                # Usually the answer to a request we already gave up on (timeout).
                log.debug(
                    "SMPP %s: late/unexpected %s seq %d", self.label, header.name, header.sequence
                )
            return
        if cid == p.ENQUIRE_LINK:
            self.send(p.build_header_only(p.ENQUIRE_LINK_RESP, header.sequence))
        elif cid == p.UNBIND:
            # §4.2: answer unbind_resp, then the SMSC closes; we reconnect with back-off.
            self.send(p.build_header_only(p.UNBIND_RESP, header.sequence))
            log.info("SMPP %s: SMSC sent unbind", self.label)
            self.close("unbound by SMSC")
        elif cid in (p.DELIVER_SM, p.DATA_SM):
            self.session._on_deliver_pdu(self, header, raw)
        elif cid in (p.ALERT_NOTIFICATION, p.OUTBIND):
            # §4.12: alert_notification has no response; outbind is for ESMEs that listen.
            log.debug("SMPP %s: ignoring %s", self.label, header.name)
        else:
            # §4.3 / §3.3: anything else an ESME does not handle gets generic_nack
            # ESME_RINVCMDID, and the session keeps going.
            log.warning("SMPP %s: unsupported command %s from SMSC", self.label, header.name)
            self.send(p.build_header_only(p.GENERIC_NACK, header.sequence, errors.ESME_RINVCMDID))

    async def _enquire_loop(self) -> None:
        settings = self.session.settings
        enquire = p.build_header_only(p.ENQUIRE_LINK, 0)
        while True:
            await asyncio.sleep(settings.enquire_link_s)
            try:
                await self.request(enquire, settings.enquire_link_timeout_s)
            except ConnectionLost:
                return
            except NotBound:
                return
            except ResponseTimeout:
                # §4.11: enquire_link exists to detect exactly this: a TCP connection that is
                # still "up" but nothing answers. Drop it and reconnect.
                log.warning(
                    "SMPP %s: no enquire_link_resp within %g s; link is dead",
                    self.label,
                    settings.enquire_link_timeout_s,
                )
                self.close("enquire_link timeout")
                return


# ----------------------------------------------------------------------------- session


class SmppSession:
    def __init__(
        self,
        settings: SessionSettings,
        on_deliver: DeliverHandler,
        *,
        name: str = "smsc",
        listener: SessionListener | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._on_deliver = on_deliver
        self._listener = listener
        self._state = "stopped"
        self._last_error: str | None = None
        self._bound_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._links: list[_Link] = []
        self._tx: _Link | None = None
        self._window = asyncio.Semaphore(settings.window)
        self._pace = asyncio.Lock()
        self._limiter = RateLimiter(settings.max_tps, settings.throttle_recovery_s)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._inbound = asyncio.Semaphore(settings.inbound_window)
        self._rng = random.Random()
        self.bind_attempts = 0
        # Observability (status page, tests): deliver_sm / data_sm being handled now, the most
        # at once, times the reader paused for the inbound window, protocol errors by kind.
        self.inbound_in_flight = 0
        self.inbound_peak = 0
        self.inbound_pauses = 0
        self.protocol_errors: collections.Counter[str] = collections.Counter()

    # -- public surface

    @property
    def bound(self) -> bool:
        return self._bound_event.is_set()

    @property
    def state(self) -> str:
        """ "connecting", "bound", "bind_failed: <reason>", "backoff" or "stopped"."""
        return self._state

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt or link ended (for status pages)."""
        return self._last_error

    def set_max_tps(self, max_tps: float) -> None:
        """This instance's share of the carrier's max_tps (bridge/ratebudget.py RateBudget)."""
        self._limiter.set_max_tps(max_tps, asyncio.get_running_loop().time())

    @property
    def current_tps(self) -> float:
        """The submit rate the limiter allows right now (lower than max_tps after throttling)."""
        return self._limiter.rate(asyncio.get_running_loop().time())

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._stopping = False
        self._stop_event.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"smpp-{self.name}")

    # The public API takes a plain timeout (the callers' contract), hence the noqa.
    async def wait_bound(self, timeout: float) -> bool:  # noqa: ASYNC109
        if self._bound_event.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._bound_event.wait()
        except TimeoutError:
            return False
        return True

    async def submit(
        self,
        sm: SubmitSm,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        on_sent: Callable[[], None] | None = None,
    ) -> SubmitResult:
        """Send one submit_sm and return its result, whatever the status.

        ``timeout`` bounds the wait for a bound session (default response_timeout_s); the wait
        for the response itself is response_timeout_s. Raises NotBound (nothing sent),
        ResponseTimeout or ConnectionLost (outcome unknown) and ValueError for a PDU that
        cannot be encoded. ``on_sent`` is called when the PDU goes on the wire (until then a
        cancelled submit sent nothing).
        """
        raw = p.build_submit_sm(sm, 0)  # ValueError here, before any waiting
        loop = asyncio.get_running_loop()
        wait_s = self.settings.response_timeout_s if timeout is None else timeout
        deadline = loop.time() + wait_s
        async with self._window:
            while True:
                link = await self._wait_tx(deadline)
                # One sender at a time through the pacing gate, so slots are handed out in
                # the order sends really happen. link.request() writes the PDU before its
                # first await, so nothing can overtake between the gate and the wire.
                async with self._pace:
                    send_at = self._limiter.reserve(loop.time())
                    delay = send_at - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if not link.is_open:
                        continue  # dropped while we waited for the slot: nothing sent yet
                    self._limiter.mark_sent(loop.time())
                    if on_sent is not None:
                        on_sent()
                self._inflight += 1
                self._idle.clear()
                try:
                    resp = await link.request(raw, self.settings.response_timeout_s)
                except NotBound:
                    continue
                finally:
                    self._inflight -= 1
                    if self._inflight == 0:
                        self._idle.set()
                return self._submit_result(link, resp)

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new submits, let outstanding ones finish (up to ``drain_timeout_s``), unbind
        (waiting up to unbind_timeout_s for unbind_resp, §4.2) and close."""
        if self._supervisor is None:
            self._set_state("stopped")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        self._stopping = True
        self._stop_event.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()
        if self._handlers:
            remaining = max(0.0, deadline - loop.time())
            await asyncio.wait(set(self._handlers), timeout=remaining)
        for link in list(self._links):
            if link.is_open:
                try:
                    await link.request(
                        p.build_header_only(p.UNBIND, 0), self.settings.unbind_timeout_s
                    )
                except (ResponseTimeout, NotBound):
                    log.info("SMPP %s: no unbind_resp; closing anyway", link.label)
                await link.aclose("stopped")
        supervisor, self._supervisor = self._supervisor, None
        try:
            async with asyncio.timeout(max(1.0, self.settings.unbind_timeout_s)):
                await supervisor
        except TimeoutError:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        self._set_state("stopped")

    # -- internals

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        self._notify("on_state", state)

    def _notify(self, hook: str, *args: str | int) -> None:
        # A listener written before a hook existed simply does not get it.
        method = getattr(self._listener, hook, None)
        if method is None:
            return
        try:
            method(*args)
        except Exception:  # a metrics bug must not take the SMPP session down
            log.exception("SMPP %s: listener %s failed", self.name, hook)

    async def _wait_tx(self, deadline: float) -> _Link:
        loop = asyncio.get_running_loop()
        while True:
            if self._stopping:
                raise NotBound("session is stopping")
            link = self._tx
            if self._bound_event.is_set() and link is not None and link.is_open:
                return link
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotBound(f"not bound ({self._state})")
            bound = asyncio.ensure_future(self._bound_event.wait())
            stop = asyncio.ensure_future(self._stop_event.wait())
            try:
                await asyncio.wait({bound, stop}, timeout=remaining, return_when="FIRST_COMPLETED")
            finally:
                bound.cancel()
                stop.cancel()
                await asyncio.gather(bound, stop, return_exceptions=True)

    def _submit_result(self, link: _Link, raw: bytes) -> SubmitResult:
        header = p.parse_header(raw)
        status = header.status
        message_id: str | None = None
        if header.command_id == p.GENERIC_NACK:
            # The SMSC could not even read our submit_sm. A nack with status 0 makes no sense;
            # report it as a system error rather than a success.
            status = status or errors.ESME_RSYSERR
            log.warning("SMPP %s: submit_sm answered with generic_nack", link.label)
        elif status == errors.ESME_ROK:
            message_id = p.parse_resp_id(raw)
        if status == errors.ESME_RTHROTTLED:
            loop_now = asyncio.get_running_loop().time()
            if self._limiter.throttled(loop_now):
                log.warning(
                    "SMPP %s: SMSC throttled us; rate now %.1f/s, back to %g/s in %g s",
                    link.label,
                    self._limiter.rate(loop_now),
                    self.settings.max_tps,
                    self.settings.throttle_recovery_s,
                )
                self._notify("on_throttled")
        elif errors.classify(status) == "rebind":
            log.warning(
                "SMPP %s: SMSC answered %s; rebinding", link.label, errors.status_name(status)
            )
            link.close(f"SMSC answered {errors.status_name(status)}")
        return SubmitResult(status=status, message_id=message_id)

    def _protocol_error(self, kind: str) -> None:
        self.protocol_errors[kind] += 1
        self._notify("on_protocol_error", kind)

    async def _inbound_slot(self, link: _Link) -> None:
        """Take one place in the inbound window, waiting (and so not reading) while it is
        full. The place is given back by _on_deliver_pdu: when the handler's response is
        written, or at once for a PDU answered without a handler."""
        if self._inbound.locked():
            self.inbound_pauses += 1
            link.note_paused()
            self._notify("on_inbound_paused")
        await self._inbound.acquire()
        self.inbound_in_flight += 1
        self.inbound_peak = max(self.inbound_peak, self.inbound_in_flight)
        self._notify("on_inbound", self.inbound_in_flight)

    def _inbound_release(self, _: object = None) -> None:
        self.inbound_in_flight -= 1
        self._inbound.release()
        self._notify("on_inbound", self.inbound_in_flight)

    def _on_deliver_pdu(self, link: _Link, header: p.Header, raw: bytes) -> None:
        resp_id = p.DATA_SM_RESP if header.command_id == p.DATA_SM else p.DELIVER_SM_RESP
        if not link.receives:
            link.send(p.build_header_only(resp_id, header.sequence, errors.ESME_RINVBNDSTS))
            return
        # The reader took an inbound place for this PDU (_Link._read_loop); whatever happens
        # here, exactly one release follows.
        handed_over = False
        try:
            if not 1 <= header.sequence <= p.MAX_SEQUENCE:
                # §3.2: sequence numbers run from 0x00000001 to 0x7FFFFFFF. A deliver_sm
                # outside that range has an invalid header (§4.3: generic_nack): it is not
                # handed on, so no patron reply or receipt rests on a PDU the SMSC sent wrong.
                log.warning(
                    "SMPP %s: %s with sequence number %d (outside 1..0x7FFFFFFF) refused",
                    link.label,
                    header.name,
                    header.sequence,
                )
                self._protocol_error("invalid_sequence")
                link.send(p.build_header_only(p.GENERIC_NACK, header.sequence, errors.ESME_RSYSERR))
                return
            try:
                message = p.parse_deliver_sm(raw)
            except p.PduError as exc:
                log.warning("SMPP %s: unreadable %s: %s", link.label, header.name, exc)
                link.send(p.build_header_only(resp_id, header.sequence, exc.status))
                return
            task = asyncio.create_task(self._run_handler(link, resp_id, message))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            task.add_done_callback(self._inbound_release)
            handed_over = True
        finally:
            if not handed_over:
                self._inbound_release()

    async def _run_handler(self, link: _Link, resp_id: int, message: DeliverSm) -> None:
        try:
            status = await self._on_deliver(message)
            if not isinstance(status, int) or not 0 <= status <= 0xFFFFFFFF:
                raise TypeError(f"deliver handler returned {status!r}, not a command_status")
        except asyncio.CancelledError:
            raise  # no response: the SMSC redelivers after its own timeout
        except Exception:
            # Temporary application error: the SMSC keeps the message and redelivers it.
            log.error(
                "SMPP %s: deliver handler failed for seq %d; answering ESME_RX_T_APPN",
                link.label,
                message.sequence,
                exc_info=True,
            )
            status = errors.ESME_RX_T_APPN
        if resp_id == p.DATA_SM_RESP:
            resp = p.build_data_sm_resp(message.sequence, status)
        else:
            resp = p.build_deliver_sm_resp(message.sequence, status)
        if not link.send(resp):
            log.info(
                "SMPP %s: link closed before deliver_sm_resp seq %d; SMSC will redeliver",
                link.label,
                message.sequence,
            )

    async def _open(self, role: str) -> _Link:
        s = self.settings
        context: ssl.SSLContext | None = None
        if s.tls:
            context = ssl.create_default_context(cafile=s.tls_ca_file)
            if not s.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(s.response_timeout_s):
            reader, writer = await asyncio.open_connection(
                s.host, s.port, ssl=context, server_hostname=s.host if context else None
            )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # With a window of requests in flight, Nagle + delayed ACK stall every other PDU
            # (measured: half the throughput). asyncio usually sets this already; be explicit.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, role, reader, writer)
        link.start()
        command = {
            "transceiver": p.BIND_TRANSCEIVER,
            "transmitter": p.BIND_TRANSMITTER,
            "receiver": p.BIND_RECEIVER,
        }[role]
        try:
            raw = p.build_bind(
                command, 0, system_id=s.system_id, password=s.password, system_type=s.system_type
            )
            self.bind_attempts += 1
            resp = await link.request(raw, s.response_timeout_s)
            header = p.parse_header(resp)
            if header.command_id != (command | p.RESP_BIT) or header.status != errors.ESME_ROK:
                raise _BindRefused(header.status or errors.ESME_RBINDFAIL)
        except BaseException:
            await link.aclose("bind failed")
            raise
        link.start_keepalive()
        return link

    async def _connect(self) -> list[_Link]:
        if self.settings.bind_mode == "transceiver":
            return [await self._open("transceiver")]
        tx = await self._open("transmitter")
        try:
            rx = await self._open("receiver")
        except BaseException:
            await tx.aclose("receiver bind failed")
            raise
        return [tx, rx]

    async def _supervise(self) -> None:
        s = self.settings
        attempt = 0
        while not self._stopping:
            self._set_state("connecting")
            failure_state = "backoff"
            try:
                links = await self._connect()
            except asyncio.CancelledError:
                raise
            except _BindRefused as exc:
                reason = f"{errors.status_name(exc.status)} ({errors.describe(exc.status)})"
                self._last_error = f"bind refused: {reason}"
                failure_state = f"bind_failed: {reason}"
                log.error(
                    "SMPP %s: SMSC %s:%d refused the bind: %s; check smpp.system_id and "
                    "smpp.password",
                    self.name,
                    s.host,
                    s.port,
                    reason,
                )
            except (OSError, TimeoutError, ResponseTimeout, NotBound, p.PduError) as exc:
                self._last_error = f"cannot connect: {exc or type(exc).__name__}"
                log.warning(
                    "SMPP %s: cannot connect/bind to %s:%d: %s",
                    self.name,
                    s.host,
                    s.port,
                    exc or type(exc).__name__,
                )
            except Exception as exc:  # loop boundary: keep retrying whatever went wrong
                self._last_error = f"unexpected error: {exc}"
                log.exception("SMPP %s: unexpected error while connecting", self.name)
            else:
                attempt = 0
                await self._serve(links)
                if self._stopping:
                    break
                self._notify("on_reconnect")
            if self._stopping:
                break
            delay = backoff_delay(attempt, s.reconnect_min_s, s.reconnect_max_s, self._rng)
            attempt += 1
            self._set_state(failure_state)
            log.info("SMPP %s: reconnecting in %.1f s", self.name, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()

    async def _serve(self, links: list[_Link]) -> None:
        """Run while every link of the bind is alive; then close them all."""
        self._links = links
        self._tx = links[0]
        self._last_error = None
        self._bound_event.set()
        self._set_state("bound")
        log.info(
            "SMPP %s: bound to %s:%d as %s (%s)",
            self.name,
            self.settings.host,
            self.settings.port,
            self.settings.system_id,
            self.settings.bind_mode,
        )
        waiters = [asyncio.ensure_future(link.closed.wait()) for link in links]
        try:
            await asyncio.wait(waiters, return_when="FIRST_COMPLETED")
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            reason = next((link.close_reason for link in links if link.close_reason), "closed")
            if not self._stopping:
                self._last_error = reason
            self._bound_event.clear()
            self._tx = None
            for link in links:
                await link.aclose(reason)
            self._links = []
        if not self._stopping:
            log.warning("SMPP %s: unbound: %s", self.name, reason)
