"""Group commit on the SQLite connection thread (ConnectionThread.write) and what SqliteProvider makes of it.

What a user relies on: writes that arrive together share one transaction (one fsync) and each
caller hears back only after that commit; one failing write fails alone; a full disk fails the
writes it touched with a clear error and loses nothing committed before; a caller never waits
past its bound and is told whether its write may still commit; durable writes commit with
``synchronous=FULL`` unless the store was opened ``Durability.RELAXED``.

The connection thread is held on a gate so that writes queue up behind it: nothing here depends
on timing (the timeouts below expire while the gate is shut, whatever the machine's load).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from duroxide_runtime import Client, Durability, SqliteProvider, StoreError, StoreTimeoutError
from duroxide_runtime.errors import ConfigurationError, ErrorCode
from duroxide_runtime.providers.sqlite_thread import ConnectionThread

SAFETY = 30.0  # seconds; only ever reached when something is broken
SYNC_LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class _Gate:
    """Holds the connection thread inside a callable until the test lets it go."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.entered = asyncio.Event()
        self.release = threading.Event()

    def hold(self, conn: sqlite3.Connection | None = None) -> None:
        self.loop.call_soon_threadsafe(self.entered.set)
        assert self.release.wait(SAFETY), "the test never released the gate"


def _connector(path: Path, statements: list[str]) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        conn.set_trace_callback(statements.append)  # called on the thread, before the statement runs
        return conn

    return connect


@pytest.fixture
def statements() -> list[str]:
    return []


@pytest.fixture
async def db(tmp_path: Path, statements: list[str]) -> AsyncIterator[ConnectionThread]:
    thread = await ConnectionThread.open(_connector(tmp_path / "t.db", statements), name="test-group-commit")
    yield thread
    await thread.close()


def _insert(value: str) -> Callable[[sqlite3.Connection], str]:
    def op(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t(v) VALUES (?)", (value,))
        return value

    return op


def _rows(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]


async def _queued_behind_a_gate(db: ConnectionThread, writes: list[Callable[[sqlite3.Connection], object]],
                                durable: bool = True) -> tuple[_Gate, asyncio.Task[None], list[asyncio.Task[object]]]:
    gate = _Gate()
    held = asyncio.create_task(db.run(gate.hold))
    await asyncio.wait_for(gate.entered.wait(), SAFETY)
    tasks = [asyncio.create_task(db.write(w, durable=durable, what=f"write {i}", timeout=SAFETY))
             for i, w in enumerate(writes)]
    await asyncio.sleep(0)  # each task queues its write at its first step
    return gate, held, tasks


async def test_writes_queued_together_share_one_commit_and_hear_back_after_it(
        db: ConnectionThread, statements: list[str]) -> None:
    gate, held, tasks = await _queued_behind_a_gate(db, [_insert(f"v{i}") for i in range(5)])
    answered: list[str] = []
    for t in tasks:
        t.add_done_callback(lambda t: answered.append(f"answered {t.result()}"))
    statements.clear()
    gate.release.set()
    await held
    assert await asyncio.wait_for(asyncio.gather(*tasks), SAFETY) == ["v0", "v1", "v2", "v3", "v4"]
    log = statements + answered  # the trace runs on the thread before the commit returns
    assert [s for s in log if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert log.index("COMMIT") < min(log.index(a) for a in answered)
    assert await db.run(_rows) == ["v0", "v1", "v2", "v3", "v4"]


async def test_a_failing_write_fails_alone_and_its_neighbours_commit(db: ConnectionThread) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t(v) VALUES ('rolled back')")
        raise ValueError("bad item")

    gate, held, tasks = await _queued_behind_a_gate(db, [_insert("a"), insert_then_fail, _insert("b")])
    gate.release.set()
    await held
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), SAFETY)
    assert outcomes[0] == "a" and outcomes[2] == "b"
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad item"
    assert await db.run(_rows) == ["a", "b"]
    assert await db.write(_insert("c"), durable=True, what="c", timeout=SAFETY) == "c"  # the thread goes on


