"""``PostgresProvider``: one PostgreSQL database shared by many runtime processes on many machines.

* Work distribution: orchestration fetches claim instances with a lease row
  (``instance_locks``) that expires, so a killed process's work is taken over
  after its lease runs out; concurrent fetchers pass each other by (a
  transaction-scoped advisory lock per instance being claimed), and activity
  fetches lock work rows with ``FOR UPDATE SKIP LOCKED``. Leases, visibility and timers all use one
  time source, the provider's injected clock (``clock=``, default: the
  system clock), passed to each query: nodes' clocks must agree (NTP) within
  a small fraction of ``orchestration_lock_timeout`` (docs/postgres.md).
* Wake-ups: writes ``NOTIFY`` on three channels (orchestrator work, activity
  work, ended instances); one listening connection per provider feeds them to
  the wake hubs of this process (it is a ``WakeSource``, see
  :mod:`duroxide_runtime.wake`). Waits stay bounded, so a lost notification
  costs at most one poll interval.
* Round trips: each step is one statement, which is its own transaction (no
  BEGIN/COMMIT): a client start, event or cancel; a fetch of a batch of
  instances with their messages, rows and history lengths; a history read; the
  commit of a batch of turns; an activity fetch; a batch of activity results.
  The fetch and the commit are server-side functions (migration 5); the NOTIFYs
  ride in the same statement. Pooled connections are not reset on release (the
  store leaves no session state behind), which saves one more round trip per
  step. docs/postgres.md lists the counts; tests/test_postgres_round_trips.py
  holds them.
* Durability: ``Durability.FULL`` (default) keeps the server's
  ``synchronous_commit`` (``on`` unless configured otherwise) for what the
  store acknowledges (starts, events, cancels, activity results, turns that
  end an instance); ``Durability.RELAXED`` sets ``synchronous_commit=off`` on
  the store's connections. Locks, leases and turns in between never wait for
  the WAL flush: they are redone if a server crash loses them, and the next
  flushed commit makes them durable (docs/postgres.md, "Durability").
* Connection loss: every operation (one statement, or for purge and schema
  migration one transaction) is retried on a fresh connection when the old one
  dropped (``pg_terminate_backend``, a failover, a restart); the listener
  reconnects by itself. A drop after the server committed looks the same, so
  client writes carry an id made once per call (the new row's incarnation; a
  request key for ``send`` and purge) and a retry that finds its first attempt
  committed writes nothing and reports what that attempt did.
* Schema: versioned migrations applied under an advisory lock, so several
  processes may start at once.

Example::

    store = await PostgresProvider.new("postgresql://postgres@127.0.0.1/app", schema="orders")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import re
import uuid
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
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
from ..messages import ActivityWork, OrchestratorMessage, StartOrchestration, decode_message, encode_message
from .base import (
    WAITING_LOCK_TOKEN, WAITING_LOCK_UNTIL, WAITING_OFFSET_MS, CallKey, Durability, FetchResult, HeartbeatRecord, HeartbeatWrite, InstancePage, InstanceQuery, InstanceRecord,
    OrchestrationItem, Provider, LeaseOffer, LockOffer, QueuedMessage, StoreOverview, TurnCommit, QueueDepths, QueueStats, WorkCompletion, WorkLease,
    check_query, decode_error_details, make_overview, page_of, status_admits, StartOutcome, ScheduleFire,
    ScheduleRecord, check_debounced_start,
)
from .postgres_queries import listing_sql, overview_parts
from .queue_slots import QueueSlots, limited_queues

if TYPE_CHECKING:
    from ..wake import WakeHub
from ..clock import SYSTEM_CLOCK, Clock
from ..queues import QueueOptions
from ..start_policy import IDEMPOTENCY_KEY_TTL_MS, IfExists

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

#: Shared by the fetch (fetch_items_m5) and the completion that locks (complete_work_m12): lock each
#: instance of ``wanted`` (a CTE of instance ids) that no live lock holds, with a new token.
_CLAIM_LOCKS = """    claimed AS (
        INSERT INTO {s}.instance_locks AS l (instance_id, lock_token, locked_until)
        SELECT w.instance_id, md5(random()::text || clock_timestamp()::text || w.instance_id), p_until
        FROM wanted w ORDER BY w.instance_id
        ON CONFLICT (instance_id) DO UPDATE SET lock_token = EXCLUDED.lock_token,
            locked_until = EXCLUDED.locked_until WHERE l.locked_until <= p_now
        RETURNING l.instance_id, l.lock_token)
"""


#: The columns of a locked instance as the functions of migration 12 return it.
_ITEM_COLUMNS = """RETURNS TABLE(o_instance_id text, o_lock_token text, o_message_ids bigint[], o_messages bytea[],
              o_dequeues integer, o_found boolean, o_name text, o_version text, o_execution_id bigint,
              o_status text, o_output text, o_error bytea, o_custom_status text, o_created_at bigint,
              o_updated_at bigint, o_parent text, o_incarnation text, o_history_len bigint)
"""


def _locked_items(*, next_due_column: bool) -> str:
    """The query returning each instance of ``ids`` (locked with ``tokens``) with its messages
    visible at ``p_now`` (now locked with it), its row and its history length; fetch_items_m5
    adds a NULL next-due column."""
    return """    WITH msgs AS (
        UPDATE {s}.orchestrator_queue q SET lock_token = c.token, dequeue_count = q.dequeue_count + 1
        FROM unnest(ids, tokens) AS c(instance_id, token)
        WHERE q.instance_id = c.instance_id AND q.visible_at <= p_now
        RETURNING q.id, q.instance_id, q.message, q.dequeue_count)
    SELECT c.instance_id, c.token, m.ids, m.messages, m.dequeues, i.instance_id IS NOT NULL,
        i.name, i.version, i.execution_id, i.status, i.output, i.error, i.custom_status, i.created_at,
        i.updated_at, i.parent_instance_id, i.incarnation,
        (SELECT COALESCE(MAX(h.event_id), 0) FROM {s}.history h
         WHERE h.instance_id = i.instance_id AND h.execution_id = i.execution_id)::bigint{extra}
    FROM unnest(ids, tokens) AS c(instance_id, token)
    LEFT JOIN LATERAL (
        SELECT array_agg(msgs.id ORDER BY msgs.id) AS ids, array_agg(msgs.message ORDER BY msgs.id) AS messages,
               max(msgs.dequeue_count)::integer AS dequeues
        FROM msgs WHERE msgs.instance_id = c.instance_id) m ON true
    LEFT JOIN {s}.instances i ON i.instance_id = c.instance_id;
""".replace("{extra}", ",\n        NULL::bigint" if next_due_column else "")


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
    # One round trip per dispatcher step: the fetch and the turn commit as server-side
    # functions (issue 13). Each statement inside a (VOLATILE) function sees what was
    # committed before it ran, as the separate statements of a transaction used to.
    (5, """
-- Due messages in due order, so that a fetch reads only what it takes: its cost does not
-- grow with the number of queued messages or of timers waiting to fire.
CREATE INDEX IF NOT EXISTS ix_oq_due ON {s}.orchestrator_queue(visible_at, id);

-- The TimerFired key of a queued message, as text (NULL: not a timer, or unreadable:
-- unreadable rows are dropped, and logged, by the fetch that meets them).
CREATE OR REPLACE FUNCTION {s}.queued_timer_m5(message bytea) RETURNS text[] LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    body json;
BEGIN
    body := convert_from(message, 'UTF8')::json;
    IF body->>'k' = 'timer' THEN
        RETURN ARRAY[body->>'instance_id', body->>'execution_id', body->>'event_id'];
    END IF;
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $fn$;

-- Lock up to p_max instances with messages visible at p_now and return each with its
-- messages, instance row and history length; with none, one row holding only the
-- time the next invisible message becomes due.
CREATE OR REPLACE FUNCTION {s}.fetch_items_m5(p_now bigint, p_scan integer, p_max integer, p_until bigint,
                                              p_key integer)
RETURNS TABLE(o_instance_id text, o_lock_token text, o_message_ids bigint[], o_messages bytea[],
              o_dequeues integer, o_found boolean, o_name text, o_version text, o_execution_id bigint,
              o_status text, o_output text, o_error bytea, o_custom_status text, o_created_at bigint,
              o_updated_at bigint, o_parent text, o_incarnation text, o_history_len bigint, o_next_due bigint)
LANGUAGE plpgsql
-- One plan per statement, made once per connection, not at every call (the queue scan walks
-- ix_oq_due in order whatever the time given).
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    ids text[];
    tokens text[];
BEGIN
    -- Locks and delivery counts need not survive a server crash (the locks would have
    -- expired; a message is at worst delivered once more): no WAL flush waited for.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Claim instances with visible messages and no live lock, oldest message first. Two
    -- fetchers never wait for each other: each takes a transaction-scoped advisory lock
    -- per instance it claims (p_key, hash of the id) and passes by the instances whose
    -- lock another fetch holds. Queue rows are not locked here, so a fetch waits only for
    -- transactions that never wait for a fetch (commits, purges), and messages are taken
    -- in their order (never a later one while an earlier one is held elsewhere).
    WITH cand AS (
        SELECT q.id, q.instance_id FROM {s}.orchestrator_queue q
        WHERE q.visible_at <= p_now AND NOT EXISTS (
            SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > p_now)
        ORDER BY q.visible_at, q.id LIMIT p_scan),
    ordered AS MATERIALIZED (
        SELECT c.instance_id, min(c.id) AS first FROM cand c GROUP BY c.instance_id ORDER BY min(c.id)),
    wanted AS (
        SELECT o.instance_id FROM ordered o
        WHERE pg_try_advisory_xact_lock(p_key, hashtext(o.instance_id)) LIMIT p_max),
""" + _CLAIM_LOCKS + """    SELECT array_agg(c.instance_id ORDER BY c.instance_id), array_agg(c.lock_token ORDER BY c.instance_id)
    INTO ids, tokens FROM claimed c;
    IF ids IS NULL THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::bigint[], NULL::bytea[], NULL::integer, NULL::boolean,
            NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::bytea, NULL::text, NULL::bigint,
            NULL::bigint, NULL::text, NULL::text, NULL::bigint,
            (SELECT MIN(q.visible_at) FROM {s}.orchestrator_queue q WHERE q.visible_at > p_now);
        RETURN;
    END IF;
    -- A new snapshot: a turn another process committed just before the claim is seen.
    RETURN QUERY
""" + _locked_items(next_due_column=True) + """END $fn$;

-- Commit a batch of turns. Turn n is element n of each t_* array; the other arrays hold
-- rows with the turn they belong to (*_turn). A turn whose lock token no longer holds
-- changes nothing; the result says, per turn, whether it was committed. Nothing is
-- caught here: an error rolls back the whole call, and the caller retries the turns one
-- by one to find the one the store refuses.
CREATE OR REPLACE FUNCTION {s}.commit_turns_m5(
    p_now bigint, p_orch_channel text, p_work_channel text, p_done_channel text,
    t_instance text[], t_token text[], t_execution bigint[], t_ends boolean[],
    u_turn integer[], u_name text[], u_version text[], u_execution bigint[], u_status text[], u_output text[],
    u_error bytea[], u_custom_changed boolean[], u_custom text[],
    c_turn integer[], c_id bigint[],
    h_turn integer[], h_event_id bigint[], h_event bytea[],
    a_turn integer[], a_instance text[], a_execution bigint[], a_event_id bigint[], a_name text[], a_message bytea[],
    k_turn integer[], k_instance text[], k_execution bigint[], k_event_id bigint[],
    d_turn integer[], d_instance text[], d_execution bigint[], d_event_id bigint[],
    s_turn integer[], s_instance text[], s_name text[], s_version text[], s_execution bigint[], s_parent text[],
    s_incarnation text[], s_message bytea[], s_taken_instance text[], s_taken_message bytea[],
    m_turn integer[], m_instance text[], m_message bytea[], m_visible bigint[])
