"""bridge.mailbuild: messages parsed back with the stdlib email package."""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mailbuild import (
    build_notification,
    build_reply_fallback,
    clean_header_value,
    plan_dsn,
)
from bridge.model import Outgoing
from bridge.testing.mail_samples import (
    SAMPLE_NOTICE_ID,
    SAMPLE_NOW,
    sample_dsn,
    sample_notice,
    sample_reply,
)

NOW = SAMPLE_NOW
NOTICE_ID = SAMPLE_NOTICE_ID
INJECT = "\r\nBcc: evil@x.example"


notice = sample_notice
dsn = sample_dsn
reply = sample_reply


def parse(mail: Outgoing) -> email.message.EmailMessage:
    msg = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def assert_wire_safe(raw: bytes) -> None:
    """CRLF only, 7-bit, no line over 998 octets (RFC 5322 §2.1.1, §2.3)."""
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(b < 0x80 for b in raw)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def parts(msg: email.message.EmailMessage) -> list[email.message.EmailMessage]:
    return list(msg.iter_parts())  # type: ignore[arg-type]


def status_groups(msg: email.message.EmailMessage) -> list[email.message.Message]:
    """The field groups of the message/delivery-status part (the parser gives one Message each)."""
    groups = parts(msg)[1].get_payload()
    assert isinstance(groups, list)
    return [g for g in groups if isinstance(g, email.message.Message)]


def body(msg: email.message.EmailMessage) -> str:
    # get_content() keeps the wire's CRLF line ends; compare texts with LF.
    content = msg.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def assert_no_injected_header(raw: bytes) -> None:
    """No header block (top level or MIME part) has a Bcc field, and no bare LF exists at all."""
    assert re.search(rb"(?<!\r)\n", raw) is None
    for block in re.split(rb"\r\n--=+\d+==\r\n", raw):
        assert "Bcc" not in header_names(block)


def header_names(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if not line[:1].isspace()]


# --- clean_header_value ---------------------------------------------------------------------


def test_clean_header_value_removes_line_breaks_and_controls() -> None:
    assert clean_header_value("Hold\r\nBcc: a@b\x00\x1b[0m\u2028x", 100) == "Hold Bcc: a@b [0m x"


def test_clean_header_value_caps_length() -> None:
    assert clean_header_value("x" * 50, 10) == "xxxxxxx..."
    assert clean_header_value("  short  ", 10) == "short"


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(min_value=4, max_value=300))
def test_clean_header_value_never_has_controls(s: str, max_len: int) -> None:
    out = clean_header_value(s, max_len)
    assert len(out) <= max_len
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", out)
    assert out == out.strip()


# --- DSN ----------------------------------------------------------------------------------------


def test_dsn_structure_and_envelope() -> None:
    mail = dsn()
    assert mail.mail_from == ""  # null reverse-path: a DSN never bounces (RFC 5321 §4.5.5)
    assert mail.rcpt_to == ("ils@riverside.example.org",)
    assert re.fullmatch(r"<[0-9a-f]{32}@bridge\.example\.org>", mail.message_id)
    assert_wire_safe(mail.data)

    msg = parse(mail)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(msg)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["Message-ID"] == mail.message_id
    assert msg["Subject"] == "Undeliverable text message: Hold ready for pickup"
    assert msg["From"].addresses[0].addr_spec == "mailer-daemon@bridge.example.org"
    assert msg["To"].addresses[0].addr_spec == "ils@riverside.example.org"
    assert msg["Date"] == "Mon, 23 Nov 2026 14:05:09 +0000"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == NOTICE_ID
    assert msg["References"] == NOTICE_ID


