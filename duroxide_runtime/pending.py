"""What an instance waits on: the durable calls of its current execution that have no completion yet.

An execution is blocked on the schedule events its code recorded that nothing
has answered: an activity without ``ActivityCompleted``/``ActivityFailed``, a
timer that has not fired, a sub-orchestration without its result, a wait for an
external event or an update that no arrival has taken. Each carries the
``source`` (``"file.py:42"``) of the call that made it, so an operator sees
where in the code the instance stands. Event and update waits are matched to
arrivals per name, first in first out, as the engine does (an arrival kept before
its wait is taken by the first wait that comes). An execution that has ended
waits on nothing; events a rewind voided (``OrchestrationRewound.voided``) count
as never recorded, so the calls they answered are open again.

Example::

    for call in pending_calls(await client.read_history("order-1")):
        print(call.kind, call.name, "at", call.source or "?")
    # activity Charge at shop/orders.py:42
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .engine.recovery import effective_history
from .history import Event, HistoryEvent

__all__ = ["PendingKind", "PendingCall", "pending_calls"]


class PendingKind(StrEnum):
    """The kind of durable call an execution waits on."""

    ACTIVITY = "activity"
    TIMER = "timer"
    SUB_ORCHESTRATION = "sub-orchestration"
    EVENT = "event"
    UPDATE = "update"


@dataclass(frozen=True)
class PendingCall:
    """One durable call without a completion.

    ``name``: the activity, orchestration, event or update name (``None`` for a timer);
    ``event_id``: its schedule event; ``source``: ``"file.py:42"`` of the call, ``None``
    when unknown (the engine's own timers, older histories); ``scheduled_at_ms``: when it
    was recorded; ``fire_at_ms``: a timer's due time; ``child_instance_id``: a
    sub-orchestration's instance; ``attempt``: an activity's attempt.

    Example::

        PendingCall(PendingKind.TIMER, None, 4, "flows.py:12", 1_700_000_000_000, fire_at_ms=1_700_000_060_000)
    """

    kind: PendingKind
    name: str | None
    event_id: int
    source: str | None
    scheduled_at_ms: int
    fire_at_ms: int | None = None
    child_instance_id: str | None = None
    attempt: int = 1

    def describe(self) -> str:
        """A few words for people: ``activity 'Charge'``, ``timer``, ``event 'approval'``."""
        return self.kind.value if self.name is None else f"{self.kind.value} {self.name!r}"

    def as_json(self) -> dict[str, object]:
        """Its fields as JSON values (``kind`` as its string), as the UI's API and ``duroxide show --json`` give it."""
        return {**dataclasses.asdict(self), "kind": str(self.kind)}


#: Events that end an execution: after one, nothing is pending.
_ENDINGS = (Event.OrchestrationCompleted, Event.OrchestrationFailed, Event.OrchestrationContinuedAsNew)


def pending_calls(history: Sequence[HistoryEvent]) -> list[PendingCall]:
    """The durable calls of one execution's ``history`` still waiting, in the order they were made.

    Example::

        calls = pending_calls(await client.read_history("order-1"))
        [c.source for c in calls]   # ['shop/orders.py:42']
    """
    history = effective_history(history)  # what replay applies: a rewind's voided events are not in it
    if any(isinstance(e, _ENDINGS) for e in history):
        return []
    open_calls: dict[int, PendingCall] = {}
    # Per name, the waits nobody answered yet and the arrivals nobody took yet (FIFO, as the engine's mailbox).
    waits: dict[tuple[PendingKind, str], collections.deque[int]] = collections.defaultdict(collections.deque)
    kept: dict[tuple[PendingKind, str], int] = collections.defaultdict(int)
    for event in history:
        call = _schedule_of(event)
        if call is not None:
            key = (call.kind, call.name or "")
            if call.kind in (PendingKind.EVENT, PendingKind.UPDATE) and kept[key]:
                kept[key] -= 1  # an arrival recorded before the wait: taken at once
                continue
            open_calls[call.event_id] = call
            if call.kind in (PendingKind.EVENT, PendingKind.UPDATE):
                waits[key].append(call.event_id)
            continue
        arrival = _arrival_of(event)
        if arrival is not None:
            queue = waits[arrival]
            if queue:
                open_calls.pop(queue.popleft(), None)
            else:
                kept[arrival] += 1
            continue
        source_event_id = getattr(event, "source_event_id", None)
        if source_event_id is not None:
            open_calls.pop(source_event_id, None)
    return list(open_calls.values())


def _schedule_of(event: HistoryEvent) -> PendingCall | None:
    """The call a schedule event opens, if it is one that waits for an answer."""
    ts, eid = event.timestamp_ms, event.event_id
    match event:
        case Event.ActivityScheduled(name=name, source=source, attempt=attempt):
            return PendingCall(PendingKind.ACTIVITY, name, eid, source, ts, attempt=attempt)
        case Event.TimerCreated(fire_at_ms=fire_at, source=source):
            return PendingCall(PendingKind.TIMER, None, eid, source, ts, fire_at_ms=fire_at)
        case Event.SubOrchestrationScheduled(name=name, instance_id=child, source=source):
            return PendingCall(PendingKind.SUB_ORCHESTRATION, name, eid, source, ts, child_instance_id=child)
        case Event.EventSubscribed(name=name, source=source):
            return PendingCall(PendingKind.EVENT, name, eid, source, ts)
        case Event.UpdateSubscribed(name=name, source=source):
            return PendingCall(PendingKind.UPDATE, name, eid, source, ts)
    return None


def _arrival_of(event: HistoryEvent) -> tuple[PendingKind, str] | None:
    """The wait kind and name an arriving external event or update request answers."""
    if isinstance(event, Event.EventRaised):
        return (PendingKind.EVENT, event.name)
    if isinstance(event, Event.UpdateRequested):
        return (PendingKind.UPDATE, event.name)
    return None
