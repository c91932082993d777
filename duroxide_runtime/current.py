"""What is running now: ``orchestration_context()``, and ``trace`` to whatever it is.

The engine runs each orchestration's main task in a ``contextvars.Context``
where this module's variable holds the orchestration's context; tasks the
code creates copy that context, so the answer is right in every task of
the orchestration and nowhere else (other tasks, other threads).

Example::

    async def audit(message: str) -> None:   # a helper with no ctx parameter
        orchestration_context().trace("INFO", message)
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from . import tracefmt
from .activity import current_activity
from .context import OrchestrationContext
from .errors import ConfigurationError

__all__ = ["orchestration_context", "current_orchestration", "context_running", "trace", "skip_trace_frames_of"]

_plain_logger = logging.getLogger("duroxide.trace")
tracefmt.skip_frames_of(__name__)

_current: contextvars.ContextVar[OrchestrationContext | None] = contextvars.ContextVar(
    "duroxide_orchestration", default=None)


def orchestration_context() -> OrchestrationContext:
    """The context of the orchestration whose code is running now.

    Raises :class:`ConfigurationError` outside orchestration code.

    Example::

        async def helper() -> str:
            return await orchestration_context().schedule_activity("Greet", "World")
    """
    ctx = _current.get()
    if ctx is None:
        raise ConfigurationError(
            "orchestration_context() called outside orchestration code",
            fix="call it only from an orchestration function or a task it created "
                "(activities use activity_context())")
    return ctx


def current_orchestration() -> OrchestrationContext | None:
    """The running orchestration's context, or ``None`` (for code that runs in both places)."""
    return _current.get()


def context_running(ctx: OrchestrationContext) -> contextvars.Context:
    """A copy of the caller's ``contextvars.Context`` in which ``ctx`` is the current orchestration.

    The engine passes it to ``create_task`` for the orchestration's main task.
    """
    run = contextvars.copy_context()
    run.run(_current.set, ctx)
    return run


def trace(level: str, message: str, /, *args: Any, **fields: Any) -> None:
    """Log by the trace message rules from code that runs anywhere: ``trace("INFO", "got {}", n, order_id=oid)``.

    In orchestration code it is ``orchestration_context().trace(...)`` (logged once,
    never on replay), in an activity ``activity_context().trace(...)``, and elsewhere
    a record on the ``duroxide.trace`` logger. Never raises for ``message`` or the
    fields; an unknown ``level`` raises :class:`ConfigurationError`.
    """
    ctx = _current.get()
    if ctx is not None:
        ctx.trace(level, message, *args, **fields)
        return
    actx = current_activity()
    if actx is not None:
        actx.trace(level, message, *args, **fields)
        return
    tracefmt.emit(_plain_logger, tracefmt.level_number(level), message, args, fields, {})


def skip_trace_frames_of(module: str) -> None:
    """For a library that wraps the trace calls: records point at its caller, not at its own frames.

    Example::

        skip_trace_frames_of(__name__)   # at the top of the wrapping module
    """
    tracefmt.skip_frames_of(module)
