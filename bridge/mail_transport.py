"""Outbound email transports: an SMTP relay (aiosmtplib) and a local Maildir.

A transport sends one email (`bridge.model.Outgoing`) or raises `TransportError`, which says
whether trying again can help. Retry scheduling and the durable outbox belong to the caller
(the mailer worker).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

from bridge.defaults import MAIL_TIMEOUT_S
from bridge.model import Outgoing

__all__ = ["MailTransport", "MaildirTransport", "SmtpRelayTransport", "TransportError"]

log = logging.getLogger(__name__)


class TransportError(Exception):
    """Sending failed. `permanent`: retrying the same message cannot succeed (SMTP 5xx).

    `code` is the SMTP reply code when a server gave one, else None (connection refused,
    timeout, disk error).
    """

    def __init__(self, reason: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code

    def __str__(self) -> str:
        kind = "permanent" if self.permanent else "temporary"
        code = f" {self.code}" if self.code is not None else ""
        return f"{kind}{code}: {self.reason}"


class MailTransport(Protocol):
    async def send(self, mail: Outgoing) -> None:
        """Deliver `mail` or raise TransportError."""
        ...


def _by_code(code: int, reason: str) -> TransportError:
    # RFC 5321 §4.2.1: 5yz is a permanent negative completion reply, 4yz transient. Anything
    # else in a failure position is a protocol oddity; retrying is the safe reading.
    return TransportError(reason, permanent=500 <= code <= 599, code=code)


def _short(text: str) -> str:
    return " ".join(text.split())[:300]


class SmtpRelayTransport:
    """Send through an SMTP relay (the library's mail server or a smarthost), one connection
    per message.

    One connection per message keeps the failure model simple: nothing is carried between
    messages, and the outbox paces the work. At library volumes (hundreds of mails a day) the
    extra handshakes cost nothing.

    starttls: "auto" upgrades when the server offers STARTTLS, "always" refuses to send in
    clear (a missing STARTTLS is then a temporary error, so mail waits for the operator),
    "never" stays in clear. With credentials, prefer "always" or `implicit_tls`: "auto"
    cannot detect a STARTTLS-stripping attacker. `implicit_tls` is TLS from the first byte
    (port 465, RFC 8314 §3.3).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: Literal["auto", "always", "never"] = "auto",
        tls_verify: bool = True,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = MAIL_TIMEOUT_S,
        local_hostname: str | None = None,
        implicit_tls: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if implicit_tls and starttls == "always":
            raise ValueError("implicit_tls and starttls='always' are exclusive")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.host = host
        self.port = port
        self.starttls = starttls
        self.tls_verify = tls_verify
        self.username = username
        self._password = password
        self.timeout_s = timeout_s
        # None: aiosmtplib asks socket.getfqdn() (in a worker thread) for the EHLO name.
        self.local_hostname = local_hostname
        self.implicit_tls = implicit_tls
        # Building a client checks the settings (EHLO name, TLS options) now, at start-up,
        # rather than on the first message.
        self._client()

    def _client(self) -> aiosmtplib.SMTP:
        start_tls: bool | None
        if self.implicit_tls:
            start_tls = False
        else:
            start_tls = {"auto": None, "always": True, "never": False}[self.starttls]
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.local_hostname,
            timeout=self.timeout_s,
            use_tls=self.implicit_tls,
            start_tls=start_tls,
            validate_certs=self.tls_verify,
            username=self.username,
            password=self._password,
        )

    async def send(self, mail: Outgoing) -> None:
        if not mail.rcpt_to:
            raise TransportError("no recipients", permanent=True)
        client = self._client()
        try:
            await client.connect()
            refused, _ = await client.sendmail(mail.mail_from, list(mail.rcpt_to), mail.data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            client.close()
            raise _all_refused(exc) from exc
        except (
            aiosmtplib.SMTPSenderRefused,
            aiosmtplib.SMTPRecipientRefused,
            aiosmtplib.SMTPDataError,
        ) as exc:
            client.close()
            raise _by_code(exc.code, _short(exc.message)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or AUTH refused: a fault of the relay or of our
            # configuration, not of this message. Even a 5xx (535 bad credentials) must not
            # fail the message for good: it waits until the operator fixes the setup.
            client.close()
            raise TransportError(
                f"relay refused the session: {_short(exc.message)}", permanent=False, code=exc.code
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Connection refused or reset, timeouts (SMTPTimeoutError is a TimeoutError, an
            # OSError), TLS failures, STARTTLS/AUTH not offered: all temporary.
            client.close()
            raise TransportError(
                f"{type(exc).__name__}: {_short(str(exc))}", permanent=False
            ) from exc
        except ValueError as exc:
            # aiosmtplib refuses addresses that are unsafe on an SMTP command line; the same
            # message would be refused on every attempt.
            client.close()
            raise TransportError(f"unsendable address: {exc}", permanent=True) from exc
        if refused:
            # The relay took the message for some recipients. Retrying would duplicate it for
            # the others, so this counts as sent; the refusals are logged for the operator.
            codes = sorted({r.code for r in refused.values()})
            log.warning(
                "mail %s: relay accepted it for %d of %d recipients, refused codes %s",
                mail.message_id,
                len(mail.rcpt_to) - len(refused),
                len(mail.rcpt_to),
                codes,
            )
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            # RFC 5321 §4.1.1.10: QUIT after the 250 to DATA is a courtesy; the relay already
            # owns the message, so a failure here must not make the caller send it again.
            client.close()


def _all_refused(exc: aiosmtplib.SMTPRecipientsRefused) -> TransportError:
    # Every recipient was refused. Permanent only if all refusals were 5xx: one 4xx (greylist,
    # mailbox busy) means a later attempt may still reach someone.
    codes = [r.code for r in exc.recipients]
    temporary = [c for c in codes if not 500 <= c <= 599]
    reason = "; ".join(f"{r.code} {_short(r.message)}" for r in exc.recipients)
    code = temporary[0] if temporary else (codes[0] if codes else None)
    return TransportError(
        f"all recipients refused: {reason}", permanent=bool(codes) and not temporary, code=code
    )


class MaildirTransport:
    """Deliver into a local Maildir (for a mail server that reads one, and for development).

    The Maildir protocol (D. J. Bernstein, cr.yp.to/proto/maildir.html): write the file under
    tmp/ with a unique name, fsync it, then rename it into new/; a reader never sees a partial
    message. The directory is fsynced too, or a crash may lose the rename. Maildir files are
    stored with Unix LF line endings, as local delivery agents write them.
    """

    _counter_lock = threading.Lock()
    _counter = 0

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        # "/" and ":" cannot appear in the host part of a Maildir name (the spec's escapes).
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")

    async def send(self, mail: Outgoing) -> None:
        try:
            await asyncio.to_thread(self._deliver, mail)
        except OSError as exc:
            raise TransportError(f"maildir write failed: {exc}", permanent=False) from exc

    def _unique_name(self) -> str:
        with MaildirTransport._counter_lock:
            MaildirTransport._counter += 1
            n = MaildirTransport._counter
        now_ns = time.time_ns()
        secs, usecs = divmod(now_ns // 1000, 1_000_000)
        return f"{secs}.M{usecs}P{os.getpid()}Q{n}.{self._host}"

    def _deliver(self, mail: Outgoing) -> Path:
        # Return-Path records the envelope sender (RFC 5321 §4.4); Delivered-To one line per
        # recipient, as qmail and Postfix local delivery write it. Both are built from our own
        # envelope values, checked for line breaks anyway.
        envelope = [mail.mail_from, *mail.rcpt_to]
        if any(c in v for v in envelope for c in "\r\n\x00"):
            raise TransportError("line break in envelope address", permanent=True)
        head = f"Return-Path: <{mail.mail_from}>\n" + "".join(
            f"Delivered-To: {rcpt}\n" for rcpt in mail.rcpt_to
        )
        data = head.encode("ascii", "replace") + mail.data.replace(b"\r\n", b"\n")
        name = self._unique_name()
        tmp = self.path / "tmp" / name
        new = self.path / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, new)
        dir_fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.debug("mail kind=%s ref=%s in maildir as %s", mail.kind, mail.ref or "-", name)
        return new
