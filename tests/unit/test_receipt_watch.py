"""Receipt deadline and receipt health: the pure decisions, time passed in."""

from __future__ import annotations

import pytest

from bridge.model import SmsState
from bridge.receipt_watch import (
    LIKELY_CAUSES,
    ReceiptWatch,
    at_submit,
    deadline_cutoff,
    deadline_outcome,
    receipts_missing,
    registered_delivery,
    validity_period,
)


def test_unconfirmed_is_a_final_state_of_its_own() -> None:
    assert SmsState("unconfirmed") is SmsState.UNCONFIRMED
    assert SmsState.UNCONFIRMED.final
    assert SmsState.UNCONFIRMED not in (SmsState.DELIVERED, SmsState.FAILED, SmsState.EXPIRED)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (48 * 3600, "000002000000000R"),  # the default: two days
        (1, "000000000001000R"),
        (90, "000000000130000R"),
        (26 * 3600 + 61, "000001020101000R"),
        (30 * 86400, "000030000000000R"),
        (0.4, "000000000001000R"),  # never zero: that would mean "the SMSC default"
    ],
)
def test_validity_period_is_smpp_relative_time(seconds: float, expected: str) -> None:
    """SMPP 3.4 §7.1.1.2: YYMMDDhhmmss, tenths, "00", R; 16 characters."""
    got = validity_period(seconds)
    assert got == expected and len(got) == 16


def test_validity_period_refuses_what_dd_cannot_hold() -> None:
    with pytest.raises(ValueError, match="99 days"):
        validity_period(100 * 86400)


def test_registered_delivery_values() -> None:
    """SMPP 3.4 §5.2.17: 1 success and failure, 2 failure only, 0 none."""
    assert [registered_delivery(m) for m in ("all", "failures", "none")] == [1, 2, 0]


def test_deadline_outcome_by_mode() -> None:
    plain = deadline_outcome("all", 48 * 3600)
    assert plain.state is SmsState.UNCONFIRMED and "48 hours" in plain.reason
    silent = deadline_outcome("failures", 3600)
    assert silent.state is SmsState.DELIVERED
    assert silent.reason.startswith("no failure receipt within 1 hours")
    assert deadline_cutoff(1000.0, 300.0) == 700.0


def test_at_submit_only_without_receipts() -> None:
    assert at_submit("all") is None and at_submit("failures") is None
    done = at_submit("none")
    assert done is not None and done.state is SmsState.UNCONFIRMED
    assert "no receipt asked for" in done.reason


@pytest.mark.parametrize(
    ("submits", "oldest", "now", "missing"),
    [
        (0, None, 10_000.0, False),  # nothing sent: nothing to miss
        (19, 0.0, 10_000.0, False),  # too few texts: a few phones may simply be off
        (20, 9_000.0, 10_000.0, False),  # enough texts, but the oldest only 1000 s ago
        (20, 8_200.0, 10_000.0, True),  # 20 texts, the oldest 30 min ago: receipts stopped
        (500, 8_199.0, 10_000.0, True),
    ],
)
def test_receipts_missing(submits: int, oldest: float | None, now: float, missing: bool) -> None:
    got = receipts_missing(
        now=now,
        submits_since_receipt=submits,
        oldest_unanswered_at=oldest,
        min_submits=20,
        after_s=1800.0,
    )
    assert got is missing


def test_watch_trips_once_and_clears_on_a_receipt() -> None:
    watch = ReceiptWatch(started_at=0.0)
    kwargs = {"watching": True, "min_submits": 3, "after_s": 60.0}
    for t in (10.0, 20.0, 30.0):
        watch.submitted(t)
    health, changed = watch.check(69.0, **kwargs)  # type: ignore[arg-type]
    assert not health.missing and not changed and health.seconds_since_receipt == 69.0
    health, changed = watch.check(70.0, **kwargs)  # type: ignore[arg-type]
    assert health.missing and changed and health.submits_since_receipt == 3
    assert LIKELY_CAUSES in health.describe()
    _, changed = watch.check(80.0, **kwargs)  # type: ignore[arg-type]
    assert not changed  # warned once, not on every sweep
    watch.receipt(90.0)
    health, changed = watch.check(95.0, **kwargs)  # type: ignore[arg-type]
    assert not health.missing and changed and health.seconds_since_receipt == 5.0
    assert health.describe() == "ok (last 5 s ago)"


def test_watch_not_watching_never_trips() -> None:
    """registered_delivery failures/none: silence is expected, not a fault."""
    watch = ReceiptWatch(started_at=0.0)
    for t in range(100):
        watch.submitted(float(t))
    health, changed = watch.check(10_000.0, watching=False, min_submits=1, after_s=1.0)
    assert not health.missing and not changed and "not watched" in health.describe()


def test_status_page_says_the_carrier_sends_no_receipts() -> None:
    from bridge.receipt_watch import ReceiptHealth
    from bridge.web import Health, StatusData, render_status_page

    def page(receipts: ReceiptHealth | None) -> str:
        data = StatusData(
            now=0.0,
            health=Health("ok", "bound"),
            smsc_state="bound",
            tps=1.0,
            queue={},
            mail={},
            failures=[],
            optouts={},
            receipts=receipts,
        )
        return render_status_page(data)

    missing = ReceiptHealth(True, True, 25, None, 1800.0)
    html = page(missing)
    assert 'class="bad" id="receipts"' in html
    assert "the carrier sends no receipts: none for the last 25 texts (30 min)" in html
    assert 'class="ok" id="receipts">ok (last 4 s ago)' in page(
        ReceiptHealth(True, False, 0, 10.0, 4.0)
    )
    assert 'id="receipts">not checked yet' in page(None)
    assert "unconfirmed" in page(None)  # the queue table lists the state, 0 included
