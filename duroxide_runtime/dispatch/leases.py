"""Orchestration locks kept alive while their batch is processed.

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

from ..clock import Clock, clock_part
from ..lograte import background_warnings
from ..providers.base import OrchestrationItem, Provider

__all__ = ["LockKeeper", "BatchSizer"]

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
