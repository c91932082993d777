"""A runtime process for the crash-recovery test (tests/test_crash_recovery.py).

Run:  python tests/crash_worker.py DBPATH LEDGER

It runs the ``CrashFlow`` orchestration and its activities on the SQLite file
DBPATH, prints ``READY`` once the runtime is started, and runs until SIGTERM
(graceful shutdown) or SIGKILL (the point of the test). Every finished
activity execution appends one JSON line to LEDGER (the side-effects ledger),
written with a single ``os.write`` on an ``O_APPEND`` file so that a SIGKILL
never leaves a torn line and concurrent processes never interleave.

The pure functions at the top are shared with the test, which uses
:func:`expected_output` to check every instance's output independently.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import zlib

from duroxide_runtime import (
    ActivityRegistry,
    OrchestrationContext,
    OrchestrationRegistry,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    activity_context,
)

ORCHESTRATION = "CrashFlow"
STEPS = 3
BRANCHES = 2

# -- pure, deterministic functions (shared with the test) ----------------------------


def _mix(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode()) % 1_000_003


def step_result(instance_id: str, step: int, value: int) -> int:
    """What activity ``Step`` returns for ``(instance_id, step, value)``."""
    return _mix("step", instance_id, step, value)


def branch_result(instance_id: str, branch: int, value: int) -> int:
    """What activity ``Branch`` returns for ``(instance_id, branch, value)``."""
    return _mix("branch", instance_id, branch, value)


def make_input(index: int, seed: int) -> str:
    """The input of instance number ``index``: a start value and a timer delay (0.1-0.3 s)."""
    start = _mix("start", seed, index)
    delay_ms = 100 + _mix("delay", seed, index) % 201
    return json.dumps({"start": start, "delay_ms": delay_ms, "sleep_style": index % 2})


def expected_output(instance_id: str, input: str) -> str:
    """The output ``CrashFlow`` must produce for this instance (computed without the runtime)."""
    args = json.loads(input)
    value = args["start"]
    steps = []
    for step in range(STEPS):
        value = step_result(instance_id, step, value)
        steps.append(value)
    branches = [branch_result(instance_id, b, value) for b in range(BRANCHES)]
    return _format_output(steps, branches)


def _format_output(steps: list[int], branches: list[int]) -> str:
    return json.dumps({"steps": steps, "branches": branches, "total": sum(steps) + sum(branches)},
                      sort_keys=True)


# -- activities: slow enough that kills land while they run ---------------------------

_LEDGER_FD: int | None = None


def _record(kind: str, raw: str, result: str) -> None:
    actx = activity_context()
    line = json.dumps({
        "pid": os.getpid(), "activity": kind, "instance_id": actx.instance_id,
        "execution_id": actx.execution_id, "event_id": actx.event_id, "attempt": actx.attempt,
        "input": raw, "result": result, "t": time.time(),
    }) + "\n"
    assert _LEDGER_FD is not None
    os.write(_LEDGER_FD, line.encode())


def _sleep_for(raw: str) -> float:
    return 0.03 + (zlib.crc32(raw.encode()) % 90) / 1000  # 30-120 ms


async def step_activity(raw: str) -> str:
    """Async activity: ``"instance|step|value"`` -> str(step_result)."""
    iid, step, value = raw.rsplit("|", 2)
    await asyncio.sleep(_sleep_for(raw))
    result = str(step_result(iid, int(step), int(value)))
    _record("Step", raw, result)
    return result


def branch_activity(raw: str) -> str:
    """Plain ``def`` activity (runs in the thread pool): ``"instance|branch|value"`` -> str(branch_result)."""
    iid, branch, value = raw.rsplit("|", 2)
    time.sleep(_sleep_for(raw))
    result = str(branch_result(iid, int(branch), int(value)))
    _record("Branch", raw, result)
    return result


# -- the orchestration ----------------------------------------------------------------


async def crash_flow(ctx: OrchestrationContext, input: str) -> str:
    """3 sequential activities, a durable timer, a fan-out of 2 activities joined."""
    args = json.loads(input)
    iid = ctx.instance_id
    value = args["start"]
    steps = []
    for step in range(STEPS):
        value = int(await ctx.schedule_activity("Step", f"{iid}|{step}|{value}"))
        steps.append(value)
    delay = args["delay_ms"] / 1000
    if args["sleep_style"] == 0:
        await asyncio.sleep(delay)
    else:
        await ctx.schedule_timer(delay)
    results = await ctx.join([ctx.schedule_activity("Branch", f"{iid}|{b}|{value}") for b in range(BRANCHES)])
    return _format_output(steps, [int(r) for r in results])


def worker_options() -> RuntimeOptions:
    """Short locks so that work held by a killed process is taken over quickly.

    ``activity_concurrency`` is kept low on purpose: the ~1000 activity calls then
    take several seconds, so every kill interrupts work in flight.
    """
    return RuntimeOptions(orchestration_lock_timeout=1.0, activity_lock_timeout=2.0,
                          poll_interval=0.05, activity_concurrency=16, activity_threads=8)


async def main(db_path: str, ledger_path: str) -> None:
    global _LEDGER_FD
    _LEDGER_FD = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = await SqliteProvider.new(f"sqlite://{os.path.abspath(db_path)}")
    rt = await (Runtime.builder()
                .store(store)
                .activities(ActivityRegistry.builder()
                            .register("Step", step_activity)
                            .register("Branch", branch_activity)
                            .build())
                .orchestrations(OrchestrationRegistry.builder().register(ORCHESTRATION, crash_flow).build())
                .options(worker_options())
                .start())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", os.getpid(), flush=True)
    await stop.wait()
    await rt.shutdown(grace=2)
    await store.close()
    os.close(_LEDGER_FD)
    print("STOPPED", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tests/crash_worker.py DBPATH LEDGER")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
