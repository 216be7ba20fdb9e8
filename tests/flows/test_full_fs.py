"""The store's file system fills up under a running bridge, then space comes back.

A real full file system (a small tmpfs filled with a ballast file, so writes fail with ENOSPC),
next to the SQLITE_FULL test in test_end_to_end.py that uses max_page_count. Needs mount(2),
which a root shell in a container usually has; without it the test skips and says why, unless
SMS_BRIDGE_REQUIRE_PEERS=1 (CI), where it fails. (A read-only remount cannot be staged the
same way: Linux refuses it while the store has files open for writing; the store's read-only
failure is covered by tests/unit/test_store.py.)
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.model import SmsState
from tests.flows.harness import StartEnv
from tests.peers import require_peer
from tests.smtp_client import notice, send

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "fs"
    where.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where))
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"mounting a tmpfs needs root and mount(2): {exc}"
        require_peer("a tmpfs mount", reason)
    try:
        yield where
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _mount("-o", "remount,rw", str(where))
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=10)


def _fill(where: Path) -> Path:
    """Write a ballast file until the file system is full; returns it."""
    ballast = where / "ballast"
    chunk = b"\0" * 65536
    # suppress() outside: closing the file flushes what the last write left, and fails too.
    with contextlib.suppress(OSError), ballast.open("wb") as f:
        while True:
            f.write(chunk)
            f.flush()
    return ballast


async def test_full_file_system_answers_451_and_recovers(
    env_factory: StartEnv, tmpfs: Path
) -> None:
    env = await env_factory({"store": {"path": str(tmpfs / "queue.db")}})
    conv = await send(env.smtp_port, FROM, [TO], notice("before", Message_ID="<b@x>"))
    await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)

    ballast = _fill(tmpfs)
    body = "Your hold is ready at Main Branch. " * 20  # new WAL frames on every commit
    codes = []
    for i in range(4):
        conv = await send(
            env.smtp_port, FROM, [TO], notice(f"{body}{i}", Message_ID=f"<full{i}@x>")
        )
        codes.append(conv.data[0] if conv.data else conv.rcpts[0][0])
    # Every notice is refused with a temporary error (the ILS keeps it and retries); the WAL
    # may still have had room for the first one or two.
    assert 451 in codes and set(codes) <= {250, 451}, codes

    ballast.unlink()
    conv = await send(env.smtp_port, FROM, [TO], notice("after", Message_ID="<after@x>"))
    assert conv.data is not None and conv.data[0] == 250, conv
    await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    texts = [m.text for m in env.sim.messages]
    assert texts[0] == "before" and texts[-1] == "after"
    # Whatever got 250 while the disk was full was really committed and sent.
    assert len(texts) == 2 + codes.count(250)
