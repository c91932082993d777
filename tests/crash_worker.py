"""A runtime process for the crash-recovery test (tests/test_crash_recovery.py).

Run:  python tests/crash_worker.py DBPATH LEDGER

It runs the ``CrashFlow`` orchestration and its activities on the SQLite file
DBPATH, prints ``READY`` once the runtime is started, and runs until SIGTERM
(graceful shutdown) or SIGKILL (the point of the test). Every finished
activity execution appends one JSON line to LEDGER (the side-effects ledger),
written with a single ``os.write`` on an ``O_APPEND`` file so that a SIGKILL
never leaves a torn line and concurrent processes never interleave.

Two more orchestrations run among the healthy ones (issue 10):

* ``PoisonedFlow`` calls ``Undecodable``, an activity whose result no store can
  encode (a lone surrogate); it catches the ``ActivityFailed`` the runtime
  raises for that call and goes on with a healthy call.
* ``SlowTurn`` calls ``Step``, then computes for several seconds in one turn
  (deterministic CPU work, calibrated by the test), stepping with
  ``await asyncio.sleep(0)``. Each time that turn begins, a JSON line
  ``{"pid", "instance_id"}`` is appended to ``LEDGER.turns`` (test
  instrumentation: which processes ran the turn, killed or not).

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
    ActivityFailed,
    ActivityRegistry,
    OrchestrationContext,
    OrchestrationRegistry,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    activity_context,
)

ORCHESTRATION = "CrashFlow"
POISONED = "PoisonedFlow"
SLOW = "SlowTurn"
STEPS = 3
BRANCHES = 2
#: What activity ``Undecodable`` returns: ``os.fsdecode`` of a byte that is not UTF-8, a lone surrogate.
UNDECODABLE = os.fsdecode(b"\xff")
_MOD = 1_000_003

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


def work(amount: int) -> int:
    """Deterministic CPU work (as in ``tests/slow_turn_worker.py``); :func:`calibrate` sizes it."""
    total = 0
    for i in range(amount):
        total = (total * 31 + i) % _MOD
    return total


def calibrate(seconds: float) -> int:
    """The ``amount`` for which :func:`work` takes ``seconds`` of CPU on this machine (measured, so
    that the slow turn is long on any machine; no assertion depends on the measure)."""
    amount = 20_000
    while True:
        started = time.process_time()
        work(amount)
        took = time.process_time() - started
        if took > 0.02:
            return max(1, int(amount * seconds / took))
        amount *= 4


def slow_input(start: int, steps: int, amount: int) -> str:
    """Input of a ``SlowTurn``: ``steps`` steps of ``work(amount)`` in one turn."""
    return json.dumps({"start": start, "steps": steps, "amount": amount})


def expected_slow_output(instance_id: str, input: str) -> str:
    """The output ``SlowTurn`` must produce (one ``work`` instead of ``steps``: the steps are equal)."""
    args = json.loads(input)
    seed = step_result(instance_id, 0, args["start"])
    return _slow_output(seed, (seed + args["steps"] * work(args["amount"])) % _MOD)


def _slow_output(seed: int, total: int) -> str:
    return json.dumps({"seed": seed, "total": total}, sort_keys=True)


def poisoned_after(instance_id: str, input: str) -> int:
    """The result of the healthy call ``PoisonedFlow`` makes after the poisoned one."""
    return step_result(instance_id, 1, int(input))


# -- activities: slow enough that kills land while they run ---------------------------

_LEDGER_FD: int | None = None
_TURNS_FD: int | None = None


def _record(kind: str, raw: str, result: str) -> None:
    actx = activity_context()
    line = json.dumps({
        "pid": os.getpid(), "activity": kind, "instance_id": actx.instance_id,
        "execution_id": actx.execution_id, "event_id": actx.event_id, "attempt": actx.attempt,
        "delivery": actx.delivery,
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


def undecodable_activity(raw: str) -> str:
    """Returns text no store can encode: the runtime must fail this call alone, with a typed error."""
    time.sleep(_sleep_for(raw))
    _record("Undecodable", raw, UNDECODABLE)  # JSON escapes the surrogate: the ledger line is ASCII
    return UNDECODABLE


# -- the orchestrations ---------------------------------------------------------------


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


async def poisoned_flow(ctx: OrchestrationContext, input: str) -> str:
    """A call whose result cannot be stored (caught), then a healthy call."""
    iid = ctx.instance_id
    try:
        bad = await ctx.schedule_activity("Undecodable", f"{iid}|0|{input}")
        caught = f"no error, result {bad!r}"  # repr: this output stays storable, the test names it
    except ActivityFailed as err:
        caught = f"{err.error_type}: {err.details.message}"
    after = int(await ctx.schedule_activity("Step", f"{iid}|1|{input}"))
    return json.dumps({"caught": caught, "after": after}, sort_keys=True)


async def slow_turn(ctx: OrchestrationContext, input: str) -> str:
    """``Step``, then one CPU-bound turn that outlives many lock periods, stepping all along."""
    args = json.loads(input)
    seed = int(await ctx.schedule_activity("Step", f"{ctx.instance_id}|0|{args['start']}"))
    _mark_slow_turn(ctx.instance_id)
    total = seed
    for _ in range(args["steps"]):
        total = (total + work(args["amount"])) % _MOD
        await asyncio.sleep(0)  # a step: the watchdog sees progress, the turn goes on
    return _slow_output(seed, total)


def _mark_slow_turn(instance_id: str) -> None:
    # Test instrumentation only (orchestration code must not do I/O): which processes began the turn.
    assert _TURNS_FD is not None
    os.write(_TURNS_FD, (json.dumps({"pid": os.getpid(), "instance_id": instance_id}) + "\n").encode())


def worker_options() -> RuntimeOptions:
    """Short locks so that work held by a killed process is taken over quickly.

    ``activity_concurrency`` is kept low on purpose: the ~1000 activity calls then
    take several seconds, so every kill interrupts work in flight. The options are
    the same for the ``SlowTurn`` instance: its turn outlives these 1 s locks many
    times over, and it is the runtime's job to renew them while the turn runs.
    """
    return RuntimeOptions(orchestration_lock_timeout=1.0, activity_lock_timeout=2.0,
                          poll_interval=0.05, activity_concurrency=16, activity_threads=8)


async def main(db_path: str, ledger_path: str) -> None:
    global _LEDGER_FD, _TURNS_FD
    _LEDGER_FD = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _TURNS_FD = os.open(ledger_path + ".turns", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = await SqliteProvider.new(f"sqlite://{os.path.abspath(db_path)}")
    rt = await (Runtime.builder()
                .store(store)
                .activities(ActivityRegistry.builder()
                            .register("Step", step_activity)
                            .register("Branch", branch_activity)
                            .register("Undecodable", undecodable_activity)
                            .build())
                .orchestrations(OrchestrationRegistry.builder()
                                .register(ORCHESTRATION, crash_flow)
                                .register(POISONED, poisoned_flow)
                                .register(SLOW, slow_turn)
                                .build())
                .options(worker_options())
                .start())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", os.getpid(), flush=True)
    await stop.wait()
    await rt.shutdown(grace=2)
    await store.close()
    os.close(_LEDGER_FD)
    os.close(_TURNS_FD)
    print("STOPPED", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tests/crash_worker.py DBPATH LEDGER")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
