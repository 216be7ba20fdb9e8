"""SmppSession against the SMSC simulator over real TCP on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.smpp import errors
from bridge.smpp import pdu as p
from bridge.smpp.encoding import encode_sms
from bridge.smpp.pdu import DeliverSm, SubmitSm
from bridge.smpp.session import (
    ConnectionLost,
    NotBound,
    ResponseTimeout,
    SessionSettings,
    SmppSession,
    SubmitResult,
)
from bridge.testing.smsc_sim import SmscSimulator
from tests.waiting import eventually

PATRON = "12025550143"


def sms(text: str = "Your hold is ready", to: str = PATRON) -> SubmitSm:
    encoded = encode_sms(text, ref=1)
    part = encoded.parts[0]
    return SubmitSm(
        source_addr="Library",
        source_addr_ton=5,
        source_addr_npi=0,
        destination_addr=to,
        short_message=part.short_message,
        data_coding=encoded.data_coding,
        esm_class=encoded.esm_class,
    )


def settings(port: int, **overrides: Any) -> SessionSettings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "system_id": "bridge",
        "password": "secret",
        "max_tps": 1000.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "response_timeout_s": 5.0,
        "enquire_link_s": 5.0,
        "enquire_link_timeout_s": 2.0,
        "unbind_timeout_s": 1.0,
    }
    base.update(overrides)
    return SessionSettings(**base)


class Recorder:
    def __init__(self) -> None:
        self.states: list[str] = []
        self.throttled = 0
        self.reconnects = 0

    def on_state(self, state: str) -> None:
        self.states.append(state)

    def on_throttled(self) -> None:
        self.throttled += 1

    def on_reconnect(self) -> None:
        self.reconnects += 1


async def accept_all(message: DeliverSm) -> int:
    return errors.ESME_ROK


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    simulator = SmscSimulator(receipts=False)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


class Running:
    """Starts sessions and always stops them, even when a test fails."""

    def __init__(self) -> None:
        self.sessions: list[SmppSession] = []

    async def session(self, s: SessionSettings, **kwargs: Any) -> SmppSession:
        kwargs.setdefault("on_deliver", accept_all)
        session = SmppSession(s, **kwargs)
        self.sessions.append(session)
        await session.start()
        return session


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        for session in r.sessions:
            await asyncio.wait_for(session.stop(drain_timeout_s=0.5), 10)


async def test_bind_submit_and_response(sim: SmscSimulator, running: Running) -> None:
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    assert session.state == "bound"
    result = await asyncio.wait_for(session.submit(sms("Hello from the library")), 5)
    assert result == SubmitResult(status=0, message_id="1")
    messages = await sim.wait_for_messages(1, 5)
    assert messages[0].text == "Hello from the library"
    assert messages[0].destination == "+12025550143"
    assert messages[0].source == "Library"
    _, received = sim.submits[0]
    assert received.registered_delivery == 1
    assert received.source_addr_ton == 5


async def test_window_caps_outstanding_submits(sim: SmscSimulator, running: Running) -> None:
    sim.set_scenario("slow:50")
    session = await running.session(settings(sim.port, window=10))
    assert await session.wait_bound(5)
    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(session.submit(sms(f"n{i}")) for i in range(40))), 10
    )
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == [0] * 40
    assert sim.max_outstanding == 10
    # 40 submits through a window of 10 at 50 ms per answer: about 4 round trips.
    assert 0.19 <= elapsed < 1.5, elapsed


async def test_rate_limit_holds_in_every_sliding_second(
    sim: SmscSimulator, running: Running
) -> None:
    session = await running.session(settings(sim.port, max_tps=20.0))
    assert await session.wait_bound(5)
    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(session.submit(sms(f"n{i}")) for i in range(60))), 15
    )
    elapsed = time.monotonic() - started
    assert all(r.status == 0 for r in results)
    times = sorted(t for t, _ in sim.submits)
    # The limiter spaces sends 1/max_tps apart with no burst, so a closed one-second window
    # can hold max_tps + 1 sends (both ends): that is the documented +1 tolerance.
    worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert worst <= 21, worst
    assert elapsed >= 59 / 20 - 0.1, elapsed


async def test_throttle_storm_slows_down_and_retries_succeed(
    sim: SmscSimulator, running: Running
) -> None:
    recorder = Recorder()
    session = await running.session(
        settings(sim.port, max_tps=50.0, throttle_recovery_s=10.0), listener=recorder
    )
    assert await session.wait_bound(5)
    sim.set_scenario("throttle_storm:5")

    async def send_until_accepted(i: int) -> tuple[SubmitResult, int]:
        tries = 0
        while True:
            tries += 1
            result = await session.submit(sms(f"n{i}"))
            if errors.classify(result.status) != "throttled":
                return result, tries
            await asyncio.sleep(0.05)  # a client pausing before it retries a throttled submit

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(send_until_accepted(i) for i in range(12))), 20
    )
    assert all(result.status == 0 for result, _ in outcomes)
    assert sum(tries for _, tries in outcomes) == 12 + 5
    assert recorder.throttled >= 1
    assert session.current_tps < 50.0
    assert len(sim.messages) == 12


async def test_no_response_raises_response_timeout(sim: SmscSimulator, running: Running) -> None:
    sim.set_scenario("no_response")
    session = await running.session(settings(sim.port, response_timeout_s=0.3))
    assert await session.wait_bound(5)
    with pytest.raises(ResponseTimeout) as info:
        await asyncio.wait_for(session.submit(sms()), 5)
    assert not isinstance(info.value, ConnectionLost)
    assert session.bound  # a missing submit_sm_resp alone is not a dead link


async def test_dead_link_is_detected_and_session_rebinds(
    sim: SmscSimulator, running: Running
) -> None:
    recorder = Recorder()
    session = await running.session(
        settings(sim.port, enquire_link_s=0.1, enquire_link_timeout_s=0.2), listener=recorder
    )
    assert await session.wait_bound(5)
    sim.set_scenario("blackhole")  # TCP stays up, nothing is answered any more
    await eventually(lambda: not session.bound, 5)
    assert session.last_error == "enquire_link timeout"
    sim.set_scenario("ok")
    await eventually(lambda: sim.binds == 2, 5)
    assert await session.wait_bound(5)
    assert recorder.reconnects == 1
    result = await asyncio.wait_for(session.submit(sms()), 5)
    assert result.status == 0


async def test_smsc_unbind_gets_unbind_resp_and_rebind(
    sim: SmscSimulator, running: Running
) -> None:
    sim.set_scenario("unbind_after:1")
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    assert (await asyncio.wait_for(session.submit(sms()), 5)).status == 0
    await eventually(lambda: any(r.name == "unbind_resp" for r in sim.received), 5)
    await eventually(lambda: sim.binds == 2, 5)
    assert await session.wait_bound(5)
    assert (await asyncio.wait_for(session.submit(sms()), 5)).status == 0


async def test_drop_after_fails_in_flight_with_connection_lost(
    sim: SmscSimulator, running: Running
) -> None:
    sim.set_scenario("drop_after:2")
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    assert (await session.submit(sms("a"))).status == 0
    assert (await session.submit(sms("b"))).status == 0
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(session.submit(sms("c")), 5)
    await eventually(lambda: sim.binds == 2, 5)
    assert (await asyncio.wait_for(session.submit(sms("d")), 5)).status == 0


async def test_refused_bind_reports_reason_retries_and_recovers(
    sim: SmscSimulator, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    sim.set_scenario(f"refuse_bind:{errors.ESME_RINVPASWD:#x}")
    with caplog.at_level(logging.ERROR, logger="bridge.smpp.session"):
        session = await running.session(settings(sim.port))
        # the simulator counts a bind when it arrives; the session's state changes when the
        # bind_resp is read, a moment later: wait for both
        await eventually(
            lambda: sim.bind_attempts >= 2 and session.state.startswith("bind_failed"), 5
        )
    assert not session.bound
    assert session.state.startswith("bind_failed: ESME_RINVPASWD")
    assert "check smpp.system_id and smpp.password" in caplog.text
    sim.set_scenario("ok")
    assert await session.wait_bound(5)
    assert sim.binds == 1


async def test_wrong_password_is_named(sim: SmscSimulator, running: Running) -> None:
    session = await running.session(settings(sim.port, password="nope"))
    await eventually(lambda: session.state.startswith("bind_failed"), 5)
    assert "ESME_RINVPASWD" in session.state
    assert "password" in session.state


async def test_unknown_command_from_smsc_gets_generic_nack(
    sim: SmscSimulator, running: Running
) -> None:
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    assert sim.send_raw(p.build_header_only(0x00000999, 4242)) == 1
    await eventually(lambda: any(r.name == "generic_nack" for r in sim.received), 5)
    nack = next(r for r in sim.received if r.name == "generic_nack")
    assert (nack.status, nack.sequence) == (errors.ESME_RINVCMDID, 4242)
    assert session.bound
    assert (await asyncio.wait_for(session.submit(sms()), 5)).status == 0
    assert sim.binds == 1


async def test_malformed_pdu_from_smsc_nacks_and_reconnects(
    sim: SmscSimulator, running: Running
) -> None:
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    sim.set_scenario("malformed")
    await eventually(lambda: sim.binds == 2, 5)
    nack = next(r for r in sim.received if r.name == "generic_nack")
    assert nack.status == errors.ESME_RINVCMDLEN
    assert (await asyncio.wait_for(session.submit(sms()), 5)).status == 0


async def test_deliver_sm_status_comes_from_handler(sim: SmscSimulator, running: Running) -> None:
    seen: list[DeliverSm] = []
    answer = {"status": errors.ESME_ROK}

    async def handler(message: DeliverSm) -> int:
        seen.append(message)
        if answer["status"] < 0:
            raise RuntimeError("store is down")
        return answer["status"]

    session = await running.session(settings(sim.port), on_deliver=handler)
    assert await session.wait_bound(5)
    ok = await asyncio.wait_for(sim.inject_mo("+12025550143", "Library", "RENEW"), 5)
    assert ok == [0]
    assert seen[0].source_addr == PATRON
    assert seen[0].short_message == b"RENEW"
    answer["status"] = errors.ESME_RX_T_APPN
    assert await asyncio.wait_for(sim.inject_mo("+12025550143", "Library", "x"), 5) == [0x64]
    answer["status"] = -1
    assert await asyncio.wait_for(sim.inject_mo("+12025550143", "Library", "y"), 5) == [0x64]
    answer["status"] = errors.ESME_ROK
    long_text = "Please renew my books " * 10
    assert await asyncio.wait_for(
        sim.inject_mo("+12025550143", "Library", long_text, concat="sar"), 5
    ) == [0, 0]
    assert [m.sar_segment_seqnum for m in seen[-2:]] == [1, 2]
    assert seen[-1].sar_total_segments == 2


async def test_slow_handler_does_not_block_the_reader(sim: SmscSimulator, running: Running) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(message: DeliverSm) -> int:
        entered.set()
        await release.wait()
        return errors.ESME_ROK

    session = await running.session(settings(sim.port), on_deliver=handler)
    assert await session.wait_bound(5)
    mo = asyncio.create_task(sim.inject_mo("+12025550143", "Library", "hi"))
    await asyncio.wait_for(entered.wait(), 5)
    # The handler is parked; the reader still matches this submit's response.
    assert (await asyncio.wait_for(session.submit(sms()), 5)).status == 0
    assert not mo.done()
    assert not any(r.name == "deliver_sm_resp" for r in sim.received)
    release.set()
    assert await asyncio.wait_for(mo, 5) == [0]


async def test_clean_stop_unbinds(sim: SmscSimulator) -> None:
    session = SmppSession(settings(sim.port), accept_all)
    await session.start()
    assert await session.wait_bound(5)
    await asyncio.wait_for(session.stop(), 10)
    assert session.state == "stopped"
    assert [r.name for r in sim.received] == ["bind_transceiver", "unbind"]
    await eventually(lambda: sim.bound_sessions == 0, 5)
    with pytest.raises(NotBound):
        await session.submit(sms(), timeout=0.1)


async def test_stop_drains_outstanding_submits(sim: SmscSimulator) -> None:
    sim.set_scenario("slow:200")
    session = SmppSession(settings(sim.port), accept_all)
    await session.start()
    assert await session.wait_bound(5)
    pending = asyncio.create_task(session.submit(sms()))
    await eventually(lambda: len(sim.submits) == 1, 5)
    await asyncio.wait_for(session.stop(drain_timeout_s=5), 10)
    assert (await pending).status == 0
    names = [r.name for r in sim.received]
    assert names.index("unbind") > names.index("submit_sm")


async def test_not_bound_when_smsc_is_down(running: Running) -> None:
    # A port that was just free: connection refused, the session keeps backing off.
    probe = SmscSimulator()
    await probe.start()
    port = probe.port
    await probe.stop()
    session = await running.session(settings(port))
    with pytest.raises(NotBound):
        await asyncio.wait_for(session.submit(sms(), timeout=0.3), 5)
    await eventually(lambda: session.state == "backoff", 5)
    assert session.last_error is not None and "cannot connect" in session.last_error


async def test_bind_status_error_on_submit_triggers_rebind(
    sim: SmscSimulator, running: Running
) -> None:
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    sim.set_scenario(f"reject:{errors.ESME_RINVBNDSTS}")
    result = await asyncio.wait_for(session.submit(sms()), 5)
    assert result == SubmitResult(status=errors.ESME_RINVBNDSTS, message_id=None)
    await eventually(lambda: sim.binds == 2, 5)


async def test_generic_nack_to_submit_is_a_result(sim: SmscSimulator, running: Running) -> None:
    sim.set_scenario("generic_nack")
    session = await running.session(settings(sim.port))
    assert await session.wait_bound(5)
    result = await asyncio.wait_for(session.submit(sms()), 5)
    assert result == SubmitResult(status=errors.ESME_RINVCMDID, message_id=None)
    assert errors.classify(result.status) == "permanent"


async def test_transmitter_receiver_mode_uses_two_binds() -> None:
    simulator = SmscSimulator(receipt_delay_s=0.01)
    await simulator.start()
    receipts: list[DeliverSm] = []

    async def handler(message: DeliverSm) -> int:
        receipts.append(message)
        return errors.ESME_ROK

    session = SmppSession(settings(simulator.port, bind_mode="transmitter_receiver"), handler)
    try:
        await session.start()
        assert await session.wait_bound(5)
        assert simulator.binds == 2
        assert [r.name for r in simulator.received] == ["bind_transmitter", "bind_receiver"]
        result = await asyncio.wait_for(session.submit(sms()), 5)
        assert result.status == 0
        await eventually(lambda: len(receipts) == 1, 5)
        assert receipts[0].receipted_message_id == result.message_id
        assert receipts[0].esm_class == 0x04
    finally:
        await asyncio.wait_for(session.stop(), 10)
        await simulator.stop()


async def test_hex_id_quirk_resp_hex_receipt_decimal() -> None:
    simulator = SmscSimulator(hex_ids_in_resp=True, first_message_id=255, receipt_delay_s=0.01)
    await simulator.start()
    receipts: list[DeliverSm] = []

    async def handler(message: DeliverSm) -> int:
        receipts.append(message)
        return errors.ESME_ROK

    session = SmppSession(settings(simulator.port), handler)
    try:
        await session.start()
        assert await session.wait_bound(5)
        result = await asyncio.wait_for(session.submit(sms()), 5)
        assert result.message_id == "ff"
        await eventually(lambda: len(receipts) == 1, 5)
        assert receipts[0].receipted_message_id == "255"
        assert receipts[0].short_message.startswith(b"id:255 sub:001 dlvrd:001 ")
        assert b"stat:DELIVRD err:000 text:Your hold is ready" in receipts[0].short_message
    finally:
        await asyncio.wait_for(session.stop(), 10)
        await simulator.stop()
