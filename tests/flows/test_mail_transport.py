"""Mail transports over real sockets: SmtpRelayTransport against the recording SmtpSink,
MaildirTransport on a temporary directory."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.mail_transport import MaildirTransport, SmtpRelayTransport, TransportError
from bridge.model import Outgoing
from bridge.testing.mail_samples import sample_dsn, sample_reply
from bridge.testing.smtp_sink import SmtpSink

STEP_S = 10.0  # ceiling on any single network step in these tests


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


def relay(
    port: int, *, username: str | None = None, password: str | None = None
) -> SmtpRelayTransport:
    return SmtpRelayTransport(
        "127.0.0.1",
        port,
        starttls="never",
        timeout_s=5.0,
        local_hostname="bridge.test",
        username=username,
        password=password,
    )


def reply_mail(text: str = "Can I pick it up Saturday?") -> Outgoing:
    return sample_reply(text=text)


def dsn_mail() -> Outgoing:
    # A line starting with "." must survive SMTP dot-stuffing (RFC 5321 §4.5.2).
    return sample_dsn(sms_text=".\n.. dots")


async def send(transport: SmtpRelayTransport | MaildirTransport, mail: Outgoing) -> None:
    await asyncio.wait_for(transport.send(mail), STEP_S)


async def send_error(transport: SmtpRelayTransport, mail: Outgoing) -> TransportError:
    with pytest.raises(TransportError) as info:
        await send(transport, mail)
    return info.value


# --- SMTP relay ---------------------------------------------------------------------------------


async def test_relay_delivers_reply(sink: SmtpSink) -> None:
    mail = reply_mail()
    await send(relay(sink.port), mail)
    [got] = await sink.wait_for(1, timeout=STEP_S)
    assert got.mail_from == "12025550143@sms.example.org"
    assert got.rcpt_tos == ("circ@riverside.example.org",)
    assert got.data == mail.data
    assert got.message()["Message-ID"] == mail.message_id


async def test_relay_sends_dsn_from_null_sender(sink: SmtpSink) -> None:
    mail = dsn_mail()
    await send(relay(sink.port), mail)
    [got] = await sink.wait_for(1, timeout=STEP_S)
    assert got.mail_from == ""
    assert got.rcpt_tos == ("ils@riverside.example.org",)
    assert got.data == mail.data
    human = next(got.message().iter_parts()).get_content().replace("\r\n", "\n")
    assert "> .\n> .. dots\n" in human


async def test_relay_two_messages_two_connections(sink: SmtpSink) -> None:
    transport = relay(sink.port)
    first, second = reply_mail("one"), reply_mail("two")
    await send(transport, first)
    await send(transport, second)
    got = await sink.wait_for(2, timeout=STEP_S)
    assert [m.data for m in got] == [first.data, second.data]


@pytest.mark.parametrize(
    ("code", "stage", "permanent"),
    [(451, "rcpt", False), (450, "rcpt", False), (550, "rcpt", True), (553, "rcpt", True),
     (452, "data", False), (554, "data", True)],
)  # fmt: skip
async def test_relay_maps_reply_codes(
    sink: SmtpSink, code: int, stage: str, permanent: bool
) -> None:
    sink.fail_with(code, stage=stage)  # type: ignore[arg-type]
    err = await send_error(relay(sink.port), reply_mail())
    assert err.permanent is permanent
    assert err.code == code
    assert f"{code // 100}.0.0 injected failure" in err.reason
    assert sink.mails == []


async def test_relay_recovers_after_failure_is_cleared(sink: SmtpSink) -> None:
    transport = relay(sink.port)
    sink.fail_with(451, "4.3.0 try again later")
    err = await send_error(transport, reply_mail())
    assert (err.permanent, err.code) == (False, 451)
    assert "4.3.0 try again later" in err.reason
    sink.fail_with(None)
    mail = reply_mail()
    await send(transport, mail)
    [got] = await sink.wait_for(1, timeout=STEP_S)
    assert got.data == mail.data


async def test_relay_port_closed_is_temporary() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    err = await send_error(relay(port), reply_mail())
    assert err.permanent is False
    assert err.code is None


async def test_relay_silent_server_times_out_as_temporary() -> None:
    # Accepts the TCP connection but never sends the 220 greeting.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = SmtpRelayTransport(
            "127.0.0.1", port, starttls="never", timeout_s=0.3, local_hostname="bridge.test"
        )
        err = await send_error(transport, reply_mail())
        assert err.permanent is False
        assert err.code is None
        assert "Timeout" in err.reason
    finally:
        server.close()
        await server.wait_closed()


async def test_relay_starttls_always_without_server_support_is_temporary(sink: SmtpSink) -> None:
    transport = SmtpRelayTransport(
        "127.0.0.1", sink.port, starttls="always", timeout_s=5.0, local_hostname="bridge.test"
    )
    err = await send_error(transport, reply_mail())
    assert err.permanent is False
    assert "STARTTLS" in err.reason.upper()
    assert sink.mails == []


async def test_relay_auth_not_offered_is_temporary(sink: SmtpSink) -> None:
    # Misconfiguration, not a fault of the message: it must wait, not fail for good.
    err = await send_error(relay(sink.port, username="bridge", password="s3cret"), reply_mail())
    assert err.permanent is False
    assert sink.mails == []


def test_relay_rejects_half_credentials() -> None:
    with pytest.raises(ValueError):
        SmtpRelayTransport("127.0.0.1", 25, username="bridge")


# --- sink itself --------------------------------------------------------------------------------


async def test_sink_wait_for_times_out(sink: SmtpSink) -> None:
    with pytest.raises(TimeoutError):
        await sink.wait_for(1, timeout=0.05)


async def test_sink_stop_closes_idle_client_sessions() -> None:
    sink = SmtpSink()
    await sink.start()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", sink.port), STEP_S)
    greeting = await asyncio.wait_for(reader.readline(), STEP_S)
    assert greeting.startswith(b"220 smtp-sink.test")
    await sink.stop()
    assert await asyncio.wait_for(reader.read(), STEP_S) == b""
    writer.close()
    await writer.wait_closed()


# --- Maildir --------------------------------------------------------------------------------


async def test_maildir_writes_one_file_into_new(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    transport = MaildirTransport(box)
    assert {p.name for p in box.iterdir()} == {"tmp", "new", "cur"}
    mail = reply_mail()
    await send(transport, mail)
    files = list((box / "new").iterdir())
    assert len(files) == 1
    assert list((box / "tmp").iterdir()) == []
    assert list((box / "cur").iterdir()) == []
    data = files[0].read_bytes()
    assert data == (
        b"Return-Path: <12025550143@sms.example.org>\n"
        b"Delivered-To: circ@riverside.example.org\n" + mail.data.replace(b"\r\n", b"\n")
    )
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Message-ID"] == mail.message_id
    assert parsed["Return-Path"] == "<12025550143@sms.example.org>"


async def test_maildir_null_sender_and_unique_names(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    await send(transport, dsn_mail())
    await send(transport, dsn_mail())
    files = sorted((tmp_path / "new").iterdir())
    assert len(files) == 2
    assert files[0].name != files[1].name
    assert all(f.read_bytes().startswith(b"Return-Path: <>\n") for f in files)


async def test_maildir_write_failure_is_temporary(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    (tmp_path / "tmp").rmdir()
    (tmp_path / "tmp").write_text("not a directory")
    with pytest.raises(TransportError) as info:
        await send(transport, reply_mail())
    assert info.value.permanent is False
    assert info.value.code is None
    assert list((tmp_path / "new").iterdir()) == []
