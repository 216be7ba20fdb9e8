"""Who gets a bounce and what it says (bridge/bounces.py, pure): one set of rules for a text
that failed after it was queued and for a notice IMAP intake refused."""

from __future__ import annotations

import email
import email.policy

from bridge.bounces import advice, bounce_recipients, build_bounces
from bridge.model import Failure, SmsRecord, SmsState
from tests.conftest import MakeConfig, tenant

US = "sms-bridge@sms.example.org"  # mail.from in the test config
ILS = "ils@riverside.example.org"
DESK = "desk@riverside.example.org"


def test_bounce_recipients_follow_bounce_mode(make_config: MakeConfig) -> None:
    def to(mode: str, sender: str = ILS) -> list[str]:
        over = {"bounce_mode": mode, "bounce_to": DESK} if mode != "sender" else {}
        cfg = make_config({"tenants": [tenant(**over)]})
        return bounce_recipients(cfg.tenant("riverside"), sender, US)

    assert to("sender") == [ILS]
    assert to("fixed") == [DESK]
    assert to("both") == [ILS, DESK]
    assert to("both", sender=DESK) == [DESK]  # one bounce per address
    # The null sender never gets a bounce (RFC 5321 §4.5.5) ...
    assert to("sender", sender="") == []
    assert to("both", sender="") == [DESK]
    # ... nor do we ourselves, in any spelling: a bounce to the bridge only comes back to it.
    assert to("sender", sender=US) == []
    assert to("both", sender=US.upper()) == [DESK]


def test_unknown_library_bounces_to_the_sender_only() -> None:
    assert bounce_recipients(None, ILS, US) == [ILS]
    assert bounce_recipients(None, US, US) == []


def _rec(envelope_from: str) -> SmsRecord:
    return SmsRecord(
        queue_id="Q1",
        tenant_id="riverside",
        msisdn="+12025550143",
        rcpt_addr="2025550143@sms.example.org",
        source_addr="12025550100",
        envelope_from=envelope_from,
        message_id="<n1@riverside.example.org>",
        subject="Hold ready",
        body="Your hold is ready.",
        state=SmsState.EXPIRED,
        attempts=3,
        reason="expired",
        created_at=1_700_000_000.0,
        updated_at=1_700_000_100.0,
        next_attempt_at=0.0,
        segments=1,
        coding="gsm7",
    )


def test_failed_text_bounce_from_ourselves_is_not_sent(make_config: MakeConfig) -> None:
    cfg = make_config()
    failure = Failure(SmsState.EXPIRED, "The carrier was not reached.", "4.4.7", "x-smpp; timeout")
    assert build_bounces(cfg, _rec(US), failure, 1_700_000_200.0) == []
    (mail,) = build_bounces(cfg, _rec(ILS), failure, 1_700_000_200.0)
    assert (mail.kind, mail.mail_from, mail.rcpt_to, mail.ref) == ("dsn", "", (ILS,), "Q1")
    msg = email.message_from_bytes(mail.data, policy=email.policy.default)
    text = msg.as_string()
    # Expired: the DSN's status is permanent (RFC 3464 §2.3.4), the advice is for 4.4.7.
    assert "Status: 5.4.7" in text
    assert "could not reach the carrier in time" in text


def test_advice_has_a_default() -> None:
    assert "mobile number" in advice("5.1.3")
    assert "quote the queue id" in advice("5.9.9")
