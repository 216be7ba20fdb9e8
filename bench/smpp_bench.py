"""Benchmarks 1 and 2: the SMPP session alone against the simulator (no store, no SMTP).

1. Throughput vs the window/RTT bound. With W submits in flight and an SMSC that answers each
   after RTT, no ESME can exceed W / RTT (SMPP 3.4 §2.9 windowing); a session that reaches ~90 %
   of it loses little to its own bookkeeping.
2. Rate accuracy at max_tps, with the simulator enforcing the same limit ("throttle:<max_tps>",
   a sliding one-second window, ESME_RTHROTTLED 0x58 beyond): the carrier contract a real SMSC
   enforces. Any 0x58 means the limiter let a burst through.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from bench import procs
from bench.common import FAKE_NUMBERS, Row, max_in_window, rate_from_times
from bridge.smpp import errors
from bridge.smpp.encoding import encode_sms
from bridge.smpp.pdu import DeliverSm, SubmitSm
from bridge.smpp.session import SessionSettings, SmppSession

CONCURRENCY = 40  # submitting tasks; more than any window measured, so the window is the limit


@dataclass(frozen=True)
class SubmitRun:
    n: int
    elapsed_s: float
    statuses: dict[int, int]  # command_status -> count
    sim_times: tuple[float, ...]  # monotonic arrival times at the simulator
    max_outstanding: int


async def _ok(_: DeliverSm) -> int:
    return errors.ESME_ROK


def _pdu(i: int) -> SubmitSm:
    part = encode_sms("Your hold is ready at Main Branch.", ref=0, concat="udh8").parts[0]
    return SubmitSm(
        source_addr="12025550100",
        source_addr_ton=1,
        source_addr_npi=1,
        destination_addr="1" + FAKE_NUMBERS[i % len(FAKE_NUMBERS)],
        short_message=part.short_message,
        data_coding=0x00,
        esm_class=0x00,
        registered_delivery=0,  # receipts off: this measures submit_sm / submit_sm_resp only
    )


async def run_submits(
    *, scenario: str, window: int, max_tps: float, n: int, limit_s: float
) -> SubmitRun:
    """Start a simulator (child process) and a session, push ``n`` submits from CONCURRENCY
    tasks, stop both. The simulator runs in its own process so that its work (parsing,
    reassembly, timers) does not compete with the session on the measured event loop."""
    async with procs.simulator(scenario, receipts=False) as sim:
        run = await _drive(sim.port, window=window, max_tps=max_tps, n=n, limit_s=limit_s)
    return SubmitRun(
        n=run.n,
        elapsed_s=run.elapsed_s,
        statuses=run.statuses,
        sim_times=tuple(sim.submit_times),
        max_outstanding=sim.max_outstanding,
    )


async def _drive(port: int, *, window: int, max_tps: float, n: int, limit_s: float) -> SubmitRun:
    settings = SessionSettings(
        host="127.0.0.1",
        port=port,
        system_id="bridge",
        password="secret",
        window=window,
        max_tps=max_tps,
        response_timeout_s=10.0,
        enquire_link_s=60.0,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
    )
    session = SmppSession(settings, _ok, name="bench")
    await session.start()
    statuses: dict[int, int] = {}
    try:
        if not await session.wait_bound(timeout=5.0):
            raise RuntimeError(f"session did not bind: {session.state}")
        pdus = [_pdu(i) for i in range(n)]
        counter = itertools.count()

        async def worker() -> None:
            while (i := next(counter)) < n:
                result = await session.submit(pdus[i], timeout=10.0)
                statuses[result.status] = statuses.get(result.status, 0) + 1

        start = time.monotonic()
        async with asyncio.timeout(limit_s):
            await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, n))))
        elapsed = time.monotonic() - start
    finally:
        await session.stop(drain_timeout_s=2.0)
    return SubmitRun(n=n, elapsed_s=elapsed, statuses=statuses, sim_times=(), max_outstanding=0)


async def window_throughput() -> list[Row]:
    """Window 1 first: its per-request time is the real RTT (simulator timer + two loops),
    the same-run baseline the window-10 row is also compared with."""
    rows: list[Row] = []
    rtt_ms = 20
    measured_rtt_s: float | None = None
    for window, n in ((1, 200), (10, 1000)):
        run = await run_submits(
            scenario=f"slow:{rtt_ms}", window=window, max_tps=100_000, n=n, limit_s=60.0
        )
        throughput = run.n / run.elapsed_s
        bound = window / (rtt_ms / 1000.0)
        ratio = throughput / bound
        ok = run.statuses.get(errors.ESME_ROK, 0)
        notes = f"{ok}/{n} ESME_ROK; simulator saw at most {run.max_outstanding} in flight"
        if measured_rtt_s is None:
            measured_rtt_s = run.elapsed_s / run.n
            notes += f"; real per-request time {measured_rtt_s * 1000:.1f} ms"
        else:
            real_bound = window / measured_rtt_s
            notes += f"; vs window/real RTT ({real_bound:.0f}/s): {throughput / real_bound:.3f}"
        rows.append(
            Row(
                bench="1. SMPP throughput vs window/RTT",
                case=f"window {window}, slow:{rtt_ms} ms, N={n}, {CONCURRENCY} tasks",
                value=round(throughput, 1),
                unit="msg/s",
                baseline=bound,
                baseline_label=f"bound {window}/{rtt_ms / 1000:g} s",
                ratio=round(ratio, 3),
                aim="ratio >= 0.9",
                meets=ratio >= 0.9,
                notes=notes,
            )
        )
    return rows


async def rate_accuracy() -> list[Row]:
    """Two runs per rate: against "ok" (what the limiter alone produces: rate and the densest
    second, timed by the simulator on arrival) and against "throttle:<max_tps>" (whether a
    carrier enforcing exactly max_tps ever answers 0x58)."""
    rows: list[Row] = []
    bench = "2. Rate accuracy at max_tps"
    for max_tps, n in ((50, 300), (10, 60)):
        limit_s = n / max_tps * 3 + 10
        free = await run_submits(scenario="ok", window=10, max_tps=max_tps, n=n, limit_s=limit_s)
        rate = rate_from_times(free.sim_times)
        error_pct = abs(rate - max_tps) / max_tps * 100.0
        peak = max_in_window(free.sim_times, 1.0)
        case = f"max_tps {max_tps}, N={n}"
        rows.append(
            Row(
                bench=bench,
                case=f"{case}, simulator ok: rate (n-1)/span",
                value=round(rate, 2),
                unit="msg/s",
                baseline=float(max_tps),
                baseline_label="max_tps",
                ratio=round(rate / max_tps, 4),
                aim="error within 2 %",
                meets=error_pct <= 2.0,
                notes=f"error {error_pct:.2f} %",
            )
        )
        rows.append(
            Row(
                bench=bench,
                case=f"{case}, simulator ok: most arrivals in any 1 s window",
                value=float(peak),
                unit="msgs",
                baseline=float(max_tps),
                baseline_label="max_tps",
                ratio=round(peak / max_tps, 3),
                aim="<= max_tps",
                meets=peak <= max_tps,
                notes="half-open [t, t+1 s) at the simulator",
            )
        )
        enforced = await run_submits(
            scenario=f"throttle:{max_tps}", window=10, max_tps=max_tps, n=n, limit_s=limit_s
        )
        throttled = enforced.statuses.get(errors.ESME_RTHROTTLED, 0)
        enforced_rate = rate_from_times(enforced.sim_times)
        rows.append(
            Row(
                bench=bench,
                case=f"{case}, simulator throttle:{max_tps}: ESME_RTHROTTLED answers",
                value=float(throttled),
                unit="count",
                baseline=None,
                baseline_label="",
                ratio=None,
                aim="0",
                meets=throttled == 0,
                notes=(
                    f"{enforced.statuses.get(errors.ESME_ROK, 0)}/{n} ESME_ROK; "
                    f"rate {enforced_rate:.1f}/s"
                ),
            )
        )
    return rows
