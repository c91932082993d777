"""The SQLite store's connection thread: it outlives failing and cancelled callers, never leaves a
transaction open, closes cleanly, and never keeps a program alive; and instance-lock renewal on SQLite.

Every test uses a real SQLite file; waits are on events, with generous bounds only as a safety net.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from duroxide_runtime import Client, SqliteProvider
from duroxide_runtime.errors import StoreError
from duroxide_runtime.providers.sqlite_thread import ConnectionThread

SAFETY = 30.0  # seconds; only ever reached when something is broken


def _connector(path: Path) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        return conn

    return connect


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[ConnectionThread]:
    thread = await ConnectionThread.open(_connector(tmp_path / "t.db"), name="test-sqlite-thread")
    yield thread
    await thread.close()


def _rows(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


class _Gate:
    """Holds a callable on the connection thread until the test lets it go."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.entered = asyncio.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        """Called on the connection thread: tell the test we are inside, then wait to be let go."""
        self.loop.call_soon_threadsafe(self.entered.set)
        assert self.release.wait(SAFETY), "the test never released the gate"


async def test_a_failing_callable_reaches_its_caller_and_the_thread_goes_on(db: ConnectionThread) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await db.run(boom)
    with pytest.raises(sqlite3.OperationalError):
        await db.run(lambda conn: conn.execute("SELECT * FROM no_such_table"))

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(v) VALUES ('lost')")
        raise KeyError("half way")  # no ROLLBACK of its own

    with pytest.raises(KeyError):
        await db.run(insert_then_fail)

    def insert(conn: sqlite3.Connection) -> list[str]:
        assert not conn.in_transaction
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(v) VALUES ('kept')")
        return _rows(conn)

    assert await db.run(insert) == ["kept"]  # the half-done insert was rolled back


async def test_a_callable_that_leaves_its_transaction_open_is_rolled_back_and_reported(db: ConnectionThread) -> None:
    def forgets_commit(conn: sqlite3.Connection) -> str:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(v) VALUES ('x')")
        return "done"

    with pytest.raises(StoreError, match="transaction still open"):
        await db.run(forgets_commit)
    assert await db.run(lambda conn: (conn.in_transaction, _rows(conn))) == (False, [])


@pytest.mark.parametrize("ending", ["commit", "fail"])
async def test_a_cancelled_caller_leaves_no_transaction_open(db: ConnectionThread, ending: str) -> None:
    gate = _Gate()

    def transaction(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(v) VALUES ('during cancel')")
        gate.hold()
        if ending == "fail":
            raise RuntimeError("the statement after the wait failed")
        conn.execute("COMMIT")

    caller = asyncio.create_task(db.run(transaction))
    await asyncio.wait_for(gate.entered.wait(), SAFETY)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    queued_after = asyncio.create_task(db.run(lambda conn: (conn.in_transaction, _rows(conn))))
    gate.release.set()  # the cancelled caller's callable now runs to its end
    in_transaction, rows = await asyncio.wait_for(queued_after, SAFETY)
    assert not in_transaction
    assert rows == (["during cancel"] if ending == "commit" else [])


async def test_callers_beyond_the_bound_wait_for_room_and_all_run_in_order(tmp_path: Path) -> None:
    db = await ConnectionThread.open(_connector(tmp_path / "t.db"), max_pending=2)
    try:
        gate = _Gate()
        blocker = asyncio.create_task(db.run(lambda conn: gate.hold()))
        await asyncio.wait_for(gate.entered.wait(), SAFETY)

        def add(v: str) -> Callable[[sqlite3.Connection], int]:
            return lambda conn: conn.execute("INSERT INTO t(v) VALUES (?)", (v,)).rowcount

        writers = [asyncio.create_task(db.run(add(str(i)))) for i in range(6)]
        gate.release.set()
        await asyncio.wait_for(asyncio.gather(blocker, *writers), SAFETY)
        assert await db.run(_rows) == [str(i) for i in range(6)]
    finally:
        await db.close()


async def test_close_runs_what_was_queued_is_idempotent_and_ends_the_thread(tmp_path: Path) -> None:
    name = "test-sqlite-close"
    db = await ConnectionThread.open(_connector(tmp_path / "t.db"), name=name)
    assert len(_threads_named(name)) == 1
    queued = asyncio.create_task(db.run(lambda conn: conn.execute("INSERT INTO t(v) VALUES ('queued')").rowcount))
    await asyncio.sleep(0)  # the task submits its callable
    await asyncio.gather(db.close(), db.close())
    await db.close()
    assert await queued == 1
    assert db.closed and _threads_named(name) == []
    with pytest.raises(StoreError, match="closed") as err:
        await db.run(_rows)
    assert err.value.fix
    conn = sqlite3.connect(tmp_path / "t.db")
    assert _rows(conn) == ["queued"]
    conn.close()


async def test_a_collected_connection_thread_stops_its_thread(tmp_path: Path) -> None:
    name = "test-sqlite-forgotten"
    db = await ConnectionThread.open(_connector(tmp_path / "t.db"), name=name)
    (thread,) = _threads_named(name)
    assert thread.daemon
    del db
    gc.collect()
    thread.join(SAFETY)
    assert not thread.is_alive()


async def test_opening_a_directory_fails_and_leaves_no_thread_behind(tmp_path: Path) -> None:
    name = "test-sqlite-bad-open"
    with pytest.raises(sqlite3.OperationalError):
        await ConnectionThread.open(lambda: sqlite3.connect(tmp_path), name=name)
    for thread in _threads_named(name):
        thread.join(SAFETY)
        assert not thread.is_alive()


def test_a_program_that_forgets_to_close_its_store_still_exits(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    program = textwrap.dedent(f"""
        import asyncio
        from duroxide_runtime import Client, SqliteProvider

        STORES = []   # held to the end, as a program-wide store is

        async def main() -> None:
            store = await SqliteProvider.new({str(path)!r})
            STORES.append(store)
            await Client(store).start_orchestration("left-open", "Greeter", "x")
            print("started", flush=True)   # and no store.close()

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started"
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT status FROM instances WHERE instance_id='left-open'").fetchone() == ("Pending",)
    conn.close()


