"""Cancelling an instance runs its cleanup (SEMANTICS 20, Wave 2), on every store and in both replay modes.

``client.cancel_instance`` raises ``asyncio.CancelledError`` at the await the
code is on; ``finally`` and ``except CancelledError`` may schedule compensating
activities within the grace period; the instance then ends Failed with
``OrchestrationCancelled`` and its children are cancelled (and clean up) too.
The engine-level cases are in tests/test_engine_cancellation.py.
"""

from __future__ import annotations

import asyncio

from duroxide_runtime import Event, OrchestrationContext, OrchestrationStatus

from .support import Harness


def _cancelled(status: OrchestrationStatus[str], reason: str) -> bool:
    return (isinstance(status, OrchestrationStatus.Failed) and status.details is not None
            and (status.details.error_type, status.details.message) == ("OrchestrationCancelled", reason))


async def test_cleanup_in_finally_runs_a_compensating_activity_then_the_instance_ends_cancelled(
        harness: Harness) -> None:
    reached = asyncio.Event()
    refunds: list[str] = []

    async def charge(order: str) -> str:
        reached.set()
        return f"charged {order}"

    async def refund(order: str) -> str:
        refunds.append(order)
        return f"refunded {order}"

    async def order(ctx: OrchestrationContext, order_id: str) -> str:
        try:  # the cancel may find it awaiting Charge's result or the event
            await ctx.schedule_activity("Charge", order_id)
            return await ctx.schedule_wait("shipped")
        finally:
            await ctx.schedule_activity("Refund", order_id)

    await harness.start({"Order": order}, {"Charge": charge, "Refund": refund})
    await harness.client.start_orchestration("o-1", "Order", "o-1")
    await asyncio.wait_for(reached.wait(), 20)
    assert await harness.client.cancel_instance("o-1", "customer asked")
    status = await harness.client.wait_for_orchestration("o-1", 20)
    assert _cancelled(status, "customer asked"), status
    assert refunds == ["o-1"]  # once, in both replay modes
    history = await harness.client.read_history("o-1")
    after = [e for e in history if e.event_id > next(e.event_id for e in history
                                                      if isinstance(e, Event.OrchestrationCancelRequested))]
    assert any(isinstance(e, Event.ActivityScheduled) and e.name == "Refund" for e in after)
    assert isinstance(history[-1], Event.OrchestrationFailed)


async def test_children_are_cancelled_too_and_run_their_own_cleanup(harness: Harness) -> None:
    cleaned: list[str] = []
    child_waiting = asyncio.Event()

    async def note(who: str) -> str:
        if who == "child waiting":
            child_waiting.set()
        else:
            cleaned.append(who)
        return who

    async def child(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.schedule_activity("Note", "child waiting")
            return await ctx.schedule_wait("never")
        except asyncio.CancelledError:
            await ctx.schedule_activity("Note", "child")
            raise

    async def parent(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_sub_orchestration("Child", "", instance_id="p-1-child")
        finally:
            await ctx.schedule_activity("Note", "parent")

    await harness.start({"Parent": parent, "Child": child}, {"Note": note})
    await harness.client.start_orchestration("p-1", "Parent", "")
    await asyncio.wait_for(child_waiting.wait(), 20)
    assert await harness.client.cancel_instance("p-1", "shutdown of the line")
    assert _cancelled(await harness.client.wait_for_orchestration("p-1", 20), "shutdown of the line")
    assert _cancelled(await harness.client.wait_for_orchestration("p-1-child", 20), "cancelled by parent")
    assert sorted(cleaned) == ["child", "parent"]


async def test_cleanup_that_outlives_its_grace_period_is_cut_short(harness: Harness) -> None:
    async def stubborn(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_wait("never")
        finally:
            await ctx.schedule_wait("never either")  # cleanup that waits for good

    await harness.start({"Stubborn": stubborn}, {})
    await harness.client.start_orchestration("s-1", "Stubborn", "")
    assert await harness.client.cancel_instance("s-1", "enough", grace=0.05)
    status = await harness.client.wait_for_orchestration("s-1", 20)
    assert _cancelled(status, "enough (its cleanup was still running when the grace period of 0.05 s ended)"), status


async def test_a_second_cancel_during_cleanup_changes_nothing(harness: Harness) -> None:
    reached = asyncio.Event()
    release = asyncio.Event()

    async def slow_refund(_: str) -> str:
        reached.set()
        await asyncio.wait_for(release.wait(), 20)
        return "refunded"

    async def order(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_wait("shipped")
        finally:
            await ctx.schedule_activity("SlowRefund", "")

    await harness.start({"Order": order}, {"SlowRefund": slow_refund})
    await harness.client.start_orchestration("o-2", "Order", "")
    assert await harness.client.cancel_instance("o-2", "first")
    await asyncio.wait_for(reached.wait(), 20)  # cleanup is running
    assert await harness.client.cancel_instance("o-2", "second", grace=0)
    release.set()
    assert _cancelled(await harness.client.wait_for_orchestration("o-2", 20), "first")
    history = await harness.client.read_history("o-2")
    assert [e.reason for e in history if isinstance(e, Event.OrchestrationCancelRequested)] == ["first"]
