"""``SqliteProvider``: the embedded default store (SQLite in WAL mode, standard ``sqlite3``).

Why it is fast: each store operation is one plain-``sqlite3`` function run on
the store's own connection thread (:mod:`.sqlite_thread`), so a whole
transaction (a batch of many turns, say) costs one thread hop instead of one
per statement. Busy or locked databases (another process writing) are
retried, never reported as a failure of an instance. Errors are told apart by
their SQLite result code, never by their message text.

Example::

    store = await SqliteProvider.new("sqlite:///var/lib/app/duroxide.db")   # file, created if missing
    store = SqliteProvider.in_memory()                                       # private in-memory database
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from ..errors import (
    ConfigurationError, CorruptHistoryError, InstanceAlreadyExistsError, StoreError,
)
from ..history import HistoryEvent, decode_event, encode_event
from ..messages import ActivityWork, OrchestratorMessage, StartOrchestration, decode_message, encode_message
from .base import (
    WAITING_LOCK_TOKEN, WAITING_LOCK_UNTIL, WAITING_OFFSET_MS, CallKey, Durability, FetchResult, HeartbeatRecord, HeartbeatWrite, QueueDepths, QueueStats, decode_error_details, InstanceRecord,
    InstancePage, InstanceQuery, OrchestrationItem, Provider, QueuedMessage, StoreOverview, TurnCommit,
    WorkCompletion, WorkLease, check_query, make_overview, page_of, status_admits, timer_key, StartOutcome, ScheduleFire, ScheduleRecord,
    check_debounced_start, LeaseOffer, LockOffer,
)
from .queue_slots import QueueSlots, limited_queues
from .sqlite_queries import listing_sql, overview_parts
from ..clock import SYSTEM_CLOCK, Clock
from ..queues import QueueOptions
from ..start_policy import IDEMPOTENCY_KEY_TTL_MS, IfExists
from .sqlite_thread import ConnectionThread

__all__ = ["SqliteProvider"]

_log = logging.getLogger("duroxide.sqlite")
_T = TypeVar("_T")

#: Seconds a caller waits for its write to be committed (a stalled disk) before StoreTimeoutError.
DEFAULT_WRITE_TIMEOUT = 120.0

SCHEMA_VERSION = 9
_SCHEMA = """
CREATE TABLE IF NOT EXISTS duroxide_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT, execution_id INTEGER NOT NULL,
    status TEXT NOT NULL, output TEXT, error BLOB, custom_status TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, parent_instance_id TEXT, incarnation TEXT,
    queue TEXT, ckey TEXT, priority INTEGER, gate INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS ix_instances_parent ON instances(parent_instance_id);
