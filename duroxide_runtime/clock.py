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

Example::

    clock = SystemClock()
    store = await SqliteProvider.new("sqlite:///app.db", clock=clock)
    rt = await Runtime.builder().store(store).clock(clock).start()   # .clock() is optional
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "SYSTEM_CLOCK"]


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
