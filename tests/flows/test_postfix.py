"""The bridge behind and in front of a real Postfix, the mail server libraries actually run.

ILS (smtplib) → Postfix → bridge (transport map) → SMSC simulator for notices, and
bridge → Postfix → the library's Maildir for replies, bounces and notifications. What only a
real MTA shows: that Postfix turns the bridge's RCPT refusals into a DSN carrying the bridge's
own words, that it queues and redelivers while the bridge is down, and that the bridge's mail is
something Postfix accepts and delivers. The Postfix instance is described in
tests/flows/postfix.py.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import addressing
from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.model import SmsState
from bridge.testing.smsc_sim import SmscSimulator
from tests.conftest import BASE, merge, tenant
from tests.flows.postfix import SMS_DOMAIN, Postfix, postfix, postfix_server
from tests.smtp_client import notice, send
from tests.waiting import eventually

__all__ = ["postfix", "postfix_server"]

PATRON = "+12025550143"
TO = f"2025550143@{SMS_DOMAIN}"
NUMBER = "12025550100"
STEP_S = 20.0

pytestmark = pytest.mark.timeout(90)


@dataclass
class PfEnv:
    postfix: Postfix
    sim: SmscSimulator
    tmp: Path
    ils: str  # this test's ILS sender, with a mailbox of its own at Postfix (Delivered-To)
    reply_to: str  # this test's library reply address
    bridge: Bridge | None = None
    bridges: list[Bridge] = field(default_factory=list)

    async def start_bridge(self, over: dict[str, Any] | None = None) -> Bridge:
        data = merge(
            BASE,
            {
                "smtp": {"listen": f"127.0.0.1:{self.postfix.bridge_port}"},
                "smpp": {"port": self.sim.port},
                "mail": {"relay": f"127.0.0.1:{self.postfix.port}", "starttls": "never"},
                "tenants": [tenant(reply_to=self.reply_to)],
            },
        )
        data = merge(data, over or {})
        cfg = load_config_text(yaml.safe_dump(data), self.tmp)
        bridge = Bridge(cfg)
        await bridge.start()
        assert bridge.session is not None
        await bridge.session.wait_bound(timeout=5)
        self.bridge = bridge
        self.bridges.append(bridge)
        return bridge

    async def ils_sends(
        self, body: str = "Your hold is ready at Main Branch.", **hdrs: str
    ) -> None:
        """The ILS hands a notice to its mail server, which must take it (250 queued as)."""
        conv = await send(self.postfix.port, self.ils, [TO], notice(body, From=self.ils, **hdrs))
        assert conv.data is not None and conv.data[0] == 250, conv

    async def wait_mail(self, address: str, n: int = 1) -> list[EmailMessage]:
        return await asyncio.to_thread(self.postfix.wait_mail, address, n, STEP_S)

    async def wait_sms_state(self, *states: SmsState) -> Any:
        """The one notice of this test reaches one of `states` in the bridge's store."""
        assert self.bridge is not None
        bridge = self.bridge
        recs: list[Any] = []

        async def reached() -> Any:
            nonlocal recs
            rows = [r[0] for r in _db(self.tmp, "SELECT queue_id FROM sms")]
            recs = [await bridge.store.get_sms(q) for q in rows]
            hits = [r for r in recs if r is not None and r.state in states]
            return hits[0] if hits else None

        return await eventually(reached, STEP_S, lambda: f"a notice in {states}: {recs}")