CREATE INDEX IF NOT EXISTS ix_instances_gate ON instances(queue, gate, priority DESC, created_at) WHERE gate > 0;
CREATE INDEX IF NOT EXISTS ix_instances_created_id ON instances(created_at, instance_id);
CREATE INDEX IF NOT EXISTS ix_instances_status_created ON instances(status, created_at, instance_id);
CREATE INDEX IF NOT EXISTS ix_instances_name_created ON instances(name, created_at, instance_id);
CREATE INDEX IF NOT EXISTS ix_instances_status_updated ON instances(status, updated_at);
CREATE INDEX IF NOT EXISTS ix_instances_status_name_version ON instances(status, name, version);
CREATE TABLE IF NOT EXISTS history (
    instance_id TEXT NOT NULL, execution_id INTEGER NOT NULL, event_id INTEGER NOT NULL, event BLOB NOT NULL,
    PRIMARY KEY (instance_id, execution_id, event_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orchestrator_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, message BLOB NOT NULL,
    visible_at INTEGER NOT NULL, dequeue_count INTEGER NOT NULL DEFAULT 0, lock_token TEXT);
CREATE INDEX IF NOT EXISTS ix_oq_visible ON orchestrator_queue(visible_at);
CREATE INDEX IF NOT EXISTS ix_oq_instance ON orchestrator_queue(instance_id, visible_at);
CREATE TABLE IF NOT EXISTS instance_locks (
    instance_id TEXT PRIMARY KEY, lock_token TEXT NOT NULL, locked_until INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ix_locks_until ON instance_locks(locked_until);
CREATE TABLE IF NOT EXISTS worker_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, execution_id INTEGER NOT NULL,
    event_id INTEGER NOT NULL, message BLOB NOT NULL, visible_at INTEGER NOT NULL,
    lock_token TEXT, locked_until INTEGER NOT NULL DEFAULT 0, dequeue_count INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0, name TEXT NOT NULL DEFAULT '',
    queue TEXT NOT NULL DEFAULT 'default', ckey TEXT, priority INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS ix_wq_visible ON worker_queue(visible_at);
CREATE INDEX IF NOT EXISTS ix_wq_priority ON worker_queue(priority DESC, id);
CREATE INDEX IF NOT EXISTS ix_wq_queue_lease ON worker_queue(queue, locked_until);
CREATE TABLE IF NOT EXISTS queue_leases (
    kind INTEGER NOT NULL DEFAULT 0, queue TEXT NOT NULL, leased_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ix_queue_leases ON queue_leases(kind, queue, leased_at);
CREATE INDEX IF NOT EXISTS ix_wq_call ON worker_queue(instance_id, execution_id, event_id);
CREATE INDEX IF NOT EXISTS ix_wq_token ON worker_queue(lock_token);
CREATE TABLE IF NOT EXISTS activity_heartbeats (
    instance_id TEXT NOT NULL, execution_id INTEGER NOT NULL, call_id INTEGER NOT NULL, event_id INTEGER NOT NULL,
    details TEXT, updated_at INTEGER NOT NULL,
    PRIMARY KEY (instance_id, execution_id, call_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS start_keys (
    idempotency_key TEXT PRIMARY KEY, instance_id TEXT NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_start_keys_created ON start_keys(created_at);
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id TEXT PRIMARY KEY, cron TEXT NOT NULL, orchestration TEXT NOT NULL, input TEXT NOT NULL,
    version TEXT, catch_up TEXT NOT NULL, paused INTEGER NOT NULL DEFAULT 0, next_tick INTEGER NOT NULL,
    last_tick INTEGER, last_instance_id TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    registered_at INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS debounce_windows (
    name TEXT NOT NULL, debounce_key TEXT NOT NULL, instance_id TEXT NOT NULL, message_id INTEGER NOT NULL,
    PRIMARY KEY (name, debounce_key)) WITHOUT ROWID;
"""

_SCHEDULE_COLS = ("schedule_id, cron, orchestration, input, version, catch_up, paused, next_tick, last_tick, "
                  "last_instance_id, created_at, updated_at, registered_at")

_INSTANCE_COLS = ("instance_id, name, version, execution_id, status, output, error, custom_status, "
                  "created_at, updated_at, parent_instance_id, incarnation")


def _reader_connection(path: str) -> sqlite3.Connection:
    """A connection that only reads (``query_only``): each statement its own read transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA query_only=ON")
    return conn


def _path_from_url(url: str) -> str:
    if url in (":memory:", "sqlite::memory:", "sqlite://:memory:", "sqlite:///:memory:"):
        return ":memory:"
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
    elif url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
    elif "://" in url:
        raise ConfigurationError(f"{url!r} is not a SQLite URL",
                                 fix="use 'sqlite:///absolute/path.db', 'sqlite:relative.db' or a plain file path")
    else:
        path = url
    path = path.split("?", 1)[0]
    if not path:
        raise ConfigurationError(f"SQLite URL {url!r} names no file", fix="use e.g. 'sqlite:///tmp/app.db'")
    return path


def _row_to_instance(row: Sequence[Any]) -> InstanceRecord:
    error = decode_error_details(row[6])
    return InstanceRecord(row[0], row[1], row[2], row[3], row[4], row[5], error, row[7], row[8], row[9], row[10],
                          incarnation=row[11])


#: Columns each duroxide table must have; a table of that name without them belongs to something else.
_REQUIRED_COLUMNS = {
    "duroxide_schema": {"version"},
    "instances": {"instance_id", "name", "version", "execution_id", "status", "output", "error", "custom_status",
                  "created_at", "updated_at", "parent_instance_id"},
    "history": {"instance_id", "execution_id", "event_id", "event"},
    "orchestrator_queue": {"id", "instance_id", "message", "visible_at", "dequeue_count", "lock_token"},
    "instance_locks": {"instance_id", "lock_token", "locked_until"},
    "worker_queue": {"id", "instance_id", "execution_id", "event_id", "message", "visible_at", "lock_token",
                     "locked_until", "dequeue_count", "cancelled"},
    "activity_heartbeats": {"instance_id", "execution_id", "call_id", "event_id", "details", "updated_at"},
    "start_keys": {"idempotency_key", "instance_id", "created_at"},
}


def _check_not_foreign(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database whose tables share duroxide's names but not its columns (another application's)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table, needed in _REQUIRED_COLUMNS.items():
        if table in tables:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            missing = needed - have
            if missing:
                raise StoreError(
                    f"SQLite database {path!r} is not a duroxide store: its table {table!r} lacks the columns "
                    f"{', '.join(sorted(missing))} (another application's schema); nothing was changed",
                    fix="give duroxide a file of its own (a new path is created on first use); "
                        "never share a database file with another application")


def _result_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc`` (``SQLITE_BUSY``...), ``None`` if SQLite did not raise it.

    ``sqlite_errorcode`` is the extended code (``SQLITE_BUSY_SNAPSHOT``...); its low byte is the primary one.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _store_error(path: str, exc: BaseException) -> StoreError:
    """A :class:`StoreError` naming what is wrong with the SQLite file at ``path``, and its own fix.

    Told apart by exception type and SQLite result code; the message text is only quoted.
    """
    text = str(exc)
    code = _result_code(exc)
    if code == sqlite3.SQLITE_NOTADB:
        return StoreError(f"{path!r} is not a SQLite database ({text})",
                          fix="point the store at duroxide's SQLite file, or at a new path (it is created); "
                              "this file holds something else: do not reuse it")
    if code == sqlite3.SQLITE_CORRUPT:
        return StoreError(f"SQLite database {path!r} is corrupted ({text})",
                          fix="restore the file from a backup, or move it aside and start a new store; "
                              f"`sqlite3 {path} 'PRAGMA integrity_check'` shows the damage")
    if code == sqlite3.SQLITE_READONLY:
        return StoreError(f"cannot write SQLite database {path!r}: the file or its directory is read-only ({text})",
                          fix="make the file and its directory writable by this user (SQLite also writes "
                              "FILE-wal and FILE-shm next to it), or use a writable path")
    if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR) or getattr(exc, "errno", None) == errno.ENOSPC:
        return StoreError(f"SQLite cannot write {path!r}: {text}",
                          fix="free disk space on the volume that holds the file (and check the disk), then retry")
    if isinstance(exc, OSError) or code == sqlite3.SQLITE_CANTOPEN:
        return StoreError(f"cannot open or create SQLite database {path!r} ({text})",
                          fix="check that the directory exists and this user may create files in it "
                              "(SQLite writes FILE, FILE-wal and FILE-shm), or use another path")
    if code == sqlite3.SQLITE_ERROR:
        # duroxide's statements are fixed and valid for its schema, so SQLite's generic
        # SQL error ("no such table", "no such column") means the tables are not duroxide's.
        return StoreError(f"SQLite database {path!r} does not have duroxide's schema ({text})",
                          fix="give duroxide a file of its own; if another program changed its tables, "
                              "restore the file from a backup")
    return StoreError(f"SQLite error on {path!r}: {text}",
                      fix="check the file's permissions and free disk space; the message above names the cause")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (``SQLITE_BUSY``, ``SQLITE_LOCKED``): worth retrying."""
    return _result_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteProvider(Provider):
    """A durable store in one SQLite file (or a private in-memory database).

    ``clock`` is the time source of locks, leases, due times and timestamps
    (default: the system clock); the runtime and clients of the store use it too.
    ``durability`` says what an acknowledged write survives (:class:`Durability`;
    ``FULL``, the default, survives power loss). Writes that arrive together share
    one transaction and one fsync (group commit); a write not confirmed within
    ``write_timeout`` seconds raises :class:`~duroxide_runtime.errors.StoreTimeoutError`.

    Example::

        store = await SqliteProvider.new("sqlite:///orders.db")
    """

    def __init__(self, path: str, *, clock: Clock = SYSTEM_CLOCK, durability: Durability = Durability.FULL,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
        if not isinstance(durability, Durability):
            raise ConfigurationError(f"durability must be a Durability, got {durability!r}",
                                     fix="pass Durability.FULL (the default) or Durability.RELAXED")
        if not write_timeout > 0:
            raise ConfigurationError(f"write_timeout must be a positive number of seconds, got {write_timeout!r}",
                                     fix=f"pass e.g. write_timeout={DEFAULT_WRITE_TIMEOUT:g}")
        self.path = path
        self.clock = clock
        self.durability = durability
        self.write_timeout = write_timeout
        self._db: ConnectionThread | None = None
        #: Reads (status, histories, listings) on a connection of their own, so that they never
        #: wait in line behind the writes (WAL readers see the last commit); none in memory.
        self._reader: ConnectionThread | None = None
        self._connecting: asyncio.Lock | None = None
        self._next_key_gc = 0.0

    @classmethod
    async def new(cls, url: str, *, clock: Clock = SYSTEM_CLOCK, durability: Durability = Durability.FULL,
                  write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> SqliteProvider:
        """Open (creating if missing) the database at ``url`` and migrate its schema."""
        provider = cls(_path_from_url(url), clock=clock, durability=durability, write_timeout=write_timeout)
        await provider._connect()
        return provider

    @classmethod
    def in_memory(cls, *, clock: Clock = SYSTEM_CLOCK) -> SqliteProvider:
        """A private in-memory SQLite database; connects on first use (``await`` it to connect now)."""
        return cls(":memory:", clock=clock)

    def __await__(self) -> Generator[Any, None, SqliteProvider]:
        return self._connect().__await__()

    async def _connect(self) -> SqliteProvider:
        if self._db is not None:
            return self
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._db is None:
                try:
                    if self.path != ":memory:":
                        parent = os.path.dirname(os.path.abspath(self.path))
                        os.makedirs(parent, exist_ok=True)
                    path = self.path
                    # A daemon thread: a forgotten close() must not keep the program alive;
                    # SQLite's journal makes dying mid-transaction safe.
                    db = await ConnectionThread.open(
                        lambda: sqlite3.connect(path, isolation_level=None, timeout=30.0),
                        name=f"duroxide-sqlite {os.path.basename(path)}",
                        durable_sync="FULL" if self.durability is Durability.FULL else "NORMAL")
                except (OSError, sqlite3.Error) as exc:
                    raise _store_error(self.path, exc) from exc
                self._db = db
                try:
                    await self._retrying_busy(lambda db: db.run(self._migrate))
                    if path != ":memory:":  # another connection to ":memory:" would be another database
                        self._reader = await ConnectionThread.open(
                            lambda: _reader_connection(path), name=f"duroxide-sqlite-reads {os.path.basename(path)}")
                except BaseException:
                    self._db = None
                    await db.close()
                    raise
        return self

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            _check_not_foreign(conn, self.path)
        except StoreError:
            conn.execute("ROLLBACK")
            raise
        _add_queue_columns(conn)  # before _SCHEMA: its indexes name them
        for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
            conn.execute(statement)
        row = conn.execute("SELECT version FROM duroxide_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO duroxide_schema(version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] < SCHEMA_VERSION:
            # v2: activity names on work items, so workers can prefer what they know.
            columns = {r[1] for r in conn.execute("PRAGMA table_info(worker_queue)")}
            if "name" not in columns:
                conn.execute("ALTER TABLE worker_queue ADD COLUMN name TEXT NOT NULL DEFAULT ''")
            # v3: an incarnation per instance row, so a purged and re-created id never
            # matches state cached for the old instance; existing rows get one each.
            columns = {r[1] for r in conn.execute("PRAGMA table_info(instances)")}
            if "incarnation" not in columns:
                conn.execute("ALTER TABLE instances ADD COLUMN incarnation TEXT")
            conn.execute("UPDATE instances SET incarnation = lower(hex(randomblob(16))) WHERE incarnation IS NULL")
            # v4: activity_heartbeats (heartbeat details per activity call), created by _SCHEMA above.
            # v5: the operator listing's indexes (created by _SCHEMA above); the one on created_at
            # alone is a prefix of ix_instances_created_id, so it goes.
            conn.execute("DROP INDEX IF EXISTS ix_instances_created")
            # v6: start_keys (the idempotency keys of starts), created by _SCHEMA above.
            # v7: queue, concurrency key and priority on work items and instances, and an
            # instance's admission state (_add_queue_columns); queue_leases (lease and
            # admission times of rate-limited queues) and the indexes, created by _SCHEMA above.
            # v8: schedules (cron schedules, duroxide_runtime.schedules), created by _SCHEMA above.
            # v9: debounce_windows (debounced starts' windows, Provider.debounce_start), created by _SCHEMA above.
            conn.execute("UPDATE duroxide_schema SET version=?", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise ConfigurationError(
                f"database {self.path!r} has schema version {row[0]}, newer than this duroxide ({SCHEMA_VERSION})",
                fix="upgrade duroxide on this machine")
        conn.execute("COMMIT")

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the read ``fn(conn)`` on the reading connection's thread (one hop), retrying while the
        database is busy. It sees every write whose caller has been answered."""
        if self._db is None:
            await self._connect()
        reader = self._reader
        if reader is None:
            return await self._retrying_busy(lambda db: db.run(fn))
        return await self._retrying_busy(lambda _db: reader.run(fn))

    async def _write(self, fn: Callable[[sqlite3.Connection], _T], *, durable: bool, what: str) -> _T:
        """Run ``fn(conn)`` in a group-committed transaction (see ConnectionThread.write).

        ``durable``: the write acknowledges something a user relies on (a start, an event, a
        turn, a result) and commits at this store's durability; locks and leases do not.
        """
        return await self._retrying_busy(
            lambda db: db.write(fn, durable=durable, what=what, timeout=self.write_timeout))

    async def _retrying_busy(self, call: Callable[[ConnectionThread], Awaitable[_T]]) -> _T:
        if self._db is None:
            await self._connect()
        db = self._db
        assert db is not None
        delay = 0.005
        # Real time, not self.clock: this waits for another connection's lock to go away.
        deadline = time.monotonic() + 120
        while True:
            try:
                return await call(db)
            except sqlite3.DatabaseError as exc:
                if not isinstance(exc, sqlite3.OperationalError) and type(exc) is not sqlite3.DatabaseError:
                    raise  # IntegrityError, DataError...: about one item, not the file; the caller decides
                if not (isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)) or time.monotonic() > deadline:
                    raise _store_error(self.path, exc) from exc
                _log.debug("database busy; retrying in %.3fs", delay)
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 2)

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    # -- client side -------------------------------------------------------------

    async def create_instance(self, start: StartOrchestration, *,
                              lock: LockOffer | None = None) -> OrchestrationItem | None:
        def op(conn: sqlite3.Connection) -> tuple[bool, OrchestrationItem | None]:
            if conn.execute("SELECT 1 FROM instances WHERE instance_id=?", (start.instance_id,)).fetchone():
                return False, None
            now = self.clock.now_ms()
            _create(conn, start, now)
            if lock is None or start.queue is not None or start.name not in lock.names:
                return True, None
            return True, _lock_instance(conn, start.instance_id, now, now + int(lock.lock_timeout * 1000))

        created, item = await self._write(op, durable=True, what="a start")
        if not created:
            raise InstanceAlreadyExistsError(start.instance_id)
        return item

    async def start_instance(self, start: StartOrchestration, *, if_exists: IfExists = IfExists.FAIL,
                             replace_if_status_in: Collection[str] = (), idempotency_key: str | None = None,
                             key_ttl_ms: int = IDEMPOTENCY_KEY_TTL_MS,
                             messages: Sequence[tuple[OrchestratorMessage, int | None]] = ()) -> StartOutcome:
        iid = start.instance_id
        collect = idempotency_key is not None and self._key_gc_due()

        def op(conn: sqlite3.Connection) -> StartOutcome:
            # One write transaction (BEGIN IMMEDIATE): starts from every process take turns, so
            # of those sharing a key exactly one finds it absent.
            now = self.clock.now_ms()
            if idempotency_key is not None:
                if collect:
                    conn.execute("DELETE FROM start_keys WHERE created_at < ?", (now - key_ttl_ms,))
                row = conn.execute("SELECT instance_id FROM start_keys WHERE idempotency_key=? AND created_at >= ?",
                                   (idempotency_key, now - key_ttl_ms)).fetchone()
                if row is not None:
                    return StartOutcome(row[0], created=False, by_key=True)
            record = _get_instance(conn, iid)
            replaced: list[str] = []
            if record is not None:
                if if_exists is not IfExists.REPLACE or record.status not in replace_if_status_in:
                    if if_exists is IfExists.RETURN_EXISTING:
                        _remember_key(conn, idempotency_key, iid, now)
                    return StartOutcome(iid, created=False, existing=record)
                replaced = _delete_tree(conn, iid)
            _create(conn, start, now)
            for message, visible_at in messages:
                _enqueue(conn, message, visible_at)
            _remember_key(conn, idempotency_key, iid, now)
            return StartOutcome(iid, created=True, replaced=tuple(replaced))

        return await self._write(op, durable=True, what="a start")

    async def debounce_start(self, start: StartOrchestration, *, debounce_key: str, quiet_ms: int) -> StartOutcome:
        check_debounced_start(start, quiet_ms)

        def op(conn: sqlite3.Connection) -> StartOutcome:
            # One write transaction (BEGIN IMMEDIATE): debounced starts from every process take
            # turns, so each finds the window as the one before it left it.
            now = self.clock.now_ms()
            window = conn.execute("SELECT instance_id, message_id FROM debounce_windows WHERE name=? AND debounce_key=?",
                                  (start.name, debounce_key)).fetchone()
            if window is not None:
                held_id, qid = window
                # Open while its start was never fetched: then it takes this call's input and due time.
                if conn.execute("UPDATE orchestrator_queue SET message=?, visible_at=? "
                                "WHERE id=? AND instance_id=? AND dequeue_count=0",
                                (encode_message(replace(start, instance_id=held_id)), now + quiet_ms, qid,
                                 held_id)).rowcount:
                    return StartOutcome(held_id, created=False, debounced=True)
            record = _get_instance(conn, start.instance_id)
            if record is not None:
                return StartOutcome(start.instance_id, created=False, existing=record)
            _insert_instance(conn, start, now)
            cursor = conn.execute("INSERT INTO orchestrator_queue(instance_id, message, visible_at) VALUES (?,?,?)",
                                  (start.instance_id, encode_message(start), now + quiet_ms))
            conn.execute("INSERT OR REPLACE INTO debounce_windows(name, debounce_key, instance_id, message_id) "
                         "VALUES (?,?,?,?)", (start.name, debounce_key, start.instance_id, cursor.lastrowid))
            return StartOutcome(start.instance_id, created=True)

        return await self._write(op, durable=True, what="a debounced start")

    def _key_gc_due(self) -> bool:
        """Whether this start also deletes expired idempotency keys (once a minute per provider)."""
        now = self.clock.monotonic()
        if now < self._next_key_gc:
            return False
        self._next_key_gc = now + 60.0
        return True

    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None,
                   set_status: str | None = None) -> InstanceRecord | None:
        def op(conn: sqlite3.Connection) -> InstanceRecord | None:
            record = _get_instance(conn, message.instance_id)
            if status_admits(only_if_status_in, record.status if record else None):
                _enqueue(conn, message, None)
                if set_status is not None:
                    conn.execute("UPDATE instances SET status=?, updated_at=? WHERE instance_id=?",
                                 (set_status, self.clock.now_ms(), message.instance_id))
            return record

        return await self._write(op, durable=True, what="a message")

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self._run(lambda conn: _get_instance(conn, instance_id))

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        def op(conn: sqlite3.Connection) -> list[HistoryEvent]:
            exec_id = execution_id
            if exec_id is None:
                row = conn.execute("SELECT execution_id FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
                if row is None:
                    return []
                exec_id = row[0]
            return _load_history(conn, instance_id, exec_id)

        return await self._run(op)

    async def list_executions(self, instance_id: str) -> list[int]:
        rows = await self._run(lambda conn: conn.execute(
            "SELECT DISTINCT execution_id FROM history WHERE instance_id=? ORDER BY execution_id",
            (instance_id,)).fetchall())
        return [r[0] for r in rows]

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceRecord]:
        clauses, args = [], []
        if status is not None:
            clauses.append("status=?")
            args.append(status)
        if name is not None:
            clauses.append("name=?")
            args.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_INSTANCE_COLS} FROM instances {where} ORDER BY created_at DESC, instance_id DESC LIMIT ?"
        rows = await self._run(lambda conn: conn.execute(sql, (*args, limit)).fetchall())
        return [_row_to_instance(r) for r in rows]

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        sql, args = listing_sql(_INSTANCE_COLS, query, check_query(query))
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return page_of([_row_to_instance(r) for r in rows], query.limit)

    async def overview(self, since_ms: int, *, finished_statuses: Collection[str] = ("Completed", "Failed"),
                       failed_status: str = "Failed",
                       active_statuses: Collection[str] = ("Pending", "Running")) -> StoreOverview:
        active = orjson.dumps(sorted(active_statuses)).decode()

        def op(conn: sqlite3.Connection) -> StoreOverview:
            # One read transaction: the parts agree with each other.
            conn.execute("BEGIN")
            try:
                counts, per_minute, failures = overview_parts(conn, since_ms, finished_statuses, failed_status)
                depths = _queue_depths(conn, self.clock.now_ms(), active)
            finally:
                conn.execute("COMMIT")
            return make_overview(counts, per_minute, failures, depths)

        return await self._run(op)

    async def purge_instance(self, instance_id: str, *,
                             only_if_status_in: Collection[str] | None = None) -> list[str] | None:
        def op(conn: sqlite3.Connection) -> list[str] | None:
            record = _get_instance(conn, instance_id)
            if record is None:
                return []
            if not status_admits(only_if_status_in, record.status):
                return None
            return _delete_tree(conn, instance_id)

        return await self._write(op, durable=True, what="a purge")

    # -- orchestration dispatcher --------------------------------------------------

    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float, *,
                                        queues: Mapping[str, QueueOptions] | None = None,
                                        live_statuses: Collection[str] = ()) -> FetchResult:
        lock_ms = int(lock_timeout * 1000)
        live = orjson.dumps(sorted(live_statuses)).decode()

        def op(conn: sqlite3.Connection) -> FetchResult:
            now = self.clock.now_ms()
            if queues:
                _admit_waiting(conn, now, queues, live)
            items = [_lock_instance(conn, iid, now, now + lock_ms)
                     for iid in _due_unlocked_instances(conn, now, max_items)]
            next_due = None
            if not items:
                next_due = conn.execute("SELECT MIN(visible_at) FROM orchestrator_queue WHERE visible_at > ? "
                                        "AND visible_at < ?", (now, WAITING_OFFSET_MS)).fetchone()[0]
            return FetchResult(items, next_due)

        return await self._write(op, durable=False, what="a fetch of orchestration work")

    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        def op(conn: sqlite3.Connection) -> dict[str, list[HistoryEvent] | Exception]:
            out: dict[str, list[HistoryEvent] | Exception] = {}
            for iid, exec_id in keys:
                try:
                    out[iid] = _load_history(conn, iid, exec_id)
                except CorruptHistoryError as exc:
                    out[iid] = exc
            return out

        return await self._run(op)

    async def commit_turns(self, commits: Sequence[TurnCommit], *, lease: LeaseOffer | None = None) -> list[bool]:
        #: Turns an earlier run of ``op`` found the store cannot hold, by instance id, with why.
        refused: dict[str, str] = {}

        def op(conn: sqlite3.Connection) -> list[bool]:
            # No savepoint per turn (two statements each): a turn the store refuses raises, the
            # transaction is rolled back (ConnectionThread: alone, or with its group, whose other
            # writes are then redone one by one), and the next run of op leaves that turn out.
            results = []
            now = self.clock.now_ms()
            leasing = _Leasing(lease, now)
            for c in commits:
                c.leased = []  # a batch redone (SQLITE_BUSY, a refused turn) starts again
                if c.instance_id in refused:
                    c.refused = refused[c.instance_id]
                    results.append(False)
                    continue
                # The turn's lock goes with it: deleting it is the check that this token holds it.
                if not conn.execute("DELETE FROM instance_locks WHERE instance_id=? AND lock_token=?",
                                    (c.instance_id, c.lock_token)).rowcount:
                    results.append(False)
                    continue
                try:
                    _apply_commit(conn, c, now, leasing)
                    c.more_due = conn.execute("SELECT 1 FROM orchestrator_queue WHERE instance_id=? AND visible_at<=? "
                                              "LIMIT 1", (c.instance_id, now)).fetchone() is not None
                except sqlite3.OperationalError:
                    raise  # busy, disk full, I/O: about the database, not this turn
                except Exception as exc:  # noqa: BLE001 - one bad turn must not sink the batch
                    _log.warning("instance %r: the store refused the turn (%s: %s)", c.instance_id,
                                 type(exc).__name__, exc)
                    refused[c.instance_id] = f"{type(exc).__name__}: {exc}"
                    raise _TurnRefused(c.instance_id) from exc
                results.append(True)
            return results

        # Only a turn that ends its instance acknowledges anything (its waiting clients and its
        # parent hear of it): that commit is durable. A turn in between, lost on a power cut, is
        # simply redone from the messages it consumed, which come back with it; and the write-
        # ahead log is ordered, so the next durable commit (an activity result, a start, an end)
        # makes it durable too.
        durable = any(c.ends_instance for c in commits)
        while True:
            try:
                return await self._write(op, durable=durable, what="a commit of turns")
            except _TurnRefused:
                continue  # op now leaves that turn out (each run refuses a new one, so this ends)

    async def abandon_orchestration_item(self, instance_id: str, lock_token: str, delay: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT lock_token FROM instance_locks WHERE instance_id=?",
                               (instance_id,)).fetchone()
            if row is None or row[0] != lock_token:
                return
            visible = self.clock.now_ms() + int(delay * 1000)
            conn.execute("UPDATE orchestrator_queue SET lock_token=NULL, visible_at=MAX(visible_at, ?) "
                         "WHERE instance_id=? AND lock_token=?", (visible, instance_id, lock_token))
            conn.execute("DELETE FROM instance_locks WHERE instance_id=?", (instance_id,))

        await self._write(op, durable=False, what="an abandoned orchestration item")

    async def renew_orchestration_items(self, locks: Sequence[tuple[str, str]], lock_timeout: float) -> list[bool]:
        """Extend the instance locks (instance_id, lock_token) fetched by fetch_orchestration_items to now +
        lock_timeout, in one transaction; False for each lock no longer held by that token.

        A lock is held while its row carries the token: an expired lock nobody took over is
        renewed, as commit_turns would still accept it.

        Example::

            held = await store.renew_orchestration_items([(item.instance_id, item.lock_token)], 30.0)
        """
        if not locks:
            return []
        lock_ms = int(lock_timeout * 1000)

        def op(conn: sqlite3.Connection) -> list[bool]:
            until = self.clock.now_ms() + lock_ms
            return [conn.execute("UPDATE instance_locks SET locked_until=? WHERE instance_id=? AND lock_token=?",
                                 (until, instance_id, token)).rowcount == 1
                    for instance_id, token in locks]

        return await self._write(op, durable=False, what="a lock renewal")

    # -- activity workers ----------------------------------------------------------

    async def fetch_work_items(self, max_items: int, lock_timeout: float, *,
                               known_names: Collection[str] | None = None,
                               foreign_delay: float = 1.0,
                               queues: Mapping[str, QueueOptions] | None = None) -> list[WorkLease]:
        lock_ms = int(lock_timeout * 1000)
        names = None if known_names is None else orjson.dumps(sorted(known_names)).decode()
        limited = limited_queues(queues)

        def op(conn: sqlite3.Connection) -> list[WorkLease]:
            # BEGIN IMMEDIATE serialises this with every other writer, so the slots counted
            # here are the slots there are: a limit holds across processes.
            now = self.clock.now_ms()
            slots = _load_slots(conn, now, limited) if limited else None
            leases: list[WorkLease] = []
            while len(leases) < max_items:
                full_queues = "[]" if slots is None else orjson.dumps(slots.full_queues()).decode()
                full_keys = "[]" if slots is None else orjson.dumps(slots.full_keys()).decode()
                rows = conn.execute(
                    "SELECT id, message, dequeue_count, queue, ckey FROM worker_queue WHERE visible_at <= ? "
                    "AND (lock_token IS NULL OR locked_until <= ?) AND cancelled = 0 "
                    "AND (? IS NULL OR name IN (SELECT value FROM json_each(?)) OR visible_at <= ?) "
                    "AND queue NOT IN (SELECT value FROM json_each(?)) "
                    "AND (ckey IS NULL OR queue || char(31) || ckey NOT IN (SELECT value FROM json_each(?))) "
                    "ORDER BY priority DESC, id LIMIT ?",
                    (now, now, names, names, now - int(foreign_delay * 1000), full_queues, full_keys,
                     max_items - len(leases))).fetchall()
                for wid, raw, count, queue, ckey in rows:
                    if slots is not None:
                        if not slots.admits(queue, ckey):
                            continue  # its queue or key filled during this fetch: the next read leaves it out
                        if slots.take(queue, ckey):
                            conn.execute("INSERT INTO queue_leases(kind, queue, leased_at) VALUES (?,?,?)",
                                         (_CALLS, queue, now))
                    token = uuid.uuid4().hex
                    conn.execute("UPDATE worker_queue SET lock_token=?, locked_until=?, dequeue_count=? WHERE id=?",
                                 (token, now + lock_ms, count + 1, wid))
                    try:
                        leases.append(WorkLease(token, decode_message(raw), count + 1))
                    except ValueError:
                        _log.error("dropping unreadable activity message %s", wid)
                        conn.execute("DELETE FROM worker_queue WHERE id=?", (wid,))
                if slots is None or not rows:
                    break
            return leases

        return await self._write(op, durable=False, what="a fetch of activity work")

    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None,
                                  lock: LockOffer | None = None) -> list[OrchestrationItem]:
        def op(conn: sqlite3.Connection) -> list[OrchestrationItem]:
            delivered: dict[str, None] = {}
            for done in completions:
                if not conn.execute("DELETE FROM worker_queue WHERE lock_token=?", (done.lock_token,)).rowcount:
                    # The lease is gone: the instance was purged (perhaps created again under the
                    # same id), or another worker took the call over and will deliver its own result.
                    continue
                row = conn.execute("SELECT status, name FROM instances WHERE instance_id=?",
                                   (done.result.instance_id,)).fetchone()
                if status_admits(only_if_status_in, row[0] if row else None):
                    _enqueue(conn, done.result, None)
                    if row is not None and lock is not None and row[1] in lock.names:
                        delivered[done.result.instance_id] = None
                if done.forget_heartbeat is not None:
                    k = done.forget_heartbeat
                    conn.execute("DELETE FROM activity_heartbeats WHERE instance_id=? AND execution_id=? AND call_id=?",
                                 (k.instance_id, k.execution_id, k.event_id))
            if lock is None or not delivered:
                return []
            now = self.clock.now_ms()
            free = [iid for iid in delivered if not conn.execute(
                "SELECT 1 FROM instance_locks WHERE instance_id=? AND locked_until > ?", (iid, now)).fetchone()]
            return [_lock_instance(conn, iid, now, now + int(lock.lock_timeout * 1000))
                    for iid in free[:lock.max_items]]

        return await self._write(op, durable=True, what="activity results")

    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        visible = self.clock.now_ms() + int(delay * 1000)
        await self._write(lambda conn: conn.execute(
            "UPDATE worker_queue SET lock_token=NULL, locked_until=0, visible_at=? WHERE lock_token=?",
            (visible, lock_token)), durable=False, what="an abandoned activity")

    async def queue_depths(self, *, active_statuses: Collection[str] = ("Pending", "Running")) -> QueueDepths:
        statuses = orjson.dumps(sorted(active_statuses)).decode()
        return await self._run(lambda conn: _queue_depths(conn, self.clock.now_ms(), statuses))

    async def queue_stats(self, *, live_statuses: Collection[str] = ()) -> list[QueueStats]:
        live = orjson.dumps(sorted(live_statuses)).decode()

        def op(conn: sqlite3.Connection) -> list[QueueStats]:
            now = self.clock.now_ms()
            stats: dict[str, list[int]] = {}
            for queue, waiting, running in conn.execute(
                    "SELECT queue, SUM(gate = 1), SUM(gate = 2 AND status IN (SELECT value FROM json_each(?))) "
                    "FROM instances INDEXED BY ix_instances_gate WHERE gate > 0 GROUP BY queue", (live,)):
                stats[queue] = [waiting, running, 0, 0]
            for queue, queued, leased in conn.execute(
                    "SELECT queue, SUM(lock_token IS NULL OR locked_until <= ?), "
                    "SUM(lock_token IS NOT NULL AND locked_until > ?) FROM worker_queue GROUP BY queue", (now, now)):
                stats.setdefault(queue, [0, 0, 0, 0])[2:] = [queued, leased]
            return [QueueStats(q, *n) for q, n in sorted(stats.items()) if any(n)]

        return await self._run(op)

    async def renew_work_item(self, lock_token: str, lock_timeout: float, *,
                              only_if_status_in: Collection[str] | None = None,
                              only_if_execution: int | None = None) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT w.cancelled, i.status, i.execution_id FROM worker_queue w "
                "LEFT JOIN instances i ON i.instance_id = w.instance_id WHERE w.lock_token=?",
                (lock_token,)).fetchone()
            if (row is None or row[0] or not status_admits(only_if_status_in, row[1])
                    or (only_if_execution is not None and row[2] != only_if_execution)):
                return False
            conn.execute("UPDATE worker_queue SET locked_until=? WHERE lock_token=?",
                         (self.clock.now_ms() + int(lock_timeout * 1000), lock_token))
            return True

        return await self._write(op, durable=False, what="an activity lease renewal")

    async def record_heartbeats(self, beats: Sequence[HeartbeatWrite], *,
                                only_if_status_in: Collection[str] | None = None) -> list[bool]:
        if not beats:
            return []

        def op(conn: sqlite3.Connection) -> list[bool]:
            now = self.clock.now_ms()
            recorded = []
            for beat in beats:
                call = beat.call
                row = conn.execute(
                    "SELECT w.cancelled, i.status, i.execution_id FROM worker_queue w "
                    "LEFT JOIN instances i ON i.instance_id = w.instance_id "
                    "WHERE w.lock_token=? AND w.instance_id=? AND w.execution_id=? AND w.event_id=?",
                    (beat.lock_token, call.instance_id, call.execution_id, beat.event_id)).fetchone()
                if (row is None or row[0] or not status_admits(only_if_status_in, row[1])
                        or row[2] != call.execution_id):
                    recorded.append(False)
                    continue
                conn.execute(
                    "INSERT INTO activity_heartbeats(instance_id, execution_id, call_id, event_id, details, updated_at) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT(instance_id, execution_id, call_id) DO UPDATE SET "
                    "event_id=excluded.event_id, details=COALESCE(excluded.details, details), "
                    "updated_at=excluded.updated_at",
                    (call.instance_id, call.execution_id, call.event_id, beat.event_id, beat.details, now))
                if beat.lock_timeout is not None:
                    conn.execute("UPDATE worker_queue SET locked_until=? WHERE lock_token=?",
                                 (now + int(beat.lock_timeout * 1000), beat.lock_token))
                recorded.append(True)
            return recorded

        # Not durable: a heartbeat lost to a power cut is like one that was never sent (progress
        # details are a hint for the next attempt; the next write makes this one durable too).
        return await self._write(op, durable=False, what="activity heartbeats")

    async def read_heartbeat(self, call: CallKey) -> HeartbeatRecord | None:
        row = await self._run(lambda conn: conn.execute(
            "SELECT details, event_id, updated_at FROM activity_heartbeats "
            "WHERE instance_id=? AND execution_id=? AND call_id=?",
            (call.instance_id, call.execution_id, call.event_id)).fetchone())
        return None if row is None else HeartbeatRecord(row[0], row[1], row[2])

    # -- schedules -------------------------------------------------------------------

    async def put_schedule(self, record: ScheduleRecord, *, replace: bool = False) -> ScheduleRecord | None:
        def op(conn: sqlite3.Connection) -> ScheduleRecord | None:
            now = self.clock.now_ms()
            old = _get_schedule(conn, record.schedule_id)
            if old is None:
                conn.execute(f"INSERT INTO schedules({_SCHEDULE_COLS}) VALUES (?,?,?,?,?,?,?,?,NULL,NULL,?,?,NULL)",
                             (record.schedule_id, record.cron, record.orchestration, record.input, record.version,
                              record.catch_up, int(record.paused), record.next_tick_ms, now, now))
            elif not replace:
                return None
            else:
                conn.execute("UPDATE schedules SET cron=?, orchestration=?, input=?, version=?, catch_up=?, "
                             "next_tick=CASE WHEN cron=? THEN next_tick ELSE ? END, updated_at=? WHERE schedule_id=?",
                             (record.cron, record.orchestration, record.input, record.version, record.catch_up,
                              record.cron, record.next_tick_ms, now, record.schedule_id))
            return _get_schedule(conn, record.schedule_id)

        return await self._write(op, durable=True, what="a schedule")

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        return await self._run(lambda conn: _get_schedule(conn, schedule_id))

    async def list_schedules(self) -> list[ScheduleRecord]:
        return await self._run(lambda conn: [_row_to_schedule(r) for r in conn.execute(
            f"SELECT {_SCHEDULE_COLS} FROM schedules ORDER BY schedule_id")])

    async def set_schedule_paused(self, schedule_id: str, paused: bool, *,
                                  next_tick_ms: int | None = None) -> ScheduleRecord | None:
        def op(conn: sqlite3.Connection) -> ScheduleRecord | None:
            conn.execute("UPDATE schedules SET paused=?, next_tick=COALESCE(?, next_tick), updated_at=? "
                         "WHERE schedule_id=?", (int(paused), next_tick_ms, self.clock.now_ms(), schedule_id))
            return _get_schedule(conn, schedule_id)

        return await self._write(op, durable=True, what="a schedule")

    async def delete_schedule(self, schedule_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM schedules WHERE schedule_id=?", (schedule_id,)).rowcount > 0

        return await self._write(op, durable=True, what="a schedule")

    async def fire_schedule(self, fire: ScheduleFire) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            # One write transaction (BEGIN IMMEDIATE): passes from every process take turns, and
            # the one that finds the expected next tick moves it, so the others change nothing.
            now = self.clock.now_ms()
            moved = conn.execute("UPDATE schedules SET next_tick=?, updated_at=? WHERE schedule_id=? AND paused=0 "
                                 "AND next_tick=?", (fire.next_tick_ms, now, fire.schedule_id,
                                                     fire.expected_next_tick_ms)).rowcount
            if not moved:
                return False
            for start in fire.starts:
                if conn.execute("SELECT 1 FROM instances WHERE instance_id=?", (start.instance_id,)).fetchone() is None:
                    _create(conn, start, now)
            if fire.starts:
                conn.execute("UPDATE schedules SET last_tick=?, last_instance_id=? WHERE schedule_id=?",
                             (fire.last_tick_ms, fire.starts[-1].instance_id, fire.schedule_id))
            return True

        return await self._write(op, durable=True, what="a schedule's ticks")

    async def confirm_schedules(self, schedule_ids: Collection[str]) -> None:
        ids = list(schedule_ids)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE schedules SET registered_at=? WHERE schedule_id=?",
                             [(self.clock.now_ms(), sid) for sid in ids])

        if ids:
            await self._write(op, durable=False, what="schedule confirmations")


