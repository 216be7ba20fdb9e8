"""STOP/START/HELP, opt-out enforcement, quiet hours, caps and duplicates, over real sockets."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from bridge import policy
from bridge.model import OptoutRecord, SmsRecord, SmsState
from tests.conftest import ASHLAND, tenant
from tests.flows.harness import Env, StartEnv
from tests.smtp_client import notice, send
from tests.waiting import eventually

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
PATRON = "+12025550143"
NUMBER = "12025550100"  # as the simulator writes it in an MO (TON 1)
SCOPE = "+12025550100"  # as the store keeps it (canonical E.164)
PROGRAM = "Library text notices"
OTHER = "2025550144@sms.example.org"
OTHER_PATRON = "+12025550144"


async def deferred(e: Env, queue_id: str) -> SmsRecord:
    """The text once the dispatcher has looked at it and deferred it (a reason recorded)."""

    async def seen() -> SmsRecord | None:
        rec = await e.bridge.store.get_sms(queue_id)
        return rec if rec is not None and rec.reason else None

    return await eventually(seen, 10, f"the dispatcher to defer {queue_id}")


async def test_stop_blocks_every_library_on_the_number_and_start_restores(
    env_factory: StartEnv,
) -> None:
    e = await env_factory({"tenants": [tenant(), ASHLAND]})
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)

    assert await e.sim.inject_mo(PATRON, NUMBER, "Stop.") == [0]
    msgs = await e.sim.wait_for_messages(2, timeout=5)
    assert msgs[1].text == policy.optout_confirmation(PROGRAM)
    mails = await e.sink.wait_for(2, timeout=10)  # both libraries on that number are told
    assert sorted(m.rcpt_tos[0] for m in mails) == [
        "circulation@riverside.example.org",
        "desk@ashland.example.org",
    ]
    told = mails[0].message()
    assert told["Subject"] == "Patron +1 202-555-0143 opted out of text notices"
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"opted out of text notices on {day} by replying STOP" in told.get_content()

    for sender in (FROM, "ils@ashland.example.org"):
        conv = await send(e.smtp_port, sender, [TO], notice(Message_ID=f"<after-{sender}>"))
        ((code, msg),) = conv.rcpts
        assert code == 550 and msg.startswith("5.7.1 +1 202-555-0143 opted out")
        assert day in msg and "STOP" in msg

    # a second STOP is not confirmed again
    assert await e.sim.inject_mo(PATRON, NUMBER, "STOP") == [0]
    assert await e.sim.inject_mo(PATRON, NUMBER, "start") == [0]
    msgs = await e.sim.wait_for_messages(3, timeout=5)
    assert msgs[2].text == policy.optin_confirmation(PROGRAM)
    conv = await send(e.smtp_port, FROM, [TO], notice("Back again", Message_ID="<back@x>"))
    assert conv.data is not None and conv.data[0] == 250
    msgs = await e.sim.wait_for_messages(4, timeout=5)
    assert msgs[3].text == "Back again"
    history = await e.bridge.store.optout_history(PATRON)
    assert [(r.opted_out, r.keyword, r.actor) for r, _ in history] == [
        (True, "STOP", "patron"),
        (False, "START", "patron"),
    ]
    assert all(ref for _, ref in history)  # each change names the message it came in


async def test_notice_queued_before_the_opt_out_is_not_sent(env: Env) -> None:
    await env.sim.stop()
    conv = await send(env.smtp_port, FROM, [TO], notice(Subject="Hold ready"))
    (qid,) = conv.queue_ids
    await env.bridge.store.set_optout(
        OptoutRecord(PATRON, SCOPE, True, None, time.time(), "admin:test")
    )
    await env.restart_sim()
    rec = await env.wait_state(qid, SmsState.FAILED)
    assert rec.reason is not None and rec.reason.startswith("the patron opted out")
    (dsn,) = await env.sink.wait_for(1, timeout=10)
    assert dsn.message().get_content_type() == "multipart/report"
    # A later notice to another number goes out: the dispatcher has passed the opted-out one.
    await send(env.smtp_port, FROM, [OTHER], notice("Later", Message_ID="<later@x>"))
    (msg,) = await env.sim.wait_for_messages(1, timeout=5)
    assert msg.destination == OTHER_PATRON


async def test_optout_mode_bounce_accepts_and_bounces(env_factory: StartEnv) -> None:
    e = await env_factory({"tenants": [tenant(optout_mode="bounce")]})
    await e.bridge.store.set_optout(OptoutRecord(PATRON, SCOPE, True, "STOP", 1.0, "patron"))
    conv = await send(e.smtp_port, FROM, [TO], notice())
    rec = await e.wait_state(conv.queue_ids[0], SmsState.FAILED)
    assert "opted out" in (rec.reason or "")
    (dsn,) = await e.sink.wait_for(1, timeout=10)
    human = dsn.message().get_payload()[0].get_content()
    assert "opted out" in human


async def test_help_answers_even_without_a_conversation(env: Env) -> None:
    assert await env.sim.inject_mo(PATRON, NUMBER, " help ") == [0]
    (msg,) = await env.sim.wait_for_messages(1, timeout=5)
    assert msg.text == policy.help_text(PROGRAM, "contact your library")
    assert "Msg&data rates may apply" in msg.text and msg.segments == 1


async def test_custom_keyword_is_forwarded_tagged(env_factory: StartEnv) -> None:
    e = await env_factory({"tenants": [tenant(keywords=["RENEW"])]})
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)
    await e.sim.inject_mo(PATRON, NUMBER, "renew!")
    (mail,) = await e.sink.wait_for(1, timeout=10)
    assert mail.message()["Subject"].startswith("[RENEW]")


async def test_regenerated_notice_is_sent_once(env: Env) -> None:
    a = await send(env.smtp_port, FROM, [TO], notice("Your hold is ready", Message_ID="<a@x>"))
    b = await send(env.smtp_port, FROM, [TO], notice("Your  hold is ready", Message_ID="<b@x>"))
    assert a.queue_ids == b.queue_ids
    await env.sim.wait_for_messages(1, timeout=5)
    # A different notice goes out next: the dispatcher has passed the first, sent only once.
    await send(env.smtp_port, FROM, [TO], notice("Cosmos is due", Message_ID="<c@x>"))
    msgs = await env.sim.wait_for_messages(2, timeout=5)
    assert [m.text for m in msgs] == ["Your hold is ready", "Cosmos is due"]


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


NY = ZoneInfo("America/New_York")


async def test_notice_at_2330_goes_out_at_0900(env_factory: StartEnv) -> None:
    clock = FakeClock(datetime(2026, 11, 23, 23, 30, tzinfo=NY).timestamp())
    e = await env_factory(
        {
            "tenants": [
                tenant(
                    quiet_hours={"timezone": "America/New_York"}, urgent_header="X-Library-Urgent"
                )
            ]
        },
        clock=clock,
    )
    conv = await send(e.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    rec = await deferred(e, qid)
    assert rec.state is SmsState.QUEUED
    opens = datetime(2026, 11, 24, 9, 0, tzinfo=NY).timestamp()
    assert rec.next_attempt_at == opens and rec.reason is not None
    assert rec.reason.startswith("quiet hours until 2026-11-24 14:00 UTC")
    assert e.sim.messages == []
    clock.now = opens - 1
    # An urgent notice passes quiet hours: once it is out, the dispatcher has looked at the
    # queue at opens - 1 and left the other one waiting.
    await send(
        e.smtp_port, FROM, [TO], notice("Closed today", X_Library_Urgent="yes", Message_ID="<u@x>")
    )
    (urgent,) = await e.sim.wait_for_messages(1, timeout=5)
    assert urgent.text == "Closed today"
    clock.now = opens
    assert e.bridge.dispatcher is not None
    e.bridge.dispatcher.wake()
    msgs = await e.sim.wait_for_messages(2, timeout=5)
    assert len(msgs) == 2 and msgs[1].destination == PATRON


async def test_urgent_header_passes_quiet_hours(env_factory: StartEnv) -> None:
    clock = FakeClock(datetime(2026, 11, 23, 23, 30, tzinfo=NY).timestamp())
    e = await env_factory(
        {"tenants": [tenant(quiet_hours={}, urgent_header="X-Library-Urgent")]}, clock=clock
    )
    await send(e.smtp_port, FROM, [TO], notice("Closed today: flood", X_Library_Urgent="yes"))
    (msg,) = await e.sim.wait_for_messages(1, timeout=5)
    assert msg.text == "Closed today: flood"


async def test_frequency_cap_refuses_with_reason(env_factory: StartEnv) -> None:
    e = await env_factory(
        {"tenants": [tenant(frequency_cap={"max_messages": 2, "per_s": 86400, "mode": "refuse"})]}
    )
    ids = []
    for i in range(3):
        conv = await send(e.smtp_port, FROM, [TO], notice(f"Notice {i}", Message_ID=f"<c{i}@x>"))
        ids.append(conv.queue_ids[0])
        if i < 2:
            await e.wait_state(ids[-1], SmsState.SUBMITTED, SmsState.DELIVERED)
    rec = await e.wait_state(ids[2], SmsState.FAILED)
    assert rec.reason == "frequency cap reached (at most 2 texts per 24 h)"
    assert [m.text for m in e.sim.messages] == ["Notice 0", "Notice 1"]


async def test_cost_lint_records_ucs2_templates(env: Env) -> None:
    text = "Biblioteca: su reserva “Cien años” está lista – recójala pronto."
    conv = await send(env.smtp_port, FROM, [TO], notice(text, Subject="Reserva lista"))
    (qid,) = conv.queue_ids
    await env.sim.wait_for_messages(1, timeout=5)
    report = await env.bridge.store.cost_report(since=0)
    ((tid, template, texts, ucs2, segments, culprits),) = report
    assert (tid, texts) == ("riverside", 1) and template.startswith("Reserva lista | ")
    # curly quotes and the dash were mapped to GSM; á and ó are what cost UCS-2
    assert ucs2 == 1 and culprits == "áó" and segments == 1
    assert qid


async def test_first_contact_footer_once_prefix_always(env_factory: StartEnv) -> None:
    e = await env_factory(
        {"tenants": [tenant(prefix="Riverside Library: ", footer="Reply STOP to opt out.")]}
    )
    await send(e.smtp_port, FROM, [TO], notice("your hold Dune is ready.", Message_ID="<f1@x>"))
    await send(
        e.smtp_port, FROM, [TO], notice("Riverside Library: Cosmos is due.", Message_ID="<f2@x>")
    )
    first, second = await e.sim.wait_for_messages(2, timeout=5)
    assert first.text == "Riverside Library: your hold Dune is ready. Reply STOP to opt out."
    assert second.text == "Riverside Library: Cosmos is due."
    assert first.segments == second.segments == 1
    # after STOP and START the next text carries the footer again
    await e.sim.inject_mo(PATRON, NUMBER, "STOP")
    await e.sim.inject_mo(PATRON, NUMBER, "START")
    await e.sim.wait_for_messages(4, timeout=5)
    await send(e.smtp_port, FROM, [TO], notice("Cosmos is ready.", Message_ID="<f3@x>"))
    msgs = await e.sim.wait_for_messages(5, timeout=5)
    assert msgs[4].text == "Riverside Library: Cosmos is ready. Reply STOP to opt out."


async def test_welcome_text_before_the_first_notice(env_factory: StartEnv) -> None:
    e = await env_factory({"compliance": {"welcome_on_first_contact": True}})
    await send(e.smtp_port, FROM, [TO], notice("Your hold is ready.", Message_ID="<w1@x>"))
    welcome, first = await e.sim.wait_for_messages(2, timeout=10)
    assert welcome.text == policy.optin_confirmation(PROGRAM, frequency="Msg frequency varies")
    assert first.text == "Your hold is ready."
    await send(e.smtp_port, FROM, [TO], notice("Cosmos is due.", Message_ID="<w2@x>"))
    msgs = await e.sim.wait_for_messages(3, timeout=5)
    assert msgs[2].text == "Cosmos is due."  # no second welcome


async def test_frequency_cap_defers_until_the_window_frees(env_factory: StartEnv) -> None:
    clock = FakeClock(1_800_000_000.0)
    e = await env_factory(
        {"tenants": [tenant(frequency_cap={"max_messages": 1, "per_s": 3600})]}, clock=clock
    )
    a = await send(e.smtp_port, FROM, [TO], notice("First", Message_ID="<k1@x>"))
    await e.wait_state(a.queue_ids[0], SmsState.SUBMITTED, SmsState.DELIVERED)
    b = await send(e.smtp_port, FROM, [TO], notice("Second", Message_ID="<k2@x>"))
    rec = await deferred(e, b.queue_ids[0])
    assert rec.state is SmsState.QUEUED
    assert rec.reason == "frequency cap: at most 1 texts per 1 h"
    assert rec.next_attempt_at == clock.now + 3600
    clock.now += 3600
    assert e.bridge.dispatcher is not None
    e.bridge.dispatcher.wake()
    msgs = await e.sim.wait_for_messages(2, timeout=5)
    assert msgs[1].text == "Second"


async def test_bounces_to_a_fixed_address_as_well(env_factory: StartEnv) -> None:
    e = await env_factory(
        {"tenants": [tenant(bounce_mode="both", bounce_to="it@riverside.example.org")]}
    )
    e.sim.set_scenario("reject:0x0B")
    conv = await send(e.smtp_port, FROM, [TO], notice())
    await e.wait_state(conv.queue_ids[0], SmsState.FAILED)
    mails = await e.sink.wait_for(2, timeout=10)
    assert sorted(m.rcpt_tos[0] for m in mails) == [FROM, "it@riverside.example.org"]


async def test_unclaimed_reply_goes_to_the_fallback_address(env_factory: StartEnv) -> None:
    e = await env_factory({"inbound": {"fallback_to": "helpdesk@consortium.example.org"}})
    await e.sim.inject_mo("+12025550199", NUMBER, "who is this?")
    (mail,) = await e.sink.wait_for(1, timeout=10)
    assert mail.rcpt_tos == ("helpdesk@consortium.example.org",)
    assert mail.message()["Subject"] == "SMS reply: who is this?"
