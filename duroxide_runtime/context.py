"""``OrchestrationContext``: the API orchestration code uses to do durable work.

Every method that schedules work returns a :class:`DurableFuture` (an
``asyncio.Future`` bound to the orchestration's deterministic loop), so
durable work composes with ``await``, ``asyncio.gather``, ``asyncio.wait``
and the context's own ``select``/``join``.

Example::

    async def hello(ctx: OrchestrationContext, name: str) -> str:
        ctx.trace("INFO", f"greeting {name}")
        greeting = await ctx.schedule_activity("Greet", name)
        idx, done = await ctx.select2(ctx.schedule_wait("cancel"), ctx.schedule_timer(5))
        return greeting if idx == 1 else "cancelled"
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn, TypeVar, cast, overload

from . import tracefmt
from .engine.commands import (
    CommandSink,
    CreateTimer,
    DurableFuture,
    ScheduleActivity,
    ScheduleSubOrchestration,
    StartDetached,
    SystemCall,
    SystemOp,
    WaitForEvent,
)
from .engine.commands import Emit, SetState, UpdateArrival, WaitForUpdate
from .callsite import caller_source
from .deadlines import epoch_ms
from .errors import ActivityTimeoutError, ConfigurationError, DurableTaskFailed
from .limits import (
    MAX_ID_CHARS, MAX_NAME_CHARS, MAX_VERSION_CHARS, check_identifier, check_seconds, check_text,
)
from .options import RetryPolicy
from .queues import check_queue_name, known_queue
from .typed import EventOf, TypedEvent, decode_payload, decoder, encode_payload
from .updates import UpdateRequest

__all__ = ["OrchestrationContext", "DurableFuture", "ContinueAsNewSignal", "ExecutionBackend"]

_T = TypeVar("_T")
_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")
_D = TypeVar("_D")

trace_logger = logging.getLogger("duroxide.orchestration")


#: The engine's interface as the context sees it (the name of an earlier draft of CommandSink).
ExecutionBackend = CommandSink


class ContinueAsNewSignal(BaseException):
    """Raised by ``ctx.continue_as_new`` to end the current execution.

    A ``BaseException`` so that ``except Exception`` in user code does not swallow it.
    """


class OrchestrationContext:
    """Deterministic, replay-safe API for one orchestration execution.

    Obtained as the first argument of an orchestration function; never built by users.
    Each durable call becomes one typed command (:mod:`duroxide_runtime.engine.commands`)
    issued to the engine's command sink; the context never sees the execution behind it.
    """

    def __init__(self, commands: CommandSink) -> None:
        self._x = commands

    # -- identity ----------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        """The instance this execution belongs to."""
        return self._x.instance_id

    @property
    def execution_id(self) -> int:
        """1 for the first execution, +1 at each ``continue_as_new``."""
        return self._x.execution_id

    @property
    def orchestration_name(self) -> str:
        """Registered name of the running orchestration."""
        return self._x.name

    @property
    def orchestration_version(self) -> str:
        """Version of the running orchestration (fixed for the execution)."""
        return self._x.version

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs history recorded in an earlier turn."""
        return self._x.replaying

    # -- durable work ------------------------------------------------------------

    def schedule_activity(self, name: str, input: str = "", *, retry: RetryPolicy | None = None,
                          timeout: timedelta | float | None = None,
                          heartbeat_timeout: timedelta | float | None = None,
                          queue: str | None = None) -> asyncio.Future[str]:
        """Run activity ``name`` with ``input``; the future yields its result string.

        With ``retry``, failed attempts are retried after durable back-off timers
        (``activity_context().attempt`` counts them), except failures the policy
        calls non-retryable; with ``timeout``, an attempt that has not finished in
        time fails with :class:`ActivityTimeoutError` (and its activity is
        cancelled), and is retried like any failure. With ``heartbeat_timeout``,
        an attempt that goes longer without ``activity_context().heartbeat()`` is
        considered lost (say, its process died): it fails with
        ``ActivityHeartbeatTimeout`` and is retried, and the next attempt reads
        the last recorded details. ``queue`` sends the call to a queue configured in
        ``RuntimeOptions(queues=...)``, whose limits it then counts against
        (:mod:`duroxide_runtime.queues`); ``None``: the ``"default"`` queue. A queue that
        is not configured raises :class:`UnknownQueueError` here, before anything is recorded.

        Example::

            receipt = await ctx.schedule_activity("Charge", order_json, retry=RetryPolicy(max_attempts=5),
                                                  timeout=timedelta(seconds=10), heartbeat_timeout=30,
                                                  queue="payments")
        """
        check_identifier(name, "activity name", MAX_NAME_CHARS)
        check_text(input, "activity input")
        if queue is not None:
            known_queue(check_queue_name(queue), self._x.queues)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry= of activity {name!r} must be a RetryPolicy, got {type(retry).__name__}",
                                     fix="pass e.g. retry=RetryPolicy(max_attempts=3, backoff=timedelta(seconds=1))")
        beat_ms = None
        if heartbeat_timeout is not None:
            beat_ms = round(check_seconds(heartbeat_timeout, "activity heartbeat_timeout") * 1000)
            if beat_ms < 1:
                raise ConfigurationError(f"heartbeat_timeout of activity {name!r} must be at least 1 ms",
                                         fix="pass a positive duration, e.g. heartbeat_timeout=timedelta(seconds=30)")
        if retry is None and timeout is None:
            return self._x.issue(ScheduleActivity(name=name, input=input, heartbeat_timeout_ms=beat_ms, queue=queue))
        limit = None if timeout is None else check_seconds(timeout, "activity timeout")
        # The attempts run in a task of their own, where the caller is no longer on the
        # stack: its line is taken now, for every attempt and timer of the call.
        return self._x.loop.create_task(
            self._activity_with_policy(name, input, retry or RetryPolicy(1), limit, beat_ms, queue, caller_source()))

    async def _activity_with_policy(self, name: str, input: str, retry: RetryPolicy, limit: float | None,
                                    beat_ms: int | None, queue: str | None, source: str | None) -> str:
        # Each attempt is its own ActivityScheduled, numbered, naming the call's first attempt
        # (its heartbeat details live under that event). Whether to retry reads only the
        # recorded failure, so every replay decides alike.
        attempt, first = 1, None
        while True:
            try:
                call = self._x.issue(ScheduleActivity(name=name, input=input, attempt=attempt, first_event_id=first,
                                                      heartbeat_timeout_ms=beat_ms, queue=queue, source=source))
                if first is None:
                    first = call.event_id
                if limit is None:
                    return str(await call)
                idx, done = await self.select2(call, self._timer_of_call(limit, source))
                if idx == 1:
                    raise ActivityTimeoutError(name, limit)
                return str(done.result())
            except DurableTaskFailed as err:
                if attempt >= retry.max_attempts or not retry.is_retryable(err.details):
                    raise
                await self._timer_of_call(retry.backoff_after(attempt), source)
                attempt += 1

    def _timer_of_call(self, seconds: float, source: str | None) -> DurableFuture[None]:
        """A timer of a retried or timed activity call (its timeout, a back-off), recorded at the call's line."""
        seconds = check_seconds(seconds, "timer delay")
        return self._x.issue(CreateTimer(fire_at_ms=self._x.now_ms + round(seconds * 1000), source=source))

    def schedule_timer(self, delay: timedelta | float) -> DurableFuture[None]:
        """A durable timer that fires after ``delay`` (a timedelta or seconds); survives restarts.

        ``delay`` is from 0 to 100 years; NaN, negative, infinite or larger ones raise :class:`ConfigurationError`.
        """
        seconds = check_seconds(delay, "timer delay")
        return self._x.issue(CreateTimer(fire_at_ms=self._x.now_ms + round(seconds * 1000)))

    def sleep_until(self, when: datetime) -> DurableFuture[None]:
        """A durable timer that fires at ``when`` (an aware ``datetime``, any time zone); survives restarts.

        The due time is ``when`` itself, recorded in ``TimerCreated.fire_at_ms``: replay
        never recomputes it from the clock. A moment already past fires at once (like
        ``schedule_timer(0)``). A naive ``datetime`` (no ``tzinfo``), another type, or a
        moment over 100 years ahead raises :class:`ConfigurationError` before anything
        is recorded. Compose it like any timer (``select2``, ``asyncio.wait_for``...).

        Example::

            await ctx.sleep_until(datetime(2030, 1, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris")))
            idx, _ = await ctx.select2(ctx.schedule_wait("approve"), ctx.sleep_until(order.expires_at))
        """
        at_ms = epoch_ms(when, "sleep_until time")
        now_ms = self._x.now_ms
        if at_ms > now_ms:
            check_seconds((at_ms - now_ms) / 1000, "sleep_until delay (from now to the time given)")
        return self._x.issue(CreateTimer(fire_at_ms=max(now_ms, at_ms)))

    def schedule_wait(self, name: str) -> DurableFuture[str]:
        """Wait for external event ``name`` (raised with ``client.raise_event``).

        Events raised before the wait are kept and delivered FIFO, one per wait.
        """
        check_identifier(name, "event name", MAX_NAME_CHARS)
        return self._x.issue(WaitForEvent(name=name))

    @overload
    def wait_for_event(self, name: str, /) -> DurableFuture[str]: ...
    @overload
    def wait_for_event(self, name: str, data_type: type[_T], /) -> DurableFuture[_T]: ...
    @overload
    def wait_for_event(self, event: EventOf[_T], /) -> DurableFuture[_T]: ...

    def wait_for_event(self, name: str | EventOf[Any], data_type: Any = None, /) -> DurableFuture[Any]:
        """Wait for external event ``name``; with ``data_type`` (or a :class:`TypedEvent`) its data decoded.

        Without a type the data is the ``str`` it was raised with (like :meth:`schedule_wait`).
        With one, a ``str`` type takes the text as is and any other type decodes it
        as JSON; data that does not decode raises :class:`PayloadDecodeError` at this
        ``await`` (the event is consumed; catch it to go on). A type that cannot be a
        JSON payload raises :class:`ConfigurationError` here, before anything is recorded.

        Example::

            approval = await ctx.wait_for_event("approval", Approval)
        """
        if isinstance(name, TypedEvent):
            data_type = name.data_type
            name = name.name
        name = check_identifier(name, "event name", MAX_NAME_CHARS)
        decode = None if data_type is None else decoder(
            data_type, self._x.instance_id, f"event {name!r}",
            fix=f"raise {name!r} with data of the type the orchestration waits for (Orchestration.raise_event "
                "with a TypedEvent checks it), or wait for the type the event carries")
        return self._x.issue(WaitForEvent(name=name, decode=decode))

    # -- state, stream and updates: what clients see of a running instance --------

    def set_state(self, key: str, value: object) -> None:
        """Set the instance's state ``key`` to ``value`` (a ``str`` as is, anything else as JSON).

        Recorded in history (one ``StateSet`` event per call) and replayed; clients read
        it while the instance runs and after it ends (``client.get_state``), and it
        carries over at ``continue_as_new``. A value that cannot be encoded (or is over
        the payload limit) raises :class:`PayloadError` here, before anything is recorded.

        Example::

            ctx.set_state("progress", Progress(done=3, total=10))
        """
        check_identifier(key, "state key", MAX_NAME_CHARS)
        self._x.issue(SetState(key=key, value=encode_payload(value, f"state {key!r}")))

    @overload
    def get_state(self, key: str, /) -> str | None: ...
    @overload
    def get_state(self, key: str, value_type: type[_T], /) -> _T | None: ...

    def get_state(self, key: str, value_type: Any = None, /) -> Any:
        """The state ``key`` as this code last set it (or as it was carried over), ``None`` if never set.

        With ``value_type`` it is decoded into it (see :meth:`wait_for_event`);
        a value that does not decode raises :class:`PayloadDecodeError`.

        Example::

            progress = ctx.get_state("progress", Progress)
        """
        check_identifier(key, "state key", MAX_NAME_CHARS)
        text = self._x.get_state(key)
        if text is None or value_type is None:
            return text
        return decode_payload(text, value_type, self._x.instance_id, f"state {key!r}",
                              fix="read the state with the type it was set with")

    def emit(self, value: object) -> None:
        """Append ``value`` (a ``str`` as is, anything else as JSON) to the instance's durable stream.

        Each item is a ``StreamEmitted`` event with the next offset (offsets count
        across ``continue_as_new``); ``client.stream`` yields the items as their turn
        commits. A value that cannot be encoded raises :class:`PayloadError` here.

        Example::

            ctx.emit(Progress(done=i, total=len(files)))
        """
        self._x.issue(Emit(value=encode_payload(value, "stream item")))

    @overload
    def wait_for_update(self, name: str, /) -> DurableFuture[UpdateRequest[str]]: ...
    @overload
    def wait_for_update(self, name: str, data_type: type[_T], /) -> DurableFuture[UpdateRequest[_T]]: ...

    def wait_for_update(self, name: str, data_type: Any = None, /) -> DurableFuture[UpdateRequest[Any]]:
        """Wait for the next update request ``name`` (sent with ``client.update``); answer it with ``reply``.

        Requests that arrive before the wait are kept, FIFO per name, one per wait.
        With ``data_type`` the request's data is decoded into it; a request whose data
        does not decode is rejected for the client (it gets :class:`UpdateRejectedError`
        saying why) and this wait takes the next one.

        Example::

            req = await ctx.wait_for_update("add_item", Item)
            req.reply(cart + [req.data])
        """
        check_identifier(name, "update name", MAX_NAME_CHARS)
        decode_data = None if data_type is None else decoder(
            data_type, self._x.instance_id, f"update {name!r}",
            fix="send the update with data of the type the orchestration waits for")
        answer = self._x.issue

        def request(arrival: UpdateArrival) -> UpdateRequest[Any]:
            data = arrival.data if decode_data is None else decode_data(arrival.data)
            return UpdateRequest(name, arrival.request_id, data, answer)

        return self._x.issue(WaitForUpdate(name=name, decode=request))

    def schedule_sub_orchestration(self, name: str, input: str = "", *, instance_id: str | None = None,
                                   version: str | None = None) -> DurableFuture[str]:
        """Run orchestration ``name`` as a child and wait for its output.

        ``instance_id`` defaults to ``"<parent id>::sub::<event id>"``; ``version``
        defaults to the version policy's choice. A failed child raises
        :class:`SubOrchestrationFailed` here.
        """
        _check_start(name, input, instance_id, version, "sub-orchestration")
        return self._x.issue(ScheduleSubOrchestration(name=name, input=input, instance_id=instance_id,
                                                      version=version))

    def start_orchestration(self, name: str, instance_id: str, input: str = "", *,
                            version: str | None = None) -> None:
        """Start a detached orchestration (fire and forget; its result is not awaited)."""
        _check_start(name, input, instance_id, version, "detached orchestration")
        self._x.issue(StartDetached(name=name, input=input, instance_id=instance_id, version=version))

    def new_guid(self) -> DurableFuture[str]:
        """A new random GUID string, recorded once and replayed verbatim."""
        return self._x.issue(SystemCall(op=SystemOp.GUID))

    def utc_now(self) -> DurableFuture[datetime]:
        """The current UTC time (aware datetime), recorded once and replayed verbatim."""
        return cast(DurableFuture[datetime], self._x.issue(SystemCall(op=SystemOp.UTC_NOW)))

    # -- composition -------------------------------------------------------------

    async def select2(self, first: Awaitable[_A], second: Awaitable[_B],
                      ) -> tuple[Literal[0], asyncio.Future[_A]] | tuple[Literal[1], asyncio.Future[_B]]:
        """Wait for the first of two durable futures; return ``(index, future)``.

        The winner is the one whose completion is earliest in history; the loser
        is cancelled (its activity or child is cancelled too). ``future.result()``
        returns the value or raises its error. Type checkers narrow the future by
        the index: ``match await ctx.select2(a, b): case (0, done): ...`` (or
        ``r[0] == 0``) gives ``done`` the type of ``a``'s result.
        """
        return await self.select(first, second)  # type: ignore[return-value]  # index is 0 or 1

    # Typed for checkers: the winner's future carries the union of the futures' result types.
    @overload
    async def select(self, a: Awaitable[_A], /) -> tuple[int, asyncio.Future[_A]]: ...
    @overload
    async def select(self, a: Awaitable[_A], b: Awaitable[_B], /) -> tuple[int, asyncio.Future[_A | _B]]: ...
    @overload
    async def select(self, a: Awaitable[_A], b: Awaitable[_B], c: Awaitable[_C], /,
                     ) -> tuple[int, asyncio.Future[_A | _B | _C]]: ...
    @overload
    async def select(self, a: Awaitable[_A], b: Awaitable[_B], c: Awaitable[_C], d: Awaitable[_D], /,
                     ) -> tuple[int, asyncio.Future[_A | _B | _C | _D]]: ...
    @overload
    async def select(self, *awaitables: Awaitable[_T]) -> tuple[int, asyncio.Future[_T]]: ...

    async def select(self, *awaitables: Awaitable[Any]) -> tuple[int, asyncio.Future[Any]]:
        """Like :meth:`select2` for any number of futures."""
        if not awaitables:
            raise ConfigurationError("select() needs at least one future", fix="pass one or more futures")
        futures = [self._as_future(a) for a in awaitables]
        if not any(f.done() for f in futures):
            waiter = self._x.loop.create_future()

            def _wake(_: asyncio.Future[Any]) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            for f in futures:
                f.add_done_callback(_wake)
            try:
                await waiter
            finally:
                for f in futures:
                    f.remove_done_callback(_wake)
        winner = min((f for f in futures if f.done()), key=self._x.completion_order)
        for f in futures:
            if f is not winner:
                self._x.release_loser(f)
        return futures.index(winner), winner

    async def join(self, awaitables: Iterable[Awaitable[_T]]) -> list[_T]:
        """Wait for all; results in the given order; raises the first failure."""
        return list(await asyncio.gather(*(self._as_future(a) for a in awaitables)))

    def _as_future(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        if isinstance(aw, asyncio.Future):
            return aw
        return asyncio.ensure_future(aw, loop=self._x.loop)

    # -- lifecycle ---------------------------------------------------------------

    def continue_as_new(self, input: str, *, version: str | None = None) -> NoReturn:
        """End this execution and start the next one with ``input`` (history starts afresh).

        ``version`` picks the next execution's version (default: the version policy's choice).
        Custom status and unconsumed events carry over; pending work does not.
        """
        check_text(input, "continue_as_new input")
        if version is not None:
            check_identifier(version, "continue_as_new version", MAX_VERSION_CHARS)
        self._x.continue_as_new(input, version)
        raise ContinueAsNewSignal()

    def set_custom_status(self, status: str | None) -> None:
        """Publish a short progress string, shown by ``client.get_instance_info``."""
        if status is not None:
            check_text(status, "custom status")
        self._x.set_custom_status(status)

    def trace(self, level: str, message: str, /, *args: Any, **fields: Any) -> None:
        """Log through ``logging`` once (never again on replay), with instance fields attached.

        ``args`` fill the placeholders of ``message`` (``str.format``, plus ``{:?}``
        for repr and ``{:.2}`` for two decimals); keyword ``fields`` become
        attributes of the log record (a name ``logging`` uses, such as ``name``,
        becomes ``field_name``; all are also in ``record.trace_fields``). A
        format that does not apply is logged as written with its arguments and
        a warning: a trace never fails the orchestration. See :mod:`duroxide_runtime.tracefmt`.

        Example::

            ctx.trace("INFO", "charged ${:.2} for {}", amount, order_id, order_id=order_id)
        """
        if self._x.replaying:
            return
        tracefmt.emit(trace_logger, tracefmt.level_number(level), message, args, fields, self._x.log_fields())

    def trace_info(self, message: str, /, *args: Any, **fields: Any) -> None:
        """``trace("INFO", ...)``."""
        self.trace("INFO", message, *args, **fields)

    def trace_warn(self, message: str, /, *args: Any, **fields: Any) -> None:
        """``trace("WARN", ...)``."""
        self.trace("WARN", message, *args, **fields)

    def trace_error(self, message: str, /, *args: Any, **fields: Any) -> None:
        """``trace("ERROR", ...)``."""
        self.trace("ERROR", message, *args, **fields)

    def trace_debug(self, message: str, /, *args: Any, **fields: Any) -> None:
        """``trace("DEBUG", ...)``."""
        self.trace("DEBUG", message, *args, **fields)


def _check_start(name: object, input: object, instance_id: object, version: object, what: str) -> None:
    """The limits of :mod:`duroxide_runtime.limits` for a child or detached start."""
    check_identifier(name, f"{what} name", MAX_NAME_CHARS)
    check_text(input, f"{what} input")
    if instance_id is not None:
        check_identifier(instance_id, f"{what} instance_id", MAX_ID_CHARS)
    if version is not None:
        check_identifier(version, f"{what} version", MAX_VERSION_CHARS)
