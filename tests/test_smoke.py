"""The smallest end-to-end run, on every provider and replay mode."""

from __future__ import annotations

import asyncio

from duroxide_runtime import Event, OrchestrationContext, OrchestrationStatus

from .support import Harness


async def greet(name: str) -> str:
    return f"Hello, {name}!"


async def hello(ctx: OrchestrationContext, name: str) -> str:
    first = await ctx.schedule_activity("Greet", name)
    await asyncio.sleep(0.05)
    second = await ctx.schedule_activity("Greet", first)
    return second


async def test_hello_completes_with_expected_history(harness: Harness) -> None:
    await harness.start({"Hello": hello}, {"Greet": greet})
    status = await harness.run("i1", "Hello", "World")
    assert status == OrchestrationStatus.Completed(output="Hello, Hello, World!!")
    kinds = [type(e).__name__ for e in await harness.client.read_history("i1")]
    assert kinds == ["OrchestrationStarted", "ActivityScheduled", "ActivityCompleted", "TimerCreated",
                     "TimerFired", "ActivityScheduled", "ActivityCompleted", "OrchestrationCompleted"]
    history = await harness.client.read_history("i1")
    assert [e.event_id for e in history] == list(range(1, 9))
    assert isinstance(history[2], Event.ActivityCompleted) and history[2].source_event_id == 2
