"""What a sysadmin runs against a bridge on PostgreSQL: health, metrics, the status page and the
`sms-bridge` commands.

The store tests run every query on both backends; this runs the tools themselves: a real
`sms-bridge run` process on a throwaway database, its admin listener over HTTP, and the CLI as
separate processes on the same database while the bridge runs (an opt-out added from the shell
is refused at RCPT by the running bridge at once).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.flows.proc import REPO, BridgeProcess, free_port, write_config
from tests.flows.test_web import get
from tests.pg import query, throwaway_database
from tests.smtp_client import notice, send
from tests.waiting import eventually

pytestmark = pytest.mark.slow

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
MAX_TPS = 7


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with throwaway_database() as url:
        yield url


async def cli(cfg: Path, *args: str) -> str:
    """`python -m bridge <command> -c cfg <args>`; returns stdout, fails on a non-zero exit."""
    command, *rest = args
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge", command, "-c", str(cfg), *rest],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


async def _wait_state(url: str, queue_id: str, state: str, timeout: float = 30) -> None:  # noqa: ASYNC109
    sql = "SELECT state FROM sms WHERE queue_id=$1"

    # Another process commits it: polling the database is the only signal there is.
    async def reached() -> bool:
        return bool((await query(url, sql, queue_id))[0][0] == state)

    await eventually(reached, timeout, f"{queue_id} {state}")


async def test_health_metrics_status_page_and_cli_on_postgres(tmp_path: Path, pg_url: str) -> None:
    sim = SmscSimulator(receipt_delay_s=0.05)
    sink = SmtpSink()
    await sim.start()
    await sink.start()
    admin_port = free_port()
    cfg, port = write_config(
        tmp_path,
        sim_port=sim.port,
        sink_port=sink.port,
        over={
            "store": {"url": pg_url, "instance_id": "ops"},
            "admin": {"listen": f"127.0.0.1:{admin_port}"},
            "smpp": {"max_tps": MAX_TPS},
        },
    )
    bridge = BridgeProcess(cfg, port, tmp_path / "bridge.log")
    try:
        await bridge.start(timeout=40)
        conv = await send(port, FROM, [TO], notice("Your hold is ready."))
        (qid,) = conv.queue_ids
        await _wait_state(pg_url, qid, "delivered")
        # One the carrier refuses: failures are what the status page lists.
        sim.set_scenario("reject:0x0B")
        bad_to = "2025550145@sms.example.org"
        conv = await send(port, FROM, [bad_to], notice("Your hold is ready.", To=bad_to))
        (failed_qid,) = conv.queue_ids
        await _wait_state(pg_url, failed_qid, "failed")
        sim.set_scenario("ok")

        health = await get(admin_port, "/healthz")
        assert health.status == 200, health.text

        metrics = await get(admin_port, "/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(metrics.text)
            for s in fam.samples
        }
        assert samples[("sms_bridge_queue_messages", (("state", "delivered"),))] == 1
        assert samples[("sms_bridge_queue_messages", (("state", "failed"),))] == 1
        assert samples[("sms_bridge_queue_messages", (("state", "queued"),))] == 0
        # Alone on the database: the whole smpp.max_tps, applied through the rate budget.
        assert samples[("sms_bridge_send_rate_tps", ())] == MAX_TPS

        page = await get(admin_port, "/")
        assert page.status == 200
        assert failed_qid in page.text and "+1********45" in page.text
        assert "the carrier rejected the destination number" in page.text
        assert "2025550145" not in page.text and "2025550143" not in page.text

        status = json.loads(await cli(cfg, "status", "--json"))
        assert status["sms"].get("delivered") == 1 and status["sms"].get("failed") == 1
        listed = json.loads(await cli(cfg, "queue", "ls", "--state", "failed", "--json"))
        assert [row["queue_id"] for row in listed] == [failed_qid]
        # Repair from the shell: the running bridge sends it again.
        await cli(cfg, "queue", "retry", failed_qid)
        await _wait_state(pg_url, failed_qid, "delivered")

        # An opt-out added from the shell reaches the running bridge through the database.
        await cli(cfg, "optout", "add", "202-555-0144", "--reason", "asked at the desk")
        optouts = json.loads(await cli(cfg, "optout", "ls", "--json"))
        assert len(optouts) == 1
        refused = await send(
            port,
            FROM,
            ["2025550144@sms.example.org"],
            notice("Your hold is ready.", To="2025550144@sms.example.org"),
        )
        assert refused.rcpts[0][0] == 550, refused
        assert "opted out" in refused.rcpts[0][1]
    finally:
        bridge.terminate()
        await bridge.wait(20)
        await sim.stop()
        await sink.stop()
