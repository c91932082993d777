"""In-process wake-ups, so that idle dispatchers and waiting clients never poll.

Wake-ups are the runtime's business, not the store's: the runtime and the
client wake the hub of their store after their own writes (a client's start
wakes this process's dispatchers; a committed turn wakes activity workers and
``wait_for_orchestration`` callers). All clients and runtimes of one store
object share one hub (:func:`wake_hub`, keyed weakly by the store).

Writes of other processes reach a hub only through a store that can hear
them: a store implementing :class:`WakeSource` (PostgreSQL's LISTEN/NOTIFY)
is asked once, when its hub is made, to feed it. Every wait is bounded, so a
store that hears nothing (SQLite shared by two processes) costs at most one
poll interval, never a lost wake-up.

Example::

    hub = wake_hub(store)
    hub.notify_orchestrator()                       # after enqueueing orchestrator work
    await hub.wait_instance("order-1", timeout=0.25)  # until it ends, or 0.25 s
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .clock import SYSTEM_CLOCK, Clock, ClockPart
from .providers.base import Provider, TurnCommit

__all__ = ["WakeHub", "WakeSource", "wake_hub"]


@runtime_checkable
class WakeSource(Protocol):
    """A store that hears other processes' writes and forwards them to a hub (optional).

    ``wake_into`` is called once per hub, from the event loop, when the hub of
    the store is made; from then on the store calls the hub's ``notify_*``
    methods for work other processes enqueued and instances they ended, until
    the store is closed. It must not block and must never raise later (a lost
    listener reconnects and wakes everyone once, as work may have been missed).

    Example::

        class RedisProvider(Provider):
            def wake_into(self, hub: WakeHub) -> None:
                self._hubs.append(hub)   # the pub/sub task calls hub.notify_orchestrator() ...
    """

    def wake_into(self, hub: WakeHub) -> None:
        """Forward wake-ups of other processes' writes to ``hub`` until the store closes."""