RETURNS boolean[] LANGUAGE plpgsql
-- Its statements only join the given arrays to primary keys: one generic plan each, made once
-- per connection, instead of a plan made anew at every call.
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    ok integer[];
    out_turn integer[] := ARRAY[]::integer[];
    out_instance text[] := ARRAY[]::text[];
    out_message bytea[] := ARRAY[]::bytea[];
    child record;
BEGIN
    -- Only a turn that ends its instance acknowledges anything (its waiting clients and its
    -- parent hear of it): then the commit waits for the WAL flush, as the store's durability
    -- says. A turn in between, lost with the last moments of WAL to a server crash, is redone
    -- from the messages it consumed, which come back with it; and the WAL is ordered, so the
    -- next flushed commit (an activity result, a start, an end) makes it durable too.
    IF NOT (true = ANY(t_ends)) THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- The turns whose token still holds, their lock rows locked in instance order (the order
    -- fetches claim them in). The caller sends an instance once per batch.
    SELECT COALESCE(array_agg(held.turn), ARRAY[]::integer[]) INTO ok FROM (
        SELECT t.turn FROM unnest(t_instance, t_token) WITH ORDINALITY AS t(instance_id, token, turn)
        JOIN {s}.instance_locks l ON l.instance_id = t.instance_id AND l.lock_token = t.token
        ORDER BY t.instance_id FOR UPDATE OF l) held;
    IF cardinality(ok) = 0 THEN
        RETURN array_fill(false, ARRAY[cardinality(t_instance)]);
    END IF;
    -- (Each statement below runs only when the batch has rows for it: an empty one still
    -- costs its planning and executor start.)
    IF cardinality(c_turn) > 0 THEN
        DELETE FROM {s}.orchestrator_queue WHERE id IN (
            SELECT c.id FROM unnest(c_turn, c_id) AS c(turn, id) WHERE c.turn = ANY(ok));
    END IF;
    IF cardinality(h_turn) > 0 THEN
        INSERT INTO {s}.history(instance_id, execution_id, event_id, event)
            SELECT t_instance[h.turn], t_execution[h.turn], h.event_id, h.event
            FROM unnest(h_turn, h_event_id, h_event) AS h(turn, event_id, event) WHERE h.turn = ANY(ok);
    END IF;
    IF cardinality(a_turn) > 0 THEN
        INSERT INTO {s}.worker_queue(instance_id, execution_id, event_id, name, message, visible_at)
            SELECT a.instance_id, a.execution_id, a.event_id, a.name, a.message, p_now
            FROM unnest(a_turn, a_instance, a_execution, a_event_id, a_name, a_message) WITH ORDINALITY
                AS a(turn, instance_id, execution_id, event_id, name, message, n)
            WHERE a.turn = ANY(ok) ORDER BY a.n;
        IF FOUND THEN
            PERFORM pg_notify(p_work_channel, '');
        END IF;
    END IF;
    IF cardinality(k_turn) > 0 THEN
        -- Cancelled calls: a queued one is deleted, a leased one marked (never leased again).
        DELETE FROM {s}.worker_queue w
            USING unnest(k_turn, k_instance, k_execution, k_event_id) AS k(turn, instance_id, execution_id, event_id)
            WHERE k.turn = ANY(ok) AND w.instance_id = k.instance_id AND w.execution_id = k.execution_id
              AND w.event_id = k.event_id AND w.lock_token IS NULL;
        UPDATE {s}.worker_queue w SET cancelled = true
            FROM unnest(k_turn, k_instance, k_execution, k_event_id) AS k(turn, instance_id, execution_id, event_id)
            WHERE k.turn = ANY(ok) AND w.instance_id = k.instance_id AND w.execution_id = k.execution_id
              AND w.event_id = k.event_id;
    END IF;
    IF cardinality(d_turn) > 0 THEN
        -- Timers that must never fire: their queued TimerFired goes.
        DELETE FROM {s}.orchestrator_queue q
            USING (SELECT DISTINCT d.instance_id, d.execution_id, d.event_id
                   FROM unnest(d_turn, d_instance, d_execution, d_event_id) AS d(turn, instance_id, execution_id, event_id)
                   WHERE d.turn = ANY(ok)) d
            WHERE q.instance_id = d.instance_id AND position('"k":"timer"'::bytea IN q.message) > 0
              AND {s}.queued_timer_m5(q.message) = ARRAY[d.instance_id, d.execution_id::text, d.event_id::text];
    END IF;
    IF cardinality(s_turn) > 0 THEN
        -- Children: created unless the id is taken, then their start is sent, else if_taken.
        FOR child IN
            SELECT s.* FROM unnest(s_turn, s_instance, s_name, s_version, s_execution, s_parent, s_incarnation,
                                   s_message, s_taken_instance, s_taken_message) WITH ORDINALITY
                AS s(turn, instance_id, name, version, execution_id, parent, incarnation, message, taken_instance,
                     taken_message, n)
            WHERE s.turn = ANY(ok) ORDER BY s.n
        LOOP
            INSERT INTO {s}.instances(instance_id, name, version, execution_id, status, created_at, updated_at,
                                      parent_instance_id, incarnation)
                VALUES (child.instance_id, child.name, child.version, child.execution_id, 'Pending', p_now, p_now,
                        child.parent, child.incarnation)
                ON CONFLICT (instance_id) DO NOTHING;
            IF FOUND THEN
                out_turn := array_append(out_turn, child.turn::integer);
                out_instance := array_append(out_instance, child.instance_id);
                out_message := array_append(out_message, child.message);
            ELSIF child.taken_message IS NOT NULL THEN
                out_turn := array_append(out_turn, child.turn::integer);
                out_instance := array_append(out_instance, child.taken_instance);
                out_message := array_append(out_message, child.taken_message);
            END IF;
        END LOOP;
    END IF;
    IF cardinality(out_turn) > 0 OR cardinality(m_turn) > 0 THEN
        -- Outgoing messages in the order the turns would have sent them one by one:
        -- per turn, its children's starts first, then its messages.
        INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at)
            SELECT o.instance_id, o.message, o.visible_at FROM (
                SELECT x.turn, 0 AS part, x.n, x.instance_id, x.message, 0::bigint AS visible_at
                FROM unnest(out_turn, out_instance, out_message) WITH ORDINALITY AS x(turn, instance_id, message, n)
                UNION ALL
                SELECT m.turn, 1, m.n, m.instance_id, m.message, COALESCE(m.visible, 0)
                FROM unnest(m_turn, m_instance, m_message, m_visible) WITH ORDINALITY
                    AS m(turn, instance_id, message, visible, n)
                WHERE m.turn = ANY(ok)) o
            ORDER BY o.turn, o.part, o.n;
        IF FOUND THEN
            PERFORM pg_notify(p_orch_channel, '');
        END IF;
    END IF;
    IF cardinality(u_turn) > 0 THEN
        UPDATE {s}.instances i SET name = u.name, version = u.version, execution_id = u.execution_id,
                status = u.status, output = u.output, error = u.error,
                custom_status = CASE WHEN u.custom_changed THEN u.custom ELSE i.custom_status END, updated_at = p_now
            FROM unnest(u_turn, u_name, u_version, u_execution, u_status, u_output, u_error, u_custom_changed, u_custom)
                AS u(turn, name, version, execution_id, status, output, error, custom_changed, custom)
            WHERE u.turn = ANY(ok) AND i.instance_id = t_instance[u.turn];
    END IF;
    IF true = ANY(t_ends) THEN
        PERFORM pg_notify(p_done_channel, t_instance[e.turn]) FROM unnest(ok) AS e(turn) WHERE t_ends[e.turn];
    END IF;
    DELETE FROM {s}.instance_locks WHERE instance_id IN (SELECT t_instance[e.turn] FROM unnest(ok) AS e(turn));
    RETURN ARRAY(SELECT n = ANY(ok) FROM generate_series(1, cardinality(t_instance)) AS n ORDER BY n);
END $fn$;
"""),
    # Activity heartbeats: the last details per call (all attempts of a retried call share the
    # row of its first attempt, call_id), and the attempt that beat last (event_id).
    (6, """
CREATE TABLE IF NOT EXISTS {s}.activity_heartbeats (
    instance_id text NOT NULL, execution_id bigint NOT NULL, call_id bigint NOT NULL, event_id bigint NOT NULL,
    details text, updated_at bigint NOT NULL,
    PRIMARY KEY (instance_id, execution_id, call_id));
"""),
    # The operator listing (keyset pages newest first, filtered by status or name) and overview
    # (recent endings and failures by status and update time). Ids compare bytewise (COLLATE "C"),
    # as in the other stores, whatever the database's collation. The index on created_at alone
    # is a prefix of ix_instances_created_id, so it goes.
    (7, """
CREATE INDEX IF NOT EXISTS ix_instances_created_id ON {s}.instances(created_at, instance_id COLLATE "C");
CREATE INDEX IF NOT EXISTS ix_instances_status_created ON {s}.instances(status, created_at, instance_id COLLATE "C");
CREATE INDEX IF NOT EXISTS ix_instances_name_created ON {s}.instances(name, created_at, instance_id COLLATE "C");
CREATE INDEX IF NOT EXISTS ix_instances_status_updated ON {s}.instances(status, updated_at);
DROP INDEX IF EXISTS {s}.ix_instances_created;

