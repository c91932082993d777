"""``@activity`` and ``@orchestration``: register at decoration time, carry typed helpers.

Example::

    @activity(typed=True)
    async def charge_payment(order: Order, amount: float) -> str: ...

    @orchestration
    async def process_order(ctx: OrchestrationContext, order: Order) -> Receipt:
        txn = await durable(charge_payment(order, order.total))   # -> charge_payment.call(ctx, ...)
        ...

    receipt = await process_order.run(client, "order-1", order, timeout=30)
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import sys
import time
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, NoReturn, ParamSpec, TypeVar, overload

from duroxide_runtime import (
    DEFAULT_VERSION,
    CatchUp,
    Client,
    ConfigurationError,
    DuroxideError,
    ErrorCode,
    ErrorDetails,
    HistoryEvent,
    IfExists,
    InstanceInfo,
    InstanceNotFoundError,
    OrchestrationContext,
    OrchestrationStatus,
    PayloadError,
    RetryPolicy,
    StatusOf,
    StreamItem,
    check_catch_up,
    check_cron,
    check_queue_name,
    TypedEvent,
    current_orchestration,
    to_seconds,
)

from .ambient import ambient_client
from .codec import Codec, encode_value
from .discovery import register_activity, register_orchestration
from .failure import failure_site
from .policy import ActivityPolicy, call_policy, policy_from_decorator
from .telemetry import ActivityTelemetry

__all__ = ["activity", "orchestration", "Activity", "AsyncActivity", "SyncActivity", "ActivityWithOptions",
           "Orchestration",
           "OrchestrationFailedError",
           "DurableNotExpandedError"]

P = ParamSpec("P")
R = TypeVar("R")
_NO_INPUT: Any = object()  # "no input passed" (a no-input orchestration's helpers take none)
I = TypeVar("I")  # noqa: E741 - the orchestration's input type
O = TypeVar("O")  # noqa: E741 - the orchestration's output type
E = TypeVar("E")  # a typed event's data, a state value, an update's reply, a stream item


class DurableNotExpandedError(ConfigurationError):
    """A ``durable(...)`` form ran without being rewritten by the import hook."""

    code = ErrorCode.DURABLE_NOT_EXPANDED

    def __init__(self, what: str, cause: str | None = None, fix: str | None = None) -> None:
        super().__init__(
            f"{what} reached run time unexpanded: {cause or 'the duroxide import hook did not rewrite this module'}",
            fix=fix or "make `import duroxide_macros.install` the first line of your program (before this module "
                       "is imported), or call the explicit form: `await fn.call(ctx, args...)`")


def _direct_call_cause(frame: types.FrameType | None, name: str) -> tuple[str, str]:
    """Why an activity or orchestration was called as a plain function: a missing durable(), or no rewrite."""
    from .diagnose import not_expanded_cause, was_rewritten

    if was_rewritten(frame):  # the hook saw the module: the call simply is not wrapped
        return (f"the call of {name!r} is not wrapped in durable(...), so it would run outside the history",
                f"write `await durable({name}(...))`, or `await {name}.call(ctx, ...)`")
    return not_expanded_cause(frame)


class OrchestrationFailedError(DuroxideError):
    """Raised by ``run()`` (and ``wait(..., raise_on_failure=True)``) for an instance that ended Failed.

    Also by ``run()`` for one that did not finish in time. The message names the
    line of the user's code the failure began at (``file:line in function``: the
    orchestration's, or the activity's or sub-orchestration's when that failure
    ended it) and shows the last frames of the user's code, read from the
    recorded traceback; ``location`` holds that line, ``details`` all of it.

    Example::

        try:
            await process_order.run(client, "order-1", order)
        except OrchestrationFailedError as err:
            print(err)   # orchestration 'order-1' failed: ActivityFailed: ...
                         #   at app/orders.py:14 in charge_payment
                         #   last frames of its code (most recent call last; ...):
                         #     app/orders.py:30 in process_order ...
    """

    code = ErrorCode.ORCHESTRATION_FAILED

    def __init__(self, instance_id: str, error: str, details: ErrorDetails | None = None) -> None:
        self.instance_id = instance_id
        self.error = error
        self.details = details
        site = failure_site(details.traceback) if details is not None else None
        #: ``file:line in function`` of the innermost line of user code in the failure, if known.
        self.location = site.innermost.location() if site is not None and site.innermost is not None else None
        where = site.describe() if site is not None else ""
        super().__init__(f"orchestration {instance_id!r} failed: {error}" + (f"\n{where}" if where else ""))


def _in_orchestration() -> bool:
    return current_orchestration() is not None


def _where(fn: Callable[..., Any]) -> str:
    """``function NAME at FILE:LINE``, for errors about a decorated function's declaration."""
    code = getattr(fn, "__code__", None)
    at = f" at {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    return f"function {getattr(fn, '__qualname__', fn)}{at}"


def _type_hints(fn: Callable[..., Any], what: str) -> dict[str, Any]:
    """The resolved annotations of ``fn``; an unresolvable one is a ConfigurationError naming it."""
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:  # noqa: BLE001 - NameError for a missing name, TypeError for a bad one, ...
        raise ConfigurationError(f"{what}: the annotations of {_where(fn)} cannot be resolved "
                                 f"({type(exc).__name__}: {exc})",
                                 fix="define or import every type its annotations name before the function, "
                                     "at module level") from None


