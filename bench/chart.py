"""The ratio column of BENCHMARKS.md as a picture: bench/ratios.png.

One horizontal bar per row that has a ratio, coloured by whether it meets its aim, with the aim
drawn as a tick on the bar. matplotlib is the `bench` extra (installed by `make bench`); without
it the chart is skipped and the tables stand alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from bench.common import Row

_AIM = re.compile(r"ratio\s*>=\s*([0-9.]+)")
_COLOURS = {True: "#2e7d32", False: "#c62828", None: "#78909c"}


def ratio_rows(rows: Sequence[Row]) -> list[tuple[str, float, float | None, bool | None]]:
    """(label, ratio, aim or None, meets) for every row with a finite ratio, in table order."""
    out = []
    for row in rows:
        if row.ratio is None or row.ratio != row.ratio:  # None or NaN
            continue
        match = _AIM.search(row.aim)
        label = f"{row.bench.split(':')[0]}: {row.case}"
        out.append((label if len(label) <= 70 else label[:67] + "...", row.ratio, None, row.meets))
        if match:
            out[-1] = (out[-1][0], row.ratio, float(match.group(1)), row.meets)
    return out


def write(rows: Sequence[Row], path: Path, title: str) -> Path | None:
    """Draw the chart; returns its path, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = ratio_rows(rows)
    if not data:
        return None
    height = 0.9 + 0.32 * len(data)
    fig, ax = plt.subplots(figsize=(10, height), dpi=100)
    ys = list(range(len(data)))[::-1]
    for y, (_, ratio, aim, meets) in zip(ys, data, strict=True):
        ax.barh(y, min(ratio, 2.0), color=_COLOURS[meets], height=0.6)
        ax.text(min(ratio, 2.0) + 0.01, y, f"{ratio:g}", va="center", fontsize=8)
        if aim is not None:
            ax.plot([aim, aim], [y - 0.4, y + 0.4], color="black", linewidth=1.5)
    ax.set_yticks(ys, [label for label, *_ in data], fontsize=8)
    ax.axvline(1.0, color="#9e9e9e", linewidth=0.8, linestyle=":")
    ax.set_xlabel("ratio to the same-run baseline (black tick: aim; green meets it, red not)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
