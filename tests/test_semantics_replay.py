"""Replay, events, cancellation, continue-as-new and versions, end to end (SEMANTICS 1-10, 19-23).

Every test runs through the ``harness`` fixture: real stores (memory, SQLite
file) in both replay modes (cached live instances, replay from scratch at
every turn). Where a test must prove that replay works even in cached mode,
it restarts the runtime (a fresh runtime has an empty cache, so the next turn
replays the stored history).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from duroxide_runtime import (
    ActivityFailed,
    CorruptHistoryError,
    Event,
    HistoryEvent,
    InstanceNotFoundError,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    SqliteProvider,
    SubOrchestrationFailed,
    VersionPolicy,
)
from duroxide_runtime.history import decode_event, encode_event
from duroxide_runtime.providers.postgres import PostgresProvider
from duroxide_runtime.providers.redis import RedisProvider

from . import redis_raw
from .support import PG_URL, Harness

# --------------------------------------------------------------------------- helpers


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def history_of(h: Harness, iid: str, execution_id: int | None = None) -> list[HistoryEvent]:
    """History of ``iid`` (empty while the instance does not exist yet)."""
    try:
        return await h.client.read_history(iid, execution_id)
    except InstanceNotFoundError:
        return []


async def until_recorded(h: Harness, iid: str, pred: Callable[[HistoryEvent], bool], what: str) -> None:
    """Wait until the current execution of ``iid`` has an event matching ``pred``."""
    async def check() -> bool:
        return any(pred(e) for e in await history_of(h, iid))
    await eventually(check, f"{what} in history of {iid!r}")


async def until_waiting(h: Harness, iid: str, event_name: str) -> None:
    """Wait until ``iid`` has subscribed to external event ``event_name``."""
    await until_recorded(h, iid, lambda e: isinstance(e, Event.EventSubscribed) and e.name == event_name,
                         f"a wait for {event_name!r}")


async def until_raised(h: Harness, iid: str, event_name: str, count: int = 1) -> None:
    """Wait until ``count`` events named ``event_name`` are recorded in the current execution."""
    async def check() -> bool:
        hist = await history_of(h, iid)
        return sum(isinstance(e, Event.EventRaised) and e.name == event_name for e in hist) >= count
    await eventually(check, f"{count} x EventRaised {event_name!r} in {iid!r}")


async def finish(h: Harness, iid: str, timeout: float = 15.0) -> OrchestrationStatus[str]:
    """Wait for ``iid`` to finish; fails the test if it does not."""
    status = await h.client.wait_for_orchestration(iid, timedelta(seconds=timeout))
    assert status.is_terminal, f"{iid!r} did not finish: {status}"
    return status


async def restart(h: Harness, orchestrations: Any, activities: Any = None, **overrides: Any) -> None:
    """Stop the runtime and start a fresh one (empty instance cache) over the same store."""
    await h.stop()
    await h.start(orchestrations, activities, **overrides)


def kinds(history: list[HistoryEvent]) -> list[str]:
    return [type(e).__name__ for e in history]


def failed_details(status: OrchestrationStatus[str]) -> Any:
    assert isinstance(status, OrchestrationStatus.Failed), f"expected Failed, got {status}"
    assert status.details is not None
    return status.details


async def echo(x: str) -> str:
    return f"echo:{x}"


async def rewrite_history(h: Harness, iid: str, execution_id: int,
                          change: Callable[[list[HistoryEvent]], list[HistoryEvent]]) -> None:
    """Tamper with a stored history (the runtime must be stopped)."""
    if isinstance(h.store, SqliteProvider):
        conn = sqlite3.connect(h.store.path, timeout=30)
        try:
            rows = conn.execute("SELECT event FROM history WHERE instance_id=? AND execution_id=? ORDER BY event_id",
                                (iid, execution_id)).fetchall()
            events = change([decode_event(r[0]) for r in rows])
            with conn:
                conn.execute("DELETE FROM history WHERE instance_id=? AND execution_id=?", (iid, execution_id))
                conn.executemany("INSERT INTO history(instance_id, execution_id, event_id, event) VALUES (?,?,?,?)",
                                 [(iid, execution_id, e.event_id, encode_event(e)) for e in events])
        finally:
            conn.close()
    elif isinstance(h.store, PostgresProvider):
        conn = await asyncpg.connect(PG_URL)
        s = h.store.schema
        try:
            rows = await conn.fetch(f"SELECT event FROM {s}.history WHERE instance_id=$1 AND execution_id=$2 "
                                    "ORDER BY event_id", iid, execution_id)
            events = change([decode_event(r[0]) for r in rows])
            async with conn.transaction():
                await conn.execute(f"DELETE FROM {s}.history WHERE instance_id=$1 AND execution_id=$2",
                                   iid, execution_id)
                await conn.executemany(f"INSERT INTO {s}.history(instance_id, execution_id, event_id, event) "
                                       "VALUES ($1,$2,$3,$4)",
                                       [(iid, execution_id, e.event_id, encode_event(e)) for e in events])
        finally:
            await conn.close()
    elif isinstance(h.store, RedisProvider):
        await redis_raw.rewrite_history(h.store, iid, execution_id, change)
    else:
        stored = h.store._history[(iid, execution_id)]  # type: ignore[attr-defined]
        stored[:] = change(list(stored))


# --------------------------------------------------------------------------- 1, 2, 9: turns and event ids


async def test_turn_processes_every_queued_message_at_once(harness: Harness) -> None:
    """Start + two events queued before any runtime runs are handled in one turn (code runs once)."""
    body_runs: list[bool] = []

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        body_runs.append(ctx.is_replaying)
        a = await ctx.schedule_wait("a")
        b = await ctx.schedule_wait("b")
        return a + b

    await harness.client.start_orchestration("t1", "Orch", "")
    assert await harness.client.raise_event("t1", "a", "A") is True
    assert await harness.client.raise_event("t1", "b", "B") is True
    await harness.start({"Orch": orch})
    assert await finish(harness, "t1") == OrchestrationStatus.Completed(output="AB")
    # One turn: even replay-from-scratch never needed to re-run the body.
    assert body_runs == [False]
    history = await harness.client.read_history("t1")
    assert kinds(history) == ["OrchestrationStarted", "EventSubscribed", "EventRaised", "EventSubscribed",
                              "EventRaised", "OrchestrationCompleted"]


# Ids that JSON escapes, or that look like the stores' own separators and patterns: each names its own instance.
ESCAPED_IDS = ['a\\b', 'q"uote', '{"i":"x"}', 'back\\"slash-quote', 'ends-with\\', 'e\u0301\U0001f600', '%s%d*?[]', 'a|b']


async def test_ids_with_escaped_characters_run_their_own_instances(harness: Harness) -> None:
    async def flow(ctx: OrchestrationContext, data: str) -> str:
        echoed = await ctx.schedule_activity("Echo", data)
        await ctx.schedule_timer(0.01)
        event = await ctx.schedule_wait("go")
        return f"{ctx.instance_id}|{echoed}|{event}"

    async def echo(data: str) -> str:
        return data

    await harness.start({"Flow": flow}, {"Echo": echo})
    for iid in ESCAPED_IDS:
        await harness.client.start_orchestration(iid, "Flow", f"in:{iid}")
    for iid in ESCAPED_IDS:
        await until_waiting(harness, iid, "go")
        assert await harness.client.raise_event(iid, "go", f"ev:{iid}")
    for iid in ESCAPED_IDS:
        assert await finish(harness, iid) == OrchestrationStatus.Completed(output=f"{iid}|in:{iid}|ev:{iid}")
    assert sorted(i.instance_id for i in await harness.client.list_instances()) == sorted(ESCAPED_IDS)


async def test_event_ids_increase_and_completions_name_their_schedule(harness: Harness) -> None:
    calls: list[str] = []

    async def act(x: str) -> str:
        calls.append(x)
        return f"r{x}"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        first = await ctx.join([ctx.schedule_activity("Act", "1"), ctx.schedule_activity("Act", "2")])
        await ctx.schedule_timer(0.05)
        await ctx.schedule_wait("go")
        third = await ctx.schedule_activity("Act", "3")
        return ",".join([*first, third])

    orchs, acts = {"Orch": orch}, {"Act": act}
    await harness.start(orchs, acts)
    await harness.client.start_orchestration("ids", "Orch", "")
    await until_waiting(harness, "ids", "go")
    await restart(harness, orchs, acts)  # the next turn replays the stored history
    await harness.client.raise_event("ids", "go", "")
    assert await finish(harness, "ids") == OrchestrationStatus.Completed(output="r1,r2,r3")

    # Nothing is executed twice on replay.
    assert sorted(calls) == ["1", "2", "3"]
    history = await harness.client.read_history("ids")
    assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    by_id = {e.event_id: e for e in history}
    expected_schedule = {Event.ActivityCompleted: Event.ActivityScheduled, Event.TimerFired: Event.TimerCreated}
    completed: list[int] = []
    for e in history:
        if type(e) in expected_schedule:
            source = by_id[e.source_event_id]  # type: ignore[attr-defined]
            assert isinstance(source, expected_schedule[type(e)]), (e, source)
            assert source.event_id < e.event_id
            completed.append(source.event_id)
    assert len(completed) == len(set(completed)) == 4
    results = {by_id[e.source_event_id].input: e.result  # type: ignore[attr-defined]
               for e in history if isinstance(e, Event.ActivityCompleted)}
    assert results == {"1": "r1", "2": "r2", "3": "r3"}


async def test_cached_mode_resumes_the_live_instance_instead_of_replaying(harness: Harness) -> None:
    body_runs: list[bool] = []

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        body_runs.append(ctx.is_replaying)
        out = ""
        for i in range(4):
            out += await ctx.schedule_activity("Echo", str(i))
        return out

    await harness.start({"Orch": orch}, {"Echo": echo})
    assert await harness.run("c1", "Orch") == OrchestrationStatus.Completed(
        output="echo:0echo:1echo:2echo:3")
    if harness.replay_mode == "cached":
        assert body_runs == [False]  # started once, resumed with each completion
    else:
        assert len(body_runs) >= 2 and body_runs[0] is False and all(body_runs[1:])


# --------------------------------------------------------------------------- 3, 4: schedule matching


async def _run_until_go(h: Harness, orchestrations: Mapping[str, Any], iid: str) -> None:
    await h.start(orchestrations, {"Step": echo, "Other": echo})
    await h.client.start_orchestration(iid, "Flow", "x")
    await until_waiting(h, iid, "go")


async def _original(ctx: OrchestrationContext, inp: str) -> str:
    await ctx.schedule_activity("Step", inp)
    await ctx.schedule_wait("go")
    return "original"


@pytest.mark.parametrize("change", ["activity_name", "activity_input", "kind", "event_name"])
async def test_changed_code_fails_with_nondeterminism_naming_expected_and_actual(
        harness: Harness, change: str) -> None:
    caught: list[BaseException] = []

    async def changed(ctx: OrchestrationContext, inp: str) -> str:
        try:
            if change == "activity_name":
                await ctx.schedule_activity("Other", inp)
            elif change == "activity_input":
                await ctx.schedule_activity("Step", "y")
            elif change == "kind":
                await ctx.schedule_timer(0.05)
            await ctx.schedule_wait("go" if change != "event_name" else "went")
            if change == "event_name":
                await ctx.schedule_activity("Step", inp)  # never reached: the wait above mismatches
        except BaseException as exc:  # noqa: BLE001 - user code must not be able to swallow it
            caught.append(exc)
            return "swallowed"
        return "changed"

    if change == "event_name":
        async def original(ctx: OrchestrationContext, inp: str) -> str:
            await ctx.schedule_wait("go")
            await ctx.schedule_timer(0.05)
            return "original"
    else:
        original = _original

    await _run_until_go(harness, {"Flow": original}, "nd")
    await restart(harness, {"Flow": changed}, {"Step": echo, "Other": echo})
    await harness.client.raise_event("nd", "go", "")
    status = await finish(harness, "nd")
    details = failed_details(status)
    assert details.error_type == "NonDeterminismError"
    message = details.message
    expected_actual = {
        "activity_name": ("'Step'", "'Other'"),
        "activity_input": ("'x'", "'y'"),
        "kind": ("activity", "timer"),
        "event_name": ("'go'", "'went'"),
    }[change]
    for part in expected_actual:
        assert part in message, (part, message)
    assert "expected" in message.lower()
    assert message.index(expected_actual[0]) < message.index(expected_actual[1]), message
    # The instance's history ends with the failure; nothing new was scheduled after the mismatch.
    history = await harness.client.read_history("nd")
    assert isinstance(history[-1], Event.OrchestrationFailed)
    assert not any(isinstance(e, Event.ActivityScheduled) and e.name == "Other" for e in history)


async def test_code_that_now_returns_earlier_replays_fine(harness: Harness) -> None:
    async def shorter(ctx: OrchestrationContext, inp: str) -> str:
        first = await ctx.schedule_activity("Step", inp)
        return f"short:{first}"

    await _run_until_go(harness, {"Flow": _original}, "short")
    await restart(harness, {"Flow": shorter}, {"Step": echo})
    await harness.client.raise_event("short", "go", "")
    assert await finish(harness, "short") == OrchestrationStatus.Completed(output="short:echo:x")


@pytest.mark.parametrize("tamper", ["no_open_schedule", "wrong_kind"])
async def test_completion_not_matching_an_open_schedule_is_nondeterminism(harness: Harness, tamper: str) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        await ctx.schedule_activity("Step", inp)
        await ctx.schedule_wait("go")
        return "done"

    await _run_until_go(harness, {"Flow": orch}, "bad")
    await harness.stop()

    def change(events: list[HistoryEvent]) -> list[HistoryEvent]:
        out = []
        for e in events:
            if isinstance(e, Event.ActivityCompleted):
                e = (Event.ActivityCompleted(event_id=e.event_id, timestamp_ms=e.timestamp_ms,
                                             source_event_id=99, result=e.result)
                     if tamper == "no_open_schedule" else
                     Event.TimerFired(event_id=e.event_id, timestamp_ms=e.timestamp_ms,
                                      source_event_id=e.source_event_id, fire_at_ms=e.timestamp_ms))
            out.append(e)
        return out

    await rewrite_history(harness, "bad", 1, change)
    await harness.start({"Flow": orch}, {"Step": echo})
    await harness.client.raise_event("bad", "go", "")
    details = failed_details(await finish(harness, "bad"))
    assert details.error_type == "NonDeterminismError"
    assert ("99" if tamper == "no_open_schedule" else "TimerFired") in details.message


# --------------------------------------------------------------------------- 5: select and join


async def test_select_winner_is_earliest_completion_and_replays_identically(harness: Harness) -> None:
    release = asyncio.Event()
    slow_cancelled = asyncio.Event()
    seen: list[tuple[int, str]] = []

    async def slow(_: str) -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:
            slow_cancelled.set()
            raise
        return "slow"

    async def fast(_: str) -> str:
        return "fast"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        idx, done = await ctx.select2(ctx.schedule_activity("Slow", ""), ctx.schedule_activity("Fast", ""))
        seen.append((idx, done.result()))
        await ctx.schedule_wait("end")
        return f"{idx}:{done.result()}"

    orchs, acts = {"Orch": orch}, {"Slow": slow, "Fast": fast}
    await harness.start(orchs, acts, activity_lock_timeout=0.3)
    await harness.client.start_orchestration("sel", "Orch", "")
    await until_waiting(harness, "sel", "end")
    # The loser's activity is cancelled (SEMANTICS 21).
    await asyncio.wait_for(slow_cancelled.wait(), 10)
    await restart(harness, orchs, acts, activity_lock_timeout=0.3)
    await harness.client.raise_event("sel", "end", "")
    assert await finish(harness, "sel") == OrchestrationStatus.Completed(output="1:fast")
    assert set(seen) == {(1, "fast")} and len(seen) >= 2  # replayed at least once, same winner


async def test_select_between_timer_and_event_is_decided_by_history(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        idx1, _f = await ctx.select2(ctx.schedule_wait("never"), ctx.schedule_timer(0.05))
        idx2, won = await ctx.select2(ctx.schedule_timer(30), ctx.schedule_wait("poke"))
        await ctx.schedule_wait("end")
        return f"{idx1}{idx2}:{won.result()}"

    orchs = {"Orch": orch}
    await harness.start(orchs)
    await harness.client.start_orchestration("st", "Orch", "")
    await until_waiting(harness, "st", "poke")
    await harness.client.raise_event("st", "poke", "P")
    await until_waiting(harness, "st", "end")
    await restart(harness, orchs)
    await harness.client.raise_event("st", "end", "")
    assert await finish(harness, "st") == OrchestrationStatus.Completed(output="11:P")


async def test_select_over_already_finished_futures_picks_earliest_completion(harness: Harness) -> None:
    """A task and a durable future that both finished before the select: the earlier completion wins."""
    gate = asyncio.Event()

    async def gated(x: str) -> str:
        await gate.wait()
        return x

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        event = ctx.schedule_wait("a")  # raised before the activity completes

        async def helper() -> str:
            return await ctx.schedule_activity("Gated", "act")

        task = asyncio.create_task(helper())
        await ctx.schedule_wait("go")
        idx, won = await ctx.select2(task, event)
        return f"{idx}:{won.result()}"

    await harness.start({"Orch": orch}, {"Gated": gated})
    await harness.client.start_orchestration("early", "Orch", "")
    await until_waiting(harness, "early", "go")
    await harness.client.raise_event("early", "a", "A")
    await until_raised(harness, "early", "a")
    gate.set()
    await until_recorded(harness, "early", lambda e: isinstance(e, Event.ActivityCompleted), "activity completion")
    history = await harness.client.read_history("early")
    raised = next(e.event_id for e in history if isinstance(e, Event.EventRaised))
    completed = next(e.event_id for e in history if isinstance(e, Event.ActivityCompleted))
    assert raised < completed  # the event is the earlier completion
    await harness.client.raise_event("early", "go", "")
    assert await finish(harness, "early") == OrchestrationStatus.Completed(output="1:A")


async def test_join_returns_results_in_schedule_order(harness: Harness) -> None:
    gates: dict[str, asyncio.Event] = {"a": asyncio.Event(), "c": asyncio.Event()}

    async def gated(x: str) -> str:
        await gates[x].wait()
        return f"gated:{x}"

    async def quick(x: str) -> str:
        return f"quick:{x}"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        first = await ctx.join([ctx.schedule_activity("Gated", "a"), ctx.schedule_activity("Quick", "b")])
        second = await asyncio.gather(ctx.schedule_activity("Gated", "c"), ctx.schedule_activity("Quick", "d"))
        await ctx.schedule_wait("end")
        return ",".join([*first, *second])

    orchs, acts = {"Orch": orch}, {"Gated": gated, "Quick": quick}
    await harness.start(orchs, acts)
    await harness.client.start_orchestration("join", "Orch", "")
    def completed_with(result: str) -> Callable[[HistoryEvent], bool]:
        return lambda e: isinstance(e, Event.ActivityCompleted) and e.result == result

    for gated_input, quick_result in (("a", "quick:b"), ("c", "quick:d")):
        await until_recorded(harness, "join", completed_with(quick_result), quick_result)
        gates[gated_input].set()
    await until_waiting(harness, "join", "end")
    history = await harness.client.read_history("join")
    results = [e.result for e in history if isinstance(e, Event.ActivityCompleted)]
    assert results == ["quick:b", "gated:a", "quick:d", "gated:c"]  # completion order differs from schedule order
    await restart(harness, orchs, acts)
    await harness.client.raise_event("join", "end", "")
    assert await finish(harness, "join") == OrchestrationStatus.Completed(
        output="gated:a,quick:b,gated:c,quick:d")


# --------------------------------------------------------------------------- 6, 7: recorded values, traces


async def test_new_guid_and_utc_now_are_recorded_once_and_replayed_verbatim(harness: Harness) -> None:
    observed: list[tuple[str, datetime, str]] = []

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        g1 = await ctx.new_guid()
        now = await ctx.utc_now()
        g2 = await ctx.new_guid()
        observed.append((g1, now, g2))
        await ctx.schedule_wait("go")
        return json.dumps([g1, now.isoformat(), g2])

    before = datetime.now(timezone.utc)
    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("g", "Orch", "")
    await until_waiting(harness, "g", "go")
    await restart(harness, {"Orch": orch})
    await harness.client.raise_event("g", "go", "")
    status = await finish(harness, "g")
    after = datetime.now(timezone.utc)
    assert isinstance(status, OrchestrationStatus.Completed)
    g1, now_text, g2 = json.loads(status.output)

    assert len(observed) >= 2, "the history was replayed at least once"
    assert len(set(observed)) == 1, f"replay produced different values: {observed}"
    assert (g1, g2) == (observed[0][0], observed[0][2])
    assert g1 != g2
    assert uuid.UUID(g1) and uuid.UUID(g2)  # well-formed GUIDs
    now = datetime.fromisoformat(now_text)
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= now <= after + timedelta(seconds=1)
    calls = [e for e in await harness.client.read_history("g") if isinstance(e, Event.SystemCall)]
    assert [c.op for c in calls] == ["guid", "utcnow", "guid"]
    assert (calls[0].value, calls[2].value) == (g1, g2)


async def test_traces_are_emitted_once_never_on_replay(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="duroxide.orchestration")

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        ctx.trace_info("step one", step=1)
        await ctx.schedule_activity("Echo", "x")
        ctx.trace_warn("step two")
        await asyncio.sleep(0.05)
        ctx.trace("INFO", "step three")
        await ctx.schedule_wait("go")
        ctx.trace_error("done")
        return "ok"

    await harness.start({"Orch": orch}, {"Echo": echo})
    await harness.client.start_orchestration("tr", "Orch", "")
    await until_waiting(harness, "tr", "go")
    await restart(harness, {"Orch": orch}, {"Echo": echo})
    await harness.client.raise_event("tr", "go", "")
    assert await finish(harness, "tr") == OrchestrationStatus.Completed(output="ok")

    records = [r for r in caplog.records if r.name == "duroxide.orchestration"]
    assert [r.getMessage() for r in records] == ["step one", "step two", "step three", "done"]
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, logging.INFO, logging.ERROR]
    first = records[0]
    assert getattr(first, "instance_id") == "tr"
    assert getattr(first, "execution_id") == 1
    assert getattr(first, "orchestration") == "Orch"
    assert getattr(first, "step") == 1


# --------------------------------------------------------------------------- 8, 10: failures


class InsufficientFundsError(Exception):
    pass


async def failing_orchestration(ctx: OrchestrationContext, inp: str) -> str:
    await ctx.schedule_activity("Echo", inp)
    raise InsufficientFundsError(f"balance too low for {inp}")


async def test_escaping_exception_fails_with_type_message_and_traceback(harness: Harness) -> None:
    await harness.start({"Pay": failing_orchestration}, {"Echo": echo})
    status = await harness.run("pay", "Pay", "order-7")
    details = failed_details(status)
    assert details.error_type == "InsufficientFundsError"
    assert details.message == "balance too low for order-7"
    assert isinstance(status, OrchestrationStatus.Failed)
    assert status.error == "InsufficientFundsError: balance too low for order-7"
    assert "Traceback" in details.traceback
    assert "failing_orchestration" in details.traceback
    assert "raise InsufficientFundsError" in details.traceback
    last = (await harness.client.read_history("pay"))[-1]
    assert isinstance(last, Event.OrchestrationFailed)
    assert (last.details.error_type, last.details.message) == (details.error_type, details.message)
    assert "failing_orchestration" in last.details.traceback
    info = await harness.client.get_instance_info("pay")
    assert info.status == "Failed" and info.error is not None and "balance too low" in info.error


async def test_corrupt_history_fails_that_instance_only(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        await ctx.schedule_activity("Echo", inp)
        return await ctx.schedule_wait("go")

    orchs, acts = {"Orch": orch}, {"Echo": echo}
    await harness.start(orchs, acts)
    for iid in ("bad", "good"):
        await harness.client.start_orchestration(iid, "Orch", iid)
    for iid in ("bad", "good"):
        await until_waiting(harness, iid, "go")
    await harness.stop()

    if isinstance(harness.store, SqliteProvider):
        conn = sqlite3.connect(harness.store.path, timeout=30)
        try:
            with conn:
                conn.execute("UPDATE history SET event=? WHERE instance_id='bad' AND event_id=2",
                             (b"\x00this is not an event",))
        finally:
            conn.close()
        with pytest.raises(CorruptHistoryError):
            await harness.client.read_history("bad")
    elif isinstance(harness.store, PostgresProvider):
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"UPDATE {harness.store.schema}.history SET event=$1 "
                               "WHERE instance_id='bad' AND event_id=2", b"\x00this is not an event")
        finally:
            await conn.close()
        with pytest.raises(CorruptHistoryError):
            await harness.client.read_history("bad")
    else:
        await rewrite_history(harness, "bad", 1, lambda events: events[1:])  # first event is no longer the start

    await harness.start(orchs, acts)
    await harness.client.raise_event("bad", "go", "B")
    await harness.client.raise_event("good", "go", "G")
    details = failed_details(await finish(harness, "bad"))
    assert details.error_type == "CorruptHistoryError"
    assert "bad" in details.message
    assert await finish(harness, "good") == OrchestrationStatus.Completed(output="G")
    # The runtime is still alive and takes new work.
    await harness.client.start_orchestration("after", "Orch", "after")
    await until_waiting(harness, "after", "go")
    await harness.client.raise_event("after", "go", "A")
    assert await finish(harness, "after") == OrchestrationStatus.Completed(output="A")


async def test_unreadable_instance_row_does_not_stop_other_instances(harness: Harness) -> None:
    """One instance's unreadable row (here its stored error) must not block the whole store."""
    if not isinstance(harness.store, (SqliteProvider, PostgresProvider)):
        pytest.skip("the in-memory store keeps no serialized rows to corrupt")

    async def dies(ctx: OrchestrationContext, _: str) -> str:
        ctx.schedule_timer(0.05)  # still queued after the instance failed
        raise ValueError("dead")

    async def ok(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    orchs = {"Dies": dies, "Ok": ok}
    await harness.start(orchs)
    assert isinstance(await harness.run("dead", "Dies"), OrchestrationStatus.Failed)
    await harness.stop()
    if isinstance(harness.store, SqliteProvider):
        conn = sqlite3.connect(harness.store.path, timeout=30)
        try:
            with conn:
                conn.execute("UPDATE instances SET error=? WHERE instance_id='dead'", (b"\x00garbage",))
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(PG_URL)
        try:
            await pg.execute(f"UPDATE {harness.store.schema}.instances SET error=$1 WHERE instance_id='dead'",
                             b"\x00garbage")
        finally:
            await pg.close()
    await asyncio.sleep(0.1)  # the dead instance's timer message is due now
    await harness.start(orchs)
    await harness.client.start_orchestration("alive", "Ok", "fine")
    status = await harness.client.wait_for_orchestration("alive", timedelta(seconds=30))  # a safety net only
    assert status == OrchestrationStatus.Completed(output="fine")


# --------------------------------------------------------------------------- asyncio inside orchestrations


async def test_asyncio_primitives_work_and_are_durable(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        a, b = await asyncio.gather(ctx.schedule_activity("Echo", "1"), ctx.schedule_activity("Echo", "2"))

        async def helper(x: str) -> str:
            await asyncio.sleep(0.05)
            return await ctx.schedule_activity("Echo", x)

        c = await asyncio.create_task(helper("3"))
        never: asyncio.Future[Any] = ctx.schedule_wait("never")
        timer: asyncio.Future[Any] = ctx.schedule_timer(0.05)
        done, pending = await asyncio.wait([never, timer], return_when=asyncio.FIRST_COMPLETED)
        assert done == {timer} and pending == {never}
        try:
            await asyncio.wait_for(ctx.schedule_wait("never2"), timeout=0.05)
            d = "no-timeout"
        except asyncio.TimeoutError:
            d = "timeout"
        await ctx.schedule_wait("end")
        return ",".join([a, b, c, d])

    await harness.start({"Orch": orch}, {"Echo": echo})
    await harness.client.start_orchestration("aio", "Orch", "")
    await until_waiting(harness, "aio", "end")
    await restart(harness, {"Orch": orch}, {"Echo": echo})
    await harness.client.raise_event("aio", "end", "")
    assert await finish(harness, "aio") == OrchestrationStatus.Completed(
        output="echo:1,echo:2,echo:3,timeout")
    history = await harness.client.read_history("aio")
    # sleep, the explicit timer and wait_for's timeout are all durable timers.
    assert kinds(history).count("TimerCreated") == 3
    assert kinds(history).count("TimerFired") == 3


@pytest.mark.parametrize("operation", ["foreign_future", "socket", "thread"])
async def test_foreign_futures_and_real_io_fail_the_instance_clearly(harness: Harness, operation: str) -> None:
    foreign: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        if operation == "foreign_future":
            return await foreign
        if operation == "socket":
            await asyncio.open_connection("127.0.0.1", 9)
        else:
            await asyncio.to_thread(time.sleep, 0)
        return "unreachable"

    await harness.start({"Orch": orch})
    details = failed_details(await harness.run("io", "Orch"))
    foreign.cancel()
    assert details.error_type == "NonDeterministicOperationError"
    assert "not allowed inside an orchestration" in details.message
    assert "activity" in details.message  # says how to fix it
    if operation == "socket":
        assert "create_connection" in details.message
    elif operation == "thread":
        assert "run_in_executor" in details.message


# --------------------------------------------------------------------------- 19: external events


async def test_event_raised_before_the_wait_is_kept(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        first = await ctx.schedule_wait("first")
        approval = await ctx.schedule_wait("approval")
        return f"{first}+{approval}"

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("ev", "Orch", "")
    await until_waiting(harness, "ev", "first")
    assert await harness.client.raise_event("ev", "approval", "yes") is True
    await until_raised(harness, "ev", "approval")
    assert await harness.client.raise_event("ev", "first", "1") is True
    assert await finish(harness, "ev") == OrchestrationStatus.Completed(output="1+yes")


async def test_events_are_fifo_per_name_one_per_wait(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_wait("go")
        e1 = await ctx.schedule_wait("e")
        f1 = await ctx.schedule_wait("f")
        e2 = await ctx.schedule_wait("e")
        await ctx.schedule_wait("end")
        e3 = await ctx.schedule_wait("e")
        return ",".join([e1, f1, e2, e3])

    orchs = {"Orch": orch}
    await harness.start(orchs)
    await harness.client.start_orchestration("fifo", "Orch", "")
    await until_waiting(harness, "fifo", "go")
    for name, data in (("e", "e1"), ("f", "f1"), ("e", "e2"), ("f", "f2"), ("e", "e3")):
        await harness.client.raise_event("fifo", name, data)
    await until_raised(harness, "fifo", "e", 3)
    await harness.client.raise_event("fifo", "go", "")
    await until_waiting(harness, "fifo", "end")
    await restart(harness, orchs)  # the buffered "e3" must survive replay too
    await harness.client.raise_event("fifo", "end", "")
    assert await finish(harness, "fifo") == OrchestrationStatus.Completed(output="e1,f1,e2,e3")


async def test_concurrent_waits_on_one_name_get_one_event_each(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        first, second = await asyncio.gather(ctx.schedule_wait("x"), ctx.schedule_wait("x"))
        return f"{first},{second}"

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("cw", "Orch", "")
    await until_recorded(harness, "cw", lambda e: isinstance(e, Event.EventSubscribed) and e.event_id == 3,
                         "both waits")
    await harness.client.raise_event("cw", "x", "x1")
    await until_raised(harness, "cw", "x")
    status = await harness.client.get_orchestration_status("cw")
    assert not status.is_terminal, f"one event must not satisfy two waits: {status}"
    await harness.client.raise_event("cw", "x", "x2")
    assert await finish(harness, "cw") == OrchestrationStatus.Completed(output="x1,x2")


async def test_select_loser_does_not_consume_an_event(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_wait("go")
        idx, won = await ctx.select2(ctx.schedule_wait("a"), ctx.schedule_wait("b"))
        idx2, later = await ctx.select2(ctx.schedule_wait("b"), ctx.schedule_timer(5))
        return f"{idx}:{won.result()}|{idx2}:{later.result()}"

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("loser", "Orch", "")
    await until_waiting(harness, "loser", "go")
    await harness.client.raise_event("loser", "a", "A")
    await harness.client.raise_event("loser", "b", "B")
    await until_raised(harness, "loser", "b")
    await harness.client.raise_event("loser", "go", "")
    assert await finish(harness, "loser") == OrchestrationStatus.Completed(output="0:A|0:B")


async def test_select_loser_wait_leaves_later_event_for_next_wait(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        idx, _f = await ctx.select2(ctx.schedule_wait("ev"), ctx.schedule_timer(0.05))
        data = await ctx.schedule_wait("ev")
        return f"{idx}:{data}"

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("lw", "Orch", "")
    await until_recorded(harness, "lw", lambda e: isinstance(e, Event.TimerFired), "timer fired")
    await until_waiting(harness, "lw", "ev")
    await harness.client.raise_event("lw", "ev", "only")
    assert await finish(harness, "lw") == OrchestrationStatus.Completed(output="1:only")


async def test_raise_event_to_unknown_or_finished_instance(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    await harness.start({"Orch": orch})
    with pytest.raises(InstanceNotFoundError) as raised:
        await harness.client.raise_event("nobody", "ev", "")
    assert "nobody" in str(raised.value)
    assert await harness.run("done", "Orch", "out") == OrchestrationStatus.Completed(output="out")
    before = await harness.client.read_history("done")
    assert await harness.client.raise_event("done", "ev", "late") is False
    assert await harness.client.read_history("done") == before
    assert await harness.client.get_orchestration_status("done") == OrchestrationStatus.Completed(output="out")


# --------------------------------------------------------------------------- 20, 21: cancellation


async def _never_ending(ctx: OrchestrationContext, _: str) -> str:
    await ctx.schedule_wait("never")
    return "not cancelled"


def assert_cancelled(status: OrchestrationStatus[str], reason: str) -> None:
    details = failed_details(status)
    assert "cancel" in details.error_type.lower(), details
    assert reason in details.message, details
    assert isinstance(status, OrchestrationStatus.Failed) and reason in status.error


async def test_cancel_ends_instance_failed_with_reason(harness: Harness) -> None:
    await harness.start({"Orch": _never_ending})
    await harness.client.start_orchestration("c", "Orch", "")
    await until_waiting(harness, "c", "never")
    assert await harness.client.cancel_instance("c", "customer changed their mind") is True
    assert_cancelled(await finish(harness, "c"), "customer changed their mind")
    history = await harness.client.read_history("c")
    assert any(isinstance(e, Event.OrchestrationCancelRequested) and e.reason == "customer changed their mind"
               for e in history)
    assert isinstance(history[-1], Event.OrchestrationFailed)


async def test_cancel_cascades_to_children_and_signals_activities(harness: Harness) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def block(_: str) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "finished"

    async def parent(ctx: OrchestrationContext, _: str) -> str:
        await ctx.join([ctx.schedule_activity("Block", ""), ctx.schedule_sub_orchestration("Child", "")])
        return "not cancelled"

    async def middle(ctx: OrchestrationContext, _: str) -> str:
        await ctx.join([ctx.schedule_sub_orchestration("GrandChild", "", instance_id="grandchild"),
                        ctx.schedule_wait("never")])
        return "not cancelled"

    await harness.start({"Parent": parent, "Child": middle, "GrandChild": _never_ending}, {"Block": block},
                        activity_lock_timeout=0.3)
    await harness.client.start_orchestration("p", "Parent", "")
    await until_recorded(harness, "p", lambda e: isinstance(e, Event.SubOrchestrationScheduled), "child scheduled")
    child = next(e.instance_id for e in await harness.client.read_history("p")
                 if isinstance(e, Event.SubOrchestrationScheduled))
    await until_waiting(harness, child, "never")
    await until_waiting(harness, "grandchild", "never")
    await asyncio.wait_for(started.wait(), 10)

    assert await harness.client.cancel_instance("p", "shutting down the order") is True
    assert_cancelled(await finish(harness, "p"), "shutting down the order")
    for descendant in (child, "grandchild"):
        assert "cancel" in failed_details(await finish(harness, descendant)).error_type.lower(), descendant
    await asyncio.wait_for(cancelled.wait(), 10)


async def test_cancel_is_a_noop_on_finished_instance(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Echo", inp)

    await harness.start({"Orch": orch}, {"Echo": echo})
    assert await harness.run("f", "Orch", "x") == OrchestrationStatus.Completed(output="echo:x")
    before = await harness.client.read_history("f")
    assert await harness.client.cancel_instance("f", "too late") is False
    assert await harness.client.get_orchestration_status("f") == OrchestrationStatus.Completed(output="echo:x")
    assert await harness.client.read_history("f") == before


async def test_repeated_cancel_is_harmless(harness: Harness) -> None:
    await harness.start({"Orch": _never_ending})
    await harness.client.start_orchestration("rc", "Orch", "")
    await until_waiting(harness, "rc", "never")
    assert await harness.client.cancel_instance("rc", "first") is True
    await harness.client.cancel_instance("rc", "second")  # may race the first; must not matter
    assert_cancelled(await finish(harness, "rc"), "first")
    assert await harness.client.cancel_instance("rc", "third") is False
    history = await harness.client.read_history("rc")
    assert kinds(history).count("OrchestrationFailed") == 1
    assert kinds(history).count("OrchestrationCancelRequested") == 1
    assert_cancelled(await harness.client.get_orchestration_status("rc"), "first")


async def test_cancel_before_first_turn(harness: Harness) -> None:
    calls: list[str] = []

    async def act(x: str) -> str:
        calls.append(x)
        return x

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Act", inp)

    await harness.client.start_orchestration("early", "Orch", "early")
    assert await harness.client.cancel_instance("early", "changed plans") is True
    await harness.start({"Orch": orch}, {"Act": act})
    assert_cancelled(await finish(harness, "early"), "changed plans")
    # Work queued after it runs and finishes; the cancelled instance's activity never ran.
    assert await harness.run("probe", "Orch", "probe") == OrchestrationStatus.Completed(output="probe")
    assert calls == ["probe"]


async def test_select_loser_cancels_its_activity(harness: Harness) -> None:
    cancelled = asyncio.Event()

    async def block(_: str) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "finished"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        idx, _f = await ctx.select2(ctx.schedule_activity("Block", ""), ctx.schedule_timer(0.05))
        return str(idx)

    await harness.start({"Orch": orch}, {"Block": block}, activity_lock_timeout=0.3)
    assert await harness.run("sa", "Orch") == OrchestrationStatus.Completed(output="1")
    await asyncio.wait_for(cancelled.wait(), 10)


async def test_select_loser_cancels_its_child(harness: Harness) -> None:
    async def parent(ctx: OrchestrationContext, _: str) -> str:
        idx, _f = await ctx.select2(ctx.schedule_sub_orchestration("Child", ""), ctx.schedule_timer(0.05))
        return str(idx)

    await harness.start({"Parent": parent, "Child": _never_ending})
    assert await harness.run("sc", "Parent") == OrchestrationStatus.Completed(output="1")
    child = next(e.instance_id for e in await harness.client.read_history("sc")
                 if isinstance(e, Event.SubOrchestrationScheduled))
    child_status = await finish(harness, child)
    assert "cancel" in failed_details(child_status).error_type.lower()


# --------------------------------------------------------------------------- 22: continue_as_new


async def test_continue_as_new_starts_fresh_executions(harness: Harness) -> None:
    async def counter(ctx: OrchestrationContext, inp: str) -> str:
        n = int(inp)
        if n == 0:
            ctx.set_custom_status("from-exec-1")
            await ctx.schedule_activity("Echo", "exec1")
            await ctx.schedule_wait("go")
        if n < 2:
            ctx.continue_as_new(str(n + 1))
        final = await ctx.schedule_wait("final")
        return f"done:{n}:{ctx.execution_id}:{final}"

    await harness.start({"Counter": counter}, {"Echo": echo})
    await harness.client.start_orchestration("can", "Counter", "0")
    await until_waiting(harness, "can", "go")
    await harness.client.raise_event("can", "final", "F")  # unconsumed by execution 1: carried over
    await until_raised(harness, "can", "final")
    await harness.client.raise_event("can", "go", "")
    status = await finish(harness, "can")
    assert status == OrchestrationStatus.Completed(output="done:2:3:F", custom_status="from-exec-1")

    assert await harness.client.list_executions("can") == [1, 2, 3]
    info = await harness.client.get_instance_info("can")
    assert info.execution_id == 3 and info.custom_status == "from-exec-1"
    latest = await harness.client.read_history("can")
    assert latest == await harness.client.read_history("can", 3)
    for exec_id, inp in ((1, "0"), (2, "1"), (3, "2")):
        history = await harness.client.read_history("can", exec_id)
        assert isinstance(history[0], Event.OrchestrationStarted) and history[0].input == inp
        assert kinds(history).count("OrchestrationStarted") == 1
        assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    first = await harness.client.read_history("can", 1)
    assert isinstance(first[-1], Event.OrchestrationContinuedAsNew) and first[-1].input == "1"
    assert "ActivityScheduled" in kinds(first) and "ActivityScheduled" not in kinds(latest)
    assert kinds(await harness.client.read_history("can", 2)) == ["OrchestrationStarted",
                                                                   "OrchestrationContinuedAsNew"]
    assert isinstance(latest[-1], Event.OrchestrationCompleted)
    assert any(isinstance(e, Event.EventRaised) and e.data == "F" for e in latest)


async def test_carried_over_events_stay_fifo_with_later_ones(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        await ctx.schedule_wait("go")
        if inp == "first":
            ctx.continue_as_new("second")
        got = [await ctx.schedule_wait("e") for _ in range(3)]
        return ",".join(got)

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("carry", "Orch", "first")
    await until_waiting(harness, "carry", "go")
    await harness.client.raise_event("carry", "e", "e1")
    await harness.client.raise_event("carry", "e", "e2")
    await until_raised(harness, "carry", "e", 2)
    await harness.client.raise_event("carry", "go", "")

    async def second_waits() -> bool:
        return (await harness.client.get_instance_info("carry")).execution_id == 2 and any(
            isinstance(e, Event.EventSubscribed) and e.name == "go" for e in await history_of(harness, "carry"))
    await eventually(second_waits, "execution 2 waiting for 'go'")
    await harness.client.raise_event("carry", "e", "e3")
    await until_raised(harness, "carry", "e", 3)
    await harness.client.raise_event("carry", "go", "")
    assert await finish(harness, "carry") == OrchestrationStatus.Completed(output="e1,e2,e3")


async def test_continue_as_new_drops_pending_work_of_old_execution(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        if inp == "first":
            ctx.schedule_timer(0.05)  # pending, never awaited: must not reach the next execution
            ctx.continue_as_new("second")
        await ctx.schedule_timer(0.4)
        return "second done"

    await harness.start({"Orch": orch})
    assert await harness.run("drop", "Orch", "first") == OrchestrationStatus.Completed(output="second done")
    second = await harness.client.read_history("drop", 2)
    created = [e for e in second if isinstance(e, Event.TimerCreated)]
    fired = [e for e in second if isinstance(e, Event.TimerFired)]
    assert len(created) == 1 and len(fired) == 1
    assert fired[0].fire_at_ms == created[0].fire_at_ms  # not the old execution's earlier timer


# --------------------------------------------------------------------------- 23: versions


def versioned(*versions: tuple[str, Any]) -> OrchestrationRegistry:
    b = OrchestrationRegistry.builder()
    for version, fn in versions:
        b.register_versioned("V", version, fn)
    return b.build()


async def v1(ctx: OrchestrationContext, inp: str) -> str:
    return f"v1:{inp}"


async def v2(ctx: OrchestrationContext, inp: str) -> str:
    return f"v2:{inp}"


async def test_versions_coexist_latest_by_default_or_exact_policy(harness: Harness) -> None:
    rt = await harness.start(versioned(("1.0.0", v1), ("2.0.0", v2), ("1.10.0", v1)))
    assert await harness.run("latest", "V", "a") == OrchestrationStatus.Completed(output="v2:a")
    started = (await harness.client.read_history("latest"))[0]
    assert isinstance(started, Event.OrchestrationStarted) and started.version == "2.0.0"
    assert (await harness.client.get_instance_info("latest")).version == "2.0.0"

    rt.orchestration_registry.set_version_policy("V", VersionPolicy.exact("1.0.0"))
    assert await harness.run("exact", "V", "b") == OrchestrationStatus.Completed(output="v1:b")
    started = (await harness.client.read_history("exact"))[0]
    assert isinstance(started, Event.OrchestrationStarted) and started.version == "1.0.0"

    rt.orchestration_registry.set_version_policy("V", VersionPolicy.LATEST)
    assert await harness.run("back", "V", "c") == OrchestrationStatus.Completed(output="v2:c")


async def test_running_instance_keeps_its_version_after_upgrade(harness: Harness) -> None:
    async def old(ctx: OrchestrationContext, inp: str) -> str:
        data = await ctx.schedule_wait("go")
        return f"old:{inp}:{data}"

    async def new(ctx: OrchestrationContext, inp: str) -> str:
        await ctx.schedule_activity("Echo", inp)  # different shape: replaying old history with it would fail
        return f"new:{inp}"

    await harness.start(versioned(("1.0.0", old)))
    await harness.client.start_orchestration("up", "V", "x")
    await until_waiting(harness, "up", "go")
    await restart(harness, versioned(("1.0.0", old), ("2.0.0", new)), {"Echo": echo})
    await harness.client.raise_event("up", "go", "G")
    assert await finish(harness, "up") == OrchestrationStatus.Completed(output="old:x:G")
    started = (await harness.client.read_history("up"))[0]
    assert isinstance(started, Event.OrchestrationStarted) and started.version == "1.0.0"
    assert (await harness.client.get_instance_info("up")).version == "1.0.0"
    # New instances get the new version.
    assert await harness.run("fresh", "V", "y") == OrchestrationStatus.Completed(output="new:y")


async def test_version_moves_only_at_continue_as_new(harness: Harness) -> None:
    async def old(ctx: OrchestrationContext, inp: str) -> str:
        await ctx.schedule_wait("go")
        ctx.continue_as_new(f"{inp}+")

    await harness.start(versioned(("1.0.0", old)))
    await harness.client.start_orchestration("mv", "V", "x")
    await until_waiting(harness, "mv", "go")
    await restart(harness, versioned(("1.0.0", old), ("2.0.0", v2)))
    await harness.client.raise_event("mv", "go", "")
    assert await finish(harness, "mv") == OrchestrationStatus.Completed(output="v2:x+")
    first = (await harness.client.read_history("mv", 1))[0]
    second = (await harness.client.read_history("mv", 2))[0]
    assert isinstance(first, Event.OrchestrationStarted) and first.version == "1.0.0"
    assert isinstance(second, Event.OrchestrationStarted) and second.version == "2.0.0"
    assert (await harness.client.get_instance_info("mv")).version == "2.0.0"


async def test_continue_as_new_can_pin_a_version(harness: Harness) -> None:
    async def pinned(ctx: OrchestrationContext, inp: str) -> str:
        if inp == "start":
            ctx.continue_as_new("again", version="1.0.0")
        return f"v1:{inp}:{ctx.orchestration_version}"

    await harness.start(versioned(("1.0.0", pinned), ("2.0.0", v2)))
    await harness.client.start_orchestration("pin", "V", "start", version="1.0.0")
    assert await finish(harness, "pin") == OrchestrationStatus.Completed(output="v1:again:1.0.0")
    assert await harness.client.list_executions("pin") == [1, 2]


# --------------------------------------------------------------------------- 16 (as seen from replay)


async def test_activity_and_child_failures_reach_code_and_replay_identically(harness: Harness) -> None:
    async def boom(x: str) -> str:
        raise KeyError(x)

    async def child(ctx: OrchestrationContext, inp: str) -> str:
        raise RuntimeError(f"child says {inp}")

    async def parent(ctx: OrchestrationContext, _: str) -> str:
        out = []
        try:
            await ctx.schedule_activity("Boom", "k")
        except ActivityFailed as err:
            out.append(f"{err.error_type}")
        try:
            await ctx.schedule_sub_orchestration("Child", "no")
        except SubOrchestrationFailed as err:
            out.append(f"{err.error_type}:{err.details.message}")
        await ctx.schedule_wait("end")
        return "|".join(out)

    orchs, acts = {"Parent": parent, "Child": child}, {"Boom": boom}
    await harness.start(orchs, acts)
    await harness.client.start_orchestration("errs", "Parent", "")
    await until_waiting(harness, "errs", "end")
    await restart(harness, orchs, acts)
    await harness.client.raise_event("errs", "end", "")
    assert await finish(harness, "errs") == OrchestrationStatus.Completed(output="KeyError|RuntimeError:child says no")
