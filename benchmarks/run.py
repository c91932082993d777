"""Workloads W1-W4 of ANCHORS.md, as a user's program sees them, on SQLite or PostgreSQL.

Every run of a workload is a fresh Python process (a child of this script), so
caches, threads and allocator state of one run never help or hurt the next.
The child opens a fresh store, warms up on a few instances of the same shape,
then measures through the public API only: a ``Client`` issues the starts one
by one (each awaited before the next, as a user's code does) and waits for the
instances to finish. It prints its figures as one JSON line; this script
collects them and prints the median of ``--runs`` runs with [min-max].

Workloads (sizes as defined; ``--quick`` shrinks them for a smoke run):

* ``baseline`` - W2's transactions and rows written with plain ``sqlite3`` on
  one thread (no runtime, no thread hops): what SQLite itself allows here for
  the same work, with the same ``--durability``; SQLite only.
* ``W1`` - latency: one orchestration calling one no-op activity, start to
  observed completion; 20 in a row; median ms.
* ``W2`` - throughput: 300 orchestrations of 3 sequential no-op activities;
  orchestrations/s from the first start until all have completed.
* ``W2-10k`` - W2 with 10,000 orchestrations (also reported as a ratio to W2).
* ``W2x3`` - W2 on PostgreSQL with 3 runtime processes sharing the store and
  one client (in a fourth process) issuing the starts; total orchestrations/s.
* ``W3`` - fan-out: one orchestration fanning out 200 no-op activities and
  joining them; seconds.
* ``W4`` - timers: three orchestrations, one after another, each waiting on a
  1 s durable timer; ms past 1 s from start to observed completion, median of
  the three (each one is listed too).

``--store postgres`` uses ``DUROXIDE_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) only to create a database
``duroxide_bench_<random>`` and to drop it at the end; every run uses a schema
of its own inside that database.

    python benchmarks/run.py                          # all SQLite workloads, 3 runs each, durability full
    python benchmarks/run.py --quick                  # smoke run: 1 run, smaller sizes
    python benchmarks/run.py W1 W2 --runs 5 --durability relaxed
    python benchmarks/run.py --store postgres         # W1 W2 W2-10k W2x3 W3 W4 on PostgreSQL
    python benchmarks/run.py --store redis            # W1 W2 W3 W4 on Redis

``--store redis`` uses the server ``DUROXIDE_REDIS_URL`` names, each run under a key prefix of
its own (deleted afterwards); without it, it starts a ``redis-server`` of its own on a free
loopback port (``appendonly yes``, ``appendfsync always``: acknowledged writes are fsynced, as
``--durability full`` promises; ``relaxed`` runs it with ``appendfsync everysec``), data in a
temp dir, stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import inspect
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

# MARK and the sizes live beside the peer scripts, which run in venvs without duroxide_runtime and import
# only the standard library: one source for them and for this script (peers/_protocol.py).
sys.path.append(str(Path(__file__).resolve().parent / "peers"))
from _protocol import FULL, MARK, QUICK, Sizes  # noqa: E402

#: What DUROXIDE_PG_URL names: the server's admin database, used only for CREATE/DROP DATABASE.
ADMIN_URL = os.environ.get("DUROXIDE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SQLITE_WORKLOADS = ["baseline", "W1", "W2", "W2-10k", "W3", "W4"]
POSTGRES_WORKLOADS = ["W1", "W2", "W2-10k", "W2x3", "W3", "W4"]
REDIS_WORKLOADS = ["W1", "W2", "W3", "W4"]
ALL_WORKLOADS = ["baseline", "W1", "W2", "W2-10k", "W2x3", "W3", "W4"]


#: Unit and one-line description of each workload, for the table.
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "baseline": ("orch/s", "plain sqlite3 on one thread, W2's rows, one transaction per operation"),
    "W1": ("ms", "latency, 1 activity, start to observed completion"),
    "W2": ("orch/s", "throughput, 3 sequential activities each"),
    "W2-10k": ("orch/s", "W2 with 10,000 orchestrations"),
    "W2x3": ("orch/s", "W2, 3 runtime processes sharing PostgreSQL"),
    "W3": ("s", "fan-out 200 activities and join"),
    "W4": ("ms late", "1 s durable timer, past 1 s"),
}


@dataclass(frozen=True)
class Config:
    """What a child needs to know to run one workload."""

    store: str
    durability: str
    quick: bool
    #: The PostgreSQL database's URL (--store postgres), or the Redis server's (--store redis).
    pg_url: str

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL


# -- the workload code (what a user registers) ---------------------------------------------


async def noop(data: str) -> str:
    return data


async def one_activity(ctx: Any, data: str) -> str:
    result: str = await ctx.schedule_activity("Noop", data)
    return result


async def three_activities(ctx: Any, data: str) -> str:
    for _ in range(3):
        data = await ctx.schedule_activity("Noop", data)
    return data


async def fan_out(ctx: Any, data: str) -> str:
    results = await ctx.join([ctx.schedule_activity("Noop", str(i)) for i in range(int(data))])
    return str(len(results))


async def one_timer(ctx: Any, data: str) -> str:
    await ctx.schedule_timer(float(data))
    return "done"


# -- child side: one workload run ---------------------------------------------------------


class Bench:
    """One store, runtime and client in this (child) process; ``close()`` removes what it made."""

    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.notes: list[str] = []
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        self.store: Any = None
        self.runtime: Any = None
        self.client: Any = None

    async def open_store(self) -> Any:
        """The store, with ``durability=`` when the store takes it (noted when it does not)."""
        from duroxide_runtime import PostgresProvider, SqliteProvider

        if self.cfg.store == "redis":
            from duroxide_runtime import RedisProvider

            # Durability is the server's (its appendfsync), chosen when the parent started it.
            return await RedisProvider.new(self.cfg.pg_url, prefix=self.schema)
        cls: Any = PostgresProvider if self.cfg.store == "postgres" else SqliteProvider
        kwargs: dict[str, Any] = {}
        try:
            from duroxide_runtime import Durability
        except ImportError:
            self.notes.append("duroxide_runtime has no Durability: --durability ignored")
        else:
            if "durability" in inspect.signature(cls.new).parameters:
                kwargs["durability"] = Durability(self.cfg.durability)
            else:
                self.notes.append(f"{cls.__name__}.new takes no durability= yet: --durability ignored")
        if self.cfg.store == "postgres":
            return await cls.new(self.cfg.pg_url, schema=self.schema, **kwargs)
        return await cls.new(f"sqlite://{self.tmp / 'bench.db'}", **kwargs)

    async def start(self, with_runtime: bool = True) -> None:
        from duroxide_runtime import ActivityRegistry, Client, OrchestrationRegistry, Runtime

        self.store = await self.open_store()
        if with_runtime:
            orchestrations = (OrchestrationRegistry.builder().register("One", one_activity)
                              .register("Three", three_activities).register("FanOut", fan_out)
                              .register("Timer", one_timer).build())
            activities = ActivityRegistry.builder().register("Noop", noop).build()
            self.runtime = await (Runtime.builder().store(self.store).orchestrations(orchestrations)
                                  .activities(activities).start())
        self.client = Client(self.store)

    async def run(self, instance_id: str, name: str, data: str, timeout: float = 600.0) -> None:
        """Start one instance and wait until it completes (a failure ends the benchmark)."""
        await self.client.start_orchestration(instance_id, name, data)
        await self.wait(instance_id, timeout)

    async def wait(self, instance_id: str, timeout: float = 600.0) -> None:
        from duroxide_runtime import OrchestrationStatus

        status = await self.client.wait_for_orchestration(instance_id, timeout)
        if not isinstance(status, OrchestrationStatus.Completed):
            raise RuntimeError(f"benchmark instance {instance_id} did not complete: {status}")

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.shutdown()
        if self.store is not None:
            if self.cfg.store == "postgres":
                await self.store.drop_schema()
            if self.cfg.store == "redis":
                await self.store.drop_keys()
            await self.store.close()


async def w1(b: Bench) -> dict[str, Any]:
    for i in range(3):
        await b.run(f"warm-{i}", "One", "x")
    times = []
    for i in range(b.cfg.sizes.w1):
        t0 = time.perf_counter()
        await b.run(f"w1-{i}", "One", "x")
        times.append((time.perf_counter() - t0) * 1000)
    return {"value": statistics.median(times), "each": times}


async def _throughput(b: Bench, n: int, prefix: str) -> float:
    """Orchestrations/s for ``n`` W2 instances, started one by one, until all completed."""
    t0 = time.perf_counter()
    for i in range(n):
        await b.client.start_orchestration(f"{prefix}-{i}", "Three", "x")
    for i in range(n):
        await b.wait(f"{prefix}-{i}")
    return n / (time.perf_counter() - t0)


async def w2(b: Bench) -> dict[str, Any]:
    await _throughput(b, b.cfg.sizes.warm, "warm")
    return {"value": await _throughput(b, b.cfg.sizes.w2, "w2")}


async def w2_big(b: Bench) -> dict[str, Any]:
    await _throughput(b, b.cfg.sizes.warm, "warm")
    return {"value": await _throughput(b, b.cfg.sizes.w2_big, "w2big")}


async def w3(b: Bench) -> dict[str, Any]:
    await b.run("warm", "FanOut", "20")
    t0 = time.perf_counter()
    await b.run("w3", "FanOut", str(b.cfg.sizes.w3))
    return {"value": time.perf_counter() - t0}


async def w4(b: Bench) -> dict[str, Any]:
    await b.run("warm", "Timer", "0.05")
    late = []
    for i in range(b.cfg.sizes.w4):
        t0 = time.perf_counter()
        await b.run(f"w4-{i}", "Timer", str(b.cfg.sizes.timer))
        late.append((time.perf_counter() - t0 - b.cfg.sizes.timer) * 1000)
    return {"value": statistics.median(late), "each": late}


async def w2x3(b: Bench) -> dict[str, Any]:
    """W2 through one client while 3 runtime processes (this script's ``--pg-worker``) do the work."""
    if b.cfg.store != "postgres":
        raise SystemExit("W2x3 needs --store postgres (several processes share one PostgreSQL store)")
    workers = []
    try:
        for _ in range(3):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--pg-worker", b.schema, "--pg-url", b.cfg.pg_url,
                "--durability", b.cfg.durability,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            workers.append(proc)
        for proc in workers:  # wait until each runtime runs: its start-up is not the workload's
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if line.strip() != b"READY":
                raise RuntimeError(f"a runtime process did not start (it said {line!r})")
        await _throughput(b, b.cfg.sizes.warm, "warm")
        return {"value": await _throughput(b, b.cfg.sizes.w2, "w2x3")}
    finally:
        for proc in workers:
            if proc.stdin is not None:
                proc.stdin.close()  # end of input: the worker shuts its runtime down and exits
        for proc in workers:
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def pg_worker(cfg: Config, schema: str) -> None:
    """A runtime process for W2x3: runs until its standard input closes."""
    b = Bench(cfg, Path("."))
    b.schema = schema
    await b.start()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    assert b.runtime is not None
    await b.runtime.shutdown()
    await b.store.close()  # the coordinator drops the schema


# -- the plain-sqlite3 baseline -------------------------------------------------------------


def _msg(kind: str, instance_id: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, "instance_id": instance_id, **fields}, separators=(",", ":")).encode()


