"""Run a command with a PostgreSQL server for the tests: the one at $SMS_BRIDGE_TEST_PG (default
127.0.0.1:5432) when it answers, else a throw-away server started for the run and removed after.

    python -m tests.pgserver -- pytest -q

`make test` runs pytest this way, so the PostgreSQL tests run on a machine with PostgreSQL
installed (Debian: apt-get install postgresql) but no server listening, instead of skipping.
The throw-away server gets its own data directory under a temporary directory, its own port,
trust authentication for user postgres, and fsync off (its data is thrown away anyway). As
root it runs as the `postgres` user (else `nobody`): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_START_TIMEOUT_S = 60


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout):
            return True
    except OSError:
        return False


def pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl: Debian keeps them out of PATH, per major version."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_user() -> list[str]:
    """The prefix that runs a server command as a non-root user (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and no postgres or nobody user to run PostgreSQL as")


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a server in a temporary directory; yield its admin URL; stop and remove it."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    prefix = _as_user()
    top = Path(tempfile.mkdtemp(prefix="sms-bridge-pg-"))
    data, sockets = top / "data", top / "sockets"
    sockets.mkdir()
    if prefix:
        user = pwd.getpwnam(prefix[2])
        for path in (top, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = _free_port()
    log = top / "server.log"
    try:
        initdb = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        subprocess.run(
            [*prefix, str(bindir / "initdb"), *initdb],
            check=True,
            capture_output=True,
            timeout=_START_TIMEOUT_S,
        )
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = ["-D", str(data), "-o", options, "-l", str(log), "-w", "-t", str(_START_TIMEOUT_S)]
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), *start, "start"],
            check=True,
            capture_output=True,
            timeout=_START_TIMEOUT_S + 10,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(top, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m tests.pgserver -- COMMAND...", file=sys.stderr)
        return 2
    url = os.environ.get("SMS_BRIDGE_TEST_PG", DEFAULT_URL)
    if answers(url):
        return subprocess.run(argv, check=False).returncode
    if pg_bin() is None:
        print(f"note: no PostgreSQL at {url} and none installed; its tests will skip", flush=True)
        return subprocess.run(argv, check=False).returncode
    started = time.monotonic()
    with throwaway_server() as server_url:
        print(
            f"note: no PostgreSQL at {url}; started a throw-away server at {server_url}"
            f" ({time.monotonic() - started:.1f} s) for this run",
            flush=True,
        )
        env = {**os.environ, "SMS_BRIDGE_TEST_PG": server_url}
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
