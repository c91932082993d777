"""The operator queries of every store: ``query_instances`` (filtered keyset pages) and ``overview``.

Runs on each provider of ``support.PROVIDERS`` (memory, a SQLite file, a PostgreSQL
schema) through the ``Provider`` interface, with the stores' time on a ManualClock
(creation and update times are what the test sets). What is pinned: each filter
alone and combined, ``q`` as a literal case-sensitive substring, pages that walk
every row exactly once while rows are created between them, refused cursors and
limits, the overview's counts, per-minute endings and failure groups; and, per
durable store, that the listing is served by an index in its order (no sort of
the table) and that an unreadable stored error does not break the overview.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from duroxide_runtime import Client
from duroxide_runtime.errors import ErrorDetails, InvalidInputError, PayloadError
from duroxide_runtime.messages import ExternalEvent, StartOrchestration
from duroxide_runtime.providers.base import (
    MAX_PAGE_LIMIT, FailureGroup, InstanceCount, InstanceQuery, InstanceRecord, InstanceUpdate, Provider,
    TurnCommit, decode_cursor, encode_cursor,
)
from duroxide_runtime.providers.redis import RedisProvider
from duroxide_runtime.providers.sqlite import SCHEMA_VERSION, SqliteProvider, _INSTANCE_COLS
from duroxide_runtime.providers.sqlite_queries import COUNTS_SQL, FAILURES_SQL, listing_sql, per_minute_sql
from duroxide_runtime.testing import ManualClock

from . import redis_raw
from .support import PG_URL, PROVIDERS, drop_store, make_store

MINUTE = 60.0
#: The stores that keep serialized rows (and so have plans and unreadable rows to look at).
DURABLE = [kind for kind in PROVIDERS if kind != "memory"]
ENDED = frozenset({"Completed", "Failed"})


@pytest.fixture
def clock() -> ManualClock:
    """The stores' time: creation and update times are what the test makes them."""
    return ManualClock()


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Provider]:
    """A fresh store of each provider kind on the test's ManualClock."""
    s = await make_store(request.param, tmp_path, clock=clock)
    try:
        yield s
    finally:
        await drop_store(s)


# -- helpers ------------------------------------------------------------------------


async def create(store: Provider, iid: str, name: str = "Orch", version: str | None = "1.0.0") -> None:
    await store.create_instance(StartOrchestration(instance_id=iid, name=name, version=version, input=""))


def update(status: str, name: str = "Orch", version: str = "1.0.0",
           error: ErrorDetails | None = None) -> InstanceUpdate:
    return InstanceUpdate(name=name, version=version, execution_id=1, status=status, error=error)


async def settle(store: Provider, outcomes: Mapping[str, InstanceUpdate | None]) -> None:
    """Run one turn of each instance of ``outcomes``, writing its update (None: the row stays as it is).

    Other instances with queued messages are left as they were (fetched, then abandoned).
    """
    for iid in outcomes:
        assert await store.send(ExternalEvent(instance_id=iid, name="poke", data="")) is not None
    items = (await store.fetch_orchestration_items(10_000, 30.0)).items
    assert set(outcomes) <= {i.instance_id for i in items}
    commits = [TurnCommit(instance_id=i.instance_id, lock_token=i.lock_token, execution_id=1,
                          consumed=[m.id for m in i.messages], update=outcomes[i.instance_id])
               for i in items if i.instance_id in outcomes]
    assert await store.commit_turns(commits) == [True] * len(commits)
    for i in items:
        if i.instance_id not in outcomes:
            await store.abandon_orchestration_item(i.instance_id, i.lock_token, 0)


def newest_first(records: list[InstanceRecord]) -> list[str]:
    return [r.instance_id for r in sorted(records, key=lambda r: (r.created_at_ms, r.instance_id), reverse=True)]


async def ids(store: Provider, **filters: object) -> list[str]:
    page = await store.query_instances(InstanceQuery(limit=MAX_PAGE_LIMIT, **filters))  # type: ignore[arg-type]
    assert page.next_cursor is None
    return [r.instance_id for r in page.instances]


