"""The command buffer: what ``OrchestrationContext`` issues its commands to.

Each command becomes a :class:`DurableFuture`. On replay the history matcher
supplies the recorded schedule event (the future gets its event id); past
the end of history the command is recorded as a new event, whose outgoing
work the execution's output sends. The buffer keeps the open futures by
event id and resolves them when their completion is applied, in history
order, counting completions so that select picks the earliest (SEMANTICS 5).
It is also the loop's timer source: ``asyncio.sleep`` becomes a durable timer.

Example::

    buffer = CommandBuffer(identity, options, matcher, mailbox, output, journal)
    fut = buffer.issue(ScheduleActivity(name="A", input="x"))   # ActivityScheduled, or the recorded one
    buffer.complete(Event.ActivityCompleted(...))                # fut.result() == its result
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from ..errors import ActivityFailed, DuroxideError, NonDeterminismError, SubOrchestrationFailed
from ..history import Event, HistoryEvent
from ..limits import check_seconds
from ..loop import OrchestrationLoop
from ..messages import CancelRequest
from ..options import RuntimeOptions
from .commands import (
    Command,
    CommandKind,
    CreateTimer,
    DurableFuture,
    Emit,
    ReplyUpdate,
    ScheduleActivity,
    ScheduleSubOrchestration,
    SetState,
    StartDetached,
    SystemCall,
    UpdateArrival,
    WaitForEvent,
    WaitForUpdate,
    label,
)
from .inbox import Mailbox
from .interaction import Interaction
from .matcher import HistoryMatcher
from .output import Output
from .payloads import check_size, check_str
from ..callsite import caller_source, stop_at

__all__ = ["CommandBuffer", "Identity", "Journal", "ReplayAborted"]

_log = logging.getLogger("duroxide.replay")

# Orchestration code runs above the loop's callback runner: the search for a call's source line stops there.
stop_at(OrchestrationLoop._run.__code__, OrchestrationLoop.run_ready.__code__)

# Which kind of schedule each completion event completes.
_COMPLETES: dict[type[HistoryEvent], CommandKind] = {
    Event.ActivityCompleted: CommandKind.ACTIVITY,
    Event.ActivityFailed: CommandKind.ACTIVITY,
    Event.TimerFired: CommandKind.TIMER,
    Event.SubOrchestrationCompleted: CommandKind.SUB_ORCHESTRATION,
    Event.SubOrchestrationFailed: CommandKind.SUB_ORCHESTRATION,
}


def is_completion(event: HistoryEvent) -> bool:
    """Whether ``event`` completes a scheduled activity, timer or child."""
    return type(event) in _COMPLETES


class ReplayAborted(BaseException):
    """Unwinds orchestration code after a fatal replay error; user code cannot catch it by accident."""


@dataclass(frozen=True)
class Identity:
    """Which execution this is: ``Identity("order-1", 1, "ProcessOrder", "1.0.0")``."""

    instance_id: str
    execution_id: int
    name: str
    version: str


class Journal(Protocol):
    """What the buffer needs from its execution: the history being written."""

    @property
    def ended(self) -> bool:
        """The execution has an outcome (or was disposed): no more commands."""
        ...

    @property
    def stamp_ms(self) -> int:
        """The timestamp of events recorded in this turn (0 before the first turn)."""
        ...

    def next_event_id(self) -> int: ...

    def append(self, event: HistoryEvent) -> bool:
        """Record a new event and send its work; ``False`` if it ended the execution (history limit)."""
        ...

    def fail(self, error: DuroxideError) -> None:
        """A fatal error: the execution fails with it when the loop next settles."""
        ...


class CommandBuffer:
    """Turns commands into durable futures and resolves them; see the module docstring."""

    def __init__(self, identity: Identity, options: RuntimeOptions, matcher: HistoryMatcher, mailbox: Mailbox[str],
                 output: Output, journal: Journal) -> None:
        self.identity = identity
        self.instance_id = identity.instance_id
        self.execution_id = identity.execution_id
        self.name = identity.name
        self.version = identity.version
        self._options = options
        #: ``RuntimeOptions.queues``: the queues work may name.
        self.queues = options.queues
        self._matcher = matcher
        self._mailbox = mailbox
        self._output = output
        self._journal = journal
        # The I/O methods are generated in loop.py (they all raise), which mypy cannot see.
        self.loop: OrchestrationLoop = OrchestrationLoop(self)  # type: ignore[abstract]
        self.replaying = False
        #: Orchestration time: the timestamp of the event being applied.
        self.now_ms = 0
        self.custom_status: str | None = None
        #: (input, version) of a requested continue-as-new.
        self.continue_request: tuple[str, str | None] | None = None
        self._open: dict[int, DurableFuture[Any]] = {}
        self._kind_of: dict[int, CommandKind] = {}
        self._completed: set[int] = set()
        #: Timers cancelled (select losers, wait_for timeouts not needed): their TimerFired is never recorded.
        self._dropped_timers: set[int] = set()
        self._children: dict[int, str] = {}
        #: The grace period of a cancellation in progress (passed on to the children it cancels).
        self.cancel_grace_ms: int | None = None
        self._seq = 0
        self._task_seq: weakref.WeakKeyDictionary[asyncio.Future[Any], int] = weakref.WeakKeyDictionary()
        #: State, stream offset and update requests (what clients read besides the result).
        self.interaction = Interaction(identity.instance_id)
        #: Update requests by name, kept until a wait takes one (like external events).
        self._updates: Mailbox[UpdateArrival] = Mailbox()
        #: Typed waits (events, updates) by event id: what turns the arrival into the awaited value.
        self._decoders: dict[int, Callable[[Any], Any]] = {}

    # -- the context's interface (CommandSink) -------------------------------------

    def issue(self, command: Command) -> DurableFuture[Any]:
        """Match ``command`` with history (replay) or record it as new work; its future."""
        if self._journal.ended:
            raise ReplayAborted()
        self._check(command)
        if isinstance(command, ReplyUpdate):
            self.interaction.check_reply(command)
        try:
            event = self._matcher.match(command)
        except NonDeterminismError as err:
            self._abort(err)
        if event is None:
            event = self._record(command)
        event_id = event.event_id
        fut: DurableFuture[Any] = DurableFuture(self.loop, command.kind, event_id, label(command), self._cancelled)
        self._kind_of[event_id] = command.kind
        if isinstance(event, Event.SubOrchestrationScheduled):
            self._children[event_id] = event.instance_id
        if isinstance(command, SystemCall):
            assert isinstance(event, Event.SystemCall)
            fut.set_result(command.op.decode(event.value))
        elif isinstance(command, StartDetached):
            fut.set_result(None)
        elif isinstance(command, WaitForEvent):
            if command.decode is not None:
                self._decoders[event_id] = command.decode
            data = self._mailbox.take(command.name)
            if data is not None:
                self._resolve_wait(fut, data)
            else:
                self._mailbox.wait(fut)
        elif isinstance(command, WaitForUpdate):
            if command.decode is not None:
                self._decoders[event_id] = command.decode
            while (arrival := self._updates.take(command.name)) is not None:
                if self._offer_update(fut, arrival):
                    break
            else:
                self._updates.wait(fut)
        elif isinstance(command, (SetState, Emit, ReplyUpdate)):
            self.interaction.recorded(event)
            fut.set_result(None)
        else:
            self._open[event_id] = fut
        return fut

    def completion_order(self, fut: asyncio.Future[Any]) -> int:
        """When ``fut`` finished, relative to every other completion of this execution."""
        if isinstance(fut, DurableFuture):
            return fut.completion_seq
        return self._task_seq.get(fut, 0)

    def release_loser(self, fut: asyncio.Future[Any]) -> None:
        """A select loser: cancel it, or give back the event it consumed."""
        if not fut.done():
            fut.cancel()
        elif isinstance(fut, DurableFuture) and fut.kind is CommandKind.WAIT:
            self._mailbox.give_back(fut)
        elif isinstance(fut, DurableFuture) and fut.kind is CommandKind.WAIT_UPDATE:
            self._updates.give_back(fut)

    def set_custom_status(self, status: str | None) -> None:
        if status is not None:
            check_size(status, self._options.max_custom_status_bytes, "custom status")
        self.custom_status = status
        if not self.replaying:
            self._output.set_custom_status(status)

    def get_state(self, key: str) -> str | None:
        return self.interaction.state.get(key)

    def continue_as_new(self, input: str, version: str | None) -> None:
        check_str(input, "continue_as_new input")
        check_size(input, self._options.max_payload_bytes, "continue_as_new input")
        self.continue_request = (input, version)

    def log_fields(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "execution_id": self.execution_id,
                "orchestration": self.name, "version": self.version}

    # -- the loop's timer source (loop.TimerSource) ---------------------------------

    def now_seconds(self) -> float:
        return self.now_ms / 1000.0

    def durable_timer_at(self, when: float) -> asyncio.Future[Any]:
        delay = when - self.now_ms / 1000
        if not delay <= 0:  # a due time in the past fires at once; NaN, inf and 1e20 are refused here
            check_seconds(delay, "the delay of asyncio.sleep / asyncio.wait_for / asyncio.timeout")
        return self.issue(CreateTimer(fire_at_ms=max(self.now_ms, round(when * 1000))))

    def on_task_done(self, task: asyncio.Future[Any]) -> None:
        self._seq += 1
        self._task_seq[task] = self._seq

    # -- completions (the execution's side) -----------------------------------------

    def accepts(self, source_id: int, kind: CommandKind) -> bool:
        """Whether a new completion message should be recorded (drops stale and duplicate ones)."""
        if self._kind_of.get(source_id) is not kind:
            _log.warning("instance %r: %s completion for unknown event %s dropped", self.instance_id, kind.value,
                         source_id, extra=self.log_fields())
            return False
        if source_id in self._completed:
            _log.info("instance %r: duplicate completion for event %s dropped", self.instance_id, source_id,
                      extra=self.log_fields())
            return False
        return True

    def timer_dropped(self, event_id: int) -> bool:
        return event_id in self._dropped_timers

    def update_seen(self, request_id: str) -> bool:
        return self.interaction.seen(request_id)

    def complete(self, event: HistoryEvent) -> None:
        """Apply a completion event: resolve its future (a mismatch with the open work is fatal)."""
        source: int = getattr(event, "source_event_id")
        expected = _COMPLETES[type(event)]
        kind = self._kind_of.get(source)
        if kind is None or kind is not expected or source in self._completed:
            problem = ("no open schedule" if kind is None else
                       f"a {kind.value} schedule" if kind is not expected else "a schedule already completed")
            self._journal.fail(NonDeterminismError(
                f"replay of {self.instance_id!r}: {type(event).__name__} (event {event.event_id}) completes "
                f"event {source}, but the code has {problem} there"))
            return
        self._completed.add(source)
        fut = self._open.pop(source, None)
        if fut is None or fut.done():
            return  # a cancelled loser's late completion: recorded, but nobody waits
        self._seq += 1
        fut.completion_seq = self._seq
        if isinstance(event, (Event.ActivityCompleted, Event.SubOrchestrationCompleted)):
            fut.set_result(event.result)
        elif isinstance(event, Event.ActivityFailed):
            fut.set_exception(ActivityFailed(fut.detail, event.details))
        elif isinstance(event, Event.TimerFired):
            fut.set_result(None)
        elif isinstance(event, Event.SubOrchestrationFailed):
            fut.set_exception(SubOrchestrationFailed(fut.detail, self._children.get(source, "?"), event.details))

    def event_raised(self, name: str, data: str) -> None:
        """Apply an external event: to the oldest wait for it, else kept for a later wait."""
        fut = self._mailbox.raised(name, data)
        if fut is not None:
            self._resolve_wait(fut, data)

    def update_requested(self, event: Event.UpdateRequested) -> None:
        """Apply an update request: to the oldest wait for its name, else kept for a later wait."""
        self.interaction.requested(event)
        arrival = UpdateArrival(event.request_id, event.data)
        fut = self._updates.raised(event.name, arrival)
        try:
            if fut is not None and not self._offer_update(fut, arrival):
                self._updates.wait(fut, first=True)  # its request was rejected: it still waits, first in line
        except ReplayAborted:
            pass  # recording the rejection ended the execution (history limit, replay mismatch): the journal says why

    def cancel_open_work(self) -> None:
        """The instance is cancelled: its running activities and children are told to stop."""
        if self.replaying:
            return
        for event_id, fut in list(self._open.items()):
            if fut.kind is CommandKind.ACTIVITY:
                self._output.cancel_activity(event_id)
            elif fut.kind is CommandKind.SUB_ORCHESTRATION and event_id in self._children:
                self._output.send(CancelRequest(instance_id=self._children[event_id], reason="parent cancelled"))

    def begin_cancel(self, main: asyncio.Task[Any] | None, event: Event.OrchestrationCancelRequested) -> None:
        """The instance is cancelled: ``CancelledError`` at the code's awaits, its open work cancelled.

        ``main`` is cancelled with the reason, then every durable future still open (awaited
        by a background task, or by nobody), so that cleanup never waits on work that was
        cancelled: activities and children are told to stop, timers are deleted.
        """
        assert event.grace_ms is not None
        self.cancel_grace_ms = event.grace_ms
        if main is not None and not main.done():
            main.cancel(event.reason)
        for fut in list(self._open.values()):
            fut.cancel(event.reason)

    def grace_timer(self, event: Event.OrchestrationCancelRequested) -> DurableFuture[None]:
        """The timer that ends cleanup after a cancellation (a ``TimerCreated`` in history)."""
        assert event.grace_ms is not None
        timer: DurableFuture[None] = self.issue(CreateTimer(fire_at_ms=event.timestamp_ms + event.grace_ms))
        return timer

    def drop_open_timers(self) -> None:
        """The execution ended: timers still pending must not fire into it."""
        for event_id, fut in list(self._open.items()):
            if fut.kind is CommandKind.TIMER:
                self._dropped_timers.add(event_id)
                self._output.drop_timer(event_id)

    def close(self) -> None:
        """Stop every coroutine of this execution (it ended or was evicted)."""
        for task in self.loop.pending_tasks():
            coro = task.get_coro()
            if hasattr(coro, "close"):
                try:
                    coro.close()
                except BaseException:  # noqa: BLE001 - user finally-blocks must not crash us
                    pass
        self._open.clear()
        self.loop.close()

    # -- internals -------------------------------------------------------------------

    def _check(self, command: Command) -> None:
        for key in ("name", "input", "instance_id", "version"):
            value = getattr(command, key, None)
            if value is not None and not isinstance(value, str):  # the message is built only when it fails
                check_str(value, f"{command.kind.value} {key}")
        given = getattr(command, "input", None)
        if given is not None:
            check_size(given, self._options.max_payload_bytes, f"input of {getattr(command, 'name', None)!r}")
        if isinstance(command, (SetState, Emit)):
            check_size(command.value, self._options.max_payload_bytes, f"{command.kind.words} value")
        elif isinstance(command, ReplyUpdate) and command.result is not None:
            check_size(command.result, self._options.max_payload_bytes, f"reply to update {command.name!r}")

    def _record(self, command: Command) -> HistoryEvent:
        """The new schedule event of ``command``; unwinds the code if recording it ended the execution."""
        event = self._new_event(command, self._journal.next_event_id(), self._journal.stamp_ms, self._source(command))
        if not self._journal.append(event) or self._journal.ended:
            raise ReplayAborted()  # the history limit ended the execution
        return event

    def _source(self, command: Command) -> str | None:
        """The ``file:line`` of the orchestration code's call behind ``command`` (only ever asked live)."""
        given = getattr(command, "source", None)
        if given is not None:
            return str(given)
        # Outside the loop it is the engine that issues (a cancellation's grace timer, a
        # rejected update's reply): no orchestration code is on the stack.
        return caller_source() if self.loop.is_running() else None

    def _new_event(self, command: Command, event_id: int, ts: int, src: str | None) -> HistoryEvent:
        if isinstance(command, ScheduleActivity):
            return Event.ActivityScheduled(event_id=event_id, timestamp_ms=ts, name=command.name, input=command.input,
                                           attempt=command.attempt, first_event_id=command.first_event_id,
                                           heartbeat_timeout_ms=command.heartbeat_timeout_ms, queue=command.queue,
                                           source=src)
        if isinstance(command, CreateTimer):
            return Event.TimerCreated(event_id=event_id, timestamp_ms=ts, fire_at_ms=command.fire_at_ms, source=src)
        if isinstance(command, (ScheduleSubOrchestration, StartDetached)):
            child = command.instance_id or f"{self.instance_id}::sub::{event_id}"
            cls = Event.SubOrchestrationScheduled if isinstance(command, ScheduleSubOrchestration) \
                else Event.OrchestrationChained
            return cls(event_id=event_id, timestamp_ms=ts, name=command.name, version=command.version,
                       instance_id=child, input=command.input, source=src)
        if isinstance(command, WaitForEvent):
            return Event.EventSubscribed(event_id=event_id, timestamp_ms=ts, name=command.name, source=src)
        if isinstance(command, SetState):
            return Event.StateSet(event_id=event_id, timestamp_ms=ts, key=command.key, value=command.value, source=src)
        if isinstance(command, Emit):
            return Event.StreamEmitted(event_id=event_id, timestamp_ms=ts, offset=self.interaction.stream_next,
                                       value=command.value, source=src)
        if isinstance(command, WaitForUpdate):
            return Event.UpdateSubscribed(event_id=event_id, timestamp_ms=ts, name=command.name, source=src)
        if isinstance(command, ReplyUpdate):
            return Event.UpdateReplied(event_id=event_id, timestamp_ms=ts, request_id=command.request_id,
                                       name=command.name, result=command.result, rejected=command.rejected,
                                       source=src)
        wall_clock_ms = self._journal.stamp_ms or int(time.time() * 1000)
        return Event.SystemCall(event_id=event_id, timestamp_ms=ts, op=command.op.value,
                                value=command.op.generate(wall_clock_ms), source=src)

    def _resolve_wait(self, fut: DurableFuture[Any], data: str) -> None:
        self._seq += 1
        fut.completion_seq = self._seq
        self._mailbox.took(fut, data)
        decode = self._decoders.pop(fut.event_id, None)
        if decode is None:
            fut.set_result(data)
            return
        try:
            value = decode(data)
        except Exception as err:  # noqa: BLE001 - the typed wait raises it: orchestration code may catch it
            fut.set_exception(err)
        else:
            fut.set_result(value)

    def _offer_update(self, fut: DurableFuture[Any], arrival: UpdateArrival) -> bool:
        """Resolve an update wait with ``arrival``; ``False`` if its data was rejected (``fut`` still waits)."""
        decode = self._decoders.get(fut.event_id)
        try:
            value = decode(arrival) if decode is not None else arrival
        except Exception as err:  # noqa: BLE001 - data that does not decode: the client is told, the code is not
            reason = str(err) or type(err).__name__
            self.issue(ReplyUpdate(request_id=arrival.request_id, name=fut.detail, rejected=reason))
            return False
        self._decoders.pop(fut.event_id, None)
        self._seq += 1
        fut.completion_seq = self._seq
        self._updates.took(fut, arrival)
        fut.set_result(value)
        return True

    def _cancelled(self, fut: DurableFuture[Any]) -> None:
        """A durable future was cancelled (lost a select, timed out, dropped)."""
        self._open.pop(fut.event_id, None)
        if fut.kind is CommandKind.WAIT:
            self._mailbox.forget(fut)
        elif fut.kind is CommandKind.WAIT_UPDATE:
            self._updates.forget(fut)
        if fut.kind is CommandKind.TIMER:
            self._dropped_timers.add(fut.event_id)  # also while replaying: a late TimerFired is then ignored
        if self.replaying or self._journal.ended:
            return
        if fut.kind is CommandKind.TIMER:
            self._output.drop_timer(fut.event_id)
        elif fut.kind is CommandKind.ACTIVITY:
            self._output.cancel_activity(fut.event_id)
        elif fut.kind is CommandKind.SUB_ORCHESTRATION and fut.event_id in self._children:
            self._output.send(CancelRequest(instance_id=self._children[fut.event_id], reason="cancelled by parent",
                                            grace_ms=self.cancel_grace_ms))

    def _abort(self, error: DuroxideError) -> NoReturn:
        self._journal.fail(error)
        raise ReplayAborted()
