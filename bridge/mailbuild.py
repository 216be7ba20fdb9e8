"""Outbound email builders: delivery status notifications, relayed patron replies, staff notices.

Pure functions: values in, an email (`bridge.model.Outgoing`) out; the current time is a
parameter. Nothing here touches the network or the store: the mail outbox stores the email, a
`MailTransport` sends it.

Every message is built with `email.policy.SMTP` switched to ``cte_type="7bit"``: header lines are
folded at 78 characters and CRLF-terminated (RFC 5322 §2.1.1, §2.2.3), and any body that is not
short-lined ASCII gets quoted-printable or base64 (the policy picks the shorter). The result is
pure 7-bit ASCII, so it passes any relay, with or without 8BITMIME (RFC 6152), and no line can
exceed the 998-octet limit of RFC 5322 §2.1.1.

The single-part emails (patron replies, notifications: one per patron SMS, so on a hot path)
write those same bytes directly instead of going through `EmailMessage`, whose header registry
parses and refolds every field (about 1 ms per reply): a field that fits one line in plain
ASCII is written as it is, any other goes through the policy's own folder and RFC 2047 encoder,
and the body is encoded by the rule `email.contentmanager` applies (`_text_body`).

Loop prevention (RFC 3834), decided per kind of message:

* DSNs carry ``Auto-Submitted: auto-replied``: a bounce is automatically generated as a direct
  response to a message (the notice), RFC 3834 §5.1; Exim marks its bounces the same way. The
  envelope sender is null (RFC 5321 §4.5.5, RFC 3464 §2) so nothing ever bounces back.
* Staff notifications (opt-out, ...) carry ``Auto-Submitted: auto-generated``: produced by the
  bridge, not a response to any email (RFC 3834 §5.1).
* Relayed patron replies carry ``Auto-Submitted: auto-generated`` too. A person wrote the words,
  but the email is made by a program from an SMS, not sent by anyone through a mail client, and
  it answers no email (so not "auto-replied", RFC 3834 §5.1). What matters is its effect: RFC
  3834 §2 tells automatic responders (vacation, out-of-office) not to answer a message whose
  Auto-Submitted is anything but "no", and an out-of-office answer is exactly what must not
  reach the patron's address. Humans are not bound by it: staff press Reply as before, and the
  inbound side texts their answer (their mail client does not copy Auto-Submitted). The reply
  also carries ``X-Auto-Response-Suppress: All`` for Microsoft Exchange/365, which ignores
  Auto-Submitted ([MS-OXCMAIL] §2.2.3.2.20; most library staff mailboxes are Exchange). We do
  NOT set ``Precedence: bulk``: it is non-standard (RFC 3834 §3.1.8 discourages relying on it)
  and Gmail and 365 may file such mail as bulk, hiding a patron's "I lost my card" from staff.
  The final loop guard belongs to the inbound side, which drops auto-submitted mail.

Envelope senders: the builders give the null sender to DSNs (kept: RFC 5321 §4.5.5) and a
placeholder to the rest; the mailer sends every non-DSN email from its own bounce address
(bridge/verp.py), so a bounce comes back to the bridge and says which email was lost.
"""

from __future__ import annotations

import binascii
import email
import functools
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email import quoprimime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.utils import format_datetime
from typing import Final, Literal

from bridge.model import Outgoing

__all__ = [
    "DsnPlan",
    "NoticeRef",
    "build_dsn",
    "build_notification",
    "build_patron_reply",
    "build_reply_fallback",
    "clean_header_value",
    "plan_dsn",
]

# SMTP policy, but never 8bit bodies: see the module docstring.
POLICY: Final = email_policy.SMTP.clone(cte_type="7bit")
_HEADER_REGISTRY: Final = HeaderRegistry()  # what POLICY.header_factory is: the default one

# Header length caps (characters before folding). Folding cannot split an unbroken ASCII word,
# so a cap well below 998 is what guarantees RFC 5322 §2.1.1 for hostile input.
MAX_SUBJECT: Final = 200
MAX_DISPLAY_NAME: Final = 100
MAX_MESSAGE_ID: Final = 900
MAX_DSN_FIELD: Final = 900
MAX_EXTRA_HEADER: Final = 500
# "SMS reply: <first words>": long enough to recognise the reply in an inbox list, and short
# enough that "Subject: SMS reply: ..." fits one 78-character line (RFC 5322 §2.1.1). A longer
# value that fits a continuation line is moved there whole by Python's folder, and some parsers
# (the stdlib's among them) then keep the folding space in front of the subject.
REPLY_SUBJECT_WORDS_MAX: Final = 58
MAX_TAG: Final = 20

