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


import base64
import binascii
import orjson
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ErrorDetails, InvalidInputError
from ..history import HistoryEvent
from ..limits import check_count, check_lookup_id
from ..messages import ActivityResult, ActivityWork, OrchestratorMessage, PoisonNotice, StartOrchestration, TimerFired
from ..queues import QueueOptions
from ..start_policy import IDEMPOTENCY_KEY_TTL_MS, IfExists

__all__ = [
    "Provider", "InstanceRecord", "InstanceUpdate", "OrchestrationItem", "QueuedMessage", "TurnCommit",
    "WorkLease", "WorkCompletion", "FetchResult", "now_ms", "decode_error_details", "QueueDepths",
    "ChildStart", "CallKey", "timer_key", "status_admits", "Durability", "HeartbeatWrite", "HeartbeatRecord",
    "InstanceQuery", "InstancePage", "InstanceCount", "FailureGroup", "StoreOverview", "MAX_PAGE_LIMIT",
    "MINUTE_MS", "UNKNOWN_ERROR_TYPE", "CORRUPT_ERROR_TYPE", "encode_cursor", "decode_cursor", "check_query", "page_of",
    "failure_type", "make_overview", "StartOutcome", "QueueStats", "WAITING_OFFSET_MS", "WAITING_LOCK_TOKEN", "WAITING_LOCK_UNTIL",
    "ScheduleRecord", "ScheduleFire", "check_debounced_start", "LeaseOffer", "LockOffer",
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
class StartOutcome:
    """What :meth:`Provider.start_instance` did.

    ``instance_id``: the instance that runs (the start's, or the one its idempotency key
    recorded). ``created``: this call wrote a new instance (fresh, or replacing a finished
    one: then ``replaced`` lists the ids deleted, the old instance's first). ``by_key``: the
    idempotency key named an earlier start, and nothing was written. ``debounced``: a
    debounced start (:meth:`Provider.debounce_start`) joined the open window of
    ``instance_id``: its held start took this call's input and due time, nothing was created.
    Otherwise the id was taken and kept: ``existing`` is its row as found, and the caller
    decides what that means (fail, return it, refuse the replace).

    Example::

        outcome = await store.start_instance(start, if_exists=IfExists.RETURN_EXISTING)
        if not outcome.created and outcome.existing is not None:
            print("already there:", outcome.existing.status)
    """

    instance_id: str
    created: bool
    existing: InstanceRecord | None = None
    replaced: tuple[str, ...] = ()
    by_key: bool = False
    debounced: bool = False


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
    #: Set by the provider: the calls of ``activities`` it leased with the commit (see
    #: :class:`LeaseOffer`); the others are queued as usual.
    leased: list[WorkLease] = field(default_factory=list)
    #: Set by the provider to ``False`` when, after the commit, the instance has no message
    #: visible now: the dispatcher need not look for work again at once (a message enqueued
    #: in this process since wakes it). A provider that does not tell leaves ``True``.
    more_due: bool = True


@dataclass(frozen=True)
class LeaseOffer:
    """Calls a turn commit may lease at once to this process's idle activity worker.

    Fetching a call the process itself just committed costs a store round trip on
    every activity's path; instead the commit inserts up to ``max_items`` of the new
    calls already leased for ``lock_timeout`` seconds, exactly as
    :meth:`Provider.fetch_work_items` would have leased them (a new token, delivery
    count 1), and reports them in :attr:`TurnCommit.leased`. Only calls whose name is
    in ``names`` and whose queue is not in ``limited_queues`` (their slots are counted
    by the fetch) are offered, in the order the turns enqueue them. A store may ignore
    the offer: the calls are then queued and fetched as usual.

    Example::

        ok = await store.commit_turns(commits, lease=LeaseOffer(4, 30.0, frozenset({"charge"})))
        leases = [lease for c in commits for lease in c.leased]
    """

    max_items: int
    lock_timeout: float
    names: frozenset[str]
    limited_queues: frozenset[str] = frozenset()

    def admits(self, work: ActivityWork) -> bool:
        """Whether ``work`` may be leased with its commit."""
        return work.name in self.names and work.queue not in self.limited_queues


@dataclass(frozen=True)
class LockOffer:
    """Instances that recording activity results may lock at once for this process's idle dispatcher.

    The counterpart of :class:`LeaseOffer`: :meth:`Provider.complete_work_items` locks up
    to ``max_items`` of the instances it enqueued a result for whose orchestration name is
    in ``names``, for ``lock_timeout`` seconds, exactly as
    :meth:`Provider.fetch_orchestration_items` would (an instance with a live lock,
    including one waiting for its queue, is left alone; all its visible messages come with
    it), and returns them. A store may ignore the offer.

    Example::

        items = await store.complete_work_items(done, lock=LockOffer(1, 5.0, frozenset({"Order"})))
    """

    max_items: int
    lock_timeout: float
    names: frozenset[str]


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
    #: Instances waiting for a slot of their queue (counted in ``active_instances`` too).
    waiting_instances: int = 0


@dataclass(frozen=True)
class QueueStats:
    """One queue's work now (:meth:`Provider.queue_stats`): what waits for it and what holds its slots.

    ``waiting_instances``: instances started in the queue that wait for a slot;
    ``running_instances``: admitted ones still live; ``queued_calls``: activity calls of
    the queue not leased now (waiting for a worker or a slot); ``running_calls``: leased ones.

    Example: ``QueueStats("payments", 0, 0, 120, 10)``: 10 calls run, 120 wait.
    """

    queue: str
    waiting_instances: int
    running_instances: int
    queued_calls: int
    running_calls: int


#: A start waiting for its queue's admission is stored this far in the future (added to the
#: moment it was written; admission takes it off again), so that no fetch walks past it.
WAITING_OFFSET_MS = 2**60
#: The lock an instance waiting for its queue holds until admitted: no dispatcher fetches it.
WAITING_LOCK_TOKEN = "waiting-for-queue"
WAITING_LOCK_UNTIL = 2**62


def check_debounced_start(start: StartOrchestration, quiet_ms: int) -> None:
    """What every store's :meth:`Provider.debounce_start` requires (the client checks it first):
    a start waiting in no queue, and a positive quiet period. Else :class:`InvalidInputError`.

    Example: ``check_debounced_start(start, 5000)`` passes for a start with ``queue=None``.
    """
    if start.queue is not None:
        raise InvalidInputError("queue", "is set on a debounced start: a held start waits in no queue",
                                fix="start without queue= (or queue='default') when debouncing")
    if isinstance(quiet_ms, bool) or not isinstance(quiet_ms, int) or quiet_ms <= 0:
        raise InvalidInputError("debounce", f"is {quiet_ms!r} ms, not a positive whole number",
                                fix="pass a positive quiet period")


# -- schedules -----------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule's row (see :mod:`duroxide_runtime.schedules`; the runtime reads the cron, stores never do).

    ``catch_up`` is the policy's string; times are ms by the store's clock.
    ``registered_at_ms``: when a runtime that registers ``orchestration`` last said so
    (:meth:`Provider.confirm_schedules`); ``None`` if none ever did.

    Example: ``ScheduleRecord("nightly", "0 2 * * *", "Cleanup", "", None, "skip", False, next_tick_ms)``.
    """

    schedule_id: str
    cron: str
    orchestration: str
    input: str
    version: str | None
    catch_up: str
    paused: bool
    next_tick_ms: int
    last_tick_ms: int | None = None
    last_instance_id: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    registered_at_ms: int | None = None


@dataclass(frozen=True)
class ScheduleFire:
    """One pass of a schedule (:meth:`Provider.fire_schedule`): the ticks' starts and where it goes next.

    Applied only if the row still has ``expected_next_tick_ms`` and is not paused.
    ``starts`` (one per tick, oldest first) create their instances unless the id exists;
    then the row's next tick becomes ``next_tick_ms`` and, if ``starts`` is not empty,
    its last tick ``last_tick_ms`` and last instance the last start's id.

    Example: ``ScheduleFire("nightly", due, [start], last_tick_ms=due, next_tick_ms=due + 86_400_000)``.
    """

    schedule_id: str
    expected_next_tick_ms: int
    starts: Sequence[StartOrchestration]
    last_tick_ms: int | None
    next_tick_ms: int


# -- operator queries (listing, overview) ------------------------------------------

#: Most instances one page of :meth:`Provider.query_instances` holds.
MAX_PAGE_LIMIT = 1000
#: Width of one bucket of :attr:`StoreOverview.finished_per_minute`.
MINUTE_MS = 60_000
#: The failure group of a failed instance whose row holds no error type.
UNKNOWN_ERROR_TYPE = "UnknownError"
#: The failure group of a failed instance whose stored error is unreadable (as :func:`decode_error_details`).
CORRUPT_ERROR_TYPE = "CorruptHistoryError"

_CURSOR_FIX = "pass the next_cursor of the previous page unchanged, or None for the first page"


@dataclass(frozen=True)
class InstanceQuery:
    """Which instances :meth:`Provider.query_instances` lists: every filter optional, combined with AND.

    ``status``, ``name`` and ``version`` match exactly (a status is whatever string the
    runtime stored; stores never interpret it). ``q`` is a case-sensitive substring of the
    instance id, taken literally (``%`` and ``_`` are plain characters). ``cursor`` is the
    :attr:`InstancePage.next_cursor` of the previous page (``None``: the first page);
    ``limit`` is 1 to :data:`MAX_PAGE_LIMIT`.

    Example::

        page = await store.query_instances(InstanceQuery(status="Failed", limit=20))
        older = await store.query_instances(InstanceQuery(status="Failed", limit=20, cursor=page.next_cursor))
    """

    status: str | None = None
    name: str | None = None
    version: str | None = None
    q: str | None = None
    cursor: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class InstancePage:
    """One page of instances, newest first (by creation time, then id, both descending).

    ``next_cursor`` continues after the last row (``None`` on the last page). Pages are
    keyset-paginated: instances created between two page reads never make a page
    repeat or skip an older row.

    Example::

        page = await store.query_instances(InstanceQuery(limit=100))
        while page.next_cursor is not None:
            page = await store.query_instances(InstanceQuery(limit=100, cursor=page.next_cursor))
    """

    instances: list[InstanceRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class InstanceCount:
    """How many instances have one (status, name, version).

    Example: ``InstanceCount("Completed", "Checkout", "1.0.0", 1200)``.
    """

    status: str
    name: str
    version: str | None
    count: int


@dataclass(frozen=True)
class FailureGroup:
    """Failed instances sharing one error type, and the latest of them.

    ``last_*`` describe the failed instance updated last (ties: the greatest id).

    Example: ``FailureGroup("TimeoutError", 12, "order-77", "no reply in 30 s", 1_704_067_260_000)``.
    """

    error_type: str
    count: int
    last_instance_id: str
    last_message: str
    last_at_ms: int


@dataclass(frozen=True)
class StoreOverview:
    """What :meth:`Provider.overview` reports: instance counts, recent endings and failures, queue depths.

    ``counts``: every (status, name, version) with its count, sorted by status, name, then
    version (``None`` first). ``finished_per_minute``: ``(minute start ms, status, count)``
    of the instances with a finished status updated since ``since_ms``, by minute then
    status. ``failures``: the failed instances updated since ``since_ms``, grouped by
    error type, biggest group first (ties: by type).

    Example::

        overview = await store.overview(store.clock.now_ms() - 3_600_000)
        failing = [(g.error_type, g.count) for g in overview.failures]
    """

    counts: list[InstanceCount]
    finished_per_minute: list[tuple[int, str, int]]
    failures: list[FailureGroup]
    depths: QueueDepths


def encode_cursor(created_at_ms: int, instance_id: str) -> str:
    """The opaque cursor of a page that ended with this row (URL-safe text).

    Example: ``decode_cursor(encode_cursor(1_704_067_200_000, "order-1")) == (1_704_067_200_000, "order-1")``.
    """
    return base64.urlsafe_b64encode(orjson.dumps([created_at_ms, instance_id])).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object) -> tuple[int, str]:
    """The ``(created_at_ms, instance_id)`` an :func:`encode_cursor` cursor holds.

    Anything else raises :class:`InvalidInputError` naming ``cursor`` (every store
    decodes through here, so all refuse the same cursors alike).

    Example: ``decode_cursor("bogus")`` raises ``InvalidInputError: cursor is not a cursor ...``.
    """
    if not isinstance(cursor, str):
        raise InvalidInputError("cursor", f"must be str or None, got {type(cursor).__name__}", fix=_CURSOR_FIX)
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        value = None
    if (isinstance(value, list) and len(value) == 2 and type(value[0]) is int and isinstance(value[1], str)
            and -2**63 <= value[0] < 2**63 and "\x00" not in value[1]):
        return value[0], value[1]
    raise InvalidInputError("cursor", f"is not a cursor a page of instances returned: {cursor[:60]!r}",
                            fix=_CURSOR_FIX)


def check_query(query: InstanceQuery) -> tuple[int, str] | None:
    """Check ``query`` as every store must, and return the position its cursor holds (``None``: from the top).

    Raises :class:`InvalidInputError` naming the field: a ``limit`` outside
    1..:data:`MAX_PAGE_LIMIT`, a filter no store can hold (NUL, lone surrogates), a
    malformed cursor. Example::

        after = check_query(InstanceQuery(limit=10))   # None: the first page
    """
    check_count(query.limit, "limit", 1, MAX_PAGE_LIMIT)
    for field_name in ("status", "name", "version", "q"):
        value = getattr(query, field_name)
        if value is not None:
            check_lookup_id(value, field_name)
    return None if query.cursor is None else decode_cursor(query.cursor)


def page_of(rows: Sequence[InstanceRecord], limit: int) -> InstancePage:
    """The page of ``rows``, read with ``LIMIT limit + 1``: one row more than ``limit`` means more pages.

    Example: ``page_of(records[:11], 10)`` holds ten records and the cursor after the tenth.
    """
    if len(rows) <= limit:
        return InstancePage(list(rows), None)
    last = rows[limit - 1]
    return InstancePage(list(rows[:limit]), encode_cursor(last.created_at_ms, last.instance_id))


def failure_type(error: ErrorDetails | None) -> str:
    """The failure group of a failed instance's error (:data:`UNKNOWN_ERROR_TYPE` for none).

    Example: ``failure_type(ErrorDetails("ValueError", "bad"))`` is ``"ValueError"``.
    """
    return error.error_type if error is not None and error.error_type else UNKNOWN_ERROR_TYPE


def make_overview(counts: Sequence[InstanceCount], finished_per_minute: Sequence[tuple[int, str, int]],
                  failures: Sequence[FailureGroup], depths: QueueDepths) -> StoreOverview:
    """A :class:`StoreOverview` with its lists in the documented order (the same from every store,
    whatever order or collation its database has).

    Example: ``make_overview([], [], [], depths)``.
    """
    return StoreOverview(
        sorted(counts, key=lambda c: (c.status, c.name, c.version is not None, c.version or "")),
        sorted(finished_per_minute),
        sorted(failures, key=lambda g: (-g.count, g.error_type)),
        depths)


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
    async def create_instance(self, start: StartOrchestration, *,
                              lock: LockOffer | None = None) -> OrchestrationItem | None:
        """Create the instance row (status Pending) and enqueue its start, atomically.

        With ``lock``, a start that names no queue and whose name is in ``lock.names`` may
        come back locked with the new instance, as a fetch would lock it (see
        :class:`LockOffer`); otherwise the result is ``None``.

        Raises :class:`InstanceAlreadyExistsError` (and changes nothing) if the id is taken.
        A start naming a ``queue`` creates an instance *waiting* for that queue: its start
        is held back and the instance is not fetched (messages sent to it wait with it)
        until :meth:`fetch_orchestration_items` admits it. The same holds for every other
        way a start creates an instance (:meth:`start_instance`; a :class:`ChildStart`
        names no queue).
        """

    @abstractmethod
    async def start_instance(self, start: StartOrchestration, *, if_exists: IfExists = IfExists.FAIL,
                             replace_if_status_in: Collection[str] = (), idempotency_key: str | None = None,
                             key_ttl_ms: int = IDEMPOTENCY_KEY_TTL_MS,
                             messages: Sequence[tuple[OrchestratorMessage, int | None]] = ()) -> StartOutcome:
        """Start ``start``'s instance under a start policy, in one transaction (see :class:`StartOutcome`).

        In this order:

        1. ``idempotency_key`` recorded less than ``key_ttl_ms`` ago (by the store's clock):
           change nothing; return the instance id it recorded (``by_key``). Of concurrent
           calls with one key, from any number of processes, exactly one gets past here.
        2. The id is free: create the row and enqueue the start as :meth:`create_instance`
           does, then ``messages``, each visible from its time (ms by the store's clock;
           ``None``: now), as ``TurnCommit.messages`` are (``created``). The runtime puts a
           start's deadline there: a cancellation held back until it passes.
        3. The id is taken, ``if_exists`` is ``REPLACE`` and the row's status is in
           ``replace_if_status_in`` (the runtime names the finished statuses): delete the
           instance as :meth:`purge_instance` does (descendants, histories, messages,
           locks, work, heartbeats), then create it afresh as in 2 (``created``, ``replaced``).
        4. Otherwise nothing is written; ``existing`` is the row.

        The key is recorded (naming ``start.instance_id``, stamped now) with what 2 and 3
        write, and in 4 only for ``RETURN_EXISTING``: a start that fails records nothing.
        An expired key counts as absent and is overwritten; expired keys are deleted in
        the background of later keyed starts. A retry after a reply lost once the store
        committed must report what the first attempt did (its incarnation, or its key).
        """

    @abstractmethod
    async def debounce_start(self, start: StartOrchestration, *, debounce_key: str, quiet_ms: int) -> StartOutcome:
        """A debounced start, in one transaction: one instance per quiet period of (``start.name``, ``debounce_key``).

        The store keeps one window per (orchestration name, ``debounce_key``), naming an
        instance and its held start (the queued ``StartOrchestration``). The window is
        *open* while that start is still queued and was never fetched (its delivery count
        is 0): no dispatcher has picked it up. Then:

        1. Open window: the held start becomes ``start`` (with the held instance's id: the
           last call's input wins) and becomes visible at now + ``quiet_ms`` (by the store's
           clock); returns the held instance's id, ``debounced``. Nothing is created.
        2. No window, or a closed one: if ``start.instance_id`` is taken, nothing is written
           and ``existing`` is its row. Otherwise the instance is created (status Pending)
           with its start held back until now + ``quiet_ms`` (invisible to fetches until
           then, as a ``TurnCommit`` message with a visible-at time), and the window names
           it (``created``). A closed window is overwritten here (collected lazily).

        Of concurrent calls for one (name, key), from any number of processes, each sees
        the window as the one before it left it: one instance per open window, never two.
        ``start`` names no queue (:func:`check_debounced_start`); ``quiet_ms`` is positive.
        """

    @abstractmethod
    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None,
                   set_status: str | None = None) -> InstanceRecord | None:
        """Enqueue ``message`` if its instance exists (and, guarded, its status is listed), atomically.

        With ``set_status``, the enqueued message also sets the instance's status (and
        ``updated_at``), in the same transaction: an operator's rewind or restart makes a
        finished instance live again before its turn runs, so that waiters wait for it.
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
    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        """One page of instances matching ``query``, newest first (``created_at_ms``, then id, descending).

        Keyset-paginated from ``query.cursor`` (decoded by :func:`check_query`, which also
        checks the limit and filters): a durable store serves the common filters from
        indexes, never by sorting the table. Read ``limit + 1`` rows and build the page
        with :func:`page_of`.
        """

    @abstractmethod
    async def overview(self, since_ms: int, *, finished_statuses: Collection[str] = ("Completed", "Failed"),
                       failed_status: str = "Failed",
                       active_statuses: Collection[str] = ("Pending", "Running")) -> StoreOverview:
        """Counts per (status, name, version), endings per minute and failure groups since ``since_ms``,
        and the queue depths (see :class:`StoreOverview`; build it with :func:`make_overview`).

        The runtime names the statuses (stores never interpret one): ``finished_statuses``
        are counted per minute of ``updated_at_ms``; rows of ``failed_status`` are grouped
        by their error's type (:func:`failure_type`); ``active_statuses`` go to
        :meth:`queue_depths`.
        """

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
    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float, *,
                                        queues: Mapping[str, QueueOptions] | None = None,
                                        live_statuses: Collection[str] = ()) -> FetchResult:
        """Lock up to ``max_items`` instances with visible messages (instance-level exclusivity).

        First, in the same transaction, admit instances waiting for a queue (see
        :meth:`create_instance`) of each queue listed in ``queues``: in order of their
        start's ``priority`` (highest first; ``None`` counts as 0), then creation, as many as
        the queue's limits allow, counting the instances of that queue admitted earlier whose
        status is in ``live_statuses`` (the runtime names them; an admitted instance whose
        status is not listed frees its slot for good) per queue and per concurrency key, and
        the admissions of the last ``rate_limit.per`` (recorded with their time). An admitted
        instance's start becomes visible and its waiting lock goes, so this fetch may lock it.
        Instances of a queue not listed keep waiting. Serialised with every other fetch that
        admits for the same queue, in any process: a limit holds across processes.
        ``FetchResult.next_due_ms`` never names a waiting start.
        """

    @abstractmethod
    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        """Histories of several (instance, execution) pairs in one round trip; a
        corrupt one maps to its :class:`CorruptHistoryError`."""

    @abstractmethod
    async def commit_turns(self, commits: Sequence[TurnCommit], *, lease: LeaseOffer | None = None) -> list[bool]:
        """Commit turns in one transaction where possible; ``False`` where the lock was lost,
        or where the store refused that turn's content (then ``commit.refused`` says why;
        the other turns of the batch are committed). With ``lease``, calls the committed
        turns enqueue may come back leased in ``commit.leased`` (see :class:`LeaseOffer`)."""

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
                               foreign_delay: float = 1.0,
                               queues: Mapping[str, QueueOptions] | None = None) -> list[WorkLease]:
        """Lock up to ``max_items`` visible activity calls, highest ``ActivityWork.priority`` first,
        then in the order they were enqueued.

        With ``known_names``, calls of other activities are taken only once they
        have been visible for ``foreign_delay`` seconds: during a rolling deploy a
        node that knows the activity gets it first, and a name no node knows still
        reaches a worker (which backs off and finally poisons it).

        With ``queues``, a call whose ``ActivityWork.queue`` sets a limit there is leased
        only while, counting the calls of that queue leased now in any process (a lapsed
        lease does not count; a cancelled call still leased does) and those this fetch
        takes: fewer than ``concurrency`` are leased; its ``concurrency_key`` is ``None`` or
        fewer than ``per_key_concurrency`` with that key are leased; and fewer than
        ``rate_limit.n`` calls of the queue were leased in the last ``rate_limit.per`` (the
        store records each such lease's time). Counting and leasing are one transaction,
        serialised with every other fetch of the store: the limits hold across processes.
        Calls that must wait stay queued, and are passed over without being read one by
        one (count them with :class:`~duroxide_runtime.providers.queue_slots.QueueSlots`).
        """

    @abstractmethod
    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None,
                                  lock: LockOffer | None = None) -> list[OrchestrationItem]:
        """Delete each leased item and enqueue its result for the instance, atomically
        (and the heartbeat row its ``forget_heartbeat`` names). With ``lock``, the
        instances the results went to may come back locked (see :class:`LockOffer`);
        otherwise the list is empty.

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

    @abstractmethod
    async def queue_stats(self, *, live_statuses: Collection[str] = ()) -> list[QueueStats]:
        """Per queue that holds anything now, its :class:`QueueStats`, sorted by queue name.

        An admitted instance counts as running while its status is in ``live_statuses``
        (the runtime names them). A queue with nothing waiting or running is left out.
        """

    # -- schedules -----------------------------------------------------------------

    @abstractmethod
    async def put_schedule(self, record: ScheduleRecord, *, replace: bool = False) -> ScheduleRecord | None:
        """Create the schedule row ``record`` (stamped now); returns it as stored.

        If the id is taken: without ``replace`` change nothing and return ``None``; with it,
        set the cron, orchestration, input, version and catch-up from ``record`` and keep
        the paused flag, last tick, last instance, creation time and confirmation; the next
        tick becomes ``record``'s only if the cron changed (an unchanged schedule keeps its
        place, so every process may put it at start).
        """

    @abstractmethod
    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule row, or ``None``."""

    @abstractmethod
    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule row, by id."""

    @abstractmethod
    async def set_schedule_paused(self, schedule_id: str, paused: bool, *,
                                  next_tick_ms: int | None = None) -> ScheduleRecord | None:
        """Set the paused flag (and, if given, the next tick) of a schedule; returns the row as
        it now is, or ``None`` (nothing written) if there is none."""

    @abstractmethod
    async def delete_schedule(self, schedule_id: str) -> bool:
        """Delete the schedule row (never the instances it started); whether there was one."""

    @abstractmethod
    async def fire_schedule(self, fire: ScheduleFire) -> bool:
        """Apply one pass of a schedule (see :class:`ScheduleFire`) in one transaction; whether it applied.

        Nothing is written (``False``) unless the row exists, is not paused and its next tick
        is ``fire.expected_next_tick_ms``: of passes from any number of processes for one
        tick exactly one applies, and no tick is started twice. Each start creates its
        instance as :meth:`create_instance` does, or nothing if the id is taken (never a
        replace).
        """

    @abstractmethod
    async def confirm_schedules(self, schedule_ids: Collection[str]) -> None:
        """Stamp the schedules' ``registered_at_ms`` with now: a runtime that registers their
        orchestrations runs (ids that do not exist are ignored)."""

    # -- lifecycle -----------------------------------------------------------------

    async def close(self) -> None:
        """Release connections (idempotent)."""
