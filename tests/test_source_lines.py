"""Schedule events record the ``file:line`` of the call that made them (``source``, issue 15).

The explicit API (``ctx.schedule_activity``), the macro form (``durable(f(x))``:
this module is rewritten by the pytest plugin's import hook, which keeps line
numbers) and ``asyncio.sleep`` (a durable timer reached through asyncio and the
orchestration loop) all name the user's line. Replay never compares it: a call
that moved to another line replays. Histories recorded before the field existed
read as ``None``. The engine's own work (a cancellation's grace timer) has none.

Lines are found by ``# MARK:name`` comments, so editing this file moves nothing.
Engine tests run from scratch and as cached turns (``engine_factories.turn``); the
runtime test runs on every store in both replay modes.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from duroxide_macros.prelude import OrchestrationContext, activity, durable, orchestration
from duroxide_runtime import Event, HistoryEvent, OrchestrationStatus, RetryPolicy
from duroxide_runtime.engine.output import Status
from duroxide_runtime.history import decode_event, encode_event

from .engine_factories import (
    activity_completed,
    activity_failed,
    activity_result,
    activity_scheduled,
    cancel,
    kinds,
    start,
    started,
    turn,
)
from .support import Harness

pytestmark = pytest.mark.timeout(120)

_HERE = Path(__file__)


def at(mark: str) -> str:
    """``file:line`` of the line of this module marked ``# MARK:<mark>``, as the runtime records it."""
    hits = [n for n, text in enumerate(_HERE.read_text().splitlines(), 1) if text.rstrip().endswith(f"# MARK:{mark}")]
    assert len(hits) == 1, (mark, hits)
    relative = os.path.relpath(_HERE)
    return f"{_HERE if relative.startswith(os.pardir) else relative}:{hits[0]}"


def sources(events: list[HistoryEvent]) -> list[tuple[str, str | None]]:
    """``(event type, source)`` of the schedule events."""
    return [(type(e).__name__, getattr(e, "source")) for e in events if e.is_schedule]


# -- the explicit API and asyncio ----------------------------------------------------------------


async def every_call(ctx: OrchestrationContext, _: str) -> str:
    ctx.schedule_activity("A", "x")  # MARK:activity
    ctx.schedule_timer(timedelta(seconds=1))  # MARK:timer
    ctx.schedule_sub_orchestration("Child", "c")  # MARK:sub
    ctx.start_orchestration("Audit", "audit-1", "a")  # MARK:detached
    ctx.wait_for_event("approval")  # MARK:wait
    ctx.new_guid()  # MARK:guid
    ctx.set_state("progress", 1)  # MARK:state
    ctx.emit("item")  # MARK:emit
    ctx.wait_for_update("add")  # MARK:update
    await asyncio.sleep(5)  # MARK:sleep
    return "done"


def test_each_kind_of_call_records_its_line() -> None:
    result = turn(every_call, [], start())
    assert sources(result.output.new_events) == [
        ("ActivityScheduled", at("activity")), ("TimerCreated", at("timer")),
        ("SubOrchestrationScheduled", at("sub")), ("OrchestrationChained", at("detached")),
        ("EventSubscribed", at("wait")), ("SystemCall", at("guid")), ("StateSet", at("state")),
        ("StreamEmitted", at("emit")), ("UpdateSubscribed", at("update")), ("TimerCreated", at("sleep"))]


async def _nap(seconds: float) -> None:
    await asyncio.sleep(seconds)  # MARK:nap


async def asyncio_timers(ctx: OrchestrationContext, _: str) -> str:
    napping = asyncio.create_task(_nap(1))
    await asyncio.wait_for(ctx.schedule_activity("A", "x"), timeout=10)  # MARK:wait_for
    await napping
    return "ok"


def test_asyncio_timers_name_the_line_that_awaits_them_even_in_a_task() -> None:
    result = turn(asyncio_timers, [], start())
    assert sources(result.output.new_events) == [
        ("ActivityScheduled", at("wait_for")), ("TimerCreated", at("wait_for")), ("TimerCreated", at("nap"))]


async def retried(ctx: OrchestrationContext, _: str) -> str:
    return await ctx.schedule_activity("A", "x", retry=RetryPolicy(max_attempts=2, backoff=1))  # MARK:retried


