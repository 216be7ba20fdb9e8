"""BENCH_KANNEL_CASES: one case (or a few) of benchmark 8 by name."""

from __future__ import annotations

import pytest

from bench.kannel_bench import CASES, parse_cases


def test_one_live_case() -> None:
    assert parse_cases("slow:20,receipts,live") == (("slow:20", True, False),)


def test_defaults_and_several_cases() -> None:
    assert parse_cases("ok; slow:20,noreceipts,queued ;") == (
        ("ok", True, True),
        ("slow:20", False, True),
    )


def test_every_default_case_can_be_named() -> None:
    spec = ";".join(
        f"{s},{'receipts' if r else 'noreceipts'},{'queued' if q else 'live'}" for s, r, q in CASES
    )
    assert parse_cases(spec) == CASES


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown flag 'fast'"):
        parse_cases("ok,fast")
