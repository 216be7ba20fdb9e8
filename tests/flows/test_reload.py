"""SIGHUP reloads tenants and policy without dropping SMTP sessions or the SMPP bind; a bad
file is refused and the running configuration kept."""

from __future__ import annotations

import asyncio
import signal
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.conftest import ASHLAND
from tests.flows.proc import BridgeProcess, write_config
from tests.smtp_client import notice, send
from tests.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
async def peers() -> AsyncIterator[tuple[SmscSimulator, SmtpSink]]:
    sim = SmscSimulator()
    await sim.start()
    sink = SmtpSink()
    await sink.start()
    yield sim, sink
    await sim.stop()
    await sink.stop()


async def wait_log(proc: BridgeProcess, text: str, within: float = 10) -> None:
    await eventually(
        lambda: text in proc.log(), within, lambda: f"{text!r} in the log:\n{proc.log()[-2000:]}"
    )


async def test_sighup_adds_a_tenant_keeps_sessions_and_bind(
    tmp_path: Path, peers: tuple[SmscSimulator, SmtpSink]
) -> None:
    sim, sink = peers
    cfg_path, port = write_config(tmp_path, sim_port=sim.port, sink_port=sink.port)
    proc = BridgeProcess(cfg_path, port, tmp_path / "bridge.log")
    try:
        await proc.start()
        await sim.wait_for(lambda: sim.binds == 1, 10)
        held = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=10)
        await asyncio.to_thread(held.ehlo)

        refused = await send(
            port, "ils@ashland.example.org", ["2025550143@sms.example.org"], notice()
        )
        assert refused.mail[0] == 550  # not a tenant yet

        data = yaml.safe_load(cfg_path.read_text())
        data["tenants"].append(ASHLAND)
        cfg_path.write_text(yaml.safe_dump(data))
        proc.signal(signal.SIGHUP)
        await wait_log(proc, "configuration reloaded: 2 tenant(s)")

        ok = await send(
            port,
            "ils@ashland.example.org",
            ["2025550143@sms.example.org"],
            notice("From Ashland", Message_ID="<ash@x>"),
        )
        assert ok.data is not None and ok.data[0] == 250
        # the session opened before the reload still works
        err = await asyncio.to_thread(
            held.sendmail,
            "ils@riverside.example.org",
            ["2025550167@sms.example.org"],
            notice("Held session", Message_ID="<held@x>"),
        )
        assert err == {}
        await asyncio.to_thread(held.quit)
        msgs = await sim.wait_for_messages(2, timeout=10)
        assert sorted(m.text for m in msgs) == ["From Ashland", "Held session"]
        assert sim.binds == 1  # the SMPP bind was not dropped

        # a broken file is refused; the running configuration stays
        cfg_path.write_text("smtp: [this is not\n")
        proc.signal(signal.SIGHUP)
        await wait_log(proc, "reload refused, keeping the running configuration")
        ok = await send(
            port,
            "ils@ashland.example.org",
            ["2025550143@sms.example.org"],
            notice("Still here", Message_ID="<still@x>"),
        )
        assert ok.data is not None and ok.data[0] == 250
        assert proc.returncode is None
    finally:
        await proc.close()
