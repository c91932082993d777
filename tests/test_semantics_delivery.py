"""SEMANTICS 11-18 and 24-26, end to end on real stores: delivery, locks, failures,
timers, purge, limits; plus graceful shutdown, thread activities, retries and the client.

Most tests run on every provider in both replay modes (the ``harness`` fixture);
tests where the replay mode cannot matter (activity workers, client calls) run
once per provider (``env1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    ActivityFailed,
    ActivityRegistry,
    ActivityTimeoutError,
    Client,
    DurableTaskFailed,
    Event,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStillRunningError,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    PayloadError,
    PayloadTooLargeError,
    RetryPolicy,
    Runtime,
    SqliteProvider,
    SubOrchestrationFailed,
)
from duroxide_runtime.messages import ActivityResult
from duroxide_runtime.providers.base import InstanceUpdate, TurnCommit, WorkCompletion, now_ms

from duroxide_runtime.testing import ManualClock

from .support import Harness, PROVIDERS, drop_store, eventually, make_store

# -- helpers ------------------------------------------------------------------------


def registries(orchs: Mapping[str, Any], acts: Mapping[str, Any] | None = None
               ) -> tuple[OrchestrationRegistry, ActivityRegistry]:
    ob = OrchestrationRegistry.builder()
    for name, fn in orchs.items():
        ob.register(name, fn)
    ab = ActivityRegistry.builder()
    for name, afn in (acts or {}).items():
        ab.register(name, afn)
    return ob.build(), ab.build()


class Env:
    """A harness plus extra runtimes / reopened stores, all cleaned up after the test."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.runtimes: list[Runtime] = []
        self.stores: list[Any] = []

    async def runtime(self, orchs: Mapping[str, Any], acts: Mapping[str, Any] | None = None,
                      **overrides: Any) -> Runtime:
        """Another runtime on the harness's store (as a second process would be)."""
        o, a = registries(orchs, acts)
        rt = await (Runtime.builder().store(self.h.store).orchestrations(o).activities(a)
                    .options(self.h.options(**overrides)).start())
        self.runtimes.append(rt)
        return rt

    async def reopen(self) -> None:
        """For SQLite: close the store and open the file again (a process restart)."""
        store = self.h.store
        if isinstance(store, SqliteProvider):
            path = store.path
            await store.close()
            new = await SqliteProvider.new(f"sqlite://{path}")
            self.stores.append(new)
            self.h.store = new
            self.h.client = Client(new)

    async def close(self) -> None:
        for rt in self.runtimes:
            await rt.shutdown(grace=1)
        await self.h.stop()
        for s in self.stores:
            await s.close()


@pytest.fixture
async def env(harness: Harness) -> AsyncIterator[Env]:
    """Every provider x every replay mode."""
    e = Env(harness)
    try:
        yield e
    finally:
        await e.close()


@pytest.fixture(params=PROVIDERS)
async def env1(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """Every provider, cached replay only (for behaviour the replay mode cannot affect)."""
    store = await make_store(request.param, tmp_path)
    e = Env(Harness(store, "cached"))
    try:
        yield e
    finally:
        try:
            await e.close()
        finally:  # a PostgreSQL schema is dropped even when the test or the shutdown fails
            await drop_store(store)


@contextlib.asynccontextmanager
async def _on_a_manual_clock(provider: str, tmp_path: Path, replay_mode: str) -> AsyncIterator[tuple[Env, ManualClock]]:
    clock = ManualClock()
    store = await make_store(provider, tmp_path, clock=clock)
    e = Env(Harness(store, replay_mode))
    try:
        yield e, clock
    finally:
        try:
            await e.close()
        finally:
            await drop_store(store)


@pytest.fixture(params=PROVIDERS)
async def clocked1(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Env, ManualClock]]:
    """Every provider, cached replay only, on a ManualClock."""
    async with _on_a_manual_clock(request.param, tmp_path, "cached") as env:
        yield env


@pytest.fixture(params=PROVIDERS)
async def clocked(request: pytest.FixtureRequest, tmp_path: Path,
                  replay_mode: str) -> AsyncIterator[tuple[Env, ManualClock]]:
    """Every provider x every replay mode, on a ManualClock: the test moves time, nothing sleeps."""
    async with _on_a_manual_clock(request.param, tmp_path, replay_mode) as env:
        yield env


async def history(h: Harness, iid: str, execution_id: int | None = None) -> list[Any]:
    return await h.client.read_history(iid, execution_id)


async def count_events(h: Harness, iid: str, kind: type) -> int:
    return sum(isinstance(e, kind) for e in await history(h, iid))


async def wait(h: Harness, iid: str, timeout: float = 15.0) -> OrchestrationStatus[str]:
    return await h.client.wait_for_orchestration(iid, timedelta(seconds=timeout))


async def drive(clock: ManualClock, seconds: float, step: float = 0.01,
                until: Callable[[], Awaitable[object]] | None = None,
                quiet: Callable[[], bool] | None = None) -> None:
    """Move ``clock`` forward by up to ``seconds`` in ``step``s, letting the runtime act between
    steps (a short real pause: its store calls take real time); stop early once ``until()``.
    With ``quiet``, each step waits until ``quiet()`` (say, no lease renewal in flight): what the
    runtime does then takes no clock time, however slow the machine."""
    for _ in range(round(seconds / step)):
        if until is not None and await until():
            return
        if quiet is not None:
            await eventually(quiet, timeout=60, what="the runtime's store calls to finish")
        clock.advance(step)
        await asyncio.sleep(0.005)
    if until is not None:
        assert await until(), f"not done after {seconds} s of clock time"


