"""PostgreSQL as a cluster store: several processes, a killed process, killed connections, no server.

* ``test_three_processes_one_sigkilled``: three runtime processes
  (``tests/pg_cluster_worker.py``) share one schema and run 500 parents, each
  with an activity, a durable timer and a child orchestration (2 activities)
  joined with another activity. One process is SIGKILLed mid-way; the other two
  take its work over after the locks expire and finish everything. Checked:
  right outputs, each instance (parents and children) completed exactly once
  (history ids 1..n, one terminal event, every schedule completed exactly once),
  activity results match the side-effects ledger, the calls the victim had in
  flight were redelivered to a survivor, and activities ran in 2+ processes.
  Among the parents run a poisoned payload and a slow turn (issue 10): a
  ``PoisonedFlow`` whose activity returns text no store can encode (that call
  alone fails with ``ActivityFailed`` / ``PayloadError`` naming the lone
  surrogate; the orchestration catches it, makes a healthy call, completes),
  and a ``SlowTurn`` that computes for ~7 s in one turn, far longer than the
  workers' 1 s locks. The killed process is the one that began the slow turn
  (the kill most likely lands while it runs); a survivor redoes it, and it
  completes exactly once.
* ``test_runtime_survives_killed_connections``: a runtime in this process runs
  50 instances (activities + timers) while every backend of its provider (pool
  and LISTEN connection) and of a separate client's provider is terminated with
  ``pg_terminate_backend`` several times. Everything completes; a client waiting
  across the kills returns; the client's LISTEN connection is re-established.
* ``test_missing_server_is_a_clear_error``: no server -> ``StoreError`` naming
  the URL and the fix.

A missing server FAILS these tests (never skips): PostgreSQL is part of CI.
Reproduce the cluster run with ``DUROXIDE_PG_CLUSTER_SEED=<seed>`` (printed in failures).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from duroxide_runtime.wake import wake_hub
from duroxide_runtime import (
    ActivityRegistry,
    Client,
    Event,
    HistoryEvent,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    PostgresProvider,
    Runtime,
    RuntimeOptions,
    StoreError,
    activity_context,
)

from .history_checks import history_problems
from .worker_process import WorkerProcess
from .pg_cluster_worker import (
    CHILD,
    PARENT,
    POISONED,
    SLOW,
    UNDECODABLE,
    activity_result,
    calibrate,
    child_id,
    expected_child_output,
    expected_output,
    expected_slow_output,
    make_input,
    mix,
    poisoned_after,
    slow_input,
)
from .pg_session import ADMIN_URL
from .support import PG_URL

WORKER = Path(__file__).with_name("pg_cluster_worker.py")


# -- helpers ----------------------------------------------------------------------------


def _new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def _with_app_name(url: str, app: str) -> str:
    """``url`` with ``application_name=app`` (asyncpg passes unknown URL query keys as server settings)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "application_name"] + [("application_name", app)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _provider(url: str, schema: str, **kwargs: Any) -> PostgresProvider:
    """A provider on the test server; an unreachable server fails the test (CI must not skip it)."""
    try:
        return await PostgresProvider.new(url, schema=schema, **kwargs)
    except StoreError as exc:
        pytest.fail(f"these tests need a PostgreSQL server (DUROXIDE_PG_URL, here {ADMIN_URL}): {exc}")


def _brief(history: list[HistoryEvent]) -> list[str]:
    return [f"{type(e).__name__}#{e.event_id}" for e in history]


# -- 1. three processes, one SIGKILLed ----------------------------------------------------

PARENTS = 500
WORKERS = 3
READY_TIMEOUT = 60.0
FINAL_TIMEOUT = 75.0


class _LedgerTail:
    """Follows the ledger as workers append to it: which calls each process has started, not ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._open: dict[int, set[tuple[str, int, int]]] = collections.defaultdict(set)

    def open_calls(self, pid: int) -> set[tuple[str, int, int]]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                row = json.loads(line)
                key = (row["instance_id"], row["event_id"], row["delivery"])
                if row["phase"] == "start":
                    self._open[row["pid"]].add(key)
                else:
                    self._open[row["pid"]].discard(key)
        return self._open[pid]


async def _start_paced(ids: list[str], start: Callable[[str], Any], per_second: float) -> None:
    t0 = time.monotonic()
    for n, iid in enumerate(ids):
        await asyncio.sleep(max(0.0, t0 + n / per_second - time.monotonic()))
        await start(iid)


def _read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _counts(client: Client) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((i.name, i.status) for i in await client.list_instances(limit=4 * PARENTS))


def _slow_turn_pids(path: Path) -> list[int]:
    """The processes that began the slow turn so far (the workers append one line each time)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line)["pid"] for line in text[:text.rfind("\n") + 1].splitlines()]


