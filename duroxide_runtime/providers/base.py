"""The store interface every provider implements, and the records it exchanges.

A provider keeps three things durable: instances (one row each), histories
(events per execution) and two peek-lock queues (orchestrator messages per
instance, activity work). Stores store, lease and wake, and nothing more: the
runtime decides the semantics (which status is terminal, what a rejected
child's parent is told, which calls a turn cancels) and hands the store
explicit intents (:class:`ChildStart`, :class:`CallKey` lists, ``only_if_*``
guards) that it applies atomically. The conformance suite
(``tests/test_provider_conformance.py``) is a store's whole contract and runs
unchanged against every provider; ``docs/providers.md`` walks through adding one.

Batching is part of the contract: ``fetch_orchestration_items`` locks many
instances at once and ``commit_turns`` commits many turns in one
transaction, so a store round trip is paid per batch, not per instance.
"""

from __future__ import annotations


import orjson
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ErrorDetails
from ..history import HistoryEvent
from ..messages import ActivityResult, ActivityWork, OrchestratorMessage, PoisonNotice, StartOrchestration, TimerFired

__all__ = [
    "Provider", "InstanceRecord", "InstanceUpdate", "OrchestrationItem", "QueuedMessage", "TurnCommit",
    "WorkLease", "WorkCompletion", "FetchResult", "now_ms", "decode_error_details", "QueueDepths",
    "ChildStart", "CallKey", "timer_key", "status_admits", "Durability", "HeartbeatWrite", "HeartbeatRecord",
]


class Durability(StrEnum):
    """What an acknowledged write survives: the stores' ``durability=`` option.

    ``FULL`` (the default): every acknowledged start, event, cancel and turn commit
    survives a power loss or an operating-system crash. SQLite runs
    ``synchronous=FULL`` (the write-ahead log is fsynced at each commit; concurrent
    writers share one commit and one fsync); PostgreSQL keeps
    ``synchronous_commit=on``.

    ``RELAXED``: an acknowledged write survives the process crashing, but the last
    moments of acknowledged writes may vanish on power loss or an OS crash, with
    the store still consistent (SQLite ``synchronous=NORMAL`` in WAL mode;
    PostgreSQL ``synchronous_commit=off``). Faster on slow disks; choose it only
    when a lost start or completion can be redone by someone who will notice.

    Example::

        store = await SqliteProvider.new("sqlite:///app.db", durability=Durability.RELAXED)
    """

    FULL = "full"
    RELAXED = "relaxed"


def now_ms() -> int:
    """The system clock's wall-clock milliseconds since the epoch.

    Stores and the runtime read their injected :class:`~duroxide_runtime.clock.Clock`
    instead (``store.clock.now_ms()``); this stays for code that runs without a store.
    """
    return SYSTEM_CLOCK.now_ms()


@dataclass(frozen=True)
class CallKey:
    """One scheduled call of an execution (an activity or a timer), by its schedule event.

    Example: ``CallKey("order-1", 1, 2)`` is event 2 of execution 1 of ``order-1``.
    """

    instance_id: str
    execution_id: int
    event_id: int


def timer_key(message: OrchestratorMessage) -> CallKey | None:
    """The key of a queued ``TimerFired`` (what ``TurnCommit.delete_timers`` names); ``None`` otherwise.

    Example: ``timer_key(TimerFired(instance_id="i", execution_id=1, event_id=3, fire_at_ms=0)) == CallKey("i", 1, 3)``.
    """
    if isinstance(message, TimerFired):
        return CallKey(message.instance_id, message.execution_id, message.event_id)
    return None


def status_admits(only_if_status_in: Collection[str] | None, status: str | None) -> bool:
    """Whether a guarded write goes ahead: the row exists and, if guarded, its status is listed.

    Example: ``status_admits(None, "Failed")`` is true, ``status_admits({"Running"}, None)`` false.
    """
    return status is not None and (only_if_status_in is None or status in only_if_status_in)


