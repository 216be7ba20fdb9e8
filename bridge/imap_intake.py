"""IMAP intake: pull notices from a library mailbox (for an ILS that can only mail a mailbox).

One supervised task per configured mailbox: connect (implicit TLS, STARTTLS or plain), log in,
SELECT, process every message above the stored UID high-water mark, then wait for new mail with
IDLE (RFC 2177) when the server offers it, or poll. Each notice takes the same admission path
as SMTP (bridge.intake.Intake); the message is flagged, moved or deleted only after the store
committed it, and the high-water mark is stored in the same order, so a restart neither re-sends
nor skips. A notice that can never be sent gets a bounce to its sender and is moved to an error
folder, so it is not fetched again every minute.

aioimaplib 2.x can wait forever (e.g. `idle_start()` when a server answers IDLE with BYE), so
every call into it is bounded by `timeout_s`; any failure closes the
connection and reconnects after an exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.header
import email.policy
import email.utils
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from typing import Any, TypeVar

import aioimaplib

from bridge import addressing
from bridge.backoff import backoff_delay
from bridge.config import Config, ImapConfig, TenantConfig
from bridge.intake import Intake, Recipient, Rejected
from bridge.mailbuild import NoticeRef, build_dsn
from bridge.model import Wake
from bridge.store import Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "ImapError",
    "ImapIntake",
    "encode_mailbox",
    "fetched_message",
    "notice_recipients",
    "notice_sender",
    "parse_search",
    "parse_uidvalidity",
]

# Headers that name the SMS addresses a notice was meant for. Delivered-To / X-Original-To
# carry the envelope recipient when the ILS Bcc'd the number (Postfix, Exim and Dovecot LDA
# add them), which the To/Cc headers would not show.
_RECIPIENT_HEADERS = ("to", "cc", "delivered-to", "x-original-to")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)

# What library staff can do about a notice the bridge refused, by RFC 3463 status.
_ADVICE = {
    "5.1.3": "Check the patron's phone number in the ILS; it must be a mobile number.",
    "5.7.1": "The patron has opted out of text messages from this library, or a sending rule "
    "stopped the notice; contact the patron another way.",
    "5.6.0": "The notice had no text the bridge could send; check the ILS notice template.",
}
_DEFAULT_ADVICE = (
    "Check the notice and the patron's phone number in the ILS. If they are right, tell the "
    "bridge administrator (quote the queue id above)."
)


class ImapError(Exception):
    """The server refused or broke off a step; the session is closed and retried."""


class _Deferred(Exception):
    """A notice could not be taken right now (store down, queue full): retry it later."""


# --- pure helpers ------------------------------------------------------------------------------


def encode_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 §5.1.3).

    aioimaplib sends arguments verbatim, so a folder such as "SMS errors" or "Fehlgeschlagen/
    SMS-Rückläufer" must be encoded here.
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = _b64(raw).rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            pending.clear()

    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    text = "".join(out)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def parse_uidvalidity(lines: Sequence[Any]) -> int:
    """UIDVALIDITY from a SELECT response (RFC 3501 §7.1: required in the OK response)."""
    for line in lines:
        if isinstance(line, bytes | bytearray):
            m = _UIDVALIDITY.search(bytes(line))
            if m:
                return int(m.group(1))
    raise ImapError("SELECT response carried no UIDVALIDITY")


def parse_search(lines: Sequence[Any], above: int) -> list[int]:
    """UIDs from a UID SEARCH response, only those above `above`, ascending.

    RFC 3501 §6.4.8 / §9: in `UID n:*` the `*` stands for the highest UID in the mailbox, so
    the range always holds the last message even when its UID is below n; filter it out.
    The last line is the tagged completion text, which is not data.
    """
    uids: set[int] = set()
    for line in lines[:-1]:
        if not isinstance(line, bytes | bytearray):
            continue
        for tok in bytes(line).split():
            if tok.isdigit() and int(tok) > above:
                uids.add(int(tok))
    return sorted(uids)


def fetched_message(lines: Sequence[Any]) -> bytes | None:
    """The message literal of a one-message `UID FETCH n (BODY.PEEK[])` response, if any.

    None when the server sent no data: the message was expunged between SEARCH and FETCH.
    """
    for line in lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None


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


# --- the intake --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """What became of one message: `ok` (queued), `failed` (bounced, to the error folder)."""

    ok: bool
    reason: str = ""


class ImapIntake:
    """One IMAP mailbox feeding the queue; `state` is for the health page."""

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
        self.cfg = cfg
        self.box = box
        self.intake = intake
        self.store = store
        self.clock = clock
        self.wake = wake or Wake()  # wake.mail when a DSN is queued
        self.state = "stopped"
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._lost: asyncio.Event | None = None
        self._created: set[str] = set()
        self._idling = False
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

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"imap-{self.box.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            while not task.done():
                task.cancel()
                # Ask again if need be: Python 3.11's asyncio.wait_for (used inside aioimaplib)
                # can swallow a cancellation that races with a completed result (bpo-42130).
                await asyncio.wait({task}, timeout=1.0)
            if not task.cancelled() and task.exception() is not None:
                log.error("imap %s: intake task ended: %r", self.box.name, task.exception())
        client, self._client = self._client, None
        if client is not None:
            # Polite LOGOUT (RFC 3501 §6.1.3), ending a pending IDLE first; bounded, because a
            # server that stopped answering must not hold up the bridge's shutdown.
            try:
                async with asyncio.timeout(min(self.box.timeout_s, 5.0)):
                    self._end_idle(client)
                    await client.logout()
            except (TimeoutError, OSError, aioimaplib.AioImapException) as exc:
                log.debug("imap %s: logout: %r", self.box.name, exc)
            finally:
                self._abort(client)
                # The socket is closed by a callback the transport schedules: let it run.
                await asyncio.sleep(0)
        self.state = "stopped"

    async def _run(self) -> None:
        self._attempt = 0
        while True:
            try:
                self.state = "connecting"
                client = await self._connect()
                await self._session(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # loop boundary: never let one mailbox's error end intake
                reason = _reason(exc)
                delay = backoff_delay(
                    self._attempt,
                    self.box.reconnect_min_s,
                    self.box.reconnect_max_s,
                    self._rand,
                )
                self._attempt += 1
                log.warning(
                    "imap %s: %s; reconnecting in %.1fs",
                    self.box.name,
                    reason,
                    delay,
                    exc_info=not isinstance(exc, ImapError | _Deferred | OSError | TimeoutError),
                )
                self.state = f"backoff: {reason}"
                client, self._client = self._client, None
                if client is not None:
                    self._abort(client)
                await asyncio.sleep(delay)

    async def _call(self, aw: Awaitable[T]) -> T:
        # asyncio.timeout rather than wait_for: on 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(self.box.timeout_s):
            return await aw

    # --- connection ----------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        cafile = str(self.box.tls_ca_file) if self.box.tls_ca_file else None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if not self.box.tls_verify:
            # For a library's self-signed mail server; documented as unsafe in the config.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _connect(self) -> Any:
        box = self.box
        self._created = set()
        self._idling = False
        lost = asyncio.Event()
        self._lost = lost
        if box.security == "tls":
            client = aioimaplib.IMAP4_SSL(
                box.host, box.effective_port, timeout=box.timeout_s, ssl_context=self._ssl_context()
            )
        else:
            client = aioimaplib.IMAP4(box.host, box.effective_port, timeout=box.timeout_s)
        # IMAP4_SSL does not pass conn_lost_cb through; set it on the protocol for both.
        client.protocol.conn_lost_cb = lambda exc: lost.set()
        self._client = client
        await self._call(client.wait_hello_from_server())
        if box.security == "starttls":
            await self._starttls(client)
        # aioimaplib quotes the password but sends the user name verbatim.
        resp = await self._call(client.login(_quote(box.user), box.password))
        if resp.result != "OK":
            raise ImapError(f"login refused for {box.user}: {_text(resp)}")
        # Capabilities change after login (RFC 3501 §6.2.3); aioimaplib's parse of the
        # LOGIN response code leaves "[" and "]" glued to names, so ask again.
        await self._call(client.protocol.capability())
        return client

    async def _starttls(self, client: Any) -> None:
        """STARTTLS (RFC 3501 §6.2.1), which aioimaplib lists but does not implement."""
        proto = client.protocol
        if "STARTTLS" not in proto.capabilities:
            raise ImapError("server does not offer STARTTLS (security: starttls)")
        resp = await self._call(
            proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop))
        )
        if resp.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(resp)}")
        loop = asyncio.get_running_loop()
        transport = await self._call(
            loop.start_tls(
                proto.transport, proto, self._ssl_context(), server_hostname=self.box.host
            )
        )
        proto.transport = transport
        # The client MUST discard cached capabilities after STARTTLS (RFC 3501 §6.2.1).
        await self._call(proto.capability())

    def _abort(self, client: Any) -> None:
        """Drop a connection without talking: cancel aioimaplib's helper tasks, close the socket."""
        with contextlib.suppress(Exception):
            if client._idle_waiter is not None:
                client._idle_waiter.cancel()
        # A connection still being opened would otherwise leave an unclosed socket behind.
        for task in [client._client_task, *client.tasks, *client.protocol.tasks]:
            task.cancel()
        transport = client.protocol.transport
        if transport is not None:
            transport.close()

    # --- one session ---------------------------------------------------------------------------

    async def _session(self, client: Any) -> None:
        box = self.box
        resp = await self._call(client.select(encode_mailbox(box.mailbox)))
        if resp.result != "OK":
            raise ImapError(f"cannot select {box.mailbox}: {_text(resp)}")
        uidvalidity = parse_uidvalidity(resp.lines)
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
                await self._idle(client)
            else:
                self.state = "polling"
                await self._poll(client)

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
        self, client: Any, uidvalidity: int, last_uid: int, unseen_only: bool
    ) -> tuple[int, int]:
        """Take every message above `last_uid`; returns (how many, the new high-water mark)."""
        criteria = [f"UID {last_uid + 1}:*"]
        if unseen_only:
            criteria.append("UNSEEN")
        resp = await self._call(client.uid_search(*criteria, charset=None))
        if resp.result != "OK":
            raise ImapError(f"UID SEARCH failed: {_text(resp)}")
        uids = parse_search(resp.lines, last_uid)
        for uid in uids:
            resp = await self._call(client.uid("fetch", str(uid), "(BODY.PEEK[])"))
            if resp.result != "OK":
                raise ImapError(f"UID FETCH {uid} failed: {_text(resp)}")
            raw = fetched_message(resp.lines)
            if raw is None:
                log.info("imap %s: uid=%d vanished before it was fetched", self.box.name, uid)
                outcome = None
            else:
                # Raises _Deferred (temporary): the batch stops, state is not advanced.
                outcome = await self._admit(uidvalidity, uid, raw)
            await self.store.set_imap_state(self.box.name, uidvalidity, uid, self.clock())
            last_uid = uid
            if outcome is None:
                continue
            if outcome.ok:
                await self._after_success(client, uid)
            else:
                await self._move(client, uid, self.box.error_folder)
        return len(uids), last_uid

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

    async def _admit(self, uidvalidity: int, uid: int, raw: bytes) -> _Outcome:
        """Queue one notice; a permanent refusal is bounced. Raises _Deferred for temporary."""
        msg = await self.intake.read_headers(raw)  # off the event loop (issue 14)
        ref = f"imap-{self.box.name}-{uidvalidity}-{uid}"
        message_id = str(msg.get("message-id", "")).strip() or None
        sender = notice_sender(msg)
        try:
            tenant = self.tenant_for(msg)
        except Rejected as exc:
            # No bounce: a stranger's mail in the library's mailbox is most likely spam, and
            # answering it would be backscatter. The error folder keeps it for staff to see.
            log.warning(
                "imap %s: uid=%d message_id=%s refused: %s", self.box.name, uid, message_id, exc
            )
            return _Outcome(False, exc.reply)
        try:
            await self.intake.check_backlog()
            addresses = notice_recipients(msg, self.cfg.smtp.sms_domains)
            if not addresses:
                raise Rejected(
                    550,
                    "5.1.3",
                    "The notice has no recipient at "
                    + " or ".join(self.cfg.smtp.domains)
                    + " in To, Cc, Delivered-To or X-Original-To",
                )
            recipients: list[Recipient] = []
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
                    recipients.append(rcpt)
            if recipients:
                try:
                    results = await self.intake.accept(tenant, sender, recipients, raw, via="imap")
                except Rejected as exc:
                    if not exc.permanent:
                        raise
                    # The whole notice is refused (no text, a foreign conversation, ...).
                    refused = [(r.address, exc) for r in recipients] + refused
                    recipients = []
                else:
                    log.info(
                        "imap %s: uid=%d message_id=%s queued=%s",
                        self.box.name,
                        uid,
                        message_id or "-",
                        ",".join(r.queue_id for r in results),
                    )
        except Rejected as exc:
            if exc.permanent:
                refused = [(a, exc) for a in notice_recipients(msg, self.cfg.smtp.sms_domains)]
                await self._bounce(tenant, msg, sender, ref, refused or [("", exc)])
                return _Outcome(False, exc.reply)
            raise _Deferred(exc.reply) from None
        except StoreError as exc:
            raise _Deferred(f"store unavailable: {exc}") from None
        if refused:
            await self._bounce(tenant, msg, sender, ref, refused)
        if recipients:
            return _Outcome(True)
        return _Outcome(False, refused[0][1].reply)

    async def _bounce(
        self,
        tenant: TenantConfig,
        msg: Message,
        sender: str,
        ref: str,
        refused: Sequence[tuple[str, Rejected]],
    ) -> None:
        """One DSN (RFC 3464) per refused recipient to the notice's sender and/or bounce_to."""
        to: list[str] = []
        # Never bounce a null-sender message (RFC 5321 §4.5.5) nor mail from ourselves.
        if (
            tenant.bounce_mode in ("sender", "both")
            and sender
            and sender.lower() != self.cfg.mail.from_.lower()
        ):
            to.append(sender)
        if tenant.bounce_mode in ("fixed", "both") and tenant.bounce_to:
            to.append(tenant.bounce_to)
        to = list(dict.fromkeys(to))
        message_id = str(msg.get("message-id", "")).strip() or None
        for address, exc in refused:
            log.info(
                "imap %s: %s refused %s %s",
                self.box.name,
                ref,
                _mask(address),
                exc.status,
            )
        if not to:
            return
        now = self.clock()
        when = datetime.fromtimestamp(now, UTC)
        notice = NoticeRef(
            queue_id=ref,
            message_id=message_id,
            subject=_header_text(msg.get("subject", "")),
            envelope_from=sender,
            tenant_name=tenant.name,
            received_at=None,
        )
        try:
            for address, exc in refused:
                rcpt_email = address if _plain_address(address) else self.box.user
                if not _plain_address(rcpt_email):
                    rcpt_email = self.cfg.mail.from_
                for dest in to:
                    mail = build_dsn(
                        reporting_domain=self.cfg.smtp.domains[0],
                        from_addr=self.cfg.mail.from_,
                        to_addr=dest,
                        notice=notice,
                        recipient_display=address or "(no SMS address)",
                        recipient_email=rcpt_email,
                        action="failed",
                        status=exc.status,
                        diagnostic=f"smtp; {exc.reply}",
                        reason=exc.text,
                        advice=_ADVICE.get(exc.status, _DEFAULT_ADVICE),
                        sms_text=None,
                        now=when,
                        ref=ref,
                    )
                    await self.store.enqueue_mail(mail, now)
        except ValueError as exc:
            # A sender address build_dsn cannot put in a header: no bounce, but still to the
            # error folder so the notice is not fetched again.
            log.warning("imap %s: %s: no bounce: %s", self.box.name, ref, exc)
            return
        self.wake.mail()

    # --- after the commit ----------------------------------------------------------------------

    async def _after_success(self, client: Any, uid: int) -> None:
        after = self.box.after
        if after == "seen":
            await self._store_flags(client, uid, "\\Seen")
        elif after == "move":
            assert self.box.move_to is not None  # ImapConfig validates this
            await self._move(client, uid, self.box.move_to)
        else:
            await self._store_flags(client, uid, "\\Deleted")
            await self._expunge(client, uid)

    async def _store_flags(self, client: Any, uid: int, flags: str) -> None:
        resp = await self._call(client.uid("store", str(uid), f"+FLAGS.SILENT ({flags})"))
        if resp.result != "OK":
            raise ImapError(f"UID STORE {uid} {flags} failed: {_text(resp)}")

    async def _expunge(self, client: Any, uid: int) -> None:
        if client.has_capability("UIDPLUS"):
            resp = await self._call(client.uid("expunge", str(uid)))
        else:
            # Without UIDPLUS (RFC 4315) EXPUNGE removes every \Deleted message in the
            # mailbox (RFC 3501 §6.4.3); the mailbox is the bridge's own, so that is accepted.
            resp = await self._call(client.expunge())
        if resp.result != "OK":
            raise ImapError(f"EXPUNGE failed: {_text(resp)}")

    async def _ensure_folder(self, client: Any, folder: str) -> None:
        if folder in self._created:
            return
        # CREATE answers NO [ALREADYEXISTS] (RFC 5530) when the folder is there: fine. Any
        # other problem shows up as a failed MOVE/COPY right after.
        await self._call(client.create(encode_mailbox(folder)))
        self._created.add(folder)

    async def _move(self, client: Any, uid: int, folder: str) -> None:
        await self._ensure_folder(client, folder)
        target = encode_mailbox(folder)
        if client.has_capability("MOVE"):
            resp = await self._call(client.uid("move", str(uid), target))
            if resp.result != "OK":
                raise ImapError(f"UID MOVE {uid} to {folder} failed: {_text(resp)}")
            return
        # RFC 6851 §3.3: without MOVE, COPY then mark \Deleted and expunge.
        resp = await self._call(client.uid("copy", str(uid), target))
        if resp.result != "OK":
            raise ImapError(f"UID COPY {uid} to {folder} failed: {_text(resp)}")
        await self._store_flags(client, uid, "\\Seen \\Deleted")
        await self._expunge(client, uid)

    # --- waiting for mail ----------------------------------------------------------------------

    async def _poll(self, client: Any) -> None:
        lost = self._lost
        assert lost is not None
        # A dropped connection ends the wait early; the next UID SEARCH would fail anyway.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.box.poll_s):
                await lost.wait()
        if lost.is_set():
            raise ImapError("connection closed by the server")

    async def _idle(self, client: Any) -> None:
        """IDLE (RFC 2177) until new mail, the renewal time, or the end of the connection.

        RFC 2177 §3: a server may drop an IDLE client after 30 minutes, so it is re-issued
        every idle_renew_s. aioimaplib's own renewal timer pushes a marker into its queue.
        """
        lost = self._lost
        assert lost is not None
        renew = self.box.idle_renew_s
        # Pushes left over from an earlier IDLE are stale: the search just done covered them.
        queue = client.protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()
        idle_task = await self._call(client.idle_start(timeout=renew))
        self._idling = True
        deadline = asyncio.get_running_loop().time() + renew + self.box.timeout_s
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                push = asyncio.ensure_future(client.wait_server_push(timeout=remaining))
                gone = asyncio.ensure_future(lost.wait())
                try:
                    await asyncio.wait({push, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                    if not push.done():
                        push.cancel()
                if lost.is_set():
                    raise ImapError("connection closed by the server during IDLE")
                try:
                    lines = push.result()
                except TimeoutError:
                    break
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                data = [bytes(x) for x in lines if isinstance(x, bytes | bytearray)]
                if any(line.upper().startswith(b"BYE") for line in data):
                    raise ImapError("server said BYE during IDLE")
                if any(line.upper().endswith(b" EXISTS") for line in data):
                    break
        finally:
            if not lost.is_set():
                self._end_idle(client)
        resp = await self._call(idle_task)
        if resp.result != "OK":
            raise ImapError(f"IDLE ended with {resp.result}: {_text(resp)}")

    def _end_idle(self, client: Any) -> None:
        # DONE exactly once per IDLE (RFC 2177 §3): a second one would reach the server as a
        # command named DONE and its BAD answer would confuse aioimaplib's tag matching.
        if self._idling:
            self._idling = False
            if client.has_pending_idle():
                client.idle_done()


# --- small helpers -----------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(resp: Any) -> str:
    lines = [bytes(x) for x in getattr(resp, "lines", []) if isinstance(x, bytes | bytearray)]
    text = lines[-1].decode("utf-8", "replace") if lines else ""
    return text[:200]


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


def _header_text(value: Any) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        return str(value)
