"""Which queued activity calls one fetch may lease under the queues' limits; shared by every store.

A store loads, inside the transaction that leases, what holds now: the calls of
each limited queue that are leased (per concurrency key), and how many calls of
each rate-limited queue it leased within the window. :class:`QueueSlots` then
answers, call by call, whether a call may be leased, and counts the calls this
fetch takes. The store asks it for the queues and keys that are full, to leave
their calls out of its next read: a fetch never walks the backlog of a full queue.

Example::

    slots = QueueSlots(limited_queues(queues), running=[("payments", "c-1", 1)], started={"payments": 3})
    if slots.admits("payments", "c-2"):
        slots.take("payments", "c-2")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..queues import QueueOptions

__all__ = ["QueueSlots", "limited_queues", "slot_key"]


def limited_queues(queues: Mapping[str, QueueOptions] | None) -> dict[str, QueueOptions]:
    """The queues of ``queues`` that set a limit (only their calls need counting)."""
    return {name: options for name, options in (queues or {}).items() if options.limited}


def slot_key(queue: str, key: str) -> str:
    """One text for a (queue, concurrency key) pair; names hold no control characters, so U+001F separates."""
    return f"{queue}\x1f{key}"


class QueueSlots:
    """The free slots of the limited queues during one fetch (see the module docstring).

    ``running``: ``(queue, concurrency key or None, leased calls)`` rows of the limited
    queues; ``started``: calls leased within each rate-limited queue's window.
    """

    def __init__(self, limits: Mapping[str, QueueOptions], running: Iterable[tuple[str, str | None, int]],
                 started: Mapping[str, int]) -> None:
        self._limits = limits
        self._running: dict[str, int] = {}
        self._per_key: dict[tuple[str, str], int] = {}
        for queue, key, count in running:
            self._running[queue] = self._running.get(queue, 0) + count
            if key is not None:
                self._per_key[(queue, key)] = self._per_key.get((queue, key), 0) + count
        self._started = dict(started)

    def admits(self, queue: str, key: str | None) -> bool:
        """Whether a call of ``queue`` with concurrency key ``key`` may be leased now."""
        options = self._limits.get(queue)
        if options is None:
            return True
        if options.concurrency is not None and self._running.get(queue, 0) >= options.concurrency:
            return False
        if options.rate_limit is not None and self._started.get(queue, 0) >= options.rate_limit.n:
            return False
        return (key is None or options.per_key_concurrency is None
                or self._per_key.get((queue, key), 0) < options.per_key_concurrency)

    def take(self, queue: str, key: str | None) -> bool:
        """Count a call this fetch leases; ``True`` if the store must record its time (a rate-limited queue)."""
        options = self._limits.get(queue)
        if options is None:
            return False
        self._running[queue] = self._running.get(queue, 0) + 1
        if key is not None:
            self._per_key[(queue, key)] = self._per_key.get((queue, key), 0) + 1
        if options.rate_limit is None:
            return False
        self._started[queue] = self._started.get(queue, 0) + 1
        return True

    def full_queues(self) -> list[str]:
        """Limited queues none of whose calls may be leased now."""
        return sorted(q for q in self._limits if not self.admits(q, None))

    def full_keys(self) -> list[str]:
        """``slot_key(queue, key)`` of the keys at their per-key limit (in queues not full as a whole)."""
        return sorted(slot_key(q, k) for (q, k), n in self._per_key.items()
                      if (limit := self._limits[q].per_key_concurrency) is not None and n >= limit)
