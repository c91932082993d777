"""What bounds W2 on SQLite: the connection thread's group-commit cycle, taken apart.

W2 starts its orchestrations one by one, as a user's code does: each start waits
for its own commit before the next is issued. Every write of the SQLite store runs
on one connection thread, which commits whatever is queued as one group (one
transaction, one fsync). So while the runtime is busy, each start waits for the
group in progress to end, then rides in the next one with the runtime's fetches and
commits: the client gets about one start per group, and W2's rate is the rate of
groups. This script runs W2 (``--orchestrations``, default 2,000) on a fresh SQLite
file and prints, as medians or means over the run:

* a start's latency: waiting for the group in progress, running, and the rest of
  its group until the answer is back on the event loop;
* a group: its size, how long it takes, split into the writes' own work (SQL and
  Python), COMMIT (the WAL write and, at full durability, its fsync) and handing
  the answers back to the event loop (which waits for the loop thread to let go
  of the GIL);
* each kind of write: milliseconds per orchestration and per call;
* each thread's CPU time.

It measures through the store's own internals (``sqlite_thread._commit_group``,
``ConnectionThread.write``), wrapped for the run: a diagnostic, not a benchmark of
the public API (that is ``run.py``). Its timing adds a few microseconds per write.

    python benchmarks/group_cycle.py                       # durability full, 2,000 orchestrations
    python benchmarks/group_cycle.py --durability relaxed --orchestrations 5000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duroxide_runtime import (  # noqa: E402 - after the path entry, so the checkout's package is measured
    ActivityRegistry, Client, Durability, OrchestrationRegistry, Runtime, SqliteProvider,
)
from duroxide_runtime.providers import sqlite_thread  # noqa: E402


async def noop(data: str) -> str:
    return data


async def three_activities(ctx: Any, data: str) -> str:
    for _ in range(3):
        data = await ctx.schedule_activity("Noop", data)
    return data


@dataclass
class Recorder:
    """What the wrapped internals saw during the measured part of the run."""

    on: bool = False
    #: Per start: (submitted, began running, ran, answered) perf_counter times.
    starts: list[tuple[float, float, float, float]] = field(default_factory=list)
    #: Per group: (writes, seconds in all, seconds in the writes' own work, seconds in COMMIT, durable).
    groups: list[tuple[int, float, float, float, bool]] = field(default_factory=list)
    by_kind: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    calls: collections.Counter[str] = field(default_factory=collections.Counter)


def instrument(rec: Recorder) -> None:
    """Wrap the connection thread's group commit and the store's start write to time them."""
    original_group = sqlite_thread._commit_group
    original_write = sqlite_thread.ConnectionThread.write

    class TimedConnection:
        """Passes every call through; times COMMIT."""

        def __init__(self, conn: Any) -> None:
            self.conn = conn
            self.commit_s = 0.0

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                t = time.perf_counter()
                try:
                    return self.conn.execute(sql, *args)
                finally:
                    self.commit_s += time.perf_counter() - t
            return self.conn.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

    def timed_group(conn: Any, group: list[Any], durable_sync: str, sync: list[str | None]) -> None:
        if not rec.on:
            return original_group(conn, group, durable_sync, sync)
        own = [0.0]
        for job in group:
            fn = job.fn
            if fn is None:
                continue
            kind = getattr(fn, "__qualname__", "?").replace(".<locals>.op", "").replace("SqliteProvider.", "")

            def timed(c: Any, fn: Any = fn, kind: str = kind) -> Any:
                t = time.perf_counter()
                try:
                    return fn(c.conn if isinstance(c, TimedConnection) else c)
                finally:
                    spent = time.perf_counter() - t
                    own[0] += spent
                    rec.by_kind[kind] += spent
                    rec.calls[kind] += 1

            job.fn = timed
        timed_conn = TimedConnection(conn)
        t = time.perf_counter()
        original_group(timed_conn, group, durable_sync, sync)  # type: ignore[arg-type]  # passes everything through
        rec.groups.append((len(group), time.perf_counter() - t, own[0], timed_conn.commit_s,
                           any(j.durable for j in group)))

    async def timed_write(self: Any, fn: Any, *, durable: bool, what: str, timeout: float) -> Any:
        if not rec.on or what != "a start":
            return await original_write(self, fn, durable=durable, what=what, timeout=timeout)
        ran: list[float] = []

        def run(conn: Any) -> Any:
            ran.append(time.perf_counter())
            result = fn(conn)
            ran.append(time.perf_counter())
            return result

        run.__qualname__ = getattr(fn, "__qualname__", "?")
        submitted = time.perf_counter()
        result = await original_write(self, run, durable=durable, what=what, timeout=timeout)
        rec.starts.append((submitted, ran[0], ran[1], time.perf_counter()))
        return result

    sqlite_thread._commit_group = timed_group
    setattr(sqlite_thread.ConnectionThread, "write", timed_write)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in Path("/proc/self/task").iterdir():
        fields = (tid / "stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(tid.name), f"thread {tid.name}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / 100
    return out


async def main(n: int, durability: str) -> None:
    rec = Recorder()
    instrument(rec)
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteProvider.new(f"sqlite://{tmp}/w2.db", durability=Durability(durability))
        runtime = await (Runtime.builder().store(store)
                         .orchestrations(OrchestrationRegistry.builder().register("Three", three_activities).build())
                         .activities(ActivityRegistry.builder().register("Noop", noop).build()).start())
        client = Client(store)
        for i in range(100):  # warm up
            await client.start_orchestration(f"warm-{i}", "Three", "x")
        for i in range(100):
            await client.wait_for_orchestration(f"warm-{i}", 600)
        cpu0 = thread_cpu()
        rec.on = True
        t0 = time.perf_counter()
        for i in range(n):
            await client.start_orchestration(f"w2-{i}", "Three", "x")
        t1 = time.perf_counter()
        for i in range(n):
            await client.wait_for_orchestration(f"w2-{i}", 600)
        t2 = time.perf_counter()
        rec.on = False
        cpu1 = thread_cpu()
        await runtime.shutdown()
        await store.close()

    ms = 1000.0
    print(f"W2, {n} orchestrations, SQLite, durability {durability}: {n / (t2 - t0):.0f} orch/s; "
          f"the starts took {ms * (t1 - t0) / n:.3f} ms each ({n / (t1 - t0):.0f}/s)")
    s = rec.starts
    print(f"a start (medians, ms): waits for the group in progress "
          f"{ms * statistics.median(r[1] - r[0] for r in s):.3f}, runs {ms * statistics.median(r[2] - r[1] for r in s):.3f}, "
          f"then its group ends and the answer is back {ms * statistics.median(r[3] - r[2] for r in s):.3f}; "
          f"mean latency {ms * statistics.mean(r[3] - r[0] for r in s):.3f}")
    g = rec.groups
    durable = [x for x in g if x[4]]
    print(f"groups: {len(g)} ({len(g) / n:.2f} per orchestration, {len(durable)} durable), median "
          f"{statistics.median(x[0] for x in g):.0f} writes, {ms * statistics.median(x[1] for x in g):.3f} ms")
    for label, part in (("all groups", g), ("durable groups", durable)):
        if part:
            print(f"  {label} (means, ms): writes' own work {ms * statistics.mean(x[2] for x in part):.3f}, "
                  f"COMMIT {ms * statistics.mean(x[3] for x in part):.3f}, BEGIN and answering "
                  f"{ms * statistics.mean(x[1] - x[2] - x[3] for x in part):.3f}")
    print("the writes' own work, by kind (ms per orchestration, per call):")
    for kind, seconds in sorted(rec.by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:40s} {ms * seconds / n:.3f}  {ms * seconds / rec.calls[kind]:.3f}")
    print("CPU per orchestration by thread (ms):")
    for name, total in sorted(cpu1.items(), key=lambda kv: -kv[1]):
        spent = total - cpu0.get(name, 0.0)
        if spent > 0.01:
            print(f"  {name:40s} {ms * spent / n:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orchestrations", type=int, default=2000)
    parser.add_argument("--durability", choices=["full", "relaxed"], default="full")
    args = parser.parse_args()
    asyncio.run(main(args.orchestrations, args.durability))
