"""History invariants the crash and cluster tests check on every finished instance."""

from __future__ import annotations

import collections
from collections.abc import Callable

from duroxide_runtime import Event, HistoryEvent

__all__ = ["history_problems", "CheckCompletion"]

_COMPLETES: dict[type[HistoryEvent], type[HistoryEvent]] = {
    Event.ActivityCompleted: Event.ActivityScheduled,
    Event.ActivityFailed: Event.ActivityScheduled,
    Event.TimerFired: Event.TimerCreated,
    Event.SubOrchestrationCompleted: Event.SubOrchestrationScheduled,
    Event.SubOrchestrationFailed: Event.SubOrchestrationScheduled,
}
#: Schedules that one completion event (naming them in source_event_id) must answer.
_ANSWERED = (Event.ActivityScheduled, Event.TimerCreated, Event.SubOrchestrationScheduled)

CheckCompletion = Callable[[HistoryEvent, HistoryEvent], "str | None"]


def history_problems(history: list[HistoryEvent], expected: str, schedules_wanted: dict[str, int],
                      check: CheckCompletion) -> list[str]:
    """Everything wrong with one completed instance's history (an empty list: all good).

    ``check(schedule, completion)`` returns a problem with a completion's value, or None.
    """
    problems: list[str] = []
    ids = [e.event_id for e in history]
    if ids != list(range(1, len(history) + 1)):
        problems.append(f"event ids are not 1..{len(history)}: {ids}")
    if not history or not isinstance(history[0], Event.OrchestrationStarted):
        problems.append("first event is not OrchestrationStarted")
    if sum(isinstance(e, Event.OrchestrationStarted) for e in history) != 1:
        problems.append("OrchestrationStarted recorded more than once")
    terminal = [e for e in history if isinstance(e, (Event.OrchestrationCompleted, Event.OrchestrationFailed,
                                                     Event.OrchestrationContinuedAsNew))]
    if len(terminal) != 1 or terminal[0] is not history[-1]:
        problems.append(f"expected exactly one terminal event, last; got {terminal}")
    elif not isinstance(terminal[0], Event.OrchestrationCompleted) or terminal[0].output != expected:
        problems.append(f"terminal event {terminal[0]!r}, expected output {expected}")
    schedules = {e.event_id: e for e in history if e.is_schedule}
    completions: collections.Counter[int] = collections.Counter()
    for e in history:
        kind = _COMPLETES.get(type(e))
        if kind is None:
            continue
        source = e.source_event_id  # type: ignore[attr-defined]
        completions[source] += 1
        sched = schedules.get(source)
        if not isinstance(sched, kind):
            problems.append(f"event {e.event_id} ({type(e).__name__}) completes {sched!r}")
            continue
        if isinstance(e, (Event.ActivityFailed, Event.SubOrchestrationFailed)):
            problems.append(f"failure recorded: {e!r}")
            continue
        problem = check(sched, e)
        if problem:
            problems.append(f"event {e.event_id}: {problem}")
    for sid, sched in schedules.items():
        if isinstance(sched, _ANSWERED) and completions[sid] != 1:
            problems.append(f"schedule event {sid} ({type(sched).__name__}) completed {completions[sid]} times")
    kinds = dict(collections.Counter(type(e).__name__ for e in schedules.values()))
    if kinds != schedules_wanted:
        problems.append(f"schedules {kinds}, expected {schedules_wanted}")
    return problems
