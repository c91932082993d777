"""The runtime's scheduler: starts the due ticks of the store's cron schedules.

Each runtime (``RuntimeOptions.run_schedules``, on by default) runs one
:class:`Scheduler` task. A pass reads every schedule, and for each one due
(not paused, next tick not after now) asks :func:`~duroxide_runtime.schedules.plan_ticks`
which ticks its catch-up policy starts, then hands them to the store's
``fire_schedule``, which starts them and moves the next tick in one
transaction only if no other pass (in any process) did first: each tick starts
exactly one instance. Between passes the task sleeps until the earliest next
tick, at most ``RuntimeOptions.schedule_poll_interval`` (schedules made or
changed by other processes are seen that late at most; this process's clients
wake it at once). A failing pass is logged and retried with back-off; it never
stops the runtime.

The pass also tells the store which schedules' orchestrations this runtime
registers (``Provider.confirm_schedules``), so that the CLI and the UI can
flag a schedule no runtime can run.

Example::

    scheduler = Scheduler(store, registry, RuntimeOptions())
    task = asyncio.create_task(scheduler.run(stopping))    # Runtime.start() does this
    schedules_changed(store)                               # Client.create_schedule() does this
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from typing import TYPE_CHECKING

from .cancelling import raise_if_cancel_requested
from .clock import clock_part
from .errors import DuroxideError
from .lograte import background_warnings
from .messages import StartOrchestration
from .options import RuntimeOptions
from .providers.base import Provider, ScheduleFire, ScheduleRecord
from .schedules import REGISTERED_FRESH_MS, check_catch_up, check_cron, plan_ticks, tick_instance_id
from .wake import wake_hub

if TYPE_CHECKING:
    from .registry import OrchestrationRegistry

__all__ = ["Scheduler", "schedules_changed"]

_log = logging.getLogger("duroxide.scheduler")
#: After a pass lost a schedule to another process's, the schedule is read again this much later (ms).
_LOST_RETRY_MS = 100

#: The schedulers running in this process, per store object (woken by this process's clients).
_running: weakref.WeakKeyDictionary[Provider, weakref.WeakSet[Scheduler]] = weakref.WeakKeyDictionary()


def schedules_changed(store: Provider) -> None:
    """Wake this process's schedulers of ``store``: a schedule was made, resumed or changed."""
    for scheduler in list(_running.get(store, ())):
        scheduler.wake.set()


class Scheduler:
    """Starts the due ticks of ``store``'s schedules until stopped (see the module docstring)."""

    def __init__(self, store: Provider, registry: OrchestrationRegistry, options: RuntimeOptions) -> None:
        self.store = store
        self.registry = registry
        self.options = options
        self.clock = store.clock
        #: Set to run a pass now (a local change, or shutdown).
        self.wake = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        """Run passes until ``stopping`` is set."""
        _running.setdefault(self.store, weakref.WeakSet()).add(self)
        part = clock_part(self.clock, "scheduler")
        stop_watch = asyncio.ensure_future(self._wake_on(stopping))
        failures = 0
        try:
            while not stopping.is_set():
                self.wake.clear()
                try:
                    due_in = await self.run_pass()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - store trouble must never kill the runtime
                    failures += 1
                    background_warnings.warning(_log, "scheduler.pass", "scheduler: pass failed (retrying)",
                                                exc_info=True)
                    due_in = min(30.0, 0.05 * 2 ** min(failures, 10))
                # `due` is the next tick (a self-moving clock may move time to it); the
                # timeout only bounds how late another process's new schedule is seen.
                raise_if_cancel_requested()  # one the pass's store calls may have dropped
                await part.wait(self.wake, self.options.schedule_poll_interval, due=due_in)
        finally:
            stop_watch.cancel()
            part.close()
            scheduler_set = _running.get(self.store)
            if scheduler_set is not None:
                scheduler_set.discard(self)

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self.wake.set()

    async def run_pass(self) -> float:
        """One pass over every schedule; returns the seconds until the earliest next tick (``inf``: none)."""
        rows = await self.store.list_schedules()
        now = self.clock.now_ms()
        known = set(self.registry.names())
        stale = [r.schedule_id for r in rows if r.orchestration in known
                 and (r.registered_at_ms is None or now - r.registered_at_ms >= REGISTERED_FRESH_MS)]
        if stale:
            await self.store.confirm_schedules(stale)
        earliest, started = math.inf, False
        for row in rows:
            if row.paused:
                continue
            next_tick = row.next_tick_ms
            if next_tick <= now:
                fired = await self._fire(row, now)
                if fired is None:
                    continue
                next_tick, started = fired[0], started or fired[1]
            earliest = min(earliest, next_tick)
        if started:
            wake_hub(self.store).notify_orchestrator()
        return max(0.0, (earliest - self.clock.now_ms()) / 1000)

    async def _fire(self, row: ScheduleRecord, now: int) -> tuple[int, bool] | None:
        """Start ``row``'s due ticks; its next tick and whether this pass started any (``None``: unusable row)."""
        try:
            spec, catch_up = check_cron(row.cron), check_catch_up(row.catch_up)
            ticks, next_tick = plan_ticks(spec, catch_up, row.next_tick_ms, now)
        except DuroxideError as err:  # written by another version, or by hand: skip it, run the others
            background_warnings.warning(_log, f"scheduler.row.{row.schedule_id}",
                                        "schedule %r cannot be run: %s", row.schedule_id, err)
            return None
        starts = [StartOrchestration(instance_id=tick_instance_id(row.schedule_id, tick), name=row.orchestration,
                                     version=row.version, input=row.input) for tick in ticks]
        fired = await self.store.fire_schedule(ScheduleFire(
            row.schedule_id, row.next_tick_ms, starts, ticks[-1] if ticks else None, next_tick))
        if fired:  # what the pass found and did (the cross-process test reads this line)
            _log.info("schedule %r fired at %d ms, ticks due from %d ms (%s): started %d: %s", row.schedule_id, now,
                      row.next_tick_ms, catch_up.value, len(starts),
                      " ".join(s.instance_id for s in starts) or "none (missed ticks skipped)")
        # Lost to another process's pass (it moved the tick, or holds the row now): re-read shortly.
        return (next_tick if fired else now + _LOST_RETRY_MS, fired and bool(starts))