def _poisoned_problems(iid: str, output: str | None, history: list[HistoryEvent]) -> list[str]:
    """What is wrong with the poisoned instance: its output names the typed error of the
    unencodable result and then the healthy call's result; its history records that one
    failure (once) and is otherwise like any other."""
    problems: list[str] = []
    out = json.loads(output or "{}")
    caught = str(out.get("caught"))
    if not (caught.startswith("PayloadError: ") and "'Undecodable'" in caught and "lone surrogate" in caught
            and repr(UNDECODABLE) in caught):
        problems.append(f"the unencodable result did not fail its call with a PayloadError naming "
                        f"{UNDECODABLE!r}: {caught!r}")
    if out.get("after") != poisoned_after(iid):
        problems.append(f"healthy call after the poisoned one: {out.get('after')!r}")
    failed = [e for e in history if isinstance(e, Event.ActivityFailed)]
    if len(failed) != 1 or failed[0].details.error_type != "PayloadError":
        problems.append(f"expected one ActivityFailed (PayloadError), got {failed}")
    expected_failure = {f"failure recorded: {e!r}" for e in failed[:1]}
    problems += [p for p in history_problems(history, output or "", {"ActivityScheduled": 2},
                                             _check_cluster_completion)
                 if p not in expected_failure]
    return problems


