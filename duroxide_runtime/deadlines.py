"""Moments in time as the API takes them: ``ctx.sleep_until(when)`` and ``start_orchestration(deadline=)``.

A moment is an aware ``datetime`` (any time zone); stores and history keep it as
milliseconds since the epoch. A naive ``datetime`` is refused: whether it meant
local time or UTC cannot be known, and a guess would move a deadline by hours.
A start's deadline becomes a :class:`~duroxide_runtime.messages.CancelRequest`
that the store keeps invisible until then (:func:`deadline_cancel`): written in
the start's own transaction, it ends the instance at its deadline even if no
runtime ran in between, and a finished instance drops it like any late message.

Example::

    epoch_ms(datetime(2024, 1, 1, tzinfo=timezone.utc), "when")     # 1704067200000
    deadline_ms(timedelta(minutes=5), now_ms=1704067200000)         # 1704067500000
    deadline_text(1704067500000)                                    # '2024-01-01T00:05:00.000Z'
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .errors import ConfigurationError, InvalidInputError
from .limits import MAX_TIMER_SECONDS
from .messages import DEFAULT_CANCEL_GRACE_MS, CancelRequest

__all__ = ["DEADLINE_BY", "epoch_ms", "deadline_ms", "deadline_text", "deadline_reason", "deadline_cancel"]

#: The ``by`` of a deadline's cancellation (``OrchestrationCancelRequested.by`` in history).
DEADLINE_BY = "deadline"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_ms(when: object, field: str) -> int:
    """``when`` (an aware ``datetime``) as milliseconds since the epoch; else :class:`ConfigurationError`.

    Example: ``epoch_ms(datetime(2024, 1, 1, 9, tzinfo=ZoneInfo("Europe/Paris")), "when") == 1704096000000``.
    """
    if not isinstance(when, datetime):
        raise ConfigurationError(f"{field} must be a datetime, got {type(when).__name__}",
                                 fix=f"pass an aware datetime as {field}, e.g. "
                                     "datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ConfigurationError(f"{field} is a naive datetime ({when.isoformat()}): its time zone is unknown",
                                 fix="give it a time zone: datetime(..., tzinfo=timezone.utc), "
                                     "when.replace(tzinfo=ZoneInfo('Europe/Paris')), or datetime.now(timezone.utc)")
    # Exact integer arithmetic: float seconds would round some moments to the millisecond before.
    return (when - _EPOCH) // timedelta(milliseconds=1)


def deadline_ms(deadline: object, now_ms: int) -> int:
    """A start's ``deadline`` (a ``timedelta`` from now, or an aware ``datetime``) in ms since the epoch.

    It must be after ``now_ms`` and at most 100 years ahead: else :class:`InvalidInputError`
    naming ``deadline``; a naive ``datetime`` or another type raises :class:`ConfigurationError`.

    Example: ``deadline_ms(timedelta(hours=1), now_ms=0) == 3_600_000``.
    """
    if isinstance(deadline, timedelta):
        at = now_ms + deadline // timedelta(milliseconds=1)
        given = f"timedelta {deadline} from now"
    elif isinstance(deadline, datetime):
        at = epoch_ms(deadline, "deadline")
        given = deadline.isoformat()
    else:
        raise ConfigurationError(f"deadline must be a timedelta, a datetime or None, got {type(deadline).__name__}",
                                 fix="pass e.g. deadline=timedelta(hours=1) or an aware datetime")
    if at <= now_ms:
        raise InvalidInputError("deadline", f"is {given}, which is not after now ({deadline_text(now_ms)})",
                                fix="pass a deadline in the future (a positive timedelta, or a later datetime), "
                                    "or None for no deadline")
    if at - now_ms > MAX_TIMER_SECONDS * 1000:
        raise InvalidInputError("deadline", f"is {given}, over 100 years ahead",
                                fix="pass a deadline at most 100 years ahead, or None for no deadline")
    return at


def deadline_text(at_ms: int) -> str:
    """A moment in ms since the epoch as UTC ISO 8601 with milliseconds (``...T09:30:00.000Z``)."""
    return (_EPOCH + timedelta(milliseconds=at_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def deadline_reason(at_ms: int) -> str:
    """The cancellation reason of a deadline: ``"deadline 2024-01-01T00:05:00.000Z passed"``."""
    return f"deadline {deadline_text(at_ms)} passed"


def deadline_cancel(instance_id: str, at_ms: int) -> CancelRequest:
    """The cancellation a start with a deadline enqueues, visible at ``at_ms``; cleanup gets the default grace.

    Example::

        start = StartOrchestration(instance_id="o-1", name="Order", version=None, input="", deadline_ms=at)
        await store.start_instance(start, messages=[(deadline_cancel("o-1", at), at)])
    """
    return CancelRequest(instance_id=instance_id, reason=deadline_reason(at_ms), grace_ms=DEFAULT_CANCEL_GRACE_MS,
                         by=DEADLINE_BY)
