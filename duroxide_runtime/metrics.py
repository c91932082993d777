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
``duroxide_activity_retries_total``           calls run again (a retry, or a redelivery) {name}
``duroxide_queue_depth``                      waiting work {queue: orchestrator, timer, worker, waiting}
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
import contextvars
import logging
import threading
import weakref
from typing import Any

from .engine.output import LIVE_STATUSES
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

__all__ = ["PrometheusMetrics", "ActivityMetrics"]

_log = logging.getLogger("duroxide.metrics")


def _require_prometheus(what: str) -> Any:
    if _prom is None:
        raise ConfigurationError(f"{what} needs the prometheus_client package", fix="pip install 'duroxide[metrics]'")
    return _prom


class ActivityMetrics:
    """The per-activity metric families of one registry, created once per registry and shared.

    :class:`PrometheusMetrics` counts every activity into them; ``@activity(metrics=True)``
    counts its own calls into those of prometheus_client's default registry, unless a
    ``PrometheusMetrics`` observer already counts the running call there (never twice).

    Example::

        families = ActivityMetrics.of()          # prometheus_client.REGISTRY's
        families.completed.labels("charge", "success")._value.get()
    """

    # Weak keys: the families live as long as their registry does (they hold no reference to it).
    _by_registry: weakref.WeakKeyDictionary[Any, ActivityMetrics] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: Any) -> None:
        prom = _require_prometheus("ActivityMetrics")
        r = registry
        self.started = prom.Counter("duroxide_activity_started", "Activity calls begun", ["name"], registry=r)
        self.completed = prom.Counter("duroxide_activity_completed", "Activity calls ended",
                                      ["name", "outcome"], registry=r)
        self.duration = prom.Histogram("duroxide_activity_duration_seconds", "Activity call time", ["name"],
                                       registry=r)
        self.retries = prom.Counter("duroxide_activity_retries", "Activity calls run again (a RetryPolicy retry, or a redelivery after a lost worker)", ["name"],
                                    registry=r)

    @classmethod
    def of(cls, registry: Any = None) -> ActivityMetrics:
        """The families of ``registry`` (default: prometheus_client's ``REGISTRY``), made on first use."""
        prom = _require_prometheus("ActivityMetrics")
        registry = registry if registry is not None else prom.REGISTRY
        with cls._lock:  # sync activities record from worker threads
            families = cls._by_registry.get(registry)
            if families is None:
                families = cls._by_registry[registry] = cls(registry)
            return families

    def counts_running_activity(self) -> bool:
        """True when a :class:`PrometheusMetrics` observer counts the activity running here into these families."""
        return _counted_by.get() is self

    def started_call(self, name: str, attempt: int, delivery: int = 1) -> None:
        """Count a call of activity ``name`` beginning (``attempt`` or ``delivery`` > 1: run again)."""
        self.started.labels(name).inc()
        if attempt > 1 or delivery > 1:
            self.retries.labels(name).inc()

    def finished_call(self, name: str, ok: bool, duration_s: float) -> None:
        """Count a call of activity ``name`` ending (``ok``: it returned) after ``duration_s`` seconds."""
        self.completed.labels(name, "success" if ok else "failure").inc()
        self.duration.labels(name).observe(duration_s)


# The families the PrometheusMetrics observer counts the activity running in this task into.
_counted_by: contextvars.ContextVar[ActivityMetrics | None] = contextvars.ContextVar("duroxide_counted_by",
                                                                                     default=None)


class PrometheusMetrics(RuntimeObserver):
    """A runtime observer that keeps Prometheus metrics (see the module docstring)."""

    def __init__(self, registry: Any = None) -> None:
        _require_prometheus("PrometheusMetrics")
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
        # Shared with @activity(metrics=True) on the same registry (see ActivityMetrics).
        self.activities = ActivityMetrics.of(r)
        self.act_started = self.activities.started
        self.act_completed = self.activities.completed
        self.act_duration = self.activities.duration
        self.act_retries = self.activities.retries
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
        _counted_by.set(self.activities)  # the activity's own task: gone with it
        self.activities.started_call(event.name, event.attempt, event.delivery)

    def activity_finished(self, event: ActivityFinished) -> None:
        self.activities.finished_call(event.name, event.ok, event.duration_s)

    # -- gauges and serving ----------------------------------------------------------

    async def sample(self, store: Provider) -> None:
        """Read queue depths and active instances from ``store`` once."""
        depths = await store.queue_depths(active_statuses=LIVE_STATUSES)  # suspended ones are active too
        self.queue_depth.labels("orchestrator").set(depths.orchestrator)
        self.queue_depth.labels("timer").set(depths.timers)
        self.queue_depth.labels("worker").set(depths.worker)
        self.queue_depth.labels("waiting").set(depths.waiting_instances)  # instances waiting for a queue slot
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
