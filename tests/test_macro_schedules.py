"""``@orchestration(schedule=...)`` in the macro layer: the cron is checked at decoration, and
``duroxide_main`` creates (or keeps) the schedule named after the orchestration at start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duroxide_macros import discovery
from duroxide_macros.prelude import (
    CatchUp, Client, InMemoryProvider, InvalidScheduleError, OrchestrationContext, ScheduleInfo, duroxide_main,
    orchestration,
)
from duroxide_macros.ambient import ambient_client
from duroxide_runtime.testing import ManualClock


@orchestration(schedule="*/2 * * * * *", catch_up="all", schedule_input="hi")
async def ms_tick(ctx: OrchestrationContext, greeting: str) -> str:
    return greeting


# Out of the process-wide registry until a test asks for it: another test's duroxide_main in
# this process must not create this schedule.
discovery._orchestrations.pop((ms_tick.name, ms_tick.version))


@pytest.fixture
def registered_schedule() -> Iterator[None]:
    discovery.register_orchestration(ms_tick)
    try:
        yield
    finally:
        discovery._orchestrations.pop((ms_tick.name, ms_tick.version), None)


def test_a_malformed_schedule_is_refused_at_declaration_and_nothing_is_registered() -> None:
    before = dict(discovery._orchestrations)
    with pytest.raises(InvalidScheduleError, match="schedule '\\*/0 \\* \\* \\* \\*' is not a usable schedule.*Fix:"):
        @orchestration(schedule="*/0 * * * *")
        async def ms_bad(ctx: OrchestrationContext) -> None:
            return None
    with pytest.raises(InvalidScheduleError, match="catch_up 'often'"):
        @orchestration(schedule="* * * * *", catch_up="often")  # type: ignore[call-overload, untyped-decorator]
        async def ms_bad2(ctx: OrchestrationContext) -> None:
            return None
    assert discovery._orchestrations == before


async def test_declared_schedules_are_created_once_and_kept_on_every_start(registered_schedule: None) -> None:
    clock = ManualClock()
    client = Client(InMemoryProvider(clock=clock))
    assert await discovery.create_declared_schedules(client) == ["ms_tick"]
    first = await client.get_schedule("ms_tick")
    assert (first.cron, first.orchestration, first.input, first.catch_up) == ("*/2 * * * * *", "ms_tick", '"hi"',
                                                                              CatchUp.ALL)
    clock.advance(1)
    await discovery.create_declared_schedules(client)  # a second process, or a restart
    assert (await client.get_schedule("ms_tick")).next_tick_ms == first.next_tick_ms


def test_duroxide_main_creates_the_declared_schedule_at_start(registered_schedule: None) -> None:
    @duroxide_main(provider="memory")
    async def main() -> list[ScheduleInfo]:
        return await ambient_client().list_schedules()

    [info] = main()
    assert (info.schedule_id, info.cron, info.catch_up, info.input) == ("ms_tick", "*/2 * * * * *", CatchUp.ALL, '"hi"')
