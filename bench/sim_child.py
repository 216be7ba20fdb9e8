"""The SMSC simulator in its own process, so its work does not share the measured loop.

Protocol with the parent (bench.sim_proc): the child prints ``PORT <n>`` once listening, runs
until its stdin closes (or says ``stop``), then prints one JSON line with the monotonic arrival
time of every submit_sm (CLOCK_MONOTONIC is system-wide on Linux, so the parent can compare
them with its own clock), the largest number of submits it held unanswered, and how many
handset messages it reassembled. ``python -m bench.sim_child --scenario slow:20``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from bridge.testing.smsc_sim import SmscSimulator, precise_loop


async def _run(scenario: str, receipts: bool, port: int) -> None:
    sim = SmscSimulator(scenario=scenario, receipts=receipts, port=port)
    await sim.start()
    sys.stdout.write(f"PORT {sim.port}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    try:
        # Blocking read in a thread: an EOF (parent gone) ends the simulator too.
        await loop.run_in_executor(None, sys.stdin.readline)
    finally:
        await sim.stop()
    report = {
        "submit_times": [t for t, _ in sim.submits],
        "max_outstanding": sim.max_outstanding,
        "messages": len(sim.messages),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_child")
    parser.add_argument("--scenario", default="ok")
    parser.add_argument("--no-receipts", action="store_true")
    # A port chosen beforehand: the peers are configured (and queue texts) before it listens.
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    # The simulator logs message text at INFO (its purpose as a tool); a benchmark shows none.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with asyncio.Runner(loop_factory=precise_loop) as runner:
        runner.run(_run(args.scenario, not args.no_receipts, args.port))


if __name__ == "__main__":
    main()
