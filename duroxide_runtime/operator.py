"""Who an operator is, as recorded in history by recovery operations, cancels and raised events.

Example::

    operator_name()            # "ana@ops-1": the OS user and host of this process
"""

from __future__ import annotations

import functools
import getpass
import socket

__all__ = ["operator_name"]


@functools.cache
def operator_name() -> str:
    """``user@host`` of this process: the default ``by`` of the client's operations."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no LOGNAME
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
