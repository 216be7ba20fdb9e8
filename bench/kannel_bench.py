"""Benchmark 8: the bridge and Kannel side by side, against the same SMSC simulator.

Kannel (Debian's package: bearerbox + smsbox, an `smpp` SMSC group) is the open-source SMS
gateway most operators know; texts go into it through smsbox's `sendsms` HTTP interface. The
bridge is fed through SMTP by the intake benchmark's load generator. Both send to one
simulator child with the same scenario, window (Kannel's `max-pending-submits`) and receipt
setting; rates are timed by the simulator on arrival, CPU is read from /proc for each system's
own processes (bearerbox + smsbox; the bridge's one process) over the measured phase.

"Queued" rows put every text in first while the simulator is not listening (the link is down),
then start it: the rate is the drain of a backlog. "Live" rows start the simulator first and
inject while sending, so intake and sending share the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import procs
from bench.common import BASE, FAKE_NUMBERS, Row, merge, rate_from_times
from bridge.eventloop import uvloop_available

N = 2000
WINDOW = 10
# (simulator scenario, receipts, texts queued before the link comes up)
CASES: tuple[tuple[str, bool, bool], ...] = (
    ("slow:20", True, True),
    ("slow:20", False, True),
    ("slow:20", True, False),
    ("ok", True, True),
    ("ok", False, True),
)
# The bridge runs a second time on uvloop (run.event_loop) in these cases, so both loops'
# ratios are reported against the same Kannel run. Every case: a bridge run takes 5-10 s here,
# so the section grows by about a third. Trim this tuple if the section has to be shorter.
UVLOOP_CASES: tuple[tuple[str, bool, bool], ...] = CASES
# BENCH_KANNEL_CASES="slow:20,receipts,live;ok,noreceipts,queued" runs only these cases (for
# iterating on one of them: the whole section takes ~10 minutes). BENCH_KANNEL_SYSTEMS=bridge
# leaves Kannel out (the rows then have no ratio), BENCH_KANNEL_UVLOOP=0 the uvloop runs.
CASES_ENV = "BENCH_KANNEL_CASES"


def parse_cases(spec: str) -> tuple[tuple[str, bool, bool], ...]:
    """Cases from BENCH_KANNEL_CASES: per case, the scenario then any of receipts/noreceipts
    (default receipts) and queued/live (default queued), comma-separated; cases by ";"."""
    cases = []
    for part in spec.split(";"):
        fields = [f.strip() for f in part.split(",") if f.strip()]
        if not fields:
            continue
        receipts, queued = True, True
        for flag in fields[1:]:
            if flag in ("receipts", "noreceipts"):
                receipts = flag == "receipts"
            elif flag in ("queued", "live"):
                queued = flag == "queued"
            else:
                raise ValueError(f"{CASES_ENV}: unknown flag {flag!r} in {part!r}")
        cases.append((fields[0], receipts, queued))
    return tuple(cases)


DONE_LIMIT_S = 90.0  # one system's phase; a stall is reported, not waited out
INJECT_CONNECTIONS = 4
BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
_TICK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """Kannel cannot run here (not installed and not root to install it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU of these processes (all threads) so far, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _TICK


def _installed() -> bool:
    return os.path.exists(BEARERBOX) and os.path.exists(SMSBOX)


def _log(path: Path) -> Any:
    return open(path, "wb")


async def ensure_kannel() -> None:
    """Install Debian's kannel when missing and we are root; otherwise say why not."""
    if _installed():
        return
    if os.geteuid() != 0:
        raise Unavailable("kannel is not installed and this is not root (apt-get install kannel)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = await asyncio.create_subprocess_exec(
        "apt-get", "install", "-y", "-qq", "kannel",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0 or not _installed():
        raise Unavailable(f"apt-get install kannel failed: {err.decode(errors='replace')[-300:]}")


# --- the simulator ----------------------------------------------------------------------------


@dataclass
class Measured:
    rate: float  # texts per second at the simulator
    cpu_per_text_ms: float
    texts: int  # submits the simulator saw
    done: bool  # every text (and receipt) finished within the limit
    # Live rows: the submit rate while texts were still going in, and how long that took.
    rate_injecting: float | None = None
    inject_s: float | None = None


# --- Kannel ---------------------------------------------------------------------------------


class _DlrSink:
    """The `dlr-url` target: counts receipts smsbox passes on, answers 200 and closes."""

    def __init__(self) -> None:
        self.count = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            async with asyncio.timeout(10):
                await reader.readuntil(b"\r\n\r\n")
            self.count += 1
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _kannel_conf(tmp: Path, ports: dict[str, int], sim_port: int) -> str:
    # Kannel's defaults otherwise: the file store (its default spool writes without fsync),
    # internal DLR storage. TON/NPI international, as the bridge sends them.
    return f"""
group = core
admin-port = {ports["admin"]}
admin-password = bench
smsbox-port = {ports["box"]}
log-file = "{tmp}/bearerbox.log"
log-level = 2
box-allow-ip = "127.0.0.1"
store-type = spool
store-location = "{tmp}/spool"
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {sim_port}
transceiver-mode = true
smsc-username = bridge
smsc-password = secret
system-type = ""
max-pending-submits = {WINDOW}
reconnect-delay = 1
enquire-link-interval = 30
source-addr-ton = 1
source-addr-npi = 1
dest-addr-ton = 1
dest-addr-npi = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {ports["box"]}
sendsms-port = {ports["sendsms"]}
log-file = "{tmp}/smsbox.log"
log-level = 2

group = sendsms-user
username = bench
password = bench
max-messages = 1
"""


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


class _Kannel:
    def __init__(self, tmp: Path, sim_port: int, receipts: bool) -> None:
        self.tmp = tmp
        self.sim_port = sim_port
        self.receipts = receipts
        self.ports = {k: _free_port() for k in ("admin", "box", "sendsms")}
        self.dlr = _DlrSink()
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        await self.dlr.start()
        (self.tmp / "spool").mkdir()
        conf = self.tmp / "kannel.conf"
        conf.write_text(_kannel_conf(self.tmp, self.ports, self.sim_port))
        for exe in (BEARERBOX, SMSBOX):
            out = _log(self.tmp / f"{Path(exe).name}.out")
            self.procs.append(
                await asyncio.create_subprocess_exec(exe, str(conf), stdout=out, stderr=out)
            )
            out.close()
            if exe == BEARERBOX:
                await self._until(lambda s: b"Status: running" in s, "bearerbox running")
        await self._until(lambda s: b"smsbox:(none)" in s or b"smsbox:" in s, "smsbox connected")

    async def status(self) -> bytes:
        _, body = await _http_get(self.ports["admin"], "/status.txt?password=bench")
        return body

    async def _until(self, ok: Callable[[bytes], bool], what: str, limit_s: float = 20) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if ok(await self.status()):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"kannel: no {what} within {limit_s:g} s (see {self.tmp})")

    async def inject(self, n: int) -> None:
        dlr = ""
        if self.receipts:
            url = f"http://127.0.0.1:{self.dlr.port}/dlr?s=%d"
            dlr = "&dlr-mask=3&dlr-url=" + urllib.parse.quote(url, safe="")
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                to = urllib.parse.quote("+" + FAKE_NUMBERS[i % len(FAKE_NUMBERS)])
                text = urllib.parse.quote_plus(_text(i))
                status, body = await _http_get(
                    self.ports["sendsms"],
                    "/cgi-bin/sendsms?username=bench&password=bench&from=12025550100"
                    f"&to={to}&text={text}{dlr}",
                )
                if status not in (200, 202):
                    raise RuntimeError(f"kannel sendsms answered {status}: {body[:100]!r}")

        await asyncio.gather(*(worker() for _ in range(INJECT_CONNECTIONS)))

    async def sent(self) -> int:
        line = next(
            (ln for ln in (await self.status()).splitlines() if ln.startswith(b"SMS: received")),
            b"",
        )
        # "SMS: received 0 (0 queued), sent 2000 (0 queued), store size 0"
        return int(line.split(b"sent ", 1)[1].split()[0]) if b"sent " in line else 0

    async def finished(self, n: int) -> bool:
        if self.receipts:
            return self.dlr.count >= n
        return await self.sent() >= n

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.procs:
            await procs.finish(p, 10.0)
        await self.dlr.stop()


# --- the bridge -------------------------------------------------------------------------------


def _text(i: int) -> str:
    # One GSM-7 segment, different words each time (the bridge suppresses repeated words to
    # the same number; Kannel gets the same texts).
    return f"Item {i} you placed on hold is ready at Main Branch until Friday. Riverside Library"


def bridge_overrides(
    sim_port: int, smtp_port: int, receipts: bool, event_loop: str = "asyncio"
) -> dict[str, Any]:
    """What the bridge's config changes from bench.common.BASE for these runs (also used by
    benchmark 9, bench/stages.py, so its per-stage figures come from the same settings)."""
    tenant = copy.deepcopy(BASE["tenants"][0])
    tenant.update(footer=None, quiet_hours=None)
    over: dict[str, Any] = {
        "smtp": {"listen": f"127.0.0.1:{smtp_port}"},
        "smpp": {
            "port": sim_port,
            "window": WINDOW,
            "max_tps": 100_000,
        },
        "admin": {"listen": None},
        "tenants": [tenant],
    }
    if "registered_delivery" in _smpp_keys():
        over["smpp"]["registered_delivery"] = "all" if receipts else "none"
    # (Before `smpp.registered_delivery` existed every text asked for a receipt; the
    # simulator's --no-receipts keeps the link free of them all the same.)
    if event_loop != "asyncio":
        over["run"] = {"event_loop": event_loop}
    return over


class _Bridge:
    def __init__(
        self, tmp: Path, sim_port: int, receipts: bool, event_loop: str = "asyncio"
    ) -> None:
        self.tmp = tmp
        self.receipts = receipts
        self.smtp_port = _free_port()
        cfg = merge(BASE, bridge_overrides(sim_port, self.smtp_port, receipts, event_loop))
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        err = _log(self.tmp / "bridge.err")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", "-c", str(self.config),
            cwd=procs.REPO, stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        err.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.smtp_port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        tail = (self.tmp / "bridge.err").read_text(errors="replace")[-500:]
        raise RuntimeError(f"the bridge did not listen within 30 s: {tail}")

    async def inject(self, n: int) -> None:
        per = n // INJECT_CONNECTIONS
        # Text i to FAKE_NUMBERS[i % 100] in the same order as Kannel's injection (a shared
        # queue over the connections). In blocks of 500 per connection, all four connections
        # texted one patron at once, and the dispatcher sends one text per number at a time
        # (compliance.NumberLocks): about 5 numbers, not 10, filled the window.
        load = await procs.spawn(
            "bench.smtp_load",
            str(self.smtp_port), str(INJECT_CONNECTIONS), str(per), "0", "interleaved",
        )  # fmt: skip
        try:
            result = await procs.read_json_line(load, 150.0)
        finally:
            await procs.finish(load, 10.0)
        if result["ok"] != per * INJECT_CONNECTIONS:
            raise RuntimeError(f"the bridge refused notices: {result['failed']}")

    def _count(self, states: tuple[str, ...]) -> int:
        db = sqlite3.connect(f"file:{self.tmp / 'bridge.db'}?mode=ro", uri=True, timeout=5)
        try:
            marks = ",".join("?" * len(states))
            row = db.execute(f"SELECT count(*) FROM sms WHERE state IN ({marks})", states)
            return int(row.fetchone()[0])
        finally:
            db.close()

    async def finished(self, n: int) -> bool:
        final = ("delivered", "failed", "expired", "unconfirmed")
        states = final if self.receipts else ("submitted", *final)
        return await asyncio.to_thread(self._count, states) >= n

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]

    async def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            await procs.finish(self.proc, 15.0)


