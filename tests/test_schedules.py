"""Cron schedules: every store, both replay modes, time driven by a ManualClock.

Each tick starts exactly one instance (``schedule_id@tick``) even with two
runtimes' schedulers on the store; pause, resume and delete; each catch-up
policy after a full stop; malformed cron and catch-up refused before anything is
stored; a schedule whose orchestration no runtime registers is flagged (and its
ticks still start instances, which wait visibly). The cross-process behaviour is
in tests/test_schedules_processes.py; the store's part in
tests/test_provider_conformance.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duroxide_runtime import (
    CatchUp, Client, InvalidScheduleError, OrchestrationContext, OrchestrationStatus, Provider, Runtime, ScheduleExistsError,
    ScheduleNotFoundError, UnknownOrchestrationError,
)
from duroxide_runtime.errors import ErrorCode
from duroxide_runtime.lograte import background_warnings
from duroxide_runtime.providers.base import ScheduleRecord
from duroxide_runtime.registry import OrchestrationRegistry
from duroxide_runtime.schedules import (
    SKIP_GRACE_MS, check_cron, next_tick_ms, plan_ticks, tick_instance_id,
)
from duroxide_runtime.testing import ManualClock

from .support import PROVIDERS, REPLAY_MODES, Harness, drop_store, eventually, make_store

EVERY_SECOND = "* * * * * *"
T0 = 1_704_067_200_000  # ManualClock's start: 2024-01-01T00:00:00Z


async def echo(ctx: OrchestrationContext, input: str) -> str:
    return f"ran {input} as {ctx.instance_id}"


def tick_id(sid: str, second: int) -> str:
    return tick_instance_id(sid, T0 + second * 1000)


@pytest.fixture(params=PROVIDERS)
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Provider, ManualClock]]:
    clock = ManualClock()
    store = await make_store(str(request.param), tmp_path, clock=clock)
    try:
        yield store, clock
    finally:
        await drop_store(store)


@pytest.fixture(params=REPLAY_MODES)
async def h(clocked: tuple[Provider, ManualClock], request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = Harness(clocked[0], str(request.param))
    try:
        yield harness
    finally:
        await harness.stop()


def clock_of(h: Harness) -> ManualClock:
    clock = h.store.clock
    assert isinstance(clock, ManualClock)
    return clock


async def scheduled_ids(h: Harness, sid: str) -> list[str]:
    return sorted(i.instance_id for i in await h.client.list_instances() if i.instance_id.startswith(sid + "@"))


async def completed(h: Harness, iid: str) -> None:
    status = await h.client.wait_for_orchestration(iid, 15)
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == f"ran x as {iid}", status


async def tick_until(h: Harness, second: int, sid: str = "tick") -> None:
    """Move the clock to T0 + ``second`` s and wait until that tick's instance completed."""
    clock = clock_of(h)
    clock.advance((T0 + second * 1000 - clock.now_ms()) / 1000)
    await eventually(lambda: h.store.get_instance(tick_id(sid, second)), what=f"tick {second}")
    await completed(h, tick_id(sid, second))


# -- the plan, without a store -------------------------------------------------------------


def test_the_plan_of_each_policy_after_a_gap_and_on_time() -> None:
    spec = check_cron(EVERY_SECOND)
    assert plan_ticks(spec, CatchUp.ALL, 10_000, 13_200) == ([10_000, 11_000, 12_000, 13_000], 14_000)
    assert plan_ticks(spec, CatchUp.LATEST, 10_000, 13_200) == ([13_000], 14_000)
    assert plan_ticks(spec, CatchUp.SKIP, 10_000, 13_200) == ([], 14_000)
    for policy in CatchUp:  # on time (one tick due, barely late): every policy starts it
        assert plan_ticks(spec, policy, 10_000, 10_000 + SKIP_GRACE_MS - 1) == ([10_000], 11_000)
    assert plan_ticks(spec, CatchUp.ALL, 10_000, 9_999) == ([], 10_000)
    ticks, after = plan_ticks(spec, CatchUp.ALL, 0, 5_000_000, limit=1000)  # bounded per pass
    assert len(ticks) == 1000 and after == 1_000_000
    daily = check_cron("0 2 * * *")
    assert plan_ticks(daily, CatchUp.SKIP, 7_200_000, 7_200_000 + 1_800_000) == ([], 93_600_000)


