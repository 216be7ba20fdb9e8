"""Tests for bridge.smpp.encoding: alphabet choice, segmentation, UDH, decoding."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp import encoding
from bridge.smpp.encoding import (
    DC_DEFAULT,
    DC_UCS2,
    ESM_UDHI,
    ConcatInfo,
    ConcatMode,
    EncodedSms,
    Part,
    TooManySegments,
    choose_coding,
    concat_from_sar,
    count_units,
    decode_payload,
    encode_sms,
    segment_count,
    split_udh,
)

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXT = "^{}\\[~]|€\f"


def parts_text(enc: EncodedSms) -> str:
    """Decode every part the way a receiving handset would and join them."""
    out = []
    for part in enc.parts:
        info, payload = split_udh(part.short_message, enc.esm_class)
        if len(enc.parts) > 1 and enc.esm_class & ESM_UDHI:
            assert info is not None
        out.append(decode_payload(enc.data_coding, payload))
    return "".join(out)


def air_octets(enc: EncodedSms, part: Part) -> int:
    """Over-the-air TP-UD size: UDH octets + packed septets (gsm7) or raw octets (ucs2)."""
    if enc.esm_class & ESM_UDHI:
        udh_len = part.short_message[0] + 1
    elif part.sar is not None:
        udh_len = 7  # the SMSC adds a 16-bit reference IE at worst
    else:
        udh_len = 0
    body = len(part.short_message) - (udh_len if enc.esm_class & ESM_UDHI else 0)
    if enc.coding == "gsm7":
        udh_septets = math.ceil(udh_len * 8 / 7)
        return math.ceil((udh_septets + body) * 7 / 8)
    return udh_len + body


# ---------------------------------------------------------------- examples


def test_constants() -> None:
    assert (DC_DEFAULT, DC_UCS2, ESM_UDHI) == (0x00, 0x08, 0x40)


def test_plain_ascii_160_is_one_part_without_udh() -> None:
    enc = encode_sms("a" * 160, ref=7)
    assert enc.coding == "gsm7"
    assert enc.data_coding == 0x00
    assert enc.esm_class == 0
    assert enc.parts == (Part(b"a" * 160),)
    assert enc.segments == 1
    assert enc.units == 160
    assert enc.truncated is False
    assert enc.message_payload is None


def test_plain_ascii_161_is_two_parts_153_and_8() -> None:
    enc = encode_sms("a" * 161, ref=0x1234)
    assert enc.esm_class == ESM_UDHI
    assert enc.segments == 2
    first, second = enc.parts
    assert first.short_message == bytes.fromhex("050003340201") + b"a" * 153
    assert second.short_message == bytes.fromhex("050003340202") + b"a" * 8
    assert parts_text(enc) == "a" * 161


def test_udh16_and_sar_layouts() -> None:
    enc = encode_sms("b" * 200, ref=0x1_ABCD, concat="udh16")
    assert [p.short_message[:7] for p in enc.parts] == [
        bytes.fromhex("060804abcd0201"),
        bytes.fromhex("060804abcd0202"),
    ]
    assert len(enc.parts[0].short_message) == 7 + 152

    sar = encode_sms("b" * 200, ref=0x1_ABCD, concat="sar")
    assert sar.esm_class == 0
    assert [p.sar for p in sar.parts] == [(0xABCD, 2, 1), (0xABCD, 2, 2)]
    assert [p.short_message for p in sar.parts] == [b"b" * 152, b"b" * 48]


def test_single_part_has_no_sar_or_udh_in_any_mode() -> None:
    for mode in ("udh8", "udh16", "sar"):
        enc = encode_sms("hello", ref=3, concat=mode)  # type: ignore[arg-type]
        assert enc.parts == (Part(b"hello"),)
        assert enc.esm_class == 0


def test_payload_mode_carries_whole_text() -> None:
    enc = encode_sms("c" * 400, ref=1, concat="payload")
    assert enc.parts == ()
    assert enc.message_payload == b"c" * 400
    assert enc.esm_class == 0
    assert enc.segments == 3  # 153 + 153 + 94, as udh8 would split it
    uni = encode_sms("ж" * 71, ref=1, concat="payload")
    assert uni.message_payload == ("ж" * 71).encode("utf-16-be")
    assert uni.data_coding == DC_UCS2
    assert uni.segments == 2


def test_euro_at_the_boundary_moves_whole_to_next_part() -> None:
    text = "a" * 152 + "€" + "b" * 10  # 152 + 2 + 10 = 164 septets
    enc = encode_sms(text, ref=9)
    assert enc.units == 164
    first, second = enc.parts
    assert first.short_message[6:] == b"a" * 152
    assert second.short_message[6:] == b"\x1b\x65" + b"b" * 10
    assert parts_text(enc) == text


def test_euro_exactly_filling_the_part_stays() -> None:
    text = "a" * 151 + "€" + "b" * 10
    enc = encode_sms(text, ref=9)
    assert enc.parts[0].short_message[6:] == b"a" * 151 + b"\x1b\x65"
    assert enc.parts[1].short_message[6:] == b"b" * 10


def test_extension_characters_cost_two_septets() -> None:
    assert count_units(GSM_EXT, "gsm7") == 2 * len(GSM_EXT)
    assert count_units(GSM_BASIC, "gsm7") == len(GSM_BASIC)
    assert count_units("€" * 80, "gsm7") == 160
    assert segment_count("€" * 80) == 1
    assert segment_count("€" * 81) == 2


def test_emoji_at_the_ucs2_boundary_is_not_split() -> None:
    text = "x" * 66 + "😀" + "y" * 10
    enc = encode_sms(text, ref=5)
    assert enc.coding == "ucs2"
    assert enc.data_coding == DC_UCS2
    assert enc.units == 78
    first, second = enc.parts
    assert first.short_message[6:] == ("x" * 66).encode("utf-16-be")
    assert second.short_message[6:] == ("😀" + "y" * 10).encode("utf-16-be")
    assert parts_text(enc) == text


def test_ucs2_limits_70_and_67() -> None:
    assert segment_count("ж" * 70) == 1
    assert segment_count("ж" * 71) == 2
    assert segment_count("ж" * 134) == 2
    assert segment_count("ж" * 135) == 3
    assert segment_count("ж" * 132, concat="udh16") == 2
    assert segment_count("ж" * 133, concat="udh16") == 3
    assert count_units("😀", "ucs2") == 2


def test_backtick_stays_backtick() -> None:
    # GSM 03.38 has no backtick; smpplib's make_parts turns it into "§". We must send UCS-2.
    assert choose_coding("`") == "ucs2"
    enc = encode_sms("code `x`", ref=1)
    assert enc.coding == "ucs2"
    assert parts_text(enc) == "code `x`"


def test_spanish_acute_accents_need_ucs2_but_enye_does_not() -> None:
    assert choose_coding("Cien años de soledad") == "gsm7"
    text = 'Biblioteca Riverside: su reserva "Cien años de soledad" está lista'
    assert choose_coding(text) == "ucs2"
    assert encode_sms(text, ref=1).data_coding == DC_UCS2


def test_escape_control_character_is_not_gsm() -> None:
    # U+001B would be read by the handset as the start of an escape sequence.
    assert choose_coding("a\x1bb") == "ucs2"
    with pytest.raises(ValueError):
        count_units("\x1b", "gsm7")


def test_gsm_count_rejects_non_gsm() -> None:
    with pytest.raises(ValueError):
        count_units("á", "gsm7")
    assert segment_count("á" * 100, "ucs2") == 2


def test_empty_text_is_one_empty_sms() -> None:
    enc = encode_sms("", ref=1)
    assert enc.parts == (Part(b""),)
    assert segment_count("") == 1


def test_ref_is_masked_per_mode() -> None:
    enc = encode_sms("d" * 200, ref=0x1FF)
    assert enc.parts[0].short_message[3] == 0xFF
    enc16 = encode_sms("d" * 200, ref=0x12345, concat="udh16")
    assert enc16.parts[0].short_message[3:5] == b"\x23\x45"


def test_truncate_to_max_segments_with_marker() -> None:
    enc = encode_sms("a" * 1000, ref=1, max_segments=2)
    assert enc.truncated is True
    assert enc.segments == 2
    assert enc.units == 306
    assert parts_text(enc) == "a" * 303 + "..."


def test_truncate_single_segment_strips_trailing_space() -> None:
    text = "word " * 40  # 200 septets
    enc = encode_sms(text, ref=1, max_segments=1, truncation_marker="…")
    # The ellipsis is not GSM: the result is UCS-2, at most 70 units, ending with the marker.
    assert enc.coding == "ucs2"
    assert enc.segments == 1
    decoded = parts_text(enc)
    assert decoded.endswith("…")
    assert not decoded[:-1].endswith(" ")
    assert len(decoded) <= 70


def test_truncate_never_splits_escape_pair() -> None:
    text = "a" * 158 + "€€€"
    enc = encode_sms(text, ref=1, max_segments=1, truncation_marker=".")
    assert parts_text(enc) == "a" * 158 + "."
    text2 = "a" * 156 + "€€€"
    enc2 = encode_sms(text2, ref=1, max_segments=1, truncation_marker=".")
    assert parts_text(enc2) == "a" * 156 + "€."


def test_truncate_never_splits_surrogate_pair() -> None:
    text = "x" * 68 + "😀😀"
    enc = encode_sms(text, ref=1, max_segments=1, truncation_marker="")
    assert parts_text(enc) == "x" * 68 + "😀"
    enc2 = encode_sms("x" * 69 + "😀😀", ref=1, max_segments=1, truncation_marker="")
    assert parts_text(enc2) == "x" * 69


def test_fail_raises_with_plain_reason() -> None:
    with pytest.raises(TooManySegments) as exc:
        encode_sms("a" * (153 * 6 + 1), ref=1, max_segments=4, overflow="fail")
    assert exc.value.reason == "the text needs 7 SMS segments; this library allows at most 4"
    assert exc.value.needed == 7
    assert exc.value.allowed == 4
    assert isinstance(exc.value, ValueError)


def test_fits_exactly_is_not_truncated() -> None:
    enc = encode_sms("a" * 306, ref=1, max_segments=2, overflow="fail")
    assert enc.truncated is False
    assert enc.segments == 2


def test_never_more_than_255_parts() -> None:
    enc = encode_sms("a" * (153 * 256), ref=1)
    assert enc.truncated is True
    assert enc.segments == 255
    assert enc.parts[-1].short_message[4:6] == bytes((255, 255))
    assert segment_count("a" * (153 * 256)) == 256
    with pytest.raises(TooManySegments) as exc:
        encode_sms("a" * (153 * 256), ref=1, overflow="fail")
    assert (
        exc.value.reason == "the text needs 256 SMS segments; an SMS can be split into at most 255"
    )


def test_lone_surrogate_is_replaced_not_crashing() -> None:
    enc = encode_sms("bad \udcff byte", ref=1)
    assert parts_text(enc) == "bad \ufffd byte"


# ---------------------------------------------------------------- decoding


def test_decode_gsm_unpacked() -> None:
    assert decode_payload(0x00, b"\x00\x01\x02Hi\x1b\x65") == "@£$Hi€"


def test_decode_gsm_tolerates_bad_escapes() -> None:
    # TS 23.038 §6.2.1.1: unknown extension code shows the basic character; ESC ESC is a space.
    assert decode_payload(0x00, b"\x1b\x41\x1b\x1bz\x1b") == "A z"


def test_decode_default_with_high_bytes_is_latin1() -> None:
    assert decode_payload(0x00, "café".encode("latin-1")) == "café"


def test_decode_other_codings() -> None:
    assert decode_payload(0x01, b"ok\xff") == "ok\ufffd"
    assert decode_payload(0x03, b"caf\xe9") == "café"
    assert decode_payload(0x08, "añ😀".encode("utf-16-be")) == "añ😀"
    assert decode_payload(0x08, b"\x00a\x00") == "a\ufffd"
    assert decode_payload(0x04, b"\x00\xff") == "\x00\xff"
    assert decode_payload(0x02, b"\xe9") == "é"
    # GSM DCS passed through: 0x18 = general group, UCS-2 alphabet; 0xF4 = group 1111, 8-bit.
    assert decode_payload(0x18, "hé".encode("utf-16-be")) == "hé"
    assert decode_payload(0xF4, b"\xe9") == "é"
    assert decode_payload(0xF0, b"\x00") == "@"
    assert decode_payload(0x77, b"\x00") == "@"
    assert decode_payload(0x77, b"\xe9") == "é"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=80))
def test_decode_payload_never_raises(dc: int, data: bytes) -> None:
    assert isinstance(decode_payload(dc, data), str)


# ---------------------------------------------------------------- UDH / SAR


def test_split_udh_8_and_16_bit() -> None:
    assert split_udh(bytes.fromhex("05000312020168"), 0x40) == (
        ConcatInfo(ref=0x12, total=2, seq=1, ref_bits=8),
        b"h",
    )
    assert split_udh(bytes.fromhex("060804abcd030369"), 0x43) == (
        ConcatInfo(ref=0xABCD, total=3, seq=3, ref_bits=16),
        b"i",
    )


def test_split_udh_skips_other_ies() -> None:
    # IE 0x0A (text formatting, 4 octets) before the concat IE.
    sm = bytes.fromhex("0b" + "0a0400010203" + "000377" + "0201") + b"x"
    assert split_udh(sm, 0x40) == (ConcatInfo(0x77, 2, 1, 8), b"x")
    # A UDH with no concat IE: no info, payload still stripped.
    assert split_udh(bytes.fromhex("03240100") + b"y", 0x40) == (None, b"y")


def test_split_udh_without_udhi_returns_input() -> None:
    sm = bytes.fromhex("05000312020168")
    assert split_udh(sm, 0x00) == (None, sm)


@pytest.mark.parametrize(
    "sm",
    [
        b"",
        bytes.fromhex("09000312"),  # UDHL beyond the data
        bytes.fromhex("0300051201"),  # IE length beyond the UDH
        bytes.fromhex("00") + b"abc",  # empty UDH
        bytes.fromhex("0100"),  # IE header cut in half
    ],
)
def test_split_udh_malformed_returns_original(sm: bytes) -> None:
    assert split_udh(sm, 0x40) == (None, sm)


def test_split_udh_inconsistent_concat_is_ignored() -> None:
    assert split_udh(bytes.fromhex("05000312020368"), 0x40) == (None, b"h")  # seq 3 of 2
    assert split_udh(bytes.fromhex("05000312000068"), 0x40) == (None, b"h")  # total 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 255))
def test_split_udh_never_raises(sm: bytes, esm: int) -> None:
    info, rest = split_udh(sm, esm)
    assert info is None or 1 <= info.seq <= info.total
    assert sm.endswith(rest)


def test_concat_from_sar() -> None:
    assert concat_from_sar(0x1234, 3, 2) == ConcatInfo(0x1234, 3, 2, 16)
    assert concat_from_sar(None, 3, 2) is None
    assert concat_from_sar(1, None, 1) is None
    assert concat_from_sar(1, 2, 3) is None
    assert concat_from_sar(1, 0, 0) is None


def test_encode_then_split_roundtrip_concat_info() -> None:
    enc = encode_sms("e" * 400, ref=0x42)
    infos = [split_udh(p.short_message, enc.esm_class)[0] for p in enc.parts]
    assert infos == [ConcatInfo(0x42, 3, s, 8) for s in (1, 2, 3)]


# ---------------------------------------------------------------- properties


def long_text(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Texts of 0..~730 characters: a random chunk repeated (plain st.text stays short), then a
    random tail, so part boundaries land on every kind of character."""
    return st.builds(
        lambda chunk, times, tail: (chunk * times)[:700] + tail,
        st.text(alphabet=alphabet, min_size=1, max_size=25),
        st.integers(0, 60),
        st.text(alphabet=alphabet, max_size=30),
    )