-- The error type of a stored error (JSON text): NULL without one; p_corrupt when unreadable.
CREATE OR REPLACE FUNCTION {s}.error_type_m7(p_error bytea, p_corrupt text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF p_error IS NULL THEN
        RETURN NULL;
    END IF;
    -- json, not jsonb: only the field read is unescaped (a message holding an escaped NUL stays readable).
    RETURN convert_from(p_error, 'UTF8')::json->>'error_type';
EXCEPTION WHEN others THEN
    RETURN p_corrupt;
END $fn$;
"""),
    # Idempotency keys of starts (start_instance): which instance id a key's first start named,
    # kept for IDEMPOTENCY_KEY_TTL (24 h). Not request_keys: those are made per call and kept an
    # hour, these are the user's own and kept a day, and the two must never collide.
    (8, """
CREATE TABLE IF NOT EXISTS {s}.start_keys (
    idempotency_key text PRIMARY KEY, instance_id text NOT NULL, created_at bigint NOT NULL);
CREATE INDEX IF NOT EXISTS ix_start_keys_created ON {s}.start_keys(created_at);
"""),
    # Queues (duroxide_runtime.queues): each work item's queue, concurrency key and priority,
    # filled from its message by a trigger, so the turn commit (commit_turns_m5) is unchanged
    # and nodes of older versions sharing the schema fill them too; lease times of rate-limited
    # queues; indexes to lease by priority and to count a queue's leases.
    (9, """
ALTER TABLE {s}.worker_queue ADD COLUMN IF NOT EXISTS queue text NOT NULL DEFAULT 'default';
ALTER TABLE {s}.worker_queue ADD COLUMN IF NOT EXISTS ckey text;
ALTER TABLE {s}.worker_queue ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0;
CREATE OR REPLACE FUNCTION {s}.work_placement_m9() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    body json;
BEGIN
    body := convert_from(NEW.message, 'UTF8')::json;
    NEW.queue := COALESCE(body->>'queue', 'default');
    NEW.ckey := body->>'concurrency_key';
    NEW.priority := COALESCE((body->>'priority')::integer, 0);
    RETURN NEW;
EXCEPTION WHEN others THEN
    RETURN NEW;  -- an unreadable message keeps the defaults; the fetch that meets it drops it
END $fn$;
DROP TRIGGER IF EXISTS work_placement ON {s}.worker_queue;
CREATE TRIGGER work_placement BEFORE INSERT ON {s}.worker_queue
    FOR EACH ROW EXECUTE FUNCTION {s}.work_placement_m9();
CREATE INDEX IF NOT EXISTS ix_wq_priority ON {s}.worker_queue(priority DESC, id);
CREATE INDEX IF NOT EXISTS ix_wq_queue_lease ON {s}.worker_queue(queue, locked_until);
-- kind 0: a lease of an activity call; 1: an admission of an instance waiting for its queue.
CREATE TABLE IF NOT EXISTS {s}.queue_leases (
    kind smallint NOT NULL DEFAULT 0, queue text NOT NULL, leased_at bigint NOT NULL);
CREATE INDEX IF NOT EXISTS ix_queue_leases ON {s}.queue_leases(kind, queue, leased_at);
-- Instances started in a queue: gate 1 while waiting for a slot, 2 while holding one.
ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS queue text;
ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS ckey text;
ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS priority integer;
ALTER TABLE {s}.instances ADD COLUMN IF NOT EXISTS gate smallint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS ix_instances_waiting ON {s}.instances(queue, priority DESC, created_at, instance_id)
    WHERE gate = 1;
CREATE INDEX IF NOT EXISTS ix_instances_admitted ON {s}.instances(queue, ckey) WHERE gate = 2;
"""),
    # Cron schedules (duroxide_runtime.schedules): one row per schedule; its next tick moves in
    # the transaction that starts the tick's instance (fire_schedule).
    (10, """
CREATE TABLE IF NOT EXISTS {s}.schedules (
    schedule_id text PRIMARY KEY, cron text NOT NULL, orchestration text NOT NULL, input text NOT NULL,
    version text, catch_up text NOT NULL, paused boolean NOT NULL DEFAULT false, next_tick bigint NOT NULL,
    last_tick bigint, last_instance_id text, created_at bigint NOT NULL, updated_at bigint NOT NULL,
    registered_at bigint);
"""),
    # Debounced starts (Provider.debounce_start): one window per (orchestration name, key), naming
    # the held instance and its queued start; the row is the lock every start of that key takes.
    (11, """
CREATE TABLE IF NOT EXISTS {s}.debounce_windows (
    name text NOT NULL, debounce_key text NOT NULL, instance_id text NOT NULL, message_id bigint NOT NULL,
    PRIMARY KEY (name, debounce_key));
"""),
    # Eager dispatch (providers.base.LeaseOffer, LockOffer): a turn commit leases the calls it
    # enqueues to its own process's idle worker, and recording results locks their instances
    # for its idle dispatcher, each in the statement that does the write: one round trip less
    # on each hop of an orchestration.
    (12, """
-- Lease up to p_max of the calls the committed turns (p_ok, per turn, as commit_turns_m5
-- returns it) enqueued: unleased, of a name in p_names, of a queue not in p_limited. Called
-- after commit_turns_m5 in the same statement; as a VOLATILE function it sees its rows.
CREATE OR REPLACE FUNCTION {s}.lease_committed_m12(
    p_ok boolean[], a_turn integer[], a_instance text[], a_execution bigint[], a_event_id bigint[],
    p_max integer, p_until bigint, p_names text[], p_limited text[])
RETURNS TABLE(o_token text, o_message bytea) LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN QUERY
    WITH wanted AS (
        SELECT w.id FROM unnest(a_turn, a_instance, a_execution, a_event_id) WITH ORDINALITY
            AS a(turn, instance_id, execution_id, event_id, n)
        JOIN {s}.worker_queue w ON w.instance_id = a.instance_id AND w.execution_id = a.execution_id
            AND w.event_id = a.event_id
        WHERE p_ok[a.turn] AND w.lock_token IS NULL AND w.dequeue_count = 0 AND NOT w.cancelled
            AND w.name = ANY(p_names) AND NOT (w.queue = ANY(p_limited))
        ORDER BY a.n LIMIT p_max)
    UPDATE {s}.worker_queue w SET lock_token = md5(random()::text || clock_timestamp()::text || w.id::text),
        locked_until = p_until, dequeue_count = 1
    FROM wanted WHERE w.id = wanted.id
    RETURNING w.lock_token, w.message;
END $fn$;

-- The instances ids (locked with tokens) with their messages visible at p_now, instance row
-- and history length, as fetch_items_m5 returns them.
CREATE OR REPLACE FUNCTION {s}.locked_items_m12(ids text[], tokens text[], p_now bigint)
""" + _ITEM_COLUMNS + """LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN QUERY
""" + _locked_items(next_due_column=False) + """END $fn$;

-- Record activity results (as the complete_work_items statement does) and lock up to p_max of
-- the instances they went to: those of an orchestration named in p_names with no live lock,
-- claimed as fetch_items_m5 claims (advisory lock p_key, passing by what a fetch holds). The
-- dispatchers of other processes are woken only for results whose instance was not locked.
CREATE OR REPLACE FUNCTION {s}.complete_work_m12(
    p_tokens text[], p_instances text[], p_messages bytea[], p_statuses text[], p_channel text,
    f_instance text[], f_execution bigint[], f_call bigint[],
    p_now bigint, p_max integer, p_until bigint, p_names text[], p_key integer)
""" + _ITEM_COLUMNS + """LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    done text[];
    delivered text[];
    ids text[];
    tokens text[];
BEGIN
    WITH d AS (DELETE FROM {s}.worker_queue WHERE lock_token = ANY(p_tokens) RETURNING lock_token)
    SELECT array_agg(d.lock_token) INTO done FROM d;
    IF done IS NULL THEN
        RETURN;  -- every lease is gone: the results are stale
    END IF;
    DELETE FROM {s}.activity_heartbeats h
        USING unnest(p_tokens, f_instance, f_execution, f_call) AS f(token, instance_id, execution_id, call_id)
        WHERE f.instance_id IS NOT NULL AND f.token = ANY(done)
          AND h.instance_id = f.instance_id AND h.execution_id = f.execution_id AND h.call_id = f.call_id;
    WITH q AS (
        INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at)
        SELECT r.instance_id, r.message, 0
        FROM unnest(p_tokens, p_instances, p_messages) WITH ORDINALITY AS r(token, instance_id, message, n)
        WHERE r.token = ANY(done) AND EXISTS (
            SELECT 1 FROM {s}.instances i WHERE i.instance_id = r.instance_id
            AND (p_statuses IS NULL OR i.status = ANY(p_statuses)))
        ORDER BY r.n RETURNING instance_id)
    SELECT array_agg(DISTINCT q.instance_id) INTO delivered FROM q;
    IF delivered IS NULL THEN
        RETURN;
    END IF;
    WITH cand AS (
        SELECT i.instance_id FROM {s}.instances i
        WHERE i.instance_id = ANY(delivered) AND i.name = ANY(p_names) AND NOT EXISTS (
            SELECT 1 FROM {s}.instance_locks l WHERE l.instance_id = i.instance_id AND l.locked_until > p_now)
        ORDER BY i.instance_id),
    wanted AS (
        SELECT c.instance_id FROM cand c
        WHERE pg_try_advisory_xact_lock(p_key, hashtext(c.instance_id)) LIMIT p_max),
""" + _CLAIM_LOCKS + """    SELECT array_agg(c.instance_id ORDER BY c.instance_id), array_agg(c.lock_token ORDER BY c.instance_id)
    INTO ids, tokens FROM claimed c;
    IF cardinality(ids) IS DISTINCT FROM cardinality(delivered) THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
    IF ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM {s}.locked_items_m12(ids, tokens, p_now);
    END IF;
END $fn$;
"""),
]

#: How long a request key is kept: far longer than a call keeps retrying (about 30 s).
_REQUEST_KEY_TTL_MS = 3_600_000
#: ``queue_leases.kind``: a lease of an activity call, an admission of a waiting instance.
_CALLS, _INSTANCES = 0, 1
#: How often one provider deletes expired request keys (seconds).
_REQUEST_KEY_GC_INTERVAL = 60.0

_INSTANCE_COLS = ("instance_id, name, version, execution_id, status, output, error, custom_status, "
                  "created_at, updated_at, parent_instance_id, incarnation")

#: Opens a lease statement: its writes (locks, leases, delivery counts) need not survive a server
#: crash (a lost lock would have expired; a call is at worst run once more), so its commit does not
#: wait for the WAL to reach the disk whatever the store's durability. The statement references
#: ``no_flush`` where it writes (its RETURNING), so the setting is in force when it commits.
_NO_FLUSH = "WITH no_flush AS (SELECT set_config('synchronous_commit', 'off', true) AS off) "

#: The arrays ``commit_turns_m5`` takes after its four scalars, in its parameter order. ``t_*``: one
#: element per turn; the others: one per row, with the (1-based) turn it belongs to in ``*_turn``.
_COMMIT_ARRAYS = (
    "t_instance", "t_token", "t_execution", "t_ends",
    "u_turn", "u_name", "u_version", "u_execution", "u_status", "u_output", "u_error", "u_custom_changed",
    "u_custom",
    "c_turn", "c_id",
    "h_turn", "h_event_id", "h_event",
    "a_turn", "a_instance", "a_execution", "a_event_id", "a_name", "a_message",
    "k_turn", "k_instance", "k_execution", "k_event_id",
    "d_turn", "d_instance", "d_execution", "d_event_id",
    "s_turn", "s_instance", "s_name", "s_version", "s_execution", "s_parent", "s_incarnation", "s_message",
    "s_taken_instance", "s_taken_message",
    "m_turn", "m_instance", "m_message", "m_visible",
)

#: The array names of each group (``t``, ``u``, ``c``, ...), in parameter order.
_ARRAYS_OF = {p: [n for n in _COMMIT_ARRAYS if n.split("_", 1)[0] == p] for p in "tuchakdsm"}


_SCHEDULE_COLS = ("schedule_id, cron, orchestration, input, version, catch_up, paused, next_tick, last_tick, "
                  "last_instance_id, created_at, updated_at, registered_at")


def _schedule(row: Mapping[str, Any]) -> ScheduleRecord:
    return ScheduleRecord(row["schedule_id"], row["cron"], row["orchestration"], row["input"], row["version"],
                          row["catch_up"], row["paused"], row["next_tick"], row["last_tick"], row["last_instance_id"],
                          row["created_at"], row["updated_at"], row["registered_at"])


def _record(row: Mapping[str, Any]) -> InstanceRecord:
    """An instance row (an ``asyncpg.Record``, or a mapping with the same keys) as a record."""
    error = decode_error_details(row["error"])
    return InstanceRecord(row["instance_id"], row["name"], row["version"], row["execution_id"], row["status"],
                          row["output"], error, row["custom_status"], row["created_at"], row["updated_at"],
                          row["parent_instance_id"], incarnation=row["incarnation"])


def _fetched_record(row: asyncpg.Record) -> InstanceRecord | None:
    """The instance row of one ``fetch_items_m5`` result row (``None``: no such instance)."""
    if not row["o_found"]:
        return None
    return InstanceRecord(row["o_instance_id"], row["o_name"], row["o_version"], row["o_execution_id"],
                          row["o_status"], row["o_output"], decode_error_details(row["o_error"]),
                          row["o_custom_status"], row["o_created_at"], row["o_updated_at"], row["o_parent"],
                          incarnation=row["o_incarnation"])


def _turn_rows(c: TurnCommit, turn: int) -> dict[str, list[Any]]:
    """One turn as rows of ``commit_turns_m5``'s arrays; raises if a value cannot be encoded."""
    rows: dict[str, list[Any]] = {name: [] for name in _COMMIT_ARRAYS}

    def add(prefix: str, *values: Any) -> None:
        for name, value in zip(_ARRAYS_OF[prefix], values if prefix == "t" else (turn, *values), strict=True):
            rows[name].append(value)

    add("t", c.instance_id, c.lock_token, c.execution_id, c.ends_instance)
    u = c.update
    if u is not None:
        error = orjson.dumps(u.error.to_dict()) if u.error is not None else None
        add("u", u.name, u.version, u.execution_id, u.status, u.output, error, u.custom_status_changed,
            u.custom_status)
    for queue_id in c.consumed:
        add("c", queue_id)
    for e in c.new_events:
        add("h", e.event_id, encode_event(e))
    for w in c.activities:
        add("a", w.instance_id, w.execution_id, w.event_id, w.name, encode_message(w))
    for k in c.cancel_activities:
        add("k", k.instance_id, k.execution_id, k.event_id)
    for k in c.delete_timers:
        add("d", k.instance_id, k.execution_id, k.event_id)
    for child in c.children:
        st, taken = child.start, child.if_taken
        add("s", st.instance_id, st.name, st.version, st.execution_id, st.parent_instance_id, uuid.uuid4().hex,
            encode_message(st), None if taken is None else taken.instance_id,
            None if taken is None else encode_message(taken))
    for message, visible_at in c.messages:
        add("m", message.instance_id, encode_message(message), visible_at)
    return rows


