"""``@activity(instrument=True)`` and ``@activity(metrics=True)`` on real runs: real OpenTelemetry SDK
spans (its in-memory exporter) and real prometheus_client metrics, on every store in both replay modes.

* With the runtime's ``OpenTelemetryTracing``, an instrumented activity's attempt has one span,
  the runtime's, carrying the design's attributes; it is current while the function runs.
* Without it (only a global tracer provider, in a program of its own: the global provider
  can be set once per process), the decorator opens the span itself.
* ``metrics=True`` counts the activity's runs in prometheus_client's default registry, next to
  (never instead of, never twice with) the runtime's ``PrometheusMetrics``.

Names of decorated functions start with ``at_``: discovery is global per process.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from duroxide_macros.prelude import (
    ActivityFailed,
    ActivityRegistry,
    Event,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    activity,
    durable,
    orchestration,
)
from duroxide_runtime import ConfigurationError, PrometheusMetrics
from duroxide_runtime.tracing import OpenTelemetryTracing

from .redis_session import REDIS
from .support import PROVIDERS, Harness, dedent_src, own_pg_database, run_cmd

pytestmark = pytest.mark.timeout(120)

_threads: list[str] = []


@activity(typed=True, instrument=True, metrics=True)
async def at_charge(order_id: str, amount: float) -> str:
    trace.get_current_span().set_attribute("order_id", order_id)  # the design's span.record(...)
    if amount < 0:
        raise ValueError(f"negative amount for {order_id}")
    return f"txn-{order_id}"


@activity(typed=True, instrument=True, metrics=True)
def at_charge_sync(order_id: str) -> str:  # runs in a worker thread
    _threads.append(threading.current_thread().name)
    trace.get_current_span().set_attribute("order_id", order_id)
    return f"sync-{order_id}"


@activity(typed=True)
async def at_plain(order_id: str) -> str:
    return f"plain-{order_id}"


@orchestration
async def at_flow(ctx: OrchestrationContext, order_id: str) -> list[str]:
    out = [await durable(at_charge(order_id, 1.0)), await durable(at_charge_sync(order_id)),
           await durable(at_plain(order_id))]
    try:
        await durable(at_charge(order_id, -1.0))
    except ActivityFailed as err:
        out.append(err.details.error_type)
    return out


def _registries() -> tuple[OrchestrationRegistry, ActivityRegistry]:
    acts = ActivityRegistry.builder()
    for act in (at_charge, at_charge_sync, at_plain):
        acts.register(act.name, act.registered_function())
    return OrchestrationRegistry.builder().register(at_flow.name, at_flow.registered_function).build(), acts.build()


def _sample(name: str, labels: dict[str, str], registry: Any = prometheus_client.REGISTRY) -> float:
    return float(registry.get_sample_value(name, labels) or 0.0)


_COUNTED = [("duroxide_activity_started_total", {"name": "at_charge"}),
            ("duroxide_activity_completed_total", {"name": "at_charge", "outcome": "success"}),
            ("duroxide_activity_completed_total", {"name": "at_charge", "outcome": "failure"}),
            ("duroxide_activity_duration_seconds_count", {"name": "at_charge"}),
            ("duroxide_activity_started_total", {"name": "at_charge_sync"}),
            ("duroxide_activity_completed_total", {"name": "at_charge_sync", "outcome": "success"}),
            ("duroxide_activity_started_total", {"name": "at_plain"}),
            ("duroxide_activity_completed_total", {"name": "at_plain", "outcome": "success"})]


async def test_instrumented_activities_have_one_span_with_the_designs_attributes_and_are_counted(
        harness: Harness) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime_metrics = PrometheusMetrics(prometheus_client.CollectorRegistry())  # the runtime's own, all activities
    before = [_sample(n, labels) for n, labels in _COUNTED]
    orchs, acts = _registries()
    await harness.start(orchs, acts, observers=[OpenTelemetryTracing(provider), runtime_metrics])
    iid = f"at-{harness.replay_mode}-{type(harness.store).__name__}"
    await at_flow.start(harness.client, iid, iid)
    status = await at_flow.wait(harness.client, iid, timeout=60)
    await harness.stop()  # every span ended, every run counted
    assert status == OrchestrationStatus.Completed(output=[f"txn-{iid}", f"sync-{iid}", f"plain-{iid}",
                                                           "ValueError"])

    history = await harness.client.read_history(iid)
    scheduled = {e.event_id: e.name for e in history if isinstance(e, Event.ActivityScheduled)}
    spans = [s for s in exporter.get_finished_spans()
             if s.name.startswith("activity.") and s.attributes and s.attributes.get("duroxide.instance_id") == iid]
    # one span per attempt: the runtime's, not a second one of the decorator's
    assert sorted(s.name for s in spans) == ["activity.at_charge", "activity.at_charge", "activity.at_charge_sync",
                                             "activity.at_plain"]
    for span in spans:
        attrs = dict(span.attributes or {})
        event_id = attrs["duroxide.event_id"]
        assert scheduled[event_id] == span.name.removeprefix("activity.")
        if span.name == "activity.at_plain":
            assert "activity_name" not in attrs  # not instrumented: the runtime's attributes only
            continue
        assert {k: attrs[k] for k in ("activity_name", "instance_id", "execution_id", "event_id", "attempt",
                                      "order_id")} == {
            "activity_name": span.name.removeprefix("activity."), "instance_id": iid, "execution_id": 1,
            "event_id": event_id, "attempt": 1, "order_id": iid}
    failed = _failed(spans)
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.type"] == "ValueError"
    assert _threads and _threads[-1] != threading.main_thread().name

    # metrics=True: counted in the default registry, once per run; at_plain is not counted there
    after = [_sample(n, labels) for n, labels in _COUNTED]
    assert [a - b for a, b in zip(after, before)] == [2, 1, 1, 2, 1, 1, 0, 0]
    # the runtime's PrometheusMetrics counted every activity in its own registry, once
    own = [_sample(n, labels, runtime_metrics.registry) for n, labels in _COUNTED]
    assert own == [2, 1, 1, 2, 1, 1, 1, 1]


def _failed(spans: list[ReadableSpan]) -> ReadableSpan:
    [failed] = [s for s in spans if s.name == "activity.at_charge" and s.status.status_code is StatusCode.ERROR]
    return failed


def test_calling_an_instrumented_activity_directly_runs_it() -> None:
    import asyncio

    assert asyncio.run(at_charge("direct", 2.0)) == "txn-direct"  # no runtime, no span: a plain call
    assert at_charge_sync("direct") == "sync-direct"


def test_instrument_and_metrics_need_their_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"metrics=True needs the prometheus_client package.*"
                                                  r"pip install 'duroxide\[metrics\]'"):
        @activity(metrics=True)
        async def at_never_metrics(x: str) -> str:
            return x
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ConfigurationError, match=r"instrument=True needs the opentelemetry-api package.*"
                                                  r"pip install 'duroxide\[otel\]'"):
        @activity(instrument=True)
        async def at_never_traced(x: str) -> str:
            return x


# -- without the runtime's tracing: the decorator's own span, in a program of its own ---------

OWN_SPAN_PROGRAM = dedent_src('''
    import duroxide_macros.install
    import asyncio, json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from duroxide_macros.prelude import *

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)   # the program's own OpenTelemetry set-up; no runtime tracing

    @activity(typed=True, instrument=True)
    async def ow_charge(order_id: str, amount: float) -> str:
        trace.get_current_span().set_attribute("order_id", order_id)
        if amount < 0:
            raise ValueError("negative")
        return "txn-" + order_id

    @activity(typed=True, instrument=True)
    def ow_sync(order_id: str) -> str:
        with trace.get_tracer("user").start_as_current_span("user-work"):
            return "sync-" + order_id

    @orchestration
    async def ow_flow(ctx: OrchestrationContext, order_id: str) -> str:
        a = await durable(ow_charge(order_id, 1.0))
        b = await durable(ow_sync(order_id))
        try:
            await durable(ow_charge(order_id, -1.0))
        except ActivityFailed:
            pass
        return a + "|" + b

    async def store(kind, where, mode):
        if kind == "memory":
            return InMemoryProvider()
        if kind == "sqlite":
            return await SqliteProvider.new(f"sqlite://{where}/{mode}.db")
        if kind == "redis":
            return await RedisProvider.new(where, prefix=f"at{sys.argv[3]}{mode}")
        return await PostgresProvider.new(where, schema=mode)

    async def main(kind, where):
        events = {}
        for mode in ("cached", "scratch"):
            s = await store(kind, where, mode)
            rt = await (Runtime.builder().store(s).discover_activities().discover_orchestrations()
                        .options(RuntimeOptions(replay_from_scratch=mode == "scratch", poll_interval=0.05)).start())
            await ow_flow.start(rt.client(), mode, mode)
            status = await ow_flow.wait(rt.client(), mode, 60)
            print("STATUS", mode, status.is_terminal, getattr(status, "output", None), flush=True)
            events[mode] = [[e.event_id, e.name] for e in await rt.client().read_history(mode)
                            if isinstance(e, Event.ActivityScheduled)]
            await rt.shutdown()
            if kind == "redis":
                await s.drop_keys()
            await s.close()
        spans = [{"name": sp.name, "attrs": dict(sp.attributes or {}), "error": sp.status.status_code.name,
                  "events": [e.name for e in sp.events], "span_id": sp.context.span_id,
                  "parent": sp.parent.span_id if sp.parent else None}
                 for sp in exporter.get_finished_spans()]
        print("JSON", json.dumps({"spans": spans, "scheduled": events}))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
''')


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_without_runtime_tracing_the_decorator_opens_the_span(kind: str, tmp_path: Path) -> None:
    prog = tmp_path / "own_span.py"
    prog.write_text(OWN_SPAN_PROGRAM)
    if kind == "postgres":
        async with own_pg_database("at_span") as url:
            proc = run_cmd([sys.executable, str(prog), kind, url], tmp_path, timeout=120)
    elif kind == "redis":  # the session's server, under prefixes of this test's own
        proc = run_cmd([sys.executable, str(prog), kind, REDIS.url(), uuid.uuid4().hex[:12]], tmp_path, timeout=120)
    else:
        proc = run_cmd([sys.executable, str(prog), kind, str(tmp_path)], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for mode in ("cached", "scratch"):
        assert f"STATUS {mode} True txn-{mode}|sync-{mode}" in lines, proc.stdout
    out = json.loads(next(line for line in lines if line.startswith("JSON ")).removeprefix("JSON "))
    for mode in ("cached", "scratch"):
        spans = [s for s in out["spans"] if s["attrs"].get("instance_id") == mode]
        scheduled = {event_id: name for event_id, name in out["scheduled"][mode]}
        assert sorted(s["name"] for s in spans) == ["activity.ow_charge", "activity.ow_charge", "activity.ow_sync"]
        for span in spans:
            assert scheduled[span["attrs"]["event_id"]] == span["attrs"]["activity_name"]
            assert span["attrs"]["execution_id"] == 1 and span["attrs"]["attempt"] == 1
            assert span["name"] == f"activity.{span['attrs']['activity_name']}"
        assert sorted((s["error"], tuple(s["events"])) for s in spans) == [
            ("ERROR", ("exception",)), ("UNSET", ()), ("UNSET", ())]
        assert all(s["attrs"].get("order_id") == mode for s in spans if s["name"] == "activity.ow_charge")
        # the span is current while the function runs, in the worker thread too
        [sync_span] = [s for s in spans if s["name"] == "activity.ow_sync"]
        user = [s for s in out["spans"] if s["name"] == "user-work" and s["parent"] == sync_span["span_id"]]
        assert len(user) == 1
