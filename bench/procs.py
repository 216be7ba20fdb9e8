"""Child processes of the benchmarks: the simulator (bench.sim_child) and others, each with a
time limit on every wait, and killed (by its own pid) if it overstays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


async def spawn(module: str, *args: str) -> asyncio.subprocess.Process:
    """``python -m <module> args`` from the repository root, stdin/stdout piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        # Reports are one JSON line; the simulator's lists tens of thousands of times.
        limit=64 * 1024 * 1024,
    )


async def finish(proc: asyncio.subprocess.Process, limit_s: float) -> None:
    """Wait for ``proc`` to exit; kill it after ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def read_json_line(proc: asyncio.subprocess.Process, limit_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(limit_s):
        line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.pid} ended without a report (exit {proc.returncode})")
    data = json.loads(line)
    if not isinstance(data, dict):
        raise RuntimeError(f"child {proc.pid} sent {type(data).__name__}, not an object")
    return data


@dataclass
class SimReport:
    port: int
    submit_times: list[float] = field(default_factory=list)
    max_outstanding: int = 0
    messages: int = 0


@contextlib.asynccontextmanager
async def simulator(
    scenario: str = "ok", *, receipts: bool = True, port: int = 0
) -> AsyncIterator[SimReport]:
    """Run the SMSC simulator in a child process (on `port`, or any free one); the report is
    filled in on exit."""
    args = ["--scenario", scenario, "--port", str(port)]
    if not receipts:
        args.append("--no-receipts")
    proc = await spawn("bench.sim_child", *args)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(15.0):
            first = (await proc.stdout.readline()).decode().split()
        if len(first) != 2 or first[0] != "PORT":
            raise RuntimeError(f"simulator child did not start: {first!r}")
        report = SimReport(port=int(first[1]))
        yield report
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        data = await read_json_line(proc, 30.0)
        report.submit_times = [float(t) for t in data["submit_times"]]
        report.max_outstanding = int(data["max_outstanding"])
        report.messages = int(data["messages"])
    finally:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        await finish(proc, 10.0)
