"""What a bounce that came back to one of the bridge's own addresses says (pure).

A standard bounce is an RFC 3464 delivery status notification: multipart/report;
report-type=delivery-status (RFC 6522) whose message/delivery-status part holds one group of
per-message fields and one group per recipient (Final-Recipient, Action, Status,
Diagnostic-Code). Postfix, Exim, Sendmail and Exchange all send that. Older or odd systems
(qmail's QSBMF, some appliances) send plain text; since it reached a bounce address from the
null sender it is a failure report all the same, and the line with a status code and the first
lines are the best reason there is.

Only a final failure counts: a "delayed" report (Postfix's delay_warning_time) means the MTA
is still trying, and "delivered"/"relayed"/"expanded" (RFC 3464 §2.3.3) are success reports
someone asked for with NOTIFY=SUCCESS. Those change nothing.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from typing import Final

__all__ = ["BounceReport", "parse_bounce"]

MAX_REASON: Final = 300
# Plain-text bounces: how many non-empty lines make the reason.
REASON_LINES: Final = 4
# RFC 3463 §2 status code somewhere in free text ("550 5.1.1 <x>: User unknown").
_STATUS_IN_TEXT: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_STATUS: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_SUCCESS: Final = frozenset({"delivered", "relayed", "expanded"})
_STATUS_TYPES: Final = frozenset({"message/delivery-status", "message/global-delivery-status"})


@dataclass(frozen=True)
class BounceReport:
    failed: bool  # a final delivery failure for at least one recipient
    action: str  # RFC 3464 §2.3.3 action of the recipient reported, or "failed" for a guess
    status: str  # RFC 3463 code, "5.0.0" when the bounce gives none
    recipient: str | None  # Final-Recipient address, when given
    diagnostic: str | None  # Diagnostic-Code text (type prefix removed) or the first lines
    standard: bool  # an RFC 3464 report (False: a non-standard bounce read as a failure)

    @property
    def reason(self) -> str:
        who = f"{self.recipient}: " if self.recipient else ""
        detail = f" {self.diagnostic}" if self.diagnostic else ""
        return _flat(f"{who}{self.status}{detail}", MAX_REASON)


def _flat(text: str, max_len: int) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= max_len else text[: max_len - 3].rstrip() + "..."


def _typed_value(value: str | None) -> str | None:
    """'rfc822; circ@library.example' -> 'circ@library.example' (RFC 3464 §2.3.2 address-type;
    §2.3.6 diagnostic-type)."""
    if value is None:
        return None
    _, sep, rest = str(value).partition(";")
    out = rest if sep else str(value)
    return _flat(out, MAX_REASON) or None


def _groups(part: Message) -> list[Message]:
    """The field groups of a message/delivery-status part. The stdlib parser splits them for
    us (a list payload); a part it could not split is read by hand, one group per paragraph."""
    payload = part.get_payload()
    if isinstance(payload, list):
        groups = [g for g in payload if isinstance(g, Message)]
        if part.get_content_type() == "message/delivery-status" or len(groups) != 1:
            return groups
        # Any other message/* type is parsed like message/rfc822: the first group becomes the
        # headers of one message and every other group its body.
        rest = groups[0].get_payload()
        return groups[:1] + (_split_groups(rest) if isinstance(rest, str) else [])
    return _split_groups(payload if isinstance(payload, str) else "")


def _split_groups(text: str) -> list[Message]:
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [parser.parsestr(block + "\n") for block in blocks if block.strip()]


def _first_text(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() == "text/plain" or not part.get_content_maintype():
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return raw.decode(charset, "replace")
                except LookupError:
                    return raw.decode("utf-8", "replace")
    payload = msg.get_payload()
    return payload if isinstance(payload, str) else ""


def _from_report(msg: Message) -> BounceReport | None:
    # RFC 6533 §6: message/global-delivery-status is the UTF-8 form (Postfix uses it when
    # the original was sent with SMTPUTF8); the stdlib does not split it, _groups does.
    status_part = next((p for p in msg.walk() if p.get_content_type() in _STATUS_TYPES), None)
    if status_part is None:
        return None
    per_recipient = [g for g in _groups(status_part) if g.get("Action") or g.get("Final-Recipient")]
    if not per_recipient:
        return None
    reports = []
    for group in per_recipient:
        action = str(group.get("Action", "")).strip().lower() or "failed"
        status_raw = str(group.get("Status", "")).strip()
        m = _STATUS.match(status_raw)
        status = m.group(0) if m else ("5.0.0" if action == "failed" else "")
        reports.append(
            BounceReport(
                failed=action == "failed",
                action=action,
                status=status,
                recipient=_typed_value(group.get("Final-Recipient")),
                diagnostic=_typed_value(group.get("Diagnostic-Code")),
                standard=True,
            )
        )
    # One failed recipient is enough: the email did not reach everyone it was for.
    for rep in reports:
        if rep.failed:
            return rep
    # Otherwise report the least final action (a delay is still pending); both change nothing.
    for rep in reports:
        if rep.action not in _SUCCESS:
            return rep
    return reports[0]


def parse_bounce(raw: bytes) -> BounceReport:
    """Read a bounce. Never raises on malformed input: what cannot be read as RFC 3464 is a
    non-standard failure report."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    report = None
    if msg.get_content_type() == "multipart/report" or msg.is_multipart():
        report = _from_report(msg)
    if report is not None:
        return report
    text = _first_text(msg)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The line with a status code is what a person needs ("<circ@x>: Sorry, no mailbox here
    # by that name. (#5.1.1)" in qmail's QSBMF), with the address line before it; then the
    # first lines, which say who is reporting.
    key: list[str] = []
    for i, line in enumerate(lines):
        if _STATUS_IN_TEXT.search(line):
            key = ([lines[i - 1]] if i and lines[i - 1].endswith(":") else []) + [line]
            break
    shown = key + [line for line in lines[:REASON_LINES] if line not in key]
    reason = _flat(" ".join(shown), MAX_REASON) or _flat(str(msg.get("Subject", "")), MAX_REASON)
    # A status code in the text is kept when it says permanent; anything else is reported as
    # the generic permanent "5.0.0" (this mail is a failure report whatever it says).
    found = _STATUS_IN_TEXT.search(text)
    status = found.group(0) if found and found.group(1) == "5" else "5.0.0"
    return BounceReport(
        failed=True,
        action="failed",
        status=status,
        recipient=None,
        diagnostic=reason or None,
        standard=False,
    )