def decode_error_details(raw: bytes | str | None) -> ErrorDetails | None:
    """The stored error column of an instance; an unreadable one becomes a placeholder, not a crash."""
    if not raw:
        return None
    try:
        return ErrorDetails.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError):
        # One unreadable row must not stop every fetch that reads it.
        return ErrorDetails("CorruptHistoryError", f"the stored error is unreadable: {raw[:80]!r}")


@dataclass(frozen=True)
class ChildStart:
    """Intent: create another instance with the turn, unless its id is taken.

    The store inserts ``start``'s instance row (status ``Pending``, parent set) and
    enqueues ``start``, atomically with the turn; if the id already exists it changes
    nothing of that instance and enqueues ``if_taken`` instead (nothing if ``None``).
    The runtime decides what ``if_taken`` says.

    Example::

        ChildStart(start, if_taken=SubOrchestrationResult(instance_id="parent", ..., error=...))
    """

    start: StartOrchestration
    if_taken: OrchestratorMessage | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """An instance's row: identity, current execution, status and result."""

    instance_id: str
    name: str
    version: str | None
    execution_id: int
    status: str
    output: str | None = None
    error: ErrorDetails | None = None
    custom_status: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    parent_instance_id: str | None = None
    #: Unique per creation of the id: a purged and re-created instance gets a new one, so
    #: state kept for the old one (the dispatcher's live cache) can never match the new.
    incarnation: str | None = None


@dataclass(frozen=True)
class QueuedMessage:
    """A fetched orchestrator message with its queue id."""

    id: int
    message: OrchestratorMessage


@dataclass(frozen=True)
class OrchestrationItem:
    """One locked instance and the messages its turn must consume."""

    instance_id: str
    lock_token: str
    messages: list[QueuedMessage]
    instance: InstanceRecord | None
    #: Events stored for the instance's current execution (cache validity check).
    history_len: int
    #: Highest delivery count among the messages (poison detection).
    dequeue_count: int


@dataclass(frozen=True)
class InstanceUpdate:
    """New values for the instance row, written with the turn."""

    name: str
    version: str
    execution_id: int
    status: str
    output: str | None = None
    error: ErrorDetails | None = None
    custom_status: str | None = None
    custom_status_changed: bool = False


@dataclass
class TurnCommit:
    """All that one turn changes; committed atomically (all or nothing)."""

    instance_id: str
    lock_token: str
    #: The execution ``new_events`` belong to.
    execution_id: int
    consumed: list[int]
    new_events: list[HistoryEvent] = field(default_factory=list)
    activities: list[ActivityWork] = field(default_factory=list)
    #: Orchestrator messages with the time they become visible (None: now), enqueued
    #: as they are (for this instance or any other, existing or not).
    messages: list[tuple[OrchestratorMessage, int | None]] = field(default_factory=list)
    #: Instances to create with the turn (see :class:`ChildStart`); applied before ``messages``.
    children: list[ChildStart] = field(default_factory=list)
    #: Activity calls to cancel: a queued, unleased one is deleted; a leased one is marked
    #: cancelled (never leased again, its renewal fails; its completion is still accepted).
    cancel_activities: list[CallKey] = field(default_factory=list)
    #: Timers whose queued ``TimerFired`` must be deleted (see :func:`timer_key`): they must never fire.
    delete_timers: list[CallKey] = field(default_factory=list)
    update: InstanceUpdate | None = None
    #: The turn ends the instance (the runtime decides): a store that wakes other processes
    #: tells their waiters on this instance (``WakeSource``); others ignore it.
    ends_instance: bool = False
    #: Set by the provider when it rolled this turn back because of its content (a value
    #: the store cannot hold), not a lost lock; the runtime then fails the instance with
    #: this cause instead of redoing the same turn until it is poisoned.
    refused: str | None = None


@dataclass(frozen=True)
class WorkLease:
    """A locked activity call."""

    lock_token: str
    work: ActivityWork
    dequeue_count: int


@dataclass(frozen=True)
class WorkCompletion:
    """The outcome of a leased activity, to be enqueued for its instance."""

    lock_token: str
    result: ActivityResult | PoisonNotice
    #: Delete this call's heartbeat row with the result (the call succeeded: no later attempt
    #: will read its details); only if the lease still holds, as for the result itself.
    forget_heartbeat: CallKey | None = None


