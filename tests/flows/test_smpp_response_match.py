"""A response answers a request only if its command_id is the request's with bit 31 set
(SMPP 3.4 §3.2), or it is a generic_nack. A hostile SMSC that answers a submit_sm's sequence
number with an enquire_link_resp must not get the text marked submitted without an id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.model import SmsState
from bridge.smpp import errors
from bridge.smpp import pdu as p
from bridge.smpp.session import ResponseTimeout, SubmitResult
from bridge.testing.raw_smsc import RawConn, RawSmsc
from tests.conftest import BASE, merge
from tests.flows.test_smpp_session import Running, running, settings, sms
from tests.smtp_client import notice, send
from tests.waiting import eventually

__all__ = ["running"]  # the fixture, imported for this module's tests


async def wrong_then_right(conn: RawConn, header: p.Header, n: int) -> None:
    """The submit's sequence number first on two responses of other requests, then the real
    submit_sm_resp behind them on the same stream (the reader takes them in that order)."""
    conn.send(
        p.build_header_only(p.ENQUIRE_LINK_RESP, header.sequence),
        p.build_deliver_sm_resp(header.sequence, errors.ESME_ROK),
    )
    conn.send(p.build_submit_sm_resp(header.sequence, errors.ESME_ROK, f"real{n + 1}"))


async def wrong_only_first(conn: RawConn, header: p.Header, n: int) -> None:
    """The first submit gets only an enquire_link_resp; later ones are answered properly."""
    if n == 0:
        conn.send(p.build_header_only(p.ENQUIRE_LINK_RESP, header.sequence))
    else:
        conn.send(p.build_submit_sm_resp(header.sequence, errors.ESME_ROK, f"real{n + 1}"))


@pytest.fixture
async def smsc() -> AsyncIterator[RawSmsc]:
    server = RawSmsc()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_response_of_another_command_is_not_the_answer(
    smsc: RawSmsc, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    smsc.on_submit = wrong_then_right
    session = await running.session(settings(smsc.port))
    assert await session.wait_bound(5)
    with caplog.at_level(logging.WARNING, logger="bridge.smpp.session"):
        result = await asyncio.wait_for(session.submit(sms()), 5)
    assert result == SubmitResult(status=errors.ESME_ROK, message_id="real1")
    assert session.protocol_errors["mismatched_response"] == 2
    seq = smsc.submits[0][1].sequence
    assert f"enquire_link_resp (0x80000015) with seq {seq} does not answer" in caplog.text
    assert "the pending submit_sm" in caplog.text
    assert "deliver_sm_resp (0x80000005)" in caplog.text
    assert session.bound  # a stray response is not a reason to drop the link


async def test_wrong_response_alone_times_out(smsc: RawSmsc, running: Running) -> None:
    smsc.on_submit = wrong_only_first
    session = await running.session(settings(smsc.port, response_timeout_s=0.3))
    assert await session.wait_bound(5)
    # outcome unknown (retry, accept a duplicate), never "accepted without an id"
    with pytest.raises(ResponseTimeout):
        await asyncio.wait_for(session.submit(sms()), 5)
    assert (await asyncio.wait_for(session.submit(sms()), 5)).message_id == "real2"


async def test_text_answered_with_enquire_link_resp_is_retried_and_gets_its_id(
    smsc: RawSmsc, tmp_path: Path
) -> None:
    smsc.on_submit = wrong_only_first
    data = merge(BASE, {"smpp": {"port": smsc.port, "response_timeout_s": 0.5}})
    bridge = Bridge(load_config_text(yaml.safe_dump(data), tmp_path))
    await bridge.start()
    try:
        assert bridge.session is not None and await bridge.session.wait_bound(5)
        conv = await send(
            bridge.smtp_port,
            "ils@riverside.example.org",
            ["2025550143@sms.example.org"],
            notice("Your hold is ready."),
        )
        queue_id = conv.queue_ids[0]
        await smsc.wait_for(lambda: len(smsc.submits) == 2, 10)
        store = bridge.store
        segments = await eventually(
            lambda: store.find_segments(["real2"]), 10, "the second attempt's result committed"
        )
        assert [s.queue_id for s in segments] == [queue_id]
        rec = await bridge.store.get_sms(queue_id)
        assert rec is not None and rec.state is SmsState.SUBMITTED
        assert rec.attempts == 2
        metrics = bridge.metrics.render().decode()
        assert (
            'sms_bridge_smpp_protocol_errors_total{kind="mismatched_response",smsc="smsc"} 1.0'
            in metrics
        )
    finally:
        await asyncio.wait_for(bridge.stop(), 30)
