"""The turn function: history + new messages + now -> :class:`TurnResult` (SEMANTICS 1-9).

One entry, two ways to hold it:

* :func:`execute` runs one turn from scratch: it replays ``turn.history``
  (or starts the execution from the ``StartOrchestration`` among the
  messages), delivers the messages, and disposes of the execution;
* :meth:`Execution.run_turn` does the same on an execution kept live between
  turns (the dispatcher's instance cache): its first turn replays, later
  turns only deliver, so a long history costs O(new events) per turn.
  Both give the same output; the tests check it.

How a turn works: the code re-runs against the recorded events; each command
it issues is matched, in order, with the next recorded schedule event (same
kind, name and input), and completions are applied one at a time in history
order, the loop running until blocked after each, so a select winner is
always the earliest completion in history. Each new message then becomes a
history event applied the same way, and what the code asks for becomes new
events and outgoing work in the :class:`~.output.TurnOutput`.

Example::

    result = execute(hello, TurnInput(now_ms=now, history=stored, messages=[ActivityResult(...)]))
    result.status                # Status.RUNNING, COMPLETED, FAILED or CONTINUED_AS_NEW
    result.output.new_events     # to append to the history
    result.output.activities     # work to enqueue, with result.output.messages ...

    ex = Execution(hello, "inst-1", 1, "Hello", "1.0.0", options)     # kept live between turns
    ex.run_turn(TurnInput(now_ms=now, messages=[start]))
    ex.run_turn(TurnInput(now_ms=later, messages=[ActivityResult(...)]))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..context import ContinueAsNewSignal, OrchestrationContext
from ..errors import DuroxideError, ErrorDetails, NonDeterminismError, NonDeterministicOperationError, PayloadError
from ..history import Event, HistoryEvent
from ..loop import is_foreign_future_error
from ..messages import (
    CancelRequest, ClientUpdate, ExternalEvent, OrchestratorMessage, RewindRequest, StartOrchestration,
    SubOrchestrationResult, TimerFired,
)
from ..options import RuntimeOptions
from ..tracecontext import child_of
from .buffer import CommandBuffer, Identity, ReplayAborted, is_completion
from .commands import CommandKind
from .inbox import Completions, EndExecution, Inbox, Mailbox
from .matcher import HistoryMatcher
from .output import Outcome, Output, Status, TurnOutput
from .payloads import check_size, safe_error_details
from .recovery import RewindPlan, RewindRefused, effective_history, plan_rewind, rewind_refusal

__all__ = ["Execution", "TurnInput", "TurnResult", "ReplayStats", "OrchestrationFn", "execute",
           "timers_in_due_order"]

_log = logging.getLogger("duroxide.replay")

OrchestrationFn = Callable[[OrchestrationContext, str], Any]

_TERMINAL_EVENTS: dict[type[HistoryEvent], Status] = {
    Event.OrchestrationCompleted: Status.COMPLETED,
    Event.OrchestrationFailed: Status.FAILED,
    Event.OrchestrationContinuedAsNew: Status.CONTINUED_AS_NEW,
}


@dataclass(frozen=True)
class TurnInput:
    """One turn's input: ``TurnInput(now_ms=now, history=stored, messages=[msg, ...])``.

    ``history`` is what the store holds for the execution; an execution that is
    already live (a later :meth:`Execution.run_turn`) has it and ignores it.
    ``now_ms`` stamps the turn's new events.
    """

    now_ms: int
    messages: Sequence[OrchestratorMessage] = ()
    history: Sequence[HistoryEvent] = ()


@dataclass(frozen=True)
class ReplayStats:
    """A from-scratch turn replayed ``events`` stored events in ``seconds``."""

    events: int
    seconds: float


@dataclass(frozen=True)
class TurnResult:
    """What one turn produced: ``output`` to commit, and the ``outcome`` if the execution ended.

    Example: ``TurnResult(TurnOutput(), None).status is Status.RUNNING``.
    """

    output: TurnOutput
    outcome: Outcome | None = None
    replayed: ReplayStats | None = field(default=None, compare=False)
    #: The execution is suspended after the turn (``suspend_instance``): it runs no code until resumed.
    suspended: bool = False

    @property
    def status(self) -> Status:
        """``RUNNING`` (or ``SUSPENDED``) until the execution ends, then how it ended."""
        if self.outcome is not None:
            return self.outcome.status
        return Status.SUSPENDED if self.suspended else Status.RUNNING


def timers_in_due_order(messages: Sequence[OrchestratorMessage]) -> list[OrchestratorMessage]:
    """Timers that fell due together (say, after a restart) fire in due order, not enqueue order.

    Other messages keep their places; only the timers among them are reordered.
    """
    slots = [i for i, m in enumerate(messages) if isinstance(m, TimerFired)]
    result = list(messages)
    if len(slots) < 2:
        return result
    timers = [m for m in messages if isinstance(m, TimerFired)]
    for i, timer in zip(slots, sorted(timers, key=lambda m: (m.fire_at_ms, m.event_id))):
        result[i] = timer
    return result


def execute(fn: OrchestrationFn, turn: TurnInput, *, instance_id: str = "instance", execution_id: int = 1,
            options: RuntimeOptions | None = None) -> TurnResult:
    """One turn from scratch; the execution is disposed of afterwards.

    Name and version come from the history's ``OrchestrationStarted``, or from the
    ``StartOrchestration`` among the messages of a first turn.

    Example::

        result = execute(hello, TurnInput(now_ms=1000, messages=[StartOrchestration(...)]))
        assert [type(e).__name__ for e in result.output.new_events] == ["OrchestrationStarted", "ActivityScheduled"]
    """
    first = turn.history[0] if turn.history else None
    start = next((m for m in turn.messages if isinstance(m, StartOrchestration)), None)
    if isinstance(first, Event.OrchestrationStarted):
        name, version = first.name, first.version
    elif start is not None and first is None:
        name, version = start.name, start.version or ""
    else:
        raise NonDeterminismError(f"the turn of {instance_id!r} has no history beginning with OrchestrationStarted "
                                  "and no StartOrchestration message")
    ex = Execution(fn, instance_id, execution_id, name, version, options or RuntimeOptions())
    try:
        return ex.run_turn(turn)
    finally:
        ex.dispose()


class _Held(Completions):
    """Events recorded while suspended, not applied yet; the inbox asks it which arrivals are new.

    A held completion or update request is recorded but its call is still open in the
    command buffer: a duplicate of it arriving before the resume must be dropped too.
    """

    def __init__(self, commands: CommandBuffer) -> None:
        self._commands = commands
        self.events: list[HistoryEvent] = []
        self._sources: set[int] = set()
        self._requests: set[str] = set()

    def keep(self, event: HistoryEvent) -> None:
        self.events.append(event)
        if is_completion(event):
            self._sources.add(getattr(event, "source_event_id"))
        elif isinstance(event, Event.UpdateRequested):
            self._requests.add(event.request_id)

    def take(self) -> list[HistoryEvent]:
        events, self.events = self.events, []
        self._sources.clear()
        self._requests.clear()
        return events

    def accepts(self, source_id: int, kind: CommandKind) -> bool:
        return source_id not in self._sources and self._commands.accepts(source_id, kind)

    def timer_dropped(self, event_id: int) -> bool:
        return self._commands.timer_dropped(event_id)

    def update_seen(self, request_id: str) -> bool:
        return request_id in self._requests or self._commands.update_seen(request_id)


class Execution:
    """One execution of one orchestration instance, live on its own deterministic loop.

    Example::

        ex = Execution(fn, "inst-1", 1, "Hello", "1.0.0", options)
        result = ex.run_turn(TurnInput(now_ms=now, history=stored, messages=new))
        ...                                   # commit result.output; keep ex for the next turn
        ex.dispose()                          # once it ended or is evicted
    """

    def __init__(self, fn: OrchestrationFn, instance_id: str, execution_id: int, name: str,
                 version: str, options: RuntimeOptions, *, incarnation: str | None = None) -> None:
        self.fn = fn
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.name = name
        self.version = version
        self.options = options
        #: The instance row's incarnation (unique per creation of the id); the live cache
        #: only reuses this execution for the same incarnation.
        self.incarnation = incarnation
        self.history: list[HistoryEvent] = []
        self.outcome: Outcome | None = None
        self.parent: tuple[str, int, int] | None = None
        #: Trace context of this execution and of its starter (recorded in OrchestrationStarted).
        self.trace_context: str | None = None
        self.parent_trace_context: str | None = None
        #: The instance's deadline (``start_orchestration(deadline=)``), carried over at continue-as-new.
        self.deadline_ms: int | None = None
        self._output = Output(instance_id, execution_id, options.queues)
        self._matcher = HistoryMatcher(instance_id)
        self._mailbox: Mailbox[str] = Mailbox()
        self._commands = CommandBuffer(Identity(instance_id, execution_id, name, version), options,
                                       self._matcher, self._mailbox, self._output, self)
        self._held = _Held(self._commands)
        self._inbox = Inbox(self._held, self._commands.log_fields, lambda: self._suspended is not None)
        self.ctx = OrchestrationContext(self._commands)
        self._main: asyncio.Task[Any] | None = None
        self._fatal: DuroxideError | None = None
        #: The cancellation being cleaned up after, the timer of its grace period (recorded
        #: once cleanup first blocks), and whether that period is over.
        self._cancel: Event.OrchestrationCancelRequested | None = None
        self._grace_timer: asyncio.Future[Any] | None = None
        self._grace_over = False
        #: Suspension (``suspend_instance``): while set, arrivals are recorded but kept here,
        #: applied in recorded order when the execution resumes.
        self._suspended: Event.OrchestrationSuspended | None = None
        #: The kind of ending the replayed history records (``None``: it records none, or a
        #: rewind voided it): a replay that ends the same way records nothing new.
        self._recorded_end: Status | None = None
        self._stamp_ms = 0
        self._disposed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The deterministic loop the code runs on."""
        return self._commands.loop

    @property
    def replaying(self) -> bool:
        return self._commands.replaying

    @property
    def suspended(self) -> bool:
        """Whether the execution is suspended (it runs no code until resumed)."""
        return self._suspended is not None and self.outcome is None

    @property
    def reusable(self) -> bool:
        """Whether a later turn may run on this execution (it has not ended nor been disposed of)."""
        return self.outcome is None and not self._disposed

    # -- the turn ----------------------------------------------------------------------

    def run_turn(self, turn: TurnInput) -> TurnResult:
        """Run one turn; the first one on this execution replays ``turn.history`` (or starts it)."""
        self._begin(turn.now_ms)
        messages = list(turn.messages)
        replayed = None
        if not self.history:
            if turn.history:
                started_at = time.perf_counter()
                history = list(turn.history)
                rewind = next((m for m in messages if isinstance(m, RewindRequest)), None)
                plan = self._plan_rewind(history, rewind) if rewind is not None else None
                if rewind is not None:
                    messages.remove(rewind)
                if isinstance(plan, RewindPlan):
                    assert rewind is not None
                    history.append(self._record_rewind(rewind, plan, len(history) + 1))
                self._replay(history)
                replayed = ReplayStats(len(turn.history), time.perf_counter() - started_at)
                if isinstance(plan, RewindPlan) and self.outcome is None:
                    self._send_again(plan, rewind)
            else:
                start = next((m for m in messages if isinstance(m, StartOrchestration)), None)
                if start is None:
                    raise NonDeterminismError(f"the first turn of {self.instance_id!r} has neither history "
                                              "nor a StartOrchestration message")
                self._start(start)
                messages = [m for m in messages if m is not start]
        for msg in timers_in_due_order(messages):
            self._deliver(msg)
        return TurnResult(self._output.take(), self.outcome, replayed, self.suspended)

    def dispose(self) -> None:
        """Stop every coroutine of this execution (it ended or was evicted)."""
        self._disposed = True
        self._commands.close()

    # -- the journal the command buffer writes to (buffer.Journal) -----------------------

    @property
    def ended(self) -> bool:
        return self.outcome is not None or self._disposed

    @property
    def stamp_ms(self) -> int:
        return self._stamp_ms

    def next_event_id(self) -> int:
        return len(self.history) + 1

    def append(self, event: HistoryEvent) -> bool:
        """Record a new event and apply it or send its work; ``False`` if the history limit ended the execution."""
        self.history.append(event)
        self._output.record(event)
        if len(self.history) > self.options.max_history_events and self.outcome is None:
            self._finish(Outcome(Status.FAILED, error=ErrorDetails(
                "HistoryTooLongError",
                f"execution has more than {self.options.max_history_events} events; "
                "use ctx.continue_as_new to start a fresh history")))
            return False
        if event.is_schedule:
            self._output.send_work(event, self.trace_context)
        else:
            self._apply(event)
        return True

    def fail(self, error: DuroxideError) -> None:
        if self._fatal is None:
            self._fatal = error

    # -- steps of a turn -----------------------------------------------------------------

    def _begin(self, now_ms: int) -> None:
        self._stamp_ms = now_ms
        self._output.take()  # nothing is produced between turns; start clean regardless

    def _replay(self, history: Sequence[HistoryEvent]) -> None:
        """Re-run the code against events recorded in earlier turns (no side effects)."""
        if not history or not isinstance(history[0], Event.OrchestrationStarted):
            raise NonDeterminismError(f"history of {self.instance_id!r} does not begin with OrchestrationStarted")
        self.history = list(history)
        effective = effective_history(history)  # without what rewinds voided
        self._recorded_end = next((_TERMINAL_EVENTS[type(e)] for e in reversed(effective)
                                   if type(e) in _TERMINAL_EVENTS), None)
        self._matcher.load(effective)
        self._commands.replaying = True
        try:
            for event in effective:
                self._matcher.applied()
                if self.outcome is None and not event.is_schedule:
                    self._apply(event)
        finally:
            self._commands.replaying = False
            self._matcher.replay_done()
        unmatched = self._matcher.unmatched() if self.outcome is None and self._fatal is None else None
        if unmatched is not None:
            self.fail(unmatched)
            self._settle()

    def _start(self, msg: StartOrchestration) -> None:
        """Record ``OrchestrationStarted`` for a brand-new execution and run the code."""
        self.append(Event.OrchestrationStarted(
            event_id=1, timestamp_ms=self._stamp_ms, name=msg.name, version=self.version, input=msg.input,
            parent_instance_id=msg.parent_instance_id, parent_execution_id=msg.parent_execution_id,
            parent_event_id=msg.parent_event_id, trace_context=child_of(msg.trace_context),
            parent_trace_context=msg.trace_context, state=msg.state, stream_offset=msg.stream_offset,
            deadline_ms=msg.deadline_ms, concurrency_key=msg.concurrency_key, priority=msg.priority))

    def _deliver(self, msg: OrchestratorMessage) -> None:
        """Apply one new message (a no-op once the execution has ended)."""
        if isinstance(msg, RewindRequest):
            self._refuse_rewind(msg, RewindRefused("it is not failed" if self.outcome is None
                                                   else f"it ended {self.outcome.status.value}"))
            return
        if self.outcome is not None:
            # Carried over to the next execution: events and update requests nobody took yet,
            # and a cancellation (the instance's: a deadline, or cancel_instance) that came too late
            # for this one.
            if (isinstance(msg, (ExternalEvent, ClientUpdate, CancelRequest))
                    and self.outcome.status is Status.CONTINUED_AS_NEW):
                self._output.send(msg)
            return
        if isinstance(msg, CancelRequest) and self._cancel is not None:
            return  # already cancelled and cleaning up: a repeated cancel changes nothing
        arrival = self._inbox.arrival(msg, len(self.history) + 1, self._stamp_ms)
        if isinstance(arrival, EndExecution):
            self._finish(Outcome(Status.FAILED, error=arrival.error))
        elif arrival is not None:
            self.append(arrival)

    def _apply(self, event: HistoryEvent, at_ms: int | None = None) -> None:
        self._commands.now_ms = event.timestamp_ms if at_ms is None else at_ms
        if isinstance(event, Event.OrchestrationSuspended):
            self._suspended = event
            return
        if isinstance(event, Event.OrchestrationResumed):
            self._release(event.timestamp_ms)
            return
        if self._suspended is not None:
            if isinstance(event, Event.OrchestrationCancelRequested):
                # Cancelling a suspended instance ends it: the cancellation reaches the code
                # first, then its cleanup sees what arrived while it was suspended.
                self._suspended = None
                held = self._held.take()
                self._apply(event, at_ms)
                for kept in held:
                    if self.outcome is None:
                        self._apply(kept, event.timestamp_ms)
                return
            if not isinstance(event, Event.OrchestrationStarted):
                self._held.keep(event)
                return
        if isinstance(event, Event.OrchestrationStarted):
            self.trace_context = event.trace_context
            self.parent_trace_context = event.parent_trace_context
            self.deadline_ms = event.deadline_ms
            self._output.concurrency_key, self._output.priority = event.concurrency_key, event.priority
            self.parent = ((event.parent_instance_id, event.parent_execution_id or 1, event.parent_event_id)
                           if event.parent_instance_id is not None and event.parent_event_id is not None else None)
            self._commands.interaction.begin(event.state, event.stream_offset)
            try:
                coro = self.fn(self.ctx, event.input)
                self._main = self.loop.create_task(coro, name=f"orchestration {self.name}",
                                                   context=self._commands.loop.task_context(self.ctx))
            except Exception as exc:  # noqa: BLE001 - the user's function failed to start
                self._finish(Outcome(Status.FAILED, error=safe_error_details(exc)))
                return
        elif is_completion(event):
            self._commands.complete(event)
        elif isinstance(event, Event.EventRaised):
            self._commands.event_raised(event.name, event.data)
        elif isinstance(event, Event.UpdateRequested):
            self._commands.update_requested(event)
        elif isinstance(event, Event.OrchestrationCancelRequested):
            if event.grace_ms is None:  # recorded before cleanup on cancel existed: it ended there
                self._commands.cancel_open_work()
                self._finish(Outcome(Status.FAILED, error=ErrorDetails("OrchestrationCancelled", event.reason)))
                return
            self._cancel = event
            self._grace_over = not event.grace_ms
            self._commands.begin_cancel(self._main, event)
        else:
            return
        self._settle()

    def _release(self, at_ms: int) -> None:
        """End the suspension: what arrived meanwhile is applied now, in the order it was recorded."""
        self._suspended = None
        for event in self._held.take():
            if self.outcome is None:
                self._apply(event, at_ms)

    # -- rewind (engine/recovery.py) ------------------------------------------------------

    def _plan_rewind(self, history: list[HistoryEvent], request: RewindRequest) -> RewindPlan | RewindRefused:
        """Whether this stored execution can be rewound for ``request``; a refusal is answered here."""
        plan = plan_rewind(history)
        started = history[0] if history and isinstance(history[0], Event.OrchestrationStarted) else None
        if (isinstance(plan, RewindPlan) and request.parent_instance_id is not None and started is not None
                and (started.parent_instance_id, started.parent_event_id)
                != (request.parent_instance_id, request.parent_event_id)):
            plan = RewindRefused(f"instance {self.instance_id!r} was not started by that call of "
                                 f"{request.parent_instance_id!r}")
        if isinstance(plan, RewindRefused):
            self._refuse_rewind(request, plan)
        return plan

    def _record_rewind(self, request: RewindRequest, plan: RewindPlan, event_id: int) -> HistoryEvent:
        event = Event.OrchestrationRewound(event_id=event_id, timestamp_ms=self._stamp_ms, reason=request.reason,
                                           by=request.by, voided=list(plan.voided))
        self._output.record(event)  # recorded before replay: what the replay records comes after it
        return event

    def _send_again(self, plan: RewindPlan, request: RewindRequest | None) -> None:
        """The calls the voided failures answered go out once more: activities, and failed children."""
        assert request is not None
        for call in plan.activities:
            self._output.send_work(call, self.trace_context)
        for child in plan.children:
            self._output.send(RewindRequest(
                instance_id=child.instance_id, reason=request.reason, by=request.by or self.instance_id,
                parent_instance_id=self.instance_id, parent_execution_id=self.execution_id,
                parent_event_id=child.event_id))

    def _refuse_rewind(self, request: RewindRequest, refused: RewindRefused) -> None:
        """A rewind that cannot happen changes nothing; a rewinding parent hears its child's failure again."""
        _log.warning("instance %r: rewind refused: %s", self.instance_id, refused.why,
                     extra=self._commands.log_fields())
        answer = rewind_refusal(request, self.instance_id, refused)
        if answer is not None:
            self._output.send(answer)

    def _settle(self) -> None:
        """Run until blocked, then see whether the execution has ended."""
        if self.outcome is not None:
            return
        loop = self._commands.loop
        loop.run_ready()
        for stray in loop.take_exceptions():
            if not isinstance(stray, (ReplayAborted, ContinueAsNewSignal)) and not self._commands.replaying:
                # Like asyncio, a callback's error does not end the orchestration, but it is
                # orchestration code's bug: said once, when it happens (not again on replay).
                _log.warning("instance %r: orchestration code raised in a callback: %s: %s", self.instance_id,
                             type(stray).__name__, stray, exc_info=stray, extra=self._commands.log_fields())
        request = self._commands.continue_request
        if self._fatal is not None:
            self._finish(Outcome(Status.FAILED, error=ErrorDetails.from_exception(self._fatal)))
        elif self._cancel is not None:
            if self._grace_over or request is not None or (self._main is not None and self._main.done()):
                self._commands.cancel_open_work()  # what cleanup left running is told to stop
                self._finish(self._cancelled_outcome(self._cancel))
            elif self._grace_timer is None:
                try:
                    self._grace_timer = self._commands.grace_timer(self._cancel)
                except ReplayAborted:  # recording it ended the execution (history limit) or did not match
                    if self._fatal is not None:
                        self._finish(Outcome(Status.FAILED, error=ErrorDetails.from_exception(self._fatal)))
                    return
                self._grace_timer.add_done_callback(self._end_of_grace)
        elif request is not None:
            self._finish(Outcome(Status.CONTINUED_AS_NEW, next_input=request[0], next_version=request[1]))
        elif self._main is not None and self._main.done():
            self._finish(self._main_outcome(self._main))

    def _end_of_grace(self, timer: asyncio.Future[Any]) -> None:
        if not timer.cancelled():
            self._grace_over = True

    def _cancelled_outcome(self, cancel: Event.OrchestrationCancelRequested) -> Outcome:
        """A cancelled execution ends Failed with the reason, however its cleanup ended."""
        main = self._main
        reason = cancel.reason
        if main is not None and not main.done() and cancel.grace_ms:
            reason += f" (its cleanup was still running when the grace period of {cancel.grace_ms / 1000:g} s ended)"
        elif main is not None and main.done() and not main.cancelled() and main.exception() is not None:
            exc = main.exception()
            reason += f" (its cleanup raised {type(exc).__name__}: {exc})"
        return Outcome(Status.FAILED, error=ErrorDetails("OrchestrationCancelled", reason))

    def _main_outcome(self, main: asyncio.Task[Any]) -> Outcome:
        if main.cancelled():
            return Outcome(Status.FAILED, error=ErrorDetails("CancelledError", "the orchestration task was cancelled"))
        exc = main.exception()
        if exc is None:
            result = main.result()
            if not isinstance(result, str):
                return Outcome(Status.FAILED, error=ErrorDetails.from_exception(PayloadError(
                    f"orchestration {self.name!r} returned {type(result).__name__}, but a string-API "
                    "orchestration must return str", fix="return a str (e.g. json.dumps(value)), "
                    "or declare it with @orchestration for typed output")))
            try:
                check_size(result, self.options.max_payload_bytes, f"output of {self.name!r}")
            except PayloadError as err:  # too large, or text the store cannot hold
                return Outcome(Status.FAILED, error=ErrorDetails.from_exception(err))
            return Outcome(Status.COMPLETED, output=result)
        if is_foreign_future_error(exc):
            exc = NonDeterministicOperationError("awaiting a future of another event loop (real I/O)")
        return Outcome(Status.FAILED, error=safe_error_details(exc))

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self.replaying and self._fatal is None and self._recorded_end == outcome.status:
            return  # a finished history ending the same way: its end and its messages are recorded
        self._record_terminal(outcome)
        self._commands.drop_open_timers()  # timers still pending belong to an execution that has ended
        if outcome.status is Status.CONTINUED_AS_NEW:
            interaction = self._commands.interaction  # state and stream offset carry over, like custom status
            self._output.send(StartOrchestration(
                instance_id=self.instance_id, name=self.name, version=outcome.next_version,
                input=outcome.next_input or "", execution_id=self.execution_id + 1,
                parent_instance_id=self.parent[0] if self.parent else None,
                parent_execution_id=self.parent[1] if self.parent else None,
                parent_event_id=self.parent[2] if self.parent else None,
                trace_context=self.parent_trace_context,
                state=dict(interaction.state) or None, stream_offset=interaction.stream_next,
                deadline_ms=self.deadline_ms,  # its cancellation stays queued for the instance
                concurrency_key=self._output.concurrency_key, priority=self._output.priority))
            for name, data in self._mailbox.unconsumed():
                self._output.send(ExternalEvent(instance_id=self.instance_id, name=name, data=data))
            for name, arrival in interaction.unanswered():  # the next execution may still answer them
                self._output.send(ClientUpdate(instance_id=self.instance_id, request_id=arrival.request_id,
                                               name=name, data=arrival.data))
        elif self.parent is not None:
            p_instance, p_execution, p_event = self.parent
            self._output.send(SubOrchestrationResult(
                instance_id=p_instance, execution_id=p_execution, event_id=p_event,
                result=outcome.output, error=outcome.error))

    def _record_terminal(self, outcome: Outcome) -> None:
        ts, nid = self._stamp_ms, len(self.history) + 1
        terminal: HistoryEvent
        if outcome.status is Status.COMPLETED:
            terminal = Event.OrchestrationCompleted(event_id=nid, timestamp_ms=ts, output=outcome.output or "")
        elif outcome.status is Status.FAILED:
            assert outcome.error is not None
            terminal = Event.OrchestrationFailed(event_id=nid, timestamp_ms=ts, details=outcome.error)
        else:
            terminal = Event.OrchestrationContinuedAsNew(event_id=nid, timestamp_ms=ts, input=outcome.next_input or "",
                                                         version=outcome.next_version)
        self.history.append(terminal)
        self._output.record(terminal)
