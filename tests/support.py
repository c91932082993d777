"""Shared test helpers: stores, a runtime harness, history normalisation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import subprocess
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from duroxide_runtime import (
    ActivityRegistry,
    Client,
    Event,
    HistoryEvent,
    InMemoryProvider,
    OrchestrationRegistry,
    OrchestrationStatus,
    Provider,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
)
from duroxide_runtime.clock import SYSTEM_CLOCK, Clock
from duroxide_runtime.observe import RuntimeObserver

from .pg_session import ADMIN_URL, SESSION, url_of
from .redis_session import REDIS

PROVIDERS = os.environ.get("DUROXIDE_TEST_PROVIDERS", "memory,sqlite,postgres,redis").split(",")
#: This test session's own PostgreSQL database (tests/pg_session.py), on the server DUROXIDE_PG_URL names;
#: tests make their schemas here and drop them. CI fails (never skips) when the server is unreachable.
PG_URL = SESSION.url
REPLAY_MODES = ["cached", "from_scratch"]

#: Fast settings for tests: short poison back-off, short waits.
TEST_OPTIONS = dict(unknown_name_backoff=0.01, unknown_name_max_backoff=0.05, poll_interval=0.05,
                    foreign_activity_delay=0.2)


async def make_store(kind: str, tmp_path: Path, *, clock: Clock = SYSTEM_CLOCK) -> Provider:
    """A fresh, empty store of the given kind, on ``clock`` (a ManualClock to drive time)."""
    if kind == "memory":
        return InMemoryProvider(clock=clock)
    if kind == "sqlite":
        return await SqliteProvider.new(f"sqlite://{tmp_path / 'test.db'}", clock=clock)
    if kind == "postgres":
        from duroxide_runtime.providers.postgres import PostgresProvider

        # Each test in its own schema, dropped by drop_store().
        return await PostgresProvider.new(PG_URL, schema=f"t_{uuid.uuid4().hex[:16]}", clock=clock)
    if kind == "redis":
        from duroxide_runtime.providers.redis import RedisProvider

        # Each test under its own key prefix, deleted by drop_store(); the session's own server.
        return await RedisProvider.new(REDIS.url(), prefix=f"t{uuid.uuid4().hex[:16]}", clock=clock)
    raise ValueError(kind)


async def drop_store(store: Provider) -> None:
    """Close a store made by make_store, deleting a PostgreSQL test schema (a Redis test prefix's keys)."""
    drop = getattr(store, "drop_schema", None) or getattr(store, "drop_keys", None)
    try:
        if drop is not None:
            await drop()
    finally:
        await store.close()


OrchFn = Callable[..., Awaitable[str]]


class Harness:
    """A store, a client and (once started) a runtime, in one replay mode."""

    def __init__(self, store: Provider, replay_mode: str) -> None:
        self.store = store
        self.replay_mode = replay_mode
        self.client = Client(store)
        self.runtime: Runtime | None = None

    def options(self, **overrides: Any) -> RuntimeOptions:
        """Test options in this harness's replay mode, with ``overrides``."""
        base: dict[str, Any] = {**TEST_OPTIONS, "replay_from_scratch": self.replay_mode == "from_scratch"}
        base.update(overrides)
        return RuntimeOptions(**base)

    async def start(self, orchestrations: Mapping[str, OrchFn] | OrchestrationRegistry,
                    activities: Mapping[str, Callable[..., Any]] | ActivityRegistry | None = None,
                    *, observers: Sequence[RuntimeObserver] = (), **overrides: Any) -> Runtime:
        """Start a runtime with the given functions (dicts are registered by name at 1.0.0)."""
        if not isinstance(orchestrations, OrchestrationRegistry):
            ob = OrchestrationRegistry.builder()
            for name, fn in orchestrations.items():
                ob.register(name, fn)
            orchestrations = ob.build()
        if activities is None:
            activities = {}
        if not isinstance(activities, ActivityRegistry):
            ab = ActivityRegistry.builder()
            for name, afn in activities.items():
                ab.register(name, afn)
            activities = ab.build()
        builder = (Runtime.builder().store(self.store).orchestrations(orchestrations)
                   .activities(activities).options(self.options(**overrides)))
        for observer in observers:
            builder.observer(observer)
        self.runtime = await builder.start()
        return self.runtime

    async def stop(self) -> None:
        """Shut the runtime down (if started)."""
        if self.runtime is not None:
            await self.runtime.shutdown(grace=2)
            self.runtime = None

    async def run(self, instance_id: str, name: str, input: str = "",
                  timeout: float = 15.0) -> OrchestrationStatus[str]:
        """Start an instance and wait for it to finish."""
        await self.client.start_orchestration(instance_id, name, input)
        return await self.client.wait_for_orchestration(instance_id, timedelta(seconds=timeout))


def normalize(history: list[HistoryEvent]) -> list[tuple[Any, ...]]:
    """History without timestamps and random values, for comparing runs."""
    out = []
    for e in history:
        fields = {f.name: getattr(e, f.name) for f in dataclasses.fields(e) if f.name != "timestamp_ms"}
        if isinstance(e, Event.SystemCall):
            fields["value"] = "<value>"
        for key in ("trace_context", "parent_trace_context"):  # random ids, one per run
            if fields.get(key) is not None:
                fields[key] = "<trace>"
        if isinstance(e, (Event.TimerCreated, Event.TimerFired)):
            fields["fire_at_ms"] = "<time>"
        if "details" in fields and fields["details"] is not None:
            fields["details"] = (fields["details"].error_type, fields["details"].message)
        out.append((type(e).__name__, tuple(sorted(fields.items(), key=lambda kv: kv[0]))))
    return out


async def eventually(fn: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``fn`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that change how Python caches and finds modules."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONOPTIMIZE", "PYTHONPATH")}
    env.update(extra)
    return env


def run_cmd(args: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd`` with :func:`clean_env` plus ``env``; capture text output."""
    return subprocess.run(args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)


def dedent_src(text: str) -> str:
    """A source snippet written indented in a test, as a module's text."""
    return textwrap.dedent(text).lstrip("\n")


@contextlib.asynccontextmanager
async def own_pg_database(prefix: str) -> AsyncIterator[str]:
    """A PostgreSQL database of the caller's own, dropped afterwards even on failure; yields its URL.

    It is named after the session's database, so that the session's end drops it should this not.
    """
    import asyncpg

    name = f"{SESSION.name}_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)  # CREATE/DROP DATABASE only: nothing is written there
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield url_of(name)
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Ticker:
    """Counts how often a task on the event loop got to run while it was ``running()``.

    Example::

        async with Ticker().running() as ticker:
            await something_that_must_not_hold_the_loop()
        assert ticker.ticks > 10
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.ticks = 0
        self._interval = interval

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Ticker]:
        stop = asyncio.Event()

        async def tick() -> None:
            while not stop.is_set():
                self.ticks += 1
                await asyncio.sleep(self._interval)

        task = asyncio.create_task(tick())
        try:
            yield self
        finally:
            stop.set()
            await task