gsm_text = long_text(st.sampled_from(GSM_BASIC + GSM_EXT))
any_text = long_text(
    st.one_of(
        st.sampled_from(GSM_BASIC + GSM_EXT),
        st.characters(codec="utf-8", exclude_characters="\x1b"),
        st.sampled_from("😀🎉𝄞áé`"),
    )
)
modes = st.sampled_from(["udh8", "udh16", "sar", "payload"])


def check_minimal(enc: EncodedSms, text: str, mode: ConcatMode) -> None:
    """Greedy maximality: each part's successor could not start inside it, so the count is
    minimal; and a text that fits one SMS is never split."""
    units = count_units(text, enc.coding)
    single = 160 if enc.coding == "gsm7" else 70
    if units <= single:
        assert enc.segments == 1
        return
    per = {
        ("gsm7", "udh8"): 153,
        ("gsm7", "payload"): 153,
        ("gsm7", "udh16"): 152,
        ("gsm7", "sar"): 152,
        ("ucs2", "udh8"): 67,
        ("ucs2", "payload"): 67,
        ("ucs2", "udh16"): 66,
        ("ucs2", "sar"): 66,
    }[(enc.coding, mode)]
    assert enc.segments >= math.ceil(units / per)
    if mode == "payload":
        return
    texts = []
    for part in enc.parts:
        _, payload = split_udh(part.short_message, enc.esm_class)
        texts.append(decode_payload(enc.data_coding, payload))
    for cur, nxt in itertools.pairwise(texts):
        assert count_units(cur, enc.coding) + count_units(nxt[0], enc.coding) > per


