"""SMTP intake over real sockets: stdlib smtplib client → our aiosmtpd listener → SQLite."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config
from bridge.intake import Intake
from bridge.model import SmsState
from bridge.passwords import hash_password
from bridge.smtp_intake import SmtpIntake
from bridge.store import SmsFilter, SqliteStore, Store
from tests.conftest import SAMPLES, MakeConfig, tenant
from tests.smtp_client import RawSmtp, notice, send

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"


@dataclass
class Server:
    cfg: Config
    store: Store
    intake: Intake
    smtp: SmtpIntake

    @property
    def port(self) -> int:
        return self.smtp.port

    async def rows(self) -> list[Any]:
        return await self.store.list_sms(SmsFilter(limit=1000), time.time())


Start = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(make_config: MakeConfig, tmp_path: Path) -> AsyncIterator[Start]:
    running: list[Server] = []

    async def go(over: dict[str, Any] | None = None) -> Server:
        cfg = make_config(over)
        store = SqliteStore(tmp_path / f"s{len(running)}.db")
        await store.open()
        intake = Intake(cfg, store)
        smtp = SmtpIntake(cfg, intake)
        await smtp.start()
        server = Server(cfg, store, intake, smtp)
        running.append(server)
        return server

    yield go
    for s in running:
        await s.smtp.stop(grace_s=1)
        await s.store.close()


async def test_notice_is_queued_with_e164_and_patron_text(start: Start) -> None:
    srv = await start()
    conv = await send(srv.port, FROM, [TO], (SAMPLES / "koha-hold-qp.eml").read_bytes())
    assert conv.data is not None and conv.data[0] == 250
    (qid,) = conv.queue_ids
    rec = await srv.store.get_sms(qid)
    assert rec is not None
    assert rec.msisdn == "+12025550143" and rec.state is SmsState.QUEUED
    assert rec.body == (
        'Riverside Public Library: Jane, your hold "The Overstory" is ready for pickup at '
        "Main Branch until 11/23. Questions? 202-555-0100"
    )
    assert rec.tenant_id == "riverside" and rec.envelope_from == FROM


async def test_two_recipients_two_sms(start: Start) -> None:
    srv = await start()
    rcpts = ["2025550143@sms.example.org", "+12025550167@SMS.example.org"]
    conv = await send(srv.port, FROM, rcpts, (SAMPLES / "two-recipients.eml").read_bytes())
    assert [c for c, _ in conv.rcpts] == [250, 250]
    ids = conv.queue_ids
    numbers = sorted([(await srv.store.get_sms(i)).msisdn for i in ids])  # type: ignore[union-attr]
    assert numbers == ["+12025550143", "+12025550167"]


async def test_foreign_domain_is_relay_denied(start: Start) -> None:
    srv = await start()
    conv = await send(srv.port, FROM, ["2025550143@gmail.com"], notice())
    ((code, msg),) = conv.rcpts
    assert code == 550 and msg.startswith("5.7.1 Relaying denied")
    assert "@sms.example.org" in msg  # tells the sender how to address texts


@pytest.mark.parametrize(
    ("rcpt", "words"),
    [
        ("1800FLOWERS@sms.example.org", "letters"),
        ("2025550@sms.example.org", "not a valid"),
        ("8002255288@sms.example.org", "toll-free"),
        ('"2025550143@gmail.com"@sms.example.org', "2025550143@gmail.com"),
        ("2025550143%gmail.com@sms.example.org", "%"),
    ],
)
async def test_bad_recipient_gets_553_with_reason(start: Start, rcpt: str, words: str) -> None:
    srv = await start()
    conv = await send(srv.port, FROM, [rcpt], notice())
    ((code, msg),) = conv.rcpts
    assert code == 553 and msg.startswith("5.1.3 ")
    assert words.lower() in msg.lower()


async def test_client_outside_networks_must_authenticate(start: Start) -> None:
    srv = await start({"tenants": [{**tenant(), "networks": ["192.0.2.0/24"]}]})
    conv = await send(srv.port, FROM, [TO], notice())
    code, msg = conv.mail
    assert code == 530 and "127.0.0.1" in msg and "AUTH" in msg


async def test_sender_not_in_tenant_senders(start: Start) -> None:
    srv = await start()
    conv = await send(srv.port, "someone@elsewhere.example.com", [TO], notice())
    code, msg = conv.mail
    assert code == 550 and msg.startswith("5.7.1 Sender someone@elsewhere.example.com")


async def test_auth_login_and_failures_are_slowed(start: Start) -> None:
    hashed = hash_password("open sesame")
    srv = await start(
        {
            "smtp": {"auth_failure_delay_step_s": 0.3},
            "tenants": [tenant(networks=[], users={"koha": hashed})],
        }
    )
    conv = await send(srv.port, FROM, [TO], notice(), login=("koha", "open sesame"))
    assert conv.data is not None and conv.data[0] == 250

    def bad_login() -> tuple[int, float]:
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
            s.ehlo()
            try:
                s.login("koha", "guess")
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, time.monotonic() - t0
        return 235, 0.0

    first = await asyncio.to_thread(bad_login)
    second = await asyncio.to_thread(bad_login)
    third = await asyncio.to_thread(bad_login)
    assert first[0] == second[0] == third[0] == 535
    # the n-th failure from one address waits n * step before the server even looks
    assert second[1] >= 0.3 and third[1] >= 0.6


async def test_message_without_text_gets_550_560(start: Start) -> None:
    srv = await start()
    raw = b"From: ils@riverside.example.org\r\nSubject: \r\nMessage-ID: <e@x>\r\n\r\n   \r\n"
    conv = await send(srv.port, FROM, [TO], raw)
    assert conv.data is not None
    code, msg = conv.data
    assert code == 550 and msg.startswith("5.6.0 ")
    assert await srv.rows() == []


async def test_store_failure_answers_451_never_500(start: Start) -> None:
    srv = await start()
    ok = await send(srv.port, FROM, [TO], notice())
    assert ok.data is not None and ok.data[0] == 250
    await srv.store.run(lambda conn: conn.execute("PRAGMA query_only=ON"))
    # the store can no longer commit: 451 at DATA, and nothing is half-accepted
    conv = await send(srv.port, FROM, [TO], notice(Message_ID="<n2@x>"))
    assert conv.data == (
        451,
        "4.3.0 Temporary storage failure; the notice was not accepted, try again later",
    )
    assert len(await srv.rows()) == 1


async def test_unexpected_error_answers_451(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = await start()

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(srv.intake, "accept", explode)
    conv = await send(srv.port, FROM, [TO], notice())
    assert conv.data is not None and conv.data[0] == 451


async def test_oversized_message_gets_552(start: Start) -> None:
    srv = await start({"smtp": {"max_message_bytes": 2048}})
    conv = await send(srv.port, FROM, [TO], notice(("x" * 70 + "\r\n") * 80))
    assert conv.data is not None and conv.data[0] == 552
    assert await srv.rows() == []


async def test_too_many_recipients_gets_452(start: Start) -> None:
    srv = await start({"smtp": {"max_recipients": 2}})
    rcpts = [f"20255501{n:02d}@sms.example.org" for n in (43, 44, 45)]
    conv = await send(srv.port, FROM, rcpts, notice())
    assert [c for c, _ in conv.rcpts] == [250, 250, 452]
    assert len(conv.queue_ids) == 2


async def test_backlog_full_defers_with_452(start: Start) -> None:
    srv = await start({"smtp": {"max_backlog": 1}})
    first = await send(srv.port, FROM, [TO], notice())
    assert first.data is not None and first.data[0] == 250
    srv.intake._backlog_at = float("-inf")  # skip the one-second cache
    second = await send(srv.port, FROM, [TO], notice(Message_ID="<n2@x>"))
    assert second.mail[0] == 452 and second.mail[1].startswith("4.3.1")
    assert len(await srv.rows()) == 1


async def test_client_retry_after_lost_250_is_not_texted_twice(start: Start) -> None:
    srv = await start()
    a = await send(srv.port, FROM, [TO], notice())
    b = await send(srv.port, FROM, [TO], notice())
    assert a.queue_ids == b.queue_ids
    assert len(await srv.rows()) == 1


async def test_connection_cap_answers_421(start: Start) -> None:
    srv = await start({"smtp": {"max_connections": 1}})
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    greeting = await asyncio.wait_for(reader.readline(), 5)
    assert greeting.startswith(b"220")
    r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
    refused = await asyncio.wait_for(r2.readline(), 5)
    assert refused.startswith(b"421 4.3.2")
    for w in (writer, w2):
        w.close()


async def test_bare_lf_smuggling_does_not_split_messages(start: Start) -> None:
    """SMTP smuggling: '<LF>.<LF>' inside DATA must not end the message (aiosmtpd >= 1.4.5)."""
    srv = await start()
    smtp = await RawSmtp.connect(srv.port)
    cmd = smtp.cmd
    await cmd(b"EHLO x\r\n")
    await cmd(f"MAIL FROM:<{FROM}>\r\n".encode())
    await cmd(f"RCPT TO:<{TO}>\r\n".encode())
    assert (await cmd(b"DATA\r\n")).startswith(b"354")
    payload = (
        b"Subject: a\r\nMessage-ID: <s1@x>\r\n\r\nfirst\n.\nMAIL FROM:<x@evil.example>\n"
        b"RCPT TO:<2025550167@sms.example.org>\nDATA\nsmuggled\r\n.\r\n"
    )
    reply = await cmd(payload)
    assert reply.startswith(b"250")
    smtp.close()
    rows = await srv.rows()
    assert [r.msisdn for r in rows] == ["+12025550143"]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_starttls_then_auth(start: Start, tls_files: tuple[Path, Path]) -> None:
    import ssl

    cert, key = tls_files
    srv = await start(
        {
            "smtp": {"tls": {"cert": str(cert), "key": str(key)}},
            "tenants": [tenant(networks=[], users={"koha": hash_password("pw")})],
        }
    )

    def session() -> tuple[bool, int, int]:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
            s.ehlo()
            offered = s.has_extn("starttls")
            s.starttls(context=ctx)
            s.ehlo()
            code, _ = s.login("koha", "pw")
            s.mail(FROM)
            rcpt, _ = s.rcpt(TO)
            return offered, code, rcpt

    offered, auth, rcpt = await asyncio.wait_for(asyncio.to_thread(session), 20)
    assert offered and auth == 235 and rcpt == 250


async def test_auth_without_tls_is_refused_from_a_remote_client(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUTH over plain text is allowed only from loopback. The test client is on loopback, so
    the address check is made to answer "remote" (it is ipaddress.is_loopback underneath)."""
    monkeypatch.setattr("bridge.smtp_intake._is_loopback", lambda ip: False)
    srv = await start({"tenants": [tenant(networks=[], users={"koha": hash_password("pw")})]})
    smtp = await RawSmtp.connect(srv.port)
    await smtp.cmd(b"EHLO x\r\n")
    reply = await smtp.cmd(b"AUTH PLAIN AGtvaGEAcHc=\r\n")  # \0koha\0pw
    assert reply.startswith(b"538 5.7.11")
    smtp.close()
