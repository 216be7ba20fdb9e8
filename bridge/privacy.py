"""Masking patron numbers in free text (pure): the one path every log line and default CLI
output goes through.

Values the code knows to be numbers are masked where they are logged
(``addressing.mask_msisdn``). Free text is different: an SMTP refusal quotes the number the
ILS wrote (``550 5.7.1 +1 202-555-0144 opted out ...``), a recipient address carries it
(``12025550144@sms.example.org``), an exception message may repeat it. ``mask_text`` finds
anything that looks like a phone number in such text and masks it the same way, so a line can
be logged whole (the reason is kept, no cut mid-word) without leaking the number.
``MaskingFilter`` applies it to every log record at INFO and above, as a safety net under the
explicit masking.

What counts as a number (chosen so that ids, dates, addresses and sizes in our log lines stay
readable):

* a run of digits, optionally with ``+`` in front and single spaces, hyphens, dots or
  parentheses between groups (``+1 202-555-0144``, ``(202) 555-0144``, ``2025550144``),
  holding 7 to 15 digits (E.164 allows 15; 7 is the shortest subscriber number a library
  notice is sent to in practice);
* not part of a word (``abc1234567``, hex ids) and not followed by a letter;
* not a date (``2026-11-23``), a time, an IPv4 address or a decimal fraction;
* not the value of an ``...id=`` or ``...id:`` field (queue ids, SMSC message ids: these
  are what lets an operator follow a message, and are no personal data).
"""

from __future__ import annotations

import logging
import re
from typing import Final

from bridge.addressing import mask_msisdn

# A candidate: optional "+", optional "(", a digit, then digits and separators, ending in a
# digit (or the ")" of an area code is never last). Spaces are allowed only between groups,
# as in written numbers; splitting into several numbers is done in _split below.
_CANDIDATE: Final = re.compile(r"(?<![\w+])\+?\(?\d(?:[\d().\-]| (?=[(\d]))*\d")
_NOT_A_NUMBER: Final = (
    re.compile(r"\d{4}-\d{2}-\d{2}"),  # ISO date
    re.compile(r"\d{1,2}:\d{2}(:\d{2})?"),  # time
    re.compile(r"\d{1,3}(\.\d{1,3}){3}"),  # IPv4 address
    re.compile(r"\d+\.\d+"),  # decimal fraction: a duration, a rate
)
_ID_FIELD: Final = re.compile(r"id[=:]\s*$", re.IGNORECASE)
_MIN_DIGITS: Final = 7
_ASCII_DIGIT: Final = re.compile(r"[0-9]")
_MAX_DIGITS: Final = 15
# Written numbers put a space only after a short group ("+1 202 555 0144", "+44 20 7946 0958",
# "(202) 555-0144"); a space after anything else separates two tokens ("2025550143
# 2025550144"), which are masked one by one, not seen as one run too long to be a number.
_SHORT_GROUP: Final = re.compile(r"\+?\d{1,4}|\(\d{1,4}\)")


def _split(run: str) -> list[str]:
    """Cut a candidate at every space that does not follow a short group ("+1", "202",
    "(202)"): "550 5.7.1 8002255288" is a reply code, a status and a number, not one number."""
    parts: list[str] = []
    current = ""
    for chunk in run.split(" "):
        current = f"{current} {chunk}" if current else chunk
        if not _SHORT_GROUP.fullmatch(chunk):
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    return parts


def _mask_one(token: str) -> str:
    digits = "".join(c for c in token if c.isdigit())
    if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        return token
    if any(pattern.fullmatch(token) for pattern in _NOT_A_NUMBER):
        return token
    return mask_msisdn(("+" if token.startswith("+") else "") + digits)


def mask_text(text: str) -> str:
    """``text`` with every phone-number-looking token masked like ``mask_msisdn`` does:
    ``reply=550 5.7.1 +1 202-555-0144 opted out`` -> ``reply=550 5.7.1 +1********44 opted out``,
    ``12025550144@sms.example.org`` -> ``*********44@sms.example.org``. Never raises."""
    if not text:
        return text
    # isascii() is constant time on str; an ASCII digit is then the only kind there can be.
    if text.isascii():
        if _ASCII_DIGIT.search(text) is None:
            return text
    elif not any(c.isdigit() for c in text):
        return text
    out: list[str] = []
    last = 0
    for match in _CANDIDATE.finditer(text):
        start, end = match.span()
        if end - start < _MIN_DIGITS:
            # Fewer characters than a number has digits: _mask_one would leave every piece as
            # it is, so skip the context checks (most candidates in a log line: "550", ids).
            continue
        if end < len(text) and (text[end].isalpha() or text[end] == "_"):
            continue  # part of a word or an identifier: "1234567abc"
        if _ID_FIELD.search(text, max(0, start - 40), start):
            continue
        pieces = _split(match.group())
        masked = " ".join(_mask_one(piece) for piece in pieces)
        out.append(text[last:start])
        out.append(masked)
        last = end
    out.append(text[last:])
    return "".join(out)


class MaskingFilter(logging.Filter):
    """Masks numbers in every record at INFO and above (message, arguments and exception
    text). DEBUG is left whole: it is for a developer's own test traffic."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let logging report it as usual
            return True
        record.msg = mask_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        return True