def _db(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{tmp / 'bridge.db'}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def _local(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]


@pytest.fixture
async def pf(
    postfix: Postfix, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[PfEnv]:
    """Postfix (module-wide) + an SMSC simulator; the test starts the bridge when it wants."""
    sim = SmscSimulator()
    await sim.start()
    name = _local(request)
    env = PfEnv(
        postfix,
        sim,
        tmp_path,
        ils=f"ils-{name}@riverside.example.org",
        reply_to=f"circ-{name}@riverside.example.org",
    )
    try:
        yield env
    finally:
        for bridge in env.bridges:
            await bridge.stop()
        await sim.stop()


def _flat(text: str) -> str:
    """Postfix folds long diagnostic lines in a DSN: compare with whitespace collapsed."""
    return re.sub(r"\s+", " ", text)


def _dsn_parts(msg: EmailMessage) -> tuple[str, str]:
    """(human-readable text, message/delivery-status fields) of an RFC 3464 report."""
    assert msg.get_content_type() == "multipart/report", msg
    assert msg.get_param("report-type") == "delivery-status"
    human, status = msg.get_payload()[:2]  # type: ignore[misc]
    fields = "".join(str(part) for part in status.get_payload())
    return _flat(human.get_content()), _flat(fields)


async def test_notice_through_postfix_reaches_the_handset(pf: PfEnv) -> None:
    await pf.start_bridge()
    await pf.ils_sends("Your hold is ready at Main Branch.")
    (sms,) = await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.destination == PATRON and sms.text == "Your hold is ready at Main Branch."
    await pf.wait_sms_state(SmsState.DELIVERED)
    # Postfix delivered it over the transport map, to the bridge's port, and got its 250.
    line = await asyncio.to_thread(
        pf.postfix.wait_log,
        rf"to=<{re.escape(TO)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{pf.postfix.bridge_port}"
        r".*status=sent \(250 ",
    )
    assert line


async def test_8bit_utf8_notice_through_postfix_arrives_intact(pf: PfEnv) -> None:
    """An ILS sending raw UTF-8 (Content-Transfer-Encoding: 8bit): Postfix passes it on with
    BODY=8BITMIME, or converts it to quoted-printable when the next hop does not offer
    8BITMIME (RFC 6152 §3); either way the patron reads the same text."""
    await pf.start_bridge()
    text = "Café Łódź: your hold is ready ✓"
    raw = (
        f"From: {pf.ils}\r\nTo: {TO}\r\nSubject: Hold\r\nMessage-ID: <u8@riverside.example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n" + text + "\r\n"
    ).encode()
    conv = await send(pf.postfix.port, pf.ils, [TO], raw)
    assert conv.data is not None and conv.data[0] == 250, conv
    (sms,) = await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.text == text and sms.data_coding == 8


async def test_invalid_number_bounces_to_the_ils_with_the_bridges_reason(pf: PfEnv) -> None:
    await pf.start_bridge()
    bad = f"555@{SMS_DOMAIN}"
    with pytest.raises(addressing.AddressError) as refused:
        addressing.local_part_to_e164("555", "US")
    reason = refused.value.reason
    conv = await send(pf.postfix.port, pf.ils, [bad], notice(From=pf.ils, To=bad))
    assert conv.data is not None and conv.data[0] == 250  # Postfix queues first, asks later

    (dsn,) = await pf.wait_mail(pf.ils)
    human, fields = _dsn_parts(dsn)
    # Postfix quotes the bridge: "host 127.0.0.1[127.0.0.1] said: 553 5.1.3 <reason>".
    assert f"553 5.1.3 {_flat(reason)}" in human, human
    assert "Action: failed" in fields and "Status: 5.1.3" in fields, fields
    assert f"Diagnostic-Code: smtp; 553 5.1.3 {_flat(reason)}" in fields, fields
    assert pf.sim.messages == []


async def test_one_mail_two_numbers_one_refused_partial_bounce(pf: PfEnv) -> None:
    """Postfix delivers a multi-recipient mail in one transaction with one RCPT each: the
    bridge's per-recipient refusal bounces only that recipient, the other text goes out."""
    await pf.start_bridge()
    bad, good = f"555@{SMS_DOMAIN}", f"2025550144@{SMS_DOMAIN}"
    conv = await send(pf.postfix.port, pf.ils, [good, bad], notice(From=pf.ils, To=good))
    assert conv.data is not None and conv.data[0] == 250
    (sms,) = await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.destination == "+12025550144"
    (dsn,) = await pf.wait_mail(pf.ils)
    _, fields = _dsn_parts(dsn)
    assert f"Final-Recipient: rfc822; {bad}" in fields and good not in fields, fields


async def test_opted_out_number_bounces_and_stop_notifies_the_library(pf: PfEnv) -> None:
    await pf.start_bridge()
    assert await pf.sim.inject_mo(PATRON, NUMBER, "STOP") == [0]
    # The opt-out notification reaches the library's reply_to through Postfix.
    (note,) = await pf.wait_mail(pf.reply_to)
    assert "opted out of text notices" in str(note["Subject"])
    assert note["Auto-Submitted"] == "auto-generated"
    assert "+1 202-555-0143" in note.get_content()  # type: ignore[attr-defined]

    await pf.ils_sends()
    (dsn,) = await pf.wait_mail(pf.ils)
    human, fields = _dsn_parts(dsn)
    assert "550 5.7.1 +1 202-555-0143 opted out of text messages from this library" in human
    assert "update the patron's notice preference in the ILS" in human
    assert "Status: 5.7.1" in fields
    # Only the STOP answer went to the handset, never the notice.
    assert [m.text for m in pf.sim.messages if "hold" in m.text.lower()] == []


async def test_bridge_down_postfix_queues_and_flush_delivers(pf: PfEnv) -> None:
    await pf.ils_sends("Renewal due Friday.")
    # Nobody on the bridge port yet: Postfix defers (a 4xx-class state, the mail stays queued).
    await asyncio.to_thread(
        pf.postfix.wait_log, rf"to=<{re.escape(TO)}>.*status=deferred \(connect to 127\.0\.0\.1"
    )
    queued = await asyncio.to_thread(pf.postfix.queue)
    assert len(queued) == 1 and queued[0]["queue_name"] == "deferred"

    await pf.start_bridge()
    await asyncio.to_thread(pf.postfix.flush)
    (sms,) = await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert sms.text == "Renewal due Friday."
    await pf.wait_sms_state(SmsState.DELIVERED)
    assert await asyncio.to_thread(pf.postfix.queue) == []


async def test_patron_reply_reaches_the_library_mailbox(pf: PfEnv) -> None:
    await pf.start_bridge()
    await pf.ils_sends(Subject="Hold ready for Jane")
    await pf.sim.wait_for_messages(1, timeout=STEP_S)
    await pf.wait_sms_state(SmsState.DELIVERED)

    assert await pf.sim.inject_mo(PATRON, NUMBER, "Can you keep it until Monday?") == [0]
    (reply,) = await pf.wait_mail(pf.reply_to)
    assert "Can you keep it until Monday?" in str(reply.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    # Postfix's virtual(8) wrote it, after a real SMTP hop from the bridge's mailer.
    assert reply["Delivered-To"] == pf.reply_to
    assert "by mx.riverside.example.org" in str(reply["Received"])
    # RFC 3834 marks it automatic (no vacation replies) while staff can still answer: From is
    # the patron's address at the SMS domain; the envelope sender Postfix recorded is the
    # bridge's own bounce address, so a bounce comes back to the bridge, not to the patron.
    assert reply["Auto-Submitted"] == "auto-generated"
    assert addressing.split_address(str(reply["From"]).split("<")[-1].rstrip(">"))[1] == (
        SMS_DOMAIN
    )
    assert str(reply["Return-Path"]).startswith("<bounce+")


async def test_failed_receipt_bounces_to_the_ils_mailbox(pf: PfEnv) -> None:
    pf.sim.set_scenario("fail_receipts")
    await pf.start_bridge()
    await pf.ils_sends(Subject="Overdue notice")
    rec = await pf.wait_sms_state(SmsState.FAILED)
    assert "could not deliver" in (rec.reason or "")
    (dsn,) = await pf.wait_mail(pf.ils)
    human, fields = _dsn_parts(dsn)
    assert "Overdue notice" in human and "Action: failed" in fields
    # The bridge's DSN has the null envelope sender (RFC 3464 §2, RFC 5321 §4.5.5).
    assert dsn["Return-Path"] == "<>"


async def test_reply_to_unknown_library_address_comes_back_as_failed(pf: PfEnv) -> None:
    """The library's reply_to does not exist behind Postfix: Postfix accepts the reply, its
    virtual(8) bounces it to the bridge's envelope sender (the SMS domain, so back through the
    transport map), and the bridge should take that DSN in and mark the reply failed instead of
    believing the 250 it got at the relay."""
    pf.reply_to = "closed-desk@ashland.example.org"  # not in Postfix's mailbox map
    await pf.start_bridge()
    await pf.ils_sends()
    await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert await pf.sim.inject_mo(PATRON, NUMBER, "Is the library open Sunday?") == [0]
    bounced_qid = (
        await asyncio.to_thread(
            pf.postfix.wait_log,
            r"([0-9A-F]+): to=<closed-desk@ashland\.example\.org>.*status=bounced",
        )
    ).group(1)
    # Postfix's DSN about it went to the bridge's envelope sender, on the SMS domain (the log is
    # the module's: pick the DSN of this reply, not an earlier test's)...
    dsn_qid = (
        await asyncio.to_thread(
            pf.postfix.wait_log, rf"{bounced_qid}: sender non-delivery notification: ([0-9A-F]+)"
        )
    ).group(1)
    outcome = await asyncio.to_thread(
        pf.postfix.wait_log,
        rf"{dsn_qid}: to=<([^>]*)>, relay=([^,]*),.*status=(sent|bounced|deferred) (.*)",
    )
    rcpt, relay, status, said = outcome.groups()
    assert rcpt.endswith(f"@{SMS_DOMAIN}"), rcpt
    assert relay == f"127.0.0.1[127.0.0.1]:{pf.postfix.bridge_port}", relay
    # ...and the bridge took it in (today it refuses the null sender: status=bounced).
    assert status == "sent", said
    # ...and the reply is no longer counted as sent.
    assert pf.bridge is not None
    store = pf.bridge.store
    counts: dict[str, int] = {}

    async def no_longer_sent() -> bool:
        nonlocal counts
        counts = await store.mail_counts()
        return counts.get("sent", 0) == 0 and sum(counts.values()) > 0

    await eventually(no_longer_sent, STEP_S, lambda: f"the reply no longer sent: {counts}")
    assert counts == {**counts, "bounced": 1}, counts


async def _bounced_dsns(pf: PfEnv, n: int, since: int) -> None:
    """Wait until Postfix has handed `n` DSNs about the bridge's mail back to the bridge, counted
    in the maillog from offset `since` (the log is the whole module's)."""
    pattern = re.compile(
        rf"to=<bounce\+[^>]*@{re.escape(SMS_DOMAIN)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
        rf"{pf.postfix.bridge_port},.*status=sent"
    )
    await eventually(
        lambda: len(pattern.findall(pf.postfix.log[since:])) >= n,
        STEP_S,
        f"Postfix to return {n} DSNs to the bridge",
    )


async def test_bounced_reply_goes_to_the_fallback_address_through_postfix(pf: PfEnv) -> None:
    """The reply bounces; the bridge takes Postfix's DSN and sends the reply once more, to the
    library's fallback address, where a person reads it (README: a lost reply)."""
    pf.reply_to = "closed-desk@ashland.example.org"
    fallback = pf.ils.replace("ils-", "fallback-")  # riverside takes any local part
    await pf.start_bridge({"tenants": [tenant(reply_to=pf.reply_to, fallback_to=fallback)]})
    await pf.ils_sends()
    await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert await pf.sim.inject_mo(PATRON, NUMBER, "Can I renew my book?") == [0]
    (copy,) = await pf.wait_mail(fallback)
    assert "Can I renew my book?" in copy.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert copy["Subject"].startswith("[Not delivered to")
    assert pf.bridge is not None
    counts = await pf.bridge.store.mail_counts()
    assert counts.get("bounced") == 1 and counts.get("sent") == 1, counts


async def test_a_bounced_fallback_ends_there_no_mail_loop(pf: PfEnv) -> None:
    """Reply and fallback copy both bounce at Postfix: two DSNs come back, both are recorded,
    and the bridge sends nothing more (it never answers a bounce, and a copy has no copy)."""
    pf.reply_to = "closed-desk@ashland.example.org"
    log_from = len(pf.postfix.log)
    await pf.start_bridge(
        {"tenants": [tenant(reply_to=pf.reply_to, fallback_to="gone@ashland.example.org")]}
    )
    await pf.ils_sends()
    await pf.sim.wait_for_messages(1, timeout=STEP_S)
    assert await pf.sim.inject_mo(PATRON, NUMBER, "Is the library open Sunday?") == [0]
    await _bounced_dsns(pf, 2, log_from)
    assert pf.bridge is not None
    store = pf.bridge.store
    counts: dict[str, int] = {}

    async def both_bounced() -> bool:
        nonlocal counts
        counts = await store.mail_counts()
        return counts.get("bounced", 0) >= 2

    await eventually(both_bounced, STEP_S, lambda: f"both emails bounced: {counts}")
    # Both emails ended bounced; nothing else was ever queued, and the mailer is idle.
    assert {k: v for k, v in counts.items() if v} == {"bounced": 2}, counts
