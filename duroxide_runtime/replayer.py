"""Check new code against recorded histories before it ships.

Replays a history (from ``client.read_history`` or a JSON file written by
:func:`history_to_json`) against the current orchestration function, with no
store and no side effects, and raises :class:`NonDeterminismError` if the
code would not reproduce it.

Example::

    events = await client.read_history("order-1")
    Path("order-1.json").write_bytes(history_to_json(events))
    ...
    replay_history(process_order_v2, Path("order-1.json"))   # raises on a mismatch
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from .errors import ErrorCode, NonDeterminismError
from .history import Event, HistoryEvent, decode_event, encode_event
from .engine.execution import OrchestrationFn, TurnInput, execute
from .engine.output import Status

__all__ = ["replay_history", "history_to_json", "history_from_json"]


def history_to_json(events: Sequence[HistoryEvent]) -> bytes:
    """A history as a JSON array (the format :func:`replay_history` reads)."""
    return b"[" + b",".join(encode_event(e) for e in events) + b"]"


def history_from_json(data: bytes | str, *, instance_id: str = "?") -> list[HistoryEvent]:
    """Parse :func:`history_to_json` output; unreadable entries raise ``CorruptHistoryError``."""
    return [decode_event(orjson.dumps(item), instance_id=instance_id) for item in orjson.loads(data)]


def replay_history(fn: OrchestrationFn, history: Sequence[HistoryEvent] | Path | str,
                   *, instance_id: str = "replay") -> None:
    """Replay ``history`` with ``fn``; raise :class:`NonDeterminismError` if the code diverges.

    The code may end earlier than the history (that is allowed); it may not
    make different durable calls, or end differently than a finished history says.
    """
    fn = getattr(fn, "registered_function", fn)  # an @orchestration object: replay its string-API entry
    events = (history_from_json(Path(history).read_bytes(), instance_id=instance_id)
              if isinstance(history, (Path, str)) else list(history))
    if not events or not isinstance(events[0], Event.OrchestrationStarted):
        raise NonDeterminismError("the history to replay does not begin with OrchestrationStarted")
    result = execute(fn, TurnInput(now_ms=events[-1].timestamp_ms, history=events), instance_id=instance_id)
    outcome = result.outcome
    error = outcome.error if outcome is not None else None
    if error is not None and (error.code == ErrorCode.NONDETERMINISM or error.error_type == "NonDeterminismError"):
        # Rebuilt from the structured details: message and fix are stored apart.
        raise NonDeterminismError(error.message, fix=error.fix)
    recorded = next((e for e in events if isinstance(
        e, (Event.OrchestrationCompleted, Event.OrchestrationFailed, Event.OrchestrationContinuedAsNew))), None)
    if recorded is not None:
        expected = {Event.OrchestrationCompleted: Status.COMPLETED, Event.OrchestrationFailed: Status.FAILED,
                    Event.OrchestrationContinuedAsNew: Status.CONTINUED_AS_NEW}[type(recorded)]
        if result.status != expected:
            got = "still running" if result.status == Status.RUNNING else str(result.status)
            raise NonDeterminismError(f"history ends {expected} (event {recorded.event_id}), "
                                      f"but the code now ends {got}")
