"""W3C trace context (``traceparent``) values carried through the store.

Every execution records its own traceparent in ``OrchestrationStarted`` (and
the one of whoever started it), and passes it with its activity calls and
child starts, so a trace spans processes and restarts. Making spans out of
them is the optional ``duroxide_runtime.tracing`` module's job; this one only
makes and reads the strings, and works without OpenTelemetry installed.

Example::

    child = child_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert parse(child)[0] == "4bf92f3577b34da6a3ce929d0e0e4736"
"""

from __future__ import annotations

import os
import sys
import re

__all__ = ["child_of", "parse", "current_traceparent"]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, span_id, flags)`` of a traceparent, or ``None`` if it is not one."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value)
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2), m.group(3)


def child_of(parent: str | None) -> str:
    """A new span id in the parent's trace (or in a new trace), as a traceparent."""
    parsed = parse(parent)
    trace_id = parsed[0] if parsed else os.urandom(16).hex()
    flags = parsed[2] if parsed else "01"
    return f"00-{trace_id}-{os.urandom(8).hex()}-{flags}"


def current_traceparent() -> str | None:
    """The traceparent of the current OpenTelemetry span, if OpenTelemetry is in use and one is active."""
    # No span can be active in a program that never imported OpenTelemetry's tracing API;
    # looking it up in sys.modules costs nothing, where a failing import searched sys.path
    # on every client call.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