class HoldTracker:
    """Records when the store hands an instance to a dispatcher and when it is given back.

    The hold starts when the fetch has returned (after the store locked it) and ends
    when its commit/abandon is called (before the store unlocks it), so an overlap
    seen here is a real breach of instance-level exclusivity.
    """

    def __init__(self, store: Any) -> None:
        self.held: dict[str, str] = {}
        self.violations: list[str] = []
        self.fetched: Counter[str] = Counter()
        fetch, commit, abandon = store.fetch_orchestration_items, store.commit_turns, store.abandon_orchestration_item
        complete = store.complete_work_items

        async def tracked_fetch(max_items: int, lock_timeout: float, **kwargs: Any) -> Any:
            result = await fetch(max_items, lock_timeout, **kwargs)
            await hold(result.items)
            return result

        async def tracked_complete(completions: Any, **kwargs: Any) -> Any:
            # Results may lock their instances for this process's dispatcher (eager dispatch).
            items = await complete(completions, **kwargs)
            await hold(items)
            return items

        async def hold(items: Any) -> None:
            for item in items:
                if item.instance_id in self.held:
                    self.violations.append(item.instance_id)
                self.held[item.instance_id] = item.lock_token
                self.fetched[item.instance_id] += 1
            if items:
                await asyncio.sleep(0)  # yield while holding, as a networked store would: invites overlap

        async def tracked_commit(commits: Any, **kwargs: Any) -> Any:
            for c in commits:
                if self.held.get(c.instance_id) == c.lock_token:
                    del self.held[c.instance_id]
            return await commit(commits, **kwargs)

        async def tracked_abandon(instance_id: str, lock_token: str, delay: float) -> None:
            if self.held.get(instance_id) == lock_token:
                del self.held[instance_id]
            await abandon(instance_id, lock_token, delay)

        store.fetch_orchestration_items = tracked_fetch
        store.commit_turns = tracked_commit
        store.abandon_orchestration_item = tracked_abandon
        store.complete_work_items = tracked_complete


# -- 11: instance-level exclusivity ----------------------------------------------------


async def test_two_runtimes_never_work_one_instance_at_once(env: Env) -> None:
    h = env.h
    tracker = HoldTracker(h.store)
    markers: list[tuple[str, int, str]] = []

    def counter(tag: str) -> Any:
        async def orch(ctx: OrchestrationContext, n: str) -> str:
            got = []
            for i in range(int(n)):
                got.append(await ctx.schedule_wait("e"))
                if not ctx.is_replaying:
                    markers.append((ctx.instance_id, i, tag))
            return ",".join(got)
        return orch

    for tag in "AB":
        await env.runtime({"Counter": counter(tag)}, orchestration_batch_size=2, orchestration_concurrency=2)
    ids = [f"ex-{k}" for k in range(6)]
    rounds = 8
    for iid in ids:
        await h.client.start_orchestration(iid, "Counter", str(rounds))
    for r in range(rounds):
        assert all(await asyncio.gather(*(h.client.raise_event(iid, "e", str(r)) for iid in ids)))
        await asyncio.sleep(0.005)
    expected = ",".join(str(r) for r in range(rounds))
    for iid in ids:
        assert await wait(h, iid) == OrchestrationStatus.Completed(output=expected)
        events = await history(h, iid)
        assert [e.event_id for e in events] == list(range(1, len(events) + 1))
        assert sum(isinstance(e, Event.EventRaised) for e in events) == rounds
    assert tracker.violations == []
    # every step of every instance ran live exactly once, on one runtime or the other
    steps = Counter((iid, i) for iid, i, _ in markers)
    assert steps == Counter({(iid, i): 1 for iid in ids for i in range(rounds)})
    assert {tag for *_, tag in markers} == {"A", "B"}  # both runtimes really took part


