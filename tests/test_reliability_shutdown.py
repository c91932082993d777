"""Issue 10, defects 4 and 5: stopping a runtime.

* 4: graceful shutdown used to give back the lease of a plain ``def`` activity
  still running in its thread, so another process ran the same call at the
  same time. A running call now keeps its lease, renewed, until it ends (its
  result is recorded) or the process dies; shutdown logs what it waits for.
* 5: when asyncio cancelled the runtime's tasks (an exception after
  ``start()`` without ``shutdown()``, or Ctrl-C) an idle dispatcher could
  swallow the cancel (Python 3.11's ``wait_for`` returns normally when the
  cancel arrives with the wake-up it waits for) and loop on: the process hung.

Every test runs on memory, SQLite (a real file) and PostgreSQL; the hang is
also shown in real subprocesses.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    ActivityRegistry, InMemoryProvider, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus, Provider,
    RedisProvider, RuntimeOptions, SqliteProvider,
)
from duroxide_runtime.testing import ManualClock
from duroxide_runtime.runtime import Runtime
from duroxide_runtime.wake import wake_hub

from . import redis_raw
from .redis_session import REDIS
from .support import PG_URL, PROVIDERS, Harness, clean_env, drop_store, eventually

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def h(cached_harness: Harness) -> Harness:
    """One harness per store, cached mode (the replay mode does not matter for these defects)."""
    return cached_harness


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def worker_log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("duroxide.worker")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _locked_until(store: Provider) -> int:
    """The lease expiry of the one activity call in the store."""
    if isinstance(store, InMemoryProvider):
        (work,) = store._work.values()
        return work.locked_until
    if isinstance(store, RedisProvider):
        return await redis_raw.locked_until(store)
    if isinstance(store, SqliteProvider):
        row = await store._run(lambda conn: conn.execute("SELECT locked_until FROM worker_queue").fetchone())
        return int(row[0])
    schema = getattr(store, "schema")
    value = await getattr(store, "_tx")(lambda conn: conn.fetchval(f"SELECT locked_until FROM {schema}.worker_queue"))
    return int(value)


# -- defect 4 ------------------------------------------------------------------------


async def test_shutdown_keeps_the_lease_of_a_running_thread_activity_until_it_ends(
        h: Harness, worker_log: _Records) -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def slow(inp: str) -> str:  # a plain def: it runs in a thread nothing can interrupt
        runs.append(inp)
        started.set()
        release.wait(120)
        return "done " + inp

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Slow", inp)

    rt = await h.start({"Orch": orch}, {"Slow": slow}, activity_lock_timeout=12.0)  # renewed every 4 s
    await h.client.start_orchestration("s", "Orch", "x")
    try:
        await eventually(started.is_set, 30, "the activity to start")
        first_expiry = await _locked_until(h.store)
        shutdown = asyncio.create_task(rt.shutdown(grace=0))

        def waiting_logged() -> bool:
            return any("shutdown: waiting for 1 running activity call" in m for m in worker_log.messages)

        logged = asyncio.create_task(eventually(waiting_logged, 30, "the shutdown log"))
        await asyncio.wait([logged, shutdown], return_when=asyncio.FIRST_COMPLETED)
        assert logged.done() and not shutdown.done(), "shutdown returned while the activity still ran"
        await logged
        message = next(m for m in worker_log.messages if "shutdown: waiting for" in m)
        assert "'Slow' of instance 's'" in message and "in a thread" in message, message

        # Still leased: no other process can take the call; and the lease is renewed.
        assert await h.store.fetch_work_items(10, 60) == []

        async def renewed() -> bool:
            return await _locked_until(h.store) > first_expiry

        await eventually(renewed, 30, "a lease renewal during shutdown")
        assert await h.store.fetch_work_items(10, 60) == []
        assert not shutdown.done()
    finally:
        release.set()
    await asyncio.wait_for(shutdown, 60)

    # The result was recorded before shutdown returned: another runtime finishes the instance.
    await h.start({"Orch": orch}, {"Slow": slow})
    status = await h.client.wait_for_orchestration("s", 30)
    assert status == OrchestrationStatus.Completed(output="done x"), status
    assert runs == ["x"]  # run once, never concurrently elsewhere


async def test_shutdown_gives_back_the_lease_of_an_interrupted_async_activity(h: Harness) -> None:
    started = asyncio.Event()
    runs: list[str] = []

    async def slow(inp: str) -> str:
        runs.append(inp)
        started.set()
        await asyncio.sleep(3600)
        return "late"

    async def quick(inp: str) -> str:
        runs.append(inp)
        return "done " + inp

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Slow", inp)

    rt = await h.start({"Orch": orch}, {"Slow": slow})
    await h.client.start_orchestration("a", "Orch", "y")
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.wait_for(rt.shutdown(grace=0), 60)
    # Given back at once (not left to expire): the next runtime takes it immediately.
    leases = await h.store.fetch_work_items(10, 60)
    assert [lease.work.name for lease in leases] == ["Slow"]


# -- defect 5 ------------------------------------------------------------------------


def _idle(task: asyncio.Task[Any]) -> bool:
    """Whether a dispatcher task is parked in its wake-up wait (follows the chain of awaits)."""
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None and frame.f_code.co_name in ("wait_orchestrator", "wait_worker"):
            return True
        coro = getattr(coro, "cr_await", None)
    return False


async def test_cancelling_the_runtime_tasks_stops_them_even_when_a_wakeup_coincides(h: Harness) -> None:
    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    rt: Runtime = await h.start({"Orch": orch}, {}, poll_interval=30)
    tasks = [*rt._tasks, rt._flusher]
    dispatchers = rt._tasks[:-1]
    await eventually(lambda: all(_idle(t) for t in dispatchers), 30, "idle dispatchers")
    # What asyncio.run() does on an exception or Ctrl-C, in the worst moment: the wake-up
    # the dispatchers wait for arrives in the same loop iteration as the cancel.
    wake = wake_hub(h.store)
    wake.notify_orchestrator()
    wake.notify_worker()
    for task in tasks:
        task.cancel()
    done, pending = await asyncio.wait(tasks, timeout=30)
    assert not pending, f"tasks that ignored their cancel: {[t.get_name() for t in pending]}"
    h.runtime = None  # its tasks are gone; nothing to shut down


class _DropsCancels(InMemoryProvider):
    """A store whose fetches drop a cancel that arrives together with their reply.

    Python 3.11's ``asyncio.wait_for`` returns the result and drops such a cancel, and
    redis-py runs every command through one: a runtime whose tasks asyncio cancels
    (Ctrl-C, or an exception after ``start()``) must still stop. Each fetch waits at a
    gate of its own until the test opens them all in the same loop step as the cancel.
    """

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.gates: list[asyncio.Future[None]] = []
        self.dropped = 0

    async def _gate(self) -> None:
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        try:
            await gate
        except asyncio.CancelledError:
            self.dropped += 1  # the reply was there too: dropped, as wait_for does

    async def fetch_orchestration_items(self, *args: Any, **kwargs: Any) -> Any:
        await self._gate()
        return await super().fetch_orchestration_items(*args, **kwargs)

    async def fetch_work_items(self, *args: Any, **kwargs: Any) -> Any:
        await self._gate()
        return await super().fetch_work_items(*args, **kwargs)


async def test_a_cancel_the_store_client_drops_still_stops_the_runtime() -> None:
    store = _DropsCancels(ManualClock())  # the poll interval never passes: only the cancel can end a wait
    rt = await (Runtime.builder().store(store).orchestrations(OrchestrationRegistry.builder().build())
                .activities(ActivityRegistry.builder().build())
                .options(RuntimeOptions(poll_interval=30, orchestration_concurrency=2)).start())
    tasks = [*rt._tasks, rt._flusher]
    await eventually(lambda: len([g for g in store.gates if not g.done()]) == 3, 30,
                     "both dispatcher pipelines and the worker in a fetch")
    for gate in store.gates:
        gate.set_result(None)
    for task in tasks:
        task.cancel()
    done, pending = await asyncio.wait(tasks, timeout=30)
    assert store.dropped == 3
    assert not pending, f"tasks that slept on after their cancel was dropped: {[t.get_name() for t in pending]}"


_SCRIPT = textwrap.dedent('''
    import asyncio, os, signal, sys, threading
    from duroxide_runtime import (ActivityRegistry, OrchestrationRegistry, Runtime, RuntimeOptions, SqliteProvider,
                                  InMemoryProvider)
    from duroxide_runtime.wake import wake_hub

    async def orch(ctx, inp):
        if inp == "block":
            return await ctx.schedule_activity("Block", inp)
        return inp

    running = threading.Event()

    def block(inp):  # a plain def that never returns by itself
        running.set()
        threading.Event().wait()

    def idle(task):
        coro = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None)
            if frame is not None and frame.f_code.co_name in ("wait_orchestrator", "wait_worker"):
                return True
            coro = getattr(coro, "cr_await", None)
        return False

    async def main(kind, url, how):
        if kind == "memory":
            store = InMemoryProvider()
        elif kind == "sqlite":
            store = await SqliteProvider.new(url)
        elif kind == "redis":
            from duroxide_runtime.providers.redis import RedisProvider
            store = await RedisProvider.new(url, prefix=sys.argv[4])
        else:
            from duroxide_runtime.providers.postgres import PostgresProvider
            store = await PostgresProvider.new(url, schema=sys.argv[4])
        rt = await (Runtime.builder().store(store)
                    .orchestrations(OrchestrationRegistry.builder().register("Orch", orch).build())
                    .activities(ActivityRegistry.builder().register("Block", block).build())
                    .options(RuntimeOptions(poll_interval=30)).start())
        if how.startswith("thread"):
            await rt.client().start_orchestration("b", "Orch", "block")
            while not running.is_set():
                await asyncio.sleep(0.01)
        while not all(idle(t) for t in rt._tasks[:-1]):
            await asyncio.sleep(0.01)
        print("READY", flush=True)
        # The wake-up lands in the same loop iteration as asyncio.run's cancel of every task.
        wake_hub(store).notify_orchestrator()
        if how.endswith("raise"):
            raise RuntimeError("boom after start() without shutdown()")
        await asyncio.Event().wait()  # Ctrl-C

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
''')


async def _run_script(tmp_path: Path, kind: str, how: str) -> tuple[int, str]:
    script = tmp_path / "hang.py"
    script.write_text(_SCRIPT)
    schema = f"t_{int(time.time() * 1000) % 10**9}_{how}"
    url = {"sqlite": f"sqlite://{tmp_path / 'hang.db'}", "redis": REDIS.url()}.get(kind, PG_URL)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), kind, url, how, schema, cwd=str(REPO), env=clean_env(PYTHONPATH=str(REPO)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"READY"), (line, await proc.stderr.read())
        if how.endswith("sigint"):
            proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            raise AssertionError(f"the {kind} process hung after its runtime's tasks were cancelled") from None
        return code, (await proc.stderr.read()).decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if kind == "postgres":
            from duroxide_runtime.providers.postgres import PostgresProvider

            store = await PostgresProvider.new(PG_URL, schema=schema)
            await drop_store(store)
        if kind == "redis":
            from duroxide_runtime.providers.redis import RedisProvider

            await drop_store(await RedisProvider.new(REDIS.url(), prefix=schema))


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_process_exits_on_an_exception_after_start_without_shutdown(tmp_path: Path, kind: str) -> None:
    code, err = await _run_script(tmp_path, kind, "raise")
    assert code == 1 and "boom after start() without shutdown()" in err, err


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_process_exits_on_ctrl_c(tmp_path: Path, kind: str) -> None:
    code, err = await _run_script(tmp_path, kind, "sigint")
    assert code != 0 and "KeyboardInterrupt" in err, err


@pytest.mark.parametrize("how", ["thread-raise", "thread-sigint"])
async def test_process_exits_while_a_plain_def_activity_still_runs(tmp_path: Path, how: str) -> None:
    """Without a graceful shutdown nothing renews the running call's lease any more: the
    process must end (the call is redone elsewhere, as after a crash), not linger until
    the thread returns, which here is never."""
    code, err = await _run_script(tmp_path, "sqlite", how)
    assert code != 0, err
    assert ("boom after start() without shutdown()" in err) if how == "thread-raise" else ("KeyboardInterrupt" in err)