def test_dsn_plan_holds_every_decision() -> None:
    kw: dict[str, Any] = dict(
        reporting_domain="bridge.example.org",
        from_addr="mailer-daemon@bridge.example.org",
        to_addr="ils@riverside.example.org",
        notice=notice(envelope_from="<>"),
        recipient_display="+1 202-555-0143",
        recipient_email="2025550143@sms.example.org",
        action="delayed",
        status="4.4.7",
        diagnostic="smpp; ESME_RTHROTTLED",
        reason="the carrier asked us to slow down",
        advice="Nothing.",
        sms_text=None,
        now=NOW,
    )
    plan = plan_dsn(**kw)
    assert plan.subject == "Delayed text message: Hold ready for pickup"
    assert plan.original_message_id == NOTICE_ID
    assert plan.per_message == (
        ("Reporting-MTA", "dns; bridge.example.org"),
        ("X-SMS-Bridge-Queue-Id", "q-000042"),
        ("Arrival-Date", "Mon, 23 Nov 2026 12:05:09 +0000"),
    )
    assert dict(plan.per_recipient)["Diagnostic-Code"] == "X-SMPP; ESME_RTHROTTLED"
    # No Return-Path for an envelope sender that is no plain address.
    assert [name for name, _ in plan.original_headers] == ["Message-ID", "Subject", "To"]
    assert plan.text.startswith("A library notice has not been delivered as a text message yet.")
    assert "Delayed at:     2026-11-23 14:05 UTC\n" in plan.text
    assert plan_dsn(**kw) == plan  # pure: no clock, no randomness
    # The rendered DSN says what the plan says.
    msg = parse(dsn(**kw))
    assert msg["Subject"] == plan.subject
    assert body(parts(msg)[0]) == plan.text


def test_dsn_delivery_status_fields() -> None:
    msg = parse(dsn())
    groups = status_groups(msg)
    assert len(groups) == 2
    per_message, per_recipient = groups
    assert per_message["Reporting-MTA"] == "dns; bridge.example.org"
    assert per_message["Arrival-Date"] == "Mon, 23 Nov 2026 12:05:09 +0000"
    assert per_message["X-SMS-Bridge-Queue-Id"] == "q-000042"
    assert per_recipient["Original-Recipient"] == "rfc822; 2025550143@sms.example.org"
    assert per_recipient["Final-Recipient"] == "rfc822; 2025550143@sms.example.org"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    # RFC 3464 §2.3.6: "smpp" is not a registered diagnostic type, so it becomes X-SMPP.
    assert per_recipient["Diagnostic-Code"] == "X-SMPP; ESME_RINVDSTADR (0x0000000B)"
    assert per_recipient["Last-Attempt-Date"] == "Mon, 23 Nov 2026 14:05:09 +0000"


def test_dsn_human_part_tells_staff_what_and_why() -> None:
    human = parts(parse(dsn()))[0]
    text = body(human)
    assert "+1 202-555-0143" in text
    assert "2025550143@sms.example.org" in text
    assert "Hold ready for pickup" in text
    assert NOTICE_ID in text
    assert "q-000042" in text
    assert "Riverside Public Library" in text
    assert "the carrier rejected the number as invalid" in text
    assert "Check the patron's phone number in the ILS." in text
    assert "2026-11-23 14:05 UTC" in text
    assert "> Riverside Public Library: your hold is ready." in text


def test_dsn_rfc822_headers_part() -> None:
    part = parts(parse(dsn()))[2]
    headers = email.message_from_string(part.get_content(), policy=email.policy.default)
    assert headers["Message-ID"] == NOTICE_ID
    assert headers["Subject"] == "Hold ready for pickup"
    assert headers["Return-Path"] == "<ils@riverside.example.org>"


def test_dsn_delayed() -> None:
    msg = parse(dsn(action="delayed", status="4.4.7", diagnostic="smpp; ESME_RTHROTTLED"))
    assert msg["Subject"] == "Delayed text message: Hold ready for pickup"
    per_recipient = status_groups(msg)[1]
    assert per_recipient["Action"] == "delayed"
    assert per_recipient["Status"] == "4.4.7"
    assert per_recipient["Diagnostic-Code"] == "X-SMPP; ESME_RTHROTTLED"


