"""Reading bounces that come back to the bridge's own addresses (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.dsnparse import parse_bounce
from bridge.mailbuild import NoticeRef, build_dsn, plan_dsn
from tests.conftest import SAMPLES

POSTFIX = (SAMPLES / "postfix-bounce-reply.eml").read_bytes()
QMAIL = (SAMPLES / "qmail-bounce.eml").read_bytes()


def test_postfix_bounce() -> None:
    rep = parse_bounce(POSTFIX)
    assert rep.failed and rep.standard
    assert rep.action == "failed"
    assert rep.status == "5.1.1"
    assert rep.recipient == "circ-desk@library.example"
    assert rep.diagnostic == (
        "550 5.1.1 <circ-desk@library.example>: Recipient address rejected:"
        " User unknown in virtual mailbox table"
    )
    assert rep.reason.startswith("circ-desk@library.example: 5.1.1 550 5.1.1")


def test_postfix_bounce_with_crlf_line_ends() -> None:
    rep = parse_bounce(POSTFIX.replace(b"\n", b"\r\n"))
    assert (rep.failed, rep.status, rep.recipient) == (True, "5.1.1", "circ-desk@library.example")


def test_utf8_delivery_status_is_read_too() -> None:
    # RFC 6533: Postfix's form for a message sent with SMTPUTF8; the stdlib leaves it unsplit.
    raw = POSTFIX.replace(
        b"Content-Type: message/delivery-status", b"Content-Type: message/global-delivery-status"
    )
    rep = parse_bounce(raw)
    assert (rep.failed, rep.standard, rep.status) == (True, True, "5.1.1")
    assert rep.recipient == "circ-desk@library.example"
    assert rep.diagnostic is not None and rep.diagnostic.endswith("virtual mailbox table")


def test_postfix_delay_warning_is_not_a_failure() -> None:
    # Postfix's delay_warning_time notice: same format, Action: delayed, a 4.X.X status.
    raw = POSTFIX.replace(b"Action: failed", b"Action: delayed").replace(
        b"Status: 5.1.1", b"Status: 4.4.1"
    )
    rep = parse_bounce(raw)
    assert not rep.failed
    assert (rep.action, rep.status) == ("delayed", "4.4.1")


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_success_reports_are_not_failures(action: str) -> None:
    raw = POSTFIX.replace(b"Action: failed", b"Action: " + action.encode()).replace(
        b"Status: 5.1.1", b"Status: 2.0.0"
    )
    rep = parse_bounce(raw)
    assert not rep.failed and rep.action == action


def test_one_failed_recipient_among_several_is_a_failure() -> None:
    ok_group = (
        b"Final-Recipient: rfc822; other@library.example\nAction: delivered\nStatus: 2.0.0\n\n"
    )
    raw = POSTFIX.replace(
        b"Final-Recipient: rfc822; circ-desk", ok_group + b"Final-Recipient: rfc822; circ-desk"
    )
    rep = parse_bounce(raw)
    assert rep.failed and rep.recipient == "circ-desk@library.example"


def test_non_standard_bounce_is_a_failure_with_its_first_lines() -> None:
    rep = parse_bounce(QMAIL)
    assert rep.failed and not rep.standard
    assert rep.status == "5.1.1"  # "(#5.1.1)" in the text
    assert rep.recipient is None
    assert rep.diagnostic is not None
    assert rep.diagnostic.startswith(
        "<circ@oldlibrary.example>: Sorry, no mailbox here by that name. (#5.1.1)"
        " Hi. This is the qmail-send program at mx.oldlibrary.example."
    )


def test_bare_text_without_status_gets_the_generic_permanent_code() -> None:
    rep = parse_bounce(b"Subject: oops\n\nYour mail could not be delivered.\n")
    assert rep.failed and rep.status == "5.0.0"
    assert rep.reason == "5.0.0 Your mail could not be delivered."


def test_the_bridges_own_dsn_format_reads_back() -> None:
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    mail = build_dsn(
        plan_dsn(
            reporting_domain="sms.example.org",
            from_addr="sms-bridge@sms.example.org",
            to_addr="ils@riverside.example.org",
            notice=NoticeRef("q1", "<n1@ils>", "Hold ready", "ils@riverside.example.org", "R"),
            recipient_display="+1 202-555-0143",
            recipient_email="12025550143@sms.example.org",
            action="failed",
            status="5.1.1",
            diagnostic="smpp; 0x0b ESME_RINVDSTADR",
            reason="bad number",
            advice="check it",
            sms_text="hi",
            now=now,
        )
    )
    rep = parse_bounce(mail.data)
    assert rep.failed and rep.standard and rep.status == "5.1.1"
    assert rep.recipient == "12025550143@sms.example.org"
    assert rep.diagnostic == "0x0b ESME_RINVDSTADR"


@given(st.binary(max_size=2000))
def test_never_raises_on_garbage(raw: bytes) -> None:
    rep = parse_bounce(raw)
    assert rep.failed or rep.standard
    assert len(rep.reason) <= 300