async def test_a_full_disk_fails_the_writes_it_touched_and_keeps_what_was_committed(db: ConnectionThread) -> None:
    await db.write(_insert("committed before"), durable=True, what="setup", timeout=SAFETY)

    def fill_the_disk(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")  # no page more: SQLite reports SQLITE_FULL

    await db.run(fill_the_disk)
    big = "x" * 200_000
    gate, held, tasks = await _queued_behind_a_gate(db, [_insert("small"), _insert(big), _insert("small too")])
    gate.release.set()
    await held
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), SAFETY)
    assert isinstance(outcomes[1], sqlite3.OperationalError) and "full" in str(outcomes[1])
    rows = await db.run(_rows)
    assert rows[0] == "committed before" and big not in rows
    for value, outcome in [("small", outcomes[0]), ("small too", outcomes[2])]:
        # Each caller's answer matches the file: told it committed exactly when it did.
        assert (outcome == value) == (value in rows), (value, outcome, rows)
        assert outcome == value or isinstance(outcome, sqlite3.Error)
    await db.run(lambda conn: conn.execute("PRAGMA max_page_count=1073741823"))
    assert await db.write(_insert(big), durable=True, what="after", timeout=SAFETY) == big  # room again


async def test_a_full_disk_reaches_the_store_caller_as_a_store_error_naming_the_fix(tmp_path: Path) -> None:
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'full.db'}")
    try:
        client = Client(store, check_names=False)
        await client.start_orchestration("before", "Orch", "kept")
        raw = sqlite3.connect(tmp_path / "full.db")
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        raw.close()
        # max_page_count is per connection: set it on the store's own, through its thread.
        writer = store._db  # noqa: SLF001 - test setup: the connection that writes
        assert writer is not None
        await writer.run(lambda conn: conn.execute(f"PRAGMA max_page_count={pages}"))
        with pytest.raises(StoreError, match="full") as caught:
            await client.start_orchestration("after", "Orch", "y" * 300_000)
        assert caught.value.fix is not None and "free disk space" in caught.value.fix
        assert (await client.get_instance_info("before")).status == "Pending"  # committed before: kept
    finally:
        await store.close()


async def test_a_caller_past_its_bound_hears_whether_its_write_can_still_commit(db: ConnectionThread) -> None:
    gate = _Gate()
    held = asyncio.create_task(db.run(gate.hold))
    await asyncio.wait_for(gate.entered.wait(), SAFETY)
    with pytest.raises(StoreTimeoutError) as queued:  # still queued behind the gate: withdrawn
        await db.write(_insert("withdrawn"), durable=True, what="a queued insert", timeout=0.05)
    assert queued.value.committed is False and queued.value.code is ErrorCode.STORE_TIMEOUT
    assert "a queued insert" in str(queued.value) and "retrying is safe" in str(queued.value)
    gate.release.set()
    await held

    inside = _Gate()

    def slow_commit(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t(v) VALUES ('in flight')")
        inside.hold()
        return "in flight"

    with pytest.raises(StoreTimeoutError) as running:  # already being committed: outcome unknown
        await db.write(slow_commit, durable=True, what="a slow insert", timeout=0.05)
    assert running.value.committed is None and "may have committed" in str(running.value)
    inside.release.set()
    assert await db.run(_rows) == ["in flight"]  # it did commit; the withdrawn one never ran


@pytest.mark.parametrize(("durable_sync", "durable", "expected"),
                         [("FULL", True, "FULL"), ("FULL", False, "NORMAL"), ("NORMAL", True, "NORMAL")])
async def test_durable_writes_commit_at_the_stores_level_and_leases_without_fsync(
        tmp_path: Path, durable_sync: str, durable: bool, expected: str) -> None:
    db = await ConnectionThread.open(_connector(tmp_path / "t.db", []), durable_sync=durable_sync)
    try:
        level = await db.write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0], durable=durable,
                               what="a probe", timeout=SAFETY)
        assert SYNC_LEVELS[level] == expected
    finally:
        await db.close()


