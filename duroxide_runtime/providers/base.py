"""The store interface every provider implements, and the records it exchanges.

A provider keeps three things durable: instances (one row each), histories
(events per execution) and two peek-lock queues (orchestrator messages per
instance, activity work). The runtime never touches storage directly; the
same conformance suite (``tests/test_provider_conformance.py``) runs
unchanged against every provider.

Batching is part of the contract: ``fetch_orchestration_items`` locks many
instances at once and ``commit_turns`` commits many turns in one
transaction, so a store round trip is paid per batch, not per instance.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..errors import ErrorDetails
from ..history import HistoryEvent
from ..messages import (
    ActivityResult, ActivityWork, OrchestratorMessage, PoisonNotice, StartOrchestration, SubOrchestrationResult,
    TimerFired,
)

__all__ = [
    "Provider", "InstanceRecord", "InstanceUpdate", "OrchestrationItem", "QueuedMessage", "TurnCommit",
    "WorkLease", "WorkCompletion", "FetchResult", "WakeSignals", "TERMINAL", "now_ms", "child_rejection",
    "decode_error_details", "QueueDepths", "is_cancelled_timer",
]

#: Statuses after which an instance takes no more work.
TERMINAL = frozenset({"Completed", "Failed"})


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (store timestamps, timer due times)."""
    return int(time.time() * 1000)


def is_cancelled_timer(message: object, commit: TurnCommit) -> bool:
    """Whether a queued message is a ``TimerFired`` that ``commit`` cancels."""
    return (isinstance(message, TimerFired) and message.instance_id == commit.instance_id
            and message.execution_id == commit.execution_id and message.event_id in commit.cancelled_timers)


def decode_error_details(raw: bytes | str | None) -> ErrorDetails | None:
    """The stored error column of an instance; an unreadable one becomes a placeholder, not a crash."""
    if not raw:
        return None
    try:
        return ErrorDetails.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError):
        # One unreadable row must not stop every fetch that reads it.
        return ErrorDetails("CorruptHistoryError", f"the stored error is unreadable: {raw[:80]!r}")


def child_rejection(start: StartOrchestration) -> SubOrchestrationResult | None:
    """The failure a parent gets when its child's instance id is already taken (None if no parent)."""
    if start.parent_instance_id is None or start.parent_event_id is None:
        return None
    return SubOrchestrationResult(
        instance_id=start.parent_instance_id, execution_id=start.parent_execution_id or 1,
        event_id=start.parent_event_id,
        error=ErrorDetails("InstanceAlreadyExistsError",
                           f"instance {start.instance_id!r} already exists; the child was not started"))


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
    #: Orchestrator messages with the time they become visible (None: now).
    messages: list[tuple[OrchestratorMessage, int | None]] = field(default_factory=list)
    #: Event ids of this execution's activities to cancel.
    cancelled_activities: list[int] = field(default_factory=list)
    #: Event ids of this execution's timers whose queued ``TimerFired`` must be deleted
    #: (a select loser, a timer of an execution that ended): they must never fire.
    cancelled_timers: list[int] = field(default_factory=list)
    update: InstanceUpdate | None = None
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


class WakeSignals:
    """In-process wake-ups, so that idle dispatchers and waiting clients never poll.

    Providers call ``notify_*`` after a commit; the runtime and client wait
    with a timeout (other processes sharing the store cannot signal us, so
    every wait is bounded and falls back to a store read).
    """

    def __init__(self) -> None:
        self._orchestrator = asyncio.Event()
        self._worker = asyncio.Event()
        self._instances: dict[str, list[asyncio.Future[None]]] = {}

    def notify_orchestrator(self) -> None:
        self._orchestrator.set()

    def notify_worker(self) -> None:
        self._worker.set()

    def notify_instance(self, instance_id: str) -> None:
        for fut in self._instances.pop(instance_id, ()):
            if not fut.done():
                fut.set_result(None)

    def after_commit(self, commits: Sequence[TurnCommit], results: Sequence[bool]) -> None:
        """Wake what a batch of committed turns concerns: dispatchers, workers, waiting clients."""
        self.notify_orchestrator()
        if any(c.activities for c in commits):
            self.notify_worker()
        for c, ok in zip(commits, results):
            if ok and c.update is not None and c.update.status in TERMINAL:
                self.notify_instance(c.instance_id)

    async def wait_orchestrator(self, timeout: float) -> None:
        await _wait_event(self._orchestrator, timeout)

    async def wait_worker(self, timeout: float) -> None:
        await _wait_event(self._worker, timeout)

    async def wait_instance(self, instance_id: str, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._instances.setdefault(instance_id, []).append(fut)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel
            # that arrives together with the wake-up, and the caller then never stops.
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            pass
        finally:
            waiters = self._instances.get(instance_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._instances[instance_id]


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    if not event.is_set():
        try:
            # Not wait_for: on Python 3.11 it returns normally when the cancel of an idle
            # dispatcher coincides with a wake-up, and asyncio.run() then waits forever
            # for a task that ignored its cancel (issue 10, defect 5).
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
    event.clear()


class Provider(ABC):
    """A durable store for instances, histories and queues.

    Implementations: :class:`InMemoryProvider`, :class:`SqliteProvider`,
    ``PostgresProvider``. Every method is safe to call concurrently from
    many tasks; busy/locked conditions are retried inside the provider.
    """

    signals: WakeSignals

    # -- client side -------------------------------------------------------------

    @abstractmethod
    async def create_instance(self, start: StartOrchestration) -> None:
        """Create the instance row (status Pending) and enqueue its start, atomically.

        Raises :class:`InstanceAlreadyExistsError` (and changes nothing) if the id is taken.
        """

    @abstractmethod
    async def send(self, message: OrchestratorMessage) -> InstanceRecord | None:
        """Enqueue ``message`` if its instance exists and has not finished.

        Returns the instance as it was (``None`` if unknown; then nothing is enqueued).
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
    async def purge_instance(self, instance_id: str, *, force: bool = False) -> list[str]:
        """Delete an instance (and its children) with history and queued messages.

        Returns the ids deleted. Raises :class:`InstanceStillRunningError` for a
        running instance unless ``force``.
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
    async def complete_work_items(self, completions: Sequence[WorkCompletion]) -> None:
        """Delete each leased item and enqueue its result for the instance, atomically.

        A result whose lease no longer exists is dropped: its instance was purged
        (and may have been created again under the same id, which must never get
        the old instance's results), or another worker took the call over.
        """

    @abstractmethod
    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        """Release a lease; the item is visible again after ``delay`` seconds."""

    @abstractmethod
    async def renew_work_item(self, lock_token: str, lock_timeout: float) -> bool:
        """Extend a lease; ``False`` if it was lost or the activity was cancelled."""

    @abstractmethod
    async def queue_depths(self) -> QueueDepths:
        """Counts of waiting work and active instances."""

    # -- lifecycle -----------------------------------------------------------------

    async def close(self) -> None:
        """Release connections (idempotent)."""
