"""How long to wait before retrying: one formula for every retry loop (pure).

The SMPP session's reconnect, the IMAP intake's reconnect, the dispatcher's retry of a text and
the mailer's retry of an email all wait `backoff_delay(attempt, lo, hi, rng)` with their own
configured bounds.
"""

from __future__ import annotations

import random

# 2**60 times any sane minimum is past any maximum; the cap keeps the float finite.
_MAX_DOUBLINGS = 60


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Exponential with full jitter (the AWS Architecture Blog's "Exponential Backoff And
    Jitter"): uniform between `lo` and min(`hi`, `lo` * 2**attempt), so that many texts, or many
    bridges, failing together do not come back together. Never less than `lo`, never more than
    `hi`; should a configuration give `hi` < `lo`, `lo` wins (a retry is never sooner than the
    minimum). `rng` None uses the `random` module's generator.
    """
    ceiling = max(lo, min(hi, lo * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS)))
    r = rng.random() if rng is not None else random.random()
    # lo + (ceiling - lo) * r can round one ulp past ceiling: clamp.
    return min(ceiling, lo + (ceiling - lo) * r)
