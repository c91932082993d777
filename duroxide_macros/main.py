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

A relative ``db_path`` is relative to the directory of the file that defines
the decorated function - where ``db_path=`` is written - never to the working
directory: a program started from a shell, cron, systemd or an IDE (each with
its own working directory) must open the same store every time, not a new
empty one that silently hides the old state. Which store was opened is logged
(INFO, ``duroxide.main``): the SQLite file's absolute path, the PostgreSQL URL
without its password.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import parse_qsl, urlencode, urlsplit

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
    ``db_path``: the SQLite file; a relative path is relative to the directory of the
    file that defines the decorated function (``~`` is the home directory), whatever
    the working directory.
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
        path = _resolve_db_path(db_path, body)

        @functools.wraps(body)
        def run() -> Any:
            if not logging.getLogger().handlers:
                logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            try:
                return asyncio.run(_main(body, provider, path, database_url, options, prometheus_port))
            except KeyboardInterrupt:
                _log.info("interrupted; shut down cleanly")
                sys.exit(130)

        return run

    return wrap(fn) if fn is not None else wrap


def _resolve_db_path(db_path: str | os.PathLike[str] | None, body: Callable[..., Any]) -> Path | None:
    """``db_path`` made absolute: a relative one against the directory of the file that defines ``body``."""
    if db_path is None:
        return None
    path = Path(db_path).expanduser()
    if path.is_absolute():
        return _storable(path)
    try:
        source = inspect.getsourcefile(inspect.unwrap(body))
    except TypeError:
        source = None
    if source is None or not os.path.isfile(source):
        raise ConfigurationError(
            f"duroxide_main(db_path={os.fspath(db_path)!r}) is relative, and the function it decorates is not "
            f"defined in a file it could be relative to (defined in {source or 'no file'})",
            fix="pass an absolute path (e.g. str(Path.home() / 'app.db')), or define the function in a .py file")
    # Absolute now, at decoration: a later os.chdir() cannot move it either.
    return _storable(Path(os.path.abspath(source)).parent / path)


def _storable(path: Path) -> Path:
    """``path``, if a SQLite URL can name it: the text after a ``?`` would be read as URL parameters."""
    if "?" in str(path):
        raise ConfigurationError(f"duroxide_main(db_path=...) resolves to {str(path)!r}, which holds a '?': "
                                 "the SQLite store would open the file named by the text before it",
                                 fix="use a path without '?'")
    return path


def _redacted(url: str) -> str:
    """``url`` without its password (in the authority, or as a ``password=`` query parameter)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = urlencode([(k, "***" if k.lower() == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return parts._replace(netloc=netloc, query=query).geturl()
    except ValueError:  # not a URL urllib can read: show nothing of it rather than a password
        return "<a database URL that could not be read>"


async def _open_store(body: Callable[..., Any], provider: str, db_path: Path | None,
                      database_url: str | None, tmp: str) -> Provider:
    if provider == "memory":
        _log.info("store: in memory (nothing is kept after the program ends)")
        return InMemoryProvider()
    if provider == "postgres":
        url = database_url or os.environ.get("DATABASE_URL")
        if not url:
            raise ConfigurationError("duroxide_main(provider='postgres') needs a database URL",
                                     fix="set DATABASE_URL=postgresql://user@host/db or pass database_url=...")
        pg = await PostgresProvider.new(url)
        _log.info("store: PostgreSQL database %s (schema %s)", _redacted(url), pg.schema)
        return pg
    if provider == "custom":
        factory = body.__globals__.get("duroxide_provider")
        if factory is None:
            raise ConfigurationError("duroxide_main(provider='custom') found no `duroxide_provider` in the module",
                                     fix="define `async def duroxide_provider() -> Provider` next to main")
        store = await factory()
        if not isinstance(store, Provider):
            raise ConfigurationError(f"duroxide_provider() returned {type(store).__name__}, not a Provider",
                                     fix="return a SqliteProvider, PostgresProvider or InMemoryProvider")
        _log.info("store: %s from duroxide_provider()", type(store).__name__)
        return store
    path = db_path if db_path is not None else Path(tmp) / "duroxide.db"
    sqlite = await SqliteProvider.new(f"sqlite://{path}")
    if db_path is None:
        _log.info("store: SQLite file %s, in a temporary directory deleted when the program ends "
                  "(pass db_path=... to keep it)", path)
    else:
        _log.info("store: SQLite file %s", path)
    return sqlite


async def _main(body: Callable[[], Coroutine[Any, Any, Any]], provider: str,
                db_path: Path | None, database_url: str | None,
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
