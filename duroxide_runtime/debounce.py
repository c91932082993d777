"""Debounced starts: ``start_orchestration(..., debounce=, debounce_key=)`` checks its arguments here.

A burst of debounced starts with one key makes one instance, which starts once
no start of that key came for the quiet period, with the last start's input.
The window is per (orchestration name, ``debounce_key``; default: the instance
id); the store keeps it and applies each start atomically
(:meth:`Provider.debounce_start <duroxide_runtime.providers.base.Provider.debounce_start>`).
The window closes when a dispatcher picks the held start up; the next start
with that key opens a new one (a new instance, whose id must be free).

Some start options cannot apply to a start that may be merged into another
one's, and are refused with :class:`InvalidInputError` before anything is
stored (see :func:`check_debounce`).

Example::

    check_debounce(timedelta(seconds=5), "user-7", "i-1", if_exists=IfExists.FAIL, idempotency_key=None,
                   deadline=None, queue=None)                            # -> (5000, "user-7")
"""

from __future__ import annotations

import math
from datetime import timedelta

from .errors import ConfigurationError, InvalidInputError
from .limits import MAX_ID_CHARS, check_identifier
from .queues import DEFAULT_QUEUE
from .start_policy import IfExists

__all__ = ["MAX_DEBOUNCE", "MAX_DEBOUNCE_KEY_CHARS", "check_debounce"]

#: Longest quiet period a debounced start may ask for: a start held back longer is a
#: schedule (``Client.create_schedule``) or a timer in an orchestration, not a debounce.
MAX_DEBOUNCE = timedelta(days=7)
#: Longest debounce key, in characters (an index key, like an instance id).
MAX_DEBOUNCE_KEY_CHARS = MAX_ID_CHARS

_WHY = "a debounced start may be merged into another start's instance"


def check_debounce(debounce: object, debounce_key: object, instance_id: str, *, if_exists: IfExists,
                   idempotency_key: str | None, deadline: object, queue: str | None) -> tuple[int, str] | None:
    """The quiet period in ms and the window's key of a start, or ``None`` for a start that is not debounced.

    ``debounce`` is a ``timedelta`` or seconds, above 0 and at most :data:`MAX_DEBOUNCE`
    (else :class:`InvalidInputError`; a wrong type or NaN :class:`ConfigurationError`, as
    every duration). ``debounce_key`` (default ``instance_id``) is checked as an identifier,
    and is refused without ``debounce``. Refused together with ``debounce``, each with the
    reason in its fix: an ``idempotency_key``, a ``deadline``, ``if_exists="replace"`` and a
    ``queue`` other than ``"default"``.

    Example: ``check_debounce(2.5, None, "i-1", if_exists=IfExists.FAIL, idempotency_key=None,
    deadline=None, queue=None) == (2500, "i-1")``.
    """
    if debounce is None:
        if debounce_key is not None:
            raise InvalidInputError("debounce_key", "is given without debounce",
                                    fix="pass debounce=timedelta(...) with it, or drop debounce_key")
        return None
    seconds = debounce.total_seconds() if isinstance(debounce, timedelta) else debounce
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigurationError(f"debounce must be a timedelta or a number of seconds, got {type(debounce).__name__}",
                                 fix="pass e.g. debounce=timedelta(seconds=5) or debounce=5.0")
    if isinstance(seconds, float) and math.isnan(seconds):
        raise ConfigurationError("debounce is NaN", fix="pass a positive number of seconds as debounce")
    if seconds > MAX_DEBOUNCE.total_seconds():  # before rounding: infinity has no milliseconds
        raise InvalidInputError("debounce", f"is {seconds:g} seconds, over the limit of {MAX_DEBOUNCE}",
                                fix="pass a debounce of at most 7 days; for later starts use a schedule "
                                    "(client.create_schedule) or a timer in an orchestration")
    quiet_ms = round(seconds * 1000) if seconds > 0 else 0  # -inf has no milliseconds either
    if quiet_ms <= 0:
        raise InvalidInputError("debounce", f"is {seconds:g} seconds: the quiet period must be at least 1 ms",
                                fix="pass a positive debounce, or None to start at once")
    key = instance_id if debounce_key is None else check_identifier(debounce_key, "debounce_key",
                                                                      MAX_DEBOUNCE_KEY_CHARS)
    if idempotency_key is not None:
        raise InvalidInputError("idempotency_key", f"is given with debounce: {_WHY}, so the key could name an "
                                "instance its start never created",
                                fix="drop idempotency_key: a repeated debounced start with the same debounce_key "
                                    "already joins the same instance")
    if deadline is not None:
        raise InvalidInputError("deadline", f"is given with debounce: {_WHY}, and its deadline would be held "
                                "against the wrong start",
                                fix="drop deadline, and end the instance yourself (ctx.sleep_until with a "
                                    "timeout, or client.cancel_instance)")
    if if_exists is IfExists.REPLACE:
        raise InvalidInputError("if_exists", "is 'replace' with debounce: a debounced start never deletes an "
                                "instance",
                                fix="use if_exists='fail' or 'return_existing' with debounce, or purge the old "
                                    "instance first (client.purge)")
    if queue is not None and queue != DEFAULT_QUEUE:
        raise InvalidInputError("queue", f"is {queue!r} with debounce: a held start waits for its quiet period, "
                                "not for a queue's slot",
                                fix="start without queue= (queue='default' overrides an @orchestration(queue=) "
                                    "one), or without debounce")
    return quiet_ms, key
