"""The SMTP guard's bookkeeping: connection slots, timeouts, the AUTH throttle, dummy hashes."""

from __future__ import annotations

import base64
from typing import Any, cast

import pytest
from aiosmtpd.smtp import LoginPassword

from bridge.intake import Intake
from bridge.passwords import _verify, dummy_hash_like, hash_password
from bridge.smtp_guard import (
    REFUSE_ADDRESS,
    REFUSE_OUTSIDE,
    REFUSE_TOTAL,
    AuthThrottle,
    ConnectionSlots,
    SlotLimits,
    ThrottleSettings,
    Timeouts,
    client_key,
    idle_timeout,
    prefix_key,
)
from bridge.smtp_intake import SmtpIntake
from bridge.store import Store
from tests.conftest import MakeConfig, tenant

LIMITS = SlotLimits(max_connections=10, per_address=3, outside_networks=4, stress_fraction=0.75)


def settings(**over: Any) -> ThrottleSettings:
    base: dict[str, Any] = {
        "step_s": 1.0,
        "max_s": 30.0,
        "half_life_s": 900.0,
        "global_free": 100.0,
        "capacity": 64,
    }
    return ThrottleSettings(**{**base, **over})


# --- addresses ------------------------------------------------------------------------------------


def test_keys_group_ipv6_by_64_and_unmap_ipv4() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert prefix_key("192.0.2.7", 24, 64) == "192.0.2.0/24"
    assert prefix_key("2001:db8:1:2::1", 24, 64) == "2001:db8:1:2::/64"
    assert prefix_key("::ffff:192.0.2.7", 24, 64) == "192.0.2.0/24"
    assert prefix_key("not an address", 24, 64) == "not an address"


# --- connections ----------------------------------------------------------------------------------


def test_per_address_cap() -> None:
    slots = ConnectionSlots()
    assert [slots.admit("192.0.2.1", True, LIMITS) for _ in range(4)] == [None] * 3 + [
        REFUSE_ADDRESS
    ]
    assert slots.admit("192.0.2.2", True, LIMITS) is None
    slots.release("192.0.2.1", outside=False)
    assert slots.admit("192.0.2.1", True, LIMITS) is None


def test_strangers_get_only_their_share_and_libraries_the_rest() -> None:
    slots = ConnectionSlots()
    strangers = [slots.admit(f"198.51.100.{i}", False, LIMITS) for i in range(10)]
    assert strangers.count(None) == 4 and set(strangers[4:]) == {REFUSE_OUTSIDE}
    assert [slots.admit(f"192.0.2.{i}", True, LIMITS) for i in range(6)] == [None] * 6
    assert slots.admit("192.0.2.99", True, LIMITS) is REFUSE_TOTAL
    # a stranger that logs in leaves the strangers' share
    slots.promote()
    assert slots.admit("198.51.100.50", False, LIMITS) is REFUSE_TOTAL  # the total still counts
    slots.release("192.0.2.0", outside=False)
    assert slots.admit("198.51.100.50", False, LIMITS) is None


def test_stress_and_timeouts() -> None:
    t = Timeouts(in_transaction_s=300, before_mail_s=30, stress_s=10)
    slots = ConnectionSlots()
    assert not slots.under_stress(LIMITS)
    assert idle_timeout(False, slots.under_stress(LIMITS), t) == 30
    for i in range(4):
        slots.admit(f"198.51.100.{i}", False, LIMITS)
    assert slots.under_stress(LIMITS)  # the strangers' share is full
    assert idle_timeout(False, True, t) == 10
    assert idle_timeout(True, True, t) == 300  # a transaction under way is not cut short
    slots = ConnectionSlots()
    for i in range(8):
        slots.admit(f"192.0.2.{i}", True, LIMITS)
    assert slots.under_stress(LIMITS)  # 8 of 10 slots in use
    no_strangers = SlotLimits(10, 3, 0, 0.75)
    assert not ConnectionSlots().under_stress(no_strangers)


# --- AUTH throttle --------------------------------------------------------------------------------


def test_sequential_failures_grow_the_delay() -> None:
    th = AuthThrottle(settings())
    now = 1000.0
    starts = []
    for _ in range(4):
        turn = th.reserve("198.51.100.7", "koha", now)
        starts.append(turn.start - now)
        now = turn.start + 0.1  # the check took 0.1 s and failed; the client asks again
    assert starts == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.01)


def test_parallel_attempts_take_turns() -> None:
    th = AuthThrottle(settings())
    turns = [th.reserve("198.51.100.7", "koha", 1000.0) for _ in range(6)]
    assert [t.start - 1000.0 for t in turns] == [0.0, 1.0, 3.0, 6.0, 10.0, 15.0]
    assert not any(t.refused for t in turns)