def _smpp_keys() -> set[str]:
    from bridge.config import SmppConfig

    return set(SmppConfig.model_fields)


# --- one case ---------------------------------------------------------------------------------


async def _wait_finished(system: Any, n: int) -> bool:
    deadline = time.monotonic() + DONE_LIMIT_S
    while time.monotonic() < deadline:
        if await system.finished(n):
            return True
        await asyncio.sleep(0.2)
    return False


@contextlib.asynccontextmanager
async def _tmpdir(prefix: str) -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _measure(
    make: Callable[[Path, int, bool], Any], scenario: str, receipts: bool, queued: bool
) -> Measured:
    async with _tmpdir("bench-side-") as tmp:
        sim_port = _free_port()
        system = make(tmp, sim_port, receipts)
        await system.start()
        try:
            if queued:
                await system.inject(N)  # the link is down: everything waits in the system
            cpu0 = _cpu_s(system.pids())
            async with procs.simulator(scenario, receipts=receipts, port=sim_port) as sim:
                injected: tuple[float, float] | None = None
                if not queued:
                    start = time.monotonic()
                    await system.inject(N)
                    injected = (start, time.monotonic())
                done = await _wait_finished(system, N)
                cpu = _cpu_s(system.pids()) - cpu0
        finally:
            await system.stop()
    times = sim.submit_times
    during = None
    if injected is not None and times:
        # Simulator arrival times are CLOCK_MONOTONIC too (same host, see bench 4). From the
        # first submit on: until then the system was binding to the simulator (started with
        # the injection) or waiting for its first text, not sharing the process with intake.
        first = max(injected[0], min(times))
        if first < injected[1]:
            sent = sum(1 for t in times if first <= t <= injected[1])
            during = sent / (injected[1] - first)
    return Measured(
        rate=rate_from_times(times),
        cpu_per_text_ms=1000.0 * cpu / max(1, len(times)),
        texts=len(times),
        done=done,
        rate_injecting=during,
        inject_s=None if injected is None else injected[1] - injected[0],
    )


