"""The activity worker: lease activity calls, run them, commit results in batches.

Calls come from the worker's fetches, or, while it waits idle, straight from this
process's turn commits, which lease them for it (eager dispatch, ``lease_offer``);
the results it records lock their instances for an idle dispatcher of this process.

At most ``activity_concurrency`` calls run at once. ``async def`` activities
run on the event loop; plain ``def`` ones in a bounded thread pool so they
never block it. While a call runs its lease is renewed; a renewal that
fails (lease lost, call cancelled, instance ended) cancels the call.
Results go through one batching writer: many completions, one transaction.
A result the store cannot hold fails alone, as a typed error of that call;
it never holds up the others (issue 10, defect 1).

Attempts and heartbeats (:mod:`.heartbeats`): a call's ``attempt`` comes from its
work item (the orchestration numbers the attempts of a retried call). A call with
a ``heartbeat_timeout`` is not renewed by the worker: its beats keep its lease.
When such a call comes back after its lease ran out, and its stored heartbeat
shows that this very attempt had started, the attempt is lost (its process died
or it stopped beating): it is not run again but fails with
``ActivityHeartbeatTimeout``, and the orchestration's ``RetryPolicy`` decides
whether a new attempt follows; that attempt reads the last recorded details.

Shutdown lets running calls finish for a grace period, then interrupts the
``async def`` ones and gives their leases back. A plain ``def`` call runs in
a thread that nothing can interrupt: it keeps its lease, renewed, until it
ends (its result is then recorded) or the process dies; shutdown logs what
it waits for (issue 10, defect 4).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from typing import Any

from ..activity import ActivityContext, _current, decode_heartbeat_details
from ..clock import Clock, ClockPart, add_store_check, clock_part, is_listening
from ..errors import ErrorCode, ErrorDetails, PayloadError, StoreError, UnknownActivityError, exception_types
from ..local_runtimes import Taker
from ..lograte import background_warnings
from ..messages import ActivityResult, ActivityWork, PoisonNotice
from ..observe import ActivityFinished, ActivityStarted, RuntimeObserver
from ..options import RuntimeOptions
from ..providers.base import LeaseOffer, Provider, WorkCompletion, WorkLease
from ..providers.queue_slots import limited_queues
from ..registry import ActivityRegistry
from .leases import LeaseKeeper
from ..engine.output import LIVE_STATUSES
from ..engine.payloads import safe_error_details, storable_text, text_problem
from ..wake import wake_hub
from .heartbeats import CallBeats, HeartbeatWriter
from ..cancelling import raise_if_cancel_requested
from .orchestrations import wait_unless_stopping

__all__ = ["ActivityWorker", "is_store_trouble"]

_log = logging.getLogger("duroxide.worker")

#: SQLSTATE classes that mean "the database is in trouble", not "this row is bad":
#: connection (08), transaction rollback (40), resources (53), object state (55),
#: operator intervention (57), system (58), internal (XX).
_TROUBLE_SQLSTATES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})


def is_store_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot write anything now (retry everything later),
    as opposed to one item it cannot take (fail that item alone)."""
    if isinstance(exc, (StoreError, OSError, sqlite3.OperationalError)):
        return True
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in _TROUBLE_SQLSTATES
    # asyncpg's client-side errors (connection gone, protocol state) carry no SQLSTATE.
    return type(exc).__module__.startswith("asyncpg")


@dataclass
class _Call:
    """A running activity call: its lease, its context, and whether a thread runs it."""

    lease: WorkLease
    actx: ActivityContext
    began: float
    #: A plain ``def`` runs in a thread once this is set: it cannot be interrupted.
    in_thread: bool = False
    #: Its heartbeats, once it is about to run.
    beats: CallBeats | None = None
    #: Holds a self-moving clock still from the lease until the call has ended (its result queued).
    part: ClockPart | None = None


