"""Nothing the bridge emails disappears silently: bounces to its own addresses, over real sockets.

The bridge mails a patron reply through the recording sink (the library's mail server); a DSN
for it is then sent back with smtplib from the null sender to the reply's bounce address, as
Postfix's bounce(8) would, and the lost reply goes to the library's fallback address.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bridge import verp
from bridge.store import Outgoing
from bridge.testing.smtp_sink import ReceivedMail
from bridge.web import AdminServer
from tests.conftest import SAMPLES, tenant
from tests.flows.harness import Env, StartEnv
from tests.flows.test_web import get
from tests.smtp_client import send
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

SECRET = "a-verp-secret-for-the-tests-0123456789"
REPLY_TO = "circulation@riverside.example.org"
FALLBACK = "desk@riverside.example.org"
# The sample's placeholder bounce address and failed recipient (tests/fixtures/samples).
SAMPLE_VERP = b"bounce+7-0123456789abcdef@sms.example.org"
SAMPLE_RCPT = b"circ-desk@library.example"
POSTFIX = (SAMPLES / "postfix-bounce-reply.eml").read_bytes()
QMAIL = (SAMPLES / "qmail-bounce.eml").read_bytes()

# The library takes replies on its own sending number, has a fallback address, and its mail
# server (the DSN's client, 127.0.0.1 here) is in none of its networks: a bounce is taken
# on the strength of its token alone.
CONFIG: dict[str, Any] = {
    "mail": {"verp_secret": SECRET},
    "tenants": [
        tenant(
            source_addr="12025550100",
            fallback_to=FALLBACK,
            networks=["192.0.2.0/24"],
        )
    ],
}


def dsn_for(mail: ReceivedMail, sample: bytes = POSTFIX) -> bytes:
    """The sample bounce, as the library's server would send it for `mail`."""
    data = sample.replace(SAMPLE_VERP, mail.mail_from.encode()).replace(
        SAMPLE_RCPT, mail.rcpt_tos[0].encode()
    )
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # SMTP lines end in CRLF


def mail_id(mail: ReceivedMail) -> int:
    found = verp.parse(mail.mail_from, SECRET.encode(), ["sms.example.org"])
    assert found is not None and found.valid, mail.mail_from
    return found.mail_id


async def patron_reply(e: Env, text: str = "Can I renew my book?") -> ReceivedMail:
    n = len(e.sink.mails)
    assert await e.sim.inject_mo("+12025550143", "12025550100", text) == [0]
    mails = await e.sink.wait_for(n + 1, timeout=10)
    return mails[n]


async def bounce(port: int, rcpt: str, data: bytes) -> tuple[int, str]:
    """Send `data` from the null sender; the RCPT reply if refused there, else DATA's."""
    conv = await send(port, "", [rcpt], data)
    assert conv.mail[0] == 250, conv
    if conv.rcpts[0][0] != 250:
        return conv.rcpts[0]
    assert conv.data is not None
    return conv.data


async def outbox(e: Env) -> dict[str, int]:
    return await e.bridge.store.mail_counts()


