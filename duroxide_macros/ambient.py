"""The context in scope at run time: the running orchestration, and the ambient client.

Both are found without arguments: the runtime keeps the running
orchestration's context (``duroxide_runtime.current_orchestration``), and
``duroxide_main`` sets the ambient client for the body it runs.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any

from duroxide_runtime import Client, ConfigurationError, current_orchestration

__all__ = ["current_orchestration", "ambient_client", "set_ambient_client", "client"]

_client: contextvars.ContextVar[Client | None] = contextvars.ContextVar("duroxide_client", default=None)


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


def _forward(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``Client.<name>``, called on the client that is ambient at the time of the call."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def forward_async(self: Client, *args: Any, **kwargs: Any) -> Any:
            return await getattr(ambient_client(), name)(*args, **kwargs)

        return forward_async

    @functools.wraps(method)
    def forward(self: Client, *args: Any, **kwargs: Any) -> Any:
        return getattr(ambient_client(), name)(*args, **kwargs)

    return forward


class _AmbientClient(Client):
    """A client that is whatever client is ambient when it is used (see :data:`client`).

    Every public method of :class:`Client` is forwarded, so the ambient client
    does all the work with its own settings (payload limit, store).
    """

    def __init__(self) -> None:  # no store of its own: it borrows the ambient client's
        pass

    @property
    def store(self) -> Any:
        return ambient_client().store

    @store.setter
    def store(self, value: Any) -> None:
        raise AttributeError("the ambient client's store is the one duroxide_main set up")

    def __repr__(self) -> str:
        return "<ambient duroxide client>"


for _name, _method in list(vars(Client).items()):
    if not _name.startswith("_") and inspect.isfunction(_method):
        setattr(_AmbientClient, _name, _forward(_name, _method))


#: ``client`` in scope inside ``@duroxide_main`` (``from duroxide_macros.prelude import *``):
#: it forwards to the client that ``duroxide_main`` set up for the running body.
client: Client = _AmbientClient()
