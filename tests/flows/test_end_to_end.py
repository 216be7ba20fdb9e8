"""The main job end to end: email in → SMS at the simulator → receipts, bounces and replies."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from pathlib import Path

import pytest

from bridge.model import SmsState
from tests.conftest import ASHLAND, SAMPLES, tenant
from tests.flows.harness import Env, StartEnv
from tests.smtp_client import notice, send
from tests.waiting import eventually

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"

EXPECTED = {
    "koha-hold-qp.eml": 'Riverside Public Library: Jane, your hold "The Overstory" is ready for '
    "pickup at Main Branch until 11/23. Questions? 202-555-0100",
    "evergreen-hold-ready.eml": "Robert:Civil War battlefields @ Wood Library. Please pickup "
    "within 7 days",
    "exchange-stray-soft-breaks.eml": "Maple Heights Library: 1 item is due on 11/24/2026: "
    "Where the Crawdads Sing. Renew online or call us.",
}


async def test_notice_reaches_handset_and_is_delivered(env: Env) -> None:
    conv = await send(env.smtp_port, FROM, [TO], notice("Your hold is ready at Main Branch."))
    (qid,) = conv.queue_ids
    (sms,) = await env.sim.wait_for_messages(1, timeout=5)
    assert sms.destination == "+12025550143" and sms.source == "+12025550100"
    assert sms.text == "Your hold is ready at Main Branch." and sms.segments == 1
    rec = await env.wait_state(qid, SmsState.DELIVERED)
    assert rec.segments == 1 and rec.coding == "gsm7"


@pytest.mark.parametrize("sample", sorted(EXPECTED))
async def test_samples_arrive_as_the_patron_should_see_them(env: Env, sample: str) -> None:
    raw = (SAMPLES / sample).read_bytes()
    await send(env.smtp_port, FROM, [TO], raw)
    (sms,) = await env.sim.wait_for_messages(1, timeout=5)
    assert sms.text == EXPECTED[sample]
    assert sms.segments == 1 and sms.data_coding == 0  # GSM-7, one segment


async def test_long_notice_is_concatenated_and_reassembled(env: Env) -> None:
    body = "Overdue: " + ", ".join(f"Book title number {i}" for i in range(12)) + ". Euro fee 2€."
    conv = await send(env.smtp_port, FROM, [TO], notice(body))
    (qid,) = conv.queue_ids
    (sms,) = await env.sim.wait_for_messages(1, timeout=5)
    assert sms.text == body and sms.segments == 2
    rec = await env.wait_state(qid, SmsState.DELIVERED)
    assert rec.segments == 2


async def test_permanent_reject_bounces_to_the_library(env: Env) -> None:
    env.sim.set_scenario("reject:0x0B")
    conv = await send(env.smtp_port, FROM, [TO], notice(Subject="Hold ready for Jane"))
    (qid,) = conv.queue_ids
    rec = await env.wait_state(qid, SmsState.FAILED)
    assert rec.reason == "the carrier rejected the destination number"
    (dsn,) = await env.sink.wait_for(1, timeout=10)
    assert dsn.mail_from == "" and dsn.rcpt_tos == (FROM,)
    msg = dsn.message()
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["In-Reply-To"] == "<n1@riverside.example.org>"
    human = msg.get_payload()[0].get_content()
    assert "+1 202-555-0143" in human and "Hold ready for Jane" in human
    assert "phone number in the ILS" in human
    status = msg.get_payload()[1]
    fields = status.get_payload()[1]
    assert fields["Action"] == "failed" and fields["Status"] == "5.1.1"
    assert "ESME_RINVDSTADR" in fields["Diagnostic-Code"]


async def test_no_bounce_for_null_sender(env_factory: StartEnv) -> None:
    e = await env_factory({"tenants": [{**tenant(), "senders": ["*@riverside.example.org", "*"]}]})
    e.sim.set_scenario("reject:0x0B")
    conv = await send(e.smtp_port, "", [TO], notice())
    (qid,) = conv.queue_ids
    await e.wait_state(qid, SmsState.FAILED)
    # A bounce is queued in the failure's own transaction: none is queued, none will be sent.
    assert await e.bridge.store.mail_counts() == {}
    assert e.sink.mails == []


async def test_failed_receipt_bounces(env_factory: StartEnv) -> None:
    e = await env_factory(sim_kwargs={"scenario": "fail_receipts"})
    conv = await send(e.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    rec = await e.wait_state(qid, SmsState.FAILED)
    assert "could not deliver" in (rec.reason or "")
    (dsn,) = await e.sink.wait_for(1, timeout=10)
    assert dsn.message().get_content_type() == "multipart/report"


async def test_hex_ids_in_resp_decimal_in_receipt_still_match(env_factory: StartEnv) -> None:
    e = await env_factory(sim_kwargs={"hex_ids_in_resp": True, "first_message_id": 4000})
    conv = await send(e.smtp_port, FROM, [TO], notice())
    await e.wait_state(conv.queue_ids[0], SmsState.DELIVERED)


async def test_outage_intake_keeps_accepting_and_backlog_drains(env: Env) -> None:
    port = env.sim.port
    await env.sim.stop()
    conv = await send(env.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids  # accepted while the SMSC is away
    rec = await env.bridge.store.get_sms(qid)
    assert rec is not None and rec.state is SmsState.QUEUED and rec.attempts == 0
    await env.restart_sim()
    assert env.sim.port == port
    (sms,) = await env.sim.wait_for_messages(1, timeout=10)
    assert sms.destination == "+12025550143"
    rec = await env.wait_state(qid, SmsState.DELIVERED)
    assert rec.attempts == 1  # the outage used up no attempt


async def test_throttle_storm_is_retried_not_failed(env: Env) -> None:
    env.sim.set_scenario("throttle_storm:5")
    convs = [
        await send(env.smtp_port, FROM, [TO], notice(f"n {i}", Message_ID=f"<t{i}@x>"))
        for i in range(3)
    ]
    for conv in convs:
        await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    assert len(env.sim.messages) == 3


async def test_no_response_is_retried_and_delivered(env: Env) -> None:
    env.sim.set_scenario("no_response")
    conv = await send(env.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    await env.sim.wait_for(lambda: len(env.sim.submits) >= 1, timeout=5)

    async def timed_out() -> bool:  # smpp.response_timeout_s (2 s in tests) has passed
        rec = await env.bridge.store.get_sms(qid)
        return rec is not None and "no answer from the SMSC" in (rec.reason or "")

    await eventually(timed_out, 10, "the submit_sm to time out")
    env.sim.set_scenario("ok")
    rec = await env.wait_state(qid, SmsState.DELIVERED, timeout=15)
    assert rec.attempts >= 2


async def test_message_older_than_max_age_expires_and_bounces(env_factory: StartEnv) -> None:
    e = await env_factory({"smpp": {"max_age": 0.5}})
    await e.sim.stop()
    conv = await send(e.smtp_port, FROM, [TO], notice())
    (qid,) = conv.queue_ids
    queued = await e.bridge.store.get_sms(qid)
    assert queued is not None
    # Time is the input here: the text must be older than smpp.max_age (0.5 s) when the SMSC
    # comes back.
    await eventually(lambda: time.time() > queued.created_at + 0.5, 5, "the text past max_age")
    await e.restart_sim()
    rec = await e.wait_state(qid, SmsState.EXPIRED, timeout=10)
    assert "smpp.max_age" in (rec.reason or "")
    (dsn,) = await e.sink.wait_for(1, timeout=10)
    fields = dsn.message().get_payload()[1].get_payload()[1]
    assert fields["Status"].startswith("5.4.7")
    assert e.sim.messages == []


async def test_rate_never_exceeds_max_tps(env_factory: StartEnv) -> None:
    e = await env_factory({"smpp": {"max_tps": 20}})
    rcpts = [f"20255501{n:02d}@sms.example.org" for n in range(10, 70)]
    for i in range(0, 60, 20):
        await send(e.smtp_port, FROM, rcpts[i : i + 20], notice(Message_ID=f"<r{i}@x>"))
    await e.sim.wait_for_messages(60, timeout=20)
    times = sorted(t for t, _ in e.sim.submits)
    worst = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert worst <= 21  # max_tps plus the one token a bucket may hold at the window edge


async def test_patron_reply_is_emailed_threaded_with_the_notice(env: Env) -> None:
    await send(env.smtp_port, FROM, [TO], notice(Subject="Hold ready", Message_ID="<hold1@lib>"))
    await env.sim.wait_for_messages(1, timeout=5)
    statuses = await env.sim.inject_mo("+12025550143", "12025550100", "Can you keep it till Sat?")
    assert statuses == [0]
    (mail,) = await env.sink.wait_for(1, timeout=10)
    msg = mail.message()
    assert mail.rcpt_tos == ("circulation@riverside.example.org",)
    assert msg["In-Reply-To"] == "<hold1@lib>"
    assert "<hold1@lib>" in msg["References"]
    assert msg["From"].addresses[0].addr_spec == "12025550143@sms.example.org"
    assert msg["From"].addresses[0].display_name == "SMS from +1 202-555-0143"
    assert msg["Subject"].startswith("SMS reply: Can you keep it")
    body = msg.get_content()
    assert body.startswith("Can you keep it till Sat?")
    assert "> Your hold is ready" in body


async def test_redelivered_mo_gives_one_email(env: Env) -> None:
    await send(env.smtp_port, FROM, [TO], notice())
    await env.sim.wait_for_messages(1, timeout=5)
    for _ in range(2):  # the SMSC missed our resp and sends the same deliver_sm again
        assert await env.sim.inject_mo("+12025550143", "12025550100", "Thanks!") == [0]
    await env.sink.wait_for(1, timeout=10)
    # Each deliver_sm_resp came after its commit, and the email is queued in that commit: one
    # email in the outbox is the proof that the second copy was taken for a redelivery.
    assert sum((await env.bridge.store.mail_counts()).values()) == 1
    assert len(env.sink.mails) == 1


async def test_long_mo_is_reassembled(env: Env) -> None:
    await send(env.smtp_port, FROM, [TO], notice())
    await env.sim.wait_for_messages(1, timeout=5)
    text = "Hello library, " + "I will be late returning the books. " * 4
    for concat in ("udh8", "udh16", "sar"):
        statuses = await env.sim.inject_mo(
            "+12025550143", "12025550100", text + concat, concat=concat
        )  # type: ignore[arg-type]
        assert len(statuses) == 2 and set(statuses) == {0}
    mails = await env.sink.wait_for(3, timeout=10)
    assert sorted(m.message().get_content().split("\n")[0].strip() for m in mails) == sorted(
        (text + c).strip() for c in ("udh8", "udh16", "sar")
    )


async def test_mo_store_failure_asks_smsc_to_retry(env: Env) -> None:
    await env.bridge.store.run(lambda conn: conn.execute("PRAGMA query_only=ON"))
    statuses = await env.sim.inject_mo("+12025550143", "12025550100", "hello?")
    assert statuses == [0x64]  # ESME_RX_T_APPN: not committed, the SMSC keeps it


async def test_staff_reply_reaches_the_patron_as_clean_text(env: Env) -> None:
    await send(env.smtp_port, FROM, [TO], notice(Message_ID="<hold2@lib>"))
    await env.sim.wait_for_messages(1, timeout=5)
    await env.sim.inject_mo("+12025550143", "12025550100", "Can you hold it until Saturday?")
    (reply,) = await env.sink.wait_for(1, timeout=10)
    reply_id = reply.message()["Message-ID"]
    raw = (SAMPLES / "outlook-staff-reply.eml").read_bytes()
    staff = email.message_from_bytes(raw, policy=email.policy.default)
    del staff["In-Reply-To"]
    staff["In-Reply-To"] = reply_id
    conv = await send(
        env.smtp_port, "maria@riverside.example.org", [TO], staff.as_bytes(policy=email.policy.SMTP)
    )
    assert conv.data is not None and conv.data[0] == 250
    msgs = await env.sim.wait_for_messages(2, timeout=5)
    assert msgs[1].text == "Hi! Yes, we can hold it until Saturday. See you then."


async def test_reply_routes_to_the_library_that_texted_last(env_factory: StartEnv) -> None:
    other = ASHLAND
    e = await env_factory({"tenants": [tenant(), other]})
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)
    await send(e.smtp_port, "ils@ashland.example.org", [TO], notice(Message_ID="<a1@x>"))
    await e.sim.wait_for_messages(2, timeout=5)
    await e.sim.inject_mo("+12025550143", "12025550100", "Which library is this?")
    (mail,) = await e.sink.wait_for(1, timeout=10)
    assert mail.rcpt_tos == ("desk@ashland.example.org",)


async def test_noreply_library_gets_canned_answer_to_patron(env_factory: StartEnv) -> None:
    e = await env_factory({"tenants": [{**tenant(), "reply_to": "noreply@riverside.example.org"}]})
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)
    await e.sim.inject_mo("+12025550143", "12025550100", "hello")
    msgs = await e.sim.wait_for_messages(2, timeout=5)
    assert "cannot read replies" in msgs[1].text
    assert e.sink.mails == []


async def test_relay_down_then_up_loses_no_mail(env: Env) -> None:
    env.sink.fail_with(451, "try later")
    await send(env.smtp_port, FROM, [TO], notice())
    await env.sim.wait_for_messages(1, timeout=5)
    await env.sim.inject_mo("+12025550143", "12025550100", "hello")

    async def refused_once() -> bool:
        rows = await env.bridge.store.run(
            lambda conn: conn.execute("SELECT attempts FROM mail_outbox").fetchall()
        )
        return bool(rows) and rows[0][0] >= 1

    await eventually(refused_once, 10, "the relay to refuse the reply once")
    counts = await env.bridge.store.mail_counts()
    assert counts.get("queued") == 1
    env.sink.fail_with(None)
    rows = await env.bridge.store.run(
        lambda conn: conn.execute("UPDATE mail_outbox SET next_attempt_at=0").rowcount
    )
    assert rows == 1
    env.bridge.mailer.wake()
    await env.sink.wait_for(1, timeout=10)

    async def sent() -> bool:
        return await env.bridge.store.mail_counts() == {"sent": 1}

    await eventually(sent, 5, "the reply marked sent")


async def test_receipt_goes_to_its_own_message_not_a_base_twin(env_factory: StartEnv) -> None:
    """Ids 10 and 16 are each other's hex/decimal forms; an exact id always wins, and a receipt
    that overtakes its submit_sm_resp waits for it instead of landing on the twin."""
    e = await env_factory(sim_kwargs={"receipts": False})
    ids = []
    for i in range(16):
        conv = await send(e.smtp_port, FROM, [TO], notice(f"Notice {i}", Message_ID=f"<q{i}@x>"))
        ids.append(conv.queue_ids[0])
    await e.sim.wait_for_messages(16, timeout=10)
    for qid in ids:
        await e.wait_state(qid, SmsState.SUBMITTED)
    by_smsc = {m.message_ids[0]: m.text for m in e.sim.messages}
    ten = ids[[m.text for m in e.sim.messages].index(by_smsc["10"])]
    sixteen = ids[[m.text for m in e.sim.messages].index(by_smsc["16"])]
    assert await e.sim.send_receipt("10", "UNDELIV", "001") == 0
    await e.wait_state(ten, SmsState.FAILED)
    rec = await e.bridge.store.get_sms(sixteen)
    assert rec is not None and rec.state is SmsState.SUBMITTED


async def test_receipt_before_its_submit_resp_is_held_and_applied(env_factory: StartEnv) -> None:
    e = await env_factory(sim_kwargs={"response_delay_s": 0.3, "scenario": "fail_receipts"})
    conv = await send(e.smtp_port, FROM, [TO], notice())
    rec = await e.wait_state(conv.queue_ids[0], SmsState.FAILED)
    assert "could not deliver" in (rec.reason or "")
    (dsn,) = await e.sink.wait_for(1, timeout=10)
    assert dsn.message().get_content_type() == "multipart/report"


async def test_send_test_command_through_the_running_bridge(env: Env) -> None:
    import yaml

    from bridge.cli import main
    from tests.conftest import BASE, merge

    cfg_file = env.tmp / "cli.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            merge(
                BASE,
                {
                    "smtp": {"listen": f"127.0.0.1:{env.smtp_port}"},
                    "store": {"path": str(env.bridge.cfg.store.path)},
                },
            )
        )
    )
    code = await asyncio.to_thread(
        main, ["send-test", "-c", str(cfg_file), "2025550143", "--text", "Ping", "--wait", "10"]
    )
    assert code == 0
    (sms,) = await env.sim.wait_for_messages(1, timeout=5)
    assert sms.text == "Ping" and sms.destination == "+12025550143"


async def test_disk_full_answers_451_and_recovers(env: Env) -> None:
    def fill(conn: object) -> None:
        import sqlite3

        assert isinstance(conn, sqlite3.Connection)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL on the next new page

    await env.bridge.store.run(fill)
    body = "x" * 900  # a few of these need new pages
    codes = []
    for i in range(8):
        conv = await send(env.smtp_port, FROM, [TO], notice(f"{body} {i}", Message_ID=f"<d{i}@x>"))
        codes.append(conv.data[0] if conv.data else conv.rcpts[0][0])
    assert 451 in codes and 500 not in codes
    await env.bridge.store.run(lambda conn: conn.execute("PRAGMA max_page_count=1073741823"))
    conv = await send(env.smtp_port, FROM, [TO], notice("after", Message_ID="<after@x>"))
    assert conv.data is not None and conv.data[0] == 250
    await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)


async def test_smsc_drops_the_link_mid_stream_nothing_lost(env: Env) -> None:
    env.sim.set_scenario("drop_after:4")
    rcpts = [f"20255501{n:02d}@sms.example.org" for n in range(20, 32)]
    conv = await send(env.smtp_port, FROM, rcpts, notice("Closing early today"))
    for qid in conv.queue_ids:
        await env.wait_state(qid, SmsState.DELIVERED, timeout=15)
    assert env.sim.binds >= 2  # it reconnected
    assert {m.destination for m in env.sim.messages} == {f"+1{r[:10]}" for r in rcpts}


async def test_only_the_owning_library_may_answer_and_never_an_auto_reply(
    env_factory: StartEnv,
) -> None:
    other = ASHLAND
    e = await env_factory({"tenants": [tenant(), other]})
    await send(e.smtp_port, FROM, [TO], notice())
    await e.sim.wait_for_messages(1, timeout=5)
    await e.sim.inject_mo("+12025550143", "12025550100", "Is my book in?")
    (reply,) = await e.sink.wait_for(1, timeout=10)
    reply_id = reply.message()["Message-ID"]
    answer = notice("Yes it is.", In_Reply_To=reply_id, Message_ID="<ans@x>")
    conv = await send(e.smtp_port, "staff@ashland.example.org", [TO], answer)
    assert conv.data is not None and conv.data[0] == 550
    assert "belongs to another library" in conv.data[1]
    ooo = notice("I am out of the office.", In_Reply_To=reply_id, Auto_Submitted="auto-replied")
    conv = await send(e.smtp_port, "maria@riverside.example.org", [TO], ooo)
    assert conv.data is not None and conv.data[0] == 550
    assert "Automatic replies" in conv.data[1]
    # Refused at DATA, so nothing was committed: the store holds only the first text.
    assert sum((await e.bridge.store.counts()).values()) == 1
    assert len(e.sim.messages) == 1


async def test_long_reply_missing_a_part_is_passed_on_after_the_timeout(
    env_factory: StartEnv,
) -> None:
    from bridge.smpp.pdu import DeliverSm

    env = await env_factory({"inbound": {"reassembly_timeout_s": 0.5}})
    await send(env.smtp_port, FROM, [TO], notice())
    await env.sim.wait_for_messages(1, timeout=5)
    udh = bytes([0x05, 0x00, 0x03, 0x42, 0x03, 0x01])  # part 1 of 3, reference 0x42

    def part(seq: int, text: bytes) -> DeliverSm:
        return DeliverSm(
            sequence=seq,
            source_addr="12025550143",
            source_addr_ton=1,
            destination_addr="12025550100",
            esm_class=0x40,
            data_coding=0,
            short_message=udh[:5] + bytes([seq]) + text,
            message_payload=None,
            receipted_message_id=None,
            message_state=None,
            network_error_code=None,
            sar_msg_ref_num=None,
            sar_total_segments=None,
            sar_segment_seqnum=None,
        )

    inbound = env.bridge.inbound
    assert await inbound.handle(part(1, b"I will bring the books ")) == 0
    assert await inbound.handle(part(3, b"on Saturday.")) == 0  # part 2 never comes
    assert await inbound.sweep(time.time()) == 0  # not yet timed out
    # the bridge's own sweeper passes it on once inbound.reassembly_timeout_s has passed
    (mail,) = await env.sink.wait_for(1, timeout=10)
    assert mail.message().get_content().startswith("I will bring the books [...] on Saturday.")


async def test_smpp_over_tls_with_a_private_ca(env_factory: StartEnv, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "smsc.pem", tmp_path / "smsc.key"
    subprocess.run(  # noqa: ASYNC221 - a one-off certificate before anything starts
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    e = await env_factory(
        {"smpp": {"tls": True, "tls_ca_file": str(cert)}},
        sim_kwargs={"tls_cert": str(cert), "tls_key": str(key)},
    )
    conv = await send(e.smtp_port, FROM, [TO], notice("Over TLS"))
    await e.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    assert [m.text for m in e.sim.messages] == ["Over TLS"]


async def test_same_message_id_again_is_answered_as_a_duplicate_not_sent_again(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    first = await send(env.smtp_port, FROM, [TO], notice())
    (qid,) = first.queue_ids
    await env.sim.wait_for_messages(1, timeout=5)
    with caplog.at_level("INFO", logger="bridge.intake"):
        again = await send(env.smtp_port, FROM, [TO], notice())
    assert again.data is not None
    code, reply = again.data
    assert code == 250 and "Duplicate" in reply and "not sent again" in reply and qid in reply
    assert again.queue_ids == [qid]
    (line,) = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert f"duplicate of queue_id={qid}" in line and "not sent again" in line
    # one to the old number and one new: both named, the duplicate marked
    mixed = await send(env.smtp_port, FROM, [TO, "2025550144@sms.example.org"], notice(To=TO))
    assert mixed.data is not None and f"duplicates, not sent again: {qid}" in mixed.data[1]
    assert len(mixed.queue_ids) == 2 and mixed.queue_ids[0] == qid


async def test_rcpt_after_a_refused_mail_gets_an_enhanced_code(env: Env) -> None:
    import smtplib

    def talk() -> tuple[int, int, bytes]:
        with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10) as s:
            s.ehlo("ils.riverside.example.org")
            mail_code, _ = s.mail("someone@elsewhere.example.com")
            code, reply = s.rcpt(TO)
            return mail_code, code, reply

    mail_code, code, reply = await asyncio.to_thread(talk)
    assert mail_code == 550
    assert code == 503 and reply.startswith(b"5.5.1 "), reply


async def _control(port: int, request: dict[str, object]) -> dict[str, object]:
    """One `sms-bridge simulate` request, over the simulator's SMPP port."""
    import json

    from bridge.testing.smsc_sim import CONTROL_MAGIC

    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(CONTROL_MAGIC + json.dumps(request).encode() + b"\n")
        answer: dict[str, object] = json.loads(await asyncio.wait_for(reader.readline(), 10))
        return answer
    finally:
        writer.close()


