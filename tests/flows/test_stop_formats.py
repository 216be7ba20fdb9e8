"""STOP is honoured however the numbers are written (issue 14): a tenant source_addr with '+',
an SMSC that writes the library's number nationally, opt-outs in a few more words, and replies
from senders that are not phone numbers. Real SMSC simulator over SMPP, real SMTP client."""

from __future__ import annotations

import pytest

from bridge import policy
from tests.conftest import tenant
from tests.flows.harness import Env, StartEnv
from tests.smtp_client import notice, send

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
PATRON = "+12025550143"
LIBRARY = "circulation@riverside.example.org"
PROGRAM = "Library text notices"
FALLBACK = "desk@sms-admin.example.org"


async def _assert_opted_out(e: Env, *, number: str, told_to: str, mails_before: int = 0) -> None:
    """After a STOP: one confirmation from the library's number, the library told, and the
    next notice refused at RCPT (optout_mode: refuse, the default)."""
    msgs = await e.sim.wait_for_messages(2, timeout=5)
    assert msgs[1].text == policy.optout_confirmation(PROGRAM)
    assert msgs[1].source == number  # the canonical number, never the form the SMSC wrote
    mails = await e.sink.wait_for(mails_before + 1, timeout=10)
    told = mails[mails_before]
    assert told.rcpt_tos == (told_to,)
    assert told.message()["Subject"] == "Patron +1 202-555-0143 opted out of text notices"
    conv = await send(e.smtp_port, FROM, [TO], notice("Next notice", Message_ID="<next@x>"))
    ((code, msg),) = conv.rcpts
    assert code == 550 and msg.startswith("5.7.1 +1 202-555-0143 opted out"), msg
    # Refused at RCPT, so never committed: the store holds only the texts already sent.
    assert sum((await e.bridge.store.counts()).values()) == len(msgs)
    assert [m.text for m in e.sim.messages].count("Next notice") == 0


async def test_stop_to_a_tenant_number_configured_with_plus(env_factory: StartEnv) -> None:
    e = await env_factory({"tenants": [tenant(source_addr="+12025550199")]})
    await send(e.smtp_port, FROM, [TO], notice())
    (first,) = await e.sim.wait_for_messages(1, timeout=5)
    assert first.source == "+12025550199"
    # The SMSC writes the library's number as TON 1 digits without '+'.
    assert await e.sim.inject_mo(PATRON, "12025550199", "STOP") == [0]
    await _assert_opted_out(e, number="+12025550199", told_to=LIBRARY)


@pytest.mark.parametrize("ton", [0, 2])
async def test_stop_to_the_library_number_written_nationally(
    env_factory: StartEnv, ton: int
) -> None:
    e = await env_factory()
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)
    # "2025550100" for 12025550100, TON 2 (national) or 0 (unknown); the patron nationally too.
    statuses = await e.sim.inject_mo(
        "2025550143", "2025550100", "STOP", source_ton=ton, dest_ton=ton
    )
    assert statuses == [0]
    await _assert_opted_out(e, number="+12025550100", told_to=LIBRARY)


@pytest.mark.parametrize("text", ["stop please", "Please stop", "stop stop", "STOP. Thank you"])
async def test_stop_in_a_few_more_words_opts_out(env_factory: StartEnv, text: str) -> None:
    e = await env_factory()
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)
    assert await e.sim.inject_mo(PATRON, "12025550100", text) == [0]
    await _assert_opted_out(e, number="+12025550100", told_to=LIBRARY)


async def test_a_reply_that_mentions_stop_is_a_reply(env: Env) -> None:
    await send(env.smtp_port, FROM, [TO], notice())
    await env.sim.wait_for_messages(1, timeout=5)
    assert await env.sim.inject_mo(PATRON, "12025550100", "don't stop the renewal") == [0]
    (mail,) = await env.sink.wait_for(1, timeout=10)
    assert mail.message()["Subject"].startswith("SMS reply: don't stop the renewal")
    conv = await send(env.smtp_port, FROM, [TO], notice("Next notice", Message_ID="<next@x>"))
    assert conv.rcpts[0][0] == 250


@pytest.mark.parametrize(
    ("sender", "ton", "kind"),
    [
        ("", 0, "no sender number"),
        ("EVILCORP", 5, "an alphanumeric sender id"),
        ("1", 0, "not a valid phone number"),
        ("1" * 20, 1, "not a valid phone number"),
    ],
)
@pytest.mark.parametrize("text", ["Hello, is the library open?", "STOP"])
async def test_reply_from_a_sender_that_is_no_phone_number(
    env_factory: StartEnv, sender: str, ton: int, kind: str, text: str
) -> None:
    # One library on the number: the reply is routed to it by the destination alone.
    e = await env_factory({"tenants": [tenant(source_addr="+12025550199")]})
    assert await e.sim.inject_mo(sender, "12025550199", text, source_ton=ton) == [0]
    (mail,) = await e.sink.wait_for(1, timeout=10)
    assert mail.rcpt_tos == (LIBRARY,)
    msg = mail.message()
    body = msg.get_content()
    assert text in body and kind in body
    assert "cannot be answered by text" in body
    if sender:
        assert f"SMS from {sender}" in msg["From"] and repr(sender) in body
    if text == "STOP":
        assert msg["Subject"].startswith("[STOP]")
        assert "reads as the keyword STOP" in body
    # Nothing is texted to it, no opt-out recorded, and a redelivery is acknowledged again.
    # An MO's answers are committed with it, before its deliver_sm_resp: none is queued.
    assert await e.bridge.store.counts() == {}
    assert e.sim.messages == []
    assert await e.bridge.store.list_optouts() == []
    assert await e.sim.inject_mo(sender, "12025550199", text, source_ton=ton) == [0]


async def test_reply_from_an_alphanumeric_sender_on_a_shared_number_goes_to_the_fallback(
    env_factory: StartEnv,
) -> None:
    from tests.conftest import ASHLAND

    e = await env_factory({"tenants": [tenant(), ASHLAND], "inbound": {"fallback_to": FALLBACK}})
    assert await e.sim.inject_mo("EVILCORP", "12025550100", "Win a prize", source_ton=5) == [0]
    (mail,) = await e.sink.wait_for(1, timeout=10)
    assert mail.rcpt_tos == (FALLBACK,)
    assert "an alphanumeric sender id" in mail.message().get_content()


async def test_answers_go_out_only_from_a_number_the_bridge_sends_from(env: Env) -> None:
    # An MO to a number that is none of the configured ones (a carrier's misrouting): the
    # HELP answer goes out from the library's number, not from the number the SMSC wrote.
    assert await env.sim.inject_mo(PATRON, "2025550111", "HELP", dest_ton=2) == [0]
    (msg,) = await env.sim.wait_for_messages(1, timeout=5)
    assert msg.source == "+12025550100"
    assert msg.text == policy.help_text(PROGRAM, "contact your library")
