"""One clock: the runtime, its store and its clients share an injected ``Clock``.

The stores stamp locks, leases, due times and timestamps with it and the
runtime waits with it, so a test that drives a ``ManualClock`` sees an
expired lock taken over exactly when the clock passes it, never a
millisecond before, and a durable timer fire exactly when the clock
reaches it, without sleeping.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duroxide_runtime import (
    Client, Clock, ConfigurationError, InMemoryProvider, OrchestrationContext, OrchestrationRegistry,
    OrchestrationStatus, Provider, Runtime, RuntimeOptions, SystemClock,
)
from duroxide_runtime.history import Event
from duroxide_runtime.messages import ActivityWork, StartOrchestration
from duroxide_runtime.providers.base import InstanceUpdate, TurnCommit
from duroxide_runtime.testing import ClockStalledError, ManualClock

from .support import PROVIDERS, drop_store, make_store

pytestmark = pytest.mark.timeout(60)

LOCK = 5.0
LEASE = 30.0
FAST = RuntimeOptions(unknown_name_backoff=0.01, unknown_name_max_backoff=0.05, poll_interval=0.05)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Provider]:
    """A fresh store of each kind on the test's ManualClock."""
    s = await make_store(request.param, tmp_path, clock=clock)
    try:
        yield s
    finally:
        await drop_store(s)


def _start(iid: str) -> StartOrchestration:
    return StartOrchestration(instance_id=iid, name="Orch", version="1.0.0", input="")


# -- the test clock ---------------------------------------------------------------------------


async def test_manual_clock_wakes_a_sleeper_when_its_deadline_is_reached_not_before(clock: ManualClock) -> None:
    wall = clock.now_ms()
    sleeper = asyncio.create_task(clock.sleep(10))
    await clock.settle()
    assert clock.sleepers == 1
    clock.advance(9.999)
    await clock.settle()
    assert not sleeper.done()
    clock.advance(0.001)
    await asyncio.wait_for(sleeper, 5)
    assert clock.monotonic() == 10.0 and clock.now_ms() == wall + 10_000
    assert clock.sleepers == 0


async def test_manual_clock_wait_returns_on_the_event_or_at_the_timeout(clock: ManualClock) -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, 3))
    await clock.settle()
    event.set()
    assert await asyncio.wait_for(waiter, 5) is True

    quiet = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(quiet, 3))
    await clock.settle()
    clock.advance(3)
    assert await asyncio.wait_for(waiter, 5) is False

    forever = asyncio.create_task(clock.wait(quiet, math.inf))
    await clock.settle()
    clock.advance(1e9)
    await clock.settle()
    assert not forever.done()  # no timeout: only the event ends it
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert await clock.wait(quiet, 0) is False  # a zero timeout never blocks


async def test_manual_clock_wait_is_woken_by_a_set_that_is_cleared_at_once(clock: ManualClock) -> None:
    """A waiter of a shared wake-up event is woken even if another waiter clears it first."""
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, 10))
    await asyncio.sleep(0)  # one loop turn: the waiter is inside wait(), nothing more
    event.set()
    event.clear()  # what another waiter of the event does when it wakes first
    assert await asyncio.wait_for(waiter, 20) is False  # woken by the set; the clock never reached 10 s


async def test_manual_clock_cancel_propagates_and_frees_the_sleeper(clock: ManualClock) -> None:
    sleeper = asyncio.create_task(clock.sleep(5))
    await clock.settle()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.sleepers == 0


async def test_manual_clock_time_only_moves_forward(clock: ManualClock) -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ConfigurationError):
            clock.advance(bad)


async def test_a_forgotten_advance_fails_instead_of_hanging() -> None:
    clock = ManualClock(stall_timeout=0.05)
    with pytest.raises(ClockStalledError) as err:
        await clock.sleep(1)
    assert err.value.fix is not None and "advance" in err.value.fix


async def test_clocks_satisfy_the_protocol_and_system_clocks_are_equal() -> None:
    assert isinstance(ManualClock(), Clock) and isinstance(SystemClock(), Clock)
    assert SystemClock() == SystemClock()
    assert InMemoryProvider().clock == SystemClock()
    event = asyncio.Event()
    assert await SystemClock().wait(event, 0.001) is False
    event.set()
    assert await SystemClock().wait(event, math.inf) is True


# -- lease expiry through the injected clock, on every store ----------------------------------


async def test_an_expired_instance_lock_is_taken_over_exactly_when_the_clock_passes_it(
        store: Provider, clock: ManualClock) -> None:
    await store.create_instance(_start("i1"))
    first = (await store.fetch_orchestration_items(10, LOCK)).items
    assert [i.instance_id for i in first] == ["i1"]
    clock.advance(LOCK - 0.001)
    assert (await store.fetch_orchestration_items(10, LOCK)).items == []  # a millisecond early
    clock.advance(0.001)
    second = (await store.fetch_orchestration_items(10, LOCK)).items
    assert [(i.instance_id, i.dequeue_count) for i in second] == [("i1", 2)]
    assert second[0].lock_token != first[0].lock_token
    # The first holder's commit is refused; renewing its lock fails.
    assert await store.renew_orchestration_items([("i1", first[0].lock_token)], LOCK) == [False]