def test_attempts_beyond_the_longest_delay_are_refused_without_counting() -> None:
    th = AuthThrottle(settings(max_s=5.0))
    turns = [th.reserve("198.51.100.7", "koha", 1000.0) for _ in range(8)]
    # turns at 0, 1 and 3 s; the next would be at 6 s, past the longest delay
    assert [t.refused for t in turns] == [False] * 3 + [True] * 5
    assert th.delay_for("198.51.100.7", "koha", 1000.0) == pytest.approx(3.0)  # none added


def test_success_takes_back_only_its_own_attempt() -> None:
    th = AuthThrottle(settings())
    for _ in range(3):
        th.reserve("198.51.100.7", "koha", 1000.0)
    turn = th.reserve("198.51.100.8", "koha", 1000.0)
    th.succeeded(turn, 1000.0)
    assert th.delay_for("198.51.100.9", "koha", 1000.0) == pytest.approx(3.0)


def test_changing_address_or_network_keeps_the_delay() -> None:
    th = AuthThrottle(settings())
    for _ in range(5):
        th.reserve("198.51.100.7", "koha", 1000.0)
    assert th.delay_for("198.51.100.200", "koha", 5000.0) > 0  # same /24, later
    # another network: the login's count; another login: the network's
    assert th.delay_for("203.0.113.9", "koha", 1000.0) == pytest.approx(5.0)
    assert th.delay_for("198.51.100.200", "other", 1000.0) == pytest.approx(5.0)


def test_address_churn_cannot_flush_the_tables() -> None:
    """A delay on the books survives 10,400 other networks and logins failing through tables
    of 64 entries (the old table was cleared at 10,000 addresses)."""
    th = AuthThrottle(settings(capacity=64, global_free=1e9))
    for _ in range(10):
        th.reserve("198.51.100.7", "koha", 1000.0)
    before = th.delay_for("198.51.100.7", "koha", 1000.0)
    for i in range(10_400):
        th.reserve(f"10.{i // 256}.{i % 256}.1", f"user{i}", 1000.0)
    assert th.sizes() == (64, 64)
    assert th.delay_for("198.51.100.7", "koha", 1000.0) >= before
    # and a newcomer starts at the floor the churn raised, not at zero
    assert th.delay_for("203.0.113.1", "new", 1000.0) > 0


def test_global_budget_slows_everyone_after_a_spread_attack() -> None:
    th = AuthThrottle(settings(global_free=20))
    for i in range(25):
        th.reserve(f"10.{i}.0.1", f"user{i}", 1000.0)
    turn = th.reserve("203.0.113.1", "fresh", 1000.0)
    assert turn.start - 1000.0 == pytest.approx(5.0)


def test_failures_are_forgotten_gradually() -> None:
    th = AuthThrottle(settings(half_life_s=100.0))
    for _ in range(8):
        th.reserve("198.51.100.7", "koha", 0.0)
    assert th.delay_for("198.51.100.7", "koha", 0.0) == pytest.approx(8.0)
    assert th.delay_for("198.51.100.7", "koha", 100.0) == pytest.approx(4.0)
    assert th.delay_for("198.51.100.7", "koha", 1000.0) < 0.01


def test_zero_step_means_no_delay() -> None:
    th = AuthThrottle(settings(step_s=0.0))
    turns = [th.reserve("198.51.100.7", "koha", 0.0) for _ in range(5)]
    assert {t.start for t in turns} == {0.0}


# --- unknown logins -------------------------------------------------------------------------------


def test_dummy_hash_costs_the_same_and_matches_nothing() -> None:
    real = hash_password("pw")
    dummy = dummy_hash_like(real)
    assert dummy.split("$")[:4] == real.split("$")[:4]  # scheme, N, r, p
    assert len(base64.b64decode(dummy.split("$")[5])) == len(base64.b64decode(real.split("$")[5]))
    assert not _verify(b"pw", dummy) and not _verify(b"", dummy)
    assert dummy_hash_like(None).split("$")[:4] == real.split("$")[:4]


async def test_unknown_login_is_checked_against_the_dummy_hash(make_config: MakeConfig) -> None:
    real = hash_password("pw")
    cfg = make_config(
        {"smtp": {"auth_failure_delay_step_s": 0}, "tenants": [tenant(users={"koha": real})]}
    )
    smtp = SmtpIntake(cfg, Intake(cfg, cast(Store, None)))
    checked: list[str] = []

    async def check(password: bytes, hashed: str) -> bool:
        checked.append(hashed)
        return False

    smtp.verifier.check = check  # type: ignore[method-assign]
    try:
        for login in (b"koha", b"nobody"):
            result = await smtp.handler.check_login("127.0.0.1", LoginPassword(login, b"x"))
            assert not result.success and not result.handled  # aiosmtpd answers 535
    finally:
        smtp.verifier.close()
    assert checked == [real, smtp.dummy_hash]
    assert smtp.dummy_hash.split("$")[:4] == real.split("$")[:4]
