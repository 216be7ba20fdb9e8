"""The free-text masker every log line and default CLI output goes through."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.privacy import MaskingFilter, mask_text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "smtp rcpt refused tenant=riverside reply=550 5.7.1 +1 202-555-0144 opted out of"
            " text messages from this library on 2026-11-23 (replied STOP)",
            "smtp rcpt refused tenant=riverside reply=550 5.7.1 +1********44 opted out of"
            " text messages from this library on 2026-11-23 (replied STOP)",
        ),
        (
            "reply=553 5.1.3 8002255288 is a toll-free number, which cannot receive texts",
            "reply=553 5.1.3 ********88 is a toll-free number, which cannot receive texts",
        ),
        ("to 2025550144 now", "to ********44 now"),
        ("call (202) 555-0144.", "call ********44."),
        ("rcpt 12025550144@sms.example.org", "rcpt *********44@sms.example.org"),
        ("+12025550144", "+1********44"),
        ("+44 20 7946 0958", "+44********58"),
        ("202.555.0144", "********44"),
        ("2025550143 2025550144", "********43 ********44"),
        ("from=+12025550143,to=12025550100", "from=+1********43,to=*********00"),
    ],
)
def test_numbers_are_masked_in_any_formatting(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "queue_id=19d1234567890 smsc_id=9876543210 message_id: 1234567",
        "peer=192.168.100.200 took 0.1234567 s at 2026-11-23 21:00:00",
        "250 2.0.0 OK queued as 1a233c1198aaebe697d",
        "hex id 5f2a9c1234567890ab, size 1048576b",
        "smtp listening on 127.0.0.1:2525",
    ],
)
def test_ids_dates_addresses_stay_readable(text: str) -> None:
    assert mask_text(text) == text


@given(
    st.sampled_from(["+1 202-555-01{}", "(202) 555-01{}", "202 555 01{}", "1202555-01{}@x.org"]),
    st.integers(10, 99),
    st.text(alphabet=" ,;:=<>[]\"'", max_size=3),
)
def test_no_national_number_survives(template: str, last: int, around: str) -> None:
    text = f"to{around} {template.format(last)}{around} ok"
    digits = re.sub(r"\D", "", mask_text(text))
    assert f"20255501{last}" not in digits


def test_filter_masks_message_arguments_and_exceptions() -> None:
    try:
        raise ValueError("bad number 2025550143")
    except ValueError as exc:
        record = logging.LogRecord(
            "bridge.x", logging.ERROR, __file__, 1, "to=%s: %s", ("+12025550143", exc), None
        )
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert MaskingFilter().filter(record)
    line = logging.Formatter().format(record)
    assert "2025550143" not in line and "+1********43" in line


def test_filter_leaves_debug_whole() -> None:
    record = logging.LogRecord(
        "bridge.x", logging.DEBUG, __file__, 1, "to=%s", ("+12025550143",), None
    )
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "to=+12025550143"
