"""The benchmark chart keeps every ratio row, reads the aim from the row, and skips the rest."""

from __future__ import annotations

import math

from bench.chart import ratio_rows
from bench.common import Row


def row(bench: str, case: str, ratio: float | None, aim: str, meets: bool | None) -> Row:
    return Row(
        bench=bench,
        case=case,
        value=1.0,
        unit="msg/s",
        baseline=None if ratio is None else 1.0,
        baseline_label="",
        ratio=ratio,
        aim=aim,
        meets=meets,
        notes="",
    )


def test_ratio_rows_read_aims_and_skip_rows_without_a_ratio() -> None:
    rows = [
        row("1. SMPP throughput vs window/RTT", "window 10", 0.94, "ratio >= 0.9", True),
        row("3. SMTP intake: bridge vs bare aiosmtpd", "1 connection", 0.4, "ratio >= 0.7", False),
        row("4. Latency", "p50", 3.3, "(none: informs)", None),
        row("2. Rate accuracy", "throttled answers", None, "0", True),
        row("5. Backlog", "skipped", math.nan, "", None),
    ]
    got = ratio_rows(rows)
    assert got == [
        ("1. SMPP throughput vs window/RTT: window 10", 0.94, 0.9, True),
        ("3. SMTP intake: 1 connection", 0.4, 0.7, False),
        ("4. Latency: p50", 3.3, None, None),
    ]
