"""Session hooks (the suite's own PostgreSQL database) and fixtures (each provider, both replay modes)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from duroxide_runtime import Provider
from duroxide_runtime.testing import ManualClock

from .pg_session import ADMIN_URL, SESSION
from .redis_session import REDIS
from .support import PROVIDERS, REPLAY_MODES, Harness, drop_store, make_store


def pytest_sessionstart(session: pytest.Session) -> None:
    """Create the session's own PostgreSQL database (tests/pg_session.py)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background (`pytest &` without job control), pytest ignores SIGINT and its
        # subprocesses would too: the tests that interrupt a program with Ctrl-C need the default.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    SESSION.create()


def pytest_report_header(config: pytest.Config) -> str:
    """Which PostgreSQL database the session uses, and on which server."""
    if SESSION.unavailable is not None:
        return f"PostgreSQL: unreachable at {ADMIN_URL} (DUROXIDE_PG_URL): {SESSION.unavailable}"
    return f"PostgreSQL: database {SESSION.name}, dropped at the end, on the server of {ADMIN_URL} (DUROXIDE_PG_URL)"


@pytest.hookimpl(trylast=True)  # after the runner's own teardown: the test's fixtures are finalized
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Note the schemas in the session's database, so that one left behind names its test."""
    SESSION.note_schemas(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the session's database; whatever a test left behind in it (or beside it) fails the session."""
    REDIS.stop()  # the session's own redis-server, if a test started it
    left = SESSION.drop()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"tests left behind (now dropped with {SESSION.name}): {', '.join(left)}"
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(f"PostgreSQL cleanup check FAILED: {message}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    """A fresh store of each provider kind."""
    s = await make_store(request.param, tmp_path)
    try:
        yield s
    finally:  # a PostgreSQL schema is dropped even when the test fails
        await drop_store(s)


@pytest.fixture(params=REPLAY_MODES)
def replay_mode(request: pytest.FixtureRequest) -> str:
    """'cached' keeps instances live between turns; 'from_scratch' replays every turn."""
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    """A ManualClock the test moves by hand (``clocked`` runs its store on it)."""
    return ManualClock()


@pytest.fixture(params=PROVIDERS)
async def clocked(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock,
                  replay_mode: str) -> AsyncIterator[Harness]:
    """A harness whose store runs on the test's ``clock``, of each provider kind and replay mode."""
    store = await make_store(request.param, tmp_path, clock=clock)
    h = Harness(store, replay_mode)
    try:
        yield h
    finally:
        await h.stop()
        await drop_store(store)


@pytest.fixture
async def harness(store: Provider, replay_mode: str) -> AsyncIterator[Harness]:
    """Store + client + runtime starter, in one replay mode; the runtime is stopped after the test."""
    h = Harness(store, replay_mode)
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def cached_harness(store: Provider) -> AsyncIterator[Harness]:
    """Like ``harness``, cached mode only: for defects where the replay mode does not matter."""
    h = Harness(store, "cached")
    try:
        yield h
    finally:
        await h.stop()