# -- helpers that run on the connection thread --------------------------------------


#: ``queue_leases.kind``: a lease of an activity call, an admission of a waiting instance.
_CALLS, _INSTANCES = 0, 1


def _get_schedule(conn: sqlite3.Connection, schedule_id: str) -> ScheduleRecord | None:
    row = conn.execute(f"SELECT {_SCHEDULE_COLS} FROM schedules WHERE schedule_id=?", (schedule_id,)).fetchone()
    return _row_to_schedule(row) if row else None


def _row_to_schedule(row: Sequence[Any]) -> ScheduleRecord:
    return ScheduleRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8], row[9],
                          row[10], row[11], row[12])


def _load_slots(conn: sqlite3.Connection, now: int, limited: Mapping[str, QueueOptions]) -> QueueSlots:
    """The leased calls of the limited queues, and their rate windows' lease counts (older lease times go)."""
    names = orjson.dumps(sorted(limited)).decode()
    running = conn.execute(
        "SELECT queue, ckey, COUNT(*) FROM worker_queue INDEXED BY ix_wq_queue_lease "
        "WHERE queue IN (SELECT value FROM json_each(?)) AND locked_until > ? AND lock_token IS NOT NULL "
        "GROUP BY queue, ckey", (names, now)).fetchall()
    return QueueSlots(limited, running, _rate_counts(conn, now, limited, _CALLS))