async def test_message_arriving_during_a_turn_waits_for_the_next_turn(env: Env) -> None:
    h = env.h
    store = h.store
    fetch, commit = store.fetch_orchestration_items, store.commit_turns
    consumed_per_commit: list[int] = []
    raised: list[bool] = []

    async def fetch_then_raise(max_items: int, lock_timeout: float, **kwargs: Any) -> Any:
        result = await fetch(max_items, lock_timeout, **kwargs)
        if any(i.instance_id == "late" for i in result.items) and not raised:
            raised.append(await h.client.raise_event("late", "e", "arrived-mid-turn"))
        return result

    async def recording_commit(commits: Any, **kwargs: Any) -> Any:
        consumed_per_commit.extend(len(c.consumed) for c in commits if c.instance_id == "late")
        return await commit(commits, **kwargs)

    store.fetch_orchestration_items = fetch_then_raise  # type: ignore[method-assign]
    store.commit_turns = recording_commit  # type: ignore[method-assign]

    async def waiter(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("e")

    await h.start({"Waiter": waiter})
    status = await h.run("late", "Waiter", "", timeout=10)
    assert raised == [True]
    assert status == OrchestrationStatus.Completed(output="arrived-mid-turn")
    # first turn consumed only the start; the event was left for (and handled by) a second turn
    assert consumed_per_commit[0] == 1
    assert len(consumed_per_commit) >= 2


# -- 12/13: lock expiry, lease renewal, a stale token never acks -----------------------


async def test_orchestration_lock_of_a_crashed_dispatcher_expires_and_stale_token_cannot_commit(
        clocked: tuple[Env, ManualClock]) -> None:
    env, clock = clocked
    h = env.h

    async def echo(ctx: OrchestrationContext, inp: str) -> str:
        return f"echo:{inp}"

    await h.client.start_orchestration("locked", "Echo", "hi")
    crashed = await h.store.fetch_orchestration_items(10, 1.0)  # a dispatcher that dies holding the lock
    assert [i.instance_id for i in crashed.items] == ["locked"]
    stale = crashed.items[0]
    await h.start({"Echo": echo})
    await asyncio.sleep(0.1)  # the dispatchers look, and find the instance locked (no clock time passes)
    clock.advance(0.999)
    await asyncio.sleep(0.1)
    assert isinstance(await h.client.get_orchestration_status("locked"), OrchestrationStatus.Pending)
    # The dead dispatcher's lock expires now; an idle dispatcher notices at its next poll.
    clock.advance(0.001 + h.options().poll_interval)
    assert await wait(h, "locked") == OrchestrationStatus.Completed(output="echo:hi")
    before = await history(h, "locked")
    # the crashed dispatcher wakes up and tries to commit with its old token: refused
    late = TurnCommit("locked", stale.lock_token, 1, consumed=[m.id for m in stale.messages],
                      new_events=[Event.OrchestrationCompleted(event_id=len(before) + 1, output="stale")],
                      update=InstanceUpdate(name="Echo", version="1.0.0", execution_id=1, status="Completed",
                                            output="stale"))
    assert await h.store.commit_turns([late]) == [False]
    assert await history(h, "locked") == before
    assert await h.client.get_orchestration_status("locked") == OrchestrationStatus.Completed(output="echo:hi")


async def test_long_activity_keeps_its_lease_and_runs_once(clocked1: tuple[Env, ManualClock]) -> None:
    env, clock = clocked1
    h = env.h
    runs: list[str] = []
    release = asyncio.Event()
    renewing = 0
    renewed = 0
    renew = h.store.renew_work_item

    async def counted_renew(*args: Any, **kwargs: Any) -> bool:
        nonlocal renewing, renewed
        renewing += 1
        try:
            return await renew(*args, **kwargs)
        finally:
            renewing -= 1
            renewed += 1

    h.store.renew_work_item = counted_renew  # type: ignore[method-assign]

    async def slow(inp: str) -> str:
        runs.append(inp)
        await release.wait()  # until the clock is well past activity_lock_timeout: only renewal keeps the lease
        return f"slow:{inp}"

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Slow", inp)

    await h.start({"Orch": orch}, {"Slow": slow}, activity_lock_timeout=0.6)
    await env.runtime({"Orch": orch}, {"Slow": slow}, activity_lock_timeout=0.6)  # a second worker watching
    await h.client.start_orchestration("long", "Orch", "x")
    await eventually(lambda: runs, what="the activity started")
    # Five lease periods of clock time, moved only while no renewal is in flight: a slow machine
    # delays the renewals in real time, never in clock time.
    await drive(clock, 3.0, quiet=lambda: renewing == 0)
    assert renewed >= 10 and runs == ["x"]
    release.set()

    async def done() -> bool:
        return (await h.client.get_orchestration_status("long")).is_terminal

    await drive(clock, 30.0, until=done)
    assert await wait(h, "long", 0) == OrchestrationStatus.Completed(output="slow:x")
    assert runs == ["x"]


# -- 14: at least once; duplicates recorded once; older executions ignored -------------


async def test_activity_of_a_crashed_worker_reruns_after_lease_expiry_and_is_recorded_once(
        clocked: tuple[Env, ManualClock]) -> None:
    env, clock = clocked
    h = env.h
    runs: list[tuple[str, float]] = []

    async def work(inp: str) -> str:
        runs.append((inp, clock.monotonic()))
        return f"done-{inp}-{len(runs)}"

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        r = await ctx.schedule_activity("Work", inp)
        await ctx.schedule_wait("done")
        return r

    # a runtime that schedules the call but cannot run it (it does not know the activity)
    await h.start({"Orch": orch}, {}, max_attempts=100)
    await h.client.start_orchestration("crash", "Orch", "x")
    await eventually(lambda: count_events(h, "crash", Event.ActivityScheduled), what="ActivityScheduled")
    await h.stop()
    # a worker leases the call, runs it, and crashes before recording the result
    [lease] = await eventually(lambda: h.store.fetch_work_items(10, 0.5), what="work item")
    leased_at = clock.monotonic()
    await work(lease.work.input)
    await h.start({"Orch": orch}, {"Work": work}, max_attempts=100)
    await drive(clock, 0.49)
    assert len(runs) == 1  # not re-run while the crashed worker's lease is valid
    await drive(clock, 5.0, until=lambda: count_events(h, "crash", Event.ActivityCompleted))
    assert len(runs) == 2  # at least once: re-run after the crash...
    assert runs[1][1] - leased_at >= 0.5  # ...once the lease had expired
    # the crashed worker comes back and records its late result with its old token
    await h.store.complete_work_items([WorkCompletion(lease.lock_token, ActivityResult(
        instance_id="crash", execution_id=1, event_id=lease.work.event_id, result="late"))])
    await h.client.raise_event("crash", "done", "")
    assert await wait(h, "crash") == OrchestrationStatus.Completed(output="done-x-2")
    completions = [e for e in await history(h, "crash") if isinstance(e, Event.ActivityCompleted)]
    assert len(completions) == 1 and completions[0].result == "done-x-2"


async def test_duplicate_activity_completion_is_recorded_once(env: Env) -> None:
    h = env.h
    runs: Counter[str] = Counter()

    async def work(inp: str) -> str:
        runs[inp] += 1
        return f"real-{inp}"

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        r = await ctx.schedule_activity("Work", inp)
        d = await ctx.schedule_wait("done")
        return f"{r}/{d}"

    await h.start({"Orch": orch}, {"Work": work})
    await h.client.start_orchestration("dup", "Orch", "a")
    await eventually(lambda: count_events(h, "dup", Event.ActivityCompleted), what="ActivityCompleted")
    scheduled = next(e for e in await history(h, "dup") if isinstance(e, Event.ActivityScheduled))
    for result, error in (("duplicate", None), (None, None)):
        assert await h.store.send(ActivityResult(instance_id="dup", execution_id=1, event_id=scheduled.event_id,
                                                 result=result, error=error)) is not None
    await h.client.raise_event("dup", "done", "ok")
    assert await wait(h, "dup") == OrchestrationStatus.Completed(output="real-a/ok")
    events = await history(h, "dup")
    done = [e for e in events if isinstance(e, (Event.ActivityCompleted, Event.ActivityFailed))]
    assert len(done) == 1 and isinstance(done[0], Event.ActivityCompleted) and done[0].result == "real-a"
    assert runs == Counter({"a": 1})


async def test_completion_from_an_older_execution_is_ignored(env: Env) -> None:
    h = env.h
    gate = asyncio.Event()

    async def slow(inp: str) -> str:
        await asyncio.wait_for(gate.wait(), 10)
        return f"real-{inp}"

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        if inp == "first":
            ctx.continue_as_new("second")
        return await ctx.schedule_activity("Slow", inp)

    await h.start({"Orch": orch}, {"Slow": slow})
    await h.client.start_orchestration("old", "Orch", "first")

    async def second_waits() -> bool:
        info = await h.client.get_instance_info("old")
        return info.execution_id == 2 and await count_events(h, "old", Event.ActivityScheduled) == 1

    await eventually(second_waits, what="execution 2 waiting on its activity")
    scheduled = next(e for e in await history(h, "old") if isinstance(e, Event.ActivityScheduled))
    # same event id and kind as execution 2's open activity, but addressed to execution 1
    await h.store.send(ActivityResult(instance_id="old", execution_id=1, event_id=scheduled.event_id,
                                      result="stale"))
    await h.client.raise_event("old", "ping", "")  # queued after the stale result: seen => stale was processed
    await eventually(lambda: count_events(h, "old", Event.EventRaised), what="ping recorded")
    assert await count_events(h, "old", Event.ActivityCompleted) == 0
    gate.set()
    assert await wait(h, "old") == OrchestrationStatus.Completed(output="real-second")
    results = [e.result for e in await history(h, "old") if isinstance(e, Event.ActivityCompleted)]
    assert results == ["real-second"]
    assert [type(e).__name__ for e in await history(h, "old", 1)] == [
        "OrchestrationStarted", "OrchestrationContinuedAsNew"]


# -- 15/16/17: poison, error classes, unregistered names --------------------------------


async def test_unregistered_activity_is_poison_after_max_attempts_and_user_code_cannot_catch_it(env: Env) -> None:
    h = env.h

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_activity("NoSuchActivity", "x")
        except Exception as exc:  # noqa: BLE001 - poison must not arrive here
            return f"caught {type(exc).__name__}"

    await h.start({"Orch": orch}, {"Other": lambda s: s}, max_attempts=3)
    status = await h.run("poison", "Orch", timeout=15)
    assert isinstance(status, OrchestrationStatus.Failed), status
    assert status.details is not None and status.details.error_type == "PoisonMessageError"
    assert "NoSuchActivity" in status.error and "max_attempts=3" in status.error
    events = await history(h, "poison")
    assert isinstance(events[-1], Event.OrchestrationFailed)
    assert not any(isinstance(e, (Event.ActivityCompleted, Event.ActivityFailed)) for e in events)


async def test_application_errors_reach_orchestration_code_with_type_message_and_traceback(env: Env) -> None:
    h = env.h

    async def boom(inp: str) -> str:
        raise ValueError(f"bad {inp}")

    async def child(ctx: OrchestrationContext, inp: str) -> str:
        raise KeyError(f"missing-{inp}")

    async def parent(ctx: OrchestrationContext, _: str) -> str:
        seen: dict[str, Any] = {}
        try:
            await ctx.schedule_activity("Boom", "thing")
        except ActivityFailed as e:
            seen["activity"] = [isinstance(e, DurableTaskFailed), e.name, e.error_type, e.details.message,
                                "Traceback" in e.remote_traceback and "boom" in e.remote_traceback]
        try:
            await ctx.schedule_sub_orchestration("Child", "k", instance_id="err-child")
        except SubOrchestrationFailed as e:
            seen["child"] = [isinstance(e, DurableTaskFailed), e.name, e.instance_id, e.error_type,
                             "missing-k" in e.details.message, "Traceback" in e.remote_traceback]
        return json.dumps(seen)

    async def uncaught(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Boom", "again")

    await h.start({"Parent": parent, "Child": child, "Uncaught": uncaught}, {"Boom": boom})
    status = await h.run("errs", "Parent")
    assert isinstance(status, OrchestrationStatus.Completed), status
    seen = json.loads(status.output)
    assert seen["activity"] == [True, "Boom", "ValueError", "bad thing", True]
    assert seen["child"] == [True, "Child", "err-child", "KeyError", True, True]
    failed = await h.run("uncaught", "Uncaught")
    assert isinstance(failed, OrchestrationStatus.Failed)
    assert failed.details is not None and failed.details.error_type == "ActivityFailed"
    assert "ValueError" in failed.error and "bad again" in failed.error


async def test_nondeterminism_fails_the_instance_and_never_reaches_user_code(env: Env) -> None:
    h = env.h
    which = {"name": "StepA"}

    async def step(inp: str) -> str:
        return inp

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.schedule_activity(which["name"], "x")
            await ctx.schedule_wait("go")
            return "done"
        except Exception as exc:  # noqa: BLE001 - non-determinism must not arrive here
            return f"caught {type(exc).__name__}"

    acts = {"StepA": step, "StepB": step}
    await h.start({"Orch": orch}, acts)
    await h.client.start_orchestration("nd", "Orch", "")
    await eventually(lambda: count_events(h, "nd", Event.EventSubscribed), what="waiting for go")
    await h.stop()
    which["name"] = "StepB"  # a deploy changed the code under a running instance
    await h.start({"Orch": orch}, acts)
    await h.client.raise_event("nd", "go", "")
    status = await wait(h, "nd")
    assert isinstance(status, OrchestrationStatus.Failed), status
    assert status.details is not None and status.details.error_type == "NonDeterminismError"
    assert "StepA" in status.error and "StepB" in status.error


async def test_unregistered_names_back_off_until_a_runtime_that_knows_them_starts(
        clocked: tuple[Env, ManualClock]) -> None:
    env, clock = clocked
    h = env.h

    async def late_orch(ctx: OrchestrationContext, inp: str) -> str:
        return f"late:{inp}"

    async def uses_late_activity(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("LateAct", inp)

    async def late_act(inp: str) -> str:
        return f"act:{inp}"

    # the old build knows neither LateOrch nor LateAct
    await h.start({"UsesLate": uses_late_activity}, {}, max_attempts=1000)
    # started from a process that knows LateOrch (this runtime does not)
    await Client(h.store, check_names=False).start_orchestration("roll-o", "LateOrch", "1")
    await h.client.start_orchestration("roll-a", "UsesLate", "2")
    await eventually(lambda: count_events(h, "roll-a", Event.ActivityScheduled), what="activity scheduled")
    await drive(clock, 0.3)  # several back-off rounds (0.01 s, doubling up to 0.05 s) of clock time
    assert not (await h.client.get_orchestration_status("roll-o")).is_terminal
    assert not (await h.client.get_orchestration_status("roll-a")).is_terminal
    # the new build rolls out next to it, and the old build is stopped (a rolling deploy). Until
    # then either may take the work: on one test clock the old build's own retry after its
    # back-off is always first to an instance it cannot run, so the test cannot wait for luck.
    await env.runtime({"LateOrch": late_orch}, {"LateAct": late_act}, max_attempts=1000)
    await drive(clock, 0.3)
    await h.stop()

    async def both_done() -> bool:
        return all([(await h.client.get_orchestration_status(i)).is_terminal for i in ("roll-o", "roll-a")])

    await drive(clock, 30.0, until=both_done)
    assert await wait(h, "roll-o", 0) == OrchestrationStatus.Completed(output="late:1")
    assert await wait(h, "roll-a", 0) == OrchestrationStatus.Completed(output="act:2")


# -- 18: starting an existing id ----------------------------------------------------------


async def test_starting_an_existing_id_raises_and_never_runs_twice(env: Env) -> None:
    h = env.h
    runs: Counter[str] = Counter()

    async def work(inp: str) -> str:
        runs[inp] += 1
        return inp

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        r = await ctx.schedule_activity("Work", inp)
        await ctx.schedule_wait("go")
        return r

    await h.start({"Orch": orch}, {"Work": work})
    await h.client.start_orchestration("once", "Orch", "first")
    await eventually(lambda: count_events(h, "once", Event.EventSubscribed), what="running")
    with pytest.raises(InstanceAlreadyExistsError) as err:
        await h.client.start_orchestration("once", "Orch", "second")
    assert "once" in str(err.value)
    await h.client.raise_event("once", "go", "")
    assert await wait(h, "once") == OrchestrationStatus.Completed(output="first")
    with pytest.raises(InstanceAlreadyExistsError):
        await h.client.start_orchestration("once", "Orch", "third")
    await asyncio.sleep(0.1)
    assert runs == Counter({"first": 1})
    events = await history(h, "once")
    assert sum(isinstance(e, Event.OrchestrationStarted) for e in events) == 1
    assert await h.client.get_orchestration_status("once") == OrchestrationStatus.Completed(output="first")


# -- 24: timers -----------------------------------------------------------------------------


async def three_timers(ctx: OrchestrationContext, _: str) -> str:
    order: list[str] = []

    async def timer(label: str, seconds: float) -> None:
        await ctx.schedule_timer(seconds)
        order.append(label)

    await ctx.join([timer("c", 0.6), timer("a", 0.2), timer("b", 0.4)])
    return ",".join(order)


def check_timer_times(events: list[Any]) -> None:
    created = {e.event_id: e for e in events if isinstance(e, Event.TimerCreated)}
    fired = [e for e in events if isinstance(e, Event.TimerFired)]
    assert sorted(f.source_event_id for f in fired) == sorted(created)  # each fired exactly once
    for f in fired:
        assert f.fire_at_ms == created[f.source_event_id].fire_at_ms
        assert f.timestamp_ms >= f.fire_at_ms  # never early


async def test_timers_fire_at_or_after_their_time_in_order(env: Env) -> None:
    h = env.h
    await h.start({"Timers": three_timers})
    assert await h.run("timers", "Timers") == OrchestrationStatus.Completed(output="a,b,c")
    events = await history(h, "timers")
    started = events[0].timestamp_ms
    assert sorted(e.fire_at_ms - started for e in events if isinstance(e, Event.TimerCreated)) == [200, 400, 600]
    check_timer_times(events)


async def test_due_timers_survive_a_restart_before_firing_and_fire_in_order(env: Env) -> None:
    h = env.h
    await h.start({"Timers": three_timers})
    await h.client.start_orchestration("t-restart", "Timers", "")
    await eventually(lambda: count_events(h, "t-restart", Event.TimerCreated), what="timers created")
    await h.stop()
    events = await history(h, "t-restart")
    last_due = max(e.fire_at_ms for e in events if isinstance(e, Event.TimerCreated))
    await env.reopen()
    await asyncio.sleep(max(0.0, (last_due - now_ms()) / 1000) + 0.1)  # all three are now due at once
    await h.start({"Timers": three_timers})
    assert await wait(h, "t-restart") == OrchestrationStatus.Completed(output="a,b,c")
    check_timer_times(await history(h, "t-restart"))


async def test_fired_timer_is_not_fired_again_after_a_restart(env: Env) -> None:
    h = env.h

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_timer(0.05)
        got = await ctx.schedule_wait("go")
        await ctx.schedule_timer(timedelta(milliseconds=50))
        return f"done:{got}"

    await h.start({"Orch": orch})
    await h.client.start_orchestration("t-after", "Orch", "")
    await eventually(lambda: count_events(h, "t-after", Event.EventSubscribed), what="first timer fired")
    await h.stop()
    await env.reopen()
    await h.start({"Orch": orch})
    await h.client.raise_event("t-after", "go", "yes")
    assert await wait(h, "t-after") == OrchestrationStatus.Completed(output="done:yes")
    events = await history(h, "t-after")
    assert sum(isinstance(e, Event.TimerFired) for e in events) == 2
    check_timer_times(events)


# -- 25: purge --------------------------------------------------------------------------------


async def waiter_orch(ctx: OrchestrationContext, inp: str) -> str:
    return f"{inp}:{await ctx.schedule_wait('go')}"


async def test_purge_refuses_a_running_instance_without_force(env: Env) -> None:
    h = env.h
    await h.start({"Waiter": waiter_orch})
    await h.client.start_orchestration("p1", "Waiter", "one")
    await eventually(lambda: count_events(h, "p1", Event.EventSubscribed), what="running")
    with pytest.raises(InstanceStillRunningError) as err:
        await h.client.purge("p1")
    assert "p1" in str(err.value) and "force" in str(err.value)
    await h.client.raise_event("p1", "go", "x")  # untouched: it still runs to the end
    assert await wait(h, "p1") == OrchestrationStatus.Completed(output="one:x")
    assert await h.client.purge("p1") == ["p1"]
    assert await h.client.get_orchestration_status("p1") == OrchestrationStatus.NotFound()
    with pytest.raises(InstanceNotFoundError):
        await h.client.read_history("p1")
    assert [i.instance_id for i in await h.client.list_instances()] == []
    # the id can be used again, from scratch
    await h.client.start_orchestration("p1", "Waiter", "two")
    await h.client.raise_event("p1", "go", "y")
    assert await wait(h, "p1") == OrchestrationStatus.Completed(output="two:y")
    assert sum(isinstance(e, Event.OrchestrationStarted) for e in await history(h, "p1")) == 1


async def test_forced_purge_of_a_running_instance_is_final(env: Env) -> None:
    h = env.h

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_timer(0.2)
        return "should not finish"

    await h.start({"Orch": orch})
    await h.client.start_orchestration("p2", "Orch", "")
    await eventually(lambda: count_events(h, "p2", Event.TimerCreated), what="timer pending")
    assert await h.client.purge("p2", force=True) == ["p2"]
    with pytest.raises(InstanceNotFoundError):
        await h.client.raise_event("p2", "go", "")
    await asyncio.sleep(0.4)  # past the timer
    assert await h.client.get_orchestration_status("p2") == OrchestrationStatus.NotFound()
    assert await h.store.read_history("p2", 1) == []
    assert await h.client.list_instances() == []


async def test_purge_cascades_to_children(env: Env) -> None:
    h = env.h

    async def leaf(ctx: OrchestrationContext, inp: str) -> str:
        return f"leaf:{inp}"

    async def mid(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_sub_orchestration("Leaf", inp, instance_id=f"{ctx.instance_id}-leaf")

    async def root(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_sub_orchestration("Mid", inp, instance_id="root-mid")

    async def other(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    await h.start({"Root": root, "Mid": mid, "Leaf": leaf, "Other": other})
    assert await h.run("root", "Root", "z") == OrchestrationStatus.Completed(output="leaf:z")
    assert await h.run("bystander", "Other", "b") == OrchestrationStatus.Completed(output="b")
    assert sorted(await h.client.purge("root")) == ["root", "root-mid", "root-mid-leaf"]
    for iid in ("root", "root-mid", "root-mid-leaf"):
        assert await h.client.get_orchestration_status(iid) == OrchestrationStatus.NotFound()
        assert await h.store.read_history(iid, 1) == []
    assert [i.instance_id for i in await h.client.list_instances()] == ["bystander"]


async def test_purge_during_an_in_flight_turn_is_not_undone_by_its_commit(env: Env) -> None:
    h = env.h
    store = h.store
    commit = store.commit_turns
    purged: list[str] = []
    outcomes: list[bool] = []
    runs: list[str] = []

    async def purge_then_commit(commits: Any, **kwargs: Any) -> Any:
        victim = [c for c in commits if c.instance_id == "victim"]
        if victim and not purged:
            purged.extend(await store.purge_instance("victim") or [])
        results = await commit(commits, **kwargs)
        outcomes.extend(ok for c, ok in zip(commits, results) if c.instance_id == "victim")
        return results

    store.commit_turns = purge_then_commit  # type: ignore[method-assign]

    async def work(inp: str) -> str:
        runs.append(inp)
        return inp

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Work", inp)

    await h.start({"Orch": orch}, {"Work": work})
    await h.client.start_orchestration("victim", "Orch", "v")
    await eventually(lambda: outcomes, what="the victim's commit")
    assert purged == ["victim"] and outcomes[0] is False
    assert await h.run("after", "Orch", "a") == OrchestrationStatus.Completed(output="a")  # runtime still serves
    await asyncio.sleep(0.2)
    assert await h.client.get_orchestration_status("victim") == OrchestrationStatus.NotFound()
    assert await store.read_history("victim", 1) == []
    assert runs == ["a"]  # the purged turn's activity was never scheduled
    assert [i.instance_id for i in await h.client.list_instances()] == ["after"]


async def test_result_of_an_activity_running_during_purge_does_not_resurrect_the_instance(env: Env) -> None:
    h = env.h
    started = asyncio.Event()
    gate = asyncio.Event()
    finished: list[str] = []

    async def slow(inp: str) -> str:
        started.set()
        try:
            await asyncio.wait_for(gate.wait(), 5)
        except asyncio.TimeoutError:
            pass
        finally:
            finished.append(inp)
        return inp

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Slow", inp)

    await h.start({"Orch": orch}, {"Slow": slow}, activity_lock_timeout=0.3)
    await h.client.start_orchestration("p3", "Orch", "x")
    await asyncio.wait_for(started.wait(), 10)
    assert await h.client.purge("p3", force=True) == ["p3"]
    gate.set()
    await eventually(lambda: finished, what="activity finished")
    await asyncio.sleep(0.2)
    assert await h.client.get_orchestration_status("p3") == OrchestrationStatus.NotFound()
    assert await h.store.read_history("p3", 1) == []
    assert await h.client.list_instances() == []


# -- 26: limits ---------------------------------------------------------------------------------


async def test_client_payload_limit_rejects_before_anything_is_stored(env: Env) -> None:
    h = env.h
    small = Client(h.store, max_payload_bytes=16)
    await h.start({"Waiter": waiter_orch})
    for too_big in ("x" * 17, "é" * 9):  # 18 UTF-8 bytes in 9 characters
        with pytest.raises(PayloadTooLargeError) as err:
            await small.start_orchestration("big", "Waiter", too_big)
        assert isinstance(err.value, PayloadError)
        assert "16" in str(err.value) and "bytes" in str(err.value)
    assert await h.client.get_orchestration_status("big") == OrchestrationStatus.NotFound()
    assert await h.client.list_instances() == []
    await small.start_orchestration("ok", "Waiter", "x" * 16)
    await eventually(lambda: count_events(h, "ok", Event.EventSubscribed), what="running")
    with pytest.raises(PayloadTooLargeError):
        await small.raise_event("ok", "go", "y" * 17)
    await asyncio.sleep(0.1)
    assert await count_events(h, "ok", Event.EventRaised) == 0
    await small.raise_event("ok", "go", "fits")
    assert await wait(h, "ok") == OrchestrationStatus.Completed(output="x" * 16 + ":fits")


async def test_runtime_payload_limit_applies_to_its_client_activity_inputs_and_outputs(env: Env) -> None:
    h = env.h
    runs: list[str] = []

    async def work(inp: str) -> str:
        runs.append(inp)
        return inp

    async def big_input(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Work", "z" * 65)

    async def big_output(ctx: OrchestrationContext, _: str) -> str:
        return "o" * 65

    rt = await h.start({"BigInput": big_input, "BigOutput": big_output}, {"Work": work}, max_payload_bytes=64)
    with pytest.raises(PayloadTooLargeError):
        await rt.client().start_orchestration("big-start", "BigOutput", "s" * 65)
    assert await h.client.get_orchestration_status("big-start") == OrchestrationStatus.NotFound()
    status = await h.run("big-in", "BigInput")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "PayloadTooLargeError" and "64" in status.error
    assert await count_events(h, "big-in", Event.ActivityScheduled) == 0
    status = await h.run("big-out", "BigOutput")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "PayloadTooLargeError"
    assert runs == []


async def test_custom_status_limit(env: Env) -> None:
    h = env.h

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        ctx.set_custom_status("ok")
        try:
            ctx.set_custom_status("x" * 9)
        except PayloadTooLargeError:
            return "rejected"
        return "accepted"

    await h.start({"Orch": orch}, max_custom_status_bytes=8)
    assert await h.run("cs", "Orch") == OrchestrationStatus.Completed(output="rejected", custom_status="ok")
    assert (await h.client.get_instance_info("cs")).custom_status == "ok"


async def test_history_limit_fails_the_instance_and_points_to_continue_as_new(env: Env) -> None:
    h = env.h

    async def echo(inp: str) -> str:
        return inp

    async def long_loop(ctx: OrchestrationContext, _: str) -> str:
        for i in range(20):
            await ctx.schedule_activity("Echo", str(i))
        return "finished"

    async def chunked(ctx: OrchestrationContext, inp: str) -> str:
        done = int(inp)
        for i in range(4):
            await ctx.schedule_activity("Echo", str(done + i))
        if done + 4 < 20:
            ctx.continue_as_new(str(done + 4))
        return f"finished at {done + 4}"

    await h.start({"Long": long_loop, "Chunked": chunked}, {"Echo": echo}, max_history_events=12)
    status = await h.run("long", "Long")
    assert isinstance(status, OrchestrationStatus.Failed), status
    assert "continue_as_new" in status.error and "12" in status.error
    assert len(await history(h, "long")) <= 14
    # the advertised fix works under the same limit
    assert await h.run("chunked", "Chunked", "0") == OrchestrationStatus.Completed(output="finished at 20")


# -- shutdown, thread activities, retries, timeouts ----------------------------------------


@pytest.mark.parametrize("grace", [5.0, 0.0])
async def test_graceful_shutdown_loses_nothing(env1: Env, grace: float) -> None:
    h = env1.h
    started: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    all_started = asyncio.Event()

    async def work(inp: str) -> str:
        started[inp] += 1
        if len(started) == 5:
            all_started.set()
        await asyncio.sleep(0.3)
        finished[inp] += 1  # the side effect, counted when the activity completes
        return inp.upper()

    async def fan(ctx: OrchestrationContext, _: str) -> str:
        return ",".join(await ctx.join([ctx.schedule_activity("Work", c) for c in "abcde"]))

    await h.start({"Fan": fan}, {"Work": work})
    await h.client.start_orchestration("fan", "Fan", "")
    await asyncio.wait_for(all_started.wait(), 10)
    assert h.runtime is not None
    await h.runtime.shutdown(grace=grace)
    h.runtime = None
    await env1.reopen()
    await h.start({"Fan": fan}, {"Work": work})
    assert await wait(h, "fan") == OrchestrationStatus.Completed(output="A,B,C,D,E")
    assert finished == Counter("abcde")  # every activity completed exactly once
    if grace > 0:
        assert started == Counter("abcde")  # they finished inside the grace period: nothing re-ran
    assert await count_events(h, "fan", Event.ActivityCompleted) == 5


async def test_plain_def_activity_runs_in_a_thread_and_does_not_block_the_loop(env1: Env) -> None:
    h = env1.h
    entered = threading.Event()
    release = threading.Event()
    threads: list[str] = []

    def blocking(inp: str) -> str:  # plain def: blocks its thread, not the event loop
        threads.append(threading.current_thread().name)
        entered.set()
        return "released" if release.wait(10) else "loop was blocked"

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Blocking", inp)

    async def quick(ctx: OrchestrationContext, inp: str) -> str:
        return f"quick:{inp}"

    await h.start({"Orch": orch, "Quick": quick}, {"Blocking": blocking})
    await h.client.start_orchestration("blk", "Orch", "")
    await eventually(entered.is_set, what="blocking activity entered")
    # while it blocks, the runtime keeps serving other instances on the loop
    assert await h.run("quick", "Quick", "q") == OrchestrationStatus.Completed(output="quick:q")
    release.set()  # only reachable because the loop was free
    assert await wait(h, "blk") == OrchestrationStatus.Completed(output="released")
    assert threads and threads[0] != threading.main_thread().name


async def test_retry_policy_retries_failed_attempts_then_gives_up(env: Env) -> None:
    h = env.h
    attempts: Counter[str] = Counter()

    async def flaky(inp: str) -> str:
        attempts[inp] += 1
        if attempts[inp] < 3:
            raise RuntimeError(f"attempt {attempts[inp]} of {inp}")
        return f"ok after {attempts[inp]}"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        a = await ctx.schedule_activity("Flaky", "x", retry=RetryPolicy(max_attempts=3, backoff=0.05))
        try:
            b = await ctx.schedule_activity("Flaky", "y", retry=RetryPolicy(max_attempts=2, backoff=0.05))
        except ActivityFailed as e:
            b = f"gave up: {e.details.message}"
        return f"{a}|{b}"

    await h.start({"Orch": orch}, {"Flaky": flaky})
    assert await h.run("retry", "Orch") == OrchestrationStatus.Completed(output="ok after 3|gave up: attempt 2 of y")
    assert attempts == Counter({"x": 3, "y": 2})
    events = await history(h, "retry")
    assert sum(isinstance(e, Event.ActivityScheduled) for e in events) == 5
    assert sum(isinstance(e, Event.TimerCreated) for e in events) == 3  # back-off timers are durable


async def test_activity_timeout_raises_activity_timeout_error(env: Env) -> None:
    h = env.h
    gate = asyncio.Event()

    async def hang(inp: str) -> str:
        try:
            await asyncio.wait_for(gate.wait(), 5)
        except asyncio.TimeoutError:
            pass
        return "late"

    async def fast(inp: str) -> str:
        return f"fast:{inp}"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        quick = await ctx.schedule_activity("Fast", "q", timeout=10)
        try:
            await ctx.schedule_activity("Hang", "h", timeout=0.2)
            return "no timeout"
        except ActivityTimeoutError as e:
            return f"{quick}|{type(e).__name__}|{isinstance(e, DurableTaskFailed)}|{e.name}"

    await h.start({"Orch": orch}, {"Hang": hang, "Fast": fast}, activity_lock_timeout=0.3)
    try:
        assert await h.run("to", "Orch") == OrchestrationStatus.Completed(
            output="fast:q|ActivityTimeoutError|True|Hang")
    finally:
        gate.set()


# -- client --------------------------------------------------------------------------------------


async def test_list_instances_filters_and_instance_info_fields(env1: Env) -> None:
    h = env1.h

    async def parent(ctx: OrchestrationContext, inp: str) -> str:
        ctx.set_custom_status("parenting")
        return await ctx.schedule_sub_orchestration("Kid", inp, instance_id="kid")

    async def kid(ctx: OrchestrationContext, inp: str) -> str:
        return f"kid:{inp}"

    async def fails(ctx: OrchestrationContext, inp: str) -> str:
        raise RuntimeError(f"nope {inp}")

    await h.start({"Parent": parent, "Kid": kid, "Waiter": waiter_orch, "Fails": fails})
    assert await h.run("par", "Parent", "1") == OrchestrationStatus.Completed(output="kid:1",
                                                                               custom_status="parenting")
    await h.client.start_orchestration("w", "Waiter", "")
    await eventually(lambda: count_events(h, "w", Event.EventSubscribed), what="running")
    assert isinstance(await h.run("bad", "Fails", "2"), OrchestrationStatus.Failed)

    def ids(infos: list[Any]) -> set[str]:
        return {i.instance_id for i in infos}

    assert ids(await h.client.list_instances()) == {"par", "kid", "w", "bad"}
    assert ids(await h.client.list_instances(status="Completed")) == {"par", "kid"}
    assert ids(await h.client.list_instances(status="Running")) == {"w"}
    assert ids(await h.client.list_instances(status="Failed")) == {"bad"}
    assert ids(await h.client.list_instances(name="Kid")) == {"kid"}
    assert ids(await h.client.list_instances(status="Completed", name="Parent")) == {"par"}
    assert ids(await h.client.list_instances(status="Failed", name="Parent")) == set()
    assert len(await h.client.list_instances(limit=2)) == 2

    info = await h.client.get_instance_info("par")
    assert (info.instance_id, info.name, info.version, info.status, info.execution_id) == (
        "par", "Parent", "1.0.0", "Completed", 1)
    assert (info.output, info.error, info.custom_status, info.parent_instance_id) == (
        "kid:1", None, "parenting", None)
    assert 0 < info.created_at_ms <= info.updated_at_ms
    child = await h.client.get_instance_info("kid")
    assert child.parent_instance_id == "par" and child.output == "kid:1"
    failed = await h.client.get_instance_info("bad")
    assert failed.status == "Failed" and failed.output is None
    assert failed.error is not None and "RuntimeError" in failed.error and "nope 2" in failed.error
    with pytest.raises(InstanceNotFoundError):
        await h.client.get_instance_info("nobody")


async def test_wait_for_orchestration_returns_running_on_timeout_and_not_found_for_unknown(env1: Env) -> None:
    h = env1.h
    await h.start({"Waiter": waiter_orch})
    await h.client.start_orchestration("slowpoke", "Waiter", "s")
    await eventually(lambda: count_events(h, "slowpoke", Event.EventSubscribed), what="running")
    assert isinstance(await h.client.wait_for_orchestration("slowpoke", timedelta(seconds=0.2)),
                      OrchestrationStatus.Running)
    assert isinstance(await h.client.wait_for_orchestration("slowpoke", 0.1), OrchestrationStatus.Running)
    t0 = time.monotonic()
    assert await h.client.wait_for_orchestration("ghost", 5) == OrchestrationStatus.NotFound()
    assert time.monotonic() - t0 < 4  # answered at once, not after the timeout
    await h.client.raise_event("slowpoke", "go", "now")
    assert await h.client.wait_for_orchestration("slowpoke", 10) == OrchestrationStatus.Completed(output="s:now")
