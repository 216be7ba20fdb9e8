"""Per-library figures and the 24-hour chart of the status page (pure: values in, HTML out).

Library staff and sysadmins open the page to see how their texts are doing, not to read
counters: one card per library with today's and the last seven days' figures, the numbers whose
notices keep failing (masked), and a chart of the last 24 hours drawn here as inline SVG, so the
page needs no script and no external asset (its Content-Security-Policy forbids both).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bridge.addressing import mask_msisdn
from bridge.store.base import ACTIVITY_BUCKET_S, Activity

WEEK_S = 7 * 24 * 3600
DAY_S = 24 * 3600
HOUR_S = 3600
TO_FIX_SHOWN = 5

# How a notice's state counts on the page. Anything not final yet is "pending".
_OUTCOME = {
    "delivered": "delivered",
    "failed": "failed",
    "expired": "failed",
    "unconfirmed": "unconfirmed",
}
OUTCOMES = ("delivered", "failed", "unconfirmed", "pending")
_COLOURS = {
    "delivered": "#1a7f37",
    "failed": "#b3261e",
    "unconfirmed": "#b08800",
    "pending": "#8c959f",
}


def outcome(state: str) -> str:
    return _OUTCOME.get(state, "pending")


@dataclass
class Figures:
    """One library's counts over one period."""

    sent: int = 0  # notices accepted for texting
    delivered: int = 0
    failed: int = 0
    unconfirmed: int = 0
    replies: int = 0  # patron replies mailed to staff
    optouts: int = 0  # STOP (or staff opt-outs) on the library's sending number
    optins: int = 0


@dataclass(frozen=True)
class LibraryInput:
    """What the page knows of a library from the configuration."""

    tenant_id: str
    name: str
    scope: str  # its sending number: opt-outs are recorded against it
    timezone: str  # whose midnight "today" starts at


@dataclass
class LibraryStats:
    tenant_id: str
    name: str
    timezone: str
    today: Figures = field(default_factory=Figures)
    week: Figures = field(default_factory=Figures)
    to_fix: list[tuple[str, str, int]] = field(default_factory=list)  # masked number, why, n


def _midnight(now: float, zone: str) -> float:
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(now, tz)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # A day that starts inside a DST gap still starts at the first instant after it.
    return max(start.timestamp(), (local - timedelta(days=1)).timestamp())


