"""Queue messages: what travels between client, orchestrations and activity workers.

Orchestrator messages are addressed to one instance and consumed by a turn;
``ActivityWork`` sits in the worker queue. Completions carry the
``execution_id`` and ``event_id`` of the schedule they answer, so answers to
an older execution are recognised and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .queues import DEFAULT_QUEUE
from .records import encode_record
from .errors import ErrorDetails

#: The grace period a cancellation gives cleanup code when nobody chose one (30 s).
DEFAULT_CANCEL_GRACE_MS = 30_000

__all__ = [
    "DEFAULT_CANCEL_GRACE_MS",
    "OrchestratorMessage",
    "StartOrchestration",
    "ActivityResult",
    "TimerFired",
    "SubOrchestrationResult",
    "ExternalEvent",
    "ClientUpdate",
    "CancelRequest",
    "PoisonNotice",
    "SuspendRequest",
    "ResumeRequest",
    "RewindRequest",
    "RestartRequest",
    "ActivityWork",
    "encode_message",
    "decode_message",
]


@dataclass(frozen=True, kw_only=True)
class OrchestratorMessage:
    """Base of every message for an instance's orchestrator queue."""

    instance_id: str
    kind: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True)
class StartOrchestration(OrchestratorMessage):
    """Start an execution (a new instance, a child, or the next execution after continue-as-new)."""

    kind: ClassVar[str] = "start"
    name: str
    version: str | None
    input: str
    execution_id: int = 1
    parent_instance_id: str | None = None
    parent_execution_id: int | None = None
    parent_event_id: int | None = None
    #: W3C traceparent of the starter (client span or parent execution), for tracing.
    trace_context: str | None = None
    #: Continue-as-new: the state the next execution starts with, and its first stream offset.
    state: dict[str, str] | None = None
    stream_offset: int = 0
    #: ``start_orchestration(deadline=)``: when the instance must have ended (ms since the epoch,
    #: the store's clock); carried over at continue-as-new. ``None``: no deadline (and in older messages).
    deadline_ms: int | None = None
    #: ``start_orchestration(concurrency_key=, priority=)``: the instance's place in its queues'
    #: limits and order, inherited by its activity calls and children; kept at continue-as-new.
    concurrency_key: str | None = None
    priority: int | None = None
    #: ``start_orchestration(queue=)``: the queue whose limits the new instance waits for
    #: (see ``Provider.create_instance``). ``None``: it starts at once (children, next executions).
    queue: str | None = None


@dataclass(frozen=True, kw_only=True)
class ActivityResult(OrchestratorMessage):
    """An activity finished: ``result`` when it returned, ``error`` when it raised."""

    kind: ClassVar[str] = "activity_result"
    execution_id: int
    event_id: int
    result: str | None = None
    error: ErrorDetails | None = None


@dataclass(frozen=True, kw_only=True)
class TimerFired(OrchestratorMessage):
    """A durable timer is due (the message becomes visible at ``fire_at_ms``)."""

    kind: ClassVar[str] = "timer"
    execution_id: int
    event_id: int
    fire_at_ms: int


@dataclass(frozen=True, kw_only=True)
class SubOrchestrationResult(OrchestratorMessage):
    """A child finished; addressed to the parent instance."""

    kind: ClassVar[str] = "sub_result"
    execution_id: int
    event_id: int
    result: str | None = None
    error: ErrorDetails | None = None


@dataclass(frozen=True, kw_only=True)
class ExternalEvent(OrchestratorMessage):
    """``raise_event`` delivered an event to the instance."""

    kind: ClassVar[str] = "event"
    name: str
    data: str
    #: Who raised it from outside (``raise_event(..., by=)``), for the history.
    by: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientUpdate(OrchestratorMessage):
    """``client.update`` asks the instance for a reply; ``request_id`` makes a repeated ask one request."""

    kind: ClassVar[str] = "update"
    request_id: str
    name: str
    data: str