@dataclass(frozen=True)
class HeartbeatWrite:
    """One activity heartbeat to record (:meth:`Provider.record_heartbeats`).

    ``call`` names the whole call (the event id of its first attempt): every attempt
    of one retried call reads and writes the same row. ``event_id`` is the beating
    attempt's own schedule event (the leased work item's), recorded so that a later
    delivery of that attempt can tell it had started. ``details`` is the encoded
    progress (``None`` keeps what is stored: a beat that only says "alive");
    ``lock_timeout`` extends the lease to now + that many seconds (``None``: the
    lease is left as it is).

    Example::

        HeartbeatWrite(lease.lock_token, CallKey("order-1", 1, 2), 2, details='{"page": 3}', lock_timeout=30.0)
    """

    lock_token: str
    call: CallKey
    event_id: int
    details: str | None = None
    lock_timeout: float | None = None


@dataclass(frozen=True)
class HeartbeatRecord:
    """The stored heartbeat of one activity call (:meth:`Provider.read_heartbeat`).

    ``details``: the last details recorded (``None`` if only liveness beats were);
    ``event_id``: the schedule event of the attempt that beat last; ``updated_at_ms``:
    when (the store's clock).
    """

    details: str | None
    event_id: int
    updated_at_ms: int


@dataclass(frozen=True)
class FetchResult:
    """Fetched items, and when the next not-yet-visible message becomes due."""

    items: list[OrchestrationItem]
    next_due_ms: int | None = None


@dataclass(frozen=True)
class QueueDepths:
    """How much work waits in a store (for metrics and operators)."""

    #: Orchestrator messages visible now.
    orchestrator: int
    #: Orchestrator messages not due yet (durable timers, back-offs).
    timers: int
    #: Activity calls waiting or running.
    worker: int
    #: Instances that are Pending or Running.
    active_instances: int


