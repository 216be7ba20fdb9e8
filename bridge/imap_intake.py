"""IMAP intake: pull notices from a library mailbox (for an ILS that can only mail a mailbox).

One worker per configured mailbox: connect (implicit TLS, STARTTLS or plain), log in, SELECT,
process every message above the stored UID high-water mark, then wait for new mail with IDLE
(RFC 2177) when the server offers it, or poll. Each notice takes the same admission path as
SMTP (bridge.intake.Intake); the message is flagged, moved or deleted only after the store
committed it, and the high-water mark is stored in the same order, so a restart neither re-sends
nor skips. A notice that can never be sent gets a bounce to its sender and is moved to an error
folder, so it is not fetched again every minute.

The IMAP itself is bridge/imap_client.py, every call bounded by `timeout_s`; any failure closes
the connection and reconnects after an exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import email
import email.header
import email.utils
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message

from bridge import addressing
from bridge.backoff import backoff_delay
from bridge.bounces import Refusal, advice, bounce_recipients, dsn_mails
from bridge.config import Config, ImapConfig, TenantConfig
from bridge.imap_client import ImapClient, ImapError
from bridge.intake import Intake, Recipient, Rejected
from bridge.mailbuild import NoticeRef
from bridge.model import Outgoing, Wake
from bridge.store import Store, StoreError
from bridge.worker import Worker

log = logging.getLogger(__name__)

__all__ = [
    "After",
    "ImapIntake",
    "after_action",
    "notice_recipients",
    "notice_sender",
    "refusal_bounces",
]

# Headers that name the SMS addresses a notice was meant for. Delivered-To / X-Original-To
# carry the envelope recipient when the ILS Bcc'd the number (Postfix, Exim and Dovecot LDA
# add them), which the To/Cc headers would not show.
_RECIPIENT_HEADERS = ("to", "cc", "delivered-to", "x-original-to")

# How long stop() waits for a polite LOGOUT at most: a server that stopped answering must not
# hold up the bridge's shutdown.
_LOGOUT_S = 5.0


class _Deferred(Exception):
    """A notice could not be taken right now (store down, queue full): retry it later."""


# --- reading a notice --------------------------------------------------------------------------


def _addresses(msg: Message, header: str) -> list[str]:
    values = [str(v) for v in msg.get_all(header, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def notice_recipients(msg: Message, domains: Sequence[str]) -> list[str]:
    """The addresses at one of the bridge's SMS domains in To, Cc, Delivered-To, X-Original-To."""
    wanted = {d.lower() for d in domains}
    seen: set[str] = set()
    out: list[str] = []
    for header in _RECIPIENT_HEADERS:
        for addr in _addresses(msg, header):
            _, at, domain = addr.rpartition("@")
            if not at or domain.lower() not in wanted or addr.lower() in seen:
                continue
            seen.add(addr.lower())
            out.append(addr)
    return out


def notice_sender(msg: Message) -> str:
    """Who a bounce about this notice goes to: Return-Path, else Sender, else From.

    Return-Path is the envelope sender the delivering server recorded (RFC 5321 §4.4);
    `<>` there means a null sender, which must never get a bounce (RFC 5321 §4.5.5): "".
    """
    return_path = msg.get("return-path")
    if return_path is not None:
        addrs = email.utils.getaddresses([str(return_path)])
        return addrs[0][1] if addrs else ""
    for header in ("sender", "from"):
        found = _addresses(msg, header)
        if found:
            return found[0]
    return ""


def _from_address(msg: Message) -> str:
    found = _addresses(msg, "from")
    return found[0] if found else ""


@dataclass(frozen=True)
class _Notice:
    """One fetched message as admission sees it."""

    ref: str  # stands in for a queue id in logs and DSNs: imap-<box>-<uidvalidity>-<uid>
    uid: int
    raw: bytes
    msg: Message
    sender: str

    @property
    def message_id(self) -> str | None:
        return str(self.msg.get("message-id", "")).strip() or None


# --- what to do with a message (pure) ----------------------------------------------------------

Refused = Sequence[tuple[str, Rejected]]


@dataclass(frozen=True)
class After:
    """What becomes of a message in the mailbox once the store has it: flags to add, a folder
    to move it to, whether to expunge it."""

    flags: str | None = None
    folder: str | None = None
    expunge: bool = False


def after_action(box: ImapConfig, queued: bool) -> After:
    """`box.after` for a notice that was queued; the error folder for one that never will be."""
    if not queued:
        return After(folder=box.error_folder)
    if box.after == "seen":
        return After(flags="\\Seen")
    if box.after == "move":
        assert box.move_to is not None  # ImapConfig validates this
        return After(folder=box.move_to)
    return After(flags="\\Deleted", expunge=True)


