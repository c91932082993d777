"""What ``@activity(instrument=True)`` and ``@activity(metrics=True)`` add around each run of an activity.

* ``instrument=True``: the run has an OpenTelemetry span ``activity.<name>``
  with the design's attributes ``activity_name``, ``instance_id``,
  ``execution_id``, ``event_id`` (and ``attempt``), current while the function
  runs, so ``trace.get_current_span().set_attribute("order_id", ...)`` lands on
  it. When a runtime of this process traces (``OpenTelemetryTracing``), that is
  the runtime's own span of the attempt, which gets the attributes: one span per
  attempt, never two. Otherwise the span is opened here, with the global tracer
  provider, and records an exception that escapes.
* ``metrics=True``: the run is counted in prometheus_client's default registry
  (``duroxide_activity_started_total{name}``,
  ``duroxide_activity_completed_total{name, outcome}``,
  ``duroxide_activity_duration_seconds{name}``,
  ``duroxide_activity_retries_total{name}``), unless a ``PrometheusMetrics``
  observer already counts it there.

Both need their extra; without it the decorator raises :class:`ConfigurationError`
naming it, when the module is imported.

Example::

    @activity(typed=True, instrument=True, metrics=True)
    async def charge(order: Order) -> str:
        trace.get_current_span().set_attribute("order_id", order.id)
        ...
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from duroxide_runtime import current_activity

from .extras import require_extra

__all__ = ["ActivityTelemetry"]



class ActivityTelemetry:
    """The span and the metrics of one activity's runs (see the module docstring)."""

    def __init__(self, name: str, *, instrument: bool, metrics: bool) -> None:
        self.name = name
        self.instrument = instrument
        self.metrics = metrics
        what = f"activity {name!r}"
        if instrument:
            require_extra("opentelemetry.trace", "opentelemetry-api", "otel", f"{what} with instrument=True")
        if metrics:
            require_extra("prometheus_client", "prometheus_client", "metrics", f"{what} with metrics=True")

    @property
    def active(self) -> bool:
        return self.instrument or self.metrics

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        """Wrap one run of the activity's function (in the task or thread that runs it)."""
        with contextlib.ExitStack() as stack:
            if self.metrics:
                stack.enter_context(self._counted())
            if self.instrument:
                stack.enter_context(self._span())
            yield

    def _attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"activity_name": self.name}
        actx = current_activity()
        if actx is not None:
            attrs.update(instance_id=actx.instance_id, execution_id=actx.execution_id, event_id=actx.event_id,
                         attempt=actx.attempt)
        return attrs

    @contextlib.contextmanager
    def _span(self) -> Iterator[None]:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        from duroxide_runtime import current_activity_span

        runtime_span = current_activity_span()
        if runtime_span is not None:  # the runtime's span of this attempt: current already, ended by it
            runtime_span.set_attributes(self._attributes())
            try:
                yield
            except BaseException as exc:
                runtime_span.record_exception(exc)
                raise
            return
        tracer = trace.get_tracer("duroxide_macros")
        with tracer.start_as_current_span(f"activity.{self.name}", attributes=self._attributes(),
                                          record_exception=False, set_status_on_exception=False) as span:
            try:
                yield
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        from duroxide_runtime import ActivityMetrics

        families = ActivityMetrics.of()
        if families.counts_running_activity():
            yield  # the runtime's PrometheusMetrics counts this call in the same families already
            return
        actx = current_activity()
        families.started_call(self.name, actx.attempt if actx is not None else 1,
                              actx.delivery if actx is not None else 1)
        began = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            families.finished_call(self.name, ok, time.perf_counter() - began)