@pytest.mark.parametrize(
    ("diagnostic", "expected"),
    [
        ("smtp; 550 5.1.1 no such user", "smtp; 550 5.1.1 no such user"),
        ("X-SMPP; ESME_RSUBMITFAIL", "X-SMPP; ESME_RSUBMITFAIL"),
        ("no response from the SMSC", "X-SMPP; no response from the SMSC"),
    ],
)
def test_dsn_diagnostic_types(diagnostic: str, expected: str) -> None:
    per_recipient = status_groups(parse(dsn(diagnostic=diagnostic)))[1]
    assert per_recipient["Diagnostic-Code"] == expected


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("delayed", "5.1.1"),
        ("failed", "2.0.0"),
        ("failed", "5.1"),
        ("failed", "550"),
        ("failed", "5.1.1\n"),
    ],
)
def test_dsn_rejects_inconsistent_status(action: str, status: str) -> None:
    with pytest.raises(ValueError):
        dsn(action=action, status=status)


def test_dsn_without_message_id_or_arrival() -> None:
    mail = dsn(notice=notice(message_id=None, received_at=None))
    msg = parse(mail)
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None
    per_message = status_groups(msg)[0]
    assert per_message["Arrival-Date"] is None
    assert "Notice id:      (none)" in body(parts(msg)[0])


def test_dsn_malformed_original_message_id_is_dropped() -> None:
    msg = parse(dsn(notice=notice(message_id="<a@b>" + INJECT)))
    assert msg["In-Reply-To"] is None
    assert msg["Bcc"] is None


def test_dsn_header_injection_via_subject() -> None:
    mail = dsn(notice=notice(subject="Hold ready" + INJECT), reason="x" + INJECT)
    msg = parse(mail)
    assert msg["Bcc"] is None
    assert_no_injected_header(mail.data)
    assert msg["Subject"] == "Undeliverable text message: Hold ready Bcc: evil@x.example"
    headers = parts(msg)[2].get_content()
    assert "\nBcc:" not in headers and not headers.startswith("Bcc:")


def test_dsn_non_ascii_subject_is_encoded() -> None:
    mail = dsn(notice=notice(subject="Reserva lista: “Cien años de soledad”"))
    assert_wire_safe(mail.data)
    msg = parse(mail)
    assert msg["Subject"] == "Undeliverable text message: Reserva lista: “Cien años de soledad”"
    assert "“Cien años de soledad”" in body(parts(msg)[0])


def test_dsn_refuses_bad_addresses() -> None:
    with pytest.raises(ValueError):
        dsn(to_addr="")  # a notice from the null sender gets no DSN
    with pytest.raises(ValueError):
        dsn(to_addr="ils@example.org" + INJECT)
    with pytest.raises(ValueError):
        dsn(recipient_email="a b@sms.example.org")
    with pytest.raises(ValueError):
        dsn(now=NOW.replace(tzinfo=None))


# --- patron reply ------------------------------------------------------------------------------


def test_patron_reply_headers_and_body() -> None:
    mail = reply(original_sent_at=NOW - timedelta(days=1))
    assert mail.mail_from == "12025550143@sms.example.org"
    assert mail.rcpt_to == ("circ@riverside.example.org",)
    assert_wire_safe(mail.data)
    msg = parse(mail)
    sender = msg["From"].addresses[0]
    assert sender.display_name == "SMS from +1 202-555-0143"
    assert sender.addr_spec == "12025550143@sms.example.org"
    assert msg["To"].addresses[0].addr_spec == "circ@riverside.example.org"
    assert msg["Subject"] == "SMS reply: Can I pick it up Saturday?"
    assert msg["In-Reply-To"] == NOTICE_ID
    assert msg["References"] == NOTICE_ID
    assert msg["Message-ID"] == mail.message_id
    assert mail.message_id.endswith("@sms.example.org>")
    assert msg["Reply-To"] is None
    # Relayed by a program (RFC 3834 §5.1): responders must not answer it; staff still can.
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert body(msg) == (
        "Can I pick it up Saturday?\n"
        "\n"
        "On 2026-11-22 14:05 UTC, Riverside Public Library texted:\n"
        "> Riverside Public Library: your hold is ready.\n"
    )


