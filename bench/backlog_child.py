"""The bridge alone in a process, draining a prepared backlog, so that the peak RSS measured is
the bridge's (the simulator and the enqueue run in the parent):
``python -m bench.backlog_child STORE_DIR SMPP_PORT MAX_TPS DRAIN_SECONDS``.

Prints one JSON line: resident memory after imports (baseline) and at its peak (VmHWM), and how
far the drain got.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import bench_config
from bridge.app import Bridge

# counts() scans the whole table on the store's one writer thread: poll rarely.
_POLL_S = 2.0


def _status_kb(field: str) -> int:
    """A "VmRSS:   12345 kB" style line from /proc/self/status (Linux), in KiB; 0 if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _drain(store_dir: Path, smpp_port: int, max_tps: float, seconds: float) -> dict[str, Any]:
    baseline_kb = _status_kb("VmRSS")
    cfg = bench_config(
        store_dir,
        {"smpp": {"port": smpp_port, "max_tps": max_tps}, "log": {"level": "WARNING"}},
    )
    bridge = Bridge(cfg)
    started = time.monotonic()
    await bridge.start()
    try:
        assert bridge.session is not None
        if not await bridge.session.wait_bound(timeout=10.0):
            raise RuntimeError("the bridge did not bind to the simulator")
        bound_at = time.monotonic()
        counts = await bridge.store.counts()
        deadline = bound_at + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
            counts = await bridge.store.counts()
            if counts.get("queued", 0) + counts.get("sending", 0) == 0:
                break
        elapsed = time.monotonic() - bound_at
    finally:
        await bridge.stop()
    drained = sum(n for state, n in counts.items() if state not in ("queued", "sending"))
    return {
        "baseline_rss_kb": baseline_kb,
        "peak_rss_kb": _status_kb("VmHWM"),
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "startup_s": bound_at - started,
        "drain_s": elapsed,
        "drained": drained,
        "counts": counts,
    }


def main() -> None:
    store_dir, port, max_tps, seconds = sys.argv[1:5]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = asyncio.run(_drain(Path(store_dir), int(port), float(max_tps), float(seconds)))
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
