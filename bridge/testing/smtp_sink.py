"""A recording SMTP server for tests and local trials: aiosmtpd inside the caller's event loop.

aiosmtpd's threaded `Controller` runs its own loop in a thread; tests then race it and leak
the thread on failure. Here the `SMTP` protocol runs via `loop.create_server` in the running
loop, so the sink starts, fails and stops with the test.

    async with SmtpSink() as sink:
        ... send to 127.0.0.1:sink.port ...
        [mail] = await sink.wait_for(1, timeout=5)
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.smtp import SMTP

__all__ = ["ReceivedMail", "SmtpSink"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str  # "" for the null reverse-path (MAIL FROM:<>)
    rcpt_tos: tuple[str, ...]
    data: bytes  # the message as received, CRLF line endings, dot-stuffing removed

    def message(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


@dataclass(frozen=True)
class _Failure:
    code: int
    message: str
    stage: Literal["rcpt", "data"]


class _Handler:
    """aiosmtpd handler hooks (aiosmtpd docs, "Handler hooks"); returns reply lines."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        failure = self._sink._failure
        if failure is not None and failure.stage == "rcpt":
            return f"{failure.code} {failure.message}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        failure = self._sink._failure
        if failure is not None and failure.stage == "data":
            return f"{failure.code} {failure.message}"
        content = envelope.content
        data = content if isinstance(content, bytes) else str(content).encode("utf-8")
        # aiosmtpd reports the null reverse-path as "<>"; ReceivedMail uses "" like Outgoing.
        mail_from = envelope.mail_from or ""
        self._sink._record(
            ReceivedMail(
                mail_from="" if mail_from == "<>" else mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
            )
        )
        return "250 2.0.0 OK: queued"


class SmtpSink:
    """Accepts every message and keeps it in `mails`, unless told to fail with `fail_with`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.mails: list[ReceivedMail] = []
        self._failure: _Failure | None = None
        self._server: asyncio.Server | None = None
        self._protocols: list[Any] = []
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("SmtpSink already started")
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def factory() -> Any:
            # A fixed hostname: aiosmtpd would otherwise call socket.getfqdn() per connection.
            # No AUTH and no TLS, so aiosmtpd raises none of its configuration warnings
            # (pytest runs with filterwarnings=error).
            proto = SMTP(handler, hostname="smtp-sink.test", loop=loop, timeout=30)
            self._protocols.append(proto)
            return proto

        self._server = await loop.create_server(factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.debug("smtp sink listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Close sessions a client left open, so no transport is left for the garbage collector
        # to complain about (a ResourceWarning is an error under filterwarnings=error).
        for proto in self._protocols:
            transport = getattr(proto, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
        self._protocols.clear()
        await server.wait_closed()
        # Let the protocols' connection_lost callbacks and handler tasks finish.
        for _ in range(3):
            await asyncio.sleep(0)

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def fail_with(
        self, code: int | None, message: str = "", *, stage: Literal["rcpt", "data"] = "rcpt"
    ) -> None:
        """From now on answer every RCPT (or DATA, with stage="data") with `code`;
        `None` goes back to accepting mail. `message` defaults to an RFC 3463 enhanced code
        of the same class, e.g. "4.0.0 injected failure"."""
        if code is None:
            self._failure = None
            return
        if not 200 <= code <= 599:
            raise ValueError(f"not an SMTP reply code: {code}")
        text = " ".join(message.split()) or f"{code // 100}.0.0 injected failure"
        self._failure = _Failure(code, text, stage)

    def _record(self, mail: ReceivedMail) -> None:
        self.mails.append(mail)
        self._arrived.set()

    # A timeout argument on purpose: a test helper that forgets its own deadline hangs a test
    # until pytest-timeout kills the run, so the deadline is part of the call.
    async def wait_for(self, n: int, timeout: float) -> list[ReceivedMail]:  # noqa: ASYNC109
        """Wait until at least `n` mails have arrived; raise TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            while len(self.mails) < n:
                # Check-then-clear happens without yielding, so no arrival can slip between.
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.mails)
