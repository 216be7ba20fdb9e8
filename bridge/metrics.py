"""Prometheus metrics for the bridge, in a registry of its own.

Each Bridge gets its own ``CollectorRegistry`` rather than prometheus_client's global one: the
tests start many bridges in one process, and the global registry refuses a second metric of the
same name ("Duplicated timeseries in CollectorRegistry").

Event counters (accepted, rejected, submits, receipts, SMPP reconnects and throttling) are bumped
by the component that sees the event, through the small methods below. Gauges that describe the
store (queue depth by state, mail outbox depth) are read at scrape time by ``refresh()``: the
store is asynchronous, and prometheus_client's collectors are synchronous, so the admin listener
awaits ``refresh()`` and then calls ``render()``. Names follow the Prometheus conventions:
``sms_bridge_`` prefix, snake_case, base units in the name, ``_total`` on counters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.model import SmsRecord, SmsState
from bridge.smpp import errors

log = logging.getLogger(__name__)

__all__ = [
    "BOUNCE_OUTCOMES",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "MAIL_STATES",
    "QUEUE_STATES",
    "SESSION_STATES",
    "InboundStats",
    "Metrics",
    "QueueSource",
    "SessionMetrics",
    "rejection_reason",
    "session_state_label",
]

# The classic text format (version 0.0.4), which every Prometheus version reads. Recent
# prometheus_client releases set CONTENT_TYPE_LATEST to 1.0.0 (UTF-8 metric names), which
# Prometheus 2.x does not know; our names are plain ASCII, so 0.0.4 is exact.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seeded so a state with no rows is exported as 0 rather than vanishing: an alert on
# `sms_bridge_queue_messages{state="queued"} > 1000` must see the series to see it recover.
QUEUE_STATES: tuple[str, ...] = tuple(s.value for s in SmsState)
# bridge/store/sqlite.py mail_done()/mail_lost(): "queued" (waiting or retrying), "sent",
# "dead" (the relay refused it), "bounced" (a DSN came back to its bounce address).
MAIL_STATES: tuple[str, ...] = ("queued", "sent", "dead", "bounced")
# bridge/bounce_intake.py: what became of a bounce to one of the bridge's own addresses.
BOUNCE_OUTCOMES: tuple[str, ...] = ("recorded", "replay", "not_failure", "unknown", "forged")
# SmppSession.state values; "bind_failed: <reason>" is folded to "bind_failed" (a label must
# not carry free text, or every distinct error message becomes a new time series).
SESSION_STATES: tuple[str, ...] = ("connecting", "bound", "bind_failed", "backoff", "stopped")

# From 250 (the commit) to the last submit_sm_resp. Normally tens of milliseconds; seconds when
# the window is full or the rate limiter paces a burst; minutes to hours when a message waits
# out a reconnect, quiet hours or retries.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
)

# "550 5.7.1 text" -> code and enhanced status (RFC 5321 §4.2, RFC 3463 §2).
_REPLY = re.compile(r"^\s*([2-5][0-9][0-9])(?:[ -]+([245]\.[0-9]{1,3}\.[0-9]{1,3}))?")


def rejection_reason(reply: str) -> str:
    """Label value for a refused notice: ``"550 5.7.1 Sender not allowed"`` -> ``"550_5.7.1"``.

    Only the reply code and the enhanced status code are kept: the text may quote the sender's
    input (unbounded label values) and never adds a distinct cause the codes do not already name.
    A reply without an enhanced code gives just the code; anything unparsable gives "other".
    """
    m = _REPLY.match(reply)
    if m is None:
        return "other"
    code, status = m.group(1), m.group(2)
    return f"{code}_{status}" if status else code


def session_state_label(state: str) -> str:
    """``"bind_failed: ESME_RBINDFAIL"`` -> ``"bind_failed"``; unknown states -> "other"."""
    head = state.split(":", 1)[0].strip()
    return head if head in SESSION_STATES else "other"


class InboundStats(Protocol):
    """bridge.inbound.InboundCounters, as a protocol: metrics must not import the components
    it counts (they may import this module to report events)."""

    @property
    def receipts(self) -> int: ...

    @property
    def receipts_unknown(self) -> int: ...

    @property
    def mo(self) -> int: ...

    @property
    def mo_duplicates(self) -> int: ...


@dataclass(frozen=True)
class _NoInbound:
    receipts: int = 0
    receipts_unknown: int = 0
    mo: int = 0
    mo_duplicates: int = 0


class QueueSource(Protocol):
    """What ``refresh()`` reads: bridge.store.SqliteStore satisfies it."""

    async def counts(self) -> dict[str, int]: ...

    async def mail_counts(self) -> dict[str, int]: ...


class _InboundCollector(Collector):
    """Reads the inbound router's plain counters at scrape time (they are monotonic for the
    life of the process, so they are exported as counters)."""

    def __init__(self, counters: Callable[[], InboundStats]) -> None:
        self._counters = counters

    def collect(self) -> Iterable[Metric]:
        c = self._counters()
        yield from _inbound_families(c)

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check for name clashes without calling the getter at registration.
        yield from _inbound_families(_NoInbound())


def _inbound_families(c: InboundStats) -> Iterator[Metric]:
    rows = (
        ("sms_bridge_receipts_received", "Delivery receipts (DLR) received from the SMSC", [
            ("matched", c.receipts - c.receipts_unknown),
            ("unknown", c.receipts_unknown),
        ]),
        ("sms_bridge_mo_messages", "Patron messages (MO) received from the SMSC", [
            ("new", c.mo - c.mo_duplicates),
            ("duplicate", c.mo_duplicates),
        ]),
    )  # fmt: skip
    for name, doc, values in rows:
        fam = CounterMetricFamily(name, doc, labels=["outcome"])
        for outcome, value in values:
            fam.add_metric([outcome], max(0, value))
        yield fam


class SessionMetrics:
    """The SMPP session's listener (bridge.smpp.session.SessionListener): bind state,
    reconnects and throttling. Called synchronously from the session; only touches memory."""

    def __init__(self, metrics: Metrics, smsc: str = "smsc") -> None:
        self._m = metrics
        self._smsc = smsc

    def on_state(self, state: str) -> None:
        label = session_state_label(state)
        self._m.smpp_bound.labels(self._smsc).set(1 if label == "bound" else 0)
        for s in (*SESSION_STATES, "other"):
            self._m.smpp_state.labels(self._smsc, s).set(1 if s == label else 0)

    def on_throttled(self) -> None:
        self._m.smpp_throttled.labels(self._smsc).inc()

    def on_reconnect(self) -> None:
        self._m.smpp_reconnects.labels(self._smsc).inc()

    def on_protocol_error(self, kind: str) -> None:
        self._m.smpp_protocol_errors.labels(self._smsc, kind).inc()

    def on_inbound(self, in_flight: int) -> None:
        self._m.smpp_inbound_in_flight.labels(self._smsc).set(in_flight)

    def on_inbound_paused(self) -> None:
        self._m.smpp_inbound_paused.labels(self._smsc).inc()


class Metrics:
    """Every metric the bridge exports, in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r = self.registry
        self.accepted = Counter(
            "sms_bridge_messages_accepted",
            "Notices committed to the SMS outbox (one per recipient number)",
            ["tenant", "via"],
            registry=r,
        )
        self._accepted_by: dict[tuple[str, str], Counter] = {}
        self.rejected = Counter(
            "sms_bridge_messages_rejected",
            "Notices or recipients refused, by SMTP reply code and enhanced status",
            ["tenant", "reason"],
            registry=r,
        )
        self.smtp_refusals = Counter(
            "sms_bridge_smtp_refusals",
            "SMTP clients turned away or slowed before any notice: connection limits, idle"
            " timeouts, failed or deferred AUTH",
            ["reason"],
            registry=r,
        )
        self.submits = Counter(
            "sms_bridge_submits",
            "submit_sm results by command_status name (timeout and not_bound: no response)",
            ["status"],
            registry=r,
        )
        self.receipts = Counter(
            "sms_bridge_receipts_applied",
            "Delivery receipts applied to a message, by the message state they led to",
            ["state"],
            registry=r,
        )
        self.smpp_bound = Gauge(
            "sms_bridge_smpp_bound",
            "1 while the SMPP session is bound, else 0",
            ["smsc"],
            registry=r,
        )
        self.smpp_state = Gauge(
            "sms_bridge_smpp_state",
            "SMPP session state: 1 for the current state, 0 for the others",
            ["smsc", "state"],
            registry=r,
        )
        self.smpp_reconnects = Counter(
            "sms_bridge_smpp_reconnects",
            "Times a bound SMPP link was lost and the session started reconnecting",
            ["smsc"],
            registry=r,
        )
        self.smpp_throttled = Counter(
            "sms_bridge_smpp_throttled",
            "Throttling events (ESME_RTHROTTLED that lowered the send rate)",
            ["smsc"],
            registry=r,
        )
        self.smpp_protocol_errors = Counter(
            "sms_bridge_smpp_protocol_errors",
            "PDUs from the SMSC that break SMPP 3.4 and were ignored, by kind (mismatched_response:"
            " a response whose command_id does not answer the request with its sequence number;"
            " invalid_sequence: a deliver_sm or data_sm numbered outside 1..0x7FFFFFFF, refused"
            " with generic_nack)",
            ["smsc", "kind"],
            registry=r,
        )
        self.smpp_inbound_in_flight = Gauge(
            "sms_bridge_smpp_inbound_in_flight",
            "deliver_sm / data_sm being handled now (at most smpp.inbound_window)",
            ["smsc"],
            registry=r,
        )
        self.smpp_inbound_paused = Counter(
            "sms_bridge_smpp_inbound_paused",
            "Times the session stopped reading from the SMSC because smpp.inbound_window"
            " deliver_sm were in hand (a burst paced by TCP)",
            ["smsc"],
            registry=r,
        )
        self.submit_latency = Histogram(
            "sms_bridge_accept_to_submit_seconds",
            "Time from the commit behind SMTP 250 to the last segment's submit_sm_resp",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.send_rate = Gauge(
            "sms_bridge_send_rate_tps",
            "Texts per second this instance may send: smpp.max_tps, or its share of it when"
            " several instances share one database (0 while settling in or standing by)",
            registry=r,
        )
        self.queue = Gauge(
            "sms_bridge_queue_messages",
            "SMS outbox messages by state (read from the store at scrape time)",
            ["state"],
            registry=r,
        )
        self.mail_outbox = Gauge(
            "sms_bridge_mail_outbox_messages",
            "Outgoing emails (replies, bounces) by state (read from the store at scrape time)",
            ["state"],
            registry=r,
        )
        self.bounces = Counter(
            "sms_bridge_bounces_received",
            "Bounces (DSNs) to the bridge's own addresses by outcome: recorded (an email marked"
            " lost), replay, not_failure (delay or success report), unknown (purged), forged"
            " (refused at RCPT)",
            ["outcome"],
            registry=r,
        )
        self.mail_lost_total = Counter(
            "sms_bridge_mail_lost",
            "Emails that never reached their recipient, by kind (reply, notification, report,"
            " fallback, dsn) and state (dead: refused by the relay; bounced: a DSN came back)",
            ["kind", "state"],
            registry=r,
        )
        self.receipt_deadlines = Counter(
            "sms_bridge_receipt_deadlines",
            "Texts settled at smpp.receipt_timeout_s without a final receipt, by the state"
            " given (unconfirmed; delivered when only failure receipts are asked for)",
            ["state"],
            registry=r,
        )
        self.receipts_missing = Gauge(
            "sms_bridge_receipts_missing",
            "1 while this bind sends texts that ask for receipts and none comes back"
            " (smpp.receipts_missing_after_submits / _after_s), else 0",
            ["smsc"],
            registry=r,
        )
        self.receipt_silence = Gauge(
            "sms_bridge_seconds_since_last_receipt",
            "Seconds since this bind last received a delivery receipt (since start if none)",
            ["smsc"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "sms_bridge_metrics_refresh_errors",
            "Scrapes where the store could not be read (the store gauges kept old values)",
            registry=r,
        )
        for state in QUEUE_STATES:
            self.queue.labels(state).set(0)
        for state in (SmsState.UNCONFIRMED, SmsState.DELIVERED):
            self.receipt_deadlines.labels(state.value)
        self.receipt_health(False, 0.0)
        for state in MAIL_STATES:
            self.mail_outbox.labels(state).set(0)
        for outcome in BOUNCE_OUTCOMES:
            self.bounces.labels(outcome)
        for state in ("dead", "bounced"):
            self.mail_lost_total.labels("reply", state)
        self._inbound: _InboundCollector | None = None

    # -- events (called by the components; all synchronous and memory-only)

    def session_listener(self, smsc: str = "smsc") -> SessionMetrics:
        listener = SessionMetrics(self, smsc)
        listener.on_state("stopped")  # export the series before the first bind
        listener.on_inbound(0)
        return listener

    def send_rate_applied(self, tps: float) -> None:
        self.send_rate.set(tps)

    def message_accepted(self, tenant: str, via: str, count: int = 1) -> None:
        if count > 0:
            # Once per accepted notice: labels() builds and looks up its key under a lock each
            # call, so the child is kept per (tenant, via), a handful of pairs.
            child = self._accepted_by.get((tenant, via))
            if child is None:
                child = self._accepted_by[(tenant, via)] = self.accepted.labels(tenant, via)
            child.inc(count)

    def message_rejected(self, tenant: str | None, reply: str) -> None:
        self.rejected.labels(tenant or "unknown", rejection_reason(reply)).inc()

    def bounce_received(self, outcome: str) -> None:
        self.bounces.labels(outcome).inc()

    def mail_lost(self, kind: str, state: str) -> None:
        self.mail_lost_total.labels(kind, state).inc()

    def smtp_refused(self, reason: str) -> None:
        self.smtp_refusals.labels(reason).inc()

    def submit_result(self, status: int) -> None:
        """One submit_sm_resp (or generic_nack): labelled by SMPP 3.4 §5.1.3 status name."""
        self.submits.labels(errors.status_name(status)).inc()

    def submit_unanswered(self, kind: str) -> None:
        """A submit with no response: ``"timeout"`` (outcome unknown) or ``"not_bound"``."""
        self.submits.labels(kind).inc()

    def receipt(self, state: SmsState | str) -> None:
        self.receipts.labels(str(state)).inc()

    def receipt_deadline(self, state: SmsState, count: int = 1) -> None:
        if count > 0:
            self.receipt_deadlines.labels(state.value).inc(count)

    def receipt_health(
        self, missing: bool, seconds_since_receipt: float, smsc: str = "smsc"
    ) -> None:
        self.receipts_missing.labels(smsc).set(1 if missing else 0)
        self.receipt_silence.labels(smsc).set(seconds_since_receipt)

    def on_submitted(self, rec: SmsRecord, now: float) -> None:
        """Dispatcher hook (``on_submitted``): latency from the commit to the last resp.

        ``created_at`` is the commit time, a few milliseconds before the 250 is written.
        """
        self.submit_latency.observe(max(0.0, now - rec.created_at))

    def watch_inbound(self, counters: Callable[[], InboundStats]) -> None:
        """Export the inbound router's counters; ``counters`` is read at every scrape."""
        if self._inbound is not None:
            self.registry.unregister(self._inbound)
        self._inbound = _InboundCollector(counters)
        self.registry.register(self._inbound)

    # -- scrape

    async def refresh(self, source: QueueSource) -> bool:
        """Read queue and mail outbox depth from the store; False (old values kept) when the
        store does not answer, so a scrape still returns every other metric."""
        try:
            sms = await source.counts()
            mail = await source.mail_counts()
        except Exception as exc:  # a scrape must not fail because the store did; CancelledError
            # is a BaseException and passes through
            log.warning("metrics: store counts unavailable: %s", exc)
            self.scrape_errors.inc()
            return False
        _set_all(self.queue, QUEUE_STATES, sms)
        _set_all(self.mail_outbox, MAIL_STATES, mail)
        return True

    def render(self) -> bytes:
        """Prometheus text exposition format, see CONTENT_TYPE."""
        return generate_latest(self.registry)


def _set_all(gauge: Gauge, seeded: tuple[str, ...], counts: dict[str, int]) -> None:
    # clear() drops a state that no longer has rows (and is not seeded) instead of exporting its
    # last count forever; clear and set run without an await in between, so no scrape sees a gap.
    gauge.clear()
    for state in {*seeded, *counts}:
        gauge.labels(state).set(counts.get(state, 0))
