"""Metrics: names, labels and values as Prometheus would scrape them, in a private registry."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bridge.inbound import InboundCounters
from bridge.metrics import Metrics, rejection_reason, session_state_label
from bridge.model import SmsRecord, SmsState
from bridge.smpp import errors
from bridge.store import StoreError


def _sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def _rec(created_at: float) -> SmsRecord:
    return SmsRecord(
        queue_id="q1",
        tenant_id="riverside",
        msisdn="+12025550143",
        rcpt_addr="2025550143@sms.example.org",
        source_addr="12025550100",
        envelope_from="ils@riverside.example.org",
        message_id="<m@x>",
        subject="Hold",
        body="Your hold is ready",
        state=SmsState.SUBMITTED,
        attempts=1,
        reason=None,
        created_at=created_at,
        updated_at=created_at,
        next_attempt_at=created_at,
        segments=1,
        coding="gsm7",
    )


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("550 5.7.1 Sender not allowed for this tenant", "550_5.7.1"),
        ("451 4.3.0 Temporary storage failure", "451_4.3.0"),
        ("554 5.5.1 Error: no valid recipients", "554_5.5.1"),
        ("421-4.3.2 Too many connections", "421_4.3.2"),
        ("503 Error: send MAIL first", "503"),
        ("", "other"),
        ("hello", "other"),
    ],
)
def test_rejection_reason(reply: str, label: str) -> None:
    assert rejection_reason(reply) == label


@pytest.mark.parametrize(
    ("state", "label"),
    [
        ("bound", "bound"),
        ("bind_failed: ESME_RINVPASWD", "bind_failed"),
        ("backoff", "backoff"),
        ("something new", "other"),
    ],
)
def test_session_state_label(state: str, label: str) -> None:
    assert session_state_label(state) == label


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.message_accepted("riverside", "smtp")
    assert _sample(a, "sms_bridge_messages_accepted_total", tenant="riverside", via="smtp") == 1
    assert _sample(b, "sms_bridge_messages_accepted_total", tenant="riverside", via="smtp") is None


def test_given_registry_is_used() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert m.registry is reg
    m.submit_result(errors.ESME_ROK)
    assert reg.get_sample_value("sms_bridge_submits_total", {"status": "ESME_ROK"}) == 1


def test_accepted_counts_each_tenant_and_edge_apart() -> None:
    m = Metrics()
    for tenant, via, count in [
        ("riverside", "smtp", 2),
        ("hillside", "smtp", 1),
        ("riverside", "imap", 4),
        ("riverside", "smtp", 1),
    ]:
        m.message_accepted(tenant, via, count)
    accepted = "sms_bridge_messages_accepted_total"
    assert _sample(m, accepted, tenant="riverside", via="smtp") == 3
    assert _sample(m, accepted, tenant="hillside", via="smtp") == 1
    assert _sample(m, accepted, tenant="riverside", via="imap") == 4
    assert _sample(m, accepted, tenant="hillside", via="imap") is None


def test_event_counters() -> None:
    m = Metrics()
    m.message_accepted("riverside", "smtp", 3)
    m.message_accepted("riverside", "smtp", 0)
    m.message_rejected("riverside", "550 5.7.1 Sender not allowed")
    m.message_rejected("riverside", "550 5.7.1 Sender not allowed again")
    m.message_rejected(None, "554 5.5.1 Error: no valid recipients")
    m.submit_result(errors.ESME_ROK)
    m.submit_result(errors.ESME_RTHROTTLED)
    m.submit_result(0x0400)
    m.submit_unanswered("timeout")
    m.receipt(SmsState.DELIVERED)
    m.receipt("failed")
    assert _sample(m, "sms_bridge_messages_accepted_total", tenant="riverside", via="smtp") == 3
    rejected = "sms_bridge_messages_rejected_total"
    assert _sample(m, rejected, tenant="riverside", reason="550_5.7.1") == 2
    assert _sample(m, rejected, tenant="unknown", reason="554_5.5.1") == 1
    assert _sample(m, "sms_bridge_submits_total", status="ESME_ROK") == 1
    assert _sample(m, "sms_bridge_submits_total", status="ESME_RTHROTTLED") == 1
    assert _sample(m, "sms_bridge_submits_total", status="0x00000400") == 1
    assert _sample(m, "sms_bridge_submits_total", status="timeout") == 1
    assert _sample(m, "sms_bridge_receipts_applied_total", state="delivered") == 1
    assert _sample(m, "sms_bridge_receipts_applied_total", state="failed") == 1


def test_session_listener_tracks_bind_state_reconnects_and_throttling() -> None:
    m = Metrics()
    listener = m.session_listener("smsc")
    assert _sample(m, "sms_bridge_smpp_bound", smsc="smsc") == 0
    assert _sample(m, "sms_bridge_smpp_state", smsc="smsc", state="stopped") == 1
    listener.on_state("connecting")
    listener.on_state("bound")
    assert _sample(m, "sms_bridge_smpp_bound", smsc="smsc") == 1
    assert _sample(m, "sms_bridge_smpp_state", smsc="smsc", state="bound") == 1
    assert _sample(m, "sms_bridge_smpp_state", smsc="smsc", state="connecting") == 0
    listener.on_reconnect()
    listener.on_state("bind_failed: ESME_RBINDFAIL")
    assert _sample(m, "sms_bridge_smpp_bound", smsc="smsc") == 0
    assert _sample(m, "sms_bridge_smpp_state", smsc="smsc", state="bind_failed") == 1
    assert _sample(m, "sms_bridge_smpp_state", smsc="smsc", state="bound") == 0
    listener.on_throttled()
    listener.on_throttled()
    assert _sample(m, "sms_bridge_smpp_reconnects_total", smsc="smsc") == 1
    assert _sample(m, "sms_bridge_smpp_throttled_total", smsc="smsc") == 2


def test_latency_histogram_from_commit_to_submit() -> None:
    m = Metrics()
    m.on_submitted(_rec(1000.0), 1000.3)
    m.on_submitted(_rec(1000.0), 1100.0)
    m.on_submitted(_rec(1000.0), 999.0)  # clock stepped back: counted as 0, not negative
    name = "sms_bridge_accept_to_submit_seconds"
    assert _sample(m, name + "_count") == 3
    assert _sample(m, name + "_sum") == pytest.approx(100.3)
    assert _sample(m, name + "_bucket", le="0.05") == 1
    assert _sample(m, name + "_bucket", le="0.5") == 2
    assert _sample(m, name + "_bucket", le="60.0") == 2
    assert _sample(m, name + "_bucket", le="300.0") == 3


class _FakeStore:
    def __init__(self, sms: dict[str, int], mail: dict[str, int]) -> None:
        self.sms = sms
        self.mail = mail
        self.fail = False

    async def counts(self) -> dict[str, int]:
        if self.fail:
            raise StoreError("disk gone")
        return dict(self.sms)

    async def mail_counts(self) -> dict[str, int]:
        return dict(self.mail)


async def test_refresh_sets_queue_and_mail_gauges_with_zero_seeds() -> None:
    m = Metrics()
    # before any scrape every known state is exported as 0
    assert _sample(m, "sms_bridge_queue_messages", state="queued") == 0
    src = _FakeStore({"queued": 4, "failed": 1, "weird": 2}, {"queued": 2, "dead": 1})
    assert await m.refresh(src) is True
    assert _sample(m, "sms_bridge_queue_messages", state="queued") == 4
    assert _sample(m, "sms_bridge_queue_messages", state="failed") == 1
    assert _sample(m, "sms_bridge_queue_messages", state="delivered") == 0
    assert _sample(m, "sms_bridge_queue_messages", state="weird") == 2
    assert _sample(m, "sms_bridge_mail_outbox_messages", state="queued") == 2
    assert _sample(m, "sms_bridge_mail_outbox_messages", state="dead") == 1
    assert _sample(m, "sms_bridge_mail_outbox_messages", state="sent") == 0
    # a state that empties goes back to 0 (seeded) or away (unknown)
    src.sms = {"failed": 1}
    await m.refresh(src)
    assert _sample(m, "sms_bridge_queue_messages", state="queued") == 0
    assert _sample(m, "sms_bridge_queue_messages", state="weird") is None
    # a failing store keeps the old values and counts the failure
    src.fail = True
    assert await m.refresh(src) is False
    assert _sample(m, "sms_bridge_queue_messages", state="failed") == 1
    assert _sample(m, "sms_bridge_metrics_refresh_errors_total") == 1


def test_inbound_counters_read_at_scrape_time() -> None:
    m = Metrics()
    counters = InboundCounters()
    m.watch_inbound(lambda: counters)
    counters.receipts = 5
    counters.receipts_unknown = 2
    counters.mo = 3
    counters.mo_duplicates = 1
    name = "sms_bridge_receipts_received_total"
    assert _sample(m, name, outcome="matched") == 3
    assert _sample(m, name, outcome="unknown") == 2
    assert _sample(m, "sms_bridge_mo_messages_total", outcome="new") == 2
    assert _sample(m, "sms_bridge_mo_messages_total", outcome="duplicate") == 1
    # re-pointing (a new Inbound after a restart of the component) replaces the collector
    other = replace(counters, receipts=9, receipts_unknown=0)
    m.watch_inbound(lambda: other)
    assert _sample(m, name, outcome="matched") == 9


def test_render_is_valid_exposition_with_prefixed_names() -> None:
    m = Metrics()
    m.session_listener()
    m.message_accepted("riverside", "smtp")
    m.watch_inbound(InboundCounters)
    text = m.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith("sms_bridge_") for name in families)
    expected = {
        "sms_bridge_messages_accepted": "counter",
        "sms_bridge_messages_rejected": "counter",
        "sms_bridge_submits": "counter",
        "sms_bridge_receipts_applied": "counter",
        "sms_bridge_receipts_received": "counter",
        "sms_bridge_mo_messages": "counter",
        "sms_bridge_smpp_bound": "gauge",
        "sms_bridge_smpp_state": "gauge",
        "sms_bridge_smpp_reconnects": "counter",
        "sms_bridge_smpp_throttled": "counter",
        "sms_bridge_accept_to_submit_seconds": "histogram",
        "sms_bridge_queue_messages": "gauge",
        "sms_bridge_mail_outbox_messages": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    assert 'sms_bridge_messages_accepted_total{tenant="riverside",via="smtp"} 1.0' in text
