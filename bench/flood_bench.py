"""Benchmark 7: the libraries' SMTP latency while the SMSC floods deliver_sm.

A whole bridge in this process; the SMSC is ``bridge.testing.raw_smsc`` in a child process
(bench.flood_child), which keeps no window: it writes delivery receipts back to back, as fast
as TCP takes them. One SMTP connection sends notices one at a time, first on a quiet link, then
while the flood runs; each transaction (MAIL, RCPT, DATA, "250") is timed. The bridge handles at
most smpp.inbound_window deliver_sm at once and stops reading beyond that, so the flood should
wait in TCP rather than in front of the notices' commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.common import Row, bench_config, percentile
from bench.smtp_client import SmtpConnection, message
from bridge.app import Bridge

BENCH = "7. SMTP latency under a deliver_sm flood"
FLOOD = 10_000
NOTICES = 100


@dataclass
class FloodSmsc:
    port: int
    proc: asyncio.subprocess.Process

    async def flood(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"flood {n}\n".encode())
        await self.proc.stdin.drain()


@contextlib.asynccontextmanager
async def flood_smsc(report: dict[str, Any]) -> AsyncIterator[FloodSmsc]:
    """Run bench.flood_child; its final report is put into ``report`` on exit."""
    proc = await procs.spawn("bench.flood_child")
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(15.0):
            first = (await proc.stdout.readline()).decode().split()
        if len(first) != 2 or first[0] != "PORT":
            raise RuntimeError(f"flood child did not start: {first!r}")
        yield FloodSmsc(int(first[1]), proc)
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        report.update(await procs.read_json_line(proc, 30.0))
    finally:
        if not proc.stdin.is_closing():
            proc.stdin.close()
        await procs.finish(proc, 10.0)


async def _transaction(conn: SmtpConnection, seq: int) -> float:
    rcpt, data = message(seq)
    started = time.monotonic()
    sent = await conn.send(rcpt, data)
    return sent.at - started


async def _until(predicate: Any, limit_s: float) -> None:
    # Polled: the condition spans the bridge's counters, which no single event covers.
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def smtp_under_flood() -> list[Row]:
    child: dict[str, Any] = {}
    async with flood_smsc(child) as smsc:
        with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
            cfg = bench_config(Path(tmp), {"smpp": {"port": smsc.port}})
            bridge = Bridge(cfg)
            await bridge.start()
            try:
                session = bridge.session
                assert session is not None
                if not await session.wait_bound(timeout=10.0):
                    raise RuntimeError("bridge did not bind to the flood SMSC")
                counters = bridge.inbound.counters
                conn = await SmtpConnection.open(bridge.smtp_port)
                try:
                    quiet = [await _transaction(conn, 3_000_000 + i) for i in range(NOTICES)]
                    await smsc.flood(FLOOD)
                    await _until(lambda: counters.receipts > 0, 10.0)
                    started = time.monotonic()
                    flooded: list[float] = []
                    while len(flooded) < NOTICES and counters.receipts < FLOOD:
                        flooded.append(await _transaction(conn, 3_100_000 + len(flooded)))
                    await _until(
                        lambda: counters.receipts >= FLOOD and session.inbound_in_flight == 0,
                        120.0,
                    )
                    flood_s = time.monotonic() - started
                finally:
                    await conn.close()
                peak, window = session.inbound_peak, session.settings.inbound_window
                pauses = session.inbound_pauses
            finally:
                await bridge.stop()
    rows: list[Row] = []
    for pct in (50, 99):
        base, value = percentile(quiet, pct) * 1000, percentile(flooded, pct) * 1000
        rows.append(
            Row(
                bench=BENCH,
                case=(
                    f"SMTP transaction, p{pct}: during a flood of {FLOOD} deliver_sm "
                    f"(n={len(flooded)}) vs quiet link (n={len(quiet)})"
                ),
                value=round(value, 2),
                unit="ms",
                baseline=round(base, 2),
                baseline_label="same bridge, no flood",
                ratio=round(value / base, 2) if base > 0 else None,
                aim="(none: informs)",
                meets=None,
            )
        )
    rows.append(
        Row(
            bench=BENCH,
            case=f"deliver_sm handled during the flood (inbound_window {window})",
            value=round(FLOOD / flood_s, 1),
            unit="msg/s",
            baseline=None,
            baseline_label="",
            ratio=None,
            aim=f"at most {window} in hand",
            meets=peak <= window,
            notes=(
                f"{child.get('ok')}/{child.get('sent')} answered ESME_ROK in {flood_s:.1f} s; "
                f"at most {peak} handled at once; reader paused {pauses} times"
            ),
        )
    )
    return rows
