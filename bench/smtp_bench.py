"""Benchmarks 3 and 4: SMTP intake through the whole bridge, and 250 → submit latency.

3. Intake throughput: the bridge's SMTP edge (tenant check, RCPT addressing, MIME parsing,
   a durable SQLite commit with synchronous=FULL, then "250") against a bare aiosmtpd server on
   the same kind of loop whose handler only answers 250. The load generator is a separate
   process (bench.smtp_load) with the same raw client for both, so the server side owns its
   process as it would in production; the bridge's SMPP side points at a port that refuses
   connections, so the dispatcher never claims anything and only intake is measured.
4. Latency on an idle bridge: 200 notices one at a time; from the client reading "250" to the
   simulator receiving the submit_sm, and to the store's SUBMITTED commit (dispatcher hook).

Intake in more than one process (issue 18, item 4) was measured with a prototype and not
kept. Setup: benchmark 3's code, plus a second intake-only process (its own SQLite connections in
WAL mode, Intake and SmtpIntake, no dispatcher) that accepts on the bridge's listening socket
(an inherited descriptor), against the same run's bare server; 2 cores, interleaved runs:
- the kernel picks the accepting process (both wait on one socket). Best of 5 at 4 connections:
  1,142 vs 1,042 msg/s for one process (+10 %). At 16: 1,502 vs 1,266 (+19 %). The split
  varied from run to run: the second process got 0-4 of 4 connections and 8-14 of 16.
- connections split evenly (forced). At 4 connections: +6 to +13 %, ratio 0.32 (one process
  0.29). At 16: +21 to +40 %, ratio 0.44-0.51 (one process 0.32-0.37).
Both cores are busy. At 16 connections each message costs 0.83 ms of server CPU in one
process; with two it costs 0.41 + 0.44 ms, plus 0.15 ms for the load generator. About 1 ms of
CPU per message on 2 cores caps the run near 2,000 msg/s: a ratio of about 0.5 against a bare
server at about 3,800 msg/s. At 4 connections every connection waits for its own commit, and
the two processes take SQLite's write lock in turn, each grouping only its own commits. The
CPU per message rises from 0.97 ms to 0.57 + 0.59 ms, so the gain stays near 10 %.
This is under the 25 % the change had to earn at 4 and 16 connections, and far from 0.7 in
any case. On a machine like this one, only less CPU per message raises the ratio.

Measured again once a message cost half the CPU (0.5-0.65 ms in one process at 4 and 16
connections): two whole bridges on one store, each load split evenly by two load generator
processes (half the connections to each bridge, against the same two generators on one
bridge), best of 3 interleaved:
- with the writer's busy_timeout (SQLite's busy handler sleeps 1 ms, then longer): 0.80x at
  4 connections (1,268 against 1,581 msg/s), 1.19x at 16 (2,281 against 1,915).
- retrying BEGIN IMMEDIATE every 0.1 ms instead: 1.07x at 4, 1.01x at 16.
Still no gain worth a second process to run, reload and stop.

Also measured and not kept: reading DATA in bulk instead of aiosmtpd's one `readuntil` per
line (a prototype that found the end marker in the reader's buffer and un-stuffed dots with
one replace, with no size or line-length checks, so an upper bound). Best of 4 interleaved
against the same bridge: 0.99x at 4 connections, 1.13x at 16, 1.04x at 1; too little to own
the most exposed code of the SMTP dialogue, with its limits and its smuggling rules.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from bench import procs
from bench.common import Row, bench_config, percentile, refused_port
from bench.smtp_client import SmtpConnection, message
from bridge.app import Bridge
from bridge.model import SmsRecord
from bridge.store import SqliteStore

# (connections, per connection): enough messages that the bare server's run lasts a good
# fraction of a second, since a shorter one mostly measures the machine's neighbours. With
# 3 repeats of about 0.3 s, two runs of the same code on the same day gave 0.92 and 0.46 at
# 16 connections; with 5 repeats of 0.5-1 s, 0.66 and 0.60.
LEVELS: tuple[tuple[int, int], ...] = ((1, 800), (4, 500), (16, 160))
REPEATS = 5
# Issue 18's aims: a lone client waits for every commit, so its aim is lower.
AIMS: dict[int, float] = {1: 0.6, 4: 0.7, 16: 0.7}


class _Answer250:
    """aiosmtpd handler for the baseline: accept every envelope, keep nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK queued as bare"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_load(port: int, conns: int, per_conn: int, seq_base: int) -> dict[str, Any]:
    """Run the load generator against `port`; the result also carries `server_cpu_s`, the CPU
    this process (the server under test, all its threads) used meanwhile."""
    cpu = _cpu_s()
    proc = await procs.spawn("bench.smtp_load", str(port), str(conns), str(per_conn), str(seq_base))
    try:
        result: dict[str, Any] = await procs.read_json_line(proc, 150.0)
    finally:
        await procs.finish(proc, 10.0)
    result["server_cpu_s"] = _cpu_s() - cpu
    return result


