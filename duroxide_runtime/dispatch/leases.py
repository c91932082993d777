"""Orchestration locks kept alive while their batch is processed.

A fetched batch holds one lock per instance for ``orchestration_lock_timeout``.
Reading histories, running the turns and committing usually take
milliseconds, but a slow turn, a long replay or a slow store can outlast the
lock; another process then took the instance and, after ping-ponging,
poisoned it (issue 10, defect 2). While a batch is in hand, its locks are
renewed every third of the timeout, from the event loop (turns run on their
own thread, so renewals are never starved). Batches also shrink when turns
are slow, so one batch's work fits well inside one lock period.

Example::

    async with keep_locks(store, items, lock_timeout=5.0):
        ...  # read histories, run turns, commit
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from ..clock import Clock
from ..lograte import background_warnings
from ..providers.base import OrchestrationItem, Provider

__all__ = ["keep_locks", "BatchSizer"]

_log = logging.getLogger("duroxide.dispatcher")


@contextlib.asynccontextmanager
async def keep_locks(store: Provider, items: Sequence[OrchestrationItem], lock_timeout: float,
                     clock: Clock | None = None) -> AsyncIterator[None]:
    """Renew the locks of ``items`` every ``lock_timeout / 3`` seconds of ``clock`` (default:
    the store's, which also times the locks' expiry) until the block ends."""
    renewer = asyncio.create_task(_renew_forever(store, items, lock_timeout, clock or store.clock),
                                  name="duroxide-lock-renewal")
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


async def _renew_forever(store: Provider, items: Sequence[OrchestrationItem], lock_timeout: float,
                         clock: Clock) -> None:
    locks = [(i.instance_id, i.lock_token) for i in items]
    while locks:
        await clock.sleep(lock_timeout / 3)
        try:
            held = await store.renew_orchestration_items(locks, lock_timeout)
        except Exception:  # noqa: BLE001 - a missed renewal is retried; the commit checks the lock anyway
            background_warnings.warning(_log, "dispatcher.renew", "orchestration lock renewal failed; retrying",
                                        exc_info=True)
            continue
        lost = [iid for (iid, _), ok in zip(locks, held) if not ok]
        if lost:
            _log.warning("instances %s: lock taken over by another process while their turn ran; the turn "
                         "will not commit", lost)
        locks = [lock for lock, ok in zip(locks, held) if ok]


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