class Provider(ABC):
    """A durable store for instances, histories and queues.

    Implementations: :class:`InMemoryProvider`, :class:`SqliteProvider`,
    ``PostgresProvider``. Every method is safe to call concurrently from
    many tasks; busy/locked conditions are retried inside the provider.
    Wake-ups are not part of this interface (see :mod:`duroxide_runtime.wake`;
    a store that hears other processes implements ``WakeSource`` too).
    """

    #: The time source of the store (timestamps, due times, locks, leases); the runtime
    #: and clients of the store use it too. Set by the constructor (``clock=``).
    clock: Clock = SYSTEM_CLOCK

    # -- client side -------------------------------------------------------------

    @abstractmethod
    async def create_instance(self, start: StartOrchestration) -> None:
        """Create the instance row (status Pending) and enqueue its start, atomically.

        Raises :class:`InstanceAlreadyExistsError` (and changes nothing) if the id is taken.
        """

    @abstractmethod
    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None) -> InstanceRecord | None:
        """Enqueue ``message`` if its instance exists (and, guarded, its status is listed), atomically.

        Returns the instance row as it was (``None`` if unknown; then nothing is enqueued).
        """

    @abstractmethod
    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""

    @abstractmethod
    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        """Events of one execution (default: the current one); ``[]`` if none."""

    @abstractmethod
    async def list_executions(self, instance_id: str) -> list[int]:
        """Execution ids that have history, ascending."""

    @abstractmethod
    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceRecord]:
        """Instances, newest first, optionally filtered."""

    @abstractmethod
    async def purge_instance(self, instance_id: str, *,
                             only_if_status_in: Collection[str] | None = None) -> list[str] | None:
        """Delete an instance and its descendants (rows whose parent chain leads to it) with
        their histories, queued messages, locks, work and heartbeats, atomically.

        Returns the ids deleted (``[]`` if unknown); ``None``, deleting nothing, if the
        instance's status is not in ``only_if_status_in``.
        """

    # -- orchestration dispatcher --------------------------------------------------

    @abstractmethod
    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float) -> FetchResult:
        """Lock up to ``max_items`` instances with visible messages (instance-level exclusivity)."""

    @abstractmethod
    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        """Histories of several (instance, execution) pairs in one round trip; a
        corrupt one maps to its :class:`CorruptHistoryError`."""

    @abstractmethod
    async def commit_turns(self, commits: Sequence[TurnCommit]) -> list[bool]:
        """Commit turns in one transaction where possible; ``False`` where the lock was lost,
        or where the store refused that turn's content (then ``commit.refused`` says why;
        the other turns of the batch are committed)."""

    @abstractmethod
    async def renew_orchestration_items(self, locks: Sequence[tuple[str, str]], lock_timeout: float) -> list[bool]:
        """Extend instance locks taken by :meth:`fetch_orchestration_items` to now + ``lock_timeout``.

        ``locks`` holds ``(instance_id, lock_token)`` pairs; one transaction for all.
        ``False`` where that token no longer holds the lock (it expired and another
        process took the instance): the turn's commit will be refused.
        """

    @abstractmethod
    async def abandon_orchestration_item(self, instance_id: str, lock_token: str, delay: float) -> None:
        """Unlock without consuming; messages become visible again after ``delay`` seconds."""

    # -- activity workers ----------------------------------------------------------

    @abstractmethod
    async def fetch_work_items(self, max_items: int, lock_timeout: float, *,
                               known_names: Collection[str] | None = None,
                               foreign_delay: float = 1.0) -> list[WorkLease]:
        """Lock up to ``max_items`` visible activity calls.

        With ``known_names``, calls of other activities are taken only once they
        have been visible for ``foreign_delay`` seconds: during a rolling deploy a
        node that knows the activity gets it first, and a name no node knows still
        reaches a worker (which backs off and finally poisons it).
        """

    @abstractmethod
    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None) -> None:
        """Delete each leased item and enqueue its result for the instance, atomically
        (and the heartbeat row its ``forget_heartbeat`` names).

        A result whose lease no longer exists is dropped: its instance was purged
        (and may have been created again under the same id, which must never get
        the old instance's results), or another worker took the call over. A result
        whose instance is gone, or (guarded) has a status not listed, is dropped too.
        """

    @abstractmethod
    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        """Release a lease; the item is visible again after ``delay`` seconds."""

    @abstractmethod
    async def renew_work_item(self, lock_token: str, lock_timeout: float, *,
                              only_if_status_in: Collection[str] | None = None,
                              only_if_execution: int | None = None) -> bool:
        """Extend a lease; ``False`` if it was lost, the call was cancelled, its instance is
        gone, or a guard fails: the instance's status is not in ``only_if_status_in``, or
        its current execution is not ``only_if_execution``."""

    @abstractmethod
    async def record_heartbeats(self, beats: Sequence[HeartbeatWrite], *,
                                only_if_status_in: Collection[str] | None = None) -> list[bool]:
        """Record activity heartbeats, in one transaction; per beat, whether it was recorded.

        A beat is recorded only while its lease holds, as for :meth:`renew_work_item`:
        its token still holds the work item, the call is not cancelled, its instance
        exists with the call's execution as its current one and (guarded) a listed
        status. Then the row of ``beat.call`` is created or updated: ``event_id``, the
        time, and ``details`` unless ``None``; and with ``lock_timeout`` the lease is
        extended. ``False`` (nothing written for that beat) otherwise. Rows are deleted
        by :meth:`purge_instance` and by a completion's ``forget_heartbeat``.
        """

    @abstractmethod
    async def read_heartbeat(self, call: CallKey) -> HeartbeatRecord | None:
        """The heartbeat row of ``call`` (see :meth:`record_heartbeats`), or ``None``."""

    @abstractmethod
    async def queue_depths(self, *, active_statuses: Collection[str] = ("Pending", "Running")) -> QueueDepths:
        """Counts of waiting work, and of instances whose status is in ``active_statuses``."""

    # -- lifecycle -----------------------------------------------------------------

    async def close(self) -> None:
        """Release connections (idempotent)."""
