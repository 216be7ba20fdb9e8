"""Fair SMTP intake under abuse, over real sockets on loopback.

Clients outside the libraries' networks are simulated by binding the client socket to other
loopback addresses (127.0.0.0/8 all routes to lo) while the tenant's `networks` hold only
127.0.0.1/32, the ILS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import smtplib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config
from bridge.intake import Intake
from bridge.metrics import Metrics
from bridge.passwords import hash_password
from bridge.smtp_intake import SmtpIntake
from bridge.store import SqliteStore, Store
from tests.conftest import MakeConfig, tenant
from tests.smtp_client import notice, send
from tests.waiting import eventually

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
ILS_ONLY = ["127.0.0.1/32"]


@dataclass
class Server:
    cfg: Config
    store: Store
    smtp: SmtpIntake

    @property
    def port(self) -> int:
        return self.smtp.port


Start = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(make_config: MakeConfig, tmp_path: Path) -> AsyncIterator[Start]:
    running: list[Server] = []

    async def go(over: dict[str, Any] | None = None) -> Server:
        cfg = make_config(over)
        store = SqliteStore(tmp_path / f"s{len(running)}.db")
        await store.open()
        smtp = SmtpIntake(cfg, Intake(cfg, store), metrics=Metrics())
        await smtp.start()
        server = Server(cfg, store, smtp)
        running.append(server)
        return server

    yield go
    for s in running:
        await s.smtp.stop(grace_s=1)
        await s.store.close()


class Client:
    """A byte-level SMTP client bound to a chosen loopback address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.greeting = b""

    @classmethod
    async def connect(cls, port: int, source: str) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10
        )
        client = cls(reader, writer)
        client.greeting = await client.reply()
        return client

    async def reply(self, timeout: float = 60) -> bytes:  # noqa: ASYNC109
        out = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            out += line
            if line[3:4] != b"-":
                return out

    async def cmd(self, line: bytes, timeout: float = 60) -> bytes:  # noqa: ASYNC109
        self.writer.write(line)
        await self.writer.drain()
        return await self.reply(timeout)

    def close(self) -> None:
        self.writer.close()


async def wrong_password(
    port: int, source: str, login: str = "koha", password: str = "guess"
) -> tuple[int, float]:
    """One AUTH PLAIN attempt from `source`: the reply code and the seconds from AUTH to it."""
    client = await Client.connect(port, source)
    try:
        await client.cmd(b"EHLO attacker.example.net\r\n")
        blob = base64.b64encode(b"\0" + login.encode() + b"\0" + password.encode())
        t0 = time.monotonic()
        reply = await client.cmd(b"AUTH PLAIN " + blob + b"\r\n")
        return int(reply[:3]), time.monotonic() - t0
    finally:
        client.close()


def _ils_send(port: int, n: int) -> tuple[int, float]:
    """The ILS (127.0.0.1) sends one notice; (reply code at DATA or refusal, seconds)."""
    t0 = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
            s.ehlo("ils.riverside.example.org")
            s.mail(FROM)
            s.rcpt(TO)
            code, _ = s.data(notice(Message_ID=f"<fair{n}@riverside.example.org>"))
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
    except (smtplib.SMTPServerDisconnected, OSError):
        code = 0
    return code, time.monotonic() - t0


async def ils_send(port: int, n: int) -> tuple[int, float]:
    return await asyncio.wait_for(asyncio.to_thread(_ils_send, port, n), 30)


async def drained(srv: Server) -> None:
    """Wait until the strangers' connections are gone (the ILS may hold one)."""
    await drained_to(srv, 0)


async def drained_to(srv: Server, outside: int, timeout: float = 10) -> None:  # noqa: ASYNC109
    await eventually(
        lambda: srv.smtp.slots.outside <= outside, timeout, "the connections to be released"
    )


# --- (a) idle strangers cannot lock the ILS out ---------------------------------------------------


