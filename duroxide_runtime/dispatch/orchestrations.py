"""The orchestration dispatcher: fetch locked instances in batches, run their turns, commit.

Each pipeline loops: take the instances handed to it (eager dispatch: a start
or an activity result of this process locked them for an idle pipeline, see
``lock_offer``), or fetch up to ``orchestration_batch_size`` instances, read
the histories the instance cache lacks (one round trip for the batch), run
every turn (pure CPU on the deterministic loops), and commit all the turns
in one store transaction. Idle pipelines sleep until an in-process wake-up,
the next timer, or ``poll_interval`` (for work from other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import collections
import functools
import logging
import math
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (CorruptHistoryError, ErrorDetails, OrchestrationStuckError, PayloadError, PoisonMessageError,
                      UnknownOrchestrationError)
from ..history import Event, HistoryEvent
from ..lograte import background_warnings
from ..observe import OrchestrationFinished, RuntimeObserver, TurnReplayed
from ..observe import OrchestrationStarted as ObservedStart
from ..messages import OrchestratorMessage, RestartRequest, RewindRequest, StartOrchestration, SubOrchestrationResult
from ..options import RuntimeOptions
from ..providers.base import CallKey, ChildStart, InstanceUpdate, LockOffer, OrchestrationItem, Provider, TurnCommit
from ..cancelling import raise_if_cancel_requested
from ..wake import wake_hub
from ..clock import Clock, ClockPart, clock_part
from ..registry import OrchestrationRegistry
from ..engine.execution import Execution, TurnInput, TurnResult
from ..engine.output import LIVE_STATUSES, TERMINAL_STATUSES, Status
from ..engine.payloads import storable_text
from ..engine.recovery import RewindRefused, rewind_refusal
from .leases import BatchSizer, LockKeeper
from ..steps import TurnPreempted
from .turns import Done, Preempted, Raised, Stuck, TurnOutcome, TurnThread

if TYPE_CHECKING:
    from .activities import ActivityWorker

__all__ = ["OrchestrationDispatcher", "InstanceCache", "wait_unless_stopping"]

_log = logging.getLogger("duroxide.dispatcher")


async def wait_unless_stopping(stopping: asyncio.Event, wait: Coroutine[Any, Any, None]) -> None:
    """Run ``wait`` (a back-off, timed by the clock) but end it once ``stopping`` is set.

    Shutdown must not wait for a back-off: it lasts in the clock's time, and a
    test clock's time passes only when the test moves it.
    """
    if stopping.is_set():
        wait.close()
        return
    waiter = asyncio.ensure_future(wait)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        # asyncio.wait, not wait_for: a cancel of this task always propagates.
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stop.cancel()
    if waiter.done() and not waiter.cancelled():
        waiter.result()  # its error, if it failed


class InstanceCache:
    """Live executions kept between turns (LRU, bounded by ``instance_cache_size``).

    An entry is reused only for the same incarnation of its instance id: after a
    purge and re-create (by any process) the new instance may reach the same
    execution id and history length as the cached one, and would otherwise be
    continued with the purged instance's state (issue 10, defect 3).

    Turns run on the pipelines' turn threads while the event loop puts
    committed executions back, so every method holds a lock, and an execution
    in a turn is *taken* out of the cache: eviction can never dispose of one
    that is running.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: collections.OrderedDict[str, Execution] = collections.OrderedDict()
        self._lock = threading.Lock()

    def has(self, instance_id: str, execution_id: int, history_len: int, incarnation: str | None) -> bool:
        """Whether :meth:`take` would return an execution (a stale entry is dropped)."""
        with self._lock:
            return self._valid(instance_id, execution_id, history_len, incarnation) is not None

    def take(self, instance_id: str, execution_id: int, history_len: int,
             incarnation: str | None) -> Execution | None:
        """Remove and return the execution that continues this turn, if one is cached."""
        with self._lock:
            ex = self._valid(instance_id, execution_id, history_len, incarnation)
            if ex is not None:
                del self._items[instance_id]
            return ex

    def _valid(self, instance_id: str, execution_id: int, history_len: int,
               incarnation: str | None) -> Execution | None:
        ex = self._items.get(instance_id)
        if ex is None:
            return None
        if (incarnation is None or ex.incarnation != incarnation or ex.execution_id != execution_id
                or len(ex.history) != history_len or not ex.reusable):
            del self._items[instance_id]
            ex.dispose()
            return None
        return ex

    def put(self, ex: Execution) -> None:
        """Keep ``ex`` for its next turn (the least recently used entries go)."""
        if self._capacity <= 0:
            ex.dispose()
            return
        with self._lock:
            self._items[ex.instance_id] = ex
            self._items.move_to_end(ex.instance_id)
            old = [self._items.popitem(last=False)[1] for _ in range(len(self._items) - self._capacity)]
        for execution in old:
            execution.dispose()

    def evict(self, instance_id: str) -> None:
        with self._lock:
            ex = self._items.pop(instance_id, None)
        if ex is not None:
            ex.dispose()

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), collections.OrderedDict()
        for ex in items:
            ex.dispose()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Abandon:
    item: OrchestrationItem
    delay: float


