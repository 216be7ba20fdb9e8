"""The status page's per-library figures and 24-hour chart (pure)."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from bridge import statuspage
from bridge.statuspage import LibraryInput, hourly, summarise
from bridge.store.base import ACTIVITY_BUCKET_S, Activity

NY = "America/New_York"
# 2026-12-01 15:00 in New York (20:00 UTC)
NOW = datetime(2026, 12, 1, 15, 0, tzinfo=ZoneInfo(NY)).timestamp()
LIBS = [
    LibraryInput("riverside", "Riverside Public Library", "+12025550100", NY),
    LibraryInput("ashland", "Ashland Library", "+12025550100", "Asia/Kolkata"),
]


def b(ts: float) -> int:
    return int(ts // ACTIVITY_BUCKET_S)


def at(hour: int, minute: int = 0, day: int = 1, zone: str = NY) -> float:
    return datetime(2026, 12, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def test_today_starts_at_the_librarys_midnight_and_the_week_at_seven_days() -> None:
    act = Activity(
        texts=[
            ("riverside", b(at(0, 5)), "delivered", 3),  # today, New York
            ("riverside", b(at(23, 50, day=1) - 86400), "failed", 1),  # Nov 30: week only
            ("riverside", b(at(9)), "queued", 2),  # pending: sent, no outcome yet
            ("riverside", b(NOW - 8 * 86400), "delivered", 50),  # older than the week
            ("gone", b(at(9)), "delivered", 7),  # a library no longer configured
        ],
        replies=[("riverside", b(at(10)), 2)],
        optouts=[("+12025550100", b(at(11)), True, 1), ("+19995550100", b(at(11)), True, 4)],
        to_fix=[("riverside", "+12025550143", "the carrier rejected the number", 2)],
    )
    river, ash = summarise(act, LIBS, NOW)
    assert (river.today.sent, river.today.delivered, river.today.failed) == (5, 3, 0)
    assert (river.week.sent, river.week.delivered, river.week.failed) == (6, 3, 1)
    assert river.today.replies == 2 and river.today.optouts == 1
    # the other library shares the sending number, so it shares its opt-outs
    assert ash.week.optouts == 1 and ash.week.sent == 0
    assert river.to_fix == [("+1********43", "the carrier rejected the number", 2)]


def test_today_in_a_half_hour_zone() -> None:
    # 15:00 New York is 01:30 in Kolkata: "today" there began 90 minutes ago
    act = Activity(
        texts=[
            ("ashland", b(NOW - 85 * 60), "delivered", 1),
            ("ashland", b(NOW - 95 * 60), "delivered", 1),
        ],
        replies=[],
        optouts=[],
        to_fix=[],
    )
    _, ash = summarise(act, LIBS, NOW)
    assert ash.today.delivered == 1 and ash.week.delivered == 2


def test_hourly_puts_each_text_in_its_hour_by_outcome() -> None:
    act = Activity(
        texts=[
            ("riverside", b(NOW + 60), "delivered", 4),  # the current hour: last bar
            ("ashland", b(NOW - 60), "expired", 1),  # the hour before
            ("riverside", b(NOW - 23 * 3600), "sending", 2),  # the first bar
            ("riverside", b(NOW - 24 * 3600), "delivered", 9),  # outside the chart
        ],
        replies=[],
        optouts=[],
        to_fix=[],
    )
    rows = hourly(act, NOW + 1800)  # half past: the current hour has begun
    assert len(rows) == 24
    assert rows[-1]["delivered"] == 4 and rows[-2]["failed"] == 1 and rows[0]["pending"] == 2
    assert sum(sum(r.values()) for r in rows) == 7


def test_chart_is_plain_svg_scaled_to_the_busiest_hour() -> None:
    rows = [dict.fromkeys(statuspage.OUTCOMES, 0) for _ in range(24)]
    rows[5]["delivered"] = 8
    rows[5]["failed"] = 2
    rows[20]["delivered"] = 5
    svg = statuspage.chart_svg(rows, NOW, NY)
    assert svg.startswith('<svg id="chart24h"') and "<script" not in svg
    heights = {
        cls: float(h)
        for cls, h in re.findall(r'class="bar-(\w+)"[^>]*height="([\d.]+)"', svg)
        if cls == "failed"
    }
    bars = re.findall(r'class="bar-delivered"[^>]*height="([\d.]+)"', svg)
    assert [float(h) for h in bars] == [184.0, 115.0]  # 8 and 5 of a 10 scale, 230 px high
    assert heights == {"failed": 46.0}
    # axis labels every six hours, in the library's local time: 24 bars ending at 15:00
    labels = re.findall(r'text-anchor="middle" fill="#555">(\d\d:00)<', svg)
    assert labels == ["16:00", "22:00", "04:00", "10:00"]
    assert svg.count("<g><title>") == 24
    assert ">10<" in svg  # the scale's top label


def test_nice_ceiling() -> None:
    assert [statuspage._nice_ceiling(n) for n in (0, 1, 3, 7, 10, 11, 120)] == [
        0,
        1,
        5,
        10,
        10,
        20,
        200,
    ]


def test_cards_show_both_periods_and_mask_numbers() -> None:
    act = Activity(
        texts=[("riverside", b(NOW - 60), "delivered", 1)],
        replies=[],
        optouts=[],
        to_fix=[("riverside", "+12025550143", "<b>bad</b>", 1)],
    )
    html = statuspage.library_cards(summarise(act, LIBS, NOW))
    assert 'data-k="today-delivered">1<' in html and 'data-k="week-delivered">1<' in html
    assert "2025550143" not in html and "&lt;b&gt;bad&lt;/b&gt;" in html
    assert "Riverside Public Library" in html and "Ashland Library" in html