def _refusal(address: str, exc: Rejected, fallbacks: Sequence[str]) -> Refusal:
    """A refused recipient in DSN terms. Final-Recipient needs an address: a notice without a
    usable one names the first plain address of `fallbacks` instead."""
    rcpt_email = next((a for a in (address, *fallbacks) if _plain_address(a)), fallbacks[-1])
    return Refusal(
        display=address or "(no SMS address)",
        email=rcpt_email,
        status=exc.status,
        diagnostic=f"smtp; {exc.reply}",
        reason=exc.text,
        advice=advice(exc.status),
    )


def refusal_bounces(
    cfg: Config,
    box: ImapConfig,
    tenant: TenantConfig,
    notice: NoticeRef,
    refused: Refused,
    now: float,
) -> list[Outgoing]:
    """One DSN (RFC 3464) per refused recipient to the notice's sender and/or bounce_to.

    Raises ValueError for a sender address build_dsn cannot put in a header.
    """
    to = bounce_recipients(tenant, notice.envelope_from, cfg.mail.from_)
    fallbacks = (box.user, cfg.mail.from_)
    return [
        mail
        for address, exc in refused
        for mail in dsn_mails(cfg, notice, to, _refusal(address, exc, fallbacks), now)
    ]


# --- the intake --------------------------------------------------------------------------------


