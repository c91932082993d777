"""What a running activity can know about itself: ``activity_context()``.

Example::

    async def charge(order_json: str) -> str:
        actx = activity_context()
        actx.trace("INFO", "charging", order=order_json)
        if actx.cancelled:          # the orchestration stopped waiting for us
            return "skipped"
        ...
"""

from __future__ import annotations

import contextvars
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from . import tracefmt
from .errors import ConfigurationError

__all__ = ["ActivityContext", "activity_context"]

activity_logger = logging.getLogger("duroxide.activity")


@dataclass
class ActivityContext:
    """Identity of the activity call being executed, and its cancellation flag."""

    instance_id: str
    execution_id: int
    event_id: int
    name: str
    attempt: int
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the instance ended or stopped waiting for this call (poll it in long loops)."""
        return self._cancelled.is_set()

    def log_fields(self) -> dict[str, Any]:
        """Structured fields attached to every log record of this activity."""
        return {"instance_id": self.instance_id, "execution_id": self.execution_id,
                "activity": self.name, "event_id": self.event_id, "attempt": self.attempt}

    def trace(self, level: str, message: str, /, *args: Any, **fields: Any) -> None:
        """Log with this activity's fields attached: ``actx.trace("INFO", "got {}", n, order_id=oid)``.

        The same rules as ``OrchestrationContext.trace`` (see :mod:`duroxide_runtime.tracefmt`):
        a format that does not apply is logged as written, with a warning, and
        never fails the activity.
        """
        tracefmt.emit(activity_logger, tracefmt.level_number(level), message, args, fields, self.log_fields())


_current: contextvars.ContextVar[ActivityContext | None] = contextvars.ContextVar("duroxide_activity", default=None)


def activity_context() -> ActivityContext:
    """The context of the activity running in this task or thread.

    Raises :class:`ConfigurationError` outside an activity.
    """
    ctx = _current.get()
    if ctx is None:
        raise ConfigurationError("activity_context() called outside a running activity",
                                 fix="call it only from code that runs inside an activity")
    return ctx


def current_activity() -> ActivityContext | None:
    """The running activity's context, or ``None`` (for code that runs in both places)."""
    return _current.get()
