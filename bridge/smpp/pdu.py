"""SMPP 3.4 PDU framing, building and parsing: the only module that touches smpplib.

Building uses smpplib's codec (``smpplib.smpp.make_pdu(...).generate()``), which is correct for
every PDU we send, except submit_sm: the one PDU built per text is written directly (see
build_submit_sm) and checked against smpplib's encoding. Parsing of the message-carrying PDUs
(submit_sm, deliver_sm, data_sm) is ours, because smpplib's optional-parameter parser is wrong
in two ways that real SMSCs trigger (checked against smpplib 2.2.3):

* a C-octet-string TLV is assumed to end in NUL, so ``receipted_message_id`` sent without the
  terminator (a common vendor quirk) loses its last character ("7" parses as "");
* a TLV that smpplib knows but does not list for that command (e.g. ``ussd_service_op`` inside a
  deliver_sm) raises ``KeyError``, which would kill the reader.

Header-only and simple bodies (bind, bind_resp, submit_sm_resp) are small enough that one
parser for everything is simpler than two code paths; it follows SMPP 3.4 §4 field by field.
Framing is ours too: smpplib only handles whole PDUs, never a stream.
"""

from __future__ import annotations

import asyncio
import re
import struct
from dataclasses import dataclass
from typing import Any, Final

from smpplib import smpp as _smpp

from bridge.smpp import errors

HEADER_LEN: Final = 16
# SMPP 3.4 sets no maximum; 64 KiB is far above any legitimate PDU (message_payload is at most
# 64 KiB in practice but carriers cap it near 1-2 KiB) and keeps a corrupt length from making us
# allocate gigabytes.
MAX_PDU_LEN: Final = 64 * 1024
RESP_BIT: Final = 0x80000000
# §3.2: sequence_number range 0x00000001 to 0x7FFFFFFF.
MAX_SEQUENCE: Final = 0x7FFFFFFF

GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_RECEIVER_RESP: Final = 0x80000001
BIND_TRANSMITTER: Final = 0x00000002
BIND_TRANSMITTER_RESP: Final = 0x80000002
QUERY_SM: Final = 0x00000003
QUERY_SM_RESP: Final = 0x80000003
SUBMIT_SM: Final = 0x00000004
SUBMIT_SM_RESP: Final = 0x80000004
DELIVER_SM: Final = 0x00000005
DELIVER_SM_RESP: Final = 0x80000005
UNBIND: Final = 0x00000006
UNBIND_RESP: Final = 0x80000006
REPLACE_SM: Final = 0x00000007
REPLACE_SM_RESP: Final = 0x80000007
CANCEL_SM: Final = 0x00000008
CANCEL_SM_RESP: Final = 0x80000008
BIND_TRANSCEIVER: Final = 0x00000009
BIND_TRANSCEIVER_RESP: Final = 0x80000009
OUTBIND: Final = 0x0000000B
ENQUIRE_LINK: Final = 0x00000015
ENQUIRE_LINK_RESP: Final = 0x80000015
SUBMIT_MULTI: Final = 0x00000021
SUBMIT_MULTI_RESP: Final = 0x80000021
ALERT_NOTIFICATION: Final = 0x00000102
DATA_SM: Final = 0x00000103
DATA_SM_RESP: Final = 0x80000103

