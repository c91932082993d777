"""Schedules across real runtime processes on PostgreSQL (issue 16).

1. Three processes (tests/schedule_worker.py) run an every-second schedule
   (``catch_up="all"``) for about 20 s; one is SIGKILLed midway. Every tick from the
   first to the last has exactly one instance, which ran once (one execution, one
   start), and exactly one pass (in one process) started it: the passes' log lines
   name each tick once.
2. Per catch-up policy: two processes run an every-second schedule, all are
   SIGKILLed, nothing runs for 5 s, two new processes start. The pass that finds
   the missed ticks (due from the first unstarted one) starts all of them
   (``all``), the latest only (``latest``) or none (``skip``), and the store holds
   instances for exactly those.

The waits are for the store and the workers' logs, bounded; a slow machine only
makes the stop longer, which no assertion minds.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import CatchUp, Client, OrchestrationStatus, PostgresProvider
from duroxide_runtime.schedules import tick_instance_id

from . import schedule_worker as sw
from .support import PG_URL
from .worker_process import WorkerProcess

pytestmark = pytest.mark.timeout(300)

WORKER = Path(__file__).with_name("schedule_worker.py")
EVERY_SECOND = "* * * * * *"
BOUND = 120.0
_FIRED = re.compile(r"schedule '(?P<sid>[^']+)' fired at (?P<at>\d+) ms, ticks due from (?P<due>\d+) ms "
                    r"\((?P<policy>\w+)\): started (?P<n>\d+): (?P<ids>.*)$")


def _passes(workers: list[WorkerProcess], sid: str) -> list[dict[str, Any]]:
    """The passes that fired ``sid``, from the workers' logs."""
    found = []
    for w in workers:
        for line in w.log_path.read_text(errors="replace").splitlines():
            m = _FIRED.search(line)
            if m and m["sid"] == sid:
                ids = [] if m["ids"].startswith("none") else m["ids"].split()
                assert len(ids) == int(m["n"]), line
                found.append({"at": int(m["at"]), "due": int(m["due"]), "ids": ids, "pid": w.pid})
    return found


async def _until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + BOUND
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)
    return value


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[tuple[str, PostgresProvider]]:
    spec = f"{PG_URL}#s_{uuid.uuid4().hex[:12]}"
    url, _, schema = spec.partition("#")
    store = await PostgresProvider.new(url, schema=schema)
    try:
        yield spec, store
    finally:
        await store.drop_schema()
        await store.close()


async def _ticks_started(client: Client, sid: str) -> list[str]:
    return sorted(i.instance_id for i in await client.list_instances(limit=100_000)
                  if i.instance_id.startswith(sid + "@"))


async def test_every_tick_has_exactly_one_instance_across_three_processes_one_killed(
        pg: tuple[str, PostgresProvider], tmp_path: Path) -> None:
    spec, store = pg
    client = Client(store)
    workers = [await WorkerProcess.spawn(n, WORKER, [spec], tmp_path) for n in range(3)]
    try:
        first = (await client.create_schedule("beat", EVERY_SECOND, sw.BEAT, "x", catch_up="all")).next_tick_ms

        async def started_through(tick: int) -> bool:
            row = await client.get_schedule("beat")
            return row.last_tick_ms is not None and row.last_tick_ms >= tick

        await _until("8 ticks started", lambda: started_through(first + 7_000))
        assert await workers[0].sigkill() == -signal.SIGKILL
        killed_by = (await client.get_schedule("beat")).last_tick_ms  # every tick it can have started
        await _until("20 ticks started", lambda: started_through(first + 19_000))
        last = (await client.pause_schedule("beat")).last_tick_ms
        assert last is not None
        expected = [tick_instance_id("beat", t) for t in range(first, last + 1, 1000)]
        for iid in expected:  # the survivors run them all (the killed one's locks lapse)
            status = await client.wait_for_orchestration(iid, BOUND)
            assert isinstance(status, OrchestrationStatus.Completed) and status.output == "x", (iid, status)
    finally:
        for w in workers:
            await w.stop()
    assert await _ticks_started(client, "beat") == expected  # every tick, no other instance
    for iid in expected:
        assert await client.list_executions(iid) == [1]
        history = await client.read_history(iid)
        assert [type(e).__name__ for e in history].count("OrchestrationStarted") == 1
    started = [iid for p in _passes(workers, "beat") for iid in p["ids"]]
    assert len(started) == len(set(started))  # no tick started by two passes
    # Each tick started by a pass, in one process: those the logs name, and at most the last tick
    # of the killed process, whose log line SIGKILL may have cut between its commit and its write.
    unlogged = [iid for iid in expected if iid not in started]
    assert set(started) <= set(expected) and len(unlogged) <= 1, unlogged
    assert killed_by is not None and all(iid <= tick_instance_id("beat", killed_by) for iid in unlogged), unlogged
    assert len({p["pid"] for p in _passes(workers, "beat") if p["ids"]}) >= 2  # the processes shared the ticks


@pytest.mark.parametrize("policy", list(CatchUp))
async def test_catch_up_after_a_5s_full_stop_follows_the_policy(
        pg: tuple[str, PostgresProvider], tmp_path: Path, policy: CatchUp) -> None:
    spec, store = pg
    client = Client(store)
    workers = [await WorkerProcess.spawn(n, WORKER, [spec], tmp_path) for n in range(2)]
    try:
        first = (await client.create_schedule("cu", EVERY_SECOND, sw.BEAT, "x", catch_up=policy)).next_tick_ms

        async def started_through(tick: int) -> bool:
            row = await client.get_schedule("cu")
            return row.last_tick_ms is not None and row.last_tick_ms >= tick

        await _until("3 ticks started", lambda: started_through(first + 2_000))
        for w in workers:
            assert await w.sigkill() == -signal.SIGKILL
        missed_from = (await client.get_schedule("cu")).next_tick_ms  # the first tick no pass started
        await asyncio.sleep(5)  # the full stop: no runtime runs
        restarted = [await WorkerProcess.spawn(n, WORKER, [spec], tmp_path) for n in (2, 3)]
        workers += restarted

        async def catch_up_pass() -> list[dict[str, Any]]:
            return [p for p in _passes(restarted, "cu") if p["due"] == missed_from]

        [found] = await _until("the pass after the restart", catch_up_pass)
        await _until("a tick after the restart", lambda: started_through(found["at"] + 1_000))
        await client.pause_schedule("cu")
    finally:
        for w in workers:
            await w.stop()
    due = list(range(missed_from, found["at"] + 1, 1000))  # every tick due when the pass ran
    assert len(due) >= 5  # at least the 5 s of the stop
    due_ids = [tick_instance_id("cu", t) for t in due]
    want = {CatchUp.ALL: due_ids, CatchUp.LATEST: due_ids[-1:], CatchUp.SKIP: []}[policy]
    assert found["ids"] == want
    in_gap = [iid for iid in await _ticks_started(client, "cu") if iid in due_ids]
    assert in_gap == want  # the store holds instances for exactly the ticks that pass started
