"""The bridge as a Type=notify service: READY=1 once it serves, RELOADING=1 then READY=1 on
SIGHUP, STOPPING=1 on SIGTERM, and watchdog pings while it runs; over a real AF_UNIX datagram
socket, as systemd provides it in $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.flows.proc import BridgeProcess, write_config

pytestmark = pytest.mark.slow


async def test_notify_protocol(tmp_path: Path) -> None:
    sim = SmscSimulator()
    await sim.start()
    sink = SmtpSink()
    await sink.start()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    cfg_path, port = write_config(tmp_path, sim_port=sim.port, sink_port=sink.port)
    proc = BridgeProcess(
        cfg_path,
        port,
        tmp_path / "bridge.log",
        env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"},
    )
    seen: list[str] = []

    async def until(done: Callable[[], bool], what: str, within: float = 10) -> None:
        deadline = time.monotonic() + within
        loop = asyncio.get_running_loop()
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what} not notified; got {seen}"
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
            except TimeoutError:
                continue
            seen.append(data.decode())

    def count(state: str) -> int:
        return sum(state in m.split("\n") for m in seen)

    try:
        await proc.start()
        await until(lambda: count("READY=1") == 1, "READY=1")
        await until(lambda: count("WATCHDOG=1") >= 2, "two watchdog pings")
        proc.signal(signal.SIGHUP)
        await until(lambda: count("RELOADING=1") == 1, "RELOADING=1")
        assert any("MONOTONIC_USEC=" in m for m in seen if "RELOADING=1" in m)
        await until(lambda: count("READY=1") == 2, "READY=1 after the reload")
        proc.signal(signal.SIGTERM)
        await until(lambda: count("STOPPING=1") == 1, "STOPPING=1")
        assert await proc.wait(15) == 0
    finally:
        await proc.close()
        sock.close()
        await sim.stop()
        await sink.stop()
