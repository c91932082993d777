"""Eager dispatch (``RuntimeOptions.eager_dispatch``): work a process commits goes straight to its
own idle worker and dispatcher, sparing a store fetch on each hop, and never jumps older work.

The stores that take the offers (:class:`LeaseOffer`, :class:`LockOffer`) are checked to take
them; the others (Redis) to decline, so their work goes through the queues as before. The
provider-level contract (each call and instance handed out at most once, handed-out work
lapses like fetched work) is in tests/test_provider_conformance.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import OrchestrationContext, OrchestrationStatus
from duroxide_runtime.dispatch.orchestrations import OrchestrationDispatcher
from duroxide_runtime.messages import ActivityResult, ActivityWork, StartOrchestration
from duroxide_runtime.options import RuntimeOptions
from duroxide_runtime.providers.base import LeaseOffer, LockOffer, Provider, TurnCommit, WorkCompletion
from duroxide_runtime.providers.memory import InMemoryProvider
from duroxide_runtime.providers.postgres import PostgresProvider
from duroxide_runtime.providers.sqlite import SqliteProvider
from duroxide_runtime.registry import OrchestrationRegistry
from duroxide_runtime.testing import ManualClock

from .support import PROVIDERS, Harness, drop_store, make_store

#: Stores that lease calls with their commit and lock instances with their results.
TAKE_OFFERS: tuple[type[Provider], ...] = (InMemoryProvider, SqliteProvider, PostgresProvider)


class FetchCounter:
    """Counts the store fetches that returned work, by kind."""

    def __init__(self, store: Any) -> None:
        self.counts: Counter[str] = Counter()
        fetch_orch, fetch_work = store.fetch_orchestration_items, store.fetch_work_items

        #: Fetches made, found work or not.
        self.calls = 0

        async def orch(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            result = await fetch_orch(*args, **kwargs)
            self.counts["orchestration"] += len(result.items)
            return result

        async def work(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            leases = await fetch_work(*args, **kwargs)
            self.counts["work"] += len(leases)
            return leases

        store.fetch_orchestration_items = orch
        store.fetch_work_items = work


@pytest.fixture
def idle(clocked: Harness) -> Harness:
    """A harness on a ManualClock nobody moves (conftest's ``clocked``): no poll ever fires, so the
    runtime is idle between the test's steps, whatever the machine's load."""
    return clocked


async def one_call(ctx: OrchestrationContext, inp: str) -> str:
    return await ctx.schedule_activity("Echo", inp)


async def echo(inp: str) -> str:
    return f"echo:{inp}"


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "queued"])
async def test_an_idle_runtime_runs_a_call_and_its_result_without_fetching_them(idle: Harness, eager: bool) -> None:
    counter = FetchCounter(idle.store)
    await idle.start({"OneCall": one_call}, {"Echo": echo}, eager_dispatch=eager)
    # The first run meets the worker's and the pipelines' first fetches; after it they wait idle.
    assert await idle.run("warm-up", "OneCall", "w") == OrchestrationStatus.Completed(output="echo:w")
    counter.counts.clear()
    counter.calls = 0
    assert await idle.run("a", "OneCall", "x") == OrchestrationStatus.Completed(output="echo:x")
    if eager and isinstance(idle.store, PostgresProvider):
        # The call went to the worker with the turn's commit. The start is fetched (PostgreSQL
        # shares one statement among concurrent starts, and declines to lock them). The instance
        # comes back locked with the call's result only if a pipeline waits idle then, and
        # PostgreSQL's NOTIFY of the process's own writes wakes pipelines at moments the test
        # cannot fix.
        assert counter.counts["work"] == 0 and counter.counts["orchestration"] in (1, 2)
    elif eager and isinstance(idle.store, TAKE_OFFERS):
        # Nothing is fetched, not even for nothing: the client's start locked the new instance
        # for the dispatcher, the call went to the worker with the turn's commit, the instance
        # came back locked with the call's result, and after each commit the store said that
        # nothing was left due (TurnCommit.more_due), so no pipeline looked again.
        assert counter.counts == Counter() and counter.calls == 0
    else:
        assert counter.counts == Counter(orchestration=2, work=1)


async def test_a_busy_worker_is_not_handed_calls(idle: Harness) -> None:
    """With every slot taken, a new call waits in the queue, behind any older one."""
    release = asyncio.Event()
    ran: list[str] = []

    async def hold(inp: str) -> str:
        ran.append(inp)
        if inp == "first":
            await release.wait()
        return inp

    counter = FetchCounter(idle.store)
    await idle.start({"OneCall": one_call}, {"Echo": hold}, activity_concurrency=1)
    await idle.client.start_orchestration("first", "OneCall", "first")
    for _ in range(1000):
        if ran:
            break
        await asyncio.sleep(0.005)
    assert ran == ["first"]
    await idle.client.start_orchestration("second", "OneCall", "second")
    for _ in range(1000):  # its turn committed: the call is queued
        if (await idle.client.get_orchestration_status("second")) == OrchestrationStatus.Running():
            break
        await asyncio.sleep(0.005)
    before = counter.counts["work"]
    release.set()
    assert await idle.client.wait_for_orchestration("second", 10) == OrchestrationStatus.Completed(output="second")
    assert ran == ["first", "second"]
    assert counter.counts["work"] == before + 1, "the waiting call was fetched from the queue"


@pytest.mark.parametrize("kind", [k for k in PROVIDERS if k != "redis"])
async def test_instances_handed_to_a_stopped_dispatcher_are_unlocked_at_once(tmp_path: Path, kind: str) -> None:
    """A result recorded during shutdown may lock its instance after the last pipeline ended:
    the lock is given back, so another process takes the instance now, not after its timeout."""
    store = await make_store(kind, tmp_path, clock=ManualClock())
    try:
        await store.create_instance(StartOrchestration(instance_id="i", name="OneCall", version="1.0.0", input=""))
        item = (await store.fetch_orchestration_items(1, 30.0)).items[0]
        call = ActivityWork(instance_id="i", execution_id=1, event_id=2, name="Echo", input="")
        assert await store.commit_turns([TurnCommit("i", item.lock_token, 1, [m.id for m in item.messages],
                                                    activities=[call])]) == [True]
        lease = (await store.fetch_work_items(1, 30.0))[0]
        items = await store.complete_work_items(
            [WorkCompletion(lease.lock_token, ActivityResult(instance_id="i", execution_id=1, event_id=2,
                                                             result="r"))],
            lock=LockOffer(1, 30.0, frozenset({"OneCall"})))
        assert [i.instance_id for i in items] == ["i"]
        registry = OrchestrationRegistry.builder().register("OneCall", one_call).build()
        dispatcher = OrchestrationDispatcher(store, registry, RuntimeOptions())  # no pipeline runs
        await dispatcher.take_locked(items)
        again = (await store.fetch_orchestration_items(1, 30.0)).items  # the clock has not moved
        assert [i.instance_id for i in again] == ["i"]
        assert len(again[0].messages) == 1
    finally:
        await drop_store(store)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_which_stores_take_the_offers(tmp_path: Path, kind: str) -> None:
    """The stores named in TAKE_OFFERS lease with the commit and lock with the results, and the
    in-memory and SQLite stores lock a new instance with its start; Redis declines every offer
    (its work goes through the queues)."""
    store = await make_store(kind, tmp_path, clock=ManualClock())
    try:
        takes = isinstance(store, TAKE_OFFERS)
        started = await store.create_instance(StartOrchestration(instance_id="i", name="OneCall", version="1.0.0",
                                                                 input=""),
                                              lock=LockOffer(1, 30.0, frozenset({"OneCall"})))
        locks_starts = isinstance(store, (InMemoryProvider, SqliteProvider))
        assert (started is not None) == locks_starts
        item = started or (await store.fetch_orchestration_items(1, 30.0)).items[0]
        assert [type(m.message).__name__ for m in item.messages] == ["StartOrchestration"]
        assert item.instance is not None and item.instance.status == "Pending" and item.history_len == 0
        assert (await store.fetch_orchestration_items(1, 30.0)).items == [], "locked once"
        call = ActivityWork(instance_id="i", execution_id=1, event_id=2, name="Echo", input="")
        commit = TurnCommit("i", item.lock_token, 1, [m.id for m in item.messages], activities=[call])
        assert await store.commit_turns([commit], lease=LeaseOffer(1, 30.0, frozenset({"Echo"}))) == [True]
        assert [lease.work for lease in commit.leased] == ([call] if takes else [])
        leases = commit.leased or await store.fetch_work_items(1, 30.0)
        items = await store.complete_work_items(
            [WorkCompletion(leases[0].lock_token, ActivityResult(instance_id="i", execution_id=1, event_id=2,
                                                                 result="r"))],
            lock=LockOffer(1, 30.0, frozenset({"OneCall"})))
        assert [i.instance_id for i in items] == (["i"] if takes else [])
    finally:
        await drop_store(store)
