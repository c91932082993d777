"""The context in scope at run time: the running orchestration, and the ambient client.

Both are found without arguments: an orchestration runs on its own
``OrchestrationLoop`` (so the running loop leads to its context), and
``duroxide_main`` sets the ambient client for the body it runs.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from duroxide_runtime import Client, OrchestrationContext
from duroxide_runtime.errors import ConfigurationError
from duroxide_runtime.loop import OrchestrationLoop

__all__ = ["current_orchestration", "ambient_client", "set_ambient_client", "client"]

_client: contextvars.ContextVar[Client | None] = contextvars.ContextVar("duroxide_client", default=None)


def current_orchestration() -> OrchestrationContext | None:
    """The context of the orchestration whose code is running now, or ``None``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if isinstance(loop, OrchestrationLoop):
        ctx = getattr(loop._timers, "ctx", None)
        return ctx if isinstance(ctx, OrchestrationContext) else None
    return None


def ambient_client() -> Client:
    """The client ``duroxide_main`` set up; raises with the fix when there is none."""
    client = _client.get()
    if client is None:
        raise ConfigurationError(
            "no client was given and there is no ambient client",
            fix="pass the client as the first argument (process_order.start(client, ...)), "
                "or run inside a @duroxide_main function")
    return client


def set_ambient_client(client: Client | None) -> contextvars.Token[Client | None]:
    """Make ``client`` the ambient client (``duroxide_main`` does this)."""
    return _client.set(client)


class _AmbientClient(Client):
    """A client that is whatever client is ambient when it is used (see :data:`client`)."""

    def __init__(self) -> None:  # no store of its own: it borrows the ambient client's
        pass

    @property
    def store(self) -> Any:
        return ambient_client().store

    @store.setter
    def store(self, value: Any) -> None:
        raise AttributeError("the ambient client's store is the one duroxide_main set up")

    @property
    def _max_payload(self) -> int:  # type: ignore[override]
        return ambient_client()._max_payload

    def __repr__(self) -> str:
        return "<ambient duroxide client>"


#: ``client`` in scope inside ``@duroxide_main`` (``from duroxide_macros.prelude import *``):
#: it forwards to the client that ``duroxide_main`` set up for the running body.
client: Client = _AmbientClient()
