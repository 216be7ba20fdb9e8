"""Which bounce emails (RFC 3464 DSNs) a failed text produces, and to whom."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.addressing import format_msisdn
from bridge.config import Config
from bridge.mailbuild import NoticeRef, build_dsn
from bridge.model import Failure, SmsRecord, SmsState
from bridge.store import Outgoing

# What library staff can do about each kind of failure, in plain words.
_ADVICE = {
    "5.1.1": "Check the patron's phone number in the ILS; the carrier says it cannot take texts.",
    "5.1.7": "Ask the bridge administrator to check the sending number (smpp.source_addr).",
    "5.4.7": "The patron's phone was unreachable (switched off or out of coverage) until the "
    "carrier gave up. If this repeats, contact the patron another way.",
    "4.4.7": "The bridge could not reach the carrier in time. The administrator has the details; "
    "send the notice again if it still matters.",
    "5.7.1": "The patron has opted out of text messages or a sending rule stopped the text; "
    "contact the patron another way.",
}
_DEFAULT_ADVICE = (
    "Check the patron's phone number in the ILS. If it is right, contact the patron another "
    "way and tell the bridge administrator (quote the queue id above)."
)


def bounce_recipients(cfg: Config, rec: SmsRecord) -> list[str]:
    tenant = cfg.tenant_or_none(rec.tenant_id)
    out: list[str] = []
    mode = tenant.bounce_mode if tenant else "sender"
    # Never bounce a message whose envelope sender was empty (RFC 5321 §4.5.5): that is how
    # bounce loops between mail systems are prevented.
    if mode in ("sender", "both") and rec.envelope_from:
        out.append(rec.envelope_from)
    if tenant is not None and mode in ("fixed", "both") and tenant.bounce_to:
        out.append(tenant.bounce_to)
    return list(dict.fromkeys(out))


def build_bounces(cfg: Config, rec: SmsRecord, failure: Failure, now: float) -> list[Outgoing]:
    tenant = cfg.tenant_or_none(rec.tenant_id)
    when = datetime.fromtimestamp(now, UTC)
    notice = NoticeRef(
        queue_id=rec.queue_id,
        message_id=rec.message_id,
        subject=rec.subject,
        envelope_from=rec.envelope_from,
        tenant_name=tenant.name if tenant else rec.tenant_id,
        received_at=datetime.fromtimestamp(rec.created_at, UTC),
    )
    status = failure.status
    if failure.state is SmsState.EXPIRED and status.startswith("4"):
        status = "5" + status[1:]  # action "failed" takes a permanent status (RFC 3464 §2.3.4)
    out = []
    for to in bounce_recipients(cfg, rec):
        mail = build_dsn(
            reporting_domain=cfg.smtp.domains[0],
            from_addr=cfg.mail.from_,
            to_addr=to,
            notice=notice,
            recipient_display=format_msisdn(rec.msisdn),
            recipient_email=rec.rcpt_addr,
            action="failed",
            status=status,
            diagnostic=failure.diagnostic,
            reason=failure.reason,
            advice=_ADVICE.get(failure.status, _DEFAULT_ADVICE),
            sms_text=rec.body,
            now=when,
            ref=rec.queue_id,
        )
        out.append(mail)
    return out