_COMMAND_NAMES: Final[dict[int, str]] = {
    GENERIC_NACK: "generic_nack",
    BIND_RECEIVER: "bind_receiver",
    BIND_RECEIVER_RESP: "bind_receiver_resp",
    BIND_TRANSMITTER: "bind_transmitter",
    BIND_TRANSMITTER_RESP: "bind_transmitter_resp",
    QUERY_SM: "query_sm",
    QUERY_SM_RESP: "query_sm_resp",
    SUBMIT_SM: "submit_sm",
    SUBMIT_SM_RESP: "submit_sm_resp",
    DELIVER_SM: "deliver_sm",
    DELIVER_SM_RESP: "deliver_sm_resp",
    UNBIND: "unbind",
    UNBIND_RESP: "unbind_resp",
    REPLACE_SM: "replace_sm",
    REPLACE_SM_RESP: "replace_sm_resp",
    CANCEL_SM: "cancel_sm",
    CANCEL_SM_RESP: "cancel_sm_resp",
    BIND_TRANSCEIVER: "bind_transceiver",
    BIND_TRANSCEIVER_RESP: "bind_transceiver_resp",
    OUTBIND: "outbind",
    ENQUIRE_LINK: "enquire_link",
    ENQUIRE_LINK_RESP: "enquire_link_resp",
    SUBMIT_MULTI: "submit_multi",
    SUBMIT_MULTI_RESP: "submit_multi_resp",
    ALERT_NOTIFICATION: "alert_notification",
    DATA_SM: "data_sm",
    DATA_SM_RESP: "data_sm_resp",
}
_NAME_TO_ID: Final[dict[str, int]] = {v: k for k, v in _COMMAND_NAMES.items()}
BIND_COMMANDS: Final = frozenset({BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER})

# TLV tags (§5.3.2) we read.
TAG_RECEIPTED_MESSAGE_ID: Final = 0x001E
TAG_SAR_MSG_REF_NUM: Final = 0x020C
TAG_SAR_TOTAL_SEGMENTS: Final = 0x020E
TAG_SAR_SEGMENT_SEQNUM: Final = 0x020F
TAG_NETWORK_ERROR_CODE: Final = 0x0423
TAG_MESSAGE_PAYLOAD: Final = 0x0424
TAG_MESSAGE_STATE: Final = 0x0427

INTERFACE_VERSION: Final = 0x34
SHORT_MESSAGE_MAX: Final = 254  # §5.2.22: sm_length 0-254


class PduError(ValueError):
    """A PDU body that cannot be parsed; ``status`` is what to answer (SMPP 3.4 §5.1.3)."""

    def __init__(self, message: str, status: int = errors.ESME_RINVCMDLEN) -> None:
        super().__init__(message)
        self.status = status


class FrameError(PduError):
    """The stream cannot be framed (command_length out of range): it cannot be resynchronised,
    because command_length is the only frame delimiter SMPP has (§3.1). Answer generic_nack
    and drop the connection."""

    def __init__(self, message: str, header: Header) -> None:
        super().__init__(message, errors.ESME_RINVCMDLEN)
        self.header = header


@dataclass(frozen=True)
class Header:
    length: int
    command_id: int
    status: int
    sequence: int

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESP_BIT)

    @property
    def name(self) -> str:
        return command_name(self.command_id)


@dataclass(frozen=True)
class SubmitSm:
    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str  # E.164 digits without '+', TON 1 NPI 1
    short_message: bytes
    data_coding: int
    esm_class: int
    registered_delivery: int = 1  # SMSC delivery receipt on success and failure (§5.2.17)
    sar: tuple[int, int, int] | None = None
    message_payload: bytes | None = None
    validity_period: str | None = None


@dataclass(frozen=True)
class DeliverSm:
    sequence: int
    source_addr: str
    source_addr_ton: int
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    message_payload: bytes | None
    receipted_message_id: str | None
    message_state: int | None
    network_error_code: bytes | None
    sar_msg_ref_num: int | None
    sar_total_segments: int | None
    sar_segment_seqnum: int | None
    # §5.2.5: how the SMSC wrote destination_addr (international, national, ...); an MO's
    # destination is the library's number, read in canonical form by bridge.inbound.
    dest_addr_ton: int = 0


@dataclass(frozen=True)
class BindRequest:
    command_id: int
    system_id: str
    password: str
    system_type: str
    interface_version: int


def command_name(command_id: int) -> str:
    return _COMMAND_NAMES.get(command_id, f"0x{command_id:08X}")


def is_known_command(command_id: int) -> bool:
    return command_id in _COMMAND_NAMES


def next_sequence(sequence: int) -> int:
    """The sequence number after ``sequence``, wrapping inside §3.2's 1..0x7FFFFFFF."""
    return 1 if sequence >= MAX_SEQUENCE else sequence + 1


_SHORT_CODE = re.compile(r"\d{3,8}")
_LONG_CODE = re.compile(r"\+?\d{10,15}")


