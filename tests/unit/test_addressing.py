"""Unit tests for bridge.addressing (pure: no sockets, no clock)."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.addressing import (
    AddressError,
    _canonical,
    canonical_address,
    clear_number_cache,
    e164_to_local_part,
    format_msisdn,
    local_part_to_e164,
    mask_msisdn,
    sender_matches,
    split_address,
)


@pytest.mark.parametrize(
    ("local_part", "region", "expected"),
    [
        ("2025550143", "US", "+12025550143"),
        ("12025550143", "US", "+12025550143"),  # NANP trunk prefix
        ("+12025550143", "US", "+12025550143"),
        ("202.555.0143", "US", "+12025550143"),
        ("202-555-0143", "US", "+12025550143"),
        ("(202)555-0143", "US", "+12025550143"),
        ("1-202-555-0167", "US", "+12025550167"),
        ("+447400123456", "US", "+447400123456"),  # UK mobile, explicit country code
        ("447400123456", "US", "+447400123456"),  # a reply address for a UK patron
        ("011447400123456", "US", "+447400123456"),  # US international dialling prefix
        ("07400123456", "GB", "+447400123456"),  # UK national format in region GB
        ("+4915112345678", "US", "+4915112345678"),  # German mobile
    ],
)
def test_local_part_to_e164_accepts(local_part: str, region: str, expected: str) -> None:
    assert local_part_to_e164(local_part, region) == expected


@pytest.mark.parametrize(
    ("local_part", "reason"),
    [
        ("1-800-FLOWERS", "1-800-FLOWERS contains letters; use only digits, e.g. 2015550123"),
        ("2025550abc", "2025550abc contains letters; use only digits, e.g. 2015550123"),
        (
            "2025550",
            "2025550 is not a valid phone number for region US; use the full number, "
            "e.g. 2015550123",
        ),
        (
            "5551234567",
            "5551234567 is not a valid phone number for region US; use the full number, "
            "e.g. 2015550123",
        ),
        ("8002255288", "8002255288 is a toll-free number, which cannot receive text messages"),
        (
            "18002255288",
            "18002255288 is a toll-free number, which cannot receive text messages",
        ),
        (
            "+19005550123",
            "+19005550123 is a premium-rate number, which cannot receive text messages",
        ),
        (
            "442079460000",
            "442079460000 is a fixed-line (landline) number, which cannot receive text messages",
        ),
        (
            "+442079460000",
            "+442079460000 is a fixed-line (landline) number, which cannot receive text messages",
        ),
        ("+445612345678", "+445612345678 is a VoIP number, which cannot receive text messages"),
        ("+447640123456", "+447640123456 is a pager number, which cannot receive text messages"),
        (
            "+443001234567",
            "+443001234567 is a universal access (company) number, which cannot receive text "
            "messages",
        ),
        (
            "+447011234567",
            "+447011234567 is a personal (forwarding) number, which cannot receive text messages",
        ),
        (
            "+999123456789",
            "+999123456789 does not start with a valid country code; use the full number, "
            "e.g. 2015550123",
        ),
        ("", "the recipient has no phone number before the @"),
        (
            "+",
            "+ is not a phone number; use only digits, an optional leading +, and - . ( ) as "
            "separators",
        ),
        (
            "202+5550143",
            "202+5550143 is not a phone number; use only digits, an optional leading +, and "
            "- . ( ) as separators",
        ),
        (
            "202_555_0143",
            "202_555_0143 is not a phone number; use only digits, an optional leading +, and "
            "- . ( ) as separators",
        ),
        ("1" * 25, "1111111111111111111111111 has too many digits for a phone number"),
    ],
)
def test_local_part_to_e164_rejects_with_reason(local_part: str, reason: str) -> None:
    with pytest.raises(AddressError) as caught:
        local_part_to_e164(local_part, "US")
    assert caught.value.reason == reason
    assert str(caught.value) == reason


def test_reason_never_echoes_non_ascii_or_line_breaks() -> None:
    with pytest.raises(AddressError) as caught:
        local_part_to_e164("202\r\n555\u2013" + "9" * 80, "US")
    reason = caught.value.reason
    assert reason.startswith("202??555?" + "9" * 52 + "... is not a phone number; ")
    assert all(" " <= ch <= "~" for ch in reason)


def test_unknown_region_is_a_configuration_error_not_an_address_error() -> None:
    with pytest.raises(ValueError, match="unknown phone number region 'XX'") as caught:
        local_part_to_e164("2025550143", "XX")
    assert not isinstance(caught.value, AddressError)
    # Not remembered as an answer either: asked again, it is the same configuration error.
    with pytest.raises(ValueError, match="unknown phone number region 'XX'") as again:
        local_part_to_e164("2025550143", "XX")
    assert not isinstance(again.value, AddressError)


def test_readings_are_kept_per_local_part_and_region() -> None:
    clear_number_cache()
    # The same local part means a different number in another region.
    assert local_part_to_e164("07400123456", "GB") == "+447400123456"
    with pytest.raises(AddressError):
        local_part_to_e164("07400123456", "US")
    assert local_part_to_e164("07400123456", "GB") == "+447400123456"
    # A refusal read a second time (from the kept answer) carries the same reason.
    reasons = []
    for _ in range(2):
        with pytest.raises(AddressError) as caught:
            local_part_to_e164("12345", "US")
        reasons.append(caught.value.reason)
    assert reasons[0] == reasons[1]
    assert reasons[0].startswith("12345 is too short to be a phone number for region US")
    clear_number_cache()
    assert local_part_to_e164("2025550143", "US") == "+12025550143"


def test_canonical_readings_are_kept_per_value_region_and_ton() -> None:
    clear_number_cache()
    # The TON decides between two valid readings: kept apart, in either order.
    for _ in range(2):
        assert canonical_address("2015550100", "US", ton=1).value == "+2015550100"  # Egypt
        assert canonical_address("2015550100", "US", ton=2).value == "+12015550100"
        assert canonical_address("2015550100", "US").value == "+12015550100"
        assert canonical_address("07400123456", "GB").value == "+447400123456"
        assert canonical_address("07400123456", "US").kind == "other"
    # An unknown region stays a configuration error, asked again too.
    for _ in range(2):
        with pytest.raises(ValueError, match="unknown phone number region 'XX'"):
            canonical_address("2025550143", "XX")


@given(
    st.text(alphabet="0123456789+ -()", max_size=18),
    st.sampled_from(["US", "GB", "DE", "FR"]),
    st.sampled_from([None, 0, 1, 2, 5]),
)
@settings(max_examples=300, deadline=None)
def test_a_kept_reading_is_the_reading(raw: str, region: str, ton: int | None) -> None:
    first = canonical_address(raw, region, ton=ton)
    assert first == _canonical(raw, region, ton)[0]
    assert canonical_address(raw, region, ton=ton) == first


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_local_part_to_e164_only_returns_e164_or_raises_address_error(local_part: str) -> None:
    try:
        result = local_part_to_e164(local_part, "US")
    except AddressError as exc:
        assert exc.reason
        assert all(" " <= ch <= "~" for ch in exc.reason)
    else:
        assert result.startswith("+")
        assert result[1:].isdigit()


@pytest.mark.parametrize(
    ("e164", "masked"),
    [
        ("+12025550143", "+1********43"),
        ("+447400123456", "+44********56"),
        ("+4915112345678", "+49*********78"),
        ("+35312345678", "+353******78"),  # three-digit calling code
        ("+999123456", "*******56"),  # 999 is no calling code: nothing before the tail
        ("12025550143", "*********43"),  # no '+': no country code is assumed
        ("garbage", ""),
        ("+1234", "+1***"),  # too short to show anything
        ("", ""),
    ],
)
def test_mask_msisdn(e164: str, masked: str) -> None:
    assert mask_msisdn(e164) == masked


@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
@settings(max_examples=200, deadline=None)
def test_mask_msisdn_reveals_at_most_the_last_two_digits(e164: str) -> None:
    masked = mask_msisdn(e164)
    assert len(masked) <= len(e164)
    head, _, tail = masked.partition("*")
    tail = tail.strip("*")
    # Visible: a country code (1-3 digits, a prefix of the input) and the last two digits.
    assert e164.startswith(head)
    assert len(head) <= 4
    assert tail in ("", e164[-2:])
    country_digits = max(len(head) - 1, 0)
    assert masked.count("*") >= len(e164) - 1 - country_digits - 2


@pytest.mark.parametrize(
    ("e164", "formatted"),
    [
        ("+12025550143", "+1 202-555-0143"),
        ("+447400123456", "+44 7400 123456"),
        ("not a number", "not a number"),
    ],
)
def test_format_msisdn(e164: str, formatted: str) -> None:
    assert format_msisdn(e164) == formatted


def test_e164_to_local_part() -> None:
    assert e164_to_local_part("+12025550143") == "12025550143"
    assert e164_to_local_part("+447400123456") == "447400123456"


@pytest.mark.parametrize("bad", ["12025550143", "+0123", "+1", "+1202555014312345", ""])
def test_e164_to_local_part_rejects_non_e164(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not an E\.164 number"):
        e164_to_local_part(bad)


@pytest.mark.parametrize("e164", ["+12025550143", "+447400123456", "+4915112345678"])
def test_reply_local_part_round_trips(e164: str) -> None:
    assert local_part_to_e164(e164_to_local_part(e164), "US") == e164


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("2025550143@SMS.Example.org", ("2025550143", "sms.example.org")),
        ("<2025550143@sms.example.org>", ("2025550143", "sms.example.org")),
        ("  Staff.Name@Lib.Example.ORG. ", ("Staff.Name", "lib.example.org")),
    ],
)
def test_split_address(addr: str, expected: tuple[str, str]) -> None:
    assert split_address(addr) == expected


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("2025550143", "2025550143 is not an address of the form user@domain"),
        ("a@b@c.org", "a@b@c.org is not an address of the form user@domain"),
        ("@sms.example.org", "@sms.example.org: source-routed addresses are not accepted; "
         "use user@domain"),
        ("2025550143@", "2025550143@ is not an address of the form user@domain"),
        (
            "@relay.example,@other.example:2025550143@sms.example.org",
            "@relay.example,@other.example:2025550143@sms.example.org: source-routed "
            "addresses are not accepted; use user@domain",
        ),
        (
            "2025550143%victim.example@sms.example.org",
            "2025550143%victim.example@sms.example.org: '%' relay addresses are not accepted; "
            "use user@domain",
        ),
        (
            '"2025550143"@sms.example.org',
            '"2025550143"@sms.example.org: quoted local parts are not accepted; use '
            "digits@domain",
        ),
        (
            "victim.example!2025550143@sms.example.org",
            "victim.example!2025550143@sms.example.org: '!' bang-path addresses are not "
            "accepted; use user@domain",
        ),
        (
            "2025 550143@sms.example.org",
            "2025 550143@sms.example.org contains spaces or angle brackets; use user@domain",
        ),
    ],
)  # fmt: skip
def test_split_address_refuses_relay_tricks(addr: str, reason: str) -> None:
    with pytest.raises(AddressError) as caught:
        split_address(addr)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("pattern", "sender", "expected"),
    [
        ("*@lib.example.org", "noreply@lib.example.org", True),
        ("*@lib.example.org", "NoReply@LIB.Example.Org", True),
        ("*@lib.example.org", "noreply@evil.example.org", False),
        ("*@lib.example.org", "noreply@lib.example.org.evil.test", False),
        ("*@lib.example.org", "x@evil.test@lib.example.org", False),  # '*' never spans '@'
        ("noreply@lib.example.org", "noreply@lib.example.org", True),
        ("noreply@lib.example.org", "other@lib.example.org", False),
        ("*@*.example.org", "circ@mail.lib.example.org", True),
        ("*@*.example.org", "circ@example.org", False),
        ("*@*.example.org", "circ@example.org.evil.test", False),
        ("circ?@lib.example.org", "circ1@lib.example.org", False),  # '?' is literal
        ("circ?@lib.example.org", "circ?@lib.example.org", True),
        ("[abc]@lib.example.org", "a@lib.example.org", False),  # no classes
        ("[abc]@lib.example.org", "[abc]@lib.example.org", True),
        ("*@lib.example.org", "<noreply@lib.example.org>", True),
        ("*", "anyone@anywhere.example", True),
        ("*", "", True),
        ("*@*", "", False),  # the null sender has no '@'
    ],
)
def test_sender_matches(pattern: str, sender: str, expected: bool) -> None:
    assert sender_matches(pattern, sender) is expected


def _both_readings(digits: str, region: str) -> str | None:
    """canonical_address's rule for national-form digits, written out with both readings
    always made (the function itself skips the "+<digits>" one when it cannot win)."""

    def valid(text: str, reg: str | None) -> phonenumbers.PhoneNumber | None:
        try:
            number = phonenumbers.parse(text, reg)
        except phonenumbers.NumberParseException:
            return None
        return number if phonenumbers.is_valid_number(number) else None

    def e164(n: phonenumbers.PhoneNumber) -> str:
        return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)

    national = valid(digits, region)
    international = valid("+" + digits, None) if digits[:1] not in ("", "0") else None
    if national and international and e164(national) != e164(international):
        home = phonenumbers.country_code_for_region(region)
        return e164(international if international.country_code == home else national)
    if national or international:
        return e164(national or international)  # type: ignore[arg-type]
    return None


@settings(max_examples=400)
@given(
    st.text(alphabet="0123456789", min_size=3, max_size=15),
    st.sampled_from(["US", "GB", "DE", "FR", "EG", "IN", "BR", "AU"]),
)
def test_national_digits_read_as_with_both_readings(digits: str, region: str) -> None:
    want = _both_readings(digits, region)
    got = canonical_address(digits, region)
    if want is not None:
        assert (got.kind, got.value) == ("e164", want)
    else:  # neither reading is a number: only the reading after an IDD prefix is left
        assert not got.is_e164 or digits.startswith(("00", "011"))


@pytest.mark.parametrize(
    ("digits", "region"),
    [("2015550100", "US"), ("4915123456789", "DE"), ("12025550143", "US"), ("447400123456", "GB")],
)
def test_national_digits_examples(digits: str, region: str) -> None:
    assert canonical_address(digits, region).value == _both_readings(digits, region)
