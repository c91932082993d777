"""What the race workers (debounce_worker.py, start_policy_worker.py) share: their store, and the go line.

A race worker opens the store the test names, says ``READY`` and waits for one
line on stdin, so that the test releases every process at the same moment
(tests/worker_process.py ``release_together``). The workers run as scripts, so
they import this module by its plain name (their directory is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import sys

from duroxide_runtime import PostgresProvider, Provider, SqliteProvider

__all__ = ["open_store", "wait_for_go"]


async def open_store(kind: str, target: str, schema: str) -> Provider:
    """``sqlite``: TARGET is the database file (SCHEMA unused); ``postgres``: TARGET is the URL."""
    if kind == "sqlite":
        return await SqliteProvider.new(f"sqlite://{target}")
    return await PostgresProvider.new(target, schema=schema, pool_size=4)


async def wait_for_go() -> None:
    """Print READY and wait (off the event loop) for the test's line on stdin."""
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