def test_patron_reply_tag_and_long_subject() -> None:
    text = "Hello, I would like to renew every single one of the books I have out right now please"
    msg = parse(reply(text=text, tag="RENEW"))
    # Python folds a 70-77 character value onto a continuation line whole, and its parser keeps
    # the folding space (mail clients trim it).
    subject = msg["Subject"].strip()
    assert subject == "[RENEW] SMS reply: Hello, I would like to renew every single one of the..."
    assert len(subject.removeprefix("[RENEW] SMS reply: ")) <= 58


def test_patron_reply_without_original() -> None:
    msg = parse(reply(original_sms=None, original_message_id=None))
    assert body(msg) == "Can I pick it up Saturday?\n"
    assert msg["In-Reply-To"] is None


def test_patron_reply_without_sent_time() -> None:
    assert "\nRiverside Public Library texted:\n" in body(parse(reply()))


def test_patron_reply_header_injection() -> None:
    mail = reply(
        text="hi" + INJECT,
        from_display="SMS" + INJECT,
        tag="X" + INJECT,
        original_message_id=NOTICE_ID + INJECT,
    )
    msg = parse(mail)
    assert msg["Bcc"] is None
    assert_no_injected_header(mail.data)
    # The tag is capped at 20 characters.
    assert msg["Subject"] == "[X Bcc: evil@x.exa...] SMS reply: hi Bcc: evil@x.example"
    # The body may say "Bcc: ..." on its own line; it is body text, not a header.
    assert "Bcc: evil@x.example" in body(msg)


def test_patron_reply_long_unbroken_text_keeps_lines_short() -> None:
    for text in ("x" * 5000, "ü" * 5000, "https://example.org/" + "a" * 4980):
        mail = reply(text=text, original_sms="y" * 5000)
        assert_wire_safe(mail.data)
        msg = parse(mail)
        assert body(msg).startswith(text + "\n\n")
        assert msg["Subject"] == "SMS reply: " + text[:55] + "..."
        if text.isascii():  # one unfolded line; the non-ASCII one is RFC 2047 encoded words
            assert re.search(rb"\r\nSubject: SMS reply: \S+\.\.\.\r\n", mail.data)


def test_patron_reply_extra_headers() -> None:
    msg = parse(reply(extra_headers={"X-SMS-Bridge-Conversation": "c-17" + INJECT}))
    assert msg["X-SMS-Bridge-Conversation"] == "c-17 Bcc: evil@x.example"
    assert msg["Bcc"] is None
    for name in ("Bcc", "From", "Subject", "X-Bad: Name", "X-Bad\r\nBcc"):
        with pytest.raises(ValueError):
            reply(extra_headers={name: "v"})


