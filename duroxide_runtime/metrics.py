"""Prometheus metrics (optional extra ``metrics``: ``pip install 'duroxide[metrics]'``).

Names follow the design's monitoring section:

==========================================  ===========================================
``duroxide_orchestration_started_total``      executions started {name, version}
``duroxide_orchestration_completed_total``    executions ended {name, version, status}
``duroxide_orchestration_failed_total``       executions failed {name, error}
``duroxide_orchestration_duration_seconds``   start to end {name, status}
``duroxide_activity_started_total``           activity calls begun {name}
``duroxide_activity_completed_total``         activity calls ended {name, outcome}
``duroxide_activity_duration_seconds``        activity call time {name}
``duroxide_activity_retries_total``           calls delivered again {name}
``duroxide_queue_depth``                      waiting work {queue: orchestrator, timer, worker}
``duroxide_active_instances``                 Pending or Running instances
``duroxide_replay_duration_seconds``          rebuilding an instance from history {name}
==========================================  ===========================================

Example::

    metrics = PrometheusMetrics()
    rt = await Runtime.builder().store(store).observer(metrics).orchestrations(orchs).start()
    metrics.start_sampling(store)      # queue depths and active instances, every 5 s
    metrics.serve(9090)                # http://localhost:9090/metrics
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .errors import ConfigurationError
from .lograte import background_warnings
from .observe import ActivityFinished, ActivityStarted, OrchestrationFinished, OrchestrationStarted, RuntimeObserver
from .observe import TurnReplayed
from .providers.base import Provider

_prom: Any
try:
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - exercised only without the extra
    _prom = None

__all__ = ["PrometheusMetrics"]

_log = logging.getLogger("duroxide.metrics")


class PrometheusMetrics(RuntimeObserver):
    """A runtime observer that keeps Prometheus metrics (see the module docstring)."""

    def __init__(self, registry: Any = None) -> None:
        if _prom is None:
            raise ConfigurationError("PrometheusMetrics needs the prometheus_client package",
                                     fix="pip install 'duroxide[metrics]'")
        self.registry = registry if registry is not None else _prom.CollectorRegistry()
        r = self.registry
        self.orch_started = _prom.Counter("duroxide_orchestration_started", "Executions started",
                                          ["name", "version"], registry=r)
        self.orch_completed = _prom.Counter("duroxide_orchestration_completed", "Executions ended",
                                            ["name", "version", "status"], registry=r)
        self.orch_failed = _prom.Counter("duroxide_orchestration_failed", "Executions failed",
                                         ["name", "error"], registry=r)
        self.orch_duration = _prom.Histogram("duroxide_orchestration_duration_seconds", "Execution start to end",
                                             ["name", "status"], registry=r)
        self.act_started = _prom.Counter("duroxide_activity_started", "Activity calls begun", ["name"], registry=r)
        self.act_completed = _prom.Counter("duroxide_activity_completed", "Activity calls ended",
                                           ["name", "outcome"], registry=r)
        self.act_duration = _prom.Histogram("duroxide_activity_duration_seconds", "Activity call time",
                                            ["name"], registry=r)
        self.act_retries = _prom.Counter("duroxide_activity_retries", "Activity calls delivered again",
                                         ["name"], registry=r)
        self.queue_depth = _prom.Gauge("duroxide_queue_depth", "Waiting work", ["queue"], registry=r)
        self.active_instances = _prom.Gauge("duroxide_active_instances", "Pending or Running instances",
                                            registry=r)
        self.replay_duration = _prom.Histogram("duroxide_replay_duration_seconds",
                                               "Rebuilding an instance from stored history", ["name"], registry=r)
        self._sampler: asyncio.Task[None] | None = None

    # -- observer ------------------------------------------------------------------

    def orchestration_started(self, event: OrchestrationStarted) -> None:
        self.orch_started.labels(event.name, event.version).inc()

    def orchestration_finished(self, event: OrchestrationFinished) -> None:
        self.orch_completed.labels(event.name, event.version, event.status).inc()
        self.orch_duration.labels(event.name, event.status).observe(event.duration_s)
        if event.status == "Failed":
            self.orch_failed.labels(event.name, event.error_type or "unknown").inc()

    def turn_replayed(self, event: TurnReplayed) -> None:
        self.replay_duration.labels(event.name).observe(event.duration_s)

    def activity_started(self, event: ActivityStarted) -> None:
        self.act_started.labels(event.name).inc()
        if event.attempt > 1:
            self.act_retries.labels(event.name).inc()

    def activity_finished(self, event: ActivityFinished) -> None:
        self.act_completed.labels(event.name, "success" if event.ok else "failure").inc()
        self.act_duration.labels(event.name).observe(event.duration_s)

    # -- gauges and serving ----------------------------------------------------------

    async def sample(self, store: Provider) -> None:
        """Read queue depths and active instances from ``store`` once."""
        depths = await store.queue_depths()
        self.queue_depth.labels("orchestrator").set(depths.orchestrator)
        self.queue_depth.labels("timer").set(depths.timers)
        self.queue_depth.labels("worker").set(depths.worker)
        self.active_instances.set(depths.active_instances)

    def start_sampling(self, store: Provider, interval: float = 5.0) -> asyncio.Task[None]:
        """Keep the gauges fresh in the background (cancel the task, or ``stop_sampling()``, to stop)."""
        async def loop() -> None:
            while True:
                try:
                    await self.sample(store)
                except Exception:  # noqa: BLE001 - a failed sample is retried next interval
                    background_warnings.warning(_log, "metrics.sample", "could not sample queue depths",
                                                exc_info=True)
                await store.clock.sleep(interval)

        self._sampler = asyncio.create_task(loop(), name="duroxide-metrics-sampler")
        return self._sampler

    def stop_sampling(self) -> None:
        """Stop the background sampling started by :meth:`start_sampling`."""
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` over HTTP on ``port`` (a daemon thread of prometheus_client)."""
        assert _prom is not None
        _prom.start_http_server(port, addr=addr, registry=self.registry)

    def exposition(self) -> str:
        """The metrics in Prometheus text format (what ``/metrics`` returns)."""
        assert _prom is not None
        return str(_prom.generate_latest(self.registry).decode())
