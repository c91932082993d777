"""Suspend, resume and rewind in the engine, from synthetic histories (the store-level tests are
tests/test_recovery_operations.py).

Suspend and resume run through ``engine_factories.turn`` (from scratch and as
cached turns, which must agree). A rewind always replays the stored history (a
failed execution is never cached), so those turns run with ``execute``.
"""

from __future__ import annotations

from duroxide_runtime import ErrorDetails, Event, OrchestrationContext
from duroxide_runtime.engine.execution import TurnInput, execute
from duroxide_runtime.engine.output import Status
from duroxide_runtime.engine.recovery import RewindPlan, RewindRefused, plan_rewind
from duroxide_runtime.messages import ResumeRequest, RewindRequest, SubOrchestrationResult, SuspendRequest

from .engine_factories import (
    INSTANCE, NOW, T0, activity_completed, activity_failed, activity_result, activity_scheduled, cancel, kinds,
    started, sub_scheduled, turn,
)


async def two_steps(ctx: OrchestrationContext, x: str) -> str:
    a = await ctx.schedule_activity("A", x)
    return await ctx.schedule_activity("B", a)


def suspend() -> SuspendRequest:
    return SuspendRequest(instance_id=INSTANCE, reason="ops", by="ana")


def resume() -> ResumeRequest:
    return ResumeRequest(instance_id=INSTANCE, reason="ok", by="ana")


def failed_end(event_id: int, error_type: str = "ActivityFailed") -> Event.OrchestrationFailed:
    return Event.OrchestrationFailed(event_id=event_id, timestamp_ms=T0 + 2,
                                     details=ErrorDetails(error_type, "it failed"))


def suspended_at(event_id: int) -> Event.OrchestrationSuspended:
    return Event.OrchestrationSuspended(event_id=event_id, timestamp_ms=T0, reason="ops", by="ana")


def test_a_suspended_turn_records_arrivals_and_runs_no_code() -> None:
    result = turn(two_steps, [started("x"), activity_scheduled(2, "A", "x")], suspend(), activity_result(2, "a"))
    assert kinds(result.output.new_events) == ["OrchestrationSuspended", "ActivityCompleted"]
    assert result.output.activities == []  # B is not scheduled: the code did not see A's result
    assert result.status is Status.SUSPENDED


def test_resume_applies_what_was_kept_in_recorded_order() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), suspended_at(3), activity_completed(4, 2, "a")]
    result = turn(two_steps, history, resume())
    assert kinds(result.output.new_events) == ["OrchestrationResumed", "ActivityScheduled"]
    assert [w.name for w in result.output.activities] == ["B"] and result.status is Status.RUNNING


def test_a_repeated_suspend_and_a_stray_resume_record_nothing() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), suspended_at(3)]
    assert turn(two_steps, history, suspend()).output.new_events == []
    assert turn(two_steps, history[:2], resume()).output.new_events == []


def test_a_duplicate_of_a_kept_result_is_dropped() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), suspended_at(3), activity_completed(4, 2, "a")]
    result = turn(two_steps, history, activity_result(2, "again"), resume())
    assert kinds(result.output.new_events) == ["OrchestrationResumed", "ActivityScheduled"]
    assert result.output.activities[0].input == "a"


def test_cancel_reaches_a_suspended_instance_before_what_was_kept() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), suspended_at(3), activity_completed(4, 2, "a")]
    result = turn(two_steps, history, cancel("stop", grace_ms=0))
    assert result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "OrchestrationCancelled"  # A's kept result did not let it finish


def test_plan_voids_the_failure_that_ended_it_and_its_end() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), activity_failed(3, 2), failed_end(4)]
    plan = plan_rewind(history)
    assert isinstance(plan, RewindPlan) and plan.voided == [3, 4]
    assert [a.event_id for a in plan.activities] == [2]


def test_plan_keeps_a_failure_the_code_went_on_from() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), activity_failed(3, 2),
               activity_scheduled(4, "Compensate", "x"), activity_failed(5, 4), failed_end(6)]
    plan = plan_rewind(history)
    assert isinstance(plan, RewindPlan) and plan.voided == [5, 6]


def test_plan_refuses_what_did_not_fail_or_was_cancelled() -> None:
    assert isinstance(plan_rewind([started("x"), activity_scheduled(2, "A", "x")]), RewindRefused)
    cancelled = plan_rewind([started("x"), failed_end(2, "OrchestrationCancelled")])
    assert isinstance(cancelled, RewindRefused) and "restart" in cancelled.why


def test_rewind_turn_records_the_rewind_and_sends_the_call_again() -> None:
    history = [started("x"), activity_scheduled(2, "A", "x"), activity_failed(3, 2), failed_end(4)]
    rewind = RewindRequest(instance_id=INSTANCE, reason="fixed", by="ana")
    result = execute(two_steps, TurnInput(now_ms=NOW, history=history, messages=[rewind]), instance_id=INSTANCE)
    assert kinds(result.output.new_events) == ["OrchestrationRewound"]
    rewound = result.output.new_events[0]
    assert isinstance(rewound, Event.OrchestrationRewound) and rewound.voided == [3, 4] and rewound.event_id == 5
    assert [(w.name, w.event_id) for w in result.output.activities] == [("A", 2)]
    assert result.outcome is None
    # The next turn replays with the failure voided; A's new result lets the code go on.
    later = execute(two_steps, TurnInput(now_ms=NOW, history=history + [rewound], messages=[activity_result(2, "a")]),
                    instance_id=INSTANCE)
    assert kinds(later.output.new_events) == ["ActivityCompleted", "ActivityScheduled"]


def test_a_child_asked_to_rewind_by_a_call_that_did_not_start_it_answers_with_its_failure() -> None:
    history = [started("x", parent=("other-parent", 1, 2)), activity_scheduled(2, "A", "x"), activity_failed(3, 2),
               failed_end(4)]
    rewind = RewindRequest(instance_id=INSTANCE, reason="r", parent_instance_id="p", parent_execution_id=1,
                           parent_event_id=7)
    result = execute(two_steps, TurnInput(now_ms=NOW, history=history, messages=[rewind]), instance_id=INSTANCE)
    assert result.output.new_events == []
    [(answer, _)] = result.output.messages
    assert isinstance(answer, SubOrchestrationResult) and (answer.instance_id, answer.event_id) == ("p", 7)
    assert answer.error is not None and answer.error.error_type == "RewindRefused"


def test_rewinding_a_parent_sends_its_failed_child_a_rewind() -> None:
    async def parent(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_sub_orchestration("Child", x, instance_id="kid")

    history = [started("x"), sub_scheduled(2, "Child", "x", "kid"),
               Event.SubOrchestrationFailed(event_id=3, timestamp_ms=T0, source_event_id=2,
                                            details=ErrorDetails("ValueError", "child failed")),
               failed_end(4)]
    result = execute(parent, TurnInput(now_ms=NOW, history=history, messages=[
        RewindRequest(instance_id=INSTANCE, reason="r", by="ana")]), instance_id=INSTANCE)
    [(ask, _)] = result.output.messages
    assert isinstance(ask, RewindRequest) and ask.instance_id == "kid"
    assert (ask.parent_instance_id, ask.parent_event_id) == (INSTANCE, 2)
