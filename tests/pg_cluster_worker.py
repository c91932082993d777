"""A runtime process of the PostgreSQL cluster test (tests/test_postgres_cluster.py).

Run:  python tests/pg_cluster_worker.py URL SCHEMA LEDGER

It runs ``ClusterParent`` / ``ClusterChild`` and their activities on the
PostgreSQL schema SCHEMA at URL, prints ``READY <pid>`` once the runtime is
started, and runs until SIGTERM (graceful shutdown, then ``STOPPED``) or
SIGKILL (the point of the test).

Every activity execution appends two JSON lines to LEDGER: ``"phase": "start"``
when it begins and ``"phase": "end"`` (with its result) just before it
returns, each written with a single ``os.write`` on an ``O_APPEND`` file, so a
SIGKILL never leaves a torn line and processes never interleave. A ``start``
without an ``end`` from the same process is a call that was in flight when the
process died.

Two more orchestrations run among the healthy ones (issue 10):

* ``PoisonedFlow`` calls ``Undecodable``, an activity whose result no store can
  encode (a lone surrogate); it catches the ``ActivityFailed`` the runtime
  raises for that call and goes on with a healthy call (``Side``).
* ``SlowTurn`` calls ``Prep``, then computes for several seconds in one turn
  (deterministic CPU work, calibrated by the test), stepping with
  ``await asyncio.sleep(0)``. Each time that turn begins, a JSON line
  ``{"pid", "instance_id"}`` is appended to ``LEDGER.turns`` (test
  instrumentation: the test kills the process running it).

The pure functions at the top are shared with the test, which checks every
output and activity result against them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import zlib
from collections.abc import Awaitable, Callable

from duroxide_runtime import (
    ActivityFailed,
    ActivityRegistry,
    OrchestrationContext,
    OrchestrationRegistry,
    PostgresProvider,
    Runtime,
    RuntimeOptions,
    activity_context,
)

PARENT = "ClusterParent"
CHILD = "ClusterChild"
POISONED = "PoisonedFlow"
SLOW = "SlowTurn"
LEAVES = 2
#: What activity ``Undecodable`` returns: ``os.fsdecode`` of a byte that is not UTF-8, a lone surrogate.
UNDECODABLE = os.fsdecode(b"\xff")
_MOD = 1_000_003

# -- pure, deterministic functions (shared with the test) ----------------------------


def mix(*parts: object) -> int:
    """A deterministic pseudo-random number in [0, 1_000_003)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) % _MOD


def make_input(index: int, seed: int) -> str:
    """Input of parent number ``index``: a start value and a timer delay of 50-200 ms."""
    return json.dumps({"start": mix("start", seed, index), "delay_ms": 50 + mix("delay", seed, index) % 151})


def child_id(parent_id: str) -> str:
    """The instance id a parent gives its child."""
    return f"{parent_id}::child"


def activity_result(name: str, raw: str) -> str:
    """What activity ``name`` returns for input ``raw`` (every activity but ``Undecodable`` is ``mix`` of its input)."""
    return UNDECODABLE if name == "Undecodable" else str(mix(name, raw))


def expected_child_output(parent_id: str, a: int) -> str:
    leaves = [int(activity_result("Leaf", f"{parent_id}|{k}|{a}")) for k in range(LEAVES)]
    return json.dumps({"leaves": leaves, "sum": sum(leaves)}, sort_keys=True)


def expected_output(parent_id: str, input: str) -> str:
    """The output ``ClusterParent`` must produce (computed without the runtime)."""
    args = json.loads(input)
    a = int(activity_result("Prep", f"{parent_id}|{args['start']}"))
    child = expected_child_output(parent_id, a)
    side = int(activity_result("Side", f"{parent_id}|{a}"))
    return _parent_output(a, child, side)


def _parent_output(a: int, child: str, side: int) -> str:
    return json.dumps({"prep": a, "child": json.loads(child), "side": side,
                       "total": a + side + json.loads(child)["sum"]}, sort_keys=True)


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
    seed = int(activity_result("Prep", f"{instance_id}|{args['start']}"))
    return _slow_output(seed, (seed + args["steps"] * work(args["amount"])) % _MOD)


def _slow_output(seed: int, total: int) -> str:
    return json.dumps({"seed": seed, "total": total}, sort_keys=True)


def poisoned_after(instance_id: str) -> int:
    """The result of the healthy call ``PoisonedFlow`` makes after the poisoned one."""
    return int(activity_result("Side", f"{instance_id}|after"))