def source_ton_npi(source_addr: str) -> tuple[int, int]:
    """TON/NPI for a sender (SMPP 3.4 §5.2.5/§5.2.6).

    Alphanumeric sender → TON 5 (alphanumeric) NPI 0; short code (3-8 digits) → TON 3
    (network specific) NPI 0; long code ('+' or 10-15 digits) → TON 1 (international) NPI 1
    (E.164; send the digits without '+', see :func:`source_address`). Anything else numeric
    (1-2 or 9 digits) gets TON 0 NPI 1 (unknown): the SMSC then applies its own rules.
    """
    if _LONG_CODE.fullmatch(source_addr):
        return 1, 1
    if source_addr.startswith("+"):
        raise ValueError("a '+' sender must be followed by 10-15 digits")
    if _SHORT_CODE.fullmatch(source_addr):
        return 3, 0
    if source_addr.isdigit():
        return 0, 1
    if not source_addr or len(source_addr) > 11:
        # GSM 03.40 §9.1.2.5: an alphanumeric originator holds at most 11 characters.
        raise ValueError("an alphanumeric sender must be 1-11 characters")
    return 5, 0


def source_address(source: str) -> tuple[str, int, int]:
    """(source_addr as sent on the wire, ton, npi) for a configured sender."""
    ton, npi = source_ton_npi(source)
    return (source.removeprefix("+") if ton == 1 else source), ton, npi


# ----------------------------------------------------------------------------- framing


def parse_header(raw: bytes) -> Header:
    if len(raw) < HEADER_LEN:
        raise PduError(f"PDU shorter than its {HEADER_LEN}-octet header")
    length, command_id, status, sequence = struct.unpack_from(">LLLL", raw)
    return Header(length, command_id, status, sequence)


async def frame_reader(reader: asyncio.StreamReader, *, max_length: int = MAX_PDU_LEN) -> bytes:
    """Read exactly one PDU (header included) from the stream.

    Raises ``asyncio.IncompleteReadError`` at end of stream and :class:`FrameError` when
    command_length is below 16 or above ``max_length``. The 16-octet header is read in one go:
    every valid PDU has one, so this never waits for bytes a correct peer would not send, and
    the error can name the offending sequence number for the generic_nack.
    """
    raw_header = await reader.readexactly(HEADER_LEN)
    header = parse_header(raw_header)
    if header.length < HEADER_LEN or header.length > max_length:
        raise FrameError(f"command_length {header.length} out of range", header)
    if header.length == HEADER_LEN:
        return raw_header
    return raw_header + await reader.readexactly(header.length - HEADER_LEN)


# ----------------------------------------------------------------------------- building


class _SeqClient:
    """The ``client`` smpplib's PDU constructors ask for: they read ``client.sequence`` and call
    ``client.next_sequence()``. ``make_pdu(..., sequence=N)`` is ignored by smpplib, so the real
    sequence number is assigned to ``pdu.sequence`` after construction (see :func:`_build`)."""

    def __init__(self, sequence: int) -> None:
        self.sequence = sequence

    def next_sequence(self) -> int:
        return self.sequence


def _build(name: str, sequence: int, status: int = errors.ESME_ROK, **fields: Any) -> bytes:
    pdu = _smpp.make_pdu(name, client=_SeqClient(sequence), status=status, **fields)
    pdu.sequence = sequence
    raw: bytes = pdu.generate()
    return raw


def build_header_only(command_id: int, sequence: int, status: int = errors.ESME_ROK) -> bytes:
    """generic_nack, enquire_link(_resp), unbind(_resp), and error responses without a body.

    Written directly because smpplib cannot encode a command id it does not know (tests need
    to send unknown ones) and because §4.4.2 says an error submit_sm_resp carries no body.
    """
    return struct.pack(">LLLL", HEADER_LEN, command_id, status, sequence)


def _check_cstring(field: str, value: str, max_octets: int) -> str:
    # smpplib silently truncates C-octet strings to max-1 characters; a truncated password or
    # number must fail loudly instead.
    if len(value.encode("latin-1")) > max_octets - 1:
        raise ValueError(f"{field} longer than {max_octets - 1} characters (SMPP 3.4 §4)")
    return value


