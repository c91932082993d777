"""OpenTelemetry spans (optional extra ``otel``: ``pip install 'duroxide[otel]'``).

* one span per orchestration execution, ``orchestration.<name>``, from its
  start to its end as recorded in history; it is emitted by the process that
  commits the end, with the span id the execution recorded when it started,
  so everything that happened in between (in any process) hangs below it;
* one span per activity attempt, ``activity.<name>``, current while the
  activity runs (its own spans nest below it), a child of its execution;
* a sub-orchestration's execution span is a child of its parent's execution
  span; an execution started by a client inside a span is a child of that span.

The trace context travels through the store (see ``tracecontext``), so one
trace spans processes, machines and restarts.

Example::

    from opentelemetry.sdk.trace import TracerProvider
    provider = TracerProvider()          # with your exporter
    rt = await (Runtime.builder().store(store).observer(OpenTelemetryTracing(provider))
                .orchestrations(orchs).activities(acts).start())
"""

from __future__ import annotations

import contextvars
from typing import Any

from .errors import ConfigurationError
from .observe import ActivityFinished, ActivityStarted, OrchestrationFinished, RuntimeObserver
from .tracecontext import parse

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as _missing:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError("duroxide_runtime.tracing needs opentelemetry-api and opentelemetry-sdk",
                             fix="pip install 'duroxide[otel]'") from _missing

__all__ = ["OpenTelemetryTracing", "current_activity_span"]

# The span id (and trace id) the next span must take: an execution span's ids were
# recorded when the execution started, long before the span can be emitted.
_preset_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("duroxide_ids", default=None)


class _PresetIdGenerator:
    """Wraps a tracer provider's id generator: returns preset ids when asked to, else delegates."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        preset = _preset_ids.get()
        return preset[1] if preset is not None else int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:
        preset = _preset_ids.get()
        return preset[0] if preset is not None else int(self.inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        check = getattr(self.inner, "is_trace_id_random", None)
        return bool(check()) if check is not None else True


# The span of the activity attempt running in this task (set by the observer, read by
# @activity(instrument=True), which adds its attributes there instead of opening a second span).
_activity_span: contextvars.ContextVar[Any] = contextvars.ContextVar("duroxide_activity_span", default=None)


def current_activity_span() -> Any:
    """The span :class:`OpenTelemetryTracing` opened for the activity attempt running here, or ``None``.

    ``None`` outside an activity, and when no runtime of this process traces.
    """
    return _activity_span.get()


def _context_of(traceparent: str | None) -> Any:
    parsed = parse(traceparent)
    if parsed is None:
        return otel_context.Context()
    trace_id, span_id, flags = parsed
    span = NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                        trace_flags=TraceFlags(int(flags, 16))))
    return trace.set_span_in_context(span, otel_context.Context())


class OpenTelemetryTracing(RuntimeObserver):
    """A runtime observer that emits OpenTelemetry spans (see the module docstring)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        provider: Any = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        if not hasattr(provider, "id_generator"):
            raise ConfigurationError(
                f"{type(provider).__name__} cannot take span ids chosen in advance",
                fix="pass an opentelemetry.sdk.trace.TracerProvider (set one up before the runtime starts)")
        if not isinstance(provider.id_generator, _PresetIdGenerator):
            provider.id_generator = _PresetIdGenerator(provider.id_generator)
        self.tracer = provider.get_tracer("duroxide")
        self._activities: dict[tuple[str, int, int], tuple[Any, Any]] = {}

    def orchestration_finished(self, event: OrchestrationFinished) -> None:
        own = parse(event.trace_context)
        if own is None:
            return  # an execution recorded before tracing existed
        token = _preset_ids.set((int(own[0], 16), int(own[1], 16)))
        try:
            span = self.tracer.start_span(
                f"orchestration.{event.name}", context=_context_of(event.parent_trace_context),
                kind=SpanKind.INTERNAL, start_time=event.started_ms * 1_000_000,
                attributes={"duroxide.orchestration": event.name, "duroxide.version": event.version,
                            "duroxide.instance_id": event.instance_id,
                            "duroxide.execution_id": event.execution_id, "duroxide.status": event.status})
        finally:
            _preset_ids.reset(token)
        if event.status == "Failed":
            span.set_status(Status(StatusCode.ERROR, event.error_type or "failed"))
        span.end(end_time=event.ended_ms * 1_000_000)

    def activity_started(self, event: ActivityStarted) -> None:
        span = self.tracer.start_span(
            f"activity.{event.name}", context=_context_of(event.trace_context), kind=SpanKind.INTERNAL,
            attributes={"duroxide.activity": event.name, "duroxide.instance_id": event.instance_id,
                        "duroxide.execution_id": event.execution_id, "duroxide.event_id": event.event_id,
                        "duroxide.attempt": event.attempt, "duroxide.delivery": event.delivery})
        # Current while the activity runs (observer calls come from the activity's own task).
        token = otel_context.attach(trace.set_span_in_context(span))
        _activity_span.set(span)  # the activity's own task: gone with it
        self._activities[(event.instance_id, event.execution_id, event.event_id)] = (span, token)

    def activity_finished(self, event: ActivityFinished) -> None:
        entry = self._activities.pop((event.instance_id, event.execution_id, event.event_id), None)
        if entry is None:
            return
        span, token = entry
        try:
            otel_context.detach(token)
        except Exception:  # noqa: BLE001 - a context detached elsewhere is harmless here
            pass
        if not event.ok:
            span.set_status(Status(StatusCode.ERROR, event.error_type or "failed"))
        span.end()
