"""A small stdlib SMTP client for tests: runs smtplib in a thread and records every reply."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass, field


@dataclass
class Conversation:
    mail: tuple[int, str] = (0, "")
    rcpts: list[tuple[int, str]] = field(default_factory=list)
    data: tuple[int, str] | None = None

    @property
    def queue_ids(self) -> list[str]:
        assert self.data is not None and self.data[0] == 250, self
        return self.data[1].split("queued as ", 1)[1].split(";", 1)[0].split()


def _send(
    port: int,
    mail_from: str,
    rcpts: list[str],
    data: bytes,
    login: tuple[str, str] | None,
    host: str,
) -> Conversation:
    conv = Conversation()
    with smtplib.SMTP(host, port, timeout=15) as s:
        s.ehlo("ils.riverside.example.org")
        if login is not None:
            s.login(*login)
        code, msg = s.mail(mail_from)
        conv.mail = (code, msg.decode())
        if code != 250:
            return conv
        for rcpt in rcpts:
            code, msg = s.rcpt(rcpt)
            conv.rcpts.append((code, msg.decode()))
        if not any(c == 250 for c, _ in conv.rcpts):
            return conv
        code, msg = s.data(data)
        conv.data = (code, msg.decode())
    return conv


async def send(
    port: int,
    mail_from: str,
    rcpts: list[str],
    data: bytes,
    *,
    login: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
) -> Conversation:
    return await asyncio.wait_for(
        asyncio.to_thread(_send, port, mail_from, rcpts, data, login, host), timeout=30
    )


def notice(body: str = "Your hold is ready at Main Branch.", **headers: str) -> bytes:
    hdrs = {
        "From": "ils@riverside.example.org",
        "To": "2025550143@sms.example.org",
        "Subject": "Hold ready",
        "Message-ID": "<n1@riverside.example.org>",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return (head + "\r\n" + body + "\r\n").encode()


class RawSmtp:
    """A byte-level SMTP client for probes that smtplib would refuse to send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawSmtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await client.reply()  # greeting
        return client

    async def reply(self) -> bytes:
        out = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 5)
            out += line
            if line[3:4] != b"-":
                return out

    async def cmd(self, line: bytes) -> bytes:
        self.writer.write(line)
        await self.writer.drain()
        return await self.reply()

    def close(self) -> None:
        self.writer.close()
