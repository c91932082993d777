"""What a running activity can know about itself, and tell: ``activity_context()``.

``attempt`` counts the attempts of the call under its ``RetryPolicy`` (1, 2, ...);
``heartbeat(details)`` records progress durably and, for a call with a
``heartbeat_timeout``, keeps its lease; the next attempt (or a redelivery of
this one) finds the last details in ``heartbeat_details``.

Example::

    async def import_rows(job_json: str) -> str:
        actx = activity_context()
        start = actx.heartbeat_details or 0        # rows done by an earlier attempt
        for row in range(start, total_rows(job_json)):
            import_row(job_json, row)
            actx.heartbeat(row + 1)                # cheap: written at most once a second
        if actx.cancelled:                         # the orchestration stopped waiting for us
            return "skipped"
        ...
"""

from __future__ import annotations

import contextvars
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from . import tracefmt
from .errors import ConfigurationError, PayloadError

__all__ = ["ActivityContext", "activity_context"]

activity_logger = logging.getLogger("duroxide.activity")


class HeartbeatSink(Protocol):
    """Where a running call's heartbeats go (the activity worker); ``beat`` is called from any thread."""

    def beat(self, details: str | None) -> None:
        """Record ``details`` (encoded JSON; ``None``: only "alive"). May raise a typed error."""
        ...


def encode_heartbeat_details(details: object, activity: str) -> str:
    """``details`` as the JSON text a store keeps; :class:`PayloadError` naming ``activity`` if it cannot be."""
    try:
        return orjson.dumps(details).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise PayloadError(
            f"heartbeat details of activity {activity!r} cannot be encoded as JSON: {exc}; nothing was recorded",
            fix="pass a str or a JSON-encodable value (dict with str keys, list, number, bool, dataclass, "
                "datetime, UUID, Enum) with valid Unicode text (no lone surrogates)") from None


def decode_heartbeat_details(text: str | None) -> Any:
    """The value ``text`` (from :func:`encode_heartbeat_details`) stands for; ``None`` for none or unreadable."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        activity_logger.warning("unreadable heartbeat details %r ignored", text[:80])
        return None


@dataclass
class ActivityContext:
    """Identity of the activity call being executed, its attempt, heartbeats and cancellation flag."""

    instance_id: str
    execution_id: int
    event_id: int
    name: str
    #: Which attempt of the call this is under its ``RetryPolicy``: 1, 2, 3... (a redelivery
    #: of the same attempt, after a crash, keeps its number).
    attempt: int
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    #: How many times this attempt was handed to a worker: 1, or more after a worker died or
    #: lost its lease while running it (the same attempt then runs again elsewhere).
    delivery: int = 1
    #: The details last recorded with :meth:`heartbeat` for this call before this attempt
    #: started (by an earlier attempt, or an earlier delivery of this one), decoded from
    #: JSON (a dataclass comes back as a dict); ``None`` if there are none.
    heartbeat_details: Any = None
    #: The call's heartbeat timeout in seconds (``None``: none): beat more often than this.
    heartbeat_timeout: float | None = None
    _sink: HeartbeatSink | None = field(default=None, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the instance ended or stopped waiting for this call (poll it in long loops)."""
        return self._cancelled.is_set()

    def heartbeat(self, details: object = None) -> None:
        """Say the call is alive and, with ``details``, record its progress.

        ``details``: a ``str`` or any JSON-encodable value (dict, list, number,
        dataclass...); ``None`` (the default) records nothing new and only says the
        call is alive. The last details are kept durably for the call: the next
        attempt reads them in :attr:`heartbeat_details`. Writes are batched and
        rate-limited (``RuntimeOptions.heartbeat_interval``), so calling this often
        is cheap; it never blocks, and works from ``async def`` and plain ``def``
        activities alike. With a ``heartbeat_timeout`` on the call, a call that
        stops beating for longer is considered lost and retried under its
        ``RetryPolicy``. Details that cannot be encoded raise :class:`PayloadError`
        (too large: :class:`PayloadTooLargeError`) here, and nothing is recorded.

        Example::

            activity_context().heartbeat({"page": page})
        """
        sink = self._sink
        if sink is None:
            raise ConfigurationError(
                f"heartbeat() of activity {self.name!r} was called while the call is not running",
                fix="call activity_context().heartbeat(...) from the running activity itself (its task or "
                    "thread), before it returns")
        sink.beat(None if details is None else encode_heartbeat_details(details, self.name))

    def log_fields(self) -> dict[str, Any]:
        """Structured fields attached to every log record of this activity."""
        return {"instance_id": self.instance_id, "execution_id": self.execution_id,
                "activity": self.name, "event_id": self.event_id, "attempt": self.attempt,
                "delivery": self.delivery}

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
