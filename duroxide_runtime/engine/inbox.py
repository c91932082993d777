"""The inbox: new queue messages become history events, and external events wait for their waits.

:class:`Inbox` turns each message of a turn into the event it records, one
``_apply_*`` per message kind; completions of unknown, stale or duplicate
work are dropped there (SEMANTICS 14). :class:`Mailbox` keeps external
events raised before anybody waits, FIFO per name, one per wait (SEMANTICS 19).

Example::

    arrival = inbox.arrival(ActivityResult(instance_id="i", execution_id=1, event_id=2, result="r"),
                            event_id=5, now_ms=now)   # Event.ActivityCompleted(event_id=5, source_event_id=2, ...)
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, Union

from ..errors import ErrorDetails
from ..history import Event, HistoryEvent
from ..messages import (
    DEFAULT_CANCEL_GRACE_MS,
    ActivityResult,
    CancelRequest,
    ClientUpdate,
    ExternalEvent,
    OrchestratorMessage,
    PoisonNotice,
    RestartRequest,
    ResumeRequest,
    RewindRequest,
    StartOrchestration,
    SubOrchestrationResult,
    SuspendRequest,
    TimerFired,
)
from .commands import CommandKind, DurableFuture

__all__ = ["Inbox", "Mailbox", "EndExecution", "Arrival", "Completions"]

_log = logging.getLogger("duroxide.replay")


@dataclass(frozen=True)
class EndExecution:
    """A message that ends the execution with ``error`` and records no event of its own (a poison notice)."""

    error: ErrorDetails


#: What a message amounts to: an event to record, the end of the execution, or nothing (dropped).
Arrival = Union[HistoryEvent, EndExecution, None]


class Completions(Protocol):
    """Which completions the open work of the execution still expects (the command buffer)."""

    def accepts(self, source_id: int, kind: CommandKind) -> bool:
        """Whether a completion of ``source_id`` should be recorded (drops stale and duplicate ones)."""
        ...

    def timer_dropped(self, event_id: int) -> bool:
        """Whether the timer of ``event_id`` was cancelled (its TimerFired is ignored)."""
        ...

    def update_seen(self, request_id: str) -> bool:
        """Whether update request ``request_id`` is already recorded in this execution (a repeated ask)."""
        ...


class Inbox:
    """Turns the messages of a turn into history events; see the module docstring."""

    def __init__(self, completions: Completions, log_fields: Callable[[], dict[str, Any]],
                 suspended: Callable[[], bool]) -> None:
        self._completions = completions
        self._log_fields = log_fields
        #: Whether the execution is suspended now (a repeated suspend or a stray resume records nothing).
        self._suspended = suspended

    def arrival(self, msg: OrchestratorMessage, event_id: int, now_ms: int) -> Arrival:
        """What ``msg`` records as event ``event_id`` at ``now_ms``."""
        if isinstance(msg, ActivityResult):
            return self._apply_activity_result(msg, event_id, now_ms)
        if isinstance(msg, TimerFired):
            return self._apply_timer_fired(msg, event_id, now_ms)
        if isinstance(msg, SubOrchestrationResult):
            return self._apply_sub_orchestration_result(msg, event_id, now_ms)
        if isinstance(msg, ExternalEvent):
            return self._apply_external_event(msg, event_id, now_ms)
        if isinstance(msg, ClientUpdate):
            return self._apply_client_update(msg, event_id, now_ms)
        if isinstance(msg, CancelRequest):
            return self._apply_cancel_request(msg, event_id, now_ms)
        if isinstance(msg, PoisonNotice):
            return self._apply_poison_notice(msg)
        if isinstance(msg, StartOrchestration):
            return self._apply_start(msg)
        if isinstance(msg, SuspendRequest):
            return self._apply_suspend_request(msg, event_id, now_ms)
        if isinstance(msg, ResumeRequest):
            return self._apply_resume_request(msg, event_id, now_ms)
        if isinstance(msg, (RewindRequest, RestartRequest)):
            return self._apply_late_recovery(msg)
        return None

    def _apply_activity_result(self, msg: ActivityResult, event_id: int, ts: int) -> Arrival:
        if not self._completions.accepts(msg.event_id, CommandKind.ACTIVITY):
            return None
        if msg.error is not None:
            return Event.ActivityFailed(event_id=event_id, timestamp_ms=ts, source_event_id=msg.event_id,
                                        details=msg.error)
        return Event.ActivityCompleted(event_id=event_id, timestamp_ms=ts, source_event_id=msg.event_id,
                                       result=msg.result or "")

    def _apply_timer_fired(self, msg: TimerFired, event_id: int, ts: int) -> Arrival:
        if self._completions.timer_dropped(msg.event_id):
            # Its deletion was committed with the turn that cancelled it, but a message
            # fetched in the same batch as that turn's other messages still arrives.
            _log.debug("instance %r: cancelled timer %s ignored", msg.instance_id, msg.event_id,
                       extra=self._log_fields())
            return None
        if not self._completions.accepts(msg.event_id, CommandKind.TIMER):
            return None
        return Event.TimerFired(event_id=event_id, timestamp_ms=ts, source_event_id=msg.event_id,
                                fire_at_ms=msg.fire_at_ms)

    def _apply_sub_orchestration_result(self, msg: SubOrchestrationResult, event_id: int, ts: int) -> Arrival:
        if not self._completions.accepts(msg.event_id, CommandKind.SUB_ORCHESTRATION):
            return None
        if msg.error is not None:
            return Event.SubOrchestrationFailed(event_id=event_id, timestamp_ms=ts, source_event_id=msg.event_id,
                                                details=msg.error)
        return Event.SubOrchestrationCompleted(event_id=event_id, timestamp_ms=ts, source_event_id=msg.event_id,
                                               result=msg.result or "")

    def _apply_external_event(self, msg: ExternalEvent, event_id: int, ts: int) -> Arrival:
        return Event.EventRaised(event_id=event_id, timestamp_ms=ts, name=msg.name, data=msg.data, by=msg.by)

    def _apply_client_update(self, msg: ClientUpdate, event_id: int, ts: int) -> Arrival:
        if self._completions.update_seen(msg.request_id):
            # The client asked again (it restarted, or timed out and retried): one request.
            _log.info("instance %r: repeated update request %r dropped", msg.instance_id, msg.request_id,
                      extra=self._log_fields())
            return None
        return Event.UpdateRequested(event_id=event_id, timestamp_ms=ts, request_id=msg.request_id, name=msg.name,
                                     data=msg.data)

    def _apply_cancel_request(self, msg: CancelRequest, event_id: int, ts: int) -> Arrival:
        grace = DEFAULT_CANCEL_GRACE_MS if msg.grace_ms is None else msg.grace_ms
        return Event.OrchestrationCancelRequested(event_id=event_id, timestamp_ms=ts, reason=msg.reason,
                                                  grace_ms=grace, by=msg.by)

    def _apply_poison_notice(self, msg: PoisonNotice) -> Arrival:
        return EndExecution(ErrorDetails("PoisonMessageError", msg.reason))

    def _apply_suspend_request(self, msg: SuspendRequest, event_id: int, ts: int) -> Arrival:
        if self._suspended():
            _log.info("instance %r: already suspended; suspend request dropped", msg.instance_id,
                      extra=self._log_fields())
            return None
        return Event.OrchestrationSuspended(event_id=event_id, timestamp_ms=ts, reason=msg.reason, by=msg.by)

    def _apply_resume_request(self, msg: ResumeRequest, event_id: int, ts: int) -> Arrival:
        if not self._suspended():
            _log.info("instance %r: not suspended; resume request dropped", msg.instance_id,
                      extra=self._log_fields())
            return None
        return Event.OrchestrationResumed(event_id=event_id, timestamp_ms=ts, reason=msg.reason, by=msg.by)

    def _apply_late_recovery(self, msg: RewindRequest | RestartRequest) -> Arrival:
        # The client checked the status, but the instance moved on before the request
        # arrived (say, it was rewound twice): a running execution has nothing to redo.
        _log.info("instance %r: %s request dropped, the instance is running", msg.instance_id, msg.kind,
                  extra=self._log_fields())
        return None

    def _apply_start(self, msg: StartOrchestration) -> Arrival:
        _log.warning("instance %r: duplicate start for execution %s ignored", msg.instance_id, msg.execution_id,
                     extra=self._log_fields())
        return None


_D = TypeVar("_D")


class Mailbox(Generic[_D]):
    """Arrivals by name (external events, update requests): kept FIFO until a wait takes one; waits
    queue FIFO until one arrives.

    Example::

        mailbox.raised("go", "data")   # nobody waits: kept
        mailbox.take("go")             # "data", for the next wait on "go"
    """

    def __init__(self) -> None:
        self._waits: dict[str, collections.deque[DurableFuture[Any]]] = collections.defaultdict(collections.deque)
        self._kept: dict[str, collections.deque[_D]] = collections.defaultdict(collections.deque)
        #: What each resolved wait took, so that a select loser can give it back.
        self._taken: dict[int, tuple[str, _D]] = {}

    def raised(self, name: str, data: _D) -> DurableFuture[Any] | None:
        """The wait that takes this event (to be resolved by the caller), or ``None`` if it is kept."""
        waits = self._waits.get(name)
        if waits:
            return waits.popleft()
        self._kept[name].append(data)
        return None

    def take(self, name: str) -> _D | None:
        """The oldest kept event of ``name`` for a new wait, or ``None``: the wait must queue."""
        kept = self._kept[name]
        return kept.popleft() if kept else None

    def wait(self, fut: DurableFuture[Any], *, first: bool = False) -> None:
        """``fut`` waits for the next event of its name (``fut.detail``); ``first``: ahead of the others."""
        if first:
            self._waits[fut.detail].appendleft(fut)
        else:
            self._waits[fut.detail].append(fut)

    def forget(self, fut: DurableFuture[Any]) -> None:
        """A cancelled wait no longer takes events."""
        waits = self._waits.get(fut.detail)
        if waits and fut in waits:
            waits.remove(fut)

    def took(self, fut: DurableFuture[Any], data: _D) -> None:
        """``fut`` was resolved with ``data``."""
        self._taken[fut.event_id] = (fut.detail, data)

    def give_back(self, fut: DurableFuture[Any]) -> None:
        """A select loser that took an event returns it, first in line (SEMANTICS 19)."""
        if fut.event_id in self._taken:
            name, data = self._taken.pop(fut.event_id)
            self._kept[name].appendleft(data)

    def unconsumed(self) -> list[tuple[str, _D]]:
        """Events nobody took, by name then FIFO: they carry over at continue-as-new."""
        return [(name, data) for name, kept in self._kept.items() for data in kept]
