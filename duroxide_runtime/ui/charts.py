"""The overview's chart: instances finished per minute over the last hour, as stacked SVG bars.

The store counts finished instances per minute and status
(``client.overview().finished_per_minute``); :func:`per_minute_chart` fills
the minutes with none and computes each bar's geometry, which the template
draws as inline SVG (attributes only: the page allows no inline style or script).

Example::

    chart = per_minute_chart(overview.finished_per_minute, now_ms=clock.now_ms())
    chart.total("Completed")   # completions in the last hour
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Segment", "MinuteBar", "MinuteChart", "per_minute_chart", "CHART_STATUSES"]

#: The statuses drawn, bottom to top.
CHART_STATUSES = ("Completed", "Failed")
_MINUTE_MS = 60_000


@dataclass(frozen=True)
class Segment:
    """One status's part of a minute's bar."""

    status: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class MinuteBar:
    """One minute: when it starts, where its bar is, and its segments."""

    minute_ms: int
    x: float
    width: float
    total: int
    segments: list[Segment]


@dataclass(frozen=True)
class MinuteChart:
    """The chart's bars, size and scale."""

    bars: list[MinuteBar]
    width: float
    height: float
    peak: int
    totals: dict[str, int]

    def total(self, status: str) -> int:
        """Instances that ended with ``status`` within the chart's hour."""
        return self.totals.get(status, 0)


def _triples(rows: Iterable[Any]) -> Iterable[tuple[int, str, int]]:
    """``(minute_ms, status, count)`` from tuples or objects with those attributes."""
    for row in rows:
        if isinstance(row, (tuple, list)):
            minute, status, count = row
        else:
            minute, status, count = row.minute_ms, row.status, row.count
        yield int(minute), str(status), int(count)


def per_minute_chart(rows: Sequence[Any], *, now_ms: int, minutes: int = 60, width: float = 720,
                     height: float = 160) -> MinuteChart:
    """The last ``minutes`` minutes up to ``now_ms`` as stacked bars of ``CHART_STATUSES``.

    Example::

        per_minute_chart([(1_700_000_040_000, "Completed", 3)], now_ms=1_700_000_100_000).peak   # 3
    """
    last = now_ms - now_ms % _MINUTE_MS
    first = last - (minutes - 1) * _MINUTE_MS
    counts: dict[int, dict[str, int]] = {first + i * _MINUTE_MS: {} for i in range(minutes)}
    for minute, status, count in _triples(rows):
        minute -= minute % _MINUTE_MS
        if minute in counts and status in CHART_STATUSES:
            counts[minute][status] = counts[minute].get(status, 0) + count
    peak = max((sum(c.values()) for c in counts.values()), default=0)
    scale = (height - 1) / peak if peak else 0.0
    slot = width / minutes
    bars = []
    totals = {s: 0 for s in CHART_STATUSES}
    for i, (minute, by_status) in enumerate(sorted(counts.items())):
        base = height
        segments = []
        for status in CHART_STATUSES:
            count = by_status.get(status, 0)
            totals[status] += count
            if count:
                h = max(1.0, count * scale)
                base -= h
                segments.append(Segment(status, count, round(base, 2), round(h, 2)))
        bars.append(MinuteBar(minute, round(i * slot + 1, 2), round(max(1.0, slot - 2), 2), sum(by_status.values()),
                              segments))
    return MinuteChart(bars, width, height, peak, totals)
