"""A runtime process for the Redis crash test (tests/test_redis_crash.py).

Run:  python tests/redis_crash_worker.py REDIS_URL PREFIX LEDGER

It runs ``RFlow`` (an activity, a durable timer, a sub-orchestration ``RChild`` that calls an
activity) on the Redis store, prints ``READY`` once started, and runs until killed. Every
finished activity execution appends one line to LEDGER with a single ``os.write`` on an
``O_APPEND`` file (a SIGKILL never tears a line; processes never interleave).
"""

from __future__ import annotations

import asyncio
import os
import sys

from duroxide_runtime import (
    ActivityRegistry, OrchestrationContext, OrchestrationRegistry, RedisProvider, Runtime, RuntimeOptions,
)

_LEDGER = ""


def expected_output(n: int) -> str:
    """What instance number ``n`` returns (the test checks it independently)."""
    return str((n * 3 + 1) * 3 + 1)


async def step(raw: str) -> str:
    fd = os.open(_LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {raw}\n".encode())
    finally:
        os.close(fd)
    return str(int(raw.split("|")[1]) * 3 + 1)


async def child(ctx: OrchestrationContext, input: str) -> str:
    return await ctx.schedule_activity("Step", f"{ctx.instance_id}|{input}")


async def flow(ctx: OrchestrationContext, input: str) -> str:
    first = await ctx.schedule_activity("Step", f"{ctx.instance_id}|{input}")
    await ctx.schedule_timer(0.05)
    return await ctx.schedule_sub_orchestration("RChild", first, instance_id=f"{ctx.instance_id}-child")


async def main(url: str, prefix: str, ledger: str) -> None:
    global _LEDGER
    _LEDGER = ledger
    store = await RedisProvider.new(url, prefix=prefix)
    orchs = OrchestrationRegistry.builder().register("RFlow", flow).register("RChild", child).build()
    acts = ActivityRegistry.builder().register("Step", step).build()
    # Short leases: a killed process's instances and calls are taken over within seconds.
    options = RuntimeOptions(orchestration_lock_timeout=2.0, activity_lock_timeout=3.0)
    rt = await Runtime.builder().store(store).orchestrations(orchs).activities(acts).options(options).start()
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await rt.shutdown(grace=2)
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