def _typed_future(ctx: OrchestrationContext, fut: Awaitable[str], codec: Codec[R] | None) -> Awaitable[R]:
    if codec is None:
        return fut  # type: ignore[return-value]  # untyped: R is str

    async def decode() -> R:
        return codec.decode(await fut)

    # Called from orchestration code, whose running loop is the orchestration's own.
    return asyncio.ensure_future(decode())


def _reject_method(fn: Callable[..., Any], kind: str, name: str) -> None:
    """Decorating a method would register a function the runtime must call without its instance."""
    outer = fn.__qualname__.rpartition(".")[0]
    if outer and not outer.endswith("<locals>"):
        raise ConfigurationError(f"@{kind} {name!r} is defined as a method of {outer}; the runtime calls it "
                                 "without an instance", fix="define it at module level, outside the class")


class Activity(Generic[P, R]):
    """A registered activity; ``call(ctx, ...)`` schedules it from an orchestration.

    Calling it directly runs the function (handy in unit tests) - except inside
    an orchestration, where work must go through ``durable(...)``. ``policy``
    holds the retry, timeout and heartbeat timeout of its calls;
    ``with_options(...)`` changes them for one call.
    """

    def __init__(self, fn: Callable[P, Any], *, name: str | None, typed: bool,
                 policy: ActivityPolicy | None = None, telemetry: ActivityTelemetry | None = None,
                 queue: str | None = None) -> None:
        self.fn = fn
        #: The queue of every call (``RuntimeOptions(queues=...)`` sets its limits); ``None``: ``"default"``.
        self.queue = None if queue is None else check_queue_name(queue, f"queue of activity {name or fn.__name__!r}")
        self._call_any: Callable[..., Any] = fn
        self.name = name or fn.__name__
        self.typed = typed
        #: Retry, timeout and heartbeat timeout of every call (``with_options`` overrides them per call).
        self.policy = policy or ActivityPolicy()
        self._telemetry = telemetry if telemetry is not None and telemetry.active else None
        self.is_async = inspect.iscoroutinefunction(fn)
        _reject_method(fn, "activity", self.name)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        sig = inspect.signature(fn)
        self._params = list(sig.parameters.values())
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in self._params):
            raise ConfigurationError(f"activity {self.name!r}: *args/**kwargs parameters cannot be typed",
                                     fix="declare each parameter with its type")
        self._signature = sig
        self._registered: Callable[[str], Any] | None = None
        if typed:
            hints = _type_hints(fn, f"activity {self.name!r}")
            where = _where(fn)
            self._arg_codecs = [Codec[Any](hints.get(p.name, Any), f"argument {p.name!r} of activity {self.name!r}",
                                           root=p.name,
                                           declared=f"parameter {p.name!r} of activity {self.name!r} ({where})")
                                for p in self._params]
            self._args_codec = (None if len(self._params) == 1 else
                                Codec[Any](tuple[tuple(hints.get(p.name, Any) for p in self._params)],  # type: ignore[misc]
                                           f"arguments of activity {self.name!r}", root="arguments",
                                           item_names=[p.name for p in self._params]))
            self._result_codec: Codec[Any] | None = Codec[Any](
                hints.get("return", Any), f"result of activity {self.name!r}", root="result",
                declared=f"return type of activity {self.name!r} ({where})")
        else:
            if len(self._params) != 1:
                raise ConfigurationError(
                    f"untyped activity {self.name!r} must take exactly one str parameter",
                    fix="use @activity(typed=True) for several or typed parameters")
            self._result_codec = None

    def _direct(self, *args: Any, **kwargs: Any) -> Any:
        if _in_orchestration():
            raise DurableNotExpandedError(f"calling activity {self.name!r} directly inside an orchestration",
                                          *_direct_call_cause(sys._getframe(2), self.name))
        return self._call_any(*args, **kwargs)

    def encode_input(self, *args: Any, **kwargs: Any) -> str:
        """The input string the runtime stores for this call (raises PayloadError if not encodable)."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"activity {self.name!r}: {exc}", fix="pass the declared arguments") from exc
        bound.apply_defaults()
        values = list(bound.arguments.values())
        if not self.typed:
            if not isinstance(values[0], str):
                raise PayloadError(
                    f"untyped activity {self.name!r} takes a str, got {type(values[0]).__name__}",
                    fix="pass a str, or declare it @activity(typed=True)")
            return str(values[0])
        if len(values) == 1:
            return self._arg_codecs[0].encode(values[0])
        return "[" + ",".join(c.encode(v) for c, v in zip(self._arg_codecs, values)) + "]"

    def call(self, ctx: OrchestrationContext, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        """Schedule this activity from orchestration ``ctx`` (with its ``policy``); await the result (typed)."""
        return self._schedule(ctx, self.policy, self.encode_input(*args, **kwargs))

    def with_options(self, *, retry: RetryPolicy | int | None = None, timeout: timedelta | float | None = None,
                     heartbeat_timeout: timedelta | float | None = None) -> ActivityWithOptions[P, R]:
        """This activity with other settings for the calls made through the result.

        What is not given (``None``) stays as the decorator set it. A ``RetryPolicy``
        replaces the activity's; ``retry=N`` changes only its number of attempts
        (or is ``RetryPolicy(max_attempts=N)``). A bad value raises :class:`ConfigurationError`
        here, before anything is scheduled. ``await durable(charge(order), timeout=...)``
        is rewritten into ``await charge.with_options(timeout=...).call(ctx, order)``.

        Example::

            receipt = await charge.with_options(retry=RetryPolicy(max_attempts=5),
                                                timeout=timedelta(seconds=10)).call(ctx, order)
        """
        policy = call_policy(f"activity {self.name!r}", self.policy, retry=retry, timeout=timeout,
                             heartbeat_timeout=heartbeat_timeout)
        return ActivityWithOptions(self, policy)

    def _schedule(self, ctx: OrchestrationContext, policy: ActivityPolicy, input: str) -> Awaitable[R]:
        fut = ctx.schedule_activity(self.name, input, retry=policy.retry, timeout=policy.timeout,
                                    heartbeat_timeout=policy.heartbeat_timeout, queue=self.queue)
        return _typed_future(ctx, fut, self._result_codec)

    async def invoke(self, input: str) -> str:
        """The string-API entry the runtime registers for ``async def`` activities: decode, run, encode."""
        args, kwargs = self._decode_args(input)
        if self._telemetry is None:
            return self._encode_result(await self._call_any(*args, **kwargs))
        with self._telemetry.around():
            return self._encode_result(await self._call_any(*args, **kwargs))

    def invoke_sync(self, input: str) -> str:
        """The same for plain ``def`` activities (the worker runs it in its thread pool)."""
        args, kwargs = self._decode_args(input)
        if self._telemetry is None:
            return self._encode_result(self._call_any(*args, **kwargs))
        with self._telemetry.around():
            return self._encode_result(self._call_any(*args, **kwargs))

    def _decode_args(self, input: str) -> tuple[list[Any], dict[str, Any]]:
        """Decoded arguments, positional ones first, keyword-only ones by name."""
        if not self.typed:
            return [input], {}
        if len(self._params) == 1:
            values: list[Any] = [self._arg_codecs[0].decode(input)]
        else:
            assert self._args_codec is not None
            values = list(self._args_codec.decode(input))
        args = [v for p, v in zip(self._params, values) if p.kind is not p.KEYWORD_ONLY]
        kwargs = {p.name: v for p, v in zip(self._params, values) if p.kind is p.KEYWORD_ONLY}
        return args, kwargs

    def _encode_result(self, result: Any) -> str:
        if self._result_codec is not None:
            return self._result_codec.encode(result)
        if not isinstance(result, str):
            raise ConfigurationError(f"untyped activity {self.name!r} returned {type(result).__name__}",
                                     fix="return a str, or declare it @activity(typed=True)")
        return result

    def registered_function(self) -> Callable[[str], Any]:
        """What goes into the ActivityRegistry: async stays async, plain def stays a thread-pool function.

        The same object every time, so registering it twice is recognised as one registration.
        """
        if self._registered is None:
            self._registered = self.invoke if self.is_async else self.invoke_sync
        return self._registered

    def __repr__(self) -> str:
        return f"<activity {self.name!r}{' typed' if self.typed else ''}>"


class ActivityWithOptions(Generic[P, R]):
    """An activity with its own settings for the calls made through it: ``act.with_options(...)``.

    ``call(ctx, ...)`` takes the activity's arguments and returns its result type,
    like ``Activity.call``; ``policy`` is the settings it calls with.

    Example::

        fast = charge.with_options(timeout=timedelta(seconds=2))
        receipt = await fast.call(ctx, order)
    """

    def __init__(self, activity: Activity[P, R], policy: ActivityPolicy) -> None:
        self.activity = activity
        self.policy = policy

    def call(self, ctx: OrchestrationContext, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        """Schedule the activity from orchestration ``ctx`` with these settings; await the result (typed)."""
        return self.activity._schedule(ctx, self.policy, self.activity.encode_input(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<activity {self.activity.name!r} with {self.policy}>"


class AsyncActivity(Activity[P, R]):
    """An ``async def`` activity; calling it directly returns its coroutine."""

    # Awaitable (not Coroutine[Any, Any, R]) so that durable(...) resolves its overload without Any.
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self._direct(*args, **kwargs)  # type: ignore[no-any-return]


class SyncActivity(Activity[P, R]):
    """A plain ``def`` activity (runs in a worker thread); calling it directly runs it."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._direct(*args, **kwargs)  # type: ignore[no-any-return]


