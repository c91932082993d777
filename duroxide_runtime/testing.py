"""Test clocks: one that moves only when the test says so, one that moves by itself.

:class:`ManualClock` and :class:`VirtualClock` implement
:class:`duroxide_runtime.clock.Clock`. Give one to a store (``clock=``); the
runtime and clients of that store use it too. Lock and lease expiry, delayed
visibility, durable timers and the runtime's back-offs then happen in the
clock's time, never by sleeping in real time: a :class:`ManualClock` moves when
the test advances it, a :class:`VirtualClock` jumps to the next deadline as
soon as nothing else can run.

Example::

    clock = ManualClock()
    store = InMemoryProvider(clock=clock)
    item = (await store.fetch_orchestration_items(1, lock_timeout=5.0)).items[0]
    clock.advance(4.999)
    assert not (await store.fetch_orchestration_items(1, 5.0)).items   # still locked
    clock.advance(0.001)
    assert (await store.fetch_orchestration_items(1, 5.0)).items       # expired: taken over
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math

from .errors import ConfigurationError, ErrorCode
from .virtual_time import VirtualClock

__all__ = ["ManualClock", "VirtualClock", "ClockStalledError"]

_NS = 1_000_000_000


class ClockStalledError(ConfigurationError):
    """A task waited on a :class:`ManualClock` for longer than its ``stall_timeout`` of real time.

    Nothing advanced the clock: the test forgot to call ``advance`` (or waits
    for something that only a later ``advance`` can cause).
    """

    code = ErrorCode.CLOCK_STALLED

    def __init__(self, waited: float, deadline: float, now: float) -> None:
        super().__init__(
            f"a task waited {waited:g} real seconds on a ManualClock for clock time {deadline:g} s "
            f"(the clock is at {now:g} s) and nothing advanced the clock",
            fix="advance the clock in the test (clock.advance(seconds)) past the deadline the code waits for; "
                "a ManualClock never moves by itself")


class ManualClock:
    """A clock whose time moves only when :meth:`advance` is called.

    ``now_ms()`` starts at ``start_ms`` (default: a fixed moment, 2024-01-01
    UTC, so runs are reproducible) and ``monotonic()`` at 0; both move by
    exactly what :meth:`advance` adds. A task in :meth:`sleep` or :meth:`wait`
    wakes once the clock reaches its deadline, never a moment before.

    Tests must advance it: a sleeper wakes only through :meth:`advance`. As a
    safety net, a sleeper that waits ``stall_timeout`` seconds of *real* time
    raises :class:`ClockStalledError`, so a forgotten ``advance`` fails the
    test instead of hanging it (``None`` turns the net off). Use it from the
    event loop's thread; reading the time (``now_ms``, ``monotonic``) is safe
    from any thread.

    Example::

        clock = ManualClock()
        sleeper = asyncio.create_task(clock.sleep(10))
        await clock.settle()          # let the sleeper start waiting
        clock.advance(9.999)
        await clock.settle()
        assert not sleeper.done()
        clock.advance(0.001)
        await sleeper                 # woken: its deadline has been reached
    """

    def __init__(self, start_ms: int = 1_704_067_200_000, *, stall_timeout: float | None = 60.0) -> None:
        self._start_ms = start_ms
        self._ns = 0
        self._stall_timeout = stall_timeout
        self._seq = itertools.count()
        self._sleepers: list[tuple[int | float, int, asyncio.Future[None]]] = []

    # -- reading ------------------------------------------------------------------

    def now_ms(self) -> int:
        return self._start_ms + self._ns // 1_000_000

    def monotonic(self) -> float:
        return self._ns / _NS

    @property
    def sleepers(self) -> int:
        """How many tasks wait for a deadline of this clock (to advance once a task sleeps)."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    # -- moving -------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0) and wake every sleeper whose deadline is reached.

        The woken tasks run at the event loop's next turns: ``await clock.settle()``
        (or any await) lets them.
        """
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ConfigurationError(f"ManualClock.advance({seconds!r}): time only moves forward",
                                     fix="pass a finite number of seconds >= 0")
        self._ns += round(seconds * _NS)
        while self._sleepers and self._sleepers[0][0] <= self._ns:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def settle(self, rounds: int = 20) -> None:
        """Let ready tasks run for ``rounds`` turns of the event loop (no clock time passes)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    # -- waiting ------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = self._sleeper(seconds)
        try:
            await self._guarded(fut, seconds)
        finally:
            fut.cancel()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        if timeout <= 0:
            await asyncio.sleep(0)
            return event.is_set()
        deadline = self._sleeper(timeout)
        loop = asyncio.get_running_loop()
        began, until = loop.time(), self.monotonic() + timeout
        # The event is awaited in this task, as SystemClock.wait does: its waiter is registered
        # before this returns control, so a set() that another waiter clear()s at once still
        # wakes this one. (A helper task registered a loop turn later and could miss it: two
        # dispatchers sharing a wake-up event then hung a shutdown until the stall net.)
        # The clock's deadline, and the stall net, expire an asyncio.timeout, which keeps a
        # cancel of this task propagating even when it coincides with the wake-up.
        active = True
        try:
            async with asyncio.timeout(None if self._stall_timeout is None else began + self._stall_timeout) as cm:
                def expire(_: asyncio.Future[None]) -> None:
                    if active and not deadline.cancelled() and not cm.expired():
                        cm.reschedule(loop.time())

                deadline.add_done_callback(expire)
                await event.wait()
        except TimeoutError:
            if not deadline.done():
                raise ClockStalledError(loop.time() - began, until, self.monotonic()) from None
        finally:
            active = False
            deadline.cancel()
        return event.is_set()

    def _sleeper(self, seconds: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline: int | float = math.inf if math.isinf(seconds) else self._ns + round(seconds * _NS)
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        return fut

    async def _guarded(self, waiter: asyncio.Future[None], seconds: float) -> None:
        if self._stall_timeout is None:
            await waiter
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = self.monotonic() + seconds
        try:
            async with asyncio.timeout(self._stall_timeout):
                await asyncio.shield(waiter)
        except TimeoutError:
            raise ClockStalledError(loop.time() - began, deadline, self.monotonic()) from None
