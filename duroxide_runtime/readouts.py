"""What clients read out of an instance's history: its state, its stream items, update answers.

State, streams and update replies are history events (``StateSet``,
``StreamEmitted``, ``UpdateRequested``/``UpdateReplied``), so no store keeps
anything of its own for them: these functions fold a history into what the
client returns. The CLI uses them too.

Example::

    history = await store.read_history("order-1")
    state_of(history)                    # {"progress": '{"done":3,"total":10}'}
    [i.value for i in stream_of(history, execution_id=1)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .history import Event, HistoryEvent

__all__ = ["StreamItem", "state_of", "stream_of", "update_answer"]

T = TypeVar("T")


@dataclass(frozen=True)
class StreamItem(Generic[T]):
    """One item of an instance's stream, as ``client.stream`` yields it.

    ``offset`` counts from 0 across the instance's executions (pass ``offset + 1``
    as ``from_offset`` to resume after it); ``value`` is the item (decoded into the
    stream's type, or the text itself); ``timestamp_ms`` is when its turn ran.

    Example::

        async for item in client.stream("import-7", item_type=Progress):
            bar.update(item.value.done)
    """

    offset: int
    value: T
    execution_id: int
    timestamp_ms: int


def state_of(history: Sequence[HistoryEvent]) -> dict[str, str]:
    """The state at the end of ``history``: what its start carried over, then every ``StateSet`` in order."""
    state: dict[str, str] = {}
    for event in history:
        if isinstance(event, Event.OrchestrationStarted):
            state = dict(event.state or {})
        elif isinstance(event, Event.StateSet):
            state[event.key] = event.value
    return state


def stream_of(history: Sequence[HistoryEvent], execution_id: int, from_offset: int = 0) -> list[StreamItem[str]]:
    """The stream items recorded in ``history`` (one execution) at ``from_offset`` or later."""
    return [StreamItem(e.offset, e.value, execution_id, e.timestamp_ms) for e in history
            if isinstance(e, Event.StreamEmitted) and e.offset >= from_offset]


def update_answer(history: Sequence[HistoryEvent], request_id: str) -> tuple[bool, Event.UpdateReplied | None]:
    """Whether request ``request_id`` is recorded in ``history``, and its answer if it has one."""
    requested = False
    for event in history:
        if isinstance(event, Event.UpdateRequested) and event.request_id == request_id:
            requested = True
        elif isinstance(event, Event.UpdateReplied) and event.request_id == request_id:
            return True, event
    return requested, None
