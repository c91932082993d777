"""The instance page's Gantt timeline and the overview's per-minute chart, from histories and counts alone.

Bars run from a call's schedule event to its answer (or to now while open);
arrivals, cancellations and the end are instants; the geometry stays inside
the chart. The chart fills the hour's minutes and stacks Completed under Failed.
"""

from __future__ import annotations

from duroxide_runtime import ErrorDetails, Event
from duroxide_runtime.ui.charts import per_minute_chart
from duroxide_runtime.ui.timeline import layout, timeline_of

from .engine_factories import (
    T0,
    activity_completed,
    activity_failed,
    activity_scheduled,
    event_raised,
    event_subscribed,
    started,
    sub_scheduled,
    timer_created,
    timer_fired,
)


def test_bars_run_from_schedule_to_answer() -> None:
    history = [started(), activity_scheduled(2, "A"), activity_completed(3, 2, "r"), timer_created(4, 5_000),
               timer_fired(5, 4, 5_000), activity_scheduled(6, "B"), activity_failed(7, 6),
               event_subscribed(8, "go"), event_raised(9, "go", "x"), event_raised(10, "extra", "y"),
               Event.OrchestrationCompleted(event_id=11, timestamp_ms=T0 + 6_000, output="")]
    tl = timeline_of(history, now_ms=T0 + 60_000)
    bars = {b.event_id: b for b in tl.bars}
    assert (bars[2].kind, bars[2].outcome, bars[2].end_ms) == ("activity", "completed", T0 + 1)
    assert (bars[4].kind, bars[4].outcome, bars[4].end_ms) == ("timer", "fired", T0 + 5_000)
    assert bars[6].outcome == "failed" and bars[8].outcome == "arrived"
    assert bars[10].kind == "event-arrival" and bars[11].kind == "end"
    assert tl.end_ms == T0 + 6_000  # an ended execution ends at its end, not now


def test_open_calls_reach_now_and_fit_the_chart() -> None:
    history = [started(), sub_scheduled(2, "Child", instance_id="kid"), timer_created(3, 3_600_000)]
    tl = timeline_of(history, now_ms=T0 + 10_000)
    assert [b.end_ms for b in tl.bars] == [None, None] and tl.end_ms == T0 + 10_000
    chart = layout(tl, width=1000, label_width=300)
    for row in chart.rows:
        assert 300 <= row.x and row.x + row.width <= 1000 + 0.01 and row.width >= 2
    assert chart.rows[0].duration_ms == 10_000 and chart.hidden == 0


def test_a_long_history_draws_its_first_bars_and_counts_the_rest() -> None:
    history = [started(), *(activity_scheduled(i, f"A{i}") for i in range(2, 402))]
    chart = layout(timeline_of(history, now_ms=T0 + 1), max_bars=300)
    assert len(chart.rows) == 300 and chart.hidden == 100
    assert layout(timeline_of([], now_ms=T0)).rows == []


def test_operator_actions_are_marks_on_the_timeline() -> None:
    history = [started(), activity_scheduled(2, "A"), activity_failed(3, 2),
               Event.OrchestrationFailed(event_id=4, timestamp_ms=T0 + 2, details=ErrorDetails("E", "m")),
               Event.OrchestrationRewound(event_id=5, timestamp_ms=T0 + 3, reason="fixed", by="ui:127.0.0.1",
                                          voided=[3, 4])]
    marks = [b.label for b in timeline_of(history, now_ms=T0 + 10).bars if b.kind == "operation"]
    assert marks == ["rewound by ui:127.0.0.1"]


def test_the_chart_fills_the_hour_and_stacks_statuses() -> None:
    now = 1_700_000_000_000
    minute = now - now % 60_000
    rows = [(minute, "Completed", 3), (minute, "Failed", 1), (minute - 60_000, "Completed", 2),
            (minute - 61 * 60_000, "Completed", 99), (minute, "Running", 5)]
    chart = per_minute_chart(rows, now_ms=now)
    assert len(chart.bars) == 60 and chart.peak == 4
    assert (chart.total("Completed"), chart.total("Failed")) == (5, 1)  # older than an hour, or not finished: out
    last = chart.bars[-1]
    assert [s.status for s in last.segments] == ["Completed", "Failed"]
    completed, failed = last.segments
    assert failed.y + failed.height <= completed.y + 0.01 and completed.y + completed.height <= chart.height + 0.01
    assert per_minute_chart([], now_ms=now).peak == 0


def test_a_rewind_reopens_the_bar_it_voided() -> None:
    history = [started(), activity_scheduled(2, "A"), activity_failed(3, 2),
               Event.OrchestrationFailed(event_id=4, timestamp_ms=T0 + 2, details=ErrorDetails("E", "m")),
               Event.OrchestrationRewound(event_id=5, timestamp_ms=T0 + 3, reason="fixed", voided=[3, 4])]
    tl = timeline_of(history, now_ms=T0 + 100)
    bars = {b.event_id: b for b in tl.bars}
    assert bars[2].outcome == "open" and tl.end_ms == T0 + 100
    assert bars[3].kind == bars[4].kind == "voided"