def _event(kind: str, event_id: int, **fields: Any) -> bytes:
    return json.dumps({"type": kind, "event_id": event_id, "timestamp_ms": int(time.time() * 1000), **fields},
                      separators=(",", ":")).encode()


def baseline_transactions(conn: sqlite3.Connection, ids: list[str], durable_sync: str, group: int = 1) -> int:
    """W2's store work for ``ids`` in plain ``sqlite3``; returns the number of transactions run.

    Per orchestration, the store operations the runtime performs: the start
    (instance row + queue message), then for each of the 4 turns an
    orchestration fetch (lock row, queue messages marked) and a turn commit
    (messages deleted, 2 history events, the activity's work item, instance row
    updated, lock released), and for each of the 3 activities a work fetch
    (work item leased) and a completion (work item deleted, result queued):
    15 operations and 8 history rows. Rows are read by key only.

    Each start is a transaction of its own (the client awaits each one); the
    runtime's operations are done ``group`` instances per transaction (1: one
    transaction per operation, nothing shared; 64: the runtime's default batch).
    As the store does, what acknowledges something (starts, results, the turn
    that ends the instance) commits with ``PRAGMA synchronous=<durable_sync>``;
    locks, leases and turns in between, which a crash merely lets expire or
    redo (and the next durable commit covers), with ``NORMAL``.
    """
    tx = 0
    current: list[str | None] = [None]
    tokens: dict[str, str] = {}
    queued: dict[str, list[int]] = {}

    def now() -> int:
        return int(time.time() * 1000)

    def transaction(chunk: list[str], durable: bool, op: Callable[[str], None]) -> None:
        nonlocal tx
        wanted = durable_sync if durable else "NORMAL"
        if current[0] != wanted:
            conn.execute(f"PRAGMA synchronous={wanted}")
            current[0] = wanted
        conn.execute("BEGIN IMMEDIATE")
        for iid in chunk:
            op(iid)
        conn.execute("COMMIT")
        tx += 1

    def start(iid: str) -> None:
        conn.execute("SELECT 1 FROM instances WHERE instance_id=?", (iid,)).fetchone()
        t = now()
        conn.execute("INSERT INTO instances(instance_id, name, version, execution_id, status, created_at, "
                     "updated_at, parent_instance_id, incarnation) VALUES (?,?,?,?, 'Pending', ?, ?, ?, ?)",
                     (iid, "Three", None, 1, t, t, None, uuid.uuid4().hex))
        conn.execute("INSERT INTO orchestrator_queue(instance_id, message, visible_at) VALUES (?,?,?)",
                     (iid, _msg("StartOrchestration", iid, name="Three", version=None, input="x",
                                execution_id=1, parent_instance_id=None, trace_context=None), 0))

    def fetch(iid: str) -> None:  # lock the instance, mark and read its messages, read its state
        token = tokens[iid] = uuid.uuid4().hex
        t = now()
        conn.execute("INSERT OR REPLACE INTO instance_locks(instance_id, lock_token, locked_until) "
                     "VALUES (?,?,?)", (iid, token, t + 5000))
        conn.execute("UPDATE orchestrator_queue SET lock_token=?, dequeue_count=dequeue_count+1 "
                     "WHERE instance_id=? AND visible_at<=?", (token, iid, t))
        queued[iid] = [r[0] for r in conn.execute(
            "SELECT id, message FROM orchestrator_queue WHERE instance_id=? AND lock_token=?", (iid, token))]
        conn.execute("SELECT * FROM instances WHERE instance_id=?", (iid,)).fetchone()
        conn.execute("SELECT COALESCE(MAX(event_id), 0) FROM history WHERE instance_id=? AND execution_id=1",
                     (iid,)).fetchone()

    def commit(iid: str, turn: int) -> None:
        conn.execute("SELECT lock_token FROM instance_locks WHERE instance_id=?", (iid,)).fetchone()
        conn.executemany("DELETE FROM orchestrator_queue WHERE id=?", [(q,) for q in queued.pop(iid)])
        first = 2 * turn + 1
        events = [_event("OrchestrationStarted", 1, name="Three", version="1.0.0", input="x")
                  if turn == 0 else _event("ActivityCompleted", first, source_event_id=first - 1, result="x")]
        events.append(_event("ActivityScheduled", first + 1, name="Noop", input="x") if turn < 3
                      else _event("OrchestrationCompleted", first + 1, output="x"))
        conn.executemany("INSERT INTO history(instance_id, execution_id, event_id, event) VALUES (?,1,?,?)",
                         [(iid, first + k, e) for k, e in enumerate(events)])
        if turn < 3:
            conn.execute("INSERT INTO worker_queue(instance_id, execution_id, event_id, name, message, visible_at) "
                         "VALUES (?,1,?,?,?,?)",
                         (iid, first + 1, "Noop", _msg("ActivityWork", iid, execution_id=1, event_id=first + 1,
                                                       name="Noop", input="x"), now()))
        status, output = ("Completed", "x") if turn == 3 else ("Running", None)
        conn.execute("UPDATE instances SET status=?, output=?, updated_at=? WHERE instance_id=?",
                     (status, output, now(), iid))
        conn.execute("DELETE FROM instance_locks WHERE instance_id=?", (iid,))

    def lease(iid: str, turn: int) -> None:
        row = conn.execute("SELECT id, message, dequeue_count FROM worker_queue WHERE instance_id=? "
                           "AND execution_id=1 AND event_id=? AND lock_token IS NULL",
                           (iid, 2 * turn + 2)).fetchone()
        token = tokens[iid] = uuid.uuid4().hex
        conn.execute("UPDATE worker_queue SET lock_token=?, locked_until=?, dequeue_count=? WHERE id=?",
                     (token, now() + 30_000, row[2] + 1, row[0]))

    def complete(iid: str, turn: int) -> None:
        conn.execute("DELETE FROM worker_queue WHERE lock_token=?", (tokens[iid],))
        conn.execute("SELECT status FROM instances WHERE instance_id=?", (iid,)).fetchone()
        conn.execute("INSERT INTO orchestrator_queue(instance_id, message, visible_at) VALUES (?,?,?)",
                     (iid, _msg("ActivityCompleted", iid, execution_id=1, source_event_id=2 * turn + 2,
                                result="x"), 0))

    for iid in ids:
        transaction([iid], True, start)
    chunks = [ids[i:i + group] for i in range(0, len(ids), group)]
    for turn in range(4):
        for chunk in chunks:
            transaction(chunk, False, fetch)
            transaction(chunk, turn == 3, lambda iid: commit(iid, turn))  # only the ending turn acknowledges
        if turn < 3:
            for chunk in chunks:
                transaction(chunk, False, lambda iid: lease(iid, turn))
                transaction(chunk, True, lambda iid: complete(iid, turn))
    return tx


