"""OpenTelemetry spans of a real run: one per execution and per activity attempt, parented across
sub-orchestrations, activities and runtime restarts (the trace context lives in the store)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from duroxide_runtime import (
    ActivityRegistry,
    Client,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    Runtime,
    SqliteProvider,
)
from duroxide_runtime.tracing import OpenTelemetryTracing

from .support import TEST_OPTIONS


async def shout(x: str) -> str:
    # The activity's span is current while it runs: user spans nest below it.
    with trace.get_tracer("user").start_as_current_span("user-work"):
        return x.upper()


async def child(ctx: OrchestrationContext, x: str) -> str:
    return await ctx.schedule_activity("Shout", x)


async def parent(ctx: OrchestrationContext, x: str) -> str:
    a = await ctx.schedule_activity("Shout", x)
    await ctx.schedule_wait("go")
    b = await ctx.schedule_sub_orchestration("Child", a + "!")
    return b


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _runtime(store: SqliteProvider, provider: TracerProvider) -> Runtime:
    from duroxide_runtime import RuntimeOptions

    return await (Runtime.builder().store(store)
                  .orchestrations(OrchestrationRegistry.builder().register("Parent", parent)
                                  .register("Child", child).build())
                  .activities(ActivityRegistry.builder().register("Shout", shout).build())
                  .options(RuntimeOptions(**TEST_OPTIONS))  # type: ignore[arg-type]
                  .observer(OpenTelemetryTracing(provider)).start())


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_spans_form_one_trace_across_children_activities_and_a_restart(tmp_path: Path) -> None:
    provider, exporter = _provider()
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'trace.db'}")
    client = Client(store)
    rt = await _runtime(store, provider)
    with provider.get_tracer("test").start_as_current_span("client-request") as request:
        await client.start_orchestration("p1", "Parent", "hi")
    for _ in range(200):  # the first activity ran; the instance waits for "go"
        if any(s.name == "activity.Shout" for s in exporter.get_finished_spans()):
            break
        import asyncio

        await asyncio.sleep(0.02)
    await rt.shutdown()

    # A new runtime (as another process would) finishes the instance.
    rt2 = await _runtime(store, provider)
    await client.raise_event("p1", "go", "")
    assert await client.wait_for_orchestration("p1", 10) == OrchestrationStatus.Completed(output="HI!")
    await rt2.shutdown()
    await store.close()

    spans = list(exporter.get_finished_spans())
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans if s.name != "client-request"} == {trace_id}

    parent_span = _one(spans, "orchestration.Parent")
    child_span = _one(spans, "orchestration.Child")
    assert parent_span.parent is not None and parent_span.parent.span_id == request.get_span_context().span_id
    assert child_span.parent is not None and child_span.parent.span_id == parent_span.context.span_id
    activities = [s for s in spans if s.name == "activity.Shout"]
    assert len(activities) == 2
    parents = sorted(a.parent.span_id for a in activities if a.parent is not None)
    assert parents == sorted([parent_span.context.span_id, child_span.context.span_id])
    for user in (s for s in spans if s.name == "user-work"):
        assert user.parent is not None and user.parent.span_id in {a.context.span_id for a in activities}
    assert parent_span.attributes is not None and parent_span.attributes["duroxide.instance_id"] == "p1"
    assert parent_span.start_time is not None and parent_span.end_time is not None
    assert child_span.start_time is not None and child_span.start_time >= parent_span.start_time
    assert parent_span.end_time >= child_span.end_time  # type: ignore[operator]


def test_one_trace_spans_two_operating_system_processes(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    worker = Path(__file__).with_name("otel_worker.py")
    db, spans_file = tmp_path / "otel.db", tmp_path / "spans.jsonl"
    for mode in ("start", "finish"):
        proc = subprocess.run([sys.executable, str(worker), str(db), str(spans_file), mode],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert "STATUS Completed(output='HI!'" in proc.stdout
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    by_name: dict[str, list[dict[str, str]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    [request] = by_name["client-request"]
    [parent_span] = by_name["orchestration.Parent"]
    [child_span] = by_name["orchestration.Child"]
    assert {s["trace_id"] for s in spans} == {request["trace_id"]}
    assert parent_span["parent"] == request["span_id"]
    assert child_span["parent"] == parent_span["span_id"]
    assert sorted(a["parent"] for a in by_name["activity.Shout"]) == sorted(
        [parent_span["span_id"], child_span["span_id"]])
