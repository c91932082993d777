"""Start policies: what a start does when its instance id is in use, and idempotency keys.

``Client.start_orchestration(..., if_exists=, idempotency_key=)`` checks its
arguments here, before anything is stored; the stores apply the policy in one
transaction of their own (:meth:`Provider.start_instance
<duroxide_runtime.providers.base.Provider.start_instance>`).

* :class:`IfExists` says what a start does with an id that is taken: fail
  (the default), return the existing instance, or replace a finished one.
* An idempotency key makes a repeated start a no-op that returns the first
  start's instance id, for :data:`IDEMPOTENCY_KEY_TTL` after the first start
  (a client that lost the reply retries with the same key; a second caller
  that names another id gets the first one back). Keys are 1 to
  :data:`MAX_IDEMPOTENCY_KEY_CHARS` characters without control characters.

Example::

    run_id = await client.start_orchestration("report-2024-06", "Report", "{}",
                                              if_exists=IfExists.RETURN_EXISTING,
                                              idempotency_key="report-request-81c2")
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Literal

from .errors import InvalidInputError
from .limits import MAX_ID_CHARS, check_identifier

__all__ = [
    "IfExists", "IfExistsName", "IDEMPOTENCY_KEY_TTL", "IDEMPOTENCY_KEY_TTL_MS", "MAX_IDEMPOTENCY_KEY_CHARS",
    "check_if_exists", "check_idempotency_key",
]


class IfExists(StrEnum):
    """What ``start_orchestration`` does when the instance id is already in use.

    ``FAIL`` (the default): raise :class:`InstanceAlreadyExistsError`; nothing changes.
    ``RETURN_EXISTING``: change nothing and return the id, whatever the instance's state.
    ``REPLACE``: a finished instance (Completed or Failed) is deleted with its history,
    executions, queued messages and sub-orchestrations, as ``purge`` does, and a fresh
    one is created, in one store transaction; a live one (Pending, Running, Suspended)
    is refused with :class:`InstanceStateError`: cancel it first. A running instance is
    never silently killed. Plain strings (``"fail"``, ``"return_existing"``,
    ``"replace"``) are accepted too.

    Example::

        await client.start_orchestration("nightly", "Cleanup", "", if_exists=IfExists.REPLACE)
        await client.start_orchestration("nightly", "Cleanup", "", if_exists="return_existing")
    """

    FAIL = "fail"
    RETURN_EXISTING = "return_existing"
    REPLACE = "replace"


#: The strings :class:`IfExists` accepts, for type checkers (``if_exists="replace"`` type-checks).
IfExistsName = Literal["fail", "return_existing", "replace"]

#: How long a store remembers an idempotency key after the start that recorded it: a start with
#: the same key within this time is a no-op; after it, the key is forgotten (and collected).
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)
#: :data:`IDEMPOTENCY_KEY_TTL` in milliseconds (what the stores compare with their clock).
IDEMPOTENCY_KEY_TTL_MS = int(IDEMPOTENCY_KEY_TTL.total_seconds() * 1000)
#: Longest idempotency key, in characters (the longest instance id: both are index keys).
MAX_IDEMPOTENCY_KEY_CHARS = MAX_ID_CHARS

_CHOICES = ", ".join(repr(p.value) for p in IfExists)


def check_if_exists(value: object) -> IfExists:
    """``value`` as an :class:`IfExists`; anything else raises :class:`InvalidInputError` naming the choices.

    Example: ``check_if_exists("replace") is IfExists.REPLACE``; ``check_if_exists("overwrite")`` raises.
    """
    if isinstance(value, IfExists):
        return value
    if isinstance(value, str):
        try:
            return IfExists(value)
        except ValueError:
            pass
    raise InvalidInputError("if_exists", f"is {repr(value)[:60]}, not one of {_CHOICES}",
                            fix=f"pass IfExists.FAIL, IfExists.RETURN_EXISTING or IfExists.REPLACE (or {_CHOICES})")


def check_idempotency_key(value: object) -> str | None:
    """``value`` if it is ``None`` or a key every store can hold; else :class:`InvalidInputError`
    (empty, over :data:`MAX_IDEMPOTENCY_KEY_CHARS` characters, control characters) or
    :class:`PayloadError` (not a ``str``), naming ``idempotency_key``.

    Example: ``check_idempotency_key("order-81c2")`` returns it; ``check_idempotency_key("")`` raises.
    """
    if value is None:
        return None
    return check_identifier(value, "idempotency_key", MAX_IDEMPOTENCY_KEY_CHARS)
