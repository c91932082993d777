"""Small factories for engine tests: synthetic history events, queue messages, and a turn run two ways.

In the style of durabletask's executor tests: a test lists the recorded
events (``started()``, ``activity_scheduled(2, "A", "x")``, ...), the new
messages (``activity_result(2, "r")``), runs :func:`turn`, and asserts on
the events and work it returns. :func:`turn` runs the turn from scratch
(``execute``) and as cached turns (one ``Execution`` replays the history in
one turn, then gets the messages in the next) and checks both give the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from duroxide_runtime import ErrorDetails, Event, HistoryEvent, RuntimeOptions
from duroxide_runtime.engine.execution import Execution, OrchestrationFn, TurnInput, TurnResult, execute
from duroxide_runtime.engine.output import TurnOutput
from duroxide_runtime.messages import (
    ActivityResult,
    CancelRequest,
    ClientUpdate,
    ExternalEvent,
    OrchestratorMessage,
    PoisonNotice,
    StartOrchestration,
    SubOrchestrationResult,
    TimerFired,
)

INSTANCE = "inst"
NAME = "Orch"
VERSION = "1.0.0"
T0 = 1_000_000
NOW = T0 + 60_000

# -- history events -----------------------------------------------------------------


def started(input: str = "in", *, parent: tuple[str, int, int] | None = None) -> HistoryEvent:
    return Event.OrchestrationStarted(
        event_id=1, timestamp_ms=T0, name=NAME, version=VERSION, input=input,
        parent_instance_id=parent[0] if parent else None, parent_execution_id=parent[1] if parent else None,
        parent_event_id=parent[2] if parent else None)


def activity_scheduled(event_id: int, name: str, input: str = "") -> HistoryEvent:
    return Event.ActivityScheduled(event_id=event_id, timestamp_ms=T0, name=name, input=input)


def activity_completed(event_id: int, source: int, result: str) -> HistoryEvent:
    return Event.ActivityCompleted(event_id=event_id, timestamp_ms=T0 + 1, source_event_id=source, result=result)


def activity_failed(event_id: int, source: int, message: str = "boom") -> HistoryEvent:
    return Event.ActivityFailed(event_id=event_id, timestamp_ms=T0 + 1, source_event_id=source,
                                details=ErrorDetails("ValueError", message, "tb"))


def timer_created(event_id: int, after_ms: int) -> HistoryEvent:
    return Event.TimerCreated(event_id=event_id, timestamp_ms=T0, fire_at_ms=T0 + after_ms)


def timer_fired(event_id: int, source: int, after_ms: int) -> HistoryEvent:
    return Event.TimerFired(event_id=event_id, timestamp_ms=T0 + after_ms, source_event_id=source,
                            fire_at_ms=T0 + after_ms)


def sub_scheduled(event_id: int, name: str, input: str = "", instance_id: str | None = None) -> HistoryEvent:
    return Event.SubOrchestrationScheduled(event_id=event_id, timestamp_ms=T0, name=name, version=None,
                                           instance_id=instance_id or f"{INSTANCE}::sub::{event_id}", input=input)


def event_subscribed(event_id: int, name: str) -> HistoryEvent:
    return Event.EventSubscribed(event_id=event_id, timestamp_ms=T0, name=name)


def event_raised(event_id: int, name: str, data: str) -> HistoryEvent:
    return Event.EventRaised(event_id=event_id, timestamp_ms=T0 + 1, name=name, data=data)


def system_call(event_id: int, op: str, value: str) -> HistoryEvent:
    return Event.SystemCall(event_id=event_id, timestamp_ms=T0, op=op, value=value)


def state_set(event_id: int, key: str, value: str) -> HistoryEvent:
    return Event.StateSet(event_id=event_id, timestamp_ms=T0, key=key, value=value)


def stream_emitted(event_id: int, offset: int, value: str) -> HistoryEvent:
    return Event.StreamEmitted(event_id=event_id, timestamp_ms=T0, offset=offset, value=value)


def update_subscribed(event_id: int, name: str) -> HistoryEvent:
    return Event.UpdateSubscribed(event_id=event_id, timestamp_ms=T0, name=name)


def update_requested(event_id: int, request_id: str, name: str, data: str) -> HistoryEvent:
    return Event.UpdateRequested(event_id=event_id, timestamp_ms=T0 + 1, request_id=request_id, name=name, data=data)


def update_replied(event_id: int, request_id: str, name: str, result: str | None = None,
                   rejected: str | None = None) -> HistoryEvent:
    return Event.UpdateReplied(event_id=event_id, timestamp_ms=T0 + 1, request_id=request_id, name=name,
                               result=result, rejected=rejected)


# -- new messages -----------------------------------------------------------------------


def start(input: str = "in", *, parent: tuple[str, int, int] | None = None) -> StartOrchestration:
    return StartOrchestration(instance_id=INSTANCE, name=NAME, version=VERSION, input=input, execution_id=1,
                              parent_instance_id=parent[0] if parent else None,
                              parent_execution_id=parent[1] if parent else None,
                              parent_event_id=parent[2] if parent else None)


def activity_result(source: int, result: str | None = None, *, error: str | None = None) -> ActivityResult:
    return ActivityResult(instance_id=INSTANCE, execution_id=1, event_id=source, result=result,
                          error=ErrorDetails("ValueError", error, "tb") if error is not None else None)


def timer_message(source: int, after_ms: int) -> TimerFired:
    return TimerFired(instance_id=INSTANCE, execution_id=1, event_id=source, fire_at_ms=T0 + after_ms)


def sub_result(source: int, result: str | None = None, *, error: str | None = None) -> SubOrchestrationResult:
    return SubOrchestrationResult(instance_id=INSTANCE, execution_id=1, event_id=source, result=result,
                                  error=ErrorDetails("ChildError", error, "tb") if error is not None else None)


def external(name: str, data: str) -> ExternalEvent:
    return ExternalEvent(instance_id=INSTANCE, name=name, data=data)


def client_update(request_id: str, name: str, data: str) -> ClientUpdate:
    return ClientUpdate(instance_id=INSTANCE, request_id=request_id, name=name, data=data)


def cancel(reason: str = "operator", grace_ms: int | None = None) -> CancelRequest:
    return CancelRequest(instance_id=INSTANCE, reason=reason, grace_ms=grace_ms)


def cancel_requested(event_id: int, reason: str = "operator", grace_ms: int | None = 30_000,
                     at_ms: int = 0) -> HistoryEvent:
    return Event.OrchestrationCancelRequested(event_id=event_id, timestamp_ms=T0 + at_ms, reason=reason,
                                              grace_ms=grace_ms)


def poison(reason: str = "delivered too often") -> PoisonNotice:
    return PoisonNotice(instance_id=INSTANCE, execution_id=1, reason=reason)


# -- running a turn ------------------------------------------------------------------------


def kinds(events: list[HistoryEvent]) -> list[str]:
    """Event type names, for short assertions."""
    return [type(e).__name__ for e in events]


def _norm(value: Any) -> Any:
    """Dataclasses as comparable tuples, minus what differs between runs by design (tracebacks, trace ids)."""
    if isinstance(value, ErrorDetails):
        return ("ErrorDetails", value.error_type, value.message)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple((f.name, _norm(getattr(value, f.name))) for f in dataclasses.fields(value)
                                            if f.name not in ("trace_context", "parent_trace_context")))
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _joined(first: TurnOutput, second: TurnOutput) -> TurnOutput:
    status = second if second.custom_status_changed else first
    return TurnOutput(first.new_events + second.new_events, first.activities + second.activities,
                      first.messages + second.messages, first.cancelled_activities + second.cancelled_activities,
                      first.cancelled_timers + second.cancelled_timers, status.custom_status,
                      first.custom_status_changed or second.custom_status_changed)


def turn(fn: OrchestrationFn, history: list[HistoryEvent], *messages: OrchestratorMessage,
         options: RuntimeOptions | None = None) -> TurnResult:
    """One turn from scratch; checks that cached turns (replay, then the messages) produce the same."""
    options = options or RuntimeOptions()
    scratch = execute(fn, TurnInput(now_ms=NOW, messages=messages, history=history), instance_id=INSTANCE,
                      options=options)
    if history:
        ex = Execution(fn, INSTANCE, 1, NAME, VERSION, options)
        try:
            replayed = ex.run_turn(TurnInput(now_ms=NOW, history=history))
            cached = ex.run_turn(TurnInput(now_ms=NOW, messages=messages))
        finally:
            ex.dispose()
        assert _norm(_joined(replayed.output, cached.output)) == _norm(scratch.output), "cached turns differ"
        assert _norm(cached.outcome) == _norm(scratch.outcome), "cached turns end differently"
    return scratch
