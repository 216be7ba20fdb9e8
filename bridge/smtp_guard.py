"""Who may hold an SMTP connection, for how long, and how fast a password may be guessed.

Pure bookkeeping with time passed in; bridge/smtp_intake.py applies it to sockets.

Connections follow Postfix's anvil(8) and STRESS_README: a per-client connection count limit
(`smtpd_client_connection_count_limit`), and shorter timeouts while the server is under stress.
On top of that, clients from no library's `networks` (strangers) share a small part of the
connection cap, so idle strangers can never take the slots the libraries' ILS hosts need.

Password guessing is slowed per address prefix (/24, /64), per login and globally. The tables
are bounded and use Space-Saving eviction (Metwally, Agrawal, El Abbadi, "Efficient computation
of frequent and top-k elements in data streams", 2005): a new key takes over the score of the
key it evicts, so scores are only ever overestimated and churning through addresses or logins
cannot reset an attacker's delay; it raises everyone's floor instead, which is the global
budget doing its job.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from dataclasses import dataclass

# --- addresses ------------------------------------------------------------------------------------


def _ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    return addr


def client_key(ip: str) -> str:
    """The unit a connection limit counts: one IPv4 address, or one IPv6 /64 (a single host is
    usually given a whole /64, so counting IPv6 addresses one by one would count nothing)."""
    addr = _ip(ip)
    if addr is None:
        return ip
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def prefix_key(ip: str, v4_bits: int, v6_bits: int) -> str:
    """The network an AUTH failure is charged to: a /24 or a /64 by default, so that moving to
    the next address in the same network gains a guesser nothing."""
    addr = _ip(ip)
    if addr is None:
        return ip
    bits = v4_bits if addr.version == 4 else v6_bits
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


# --- connections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotLimits:
    max_connections: int
    per_address: int
    # Connections from addresses in no tenant's networks that have not authenticated.
    outside_networks: int
    # Share of max_connections in use from which the server counts as under stress.
    stress_fraction: float


@dataclass(frozen=True)
class Refusal:
    reason: str  # for the log line and the metric label: stable, no patron data
    reply: str  # the 421 the client gets


REFUSE_TOTAL = Refusal("connection_limit", "421 4.3.2 Too many connections; try again later")
REFUSE_ADDRESS = Refusal(
    "per_address_limit", "421 4.7.0 Too many connections from your address; try again later"
)
REFUSE_OUTSIDE = Refusal(
    "outside_networks_share_full",
    "421 4.7.0 Too many connections from outside the libraries' networks; try again later",
)


class ConnectionSlots:
    """Open connections by client, and whether each came from a library's network.

    A stranger that authenticates is `promote`d: it then counts like a library's host (it is
    one, on a dynamic address) and frees its place in the strangers' share.
    """

    def __init__(self) -> None:
        self.total = 0
        self.outside = 0
        self._per_client: dict[str, int] = {}

    def admit(self, ip: str, listed: bool, limits: SlotLimits) -> Refusal | None:
        key = client_key(ip)
        if self._per_client.get(key, 0) >= limits.per_address:
            return REFUSE_ADDRESS
        if not listed and self.outside >= limits.outside_networks:
            return REFUSE_OUTSIDE
        if self.total >= limits.max_connections:
            return REFUSE_TOTAL
        self.total += 1
        self._per_client[key] = self._per_client.get(key, 0) + 1
        if not listed:
            self.outside += 1
        return None

    def promote(self) -> None:
        """A stranger's connection authenticated: it leaves the strangers' share."""
        self.outside = max(0, self.outside - 1)

    def release(self, ip: str, outside: bool) -> None:
        key = client_key(ip)
        n = self._per_client.get(key, 0) - 1
        if n > 0:
            self._per_client[key] = n
        else:
            self._per_client.pop(key, None)
        self.total = max(0, self.total - 1)
        if outside:
            self.outside = max(0, self.outside - 1)

    def count(self, ip: str) -> int:
        return self._per_client.get(client_key(ip), 0)

    def under_stress(self, limits: SlotLimits) -> bool:
        """STRESS_README: the server is under stress when its connection slots run out."""
        return (
            self.total >= limits.max_connections * limits.stress_fraction
            or 0 < limits.outside_networks <= self.outside
        )


@dataclass(frozen=True)
class Timeouts:
    # Between commands inside a transaction (after MAIL): RFC 5321 §4.5.3.2.7's 5 minutes.
    in_transaction_s: float
    # Before MAIL (greeting, EHLO, AUTH, and between transactions): nothing is at stake yet,
    # and an idle client here only holds a slot.
    before_mail_s: float
    # Before MAIL while under stress (Postfix: smtpd_timeout = ${stress?{10}:{300}}s).
    stress_s: float


def idle_timeout(in_transaction: bool, under_stress: bool, t: Timeouts) -> float:
    """Seconds a client may stay silent after our last reply."""
    if in_transaction:
        return t.in_transaction_s
    if under_stress:
        return min(t.stress_s, t.before_mail_s)
    return t.before_mail_s


# --- AUTH throttle --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrottleSettings:
    step_s: float  # each failure on the books adds this much delay...
    max_s: float  # ...up to this; an attempt that would wait longer is answered 454 at once
    half_life_s: float  # failures are forgotten gradually: a score halves in this time
    global_free: float  # failures across all clients (per half-life) before everyone waits
    capacity: int  # entries per table (prefixes, logins)
    v4_bits: int = 24
    v6_bits: int = 64


@dataclass(frozen=True)
class Reservation:
    """An AUTH attempt's place in line: verify at `start`, or `refused` (answer 454)."""

    start: float
    refused: bool
    keys: tuple[str, str]