@pytest.mark.parametrize(
    "kw",
    [
        {"envelope_from": "bounces@bridge.example.org\n"},
        {"to_addr": "circ@riverside.example.org\n"},
        {"to_addr": "Circ <circ@riverside.example.org>"},
        {"to_addr": "cïrc@riverside.example.org"},
        {"from_local": "1202\x005550143"},
        {"domain": "sms.example.org\n"},
        {"extra_headers": {"X-Foo\n": "v"}},
    ],
)
def test_patron_reply_refuses_trailing_newlines_and_odd_addresses(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        reply(**kw)


def test_patron_reply_envelope_override() -> None:
    assert reply(envelope_from="bounces@bridge.example.org").mail_from == (
        "bounces@bridge.example.org"
    )
    assert reply(envelope_from="").mail_from == ""


@pytest.mark.parametrize(
    ("text", "display", "subject"),
    [
        (
            "Can I pick it up Saturday?",
            "SMS from +1 202-555-0143",
            "SMS reply: Can I pick it up Saturday?",
        ),
        (
            "Можно забрать книгу в субботу?",
            "SMS from J. O'Brien, front desk",
            "SMS reply: Можно забрать книгу в субботу?",
        ),
        ("Thanks 🙂👍 see you", 'SMS from Пётр "читатель"', "SMS reply: Thanks 🙂👍 see you"),
        (
            "Здравствуйте! Я хотел бы продлить все книги, которые у меня сейчас есть 📚 спасибо",
            "SMS from 📚 " + "Библиотека " * 12,
            "SMS reply: Здравствуйте! Я хотел бы продлить все книги, которые у...",
        ),
        (
            "Hello, I would like to renew every single one of the books I have out right now",
            "SMS from +1 202-555-0143",
            "SMS reply: Hello, I would like to renew every single one of the...",
        ),
    ],
)
def test_patron_reply_parses_back_to_every_field(text: str, display: str, subject: str) -> None:
    mail = reply(
        text=text,
        from_display=display,
        tag="RENEW",
        original_sent_at=NOW - timedelta(days=1),
        extra_headers={"X-SMS-Bridge-Conversation": "c-17 " + text},
        tenant_id="riverside",
    )
    assert (mail.kind, mail.tenant_id, mail.mail_from) == (
        "reply",
        "riverside",
        "12025550143@sms.example.org",
    )
    assert_wire_safe(mail.data)
    assert header_names(mail.data) == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Auto-Submitted",
        "X-Auto-Response-Suppress",
        "X-SMS-Bridge-Conversation",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]
    msg = parse(mail)
    assert not msg.defects and all(not h.defects for h in msg.values())
    (sender,) = msg["From"].addresses
    assert sender.addr_spec == "12025550143@sms.example.org"
    # The display name is read with RFC 2047 §6.2 decoding (the space between two adjacent
    # encoded words is dropped), which the default policy's parser skips inside a phrase: it
    # reads "Библи" "отека" back as two words.
    raw_from = email.message_from_bytes(mail.data, policy=email.policy.compat32)["From"]
    decoded = str(email.header.make_header(email.header.decode_header(raw_from)))
    shown = clean_header_value(display, 100)
    assert decoded in (f"{shown} <{sender.addr_spec}>", f'"{shown}" <{sender.addr_spec}>')
    assert [a.addr_spec for a in msg["To"].addresses] == ["circ@riverside.example.org"]
    # A 70-77 character value is folded onto a continuation line whole, and the stdlib's
    # parser keeps the folding space (mail clients trim it).
    assert msg["Subject"].strip() == f"[RENEW] {subject}"
    assert msg["Date"] == "Mon, 23 Nov 2026 14:05:09 +0000"
    assert re.fullmatch(r"<[0-9a-f]{32}@sms\.example\.org>", msg["Message-ID"])
    assert msg["Message-ID"] == mail.message_id
    assert msg["In-Reply-To"] == msg["References"] == NOTICE_ID
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["X-SMS-Bridge-Conversation"].strip() == "c-17 " + text
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    # 7bit only when every line is ASCII and fits 78 octets (RFC 5322 §2.1.1), else encoded.
    short_ascii = text.isascii() and len(text) <= 78
    cte = msg["Content-Transfer-Encoding"]
    assert cte == "7bit" if short_ascii else cte in ("base64", "quoted-printable")
    assert body(msg) == (
        f"{text}\n"
        "\n"
        "On 2026-11-22 14:05 UTC, Riverside Public Library texted:\n"
        "> Riverside Public Library: your hold is ready.\n"
    )


def test_message_ids_are_unique() -> None:
    assert len({reply().message_id for _ in range(50)}) == 50


def test_message_id_is_read_from_the_bytes() -> None:
    folded = b"Subject: x\r\nMessage-ID:\r\n <a@b.example>\r\nTo: c@d\r\n\r\nMessage-ID: <no>\r\n"
    assert Outgoing("reply", "", ("c@d",), folded).message_id == "<a@b.example>"
    with pytest.raises(ValueError):
        _ = Outgoing("reply", "", ("c@d",), b"Subject: x\r\n\r\nMessage-ID: <no>\r\n").message_id


def test_builders_label_their_emails() -> None:
    assert (dsn(ref="q-1").kind, dsn(ref="q-1").ref) == ("dsn", "q-1")
    assert (reply(tenant_id="riverside").kind, reply(tenant_id="riverside").tenant_id) == (
        "reply",
        "riverside",
    )