def test_every_attempt_and_back_off_of_a_retried_call_names_the_call() -> None:
    # The attempts run in a task of their own: the call's line is taken when it is made.
    first = turn(retried, [], start())
    assert sources(first.output.new_events) == [("ActivityScheduled", at("retried"))]
    history = [started(), *first.output.new_events[1:], activity_failed(3, 2)]
    backoff = turn(retried, history)  # replayed up to the failure, then the back-off is new
    assert sources(backoff.output.new_events) == [("TimerCreated", at("retried"))]


# -- replay ---------------------------------------------------------------------------------------


async def one_activity(ctx: OrchestrationContext, _: str) -> str:
    return await ctx.schedule_activity("A", "x")


def test_a_call_that_moved_to_another_line_replays() -> None:
    moved = Event.ActivityScheduled(event_id=2, timestamp_ms=0, name="A", input="x", source="old/place.py:999")
    result = turn(one_activity, [started(), moved], activity_result(2, "r"))
    assert result.outcome is not None and result.outcome.status is Status.COMPLETED, result.outcome
    assert result.outcome.output == "r"


def test_replay_records_nothing_so_the_recorded_line_stays() -> None:
    moved = Event.ActivityScheduled(event_id=2, timestamp_ms=0, name="A", input="x", source="old/place.py:999")
    result = turn(one_activity, [started(), moved, activity_completed(3, 2, "r")])
    assert kinds(result.output.new_events) == ["OrchestrationCompleted"]


def test_a_record_from_before_the_field_decodes_without_a_source() -> None:
    old = b'{"type":"ActivityScheduled","event_id":2,"timestamp_ms":5,"name":"A","input":"x"}'
    event = decode_event(old)
    assert isinstance(event, Event.ActivityScheduled) and event.source is None and event.name == "A"
    timer = decode_event(b'{"type":"TimerCreated","event_id":3,"timestamp_ms":5,"fire_at_ms":9}')
    assert isinstance(timer, Event.TimerCreated) and timer.source is None
    recorded = Event.ActivityScheduled(event_id=2, timestamp_ms=5, name="A", input="x", source="app.py:7")
    assert orjson.loads(encode_event(recorded))["source"] == "app.py:7"
    again = decode_event(encode_event(recorded))
    assert isinstance(again, Event.ActivityScheduled) and again.source == "app.py:7"


async def cleans_up(ctx: OrchestrationContext, _: str) -> str:
    try:
        return await ctx.schedule_activity("Charge", "x")
    finally:
        await ctx.schedule_activity("Refund", "x")  # MARK:refund


def test_the_engines_own_grace_timer_has_no_source() -> None:
    # Issued by the engine outside orchestration code: no frame of the application is taken for it.
    result = turn(cleans_up, [started(), activity_scheduled(2, "Charge", "x")], cancel("stop", grace_ms=5000))
    assert sources(result.output.new_events) == [("ActivityScheduled", at("refund")), ("TimerCreated", None)]


# -- the macro form (this module is rewritten by the import hook) -----------------------------------


@activity
async def sl_shout(text: str) -> str:
    return text.upper()


@orchestration
async def sl_flow(ctx: OrchestrationContext, text: str) -> str:
    loud = await durable(sl_shout(text))  # MARK:durable
    await asyncio.sleep(0.01)  # MARK:flow_sleep
    echoed = await ctx.schedule_activity("Echo", loud)  # MARK:flow_explicit
    return echoed


def test_durable_calls_name_the_users_line() -> None:
    result = turn(sl_flow.registered_function, [], start('"hi"'))
    assert sources(result.output.new_events) == [("ActivityScheduled", at("durable"))]


async def echo(text: str) -> str:
    return text


async def test_a_runtime_records_the_lines_on_every_store(harness: Harness) -> None:
    await harness.start({sl_flow.name: sl_flow.registered_function},
                        {sl_shout.name: sl_shout.registered_function(), "Echo": echo})
    await sl_flow.start(harness.client, "lines-1", "hi")
    status = await harness.client.wait_for_orchestration("lines-1", timedelta(seconds=30))
    assert isinstance(status, OrchestrationStatus.Completed), status
    history = await harness.client.read_history("lines-1")
    assert sources(history) == [("ActivityScheduled", at("durable")), ("TimerCreated", at("flow_sleep")),
                                ("ActivityScheduled", at("flow_explicit"))]