#: Seconds a batch of turns may hold the event loop before the rest goes to the turn thread
#: (dispatch/turns.py): short enough for renewals and other tasks not to notice.
INLINE_BUDGET = 0.02


class OrchestrationDispatcher:
    """Runs orchestration turns; see the module docstring."""

    def __init__(self, store: Provider, registry: OrchestrationRegistry, options: RuntimeOptions,
                 worker: ActivityWorker | None = None,
                 observer: RuntimeObserver | None = None, *, clock: Clock | None = None) -> None:
        self.store = store
        #: Stamps turns and times idle waits and back-offs (the store's clock by default).
        self.clock = clock or store.clock
        self.observer = observer or RuntimeObserver()
        #: What each uncommitted turn will report to the observer once it is committed.
        self._reports: dict[str, list[object]] = {}
        #: This process's activity worker: told of committed activity cancellations, so this
        #: process stops its own at once (other processes notice at their next lease renewal),
        #: and handed the calls a commit leases for it (LeaseOffer).
        self._worker = worker
        #: Instances locked for this dispatcher by writes of this process (a client's start, the
        #: worker's results: LockOffer), oldest first.
        self._handed: collections.deque[OrchestrationItem] = collections.deque()
        #: Only instances of orchestrations registered here are handed to it (a rolling deploy
        #: may run processes that know different ones).
        self._names = frozenset(registry.names())
        #: Pipelines running, and those waiting idle for work.
        self._pipelines = 0
        self._idle = 0
        self.registry = registry
        self.options = options
        self.cache = InstanceCache(0 if options.replay_from_scratch else options.instance_cache_size)
        self._executions: dict[str, Execution] = {}
        #: The last watchdog stop of each instance, named if its retries end in poison.
        self._stuck: dict[str, OrchestrationStuckError] = {}
        self._sizer = BatchSizer(options.orchestration_batch_size, options.orchestration_lock_timeout)
        #: In-process wake-ups of this store (shared with its clients): fed after each commit.
        self.wake = wake_hub(store)
        self.wake.join(self)  # this runtime's pipelines share each wake-up; none is lost before their first wait

    async def run(self, stopping: asyncio.Event) -> None:
        """One pipeline; several may run at once (instances are locked per turn).

        Each pipeline starts its turns on the event loop and moves long ones to a thread
        of its own (dispatch/turns.py), so a stuck turn holds up its own batch, not the
        other pipelines; its LockKeeper renews the locks of the batch in hand.
        """
        turns = TurnThread(self.options.turn_timeout, inline_budget=INLINE_BUDGET)
        keeper = LockKeeper(self.store, self.options.orchestration_lock_timeout, self.clock)
        renewing = asyncio.create_task(keeper.run(), name="duroxide-lock-renewal")
        # Busy (for a self-moving clock) but while the pipeline waits idle for work.
        part = clock_part(self.clock, "orchestration dispatcher")
        self._pipelines += 1
        try:
            await self._pipeline(stopping, turns, keeper, part)
        finally:
            self._pipelines -= 1
            part.close()
            turns.close()
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            if not self._pipelines:
                await self._give_back_handed()

    def lock_offer(self) -> LockOffer | None:
        """Instances a write of this process (a client's start, the worker's results) may lock for
        this dispatcher (:class:`LockOffer`); ``None`` unless a pipeline waits idle with nothing
        handed to it yet.

        Only an idle pipeline is handed work: its last fetch found nothing due, so no older
        message waits in the store (one enqueued since woke it). Busy pipelines fetch in
        queue order as usual.
        """
        if self._idle <= len(self._handed) or not self.options.eager_dispatch:
            return None
        return LockOffer(self._sizer.size(), self.options.orchestration_lock_timeout, self._names)

    async def take_locked(self, items: Sequence[OrchestrationItem]) -> None:
        """Instances locked for this dispatcher under a :meth:`lock_offer`: the next pipeline
        to look for work takes them (one is woken); after shutdown their locks are given back."""
        self._handed.extend(items)
        if self._pipelines:
            self.wake.wake_group(self)
        else:
            await self._give_back_handed()

    def _take_handed(self, wanted: int) -> list[OrchestrationItem]:
        return [self._handed.popleft() for _ in range(min(wanted, len(self._handed)))]

    async def _give_back_handed(self) -> None:
        """Unlock handed instances no pipeline will run (shutdown): another process takes them at once."""
        while self._handed:
            item = self._handed.popleft()
            try:
                await self.store.abandon_orchestration_item(item.instance_id, item.lock_token, 0.0)
            except Exception:  # noqa: BLE001 - the lock expires anyway; the messages are redelivered
                _log.warning("instance %r: could not unlock it at shutdown", item.instance_id, exc_info=True,
                             extra=_fields(item))

    async def _pipeline(self, stopping: asyncio.Event, turns: TurnThread, keeper: LockKeeper,
                        part: ClockPart) -> None:
        failures = 0
        #: Whether to fetch before waiting. Not after a batch of handed instances that left nothing
        #: due behind it (the store says so per turn, ``TurnCommit.more_due``): work enqueued in this
        #: process since has woken the wait below, and the fetch would find nothing.
        look = True
        #: The next timer the last fetch named (ms; ``None``: none), the deadline of a wait without
        #: a fetch. Only an empty fetch names it: after one that found work, the next wait fetches
        #: first (that work's writes may have queued timers, a start its deadline).
        known_due: int | None = None
        due_known = False
        while not stopping.is_set():
            raise_if_cancel_requested()
            try:
                wanted = self._sizer.size()
                items = self._take_handed(wanted)
                if not items and look:
                    fetched = await self.store.fetch_orchestration_items(
                        wanted, self.options.orchestration_lock_timeout, queues=self.options.queues or None,
                        live_statuses=LIVE_STATUSES)
                    if len(fetched.items) >= wanted:
                        self.wake.notify_orchestrator()  # there may be more: wake another pipeline
                    items = fetched.items
                    known_due, due_known = fetched.next_due_ms, not items
                if not items:
                    # The next timer is a deadline a self-moving clock may move to; the poll is not.
                    due = math.inf
                    if known_due is not None:
                        due = max(0.0, (known_due - self.clock.now_ms()) / 1000)
                    if stopping.is_set():
                        # Shutdown's wake-up may have been taken by another pipeline while this
                        # one fetched; its timeout is the clock's, which a test clock never passes.
                        break
                    # A cancel that arrived with the fetch's reply may have been dropped by the store's
                    # client (Python 3.11's wait_for does): honour it before sleeping a poll interval.
                    raise_if_cancel_requested()
                    self._idle += 1
                    try:
                        await self.wake.wait_orchestrator(self.options.poll_interval, group=self, part=part, due=due)
                    finally:
                        self._idle -= 1
                    look = True
                    continue
                with keeper.holding(items):
                    look = await self._process_locked(items, turns) or len(items) >= wanted or not due_known
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - store trouble must never kill the runtime
                failures += 1
                background_warnings.warning(_log, "dispatcher.store", "orchestration dispatcher: store error "
                                            "(retrying)", exc_info=True)
                await wait_unless_stopping(stopping, part.sleep(min(2.0, 0.01 * 2 ** min(failures, 8))))

    async def _process_locked(self, items: Sequence[OrchestrationItem], turns: TurnThread) -> bool:
        """Run and commit the turns of locked ``items``; whether work may be due for this pipeline
        now (an instance with messages left, a turn not committed, an instance given back)."""
        wanted = [(i.instance_id, i.instance.execution_id) for i in items
                  if i.instance is not None and self._needs_history(i)]
        histories = dict(await self.store.read_histories(wanted)) if wanted else {}
        now = self.clock.now_ms()
        started = self.clock.monotonic()
        outcomes = await turns.run([functools.partial(self._turn, item, histories.get(item.instance_id), now)
                                          for item in items])
        preempted = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, Preempted)]
        if preempted:
            outcomes = await self._redo_on_thread(items, preempted, outcomes, histories, now, turns)
        self._sizer.observe(len(items), self.clock.monotonic() - started)
        commits: list[TurnCommit] = []
        abandons: list[_Abandon] = []
        for item, outcome in zip(items, outcomes):
            result = self._result_of(item, outcome)
            if isinstance(result, _Abandon):
                abandons.append(result)
            else:
                commits.append(result)
        committed: list[bool] = []
        if commits:
            worker = self._worker
            offer = worker.lease_offer(sum(len(c.activities) for c in commits)) if worker is not None else None
            try:
                committed = await self.store.commit_turns(commits, lease=offer)
                self.wake.after_commit(commits, committed)
            except Exception:
                for c in commits:
                    self._forget(c.instance_id)
                raise
            finally:
                if offer is not None:
                    assert worker is not None
                    worker.take_leased(offer, [lease for c, ok in zip(commits, committed) if ok for lease in c.leased])
            refused: list[TurnCommit] = []
            by_id = {item.instance_id: item for item in items}
            for commit, ok in zip(commits, committed):
                if not ok and commit.refused is not None:
                    refused.append(self._refused(commit, by_id[commit.instance_id], histories))
                elif not ok:
                    _log.warning("instance %r: lock lost before commit; the turn will be redone", commit.instance_id,
                                 extra={"instance_id": commit.instance_id, "execution_id": commit.execution_id})
                    self._forget(commit.instance_id)
                else:
                    self._after_commit(commit.instance_id)
                    if commit.cancel_activities and self._worker is not None:
                        self._worker.cancel_running(commit.instance_id, commit.execution_id,
                                                    [k.event_id for k in commit.cancel_activities])
            if refused:
                # Still locked (the refused turn was rolled back, lock included): end those
                # instances now. If even that is refused, the lock expires and poison follows.
                self.wake.after_commit(refused, await self.store.commit_turns(refused))
        for a in abandons:
            await self.store.abandon_orchestration_item(a.item.instance_id, a.item.lock_token, a.delay)
        if abandons:
            self.wake.notify_orchestrator()
        return bool(abandons) or not all(committed) or any(c.more_due for c in commits)

    async def _redo_on_thread(self, items: Sequence[OrchestrationItem], preempted: list[int],
                              outcomes: list[TurnOutcome[TurnCommit | _Abandon]],
                              histories: dict[str, list[HistoryEvent] | Exception], now: int,
                              turns: TurnThread) -> list[TurnOutcome[TurnCommit | _Abandon]]:
        """Redo turns preempted on the event loop, on the turn thread, from their histories.

        What the preempted run did is discarded (its execution was taken out of the cache
        and is dropped), so each is replayed from the store's history, still under its lock.
        """
        redo = [items[i] for i in preempted]
        for item in redo:
            self._forget(item.instance_id)
        wanted = [(i.instance_id, i.instance.execution_id) for i in redo
                  if i.instance is not None and i.history_len > 0 and i.instance_id not in histories]
        if wanted:
            histories.update(await self.store.read_histories(wanted))
        again = await turns.run([functools.partial(self._turn, item, histories.get(item.instance_id), now)
                                 for item in redo], inline=False)
        merged = list(outcomes)
        for i, outcome in zip(preempted, again):
            merged[i] = outcome
        return merged

    def _result_of(self, item: OrchestrationItem, outcome: TurnOutcome[TurnCommit | _Abandon]) -> TurnCommit | _Abandon:
        """What to do with one turn's outcome from the turn thread."""
        if isinstance(outcome, Done):
            return outcome.value
        self._forget(item.instance_id)
        if isinstance(outcome, Raised):  # an engine bug fails one turn, not the runtime
            _log.error("instance %r: turn failed; it will be retried", item.instance_id, extra=_fields(item),
                       exc_info=outcome.error)
            return _Abandon(item, self._backoff(item))
        if isinstance(outcome, Stuck):
            error = OrchestrationStuckError(item.instance_id, outcome.seconds, outcome.where)
            _log.error("%s; the turn is retried with back-off (attempt %d of %d)", error, item.dequeue_count,
                       self.options.max_attempts, extra={**_fields(item), "error_code": error.code})
            self._stuck[item.instance_id] = error
            return _Abandon(item, self._backoff(item))
        return _Abandon(item, 0.0)  # never ran (its thread was given up): redo it at once

    def _refused(self, commit: TurnCommit, item: OrchestrationItem,
                 histories: Mapping[str, list[HistoryEvent] | Exception]) -> TurnCommit:
        """The store refused a turn for its content: redoing it would fail the same way until
        the instance is poisoned with no word of the cause. Fail it now, naming the cause."""
        ex = self._executions.get(commit.instance_id)
        stored = histories.get(commit.instance_id)
        first = ex.history if ex is not None else (stored if isinstance(stored, list) else [])
        self._forget(commit.instance_id)
        failed = TurnCommit(commit.instance_id, item.lock_token, commit.execution_id,
                            consumed=[m.id for m in item.messages])
        return self._fail(failed, item, first[:1], PayloadError(
            f"instance {commit.instance_id!r}: the store refused what this turn produced "
            f"({storable_text(commit.refused or '')})",
            fix="keep values the store cannot hold (NUL characters on PostgreSQL, lone surrogates) out of "
                "outputs, inputs, event data and custom status; see 'Input limits' in docs/runtime.md"))

    def _needs_history(self, item: OrchestrationItem) -> bool:
        inst = item.instance
        if inst is None or item.history_len == 0:
            return False
        if inst.status in TERMINAL_STATUSES:
            return _rewinds(item)
        if item.dequeue_count > self.options.max_attempts:
            return True
        return not self.cache.has(item.instance_id, inst.execution_id, item.history_len, inst.incarnation)

    def _backoff(self, item: OrchestrationItem) -> float:
        o = self.options
        return float(min(o.unknown_name_max_backoff, o.unknown_name_backoff * 2 ** max(0, item.dequeue_count - 1)))

    def _forget(self, instance_id: str) -> None:
        self._reports.pop(instance_id, None)
        ex = self._executions.pop(instance_id, None)
        if ex is not None:
            ex.dispose()
        self.cache.evict(instance_id)

    def _after_commit(self, instance_id: str) -> None:
        for report in self._reports.pop(instance_id, ()):
            _notify(self.observer, report)
        ex = self._executions.pop(instance_id, None)
        if ex is None:
            return
        if ex.outcome is None:
            self.cache.put(ex)
        else:
            self.cache.evict(instance_id)
            ex.dispose()

    # -- one turn ------------------------------------------------------------------

    def _turn(self, item: OrchestrationItem, history: list[HistoryEvent] | Exception | None,
              now: int) -> TurnCommit | _Abandon:
        """Fetched item -> engine turn -> commit. Pure CPU, no asyncio: it may run on a worker thread."""
        inst = item.instance
        commit = TurnCommit(item.instance_id, item.lock_token, inst.execution_id if inst else 0,
                            consumed=[m.id for m in item.messages])
        if inst is None:
            return commit  # purged: late messages are consumed and dropped
        restart = next((m.message for m in item.messages if isinstance(m.message, RestartRequest)), None)
        if restart is not None:
            return _restarted(commit, item, restart, now)
        if inst.status in TERMINAL_STATUSES and not (inst.status == Status.FAILED.value and self._needs_history(item)):
            return self._finished(commit, item)
        if isinstance(history, Exception):
            return self._fail(commit, item, [], history if isinstance(history, CorruptHistoryError)
                              else CorruptHistoryError(item.instance_id, str(history)))
        stored = history or []
        messages = [m.message for m in item.messages
                    if getattr(m.message, "execution_id", inst.execution_id) == inst.execution_id]
        if item.dequeue_count > self.options.max_attempts:
            return self._fail(commit, item, stored, self._poison(item, stored, messages))
        cached = self.cache.take(item.instance_id, inst.execution_id, item.history_len, inst.incarnation)
        if cached is None and history is None and item.history_len > 0:
            # Cached when the batch was fetched, evicted since (another pipeline filled the
            # cache): its history was not read. Redo the turn now rather than lose messages.
            return _Abandon(item, 0.0)
        ex = cached or self._new_execution(item, commit, stored, messages)
        if not isinstance(ex, Execution):
            return ex  # not runnable: failed, dropped or backed off
        try:
            result = ex.run_turn(TurnInput(now_ms=now, messages=messages, history=stored))
        except TurnPreempted:
            ex.dispose()  # stopped between two steps: its coroutines end here; the turn is redone
            raise
        self._executions[item.instance_id] = ex
        self._reports[item.instance_id] = _lifecycle_reports(ex, result)
        return _filled(commit, ex, result)

    def _new_execution(self, item: OrchestrationItem, commit: TurnCommit, stored: list[HistoryEvent],
                       messages: list[OrchestratorMessage]) -> Execution | TurnCommit | _Abandon:
        """A fresh execution for a turn the cache cannot continue (or why there is none to run)."""
        inst = item.instance
        assert inst is not None
        start = next((m for m in messages if isinstance(m, StartOrchestration)), None)
        if stored:
            started = stored[0]
            if not isinstance(started, Event.OrchestrationStarted):
                return self._fail(commit, item, stored, CorruptHistoryError(
                    item.instance_id, "first event is not OrchestrationStarted"))
            name, version = started.name, started.version
        elif start is not None:
            name, version = start.name, start.version or self.registry.pick_version(start.name) or ""
        else:
            return commit  # nothing started this execution; stray messages are dropped
        fn = self.registry.get(name, version)
        if fn is None:
            # Rolling deploys: another node may know it; back off, poison eventually.
            _log.warning("instance %r: %s", item.instance_id,
                         UnknownOrchestrationError(name, version, self.registry.names()).message,
                         extra=_fields(item, name, version))
            return _Abandon(item, self._backoff(item))
        return Execution(fn, item.instance_id, inst.execution_id, name, version, self.options,
                         incarnation=inst.incarnation)

    def _poison(self, item: OrchestrationItem, stored: list[HistoryEvent],
                messages: list[OrchestratorMessage]) -> PoisonMessageError:
        """Why an instance whose messages came back too often is failed, naming the likely cause."""
        start = next((m for m in messages if isinstance(m, StartOrchestration)), None)
        stuck = self._stuck.pop(item.instance_id, None)
        cause = (f"the watchdog stopped the last one: {type(stuck).__name__}: {stuck.message}" if stuck
                 else self._unknown_cause(stored, start))
        return PoisonMessageError(
            f"instance {item.instance_id!r}: its messages were delivered {item.dequeue_count} times "
            f"without a successful turn (max_attempts={self.options.max_attempts})"
            + (f"; {cause}" if cause else ""),
            fix=stuck.fix if stuck else "see the runtime log for the error of each attempt; fix the code or "
                                        "registration")

    def _unknown_cause(self, stored: list[HistoryEvent], start: StartOrchestration | None) -> str:
        first = stored[0] if stored else None
        name = first.name if isinstance(first, Event.OrchestrationStarted) else (start.name if start else None)
        version = first.version if isinstance(first, Event.OrchestrationStarted) else (start.version if start else None)
        if name is None:
            return ""
        resolved = version or self.registry.pick_version(name)
        if resolved is None or self.registry.get(name, resolved) is None:
            return UnknownOrchestrationError(name, resolved, self.registry.names()).message
        return ""

    def _finished(self, commit: TurnCommit, item: OrchestrationItem) -> TurnCommit:
        """A finished instance takes only a rewind if it failed (the caller runs that turn); other
        late messages are consumed and dropped, and a rewinding parent hears its child's end again."""
        inst = item.instance
        assert inst is not None
        for queued in item.messages:
            msg = queued.message
            if isinstance(msg, RewindRequest):
                _log.warning("instance %r: rewind refused: it ended %s", item.instance_id, inst.status,
                             extra=_fields(item))
                answer = rewind_refusal(msg, item.instance_id, RewindRefused(f"it ended {inst.status}"))
                commit.messages += [(answer, None)] if answer is not None else []
        return commit

    def _fail(self, commit: TurnCommit, item: OrchestrationItem, stored: list[HistoryEvent],
              error: Exception) -> TurnCommit:
        """End the instance Failed without running its code (poison, corrupt history)."""
        _log.error("instance %r failed: %s", item.instance_id, error, extra=_fields(item))
        self.cache.evict(item.instance_id)
        inst = item.instance
        assert inst is not None
        details = ErrorDetails(type(error).__name__, str(error))
        commit.new_events = [Event.OrchestrationFailed(event_id=item.history_len + 1,
                                                       timestamp_ms=self.clock.now_ms(), details=details)]
        started = stored[0] if stored and isinstance(stored[0], Event.OrchestrationStarted) else None
        if started is not None and started.parent_instance_id and started.parent_event_id:
            commit.messages = [(SubOrchestrationResult(
                instance_id=started.parent_instance_id, execution_id=started.parent_execution_id or 1,
                event_id=started.parent_event_id, error=details), None)]
        commit.update = InstanceUpdate(name=inst.name, version=inst.version or "?", execution_id=inst.execution_id,
                                       status=Status.FAILED.value, error=details)
        commit.ends_instance = True
        return commit


