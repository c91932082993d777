"""The replay engine: one execution of an orchestration, driven by history.

How a turn works (SEMANTICS 1-9):

1. ``replay(history)`` re-runs the code against the recorded events. Each
   durable call the code makes is matched, in order, with the next recorded
   schedule event (same kind, name and input); completions are applied one at
   a time in history order, and the loop runs until blocked after each. So a
   select winner is always the earliest completion in history.
2. ``deliver(message)`` turns each new queue message into a history event,
   applies it the same way, and collects what the code asked for: new
   events, activity work, timers, children, messages to other instances.
3. ``take_output()`` hands that to the dispatcher, which commits it
   atomically with the consumed messages.

An execution kept in memory between turns only ever sees step 2 again, so a
long history costs O(new events) per turn; replaying from scratch must give
the same events, which the tests check.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .context import ContinueAsNewSignal, DurableFuture, OrchestrationContext
from .errors import (
    ActivityFailed,
    DuroxideError,
    ErrorDetails,
    NonDeterminismError,
    NonDeterministicOperationError,
    PayloadError,
    PayloadTooLargeError,
    SubOrchestrationFailed,
)
from .history import Event, HistoryEvent
from .limits import check_seconds
from .loop import OrchestrationLoop
from .messages import (
    ActivityResult,
    ActivityWork,
    CancelRequest,
    ExternalEvent,
    OrchestratorMessage,
    PoisonNotice,
    StartOrchestration,
    SubOrchestrationResult,
    TimerFired,
)
from .options import RuntimeOptions
from .tracecontext import child_of

__all__ = ["Execution", "Outcome", "TurnOutput", "OrchestrationFn", "safe_error_details", "storable_text",
           "text_problem"]

_log = logging.getLogger("duroxide.replay")

OrchestrationFn = Callable[[OrchestrationContext, str], Any]

# Which schedule event kind each completion may complete.
_COMPLETES = {
    Event.ActivityCompleted: "activity",
    Event.ActivityFailed: "activity",
    Event.TimerFired: "timer",
    Event.SubOrchestrationCompleted: "sub",
    Event.SubOrchestrationFailed: "sub",
}
_SCHEDULE_KIND = {
    Event.ActivityScheduled: "activity",
    Event.TimerCreated: "timer",
    Event.SubOrchestrationScheduled: "sub",
    Event.OrchestrationChained: "detached",
    Event.EventSubscribed: "wait",
    Event.SystemCall: "system",
}


_TERMINAL_EVENTS: dict[type[HistoryEvent], str] = {
    Event.OrchestrationCompleted: "Completed",
    Event.OrchestrationFailed: "Failed",
    Event.OrchestrationContinuedAsNew: "ContinuedAsNew",
}


class _ReplayAborted(BaseException):
    """Unwinds orchestration code after a fatal replay error; user code cannot catch it by accident."""


@dataclass(frozen=True)
class Outcome:
    """How an execution ended: ``status`` is Completed, Failed or ContinuedAsNew."""

    status: str
    output: str | None = None
    error: ErrorDetails | None = None
    next_input: str | None = None
    next_version: str | None = None


@dataclass
class TurnOutput:
    """Everything one turn produced, to be committed atomically."""

    new_events: list[HistoryEvent] = field(default_factory=list)
    activities: list[ActivityWork] = field(default_factory=list)
    #: (message, visible_at_ms or None for "now")
    messages: list[tuple[OrchestratorMessage, int | None]] = field(default_factory=list)
    cancelled_activities: list[int] = field(default_factory=list)
    #: Event ids of timers whose TimerFired, queued in an earlier turn, must be deleted.
    cancelled_timers: list[int] = field(default_factory=list)
    custom_status: str | None = None
    custom_status_changed: bool = False


class Execution:
    """One execution of one orchestration instance, live on its own deterministic loop.

    Example (what the dispatcher does)::

        ex = Execution(fn, "inst-1", 1, "Hello", "1.0.0", options)
        ex.begin_turn(now_ms)              # first: stamps and collects this turn's events
        ex.replay(history)                 # events already stored
        for msg in messages: ex.deliver(msg)
        out = ex.take_output()             # commit out.new_events, out.activities, ...
    """

    def __init__(self, fn: OrchestrationFn, instance_id: str, execution_id: int, name: str,
                 version: str, options: RuntimeOptions) -> None:
        self.fn = fn
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.name = name
        self.version = version
        self.options = options
        #: The instance row's incarnation (unique per creation of the id); the live cache
        #: only reuses this execution for the same incarnation.
        self.incarnation: str | None = None
        # The I/O methods are generated in loop.py (they all raise), which mypy cannot see.
        self.loop = OrchestrationLoop(self)  # type: ignore[abstract]
        self.ctx = OrchestrationContext(self)
        self.history: list[HistoryEvent] = []
        self.replaying = False
        self.outcome: Outcome | None = None
        self.now_ms = 0
        self.parent: tuple[str, int, int] | None = None
        self.custom_status: str | None = None
        #: Trace context of this execution and of its starter (recorded in OrchestrationStarted).
        self.trace_context: str | None = None
        self.parent_trace_context: str | None = None
        self._main: asyncio.Task[Any] | None = None
        self._recorded: collections.deque[HistoryEvent] = collections.deque()
        self._unapplied_prior = 0
        self._open: dict[int, DurableFuture[Any]] = {}
        self._kind_of: dict[int, str] = {}
        self._completed: set[int] = set()
        #: Timers cancelled (select losers, wait_for timeouts not needed): their TimerFired is never recorded.
        self._dropped_timers: set[int] = set()
        self._waits: dict[str, collections.deque[DurableFuture[Any]]] = collections.defaultdict(collections.deque)
        self._buffered: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._delivered: dict[int, tuple[str, str]] = {}
        self._seq = 0
        self._task_seq: weakref.WeakKeyDictionary[asyncio.Future[Any], int] = weakref.WeakKeyDictionary()
        self._fatal: DuroxideError | None = None
        self._continue: tuple[str, str | None] | None = None
        self._turn_now_ms = 0
        self._out = TurnOutput()

    # -- driving -----------------------------------------------------------------

    def replay(self, history: Sequence[HistoryEvent]) -> None:
        """Re-run the code against events recorded in earlier turns (no side effects)."""
        if not history or not isinstance(history[0], Event.OrchestrationStarted):
            raise NonDeterminismError(f"history of {self.instance_id!r} does not begin with OrchestrationStarted")
        self.history = list(history)
        self._recorded = collections.deque(e for e in history if e.is_schedule)
        self._unapplied_prior = len(history)
        self.replaying = True
        try:
            for event in history:
                self._unapplied_prior -= 1
                if self.outcome is None and not event.is_schedule:
                    self._apply(event)
        finally:
            self.replaying = False
            self._unapplied_prior = 0
        if self.outcome is None and self._recorded and self._fatal is None:
            self._fail_fatal(NonDeterminismError(
                f"replay of {self.instance_id!r}: history records {_describe(self._recorded[0])} "
                "but the code no longer schedules it"))
            self._settle()

    def begin_turn(self, now_ms: int) -> None:
        """Start collecting a new turn's output; ``now_ms`` stamps the new events."""
        self._turn_now_ms = now_ms
        self._out = TurnOutput()

    def start(self, msg: StartOrchestration, version: str) -> None:
        """Record ``OrchestrationStarted`` for a brand-new execution and run the code."""
        self.parent = (
            (msg.parent_instance_id, msg.parent_execution_id or 1, msg.parent_event_id or 0)
            if msg.parent_instance_id is not None and msg.parent_event_id is not None else None)
        self._record(Event.OrchestrationStarted(
            event_id=1, timestamp_ms=self._turn_now_ms, name=msg.name, version=version, input=msg.input,
            parent_instance_id=msg.parent_instance_id, parent_execution_id=msg.parent_execution_id,
            parent_event_id=msg.parent_event_id, trace_context=child_of(msg.trace_context),
            parent_trace_context=msg.trace_context))

    def deliver(self, msg: OrchestratorMessage) -> None:
        """Apply one new message (a no-op once the execution has ended)."""
        if self.outcome is not None:
            if isinstance(msg, ExternalEvent) and self.outcome.status == "ContinuedAsNew":
                self._out.messages.append((msg, None))  # carried over to the next execution
            return
        ts = self._turn_now_ms
        nid = len(self.history) + 1
        event: HistoryEvent | None = None
        if isinstance(msg, ActivityResult):
            if self._accepts(msg.event_id, "activity"):
                event = (Event.ActivityCompleted(event_id=nid, timestamp_ms=ts, source_event_id=msg.event_id,
                                                 result=msg.result or "")
                         if msg.error is None else
                         Event.ActivityFailed(event_id=nid, timestamp_ms=ts, source_event_id=msg.event_id,
                                              details=msg.error))
        elif isinstance(msg, TimerFired):
            if msg.event_id in self._dropped_timers:
                # Its deletion was committed with the turn that cancelled it, but a message
                # fetched in the same batch as that turn's other messages still arrives.
                _log.debug("instance %r: cancelled timer %s ignored", self.instance_id, msg.event_id,
                           extra=self.log_fields())
            elif self._accepts(msg.event_id, "timer"):
                event = Event.TimerFired(event_id=nid, timestamp_ms=ts, source_event_id=msg.event_id,
                                         fire_at_ms=msg.fire_at_ms)
        elif isinstance(msg, SubOrchestrationResult):
            if self._accepts(msg.event_id, "sub"):
                event = (Event.SubOrchestrationCompleted(event_id=nid, timestamp_ms=ts,
                                                         source_event_id=msg.event_id, result=msg.result or "")
                         if msg.error is None else
                         Event.SubOrchestrationFailed(event_id=nid, timestamp_ms=ts,
                                                      source_event_id=msg.event_id, details=msg.error))
        elif isinstance(msg, ExternalEvent):
            event = Event.EventRaised(event_id=nid, timestamp_ms=ts, name=msg.name, data=msg.data)
        elif isinstance(msg, CancelRequest):
            event = Event.OrchestrationCancelRequested(event_id=nid, timestamp_ms=ts, reason=msg.reason)
        elif isinstance(msg, PoisonNotice):
            self._finish(Outcome("Failed", error=ErrorDetails("PoisonMessageError", msg.reason)))
            return
        elif isinstance(msg, StartOrchestration):
            _log.warning("instance %r: duplicate start for execution %s ignored", self.instance_id, msg.execution_id,
                         extra=self.log_fields())
        if event is not None:
            self._record(event)

    def take_output(self) -> TurnOutput:
        """What this turn produced since :meth:`begin_turn`."""
        out, self._out = self._out, TurnOutput()
        return out

    def dispose(self) -> None:
        """Stop every coroutine of this execution (it ended or was evicted)."""
        self.outcome = self.outcome or Outcome("Disposed")
        for task in self.loop.pending_tasks():
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            coro = task.get_coro()
            if hasattr(coro, "close"):
                try:
                    coro.close()
                except BaseException:  # noqa: BLE001 - user finally-blocks must not crash us
                    pass
        self._open.clear()
        self.loop.close()

    # -- services the context uses -----------------------------------------------

    def now_seconds(self) -> float:
        return self.now_ms / 1000.0

    def wall_clock_ms(self) -> int:
        return self._turn_now_ms or int(time.time() * 1000)

    def durable_timer_at(self, when: float) -> asyncio.Future[Any]:
        delay = when - self.now_ms / 1000
        if not delay <= 0:  # a due time in the past fires at once; NaN, inf and 1e20 are refused here
            check_seconds(delay, "the delay of asyncio.sleep / asyncio.wait_for / asyncio.timeout")
        return self.schedule("timer", fire_at_ms=max(self.now_ms, round(when * 1000)))

    def on_task_done(self, task: asyncio.Future[Any]) -> None:
        self._seq += 1
        self._task_seq[task] = self._seq

    def completion_order(self, fut: asyncio.Future[Any]) -> int:
        """When ``fut`` finished, relative to every other completion of this execution."""
        if isinstance(fut, DurableFuture):
            return fut.completion_seq
        return self._task_seq.get(fut, 0)

    def log_fields(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "execution_id": self.execution_id,
                "orchestration": self.name, "version": self.version}

    def set_custom_status(self, status: str | None) -> None:
        if status is not None:
            _check_size(status, self.options.max_custom_status_bytes, "custom status")
        self.custom_status = status
        if not self.replaying:
            self._out.custom_status = status
            self._out.custom_status_changed = True

    def request_continue_as_new(self, input: str, version: str | None) -> None:
        _check_str(input, "continue_as_new input")
        _check_size(input, self.options.max_payload_bytes, "continue_as_new input")
        self._continue = (input, version)

    def schedule(self, kind: str, **spec: Any) -> DurableFuture[Any]:
        """Match a durable call with history (replay) or record it as new work."""
        if self.outcome is not None:
            raise _ReplayAborted()
        for key in ("name", "input", "instance_id", "version"):
            value = spec.get(key)
            if value is not None:
                _check_str(value, f"{kind} {key}")
        if "input" in spec:
            _check_size(spec["input"], self.options.max_payload_bytes, f"input of {spec.get('name')!r}")
        if self._recorded:
            event = self._recorded.popleft()
            self._match(kind, spec, event)
            event_id = event.event_id
            if isinstance(event, Event.SystemCall):
                spec["value"] = event.value
            if isinstance(event, Event.SubOrchestrationScheduled):
                spec["instance_id"] = event.instance_id
        elif self._unapplied_prior:
            self._abort(NonDeterminismError(
                f"replay of {self.instance_id!r}: the code schedules {_describe_spec(kind, spec)} "
                "where history has no such call"))
        else:
            event_id = len(self.history) + 1
            self._record_schedule(kind, event_id, spec)
            if self.outcome is not None:
                raise _ReplayAborted()  # the history limit ended the execution
        fut: DurableFuture[Any] = DurableFuture(self, kind, event_id, spec.get("name") or spec.get("op") or "")
        self._kind_of[event_id] = kind
        if kind == "system":
            convert = spec.get("convert")
            fut.set_result(convert(spec["value"]) if convert else spec["value"])
        elif kind == "detached":
            fut.set_result(None)
        elif kind == "wait":
            name = spec["name"]
            if self._buffered[name]:
                self._resolve_wait(fut, self._buffered[name].popleft())
            else:
                self._waits[name].append(fut)
        else:
            self._open[event_id] = fut
        return fut

    def on_future_cancelled(self, fut: DurableFuture[Any]) -> None:
        """A durable future was cancelled (lost a select, timed out, dropped)."""
        self._open.pop(fut.event_id, None)
        if fut.kind == "wait":
            waits = self._waits.get(fut.detail)
            if waits and fut in waits:
                waits.remove(fut)
        if fut.kind == "timer":
            self._dropped_timers.add(fut.event_id)  # also while replaying: a late TimerFired is then ignored
        if self.replaying or self.outcome is not None:
            return
        if fut.kind == "timer":
            self._drop_timer(fut.event_id)
        elif fut.kind == "activity":
            self._out.cancelled_activities.append(fut.event_id)
        elif fut.kind == "sub":
            child = self._child_id(fut.event_id)
            if child:
                self._out.messages.append((CancelRequest(instance_id=child, reason="cancelled by parent"), None))

    def release_loser(self, fut: asyncio.Future[Any]) -> None:
        """A select loser: cancel it, or give back the event it consumed."""
        if not fut.done():
            fut.cancel()
        elif isinstance(fut, DurableFuture) and fut.kind == "wait" and fut.event_id in self._delivered:
            name, data = self._delivered.pop(fut.event_id)
            self._buffered[name].appendleft(data)

    # -- internals ---------------------------------------------------------------

    def _drop_timer(self, event_id: int) -> None:
        """A timer nobody waits for must not fire (it would cost a turn and a TimerFired event).

        Created in this turn: its TimerFired is not committed yet, so it is just left
        out; created earlier: the turn's commit deletes the queued message.
        """
        before = len(self._out.messages)
        self._out.messages = [(m, at) for m, at in self._out.messages
                              if not (isinstance(m, TimerFired) and m.event_id == event_id
                                      and m.execution_id == self.execution_id)]
        if len(self._out.messages) == before and event_id not in self._out.cancelled_timers:
            self._out.cancelled_timers.append(event_id)

    def _record(self, event: HistoryEvent) -> bool:
        """Append a new event (and apply it); ``False`` if the execution ended (history limit)."""
        self.history.append(event)
        self._out.new_events.append(event)
        if len(self.history) > self.options.max_history_events and self.outcome is None:
            self._finish(Outcome("Failed", error=ErrorDetails(
                "HistoryTooLongError",
                f"execution has more than {self.options.max_history_events} events; "
                "use ctx.continue_as_new to start a fresh history")))
            return False
        if not event.is_schedule:
            self._apply(event)
        return True

    def _record_schedule(self, kind: str, event_id: int, spec: dict[str, Any]) -> None:
        ts = self._turn_now_ms
        x = self
        if kind == "activity":
            if not self._record(Event.ActivityScheduled(event_id=event_id, timestamp_ms=ts, name=spec["name"],
                                                        input=spec["input"])):
                return
            self._out.activities.append(ActivityWork(instance_id=x.instance_id, execution_id=x.execution_id,
                                                     event_id=event_id, name=spec["name"], input=spec["input"],
                                                     trace_context=x.trace_context))
        elif kind == "timer":
            fire_at = spec["fire_at_ms"]
            if not self._record(Event.TimerCreated(event_id=event_id, timestamp_ms=ts, fire_at_ms=fire_at)):
                return
            self._out.messages.append((TimerFired(instance_id=x.instance_id, execution_id=x.execution_id,
                                                  event_id=event_id, fire_at_ms=fire_at), fire_at))
        elif kind in ("sub", "detached"):
            child = spec["instance_id"] or f"{x.instance_id}::sub::{event_id}"
            spec["instance_id"] = child
            cls = Event.SubOrchestrationScheduled if kind == "sub" else Event.OrchestrationChained
            if not self._record(cls(event_id=event_id, timestamp_ms=ts, name=spec["name"],
                                    version=spec["version"], instance_id=child, input=spec["input"])):
                return
            is_sub = kind == "sub"
            self._out.messages.append((StartOrchestration(
                instance_id=child, name=spec["name"], version=spec["version"], input=spec["input"],
                parent_instance_id=x.instance_id if is_sub else None,
                parent_execution_id=x.execution_id if is_sub else None,
                parent_event_id=event_id if is_sub else None, trace_context=x.trace_context), None))
        elif kind == "wait":
            self._record(Event.EventSubscribed(event_id=event_id, timestamp_ms=ts, name=spec["name"]))
        elif kind == "system":
            spec["value"] = spec["make"]()
            self._record(Event.SystemCall(event_id=event_id, timestamp_ms=ts, op=spec["op"], value=spec["value"]))

    def _match(self, kind: str, spec: dict[str, Any], event: HistoryEvent) -> None:
        recorded_kind = _SCHEDULE_KIND.get(type(event))
        same = recorded_kind == kind
        if same and isinstance(event, Event.ActivityScheduled):
            same = event.name == spec["name"] and event.input == spec["input"]
        elif same and isinstance(event, (Event.SubOrchestrationScheduled, Event.OrchestrationChained)):
            same = (event.name == spec["name"] and event.input == spec["input"]
                    and (spec["instance_id"] is None or spec["instance_id"] == event.instance_id))
        elif same and isinstance(event, Event.EventSubscribed):
            same = event.name == spec["name"]
        elif same and isinstance(event, Event.SystemCall):
            same = event.op == spec["op"]
        if not same:
            self._abort(NonDeterminismError(
                f"replay of {self.instance_id!r}: expected {_describe(event)} (event {event.event_id}) "
                f"from history, but the code scheduled {_describe_spec(kind, spec)}"))

    def _abort(self, error: DuroxideError) -> NoReturn:
        self._fail_fatal(error)
        raise _ReplayAborted()

    def _fail_fatal(self, error: DuroxideError) -> None:
        if self._fatal is None:
            self._fatal = error

    def _accepts(self, source_id: int, kind: str) -> bool:
        """Whether a new completion message should be recorded (drops stale and duplicate ones)."""
        if self._kind_of.get(source_id) != kind:
            _log.warning("instance %r: %s completion for unknown event %s dropped", self.instance_id, kind, source_id,
                         extra=self.log_fields())
            return False
        if source_id in self._completed:
            _log.info("instance %r: duplicate completion for event %s dropped", self.instance_id, source_id,
                      extra=self.log_fields())
            return False
        return True

    def _apply(self, event: HistoryEvent) -> None:
        self.now_ms = event.timestamp_ms
        if isinstance(event, Event.OrchestrationStarted):
            self.trace_context = event.trace_context
            self.parent_trace_context = event.parent_trace_context
            self.parent = ((event.parent_instance_id, event.parent_execution_id or 1, event.parent_event_id)
                           if event.parent_instance_id is not None and event.parent_event_id is not None else None)
            try:
                coro = self.fn(self.ctx, event.input)
                self._main = self.loop.create_task(coro, name=f"orchestration {self.name}")
            except Exception as exc:  # noqa: BLE001 - the user's function failed to start
                self._finish(Outcome("Failed", error=safe_error_details(exc)))
                return
        elif type(event) in _COMPLETES:
            self._complete(event)
        elif isinstance(event, Event.EventRaised):
            waits = self._waits.get(event.name)
            if waits:
                self._resolve_wait(waits.popleft(), event.data)
            else:
                self._buffered[event.name].append(event.data)
        elif isinstance(event, Event.OrchestrationCancelRequested):
            self._cancel_children_and_activities()
            self._finish(Outcome("Failed", error=ErrorDetails("OrchestrationCancelled", event.reason)))
            return
        else:
            return
        self._settle()

    def _complete(self, event: HistoryEvent) -> None:
        source = getattr(event, "source_event_id")
        expected = _COMPLETES[type(event)]
        kind = self._kind_of.get(source)
        if kind is None or kind != expected or source in self._completed:
            problem = ("no open schedule" if kind is None else
                       f"a {kind} schedule" if kind != expected else "a schedule already completed")
            self._fail_fatal(NonDeterminismError(
                f"replay of {self.instance_id!r}: {type(event).__name__} (event {event.event_id}) completes "
                f"event {source}, but the code has {problem} there"))
            return
        self._completed.add(source)
        fut = self._open.pop(source, None)
        if fut is None or fut.done():
            return  # a cancelled loser's late completion: recorded, but nobody waits
        self._seq += 1
        fut.completion_seq = self._seq
        if isinstance(event, Event.ActivityCompleted):
            fut.set_result(event.result)
        elif isinstance(event, Event.ActivityFailed):
            fut.set_exception(ActivityFailed(fut.detail, event.details))
        elif isinstance(event, Event.TimerFired):
            fut.set_result(None)
        elif isinstance(event, Event.SubOrchestrationCompleted):
            fut.set_result(event.result)
        elif isinstance(event, Event.SubOrchestrationFailed):
            fut.set_exception(SubOrchestrationFailed(fut.detail, self._child_id(source) or "?", event.details))

    def _resolve_wait(self, fut: DurableFuture[Any], data: str) -> None:
        self._seq += 1
        fut.completion_seq = self._seq
        self._delivered[fut.event_id] = (fut.detail, data)
        fut.set_result(data)

    def _child_id(self, event_id: int) -> str | None:
        event = self.history[event_id - 1] if 0 < event_id <= len(self.history) else None
        return event.instance_id if isinstance(event, Event.SubOrchestrationScheduled) else None

    def _cancel_children_and_activities(self) -> None:
        if self.replaying:
            return
        for event_id, fut in list(self._open.items()):
            if fut.kind == "activity":
                self._out.cancelled_activities.append(event_id)
            elif fut.kind == "sub":
                child = self._child_id(event_id)
                if child:
                    self._out.messages.append((CancelRequest(instance_id=child, reason="parent cancelled"), None))

    def _settle(self) -> None:
        """Run until blocked, then see whether the execution has ended."""
        if self.outcome is not None:
            return
        self.loop.run_ready()
        stray = self.loop.take_exception()
        if stray is not None and self._fatal is None and not isinstance(stray, (_ReplayAborted, ContinueAsNewSignal)):
            _log.debug("instance %r: error in a callback: %r", self.instance_id, stray, extra=self.log_fields())
        if self._fatal is not None:
            self._finish(Outcome("Failed", error=ErrorDetails(type(self._fatal).__name__, str(self._fatal))))
        elif self._continue is not None:
            self._finish(Outcome("ContinuedAsNew", next_input=self._continue[0], next_version=self._continue[1]))
        elif self._main is not None and self._main.done():
            self._finish(self._main_outcome(self._main))

    def _main_outcome(self, main: asyncio.Task[Any]) -> Outcome:
        if main.cancelled():
            return Outcome("Failed", error=ErrorDetails("CancelledError", "the orchestration task was cancelled"))
        exc = main.exception()
        if exc is None:
            result = main.result()
            if not isinstance(result, str):
                return Outcome("Failed", error=ErrorDetails.from_exception(PayloadError(
                    f"orchestration {self.name!r} returned {type(result).__name__}, but a string-API "
                    "orchestration must return str", fix="return a str (e.g. json.dumps(value)), "
                    "or declare it with @orchestration for typed output")))
            try:
                _check_size(result, self.options.max_payload_bytes, f"output of {self.name!r}")
            except PayloadError as err:  # too large, or text the store cannot hold
                return Outcome("Failed", error=ErrorDetails.from_exception(err))
            return Outcome("Completed", output=result)
        if isinstance(exc, RuntimeError) and "attached to a different loop" in str(exc):
            exc = NonDeterministicOperationError("awaiting a future of another event loop (real I/O)")
        return Outcome("Failed", error=safe_error_details(exc))

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        last = self.history[-1] if self.history else None
        if (self.replaying and self._fatal is None and last is not None
                and _TERMINAL_EVENTS.get(type(last)) == outcome.status):
            return  # a finished history ending the same way: its end and its messages are recorded
        ts = self._turn_now_ms
        nid = len(self.history) + 1
        if outcome.status == "Completed":
            terminal: HistoryEvent = Event.OrchestrationCompleted(event_id=nid, timestamp_ms=ts,
                                                                  output=outcome.output or "")
        elif outcome.status == "Failed":
            assert outcome.error is not None
            terminal = Event.OrchestrationFailed(event_id=nid, timestamp_ms=ts, details=outcome.error)
        else:
            terminal = Event.OrchestrationContinuedAsNew(event_id=nid, timestamp_ms=ts,
                                                         input=outcome.next_input or "",
                                                         version=outcome.next_version)
        self.history.append(terminal)
        self._out.new_events.append(terminal)
        # Timers still pending belong to an execution that has ended: they must not fire into it.
        for event_id, fut in list(self._open.items()):
            if fut.kind == "timer":
                self._dropped_timers.add(event_id)
                self._drop_timer(event_id)
        if outcome.status == "ContinuedAsNew":
            self._out.messages.append((StartOrchestration(
                instance_id=self.instance_id, name=self.name, version=outcome.next_version,
                input=outcome.next_input or "", execution_id=self.execution_id + 1,
                parent_instance_id=self.parent[0] if self.parent else None,
                parent_execution_id=self.parent[1] if self.parent else None,
                parent_event_id=self.parent[2] if self.parent else None,
                trace_context=self.parent_trace_context), None))
            for name, queue in self._buffered.items():
                for data in queue:
                    self._out.messages.append((ExternalEvent(instance_id=self.instance_id, name=name, data=data), None))
        elif self.parent is not None:
            p_instance, p_execution, p_event = self.parent
            self._out.messages.append((SubOrchestrationResult(
                instance_id=p_instance, execution_id=p_execution, event_id=p_event,
                result=outcome.output, error=outcome.error), None))


