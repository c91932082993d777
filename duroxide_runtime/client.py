"""``Client``: start, observe and steer instances in any store.

A client needs only the store, so it works in processes that run no
runtime. Waiting is cheap: in the process that runs the instance a
completion wakes waiters at once; otherwise the wait re-reads the store at a
short, bounded interval.

Example::

    client = Client(store)
    await client.start_orchestration("inst-1", "Hello", "World")
    status = await client.wait_for_orchestration("inst-1", timedelta(seconds=10))
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from .clock import clock_part
from .engine.output import LIVE_STATUSES, TERMINAL_STATUSES
from .errors import (
    InstanceNotFoundError, InstanceStillRunningError, InvalidInputError, PayloadTooLargeError, UpdateRejectedError,
    UpdateTimeoutError,
)
from .history import Event, HistoryEvent
from . import local_runtimes
from .limits import (
    MAX_EXECUTION_ID, MAX_ID_CHARS, MAX_LIST_LIMIT, MAX_NAME_CHARS, MAX_REASON_CHARS, MAX_VERSION_CHARS,
    check_count, check_identifier, check_lookup_id, check_seconds, check_text,
)
from .messages import DEFAULT_CANCEL_GRACE_MS, CancelRequest, ExternalEvent, StartOrchestration
from .options import RuntimeOptions
from .messages import ClientUpdate
from .providers.base import InstanceRecord, Provider
from .readouts import StreamItem, state_of, stream_of, update_answer
from .status import InstanceInfo, OrchestrationStatus
from .tracecontext import current_traceparent
from .typed import decode_payload
from .wake import wake_hub

__all__ = ["Client"]

_log = logging.getLogger("duroxide.client")
#: Upper bound on the re-read interval while waiting on a store another process writes.
_MAX_POLL = 0.25
#: Statuses ``list_instances(status=...)`` accepts.
_STATUSES = ("Pending", "Running", "Completed", "Failed")
#: First re-read interval of waits on a store (doubled up to _MAX_POLL).
_FIRST_POLL = 0.005

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _holds_the_clock(
        call: Callable[Concatenate[Client, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[Client, _P], Coroutine[Any, Any, _T]]:
    """A client call that writes holds a self-moving clock still until it has woken the runtime
    (a VirtualClock must not move time between a test's start and the runtime seeing it)."""

    @functools.wraps(call)
    async def holding(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        part = clock_part(self.clock, f"client {call.__name__}")
        try:
            return await call(self, *args, **kwargs)
        finally:
            part.close()

    return holding


class Client:
    """Client of one store. Payloads are strings, passed through untouched.

    Every argument is checked against :mod:`duroxide_runtime.limits` before the
    store is touched: a wrong type raises :class:`PayloadError`, a value no
    store can hold (NUL, lone surrogates, an over-long id, a count out of
    range) raises :class:`InvalidInputError` naming the argument; a NaN or
    negative duration raises :class:`ConfigurationError`, like every duration.

    ``check_names`` (default ``True``): while a runtime of this same store
    object runs in this process, ``start_orchestration`` refuses a name (or
    explicit version) none of them registered with
    :class:`UnknownOrchestrationError` ("did you mean ...?"), before anything
    is stored. ``False`` leaves such names to the runtimes, which back off
    until one knows them: for a process whose runtime runs only some of the
    orchestrations while others run elsewhere. Without a runtime of this store
    object in this process nothing is checked either way (see
    :mod:`duroxide_runtime.local_runtimes`).
    """

    def __init__(self, store: Provider, *, max_payload_bytes: int = RuntimeOptions.max_payload_bytes,
                 check_names: bool = True) -> None:
        self.store = store
        self.check_names = check_names
        #: Times waits (``wait_for_orchestration``): the store's clock, so a test clock drives both.
        self.clock = store.clock
        #: Shared with every runtime and client of this store in this process: a start wakes
        #: the dispatchers at once, a finished instance wakes wait_for_orchestration.
        self._wake = wake_hub(store)
        self._max_payload = max_payload_bytes

    @_holds_the_clock
    async def start_orchestration(self, instance_id: str, name: str, input: str = "", *,
                                  version: str | None = None) -> None:
        """Create instance ``instance_id`` running orchestration ``name`` with ``input``.

        ``version`` pins a version (default: the runtime's version policy picks).
        Raises :class:`InstanceAlreadyExistsError` if the id is taken (nothing changes).
        An unregistered ``name`` (or ``version``) raises :class:`UnknownOrchestrationError`
        when a runtime of this store object runs in this process (see ``check_names``);
        otherwise the instance is created and the runtimes back off until one knows it,
        failing it after ``max_attempts``.
        """
        check_identifier(instance_id, "instance_id", MAX_ID_CHARS)
        check_identifier(name, "name", MAX_NAME_CHARS)
        if version is not None:
            check_identifier(version, "version", MAX_VERSION_CHARS)
        check_text(input, "input")
        self._check_size(input, "input")
        if self.check_names:
            refused = local_runtimes.refusal(self.store, name, version)
            if refused is not None:
                raise refused
        await self.store.create_instance(StartOrchestration(instance_id=instance_id, name=name,
                                                            version=version, input=input,
                                                            trace_context=current_traceparent()))
        self._wake.notify_orchestrator()

    @_holds_the_clock
    async def raise_event(self, instance_id: str, name: str, data: str = "") -> bool:
        """Deliver external event ``name`` to a running instance.

        Returns ``True`` when delivered (kept until a wait consumes it) and ``False``
        when the instance has already finished (a no-op, logged). Raises
        :class:`InstanceNotFoundError` for an unknown id.
        """
        check_lookup_id(instance_id)
        check_identifier(name, "name", MAX_NAME_CHARS)
        check_text(data, "data")
        self._check_size(data, "event data")
        record = await self.store.send(ExternalEvent(instance_id=instance_id, name=name, data=data),
                                       only_if_status_in=LIVE_STATUSES)
        return self._delivered(record, instance_id, "raise_event")

    @_holds_the_clock
    async def cancel_instance(self, instance_id: str, reason: str = "cancelled", *,
                              grace: timedelta | float = DEFAULT_CANCEL_GRACE_MS / 1000) -> bool:
        """Ask a running instance to end Failed with a cancellation error carrying ``reason``.

        Its code gets ``asyncio.CancelledError`` at the await it is on; ``finally`` and
        ``except CancelledError`` blocks may still schedule work (compensating activities)
        for up to ``grace`` (a timedelta or seconds, default 30 s, in orchestration time),
        then the execution ends regardless. Cascades to its sub-orchestrations (with the
        same grace) and signals its running activities. Returns ``False`` (a no-op) if it
        already finished; raises :class:`InstanceNotFoundError` for an unknown id.
        Repeating it is harmless: the first cancellation's grace stands.

        Example::

            await client.cancel_instance("order-1", "customer asked", grace=timedelta(minutes=5))
        """
        check_lookup_id(instance_id)
        check_text(reason, "reason", MAX_REASON_CHARS)
        grace_ms = round(check_seconds(grace, "cancel_instance grace") * 1000)
        record = await self.store.send(CancelRequest(instance_id=instance_id, reason=reason, grace_ms=grace_ms),
                                       only_if_status_in=LIVE_STATUSES)
        return self._delivered(record, instance_id, "cancel_instance")

    # -- state, updates, streams ---------------------------------------------------------

    @overload
    async def get_state(self, instance_id: str, key: str, /) -> str | None: ...
    @overload
    async def get_state(self, instance_id: str, key: str, value_type: type[_T], /) -> _T | None: ...

    async def get_state(self, instance_id: str, key: str, value_type: Any = None, /) -> Any:
        """The instance's state ``key`` as its code last set it (``ctx.set_state``); ``None`` if never set.

        Without ``value_type`` the stored text (a ``str`` value as it was set, any other
        value as its JSON); with it, decoded into it (:class:`PayloadDecodeError` if it
        does not decode). Readable while the instance runs (as of its last committed
        turn) and after it ended; state carries over at continue-as-new. Raises
        :class:`InstanceNotFoundError` for an unknown id.

        Example::

            progress = await client.get_state("import-7", "progress", Progress)
        """
        check_identifier(key, "key", MAX_NAME_CHARS)
        text = (await self.get_states(instance_id)).get(key)
        if text is None or value_type is None:
            return text
        return decode_payload(text, value_type, instance_id, f"state {key!r}",
                              fix="read the state with the type the orchestration sets it with")

    async def get_states(self, instance_id: str) -> dict[str, str]:
        """Every state key of the instance with its stored text (see :meth:`get_state`)."""
        check_lookup_id(instance_id)
        if await self.store.get_instance(instance_id) is None:
            raise InstanceNotFoundError(instance_id, "get_state")
        history = await self.store.read_history(instance_id)
        if not history:
            # A continued-as-new instance whose next execution has not run yet: the state
            # it starts with is where the last one ended.
            executions = await self.store.list_executions(instance_id)
            history = await self.store.read_history(instance_id, executions[-1]) if executions else []
        return state_of(history)

    @overload
    async def update(self, instance_id: str, name: str, data: str = "", timeout: timedelta | float = 30.0, *,
                     request_id: str | None = None) -> str: ...
    @overload
    async def update(self, instance_id: str, name: str, data: str = "", timeout: timedelta | float = 30.0, *,
                     request_id: str | None = None, result_type: type[_T]) -> _T: ...

    async def update(self, instance_id: str, name: str, data: str = "", timeout: timedelta | float = 30.0, *,
                     request_id: str | None = None, result_type: Any = None) -> Any:
        """Send update ``name`` with ``data`` and wait for the orchestration's reply (``ctx.wait_for_update``).

        Returns the reply (the text, or decoded into ``result_type``). Raises
        :class:`UpdateRejectedError` if the code rejects it (or the request's data does
        not decode into the type it waits for, or the instance ends without answering),
        :class:`UpdateTimeoutError` if no answer comes within ``timeout``, and
        :class:`InstanceNotFoundError` for an unknown id.

        Exactly once: the request carries ``request_id`` (default: a new random id, on
        the errors as ``request_id``); it is recorded once however often it is sent, and
        its answer is recorded in history. Asking again with the same ``request_id`` (after
        a timeout, or from a restarted client) sends nothing new if the instance has the
        request, and returns the recorded answer once there is one.

        Example::

            cart = await client.update("cart-1", "add_item", item_json, timeout=10)
        """
        check_lookup_id(instance_id)
        check_identifier(name, "name", MAX_NAME_CHARS)
        check_text(data, "data")
        self._check_size(data, "update data")
        seconds = check_seconds(timeout, "timeout", maximum=math.inf, allow_infinite=True)
        rid = uuid.uuid4().hex if request_id is None else check_identifier(request_id, "request_id", MAX_ID_CHARS)
        deadline = self.clock.monotonic() + seconds
        # A new random id cannot be recorded yet; a given one may be (an earlier ask): look in every execution.
        record, requested, answer = await self._update_answer(instance_id, rid, since=1 if request_id else None)
        if record is None:
            raise InstanceNotFoundError(instance_id, "update")
        since = record.execution_id  # from now on the request can only be in this execution or later ones
        if answer is None and not requested:
            record = await self.store.send(ClientUpdate(instance_id=instance_id, request_id=rid, name=name, data=data),
                                           only_if_status_in=LIVE_STATUSES)
            if record is None:
                raise InstanceNotFoundError(instance_id, "update")
            if record.status not in LIVE_STATUSES:
                raise UpdateRejectedError(instance_id, name, rid, f"the instance already ended ({record.status})")
            self._wake.notify_orchestrator()
        poll = _FIRST_POLL
        while answer is None:
            if record.status in TERMINAL_STATUSES:
                raise UpdateRejectedError(instance_id, name, rid, f"the instance ended ({record.status}) "
                                                                  "without answering it")
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise UpdateTimeoutError(instance_id, name, rid, seconds)
            await self._follow(instance_id, remaining, poll)
            poll = min(_MAX_POLL, poll * 2)
            record, requested, answer = await self._update_answer(instance_id, rid, since=since)
            if record is None:  # purged meanwhile
                raise InstanceNotFoundError(instance_id, "update")
        if answer.rejected is not None:
            raise UpdateRejectedError(instance_id, name, rid, answer.rejected)
        result = answer.result or ""
        if result_type is None:
            return result
        return decode_payload(result, result_type, instance_id, f"reply to update {name!r}",
                              fix="pass the result_type the orchestration replies with")

    @overload
    def stream(self, instance_id: str, from_offset: int = 0) -> AsyncIterator[StreamItem[str]]: ...
    @overload
    def stream(self, instance_id: str, from_offset: int = 0, *,
               item_type: type[_T]) -> AsyncIterator[StreamItem[_T]]: ...

    def stream(self, instance_id: str, from_offset: int = 0, *,
               item_type: Any = None) -> AsyncIterator[StreamItem[Any]]:
        """The instance's stream items (``ctx.emit``) from ``from_offset`` on, as their turns commit.

        Yields :class:`StreamItem` objects in offset order (the value decoded into
        ``item_type``, or the text itself) and ends once the instance has ended and
        every item was yielded. It waits on this process's wake-ups, re-reading the
        store at most every 0.25 s (a runtime in another process); it never busy-loops.
        Raises :class:`InstanceNotFoundError` for an unknown id.

        Example::

            async for item in client.stream("import-7", item_type=Progress):
                print(item.offset, item.value.done, "/", item.value.total)
        """
        check_lookup_id(instance_id)
        check_count(from_offset, "from_offset", 0, MAX_EXECUTION_ID)
        return self._stream(instance_id, from_offset, item_type)

    async def _stream(self, instance_id: str, from_offset: int, item_type: Any) -> AsyncIterator[StreamItem[Any]]:
        next_offset, first_unread, poll = from_offset, 1, _FIRST_POLL
        while True:
            # The row first: if it says ended, the histories read after it hold every item.
            record = await self.store.get_instance(instance_id)
            if record is None:
                raise InstanceNotFoundError(instance_id, "stream")
            for execution_id in [x for x in await self.store.list_executions(instance_id) if x >= first_unread]:
                for item in stream_of(await self.store.read_history(instance_id, execution_id), execution_id,
                                      next_offset):
                    next_offset = item.offset + 1
                    poll = _FIRST_POLL
                    yield item if item_type is None else StreamItem(
                        item.offset, decode_payload(item.value, item_type, instance_id, f"stream item {item.offset}",
                                                    fix="pass the item_type the orchestration emits"),
                        item.execution_id, item.timestamp_ms)
                first_unread = execution_id  # earlier executions ended: they are never read again
            if record.status in TERMINAL_STATUSES:
                return
            await self._follow(instance_id, math.inf, poll)
            poll = min(_MAX_POLL, poll * 2)

    async def _update_answer(self, instance_id: str, request_id: str, *, since: int | None
                             ) -> tuple[InstanceRecord | None, bool, Event.UpdateReplied | None]:
        """The instance row, whether it has the request, and its answer (executions from ``since``, newest
        first; ``None``: the row only)."""
        record = await self.store.get_instance(instance_id)
        if record is None or since is None:
            return record, False, None
        requested = False
        executions = [x for x in await self.store.list_executions(instance_id) if x >= since]
        for execution_id in reversed(executions):
            seen, answer = update_answer(await self.store.read_history(instance_id, execution_id), request_id)
            if answer is not None:
                return record, True, answer
            requested = requested or seen
            if seen:
                break  # recorded here and unanswered: earlier executions never saw it
        return record, requested, None

    async def _follow(self, instance_id: str, remaining: float, poll: float) -> None:
        """Until a turn of the instance commits in this process, ``remaining`` (clock) or ``poll`` (real) seconds."""
        try:
            # As in wait_for_orchestration: the clock decides the timeout, the re-read is real time
            # (a turn committed by another process wakes nobody here).
            async with asyncio.timeout(poll):
                await self._wake.wait_turn(instance_id, remaining)
        except TimeoutError:
            pass

    async def get_orchestration_status(self, instance_id: str) -> OrchestrationStatus[str]:
        """Current status (``NotFound`` for an unknown id)."""
        check_lookup_id(instance_id)
        return _status_of(await self.store.get_instance(instance_id))

    status = get_orchestration_status

    async def wait_for_orchestration(self, instance_id: str,
                                     timeout: timedelta | float = 30.0) -> OrchestrationStatus[str]:
        """Wait until the instance is Completed or Failed, or ``timeout`` passes.

        Returns the status at that moment: a terminal one, or ``Running``/``Pending``
        on timeout, or ``NotFound`` for an unknown id. ``timeout`` is a number of
        seconds or a ``timedelta`` from 0 up (``math.inf`` waits until the end);
        NaN and negative values raise :class:`ConfigurationError`.
        """
        check_lookup_id(instance_id)
        clock = self.clock
        deadline = clock.monotonic() + check_seconds(timeout, "timeout", maximum=math.inf, allow_infinite=True)
        poll = 0.005
        while True:
            status = await self.get_orchestration_status(instance_id)
            remaining = deadline - clock.monotonic()
            if status.is_terminal or isinstance(status, OrchestrationStatus.NotFound) or remaining <= 0:
                return status
            try:
                # The timeout is the clock's (a test clock decides when it passes); the
                # re-reads are real time: they catch a wake-up missed while the status was
                # being read, or a completion in another process, whatever the clock does.
                async with asyncio.timeout(poll):
                    await self._wake.wait_instance(instance_id, remaining)
            except TimeoutError:
                pass
            poll = min(_MAX_POLL, poll * 2)

    async def get_instance_info(self, instance_id: str) -> InstanceInfo:
        """Metadata of an instance; raises :class:`InstanceNotFoundError` if unknown."""
        check_lookup_id(instance_id)
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise InstanceNotFoundError(instance_id, "get_instance_info")
        return _info_of(record)

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        """Events of the current execution (or of ``execution_id``); raises for an unknown id.

        An unreadable stored row raises :class:`CorruptHistoryError`.
        """
        check_lookup_id(instance_id)
        if execution_id is not None:
            check_count(execution_id, "execution_id", 1, MAX_EXECUTION_ID)
        if await self.store.get_instance(instance_id) is None:
            raise InstanceNotFoundError(instance_id, "read_history")
        return await self.store.read_history(instance_id, execution_id)

    async def list_executions(self, instance_id: str) -> list[int]:
        """Execution ids of an instance (more than one after continue-as-new)."""
        check_lookup_id(instance_id)
        return await self.store.list_executions(instance_id)

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceInfo]:
        """Instances, newest first, filtered by status and/or name; ``limit`` is 1 to 2**31-1."""
        if status is not None and status not in _STATUSES:
            raise InvalidInputError("status", f"is {repr(status)[:60]}, not one of {', '.join(_STATUSES)}",
                                    fix="pass None or one of " + ", ".join(_STATUSES))
        if name is not None:
            check_lookup_id(name, "name")
        check_count(limit, "limit", 1, MAX_LIST_LIMIT)
        return [_info_of(r) for r in await self.store.list_instances(status=status, name=name, limit=limit)]

    @_holds_the_clock
    async def purge(self, instance_id: str, *, force: bool = False) -> list[str]:
        """Delete a finished instance, its children, history and messages; returns the ids deleted.

        A running instance is refused with :class:`InstanceStillRunningError` unless ``force``;
        an unknown id raises :class:`InstanceNotFoundError`, like every other call naming one.
        """
        check_lookup_id(instance_id)
        if not isinstance(force, bool):
            raise InvalidInputError("force", f"must be True or False, got {type(force).__name__}",
                                    fix="pass force=True or force=False")
        deleted = await self.store.purge_instance(
            instance_id, only_if_status_in=None if force else TERMINAL_STATUSES)
        if deleted is None:
            raise InstanceStillRunningError(instance_id)
        if not deleted:
            raise InstanceNotFoundError(instance_id, "purge")
        for iid in deleted:
            self._wake.notify_instance(iid)
        return deleted

    def _check_size(self, value: str, what: str) -> None:
        size = len(value.encode())
        if size > self._max_payload:
            raise PayloadTooLargeError(f"{what} is {size} bytes, over the limit of {self._max_payload}",
                                       fix="store large data elsewhere and pass a reference")

    def _delivered(self, record: InstanceRecord | None, instance_id: str, operation: str) -> bool:
        if record is None:
            raise InstanceNotFoundError(instance_id, operation)
        if record.status not in LIVE_STATUSES:
            _log.info("%s: instance %r already %s; nothing was done", operation, instance_id, record.status)
            return False
        self._wake.notify_orchestrator()
        return True


def _status_of(record: InstanceRecord | None) -> OrchestrationStatus[str]:
    if record is None:
        return OrchestrationStatus.NotFound()
    if record.status == "Completed":
        return OrchestrationStatus.Completed(output=record.output or "", custom_status=record.custom_status)
    if record.status == "Failed":
        text = record.error.to_text() if record.error else "unknown error"
        return OrchestrationStatus.Failed(error=text, details=record.error, custom_status=record.custom_status)
    if record.status == "Pending":
        return OrchestrationStatus.Pending(custom_status=record.custom_status)
    return OrchestrationStatus.Running(custom_status=record.custom_status)


def _info_of(r: InstanceRecord) -> InstanceInfo:
    return InstanceInfo(r.instance_id, r.name, r.version, r.status, r.execution_id, r.output,
                        r.error.to_text() if r.error else None, r.custom_status, r.created_at_ms,
                        r.updated_at_ms, r.parent_instance_id)
