"""The call forms: ``durable(...)``, ``durable_trace_*``, ``durable_newguid()``, ``durable_utcnow()``.

The import hook rewrites them into explicit calls on the context in scope
(``await durable(f(x))`` becomes ``await f.call(ctx, x)``). What is left here
is what runs when a form was *not* rewritten:

* ``durable(...)`` cannot work without its context, so it raises
  :class:`DurableNotExpandedError` telling how to install the hook;
* the trace, guid and time forms find the running orchestration by
  themselves (``duroxide_runtime.current_orchestration()``), or the running
  activity, so they behave the same rewritten or not.

Type checkers see through ``durable``: ``durable(charge(order))`` has the
activity's result type.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from duroxide_runtime import ConfigurationError, RetryPolicy, current_orchestration, skip_trace_frames_of, trace

from .decorators import DurableNotExpandedError

__all__ = [
    "durable", "durable_trace_info", "durable_trace_warn", "durable_trace_error", "durable_trace_debug",
    "durable_newguid", "durable_utcnow", "trace_info", "trace_warn", "trace_error", "trace_debug",
    "orch_info", "orch_warn", "orch_error", "orch_debug", "durable_guid", "durable_now",
]

R = TypeVar("R")
skip_trace_frames_of(__name__)  # records of the unrewritten forms point at the user's call


@overload
def durable(call: Awaitable[R], /, *, retry: RetryPolicy | int | None = None,
            timeout: timedelta | float | None = None,
            heartbeat_timeout: timedelta | float | None = None) -> Awaitable[R]: ...  # async activity or orchestration
@overload
def durable(call: R, /, *, retry: RetryPolicy | int | None = None, timeout: timedelta | float | None = None,
            heartbeat_timeout: timedelta | float | None = None) -> Awaitable[R]: ...  # plain `def` activity


def durable(call: Any, /, *, retry: RetryPolicy | int | None = None, timeout: timedelta | float | None = None,
            heartbeat_timeout: timedelta | float | None = None) -> Any:
    """Run an activity or sub-orchestration durably: ``await durable(charge_payment(order, total))``.

    Rewritten at import time into ``charge_payment.call(ctx, order, total)``. With
    options (activities only), ``await durable(charge(order), retry=RetryPolicy(max_attempts=5),
    timeout=timedelta(seconds=10))`` becomes ``await charge.with_options(retry=...,
    timeout=...).call(ctx, order)``: these settings for this call, the decorator's for
    the rest (see :mod:`duroxide_macros.policy`).
    """
    if isinstance(call, Coroutine):
        call.close()  # never started: closing it keeps "never awaited" warnings away
    from .diagnose import not_expanded_cause  # the caller's module tells why it was not rewritten

    raise DurableNotExpandedError("durable(...)", *not_expanded_cause(sys._getframe(1)))


def _trace(level: str, fmt: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    # Formatting is left to the runtime (duroxide_runtime.trace), so a form reads the
    # same rewritten or not, and a bad format is logged with a warning instead of raising.
    trace(level, fmt, *args, **fields)


def durable_trace_info(fmt: str, /, *args: Any, **fields: Any) -> None:
    """Log at INFO once (never on replay): ``durable_trace_info("order {}", order.id, order_id=order.id)``.

    ``fmt`` is ``str.format`` with the design's ``{:?}`` (repr) and ``{:.2}`` (two
    decimals); keyword fields go on the log record. It never raises: a format that
    does not apply is logged as written, with a warning. The rules are in
    :mod:`duroxide_runtime.tracefmt`; the other levels follow them too.
    """
    _trace("INFO", fmt, args, fields)


def durable_trace_warn(fmt: str, /, *args: Any, **fields: Any) -> None:
    """Log at WARNING once (never on replay)."""
    _trace("WARN", fmt, args, fields)


def durable_trace_error(fmt: str, /, *args: Any, **fields: Any) -> None:
    """Log at ERROR once (never on replay)."""
    _trace("ERROR", fmt, args, fields)


def durable_trace_debug(fmt: str, /, *args: Any, **fields: Any) -> None:
    """Log at DEBUG once (never on replay)."""
    _trace("DEBUG", fmt, args, fields)


def _ctx(form: str) -> Any:
    ctx = current_orchestration()
    if ctx is None:
        raise ConfigurationError(f"{form} was called outside an orchestration",
                                 fix="use it only inside an @orchestration function")
    return ctx


def durable_newguid() -> Awaitable[str]:
    """A GUID recorded once and replayed verbatim: ``guid = await durable_newguid()``."""
    return _ctx("durable_newguid()").new_guid()  # type: ignore[no-any-return]


def durable_utcnow() -> Awaitable[datetime]:
    """The current UTC time, recorded once and replayed verbatim: ``now = await durable_utcnow()``."""
    return _ctx("durable_utcnow()").utc_now()  # type: ignore[no-any-return]


# Aliases, so that every spelling of the design runs.
trace_info = orch_info = durable_trace_info
trace_warn = orch_warn = durable_trace_warn
trace_error = orch_error = durable_trace_error
trace_debug = orch_debug = durable_trace_debug
durable_guid = durable_newguid
durable_now = durable_utcnow
