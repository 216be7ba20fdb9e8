"""An SMSC that floods deliver_sm with no window of its own must be paced by the bridge, not
absorbed: at most smpp.inbound_window are handled at once, the rest wait in TCP, and the
libraries' SMTP transactions stay quick meanwhile. Every deliver_sm is still answered ESME_ROK,
each only after its commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bridge import defaults
from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.smpp.pdu import DeliverSm
from bridge.testing.raw_smsc import RawSmsc
from tests.conftest import BASE, merge
from tests.flows.proc import read_db
from tests.smtp_client import notice, send

FLOOD = 3000
NOTICES = 8
FROM = "ils@riverside.example.org"


@pytest.fixture
async def flooded(tmp_path: Path) -> AsyncIterator[tuple[Bridge, RawSmsc]]:
    smsc = RawSmsc()
    await smsc.start()
    cfg = load_config_text(
        yaml.safe_dump(merge(BASE, {"smpp": {"port": smsc.port}, "log": {"level": "WARNING"}})),
        tmp_path,
    )
    bridge = Bridge(cfg)
    try:
        await bridge.start()
        assert bridge.session is not None
        assert await bridge.session.wait_bound(5)
        yield bridge, smsc
    finally:
        await asyncio.wait_for(bridge.stop(), 30)
        await smsc.stop()


async def test_deliver_sm_flood_is_paced_and_smtp_stays_quick(
    flooded: tuple[Bridge, RawSmsc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bridge, smsc = flooded
    assert bridge.session is not None
    cap = defaults.SMPP_INBOUND_WINDOW
    # Count deliver_sm handlers running at once, at the handler itself.
    handle = bridge.inbound.handle
    running = peak = 0

    async def counting(pdu: DeliverSm) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await handle(pdu)
        finally:
            running -= 1

    monkeypatch.setattr(bridge.inbound, "handle", counting)

    flood = asyncio.create_task(smsc.flood(FLOOD))
    try:
        await smsc.wait_for(lambda: len(smsc.flood_stats.answered) >= 100, 20)
        durations = []
        for i in range(NOTICES):
            started = time.monotonic()
            conv = await send(
                bridge.smtp_port,
                FROM,
                [f"20255501{i:02d}@sms.example.org"],
                notice(f"Your hold {i} is ready.", Message_ID=f"<flood{i}@x>"),
            )
            durations.append(time.monotonic() - started)
            assert conv.data is not None and conv.data[0] == 250, conv
        # the notices really went through while the SMSC was still flooding
        assert len(smsc.flood_stats.answered) < FLOOD, "flood over before the notices"
        await asyncio.wait_for(flood, 60)
        await smsc.wait_for(lambda: len(smsc.flood_stats.answered) == FLOOD, 60)
    finally:
        flood.cancel()
        await asyncio.gather(flood, return_exceptions=True)

    assert max(durations) < 2.0, durations
    assert 1 < peak <= cap, (peak, cap)
    assert bridge.session.inbound_peak <= cap
    metrics = bridge.metrics.render().decode()
    assert 'sms_bridge_smpp_inbound_in_flight{smsc="smsc"} 0.0' in metrics
    assert 'sms_bridge_smpp_inbound_paused_total{smsc="smsc"} 0.0' not in metrics
    assert 'sms_bridge_smpp_inbound_paused_total{smsc="smsc"}' in metrics
    assert smsc.flood_stats.ok == FLOOD
    # every receipt was committed (held: no submit of ours carries these ids) before its resp
    held = read_db(tmp_path / "bridge.db", "SELECT DISTINCT smsc_message_id FROM pending_receipt")
    assert len(held) == FLOOD
    # the notices were submitted too (their submit_sm_resp came through the paused reader)
    await smsc.wait_for(lambda: len(smsc.submits) >= NOTICES, 20)
