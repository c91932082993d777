"""``start_orchestration(..., deadline=)`` (issue 16): an instance still running at its deadline is cancelled.

The deadline is recorded in the start (``StartOrchestration`` and
``OrchestrationStarted.deadline_ms``) and the store writes, in the start's own
transaction, a cancellation that stays invisible until the deadline. So the
instance is cancelled at the deadline exactly, with cleanup (the default grace),
even when no runtime ran in between, and ends Failed with
``OrchestrationCancelled: deadline <UTC time> passed``; an instance that ended
first drops it like any late message; continue-as-new keeps the deadline. Bad
deadlines are refused before anything is stored. Every store, both replay
modes, time driven by a ``VirtualClock`` (or a ``ManualClock`` for the store's
own contract): nothing sleeps in real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from duroxide_macros.prelude import Client, OrchestrationContext, OrchestrationFailedError, orchestration
from duroxide_runtime import (
    ConfigurationError, Event, HistoryEvent, InstanceAlreadyExistsError, InvalidInputError, OrchestrationStatus,
    Provider, VirtualClock,
)
from duroxide_runtime.deadlines import DEADLINE_BY, deadline_cancel, deadline_reason
from duroxide_runtime.engine.output import Status
from duroxide_runtime.history import decode_event
from duroxide_runtime.messages import CancelRequest, StartOrchestration, decode_message
from duroxide_runtime.testing import ManualClock

from .engine_factories import INSTANCE, NAME, NOW, T0, VERSION, kinds, timer_message, turn
from .support import PROVIDERS, REPLAY_MODES, Harness, drop_store, make_store

pytestmark = pytest.mark.timeout(60)

START_MS = VirtualClock.START_MS  # 2024-01-01T00:00:00Z
HOUR_MS = 3_600_000


def _failed_by_deadline(status: OrchestrationStatus[str], at_ms: int) -> bool:
    return (isinstance(status, OrchestrationStatus.Failed) and status.details is not None
            and (status.details.error_type, status.details.message) == ("OrchestrationCancelled",
                                                                         deadline_reason(at_ms)))


# -- the engine ------------------------------------------------------------------------------------


async def _waits_then_refunds(ctx: OrchestrationContext, _: str) -> str:
    try:
        return await ctx.schedule_wait("shipped")
    finally:
        await ctx.schedule_activity("Refund", ctx.instance_id)


def _started_with(deadline: int) -> HistoryEvent:
    return Event.OrchestrationStarted(event_id=1, timestamp_ms=T0, name=NAME, version=VERSION, input="0",
                                      deadline_ms=deadline)


def test_a_start_and_its_deadline_in_one_turn_run_the_code_then_its_cleanup() -> None:
    # What a runtime finds after the deadline passed while none ran: both messages at once.
    start = StartOrchestration(instance_id=INSTANCE, name=NAME, version=VERSION, input="", deadline_ms=NOW - 1)
    result = turn(_waits_then_refunds, [], start, deadline_cancel(INSTANCE, NOW - 1))
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "EventSubscribed",
                                               "OrchestrationCancelRequested", "ActivityScheduled", "TimerCreated"]
    first, cancel = result.output.new_events[0], result.output.new_events[2]
    assert isinstance(first, Event.OrchestrationStarted) and first.deadline_ms == NOW - 1
    assert isinstance(cancel, Event.OrchestrationCancelRequested)
    assert (cancel.reason, cancel.by, cancel.grace_ms) == (deadline_reason(NOW - 1), DEADLINE_BY, 30_000)
    assert [w.name for w in result.output.activities] == ["Refund"]


async def _rounds(ctx: OrchestrationContext, n: str) -> str:
    await ctx.schedule_timer(60)
    ctx.continue_as_new(str(int(n) + 1))


def test_continue_as_new_carries_the_deadline_and_a_cancellation_that_came_too_late() -> None:
    deadline = T0 + 60_000
    history = [_started_with(deadline), Event.TimerCreated(event_id=2, timestamp_ms=T0, fire_at_ms=deadline)]
    # The timer and the deadline fell due together: the execution continues as new first.
    result = turn(_rounds, history, timer_message(2, 60_000), deadline_cancel(INSTANCE, deadline))
    assert result.status is Status.CONTINUED_AS_NEW
    sent = [m for m, _ in result.output.messages]
    assert [type(m).__name__ for m in sent] == ["StartOrchestration", "CancelRequest"]
    assert isinstance(sent[0], StartOrchestration) and (sent[0].execution_id, sent[0].deadline_ms) == (2, deadline)
    assert sent[1] == deadline_cancel(INSTANCE, deadline)  # the next execution gets it


def test_records_without_the_field_decode_as_no_deadline() -> None:
    old_start = b'{"k":"start","instance_id":"o-1","name":"Order","version":null,"input":"x","execution_id":1}'
    assert decode_message(old_start).deadline_ms is None
    old_started = b'{"type":"OrchestrationStarted","event_id":1,"timestamp_ms":5,"name":"Order",' \
                  b'"version":"1.0.0","input":"x"}'
    started = decode_event(old_started)
    assert isinstance(started, Event.OrchestrationStarted) and started.deadline_ms is None


# -- every store, both replay modes, in virtual time -------------------------------------------------


@pytest.fixture(params=PROVIDERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def clocked(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Provider, VirtualClock]]:
    clock = VirtualClock()
    store = await make_store(kind, tmp_path, clock=clock)
    try:
        yield store, clock
    finally:
        await drop_store(store)


@pytest.fixture(params=REPLAY_MODES)
async def h(clocked: tuple[Provider, VirtualClock], request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """A harness (as the suite's ``harness`` fixture) whose store runs on a ``VirtualClock``."""
    harness = Harness(clocked[0], str(request.param))
    try:
        yield harness
    finally:
        await harness.stop()
        await clocked[1].aclose()  # the clock's own task ends with the test


def _clock(h: Harness) -> VirtualClock:
    clock = h.store.clock
    assert isinstance(clock, VirtualClock)
    return clock


async def _refund(order: str) -> str:
    return f"refunded {order}"


async def _order(ctx: OrchestrationContext, minutes: str) -> str:
    """Ships after ``minutes`` (or never, on ""); refunds if cancelled."""
    try:
        if minutes:
            await ctx.schedule_timer(timedelta(minutes=float(minutes)))
            return "shipped"
        return await ctx.schedule_wait("shipped")
    except asyncio.CancelledError:
        await ctx.schedule_activity("Refund", ctx.instance_id)
        raise


FUNCTIONS = ({"Order": _order}, {"Refund": _refund})


async def _cancels(h: Harness, instance_id: str) -> list[Event.OrchestrationCancelRequested]:
    return [e for x in await h.client.list_executions(instance_id)
            for e in await h.client.read_history(instance_id, x) if isinstance(e, Event.OrchestrationCancelRequested)]


async def test_an_instance_past_its_deadline_runs_its_cleanup_then_ends_failed(h: Harness) -> None:
    await h.start(*FUNCTIONS)
    await h.client.start_orchestration("late-1", "Order", "", deadline=timedelta(hours=1))
    status = await h.client.wait_for_orchestration("late-1", timedelta(days=1))
    assert _failed_by_deadline(status, START_MS + HOUR_MS), status
    assert isinstance(status, OrchestrationStatus.Failed)
    assert status.error == "OrchestrationCancelled: deadline 2024-01-01T01:00:00.000Z passed"
    history = await h.client.read_history("late-1")
    assert isinstance(history[0], Event.OrchestrationStarted) and history[0].deadline_ms == START_MS + HOUR_MS
    [cancel] = await _cancels(h, "late-1")
    assert (cancel.timestamp_ms, cancel.by) == (START_MS + HOUR_MS, DEADLINE_BY)  # exactly at the deadline
    assert [e.result for e in history if isinstance(e, Event.ActivityCompleted)] == ["refunded late-1"]


async def test_one_that_finishes_first_is_untouched(h: Harness) -> None:
    clock = _clock(h)
    await h.start(*FUNCTIONS)
    await h.client.start_orchestration("quick-1", "Order", "10", deadline=timedelta(hours=1))
    status = await h.client.wait_for_orchestration("quick-1", timedelta(days=1))
    assert status == OrchestrationStatus.Completed(output="shipped")
    before = await h.client.read_history("quick-1")
    await clock.sleep(2 * 3600)  # past the deadline: its cancellation falls due and is dropped
    await clock.until_idle()
    assert await h.client.get_orchestration_status("quick-1") == status
    assert await h.client.read_history("quick-1") == before
    depths = await h.store.queue_depths()
    assert (depths.orchestrator, depths.timers) == (0, 0)  # nothing of it is left queued


async def _round(ctx: OrchestrationContext, n: str) -> str:
    """A round of 25 minutes per execution, for ever; notes the round a cancellation found."""
    try:
        await ctx.schedule_timer(timedelta(minutes=25))
    except asyncio.CancelledError:
        await ctx.schedule_activity("Note", f"cleanup in round {n}")
        raise
    ctx.continue_as_new(str(int(n) + 1))


async def _note(text: str) -> str:
    return text


async def test_continue_as_new_keeps_the_deadline(h: Harness) -> None:
    deadline = datetime(2024, 1, 1, 2, 0, tzinfo=ZoneInfo("Europe/Paris"))  # 01:00 UTC: in round 3 (50-75 min)
    await h.start({"Rounds": _round}, {"Note": _note})
    await h.client.start_orchestration("rounds-1", "Rounds", "1", deadline=deadline)
    status = await h.client.wait_for_orchestration("rounds-1", timedelta(days=1))
    assert _failed_by_deadline(status, START_MS + HOUR_MS), status
    executions = await h.client.list_executions("rounds-1")
    assert executions == [1, 2, 3]
    for x in executions:
        first = (await h.client.read_history("rounds-1", x))[0]
        assert isinstance(first, Event.OrchestrationStarted) and first.deadline_ms == START_MS + HOUR_MS
    last = await h.client.read_history("rounds-1")
    assert [e.result for e in last if isinstance(e, Event.ActivityCompleted)] == ["cleanup in round 3"]
    assert [c.timestamp_ms for c in await _cancels(h, "rounds-1")] == [START_MS + HOUR_MS]


async def test_the_deadline_passes_even_while_no_runtime_runs(h: Harness) -> None:
    clock = _clock(h)
    await h.client.start_orchestration("idle-1", "Order", "", deadline=timedelta(minutes=30))
    await clock.sleep(3600)  # no runtime: nothing runs, the deadline passes
    await h.start(*FUNCTIONS)
    status = await h.client.wait_for_orchestration("idle-1", timedelta(days=1))
    assert _failed_by_deadline(status, START_MS + 30 * 60_000), status
    history = await h.client.read_history("idle-1")
    # Its code ran once, to its first await, and was cancelled there: the cleanup ran.
    assert kinds(history)[:4] == ["OrchestrationStarted", "EventSubscribed", "OrchestrationCancelRequested",
                                  "ActivityScheduled"]
    assert [e.result for e in history if isinstance(e, Event.ActivityCompleted)] == ["refunded idle-1"]


# -- the store's part, and bad input ---------------------------------------------------------------


async def test_the_store_holds_the_deadline_message_back_and_writes_it_only_with_a_new_instance(
        kind: str, tmp_path: Path) -> None:
    clock = ManualClock()
    store = await make_store(kind, tmp_path, clock=clock)
    try:
        at = clock.now_ms() + 60_000
        start = StartOrchestration(instance_id="s-1", name="Order", version=None, input="", deadline_ms=at)
        outcome = await store.start_instance(start, messages=[(deadline_cancel("s-1", at), at)])
        assert outcome.created
        [item] = (await store.fetch_orchestration_items(10, lock_timeout=30.0)).items
        assert [type(m.message).__name__ for m in item.messages] == ["StartOrchestration"]
        await store.abandon_orchestration_item("s-1", item.lock_token, 0.0)
        # A second start of the taken id writes nothing, its messages neither.
        again = await store.start_instance(start, messages=[(deadline_cancel("s-1", at + 1), at + 1)])
        assert not again.created and (await store.queue_depths()).timers == 1
        clock.advance(60)
        [item] = (await store.fetch_orchestration_items(10, lock_timeout=30.0)).items
        assert [m.message for m in item.messages][1] == deadline_cancel("s-1", at)
        assert isinstance(item.messages[1].message, CancelRequest)
    finally:
        await drop_store(store)


@pytest.mark.parametrize("deadline, error, words", [
    (timedelta(0), InvalidInputError, "deadline is timedelta 0:00:00 from now, which is not after now"),
    (timedelta(seconds=-5), InvalidInputError, "not after now"),
    (datetime(2023, 12, 31, tzinfo=timezone.utc), InvalidInputError, "not after now (2024-01-01T00:00:00.000Z)"),
    (timedelta(days=365 * 101), InvalidInputError, "over 100 years ahead"),
    (datetime(2030, 1, 1), ConfigurationError, "deadline is a naive datetime"),
    (3600, ConfigurationError, "deadline must be a timedelta, a datetime or None, got int"),
])
async def test_a_bad_deadline_is_refused_before_anything_is_stored(
        deadline: object, error: type[Exception], words: str) -> None:
    from duroxide_runtime import InMemoryProvider

    client = Client(InMemoryProvider(clock=ManualClock()))
    with pytest.raises(error) as raised:
        await client.start_orchestration("bad-1", "Order", "", deadline=deadline)  # type: ignore[arg-type]
    assert words in str(raised.value) and getattr(raised.value, "fix", None)
    assert await client.store.get_instance("bad-1") is None
    assert (await client.store.queue_depths()).timers == 0


async def test_a_taken_id_with_a_deadline_is_refused_as_any_start_and_queues_nothing(kind: str,
                                                                                    tmp_path: Path) -> None:
    store = await make_store(kind, tmp_path, clock=ManualClock())
    try:
        client = Client(store)
        assert await client.start_orchestration("t-1", "Order", "", deadline=timedelta(hours=1)) == "t-1"
        with pytest.raises(InstanceAlreadyExistsError):
            await client.start_orchestration("t-1", "Order", "", deadline=timedelta(minutes=5))
        assert (await store.queue_depths()).timers == 1  # the first start's deadline only
    finally:
        await drop_store(store)


# -- the macro layer ------------------------------------------------------------------------------


@orchestration
async def dl_wait_for_go(ctx: OrchestrationContext, n: int) -> int:
    await ctx.wait_for_event("go")
    return n


async def test_start_and_run_pass_the_deadline_through(virtual_clock: VirtualClock, duroxide_runtime: object,
                                                       duroxide_client: Client) -> None:
    with pytest.raises(OrchestrationFailedError, match="deadline 2024-01-01T00:05:00.000Z passed"):
        await dl_wait_for_go.run(duroxide_client, "dl-1", 1, timeout=timedelta(hours=1),
                                 deadline=timedelta(minutes=5))
    assert await dl_wait_for_go.start(duroxide_client, "dl-2", 2,
                                      deadline=datetime(2024, 1, 1, 1, 0, tzinfo=timezone.utc)) == "dl-2"
    assert await duroxide_client.raise_event("dl-2", "go")
    assert await dl_wait_for_go.wait(duroxide_client, "dl-2", timedelta(hours=2)) == \
        OrchestrationStatus.Completed(output=2)