#: The most starts one statement writes (bounds the statement; more wait for the next one).
_MAX_STARTS_PER_STATEMENT = 500


@dataclasses.dataclass
class _PendingStart:
    """A ``create_instance`` call waiting for its statement: ``created`` says whether its row was made."""

    start: StartOrchestration
    incarnation: str
    message: bytes
    created: asyncio.Future[bool]


async def _keep_session(conn: _Conn) -> None:
    """The pool's ``reset=``: nothing to undo, so no reset query (one round trip per release) is sent.

    The store never leaves session state on a pooled connection: no SET, no LISTEN (the
    listener has a connection of its own), no cursors, advisory locks only per transaction.
    asyncpg still rolls back a transaction left open, before calling this.
    """


class PostgresProvider(Provider):
    """A durable store in PostgreSQL, safe for many processes on many machines.

    ``clock`` is the one time source of leases, visibility, timers and
    timestamps (default: the system clock); the runtime and clients of the
    store use it too. ``durability`` says what an acknowledged write survives
    (:class:`~duroxide_runtime.providers.base.Durability`): ``FULL`` (default)
    leaves the server's ``synchronous_commit`` alone (``on`` unless configured
    otherwise); ``RELAXED`` sets ``synchronous_commit=off`` on the store's
    connections, so a commit returns before its WAL reaches the disk.
    ``pool_size`` bounds the connections (besides the one that listens).

    Example::

        store = await PostgresProvider.new("postgresql://app@db/app", durability=Durability.RELAXED)
    """

    def __init__(self, url: str, schema: str, pool_size: int, *, clock: Clock = SYSTEM_CLOCK,
                 durability: Durability = Durability.FULL) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ConfigurationError(f"schema name {schema!r} is not a plain lower-case SQL identifier",
                                     fix="use letters, digits and underscores, e.g. schema='duroxide'")
        if not isinstance(durability, Durability):
            raise ConfigurationError(f"durability must be a Durability, got {durability!r}",
                                     fix="pass Durability.FULL (the default) or Durability.RELAXED")
        self.url = url
        self.schema = schema
        self.clock = clock
        self.durability = durability
        #: The wake hubs this provider's LISTEN connection feeds (see wake_into).
        self._hubs: list[WakeHub] = []
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._next_key_gc = 0.0
        self._next_start_key_gc = 0.0
        #: Test seam: awaited with the connection right after each statement or transaction
        #: committed, before the result is returned. A hook that kills the connection there makes
        #: the caller see what a reply lost after the server committed looks like
        #: (tests/test_postgres_retries.py).
        self._after_commit_hook: Callable[[_Conn], Awaitable[None]] | None = None
        s = schema
        self._channels: dict[str, Callable[[WakeHub], None]] = {
            f"{s}_orch": lambda hub: hub.notify_orchestrator(), f"{s}_work": lambda hub: hub.notify_worker()}
        self._orch_channel = f"{s}_orch"
        self._work_channel = f"{s}_work"
        self._done_channel = f"{s}_done"
        self._sql = _Statements(s)
        #: Starts waiting to be written, and the task writing them (see create_instance).
        self._starts: list[_PendingStart] = []
        self._start_flusher: asyncio.Task[None] | None = None

    @classmethod
    async def new(cls, url: str, *, schema: str = "duroxide", pool_size: int = 10,
                  clock: Clock = SYSTEM_CLOCK, durability: Durability = Durability.FULL) -> PostgresProvider:
        """Connect, migrate the schema (safe when several processes start at once) and listen for wake-ups."""
        require_asyncpg()
        provider = cls(url, schema, pool_size, clock=clock, durability=durability)
        options: dict[str, Any] = {}
        if durability is Durability.RELAXED:
            # Per connection, from its start: RESET ALL would keep it too.
            options["server_settings"] = {"synchronous_commit": "off"}
        if "reset" in inspect.signature(asyncpg.create_pool).parameters:  # asyncpg >= 0.30
            options["reset"] = _keep_session
        try:
            provider._pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size,
                                                       command_timeout=60, **options)
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
        return await self._run(fn, transaction=True)

    async def _one(self, fn: Callable[[_Conn], Awaitable[_T]]) -> _T:
        """Run ``fn``, which sends one statement (its own transaction: no BEGIN/COMMIT round
        trips); retry on a new connection if the connection was lost."""
        return await self._run(fn, transaction=False)

    async def _run(self, fn: Callable[[_Conn], Awaitable[_T]], *, transaction: bool) -> _T:
        if self._pool is None:
            raise StoreError("PostgresProvider is closed", fix="create a new one with PostgresProvider.new(url)")
        delay = 0.01
        for attempt in range(30):
            try:
                async with self._pool.acquire() as conn:
                    try:
                        if transaction:
                            async with conn.transaction():
                                result = await fn(conn)
                        else:
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
                self._wake(lambda hub: hub.wake_everyone())
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
        flusher = self._start_flusher
        if flusher is not None and not flusher.done() and flusher.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await flusher  # the starts already asked for are written (or fail) first
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

    async def create_instance(self, start: StartOrchestration, *,
                              lock: LockOffer | None = None) -> OrchestrationItem | None:
        """Create the row and enqueue the start in one statement, shared with the starts that
        are waiting at the same moment (many starts at once cost one commit, not one each).
        A lock offer is declined: the statement is shared, and the dispatcher fetches the start."""
        if start.queue is not None:  # waits for its queue: the transaction of start_instance
            if not (await self.start_instance(start)).created:
                raise InstanceAlreadyExistsError(start.instance_id)
            return None
        # The incarnation is made once per call, before the first attempt: if a retry (after
        # a reply lost once the server committed) finds the id taken by this incarnation,
        # the row is this call's own insert and the call succeeded.
        loop = asyncio.get_running_loop()
        pending = _PendingStart(start, uuid.uuid4().hex, encode_message(start), loop.create_future())
        self._starts.append(pending)
        flusher = self._start_flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._start_flusher = loop.create_task(self._flush_starts(), name="duroxide-pg-starts")
        if not await pending.created:
            raise InstanceAlreadyExistsError(start.instance_id)
        return None

    async def _flush_starts(self) -> None:
        """Write the waiting starts, up to _MAX_STARTS_PER_STATEMENT a statement, until none wait."""
        batch: list[_PendingStart] = []
        try:
            while self._starts:
                batch = []
                later: list[_PendingStart] = []
                ids: set[str] = set()
                for p in self._starts:
                    if p.created.done():
                        continue  # its caller gave up before anything was sent
                    if p.start.instance_id in ids or len(batch) == _MAX_STARTS_PER_STATEMENT:
                        later.append(p)  # the same id twice: the second waits, and finds it taken
                    else:
                        batch.append(p)
                        ids.add(p.start.instance_id)
                self._starts = later
                if batch:
                    await self._write_starts(batch)
        finally:
            for p in [*batch, *self._starts]:  # only if this task was cancelled (the loop is ending)
                if not p.created.done():
                    p.created.set_exception(StoreError("PostgresProvider stopped before the start was written",
                                                       fix="retry the start"))
            self._starts = []

    async def _write_starts(self, batch: list[_PendingStart]) -> None:
        """One statement for ``batch``; if the server refuses it, each start alone, so that a
        value one start carries fails that start only."""
        try:
            created = await self._insert_starts(batch)
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) > 1 and not isinstance(exc, StoreError):
                for p in batch:
                    await self._write_starts([p])
                return
            for p in batch:
                if not p.created.done():
                    p.created.set_exception(exc)
            return
        for p, ok in zip(batch, created, strict=True):
            if not p.created.done():
                p.created.set_result(ok)

    async def _insert_starts(self, batch: Sequence[_PendingStart]) -> list[bool]:
        columns = ([p.start.instance_id for p in batch], [p.start.name for p in batch],
                   [p.start.version for p in batch], [p.start.execution_id for p in batch],
                   [p.start.parent_instance_id for p in batch], [p.incarnation for p in batch],
                   [p.message for p in batch])

        async def op(conn: _Conn) -> list[bool]:
            if len(batch) == 1:  # the common case, by a simpler statement
                rows = [await conn.fetchrow(self._sql.create_instance, *(column[0] for column in columns),
                                            self.clock.now_ms(), self._orch_channel)]
            else:
                rows = await conn.fetch(self._sql.create_instances, *columns, self.clock.now_ms(),
                                        self._orch_channel)
            return [bool(r["created"]) or r["held"] == p.incarnation for r, p in zip(rows, batch, strict=True)]

        return await self._one(op)

    async def start_instance(self, start: StartOrchestration, *, if_exists: IfExists = IfExists.FAIL,
                             replace_if_status_in: Collection[str] = (), idempotency_key: str | None = None,
                             key_ttl_ms: int = IDEMPOTENCY_KEY_TTL_MS,
                             messages: Sequence[tuple[OrchestratorMessage, int | None]] = ()) -> StartOutcome:
        """One transaction: claim the idempotency key, then create, keep or replace the instance."""
        s = self.schema
        iid = start.instance_id
        # Made once per call: a retry (after a reply lost once the server committed) that finds
        # the row holding it knows the row is its own first attempt's (as in create_instance).
        incarnation = uuid.uuid4().hex
        payload = encode_message(start)
        also = [(m.instance_id, encode_message(m), visible_at or 0) for m, visible_at in messages]
        collect = idempotency_key is not None and self._start_key_gc_due()

        async def op(conn: _Conn) -> StartOutcome:
            now = self.clock.now_ms()
            if idempotency_key is not None:
                if collect:
                    await conn.execute(
                        f"DELETE FROM {s}.start_keys WHERE idempotency_key IN (SELECT idempotency_key "
                        f"FROM {s}.start_keys WHERE created_at < $1 LIMIT 1000 FOR UPDATE SKIP LOCKED)",
                        now - key_ttl_ms)
                # The key row is the lock of every start with this key: a concurrent insert of the
                # same key waits here until this transaction ends, then finds it (or, rolled back
                # or deleted, takes it). An expired row is taken over.
                claimed = await conn.fetchval(
                    f"INSERT INTO {s}.start_keys AS k (idempotency_key, instance_id, created_at) "
                    "VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO UPDATE SET instance_id = "
                    "EXCLUDED.instance_id, created_at = EXCLUDED.created_at WHERE k.created_at < $4 RETURNING true",
                    idempotency_key, iid, now, now - key_ttl_ms)
                if not claimed:
                    recorded = await conn.fetchval(
                        f"SELECT instance_id FROM {s}.start_keys WHERE idempotency_key = $1", idempotency_key)
                    return StartOutcome(recorded, created=False, by_key=True)
            replaced: list[str] = []
            # Twice at most: a start of the same id (without this key) may create the row between
            # this look and the insert; the insert then finds it, and the policy applies to it.
            for _ in range(2):
                row = await conn.fetchrow(
                    f"SELECT {_INSTANCE_COLS} FROM {s}.instances WHERE instance_id = $1 FOR UPDATE", iid)
                if row is not None:
                    if row["incarnation"] == incarnation:
                        return StartOutcome(iid, created=True)  # this call's first attempt committed
                    record = _record(row)
                    if if_exists is not IfExists.REPLACE or record.status not in replace_if_status_in:
                        if idempotency_key is not None and if_exists is not IfExists.RETURN_EXISTING:
                            # A start that fails records no key.
                            await conn.execute(f"DELETE FROM {s}.start_keys WHERE idempotency_key = $1",
                                               idempotency_key)
                        return StartOutcome(iid, created=False, existing=record)
                    replaced = await self._delete_tree(conn, iid)
                created = await conn.fetchrow(
                    self._sql.create_instance, iid, start.name, start.version, start.execution_id,
                    start.parent_instance_id, incarnation, payload, now, self._orch_channel)
                if created["created"]:
                    if start.queue is not None:
                        await self._wait_for_queue(conn, start, now)
                    if also:  # after the start (ids ascending): a turn that takes both sees the start first
                        await conn.executemany(
                            f"INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at) VALUES ($1, $2, $3)",
                            also)
                    return StartOutcome(iid, created=True, replaced=tuple(replaced))
            raise StoreError(f"instance {iid!r} was created and deleted again while this start ran",
                             fix="retry the start")

        return await self._tx(op)

    async def debounce_start(self, start: StartOrchestration, *, debounce_key: str, quiet_ms: int) -> StartOutcome:
        """One transaction that first locks the window row of (name, key), creating it if absent:
        concurrent debounced starts of one key, from any process, take turns there."""
        check_debounced_start(start, quiet_ms)
        s = self.schema
        # Made once per call: a retry after a reply lost once the server committed finds its own row.
        incarnation = uuid.uuid4().hex

        async def op(conn: _Conn) -> StartOutcome:
            now = self.clock.now_ms()
            due = now + quiet_ms
            # INSERT ... ON CONFLICT DO UPDATE locks the row whether it inserts or finds it; a
            # concurrent first insert of the same key waits for this transaction, then sees its row.
            # ('', 0) is "no window yet".
            window = await conn.fetchrow(
                f"INSERT INTO {s}.debounce_windows AS d (name, debounce_key, instance_id, message_id) "
                "VALUES ($1, $2, '', 0) ON CONFLICT (name, debounce_key) DO UPDATE SET message_id = d.message_id "
                "RETURNING d.instance_id, d.message_id", start.name, debounce_key)
            held_id = window["instance_id"]
            if held_id:
                # Open while its start was never fetched; a fetch that locked the row first has
                # raised its delivery count, and this update then finds nothing (the window closed).
                joined = await conn.fetchval(
                    f"UPDATE {s}.orchestrator_queue SET message = $1, visible_at = $2 "
                    "WHERE id = $3 AND instance_id = $4 AND dequeue_count = 0 RETURNING true",
                    encode_message(dataclasses.replace(start, instance_id=held_id)), due, window["message_id"],
                    held_id)
                if joined:
                    await conn.execute("SELECT pg_notify($1, '')", self._orch_channel)  # dispatchers re-read the due time
                    return StartOutcome(held_id, created=False, debounced=True)
            iid = start.instance_id
            created = await conn.fetchval(
                f"INSERT INTO {s}.instances(instance_id, name, version, execution_id, status, created_at, updated_at, "
                "parent_instance_id, incarnation) VALUES ($1, $2, $3, $4, 'Pending', $5, $5, $6, $7) "
                "ON CONFLICT (instance_id) DO NOTHING RETURNING true",
                iid, start.name, start.version, start.execution_id, now, start.parent_instance_id, incarnation)
            if not created:
                row = await conn.fetchrow(f"SELECT {_INSTANCE_COLS} FROM {s}.instances WHERE instance_id = $1", iid)
                if row is None:
                    raise StoreError(f"instance {iid!r} was deleted while this start ran", fix="retry the start")
                if row["incarnation"] == incarnation:
                    return StartOutcome(iid, created=True)  # this call's first attempt committed
                return StartOutcome(iid, created=False, existing=_record(row))
            qid = await conn.fetchval(
                f"INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at) VALUES ($1, $2, $3) RETURNING id",
                iid, encode_message(start), due)
            await conn.execute(
                f"UPDATE {s}.debounce_windows SET instance_id = $3, message_id = $4 WHERE name = $1 AND debounce_key = $2",
                start.name, debounce_key, iid, qid)
            await conn.execute("SELECT pg_notify($1, '')", self._orch_channel)
            return StartOutcome(iid, created=True)

        return await self._tx(op)

    async def _wait_for_queue(self, conn: _Conn, start: StartOrchestration, now: int) -> None:
        """Make the instance just created wait for its queue: its start held back, a lock that never lapses."""
        s = self.schema
        await conn.execute(
            f"WITH i AS (UPDATE {s}.instances SET queue = $2, ckey = $3, priority = $4, gate = 1 "
            "WHERE instance_id = $1 RETURNING 1), "
            f"l AS (INSERT INTO {s}.instance_locks(instance_id, lock_token, locked_until) VALUES ($1, $5, $6) "
            "ON CONFLICT (instance_id) DO UPDATE SET lock_token = EXCLUDED.lock_token, "
            "locked_until = EXCLUDED.locked_until RETURNING 1) "
            f"UPDATE {s}.orchestrator_queue SET visible_at = $7 WHERE instance_id = $1",
            start.instance_id, start.queue, start.concurrency_key, start.priority or 0, WAITING_LOCK_TOKEN,
            WAITING_LOCK_UNTIL, now + WAITING_OFFSET_MS)

    def _start_key_gc_due(self) -> bool:
        """Whether this start also deletes expired idempotency keys (once a minute per provider)."""
        now = self.clock.monotonic()
        if now < self._next_start_key_gc:
            return False
        self._next_start_key_gc = now + _REQUEST_KEY_GC_INTERVAL
        return True

    async def _delete_tree(self, conn: _Conn, instance_id: str) -> list[str]:
        """In ``conn``'s transaction: delete an instance and its descendants with everything they
        own, and tell the processes waiting on them; the ids deleted (it first)."""
        s = self.schema
        rows = await conn.fetch(
            f"WITH RECURSIVE tree(id) AS (SELECT $1::text UNION SELECT i.instance_id FROM {s}.instances i "
            "JOIN tree t ON i.parent_instance_id = t.id) SELECT id FROM tree", instance_id)
        doomed = [r[0] for r in rows]
        for table in ("instances", "history", "orchestrator_queue", "instance_locks", "worker_queue",
                      "activity_heartbeats"):
            await conn.execute(f"DELETE FROM {s}.{table} WHERE instance_id = ANY($1::text[])", doomed)
        for iid in doomed:
            await conn.execute("SELECT pg_notify($1, $2)", self._done_channel, iid)
        return doomed

    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None,
                   set_status: str | None = None) -> InstanceRecord | None:
        key = uuid.uuid4().hex  # once per call; see _remember
        payload = encode_message(message)
        statuses = None if only_if_status_in is None else sorted(only_if_status_in)

        async def op(conn: _Conn) -> InstanceRecord | None:
            # One statement: a retry after a lost reply finds the key its first attempt
            # stored with the message, enqueues nothing and returns what that attempt saw.
            row = await conn.fetchrow(self._sql.send, key, message.instance_id, statuses, payload,
                                      self.clock.now_ms(), self._key_gc_due(), _REQUEST_KEY_TTL_MS,
                                      self._orch_channel, set_status)
            if row["prior"] is not None:
                return _record_from_outcome(row["prior"])  # the first attempt enqueued it; not again
            return _record(row) if row["instance_id"] is not None else None

        return await self._one(op)

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        row = await self._one(lambda conn: conn.fetchrow(
            f"SELECT {_INSTANCE_COLS} FROM {self.schema}.instances WHERE instance_id=$1", instance_id))
        return _record(row) if row else None

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        s = self.schema
        rows = await self._one(lambda conn: conn.fetch(
            f"SELECT event FROM {s}.history WHERE instance_id = $1::text AND execution_id = "
            f"COALESCE($2::bigint, (SELECT execution_id FROM {s}.instances WHERE instance_id = $1::text)) "
            "ORDER BY event_id", instance_id, execution_id))
        return [decode_event(r[0], instance_id=instance_id) for r in rows]

    async def list_executions(self, instance_id: str) -> list[int]:
        rows = await self._one(lambda conn: conn.fetch(
            f"SELECT DISTINCT execution_id FROM {self.schema}.history WHERE instance_id=$1 ORDER BY execution_id",
            instance_id))
        return [r[0] for r in rows]

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceRecord]:
        rows = await self._one(lambda conn: conn.fetch(
            f"SELECT {_INSTANCE_COLS} FROM {self.schema}.instances WHERE ($1::text IS NULL OR status=$1) "
            "AND ($2::text IS NULL OR name=$2) ORDER BY created_at DESC, instance_id COLLATE \"C\" DESC LIMIT $3",
            status, name, limit))
        return [_record(r) for r in rows]

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        sql, args = listing_sql(self.schema, _INSTANCE_COLS, query, check_query(query))
        rows = await self._one(lambda conn: conn.fetch(sql, *args))
        return page_of([_record(r) for r in rows], query.limit)

    async def overview(self, since_ms: int, *, finished_statuses: Collection[str] = ("Completed", "Failed"),
                       failed_status: str = "Failed",
                       active_statuses: Collection[str] = ("Pending", "Running")) -> StoreOverview:
        parts = await self._tx(lambda conn: overview_parts(conn, self.schema, since_ms, finished_statuses,
                                                           failed_status))
        return make_overview(*parts, await self.queue_depths(active_statuses=active_statuses))

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
            doomed = await self._delete_tree(conn, instance_id)
            await self._remember(conn, key, orjson.dumps(doomed))
            return doomed

        return await self._tx(op)

    # -- orchestration dispatcher --------------------------------------------------

    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float, *,
                                        queues: Mapping[str, QueueOptions] | None = None,
                                        live_statuses: Collection[str] = ()) -> FetchResult:
        lock_ms = int(lock_timeout * 1000)
        if queues:
            await self._admit_waiting(queues, live_statuses)

        async def op(conn: _Conn) -> list[asyncpg.Record]:
            now = self.clock.now_ms()
            rows: list[asyncpg.Record] = await conn.fetch(self._sql.fetch_items, now, max_items * 8, max_items,
                                                          now + lock_ms, self._sql.fetch_key)
            return rows

        rows = await self._one(op)
        if not rows or rows[0]["o_instance_id"] is None:
            due = rows[0]["o_next_due"] if rows else None
            return FetchResult([], due if due is None or due < WAITING_OFFSET_MS else None)
        return FetchResult(await self._locked_items(rows))

    async def _locked_items(self, rows: Sequence[asyncpg.Record]) -> list[OrchestrationItem]:
        """The items of rows shaped as ``fetch_items_m5`` returns them (unreadable messages are dropped)."""
        items, unreadable = [], []
        for row in rows:
            iid = row["o_instance_id"]
            messages = []
            for queue_id, raw in zip(row["o_message_ids"] or (), row["o_messages"] or ()):
                try:
                    messages.append(QueuedMessage(queue_id, decode_message(raw)))
                except ValueError:
                    _log.error("instance %r: dropping unreadable queue message %s", iid, queue_id)
                    unreadable.append(queue_id)
            record = _fetched_record(row)
            items.append(OrchestrationItem(iid, row["o_lock_token"], messages, record,
                                           row["o_history_len"] if record is not None else 0,
                                           row["o_dequeues"] or 0))
        if unreadable:  # rare: one more statement
            await self._one(lambda conn: conn.execute(
                f"DELETE FROM {self.schema}.orchestrator_queue WHERE id = ANY($1::bigint[])", unreadable))
        return items

    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        s = self.schema
        rows = await self._one(lambda conn: conn.fetch(
            f"SELECT h.instance_id, h.event FROM {s}.history h JOIN unnest($1::text[], $2::bigint[]) AS k(i, e) "
            "ON h.instance_id = k.i AND h.execution_id = k.e ORDER BY h.instance_id, h.event_id",
            [k[0] for k in keys], [k[1] for k in keys]))
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

    async def commit_turns(self, commits: Sequence[TurnCommit], *, lease: LeaseOffer | None = None) -> list[bool]:
        """Commit the batch in one statement (``commit_turns_m5``).

        A turn whose values cannot be encoded is refused without being sent. If the
        statement fails for a reason other than the connection (a value the server
        refuses, such as a NUL character in a text column), nothing of it was committed:
        each turn is then committed by itself, so only the turn at fault is refused.
        """
        results = [False] * len(commits)
        batch: list[tuple[int, dict[str, list[Any]]]] = []
        seen: set[str] = set()
        for n, c in enumerate(commits):
            c.leased = []
            if c.instance_id in seen:
                continue  # the first commit of an instance releases its lock: this one has none
            seen.add(c.instance_id)
            try:
                batch.append((n, _turn_rows(c, len(batch) + 1)))
            except Exception as exc:  # noqa: BLE001 - a value that cannot be encoded fails its turn only
                self._refuse(c, exc)
        if not batch:
            return results
        try:
            committed = await self._commit_rows([rows for _, rows in batch], lease)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the server refused a value: find the turn at fault
            if len(batch) == 1:
                self._refuse(commits[batch[0][0]], exc)
                return results
            for n, _ in batch:
                try:
                    results[n] = (await self._commit_rows([_turn_rows(commits[n], 1)]))[0][0]
                except StoreError:
                    raise
                except Exception as single:  # noqa: BLE001 - this turn's content
                    self._refuse(commits[n], single)
            return results
        held, leases = committed
        by_instance = {commits[n].instance_id: commits[n] for n, _ in batch}
        for lease_ in leases:
            by_instance[lease_.work.instance_id].leased.append(lease_)
        for (n, _), ok in zip(batch, held, strict=True):
            results[n] = ok
        return results

    async def _commit_rows(self, turns: Sequence[dict[str, list[Any]]],
                           lease: LeaseOffer | None = None) -> tuple[list[bool], list[WorkLease]]:
        """Commit turns given as rows of ``commit_turns_m5``'s arrays (turn numbers 1..len); with
        ``lease``, lease calls they enqueue in the same statement (``lease_committed_m12``)."""
        arrays = [[v for rows in turns for v in rows[name]] for name in _COMMIT_ARRAYS]

        async def op(conn: _Conn) -> tuple[list[bool], list[WorkLease]]:
            now = self.clock.now_ms()
            args = (now, self._orch_channel, self._work_channel, self._done_channel, *arrays)
            if lease is None:
                return await conn.fetchval(self._sql.commit_turns, *args), []
            rows = await conn.fetch(self._sql.commit_and_lease, *args, lease.max_items,
                                    now + int(lease.lock_timeout * 1000), sorted(lease.names),
                                    sorted(lease.limited_queues))
            work = [(r["o_token"], decode_message(r["o_message"])) for r in rows if r["o_token"] is not None]
            return rows[0]["ok"], [WorkLease(token, w, 1) for token, w in work if isinstance(w, ActivityWork)]

        return await self._one(op)

    @staticmethod
    def _refuse(c: TurnCommit, exc: BaseException) -> None:
        _log.warning("instance %r: the store refused the turn (%s: %s)", c.instance_id, type(exc).__name__, exc)
        c.refused = f"{type(exc).__name__}: {exc}"

    async def renew_orchestration_items(self, locks: Sequence[tuple[str, str]], lock_timeout: float) -> list[bool]:
        s = self.schema
        ids = [i for i, _ in locks]
        tokens = [t for _, t in locks]

        async def op(conn: _Conn) -> list[bool]:
            rows = await conn.fetch(
                f"{_NO_FLUSH}UPDATE {s}.instance_locks l SET locked_until = $3 "
                "FROM unnest($1::text[], $2::text[]) AS c(i, t) "
                "WHERE l.instance_id = c.i AND l.lock_token = c.t "
                "RETURNING l.instance_id, (SELECT off FROM no_flush)",
                ids, tokens, self.clock.now_ms() + int(lock_timeout * 1000))
            held = {r[0] for r in rows}
            return [i in held for i in ids]

        return await self._one(op) if locks else []

    async def abandon_orchestration_item(self, instance_id: str, lock_token: str, delay: float) -> None:
        await self._one(lambda conn: conn.execute(
            self._sql.abandon_orchestration_item, instance_id, lock_token,
            self.clock.now_ms() + int(delay * 1000), self._orch_channel))

    # -- activity workers ----------------------------------------------------------

    async def fetch_work_items(self, max_items: int, lock_timeout: float, *,
                               known_names: Collection[str] | None = None,
                               foreign_delay: float = 1.0,
                               queues: Mapping[str, QueueOptions] | None = None) -> list[WorkLease]:
        s = self.schema
        names = None if known_names is None else sorted(known_names)
        limited = limited_queues(queues)
        lock_ms, foreign_ms = int(lock_timeout * 1000), int(foreign_delay * 1000)

        async def op(conn: _Conn) -> list[asyncpg.Record]:
            now = self.clock.now_ms()
            rows: list[asyncpg.Record] = await conn.fetch(
                f"{_NO_FLUSH}UPDATE {s}.worker_queue w SET lock_token = md5(random()::text || w.id::text), "
                "locked_until = $5::bigint + $2, dequeue_count = w.dequeue_count + 1 "
                f"WHERE w.id IN (SELECT id FROM {s}.worker_queue WHERE visible_at <= $5 "
                "AND (lock_token IS NULL OR locked_until <= $5) AND NOT cancelled "
                "AND ($3::text[] IS NULL OR name = ANY($3::text[]) OR visible_at <= $5::bigint - $4) "
                "ORDER BY priority DESC, id LIMIT $1 FOR UPDATE SKIP LOCKED) "
                "RETURNING w.id, w.lock_token, w.message, w.dequeue_count, (SELECT off FROM no_flush)",
                max_items, lock_ms, names, foreign_ms, now)
            return rows

        async def limited_op(conn: _Conn) -> list[asyncpg.Record]:
            return await self._lease_limited(conn, max_items, lock_ms, names, foreign_ms, limited)

        rows = await (self._tx(limited_op) if limited else self._one(op))
        leases, unreadable = [], []
        for r in sorted(rows, key=lambda r: r["id"]):
            try:
                leases.append(WorkLease(r["lock_token"], decode_message(r["message"]), r["dequeue_count"]))
            except ValueError:
                _log.error("dropping unreadable activity message %s", r["id"])
                unreadable.append(r["id"])
        if unreadable:  # rare: one more statement
            await self._one(lambda conn: conn.execute(
                f"DELETE FROM {s}.worker_queue WHERE id = ANY($1::bigint[])", unreadable))
        return leases

    async def _lease_limited(self, conn: _Conn, max_items: int, lock_ms: int, names: list[str] | None,
                             foreign_ms: int, limited: Mapping[str, QueueOptions]) -> list[asyncpg.Record]:
        """The fetch under queue limits, in one transaction: count, then lease what the slots admit.

        A transaction-level advisory lock per limited queue (taken in name order, so two
        fetches never wait on each other in a cycle) serialises the fetches that count
        that queue's slots, in every process: the count each one reads is the count there is.
        """
        s = self.schema
        now = self.clock.now_ms()
        names_of_limited = sorted(limited)
        await self._lock_queues(conn, names_of_limited, "calls")
        running = await conn.fetch(
            f"SELECT queue, ckey, count(*)::int AS n FROM {s}.worker_queue WHERE queue = ANY($1::text[]) "
            "AND locked_until > $2 AND lock_token IS NOT NULL GROUP BY queue, ckey", names_of_limited, now)
        rated = {q: o.rate_limit.per_ms for q, o in limited.items() if o.rate_limit is not None}
        started: dict[str, int] = {}
        if rated:
            counted = await conn.fetch(
                self._sql.rate_counts, list(rated), [now - per for per in rated.values()], _CALLS)
            started = {r["q"]: r["n"] for r in counted}
        slots = QueueSlots(limited, [(r["queue"], r["ckey"], r["n"]) for r in running], started)
        leased: list[asyncpg.Record] = []
        while len(leased) < max_items:
            rows = await conn.fetch(
                f"SELECT id, queue, ckey FROM {s}.worker_queue WHERE visible_at <= $2 "
                "AND (lock_token IS NULL OR locked_until <= $2) AND NOT cancelled "
                "AND ($3::text[] IS NULL OR name = ANY($3::text[]) OR visible_at <= $2::bigint - $4) "
                "AND queue <> ALL($5::text[]) AND (ckey IS NULL OR (queue || chr(31) || ckey) <> ALL($6::text[])) "
                "ORDER BY priority DESC, id LIMIT $1 FOR UPDATE SKIP LOCKED",
                max_items - len(leased), now, names, foreign_ms, slots.full_queues(), slots.full_keys())
            admitted, rate_logged = [], []
            for r in rows:
                if slots.admits(r["queue"], r["ckey"]):
                    admitted.append(r["id"])
                    if slots.take(r["queue"], r["ckey"]):
                        rate_logged.append(r["queue"])
            if admitted:
                leased += await conn.fetch(
                    f"UPDATE {s}.worker_queue w SET lock_token = md5(random()::text || w.id::text), "
                    "locked_until = $2::bigint + $3, dequeue_count = w.dequeue_count + 1 WHERE w.id = ANY($1::bigint[]) "
                    "RETURNING w.id, w.lock_token, w.message, w.dequeue_count", admitted, now, lock_ms)
            if rate_logged:
                await conn.execute(f"INSERT INTO {s}.queue_leases(kind, queue, leased_at) "
                                   "SELECT $3, q, $2 FROM unnest($1::text[]) q", rate_logged, now, _CALLS)
            if not rows:
                break
        return leased

    async def _lock_queues(self, conn: _Conn, queues: list[str], kind: str) -> None:
        """Serialise, with every other process, what this transaction counts and takes of ``queues``
        (their ``kind`` of slots); locks taken in name order, so no two transactions wait in a cycle.
        Leases and admissions need not survive a server crash (a lost one is taken again)."""
        await conn.execute("SELECT set_config('synchronous_commit', 'off', true), "
                           "pg_advisory_xact_lock(hashtextextended($1 || ':' || $3 || ':' || q, 0)) "
                           "FROM unnest($2::text[]) AS q ORDER BY q", self._sql.queue_lock, sorted(queues), kind)

    async def _admit_waiting(self, queues: Mapping[str, QueueOptions], live_statuses: Collection[str]) -> None:
        """Admit the instances waiting for each queue of ``queues`` that its limits let start now
        (see ``Provider.fetch_orchestration_items``): a look first, a transaction only if any wait."""
        s = self.schema
        names = sorted(queues)
        waiting: list[str] = [r[0] for r in await self._one(lambda conn: conn.fetch(
            f"SELECT DISTINCT queue FROM {s}.instances WHERE gate = 1 AND queue = ANY($1::text[])", names))]
        if not waiting:
            return

        async def op(conn: _Conn) -> None:
            now = self.clock.now_ms()
            await self._lock_queues(conn, waiting, "instances")
            for queue in sorted(waiting):
                options = queues[queue]
                await conn.execute(f"UPDATE {s}.instances SET gate = 0 WHERE queue = $1 AND gate = 2 "
                                   "AND NOT (status = ANY($2::text[]))", queue, sorted(live_statuses))
                limits = {queue: options} if options.limited else {}
                running = await conn.fetch(f"SELECT ckey, count(*)::int AS n FROM {s}.instances "
                                           "WHERE queue = $1 AND gate = 2 GROUP BY ckey", queue)
                started: dict[str, int] = {}
                if options.rate_limit is not None:
                    counted = await conn.fetch(self._sql.rate_counts, [queue], [now - options.rate_limit.per_ms],
                                               _INSTANCES)
                    started = {r["q"]: r["n"] for r in counted}
                slots = QueueSlots(limits, [(queue, r["ckey"], r["n"]) for r in running], started)
                while slots.admits(queue, None):
                    rows = await conn.fetch(
                        f"SELECT instance_id, ckey FROM {s}.instances WHERE queue = $1 AND gate = 1 "
                        "AND (ckey IS NULL OR ($1 || chr(31) || ckey) <> ALL($2::text[])) "
                        "ORDER BY priority DESC, created_at, instance_id LIMIT 64", queue, slots.full_keys())
                    if not rows:
                        break
                    admitted, rated = [], 0
                    for r in rows:
                        if slots.admits(queue, r["ckey"]):
                            admitted.append(r["instance_id"])
                            rated += slots.take(queue, r["ckey"])
                    await conn.execute(
                        f"WITH a AS (UPDATE {s}.instances SET gate = 2 WHERE instance_id = ANY($1::text[]) RETURNING 1), "
                        f"l AS (DELETE FROM {s}.instance_locks WHERE instance_id = ANY($1::text[]) AND lock_token = $2 "
                        "RETURNING 1), "
                        f"r AS (INSERT INTO {s}.queue_leases(kind, queue, leased_at) "
                        "SELECT $5, $6, $3 FROM generate_series(1, $7) RETURNING 1) "
                        f"UPDATE {s}.orchestrator_queue SET visible_at = visible_at - $4 "
                        "WHERE instance_id = ANY($1::text[]) AND visible_at >= $4",
                        admitted, WAITING_LOCK_TOKEN, now, WAITING_OFFSET_MS, _INSTANCES, queue, rated)

        await self._tx(op)

    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None,
                                  lock: LockOffer | None = None) -> list[OrchestrationItem]:
        # Only results whose lease still exists count: otherwise the instance was purged
        # (perhaps created again under the same id), or another worker took the call over.
        tokens = [d.lock_token for d in completions]
        targets = [d.result.instance_id for d in completions]
        messages = [encode_message(d.result) for d in completions]
        statuses = None if only_if_status_in is None else sorted(only_if_status_in)
        forget = [d.forget_heartbeat for d in completions]
        args = (tokens, targets, messages, statuses, self._orch_channel, [k.instance_id if k else None for k in forget],
                [k.execution_id if k else None for k in forget], [k.event_id if k else None for k in forget])
        if lock is None:
            await self._one(lambda conn: conn.execute(self._sql.complete_work_items, *args))
            return []
        now = self.clock.now_ms()
        rows = await self._one(lambda conn: conn.fetch(
            self._sql.complete_and_lock, *args, now, lock.max_items, now + int(lock.lock_timeout * 1000),
            sorted(lock.names), self._sql.fetch_key))
        return await self._locked_items(rows)

    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        await self._one(lambda conn: conn.execute(
            self._sql.abandon_work_item, lock_token, self.clock.now_ms() + int(delay * 1000), self._work_channel))

    async def renew_work_item(self, lock_token: str, lock_timeout: float, *,
                              only_if_status_in: Collection[str] | None = None,
                              only_if_execution: int | None = None) -> bool:
        s = self.schema

        async def op(conn: _Conn) -> bool:
            renewed = await conn.fetchval(
                f"{_NO_FLUSH}UPDATE {s}.worker_queue w SET locked_until = $2 FROM {s}.instances i "
                "WHERE w.lock_token=$1 AND NOT w.cancelled AND i.instance_id = w.instance_id "
                "AND ($3::text[] IS NULL OR i.status = ANY($3::text[])) AND ($4::bigint IS NULL OR i.execution_id = $4) "
                "RETURNING (SELECT off FROM no_flush) IS NOT NULL",
                lock_token, self.clock.now_ms() + int(lock_timeout * 1000),
                None if only_if_status_in is None else sorted(only_if_status_in), only_if_execution)
            return bool(renewed)

        return await self._one(op)

    async def record_heartbeats(self, beats: Sequence[HeartbeatWrite], *,
                                only_if_status_in: Collection[str] | None = None) -> list[bool]:
        if not beats:
            return []
        lock_ms = [None if b.lock_timeout is None else int(b.lock_timeout * 1000) for b in beats]
        statuses = None if only_if_status_in is None else sorted(only_if_status_in)

        async def op(conn: _Conn) -> list[str]:
            rows = await conn.fetch(
                self._sql.record_heartbeats, [b.lock_token for b in beats], [b.call.instance_id for b in beats],
                [b.call.execution_id for b in beats], [b.call.event_id for b in beats], [b.event_id for b in beats],
                [b.details for b in beats], lock_ms, statuses, self.clock.now_ms())
            return [r[0] for r in rows]

        held = set(await self._one(op))
        return [b.lock_token in held for b in beats]

    async def read_heartbeat(self, call: CallKey) -> HeartbeatRecord | None:
        row = await self._one(lambda conn: conn.fetchrow(
            f"SELECT details, event_id, updated_at FROM {self.schema}.activity_heartbeats "
            "WHERE instance_id=$1 AND execution_id=$2 AND call_id=$3",
            call.instance_id, call.execution_id, call.event_id))
        return None if row is None else HeartbeatRecord(row["details"], row["event_id"], row["updated_at"])

    # -- schedules -------------------------------------------------------------------

    async def put_schedule(self, record: ScheduleRecord, *, replace: bool = False) -> ScheduleRecord | None:
        s = self.schema

        async def op(conn: _Conn) -> ScheduleRecord | None:
            now = self.clock.now_ms()
            # ON CONFLICT: concurrent puts of one id (every process at start) never fail on the key.
            row = await conn.fetchrow(
                f"INSERT INTO {s}.schedules AS t ({_SCHEDULE_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,NULL,NULL,$9,$9,NULL) "
                "ON CONFLICT (schedule_id) DO UPDATE SET cron = EXCLUDED.cron, orchestration = EXCLUDED.orchestration, "
                "input = EXCLUDED.input, version = EXCLUDED.version, catch_up = EXCLUDED.catch_up, "
                "next_tick = CASE WHEN t.cron = EXCLUDED.cron THEN t.next_tick ELSE EXCLUDED.next_tick END, "
                f"updated_at = EXCLUDED.updated_at WHERE $10::boolean RETURNING {_SCHEDULE_COLS}",
                record.schedule_id, record.cron, record.orchestration, record.input, record.version,
                record.catch_up, record.paused, record.next_tick_ms, now, replace)
            return None if row is None else _schedule(row)

        return await self._tx(op)

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        row = await self._one(lambda conn: conn.fetchrow(
            f"SELECT {_SCHEDULE_COLS} FROM {self.schema}.schedules WHERE schedule_id = $1", schedule_id))
        return None if row is None else _schedule(row)

    async def list_schedules(self) -> list[ScheduleRecord]:
        rows = await self._one(lambda conn: conn.fetch(
            f"SELECT {_SCHEDULE_COLS} FROM {self.schema}.schedules ORDER BY schedule_id COLLATE \"C\""))
        return [_schedule(r) for r in rows]

    async def set_schedule_paused(self, schedule_id: str, paused: bool, *,
                                  next_tick_ms: int | None = None) -> ScheduleRecord | None:
        row = await self._one(lambda conn: conn.fetchrow(
            f"UPDATE {self.schema}.schedules SET paused = $2, next_tick = COALESCE($3::bigint, next_tick), "
            f"updated_at = $4 WHERE schedule_id = $1 RETURNING {_SCHEDULE_COLS}",
            schedule_id, paused, next_tick_ms, self.clock.now_ms()))
        return None if row is None else _schedule(row)

    async def delete_schedule(self, schedule_id: str) -> bool:
        deleted = await self._one(lambda conn: conn.fetchval(
            f"DELETE FROM {self.schema}.schedules WHERE schedule_id = $1 RETURNING true", schedule_id))
        return bool(deleted)

    async def fire_schedule(self, fire: ScheduleFire) -> bool:
        s = self.schema
        starts = [(st, uuid.uuid4().hex, encode_message(st)) for st in fire.starts]

        async def op(conn: _Conn) -> bool:
            now = self.clock.now_ms()
            # SKIP LOCKED: a pass of another process holds the row; it moves the tick, this one
            # changes nothing. (A retry after a reply lost once the server committed finds the
            # tick moved and changes nothing either: its instances were created once.)
            moved = await conn.fetchval(
                f"UPDATE {s}.schedules SET next_tick = $1, updated_at = $2 WHERE schedule_id = "
                f"(SELECT schedule_id FROM {s}.schedules WHERE schedule_id = $3 AND NOT paused AND next_tick = $4 "
                "FOR UPDATE SKIP LOCKED) RETURNING true",
                fire.next_tick_ms, now, fire.schedule_id, fire.expected_next_tick_ms)
            if not moved:
                return False
            for start, incarnation, payload in starts:
                await conn.fetchrow(self._sql.create_instance, start.instance_id, start.name, start.version,
                                    start.execution_id, start.parent_instance_id, incarnation, payload, now,
                                    self._orch_channel)
            if starts:
                await conn.execute(f"UPDATE {s}.schedules SET last_tick = $2, last_instance_id = $3 "
                                   "WHERE schedule_id = $1", fire.schedule_id, fire.last_tick_ms,
                                   starts[-1][0].instance_id)
            return True

        return await self._tx(op)

    async def confirm_schedules(self, schedule_ids: Collection[str]) -> None:
        ids = list(schedule_ids)
        if ids:
            await self._one(lambda conn: conn.execute(
                f"UPDATE {self.schema}.schedules SET registered_at = $2 WHERE schedule_id = ANY($1::text[])",
                ids, self.clock.now_ms()))

    async def queue_depths(self, *, active_statuses: Collection[str] = ("Pending", "Running")) -> QueueDepths:
        s = self.schema

        async def op(conn: _Conn) -> QueueDepths:
            row = await conn.fetchrow(
                f"SELECT (SELECT COUNT(*) FROM {s}.orchestrator_queue WHERE visible_at <= $1) AS due, "
                f"(SELECT COUNT(*) FROM {s}.orchestrator_queue WHERE visible_at > $1 AND visible_at < $3) AS later, "
                f"(SELECT COUNT(*) FROM {s}.worker_queue) AS worker, "
                f"(SELECT COUNT(*) FROM {s}.instances WHERE status = ANY($2::text[])) AS active, "
                f"(SELECT COUNT(*) FROM {s}.instances WHERE gate = 1) AS waiting",
                self.clock.now_ms(), sorted(active_statuses), WAITING_OFFSET_MS)
            return QueueDepths(row["due"], row["later"], row["worker"], row["active"], row["waiting"])

        return await self._one(op)

    async def queue_stats(self, *, live_statuses: Collection[str] = ()) -> list[QueueStats]:
        s = self.schema

        async def op(conn: _Conn) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                f"SELECT queue, sum(w)::int AS w, sum(r)::int AS r, sum(q)::int AS q, sum(l)::int AS l FROM ("
                f"SELECT queue, (gate = 1)::int AS w, (gate = 2 AND status = ANY($2::text[]))::int AS r, 0 AS q, 0 AS l "
                f"FROM {s}.instances WHERE gate > 0 "
                "UNION ALL SELECT queue, 0, 0, (lock_token IS NULL OR locked_until <= $1)::int, "
                f"(lock_token IS NOT NULL AND locked_until > $1)::int FROM {s}.worker_queue) x "
                "GROUP BY queue ORDER BY queue", self.clock.now_ms(), sorted(live_statuses))
            return rows

        return [QueueStats(r["queue"], r["w"], r["r"], r["q"], r["l"]) for r in await self._one(op)
                if r["w"] or r["r"] or r["q"] or r["l"]]

    # -- helpers -------------------------------------------------------------------

    def _key_gc_due(self) -> bool:
        """Whether this call should also delete expired request keys (once a minute per provider)."""
        now = self.clock.monotonic()
        if now < self._next_key_gc:
            return False
        self._next_key_gc = now + _REQUEST_KEY_GC_INTERVAL
        return True

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

    async def drop_schema(self) -> None:
        """Delete this provider's schema and everything in it (tests and teardown)."""
        await self._one(lambda conn: conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))


