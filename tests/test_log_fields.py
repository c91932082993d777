"""Runtime and trace log records carry the instance's identity as structured fields."""

from __future__ import annotations

import logging

import pytest

from duroxide_runtime import Client, OrchestrationContext, OrchestrationStatus, activity_context

from .support import Harness, eventually


async def greet(name: str) -> str:
    activity_context().trace("INFO", "greeting", who=name)
    return f"hi {name}"


async def hello(ctx: OrchestrationContext, name: str) -> str:
    ctx.trace_info("start {}", name, step=1)
    return await ctx.schedule_activity("Greet", name)


async def test_trace_and_runtime_records_carry_fields(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="duroxide")
    await harness.start({"Hello": hello}, {"Greet": greet}, max_attempts=2)
    assert await harness.run("i1", "Hello", "Ann") == OrchestrationStatus.Completed(output="hi Ann")

    orch = [r for r in caplog.records if r.name == "duroxide.orchestration" and r.getMessage() == "start Ann"]
    assert len(orch) == 1  # once, never again on replay
    rec = orch[0]
    assert (rec.instance_id, rec.execution_id, rec.orchestration, rec.version, rec.step) == (  # type: ignore[attr-defined]
        "i1", 1, "Hello", "1.0.0", 1)
    act = [r for r in caplog.records if r.name == "duroxide.activity" and r.getMessage() == "greeting"]
    assert len(act) >= 1
    assert (act[0].instance_id, act[0].activity, act[0].who) == ("i1", "Greet", "Ann")  # type: ignore[attr-defined]

    # A runtime record about an instance (here: its orchestration is not registered).
    await Client(harness.store, check_names=False).start_orchestration("lost", "Nowhere", "x")  # left to runtimes
    await eventually(lambda: any(getattr(r, "instance_id", None) == "lost" and r.name == "duroxide.dispatcher"
                                 for r in caplog.records), what="a dispatcher record about 'lost'")
    runtime_rec = next(r for r in caplog.records if getattr(r, "instance_id", None) == "lost")
    assert runtime_rec.orchestration == "Nowhere"  # type: ignore[attr-defined]
