"""Scheduled work over real sockets: the weekly library report and the privacy purge."""

from __future__ import annotations

from bridge.model import SmsState
from tests.flows.harness import StartEnv
from tests.smtp_client import notice, send


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_weekly_report_and_purge(env_factory: StartEnv) -> None:
    clock = Clock(1_800_000_000.0)
    e = await env_factory({"smpp": {"max_age": "30d"}}, clock=clock)
    await e.bridge.maintenance.tick(clock.now)  # first run only starts the clocks
    e.sim.set_scenario("reject:0x0B")
    bad = await send(
        e.smtp_port,
        "ils@riverside.example.org",
        ["2025550143@sms.example.org"],
        notice("Hold ready", Subject="Hold ready for Jane"),
    )
    await e.wait_state(bad.queue_ids[0], SmsState.FAILED)
    await e.sink.wait_for(1, timeout=10)  # the bounce

    clock.now += 7 * 86400
    await e.bridge.maintenance.tick(clock.now)
    mails = await e.sink.wait_for(2, timeout=10)
    report = mails[1].message()
    assert mails[1].rcpt_tos == ("circulation@riverside.example.org",)
    assert report["Subject"].startswith("Text notices for Riverside Public Library:")
    body = report.get_body(("plain",)).get_content()
    assert "Failed:      1" in body and "+1 202-555-0143" in body
    assert "the carrier rejected the destination number" in body

    # a day later nothing is due again; after the retention the text is erased
    clock.now += 86400
    await e.bridge.maintenance.tick(clock.now)
    rec = await e.bridge.store.get_sms(bad.queue_ids[0])
    assert rec is not None and rec.body is None  # 8 days > retain_bodies_days (7)
    assert len(e.sink.mails) == 2
