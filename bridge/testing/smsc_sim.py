"""SMSC simulator: a real SMPP 3.4 server over TCP with named fault scenarios.

Used by the flow tests and by people trying the bridge without a carrier account
(``sms-bridge smsc-sim``). It reassembles concatenated messages and decodes them the way a
handset would, so a test can assert on what the patron actually reads. Showing the text is the
purpose of this tool, so unlike the bridge it logs message bodies at INFO.

Scenarios (``set_scenario`` at runtime; one-shot ones revert to "ok" after firing):

* ``ok``: accept everything.
* ``reject:<status>``: answer every submit_sm with that status (``reject:0x0B``).
* ``throttle:<n>``: accept at most n submits in any sliding second, ESME_RTHROTTLED beyond.
* ``throttle_storm:<k>``: the next k submits get ESME_RTHROTTLED, then normal.
* ``no_response``: read submits, never answer them (enquire_link is still answered).
* ``slow:<ms>``: answer each submit after ms, concurrently (responses are not serialised).
* ``drop_after:<n>``: answer n submits, then close the TCP connection when the next one
  arrives (unanswered). One-shot.
* ``unbind_after:<n>``: after answering the n-th submit, send unbind. One-shot.
* ``generic_nack[:<status>]``: answer submits with generic_nack (default ESME_RINVCMDID).
* ``malformed``: send one PDU with an invalid command_length to every bound session (or to the
  next one that binds). One-shot.
* ``refuse_bind[:<status>]``: answer binds with that status (default ESME_RBINDFAIL).
* ``fail_receipts``: receipts say UNDELIV err:001 (message_state 5) instead of DELIVRD.
* ``no_receipts``: submits are answered OK but no receipt ever comes (a gateway release that
  loses every receipt, or texts dropped upstream after the OK).
* ``blackhole``: read everything, answer nothing (not even enquire_link or bind): a hung SMSC.

Receipts follow the submit_sm's registered_delivery (SMPP 3.4 §5.2.17): 1 every final
outcome, 2 failures only, 0 none. ``fail_numbers`` (destination digits) makes the receipts
of texts to those numbers say UNDELIV while the others are delivered.

Control channel (``sms-bridge simulate``): a connection to the simulator's own SMPP port whose
first line is ``SIMCTL {json}`` asks it to act as a patron's phone: send a reply or STOP from
a number, or fail the next text to a number. It shares the SMPP port because the CLI already
knows that address from the bridge's configuration (no second port to configure, open or
collide), and it cannot be mistaken for SMPP: a PDU starts with its command_length, whose first
octet is 0x00 for any PDU under 16 MiB (SMPP 3.4 §3.2), never an ASCII letter.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import selectors
import signal
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from bridge.smpp import errors
from bridge.smpp import pdu as p
from bridge.smpp.encoding import concat_from_sar, decode_payload, encode_sms, split_udh
from bridge.smpp.pdu import SubmitSm

log = logging.getLogger(__name__)

# SMPP 3.4 §5.2.28 message_state values, keyed by the receipt text's stat word (Appendix B).
_MESSAGE_STATES: Final[dict[str, int]] = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}
_SCENARIOS_WITH_ARG: Final = {
    "reject",
    "throttle",
    "throttle_storm",
    "slow",
    "drop_after",
    "unbind_after",
}
_SCENARIOS_OPTIONAL_ARG: Final = {"generic_nack", "refuse_bind"}
_SCENARIOS_PLAIN: Final = {
    "ok",
    "no_response",
    "malformed",
    "fail_receipts",
    "no_receipts",
    "blackhole",
}
_REQUEST_TIMEOUT_S: Final = 5.0
CONTROL_MAGIC: Final = b"SIMCTL "


@dataclass
class HandsetMessage:
    """What the patron's phone shows. Numbers with TON 1 are given as "+<digits>"."""

    destination: str
    source: str
    text: str
    segments: int
    message_ids: tuple[str, ...]
    data_coding: int


