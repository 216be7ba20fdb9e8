"""Benchmark 6: the PostgreSQL store (issue 9), for one instance and for three sharing a database.

(a) SMTP intake through one whole `Bridge` on SQLite and on PostgreSQL, the same load generator
    as benchmark 3 (bench.smtp_load in its own process) and the same refused SMPP port, so only
    intake (parsing, policy, the durable commit, "250") is measured; ratio PostgreSQL/SQLite.
(b) Drain: a database prefilled with notices, then one or three `python -m bridge run`
    processes on it against one simulator child (receipts on); the simulator times every
    submit_sm. At a high max_tps (300, so the shared budget is not the limit) the ratio is
    three instances / one; at max_tps 30 the busiest one-second window at the simulator shows
    whether the shared rate budget (bridge.ratebudget) kept the total within max_tps.

Every run gets its own throwaway database (CREATE DATABASE, then DROP ... WITH (FORCE), which
also closes whatever a bridge left connected). Without a server at 127.0.0.1:5432 the section
is one "skipped" row and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import yaml

from bench import procs
from bench.common import (
    BASE,
    Row,
    bench_config,
    max_in_window,
    merge,
    overdue_notice,
    rate_from_times,
    refused_port,
)
from bridge.app import Bridge
from bridge.store import PostgresStore

BENCH = "6. PostgreSQL store"
SERVER = "127.0.0.1:5432"
ADMIN_URL = f"postgresql://postgres@{SERVER}/postgres"
_CONNECT_S = 5.0

INTAKE_LEVELS: tuple[tuple[int, int], ...] = ((1, 200), (16, 25))  # (connections, per conn)
INTAKE_REPEATS = 2
INSTANCES = "abc"
# (instances, max_tps, notices prefilled, seconds allowed for the drain after the first submit)
HIGH_TPS = 300.0
LOW_TPS = 30.0
DRAIN_HIGH = 1200
DRAIN_LOW = 180
DRAIN_LIMIT_S = 12.0
START_LIMIT_S = 20.0  # process start + RateBudget settle-in (SETTLE_S, 3 s) + first claim


def _busiest_at(times: list[float], width: float = 1.0) -> float:
    """Where the busiest window [t, t + width) starts, in seconds after the first event: tells
    a join transient (the first seconds) from the steady state."""
    ordered = sorted(times)
    best, at, j = 0, 0.0, 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        if j - i > best:
            best, at = j - i, start - ordered[0]
    return at


def _url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[str]:
    """A fresh database's URL for the block; dropped (connections and all) afterwards."""
    name = "smsbridge_bench_" + secrets.token_hex(6)
    conn = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_S)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _url(name)
    finally:
        conn = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_S)
        try:
            # WITH (FORCE), PostgreSQL 13+: a bridge killed after its deadline may still be
            # connected.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _over(store: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bench config overrides for one instance: its store, no admin listener (three processes
    on one host would fight over its port), and the tenant without the first-contact footer
    (which adds a store lookup per text that benchmark 3's SQLite figure would not have either
    way; both backends run the same config)."""
    tenant = copy.deepcopy(BASE["tenants"][0])
    tenant["footer"] = None
    tenant["quiet_hours"] = None
    return merge(
        {"store": store, "admin": {"listen": None}, "tenants": [tenant]},
        extra or {},
    )


# --- (a) intake ----------------------------------------------------------------------------------


async def _load(port: int, conns: int, per_conn: int, seq_base: int) -> dict[str, Any]:
    proc = await procs.spawn("bench.smtp_load", str(port), str(conns), str(per_conn), str(seq_base))
    try:
        return await procs.read_json_line(proc, 150.0)
    finally:
        await procs.finish(proc, 10.0)


async def _intake_run(store: dict[str, Any], seq_base: int) -> dict[tuple[int, int], float]:
    """One bridge, every level in turn; msg/s per level."""
    out: dict[tuple[int, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pg-intake-") as tmp, refused_port() as dead:
        cfg = bench_config(
            Path(tmp),
            _over(store, {"smpp": {"port": dead, "reconnect_min_s": 60, "reconnect_max_s": 60}}),
        )
        bridge = Bridge(cfg)
        await bridge.start()  # on PostgreSQL this includes the rate budget's 3 s settle-in
        try:
            for conns, per_conn in INTAKE_LEVELS:
                got = await _load(bridge.smtp_port, conns, per_conn, seq_base)
                seq_base += conns * per_conn
                if got["failed"]:
                    raise RuntimeError(f"intake refused messages: {got['failed']}")
                out[(conns, per_conn)] = got["ok"] / got["elapsed_s"]
        finally:
            await bridge.stop()
    return out


async def _intake(url: str) -> list[Row]:
    best: dict[str, dict[tuple[int, int], float]] = {"sqlite": {}, "pg": {}}
    seq_base = 5_000_000  # Message-IDs unique across runs (no duplicate suppression)
    step = sum(c * p for c, p in INTAKE_LEVELS)
    for rep in range(INTAKE_REPEATS):
        # Interleaved and best of each, as in benchmark 3; one database for every PostgreSQL
        # run (unique Message-IDs), a fresh SQLite file for every SQLite run.
        order = ("sqlite", "pg") if rep % 2 == 0 else ("pg", "sqlite")
        for backend in order:
            store = {"path": "bridge.db"} if backend == "sqlite" else {"url": url}
            if backend == "pg":
                store["instance_id"] = "a"
            rates = await _intake_run(store, seq_base)
            seq_base += step
            for level, rate in rates.items():
                best[backend][level] = max(best[backend].get(level, 0.0), rate)
    rows = []
    for level in INTAKE_LEVELS:
        pg, lite = best["pg"][level], best["sqlite"][level]
        rows.append(
            Row(
                bench=BENCH,
                case=f"intake, one instance: {level[0]} connection(s) x {level[1]} messages",
                value=round(pg, 1),
                unit="msg/s",
                baseline=round(lite, 1),
                baseline_label="same bridge on SQLite",
                ratio=round(pg / lite, 3),
                aim="(none: informs)",
                meets=None,
                notes=f"PostgreSQL / SQLite, best of {INTAKE_REPEATS} each",
            )
        )
    return rows


# --- (b) drain -----------------------------------------------------------------------------------


async def _prefill(url: str, n: int) -> None:
    """n notices straight into the shared queue, 500 per transaction (as benchmark 5)."""
    with tempfile.TemporaryDirectory(prefix="bench-pg-fill-") as tmp:
        cfg = bench_config(Path(tmp))
    tenant = cfg.tenants[0]
    source = cfg.source_addr_for(tenant)
    store = PostgresStore(url, instance_id="bench-loader", lease_s=60.0, renew_leases=False)
    await store.open()
    try:
        for first in range(0, n, 500):
            items = [
                overdue_notice(tenant, source, seq, "pg-drain")
                for seq in range(first, min(first + 500, n))
            ]
            # Windows 0: every text is distinct anyway; the prefill is not what is measured.
            await store.enqueue_sms(items, time.time(), 0.0, 0.0)
    finally:
        await store.close()


async def _pending(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=_CONNECT_S)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM sms WHERE state IN ('queued','sending')")
        )
    finally:
        await conn.close()


async def _by_instance(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url, timeout=_CONNECT_S)
    try:
        rows = await conn.fetch(
            "SELECT claimed_by, count(*) FROM sms WHERE state NOT IN ('queued','sending')"
            " GROUP BY claimed_by ORDER BY claimed_by"
        )
    finally:
        await conn.close()
    return {str(r[0]): int(r[1]) for r in rows}


async def _stop(proc: asyncio.subprocess.Process, limit_s: float) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    await procs.finish(proc, limit_s)


def _tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-2000:]
    except OSError:
        return "(no log)"


async def _drain(instances: int, max_tps: float, notices: int) -> dict[str, Any]:
    """Prefill a fresh database, run `instances` bridge processes on it until the queue is
    empty or DRAIN_LIMIT_S after the first submit; the simulator's submit times."""
    async with _database() as url:
        await _prefill(url, notices)
        with tempfile.TemporaryDirectory(prefix="bench-pg-drain-") as tmp:
            async with procs.simulator("ok", receipts=True) as sim:
                children: list[tuple[asyncio.subprocess.Process, Path]] = []
                try:
                    for name in INSTANCES[:instances]:
                        home = Path(tmp) / name
                        home.mkdir()
                        data = merge(
                            BASE,
                            _over(
                                {"url": url, "instance_id": name},
                                # Port 0: each process takes its own SMTP port (nothing sends
                                # mail here; the queue was filled beforehand).
                                {"smpp": {"port": sim.port, "max_tps": max_tps}},
                            ),
                        )
                        cfg_path = home / "bridge.yaml"
                        cfg_path.write_text(yaml.safe_dump(data), encoding="utf-8")
                        log_path = home / "bridge.log"
                        with log_path.open("ab") as log:
                            proc = await asyncio.create_subprocess_exec(
                                sys.executable,
                                "-m",
                                "bridge",
                                "run",
                                "-c",
                                str(cfg_path),
                                cwd=procs.REPO,
                                stdin=asyncio.subprocess.DEVNULL,
                                stdout=log,
                                stderr=log,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            )
                        children.append((proc, log_path))
                    started = time.monotonic()
                    first_submit: float | None = None
                    while True:
                        await asyncio.sleep(0.25)
                        for proc, log_path in children:
                            if proc.returncode is not None:
                                raise RuntimeError(
                                    f"a bridge exited with {proc.returncode}:\n{_tail(log_path)}"
                                )
                        pending = await _pending(url)
                        now = time.monotonic()
                        if first_submit is None and pending < notices:
                            first_submit = now
                        if pending == 0:
                            break
                        if first_submit is None and now - started > START_LIMIT_S:
                            raise RuntimeError(
                                f"no bridge sent within {START_LIMIT_S:g} s:\n"
                                + _tail(children[0][1])
                            )
                        if first_submit is not None and now - first_submit > DRAIN_LIMIT_S:
                            break
                    by_instance = await _by_instance(url)
                finally:
                    await asyncio.gather(*(_stop(p, 20.0) for p, _ in children))
    times = sim.submit_times
    return {
        "submits": len(times),
        "rate": rate_from_times(times),
        "busiest_1s": max_in_window(times, 1.0),
        "busiest_at": _busiest_at(times),
        "span_s": (max(times) - min(times)) if len(times) > 1 else 0.0,
        "pending_left": pending,
        "by_instance": by_instance,
    }


