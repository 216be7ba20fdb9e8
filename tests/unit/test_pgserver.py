"""`make test`'s PostgreSQL fallback: with nothing listening where the tests look, a throw-away
server runs for the command and is gone after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.proc import free_port
from tests.pgserver import answers, pg_bin

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CHECK = """
import asyncio, os, asyncpg
async def go():
    conn = await asyncpg.connect(os.environ["SMS_BRIDGE_TEST_PG"], timeout=10)
    print("answer", await conn.fetchval("SELECT 40 + 2"))
    await conn.close()
asyncio.run(go())
print("url", os.environ["SMS_BRIDGE_TEST_PG"])
"""


def test_starts_a_throwaway_server_when_none_answers() -> None:
    if pg_bin() is None:
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    assert not answers(nowhere)
    result = subprocess.run(
        [sys.executable, "-m", "tests.pgserver", "--", sys.executable, "-c", CHECK],
        cwd=REPO,
        env={**os.environ, "SMS_BRIDGE_TEST_PG": nowhere},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answer 42" in result.stdout and "throw-away server" in result.stdout
    (used,) = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("url ")]
    assert used != nowhere
    assert not answers(used), "the throw-away server is still running"


def test_uses_the_server_that_answers(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/postgres"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.pgserver",
                "--",
                sys.executable,
                "-c",
                "import os; print(os.environ['SMS_BRIDGE_TEST_PG'])",
            ],
            cwd=REPO,
            env={**os.environ, "SMS_BRIDGE_TEST_PG": url},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 0 and result.stdout.strip() == url, result.stderr
