"""A scripted SMSC for the peers the simulator is too polite to be: one that floods deliver_sm
with no window of its own, or answers a submit_sm with a response of the wrong type.

It binds anyone, answers enquire_link and unbind, and answers each submit_sm through
``on_submit`` (default: submit_sm_resp ESME_ROK with a fresh id). ``flood()`` writes delivery
receipts as fast as TCP takes them, so the only thing pacing it is the ESME: its
deliver_sm_resp answers and, when it stops reading, the closing TCP window (SMPP 3.4 §2.6 leaves
the window to the peers; a hostile or misconfigured SMSC keeps none). Used by the flow tests
and by ``bench`` (in a child process there).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bridge.smpp import errors
from bridge.smpp import pdu as p

log = logging.getLogger(__name__)

# Sequence numbers of flooded deliver_sm start here, apart from the ones the script uses.
FLOOD_SEQ_BASE = 1_000_000


@dataclass
class RawConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    bound: bool = False

    def send(self, *raw: bytes) -> None:
        if not self.writer.is_closing():
            for pdu in raw:
                self.writer.write(pdu)


# Given the connection, the submit_sm header and how many submits came before on any
# connection, answer it (or not) by writing to the connection.
SubmitScript = Callable[[RawConn, p.Header, int], Awaitable[None]]


@dataclass
class FloodStats:
    sent: int = 0
    answered: dict[int, int] = field(default_factory=dict)  # sequence -> command_status
    sent_at: dict[int, float] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return sum(1 for s in self.answered.values() if s == errors.ESME_ROK)


async def answer_ok(conn: RawConn, header: p.Header, n: int) -> None:
    conn.send(p.build_submit_sm_resp(header.sequence, errors.ESME_ROK, f"raw{n + 1}"))


class RawSmsc:
    def __init__(self, *, on_submit: SubmitScript = answer_ok, host: str = "127.0.0.1") -> None:
        self.on_submit = on_submit
        self.host = host
        self.port = 0
        self.conns: list[RawConn] = []
        self.submits: list[tuple[float, p.Header]] = []
        self.received: list[p.Header] = []
        self.flood_stats = FloodStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._flood_seq = itertools.count(FLOOD_SEQ_BASE)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.conns:
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Until ``predicate()`` holds; re-checked on every PDU the ESME sends."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_bound(self, timeout_s: float) -> RawConn:
        await self.wait_for(lambda: any(c.bound for c in self.conns), timeout_s)
        return next(c for c in self.conns if c.bound)

    async def flood(self, n: int, *, patron: str = "12025550143") -> None:
        """Write ``n`` delivery receipts (for ids the ESME never sent) to the bound connection
        back to back; returns once the last is written (not answered)."""
        conn = await self.wait_bound(10.0)
        stats = self.flood_stats
        for _ in range(n):
            seq = next(self._flood_seq)
            smsc_id = f"flood{seq}"
            body = (
                f"id:{smsc_id} sub:001 dlvrd:001 submit date:2601011200 done date:2601011200 "
                "stat:DELIVRD err:000 text:"
            )
            raw = p.build_deliver_sm(
                seq,
                source_addr=patron,
                source_addr_ton=1,
                source_addr_npi=1,
                destination_addr="12025550100",
                dest_addr_ton=1,
                dest_addr_npi=1,
                esm_class=0x04,  # §5.2.12: SMSC delivery receipt
                data_coding=0,
                short_message=body.encode("ascii"),
                receipted_message_id=smsc_id,
                message_state=2,  # DELIVERED, §5.2.28
            )
            stats.sent_at[seq] = time.monotonic()
            conn.send(raw)
            stats.sent += 1
            # drain() waits only while the transport's buffer is over its high-water mark,
            # i.e. while the ESME is not reading: the TCP window is what paces this loop.
            await conn.writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConn(reader, writer)
        self.conns.append(conn)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                raw = await p.frame_reader(reader)
                header = p.parse_header(raw)
                self.received.append(header)
                self._on_pdu(conn, header)
                self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError, p.PduError):
            pass
        finally:
            conn.bound = False
            writer.close()
            if task is not None:
                self._tasks.discard(task)
            self._changed.set()

    def _on_pdu(self, conn: RawConn, header: p.Header) -> None:
        cid = header.command_id
        if cid in p.BIND_COMMANDS:
            conn.send(p.build_bind_resp(cid | p.RESP_BIT, header.sequence, 0, "rawsmsc"))
            conn.bound = True
        elif cid == p.ENQUIRE_LINK:
            conn.send(p.build_header_only(p.ENQUIRE_LINK_RESP, header.sequence))
        elif cid == p.UNBIND:
            conn.send(p.build_header_only(p.UNBIND_RESP, header.sequence))
            conn.bound = False
            conn.writer.close()
        elif cid == p.SUBMIT_SM:
            n = len(self.submits)
            self.submits.append((time.monotonic(), header))
            task = asyncio.ensure_future(self.on_submit(conn, header, n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif cid in (p.DELIVER_SM_RESP, p.DATA_SM_RESP, p.GENERIC_NACK):
            stats = self.flood_stats
            if header.sequence in stats.sent_at:
                stats.answered[header.sequence] = header.status
                stats.answered_at[header.sequence] = time.monotonic()
        elif not cid & p.RESP_BIT:
            conn.send(p.build_header_only(p.GENERIC_NACK, header.sequence, errors.ESME_RINVCMDID))
