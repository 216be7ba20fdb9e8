"""The bridge through a real Jasmin SMS gateway, as libraries behind an aggregator run it.

bridge ─SMPP─► Jasmin (smpps user "bridge", MT route → connector) ─SMPP─► SMSC simulator, and
back: receipts (Jasmin's own UUID message ids) and patron MO over Jasmin's MO route. One Jasmin
per module (tests/flows/jasmin.py); each test starts its own simulator on the module's fixed
carrier port (Jasmin's connector rebinds within a second) and its own bridge.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import policy
from bridge.app import Bridge
from bridge.config import SmppConfig, load_config_text
from bridge.model import SmsRecord, SmsState
from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.conftest import BASE, merge
from tests.flows import jasmin as jas
from tests.flows.proc import free_port
from tests.smtp_client import notice, send
from tests.waiting import eventually

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
PATRON = "+12025550143"
NUMBER = "12025550100"
STEP_S = 20.0
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

SMPP_KEYS = set(SmppConfig.model_fields)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def jasmin_server() -> Iterator[jas.Jasmin]:
    with jas.run_jasmin(free_port()) as server:
        yield server


@dataclass
class JEnv:
    jasmin: jas.Jasmin
    sim: SmscSimulator
    sink: SmtpSink
    tmp: Path
    bridge: Bridge | None = None

    @property
    def smtp_port(self) -> int:
        assert self.bridge is not None
        return self.bridge.smtp.port

    async def start_bridge(self, over: dict[str, Any] | None = None) -> Bridge:
        data = merge(
            BASE,
            {
                "smpp": {
                    "port": self.jasmin.smpp_port,
                    "system_id": jas.ESME_USER,
                    "password": jas.ESME_PASSWORD,
                    # Jasmin answers submit_sm after a round trip through RabbitMQ.
                    "response_timeout_s": 10,
                },
                "mail": {"relay": f"127.0.0.1:{self.sink.port}", "starttls": "never"},
            },
        )
        cfg = load_config_text(yaml.safe_dump(merge(data, over or {})), self.tmp)
        self.bridge = Bridge(cfg)
        await self.bridge.start()
        assert self.bridge.session is not None
        await self.bridge.session.wait_bound(timeout=10)
        return self.bridge

    async def wait_state(self, queue_id: str, *states: SmsState) -> SmsRecord:
        assert self.bridge is not None
        bridge = self.bridge
        last: SmsRecord | None = None

        async def reached() -> SmsRecord | None:
            nonlocal last
            last = await bridge.store.get_sms(queue_id)
            return last if last is not None and last.state in states else None

        def said() -> str:
            tail = "\n".join(self.jasmin.messages_log().splitlines()[-15:])
            stayed = last and last.state
            return f"{queue_id} in {states} (it stayed {stayed}); Jasmin messages.log:\n{tail}"

        return await eventually(reached, STEP_S, said)

    def segment_ids(self, queue_id: str) -> list[str]:
        conn = sqlite3.connect(f"file:{self.tmp / 'bridge.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT smsc_message_id FROM sms_segment WHERE queue_id=? ORDER BY seq",
                (queue_id,),
            ).fetchall()
        finally:
            conn.close()
        return [str(r[0]) for r in rows]


@pytest.fixture
async def jenv(jasmin_server: jas.Jasmin, tmp_path: Path) -> AsyncIterator[JEnv]:
    sim = SmscSimulator(
        system_id=jas.SIM_SYSTEM_ID, password=jas.SIM_PASSWORD, port=jasmin_server.sim_port
    )
    await sim.start()
    sink = SmtpSink()
    await sink.start()
    env = JEnv(jasmin_server, sim, sink, tmp_path)
    try:
        # Bound to this test's simulator (the previous test's one is gone): Jasmin's connector
        # reconnects after con_fail_delay / con_loss_delay, 1 s here.
        try:
            await sim.wait_for(lambda: sim.bound_sessions > 0, timeout=STEP_S)
        except TimeoutError:
            state = await asyncio.to_thread(jasmin_server.connector_state)
            raise AssertionError(f"Jasmin's connector did not bind (state {state})") from None
        yield env
    finally:
        if env.bridge is not None:
            await env.bridge.stop()
        await env.sim.stop()  # the test may have replaced it (carrier outage)
        await sink.stop()


async def test_bind_and_gsm7_notice_delivered_with_jasmins_receipt(jenv: JEnv) -> None:
    await jenv.start_bridge()
    conv = await send(jenv.smtp_port, FROM, [TO], notice("Your hold is ready at Main Branch."))
    (qid,) = conv.queue_ids
    (sms,) = await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.destination == PATRON and sms.text == "Your hold is ready at Main Branch."
    assert sms.data_coding == 0 and sms.segments == 1
    await jenv.wait_state(qid, SmsState.DELIVERED)
    # The id the bridge matched the receipt by is Jasmin's, not the simulator's.
    (smsc_id,) = jenv.segment_ids(qid)
    assert UUID.match(smsc_id), smsc_id
    assert smsc_id not in sms.message_ids


async def test_ucs2_notice(jenv: JEnv) -> None:
    await jenv.start_bridge()
    text = "Café Łódź: your hold is ready ✓"
    conv = await send(jenv.smtp_port, FROM, [TO], notice(text))
    (sms,) = await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.text == text and sms.data_coding == 8
    await jenv.wait_state(conv.queue_ids[0], SmsState.DELIVERED)


@pytest.mark.parametrize("concat", ["udh8", "sar"])
async def test_long_notice_is_reassembled_on_the_handset(jenv: JEnv, concat: str) -> None:
    await jenv.start_bridge({"smpp": {"concat": concat}})
    body = "Overdue: " + ", ".join(f"Book title number {i}" for i in range(12)) + ". Euro fee 2€."
    conv = await send(jenv.smtp_port, FROM, [TO], notice(body))
    (qid,) = conv.queue_ids
    (sms,) = await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.text == body and sms.segments == 2
    rec = await jenv.wait_state(qid, SmsState.DELIVERED)
    assert rec.segments == 2
    ids = jenv.segment_ids(qid)
    assert len(ids) == 2 and all(UUID.match(i) for i in ids), ids


async def test_carrier_outage_behind_jasmin_is_bridged_by_its_queue(jenv: JEnv) -> None:
    """The gateway's link to the carrier is down: Jasmin still answers the bridge's submit_sm
    (it queues in RabbitMQ), and sends the text once its connector binds again; the receipt
    then completes the notice at the bridge."""
    await jenv.start_bridge()
    port = jenv.sim.port
    await jenv.sim.stop()
    conv = await send(jenv.smtp_port, FROM, [TO], notice("Library closed Monday."))
    (qid,) = conv.queue_ids
    await jenv.wait_state(qid, SmsState.SUBMITTED)
    jenv.sim = SmscSimulator(system_id=jas.SIM_SYSTEM_ID, password=jas.SIM_PASSWORD, port=port)
    await jenv.sim.start()
    (sms,) = await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.text == "Library closed Monday."
    await jenv.wait_state(qid, SmsState.DELIVERED)


async def test_patron_reply_through_jasmins_mo_route(jenv: JEnv) -> None:
    await jenv.start_bridge()
    conv = await send(jenv.smtp_port, FROM, [TO], notice(Subject="Hold ready for Jane"))
    await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    await jenv.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    assert await jenv.sim.inject_mo(PATRON, NUMBER, "Can you keep it until Monday?") == [0]
    (mail,) = await jenv.sink.wait_for(1, timeout=STEP_S)
    assert mail.rcpt_tos == ("circulation@riverside.example.org",)
    body = mail.message().get_body(("plain",))
    assert body is not None and "Can you keep it until Monday?" in body.get_content()


async def test_stop_through_jasmin_opts_out_and_is_answered(jenv: JEnv) -> None:
    await jenv.start_bridge()
    assert await jenv.sim.inject_mo(PATRON, NUMBER, "STOP") == [0]
    # The STOP answer goes back out through Jasmin's MT route to the patron.
    (answer,) = await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    assert answer.destination == PATRON
    assert answer.text == policy.optout_confirmation("Library text notices")
    assert jenv.bridge is not None
    store = jenv.bridge.store

    async def recorded() -> bool:
        return any(o.opted_out for o in await store.list_optouts())

    await eventually(recorded, STEP_S, "the STOP through Jasmin recorded")
    # A later notice is refused at RCPT: the opt-out holds.
    conv = await send(jenv.smtp_port, FROM, [TO], notice())
    assert conv.rcpts[0][0] == 550 and "opted out" in conv.rcpts[0][1]


async def test_failed_receipt_through_jasmin_fails_the_notice_and_bounces(jenv: JEnv) -> None:
    jenv.sim.set_scenario("fail_receipts")
    await jenv.start_bridge()
    conv = await send(jenv.smtp_port, FROM, [TO], notice(Subject="Hold ready for Jane"))
    (qid,) = conv.queue_ids
    rec = await jenv.wait_state(qid, SmsState.FAILED)
    assert "could not deliver" in (rec.reason or "")
    (dsn,) = await jenv.sink.wait_for(1, timeout=STEP_S)
    assert dsn.rcpt_tos == (FROM,) and dsn.message().get_content_type() == "multipart/report"


async def _rejected_upstream(jenv: JEnv) -> str:
    """A notice the carrier refuses (submit_sm_resp ESME_RINVDSTADR to Jasmin's connector);
    returns its queue id once Jasmin has logged the refusal and looked up its DLR map."""
    jenv.sim.set_scenario("reject:0x0B")
    conv = await send(jenv.smtp_port, FROM, [TO], notice(Subject="Hold ready for Jane"))
    (qid,) = conv.queue_ids
    await eventually(
        lambda: re.search(
            r"ESME_RINVDSTADR.*\n(?:.*\n)*.*There is a SMPPs mapping", jenv.jasmin.messages_log()
        ),
        STEP_S,
        lambda: "Jasmin to log the refusal:\n" + jenv.jasmin.messages_log()[-3000:],
    )
    return qid


async def test_upstream_rejection_is_not_reported_by_jasmin_0_11_0(jenv: JEnv) -> None:
    """Jasmin 0.11.0 (jasmin/managers/dlr.py, submit_sm_resp branch) forwards a carrier's
    submit_sm_resp error to an SMPP client only when that client asked for failure-only
    receipts (registered_delivery 2); the bridge asks for every final outcome (1, SMPP 3.4
    §5.2.17), so the rejection is dropped and the notice stays "submitted" at the bridge.
    Pinned so a Jasmin upgrade that forwards it shows up here (then test the FAILED path)."""
    await jenv.start_bridge()
    qid = await _rejected_upstream(jenv)
    assert jenv.bridge is not None
    # A later notice's receipt comes back through Jasmin: a forwarded rejection of the first,
    # sent before it, would have been handled by then.
    jenv.sim.set_scenario("ok")
    later = await send(jenv.smtp_port, FROM, [TO], notice("Later", Message_ID="<later@x>"))
    await jenv.wait_state(later.queue_ids[0], SmsState.DELIVERED)
    rec = await jenv.bridge.store.get_sms(qid)
    assert rec is not None and rec.state is SmsState.SUBMITTED, rec
    assert jenv.sink.mails == []


async def test_lost_receipts_end_in_unconfirmed_after_the_deadline(jenv: JEnv) -> None:
    """Receipts lost on the way (here: the carrier sends none; through Jasmin 0.11.0 also
    every upstream rejection, see above): after smpp.receipt_timeout the notice must stop
    looking in flight and say its outcome is unknown."""
    # The key as the brief names it, or with the project's "_s" suffix for durations.
    key = next((k for k in ("receipt_timeout", "receipt_timeout_s") if k in SMPP_KEYS), None)
    assert key is not None, "smpp.receipt_timeout is not a config key yet"
    jenv.sim.receipts = False
    await jenv.start_bridge({"smpp": {key: 2}})
    conv = await send(jenv.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    await jenv.sim.wait_for_messages(1, timeout=STEP_S)
    rec = await jenv.wait_state(qid, SmsState("unconfirmed"))
    assert rec.reason
