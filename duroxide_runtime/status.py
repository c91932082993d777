"""``OrchestrationStatus`` (matchable) and ``InstanceInfo``.

Example::

    match await client.wait_for_orchestration("order-1", 30):
        case OrchestrationStatus.Completed(output=out): print(out)
        case OrchestrationStatus.Failed(error=err): print("failed:", err)
        case OrchestrationStatus.Running() | OrchestrationStatus.Pending(): print("still going")
        case OrchestrationStatus.NotFound(): print("no such instance")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar, Union

from .errors import ErrorDetails

__all__ = ["OrchestrationStatus", "StatusOf", "InstanceInfo", "InstanceInfoPage"]

T = TypeVar("T")


class OrchestrationStatus(Generic[T]):
    """Where an instance stands; one of the variants below, each a dataclass."""

    # The variants are module-level classes (Pending, Running, Completed, Failed, NotFound);
    # the _-names below are their aliases, since inside this class body `Pending` is the attribute.
    Pending: ClassVar[type[_Pending]]
    Running: ClassVar[type[_Running]]
    Suspended: ClassVar[type[_Suspended]]
    Completed: ClassVar[type[_Completed[Any]]]
    Failed: ClassVar[type[_Failed]]
    NotFound: ClassVar[type[_NotFound]]

    @property
    def is_terminal(self) -> bool:
        """True for Completed and Failed."""
        return isinstance(self, (Completed, Failed))


@dataclass(frozen=True)
class Pending(OrchestrationStatus[Any]):
    """Started by the client; no turn has run yet."""

    custom_status: str | None = None


@dataclass(frozen=True)
class Running(OrchestrationStatus[Any]):
    """Running (or waiting on durable work)."""

    custom_status: str | None = None


@dataclass(frozen=True)
class Suspended(OrchestrationStatus[Any]):
    """Suspended by ``suspend_instance``: runs no code until ``resume_instance`` (not terminal)."""

    custom_status: str | None = None


@dataclass(frozen=True)
class Completed(OrchestrationStatus[T]):
    """Finished; ``output`` is what it returned."""

    output: T
    custom_status: str | None = None


@dataclass(frozen=True)
class Failed(OrchestrationStatus[Any]):
    """Ended with an error (exception, cancellation, poison, non-determinism)."""

    error: str
    details: ErrorDetails | None = None
    custom_status: str | None = None


@dataclass(frozen=True)
class NotFound(OrchestrationStatus[Any]):
    """No such instance in the store."""


_Pending = Pending
_Running = Running
_Suspended = Suspended
_Completed = Completed
_Failed = Failed
_NotFound = NotFound
for _cls in (Pending, Running, Suspended, Completed, Failed, NotFound):
    setattr(OrchestrationStatus, _cls.__name__, _cls)

#: ``OrchestrationStatus[T]`` spelled as the union of its variants - what the typed helpers
#: (``wait``, ``status``, ``poll_until_complete``) return. Both type checkers narrow a union by
#: ``match``/``isinstance`` keeping ``Completed[T]``'s output type; from the class
#: ``OrchestrationStatus[T]`` mypy narrows to ``Completed[Any]`` (it does not carry type
#: arguments into a subclass), pyright to ``Completed[T]``. Annotate with ``StatusOf[T]``
#: where mypy should see the output type after a ``match``.
StatusOf: TypeAlias = Union[Pending, Running, Suspended, Completed[T], Failed, NotFound]


@dataclass(frozen=True)
class InstanceInfo:
    """Metadata of an instance, as ``client.get_instance_info`` returns it."""

    instance_id: str
    name: str
    version: str | None
    status: str
    execution_id: int
    output: str | None
    error: str | None
    custom_status: str | None
    created_at_ms: int
    updated_at_ms: int
    parent_instance_id: str | None


@dataclass(frozen=True)
class InstanceInfoPage:
    """One page of ``client.query_instances``: instances newest first, and the cursor of the next page.

    ``next_cursor`` is ``None`` on the last page; pass it back as ``cursor=`` to read on.

    Example::

        page = await client.query_instances(status="Failed", limit=20)
        while page.next_cursor is not None:
            page = await client.query_instances(status="Failed", limit=20, cursor=page.next_cursor)
    """

    instances: list[InstanceInfo]
    next_cursor: str | None
