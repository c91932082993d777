"""The operator's web UI: pages and a JSON API over any store, served in-process with aiohttp.

Needs the ``ui`` extra (``pip install 'duroxide[ui]'``: aiohttp and Jinja2);
importing this package does not load them, :func:`serve` does. From a shell,
``duroxide ui STORE`` serves it; ``@duroxide_main(ui_port=8765)`` serves it
beside a program. See docs/ui.md.

Example::

    server = await serve(store, port=8765, read_only=True)
    print("open", server.url)    # http://127.0.0.1:8765/
    ...
    await server.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .extra import require_ui

if TYPE_CHECKING:
    from ..providers.base import Provider
    from .server import UIServer

__all__ = ["serve", "UIServer"]


async def serve(store: Provider, *, host: str = "127.0.0.1", port: int = 8765, read_only: bool = False,
                token: str | None = None) -> UIServer:
    """Serve the UI of ``store`` on ``host:port`` and return the started server (``.url``, ``await .close()``).

    Binds to loopback by default; any other ``host`` needs a ``token`` (at least 16
    characters), which every request must then carry. ``read_only=True`` shows no
    action and refuses every POST. ``port=0`` picks a free port. Raises
    :class:`ConfigurationError` without the ``ui`` extra, or for a host or token it refuses.

    Example::

        server = await serve(store, host="0.0.0.0", port=8765, token=os.environ["DUROXIDE_UI_TOKEN"])
        try:
            await stop_requested.wait()
        finally:
            await server.close()
    """
    require_ui("the duroxide UI")
    from .server import UIServer

    return await UIServer(store, host=host, port=port, read_only=read_only, token=token).start()


def __getattr__(name: str) -> object:
    # UIServer loads aiohttp: only when asked for.
    if name == "UIServer":
        require_ui("the duroxide UI")
        from .server import UIServer

        return UIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
