"""The test session's own PostgreSQL database, created at its start and dropped at its end.

A run of the suite never touches the server's shared databases: it creates one database of its own,
``duroxide_test_<random>``, from a connection to the *admin* database that ``DUROXIDE_PG_URL`` names
(default ``postgresql://postgres@127.0.0.1:5432/postgres``; nothing is written there). Each test makes
its schema inside the session's database and drops it afterwards; a test that needs a whole database
gets ``<session database>_<prefix>_<random>`` (support.own_pg_database). At the session's end the
database is dropped ``WITH (FORCE)``, and so is every database whose name starts with its name; a
schema or database still there by then is reported, with the test after which it first appeared,
and fails the session. pytest_sessionfinish does this, an atexit hook does it should the process end
another way, and SIGTERM ends the session as Ctrl-C does.

Example (tests/conftest.py)::

    def pytest_sessionstart(session: pytest.Session) -> None:
        SESSION.create()
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import signal
import threading
import uuid
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

#: The server's admin database: the suite connects to it only to CREATE and DROP its own databases.
ADMIN_URL = os.environ.get("DUROXIDE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: What every database this session creates is named after (and what the leftover check looks for).
PREFIX = "duroxide_test_"
#: Schemas every PostgreSQL database has; any other schema in the session's database was made by a test.
SYSTEM_SCHEMAS = ("public", "information_schema")
SCHEMAS_QUERY = ("SELECT nspname FROM pg_namespace WHERE nspname <> ALL($1::text[]) AND nspname NOT LIKE 'pg\\_%' "
                 "ORDER BY nspname")

_T = TypeVar("_T")


def url_of(database: str) -> str:
    """``ADMIN_URL`` pointing at ``database`` of the same server.

    Example::

        url_of("duroxide_test_0123456789")  # 'postgresql://postgres@127.0.0.1:5432/duroxide_test_0123456789'
    """
    return urlsplit(ADMIN_URL)._replace(path="/" + database).geturl()


@dataclasses.dataclass
class SessionDatabase:
    """One test session's PostgreSQL database: its name, whether it exists, and its cleanup.

    Example::

        db = SessionDatabase(f"{PREFIX}{uuid.uuid4().hex[:10]}")
        db.create()
        try:
            ...                     # tests connect to db.url
        finally:
            left = db.drop()        # [] when every test cleaned up after itself
    """

    name: str
    created: bool = False
    #: Why the database could not be created (the server is unreachable), for the report header.
    unavailable: str | None = None
    #: Each schema seen in the database, and the test after which it was first seen.
    appeared_after: dict[str, str] = dataclasses.field(default_factory=dict)
    _watcher: _Watcher | None = None

    @property
    def url(self) -> str:
        """The URL tests connect to."""
        return url_of(self.name)

    def create(self) -> None:
        """Create the database; an unreachable server is noted (tests that need it fail), not raised."""
        import asyncpg

        async def go() -> None:
            admin = await asyncpg.connect(ADMIN_URL)
            try:
                await admin.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await admin.close()

        try:
            asyncio.run(go())
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            self.unavailable = f"{type(exc).__name__}: {exc}"
            return
        self.created = True
        atexit.register(self.drop)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _interrupt)

    def note_schemas(self, test_id: str) -> None:
        """After a test: remember which schemas exist, so that a leftover one names its test."""
        if not self.created:
            return
        if self._watcher is None:
            self._watcher = _Watcher(self.url)
        for schema in self._watcher.schemas():
            self.appeared_after.setdefault(schema, test_id)

    def drop(self) -> list[str]:
        """Drop the database and its siblings; return what tests left behind ("schema x (after test t)")."""
        if not self.created:
            return []
        self.created = False
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        return asyncio.run(self._drop())

    async def _drop(self) -> list[str]:
        import asyncpg

        left: list[str] = []
        conn = await asyncpg.connect(self.url)
        try:
            for row in await conn.fetch(SCHEMAS_QUERY, list(SYSTEM_SCHEMAS)):
                after = self.appeared_after.get(row["nspname"])
                left.append(f"schema {row['nspname']}" + (f" (after {after})" if after else ""))
        finally:
            await conn.close()
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            for name in await self._siblings(admin):
                left.append(f"database {name}")
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            remaining = [self.name] if await admin.fetchval(
                "SELECT 1 FROM pg_database WHERE datname=$1", self.name) else []
            remaining += await self._siblings(admin)
        finally:
            await admin.close()
        left += [f"database {name} (could not be dropped)" for name in remaining]
        return left

    async def _siblings(self, admin: Any) -> list[str]:
        """Databases named ``<this database>_...``: those of support.own_pg_database."""
        rows = await admin.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
                                 self.name + "_")
        return [str(r["datname"]) for r in rows]


class _Watcher:
    """One connection to the session's database, on a thread with an event loop of its own: the
    tests' loops come and go with each test, and the check after each test must not touch them."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="duroxide-test-schemas", daemon=True)
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def schemas(self) -> list[str]:
        return self._call(self._schemas())

    async def _schemas(self) -> list[str]:
        import asyncpg

        if self._conn is None:
            self._conn = await asyncpg.connect(self._url)
        return [str(r["nspname"]) for r in await self._conn.fetch(SCHEMAS_QUERY, list(SYSTEM_SCHEMAS))]

    def close(self) -> None:
        if self._conn is not None:
            self._call(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=60)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # pytest then finishes the session, which drops the database


#: This process's session database. Its name is new in every process, so a nested pytest run (or a
#: second suite on the same server) never shares it.
SESSION = SessionDatabase(f"{PREFIX}{uuid.uuid4().hex[:10]}")