def _fields(item: OrchestrationItem, name: str | None = None, version: str | None = None) -> dict[str, object]:
    """Structured log fields of an instance's turn (``extra=`` of runtime log records)."""
    inst = item.instance
    return {"instance_id": item.instance_id, "execution_id": inst.execution_id if inst else None,
            "orchestration": name or (inst.name if inst else None), "version": version or (inst.version if inst else None)}


def _filled(commit: TurnCommit, ex: Execution, result: TurnResult) -> TurnCommit:
    """``commit`` with what the turn produced; the store gets the status as its string."""
    out, outcome = result.output, result.outcome
    iid, xid = ex.instance_id, ex.execution_id
    commit.new_events = out.new_events
    commit.activities = out.activities
    # A start of another instance is a child to create, unless its id is taken; a start of
    # this instance (continue-as-new) is a plain message.
    commit.children = [ChildStart(m, _child_rejection(m)) for m, _ in out.messages
                       if isinstance(m, StartOrchestration) and m.instance_id != iid]
    commit.messages = [(m, at) for m, at in out.messages
                       if not (isinstance(m, StartOrchestration) and m.instance_id != iid)]
    commit.cancel_activities = [CallKey(iid, xid, e) for e in out.cancelled_activities]
    commit.delete_timers = [CallKey(iid, xid, e) for e in out.cancelled_timers]
    commit.ends_instance = result.status in TERMINAL_STATUSES  # a StrEnum: equal to its string
    moved_on = result.status is Status.CONTINUED_AS_NEW  # the instance runs on, as the next execution
    commit.update = InstanceUpdate(
        name=ex.name, version=ex.version, execution_id=ex.execution_id + 1 if moved_on else ex.execution_id,
        status=Status.RUNNING.value if moved_on else result.status.value,
        output=outcome.output if outcome else None, error=outcome.error if outcome else None,
        custom_status=out.custom_status, custom_status_changed=out.custom_status_changed)
    return commit