async def baseline(b: Bench) -> dict[str, Any]:
    if b.cfg.store != "sqlite":
        raise SystemExit("the baseline is plain sqlite3: run it with --store sqlite")
    # The store creates its schema (tables and indexes as the product has them), then lets go.
    store = await b.open_store()
    await store.close()
    conn = sqlite3.connect(b.tmp / "bench.db", isolation_level=None)
    sync = "FULL" if b.cfg.durability == "full" else "NORMAL"
    result: dict[str, Any] = {"synchronous": sync}
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        baseline_transactions(conn, [f"warm-{i}" for i in range(b.cfg.sizes.warm)], sync)
        n = b.cfg.sizes.w2
        for group, key in ((64, "batched"), (1, "value")):
            t0 = time.perf_counter()
            tx = baseline_transactions(conn, [f"base{group}-{i}" for i in range(n)], sync, group)
            elapsed = time.perf_counter() - t0
            result[key] = n / elapsed
            result[f"tx_per_orch_{group}"] = tx / n
    finally:
        conn.close()
    return result


WORKLOADS: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
    "baseline": baseline, "W1": w1, "W2": w2, "W2-10k": w2_big, "W2x3": w2x3, "W3": w3, "W4": w4,
}


async def child(cfg: Config, name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="duroxide-bench-") as tmp:
        b = Bench(cfg, Path(tmp))
        try:
            if name != "baseline":
                await b.start(with_runtime=name != "W2x3")
            result = await WORKLOADS[name](b)
        finally:
            if name != "baseline":
                await b.close()
    result.update(workload=name, unit=DESCRIPTIONS[name][0], notes=b.notes)
    return result


