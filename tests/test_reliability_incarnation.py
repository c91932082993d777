"""Issue 10, defect 3: an id reused after purge must never continue the purged instance.

A process keeps live executions between turns (the instance cache). If the id
is purged and created again, and the new instance reaches the execution id and
history length of the cached one while another process ran its turns, the old
execution used to be resumed: the new instance completed with the purged
instance's state. Cache entries are now tied to the row's *incarnation*, a
unique id per creation of the instance.

The two dispatchers below stand for two processes (each has its own cache);
the test drives their turns one by one, so the interleaving is exact. Runs on
memory, SQLite (a real file) and PostgreSQL; plus the schema migration that
gives existing stores their incarnations.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from duroxide_runtime import (
    Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus, Provider, RuntimeOptions, SqliteProvider,
)
from duroxide_runtime.dispatch.orchestrations import OrchestrationDispatcher
from duroxide_runtime.dispatch.leases import LockKeeper
from duroxide_runtime.dispatch.turns import TurnThread
from duroxide_runtime.messages import ActivityResult, StartOrchestration
from duroxide_runtime.providers.base import ChildStart, InstanceUpdate, OrchestrationItem, TurnCommit, WorkCompletion
from duroxide_runtime.providers.sqlite import SCHEMA_VERSION

from .support import PG_URL, PROVIDERS, drop_store, make_store


async def wait_then_echo(ctx: OrchestrationContext, inp: str) -> str:
    data = await ctx.schedule_wait("go")
    return f"{inp}:{data}"


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    s = await make_store(request.param, tmp_path)
    try:
        yield s
    finally:
        await drop_store(s)


async def process(d: OrchestrationDispatcher, items: Sequence[OrchestrationItem]) -> None:
    """One batch through the dispatcher, as one of its pipelines runs it."""
    turns = TurnThread(d.options.turn_timeout)
    keeper = LockKeeper(d.store, d.options.orchestration_lock_timeout)
    try:
        with keeper.holding(items):
            await d._process_locked(items, turns)
    finally:
        turns.close()


def dispatcher(store: Provider) -> OrchestrationDispatcher:
    """One process's orchestration dispatcher, with its own live cache."""
    registry = OrchestrationRegistry.builder().register("Wait", wait_then_echo).build()
    return OrchestrationDispatcher(store, registry, RuntimeOptions(instance_cache_size=100))


async def one_turn(store: Provider, d: OrchestrationDispatcher) -> None:
    fetched = await store.fetch_orchestration_items(10, 60)
    assert [i.instance_id for i in fetched.items] == ["x"], fetched
    await process(d, fetched.items)


async def test_purged_and_recreated_id_never_resumes_the_cached_old_instance(store: Provider) -> None:
    client = Client(store)
    a, b = dispatcher(store), dispatcher(store)

    await client.start_orchestration("x", "Wait", "old")
    await one_turn(store, a)  # process A runs the first turn and keeps the execution cached
    assert len(a.cache) == 1
    first = await store.get_instance("x")

    await client.purge("x", force=True)
    await client.start_orchestration("x", "Wait", "new")
    await one_turn(store, b)  # process B runs the new instance's first turn: same length of history
    second = await store.get_instance("x")

    await client.raise_event("x", "go", "data")
    await one_turn(store, a)  # back on A, whose cache still holds the purged instance
    status = await client.get_orchestration_status("x")
    assert status == OrchestrationStatus.Completed(output="new:data"), status  # before the fix: "old:data"
    assert first is not None and second is not None
    assert first.incarnation and second.incarnation and first.incarnation != second.incarnation


async def _resumes_after_the_upgrade(store: Provider) -> None:
    """The instance started before the upgrade has an incarnation now and still completes."""
    record = await store.get_instance("before")
    assert record is not None and record.incarnation and len(record.incarnation) == 32
    d = dispatcher(store)
    await Client(store).raise_event("before", "go", "later")
    for _ in range(2):
        fetched = await store.fetch_orchestration_items(10, 60)
        await process(d, fetched.items)
    assert await Client(store).get_orchestration_status("before") == OrchestrationStatus.Completed(
        output="old-store:later")


