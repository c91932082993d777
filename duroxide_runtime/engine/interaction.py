"""What an execution shares with its clients beside its result: state, a stream, and update replies.

:class:`Interaction` keeps the bookkeeping the command buffer needs for
``ctx.set_state``, ``ctx.emit`` and update requests, rebuilt identically on
replay because it only ever changes as history is recorded or replayed:

* the state (key -> encoded value), starting from what continue-as-new carried over;
* the offset the next stream item gets (offsets count across executions);
* which update requests arrived (a repeated ask is recorded once) and which were
  answered (a second answer is refused), and those still unanswered (they carry
  over at continue-as-new).

Example::

    interaction = Interaction("cart-1")
    interaction.begin({"items": "[]"}, stream_offset=4)
    interaction.recorded(Event.StateSet(event_id=2, key="items", value='["a"]'))
    interaction.state["items"]          # '["a"]'
"""

from __future__ import annotations

from ..errors import UpdateAlreadyRepliedError
from ..history import Event, HistoryEvent
from .commands import ReplyUpdate, UpdateArrival

__all__ = ["Interaction"]


class Interaction:
    """State, stream offset and update requests of one execution; see the module docstring."""

    def __init__(self, instance_id: str) -> None:
        self._instance_id = instance_id
        #: key -> encoded value, as the code has set it so far.
        self.state: dict[str, str] = {}
        #: The offset of the next ``ctx.emit``.
        self.stream_next = 0
        self._seen: set[str] = set()
        #: Requests not answered yet, in arrival order: request id -> (update name, arrival).
        self._unanswered: dict[str, tuple[str, UpdateArrival]] = {}
        self._answered: set[str] = set()

    def begin(self, state: dict[str, str] | None, stream_offset: int) -> None:
        """The execution starts with ``state`` and stream offset carried over by continue-as-new."""
        self.state = dict(state or {})
        self.stream_next = stream_offset

    def requested(self, event: Event.UpdateRequested) -> None:
        """An update request was recorded (or replayed)."""
        self._seen.add(event.request_id)
        self._unanswered[event.request_id] = (event.name, UpdateArrival(event.request_id, event.data))

    def seen(self, request_id: str) -> bool:
        """Whether ``request_id`` is already recorded in this execution."""
        return request_id in self._seen

    def check_reply(self, command: ReplyUpdate) -> None:
        """Refuse a second answer to one request, before anything is matched or recorded."""
        if command.request_id in self._answered:
            raise UpdateAlreadyRepliedError(self._instance_id, command.name, command.request_id)

    def recorded(self, event: HistoryEvent) -> None:
        """A ``StateSet``, ``StreamEmitted`` or ``UpdateReplied`` was recorded (or replayed)."""
        if isinstance(event, Event.StateSet):
            self.state[event.key] = event.value
        elif isinstance(event, Event.StreamEmitted):
            self.stream_next = event.offset + 1
        elif isinstance(event, Event.UpdateReplied):
            self._answered.add(event.request_id)
            self._unanswered.pop(event.request_id, None)

    def unanswered(self) -> list[tuple[str, UpdateArrival]]:
        """Requests nobody answered, oldest first: they carry over at continue-as-new."""
        return list(self._unanswered.values())
