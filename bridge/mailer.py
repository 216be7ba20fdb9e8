"""Outbound email worker: mail outbox → relay (aiosmtplib) or the local Maildir.

Retries with backoff on temporary errors; a permanent refusal (5xx) or too many attempts make
the email a dead letter with its reason, visible in `sms-bridge status` and on the status
page; a dead patron reply gets a fallback copy (bridge/bounce_intake.py). Nothing is lost
while the relay is down: the email waits in the store.

Every email but a DSN is sent from its own bounce address (bridge/verp.py), made here from
the outbox id, so a bounce that comes back later names the email it is about.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge import verp
from bridge.backoff import backoff_delay
from bridge.bounce_intake import NULL_SENDER_KINDS, bounce_domain, load_secret, record_lost
from bridge.config import Config
from bridge.mail_transport import (
    MaildirTransport,
    MailTransport,
    SmtpRelayTransport,
    TransportError,
)
from bridge.model import MailRecord
from bridge.store import MailOutbox
from bridge.store.base import MailInfo
from bridge.worker import Worker

if TYPE_CHECKING:
    from bridge.metrics import Metrics

log = logging.getLogger(__name__)


def make_transport(cfg: Config) -> MailTransport:
    mail = cfg.mail
    if mail.relay is None:
        return MaildirTransport(mail.maildir)
    return SmtpRelayTransport(
        mail.relay.host,
        mail.relay.port,
        starttls=mail.starttls,
        tls_verify=mail.tls_verify,
        username=mail.username,
        password=mail.password,
        timeout_s=mail.timeout_s,
        local_hostname=cfg.smtp.hostname or cfg.smtp.domains[0],
    )


class Mailer(Worker):
    """Sends the mail outbox, oldest first; one email at a time (a relay is one peer)."""

    name = "mailer"

    def __init__(
        self,
        cfg: Config,
        store: MailOutbox,
        transport: MailTransport,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.transport = transport
        self.clock = clock
        self.metrics = metrics
        self._secret: bytes | None = None
        super().__init__()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self._secret = None

    async def envelope_sender(self, rec: MailRecord) -> str:
        """The email's own bounce address; a DSN keeps the null sender (RFC 5321 §4.5.5:
        a bounce is never bounced)."""
        if rec.mail.kind in NULL_SENDER_KINDS:
            return rec.mail.mail_from
        if self._secret is None:
            self._secret = await load_secret(self.cfg, self.store)
        return verp.encode(rec.id, self._secret, bounce_domain(self.cfg))

    async def stop(self, grace_s: float | None = None) -> None:
        """An email being sent gets up to mail.timeout_s to finish; if it is cut off, it is
        still `sending` in the store and goes again after its lease (never lost)."""
        await super().stop(self.cfg.mail.timeout_s if grace_s is None else grace_s)

    async def step(self) -> float:
        batch = await self.store.claim_mail(self.clock(), 20)
        for rec in batch:
            if self.stopping:
                return 0.0
            await self._send(rec)
        if batch:
            return 0.0
        due = await self.store.next_mail_due()
        return 1.0 if due is None else min(1.0, due - self.clock())

    async def _send(self, rec: MailRecord) -> None:
        # The email as queued, but sent from its own bounce address (see envelope_sender).
        mail = dataclasses.replace(rec.mail, mail_from=await self.envelope_sender(rec))
        try:
            await self.transport.send(mail)
        except TransportError as exc:
            cfg = self.cfg.mail
            now = self.clock()
            if exc.permanent or rec.attempts >= cfg.max_attempts:
                info = MailInfo(
                    rec.id,
                    mail.kind,
                    "queued",
                    mail.rcpt_to,
                    mail.data,
                    mail.tenant_id,
                    mail.ref,
                    mail.fallback_of,
                )
                await record_lost(
                    self.cfg, self.store, info, "dead", f"dead letter: {exc}", now, self.metrics
                )
                return
            delay = backoff_delay(rec.attempts - 1, cfg.retry_min_s, cfg.retry_max_s)
            await self.store.mail_done(rec.id, "queued", str(exc), now, next_at=now + delay)
            log.warning("mail id=%d kind=%s retry in %.0f s: %s", rec.id, mail.kind, delay, exc)
            return
        await self.store.mail_done(rec.id, "sent", None, self.clock())
        log.info("mail id=%d kind=%s ref=%s sent", rec.id, mail.kind, mail.ref or "-")
