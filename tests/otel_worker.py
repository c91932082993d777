"""A runtime process with OpenTelemetry tracing, for tests/test_tracing.py.

    python tests/otel_worker.py DBPATH SPANS_FILE MODE

MODE "start": start instance p1 inside a client span, run until it waits for "go", exit.
MODE "finish": raise "go", run until p1 completes, exit.
Every finished span is appended to SPANS_FILE as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from duroxide_runtime import (
    ActivityRegistry,
    Client,
    OrchestrationContext,
    OrchestrationRegistry,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
)
from duroxide_runtime.tracing import OpenTelemetryTracing


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as f:
            for s in spans:
                f.write(json.dumps({
                    "name": s.name, "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
                    "parent": f"{s.parent.span_id:016x}" if s.parent else None}) + "\n")
        return SpanExportResult.SUCCESS


async def shout(x: str) -> str:
    return x.upper()


async def child(ctx: OrchestrationContext, x: str) -> str:
    return await ctx.schedule_activity("Shout", x)


async def parent(ctx: OrchestrationContext, x: str) -> str:
    a = await ctx.schedule_activity("Shout", x)
    await ctx.schedule_wait("go")
    return await ctx.schedule_sub_orchestration("Child", a + "!")


async def main(db: str, spans: str, mode: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(spans)))
    store = await SqliteProvider.new(f"sqlite://{db}")
    rt = await (Runtime.builder().store(store)
                .orchestrations(OrchestrationRegistry.builder().register("Parent", parent)
                                .register("Child", child).build())
                .activities(ActivityRegistry.builder().register("Shout", shout).build())
                .options(RuntimeOptions(poll_interval=0.05))
                .observer(OpenTelemetryTracing(provider)).start())
    client = Client(store)
    if mode == "start":
        with provider.get_tracer("client").start_as_current_span("client-request"):
            await client.start_orchestration("p1", "Parent", "hi")
        for _ in range(500):
            history = await client.read_history("p1")
            if any(type(e).__name__ == "EventSubscribed" for e in history):
                break
            await asyncio.sleep(0.01)
    else:
        await client.raise_event("p1", "go", "")
        print("STATUS", await client.wait_for_orchestration("p1", 20))
    await rt.shutdown()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