# Every Cc (control) character, plus the Unicode line and paragraph separators that some mail
# clients render as line breaks (U+2028, U+2029). CR and LF are the injection vector
# (RFC 5322 §2.2: a header ends at CRLF); the rest have no business in a header either.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
# The patterns below are used with fullmatch(): a "$" anchor would also accept a trailing "\n".
# A plain addr-spec as the bridge itself produces and configures them: a dot-atom local part of
# RFC 5322 §3.2.3 atext, an ASCII host name; no quoted local parts, domain literals or comments.
# Anything fancier is refused rather than interpreted.
_ADDR_SPEC = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
)
_MSG_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")
# RFC 5322 §3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# RFC 3463 §2: class "." subject "." detail.
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_DIAG_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*;\s*(.*)$", re.DOTALL)
# RFC 5322 §3.2.3 specials, and the backslash: a display name with one is quoted. The same set
# as email.headerregistry.Address uses, so the fast builders write what it writes.
_SPECIALS: Final = frozenset('()<>@,:;."[]\\')
_LINE_END = re.compile(r"\r\n|\r|\n")
_MAX_LINE: Final = 78  # POLICY.max_line_length: RFC 5322 §2.1.1's "SHOULD" limit

# Headers the builders own; extra_headers may not replace them.
_RESERVED_HEADERS: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "sender",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "auto-submitted",
        "return-path",
        "received",
    }
)


@dataclass(frozen=True)
class NoticeRef:
    """The original email notice an SMS came from (what the store remembers of it)."""

    queue_id: str
    message_id: str | None
    subject: str
    envelope_from: str
    tenant_name: str
    received_at: datetime | None = None  # becomes Arrival-Date in the DSN when known


def clean_header_value(s: str, max_len: int) -> str:
    """Return `s` made safe for one header field value.

    Control characters (CR and LF above all: RFC 5322 §2.2, header injection) become spaces,
    runs of whitespace collapse to one space, and the result is cut to `max_len` characters
    (with "..." when cut) so no folded line can pass 998 octets. Folding and RFC 2047 encoding
    of non-ASCII text are left to the email policy.
    """
    if max_len < 4:
        raise ValueError("max_len must be at least 4")
    s = _flatten(s)
    if len(s) > max_len:
        s = s[: max_len - 3].rstrip() + "..."
    return s


def _flatten(s: str) -> str:
    """One line of text: control characters become spaces, whitespace runs collapse."""
    s = unicodedata.normalize("NFC", s)
    s = _HEADER_UNSAFE.sub(" ", s)
    return _SPACES.sub(" ", s).strip()


def _clean_body(s: str) -> str:
    """Normalise body text: LF line ends, no control characters other than TAB and LF."""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = s.replace("\u2028", "\n").replace("\u2029", "\n")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", s)


def _addr_spec(addr: str, what: str) -> str:
    """Validate a plain addr-spec used in both the envelope and a header; raise ValueError."""
    # A dot-atom has no empty atom (RFC 5322 §3.2.3): no leading, trailing or doubled dot.
    if not _ADDR_SPEC.fullmatch(addr) or ".." in addr or addr.startswith(".") or ".@" in addr:
        raise ValueError(f"{what} is not a plain email address: {addr!r}")
    return addr


def _address(addr: str, display: str, what: str) -> Address:
    # Address(addr_spec=...) re-parses the address with the RFC 5322 grammar and refuses
    # leftovers; the display name is quoted or RFC 2047-encoded by the policy as needed.
    return Address(
        display_name=clean_header_value(display, MAX_DISPLAY_NAME) if display else "",
        addr_spec=_addr_spec(addr, what),
    )


