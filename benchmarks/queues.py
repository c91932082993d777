"""What queue limits cost: W2 through a limited queue against W2 without one, in the same run.

W2 is ``benchmarks/run.py``'s: orchestrations of 3 sequential no-op activities,
started one by one as a user's code does, on a SQLite file at the default (full)
durability. The variants, each run in a fresh process, interleaved, ``--runs`` times
(the figure is the median, with [min-max]):

* ``plain`` - W2 as it is (the default queue, no limit).
* ``calls50`` - every activity call in a queue with ``concurrency=50``.
* ``orch50`` - every instance started in a queue with ``concurrency=50`` (instances
  wait for a slot; the store admits them in the dispatcher's fetch).
* ``keys10k`` - ``--keyed`` orchestrations (default 10,000), each under its own
  concurrency key among 10,000, their calls in a queue with ``per_key_concurrency=1``;
  against ``plain10k``, the same number without a queue (the cost of per-key limits
  with 10,000 keys).

Each variant prints orchestrations per second and its ratio to ``plain`` (or
``plain10k``) in the same run; the issue's bar is ``calls50`` within 20 % of ``plain``.

    python benchmarks/queues.py                   # 300 orchestrations, 10,000 keyed, 3 runs
    python benchmarks/queues.py --count 600 --keyed 2000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ["plain", "calls50", "orch50", "plain10k", "keys10k"]
BASE = {"plain": "plain", "calls50": "plain", "orch50": "plain", "plain10k": "plain10k", "keys10k": "plain10k"}
MARK = "QUEUE-BENCH "


async def child(variant: str, count: int, keys: int) -> dict[str, Any]:
    from duroxide_runtime import (
        ActivityRegistry, Client, OrchestrationRegistry, QueueOptions, Runtime, RuntimeOptions, SqliteProvider,
    )

    queue = "work" if variant in ("calls50", "keys10k") else None

    async def noop(data: str) -> str:
        return data

    async def three(ctx: Any, data: str) -> str:
        for _ in range(3):
            data = await ctx.schedule_activity("Noop", data, queue=queue)
        return data

    queues = {"work": QueueOptions(concurrency=50) if variant == "calls50" else QueueOptions(per_key_concurrency=1),
              "jobs": QueueOptions(concurrency=50)}
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteProvider.new(f"sqlite://{Path(tmp) / 'bench.db'}")
        rt = await (Runtime.builder().store(store)
                    .orchestrations(OrchestrationRegistry.builder().register("Three", three).build())
                    .activities(ActivityRegistry.builder().register("Noop", noop).build())
                    .options(RuntimeOptions(queues=queues)).start())
        client = Client(store)
        started_cpu, started = time.process_time(), time.perf_counter()
        ids = [f"b-{n}" for n in range(count)]
        for n, iid in enumerate(ids):
            await client.start_orchestration(iid, "Three", "x", queue="jobs" if variant == "orch50" else None,
                                             concurrency_key=f"key-{n % keys}" if variant == "keys10k" else None)
        for iid in ids:
            status = await client.wait_for_orchestration(iid, 600)
            if status.__class__.__name__ != "Completed":
                raise RuntimeError(f"{iid}: {status}")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        await rt.shutdown()
        await store.close()
    return {"variant": variant, "count": count, "rate": count / elapsed, "cpu_ms": cpu * 1000 / count}


def run_child(variant: str, count: int, keys: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--count", str(count), "--keys", str(keys)],
                         capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith(MARK))
    return dict(json.loads(line[len(MARK):]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="orchestrations of the W2 variants")
    parser.add_argument("--keyed", type=int, default=10_000, help="orchestrations (and keys) of the keyed variants")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, default=10_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(MARK + json.dumps(asyncio.run(child(args.child, args.count, args.keys))), flush=True)
        return
    chosen = [v for v in args.variants.split(",") if v]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in chosen}
    for run in range(args.runs):
        for variant in chosen:  # interleaved: a drift of the machine hits every variant alike
            count = args.keyed if variant in ("plain10k", "keys10k") else args.count
            result = run_child(variant, count, args.keyed)
            results[variant].append(result)
            print(f"run {run + 1} {variant:9} {result['rate']:8.1f} orch/s  {result['cpu_ms']:.2f} ms CPU/orch",
                  file=sys.stderr, flush=True)
    print(f"{'variant':10} {'orch/s (median [min-max])':32} {'CPU ms/orch':12} ratio to base")
    medians = {v: statistics.median(r["rate"] for r in rs) for v, rs in results.items()}
    for variant, rs in results.items():
        rates = [r["rate"] for r in rs]
        base = medians.get(BASE[variant])
        ratio = f"{medians[variant] / base:.2f} x {BASE[variant]}" if base else "-"
        spread = f"{medians[variant]:.1f} [{min(rates):.1f}-{max(rates):.1f}]"
        print(f"{variant:10} {spread:32} {statistics.median(r['cpu_ms'] for r in rs):<12.2f} {ratio}")


if __name__ == "__main__":
    main()
