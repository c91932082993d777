"""``duroxide ui STORE [--host 127.0.0.1] [--port 8765] [--read-only] [--token TOKEN]``: serve the UI until stopped.

It prints the address to open (with ``?token=`` when a token is set: opening it
once signs the browser in), then serves until SIGINT or SIGTERM and stops
cleanly (exit code 0). The token may come from ``$DUROXIDE_UI_TOKEN`` instead
of the command line, where other users of the machine could read it. Without
the ``ui`` extra it exits 1 naming ``pip install 'duroxide[ui]'``.

Example::

    duroxide ui app.db --read-only
    duroxide ui postgresql://db/prod --host 0.0.0.0 --port 8080 --token "$(cat ~/.duroxide-ui-token)"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..client import Client

if TYPE_CHECKING:
    from ..cli import Options, Output

__all__ = ["add_ui_command", "cmd_ui", "TOKEN_ENV"]

#: Environment variable holding the token when ``--token`` is not given.
TOKEN_ENV = "DUROXIDE_UI_TOKEN"


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def add_ui_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``ui`` to the ``duroxide`` sub-commands (``commands`` is their ``add_subparsers()`` object)."""
    p = commands.add_parser("ui", parents=[common], help="serve the web UI and its JSON API for the store")
    p.add_argument("store_arg", metavar="STORE", nargs="?",
                   help="SQLite path or sqlite:// URL, postgresql:// URL or redis:// URL (default: --store or $DUROXIDE_STORE)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=_port, default=8765, help="port to listen on (default 8765; 0: any free port)")
    p.add_argument("--read-only", action="store_true", help="show no action and refuse every POST")
    p.add_argument("--token", default=None,
                   help=f"every request must carry it (default: ${TOKEN_ENV}); required off loopback")


def resolve_token(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """``--token`` falls back to ``$DUROXIDE_UI_TOKEN`` (an empty value means none)."""
    if args.token is None:
        args.token = environ.get(TOKEN_ENV) or None


@contextlib.contextmanager
def _stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, from now on (installed before the address is printed, so a
    signal sent as soon as it appears stops the server cleanly); the handlers are removed afterwards."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def cmd_ui(client: Client, opts: Options, out: Output) -> int:
    """``ui``: serve until SIGINT/SIGTERM; prints the address to open."""
    from . import serve  # loads aiohttp (or names the extra to install)

    args = opts.args
    with _stop_signals() as stop:
        server = await serve(client.store, host=args.host, port=args.port, read_only=args.read_only,
                             token=args.token)
        try:
            address = server.url + (f"?token={quote(args.token, safe='')}" if args.token else "")
            mode = " (read-only)" if args.read_only else ""
            out.emit(f"duroxide UI{mode} at {address}\npress Ctrl-C to stop",
                     {"url": server.url, "read_only": bool(args.read_only), "token": bool(args.token)})
            out.out.flush()
            await stop.wait()
        finally:
            await server.close()
    out.note("stopped")
    return 0