def _check_cluster_completion(sched: HistoryEvent, done: HistoryEvent) -> str | None:
    if isinstance(done, Event.ActivityCompleted):
        assert isinstance(sched, Event.ActivityScheduled)
        want = activity_result(sched.name, sched.input)
        return None if done.result == want else f"wrong result {done.result!r} for {sched!r} (want {want})"
    if isinstance(done, Event.SubOrchestrationCompleted):
        assert isinstance(sched, Event.SubOrchestrationScheduled)
        args = json.loads(sched.input)
        if sched.instance_id != child_id(args["parent"]):
            return f"unexpected child id {sched.instance_id!r}"
        want = expected_child_output(args["parent"], args["a"])
        return None if done.result == want else f"wrong child result {done.result!r} (want {want})"
    return None


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_three_processes_one_sigkilled(tmp_path: Path) -> None:
    seed = int(os.environ.get("DUROXIDE_PG_CLUSTER_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    tag = f"[seed={seed}; rerun with DUROXIDE_PG_CLUSTER_SEED={seed}]"
    schema = _new_schema()
    ledger, logs = tmp_path / "ledger.jsonl", tmp_path / "logs"
    turns = Path(f"{ledger}.turns")
    logs.mkdir()
    t0 = time.monotonic()
    # 70 steps of 0.1 s of CPU (measured here) in one turn
    step_amount = calibrate(0.1)

    store = await _provider(PG_URL, schema)  # creates the schema before the workers start
    client = Client(store)
    workers: list[WorkerProcess] = []
    starter: asyncio.Task[None] | None = None
    try:
        inputs = {f"p-{i:03d}": make_input(i, seed) for i in range(PARENTS)}
        ids = list(inputs)
        poisoned, slow = "p-poisoned", "p-slow"
        extra = {poisoned: (POISONED, str(rng.randrange(1_000_003))),
                 slow: (SLOW, slow_input(rng.randrange(1_000_003), 70, step_amount))}
        gate = asyncio.Semaphore(8)

        async def start(iid: str) -> None:
            async with gate:
                await client.start_orchestration(iid, PARENT, inputs[iid])

        # A fifth of the parents exist before any runtime; the rest are started while the workers run,
        # so that instances finish all along the run (and the kill lands among started, running and
        # finished ones).
        first = PARENTS // 5
        for iid, (name, inp) in extra.items():  # taken up at once, among the first parents
            await client.start_orchestration(iid, name, inp)
        await asyncio.gather(*(start(iid) for iid in ids[:first]))
        spawned = await asyncio.gather(*(WorkerProcess.spawn(n, WORKER, [PG_URL, schema, str(ledger)], logs, READY_TIMEOUT)
                                         for n in range(WORKERS)), return_exceptions=True)
        workers = [w for w in spawned if isinstance(w, WorkerProcess)]
        for w in spawned:
            if isinstance(w, BaseException):
                raise w
        t_ready = time.monotonic()
        starter = asyncio.create_task(_start_paced(ids[first:], start, per_second=250))
        victim = workers[rng.randrange(WORKERS)]
        tail = _LedgerTail(ledger)

        delay = rng.uniform(0.5, 2.0)
        await asyncio.sleep(delay)
        # The victim is the process that has begun the slow turn (a bounded wait: it begins once its
        # first activity is done), so the kill most likely lands while that turn runs and a survivor
        # must redo it. If it has not begun by then, the victim stays the random one.
        deadline = time.monotonic() + 30
        while not _slow_turn_pids(turns) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        began = _slow_turn_pids(turns)
        victim = next((w for w in workers if w.pid in began), victim)
        # Mid-way: kill once a parent has finished and the victim is running activities (on a slow
        # machine this may take a little longer than the random delay). The victim is frozen
        # (SIGSTOP) while the ledger is read, so the calls seen in flight are exactly those the
        # SIGKILL interrupts; if it has none, it is thawed and looked at again a moment later.
        open_at_kill: set[tuple[str, int, int]] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (await _counts(client))[(PARENT, "Completed")] > 0:
                await victim.freeze()
                open_at_kill = set(tail.open_calls(victim.pid))
                if open_at_kill:
                    break
                victim.thaw()
            await asyncio.sleep(0.01)
        rc = await victim.sigkill()
        kill_at = time.monotonic() - t_ready
        assert rc == -signal.SIGKILL, f"{tag} worker {victim.number} exited with {rc} before the kill\n" \
                                      f"{victim.log_tail()}"
        at_kill = await _counts(client)
        await starter
        survivors = [w for w in workers if w is not victim]
        parents_done = at_kill[(PARENT, "Completed")]
        assert 0 < parents_done < PARENTS, \
            f"{tag} the kill ({kill_at:.2f}s after READY) was not mid-way: {dict(at_kill)}"

        # The two survivors finish everything (the victim's locks expire first).
        t_kill = time.monotonic()
        deadline = t_kill + FINAL_TIMEOUT
        while True:
            counts = await _counts(client)
            finished = sum(n for (_, status), n in counts.items() if status in ("Completed", "Failed"))
            if finished >= 2 * PARENTS + len(extra) or time.monotonic() > deadline:
                break
            for w in survivors:
                assert w.proc.returncode is None, f"{tag} worker {w.number} died\n{w.log_tail()}"
            await asyncio.sleep(0.2)
        recover_secs = time.monotonic() - t_kill
        for w in survivors:
            rc = await w.stop()
            assert rc == 0, f"{tag} worker {w.number} exited with {rc}\n{w.log_tail()}"

        slow_pids = _slow_turn_pids(turns)
        summary = (f"{tag} victim worker {victim.number} (pid {victim.pid}) killed {kill_at:.2f}s after READY "
                   f"with {dict(at_kill)}; slow turn begun in pids {slow_pids}; recovery {recover_secs:.1f}s; "
                   f"total {time.monotonic() - t0:.1f}s")

        # -- every instance, parent and child, completed with the right output ---------------
        records = {i.instance_id: i for i in await client.list_instances(limit=4 * PARENTS)}
        children = {child_id(iid): iid for iid in ids}
        assert sorted(records) == sorted(ids + list(children) + list(extra)), \
            f"{summary}: instances lost or invented"
        prep = {iid: int(activity_result("Prep", f"{iid}|{json.loads(inputs[iid])['start']}")) for iid in ids}
        want_output = {iid: expected_output(iid, inputs[iid]) for iid in ids}
        want_output.update({cid: expected_child_output(p, prep[p]) for cid, p in children.items()})
        want_output[slow] = expected_slow_output(slow, extra[slow][1])
        want_output[poisoned] = records[poisoned].output or ""  # checked by _poisoned_problems below
        want_name = {**{iid: PARENT for iid in ids}, **{cid: CHILD for cid in children},
                     **{iid: name for iid, (name, _) in extra.items()}}
        wrong = {iid: (r.name, r.status, r.output, r.error) for iid, r in records.items()
                 if r.status != "Completed" or r.output != want_output[iid] or r.name != want_name[iid]
                 or r.parent_instance_id != children.get(iid)}
        assert not wrong, (f"{summary}: {len(wrong)} instances wrong, e.g. {dict(list(wrong.items())[:5])}\n"
                           + "\n".join(w.log_tail() for w in survivors))

        # -- each completed exactly once: histories -----------------------------------------
        ledger_rows = _read_ledger(ledger)
        ends: dict[tuple[str, int, int], list[dict[str, Any]]] = collections.defaultdict(list)
        for row in ledger_rows:
            if row["phase"] == "end":
                ends[(row["instance_id"], row["execution_id"], row["event_id"])].append(row)
        scheduled: dict[tuple[str, int, int], Event.ActivityScheduled] = {}
        bad: dict[str, list[str]] = {}
        for iid in ids + list(children) + list(extra):
            history = await client.read_history(iid)
            if iid in children:
                wanted = {"ActivityScheduled": 2}
            elif iid == slow:  # one OrchestrationStarted, one OrchestrationCompleted, however often the turn ran
                wanted = {"ActivityScheduled": 1}
            else:
                wanted = {"ActivityScheduled": 2, "TimerCreated": 1, "SubOrchestrationScheduled": 1}
            if iid == poisoned:
                problems = _poisoned_problems(iid, records[iid].output, history)
            else:
                problems = history_problems(history, want_output[iid], wanted, _check_cluster_completion)
            started = history[0] if history else None
            if iid in children and (not isinstance(started, Event.OrchestrationStarted)
                                    or started.parent_instance_id != children[iid]):
                problems.append(f"child started by {getattr(started, 'parent_instance_id', None)!r}")
            executions = await client.list_executions(iid)
            if executions != [1]:
                problems.append(f"executions {executions}")
            results = {e.source_event_id: e.result for e in history if isinstance(e, Event.ActivityCompleted)}
            # The poisoned call ran (a ledger end with its unencodable result), and failed in history.
            results.update({e.source_event_id: UNDECODABLE for e in history if isinstance(e, Event.ActivityFailed)})
            for e in history:
                if isinstance(e, Event.ActivityScheduled):
                    key = (iid, 1, e.event_id)
                    scheduled[key] = e
                    if not any(r["result"] == results.get(e.event_id) for r in ends[key]):
                        problems.append(f"activity event {e.event_id}: result in history, no such run in the ledger")
            if problems:
                bad[iid] = problems + [f"history: {_brief(history)}"]
        assert not bad, f"{summary}: {len(bad)} bad histories, e.g. {dict(list(bad.items())[:3])}"
        assert len(scheduled) == 4 * PARENTS + 3, summary

        # -- the ledger: no phantom work; the victim's calls in flight went to a survivor ------
        phantom = [r for r in ledger_rows
                   if (r["instance_id"], r["execution_id"], r["event_id"]) not in scheduled
                   or scheduled[(r["instance_id"], r["execution_id"], r["event_id"])].input != r["input"]
                   or scheduled[(r["instance_id"], r["execution_id"], r["event_id"])].name != r["activity"]
                   or (r["phase"] == "end" and r["result"] != activity_result(r["activity"], r["input"]))]
        assert not phantom, f"{summary}: ledger entries matching no scheduled call: {phantom[:5]}"
        victim_rows = [r for r in ledger_rows if r["pid"] == victim.pid]
        victim_ended = {(r["instance_id"], r["event_id"], r["delivery"]) for r in victim_rows if r["phase"] == "end"}
        in_flight = [r for r in victim_rows if r["phase"] == "start"
                     and (r["instance_id"], r["event_id"], r["delivery"]) not in victim_ended]
        assert in_flight, f"{summary}: the victim had no activity in flight when killed"
        assert {(r["instance_id"], r["event_id"], r["delivery"]) for r in in_flight} == open_at_kill, summary
        not_taken_over = [r for r in in_flight
                          if not any(e["pid"] != victim.pid and e["delivery"] > r["delivery"]
                                     for e in ends[(r["instance_id"], r["execution_id"], r["event_id"])])]
        assert not not_taken_over, \
            f"{summary}: calls in flight in the victim never redelivered to a survivor: {not_taken_over[:5]}"
        per_pid = collections.Counter(r["pid"] for r in ledger_rows if r["phase"] == "end")
        assert len(per_pid) >= 2, f"{summary}: activities ran in only {dict(per_pid)}"
        survivor_pids = {w.pid for w in survivors}
        assert survivor_pids & set(per_pid), f"{summary}: no survivor ran activities: {dict(per_pid)}"

        reruns = sum(len(v) - 1 for v in ends.values() if len(v) > 1)
        print(f"\n{summary}; activity runs per pid {dict(per_pid)}; victim in flight {len(in_flight)}; "
              f"re-runs {reruns}")
    finally:
        if starter is not None and not starter.done():
            starter.cancel()
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
        await store.drop_schema()
        await store.close()


# -- 2. killed connections -------------------------------------------------------------------

FLOWS = 50
STEPS = 4


def flow_input(index: int) -> str:
    """Start value and per-step timer delays (0.5-0.7 s: every flow takes at least 2 s)."""
    rng = random.Random(index)
    return json.dumps({"start": index * 7919, "delays_ms": [rng.randint(500, 700) for _ in range(STEPS)]})


def flow_activity_result(raw: str) -> str:
    return str(mix("calc", raw))


def flow_expected(input: str) -> str:
    args = json.loads(input)
    value = str(args["start"])
    for step in range(STEPS):
        value = flow_activity_result(f"step{step}:{value}")
    fan = [flow_activity_result(f"fan{b}:{value}") for b in range(2)]
    return json.dumps({"last": value, "fan": fan})


async def flow(ctx: OrchestrationContext, input: str) -> str:
    args = json.loads(input)
    value = str(args["start"])
    for step in range(STEPS):
        value = await ctx.schedule_activity("Calc", f"step{step}:{value}")
        await ctx.schedule_timer(args["delays_ms"][step] / 1000)
    fan = await ctx.join([ctx.schedule_activity("Calc", f"fan{b}:{value}") for b in range(2)])
    return json.dumps({"last": value, "fan": fan})


async def gated(ctx: OrchestrationContext, input: str) -> str:
    data = await ctx.schedule_wait("go")
    return "gated:" + await ctx.schedule_activity("Calc", f"gated:{data}")


def _check_flow_completion(sched: HistoryEvent, done: HistoryEvent) -> str | None:
    if isinstance(done, Event.ActivityCompleted):
        assert isinstance(sched, Event.ActivityScheduled)
        want = flow_activity_result(sched.input)
        return None if done.result == want else f"wrong result {done.result!r} for {sched!r}"
    return None


async def test_runtime_survives_killed_connections(caplog: pytest.LogCaptureFixture) -> None:
    """``pg_terminate_backend`` on every connection of the runtime's and the client's providers, 5 times.

    The backends to kill are found by ``application_name``, set per provider in
    the URL (asyncpg turns unknown URL query keys into server settings; the
    provider uses the URL for its pool and its LISTEN connection alike). The
    names contain this test's random schema, so the kills never touch another
    test's (or another agent's) connections on a shared server, nor the admin
    connection that issues them.
    """
    caplog.set_level("WARNING", logger="duroxide")
    schema = _new_schema()
    rt_app, client_app = f"dxk_{schema}_rt", f"dxk_{schema}_cl"
    admin: Any = None
    store = client_store = None
    rt: Runtime | None = None
    calls: collections.Counter[tuple[str, int]] = collections.Counter()
    waiter: asyncio.Task[Any] | None = None

    async def calc(raw: str) -> str:
        actx = activity_context()
        calls[(actx.instance_id, actx.event_id)] += 1
        await asyncio.sleep(0.01)
        return flow_activity_result(raw)

    try:
        try:
            admin = await asyncpg.connect(PG_URL)
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.fail(f"this test needs a PostgreSQL server at {PG_URL} (DUROXIDE_PG_URL): {exc}")
        store = await _provider(_with_app_name(PG_URL, rt_app), schema)
        client_store = await _provider(_with_app_name(PG_URL, client_app), schema)  # own pool and LISTEN
        client = Client(client_store)
        rt = await (Runtime.builder().store(store)
                    .activities(ActivityRegistry.builder().register("Calc", calc).build())
                    .orchestrations(OrchestrationRegistry.builder().register("Flow", flow)
                                    .register("Gated", gated).build())
                    .options(RuntimeOptions(poll_interval=0.05, orchestration_lock_timeout=2.0,
                                            activity_lock_timeout=3.0))
                    .start())

        inputs = {f"flow-{i:02d}": flow_input(i) for i in range(FLOWS)}
        for iid, inp in inputs.items():
            await client.start_orchestration(iid, "Flow", inp)
        await client.start_orchestration("gated", "Gated")
        waiter = asyncio.create_task(client.wait_for_orchestration("gated", 60))

        async def listeners(app: str) -> set[int]:
            """Backends of ``app`` that have finished subscribing (the done channel is subscribed last)."""
            rows = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 "
                "AND state = 'idle' AND query ILIKE 'LISTEN%' AND query LIKE $2", app, f"%{schema}_done%")
            return {r["pid"] for r in rows}

        # Both providers are connected (the LISTEN connection is opened by a background task).
        deadline = time.monotonic() + 10
        while not (await listeners(rt_app) and await listeners(client_app)):
            assert time.monotonic() < deadline, "LISTEN connections never appeared in pg_stat_activity"
            await asyncio.sleep(0.05)

        rounds = []
        listeners_killed: set[int] = set()
        for _ in range(5):
            await asyncio.sleep(random.uniform(0.15, 0.25))
            killed = await admin.fetch(
                "SELECT pid, application_name, query, pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                "AND application_name = ANY($1::text[])", [rt_app, client_app])
            done = len(await client.list_instances(status="Completed", name="Flow"))
            listeners_killed.update(r["pid"] for r in killed if (r["query"] or "").upper().startswith("LISTEN"))
            apps = "+".join(sorted(r["application_name"].rsplit("_", 1)[1] for r in killed))
            rounds.append((sum(r["ok"] for r in killed), apps, done))
        summary = f"kill rounds (backends killed, whose, flows completed): {rounds}"
        assert all(n >= 1 for n, _, _ in rounds), f"some round killed no backend: {summary}"
        assert all(done < FLOWS for _, _, done in rounds), f"kills did not land while flows ran: {summary}"
        assert any("cl" in apps.split("+") for _, apps, _ in rounds), \
            f"the client's connections were never killed: {summary}"
        assert listeners_killed, f"no LISTEN connection was killed: {summary}"

        # Both LISTEN connections come back (new backends), and a NOTIFY reaches the client's again.
        deadline = time.monotonic() + 10
        while not (await listeners(client_app) - listeners_killed and await listeners(rt_app) - listeners_killed):
            assert time.monotonic() < deadline, f"LISTEN connections not re-established; {summary}"
            await asyncio.sleep(0.05)
        probe = asyncio.create_task(wake_hub(client_store).wait_instance("probe", 10))
        await asyncio.sleep(0.05)
        t_probe = time.monotonic()
        await admin.execute("SELECT pg_notify($1, 'probe')", f"{schema}_done")
        await probe
        assert time.monotonic() - t_probe < 5, "NOTIFY did not reach the re-established LISTEN connection"

        # The client that waited across the kills returns on completion.
        assert await client.raise_event("gated", "go", "ok")
        status = await asyncio.wait_for(waiter, 30)
        assert status == OrchestrationStatus.Completed(output="gated:" + flow_activity_result("gated:ok")), \
            f"{status}; {summary}"

        # Every flow completes with the right output; none failed because of the kills.
        for iid, inp in inputs.items():
            st = await client.wait_for_orchestration(iid, 30)
            assert st == OrchestrationStatus.Completed(output=flow_expected(inp)), f"{iid}: {st}; {summary}"
            history = await client.read_history(iid)
            problems = history_problems(history, flow_expected(inp),
                                         {"ActivityScheduled": STEPS + 2, "TimerCreated": STEPS},
                                         _check_flow_completion)
            assert not problems, f"{iid}: {problems}; {_brief(history)}; {summary}"
        # Connection loss is retried inside the provider: the runtime's loops never see a store error
        # (those are rate-limited WARNINGs with a warning_kind of the dispatcher's or worker's loops).
        loop_kinds = {"dispatcher.store", "worker.fetch", "worker.results", "worker.renew"}
        errors = [f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
                  for r in caplog.records
                  if r.levelno >= logging.ERROR or getattr(r, "warning_kind", None) in loop_kinds]
        assert not errors, f"{len(errors)} errors logged, e.g. {errors[:3]}; {summary}"
        retries = sum("connection trouble" in r.getMessage() for r in caplog.records)
        print(f"\n{summary}; provider retries {retries}; error logs {len(errors)}; "
              f"activity re-runs {sum(n - 1 for n in calls.values())}")
    finally:
        # Each step runs even if an earlier one fails (a failed run must not leave its schema behind).
        if waiter is not None and not waiter.done():
            waiter.cancel()
        cleanup_errors: list[BaseException] = []

        async def attempt(step: Any) -> bool:
            try:
                await step
                return True
            except Exception as exc:  # noqa: BLE001
                cleanup_errors.append(exc)
                return False

        if rt is not None:
            await attempt(rt.shutdown(grace=2))
        if store is not None and not await attempt(store.drop_schema()) and admin is not None:
            await attempt(admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        for s in (client_store, store):
            if s is not None:
                await attempt(s.close())
        if admin is not None:
            await attempt(admin.close())
        if cleanup_errors:
            print(f"cleanup errors: {cleanup_errors!r}")


# -- 3. no server ------------------------------------------------------------------------------


async def test_missing_server_is_a_clear_error() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        await PostgresProvider.new(url, schema=_new_schema())
    message = str(info.value)
    assert url in message, message
    assert info.value.fix and "DUROXIDE_PG_URL" in info.value.fix and "server" in info.value.fix, message
    assert "Fix:" in message, message
    assert time.monotonic() - t0 < 10, "a refused connection must fail fast, not hang"

    # A password in the URL is not echoed.
    with pytest.raises(StoreError) as info:
        await PostgresProvider.new("postgresql://postgres:s3cret@127.0.0.1:1/test", schema=_new_schema())
    assert "s3cret" not in str(info.value) and "127.0.0.1:1/test" in str(info.value), str(info.value)
