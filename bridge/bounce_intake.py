"""Bounces for the bridge's own emails: nothing the bridge emails disappears silently.

Every email the bridge originates (patron replies, notifications, reports, fallback copies)
leaves from its own bounce address (bridge/verp.py). When the library's mail server cannot
deliver it, the DSN comes back there from the null sender; the SMTP intake hands it here:

* RCPT: the null sender is accepted only for one of those addresses with a valid token
  (a forged or stale token gets 550 5.1.1). The token is the authentication, so a DSN is
  taken from any client: it comes from the library's MTA, which is in no tenant's networks.
* DATA: the bounce is read (bridge/dsnparse.py); a final failure marks the email lost
  ('bounced') with the reason, once. A lost patron reply is resent once to the library's
  fallback address. A replayed DSN, a delay warning or a success report changes nothing.

No loop is possible: a DSN is never answered with a DSN (nothing here sends one), the
bridge's own DSNs go out from the null sender and so can never come back, and the fallback
copy of a reply is a different kind of email that never gets a fallback of its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bridge import verp
from bridge.config import Config
from bridge.dsnparse import parse_bounce
from bridge.mailbuild import build_reply_fallback
from bridge.model import Wake
from bridge.store import MailOutbox, Outgoing
from bridge.store.base import MailInfo

if TYPE_CHECKING:
    from bridge.metrics import Metrics

log = logging.getLogger(__name__)

# Store meta key of the generated secret (when mail.verp_secret is not configured).
SECRET_KEY = "verp_secret"
# The only email kind that keeps the null sender (RFC 3464 §2, RFC 5321 §4.5.5).
NULL_SENDER_KINDS = frozenset({"dsn"})
# Which lost emails get a fallback copy: patron replies only. A fallback copy is kind
# "fallback", so when it bounces too it is only recorded (no loop).
FALLBACK_KINDS = frozenset({"reply"})

ERR_550_FORGED = "550 5.1.1 No such bounce address; the bridge did not send this email"
OK_250_BOUNCE = "250 2.0.0 OK bounce recorded"


def bounce_domain(cfg: Config) -> str:
    return cfg.mail.bounce_domain or cfg.smtp.domains[0]


def bounce_domains(cfg: Config) -> tuple[str, ...]:
    return tuple(dict.fromkeys((bounce_domain(cfg), *cfg.smtp.domains)))


async def load_secret(cfg: Config, store: MailOutbox) -> bytes:
    """mail.verp_secret, or the one kept in the store (made on first use; on PostgreSQL the
    first instance to ask makes it and every other reads the same)."""
    if cfg.mail.verp_secret:
        return cfg.mail.verp_secret.encode("utf-8")
    value = await store.meta_setdefault(SECRET_KEY, secrets.token_hex(32))
    return value.encode("ascii")


def fallback_address(cfg: Config, tenant_id: str | None, failed: Sequence[str]) -> str | None:
    """Where a lost reply goes instead: tenants[].fallback_to, else bounce_to, else
    inbound.fallback_to; never an address that just bounced it."""
    tenant = cfg.tenant_or_none(tenant_id) if tenant_id else None
    candidates = [tenant.fallback_to, tenant.bounce_to] if tenant is not None else []
    candidates.append(cfg.inbound.fallback_to)
    bad = {a.lower() for a in failed}
    for addr in candidates:
        if addr and addr.lower() not in bad:
            return addr
    return None


def fallback_copy(cfg: Config, info: MailInfo, reason: str, now: float) -> Outgoing | None:
    """The fallback copy of a lost email, or None (not a reply, no address, bytes gone)."""
    if info.kind not in FALLBACK_KINDS or info.fallback_of is not None or not info.data:
        return None
    to = fallback_address(cfg, info.tenant_id, info.rcpt_to)
    if to is None:
        return None
    return build_reply_fallback(
        info.data,
        from_addr=cfg.mail.from_,
        to_addr=to,
        failed_rcpt=", ".join(info.rcpt_to),
        reason=reason,
        now=datetime.fromtimestamp(now, UTC),
        domain=bounce_domain(cfg),
        ref=info.ref,
        tenant_id=info.tenant_id,
        fallback_of=info.id,
    )


async def record_lost(
    cfg: Config,
    store: MailOutbox,
    info: MailInfo,
    state: str,
    reason: str,
    now: float,
    metrics: Metrics | None = None,
) -> bool:
    """Mark `info` lost ('dead' or 'bounced') and queue its fallback copy, once. False when
    it was already lost (a replay), and then nothing is queued."""
    fallback = fallback_copy(cfg, info, reason, now)
    fallback_id = await store.mail_lost(info.id, state, reason, now, fallback)
    if fallback_id is None:
        return False
    if metrics is not None:
        metrics.mail_lost(info.kind, state)
    log.error(
        "mail id=%d kind=%s tenant=%s ref=%s lost (%s): %s%s",
        info.id,
        info.kind,
        info.tenant_id or "-",
        info.ref or "-",
        state,
        reason,
        f"; fallback copy queued as mail id={fallback_id}" if fallback_id else "",
    )
    return True


class BounceIntake:
    """The bounce side of the SMTP intake (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        store: MailOutbox,
        *,
        clock: Callable[[], float] = time.time,
        wake: Wake | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self._secret: bytes | None = None
        # wake.mail when a fallback copy is queued
        self.wake = wake or Wake()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self._secret = None

    async def secret(self) -> bytes:
        if self._secret is None:
            self._secret = await load_secret(self.cfg, self.store)
        return self._secret

    async def check_rcpt(self, address: str) -> int | str | None:
        """For a null-sender RCPT: the mail id when `address` is a valid bounce address, an
        SMTP refusal when it is shaped like one but forged, None when it is not one at all
        (the caller then refuses the null sender as before)."""
        found = verp.parse(address, await self.secret(), bounce_domains(self.cfg))
        if found is None:
            return None
        if not found.valid:
            log.warning("bounce refused: bad token for mail id=%d (forged or old)", found.mail_id)
            self._count("forged")
            return ERR_550_FORGED
        return found.mail_id

    async def accept(self, mail_ids: Sequence[int], raw: bytes) -> str:
        """Record a bounce for the emails `mail_ids`; the reply once it is durable."""
        # Parsing is linear in the input and bounded by smtp.max_message_bytes; it runs off
        # the event loop all the same, like every other parse of untrusted mail.
        report = await asyncio.to_thread(parse_bounce, raw)
        now = self.clock()
        queued = False
        for mail_id in dict.fromkeys(mail_ids):
            info = await self.store.get_mail(mail_id)
            if info is None:
                log.info("bounce for mail id=%d ignored: no such email (purged?)", mail_id)
                self._count("unknown")
                continue
            if not report.failed:
                log.info(
                    "bounce for mail id=%d ignored: action %s is not a failure",
                    mail_id,
                    report.action,
                )
                self._count("not_failure")
                continue
            if info.state in ("dead", "bounced"):
                log.info("bounce for mail id=%d ignored: already %s (replay)", mail_id, info.state)
                self._count("replay")
                continue
            reason = "bounced: " + report.reason
            if await record_lost(self.cfg, self.store, info, "bounced", reason, now, self.metrics):
                self._count("recorded")
                queued = True
            else:
                log.info("bounce for mail id=%d ignored: already lost (replay)", mail_id)
                self._count("replay")
        if queued:
            self.wake.mail()
        return OK_250_BOUNCE

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.bounce_received(outcome)