# -- parent side -----------------------------------------------------------------------------


def run_child(cfg: Config, name: str, timeout: float = 3600) -> dict[str, Any]:
    """One workload run in a fresh process; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, __file__, "--child", name, "--store", cfg.store, "--durability", cfg.durability,
           "--pg-url", cfg.pg_url] + (["--quick"] if cfg.quick else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK):])
            return result
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return {"error": f"exit status {proc.returncode}: {tail}"}


def summarize(values: list[float]) -> str:
    """``median [min-max]`` with a precision that suits the size of the figures."""
    def fmt(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    med = statistics.median(values)
    return f"{fmt(med)} [{fmt(min(values))}-{fmt(max(values))}]" if len(values) > 1 else fmt(med)


class PgDatabase:
    """A database of this benchmark's own on the server ``ADMIN_URL`` names; dropped at the end.

    ``ADMIN_URL``'s database is only connected to for CREATE and DROP DATABASE;
    the benchmark's stores live in ``url``, one schema per run. ``create()``
    arranges the drop for the end of the process, on Ctrl-C and on SIGTERM too.
    ``peers.py`` uses it the same way.

        db = create_database()          # exits with the reason when the server refuses
        try:
            ...                         # children connect to db.url
        finally:
            db.drop()
    """

    def __init__(self) -> None:
        self.name = f"duroxide_bench_{uuid.uuid4().hex[:10]}"
        self.url = urlsplit(ADMIN_URL)._replace(path="/" + self.name).geturl()
        self.created = False

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        self.created = True
        atexit.register(self.drop)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)  # SIGTERM's default skips atexit and finally blocks

    def drop(self) -> None:
        if self.created:
            self.created = False
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    async def _in_database(self, sql: str) -> str:
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            return str(await conn.fetchval(sql))
        finally:
            await conn.close()

    def drop_schema(self, schema: str) -> None:
        """Drop one run's schema (and everything in it) from the benchmark's database."""
        if not schema.replace("_", "").isalnum():
            raise ValueError(f"not a schema name the benchmark makes: {schema!r}")
        asyncio.run(self._in_database(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    def describe(self) -> str:
        """The server's version and commit setting, and where the benchmark's database is, for the report."""
        version = asyncio.run(self._in_database("SHOW server_version")).split()[0]
        sync = asyncio.run(self._in_database("SHOW synchronous_commit"))
        where = urlsplit(ADMIN_URL)
        return (f"PostgreSQL {version} (synchronous_commit={sync}) at {where.hostname}:{where.port or 5432}, "
                f"database {self.name}, dropped at the end")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # as Ctrl-C: finally blocks and the atexit hook drop the database


def create_database() -> PgDatabase:
    """A new ``duroxide_bench_<random>`` database; exits with the reason when it cannot be created."""
    db = PgDatabase()
    try:
        db.create()
    except (OSError, ImportError) as exc:
        raise SystemExit(f"cannot create a database for the benchmark through DUROXIDE_PG_URL={ADMIN_URL!r}: "
                         f"{type(exc).__name__}: {exc} (is the server running? is asyncpg installed: "
                         f"pip install -e '.[postgres]'?)") from exc
    except Exception as exc:  # asyncpg's errors: a refused role or database, say
        raise SystemExit(f"cannot create a database for the benchmark through DUROXIDE_PG_URL={ADMIN_URL!r}: "
                         f"{type(exc).__name__}: {exc}") from exc
    return db


@dataclass
class _RedisServer:
    """A redis-server this script started (for --store redis without DUROXIDE_REDIS_URL)."""

    proc: subprocess.Popen[bytes]
    url: str
    dir: tempfile.TemporaryDirectory[str]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.dir.cleanup()


def start_redis(durability: str) -> _RedisServer | None:
    """A redis-server of this run's own (None when DUROXIDE_REDIS_URL names one)."""
    if os.environ.get("DUROXIDE_REDIS_URL"):
        return None
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--store redis needs redis-server (apt-get install -y redis-server) or DUROXIDE_REDIS_URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.TemporaryDirectory(prefix="duroxide-bench-redis-")
    fsync = "always" if durability == "full" else "everysec"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", data.name,
                             "--appendonly", "yes", "--appendfsync", fsync, "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            data.cleanup()
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)
    return _RedisServer(proc, f"redis://127.0.0.1:{port}/0", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                        help=f"any of {', '.join(ALL_WORKLOADS)} (default: all that the store supports)")
    parser.add_argument("--runs", type=int, default=None, help="runs per workload (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, smaller sizes")
    parser.add_argument("--store", choices=["sqlite", "postgres", "redis"], default="sqlite")
    parser.add_argument("--durability", choices=["full", "relaxed"], default="full")
    parser.add_argument("--json", action="store_true", help="also print each run's result as a JSON line")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pg-worker", help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child or args.pg_worker:
        cfg = Config(args.store, args.durability, args.quick, args.pg_url)
        if args.pg_worker:
            asyncio.run(pg_worker(Config("postgres", args.durability, args.quick, args.pg_url), args.pg_worker))
        else:
            print(MARK + json.dumps(asyncio.run(child(cfg, args.child))), flush=True)
        return

    workloads = args.workloads or {"postgres": POSTGRES_WORKLOADS, "redis": REDIS_WORKLOADS}.get(
        args.store, SQLITE_WORKLOADS)
    unknown = [w for w in workloads if w not in ALL_WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(ALL_WORKLOADS)}")
    if args.store == "redis" and ("baseline" in workloads or "W2x3" in workloads):
        parser.error("the baseline and W2x3 run on SQLite and PostgreSQL only")
    if args.store == "postgres" and "baseline" in workloads:
        parser.error("the baseline is plain sqlite3: run it with --store sqlite")
    if args.store == "sqlite" and "W2x3" in workloads:
        parser.error("W2x3 shares one PostgreSQL store between processes: run it with --store postgres")
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    db = create_database() if args.store == "postgres" else None
    redis_server = start_redis(args.durability) if args.store == "redis" else None
    redis_url = os.environ.get("DUROXIDE_REDIS_URL") or (redis_server.url if redis_server else "")
    cfg = Config(args.store, args.durability, args.quick, db.url if db else redis_url)
    print(f"store: {args.store}, durability: {args.durability}, {runs} run(s) per workload, each in a fresh "
          f"process{', QUICK sizes (not the defined workloads)' if args.quick else ''}; median [min-max]",
          flush=True)
    medians: dict[str, float] = {}
    notes: set[str] = set()
    try:
        for name in workloads:
            results = [run_child(cfg, name) for _ in range(runs)]
            if args.json:
                for r in results:
                    print(json.dumps(r), flush=True)
            good = [r for r in results if "error" not in r]
            for r in results:
                if "error" in r:
                    print(f"{name:8s} run failed: {r['error']}", flush=True)
                notes.update(r.get("notes", []))
            if not good:
                continue
            values = [float(r["value"]) for r in good]
            medians[name] = statistics.median(values)
            unit, what = DESCRIPTIONS[name]
            extra = ""
            if name == "W4":
                extra = "  each timer: " + " | ".join(" ".join(f"{v:.1f}" for v in r["each"]) for r in good)
            elif name == "baseline":
                extra = f"  ({good[0]['tx_per_orch_1']:.0f} tx/orch, synchronous={good[0]['synchronous']})"
            print(f"{name:8s} {summarize(values):>24s} {unit:8s} {what}{extra}", flush=True)
            if name == "baseline":
                batched = [float(r["batched"]) for r in good]
                medians["baseline-64"] = statistics.median(batched)
                print(f"{'':8s} {summarize(batched):>24s} {unit:8s} the same, runtime operations 64 instances "
                      f"per transaction ({good[0]['tx_per_orch_64']:.1f} tx/orch)", flush=True)
    finally:
        if db is not None:
            db.drop()
        if redis_server is not None:
            redis_server.stop()
    if "W2" in medians and "W2-10k" in medians:
        print(f"W2-10k / W2: {medians['W2-10k'] / medians['W2']:.2f}")
    if "W2" in medians and "W2x3" in medians:
        print(f"W2x3 / W2: {medians['W2x3'] / medians['W2']:.2f}")
    if "W2" in medians and "baseline" in medians:
        print(f"W2 / baseline: {medians['W2'] / medians['baseline']:.2f} of plain sqlite3 with one transaction per "
              f"operation, {medians['W2'] / medians['baseline-64']:.2f} of it with 64 instances per transaction")
    for note in sorted(notes):
        print(f"note: {note}")


if __name__ == "__main__":
    main()
