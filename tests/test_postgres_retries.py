"""PostgreSQL: a write retried after its commit reply was lost repeats nothing (issue 10, code review).

``PostgresProvider`` retries a transaction on a fresh connection when the old one
drops. A drop just after the server committed looks the same to the client, so
the retry must recognise its own first attempt: ``send()`` must not enqueue its
event twice, ``create_instance`` must not report ``InstanceAlreadyExistsError``
for its own insert, and ``purge`` must not report nothing purged.

The lost reply is real: the provider's test seam ``_after_commit_hook`` runs
after COMMIT succeeded on the server; the hook has the server terminate that
backend (``pg_terminate_backend`` from a second connection, waiting until it is
gone) and then reads from the dead connection, so asyncpg raises the error a
lost reply raises and the provider's own retry path runs. Each test runs in a
database of its own on the real server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from duroxide_runtime import Client, InstanceAlreadyExistsError
from duroxide_runtime.messages import ExternalEvent, StartOrchestration, decode_message
from duroxide_runtime.providers.postgres import _MIGRATIONS, PostgresProvider

from .support import own_pg_database


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A database of this test's own, dropped afterwards."""
    async with own_pg_database("dx_retries") as url:
        yield url


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresProvider]:
    provider = await PostgresProvider.new(pg_url, schema="dx")
    try:
        yield provider
    finally:
        await provider.close()


class LoseReply:
    """Installed as ``_after_commit_hook``: after the next COMMIT, the server kills the connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.armed = True
        self.seen: list[BaseException] = []

    async def __call__(self, conn: Any) -> None:
        if not self.armed:
            return
        self.armed = False
        pid = conn.get_server_pid()
        killer = await asyncpg.connect(self.url)
        try:
            # With a timeout, pg_terminate_backend waits until the backend is gone.
            assert await killer.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        finally:
            await killer.close()
        try:
            await conn.fetchval("SELECT 1")  # the committed transaction's caller reads a dead connection
        except BaseException as exc:
            self.seen.append(exc)
            raise
        raise AssertionError("the connection survived pg_terminate_backend")


async def _queue(store: PostgresProvider, instance_id: str) -> list[Any]:
    rows = await store._tx(lambda conn: conn.fetch(
        f"SELECT message FROM {store.schema}.orchestrator_queue WHERE instance_id=$1 ORDER BY id", instance_id))
    return [decode_message(r[0]) for r in rows]


def _lost(hook: LoseReply) -> None:
    assert not hook.armed and len(hook.seen) == 1, "the reply was not lost"
    assert isinstance(hook.seen[0], (asyncpg.exceptions.AdminShutdownError, asyncpg.InterfaceError,
                                     asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError, OSError)), \
        repr(hook.seen[0])


async def test_send_after_lost_reply_enqueues_the_event_once(store: PostgresProvider, pg_url: str) -> None:
    await store.create_instance(StartOrchestration(instance_id="i", name="N", input="", version=None))
    hook = LoseReply(pg_url)
    store._after_commit_hook = hook
    record = await store.send(ExternalEvent(instance_id="i", name="go", data="1"))
    _lost(hook)
    # Reported as the first attempt saw it (Pending: the event was delivered), not re-read.
    assert record is not None and record.instance_id == "i" and record.status == "Pending"
    messages = await _queue(store, "i")
    events = [m for m in messages if isinstance(m, ExternalEvent)]
    assert len(events) == 1, f"the event was enqueued {len(events)} times: {messages}"
    # A new call is a new request: it is enqueued again.
    await store.send(ExternalEvent(instance_id="i", name="go", data="2"))
    assert [m.data for m in await _queue(store, "i") if isinstance(m, ExternalEvent)] == ["1", "2"]


async def test_client_raise_event_after_lost_reply_is_delivered_once(store: PostgresProvider, pg_url: str) -> None:
    client = Client(store)
    await client.start_orchestration("j", "N", "")
    store._after_commit_hook = hook = LoseReply(pg_url)
    await client.raise_event("j", "go", "x")  # no error: delivered
    _lost(hook)
    assert len([m for m in await _queue(store, "j") if isinstance(m, ExternalEvent)]) == 1


async def test_create_instance_after_lost_reply_succeeds_once(store: PostgresProvider, pg_url: str) -> None:
    store._after_commit_hook = hook = LoseReply(pg_url)
    await store.create_instance(StartOrchestration(instance_id="new", name="N", input="in", version=None))  # no AlreadyExists
    _lost(hook)
    assert [type(m).__name__ for m in await _queue(store, "new")] == ["StartOrchestration"]
    record = await store.get_instance("new")
    assert record is not None and record.status == "Pending" and record.incarnation
    # A genuinely taken id is still refused, and nothing is added.
    with pytest.raises(InstanceAlreadyExistsError):
        await store.create_instance(StartOrchestration(instance_id="new", name="N", input="again", version=None))
    assert len(await _queue(store, "new")) == 1


async def test_purge_after_lost_reply_reports_what_it_purged(store: PostgresProvider, pg_url: str) -> None:
    client = Client(store)
    await client.start_orchestration("done", "N", "")
    await store._tx(lambda conn: conn.execute(
        f"UPDATE {store.schema}.instances SET status='Completed', output='\"ok\"' WHERE instance_id='done'"))
    store._after_commit_hook = hook = LoseReply(pg_url)
    assert await client.purge("done") == ["done"]  # not InstanceNotFoundError for its own purge
    _lost(hook)
    assert await store.get_instance("done") is None


async def test_migration_4_upgrades_a_version_3_schema_and_expires_keys(pg_url: str) -> None:
    store = await PostgresProvider.new(pg_url, schema="old")
    try:
        # Make the schema look as duroxide before request keys left it (version 3).
        await store._tx(lambda conn: conn.execute(
            "DROP TABLE old.request_keys; DELETE FROM old.schema_migrations WHERE version >= 4"))
    finally:
        await store.close()
    store = await PostgresProvider.new(pg_url, schema="old")
    try:
        versions = await store._tx(lambda conn: conn.fetch("SELECT version FROM old.schema_migrations ORDER BY 1"))
        assert [r[0] for r in versions] == [v for v, _ in _MIGRATIONS]  # 4 again, and every one after it
        # An expired key (older than an hour) goes at the next cleanup; a fresh one stays.
        await store._tx(lambda conn: conn.execute(
            "INSERT INTO old.request_keys VALUES ('stale', $1, old.now_ms() - 3700000)", orjson.dumps(None)))
        await store.create_instance(StartOrchestration(instance_id="k", name="N", input="", version=None))
        store._next_key_gc = time.monotonic() - 1
        await store.send(ExternalEvent(instance_id="k", name="e", data=""))
        keys = await store._tx(lambda conn: conn.fetch("SELECT request_id FROM old.request_keys"))
        assert "stale" not in {r[0] for r in keys} and len(keys) == 1
    finally:
        await store.close()
