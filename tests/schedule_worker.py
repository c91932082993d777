"""A runtime process of the schedule test across processes (tests/test_schedules_processes.py).

Run:  python tests/schedule_worker.py STORE      (STORE: a PostgreSQL URL#schema)

Registers ``Beat`` (returns its input), prints ``READY <pid>`` once the runtime is
started, and runs until SIGTERM or SIGKILL. Its scheduler starts the ticks of the
store's schedules; it logs each pass that fired (``duroxide.scheduler`` at INFO,
to stderr: the worker's log file), which the test reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from duroxide_runtime import OrchestrationContext, OrchestrationRegistry, PostgresProvider, Runtime, RuntimeOptions

BEAT = "Beat"


async def beat(ctx: OrchestrationContext, input: str) -> str:
    return input


async def main(spec: str) -> None:
    url, _, schema = spec.partition("#")
    store = await PostgresProvider.new(url, schema=schema, pool_size=4)
    rt = await (Runtime.builder().store(store)
                .orchestrations(OrchestrationRegistry.builder().register(BEAT, beat).build())
                # Short locks: the instances a killed process had locked are taken over soon.
                .options(RuntimeOptions(orchestration_lock_timeout=2.0, poll_interval=0.05))
                .start())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", os.getpid(), flush=True)
    await stop.wait()
    await rt.shutdown(grace=2)
    await store.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/schedule_worker.py STORE")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("duroxide.scheduler").setLevel(logging.INFO)
    asyncio.run(main(sys.argv[1]))
