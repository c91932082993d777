"""Virtual time (issue 14): a ``VirtualClock`` jumps to the next deadline as soon as nothing else can run.

A 30-day approval flow with a daily reminder runs in virtual time and records,
event for event, the history a ``ManualClock`` advanced by hand records; timers
of several instances fire in deadline order; a running activity (on the event
loop, sleeping in real time, or in a thread) holds time still; a client's start
lands before time moves; and an orchestration that only waits for an external
event stops time instead of letting it run away. Every store, both replay modes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    ConfigurationError, Event, HistoryEvent, InMemoryProvider, OrchestrationContext, OrchestrationStatus, Provider,
    Runtime, VirtualClock,
)
from duroxide_runtime.clock import Clock, ClockPart, IdleAwareClock, SystemClock, clock_part
from duroxide_runtime.testing import ManualClock

from .support import PROVIDERS, Harness, drop_store, make_store

# Real seconds: the slowest case (PostgreSQL, a ManualClock run driven turn by turn, under CPU load).
pytestmark = pytest.mark.timeout(120)

DAY = 86_400.0
#: The test approves on the afternoon of the 30th day: 29 reminders first.
APPROVE_AT = 29.5 * DAY


@pytest.fixture(params=PROVIDERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["cached", "from_scratch"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _Stores:
    """Stores made by a test, each on its own clock, dropped after it."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.made: list[Provider] = []

    async def new(self, clock: Clock) -> Provider:
        path = self.tmp_path / f"s{len(self.made)}"
        path.mkdir()
        store = await make_store(self.kind, path, clock=clock)
        self.made.append(store)
        return store


@pytest.fixture
async def stores(kind: str, tmp_path: Path) -> AsyncIterator[_Stores]:
    made = _Stores(kind, tmp_path)
    try:
        yield made
    finally:
        for store in made.made:
            await drop_store(store)


@pytest.fixture
async def harnesses() -> AsyncIterator[list[Harness]]:
    """Harnesses a test starts; their runtimes are stopped after it (before its stores are dropped)."""
    started: list[Harness] = []
    try:
        yield started
    finally:
        for h in started:
            await h.stop()
        for h in started:  # then their clocks: the clock's own task must not outlive the test's loop
            if isinstance(h.store.clock, VirtualClock):
                await h.store.clock.aclose()


def _harness(store: Provider, mode: str, started: list[Harness]) -> Harness:
    h = Harness(store, mode)
    started.append(h)
    return h


def _comparable(history: list[HistoryEvent]) -> list[tuple[str, dict[str, Any]]]:
    """Every field of every event (timestamps and due times included) but the random trace ids."""
    out = []
    for e in history:
        fields = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}
        for key in ("trace_context", "parent_trace_context"):
            if fields.get(key) is not None:
                fields[key] = "<trace>"
        out.append((type(e).__name__, fields))
    return out


# -- the approval flow ---------------------------------------------------------------------------


async def _approval(ctx: OrchestrationContext, _input: str) -> str:
    """Wait up to 30 days for "approve", reminding the approver once a day."""
    for day in range(1, 31):
        index, winner = await ctx.select2(ctx.schedule_wait("approve"), ctx.schedule_timer(timedelta(days=1)))
        if index == 0:
            return f"approved on day {day} by {winner.result()}"
        await ctx.schedule_activity("Remind", str(day))
    return "expired"


async def _remind(day: str) -> str:
    return f"reminder {day} sent"


FLOW = {"Approval": _approval}
ACTIVITIES = {"Remind": _remind}


async def _history_with(h: Harness, iid: str, timers: int) -> list[HistoryEvent]:
    """``iid``'s history once it holds ``timers`` TimerCreated events (a ManualClock does not move by itself)."""
    deadline = time.monotonic() + 60
    while True:
        history = await h.client.read_history(iid)
        if sum(isinstance(e, Event.TimerCreated) for e in history) >= timers:
            return history
        assert time.monotonic() < deadline, f"{iid}: {timers} timers never created: {history}"
        await asyncio.sleep(0.005)