def build_bind(
    command_id: int,
    sequence: int,
    *,
    system_id: str,
    password: str,
    system_type: str = "",
) -> bytes:
    """bind_transmitter / bind_receiver / bind_transceiver (§4.1), interface_version 0x34."""
    name = {
        BIND_TRANSMITTER: "bind_transmitter",
        BIND_RECEIVER: "bind_receiver",
        BIND_TRANSCEIVER: "bind_transceiver",
    }[command_id]
    return _build(
        name,
        sequence,
        system_id=_check_cstring("system_id", system_id, 16),
        password=_check_cstring("password", password, 9),
        system_type=_check_cstring("system_type", system_type, 13),
        interface_version=INTERFACE_VERSION,
        addr_ton=0,
        addr_npi=0,
        address_range="",
    )


def build_bind_resp(command_id: int, sequence: int, status: int, system_id: str) -> bytes:
    if status != errors.ESME_ROK:
        # §4.1.2: "the body ... is not returned if the command_status field contains a
        # non-zero value".
        return build_header_only(command_id, sequence, status)
    name = command_name(command_id)
    return _build(name, sequence, system_id=_check_cstring("system_id", system_id, 16))


def build_submit_sm(sm: SubmitSm, sequence: int) -> bytes:
    """submit_sm (§4.4.1), written directly: it is the one PDU built per text, and smpplib's
    generic field walk costs more than the rest of the dispatch (tests/unit/test_smpp_pdu.py
    checks the bytes against smpplib's own encoding)."""
    if len(sm.short_message) > SHORT_MESSAGE_MAX:
        raise ValueError("short_message longer than 254 octets: use message_payload")
    if sm.short_message and sm.message_payload:
        # §5.2.22 / §5.3.2.32: short_message must be empty when message_payload is used.
        raise ValueError("short_message and message_payload are mutually exclusive")
    source = _check_cstring("source_addr", sm.source_addr, 21).encode("latin-1")
    dest = _check_cstring("destination_addr", sm.destination_addr, 21).encode("latin-1")
    validity = _check_cstring("validity_period", sm.validity_period or "", 17).encode("latin-1")
    body = b"".join(
        (
            b"\x00",  # service_type: default
            bytes((sm.source_addr_ton & 0xFF, sm.source_addr_npi & 0xFF)),
            source,
            b"\x00\x01\x01",  # NUL, dest_addr_ton international, dest_addr_npi E.164
            dest,
            # NUL, esm_class, protocol_id 0, priority_flag 0, schedule_delivery_time ""
            bytes((0, sm.esm_class & 0xFF, 0, 0, 0)),
            validity,
            bytes(
                (
                    0,
                    sm.registered_delivery & 0xFF,
                    0,  # replace_if_present_flag
                    sm.data_coding & 0xFF,
                    0,  # sm_default_msg_id
                    len(sm.short_message),
                )
            ),
            sm.short_message,
        )
    )
    tlvs = b""
    if sm.sar is not None:
        ref, total, seq = sm.sar
        tlvs += struct.pack(">HHH", TAG_SAR_MSG_REF_NUM, 2, ref & 0xFFFF)
        tlvs += struct.pack(">HHB", TAG_SAR_TOTAL_SEGMENTS, 1, total & 0xFF)
        tlvs += struct.pack(">HHB", TAG_SAR_SEGMENT_SEQNUM, 1, seq & 0xFF)
    if sm.message_payload is not None:
        tlvs += struct.pack(">HH", TAG_MESSAGE_PAYLOAD, len(sm.message_payload))
        tlvs += sm.message_payload
    length = HEADER_LEN + len(body) + len(tlvs)
    return struct.pack(">LLLL", length, SUBMIT_SM, errors.ESME_ROK, sequence) + body + tlvs


