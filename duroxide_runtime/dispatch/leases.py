"""Orchestration locks and activity leases kept alive while their work runs.

A fetched batch holds one lock per instance for ``orchestration_lock_timeout``.
Reading histories, running the turns and committing usually take
milliseconds, but a slow turn, a long replay or a slow store can outlast the
lock; another process then took the instance and, after ping-ponging,
poisoned it (issue 10, defect 2). While a batch is in hand, its locks are
renewed every third of the timeout, from the event loop (turns run on their
own thread, so renewals are never starved). Batches also shrink when turns
are slow, so one batch's work fits well inside one lock period.

One renewer per pipeline lives as long as the pipeline and renews whatever
batch the pipeline holds: a batch costs two attribute writes, not a task of
its own (a task per batch cost event-loop turns on every orchestration's
latency). The renewer sleeps a third of the timeout after it learns of a
batch, so every batch in hand is renewed at least that often.

Activity calls are kept the same way (:class:`LeaseKeeper`): one renewer per
worker for all its running calls, not a task per call (most calls end within
microseconds, long before their first renewal, and a task each cost two
event-loop turns on every activity).

Example::

    keeper = LockKeeper(store, lock_timeout=5.0)
    renewing = asyncio.create_task(keeper.run())
    with keeper.holding(items):
        ...  # read histories, run turns, commit
    renewing.cancel()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..activity import ActivityContext
from ..clock import Clock, clock_part
from ..engine.output import LIVE_STATUSES
from ..lograte import background_warnings
from ..providers.base import OrchestrationItem, Provider, WorkLease

__all__ = ["LockKeeper", "LeaseKeeper", "BatchSizer"]

_log = logging.getLogger("duroxide.dispatcher")


class LockKeeper:
    """Renews the instance locks of the batch a pipeline holds; see the module docstring."""

    def __init__(self, store: Provider, lock_timeout: float, clock: Clock | None = None) -> None:
        self._store = store
        self._timeout = lock_timeout
        #: The store's clock by default: it also times the locks' expiry.
        self._clock = clock or store.clock
        self._locks: list[tuple[str, str]] = []
        self._batch = asyncio.Event()
        #: Never busy: renewals are due only while a batch is in hand, and the pipeline holding
        #: it holds a self-moving clock still; so such a clock never moves time to a renewal.
        self._part = clock_part(self._clock, "orchestration lock renewal", busy=False)

    @contextlib.contextmanager
    def holding(self, items: Sequence[OrchestrationItem]) -> Iterator[None]:
        """Keep the locks of ``items`` renewed until the block ends."""
        self._locks = [(i.instance_id, i.lock_token) for i in items]
        self._batch.set()
        try:
            yield
        finally:
            self._locks = []
            self._batch.clear()

    async def run(self) -> None:
        """Renew until cancelled: a third of the timeout after a batch is seen, and again while it is held."""
        try:
            await self._renew()
        finally:
            self._part.close()

    async def _renew(self) -> None:
        while True:
            await self._batch.wait()
            await self._part.wait(None, self._timeout / 3)
            locks = self._locks
            if not locks:
                continue
            try:
                held = await self._store.renew_orchestration_items(locks, self._timeout)
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the commit checks the lock anyway
                background_warnings.warning(_log, "dispatcher.renew", "orchestration lock renewal failed; "
                                            "retrying", exc_info=True)
                continue
            lost = [iid for (iid, _), ok in zip(locks, held) if not ok]
            # A batch that ended while its renewal was in flight released its locks itself:
            # only a batch still in hand can have lost one.
            if lost and self._locks is locks:
                _log.warning("instances %s: lock taken over by another process while their turn ran; the turn "
                             "will not commit", lost)
                self._locks = [lock for lock, ok in zip(locks, held) if ok]


@dataclass
class _Held:
    lease: WorkLease
    actx: ActivityContext
    renewed_at: float


class LeaseKeeper:
    """Renews the leases of the activity calls a worker runs; see the module docstring.

    A call's lease is renewed once it is half a renewal period (a sixth of the lock
    timeout) old and every half period after, so at the latest a third of the timeout
    after it was last renewed, as a renewer of its own did. A renewal the store
    refuses (the instance ended, or moved to another execution) cancels the call.

    Example::

        keeper = LeaseKeeper(store, lock_timeout=30.0)
        keeper.hold(lease, actx, asyncio.current_task())   # the call runs
        keeper.release(asyncio.current_task())             # it ended
        await keeper.stop()                                # the worker stopped
    """

    def __init__(self, store: Provider, lock_timeout: float, clock: Clock | None = None) -> None:
        self._store = store
        self._timeout = lock_timeout
        self._clock = clock or store.clock
        self._held: dict[asyncio.Task[None], _Held] = {}
        self._some = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Never busy: renewals are due only while calls run, and running calls hold a
        #: self-moving clock still; so such a clock never moves time to a renewal.
        self._part = clock_part(self._clock, "activity lease renewal", busy=False)

    def hold(self, lease: WorkLease, actx: ActivityContext, task: asyncio.Task[None]) -> None:
        """Keep ``lease`` renewed while ``task`` runs the call (call on the event loop)."""
        self._held[task] = _Held(lease, actx, self._clock.monotonic())
        self._some.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew(), name="duroxide-activity-leases")

    def release(self, task: asyncio.Task[None]) -> None:
        """The call ``task`` ran has ended: its lease is no longer renewed."""
        self._held.pop(task, None)

    async def stop(self) -> None:
        """Stop renewing (the worker has no running calls left)."""
        self._part.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _renew(self) -> None:
        half = self._timeout / 6
        while True:
            if not self._held:
                self._some.clear()
                await self._some.wait()
                continue
            await self._part.wait(None, half)
            now = self._clock.monotonic()
            due = [(task, held) for task, held in self._held.items() if now - held.renewed_at >= half]
            if due:
                await asyncio.gather(*(self._renew_one(task, held, now) for task, held in due))

    async def _renew_one(self, task: asyncio.Task[None], held: _Held, now: float) -> None:
        try:
            # Only while the instance still runs the execution that scheduled the call.
            alive = await self._store.renew_work_item(held.lease.lock_token, self._timeout,
                                                      only_if_status_in=LIVE_STATUSES,
                                                      only_if_execution=held.lease.work.execution_id)
        except Exception:  # noqa: BLE001 - a missed renewal is retried at the next tick
            background_warnings.warning(_log, "worker.renew", "activity %r: lease renewal failed; retrying",
                                        held.lease.work.name, exc_info=True, extra=held.actx.log_fields())
            return
        if self._held.get(task) is not held:
            return  # the call ended while its renewal was in flight
        held.renewed_at = now
        if not alive:
            self._held.pop(task, None)
            held.actx._cancelled.set()
            task.cancel()


class BatchSizer:
    """How many instances to fetch at once: fewer when turns are slow.

    Keeps a moving average of seconds per turn and sizes batches so that one
    batch's turns take at most a quarter of the lock timeout (renewals cover
    the rest); never more than ``limit``, never fewer than one.
    """

    def __init__(self, limit: int, lock_timeout: float) -> None:
        self._limit = limit
        self._budget = lock_timeout / 4
        self._per_turn = 0.0

    def size(self) -> int:
        if self._per_turn <= 0:
            return self._limit
        return max(1, min(self._limit, int(self._budget / self._per_turn)))

    def observe(self, turns: int, seconds: float) -> None:
        """``turns`` turns took ``seconds`` in all."""
        if turns > 0:
            sample = seconds / turns
            self._per_turn = sample if self._per_turn <= 0 else 0.8 * self._per_turn + 0.2 * sample
