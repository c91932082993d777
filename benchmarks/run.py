"""Workloads W1-W4 of ANCHORS.md on a file SQLite store (and later PostgreSQL).

Each workload runs in a fresh temp directory, after one warm-up, ``--runs``
times; we print the median and [min-max]. A baseline measured in the same
run (plain aiosqlite write transactions, one per await) puts the figures in
proportion to what this machine's disk and thread hops allow right now.

    python benchmarks/run.py                    # all workloads on SQLite, 5 runs each
    python benchmarks/run.py W2 --runs 3
    python benchmarks/run.py --store postgres   # DUROXIDE_PG_URL, default the local server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

from duroxide_runtime import (
    ActivityRegistry,
    Client,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    Runtime,
    PostgresProvider,
    Provider,
    SqliteProvider,
)

STORE = "sqlite"
PG_URL = os.environ.get("DUROXIDE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def noop(data: str) -> str:
    return data


async def one_activity(ctx: OrchestrationContext, data: str) -> str:
    return await ctx.schedule_activity("Noop", data)


async def three_activities(ctx: OrchestrationContext, data: str) -> str:
    for _ in range(3):
        data = await ctx.schedule_activity("Noop", data)
    return data


async def fan_out(ctx: OrchestrationContext, data: str) -> str:
    results = await ctx.join([ctx.schedule_activity("Noop", str(i)) for i in range(200)])
    return str(len(results))


async def one_timer(ctx: OrchestrationContext, data: str) -> str:
    await ctx.schedule_timer(1.0)
    return "done"


async def _runtime(path: Path) -> tuple[Provider, Runtime, Client]:
    store: Provider
    if STORE == "postgres":
        store = await PostgresProvider.new(PG_URL, schema=f"bench_{uuid.uuid4().hex[:12]}")
    else:
        store = await SqliteProvider.new(f"sqlite://{path / 'bench.db'}")
    orchestrations = (OrchestrationRegistry.builder().register("One", one_activity)
                      .register("Three", three_activities).register("FanOut", fan_out)
                      .register("Timer", one_timer).build())
    rt = await (Runtime.builder().store(store).orchestrations(orchestrations)
                .activities(ActivityRegistry.builder().register("Noop", noop).build()).start())
    return store, rt, Client(store)


async def _close(rt: Runtime, store: Provider) -> None:
    await rt.shutdown()
    if isinstance(store, PostgresProvider):
        await store.drop_schema()
    await store.close()


def _ok(status: OrchestrationStatus[str]) -> None:
    if not isinstance(status, OrchestrationStatus.Completed):
        raise RuntimeError(f"benchmark instance did not complete: {status}")


async def w1(path: Path) -> float:
    """Median ms from start to observed completion, one activity, 20 in a row."""
    store, rt, client = await _runtime(path)
    times = []
    for i in range(21):
        t0 = time.perf_counter()
        await client.start_orchestration(f"w1-{i}", "One", "x")
        _ok(await client.wait_for_orchestration(f"w1-{i}", 30))
        if i:  # the first one warms the caches
            times.append((time.perf_counter() - t0) * 1000)
    await _close(rt, store)
    return statistics.median(times)


async def w2(path: Path) -> float:
    """Orchestrations/s: 300 started at once, 3 sequential activities each."""
    store, rt, client = await _runtime(path)
    t0 = time.perf_counter()
    await asyncio.gather(*(client.start_orchestration(f"w2-{i}", "Three", "x") for i in range(300)))
    for i in range(300):
        _ok(await client.wait_for_orchestration(f"w2-{i}", 120))
    elapsed = time.perf_counter() - t0
    await _close(rt, store)
    return 300 / elapsed


async def w3(path: Path) -> float:
    """Seconds for one orchestration fanning out 200 activities and joining them."""
    store, rt, client = await _runtime(path)
    t0 = time.perf_counter()
    await client.start_orchestration("w3", "FanOut", "")
    _ok(await client.wait_for_orchestration("w3", 120))
    elapsed = time.perf_counter() - t0
    await _close(rt, store)
    return elapsed


async def w4(path: Path) -> float:
    """Milliseconds of delay past a 1 s durable timer."""
    store, rt, client = await _runtime(path)
    t0 = time.perf_counter()
    await client.start_orchestration("w4", "Timer", "")
    _ok(await client.wait_for_orchestration("w4", 30))
    elapsed = time.perf_counter() - t0
    await _close(rt, store)
    return (elapsed - 1.0) * 1000


async def baseline(path: Path) -> float:
    """Plain aiosqlite: small write transactions per second, one await each (WAL, synchronous=NORMAL)."""
    async with aiosqlite.connect(path / "baseline.db", isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            await db.execute("INSERT INTO t(v) VALUES (?)", (str(i),))
        return n / (time.perf_counter() - t0)


WORKLOADS: dict[str, tuple[Callable[[Path], Awaitable[float]], str, str]] = {
    "W1": (w1, "ms", "latency, lower is better (target <= 5)"),
    "W2": (w2, "orch/s", "throughput, higher is better (target >= 1000)"),
    "W3": (w3, "s", "fan-out 200, lower is better (target <= 0.2)"),
    "W4": (w4, "ms late", "1 s timer, lower is better (target <= 10)"),
    "baseline": (baseline, "tx/s", "aiosqlite autocommit inserts"),
}


async def measure(name: str, runs: int) -> list[float]:
    fn = WORKLOADS[name][0]
    with tempfile.TemporaryDirectory() as tmp:
        await fn(Path(tmp))  # warm-up
    values = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            values.append(await fn(Path(tmp)))
    return values


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", default=["baseline", "W1", "W2", "W3", "W4"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    global STORE
    STORE = args.store
    print(f"store: {STORE}")
    results: dict[str, float] = {}
    for name in args.workloads:
        values = await measure(name, args.runs)
        med = statistics.median(values)
        results[name] = med
        unit, what = WORKLOADS[name][1], WORKLOADS[name][2]
        print(f"{name:8s} {med:10.2f} {unit:7s} [{min(values):.2f}-{max(values):.2f}]  {what}", flush=True)
    if "baseline" in results and "W2" in results:
        # ~7 store transactions per orchestration if nothing were batched
        print(f"W2 / baseline: {results['W2'] / results['baseline']:.3f} orchestrations per raw transaction")


if __name__ == "__main__":
    asyncio.run(main())
