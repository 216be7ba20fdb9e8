"""Security probes over real sockets: relay tricks, injection through patron text, oversize."""

from __future__ import annotations

import pytest

from bridge.model import SmsState
from tests.flows.harness import Env
from tests.smtp_client import RawSmtp, notice, send

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"


@pytest.mark.parametrize(
    "rcpt",
    [
        "evil.example.net!2025550143@sms.example.org",  # UUCP bang path
        "2025550143%evil.example.net@sms.example.org",  # percent hack
        '"2025550143@evil.example.net"@sms.example.org',  # quoted local part with @
        "2025550143@sms.example.org.evil.example.net",  # look-alike domain
        "2025550143@[127.0.0.1]",  # address literal
    ],
)
async def test_relay_tricks_are_refused(env: Env, rcpt: str) -> None:
    conv = await send(env.smtp_port, FROM, [rcpt], notice())
    ((code, _),) = conv.rcpts
    assert code in (550, 553, 501)
    # An accepted notice is committed before the reply to DATA: by now the store would show it.
    assert await env.bridge.store.counts() == {}


async def test_source_route_is_ignored_not_followed(env: Env) -> None:
    """RFC 5321 Appendix C: a server ignores a source route and delivers to the mailbox at its
    end; here that is our own SMS domain, so nothing is relayed to the named host."""
    conv = await send(
        env.smtp_port, FROM, ["<@relay.example.net:2025550143@sms.example.org>"], notice()
    )
    (qid,) = conv.queue_ids
    rec = await env.bridge.store.get_sms(qid)
    assert rec is not None and rec.rcpt_addr == "2025550143@sms.example.org"
    assert env.sink.mails == []


async def test_patron_text_cannot_inject_headers_into_reply_email(env: Env) -> None:
    await send(env.smtp_port, FROM, [TO], notice())
    await env.sim.wait_for_messages(1, timeout=5)
    evil = "ok\r\nBcc: victim@evil.example.net\r\nSubject: pwned"
    assert await env.sim.inject_mo("+12025550143", "12025550100", evil) == [0]
    (mail,) = await env.sink.wait_for(1, timeout=10)
    msg = mail.message()
    assert msg["Bcc"] is None and mail.rcpt_tos == ("circulation@riverside.example.org",)
    assert msg["Subject"].startswith("SMS reply: ok")
    assert b"\nBcc:" not in mail.data.split(b"\r\n\r\n", 1)[0]


async def test_overlong_line_is_refused_and_session_survives(env: Env) -> None:
    smtp = await RawSmtp.connect(env.smtp_port)
    cmd = smtp.cmd
    await cmd(b"EHLO x\r\n")
    reply = await cmd(b"MAIL FROM:<" + b"a" * 5000 + b"@riverside.example.org>\r\n")
    assert reply[:1] == b"5"  # refused, not a crash
    assert (await cmd(b"NOOP\r\n")).startswith(b"250")
    smtp.close()
    ok = await send(env.smtp_port, FROM, [TO], notice())
    assert ok.data is not None and ok.data[0] == 250
    rec = await env.wait_state(ok.queue_ids[0], SmsState.DELIVERED, SmsState.SUBMITTED)
    assert rec.msisdn == "+12025550143"


@pytest.mark.parametrize("path", [b'"', "é@".encode(), b"\\@[@b<@"])
async def test_unreadable_path_gets_553_not_a_temporary_error(env: Env, path: bytes) -> None:
    # aiosmtpd's own reading of these raises; a 451 would have the client retry them for days
    smtp = await RawSmtp.connect(env.smtp_port)
    cmd = smtp.cmd
    await cmd(b"EHLO x\r\n")
    assert (await cmd(b"MAIL FROM:" + path + b"\r\n")).startswith(b"553 5.1.3")
    assert (await cmd(b"MAIL FROM:<" + FROM.encode() + b">\r\n")).startswith(b"250")
    assert (await cmd(b"RCPT TO:" + path + b"\r\n")).startswith(b"553 5.1.3")
    smtp.close()
