"""The session's inbound window over real TCP: with smpp.inbound_window deliver_sm in hand it
reads nothing more, and every one is answered once its handler returns."""

from __future__ import annotations

import asyncio

import pytest

from bridge.smpp import errors
from bridge.smpp.pdu import DeliverSm
from bridge.smpp.session import SessionSettings
from bridge.testing.raw_smsc import RawSmsc
from tests.flows.test_smpp_session import Running, running, settings
from tests.waiting import eventually

__all__ = ["running"]  # the fixture, imported for this module's tests


async def test_full_inbound_window_stops_reading_until_a_handler_returns(
    running: Running,
) -> None:
    smsc = RawSmsc()
    await smsc.start()
    release = asyncio.Event()
    seen: list[DeliverSm] = []

    async def handler(message: DeliverSm) -> int:
        seen.append(message)
        await release.wait()
        return errors.ESME_ROK

    try:
        session = await running.session(settings(smsc.port, inbound_window=3), on_deliver=handler)
        assert await session.wait_bound(5)
        await asyncio.wait_for(smsc.flood(200), 10)  # small enough to sit in socket buffers
        # A pause means the reader has read the 4th deliver_sm and waits for a place before
        # handing it over (and before reading the 5th).
        await eventually(
            lambda: len(seen) >= 3 and session.inbound_pauses > 0, 5, "the reader to pause"
        )
        assert len(seen) == 3
        assert session.inbound_in_flight == 3
        assert smsc.flood_stats.answered == {}  # nothing answered before its handler returned
        release.set()
        await smsc.wait_for(lambda: len(smsc.flood_stats.answered) == 200, 10)
        assert smsc.flood_stats.ok == 200
        assert len(seen) == 200 and session.inbound_peak == 3
        assert session.inbound_in_flight == 0
    finally:
        await smsc.stop()


def test_inbound_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="inbound_window"):
        SessionSettings("127.0.0.1", 2775, "bridge", "secret", inbound_window=0)