class ImapIntake(Worker):
    """One IMAP mailbox feeding the queue; `state` is for the health page.

    A `step()` is one connection: connect, log in, and work the mailbox until something fails;
    it returns the backoff delay before the next connection.
    """

    def __init__(
        self,
        cfg: Config,
        box: ImapConfig,
        intake: Intake,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        wake: Wake | None = None,
    ) -> None:
        super().__init__()
        self.name = f"imap-{box.name}"
        self.cfg = cfg
        self.box = box
        self.intake = intake
        self.store = store
        self.clock = clock
        self.wake_mail = (wake or Wake()).mail  # when a DSN is queued
        self.state = "stopped"
        self._client: ImapClient | None = None
        self._attempt = 0
        self._rand = random.Random()

    # --- lifecycle -----------------------------------------------------------------------------

    def reload(self, cfg: Config) -> None:
        """Tenants and domains apply from the next message; connection settings (host, user,
        timeouts) from the next reconnect. A mailbox removed from the config must be stopped."""
        self.cfg = cfg
        for box in cfg.imap:
            if box.name == self.box.name:
                self.box = box

    async def stop(self, grace_s: float = 0.0) -> None:
        """End the session (a session has no natural end, so `grace_s` is rarely of use), then
        LOGOUT politely (RFC 3501 §6.1.3), ending a pending IDLE first; bounded, because a
        server that stopped answering must not hold up the bridge's shutdown."""
        task = self._task
        stopping = asyncio.ensure_future(super().stop(grace_s))
        while not stopping.done():
            await asyncio.wait({stopping}, timeout=1.0)
            if task is not None and not task.done():
                # Ask again: Python 3.11's asyncio.wait_for (used inside aioimaplib) can
                # swallow a cancellation that races with a completed result (bpo-42130).
                task.cancel()
        if stopping.exception() is not None:
            log.error("imap %s: intake task ended: %r", self.box.name, stopping.exception())
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.logout(min(self.box.timeout_s, _LOGOUT_S))
            except (TimeoutError, OSError, ImapError) as exc:
                log.debug("imap %s: logout: %r", self.box.name, exc)
            finally:
                client.abort()
                # The socket is closed by a callback the transport schedules: let it run.
                await asyncio.sleep(0)
        self.state = "stopped"

    async def step(self) -> float:
        try:
            self.state = "connecting"
            client = await self._connect()
            await self._session(client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # loop boundary: never let one mailbox's error end intake
            return self._backoff(exc)
        return 0.0

    def _backoff(self, exc: Exception) -> float:
        """Log the failure, drop the connection, and say how long to wait before the next."""
        reason = _reason(exc)
        box = self.box
        delay = backoff_delay(self._attempt, box.reconnect_min_s, box.reconnect_max_s, self._rand)
        self._attempt += 1
        log.warning(
            "imap %s: %s; reconnecting in %.1fs",
            box.name,
            reason,
            delay,
            exc_info=not isinstance(exc, ImapError | _Deferred | OSError | TimeoutError),
        )
        self.state = f"backoff: {reason}"
        client, self._client = self._client, None
        if client is not None:
            client.abort()
        return delay

    # --- connection ----------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.box.security == "none":
            return None
        cafile = str(self.box.tls_ca_file) if self.box.tls_ca_file else None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if not self.box.tls_verify:
            # For a library's self-signed mail server; documented as unsafe in the config.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _connect(self) -> ImapClient:
        box = self.box
        client = ImapClient(
            box.host,
            box.effective_port,
            security=box.security,
            ssl_context=self._ssl_context(),
            timeout_s=box.timeout_s,
        )
        self._client = client
        await client.connect()
        await client.login(box.user, box.password)
        return client

    # --- one session ---------------------------------------------------------------------------

    async def _session(self, client: ImapClient) -> None:
        box = self.box
        uidvalidity = await client.select(box.mailbox)
        idle = client.has_capability("IDLE")
        log.info(
            "imap %s: connected to %s mailbox=%s uidvalidity=%d mode=%s",
            box.name,
            box.host,
            box.mailbox,
            uidvalidity,
            "idle" if idle else "poll",
        )
        last_uid, unseen_only = await self._high_water_mark(uidvalidity)
        while True:
            self.state = "processing"
            # Search again until a search finds nothing: a message that arrived while the
            # previous batch ran was announced (EXISTS) in the middle of a STORE or MOVE,
            # and the server will not repeat that announcement once IDLE starts.
            while True:
                found, last_uid = await self._process(client, uidvalidity, last_uid, unseen_only)
                unseen_only = False
                if not found:
                    break
            self._attempt = 0  # a whole batch went through: the next failure starts a fresh backoff
            if idle:
                self.state = "idle"
                # RFC 2177 §3: a server may drop an IDLE client after 30 minutes, so IDLE is
                # issued again every idle_renew_s.
                await client.idle(box.idle_renew_s)
            else:
                self.state = "polling"
                # A dropped connection ends the wait early; the next UID SEARCH would fail.
                if await client.wait_closed(box.poll_s):
                    raise ImapError("connection closed by the server")

    async def _high_water_mark(self, uidvalidity: int) -> tuple[int, bool]:
        stored = await self.store.imap_state(self.box.name)
        if stored is None:
            await self.store.set_imap_state(self.box.name, uidvalidity, 0, self.clock())
            return 0, False
        old_validity, last_uid = stored
        if old_validity == uidvalidity:
            return last_uid, False
        # RFC 3501 §2.3.1.1: a new UIDVALIDITY means every stored UID is meaningless (the
        # mailbox was recreated or restored). Start from UID 1; the store's Message-ID dedup
        # keeps recently sent notices from going out again, and with `after: seen` only unseen
        # messages are taken, since the ones already processed carry \Seen.
        log.error(
            "imap %s: UIDVALIDITY changed %d -> %d (mailbox recreated?); rescanning %s",
            self.box.name,
            old_validity,
            uidvalidity,
            "unseen messages" if self.box.after == "seen" else "the whole mailbox",
        )
        await self.store.set_imap_state(self.box.name, uidvalidity, 0, self.clock())
        return 0, self.box.after == "seen"

    async def _process(
        self, client: ImapClient, uidvalidity: int, last_uid: int, unseen_only: bool
    ) -> tuple[int, int]:
        """Take every message above `last_uid`; returns (how many, the new high-water mark).

        Each message is committed to the store (queued, or refused and bounced) and the
        high-water mark stored before the message is flagged or moved: a crash in between
        leaves it in place but never sends it twice. A temporary refusal raises _Deferred: the
        batch stops and the mark is not advanced.
        """
        criteria = [f"UID {last_uid + 1}:*"] + (["UNSEEN"] if unseen_only else [])
        uids = await client.uid_search(*criteria, above=last_uid)
        for uid in uids:
            raw = await client.uid_fetch(uid)
            if raw is None:
                log.info("imap %s: uid=%d vanished before it was fetched", self.box.name, uid)
                queued = None
            else:
                queued = await self._admit(uidvalidity, uid, raw)
            await self.store.set_imap_state(self.box.name, uidvalidity, uid, self.clock())
            last_uid = uid
            if queued is not None:
                await self._apply(client, uid, after_action(self.box, queued))
        return len(uids), last_uid

    async def _apply(self, client: ImapClient, uid: int, after: After) -> None:
        if after.folder is not None:
            await client.move(uid, after.folder)
        if after.flags is not None:
            await client.store_flags(uid, after.flags)
        if after.expunge:
            await client.expunge(uid)

    # --- admission -----------------------------------------------------------------------------

    def tenant_for(self, msg: Message) -> TenantConfig:
        """The library a notice belongs to: the mailbox's, or the one whose senders match From."""
        if self.box.tenant is not None:
            return self.cfg.tenant(self.box.tenant)
        sender = _from_address(msg)
        for tenant in self.cfg.tenants:
            if any(addressing.sender_matches(p, sender) for p in tenant.senders):
                return tenant
        raise Rejected(
            550,
            "5.7.1",
            f"Sender {sender or '<>'} is not listed in any library's senders",
        )

    async def _admit(self, uidvalidity: int, uid: int, raw: bytes) -> bool:
        """Queue one notice and bounce what is refused for good; True if anything was queued.

        Raises _Deferred for a temporary refusal or a store outage.
        """
        msg = await self.intake.read_headers(raw)  # off the event loop (issue 14)
        ref = f"imap-{self.box.name}-{uidvalidity}-{uid}"
        notice = _Notice(ref, uid, raw, msg, notice_sender(msg))
        try:
            tenant = self.tenant_for(msg)
        except Rejected as exc:
            # No bounce: a stranger's mail in the library's mailbox is most likely spam, and
            # answering it would be backscatter. The error folder keeps it for staff to see.
            log.warning(
                "imap %s: uid=%d message_id=%s refused: %s",
                self.box.name,
                uid,
                notice.message_id,
                exc,
            )
            return False
        try:
            queued, refused = await self._take(tenant, notice)
        except Rejected as exc:
            if not exc.permanent:
                raise _Deferred(exc.reply) from None
            # The whole notice is refused (no recipient the bridge could read).
            queued, refused = False, [("", exc)]
        except StoreError as exc:
            raise _Deferred(f"store unavailable: {exc}") from None
        if refused:
            await self._bounce(tenant, notice, refused)
        return queued

    async def _take(self, tenant: TenantConfig, notice: _Notice) -> tuple[bool, Refused]:
        """Queue the notice for every recipient that can have it; returns (queued anything,
        the recipients refused for good). Raises Rejected for a refusal of the whole notice
        and for a temporary one."""
        await self.intake.check_backlog()
        addresses = notice_recipients(notice.msg, self.cfg.smtp.sms_domains)
        if not addresses:
            raise Rejected(
                550,
                "5.1.3",
                "The notice has no recipient at "
                + " or ".join(self.cfg.smtp.domains)
                + " in To, Cc, Delivered-To or X-Original-To",
            )
        admitted, refused = await self._screen(tenant, addresses)
        if not admitted:
            return False, refused
        try:
            results = await self.intake.accept(
                tenant, notice.sender, admitted, notice.raw, via="imap"
            )
        except Rejected as exc:
            if not exc.permanent:
                raise
            # The whole notice is refused (no text, a foreign conversation, ...).
            return False, [(r.address, exc) for r in admitted] + list(refused)
        log.info(
            "imap %s: uid=%d message_id=%s queued=%s",
            self.box.name,
            notice.uid,
            notice.message_id or "-",
            ",".join(r.queue_id for r in results),
        )
        return True, refused

    async def _screen(
        self, tenant: TenantConfig, addresses: Sequence[str]
    ) -> tuple[list[Recipient], Refused]:
        """The recipients that may be texted, and those refused for good (a bad number, an
        opt-out). A temporary refusal of any of them raises Rejected."""
        admitted: list[Recipient] = []
        refused: list[tuple[str, Rejected]] = []
        for address in addresses:
            try:
                rcpt = self.intake.recipient(tenant, address)
                await self.intake.check_optout(tenant, rcpt)
            except Rejected as exc:
                if not exc.permanent:
                    raise
                refused.append((address, exc))
            else:
                admitted.append(rcpt)
        return admitted, refused

    async def _bounce(self, tenant: TenantConfig, notice: _Notice, refused: Refused) -> None:
        for address, exc in refused:
            log.info(
                "imap %s: %s refused %s %s", self.box.name, notice.ref, _mask(address), exc.status
            )
        ref = NoticeRef(
            queue_id=notice.ref,
            message_id=notice.message_id,
            subject=_header_text(notice.msg.get("subject", "")),
            envelope_from=notice.sender,
            tenant_name=tenant.name,
            received_at=None,
        )
        now = self.clock()
        try:
            mails = refusal_bounces(self.cfg, self.box, tenant, ref, refused, now)
        except ValueError as exc:
            # A sender address build_dsn cannot put in a header: no bounce, but still to the
            # error folder so the notice is not fetched again.
            log.warning("imap %s: %s: no bounce: %s", self.box.name, notice.ref, exc)
            return
        for mail in mails:
            await self.store.enqueue_mail(mail, now)
        if mails:
            self.wake_mail()


# --- small helpers -----------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _mask(address: str) -> str:
    local, _, domain = address.rpartition("@")
    digits = [c for c in local if c.isdigit()]
    if len(digits) < 4:
        return address and f"***@{domain}"
    return f"***{''.join(digits[-2:])}@{domain}"


_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
)


def _plain_address(address: str) -> bool:
    return bool(_PLAIN_ADDRESS.fullmatch(address))


def _header_text(value: object) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        return str(value)
