"""``PostgresProvider``: one PostgreSQL database shared by many runtime processes on many machines.

* Work distribution: fetches lock queue rows with ``FOR UPDATE SKIP LOCKED``
  (concurrent fetchers pass each other by) and claim instances with a lease
  row (``instance_locks``) that expires, so a killed process's work is taken
  over after its lease runs out. Leases, visibility and timers all use one
  time source, the provider's injected clock (``clock=``, default: the
  system clock), passed to each query: nodes' clocks must agree (NTP) within
  a small fraction of ``orchestration_lock_timeout`` (docs/postgres.md).
* Wake-ups: writes ``NOTIFY`` on three channels (orchestrator work, activity
  work, ended instances); one listening connection per provider feeds them to
  the wake hubs of this process (it is a ``WakeSource``, see
  :mod:`duroxide_runtime.wake`). Waits stay bounded, so a lost notification
  costs at most one poll interval.
* Connection loss: every operation runs in a transaction that is retried on
  a fresh connection when the old one dropped (``pg_terminate_backend``, a
  failover, a restart); the listener reconnects by itself. A drop after the
  server committed looks the same, so client writes carry an id made once per
  call (the new row's incarnation; a request key for ``send`` and purge) and a
  retry that finds its first attempt committed writes nothing and reports what
  that attempt did.
* Schema: versioned migrations applied under an advisory lock, so several
  processes may start at once.

Example::

    store = await PostgresProvider.new("postgresql://postgres@127.0.0.1/app", schema="orders")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import uuid
import zlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

try:
    import asyncpg
except ModuleNotFoundError:  # the `postgres` extra is not installed: importing works, connecting says so
    if TYPE_CHECKING:  # type checkers see asyncpg as always there (it is wherever a store is made)
        raise
    asyncpg = None

from ..errors import ConfigurationError, CorruptHistoryError, InstanceAlreadyExistsError, StoreError
from ..history import HistoryEvent, decode_event, encode_event
from ..lograte import background_warnings
from ..messages import OrchestratorMessage, StartOrchestration, decode_message, encode_message
from .base import (
    FetchResult, InstanceRecord, OrchestrationItem, Provider, QueuedMessage, TurnCommit, QueueDepths,
    WorkCompletion, WorkLease, decode_error_details, status_admits, timer_key,
)

if TYPE_CHECKING:
    from ..wake import WakeHub
from ..clock import SYSTEM_CLOCK, Clock

__all__ = ["PostgresProvider"]


def require_asyncpg() -> None:
    """Raise :class:`ConfigurationError` naming the ``postgres`` extra unless asyncpg is installed.

    asyncpg is optional (``pip install 'duroxide[postgres]'``), so this module imports
    without it and fails here, where a PostgreSQL store is first asked for. Example::

        require_asyncpg()   # ConfigurationError: ... Fix: pip install 'duroxide[postgres]'
    """
    if asyncpg is None:
        raise ConfigurationError("PostgreSQL stores need the asyncpg package, which is not installed",
                                 fix="pip install 'duroxide[postgres]' (or add the `postgres` extra to your "
                                     "requirements)")

_log = logging.getLogger("duroxide.postgres")
_T = TypeVar("_T")
#: asyncpg connections (and pool proxies) are untyped; one alias says so in one place.
_Conn = Any

#: Errors after which the operation is retried on a new connection.
_TRANSIENT: tuple[type[BaseException], ...] = () if asyncpg is None else (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    # Raised when a pooled connection the server already closed is reused before
    # asyncpg noticed ("cannot switch to state ..."); a fresh connection cures it.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

_MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE IF NOT EXISTS {s}.instances (
    instance_id text PRIMARY KEY, name text NOT NULL, version text, execution_id bigint NOT NULL,
    status text NOT NULL, output text, error bytea, custom_status text,
    created_at bigint NOT NULL, updated_at bigint NOT NULL, parent_instance_id text);
CREATE INDEX IF NOT EXISTS ix_instances_parent ON {s}.instances(parent_instance_id);
CREATE INDEX IF NOT EXISTS ix_instances_created ON {s}.instances(created_at);
CREATE TABLE IF NOT EXISTS {s}.history (
    instance_id text NOT NULL, execution_id bigint NOT NULL, event_id bigint NOT NULL, event bytea NOT NULL,
    PRIMARY KEY (instance_id, execution_id, event_id));
CREATE TABLE IF NOT EXISTS {s}.orchestrator_queue (
    id bigserial PRIMARY KEY, instance_id text NOT NULL, message bytea NOT NULL,
    visible_at bigint NOT NULL, dequeue_count integer NOT NULL DEFAULT 0, lock_token text);
CREATE INDEX IF NOT EXISTS ix_oq_visible ON {s}.orchestrator_queue(visible_at);
CREATE INDEX IF NOT EXISTS ix_oq_instance ON {s}.orchestrator_queue(instance_id);
CREATE TABLE IF NOT EXISTS {s}.instance_locks (
    instance_id text PRIMARY KEY, lock_token text NOT NULL, locked_until bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.worker_queue (
    id bigserial PRIMARY KEY, instance_id text NOT NULL, execution_id bigint NOT NULL, event_id bigint NOT NULL,
    message bytea NOT NULL, visible_at bigint NOT NULL, lock_token text, locked_until bigint NOT NULL DEFAULT 0,
    dequeue_count integer NOT NULL DEFAULT 0, cancelled boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS ix_wq_visible ON {s}.worker_queue(visible_at);
CREATE INDEX IF NOT EXISTS ix_wq_call ON {s}.worker_queue(instance_id, execution_id, event_id);
CREATE INDEX IF NOT EXISTS ix_wq_token ON {s}.worker_queue(lock_token);
CREATE OR REPLACE FUNCTION {s}.now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS 'SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint';
"""),
    # ({s}.now_ms() above is no longer called: every time now comes from the provider's
    # clock as a query parameter. It stays for nodes of older versions sharing the schema.)
    # Activity names on work items, so workers can prefer what they know (rolling deploys).
    (2, "ALTER TABLE {s}.worker_queue ADD COLUMN IF NOT EXISTS name text NOT NULL DEFAULT ''"),
    # An incarnation per instance row, so a purged and re-created id never matches state
    # a process cached for the old instance; existing rows get one each.
    (3, """
ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS incarnation text;
UPDATE {s}.instances SET incarnation = md5(random()::text || clock_timestamp()::text || instance_id)
    WHERE incarnation IS NULL;
"""),
    # Idempotency keys: a client call that wrote something records its outcome under an id
    # made once per call, so its retry after a lost commit reply repeats nothing and reports
    # what the first attempt did (see _remember). Kept for _REQUEST_KEY_TTL_MS.
    (4, """
CREATE TABLE IF NOT EXISTS {s}.request_keys (
    request_id text PRIMARY KEY, outcome bytea NOT NULL, created_at bigint NOT NULL);
CREATE INDEX IF NOT EXISTS ix_request_keys_created ON {s}.request_keys(created_at);
"""),
]

