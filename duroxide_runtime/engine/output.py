"""What a turn produced: new events, outgoing work, cancellations; and how an execution ended.

The dispatcher commits a :class:`TurnOutput` atomically with the messages the
turn consumed. :class:`Output` builds it while the turn runs; the work each
new schedule event sends out is derived from that event alone (:meth:`Output.send_work`).

Example::

    out = Output("order-1", execution_id=1)
    out.record(event)                 # a new history event ...
    out.send_work(event, trace_ctx)   # ... and the activity, timer or start it sends
    turn = out.take()                 # TurnOutput for the commit; a fresh one starts
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ErrorDetails
from ..history import Event, HistoryEvent
from ..messages import ActivityWork, OrchestratorMessage, StartOrchestration, TimerFired
from ..queues import DEFAULT_QUEUE, QueueOptions

__all__ = ["Status", "Outcome", "TurnOutput", "Output", "TERMINAL_STATUSES", "LIVE_STATUSES"]


class Status(enum.StrEnum):
    """Where an execution stands after a turn; the values are the stores' status strings.

    Example: ``Status.CONTINUED_AS_NEW == "ContinuedAsNew"``.
    """

    RUNNING = "Running"
    #: Running, but ``suspend_instance`` stopped its code until ``resume_instance``.
    SUSPENDED = "Suspended"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CONTINUED_AS_NEW = "ContinuedAsNew"


#: Stored statuses after which an instance takes no more work: the one definition of
#: "terminal". Stores never decide it; they get it as data (``only_if_status_in=...``).
TERMINAL_STATUSES: frozenset[str] = frozenset({Status.COMPLETED.value, Status.FAILED.value})
#: Stored statuses of an instance that still takes messages: created ("Pending", the status
#: every store gives a new row), running (a continued-as-new instance runs on) or suspended
#: (what arrives is kept for when it resumes).
LIVE_STATUSES: frozenset[str] = frozenset({"Pending", Status.RUNNING.value, Status.SUSPENDED.value})


@dataclass(frozen=True)
class Outcome:
    """How an execution ended: ``Outcome(Status.COMPLETED, output="done")``.

    ``next_input`` and ``next_version`` are set for ``CONTINUED_AS_NEW``, ``error`` for ``FAILED``.
    """

    status: Status
    output: str | None = None
    error: ErrorDetails | None = None
    next_input: str | None = None
    next_version: str | None = None


@dataclass
class TurnOutput:
    """Everything one turn produced, to be committed atomically.

    Example: ``TurnOutput().new_events == []`` (a turn that changed nothing).
    """

    new_events: list[HistoryEvent] = field(default_factory=list)
    activities: list[ActivityWork] = field(default_factory=list)
    #: (message, visible_at_ms or None for "now")
    messages: list[tuple[OrchestratorMessage, int | None]] = field(default_factory=list)
    cancelled_activities: list[int] = field(default_factory=list)
    #: Event ids of timers whose TimerFired, queued in an earlier turn, must be deleted.
    cancelled_timers: list[int] = field(default_factory=list)
    custom_status: str | None = None
    custom_status_changed: bool = False

    def is_empty(self) -> bool:
        """Nothing to commit but the consumed messages."""
        return (not self.new_events and not self.activities and not self.messages
                and not self.cancelled_activities and not self.cancelled_timers and not self.custom_status_changed)


class Output:
    """Builds the :class:`TurnOutput` of the running turn for one execution.

    ``queues`` (``RuntimeOptions.queues``) gives the priority of activity calls whose
    instance was started without one.
    """

    def __init__(self, instance_id: str, execution_id: int,
                 queues: Mapping[str, QueueOptions] | None = None) -> None:
        self._instance_id = instance_id
        self._execution_id = execution_id
        self._queues = queues or {}
        self._out = TurnOutput()
        #: The instance's concurrency key and priority (set from ``OrchestrationStarted``).
        self.concurrency_key: str | None = None
        self.priority: int | None = None

    def take(self) -> TurnOutput:
        """This turn's output; the next turn starts empty."""
        out, self._out = self._out, TurnOutput()
        return out

    def record(self, event: HistoryEvent) -> None:
        """A new history event."""
        self._out.new_events.append(event)

    def send(self, message: OrchestratorMessage, visible_at_ms: int | None = None) -> None:
        """A message to enqueue (to this or another instance) with the commit."""
        self._out.messages.append((message, visible_at_ms))

    def send_work(self, event: HistoryEvent, trace_context: str | None) -> None:
        """The outgoing work of a new schedule event: an activity, a timer, a child's start."""
        iid, xid = self._instance_id, self._execution_id
        if isinstance(event, Event.ActivityScheduled):
            queue = event.queue or DEFAULT_QUEUE
            priority = self.priority
            if priority is None:
                options = self._queues.get(queue)
                priority = 0 if options is None else options.priority
            self._out.activities.append(ActivityWork(instance_id=iid, execution_id=xid, event_id=event.event_id,
                                                     name=event.name, input=event.input, trace_context=trace_context,
                                                     attempt=event.attempt, first_event_id=event.first_event_id,
                                                     heartbeat_timeout_ms=event.heartbeat_timeout_ms, queue=queue,
                                                     concurrency_key=self.concurrency_key, priority=priority))
        elif isinstance(event, Event.TimerCreated):
            self.send(TimerFired(instance_id=iid, execution_id=xid, event_id=event.event_id,
                                 fire_at_ms=event.fire_at_ms), event.fire_at_ms)
        elif isinstance(event, (Event.SubOrchestrationScheduled, Event.OrchestrationChained)):
            is_sub = isinstance(event, Event.SubOrchestrationScheduled)
            self.send(StartOrchestration(
                instance_id=event.instance_id, name=event.name, version=event.version, input=event.input,
                parent_instance_id=iid if is_sub else None, parent_execution_id=xid if is_sub else None,
                parent_event_id=event.event_id if is_sub else None, trace_context=trace_context,
                concurrency_key=self.concurrency_key if is_sub else None, priority=self.priority if is_sub else None))

    def cancel_activity(self, event_id: int) -> None:
        """Tell the activity of ``event_id`` to stop (a lost select, a dropped future, a cancelled instance)."""
        self._out.cancelled_activities.append(event_id)

    def drop_timer(self, event_id: int) -> None:
        """A timer nobody waits for must not fire (it would cost a turn and a TimerFired event).

        Created in this turn: its TimerFired is not committed yet, so it is just left
        out; created earlier: the turn's commit deletes the queued message.
        """
        before = len(self._out.messages)
        self._out.messages = [(m, at) for m, at in self._out.messages
                              if not (isinstance(m, TimerFired) and m.event_id == event_id
                                      and m.execution_id == self._execution_id)]
        if len(self._out.messages) == before and event_id not in self._out.cancelled_timers:
            self._out.cancelled_timers.append(event_id)

    def set_custom_status(self, status: str | None) -> None:
        """The custom status changed in this turn."""
        self._out.custom_status = status
        self._out.custom_status_changed = True