# -- activities -------------------------------------------------------------------------

_LEDGER_FD: int | None = None
_TURNS_FD: int | None = None


def _record(phase: str, name: str, raw: str, result: str | None = None) -> None:
    actx = activity_context()
    line = json.dumps({
        "phase": phase, "pid": os.getpid(), "activity": name, "instance_id": actx.instance_id,
        "execution_id": actx.execution_id, "event_id": actx.event_id, "attempt": actx.attempt,
        "delivery": actx.delivery,
        "input": raw, "result": result, "t": time.time(),
    }) + "\n"
    assert _LEDGER_FD is not None
    os.write(_LEDGER_FD, line.encode())


def _make_activity(name: str) -> Callable[[str], Awaitable[str]]:
    async def run(raw: str) -> str:
        _record("start", name, raw)
        await asyncio.sleep(0.05 + (zlib.crc32(raw.encode()) % 150) / 1000)  # 50-200 ms: kills land mid-call
        result = activity_result(name, raw)
        _record("end", name, raw, result)  # JSON escapes Undecodable's surrogate: the ledger line is ASCII
        return result

    run.__name__ = f"{name.lower()}_activity"
    return run


# -- orchestrations ------------------------------------------------------------------


async def cluster_parent(ctx: OrchestrationContext, input: str) -> str:
    """Activity, durable timer, then a child (2 activities) joined with another activity."""
    args = json.loads(input)
    iid = ctx.instance_id
    a = int(await ctx.schedule_activity("Prep", f"{iid}|{args['start']}"))
    await ctx.schedule_timer(args["delay_ms"] / 1000)
    child, side = await ctx.join([
        ctx.schedule_sub_orchestration(CHILD, json.dumps({"parent": iid, "a": a}), instance_id=child_id(iid)),
        ctx.schedule_activity("Side", f"{iid}|{a}"),
    ])
    return _parent_output(a, child, int(side))


async def cluster_child(ctx: OrchestrationContext, input: str) -> str:
    """Two activities in parallel, joined."""
    args = json.loads(input)
    leaves = await ctx.join([ctx.schedule_activity("Leaf", f"{args['parent']}|{k}|{args['a']}")
                             for k in range(LEAVES)])
    values = [int(v) for v in leaves]
    return json.dumps({"leaves": values, "sum": sum(values)}, sort_keys=True)


async def poisoned_flow(ctx: OrchestrationContext, input: str) -> str:
    """A call whose result cannot be stored (caught), then a healthy call."""
    iid = ctx.instance_id
    try:
        bad = await ctx.schedule_activity("Undecodable", f"{iid}|{input}")
        caught = f"no error, result {bad!r}"  # repr: this output stays storable, the test names it
    except ActivityFailed as err:
        caught = f"{err.error_type}: {err.details.message}"
    after = int(await ctx.schedule_activity("Side", f"{iid}|after"))
    return json.dumps({"caught": caught, "after": after}, sort_keys=True)


async def slow_turn(ctx: OrchestrationContext, input: str) -> str:
    """``Prep``, then one CPU-bound turn that outlives many lock periods, stepping all along."""
    args = json.loads(input)
    seed = int(await ctx.schedule_activity("Prep", f"{ctx.instance_id}|{args['start']}"))
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
    """Short locks, so that what a killed process held is taken over quickly.

    The options are the same for the ``SlowTurn`` instance: its turn outlives these
    1 s locks many times over, and it is the runtime's job to renew them while it runs.
    """
    return RuntimeOptions(orchestration_lock_timeout=1.0, activity_lock_timeout=2.0, poll_interval=0.05,
                          orchestration_batch_size=16, activity_concurrency=32)


async def main(url: str, schema: str, ledger_path: str) -> None:
    global _LEDGER_FD, _TURNS_FD
    _LEDGER_FD = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _TURNS_FD = os.open(ledger_path + ".turns", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = await PostgresProvider.new(url, schema=schema, pool_size=6)
    activities = ActivityRegistry.builder()
    for name in ("Prep", "Side", "Leaf", "Undecodable"):
        activities.register(name, _make_activity(name))
    rt = await (Runtime.builder()
                .store(store)
                .activities(activities.build())
                .orchestrations(OrchestrationRegistry.builder()
                                .register(PARENT, cluster_parent)
                                .register(CHILD, cluster_child)
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
    if len(sys.argv) != 4:
        raise SystemExit("usage: python tests/pg_cluster_worker.py URL SCHEMA LEDGER")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
