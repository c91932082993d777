"""The orchestration dispatcher: fetch locked instances in batches, run their turns, commit.

Each pipeline loops: fetch up to ``orchestration_batch_size`` instances, read
the histories the instance cache lacks (one round trip for the batch), run
every turn (pure CPU on the deterministic loops), and commit all the turns
in one store transaction. Idle pipelines sleep until an in-process wake-up,
the next timer, or ``poll_interval`` (for work from other processes).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import CorruptHistoryError, ErrorDetails, PayloadError, PoisonMessageError, UnknownOrchestrationError
from ..history import Event, HistoryEvent
from ..lograte import background_warnings
from ..observe import OrchestrationFinished, RuntimeObserver, TurnReplayed
from ..observe import OrchestrationStarted as ObservedStart
from ..messages import OrchestratorMessage, StartOrchestration, SubOrchestrationResult, TimerFired
from ..options import RuntimeOptions
from ..providers.base import TERMINAL, InstanceUpdate, OrchestrationItem, Provider, TurnCommit, now_ms
from ..registry import OrchestrationRegistry
from ..replay import Execution, storable_text

__all__ = ["OrchestrationDispatcher", "InstanceCache", "raise_if_cancel_requested"]

_log = logging.getLogger("duroxide.dispatcher")


def raise_if_cancel_requested() -> None:
    """Stop a dispatcher loop whose task was cancelled, even if some await swallowed the cancel.

    Python 3.11's ``asyncio.wait_for`` (used by asyncpg and aiosqlite callers alike)
    returns normally when a cancel arrives together with the awaited result; a
    loop that kept going would make ``asyncio.run()`` (an exception after
    ``start()`` without ``shutdown()``, or Ctrl-C) wait forever for it.
    ``Task.cancelling()`` still counts the request, so each loop checks it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError()