def _rate_counts(conn: sqlite3.Connection, now: int, limited: Mapping[str, QueueOptions], kind: int) -> dict[str, int]:
    """Per rate-limited queue, the leases (or admissions) of ``kind`` in its window; older ones are deleted."""
    started = {}
    for queue, options in limited.items():
        if options.rate_limit is not None:
            since = now - options.rate_limit.per_ms
            conn.execute("DELETE FROM queue_leases WHERE kind=? AND queue=? AND leased_at <= ?", (kind, queue, since))
            started[queue] = conn.execute("SELECT COUNT(*) FROM queue_leases WHERE kind=? AND queue=? AND leased_at > ?",
                                          (kind, queue, since)).fetchone()[0]
    return started


def _admit_waiting(conn: sqlite3.Connection, now: int, queues: Mapping[str, QueueOptions],
                   live_statuses: str) -> None:
    """Admit the instances waiting for each queue of ``queues`` that its limits let start now."""
    for queue, options in queues.items():
        if conn.execute("SELECT 1 FROM instances WHERE queue=? AND gate > 0 AND gate=1 LIMIT 1", (queue,)).fetchone() is None:
            continue
        # Admitted instances that have ended give their slot back, once and for all.
        conn.execute("UPDATE instances SET gate=0 WHERE queue=? AND gate > 0 AND gate=2 "
                     "AND status NOT IN (SELECT value FROM json_each(?))", (queue, live_statuses))
        limits = {queue: options} if options.limited else {}
        running = conn.execute("SELECT queue, ckey, COUNT(*) FROM instances WHERE queue=? AND gate > 0 AND gate=2 "
                               "GROUP BY ckey", (queue,)).fetchall()
        slots = QueueSlots(limits, running, _rate_counts(conn, now, limits, _INSTANCES))
        while slots.admits(queue, None):
            rows = conn.execute(
                "SELECT instance_id, ckey FROM instances WHERE queue=? AND gate > 0 AND gate=1 "
                "AND (ckey IS NULL OR ? || char(31) || ckey NOT IN (SELECT value FROM json_each(?))) "
                "ORDER BY priority DESC, created_at, instance_id LIMIT 64",
                (queue, queue, orjson.dumps(slots.full_keys()).decode())).fetchall()
            if not rows:
                break
            for iid, ckey in rows:
                if not slots.admits(queue, ckey):
                    continue  # its key filled during this pass: the next read leaves it out
                if slots.take(queue, ckey):
                    conn.execute("INSERT INTO queue_leases(kind, queue, leased_at) VALUES (?,?,?)",
                                 (_INSTANCES, queue, now))
                conn.execute("UPDATE instances SET gate=2 WHERE instance_id=?", (iid,))
                conn.execute("DELETE FROM instance_locks WHERE instance_id=? AND lock_token=?",
                             (iid, WAITING_LOCK_TOKEN))
                conn.execute("UPDATE orchestrator_queue SET visible_at = visible_at - ? "
                             "WHERE instance_id=? AND visible_at >= ?", (WAITING_OFFSET_MS, iid, WAITING_OFFSET_MS))


