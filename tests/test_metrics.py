"""Metric values after a real run: started/completed/failed, activity counts, retries, gauges, replay."""

from __future__ import annotations

import urllib.request

import pytest

from duroxide_runtime import ActivityFailed, Event, OrchestrationContext, OrchestrationStatus, RetryPolicy
from duroxide_runtime.metrics import PrometheusMetrics

from .support import Harness, eventually


async def ok(x: str) -> str:
    return x


async def boom(x: str) -> str:
    raise ValueError("boom")


async def good(ctx: OrchestrationContext, x: str) -> str:
    a = await ctx.schedule_activity("Ok", x)
    b = await ctx.schedule_activity("Ok", a)
    return b


async def bad(ctx: OrchestrationContext, x: str) -> str:
    return await ctx.schedule_activity("Boom", x)


async def retried(ctx: OrchestrationContext, x: str) -> str:
    try:
        return await ctx.schedule_activity("Boom", x, retry=RetryPolicy(max_attempts=3, backoff=0))
    except ActivityFailed:
        return "gave up"


async def waits(ctx: OrchestrationContext, x: str) -> str:
    await ctx.schedule_timer(3600)
    return x


def value(metrics: PrometheusMetrics, metric: str, /, **labels: str) -> float:
    got = metrics.registry.get_sample_value(metric, labels)
    return 0.0 if got is None else float(got)


async def test_metrics_count_a_real_run(harness: Harness) -> None:
    metrics = PrometheusMetrics()
    await harness.start({"Good": good, "Bad": bad, "Retried": retried, "Waits": waits}, {"Ok": ok, "Boom": boom},
                        observers=[metrics])
    for i in range(3):
        assert await harness.run(f"g{i}", "Good", "x") == OrchestrationStatus.Completed(output="x")
    assert isinstance(await harness.run("b", "Bad", "x"), OrchestrationStatus.Failed)
    await harness.client.start_orchestration("w", "Waits", "x")

    async def waits_on_its_timer() -> bool:  # an event, not a pause: a busy machine takes longer
        return any(isinstance(e, Event.TimerCreated) for e in await harness.client.read_history("w"))

    await eventually(waits_on_its_timer, what="'w' waiting on its timer")

    assert value(metrics, "duroxide_orchestration_started_total", name="Good", version="1.0.0") == 3
    assert value(metrics, "duroxide_orchestration_completed_total", name="Good", version="1.0.0",
                 status="Completed") == 3
    assert value(metrics, "duroxide_orchestration_failed_total", name="Bad", error="ActivityFailed") == 1
    assert value(metrics, "duroxide_orchestration_duration_seconds_count", name="Good", status="Completed") == 3
    assert value(metrics, "duroxide_activity_started_total", name="Ok") == 6
    assert value(metrics, "duroxide_activity_completed_total", name="Ok", outcome="success") == 6
    assert value(metrics, "duroxide_activity_completed_total", name="Boom", outcome="failure") == 1
    assert value(metrics, "duroxide_activity_duration_seconds_count", name="Ok") == 6
    assert value(metrics, "duroxide_activity_retries_total", name="Ok") == 0
    assert value(metrics, "duroxide_activity_retries_total", name="Boom") == 0
    assert await harness.run("r", "Retried", "x") == OrchestrationStatus.Completed(output="gave up")
    assert value(metrics, "duroxide_activity_retries_total", name="Boom") == 2  # attempts 2 and 3 of 3

    await metrics.sample(harness.store)
    assert value(metrics, "duroxide_active_instances") == 1  # "w" waits on its timer
    assert value(metrics, "duroxide_queue_depth", queue="timer") == 1
    assert value(metrics, "duroxide_queue_depth", queue="worker") == 0
    if harness.replay_mode == "from_scratch":
        assert value(metrics, "duroxide_replay_duration_seconds_count", name="Good") >= 3


async def test_metrics_are_served_over_http(unused_tcp_port: int) -> None:
    metrics = PrometheusMetrics()
    metrics.act_started.labels("X").inc()
    metrics.serve(unused_tcp_port, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'duroxide_activity_started_total{name="X"} 1.0' in body
    assert body == metrics.exposition() or "duroxide_queue_depth" in body


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