_ZERO = -math.inf  # the level of an empty score


class _Table:
    """Decaying failure scores per key, at most `capacity` keys (Space-Saving eviction).

    A score s at time t is kept as its level L = log2(s) + t / half_life, so that every
    score decays without being touched and comparing levels compares current scores. A heap
    of (level, key) with stale entries skipped finds the smallest in O(log n), so a flood of
    new addresses costs little per attempt even with thousands of entries.
    """

    def __init__(self, capacity: int, half_life_s: float) -> None:
        self.capacity = max(1, capacity)
        self._h = half_life_s
        self._level: dict[str, float] = {}
        self._next: dict[str, float] = {}  # earliest start of the key's next attempt
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._level)

    def score(self, key: str, now: float) -> float:
        level = self._level.get(key)
        if level is None:
            level = self._level[self._smallest()] if len(self._level) >= self.capacity else _ZERO
        return self._value(level, now)

    def next_at(self, key: str) -> float:
        return self._next.get(key, -math.inf)

    def _value(self, level: float, now: float) -> float:
        return 0.0 if level == _ZERO else 2.0 ** (level - now / self._h)

    def _level_of(self, value: float, now: float) -> float:
        return _ZERO if value <= 1e-9 else math.log2(value) + now / self._h

    def _set(self, key: str, level: float) -> None:
        self._level[key] = level
        heapq.heappush(self._heap, (level, key))
        if len(self._heap) > 4 * self.capacity + 64:
            self._heap = [(lv, k) for k, lv in self._level.items()]
            heapq.heapify(self._heap)

    def _smallest(self) -> str:
        while True:
            level, key = self._heap[0]
            if self._level.get(key) == level:
                return key
            heapq.heappop(self._heap)  # stale: the key was updated or evicted since

    def _ensure(self, key: str) -> None:
        if key in self._level:
            return
        if len(self._level) >= self.capacity:
            # Space-Saving: the newcomer inherits the smallest score and its place in line.
            victim = self._smallest()
            self._set(key, self._level.pop(victim))
            self._next[key] = self._next.pop(victim, -math.inf)
        else:
            self._set(key, _ZERO)

    def add(self, key: str, amount: float, now: float, cap: float) -> float:
        self._ensure(key)
        value = min(cap, max(0.0, self._value(self._level[key], now) + amount))
        self._set(key, self._level_of(value, now))
        return value

    def set_next(self, key: str, at: float) -> None:
        self._ensure(key)
        self._next[key] = max(self._next.get(key, -math.inf), at)


class AuthThrottle:
    """Delays AUTH attempts by the failures on the books for the client's network and for
    the login, plus a global delay once failures everywhere pass a free allowance.

    Attempts on one network or one login are taken one at a time: an attempt counts as a
    failure from the moment it is admitted (it is taken back if the password was right), and
    the next one waits its turn, so parallel guesses from one address are no faster than
    sequential ones.
    """

    def __init__(self, settings: ThrottleSettings) -> None:
        self.settings = settings
        self._prefixes = _Table(settings.capacity, settings.half_life_s)
        self._logins = _Table(settings.capacity, settings.half_life_s)
        self._global = _Table(1, settings.half_life_s)

    def reconfigure(self, settings: ThrottleSettings) -> None:
        """New delays apply to the next attempt; scores on the books are kept."""
        self.settings = settings

    def _delay(self, score: float) -> float:
        return min(self.settings.step_s * score, self.settings.max_s)

    def _cap(self) -> float:
        # A score above what gives the longest delay only makes the attacker's memory last
        # longer; twice that keeps one half-life of the longest delay after an attack ends.
        s = self.settings
        return 2.0 * s.max_s / s.step_s + 1.0 if s.step_s > 0 else 1.0

    def keys(self, ip: str, login: str) -> tuple[str, str]:
        return prefix_key(ip, self.settings.v4_bits, self.settings.v6_bits), login

    def reserve(self, ip: str, login: str, now: float) -> Reservation:
        s = self.settings
        prefix, user = self.keys(ip, login)
        start = now
        for table, key in ((self._prefixes, prefix), (self._logins, user)):
            start = max(start, now + self._delay(table.score(key, now)), table.next_at(key))
        over = self._global.score("", now) - s.global_free
        if over > 0:
            start = max(start, now + self._delay(over))
        if start - now > s.max_s:
            # More attempts are already waiting for this network or login than the longest
            # delay covers: a temporary failure costs us nothing and tells the client to wait.
            return Reservation(start, True, (prefix, user))
        cap = self._cap()
        for table, key in ((self._prefixes, prefix), (self._logins, user)):
            score = table.add(key, 1.0, now, cap)
            table.set_next(key, start + self._delay(score))
        self._global.add("", 1.0, now, s.global_free + cap)
        return Reservation(start, False, (prefix, user))

    def succeeded(self, reservation: Reservation, now: float) -> None:
        """The password was right: take back the failure counted when the attempt began.
        Earlier failures stay on the books: a library's success must not wipe out the record
        of someone else guessing from the same network or at the same login."""
        cap = self._cap()
        prefix, user = reservation.keys
        self._prefixes.add(prefix, -1.0, now, cap)
        self._logins.add(user, -1.0, now, cap)
        self._global.add("", -1.0, now, self.settings.global_free + cap)

    def delay_for(self, ip: str, login: str, now: float) -> float:
        """The delay a new attempt would get now (for tests and the status page)."""
        prefix, user = self.keys(ip, login)
        return max(
            self._delay(self._prefixes.score(prefix, now)),
            self._delay(self._logins.score(user, now)),
        )

    def sizes(self) -> tuple[int, int]:
        return len(self._prefixes), len(self._logins)
