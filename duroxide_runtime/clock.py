"""One clock for the runtime, its store and its clients.

Everything in duroxide that reads time or waits for it goes through a
:class:`Clock`: stored timestamps, durable timer due times, instance locks and
activity leases (wall-clock milliseconds), durations and deadlines (monotonic
seconds), and the dispatchers' idle waits and back-offs (``sleep`` and
``wait``). A store is created with a clock (``clock=``, default
:class:`SystemClock`); the runtime and every :class:`~duroxide_runtime.Client`
of that store use the store's clock, so one process never mixes two time
sources. Tests pass a :class:`duroxide_runtime.testing.ManualClock` and move
time themselves instead of sleeping.

What stays on real time, on purpose: the turn watchdog (it must catch a turn
that is really stuck), a store's own retries while a database is busy or
unreachable (they wait for another process or a server, not for a duration of
the store's logic), and the rate limit of repeated log warnings.

A clock may also move by itself: an :class:`IdleAwareClock` (such as
:class:`duroxide_runtime.testing.VirtualClock`) is told by the runtime which of
its parts are busy (:class:`ClockPart`) and jumps to the next deadline once none
is. The runtime reports through :func:`clock_part` and :func:`add_store_check`,
which cost nothing with any other clock: :class:`SystemClock` ignores all of it.

Example::

    clock = SystemClock()
    store = await SqliteProvider.new("sqlite:///app.db", clock=clock)
    rt = await Runtime.builder().store(store).clock(clock).start()   # .clock() is optional
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias, cast, runtime_checkable

__all__ = ["Clock", "SystemClock", "SYSTEM_CLOCK", "ClockPart", "IdleAwareClock", "StoreCheck"]


@runtime_checkable
class Clock(Protocol):
    """The time source of a runtime, its store and its clients.

    Two readings, because they answer different questions: :meth:`now_ms` is
    wall-clock time (what is stored and compared across processes: timestamps,
    timer due times, lock and lease expiry); :meth:`monotonic` never goes back
    and measures durations and deadlines within one process. Both move
    together in a test clock.

    Waiting goes through the clock too: :meth:`sleep` and :meth:`wait` measure
    their timeout in the clock's time, so a test clock (or a clock that skips
    ahead when nothing else can run) decides when a waiter wakes. An
    implementation must wake every sleeper whose deadline its time has reached,
    and must never wake one before.

    Example (a clock that only changes how the wall clock is read)::

        class UtcOffsetClock(SystemClock):
            def now_ms(self) -> int:
                return super().now_ms() + 1_000

        store = InMemoryProvider(clock=UtcOffsetClock())
    """

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch (stored timestamps, due times, leases)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go back (durations, deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` of this clock's time have passed (at once for ``seconds <= 0``)."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds of this clock's time pass
        (``math.inf``: no timeout); return whether it is set. Does not clear it.

        A cancel of the waiting task always propagates (never swallowed by a
        wake-up that arrives at the same moment)."""
        ...