class _Statements:
    """The store's statements that fold several writes (and their NOTIFY) into one round trip."""

    def __init__(self, s: str) -> None:
        args = ", ".join(f"${n}" for n in range(1, 5 + len(_COMMIT_ARRAYS)))
        self.commit_turns = f"SELECT {s}.commit_turns_m5({args})"
        # The advisory-lock namespace of this schema's fetches (see fetch_items_m5).
        self.fetch_key = zlib.crc32(f"duroxide-fetch:{s}".encode()) - 2**31
        self.fetch_items = f"SELECT * FROM {s}.fetch_items_m5($1, $2, $3, $4, $5)"
        # A commit that leases calls with it (LeaseOffer): commit_turns_m5 runs first (the lease
        # takes its result), in a subquery evaluated once (OFFSET 0 keeps it from being merged).
        n = 5 + len(_COMMIT_ARRAYS)
        a = {name: f"${i}" for i, name in enumerate(_COMMIT_ARRAYS, start=5)}
        self.commit_and_lease = (
            f"SELECT c.ok, l.o_token, l.o_message FROM (SELECT {s}.commit_turns_m5({args}) AS ok OFFSET 0) c "
            f"LEFT JOIN LATERAL {s}.lease_committed_m12(c.ok, {a['a_turn']}, {a['a_instance']}, "
            f"{a['a_execution']}, {a['a_event_id']}, ${n}, ${n + 1}, ${n + 2}, ${n + 3}) l ON true")
        self.complete_and_lock = (f"SELECT * FROM {s}.complete_work_m12("
                                  + ", ".join(f"${i}" for i in range(1, 14)) + ")")
        # Per rate-limited queue ($1, with its window's start $2), the leases or admissions of one
        # kind ($3) in the window; older ones are deleted. (The count's snapshot still holds the
        # deleted rows, which its own condition leaves out.)
        self.rate_counts = (
            f"WITH gone AS (DELETE FROM {s}.queue_leases l USING unnest($1::text[], $2::bigint[]) AS r(q, since) "
            "WHERE l.kind = $3 AND l.queue = r.q AND l.leased_at <= r.since) "
            f"SELECT r.q, (SELECT count(*)::int FROM {s}.queue_leases l WHERE l.kind = $3 AND l.queue = r.q "
            "AND l.leased_at > r.since) AS n FROM unnest($1::text[], $2::bigint[]) AS r(q, since)")
        # The advisory-lock namespace of the fetches that count a queue's slots.
        self.queue_lock = f"duroxide-queue:{s}"
        # An instance row and its start message, unless the id is taken; `held` tells a
        # retry whether the taken id is its own first attempt's row.
        self.create_instance = (
            f"WITH created AS (INSERT INTO {s}.instances(instance_id, name, version, execution_id, status, "
            "created_at, updated_at, parent_instance_id, incarnation) "
            "VALUES ($1::text, $2::text, $3::text, $4::bigint, 'Pending', $8::bigint, $8::bigint, $5::text, $6::text) "
            "ON CONFLICT (instance_id) DO NOTHING RETURNING 1), "
            f"queued AS (INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at) "
            "SELECT $1::text, $7::bytea, 0 FROM created RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM created) AS created, "
            f"(SELECT incarnation FROM {s}.instances WHERE instance_id = $1::text) AS held, "
            "(SELECT pg_notify($9::text, '') FROM queued) AS notified")
        # The same for many starts (ids distinct).
        self.create_instances = (
            "WITH input AS MATERIALIZED (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], "
            "$5::text[], $6::text[], $7::bytea[]) WITH ORDINALITY "
            "AS r(instance_id, name, version, execution_id, parent, incarnation, message, n)), "
            f"created AS (INSERT INTO {s}.instances(instance_id, name, version, execution_id, status, "
            "created_at, updated_at, parent_instance_id, incarnation) "
            "SELECT r.instance_id, r.name, r.version, r.execution_id, 'Pending', $8::bigint, $8::bigint, r.parent, "
            "r.incarnation FROM input r ORDER BY r.n "
            "ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id), "
            f"queued AS (INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at) "
            "SELECT r.instance_id, r.message, 0 FROM input r "
            "WHERE r.instance_id IN (SELECT c.instance_id FROM created c) ORDER BY r.n RETURNING 1) "
            "SELECT r.instance_id IN (SELECT c.instance_id FROM created c) AS created, "
            f"(SELECT i.incarnation FROM {s}.instances i WHERE i.instance_id = r.instance_id) AS held, "
            "(SELECT pg_notify($9::text, '') FROM queued LIMIT 1) AS notified "
            "FROM input r ORDER BY r.n")
        # The message if the instance exists (and its status is listed), with the request key
        # recording what this call saw; a retry whose first attempt committed finds the key.
        # Once a minute ($6) it also deletes up to 1000 expired keys.
        self.send = (
            f"WITH prior AS (SELECT k.outcome FROM {s}.request_keys k WHERE k.request_id = $1::text), "
            f"inst AS (SELECT {_INSTANCE_COLS} FROM {s}.instances WHERE instance_id = $2::text "
            "AND NOT EXISTS (SELECT 1 FROM prior) FOR SHARE), "
            "admitted AS (SELECT * FROM inst WHERE $3::text[] IS NULL OR inst.status = ANY($3::text[])), "
            f"queued AS (INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at) "
            "SELECT $2::text, $4::bytea, 0 FROM admitted RETURNING 1), "
            f"flipped AS (UPDATE {s}.instances SET status = $9::text, updated_at = $5::bigint "
            "WHERE instance_id = $2::text AND $9::text IS NOT NULL AND EXISTS (SELECT 1 FROM admitted) RETURNING 1), "
            f"remembered AS (INSERT INTO {s}.request_keys(request_id, outcome, created_at) "
            "SELECT $1::text, convert_to(json_build_array(a.instance_id, a.name, a.version, a.execution_id, "
            "a.status, a.output, encode(a.error, 'hex'), a.custom_status, a.created_at, a.updated_at, "
            "a.parent_instance_id, a.incarnation)::text, 'UTF8'), $5::bigint FROM admitted a RETURNING 1), "
            f"expired AS (DELETE FROM {s}.request_keys WHERE $6::boolean AND request_id IN ("
            f"SELECT request_id FROM {s}.request_keys WHERE created_at < $5::bigint - $7::bigint "
            "LIMIT 1000 FOR UPDATE SKIP LOCKED)) "
            "SELECT (SELECT outcome FROM prior) AS prior, i.*, "
            "(SELECT pg_notify($8::text, '') FROM queued) AS notified "
            "FROM (VALUES (1)) AS one(x) LEFT JOIN inst i ON true")
        # Unlock and show the messages again after the delay, if the token still holds.
        self.abandon_orchestration_item = (
            f"{_NO_FLUSH}, released AS (DELETE FROM {s}.instance_locks WHERE instance_id = $1::text "
            "AND lock_token = $2::text RETURNING (SELECT off FROM no_flush)), "
            f"shown AS (UPDATE {s}.orchestrator_queue SET lock_token = NULL, "
            "visible_at = GREATEST(visible_at, $3::bigint) WHERE lock_token = $2::text "
            "AND EXISTS (SELECT 1 FROM released) RETURNING 1) "
            "SELECT (SELECT pg_notify($4::text, '') FROM released)")
        # Results whose lease still exists, for instances that exist (with a listed status).
        self.complete_work_items = (
            f"WITH done AS (DELETE FROM {s}.worker_queue WHERE lock_token = ANY($1::text[]) RETURNING lock_token), "
            "results AS (SELECT r.instance_id, r.message, r.n "
            "FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS r(token, instance_id, message, n) "
            "WHERE r.token IN (SELECT done.lock_token FROM done) "
            f"AND EXISTS (SELECT 1 FROM {s}.instances i WHERE i.instance_id = r.instance_id "
            "AND ($4::text[] IS NULL OR i.status = ANY($4::text[])))), "
            f"queued AS (INSERT INTO {s}.orchestrator_queue(instance_id, message, visible_at) "
            "SELECT results.instance_id, results.message, 0 FROM results ORDER BY results.n RETURNING 1), "
            # The heartbeat rows of calls that succeeded ($6..$8: NULL where none is to go).
            f"forgot AS (DELETE FROM {s}.activity_heartbeats h "
            "USING unnest($1::text[], $6::text[], $7::bigint[], $8::bigint[]) AS f(token, instance_id, execution_id, "
            "call_id) WHERE f.instance_id IS NOT NULL AND f.token IN (SELECT done.lock_token FROM done) "
            "AND h.instance_id = f.instance_id AND h.execution_id = f.execution_id AND h.call_id = f.call_id) "
            "SELECT (SELECT pg_notify($5::text, '') FROM queued LIMIT 1)")
        # Heartbeats of calls whose lease holds (token, call's execution current, not cancelled,
        # status listed): the row of each call is written (details kept where NULL) and, where a
        # lock timeout is given, the lease extended. The UPDATE locks the work rows first, so a
        # completion that deletes one meanwhile leaves its beat unwritten. Returns the tokens written.
        self.record_heartbeats = (
            f"{_NO_FLUSH}, beats AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], "
            "$5::bigint[], $6::text[], $7::bigint[]) WITH ORDINALITY "
            "AS b(token, instance_id, execution_id, call_id, event_id, details, lock_ms, n)), "
            f"held AS (UPDATE {s}.worker_queue w SET locked_until = CASE WHEN b.lock_ms IS NULL "
            "THEN w.locked_until ELSE $9::bigint + b.lock_ms END "
            f"FROM beats b, {s}.instances i WHERE w.lock_token = b.token AND w.instance_id = b.instance_id "
            "AND w.execution_id = b.execution_id AND w.event_id = b.event_id AND NOT w.cancelled "
            "AND i.instance_id = w.instance_id AND i.execution_id = w.execution_id "
            "AND ($8::text[] IS NULL OR i.status = ANY($8::text[])) "
            "RETURNING w.lock_token, (SELECT off FROM no_flush)), "
            f"written AS (INSERT INTO {s}.activity_heartbeats AS h "
            "(instance_id, execution_id, call_id, event_id, details, updated_at) "
            "SELECT b.instance_id, b.execution_id, b.call_id, b.event_id, b.details, $9::bigint FROM beats b "
            "WHERE b.token IN (SELECT held.lock_token FROM held) ORDER BY b.instance_id, b.execution_id, b.call_id "
            "ON CONFLICT (instance_id, execution_id, call_id) DO UPDATE SET event_id = EXCLUDED.event_id, "
            "details = COALESCE(EXCLUDED.details, h.details), updated_at = EXCLUDED.updated_at RETURNING 1) "
            "SELECT held.lock_token FROM held")
        self.abandon_work_item = (
            f"{_NO_FLUSH}, released AS (UPDATE {s}.worker_queue SET lock_token = NULL, locked_until = 0, "
            "visible_at = $2::bigint WHERE lock_token = $1::text RETURNING (SELECT off FROM no_flush)) "
            "SELECT pg_notify($3::text, '')")


def _record_from_outcome(raw: bytes) -> InstanceRecord:
    """The instance row a ``send`` saw, from its request key's outcome (a JSON array in
    ``_INSTANCE_COLS`` order, the error column hex-encoded)."""
    values = orjson.loads(raw)
    row: dict[str, Any] = dict(zip(_INSTANCE_COLS.split(", "), values, strict=True))
    row["error"] = bytes.fromhex(row["error"]) if row["error"] is not None else None
    return _record(row)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