def build_submit_sm_smpplib(sm: SubmitSm, sequence: int) -> bytes:
    """The same PDU through smpplib's codec: the reference the direct encoder is tested
    against."""
    fields: dict[str, Any] = {
        "service_type": "",
        "source_addr_ton": sm.source_addr_ton,
        "source_addr_npi": sm.source_addr_npi,
        "source_addr": _check_cstring("source_addr", sm.source_addr, 21),
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": _check_cstring("destination_addr", sm.destination_addr, 21),
        "esm_class": sm.esm_class,
        "protocol_id": 0,
        "priority_flag": 0,
        "schedule_delivery_time": "",
        "validity_period": _check_cstring("validity_period", sm.validity_period or "", 17),
        "registered_delivery": sm.registered_delivery,
        "replace_if_present_flag": 0,
        "data_coding": sm.data_coding,
        "sm_default_msg_id": 0,
        "short_message": sm.short_message,
    }
    if sm.message_payload is not None:
        fields["message_payload"] = sm.message_payload
    if sm.sar is not None:
        ref, total, seq = sm.sar
        fields["sar_msg_ref_num"] = ref & 0xFFFF
        fields["sar_total_segments"] = total
        fields["sar_segment_seqnum"] = seq
    return _build("submit_sm", sequence, **fields)


def build_submit_sm_resp(sequence: int, status: int, message_id: str | None) -> bytes:
    if status != errors.ESME_ROK:
        return build_header_only(SUBMIT_SM_RESP, sequence, status)  # §4.4.2
    return _build(
        "submit_sm_resp",
        sequence,
        message_id=_check_cstring("message_id", message_id or "", 65),
    )


def build_deliver_sm(
    sequence: int,
    *,
    source_addr: str,
    source_addr_ton: int,
    source_addr_npi: int,
    destination_addr: str,
    dest_addr_ton: int,
    dest_addr_npi: int,
    esm_class: int,
    data_coding: int,
    short_message: bytes = b"",
    message_payload: bytes | None = None,
    receipted_message_id: str | None = None,
    message_state: int | None = None,
    network_error_code: bytes | None = None,
    sar: tuple[int, int, int] | None = None,
) -> bytes:
    """deliver_sm (§4.6.1): used by the SMSC simulator for MO messages and receipts."""
    if len(short_message) > SHORT_MESSAGE_MAX:
        raise ValueError("short_message longer than 254 octets: use message_payload")
    fields: dict[str, Any] = {
        "service_type": "",
        "source_addr_ton": source_addr_ton,
        "source_addr_npi": source_addr_npi,
        "source_addr": _check_cstring("source_addr", source_addr, 21),
        "dest_addr_ton": dest_addr_ton,
        "dest_addr_npi": dest_addr_npi,
        "destination_addr": _check_cstring("destination_addr", destination_addr, 21),
        "esm_class": esm_class,
        "protocol_id": 0,
        "priority_flag": 0,
        "schedule_delivery_time": "",
        "validity_period": "",
        "registered_delivery": 0,
        "replace_if_present_flag": 0,
        "data_coding": data_coding,
        "sm_default_msg_id": 0,
        "short_message": short_message,
    }
    if message_payload is not None:
        fields["message_payload"] = message_payload
    if receipted_message_id is not None:
        fields["receipted_message_id"] = _check_cstring(
            "receipted_message_id", receipted_message_id, 65
        )
    if message_state is not None:
        fields["message_state"] = message_state
    if network_error_code is not None:
        if len(network_error_code) != 3:
            raise ValueError("network_error_code is 3 octets (§5.3.2.31)")
        fields["network_error_code"] = network_error_code
    if sar is not None:
        fields["sar_msg_ref_num"] = sar[0] & 0xFFFF
        fields["sar_total_segments"] = sar[1]
        fields["sar_segment_seqnum"] = sar[2]
    return _build("deliver_sm", sequence, **fields)


def build_deliver_sm_resp(sequence: int, status: int) -> bytes:
    # §4.6.2: message_id is unused and set to NULL; smpplib writes the single NUL octet.
    return _build("deliver_sm_resp", sequence, status=status, message_id="")


def build_data_sm_resp(sequence: int, status: int) -> bytes:
    return _build("data_sm_resp", sequence, status=status, message_id="")


# ----------------------------------------------------------------------------- parsing