def _mailbox(addr: str, display: str, what: str) -> str:
    """A mailbox (RFC 5322 §3.4) as `Address(display_name, addr_spec)` renders it: the display
    name quoted when it has specials (§3.2.3). Encoding and folding are left to `_field`."""
    spec = _addr_spec(addr, what)
    name = clean_header_value(display, MAX_DISPLAY_NAME) if display else ""
    if not name:
        return spec
    if not _SPECIALS.isdisjoint(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{spec}>"


def _field(name: str, value: str) -> str:
    """One header field, CRLF-terminated (RFC 5322 §2.2).

    A value that fits one 78-character line in printable ASCII, with nothing a reader could
    take for an encoded word ("=?", RFC 2047 §2), is written as it is: that is what the policy
    writes for it too. Any other value (an empty one too: the policy writes "Name:" without
    the space) is folded (§2.2.3) and RFC 2047-encoded by the policy.
    """
    if (
        value
        and len(name) + len(value) + 2 <= _MAX_LINE
        and value.isascii()
        and value.isprintable()
        and "=?" not in value
    ):
        return f"{name}: {value}\r\n"
    return str(_header_class(name.lower())(name, value).fold(policy=POLICY))


@functools.lru_cache(maxsize=64)
def _header_class(name: str) -> type[BaseHeader]:
    """The policy's header class for a field name (POLICY keeps the default registry).
    `header_factory(name, value)` builds this class anew on every call, a fifth of the cost
    of folding a non-ASCII field."""
    return _HEADER_REGISTRY[name]


def _text_body(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, body with LF line ends) for `text` in UTF-8, chosen as
    `email.contentmanager` chooses under a 7-bit policy: 7bit when every line is ASCII and fits
    78 octets; else quoted-printable or base64 (RFC 2045 §6.7, §6.8), whichever is shorter on
    the first ten lines."""
    max_len = _MAX_LINE
    lines = text.encode("utf-8").splitlines()
    if max((len(line) for line in lines), default=0) <= max_len:
        joined = b"\n".join(lines) + b"\n"
        if joined.isascii():
            return "7bit", joined.decode("ascii")
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), max_len)
    if len(sniff_qp) <= len(binascii.b2a_base64(sniff)):
        if len(lines) <= 10:
            return "quoted-printable", sniff_qp
        whole = (b"\n".join(lines) + b"\n").decode("latin-1")
        return "quoted-printable", quoprimime.body_encode(whole, max_len)
    data = b"\r\n".join(lines) + b"\r\n"
    step = max_len // 4 * 3  # 57 octets: 76 base64 characters a line
    encoded = (binascii.b2a_base64(data[i : i + step]) for i in range(0, len(data), step))
    return "base64", b"".join(encoded).decode("ascii")


def _render_text_mail(fields: list[tuple[str, str]], text: str) -> bytes:
    """A text/plain UTF-8 email: `fields`, then the MIME fields, then the encoded body; CRLF
    line ends throughout (RFC 5322 §2.1), as `EmailMessage.as_bytes` writes it."""
    cte, body = _text_body(text)
    head = "".join(_field(name, value) for name, value in fields)
    head += (
        'Content-Type: text/plain; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n"
        "MIME-Version: 1.0\r\n\r\n"
    )
    return (head + "\r\n".join(_LINE_END.split(body))).encode("ascii")


def _domain(domain: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", domain):
        raise ValueError(f"not a domain name: {domain!r}")
    return domain


def _message_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{_domain(domain)}>"


def _valid_msg_id(message_id: str | None) -> str | None:
    """The original Message-ID if it is well-formed, else None.

    It came from outside (the ILS); a malformed one is dropped rather than repaired, since
    threading on a guessed id is worse than no threading.
    """
    if message_id is None:
        return None
    cleaned = clean_header_value(message_id, MAX_MESSAGE_ID + 10)
    if len(cleaned) > MAX_MESSAGE_ID or not _MSG_ID.fullmatch(cleaned):
        return None
    return cleaned


def _require_aware(now: datetime) -> None:
    # A naive datetime would be rendered with "-0000" (RFC 5322 §3.3: unknown zone).
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _human_time(dt: datetime) -> str:
    # Locale-independent, unambiguous, in the caller's zone: "2026-11-23 14:05 UTC".
    return f"{dt:%Y-%m-%d %H:%M} {dt.tzname() or dt.strftime('%z')}"


def _new_message(
    *, from_: Address, to: Address, subject: str, now: datetime, domain: str
) -> EmailMessage:
    _require_aware(now)
    msg = EmailMessage(policy=POLICY)
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = clean_header_value(subject, MAX_SUBJECT)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _message_id(domain)
    return msg


def _head_fields(
    *,
    from_: str,
    to: str,
    subject: str,
    now: datetime,
    domain: str,
    original_message_id: str | None,
) -> list[tuple[str, str]]:
    """The fields `_new_message` and `_thread` set, in their order, for `_render_text_mail`."""
    _require_aware(now)
    fields = [
        ("From", from_),
        ("To", to),
        ("Subject", clean_header_value(subject, MAX_SUBJECT)),
        ("Date", format_datetime(now)),
        ("Message-ID", _message_id(domain)),
    ]
    mid = _valid_msg_id(original_message_id)
    if mid is not None:
        fields += [("In-Reply-To", mid), ("References", mid)]
    return fields


def _thread(msg: EmailMessage, original_message_id: str | None) -> None:
    """In-Reply-To/References so the message threads with the original (RFC 5322 §3.6.4)."""
    mid = _valid_msg_id(original_message_id)
    if mid is not None:
        msg["In-Reply-To"] = mid
        msg["References"] = mid


def _ascii_field(s: str, max_len: int) -> str:
    # DSN fields are US-ASCII (RFC 3464 §2.1; UTF-8 only with RFC 6533, which we don't claim).
    cleaned = clean_header_value(s, max_len)
    return cleaned.encode("ascii", "replace").decode("ascii")


def _diagnostic_code(diagnostic: str) -> str:
    """RFC 3464 §2.3.6: "diagnostic-type; text". Only "smtp" is a registered type, so any other
    type (our "smpp") is written as an "X-" extension type, and bare text gets "X-SMPP"."""
    text = _ascii_field(diagnostic, MAX_DSN_FIELD)
    m = _DIAG_TYPE.match(text)
    if m is None:
        return f"X-SMPP; {text}"
    dtype, rest = m.group(1), m.group(2)
    if dtype.lower() == "smtp":
        dtype = "smtp"
    elif not dtype.lower().startswith("x-"):
        dtype = "X-" + dtype.upper()
    return f"{dtype}; {rest}"


def _field_group(fields: Sequence[tuple[str, str]]) -> Message:
    group = Message(policy=POLICY)
    for name, value in fields:
        group[name] = value
    return group


Fields = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class DsnPlan:
    """What one DSN says, every decision taken: `plan_dsn` makes it, `_render_dsn` writes it.

    The parts are those of RFC 6522 §3 (multipart/report): the human-readable text, the
    message/delivery-status fields of RFC 3464 (§2.2 per message, §2.3 per recipient), and the
    header block of the original notice, as much of it as the store keeps.
    """

    from_addr: str
    to_addr: str
    subject: str
    reporting_domain: str  # Reporting-MTA, and the domain of the DSN's own Message-ID
    original_message_id: str | None  # well-formed, else None: threading and the headers part
    now: datetime  # Date and Last-Attempt-Date
    text: str  # the human-readable part, LF line ends
    per_message: Fields
    per_recipient: Fields
    original_headers: Fields


def plan_dsn(
    *,
    reporting_domain: str,
    from_addr: str,
    to_addr: str,
    notice: NoticeRef,
    recipient_display: str,
    recipient_email: str,
    action: Literal["failed", "delayed"],
    status: str,
    diagnostic: str,
    reason: str,
    advice: str,
    sms_text: str | None,
    now: datetime,
) -> DsnPlan:
    """The DSN `build_dsn` writes, as values; raise ValueError for what cannot be reported."""
    _require_aware(now)
    m = _STATUS.fullmatch(status)
    if m is None:
        raise ValueError(f"not an RFC 3463 status code: {status!r}")
    # RFC 3464 §2.3.3: "delayed" is a transient condition, so its status must be 4.X.X.
    # "failed" may carry 4.X.X too: a temporary error that outlived the retry limit (Postfix
    # reports expired mail that way).
    if action == "delayed" and m.group(1) != "4":
        raise ValueError("a delayed DSN needs a 4.X.X status")
    if action == "failed" and m.group(1) == "2":
        raise ValueError("a failed DSN cannot carry a 2.X.X status")
    recipient_email = _addr_spec(recipient_email, "recipient_email")
    reporting_domain = _domain(reporting_domain)
    if notice.received_at is not None:
        _require_aware(notice.received_at)

    subject_prefix = (
        "Undeliverable text message: " if action == "failed" else "Delayed text message: "
    )
    original_subject = clean_header_value(notice.subject, MAX_SUBJECT) or "(no subject)"
    original_mid = _valid_msg_id(notice.message_id)
    diag = _diagnostic_code(diagnostic)
    text = _dsn_text(
        action=action,
        notice=notice,
        original_subject=original_subject,
        original_mid=original_mid,
        recipient_display=recipient_display,
        recipient_email=recipient_email,
        technical=f"status {status}, {diag}",
        reason=reason,
        advice=advice,
        sms_text=sms_text,
        now=now,
    )

    # RFC 3464 §2.2 per-message fields, then §2.3 per-recipient fields.
    per_message = [("Reporting-MTA", f"dns; {reporting_domain}")]
    per_message.append(("X-SMS-Bridge-Queue-Id", _ascii_field(notice.queue_id, 100)))
    if notice.received_at is not None:
        per_message.append(("Arrival-Date", format_datetime(notice.received_at)))
    per_recipient = (
        ("Original-Recipient", f"rfc822; {recipient_email}"),
        ("Final-Recipient", f"rfc822; {recipient_email}"),
        ("Action", action),
        ("Status", status),
        ("Diagnostic-Code", diag),
        ("Last-Attempt-Date", format_datetime(now)),
    )

    # RFC 6522 §3: text/rfc822-headers carries the original's header block. The envelope sender
    # is what we know of the author, so it is given as Return-Path (RFC 5321 §4.4), not as a
    # From we would have to invent.
    original: list[tuple[str, str]] = []
    if original_mid is not None:
        original.append(("Message-ID", original_mid))
    original.append(("Subject", clean_header_value(notice.subject, MAX_SUBJECT)))
    if _ADDR_SPEC.fullmatch(notice.envelope_from):
        original.append(("Return-Path", f"<{notice.envelope_from}>"))
    original.append(("To", recipient_email))

    return DsnPlan(
        from_addr=_addr_spec(from_addr, "from_addr"),
        to_addr=_addr_spec(to_addr, "to_addr"),
        subject=subject_prefix + original_subject,
        reporting_domain=reporting_domain,
        original_message_id=original_mid,
        now=now,
        text=text,
        per_message=tuple(per_message),
        per_recipient=per_recipient,
        original_headers=tuple(original),
    )


def _dsn_text(
    *,
    action: Literal["failed", "delayed"],
    notice: NoticeRef,
    original_subject: str,
    original_mid: str | None,
    recipient_display: str,
    recipient_email: str,
    technical: str,
    reason: str,
    advice: str,
    sms_text: str | None,
    now: datetime,
) -> str:
    """The human-readable part: what happened, to which notice, and what staff can do."""
    number = clean_header_value(recipient_display, MAX_DISPLAY_NAME)
    tenant = clean_header_value(notice.tenant_name, MAX_DISPLAY_NAME)
    queue_id = clean_header_value(notice.queue_id, 100)
    if action == "failed":
        headline = "A library notice could not be delivered as a text message."
        when_label = "Failed at:"
    else:
        headline = (
            "A library notice has not been delivered as a text message yet. "
            "The bridge keeps trying; no action is needed unless this repeats."
        )
        when_label = "Delayed at:"
    lines = [
        headline,
        "",
        f"Patron number:  {number} ({recipient_email})",
        f"Notice subject: {original_subject}",
        f"Notice id:      {original_mid or '(none)'}",
        f"Library:        {tenant}",
        f"Queue id:       {queue_id}",
        f"{when_label:<15} {_human_time(now)}",
        "",
        f"Why: {_clean_body(reason).strip()}",
        "",
        f"What to do: {_clean_body(advice).strip()}",
        "",
        f"Technical detail: {technical}",
    ]
    if sms_text:
        lines += ["", "The text message was:", ""]
        lines += [f"> {line}" for line in _clean_body(sms_text).split("\n")]
    return "\n".join(lines) + "\n"


def _dsn_text_part(text: str) -> EmailMessage:
    part = EmailMessage(policy=POLICY)
    part.set_content(text, charset="utf-8")
    # set_content on a fresh message adds MIME-Version; it belongs only to the top level.
    del part["MIME-Version"]
    return part


def _delivery_status_part(per_message: Fields, per_recipient: Fields) -> EmailMessage:
    """message/delivery-status (RFC 3464 §2.1): one field group per message, then one per
    recipient, each a header block of its own."""
    part = EmailMessage(policy=POLICY)
    part["Content-Type"] = "message/delivery-status"
    part.set_payload([_field_group(per_message), _field_group(per_recipient)])
    return part


def _original_headers_part(fields: Fields) -> EmailMessage:
    """text/rfc822-headers (RFC 6522 §4): the original's header block, folded like ours."""
    original = EmailMessage(policy=POLICY)
    for name, value in fields:
        original[name] = value
    part = EmailMessage(policy=POLICY)
    part.set_content(
        original.as_string(policy=POLICY.clone(linesep="\n")).rstrip("\n") + "\n",
        subtype="rfc822-headers",
        charset="us-ascii",
    )
    del part["MIME-Version"]  # top level only, as above
    return part


def _render_dsn(plan: DsnPlan) -> bytes:
    """multipart/report; report-type=delivery-status (RFC 6522 §3) with the plan's three parts."""
    msg = _new_message(
        from_=_address(plan.from_addr, "SMS Bridge", "from_addr"),
        to=_address(plan.to_addr, "", "to_addr"),
        subject=plan.subject,
        now=plan.now,
        domain=plan.reporting_domain,
    )
    _thread(msg, plan.original_message_id)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report"
    msg.set_param("report-type", "delivery-status")
    msg.attach(_dsn_text_part(plan.text))
    msg.attach(_delivery_status_part(plan.per_message, plan.per_recipient))
    msg.attach(_original_headers_part(plan.original_headers))
    return msg.as_bytes(policy=POLICY)


def build_dsn(plan: DsnPlan, *, ref: str | None = None) -> Outgoing:
    """The RFC 3464 delivery status notification `plan` (plan_dsn) describes, as an email.

    multipart/report; report-type=delivery-status (RFC 6522) with a human-readable part, the
    machine-readable message/delivery-status part, and text/rfc822-headers with the notice
    headers we still know (we do not keep notice bodies). Sent from the null reverse-path.
    `to_addr` must not be empty: a notice that arrived with a null sender gets no DSN
    (RFC 5321 §4.5.5), which the caller decides. `ref` (the queue id it is about) labels the
    email in logs.
    """
    return Outgoing("dsn", "", (plan.to_addr,), _render_dsn(plan), ref=ref)


def _first_words(text: str, max_len: int) -> str:
    """The start of `text` on one line, cut at a word boundary, with "..." when cut."""
    flat = _flatten(text)
    if len(flat) <= max_len:
        return flat
    cut = flat[: max_len - 3]
    space = cut.rfind(" ")
    # An unbroken run (a URL, 5,000 x's) has no word boundary: cut it mid-word.
    if space >= max_len // 2:
        cut = cut[:space]
    return cut.rstrip() + "..."


def build_patron_reply(
    *,
    from_local: str,
    domain: str,
    from_display: str,
    to_addr: str,
    text: str,
    original_sms: str | None,
    original_message_id: str | None,
    original_subject: str | None,
    tenant_name: str,
    now: datetime,
    tag: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    original_sent_at: datetime | None = None,
    envelope_from: str | None = None,
    note: str | None = None,
    tenant_id: str | None = None,
) -> Outgoing:
    """A patron's SMS reply relayed to library staff.

    From is the patron's reply address on the bridge (``"SMS from +1 202-555-0143"
    <12025550143@domain>``), so staff simply press Reply; Reply-To is not set. The envelope
    sender given here (default: the same address) is replaced by the mailer with the email's
    own bounce address, so a bounce reaches the bridge's bounce handling and never turns into
    an SMS. `original_subject` is accepted for callers that
    know it but is not repeated: the Subject shows what the patron said, and threading comes
    from In-Reply-To/References.
    """
    sender_addr = f"{from_local}@{domain}"
    sender = _mailbox(sender_addr, from_display, "from_local@domain")
    words = _first_words(text, REPLY_SUBJECT_WORDS_MAX) or "(empty message)"
    subject = f"SMS reply: {words}"
    if tag:
        clean_tag = clean_header_value(tag, MAX_TAG).replace("[", "").replace("]", "")
        if clean_tag:
            subject = f"[{clean_tag}] {subject}"
    fields = _head_fields(
        from_=sender,
        to=_mailbox(to_addr, "", "to_addr"),
        subject=subject,
        now=now,
        domain=domain,
        original_message_id=original_message_id,
    )
    # RFC 3834 §5: see the module docstring for why a relayed SMS is "auto-generated".
    fields += [("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All")]
    for name, value in (extra_headers or {}).items():
        if not _FIELD_NAME.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"extra header not allowed: {name!r}")
        fields.append((name, clean_header_value(value, MAX_EXTRA_HEADER)))

    body = _clean_body(text).rstrip("\n") + "\n"
    if note:
        # A word from the bridge about this message (e.g. a sender that is no phone number),
        # after the patron's text and apart from it.
        body += "\n-- \n" + _clean_body(note).rstrip("\n") + "\n"
    if original_sms:
        tenant = clean_header_value(tenant_name, MAX_DISPLAY_NAME)
        if original_sent_at is not None:
            _require_aware(original_sent_at)
            intro = f"On {_human_time(original_sent_at)}, {tenant} texted:"
        else:
            intro = f"{tenant} texted:"
        quoted = "\n".join(f"> {line}" for line in _clean_body(original_sms).split("\n"))
        body += f"\n{intro}\n{quoted}\n"
    env_from = sender_addr if envelope_from is None else envelope_from
    if env_from:
        _addr_spec(env_from, "envelope_from")
    data = _render_text_mail(fields, body)
    return Outgoing("reply", env_from, (to_addr,), data, tenant_id=tenant_id)