def summarise(
    activity: Activity, libraries: Sequence[LibraryInput], now: float
) -> list[LibraryStats]:
    """Today's and the week's figures per library (buckets at or after the start count)."""
    week_from = int((now - WEEK_S) // ACTIVITY_BUCKET_S)
    stats = {
        lib.tenant_id: LibraryStats(lib.tenant_id, lib.name, lib.timezone) for lib in libraries
    }
    day_from = {
        lib.tenant_id: int(_midnight(now, lib.timezone) // ACTIVITY_BUCKET_S) for lib in libraries
    }

    def periods(tenant_id: str, bucket: int) -> list[Figures]:
        s = stats[tenant_id]
        out = [s.week] if bucket >= week_from else []
        if bucket >= day_from[tenant_id]:
            out.append(s.today)
        return out

    for tenant_id, bucket, state, n in activity.texts:
        if tenant_id not in stats:
            continue  # a library since removed from the configuration
        kind = outcome(state)
        for fig in periods(tenant_id, bucket):
            fig.sent += n
            if kind != "pending":
                setattr(fig, kind, getattr(fig, kind) + n)
    for tenant_id, bucket, n in activity.replies:
        if tenant_id in stats:
            for fig in periods(tenant_id, bucket):
                fig.replies += n
    for lib in libraries:
        for scope, bucket, opted_out, n in activity.optouts:
            if scope != lib.scope:
                continue
            for fig in periods(lib.tenant_id, bucket):
                if opted_out:
                    fig.optouts += n
                else:
                    fig.optins += n
    for tenant_id, msisdn, reason, n in activity.to_fix:
        s = stats.get(tenant_id)
        if s is not None and len(s.to_fix) < TO_FIX_SHOWN:
            s.to_fix.append((mask_msisdn(msisdn), reason, n))
    return [stats[lib.tenant_id] for lib in libraries]


def hourly(activity: Activity, now: float, hours: int = 24) -> list[dict[str, int]]:
    """Notices per hour by outcome for the last `hours` hours, oldest first, all libraries."""
    per_hour = HOUR_S // ACTIVITY_BUCKET_S
    last = int(now // HOUR_S)
    out: list[dict[str, int]] = [dict.fromkeys(OUTCOMES, 0) for _ in range(hours)]
    for _tenant, bucket, state, n in activity.texts:
        i = hours - 1 - (last - bucket // per_hour)
        if 0 <= i < hours:
            out[i][outcome(state)] += n
    return out


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def chart_svg(rows: Sequence[dict[str, int]], now: float, timezone: str = "UTC") -> str:
    """A stacked bar per hour, drawn with plain SVG rectangles; scales to the screen width."""
    width, height, left, bottom, top = 720, 280, 56, 36, 14
    plot_h = height - bottom - top
    slot = (width - left - 8) / max(1, len(rows))
    peak = max((sum(r.values()) for r in rows), default=0)
    scale_max = _nice_ceiling(peak)
    parts = [
        f'<svg id="chart24h" viewBox="0 0 {width} {height}" role="img" '
        'aria-labelledby="chart24h-title" preserveAspectRatio="xMidYMid meet" '
        'style="width:100%;height:auto;max-width:720px">',
        '<title id="chart24h-title">Text messages per hour, last 24 hours, by outcome</title>',
    ]
    # gridlines at 0, half and the top; the half line is labelled only when it is a whole number
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        value = scale_max * frac
        label = f"{value:g}" if value == int(value) else ""
        parts.append(
            f'<line x1="{left}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 8}" y="{y + 7:.1f}" font-size="20" text-anchor="end" '
            f'fill="#555">{label}</text>'
        )
    tz = ZoneInfo(timezone)
    first_hour = int(now // HOUR_S) - len(rows) + 1
    for i, row in enumerate(rows):
        x = left + i * slot + 1
        y = float(top + plot_h)
        label = datetime.fromtimestamp((first_hour + i) * HOUR_S, tz).strftime("%H:00")
        tip = ", ".join(f"{row[k]} {k}" for k in OUTCOMES if row[k]) or "none"
        parts.append(f"<g><title>{_e(label)}: {_e(tip)}</title>")
        for kind in OUTCOMES:
            n = row[kind]
            if n == 0 or scale_max == 0:
                continue
            h = plot_h * n / scale_max
            y -= h
            parts.append(
                f'<rect class="bar-{kind}" x="{x:.1f}" y="{y:.1f}" width="{slot - 2:.1f}" '
                f'height="{h:.1f}" fill="{_COLOURS[kind]}"/>'
            )
        parts.append("</g>")
        if i % 6 == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - 8}" font-size="20" '
                f'text-anchor="middle" fill="#555">{_e(label)}</text>'
            )
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="key"><span class="sw" style="background:{_COLOURS[k]}"></span>{k}</span>'
        for k in OUTCOMES
    )
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _nice_ceiling(n: int) -> int:
    """1, 2, 5, 10, 20, 50, ... at or above n (axis labels a person reads at a glance)."""
    if n <= 0:
        return 0
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= n:
                return step * m
        step *= 10


def library_cards(stats: Sequence[LibraryStats]) -> str:
    """One card per library: today and seven days side by side, then the numbers to fix."""
    if not stats:
        return '<p class="muted">No library is configured.</p>'
    rows = (
        ("texts sent", "sent"),
        ("delivered", "delivered"),
        ("failed", "failed"),
        ("never confirmed", "unconfirmed"),
        ("patron replies", "replies"),
        ("opt-outs (STOP)", "optouts"),
        ("opt-ins (START)", "optins"),
    )
    out = []
    for s in stats:
        body = "".join(
            f'<tr><th scope="row">{_e(label)}</th>'
            f'<td class="n" data-k="today-{key}">{getattr(s.today, key)}</td>'
            f'<td class="n" data-k="week-{key}">{getattr(s.week, key)}</td></tr>'
            for label, key in rows
        )
        out.append(
            f'<section class="card" id="lib-{_e(s.tenant_id)}"><h3>{_e(s.name)}</h3>'
            f"<table><tr><th></th><th>today</th><th>7 days</th></tr>{body}</table>"
        )
        if s.to_fix:
            items = "".join(
                f"<li><code>{_e(num)}</code>: {_e(why or 'failed')}"
                + (f" ({n} notices)" if n > 1 else "")
                + "</li>"
                for num, why, n in s.to_fix
            )
            out.append(f'<p class="fixh">Numbers to fix in the ILS (7 days):</p><ul>{items}</ul>')
        out.append(f'<p class="muted">"Today" starts at midnight {_e(s.timezone)}.</p></section>')
    return "".join(out)