class _Body:
    """Cursor over a PDU body with the SMPP field types (§3.1)."""

    def __init__(self, raw: bytes) -> None:
        self.data = raw
        self.pos = HEADER_LEN

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def u8(self, field: str) -> int:
        if self.pos >= len(self.data):
            raise PduError(f"{field}: PDU ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def cstring(self, field: str, max_octets: int) -> str:
        end = self.data.find(b"\x00", self.pos, self.pos + max_octets)
        if end < 0:
            raise PduError(f"{field}: no NUL terminator within {max_octets} octets")
        value = self.data[self.pos : end].decode("latin-1")
        self.pos = end + 1
        return value

    def octets(self, field: str, length: int) -> bytes:
        if self.pos + length > len(self.data):
            raise PduError(f"{field}: length {length} runs past the PDU", errors.ESME_RINVMSGLEN)
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def tlvs(self) -> dict[int, bytes]:
        """The remaining TLVs (§3.2.4.1). Unknown tags are kept and ignored by the caller, as
        §3.2.4.1 requires ("an unrecognised optional parameter ... shall be ignored")."""
        found: dict[int, bytes] = {}
        while self.pos < len(self.data):
            if self.pos + 4 > len(self.data):
                raise PduError("truncated TLV header", errors.ESME_RINVOPTPARSTREAM)
            tag, length = struct.unpack_from(">HH", self.data, self.pos)
            self.pos += 4
            if self.pos + length > len(self.data):
                raise PduError(f"TLV 0x{tag:04X} runs past the PDU", errors.ESME_RINVOPTPARSTREAM)
            found[tag] = self.data[self.pos : self.pos + length]
            self.pos += length
        return found


def _tlv_int(tlvs: dict[int, bytes], tag: int) -> int | None:
    value = tlvs.get(tag)
    if value is None or not value:
        return None
    return int.from_bytes(value, "big")


def _tlv_cstring(tlvs: dict[int, bytes], tag: int) -> str | None:
    value = tlvs.get(tag)
    if value is None:
        return None
    # Tolerate a missing NUL terminator (vendor quirk) and stray padding NULs.
    return value.split(b"\x00", 1)[0].decode("latin-1")


@dataclass(frozen=True)
class _MessageFields:
    service_type: str
    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    validity_period: str
    registered_delivery: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes]


def _parse_sm_body(raw: bytes) -> _MessageFields:
    """Mandatory part of submit_sm (§4.4.1) and deliver_sm (§4.6.1), which share the layout."""
    body = _Body(raw)
    service_type = body.cstring("service_type", 6)
    source_addr_ton = body.u8("source_addr_ton")
    source_addr_npi = body.u8("source_addr_npi")
    source_addr = body.cstring("source_addr", 21)
    dest_addr_ton = body.u8("dest_addr_ton")
    dest_addr_npi = body.u8("dest_addr_npi")
    destination_addr = body.cstring("destination_addr", 21)
    esm_class = body.u8("esm_class")
    body.u8("protocol_id")
    body.u8("priority_flag")
    body.cstring("schedule_delivery_time", 17)
    validity_period = body.cstring("validity_period", 17)
    registered_delivery = body.u8("registered_delivery")
    body.u8("replace_if_present_flag")
    data_coding = body.u8("data_coding")
    body.u8("sm_default_msg_id")
    sm_length = body.u8("sm_length")
    short_message = body.octets("short_message", sm_length)
    tlvs = body.tlvs()
    return _MessageFields(
        service_type,
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addr_ton,
        dest_addr_npi,
        destination_addr,
        esm_class,
        validity_period,
        registered_delivery,
        data_coding,
        short_message,
        tlvs,
    )