async def test_idle_strangers_cannot_take_the_libraries_slots(start: Start) -> None:
    srv = await start({"tenants": [tenant(networks=ILS_ONLY)]})
    strangers: list[Client] = []
    refusals: list[bytes] = []
    # 150 idle connections from 15 addresses in no library's network (max_connections: 100).
    for host in range(2, 17):
        for _ in range(10):
            try:
                c = await Client.connect(srv.port, f"127.0.0.{host}")
            except (ConnectionError, asyncio.IncompleteReadError):
                continue
            if c.greeting.startswith(b"220"):
                strangers.append(c)
            else:
                refusals.append(c.greeting)
                c.close()
    try:
        # strangers get a small share, and the refusals say why (RFC 3463 4.7.0: policy)
        assert len(strangers) <= srv.cfg.smtp.max_connections // 2
        assert refusals and all(r.startswith(b"421 4.7.0") for r in refusals)
        # while they sit idle and more keep knocking, every notice from the ILS is accepted,
        # promptly
        stop = asyncio.Event()

        async def knock() -> None:
            n = 0
            while not stop.is_set():
                with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                    c = await Client.connect(srv.port, f"127.0.1.{2 + n % 50}")
                    if c.greeting.startswith(b"220"):
                        strangers.append(c)
                    else:
                        refusals.append(c.greeting)
                        c.close()
                n += 1
                await asyncio.sleep(0.005)  # the flood's pace: a load generator, not a wait

        knocker = asyncio.create_task(knock())
        try:
            results = [await ils_send(srv.port, n) for n in range(10)]
        finally:
            stop.set()
            await asyncio.wait_for(knocker, 10)
        assert [code for code, _ in results] == [250] * 10
        assert max(t for _, t in results) < 5
        assert srv.smtp.slots.outside <= srv.cfg.smtp.max_connections_outside_networks
    finally:
        for c in strangers:
            c.close()


async def test_one_address_cannot_take_every_slot(start: Start) -> None:
    srv = await start(
        {"smtp": {"max_connections_per_address": 3}, "tenants": [tenant(networks=ILS_ONLY)]}
    )
    held = [await Client.connect(srv.port, "127.0.0.2") for _ in range(5)]
    try:
        assert [c.greeting[:3] for c in held[:3]] == [b"220"] * 3
        assert [c.greeting[:9] for c in held[3:]] == [b"421 4.7.0"] * 2
        assert srv.smtp.metrics is not None
        refusals = srv.smtp.metrics.registry.get_sample_value(
            "sms_bridge_smtp_refusals_total", {"reason": "per_address_limit"}
        )
        assert refusals == 2
        assert (await ils_send(srv.port, 0))[0] == 250
    finally:
        for c in held:
            c.close()


async def test_idle_client_is_closed_before_mail(start: Start) -> None:
    srv = await start(
        {"smtp": {"idle_timeout_before_mail_s": 0.5}, "tenants": [tenant(networks=ILS_ONLY)]}
    )
    idle = await Client.connect(srv.port, "127.0.0.2")
    await idle.cmd(b"EHLO idler.example.net\r\n")
    t0 = time.monotonic()
    # RFC 5321 §3.8: a server that closes a session says why with 421 first.
    bye = await idle.reply(timeout=10)
    assert bye.startswith(b"421 4.4.2") and time.monotonic() - t0 < 5
    assert await asyncio.wait_for(idle.reader.read(), 5) == b""
    idle.close()


async def test_idle_time_counts_from_the_last_reply(start: Start) -> None:
    srv = await start(
        {"smtp": {"idle_timeout_before_mail_s": 0.6}, "tenants": [tenant(networks=ILS_ONLY)]}
    )
    client = await Client.connect(srv.port, "127.0.0.2")
    await client.cmd(b"EHLO talker.example.net\r\n")
    # The client's think time between commands, each pause shorter than the idle timeout but
    # together well past it: the timer armed at the greeting must not end the session.
    for _ in range(4):
        await asyncio.sleep(0.3)
        assert (await client.cmd(b"NOOP\r\n", timeout=5)).startswith(b"250")
    last = time.monotonic()
    bye = await client.reply(timeout=10)
    waited = time.monotonic() - last
    assert bye.startswith(b"421 4.4.2")
    assert 0.5 <= waited < 5
    client.close()


async def test_timeout_before_mail_is_cut_under_stress(start: Start) -> None:
    srv = await start(
        {
            "smtp": {
                "max_connections_outside_networks": 2,
                "idle_timeout_before_mail_s": 30,
                "stress_timeout_s": 0.3,
            },
            "tenants": [tenant(networks=ILS_ONLY)],
        }
    )
    calm = await Client.connect(srv.port, "127.0.0.2")
    # the second stranger fills the strangers' share: from now on the server is under stress
    pressed = await Client.connect(srv.port, "127.0.0.3")
    t0 = time.monotonic()
    assert (await pressed.reply(timeout=10)).startswith(b"421 4.4.2")
    assert time.monotonic() - t0 < 5
    # a client that speaks (the ILS) is served as usual
    assert (await ils_send(srv.port, 0))[0] == 250
    # the strangers' share is free again after the close
    await drained_to(srv, 1)
    third = await Client.connect(srv.port, "127.0.0.4")
    assert third.greeting.startswith(b"220")
    for c in (calm, pressed, third):
        c.close()