async def wait_mail_state(e: Env, mid: int, *states: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async def reached() -> bool:
        info = await e.bridge.store.get_mail(mid)
        return info is not None and info.state in states

    await eventually(reached, timeout, f"mail {mid} in {states}")


@pytest.fixture
async def e(env_factory: StartEnv) -> Env:
    return await env_factory(CONFIG)


async def test_reply_leaves_from_its_own_bounce_address_marked_auto_generated(e: Env) -> None:
    reply = await patron_reply(e)
    mid = mail_id(reply)
    assert reply.mail_from == verp.encode(mid, SECRET.encode(), "sms.example.org")
    assert reply.rcpt_tos == (REPLY_TO,)
    msg = reply.message()
    # Staff still see the patron and reply to the patron's address.
    assert msg["From"].addresses[0].addr_spec == "12025550143@sms.example.org"
    assert msg["Reply-To"] is None
    # RFC 3834 §5: no vacation/out-of-office answers to it (Exchange: the X- header).
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"


async def test_bounced_reply_is_recorded_and_resent_to_the_fallback(e: Env) -> None:
    reply = await patron_reply(e)
    mid = mail_id(reply)
    await wait_mail_state(e, mid, "sent")

    assert await bounce(e.smtp_port, reply.mail_from, dsn_for(reply)) == (
        250,
        "2.0.0 OK bounce recorded",
    )
    # Recorded before the 250 (the DSN's sender may forget it once it has its answer).
    info = await e.bridge.store.get_mail(mid)
    assert info is not None and info.state == "bounced"
    (lost,) = await e.bridge.store.lost_mail(since=0.0)
    assert lost.id == mid and lost.tenant_id == "riverside"
    assert lost.reason.startswith(f"bounced: {REPLY_TO}: 5.1.1 550 5.1.1")

    copy = (await e.sink.wait_for(2, timeout=10))[1]
    assert copy.rcpt_tos == (FALLBACK,)
    assert mail_id(copy) != mid  # its own bounce address
    msg, first = copy.message(), reply.message()
    assert msg["Message-ID"] == first["Message-ID"]  # staff answers thread with the patron
    assert msg["From"] == first["From"]
    assert msg["Resent-To"] == FALLBACK
    assert msg["Subject"].startswith(f"[Not delivered to {REPLY_TO}] SMS reply: Can I renew")
    assert "User unknown" in msg.get_content()

    # The status page and the metrics show it.
    server = AdminServer("127.0.0.1", 0, e.bridge, metrics=e.bridge.metrics)
    await server.start()
    try:
        page = (await get(server.port, "/")).body.decode()
        metrics = (await get(server.port, "/metrics")).body.decode()
    finally:
        await asyncio.wait_for(server.stop(), 5)
    assert 'id="lost"' in page and REPLY_TO in page and "5.1.1" in page
    assert 'sms_bridge_bounces_received_total{outcome="recorded"} 1.0' in metrics
    assert 'sms_bridge_mail_lost_total{kind="reply",state="bounced"} 1.0' in metrics
    assert 'sms_bridge_mail_outbox_messages{state="bounced"} 1.0' in metrics


async def test_forged_or_misaddressed_null_sender_mail_is_refused(e: Env) -> None:
    reply = await patron_reply(e)
    mid = mail_id(reply)
    await wait_mail_state(e, mid, "sent")
    other = verp.token(mid + 1, SECRET.encode())
    forged = [
        f"bounce+{mid}-{other}@sms.example.org",  # another email's token
        verp.encode(mid, b"not the bridge's secret", "sms.example.org"),
        f"bounce+{mid}-0000000000000000@sms.example.org",
    ]
    for rcpt in forged:
        code, text = await bounce(e.smtp_port, rcpt, dsn_for(reply))
        assert (code, text.split()[0]) == (550, "5.1.1"), rcpt
    # The null sender is still refused for anything but a bounce address (as before: this
    # client is in no library's networks).
    code, text = await bounce(e.smtp_port, "12025550143@sms.example.org", b"Subject: x\n\nx\n")
    assert (code, text.split()[0]) == (530, "5.7.0")
    # And a bounce address takes nothing but the null sender.
    conv = await send(e.smtp_port, "mailer@library.example", [reply.mail_from], dsn_for(reply))
    assert conv.mail[0] == 530 and conv.data is None
    info = await e.bridge.store.get_mail(mid)
    assert info is not None and info.state == "sent"
    assert len(e.sink.mails) == 1
    assert 'sms_bridge_bounces_received_total{outcome="forged"} 3.0' in (
        e.bridge.metrics.render().decode()
    )


async def test_replayed_and_non_failure_dsns_change_nothing(e: Env) -> None:
    reply = await patron_reply(e)
    mid = mail_id(reply)
    await wait_mail_state(e, mid, "sent")
    # A success report (NOTIFY=SUCCESS) and a delay warning: not failures.
    delivered = dsn_for(reply).replace(b"Action: failed", b"Action: delivered")
    delayed = dsn_for(reply).replace(b"Action: failed", b"Action: delayed")
    for data in (delivered, delayed):
        assert (await bounce(e.smtp_port, reply.mail_from, data))[0] == 250
    info = await e.bridge.store.get_mail(mid)
    assert info is not None and info.state == "sent"
    assert await outbox(e) == {"sent": 1}

    assert (await bounce(e.smtp_port, reply.mail_from, dsn_for(reply)))[0] == 250
    copy = (await e.sink.wait_for(2, timeout=10))[1]
    await wait_mail_state(e, mail_id(copy), "sent")
    before = await e.bridge.store.lost_mail(since=0.0)
    # The same DSN again, and a different one for the same email: accepted, ignored.
    for data in (dsn_for(reply), dsn_for(reply, QMAIL)):
        assert (await bounce(e.smtp_port, reply.mail_from, data))[0] == 250
    assert await e.bridge.store.lost_mail(since=0.0) == before
    counts = await outbox(e)
    assert counts.get("queued", 0) == 0 and sum(counts.values()) == 2  # no second copy
    assert len(e.sink.mails) == 2
    text = e.bridge.metrics.render().decode()
    assert 'sms_bridge_bounces_received_total{outcome="replay"} 2.0' in text
    assert 'sms_bridge_bounces_received_total{outcome="not_failure"} 2.0' in text


async def test_reply_and_its_fallback_both_bounce_and_nothing_loops(e: Env) -> None:
    reply = await patron_reply(e)
    mid = mail_id(reply)
    await wait_mail_state(e, mid, "sent")
    assert (await bounce(e.smtp_port, reply.mail_from, dsn_for(reply)))[0] == 250
    copy = (await e.sink.wait_for(2, timeout=10))[1]
    fid = mail_id(copy)
    await wait_mail_state(e, fid, "sent")

    # The fallback address is broken too; this time a non-standard (qmail) bounce.
    assert (await bounce(e.smtp_port, copy.mail_from, dsn_for(copy, QMAIL)))[0] == 250
    # Everything is decided before the 250: both lost, nothing new queued, so nothing more
    # can ever be sent (no third copy, no DSN answering the DSN).
    lost = await e.bridge.store.lost_mail(since=0.0)
    assert {(m.id, m.state) for m in lost} == {(mid, "bounced"), (fid, "bounced")}
    assert await outbox(e) == {"bounced": 2}
    assert [m.rcpt_tos for m in e.sink.mails] == [(REPLY_TO,), (FALLBACK,)]
    (fallback_lost,) = [m for m in lost if m.id == fid]
    assert fallback_lost.kind == "fallback" and fallback_lost.fallback_state is None
    assert "no mailbox here" in fallback_lost.reason


async def test_reply_refused_by_the_relay_goes_to_the_fallback_once(e: Env) -> None:
    # The library's mail server refuses the alias at RCPT: no DSN, a dead letter at once.
    e.sink.fail_with(550, "5.1.1 <circulation@riverside.example.org>: User unknown")
    assert await e.sim.inject_mo("+12025550143", "12025550100", "Is my book in?") == [0]

    async def both_dead() -> bool:  # the reply, then its fallback copy
        return (await outbox(e)).get("dead", 0) >= 2

    await eventually(both_dead, 10, "the reply and its fallback copy dead")
    assert await outbox(e) == {"dead": 2}
    lost = sorted(await e.bridge.store.lost_mail(since=0.0), key=lambda m: m.id)
    assert [(m.kind, m.rcpt_to) for m in lost] == [
        ("reply", (REPLY_TO,)),
        ("fallback", (FALLBACK,)),
    ]
    assert lost[0].fallback_state == "dead" and "User unknown" in lost[0].reason


async def test_notifications_and_reports_get_bounce_addresses_dsns_keep_the_null_sender(
    e: Env,
) -> None:
    store = e.bridge.store
    now = time.time()
    data = b"Subject: x\r\n\r\nx\r\n"
    nid = await store.enqueue_mail(Outgoing("notification", "", ("a@x.example",), data), now)
    rid = await store.enqueue_mail(Outgoing("report", "", ("b@x.example",), data), now)
    await store.enqueue_mail(Outgoing("dsn", "", ("c@x.example",), data), now)
    e.bridge.mailer.wake()
    mails = {m.rcpt_tos[0]: m for m in await e.sink.wait_for(3, timeout=10)}
    assert mail_id(mails["a@x.example"]) == nid
    assert mail_id(mails["b@x.example"]) == rid
    assert mails["c@x.example"].mail_from == ""  # RFC 5321 §4.5.5: a bounce is never bounced


async def test_generated_secret_survives_a_restart(env_factory: StartEnv) -> None:
    over = {"tenants": [tenant(source_addr="12025550100", fallback_to=FALLBACK)]}
    first = await env_factory(over)
    reply = await patron_reply(first)
    secret = await first.bridge.intake.bounces.secret()
    assert len(secret) == 64  # made once: 32 random bytes, hex
    await first.bridge.stop()
    # The same store, a new process: a DSN for mail the old one sent is still recognised.
    second = await env_factory(over)
    assert second.bridge.cfg.store.path == first.bridge.cfg.store.path
    assert await second.bridge.intake.bounces.secret() == secret
    assert (await bounce(second.smtp_port, reply.mail_from, dsn_for(reply)))[0] == 250
    found = verp.parse(reply.mail_from, secret, ["sms.example.org"])
    assert found is not None and found.valid
    info = await second.bridge.store.get_mail(found.mail_id)
    assert info is not None and info.state == "bounced"
