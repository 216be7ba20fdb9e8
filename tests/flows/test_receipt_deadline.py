"""Every text ends in a known state, against the SMSC simulator over real SMPP: the receipt
deadline (`unconfirmed`), the receipt-health warning, and what registered_delivery and
validity_period put on the wire."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from bridge.model import SmsState
from bridge.web import AdminServer
from tests.conftest import BASE, merge
from tests.flows.harness import Env, StartEnv
from tests.flows.test_web import get
from tests.smtp_client import notice, send
from tests.waiting import eventually

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
TO_BAD = "2025550144@sms.example.org"


@pytest.fixture
async def admin_for() -> AsyncIterator[Callable[[Env], Any]]:
    servers: list[AdminServer] = []

    async def start(env: Env) -> AdminServer:
        server = AdminServer("127.0.0.1", 0, env.bridge, metrics=env.bridge.metrics)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.stop(), 5)


def cli_config(env: Env) -> Path:
    path = env.tmp / "cli.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"store": {"path": "bridge.db"}})))
    return path


async def test_text_without_receipt_ends_unconfirmed_without_bounce(
    env_factory: StartEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    e = await env_factory(
        {"smpp": {"receipt_timeout_s": 1}}, sim_kwargs={"scenario": "no_receipts"}
    )
    conv = await send(e.smtp_port, FROM, [TO], notice("Your hold is ready."))
    (qid,) = conv.queue_ids
    await e.wait_state(qid, SmsState.SUBMITTED)
    rec = await e.wait_state(qid, SmsState.UNCONFIRMED, timeout=10)
    assert (
        rec.reason == "accepted by the carrier, but no receipt within 1 s (smpp.receipt_timeout_s)"
    )
    # on the wire: receipts on success and failure, and the carrier told to give up at the
    # same time (SMPP 3.4 §7.1.1.2 relative time)
    ((_, sm),) = e.sim.submits
    assert sm.registered_delivery == 1 and sm.validity_period == "000000000001000R"
    # no bounce: it would have been queued in the same transaction as the state
    assert await e.bridge.store.mail_counts() == {}
    metrics = e.bridge.metrics
    await metrics.refresh(e.bridge.store)
    text = metrics.render().decode()
    assert 'sms_bridge_receipt_deadlines_total{state="unconfirmed"} 1.0' in text
    assert 'sms_bridge_queue_messages{state="unconfirmed"} 1.0' in text
    # the CLI: status and queue ls --state unconfirmed
    cfg = str(cli_config(e))
    assert await asyncio.to_thread(main, ["status", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "unconfirmed 1" in out and "queue ls --state unconfirmed" in out
    argv = ["queue", "-c", cfg, "ls", "--state", "unconfirmed", "--json"]
    assert await asyncio.to_thread(main, argv) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["queue_id"] == qid and row["state"] == "unconfirmed"


async def test_late_receipt_still_settles_an_unconfirmed_text(env_factory: StartEnv) -> None:
    e = await env_factory(
        {"smpp": {"receipt_timeout_s": 1}}, sim_kwargs={"scenario": "no_receipts"}
    )
    conv = await send(e.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    await e.wait_state(qid, SmsState.UNCONFIRMED)
    ((sms,),) = [m.message_ids for m in e.sim.messages]
    assert await e.sim.send_receipt(sms) == 0
    rec = await e.wait_state(qid, SmsState.DELIVERED)
    assert rec.reason is None


async def test_carrier_that_stops_sending_receipts_is_noticed(
    env_factory: StartEnv, admin_for: Callable[[Env], Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound")
    e = await env_factory(
        {"smpp": {"receipts_missing_after_submits": 2, "receipts_missing_after_s": 0.3}},
        sim_kwargs={"scenario": "no_receipts"},
    )
    admin = await admin_for(e)
    for i in range(2):
        conv = await send(e.smtp_port, FROM, [TO], notice(f"n {i}", Message_ID=f"<r{i}@x>"))
        await e.wait_state(conv.queue_ids[0], SmsState.SUBMITTED)
    inbound = e.bridge.inbound
    await eventually(
        lambda: bool(inbound.receipt_health and inbound.receipt_health.missing), 10, "alarm"
    )
    (warning,) = [r for r in caplog.records if "receipts missing" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "registered_delivery" in warning.getMessage()
    assert "another bind" in warning.getMessage()
    metrics = (await get(admin.port, "/metrics")).text
    assert 'sms_bridge_receipts_missing{smsc="smsc"} 1.0' in metrics
    assert "sms_bridge_seconds_since_last_receipt" in metrics
    health = await get(admin.port, "/healthz")
    assert health.status == 200  # still in service: it takes and sends texts
    assert json.loads(health.body)["receipts"].startswith("missing: no receipt for 2 text(s)")
    page = (await get(admin.port, "/")).text
    assert "the carrier sends no receipts" in page
    # receipts come back: the alarm clears, once
    e.sim.set_scenario("ok")
    conv = await send(e.smtp_port, FROM, [TO], notice("back", Message_ID="<r9@x>"))
    await e.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    await eventually(
        lambda: bool(inbound.receipt_health and not inbound.receipt_health.missing), 10, "ok"
    )
    metrics = (await get(admin.port, "/metrics")).text
    assert 'sms_bridge_receipts_missing{smsc="smsc"} 0.0' in metrics
    assert any("receipts arriving again" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "receipts missing" in r.getMessage()]) == 1


async def test_failure_only_receipts_silence_means_delivered(env_factory: StartEnv) -> None:
    e = await env_factory({"smpp": {"registered_delivery": "failures", "receipt_timeout_s": 2}})
    e.sim.fail_numbers = {"12025550144"}
    ok = (await send(e.smtp_port, FROM, [TO], notice("a", Message_ID="<f1@x>"))).queue_ids[0]
    bad = (await send(e.smtp_port, FROM, [TO_BAD], notice("b", Message_ID="<f2@x>"))).queue_ids[0]
    failed = await e.wait_state(bad, SmsState.FAILED)
    assert "could not deliver" in (failed.reason or "")
    (dsn,) = await e.sink.wait_for(1, timeout=10)  # the failure receipt still bounces
    rec = await e.wait_state(ok, SmsState.DELIVERED)
    assert rec.reason == "no failure receipt within 2 s (smpp.registered_delivery: failures)"
    assert {sm.registered_delivery for _, sm in e.sim.submits} == {2}
    assert e.bridge.inbound.counters.receipts == 1
    assert dsn.message().get_content_type() == "multipart/report"


async def test_no_receipts_asked_final_at_submit(env_factory: StartEnv) -> None:
    e = await env_factory({"smpp": {"registered_delivery": "none", "send_validity_period": False}})
    conv = await send(e.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    rec = await e.wait_state(qid, SmsState.UNCONFIRMED, SmsState.SUBMITTED)
    assert rec.state is SmsState.UNCONFIRMED  # never passes through `submitted`
    assert rec.reason == (
        "accepted by the carrier; no receipt asked for (smpp.registered_delivery: none)"
    )
    ((_, sm),) = e.sim.submits
    assert sm.registered_delivery == 0 and sm.validity_period is None
    assert e.bridge.inbound.counters.receipts == 0
    assert await e.bridge.store.mail_counts() == {}
