"""Activity policies: retry, timeout and heartbeat timeout, on ``@activity`` or for one call.

Two spellings of the decorator options, never mixed for one setting:

==============================================  ==============================================
``retry=RetryPolicy(max_attempts=3, backoff=...)``  ``retry=3, backoff_ms=1000`` (the design's)
``timeout=timedelta(seconds=5)`` (or seconds)      ``timeout_ms=5000``
``heartbeat_timeout=timedelta(seconds=30)``
==============================================  ==============================================

``retry=N`` means ``RetryPolicy(max_attempts=N)``. Every value is checked when
the decorator runs (or when ``with_options`` is called), so a bad one never
reaches an orchestration's history.

Example::

    @activity(typed=True, retry=3, backoff_ms=1000, timeout_ms=5000)
    async def charge(order: Order) -> str: ...

    await durable(charge(order), timeout=timedelta(seconds=10))   # this call: 10 s, still 3 attempts
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import timedelta

from duroxide_runtime import ConfigurationError, RetryPolicy

__all__ = ["ActivityPolicy", "policy_from_decorator", "call_policy", "retry_policy"]

#: Longest wait the runtime's durable timers take (100 years, as for ``ctx.schedule_timer``).
_MAX_SECONDS = 100 * 365.25 * 24 * 3600


@dataclass(frozen=True)
class ActivityPolicy:
    """How calls of an activity are retried and timed out; ``None``: not set (no retry, no limit).

    ``timeout`` and ``heartbeat_timeout`` are in seconds. Read it from
    ``my_activity.policy``; it is built by ``@activity(...)`` and
    ``my_activity.with_options(...)``.

    Example::

        @activity(typed=True, retry=3, timeout_ms=5000)
        async def charge(order: Order) -> str: ...

        assert charge.policy == ActivityPolicy(retry=RetryPolicy(max_attempts=3), timeout=5.0)
    """

    retry: RetryPolicy | None = None
    timeout: float | None = None
    heartbeat_timeout: float | None = None

    def overridden(self, *, retry: RetryPolicy | None, timeout: float | None,
                   heartbeat_timeout: float | None) -> ActivityPolicy:
        """This policy with every setting that is not ``None`` replaced."""
        return ActivityPolicy(retry=retry if retry is not None else self.retry,
                              timeout=timeout if timeout is not None else self.timeout,
                              heartbeat_timeout=heartbeat_timeout if heartbeat_timeout is not None
                              else self.heartbeat_timeout)


def retry_policy(value: RetryPolicy | int, what: str) -> RetryPolicy:
    """``value`` (the ``retry`` option of ``what``) as a RetryPolicy: ``N`` is ``RetryPolicy(max_attempts=N)``."""
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{what}: retry must be a RetryPolicy or a number of attempts, got "
                                 f"{type(value).__name__}",
                                 fix="pass e.g. retry=RetryPolicy(max_attempts=3, backoff=timedelta(seconds=1)) "
                                     "or retry=3")
    if value < 1:
        raise ConfigurationError(f"{what}: retry={value} allows no attempt",
                                 fix="pass retry=1 for a single attempt, or more to retry")
    return RetryPolicy(max_attempts=value)


def _timeout(value: timedelta | float, what: str, option: str) -> float:
    """A timeout in seconds, from 1 ms (timers count whole milliseconds) to 100 years."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigurationError(f"{what}: {option} must be a timedelta or a number of seconds, got "
                                 f"{type(value).__name__}", fix=f"pass e.g. {option}=timedelta(seconds=30)")
    if not 0.001 <= seconds <= _MAX_SECONDS:  # NaN fails it too
        raise ConfigurationError(f"{what}: {option} must be from 1 ms to 100 years (got {seconds:g} seconds)",
                                 fix=f"pass e.g. {option}=timedelta(seconds=30), or leave it out for no limit")
    return float(seconds)


def _millis(value: float, what: str, option: str) -> float:
    """``value`` milliseconds (the design's ``*_ms`` options) in seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{what}: {option} must be a number of milliseconds, got {value!r}",
                                 fix=f"pass e.g. {option}=1000")
    return value / 1000


def _mixed(what: str, one: str, other: str, fix: str) -> ConfigurationError:
    return ConfigurationError(f"{what}: both {one} and {other} were given, and they set the same thing",
                              fix=f"pass only one of them: {fix}")


def policy_from_decorator(what: str, *, retry: RetryPolicy | int | None, backoff_ms: float | None,
                          timeout: timedelta | float | None, timeout_ms: float | None,
                          heartbeat_timeout: timedelta | float | None) -> ActivityPolicy:
    """The policy that ``@activity(...)``'s options describe, for ``what`` (``"activity 'charge'"``).

    Raises :class:`ConfigurationError` naming the fix when an option is wrong,
    or one setting is given in both spellings (``timeout`` and ``timeout_ms``).
    """
    policy = None if retry is None else retry_policy(retry, what)
    if backoff_ms is not None:
        if isinstance(retry, RetryPolicy):
            raise _mixed(what, "retry=RetryPolicy(...)", "backoff_ms",
                         "retry=RetryPolicy(max_attempts=3, backoff=timedelta(seconds=1)), or retry=3, backoff_ms=1000")
        if policy is None:
            raise ConfigurationError(f"{what}: backoff_ms={backoff_ms!r} without retry: nothing is retried",
                                     fix="add retry=N (the number of attempts), e.g. retry=3, backoff_ms=1000")
        backoff = _millis(backoff_ms, what, "backoff_ms")
        if not 0 <= backoff <= _MAX_SECONDS:
            raise ConfigurationError(f"{what}: backoff_ms must be from 0 to 100 years (got {backoff_ms!r})",
                                     fix="pass e.g. backoff_ms=1000")
        policy = dataclasses.replace(policy, backoff=backoff)
    if timeout is not None and timeout_ms is not None:
        raise _mixed(what, "timeout", "timeout_ms", "timeout=timedelta(seconds=5), or timeout_ms=5000")
    seconds = (_timeout(timeout, what, "timeout") if timeout is not None
               else _timeout(_millis(timeout_ms, what, "timeout_ms"), what, "timeout_ms") if timeout_ms is not None
               else None)
    beat = None if heartbeat_timeout is None else _timeout(heartbeat_timeout, what, "heartbeat_timeout")
    return ActivityPolicy(retry=policy, timeout=seconds, heartbeat_timeout=beat)


def call_policy(what: str, base: ActivityPolicy, *, retry: RetryPolicy | int | None,
                timeout: timedelta | float | None, heartbeat_timeout: timedelta | float | None) -> ActivityPolicy:
    """``base`` with the per-call settings of ``with_options(...)`` (``None``: keep the activity's).

    A ``RetryPolicy`` replaces the activity's; ``retry=N`` changes only its number of
    attempts (keeping its back-off), or is ``RetryPolicy(max_attempts=N)`` if it has none.
    """
    if isinstance(retry, int) and not isinstance(retry, bool) and base.retry is not None:
        retry_policy(retry, what)  # the same checks as without a base
        retry = dataclasses.replace(base.retry, max_attempts=retry)
    return base.overridden(
        retry=None if retry is None else retry_policy(retry, what),
        timeout=None if timeout is None else _timeout(timeout, what, "timeout"),
        heartbeat_timeout=None if heartbeat_timeout is None else _timeout(heartbeat_timeout, what,
                                                                          "heartbeat_timeout"))
