"""A library whose patron records still name carrier gateways routes those domains to the bridge:
notices to `<number>@vtext.com` and the like are texted through the library's own SMSC."""

from __future__ import annotations

from bridge.model import SmsState
from tests.flows.harness import StartEnv
from tests.smtp_client import notice, send

FROM = "ils@riverside.example.org"


async def test_notices_to_carrier_gateway_addresses_are_texted(env_factory: StartEnv) -> None:
    env = await env_factory({"smtp": {"gateway_domains": ["known"]}})
    rcpts = ["2025550143@vtext.com", "2025550144.iws@iwspcs.net", "12025550145@txt.att.net"]
    conv = await send(env.smtp_port, FROM, rcpts, notice("Your hold is ready.", To=rcpts[0]))
    assert [code for code, _ in conv.rcpts] == [250, 250, 250], conv
    messages = await env.sim.wait_for_messages(3, timeout=5)
    assert sorted(m.destination for m in messages) == [
        "+12025550143",
        "+12025550144",
        "+12025550145",
    ]
    for qid in conv.queue_ids:
        await env.wait_state(qid, SmsState.DELIVERED)


async def test_gateway_domains_not_listed_are_still_refused(env_factory: StartEnv) -> None:
    env = await env_factory({"smtp": {"gateway_domains": ["vtext.com"]}})
    conv = await send(env.smtp_port, FROM, ["2025550143@tmomail.net"], notice())
    ((code, text),) = conv.rcpts
    assert code == 550 and "tmomail.net is not an SMS domain" in text
    assert env.sim.messages == []
