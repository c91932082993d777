"""Crash test on Redis: 3 runtime processes, 500 orchestrations (activities, timers, sub-orchestrations);
one runtime is SIGKILLed, and separately ``redis-server`` is SIGKILLed and restarted from its AOF
(``appendfsync always``). Every orchestration completes exactly once, with the right output.

The test's own ``redis-server`` (tests/redis_session.py ``RedisServer``), never the session's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duroxide_runtime import Client, RedisProvider
from duroxide_runtime.history import Event

from .redis_crash_worker import expected_output
from .redis_session import RedisServer
from .support import clean_env

WORKER = Path(__file__).with_name("redis_crash_worker.py")
INSTANCES = 500
PREFIX = "crash"


def _spawn(url: str, ledger: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(WORKER), url, PREFIX, str(ledger)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=clean_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the worker prints READY or exits (EOF)
    assert line.strip() == "READY", f"worker did not start: {line!r}"
    return proc


async def _completed(url: str) -> int:
    store = await RedisProvider.new(url, prefix=PREFIX)
    try:
        return sum(1 for r in await store.list_instances(status="Completed", limit=10 * INSTANCES)
                   if not r.instance_id.endswith("-child"))
    finally:
        await store.close()


async def _wait_completed(url: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done = await _completed(url)
        if done >= at_least:
            return done
        assert time.monotonic() < deadline, f"only {done} of {at_least} orchestrations completed in {timeout} s"
        await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_three_runtimes_a_sigkilled_runtime_and_a_sigkilled_server_complete_everything_once(
        tmp_path: Path) -> None:
    server = RedisServer(fsync="always")
    workers: list[subprocess.Popen[str]] = []
    ledger = tmp_path / "ledger"
    try:
        url = server.url()
        workers = [_spawn(url, ledger) for _ in range(3)]
        store = await RedisProvider.new(url, prefix=PREFIX, require_fsync_always=True)
        try:
            client = Client(store)
            for n in range(INSTANCES):
                await client.start_orchestration(f"r-{n}", "RFlow", str(n))
        finally:
            await store.close()
        # One runtime dies mid-work: its leases lapse and the other two take over.
        await _wait_completed(url, 50, 240)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(30)
        # Then the server dies mid-work and comes back from its AOF on the same port.
        await _wait_completed(url, 200, 240)
        server.kill()
        await asyncio.sleep(1.0)
        server.start()
        await _wait_completed(url, INSTANCES, 480)

        store = await RedisProvider.new(url, prefix=PREFIX)
        try:
            for n in range(INSTANCES):
                iid = f"r-{n}"
                history = await store.read_history(iid)
                assert sum(isinstance(e, Event.OrchestrationCompleted) for e in history) == 1, iid
                assert sum(isinstance(e, Event.SubOrchestrationCompleted) for e in history) == 1, iid
                record = await store.get_instance(iid)
                assert record is not None and record.status == "Completed" and record.output == expected_output(n)
                child = await store.get_instance(f"{iid}-child")
                assert child is not None and child.status == "Completed"
        finally:
            await store.close()
        assert all(w.poll() is None for w in workers[1:]), "a surviving runtime died"
        lines = ledger.read_text().splitlines()
        assert len(lines) >= 2 * INSTANCES  # at least once per call (a killed call runs again)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGKILL)
                w.wait(30)
        server.stop()

