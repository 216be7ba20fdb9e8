"""Benchmark 5: a large backlog (an ILS dumping a day of overdue notices at once).

The parent enqueues the notices straight into the store, in batches of 500 per transaction
with the intake's duplicate keys and windows, then runs the simulator ("ok", receipts on, as a
carrier would send them) while the bridge drains in a child process (bench.backlog_child) for a
bounded time. Memory is read in that child, so the figure is the bridge's alone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.common import Row, bench_config, overdue_notice, rate_from_times
from bridge.store import SqliteStore

TARGET = 100_000
BATCH = 500
ENQUEUE_BUDGET_S = 60.0  # stop enqueueing (and say so) if this machine is slower than that
MAX_TPS = 2000.0
DRAIN_S = 20.0
AIM_RSS_MB = 100.0


async def _enqueue(store_dir: Path) -> tuple[int, float, list[float]]:
    """Returns (enqueued, seconds, msg/s of each successive tenth of the target)."""
    cfg = bench_config(store_dir)
    tenant = cfg.tenants[0]
    source = cfg.source_addr_for(tenant)
    store = SqliteStore(cfg.store.path)
    await store.open()
    done = 0
    start = time.monotonic()
    tenth = TARGET // 10
    tenths: list[float] = []
    tenth_start = start
    try:
        while done < TARGET and time.monotonic() - start < ENQUEUE_BUDGET_S:
            items = [
                overdue_notice(tenant, source, seq, "backlog")
                for seq in range(done, min(done + BATCH, TARGET))
            ]
            await store.enqueue_sms(
                items, time.time(), cfg.smtp.dedup_window_s, tenant.duplicate_window_s
            )
            done += len(items)
            if done % tenth == 0:
                now = time.monotonic()
                tenths.append(tenth / (now - tenth_start))
                tenth_start = now
    finally:
        await store.close()
    return done, time.monotonic() - start, tenths


async def backlog() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        store_dir = Path(tmp)
        enqueued, enqueue_s, tenths = await _enqueue(store_dir)
        async with procs.simulator("ok", receipts=True) as sim:
            proc = await procs.spawn(
                "bench.backlog_child", str(store_dir), str(sim.port), str(MAX_TPS), str(DRAIN_S)
            )
            try:
                report: dict[str, Any] = await procs.read_json_line(proc, DRAIN_S + 90.0)
            finally:
                await procs.finish(proc, 15.0)
    bench = "5. Backlog drain"
    scaled = "" if enqueued == TARGET else f" (scaled down from {TARGET}: enqueue budget)"
    peak_mb = report["peak_rss_kb"] / 1024.0
    base_mb = report["baseline_rss_kb"] / 1024.0
    sim_rate = rate_from_times(sim.submit_times)
    drain_rate = report["drained"] / report["drain_s"] if report["drain_s"] > 0 else 0.0
    return [
        Row(
            bench=bench,
            case=f"enqueue {enqueued} notices, {BATCH} per transaction{scaled}",
            value=round(enqueued / enqueue_s, 0),
            unit="msg/s",
            baseline=None,
            baseline_label="",
            ratio=None,
            aim="(none: informs)",
            meets=None,
            notes=(
                f"{enqueue_s:.1f} s; per tenth of {TARGET}: "
                + ", ".join(f"{r:.0f}" for r in tenths)
                + " msg/s"
            ),
        ),
        Row(
            bench=bench,
            case=f"bridge peak RSS (VmHWM) over a {report['drain_s']:.0f} s drain of that backlog",
            value=round(peak_mb, 1),
            unit="MB",
            baseline=round(base_mb, 1),
            baseline_label="same process after imports",
            ratio=round(peak_mb / base_mb, 2) if base_mb > 0 else None,
            aim=f"< {AIM_RSS_MB:g} MB",
            meets=peak_mb < AIM_RSS_MB,
            notes=f"ru_maxrss {report['ru_maxrss_kb'] / 1024:.1f} MB",
        ),
        Row(
            bench=bench,
            case=f"drain rate at max_tps {MAX_TPS:g} (window 10, receipts on)",
            value=round(sim_rate, 1),
            unit="msg/s",
            baseline=MAX_TPS,
            baseline_label="max_tps",
            ratio=round(sim_rate / MAX_TPS, 3),
            aim="(none: informs)",
            meets=None,
            notes=(
                f"{report['drained']} of {enqueued} drained in {report['drain_s']:.1f} s "
                f"({drain_rate:.0f}/s by store count); {len(sim.submit_times)} submits seen"
            ),
        ),
    ]
