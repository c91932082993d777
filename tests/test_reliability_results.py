"""Issue 10, defects 1, 10a and 10b: a bad item fails alone, with a typed error.

* 1: an activity result the store cannot encode (a lone surrogate) used to fail
  every result batch it was in, forever; now that call fails with
  ``ActivityFailed`` (``PayloadError``) and every other result is recorded.
* 10a: a timer that lost a ``select2`` / ``wait_for`` used to stay queued and
  fire later (a turn, and a ``TimerFired`` event); it is deleted with the turn
  that cancelled it.
* 10b: an exception whose ``__str__`` raises used to escape recording, and the
  instance ended poisoned; a fallback message is recorded instead.

Every test runs on memory, SQLite (a real file) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from duroxide_runtime import (
    ActivityFailed, Event, InMemoryProvider, OrchestrationContext, OrchestrationStatus, PayloadError,
)
from duroxide_runtime.errors import ErrorDetails
from duroxide_runtime.dispatch.activities import ActivityWorker
from duroxide_runtime.messages import ActivityResult, TimerFired
from duroxide_runtime.providers.base import CallKey, InstanceUpdate, TurnCommit, WorkCompletion, now_ms
from duroxide_runtime.registry import ActivityRegistry

from .support import Harness, eventually

#: What ``os.fsdecode`` makes of a byte that is not UTF-8: a lone surrogate no store can encode.
BAD_TEXT = os.fsdecode(b"caf\xff")


@pytest.fixture
def h(cached_harness: Harness) -> Harness:
    """One harness per store, cached mode (the replay mode does not matter for these defects)."""
    return cached_harness


def output(status: OrchestrationStatus[str]) -> str:
    """The output of a Completed status (fails the test on any other)."""
    assert isinstance(status, OrchestrationStatus.Completed), status
    return str(status.output)


def failure(status: OrchestrationStatus[str]) -> ErrorDetails:
    """The error of a Failed status (fails the test on any other)."""
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None, status
    return status.details


# -- defect 1: an unencodable activity result ---------------------------------------


async def _call(ctx: OrchestrationContext, inp: str) -> str:
    try:
        return "ok:" + await ctx.schedule_activity(inp, inp)
    except ActivityFailed as err:
        return f"failed:{err.error_type}:{err.details.message}"


def _bad(_: str) -> str:
    return BAD_TEXT


async def _bad_async(_: str) -> str:
    return BAD_TEXT


def _bad_error(_: str) -> str:
    raise ValueError(BAD_TEXT)


def _good(inp: str) -> str:
    return "fine " + inp


async def test_unencodable_activity_result_fails_only_its_call(h: Harness) -> None:
    # The bad results finish first and then wait in the writer's queue with the good ones.
    await h.start({"Call": _call}, {"Bad": _bad, "BadAsync": _bad_async, "BadError": _bad_error, "Good": _good},
                  activity_concurrency=16)
    ids = [f"good-{i}" for i in range(12)]
    await h.client.start_orchestration("bad", "Call", "Bad")
    await h.client.start_orchestration("bad-async", "Call", "BadAsync")
    await h.client.start_orchestration("bad-error", "Call", "BadError")
    for iid in ids:
        await h.client.start_orchestration(iid, "Call", "Good")
    for iid in ids:
        status = await h.client.wait_for_orchestration(iid, 30)
        assert output(status) == "ok:fine Good", (iid, status)
    for iid in ("bad", "bad-async"):
        status = await h.client.wait_for_orchestration(iid, 30)
        text = output(status)
        assert text.startswith("failed:PayloadError:"), text
        assert "lone surrogate" in text and "\\udcff" in text
    # An exception message with a lone surrogate is recorded escaped, not refused.
    status = await h.client.wait_for_orchestration("bad-error", 30)
    assert output(status) == "failed:ValueError:caf\\udcff", status
    depths = await h.store.queue_depths()
    assert depths.worker == 0 and depths.orchestrator == 0, depths


async def test_result_writer_isolates_a_result_the_store_refuses(h: Harness) -> None:
    """The writer's own safety net: a result that slips past the worker's check (here put
    straight on its queue) fails alone; the good result of the same batch is recorded."""
    if isinstance(h.store, InMemoryProvider):
        pytest.skip("the in-memory store encodes nothing, so it refuses no result")
    async def wait_for_it(ctx: OrchestrationContext, inp: str) -> str:
        try:
            return "ok:" + await ctx.schedule_activity("Remote", inp)
        except ActivityFailed as err:
            return f"failed:{err.error_type}:{err.details.message}"

    # No worker here knows "Remote", and never takes it over: the test plays the worker.
    await h.start({"Wait": wait_for_it}, {}, foreign_activity_delay=3600)
    await h.client.start_orchestration("a", "Wait", "a")
    await h.client.start_orchestration("b", "Wait", "b")

    async def leased() -> Any:
        return await h.store.fetch_work_items(10, 60)

    got: list[Any] = []

    async def both_leased() -> bool:
        got.extend(await leased())
        return len(got) == 2

    await eventually(both_leased, 20, "two activity calls")
    worker = ActivityWorker(h.store, ActivityRegistry({}), h.options())
    by_instance = {lease.work.instance_id: lease for lease in got}
    for iid, text in (("a", BAD_TEXT), ("b", "good")):
        w = by_instance[iid].work
        worker._results.put_nowait(WorkCompletion(by_instance[iid].lock_token, ActivityResult(
            instance_id=w.instance_id, execution_id=w.execution_id, event_id=w.event_id, result=text)))
    stopping = asyncio.Event()
    stopping.set()  # write what is queued, then return
    await asyncio.wait_for(worker.flush_results(stopping), 60)
    status_b = await h.client.wait_for_orchestration("b", 30)
    assert output(status_b) == "ok:good", status_b
    status_a = await h.client.wait_for_orchestration("a", 30)
    assert output(status_a).startswith("failed:PayloadError:the activity finished, but the store could not "
                                      "record its result"), status_a


async def test_orchestration_text_the_store_cannot_hold_is_a_typed_error_at_the_call(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        seen = []
        for what, call in (("activity input", lambda: ctx.schedule_activity("Good", BAD_TEXT)),
                           ("custom status", lambda: ctx.set_custom_status(BAD_TEXT))):
            try:
                call()
            except PayloadError as err:
                seen.append(f"{what}: PayloadError")  # InvalidInputError is one too
        return json.dumps(seen)

    async def bad_output(ctx: OrchestrationContext, _: str) -> str:
        return BAD_TEXT

    await h.start({"Orch": orch, "BadOutput": bad_output}, {"Good": _good})
    status = await h.run("o", "Orch")
    assert json.loads(output(status)) == ["activity input: PayloadError", "custom status: PayloadError"]
    details = failure(await h.run("out", "BadOutput"))
    assert details.error_type == "PayloadError" and "lone surrogate" in details.message, details


# -- defect 10b: an exception whose __str__ raises ----------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def _unprintable(_: str) -> str:
    raise Unprintable()


async def test_activity_exception_with_broken_str_is_recorded_with_a_fallback(h: Harness) -> None:
    await h.start({"Call": _call}, {"Unprintable": _unprintable})
    status = await h.run("u", "Call", "Unprintable", timeout=30)
    assert output(status) == ("failed:Unprintable:<str() of this Unprintable raised RuntimeError; "
                              "the message is lost>"), status


async def test_orchestration_exception_with_broken_str_fails_the_instance_not_poison(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_activity("Good", "x")
        raise Unprintable()

    await h.start({"Orch": orch}, {"Good": _good})
    status = await h.run("u", "Orch", timeout=30)
    details = failure(status)
    assert details.error_type == "Unprintable" and "the message is lost" in details.message, details


# -- defect 10a: a timer that lost a select must never fire ------------------------


async def _timers_queued(h: Harness) -> int:
    return (await h.store.queue_depths()).timers


async def test_select_loser_timer_is_deleted_in_the_same_commit(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        idx, _done = await ctx.select2(ctx.schedule_activity("Good", "x"), ctx.schedule_timer(3600))
        await ctx.schedule_wait("finish")
        return str(idx)

    await h.start({"Orch": orch}, {"Good": _good})
    await h.client.start_orchestration("s", "Orch")

    async def waiting_for_finish() -> bool:
        return any(isinstance(e, Event.EventSubscribed) for e in await h.client.read_history("s"))

    await eventually(waiting_for_finish, 30, "the orchestration to pass the select")
    assert await _timers_queued(h) == 0  # before the fix: the hour-long loser still waits to fire
    await h.client.raise_event("s", "finish", "")
    status = await h.client.wait_for_orchestration("s", 30)
    assert output(status) == "0", status
    history = await h.client.read_history("s")
    assert not any(isinstance(e, Event.TimerFired) for e in history)


async def test_wait_for_timeout_timer_is_deleted_when_the_work_wins(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await asyncio.wait_for(ctx.schedule_activity("Good", "y"), 3600)

    await h.start({"Orch": orch}, {"Good": _good})
    status = await h.run("w", "Orch", timeout=30)
    assert output(status) == "fine y", status
    assert await _timers_queued(h) == 0


async def test_loser_timer_created_in_the_same_turn_is_never_queued(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        first = await ctx.schedule_wait("go")  # the second "go" is then already buffered
        idx, _done = await ctx.select2(ctx.schedule_wait("go"), ctx.schedule_timer(3600))
        await ctx.schedule_wait("finish")
        return f"{first}:{idx}"

    # Both events wait in the queue before the first turn: the select's wait is resolved as
    # it is made, so its timer is created and cancelled in one turn.
    await h.client.start_orchestration("t", "Orch")
    await h.client.raise_event("t", "go", "a")
    await h.client.raise_event("t", "go", "b")
    await h.start({"Orch": orch}, {})

    async def at_finish() -> bool:
        return sum(isinstance(e, Event.EventSubscribed) and e.name == "finish"
                   for e in await h.client.read_history("t")) == 1

    await eventually(at_finish, 30, "the wait for finish")
    assert await _timers_queued(h) == 0
    await h.client.raise_event("t", "finish", "")
    status = await h.client.wait_for_orchestration("t", 30)
    assert output(status) == "a:0", status


async def test_pending_timers_of_an_ended_execution_are_deleted(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        ctx.schedule_timer(3600)  # nobody awaits it
        if inp == "again":
            ctx.continue_as_new("done")
        await ctx.schedule_activity("Good", inp)
        return inp

    await h.start({"Orch": orch}, {"Good": _good})
    status = await h.run("e", "Orch", "again", timeout=30)
    assert output(status) == "done", status
    assert await _timers_queued(h) == 0


async def test_store_deletes_exactly_the_timers_a_commit_cancels(h: Harness) -> None:
    """The provider contract behind 10a: ``TurnCommit.delete_timers`` deletes the queued
    ``TimerFired`` of those event ids of that execution, and nothing else."""
    store = h.store
    await h.client.start_orchestration("c", "Any")
    later = now_ms() + 3_600_000

    async def turn(**changes: Any) -> None:
        fetched = await store.fetch_orchestration_items(10, 60)
        (item,) = fetched.items
        commit = TurnCommit("c", item.lock_token, 1, consumed=[m.id for m in item.messages],
                            update=InstanceUpdate(name="Any", version="1.0.0", execution_id=1, status="Running"),
                            **changes)
        assert await store.commit_turns([commit]) == [True]

    await turn(messages=[(TimerFired(instance_id="c", execution_id=1, event_id=2, fire_at_ms=later), later),
                         (TimerFired(instance_id="c", execution_id=1, event_id=3, fire_at_ms=later), later),
                         (TimerFired(instance_id="c", execution_id=2, event_id=2, fire_at_ms=later), later)])
    assert (await store.queue_depths()).timers == 3
    assert await h.client.raise_event("c", "poke", "")
    await turn(delete_timers=[CallKey("c", 1, 2)])
    depths = await store.queue_depths()
    assert depths.timers == 2 and depths.orchestrator == 0, depths


# -- defect 1, turns: a turn the store refuses fails its instance at once, with the cause ----


async def test_turn_the_store_refuses_fails_its_instance_with_the_cause_not_poison(h: Harness) -> None:
    """PostgreSQL's text columns cannot hold NUL; a turn whose output has one used to be
    redone until the instance was poisoned, without a word of the cause. Other turns of
    the same batch are committed as usual."""
    if type(h.store).__name__ != "PostgresProvider":
        pytest.skip("only PostgreSQL refuses a NUL character in an output")

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        result = await ctx.schedule_activity("Echo", inp)
        return result.replace("0", "\x00")

    def echo(inp: str) -> str:
        return inp

    await h.start({"Orch": orch}, {"Echo": echo})
    for iid in ("bad", "good-1", "good-2"):
        await h.client.start_orchestration(iid, "Orch", "a0b" if iid == "bad" else "ab")
    for iid in ("good-1", "good-2"):
        assert output(await h.client.wait_for_orchestration(iid, 30)) == "ab"
    details = failure(await h.client.wait_for_orchestration("bad", 30))  # before: Running, then poison
    assert details.error_type == "PayloadError", details
    assert "the store refused what this turn produced" in details.message and "0x00" in details.message, details
