"""Queue limits across runtime processes, one of them SIGKILLed mid-way (issue 16).

Real processes (tests/queue_worker.py) share one store: 3 on PostgreSQL, 2 on a
SQLite file. Instances, each under one of six concurrency keys, run three ``Hold``
calls at once in a queue with ``concurrency=4, per_key_concurrency=1``, then two
``Tick`` calls in a queue limited to 10 starts a second; the instances themselves
wait in a queue that lets 6 run at once. Once a third of the
``Hold`` calls have ended, a process with a call in flight is SIGKILLed. The
ledger of activity start and end times (each logged inside the call's lease)
then proves that at no moment more than 4 calls, or more than 1 call of a key,
ran, nor more than 6 instances (from an instance's first call to its last: inside
the time it held its slot); that ``Tick`` starts kept to 10 a second within one period's tolerance; and
every instance completed with the right output. The waits are for the ledger and
the store, bounded; nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import Client, OrchestrationStatus, Provider

from . import queue_worker as qw
from .support import PG_URL
from .worker_process import WorkerProcess

pytestmark = pytest.mark.timeout(240)

WORKER = Path(__file__).with_name("queue_worker.py")
INSTANCES = 24
KEYS = 6
BOUND = 120.0


def _ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end at t closes before a start at t)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def _until(what: str, check: Any) -> None:
    deadline = time.monotonic() + BOUND
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind, processes", [("sqlite", 2), ("postgres", 3)])
async def test_limits_hold_across_processes_with_one_killed(kind: str, processes: int, tmp_path: Path) -> None:
    spec = f"sqlite:///{tmp_path / 'queues.db'}" if kind == "sqlite" else f"{PG_URL}#q_{uuid.uuid4().hex[:12]}"
    store: Provider = await qw.open_store(spec)
    ledger = tmp_path / "ledger.jsonl"
    workers = [await WorkerProcess.spawn(n, WORKER, [spec, str(ledger)], tmp_path) for n in range(processes)]
    try:
        client = Client(store)
        keys = {f"q-{i}": f"k{i % KEYS}" for i in range(INSTANCES)}
        for iid, key in keys.items():
            await client.start_orchestration(iid, qw.FLOW, key, concurrency_key=key, queue="flows")

        async def a_third_of_holds_ended() -> bool:
            return sum(1 for r in _ledger(ledger) if r["kind"] == "hold" and r["phase"] == "end") \
                >= INSTANCES * qw.HOLDS // 3
        await _until("a third of the Hold calls ended", a_third_of_holds_ended)
        lines = _ledger(ledger)
        ended = {tuple(r["call"]) + (r["pid"],) for r in lines if r["phase"] == "end"}
        busy = [r["pid"] for r in lines if r["phase"] == "start" and tuple(r["call"]) + (r["pid"],) not in ended]
        victim = next((w for w in workers if w.pid in busy), workers[0])
        killed_at = time.time()
        assert await victim.sigkill() == -signal.SIGKILL

        for iid, key in keys.items():
            status = await client.wait_for_orchestration(iid, BOUND)
            assert isinstance(status, OrchestrationStatus.Completed), (iid, status)
            assert status.output == ",".join([*(f"{key}/{n}" for n in range(qw.HOLDS)),
                                              *(f"{key}/{n}" for n in range(qw.TICKS))])
    finally:
        for w in workers:
            await w.stop()
        drop = getattr(store, "drop_schema", None)
        if drop is not None:
            await drop()
        await store.close()

    lines = _ledger(ledger)
    # A call's run: from its start line to its end line in the same process; one the kill cut
    # short ran until the kill.
    ends = {(tuple(r["call"]), r["pid"]): r["t"] for r in lines if r["phase"] == "end"}
    holds: list[tuple[float, float, str]] = []
    for r in lines:
        if r["phase"] == "start" and r["kind"] == "hold":
            end = ends.get((tuple(r["call"]), r["pid"]))
            assert end is not None or r["pid"] == victim.pid, f"a survivor's call never ended: {r}"
            holds.append((r["t"], end if end is not None else killed_at, r["x"].split("/")[0]))
    assert _most_at_once([(s, e) for s, e, _ in holds]) <= 4
    per_key = {key: _most_at_once([(s, e) for s, e, k in holds if k == key]) for key in keys.values()}
    assert per_key == {key: 1 for key in keys.values()}
    spans: dict[str, list[float]] = {}
    for r in lines:
        iid = r["call"][0]
        end = ends.get((tuple(r["call"]), r["pid"]), killed_at) if r["phase"] == "start" else r["t"]
        first, last = spans.setdefault(iid, [r["t"], end])
        spans[iid] = [min(first, r["t"]), max(last, end)]
    assert len(spans) == INSTANCES
    assert _most_at_once([(s, e) for s, e in spans.values()]) <= qw.FLOWS
    assert {r["pid"] for r in lines if r["kind"] == "hold"} >= {w.pid for w in workers if w is not victim}, \
        "every surviving process took part"
    # Ticks: at most 10 in any second, within one second's tolerance (a start line is written
    # some time after its lease), and overall no faster than 10 a second.
    ticks = sorted(r["t"] for r in lines if r["kind"] == "tick" and r["phase"] == "start")
    assert len(ticks) >= INSTANCES * qw.TICKS
    assert all(ticks[i + 20] - ticks[i] >= 1.0 for i in range(len(ticks) - 20)), "over 20 starts within 1 s"
    assert ticks[-1] - ticks[0] >= (len(ticks) / 10 - 2) * 1.0
