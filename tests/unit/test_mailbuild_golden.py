"""bridge.mailbuild output pinned byte for byte.

Each builder's bytes for a few fixed inputs, with the random parts fixed: the Message-ID comes
from uuid.uuid4 and the MIME boundary from the generator, both patched here. A change in
these bytes is a change in what relays and mail clients see; when it is meant, rewrite the
file in tests/unit/mailbuild_golden/ and say why in the commit.
"""

from __future__ import annotations

import email.generator
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge import mailbuild
from bridge.mailbuild import build_notification
from bridge.testing.mail_samples import SAMPLE_NOW, sample_dsn, sample_notice, sample_reply

GOLDEN = Path(__file__).parent / "mailbuild_golden"
NOW = SAMPLE_NOW
FIXED_ID = uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF)
BOUNDARY = "===============4242424242424242424=="


def _dsn(**kw: Any) -> bytes:
    notice = sample_notice(**kw.pop("notice", {}))
    return sample_dsn(notice=notice, **kw).data


def _reply(**kw: Any) -> bytes:
    return sample_reply(**kw).data


CASES: dict[str, Callable[[], bytes]] = {
    "dsn_failed": lambda: _dsn(),
    "dsn_delayed_non_ascii": lambda: _dsn(
        notice={
            "message_id": None,
            "received_at": None,
            "subject": "Reserva lista: “Cien años de soledad”",
        },
        action="delayed",
        status="4.4.7",
        diagnostic="no response from the SMSC",
        sms_text=None,
    ),
    "dsn_smtp_long": lambda: _dsn(
        notice={"envelope_from": "not an address", "subject": "Overdue " * 30},
        diagnostic="smtp; 550 5.1.1 <2025550143@sms.example.org>: Recipient address rejected",
        reason="the number is not a mobile phone\nand cannot take texts",
        sms_text="line one\nline two ü\n\nline four " + "x" * 120,
    ),
    "reply": lambda: _reply(original_sent_at=NOW - timedelta(days=1)),
    "reply_cyrillic_emoji": lambda: _reply(
        text="Можно забрать книгу в субботу? 🙂", tag="RENEW", original_sms=None
    ),
    "reply_long": lambda: _reply(
        text="Hello, I would like to renew every single one of the books I have out " * 3,
        from_display="SMS from J. O'Brien, front desk",
        note="Note from the SMS bridge: the carrier gave the sender as 'LIBRARY'",
        extra_headers={"X-SMS-Bridge-Conversation": "c-17 " + "y" * 90},
        envelope_from="",
    ),
    "reply_quoted_printable": lambda: _reply(
        text="Merci, j'arrive à 15 h. " + "Très bien. " * 12, tenant_name="Bibliothèque"
    ),
    "notification": lambda: (
        build_notification(
            from_addr="bridge@riverside.example.org",
            to_addr="circ@riverside.example.org",
            subject="Patron +1 202-555-0143 opted out of text notices",
            body="Patron +1 202-555-0143 opted out of text notices on 2026-11-23.\n",
            now=NOW,
            domain="bridge.example.org",
            in_reply_to="<hold-7781@ils.riverside.example.org>",
        ).data
    ),
}


@pytest.fixture(autouse=True)
def _fixed_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailbuild.uuid, "uuid4", lambda: FIXED_ID)
    monkeypatch.setattr(
        email.generator.Generator, "_make_boundary", classmethod(lambda cls, text=None: BOUNDARY)
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_builder_output_is_pinned(name: str) -> None:
    assert CASES[name]() == (GOLDEN / f"{name}.eml").read_bytes()
