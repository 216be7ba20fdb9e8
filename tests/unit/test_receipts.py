"""Tests for bridge.smpp.receipts: detection, tolerant text parsing, TLVs, id variants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.receipts import (
    FINAL_FAILED,
    FINAL_OK,
    Receipt,
    id_variants,
    is_receipt,
    is_sme_acknowledgement,
    parse_receipt,
    parse_receipt_text,
)

STANDARD = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2611231200 done date:2611231201 "
    "stat:DELIVRD err:000 Text:Riverside Public Library: Jane"
)


def test_is_receipt_by_message_type_bits() -> None:
    assert is_receipt(0x04) is True
    assert is_receipt(0x44) is True  # UDHI set does not change the type
    assert is_receipt(0x07) is True  # messaging-mode bits ignored
    assert is_receipt(0x20) is True  # intermediate delivery notification
    assert is_receipt(0x00) is False
    assert is_receipt(0x08) is False  # SME delivery acknowledgement
    assert is_receipt(0x10) is False
    assert is_receipt(0x40) is False
    assert is_receipt(0x0C) is False  # reserved


def test_is_sme_acknowledgement() -> None:
    assert is_sme_acknowledgement(0x08) is True
    assert is_sme_acknowledgement(0x10) is True
    assert is_sme_acknowledgement(0x04) is False
    assert is_sme_acknowledgement(0x00) is False


def test_final_sets() -> None:
    assert frozenset({"expired", "deleted", "undeliverable", "rejected"}) == FINAL_FAILED
    assert frozenset({"delivered"}) == FINAL_OK
    assert not {"enroute", "accepted", "unknown"} & (FINAL_FAILED | FINAL_OK)


def test_parse_standard_text() -> None:
    assert parse_receipt_text(STANDARD) == {
        "id": "0123456789",
        "sub": "001",
        "dlvrd": "001",
        "submit date": "2611231200",
        "done date": "2611231201",
        "stat": "DELIVRD",
        "err": "000",
        "text": "Riverside Public Library: Jane",
    }


def test_parse_lowercase_reordered_12_digit_dates_extra_fields() -> None:
    text = (
        "stat:undeliv ID:ab12CD err:034 smsc:carrierX submit_date:261123120059 "
        "DONE DATE:261123120130 dlvrd:000"
    )
    fields = parse_receipt_text(text)
    assert fields == {
        "stat": "undeliv",
        "id": "ab12CD",
        "err": "034",
        "submit date": "261123120059",
        "done date": "261123120130",
        "dlvrd": "000",
    }


def test_parse_missing_err_and_text() -> None:
    fields = parse_receipt_text("id:77 sub:001 dlvrd:001 submit date:2611231200 stat:EXPIRED")
    assert fields == {
        "id": "77",
        "sub": "001",
        "dlvrd": "001",
        "submit date": "2611231200",
        "stat": "EXPIRED",
    }


def test_parse_empty_values_do_not_swallow_next_key() -> None:
    fields = parse_receipt_text("id:9 err: stat:DELIVRD text:")
    assert fields == {"id": "9", "err": "", "stat": "DELIVRD", "text": ""}


def test_text_field_may_contain_key_like_words() -> None:
    fields = parse_receipt_text("id:5 stat:DELIVRD err:000 text:your id: stat:123 is ready")
    assert fields["id"] == "5"
    assert fields["stat"] == "DELIVRD"
    assert fields["text"] == "your id: stat:123 is ready"


def test_parse_garbage_gives_empty_dict() -> None:
    assert parse_receipt_text("Thanks, see you Saturday!") == {}
    assert parse_receipt_text("") == {}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_text_never_raises(text: str) -> None:
    fields = parse_receipt_text(text)
    assert set(fields) <= {
        "id",
        "sub",
        "dlvrd",
        "submit date",
        "done date",
        "stat",
        "err",
        "text",
    }


def test_receipt_from_text_only() -> None:
    assert parse_receipt(STANDARD, None, None) == Receipt(
        message_id="0123456789",
        state="delivered",
        error=None,
        submit_date="2611231200",
        done_date="2611231201",
        raw_stat="DELIVRD",
    )


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        ("DELIVRD", "delivered"),
        ("delivrd", "delivered"),
        ("EXPIRED", "expired"),
        ("DELETED", "deleted"),
        ("UNDELIV", "undeliverable"),
        ("ACCEPTD", "accepted"),
        ("UNKNOWN", "unknown"),
        ("REJECTD", "rejected"),
        ("ENROUTE", "enroute"),
        ("Failed", "undeliverable"),
        ("WHATEVER", "unknown"),
    ],
)
def test_stat_words(stat: str, state: str) -> None:
    r = parse_receipt(f"id:1 stat:{stat} err:000", None, None)
    assert r is not None
    assert r.state == state
    assert r.raw_stat == stat


def test_text_error_field_kept_when_nonzero() -> None:
    r = parse_receipt("id:42 stat:UNDELIV err:034", None, None)
    assert r is not None
    assert (r.state, r.error) == ("undeliverable", "034")


def test_tlv_only_receipt() -> None:
    r = parse_receipt("", "8f3a9c", 5, b"\x03\x00\x22")
    assert r == Receipt(
        message_id="8f3a9c",
        state="undeliverable",
        error="GSM error 34",
        submit_date=None,
        done_date=None,
        raw_stat=None,
    )


def test_tlvs_win_over_text() -> None:
    text = "id:111 stat:ENROUTE err:000 submit date:2611231200"
    r = parse_receipt(text, "222\x00", 2)
    assert r is not None
    assert r.message_id == "222"
    assert r.state == "delivered"
    assert r.raw_stat == "ENROUTE"
    assert r.submit_date == "2611231200"


@pytest.mark.parametrize(
    ("state_value", "state"),
    [
        (1, "enroute"),
        (2, "delivered"),
        (3, "expired"),
        (4, "deleted"),
        (5, "undeliverable"),
        (6, "accepted"),
        (7, "unknown"),
        (8, "rejected"),
        (9, "skipped"),
    ],
)
def test_message_state_values(state_value: int, state: str) -> None:
    r = parse_receipt("", "x", state_value)
    assert r is not None
    assert r.state == state


def test_unknown_message_state_falls_back_to_text() -> None:
    r = parse_receipt("id:1 stat:REJECTD", None, 0)
    assert r is not None
    assert r.state == "rejected"
    r2 = parse_receipt("", "1", 42)
    assert r2 is not None
    assert r2.state == "unknown"


def test_network_error_code_variants() -> None:
    r = parse_receipt("id:1 stat:UNDELIV err:001", None, None, b"\x03\x00\x00")
    assert r is not None
    assert r.error == "001"  # zero network code means no error: fall back to err:
    r2 = parse_receipt("id:1 stat:UNDELIV", None, None, b"\x08\x01\x00")
    assert r2 is not None
    assert r2.error == "SMSC error 256"
    r3 = parse_receipt("id:1 stat:UNDELIV", None, None, b"\x01\x02")
    assert r3 is not None
    assert r3.error == "0102"


def test_no_id_gives_none() -> None:
    assert parse_receipt("stat:DELIVRD err:000", None, 2) is None
    assert parse_receipt("stat:DELIVRD", "", None) is None
    assert parse_receipt("Yes, see you then", None, None) is None


def test_id_variants_hex_to_decimal() -> None:
    assert id_variants("DEADBEEF") == ("DEADBEEF", "deadbeef", "3735928559")


def test_id_variants_decimal_to_hex() -> None:
    # Digits only are valid hex too: both conversions are offered.
    assert id_variants("3735928559") == (
        "3735928559",
        "237121996121",
        "deadbeef",
        "DEADBEEF",
    )


def test_id_variants_leading_zeros() -> None:
    assert id_variants("000A1") == ("000A1", "000a1", "a1", "161")
    assert id_variants("0042") == ("0042", "42", "66", "2a", "2A")


def test_id_variants_non_numeric() -> None:
    assert id_variants("msg-ABC-1") == ("msg-ABC-1", "msg-abc-1")
    assert id_variants(" 12\x00") == (" 12\x00", "12", "18", "c", "C")
    assert id_variants("") == ("",)


def test_id_variants_match_across_forms() -> None:
    # submit_sm_resp gave hex, the receipt gives zero-padded decimal: a shared variant exists.
    assert set(id_variants("1A2B3C")) & set(id_variants("0001715004"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_id_variants_properties(message_id: str) -> None:
    v = id_variants(message_id)
    assert v[0] == message_id
    assert len(v) == len(set(v))
    assert v == id_variants(message_id)


def test_join_with_gaps_marks_only_real_gaps() -> None:
    from bridge.inbound import join_with_gaps

    assert join_with_gaps([(1, "I will bring "), (3, " on Saturday.")], 3) == (
        "I will bring [...] on Saturday."
    )
    assert join_with_gaps([(1, "Hello "), (2, "there")], 3) == "Hello there [...]"
    assert join_with_gaps([(2, "the books")], 2) == "[...] the books"
