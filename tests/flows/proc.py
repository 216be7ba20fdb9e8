"""The bridge as a real subprocess (`python -m bridge run -c <yaml>`) for crash and signal tests.

The in-process harness (tests/flows/harness.py) cannot show what a SIGKILL leaves behind: only a
separate process can die between a commit and the next line of code. The peers (SMSC simulator,
SMTP sink) stay in the test's own event loop, so they outlive the bridge and see a restart as a
real carrier and a real mail relay would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import BASE, merge
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on right now (bind to port 0, read it, close it).

    The bridge is a separate process, so it cannot hand a port-0 choice back to the test; this
    small race (another process taking the port in between) is accepted for tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(
    tmp: Path, *, sim_port: int, sink_port: int, over: dict[str, Any] | None = None
) -> tuple[Path, int]:
    """Write tmp/bridge.yaml (BASE from tests/conftest.py plus `over`); return (path, smtp port).

    store.path and mail.maildir in BASE are relative, so they land next to the YAML file."""
    smtp_port = free_port()
    data = merge(
        BASE,
        {
            "smtp": {"listen": f"127.0.0.1:{smtp_port}"},
            "smpp": {"port": sim_port},
            "mail": {"relay": f"127.0.0.1:{sink_port}", "starttls": "never"},
        },
    )
    data = merge(data, over or {})
    path = tmp / "bridge.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, smtp_port


def db_path(cfg_path: Path) -> Path:
    """Where the bridge keeps its SQLite store for a config written by write_config()."""
    data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    return cfg_path.parent / str(data["store"]["path"])


def read_db(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Query the store file directly, read-only (only once no bridge process writes to it)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args).fetchall())
    finally:
        conn.close()


class BridgeProcess:
    """One `sms-bridge run` child process; stderr (the log) goes to `log_path`."""

    def __init__(
        self, cfg_path: Path, smtp_port: int, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.env = env or {}
        self.cfg_path = cfg_path
        self.smtp_port = smtp_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    async def start(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Spawn the bridge and wait until its SMTP listener greets with 220."""
        with self.log_path.open("ab") as log:
            # The child gets its own copy of the descriptor; ours is closed at once. Popen
            # returns as soon as the child is forked, and the exit is polled in wait(), so the
            # test loop needs no asyncio child watcher.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "bridge", "run", "-c", str(self.cfg_path)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        async def ready() -> bool:
            code = self.returncode
            if code is not None:
                raise AssertionError(
                    f"bridge exited with {code} before it was ready:\n{self.log()}"
                )
            return await _smtp_greets(self.smtp_port)

        await eventually(ready, timeout, lambda: f"the bridge to be ready:\n{self.log()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed; the store must cope."""
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109
        """The exit code; AssertionError if the process is still running after `timeout`."""
        assert self.proc is not None
        proc = self.proc
        # Polled rather than awaited through asyncio's child watcher, so the test loop needs
        # no subprocess support and a stuck child cannot hang it. (An exit code of 0 is falsy:
        # poll for "exited", then read it.)
        await eventually(
            lambda: proc.poll() is not None, timeout, lambda: f"the bridge to exit:\n{self.log()}"
        )
        code = proc.poll()
        assert code is not None
        return code

    async def close(self) -> None:
        """Kill the process if it still runs and reap it (the finally of every test)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(AssertionError):
            await self.wait(10.0)

    def log(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return text[-6000:]


async def _smtp_greets(port: int) -> bool:
    """True when something on 127.0.0.1:port answers with an SMTP 220 greeting (RFC 5321 §4.2)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=1.0
        )
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=2.0)
        if line.startswith(b"220"):
            writer.write(b"QUIT\r\n")
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(reader.readline(), timeout=1.0)
            return True
        return False
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
