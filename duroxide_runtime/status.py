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
from typing import Any, ClassVar, Generic, TypeVar

from .errors import ErrorDetails

__all__ = ["OrchestrationStatus", "InstanceInfo"]

T = TypeVar("T")


class OrchestrationStatus(Generic[T]):
    """Where an instance stands; one of the variants below, each a dataclass."""

    Pending: ClassVar[type[_Pending]]
    Running: ClassVar[type[_Running]]
    Completed: ClassVar[type[_Completed[Any]]]
    Failed: ClassVar[type[_Failed]]
    NotFound: ClassVar[type[_NotFound]]

    @property
    def is_terminal(self) -> bool:
        """True for Completed and Failed."""
        return isinstance(self, (_Completed, _Failed))


@dataclass(frozen=True)
class _Pending(OrchestrationStatus[Any]):
    """Started by the client; no turn has run yet."""

    custom_status: str | None = None


@dataclass(frozen=True)
class _Running(OrchestrationStatus[Any]):
    """Running (or waiting on durable work)."""

    custom_status: str | None = None


@dataclass(frozen=True)
class _Completed(OrchestrationStatus[T]):
    """Finished; ``output`` is what it returned."""

    output: T
    custom_status: str | None = None


@dataclass(frozen=True)
class _Failed(OrchestrationStatus[Any]):
    """Ended with an error (exception, cancellation, poison, non-determinism)."""

    error: str
    details: ErrorDetails | None = None
    custom_status: str | None = None


@dataclass(frozen=True)
class _NotFound(OrchestrationStatus[Any]):
    """No such instance in the store."""


for _cls, _name in ((_Pending, "Pending"), (_Running, "Running"), (_Completed, "Completed"),
                    (_Failed, "Failed"), (_NotFound, "NotFound")):
    _cls.__name__ = _cls.__qualname__ = _name
    setattr(OrchestrationStatus, _name, _cls)


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