@dataclass(frozen=True)
class Scenario:
    name: str
    arg: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Scenario:
        name, _, raw_arg = spec.strip().partition(":")
        if name in _SCENARIOS_PLAIN and not raw_arg:
            return cls(name)
        if name in _SCENARIOS_WITH_ARG | _SCENARIOS_OPTIONAL_ARG:
            if not raw_arg:
                if name in _SCENARIOS_OPTIONAL_ARG:
                    return cls(name)
                raise ValueError(f"scenario {name!r} needs an argument, e.g. {name}:5")
            try:
                return cls(name, int(raw_arg, 0))
            except ValueError:
                raise ValueError(f"scenario {spec!r}: {raw_arg!r} is not a number") from None
        raise ValueError(f"unknown scenario {spec!r}")

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


@dataclass(frozen=True)
class ReceivedPdu:
    """Header of a PDU the simulator received (tests check e.g. that an unbind arrived)."""

    name: str
    command_id: int
    status: int
    sequence: int


@dataclass
class _Submitted:
    conn: _SimConn
    sm: SubmitSm
    text: str
    submitted_at: float


@dataclass
class _Pending:
    parts: dict[int, tuple[bytes, str, int]] = field(default_factory=dict)


class _SimConn:
    def __init__(
        self, sim: SmscSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.bound_as: str | None = None
        self.system_id = ""
        self.silent = False  # set by "blackhole"
        self._seq = 0
        self._pending: dict[int, asyncio.Future[int]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        # Answers due later ("slow:<ms>"): timer handles rather than a task each, so an
        # answer leaves at arrival + delay with no task start-up in between.
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.timer_ids = itertools.count()

    @property
    def can_receive(self) -> bool:
        return self.bound_as in ("transceiver", "receiver")

    @property
    def can_transmit(self) -> bool:
        return self.bound_as in ("transceiver", "transmitter")

    def cancel_timers(self) -> int:
        """Drop every answer still due; returns how many there were."""
        n = len(self.timers)
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        return n

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, raw: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(raw)

    async def request(self, build_with_seq: bytes) -> int:
        """Send an SMSC-originated request; return the status of the ESME's response."""
        self._seq = p.next_sequence(self._seq)
        seq = self._seq
        raw = build_with_seq[:12] + struct.pack(">L", seq) + build_with_seq[16:]
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            if self.writer.is_closing():
                raise ConnectionError("session closed")
            self.writer.write(raw)
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                return await future
        finally:
            self._pending.pop(seq, None)

    def on_response(self, header: p.Header) -> None:
        future = self._pending.get(header.sequence)
        if future is not None and not future.done():
            future.set_result(header.status)

    def close(self) -> None:
        self.bound_as = None
        self.writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("session closed"))


def _address_as(addr: str, ton: int | None) -> tuple[str, int, int]:
    if ton is None:
        return p.source_address(addr)
    return addr, ton, 0 if ton == 5 else 1


class SmscSimulator:
    def __init__(
        self,
        *,
        system_id: str = "bridge",
        password: str = "secret",
        host: str = "127.0.0.1",
        port: int = 0,
        scenario: str = "ok",
        receipts: bool = True,
        receipt_delay_s: float = 0.05,
        hex_ids_in_resp: bool = False,  # quirk: hex id in submit_sm_resp, decimal in receipt
        response_delay_s: float = 0.0,
        first_message_id: int = 1,
        tls_cert: str | None = None,  # PEM certificate and key: SMPP over TLS, like some carriers
        tls_key: str | None = None,
    ) -> None:
        self.system_id = system_id
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.password = password
        self.host = host
        self.port = port
        self.receipts = receipts
        self.receipt_delay_s = receipt_delay_s
        self.hex_ids_in_resp = hex_ids_in_resp
        self.response_delay_s = response_delay_s
        self.messages: list[HandsetMessage] = []
        self.fail_numbers: set[str] = set()  # receipts for texts to these say UNDELIV
        self.submits: list[tuple[float, SubmitSm]] = []
        self.received: list[ReceivedPdu] = []
        self.binds = 0  # successful binds
        self.bind_attempts = 0
        self.outstanding = 0  # submits received and not (yet) answered
        self.max_outstanding = 0
        self._scenario = Scenario.parse(scenario)
        self._scenario_submits = 0
        self._storm_left = 0
        self._accepted: collections.deque[float] = collections.deque()
        self._next_id = first_message_id
        self._mo_ref = 0
        self._submitted: dict[str, _Submitted] = {}
        self._reassembly: dict[tuple[str, str, int, int, int], _Pending] = {}
        self._conns: set[_SimConn] = set()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._receipt_tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._pending_malformed = False
        self._fail_next: set[str] = set()  # numbers (wire form) whose next text fails
        self._fail_ids: set[str] = set()  # message ids whose receipt says UNDELIV
        self.set_scenario(scenario)

    # -- lifecycle

    async def start(self) -> None:
        context = None
        if self.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls_cert, self.tls_key)
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMSC simulator listening on %s:%d (scenario %s)", self.host, self.port, self)

    async def stop(self) -> None:
        for task in list(self._receipt_tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close()
            self.outstanding -= conn.cancel_timers()
            for task in conn.tasks:
                task.cancel()
        # Closing the transports ends each connection handler by EOF. Cancelling them instead
        # makes asyncio's StreamReaderProtocol (3.11) log a spurious "Exception in callback"
        # for the cancelled handler task, so cancel only what is still running after a grace.
        pending = [*self._conn_tasks, *(t for c in self._conns for t in c.tasks)]
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=2.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    def __str__(self) -> str:
        return str(self._scenario)

    @property
    def scenario(self) -> str:
        return str(self._scenario)

    def set_scenario(self, scenario: str) -> None:
        parsed = Scenario.parse(scenario)
        self._scenario = parsed
        self._scenario_submits = 0
        self._storm_left = (parsed.arg or 0) if parsed.name == "throttle_storm" else 0
        self._accepted.clear()
        for conn in self._conns:
            conn.silent = parsed.name == "blackhole"
        if parsed.name == "malformed":
            bound = [c for c in self._conns if c.bound_as]
            self._pending_malformed = not bound
            for conn in bound:
                self._send_malformed(conn)
            if bound:
                self._scenario = Scenario("ok")

    @property
    def bound_sessions(self) -> int:
        return sum(1 for c in self._conns if c.bound_as)

    # -- test helpers

    async def wait_for_messages(self, n: int, timeout: float) -> list[HandsetMessage]:  # noqa: ASYNC109
        """Wait until at least ``n`` handset messages exist; return all of them."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.messages) >= n)
        except TimeoutError:
            raise TimeoutError(
                f"expected {n} handset messages within {timeout:g} s, got {len(self.messages)}"
            ) from None
        return list(self.messages)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` is true; it is re-checked on every simulator event."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    def send_raw(self, raw: bytes) -> int:
        """Write raw bytes to every bound session (test hook for protocol edge cases)."""
        bound = [c for c in self._conns if c.bound_as]
        for conn in bound:
            conn.send(raw)
        return len(bound)

    async def inject_mo(
        self,
        source: str,
        destination: str,
        text: str,
        *,
        concat: Literal["udh8", "udh16", "sar"] = "udh8",
        data_coding: int | None = None,
        source_ton: int | None = None,
        dest_ton: int | None = None,
    ) -> list[int]:
        """Send a patron's message (split if long) as deliver_sm; return each resp status.

        Addresses get the TON/NPI a carrier would give them (pdu.source_address); with
        ``source_ton`` / ``dest_ton`` the address goes out exactly as given with that TON (NPI
        0 for TON 5, else 1), the way carriers write numbers nationally (TON 2), with unknown
        TON 0, or send an empty or alphanumeric sender."""
        conn = self._receiver()
        src, src_ton, src_npi = _address_as(source, source_ton)
        dst, dst_ton, dst_npi = _address_as(destination, dest_ton)
        self._mo_ref = (self._mo_ref + 1) & 0xFFFF
        chunks: list[tuple[bytes, tuple[int, int, int] | None]]
        if data_coding is None:
            encoded = encode_sms(text, ref=self._mo_ref, concat=concat)
            dc, esm = encoded.data_coding, encoded.esm_class
            chunks = [(part.short_message, part.sar) for part in encoded.parts]
        else:
            dc, esm = data_coding, 0
            chunks = [(_encode_as(data_coding, text), None)]
        statuses: list[int] = []
        for short_message, sar in chunks:
            raw = p.build_deliver_sm(
                0,
                source_addr=src,
                source_addr_ton=src_ton,
                source_addr_npi=src_npi,
                destination_addr=dst,
                dest_addr_ton=dst_ton,
                dest_addr_npi=dst_npi,
                esm_class=esm,
                data_coding=dc,
                short_message=short_message,
                sar=sar,
            )
            statuses.append(await conn.request(raw))
        return statuses

    async def send_receipt(
        self,
        message_id: str,
        stat: str = "DELIVRD",
        err: str = "000",
        *,
        destination: str | None = None,
    ) -> int:
        """Send one delivery receipt (esm_class 0x04, §5.2.12) for ``message_id`` (the
        decimal id); return the deliver_sm_resp status."""
        record = self._submitted.get(message_id)
        conn = self._receiver(record.conn if record else None)
        raw = self._receipt_pdu(message_id, stat, err, record, destination)
        return await conn.request(raw)

    # -- connection handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _SimConn(self, reader, writer)
        conn.silent = self._scenario.name == "blackhole"
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        self._conns.add(conn)
        first = True
        try:
            while True:
                try:
                    if first:
                        first = False
                        raw = await self._first_frame(reader, writer)
                        if not raw:
                            break
                    else:
                        raw = await p.frame_reader(reader)
                except p.FrameError as exc:
                    conn.send(p.build_header_only(p.GENERIC_NACK, exc.header.sequence, exc.status))
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                try:
                    self._on_pdu(conn, raw)
                except Exception:  # loop boundary: a broken client must never crash the server
                    log.exception("simulator: error handling a PDU; answering generic_nack")
                    header = p.parse_header(raw)
                    conn.send(
                        p.build_header_only(p.GENERIC_NACK, header.sequence, errors.ESME_RSYSERR)
                    )
                if conn.writer.is_closing():
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("simulator: connection handler failed")
        finally:
            self._conns.discard(conn)
            conn.close()
            self.outstanding -= conn.cancel_timers()
            for t in conn.tasks:
                t.cancel()
            if task is not None:
                self._conn_tasks.discard(task)
            self._notify()

    async def _first_frame(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        """The first PDU of a connection, or b"" after answering a control line instead."""
        head = await reader.readexactly(p.HEADER_LEN)
        if not head.startswith(CONTROL_MAGIC):
            header = p.parse_header(head)
            if header.length < p.HEADER_LEN or header.length > p.MAX_PDU_LEN:
                raise p.FrameError(f"command_length {header.length} out of range", header)
            return head + await reader.readexactly(header.length - p.HEADER_LEN)
        line = head + await reader.readline()
        try:
            request = json.loads(line[len(CONTROL_MAGIC) :])
            answer = await self.control(request)
        except (ValueError, TypeError, KeyError, ConnectionError, TimeoutError) as exc:
            answer = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return b""

    async def control(self, request: dict[str, object]) -> dict[str, object]:
        """Act as a patron's phone: ``{"cmd": "reply", "number": "+1...", "text": ...}``,
        ``{"cmd": "stop", "number": ...}`` or ``{"cmd": "fail", "number": ...}``. A reply goes
        to the number that texted the patron last (else ``to``), as a phone's reply does."""
        cmd = str(request["cmd"])
        number = str(request["number"]).removeprefix("+")
        if not number.isdigit():
            raise ValueError(f"{request['number']!r} is not an E.164 number")
        if cmd == "fail":
            self._fail_next.add(number)
            return {"ok": True, "detail": "the next text to this number will fail (UNDELIV)"}
        if cmd not in ("reply", "stop"):
            raise ValueError(f"unknown command {cmd!r}: reply, stop or fail")
        text = "STOP" if cmd == "stop" else str(request["text"])
        last = [m.source for m in self.messages if m.destination == f"+{number}"]
        library = last[-1] if last else str(request.get("to") or "")
        if not library:
            raise ValueError("no text was sent to this number yet; give the number to reply to")
        statuses = await self.inject_mo(f"+{number}", library, text)
        failed = [errors.status_name(s) for s in statuses if s != errors.ESME_ROK]
        if failed:
            return {"ok": False, "detail": f"the bridge answered {', '.join(failed)}"}
        return {"ok": True, "detail": f"sent to {library}, the bridge acknowledged it"}

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        # Scheduled, not awaited: callers are synchronous protocol handlers.
        task = asyncio.ensure_future(wake())
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    def _on_pdu(self, conn: _SimConn, raw: bytes) -> None:
        header = p.parse_header(raw)
        cid = header.command_id
        self.received.append(ReceivedPdu(header.name, cid, header.status, header.sequence))
        self._notify()
        if conn.silent:
            return
        if cid & p.RESP_BIT:
            conn.on_response(header)
        elif cid in p.BIND_COMMANDS:
            self._on_bind(conn, header, raw)
        elif cid == p.ENQUIRE_LINK:
            conn.send(p.build_header_only(p.ENQUIRE_LINK_RESP, header.sequence))
        elif cid == p.UNBIND:
            conn.send(p.build_header_only(p.UNBIND_RESP, header.sequence))
            conn.close()
        elif cid == p.SUBMIT_SM:
            if not conn.can_transmit:
                conn.send(
                    p.build_header_only(p.SUBMIT_SM_RESP, header.sequence, errors.ESME_RINVBNDSTS)
                )
                return
            try:
                sm = p.parse_submit_sm(raw)
            except p.PduError as exc:
                conn.send(p.build_header_only(p.SUBMIT_SM_RESP, header.sequence, exc.status))
                return
            self._on_submit(conn, header, sm)
        else:
            # §4.3: unknown or unsupported command: generic_nack ESME_RINVCMDID.
            conn.send(p.build_header_only(p.GENERIC_NACK, header.sequence, errors.ESME_RINVCMDID))

    def _on_bind(self, conn: _SimConn, header: p.Header, raw: bytes) -> None:
        resp_id = header.command_id | p.RESP_BIT
        self.bind_attempts += 1
        if conn.bound_as is not None:
            conn.send(p.build_bind_resp(resp_id, header.sequence, errors.ESME_RALYBND, ""))
            return
        try:
            bind = p.parse_bind(raw)
        except p.PduError as exc:
            conn.send(p.build_bind_resp(resp_id, header.sequence, exc.status, ""))
            return
        if self._scenario.name == "refuse_bind":
            status = self._scenario.arg or errors.ESME_RBINDFAIL
        elif bind.system_id != self.system_id:
            status = errors.ESME_RINVSYSID
        elif bind.password != self.password:
            status = errors.ESME_RINVPASWD
        else:
            status = errors.ESME_ROK
        conn.send(p.build_bind_resp(resp_id, header.sequence, status, "SMSCSIM"))
        if status != errors.ESME_ROK:
            log.info(
                "simulator: refused bind from %r: %s", bind.system_id, errors.status_name(status)
            )
            return
        conn.bound_as = {
            p.BIND_TRANSCEIVER: "transceiver",
            p.BIND_TRANSMITTER: "transmitter",
            p.BIND_RECEIVER: "receiver",
        }[header.command_id]
        conn.system_id = bind.system_id
        self.binds += 1
        log.info("simulator: %s bound as %s", bind.system_id, conn.bound_as)
        if self._pending_malformed:
            self._pending_malformed = False
            self._scenario = Scenario("ok")
            self._send_malformed(conn)

    @staticmethod
    def _send_malformed(conn: _SimConn) -> None:
        # command_length 8 is below the 16-octet header: unframeable by definition (§3.1).
        conn.send(struct.pack(">LLLL", 8, p.DELIVER_SM, 0, 0x7FFF0001))

    def _on_submit(self, conn: _SimConn, header: p.Header, sm: SubmitSm) -> None:
        now = time.monotonic()
        self.submits.append((now, sm))
        self._scenario_submits += 1
        scenario = self._scenario
        if scenario.name == "no_response":
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)
            return
        if scenario.name == "drop_after" and self._scenario_submits > (scenario.arg or 0):
            self._scenario = Scenario("ok")
            log.info("simulator: drop_after: closing the connection")
            conn.close()
            return
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        delay = self.response_delay_s
        status = errors.ESME_ROK
        nack = False
        if scenario.name == "reject":
            status = scenario.arg or errors.ESME_RSYSERR
        elif scenario.name == "generic_nack":
            status = scenario.arg or errors.ESME_RINVCMDID
            nack = True
        elif scenario.name == "throttle":
            while self._accepted and now - self._accepted[0] >= 1.0:
                self._accepted.popleft()
            if len(self._accepted) >= (scenario.arg or 0):
                status = errors.ESME_RTHROTTLED
            else:
                self._accepted.append(now)
        elif scenario.name == "throttle_storm" and self._storm_left > 0:
            self._storm_left -= 1
            status = errors.ESME_RTHROTTLED
        elif scenario.name == "slow":
            delay = max(delay, (scenario.arg or 0) / 1000.0)

        if nack:
            resp = p.build_header_only(p.GENERIC_NACK, header.sequence, status)
        elif status != errors.ESME_ROK:
            resp = p.build_submit_sm_resp(header.sequence, status, None)
        else:
            number = self._next_id
            self._next_id += 1
            message_id = str(number)
            resp_id = format(number, "x") if self.hex_ids_in_resp else message_id
            resp = p.build_submit_sm_resp(header.sequence, status, resp_id)
            if sm.destination_addr in self._fail_next:
                self._fail_ids.add(message_id)
            text = self._record_segment(sm, message_id)
            self._submitted[message_id] = _Submitted(conn, sm, text, time.time())
            if self._wants_receipt(sm, message_id in self._fail_ids):
                task = asyncio.ensure_future(self._auto_receipt(conn, message_id))
                self._receipt_tasks.add(task)
                task.add_done_callback(self._receipt_tasks.discard)
        unbind_now = scenario.name == "unbind_after" and self._scenario_submits == scenario.arg
        if unbind_now:
            self._scenario = Scenario("ok")
        if delay > 0:
            # Due from the arrival (`now`), not from when this PDU got parsed.
            loop = asyncio.get_running_loop()
            when = loop.time() - time.monotonic() + now + delay
            key = next(conn.timer_ids)
            conn.timers[key] = loop.call_at(when, self._answer_due, conn, key, resp, unbind_now)
        else:
            self._answer(conn, resp, unbind_now)

    def _fails(self, sm: SubmitSm) -> bool:
        return self._scenario.name == "fail_receipts" or sm.destination_addr in self.fail_numbers

    def _wants_receipt(self, sm: SubmitSm, failing: bool = False) -> bool:
        """SMPP 3.4 §5.2.17: bits 1-0 of registered_delivery, 1 = on success or failure,
        2 = on failure only."""
        if not self.receipts or self._scenario.name == "no_receipts":
            return False
        asked = sm.registered_delivery & 0x03
        return asked == 1 or (asked == 2 and (failing or self._fails(sm)))

    def _answer(self, conn: _SimConn, resp: bytes, unbind: bool) -> None:
        self.outstanding -= 1
        conn.send(resp)
        if unbind:
            conn.spawn(self._unbind(conn))

    def _answer_due(self, conn: _SimConn, key: int, resp: bytes, unbind: bool) -> None:
        del conn.timers[key]
        self._answer(conn, resp, unbind)

    async def _unbind(self, conn: _SimConn) -> None:
        log.info("simulator: unbind_after: sending unbind")
        with contextlib.suppress(ConnectionError, TimeoutError):
            await conn.request(p.build_header_only(p.UNBIND, 0))
        conn.close()

    # -- handset view

    def _record_segment(self, sm: SubmitSm, message_id: str) -> str:
        """Reassemble what the handset shows; returns this segment's text (for its receipt)."""
        source = _display(sm.source_addr, sm.source_addr_ton)
        destination = _display(sm.destination_addr, 1)
        if sm.message_payload is not None:
            text = decode_payload(sm.data_coding, sm.message_payload)
            self._deliver_to_handset(
                HandsetMessage(destination, source, text, 1, (message_id,), sm.data_coding)
            )
            return text
        info, payload = split_udh(sm.short_message, sm.esm_class)
        if info is None and sm.sar is not None:
            info = concat_from_sar(*sm.sar)
        segment_text = decode_payload(sm.data_coding, payload)
        if info is None or info.total <= 1:
            self._deliver_to_handset(
                HandsetMessage(destination, source, segment_text, 1, (message_id,), sm.data_coding)
            )
            return segment_text
        key = (sm.source_addr, sm.destination_addr, info.ref, info.total, info.ref_bits)
        pending = self._reassembly.setdefault(key, _Pending())
        pending.parts[info.seq] = (payload, message_id, sm.data_coding)
        if len(pending.parts) == info.total and all(
            s in pending.parts for s in range(1, info.total + 1)
        ):
            del self._reassembly[key]
            ordered = [pending.parts[s] for s in range(1, info.total + 1)]
            # Each part is decoded on its own, as a handset does: an escape pair or surrogate
            # pair split across parts shows up as garbage here, as it would on the phone.
            text = "".join(decode_payload(dc, body) for body, _, dc in ordered)
            self._deliver_to_handset(
                HandsetMessage(
                    destination,
                    source,
                    text,
                    info.total,
                    tuple(mid for _, mid, _ in ordered),
                    ordered[0][2],
                )
            )
        return segment_text

    def _deliver_to_handset(self, message: HandsetMessage) -> None:
        self.messages.append(message)
        self._fail_next.discard(message.destination.removeprefix("+"))
        coding = {0x00: "GSM-7", 0x08: "UCS-2"}.get(
            message.data_coding, f"dcs 0x{message.data_coding:02X}"
        )
        plural = "segment" if message.segments == 1 else "segments"
        log.info(
            "SMS to %s (%d %s, %s): %s",
            message.destination,
            message.segments,
            plural,
            coding,
            message.text,
        )
        self._notify()

    # -- receipts

    def _receiver(self, preferred: _SimConn | None = None) -> _SimConn:
        if preferred is not None and preferred.can_receive and preferred in self._conns:
            return preferred
        for conn in self._conns:
            if conn.can_receive and not conn.silent:
                return conn
        raise ConnectionError("no session is bound as receiver or transceiver")

    def _receipt_pdu(
        self,
        message_id: str,
        stat: str,
        err: str,
        record: _Submitted | None,
        destination: str | None,
    ) -> bytes:
        stamp = time.strftime("%y%m%d%H%M", time.gmtime())
        submit_stamp = (
            time.strftime("%y%m%d%H%M", time.gmtime(record.submitted_at)) if record else stamp
        )
        excerpt = (record.text if record else "")[:20]
        delivered = "001" if stat == "DELIVRD" else "000"
        # SMPP 3.4 Appendix B receipt format.
        body = (
            f"id:{message_id} sub:001 dlvrd:{delivered} submit date:{submit_stamp} "
            f"done date:{stamp} stat:{stat} err:{err} text:{excerpt}"
        )
        if record is not None:
            patron = record.sm.destination_addr
            library, lib_ton, lib_npi = (
                record.sm.source_addr,
                record.sm.source_addr_ton,
                record.sm.source_addr_npi,
            )
        else:
            patron = (destination or "").removeprefix("+")
            library, lib_ton, lib_npi = "", 0, 0
        if destination is not None:
            patron = destination.removeprefix("+")
        failed = stat not in ("DELIVRD", "ENROUTE", "ACCEPTD")
        return p.build_deliver_sm(
            0,
            source_addr=patron,
            source_addr_ton=1,
            source_addr_npi=1,
            destination_addr=library,
            dest_addr_ton=lib_ton,
            dest_addr_npi=lib_npi,
            esm_class=0x04,  # §5.2.12: SMSC delivery receipt
            data_coding=0x00,
            short_message=body.encode("ascii", errors="replace")[: p.SHORT_MESSAGE_MAX],
            receipted_message_id=message_id,
            message_state=_MESSAGE_STATES.get(stat, 7),
            # GSM network (type 3), error 1, so receipt parsers see a network_error_code too.
            network_error_code=b"\x03\x00\x01" if failed else None,
        )

    async def _auto_receipt(self, conn: _SimConn, message_id: str) -> None:
        """Deliver a receipt like an SMSC's store-and-forward: to the submitting session, else
        any bound receiver; when none is bound or the ESME answers an error (e.g. 0x64), try
        again later (bounded: about 20 s)."""
        await asyncio.sleep(self.receipt_delay_s)
        record = self._submitted.get(message_id)
        fail = (
            self._scenario.name == "fail_receipts"
            or message_id in self._fail_ids
            or (record is not None and self._fails(record.sm))
        )
        self._fail_ids.discard(message_id)
        stat, err = ("UNDELIV", "001") if fail else ("DELIVRD", "000")
        for attempt in range(50):
            try:
                target = self._receiver(conn)
                raw = self._receipt_pdu(message_id, stat, err, record, None)
                status = await target.request(raw)
            except (ConnectionError, TimeoutError) as exc:
                log.info("simulator: receipt for %s not delivered yet: %s", message_id, exc)
            else:
                if status == errors.ESME_ROK:
                    return
                log.info(
                    "simulator: receipt for %s answered %s", message_id, errors.status_name(status)
                )
            await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
        log.warning("simulator: receipt for %s given up", message_id)


