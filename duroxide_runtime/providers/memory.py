"""``InMemoryProvider``: the whole store in Python dicts, for tests and experiments.

Same semantics as the durable providers (it passes the same conformance
suite), but nothing survives the process.

Example::

    store = InMemoryProvider()
    rt = await Runtime.builder().store(store).orchestrations(orchs).activities(acts).start()
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from ..errors import InstanceAlreadyExistsError
from ..history import HistoryEvent
from ..messages import ActivityWork, OrchestratorMessage, StartOrchestration
from .base import (
    WAITING_OFFSET_MS,
    MINUTE_MS, CallKey, FailureGroup, FetchResult, HeartbeatRecord, HeartbeatWrite, InstanceCount, InstancePage,
    InstanceQuery, QueueDepths, QueueStats, InstanceRecord, OrchestrationItem, Provider, QueuedMessage, ScheduleFire,
    ScheduleRecord, StartOutcome, StoreOverview,
    TurnCommit, WorkCompletion, WorkLease, check_debounced_start, check_query, failure_type, make_overview, page_of, status_admits,
    timer_key, LeaseOffer, LockOffer,
)
from ..clock import SYSTEM_CLOCK, Clock
from ..queues import QueueOptions
from ..start_policy import IDEMPOTENCY_KEY_TTL_MS, IfExists
from .queue_slots import QueueSlots, limited_queues

__all__ = ["InMemoryProvider"]


@dataclass
class _Queued:
    id: int
    message: OrchestratorMessage
    visible_at: int
    dequeue_count: int = 0
    lock_token: str | None = None


@dataclass(frozen=True)
class _Placement:
    """Where an instance started with a ``queue`` stands in it."""

    queue: str
    key: str | None
    priority: int
    order: int


@dataclass
class _Work:
    id: int
    work: ActivityWork
    visible_at: int
    dequeue_count: int = 0
    lock_token: str | None = None
    locked_until: int = 0
    cancelled: bool = False


class InMemoryProvider(Provider):
    """A non-durable provider held in memory (one process).

    ``clock`` is the time source of locks, leases, due times and timestamps
    (default: the system clock); the runtime and clients of the store use it too.
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._ids = itertools.count(1)
        self._instances: dict[str, InstanceRecord] = {}
        self._history: dict[tuple[str, int], list[HistoryEvent]] = {}
        self._queue: dict[int, _Queued] = {}
        self._locks: dict[str, tuple[str, int]] = {}
        self._work: dict[int, _Work] = {}
        #: Lease times of the rate-limited queues' calls within their windows.
        self._queue_leases: dict[str, list[int]] = {}
        #: Instances waiting for their queue, and those admitted that still hold a slot.
        self._waiting: dict[str, _Placement] = {}
        self._admitted: dict[str, _Placement] = {}
        #: Admission times of the rate-limited queues' instances within their windows.
        self._queue_admissions: dict[str, list[int]] = {}
        self._heartbeats: dict[CallKey, HeartbeatRecord] = {}
        #: Idempotency key -> (the instance id its start named, when it was recorded).
        self._start_keys: dict[str, tuple[str, int]] = {}
        self._next_key_gc = 0.0
        self._schedules: dict[str, ScheduleRecord] = {}
        #: Debounce windows: (orchestration name, debounce key) -> (instance id, queue id of its held start).
        self._debounce: dict[tuple[str, str], tuple[str, int]] = {}

    # -- client side -------------------------------------------------------------

    async def create_instance(self, start: StartOrchestration, *,
                              lock: LockOffer | None = None) -> OrchestrationItem | None:
        if start.instance_id in self._instances:
            raise InstanceAlreadyExistsError(start.instance_id)
        self._create(start)
        if lock is None or start.queue is not None or start.name not in lock.names:
            return None
        now = self.clock.now_ms()
        queued = [q for q in self._queue.values() if q.message.instance_id == start.instance_id and q.visible_at <= now]
        return self._lock(start.instance_id, queued, now + int(lock.lock_timeout * 1000))

    async def start_instance(self, start: StartOrchestration, *, if_exists: IfExists = IfExists.FAIL,
                             replace_if_status_in: Collection[str] = (), idempotency_key: str | None = None,
                             key_ttl_ms: int = IDEMPOTENCY_KEY_TTL_MS,
                             messages: Sequence[tuple[OrchestratorMessage, int | None]] = ()) -> StartOutcome:
        # No await in here: the whole start is one step of the event loop, as atomic as a transaction.
        now = self.clock.now_ms()
        if idempotency_key is not None:
            self._collect_keys(now - key_ttl_ms)
            recorded = self._start_keys.get(idempotency_key)
            if recorded is not None and recorded[1] >= now - key_ttl_ms:
                return StartOutcome(recorded[0], created=False, by_key=True)
        iid = start.instance_id
        record = self._instances.get(iid)
        replaced: list[str] = []
        if record is not None:
            if if_exists is not IfExists.REPLACE or record.status not in replace_if_status_in:
                if if_exists is IfExists.RETURN_EXISTING and idempotency_key is not None:
                    self._start_keys[idempotency_key] = (iid, now)
                return StartOutcome(iid, created=False, existing=record)
            replaced = self._delete_tree(iid)
        self._create(start)
        for message, visible_at in messages:
            self._enqueue(message, visible_at)
        if idempotency_key is not None:
            self._start_keys[idempotency_key] = (iid, now)
        return StartOutcome(iid, created=True, replaced=tuple(replaced))

    async def debounce_start(self, start: StartOrchestration, *, debounce_key: str, quiet_ms: int) -> StartOutcome:
        check_debounced_start(start, quiet_ms)
        # No await in here: one step of the event loop, as atomic as a transaction.
        due = self.clock.now_ms() + quiet_ms
        window = self._debounce.get((start.name, debounce_key))
        if window is not None:
            held_id, qid = window
            held = self._queue.get(qid)
            if held is not None and held.dequeue_count == 0 and held.message.instance_id == held_id:
                held.message = replace(start, instance_id=held_id)  # the last input wins
                held.visible_at = due
                return StartOutcome(held_id, created=False, debounced=True)
        record = self._instances.get(start.instance_id)
        if record is not None:
            return StartOutcome(start.instance_id, created=False, existing=record)
        self._create_row(start)
        qid = self._enqueue(start, due)
        self._debounce[(start.name, debounce_key)] = (start.instance_id, qid)
        return StartOutcome(start.instance_id, created=True)

    def _collect_keys(self, expired_before: int) -> None:
        """Forget expired idempotency keys, at most once a minute (a scan of every key)."""
        if self.clock.monotonic() < self._next_key_gc:
            return
        self._next_key_gc = self.clock.monotonic() + 60.0
        for key in [k for k, (_, at) in self._start_keys.items() if at < expired_before]:
            del self._start_keys[key]

    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None,
                   set_status: str | None = None) -> InstanceRecord | None:
        record = self._instances.get(message.instance_id)
        if status_admits(only_if_status_in, record.status if record else None):
            self._enqueue(message, None)
            if set_status is not None and record is not None:
                self._instances[message.instance_id] = replace(
                    record, status=set_status, updated_at_ms=self.clock.now_ms())
        return record

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return self._instances.get(instance_id)

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        if execution_id is None:
            record = self._instances.get(instance_id)
            if record is None:
                return []
            execution_id = record.execution_id
        return list(self._history.get((instance_id, execution_id), ()))

    async def list_executions(self, instance_id: str) -> list[int]:
        return sorted(e for (i, e) in self._history if i == instance_id)

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceRecord]:
        rows = [r for r in self._instances.values()
                if (status is None or r.status == status) and (name is None or r.name == name)]
        rows.sort(key=lambda r: (r.created_at_ms, r.instance_id), reverse=True)
        return rows[:limit]

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        after = check_query(query)
        rows = (r for r in self._instances.values()
                if (query.status is None or r.status == query.status)
                and (query.name is None or r.name == query.name)
                and (query.version is None or r.version == query.version)
                and (query.q is None or query.q in r.instance_id)
                and (after is None or (r.created_at_ms, r.instance_id) < after))
        # A heap keeps the newest limit+1 in one pass: no sort of every instance per page.
        return page_of(heapq.nlargest(query.limit + 1, rows, key=lambda r: (r.created_at_ms, r.instance_id)),
                       query.limit)

    async def overview(self, since_ms: int, *, finished_statuses: Collection[str] = ("Completed", "Failed"),
                       failed_status: str = "Failed",
                       active_statuses: Collection[str] = ("Pending", "Running")) -> StoreOverview:
        counts = Counter((r.status, r.name, r.version) for r in self._instances.values())
        recent = [r for r in self._instances.values() if r.updated_at_ms >= since_ms]
        per_minute = Counter((r.updated_at_ms // MINUTE_MS * MINUTE_MS, r.status)
                             for r in recent if r.status in finished_statuses)
        groups: dict[str, list[InstanceRecord]] = {}
        for r in recent:
            if r.status == failed_status:
                groups.setdefault(failure_type(r.error), []).append(r)
        failures = []
        for error_type, rows in groups.items():
            last = max(rows, key=lambda r: (r.updated_at_ms, r.instance_id))
            failures.append(FailureGroup(error_type, len(rows), last.instance_id,
                                         last.error.message if last.error else "", last.updated_at_ms))
        return make_overview([InstanceCount(s, n, v, c) for (s, n, v), c in counts.items()],
                             [(m, s, c) for (m, s), c in per_minute.items()], failures,
                             await self.queue_depths(active_statuses=active_statuses))

    async def purge_instance(self, instance_id: str, *,
                             only_if_status_in: Collection[str] | None = None) -> list[str] | None:
        record = self._instances.get(instance_id)
        if record is None:
            return []
        if not status_admits(only_if_status_in, record.status):
            return None
        return self._delete_tree(instance_id)

    def _delete_tree(self, instance_id: str) -> list[str]:
        """Delete an instance and its descendants with everything they own; the ids deleted."""
        doomed = [instance_id]
        for child in list(self._instances.values()):
            if child.parent_instance_id == instance_id:
                doomed += self._delete_tree(child.instance_id)
        self._instances.pop(instance_id, None)
        self._locks.pop(instance_id, None)
        self._waiting.pop(instance_id, None)
        self._admitted.pop(instance_id, None)
        for key in [k for k in self._history if k[0] == instance_id]:
            del self._history[key]
        for qid in [q.id for q in self._queue.values() if q.message.instance_id == instance_id]:
            del self._queue[qid]
        for wid in [w.id for w in self._work.values() if w.work.instance_id == instance_id]:
            del self._work[wid]
        for call in [k for k in self._heartbeats if k.instance_id == instance_id]:
            del self._heartbeats[call]
        return doomed

    # -- orchestration dispatcher --------------------------------------------------

    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float, *,
                                        queues: Mapping[str, QueueOptions] | None = None,
                                        live_statuses: Collection[str] = ()) -> FetchResult:
        now = self.clock.now_ms()
        if queues and self._waiting:
            self._admit(now, queues, live_statuses)
        chosen: dict[str, list[_Queued]] = {}
        next_due: int | None = None
        for q in self._queue.values():
            iid = q.message.instance_id
            if iid in self._waiting:
                continue
            if q.visible_at > now:
                next_due = q.visible_at if next_due is None else min(next_due, q.visible_at)
                continue
            lock = self._locks.get(iid)
            if lock is not None and lock[1] > now and iid not in chosen:
                continue
            if iid not in chosen:
                if len(chosen) >= max_items:
                    continue
                chosen[iid] = []
            chosen[iid].append(q)
        until = now + int(lock_timeout * 1000)
        return FetchResult([self._lock(iid, queued, until) for iid, queued in chosen.items()], next_due)

    def _lock(self, iid: str, queued: list[_Queued], until: int) -> OrchestrationItem:
        """Lock ``iid`` with its visible messages ``queued`` (its caller found no live lock)."""
        token = uuid.uuid4().hex
        self._locks[iid] = (token, until)
        for q in queued:
            q.dequeue_count += 1
            q.lock_token = token
        record = self._instances.get(iid)
        hlen = len(self._history.get((iid, record.execution_id), ())) if record else 0
        return OrchestrationItem(iid, token, [QueuedMessage(q.id, q.message) for q in queued], record, hlen,
                                 max(q.dequeue_count for q in queued))

    def _admit(self, now: int, queues: Mapping[str, QueueOptions], live_statuses: Collection[str]) -> None:
        """Admit the waiting instances of each queue of ``queues`` that its limits let start now."""
        for iid in [i for i, p in self._admitted.items()
                    if p.queue in queues and (i not in self._instances or self._instances[i].status not in live_statuses)]:
            del self._admitted[iid]  # ended: its slot is free for good
        for queue, options in queues.items():
            limits = {queue: options} if options.limited else {}
            running: dict[str | None, int] = {}
            for p in self._admitted.values():
                if p.queue == queue:
                    running[p.key] = running.get(p.key, 0) + 1
            started = {}
            if options.rate_limit is not None:
                since = now - options.rate_limit.per_ms
                kept = self._queue_admissions[queue] = [t for t in self._queue_admissions.get(queue, []) if t > since]
                started[queue] = len(kept)
            slots = QueueSlots(limits, [(queue, k, n) for k, n in running.items()], started)
            waiting = sorted((p.priority * -1, p.order, iid) for iid, p in self._waiting.items() if p.queue == queue)
            for _, _, iid in waiting:
                place = self._waiting[iid]
                if not slots.admits(queue, place.key):
                    continue
                if slots.take(queue, place.key):
                    self._queue_admissions.setdefault(queue, []).append(now)
                self._admitted[iid] = self._waiting.pop(iid)
                for q in self._queue.values():
                    if q.message.instance_id == iid and q.visible_at >= WAITING_OFFSET_MS:
                        q.visible_at -= WAITING_OFFSET_MS

    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        return {iid: list(self._history.get((iid, ex), ())) for iid, ex in keys}

    async def commit_turns(self, commits: Sequence[TurnCommit], *, lease: LeaseOffer | None = None) -> list[bool]:
        results = []
        left = 0 if lease is None else lease.max_items
        for c in commits:
            c.leased = []
            lock = self._locks.get(c.instance_id)
            if lock is None or lock[0] != c.lock_token:
                results.append(False)
                continue
            left -= self._apply_commit(c, lease, left)
            now = self.clock.now_ms()
            c.more_due = any(q.message.instance_id == c.instance_id and q.visible_at <= now for q in self._queue.values())
            results.append(True)
        return results

    def _apply_commit(self, c: TurnCommit, lease: LeaseOffer | None, left: int) -> int:
        """Apply one turn; the number of its calls leased with it (at most ``left``, see :class:`LeaseOffer`)."""
        now = self.clock.now_ms()
        for qid in c.consumed:
            self._queue.pop(qid, None)
        if c.new_events:
            self._history.setdefault((c.instance_id, c.execution_id), []).extend(c.new_events)
        for work in c.activities:
            wid = next(self._ids)
            w = self._work[wid] = _Work(wid, work, now)  # visible_at: the oldest moment it could run
            if lease is not None and len(c.leased) < left and lease.admits(work):
                w.lock_token = uuid.uuid4().hex
                w.locked_until = now + int(lease.lock_timeout * 1000)
                w.dequeue_count = 1
                c.leased.append(WorkLease(w.lock_token, work, 1))
        cancel = set(c.cancel_activities)
        for w in [w for w in self._work.values() if _call_key(w.work) in cancel]:
            if w.lock_token is None:
                del self._work[w.id]
            else:
                w.cancelled = True
        if c.delete_timers:
            timers = set(c.delete_timers)
            for q in [q for q in self._queue.values() if timer_key(q.message) in timers]:
                del self._queue[q.id]
        for child in c.children:
            if child.start.instance_id in self._instances:
                if child.if_taken is not None:
                    self._enqueue(child.if_taken, None)
                continue
            self._create_row(child.start)
            self._enqueue(child.start, None)
        for msg, visible_at in c.messages:
            self._enqueue(msg, visible_at)
        if c.update is not None:
            u = c.update
            old = self._instances.get(c.instance_id)
            if old is not None:
                self._instances[c.instance_id] = replace(
                    old, name=u.name, version=u.version, execution_id=u.execution_id, status=u.status,
                    output=u.output, error=u.error,
                    custom_status=u.custom_status if u.custom_status_changed else old.custom_status,
                    updated_at_ms=now)
        self._locks.pop(c.instance_id, None)
        return len(c.leased)

    async def renew_orchestration_items(self, locks: Sequence[tuple[str, str]], lock_timeout: float) -> list[bool]:
        until = self.clock.now_ms() + int(lock_timeout * 1000)
        renewed: list[bool] = []
        for instance_id, token in locks:
            lock = self._locks.get(instance_id)
            held = lock is not None and lock[0] == token
            if held:
                self._locks[instance_id] = (token, until)
            renewed.append(held)
        return renewed

    async def abandon_orchestration_item(self, instance_id: str, lock_token: str, delay: float) -> None:
        lock = self._locks.get(instance_id)
        if lock is None or lock[0] != lock_token:
            return
        visible = self.clock.now_ms() + int(delay * 1000)
        for q in self._queue.values():
            if q.lock_token == lock_token:
                q.lock_token = None
                q.visible_at = max(q.visible_at, visible)
        del self._locks[instance_id]

    # -- activity workers ----------------------------------------------------------

    async def fetch_work_items(self, max_items: int, lock_timeout: float, *,
                               known_names: Collection[str] | None = None,
                               foreign_delay: float = 1.0,
                               queues: Mapping[str, QueueOptions] | None = None) -> list[WorkLease]:
        now = self.clock.now_ms()
        foreign_before = now - int(foreign_delay * 1000)
        leases: list[WorkLease] = []
        limited = limited_queues(queues)
        slots = self._slots(now, limited) if limited else None
        # Highest priority first, then arrival (ids grow with arrival).
        for w in sorted(self._work.values(), key=lambda w: (-w.work.priority, w.id)):
            if len(leases) >= max_items:
                break
            if w.visible_at > now or w.cancelled or (w.lock_token is not None and w.locked_until > now):
                continue
            if known_names is not None and w.work.name not in known_names and w.visible_at > foreign_before:
                continue
            if slots is not None:
                if not slots.admits(w.work.queue, w.work.concurrency_key):
                    continue
                if slots.take(w.work.queue, w.work.concurrency_key):
                    self._queue_leases.setdefault(w.work.queue, []).append(now)
            w.lock_token = uuid.uuid4().hex
            w.locked_until = now + int(lock_timeout * 1000)
            w.dequeue_count += 1
            leases.append(WorkLease(w.lock_token, w.work, w.dequeue_count))
        return leases

    def _slots(self, now: int, limited: Mapping[str, QueueOptions]) -> QueueSlots:
        running: dict[tuple[str, str | None], int] = {}
        for w in self._work.values():
            if w.work.queue in limited and w.lock_token is not None and w.locked_until > now:
                key = (w.work.queue, w.work.concurrency_key)
                running[key] = running.get(key, 0) + 1
        started = {}
        for queue, options in limited.items():
            if options.rate_limit is not None:
                since = now - options.rate_limit.per_ms
                kept = self._queue_leases[queue] = [t for t in self._queue_leases.get(queue, []) if t > since]
                started[queue] = len(kept)
        return QueueSlots(limited, [(q, k, n) for (q, k), n in running.items()], started)

    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None,
                                  lock: LockOffer | None = None) -> list[OrchestrationItem]:
        delivered: dict[str, None] = {}
        for done in completions:
            held = [w for w in self._work.values() if w.lock_token == done.lock_token]
            for w in held:
                del self._work[w.id]
            if not held:
                continue  # lease gone (purged, or taken over by another worker): the result is stale
            if done.forget_heartbeat is not None:
                self._heartbeats.pop(done.forget_heartbeat, None)
            record = self._instances.get(done.result.instance_id)
            if status_admits(only_if_status_in, record.status if record else None):
                self._enqueue(done.result, None)
                if record is not None and lock is not None and record.name in lock.names:
                    delivered[done.result.instance_id] = None
        if lock is None:
            return []
        now = self.clock.now_ms()
        free = [iid for iid in delivered
                if iid not in self._waiting and (iid not in self._locks or self._locks[iid][1] <= now)]
        until = now + int(lock.lock_timeout * 1000)
        return [self._lock(iid, [q for q in self._queue.values() if q.message.instance_id == iid
                                 and q.visible_at <= now], until) for iid in free[:lock.max_items]]

    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        for w in self._work.values():
            if w.lock_token == lock_token:
                w.lock_token = None
                w.locked_until = 0
                w.visible_at = self.clock.now_ms() + int(delay * 1000)

    async def renew_work_item(self, lock_token: str, lock_timeout: float, *,
                              only_if_status_in: Collection[str] | None = None,
                              only_if_execution: int | None = None) -> bool:
        w = self._held_work(lock_token, only_if_status_in, only_if_execution)
        if w is None:
            return False
        w.locked_until = self.clock.now_ms() + int(lock_timeout * 1000)
        return True

    def _held_work(self, lock_token: str, only_if_status_in: Collection[str] | None,
                   only_if_execution: int | None) -> _Work | None:
        """The work item ``lock_token`` leases, if the lease and the guards hold."""
        for w in self._work.values():
            if w.lock_token == lock_token:
                record = self._instances.get(w.work.instance_id)
                if (w.cancelled or record is None or not status_admits(only_if_status_in, record.status)
                        or (only_if_execution is not None and record.execution_id != only_if_execution)):
                    return None
                return w
        return None

    async def record_heartbeats(self, beats: Sequence[HeartbeatWrite], *,
                                only_if_status_in: Collection[str] | None = None) -> list[bool]:
        now = self.clock.now_ms()
        recorded: list[bool] = []
        for beat in beats:
            w = self._held_work(beat.lock_token, only_if_status_in, beat.call.execution_id)
            if w is None or _call_key(w.work) != CallKey(beat.call.instance_id, beat.call.execution_id, beat.event_id):
                recorded.append(False)
                continue
            old = self._heartbeats.get(beat.call)
            details = beat.details if beat.details is not None else (old.details if old else None)
            self._heartbeats[beat.call] = HeartbeatRecord(details, beat.event_id, now)
            if beat.lock_timeout is not None:
                w.locked_until = now + int(beat.lock_timeout * 1000)
            recorded.append(True)
        return recorded

    async def read_heartbeat(self, call: CallKey) -> HeartbeatRecord | None:
        return self._heartbeats.get(call)

    async def queue_depths(self, *, active_statuses: Collection[str] = ("Pending", "Running")) -> QueueDepths:
        now = self.clock.now_ms()
        due = sum(1 for q in self._queue.values() if q.visible_at <= now)
        later = sum(1 for q in self._queue.values() if now < q.visible_at < WAITING_OFFSET_MS)
        return QueueDepths(due, later, len(self._work),
                           sum(1 for r in self._instances.values() if r.status in active_statuses), len(self._waiting))

    async def queue_stats(self, *, live_statuses: Collection[str] = ()) -> list[QueueStats]:
        now = self.clock.now_ms()
        stats: dict[str, list[int]] = {}
        for p in self._waiting.values():
            stats.setdefault(p.queue, [0, 0, 0, 0])[0] += 1
        for iid, p in self._admitted.items():
            record = self._instances.get(iid)
            if record is not None and record.status in live_statuses:
                stats.setdefault(p.queue, [0, 0, 0, 0])[1] += 1
        for w in self._work.values():
            leased = w.lock_token is not None and w.locked_until > now
            stats.setdefault(w.work.queue, [0, 0, 0, 0])[3 if leased else 2] += 1
        return [QueueStats(q, *n) for q, n in sorted(stats.items()) if any(n)]

    # -- helpers -------------------------------------------------------------------

    # -- schedules (each method has no await: one step of the loop, as atomic as a transaction) --

    async def put_schedule(self, record: ScheduleRecord, *, replace: bool = False) -> ScheduleRecord | None:
        now = self.clock.now_ms()
        old = self._schedules.get(record.schedule_id)
        if old is None:
            stored = dataclasses.replace(record, created_at_ms=now, updated_at_ms=now, last_tick_ms=None,
                                    last_instance_id=None, registered_at_ms=None)
        elif not replace:  # the argument, not dataclasses.replace
            return None
        else:
            stored = dataclasses.replace(old, cron=record.cron, orchestration=record.orchestration, input=record.input,
                                    version=record.version, catch_up=record.catch_up, updated_at_ms=now,
                                    next_tick_ms=old.next_tick_ms if old.cron == record.cron else record.next_tick_ms)
        self._schedules[record.schedule_id] = stored
        return stored

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        return self._schedules.get(schedule_id)

    async def list_schedules(self) -> list[ScheduleRecord]:
        return [self._schedules[k] for k in sorted(self._schedules)]

    async def set_schedule_paused(self, schedule_id: str, paused: bool, *,
                                  next_tick_ms: int | None = None) -> ScheduleRecord | None:
        old = self._schedules.get(schedule_id)
        if old is None:
            return None
        new = replace(old, paused=paused, updated_at_ms=self.clock.now_ms(),
                             next_tick_ms=old.next_tick_ms if next_tick_ms is None else next_tick_ms)
        self._schedules[schedule_id] = new
        return new

    async def delete_schedule(self, schedule_id: str) -> bool:
        return self._schedules.pop(schedule_id, None) is not None

    async def fire_schedule(self, fire: ScheduleFire) -> bool:
        old = self._schedules.get(fire.schedule_id)
        if old is None or old.paused or old.next_tick_ms != fire.expected_next_tick_ms:
            return False
        for start in fire.starts:
            if start.instance_id not in self._instances:
                self._create(start)
        last = (fire.last_tick_ms, fire.starts[-1].instance_id) if fire.starts else (old.last_tick_ms,
                                                                                        old.last_instance_id)
        self._schedules[fire.schedule_id] = replace(
            old, next_tick_ms=fire.next_tick_ms, last_tick_ms=last[0], last_instance_id=last[1],
            updated_at_ms=self.clock.now_ms())
        return True

    async def confirm_schedules(self, schedule_ids: Collection[str]) -> None:
        now = self.clock.now_ms()
        for sid in schedule_ids:
            if sid in self._schedules:
                self._schedules[sid] = replace(self._schedules[sid], registered_at_ms=now)

    def _create(self, start: StartOrchestration) -> None:
        """The row and the start of a new instance; one naming a queue waits for its admission."""
        self._create_row(start)
        if start.queue is None:
            self._enqueue(start, None)
            return
        self._waiting[start.instance_id] = _Placement(start.queue, start.concurrency_key, start.priority or 0,
                                                      next(self._ids))
        self._enqueue(start, self.clock.now_ms() + WAITING_OFFSET_MS)

    def _create_row(self, start: StartOrchestration) -> None:
        now = self.clock.now_ms()
        self._instances[start.instance_id] = InstanceRecord(
            start.instance_id, start.name, start.version, start.execution_id, "Pending",
            created_at_ms=now, updated_at_ms=now, parent_instance_id=start.parent_instance_id,
            incarnation=uuid.uuid4().hex)

    def _enqueue(self, message: OrchestratorMessage, visible_at: int | None) -> int:
        qid = next(self._ids)
        self._queue[qid] = _Queued(qid, message, visible_at if visible_at is not None else 0)
        return qid


def _call_key(work: ActivityWork) -> CallKey:
    return CallKey(work.instance_id, work.execution_id, work.event_id)
