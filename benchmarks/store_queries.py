"""The operator queries (``query_instances``, ``overview``) on a store holding 100,000 instances.

Fills a fresh store, then times through the ``Provider`` interface: the first page,
the 50th page reached by following cursors, pages filtered by status, by name and by
``q`` (a substring of the id, common and absent), and the overview of the last hour.
Each figure is the median of ``--runs`` runs (warm: the database is read once before),
in milliseconds, with [min-max].

The rows go straight into the store's own ``instances`` table (``executemany`` on
SQLite, ``COPY`` on PostgreSQL) after the store created its schema: 100,000 starts
through ``create_instance`` would take minutes and measure something else. The mix:
70 % Completed, 10 % Failed (five error types), 15 % Running, 4 % Pending, 1 %
Suspended; ten names, three versions; created over the last seven days, about one
every six seconds. PostgreSQL tables are ANALYZEd after the load (autovacuum does it
within a minute on a live server); SQLite is left without statistics, as it runs.

``--store postgres`` uses ``DUROXIDE_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) only to create a database
``duroxide_bench_q_<random>`` and to drop it at the end.

    python benchmarks/store_queries.py                      # SQLite, 100,000 instances, 9 runs
    python benchmarks/store_queries.py --store postgres
    python benchmarks/store_queries.py --instances 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from duroxide_runtime.errors import ErrorDetails  # noqa: E402
from duroxide_runtime.providers.base import InstanceQuery, Provider  # noqa: E402
from duroxide_runtime.providers.sqlite import SqliteProvider  # noqa: E402

ADMIN_URL = os.environ.get("DUROXIDE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STATUSES = [("Completed", 70), ("Failed", 10), ("Running", 15), ("Pending", 4), ("Suspended", 1)]
ERRORS = ["ValueError", "TimeoutError", "KeyError", "ActivityFailedError", "ConnectionError"]
NAMES = [f"Workflow{n}" for n in range(10)]
VERSIONS = ["1.0.0", "1.1.0", "2.0.0"]
SPACING_MS = 6_000
COLUMNS = ("instance_id", "name", "version", "execution_id", "status", "output", "error", "custom_status",
           "created_at", "updated_at", "parent_instance_id", "incarnation")


def rows(count: int, now_ms: int) -> list[tuple[Any, ...]]:
    """The instance rows, newest ``now_ms``, in the store's column order."""
    rng = random.Random(15)
    weights = [w for _, w in STATUSES]
    out = []
    for i in range(count):
        created = now_ms - (count - i) * SPACING_MS
        status = rng.choices([s for s, _ in STATUSES], weights)[0]
        updated = min(now_ms, created + rng.randrange(600_000))
        error = None
        if status == "Failed":
            error = orjson.dumps(ErrorDetails(rng.choice(ERRORS), f"failure {i}", "Traceback ...").to_dict())
        out.append((f"order-{i:07d}", rng.choice(NAMES), rng.choice(VERSIONS), 1, status,
                    "done" if status == "Completed" else None, error, None, created, updated, None,
                    uuid.uuid4().hex))
    return out


async def measure(fn: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    await fn()  # warm
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


async def page_n(store: Provider, n: int, limit: int = 50) -> str | None:
    """Follow cursors to page ``n``; the cursor that reads it."""
    cursor = None
    for _ in range(n - 1):
        cursor = (await store.query_instances(InstanceQuery(limit=limit, cursor=cursor))).next_cursor
    return cursor


async def bench(store: Provider, count: int, runs: int) -> None:
    now = store.clock.now_ms()
    cursor50 = await page_n(store, 50)
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("first page (50)", lambda: store.query_instances(InstanceQuery())),
        ("page 50, from its cursor", lambda: store.query_instances(InstanceQuery(cursor=cursor50))),
        ("pages 1-50, following cursors", lambda: page_n(store, 51)),
        ("status=Failed page", lambda: store.query_instances(InstanceQuery(status="Failed"))),
        ("status=Suspended page (1 %)", lambda: store.query_instances(InstanceQuery(status="Suspended"))),
        ("name=Workflow3 page", lambda: store.query_instances(InstanceQuery(name="Workflow3"))),
        ("status+name+version page", lambda: store.query_instances(
            InstanceQuery(status="Failed", name="Workflow3", version="2.0.0"))),
        ("q='-00042' page (rare: 10 matches)", lambda: store.query_instances(InstanceQuery(q="-00042"))),
        ("q='7' page (common)", lambda: store.query_instances(InstanceQuery(q="7"))),
        ("q='zz' page (no match: reads all)", lambda: store.query_instances(InstanceQuery(q="zz"))),
        ("overview, last hour", lambda: store.overview(now - 3_600_000)),
        ("overview, last 24 hours", lambda: store.overview(now - 86_400_000)),
    ]
    print(f"{type(store).__name__}, {count:,} instances, median of {runs} runs [min-max], ms")
    for label, fn in cases:
        times = await measure(fn, runs)
        print(f"  {label:<38} {statistics.median(times):9.2f}   [{min(times):.2f}-{max(times):.2f}]")


async def run_sqlite(count: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="duroxide-bench-q-") as tmp:
        path = os.path.join(tmp, "queries.db")
        store = await SqliteProvider.new(f"sqlite://{path}")
        now = store.clock.now_ms()
        await store.close()
        conn = sqlite3.connect(path)
        t = time.perf_counter()
        conn.executemany(f"INSERT INTO instances({', '.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})",
                         rows(count, now))
        conn.commit()
        conn.close()
        print(f"loaded {count:,} rows in {time.perf_counter() - t:.1f} s ({os.path.getsize(path) / 1e6:.0f} MB)")
        store = await SqliteProvider.new(f"sqlite://{path}")
        try:
            await bench(store, count, runs)
        finally:
            await store.close()


async def run_postgres(count: int, runs: int) -> None:
    import asyncpg

    from duroxide_runtime.providers.postgres import PostgresProvider

    name = f"duroxide_bench_q_{uuid.uuid4().hex[:10]}"
    url = urlsplit(ADMIN_URL)._replace(path="/" + name).geturl()
    admin = await asyncpg.connect(ADMIN_URL)  # CREATE/DROP DATABASE only
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        store = await PostgresProvider.new(url, schema="duroxide")
        try:
            conn = await asyncpg.connect(url)
            try:
                t = time.perf_counter()
                await conn.copy_records_to_table("instances", schema_name="duroxide", columns=list(COLUMNS),
                                                 records=rows(count, store.clock.now_ms()))
                await conn.execute("ANALYZE duroxide.instances")
                print(f"loaded {count:,} rows in {time.perf_counter() - t:.1f} s")
            finally:
                await conn.close()
            await bench(store, count, runs)
        finally:
            await store.close()
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    runner = run_postgres if args.store == "postgres" else run_sqlite
    asyncio.run(runner(args.instances, args.runs))


if __name__ == "__main__":
    main()
