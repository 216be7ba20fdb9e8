"""``python -m bench``: run every benchmark, write bench/results/latest.json and BENCHMARKS.md.

A benchmark that crashes is recorded (in the JSON and the Markdown notes) and the others still
run; the exit status is 0 whatever the numbers say, and 1 only if a benchmark could not run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

from bench import (
    backlog,
    chart,
    flood_bench,
    kannel_bench,
    pg_bench,
    report,
    smpp_bench,
    smtp_bench,
    stages,
)
from bench.common import Row
from bench.procs import REPO

log = logging.getLogger("bench")

BENCHES: tuple[tuple[str, Callable[[], Awaitable[list[Row]]]], ...] = (
    ("1. SMPP throughput vs window/RTT", smpp_bench.window_throughput),
    ("2. Rate accuracy at max_tps", smpp_bench.rate_accuracy),
    ("3. SMTP intake", smtp_bench.intake_throughput),
    ("4. Latency 250 -> submit", smtp_bench.latency),
    ("5. Backlog", backlog.backlog),
    ("6. PostgreSQL", pg_bench.postgres),
    ("7. SMTP latency under a deliver_sm flood", flood_bench.smtp_under_flood),
    ("8. Kannel side by side", kannel_bench.side_by_side),
    ("9. CPU per stage", stages.cpu_per_stage),
)

# `python -m bench 6` or `python -m bench pg` runs one section (see main()).
ALIASES: dict[str, str] = {
    "pg": "6. PostgreSQL",
    "flood": "7. SMTP latency",
    "kannel": "8. Kannel side by side",
    "stages": "9. CPU per stage",
}

# Per-benchmark ceilings: generous (about 3x a normal run) but bounded, so a hang cannot keep
# `make bench` going forever.
LIMITS_S: dict[str, float] = {
    "1. SMPP throughput vs window/RTT": 60.0,
    "2. Rate accuracy at max_tps": 120.0,
    "3. SMTP intake": 150.0,
    "4. Latency 250 -> submit": 90.0,
    "5. Backlog": 240.0,
    "6. PostgreSQL": 150.0,
    "7. SMTP latency under a deliver_sm flood": 90.0,
    # five cases, two systems each, every phase bounded by kannel_bench.DONE_LIMIT_S
    "8. Kannel side by side": 900.0,
    # stages in-process (~5 s), two bridge runs of 1,000 texts each, one profiled drain
    "9. CPU per stage": 180.0,
}

METHOD_NOTES: tuple[str, ...] = (
    "1, 2: an `SmppSession` alone (no store) against `SmscSimulator` in a child process; "
    "receipts off, so the link carries only submit_sm / submit_sm_resp. 40 tasks submit "
    "concurrently; the session's window is the only limit. The bound window/RTT assumes an "
    "exact 20 ms answer. The simulator answers each submit 20 ms after its arrival, on a "
    "select(2) loop (`smsc_sim.precise_loop`): with epoll, CPython rounds every timeout up to "
    "a whole millisecond, which alone cost the window-10 row about 4 % of the bound. The "
    "kernel still wakes a sleeper ~0.2-0.4 ms late on this VM, so the window-1 row gives the "
    "real per-request time and the window-10 note compares against it.",
    "2: rates are timed by the simulator on arrival (its `submits` list), i.e. what a carrier "
    "would count. The first pair of rows runs against scenario `ok`, the third against "
    "`throttle:<max_tps>`, which answers ESME_RTHROTTLED (0x58) to any submit that would make "
    "more than max_tps in the preceding second; each 0x58 halves the session's rate "
    "(THROTTLE_COOLDOWN_S, recovery 30 s), which is why the rate of the throttled run drops.",
    "3: the load generator (`bench/smtp_load.py`, a raw asyncio client: one command, one reply, "
    "no PIPELINING) runs in a separate process for both servers, so each server owns its "
    "process; connections are opened (greeting + EHLO) before the clock starts. The bare "
    "server is aiosmtpd's `SMTP` on `loop.create_server` with a handler that answers 250 to "
    "DATA and keeps nothing. The bridge is a whole `Bridge` with its store in a fresh temp "
    "dir (WAL, synchronous=FULL: the fsync is part of the cost) and `smpp.port` pointing at a "
    "port that refuses connections, so the dispatcher never claims and only intake is "
    "measured. Every notice has its own Message-ID and text (no duplicate suppression hits). "
    "Best of 5 interleaved runs of 0.5-1 s each (shorter runs, best of 3, swung from 0.46 "
    "to 0.92 at 16 connections between two runs of the same code). Aims (issue 18): 0.6 at "
    "1 connection, 0.7 at 4 and 16. The 1-connection row also gives the ceiling that "
    "durability alone puts on the ratio: the client waits for every 250, so each message "
    "pays one commit (median of 50 tiny commits through the same store after the run) on "
    "top of the bare server's time. With more connections group commit shares the fsync "
    "and the bridge is bound by its event loop's thread: MIME parsing, the per-text "
    "policy, the hand-off to the store's writer and aiosmtpd's own per-command cost all run "
    "under one GIL, while the bare server does only the last. "
    "The notes give each server's CPU per accepted message (getrusage of the server's "
    "process, every thread, over the load run) and the load generator's. "
    "The load uses the 100 fictional numbers 202-555-0100..0199, so after the first 100 "
    "notices every RCPT finds its number reading in bridge/addressing.py's cache; a night "
    "of distinct patrons pays the uncached reading instead, which bench 9's admission row "
    "includes (about 35-40 µs CPU more per recipient). "
    "Intake spread over two processes was measured twice and not kept (bench/smtp_bench.py's "
    "docstring): on 2 cores the load generator needs the second core too, and two SQLite "
    "writers each group only their own commits; it cannot help a single connection, where "
    "the commit, the parse and the thread hand-off add up in series.",
    "4: a whole `Bridge` with the simulator (`ok`, receipts off) in a child process; notices "
    "are sent one at a time over one SMTP session and the next one only after the previous "
    "is SUBMITTED in the store (dispatcher's `on_submitted` hook), then 5 ms of quiet. "
    "Times are CLOCK_MONOTONIC, shared by both processes on Linux. The baseline is one tiny "
    "durable write through the same store (median of 50), to show how many commits' worth "
    "the path costs.",
    "5: notices are enqueued by `Store.enqueue_sms` (500 per call, the intake's duplicate "
    "keys and windows) in the parent; the bridge then drains in a child process so its VmHWM "
    "is the bridge's alone; the simulator (`ok`, receipts on, as a carrier sends them) runs "
    "in a third process. The drain rate is timed by the simulator. Fake numbers only: "
    "+1 202-555-0100..0199, i.e. 100 distinct patrons. Enqueueing stops after 60 s (the row "
    "says so when the backlog was scaled down). When this bench was written, the store's "
    "Message-ID duplicate lookup was planned on index sms_sent_to (msisdn, tenant_id) rather "
    "than sms_dedup, so with 100 patrons each insert scans about 1/100 of the table: the "
    "falling per-tenth enqueue rate is that cost, not the fsync.",
    "6: needs the PostgreSQL server at 127.0.0.1:5432 (trust auth, user postgres); every run "
    "creates its own database and drops it WITH (FORCE). Configs as above plus "
    "`admin.listen: null` and the tenant's `footer: null`, on both backends. Intake: "
    "benchmark 3's load generator and refused SMPP port, one in-process `Bridge` per backend "
    "and repeat, interleaved, best of 2; the bridge's start (on PostgreSQL: the rate budget's "
    "3 s settle-in) is outside the clock. Drain: the queue is prefilled (500 per transaction), "
    "then one or three `python -m bridge run` processes (instance_id a, b, c; SMTP on port 0) "
    "drain it against one simulator child (`ok`, receipts on, so receipts are matched "
    "through the shared database too); rates are (n-1)/span of the simulator's arrival "
    "times, which include the instances' staggered joins. With three instances each gets "
    "floor(max_tps/3) (bridge/ratebudget.py). The drain stops 12 s after the first submit. "
    "Everything, PostgreSQL server included, shares the same 2 cores, so three processes on "
    "one host measure contention, not the scale-out of three hosts.",
    "7: a whole `Bridge` (SQLite, defaults, `smpp.inbound_window` 32) against "
    "`bridge.testing.raw_smsc` in a child process, an SMSC that keeps no window: on `flood` it "
    "writes delivery receipts for unknown ids back to back as fast as TCP takes them (each is "
    "held in the store, one commit, before its deliver_sm_resp) and answers submit_sm at once. "
    "One SMTP connection (benchmark 4's raw client) sends notices one at a time: first on the "
    "quiet link, then while the flood runs, stopping when the flood is handled; a transaction "
    "is MAIL to the 250 after DATA. The notices are also submitted to the same SMSC, so the "
    "dispatcher's work is in both runs. "
    "When this section was added, the same run with no cap (every deliver_sm handled as it "
    "was read, as before `inbound_window`) had 4,300+ handlers at once, handled the flood at "
    "about 800/s instead of 1,200-2,200/s, and held one notice 7.6-12 s (p99 ratio ~190).",
    "8: Kannel 1.4.5 from Debian's packages (the bench installs it with apt-get when it runs "
    "as root and says so in the row otherwise): bearerbox with one `smpp` SMSC group "
    "(transceiver, `max-pending-submits` = the bridge's window, TON/NPI 1/1, spool store, "
    "internal DLR storage) and smsbox; texts go in through smsbox's `sendsms` over 4 HTTP/1.0 "
    "connections, with `dlr-mask=3` and a `dlr-url` to a sink in the bench process when "
    "receipts are on. The bridge is `python -m bridge run` (SQLite, WAL, synchronous=FULL) fed "
    "by benchmark 3's SMTP load generator over 4 connections, text i on connection i % 4 (the "
    "order of Kannel's shared queue; in blocks per connection, every connection would text the "
    "same patron at once, and the bridge sends one text per number at a time). Same simulator "
    "child, scenario, 2,000 one-segment texts to 100 fake numbers, window 10. Queued rows put "
    "every text in "
    "while the simulator's port is closed and time the drain once it listens; live rows start "
    "the simulator first (their notes give the send rate while the texts were still going "
    "in, from the first submit on: before it, the system was binding to the simulator that "
    "had just started, or its first text was not in yet). Rates are (n-1)/span of the "
    "simulator's arrival times; CPU per text "
    "is user+system time from /proc of bearerbox+smsbox or the bridge over the measured "
    "phase (after the queueing in queued rows; intake included in live rows), divided by "
    "the submits seen. What differs, so the comparison stays honest: the bridge commits every "
    "notice and every state change to disk before answering (Kannel's spool store writes "
    "without fsync and keeps its queue and DLR table in memory), parses MIME email and applies "
    "compliance per text, and records each receipt in its store, where Kannel passes it on to "
    "an HTTP URL. With 100 numbers, the bridge reads most receipts' patron number from "
    "bridge/addressing.py's cache; a night of distinct patrons pays about 25 µs of CPU more "
    "for each text's first receipt (a text's other receipts and segments find it kept). "
    "A row is a run of each system one after the other on the same 2 cores. "
    'Rows ending "bridge on uvloop" run the same bridge with `run.event_loop: uvloop` '
    "(kannel_bench.UVLOOP_CASES: every case) against the same case's Kannel run, right after "
    "the row of the bridge on asyncio, the default; the section takes about a third longer.",
    "9: CPU per text for each stage alone, in the bench process, with benchmark 8's bridge "
    "settings and a SQLite store in a temp dir: the real code called 1,000 times, "
    "`time.thread_time()` around pure code (best of 3 passes), `time.process_time()` around "
    "store calls (the store's writer and reader threads included); 20 texts go through "
    "every stage first. Texts flow through the stages in order, so each stage gets its "
    "input from the one before (claimed records, encoded parts, recorded SMSC ids, "
    "receipts for them, a patron reply to each). The whole is `python -m bridge run` "
    "(benchmark 8's runner, CPU of the process from /proc, every thread): 1,000 notices by "
    "SMTP over 4 connections while the SMSC is away (intake), then their drain against the "
    "simulator (`ok`, receipts on), on asyncio and on uvloop, interleaved, best of 2 per loop "
    "and phase; a stage's ratio is its share "
    "of its phase's whole on asyncio, and the uvloop rows' ratio is uvloop over asyncio. "
    "What no stage covers is the rest of the whole: aiosmtpd's SMTP dialogue, the SMPP "
    "session's reads, writes and window, the event loop, logging and metrics. Store stages "
    "pay a transaction (and an fsync) each here because they run one at a time; in a drain "
    "the writer thread commits whatever calls are waiting as one group, so the drain's "
    "store rows add up to more than the drain's whole. Receipts are measured as a drain "
    "has them: `smpp.inbound_window` (32) handlers at once, grouped by the Batcher into one "
    "Store.apply_receipts transaction; the `alone` row applies the same receipts one at a "
    "time for comparison and is in no sum. Replies have no whole (no MO load "
    "in this section). Claim and record are measured twice: one text per call, and 10 "
    "texts per call (per text), as a drain claims a window's worth at a time and records "
    "the texts answered within 10 ms of each other; the sums count the grouped rows. The "
    "pyinstrument row profiles a separate drain of "
    "2,000 queued texts (bench/profile_child.py: the bridge in-process, receipts on, "
    "sampling every 1 ms with async_mode disabled, so every task's stack is seen); only the "
    "event loop's thread is sampled (the store's threads are not), time waiting in epoll is "
    "left out of the shares, and the CPU per text of that row includes the profiler's own "
    "overhead. The HTML report is bench/results/profile-drain.html (git-ignored).",
    "All benchmark configs set `quiet_hours: null` so that results do not depend on the time "
    "of day the bench runs.",
)


async def _run_all(
    benches: tuple[tuple[str, Callable[[], Awaitable[list[Row]]]], ...],
) -> tuple[list[Row], dict[str, str]]:
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name, bench in benches:
        log.info("running %s", name)
        start = time.monotonic()
        try:
            async with asyncio.timeout(LIMITS_S[name]):
                got = await bench()
        except Exception as exc:  # loop boundary: one broken benchmark must not hide the rest
            log.exception("%s failed", name)
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        rows.extend(got)
        log.info("%s done in %.1f s", name, time.monotonic() - start)
    return rows, errors


def _select(args: list[str]) -> tuple[tuple[str, Callable[[], Awaitable[list[Row]]]], ...]:
    """Sections named on the command line by number ("6") or alias ("pg"); all without."""
    if not args:
        return BENCHES
    wanted = [ALIASES.get(a.lower(), a.rstrip(".") + ".") for a in args]
    chosen = tuple(b for b in BENCHES if any(b[0].startswith(w) for w in wanted))
    if len(chosen) != len(set(wanted)):
        names = ", ".join(n.split(".")[0] for n, _ in BENCHES)
        raise SystemExit(
            f"usage: python -m bench [SECTION...]  (sections {names}, or pg, flood, kannel, stages)"
        )
    return chosen


def main() -> int:
    benches = _select(sys.argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    # The bridge's own warnings (e.g. the deliberately refused SMPP port of benchmark 3) are
    # expected here; errors still show. aiosmtpd's "mail.log" logs every command (recipient
    # numbers included) at INFO: silenced as the CLI does, and it would cost the measured loop.
    logging.getLogger("bridge").setLevel(logging.ERROR)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    machine = report.Machine.here()
    start = time.monotonic()
    rows, errors = asyncio.run(_run_all(benches))
    elapsed = time.monotonic() - start
    notes = list(METHOD_NOTES)
    notes += [f"{name} could not run: {err}" for name, err in errors.items()]
    if benches == BENCHES:
        png = chart.write(rows, REPO / "bench" / "ratios.png", f"sms-bridge, {machine.date}")
        json_path, md_path = report.write(
            rows, machine, elapsed, notes, errors, REPO, chart=png is not None
        )
        log.info("wrote %s, %s and %s in %.0f s", json_path, md_path, png or "no chart", elapsed)
    else:
        # A partial run must not replace the full table: its JSON goes beside latest.json.
        json_path = report.write_json(rows, machine, elapsed, errors, REPO, "partial.json")
        log.info("wrote %s in %.0f s (BENCHMARKS.md untouched)", json_path, elapsed)
    sys.stdout.write(report.markdown(rows, machine, elapsed, notes) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
