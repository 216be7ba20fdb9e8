"""Delivery receipts (DLR) carried in deliver_sm: detection, parsing, message-id matching.

Pure functions only. The receipt text format is only an example in SMPP 3.4 Appendix B
("id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
err:E Text: ..."), and vendors vary it (case, order, missing fields, 12-digit dates with seconds),
so the TLVs receipted_message_id / message_state / network_error_code (SMPP 3.4 §5.3.2.12,
§5.3.2.35, §5.3.2.31) win whenever they are present and the text is parsed tolerantly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

ReceiptState = Literal[
    "enroute",
    "delivered",
    "expired",
    "deleted",
    "undeliverable",
    "accepted",
    "unknown",
    "rejected",
    "skipped",
]

# Final states that mean the patron did not get the message (a DSN goes back to the library).
FINAL_FAILED: Final[frozenset[ReceiptState]] = frozenset(
    {"expired", "deleted", "undeliverable", "rejected"}
)
# "delivered" is the only final success; enroute/accepted/unknown/skipped are not final here.
FINAL_OK: Final[frozenset[ReceiptState]] = frozenset({"delivered"})

# SMPP 3.4 §5.2.12, esm_class bits 5-2 of a deliver_sm ("message type").
_ESM_TYPE_MASK: Final = 0x3C
ESM_SMSC_DELIVERY_RECEIPT: Final = 0x04
ESM_SME_DELIVERY_ACK: Final = 0x08
ESM_SME_MANUAL_ACK: Final = 0x10
ESM_INTERMEDIATE_NOTIFICATION: Final = 0x20

# SMPP 3.4 §5.2.28 message_state (9 SKIPPED is from SMPP 5.0; some 3.4 SMSCs send it).
_MESSAGE_STATES: Final[dict[int, ReceiptState]] = {
    1: "enroute",
    2: "delivered",
    3: "expired",
    4: "deleted",
    5: "undeliverable",
    6: "accepted",
    7: "unknown",
    8: "rejected",
    9: "skipped",
}

# Text "stat:" words (SMPP 3.4 Appendix B) plus spellings seen from real SMSCs.
_STAT_WORDS: Final[dict[str, ReceiptState]] = {
    "DELIVRD": "delivered",
    "DELIVERED": "delivered",
    "DELIVERD": "delivered",
    "EXPIRED": "expired",
    "DELETED": "deleted",
    "UNDELIV": "undeliverable",
    "UNDELIVERABLE": "undeliverable",
    "FAILED": "undeliverable",
    "ACCEPTD": "accepted",
    "ACCEPTED": "accepted",
    "UNKNOWN": "unknown",
    "REJECTD": "rejected",
    "REJECTED": "rejected",
    "ENROUTE": "enroute",
    "SKIPPED": "skipped",
}

# SMPP 3.4 §5.3.2.31 network_error_code, octet 1 = network type.
_NETWORK_TYPES: Final[dict[int, str]] = {
    1: "ANSI-136",
    2: "IS-95",
    3: "GSM",
    4: "ANSI-136 cause",
    5: "IS-95 cause",
    6: "ANSI-41",
    7: "SMPP",
    8: "SMSC",
}

_KEYS = r"id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text"
# A key is a whole word followed by ':'; a value is one token that is not itself "key:".
_FIELD_RE: Final = re.compile(
    rf"(?<![\w])(?P<key>{_KEYS})[ \t]*:[ \t]*(?P<value>(?!(?:{_KEYS})[ \t]*:)\S*)",
    re.IGNORECASE,
)
_TEXT_RE: Final = re.compile(r"(?<![\w])text[ \t]*:", re.IGNORECASE)
_MAX_ID_DIGITS: Final = 64  # SMPP message_id is at most 65 octets with the NUL


@dataclass(frozen=True)
class Receipt:
    message_id: str  # as given (TLV preferred, else text id:)
    state: ReceiptState
    error: str | None  # network_error_code (TLV) or err: field, as text; None for "no error"
    submit_date: str | None
    done_date: str | None
    raw_stat: str | None  # the text stat: word as given


def is_receipt(esm_class: int) -> bool:
    """True for an SMSC Delivery Receipt or an Intermediate Delivery Notification.

    SMPP 3.4 §5.2.12: message type 0x04 is the SMSC delivery receipt. 0x20 (intermediate
    notification) carries the same receipt fields with a non-final state such as ENROUTE, so it
    is parsed like a receipt and simply never finishes a message. 0x08/0x10 are acknowledgements
    from the recipient SME, not receipts (see is_sme_acknowledgement); smpplib's constant named
    for 0x08 is a trap.
    """
    return (esm_class & _ESM_TYPE_MASK) in (
        ESM_SMSC_DELIVERY_RECEIPT,
        ESM_INTERMEDIATE_NOTIFICATION,
    )


def is_sme_acknowledgement(esm_class: int) -> bool:
    """SME delivery (0x08) or manual/user (0x10) acknowledgement: neither a receipt nor a reply."""
    return (esm_class & _ESM_TYPE_MASK) in (ESM_SME_DELIVERY_ACK, ESM_SME_MANUAL_ACK)


def _norm_key(key: str) -> str:
    key = key.lower().replace("_", " ")
    if key in ("submitdate", "donedate"):
        return key[:-4] + " date"
    return key


def parse_receipt_text(text: str) -> dict[str, str]:
    """Fields of a receipt text, keys lower-case: id, sub, dlvrd, submit date, done date, stat,
    err, text. Missing fields are absent; the first occurrence of a key wins; "text" runs to the
    end of the string (it is the start of the original message and may hold anything).
    """
    fields: dict[str, str] = {}
    text_match = _TEXT_RE.search(text)
    head = text if text_match is None else text[: text_match.start()]
    for m in _FIELD_RE.finditer(head):
        key = _norm_key(m.group("key"))
        if key == "text":
            continue
        fields.setdefault(key, m.group("value"))
    if text_match is not None:
        fields["text"] = text[text_match.end() :].strip()
        # Fields after "text:" are not standard, but pick up any that are still missing.
        for m in _FIELD_RE.finditer(text[text_match.end() :]):
            key = _norm_key(m.group("key"))
            if key in ("id", "stat") and key not in fields:
                fields[key] = m.group("value")
    return fields


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip("\x00 \t\r\n")
    return value or None


def _network_error_text(code: bytes) -> str | None:
    if len(code) != 3:
        return code.hex() if code else None
    net, err = code[0], int.from_bytes(code[1:3], "big")
    if err == 0:
        return None
    return f"{_NETWORK_TYPES.get(net, f'network {net}')} error {err}"


def _err_field_text(err: str | None) -> str | None:
    err = _clean(err)
    # "err:000" is the conventional "no error"; keep anything else as given.
    if err is None or (err.isdigit() and int(err) == 0):
        return None
    return err


def parse_receipt(
    text: str,
    receipted_message_id: str | None,
    message_state: int | None,
    network_error_code: bytes | None = None,
) -> Receipt | None:
    """Receipt from a deliver_sm's text and TLVs; TLVs win. None when there is no id at all."""
    fields = parse_receipt_text(text)
    message_id = _clean(receipted_message_id) or _clean(fields.get("id"))
    if message_id is None:
        return None
    raw_stat = _clean(fields.get("stat"))
    state: ReceiptState
    if message_state is not None and message_state in _MESSAGE_STATES:
        state = _MESSAGE_STATES[message_state]
    elif raw_stat is not None:
        state = _STAT_WORDS.get(raw_stat.upper(), "unknown")
    else:
        state = "unknown"
    error = None
    if network_error_code is not None:
        error = _network_error_text(network_error_code)
    if error is None:
        error = _err_field_text(fields.get("err"))
    return Receipt(
        message_id=message_id,
        state=state,
        error=error,
        submit_date=_clean(fields.get("submit date")),
        done_date=_clean(fields.get("done date")),
        raw_stat=raw_stat,
    )


def _strip_zeros(s: str) -> str:
    return s.lstrip("0") or "0"


def id_variants(message_id: str) -> tuple[str, ...]:
    """The id as given plus alternative forms to match a receipt to its submit_sm_resp.

    Some SMSCs answer submit_sm with a hex id and put the same number in decimal in the receipt
    (or the other way round), sometimes zero-padded, sometimes upper-case. Order: as given,
    trimmed, lower-case, leading zeros stripped, hex->decimal, decimal->hex (lower, upper).
    An id of digits only is valid as both, so both conversions are included.
    """
    out: list[str] = []

    def add(v: str) -> None:
        if v and v not in out:
            out.append(v)

    out.append(message_id)
    s = message_id.strip("\x00 \t\r\n")
    add(s)
    add(s.lower())
    add(_strip_zeros(s.lower()) if s else s)
    if s and len(s) <= _MAX_ID_DIGITS:
        if all(c in "0123456789abcdefABCDEF" for c in s):
            add(str(int(s, 16)))
        if s.isascii() and s.isdigit():
            as_hex = format(int(s), "x")
            add(as_hex)
            add(as_hex.upper())
    return tuple(out)
