"""Runtime configuration, with the defaults documented in one place.

Example::

    rt = await (Runtime.builder()
          .store(store)
          .orchestrations(orchs)
          .activities(acts)
          .options(RuntimeOptions(activity_concurrency=32, max_attempts=5))
          .start())
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import ConfigurationError, ErrorDetails, NonRetryableError, class_path
from .queues import QueueOptions, check_queues

__all__ = ["RuntimeOptions", "RetryPolicy", "to_seconds"]

#: How a NonRetryableError (or subclass) shows among a failure's recorded ``types``.
_NON_RETRYABLE = class_path(NonRetryableError)


def to_seconds(value: timedelta | float | int, what: str) -> float:
    """Accept a ``timedelta`` or a number of seconds; reject negatives with a clear error."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigurationError(
            f"{what} must be a timedelta or a number of seconds, got {type(value).__name__}",
            fix=f"pass e.g. timedelta(seconds=5) or 5.0 as {what}",
        )
    if seconds != seconds:  # NaN: every comparison with it is False
        raise ConfigurationError(f"{what} is NaN", fix=f"pass a number of seconds >= 0 as {what}")
    if seconds < 0:
        raise ConfigurationError(f"{what} must not be negative (got {seconds})", fix=f"pass {what} >= 0")
    return float(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How an activity call is retried inside the orchestration (durably, with timers).

    ``max_attempts`` counts every attempt (1: no retry). Attempt ``n`` (1-based) that
    fails waits ``backoff * backoff_coefficient**(n-1)``, capped at ``max_backoff``,
    before attempt ``n+1``. ``backoff`` and ``max_backoff`` are a ``timedelta`` or
    seconds (one spelling: ``backoff`` is the first wait; there is no separate
    ``initial_backoff``).

    A failure is not retried when the activity raised :class:`~duroxide_runtime.NonRetryableError`
    (or a subclass), or an exception listed in ``non_retryable``: exception classes
    (subclasses match too) or their names as strings (``"CardDeclined"``, or the full
    ``"app.errors.CardDeclined"``, for classes the orchestration cannot import). The
    decision reads only what the failure recorded in history (the exception's type
    names), so replay decides the same way in every process.

    Example::

        await ctx.schedule_activity("Charge", data, retry=RetryPolicy(max_attempts=5, backoff=timedelta(seconds=1),
                                                                      non_retryable=[CardDeclined]))
    """

    max_attempts: int = 3
    backoff: timedelta | float = 1.0
    backoff_coefficient: float = 2.0
    max_backoff: timedelta | float = 60.0
    non_retryable: Sequence[type[BaseException] | str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be a whole number >= 1, got {self.max_attempts!r}",
                                     fix="use max_attempts=1 for no retry")
        backoff = to_seconds(self.backoff, "RetryPolicy.backoff")
        cap = to_seconds(self.max_backoff, "RetryPolicy.max_backoff")
        coefficient = self.backoff_coefficient
        if (not (backoff < math.inf and cap < math.inf) or isinstance(coefficient, bool)
                or not isinstance(coefficient, (int, float)) or not 1 <= coefficient < math.inf):
            raise ConfigurationError(
                "RetryPolicy backoffs must be finite and >= 0, and backoff_coefficient finite and >= 1",
                fix="e.g. RetryPolicy(backoff=timedelta(seconds=1), backoff_coefficient=2.0)",
            )
        if isinstance(self.non_retryable, (str, type)):
            one = getattr(self.non_retryable, "__name__", repr(self.non_retryable))
            raise ConfigurationError("RetryPolicy.non_retryable must be a list of exception classes or names, "
                                     f"got the single {self.non_retryable!r}", fix=f"wrap it in a list: [{one}]")
        listed = tuple(self.non_retryable)
        for item in listed:
            if isinstance(item, str) and item.strip():
                continue
            if isinstance(item, type) and issubclass(item, BaseException):
                continue
            raise ConfigurationError(f"RetryPolicy.non_retryable holds {item!r}, which is neither an exception class "
                                     "nor its name", fix="list exception classes (ValueError) or their names "
                                                         "(\"CardDeclined\", \"app.errors.CardDeclined\")")
        object.__setattr__(self, "non_retryable", listed)  # frozen; a tuple keeps the policy hashable

    def backoff_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        cap = to_seconds(self.max_backoff, "RetryPolicy.max_backoff")
        try:
            wait = to_seconds(self.backoff, "RetryPolicy.backoff") * self.backoff_coefficient ** (attempt - 1)
        except OverflowError:  # a float power past 1e308: the cap applies
            return cap
        return min(cap, wait)

    def is_retryable(self, failure: ErrorDetails) -> bool:
        """Whether a failure recorded as ``failure`` may be retried under this policy.

        Not if the activity raised :class:`NonRetryableError` (or a subclass) or a listed
        exception (or a subclass). The class names the failure recorded (``failure.types``)
        are compared with each listed class's ``module.QualName`` (a builtin's bare name)
        and with each listed string, a string without a dot matching the bare class name.
        A failure recorded without class names (older histories, a timeout) is compared
        by its bare ``failure.error_type``.

        Example::

            RetryPolicy(non_retryable=[KeyError]).is_retryable(ErrorDetails("KeyError", "'sku'"))  # False
        """
        listed = [item if isinstance(item, str) else class_path(item) for item in self.non_retryable]
        if failure.types:
            if _NON_RETRYABLE in failure.types:
                return False
            bare = {path.rsplit(".", 1)[-1] for path in failure.types}
            return not any(item in failure.types or ("." not in item and item in bare) for item in listed)
        if failure.error_type == NonRetryableError.__name__:
            return False
        return failure.error_type not in {item.rsplit(".", 1)[-1] for item in listed}


@dataclass(frozen=True)
class RuntimeOptions:
    """Every tunable of the runtime. All durations are in seconds.

    Defaults suit one process on SQLite; each field says why it exists.
    """

    #: Turns processed together: a fetch locks up to this many instances and
    #: their results are committed in one transaction (amortises store round trips).
    orchestration_batch_size: int = 64
    #: Concurrent fetch/replay/commit pipelines for orchestrations.
    orchestration_concurrency: int = 2
    #: Activities running at once in this process (async and thread-pool ones).
    activity_concurrency: int = 64
    #: Threads for plain ``def`` activities (they must not block the event loop).
    activity_threads: int = 16
    #: How long a fetched instance stays locked before another dispatcher may take it.
    orchestration_lock_timeout: float = 5.0
    #: How long orchestration code may run without a step (one callback of its
    #: loop) before the watchdog stops the turn with OrchestrationStuckError; the
    #: turn is retried with back-off, and after ``max_attempts`` the instance fails.
    #: A long turn that keeps stepping (a long replay, say) is never stopped.
    turn_timeout: float = 2.0
    #: How long a fetched activity stays locked; renewed while it runs (a call with a
    #: ``heartbeat_timeout`` is renewed by its heartbeats instead).
    activity_lock_timeout: float = 30.0
    #: Shortest time between two store writes of one call's ``heartbeat()`` details: beats in
    #: between only change what the next write records (a call with a ``heartbeat_timeout``
    #: writes at least every third of it). The first beat of a call is written at once.
    heartbeat_interval: float = 1.0
    #: A message fetched more than this many times fails its instance as poison.
    max_attempts: int = 10
    #: Back-off for work that cannot be handled yet (unregistered name): doubles per attempt.
    unknown_name_backoff: float = 0.05
    #: Upper bound on back-off for unregistered names.
    unknown_name_max_backoff: float = 2.0
    #: An activity this node does not know is left to nodes that do for this long
    #: (rolling deploys); after that this node takes it, backs off, and finally poisons it.
    foreign_activity_delay: float = 1.0
    #: Idle wait between store polls when no in-process wake-up arrives (other
    #: processes may enqueue work); in-process work wakes dispatchers at once.
    poll_interval: float = 0.2
    #: Live instances kept in memory between turns (O(new events) per turn).
    #: 0 disables the cache: every turn replays from scratch.
    instance_cache_size: int = 10_000
    #: Replay from scratch at every turn (the instance cache is off); for tests
    #: that must prove determinism by comparing histories with the cached mode.
    replay_from_scratch: bool = False
    #: Largest input/output/event payload, in UTF-8 bytes.
    max_payload_bytes: int = 1024 * 1024
    #: Largest custom status, in UTF-8 bytes.
    max_custom_status_bytes: int = 16 * 1024
    #: Most events one execution may record; use continue_as_new for longer runs.
    max_history_events: int = 50_000
    #: How long ``shutdown`` waits for running activities before abandoning them
    #: (abandoned work is delivered again; nothing is lost).
    shutdown_grace: float = 10.0
    #: Named queues and their limits (:mod:`duroxide_runtime.queues`): queue name -> ``QueueOptions``.
    #: Limits hold across every process sharing the store; configure them alike in each.
    #: Work naming a queue not listed here (other than ``"default"``) raises ``UnknownQueueError``.
    queues: Mapping[str, QueueOptions] = field(default_factory=dict)
    #: Hand work this process commits straight to its own idle worker and dispatcher: a turn's
    #: activity calls are leased by the commit that enqueues them, and the instance an activity
    #: result goes to is locked by the write that records it (one store round trip less on each
    #: hop). Only idle ones are handed work, so nothing older waits for it. ``False``: every call
    #: and result is fetched from the store's queues, by whichever process asks first.
    eager_dispatch: bool = True
    #: Start the ticks of the store's cron schedules (:mod:`duroxide_runtime.schedules`) from this
    #: runtime. Any number of runtimes may: each tick starts one instance. ``False`` for a
    #: process that must not start scheduled work.
    run_schedules: bool = True
    #: Longest time between two reads of the schedules: a schedule made or changed by another
    #: process is seen this late at most (this process's clients wake the scheduler at once).
    schedule_poll_interval: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "queues", check_queues(self.queues))  # frozen; a checked copy
        for name in ("orchestration_batch_size", "orchestration_concurrency", "activity_concurrency",
                     "activity_threads", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"RuntimeOptions.{name} must be >= 1", fix=f"set {name} to 1 or more")
        for name in ("orchestration_lock_timeout", "activity_lock_timeout", "poll_interval", "turn_timeout",
                     "heartbeat_interval", "schedule_poll_interval"):
            if not 0 < getattr(self, name) < math.inf:  # also NaN
                raise ConfigurationError(f"RuntimeOptions.{name} must be > 0", fix=f"set {name} to a positive number of seconds")
