"""The history matcher: each command of a replay must be the next recorded schedule event (SEMANTICS 3).

Example::

    matcher = HistoryMatcher("order-1")
    matcher.load(history)                          # before replaying it
    event = matcher.match(ScheduleActivity("A", "x"))  # the recorded ActivityScheduled, or None: new work
    matcher.unmatched()                            # after replay: a recorded call the code no longer makes
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from ..errors import NonDeterminismError
from ..history import Event, HistoryEvent
from .commands import (
    Command,
    CommandKind,
    CreateTimer,
    Emit,
    ReplyUpdate,
    ScheduleActivity,
    ScheduleSubOrchestration,
    SetState,
    StartDetached,
    SystemCall,
    WaitForEvent,
    WaitForUpdate,
    describe,
)

__all__ = ["HistoryMatcher", "describe_event"]

_SCHEDULE_KIND: dict[type[HistoryEvent], CommandKind] = {
    Event.ActivityScheduled: CommandKind.ACTIVITY,
    Event.TimerCreated: CommandKind.TIMER,
    Event.SubOrchestrationScheduled: CommandKind.SUB_ORCHESTRATION,
    Event.OrchestrationChained: CommandKind.DETACHED,
    Event.EventSubscribed: CommandKind.WAIT,
    Event.SystemCall: CommandKind.SYSTEM,
    Event.StateSet: CommandKind.SET_STATE,
    Event.StreamEmitted: CommandKind.EMIT,
    Event.UpdateSubscribed: CommandKind.WAIT_UPDATE,
    Event.UpdateReplied: CommandKind.REPLY,
}


def describe_event(event: HistoryEvent) -> str:
    """A recorded schedule event in error messages, worded like :func:`~.commands.describe`."""
    kind = _SCHEDULE_KIND.get(type(event))
    text = kind.words if kind is not None else type(event).__name__
    if isinstance(event, (Event.StateSet, Event.StreamEmitted)):
        key = f" {event.key!r}" if isinstance(event, Event.StateSet) else ""
        return f"{text}{key} with value {event.value!r}"
    if isinstance(event, Event.UpdateReplied):
        return f"{text} {event.request_id!r}" + (f" with result {event.result!r}" if event.rejected is None
                                                 else f" rejected with {event.rejected!r}")
    name = getattr(event, "name", None) or getattr(event, "op", None)
    given = getattr(event, "input", None)
    return text + (f" {name!r}" if name is not None else "") + (f" with input {given!r}" if given is not None else "")


def _same(command: Command, event: HistoryEvent) -> bool:
    if isinstance(command, ScheduleActivity):
        return (isinstance(event, Event.ActivityScheduled)
                and event.name == command.name and event.input == command.input)
    if isinstance(command, CreateTimer):
        return isinstance(event, Event.TimerCreated)  # matched by position: the due time moves with the clock
    if isinstance(command, (ScheduleSubOrchestration, StartDetached)):
        recorded = Event.SubOrchestrationScheduled if isinstance(command, ScheduleSubOrchestration) \
            else Event.OrchestrationChained
        return (isinstance(event, recorded) and event.name == command.name and event.input == command.input
                and (command.instance_id is None or command.instance_id == event.instance_id))
    if isinstance(command, WaitForEvent):
        return isinstance(event, Event.EventSubscribed) and event.name == command.name
    if isinstance(command, SetState):
        return isinstance(event, Event.StateSet) and event.key == command.key and event.value == command.value
    if isinstance(command, Emit):
        return isinstance(event, Event.StreamEmitted) and event.value == command.value
    if isinstance(command, WaitForUpdate):
        return isinstance(event, Event.UpdateSubscribed) and event.name == command.name
    if isinstance(command, ReplyUpdate):
        return (isinstance(event, Event.UpdateReplied) and event.request_id == command.request_id
                and event.result == command.result and event.rejected == command.rejected)
    return isinstance(event, Event.SystemCall) and event.op == command.op.value


class HistoryMatcher:
    """Matches new commands, in order, with the schedule events of the history being replayed."""

    def __init__(self, instance_id: str) -> None:
        self._instance_id = instance_id
        self._recorded: collections.deque[HistoryEvent] = collections.deque()
        self._unapplied = 0

    def load(self, history: Sequence[HistoryEvent]) -> None:
        """Expect the schedule events of ``history``; :meth:`applied` counts its events down."""
        self._recorded = collections.deque(e for e in history if e.is_schedule)
        self._unapplied = len(history)

    def applied(self) -> None:
        """One more event of the loaded history has been applied."""
        self._unapplied -= 1

    def replay_done(self) -> None:
        """The whole loaded history is applied: from here, commands with no recorded event are new work."""
        self._unapplied = 0

    def match(self, command: Command) -> HistoryEvent | None:
        """The recorded schedule event ``command`` replays, or ``None`` for new work.

        Raises :class:`NonDeterminismError` naming both sides when they differ, or when
        the code makes a call while recorded events are still to be applied.
        """
        if self._recorded:
            event = self._recorded.popleft()
            if not _same(command, event):
                raise NonDeterminismError(
                    f"replay of {self._instance_id!r}: expected {describe_event(event)} (event {event.event_id}) "
                    f"from history, but the code scheduled {describe(command)}")
            return event
        if self._unapplied:
            raise NonDeterminismError(f"replay of {self._instance_id!r}: the code schedules {describe(command)} "
                                      "where history has no such call")
        return None

    def unmatched(self) -> NonDeterminismError | None:
        """After a replay: the error for a recorded call the code no longer makes (``None`` if all matched)."""
        if not self._recorded:
            return None
        return NonDeterminismError(f"replay of {self._instance_id!r}: history records "
                                   f"{describe_event(self._recorded[0])} but the code no longer schedules it")
