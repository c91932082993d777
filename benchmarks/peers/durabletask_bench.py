"""W1-W4 on durabletask (PyPI ``durabletask``) with its in-memory backend: NOT durable.

durabletask needs a sidecar (the Durable Task Scheduler or another backend)
that this machine does not have; the package ships an in-memory gRPC backend
for tests (``durabletask.testing``), run here in the same process. Nothing is
written to disk, so its figures are a floor of the SDK's own overhead (gRPC
round trips, generator replay), not of a durable store.

Run by ``benchmarks/peers.py`` in its own virtual environment; one workload per process.

    benchmarks/.peers/durabletask/bin/python benchmarks/peers/durabletask_bench.py W1 --quick
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from importlib.metadata import version

from durabletask import task
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.testing import create_test_backend
from durabletask.worker import TaskHubGrpcWorker

from _protocol import emit, median, parse


def noop(ctx, data):
    return data


def one(ctx, data):
    result = yield ctx.call_activity(noop, input=data)
    return result


def three(ctx, data):
    for _ in range(3):
        data = yield ctx.call_activity(noop, input=data)
    return data


def fan_out(ctx, n):
    results = yield task.when_all([ctx.call_activity(noop, input=str(i)) for i in range(n)])
    return len(results)


def timer(ctx, seconds):
    yield ctx.create_timer(timedelta(seconds=seconds))
    return "done"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    args = parse()
    workload, sizes = args.workload, args.sizes
    port = free_port()
    backend = create_test_backend(port=port)
    address = f"localhost:{port}"
    worker = TaskHubGrpcWorker(host_address=address)
    for fn in (one, three, fan_out, timer):
        worker.add_orchestrator(fn)
    worker.add_activity(noop)
    worker.start()
    client = TaskHubGrpcClient(host_address=address)

    def run(iid: str, fn, data) -> None:
        client.schedule_new_orchestration(fn, input=data, instance_id=iid)
        wait(iid)

    def wait(iid: str) -> None:
        state = client.wait_for_orchestration_completion(iid, timeout=600)
        if state is None or state.runtime_status != OrchestrationStatus.COMPLETED:
            raise RuntimeError(f"{iid} did not complete: {state}")

    def throughput(n: int, prefix: str) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            client.schedule_new_orchestration(three, input="x", instance_id=f"{prefix}-{i}")
        for i in range(n):
            wait(f"{prefix}-{i}")
        return n / (time.perf_counter() - t0)

    extra = {"version": version("durabletask"), "durable": False}
    try:
        if workload == "W1":
            for i in range(3):
                run(f"warm-{i}", one, "x")
            times = []
            for i in range(sizes.w1):
                t0 = time.perf_counter()
                run(f"w1-{i}", one, "x")
                times.append((time.perf_counter() - t0) * 1000)
            emit(workload, median(times), each=times, **extra)
        elif workload == "W2":
            throughput(sizes.warm, "warm")
            emit(workload, throughput(sizes.w2, "w2"), **extra)
        elif workload == "W3":
            run("warm", fan_out, 20)
            t0 = time.perf_counter()
            run("w3", fan_out, sizes.w3)
            emit(workload, time.perf_counter() - t0, **extra)
        else:
            run("warm", timer, 0.05)
            late = []
            for i in range(sizes.w4):
                t0 = time.perf_counter()
                run(f"w4-{i}", timer, sizes.timer)
                late.append((time.perf_counter() - t0 - sizes.timer) * 1000)
            emit(workload, median(late), each=late, **extra)
    finally:
        worker.stop()
        backend.stop()


if __name__ == "__main__":
    main()