class _Baton:
    """Wakes one waiter per notify, and keeps a notify that found nobody waiting for the next.

    Waking every idle dispatcher for one message made all but one of them fetch
    for nothing (a store transaction each, on every orchestration's path); the
    one woken passes the baton on when it finds more work than it can take.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._waiters: deque[asyncio.Event] = deque()
        self._pending = False

    def notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.is_set():
                waiter.set()
                return
        self._pending = True

    def notify_all(self) -> None:
        """Wake every waiter now (shutdown; a reconnected listener that may have missed work)."""
        while self._waiters:
            self._waiters.popleft().set()

    async def wait(self, timeout: float, part: ClockPart | None = None, due: float = math.inf) -> None:
        if self._pending:
            self._pending = False
            return
        waiter = asyncio.Event()
        self._waiters.append(waiter)
        try:
            if part is None:
                await self._clock.wait(waiter, min(timeout, due))
            else:
                await part.wait(waiter, timeout, due=due)
        except BaseException:
            if waiter.is_set():
                self.notify()  # woken and cancelled at once: the wake-up goes to another waiter
            raise
        finally:
            if not waiter.is_set():
                self._waiters.remove(waiter)


class WakeHub:
    """The wake-ups of one store in this process; see the module docstring.

    Example::

        hub = WakeHub()
        hub.notify_instance("i1")   # wakes hub.wait_instance("i1", ...) callers
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        #: Measures every wait's timeout (the store's clock).
        self.clock = clock
        #: One baton per group of waiters (a runtime's dispatcher pipelines; its worker), by the
        #: group's id while the group lives: plain dicts, as every notify walks them.
        self._orchestrator: dict[int, _Baton] = {}
        self._worker: dict[int, _Baton] = {}
        self._instances: dict[str, list[asyncio.Event]] = {}
        #: Clients following an instance's turns (``client.stream``, ``client.update``), by instance id.
        self._followers: dict[str, list[asyncio.Event]] = {}

    def notify_orchestrator(self) -> None:
        """Orchestrator messages were enqueued (or unlocked): wake one idle waiter of each group.

        Each runtime's dispatcher is one group: one of its pipelines wakes, and one that
        fetches a full batch wakes the next, so a burst still reaches every pipeline.
        Every runtime of the process wakes: only one may know the orchestration's name.
        """
        # A snapshot: a group collected meanwhile leaves the dict from a finalizer.
        for baton in tuple(self._orchestrator.values()):
            baton.notify()

    def wake_group(self, group: object) -> None:
        """Wake one idle dispatcher pipeline of ``group`` alone (work was handed to that group)."""
        self._baton(self._orchestrator, group).notify()

    def notify_worker(self) -> None:
        """Activity work was enqueued (or given back): wake one idle waiter of each group."""
        for baton in tuple(self._worker.values()):
            baton.notify()

    def wake_everyone(self) -> None:
        """Wake every idle dispatcher and worker now: shutdown, or a listener that may have missed work."""
        for baton in (*self._orchestrator.values(), *self._worker.values()):
            baton.notify_all()

    def notify_instance(self, instance_id: str) -> None:
        """``instance_id`` ended or was purged: wake its ``wait_instance`` callers."""
        for waiter in self._instances.pop(instance_id, ()):
            waiter.set()

    def after_commit(self, commits: Sequence[TurnCommit], results: Sequence[bool]) -> None:
        """Wake what a batch of committed turns concerns: dispatchers, workers, waiting clients.

        Dispatchers only for new orchestrator work (messages, timers, children): the
        pipeline that committed fetches again at once, so the instances it unlocked need
        no wake-up, and waking an idle pipeline for them made it fetch for nothing.
        """
        if any(c.messages or c.children for c, ok in zip(commits, results) if ok):
            self.notify_orchestrator()
        # Calls leased with the commit (LeaseOffer) are running already: only queued ones need a worker.
        if any(len(c.activities) > len(c.leased) for c, ok in zip(commits, results) if ok):
            self.notify_worker()
        for c, ok in zip(commits, results):
            if ok and c.ends_instance:
                self.notify_instance(c.instance_id)
        if self._followers:  # only streams and updates waiting in this process pay for this walk
            for c, ok in zip(commits, results):
                if ok:
                    self.notify_turn(c.instance_id)

    def notify_turn(self, instance_id: str) -> None:
        """A turn of ``instance_id`` committed: wake its :meth:`wait_turn` callers."""
        for waiter in self._followers.pop(instance_id, ()):
            waiter.set()

    async def wait_turn(self, instance_id: str, timeout: float) -> None:
        """Until a turn of ``instance_id`` commits in this process (:meth:`notify_turn`), at most ``timeout`` seconds."""
        waiter = asyncio.Event()
        self._followers.setdefault(instance_id, []).append(waiter)
        try:
            await self.clock.wait(waiter, timeout)
        finally:
            waiters = self._followers.get(instance_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._followers[instance_id]

    async def wait_orchestrator(self, timeout: float, *, group: object | None = None, part: ClockPart | None = None,
                                due: float = math.inf) -> None:
        """Until :meth:`notify_orchestrator` (or one since the group's last wait), at most ``timeout`` seconds.

        Waiters that pass the same ``group`` object (any object that can be weakly
        referenced, e.g. the dispatcher) share each wake-up: one of them wakes. Without
        a group, the waiting task is a group of its own. ``part`` is the waiter's
        :class:`~duroxide_runtime.clock.ClockPart`, idle while it waits; ``due`` the
        seconds to the next deadline it knows of (a timer), the only one of the two
        bounds a self-moving clock moves time to (``timeout`` is a poll).
        """
        await self._baton(self._orchestrator, group).wait(timeout, part, due)

    async def wait_worker(self, timeout: float, *, group: object | None = None,
                          part: ClockPart | None = None) -> None:
        """Until :meth:`notify_worker` (or one since the group's last wait), at most ``timeout`` seconds
        (a poll bound; ``part`` as for :meth:`wait_orchestrator`)."""
        await self._baton(self._worker, group).wait(timeout, part)

    def join(self, group: object) -> None:
        """Make ``group`` a group of waiters now, so that wake-ups before its first wait are kept for it.

        The group leaves the hub when it is garbage-collected.

        Example::

            hub.join(dispatcher)                       # before the dispatcher's first fetch
            await hub.wait_orchestrator(0.2, group=dispatcher)
        """
        key = id(group)
        if key not in self._orchestrator:
            self._orchestrator[key] = _Baton(self.clock)
            self._worker[key] = _Baton(self.clock)
            weakref.finalize(group, self._leave, key)

    def _leave(self, key: int) -> None:
        self._orchestrator.pop(key, None)
        self._worker.pop(key, None)

    def _baton(self, batons: dict[int, _Baton], group: object | None) -> _Baton:
        if group is None:
            group = asyncio.current_task()
        baton = batons.get(id(group))
        if baton is None:
            self.join(group)
            baton = batons[id(group)]
        return baton

    async def wait_instance(self, instance_id: str, timeout: float) -> None:
        """Until :meth:`notify_instance` of ``instance_id``, at most ``timeout`` seconds."""
        waiter = asyncio.Event()
        self._instances.setdefault(instance_id, []).append(waiter)
        try:
            # The clock's wait never swallows a cancel that arrives with the wake-up
            # (Python 3.11's wait_for did, and the caller then never stopped).
            await self.clock.wait(waiter, timeout)
        finally:
            waiters = self._instances.get(instance_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._instances[instance_id]


_hubs: weakref.WeakKeyDictionary[Provider, WakeHub] = weakref.WeakKeyDictionary()


def wake_hub(store: Provider) -> WakeHub:
    """The hub every client and runtime of ``store`` in this process shares (made on first use).

    A store that is a :class:`WakeSource` is asked to feed the new hub.

    Example::

        assert wake_hub(store) is wake_hub(store)
    """
    hub = _hubs.get(store)
    if hub is None:
        hub = _hubs[store] = WakeHub(store.clock)
        if isinstance(store, WakeSource):
            store.wake_into(hub)
    return hub