async def side_by_side() -> list[Row]:
    try:
        if os.environ.get("BENCH_KANNEL_SYSTEMS", "kannel,bridge") != "bridge":
            await ensure_kannel()
    except Unavailable as exc:
        return [
            Row(
                bench="8. Kannel side by side",
                case="skipped",
                value=float("nan"),
                unit="msg/s",
                baseline=None,
                baseline_label="",
                ratio=None,
                aim="(none: informs)",
                meets=None,
                notes=str(exc),
            )
        ]
    rows: list[Row] = []
    uvloop = uvloop_available()
    with_uvloop = os.environ.get("BENCH_KANNEL_UVLOOP", "1") != "0"
    with_kannel = os.environ.get("BENCH_KANNEL_SYSTEMS", "kannel,bridge") != "bridge"
    cases = parse_cases(os.environ[CASES_ENV]) if os.environ.get(CASES_ENV) else CASES
    for scenario, receipts, queued in cases:
        kannel = (
            await _measure(_Kannel, scenario, receipts, queued)
            if with_kannel
            else Measured(rate=float("nan"), cpu_per_text_ms=0.0, texts=0, done=True)
        )
        bridge = await _measure(_Bridge, scenario, receipts, queued)
        case = (
            f"{scenario}, receipts {'on' if receipts else 'off'}, "
            f"{'queued first' if queued else 'injected while sending'}, "
            f"{N} texts, window {WINDOW}"
        )
        rows.append(_row(case, bridge, kannel, "asyncio"))
        if (scenario, receipts, queued) not in UVLOOP_CASES or not with_uvloop:
            continue
        if not uvloop:
            rows.append(_row(case + ", bridge on uvloop", None, kannel, "uvloop"))
            continue
        on_uvloop = await _measure(
            functools.partial(_Bridge, event_loop="uvloop"), scenario, receipts, queued
        )
        rows.append(_row(case + ", bridge on uvloop", on_uvloop, kannel, "uvloop"))
    return rows