async def walk(store: Provider, query: InstanceQuery) -> list[str]:
    """Every page of ``query`` from the top."""
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.query_instances(InstanceQuery(query.status, query.name, query.version, query.q,
                                                         cursor, query.limit))
        assert len(page.instances) <= query.limit
        seen += [r.instance_id for r in page.instances]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


# -- listing ------------------------------------------------------------------------


async def test_each_filter_alone_and_combined(store: Provider, clock: ManualClock) -> None:
    # Two instances per millisecond (ties ordered by id), names A/B, versions 1/2, and statuses
    # including one the stores have never heard of: a status is an opaque string.
    statuses = ["Pending", "Running", "Completed", "Failed", "Suspended", "Running"]
    outcomes: dict[str, InstanceUpdate | None] = {}
    for n in range(24):
        name, version = ("A", "B")[n % 2], ("1", "2")[n // 2 % 2]
        iid = f"i{n:02d}"
        await create(store, iid, name, version)
        status = statuses[n % len(statuses)]
        outcomes[iid] = None if status == "Pending" else update(status, name, version)
        if n % 2:
            clock.advance(0.001)
    await settle(store, outcomes)
    every = [r for r in [await store.get_instance(f"i{n:02d}") for n in range(24)] if r is not None]
    assert len(every) == 24

    def expect(**want: str) -> list[str]:
        return newest_first([r for r in every if all(getattr(r, k) == v for k, v in want.items())])

    assert await ids(store) == newest_first(every)
    for status in statuses:
        assert await ids(store, status=status) == expect(status=status), status
    assert await ids(store, name="A") == expect(name="A")
    assert await ids(store, version="2") == expect(version="2")
    assert await ids(store, status="Running", name="B") == expect(status="Running", name="B")
    assert await ids(store, status="Failed", name="B", version="1") == expect(status="Failed", name="B", version="1")
    assert await ids(store, name="A", version="2", q="1") == [i for i in expect(name="A", version="2") if "1" in i]
    assert await ids(store, status="Nope") == []
    assert await ids(store, name="A", q="zz") == []


async def test_q_is_a_literal_case_sensitive_substring(store: Provider, clock: ManualClock) -> None:
    for iid in ["a%b", "a_b", "axb", "A%B", "100%", "under_score", "plain", "a\\b"]:
        await create(store, iid)
        clock.advance(0.001)
    assert sorted(await ids(store, q="%")) == ["100%", "A%B", "a%b"]
    assert sorted(await ids(store, q="_")) == ["a_b", "under_score"]
    assert sorted(await ids(store, q="a%")) == ["a%b"]
    assert sorted(await ids(store, q="a")) == ["a%b", "a\\b", "a_b", "axb", "plain"]
    assert sorted(await ids(store, q="\\")) == ["a\\b"]
    assert await ids(store, q="B") == ["A%B"]
    assert await ids(store, q="a_b") == ["a_b"]


async def test_pages_walk_every_row_once_while_rows_are_created(store: Provider, clock: ManualClock) -> None:
    original = []
    for n in range(23):
        iid = f"r{n:02d}"
        await create(store, iid)
        original.append(iid)
        if n % 3 == 2:  # three rows per millisecond: ties are broken by id, across page boundaries too
            clock.advance(0.001)
    expected = newest_first([r for r in [await store.get_instance(i) for i in original] if r is not None])
    assert await walk(store, InstanceQuery(limit=4)) == expected

    seen: list[str] = []
    cursor = None
    created = 0
    while True:
        page = await store.query_instances(InstanceQuery(limit=4, cursor=cursor))
        seen += [r.instance_id for r in page.instances]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        assert decode_cursor(cursor)[1] == seen[-1]
        # Between pages: newer instances, which the walk (already past them) never lists.
        clock.advance(0.001)
        await create(store, f"new{created:02d}")
        created += 1
    assert seen == expected
    assert created == 5


async def test_rows_created_in_the_cursors_millisecond(store: Provider) -> None:
    # The clock stands still: every row has the same creation time and the id alone orders them.
    for n in range(10):
        await create(store, f"r{n:02d}")
    page = await store.query_instances(InstanceQuery(limit=3))
    seen = [r.instance_id for r in page.instances]
    assert seen == ["r09", "r08", "r07"]
    # Sorting before the cursor (listed on no later page) and after it (listed once, in its place).
    await create(store, "r07a")
    await create(store, "r99")
    await create(store, "r050")
    cursor = page.next_cursor
    while cursor is not None:
        page = await store.query_instances(InstanceQuery(limit=3, cursor=cursor))
        seen += [r.instance_id for r in page.instances]
        cursor = page.next_cursor
    assert seen == ["r09", "r08", "r07", "r06", "r050", "r05", "r04", "r03", "r02", "r01", "r00"]


async def test_pages_with_a_filter_and_the_last_page(store: Provider, clock: ManualClock) -> None:
    outcomes: dict[str, InstanceUpdate | None] = {}
    for n in range(12):
        await create(store, f"f{n:02d}")
        outcomes[f"f{n:02d}"] = update("Failed" if n % 3 else "Completed")
        clock.advance(0.001)
    await settle(store, outcomes)
    failed = await ids(store, status="Failed")
    assert len(failed) == 8
    assert await walk(store, InstanceQuery(status="Failed", limit=3)) == failed
    # Exactly a page's worth left: that page is the last (no cursor to an empty page).
    page = await store.query_instances(InstanceQuery(status="Failed", limit=8))
    assert [r.instance_id for r in page.instances] == failed and page.next_cursor is None
    page = await store.query_instances(InstanceQuery(status="Failed", limit=4))
    assert page.next_cursor is not None
    rest = await store.query_instances(InstanceQuery(status="Failed", limit=4, cursor=page.next_cursor))
    assert [r.instance_id for r in rest.instances] == failed[4:] and rest.next_cursor is None
    # A cursor of a row that is gone (purged) still marks a position.
    assert await store.purge_instance(failed[3]) == [failed[3]]
    rest = await store.query_instances(InstanceQuery(status="Failed", limit=4, cursor=page.next_cursor))
    assert [r.instance_id for r in rest.instances] == failed[4:]


@pytest.mark.parametrize("cursor", [
    "bogus", "", "!!!!", "W10", encode_cursor(1, "x") + "%", "WzEsMiwzXQ", "WyJ4IiwxXQ",
    "W3RydWUsIngiXQ", "WzEsIlx1MDAwMCJd", "WzFlMywieCJd", "WzkyMjMzNzIwMzY4NTQ3NzU4MDgsIngiXQ",
])
async def test_a_malformed_cursor_is_refused(store: Provider, cursor: str) -> None:
    # Not base64, empty, [], with a stray character, [1,2,3], ["x",1], [true,"x"], an id with
    # NUL, a float time, a time past 64 bits.
    await create(store, "one")
    with pytest.raises(InvalidInputError) as caught:
        await store.query_instances(InstanceQuery(cursor=cursor))
    assert caught.value.field == "cursor" and caught.value.fix


async def test_limit_bounds(store: Provider) -> None:
    for n in range(3):
        await create(store, f"l{n}")
    for limit in (0, -1, MAX_PAGE_LIMIT + 1):
        with pytest.raises(InvalidInputError) as caught:
            await store.query_instances(InstanceQuery(limit=limit))
        assert caught.value.field == "limit"
    with pytest.raises(PayloadError):
        await store.query_instances(InstanceQuery(limit=True))
    assert len((await store.query_instances(InstanceQuery(limit=1))).instances) == 1
    assert len((await store.query_instances(InstanceQuery(limit=MAX_PAGE_LIMIT))).instances) == 3
    with pytest.raises(InvalidInputError) as caught:
        await store.query_instances(InstanceQuery(name="a\x00b"))
    assert caught.value.field == "name"


# -- overview -----------------------------------------------------------------------


async def test_overview_counts_endings_per_minute_and_failure_groups(store: Provider, clock: ManualClock) -> None:
    start = clock.now_ms()
    minute0 = start // 60_000 * 60_000
    for n in range(10):
        await create(store, f"o{n}", name="Pay" if n < 6 else "Ship", version="2" if n == 9 else "1.0.0")
    await create(store, "nov", name="Ship", version=None)
    # Minute 0: two completed, one failed (ValueError) - before `since`, so out of the recent parts.
    await settle(store, {"o0": update("Completed", "Pay"), "o1": update("Completed", "Pay"),
                         "o2": update("Failed", "Pay", error=ErrorDetails("ValueError", "too old")),
                         "o3": update("Running", "Pay")})
    clock.advance(2 * MINUTE)
    since = clock.now_ms()
    await settle(store, {"o4": update("Failed", "Pay", error=ErrorDetails("ValueError", "first")),
                         "o6": update("Completed", "Ship"), "o7": update("Failed", "Ship")})
    clock.advance(MINUTE + 1)
    await settle(store, {"o5": update("Failed", "Pay", error=ErrorDetails("ValueError", "latest")),
                         "o8": update("Failed", "Ship", error=ErrorDetails("TimeoutError", "slow")),
                         "o9": update("Suspended", "Ship", "2")})
    overview = await store.overview(since, finished_statuses=ENDED, failed_status="Failed",
                                    active_statuses=("Pending", "Running"))

    assert overview.counts == [
        InstanceCount("Completed", "Pay", "1.0.0", 2), InstanceCount("Completed", "Ship", "1.0.0", 1),
        InstanceCount("Failed", "Pay", "1.0.0", 3), InstanceCount("Failed", "Ship", "1.0.0", 2),
        InstanceCount("Pending", "Ship", None, 1), InstanceCount("Running", "Pay", "1.0.0", 1),
        InstanceCount("Suspended", "Ship", "2", 1)]
    m2, m3 = minute0 + 2 * 60_000, minute0 + 3 * 60_000
    assert since // 60_000 * 60_000 == m2
    assert overview.finished_per_minute == [(m2, "Completed", 1), (m2, "Failed", 2), (m3, "Failed", 2)]
    last = clock.now_ms()
    assert overview.failures == [
        FailureGroup("ValueError", 2, "o5", "latest", last),
        FailureGroup("TimeoutError", 1, "o8", "slow", last),
        FailureGroup("UnknownError", 1, "o7", "", since)]
    assert overview.depths.active_instances == 2  # o3 Running, nov Pending
    assert overview.depths.orchestrator == 1  # nov's start: settle runs only the instances it names

    # Everything since the beginning: the old failure joins its group, the old endings their minute.
    everything = await store.overview(start, finished_statuses=ENDED, failed_status="Failed")
    assert everything.failures[0] == FailureGroup("ValueError", 3, "o5", "latest", last)
    assert everything.finished_per_minute[:2] == [(minute0, "Completed", 2), (minute0, "Failed", 1)]
    assert sum(n for _, _, n in everything.finished_per_minute) == 8


async def test_overview_of_an_empty_store(store: Provider) -> None:
    overview = await store.overview(0)
    assert (overview.counts, overview.finished_per_minute, overview.failures) == ([], [], [])
    assert overview.depths.active_instances == 0
    overview = await store.overview(0, finished_statuses=(), failed_status="Failed")
    assert overview.finished_per_minute == []


# -- the client's wrappers ------------------------------------------------------------


async def test_client_query_instances_and_overview(store: Provider, clock: ManualClock) -> None:
    client = Client(store, check_names=False)
    for n in range(5):
        await client.start_orchestration(f"c{n}", "Orch", version="1.0.0")
        clock.advance(0.001)
    await settle(store, {"c1": update("Failed", error=ErrorDetails("KeyError", "k")), "c2": update("Completed")})
    page = await client.query_instances(limit=2)
    assert [i.instance_id for i in page.instances] == ["c4", "c3"] and page.next_cursor is not None
    rest = await client.query_instances(limit=2, cursor=page.next_cursor)
    assert [i.instance_id for i in rest.instances] == ["c2", "c1"]
    failed = await client.query_instances(status="Failed", name="Orch", version="1.0.0", q="c")
    assert [(i.instance_id, i.error) for i in failed.instances] == [("c1", "KeyError: k")]
    assert failed.next_cursor is None

    for kwargs, field in [({"status": "Sleeping"}, "status"), ({"name": "a\x00"}, "name"),
                          ({"version": "\ud800"}, "version"), ({"q": "\x00"}, "q"), ({"limit": 0}, "limit"),
                          ({"limit": 1001}, "limit"), ({"cursor": "not-a-cursor"}, "cursor")]:
        with pytest.raises(InvalidInputError) as caught:
            await client.query_instances(**kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field, kwargs

    clock.advance(10 * MINUTE)
    overview = await client.overview(since=timedelta(minutes=30))
    assert [(g.error_type, g.count) for g in overview.failures] == [("KeyError", 1)]
    assert (await client.overview(since=60.0)).failures == []
    assert sum(c.count for c in overview.counts) == 5


# -- per store: indexes, schema upgrade, unreadable rows --------------------------------


def _plan(conn: sqlite3.Connection, query: InstanceQuery, after: tuple[int, str] | None) -> list[str]:
    sql, args = listing_sql(_INSTANCE_COLS, query, after)
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]


async def test_sqlite_listing_walks_an_index_in_order(tmp_path: Path) -> None:
    path = tmp_path / "plan.db"
    store = await SqliteProvider.new(f"sqlite://{path}")
    try:
        for n in range(50):
            await create(store, f"p{n:02d}", name=("A", "B")[n % 2])
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        after = (1, "p10")
        for query, index in [(InstanceQuery(), "ix_instances_created_id"),
                             (InstanceQuery(q="p1"), "ix_instances_created_id"),
                             (InstanceQuery(status="Failed"), "ix_instances_status_created"),
                             (InstanceQuery(name="A"), "ix_instances_name_created")]:
            for position in (None, after):
                plan = _plan(conn, query, position)
                assert len(plan) == 1 and f"USING INDEX {index}" in plan[0], (query, plan)
                assert not any("TEMP B-TREE" in line for line in plan), plan
        plan = _plan(conn, InstanceQuery(status="Failed"), after)
        assert plan[0].startswith("SEARCH instances USING INDEX ix_instances_status_created (status=? AND "
                                  "(created_at,instance_id)<(?,?))"), plan
        # The overview: counts from one covering index in group order; the recent parts a range of another.
        assert [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {COUNTS_SQL}")] == [
            "SCAN instances USING COVERING INDEX ix_instances_status_name_version"]
        for sql, args in [(per_minute_sql(2), ("Completed", "Failed", 0)), (FAILURES_SQL, ("C", "Failed", 0))]:
            plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
            assert any("USING INDEX ix_instances_status_updated (status=? AND updated_at>?)" in line
                       or "USING COVERING INDEX ix_instances_status_updated (status=? AND updated_at>?)" in line
                       for line in plan), plan
            assert not any(line.startswith("SCAN instances") for line in plan), plan
    finally:
        conn.close()


#: The indexes SQLite schema 5 adds.
NEW_INDEXES = ("ix_instances_created_id", "ix_instances_status_created", "ix_instances_name_created",
               "ix_instances_status_updated", "ix_instances_status_name_version")


async def test_sqlite_schema_4_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await SqliteProvider.new(f"sqlite://{path}")
    await create(store, "kept")
    await store.close()
    # Make it look as schema 4 left it: the single created_at index, none of the listing's.
    conn = sqlite3.connect(path)
    for index in NEW_INDEXES:
        conn.execute(f"DROP INDEX {index}")
    conn.execute("CREATE INDEX ix_instances_created ON instances(created_at)")
    conn.execute("UPDATE duroxide_schema SET version = 4")
    conn.commit()
    conn.close()

    store = await SqliteProvider.new(f"sqlite://{path}")
    try:
        assert [r.instance_id for r in (await store.query_instances(InstanceQuery())).instances] == ["kept"]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert set(NEW_INDEXES) <= indexes
        assert "ix_instances_created" not in indexes
        assert conn.execute("SELECT version FROM duroxide_schema").fetchone()[0] == SCHEMA_VERSION >= 5
    finally:
        conn.close()


async def _break_error(store: Provider, iid: str, raw: bytes) -> None:
    """Overwrite the stored error of ``iid`` with ``raw`` (not JSON a store wrote), behind the store's back."""
    if isinstance(store, RedisProvider):
        await redis_raw.break_error(store, iid, raw)
        return
    if isinstance(store, SqliteProvider):
        conn = sqlite3.connect(store.path)
        try:
            conn.execute("UPDATE instances SET error = ? WHERE instance_id = ?", (raw, iid))
            conn.commit()
        finally:
            conn.close()
        return
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"UPDATE {getattr(store, 'schema')}.instances SET error = $1 WHERE instance_id = $2",
                           raw, iid)
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", DURABLE)
async def test_an_unreadable_stored_error_does_not_break_the_overview(kind: str, tmp_path: Path) -> None:
    # (The in-memory store holds decoded errors: nothing to corrupt there.)
    store = await make_store(kind, tmp_path)
    try:
        await _one_unreadable_error(store)
    finally:
        await drop_store(store)


