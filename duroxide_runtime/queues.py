"""Named queues and their limits: concurrency, per-key concurrency, rate limits and priorities.

Every activity call sits in a queue: ``"default"``, or the one its call names
(``ctx.schedule_activity(..., queue="payments")``; ``@activity(queue=...)`` in the
macro layer). ``RuntimeOptions(queues={...})`` configures a queue with
:class:`QueueOptions`; the limits hold across every runtime process sharing the
store, because the store checks them in the same transaction that leases the work
(processes must configure a queue alike: each enforces what it was given).

* ``concurrency``: at most this many calls of the queue run at once.
* ``per_key_concurrency``: at most this many calls with one concurrency key run at
  once. An instance's key is its start's ``concurrency_key``; its activity calls and
  its sub-orchestrations inherit it. Calls without a key are bound only by ``concurrency``.
* ``rate_limit``: at most ``RateLimit.n`` calls of the queue start in any window of
  ``RateLimit.per`` (a sliding window over the times the store leased them).
* ``priority``: the priority of the queue's calls whose instance was started
  without ``priority=``. Higher runs first: work waiting in any queue is leased in
  order of priority, then of arrival.

A call that waits for a slot stays queued (nothing is lost, nothing fails); it is
leased when a slot frees, by whichever process asks first. A lease that lapses
(its process died) frees its slot when it expires.

Example::

    options = RuntimeOptions(queues={
        "payments": QueueOptions(concurrency=10, per_key_concurrency=1,
                                 rate_limit=RateLimit(5, per=timedelta(seconds=1))),
    })
    await client.start_orchestration("o-1", "ProcessOrder", order, concurrency_key="customer-42", priority=5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from .errors import ConfigurationError, UnknownQueueError
from .limits import MAX_ID_CHARS, MAX_NAME_CHARS, check_identifier

__all__ = [
    "DEFAULT_QUEUE", "MAX_PRIORITY", "MAX_QUEUE_LIMIT", "QueueOptions", "RateLimit", "UnknownQueueError",
    "check_queue_name", "check_concurrency_key", "check_priority", "check_queues", "known_queue",
]

#: The queue of every activity call that names none.
DEFAULT_QUEUE = "default"
#: Priorities run from ``-MAX_PRIORITY`` to ``MAX_PRIORITY`` (stored as a 32-bit integer everywhere).
MAX_PRIORITY = 2**31 - 1
#: Largest concurrency, per-key concurrency or rate-limit count a queue may set.
MAX_QUEUE_LIMIT = 1_000_000
#: Longest rate-limit window (one day): the store keeps one row per lease inside the window.
MAX_RATE_WINDOW = timedelta(days=1)


def _limit(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUEUE_LIMIT:
        raise ConfigurationError(f"{what} must be a whole number from 1 to {MAX_QUEUE_LIMIT} or None, got {value!r}",
                                 fix=f"set {what} to 1 or more, or leave it None for no limit")
    return value


@dataclass(frozen=True)
class RateLimit:
    """At most ``n`` calls start in any window of ``per`` (a ``timedelta``, or seconds).

    Example: ``RateLimit(5, per=timedelta(seconds=1))``: five calls a second, at most.
    """

    n: int
    per: timedelta | float

    def __post_init__(self) -> None:
        _limit(self.n, "RateLimit.n")
        seconds = self.per.total_seconds() if isinstance(self.per, timedelta) else self.per
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds)
                or not 0.001 <= seconds <= MAX_RATE_WINDOW.total_seconds()):
            raise ConfigurationError(f"RateLimit.per must be a timedelta from 1 ms to 1 day, got {self.per!r}",
                                     fix="pass e.g. RateLimit(5, per=timedelta(seconds=1))")

    @property
    def per_ms(self) -> int:
        """The window in milliseconds (what the stores compare with their clock)."""
        seconds = self.per.total_seconds() if isinstance(self.per, timedelta) else float(self.per)
        return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class QueueOptions:
    """The limits of one queue (see the module docstring); every limit is optional.

    Example::

        QueueOptions(concurrency=10, per_key_concurrency=1, rate_limit=RateLimit(5, per=timedelta(seconds=1)))
    """

    concurrency: int | None = None
    per_key_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        _limit(self.concurrency, "QueueOptions.concurrency")
        _limit(self.per_key_concurrency, "QueueOptions.per_key_concurrency")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ConfigurationError(f"QueueOptions.rate_limit must be a RateLimit, got {type(self.rate_limit).__name__}",
                                     fix="pass rate_limit=RateLimit(n, per=timedelta(...))")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) \
                or not -MAX_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise ConfigurationError(f"QueueOptions.priority must be a whole number from {-MAX_PRIORITY} to "
                                     f"{MAX_PRIORITY}, got {self.priority!r}", fix="pass e.g. priority=5")

    @property
    def limited(self) -> bool:
        """Whether leasing this queue's work must check a limit."""
        return self.concurrency is not None or self.per_key_concurrency is not None or self.rate_limit is not None


def check_queue_name(value: object, field: str = "queue") -> str:
    """A queue name: 1 to 256 printable characters (an :class:`InvalidInputError` otherwise)."""
    return check_identifier(value, field, MAX_NAME_CHARS)


def check_concurrency_key(value: object) -> str | None:
    """A start's ``concurrency_key``: ``None``, or 1 to 256 printable characters."""
    return None if value is None else check_identifier(value, "concurrency_key", MAX_ID_CHARS)


def check_priority(value: object) -> int | None:
    """A start's ``priority``: ``None`` (the queue's), or a whole number within ±:data:`MAX_PRIORITY`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise ConfigurationError(f"priority must be a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY} or None, "
                                 f"got {value!r}", fix="pass e.g. priority=5 (higher runs first)")
    return value


def check_queues(queues: object) -> dict[str, QueueOptions]:
    """``RuntimeOptions.queues`` checked: queue name -> :class:`QueueOptions`.

    Example: ``check_queues({"payments": QueueOptions(concurrency=10)})``.
    """
    if not isinstance(queues, Mapping):
        raise ConfigurationError(f"RuntimeOptions.queues must be a dict of queue name -> QueueOptions, "
                                 f"got {type(queues).__name__}",
                                 fix='pass e.g. queues={"payments": QueueOptions(concurrency=10)}')
    checked: dict[str, QueueOptions] = {}
    for name, options in queues.items():
        check_queue_name(name, "RuntimeOptions.queues key")
        if not isinstance(options, QueueOptions):
            raise ConfigurationError(f"RuntimeOptions.queues[{name!r}] must be a QueueOptions, "
                                     f"got {type(options).__name__}",
                                     fix=f'pass queues={{{name!r}: QueueOptions(concurrency=...)}}')
        checked[name] = options
    return checked


def known_queue(queue: str, queues: Mapping[str, QueueOptions]) -> str:
    """``queue`` if it is :data:`DEFAULT_QUEUE` or configured; else :class:`UnknownQueueError`."""
    if queue != DEFAULT_QUEUE and queue not in queues:
        raise UnknownQueueError(queue, [DEFAULT_QUEUE, *sorted(queues)])
    return queue
