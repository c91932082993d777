"""One execution's history as a Gantt chart: a bar per durable call, from when it was made to when it ended.

Activities, timers and sub-orchestrations run from their schedule event to
their completion (or to now, still open); a wait for an external event or an
update runs until an arrival answers it; an arrival nobody waited for yet, a
cancellation and the execution's end are instants. :func:`layout` turns the
bars into the numbers an inline SVG draws (no script, no style attribute: the
page's Content-Security-Policy allows neither inline).

Example::

    chart = layout(timeline_of(events, now_ms=clock.now_ms()))
    for row in chart.rows:
        print(row.bar.kind, row.bar.label, row.x, row.width)
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from ..history import Event, HistoryEvent
from ..engine.recovery import voided_events

__all__ = ["Bar", "Timeline", "timeline_of", "ChartRow", "Chart", "layout", "MAX_BARS"]

#: Bars drawn at most (a long history shows its first ones and says how many more there are).
MAX_BARS = 300


@dataclass(frozen=True)
class Bar:
    """One durable call or instant: ``kind``, ``label``, its schedule ``event_id``, start and end.

    ``end_ms`` is ``None`` while the call is open; ``outcome`` is ``completed``, ``failed``,
    ``fired``, ``arrived``, ``open`` or ``instant``.
    """

    kind: str
    label: str
    event_id: int
    start_ms: int
    end_ms: int | None
    outcome: str
    source: str | None = None


@dataclass(frozen=True)
class Timeline:
    """The bars of one execution, between its first event and its last (or now, while it runs)."""

    start_ms: int
    end_ms: int
    bars: list[Bar]


def _label(name: str, detail: str = "") -> str:
    return f"{name} {detail}".strip()


def timeline_of(history: Sequence[HistoryEvent], *, now_ms: int) -> Timeline:
    """The bars of ``history`` (one execution); open calls end at ``now_ms`` while it has not ended.

    Example::

        timeline_of(await client.read_history("order-1"), now_ms=client.clock.now_ms()).bars
    """
    if not history:
        return Timeline(now_ms, now_ms, [])
    bars: dict[int, Bar] = {}
    waits: dict[tuple[str, str], collections.deque[int]] = collections.defaultdict(collections.deque)
    ended_at: int | None = None
    instants: list[Bar] = []
    voided = voided_events(history)
    for event in history:
        ts, eid = event.timestamp_ms, event.event_id
        if eid in voided:  # a rewind undid it: the call it answered is open again
            instants.append(Bar("voided", f"{type(event).__name__} (voided by a rewind)", eid, ts, ts, "instant"))
            continue
        match event:
            case Event.ActivityScheduled(name=name, attempt=attempt, source=source):
                bars[eid] = Bar("activity", _label(name, f"(attempt {attempt})" if attempt > 1 else ""), eid, ts,
                                None, "open", source)
            case Event.TimerCreated(fire_at_ms=fire_at, source=source):
                bars[eid] = Bar("timer", f"timer until +{max(0, fire_at - ts) / 1000:g} s", eid, ts, None, "open",
                                source)
            case Event.SubOrchestrationScheduled(name=name, instance_id=child, source=source):
                bars[eid] = Bar("sub-orchestration", _label(name, f"as {child}"), eid, ts, None, "open", source)
            case Event.EventSubscribed(name=name, source=source):
                bars[eid] = Bar("event", f"wait for event {name}", eid, ts, None, "open", source)
                waits[("event", name)].append(eid)
            case Event.UpdateSubscribed(name=name, source=source):
                bars[eid] = Bar("update", f"wait for update {name}", eid, ts, None, "open", source)
                waits[("update", name)].append(eid)
            case Event.EventRaised(name=name) | Event.UpdateRequested(name=name):
                kind = "event" if isinstance(event, Event.EventRaised) else "update"
                queue = waits[(kind, name)]
                if queue:
                    sid = queue.popleft()
                    bars[sid] = _closed(bars[sid], ts, "arrived")
                else:
                    instants.append(Bar(f"{kind}-arrival", f"{kind} {name} arrived", eid, ts, ts, "instant"))
            case Event.ActivityCompleted(source_event_id=sid) | Event.SubOrchestrationCompleted(source_event_id=sid):
                if sid in bars:
                    bars[sid] = _closed(bars[sid], ts, "completed")
            case Event.ActivityFailed(source_event_id=sid) | Event.SubOrchestrationFailed(source_event_id=sid):
                if sid in bars:
                    bars[sid] = _closed(bars[sid], ts, "failed")
            case Event.TimerFired(source_event_id=sid):
                if sid in bars:
                    bars[sid] = _closed(bars[sid], ts, "fired")
            case Event.OrchestrationCancelRequested():
                instants.append(Bar("cancel", "cancel requested", eid, ts, ts, "instant"))
            case Event.OrchestrationSuspended() | Event.OrchestrationResumed() | Event.OrchestrationRewound() | \
                    Event.OrchestrationRestarted():
                what = type(event).__name__.removeprefix("Orchestration").lower()
                instants.append(Bar("operation", f"{what} by {event.by or '?'}", eid, ts, ts, "instant"))
            case Event.OrchestrationCompleted() | Event.OrchestrationFailed() | Event.OrchestrationContinuedAsNew():
                ended_at = ts
                instants.append(Bar("end", type(event).__name__.removeprefix("Orchestration"), eid, ts, ts,
                                    "instant"))
            case _:
                pass
    start = history[0].timestamp_ms
    end = ended_at if ended_at is not None else max(now_ms, history[-1].timestamp_ms)
    ordered = sorted([*bars.values(), *instants], key=lambda b: (b.start_ms, b.event_id))
    return Timeline(start, max(end, start), ordered)


def _closed(bar: Bar, end_ms: int, outcome: str) -> Bar:
    return Bar(bar.kind, bar.label, bar.event_id, bar.start_ms, end_ms, outcome, bar.source)


@dataclass(frozen=True)
class ChartRow:
    """Where one bar is drawn: ``x`` and ``width`` in chart units, ``y`` of its row."""

    bar: Bar
    x: float
    width: float
    y: float
    duration_ms: int


@dataclass(frozen=True)
class Chart:
    """An SVG Gantt chart's geometry: its rows, size, and the bars left out."""

    rows: list[ChartRow]
    width: float
    height: float
    label_width: float
    row_height: float
    span_ms: int
    hidden: int


def layout(timeline: Timeline, *, width: float = 1000, label_width: float = 300, row_height: float = 18,
           max_bars: int = MAX_BARS) -> Chart:
    """The geometry of ``timeline``'s first ``max_bars`` bars; an open bar reaches the timeline's end.

    Example::

        layout(timeline_of(events, now_ms=now)).rows[0].x   # 300.0: the first bar starts at the labels' edge
    """
    span = max(1, timeline.end_ms - timeline.start_ms)
    plot = width - label_width
    rows: list[ChartRow] = []
    for i, bar in enumerate(timeline.bars[:max_bars]):
        end = bar.end_ms if bar.end_ms is not None else timeline.end_ms
        x = label_width + plot * (bar.start_ms - timeline.start_ms) / span
        w = max(2.0, plot * (end - bar.start_ms) / span)
        rows.append(ChartRow(bar, round(min(x, width - 2), 2), round(min(w, width - x), 2) if x < width - 2 else 2.0,
                             i * row_height, max(0, end - bar.start_ms)))
    return Chart(rows, width, max(row_height, len(rows) * row_height), label_width, row_height, span,
                 max(0, len(timeline.bars) - max_bars))
