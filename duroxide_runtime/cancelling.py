"""A cancel that an awaited call dropped, honoured at the next safe point.

Python 3.11's ``asyncio.wait_for`` returns normally when a cancel arrives together
with the awaited result, and store clients use it inside (asyncpg, redis-py around
every command). A loop that kept going after such a call would make ``asyncio.run()``
(an exception after ``start()`` without ``shutdown()``, or Ctrl-C) wait for it, up to
a poll interval or for ever. ``Task.cancelling()`` still counts the request, so loops
check it before they sleep or retry.
"""

from __future__ import annotations

import asyncio

__all__ = ["raise_if_cancel_requested"]


def raise_if_cancel_requested() -> None:
    """Raise ``CancelledError`` if this task was asked to cancel, even if some await dropped the request.

    Example::

        while True:
            reply = await store_call()      # may have dropped a cancel that came with its reply
            raise_if_cancel_requested()     # so check before sleeping or retrying
            await asyncio.sleep(poll)
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError()
