"""A runtime process for the slow-turn test (tests/test_engine_watchdog.py).

Run:  python tests/slow_turn_worker.py STORE_URL

STORE_URL is ``sqlite:///path`` or a PostgreSQL URL. The process runs the
``Compute`` orchestration with default RuntimeOptions (5 s instance locks),
prints ``READY`` once its runtime runs, and stops on SIGTERM.

``Compute`` is CPU-bound orchestration code: its input is ``"STEPS:WORK"``
and it runs STEPS steps of ``work(WORK)`` (a fixed amount of arithmetic the
test calibrates to a duration) with ``await asyncio.sleep(0)`` between steps,
all in one turn. The output depends only on the input.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from duroxide_runtime import OrchestrationContext, OrchestrationRegistry, PostgresProvider, Provider, Runtime, SqliteProvider


def work(amount: int) -> int:
    """Deterministic CPU work; the test calibrates ``amount`` to a duration on this machine."""
    total = 0
    for i in range(amount):
        total = (total * 31 + i) % 1_000_003
    return total


async def compute(ctx: OrchestrationContext, spec: str) -> str:
    steps, amount = (int(part) for part in spec.split(":"))
    total = 0
    for _ in range(steps):
        total = (total + work(amount)) % 1_000_003
        await asyncio.sleep(0)  # a step: the watchdog sees progress, the turn goes on
    return f"{steps}:{total}"


async def open_store(url: str) -> Provider:
    if url.startswith("sqlite"):
        return await SqliteProvider.new(url)
    return await PostgresProvider.new(url)


async def main(url: str) -> None:
    store = await open_store(url)
    rt = await (Runtime.builder().store(store)
                .orchestrations(OrchestrationRegistry.builder().register("Compute", compute).build())
                .start())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await rt.shutdown()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