async def test_a_renewed_instance_lock_expires_at_the_renewal_time_plus_the_timeout(
        store: Provider, clock: ManualClock) -> None:
    await store.create_instance(_start("i1"))
    item = (await store.fetch_orchestration_items(10, LOCK)).items[0]
    clock.advance(2)
    assert await store.renew_orchestration_items([("i1", item.lock_token)], LOCK) == [True]
    clock.advance(LOCK - 0.001)  # 6.999 s: past the first expiry, a millisecond before the renewed one
    assert (await store.fetch_orchestration_items(10, LOCK)).items == []
    clock.advance(0.001)
    assert [i.instance_id for i in (await store.fetch_orchestration_items(10, LOCK)).items] == ["i1"]


async def test_an_expired_activity_lease_is_taken_over_exactly_when_the_clock_passes_it(
        store: Provider, clock: ManualClock) -> None:
    await store.create_instance(_start("i1"))
    item = (await store.fetch_orchestration_items(10, LOCK)).items[0]
    work = ActivityWork(instance_id="i1", execution_id=1, event_id=2, name="Act", input="x")
    now = clock.now_ms()
    assert await store.commit_turns([TurnCommit(
        instance_id="i1", lock_token=item.lock_token, execution_id=1, consumed=[m.id for m in item.messages],
        new_events=[Event.OrchestrationStarted(event_id=1, timestamp_ms=now, name="Orch", version="1.0.0", input=""),
                    Event.ActivityScheduled(event_id=2, timestamp_ms=now, name="Act", input="x")],
        activities=[work], update=InstanceUpdate(name="Orch", version="1.0.0", execution_id=1, status="Running"),
    )]) == [True]
    first = await store.fetch_work_items(10, LEASE)
    assert [lease.dequeue_count for lease in first] == [1]
    clock.advance(LEASE - 0.001)
    assert await store.fetch_work_items(10, LEASE) == []  # a millisecond early
    clock.advance(0.001)
    second = await store.fetch_work_items(10, LEASE)
    assert [(lease.work, lease.dequeue_count) for lease in second] == [(work, 2)]
    assert await store.renew_work_item(first[0].lock_token, LEASE) is False
    assert await store.renew_work_item(second[0].lock_token, LEASE) is True


async def test_store_timestamps_come_from_the_store_clock(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(_start("i1"))
    record = await store.get_instance("i1")
    assert record is not None and record.created_at_ms == clock.now_ms() == ManualClock().now_ms()


# -- the runtime and the client use the store's clock -------------------------------------------


async def test_the_runtime_refuses_a_clock_other_than_its_stores() -> None:
    store = InMemoryProvider(clock=ManualClock())
    with pytest.raises(ConfigurationError) as err:
        await Runtime.builder().store(store).clock(ManualClock()).start()
    assert err.value.fix is not None and "clock=" in err.value.fix
    with pytest.raises(ConfigurationError):
        Runtime.builder().clock("not a clock")  # type: ignore[arg-type]


async def test_runtime_and_client_share_the_stores_clock(clock: ManualClock) -> None:
    store = InMemoryProvider(clock=clock)
    rt = await Runtime.builder().store(store).clock(clock).options(FAST).start()
    try:
        assert rt.clock is clock and rt.client().clock is clock and Client(store).clock is clock
    finally:
        await rt.shutdown(grace=1)
    # A SystemClock on the builder agrees with a store made without a clock.
    rt = await Runtime.builder().store(InMemoryProvider()).clock(SystemClock()).start()
    await rt.shutdown(grace=1)


async def _nap(ctx: OrchestrationContext, _input: str) -> str:
    await ctx.schedule_timer(60)
    return "rested"


async def test_a_durable_timer_fires_when_the_clock_reaches_it_and_client_waits_use_the_clock(
        tmp_path: Path, clock: ManualClock) -> None:
    store = await make_store("sqlite", tmp_path, clock=clock)
    rt = await (Runtime.builder().store(store).clock(clock)
                .orchestrations(OrchestrationRegistry.builder().register("Nap", _nap).build())
                .options(FAST).start())
    client = Client(store)
    try:
        await client.start_orchestration("nap-1", "Nap")
        history_has_timer = False
        for _ in range(500):  # the first turn runs without any clock time passing
            history_has_timer = any(isinstance(e, Event.TimerCreated) for e in await client.read_history("nap-1"))
            if history_has_timer:
                break
            await asyncio.sleep(0.01)
        assert history_has_timer
        # The client's timeout is measured in the store's clock too: 59.999 s pass, the timer is not due.
        waiting = asyncio.create_task(client.wait_for_orchestration("nap-1", 59.999))
        await clock.settle()
        clock.advance(59.999)
        status = await asyncio.wait_for(waiting, 10)
        assert isinstance(status, OrchestrationStatus.Running)
        clock.advance(0.001)
        waiting = asyncio.create_task(client.wait_for_orchestration("nap-1", math.inf))
        done = await asyncio.wait_for(waiting, 10)
        assert isinstance(done, OrchestrationStatus.Completed) and done.output == "rested"
        fired = [e for e in await client.read_history("nap-1") if isinstance(e, Event.TimerFired)]
        assert [e.timestamp_ms for e in fired] == [clock.now_ms()]
    finally:
        await rt.shutdown(grace=1)
        await drop_store(store)