async def test_sqlite_store_of_schema_2_is_migrated_and_its_instances_get_incarnations(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await SqliteProvider.new(f"sqlite://{path}")
    client = Client(store)
    await client.start_orchestration("before", "Wait", "old-store")
    await store.close()
    # Make the file what duroxide with schema 2 left behind: no incarnation column.
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE instances DROP COLUMN incarnation")
    conn.execute("UPDATE duroxide_schema SET version=2")
    conn.commit()
    conn.close()

    store = await SqliteProvider.new(f"sqlite://{path}")
    try:
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT version FROM duroxide_schema").fetchone() == (SCHEMA_VERSION,)
        conn.close()
        await _resumes_after_the_upgrade(store)
    finally:
        await store.close()


@pytest.mark.skipif("postgres" not in PROVIDERS, reason="PostgreSQL is not among the test providers")
async def test_postgres_schema_at_migration_2_is_migrated_and_its_instances_get_incarnations() -> None:
    from duroxide_runtime.providers.postgres import PostgresProvider

    schema = f"t_{uuid.uuid4().hex[:16]}"
    store = await PostgresProvider.new(PG_URL, schema=schema)
    try:
        await Client(store).start_orchestration("before", "Wait", "old-store")
        # Make the schema what duroxide at migration 2 left behind: no incarnation column.
        await store._tx(lambda conn: conn.execute(
            f"ALTER TABLE {schema}.instances DROP COLUMN incarnation; "
            f"DELETE FROM {schema}.schema_migrations WHERE version >= 3"))
        await store.close()

        store = await PostgresProvider.new(PG_URL, schema=schema)
        newest = await store._tx(lambda conn: conn.fetchval(f"SELECT MAX(version) FROM {schema}.schema_migrations"))
        assert newest >= 3
        await _resumes_after_the_upgrade(store)
    finally:
        await drop_store(store)


async def test_every_creation_of_an_instance_row_gets_its_own_incarnation(store: Provider) -> None:
    """The provider contract behind defect 3: client starts, children started by a turn and
    re-creations after purge each get a new incarnation; reads return it."""
    client = Client(store)
    await client.start_orchestration("p", "Wait", "")
    fetched = await store.fetch_orchestration_items(10, 60)
    (item,) = fetched.items
    assert item.instance is not None and item.instance.incarnation
    child = StartOrchestration(instance_id="p-child", name="Wait", version="1.0.0", input="",
                               parent_instance_id="p", parent_execution_id=1, parent_event_id=2)
    commit = TurnCommit("p", item.lock_token, 1, consumed=[m.id for m in item.messages], children=[ChildStart(child)],
                        update=InstanceUpdate(name="Wait", version="1.0.0", execution_id=1, status="Running"))
    assert await store.commit_turns([commit]) == [True]
    parent, kid = await store.get_instance("p"), await store.get_instance("p-child")
    assert parent is not None and kid is not None
    assert parent.incarnation == item.instance.incarnation  # a turn does not change it
    assert kid.incarnation and kid.incarnation != parent.incarnation
    listed = {r.instance_id: r.incarnation for r in await store.list_instances()}
    assert listed == {"p": parent.incarnation, "p-child": kid.incarnation}

    await client.purge("p", force=True)
    await client.start_orchestration("p", "Wait", "")
    again = await store.get_instance("p")
    assert again is not None and again.incarnation not in (None, parent.incarnation, kid.incarnation)


async def call_then_echo(ctx: OrchestrationContext, inp: str) -> str:
    return await ctx.schedule_activity("Work", inp)


async def test_result_of_a_purged_instance_never_reaches_its_successor_under_the_same_id(store: Provider) -> None:
    """The other way state could cross a purge: an activity of the purged instance that was
    running during the purge finishes after the id was created again."""
    client = Client(store)
    registry = OrchestrationRegistry.builder().register("Call", call_then_echo).build()
    d = OrchestrationDispatcher(store, registry, RuntimeOptions())

    async def turn() -> None:
        fetched = await store.fetch_orchestration_items(10, 60)
        await process(d, fetched.items)

    await client.start_orchestration("y", "Call", "old")
    await turn()
    [old_lease] = await store.fetch_work_items(10, 60)  # a worker runs the old call...
    await client.purge("y", force=True)
    await client.start_orchestration("y", "Call", "new")
    await turn()
    [new_lease] = await store.fetch_work_items(10, 60)
    assert new_lease.work.input == "new"
    w = old_lease.work  # ...and records its result only now
    await store.complete_work_items([WorkCompletion(old_lease.lock_token, ActivityResult(
        instance_id=w.instance_id, execution_id=w.execution_id, event_id=w.event_id, result="from-old"))])
    w = new_lease.work
    await store.complete_work_items([WorkCompletion(new_lease.lock_token, ActivityResult(
        instance_id=w.instance_id, execution_id=w.execution_id, event_id=w.event_id, result="from-new"))])
    await turn()
    status = await client.get_orchestration_status("y")
    assert status == OrchestrationStatus.Completed(output="from-new"), status  # before: "from-old"
