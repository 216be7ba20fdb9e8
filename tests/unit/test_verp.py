"""The bridge's bounce addresses: encode, then verify with the secret (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import verp

SECRET = b"0123456789abcdef0123456789abcdef"
DOMAINS = ("sms.example.org",)


def test_round_trip() -> None:
    addr = verp.encode(42, SECRET, "sms.example.org")
    assert addr.startswith("bounce+42-") and addr.endswith("@sms.example.org")
    assert len(addr.split("-", 1)[1].split("@")[0]) == verp.TOKEN_HEX
    assert verp.parse(addr, SECRET, DOMAINS) == verp.VerpAddress(42, True)
    # Angle brackets (as RCPT TO gives them) and a case-folding MTA change nothing.
    assert verp.parse(f"<{addr.upper()}>", SECRET, ("SMS.example.org",)) == verp.VerpAddress(
        42, True
    )


def test_token_depends_on_id_and_secret() -> None:
    assert verp.token(1, SECRET) != verp.token(2, SECRET)
    assert verp.token(1, SECRET) != verp.token(1, SECRET + b"x")
    assert verp.token(1, SECRET) == verp.token(1, SECRET)  # stable across restarts


def test_forged_token_is_recognised_as_ours_but_invalid() -> None:
    good = verp.encode(7, SECRET, "sms.example.org")
    # Another email's token, a token made with another key, a guessed token.
    other = verp.token(8, SECRET)
    for forged in (
        f"bounce+7-{other}@sms.example.org",
        verp.encode(7, b"another secret of 32 characters!", "sms.example.org"),
        "bounce+7-0000000000000000@sms.example.org",
        good[: -len("@sms.example.org")] + "0@sms.example.org",  # one digit too many
    ):
        assert verp.parse(forged, SECRET, DOMAINS) == verp.VerpAddress(7, False), forged


@pytest.mark.parametrize(
    "address",
    [
        "12025550143@sms.example.org",  # a patron address: not a bounce address at all
        "bounce@sms.example.org",
        "bounce+x-abc@sms.example.org",
        "bounce+7@sms.example.org",
        "other+7-0123456789abcdef@sms.example.org",
        "no-at-sign",
    ],
)
def test_other_addresses_are_not_bounce_addresses(address: str) -> None:
    assert verp.parse(address, SECRET, DOMAINS) is None


def test_a_bounce_address_on_another_domain_is_not_ours() -> None:
    addr = verp.encode(42, SECRET, "elsewhere.example.com")
    assert verp.parse(addr, SECRET, DOMAINS) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        verp.token(-1, SECRET)
    with pytest.raises(ValueError):
        verp.token(1, b"")


@given(st.integers(min_value=0, max_value=10**18 - 1), st.binary(min_size=1, max_size=64))
def test_every_id_round_trips(mail_id: int, secret: bytes) -> None:
    addr = verp.encode(mail_id, secret, "sms.example.org")
    assert verp.parse(addr, secret, DOMAINS) == verp.VerpAddress(mail_id, True)