def _display(address: str, ton: int) -> str:
    return f"+{address}" if ton == 1 and address.isdigit() else address


def _encode_as(data_coding: int, text: str) -> bytes:
    """Encode an MO text in an explicitly requested data_coding (§5.2.19)."""
    if data_coding == 0x08:
        return text.encode("utf-16-be")
    if data_coding == 0x03:
        return text.encode("latin-1", errors="replace")
    if data_coding == 0x01:
        return text.encode("ascii", errors="replace")
    return text.encode("gsm03.38", errors="replace")


# ----------------------------------------------------------------------------- command line


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:2775")
    return host or "127.0.0.1", int(port)


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire when due: select(2) takes its timeout in microseconds,
    while epoll_wait(2) takes whole milliseconds (CPython's selectors rounds up), so with epoll
    answers due within one millisecond leave together and up to 1 ms late, and "slow:20"
    would model a slower SMSC than it says. A simulator has a handful of sockets, far below
    select's FD_SETSIZE."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def main(argv: list[str] | None = None) -> int:
    """``sms-bridge smsc-sim --listen 127.0.0.1:2775 --system-id bridge --password secret``"""
    parser = argparse.ArgumentParser(
        prog="sms-bridge smsc-sim", description="Run the SMPP 3.4 SMSC simulator."
    )
    parser.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 2775))
    parser.add_argument("--system-id", default="bridge")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--scenario", default="ok", help="ok, reject:0x0B, throttle:10, ...")
    parser.add_argument("--no-receipts", action="store_true")
    parser.add_argument("--receipt-delay", type=float, default=0.05, metavar="SECONDS")
    parser.add_argument("--hex-ids", action="store_true", help="hex ids in submit_sm_resp")
    args = parser.parse_args(argv)
    try:
        Scenario.parse(args.scenario)
    except ValueError as exc:
        parser.error(str(exc))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.listen
    sim = SmscSimulator(
        system_id=args.system_id,
        password=args.password,
        host=host,
        port=port,
        scenario=args.scenario,
        receipts=not args.no_receipts,
        receipt_delay_s=args.receipt_delay,
        hex_ids_in_resp=args.hex_ids,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await sim.start()
        try:
            await stop.wait()
        finally:
            await sim.stop()

    with asyncio.Runner(loop_factory=precise_loop) as runner:
        runner.run(run())
    return 0
