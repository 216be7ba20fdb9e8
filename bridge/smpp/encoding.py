"""SMS text <-> SMPP short_message bytes: alphabet choice, segmentation, UDH, MO decoding.

Pure functions only. Why we do our own segmentation: ``smpplib.gsm.make_parts`` splits the
GSM 03.38 escape pair of extension characters (``€`` = 0x1B 0x65) and UTF-16 surrogate pairs
across parts, and maps a backtick to ``§``; the ``gsm0338`` codec itself is correct, so we use
it for the character tables and cut the text ourselves, always between whole characters.

Budgets (3GPP TS 23.040 §9.2.3.24, 3GPP TS 23.038 §6.1.2): the TP-User-Data of one SMS is at
most 140 octets. GSM-7 packs septets, so 160 characters fit; a User Data Header is counted in
septets, rounded up (6-octet UDH -> 7 septets, leaving 153; 7-octet UDH -> 8, leaving 152).
UCS-2 uses 2 octets per UTF-16 code unit: 70 per single SMS, (140 - 6) // 2 = 67 with an 8-bit
reference UDH and (140 - 7) // 2 = 66 with a 16-bit one.

On the SMPP side (SMPP 3.4 §5.2.19 data_coding, §4.4.1 short_message) GSM text goes out with
data_coding 0x00 *unpacked*, one septet per octet: the SMSC packs it for the air interface, so
no fill bits are needed after the UDH here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec on import)

Coding = Literal["gsm7", "ucs2"]
ConcatMode = Literal["udh8", "udh16", "sar", "payload"]

# SMPP 3.4 §5.2.19 data_coding values we send or commonly receive.
DC_DEFAULT: Final = 0x00
DC_IA5: Final = 0x01
DC_LATIN1: Final = 0x03
DC_UCS2: Final = 0x08

# SMPP 3.4 §5.2.12: esm_class bit 6 = UDH Indicator.
ESM_UDHI: Final = 0x40

_GSM_CODEC: Final = "gsm03.38"
_ESC: Final = 0x1B

# Over-the-air limit of TP-User-Data (3GPP TS 23.040 §9.2.3.16 / §9.2.3.24).
MAX_UD_OCTETS: Final = 140
# The concatenation IE carries the total as one octet (TS 23.040 §9.2.3.24.1 / .24.8).
MAX_PARTS: Final = 255

# UDH sizes in octets including the UDHL byte: 05 00 03 ref total seq / 06 08 04 rh rl total seq.
_UDH8_OCTETS: Final = 6
_UDH16_OCTETS: Final = 7

_SINGLE: Final[dict[Coding, int]] = {"gsm7": 160, "ucs2": 70}


def _gsm_part_units(udh_octets: int) -> int:
    """Septets left for text after a UDH of ``udh_octets`` (UDH rounded up to whole septets)."""
    udh_septets = math.ceil(udh_octets * 8 / 7)
    return (MAX_UD_OCTETS * 8) // 7 - udh_septets


def _ucs2_part_units(udh_octets: int) -> int:
    return (MAX_UD_OCTETS - udh_octets) // 2


# Per-part budget in units (septets / UTF-16 code units) for each concatenation mode.
# "sar": the SMSC builds the UDH from the sar_* TLVs; sar_msg_ref_num is 16 bits (SMPP 3.4
# §5.3.2.22), so budget for the larger 16-bit reference IE to be safe whatever the SMSC picks.
# "payload": the SMSC segments message_payload itself; we *count* it as udh8 would.
_PER_PART: Final[dict[ConcatMode, dict[Coding, int]]] = {
    "udh8": {"gsm7": _gsm_part_units(_UDH8_OCTETS), "ucs2": _ucs2_part_units(_UDH8_OCTETS)},
    "udh16": {"gsm7": _gsm_part_units(_UDH16_OCTETS), "ucs2": _ucs2_part_units(_UDH16_OCTETS)},
    "sar": {"gsm7": _gsm_part_units(_UDH16_OCTETS), "ucs2": _ucs2_part_units(_UDH16_OCTETS)},
    "payload": {"gsm7": _gsm_part_units(_UDH8_OCTETS), "ucs2": _ucs2_part_units(_UDH8_OCTETS)},
}


def _build_gsm_tables() -> tuple[dict[str, int], dict[int, str], dict[int, str]]:
    """Septet cost per character, and decode tables, taken from the gsm0338 codec."""
    cost: dict[str, int] = {}
    basic: dict[int, str] = {}
    ext: dict[int, str] = {}
    for septet in range(0x80):
        if septet == _ESC:
            continue
        ch = bytes((septet,)).decode(_GSM_CODEC)
        basic[septet] = ch
        cost[ch] = 1
    for septet in range(0x80):
        try:
            ch = bytes((_ESC, septet)).decode(_GSM_CODEC)
        except UnicodeDecodeError:
            continue
        ext[septet] = ch
        cost.setdefault(ch, 2)
    # U+001B itself is in the codec's table (as the escape code point) but cannot round-trip:
    # a receiver reads it as the start of an escape sequence. Treat it as non-GSM.
    cost.pop("\x1b", None)
    return cost, basic, ext


_GSM_COST, _GSM_BASIC, _GSM_EXT = _build_gsm_tables()

# Whole-text forms of the tables, so that the common case (a notice that fits one segment) is
# checked and counted by C code instead of a Python call per character: the dispatcher and the
# shaper count every text several times (footer budget, segments, truncation).
_NOT_GSM: Final = re.compile("[^" + "".join(re.escape(ch) for ch in _GSM_COST) + "]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# The extension-table characters (two septets each): counted, not translated, by _units.
_EXTENSION: Final = re.compile(
    "[" + "".join(re.escape(ch) for ch, cost in _GSM_COST.items() if cost == 2) + "]"
)
_ESC_BYTE: Final = bytes((_ESC,))
# Septet (as the latin-1 character of the same value) to its basic-table character.
_GSM_DECODE: Final = str.maketrans({chr(septet): ch for septet, ch in _GSM_BASIC.items()})
# The gsm0338 codec, character by character, as one translation table (its encoder is a Python
# call per character): each GSM character to its septet, or ESC and a septet, one per byte.
_GSM_ENCODE: Final = str.maketrans(
    {ch: ch.encode(_GSM_CODEC).decode("latin-1") for ch in _GSM_COST}
)


class TooManySegments(ValueError):
    """The text needs more SMS segments than allowed; ``reason`` is plain words for staff."""

    def __init__(self, reason: str, needed: int | None = None, allowed: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.needed = needed
        self.allowed = allowed


@dataclass(frozen=True)
class Part:
    short_message: bytes  # complete short_message field: UDH (if any) + payload
    # (sar_msg_ref_num, sar_total_segments, sar_segment_seqnum) for mode "sar"
    sar: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class EncodedSms:
    coding: Coding
    data_coding: int
    esm_class: int  # ESM_UDHI when parts carry a UDH, else 0
    parts: tuple[Part, ...]
    message_payload: bytes | None  # mode "payload": whole text in the TLV, parts == ()
    units: int  # septets (gsm7) or UTF-16 code units (ucs2) of the (possibly truncated) text
    truncated: bool

    @property
    def segments(self) -> int:
        """Number of SMS the handset receives (for "payload": counted as udh8 would split it)."""
        if self.message_payload is None:
            return len(self.parts)
        if self.coding == "gsm7":
            text = _decode_gsm(self.message_payload)
        else:
            text = self.message_payload.decode("utf-16-be", errors="replace")
        return len(_split(text, self.coding, "udh8"))


@dataclass(frozen=True)
class ConcatInfo:
    ref: int
    total: int
    seq: int
    ref_bits: int  # 8 or 16 (SAR counts as 16)


def _sanitize(text: str) -> str:
    """Replace lone surrogates (e.g. from surrogateescape'd mail bytes) with U+FFFD.

    They cannot be encoded as UTF-16 and would otherwise crash the dispatcher on one bad notice.
    """
    return _SURROGATE.sub("\ufffd", text)


def _char_units(ch: str, coding: Coding) -> int:
    if coding == "gsm7":
        try:
            return _GSM_COST[ch]
        except KeyError:
            raise ValueError(
                f"character U+{ord(ch):04X} is not in the GSM 03.38 alphabet"
            ) from None
    # Characters outside the BMP take a UTF-16 surrogate pair: two code units.
    return 2 if ord(ch) > 0xFFFF else 1


def choose_coding(text: str) -> Coding:
    """GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table."""
    return "gsm7" if _NOT_GSM.search(text) is None else "ucs2"


def _units(text: str, coding: Coding) -> int:
    """`count_units` of a text already sanitized (no lone surrogates)."""
    if coding == "gsm7":
        bad = _NOT_GSM.search(text)
        if bad is not None:
            _char_units(bad.group(), coding)  # raises the ValueError that names the character
        # One septet each, and one more per extension character (an escape, 23.038 §6.2.1.1).
        return len(text) + len(_EXTENSION.findall(text))
    # Characters outside the BMP take a UTF-16 surrogate pair: two code units.
    return len(text.encode("utf-16-le")) // 2


def count_units(text: str, coding: Coding) -> int:
    """Septets (gsm7, extension characters count 2) or UTF-16 code units (ucs2, emoji count 2).

    Raises ValueError when ``coding`` is "gsm7" and the text has a non-GSM character.
    """
    return _units(_sanitize(text), coding)


def _split(text: str, coding: Coding, concat: ConcatMode) -> list[str]:
    """Greedy split between whole characters; greedy is minimal for in-order packing.

    Never splits an escape pair (one GSM character) or a surrogate pair (one Python character).
    """
    if _units(text, coding) <= _SINGLE[coding]:
        return [text]
    units = [_char_units(ch, coding) for ch in text]
    limit = _PER_PART[concat][coding]
    chunks: list[str] = []
    start = 0
    used = 0
    for i, u in enumerate(units):
        if used + u > limit:
            chunks.append(text[start:i])
            start = i
            used = 0
        used += u
    chunks.append(text[start:])
    return chunks


def segment_count(text: str, coding: Coding | None = None, concat: ConcatMode = "udh8") -> int:
    """SMS segments the text needs (not capped at 255). An empty text is one (empty) SMS.

    ``coding`` None picks it with choose_coding; "gsm7" with a non-GSM text raises ValueError.
    """
    text = _sanitize(text)
    if coding is None:
        coding = choose_coding(text)
    return len(_split(text, coding, concat))


def _encode_text(text: str, coding: Coding) -> bytes:
    if coding == "gsm7":
        if _NOT_GSM.search(text) is not None:
            return text.encode(_GSM_CODEC)  # raises the codec's own error for the character
        return text.translate(_GSM_ENCODE).encode("latin-1")
    return text.encode("utf-16-be")


def _udh(concat: ConcatMode, ref: int, total: int, seq: int) -> bytes:
    if concat == "udh8":
        # IEI 0x00: concatenated short messages, 8-bit reference (TS 23.040 §9.2.3.24.1)
        return bytes((0x05, 0x00, 0x03, ref & 0xFF, total, seq))
    # IEI 0x08: concatenated short messages, 16-bit reference (TS 23.040 §9.2.3.24.8)
    return bytes((0x06, 0x08, 0x04, (ref >> 8) & 0xFF, ref & 0xFF, total, seq))


def _truncate(
    text: str, coding: Coding, concat: ConcatMode, allowed: int, marker: str
) -> tuple[str, Coding]:
    """Longest prefix of ``text`` that, followed by ``marker``, fits in ``allowed`` segments."""
    if choose_coding(marker) == "ucs2":
        coding = "ucs2"

    def fits(candidate: str) -> bool:
        return len(_split(candidate, coding, concat)) <= allowed

    if not fits(marker):
        # A marker longer than the whole budget: cut the marker itself.
        lo, hi = 0, len(marker)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(marker[:mid]):
                lo = mid
            else:
                hi = mid - 1
        return marker[:lo], coding
    # The count is monotonic in the prefix length, so binary search the cut point.
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(text[:mid] + marker):
            lo = mid
        else:
            hi = mid - 1
    # Trailing whitespace before "..." only wastes a septet the patron cannot see.
    return text[:lo].rstrip() + marker, coding


def encode_sms(
    text: str,
    *,
    ref: int,
    concat: ConcatMode = "udh8",
    max_segments: int | None = None,
    overflow: Literal["truncate", "fail"] = "truncate",
    truncation_marker: str = "...",
) -> EncodedSms:
    """Encode ``text`` for submit_sm.

    ``ref`` is the concatenation reference from the caller's persistent counter (``ref & 0xFF``
    for udh8, ``ref & 0xFFFF`` for udh16/sar). A single-part message carries no UDH/SAR. When
    the text needs more than ``max_segments`` (and never more than 255) segments: "truncate"
    cuts it, ending with ``truncation_marker``; "fail" raises TooManySegments.
    """
    if max_segments is not None and max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    text = _sanitize(text)
    coding = choose_coding(text)
    allowed = MAX_PARTS if max_segments is None else min(max_segments, MAX_PARTS)
    chunks = _split(text, coding, concat)
    truncated = False
    if len(chunks) > allowed:
        if overflow == "fail":
            who = "this library allows" if allowed < MAX_PARTS else "an SMS can be split into"
            raise TooManySegments(
                f"the text needs {len(chunks)} SMS segments; {who} at most {allowed}",
                needed=len(chunks),
                allowed=allowed,
            )
        text, coding = _truncate(text, coding, concat, allowed, truncation_marker)
        chunks = _split(text, coding, concat)
        truncated = True

    data_coding = DC_DEFAULT if coding == "gsm7" else DC_UCS2
    units = _units(text, coding)

    if concat == "payload":
        # SMPP 3.4 §5.3.2.32 message_payload: the SMSC does the segmentation.
        return EncodedSms(
            coding=coding,
            data_coding=data_coding,
            esm_class=0,
            parts=(),
            message_payload=_encode_text(text, coding),
            units=units,
            truncated=truncated,
        )

    total = len(chunks)
    if total == 1:
        return EncodedSms(
            coding=coding,
            data_coding=data_coding,
            esm_class=0,
            parts=(Part(_encode_text(chunks[0], coding)),),
            message_payload=None,
            units=units,
            truncated=truncated,
        )

    parts: list[Part] = []
    for seq, chunk in enumerate(chunks, start=1):
        payload = _encode_text(chunk, coding)
        if concat == "sar":
            # SMPP 3.4 §5.3.2.22-24: the SMSC builds the UDH from these TLVs.
            parts.append(Part(payload, sar=(ref & 0xFFFF, total, seq)))
        else:
            parts.append(Part(_udh(concat, ref, total, seq) + payload))
    return EncodedSms(
        coding=coding,
        data_coding=data_coding,
        esm_class=0 if concat == "sar" else ESM_UDHI,
        parts=tuple(parts),
        message_payload=None,
        units=units,
        truncated=truncated,
    )


def _decode_gsm(payload: bytes) -> str:
    """Tolerant GSM 03.38 decode of unpacked septets.

    TS 23.038 §6.2.1.1: an escape followed by a code with no extension character is shown as
    the basic-table character; 0x1B 0x1B (reserved) is shown as a space. A trailing lone escape
    is dropped. Bytes above 0x7F are masked to 7 bits (callers route those to latin-1 first).
    """
    if _ESC_BYTE not in payload and payload.isascii():
        # The usual receipt or reply: no escapes, every byte a septet. One table lookup in C.
        return payload.decode("latin-1").translate(_GSM_DECODE)
    out: list[str] = []
    i = 0
    n = len(payload)
    while i < n:
        septet = payload[i] & 0x7F
        i += 1
        if septet != _ESC:
            out.append(_GSM_BASIC[septet])
            continue
        if i >= n:
            break
        nxt = payload[i] & 0x7F
        i += 1
        if nxt == _ESC:
            out.append(" ")
        else:
            out.append(_GSM_EXT.get(nxt, _GSM_BASIC[nxt]))
    return "".join(out)


def _decode_gsm_or_latin1(payload: bytes) -> str:
    # Some SMSCs label Latin-1 as data_coding 0 ("SMSC default"); septets never exceed 0x7F.
    if not payload.isascii():
        return payload.decode("latin-1")
    return _decode_gsm(payload)


def decode_payload(data_coding: int, payload: bytes) -> str:
    """Decode an MO/deliver_sm short_message (UDH already removed). Never raises."""
    if data_coding == DC_DEFAULT:
        return _decode_gsm_or_latin1(payload)
    if data_coding == DC_IA5:
        return payload.decode("ascii", errors="replace")
    if data_coding == DC_LATIN1:
        return payload.decode("latin-1")
    if data_coding == DC_UCS2:
        # errors="replace" also covers an odd trailing octet and unpaired surrogates.
        return payload.decode("utf-16-be", errors="replace")
    if data_coding in (0x02, 0x04):  # 8-bit binary (SMPP 3.4 §5.2.19)
        return payload.decode("latin-1")
    # Values outside SMPP's own table are often GSM 03.38 DCS passed through (TS 23.038 §4):
    # general data coding group 00xx (bits 3-2 = alphabet) and group 1111 (bit 2 = 8-bit).
    alphabet: int | None = None
    if 0x10 <= data_coding <= 0x3F:
        alphabet = (data_coding >> 2) & 0x03
    elif data_coding & 0xF0 == 0xF0:
        alphabet = (data_coding >> 2) & 0x01
    if alphabet == 2:
        return payload.decode("utf-16-be", errors="replace")
    if alphabet == 1:
        return payload.decode("latin-1")
    return _decode_gsm_or_latin1(payload)


def split_udh(short_message: bytes, esm_class: int) -> tuple[ConcatInfo | None, bytes]:
    """Split a UDH off ``short_message`` when esm_class has UDHI (SMPP 3.4 §5.2.12).

    Returns concat info from IE 0x00 (8-bit ref) or 0x08 (16-bit ref), TS 23.040 §9.2.3.24, and
    the payload after the UDH. A malformed UDH gives (None, original bytes); a well-formed UDH
    whose concat IE is absent or inconsistent gives (None, payload). Never raises.
    """
    if not esm_class & ESM_UDHI or not short_message:
        return None, short_message
    udhl = short_message[0]
    end = 1 + udhl
    if udhl == 0 or end > len(short_message):
        return None, short_message
    info: ConcatInfo | None = None
    pos = 1
    while pos < end:
        if pos + 2 > end:
            return None, short_message
        iei = short_message[pos]
        iel = short_message[pos + 1]
        data = short_message[pos + 2 : pos + 2 + iel]
        if pos + 2 + iel > end:
            return None, short_message
        pos += 2 + iel
        if info is not None:
            continue
        if iei == 0x00 and iel == 3:
            info = _concat(data[0], data[1], data[2], 8)
        elif iei == 0x08 and iel == 4:
            info = _concat((data[0] << 8) | data[1], data[2], data[3], 16)
    return info, short_message[end:]


def _concat(ref: int, total: int, seq: int, bits: int) -> ConcatInfo | None:
    # TS 23.040 §9.2.3.24.1: total 0 or seq outside 1..total means "ignore the IE".
    if total < 1 or not 1 <= seq <= total:
        return None
    return ConcatInfo(ref=ref, total=total, seq=seq, ref_bits=bits)


def concat_from_sar(ref: int | None, total: int | None, seq: int | None) -> ConcatInfo | None:
    """Concat info from the sar_* TLVs of a deliver_sm (SMPP 3.4 §5.3.2.22-24)."""
    if ref is None or total is None or seq is None:
        return None
    return _concat(ref & 0xFFFF, total, seq, 16)