class ActivityWorker:
    """Runs activities; see the module docstring."""

    #: Seconds between the shutdown log lines naming the calls shutdown still waits for.
    shutdown_log_interval = 10.0

    def __init__(self, store: Provider, registry: ActivityRegistry, options: RuntimeOptions,
                 observer: RuntimeObserver | None = None, *, clock: Clock | None = None) -> None:
        self.store = store
        #: Times lease renewals and back-offs (the store's clock by default, which times the leases).
        self.clock = clock or store.clock
        self.observer = observer or RuntimeObserver()
        self.registry = registry
        self.options = options
        self._threads = _ActivityThreads(options.activity_threads, "duroxide-activity")
        self._running: dict[asyncio.Task[None], _Call] = {}
        self._results = _Results(clock_part(self.clock, "activity results", busy=False))
        #: Busy (for a self-moving clock) but while the worker waits idle for work.
        self._part = clock_part(self.clock, "activity worker")
        #: Only a self-moving clock needs a part per call (one the runtime reports to).
        self._clock_listens = is_listening(self.clock)
        self._known = frozenset(registry.names())
        self._limited = frozenset(limited_queues(options.queues))
        #: Waiting idle for work: only then may a commit lease calls straight to it (see lease_offer).
        self._idle = False
        #: Slots promised to commits in flight (lease_offer), until take_leased sets _unreserved.
        self._reserved = 0
        self._unreserved = asyncio.Event()
        self.heartbeats = HeartbeatWriter(store, self.clock, options, self.observer, on_lost=self._lost_lease)
        self._leases = LeaseKeeper(store, options.activity_lock_timeout, self.clock)
        #: In-process wake-ups of this store: waited on when idle, fed after our own writes.
        self.wake = wake_hub(store)
        self.wake.join(self)
        #: This process's dispatcher, which takes the instances its results lock (set by the runtime).
        self.dispatcher: Taker | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and start work until ``stopping`` is set."""
        remove_check = add_store_check(self.clock, self._undated_work)
        try:
            await self._run(stopping)
        finally:
            self._part.close()
            remove_check()

    async def _undated_work(self) -> bool:
        """Whether the store holds work no deadline dates: asked by a self-moving clock when every
        part is idle, so nothing of this process runs it (see ``clock.StoreCheck``)."""
        depths = await self.store.queue_depths()
        return depths.orchestrator > 0 or depths.worker > 0

    async def _run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            raise_if_cancel_requested()
            free = self.options.activity_concurrency - len(self._running) - self._reserved
            if free <= 0:
                # Until a slot frees, or shutdown begins (which then waits for the calls itself).
                await wait_unless_stopping(stopping, self._slot_frees())
                continue
            try:
                leases = await self.store.fetch_work_items(
                    free, self.options.activity_lock_timeout, known_names=self._known,
                    foreign_delay=self.options.foreign_activity_delay, queues=self.options.queues)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - store trouble must never kill the runtime
                failures += 1
                background_warnings.warning(_log, "worker.fetch", "activity worker: store error (retrying)",
                                            exc_info=True)
                await wait_unless_stopping(stopping, self._part.sleep(min(2.0, 0.01 * 2 ** min(failures, 8))))
                continue
            for lease in leases:
                self._start(lease)
            if len(leases) >= free:
                continue  # there may be more
            # Fewer than asked: nothing more could be taken at the fetch, and work enqueued since
            # (by this process) has woken the wait below; fetching again at once would find nothing.
            if stopping.is_set():
                # Shutdown woke the idle waiters while this fetch ran; the wait's timeout is
                # the clock's, which a test clock never passes.
                break
            raise_if_cancel_requested()  # one the store's client may have dropped with its reply
            self._idle = True
            try:
                await self.wake.wait_worker(self.options.poll_interval, group=self, part=self._part)
            finally:
                self._idle = False

    def _start(self, lease: WorkLease) -> None:
        """Run a leased call in a task of its own."""
        w = lease.work
        actx = ActivityContext(w.instance_id, w.execution_id, w.event_id, w.name, w.attempt,
                               delivery=lease.dequeue_count,
                               heartbeat_timeout=None if w.heartbeat_timeout_ms is None
                               else w.heartbeat_timeout_ms / 1000)
        call = _Call(lease, actx, time.monotonic(),
                     part=clock_part(self.clock, f"activity {w.name!r} of instance {w.instance_id!r}")
                     if self._clock_listens else None)
        task = asyncio.create_task(self._execute(call), name=f"activity {w.name}")
        self._running[task] = call
        task.add_done_callback(self._running_done)

    def lease_offer(self, wanted: int) -> LeaseOffer | None:
        """Slots for up to ``wanted`` calls a commit of this process may lease straight to this
        worker (:class:`LeaseOffer`), reserved until :meth:`take_leased`; ``None`` unless the
        worker waits idle with free slots.

        Only an idle worker is offered calls: its last fetch found nothing it could take,
        so no older call waits in the store for its slots (a call enqueued since woke it,
        and it is no longer idle). A busy worker fetches in queue order as usual.
        """
        free = self.options.activity_concurrency - len(self._running) - self._reserved
        if not self._idle or free <= 0 or wanted <= 0 or not self.options.eager_dispatch:
            return None
        offer = LeaseOffer(min(free, wanted), self.options.activity_lock_timeout, self._known, self._limited)
        self._reserved += offer.max_items
        return offer

    def take_leased(self, offer: LeaseOffer, leases: Sequence[WorkLease]) -> None:
        """Run the calls a commit leased under ``offer`` (none if it failed) and free the rest of its slots."""
        self._reserved -= offer.max_items
        self._unreserved.set()
        for lease in leases:
            self._start(lease)

    async def _slot_frees(self) -> None:
        """Until a running call ends or a commit's reserved slots come back (take_leased)."""
        unreserved = asyncio.ensure_future(self._unreserved.wait())
        try:
            await asyncio.wait([*self._running, unreserved], timeout=self.options.poll_interval,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            unreserved.cancel()
        self._unreserved.clear()

    def cancel_running(self, instance_id: str, execution_id: int, event_ids: list[int]) -> None:
        """Cancel calls of this process that their orchestration no longer waits for."""
        wanted = set(event_ids)
        for task, call in list(self._running.items()):
            w = call.lease.work
            if w.instance_id == instance_id and w.execution_id == execution_id and w.event_id in wanted:
                call.actx._cancelled.set()
                task.cancel()

    def _running_done(self, task: asyncio.Task[None]) -> None:
        call = self._running.pop(task, None)
        if call is not None and call.part is not None:
            call.part.close()  # its result, if any, is queued: the results' part holds the clock now

    async def _execute(self, call: _Call) -> None:
        lease, actx = call.lease, call.actx
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
            self.wake.notify_worker()
            return
        beats = call.beats = self.heartbeats.open(lease, actx)
        beats.task = asyncio.current_task()
        try:
            await self._run_attempt(call, fn, beats)
        finally:
            self.heartbeats.close(beats)

    async def _run_attempt(self, call: _Call, fn: Any, beats: CallBeats) -> None:
        """Run one delivered attempt (or fail it as lost) and queue its result."""
        lease, actx = call.lease, call.actx
        work = lease.work
        if work.attempt > 1 or lease.dequeue_count > 1:
            try:
                # An earlier attempt (or delivery) may have left progress details.
                stored = await self.store.read_heartbeat(beats.key)
            except Exception:  # noqa: BLE001 - store trouble: try this call again shortly
                background_warnings.warning(_log, "worker.heartbeats", "activity %r: could not read its heartbeat "
                                            "(retrying)", work.name, exc_info=True, extra=actx.log_fields())
                await self._give_back(call, delay=min(2.0, self.options.poll_interval))
                return
            if stored is not None:
                beats.recorded = True
                if beats.lease_seconds is not None and lease.dequeue_count > 1 and stored.event_id == work.event_id:
                    self._fail_lost_attempt(call, beats.lease_seconds)
                    return
                actx.heartbeat_details = decode_heartbeat_details(stored.details)
        if beats.lease_seconds is not None:
            started = await self.heartbeats.start(beats)
            if started is False:  # the call was cancelled (or its lease taken) before it ran
                actx._cancelled.set()
                self._results.put_nowait(WorkCompletion(lease.lock_token, _cancelled_result(work)))
                return
            renew = None  # its heartbeats keep its lease
        else:
            renew = asyncio.current_task()
            assert renew is not None
            self._leases.hold(lease, actx, renew)
        self.observer.activity_started(ActivityStarted(work.name, work.instance_id, work.attempt,
                                                       work.execution_id, work.event_id, work.trace_context,
                                                       delivery=lease.dequeue_count))
        began = time.perf_counter()
        try:
            result = await self._invoke(fn, work.input, call)
            if not isinstance(result, str):
                raise PayloadError(f"activity {work.name!r} returned {type(result).__name__}, but a string-API "
                                   "activity must return str",
                                   fix="return a str (e.g. json.dumps(value)), or use @activity(typed=True)")
            problem = text_problem(result)
            if problem is not None:
                # Checked here, not left to the store: one result the store cannot
                # encode used to fail every batch it was in, forever.
                raise PayloadError(f"activity {work.name!r} returned text that cannot be stored: {problem}",
                                   fix="return valid Unicode text: decode bytes with errors='replace', or "
                                       "return binary data as base64")
            outcome = ActivityResult(instance_id=work.instance_id, execution_id=work.execution_id,
                                     event_id=work.event_id, result=result)
        except asyncio.CancelledError:
            if not actx.cancelled:
                raise  # runtime shutdown: drain() gives the lease back once this task has ended
            outcome = _cancelled_result(work)
        except Exception as exc:  # noqa: BLE001 - the activity's own failure is its result
            # The class names go with the failure: RetryPolicy.non_retryable matches on them.
            outcome = ActivityResult(instance_id=work.instance_id, execution_id=work.execution_id,
                                     event_id=work.event_id,
                                     error=replace(safe_error_details(exc), types=exception_types(type(exc))))
        finally:
            if renew is not None:
                self._leases.release(renew)
        self.observer.activity_finished(ActivityFinished(
            work.name, work.instance_id, outcome.error is None, time.perf_counter() - began, work.execution_id,
            work.event_id, outcome.error.error_type if outcome.error else None))
        forget = None
        if outcome.error is None:
            await self.heartbeats.finish(beats)
            forget = beats.key if beats.recorded else None
        else:
            await self.heartbeats.flush(beats)  # the next attempt must find the last details
        self._results.put_nowait(WorkCompletion(lease.lock_token, outcome, forget_heartbeat=forget))

    def _fail_lost_attempt(self, call: _Call, timeout_s: float) -> None:
        """This attempt had started, and its lease ran out: it is lost, not run again (see the module docstring)."""
        work = call.lease.work
        _log.warning("activity %r (event %s, attempt %s) sent no heartbeat within its heartbeat_timeout of %gs; "
                     "the attempt is lost and fails with ActivityHeartbeatTimeout", work.name, work.event_id,
                     work.attempt, timeout_s, extra=call.actx.log_fields())
        for task, other in list(self._running.items()):  # still running here, lease lost: stop it
            w = other.lease.work
            if other is not call and (w.instance_id, w.execution_id, w.event_id) == (
                    work.instance_id, work.execution_id, work.event_id):
                other.actx._cancelled.set()
                task.cancel()
        error = ErrorDetails(
            "ActivityHeartbeatTimeout",
            f"attempt {work.attempt} of activity {work.name!r} sent no heartbeat for longer than its "
            f"heartbeat_timeout of {timeout_s:g}s: it is considered lost (its process stopped, or it stopped "
            "calling heartbeat())",
            code=str(ErrorCode.ACTIVITY_TIMEOUT),
            fix="call activity_context().heartbeat() more often than heartbeat_timeout, or raise heartbeat_timeout")
        self._results.put_nowait(WorkCompletion(call.lease.lock_token, ActivityResult(
            instance_id=work.instance_id, execution_id=work.execution_id, event_id=work.event_id, error=error)))

    def _lost_lease(self, beats: CallBeats) -> None:
        """A heartbeat found the lease lost (or the call cancelled): stop the call, as a failed renewal does."""
        beats.actx._cancelled.set()
        if beats.task is not None:
            beats.task.cancel()

    async def _invoke(self, fn: Any, data: str, call: _Call) -> object:
        token = _current.set(call.actx)
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(data)
            ctx = contextvars.copy_context()
            call.in_thread = True
            try:
                result: object = await asyncio.get_running_loop().run_in_executor(
                    self._threads, lambda: ctx.run(fn, data))
            finally:
                call.in_thread = False
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            _current.reset(token)

    async def flush_results(self, stopping: asyncio.Event) -> None:
        """The batching writer: commit every waiting result in one call."""
        failures = 0
        batch: list[WorkCompletion] = []
        while True:
            raise_if_cancel_requested()
            if not batch:
                getter = asyncio.ensure_future(self._results.get())
                stop = asyncio.ensure_future(stopping.wait())
                try:
                    await asyncio.wait([getter, stop], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                    if not getter.done():
                        getter.cancel()
                if not getter.done() or getter.cancelled():
                    if self._results.empty() and not self._running:
                        return
                    await asyncio.sleep(0.01)
                    continue
                batch.append(getter.result())
            while not self._results.empty():
                batch.append(self._results.get_nowait())
            try:
                await self._complete(batch)
                batch = []
                failures = 0
                if self._results.empty():
                    self._results.part.idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - results are kept and retried, never dropped
                batch = await self._write_one_by_one(batch, exc)
                if batch:
                    failures += 1
                    background_warnings.warning(_log, "worker.results", "activity worker: could not record %d "
                                                "results (retrying)", len(batch), exc_info=True)
                    await self._results.part.sleep(min(2.0, 0.01 * 2 ** min(failures, 8)))
                elif self._results.empty():
                    self._results.part.idle()

    async def _write_one_by_one(self, batch: list[WorkCompletion], error: Exception) -> list[WorkCompletion]:
        """A batch of results failed: find the result the store cannot take, so it fails alone.

        Each result is written by itself. One that still fails is replaced by a
        typed failure of its call (``PayloadError``, which the orchestration gets
        as ``ActivityFailed``); if even that cannot be written the store itself is
        in trouble and the result is kept for the next retry. Returns the results
        still to write.
        """
        if is_store_trouble(error):
            return batch  # the store is down or busy: no result is to blame
        retry: list[WorkCompletion] = []
        for done in batch:
            refused = await self._refused(done)
            if refused is None:
                continue  # written
            if is_store_trouble(refused) or not isinstance(done.result, ActivityResult):
                retry.append(done)
                continue
            failure = _unwritable(done, refused)
            if await self._refused(failure) is None:
                _log.error("activity result for instance %r (event %s) could not be stored (%s: %s); "
                           "the call fails with PayloadError instead", done.result.instance_id,
                           done.result.event_id, type(refused).__name__, storable_text(str(refused)),
                           extra={"instance_id": done.result.instance_id})
            else:
                retry.append(done)  # not the result's fault after all
        return retry

    async def _refused(self, done: WorkCompletion) -> Exception | None:
        """Write one result by itself; the error if the store refused it."""
        try:
            await self._complete([done])
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller decides whose fault it is
            return exc

    async def _complete(self, batch: list[WorkCompletion]) -> None:
        """Record results (dropped for instances that have ended) and wake the dispatchers.

        While this process's dispatcher waits idle, the instances the results go to come back
        locked (:class:`LockOffer`) and are handed straight to it, sparing its fetch.
        """
        dispatcher = self.dispatcher
        offer = dispatcher.lock_offer() if dispatcher is not None else None
        items = await self.store.complete_work_items(batch, only_if_status_in=LIVE_STATUSES, lock=offer)
        if items and dispatcher is not None:
            await dispatcher.take_locked(items)
        if len(items) < len({done.result.instance_id for done in batch}):
            self.wake.notify_orchestrator()
        if self.options.queues:
            self.wake.notify_worker()  # the calls that ended freed queue slots: waiting calls may go now

    async def drain(self, grace: float) -> None:
        """Shutdown: let running calls finish for ``grace`` seconds, then stop what can be stopped.

        ``async def`` calls are cancelled; once one has stopped without a result its
        lease is given back, so another process takes the call at once. A plain
        ``def`` call runs in a thread that cannot be interrupted: giving its lease
        back would let another process run the same call at the same time. It
        keeps its lease (renewed as usual) until it ends, and its result is
        recorded; this waits for it, logging every ``shutdown_log_interval``
        seconds what it is waiting for.
        """
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        interrupted: dict[asyncio.Task[None], _Call] = {}
        for task, call in list(self._running.items()):
            if not call.in_thread:
                task.cancel()
                interrupted[task] = call
        if interrupted:
            await asyncio.wait(list(interrupted), timeout=1.0)
        # Real time, not self.clock: the grace and these log lines bound how long a
        # process takes to stop, whatever clock its store runs on.
        next_log = time.monotonic()
        while self._running or interrupted:
            for task in [t for t in interrupted if t.done()]:
                call = interrupted.pop(task)
                if task.cancelled():  # stopped without a result
                    await self._give_back(call)
            running = [t for t in self._running if not t.done()]
            if not running:
                await asyncio.sleep(0)  # let the done-callbacks of finished calls run
                continue
            now = time.monotonic()
            if now >= next_log:
                _log.warning("shutdown: waiting for %d running activity call(s): %s. A plain def activity runs "
                             "in a thread that cannot be interrupted: it keeps its lease (renewed) until it "
                             "returns, and its result is recorded", len(running),
                             "; ".join(_describe(self._running[t]) for t in running),
                             extra={"waiting_for": len(running)})
                next_log = now + self.shutdown_log_interval
            await asyncio.wait(running, timeout=max(0.01, next_log - now), return_when=asyncio.FIRST_COMPLETED)
        self._threads.shutdown(wait=False, cancel_futures=True)
        await self.heartbeats.stop()
        await self._leases.stop()

    async def _give_back(self, call: _Call, delay: float = 0) -> None:
        try:
            if call.beats is not None:
                await self.heartbeats.flush(call.beats)  # the next delivery reads them
            await self.store.abandon_work_item(call.lease.lock_token, delay)
            self.wake.notify_worker()
        except Exception:  # noqa: BLE001 - the lease expires anyway; the work is redelivered
            _log.warning("could not abandon activity lease at shutdown", exc_info=True, extra=call.actx.log_fields())


class _ActivityThreads(Executor):
    """A bounded pool of daemon threads for plain ``def`` activities (``run_in_executor`` needs only ``submit``).

    Not ``ThreadPoolExecutor``: the interpreter joins its threads at exit, so a
    process leaving without a graceful shutdown (an exception after ``start()``,
    Ctrl-C) hung until every running activity returned, while nothing renewed
    their leases any more (the event loop was gone) and another process could
    run the same calls. Daemon threads end with the process; the leases of
    their calls expire and the calls are redone (at least once), as after a crash.
    """

    def __init__(self, size: int, prefix: str) -> None:
        self._size = size
        self._prefix = prefix
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the activity thread pool is shut down")
            self._jobs.put((future, lambda: fn(*args, **kwargs)))
            if self._idle > 0:
                self._idle -= 1  # that thread takes the job
            elif self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._prefix}-{self._threads}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current job ends; queued jobs are cancelled. Never waits:
        a running activity cannot be interrupted, and drain() has already waited for it."""
        with self._lock:
            self._closed = True
            threads = self._threads
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(threads):
            self._jobs.put(None)


def _describe(call: _Call) -> str:
    w = call.lease.work
    how = "in a thread" if call.in_thread else "async"
    return (f"{w.name!r} of instance {w.instance_id!r} (event {w.event_id}, {how}, running for "
            f"{time.monotonic() - call.began:.1f} s)")


class _Results(asyncio.Queue[WorkCompletion]):
    """Activity results waiting to be written: their part holds a self-moving clock still from
    the moment one is queued until the writer has written them all."""

    def __init__(self, part: ClockPart) -> None:
        super().__init__()
        self.part = part

    def put_nowait(self, item: WorkCompletion) -> None:
        super().put_nowait(item)
        self.part.busy()


def _cancelled_result(work: ActivityWork) -> ActivityResult:
    """The result of a call the orchestration no longer waits for (it is dropped if the instance ended)."""
    return ActivityResult(instance_id=work.instance_id, execution_id=work.execution_id, event_id=work.event_id,
                          error=ErrorDetails("ActivityCancelled", "the orchestration no longer waits for it"))


def _unwritable(done: WorkCompletion, exc: Exception) -> WorkCompletion:
    """The typed failure that replaces an activity result the store refused."""
    result = done.result
    assert isinstance(result, ActivityResult)
    err = PayloadError(
        f"the activity finished, but the store could not record its "
        f"{'result' if result.error is None else 'error'}: {type(exc).__name__}: {storable_text(str(exc))}",
        fix="return text every store can hold (valid Unicode; see the limits in docs/runtime.md)")
    return WorkCompletion(done.lock_token, ActivityResult(
        instance_id=result.instance_id, execution_id=result.execution_id, event_id=result.event_id,
        error=ErrorDetails("PayloadError", storable_text(str(err)))))
