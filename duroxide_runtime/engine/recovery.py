"""Operator recovery in the engine: what a rewind voids and sends again, and what a restart records.

A rewind never edits stored events. It appends ``OrchestrationRewound`` whose
``voided`` list names the events replay skips from then on: the execution's
``OrchestrationFailed`` and the failures that caused it. Only failures recorded
after the code's last scheduling event are voided: a failure the code went on
from (caught, then scheduled something else) shaped what it did next, so
un-happening it would make the recorded calls after it unmatched. The calls the
voided failures answered are open again; the rewind turn sends them out once
more (an activity's work item, or a rewind request to a failed child).

Example::

    plan = plan_rewind(history)
    if isinstance(plan, RewindRefused):
        print(plan.why)            # "it was cancelled: restart it instead", ...
    else:
        plan.voided                # [7, 9]: an ActivityFailed and the OrchestrationFailed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ErrorDetails
from ..history import Event, HistoryEvent
from ..messages import RewindRequest, SubOrchestrationResult

__all__ = ["RewindPlan", "RewindRefused", "plan_rewind", "voided_events", "effective_history", "rewind_refusal"]

_ENDS = (Event.OrchestrationCompleted, Event.OrchestrationFailed, Event.OrchestrationContinuedAsNew)


@dataclass(frozen=True)
class RewindPlan:
    """A rewind that can go ahead: events to void, and the calls to send out again."""

    voided: list[int]
    activities: list[Event.ActivityScheduled] = field(default_factory=list)
    children: list[Event.SubOrchestrationScheduled] = field(default_factory=list)


@dataclass(frozen=True)
class RewindRefused:
    """Why an execution cannot be rewound (said to the operator, and to a rewinding parent)."""

    why: str


def voided_events(history: Sequence[HistoryEvent]) -> frozenset[int]:
    """Event ids that the rewinds recorded in ``history`` voided."""
    voided: set[int] = set()
    for event in history:
        if isinstance(event, Event.OrchestrationRewound):
            voided.update(event.voided)
    return frozenset(voided)


def effective_history(history: Sequence[HistoryEvent]) -> list[HistoryEvent]:
    """The events replay applies: without voided events and the rewind records themselves."""
    voided = voided_events(history)
    return [e for e in history if e.event_id not in voided and not isinstance(e, Event.OrchestrationRewound)]


def plan_rewind(history: Sequence[HistoryEvent]) -> RewindPlan | RewindRefused:
    """What rewinding the execution recorded in ``history`` voids and sends again."""
    events = effective_history(history)
    end_at = next((i for i in range(len(events) - 1, -1, -1) if isinstance(events[i], _ENDS)), None)
    if end_at is None:
        return RewindRefused("it has not failed (it is still running)")
    end = events[end_at]
    if not isinstance(end, Event.OrchestrationFailed):
        return RewindRefused(f"it did not fail ({type(end).__name__.removeprefix('Orchestration').lower()})")
    if any(isinstance(e, Event.OrchestrationRestarted) for e in events[end_at:]):
        return RewindRefused("it was restarted since it failed")
    if end.details.error_type == "OrchestrationCancelled":
        return RewindRefused("it was cancelled, not failed: restart it instead")
    scheduled = {e.event_id: e for e in events if e.is_schedule}
    last_schedule = max((i for i, e in enumerate(events[:end_at]) if e.is_schedule), default=-1)
    voided: list[int] = []
    activities: list[Event.ActivityScheduled] = []
    children: list[Event.SubOrchestrationScheduled] = []
    for event in events[last_schedule + 1:end_at]:
        call = scheduled.get(event.source_event_id) if isinstance(
            event, (Event.ActivityFailed, Event.SubOrchestrationFailed)) else None
        if isinstance(event, Event.ActivityFailed) and isinstance(call, Event.ActivityScheduled):
            activities.append(call)
        elif isinstance(event, Event.SubOrchestrationFailed) and isinstance(call, Event.SubOrchestrationScheduled):
            children.append(call)
        else:
            continue
        voided.append(event.event_id)
    voided.append(end.event_id)
    return RewindPlan(voided, activities, children)


def rewind_refusal(request: RewindRequest, instance_id: str, refused: RewindRefused) -> SubOrchestrationResult | None:
    """What a rewinding parent hears when its child cannot be rewound: the child's failure, again
    (so the parent fails again rather than waiting for ever); ``None`` if no parent asked."""
    if request.parent_instance_id is None or request.parent_event_id is None:
        return None
    return SubOrchestrationResult(
        instance_id=request.parent_instance_id, execution_id=request.parent_execution_id or 1,
        event_id=request.parent_event_id,
        error=ErrorDetails("RewindRefused", f"child {instance_id!r} was not rewound: {refused.why}"))
