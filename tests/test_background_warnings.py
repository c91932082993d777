"""Errors of background work are logged at WARNING, rate-limited (issue 10, code review).

The runtime's loops and a store's connections retry on their own, so an error
there can repeat for as long as the trouble lasts. Each is logged at WARNING
through one shared limiter (``duroxide_runtime.lograte.background_warnings``):
one record per kind per interval, the next record counting the ones held back.

The failures are real: the PostgreSQL server terminates the LISTEN connection
(``pg_terminate_backend``, in a database of the test's own), and a SQLite store
file is made unwritable under a running runtime (``chattr +i`` as root, which
ignores file modes). The limiter's clock is driven by the test: frozen, a burst
gives one record; moved past the interval, the next record carries the count.
Nothing waits for time to pass except for the failures themselves to happen.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from duroxide_runtime import Client, InMemoryProvider, OrchestrationContext, OrchestrationStatus, SqliteProvider
from duroxide_runtime.lograte import WarningLimiter, background_warnings
from duroxide_runtime.providers.postgres import PostgresProvider

from .support import Harness, eventually, own_pg_database


class FakeClock:
    """The limiter's clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The shared limiter with a fresh state and a clock the test drives."""
    fake = FakeClock()
    background_warnings.reset()
    monkeypatch.setattr(background_warnings, "clock", fake)
    yield fake
    background_warnings.reset()


def _records(caplog: pytest.LogCaptureFixture, kind: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "warning_kind", None) == kind]


def _suppressed(record: logging.LogRecord) -> int:
    return int(getattr(record, "suppressed"))


# -- the limiter -------------------------------------------------------------------------------

def test_a_burst_gives_one_record_then_one_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeClock()
    limiter = WarningLimiter(interval=30.0, clock=fake)
    log = logging.getLogger("duroxide.test")
    caplog.set_level(logging.WARNING, logger="duroxide")
    for i in range(100):
        fake.now += 0.25  # 100 errors in 25 s
        limiter.warning(log, "burst", "store error %d", i)
    limiter.warning(log, "other", "another kind is limited apart")
    assert [(r.levelno, r.getMessage(), _suppressed(r)) for r in _records(caplog, "burst")] == \
        [(logging.WARNING, "store error 0", 0)]
    assert limiter.suppressed("burst") == 99 and len(_records(caplog, "other")) == 1
    fake.now = 1000.25 + 30  # 30 s after the first record
    assert limiter.warning(log, "burst", "store error %d", 100)
    last = _records(caplog, "burst")[-1]
    assert _suppressed(last) == 99 and last.levelno == logging.WARNING
    assert last.getMessage() == "store error 100 [99 similar record(s) suppressed in the last 30 s]"
    assert limiter.suppressed("burst") == 0


# -- PostgreSQL: the LISTEN connection ---------------------------------------------------------

@pytest.fixture
async def pg_db() -> AsyncIterator[str]:
    """A database of this test's own, dropped afterwards; yields its URL."""
    async with own_pg_database("dx_warn") as url:
        yield url


async def test_killed_listen_connection_warns_rate_limited(pg_db: str, clock: FakeClock,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="duroxide")
    url = pg_db
    store = await PostgresProvider.new(url, schema="dx")
    admin = await asyncpg.connect(url)
    try:
        async def listener() -> int | None:
            """The provider's LISTEN backend, once it has subscribed to all channels (done is last)."""
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle' "
                "AND query ILIKE 'LISTEN%' AND query LIKE '%dx_done%'")
            return int(pid) if pid is not None else None

        def seen() -> tuple[int, int]:
            """(records written, records held back since the last one) of this kind."""
            return len(_records(caplog, "postgres.listen")), background_warnings.suppressed("postgres.listen")

        async def kill_listener(then: tuple[int, int]) -> None:
            pid = await eventually(listener, 10, "the LISTEN connection")
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
            await eventually(lambda: seen() == then, 10, f"{then} warnings about the lost LISTEN connection")

        for n in range(3):  # three real losses while the clock stands still
            await kill_listener((1, n))
        records = _records(caplog, "postgres.listen")
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].levelno == logging.WARNING and records[0].name == "duroxide.postgres"
        assert "LISTEN connection to PostgreSQL lost; reconnecting" in records[0].getMessage()
        assert background_warnings.suppressed("postgres.listen") == 2

        clock.now += 30  # the interval passed: the next loss is logged, with the count
        await kill_listener((2, 0))
        records = _records(caplog, "postgres.listen")
        assert len(records) == 2 and _suppressed(records[1]) == 2
        assert "[2 similar record(s) suppressed in the last 30 s]" in records[1].getMessage()
        await eventually(listener, 10, "the LISTEN connection to come back")
    finally:
        await admin.close()
        await store.close()