async def _one_unreadable_error(store: Provider) -> None:
    for iid in ("bad", "worse", "fine"):
        await create(store, iid)
    error = ErrorDetails("ValueError", "x")
    await settle(store, {iid: update("Failed", error=error) for iid in ("bad", "worse", "fine")})
    await _break_error(store, "bad", b"{not json")
    await _break_error(store, "worse", b"\xff\xfe")
    overview = await store.overview(0)
    assert sorted((g.error_type, g.count) for g in overview.failures) == [
        ("CorruptHistoryError", 2), ("ValueError", 1)]
    corrupt = next(g for g in overview.failures if g.error_type == "CorruptHistoryError")
    assert corrupt.last_instance_id == "worse" and "unreadable" in corrupt.last_message


@pytest.mark.skipif("postgres" not in PROVIDERS, reason="PostgreSQL is not among the test providers")
async def test_postgres_listing_is_an_index_scan_in_order(tmp_path: Path) -> None:
    import asyncpg

    from duroxide_runtime.providers.postgres_queries import listing_sql as pg_listing_sql

    store = await make_store("postgres", tmp_path)
    schema = getattr(store, "schema")
    for n in range(20):
        await create(store, f"p{n:02d}")
    conn = await asyncpg.connect(PG_URL)
    try:
        # A table this small is cheaper to scan: forbid that, so the plan shows what the index can do
        # (the benchmark shows the planner choosing it by itself on 100,000 rows).
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("SET enable_bitmapscan = off")
        for query, index in [(InstanceQuery(), "ix_instances_created_id"),
                             (InstanceQuery(status="Failed"), "ix_instances_status_created"),
                             (InstanceQuery(name="A"), "ix_instances_name_created")]:
            for position in (None, (1, "p10")):
                sql, args = pg_listing_sql(schema, "instance_id", query, position)
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
                assert f"Index Scan Backward using {index}" in plan or f"Index Only Scan Backward using {index}" \
                    in plan, plan
                assert "Sort" not in plan, plan
    finally:
        await conn.close()
        await drop_store(store)


