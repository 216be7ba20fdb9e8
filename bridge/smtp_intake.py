"""SMTP edge: aiosmtpd inside our own event loop, replies from named constants.

aiosmtpd's threaded `Controller` is not used: the server runs on the bridge's loop via
`loop.create_server`, so the handler awaits the store directly and shutdown is ordered.
aiosmtpd answers `500` (a permanent error!) when a handler raises; `handle_exception` below
turns anything unexpected into `451 4.3.0` so the ILS retries instead of dropping the notice.

Abuse is bounded at this edge (bridge/smtp_guard.py keeps the books): connection slots per
address and for strangers, short timeouts before MAIL, and AUTH checks that run off the loop
in turn, slowed per network and per login.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
import time
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from bridge import defaults
from bridge.config import Config
from bridge.intake import Intake, Recipient, Rejected
from bridge.metrics import Metrics
from bridge.passwords import Verifier, VerifierBusy, dummy_hash_like
from bridge.privacy import mask_text
from bridge.smtp_guard import (
    AuthThrottle,
    ConnectionSlots,
    Refusal,
    SlotLimits,
    ThrottleSettings,
    Timeouts,
    idle_timeout,
)
from bridge.store import StoreError

log = logging.getLogger(__name__)

# Replies (RFC 5321 §4.2, enhanced codes RFC 3463).
ERR_451_STORE = "451 4.3.0 Temporary storage failure; the notice was not accepted, try again later"
ERR_451_INTERNAL = (
    "451 4.3.0 Temporary internal error; the notice was not accepted, try again later"
)
ERR_452_RCPTS = "452 4.5.3 Too many recipients; send the rest in another message"
ERR_421_STOPPING = "421 4.3.2 Service shutting down; try again later"
ERR_421_TIMEOUT = "421 4.4.2 {host} Error: timeout exceeded"  # Postfix's wording
# RFC 4954 §6: a temporary failure; the client keeps its password and retries later.
ERR_454_AUTH = "454 4.7.0 Temporary authentication failure; try again later"
ERR_538_TLS = "538 5.7.11 Encryption required: use STARTTLS before AUTH"
ERR_503_MAIL_FIRST = "503 5.5.1 Error: send MAIL first"
OK_250 = "250 2.1.0 OK"
# aiosmtpd's own sequence errors carry no enhanced status code (RFC 3463 §3.6: X.5.1 is
# "invalid command"); a RCPT after a refused MAIL would otherwise get a bare "503 Error".
_ENHANCED = {
    "503 Error: need MAIL command": "503 5.5.1 Error: send MAIL first",
    "503 Error: need RCPT command": "503 5.5.1 Error: send RCPT first",
}

# The path of MAIL FROM / RCPT TO (RFC 5321 §4.1.2) as nearly every client writes it: a
# dot-atom local part (RFC 5322 §3.2.3 atext) and a host name, then any parameters, no
# comments. See BridgeSMTP._getaddr.
_PLAIN_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*([^(]*)"
)

# State kept per SMTP session (aiosmtpd's Session has no slot for it).
_TENANT = "sms_bridge_tenant"
_RCPTS = "sms_bridge_rcpts"
# Null-sender envelopes: outbox ids of the bridge's own emails a bounce is for, and the
# refusal the null sender got before bounces were taken (given at RCPT to anything else).
_BOUNCE_IDS = "sms_bridge_bounce_ids"
_NULL_REFUSAL = "sms_bridge_null_refusal"


class _Deferred:
    """Credentials handed back by the (synchronous) aiosmtpd authenticator, to be checked by
    BridgeSMTP asynchronously: scrypt must not run on the event loop."""

    __slots__ = ("credentials",)

    def __init__(self, credentials: object) -> None:
        self.credentials = credentials


def _defer(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    # success=False, handled=False: should the result ever go unchecked, aiosmtpd answers
    # 535 itself; handled=True without a reply would leave the client waiting forever.
    return AuthResult(success=False, handled=False, auth_data=_Deferred(auth_data))


def _shown(login: str) -> str:
    """A login as it may appear in a log line: it is whatever the client sent."""
    return repr(login[:64])


def _reverse_path(address: str | None) -> str:
    """aiosmtpd keeps the null reverse-path (RFC 5321 §4.5.5) as "<>" (and needs it non-empty
    to know MAIL was given); the bridge stores it as ""."""
    return "" if address is None or address.strip() in ("<>", "") else address


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class _FairReader(asyncio.StreamReader):
    """A StreamReader that lets the event loop run every few hundred lines.

    aiosmtpd reads DATA one line at a time, and readuntil() does not yield while whole lines are
    buffered; one socket read is up to 256 KiB, so a message of very short lines (80,000 to a
    read) held the loop for 0.4 s per read on an idle machine, over a second on a busy one:
    SMPP enquire_link, the systemd watchdog and every other client's commands waited (issue
    14). Yielding every 256 lines bounds that to about a millisecond, for one extra loop turn
    per 256 lines."""

    _lines = 0

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        self._lines += 1
        if not self._lines % 256:
            await asyncio.sleep(0)
        return await super().readuntil(separator)


class BridgeSMTP(SMTP):
    """aiosmtpd's protocol with the bridge's guards: connection slots (per address, and a
    share for strangers), idle timeouts that depend on the stage and on stress, AUTH over TLS
    except from loopback, and AUTH checks done off the loop (see SmtpHandler.check_login)."""

    def __init__(self, server: SmtpIntake, *args: Any, **kwargs: Any) -> None:
        self._bridge = server
        self._slot_ip: str | None = None  # set while this connection holds a slot
        self._outside = False  # ...counted in the strangers' share
        self._timeout_s = 0.0
        self._deadline = float("inf")  # loop time when the client's silence ends it
        self._timer_fired = False
        super().__init__(*args, **kwargs)
        reader = getattr(self, "_stream_reader", None)  # the one aiosmtpd's __init__ made
        if type(reader) is asyncio.StreamReader:
            reader.__class__ = _FairReader

    def _peer_ip(self) -> str:
        return str(self.session.peer[0]) if self.session and self.session.peer else ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._slot_ip is not None:
            # STARTTLS: aiosmtpd calls this again with the TLS transport; same connection.
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        listed = bool(self._bridge.intake.network_tenants(ip))
        refusal = self._bridge.admit(ip, listed)
        if refusal is not None:
            # RFC 5321 §3.1: a server that cannot serve may answer 421 at greeting and close.
            log.info("smtp connection refused peer=%s reason=%s", ip, refusal.reason)
            self._bridge.refused(refusal.reason)
            with contextlib.suppress(Exception):
                transport.write((refusal.reply + "\r\n").encode())  # type: ignore[attr-defined]
            transport.close()
            return
        self._slot_ip, self._outside = ip, not listed
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slot_ip is not None:
            self._bridge.slots.release(self._slot_ip, self._outside)
            self._slot_ip = None
        if self.transport is None and self.session is None:
            return
        super().connection_lost(exc)

    # --- timeouts: the client's silence after our last reply (RFC 5321 §4.5.3.2) -----------

    # The timer is re-armed twice per command (aiosmtpd on reading it, push() on answering).
    # A cancel and a new loop timer each time cost a TimerHandle, a heap push and a cancelled
    # entry the loop must later sift out; instead the deadline is a number, and the one timer
    # that is pending re-checks it when it fires and sleeps again if the client has spoken
    # since. The client still gets the full idle time after our last reply.

    def _reset_timeout(self, duration: float | None = None) -> None:
        in_transaction = self.envelope is not None and self.envelope.mail_from is not None
        self._timeout_s = duration or self._bridge.idle_timeout(in_transaction)
        self._deadline = self.loop.time() + self._timeout_s
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or self._timer_fired:
            self._arm(self._deadline)
        elif handle.when() > self._deadline:
            # A shorter wait than the pending timer's (stress, or a stage change): re-arm.
            handle.cancel()
            self._arm(self._deadline)

    def _arm(self, when: float) -> None:
        self._timer_fired = False
        self._timeout_handle = self.loop.call_at(when, self._timer_due)

    def _timer_due(self) -> None:
        self._timer_fired = True
        if self.loop.time() < self._deadline:
            self._arm(self._deadline)  # the client spoke after this timer was set
            return
        self._timeout_cb()

    def _pause_timeout(self) -> None:
        self._deadline = float("inf")
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    async def push(self, status: AnyStr) -> None:
        # aiosmtpd's own replies without an enhanced status code get one (RFC 2034), e.g.
        # "503 Error: nested MAIL command" after a refused MAIL.
        await super().push(_ENHANCED.get(status, status) if isinstance(status, str) else status)
        # Re-arm after every reply, so the stage the reply leaves the session in (before MAIL,
        # in a transaction) and the current stress level decide how long the client may wait.
        if self.transport is not None and self.session is not None:
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        if self.transport is None:
            return
        in_transaction = self.envelope is not None and self.envelope.mail_from is not None
        log.info(
            "smtp connection closed peer=%s reason=idle_timeout after=%gs stage=%s",
            self._peer_ip(),
            self._timeout_s,
            "transaction" if in_transaction else "before_mail",
        )
        self._bridge.refused("idle_timeout")
        with contextlib.suppress(Exception):
            reply = ERR_421_TIMEOUT.format(host=self.hostname) + "\r\n"
            self.transport.write(reply.encode())  # type: ignore[attr-defined]
        self.transport.close()

    # --- commands ----------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's reading of a MAIL/RCPT path, with its answer for the usual path found
        without it: aiosmtpd (1.4.6) defines a typing.Protocol class on every call and runs
        the email package's RFC 5322 token parser, about 43 µs per command against half a
        microsecond for _PLAIN_PATH, two commands per notice. Anything else (quoted local
        parts, address literals, source routes, comments, the null path, non-ASCII) is
        aiosmtpd's to read, so what is accepted and refused does not change (the unit tests
        compare both readings), but for the paths aiosmtpd's reading fails on."""
        m = _PLAIN_PATH.fullmatch(arg)
        if m is None:
            try:
                return super()._getaddr(arg)
            except Exception:
                # The email package's parser under aiosmtpd's reading raises IndexError,
                # AttributeError or UnboundLocalError on some malformed paths (a lone '"',
                # "é@", "\\@[@"): aiosmtpd would hand that to handle_exception, i.e. a 451
                # that has the client retry a bad address for days, and an ERROR with a stack
                # trace for every try. A path that cannot be read is malformed: 553 5.1.3.
                return None, None
        address = m.group(1)
        if self.local_part_limit and address.index("@") > self.local_part_limit:
            return None, None
        return address, m.group(2)

    async def smtp_MAIL(self, arg: str) -> None:
        if self._bridge.stopping:
            # RFC 5321 §3.8: a server shutting down answers 421 and closes the channel;
            # the client keeps the notice and retries elsewhere or later.
            await self.push(ERR_421_STOPPING)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_MAIL(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if not self._tls_protocol and not _is_loopback(self._peer_ip()):
            await self.push(ERR_538_TLS)
            return
        await super().smtp_AUTH(arg)

    # aiosmtpd's mechanisms parse the exchange and call the authenticator synchronously; it
    # defers (_defer), and the check runs here where it may await.
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_deferred(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_deferred(await super().auth_LOGIN(_, args))

    async def _check_deferred(self, result: AuthResult) -> AuthResult:
        deferred = result.auth_data
        if not isinstance(deferred, _Deferred):
            return result  # the exchange itself failed; aiosmtpd has answered or will
        if not isinstance(deferred.credentials, LoginPassword):
            return AuthResult(success=False, handled=False)
        # From here the client is waiting for us, not the other way round.
        self._pause_timeout()
        checked = await self._bridge.handler.check_login(self._peer_ip(), deferred.credentials)
        if checked.success and self._outside:
            # A library on an address outside its networks: no longer a stranger.
            self._bridge.slots.promote()
            self._outside = False
        return checked


class SmtpHandler:
    """aiosmtpd hooks. Each returns a reply string; exceptions become 451 in handle_exception."""

    def __init__(self, server: SmtpIntake) -> None:
        self.server = server

    @property
    def intake(self) -> Intake:
        return self.server.intake

    async def check_login(self, peer: str, creds: LoginPassword) -> AuthResult:
        """Check SMTP AUTH credentials, in turn and off the event loop.

        Known-good credentials (verified earlier, cached) pass at once. Anything else takes its
        turn in the throttle (by network and by login), then scrypt runs in a worker thread.
        An unknown login is checked against a dummy hash of the same cost, so that it fails
        exactly like a wrong password: same delay, same work, same reply.
        """
        server = self.server
        login = creds.login.decode("utf-8", "replace")
        tenant = self.intake.tenant_for_login(login)
        hashed = tenant.users[login] if tenant is not None else server.dummy_hash
        if server.verifier.known_good(creds.password, hashed) and tenant is not None:
            log.info("smtp auth ok peer=%s login=%s tenant=%s", peer, _shown(login), tenant.id)
            return AuthResult(success=True, auth_data=creds)
        now = time.monotonic()
        turn = server.throttle.reserve(peer, login[:256], now)
        if turn.refused:
            log.warning(
                "smtp auth deferred peer=%s login=%s reason=attempts_waiting",
                peer,
                _shown(login),
            )
            server.refused("auth_deferred")
            return AuthResult(success=False, handled=False, message=ERR_454_AUTH)
        if turn.start > now:
            await asyncio.sleep(turn.start - now)
        try:
            ok = await server.verifier.check(creds.password, hashed)
        except VerifierBusy:
            log.warning(
                "smtp auth deferred peer=%s login=%s reason=checks_busy", peer, _shown(login)
            )
            server.refused("auth_deferred")
            return AuthResult(success=False, handled=False, message=ERR_454_AUTH)
        if ok and tenant is not None:
            server.throttle.succeeded(turn, time.monotonic())
            log.info("smtp auth ok peer=%s login=%s tenant=%s", peer, _shown(login), tenant.id)
            return AuthResult(success=True, auth_data=creds)
        log.warning("smtp auth failed peer=%s login=%s", peer, _shown(login))
        server.refused("auth_failed")
        # handled=False makes aiosmtpd answer 535 5.7.8 itself; handled=True without a reply
        # would leave the client waiting forever (see ARCHITECTURE.md).
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        peer = session.peer[0] if session.peer else ""
        login = (
            session.login_data.decode() if session.authenticated and session.login_data else None
        )
        null_sender = _reverse_path(address) == ""
        try:
            tenant = self.intake.tenant_for_sender(peer, login, _reverse_path(address))
            await self.intake.check_backlog()
        except Rejected as exc:
            if not (null_sender and exc.permanent):
                log.info("smtp mail refused peer=%s reply=%s", peer, mask_text(exc.reply))
                self.server.rejected(None, exc.reply)
                return exc.reply
            # A bounce (RFC 3464) comes from the null sender, from any MTA. Whether it may pass
            # is decided at RCPT: only the bridge's own bounce addresses take it
            # (bridge/bounce_intake.py); any other recipient gets this refusal there.
            tenant = None
            setattr(envelope, _NULL_REFUSAL, exc.reply)
        if null_sender:
            setattr(envelope, _BOUNCE_IDS, [])
        setattr(envelope, _TENANT, tenant)
        setattr(envelope, _RCPTS, [])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return OK_250

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        bounce_ids: list[int] | None = getattr(envelope, _BOUNCE_IDS, None)
        if bounce_ids is not None:
            reply = await self._bounce_rcpt(envelope, bounce_ids, address)
            if reply is not None:
                return reply
        tenant = getattr(envelope, _TENANT, None)
        if tenant is None:
            refusal = getattr(envelope, _NULL_REFUSAL, None)
            if refusal is not None:
                log.info("smtp rcpt refused: null sender to a non-bounce address")
                self.server.rejected(None, refusal)
                return str(refusal)
            return ERR_503_MAIL_FIRST
        if bounce_ids:
            return ERR_452_RCPTS  # a bounce and a notice in one envelope: one at a time
        rcpts: list[Recipient] = getattr(envelope, _RCPTS)
        if len(rcpts) >= self.server.cfg.smtp.max_recipients:
            return ERR_452_RCPTS
        try:
            rcpt = self.intake.recipient(tenant, address)
            await self.intake.check_optout(tenant, rcpt)
        except Rejected as exc:
            log.info("smtp rcpt refused tenant=%s reply=%s", tenant.id, mask_text(exc.reply))
            self.server.rejected(tenant.id, exc.reply)
            return exc.reply
        rcpts.append(rcpt)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def _bounce_rcpt(self, envelope: Envelope, ids: list[int], address: str) -> str | None:
        """A null-sender RCPT to one of the bridge's bounce addresses; None: not one of them."""
        found = await self.intake.bounces.check_rcpt(address)
        if found is None:
            return None
        if isinstance(found, str):
            self.server.rejected(None, found)
            return found
        if getattr(envelope, _RCPTS, None) or len(ids) >= self.server.cfg.smtp.max_recipients:
            return ERR_452_RCPTS  # a bounce and a notice in one envelope: one at a time
        ids.append(found)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        tenant = getattr(envelope, _TENANT, None)
        rcpts: list[Recipient] = getattr(envelope, _RCPTS, [])
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        bounce_ids: list[int] = getattr(envelope, _BOUNCE_IDS, None) or []
        if bounce_ids:
            try:
                return await self.intake.bounces.accept(bounce_ids, raw or b"")
            except StoreError as exc:
                log.error("smtp bounce not accepted: store failure: %s", exc)
                return ERR_451_STORE
        if tenant is None or not rcpts:
            return "554 5.5.1 Error: no valid recipients"
        try:
            results = await self.intake.accept(
                tenant, _reverse_path(envelope.mail_from), rcpts, raw or b"", via="smtp"
            )
        except Rejected as exc:
            log.info("smtp data refused tenant=%s reply=%s", tenant.id, mask_text(exc.reply))
            self.server.rejected(tenant.id, exc.reply)
            return exc.reply
        except StoreError as exc:
            log.error("smtp data not accepted tenant=%s: store failure: %s", tenant.id, exc)
            self.server.rejected(tenant.id, ERR_451_STORE)
            return ERR_451_STORE
        if self.server.metrics is not None:
            self.server.metrics.message_accepted(
                tenant.id, "smtp", sum(1 for r in results if not r.duplicate)
            )
        return queued_reply([(r.queue_id, r.duplicate) for r in results])

    async def handle_exception(self, error: Exception) -> str:
        # Anything unexpected: the notice was not committed, so ask the client to retry.
        log.error("smtp handler error: %r", error, exc_info=error)
        return ERR_451_INTERNAL


def queued_reply(results: list[tuple[str, bool]]) -> str:
    """The 250 after DATA, for (queue_id, duplicate) per recipient in RCPT order. A notice whose
    Message-ID was already accepted for a number is not texted again (smtp.dedup_window_s);
    the reply says so, so whoever reads the ILS's mail log does not look for a second text."""
    ids = " ".join(qid for qid, _ in results)
    dups = [qid for qid, dup in results if dup]
    if not dups:
        return f"250 2.0.0 OK queued as {ids}"
    if len(dups) == len(results):
        return f"250 2.0.0 Duplicate of a notice already queued as {ids}; not sent again"
    return f"250 2.0.0 OK queued as {ids}; duplicates, not sent again: {' '.join(dups)}"


class SmtpIntake:
    """The SMTP listener. start() binds (port 0 allowed: see .port), stop() closes it."""

    def __init__(self, cfg: Config, intake: Intake, *, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.intake = intake
        self.handler = SmtpHandler(self)
        # Sized once: the worker threads are made at start (auth_parallel_checks needs a restart).
        self.verifier = Verifier(cfg.smtp.auth_parallel_checks, defaults.AUTH_VERIFY_QUEUE)
        self.throttle = AuthThrottle(_throttle_settings(cfg))
        self.slots = ConnectionSlots()
        self.dummy_hash = _dummy_hash(cfg)
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.port = 0

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self.throttle.reconfigure(_throttle_settings(cfg))
        self.dummy_hash = _dummy_hash(cfg)

    @property
    def connections(self) -> int:
        return self.slots.total

    @property
    def cfg(self) -> Config:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: Config) -> None:
        # Derived once per configuration: idle_timeout runs after every reply.
        self._cfg = cfg
        smtp = cfg.smtp
        self._slot_limits = SlotLimits(
            max_connections=smtp.max_connections,
            per_address=smtp.max_connections_per_address,
            # Strangers never get every slot, whatever the two numbers say.
            outside_networks=min(smtp.max_connections_outside_networks, smtp.max_connections - 1),
            stress_fraction=defaults.SMTP_STRESS_FRACTION,
        )
        self._timeouts = Timeouts(
            smtp.idle_timeout_s, smtp.idle_timeout_before_mail_s, smtp.stress_timeout_s
        )

    def slot_limits(self) -> SlotLimits:
        return self._slot_limits

    def admit(self, ip: str, listed: bool) -> Refusal | None:
        return self.slots.admit(ip, listed, self._slot_limits)

    def idle_timeout(self, in_transaction: bool) -> float:
        if in_transaction:  # no need to ask the slots about stress
            return self._timeouts.in_transaction_s
        stress = self.slots.under_stress(self._slot_limits)
        return idle_timeout(in_transaction, stress, self._timeouts)

    def refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.smtp_refused(reason)

    def rejected(self, tenant_id: str | None, reply: str) -> None:
        if self.metrics is not None:
            self.metrics.message_rejected(tenant_id, reply)

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.cfg.smtp.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cfg.smtp.tls.cert), str(self.cfg.smtp.tls.key))
        return ctx

    def _protocol(self) -> BridgeSMTP:
        smtp = self.cfg.smtp
        return BridgeSMTP(
            self,
            self.handler,
            hostname=smtp.hostname or smtp.domains[0],
            data_size_limit=smtp.max_message_bytes,
            decode_data=False,
            enable_SMTPUTF8=True,
            tls_context=self._tls,
            timeout=smtp.idle_timeout_s,
            authenticator=_defer,
            # Enforced in BridgeSMTP.smtp_AUTH instead, which also allows loopback clients.
            auth_require_tls=False,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        self._tls = self._tls_context()
        listen = self.cfg.smtp.listen
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=listen.host, port=listen.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smtp listening on %s:%d", listen.host, self.port)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening, then let open sessions finish (up to grace_s)."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        deadline = time.monotonic() + grace_s
        while self.connections > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            # Sessions end on their own (QUIT or idle timeout); polling a counter is simpler
            # than threading an Event through aiosmtpd's protocol objects.
            await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        self.verifier.close()
        self._server = None
        log.info("smtp listener stopped")


def _throttle_settings(cfg: Config) -> ThrottleSettings:
    return ThrottleSettings(
        step_s=cfg.smtp.auth_failure_delay_step_s,
        max_s=cfg.smtp.auth_failure_delay_max_s,
        half_life_s=defaults.AUTH_FAILURE_HALF_LIFE_S,
        global_free=defaults.AUTH_GLOBAL_FREE_FAILURES,
        capacity=defaults.AUTH_THROTTLE_ENTRIES,
        v4_bits=defaults.AUTH_PREFIX_BITS_V4,
        v6_bits=defaults.AUTH_PREFIX_BITS_V6,
    )


def _dummy_hash(cfg: Config) -> str:
    """The stand-in hash for unknown logins, as costly as the configured ones."""
    hashes = [h for t in cfg.tenants for h in t.users.values()]
    return dummy_hash_like(hashes[0] if hashes else None)
