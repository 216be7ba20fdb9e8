"""MIME email -> SMS text, pure functions.

``parse_notice`` takes the raw bytes an ILS (or a staff mail client) sent and returns the text a
patron should see, plus the few headers the rest of the bridge needs. It never raises anything
but ``NoTextError``: the bytes come from outside, and a crash here would turn into a retry loop
instead of a clear ``550 5.6.0`` answer (``NoticeLimitError``, a ``NoTextError``, for a notice over
one of the ``ParseLimits``).

Cost: every pass is linear in the input, and the input is bounded before the stdlib parser sees
it (size, header section, header field, multipart count), because the caller runs this in a
worker thread that cannot be interrupted: its guarantee of finishing soon is this module's
linearity. The stdlib paths that are not linear are kept away from hostile input: HTML goes
through this module's own tokenizer, not html.parser (see ``_HTML_TOKEN``), and the feed parser,
which checks every line against every open multipart boundary, gets at most
``PARSE_MAX_MULTIPARTS`` of them.

Text rules, in order:

1. Part choice: the first ``text/plain`` part that is not an attachment; when it is missing or
   yields no text, the first ``text/html`` part, converted by ``html_to_text``. Attached
   messages (``message/*``, e.g. forwards and bounces) are not searched.
2. Charset decoding never fails: unknown or missing charsets are read as UTF-8, falling back to
   windows-1252; ``iso-8859-1`` / ``us-ascii`` labels get the same treatment because mail
   labelled that way is routinely windows-1252 or UTF-8 (the WHATWG Encoding Standard maps the
   latin-1 labels to windows-1252 for the same reason).
3. Tenant delimiters (start delimiter, end marker), then quoted replies, then signatures.
4. ``normalise_text``: typographic punctuation to GSM-7, optional accent folding, whitespace.
   Lines of one paragraph are joined with a space (ILS templates and mail clients hard-wrap at
   ~72 columns, which reads badly on a phone) and paragraphs are separated by a single ``"\\n"``
   (costs the same one septet as a space, and keeps a heading or a list of holds apart).
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.errors
import email.policy
import email.utils
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from functools import lru_cache
from html import unescape as html_unescape
from types import MappingProxyType
from typing import Literal

from bridge import defaults

__all__ = [
    "NoTextError",
    "NoticeLimitError",
    "ParseLimits",
    "ParsedNotice",
    "SubjectMode",
    "TextOptions",
    "gsm_punctuation",
    "html_to_text",
    "normalise_text",
    "parse_notice",
]

logger = logging.getLogger(__name__)

SubjectMode = Literal["ignore", "prepend", "only"]


@dataclass(frozen=True)
class TextOptions:
    """Per-tenant rules for turning a notice email into SMS text."""

    # ignore: use the subject only when the body has no text; prepend: subject, newline, body;
    # only: the subject alone (some ILS templates put the whole notice in the subject).
    subject: SubjectMode = "ignore"
    # Text before the first line starting with this is dropped, and so is the delimiter itself
    # (the rest of its line is kept: OPLIN-style templates write "***Library: ...").
    start_delimiter: str | None = None
    # Text from the first line starting with this is dropped.
    end_marker: str | None = None
    # "-- " separators, mobile signatures ("Sent from my iPhone") and a trailing block that
    # starts with the sender's own name.
    strip_signature: bool = True
    # Outlook "From:/Sent:" blocks, "On ... wrote:", "-----Original Message-----", "> " lines.
    strip_quoted: bool = True
    # Fold accented letters that GSM 03.38 lacks (á -> a) and keep those it has (é, ñ, ü).
    fold_accents: bool = False
    # Curly quotes, dashes, ellipsis, odd spaces, bullets -> GSM-7 equivalents.
    map_punctuation: bool = True
    # Hard cap on the final text (a defence against huge bodies, not a segment limit).
    max_chars: int = 1600


@dataclass(frozen=True)
class ParsedNotice:
    """What the bridge keeps from one notice email."""

    text: str  # final SMS text: non-empty, no control characters except "\n"
    subject: str  # decoded subject ('' when none)
    message_id: str | None  # Message-ID value, first <...> token when there is one
    in_reply_to: str | None  # first <...> token of In-Reply-To
    references: tuple[str, ...]  # <...> tokens of References, in order
    from_addr: str | None  # header From address (addr-spec only)
    auto_submitted: str | None  # Auto-Submitted value (RFC 3834), e.g. "auto-generated"
    headers: Mapping[str, str]  # lower-case name -> decoded, unfolded value, first occurrence


class NoTextError(ValueError):
    """The email has no text that could be sent; ``reason`` goes into ``550 5.6.0 <reason>``."""

    def __init__(self, reason: str) -> None:
        # One SMTP reply line: printable ASCII only (RFC 5321 §4.2), bounded length.
        cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in reason)
        self.reason = cleaned[:400]
        super().__init__(self.reason)


class NoticeLimitError(NoTextError):
    """The notice is over one of the ``ParseLimits``; the edge answers ``554 <status> <reason>``.

    A permanent refusal: the same bytes would be refused again, and the reason says what to
    change (RFC 3463 §3.6 5.6.0 "other media error"; 5.3.4 "message too big for system")."""

    def __init__(self, reason: str, status: str = "5.6.0") -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class ParseLimits:
    """Input bounds that keep one parse short (see the module docstring and bridge/defaults.py)."""

    max_bytes: int = defaults.SMTP_MAX_MESSAGE_BYTES
    max_header_bytes: int = defaults.PARSE_MAX_HEADER_BYTES
    max_header_field_bytes: int = defaults.PARSE_MAX_HEADER_FIELD_BYTES
    max_multiparts: int = defaults.PARSE_MAX_MULTIPARTS
    max_mime_parts: int = defaults.PARSE_MAX_MIME_PARTS
    max_html_quote_depth: int = defaults.PARSE_MAX_HTML_QUOTE_DEPTH


_DEFAULT_OPTIONS = TextOptions()
_DEFAULT_LIMITS = ParseLimits()

# Exceptions the stdlib email and html packages have been seen to raise on malformed input
# instead of recording a defect (e.g. IndexError/AttributeError from the header value parser,
# LookupError for unknown charsets, binascii.Error (a ValueError) from base64,
# AssertionError from html.parser, RecursionError on absurd nesting).
_PARSER_ERRORS: tuple[type[BaseException], ...] = (
    email.errors.MessageError,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    IndexError,
    AssertionError,
    RecursionError,
)

# A notice is a few hundred characters; anything beyond this is cut before the text passes
# are run, so a multi-megabyte body costs bounded time.
_MAX_WORK_CHARS = 500_000
# A second guard behind PARSE_MAX_MULTIPARTS (which counts what the raw bytes declare).
_MAX_MIME_DEPTH = 20

# The end of the header section (RFC 5322 §2.1: the first empty line), a field boundary (a line
# break not followed by folding whitespace, §2.2.3), and a multipart Content-Type field, folded
# or not, in any case (RFC 2045 §5.1: type names are case-insensitive).
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_BREAK = re.compile(rb"\r?\n(?![ \t])")
_MULTIPART_FIELD = re.compile(rb"content-type[ \t]*:\s*multipart/", re.IGNORECASE)

# --------------------------------------------------------------------------------------------
# GSM 03.38 alphabet (3GPP TS 23.038 §6.2.1): basic set and the extension table (each of those
# costs two septets). Escape (0x1B) and form feed are not text.
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = "^{}\\[~]|€"
_GSM_CHARS = frozenset(_GSM_BASIC + _GSM_EXTENSION)

# Typographic characters word processors and HTML editors insert. One of them outside GSM-7
# forces the whole message into UCS-2 (70 instead of 160 characters per segment).
_PUNCTUATION_MAP: dict[int, str] = {
    **dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032\u2035\u00b4\u02bc`\u2039\u203a"), "'"),
    **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb"), '"'),
    **dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-"),
    **dict.fromkeys(map(ord, "\u2022\u2023\u2043\u2219\u25cf\u25e6\u25aa\u25ab\u25a0"), "-"),
    **dict.fromkeys(
        map(ord, "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"),
        " ",
    ),
    **dict.fromkeys(map(ord, "\u200a\u202f\u205f\u3000"), " "),
    ord("\u2026"): "...",
    ord("\u2044"): "/",
    ord("\u2215"): "/",
    ord("\u00d7"): "x",
    ord("\u2122"): "TM",
    ord("\u00a9"): "(C)",
    ord("\u00ae"): "(R)",
}

# Letters with no decomposition that still have an obvious GSM spelling.
_FOLD_EXTRA = {"œ": "oe", "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i"}

# Control and invisible characters. C0/C1 controls other than tab/newline, soft hyphen,
# zero-width space, bidi controls (which can disguise a URL), BOM and lone surrogates are
# deleted. ZWJ/ZWNJ stay: emoji sequences and Persian text need them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")

# --------------------------------------------------------------------------------------------
# Quoted replies and signatures.
_ORIGINAL_MESSAGE = re.compile(
    r"-{2,}\s*(original message|forwarded message|mensaje original)\s*-{2,}", re.IGNORECASE
)
_UNDERSCORE_RULE = re.compile(r"_{8,}")  # Outlook's separator above the header block
_REPLY_INTRO = re.compile(
    r"(on|el|le|am)\s.{0,300}\s(wrote|escribi[oó]|a\s+[eé]crit|schrieb)\s*:", re.IGNORECASE
)
_REPLY_INTRO_START = re.compile(r"(on|el|le|am)\s", re.IGNORECASE)
_OUTLOOK_FROM = re.compile(r"\*?(from|de|von)\s*:\*?\s*\S", re.IGNORECASE)
_OUTLOOK_SENT = re.compile(
    r"\*?(sent|date|enviado|fecha|envoy[eé]|gesendet|datum)\s*:\*?\s*\S", re.IGNORECASE
)
_MOBILE_SIGNATURE = re.compile(
    r"(sent from my \S.{0,50}"
    r"|sent from (outlook|mail|yahoo mail|aol mail|gmail|samsung|mobile)\b.{0,50}"
    r"|get outlook for (ios|android).{0,10}"
    r"|enviado desde mi \S.{0,50})",
    re.IGNORECASE,
)
_VALEDICTION = re.compile(
    r"(thanks|thank you|many thanks|regards|best|best regards|kind regards|warm regards"
    r"|cheers|sincerely|saludos|gracias|atentamente)\s*[,.!]?",
    re.IGNORECASE,
)
_MAX_SIGNATURE_LINES = 6
_MAX_SIGNATURE_LINE_CHARS = 80

# RFC 2047 encoded word; the charset may carry an RFC 2231 language suffix ("utf-8*en").
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_HEADER_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MSG_ID = re.compile(r"<[^<>\s]+>")

# Quoted-printable soft line break (RFC 2045 §6.7 rule 5) and an encoded octet (rule 1;
# upper-case hex only, as the RFC requires of encoders, to limit false positives in 7bit text).
_SOFT_BREAK = re.compile(rb"=\r?\n")
# A Content-Type of the form nearly every ILS writes, "text/plain; charset=utf-8" (RFC 2045
# §5.1, the charset a token or a quoted token, no other parameter): its charset is read
# without the stdlib's parameter parsing, which costs more than the rest of reading the part.
# Anything else takes get_content_charset.
_PLAIN_CHARSET = re.compile(
    r"[ \t]*[A-Za-z0-9.+_-]+/[A-Za-z0-9.+_-]+[ \t]*;[ \t]*(?i:charset)[ \t]*=[ \t]*"
    r'(?P<q>"?)(?P<charset>[A-Za-z0-9_.:+-]+)(?P=q)[ \t]*'
)
_QP_OCTET = re.compile(rb"=([0-9A-F]{2})")


# ============================================================================================
# Public API


def parse_notice(
    raw: bytes, opts: TextOptions = _DEFAULT_OPTIONS, limits: ParseLimits = _DEFAULT_LIMITS
) -> ParsedNotice:
    """Parse a notice email into SMS text and headers; raises ``NoTextError`` only
    (``NoticeLimitError`` when the notice is over one of ``limits``)."""
    try:
        _check_bounds(raw, limits)
        return _parse(raw, opts, limits)
    except NoTextError:
        raise
    except _PARSER_ERRORS as exc:
        # The stdlib parser is the boundary with untrusted bytes; an error inside it means
        # the message is malformed, which is the sender's problem to fix, not a retry.
        logger.debug("unparseable email: %s", type(exc).__name__)
        raise NoTextError(
            "the message could not be parsed as an email; send a plain-text MIME message"
        ) from exc


def gsm_punctuation(text: str) -> str:
    """Map typographic punctuation and odd spaces to their GSM-7 equivalents."""
    # ASCII text (the usual notice; isascii() is constant time on str) holds no mapped
    # character but the backtick: str.translate with a dict costs a lookup per character.
    if text.isascii() and "`" not in text:
        return text
    return text.translate(_PUNCTUATION_MAP)


def normalise_text(text: str, opts: TextOptions) -> str:
    """Punctuation map, accent folding and whitespace folding (see the module docstring).

    The result has no control characters other than ``"\\n"``, no blank lines and no leading or
    trailing whitespace on any line.
    """
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    # NFC first so that a decomposed "e" + U+0301 becomes the GSM character "é".
    text = unicodedata.normalize("NFC", text)
    if opts.map_punctuation:
        text = gsm_punctuation(text)
    if opts.fold_accents:
        text = "".join(_fold_char(ch) for ch in text)
    return _fold_whitespace(text)


def html_to_text(html: str, max_quote_depth: int = defaults.PARSE_MAX_HTML_QUOTE_DEPTH) -> str:
    """Render HTML as plain text: block elements become paragraph breaks (a blank line),
    ``<br>`` a line break; ``<style>``, ``<script>``, ``<head>`` and ``<title>`` are dropped;
    entities are decoded and ``&nbsp;`` becomes a space; ``<blockquote>`` lines get a ``"> "``
    prefix so the quoted-reply rules can recognise them. Never raises; linear in the input.
    Quotes nested deeper than ``max_quote_depth`` end the text there."""
    text, _ = _html_text(html, max_quote_depth)
    return text


def _html_text(html: str, max_quote_depth: int) -> tuple[str, bool]:
    """``html_to_text``, and whether the quote nesting went over ``max_quote_depth`` (the text
    is then what came before)."""
    out = _TextExtractor(max_quote_depth)
    pos = 0
    try:
        while True:
            match = _HTML_TOKEN.search(html, pos)
            if match is None:
                break
            pos = match.end()
            if match.lastgroup == "text":
                out.data(html_unescape(match.group(0)))
            elif match.lastgroup == "start":
                tag = match.group("start").lower()
                out.start(tag, self_closing=match.group(0).endswith("/>"))
                if tag in _RAW_TEXT_TAGS:
                    # Script and style content is not markup (WHATWG §13.2.5.3, raw text
                    # state): it runs to the matching end tag, or to the end.
                    end = _RAW_TEXT_END[tag].search(html, pos)
                    if end is None:
                        break
                    pos = end.start()
            elif match.lastgroup == "end":
                out.end(match.group("end").lower())
            elif match.lastgroup == "lt":
                out.data("<")
            # comments, declarations, processing instructions: nothing to show
    except _QuoteTooDeep:
        return out.text(), True
    return out.text(), False


# ============================================================================================
# Parsing


def _check_bounds(raw: bytes, limits: ParseLimits) -> None:
    """Refuse, before the stdlib parser sees them, the inputs that would make it slow."""
    if len(raw) > limits.max_bytes:
        raise NoticeLimitError(
            f"the message is {len(raw)} bytes, over this bridge's limit of {limits.max_bytes};"
            " send the notice text without attachments or embedded images",
            status="5.3.4",
        )
    end = _HEADER_END.search(raw)
    head = raw if end is None else raw[: end.start()]
    if len(head) > limits.max_header_bytes:
        raise NoticeLimitError(
            f"the header section is {len(head)} bytes, over the limit of"
            f" {limits.max_header_bytes}; send fewer or shorter header fields"
        )
    # No field is longer than the whole header section: a short one needs no split.
    longest = b""
    if len(head) > limits.max_header_field_bytes:
        longest = max(_FIELD_BREAK.split(head), key=len, default=b"")
    if len(longest) > limits.max_header_field_bytes:
        name = longest.split(b":", 1)[0][:40].decode("ascii", "replace").strip() or "a"
        raise NoticeLimitError(
            f"the {name} header field is {len(longest)} bytes, over the limit of"
            f" {limits.max_header_field_bytes}; shorten it (e.g. the display name or the"
            " list of addresses)"
        )
    multiparts = len(_MULTIPART_FIELD.findall(raw))
    if multiparts > limits.max_multiparts:
        raise NoticeLimitError(
            f"the message has {multiparts} multipart sections, over the limit of"
            f" {limits.max_multiparts}; send the notice as a plain text or HTML body"
        )


# A header field line the feed parser takes as one without remark: a name of printable ASCII
# but ":" (RFC 5322 §2.2, the feed parser's own headerRE), then the colon.
_FIELD_START = re.compile(r"[\041-\071\073-\176]+:")
# The end of the header section in text: the empty line after a line break.
_BLANK_LINE = re.compile(r"\n\r?\n")


def _single_part(raw: bytes) -> Message | None:
    """The compat32 Message email.message_from_bytes returns, for the common notice: one
    part, neither multipart nor message/*, its header section made only of field lines and
    their continuations, ended by an empty line. None for anything else (the caller then runs
    the stdlib parser).

    The feed parser's work on such a message is to split the header fields (compat32's
    header_source_parse) and keep the rest as the payload, byte for byte; this does the same
    without its line-by-line machinery, which costs more than the rest of the parse."""
    text = raw.decode("ascii", "surrogateescape")  # as BytesParser does
    end = _BLANK_LINE.search(text)
    if end is None or text.startswith(("\n", "\r")):
        return None
    head = text[: end.start() + 1]
    if "\r" in head and head.count("\r") != head.count("\r\n"):
        return None  # a lone CR ends a line for the feed parser
    msg = Message(policy=email.policy.compat32)
    field: list[str] = []
    # Lines end at LF only (CR LF included): str.splitlines would also break at VT, FF and
    # the other separators the feed parser leaves inside a line.
    for line in [piece + "\n" for piece in head.split("\n")[:-1]]:
        if line[0] in " \t":
            if not field:
                return None  # a continuation with no field: the feed parser notes a defect
            field.append(line)
            continue
        if _FIELD_START.match(line) is None:
            return None  # "From " envelope lines, ":" first, anything else: body or defect
        if field:
            msg.set_raw(*_source_parse(field))
        field = [line]
    if field:
        msg.set_raw(*_source_parse(field))
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(text[end.end() :])
    return msg


def _source_parse(lines: list[str]) -> tuple[str, str]:
    """compat32's header_source_parse: name, then the value unfolded as the stdlib keeps it."""
    name, value = lines[0].split(":", 1)
    value = value.lstrip(" \t") + "".join(lines[1:])
    return name, value.rstrip("\r\n")


def _parse(raw: bytes, opts: TextOptions, limits: ParseLimits) -> ParsedNotice:
    # compat32, not policy.default: the structured-header machinery of policy.default costs
    # ~2 ms a message (measured: 2.4 ms against 0.1 ms for a Koha notice), most of the
    # intake's time; we decode the few headers we need ourselves (RFC 2047, RFC 6532).
    msg = _single_part(raw) or email.message_from_bytes(raw, policy=email.policy.compat32)
    raw_headers: dict[str, str] = {}
    decoded_headers: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = _header_text(name).strip().lower()
        if not key or key in raw_headers:
            continue
        unfolded = _unfold(_header_text(value))
        raw_headers[key] = unfolded
        decoded_headers[key] = _decode_rfc2047(unfolded).strip()

    subject = " ".join(decoded_headers.get("subject", "").split())
    from_addr, from_name = _from_header(decoded_headers.get("from"))
    body, had_attachment = _body_text(msg, opts, from_name, limits)
    subject_text = normalise_text(subject, opts).replace("\n", " ")

    if opts.subject == "only":
        text = subject_text
    elif opts.subject == "prepend":
        text = "\n".join(piece for piece in (subject_text, body) if piece)
    else:
        text = body or subject_text
    text = text[: max(opts.max_chars, 0)].rstrip()
    if not text:
        raise NoTextError(_no_text_reason(opts, had_attachment))

    auto_submitted = decoded_headers.get("auto-submitted") or None
    return ParsedNotice(
        text=text,
        subject=subject,
        message_id=_first_msg_id(raw_headers.get("message-id")),
        in_reply_to=_first_msg_id(raw_headers.get("in-reply-to")),
        references=_msg_ids(raw_headers.get("references", "")),
        from_addr=from_addr,
        auto_submitted=auto_submitted,
        headers=MappingProxyType(decoded_headers),
    )


def _no_text_reason(opts: TextOptions, had_attachment: bool) -> str:
    prefix = "the message has no text to send: "
    if opts.subject == "only":
        return prefix + "this address sends the Subject line only, and it is empty"
    if had_attachment:
        return prefix + "the text seems to be in an attachment; put it in the message body"
    return prefix + (
        "the body is empty (or only quoted replies and signature) and so is the subject;"
        " put the notice text in a text/plain or text/html body"
    )


def _header_text(value: object) -> str:
    """A raw header name/value as text; undecoded 8-bit bytes (surrogate-escaped by the
    bytes parser) are read as UTF-8 (RFC 6532) or, failing that, windows-1252."""
    text = str(value)
    if text.isascii():  # nothing escaped: the usual header, no round trip needed
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return text.encode("utf-8", "surrogateescape").decode("cp1252", "replace")


def _unfold(value: str) -> str:
    # RFC 5322 §2.2.3: unfolding removes the CRLF in front of folding whitespace.
    if "\n" not in value and "\r" not in value:
        return value
    value = _HEADER_FOLD.sub("", value)
    return value.replace("\r", "").replace("\n", "")


def _decode_rfc2047(value: str) -> str:
    """Decode RFC 2047 encoded words; an undecodable word is left as it is."""
    if "=?" not in value:  # no encoded word can start (RFC 2047 §2)
        return value
    out: list[str] = []
    pos = 0
    previous_was_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        # RFC 2047 §6.2: whitespace between two adjacent encoded words is not displayed.
        if not (previous_was_word and between.strip(" \t") == ""):
            out.append(between)
        decoded = _decode_word(match.group(1), match.group(2), match.group(3))
        out.append(match.group(0) if decoded is None else decoded)
        previous_was_word = decoded is not None
        pos = match.end()
    out.append(value[pos:])
    return "".join(out)


def _decode_word(charset: str, encoding: str, data: str) -> str | None:
    payload = data.encode("utf-8", "surrogateescape")
    try:
        if encoding in "bB":
            payload += b"=" * (-len(payload) % 4)
            octets = binascii.a2b_base64(payload)
        else:
            octets = binascii.a2b_qp(payload, header=True)
    except (binascii.Error, ValueError):
        return None
    return _decode_bytes(octets, charset.split("*", 1)[0])


def _codec_name(charset: str | None) -> str | None:
    """Python codec name for a MIME charset label, or None when it is unknown or not a text
    encoding (``base64``, ``rot13`` and friends are codecs, but not charsets)."""
    if not charset:
        return None
    try:
        name = codecs.lookup(charset.strip().strip("\"'")).name
        b"".decode(name)
    except (LookupError, ValueError, TypeError):
        return None
    return name


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode body or header bytes; never raises (see the module docstring, rule 2)."""
    name = _codec_name(charset)
    if name not in (None, "ascii", "latin-1", "iso8859-1"):
        try:
            return data.decode(name, "replace")
        except (UnicodeError, LookupError, ValueError):
            # Codecs such as idna only support strict errors; fall through to the guess.
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# A From value in the plain form nearly every ILS writes (RFC 5322 §3.4: a bare addr-spec,
# or a display name of atoms, spaces and dots before one <addr-spec>), no comments, quotes or
# groups: read without the stdlib's address parser, which costs as much as the rest of the
# header section. Anything else takes the full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_FROM = re.compile(
    rf"[ \t]*(?:(?P<bare>{_PLAIN_ADDR})|(?P<name>[A-Za-z0-9 \t]*)<(?P<addr>{_PLAIN_ADDR})>)[ \t]*"
)


def _from_header(value: str | None) -> tuple[str | None, str]:
    """(addr-spec, display name) of the first From address, or (None, '')."""
    if not value:
        return None, ""
    plain = _PLAIN_FROM.fullmatch(value)
    if plain is not None:
        if plain["bare"] is not None:
            return plain["bare"], ""
        return plain["addr"], " ".join(plain["name"].split())
    try:
        for name, addr_spec in email.utils.getaddresses([value]):
            if "@" in addr_spec:
                return addr_spec, " ".join(name.split())
    except _PARSER_ERRORS as exc:
        logger.debug("unparseable From header: %s", type(exc).__name__)
    return None, ""


def _first_msg_id(value: str | None) -> str | None:
    if value is None:
        return None
    match = _MSG_ID.search(value)
    if match is not None:
        return match.group(0)
    stripped = value.strip()
    return stripped or None


def _msg_ids(value: str) -> tuple[str, ...]:
    found = _MSG_ID.findall(value)
    return tuple(found) if found else tuple(value.split())


# ============================================================================================
# Body


def _content_type(part: Message) -> tuple[str, str]:
    try:
        ctype = part.get_content_type()
    except _PARSER_ERRORS:
        ctype = "text/plain"
    maintype, _, subtype = ctype.partition("/")
    return maintype, subtype


def _is_attachment(part: Message) -> bool:
    # The usual notice part has no Content-Disposition and no "name" parameter: answered
    # without the stdlib's parameter parsing (most of this function's cost). With no
    # disposition, only a Content-Type "name" (or RFC 2231 "name*") parameter makes a
    # filename, and such a parameter cannot be there unless the field holds "name".
    if part.get("content-disposition") is None:
        ctype = part.get("content-type")
        if ctype is None or "name" not in str(ctype).lower():
            return False
    try:
        disposition = part.get_content_disposition()
        filename = part.get_filename()
    except _PARSER_ERRORS:
        return False
    # RFC 2183 §2: "inline" means shown as part of the body, even with a file name; a named
    # part without a disposition is how older clients attach files.
    return disposition == "attachment" or (filename is not None and disposition != "inline")


def _text_parts(msg: Message, max_parts: int) -> tuple[list[Message], list[Message], bool]:
    """Non-attachment text/plain and text/html leaves in document order, and whether a text
    attachment was seen."""
    plain: list[Message] = []
    html: list[Message] = []
    had_text_attachment = False
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > max_parts:
            raise NoticeLimitError(
                f"the message has more than {max_parts} MIME parts; send the notice as a plain"
                " text or HTML body with few attachments"
            )
        maintype, subtype = _content_type(part)
        if maintype == "message":
            continue  # an attached message (forward, bounce report) is not this notice
        # is_multipart() before get_payload(): without decode=True, get_payload() on an 8-bit
        # leaf decodes with the declared charset and raises for codecs such as idna.
        if part.is_multipart():
            if depth < _MAX_MIME_DEPTH:
                payload = part.get_payload()
                children = [child for child in payload if isinstance(child, Message)]
                stack.extend((child, depth + 1) for child in reversed(children))
            continue
        if maintype == "multipart":
            # A multipart without a usable boundary is parsed as one opaque body: read it.
            maintype, subtype = "text", "plain"
        if maintype != "text" or subtype not in ("plain", "html"):
            continue
        if _is_attachment(part):
            had_text_attachment = True
        elif subtype == "plain":
            plain.append(part)
        else:
            html.append(part)
    return plain, html, had_text_attachment


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    cte = _header_text(part.get("content-transfer-encoding", "")).strip().lower()
    if cte not in ("quoted-printable", "base64") and _SOFT_BREAK.search(payload):
        # Some Microsoft servers re-label a quoted-printable body as 7bit without decoding
        # it, leaving "=" soft breaks (and =XX octets) in the text.
        payload = _QP_OCTET.sub(
            lambda m: bytes([int(m.group(1), 16)]), _SOFT_BREAK.sub(b"", payload)
        )
    return _decode_bytes(payload, _charset(part))[:_MAX_WORK_CHARS]


def _charset(part: Message) -> str | None:
    """part.get_content_charset(), None when unreadable."""
    ctype = part.get("content-type")
    if isinstance(ctype, str):
        plain = _PLAIN_CHARSET.fullmatch(ctype)
        if plain is not None:
            return plain.group("charset").lower()
    try:
        return part.get_content_charset()
    except _PARSER_ERRORS:
        return None


def _body_text(
    msg: Message, opts: TextOptions, from_name: str, limits: ParseLimits
) -> tuple[str, bool]:
    """Cleaned text of the first usable body part ('' when none), and whether a text
    attachment was seen."""
    plain, html, had_attachment = _text_parts(msg, limits.max_mime_parts)
    candidates = [(part, False) for part in plain[:1]] + [(part, True) for part in html[:1]]
    for part, is_html in candidates:
        try:
            text = _part_text(part)
        except _PARSER_ERRORS as exc:
            logger.debug("unreadable body part: %s", type(exc).__name__)
            continue
        if is_html:
            text, too_deep = _html_text(text, limits.max_html_quote_depth)
            if too_deep:
                raise NoticeLimitError(
                    "the HTML body nests quotes (<blockquote>) more than"
                    f" {limits.max_html_quote_depth} levels deep; send the notice without the"
                    " quoted thread, or as plain text"
                )
        cleaned = _clean_body(text, opts, from_name)
        if cleaned:
            return cleaned, had_attachment
    return "", had_attachment


def _clean_body(text: str, opts: TextOptions, from_name: str) -> str:
    lines = _LINE_BREAKS.sub("\n", text).split("\n")
    if opts.start_delimiter:
        lines = _after_delimiter(lines, opts.start_delimiter)
    if opts.end_marker:
        lines = _before_marker(lines, opts.end_marker)
    if opts.strip_quoted:
        lines = _strip_quoted(lines)
    if opts.strip_signature:
        lines = _strip_signature(lines, from_name)
    return normalise_text("\n".join(lines), opts)


def _after_delimiter(lines: list[str], delimiter: str) -> list[str]:
    for index, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith(delimiter):
            return [stripped[len(delimiter) :], *lines[index + 1 :]]
    # No delimiter: the mail did not come from the tenant's template (e.g. a staff message);
    # sending it whole is better than refusing it.
    return lines


def _before_marker(lines: list[str], marker: str) -> list[str]:
    for index, line in enumerate(lines):
        if line.lstrip().startswith(marker):
            return lines[:index]
    return lines


def _is_quote_start(lines: list[str], index: int) -> bool:
    line = lines[index].strip()
    if _ORIGINAL_MESSAGE.fullmatch(line) or _UNDERSCORE_RULE.fullmatch(line):
        return True
    if _OUTLOOK_FROM.match(line):
        # Outlook/Exchange header block: From: ... then Sent:/Date: within a few lines.
        following = lines[index + 1 : index + 5]
        return any(_OUTLOOK_SENT.match(other.strip()) for other in following)
    if _REPLY_INTRO_START.match(line):
        # "On <date>, <name> <addr> wrote:", which clients wrap over up to three lines.
        for extra in range(3):
            joined = " ".join(part.strip() for part in lines[index : index + extra + 1])
            if _REPLY_INTRO.fullmatch(joined):
                return True
    return False


def _strip_quoted(lines: list[str]) -> list[str]:
    for index in range(len(lines)):
        if _is_quote_start(lines, index):
            lines = lines[:index]
            break
    return [line for line in lines if not line.lstrip().startswith(">")]


def _strip_signature(lines: list[str], from_name: str) -> list[str]:
    for index, line in enumerate(lines):
        # RFC 3676 §4.3 separator "-- "; templates often lose the trailing space.
        if line.rstrip() == "--":
            lines = lines[:index]
            break
    lines = [line for line in lines if not _MOBILE_SIGNATURE.fullmatch(line.strip())]
    return _strip_named_signature(lines, from_name)


def _name_forms(from_name: str) -> set[str]:
    name = " ".join(from_name.replace('"', "").split())
    if not name:
        return set()
    forms = {name.casefold()}
    if "," in name:  # Outlook directories show "Lopez, Maria"
        last, _, first = name.partition(",")
        forms.add(f"{first.strip()} {last.strip()}".casefold())
    first_name = name.split(",")[-1].split()[0] if "," in name else name.split()[0]
    if len(first_name) >= 2:
        forms.add(first_name.casefold())
    return forms


def _strip_named_signature(lines: list[str], from_name: str) -> list[str]:
    """Drop a trailing signature block that starts with the sender's own name.

    Staff replies from Outlook often have no "-- " separator; the one reliable signal is the
    From display name opening a short block of short lines at the end (e.g. "Maria Lopez /
    Circulation Desk / phone"). A valediction line right above it ("Thanks,") goes too.
    """
    forms = _name_forms(from_name)
    if not forms:
        return lines
    nonblank = [index for index, line in enumerate(lines) if line.strip()]
    if len(nonblank) < 2:
        return lines
    # Only the last few non-blank lines can open a block short enough to be a signature;
    # looking further back would rescan the tail once per line (quadratic on a body that
    # repeats the sender's name).
    for position in range(max(1, len(nonblank) - _MAX_SIGNATURE_LINES), len(nonblank)):
        index = nonblank[position]
        if lines[index].strip().rstrip(",.").casefold() not in forms:
            continue
        block = [lines[i] for i in nonblank[position:]]
        if any(len(line.strip()) > _MAX_SIGNATURE_LINE_CHARS for line in block):
            continue
        previous = lines[index - 1].strip()
        if previous and _VALEDICTION.fullmatch(previous):
            return lines[: index - 1]
        if not previous:
            return lines[:index]
    return lines


# ============================================================================================
# Text normalisation


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    """Fold one character to GSM-7 when GSM 03.38 lacks it and a plain spelling exists."""
    if ch < "\x80" or ch in _GSM_CHARS:
        return ch
    if ch in _FOLD_EXTRA:
        return _FOLD_EXTRA[ch]
    decomposed = unicodedata.normalize("NFKD", ch)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    if base and all(c in _GSM_CHARS for c in base):
        return base
    return ch


def _fold_whitespace(text: str) -> str:
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        words = line.split()
        if words:
            current.extend(words)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


# ============================================================================================
# HTML

_SKIP_TAGS = frozenset({"style", "script", "head", "title", "template"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "caption", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML's ASCII whitespace (HTML5 §2.3.1)
_PARAGRAPH = "\n\n"


# HTML tokens, after the WHATWG HTML tokenizer (§13.2.5) as far as text extraction needs it.
# Written for this module rather than html.parser because html.parser is quadratic on hostile
# input before CPython 3.11.13/3.12.11/3.13.4 (close() rescans the rest of the document for
# every unterminated "<a" or "<!--": 100,000 "<!--" took 180 s) and its start-tag regex costs
# ~0.5 us a character inside one C call that holds the GIL, stalling the event loop from a
# worker thread. Here every alternative either fails on its first characters or matches to its
# terminator or the end of the input (an unterminated comment or tag runs to the end, as in
# WHATWG "EOF in comment"/"EOF in tag"), so one search never looks at a character twice and
# the whole tokenization is linear.
_HTML_TOKEN = re.compile(
    r"""
    (?P<text>[^<]+)
    | <!--(?:-?>|.*?(?:--!?>|\Z))                       # comment; "<!-->" closes at once
    | </(?P<end>[A-Za-z][^\t\n\f\r />]*)[^>]*(?:>|\Z)   # end tag (attributes ignored)
    | <(?P<start>[A-Za-z][^\t\n\f\r />]*)              # start tag, then its attributes:
      (?:[^>=]|=[\t\n\f\r ]*"[^"]*(?:"|\Z)|=[\t\n\f\r ]*'[^']*(?:'|\Z)|=)*(?:>|\Z)
    | <[!?/][^>]*(?:>|\Z)                               # declaration, PI, "</>": bogus comment
    | (?P<lt><)                                         # any other "<" is text
    """,
    re.DOTALL | re.VERBOSE,
)
_RAW_TEXT_TAGS = frozenset({"script", "style"})
_RAW_TEXT_END = {tag: re.compile(rf"</{tag}[\t\n\f\r />]", re.IGNORECASE) for tag in _RAW_TEXT_TAGS}


class _QuoteTooDeep(Exception):
    """Raised from inside the extractor to stop at the first quote over the depth limit."""


class _TextExtractor:
    """Text of an HTML body, from its tokens in document order.

    A ``<blockquote>`` does not re-render what it encloses when it closes (that was quadratic in
    the nesting depth): the text is kept as runs of one depth each, every run is tidied once, and
    the "> " prefixes are added when the text is read out."""

    def __init__(self, max_quote_depth: int) -> None:
        self._skip_depth = 0
        self._pre_depth = 0
        self._max_quote_depth = max_quote_depth
        self._quote_depth = 0
        # (quote depth, chunks): a new run starts at every <blockquote> and </blockquote>.
        self._runs: list[tuple[int, list[str]]] = [(0, [])]

    def _out(self, chunk: str) -> None:
        self._runs[-1][1].append(chunk)

    def _set_depth(self, depth: int) -> None:
        self._quote_depth = depth
        self._runs.append((depth, []))

    def start(self, tag: str, *, self_closing: bool) -> None:
        if tag == "br":
            self._out("\n")
        elif self_closing:
            if tag in _BLOCK_TAGS:  # <hr/>, <p/>
                self._out(_PARAGRAPH)
        elif tag == "body":
            self._skip_depth = 0  # an unclosed <head> ends where <body> starts
        elif tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag == "blockquote":
            if self._quote_depth >= self._max_quote_depth:
                raise _QuoteTooDeep
            self._set_depth(self._quote_depth + 1)
        elif tag in _BLOCK_TAGS:
            self._out(_PARAGRAPH)
            if tag == "pre":
                self._pre_depth += 1
        elif tag in _CELL_TAGS:
            self._out(" ")

    def end(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(self._skip_depth - 1, 0)
        elif tag == "blockquote":
            if self._quote_depth > 0:  # else a stray </blockquote>
                self._set_depth(self._quote_depth - 1)
        elif tag in _BLOCK_TAGS:
            self._out(_PARAGRAPH)
            if tag == "pre":
                self._pre_depth = max(self._pre_depth - 1, 0)

    def data(self, data: str) -> None:
        if self._skip_depth:
            return
        data = data.replace("\xa0", " ")
        if not self._pre_depth:
            data = _HTML_SPACE.sub(" ", data)
        self._out(data)

    def text(self) -> str:
        """Runs with text, tidied, prefixed with "> " per level, and separated by one blank
        line at the shallowest depth between them (so a quote is a paragraph of its own)."""
        lines: list[str] = []
        gap_depth: int | None = None  # shallowest depth since the last run with text
        for depth, chunks in self._runs:
            gap_depth = depth if gap_depth is None else min(gap_depth, depth)
            tidy = _tidy("".join(chunks))
            if not tidy:
                continue
            if lines:
                lines.append(_quote_prefix(gap_depth, ""))
            lines.extend(_quote_prefix(depth, line) for line in tidy.split("\n"))
            gap_depth = depth
        return "\n".join(lines)


def _quote_prefix(depth: int, line: str) -> str:
    if not depth:
        return line
    if line:
        return "> " * depth + line
    return "> " * (depth - 1) + ">"


def _tidy(text: str) -> str:
    """Strip every line, keep at most one blank line in a row, strip the ends."""
    out: list[str] = []
    for line in text.split("\n"):
        stripped = line.strip(" \t\r\f")
        if stripped or (out and out[-1]):
            out.append(stripped)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)