# --- staff notification ------------------------------------------------------------------------


def test_notification() -> None:
    mail = build_notification(
        from_addr="bridge@riverside.example.org",
        to_addr="circ@riverside.example.org",
        subject="Patron +1 202-555-0143 opted out" + INJECT,
        body="Patron +1 202-555-0143 opted out of text notices on 2026-11-23.\r\n",
        now=NOW,
        domain="bridge.example.org",
        in_reply_to=NOTICE_ID,
    )
    assert mail.mail_from == ""
    assert mail.rcpt_to == ("circ@riverside.example.org",)
    assert_wire_safe(mail.data)
    msg = parse(mail)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Subject"] == "Patron +1 202-555-0143 opted out Bcc: evil@x.example"
    assert msg["Bcc"] is None
    assert msg["In-Reply-To"] == NOTICE_ID
    assert msg["Date"] == "Mon, 23 Nov 2026 14:05:09 +0000"
    assert body(msg) == "Patron +1 202-555-0143 opted out of text notices on 2026-11-23.\n"


@settings(max_examples=60, deadline=None)
@given(subject=st.text(max_size=300), body=st.text(max_size=2000))
def test_notification_never_injects_headers(subject: str, body: str) -> None:
    mail = build_notification(
        from_addr="bridge@riverside.example.org",
        to_addr="circ@riverside.example.org",
        subject=subject + INJECT,
        body=body,
        now=NOW,
        domain="bridge.example.org",
    )
    assert_wire_safe(mail.data)
    assert header_names(mail.data) == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Auto-Submitted",
        "X-Auto-Response-Suppress",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]


def test_reply_fallback_is_the_reply_resent_with_the_reason() -> None:
    original = reply(text="Can I pick it up Saturday? \u00e9t\u00e9")
    later = NOW + timedelta(minutes=3)
    copy = build_reply_fallback(
        original.data,
        from_addr="sms-bridge@sms.example.org",
        to_addr="desk@riverside.example.org",
        failed_rcpt="circ@riverside.example.org",
        reason="bounced: circ@riverside.example.org: 5.1.1 550 5.1.1 User unknown",
        now=later,
        domain="sms.example.org",
        ref="mo-1",
        tenant_id="riverside",
        fallback_of=7,
    )
    assert (copy.kind, copy.ref, copy.tenant_id, copy.fallback_of) == (
        "fallback",
        "mo-1",
        "riverside",
        7,
    )
    assert copy.rcpt_to == ("desk@riverside.example.org",)
    assert copy.mail_from == ""  # the mailer gives it its own bounce address
    assert_wire_safe(copy.data)
    msg = parse(copy)
    first = parse(original)
    # RFC 5322 §3.6.6: the original fields stay, so staff reply to the patron and the answer
    # threads with the conversation (Message-ID kept); the Resent-* fields say who resent it.
    assert msg["From"] == first["From"]
    assert msg["Message-ID"] == first["Message-ID"]
    assert msg["In-Reply-To"] == NOTICE_ID
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Resent-To"] == "desk@riverside.example.org"
    assert "sms-bridge@sms.example.org" in msg["Resent-From"]
    assert copy.message_id == first["Message-ID"]  # the reply itself, resent
    assert re.fullmatch(r"<[0-9a-f]{32}@sms\.example\.org>", msg["Resent-Message-ID"])
    assert msg["Resent-Message-ID"] != first["Message-ID"]
    assert msg["Resent-Date"] == "Mon, 23 Nov 2026 14:08:09 +0000"
    assert msg["Subject"] == (
        "[Not delivered to circ@riverside.example.org] SMS reply: Can I pick it up Saturday? "
        "\u00e9t\u00e9"
    )
    body = msg.get_content()
    assert body.startswith("[This patron's text reply could not be delivered to circ@riverside")
    assert "5.1.1 User unknown" in body
    assert "Can I pick it up Saturday? \u00e9t\u00e9" in body
    assert "> Riverside Public Library: your hold is ready." in body
