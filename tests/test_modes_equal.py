"""SEMANTICS 9: replaying from scratch at every turn and resuming cached instances give identical histories.

Each scenario runs twice on fresh stores of the same provider, once per
replay mode, and every execution of every instance it created (parents and
children) must have the same normalized history, and the same final status.
The scenarios avoid races between independent completions, so that the
order of events is decided by the code and the test, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    ActivityFailed,
    Event,
    HistoryEvent,
    InstanceNotFoundError,
    OrchestrationContext,
    OrchestrationStatus,
    SubOrchestrationFailed,
)

from .support import PROVIDERS, Harness, drop_store, make_store, normalize

Scenario = Callable[[Harness], Awaitable[None]]


async def _until(h: Harness, iid: str, pred: Callable[[HistoryEvent], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            history = await h.client.read_history(iid)
        except InstanceNotFoundError:
            history = []
        if any(pred(e) for e in history):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting in {iid!r}; history: {[type(e).__name__ for e in history]}")
        await asyncio.sleep(0.01)


async def _until_waiting(h: Harness, iid: str, name: str) -> None:
    await _until(h, iid, lambda e: isinstance(e, Event.EventSubscribed) and e.name == name)


async def _echo(x: str) -> str:
    return f"echo:{x}"


async def _boom(x: str) -> str:
    raise ValueError(f"boom {x}")


# --------------------------------------------------------------------------- scenarios


async def rich(h: Harness) -> None:
    """Activities, sleep, timers, select, join, child, events, recorded values, continue_as_new."""
    gate = asyncio.Event()

    async def releaser(x: str) -> str:
        gate.set()  # the gated call completes strictly after this one
        return f"released:{x}"

    async def gated(x: str) -> str:
        await gate.wait()
        return f"gated:{x}"

    async def child(ctx: OrchestrationContext, inp: str) -> str:
        guid = await ctx.new_guid()
        out = await ctx.schedule_activity("Echo", inp)
        await ctx.schedule_timer(0.05)
        return f"{out}:{len(guid)}"

    async def parent(ctx: OrchestrationContext, inp: str) -> str:
        if inp == "0":
            first = await ctx.schedule_activity("Echo", "start")
            await asyncio.sleep(0.05)
            idx, _ = await ctx.select2(ctx.schedule_wait("never"), ctx.schedule_timer(0.05))
            both = await ctx.join([ctx.schedule_activity("Gated", "g"), ctx.schedule_activity("Releaser", "r")])
            kid = await ctx.schedule_sub_orchestration("Child", "c1")
            ctx.trace_info("halfway", first=first)
            approval = await ctx.schedule_wait("approve")
            await ctx.utc_now()
            ctx.set_custom_status(f"exec1:{idx}:{approval}")
            ctx.continue_as_new("|".join([first, *both, kid]))
        second = await ctx.schedule_activity("Echo", "second")
        try:
            await ctx.schedule_activity("Boom", "x")
        except ActivityFailed as err:
            second += f"+{err.error_type}"
        carried = await ctx.schedule_wait("carry")
        late = await ctx.schedule_wait("late")
        return f"{inp}#{second}#{carried}#{late}"

    # Queued before the runtime starts, so the first turn sees all three messages in both modes.
    await h.client.start_orchestration("rich", "Parent", "0")
    await h.client.raise_event("rich", "approve", "yes")  # kept until the wait
    await h.client.raise_event("rich", "carry", "C")       # unconsumed in exec 1: carried over
    await h.start({"Parent": parent, "Child": child},
                  {"Echo": _echo, "Boom": _boom, "Gated": gated, "Releaser": releaser})
    await _until(h, "rich", lambda e: isinstance(e, Event.EventSubscribed) and e.name == "late")
    await h.client.raise_event("rich", "late", "L")


async def events_and_cancellation(h: Harness) -> None:
    """Buffered events, FIFO per name, select over buffered waits, select losers, a cancelled child."""
    async def sleeper(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_wait("never")
        return "woke"

    async def waiter(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_wait("go")
        idx, won = await ctx.select2(ctx.schedule_wait("a"), ctx.schedule_wait("b"))
        b = await ctx.schedule_wait("b")
        e1, e2 = await asyncio.gather(ctx.schedule_wait("e"), ctx.schedule_wait("e"))
        try:
            await asyncio.wait_for(ctx.schedule_wait("missing"), timeout=0.05)
        except asyncio.TimeoutError:
            pass
        lost, _loser = await ctx.select2(ctx.schedule_sub_orchestration("Sleeper", ""), ctx.schedule_timer(0.05))
        return f"{idx}{won.result()}{b}{e1}{e2}{lost}"

    await h.start({"Waiter": waiter, "Sleeper": sleeper})
    await h.client.start_orchestration("ev", "Waiter", "")
    await _until_waiting(h, "ev", "go")
    for name, data in (("e", "1"), ("a", "A"), ("e", "2"), ("b", "B"), ("e", "3")):
        await h.client.raise_event("ev", name, data)
    await _until(h, "ev", lambda e: isinstance(e, Event.EventRaised) and e.data == "3")
    await h.client.raise_event("ev", "go", "")
    status = await h.client.wait_for_orchestration("ev", timedelta(seconds=15))
    assert status == OrchestrationStatus.Completed(output="0AB121")
    child = next(e.instance_id for e in await h.client.read_history("ev")
                 if isinstance(e, Event.SubOrchestrationScheduled))
    assert isinstance(await h.client.wait_for_orchestration(child, timedelta(seconds=15)),
                      OrchestrationStatus.Failed)


async def failures(h: Harness) -> None:
    """Failed activity and child caught, then the orchestration itself fails."""
    async def bad_child(ctx: OrchestrationContext, inp: str) -> str:
        await ctx.schedule_activity("Echo", inp)
        raise KeyError(inp)

    async def parent(ctx: OrchestrationContext, _: str) -> str:
        notes = []
        try:
            await ctx.schedule_activity("Boom", "1")
        except ActivityFailed as err:
            notes.append(err.error_type)
        try:
            await ctx.schedule_sub_orchestration("BadChild", "k")
        except SubOrchestrationFailed as err:
            notes.append(err.error_type)
        await ctx.schedule_timer(0.05)
        raise RuntimeError(",".join(notes))

    await h.start({"Parent": parent, "BadChild": bad_child}, {"Echo": _echo, "Boom": _boom})
    await h.client.start_orchestration("fail", "Parent", "")


# --------------------------------------------------------------------------- the comparison


async def _run_in_mode(scenario: Scenario, provider: str, mode: str, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / mode
    path.mkdir()
    store = await make_store(provider, path)
    h = Harness(store, mode)
    try:
        await scenario(h)
        instances: list[str] = []
        while True:  # children appear while parents run: wait until every instance seen has finished
            seen = [i.instance_id for i in await h.client.list_instances()]
            for iid in seen:
                status = await h.client.wait_for_orchestration(iid, timedelta(seconds=15))
                assert status.is_terminal, f"{mode}: {iid!r} did not finish: {status}"
            if sorted(seen) == sorted(instances):
                break
            instances = seen
        result: dict[str, Any] = {}
        for iid in sorted(instances):
            status = await h.client.get_orchestration_status(iid)
            if isinstance(status, OrchestrationStatus.Failed):
                assert status.details is not None
                result[f"{iid} status"] = ("Failed", status.details.error_type, status.details.message)
            else:
                result[f"{iid} status"] = status
            for exec_id in await h.client.list_executions(iid):
                result[f"{iid} #{exec_id}"] = normalize(await h.client.read_history(iid, exec_id))
        return result
    finally:
        try:
            await h.stop()
        finally:  # a PostgreSQL schema is dropped even when the scenario fails
            await drop_store(store)
        await store.close()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("scenario", [rich, events_and_cancellation, failures], ids=lambda s: s.__name__)
async def test_cached_and_from_scratch_histories_are_identical(scenario: Scenario, provider: str,
                                                                tmp_path: Path) -> None:
    cached = await _run_in_mode(scenario, provider, "cached", tmp_path)
    scratch = await _run_in_mode(scenario, provider, "from_scratch", tmp_path)
    assert cached.keys() == scratch.keys()
    for key in cached:
        assert cached[key] == scratch[key], f"{key} differs between replay modes"
    # The scenarios really exercised several executions and instances.
    assert len(cached) >= 4
