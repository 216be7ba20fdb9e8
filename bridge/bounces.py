"""Bounce emails (RFC 3464 DSNs): who gets one, what it advises, and the emails themselves.

Both ways a notice can fail use this: a text that failed after it was queued (the dispatcher
and receipts, `build_bounces`) and a notice that IMAP intake refused before queueing it
(bridge/imap_intake.py). An SMTP notice refused at RCPT or DATA gets no DSN: the sending
server was told in the SMTP reply and bounces it itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.addressing import format_msisdn
from bridge.config import Config, TenantConfig
from bridge.mailbuild import NoticeRef, build_dsn, plan_dsn
from bridge.model import Failure, Outgoing, SmsRecord, SmsState

__all__ = ["Refusal", "advice", "bounce_recipients", "build_bounces", "dsn_mails"]

# What library staff can do, by RFC 3463 status: about a text that failed, or about a notice
# the bridge refused.
_ADVICE = {
    "5.1.1": "Check the patron's phone number in the ILS; the carrier says it cannot take texts.",
    "5.1.3": "Check the patron's phone number in the ILS; it must be a mobile number.",
    "5.1.7": "Ask the bridge administrator to check the sending number (smpp.source_addr).",
    "5.4.7": "The patron's phone was unreachable (switched off or out of coverage) until the "
    "carrier gave up. If this repeats, contact the patron another way.",
    "4.4.7": "The bridge could not reach the carrier in time. The administrator has the details; "
    "send the notice again if it still matters.",
    "5.6.0": "The notice had no text the bridge could send; check the ILS notice template.",
    "5.7.1": "The patron has opted out of text messages from this library, or a sending rule "
    "stopped the text; contact the patron another way.",
}
_DEFAULT_ADVICE = (
    "Check the notice and the patron's phone number in the ILS. If they are right, contact the "
    "patron another way and tell the bridge administrator (quote the queue id above)."
)


def advice(status: str) -> str:
    """What library staff can do about a failure with this RFC 3463 status."""
    return _ADVICE.get(status, _DEFAULT_ADVICE)


def bounce_recipients(tenant: TenantConfig | None, sender: str, ourselves: str) -> list[str]:
    """Who gets a bounce about a notice from `sender`: the sender, the library's bounce_to, or
    both, as the library's bounce_mode says ("sender" when the library is unknown).

    Never the null sender (RFC 5321 §4.5.5: that is how bounce loops between mail systems are
    prevented), and never `ourselves` (the bridge's own From): a bounce about the bridge's own
    mail would only come back to it.
    """
    mode = tenant.bounce_mode if tenant is not None else "sender"
    out: list[str] = []
    if mode in ("sender", "both") and sender and sender.lower() != ourselves.lower():
        out.append(sender)
    if tenant is not None and mode in ("fixed", "both") and tenant.bounce_to:
        out.append(tenant.bounce_to)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Refusal:
    """One recipient of a notice that got no text, in the terms of a DSN (RFC 3464 §2.3)."""

    display: str  # the number or address as staff know it
    email: str  # Final-Recipient
    status: str  # RFC 3463
    diagnostic: str  # Diagnostic-Code, e.g. "smtp; 550 5.1.3 ..."
    reason: str  # one sentence for staff
    advice: str
    sms_text: str | None = None


def dsn_mails(
    cfg: Config, notice: NoticeRef, to: Sequence[str], refusal: Refusal, now: float
) -> list[Outgoing]:
    """One DSN about `refusal` to each address in `to`, as outbox entries for the notice.

    Raises ValueError for an address build_dsn cannot put in a header.
    """
    when = datetime.fromtimestamp(now, UTC)
    return [
        build_dsn(
            plan_dsn(
                reporting_domain=cfg.smtp.domains[0],
                from_addr=cfg.mail.from_,
                to_addr=to_addr,
                notice=notice,
                recipient_display=refusal.display,
                recipient_email=refusal.email,
                action="failed",
                status=refusal.status,
                diagnostic=refusal.diagnostic,
                reason=refusal.reason,
                advice=refusal.advice,
                sms_text=refusal.sms_text,
                now=when,
            ),
            ref=notice.queue_id,
        )
        for to_addr in to
    ]


def build_bounces(cfg: Config, rec: SmsRecord, failure: Failure, now: float) -> list[Outgoing]:
    """The DSNs about a text that failed for good."""
    tenant = cfg.tenant_or_none(rec.tenant_id)
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
    refusal = Refusal(
        display=format_msisdn(rec.msisdn),
        email=rec.rcpt_addr,
        status=status,
        diagnostic=failure.diagnostic,
        reason=failure.reason,
        advice=advice(failure.status),  # the advice of what happened: "4.4.7" expired in queue
        sms_text=rec.body,
    )
    to = bounce_recipients(tenant, rec.envelope_from, cfg.mail.from_)
    return dsn_mails(cfg, notice, to, refusal, now)