# -- SQLite: a store file that becomes unwritable ------------------------------------------------

async def _greet(name: str) -> str:
    return f"Hello, {name}!"


async def _hello(ctx: OrchestrationContext, name: str) -> str:
    return str(await ctx.schedule_activity("Greet", name))


def _freeze(paths: list[Path], on: bool) -> None:
    for path in paths:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


async def test_unwritable_sqlite_file_warns_rate_limited(tmp_path: Path, clock: FakeClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr +i: an open file stays writable to its process whatever its mode")
    caplog.set_level(logging.WARNING, logger="duroxide")
    path = tmp_path / "store.db"
    store = await SqliteProvider.new(str(path))
    await Client(store).start_orchestration("i1", "Hello", "World")
    # The database and its write-ahead log refuse writes ("disk I/O error"); the shared-memory
    # index stays writable (SQLite maps it; freezing it would crash the process, not fail a write).
    frozen = [path, path.with_name(path.name + "-wal")]
    assert all(p.exists() for p in frozen)
    _freeze(frozen, True)
    harness = Harness(store, "cached")
    try:
        try:
            await harness.start({"Hello": _hello}, {"Greet": _greet})
            # The dispatcher's fetch (it locks the instance) fails again and again.
            await eventually(lambda: background_warnings.suppressed("dispatcher.store") >= 3, 20,
                             "repeated dispatcher store errors")
            records = _records(caplog, "dispatcher.store")
            assert len(records) == 1, [r.getMessage() for r in records]
            assert records[0].levelno == logging.WARNING and records[0].name == "duroxide.dispatcher"
            assert records[0].exc_info is not None and "disk I/O error" in str(records[0].exc_info[1])
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
                [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

            clock.now += 30
            await eventually(lambda: len(_records(caplog, "dispatcher.store")) == 2, 20, "the second record")
            second = _records(caplog, "dispatcher.store")[1]
            assert _suppressed(second) >= 3 and "similar record(s) suppressed" in second.getMessage()
        finally:
            _freeze(frozen, False)
        # Writable again: the loop that kept retrying finishes the work.
        status = await harness.client.wait_for_orchestration("i1", 20)
        assert status == OrchestrationStatus.Completed(output="Hello, World!")
    finally:
        await harness.stop()
        await store.close()


# -- a runtime loop that dies is reported, not swallowed until shutdown ------------------------

class _LeaseWithoutWork(InMemoryProvider):
    """A store whose activity fetch returns something that is not a lease: the worker loop's own
    code (outside its store-error handling) fails on it, as a bug in the loop would."""

    async def fetch_work_items(self, max_items: int, lock_timeout: float, **kwargs: Any) -> list[Any]:
        return [object()]


async def test_a_runtime_loop_stopped_by_an_error_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="duroxide")
    harness = Harness(_LeaseWithoutWork(), "cached")
    await harness.start({"Hello": _hello}, {"Greet": _greet})
    try:
        record = await eventually(lambda: next((r for r in caplog.records if r.name == "duroxide.runtime"), None),
                                  10, "a record about the stopped activity loop")
        assert record.levelno == logging.ERROR
        assert "runtime task duroxide-activities stopped by an unexpected error" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], AttributeError)
    finally:
        await harness.stop()
