"""The turn watchdog and lock renewal, through a real runtime (issue 11; issue 10, defect 2).

* A ``while True:`` orchestration beside 100 healthy instances: the healthy
  ones complete, the stuck one is stopped with OrchestrationStuckError
  (logged at ERROR with its instance and line) and finally fails; shutdown
  completes. Every store, both replay modes.
* Slow but valid turns with two processes: a 7 s CPU-bound turn and 64 turns
  of 0.15 s each (a batch that outlasts the 5 s lock) all commit, exactly
  once, and nothing is poisoned. Real worker processes on a SQLite file and
  on PostgreSQL, default RuntimeOptions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from duroxide_runtime import Client, OrchestrationContext, OrchestrationStatus, PostgresProvider, Provider, SqliteProvider
from duroxide_runtime.history import Event

from . import slow_turn_worker
from .support import Harness, Ticker, own_pg_database
from .worker_process import WorkerProcess

WORKER = Path(__file__).with_name("slow_turn_worker.py")


async def spin(ctx: OrchestrationContext, _: str) -> str:
    await ctx.schedule_timer(0)
    n = 0
    while True:  # never yields: the watchdog must stop this turn
        n += 1


async def healthy(ctx: OrchestrationContext, name: str) -> str:
    await ctx.schedule_timer(0)
    return f"ok:{name}"


async def test_a_turn_that_never_yields_is_stopped_and_the_others_complete(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="duroxide.dispatcher")
    # A healthy step takes microseconds; 1 s is far beyond what a busy machine adds to one (a
    # healthy turn stopped would fail the test), and still stops the spinning one quickly.
    await harness.start({"Spin": spin, "Healthy": healthy}, turn_timeout=1.0, max_attempts=2)
    client = harness.client
    await client.start_orchestration("spin", "Spin", "")
    for i in range(100):
        await client.start_orchestration(f"h{i}", "Healthy", str(i))
    for i in range(100):
        status = await client.wait_for_orchestration(f"h{i}", timedelta(seconds=120))
        assert status == OrchestrationStatus.Completed(output=f"ok:{i}"), (i, status)
    stuck = await client.wait_for_orchestration("spin", timedelta(seconds=120))
    assert isinstance(stuck, OrchestrationStatus.Failed), stuck
    assert stuck.details.error_type == "PoisonMessageError"
    assert "OrchestrationStuckError" in stuck.details.message and "test_engine_watchdog.py" in stuck.details.message
    stops = [r for r in caplog.records if "without yielding" in r.getMessage()]
    assert stops and all(getattr(r, "instance_id", None) == "spin" for r in stops)
    assert "while True" not in stops[0].getMessage()  # the line number, not the source text
    assert f"test_engine_watchdog.py:{spin.__code__.co_firstlineno + 3}" in stops[0].getMessage()
    await asyncio.wait_for(harness.stop(), 60)  # shutdown completes


async def long_stepping(ctx: OrchestrationContext, steps: str) -> str:
    await ctx.schedule_timer(0)
    total = 0
    for _ in range(int(steps)):
        total += sum(range(20_000))  # CPU between steps: hundreds of milliseconds in all
        await asyncio.sleep(0)  # one step of the orchestration loop
    return f"{total}:{threading.current_thread().name}"


async def test_a_long_turn_leaves_the_event_loop_and_commits_once(harness: Harness) -> None:
    """Turns start on the event loop; one that runs past its budget is redone on the turn thread.

    The event loop keeps running meanwhile (its other tasks tick), and the redone turn
    commits exactly once with the right result.
    """
    await harness.start({"Long": long_stepping, "Healthy": healthy})
    async with Ticker().running() as ticker:
        await harness.client.start_orchestration("long", "Long", "600")
        status = await harness.client.wait_for_orchestration("long", timedelta(seconds=120))
    expected = 600 * sum(range(20_000))
    assert status == OrchestrationStatus.Completed(output=f"{expected}:duroxide-turns"), status
    assert ticker.ticks > 10  # the loop was not held for the turn's hundreds of milliseconds
    history = await harness.client.read_history("long")
    assert sum(isinstance(e, Event.OrchestrationCompleted) for e in history) == 1
    await harness.client.start_orchestration("after", "Healthy", "x")  # the pipeline goes on
    assert await harness.client.wait_for_orchestration("after", timedelta(seconds=60)) == \
        OrchestrationStatus.Completed(output="ok:x")


async def raises_in_callback(ctx: OrchestrationContext, _: str) -> str:
    def broken() -> None:
        raise ValueError("callback bug")

    asyncio.get_running_loop().call_soon(broken)
    await ctx.schedule_timer(0)
    return "went on"


async def background_task_fails(ctx: OrchestrationContext, _: str) -> str:
    async def side() -> None:
        raise KeyError("background bug")

    task = asyncio.create_task(side())
    await ctx.schedule_timer(0)
    del task  # never awaited: its error must still be reported
    return "went on"


async def test_errors_in_callbacks_and_unawaited_tasks_are_warnings_naming_the_instance(
        cached_harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="duroxide")
    await cached_harness.start({"Callback": raises_in_callback, "Background": background_task_fails})
    for iid, name in (("cb", "Callback"), ("bg", "Background")):
        status = await cached_harness.run(iid, name)
        assert status == OrchestrationStatus.Completed(output="went on"), status
    import gc

    def warnings_by_instance() -> dict[str, str]:
        return {getattr(r, "instance_id", None) or "": r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING}

    # asyncio reports an unretrieved task error when the task is collected, which is once the
    # dispatcher has let go of the ended execution (it may still be finishing its commit).
    for _ in range(600):
        gc.collect()
        if "bg" in warnings_by_instance():
            break
        await asyncio.sleep(0.05)
    warnings = warnings_by_instance()
    assert "ValueError: callback bug" in warnings.get("cb", ""), warnings
    assert "KeyError: 'background bug'" in warnings.get("bg", ""), warnings
    assert "test_engine_watchdog.py" in warnings["bg"] and "in side" in warnings["bg"]  # where it was raised


def _calibrate(seconds: float) -> int:
    """How much ``slow_turn_worker.work`` takes ``seconds`` here (measured, so that
    the turns are long on any machine; the assertions never depend on it)."""
    amount = 20_000
    while True:
        started = time.process_time()
        slow_turn_worker.work(amount)
        took = time.process_time() - started
        if took > 0.02:
            return max(1, int(amount * seconds / took))
        amount *= 4


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'slow.db'}"
    else:
        async with own_pg_database("duroxide_slow") as url:
            yield url


async def test_slow_valid_turns_commit_once_with_two_processes(store_url: str, tmp_path: Path) -> None:
    store: Provider = (await SqliteProvider.new(store_url) if store_url.startswith("sqlite")
                       else await PostgresProvider.new(store_url))
    client = Client(store)
    step = _calibrate(0.1)
    slow = f"70:{step}"                 # 7 s of CPU in one turn, 0.1 s per step
    quick = f"1:{int(step * 1.5)}"      # 0.15 s, one step
    workers = [await WorkerProcess.spawn(n, WORKER, [store_url], tmp_path) for n in (1, 2)]
    try:
        await client.start_orchestration("slow", "Compute", slow)
        for i in range(64):
            await client.start_orchestration(f"q{i}", "Compute", quick)
        ids = ["slow", *(f"q{i}" for i in range(64))]
        for iid in ids:
            status = await client.wait_for_orchestration(iid, timedelta(seconds=300))
            assert isinstance(status, OrchestrationStatus.Completed), (iid, status)
        for iid in ids:
            history = await client.read_history(iid)
            assert sum(isinstance(e, Event.OrchestrationStarted) for e in history) == 1, iid
            assert sum(isinstance(e, Event.OrchestrationCompleted) for e in history) == 1, iid
    finally:
        for w in workers:
            await w.stop()
        await store.close()
    logs = "\n".join(w.log_path.read_text(errors="replace") for w in workers)
    assert "PoisonMessageError" not in logs and "lock lost" not in logs, logs[-4000:]
