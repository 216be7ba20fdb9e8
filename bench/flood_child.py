"""An SMSC that floods deliver_sm (bridge.testing.raw_smsc), in its own process so that writing
the flood does not share the measured loop.

Protocol with the parent (bench.flood_bench): the child prints ``PORT <n>`` once listening;
``flood <n>`` on stdin starts writing n delivery receipts back to back; ``stop`` (or EOF) ends
it, and the child prints one JSON line: how many it wrote, how many were answered and with
ESME_ROK, and the CLOCK_MONOTONIC times of the first write and the last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys

from bridge.testing.raw_smsc import RawSmsc


async def _run() -> None:
    smsc = RawSmsc()
    await smsc.start()
    sys.stdout.write(f"PORT {smsc.port}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    flood: asyncio.Task[None] | None = None
    try:
        while True:
            # Blocking read in a thread: an EOF (parent gone) ends the child too.
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "stop":
                break
            if line[0] == "flood" and flood is None:
                flood = asyncio.create_task(smsc.flood(int(line[1])))
    finally:
        if flood is not None:
            flood.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flood
        await smsc.stop()
    stats = smsc.flood_stats
    report = {
        "sent": stats.sent,
        "answered": len(stats.answered),
        "ok": stats.ok,
        "first_sent": min(stats.sent_at.values(), default=None),
        "last_answered": max(stats.answered_at.values(), default=None),
        "submits": len(smsc.submits),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_run())


if __name__ == "__main__":
    main()
