"""A store the bridge cannot write stops `sms-bridge run` (and the other commands) at once with
one line that says what to check: no traceback, exit status 1.

The tests run as root, which file permissions do not stop; a read-only mount does. A read-only
bind mount of the database file alone gives SQLite's "attempt to write a readonly database"
(the directory stays writable, so SQLite opens the file read-only and fails at the first
write); a whole tmpfs remounted read-only gives "unable to open database file". Both need
mount(2); without it the tests skip and say why, unless SMS_BRIDGE_REQUIRE_PEERS=1 (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.store import SqliteStore
from tests.flows.proc import REPO, free_port, write_config
from tests.peers import require_peer

HINT = "(check the file and directory permissions: the service user needs write access to both)"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


def _mount_or_skip(*args: str) -> None:
    try:
        _mount(*args)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"a read-only mount needs root and mount(2): {exc} {detail.decode()}"
        require_peer("a read-only mount", reason)


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False, timeout=10, capture_output=True)


def _create_store(path: Path) -> None:
    """A current, closed store at ``path`` (so the bridge only has to open it)."""

    async def go() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(go())


@pytest.fixture
def readonly_file(tmp_path: Path) -> Iterator[Path]:
    """tmp/store/bridge.db, bind-mounted read-only over itself."""
    db = tmp_path / "store" / "bridge.db"
    _create_store(db)
    _mount_or_skip("--bind", str(db), str(db))
    try:
        _mount("-o", "remount,bind,ro", str(db))
        yield db
    finally:
        _umount(db)


@pytest.fixture
def readonly_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding store/bridge.db, remounted read-only (nothing has it open then)."""
    where = tmp_path / "fs"
    where.mkdir()
    _mount_or_skip("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where))
    try:
        _create_store(where / "store" / "bridge.db")
        _mount("-o", "remount,ro", str(where))
        yield where
    finally:
        _umount(where)


def bridge_cli(tmp_path: Path, command: list[str], store: dict[str, Any]) -> tuple[int, str]:
    """`python -m bridge <command> -c <config> <subcommand...>` with this store config;
    (exit code, stderr)."""
    cfg, _ = write_config(
        tmp_path, sim_port=free_port(), sink_port=free_port(), over={"store": store}
    )
    done = subprocess.run(
        [sys.executable, "-m", "bridge", command[0], "-c", str(cfg), *command[1:]],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return done.returncode, done.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("command", [["run"], ["status"], ["queue", "ls"]])
def test_read_only_database_file_is_one_line(
    tmp_path: Path, readonly_file: Path, command: list[str]
) -> None:
    code, err = bridge_cli(tmp_path, command, {"path": str(readonly_file)})
    assert code == 1, err
    assert err.splitlines() == [
        f"sms-bridge: cannot open the store at {readonly_file}: "
        f"attempt to write a readonly database {HINT}"
    ], err


def test_read_only_file_system_is_one_line(tmp_path: Path, readonly_fs: Path) -> None:
    db = readonly_fs / "store" / "bridge.db"
    code, err = bridge_cli(tmp_path, ["run"], {"path": str(db)})
    assert code == 1, err
    assert err.splitlines() == [
        f"sms-bridge: cannot open the store at {db}: unable to open database file {HINT}"
    ], err


def test_directory_that_cannot_be_created_is_one_line(tmp_path: Path, readonly_fs: Path) -> None:
    db = readonly_fs / "missing" / "bridge.db"
    code, err = bridge_cli(tmp_path, ["run"], {"path": str(db)})
    assert code == 1, err
    assert err.splitlines() == [
        f"sms-bridge: cannot open the store at {db}: cannot create the directory "
        f"{db.parent}: Read-only file system {HINT}"
    ], err


def test_postgresql_that_refuses_is_one_line(tmp_path: Path) -> None:
    with contextlib.closing(__import__("socket").socket()) as sock:
        # bound, never listening: the kernel answers RST, i.e. "connection refused"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/sms_bridge"
        code, err = bridge_cli(tmp_path, ["run"], {"url": url})
    assert code == 1, err
    assert err.splitlines() == [
        f"sms-bridge: cannot open the PostgreSQL store at "
        f"postgresql://postgres:***@127.0.0.1:{port}/sms_bridge: connection refused "
        "(check store.url, and that PostgreSQL runs and listens on that address)"
    ], err
    assert "hunter2" not in err