# --- (b) password guessing does not slow the ILS and cannot be sped up ---------------------------


async def test_guessing_from_many_addresses_does_not_stall_the_ils(start: Start) -> None:
    srv = await start(
        {
            # small delays keep the test short; the loop must stay free either way
            "smtp": {"auth_failure_delay_step_s": 0.05, "auth_failure_delay_max_s": 0.5},
            "tenants": [tenant(networks=ILS_ONLY, users={"koha": hash_password("open sesame")})],
        }
    )
    latencies: list[float] = []
    done = asyncio.Event()

    async def ils() -> None:
        n = 0
        while not done.is_set():
            code, took = await ils_send(srv.port, n)
            assert code == 250
            latencies.append(took)
            n += 1

    async def wave(first: int, size: int) -> list[int]:
        """`size` clients from distinct /24s guess koha's password at the same moment."""
        clients = await asyncio.gather(
            *(Client.connect(srv.port, f"127.{i}.0.2") for i in range(first, first + size))
        )
        for c in clients:
            await c.cmd(b"EHLO attacker.example.net\r\n")
        for i, c in enumerate(clients):
            blob = base64.b64encode(f"\0koha\0guess{first + i}".encode())
            c.writer.write(b"AUTH PLAIN " + blob + b"\r\n")
        replies = await asyncio.gather(*(c.reply() for c in clients))
        for c in clients:
            c.close()
        return [int(r[:3]) for r in replies]

    ils_task = asyncio.create_task(ils())
    codes: list[int] = []
    try:
        for first in (1, 21, 41):
            codes += await asyncio.wait_for(wave(first, 20), 60)
            await drained(srv)  # the next wave gets the whole strangers' share again
    finally:
        done.set()
        await asyncio.wait_for(ils_task, 30)
    assert set(codes) <= {535, 454} and 535 in codes
    assert len(latencies) >= 3
    assert max(latencies) < 1.0, latencies


async def test_parallel_guesses_from_one_address_are_serialised(start: Start) -> None:
    step = 0.2
    srv = await start(
        {
            "smtp": {"auth_failure_delay_step_s": step},
            "tenants": [tenant(networks=ILS_ONLY, users={"koha": hash_password("pw")})],
        }
    )
    results = await asyncio.wait_for(
        asyncio.gather(*(wrong_password(srv.port, "127.0.0.9") for _ in range(6))), 60
    )
    assert {code for code, _ in results} == {535}
    # the k-th concurrent attempt waits for the ones before it: 0, 1, 3, 6, 10, 15 steps
    assert max(t for _, t in results) >= 10 * step


async def test_guesser_gains_nothing_by_changing_address(start: Start) -> None:
    step = 0.2
    srv = await start(
        {
            "smtp": {"auth_failure_delay_step_s": step},
            "tenants": [tenant(networks=ILS_ONLY, users={"koha": hash_password("pw")})],
        }
    )
    for _ in range(4):
        assert (await wrong_password(srv.port, "127.0.0.2"))[0] == 535
    # four failures on the books: a new address, in the same /24 or another one, still waits
    for source in ("127.0.0.3", "127.0.0.4", "127.0.9.2", "127.0.10.2"):
        code, took = await wrong_password(srv.port, source)
        assert code == 535 and took >= 3 * step, (source, took)
    # and the right password still gets in
    ok = await send(srv.port, FROM, [TO], notice(), login=("koha", "pw"), host="127.0.0.1")
    assert ok.data is not None and ok.data[0] == 250


# --- (c) an unknown login costs what a known one does --------------------------------------------


async def test_unknown_login_takes_as_long_as_a_wrong_password(start: Start) -> None:
    srv = await start(
        {
            "smtp": {"auth_failure_delay_step_s": 0},
            "tenants": [tenant(networks=ILS_ONLY, users={"koha": hash_password("pw")})],
        }
    )
    known: list[float] = []
    unknown: list[float] = []
    for i in range(5):
        known.append((await wrong_password(srv.port, "127.0.0.2", login="koha"))[1])
        unknown.append((await wrong_password(srv.port, "127.0.0.2", login=f"nobody{i}"))[1])
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.4 < ratio < 2.5, (known, unknown)
