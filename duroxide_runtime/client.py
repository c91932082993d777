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
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from .clock import clock_part
from .deadlines import deadline_cancel, deadline_ms
from .debounce import check_debounce
from .engine.output import LIVE_STATUSES, TERMINAL_STATUSES
from .errors import (
    InstanceAlreadyExistsError, InstanceNotFoundError, InstanceStateError, InstanceStillRunningError, InvalidInputError,
    PayloadTooLargeError, ScheduleExistsError, ScheduleNotFoundError, UpdateRejectedError, UpdateTimeoutError,
)
from .history import Event, HistoryEvent
from . import local_runtimes
from .limits import (
    MAX_EXECUTION_ID, MAX_ID_CHARS, MAX_LIST_LIMIT, MAX_NAME_CHARS, MAX_REASON_CHARS, MAX_VERSION_CHARS,
    check_count, check_identifier, check_lookup_id, check_seconds, check_text,
)
from .engine.recovery import RewindRefused, plan_rewind
from .messages import (
    DEFAULT_CANCEL_GRACE_MS, CancelRequest, ExternalEvent, OrchestratorMessage, RestartRequest, ResumeRequest, RewindRequest,
    StartOrchestration, SuspendRequest,
)
from .operator import operator_name
from .options import RuntimeOptions
from .messages import ClientUpdate
from .providers.base import (
    MAX_PAGE_LIMIT, InstanceQuery, InstanceRecord, Provider, QueueStats, ScheduleRecord, StartOutcome, StoreOverview,
)
from .queues import DEFAULT_QUEUE, check_concurrency_key, check_priority, check_queue_name
from .readouts import StreamItem, state_of, stream_of, update_answer
from .scheduler import schedules_changed
from .schedules import (
    MAX_SCHEDULE_ID_CHARS, REGISTERED_FRESH_MS, CatchUp, CatchUpName, ScheduleInfo, check_catch_up, check_cron,
    next_tick_ms,
)
from .start_policy import IfExists, IfExistsName, check_idempotency_key, check_if_exists
from .status import InstanceInfo, InstanceInfoPage, OrchestrationStatus
from .tracecontext import current_traceparent
from .typed import decode_payload
from .wake import wake_hub

__all__ = ["Client"]