@pytest.mark.skipif("postgres" not in PROVIDERS, reason="PostgreSQL is not among the test providers")
async def test_a_postgres_schema_at_migration_6_gets_the_listing_indexes(tmp_path: Path) -> None:
    import asyncpg

    from duroxide_runtime.providers.postgres import PostgresProvider

    store = await make_store("postgres", tmp_path)
    schema = getattr(store, "schema")
    await create(store, "kept")
    await store.close()
    conn = await asyncpg.connect(PG_URL)
    try:
        # Make it look as migration 6 left it: the single created_at index, none of the listing's.
        await conn.execute(
            f"DROP INDEX {schema}.ix_instances_created_id, {schema}.ix_instances_status_created, "
            f"{schema}.ix_instances_name_created, {schema}.ix_instances_status_updated; "
            f"DROP FUNCTION {schema}.error_type_m7; "
            f"CREATE INDEX ix_instances_created ON {schema}.instances(created_at); "
            f"DELETE FROM {schema}.schema_migrations WHERE version >= 7")
        store = await PostgresProvider.new(PG_URL, schema=schema)
        assert [r.instance_id for r in (await store.query_instances(InstanceQuery())).instances] == ["kept"]
        assert (await store.overview(0)).counts == [InstanceCount("Pending", "Orch", "1.0.0", 1)]
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)}
        assert {"ix_instances_created_id", "ix_instances_status_created", "ix_instances_name_created",
                "ix_instances_status_updated"} <= indexes
        assert "ix_instances_created" not in indexes
        assert await conn.fetchval(f"SELECT MAX(version) FROM {schema}.schema_migrations") >= 7
    finally:
        await conn.close()
        await drop_store(store)
