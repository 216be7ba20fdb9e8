"""`run.event_loop: uvloop`: the real `sms-bridge run` process on uvloop, end to end.

Every other test runs the bridge on the standard library's loop; this one checks that nothing
in it depends on that loop's internals: SMTP intake, the SMPP session (submit, receipt,
deliver_sm_resp), the store's thread hand-offs, the mailer and SIGTERM all work on uvloop.
Skipped, not failed, where uvloop is not installed (it is an optional extra; the test extra
installs it, so CI runs this).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.flows.proc import BridgeProcess, db_path, read_db, write_config
from tests.smtp_client import notice, send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FROM = "ils@riverside.example.org"
PATRON = "+12025550143"
LIBRARY_NUMBER = "+12025550100"  # smpp.source_addr in tests/conftest.py BASE
CIRCULATION = "circulation@riverside.example.org"  # the BASE tenant's reply_to


@pytest.fixture
async def peers() -> AsyncIterator[tuple[SmscSimulator, SmtpSink]]:
    sim = SmscSimulator()
    await sim.start()
    sink = SmtpSink()
    await sink.start()
    try:
        yield sim, sink
    finally:
        await sim.stop()
        await sink.stop()


async def _until_state(db: Path, queue_id: str, state: str, proc: BridgeProcess) -> None:
    deadline = time.monotonic() + 15
    while True:
        rows = read_db(db, "SELECT state FROM sms WHERE queue_id=?", (queue_id,))
        if rows == [(state,)]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue_id} is {rows}, not {state}:\n{proc.log()}")
        await asyncio.sleep(0.05)


async def test_notice_receipt_and_reply_on_uvloop(
    tmp_path: Path, peers: tuple[SmscSimulator, SmtpSink]
) -> None:
    pytest.importorskip("uvloop", reason="uvloop is not installed (pip install '.[uvloop]')")
    sim, sink = peers
    cfg_path, smtp_port = write_config(
        tmp_path,
        sim_port=sim.port,
        sink_port=sink.port,
        over={"run": {"event_loop": "uvloop"}, "log": {"level": "INFO"}},
    )
    proc = BridgeProcess(cfg_path, smtp_port, tmp_path / "bridge.log")
    try:
        await proc.start(timeout=15)
        assert "event loop uvloop" in proc.log(), proc.log()
        await sim.wait_for(lambda: sim.binds >= 1, timeout=10)

        # A notice: 250 after the commit, submitted, and its receipt applied.
        text = "Your hold is ready at Main Branch until Friday."
        conv = await send(smtp_port, FROM, ["2025550143@sms.example.org"], notice(text))
        (queue_id,) = conv.queue_ids
        (sms,) = await sim.wait_for_messages(1, timeout=10)
        assert (sms.destination, sms.text) == (PATRON, text)
        await _until_state(db_path(cfg_path), queue_id, "delivered", proc)

        # The patron answers: deliver_sm_resp ESME_ROK, then the reply email to the library.
        assert await sim.inject_mo(PATRON, LIBRARY_NUMBER, "Can I pick it up Monday?") == [0]
        (mail,) = await sink.wait_for(1, timeout=15)
        assert mail.rcpt_tos == (CIRCULATION,)
        body = mail.message().get_body(("plain",))
        assert body is not None and "Can I pick it up Monday?" in body.get_content()

        proc.terminate()
        assert await proc.wait(15) == 0, proc.log()
    finally:
        await proc.close()
