"""Sample emails the bridge builds (a DSN, a patron reply), with every field fixed, for tests.

One place for the canonical example a test starts from: a test states only what it changes
(`sample_dsn(status="5.4.7")`). The numbers are 202-555-01xx (never a real patron).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.mailbuild import NoticeRef, build_dsn, build_patron_reply, plan_dsn
from bridge.model import Outgoing

SAMPLE_NOW = datetime(2026, 11, 23, 14, 5, 9, tzinfo=UTC)
SAMPLE_NOTICE_ID = "<hold-7781@ils.riverside.example.org>"


def sample_notice(**kw: Any) -> NoticeRef:
    """The notice a sample DSN is about."""
    fields: dict[str, Any] = dict(
        queue_id="q-000042",
        message_id=SAMPLE_NOTICE_ID,
        subject="Hold ready for pickup",
        envelope_from="ils@riverside.example.org",
        tenant_name="Riverside Public Library",
        received_at=SAMPLE_NOW - timedelta(hours=2),
    )
    fields.update(kw)
    return NoticeRef(**fields)


def sample_dsn_fields(**kw: Any) -> dict[str, Any]:
    """plan_dsn's arguments for a failed text (ESME_RINVDSTADR), with `kw` changed."""
    fields: dict[str, Any] = dict(
        reporting_domain="bridge.example.org",
        from_addr="mailer-daemon@bridge.example.org",
        to_addr="ils@riverside.example.org",
        notice=sample_notice(),
        recipient_display="+1 202-555-0143",
        recipient_email="2025550143@sms.example.org",
        action="failed",
        status="5.1.1",
        diagnostic="smpp; ESME_RINVDSTADR (0x0000000B)",
        reason="the carrier rejected the number as invalid",
        advice="Check the patron's phone number in the ILS.",
        sms_text="Riverside Public Library: your hold is ready.",
        now=SAMPLE_NOW,
    )
    fields.update(kw)
    return fields


def sample_dsn(*, ref: str | None = None, **kw: Any) -> Outgoing:
    return build_dsn(plan_dsn(**sample_dsn_fields(**kw)), ref=ref)


def sample_reply_fields(**kw: Any) -> dict[str, Any]:
    """build_patron_reply's arguments for a patron's answer to a hold notice."""
    fields: dict[str, Any] = dict(
        from_local="12025550143",
        domain="sms.example.org",
        from_display="SMS from +1 202-555-0143",
        to_addr="circ@riverside.example.org",
        text="Can I pick it up Saturday?",
        original_sms="Riverside Public Library: your hold is ready.",
        original_message_id=SAMPLE_NOTICE_ID,
        original_subject="Hold ready for pickup",
        tenant_name="Riverside Public Library",
        now=SAMPLE_NOW,
    )
    fields.update(kw)
    return fields


def sample_reply(**kw: Any) -> Outgoing:
    return build_patron_reply(**sample_reply_fields(**kw))