@settings(max_examples=150, deadline=None)
@given(any_text, modes, st.integers(0, 0xFFFFF))
def test_property_roundtrip_size_minimal(text: str, mode: ConcatMode, ref: int) -> None:
    enc = encode_sms(text, ref=ref, concat=mode)
    assert enc.truncated is False
    assert enc.coding == choose_coding(text)
    assert enc.segments == segment_count(text, concat=mode)
    if mode == "payload":
        assert enc.message_payload is not None
        assert decode_payload(enc.data_coding, enc.message_payload) == text
    else:
        assert parts_text(enc) == text
        for part in enc.parts:
            assert air_octets(enc, part) <= 140
    check_minimal(enc, text, mode)


@settings(max_examples=150, deadline=None)
@given(gsm_text, st.sampled_from(["udh8", "udh16", "sar"]))
def test_property_gsm_text_stays_gsm(text: str, mode: ConcatMode) -> None:
    enc = encode_sms(text, ref=1, concat=mode)
    assert enc.coding == "gsm7"
    assert enc.data_coding == DC_DEFAULT
    assert parts_text(enc) == text
    for part in enc.parts:
        assert air_octets(enc, part) <= 140
    check_minimal(enc, text, mode)


@settings(max_examples=150, deadline=None)
@given(any_text, st.integers(1, 4), st.sampled_from(["...", "…", ""]))
def test_property_truncation(text: str, max_segments: int, marker: str) -> None:
    enc = encode_sms(text, ref=1, max_segments=max_segments, truncation_marker=marker)
    assert enc.segments <= max_segments
    decoded = parts_text(enc)
    if enc.truncated:
        assert segment_count(text) > max_segments
        assert decoded.endswith(marker)
        assert text.startswith(decoded[: len(decoded) - len(marker)])
    else:
        assert decoded == text
    for part in enc.parts:
        assert air_octets(enc, part) <= 140


