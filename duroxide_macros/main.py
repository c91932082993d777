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

The seed's options are all taken: ``connection_string`` (``database_url`` is
its alias), ``connection_pool_size``, ``metrics``, ``tracing_backend`` with
``otlp_endpoint`` or ``jaeger_endpoint`` (see :mod:`duroxide_macros.otlp`), and
``prometheus_port``. Every option is checked when the decorator runs,
including that the extra an option needs is installed.

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
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import parse_qsl, urlencode, urlsplit

from duroxide_runtime import (
    ConfigurationError, InMemoryProvider, PostgresProvider, Provider, RedisProvider, Runtime, RuntimeOptions,
)
from duroxide_runtime import SqliteProvider

from .extras import require_extra

if TYPE_CHECKING:
    from duroxide_runtime import PrometheusMetrics  # loads prometheus_client: imported where metrics are on

from .discovery import check_declared_queues, create_declared_schedules
from .ambient import set_ambient_client
from .otlp import TracingSetup

__all__ = ["duroxide_main"]

T = TypeVar("T")
_PROVIDERS = ("sqlite", "memory", "postgres", "redis", "custom")
_log = logging.getLogger("duroxide.main")


@overload
def duroxide_main(fn: Callable[[], Coroutine[Any, Any, T]], /) -> Callable[[], T]: ...
@overload
def duroxide_main(*, provider: str = "sqlite", db_path: str | os.PathLike[str] | None = None,
                  connection_string: str | None = None, database_url: str | None = None,
                  connection_pool_size: int | None = None, log_level: str = "info",
                  options: RuntimeOptions | None = None, metrics: bool = False, prometheus_port: int | None = None,
                  tracing_backend: str | None = None, otlp_endpoint: str | None = None,
                  jaeger_endpoint: str | None = None, ui_port: int | None = None, redis_url: str | None = None
                  ) -> Callable[[Callable[[], Coroutine[Any, Any, T]]], Callable[[], T]]: ...


def duroxide_main(fn: Callable[[], Coroutine[Any, Any, Any]] | None = None, /, *, provider: str = "sqlite",
                  db_path: str | os.PathLike[str] | None = None, connection_string: str | None = None,
                  database_url: str | None = None, connection_pool_size: int | None = None,
                  log_level: str = "info", options: RuntimeOptions | None = None, metrics: bool = False,
                  prometheus_port: int | None = None, tracing_backend: str | None = None,
                  otlp_endpoint: str | None = None, jaeger_endpoint: str | None = None,
                  ui_port: int | None = None, redis_url: str | None = None) -> Any:
    """Turn ``async def main()`` into a plain function that runs the whole program.

    ``provider``: ``"sqlite"`` (default; ``db_path`` or a temp dir), ``"memory"``,
    ``"postgres"`` (``connection_string``, alias ``database_url``, or the ``DATABASE_URL``
    environment variable; ``connection_pool_size`` connections at most), ``"redis"``
    (``redis_url``, or the ``REDIS_URL`` environment variable), or ``"custom"`` (the module's ``async def duroxide_provider() -> Provider``).
    ``db_path``: the SQLite file; a relative path is relative to the directory of the
    file that defines the decorated function (``~`` is the home directory), whatever
    the working directory.
    ``metrics=True``: Prometheus metrics of the runtime in prometheus_client's default
    registry; ``prometheus_port`` serves them on that port (and turns them on). Both
    need the ``metrics`` extra.
    ``tracing_backend="opentelemetry"``: spans of the runtime exported over OTLP/HTTP
    to ``otlp_endpoint`` or ``jaeger_endpoint`` (either one alone turns tracing on);
    needs the ``otlp`` extra.
    ``ui_port``: serve the web UI of the store (``duroxide ui``) on 127.0.0.1 at that
    port while the program runs; needs the ``ui`` extra.

    Example::

        @duroxide_main(provider="postgres", connection_string="postgresql://localhost/duroxide",
                       connection_pool_size=20, tracing_backend="opentelemetry",
                       jaeger_endpoint="http://localhost:4318/v1/traces", metrics=True, prometheus_port=9090)
        async def main() -> None: ...
    """
    if provider not in _PROVIDERS:
        raise ConfigurationError(f"duroxide_main(provider={provider!r}) is not a known provider",
                                 fix=f"use one of {', '.join(_PROVIDERS)}")
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise ConfigurationError(f"duroxide_main(log_level={log_level!r}) is not a logging level",
                                 fix="use debug, info, warning or error")
    url = _connection_string(provider, connection_string, database_url)
    pool_size = _pool_size(provider, connection_pool_size)
    redis_url = _redis_url(provider, redis_url)
    if metrics or prometheus_port is not None:
        require_extra("prometheus_client", "prometheus_client", "metrics",
                      f"duroxide_main({'metrics=True' if metrics else f'prometheus_port={prometheus_port}'})")

    if ui_port is not None:
        _check_ui_port(ui_port)

    def wrap(body: Callable[[], Coroutine[Any, Any, Any]]) -> Callable[[], Any]:
        config = _Config(provider=provider, db_path=_resolve_db_path(db_path, body), url=redis_url or url,
                         pool_size=pool_size,
                         options=options, metrics=metrics or prometheus_port is not None,
                         prometheus_port=prometheus_port,
                         tracing=TracingSetup.of(tracing_backend, otlp_endpoint, jaeger_endpoint,
                                                 _program_name(body)), ui_port=ui_port)

        @functools.wraps(body)
        def run() -> Any:
            if not logging.getLogger().handlers:
                logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            try:
                return asyncio.run(_main(body, config))
            except KeyboardInterrupt:
                _log.info("interrupted; shut down cleanly")
                sys.exit(130)

        return run

    return wrap(fn) if fn is not None else wrap


