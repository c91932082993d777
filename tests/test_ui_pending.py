"""``pending_calls``: what an execution waits on, from its history alone (the UI's and the CLI's "waiting on").

Histories are built with the engine factories; each case names the durable call
that is still open, or shows that an answer closes it. Event and update waits
are matched to arrivals per name, first in first out, including an arrival
recorded before its wait.
"""

from __future__ import annotations

from duroxide_runtime import ErrorDetails, Event
from duroxide_runtime.pending import PendingCall, PendingKind, pending_calls

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
    update_requested,
    update_subscribed,
)


def test_an_open_activity_is_pending_with_its_source_line() -> None:
    history = [started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="Charge", input="{}",
                                                  source="shop/orders.py:42")]
    assert pending_calls(history) == [PendingCall(PendingKind.ACTIVITY, "Charge", 2, "shop/orders.py:42", T0)]
    assert pending_calls(history)[0].describe() == "activity 'Charge'"


def test_a_completed_or_failed_activity_is_not_pending() -> None:
    assert pending_calls([started(), activity_scheduled(2, "A"), activity_completed(3, 2, "r")]) == []
    assert pending_calls([started(), activity_scheduled(2, "A"), activity_failed(3, 2)]) == []


def test_a_retry_attempt_is_pending_with_its_attempt() -> None:
    history = [started(), activity_scheduled(2, "A"), activity_failed(3, 2),
               Event.ActivityScheduled(event_id=4, timestamp_ms=T0 + 5, name="A", input="", attempt=2,
                                       first_event_id=2, source="flows.py:9")]
    (call,) = pending_calls(history)
    assert (call.event_id, call.attempt, call.source) == (4, 2, "flows.py:9")


def test_timers_until_they_fire() -> None:
    (call,) = pending_calls([started(), timer_created(2, 60_000)])
    assert (call.kind, call.fire_at_ms, call.name) == (PendingKind.TIMER, T0 + 60_000, None)
    assert call.describe() == "timer"
    assert pending_calls([started(), timer_created(2, 60_000), timer_fired(3, 2, 60_000)]) == []


def test_a_sub_orchestration_names_its_child() -> None:
    (call,) = pending_calls([started(), sub_scheduled(2, "Child", instance_id="kid-1")])
    assert (call.kind, call.name, call.child_instance_id) == (PendingKind.SUB_ORCHESTRATION, "Child", "kid-1")
    done = Event.SubOrchestrationCompleted(event_id=3, timestamp_ms=T0, source_event_id=2, result="ok")
    assert pending_calls([started(), sub_scheduled(2, "Child"), done]) == []
    failed = Event.SubOrchestrationFailed(event_id=3, timestamp_ms=T0, source_event_id=2,
                                          details=ErrorDetails("ValueError", "no"))
    assert pending_calls([started(), sub_scheduled(2, "Child"), failed]) == []


def test_event_waits_are_answered_first_in_first_out_per_name() -> None:
    waiting = [started(), event_subscribed(2, "go"), event_subscribed(3, "go"), event_subscribed(4, "other")]
    assert [c.event_id for c in pending_calls(waiting)] == [2, 3, 4]
    assert [c.event_id for c in pending_calls([*waiting, event_raised(5, "go", "x")])] == [3, 4]
    assert [c.event_id for c in pending_calls([*waiting, event_raised(5, "nobody", "x")])] == [2, 3, 4]


def test_an_event_that_arrived_before_its_wait_answers_it() -> None:
    assert pending_calls([started(), event_raised(2, "go", "x"), event_subscribed(3, "go")]) == []
    # Kept once: a second wait for it still waits.
    (call,) = pending_calls([started(), event_raised(2, "go", "x"), event_subscribed(3, "go"),
                             event_subscribed(4, "go")])
    assert (call.kind, call.event_id) == (PendingKind.EVENT, 4)


def test_update_waits_until_a_request_arrives() -> None:
    (call,) = pending_calls([started(), update_subscribed(2, "add")])
    assert (call.kind, call.name) == (PendingKind.UPDATE, "add")
    assert pending_calls([started(), update_subscribed(2, "add"), update_requested(3, "r1", "add", "{}")]) == []
    # An event and an update of the same name are different waits.
    (left,) = pending_calls([started(), update_subscribed(2, "x"), event_raised(3, "x", "")])
    assert left.kind is PendingKind.UPDATE


def test_an_ended_execution_waits_on_nothing() -> None:
    open_work = [started(), activity_scheduled(2, "A"), timer_created(3, 1000)]
    for ending in (Event.OrchestrationCompleted(event_id=4, timestamp_ms=T0, output=""),
                   Event.OrchestrationFailed(event_id=4, timestamp_ms=T0, details=ErrorDetails("E", "m")),
                   Event.OrchestrationContinuedAsNew(event_id=4, timestamp_ms=T0, input="")):
        assert pending_calls([*open_work, ending]) == []
    assert [c.kind for c in pending_calls(open_work)] == [PendingKind.ACTIVITY, PendingKind.TIMER]


def test_calls_that_wait_for_nothing_are_never_pending() -> None:
    history = [started(),
               Event.SystemCall(event_id=2, timestamp_ms=T0, op="guid", value="x"),
               Event.StateSet(event_id=3, timestamp_ms=T0, key="k", value="v"),
               Event.OrchestrationChained(event_id=4, timestamp_ms=T0, name="Other", version=None,
                                          instance_id="o-1", input="")]
    assert pending_calls(history) == []
    assert pending_calls([]) == []


def test_a_rewind_opens_the_failed_call_again() -> None:
    failed = [started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="Charge", input="",
                                                 source="shop.py:7"),
              activity_failed(3, 2),
              Event.OrchestrationFailed(event_id=4, timestamp_ms=T0 + 2, details=ErrorDetails("E", "m"))]
    assert pending_calls(failed) == []
    rewound = [*failed, Event.OrchestrationRewound(event_id=5, timestamp_ms=T0 + 3, reason="fixed", voided=[3, 4])]
    (call,) = pending_calls(rewound)
    assert (call.event_id, call.source) == (2, "shop.py:7")
    assert pending_calls([*rewound, activity_completed(6, 2, "ok")]) == []