def test_cron_fields_are_utc_and_a_sixth_field_is_the_seconds_first() -> None:
    assert next_tick_ms(check_cron("*/10 * * * * *"), T0) == T0 + 10_000
    assert next_tick_ms(check_cron("0 2 * * *"), T0) == T0 + 2 * 3600_000
    assert next_tick_ms(check_cron("30 0 2 * * *"), T0) == T0 + 2 * 3600_000 + 30_000
    assert tick_instance_id("nightly", T0 + 2 * 3600_000) == "nightly@2024-01-01T02:00:00Z"


@pytest.mark.parametrize("cron, words", [
    ("* * * *", "it has 4 fields, not 5 or 6"),
    ("* * * * * * *", "it has 7 fields"),
    ("*/0 * * * *", "'*/0 * * * *' is not a usable schedule"),  # the reason is croniter's own wording
    ("61 * * * *", "'61 * * * *' is not a usable schedule"),
    ("0 0 31 2 *", "'0 0 31 2 *' is not a usable schedule"),
    ("every day", "it has 2 fields"),
])
async def test_a_malformed_cron_is_refused_naming_the_fix_before_anything_is_stored(cron: str, words: str) -> None:
    client = Client(await make_store("memory", Path("."), clock=ManualClock()))
    with pytest.raises(InvalidScheduleError) as caught:
        await client.create_schedule("s", cron, "Echo")
    err = caught.value
    assert err.code is ErrorCode.INVALID_SCHEDULE and err.field == "cron" and words in str(err)
    assert "Fix: write 5 fields" in str(err) and "seconds first" in str(err)
    with pytest.raises(InvalidScheduleError, match="catch_up 'sometimes'.*Fix: pass catch_up='skip'"):
        await client.create_schedule("s", EVERY_SECOND, "Echo", catch_up="sometimes")
    assert await client.list_schedules() == []


# -- every store, both replay modes ----------------------------------------------------------


async def test_each_tick_starts_exactly_one_instance_with_two_schedulers(h: Harness) -> None:
    await h.start({"Echo": echo})
    second = await (Runtime.builder().store(h.store).orchestrations(
        OrchestrationRegistry.builder().register("Echo", echo).build()).options(h.options()).start())
    try:
        info = await h.client.create_schedule("tick", EVERY_SECOND, "Echo", "x", catch_up="all")
        assert (info.next_tick_ms, info.catch_up, info.paused, info.last_instance_id) == (T0 + 1000, CatchUp.ALL,
                                                                                          False, None)
        for s in range(1, 6):
            await tick_until(h, s)
        assert await scheduled_ids(h, "tick") == [tick_id("tick", s) for s in range(1, 6)]
        info = await h.client.get_schedule("tick")
        assert (info.last_tick_ms, info.last_instance_id, info.next_tick_ms) == (T0 + 5000, tick_id("tick", 5),
                                                                                 T0 + 6000)
    finally:
        await second.shutdown(grace=2)


async def test_pause_resume_and_delete(h: Harness) -> None:
    await h.start({"Echo": echo})
    await h.client.create_schedule("tick", EVERY_SECOND, "Echo", "x")
    await tick_until(h, 1)
    paused = await h.client.pause_schedule("tick")
    assert paused.paused and (await h.client.pause_schedule("tick")).paused  # harmless twice
    clock_of(h).advance(3)
    await clock_of(h).settle()
    resumed = await h.client.resume_schedule("tick")
    assert not resumed.paused and resumed.next_tick_ms == T0 + 5000  # the paused ticks are never started
    await tick_until(h, 5)
    assert await scheduled_ids(h, "tick") == [tick_id("tick", 1), tick_id("tick", 5)]
    await h.client.delete_schedule("tick")
    assert await h.client.list_schedules() == []
    clock_of(h).advance(3)
    await clock_of(h).settle()
    assert await scheduled_ids(h, "tick") == [tick_id("tick", 1), tick_id("tick", 5)]  # its instances stay
    for call in (h.client.pause_schedule, h.client.resume_schedule, h.client.delete_schedule, h.client.get_schedule):
        with pytest.raises(ScheduleNotFoundError, match="no schedule 'tick'"):
            await call("tick")


