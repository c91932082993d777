"""Semantics the runtime decides and hands the store as intents (moved up from the stores).

The stores only apply intents (tests/test_provider_conformance.py); what the
intents say is the runtime's and is tested here, on every store and in both
replay modes: what a parent is told when its child's id is taken, which
statuses take events, cancellations and activity results, and when a purge
needs ``force``.
"""

from __future__ import annotations

import asyncio

import pytest

from duroxide_runtime import OrchestrationContext, OrchestrationStatus, SubOrchestrationFailed
from duroxide_runtime.errors import InstanceStillRunningError

from .support import Harness


async def test_a_child_whose_id_is_taken_fails_in_its_parent_and_leaves_the_other_instance_alone(
        harness: Harness) -> None:
    async def other(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_wait("never")
        return "other"

    async def child(ctx: OrchestrationContext, _: str) -> str:
        return "child ran"

    async def parent(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_sub_orchestration("Child", "", instance_id="taken")
        except SubOrchestrationFailed as err:
            return f"{err.error_type}: {err.details.message}"

    await harness.start({"Other": other, "Child": child, "Parent": parent}, {})
    await harness.client.start_orchestration("taken", "Other", "")
    await harness.client.start_orchestration("parent", "Parent", "")
    status = await harness.client.wait_for_orchestration("parent", 20)
    assert status == OrchestrationStatus.Completed(
        output="InstanceAlreadyExistsError: instance 'taken' already exists; the child was not started")
    info = await harness.client.get_instance_info("taken")
    assert (info.name, info.status, info.parent_instance_id) == ("Other", "Running", None)


async def test_events_and_cancellations_reach_only_live_instances_and_purge_needs_force(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("go")

    await harness.start({"Orch": orch}, {})
    client = harness.client
    await client.start_orchestration("i", "Orch", "")
    with pytest.raises(InstanceStillRunningError):
        await client.purge("i")
    assert await client.raise_event("i", "go", "done")
    assert await client.wait_for_orchestration("i", 20) == OrchestrationStatus.Completed(output="done")
    assert await client.raise_event("i", "go", "late") is False
    assert await client.cancel_instance("i", "late") is False
    await asyncio.sleep(0.05)
    assert await client.get_orchestration_status("i") == OrchestrationStatus.Completed(output="done")
    assert await client.purge("i") == ["i"]