@dataclass(frozen=True)
class _Config:
    """What ``duroxide_main``'s options resolved to, at decoration."""

    provider: str
    db_path: Path | None
    #: The PostgreSQL URL given (``connection_string`` or ``database_url``; None: ``DATABASE_URL``),
    #: or for Redis ``redis_url`` (None: ``REDIS_URL``).
    url: str | None
    pool_size: int | None
    options: RuntimeOptions | None
    metrics: bool
    prometheus_port: int | None
    tracing: TracingSetup | None
    ui_port: int | None = None


def _check_ui_port(port: int) -> None:
    """``ui_port``: a TCP port (0: any free one, logged), and the ``ui`` extra installed."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"duroxide_main(ui_port={port!r}) is not a port number",
                                 fix="pass a port from 1 to 65535 (0: any free port), or leave ui_port out")
    require_extra("aiohttp", "aiohttp", "ui", f"duroxide_main(ui_port={port})")
    require_extra("jinja2", "Jinja2", "ui", f"duroxide_main(ui_port={port})")


def _connection_string(provider: str, connection_string: str | None, database_url: str | None) -> str | None:
    """The PostgreSQL URL given, under either name (``database_url`` is the alias)."""
    if connection_string is not None and database_url is not None:
        raise ConfigurationError("duroxide_main got both connection_string and database_url, which name the same "
                                 "URL (database_url is an alias of connection_string)",
                                 fix="pass only connection_string=...")
    url = connection_string if connection_string is not None else database_url
    if url is None:
        return None
    name = "connection_string" if connection_string is not None else "database_url"
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"duroxide_main({name}=...) must be a non-empty URL string",
                                 fix=f"pass e.g. {name}='postgresql://user@host/db'")
    if provider != "postgres":
        raise ConfigurationError(f"duroxide_main({name}=...) names a PostgreSQL database, but provider="
                                 f"{provider!r}", fix="add provider='postgres' (for SQLite, pass db_path=... instead)")
    return url


def _redis_url(provider: str, url: str | None) -> str | None:
    """``redis_url``: a non-empty string, and only with ``provider="redis"``."""
    if url is None:
        return None
    if not isinstance(url, str) or not url:
        raise ConfigurationError("duroxide_main(redis_url=...) must be a non-empty URL string",
                                 fix="pass e.g. redis_url='redis://127.0.0.1:6379/0'")
    if provider != "redis":
        raise ConfigurationError(f"duroxide_main(redis_url=...) names a Redis server, but provider={provider!r}",
                                 fix="add provider='redis'")
    return url


def _pool_size(provider: str, size: int | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigurationError(f"duroxide_main(connection_pool_size={size!r}) must be a whole number >= 1",
                                 fix="pass e.g. connection_pool_size=20 (the default is 10)")
    if provider != "postgres":
        raise ConfigurationError(f"duroxide_main(connection_pool_size=...) sizes the PostgreSQL pool, but "
                                 f"provider={provider!r}", fix="add provider='postgres', or drop connection_pool_size")
    return size


def _program_name(body: Callable[..., Any]) -> str:
    """The service name of traces: the name of the file that defines ``main``."""
    code = getattr(inspect.unwrap(body), "__code__", None)
    stem = Path(code.co_filename).stem if code is not None else ""
    return stem if stem and not stem.startswith("<") else "duroxide-app"


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


async def _open_store(body: Callable[..., Any], config: _Config, tmp: str) -> Provider:
    provider, db_path = config.provider, config.db_path
    if provider == "memory":
        _log.info("store: in memory (nothing is kept after the program ends)")
        return InMemoryProvider()
    if provider == "postgres":
        url = config.url or os.environ.get("DATABASE_URL")
        if not url:
            raise ConfigurationError("duroxide_main(provider='postgres') needs a database URL",
                                     fix="set DATABASE_URL=postgresql://user@host/db or pass connection_string=...")
        pg = (await PostgresProvider.new(url) if config.pool_size is None
              else await PostgresProvider.new(url, pool_size=config.pool_size))
        _log.info("store: PostgreSQL database %s (schema %s)", _redacted(url), pg.schema)
        return pg
    if provider == "redis":
        url = config.url or os.environ.get("REDIS_URL")
        if not url:
            raise ConfigurationError("duroxide_main(provider='redis') needs a Redis URL",
                                     fix="set REDIS_URL=redis://host:6379/0 or pass redis_url=...")
        redis_store = await RedisProvider.new(url)
        _log.info("store: Redis %s (prefix %s)", _redacted(url), redis_store.prefix)
        return redis_store
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


async def _main(body: Callable[[], Coroutine[Any, Any, Any]], config: _Config) -> Any:
    with tempfile.TemporaryDirectory(prefix="duroxide-") as tmp:
        store = await _open_store(body, config, tmp)
        rt: Runtime | None = None
        token = None
        metrics = None
        tracer_provider = None
        ui = None
        try:
            options = config.options or RuntimeOptions()
            check_declared_queues(options.queues)
            builder = (Runtime.builder().store(store).discover_activities().discover_orchestrations()
                       .options(options))
            if config.metrics:
                metrics = _process_metrics()
                builder.observer(metrics)
                if config.prometheus_port is not None:
                    _serve_once(metrics, config.prometheus_port)
                metrics.start_sampling(store)
            if config.tracing is not None:
                from duroxide_runtime import OpenTelemetryTracing  # imported on use: it loads opentelemetry

                tracer_provider = config.tracing.start()
                builder.observer(OpenTelemetryTracing(tracer_provider))
            rt = await builder.start()
            if config.ui_port is not None:
                from duroxide_runtime import serve_ui  # loads aiohttp: only for programs that serve the UI

                ui = await serve_ui(store, port=config.ui_port)
                _log.info("web UI at %s", ui.url)
            client = rt.client()
            await create_declared_schedules(client)  # @orchestration(schedule=...)
            token = set_ambient_client(client)
            return await body()
        finally:
            if metrics is not None:
                metrics.stop_sampling()
            if token is not None:
                set_ambient_client(None)
            if ui is not None:
                await ui.close()
            if rt is not None:
                await rt.shutdown()
            await store.close()
            if tracer_provider is not None:
                TracingSetup.flush(tracer_provider)  # after shutdown: the last spans are ended by then


# The process's metrics: prometheus_client's default registry takes each metric once, so every run
# of a `duroxide_main` program in this process counts into the same observer (and /metrics server).
_metrics: PrometheusMetrics | None = None
_served: set[int] = set()
_metrics_lock = threading.Lock()


def _process_metrics() -> PrometheusMetrics:
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            import prometheus_client

            from duroxide_runtime import PrometheusMetrics as Metrics  # imported on use: it loads prometheus_client

            _metrics = Metrics(registry=prometheus_client.REGISTRY)
        return _metrics


def _serve_once(metrics: PrometheusMetrics, port: int) -> None:
    with _metrics_lock:
        if port not in _served:
            metrics.serve(port)
            _served.add(port)