@pytest.mark.parametrize("policy, started_after_gap", [
    (CatchUp.ALL, [6, 7, 8, 9, 10]),
    (CatchUp.LATEST, [10]),
    (CatchUp.SKIP, []),
])
async def test_catch_up_after_a_full_stop_follows_the_policy(h: Harness, policy: CatchUp,
                                                             started_after_gap: list[int]) -> None:
    await h.start({"Echo": echo})
    await h.client.create_schedule("tick", EVERY_SECOND, "Echo", "x", catch_up=policy)
    for s in range(1, 6):
        await tick_until(h, s)
    await h.stop()  # every runtime down for 5 s: ticks 6..10 are missed
    clock_of(h).advance(5)
    await h.start({"Echo": echo})

    async def caught_up() -> bool:  # the restarted scheduler's first pass, at 10 s, moved the next tick on
        return (await h.client.get_schedule("tick")).next_tick_ms == T0 + 11_000

    await eventually(caught_up, what="the first pass after the restart")
    await tick_until(h, 11)  # the first tick after the restart starts whatever the policy
    expected = [*range(1, 6), *started_after_gap, 11]
    for s in started_after_gap:
        await completed(h, tick_id("tick", s))
    assert await scheduled_ids(h, "tick") == [tick_id("tick", s) for s in expected]


async def test_replace_keeps_the_next_tick_of_an_unchanged_cron_and_a_taken_id_is_refused(h: Harness) -> None:
    await h.start({"Echo": echo})
    first = await h.client.create_schedule("tick", "*/10 * * * * *", "Echo", "x")
    clock_of(h).advance(3)
    with pytest.raises(ScheduleExistsError, match="schedule 'tick' already exists.*Fix: pass replace=True"):
        await h.client.create_schedule("tick", "*/10 * * * * *", "Echo", "y")
    same = await h.client.create_schedule("tick", "*/10 * * * * *", "Echo", "y", replace=True)
    assert same.next_tick_ms == first.next_tick_ms == T0 + 10_000 and same.input == "y"
    other = await h.client.create_schedule("tick", "*/5 * * * * *", "Echo", "y", replace=True)
    assert other.next_tick_ms == T0 + 5_000


async def test_an_unregistered_orchestration_is_refused_here_and_flagged_when_scheduled_elsewhere(
        h: Harness) -> None:
    await h.start({"Echo": echo})
    with pytest.raises(UnknownOrchestrationError, match="'Ecoh'.*did you mean 'Echo'"):
        await h.client.create_schedule("typo", EVERY_SECOND, "Ecoh")
    assert await h.client.list_schedules() == []
    # A client that leaves names to the runtimes (the orchestration may run elsewhere).
    await Client(h.store, check_names=False).create_schedule("typo", EVERY_SECOND, "Ecoh", "x")
    await h.client.create_schedule("tick", EVERY_SECOND, "Echo", "x")
    await tick_until(h, 1)
    by_id = {s.schedule_id: s for s in await h.client.list_schedules()}
    assert by_id["tick"].orchestration_registered and not by_id["typo"].orchestration_registered
    # Never silently skipped: its tick started an instance, which waits for a runtime that knows it.
    typo = await eventually(lambda: h.store.get_instance(tick_id("typo", 1)), what="the unregistered tick")
    assert typo.name == "Ecoh" and typo.status == "Pending"


async def test_an_unreadable_schedule_row_is_logged_and_skipped_and_the_others_run(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    # Written past the client's checks (by another version, or by hand): the scheduler must not stop.
    await h.store.put_schedule(ScheduleRecord("broken", "not a cron", "Echo", "x", None, "all", False, T0 + 1000))
    await h.client.create_schedule("tick", EVERY_SECOND, "Echo", "x")
    background_warnings.reset()  # the warning is rate-limited process-wide; an earlier test may have logged it
    with caplog.at_level(logging.WARNING, logger="duroxide.scheduler"):
        await h.start({"Echo": echo})
        await tick_until(h, 1)
        await tick_until(h, 2)
    assert any("schedule 'broken' cannot be run" in r.getMessage() for r in caplog.records)
    assert await scheduled_ids(h, "broken") == []