#: The keyword options ``start()``/``run()`` pass to ``Client.start_orchestration``.
_START_OPTIONS = ("if_exists", "idempotency_key", "deadline", "concurrency_key", "priority", "queue", "debounce",
                  "debounce_key")

#: What ``start(..., if_exists=)`` takes: an :class:`IfExists`, or its string (checked by type checkers).
_IfExistsArg = IfExists | Literal["fail", "return_existing", "replace"]


@dataclasses.dataclass(frozen=True)
class DeclaredSchedule:
    """What ``@orchestration(schedule=...)`` declared: the cron, the catch-up policy, the encoded input."""

    cron: str
    catch_up: CatchUp
    input: str


class Orchestration(Generic[I, O]):
    """A registered orchestration with typed client helpers (start, wait, run, ...)."""

    def __init__(self, fn: Callable[[OrchestrationContext, I], Coroutine[Any, Any, O]], *, name: str | None,
                 version: str, queue: str | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.version = version
        #: The queue its starts through ``start()``/``run()`` wait in unless they name one (``None``: none;
        #: ``duroxide_main`` refuses to start when ``RuntimeOptions(queues=...)`` does not configure it).
        self.queue = None if queue is None else check_queue_name(queue, f"queue of orchestration {self.name!r}")
        functools.update_wrapper(self, fn)
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise ConfigurationError(f"orchestration {self.name!r} has no context parameter",
                                     fix="declare it as `async def f(ctx: OrchestrationContext, input: T) -> U`")
        if len(params) > 2 or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise ConfigurationError(
                f"orchestration {self.name!r} takes more than one input parameter; an orchestration gets one input",
                fix="pass one dataclass, TypedDict or pydantic model that holds them all")
        _reject_method(fn, "orchestration", self.name)
        self._has_input = len(params) >= 2
        hints = _type_hints(fn, f"orchestration {self.name!r}")
        in_type = hints.get(params[1].name, Any) if self._has_input else type(None)
        in_name = params[1].name if self._has_input else "input"
        self._in = Codec[Any](in_type, f"input of orchestration {self.name!r}", root=in_name,
                              declared=f"parameter {in_name!r} of orchestration {self.name!r} ({_where(fn)})")
        self._out = Codec[Any](hints.get("return", Any), f"output of orchestration {self.name!r}", root="output",
                               declared=f"return type of orchestration {self.name!r} ({_where(fn)})")
        #: The string-API function registered with the runtime (one object, see Activity.registered_function).
        self.registered_function: Callable[[OrchestrationContext, str], Coroutine[Any, Any, str]] = self.entry
        #: ``@orchestration(schedule=...)``: the schedule ``duroxide_main`` creates for it at start.
        self.schedule: DeclaredSchedule | None = None

    # A no-input orchestration (``async def f(ctx) -> O``) is an ``Orchestration[None, O]``: its
    # ``__call__``/``call``/``start``/``run``/``continue_as_new`` take no input (the overloads
    # whose ``self`` is ``Orchestration[None, O]``); ``None`` is still accepted where the input goes.
    @overload
    def __call__(self: Orchestration[None, O], /) -> Awaitable[O]: ...
    @overload
    def __call__(self, input: I) -> Awaitable[O]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[O]:
        raise DurableNotExpandedError(f"calling orchestration {self.name!r} outside durable(...)",
                                      *_direct_call_cause(sys._getframe(1), self.name))

    async def entry(self, ctx: OrchestrationContext, input: str) -> str:
        """The string-API entry the runtime registers: decode input, run, encode output."""
        if self._has_input:
            result = await self.fn(ctx, self._in.decode(input))
        else:
            result = await self.fn(ctx)  # type: ignore[call-arg]
        return self._out.encode(result)

    def encode_input(self, input: I) -> str:
        """The stored input string for ``input``."""
        if input is _NO_INPUT:
            if self._has_input:
                raise TypeError(f"orchestration {self.name!r} takes an input")
            return "null"
        if not self._has_input:
            if input is not None:
                raise TypeError(f"orchestration {self.name!r} takes no input (got {type(input).__name__})")
            return "null"
        return self._in.encode(input)

    # -- inside orchestrations -----------------------------------------------------

    @overload
    def call(self: Orchestration[None, O], ctx: OrchestrationContext, /, *, instance_id: str | None = None,
             version: str | None = None) -> Awaitable[O]: ...
    @overload
    def call(self, ctx: OrchestrationContext, input: I, *, instance_id: str | None = None,
             version: str | None = None) -> Awaitable[O]: ...

    def call(self, ctx: OrchestrationContext, input: Any = _NO_INPUT, *, instance_id: str | None = None,
             version: str | None = None) -> Awaitable[O]:
        """Run as a sub-orchestration of ``ctx``; await its typed output."""
        fut = ctx.schedule_sub_orchestration(self.name, self.encode_input(input), instance_id=instance_id,
                                             version=version)
        return _typed_future(ctx, fut, self._out)

    def with_options(self, **options: object) -> NoReturn:
        """Always raises: retry, timeout and heartbeat timeout are policies of activity calls.

        ``durable(sub(x), timeout=...)`` of an orchestration the import hook cannot
        see (imported from another package) is rewritten into this call, which says so.
        """
        given = ", ".join(f"{k}=" for k in options) or "options"
        raise ConfigurationError(f"{given} given for orchestration {self.name!r}, but retry, timeout and "
                                 "heartbeat_timeout are for activity calls only",
                                 fix="set the policy on the activities it calls, e.g. @activity(retry=3), and "
                                     "drop it here")

    @overload
    def continue_as_new(self: Orchestration[None, O], ctx: OrchestrationContext, /, *,
                        version: str | None = None) -> NoReturn: ...
    @overload
    def continue_as_new(self, ctx: OrchestrationContext, input: I, *, version: str | None = None) -> NoReturn: ...

    def continue_as_new(self, ctx: OrchestrationContext, input: Any = _NO_INPUT, *,
                        version: str | None = None) -> NoReturn:
        """End this execution and start the next one with typed ``input`` (see ``ctx.continue_as_new``)."""
        ctx.continue_as_new(self.encode_input(input), version=version)

    # -- client helpers (client may be omitted inside duroxide_main) -----------------

    def _bind(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              names: tuple[str, ...], defaults: dict[str, Any] | None = None) -> tuple[Client, dict[str, Any]]:
        """Split ``(client?, *args, **kwargs)`` of a helper into the client and named values."""
        client = kwargs.pop("client", None)
        if client is None and args and isinstance(args[0], Client):
            client, args = args[0], args[1:]
        if "input" in names and not self._has_input:
            # No input to take: `input=None` (or a None in its place) is accepted and dropped.
            names = tuple(n for n in names if n != "input")
            if kwargs.get("input", _NO_INPUT) is None:
                del kwargs["input"]
            if len(args) > 1 and args[1] is None:
                args = args[:1] + args[2:]
            if "input" in kwargs or len(args) > len(names):
                raise TypeError(f"{self.name}.{method}(): orchestration {self.name!r} takes no input")
        if len(args) > len(names):
            raise TypeError(f"{self.name}.{method}() takes at most {len(names)} arguments after the client")
        values = {**(defaults or {}), **dict(zip(names, args))}
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{self.name}.{method}() got an unexpected keyword argument {key!r}")
            values[key] = value
        missing = [n for n in names if n not in values]
        if missing:
            raise TypeError(f"{self.name}.{method}() is missing {', '.join(missing)}")
        return (client if client is not None else ambient_client()), values

    @overload
    async def start(self, client: Client, instance_id: str, input: I, *, version: str | None = None,
                    if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                    deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                    priority: int | None = None, queue: str | None = None,
                    debounce: timedelta | float | None = None, debounce_key: str | None = None) -> str: ...
    @overload
    async def start(self, instance_id: str, input: I, *, version: str | None = None,
                    if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                    deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                    priority: int | None = None, queue: str | None = None,
                    debounce: timedelta | float | None = None, debounce_key: str | None = None) -> str: ...
    @overload
    async def start(self: Orchestration[None, O], client: Client, instance_id: str, *,
                    version: str | None = None, if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                    deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                    priority: int | None = None, queue: str | None = None,
                    debounce: timedelta | float | None = None, debounce_key: str | None = None) -> str: ...
    @overload
    async def start(self: Orchestration[None, O], instance_id: str, *, version: str | None = None,
                    if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                    deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                    priority: int | None = None, queue: str | None = None,
                    debounce: timedelta | float | None = None, debounce_key: str | None = None) -> str: ...

    async def start(self, *args: Any, **kwargs: Any) -> str:
        """Start instance ``instance_id`` with typed ``input``; returns the id of the instance that runs.

        The keyword options are ``Client.start_orchestration``'s: ``if_exists`` and
        ``idempotency_key`` (start policies); ``deadline`` (a ``timedelta`` or an aware
        ``datetime``: an instance still running then is cancelled, with cleanup);
        ``concurrency_key`` and ``priority`` (queue limits and order); ``queue`` (default: the
        ``@orchestration(queue=...)`` one, else none); ``debounce`` and ``debounce_key`` (one
        instance after the quiet period, with the last input: see "Debounced starts" in
        docs/runtime.md).

        Example::

            run_id = await checkout.start("order-7", order, idempotency_key="req-81c2",
                                          deadline=timedelta(hours=1), concurrency_key="customer-42")
        """
        version = kwargs.pop("version", None)
        options = self._start_options(kwargs)
        client, v = self._bind("start", args, kwargs, ("instance_id", "input"))
        return await client.start_orchestration(v["instance_id"], self.name,
                                                self.encode_input(v.get("input", _NO_INPUT)),
                                                version=version or self.version, **options)

    def _start_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The start options ``kwargs`` holds (taken out of it), with this orchestration's default queue."""
        options = {k: kwargs.pop(k) for k in _START_OPTIONS if k in kwargs}
        if self.queue is not None and options.get("queue") is None:
            options["queue"] = self.queue
        return options

    # The status helpers return StatusOf[O] (OrchestrationStatus[O] as the union of its variants),
    # so that mypy too keeps O through `case OrchestrationStatus.Completed(output=x)`.
    @overload
    async def wait(self, client: Client, instance_id: str, timeout: timedelta | float = 30.0, *,
                   raise_on_failure: bool = False) -> StatusOf[O]: ...
    @overload
    async def wait(self, instance_id: str, timeout: timedelta | float = 30.0, *,
                   raise_on_failure: bool = False) -> StatusOf[O]: ...

    async def wait(self, *args: Any, **kwargs: Any) -> StatusOf[O]:
        """Wait up to ``timeout`` for the instance to finish; the status carries the typed output.

        With ``raise_on_failure=True`` a Failed instance raises :class:`OrchestrationFailedError`
        (naming the line of user code it failed at) instead of returning ``Failed``.
        """
        raise_on_failure = kwargs.pop("raise_on_failure", False)
        client, v = self._bind("wait", args, kwargs, ("instance_id", "timeout"), {"timeout": 30.0})
        status = self._typed(await client.wait_for_orchestration(v["instance_id"], v["timeout"]))
        if raise_on_failure and isinstance(status, OrchestrationStatus.Failed):
            raise OrchestrationFailedError(v["instance_id"], status.error, status.details)
        return status

    @overload
    async def status(self, client: Client, instance_id: str) -> StatusOf[O]: ...
    @overload
    async def status(self, instance_id: str) -> StatusOf[O]: ...

    async def status(self, *args: Any, **kwargs: Any) -> StatusOf[O]:
        """Current status, with the typed output once completed."""
        client, v = self._bind("status", args, kwargs, ("instance_id",))
        return self._typed(await client.get_orchestration_status(v["instance_id"]))

    @overload
    async def cancel(self, client: Client, instance_id: str, reason: str = "cancelled", *,
                     grace: timedelta | float = 30.0) -> bool: ...
    @overload
    async def cancel(self, instance_id: str, reason: str = "cancelled", *, grace: timedelta | float = 30.0) -> bool: ...

    async def cancel(self, *args: Any, grace: timedelta | float = 30.0, **kwargs: Any) -> bool:
        """Cancel the instance; its cleanup may run for ``grace`` (see ``Client.cancel_instance``)."""
        client, v = self._bind("cancel", args, kwargs, ("instance_id", "reason"), {"reason": "cancelled"})
        return await client.cancel_instance(v["instance_id"], v["reason"], grace=grace)

    @overload
    async def run(self, client: Client, instance_id: str, input: I, timeout: timedelta | float = 30.0, *,
                  if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                  deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                  priority: int | None = None, queue: str | None = None,
                  debounce: timedelta | float | None = None, debounce_key: str | None = None) -> O: ...
    @overload
    async def run(self, instance_id: str, input: I, timeout: timedelta | float = 30.0, *,
                  if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                  deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                  priority: int | None = None, queue: str | None = None,
                  debounce: timedelta | float | None = None, debounce_key: str | None = None) -> O: ...
    @overload
    async def run(self: Orchestration[None, O], client: Client, instance_id: str,
                  timeout: timedelta | float = 30.0, *, if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                  deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                  priority: int | None = None, queue: str | None = None,
                  debounce: timedelta | float | None = None, debounce_key: str | None = None) -> O: ...
    @overload
    async def run(self: Orchestration[None, O], instance_id: str, timeout: timedelta | float = 30.0, *,
                  if_exists: _IfExistsArg = IfExists.FAIL, idempotency_key: str | None = None,
                  deadline: timedelta | datetime | None = None, concurrency_key: str | None = None,
                  priority: int | None = None, queue: str | None = None,
                  debounce: timedelta | float | None = None, debounce_key: str | None = None) -> O: ...

    async def run(self, *args: Any, **kwargs: Any) -> O:
        """Start and wait; return the typed output or raise :class:`OrchestrationFailedError`.

        Takes :meth:`start`'s options. With ``if_exists``, ``idempotency_key`` or ``debounce``
        it waits for the instance that runs: an existing one, the one the key's first start
        named, or the one whose debounce window this start joined.
        With ``deadline`` (see :meth:`start`) an instance that runs past it raises
        :class:`OrchestrationFailedError` (``OrchestrationCancelled: deadline ... passed``).
        """
        options = self._start_options(kwargs)
        client, v = self._bind("run", args, kwargs, ("instance_id", "input", "timeout"), {"timeout": 30.0})
        instance_id = await client.start_orchestration(v["instance_id"], self.name,
                                                       self.encode_input(v.get("input", _NO_INPUT)),
                                                       version=self.version, **options)
        return self._output_or_raise(instance_id, await self.wait(client, instance_id, v["timeout"]))

    @overload
    async def poll_until_complete(self, client: Client, instance_id: str, timeout: timedelta | float,
                                  poll_interval: timedelta | float = 1.0) -> StatusOf[O]: ...
    @overload
    async def poll_until_complete(self, instance_id: str, timeout: timedelta | float,
                                  poll_interval: timedelta | float = 1.0) -> StatusOf[O]: ...

    async def poll_until_complete(self, *args: Any, **kwargs: Any) -> StatusOf[O]:
        """Re-read the status every ``poll_interval`` until it is final or ``timeout`` passes."""
        client, v = self._bind("poll_until_complete", args, kwargs, ("instance_id", "timeout", "poll_interval"),
                               {"poll_interval": 1.0})
        instance_id = v["instance_id"]
        deadline = time.monotonic() + to_seconds(v["timeout"], "timeout")
        interval = to_seconds(v["poll_interval"], "poll_interval")
        while True:
            status = await self.status(client, instance_id)
            if status.is_terminal or time.monotonic() >= deadline:
                return status
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    @overload
    async def exists(self, client: Client, instance_id: str) -> bool: ...
    @overload
    async def exists(self, instance_id: str) -> bool: ...

    async def exists(self, *args: Any, **kwargs: Any) -> bool:
        """Whether an instance with this id exists (any orchestration)."""
        client, v = self._bind("exists", args, kwargs, ("instance_id",))
        return await client.store.get_instance(v["instance_id"]) is not None

    @overload
    async def metadata(self, client: Client, instance_id: str) -> InstanceInfo: ...
    @overload
    async def metadata(self, instance_id: str) -> InstanceInfo: ...

    async def metadata(self, *args: Any, **kwargs: Any) -> InstanceInfo:
        """Instance metadata (raises ``InstanceNotFoundError`` if unknown)."""
        client, v = self._bind("metadata", args, kwargs, ("instance_id",))
        return await client.get_instance_info(v["instance_id"])

    @overload
    async def history(self, client: Client, instance_id: str) -> list[HistoryEvent]: ...
    @overload
    async def history(self, instance_id: str) -> list[HistoryEvent]: ...

    async def history(self, *args: Any, **kwargs: Any) -> list[HistoryEvent]:
        """Events of the current execution."""
        client, v = self._bind("history", args, kwargs, ("instance_id",))
        return await client.read_history(v["instance_id"])

    # With a TypedEvent the data must be of its type: checkers report a wrong one at the call.
    @overload
    async def raise_event(self, client: Client, instance_id: str, event: TypedEvent[E], data: E, /) -> bool: ...
    @overload
    async def raise_event(self, instance_id: str, event: TypedEvent[E], data: E, /) -> bool: ...
    @overload
    async def raise_event(self, client: Client, instance_id: str, name: str, data: Any = None) -> bool: ...
    @overload
    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> bool: ...

    async def raise_event(self, *args: Any, **kwargs: Any) -> bool:
        """Send external event ``name`` with ``data`` (a str is sent as is, anything else as JSON).

        Given a :class:`TypedEvent` instead of a name, ``data`` must be of its type
        (checked statically, and strictly at run time before anything is sent).
        """
        client, v = self._bind("raise_event", args, kwargs, ("instance_id", "name", "data"), {"data": None})
        data, name = v["data"], v["name"]
        if isinstance(name, TypedEvent):
            typed: TypedEvent[Any] = name
            name = typed.name
            if typed.data_type is not str:
                data = Codec[Any](typed.data_type, f"event {name!r}", root="data").encode(data)
        text = data if isinstance(data, str) else encode_value(data, f"event {name!r}")
        return await client.raise_event(v["instance_id"], name, text)

    # -- state, updates and streams of an instance (see ctx.set_state, ctx.wait_for_update, ctx.emit) --

    @overload
    async def get_state(self, client: Client, instance_id: str, key: str, value_type: type[E], /) -> E | None: ...
    @overload
    async def get_state(self, instance_id: str, key: str, value_type: type[E], /) -> E | None: ...

    async def get_state(self, *args: Any, **kwargs: Any) -> Any:
        """The instance's state ``key`` decoded into ``value_type`` (``None`` if never set)."""
        client, v = self._bind("get_state", args, kwargs, ("instance_id", "key", "value_type"))
        return await client.get_state(v["instance_id"], v["key"], v["value_type"])

    @overload
    async def update(self, client: Client, instance_id: str, name: str, data: Any, result_type: type[E], /, *,
                     timeout: timedelta | float = 30.0, request_id: str | None = None) -> E: ...
    @overload
    async def update(self, instance_id: str, name: str, data: Any, result_type: type[E], /, *,
                     timeout: timedelta | float = 30.0, request_id: str | None = None) -> E: ...

    async def update(self, *args: Any, **kwargs: Any) -> Any:
        """Send update ``name`` with ``data`` (a str as is, anything else as JSON); the reply as ``result_type``.

        See ``Client.update`` for the errors and the exactly-once ``request_id``.
        """
        timeout, request_id = kwargs.pop("timeout", 30.0), kwargs.pop("request_id", None)
        client, v = self._bind("update", args, kwargs, ("instance_id", "name", "data", "result_type"))
        data, name = v["data"], v["name"]
        text = data if isinstance(data, str) else encode_value(data, f"update {name!r}")
        return await client.update(v["instance_id"], name, text, timeout, request_id=request_id,
                                   result_type=v["result_type"])

    @overload
    def stream(self, client: Client, instance_id: str, item_type: type[E], /,
               from_offset: int = 0) -> AsyncIterator[StreamItem[E]]: ...
    @overload
    def stream(self, instance_id: str, item_type: type[E], /, from_offset: int = 0) -> AsyncIterator[StreamItem[E]]: ...

    def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[StreamItem[Any]]:
        """The instance's stream items decoded into ``item_type`` (see ``Client.stream``)."""
        client, v = self._bind("stream", args, kwargs, ("instance_id", "item_type", "from_offset"), {"from_offset": 0})
        return client.stream(v["instance_id"], v["from_offset"], item_type=v["item_type"])

    # -- helpers ---------------------------------------------------------------------

    def _typed(self, status: OrchestrationStatus[str]) -> StatusOf[O]:
        if isinstance(status, OrchestrationStatus.Completed):
            return OrchestrationStatus.Completed(output=self._out.decode(status.output),
                                                 custom_status=status.custom_status)
        return status  # type: ignore[return-value]  # the other variants carry no output

    def _output_or_raise(self, instance_id: str, status: StatusOf[O]) -> O:
        if isinstance(status, OrchestrationStatus.Completed):
            return status.output
        if isinstance(status, OrchestrationStatus.Failed):
            raise OrchestrationFailedError(instance_id, status.error, status.details)
        if isinstance(status, OrchestrationStatus.NotFound):
            raise InstanceNotFoundError(instance_id, "run")
        raise OrchestrationFailedError(instance_id, "did not finish within the timeout")

    def __repr__(self) -> str:
        return f"<orchestration {self.name!r} v{self.version}>"


# -- the decorators -------------------------------------------------------------------


@overload
def activity(fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncActivity[P, R]: ...  # type: ignore[overload-overlap]
@overload
def activity(fn: Callable[P, R], /) -> SyncActivity[P, R]: ...
@overload
def activity(*, typed: bool = False, name: str | None = None, retry: RetryPolicy | int | None = None,
             backoff_ms: float | None = None, timeout: timedelta | float | None = None,
             timeout_ms: float | None = None, heartbeat_timeout: timedelta | float | None = None,
             instrument: bool = False, metrics: bool = False, queue: str | None = None) -> _ActivityDecorator: ...


def activity(fn: Callable[..., Any] | None = None, /, *, typed: bool = False, name: str | None = None,
             retry: RetryPolicy | int | None = None, backoff_ms: float | None = None,
             timeout: timedelta | float | None = None, timeout_ms: float | None = None,
             heartbeat_timeout: timedelta | float | None = None, instrument: bool = False,
             metrics: bool = False, queue: str | None = None) -> Any:
    """Declare an activity; registered under ``name`` (default: the function name) when decorated.

    ``typed=True`` encodes arguments and result as JSON from the annotations;
    without it the activity takes one ``str`` and returns a ``str``.

    Every call from an orchestration gets the policy set here (see
    :mod:`duroxide_macros.policy`): ``retry`` (a ``RetryPolicy``, or ``N`` attempts),
    ``timeout`` and ``heartbeat_timeout`` (a ``timedelta`` or seconds), or the
    design's ``retry=N, backoff_ms=..., timeout_ms=...``. Giving one setting in
    both spellings raises :class:`ConfigurationError`, as does any bad value, when
    the decorator runs.

    ``instrument=True`` gives each run an OpenTelemetry span ``activity.<name>``
    with the attributes ``activity_name``, ``instance_id``, ``execution_id``,
    ``event_id``; ``metrics=True`` counts each run in Prometheus (see
    :mod:`duroxide_macros.telemetry`).

    ``queue`` sends every call to that queue, whose limits ``RuntimeOptions(queues=...)``
    sets (see :mod:`duroxide_runtime.queues`); ``duroxide_main`` refuses to start, with
    :class:`UnknownQueueError`, when its options do not configure it.

    Example::

        @activity(typed=True, retry=RetryPolicy(max_attempts=3, backoff=timedelta(seconds=1)),
                  timeout=timedelta(seconds=5), queue="payments")
        async def charge(order: Order) -> str: ...
    """
    def wrap(f: Callable[..., Any]) -> Activity[Any, Any]:
        act_name = name or str(getattr(f, "__name__", "?"))
        policy = policy_from_decorator(f"activity {act_name!r}", retry=retry, backoff_ms=backoff_ms,
                                       timeout=timeout, timeout_ms=timeout_ms, heartbeat_timeout=heartbeat_timeout)
        telemetry = ActivityTelemetry(act_name, instrument=instrument, metrics=metrics)
        cls = AsyncActivity if inspect.iscoroutinefunction(f) else SyncActivity
        act: Activity[Any, Any] = cls(f, name=name, typed=typed, policy=policy, telemetry=telemetry, queue=queue)
        register_activity(act)
        return act

    return wrap(fn) if fn is not None else _ActivityDecorator(wrap)


class _ActivityDecorator:
    """``@activity(...)`` with options; typed so checkers see the decorated signature."""

    def __init__(self, wrap: Callable[[Callable[..., Any]], Activity[Any, Any]]) -> None:
        self._wrap = wrap

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncActivity[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, R], /) -> SyncActivity[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Any:
        return self._wrap(fn)


@overload
def orchestration(fn: Callable[[OrchestrationContext, I], Coroutine[Any, Any, O]], /) -> Orchestration[I, O]: ...
@overload
def orchestration(fn: Callable[[OrchestrationContext], Coroutine[Any, Any, O]], /) -> Orchestration[None, O]: ...
@overload
def orchestration(*, name: str | None = None, version: str = DEFAULT_VERSION, schedule: str | None = None,
                  catch_up: CatchUp | Literal["skip", "latest", "all"] = CatchUp.SKIP,
                  schedule_input: Any = None, queue: str | None = None) -> _OrchestrationDecorator: ...


def orchestration(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
                  version: str = DEFAULT_VERSION, schedule: str | None = None,
                  catch_up: CatchUp | Literal["skip", "latest", "all"] = CatchUp.SKIP,
                  schedule_input: Any = None, queue: str | None = None) -> Any:
    """Declare an orchestration (``async def f(ctx, input) -> output``), registered when decorated.

    ``schedule`` (a cron expression, UTC; 6 fields: seconds first) starts it at every tick:
    ``duroxide_main`` creates (or updates) the schedule named after the orchestration at
    start, with ``catch_up`` and ``schedule_input`` (encoded as the input type). A
    malformed cron raises :class:`InvalidScheduleError` here, at decoration.

    ``queue`` is the queue its instances wait in for a slot when started through
    ``start()``/``run()`` (an explicit ``queue=`` there overrides it; ``queue="default"``
    starts at once). A malformed name raises :class:`InvalidInputError` here;
    ``duroxide_main`` refuses to start, with :class:`UnknownQueueError`, when its
    ``RuntimeOptions(queues=...)`` do not configure it.

    Example::

        @orchestration(schedule="*/5 * * * *", catch_up="latest")
        async def sweep(ctx: OrchestrationContext) -> int: ...

        @orchestration(queue="emails")
        async def send_digest(ctx: OrchestrationContext, user: str) -> None: ...
    """
    planned = None if schedule is None else (check_cron(schedule, "schedule"), check_catch_up(catch_up))

    def wrap(f: Callable[..., Any]) -> Orchestration[Any, Any]:
        if not inspect.iscoroutinefunction(f):
            raise ConfigurationError(f"orchestration {getattr(f, '__qualname__', f)!r} is not `async def`",
                                     fix="declare it as `async def f(ctx: OrchestrationContext, input) -> output`")
        orch: Orchestration[Any, Any] = Orchestration(f, name=name, version=version, queue=queue)
        if planned is not None:
            orch.schedule = DeclaredSchedule(planned[0].text, planned[1], orch.encode_input(schedule_input))
        register_orchestration(orch)
        return orch

    return wrap(fn) if fn is not None else _OrchestrationDecorator(wrap)


class _OrchestrationDecorator:
    """``@orchestration(...)`` with options."""

    def __init__(self, wrap: Callable[[Callable[..., Any]], Orchestration[Any, Any]]) -> None:
        self._wrap = wrap

    @overload
    def __call__(self, fn: Callable[[OrchestrationContext, I], Coroutine[Any, Any, O]], /) -> Orchestration[I, O]: ...
    @overload
    def __call__(self, fn: Callable[[OrchestrationContext], Coroutine[Any, Any, O]], /) -> Orchestration[None, O]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Any:
        return self._wrap(fn)