def _rewinds(item: OrchestrationItem) -> bool:
    return any(isinstance(m.message, RewindRequest) for m in item.messages)


def _restarted(commit: TurnCommit, item: OrchestrationItem, request: RestartRequest, now_ms: int) -> TurnCommit:
    """``restart_instance`` of a finished instance: recorded in its last execution; without a new
    instance id, the next execution starts with the original input (as continue-as-new does).
    Its code does not run: the turn only records and enqueues, so it needs no registration."""
    inst = item.instance
    assert inst is not None
    following = None if request.new_instance_id else inst.execution_id + 1
    commit.new_events = [Event.OrchestrationRestarted(
        event_id=item.history_len + 1, timestamp_ms=now_ms, reason=request.reason, by=request.by,
        new_instance_id=request.new_instance_id, next_execution_id=following)]
    if following is not None:
        version = request.version or inst.version
        commit.messages = [(StartOrchestration(instance_id=inst.instance_id, name=inst.name, version=version,
                                               input=request.input, execution_id=following), None)]
        commit.update = InstanceUpdate(name=inst.name, version=version or "", execution_id=following,
                                       status=Status.RUNNING.value)
    return commit


def _child_rejection(start: StartOrchestration) -> SubOrchestrationResult | None:
    """What a parent is told when its child's instance id is already taken (``None``: no parent)."""
    if start.parent_instance_id is None or start.parent_event_id is None:
        return None
    return SubOrchestrationResult(
        instance_id=start.parent_instance_id, execution_id=start.parent_execution_id or 1,
        event_id=start.parent_event_id,
        error=ErrorDetails("InstanceAlreadyExistsError",
                           f"instance {start.instance_id!r} already exists; the child was not started"))


