"""Outbound email worker: mail outbox → relay (aiosmtplib) or the local Maildir.

Retries with backoff on temporary errors; a permanent refusal (5xx) or too many attempts make
the email a dead letter with its reason, visible in `sms-bridge status` and on the status
page; a dead patron reply gets a fallback copy (bridge/bounce_intake.py). Nothing is lost
while the relay is down: the email waits in the store.

Every email but a DSN is sent from its own bounce address (bridge/verp.py), made here from
the outbox id, so a bounce that comes back later names the email it is about.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from bridge.mailbuild import OutgoingMail
from bridge.model import MailRecord
from bridge.store import MailOutbox, StoreError
from bridge.store.base import MailInfo

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


class Mailer:
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
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self._secret = None

    async def envelope_sender(self, rec: MailRecord) -> str:
        """The email's own bounce address; a DSN keeps the null sender (RFC 5321 §4.5.5:
        a bounce is never bounced)."""
        if rec.kind in NULL_SENDER_KINDS:
            return rec.mail_from
        if self._secret is None:
            self._secret = await load_secret(self.cfg, self.store)
        return verp.encode(rec.id, self._secret, bounce_domain(self.cfg))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mailer")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=self.cfg.mail.timeout_s)
            except TimeoutError:
                log.warning("mailer: an email was still being sent at stop; it will be retried")

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = await self.store.claim_mail(self.clock(), 20)
                for rec in batch:
                    if self._stopping.is_set():
                        break
                    await self._send(rec)
                if not batch:
                    due = await self.store.next_mail_due()
                    await self._sleep(1.0 if due is None else min(1.0, due - self.clock()))
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.error("mailer: store unavailable (%s); retrying in 1 s", exc)
                await self._sleep(1.0)
            except Exception:
                log.exception("mailer loop error; continuing in 1 s")
                await self._sleep(1.0)

    async def _send(self, rec: MailRecord) -> None:
        mail = OutgoingMail(await self.envelope_sender(rec), rec.rcpt_to, rec.data, message_id="")
        try:
            await self.transport.send(mail)
        except TransportError as exc:
            cfg = self.cfg.mail
            now = self.clock()
            if exc.permanent or rec.attempts >= cfg.max_attempts:
                info = MailInfo(
                    rec.id,
                    rec.kind,
                    "queued",
                    rec.rcpt_to,
                    rec.data,
                    rec.tenant_id,
                    rec.ref,
                    rec.fallback_of,
                )
                await record_lost(
                    self.cfg, self.store, info, "dead", f"dead letter: {exc}", now, self.metrics
                )
                return
            delay = backoff_delay(rec.attempts - 1, cfg.retry_min_s, cfg.retry_max_s)
            await self.store.mail_done(rec.id, "queued", str(exc), now, next_at=now + delay)
            log.warning("mail id=%d kind=%s retry in %.0f s: %s", rec.id, rec.kind, delay, exc)
            return
        await self.store.mail_done(rec.id, "sent", None, self.clock())
        log.info("mail id=%d kind=%s ref=%s sent", rec.id, rec.kind, rec.ref or "-")
