"""Queues through the runtime: concurrency, per-key concurrency, rate limits and priorities.

Every test runs on every store and in both replay modes. Activities hold until the
test lets them go (events, never sleeps), so what runs at once is decided by the
store's leases alone: a limit that did not hold would show in the first fetch,
which leases as many calls as the worker has room for. Rate limits run on the
store's ``ManualClock``. The limits across processes (SIGKILL included) are tested
in tests/test_queues_processes.py; the store contract in tests/test_provider_conformance.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import timedelta

import pytest

from duroxide_runtime import (
    ConfigurationError, Event, InvalidInputError, OrchestrationContext, OrchestrationStatus, PayloadError,
    QueueOptions, RateLimit, RuntimeOptions, UnknownQueueError,
)
from duroxide_runtime.testing import ManualClock

from .support import Harness

pytestmark = pytest.mark.timeout(120)

#: Real-time bound on waits for the runtime (a safety net; the tests never need it).
BOUND = 30.0


class Gate:
    """Activities that wait for the test: records who runs at once, and lets them go one by one."""

    def __init__(self) -> None:
        self.running: dict[str, str | None] = {}  # input -> concurrency key
        self.started: list[str] = []
        self.most = 0
        self.most_per_key: dict[str | None, int] = {}
        self._go: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()

    async def act(self, x: str) -> str:
        key = x.split("/")[0]
        self.running[x] = key
        self.started.append(x)
        self.most = max(self.most, len(self.running))
        same = sum(1 for k in self.running.values() if k == key)
        self.most_per_key[key] = max(self.most_per_key.get(key, 0), same)
        self._changed.set()
        try:
            await self._go.setdefault(x, asyncio.Event()).wait()
        finally:
            del self.running[x]
            self._changed.set()
        return x

    async def until(self, what: str, check: Callable[[], bool]) -> None:
        """Wait (bounded) until ``check()`` holds; ``what`` names it in the failure."""
        async def look() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(look(), BOUND)
        except TimeoutError:
            raise AssertionError(f"never happened: {what} (running: {sorted(self.running)})") from None

    def release(self, x: str) -> None:
        self._go.setdefault(x, asyncio.Event()).set()


def fan_out(queue: str | None, calls: int):  # type: ignore[no-untyped-def]
    async def orch(ctx: OrchestrationContext, key: str) -> str:
        futures = [ctx.schedule_activity("Act", f"{key}/{n}", queue=queue) for n in range(calls)]
        return ",".join([str(r) for r in await asyncio.gather(*futures)])
    return orch


async def test_queue_concurrency_holds_while_work_waits(harness: Harness) -> None:
    gate = Gate()
    await harness.start({"Fan": fan_out("q", 8)}, {"Act": gate.act}, activity_concurrency=16,
                        queues={"q": QueueOptions(concurrency=3)})
    await harness.client.start_orchestration("f-1", "Fan", "k")
    await gate.until("three run", lambda: len(gate.running) == 3)
    while len(gate.started) < 8:
        current = next(iter(gate.running))
        gate.release(current)
        await gate.until("the next one runs", lambda c=current: c not in gate.running and len(gate.running) == 3
                         or len(gate.started) == 8)
    for x in list(gate.running):
        gate.release(x)
    status = await harness.client.wait_for_orchestration("f-1", timedelta(seconds=BOUND))
    assert isinstance(status, OrchestrationStatus.Completed)
    assert status.output == ",".join(f"k/{n}" for n in range(8))
    assert gate.most == 3


async def test_per_key_concurrency_runs_one_call_per_customer(harness: Harness) -> None:
    gate = Gate()
    await harness.start({"Fan": fan_out("q", 3)}, {"Act": gate.act}, activity_concurrency=16,
                        queues={"q": QueueOptions(per_key_concurrency=1)})
    for iid, key in (("a-1", "ann"), ("a-2", "ann"), ("b-1", "bob")):
        await harness.client.start_orchestration(iid, "Fan", key, concurrency_key=key)
    # Each customer's calls run one at a time; the two customers run side by side.
    await gate.until("one call of each", lambda: sorted(gate.running.values()) == ["ann", "bob"])
    while len(gate.started) < 9:
        current = list(gate.running)
        for x in current:
            gate.release(x)
        await gate.until("the released calls end and the next ones start",
                         lambda c=current: all(x not in gate.running for x in c)  # type: ignore[misc]
                         and (len(gate.started) == 9 or bool(gate.running)))
    for x in list(gate.running):
        gate.release(x)
    for iid in ("a-1", "a-2", "b-1"):
        status = await harness.client.wait_for_orchestration(iid, timedelta(seconds=BOUND))
        assert isinstance(status, OrchestrationStatus.Completed), status
    assert gate.most_per_key == {"ann": 1, "bob": 1}
    started = await harness.store.read_history("a-1")
    assert isinstance(started[0], Event.OrchestrationStarted) and started[0].concurrency_key == "ann"


async def test_priority_orders_waiting_calls(harness: Harness) -> None:
    gate = Gate()

    async def one(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_activity("Act", x, queue="q")

    await harness.start({"One": one}, {"Act": gate.act}, queues={"q": QueueOptions(concurrency=1, priority=1)})
    await harness.client.start_orchestration("hold", "One", "hold/0")
    await gate.until("the slot is taken", lambda: "hold/0" in gate.running)
    # Queued behind the held slot: explicit priorities, and the queue's own (1) for "mid".
    await harness.client.start_orchestration("low", "One", "low/0", priority=-5)
    await harness.client.start_orchestration("mid", "One", "mid/0")
    await harness.client.start_orchestration("high", "One", "high/0", priority=9)
    for iid in ("low", "mid", "high"):
        await _wait_for_scheduled(harness, iid)
    gate.release("hold/0")
    for x in ("high/0", "mid/0", "low/0"):
        await gate.until(f"{x} runs", lambda x=x: x in gate.running)
        gate.release(x)
    assert gate.started == ["hold/0", "high/0", "mid/0", "low/0"]


async def _wait_for_scheduled(harness: Harness, iid: str) -> None:
    async def look() -> None:
        while not any(isinstance(e, Event.ActivityScheduled) for e in await harness.store.read_history(iid)):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(look(), BOUND)


async def _until_started(clock: ManualClock, started_at: Collection[object], n: int) -> None:
    """Until ``n`` calls have started. A worker that was busy when the test moved the clock
    waits from the new time, so time is nudged on (by 0.1 s, far less than a window) while
    nothing happens: the test never depends on how fast the machine is."""
    for _ in range(300):
        for _ in range(100):
            if len(started_at) >= n:
                return
            await asyncio.sleep(0.01)
        clock.advance(0.1)
    raise AssertionError(f"expected {n} calls to have started, got {len(started_at)}")


async def test_rate_limit_spreads_calls_over_windows(clocked: Harness) -> None:
    clock = clocked.store.clock
    assert isinstance(clock, ManualClock)
    started_at: list[int] = []

    async def act(x: str) -> str:
        started_at.append(clock.now_ms())
        return x

    # Locks outlast the test's 10 s steps, so that a step never lands inside a turn.
    await clocked.start({"Fan": fan_out("api", 5)}, {"Act": act}, orchestration_lock_timeout=60.0,
                        queues={"api": QueueOptions(rate_limit=RateLimit(2, per=timedelta(seconds=10)))})
    t0 = clock.now_ms()
    await clocked.client.start_orchestration("r-1", "Fan", "k")
    for expected in (2, 4, 5):
        await _until_started(clock, started_at, expected)
        assert len(started_at) == expected  # nothing more within this window
        clock.advance(10)
    status = await clocked.client.wait_for_orchestration("r-1", timedelta(seconds=BOUND))
    assert isinstance(status, OrchestrationStatus.Completed)
    assert [(t - t0) // 10_000 for t in started_at] == [0, 0, 1, 1, 2]


async def test_children_and_the_next_execution_inherit_key_and_priority(harness: Harness) -> None:
    async def child(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_activity("Where", x)

    async def parent(ctx: OrchestrationContext, x: str) -> str:
        if x == "again":
            return await ctx.schedule_sub_orchestration("Child", "c", instance_id="p-1-child")
        ctx.continue_as_new("again")
        return ""

    async def where(x: str) -> str:
        return x

    await harness.start({"Parent": parent, "Child": child}, {"Where": where})
    await harness.client.start_orchestration("p-1", "Parent", "first", concurrency_key="acme", priority=4)
    status = await harness.client.wait_for_orchestration("p-1", timedelta(seconds=BOUND))
    assert isinstance(status, OrchestrationStatus.Completed)
    for iid in ("p-1", "p-1-child"):
        first = (await harness.store.read_history(iid))[0]
        assert isinstance(first, Event.OrchestrationStarted)
        assert (first.concurrency_key, first.priority) == ("acme", 4), iid


async def test_an_unconfigured_queue_fails_at_the_call(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.schedule_activity("Act", "x", queue="paymnets")
        except UnknownQueueError as err:
            return f"{err.code}: {err.queue}"
        return "scheduled"

    await harness.start({"Orch": orch}, {"Act": lambda x: x}, queues={"payments": QueueOptions(concurrency=1)})
    status = await harness.run("u-1", "Orch")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "UNKNOWN_QUEUE: paymnets"
    history = await harness.store.read_history("u-1")
    assert not any(isinstance(e, Event.ActivityScheduled) for e in history)


@pytest.mark.parametrize("options, message", [
    (lambda: QueueOptions(concurrency=0), "concurrency"),
    (lambda: QueueOptions(concurrency=-3), "concurrency"),
    (lambda: QueueOptions(per_key_concurrency=1.5), "per_key_concurrency"),  # type: ignore[arg-type]
    (lambda: QueueOptions(rate_limit=RateLimit(0, per=1)), "RateLimit.n"),
    (lambda: QueueOptions(rate_limit=RateLimit(3, per=timedelta(0))), "RateLimit.per"),
    (lambda: QueueOptions(rate_limit=(5, 1)), "rate_limit"),  # type: ignore[arg-type]
    (lambda: QueueOptions(priority=2**40), "priority"),
    (lambda: RuntimeOptions(queues={"": QueueOptions()}), "queues key"),
    (lambda: RuntimeOptions(queues={"q": 10}), "QueueOptions"),  # type: ignore[dict-item]
])
def test_bad_queue_settings_are_refused_at_declaration(options, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ConfigurationError, InvalidInputError)) as info:
        options()
    assert message in str(info.value) and info.value.fix


async def test_bad_start_placement_is_refused_before_anything_is_stored(harness: Harness) -> None:
    for kwargs, error in (({"concurrency_key": ""}, InvalidInputError), ({"concurrency_key": 7}, PayloadError),
                          ({"priority": "high"}, ConfigurationError), ({"priority": 2**31}, ConfigurationError)):
        with pytest.raises(error):
            await harness.client.start_orchestration("bad-1", "Orch", "", **kwargs)  # type: ignore[arg-type]
    assert await harness.store.get_instance("bad-1") is None


async def test_the_queue_is_recorded_with_the_call(harness: Harness) -> None:
    async def act(x: str) -> str:
        return x

    async def orch(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_activity("Act", x, queue="emails")

    await harness.start({"Orch": orch}, {"Act": act}, queues={"emails": QueueOptions(concurrency=2)})
    status = await harness.run("e-1", "Orch", "hi")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "hi"
    scheduled = [e for e in await harness.store.read_history("e-1") if isinstance(e, Event.ActivityScheduled)]
    assert [e.queue for e in scheduled] == ["emails"]


# -- orchestration queues: instances wait for a slot before they start -------------------------------


def held_orch(gate: Gate):  # type: ignore[no-untyped-def]
    async def orch(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_activity("Act", x)  # the default queue: only the instance's slot counts
    return orch


async def _history_started(harness: Harness, iid: str) -> bool:
    return bool(await harness.store.read_history(iid))


async def test_an_orchestration_queue_limits_the_instances_running_at_once(harness: Harness) -> None:
    gate = Gate()
    await harness.start({"Job": held_orch(gate)}, {"Act": gate.act}, queues={"jobs": QueueOptions(concurrency=2)})
    ids = [f"j-{n}" for n in range(5)]
    for iid in ids:
        await harness.client.start_orchestration(iid, "Job", f"{iid}/0", queue="jobs")
    await gate.until("two instances run", lambda: len(gate.running) == 2)
    waiting = [iid for iid in ids if not await _history_started(harness, iid)]
    assert len(waiting) == 3
    assert (await harness.store.queue_depths()).waiting_instances == 3
    assert {(await harness.client.get_instance_info(iid)).status for iid in waiting} == {"Pending"}
    while len(gate.started) < 5:
        current = list(gate.running)
        for x in current:
            gate.release(x)
        await gate.until("the next instances start", lambda c=current: all(x not in gate.running for x in c)
                         and (len(gate.started) == 5 or bool(gate.running)))
    for x in list(gate.running):
        gate.release(x)
    for iid in ids:
        status = await harness.client.wait_for_orchestration(iid, timedelta(seconds=BOUND))
        assert isinstance(status, OrchestrationStatus.Completed) and status.output == f"{iid}/0"
    assert gate.most == 2
    assert (await harness.store.queue_depths()).waiting_instances == 0


async def test_waiting_instances_start_by_priority_and_per_key(harness: Harness) -> None:
    gate = Gate()
    await harness.start({"Job": held_orch(gate)}, {"Act": gate.act},
                        queues={"jobs": QueueOptions(concurrency=2, per_key_concurrency=1)})
    await harness.client.start_orchestration("hold", "Job", "acme/hold", queue="jobs", concurrency_key="acme")
    await harness.client.start_orchestration("other", "Job", "x/hold", queue="jobs")
    await gate.until("both slots are taken", lambda: len(gate.running) == 2)
    await harness.client.start_orchestration("acme-2", "Job", "acme/2", queue="jobs", concurrency_key="acme",
                                             priority=9)
    await harness.client.start_orchestration("low", "Job", "low/0", queue="jobs", priority=-1)
    await harness.client.start_orchestration("globex", "Job", "globex/0", queue="jobs", concurrency_key="globex")
    # A free slot: acme's instance must wait for its key, whatever its priority; globex goes.
    gate.release("x/hold")
    await gate.until("globex runs", lambda: "globex/0" in gate.running)
    assert sorted(gate.running) == ["acme/hold", "globex/0"]
    gate.release("acme/hold")  # acme's key is free: its priority 9 beats low's -1
    await gate.until("acme's second runs", lambda: "acme/2" in gate.running)
    assert not await _history_started(harness, "low")
    gate.release("globex/0")
    await gate.until("low runs", lambda: "low/0" in gate.running)
    for x in ("acme/2", "low/0"):
        gate.release(x)
    assert gate.started[2:] == ["globex/0", "acme/2", "low/0"]


async def test_an_event_sent_to_a_waiting_instance_reaches_it_once_it_starts(harness: Harness) -> None:
    async def waits(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("go")

    await harness.start({"Waits": waits}, queues={"jobs": QueueOptions(concurrency=1)})
    await harness.client.start_orchestration("first", "Waits", queue="jobs")
    await harness.client.start_orchestration("second", "Waits", queue="jobs")
    await harness.client.raise_event("second", "go", "early")  # while it waits for a slot
    assert not await _history_started(harness, "second")
    await harness.client.raise_event("first", "go", "now")
    for iid, data in (("first", "now"), ("second", "early")):
        status = await harness.client.wait_for_orchestration(iid, timedelta(seconds=BOUND))
        assert isinstance(status, OrchestrationStatus.Completed) and status.output == data


async def test_a_queue_the_runtime_does_not_configure_is_refused_at_start(harness: Harness) -> None:
    await harness.start({"Job": held_orch(Gate())}, queues={"jobs": QueueOptions(concurrency=1)})
    with pytest.raises(UnknownQueueError, match="'jbos'"):
        await harness.client.start_orchestration("typo-1", "Job", "", queue="jbos")
    assert await harness.store.get_instance("typo-1") is None
    with pytest.raises(InvalidInputError):
        await harness.client.start_orchestration("typo-2", "Job", "", queue="")
    assert await harness.store.get_instance("typo-2") is None


async def test_instance_admissions_keep_to_the_rate_limit(clocked: Harness) -> None:
    clock = clocked.store.clock
    assert isinstance(clock, ManualClock)
    started_at: dict[str, int] = {}  # by instance: a turn redone after a lost lock is the same start

    async def job(ctx: OrchestrationContext, _: str) -> str:
        if not ctx.is_replaying:
            started_at.setdefault(ctx.instance_id, clock.now_ms())
        return "ok"

    # Locks outlast the test's 10 s steps, so that a step never lands inside a turn.
    await clocked.start({"Job": job}, queues={"jobs": QueueOptions(rate_limit=RateLimit(2, per=timedelta(seconds=10)))},
                        orchestration_lock_timeout=60.0)
    t0 = clock.now_ms()
    for n in range(5):
        await clocked.client.start_orchestration(f"r-{n}", "Job", queue="jobs")
    for expected in (2, 4, 5):
        await _until_started(clock, started_at, expected)
        assert len(started_at) == expected
        clock.advance(10)
    assert sorted((t - t0) // 10_000 for t in started_at.values()) == [0, 0, 1, 1, 2]


async def test_a_cancelled_waiting_instance_ends_once_admitted_without_running_its_work(harness: Harness) -> None:
    gate = Gate()
    await harness.start({"Job": held_orch(gate)}, {"Act": gate.act}, queues={"jobs": QueueOptions(concurrency=1)})
    await harness.client.start_orchestration("busy", "Job", "busy/0", queue="jobs")
    await gate.until("the slot is taken", lambda: "busy/0" in gate.running)
    await harness.client.start_orchestration("doomed", "Job", "doomed/0", queue="jobs")
    assert await harness.client.cancel_instance("doomed", "not needed any more")
    gate.release("busy/0")
    status = await harness.client.wait_for_orchestration("doomed", timedelta(seconds=BOUND))
    assert isinstance(status, OrchestrationStatus.Failed) and "not needed any more" in status.details.message
    assert "doomed/0" not in gate.started  # its activity call was cancelled before any worker took it