async def test_a_group_with_one_durable_write_commits_durably(db: ConnectionThread) -> None:
    probe: Callable[[sqlite3.Connection], object] = lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
    gate = _Gate()
    held = asyncio.create_task(db.run(gate.hold))
    await asyncio.wait_for(gate.entered.wait(), SAFETY)
    lease = asyncio.create_task(db.write(probe, durable=False, what="a lease", timeout=SAFETY))
    start = asyncio.create_task(db.write(probe, durable=True, what="a start", timeout=SAFETY))
    await asyncio.sleep(0)
    gate.release.set()
    await held
    assert [SYNC_LEVELS[int(str(x))] for x in await asyncio.gather(lease, start)] == ["FULL", "FULL"]


def test_stores_are_durable_by_default_and_refuse_an_unknown_durability() -> None:
    assert SqliteProvider(":memory:").durability is Durability.FULL
    with pytest.raises(ConfigurationError, match="Durability.RELAXED"):
        SqliteProvider(":memory:", durability="relaxed")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="write_timeout"):
        SqliteProvider(":memory:", write_timeout=0)


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "with-other-writes"])
async def test_a_turn_the_store_refuses_fails_alone_and_the_batch_commits(tmp_path: Path, grouped: bool) -> None:
    """A batch of turns runs without a savepoint per turn: a turn SQLite refuses (here an event id
    its history already holds) rolls the transaction back, and the batch is redone without it, alone
    or inside a group of other callers' writes, each of which still commits once."""
    from duroxide_runtime.history import Event
    from duroxide_runtime.messages import StartOrchestration
    from duroxide_runtime.providers.base import InstanceUpdate, TurnCommit, now_ms

    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'refuse.db'}")
    try:
        for iid in ("a", "bad", "c"):
            await store.create_instance(StartOrchestration(instance_id=iid, name="Orch", version="1.0.0", input=""))
        items = {i.instance_id: i for i in (await store.fetch_orchestration_items(10, 30)).items}

        def turn(iid: str, *event_ids: int) -> TurnCommit:
            item = items[iid]
            return TurnCommit(iid, item.lock_token, 1, [m.id for m in item.messages], new_events=[
                Event.EventRaised(event_id=e, timestamp_ms=now_ms(), name="x", data="") for e in event_ids],
                update=InstanceUpdate(name="Orch", version="1.0.0", execution_id=1, status="Running"))

        commits = [turn("a", 1), turn("bad", 1, 1), turn("c", 1)]  # "bad" holds event 1 twice
        if grouped:
            gate = _Gate()
            db = store._db
            assert db is not None
            held = asyncio.ensure_future(db.run(gate.hold))
            await asyncio.wait_for(gate.entered.wait(), SAFETY)
            batch = asyncio.ensure_future(store.commit_turns(commits))
            other = asyncio.ensure_future(store.create_instance(
                StartOrchestration(instance_id="other", name="Orch", version="1.0.0", input="")))
            for _ in range(3):
                await asyncio.sleep(0)  # each call queues its write within its first steps (no I/O before)
            gate.release.set()
            results = await batch
            await asyncio.gather(held, other)
            assert await store.get_instance("other") is not None
        else:
            results = await store.commit_turns(commits)
        assert results == [True, False, True]
        assert commits[1].refused is not None and "IntegrityError" in commits[1].refused
        assert [len(await store.read_history(i)) for i in ("a", "bad", "c")] == [1, 0, 1]
        # The refused turn's lock still holds: the dispatcher ends that instance with it.
        assert await store.commit_turns([turn("bad", 1)]) == [True]
    finally:
        await store.close()