def _check_str(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be str, got {type(value).__name__}",
                           fix="encode it first (e.g. json.dumps(value)), or use the typed @activity/@orchestration helpers")
    _check_text(value, what)


def text_problem(text: str) -> str | None:
    """Why a store cannot hold ``text`` (``None`` if it can).

    Every store writes UTF-8; a lone surrogate (what ``os.fsdecode`` or
    ``errors="surrogateescape"`` make of bytes that are not UTF-8) has no UTF-8
    form, and would fail the whole write it is part of.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"it contains the lone surrogate {text[err.start]!r} at index {err.start}, which no store can "
                "encode (text decoded with errors='surrogateescape', e.g. os.fsdecode() of bytes that are not UTF-8)")
    return None


def _check_text(value: str, what: str) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise PayloadError(f"{what} cannot be stored: {problem}",
                           fix="pass valid Unicode text: decode bytes with errors='replace', or carry binary "
                               "data as base64")


def storable_text(text: str) -> str:
    """``text`` with anything a store cannot encode made visible as an escape (``\\udcff``).

    For diagnostics (error messages, tracebacks), where showing the text matters
    more than keeping it byte for byte.
    """
    return text if text_problem(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_error_details(exc: BaseException) -> ErrorDetails:
    """``ErrorDetails.from_exception`` that never raises and always gives storable text.

    An exception's ``__str__`` is user code: it may raise, or return text with
    lone surrogates. Either used to escape recording, so the call or turn was
    redone until it was poisoned (issue 10, defects 1 and 10b); the error is
    recorded with a fallback message instead.
    """
    kind = type(exc).__name__
    try:
        message = str(exc)
    except Exception as err:  # noqa: BLE001 - a broken __str__ must not stop recording the failure
        message = f"<str() of this {kind} raised {type(err).__name__}; the message is lost>"
    try:
        # traceback.format_exception calls str(exc) too, but guards it itself.
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001 - diagnostics only
        text = ""
    return ErrorDetails(storable_text(kind), storable_text(message), storable_text(text))


def _check_size(value: str, limit: int, what: str) -> None:
    if isinstance(value, str):
        _check_text(value, what)
    size = len(value) if len(value) * 4 <= limit else len(value.encode())
    if size > limit:
        raise PayloadTooLargeError(f"{what} is {size} bytes, over the limit of {limit}",
                                   fix="store large data elsewhere and pass a reference, or raise the limit in RuntimeOptions")


_KIND_WORDS = {"activity": "activity", "timer": "a timer", "sub": "sub-orchestration",
               "detached": "detached orchestration", "wait": "a wait for event", "system": "system call"}


def _describe(event: HistoryEvent) -> str:
    kind = _SCHEDULE_KIND.get(type(event), type(event).__name__)
    return _describe_spec(kind, {k: getattr(event, k) for k in ("name", "op", "input") if hasattr(event, k)})


def _describe_spec(kind: str, spec: dict[str, Any]) -> str:
    name = spec.get("name") or spec.get("op")
    text = _KIND_WORDS.get(kind, kind) + (f" {name!r}" if name is not None else "")
    return text + (f" with input {spec['input']!r}" if spec.get("input") is not None else "")