async def test_simulator_control_line_acts_as_the_patrons_phone(env: Env) -> None:
    port = env.sim.port
    # nothing texted to the number yet, and no number to reply to: a clear refusal
    answer = await _control(port, {"cmd": "reply", "number": "+12025550143", "text": "Hi"})
    assert answer["ok"] is False and "no text was sent" in str(answer["detail"])
    assert (await _control(port, {"cmd": "dance", "number": "+12025550143"}))["ok"] is False
    assert (await _control(port, {"cmd": "fail", "number": "call me"}))["ok"] is False

    # "fail" fails the next text to that number only, and the bridge bounces it
    assert (await _control(port, {"cmd": "fail", "number": "+12025550143"}))["ok"] is True
    conv = await send(env.smtp_port, FROM, [TO], notice("Overdue."))
    rec = await env.wait_state(conv.queue_ids[0], SmsState.FAILED)
    assert rec.state is SmsState.FAILED
    conv = await send(env.smtp_port, FROM, [TO], notice("Ready.", Message_ID="<n2@r>"))
    await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)

    # "reply" answers the last text's sender; the staff inbox gets it, threaded
    answer = await _control(port, {"cmd": "reply", "number": "+12025550143", "text": "Renew?"})
    assert answer["ok"] is True, answer
    mails = await env.sink.wait_for(2, timeout=10)  # the bounce, then the reply
    reply = mails[-1].message()
    assert str(reply["Subject"]).startswith("SMS reply") and reply["In-Reply-To"] == "<n2@r>"
    # and SMPP still works on the same port: the bridge's session stayed bound throughout
    assert env.sim.bound_sessions == 1
