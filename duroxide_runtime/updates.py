"""Updates: a client's request that the orchestration answers (``client.update`` / ``ctx.wait_for_update``).

The request is recorded in the instance's history when it arrives (once per
request id, however often the client asks), the answer when the code gives
it: a client asking again with the same request id gets the recorded answer,
so each request is answered exactly once even across restarts of the client or
the runtime.

Example::

    while True:
        req = await ctx.wait_for_update("add_item", Item)    # UpdateRequest[Item]
        if req.data.sku in sold_out:
            req.reject("sold out")                           # the client raises UpdateRejectedError
        else:
            cart.append(req.data)
            req.reply(cart)                                  # the client's update() returns it
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .engine.commands import ReplyUpdate
from .limits import MAX_REASON_CHARS, check_text
from .typed import encode_payload

__all__ = ["UpdateRequest"]

T = TypeVar("T")


class UpdateRequest(Generic[T]):
    """One update request, as ``await ctx.wait_for_update(name, T)`` hands it to orchestration code.

    ``data`` is the request's data (decoded into ``T``; the text itself without a
    type); ``request_id`` identifies it across retries of the client. Answer it
    once, with :meth:`reply` or :meth:`reject`; a second answer raises
    :class:`UpdateAlreadyRepliedError` and changes nothing.

    Example::

        req = await ctx.wait_for_update("add_item", Item)
        req.reply(add(cart, req.data))
    """

    def __init__(self, name: str, request_id: str, data: T, answer: Callable[[ReplyUpdate], object]) -> None:
        self.name = name
        self.request_id = request_id
        self.data = data
        self._answer = answer

    def reply(self, value: object = None) -> None:
        """Answer with ``value`` (a ``str`` as is, anything else as JSON); the client's ``update`` returns it.

        A value that cannot be encoded raises :class:`PayloadError` here, before anything is recorded.
        """
        result = encode_payload(value, f"reply to update {self.name!r}")
        self._answer(ReplyUpdate(request_id=self.request_id, name=self.name, result=result))

    def reject(self, reason: str) -> None:
        """Refuse the request; the client's ``update`` raises :class:`UpdateRejectedError` with ``reason``."""
        check_text(reason, "reject reason", MAX_REASON_CHARS)
        self._answer(ReplyUpdate(request_id=self.request_id, name=self.name, rejected=reason))

    def __repr__(self) -> str:
        return f"<UpdateRequest {self.name!r} {self.request_id!r} data={self.data!r}>"
