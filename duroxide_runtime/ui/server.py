"""The UI server: an aiohttp application on the caller's event loop, started and stopped with the program.

It runs in-process (``web.AppRunner`` + ``web.TCPSite``), so ``duroxide ui``
and ``@duroxide_main(ui_port=...)`` serve it beside whatever else the loop
runs. Every answer goes through three middlewares, outermost first: the
security headers, the error answer (a 4xx JSON ``{"error", "message", "fix"}``
under ``/api/``, an HTML page elsewhere; never a traceback), and the request
guard of :mod:`.security` (host, token, read-only, origin, CSRF).

Example::

    server = await UIServer(store, port=0).start()
    print(server.url)        # http://127.0.0.1:41234/
    await server.close()
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from ..client import Client
from ..options import RuntimeOptions
from ..providers.base import Provider
from . import api, pages, schedules
from .bulk import BulkJobs
from .context import UI, UIContext, page
from .httperrors import ApiError, Problem, problem_of
from .render import STATIC, environment
from .security import SECURITY_HEADERS, Security, check_binding

__all__ = ["UIServer"]

_log = logging.getLogger("duroxide.ui")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The security headers on every answer, errors and redirects included, and the server's time
    (``Server-Timing: app;dur=<ms>``: what the store and the rendering took, without the network)."""
    started = time.perf_counter()
    response = await handler(request)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _http_problem(exc: web.HTTPException, request: web.Request) -> Problem:
    """aiohttp's own refusals (no such route, wrong method, body too large) as a Problem."""
    if exc.status == 404:
        return Problem(404, "NOT_FOUND", f"nothing at {request.path[:120]!r}",
                       fix="see /api/ routes in docs/ui.md, or start from the overview at /")
    if exc.status == 405:
        return Problem(405, "METHOD_NOT_ALLOWED", f"{request.method} is not accepted at {request.path[:120]!r}",
                       fix="actions are POSTs; pages and reads are GETs")
    if exc.status == 413:
        return Problem(413, "BODY_TOO_LARGE", "the request body is too large",
                       fix="send a smaller payload (the store's payload limit applies)")
    return Problem(exc.status, "HTTP_" + str(exc.status), exc.reason, None)


def _answer(request: web.Request, problem: Problem) -> web.Response:
    if request.path.startswith("/api/") and not api.wants_html(request):
        return web.json_response(problem.json(), status=problem.status)
    try:
        return page(request, "error.html", status=problem.status, problem=problem)
    except Exception:  # noqa: BLE001 - the error page must not fail in turn
        return web.Response(text=f"{problem.status} {problem.code}", status=problem.status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Exceptions as answers: 4xx for what the request got wrong, 5xx with no detail for the rest."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _answer(request, _http_problem(exc, request))
    except Exception as exc:
        problem = problem_of(exc)
        if problem.status >= 500:
            _log.error("UI request %s %s failed", request.method, request.path, exc_info=exc)
        elif not isinstance(exc, ApiError):
            _log.info("UI request %s %s refused: %s", request.method, request.path, exc)
        return _answer(request, problem)


class UIServer:
    """The web UI of one store, served over HTTP on ``host:port``.

    ``read_only``: no action is shown and every POST is refused (403). ``token``:
    every request must carry it (required beyond loopback). ``port=0`` picks a
    free port; :attr:`url` says which once started.

    Example::

        async with UIServer(store, port=0, read_only=True) as server:
            print("open", server.url)
    """

    def __init__(self, store: Provider, *, host: str = "127.0.0.1", port: int = 8765, read_only: bool = False,
                 token: str | None = None, client: Client | None = None) -> None:
        check_binding(host, token)
        self.store = store
        self.host = host
        self.port = port
        self.read_only = read_only
        self._token = token
        self.client = client if client is not None else Client(store)
        self.security = Security(token=token, read_only=read_only, bound_host=host)
        self._jobs = BulkJobs(self.client)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application (routes, middlewares, the shared context)."""
        # Bodies up to a payload and its form encoding; the client refuses larger payloads anyway.
        app = web.Application(middlewares=[_headers, _errors, self.security.guard],
                              client_max_size=4 * RuntimeOptions.max_payload_bytes)
        app[UI] = UIContext(self.client, self.security, environment(), self._jobs)
        app.add_routes(api.routes)
        app.add_routes(pages.routes)
        app.add_routes(schedules.routes)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        return app

    async def start(self) -> UIServer:
        """Listen; returns the server (its :attr:`url` is known from now on)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        self.security.port = self.port
        return self

    @property
    def url(self) -> str:
        """``http://host:port/`` (the port the server got when ``port=0``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        """Stop listening, cancel running bulk jobs, close open connections."""
        await self._jobs.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> UIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
