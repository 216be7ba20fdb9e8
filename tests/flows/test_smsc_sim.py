"""The SMSC simulator speaks SMPP 3.4 correctly to raw socket clients and survives bad ones."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import struct
from collections.abc import AsyncIterator

import pytest

from bridge.smpp import errors
from bridge.smpp import pdu as p
from bridge.smpp.encoding import encode_sms
from bridge.smpp.pdu import SubmitSm
from bridge.testing.smsc_sim import Scenario, SmscSimulator, main, precise_loop


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    simulator = SmscSimulator(receipts=False)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seq = 0

    @classmethod
    async def connect(cls, port: int) -> Raw:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def read(self) -> tuple[p.Header, bytes]:
        raw = await asyncio.wait_for(p.frame_reader(self.reader), 5)
        return p.parse_header(raw), raw

    async def bind(self, password: str = "secret", command: int = p.BIND_TRANSCEIVER) -> int:
        self.seq += 1
        await self.send(p.build_bind(command, self.seq, system_id="bridge", password=password))
        header, _ = await self.read()
        assert header.command_id == command | p.RESP_BIT
        assert header.sequence == self.seq
        return header.status

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def submit(text: str, *, concat: str = "udh8", ref: int = 9) -> list[SubmitSm]:
    encoded = encode_sms(text, ref=ref, concat=concat)  # type: ignore[arg-type]
    return [
        SubmitSm(
            source_addr="12025550100",
            source_addr_ton=1,
            source_addr_npi=1,
            destination_addr="12025550143",
            short_message=part.short_message,
            data_coding=encoded.data_coding,
            esm_class=encoded.esm_class,
            sar=part.sar,
        )
        for part in encoded.parts
    ]


async def test_bind_checks_credentials(sim: SmscSimulator) -> None:
    client = await Raw.connect(sim.port)
    try:
        assert await client.bind(password="wrong") == errors.ESME_RINVPASWD
        assert await client.bind() == errors.ESME_ROK
        assert await client.bind() == errors.ESME_RALYBND
        assert (sim.binds, sim.bind_attempts, sim.bound_sessions) == (1, 3, 1)
    finally:
        await client.close()


async def test_protocol_basics_unknown_command_enquire_link_unbind(sim: SmscSimulator) -> None:
    client = await Raw.connect(sim.port)
    try:
        # Submit before bind: wrong bind state (§4.4.1 needs a transmitter/transceiver bind).
        await client.send(p.build_submit_sm(submit("hi")[0], 3))
        header, _ = await client.read()
        assert (header.command_id, header.status, header.sequence) == (
            p.SUBMIT_SM_RESP,
            errors.ESME_RINVBNDSTS,
            3,
        )
        assert await client.bind() == 0
        await client.send(p.build_header_only(0x00000999, 77))
        header, _ = await client.read()
        assert (header.command_id, header.status, header.sequence) == (
            p.GENERIC_NACK,
            errors.ESME_RINVCMDID,
            77,
        )
        await client.send(p.build_header_only(p.ENQUIRE_LINK, 78))
        header, _ = await client.read()
        assert (header.command_id, header.status, header.sequence) == (p.ENQUIRE_LINK_RESP, 0, 78)
        await client.send(p.build_header_only(p.UNBIND, 79))
        header, _ = await client.read()
        assert (header.command_id, header.sequence) == (p.UNBIND_RESP, 79)
        assert await asyncio.wait_for(client.reader.read(), 5) == b""  # SMSC closed
    finally:
        await client.close()


async def test_survives_broken_clients(sim: SmscSimulator) -> None:
    bad = await Raw.connect(sim.port)
    await bad.send(struct.pack(">LLLL", 8, 4, 0, 5))  # command_length below the header size
    header, _ = await bad.read()
    assert (header.command_id, header.status, header.sequence) == (
        p.GENERIC_NACK,
        errors.ESME_RINVCMDLEN,
        5,
    )
    await bad.close()
    garbage = await Raw.connect(sim.port)
    await garbage.send(b"\x00\x00\x00")  # half a header, then hang up
    await garbage.close()
    body = await Raw.connect(sim.port)
    assert await body.bind() == 0
    # A submit_sm whose sm_length runs past the PDU: answered, not fatal.
    bogus = struct.pack(">LLLL", 16 + 25, p.SUBMIT_SM, 0, 9) + b"\x00" * 24 + b"\xff"
    await body.send(bogus)
    header, _ = await body.read()
    assert (header.command_id, header.sequence) == (p.SUBMIT_SM_RESP, 9)
    assert header.status != 0
    await body.close()
    good = await Raw.connect(sim.port)
    try:
        assert await good.bind() == 0
    finally:
        await good.close()


async def test_reassembles_concatenated_messages(sim: SmscSimulator) -> None:
    client = await Raw.connect(sim.port)
    long_gsm = "Your 3 holds are ready at Main Library. Pick up by Friday. " * 4
    spanish = "Su reserva está lista en la Biblioteca Central. ¡Gracias! " * 3
    try:
        assert await client.bind() == 0
        parts = submit(long_gsm, concat="udh16", ref=300)
        parts += submit(spanish, concat="sar", ref=301)
        for i, sm in enumerate(parts, start=10):
            await client.send(p.build_submit_sm(sm, i))
            header, raw = await client.read()
            assert (header.status, header.sequence) == (0, i)
            assert p.parse_resp_id(raw) == str(i - 9)
        messages = await sim.wait_for_messages(2, 5)
    finally:
        await client.close()
    assert messages[0].text == long_gsm
    assert messages[0].segments == len(submit(long_gsm, concat="udh16")) >= 2
    assert messages[0].data_coding == 0
    assert messages[1].text == spanish
    assert messages[1].data_coding == 0x08
    assert messages[1].destination == "+12025550143"
    assert messages[1].source == "+12025550100"
    n0 = messages[0].segments
    assert messages[1].message_ids == tuple(str(i) for i in range(n0 + 1, len(parts) + 1))


async def test_reject_and_throttle_scenarios(sim: SmscSimulator) -> None:
    client = await Raw.connect(sim.port)
    try:
        assert await client.bind() == 0
        sim.set_scenario("reject:0x0B")
        await client.send(p.build_submit_sm(submit("x")[0], 1))
        header, raw = await client.read()
        assert header.status == errors.ESME_RINVDSTADR
        assert len(raw) == 16  # §4.4.2: no body on an error response
        sim.set_scenario("throttle:3")
        statuses = []
        for seq in range(2, 7):
            await client.send(p.build_submit_sm(submit("y")[0], seq))
            header, _ = await client.read()
            statuses.append(header.status)
        assert statuses == [0, 0, 0, errors.ESME_RTHROTTLED, errors.ESME_RTHROTTLED]
        assert sim.messages[-1].text == "y"
        assert len(sim.messages) == 3
    finally:
        await client.close()


async def test_fail_receipts_and_receipt_format() -> None:
    simulator = SmscSimulator(scenario="fail_receipts", receipt_delay_s=0.01)
    await simulator.start()
    client = await Raw.connect(simulator.port)
    try:
        assert await client.bind() == 0
        await client.send(p.build_submit_sm(submit("Overdue notice")[0], 1))
        header, raw = await client.read()
        assert (header.command_id, p.parse_resp_id(raw)) == (p.SUBMIT_SM_RESP, "1")
        header, raw = await client.read()
        assert header.command_id == p.DELIVER_SM
        receipt = p.parse_deliver_sm(raw)
        await client.send(p.build_deliver_sm_resp(header.sequence, 0))
        assert receipt.esm_class == 0x04
        assert receipt.receipted_message_id == "1"
        assert receipt.message_state == 5
        assert receipt.network_error_code == b"\x03\x00\x01"
        assert receipt.source_addr == "12025550143"
        text = receipt.short_message.decode()
        assert text.startswith("id:1 sub:001 dlvrd:000 submit date:")
        assert text.endswith("stat:UNDELIV err:001 text:Overdue notice")
    finally:
        await client.close()
        await simulator.stop()


def test_scenario_parsing() -> None:
    assert Scenario.parse("reject:0x0B") == Scenario("reject", 0x0B)
    assert Scenario.parse("slow:50") == Scenario("slow", 50)
    assert Scenario.parse("generic_nack") == Scenario("generic_nack", None)
    assert str(Scenario.parse("throttle:10")) == "throttle:10"
    for bad in ("nope", "reject", "slow:fast", "ok:1"):
        with pytest.raises(ValueError):
            Scenario.parse(bad)


def test_cli_rejects_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--scenario", "bogus"])
    assert info.value.code == 2
    assert "unknown scenario" in capsys.readouterr().err


async def test_slow_answers_after_the_delay_and_drops_them_on_disconnect(
    sim: SmscSimulator,
) -> None:
    sim.set_scenario("slow:150")
    client = await Raw.connect(sim.port)
    assert await client.bind() == errors.ESME_ROK
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await client.send(p.build_submit_sm(submit("Your hold is ready.")[0], 7))
    header, _ = await client.read()
    assert header.command_id == p.SUBMIT_SM_RESP and header.sequence == 7
    # Never early: the delay runs from the submit's arrival, which is after `sent`.
    assert loop.time() - sent >= 0.15
    assert sim.outstanding == 0

    # An answer still due when the ESME goes away is dropped with its connection (well before
    # the 30 s it was due after).
    sim.set_scenario("slow:30000")
    await client.send(p.build_submit_sm(submit("Your hold is ready.")[0], 8))
    await sim.wait_for(lambda: sim.outstanding == 1, timeout=5)
    await client.close()
    await sim.wait_for(lambda: sim.outstanding == 0, timeout=3)
    assert len(sim.submits) == 2


def test_precise_loop_keeps_sub_millisecond_timers() -> None:
    loop = precise_loop()
    try:
        assert isinstance(loop._selector, selectors.SelectSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()
