"""W1-W4 on DBOS Transact (PyPI ``dbos``): its default store, a SQLite file, or PostgreSQL.

Workflows and steps are ``async def``; the workflows are started in-process
with ``DBOS.start_workflow_async`` (DBOS has no separate client for an
in-process app) and awaited through their handles. The timer is
``DBOS.sleep_async`` (durable). Fan-out is ``asyncio.gather`` over steps.

With ``--pg-url``/``--pg-schema`` the system database is that PostgreSQL
database (``system_database_url``), its tables in that schema
(``dbos_system_schema``, created by DBOS's migrations; ``peers.py`` drops it
after the run). The database exists already (``peers.py`` made it), so DBOS
only looks it up in ``pg_database`` and creates nothing outside it; every
other option is DBOS's default (LISTEN/NOTIFY for results included).

Run by ``benchmarks/peers.py`` in its own virtual environment; one workload per process.

    benchmarks/.peers/dbos/bin/python benchmarks/peers/dbos_bench.py W1 --quick
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from importlib.metadata import version

from dbos import DBOS, DBOSConfig

from _protocol import emit, median, parse


@DBOS.step()
async def noop(data: str) -> str:
    return data


@DBOS.workflow()
async def one(data: str) -> str:
    return await noop(data)


@DBOS.workflow()
async def three(data: str) -> str:
    for _ in range(3):
        data = await noop(data)
    return data


@DBOS.workflow()
async def fan_out(n: int) -> int:
    results = await asyncio.gather(*(noop(str(i)) for i in range(n)))
    return len(results)


@DBOS.workflow()
async def timer(seconds: float) -> str:
    await DBOS.sleep_async(seconds)
    return "done"


async def bench(workload: str, sizes) -> None:
    async def run(fn, data) -> None:
        handle = await DBOS.start_workflow_async(fn, data)
        await handle.get_result()

    async def throughput(n: int) -> float:
        t0 = time.perf_counter()
        handles = []
        for _ in range(n):
            handles.append(await DBOS.start_workflow_async(three, "x"))
        for handle in handles:
            await handle.get_result()
        return n / (time.perf_counter() - t0)

    extra = {"version": version("dbos")}
    if workload == "W1":
        for _ in range(3):
            await run(one, "x")
        times = []
        for _ in range(sizes.w1):
            t0 = time.perf_counter()
            await run(one, "x")
            times.append((time.perf_counter() - t0) * 1000)
        emit(workload, median(times), each=times, **extra)
    elif workload == "W2":
        await throughput(sizes.warm)
        emit(workload, await throughput(sizes.w2), **extra)
    elif workload == "W3":
        await run(fan_out, 20)
        t0 = time.perf_counter()
        await run(fan_out, sizes.w3)
        emit(workload, time.perf_counter() - t0, **extra)
    else:
        await run(timer, 0.05)
        late = []
        for _ in range(sizes.w4):
            t0 = time.perf_counter()
            await run(timer, sizes.timer)
            late.append((time.perf_counter() - t0 - sizes.timer) * 1000)
        emit(workload, median(late), each=late, **extra)


def main() -> None:
    args = parse(postgres=True)
    workload, sizes = args.workload, args.sizes
    with tempfile.TemporaryDirectory(prefix="dbos-peer-") as tmp:
        config: DBOSConfig = {"name": "bench", "log_level": "WARNING"}
        if args.pg_url:
            config["system_database_url"] = args.pg_url
            config["dbos_system_schema"] = args.pg_schema
        else:
            config["system_database_url"] = f"sqlite:///{os.path.join(tmp, 'dbos.sqlite')}"
        DBOS(config=config)
        DBOS.launch()
        try:
            asyncio.run(bench(workload, sizes))
        finally:
            DBOS.destroy()


if __name__ == "__main__":
    main()
