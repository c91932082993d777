"""``ctx.sleep_until(when)`` (issue 16): a durable timer due at a moment, not after a delay.

The due time is the moment given, recorded in ``TimerCreated.fire_at_ms``; a
replay at any later time matches it and never recomputes it from the clock. A
moment already past fires at once, like a zero timer; a naive ``datetime`` is
refused with a :class:`ConfigurationError` naming the fix. The engine cases run
from synthetic histories (from scratch and as cached turns); the flow runs on
every store in both replay modes with a ``VirtualClock`` (no real sleeping).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from duroxide_runtime import (
    ConfigurationError, Event, OrchestrationContext, OrchestrationStatus, Provider, VirtualClock,
)
from duroxide_runtime.engine.output import Status

from .engine_factories import NOW, T0, kinds, start, started, timer_created, timer_message, turn
from .support import PROVIDERS, REPLAY_MODES, Harness, drop_store, make_store

pytestmark = pytest.mark.timeout(60)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


# -- the engine ------------------------------------------------------------------------------------


async def _until(ctx: OrchestrationContext, when_iso: str) -> str:
    await ctx.sleep_until(datetime.fromisoformat(when_iso))
    return "woke"


def test_the_timer_is_due_at_the_moment_given() -> None:
    when = _at(NOW + 90_000).astimezone(ZoneInfo("America/New_York"))  # any time zone: the same moment
    result = turn(_until, [], start(when.isoformat()))
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "TimerCreated"]
    timer = result.output.new_events[1]
    assert isinstance(timer, Event.TimerCreated) and timer.fire_at_ms == NOW + 90_000
    assert [(getattr(m, "fire_at_ms"), at) for m, at in result.output.messages] == [(NOW + 90_000, NOW + 90_000)]


def test_a_replay_at_a_later_time_matches_the_recorded_timer_and_finishes() -> None:
    # Recorded at T0 for T0 + 5 s; replayed a minute later (NOW): the due time is the argument's,
    # the clock has no say, so the replay matches and the firing completes the code.
    history = [started(_at(T0 + 5000).isoformat()), timer_created(2, 5000)]
    result = turn(_until, history, timer_message(2, 5000))
    assert kinds(result.output.new_events) == ["TimerFired", "OrchestrationCompleted"]
    assert result.status is Status.COMPLETED


def test_a_moment_already_past_fires_at_once_like_a_zero_timer() -> None:
    result = turn(_until, [], start(_at(T0 - 86_400_000).isoformat()))
    timer = result.output.new_events[1]
    assert isinstance(timer, Event.TimerCreated) and timer.fire_at_ms == NOW == timer.timestamp_ms


@pytest.mark.parametrize("when, problem", [
    ("2030-01-01T09:00:00", "naive datetime"),
    ("9999-01-01T00:00:00+00:00", "over the limit"),
])
def test_a_naive_or_too_distant_moment_fails_the_code_with_a_configuration_error(when: str, problem: str) -> None:
    result = turn(_until, [], start(when))
    assert result.status is Status.FAILED and result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "ConfigurationError" and problem in result.outcome.error.message
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "OrchestrationFailed"]  # nothing recorded


def test_the_error_names_the_fix() -> None:
    async def naive(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.sleep_until(datetime(2030, 1, 1, 9, 0))
        except ConfigurationError as err:
            return f"{err.message} | {err.fix}"
        return "slept"

    result = turn(naive, [], start())
    assert result.outcome is not None and result.outcome.output is not None
    assert "naive datetime" in result.outcome.output and "tzinfo=timezone.utc" in result.outcome.output
    not_a_datetime = turn(_until_value, [], start())
    assert not_a_datetime.outcome is not None and not_a_datetime.outcome.error is not None
    assert not_a_datetime.outcome.error.message.startswith("sleep_until time must be a datetime, got int")


async def _until_value(ctx: OrchestrationContext, _: str) -> str:
    await ctx.sleep_until(1_700_000_000)  # type: ignore[arg-type]  # a number is not a moment
    return "slept"


# -- every store, both replay modes, in virtual time -------------------------------------------------


@pytest.fixture(params=PROVIDERS)
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Provider, VirtualClock]]:
    clock = VirtualClock()
    store = await make_store(str(request.param), tmp_path, clock=clock)
    try:
        yield store, clock
    finally:
        await drop_store(store)


@pytest.fixture(params=REPLAY_MODES)
async def harness_on_a_clock(clocked: tuple[Provider, VirtualClock], request: pytest.FixtureRequest,
                             ) -> AsyncIterator[Harness]:
    """A harness (as the suite's ``harness`` fixture) whose store runs on a ``VirtualClock``."""
    h = Harness(clocked[0], str(request.param))
    try:
        yield h
    finally:
        await h.stop()
        await clocked[1].aclose()  # the clock's own task ends with the test


async def _alarm(ctx: OrchestrationContext, when_iso: str) -> str:
    when = datetime.fromisoformat(when_iso)
    await ctx.sleep_until(when)
    rang = await ctx.schedule_activity("Ring", when_iso)
    await ctx.sleep_until(when - timedelta(days=1))  # past by now: fires at once
    return rang


async def _ring(when_iso: str) -> str:
    return f"rang for {when_iso}"


async def test_sleep_until_wakes_at_the_moment_on_every_store(harness_on_a_clock: Harness) -> None:
    h = harness_on_a_clock
    clock = h.store.clock
    assert isinstance(clock, VirtualClock)
    when = datetime(2024, 1, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris"))  # 08:30 UTC: 8.5 h after the start
    await h.start({"Alarm": _alarm}, {"Ring": _ring})
    await h.client.start_orchestration("alarm-1", "Alarm", when.isoformat())
    status = await h.client.wait_for_orchestration("alarm-1", timedelta(days=2))
    assert status == OrchestrationStatus.Completed(output=f"rang for {when.isoformat()}")
    await clock.until_idle()
    assert clock.monotonic() == 8.5 * 3600  # it woke at the moment, and the past one cost no time
    history = await h.client.read_history("alarm-1")
    timers = [e for e in history if isinstance(e, Event.TimerCreated)]
    due = int(when.timestamp() * 1000)
    assert [t.fire_at_ms for t in timers] == [due, due]  # the second: due at once, when it was created
    assert timers[1].timestamp_ms == due
    fired = [e for e in history if isinstance(e, Event.TimerFired)]
    assert [e.timestamp_ms for e in fired] == [due, due]