async def _approval_by_hand(h: Harness, clock: ManualClock) -> list[HistoryEvent]:
    """The flow in real time's order: each day the test moves a ManualClock to the next timer."""
    await h.client.start_orchestration("approval-1", "Approval")
    for day in range(1, 30):
        history = await _history_with(h, "approval-1", day)  # day's timer created: everything before is done
        timer = [e for e in history if isinstance(e, Event.TimerCreated)][-1]
        clock.advance((timer.fire_at_ms - clock.now_ms()) / 1000)
    await _history_with(h, "approval-1", 30)
    clock.advance(APPROVE_AT - clock.monotonic())
    assert await h.client.raise_event("approval-1", "approve", "alice")
    status = await h.client.wait_for_orchestration("approval-1", math.inf)
    assert status == OrchestrationStatus.Completed(output="approved on day 30 by alice")
    return await h.client.read_history("approval-1")


async def test_a_30_day_approval_flow_runs_in_virtual_time_with_the_history_of_real_time(
        stores: _Stores, mode: str, harnesses: list[Harness]) -> None:
    clock = VirtualClock()
    h = _harness(await stores.new(clock), mode, harnesses)
    await h.start(FLOW, ACTIVITIES)
    await h.client.start_orchestration("approval-1", "Approval")
    await clock.sleep(APPROVE_AT)  # the test's own deadline: time moves to it in turn with the timers
    assert await h.client.raise_event("approval-1", "approve", "alice")
    status = await h.client.wait_for_orchestration("approval-1", timedelta(days=31))
    assert status == OrchestrationStatus.Completed(output="approved on day 30 by alice")
    virtual = await h.client.read_history("approval-1")

    reminders = [e for e in virtual if isinstance(e, Event.ActivityCompleted)]
    assert [e.result for e in reminders] == [f"reminder {d} sent" for d in range(1, 30)]
    fired = [e for e in virtual if isinstance(e, Event.TimerFired)]
    start = virtual[0].timestamp_ms
    assert [e.fire_at_ms - start for e in fired] == [round(d * DAY * 1000) for d in range(1, 30)]
    await clock.until_idle()
    assert clock.monotonic() == APPROVE_AT  # time stopped where the last deadline put it

    manual = ManualClock()
    by_hand = _harness(await stores.new(manual), mode, harnesses)
    await by_hand.start(FLOW, ACTIVITIES)
    assert _comparable(await _approval_by_hand(by_hand, manual)) == _comparable(virtual)


async def test_timers_of_several_instances_fire_in_deadline_order_across_two_runtimes(
        stores: _Stores, mode: str, harnesses: list[Harness]) -> None:
    clock = VirtualClock()
    store = await stores.new(clock)
    fired: list[tuple[str, float]] = []

    async def record(name: str) -> str:
        fired.append((name, clock.monotonic()))
        return name

    async def nap(ctx: OrchestrationContext, hours: str) -> str:
        await ctx.schedule_timer(timedelta(hours=float(hours)))
        return await ctx.schedule_activity("Record", ctx.instance_id)

    first, second = (_harness(store, mode, harnesses) for _ in range(2))
    for h in (first, second):  # two runtimes of one store share its clock
        await h.start({"Nap": nap}, {"Record": record})
    for iid, hours in (("three", "3"), ("one", "1"), ("two", "2"), ("half", "0.5")):
        await first.client.start_orchestration(iid, "Nap", hours)
    for iid in ("three", "one", "two", "half"):
        status = await second.client.wait_for_orchestration(iid, timedelta(days=1))
        assert status == OrchestrationStatus.Completed(output=iid)
    assert fired == [("half", 1800.0), ("one", 3600.0), ("two", 7200.0), ("three", 10800.0)]