# -- instance-lock renewal ----------------------------------------------------------------------


async def _locked_until(path: Path, instance_id: str) -> int | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT locked_until FROM instance_locks WHERE instance_id=?", (instance_id,)).fetchone()
        return None if row is None else int(row[0])
    finally:
        conn.close()


async def test_sqlite_renews_held_instance_locks_and_refuses_lost_ones(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = await SqliteProvider.new(str(path))
    try:
        client = Client(store)
        for iid in ("a", "b"):
            await client.start_orchestration(iid, "N", "")
        first = await store.fetch_orchestration_items(10, 0.0)  # expires at once: anyone may take it over
        tokens = {item.instance_id: item.lock_token for item in first.items}
        assert set(tokens) == {"a", "b"}
        taken = await store.fetch_orchestration_items(1, 60.0)  # another dispatcher takes 'a' over
        (a_again,) = taken.items
        assert a_again.instance_id == "a"

        before = await _locked_until(path, "b")
        assert before is not None
        held = await store.renew_orchestration_items(
            [("a", tokens["a"]), ("b", tokens["b"]), ("a", a_again.lock_token), ("gone", "no-such-token")], 300.0)
        assert held == [False, True, True, False]
        renewed = await _locked_until(path, "b")
        assert renewed is not None and renewed >= before + 299_000
        assert await store.renew_orchestration_items([], 300.0) == []

        await store.abandon_orchestration_item("b", tokens["b"], 0.0)
        assert await store.renew_orchestration_items([("b", tokens["b"])], 300.0) == [False]
    finally:
        await store.close()