def _drain_notes(run: dict[str, Any], notices: int) -> str:
    left = f"; {run['pending_left']} left after {DRAIN_LIMIT_S:g} s" if run["pending_left"] else ""
    shares = ", ".join(f"{k} {v}" for k, v in run["by_instance"].items())
    return (
        f"{run['submits']} submits of {notices} prefilled in {run['span_s']:.1f} s{left}; "
        f"busiest 1 s: {run['busiest_1s']} (from +{run['busiest_at']:.1f} s); "
        f"sent by instance: {shares}"
    )


async def _drains() -> list[Row]:
    one = await _drain(1, HIGH_TPS, DRAIN_HIGH)
    three = await _drain(3, HIGH_TPS, DRAIN_HIGH)
    low = await _drain(3, LOW_TPS, DRAIN_LOW)
    return [
        Row(
            bench=BENCH,
            case=f"drain, one instance on PostgreSQL, max_tps {HIGH_TPS:g}",
            value=round(one["rate"], 1),
            unit="msg/s",
            baseline=HIGH_TPS,
            baseline_label="max_tps",
            ratio=round(one["rate"] / HIGH_TPS, 3),
            aim="(none: informs)",
            meets=None,
            notes=_drain_notes(one, DRAIN_HIGH),
        ),
        Row(
            bench=BENCH,
            case=f"drain, three instances on one database, max_tps {HIGH_TPS:g} shared",
            value=round(three["rate"], 1),
            unit="msg/s",
            baseline=round(one["rate"], 1),
            baseline_label="one instance, same database setup",
            ratio=round(three["rate"] / one["rate"], 3),
            aim="(none: informs)",
            meets=None,
            notes=_drain_notes(three, DRAIN_HIGH),
        ),
        Row(
            bench=BENCH,
            case=(
                f"three instances, max_tps {LOW_TPS:g} shared: busiest 1-second window "
                "at the simulator"
            ),
            value=float(low["busiest_1s"]),
            unit="submits",
            baseline=LOW_TPS,
            baseline_label="max_tps",
            ratio=round(low["busiest_1s"] / LOW_TPS, 3),
            aim="<= max_tps",
            meets=low["busiest_1s"] <= LOW_TPS,
            notes=f"mean {low['rate']:.1f} msg/s; " + _drain_notes(low, DRAIN_LOW),
        ),
    ]


# --- the section ---------------------------------------------------------------------------------


async def _reachable() -> str | None:
    """None when the server answers; else why not."""
    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def postgres() -> list[Row]:
    why = await _reachable()
    if why is not None:
        return [
            Row(
                bench=BENCH,
                case=f"skipped: no PostgreSQL at {SERVER}",
                value=math.nan,
                unit="",
                baseline=None,
                baseline_label="",
                ratio=None,
                aim="",
                meets=None,
                notes=why,
            )
        ]
    async with _database() as url:
        rows = await _intake(url)
    return rows + await _drains()
