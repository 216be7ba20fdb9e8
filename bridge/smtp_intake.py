"""SMTP edge: aiosmtpd inside our own event loop, replies from named constants.

aiosmtpd's threaded `Controller` is not used: the server runs on the bridge's loop via
`loop.create_server`, so the handler awaits the store directly and shutdown is ordered.
aiosmtpd answers `500` (a permanent error!) when a handler raises; `handle_exception` below
turns anything unexpected into `451 4.3.0` so the ILS retries instead of dropping the notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from bridge.config import Config
from bridge.intake import Intake, Recipient, Rejected
from bridge.metrics import Metrics
from bridge.passwords import Verifier
from bridge.store import StoreError

log = logging.getLogger(__name__)

# Replies (RFC 5321 §4.2, enhanced codes RFC 3463).
ERR_451_STORE = "451 4.3.0 Temporary storage failure; the notice was not accepted, try again later"
ERR_451_INTERNAL = (
    "451 4.3.0 Temporary internal error; the notice was not accepted, try again later"
)
ERR_452_RCPTS = "452 4.5.3 Too many recipients; send the rest in another message"
ERR_421_CONNS = "421 4.3.2 Too many connections; try again later"
ERR_421_STOPPING = "421 4.3.2 Service shutting down; try again later"
ERR_538_TLS = "538 5.7.11 Encryption required: use STARTTLS before AUTH"
ERR_503_MAIL_FIRST = "503 5.5.1 Error: send MAIL first"
OK_250 = "250 2.1.0 OK"

# State kept per SMTP session (aiosmtpd's Session has no slot for it).
_TENANT = "sms_bridge_tenant"
_RCPTS = "sms_bridge_rcpts"


class _AuthThrottle:
    """Slows down password guessing: each consecutive failure from an address adds a delay
    before the next AUTH from it is even looked at. Success clears the address."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}

    def delay(self, ip: str, step: float, cap: float) -> float:
        n, _ = self._failures.get(ip, (0, 0.0))
        return min(n * step, cap)

    def failed(self, ip: str) -> None:
        n, _ = self._failures.get(ip, (0, 0.0))
        if len(self._failures) > 10_000:  # bounded memory under a distributed attack
            self._failures.clear()
        self._failures[ip] = (n + 1, time.monotonic())

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)


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
    """aiosmtpd's protocol with three additions: a connection cap, AUTH over TLS except from
    loopback, and a growing delay before AUTH from an address that keeps failing."""

    def __init__(self, server: SmtpIntake, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge = server
        reader = getattr(self, "_stream_reader", None)  # the one aiosmtpd's __init__ made
        if type(reader) is asyncio.StreamReader:
            reader.__class__ = _FairReader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._bridge.connections >= self._bridge.cfg.smtp.max_connections:
            # RFC 5321 §3.1: a server that cannot serve may answer 421 at greeting and close.
            with contextlib.suppress(Exception):
                transport.write((ERR_421_CONNS + "\r\n").encode())  # type: ignore[attr-defined]
            transport.close()
            self._bridge_counted = False
            return
        self._bridge.connections += 1
        self._bridge_counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_bridge_counted", False):
            self._bridge.connections -= 1
            self._bridge_counted = False
        if self.transport is None and self.session is None:
            return
        super().connection_lost(exc)

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
        peer = self.session.peer[0] if self.session and self.session.peer else ""
        if not self._tls_protocol and not _is_loopback(peer):
            await self.push(ERR_538_TLS)
            return
        smtp_cfg = self._bridge.cfg.smtp
        wait = self._bridge.throttle.delay(
            peer, smtp_cfg.auth_failure_delay_step_s, smtp_cfg.auth_failure_delay_max_s
        )
        if wait > 0:
            await asyncio.sleep(wait)
        await super().smtp_AUTH(arg)


class SmtpHandler:
    """aiosmtpd hooks. Each returns a reply string; exceptions become 451 in handle_exception."""

    def __init__(self, server: SmtpIntake) -> None:
        self.server = server

    @property
    def intake(self) -> Intake:
        return self.server.intake

    def authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        peer = session.peer[0] if session.peer else ""
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            tenant = self.intake.tenant_for_login(login)
            if tenant is not None and self.server.verifier.verify(
                auth_data.password, tenant.users[login]
            ):
                self.server.throttle.succeeded(peer)
                log.info("smtp auth ok peer=%s login=%s tenant=%s", peer, login, tenant.id)
                return AuthResult(success=True, auth_data=auth_data)
            log.warning("smtp auth failed peer=%s login=%s", peer, login)
        self.server.throttle.failed(peer)
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
        try:
            tenant = self.intake.tenant_for_sender(peer, login, _reverse_path(address))
            await self.intake.check_backlog()
        except Rejected as exc:
            log.info("smtp mail refused peer=%s reply=%s", peer, exc.reply[:60])
            self.server.rejected(None, exc.reply)
            return exc.reply
        setattr(envelope, _TENANT, tenant)
        setattr(envelope, _RCPTS, [])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return OK_250

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        tenant = getattr(envelope, _TENANT, None)
        if tenant is None:
            return ERR_503_MAIL_FIRST
        rcpts: list[Recipient] = getattr(envelope, _RCPTS)
        if len(rcpts) >= self.server.cfg.smtp.max_recipients:
            return ERR_452_RCPTS
        try:
            rcpt = self.intake.recipient(tenant, address)
            await self.intake.check_optout(tenant, rcpt)
        except Rejected as exc:
            log.info("smtp rcpt refused tenant=%s reply=%s", tenant.id, exc.reply[:40])
            self.server.rejected(tenant.id, exc.reply)
            return exc.reply
        rcpts.append(rcpt)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        tenant = getattr(envelope, _TENANT, None)
        rcpts: list[Recipient] = getattr(envelope, _RCPTS, [])
        if tenant is None or not rcpts:
            return "554 5.5.1 Error: no valid recipients"
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            results = await self.intake.accept(
                tenant, _reverse_path(envelope.mail_from), rcpts, raw or b"", via="smtp"
            )
        except Rejected as exc:
            log.info("smtp data refused tenant=%s reply=%s", tenant.id, exc.reply[:60])
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
        ids = " ".join(r.queue_id for r in results)
        return f"250 2.0.0 OK queued as {ids}"

    async def handle_exception(self, error: Exception) -> str:
        # Anything unexpected: the notice was not committed, so ask the client to retry.
        log.error("smtp handler error: %r", error, exc_info=error)
        return ERR_451_INTERNAL


class SmtpIntake:
    """The SMTP listener. start() binds (port 0 allowed: see .port), stop() closes it."""

    def __init__(self, cfg: Config, intake: Intake, *, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.intake = intake
        self.handler = SmtpHandler(self)
        self.verifier = Verifier()
        self.throttle = _AuthThrottle()
        self.connections = 0
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.port = 0

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg

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
            authenticator=self.handler.authenticate,
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
        self._server = None
        log.info("smtp listener stopped")
