"""Value types shared by the intake, the store, the dispatcher and the inbound router."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass


class SmsState(enum.StrEnum):
    """Life of one outbound SMS (MT). Final states never change again, except by `queue retry`."""

    QUEUED = "queued"  # committed, waiting for its turn (or for a retry time)
    SENDING = "sending"  # claimed by the dispatcher; requeued at start if a crash left it here
    SUBMITTED = "submitted"  # every segment got submit_sm_resp ESME_ROK; waiting for receipts
    DELIVERED = "delivered"  # receipts say every segment reached the handset
    FAILED = "failed"  # permanent error; the library gets a bounce email
    EXPIRED = "expired"  # older than smpp.max_age before it could be sent, or the SMSC gave up
    # Accepted by the carrier, but no final receipt came by smpp.receipt_timeout_s (or none was
    # asked for: smpp.registered_delivery none). Not a failure: no bounce. A receipt that still
    # arrives later settles it as delivered/failed/expired (the only final state that may change).
    UNCONFIRMED = "unconfirmed"

    @property
    def final(self) -> bool:
        return self in (
            SmsState.DELIVERED,
            SmsState.FAILED,
            SmsState.EXPIRED,
            SmsState.UNCONFIRMED,
        )


def new_queue_id() -> str:
    """Short, sortable, unguessable id: 10 hex digits of time + 8 random ones.

    Like Postfix queue ids it appears in every log line and SMTP reply ("250 2.0.0 queued as ...")
    so an operator can follow one message across the whole system.
    """
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class NewSms:
    """An accepted notice for one recipient, as the intake hands it to the store."""

    tenant_id: str
    msisdn: str  # E.164, "+12025550143"
    rcpt_addr: str  # the envelope recipient it came for: "2025550143@sms.example.org"
    source_addr: str  # sending number / sender id on the SMPP side
    envelope_from: str  # "" for a null reverse path (never bounced)
    message_id: str | None
    subject: str
    body: str
    in_reply_to: str | None = None  # email the staff member answered (reply threads)
    kind: str = "notice"  # "notice", "reply" (staff answer), "confirmation" (keyword answers)
    dup_key: str | None = None  # bridge.policy.duplicate_key of tenant, number and text
    urgent: bool = False  # the tenant's urgent header: sent even in quiet hours


@dataclass(frozen=True)
class SmsRecord:
    queue_id: str
    tenant_id: str
    msisdn: str
    rcpt_addr: str
    source_addr: str
    envelope_from: str
    message_id: str | None
    subject: str
    body: str | None  # None once purged (privacy retention)
    state: SmsState
    attempts: int
    reason: str | None
    created_at: float
    updated_at: float
    next_attempt_at: float
    segments: int | None
    coding: str | None
    kind: str = "notice"
    urgent: bool = False


@dataclass(frozen=True)
class OptoutRecord:
    msisdn: str
    scope: str  # the sending number (the "program") the opt-out applies to
    opted_out: bool
    keyword: str | None
    changed_at: float
    actor: str  # "patron" (keyword) or "admin:<who>"


@dataclass(frozen=True)
class EnqueueResult:
    queue_id: str
    duplicate: bool  # an identical (Message-ID, number) was accepted within the dedup window


@dataclass(frozen=True)
class MailRecord:
    id: int
    kind: str  # "dsn", "reply", "notification"
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes
    attempts: int
    ref: str | None  # queue id or inbound id it came from, for logs
    tenant_id: str | None = None
    fallback_of: int | None = None  # the lost email this is the fallback copy of
