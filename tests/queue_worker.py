"""A runtime process of the queue-limit test across processes (tests/test_queues_processes.py).

Run:  python tests/queue_worker.py STORE LEDGER      (STORE: sqlite:///path, or a PostgreSQL URL#schema)

It runs ``QFlow`` (three ``Hold`` calls at once in queue ``limited``, then two
``Tick`` calls in queue ``rated``; the test starts its instances in queue ``flows``,
so that at most 6 run at once) with the queues below, prints ``READY <pid>``
once the runtime is started, and runs until SIGTERM or SIGKILL. Every activity
run appends a JSON line when it begins and one when it ends, each with a single
``os.write`` on an ``O_APPEND`` file (no torn or interleaved lines, even at SIGKILL).
A begin line is written after the store leased the call and an end line before it
returns, so each logged interval lies inside the call's lease: the limits hold
for the logged intervals if they hold for the leases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import timedelta

from duroxide_runtime import (
    ActivityRegistry, OrchestrationContext, OrchestrationRegistry, PostgresProvider, Provider, QueueOptions, RateLimit,
    Runtime, RuntimeOptions, SqliteProvider, activity_context,
)

FLOW = "QFlow"
#: The queues every process configures alike.
QUEUES = {
    "limited": QueueOptions(concurrency=4, per_key_concurrency=1),
    "rated": QueueOptions(rate_limit=RateLimit(10, per=timedelta(seconds=1))),
    "flows": QueueOptions(concurrency=6),
}
#: Most instances of queue ``flows`` running at once.
FLOWS = 6
HOLDS, TICKS = 3, 2
_LEDGER = -1


def _log(phase: str, kind: str, x: str) -> None:
    ctx = activity_context()
    line = json.dumps({"phase": phase, "kind": kind, "x": x, "pid": os.getpid(), "t": time.time(),
                       "call": [ctx.instance_id, ctx.execution_id, ctx.event_id]}) + "\n"
    os.write(_LEDGER, line.encode())


async def hold(x: str) -> str:
    _log("start", "hold", x)
    await asyncio.sleep(0.08)  # the work itself: the limit must make calls wait for it
    _log("end", "hold", x)
    return x


async def tick(x: str) -> str:
    _log("start", "tick", x)
    _log("end", "tick", x)
    return x


async def qflow(ctx: OrchestrationContext, key: str) -> str:
    held = await asyncio.gather(*(ctx.schedule_activity("Hold", f"{key}/{n}", queue="limited") for n in range(HOLDS)))
    ticked = await asyncio.gather(*(ctx.schedule_activity("Tick", f"{key}/{n}", queue="rated") for n in range(TICKS)))
    return ",".join([*held, *ticked])


async def open_store(spec: str) -> Provider:
    if spec.startswith("sqlite:"):
        return await SqliteProvider.new(spec)
    url, _, schema = spec.partition("#")
    return await PostgresProvider.new(url, schema=schema, pool_size=4)


async def main(spec: str, ledger_path: str) -> None:
    global _LEDGER
    _LEDGER = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = await open_store(spec)
    rt = await (Runtime.builder().store(store)
                .activities(ActivityRegistry.builder().register("Hold", hold).register("Tick", tick).build())
                .orchestrations(OrchestrationRegistry.builder().register(FLOW, qflow).build())
                # Short leases: the slots of a killed process's calls free soon (renewed while they run).
                .options(RuntimeOptions(queues=QUEUES, activity_lock_timeout=2.0, orchestration_lock_timeout=2.0,
                                        poll_interval=0.05, activity_concurrency=16))
                .start())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", os.getpid(), flush=True)
    await stop.wait()
    await rt.shutdown(grace=2)
    await store.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tests/queue_worker.py STORE LEDGER")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
