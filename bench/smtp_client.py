"""A minimal raw asyncio SMTP client: one command, one reply, no pipelining (RFC 5321 §4.1).

Used by both sides of the intake comparison so the client costs the same against the bare
aiosmtpd server and the bridge. Each command waits for its reply before the next is written,
which is how the ILS mailers we know behave (none of them use PIPELINING, RFC 2920).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.common import FAKE_NUMBERS, SENDER, SMS_DOMAIN, notice


class SmtpReplyError(Exception):
    def __init__(self, command: str, code: int, text: str) -> None:
        super().__init__(f"{command}: {code} {text}")
        self.code = code


@dataclass(frozen=True)
class Sent:
    reply: str  # the DATA reply line, e.g. "250 2.0.0 OK queued as 0190..."
    at: float  # time.monotonic() when the reply was read


class SmtpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, timeout_s: float = 10.0) -> SmtpConnection:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = cls(reader, writer)
            await conn.expect("greeting", 220)
            await conn.command("EHLO ils.riverside.example.org", 250)
        return conn

    async def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line, "250-...") reply; return its code and last line."""
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if len(line) < 4 or line[3:4] != b"-":
                text = line.decode("ascii", "replace").rstrip("\r\n")
                return int(text[:3]), text

    async def expect(self, what: str, code: int) -> str:
        got, text = await self.reply()
        if got != code:
            raise SmtpReplyError(what, got, text)
        return text

    async def command(self, line: str, code: int) -> str:
        self.writer.write(line.encode("ascii") + b"\r\n")
        return await self.expect(line.split(" ", 1)[0], code)

    async def send(self, rcpt: str, data: bytes, timeout_s: float = 30.0) -> Sent:
        """One transaction: MAIL, RCPT, DATA; returns the final reply and when it was read."""
        async with asyncio.timeout(timeout_s):
            await self.command(f"MAIL FROM:<{SENDER}>", 250)
            await self.command(f"RCPT TO:<{rcpt}>", 250)
            await self.command("DATA", 354)
            # RFC 5321 §4.5.2: dot-stuff lines that start with "."; the notices here have none,
            # but a client that skips it is wrong the day one does.
            body = data.replace(b"\r\n.", b"\r\n..")
            self.writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            text = await self.expect("DATA end", 250)
            return Sent(reply=text, at=time.monotonic())

    async def close(self) -> None:
        try:
            async with asyncio.timeout(5.0):
                await self.command("QUIT", 221)
        except (TimeoutError, ConnectionError, SmtpReplyError):
            pass
        finally:
            self.writer.close()
            try:
                async with asyncio.timeout(2.0):
                    await self.writer.wait_closed()
            except (TimeoutError, ConnectionError):
                pass


def message(seq: int) -> tuple[str, bytes]:
    """Recipient address and notice for message number ``seq`` (fake numbers only)."""
    number = FAKE_NUMBERS[seq % len(FAKE_NUMBERS)]
    return f"{number}@{SMS_DOMAIN}", notice(number, seq)
