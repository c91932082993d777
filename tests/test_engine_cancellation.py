"""Cancellation runs cleanup (SEMANTICS 20, Wave 2): the engine as a function, from synthetic histories.

``cancel_instance`` raises ``asyncio.CancelledError`` at the await the code is on;
``finally`` / ``except CancelledError`` may schedule work until the grace period
(recorded in the ``OrchestrationCancelRequested`` event) ends; the execution then
ends Failed with ``OrchestrationCancelled``. Every test runs from scratch and as
cached turns (``engine_factories.turn`` checks both give the same output).
"""

from __future__ import annotations

import asyncio

from duroxide_runtime import Event, OrchestrationContext
from duroxide_runtime.engine.output import Status
from duroxide_runtime.errors import ErrorDetails
from duroxide_runtime.messages import CancelRequest

from .engine_factories import (
    NOW,
    T0,
    activity_result,
    activity_scheduled,
    cancel,
    cancel_requested,
    kinds,
    started,
    sub_scheduled,
    timer_created,
    timer_message,
    turn,
)

AT = NOW - T0  # the cancel factories' offset: a cancel delivered in the turn is stamped NOW


async def compensating(ctx: OrchestrationContext, _: str) -> str:
    try:
        return await ctx.schedule_activity("Charge", "x")
    finally:
        await ctx.schedule_activity("Refund", "x")


def _error(result: object) -> tuple[str, str]:
    outcome = getattr(result, "outcome")
    assert outcome is not None and outcome.error is not None
    return outcome.error.error_type, outcome.error.message


# The history after a cancel with a 5 s grace, whose cleanup scheduled Refund (event 4).
CLEANING_UP = [started(), activity_scheduled(2, "Charge", "x"), cancel_requested(3, "stop", 5000, at_ms=AT),
               activity_scheduled(4, "Refund", "x"), timer_created(5, AT + 5000)]


def test_cancel_raises_at_the_await_and_cleanup_schedules_work_under_a_grace_timer() -> None:
    result = turn(compensating, [started(), activity_scheduled(2, "Charge", "x")], cancel("stop", grace_ms=5000))
    assert kinds(result.output.new_events) == ["OrchestrationCancelRequested", "ActivityScheduled", "TimerCreated"]
    assert result.output.cancelled_activities == [2]  # the awaited Charge is told to stop
    assert [w.name for w in result.output.activities] == ["Refund"]
    timer = result.output.new_events[-1]
    assert isinstance(timer, Event.TimerCreated) and timer.fire_at_ms == NOW + 5000
    assert result.status is Status.RUNNING


def test_cleanup_that_finishes_ends_the_instance_failed_with_the_reason() -> None:
    result = turn(compensating, CLEANING_UP, activity_result(4, "refunded"))
    assert kinds(result.output.new_events) == ["ActivityCompleted", "OrchestrationFailed"]
    assert result.status is Status.FAILED and _error(result) == ("OrchestrationCancelled", "stop")
    assert result.output.cancelled_timers == [5]  # the grace timer is deleted with the end


def test_cleanup_still_running_when_the_grace_period_ends_is_cut_short() -> None:
    result = turn(compensating, CLEANING_UP, timer_message(5, AT + 5000))
    assert kinds(result.output.new_events) == ["TimerFired", "OrchestrationFailed"]
    kind, message = _error(result)
    assert kind == "OrchestrationCancelled" and message.startswith("stop (its cleanup was still running")
    assert "grace period of 5 s" in message
    assert result.output.cancelled_activities == [4]  # the unfinished Refund is told to stop


def test_with_no_grace_cleanup_runs_until_it_first_waits() -> None:
    result = turn(compensating, [started(), activity_scheduled(2, "Charge", "x")], cancel("stop", grace_ms=0))
    assert kinds(result.output.new_events) == ["OrchestrationCancelRequested", "ActivityScheduled",
                                               "OrchestrationFailed"]
    assert result.output.cancelled_activities == [2, 4]
    assert _error(result) == ("OrchestrationCancelled", "stop")


def test_code_that_catches_the_cancellation_still_ends_cancelled() -> None:
    async def swallows(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.schedule_timer(100)
        except asyncio.CancelledError:
            return "carried on"
        return "slept"

    result = turn(swallows, [started(), timer_created(2, 100_000)], cancel("stop"))
    assert kinds(result.output.new_events) == ["OrchestrationCancelRequested", "OrchestrationFailed"]
    assert _error(result) == ("OrchestrationCancelled", "stop")
    assert result.output.cancelled_timers == [2]


def test_cleanup_that_raises_is_named_in_the_reason() -> None:
    async def broken_cleanup(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_activity("Charge", "x")
        finally:
            raise ValueError("refund table missing")

    result = turn(broken_cleanup, [started(), activity_scheduled(2, "Charge", "x")], cancel("stop"))
    assert _error(result) == ("OrchestrationCancelled",
                              "stop (its cleanup raised ValueError: refund table missing)")


def test_a_repeated_cancel_during_cleanup_changes_nothing() -> None:
    result = turn(compensating, CLEANING_UP, cancel("again", grace_ms=0))
    assert result.output.new_events == [] and result.status is Status.RUNNING


def test_cancel_cascades_to_children_with_its_grace() -> None:
    async def parent(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_sub_orchestration("Child", "c")

    result = turn(parent, [started(), sub_scheduled(2, "Child", "c")], cancel("stop", grace_ms=7000))
    sent = [(m.instance_id, m.grace_ms) for m, _ in result.output.messages if isinstance(m, CancelRequest)]
    assert sent == [("inst::sub::2", 7000)]


def test_a_cancel_without_a_grace_gets_the_default_of_30_seconds() -> None:
    result = turn(compensating, [started(), activity_scheduled(2, "Charge", "x")], cancel("stop"))
    requested = result.output.new_events[0]
    assert isinstance(requested, Event.OrchestrationCancelRequested) and requested.grace_ms == 30_000


def test_histories_recorded_before_cleanup_existed_still_end_at_the_cancel() -> None:
    old = [started(), activity_scheduled(2, "Charge", "x"), cancel_requested(3, "stop", grace_ms=None),
           Event.OrchestrationFailed(event_id=4, timestamp_ms=T0, details=ErrorDetails("OrchestrationCancelled",
                                                                                        "stop"))]
    result = turn(compensating, old)
    assert result.output.new_events == [] and result.status is Status.FAILED  # no Refund: it replays as recorded
