"""PDU codec, framing, status table and the session's pure parts (rate limiter, back-off)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp import errors
from bridge.smpp import pdu as p
from bridge.smpp.pdu import SubmitSm
from bridge.smpp.session import MIN_THROTTLED_TPS, RateLimiter


def _sm(**overrides: object) -> SubmitSm:
    fields: dict[str, object] = {
        "source_addr": "Library",
        "source_addr_ton": 5,
        "source_addr_npi": 0,
        "destination_addr": "12025550143",
        "short_message": b"Hold ready",
        "data_coding": 0,
        "esm_class": 0,
    }
    fields.update(overrides)
    return SubmitSm(**fields)  # type: ignore[arg-type]


def test_submit_sm_wire_format() -> None:
    raw = p.build_submit_sm(_sm(), 0x4D)
    assert raw.hex() == (
        "0000003d"
        "00000004"
        "00000000"
        "0000004d"  # header
        "00"
        "05"
        "00"
        "4c69627261727900"  # service_type, TON 5, NPI 0, "Library"
        "01"
        "01"
        "313230323535353031343300"  # TON 1, NPI 1, destination
        "00"
        "00"
        "00"
        "00"
        "00"  # esm_class, protocol_id, priority, schedule, validity
        "01"
        "00"
        "00"
        "00"  # registered_delivery=1, replace, data_coding, sm_default_msg_id
        "0a"
        "486f6c64207265616479"  # sm_length, short_message
    )


@settings(max_examples=60, deadline=None)
@given(
    short_message=st.binary(max_size=254),
    data_coding=st.sampled_from([0x00, 0x03, 0x08]),
    esm_class=st.sampled_from([0x00, 0x40]),
    sar=st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(1, 255), st.integers(1, 255)),
    sequence=st.integers(1, p.MAX_SEQUENCE),
)
def test_submit_sm_round_trip(
    short_message: bytes,
    data_coding: int,
    esm_class: int,
    sar: tuple[int, int, int] | None,
    sequence: int,
) -> None:
    sm = _sm(short_message=short_message, data_coding=data_coding, esm_class=esm_class, sar=sar)
    raw = p.build_submit_sm(sm, sequence)
    header = p.parse_header(raw)
    assert (header.length, header.command_id, header.sequence) == (len(raw), p.SUBMIT_SM, sequence)
    assert p.parse_submit_sm(raw) == sm


def test_message_payload_round_trip_and_exclusivity() -> None:
    sm = _sm(short_message=b"", message_payload=b"x" * 600, validity_period="000001000000000R")
    assert p.parse_submit_sm(p.build_submit_sm(sm, 1)) == sm
    with pytest.raises(ValueError):
        p.build_submit_sm(_sm(message_payload=b"y"), 1)
    with pytest.raises(ValueError):
        p.build_submit_sm(_sm(short_message=b"z" * 255), 1)
    with pytest.raises(ValueError):
        p.build_submit_sm(_sm(source_addr="A" * 21), 1)  # smpplib would silently truncate


def test_deliver_sm_receipt_tlvs() -> None:
    raw = p.build_deliver_sm(
        12,
        source_addr="12025550143",
        source_addr_ton=1,
        source_addr_npi=1,
        destination_addr="Library",
        dest_addr_ton=5,
        dest_addr_npi=0,
        esm_class=0x04,
        data_coding=0,
        short_message=b"id:7 stat:DELIVRD",
        receipted_message_id="7",
        message_state=2,
        network_error_code=b"\x03\x00\x00",
    )
    d = p.parse_deliver_sm(raw)
    assert (d.sequence, d.source_addr, d.source_addr_ton, d.destination_addr) == (
        12,
        "12025550143",
        1,
        "Library",
    )
    assert (d.receipted_message_id, d.message_state, d.network_error_code) == (
        "7",
        2,
        b"\x03\x00\x00",
    )
    assert d.message_payload is None and d.sar_msg_ref_num is None


def _with_tlvs(raw: bytes, tlvs: bytes) -> bytes:
    body = raw[4:] + tlvs
    return struct.pack(">L", len(body) + 4) + body


def test_deliver_sm_tolerates_vendor_tlvs_and_missing_nul() -> None:
    base = p.build_deliver_sm(
        3,
        source_addr="12025550143",
        source_addr_ton=1,
        source_addr_npi=1,
        destination_addr="12345",
        dest_addr_ton=3,
        dest_addr_npi=0,
        esm_class=0x04,
        data_coding=0,
    )
    tlvs = (
        struct.pack(">HH", 0x001E, 2)
        + b"a7"  # receipted_message_id without its NUL
        + struct.pack(">HHB", 0x0501, 1, 0)  # ussd_service_op: smpplib raises KeyError
        + struct.pack(">HH", 0x1401, 3)
        + b"abc"  # vendor-specific tag
        + struct.pack(">HHB", 0x0427, 1, 5)
    )
    d = p.parse_deliver_sm(_with_tlvs(base, tlvs))
    assert (d.receipted_message_id, d.message_state) == ("a7", 5)


def test_truncated_tlv_and_short_message_are_errors_with_status() -> None:
    base = p.build_deliver_sm(
        3,
        source_addr="1",
        source_addr_ton=0,
        source_addr_npi=0,
        destination_addr="2",
        dest_addr_ton=0,
        dest_addr_npi=0,
        esm_class=0,
        data_coding=0,
        short_message=b"hi",
    )
    with pytest.raises(p.PduError) as info:
        p.parse_deliver_sm(_with_tlvs(base, struct.pack(">HH", 0x0424, 10) + b"short"))
    assert info.value.status == errors.ESME_RINVOPTPARSTREAM
    cut = base[:-1]
    cut = struct.pack(">L", len(cut)) + cut[4:]
    with pytest.raises(p.PduError) as info:
        p.parse_deliver_sm(cut)
    assert info.value.status == errors.ESME_RINVMSGLEN


def test_bind_and_responses() -> None:
    raw = p.build_bind(p.BIND_TRANSCEIVER, 1, system_id="bridge", password="secret")
    assert p.parse_bind(raw) == p.BindRequest(p.BIND_TRANSCEIVER, "bridge", "secret", "", 0x34)
    with pytest.raises(ValueError):
        p.build_bind(p.BIND_TRANSCEIVER, 1, system_id="bridge", password="123456789")
    ok = p.build_bind_resp(p.BIND_TRANSCEIVER_RESP, 1, 0, "SMSC")
    assert p.parse_resp_id(ok) == "SMSC"
    refused = p.build_bind_resp(p.BIND_TRANSCEIVER_RESP, 1, errors.ESME_RINVPASWD, "SMSC")
    assert len(refused) == 16 and p.parse_resp_id(refused) is None
    assert p.parse_resp_id(p.build_submit_sm_resp(5, 0, "0A1B")) == "0A1B"
    assert p.build_deliver_sm_resp(9, 0x64) == bytes.fromhex("0000001180000005000000640000000900")
    assert p.parse_header(p.build_header_only(p.GENERIC_NACK, 8, 3)) == p.Header(
        16, p.GENERIC_NACK, 3, 8
    )


async def _frames(data: bytes, chunk: int) -> list[bytes]:
    reader = asyncio.StreamReader()
    for i in range(0, len(data), chunk):
        reader.feed_data(data[i : i + chunk])
    reader.feed_eof()
    frames = []
    with pytest.raises(asyncio.IncompleteReadError):
        while True:
            frames.append(await p.frame_reader(reader))
    return frames


async def test_frame_reader_splits_a_stream_at_any_chunking() -> None:
    pdus = [
        p.build_header_only(p.ENQUIRE_LINK, 1),
        p.build_submit_sm(_sm(), 2),
        p.build_submit_sm_resp(3, 0, "42"),
    ]
    for chunk in (1, 3, 16, 1000):
        assert await _frames(b"".join(pdus), chunk) == pdus


@pytest.mark.parametrize("length", [0, 8, 15, p.MAX_PDU_LEN + 1, 0xFFFFFFFF])
async def test_frame_reader_rejects_bad_lengths(length: int) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">LLLL", length, p.SUBMIT_SM, 0, 77))
    reader.feed_eof()
    with pytest.raises(p.FrameError) as info:
        await p.frame_reader(reader)
    assert info.value.status == errors.ESME_RINVCMDLEN
    assert info.value.header.sequence == 77


def test_sequence_wraps_within_spec_range() -> None:
    assert p.next_sequence(0) == 1
    assert p.next_sequence(41) == 42
    assert p.next_sequence(0x7FFFFFFF) == 1


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Library", ("Library", 5, 0)),
        ("SPL-Alerts", ("SPL-Alerts", 5, 0)),
        ("12345", ("12345", 3, 0)),
        ("+12025550100", ("12025550100", 1, 1)),
        ("12025550100", ("12025550100", 1, 1)),
        ("123456789", ("123456789", 0, 1)),
    ],
)
def test_source_address(source: str, expected: tuple[str, int, int]) -> None:
    assert p.source_address(source) == expected


@pytest.mark.parametrize("source", ["", "TwelveLetter", "+1234"])
def test_source_address_rejects(source: str) -> None:
    with pytest.raises(ValueError):
        p.source_ton_npi(source)


def test_status_names_descriptions_and_classes() -> None:
    assert errors.status_name(0x58) == "ESME_RTHROTTLED"
    assert errors.status_name(0x400) == "0x00000400"
    assert errors.describe(0x0B) == "the carrier rejected the destination number"
    assert "0x00000401" in errors.describe(0x401)
    assert errors.classify(0) == "ok"
    assert errors.classify(0x58) == "throttled"
    assert [errors.classify(c) for c in (0x08, 0x14, 0x64)] == ["temporary"] * 3
    assert [errors.classify(c) for c in (0x04, 0x05)] == ["rebind"] * 2
    assert [errors.classify(c) for c in (0x0B, 0x45, 0x65, 0x104, 0xFF)] == ["permanent"] * 5
    assert errors.is_retryable(0x14) and not errors.is_retryable(0x0A)


def test_rate_limiter_never_bursts() -> None:
    limiter = RateLimiter(max_tps=10.0, recovery_s=30.0)
    now = 100.0
    # 500 callers arrive at once, and again after a long idle gap: no banked burst.
    sends = [limiter.reserve(now) for _ in range(250)]
    sends += [limiter.reserve(now + 1000.0) for _ in range(250)]
    for start in sends:
        assert sum(1 for t in sends if start <= t < start + 1.0) <= 10
        assert sum(1 for t in sends if start <= t <= start + 10.0) <= 10 * 10 + 1


def test_rate_limiter_halves_on_throttle_and_recovers_linearly() -> None:
    limiter = RateLimiter(max_tps=20.0, recovery_s=10.0)
    assert limiter.rate(0.0) == 20.0
    assert limiter.throttled(50.0)
    assert limiter.rate(50.0) == pytest.approx(10.0)
    assert not limiter.throttled(50.5)  # same burst of 0x58s: one signal
    assert limiter.rate(55.0) == pytest.approx(15.0)
    assert limiter.rate(60.0) == pytest.approx(20.0)
    assert limiter.rate(90.0) == pytest.approx(20.0)
    slow = RateLimiter(max_tps=20.0, recovery_s=1000.0)
    for i in range(10):
        assert slow.throttled(100.0 + i)  # a storm: one halving per second, down to the floor
    assert slow.rate(109.0) == pytest.approx(MIN_THROTTLED_TPS, abs=0.05)
    # After a throttle the next slot is spaced at the lowered rate.
    assert slow.reserve(109.0) >= 109.0 + 1.0 / 0.56


# --- the direct submit_sm encoder writes exactly smpplib's bytes ---------------------------------

_ADDR = st.text(alphabet="0123456789", min_size=0, max_size=20)


@given(
    source=st.one_of(_ADDR, st.text(alphabet="ABCXYZabc 123", min_size=1, max_size=11)),
    ton=st.integers(0, 6),
    npi=st.integers(0, 18),
    dest=_ADDR,
    short=st.binary(max_size=254),
    data_coding=st.sampled_from([0, 3, 4, 8]),
    esm=st.sampled_from([0, 0x40]),
    registered=st.integers(0, 3),
    sar=st.one_of(
        st.none(), st.tuples(st.integers(0, 0xFFFF), st.integers(1, 255), st.integers(1, 255))
    ),
    payload=st.one_of(st.none(), st.binary(min_size=1, max_size=600)),
    validity=st.one_of(st.none(), st.sampled_from(["000002000000000R", "261201120000000+"])),
    sequence=st.integers(1, 0x7FFFFFFF),
)
def test_submit_sm_matches_smpplib(
    source: str,
    ton: int,
    npi: int,
    dest: str,
    short: bytes,
    data_coding: int,
    esm: int,
    registered: int,
    sar: tuple[int, int, int] | None,
    payload: bytes | None,
    validity: str | None,
    sequence: int,
) -> None:
    sm = SubmitSm(
        source_addr=source,
        source_addr_ton=ton,
        source_addr_npi=npi,
        destination_addr=dest,
        short_message=b"" if payload else short,
        data_coding=data_coding,
        esm_class=esm,
        registered_delivery=registered,
        sar=sar,
        message_payload=payload,
        validity_period=validity,
    )
    ours = p.build_submit_sm(sm, sequence)
    assert ours == p.build_submit_sm_smpplib(sm, sequence)
    back = p.parse_submit_sm(ours)
    assert (back.source_addr, back.destination_addr, back.data_coding) == (
        source,
        dest,
        data_coding,
    )