def _lifecycle_reports(ex: Execution, result: TurnResult) -> list[object]:
    """Observer reports of a turn: its replay, and an execution that started or ended in it."""
    reports: list[object] = []
    if result.replayed is not None:
        reports.append(TurnReplayed(ex.name, ex.instance_id, result.replayed.events, result.replayed.seconds))
    for event in result.output.new_events:
        if isinstance(event, Event.OrchestrationStarted):
            reports.append(ObservedStart(ex.name, ex.version, ex.instance_id, ex.execution_id))
        elif isinstance(event, (Event.OrchestrationCompleted, Event.OrchestrationFailed,
                                Event.OrchestrationContinuedAsNew)):
            began = ex.history[0].timestamp_ms if ex.history else event.timestamp_ms
            error = event.details.error_type if isinstance(event, Event.OrchestrationFailed) else None
            status = result.status.value
            reports.append(OrchestrationFinished(ex.name, ex.version, ex.instance_id, ex.execution_id, status,
                                                 max(0.0, (event.timestamp_ms - began) / 1000), error,
                                                 began, event.timestamp_ms, ex.trace_context,
                                                 ex.parent_trace_context))
    return reports


def _notify(observer: RuntimeObserver, report: object) -> None:
    if isinstance(report, ObservedStart):
        observer.orchestration_started(report)
    elif isinstance(report, OrchestrationFinished):
        observer.orchestration_finished(report)
    elif isinstance(report, TurnReplayed):
        observer.turn_replayed(report)
