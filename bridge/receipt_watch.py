"""Every text ends in a known state, and a carrier that stops sending receipts is noticed (pure).

Receipts (DLRs) are best effort all along the chain: SMS gateways such as Jasmin lose them in
some releases, send none for a text their upstream rejected unless the client asked for
failure-only receipts, or answer submit_sm OK for a text that is then dropped upstream; many
aggregators drop or delay them. Without a deadline such a text would stay `submitted` for ever.

* The deadline: a text with no final receipt `smpp.receipt_timeout_s` after its submit_sm_resp
  ends `unconfirmed` (or `delivered` when only failure receipts were asked for: silence is the
  good news then). The same time goes out as the submit_sm validity_period, so the carrier stops
  trying when we stop waiting. `deadline_outcome()` decides, the inbound sweep applies it.
* The health check: a bind that sent `receipts_missing_after_submits` texts asking for a receipt
  since the last receipt arrived, the oldest of them `receipts_missing_after_s` ago, has most
  likely stopped getting receipts. `receipts_missing()` decides, `ReceiptWatch` keeps the counts
  (in memory, per instance: per bind).

Time is always a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from bridge.model import SmsState

ReceiptMode = Literal["all", "failures", "none"]

# SMPP 3.4 §5.2.17 registered_delivery, bits 1-0: 1 = receipt on success and failure,
# 2 = receipt on failure only, 0 = none.
REGISTERED_DELIVERY: Final[dict[str, int]] = {"all": 1, "failures": 2, "none": 0}

LIKELY_CAUSES: Final = (
    "the gateway or carrier loses receipts, does not honour registered_delivery, or routes"
    " them to another bind of this account"
)


def registered_delivery(mode: ReceiptMode) -> int:
    return REGISTERED_DELIVERY[mode]


def validity_period(seconds: float) -> str:
    """submit_sm validity_period in the relative form of SMPP 3.4 §7.1.1.2, "YYMMDDhhmmss000R"
    (tenths "0" and the quarter-hour field "00" are unused in relative times).

    Days go in the DD field (the month and year fields are left at 0: their length in days is
    not defined by the spec); config caps the timeout at 30 days, inside DD's two digits.
    """
    total = max(1, round(seconds))
    days, rest = divmod(total, 86400)
    if days > 99:
        raise ValueError("a relative validity period of more than 99 days needs months")
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


@dataclass(frozen=True)
class Settlement:
    """The final state a text gets without a receipt, and the words staff read for it."""

    state: SmsState
    reason: str


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} hours" if seconds >= 3600 else f"{seconds:g} s"


def at_submit(mode: ReceiptMode) -> Settlement | None:
    """The final state at submit_sm_resp when no receipt will ever come (mode "none")."""
    if mode != "none":
        return None
    return Settlement(
        SmsState.UNCONFIRMED,
        "accepted by the carrier; no receipt asked for (smpp.registered_delivery: none)",
    )


def deadline_outcome(mode: ReceiptMode, receipt_timeout_s: float) -> Settlement:
    """What a text still `submitted` at its receipt deadline becomes."""
    if mode == "failures":
        return Settlement(
            SmsState.DELIVERED,
            f"no failure receipt within {_hours(receipt_timeout_s)}"
            " (smpp.registered_delivery: failures)",
        )
    return Settlement(
        SmsState.UNCONFIRMED,
        f"accepted by the carrier, but no receipt within {_hours(receipt_timeout_s)}"
        " (smpp.receipt_timeout_s)",
    )


def deadline_cutoff(now: float, receipt_timeout_s: float) -> float:
    """Texts submitted before this time and still `submitted` are past their deadline."""
    return now - receipt_timeout_s


def receipts_missing(
    *,
    now: float,
    submits_since_receipt: int,
    oldest_unanswered_at: float | None,
    min_submits: int,
    after_s: float,
) -> bool:
    """True when at least `min_submits` texts asking for a receipt went out since the last
    receipt arrived and the oldest of them `after_s` ago: long enough for receipts to come
    back even from a slow carrier, and enough texts that a few phones being off do not count."""
    if oldest_unanswered_at is None or submits_since_receipt < min_submits:
        return False
    return now - oldest_unanswered_at >= after_s


@dataclass(frozen=True)
class ReceiptHealth:
    """What the status page, /healthz and the metrics show about receipts on this bind."""

    watching: bool  # False when no receipts are expected (registered_delivery failures/none)
    missing: bool
    submits_since_receipt: int
    last_receipt_at: float | None
    seconds_since_receipt: float  # since the last receipt, or since this instance started

    def describe(self) -> str:
        if not self.watching:
            return "not watched (smpp.registered_delivery asks for no receipt on success)"
        if self.missing:
            return (
                f"missing: no receipt for {self.submits_since_receipt} text(s) sent"
                f" ({self.seconds_since_receipt / 60:.0f} min without one); {LIKELY_CAUSES}"
            )
        if self.last_receipt_at is None:
            return "ok (none yet)"
        return f"ok (last {self.seconds_since_receipt:.0f} s ago)"


class ReceiptWatch:
    """Counts, for one bind, the texts that asked for a receipt since the last receipt came."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.last_receipt_at: float | None = None
        self.submits_since_receipt = 0
        self.oldest_unanswered_at: float | None = None
        self.missing = False

    def submitted(self, now: float) -> None:
        self.submits_since_receipt += 1
        if self.oldest_unanswered_at is None:
            self.oldest_unanswered_at = now

    def receipt(self, now: float) -> None:
        self.last_receipt_at = now
        self.submits_since_receipt = 0
        self.oldest_unanswered_at = None

    def check(
        self, now: float, *, watching: bool, min_submits: int, after_s: float
    ) -> tuple[ReceiptHealth, bool]:
        """The health at `now`, and whether `missing` changed since the last check."""
        missing = watching and receipts_missing(
            now=now,
            submits_since_receipt=self.submits_since_receipt,
            oldest_unanswered_at=self.oldest_unanswered_at,
            min_submits=min_submits,
            after_s=after_s,
        )
        changed = missing != self.missing
        self.missing = missing
        since = self.last_receipt_at if self.last_receipt_at is not None else self.started_at
        health = ReceiptHealth(
            watching=watching,
            missing=missing,
            submits_since_receipt=self.submits_since_receipt,
            last_receipt_at=self.last_receipt_at,
            seconds_since_receipt=max(0.0, now - since),
        )
        return health, changed