def _row(case: str, bridge: Measured | None, kannel: Measured, loop: str) -> Row:
    if bridge is None:
        return Row(
            bench="8. Kannel side by side",
            case=case,
            value=float("nan"),
            unit="msg/s",
            baseline=round(kannel.rate, 1),
            baseline_label="Kannel 1.4.5, same simulator",
            ratio=None,
            aim="ratio >= 1.0",
            meets=None,
            notes="skipped: uvloop is not installed (pip install '.[uvloop]')",
        )
    ratio = bridge.rate / kannel.rate if kannel.rate > 0 else None
    unfinished = [name for name, m in (("Kannel", kannel), ("bridge", bridge)) if not m.done]
    return Row(
        bench="8. Kannel side by side",
        case=case,
        value=round(bridge.rate, 1),
        unit="msg/s",
        baseline=round(kannel.rate, 1),
        baseline_label="Kannel 1.4.5, same simulator",
        ratio=round(ratio, 2) if ratio is not None else None,
        aim="ratio >= 1.0",
        meets=ratio is not None and ratio >= 1.0,
        notes=(
            f"event loop {loop}; CPU per text: bridge {bridge.cpu_per_text_ms:.2f} ms, Kannel "
            f"{kannel.cpu_per_text_ms:.2f} ms (bearerbox + smsbox), ratio "
            f"{bridge.cpu_per_text_ms / kannel.cpu_per_text_ms:.1f}"
            if kannel.cpu_per_text_ms > 0
            else f"event loop {loop}; CPU per text: bridge {bridge.cpu_per_text_ms:.2f} ms"
        )
        + "".join(
            (
                f"; {name} sent {m.rate_injecting:.0f} msg/s while its {N} texts went in"
                f" ({m.inject_s:.1f} s; from its first submit on)"
                if m.rate_injecting is not None
                else f"; {name} took its {N} texts in {m.inject_s:.1f} s, before its first submit"
            )
            for name, m in (("bridge", bridge), ("Kannel", kannel))
            if m.inject_s is not None
        )
        + (f"; not finished in {DONE_LIMIT_S:g} s: {', '.join(unfinished)}" if unfinished else ""),
    )
