"""Shared pieces: the result row, a bridge config for benchmarks, small statistics helpers."""

from __future__ import annotations

import copy
import math
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridge.config import Config, TenantConfig, load_config_text
from bridge.model import NewSms
from bridge.policy import duplicate_key

# Fake patron numbers only: 202-555-01xx is the range reserved for fiction (see
# ARCHITECTURE.md, phonenumbers treats other 555 numbers as invalid).
FAKE_NUMBERS: tuple[str, ...] = tuple(f"20255501{n:02d}" for n in range(100))
SENDER = "ils@riverside.example.org"
SMS_DOMAIN = "sms.example.org"

# The same shape as the flow tests' BASE config (tests/conftest.py), repeated here because the
# benchmarks must not import the test suite (it pulls in pytest).
BASE: dict[str, Any] = {
    "smtp": {"listen": "127.0.0.1:0", "domains": [SMS_DOMAIN]},
    "smpp": {
        "host": "127.0.0.1",
        "port": 0,
        "system_id": "bridge",
        "password": "secret",
        "source_addr": "12025550100",
        "enquire_link_s": 30,
        "response_timeout_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "retry_min_s": 0.05,
        "retry_max_s": 0.2,
        "max_tps": 200,
    },
    "store": {"path": "bridge.db"},
    "mail": {"from": "sms-bridge@sms.example.org", "maildir": "mail"},
    "log": {"level": "WARNING"},
    "tenants": [
        {
            "id": "riverside",
            "name": "Riverside Public Library",
            "senders": ["*@riverside.example.org"],
            "networks": ["127.0.0.0/8"],
            "reply_to": "circulation@riverside.example.org",
            "region": "US",
            # Off so that results do not depend on the wall clock (a run at night would defer
            # everything); the policy check itself still runs for every message.
            "quiet_hours": None,
        }
    ],
}


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    bench: str  # which benchmark (section of the table)
    case: str  # the variant measured, e.g. "window 10, slow:20"
    value: float
    unit: str
    baseline: float | None  # the bound or the same-run baseline the value is compared with
    baseline_label: str  # what the baseline is
    ratio: float | None  # value / baseline (or the figure the aim is about)
    aim: str  # human text, e.g. "ratio >= 0.9"
    meets: bool | None  # None when there is no aim for this row
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "case": self.case,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_label": self.baseline_label,
            "ratio": self.ratio,
            "aim": self.aim,
            "meets": self.meets,
            "notes": self.notes,
        }


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def bench_config(tmp: Path, over: dict[str, Any] | None = None) -> Config:
    """A bridge config rooted at ``tmp`` (store, maildir), with ``over`` merged in."""
    return load_config_text(yaml.safe_dump(merge(BASE, over or {})), tmp)


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the context lasts.

    The socket is bound but never listens: Linux answers SYN with RST, and holding the binding
    keeps anything else from taking the port mid-run (closing a probe socket would not).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: with 200 samples p99 is a real sample)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def rate_from_times(times: Sequence[float]) -> float:
    """Events per second between the first and the last event: (n - 1) / span."""
    if len(times) < 2:
        return math.nan
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else math.inf


def max_in_window(times: Sequence[float], width: float = 1.0) -> int:
    """Most events in any half-open interval [t, t + width)."""
    ordered = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        if j < i:
            j = i
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


def notice(number: str, seq: int, body: str | None = None) -> bytes:
    """A small plain-text hold notice (about 400 bytes), unique Message-ID and text per ``seq``
    (the bridge suppresses the same words to the same number as a regenerated notice)."""
    text = body or (
        f"Hello, item {seq} you placed on hold is ready for pickup at Main Branch. "
        "Please collect it within 7 days. Riverside Public Library"
    )
    head = (
        f"From: {SENDER}\r\n"
        f"To: {number}@{SMS_DOMAIN}\r\n"
        "Subject: Hold ready\r\n"
        f"Message-ID: <bench-{seq}@riverside.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
    )
    return (head + "\r\n" + text + "\r\n").encode("ascii")


def overdue_notice(tenant: TenantConfig, source: str, seq: int, tag: str) -> NewSms:
    """One fake queued notice, as the intake would have stored it (fake numbers only)."""
    number = FAKE_NUMBERS[seq % len(FAKE_NUMBERS)]
    text = f"Item {seq} is overdue. Please return or renew it. Riverside Library"
    return NewSms(
        tenant_id=tenant.id,
        msisdn="+1" + number,
        rcpt_addr=f"{number}@{SMS_DOMAIN}",
        source_addr=source,
        envelope_from="ils@riverside.example.org",
        message_id=f"<{tag}-{seq}@riverside.example.org>",
        subject="Overdue",
        body=text,
        dup_key=duplicate_key(tenant.id, "+1" + number, text),
    )