_log = logging.getLogger("duroxide.client")
#: Upper bound on the re-read interval while waiting on a store another process writes.
_MAX_POLL = 0.25
#: Statuses ``list_instances(status=...)`` accepts.
_STATUSES = ("Pending", "Running", "Suspended", "Completed", "Failed")
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
                                  version: str | None = None,
                                  if_exists: IfExists | IfExistsName = IfExists.FAIL,
                                  idempotency_key: str | None = None,
                                  deadline: timedelta | datetime | None = None,
                                  concurrency_key: str | None = None,
                                  priority: int | None = None,
                                  queue: str | None = None,
                                  debounce: timedelta | float | None = None,
                                  debounce_key: str | None = None) -> str:
        """Create instance ``instance_id`` running orchestration ``name`` with ``input``; returns the
        id of the instance that runs (``instance_id``, or the one ``idempotency_key`` recorded).

        ``version`` pins a version (default: the runtime's version policy picks).
        ``if_exists`` (:class:`IfExists`, or its string) says what happens when the id is
        taken: ``"fail"`` raises :class:`InstanceAlreadyExistsError` (nothing changes);
        ``"return_existing"`` changes nothing and returns the id; ``"replace"`` deletes a
        finished instance (with its history and sub-orchestrations, as :meth:`purge`) and
        starts afresh in the same store transaction, and refuses a live one (Pending,
        Running, Suspended) with :class:`InstanceStateError`: cancel it first.
        ``idempotency_key``: a start with a key used in the last 24 hours
        (:data:`~duroxide_runtime.start_policy.IDEMPOTENCY_KEY_TTL`) changes nothing and
        returns the id that key's first start named, even if this call names another id:
        retry a start whose reply was lost with the same key. A start that raises
        records no key. An unregistered ``name`` (or ``version``) raises
        :class:`UnknownOrchestrationError` when a runtime of this store object runs in this
        process (see ``check_names``); otherwise the instance is created and the runtimes
        back off until one knows it, failing it after ``max_attempts``.
        ``deadline`` (a ``timedelta`` from now, or an aware ``datetime``): the instance must
        have ended by then; one still running (or not started yet) is cancelled then, with
        cleanup (as :meth:`cancel_instance`, default grace), and ends Failed with
        ``OrchestrationCancelled: deadline <UTC time> passed``. The cancellation is stored
        with the start, in its transaction, so it happens even if no runtime ran in between;
        continue-as-new keeps the deadline. A deadline not after now, or over 100 years ahead,
        raises :class:`InvalidInputError`; a naive ``datetime`` :class:`ConfigurationError`
        (both before anything is stored).
        ``concurrency_key`` groups the instance's work under a key for the queues'
        ``per_key_concurrency`` limits, and ``priority`` (higher first; ``None``: each
        queue's own) orders its activity calls; both pass to its sub-orchestrations and
        through continue-as-new (see :mod:`duroxide_runtime.queues`). ``queue`` makes the
        instance wait for a slot of that queue before it starts: the runtimes admit it when
        the queue's ``RuntimeOptions.queues`` limits allow (instances of the queue that are
        running count; ``priority`` orders the waiting ones, ``concurrency_key`` counts
        against ``per_key_concurrency``). A queue the runtimes do not configure keeps it
        waiting; with a runtime of this store object in this process, such a queue raises
        :class:`UnknownQueueError` here instead. ``"default"`` (or ``None``) starts it at once.
        ``debounce`` (a ``timedelta`` or seconds, up to 7 days) holds the start back for that
        quiet period, per (``name``, ``debounce_key``; default: ``instance_id``): the first
        such start creates the instance (Pending) and returns its id; each later one while
        the held start has not been picked up replaces its input (the last input wins),
        pushes its start to now + ``debounce`` and returns the held instance's id, whatever
        id it named. Once a runtime picked the start up, the next one opens a new window
        (a new instance: its id must be free). Refused before anything is stored, with
        :class:`InvalidInputError`: a ``debounce`` not above 0 or over 7 days, and
        ``debounce`` with ``idempotency_key``, ``deadline``, ``if_exists="replace"`` or a
        ``queue`` (see :mod:`duroxide_runtime.debounce`).

        Example::

            run_id = await client.start_orchestration("order-7", "Checkout", order_json,
                                                      idempotency_key=request.headers["Idempotency-Key"],
                                                      deadline=timedelta(hours=1), concurrency_key="customer-42")
        """
        policy = check_if_exists(if_exists)
        key = check_idempotency_key(idempotency_key)
        concurrency_key = check_concurrency_key(concurrency_key)
        priority = check_priority(priority)
        if queue is not None:
            queue = None if check_queue_name(queue) == DEFAULT_QUEUE else queue
        check_identifier(instance_id, "instance_id", MAX_ID_CHARS)
        check_identifier(name, "name", MAX_NAME_CHARS)
        if version is not None:
            check_identifier(version, "version", MAX_VERSION_CHARS)
        check_text(input, "input")
        self._check_size(input, "input")
        debounced = check_debounce(debounce, debounce_key, instance_id, if_exists=policy, idempotency_key=key,
                                   deadline=deadline, queue=queue)
        due = None if deadline is None else deadline_ms(deadline, self.clock.now_ms())
        if self.check_names:
            refused = local_runtimes.refusal(self.store, name, version) or (
                None if queue is None else local_runtimes.queue_refusal(self.store, queue))
            if refused is not None:
                raise refused
        start = StartOrchestration(instance_id=instance_id, name=name, version=version, input=input,
                                   trace_context=current_traceparent(), deadline_ms=due,
                                   concurrency_key=concurrency_key, priority=priority, queue=queue)
        if debounced is not None:
            return self._started(policy, await self.store.debounce_start(
                start, debounce_key=debounced[1], quiet_ms=debounced[0]))
        if policy is IfExists.FAIL and key is None and due is None:
            # The plain start: the store's cheapest write (PostgreSQL batches concurrent ones).
            # A dispatcher of this process that waits idle may be handed the new instance locked
            # by the same write (eager dispatch), sparing its fetch.
            found = local_runtimes.taker(self.store) if queue is None else None
            item = await self.store.create_instance(start, lock=None if found is None else found[1])
            if item is not None and found is not None:
                await found[0].take_locked([item])
            else:
                self._wake.notify_orchestrator()
            return instance_id
        return self._started(policy, await self.store.start_instance(
            start, if_exists=policy, replace_if_status_in=TERMINAL_STATUSES, idempotency_key=key,
            # A deadline is a cancellation the store holds back until then, written with the start.
            messages=() if due is None else [(deadline_cancel(instance_id, due), due)]))

    def _started(self, policy: IfExists, outcome: StartOutcome) -> str:
        """The id a policy start returns, or the error it raises (the store wrote nothing then)."""
        if outcome.created:
            for iid in outcome.replaced:
                self._wake.notify_instance(iid)
            self._wake.notify_orchestrator()
            return outcome.instance_id
        existing = outcome.existing
        if outcome.debounced:
            self._wake.notify_orchestrator()  # the held start's due time moved: dispatchers re-read it
            return outcome.instance_id
        if outcome.by_key or existing is None or policy is IfExists.RETURN_EXISTING:
            return outcome.instance_id
        if policy is IfExists.REPLACE:
            raise InstanceStateError(
                existing.instance_id, "replace", existing.status,
                f"it is {existing.status}: only a finished instance (Completed or Failed) is replaced, "
                "a live one is never stopped by a start",
                fix="cancel it first (client.cancel_instance) and wait for it to end, or start with "
                    "if_exists='return_existing' to use it as it is")
        raise InstanceAlreadyExistsError(existing.instance_id)

    @_holds_the_clock
    async def raise_event(self, instance_id: str, name: str, data: str = "", *, by: str | None = None) -> bool:
        """Deliver external event ``name`` to a running instance.

        Returns ``True`` when delivered (kept until a wait consumes it) and ``False``
        when the instance has already finished (a no-op, logged). Raises
        :class:`InstanceNotFoundError` for an unknown id. ``by`` (who raised it, default
        ``user@host``) is recorded in its ``EventRaised``.
        """
        check_lookup_id(instance_id)
        check_identifier(name, "name", MAX_NAME_CHARS)
        check_text(data, "data")
        self._check_size(data, "event data")
        record = await self.store.send(ExternalEvent(instance_id=instance_id, name=name, data=data, by=self._by(by)),
                                       only_if_status_in=LIVE_STATUSES)
        return self._delivered(record, instance_id, "raise_event")

    @_holds_the_clock
    async def cancel_instance(self, instance_id: str, reason: str = "cancelled", *,
                              grace: timedelta | float = DEFAULT_CANCEL_GRACE_MS / 1000,
                              by: str | None = None) -> bool:
        """Ask a running instance to end Failed with a cancellation error carrying ``reason``.

        Its code gets ``asyncio.CancelledError`` at the await it is on; ``finally`` and
        ``except CancelledError`` blocks may still schedule work (compensating activities)
        for up to ``grace`` (a timedelta or seconds, default 30 s, in orchestration time),
        then the execution ends regardless. Cascades to its sub-orchestrations (with the
        same grace) and signals its running activities. Returns ``False`` (a no-op) if it
        already finished; raises :class:`InstanceNotFoundError` for an unknown id.
        Repeating it is harmless: the first cancellation's grace stands. ``by`` (who asked,
        default ``user@host``) is recorded in ``OrchestrationCancelRequested``.

        Example::

            await client.cancel_instance("order-1", "customer asked", grace=timedelta(minutes=5))
        """
        check_lookup_id(instance_id)
        check_text(reason, "reason", MAX_REASON_CHARS)
        grace_ms = round(check_seconds(grace, "cancel_instance grace") * 1000)
        record = await self.store.send(CancelRequest(instance_id=instance_id, reason=reason, grace_ms=grace_ms,
                                                     by=self._by(by)),
                                       only_if_status_in=LIVE_STATUSES)
        return self._delivered(record, instance_id, "cancel_instance")

    # -- recovery operations ---------------------------------------------------------------

    @_holds_the_clock
    async def suspend_instance(self, instance_id: str, reason: str = "suspended", *, by: str | None = None) -> None:
        """Stop a Pending or Running instance's code until :meth:`resume_instance`.

        Its history records ``OrchestrationSuspended`` (with ``reason`` and ``by``, who
        asked: default ``user@host``) and its status becomes ``Suspended``. Activities
        already running finish; their results, timers that fire and events raised
        meanwhile are recorded and kept, and its code sees them, in that order, when it
        resumes. Cancelling a suspended instance ends it (its cleanup runs).
        Raises :class:`InstanceStateError` if it is suspended or finished already.

        Example::

            await client.suspend_instance("order-1", "payment provider is down")
        """
        await self._operate(instance_id, "suspend", SuspendRequest(
            instance_id=instance_id, reason=self._reason(reason), by=self._by(by)), LIVE_STATUSES - {"Suspended"})

    @_holds_the_clock
    async def resume_instance(self, instance_id: str, reason: str = "resumed", *, by: str | None = None) -> None:
        """Let a suspended instance run on (``OrchestrationResumed`` in its history).

        Raises :class:`InstanceStateError` if it is not suspended.

        Example::

            await client.resume_instance("order-1")
        """
        await self._operate(instance_id, "resume", ResumeRequest(
            instance_id=instance_id, reason=self._reason(reason), by=self._by(by)), frozenset({"Suspended"}))

    @_holds_the_clock
    async def rewind_instance(self, instance_id: str, reason: str = "rewound", *, by: str | None = None) -> None:
        """Let a Failed instance continue from its failure.

        The failed activity calls are sent out again and failed sub-orchestrations are
        rewound too; the history before the failure is kept, and ``OrchestrationRewound``
        records which events replay now skips (its ``OrchestrationFailed`` and the
        failures that caused it). Deploy the fix first when the code itself failed: the
        rewound execution replays with the code as it is now. Raises
        :class:`InstanceStateError` if it is not Failed, or was cancelled (restart it).

        Example::

            await client.rewind_instance("order-1", "the tax service is back")
        """
        request = RewindRequest(instance_id=instance_id, reason=self._reason(reason), by=self._by(by))
        record = await self._record(instance_id, "rewind")
        if record.status == "Failed":
            plan = plan_rewind(await self.store.read_history(instance_id))
            if isinstance(plan, RewindRefused):
                raise InstanceStateError(instance_id, "rewind", record.status, plan.why,
                                         fix="restart it (client.restart_instance) to run it afresh")
        await self._operate(instance_id, "rewind", request, frozenset({"Failed"}), set_status="Running")

    @_holds_the_clock
    async def restart_instance(self, instance_id: str, new_instance_id: str | None = None, *,
                               reason: str = "restarted", by: str | None = None) -> str:
        """Run a finished instance afresh with its original input; returns the id it runs under.

        ``new_instance_id=None``: the same id, as a new execution (its earlier ones stay
        in the store); otherwise a new instance of that id, which must be free
        (:class:`InstanceAlreadyExistsError`). Either way the finished execution records
        ``OrchestrationRestarted``. Raises :class:`InstanceStateError` if it has not finished.

        Example::

            await client.restart_instance("order-1")                   # "order-1", execution 2
            await client.restart_instance("order-1", "order-1-retry")  # "order-1-retry"
        """
        reason, by = self._reason(reason), self._by(by)
        if new_instance_id is not None:
            check_identifier(new_instance_id, "new_instance_id", MAX_ID_CHARS)
        record = await self._record(instance_id, "restart")
        if record.status not in TERMINAL_STATUSES:
            raise _not_allowed(instance_id, "restart", record.status)
        executions = await self.store.list_executions(instance_id)
        first = await self.store.read_history(instance_id, executions[0] if executions else None)
        started = first[0] if first and isinstance(first[0], Event.OrchestrationStarted) else None
        given = started.input if started is not None else ""
        version = started.version if started is not None else record.version
        if new_instance_id is not None:
            await self.store.create_instance(StartOrchestration(
                instance_id=new_instance_id, name=record.name, version=version, input=given,
                trace_context=current_traceparent()))
        await self._operate(instance_id, "restart", RestartRequest(
            instance_id=instance_id, reason=reason, by=by, input=given, version=version,
            new_instance_id=new_instance_id), TERMINAL_STATUSES,
            set_status=None if new_instance_id is not None else "Pending")
        return new_instance_id or instance_id

    async def _record(self, instance_id: str, operation: str) -> InstanceRecord:
        check_lookup_id(instance_id)
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise InstanceNotFoundError(instance_id, operation)
        return record

    async def _operate(self, instance_id: str, operation: str, request: OrchestratorMessage,
                       allowed: frozenset[str], *, set_status: str | None = None) -> None:
        """Enqueue an operator's request if (atomically) the instance's status allows it.

        ``set_status``: a finished instance is live again from this write on (Running for a
        rewind, Pending for a restart), so ``wait_for_orchestration`` waits for its new end.
        """
        check_lookup_id(instance_id)
        record = await self.store.send(request, only_if_status_in=allowed, set_status=set_status)
        if record is None:
            raise InstanceNotFoundError(instance_id, operation)
        if record.status not in allowed:
            raise _not_allowed(instance_id, operation, record.status)
        self._wake.notify_orchestrator()

    @staticmethod
    def _reason(reason: str) -> str:
        return check_text(reason, "reason", MAX_REASON_CHARS)

    @staticmethod
    def _by(by: str | None) -> str:
        return operator_name() if by is None else check_text(by, "by", MAX_REASON_CHARS)

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

    async def query_instances(self, *, status: str | None = None, name: str | None = None,
                              version: str | None = None, q: str | None = None, cursor: str | None = None,
                              limit: int = 50) -> InstanceInfoPage:
        """One page of instances, newest first, filtered (all given filters at once) by exact
        status, name and version and by ``q``, a case-sensitive substring of the instance id
        taken literally (``%`` and ``_`` are plain characters).

        ``cursor`` is the ``next_cursor`` of the previous page (``None``: the first page);
        ``limit`` is 1 to 1000. Instances started between two calls never make a page
        repeat or skip an older one. A malformed cursor, or a value out of range, raises
        :class:`InvalidInputError` naming it.

        Example::

            page = await client.query_instances(status="Failed", name="Checkout", limit=20)
            for info in page.instances:
                print(info.instance_id, info.error)
            older = await client.query_instances(status="Failed", name="Checkout", limit=20,
                                                 cursor=page.next_cursor)
        """
        if status is not None and status not in _STATUSES:
            raise InvalidInputError("status", f"is {repr(status)[:60]}, not one of {', '.join(_STATUSES)}",
                                    fix="pass None or one of " + ", ".join(_STATUSES))
        for field, value in (("name", name), ("version", version), ("q", q), ("cursor", cursor)):
            if value is not None:
                check_lookup_id(value, field)
        check_count(limit, "limit", 1, MAX_PAGE_LIMIT)
        page = await self.store.query_instances(InstanceQuery(status=status, name=name, version=version, q=q,
                                                              cursor=cursor, limit=limit))
        return InstanceInfoPage([_info_of(r) for r in page.instances], page.next_cursor)

    async def overview(self, *, since: timedelta | float = timedelta(hours=1)) -> StoreOverview:
        """Instance counts per (status, name, version), endings per minute and failures grouped by
        error type over the last ``since`` (a timedelta or seconds; default one hour, by the
        store's clock), and the queue depths. See :class:`StoreOverview`.

        Example::

            overview = await client.overview(since=timedelta(minutes=15))
            for group in overview.failures:
                print(group.error_type, group.count, group.last_message)
        """
        seconds = check_seconds(since, "since")
        return await self.store.overview(self.clock.now_ms() - int(seconds * 1000),
                                         finished_statuses=TERMINAL_STATUSES, failed_status="Failed",
                                         active_statuses=LIVE_STATUSES)

    async def queue_stats(self) -> list[QueueStats]:
        """Per queue holding work now: instances waiting for a slot and running, activity calls
        queued and running (see :class:`~duroxide_runtime.providers.base.QueueStats`), by queue name.

        Example::

            for q in await client.queue_stats():
                print(q.queue, "waiting:", q.waiting_instances + q.queued_calls)
        """
        return await self.store.queue_stats(live_statuses=LIVE_STATUSES)

    # -- schedules ------------------------------------------------------------------------

    @_holds_the_clock
    async def create_schedule(self, schedule_id: str, cron: str, orchestration: str, input: str = "", *,
                              catch_up: CatchUp | CatchUpName = CatchUp.SKIP, version: str | None = None,
                              replace: bool = False) -> ScheduleInfo:
        """Start ``orchestration`` with ``input`` at every tick of ``cron`` (UTC), from the next tick on.

        ``cron`` has 5 fields (``minute hour day-of-month month day-of-week``) or 6 with
        seconds first (``"*/10 * * * * *"``: every 10 s). Each tick starts exactly one
        instance, ``f"{schedule_id}@{tick}"`` (e.g. ``nightly@2026-03-01T02:00:00Z``),
        whichever and however many runtimes run (``RuntimeOptions.run_schedules``).
        ``catch_up`` says which ticks missed while no runtime ran are started: ``"skip"``
        (none), ``"latest"`` (the last one) or ``"all"`` (see :class:`CatchUp`). ``version``
        pins the orchestration's version (default: the runtime's policy picks per tick).

        A malformed ``cron`` or ``catch_up`` raises :class:`InvalidScheduleError` and an
        unregistered ``orchestration`` (with a runtime of this store object in this process)
        :class:`UnknownOrchestrationError`, before anything is stored. A taken id raises
        :class:`ScheduleExistsError`, unless ``replace``: then the schedule takes the new
        values and keeps its next tick if the cron is unchanged (so every process of a
        deployment may create its schedules at start), its paused state and its history.

        Example::

            await client.create_schedule("nightly", "0 2 * * *", "cleanup", input_json, catch_up="skip")
        """
        check_identifier(schedule_id, "schedule_id", MAX_SCHEDULE_ID_CHARS)
        spec = check_cron(cron)
        policy = check_catch_up(catch_up)
        check_identifier(orchestration, "orchestration", MAX_NAME_CHARS)
        if version is not None:
            check_identifier(version, "version", MAX_VERSION_CHARS)
        check_text(input, "input")
        self._check_size(input, "input")
        if not isinstance(replace, bool):
            raise InvalidInputError("replace", f"must be True or False, got {type(replace).__name__}",
                                    fix="pass replace=True or replace=False")
        if self.check_names:
            refused = local_runtimes.refusal(self.store, orchestration, version)
            if refused is not None:
                raise refused
        record = await self.store.put_schedule(ScheduleRecord(
            schedule_id, spec.text, orchestration, input, version, policy.value, False,
            next_tick_ms(spec, self.clock.now_ms())), replace=replace)
        if record is None:
            raise ScheduleExistsError(schedule_id)
        schedules_changed(self.store)
        return self._schedule_info(record)

    async def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule; raises :class:`ScheduleNotFoundError` for an unknown id."""
        check_lookup_id(schedule_id, "schedule_id")
        record = await self.store.get_schedule(schedule_id)
        if record is None:
            raise ScheduleNotFoundError(schedule_id, "get_schedule")
        return self._schedule_info(record)

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule of the store, by id (see :class:`ScheduleInfo`).

        Example::

            for s in await client.list_schedules():
                if not s.orchestration_registered:
                    print(s.schedule_id, "runs", s.orchestration, "which no runtime registers")
        """
        return [self._schedule_info(r) for r in await self.store.list_schedules()]

    async def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Start no more ticks of a schedule until :meth:`resume_schedule` (harmless if paused);
        raises :class:`ScheduleNotFoundError` for an unknown id."""
        check_lookup_id(schedule_id, "schedule_id")
        record = await self.store.set_schedule_paused(schedule_id, True)
        if record is None:
            raise ScheduleNotFoundError(schedule_id, "pause_schedule")
        return self._schedule_info(record)

    @_holds_the_clock
    async def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Start a paused schedule's ticks again from its next tick after now: ticks that fell
        while it was paused are never started, whatever its catch-up policy. Harmless on a
        running schedule; raises :class:`ScheduleNotFoundError` for an unknown id."""
        check_lookup_id(schedule_id, "schedule_id")
        current = await self.store.get_schedule(schedule_id)
        if current is None:
            raise ScheduleNotFoundError(schedule_id, "resume_schedule")
        if not current.paused:
            return self._schedule_info(current)
        record = await self.store.set_schedule_paused(
            schedule_id, False, next_tick_ms=next_tick_ms(check_cron(current.cron), self.clock.now_ms()))
        if record is None:
            raise ScheduleNotFoundError(schedule_id, "resume_schedule")
        schedules_changed(self.store)
        return self._schedule_info(record)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; the instances it started stay. Raises :class:`ScheduleNotFoundError`
        for an unknown id."""
        check_lookup_id(schedule_id, "schedule_id")
        if not await self.store.delete_schedule(schedule_id):
            raise ScheduleNotFoundError(schedule_id, "delete_schedule")

    def _schedule_info(self, r: ScheduleRecord) -> ScheduleInfo:
        fresh = r.registered_at_ms is not None and self.clock.now_ms() - r.registered_at_ms <= 2 * REGISTERED_FRESH_MS
        return ScheduleInfo(r.schedule_id, r.cron, r.orchestration, r.input, r.version, CatchUp(r.catch_up), r.paused,
                            r.next_tick_ms, r.last_tick_ms, r.last_instance_id, r.created_at_ms, r.updated_at_ms,
                            fresh)

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


_ALLOWED_FROM = {  # operation -> (the statuses it takes, said to the operator, and what to do instead)
    "suspend": ("it is {status}: only a Pending or Running instance can be suspended",
                "resume it if it is suspended; a finished instance can be restarted"),
    "resume": ("it is {status}, not Suspended", "suspend it first (client.suspend_instance)"),
    "rewind": ("it is {status}: only a Failed instance can be rewound",
               "wait until it fails, or restart a finished one (client.restart_instance)"),
    "restart": ("it is {status}: only a finished instance (Completed or Failed) can be restarted",
                "cancel it first (client.cancel_instance) and wait for it to end"),
}


def _not_allowed(instance_id: str, operation: str, status: str) -> InstanceStateError:
    why, fix = _ALLOWED_FROM[operation]
    return InstanceStateError(instance_id, operation, status, why.format(status=status), fix=fix)


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
    if record.status == "Suspended":
        return OrchestrationStatus.Suspended(custom_status=record.custom_status)
    return OrchestrationStatus.Running(custom_status=record.custom_status)


def _info_of(r: InstanceRecord) -> InstanceInfo:
    return InstanceInfo(r.instance_id, r.name, r.version, r.status, r.execution_id, r.output,
                        r.error.to_text() if r.error else None, r.custom_status, r.created_at_ms,
                        r.updated_at_ms, r.parent_instance_id)