# --- the whole-text fast paths agree with the per-character definitions --------------------------

_GSM_ALPHABET = "".join(encoding._GSM_COST)


@given(st.text(alphabet=_GSM_ALPHABET, max_size=400))
def test_gsm_fast_paths_match_the_codec_and_the_cost_table(text: str) -> None:
    assert encoding._encode_text(text, "gsm7") == text.encode("gsm03.38")
    assert encoding.count_units(text, "gsm7") == sum(encoding._GSM_COST[ch] for ch in text)
    assert encoding.choose_coding(text) == "gsm7"


@given(st.text(max_size=200))
def test_ucs2_units_and_coding_match_the_per_character_rules(text: str) -> None:
    clean = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    assert encoding._sanitize(text) == clean
    expected = sum(2 if ord(ch) > 0xFFFF else 1 for ch in clean)
    assert encoding.count_units(text, "ucs2") == expected
    in_gsm = all(ch in encoding._GSM_COST for ch in clean)
    assert encoding.choose_coding(clean) == ("gsm7" if in_gsm else "ucs2")
    if not in_gsm:
        with pytest.raises(ValueError, match=r"not in the GSM 03\.38 alphabet"):
            encoding.count_units(clean, "gsm7")


@given(st.binary(max_size=300))
def test_gsm_decode_fast_path_matches_the_septet_walk(payload: bytes) -> None:
    # The reference: TS 23.038 read septet by septet (escapes, reserved 0x1B 0x1B, a lone
    # trailing escape dropped, bytes above 0x7F masked).
    out, i, septets = [], 0, [b & 0x7F for b in payload]
    while i < len(septets):
        s = septets[i]
        i += 1
        if s != 0x1B:
            out.append(encoding._GSM_BASIC[s])
        elif i < len(septets):
            nxt = septets[i]
            i += 1
            out.append(" " if nxt == 0x1B else encoding._GSM_EXT.get(nxt, encoding._GSM_BASIC[nxt]))
    assert encoding._decode_gsm(payload) == "".join(out)
    latin = encoding._decode_gsm_or_latin1(payload)
    assert latin == (payload.decode("latin-1") if max(payload, default=0) > 0x7F else "".join(out))
