"""The activity worker: lease activity calls, run them, commit results in batches.

At most ``activity_concurrency`` calls run at once. ``async def`` activities
run on the event loop; plain ``def`` ones in a bounded thread pool so they
never block it. While a call runs its lease is renewed; a renewal that
fails (lease lost, call cancelled, instance ended) cancels the call.
Results go through one batching writer: many completions, one transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..activity import ActivityContext, _current
from ..errors import ErrorDetails, PayloadError, UnknownActivityError
from ..messages import ActivityResult, PoisonNotice
from ..observe import ActivityFinished, ActivityStarted, RuntimeObserver
from ..options import RuntimeOptions
from ..providers.base import Provider, WorkCompletion, WorkLease
from ..registry import ActivityRegistry

__all__ = ["ActivityWorker"]

_log = logging.getLogger("duroxide.worker")


class ActivityWorker:
    """Runs activities; see the module docstring."""

    def __init__(self, store: Provider, registry: ActivityRegistry, options: RuntimeOptions,
                 observer: RuntimeObserver | None = None) -> None:
        self.store = store
        self.observer = observer or RuntimeObserver()
        self.registry = registry
        self.options = options
        self._threads = ThreadPoolExecutor(options.activity_threads, thread_name_prefix="duroxide-activity")
        self._running: dict[asyncio.Task[None], tuple[WorkLease, ActivityContext]] = {}
        self._results: asyncio.Queue[WorkCompletion] = asyncio.Queue()
        self._known = frozenset(registry.names())

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and start work until ``stopping`` is set."""
        failures = 0
        while not stopping.is_set():
            free = self.options.activity_concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(list(self._running), timeout=self.options.poll_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                leases = await self.store.fetch_work_items(
                    free, self.options.activity_lock_timeout, known_names=self._known,
                    foreign_delay=self.options.foreign_activity_delay)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - store trouble must never kill the runtime
                failures += 1
                _log.exception("activity worker: store error (retrying)")
                await asyncio.sleep(min(2.0, 0.01 * 2 ** min(failures, 8)))
                continue
            if not leases:
                await self.store.signals.wait_worker(self.options.poll_interval)
                continue
            for lease in leases:
                w = lease.work
                actx = ActivityContext(w.instance_id, w.execution_id, w.event_id, w.name, lease.dequeue_count)
                task = asyncio.create_task(self._execute(lease, actx), name=f"activity {w.name}")
                self._running[task] = (lease, actx)
                task.add_done_callback(self._running_done)

    def cancel_running(self, instance_id: str, execution_id: int, event_ids: list[int]) -> None:
        """Cancel calls of this process that their orchestration no longer waits for."""
        wanted = set(event_ids)
        for task, (lease, actx) in list(self._running.items()):
            w = lease.work
            if w.instance_id == instance_id and w.execution_id == execution_id and w.event_id in wanted:
                actx._cancelled.set()
                task.cancel()

    def _running_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    async def _execute(self, lease: WorkLease, actx: ActivityContext) -> None:
        work = lease.work
        if lease.dequeue_count > self.options.max_attempts:
            self._results.put_nowait(WorkCompletion(lease.lock_token, PoisonNotice(
                instance_id=work.instance_id, execution_id=work.execution_id,
                reason=f"activity {work.name!r} (event {work.event_id}) was delivered {lease.dequeue_count} "
                       f"times without finishing (max_attempts={self.options.max_attempts})"
                       + (f"; {UnknownActivityError(work.name, self.registry.names()).message}"
                          if self.registry.get(work.name) is None else ""))))
            return
        fn = self.registry.get(work.name)
        if fn is None:
            _log.warning("%s", UnknownActivityError(work.name, self.registry.names()).message,
                         extra=actx.log_fields())
            o = self.options
            delay = min(o.unknown_name_max_backoff, o.unknown_name_backoff * 2 ** max(0, lease.dequeue_count - 1))
            await self.store.abandon_work_item(lease.lock_token, delay)
            return
        renew = asyncio.create_task(self._keep_lease(lease, actx, asyncio.current_task()))
        self.observer.activity_started(ActivityStarted(work.name, work.instance_id, lease.dequeue_count,
                                                       work.execution_id, work.event_id, work.trace_context))
        began = time.perf_counter()
        try:
            result = await self._invoke(fn, work.input, actx)
            if not isinstance(result, str):
                raise PayloadError(f"activity {work.name!r} returned {type(result).__name__}, but a string-API "
                                   "activity must return str",
                                   fix="return a str (e.g. json.dumps(value)), or use @activity(typed=True)")
            outcome = ActivityResult(instance_id=work.instance_id, execution_id=work.execution_id,
                                     event_id=work.event_id, result=result)
        except asyncio.CancelledError:
            if not actx.cancelled:
                raise  # runtime shutdown: the lease is abandoned by the caller
            outcome = ActivityResult(instance_id=work.instance_id, execution_id=work.execution_id,
                                     event_id=work.event_id,
                                     error=ErrorDetails("ActivityCancelled", "the orchestration no longer waits for it"))
        except Exception as exc:  # noqa: BLE001 - the activity's own failure is its result
            outcome = ActivityResult(instance_id=work.instance_id, execution_id=work.execution_id,
                                     event_id=work.event_id, error=ErrorDetails.from_exception(exc))
        finally:
            renew.cancel()
        self.observer.activity_finished(ActivityFinished(
            work.name, work.instance_id, outcome.error is None, time.perf_counter() - began, work.execution_id,
            work.event_id, outcome.error.error_type if outcome.error else None))
        self._results.put_nowait(WorkCompletion(lease.lock_token, outcome))

    async def _invoke(self, fn: Any, data: str, actx: ActivityContext) -> object:
        token = _current.set(actx)
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(data)
            ctx = contextvars.copy_context()
            result: object = await asyncio.get_running_loop().run_in_executor(
                self._threads, lambda: ctx.run(fn, data))
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            _current.reset(token)

    async def _keep_lease(self, lease: WorkLease, actx: ActivityContext, task: asyncio.Task[None] | None) -> None:
        interval = self.options.activity_lock_timeout / 3
        while True:
            await asyncio.sleep(interval)
            try:
                alive = await self.store.renew_work_item(lease.lock_token, self.options.activity_lock_timeout)
            except Exception:  # noqa: BLE001 - a missed renewal is retried next interval
                _log.warning("activity %r: lease renewal failed; retrying", lease.work.name, exc_info=True,
                             extra=actx.log_fields())
                continue
            if not alive:
                actx._cancelled.set()
                if task is not None:
                    task.cancel()
                return

    async def flush_results(self, stopping: asyncio.Event) -> None:
        """The batching writer: commit every waiting result in one call."""
        failures = 0
        batch: list[WorkCompletion] = []
        while True:
            if not batch:
                getter = asyncio.ensure_future(self._results.get())
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait([getter, stop], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not getter.done():
                    getter.cancel()
                    if self._results.empty() and not self._running:
                        return
                    await asyncio.sleep(0.01)
                    continue
                batch.append(getter.result())
            while not self._results.empty():
                batch.append(self._results.get_nowait())
            try:
                await self.store.complete_work_items(batch)
                batch = []
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - results are kept and retried, never dropped
                failures += 1
                _log.exception("activity worker: could not record %d results (retrying)", len(batch))
                await asyncio.sleep(min(2.0, 0.01 * 2 ** min(failures, 8)))

    async def drain(self, grace: float) -> None:
        """Shutdown: let running calls finish for ``grace`` seconds, abandon the rest."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        for task, (lease, _) in list(self._running.items()):
            task.cancel()
            try:
                await self.store.abandon_work_item(lease.lock_token, 0)
            except Exception:  # noqa: BLE001 - the lease expires anyway; the work is redelivered
                _log.warning("could not abandon activity lease at shutdown", exc_info=True)
        if self._running:
            await asyncio.wait(list(self._running), timeout=1.0)
        self._threads.shutdown(wait=False, cancel_futures=True)