async def test_a_client_start_lands_before_time_moves(stores: _Stores, mode: str,
                                                       harnesses: list[Harness]) -> None:
    clock = VirtualClock()
    h = _harness(await stores.new(clock), mode, harnesses)

    async def nap(ctx: OrchestrationContext, _input: str) -> str:
        await ctx.schedule_timer(3600)
        return "rested"

    await h.start({"Nap": nap})
    # Each start is written while the previous instance is already idle on its timer: time
    # must not move in between, or the later instances' timers would be due later.
    for i in range(5):
        await h.client.start_orchestration(f"nap-{i}", "Nap")
    for i in range(5):
        status = await h.client.wait_for_orchestration(f"nap-{i}", timedelta(hours=2))
        assert status == OrchestrationStatus.Completed(output="rested")
        created = [e for e in await h.client.read_history(f"nap-{i}") if isinstance(e, Event.TimerCreated)]
        assert [e.fire_at_ms for e in created] == [VirtualClock.START_MS + 3_600_000]


# -- what holds time still, and what does not -----------------------------------------------------


async def test_a_running_activity_holds_time_still_on_the_loop_in_real_sleep_and_in_a_thread(
        stores: _Stores, mode: str, harnesses: list[Harness]) -> None:
    clock = VirtualClock()
    h = _harness(await stores.new(clock), mode, harnesses)
    release = threading.Event()

    def held(name: str) -> str:
        return f"{name} at {clock.monotonic()} holding={any(name in what for what in clock.holding)}"

    async def on_loop(_input: str) -> str:
        await asyncio.sleep(0)
        return held("'OnLoop'")

    async def real_sleep(_input: str) -> str:
        await asyncio.sleep(0.2)  # real time: virtual time does not pass meanwhile
        return held("'RealSleep'")

    def in_thread(_input: str) -> str:
        assert release.wait(30)
        return f"thread at {clock.monotonic()}"

    async def race(ctx: OrchestrationContext, name: str) -> str:
        # The activity wins only if the one-second timer cannot fire while it runs.
        index, winner = await ctx.select2(ctx.schedule_activity(name), ctx.schedule_timer(1))
        return str(winner.result()) if index == 0 else "the timer fired first"

    await h.start({"Race": race}, {"OnLoop": on_loop, "RealSleep": real_sleep, "InThread": in_thread})
    for name in ("OnLoop", "RealSleep", "InThread"):
        await h.client.start_orchestration(f"race-{name}", "Race", name)
    for name in ("OnLoop", "RealSleep"):
        status = await h.client.wait_for_orchestration(f"race-{name}", timedelta(minutes=1))
        assert status == OrchestrationStatus.Completed(output=f"'{name}' at 0.0 holding=True")
    assert any("activity 'InThread'" in what for what in clock.holding)
    assert clock.monotonic() == 0.0 and clock.jumps == 0
    release.set()
    status = await h.client.wait_for_orchestration("race-InThread", timedelta(minutes=1))
    assert status == OrchestrationStatus.Completed(output="thread at 0.0")
    await clock.until_idle()
    assert clock.holding == ()


async def test_an_orchestration_waiting_only_for_an_event_stops_time_instead_of_running_it_away(
        stores: _Stores, mode: str, harnesses: list[Harness]) -> None:
    clock = VirtualClock()
    h = _harness(await stores.new(clock), mode, harnesses)

    async def wait_for_approval(ctx: OrchestrationContext, _input: str) -> str:
        return f"approved by {await ctx.schedule_wait('approve')}"

    await h.start({"Wait": wait_for_approval})
    await h.client.start_orchestration("w-1", "Wait")
    await clock.until_idle()  # nothing can run and no deadline is left
    assert (clock.monotonic(), clock.jumps) == (0.0, 0)
    assert await h.client.read_history("w-1")  # it ran its first turn: it waits for the event
    await clock.until_idle()
    assert (clock.monotonic(), clock.jumps) == (0.0, 0)

    # A client's timeout is a deadline like any other: it passes in virtual time.
    status = await h.client.wait_for_orchestration("w-1", timedelta(hours=1))
    assert isinstance(status, OrchestrationStatus.Running)
    assert clock.monotonic() == 3600.0

    assert await h.client.raise_event("w-1", "approve", "bob")
    status = await h.client.wait_for_orchestration("w-1", timedelta(hours=1))
    assert status == OrchestrationStatus.Completed(output="approved by bob")
    assert clock.monotonic() == 3600.0