class InstanceCache:
    """Live executions kept between turns (LRU, bounded by ``instance_cache_size``).

    An entry is reused only for the same incarnation of its instance id: after a
    purge and re-create (by any process) the new instance may reach the same
    execution id and history length as the cached one, and would otherwise be
    continued with the purged instance's state (issue 10, defect 3).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: collections.OrderedDict[str, Execution] = collections.OrderedDict()

    def get(self, instance_id: str, execution_id: int, history_len: int,
            incarnation: str | None) -> Execution | None:
        ex = self._items.get(instance_id)
        if ex is None:
            return None
        if (incarnation is None or ex.incarnation != incarnation or ex.execution_id != execution_id
                or len(ex.history) != history_len or ex.outcome is not None):
            self.evict(instance_id)
            return None
        self._items.move_to_end(instance_id)
        return ex

    def put(self, ex: Execution) -> None:
        if self._capacity <= 0:
            ex.dispose()
            return
        self._items[ex.instance_id] = ex
        self._items.move_to_end(ex.instance_id)
        while len(self._items) > self._capacity:
            _, old = self._items.popitem(last=False)
            old.dispose()

    def evict(self, instance_id: str) -> None:
        ex = self._items.pop(instance_id, None)
        if ex is not None:
            ex.dispose()

    def clear(self) -> None:
        for iid in list(self._items):
            self.evict(iid)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Abandon:
    item: OrchestrationItem
    delay: float


class OrchestrationDispatcher:
    """Runs orchestration turns; see the module docstring."""

    def __init__(self, store: Provider, registry: OrchestrationRegistry, options: RuntimeOptions,
                 on_activities_cancelled: Callable[[str, int, list[int]], None] | None = None,
                 observer: RuntimeObserver | None = None) -> None:
        self.store = store
        self.observer = observer or RuntimeObserver()
        #: What each uncommitted turn will report to the observer once it is committed.
        self._reports: dict[str, list[object]] = {}
        #: Told of committed activity cancellations, so this process stops its own at once
        #: (other processes notice at their next lease renewal).
        self._on_activities_cancelled = on_activities_cancelled
        self.registry = registry
        self.options = options
        self.cache = InstanceCache(0 if options.replay_from_scratch else options.instance_cache_size)
        self._executions: dict[str, Execution] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        """One pipeline; several may run at once (instances are locked per turn)."""
        failures = 0
        while not stopping.is_set():
            raise_if_cancel_requested()
            try:
                fetched = await self.store.fetch_orchestration_items(
                    self.options.orchestration_batch_size, self.options.orchestration_lock_timeout)
                if not fetched.items:
                    timeout = self.options.poll_interval
                    if fetched.next_due_ms is not None:
                        timeout = min(timeout, max(0.0, (fetched.next_due_ms - now_ms()) / 1000))
                    await self.store.signals.wait_orchestrator(timeout)
                    continue
                await self._process(fetched.items)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - store trouble must never kill the runtime
                failures += 1
                background_warnings.warning(_log, "dispatcher.store", "orchestration dispatcher: store error "
                                            "(retrying)", exc_info=True)
                await asyncio.sleep(min(2.0, 0.01 * 2 ** min(failures, 8)))

    async def _process(self, items: Sequence[OrchestrationItem]) -> None:
        wanted = [(i.instance_id, i.instance.execution_id) for i in items
                  if i.instance is not None and self._needs_history(i)]
        histories = await self.store.read_histories(wanted) if wanted else {}
        now = now_ms()
        commits: list[TurnCommit] = []
        abandons: list[_Abandon] = []
        for item in items:
            try:
                result = self._turn(item, histories.get(item.instance_id), now)
            except Exception:  # noqa: BLE001 - an engine bug fails one turn, not the runtime
                _log.exception("instance %r: turn failed; it will be retried", item.instance_id,
                               extra=_fields(item))
                self.cache.evict(item.instance_id)
                result = _Abandon(item, self._backoff(item))
            if isinstance(result, _Abandon):
                abandons.append(result)
            else:
                commits.append(result)
        if commits:
            try:
                outcomes = await self.store.commit_turns(commits)
            except Exception:
                for c in commits:
                    self._forget(c.instance_id)
                raise
            refused: list[TurnCommit] = []
            by_id = {item.instance_id: item for item in items}
            for commit, ok in zip(commits, outcomes):
                if not ok and commit.refused is not None:
                    refused.append(self._refused(commit, by_id[commit.instance_id], histories))
                elif not ok:
                    _log.warning("instance %r: lock lost before commit; the turn will be redone", commit.instance_id,
                                 extra={"instance_id": commit.instance_id, "execution_id": commit.execution_id})
                    self._forget(commit.instance_id)
                else:
                    self._after_commit(commit.instance_id)
                    if commit.cancelled_activities and self._on_activities_cancelled is not None:
                        self._on_activities_cancelled(commit.instance_id, commit.execution_id,
                                                      commit.cancelled_activities)
            if refused:
                # Still locked (the refused turn was rolled back, lock included): end those
                # instances now. If even that is refused, the lock expires and poison follows.
                await self.store.commit_turns(refused)
        for a in abandons:
            await self.store.abandon_orchestration_item(a.item.instance_id, a.item.lock_token, a.delay)

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
        if inst is None or inst.status in TERMINAL or item.history_len == 0:
            return False
        if item.dequeue_count > self.options.max_attempts:
            return True
        return self.cache.get(item.instance_id, inst.execution_id, item.history_len, inst.incarnation) is None

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
        inst = item.instance
        commit = TurnCommit(item.instance_id, item.lock_token, inst.execution_id if inst else 0,
                            consumed=[m.id for m in item.messages])
        if inst is None or inst.status in TERMINAL:
            return commit  # purged or finished: late messages are consumed and dropped
        exec_id = inst.execution_id
        messages = [m.message for m in item.messages
                    if getattr(m.message, "execution_id", exec_id) == exec_id]
        start = next((m for m in messages if isinstance(m, StartOrchestration)), None)

        if isinstance(history, Exception):
            return self._fail(commit, item, [], history if isinstance(history, CorruptHistoryError)
                              else CorruptHistoryError(item.instance_id, str(history)))
        stored = history or []
        if item.dequeue_count > self.options.max_attempts:
            cause = self._unknown_cause(stored, start)
            return self._fail(commit, item, stored, PoisonMessageError(
                f"instance {item.instance_id!r}: its messages were delivered {item.dequeue_count} times "
                f"without a successful turn (max_attempts={self.options.max_attempts})"
                + (f"; {cause}" if cause else ""),
                fix="see the runtime log for the error of each attempt; fix the code or registration"))

        reports: list[object] = []
        ex = self.cache.get(item.instance_id, exec_id, item.history_len, inst.incarnation)
        if ex is None:
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
            ex = Execution(fn, item.instance_id, exec_id, name, version, self.options)
            ex.incarnation = inst.incarnation
            ex.begin_turn(now)
            if stored:
                started_at = time.perf_counter()
                ex.replay(stored)
                reports.append(TurnReplayed(name, item.instance_id, len(stored), time.perf_counter() - started_at))
            else:
                assert start is not None
                ex.start(start, version)
                messages = [m for m in messages if m is not start]
        else:
            ex.begin_turn(now)
        for msg in _timers_in_due_order(messages):
            ex.deliver(msg)
        self._executions[item.instance_id] = ex
        out = ex.take_output()
        reports += _lifecycle_reports(ex, out.new_events)
        self._reports[item.instance_id] = reports
        commit.new_events = out.new_events
        commit.activities = out.activities
        commit.messages = out.messages
        commit.cancelled_activities = out.cancelled_activities
        commit.cancelled_timers = out.cancelled_timers
        outcome = ex.outcome
        status, next_exec = "Running", exec_id
        if outcome is not None:
            if outcome.status == "ContinuedAsNew":
                next_exec = exec_id + 1
            else:
                status = outcome.status
        commit.update = InstanceUpdate(
            name=ex.name, version=ex.version, execution_id=next_exec, status=status,
            output=outcome.output if outcome else None, error=outcome.error if outcome else None,
            custom_status=out.custom_status, custom_status_changed=out.custom_status_changed)
        return commit

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

    def _fail(self, commit: TurnCommit, item: OrchestrationItem, stored: list[HistoryEvent],
              error: Exception) -> TurnCommit:
        """End the instance Failed without running its code (poison, corrupt history)."""
        _log.error("instance %r failed: %s", item.instance_id, error, extra=_fields(item))
        self.cache.evict(item.instance_id)
        inst = item.instance
        assert inst is not None
        details = ErrorDetails(type(error).__name__, str(error))
        commit.new_events = [Event.OrchestrationFailed(event_id=item.history_len + 1, timestamp_ms=now_ms(),
                                                       details=details)]
        started = stored[0] if stored and isinstance(stored[0], Event.OrchestrationStarted) else None
        if started is not None and started.parent_instance_id and started.parent_event_id:
            commit.messages = [(SubOrchestrationResult(
                instance_id=started.parent_instance_id, execution_id=started.parent_execution_id or 1,
                event_id=started.parent_event_id, error=details), None)]
        commit.update = InstanceUpdate(name=inst.name, version=inst.version or "?", execution_id=inst.execution_id,
                                       status="Failed", error=details)
        return commit


def _timers_in_due_order(messages: list[OrchestratorMessage]) -> list[OrchestratorMessage]:
    """Timers that fell due together (say, after a restart) fire in due order, not enqueue order.

    Other messages keep their places; only the timers among them are reordered.
    """
    slots = [i for i, m in enumerate(messages) if isinstance(m, TimerFired)]
    if len(slots) < 2:
        return messages
    ordered = sorted((messages[i] for i in slots), key=lambda m: (m.fire_at_ms, m.event_id))  # type: ignore[attr-defined]
    result = list(messages)
    for i, timer in zip(slots, ordered):
        result[i] = timer
    return result


def _fields(item: OrchestrationItem, name: str | None = None, version: str | None = None) -> dict[str, object]:
    """Structured log fields of an instance's turn (``extra=`` of runtime log records)."""
    inst = item.instance
    return {"instance_id": item.instance_id, "execution_id": inst.execution_id if inst else None,
            "orchestration": name or (inst.name if inst else None), "version": version or (inst.version if inst else None)}


def _lifecycle_reports(ex: Execution, new_events: list[HistoryEvent]) -> list[object]:
    """Observer reports for an execution that started or ended in this turn."""
    reports: list[object] = []
    for event in new_events:
        if isinstance(event, Event.OrchestrationStarted):
            reports.append(ObservedStart(ex.name, ex.version, ex.instance_id, ex.execution_id))
        elif isinstance(event, (Event.OrchestrationCompleted, Event.OrchestrationFailed,
                                Event.OrchestrationContinuedAsNew)):
            began = ex.history[0].timestamp_ms if ex.history else event.timestamp_ms
            error = event.details.error_type if isinstance(event, Event.OrchestrationFailed) else None
            status = {Event.OrchestrationCompleted: "Completed", Event.OrchestrationFailed: "Failed"}.get(
                type(event), "ContinuedAsNew")
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