@dataclass(frozen=True, kw_only=True)
class CancelRequest(OrchestratorMessage):
    """``cancel_instance`` (or a cancelling parent) asks the instance to end."""

    kind: ClassVar[str] = "cancel"
    reason: str
    #: How long cleanup (``finally``, ``except CancelledError``) may run, in orchestration
    #: milliseconds; ``None`` (messages of older versions) means :data:`DEFAULT_CANCEL_GRACE_MS`.
    grace_ms: int | None = None
    #: Who asked (``"cli:ana@ops-1"``, ``"ui:127.0.0.1"``, a parent's id), for the history.
    by: str | None = None


@dataclass(frozen=True, kw_only=True)
class SuspendRequest(OrchestratorMessage):
    """``suspend_instance``: the instance runs no more code; what arrives meanwhile is kept."""

    kind: ClassVar[str] = "suspend"
    reason: str
    by: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResumeRequest(OrchestratorMessage):
    """``resume_instance``: a suspended instance runs on, first with what was kept for it."""

    kind: ClassVar[str] = "resume"
    reason: str
    by: str | None = None


@dataclass(frozen=True, kw_only=True)
class RewindRequest(OrchestratorMessage):
    """``rewind_instance`` (or a rewound parent): a Failed instance continues from its failure.

    The ``parent_*`` fields are set when a rewound parent asks its failed child: the
    parent's call, which the child checks against its own parent before rewinding (an
    instance the parent did not start is never rewound; the parent hears its failure again).
    """

    kind: ClassVar[str] = "rewind"
    reason: str
    by: str | None = None
    parent_instance_id: str | None = None
    parent_execution_id: int | None = None
    parent_event_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class RestartRequest(OrchestratorMessage):
    """``restart_instance``: a finished instance starts a fresh execution with ``input``.

    With ``new_instance_id`` the fresh start is another instance (already created by the
    client); this one only records that it was restarted there.
    """

    kind: ClassVar[str] = "restart"
    reason: str
    by: str | None = None
    input: str = ""
    version: str | None = None
    new_instance_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class PoisonNotice(OrchestratorMessage):
    """A worker gave up on an activity message; the instance must fail."""

    kind: ClassVar[str] = "poison"
    execution_id: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class ActivityWork:
    """One activity call waiting in the worker queue."""

    kind: ClassVar[str] = "activity"
    instance_id: str
    execution_id: int
    event_id: int
    name: str
    input: str
    #: W3C traceparent of the calling execution, for tracing.
    trace_context: str | None = None
    #: Which attempt of its call this is (``RetryPolicy``: 1, 2, ...); ``activity_context().attempt``.
    attempt: int = 1
    #: Event id of the call's first attempt (``None``: this is it); its heartbeat details are kept under it.
    first_event_id: int | None = None
    #: The call's heartbeat timeout: the lease then lasts only this long past the last heartbeat.
    heartbeat_timeout_ms: int | None = None
    #: The queue whose limits the call counts against (see :mod:`duroxide_runtime.queues`), the
    #: concurrency key of its instance (``None``: none), and its priority (higher is leased first).
    queue: str = DEFAULT_QUEUE
    concurrency_key: str | None = None
    priority: int = 0

    @property
    def call_event_id(self) -> int:
        """The event id that names the whole call (all its attempts): its first attempt's."""
        return self.event_id if self.first_event_id is None else self.first_event_id


_KINDS: dict[str, type[Any]] = {
    c.kind: c
    for c in (
        StartOrchestration,
        ActivityResult,
        TimerFired,
        SubOrchestrationResult,
        ExternalEvent,
        ClientUpdate,
        CancelRequest,
        PoisonNotice,
        SuspendRequest,
        ResumeRequest,
        RewindRequest,
        RestartRequest,
        ActivityWork,
    )
}


def encode_message(msg: OrchestratorMessage | ActivityWork) -> bytes:
    """Serialize a message to JSON bytes."""
    return encode_record("k", msg.kind, msg)


def decode_message(raw: bytes | str) -> Any:
    """Parse a stored message (raises ``ValueError`` on garbage)."""
    try:
        body = orjson.loads(raw)
        cls = _KINDS[body.pop("k")]
        if body.get("error") is not None:
            body["error"] = ErrorDetails.from_dict(body["error"])
        return cls(**body)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable queue message {raw[:80]!r}: {exc}") from exc
