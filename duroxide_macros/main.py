"""``@duroxide_main``: the zero-ceremony entry point.

Example::

    @duroxide_main                     # SQLite in a temp dir
    async def main() -> None:
        receipt = await process_order.run("order-1", order, timeout=30)   # ambient client
        print(receipt)

    if __name__ == "__main__":
        main()

Calling the decorated function runs asyncio, sets up logging, the store, a
runtime with discovery and a client (the ambient client, and ``client`` in the
function's module scope), runs the body, and shuts everything down, also on
an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, overload

from duroxide_runtime import ConfigurationError, InMemoryProvider, PostgresProvider, Provider, Runtime, RuntimeOptions
from duroxide_runtime import SqliteProvider

from .ambient import set_ambient_client

__all__ = ["duroxide_main"]

T = TypeVar("T")
_PROVIDERS = ("sqlite", "memory", "postgres", "custom")
_log = logging.getLogger("duroxide.main")


@overload
def duroxide_main(fn: Callable[[], Coroutine[Any, Any, T]], /) -> Callable[[], T]: ...
@overload
def duroxide_main(*, provider: str = "sqlite", db_path: str | os.PathLike[str] | None = None,
                  database_url: str | None = None, log_level: str = "info",
                  options: RuntimeOptions | None = None, prometheus_port: int | None = None
                  ) -> Callable[[Callable[[], Coroutine[Any, Any, T]]], Callable[[], T]]: ...


def duroxide_main(fn: Callable[[], Coroutine[Any, Any, Any]] | None = None, /, *, provider: str = "sqlite",
                  db_path: str | os.PathLike[str] | None = None, database_url: str | None = None,
                  log_level: str = "info", options: RuntimeOptions | None = None,
                  prometheus_port: int | None = None) -> Any:
    """Turn ``async def main()`` into a plain function that runs the whole program.

    ``provider``: ``"sqlite"`` (default; ``db_path`` or a temp dir), ``"memory"``,
    ``"postgres"`` (``database_url`` or the ``DATABASE_URL`` environment variable), or
    ``"custom"`` (the module's ``async def duroxide_provider() -> Provider``).
    ``prometheus_port``: serve the runtime's metrics on that port (needs the ``metrics`` extra).
    """
    if provider not in _PROVIDERS:
        raise ConfigurationError(f"duroxide_main(provider={provider!r}) is not a known provider",
                                 fix=f"use one of {', '.join(_PROVIDERS)}")
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise ConfigurationError(f"duroxide_main(log_level={log_level!r}) is not a logging level",
                                 fix="use debug, info, warning or error")

    def wrap(body: Callable[[], Coroutine[Any, Any, Any]]) -> Callable[[], Any]:
        @functools.wraps(body)
        def run() -> Any:
            if not logging.getLogger().handlers:
                logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            try:
                return asyncio.run(_main(body, provider, db_path, database_url, options, prometheus_port))
            except KeyboardInterrupt:
                _log.info("interrupted; shut down cleanly")
                sys.exit(130)

        return run

    return wrap(fn) if fn is not None else wrap


async def _open_store(body: Callable[..., Any], provider: str, db_path: str | os.PathLike[str] | None,
                      database_url: str | None, tmp: str) -> Provider:
    if provider == "memory":
        return InMemoryProvider()
    if provider == "postgres":
        url = database_url or os.environ.get("DATABASE_URL")
        if not url:
            raise ConfigurationError("duroxide_main(provider='postgres') needs a database URL",
                                     fix="set DATABASE_URL=postgresql://user@host/db or pass database_url=...")
        return await PostgresProvider.new(url)
    if provider == "custom":
        factory = body.__globals__.get("duroxide_provider")
        if factory is None:
            raise ConfigurationError("duroxide_main(provider='custom') found no `duroxide_provider` in the module",
                                     fix="define `async def duroxide_provider() -> Provider` next to main")
        store = await factory()
        if not isinstance(store, Provider):
            raise ConfigurationError(f"duroxide_provider() returned {type(store).__name__}, not a Provider",
                                     fix="return a SqliteProvider, PostgresProvider or InMemoryProvider")
        return store
    path = Path(db_path) if db_path is not None else Path(tmp) / "duroxide.db"
    return await SqliteProvider.new(f"sqlite://{path.resolve()}")


async def _main(body: Callable[[], Coroutine[Any, Any, Any]], provider: str,
                db_path: str | os.PathLike[str] | None, database_url: str | None,
                options: RuntimeOptions | None, prometheus_port: int | None) -> Any:
    with tempfile.TemporaryDirectory(prefix="duroxide-") as tmp:
        store = await _open_store(body, provider, db_path, database_url, tmp)
        rt: Runtime | None = None
        token = None
        metrics = None
        try:
            builder = (Runtime.builder().store(store).discover_activities().discover_orchestrations()
                       .options(options or RuntimeOptions()))
            if prometheus_port is not None:
                from duroxide_runtime import PrometheusMetrics  # imported on use: it loads prometheus_client

                metrics = PrometheusMetrics()
                builder.observer(metrics)
                metrics.serve(prometheus_port)
                metrics.start_sampling(store)
            rt = await builder.start()
            client = rt.client()
            token = set_ambient_client(client)
            return await body()
        finally:
            if metrics is not None:
                metrics.stop_sampling()
            if token is not None:
                set_ambient_client(None)
            if rt is not None:
                await rt.shutdown()
            await store.close()