#: How long a request key is kept: far longer than a call keeps retrying (about 30 s).
_REQUEST_KEY_TTL_MS = 3_600_000
#: How often one provider deletes expired request keys (seconds).
_REQUEST_KEY_GC_INTERVAL = 60.0

_INSTANCE_COLS = ("instance_id, name, version, execution_id, status, output, error, custom_status, "
                  "created_at, updated_at, parent_instance_id, incarnation")


def _record(row: asyncpg.Record) -> InstanceRecord:
    error = decode_error_details(row["error"])
    return InstanceRecord(row["instance_id"], row["name"], row["version"], row["execution_id"], row["status"],
                          row["output"], error, row["custom_status"], row["created_at"], row["updated_at"],
                          row["parent_instance_id"], incarnation=row["incarnation"])


class PostgresProvider(Provider):
    """A durable store in PostgreSQL, safe for many processes on many machines.

    ``clock`` is the one time source of leases, visibility, timers and
    timestamps (default: the system clock); the runtime and clients of the
    store use it too.
    """

    def __init__(self, url: str, schema: str, pool_size: int, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ConfigurationError(f"schema name {schema!r} is not a plain lower-case SQL identifier",
                                     fix="use letters, digits and underscores, e.g. schema='duroxide'")
        self.url = url
        self.schema = schema
        self.clock = clock
        #: The wake hubs this provider's LISTEN connection feeds (see wake_into).
        self._hubs: list[WakeHub] = []
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._next_key_gc = 0.0
        #: Test seam: awaited with the connection right after each COMMIT succeeded, before the
        #: result is returned. A hook that kills the connection there makes the caller see what a
        #: reply lost after the server committed looks like (tests/test_postgres_retries.py).
        self._after_commit_hook: Callable[[_Conn], Awaitable[None]] | None = None
        s = schema
        self._channels: dict[str, Callable[[WakeHub], None]] = {
            f"{s}_orch": lambda hub: hub.notify_orchestrator(), f"{s}_work": lambda hub: hub.notify_worker()}
        self._done_channel = f"{s}_done"

    @classmethod
    async def new(cls, url: str, *, schema: str = "duroxide", pool_size: int = 10,
                  clock: Clock = SYSTEM_CLOCK) -> PostgresProvider:
        """Connect, migrate the schema (safe when several processes start at once) and listen for wake-ups."""
        require_asyncpg()
        provider = cls(url, schema, pool_size, clock=clock)
        try:
            provider._pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size,
                                                       command_timeout=60)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {_redact(url)}: {exc}",
                             fix="check that the server runs and the URL (host, port, user, database) is right; "
                                 "for tests set DUROXIDE_PG_URL") from exc
        await provider._migrate()
        provider._listener = asyncio.create_task(provider._listen(), name="duroxide-pg-listener")
        return provider

    async def _migrate(self) -> None:
        s = self.schema
        key = zlib.crc32(f"duroxide:{s}".encode())

        async def op(conn: _Conn) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations "
                               "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {s}.schema_migrations")
            newest = _MIGRATIONS[-1][0]
            if current > newest:
                raise ConfigurationError(
                    f"schema {s!r} is at migration {current}, newer than this duroxide ({newest})",
                    fix="upgrade duroxide on this node before it joins the cluster")
            for version, sql in _MIGRATIONS:
                if version > current:
                    await conn.execute(sql.format(s=s))
                    await conn.execute(f"INSERT INTO {s}.schema_migrations(version) VALUES ($1)", version)

        await self._tx(op)

    async def _tx(self, fn: Callable[[_Conn], Awaitable[_T]]) -> _T:
        """Run ``fn`` in a transaction; retry on a new connection if the connection was lost."""
        if self._pool is None:
            raise StoreError("PostgresProvider is closed", fix="create a new one with PostgresProvider.new(url)")
        delay = 0.01
        for attempt in range(30):
            try:
                async with self._pool.acquire() as conn:
                    try:
                        async with conn.transaction():
                            result = await fn(conn)
                        if self._after_commit_hook is not None:
                            await self._after_commit_hook(conn)
                        return result
                    except _TRANSIENT:
                        # Never hand a broken connection back to the pool (asyncpg may have
                        # detached it already; the original error is the one to report).
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                        raise
            except _TRANSIENT as exc:
                if self._closed:
                    raise StoreError("PostgresProvider is closed", fix="create a new one") from exc
                background_warnings.warning(_log, "postgres.retry",
                                            "PostgreSQL connection trouble (%s: %s); retrying (attempt %d)",
                                            type(exc).__name__, exc, attempt + 1)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
        raise StoreError("PostgreSQL stayed unreachable for about 30 s",
                         fix="check the database server and the network; the runtime keeps retrying")

    async def _listen(self) -> None:
        """Keep one LISTEN connection alive; reconnect when it drops."""
        delay = 0.05
        while not self._closed:
            conn: _Conn = None
            try:
                conn = await asyncpg.connect(self.url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                for channel, notify in self._channels.items():
                    await conn.add_listener(channel, lambda *_a, _n=notify: self._wake(_n))
                await conn.add_listener(self._done_channel, lambda _c, _p, _ch, payload: self._wake(
                    lambda hub: hub.notify_instance(payload)))
                delay = 0.05
                # A notification may have been missed while we were away: wake everyone once.
                self._wake(lambda hub: hub.notify_orchestrator())
                self._wake(lambda hub: hub.notify_worker())
                await lost.wait()
                if not self._closed:
                    background_warnings.warning(
                        _log, "postgres.listen", "LISTEN connection to PostgreSQL lost; reconnecting "
                        "(until it is back, other processes' work is noticed by polling)")
            except asyncio.CancelledError:
                break
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any error
                if not self._closed:
                    background_warnings.warning(
                        _log, "postgres.listen", "LISTEN connection to PostgreSQL failed (%s: %s); reconnecting "
                        "(until it is back, other processes' work is noticed by polling)", type(exc).__name__, exc)
            finally:
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), 2)
                    except Exception:  # noqa: BLE001
                        conn.terminate()
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def wake_into(self, hub: WakeHub) -> None:
        """Feed ``hub`` the NOTIFYs of every process's writes (the ``WakeSource`` protocol)."""
        self._hubs.append(hub)

    def _wake(self, notify: Callable[[WakeHub], None]) -> None:
        for hub in self._hubs:
            notify(hub)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- client side -------------------------------------------------------------

    async def create_instance(self, start: StartOrchestration) -> None:
        # Made once per call, before the first attempt: if a retry (after a reply lost
        # once the server committed) finds the id taken by this incarnation, the row is
        # this call's own insert and the call succeeded.
        incarnation = uuid.uuid4().hex

        async def op(conn: _Conn) -> bool:
            if not await self._insert_instance(conn, start, self.clock.now_ms(), incarnation):
                held = await conn.fetchval(f"SELECT incarnation FROM {self.schema}.instances WHERE instance_id=$1",
                                           start.instance_id)
                return bool(held == incarnation)
            await self._enqueue(conn, [(start, None)])
            return True

        if not await self._tx(op):
            raise InstanceAlreadyExistsError(start.instance_id)

    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None) -> InstanceRecord | None:
        s = self.schema
        key = uuid.uuid4().hex  # once per call; see _remember
        attempts = 0

        async def op(conn: _Conn) -> InstanceRecord | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                done = await self._recall(conn, key)
                if done is not None:
                    return _record_from_snapshot(done)  # the first attempt enqueued it; not again
            row = await conn.fetchrow(f"SELECT {_INSTANCE_COLS} FROM {s}.instances WHERE instance_id=$1 FOR SHARE",
                                      message.instance_id)
            record = _record(row) if row else None
            if record is not None and status_admits(only_if_status_in, record.status):
                await self._enqueue(conn, [(message, None)])
                await self._remember(conn, key, _record_snapshot(record))
            return record

        return await self._tx(op)

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        row = await self._tx(lambda conn: conn.fetchrow(
            f"SELECT {_INSTANCE_COLS} FROM {self.schema}.instances WHERE instance_id=$1", instance_id))
        return _record(row) if row else None

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        s = self.schema

        async def op(conn: _Conn) -> list[HistoryEvent]:
            exec_id = execution_id
            if exec_id is None:
                exec_id = await conn.fetchval(f"SELECT execution_id FROM {s}.instances WHERE instance_id=$1",
                                              instance_id)
                if exec_id is None:
                    return []
            return await self._load_history(conn, instance_id, exec_id)

        return await self._tx(op)

    async def list_executions(self, instance_id: str) -> list[int]:
        rows = await self._tx(lambda conn: conn.fetch(
            f"SELECT DISTINCT execution_id FROM {self.schema}.history WHERE instance_id=$1 ORDER BY execution_id",
            instance_id))
        return [r[0] for r in rows]

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceRecord]:
        rows = await self._tx(lambda conn: conn.fetch(
            f"SELECT {_INSTANCE_COLS} FROM {self.schema}.instances WHERE ($1::text IS NULL OR status=$1) "
            "AND ($2::text IS NULL OR name=$2) ORDER BY created_at DESC, instance_id DESC LIMIT $3",
            status, name, limit))
        return [_record(r) for r in rows]

    async def purge_instance(self, instance_id: str, *,
                             only_if_status_in: Collection[str] | None = None) -> list[str] | None:
        s = self.schema
        key = uuid.uuid4().hex  # once per call; see _remember
        attempts = 0

        async def op(conn: _Conn) -> list[str] | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                done = await self._recall(conn, key)
                if done is not None:
                    return list(orjson.loads(done))  # the first attempt purged these
            status = await conn.fetchval(f"SELECT status FROM {s}.instances WHERE instance_id=$1 FOR UPDATE",
                                         instance_id)
            if status is None:
                return []
            if not status_admits(only_if_status_in, status):
                return None
            rows = await conn.fetch(
                f"WITH RECURSIVE tree(id) AS (SELECT $1::text UNION SELECT i.instance_id FROM {s}.instances i "
                "JOIN tree t ON i.parent_instance_id = t.id) SELECT id FROM tree", instance_id)
            doomed = [r[0] for r in rows]
            for table in ("instances", "history", "orchestrator_queue", "instance_locks", "worker_queue"):
                await conn.execute(f"DELETE FROM {s}.{table} WHERE instance_id = ANY($1::text[])", doomed)
            for iid in doomed:
                await conn.execute("SELECT pg_notify($1, $2)", self._done_channel, iid)
            await self._remember(conn, key, orjson.dumps(doomed))
            return doomed

        return await self._tx(op)

    # -- orchestration dispatcher --------------------------------------------------

    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float) -> FetchResult:
        s = self.schema
        lock_ms = int(lock_timeout * 1000)

        async def op(conn: _Conn) -> FetchResult:
            now = self.clock.now_ms()
            # Lock visible messages of unleased instances; concurrent fetchers skip them.
            rows = await conn.fetch(
                f"SELECT q.instance_id FROM {s}.orchestrator_queue q WHERE q.visible_at <= $1 AND NOT EXISTS "
                f"(SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > $1) "
                "ORDER BY q.id LIMIT $2 FOR UPDATE OF q SKIP LOCKED", now, max_items * 8)
            wanted: list[str] = []
            for r in rows:
                if r[0] not in wanted:
                    wanted.append(r[0])
                    if len(wanted) == max_items:
                        break
            if not wanted:
                due = await conn.fetchval(f"SELECT MIN(visible_at) FROM {s}.orchestrator_queue WHERE visible_at > $1",
                                          now)
                return FetchResult([], due)
            # Two fetchers may want the same instance (each locked different messages of it):
            # claiming in one global order makes one wait for the other instead of deadlocking.
            wanted.sort()
            tokens = [uuid.uuid4().hex for _ in wanted]
            claimed = await conn.fetch(
                f"INSERT INTO {s}.instance_locks AS l(instance_id, lock_token, locked_until) "
                "SELECT c.i, c.t, $3::bigint FROM unnest($1::text[], $2::text[]) AS c(i, t) "
                "ON CONFLICT (instance_id) DO UPDATE SET lock_token = EXCLUDED.lock_token, "
                "locked_until = EXCLUDED.locked_until WHERE l.locked_until <= $4 RETURNING instance_id, lock_token",
                wanted, tokens, now + lock_ms, now)
            if not claimed:
                return FetchResult([])
            ids = [r[0] for r in claimed]
            toks = [r[1] for r in claimed]
            msg_rows = await conn.fetch(
                f"UPDATE {s}.orchestrator_queue q SET lock_token = c.t, dequeue_count = q.dequeue_count + 1 "
                "FROM unnest($1::text[], $2::text[]) AS c(i, t) WHERE q.instance_id = c.i AND q.visible_at <= $3 "
                "RETURNING q.id, q.instance_id, q.message, q.dequeue_count", ids, toks, now)
            inst_rows = await conn.fetch(
                f"SELECT {_INSTANCE_COLS}, (SELECT COALESCE(MAX(h.event_id), 0) FROM {s}.history h "
                "WHERE h.instance_id = i.instance_id AND h.execution_id = i.execution_id) AS hlen "
                f"FROM {s}.instances i WHERE instance_id = ANY($1::text[])", ids)
            by_instance: dict[str, list[asyncpg.Record]] = {}
            for m in sorted(msg_rows, key=lambda m: m["id"]):
                by_instance.setdefault(m["instance_id"], []).append(m)
            records = {r["instance_id"]: r for r in inst_rows}
            items = []
            for iid, token in zip(ids, toks):
                messages, dequeues = [], 0
                for m in by_instance.get(iid, []):
                    dequeues = max(dequeues, m["dequeue_count"])
                    try:
                        messages.append(QueuedMessage(m["id"], decode_message(m["message"])))
                    except ValueError:
                        _log.error("instance %r: dropping unreadable queue message %s", iid, m["id"])
                        await conn.execute(f"DELETE FROM {s}.orchestrator_queue WHERE id=$1", m["id"])
                row = records.get(iid)
                items.append(OrchestrationItem(iid, token, messages, _record(row) if row else None,
                                               row["hlen"] if row else 0, dequeues))
            return FetchResult(items)

        return await self._tx(op)

    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        s = self.schema

        async def op(conn: _Conn) -> dict[str, list[HistoryEvent] | Exception]:
            rows = await conn.fetch(
                f"SELECT h.instance_id, h.event FROM {s}.history h JOIN unnest($1::text[], $2::bigint[]) AS k(i, e) "
                "ON h.instance_id = k.i AND h.execution_id = k.e ORDER BY h.instance_id, h.event_id",
                [k[0] for k in keys], [k[1] for k in keys])
            out: dict[str, list[HistoryEvent] | Exception] = {k[0]: [] for k in keys}
            for r in rows:
                iid = r["instance_id"]
                events = out[iid]
                if isinstance(events, Exception):
                    continue
                try:
                    events.append(decode_event(r["event"], instance_id=iid))
                except CorruptHistoryError as exc:
                    out[iid] = exc
            return out

        return await self._tx(op)

    async def commit_turns(self, commits: Sequence[TurnCommit]) -> list[bool]:
        async def op(conn: _Conn) -> list[bool]:
            results = []
            now = self.clock.now_ms()
            for c in commits:
                held = await conn.fetchval(
                    f"SELECT lock_token FROM {self.schema}.instance_locks WHERE instance_id=$1 FOR UPDATE",
                    c.instance_id)
                if held != c.lock_token:
                    results.append(False)
                    continue
                try:
                    async with conn.transaction():  # a savepoint: one bad turn must not sink the batch
                        await self._apply_commit(conn, c, now)
                    results.append(True)
                except _TRANSIENT:
                    raise
                except Exception as exc:  # noqa: BLE001 - a value the store refuses (or cannot encode) fails its turn only
                    _log.warning("instance %r: the store refused the turn (%s: %s)", c.instance_id,
                                 type(exc).__name__, exc)
                    c.refused = f"{type(exc).__name__}: {exc}"
                    results.append(False)
            return results

        return await self._tx(op)

    async def _apply_commit(self, conn: _Conn, c: TurnCommit, now: int) -> None:
        s = self.schema
        if c.consumed:
            await conn.execute(f"DELETE FROM {s}.orchestrator_queue WHERE id = ANY($1::bigint[])", c.consumed)
        if c.new_events:
            await conn.executemany(
                f"INSERT INTO {s}.history(instance_id, execution_id, event_id, event) VALUES ($1,$2,$3,$4)",
                [(c.instance_id, c.execution_id, e.event_id, encode_event(e)) for e in c.new_events])
        if c.activities:
            await conn.executemany(
                f"INSERT INTO {s}.worker_queue(instance_id, execution_id, event_id, name, message, visible_at) "
                "VALUES ($1,$2,$3,$4,$5,$6)",
                [(w.instance_id, w.execution_id, w.event_id, w.name, encode_message(w), now) for w in c.activities])
            await conn.execute("SELECT pg_notify($1, '')", f"{s}_work")
        if c.cancel_activities:
            args = ([k.instance_id for k in c.cancel_activities], [k.execution_id for k in c.cancel_activities],
                    [k.event_id for k in c.cancel_activities])
            calls = "(instance_id, execution_id, event_id) IN (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]))"
            await conn.execute(f"DELETE FROM {s}.worker_queue WHERE {calls} AND lock_token IS NULL", *args)
            await conn.execute(f"UPDATE {s}.worker_queue SET cancelled=true WHERE {calls}", *args)
        if c.delete_timers:
            # The TimerFired of these timers (a select loser, an ended execution) must never fire.
            timers = set(c.delete_timers)
            queued = await conn.fetch(f"SELECT id, message FROM {s}.orchestrator_queue WHERE instance_id = ANY($1::text[])",
                                      list({t.instance_id for t in timers}))
            doomed = []
            for row in queued:
                try:
                    if timer_key(decode_message(row["message"])) in timers:
                        doomed.append(row["id"])
                except ValueError:
                    continue  # unreadable rows are dropped (and logged) by the fetch that meets them
            if doomed:
                await conn.execute(f"DELETE FROM {s}.orchestrator_queue WHERE id = ANY($1::bigint[])", doomed)
        outgoing: list[tuple[OrchestratorMessage, int | None]] = []
        for child in c.children:
            if await self._insert_instance(conn, child.start, now):
                outgoing.append((child.start, None))
            elif child.if_taken is not None:
                outgoing.append((child.if_taken, None))
        outgoing += c.messages
        await self._enqueue(conn, outgoing)
        u = c.update
        if u is not None:
            error = orjson.dumps(u.error.to_dict()) if u.error is not None else None
            await conn.execute(
                f"UPDATE {s}.instances SET name=$2, version=$3, execution_id=$4, status=$5, output=$6, error=$7, "
                "custom_status = CASE WHEN $8 THEN $9 ELSE custom_status END, updated_at=$10 "
                "WHERE instance_id=$1",
                c.instance_id, u.name, u.version, u.execution_id, u.status, u.output, error,
                u.custom_status_changed, u.custom_status, now)
        if c.ends_instance:
            await conn.execute("SELECT pg_notify($1, $2)", self._done_channel, c.instance_id)
        await conn.execute(f"DELETE FROM {s}.instance_locks WHERE instance_id=$1", c.instance_id)

    async def renew_orchestration_items(self, locks: Sequence[tuple[str, str]], lock_timeout: float) -> list[bool]:
        s = self.schema
        ids = [i for i, _ in locks]
        tokens = [t for _, t in locks]

        async def op(conn: _Conn) -> list[bool]:
            rows = await conn.fetch(
                f"UPDATE {s}.instance_locks l SET locked_until = $3 "
                "FROM unnest($1::text[], $2::text[]) AS c(i, t) "
                "WHERE l.instance_id = c.i AND l.lock_token = c.t RETURNING l.instance_id",
                ids, tokens, self.clock.now_ms() + int(lock_timeout * 1000))
            held = {r[0] for r in rows}
            return [i in held for i in ids]

        return await self._tx(op) if locks else []

    async def abandon_orchestration_item(self, instance_id: str, lock_token: str, delay: float) -> None:
        s = self.schema

        async def op(conn: _Conn) -> None:
            held = await conn.fetchval(f"SELECT lock_token FROM {s}.instance_locks WHERE instance_id=$1 FOR UPDATE",
                                       instance_id)
            if held != lock_token:
                return
            await conn.execute(
                f"UPDATE {s}.orchestrator_queue SET lock_token=NULL, "
                "visible_at = GREATEST(visible_at, $2) WHERE lock_token=$1",
                lock_token, self.clock.now_ms() + int(delay * 1000))
            await conn.execute(f"DELETE FROM {s}.instance_locks WHERE instance_id=$1", instance_id)
            await conn.execute("SELECT pg_notify($1, '')", f"{s}_orch")

        await self._tx(op)

    # -- activity workers ----------------------------------------------------------

    async def fetch_work_items(self, max_items: int, lock_timeout: float, *,
                               known_names: Collection[str] | None = None,
                               foreign_delay: float = 1.0) -> list[WorkLease]:
        s = self.schema
        names = None if known_names is None else sorted(known_names)

        async def op(conn: _Conn) -> list[WorkLease]:
            now = self.clock.now_ms()
            rows = await conn.fetch(
                f"UPDATE {s}.worker_queue w SET lock_token = md5(random()::text || w.id::text), "
                "locked_until = $5::bigint + $2, dequeue_count = w.dequeue_count + 1 "
                f"WHERE w.id IN (SELECT id FROM {s}.worker_queue WHERE visible_at <= $5 "
                "AND (lock_token IS NULL OR locked_until <= $5) AND NOT cancelled "
                "AND ($3::text[] IS NULL OR name = ANY($3::text[]) OR visible_at <= $5::bigint - $4) "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING w.id, w.lock_token, w.message, w.dequeue_count",
                max_items, int(lock_timeout * 1000), names, int(foreign_delay * 1000), now)
            leases = []
            for r in sorted(rows, key=lambda r: r["id"]):
                try:
                    leases.append(WorkLease(r["lock_token"], decode_message(r["message"]), r["dequeue_count"]))
                except ValueError:
                    _log.error("dropping unreadable activity message %s", r["id"])
                    await conn.execute(f"DELETE FROM {s}.worker_queue WHERE id=$1", r["id"])
            return leases

        return await self._tx(op)

    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None) -> None:
        s = self.schema

        async def op(conn: _Conn) -> None:
            # Only results whose lease still exists count: otherwise the instance was purged
            # (perhaps created again under the same id), or another worker took the call over.
            held = {r[0] for r in await conn.fetch(
                f"DELETE FROM {s}.worker_queue WHERE lock_token = ANY($1::text[]) RETURNING lock_token",
                [d.lock_token for d in completions])}
            targets = list({d.result.instance_id for d in completions if d.lock_token in held})
            live = {r[0] for r in await conn.fetch(
                f"SELECT instance_id FROM {s}.instances WHERE instance_id = ANY($1::text[]) "
                "AND ($2::text[] IS NULL OR status = ANY($2::text[]))", targets, statuses)}
            await self._enqueue(conn, [(d.result, None) for d in completions
                                       if d.lock_token in held and d.result.instance_id in live])

        statuses = None if only_if_status_in is None else sorted(only_if_status_in)
        await self._tx(op)

    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        s = self.schema

        async def op(conn: _Conn) -> None:
            await conn.execute(f"UPDATE {s}.worker_queue SET lock_token=NULL, locked_until=0, "
                               "visible_at=$2 WHERE lock_token=$1", lock_token,
                               self.clock.now_ms() + int(delay * 1000))
            await conn.execute("SELECT pg_notify($1, '')", f"{s}_work")

        await self._tx(op)

    async def renew_work_item(self, lock_token: str, lock_timeout: float, *,
                              only_if_status_in: Collection[str] | None = None,
                              only_if_execution: int | None = None) -> bool:
        s = self.schema

        async def op(conn: _Conn) -> bool:
            renewed = await conn.fetchval(
                f"UPDATE {s}.worker_queue w SET locked_until = $2 FROM {s}.instances i "
                "WHERE w.lock_token=$1 AND NOT w.cancelled AND i.instance_id = w.instance_id "
                "AND ($3::text[] IS NULL OR i.status = ANY($3::text[])) AND ($4::bigint IS NULL OR i.execution_id = $4) "
                "RETURNING 1",
                lock_token, self.clock.now_ms() + int(lock_timeout * 1000),
                None if only_if_status_in is None else sorted(only_if_status_in), only_if_execution)
            return bool(renewed)

        return await self._tx(op)

    async def queue_depths(self, *, active_statuses: Collection[str] = ("Pending", "Running")) -> QueueDepths:
        s = self.schema

        async def op(conn: _Conn) -> QueueDepths:
            row = await conn.fetchrow(
                f"SELECT (SELECT COUNT(*) FROM {s}.orchestrator_queue WHERE visible_at <= $1) AS due, "
                f"(SELECT COUNT(*) FROM {s}.orchestrator_queue WHERE visible_at > $1) AS later, "
                f"(SELECT COUNT(*) FROM {s}.worker_queue) AS worker, "
                f"(SELECT COUNT(*) FROM {s}.instances WHERE status = ANY($2::text[])) AS active",
                self.clock.now_ms(), sorted(active_statuses))
            return QueueDepths(row["due"], row["later"], row["worker"], row["active"])

        return await self._tx(op)

    # -- helpers -------------------------------------------------------------------

    async def _remember(self, conn: _Conn, key: str, outcome: bytes) -> None:
        """Record, in the transaction of a call's writes, what the call did, under its request key.

        ``_tx`` retries a transaction whose connection dropped, and a drop just after
        the server committed looks like any other: without the key, the retry of a
        ``send`` would enqueue its message again and the retry of a purge would report
        nothing purged. With it, the retry finds the key (:meth:`_recall`), writes
        nothing, and returns the first attempt's outcome. Keys expire after an hour.
        """
        s = self.schema
        now_ms = self.clock.now_ms()
        await conn.execute(f"INSERT INTO {s}.request_keys(request_id, outcome, created_at) "
                           "VALUES ($1, $2, $3)", key, outcome, now_ms)
        now = self.clock.monotonic()
        if now >= self._next_key_gc:
            self._next_key_gc = now + _REQUEST_KEY_GC_INTERVAL
            await conn.execute(
                f"DELETE FROM {s}.request_keys WHERE request_id IN (SELECT request_id FROM {s}.request_keys "
                "WHERE created_at < $1 LIMIT 1000 FOR UPDATE SKIP LOCKED)", now_ms - _REQUEST_KEY_TTL_MS)

    async def _recall(self, conn: _Conn, key: str) -> bytes | None:
        """The outcome a committed earlier attempt of this call recorded (``None``: it did not commit)."""
        outcome: bytes | None = await conn.fetchval(
            f"SELECT outcome FROM {self.schema}.request_keys WHERE request_id=$1", key)
        return outcome

    async def _insert_instance(self, conn: _Conn, start: StartOrchestration, now: int,
                               incarnation: str | None = None) -> bool:
        """Create the instance row of ``start`` (Pending) stamped ``now``; ``False`` if the id is taken."""
        s = self.schema
        return bool(await conn.fetchval(
            f"INSERT INTO {s}.instances(instance_id, name, version, execution_id, status, created_at, updated_at,"
            " parent_instance_id, incarnation) VALUES ($1,$2,$3,$4,'Pending',$7,$7,$5,$6)"
            " ON CONFLICT (instance_id) DO NOTHING RETURNING 1",
            start.instance_id, start.name, start.version, start.execution_id, start.parent_instance_id,
            incarnation or uuid.uuid4().hex, now))

    async def _enqueue(self, conn: _Conn, messages: Sequence[tuple[OrchestratorMessage, int | None]]) -> None:
        if not messages:
            return
        await conn.executemany(
            f"INSERT INTO {self.schema}.orchestrator_queue(instance_id, message, visible_at) VALUES ($1,$2,$3)",
            [(m.instance_id, encode_message(m), v or 0) for m, v in messages])
        await conn.execute("SELECT pg_notify($1, '')", f"{self.schema}_orch")

    async def _load_history(self, conn: _Conn, instance_id: str, execution_id: int) -> list[HistoryEvent]:
        rows = await conn.fetch(f"SELECT event FROM {self.schema}.history WHERE instance_id=$1 AND execution_id=$2 "
                                "ORDER BY event_id", instance_id, execution_id)
        return [decode_event(r[0], instance_id=instance_id) for r in rows]

    async def drop_schema(self) -> None:
        """Delete this provider's schema and everything in it (tests and teardown)."""
        await self._tx(lambda conn: conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))


def _record_snapshot(record: InstanceRecord) -> bytes:
    """An instance record as a request key's outcome (JSON)."""
    return orjson.dumps(dataclasses.asdict(record))


def _record_from_snapshot(raw: bytes) -> InstanceRecord:
    fields = orjson.loads(raw)
    error = fields.pop("error", None)
    return InstanceRecord(**fields, error=decode_error_details(orjson.dumps(error)) if error is not None else None)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
