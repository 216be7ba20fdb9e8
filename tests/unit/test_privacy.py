"""The free-text masker every log line and default CLI output goes through."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given, settings
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


def _mask_text_reference(text: str) -> str:
    """mask_text without its shortcuts: every candidate through every check."""
    from bridge.privacy import _CANDIDATE, _ID_FIELD, _mask_one, _split

    if not text or not any(c.isdigit() for c in text):
        return text
    out: list[str] = []
    last = 0
    for match in _CANDIDATE.finditer(text):
        start, end = match.span()
        if end < len(text) and (text[end].isalpha() or text[end] == "_"):
            continue
        if _ID_FIELD.search(text, max(0, start - 40), start):
            continue
        out.append(text[last:start])
        out.append(" ".join(_mask_one(piece) for piece in _split(match.group())))
        last = end
    out.append(text[last:])
    return "".join(out)


@given(
    st.lists(
        st.sampled_from(
            [
                "0",
                "1",
                "2025550143",
                "5",
                " ",
                "-",
                ".",
                "(",
                ")",
                "+",
                "a",
                "_",
                "id=",
                "ID: ",
                "\u0663",
                "\u00b2",
                "\u0661\u0662\u0663\u0664\u0665\u0666\u0667",
                "550 5.7.1 ",
            ]
        ),
        max_size=14,
    ).map("".join)
)
@settings(max_examples=500, deadline=None)
def test_mask_text_shortcuts_change_nothing(text: str) -> None:
    assert mask_text(text) == _mask_text_reference(text)


def test_accepted_line_is_masked_as_before() -> None:
    line = (
        "accepted queue_id=0193a1b2c3d4e5f6a7 tenant=riverside via=smtp to=+1********43"
        " message_id=<bench-12345@riverside.example.org> chars=126 rcpt=12025550143@x.org"
    )
    assert mask_text(line) == line.replace("12025550143@", "*********43@")
    assert mask_text(line) == _mask_text_reference(line)