def build_notification(
    *,
    from_addr: str,
    to_addr: str,
    subject: str,
    body: str,
    now: datetime,
    domain: str,
    in_reply_to: str | None = None,
) -> Outgoing:
    """A plain-text notice from the bridge to staff (opt-outs, config problems, ...).

    Built with the null envelope sender; the mailer sends it from its own bounce address, so
    a failed notification is recorded as lost rather than bouncing into an SMS.
    """
    fields = _head_fields(
        from_=_mailbox(from_addr, "SMS Bridge", "from_addr"),
        to=_mailbox(to_addr, "", "to_addr"),
        subject=subject,
        now=now,
        domain=domain,
        original_message_id=in_reply_to,
    )
    fields += [("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All")]
    data = _render_text_mail(fields, _clean_body(body).rstrip("\n") + "\n")
    return Outgoing("notification", "", (to_addr,), data)


FALLBACK_SUBJECT_PREFIX: Final = "[Not delivered to "


def build_reply_fallback(
    original: bytes,
    *,
    from_addr: str,
    to_addr: str,
    failed_rcpt: str,
    reason: str,
    now: datetime,
    domain: str,
    ref: str | None = None,
    tenant_id: str | None = None,
    fallback_of: int | None = None,
) -> Outgoing:
    """The copy of a lost patron reply for the library's fallback address.

    It is the reply itself, resent (RFC 5322 §3.6.6: Resent-From, Resent-To, Resent-Date and
    Resent-Message-ID are added; From, Message-ID and the threading headers are kept), so staff
    answer the patron by pressing Reply as usual and the answer threads with the conversation.
    The Subject and the top of the text say where the reply should have gone and why it did
    not. `original` is an email built by `build_patron_reply` (7-bit, our own policy).
    """
    _require_aware(now)
    msg = email.message_from_bytes(original, policy=POLICY)
    assert isinstance(msg, EmailMessage)
    failed = clean_header_value(failed_rcpt, MAX_DISPLAY_NAME)
    why = clean_header_value(reason, MAX_DSN_FIELD)
    subject = clean_header_value(str(msg.get("Subject", "")), MAX_SUBJECT)
    del msg["Subject"]
    msg["Subject"] = clean_header_value(
        f"{FALLBACK_SUBJECT_PREFIX}{failed}] {subject}", MAX_SUBJECT
    )
    msg["Resent-From"] = _address(from_addr, "SMS Bridge", "from_addr")
    msg["Resent-To"] = _address(to_addr, "", "to_addr")
    msg["Resent-Date"] = format_datetime(now)
    msg["Resent-Message-ID"] = _message_id(domain)
    if msg.get_content_type() == "text/plain" and not msg.is_multipart():
        note = (
            f"[This patron's text reply could not be delivered to {failed}: {why}\n"
            " It is sent to this address instead; reply as usual to answer the patron,"
            " and ask the bridge administrator to check the library's reply_to address.]\n\n"
        )
        body = msg.get_content()
        msg.set_content(note + _clean_body(str(body)), charset="utf-8")
    return Outgoing(
        "fallback",
        "",
        (to_addr,),
        msg.as_bytes(policy=POLICY),
        ref=ref,
        tenant_id=tenant_id,
        fallback_of=fallback_of,
    )
