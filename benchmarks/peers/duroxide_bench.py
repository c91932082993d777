"""W1-W4 on duroxide (PyPI ``duroxide``, the Rust core's Python SDK), default options.

The store is a SQLite file, or with ``--pg-url``/``--pg-schema`` the SDK's
``PostgresProvider`` in that schema (it creates its tables there; ``peers.py``
drops the schema after the run).

Run by ``benchmarks/peers.py`` in its own virtual environment; one workload per process.

    benchmarks/.peers/duroxide/bin/python benchmarks/peers/duroxide_bench.py W1 --quick
"""

from __future__ import annotations

import os
import tempfile
import time
from importlib.metadata import version

from duroxide import Client, PostgresProvider, Runtime, SqliteProvider

from _protocol import emit, median, parse


def noop(ctx, data):
    return data


def one(ctx, data):
    result = yield ctx.schedule_activity("Noop", data)
    return result


def three(ctx, data):
    for _ in range(3):
        data = yield ctx.schedule_activity("Noop", data)
    return data


def fan_out(ctx, n):
    results = yield ctx.all([ctx.schedule_activity("Noop", str(i)) for i in range(n)])
    return len(results)


def timer(ctx, seconds):
    yield ctx.schedule_timer(int(seconds * 1000))
    return "done"


def main() -> None:
    args = parse(postgres=True)
    workload, sizes = args.workload, args.sizes
    with tempfile.TemporaryDirectory(prefix="duroxide-peer-") as tmp:
        if args.pg_url:
            provider = PostgresProvider.connect_with_schema(args.pg_url, args.pg_schema)
        else:
            provider = SqliteProvider.open(os.path.join(tmp, "bench.db"))
        client = Client(provider)
        rt = Runtime(provider)
        rt.register_activity("Noop", noop)
        for name, fn in (("One", one), ("Three", three), ("FanOut", fan_out), ("Timer", timer)):
            rt.register_orchestration(name, fn)
        rt.start()

        def run(iid: str, name: str, data: object) -> None:
            client.start_orchestration(iid, name, data)
            wait(iid)

        def wait(iid: str) -> None:
            result = client.wait_for_orchestration(iid, 600_000)
            if result.status != "Completed":
                raise RuntimeError(f"{iid} did not complete: {result.status} {result.error}")

        def throughput(n: int, prefix: str) -> float:
            t0 = time.perf_counter()
            for i in range(n):
                client.start_orchestration(f"{prefix}-{i}", "Three", "x")
            for i in range(n):
                wait(f"{prefix}-{i}")
            return n / (time.perf_counter() - t0)

        try:
            if workload == "W1":
                for i in range(3):
                    run(f"warm-{i}", "One", "x")
                times = []
                for i in range(sizes.w1):
                    t0 = time.perf_counter()
                    run(f"w1-{i}", "One", "x")
                    times.append((time.perf_counter() - t0) * 1000)
                emit(workload, median(times), each=times, version=version("duroxide"))
            elif workload == "W2":
                throughput(sizes.warm, "warm")
                emit(workload, throughput(sizes.w2, "w2"), version=version("duroxide"))
            elif workload == "W3":
                run("warm", "FanOut", 20)
                t0 = time.perf_counter()
                run("w3", "FanOut", sizes.w3)
                emit(workload, time.perf_counter() - t0, version=version("duroxide"))
            else:
                run("warm", "Timer", 0.05)
                late = []
                for i in range(sizes.w4):
                    t0 = time.perf_counter()
                    run(f"w4-{i}", "Timer", sizes.timer)
                    late.append((time.perf_counter() - t0 - sizes.timer) * 1000)
                emit(workload, median(late), each=late, version=version("duroxide"))
        finally:
            rt.shutdown(1000)


if __name__ == "__main__":
    main()
