"""Fuzzing the ESME side: after a good bind, a hostile SMSC sends arbitrary bytes and mutated
PDUs. The session must answer generic_nack or drop the link and bind again; it never crashes,
and a handler is never called with garbage it could not parse."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.smpp import pdu as p
from bridge.smpp.errors import ESME_ROK
from bridge.smpp.pdu import DeliverSm
from bridge.smpp.session import SessionSettings, SmppSession

GOOD_DELIVER = p.build_deliver_sm(
    7,
    source_addr="12025550143",
    source_addr_ton=1,
    source_addr_npi=1,
    destination_addr="12025550100",
    dest_addr_ton=1,
    dest_addr_npi=1,
    esm_class=0,
    data_coding=0,
    short_message=b"hello",
    sar=None,
)


def mutate(raw: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(raw)
    for pos, val in flips:
        data[pos % len(data)] = val
    return bytes(data)


payloads = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), min_size=1, max_size=6).map(
        lambda flips: mutate(GOOD_DELIVER, flips)
    ),
    # a plausible header with a lying length
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(
        lambda t: struct.pack(">LLLL", t[0], t[1], 0, 9)
    ),
)


# An enquire_link sent right behind the garbage: its resp proves the session read past the
# garbage on a link that still works (SMPP is a stream, §2.3: the probe comes after it).
PROBE_SEQUENCE = 0x7FFFFFF0
# What an ESME may send on a bound transceiver link (SMPP 3.4 §2.3, §4): its requests and its
# answers to ours. Anything else reaching the SMSC would be the session echoing garbage.
FROM_THE_ESME = {
    p.GENERIC_NACK,
    p.DELIVER_SM_RESP,
    p.DATA_SM_RESP,
    p.ENQUIRE_LINK,
    p.ENQUIRE_LINK_RESP,
    p.UNBIND,
    p.UNBIND_RESP,
}


async def scenario(garbage: bytes) -> None:
    binds = 0
    # the probe answered on the fuzzed link, or the session dropped it and bound again
    settled = asyncio.Event()
    replies: list[p.Header] = []  # every PDU the session sent on the fuzzed link

    async def smsc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal binds
        try:
            bind = await p.frame_reader(reader)
            header = p.parse_header(bind)
            writer.write(p.build_bind_resp(p.BIND_TRANSCEIVER_RESP, header.sequence, 0, "smsc"))
            binds += 1
            if binds >= 2:
                settled.set()
                await reader.read()  # behave from now on: just keep the link open
                return
            writer.write(garbage + p.build_header_only(p.ENQUIRE_LINK, PROBE_SEQUENCE))
            await writer.drain()
            # read whatever comes back (generic_nack, deliver_sm_resp, enquire_link)
            while True:
                raw = await asyncio.wait_for(p.frame_reader(reader), 2)
                reply = p.parse_header(raw)
                assert reply.length == len(raw), reply
                replies.append(reply)
                if reply.command_id == p.ENQUIRE_LINK_RESP and reply.sequence == PROBE_SEQUENCE:
                    settled.set()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, p.PduError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(smsc, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen: list[DeliverSm] = []

    async def on_deliver(d: DeliverSm) -> int:
        seen.append(d)
        return ESME_ROK

    session = SmppSession(
        SessionSettings(
            "127.0.0.1",
            port,
            "bridge",
            "secret",
            enquire_link_s=0.3,
            enquire_link_timeout_s=0.3,
            reconnect_min_s=0.01,
            reconnect_max_s=0.05,
        ),
        on_deliver,
    )
    try:
        await session.start()
        # a link fed garbage is either still usable or dropped and bound again: both end
        # with the session bound; the link must then be dropped within the keepalive time if
        # the garbage left it in an unknown state
        await asyncio.wait_for(session.wait_bound(5), 6)
        await asyncio.wait_for(settled.wait(), 10)
        assert session.bound or await session.wait_bound(3)
        for reply in replies:  # the session answers in SMPP, never echoes garbage
            assert reply.command_id in FROM_THE_ESME, p.command_name(reply.command_id)
        # Whatever reached the handler was a deliver_sm with a §3.2 sequence number, and an
        # ESME_ROK deliver_sm_resp answers only such a deliver_sm, by its sequence number.
        handled = {d.sequence for d in seen}
        assert all(1 <= s <= p.MAX_SEQUENCE for s in handled), handled
        acked = {
            r.sequence
            for r in replies
            if r.command_id == p.DELIVER_SM_RESP and r.status == ESME_ROK
        }
        assert acked <= handled, (acked, handled)
    finally:
        await asyncio.wait_for(session.stop(1), 5)
        server.close()
        await server.wait_closed()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(garbage=payloads)
# Found by this test: a deliver_sm numbered 0, outside §3.2's range (with the probe's first
# bytes as its last five), must be refused, not handled.
@example(
    garbage=struct.pack(">LLLL", 60, p.DELIVER_SM, 0, 0)
    + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01\x00\x01\x01\x01\x01\x01\x01\x01"
    + b"\x00\x00\x00\x00\x00\x01"
    + bytes(13)
)
def test_session_survives_hostile_bytes(garbage: bytes) -> None:
    asyncio.run(asyncio.wait_for(scenario(garbage), 20))