@dataclass(frozen=True)
class SystemClock:
    """The real clock: ``time.time()``, ``time.monotonic()`` and the event loop's timers.

    Stateless: every ``SystemClock()`` equals every other, so a runtime built
    with ``.clock(SystemClock())`` agrees with a store created without a clock.

    Example::

        clock = SystemClock()
        started = clock.monotonic()
        await clock.sleep(0.1)
        assert clock.monotonic() - started >= 0.1
    """

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when a
            # cancel coincides with the wake-up, and a dispatcher loop then never stops
            # (issue 10, defect 5).
            async with asyncio.timeout(None if math.isinf(timeout) else max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            pass
        return event.is_set()


#: The shared default clock of stores created without ``clock=``.
SYSTEM_CLOCK = SystemClock()


# -- clocks that move by themselves ----------------------------------------------------------


@runtime_checkable
class ClockPart(Protocol):
    """One part of a runtime as a self-moving clock sees it: busy (time stands still) or idle.

    The runtime makes one per dispatcher pipeline, activity worker, running
    activity call and client call in flight (:func:`clock_part`). An
    :class:`IdleAwareClock` moves time only while every part is idle; for any
    other clock every method is a plain wait or does nothing.

    Example (a loop that works, then waits idle for a wake-up or its next deadline)::

        part = clock_part(clock, "my poller")           # busy from now on
        try:
            while True:
                due = await do_some_work()               # seconds to the next deadline
                await part.wait(wake_up, timeout=0.2, due=due)
        finally:
            part.close()
    """

    def busy(self) -> None:
        """The part works now: time stands still until it is idle again."""
        ...

    def idle(self) -> None:
        """The part waits for something the clock cannot see (a queue, another task); time may move."""
        ...

    async def wait(self, event: asyncio.Event | None, timeout: float, *, due: float = math.inf) -> bool:
        """Wait idle until ``event`` is set (``None``: never), ``due`` seconds pass, or ``timeout`` seconds pass.

        ``due`` is a deadline the part acts on: a self-moving clock may move time
        to it. ``timeout`` is a poll bound only: such a clock never moves time
        to it, but wakes the part once time has passed it. Returns whether
        ``event`` is set. Afterwards the part is as busy as it was before; a busy
        part counts as busy from the moment it is woken (its event set or its
        deadline reached), before its task runs again.
        """
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait idle for ``seconds`` of clock time (a deadline: the clock may move time to it)."""
        ...

    def close(self) -> None:
        """The part is done (idempotent): it never holds time still again."""
        ...


#: A check of the store a self-moving clock runs before it moves time: ``True`` when
#: the store holds work no deadline dates (visible work nobody took, activity calls
#: not visible yet); the clock then moves to poll deadlines too, so that it is found.
StoreCheck: TypeAlias = Callable[[], Awaitable[bool]]


@runtime_checkable
class IdleAwareClock(Clock, Protocol):
    """A :class:`Clock` that moves time by itself once every part of the runtime is idle.

    The runtime reports to such a clock (and to no other) through
    :func:`clock_part` and :func:`add_store_check`;
    :class:`duroxide_runtime.testing.VirtualClock` is the implementation.

    Example::

        if isinstance(clock, IdleAwareClock):
            part = clock.part("activity 'Charge'")   # time stands still until part.close()
    """

    def part(self, what: str, *, busy: bool = True) -> ClockPart:
        """A new part named ``what`` (for diagnostics), busy or idle."""
        ...

    def add_store_check(self, check: StoreCheck) -> Callable[[], None]:
        """Run ``check`` before each move of time; returns the function that removes it."""
        ...


class _PlainPart:
    """The part of a clock that does not listen: waits are the clock's own, the rest does nothing."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def busy(self) -> None:
        pass

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait(self, event: asyncio.Event | None, timeout: float, *, due: float = math.inf) -> bool:
        limit = min(timeout, due)
        if event is not None:
            return await self._clock.wait(event, limit)
        if math.isinf(limit):
            return await self._clock.wait(asyncio.Event(), limit)  # no deadline: until cancelled
        await self._clock.sleep(limit)  # a sleep, not an Event: the lock keeper's is on every batch's path
        return False

    async def sleep(self, seconds: float) -> None:
        await self._clock.sleep(seconds)


#: Whether each clock type listens (isinstance on a runtime-checkable Protocol inspects
#: every member: once per type, not once per activity call).
_LISTENS: dict[type, bool] = {}


def _listening(clock: Clock) -> IdleAwareClock | None:
    kind = type(clock)
    listens = _LISTENS.get(kind)
    if listens is None:
        listens = _LISTENS[kind] = isinstance(clock, IdleAwareClock)
    return cast(IdleAwareClock, clock) if listens else None


def is_listening(clock: Clock) -> bool:
    """Whether ``clock`` listens to the runtime's reports (an :class:`IdleAwareClock`): the
    runtime skips per-call reports to a clock that does not."""
    return _listening(clock) is not None


def clock_part(clock: Clock, what: str, *, busy: bool = True) -> ClockPart:
    """The runtime's report of one part to ``clock``: the clock's own part if it listens, else a plain one.

    Example::

        part = clock_part(store.clock, "activity worker")
        await part.wait(wake_up, timeout=poll_interval)
        part.close()
    """
    listening = _listening(clock)
    return listening.part(what, busy=busy) if listening is not None else _PlainPart(clock)


def _nothing_to_remove() -> None:
    pass


def add_store_check(clock: Clock, check: StoreCheck) -> Callable[[], None]:
    """Give ``check`` to ``clock`` if it listens (see :data:`StoreCheck`); returns its remover."""
    listening = _listening(clock)
    return listening.add_store_check(check) if listening is not None else _nothing_to_remove
