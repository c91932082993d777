"""History events: the durable record an orchestration is replayed from.

Each execution of an instance has its own history, a list of events with
``event_id`` 1, 2, 3, ... in the order they were recorded. *Schedule* events
(``ActivityScheduled``, ``TimerCreated``, ...) are written when orchestration
code asks for work; *completion* events name the schedule they complete in
``source_event_id``.

The variants live on :class:`Event` so they read as in the design and can be
matched::

    for event in await client.read_history("order-1"):
        match event:
            case Event.ActivityScheduled(name=name, input=payload):
                print(event.event_id, "scheduled", name, payload)
            case Event.ActivityCompleted(source_event_id=sid, result=result):
                print(event.event_id, "completed", sid, result)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from .records import encode_record
from .errors import CorruptHistoryError, ErrorDetails

__all__ = ["Event", "HistoryEvent", "encode_event", "decode_event", "SCHEDULE_KINDS"]


@dataclass(frozen=True, kw_only=True)
class HistoryEvent:
    """Base of every history event: its position and when it was recorded (ms since epoch).

    Schedule events (``is_schedule``) also carry ``source``: the ``"path/file.py:42"`` of
    the orchestration code's call that recorded them (relative to the working directory
    when inside it), ``None`` when unknown (the engine's own timers, histories recorded
    before the field existed). It is for people reading history: replay never compares
    it (a call that moved to another line replays), nor does ``==`` between events.
    """

    event_id: int
    timestamp_ms: int = 0

    #: True for events written when orchestration code schedules work.
    is_schedule: ClassVar[bool] = False


@dataclass(frozen=True, kw_only=True)
class _Completion(HistoryEvent):
    source_event_id: int


@dataclass(frozen=True, kw_only=True)
class _Failure(_Completion):
    details: ErrorDetails

    @property
    def error(self) -> str:
        """The failure as one line: ``"Type: message"``."""
        return self.details.to_text()


class _EventNamespace(type):
    # `isinstance(x, Event)` should mean "is a history event", though the
    # variants are reached as attributes of the `Event` namespace.
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, HistoryEvent)


class Event(metaclass=_EventNamespace):
    """Namespace of history event variants (see the module docstring for matching)."""

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationStarted(HistoryEvent):
        """First event of every execution."""

        name: str
        version: str
        input: str
        parent_instance_id: str | None = None
        parent_execution_id: int | None = None
        parent_event_id: int | None = None
        #: W3C traceparent of this execution's span (its activities and children hang below it).
        trace_context: str | None = None
        #: W3C traceparent of whoever started it (a client's span, or the parent execution).
        parent_trace_context: str | None = None
        #: State carried over from the previous execution (``ctx.set_state``), key -> encoded value.
        state: dict[str, str] | None = None
        #: Offset of this execution's first stream item (items emitted by earlier executions).
        stream_offset: int = 0
        #: When the instance must have ended (``start_orchestration(deadline=)``, ms since the epoch);
        #: carried over at continue-as-new. ``None``: no deadline, and in histories recorded before it existed.
        deadline_ms: int | None = None
        #: The instance's concurrency key and priority (``start_orchestration(concurrency_key=, priority=)``),
        #: stamped on its activity calls and children; ``None``: none given (and in older histories).
        concurrency_key: str | None = None
        priority: int | None = None

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationCompleted(HistoryEvent):
        """The orchestration returned ``output``."""

        output: str

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationFailed(HistoryEvent):
        """The orchestration ended with an error (exception, cancellation, poison...)."""

        details: ErrorDetails

        @property
        def error(self) -> str:
            """The failure as one line: ``"Type: message"``."""
            return self.details.to_text()

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationContinuedAsNew(HistoryEvent):
        """The execution ended; the next one starts with ``input``."""

        input: str
        version: str | None = None

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationCancelRequested(HistoryEvent):
        """``cancel_instance`` reached the instance: its code gets ``CancelledError`` at its await.

        ``grace_ms``: how long its cleanup may run before the execution ends regardless;
        ``None`` in histories recorded before cleanup on cancel existed (they ended at once).
        """

        reason: str
        grace_ms: int | None = None
        #: Who asked (``"cli:ana@ops-1"``, ``"ui:127.0.0.1"``); ``None`` when not said.
        by: str | None = None

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationSuspended(HistoryEvent):
        """``suspend_instance``: the code runs no more until resumed; what arrives is kept.

        Completions, events and update requests recorded after it are applied only at
        the next ``OrchestrationResumed``, in the order they were recorded.
        """

        reason: str
        by: str | None = None

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationResumed(HistoryEvent):
        """``resume_instance``: the code runs on, first with what arrived while suspended."""

        reason: str
        by: str | None = None

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationRewound(HistoryEvent):
        """``rewind_instance``: the Failed execution continues from its failure.

        ``voided`` are the events replay now skips: the ``OrchestrationFailed`` and the
        failures that caused it (the calls they answered are open again and were sent
        out once more). The history before it is kept as it was.
        """

        reason: str
        by: str | None = None
        voided: list[int] = field(default_factory=list)

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationRestarted(HistoryEvent):
        """``restart_instance``: the finished execution was started afresh with the original input.

        ``new_instance_id`` is set when the fresh start is another instance; otherwise it
        is this instance's execution ``next_execution_id``.
        """

        reason: str
        by: str | None = None
        new_instance_id: str | None = None
        next_execution_id: int | None = None

    @dataclass(frozen=True, kw_only=True)
    class ActivityScheduled(HistoryEvent):
        """Orchestration code called an activity (one attempt of the call, with a ``RetryPolicy``).

        ``attempt`` counts the attempts of one ``schedule_activity`` call (1, 2, ...);
        ``first_event_id`` is the event of the call's first attempt (``None`` on that
        attempt itself), under which its heartbeat details are kept; ``heartbeat_timeout_ms``
        is the call's heartbeat timeout. Histories recorded before these fields existed
        read as attempt 1 without a heartbeat timeout. Replay matches name and input only.
        """

        is_schedule: ClassVar[bool] = True
        name: str
        input: str
        attempt: int = 1
        first_event_id: int | None = None
        heartbeat_timeout_ms: int | None = None
        #: The queue the call was sent to (``schedule_activity(queue=)``); ``None``: the default queue.
        queue: str | None = None
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class ActivityCompleted(_Completion):
        """An activity returned ``result``."""

        result: str

    @dataclass(frozen=True, kw_only=True)
    class ActivityFailed(_Failure):
        """An activity raised."""

    @dataclass(frozen=True, kw_only=True)
    class TimerCreated(HistoryEvent):
        """A durable timer was started; it fires at ``fire_at_ms``."""

        is_schedule: ClassVar[bool] = True
        fire_at_ms: int
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class TimerFired(_Completion):
        """A durable timer fired."""

        fire_at_ms: int

    @dataclass(frozen=True, kw_only=True)
    class SubOrchestrationScheduled(HistoryEvent):
        """Orchestration code started a child orchestration it waits for."""

        is_schedule: ClassVar[bool] = True
        name: str
        version: str | None
        instance_id: str
        input: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class SubOrchestrationCompleted(_Completion):
        """A child orchestration completed with ``result``."""

        result: str

    @dataclass(frozen=True, kw_only=True)
    class SubOrchestrationFailed(_Failure):
        """A child orchestration failed."""

    @dataclass(frozen=True, kw_only=True)
    class OrchestrationChained(HistoryEvent):
        """Orchestration code started a detached orchestration (fire and forget)."""

        is_schedule: ClassVar[bool] = True
        name: str
        version: str | None
        instance_id: str
        input: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class EventSubscribed(HistoryEvent):
        """Orchestration code waits for the external event ``name``."""

        is_schedule: ClassVar[bool] = True
        name: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class EventRaised(HistoryEvent):
        """An external event arrived (delivered FIFO per name to waits)."""

        name: str
        data: str
        #: Who raised it from outside (``raise_event(..., by=)``); ``None`` when not said.
        by: str | None = None

    @dataclass(frozen=True, kw_only=True)
    class SystemCall(HistoryEvent):
        """A recorded non-deterministic value (``new_guid``, ``utc_now``)."""

        is_schedule: ClassVar[bool] = True
        op: str
        value: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class StateSet(HistoryEvent):
        """``ctx.set_state(key, value)``: the instance's state ``key`` is now ``value`` (encoded)."""

        is_schedule: ClassVar[bool] = True
        key: str
        value: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class StreamEmitted(HistoryEvent):
        """``ctx.emit(value)``: item ``offset`` of the instance's stream (offsets count across executions)."""

        is_schedule: ClassVar[bool] = True
        offset: int
        value: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class UpdateSubscribed(HistoryEvent):
        """Orchestration code waits for an update ``name`` (``ctx.wait_for_update``)."""

        is_schedule: ClassVar[bool] = True
        name: str
        source: str | None = field(default=None, compare=False)

    @dataclass(frozen=True, kw_only=True)
    class UpdateRequested(HistoryEvent):
        """``client.update`` reached the instance (recorded once per ``request_id``)."""

        request_id: str
        name: str
        data: str

    @dataclass(frozen=True, kw_only=True)
    class UpdateReplied(HistoryEvent):
        """The answer to update request ``request_id``: ``result`` (encoded), or ``rejected`` with a reason."""

        is_schedule: ClassVar[bool] = True
        request_id: str
        name: str
        result: str | None = None
        rejected: str | None = None
        source: str | None = field(default=None, compare=False)


_VARIANTS: dict[str, type[HistoryEvent]] = {
    name: cls
    for name, cls in vars(Event).items()
    if isinstance(cls, type) and issubclass(cls, HistoryEvent)
}

#: Names of the schedule variants, matched by order on replay.
SCHEDULE_KINDS = frozenset(n for n, c in _VARIANTS.items() if c.is_schedule)


def encode_event(event: HistoryEvent) -> bytes:
    """Serialize one event to JSON bytes (``{"type": ..., fields...}``)."""
    return encode_record("type", type(event).__name__, event)


def decode_event(raw: bytes | str, *, instance_id: str = "?") -> HistoryEvent:
    """Parse one stored event; unreadable rows raise :class:`CorruptHistoryError`."""
    try:
        body = orjson.loads(raw)
        cls = _VARIANTS[body.pop("type")]
        details = body.get("details")
        if details is not None:
            body["details"] = ErrorDetails.from_dict(details)
        return cls(**body)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        preview = raw[:80] if isinstance(raw, (bytes, str)) else raw
        raise CorruptHistoryError(instance_id, f"{type(exc).__name__} {exc} in row {preview!r}") from exc