# -- the clock itself ------------------------------------------------------------------------------


async def test_the_runtime_reports_only_to_a_clock_that_listens() -> None:
    virtual = VirtualClock()
    assert isinstance(virtual, IdleAwareClock)
    assert not isinstance(SystemClock(), IdleAwareClock) and not isinstance(ManualClock(), IdleAwareClock)
    part = clock_part(virtual, "a busy part")
    assert isinstance(part, ClockPart) and virtual.holding == ("a busy part",)
    part.idle()
    assert not virtual.holding
    part.busy()
    sleeper = asyncio.create_task(virtual.sleep(5))
    assert not await _finished_soon(sleeper)  # the busy part holds time at 0
    assert virtual.monotonic() == 0.0
    part.close()
    await sleeper  # nothing else can run: time moves to the sleeper's deadline
    assert virtual.monotonic() == 5.0
    # For any other clock a part is a plain wait of that clock, bounded by the poll and the deadline alike.
    manual = ManualClock()
    plain = clock_part(manual, "ignored")
    waiting = asyncio.create_task(plain.wait(asyncio.Event(), 0.2, due=60))
    await manual.settle()
    manual.advance(0.2)
    assert await waiting is False and manual.monotonic() == 0.2


async def _finished_soon(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` ends within a few hundred event-loop turns (no real time passes for a clock)."""
    for _ in range(500):
        if task.done():
            return True
        await asyncio.sleep(0)
    return task.done()


async def test_a_part_waiting_on_a_poll_never_moves_time_but_its_due_time_does() -> None:
    clock = VirtualClock()
    part = clock.part("poller")
    wake = asyncio.Event()
    polling = asyncio.create_task(part.wait(wake, 0.2))  # a poll bound only: no deadline
    idle = asyncio.create_task(clock.until_idle())
    await idle
    assert clock.monotonic() == 0.0 and not polling.done()
    polling.cancel()
    due = asyncio.create_task(part.wait(wake, 0.2, due=60))
    assert await due is False and clock.monotonic() == 60.0
    wake.set()
    assert await part.wait(wake, 0.2, due=60) is True and clock.monotonic() == 60.0
    part.close()


def test_settle_rounds_must_be_a_positive_whole_number() -> None:
    with pytest.raises(ConfigurationError):
        VirtualClock(settle_rounds=0)


# -- the pytest fixture ------------------------------------------------------------------------------


async def test_the_virtual_clock_fixture_drives_the_plugin_store(virtual_clock: VirtualClock,
                                                                  duroxide_store: InMemoryProvider) -> None:
    assert duroxide_store.clock is virtual_clock

    async def week(ctx: OrchestrationContext, _input: str) -> str:
        await ctx.schedule_timer(timedelta(days=7))
        return "a week later"

    from duroxide_runtime import OrchestrationRegistry

    rt = await (Runtime.builder().store(duroxide_store).clock(virtual_clock)
                .orchestrations(OrchestrationRegistry.builder().register("Week", week).build()).start())
    try:
        client = rt.client()
        await client.start_orchestration("w", "Week")
        status = await client.wait_for_orchestration("w", timedelta(days=8))
        assert status == OrchestrationStatus.Completed(output="a week later")
        assert virtual_clock.monotonic() == 7 * DAY
    finally:
        await rt.shutdown()


async def test_the_virtual_clock_fixture_on_every_store(virtual_clock: VirtualClock, stores: _Stores, mode: str,
                                                        harnesses: list[Harness]) -> None:
    h = _harness(await stores.new(virtual_clock), mode, harnesses)

    async def fortnight(ctx: OrchestrationContext, _input: str) -> str:
        for _ in range(14):
            await ctx.schedule_timer(timedelta(days=1))
        return "two weeks later"

    await h.start({"Fortnight": fortnight})
    await h.client.start_orchestration("f", "Fortnight")
    status = await h.client.wait_for_orchestration("f", timedelta(days=15))
    assert status == OrchestrationStatus.Completed(output="two weeks later")
    assert virtual_clock.monotonic() == 14 * DAY