async def _bare(conns: int, per_conn: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    handler = _Answer250()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="sms.example.org",
            data_size_limit=1_048_576,
            decode_data=False,
            enable_SMTPUTF8=True,
            loop=loop,
        ),
        "127.0.0.1",
        0,
    )
    try:
        port = server.sockets[0].getsockname()[1]
        return await _run_load(port, conns, per_conn, 0)
    finally:
        server.close()
        async with asyncio.timeout(5.0):
            await server.wait_closed()


async def _bridge(conns: int, per_conn: int, seq_base: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp, refused_port() as dead:
        cfg = bench_config(
            Path(tmp),
            {
                # Closed SMPP port, long back-off: the session fails once and then waits, so
                # no submit work competes with intake.
                "smpp": {"port": dead, "reconnect_min_s": 60, "reconnect_max_s": 60},
            },
        )
        bridge = Bridge(cfg)
        await bridge.start()
        try:
            result = await _run_load(bridge.smtp_port, conns, per_conn, seq_base)
            counts = await bridge.store.counts()
            result["stored"] = sum(counts.values())
            result["commit_p50_s"] = await _store_commit_p50(bridge)
            return result
        finally:
            await bridge.stop()


async def intake_throughput() -> list[Row]:
    rows: list[Row] = []
    seq_base = 1_000_000  # unique Message-IDs across runs (no dedup hits)
    for conns, per_conn in LEVELS:
        n = conns * per_conn
        # Interleaved repeats, best of each: on a shared machine the slowest run measures the
        # neighbours, the fastest one the code.
        bare_rate = bridge_rate = 0.0
        commit_s: list[float] = []
        bare_cpu: list[float] = []  # server CPU per accepted message, per run
        bridge_cpu: list[float] = []
        client_cpu: list[float] = []  # the load generator's, against the bridge
        failed: dict[str, int] = {}
        for _ in range(REPEATS):
            bare = await _bare(conns, per_conn)
            full = await _bridge(conns, per_conn, seq_base)
            seq_base += n
            bare_rate = max(bare_rate, bare["ok"] / bare["elapsed_s"])
            bridge_rate = max(bridge_rate, full["ok"] / full["elapsed_s"])
            commit_s.append(full["commit_p50_s"])
            bare_cpu.append(bare["server_cpu_s"] / max(1, bare["ok"]))
            bridge_cpu.append(full["server_cpu_s"] / max(1, full["ok"]))
            client_cpu.append(full["client_cpu_s"] / max(1, full["ok"]))
            for code, count in (*bare["failed"].items(), *full["failed"].items()):
                failed[code] = failed.get(code, 0) + count
        ratio = bridge_rate / bare_rate
        ceiling = ""
        if conns == 1:
            # One client waits for each 250, so every message pays one durable commit that
            # the bare server never makes: that alone caps the ratio below 1.
            commit = percentile(commit_s, 50)
            cap = (1 / bare_rate) / (1 / bare_rate + commit)
            ceiling = (
                f"; one durable commit alone (p50 {commit * 1000:.2f} ms) caps the ratio at "
                f"{cap:.2f}, before any parsing"
            )
        rows.append(
            Row(
                bench="3. SMTP intake: bridge vs bare aiosmtpd",
                case=f"{conns} connection(s) x {per_conn} messages",
                value=round(bridge_rate, 1),
                unit="msg/s",
                baseline=round(bare_rate, 1),
                baseline_label="bare aiosmtpd, 250 only",
                ratio=round(ratio, 3),
                aim=f"ratio >= {AIMS[conns]}",
                meets=ratio >= AIMS[conns],
                notes=(
                    f"best of {REPEATS}; last bridge run: {full['ok']}/{n} accepted, "
                    f"{full['stored']} rows committed; server CPU per message (median): "
                    f"bridge {percentile(bridge_cpu, 50) * 1e6:.0f} us, "
                    f"bare {percentile(bare_cpu, 50) * 1e6:.0f} us; "
                    f"load generator {percentile(client_cpu, 50) * 1e6:.0f} us"
                    + ceiling
                    + (f"; failures {failed}" if failed else "")
                ),
            )
        )
    return rows


async def _store_commit_p50(bridge: Bridge, n: int = 50) -> float:
    """Median time of one tiny durable write on this disk (same store, same fsync policy)."""

    def touch(conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (x INTEGER)")
        conn.execute("INSERT INTO bench_probe (x) VALUES (1)")

    store = bridge.store
    assert isinstance(store, SqliteStore)  # the baseline is one SQLite commit
    times = []
    for _ in range(n):
        start = time.monotonic()
        await store.run(touch)
        times.append(time.monotonic() - start)
    return percentile(times, 50)


async def latency(n: int = 200) -> list[Row]:
    """250 → submit on an idle bridge. Receipts are off in the simulator so that nothing but
    the measured notice moves between samples."""
    async with procs.simulator("ok", receipts=False) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            cfg = bench_config(Path(tmp), {"smpp": {"port": sim.port, "max_tps": 1000}})
            bridge = Bridge(cfg)
            await bridge.start()
            submitted: dict[str, float] = {}
            changed = asyncio.Event()

            async def on_submitted(rec: SmsRecord, *rest: Any) -> None:
                # Called right after the SUBMITTED commit; the bridge's own hook (receipts that
                # overtook the commit) still runs, after the timestamp is taken.
                submitted[rec.queue_id] = time.monotonic()
                changed.set()
                if bridge_hook is not None:
                    await bridge_hook(rec, *rest)

            acked: list[tuple[str, float]] = []
            try:
                assert bridge.session is not None and bridge.dispatcher is not None
                if not await bridge.session.wait_bound(timeout=10.0):
                    raise RuntimeError("bridge did not bind to the simulator")
                bridge_hook = bridge.dispatcher.on_submitted
                bridge.dispatcher.on_submitted = on_submitted
                commit_p50 = await _store_commit_p50(bridge)
                conn = await SmtpConnection.open(bridge.smtp_port)
                try:
                    for i in range(n):
                        rcpt, data = message(2_000_000 + i)
                        sent = await conn.send(rcpt, data)
                        queue_id = sent.reply.rsplit(" ", 1)[-1]
                        acked.append((queue_id, sent.at))
                        async with asyncio.timeout(10.0):
                            while queue_id not in submitted:
                                changed.clear()
                                await changed.wait()
                        # Let the dispatcher finish its bookkeeping and go idle again.
                        await asyncio.sleep(0.005)
                finally:
                    await conn.close()
            finally:
                await bridge.stop()
    arrivals = sim.submit_times
    to_sim = [(t_sim - at) * 1000 for (_, at), t_sim in zip(acked, arrivals, strict=False)]
    to_store = [(submitted[q] - at) * 1000 for q, at in acked]
    commit_ms = commit_p50 * 1000
    bench = "4. Latency 250 -> submit (idle bridge)"
    rows: list[Row] = []
    for label, values in (
        ("250 -> submit_sm at simulator", to_sim),
        ("250 -> SUBMITTED committed", to_store),
    ):
        for pct in (50, 99):
            value = percentile(values, pct)
            rows.append(
                Row(
                    bench=bench,
                    case=f"{label}, p{pct} (n={len(values)})",
                    value=round(value, 2),
                    unit="ms",
                    baseline=round(commit_ms, 2),
                    baseline_label="one durable store commit, p50",
                    ratio=round(value / commit_ms, 2) if commit_ms > 0 else None,
                    aim="(none: informs)",
                    meets=None,
                )
            )
    if len(arrivals) != n:
        rows[0] = Row(**{**rows[0].as_dict(), "notes": f"simulator saw {len(arrivals)} submits"})
    return rows