def _parse_data_sm_body(raw: bytes) -> _MessageFields:
    """data_sm (§4.7.1): no short_message; the text travels in message_payload."""
    body = _Body(raw)
    service_type = body.cstring("service_type", 6)
    source_addr_ton = body.u8("source_addr_ton")
    source_addr_npi = body.u8("source_addr_npi")
    source_addr = body.cstring("source_addr", 65)
    dest_addr_ton = body.u8("dest_addr_ton")
    dest_addr_npi = body.u8("dest_addr_npi")
    destination_addr = body.cstring("destination_addr", 65)
    esm_class = body.u8("esm_class")
    registered_delivery = body.u8("registered_delivery")
    data_coding = body.u8("data_coding")
    tlvs = body.tlvs()
    return _MessageFields(
        service_type,
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addr_ton,
        dest_addr_npi,
        destination_addr,
        esm_class,
        "",
        registered_delivery,
        data_coding,
        b"",
        tlvs,
    )


def _sar(tlvs: dict[int, bytes]) -> tuple[int | None, int | None, int | None]:
    return (
        _tlv_int(tlvs, TAG_SAR_MSG_REF_NUM),
        _tlv_int(tlvs, TAG_SAR_TOTAL_SEGMENTS),
        _tlv_int(tlvs, TAG_SAR_SEGMENT_SEQNUM),
    )


def parse_submit_sm(raw: bytes) -> SubmitSm:
    """submit_sm as the SMSC simulator sees it."""
    fields = _parse_sm_body(raw)
    ref, total, seq = _sar(fields.tlvs)
    sar = (ref, total, seq) if ref is not None and total is not None and seq is not None else None
    return SubmitSm(
        source_addr=fields.source_addr,
        source_addr_ton=fields.source_addr_ton,
        source_addr_npi=fields.source_addr_npi,
        destination_addr=fields.destination_addr,
        short_message=fields.short_message,
        data_coding=fields.data_coding,
        esm_class=fields.esm_class,
        registered_delivery=fields.registered_delivery,
        sar=sar,
        message_payload=fields.tlvs.get(TAG_MESSAGE_PAYLOAD),
        validity_period=fields.validity_period or None,
    )


def parse_deliver_sm(raw: bytes) -> DeliverSm:
    """deliver_sm (§4.6.1) or data_sm (§4.7.1) from the SMSC: MO messages and receipts."""
    header = parse_header(raw)
    fields = _parse_data_sm_body(raw) if header.command_id == DATA_SM else _parse_sm_body(raw)
    ref, total, seq = _sar(fields.tlvs)
    return DeliverSm(
        sequence=header.sequence,
        source_addr=fields.source_addr,
        source_addr_ton=fields.source_addr_ton,
        destination_addr=fields.destination_addr,
        esm_class=fields.esm_class,
        data_coding=fields.data_coding,
        short_message=fields.short_message,
        message_payload=fields.tlvs.get(TAG_MESSAGE_PAYLOAD),
        receipted_message_id=_tlv_cstring(fields.tlvs, TAG_RECEIPTED_MESSAGE_ID),
        message_state=_tlv_int(fields.tlvs, TAG_MESSAGE_STATE),
        network_error_code=fields.tlvs.get(TAG_NETWORK_ERROR_CODE),
        dest_addr_ton=fields.dest_addr_ton,
        sar_msg_ref_num=ref,
        sar_total_segments=total,
        sar_segment_seqnum=seq,
    )


def parse_bind(raw: bytes) -> BindRequest:
    """bind_transmitter / bind_receiver / bind_transceiver body (§4.1.1)."""
    header = parse_header(raw)
    body = _Body(raw)
    system_id = body.cstring("system_id", 16)
    password = body.cstring("password", 9)
    system_type = body.cstring("system_type", 13)
    interface_version = body.u8("interface_version")
    return BindRequest(header.command_id, system_id, password, system_type, interface_version)


def parse_resp_id(raw: bytes) -> str | None:
    """The first body field of submit_sm_resp / data_sm_resp (message_id, §4.4.2) or
    bind_*_resp (system_id, §4.1.2); None when the body is absent (error responses)."""
    if len(raw) <= HEADER_LEN:
        return None
    body = _Body(raw)
    try:
        return body.cstring("message_id", 65)
    except PduError:
        # Tolerate a message_id without its NUL (seen from some SMSCs): take what is there.
        return raw[HEADER_LEN:].decode("latin-1")


def command_id_for(name: str) -> int:
    return _NAME_TO_ID[name]
