"""``VirtualClock``: a clock that jumps to the next deadline as soon as nothing else can run.

Import it as ``duroxide_runtime.testing.VirtualClock`` (or from
``duroxide_runtime``). How it decides, in short: the runtime reports each of
its parts to the clock (:class:`~duroxide_runtime.clock.ClockPart`); a part
holds time still while it is busy, and also from the moment its idle wait is
woken until its task has run. When nothing holds time still, and no waiter of
the clock has been woken without having run yet, the clock lets the event loop
turn a few times, asks each runtime's store check, and looks again: if nothing
changed meanwhile, time jumps to the earliest deadline.

Deadlines a dispatcher reported from the store (the next timer's due time) are
trusted only if no other part became busy after the dispatcher began the fetch
that saw them: another part may have deleted that timer since. An untrusted one
is not jumped to; its dispatcher is woken to fetch again (time does not move),
and reports the current one. So time never stops at a timer that was cancelled.

Example::

    clock = VirtualClock()
    store = InMemoryProvider(clock=clock)
    rt = await Runtime.builder().store(store).clock(clock).orchestrations(registry).start()
    await Client(store).start_orchestration("approval-1", "Approval")   # 30 days of reminders
    await clock.until_idle()                                            # milliseconds later
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable

from .clock import ClockPart, StoreCheck
from .errors import ConfigurationError

__all__ = ["VirtualClock"]

_log = logging.getLogger("duroxide.clock")

_NS = 1_000_000_000


class _Entry:
    """One task waiting on a :class:`VirtualClock`: woken by its deadline, or by its event."""

    __slots__ = ("seq", "wake_ns", "due_ns", "future", "event", "part", "epoch")

    def __init__(self, seq: int, wake_ns: float, due_ns: float, future: asyncio.Future[None],
                 event: asyncio.Event | None, part: _Part | None, epoch: int) -> None:
        self.seq = seq
        #: When the waiter wakes (its poll bound or its deadline, whichever is first).
        self.wake_ns = wake_ns
        #: The deadline time may move to for it (a poll bound is not one).
        self.due_ns = due_ns
        self.future = future
        self.event = event
        self.part = part
        #: For a part's idle wait: the clock's activation count its deadline is good for (-1: none).
        self.epoch = epoch

    def woken(self) -> bool:
        """Woken (deadline reached, or event set) and about to run: time must wait for it."""
        return self.future.done() or (self.event is not None and self.event.is_set())

    def reported(self) -> bool:
        """Its deadline was reported from the store by an idle part (a timer's due time), not a
        plain duration (a back-off, a client's timeout, a sleep): it may go out of date."""
        return self.part is not None and self.event is not None


class _Part:
    """A :class:`~duroxide_runtime.clock.ClockPart` of a :class:`VirtualClock`."""

    __slots__ = ("_clock", "what", "_busy", "_entry", "_closed", "active_since", "alone", "refreshing")

    def __init__(self, clock: VirtualClock, what: str, busy: bool) -> None:
        self._clock = clock
        self.what = what
        self._busy = busy
        self._entry: _Entry | None = None
        self._closed = False
        #: The clock's activation count when this part last became active.
        self.active_since = -1
        #: No other part held time still when it did (so nothing else could write meanwhile).
        self.alone = False
        #: Woken by the clock only to report its deadline again (not by work to do), until it has.
        self.refreshing = False

    def holds(self) -> bool:
        """Whether this part keeps time still now: busy, and not asleep in a wait nothing woke yet."""
        return self._busy and (self._entry is None or self._entry.woken())

    def busy(self) -> None:
        if not self._busy and not self._closed:
            self._busy = True
            self._clock._activated(self)

    def idle(self) -> None:
        if self._busy:
            self._busy = False
            self._clock._changed()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._busy = False
            self._clock._parts.pop(self, None)
            self._clock._changed()

    async def wait(self, event: asyncio.Event | None, timeout: float, *, due: float = math.inf) -> bool:
        return await self._clock._wait(event, min(timeout, due), due, self)

    async def sleep(self, seconds: float) -> None:
        await self._clock._wait(None, seconds, seconds, self)


class VirtualClock:
    """A clock that jumps to the next deadline as soon as nothing else can run.

    Give it to a store (``clock=``; ``Runtime.builder().clock(...)``, if given,
    must be the same clock). The runtime reports to it which of its parts are
    busy: every dispatcher pipeline and activity worker until it waits idle,
    every activity call from its lease until its result is queued, and the
    result until it is written; every client call that writes
    (``start_orchestration``, ``raise_event``, ``cancel_instance``, ``purge``)
    until it has woken the runtime. Once none is busy and no waiter has been
    woken without having run yet, time jumps to the earliest deadline: a durable
    timer's due time, a back-off, a client's timeout, a :meth:`sleep` of the
    test. A 30-day flow with daily reminders runs in milliseconds and records
    the history it records in real time (same events, order and due times).

    What holds time still: a running activity, also one in a thread or one that
    sleeps on real time (``asyncio.sleep(5)`` takes 5 real seconds and no virtual
    time); a client call that writes; a runtime with work in hand. What does not:
    a task awaiting ``wait_for_orchestration`` (its timeout is virtual too, so a
    30-day flow needs a longer one, e.g. ``timedelta(days=31)``), and code the
    runtime does not know, which the clock cannot see: await client calls
    directly, not in tasks created a moment before (the clock lets the event loop
    turn ``settle_rounds`` times before it moves, no more).

    With no deadline left (an orchestration waits for an external event and
    nothing else is scheduled) time stops where the last deadline put it; it
    never runs away, and :meth:`until_idle` returns, so that the test can raise
    the event. Time moves in poll steps (``RuntimeOptions.poll_interval``) only
    while a store holds work no deadline dates (see
    :data:`~duroxide_runtime.clock.StoreCheck`). A task that waits on this clock
    while it holds time still (an activity awaiting this clock's ``sleep``)
    waits forever. Use it from the event loop's thread; reading the time is
    safe from any thread.

    Example::

        clock = VirtualClock()
        store = InMemoryProvider(clock=clock)
        rt = await Runtime.builder().store(store).clock(clock).orchestrations(registry).start()
        client = Client(store)
        await client.start_orchestration("approval-1", "Approval")       # waits 30 days, with reminders
        status = await client.wait_for_orchestration("approval-1", timedelta(days=31))
        assert status.is_terminal and clock.monotonic() == 30 * 86_400
    """

    #: The default ``start_ms``: 2024-01-01 UTC, as ``ManualClock``'s, so runs are reproducible.
    START_MS = 1_704_067_200_000

    def __init__(self, start_ms: int = START_MS, *, settle_rounds: int = 20) -> None:
        if isinstance(settle_rounds, bool) or not isinstance(settle_rounds, int) or settle_rounds < 1:
            raise ConfigurationError(f"VirtualClock(settle_rounds={settle_rounds!r}) is not a whole number >= 1",
                                     fix="pass the number of event-loop turns to let pass before time moves "
                                         "(default 20)")
        self._start_ms = start_ms
        self._ns = 0
        self._settle_rounds = settle_rounds
        self._seq = itertools.count()
        self._entries: set[_Entry] = set()
        #: Insertion-ordered, so that ``holding`` names parts in the order they came.
        self._parts: dict[_Part, None] = {}
        self._checks: list[StoreCheck] = []
        #: Moves on at every change that may let time move, or stop it from moving.
        self._generation = 0
        #: Moves on whenever a part becomes active for work (not to report a deadline again).
        self._activations = 0
        self._deciding: asyncio.Task[None] | None = None
        self._until_idle: list[asyncio.Future[None]] = []
        self._jumps = 0
        self._closed = False

    # -- reading ------------------------------------------------------------------

    def now_ms(self) -> int:
        return self._start_ms + self._ns // 1_000_000

    def monotonic(self) -> float:
        return self._ns / _NS

    @property
    def jumps(self) -> int:
        """How many times time has moved."""
        return self._jumps

    @property
    def holding(self) -> tuple[str, ...]:
        """What keeps time still now (the busy parts, by name); empty when nothing does.

        Example::

            assert any("activity 'Remind'" in what for what in clock.holding)
        """
        return tuple(p.what for p in self._parts if p.holds())

    # -- the runtime's reports (IdleAwareClock) -------------------------------------

    def part(self, what: str, *, busy: bool = True) -> ClockPart:
        """A part of the runtime (see :class:`~duroxide_runtime.clock.ClockPart`); busy ones hold time still."""
        p = _Part(self, what, busy)
        self._parts[p] = None
        if busy:
            self._activated(p)
        else:
            self._changed()
        return p

    def add_store_check(self, check: StoreCheck) -> Callable[[], None]:
        """Run ``check`` before each move of time; returns its remover."""
        self._checks.append(check)

        def remove() -> None:
            if check in self._checks:
                self._checks.remove(check)
                self._changed()

        return remove

    # -- waiting ------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        await self._wait(None, seconds, seconds, None)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        return await self._wait(event, timeout, timeout, None)

    async def aclose(self) -> None:
        """Stop deciding (end of the test, after the runtime shut down): the clock's own task
        ends here, not pending when the event loop closes. Time no longer moves by itself.

        Example::

            await runtime.shutdown()
            await clock.aclose()
        """
        self._closed = True
        task = self._deciding
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def until_idle(self) -> None:
        """Return once time cannot move: nothing runs and no deadline is left.

        The runtime then waits for the outside world (an external event, a client
        call); time stays where the last deadline put it.

        Example::

            await client.start_orchestration("order-1", "WaitForApproval")
            await clock.until_idle()                  # the orchestration waits for "approved"
            await client.raise_event("order-1", "approved", "yes")
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._until_idle.append(waiter)
        self._changed()
        try:
            await waiter
        finally:
            if waiter in self._until_idle:
                self._until_idle.remove(waiter)

    async def _wait(self, event: asyncio.Event | None, seconds: float, due: float, part: _Part | None) -> bool:
        if event is not None and event.is_set():
            return True
        if seconds <= 0:
            await asyncio.sleep(0)
            return event is not None and event.is_set()
        loop = asyncio.get_running_loop()
        # A part's deadline is good while no other part became active since this one did,
        # and none was active then: only then did its fetch see every change of the store.
        epoch = (self._activations if part is not None and part.active_since == self._activations and part.alone
                 else -1)
        if part is not None:
            part.refreshing = False
        entry = _Entry(next(self._seq), self._deadline(seconds), self._deadline(due), loop.create_future(), event,
                       part, epoch)
        self._entries.add(entry)
        if part is not None:
            part._entry = entry
        self._changed()
        try:
            if event is None:
                await entry.future
                return False
            # The event is awaited in this task (as ManualClock.wait does), so a set() that
            # another waiter clear()s at once still wakes it; the deadline expires an
            # asyncio.timeout, which keeps a cancel of this task propagating.
            active = True
            try:
                async with asyncio.timeout(None) as cm:
                    def expire(_: asyncio.Future[None]) -> None:
                        if active and not entry.future.cancelled() and not cm.expired():
                            cm.reschedule(loop.time())

                    entry.future.add_done_callback(expire)
                    await event.wait()
            except TimeoutError:
                if not entry.future.done():
                    raise
            finally:
                active = False
            return event.is_set()
        finally:
            entry.future.cancel()
            self._entries.discard(entry)
            if part is not None and part._entry is entry:
                part._entry = None
                if part._busy:
                    self._activated(part)
            self._changed()

    def _deadline(self, seconds: float) -> float:
        return math.inf if math.isinf(seconds) else self._ns + max(0, round(seconds * _NS))

    # -- moving -------------------------------------------------------------------

    def _activated(self, part: _Part) -> None:
        """``part`` became active: it holds time still, and other parts' reported deadlines may go stale."""
        if not part.refreshing:  # (woken only to report its deadline again, it changes nothing)
            self._activations += 1
        part.active_since = self._activations
        part.alone = not any(p.holds() and not p.refreshing for p in self._parts if p is not part)
        self._changed(decide=False)

    def _changed(self, *, decide: bool = True) -> None:
        """Something that may let time move changed: decide again, in a task of its own.

        ``decide=False``: something now holds time still; a decision under way must
        look again (the generation moves), but none need start.
        """
        self._generation += 1
        if self._deciding is not None or not decide or self._closed:
            return  # the running decision sees the new generation and looks again
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: nothing waits, so there is nothing to decide
        self._deciding = loop.create_task(self._decide(), name="duroxide-virtual-clock")

    def _quiet(self) -> bool:
        """Nothing holds time still: every part idle or asleep, and no waiter woken but not yet run."""
        return (not any(p.holds() for p in self._parts)
                and not any(e.woken() for e in self._entries))

    async def _decide(self) -> None:
        try:
            while True:
                generation = self._generation
                # Let what was just made ready run (tasks the runtime does not report, such
                # as one the test created a moment ago) before deciding: a few loop turns.
                for _ in range(self._settle_rounds):
                    await asyncio.sleep(0)
                if not self._quiet():
                    return  # the busy part reports when it is idle again, and that decides anew
                if generation != self._generation:
                    continue
                undated = await self._undated_work()
                if generation != self._generation or not self._quiet():
                    continue
                if not self._move(undated):
                    for waiter in self._until_idle:
                        if not waiter.done():
                            waiter.set_result(None)
                    return
        finally:
            self._deciding = None

    async def _undated_work(self) -> bool:
        """Whether some store holds work no deadline dates (each runtime's check asks its store)."""
        undated = False
        for check in list(self._checks):
            try:
                undated = await check() or undated
            except Exception:  # noqa: BLE001 - a store closing under a finished test: nothing to date
                _log.debug("virtual clock: store check failed", exc_info=True)
        return undated

    def _move(self, undated: bool) -> bool:
        """Move time to the earliest deadline, or first wake the parts whose deadline may be out of
        date to report it again; ``False`` if there is no deadline at all."""

        def target(e: _Entry) -> float:
            return e.wake_ns if (undated or e.part is None) else e.due_ns

        best = min((target(e) for e in self._entries), default=math.inf)
        if math.isinf(best):
            return False
        first = [e for e in self._entries if target(e) == best]
        if undated or any(not e.reported() or e.epoch == self._activations for e in first):
            self._advance_to(best)
        else:
            for e in first:  # a timer reported before another part did its work: ask again
                assert e.part is not None
                e.part.refreshing = True
                e.future.set_result(None)
        self._generation += 1
        return True

    def _advance_to(self, target: float) -> None:
        self._ns = max(self._ns, int(target))
        self._jumps += 1
        due = sorted((e for e in self._entries if e.wake_ns <= self._ns and not e.future.done()),
                     key=lambda e: (e.wake_ns, e.seq))
        for e in due:
            e.future.set_result(None)
