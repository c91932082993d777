"""The typed commands orchestration code issues, and the interface it issues them to.

``OrchestrationContext`` turns each durable call into one frozen command
(:class:`ScheduleActivity`, :class:`CreateTimer`, ...) and hands it to a
:class:`CommandSink`, which returns the call's :class:`DurableFuture`. The
context never sees the execution behind the sink.

Example::

    fut = sink.issue(ScheduleActivity(name="Greet", input="Ann"))   # DurableFuture[str]
    describe(ScheduleActivity(name="Greet", input="Ann"))          # "activity 'Greet' with input 'Ann'"
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, TypeVar, Union

from ..queues import QueueOptions

__all__ = ["CommandKind", "SystemOp", "ScheduleActivity", "CreateTimer", "ScheduleSubOrchestration",
           "StartDetached", "WaitForEvent", "SystemCall", "SetState", "Emit", "WaitForUpdate", "ReplyUpdate",
           "UpdateArrival", "Command", "describe", "DurableFuture", "CommandSink"]

_T = TypeVar("_T")


class CommandKind(enum.Enum):
    """What a durable future stands for; ``words`` names it in error messages."""

    ACTIVITY = "activity"
    TIMER = "timer"
    SUB_ORCHESTRATION = "sub"
    DETACHED = "detached"
    WAIT = "wait"
    SYSTEM = "system"
    SET_STATE = "state"
    EMIT = "emit"
    WAIT_UPDATE = "update"
    REPLY = "reply"

    @property
    def words(self) -> str:
        """How error messages name this kind: ``"a timer"``, ``"sub-orchestration"``."""
        return _WORDS[self]


_WORDS = {CommandKind.ACTIVITY: "activity", CommandKind.TIMER: "a timer",
          CommandKind.SUB_ORCHESTRATION: "sub-orchestration", CommandKind.DETACHED: "detached orchestration",
          CommandKind.WAIT: "a wait for event", CommandKind.SYSTEM: "system call",
          CommandKind.SET_STATE: "set_state", CommandKind.EMIT: "emit to the stream", CommandKind.WAIT_UPDATE: "a wait for update",
          CommandKind.REPLY: "reply to update request"}


class SystemOp(enum.Enum):
    """A value recorded once and replayed verbatim (``ctx.new_guid``, ``ctx.utc_now``)."""

    GUID = "guid"
    UTC_NOW = "utcnow"

    def generate(self, wall_clock_ms: int) -> str:
        """The value to record the first time (``uuid.uuid4`` is looked up at each call: tests replace it)."""
        return str(uuid.uuid4()) if self is SystemOp.GUID else str(wall_clock_ms)

    def decode(self, value: str) -> object:
        """The recorded text as the orchestration sees it: ``str`` for a guid, an aware ``datetime`` for utc_now."""
        if self is SystemOp.UTC_NOW:
            return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)
        return value


@dataclass(frozen=True)
class ScheduleActivity:
    """Run activity ``name`` with ``input``: ``ScheduleActivity(name="Greet", input="Ann")``.

    ``attempt`` and ``first_event_id`` place it in a retried call (attempt 2 of the call
    first scheduled as event 4: ``attempt=2, first_event_id=4``); ``heartbeat_timeout_ms``
    is the call's heartbeat timeout (``None``: none); ``queue`` the queue it is sent to (``None``:
    the default queue). Only name and input are matched on replay.
    ``source`` is the ``file:line`` of the call when it is known before the command is issued
    (a retried call's later attempts run in a task of their own); ``None``: found on the stack.
    """

    name: str
    input: str
    attempt: int = 1
    first_event_id: int | None = None
    heartbeat_timeout_ms: int | None = None
    queue: str | None = None
    source: str | None = field(default=None, compare=False)
    kind: ClassVar[CommandKind] = CommandKind.ACTIVITY


@dataclass(frozen=True)
class CreateTimer:
    """A durable timer due at ``fire_at_ms`` (orchestration time): ``CreateTimer(fire_at_ms=now + 5000)``.

    ``source``: the ``file:line`` of the call it belongs to, when known up front (a retry's back-off).
    """

    fire_at_ms: int
    source: str | None = field(default=None, compare=False)
    kind: ClassVar[CommandKind] = CommandKind.TIMER


@dataclass(frozen=True)
class ScheduleSubOrchestration:
    """Run a child and wait for it: ``ScheduleSubOrchestration(name="Child", input="x")``.

    ``instance_id`` ``None`` means ``"<parent>::sub::<event id>"``; ``version`` ``None``
    means the version policy's choice.
    """

    name: str
    input: str
    instance_id: str | None = None
    version: str | None = None
    kind: ClassVar[CommandKind] = CommandKind.SUB_ORCHESTRATION


@dataclass(frozen=True)
class StartDetached:
    """Start an orchestration and do not wait: ``StartDetached(name="Audit", input="x", instance_id="a-1")``."""

    name: str
    input: str
    instance_id: str | None = None
    version: str | None = None
    kind: ClassVar[CommandKind] = CommandKind.DETACHED


@dataclass(frozen=True)
class WaitForEvent:
    """Wait for external event ``name``: ``WaitForEvent(name="approval")``.

    ``decode`` turns the event's data into what the wait yields (a typed wait); its
    error (a :class:`PayloadDecodeError`) is what the wait raises. It is not part of
    what replay matches.
    """

    name: str
    decode: Callable[[str], Any] | None = field(default=None, compare=False)
    kind: ClassVar[CommandKind] = CommandKind.WAIT


@dataclass(frozen=True)
class SystemCall:
    """Record a value once (``SystemCall(op=SystemOp.GUID)``); replay hands it back."""

    op: SystemOp
    kind: ClassVar[CommandKind] = CommandKind.SYSTEM


@dataclass(frozen=True)
class SetState:
    """Set the instance's state ``key`` to the encoded ``value``: ``SetState(key="progress", value='{"done":3}')``."""

    key: str
    value: str
    kind: ClassVar[CommandKind] = CommandKind.SET_STATE


@dataclass(frozen=True)
class Emit:
    """Append the encoded ``value`` to the instance's stream: ``Emit(value='{"done":3}')``."""

    value: str
    kind: ClassVar[CommandKind] = CommandKind.EMIT


@dataclass(frozen=True)
class UpdateArrival:
    """An update request as it reaches a wait: its id and its (encoded) data."""

    request_id: str
    data: str


@dataclass(frozen=True)
class WaitForUpdate:
    """Wait for the next update request ``name``: ``WaitForUpdate(name="add_item", decode=...)``.

    ``decode`` turns the :class:`UpdateArrival` into what the wait yields (the
    context's ``UpdateRequest``); a :class:`PayloadError` from it rejects that
    request (the client is told why) and the wait takes the next one.
    """

    name: str
    decode: Callable[[UpdateArrival], Any] | None = field(default=None, compare=False)
    kind: ClassVar[CommandKind] = CommandKind.WAIT_UPDATE


@dataclass(frozen=True)
class ReplyUpdate:
    """Answer update request ``request_id``: with the encoded ``result``, or ``rejected`` with a reason."""

    request_id: str
    name: str
    result: str | None = None
    rejected: str | None = None
    kind: ClassVar[CommandKind] = CommandKind.REPLY


Command = Union[ScheduleActivity, CreateTimer, ScheduleSubOrchestration, StartDetached, WaitForEvent, SystemCall,
                SetState, Emit, WaitForUpdate, ReplyUpdate]


def label(command: Command) -> str:
    """The name a future of ``command`` shows: activity, child or event name, or the system op."""
    if isinstance(command, SystemCall):
        return command.op.value
    if isinstance(command, SetState):
        return command.key
    if isinstance(command, ReplyUpdate):
        return command.request_id
    if isinstance(command, Emit):
        return "stream"
    return "" if isinstance(command, CreateTimer) else command.name


def describe(command: Command) -> str:
    """``command`` in error messages: ``"activity 'A' with input 'x'"``, ``"a timer"``."""
    name = None if isinstance(command, (CreateTimer, Emit)) else label(command)
    text = command.kind.words + (f" {name!r}" if name is not None else "")
    if isinstance(command, (SetState, Emit)):
        return f"{text} with value {command.value!r}"
    if isinstance(command, ReplyUpdate):
        return text + (f" with result {command.result!r}" if command.rejected is None
                       else f" rejected with {command.rejected!r}")
    given = getattr(command, "input", None)
    return text + (f" with input {given!r}" if given is not None else "")


class DurableFuture(asyncio.Future[_T]):
    """The result of one durable action (activity, timer, child, event wait, system call).

    ``kind`` and ``event_id`` say which history event it belongs to. Cancelling it
    (for example because it lost a ``select``) cancels the remote work.

    Example::

        fut = ctx.schedule_activity("Greet", "Ann")   # <DurableFuture activity #2 Greet>
        fut.cancel()                                  # the activity is cancelled too
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, kind: CommandKind, event_id: int, detail: str,
                 on_cancel: Callable[[DurableFuture[Any]], None]) -> None:
        super().__init__(loop=loop)
        self._on_cancel = on_cancel
        self.kind = kind
        self.event_id = event_id
        self.detail = detail
        #: Position in the order completions were applied; decides select winners.
        self.completion_seq = 0

    def cancel(self, msg: Any | None = None) -> bool:
        if self.done():
            return False
        cancelled = super().cancel(msg)
        if cancelled:
            self._on_cancel(self)
        return cancelled

    def __repr__(self) -> str:
        return f"<DurableFuture {self.kind.value} #{self.event_id} {self.detail}>"


class CommandSink(Protocol):
    """What ``OrchestrationContext`` needs from the engine: issue commands, and a few facts of the execution.

    Example::

        fut = sink.issue(WaitForEvent(name="go"))
        if not sink.replaying: ...
    """

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The orchestration's deterministic loop."""
        ...

    @property
    def instance_id(self) -> str: ...

    @property
    def execution_id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def replaying(self) -> bool:
        """True while the code re-runs history recorded in an earlier turn."""
        ...

    @property
    def now_ms(self) -> int:
        """Orchestration time: the timestamp of the history event being applied."""
        ...

    @property
    def queues(self) -> Mapping[str, QueueOptions]:
        """The queues work may name (``RuntimeOptions.queues``)."""
        ...

    def issue(self, command: Command) -> DurableFuture[Any]:
        """Match ``command`` with history (replay) or record it as new work; its future."""
        ...

    def completion_order(self, fut: asyncio.Future[Any]) -> int:
        """When ``fut`` finished, relative to every other completion of this execution."""
        ...

    def release_loser(self, fut: asyncio.Future[Any]) -> None:
        """A select loser: cancel it, or give back the event it consumed."""
        ...

    def set_custom_status(self, status: str | None) -> None: ...

    def get_state(self, key: str) -> str | None:
        """The encoded value of state ``key`` as the code has set it so far (or carried over), or ``None``."""
        ...

    def continue_as_new(self, input: str, version: str | None) -> None:
        """Ask to end this execution and start the next one (the caller then unwinds)."""
        ...

    def log_fields(self) -> dict[str, Any]:
        """Structured log fields of this execution."""
        ...
