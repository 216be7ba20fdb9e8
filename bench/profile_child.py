"""The bridge in a process of its own, draining a prepared queue under pyinstrument:
``python -m bench.profile_child STORE_DIR SMPP_PORT TEXTS HTML_OUT``.

The queue is filled first (Store.enqueue_sms, 500 per transaction); the bridge then starts on a
port nobody listens on yet and prints ``READY`` once the profiler runs; the parent starts the
simulator there (receipts on). The drain ends when every text is final (its receipt applied)
or after DRAIN_LIMIT_S. Writes the HTML report and prints one JSON line: the drain's time and
CPU, and the functions with the most self time on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyinstrument import Profiler
from pyinstrument.frame import Frame

from bench.common import bench_config, overdue_notice
from bench.kannel_bench import bridge_overrides
from bridge.app import Bridge
from bridge.store import SqliteStore

DRAIN_LIMIT_S = 60.0
_POLL_S = 0.25
# Where the loop's thread waits for I/O (as pyinstrument names the C functions): wall time in
# these is idle time, not CPU.
_IDLE = {"epoll.poll", "poll.poll", "devpoll.poll", "kqueue.control", "select"}


async def _fill(store_dir: Path, sim_port: int, n: int) -> None:
    cfg = bench_config(store_dir, bridge_overrides(sim_port, 0, receipts=True))
    tenant = cfg.tenants[0]
    source = cfg.source_addr_for(tenant)
    store = SqliteStore(cfg.store.path)
    await store.open()
    try:
        for start in range(0, n, 500):
            items = [
                overdue_notice(tenant, source, seq, "profile")
                for seq in range(start, min(start + 500, n))
            ]
            await store.enqueue_sms(
                items, time.time(), cfg.smtp.dedup_window_s, tenant.duplicate_window_s
            )
    finally:
        await store.close()


def _walk(frame: Frame) -> Iterator[Frame]:
    yield frame
    for child in frame.children:
        yield from _walk(child)


def top_self_time(
    root: Frame, count: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float]:
    """The `count` functions and the `count` files with the most self time (summed over every
    call path), the idle time (waiting in epoll/select) and the whole sampled time, in
    seconds."""
    by_function: dict[tuple[str, str, int], float] = {}
    by_file: dict[str, float] = {}
    idle = 0.0
    for frame in _walk(root):
        if frame.is_synthetic:
            continue
        own = frame.total_self_time
        if own <= 0:
            continue
        if frame.function in _IDLE:
            idle += own
            continue
        path = frame.file_path_short or frame.file_path or "?"
        key = (frame.function, path, frame.line_no)
        by_function[key] = by_function.get(key, 0.0) + own
        by_file[path] = by_file.get(path, 0.0) + own
    ranked = sorted(by_function.items(), key=lambda kv: kv[1], reverse=True)[:count]
    top = [
        {"function": f, "file": path, "line": line, "self_s": round(t, 4)}
        for (f, path, line), t in ranked
    ]
    files = [
        {"file": path, "self_s": round(t, 4)}
        for path, t in sorted(by_file.items(), key=lambda kv: kv[1], reverse=True)[:count]
    ]
    return top, files, idle, root.time


async def _drain(store_dir: Path, sim_port: int, n: int) -> tuple[dict[str, Any], str]:
    await _fill(store_dir, sim_port, n)
    cfg = bench_config(store_dir, bridge_overrides(sim_port, 0, receipts=True))
    bridge = Bridge(cfg)
    await bridge.start()
    # The loop's thread only: pyinstrument samples the thread it was started in. The store's
    # writer and reader threads are outside the tree (their CPU is in cpu_s below).
    profiler = Profiler(interval=0.001, async_mode="disabled")
    done = 0
    try:
        profiler.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        deadline = wall0 + DRAIN_LIMIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
            counts = await bridge.store.counts()
            done = sum(counts.get(s, 0) for s in ("delivered", "failed", "expired"))
            if done >= n:
                break
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        session = profiler.stop()
    finally:
        if profiler.is_running:
            profiler.stop()
        await bridge.stop()
    root = session.root_frame()
    top, files, idle, sampled = top_self_time(root, 10) if root is not None else ([], [], 0.0, 0.0)
    report = {
        "texts": n,
        "final": done,
        "wall_s": wall,
        "cpu_s": cpu,
        "sampled_s": sampled,
        "idle_s": idle,
        "top": top,
        "files": files,
    }
    return report, profiler.output_html()


def main() -> None:
    store_dir, port, n, html = sys.argv[1:5]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # "cannot connect" until the parent starts the simulator on the port: expected here.
    logging.getLogger("bridge").setLevel(logging.ERROR)
    report, page = asyncio.run(_drain(Path(store_dir), int(port), int(n)))
    out = Path(html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