def _add_queue_columns(conn: sqlite3.Connection) -> None:
    """Schema v7 on an older database: the work items' queue, concurrency key and priority."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(worker_queue)")}
    if columns and "queue" not in columns:
        conn.execute("ALTER TABLE worker_queue ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'")
        conn.execute("ALTER TABLE worker_queue ADD COLUMN ckey TEXT")
        conn.execute("ALTER TABLE worker_queue ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(instances)")}
    if columns and "gate" not in columns:
        for column in ("queue TEXT", "ckey TEXT", "priority INTEGER", "gate INTEGER NOT NULL DEFAULT 0"):
            conn.execute(f"ALTER TABLE instances ADD COLUMN {column}")


def _due_unlocked_instances(conn: sqlite3.Connection, now: int, max_items: int) -> list[str]:
    """Up to ``max_items`` instances with a due message and no live lock, oldest due first.

    Walks the queue's ``visible_at`` index from the oldest due message and stops as soon
    as it has enough: the cost is the messages it passes (those of locked instances, a
    few batches' worth), not the length of the queue or the number of waiting timers.
    Instances waiting for a queue hold a lock that never lapses: they are looked up only
    when a message of theirs is met (their start is far in the future; an event sent to
    one is the rare case), so a backlog of waiting instances costs a fetch nothing.
    """
    locked = {r[0] for r in conn.execute("SELECT instance_id FROM instance_locks INDEXED BY ix_locks_until "
                                         "WHERE locked_until > ? AND locked_until < ?", (now, WAITING_LOCK_UNTIL))}
    found: dict[str, None] = {}
    cursor = conn.execute("SELECT instance_id FROM orchestrator_queue INDEXED BY ix_oq_visible "
                          "WHERE visible_at <= ? ORDER BY visible_at, id", (now,))
    try:
        while len(found) < max_items and (rows := cursor.fetchmany(64)):
            fresh = [iid for (iid,) in rows if iid not in locked and iid not in found]
            if fresh:
                locked.update(r[0] for r in conn.execute(
                    "SELECT instance_id FROM instance_locks WHERE locked_until >= ? "
                    "AND instance_id IN (SELECT value FROM json_each(?))", (WAITING_LOCK_UNTIL, orjson.dumps(fresh).decode())))
            for iid in fresh:
                if iid not in locked:
                    found[iid] = None
                    if len(found) == max_items:
                        break
    finally:
        cursor.close()
    return list(found)


def _queue_depths(conn: sqlite3.Connection, now: int, active_statuses: str) -> QueueDepths:
    due, later = conn.execute("SELECT COALESCE(SUM(visible_at <= ?), 0), COALESCE(SUM(visible_at > ? AND visible_at < ?), 0) "
                              "FROM orchestrator_queue", (now, now, WAITING_OFFSET_MS)).fetchone()
    worker = conn.execute("SELECT COUNT(*) FROM worker_queue").fetchone()[0]
    active = conn.execute("SELECT COUNT(*) FROM instances WHERE status IN (SELECT value FROM json_each(?))",
                          (active_statuses,)).fetchone()[0]
    waiting = conn.execute("SELECT COUNT(*) FROM instances INDEXED BY ix_instances_gate WHERE gate > 0 AND gate = 1").fetchone()[0]
    return QueueDepths(due, later, worker, active, waiting)


def _get_instance(conn: sqlite3.Connection, instance_id: str) -> InstanceRecord | None:
    row = conn.execute(f"SELECT {_INSTANCE_COLS} FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
    return _row_to_instance(row) if row else None


def _load_history(conn: sqlite3.Connection, instance_id: str, execution_id: int) -> list[HistoryEvent]:
    rows = conn.execute("SELECT event FROM history WHERE instance_id=? AND execution_id=? ORDER BY event_id",
                        (instance_id, execution_id)).fetchall()
    return [decode_event(r[0], instance_id=instance_id) for r in rows]


def _insert_instance(conn: sqlite3.Connection, start: StartOrchestration, now: int) -> None:
    conn.execute("INSERT INTO instances(instance_id, name, version, execution_id, status, created_at, updated_at, "
                 "parent_instance_id, incarnation) VALUES (?,?,?,?, 'Pending', ?, ?, ?, ?)",
                 (start.instance_id, start.name, start.version, start.execution_id, now, now,
                  start.parent_instance_id, uuid.uuid4().hex))


def _create(conn: sqlite3.Connection, start: StartOrchestration, now: int) -> None:
    """The row and the start of a new instance; one naming a queue waits for its admission."""
    _insert_instance(conn, start, now)
    if start.queue is None:
        _enqueue(conn, start, None)
        return
    conn.execute("UPDATE instances SET queue=?, ckey=?, priority=?, gate=1 WHERE instance_id=?",
                 (start.queue, start.concurrency_key, start.priority or 0, start.instance_id))
    conn.execute("INSERT OR REPLACE INTO instance_locks(instance_id, lock_token, locked_until) VALUES (?,?,?)",
                 (start.instance_id, WAITING_LOCK_TOKEN, WAITING_LOCK_UNTIL))
    _enqueue(conn, start, now + WAITING_OFFSET_MS)


def _delete_tree(conn: sqlite3.Connection, instance_id: str) -> list[str]:
    """Delete an instance and its descendants with everything they own; the ids deleted (it first)."""
    doomed, frontier = [instance_id], [instance_id]
    while frontier:
        marks = ",".join("?" * len(frontier))
        frontier = [r[0] for r in conn.execute(
            f"SELECT instance_id FROM instances WHERE parent_instance_id IN ({marks})", frontier)]
        doomed += frontier
    for iid in doomed:
        for table in ("instances", "history", "orchestrator_queue", "instance_locks", "worker_queue",
                      "activity_heartbeats"):
            conn.execute(f"DELETE FROM {table} WHERE instance_id=?", (iid,))
    return doomed


def _remember_key(conn: sqlite3.Connection, key: str | None, instance_id: str, now: int) -> None:
    """Record idempotency ``key`` for a start of ``instance_id`` (over an expired record of it)."""
    if key is not None:
        conn.execute("INSERT OR REPLACE INTO start_keys(idempotency_key, instance_id, created_at) VALUES (?,?,?)",
                     (key, instance_id, now))


def _enqueue(conn: sqlite3.Connection, message: OrchestratorMessage, visible_at: int | None) -> None:
    conn.execute("INSERT INTO orchestrator_queue(instance_id, message, visible_at) VALUES (?,?,?)",
                 (message.instance_id, encode_message(message), visible_at or 0))


class _TurnRefused(Exception):
    """A turn of a batch holds what the store refuses: the batch is run again without it."""


class _Leasing:
    """What is left of a :class:`LeaseOffer` while a batch of turns is applied."""

    def __init__(self, offer: LeaseOffer | None, now: int) -> None:
        self.offer = offer
        self.left = 0 if offer is None else offer.max_items
        self.until = 0 if offer is None else now + int(offer.lock_timeout * 1000)

    def take(self, work: ActivityWork) -> str | None:
        """A lock token for ``work`` if the offer still covers it."""
        if self.offer is None or self.left <= 0 or not self.offer.admits(work):
            return None
        self.left -= 1
        return uuid.uuid4().hex



def _lock_instance(conn: sqlite3.Connection, iid: str, now: int, until: int) -> OrchestrationItem:
    """Lock ``iid`` (its caller found no live lock) with its visible messages, as a fetch does."""
    token = uuid.uuid4().hex
    conn.execute("INSERT OR REPLACE INTO instance_locks(instance_id, lock_token, locked_until) "
                 "VALUES (?,?,?)", (iid, token, until))
    conn.execute("UPDATE orchestrator_queue SET lock_token=?, dequeue_count=dequeue_count+1 "
                 "WHERE instance_id=? AND visible_at<=?", (token, iid, now))
    rows = conn.execute("SELECT id, message, dequeue_count FROM orchestrator_queue "
                        "WHERE instance_id=? AND lock_token=? ORDER BY id", (iid, token)).fetchall()
    messages, dequeues = [], 0
    for qid, raw, count in rows:
        dequeues = max(dequeues, count)
        try:
            messages.append(QueuedMessage(qid, decode_message(raw)))
        except ValueError:
            _log.error("instance %r: dropping unreadable queue message %s", iid, qid)
            conn.execute("DELETE FROM orchestrator_queue WHERE id=?", (qid,))
    # The row and the length of its current execution's history, in one statement.
    row = conn.execute(f"SELECT {_INSTANCE_COLS}, (SELECT COALESCE(MAX(h.event_id), 0) FROM history h "
                       "WHERE h.instance_id=i.instance_id AND h.execution_id=i.execution_id) "
                       "FROM instances i WHERE i.instance_id=?", (iid,)).fetchone()
    if row is None:
        return OrchestrationItem(iid, token, messages, None, 0, dequeues)
    return OrchestrationItem(iid, token, messages, _row_to_instance(row), row[-1], dequeues)


def _apply_commit(conn: sqlite3.Connection, c: TurnCommit, now: int, leasing: _Leasing) -> None:
    if c.consumed:
        conn.executemany("DELETE FROM orchestrator_queue WHERE id=?", [(i,) for i in c.consumed])
    if c.new_events:
        conn.executemany("INSERT INTO history(instance_id, execution_id, event_id, event) VALUES (?,?,?,?)",
                         [(c.instance_id, c.execution_id, e.event_id, encode_event(e)) for e in c.new_events])
    if c.activities:
        rows = []
        for w in c.activities:
            token = leasing.take(w)
            rows.append((w.instance_id, w.execution_id, w.event_id, w.name, encode_message(w), now, w.queue,
                         w.concurrency_key, w.priority, token, leasing.until if token else 0, 1 if token else 0))
            if token is not None:
                c.leased.append(WorkLease(token, w, 1))
        conn.executemany(
            "INSERT INTO worker_queue(instance_id, execution_id, event_id, name, message, visible_at, queue, ckey, "
            "priority, lock_token, locked_until, dequeue_count) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    for call in c.cancel_activities:
        key = (call.instance_id, call.execution_id, call.event_id)
        conn.execute("DELETE FROM worker_queue WHERE instance_id=? AND execution_id=? AND event_id=? "
                     "AND lock_token IS NULL", key)
        conn.execute("UPDATE worker_queue SET cancelled=1 WHERE instance_id=? AND execution_id=? AND event_id=?", key)
    if c.delete_timers:
        _delete_timers(conn, c)
    for child in c.children:
        if conn.execute("SELECT 1 FROM instances WHERE instance_id=?", (child.start.instance_id,)).fetchone():
            if child.if_taken is not None:
                _enqueue(conn, child.if_taken, None)
            continue
        _insert_instance(conn, child.start, now)
        _enqueue(conn, child.start, None)
    for msg, visible_at in c.messages:
        _enqueue(conn, msg, visible_at)
    u = c.update
    if u is not None:
        error = orjson.dumps(u.error.to_dict()) if u.error is not None else None
        if u.custom_status_changed:
            conn.execute("UPDATE instances SET name=?, version=?, execution_id=?, status=?, output=?, error=?, "
                         "custom_status=?, updated_at=? WHERE instance_id=?",
                         (u.name, u.version, u.execution_id, u.status, u.output, error, u.custom_status,
                          now, c.instance_id))
        else:
            conn.execute("UPDATE instances SET name=?, version=?, execution_id=?, status=?, output=?, error=?, "
                         "updated_at=? WHERE instance_id=?",
                         (u.name, u.version, u.execution_id, u.status, u.output, error, now, c.instance_id))
    if c.ends_instance:  # an instance admitted by its queue gives its slot back
        conn.execute("UPDATE instances SET gate=0 WHERE instance_id=? AND gate=2", (c.instance_id,))


def _delete_timers(conn: sqlite3.Connection, c: TurnCommit) -> None:
    """Delete the queued TimerFired the turn names, so they never fire."""
    timers = set(c.delete_timers)
    doomed = []
    for iid in {t.instance_id for t in timers}:
        for qid, raw in conn.execute("SELECT id, message FROM orchestrator_queue WHERE instance_id=?",
                                     (iid,)).fetchall():
            try:
                message = decode_message(raw)
            except ValueError:
                continue  # unreadable rows are dropped (and logged) by the fetch that meets them
            if timer_key(message) in timers:
                doomed.append((qid,))
    conn.executemany("DELETE FROM orchestrator_queue WHERE id=?", doomed)
