"""Text and JSON rendering for the ``duroxide`` command-line tool (see :mod:`duroxide_runtime.cli`).

Everything here is pure: it turns instances, statuses and history events into
strings or JSON-ready objects, and draws the progress counter. Stored text
(ids, names, custom status, outputs, errors) is passed through :func:`inert`
(or ``repr``) before it reaches the terminal, so escape sequences, CR, NUL or
a newline in a stored value are shown as ``\x1b``, ``\r``, ``\x00``, ``\n``
and can neither drive the terminal nor forge lines. ``--json`` output is
JSON-escaped instead. Example::

    for line in timeline(await client.read_history("order-1")):
        print(line)
    # #1  +0.0 ms     OrchestrationStarted process_order@1.0.0('{"id": 1}')
    # #2  +1.0 ms     ActivityScheduled Charge('{"id": 1}')
    # #3  +35.0 ms    ActivityCompleted #2 -> 'ok'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from .errors import ErrorDetails
from .history import Event, HistoryEvent, encode_event
from .pending import PendingCall
from .providers.base import QueueStats
from .schedules import ScheduleInfo
from .status import InstanceInfo

__all__ = [
    "JsonObject", "inert", "short", "format_time", "format_offset", "table", "instance_table", "instance_json",
    "show_text", "show_json", "suspension_of", "describe", "timeline", "execution_outcome", "event_json", "Progress",
]

#: A JSON object as the tool prints it.
JsonObject = dict[str, Any]

#: Longest payload shown inline in tables and timelines (``--json`` prints everything).
PAYLOAD_WIDTH = 60
#: Longest custom status shown in the ``list`` table.
CUSTOM_STATUS_WIDTH = 40


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def inert(text: str | None) -> str:
    """``text`` with every character that is not printable (control and format characters,
    escape sequences, CR, LF, NUL, bidi overrides, lone surrogates) shown as a Python escape
    such as ``\x1b``; printable text, including all other Unicode, is unchanged. ``-`` for None.
    """
    if text is None:
        return "-"
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def short(text: str | None, width: int = PAYLOAD_WIDTH) -> str:
    """``repr`` of a payload, cut to ``width`` characters with an ellipsis (``-`` for None)."""
    if text is None:
        return "-"
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 4] + "...'"


def format_time(ms: int) -> str:
    """Milliseconds since the epoch as UTC ``YYYY-MM-DD HH:MM:SSZ``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_offset(ms: float) -> str:
    """A time relative to the start of an execution: ``+12.0 ms`` below a second, else ``+1.234 s``."""
    sign = "-" if ms < 0 else "+"
    ms = abs(ms)
    return f"{sign}{ms:.1f} ms" if ms < 1000 else f"{sign}{ms / 1000:.3f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for cells in (headers, *rows):
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)] + [cells[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def instance_table(infos: Sequence[InstanceInfo]) -> str:
    """The ``list`` table: id, name, version, status, execution, created, updated, custom status."""
    headers = ("ID", "NAME", "VERSION", "STATUS", "EXEC", "CREATED", "UPDATED", "CUSTOM STATUS")
    rows = [(inert(i.instance_id), inert(i.name), inert(i.version or "-"), inert(i.status), str(i.execution_id),
             format_time(i.created_at_ms),
             format_time(i.updated_at_ms), short(i.custom_status, CUSTOM_STATUS_WIDTH) if i.custom_status else "-")
            for i in infos]
    return table(headers, rows)


def queue_table(stats: Sequence[QueueStats]) -> str:
    """The ``queues`` table: per queue, instances waiting for a slot and running, calls queued and running."""
    headers = ("QUEUE", "INSTANCES WAITING", "INSTANCES RUNNING", "CALLS QUEUED", "CALLS RUNNING")
    return table(headers, [(inert(q.queue), str(q.waiting_instances), str(q.running_instances), str(q.queued_calls),
                            str(q.running_calls)) for q in stats])


def schedule_table(schedules: Sequence[ScheduleInfo]) -> str:
    """The ``schedules`` table: id, cron, orchestration, catch-up, state, next and last tick, last instance.

    The state says ``NOT REGISTERED`` for a schedule whose orchestration no runtime registers:
    its ticks start instances that no runtime runs.
    """
    headers = ("ID", "CRON (UTC)", "ORCHESTRATION", "CATCH-UP", "STATE", "NEXT TICK", "LAST TICK", "LAST INSTANCE")
    rows = [(inert(s.schedule_id), inert(s.cron), inert(s.orchestration), s.catch_up.value, schedule_state(s),
             "-" if s.paused else format_time(s.next_tick_ms),
             "-" if s.last_tick_ms is None else format_time(s.last_tick_ms), inert(s.last_instance_id or "-"))
            for s in schedules]
    return table(headers, rows)


def schedule_state(info: ScheduleInfo) -> str:
    """``paused`` or ``active``, with ``NOT REGISTERED`` when no runtime registers its orchestration."""
    state = "paused" if info.paused else "active"
    return state if info.orchestration_registered else f"{state}, NOT REGISTERED"


def schedule_json(info: ScheduleInfo) -> JsonObject:
    """A schedule as ``--json`` prints it (every :class:`ScheduleInfo` field)."""
    return {**dataclasses.asdict(info), "catch_up": info.catch_up.value}


def instance_json(info: InstanceInfo) -> JsonObject:
    """An instance as a JSON object: the fields of :class:`InstanceInfo`."""
    return dataclasses.asdict(info)


def _details_json(details: ErrorDetails | None) -> JsonObject | None:
    return dataclasses.asdict(details) if details is not None else None


def suspension_of(events: Sequence[HistoryEvent]) -> Event.OrchestrationSuspended | None:
    """The suspension a suspended instance is in: the last ``OrchestrationSuspended`` of its
    current execution's ``events``, unless an ``OrchestrationResumed`` came after it.

    Example::

        suspension_of(await client.read_history("order-1"))   # OrchestrationSuspended(reason='fraud check', ...)
    """
    for event in reversed(events):
        if isinstance(event, Event.OrchestrationResumed):
            return None
        if isinstance(event, Event.OrchestrationSuspended):
            return event
    return None


def _suspension_json(suspension: Event.OrchestrationSuspended | None) -> JsonObject | None:
    if suspension is None:
        return None
    return {"reason": suspension.reason, "by": suspension.by, "at_ms": suspension.timestamp_ms}


def show_json(info: InstanceInfo, details: ErrorDetails | None, executions: Sequence[int],
              state: Mapping[str, str] | None = None,
              suspension: Event.OrchestrationSuspended | None = None,
              pending: Sequence[PendingCall] = ()) -> JsonObject:
    """``show --json``: the instance's fields, its execution ids, its state, the error with its traceback,
    for a suspended instance ``suspended``: who suspended it, why and when (else ``null``), and
    ``waiting_on``: the durable calls its current execution waits on, each with its ``source``."""
    return {**instance_json(info), "executions": list(executions), "state": dict(state or {}),
            "error_details": _details_json(details), "suspended": _suspension_json(suspension),
            "waiting_on": [call.as_json() for call in pending]}


def show_text(info: InstanceInfo, details: ErrorDetails | None, executions: Sequence[int],
              state: Mapping[str, str] | None = None,
              suspension: Event.OrchestrationSuspended | None = None,
              pending: Sequence[PendingCall] = ()) -> str:
    """``show``: one labelled line per field, the state (``ctx.set_state``) one key a line, the calls it
    waits on one a line with the ``file:line`` that made each; output or error (with traceback) last.
    A suspended instance says since when, by whom and why after its status."""
    fields = [
        ("instance", inert(info.instance_id)),
        ("name", inert(info.name)),
        ("version", inert(info.version or "-")),
        ("status", inert(info.status)),
        *([("suspended", _suspended_text(suspension))] if suspension is not None else []),
        ("custom status", inert(info.custom_status)),
        ("execution", f"{info.execution_id} (executions: {', '.join(map(str, executions)) or '-'})"),
        ("parent", inert(info.parent_instance_id or "-")),
        ("created", format_time(info.created_at_ms)),
        ("updated", format_time(info.updated_at_ms)),
    ]
    lines = [f"{label + ':':<15}{value}" for label, value in fields]
    lines += [f"{'state:' if i == 0 else '':<15}{inert(key)} = {short(value)}"
              for i, (key, value) in enumerate(sorted((state or {}).items()))]
    lines += [f"{'waiting on:' if i == 0 else '':<15}{_pending_text(call)}" for i, call in enumerate(pending)]
    if info.output is not None:
        lines.append(f"{'output:':<15}{inert(info.output)}")
    if info.error is not None:
        lines.append(f"{'error:':<15}{inert(info.error)}")
    if details is not None and details.traceback:
        lines.append("traceback:")
        lines += ["  " + inert(line) for line in details.traceback.rstrip("\n").split("\n")]
    return "\n".join(lines)


def _pending_text(call: PendingCall) -> str:
    """``activity 'Charge' at shop/orders.py:42``; a timer says when it fires."""
    due = f" until {format_time(call.fire_at_ms)}" if call.fire_at_ms is not None else ""
    return f"{inert(call.describe())}{due} at {inert(call.source or '?')}"


def _suspended_text(suspension: Event.OrchestrationSuspended) -> str:
    return f"since {format_time(suspension.timestamp_ms)}{_by(suspension.by)}: {short(suspension.reason)}"


def _by(by: str | None) -> str:
    """`` by cli:ana@ops-1`` (who asked for an operator's action), or ``""`` when not recorded."""
    return f" by {inert(by)}" if by else ""


def _call(name: str, version: str | None, payload: str) -> str:
    return f"{inert(name)}{'@' + inert(version) if version else ''}({short(payload)})"


def describe(event: HistoryEvent, start_ms: int) -> str:
    """What one event means, in a few words, e.g. ``ActivityCompleted #2 -> 'Hello'``."""
    kind = type(event).__name__
    match event:
        case Event.OrchestrationStarted(name=name, version=version, input=payload, parent_instance_id=parent):
            return f"{kind} {_call(name, version, payload)}" + (f" (child of {parent!r})" if parent else "")
        case Event.OrchestrationCompleted(output=output):
            return f"{kind} -> {short(output)}"
        case Event.OrchestrationFailed(details=details):
            return f"{kind} {inert(details.to_text())}"
        case Event.OrchestrationCancelRequested(reason=reason, by=by) | \
                Event.OrchestrationSuspended(reason=reason, by=by) | Event.OrchestrationResumed(reason=reason, by=by):
            return f"{kind} {short(reason)}{_by(by)}"
        case Event.OrchestrationRewound(reason=reason, by=by, voided=voided):
            skipped = ", ".join(f"#{v}" for v in voided) or "nothing"
            return f"{kind} {short(reason)}{_by(by)}; voided {skipped}"
        case Event.OrchestrationRestarted(reason=reason, by=by, new_instance_id=new_id, next_execution_id=nxt):
            target = f"as instance {new_id!r}" if new_id else f"as execution {nxt}" if nxt else "afresh"
            return f"{kind} {target} {short(reason)}{_by(by)}"
        case Event.OrchestrationContinuedAsNew(input=payload, version=version):
            return f"{kind} with {short(payload)}" + (f" at version {inert(version)}" if version else "")
        case Event.ActivityScheduled(name=name, input=payload):
            return f"{kind} {_call(name, None, payload)}"
        case Event.ActivityCompleted(source_event_id=sid, result=result) | \
                Event.SubOrchestrationCompleted(source_event_id=sid, result=result):
            return f"{kind} #{sid} -> {short(result)}"
        case Event.ActivityFailed(source_event_id=sid, details=details) | \
                Event.SubOrchestrationFailed(source_event_id=sid, details=details):
            return f"{kind} #{sid} {inert(details.to_text())}"
        case Event.TimerCreated(fire_at_ms=fire_at):
            return f"{kind} fires at {format_offset(fire_at - start_ms)}"
        case Event.TimerFired(source_event_id=sid):
            return f"{kind} #{sid}"
        case Event.SubOrchestrationScheduled(name=name, version=version, instance_id=iid, input=payload) | \
                Event.OrchestrationChained(name=name, version=version, instance_id=iid, input=payload):
            return f"{kind} {_call(name, version, payload)} as {iid!r}"
        case Event.EventSubscribed(name=name):
            return f"{kind} {name!r}"
        case Event.EventRaised(name=name, data=data):
            return f"{kind} {name!r} {short(data)}"
        case Event.SystemCall(op=op, value=value):
            return f"{kind} {inert(op)} = {short(value)}"
        case Event.StateSet(key=key, value=value):
            return f"{kind} {inert(repr(key))} = {short(value)}"
        case Event.StreamEmitted(offset=offset, value=value):
            return f"{kind} #{offset} {short(value)}"
        case Event.UpdateSubscribed(name=name):
            return f"{kind} {inert(repr(name))}"
        case Event.UpdateRequested(name=name, request_id=rid, data=data):
            return f"{kind} {inert(repr(name))} {short(data)} (request {inert(repr(rid))})"
        case Event.UpdateReplied(name=name, request_id=rid, result=result, rejected=rejected):
            answer = f"-> {short(result)}" if rejected is None else f"rejected: {short(rejected)}"
            return f"{kind} {inert(repr(name))} {answer} (request {inert(repr(rid))})"
        case _:
            return kind


def _at(event: HistoryEvent) -> str:
    """`` at shop/orders.py:42`` for a schedule event that recorded the line of its call, else ``""``."""
    source: str | None = getattr(event, "source", None)
    return f"  at {inert(source)}" if source else ""


def timeline(events: Sequence[HistoryEvent]) -> list[str]:
    """One line per event: ``#id``, time since the execution started, :func:`describe`, and where it was called."""
    if not events:
        return []
    start = events[0].timestamp_ms
    width = len(f"#{events[-1].event_id}")
    return [f"{('#' + str(e.event_id)).rjust(width)}  {format_offset(e.timestamp_ms - start):<11}  "
            f"{describe(e, start)}{_at(e)}" for e in events]


#: The events that end an execution, and how the ``history`` header names each ending.
_ENDINGS: tuple[tuple[type[HistoryEvent], str], ...] = (
    (Event.OrchestrationCompleted, "Completed"),
    (Event.OrchestrationFailed, "Failed"),
    (Event.OrchestrationContinuedAsNew, "ContinuedAsNew"),
)


def execution_outcome(events: Sequence[HistoryEvent], current_status: str | None) -> str:
    """How one execution ended, for the ``history`` header.

    The instance's status describes only its current execution: an earlier one
    ended with continue-as-new (``ContinuedAsNew``), whatever the instance did
    later. ``current_status`` is the instance's status when ``events`` are its
    current execution's (shown while that execution has not ended), else None.
    Example::

        execution_outcome(await client.read_history("count-1", 1), None)   # 'ContinuedAsNew'
    """
    for event in reversed(events):
        if isinstance(event, Event.OrchestrationRewound):
            break  # the ending before it was rewound: the execution goes on
        for kind, label in _ENDINGS:
            if isinstance(event, kind):
                return label
    return inert(current_status) if current_status is not None else "not ended"


def event_json(event: HistoryEvent) -> JsonObject:
    """An event as stored: ``{"type": "ActivityCompleted", "event_id": 3, ...}``."""
    body: JsonObject = orjson.loads(encode_event(event))
    return body


class Progress:
    """A one-line ``[#####.....] 12/40`` counter on a stream, redrawn in place; silent when disabled."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO, *, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.enabled = enabled and total > 0
        self.done = 0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done and redraw."""
        self.done += n
        if self.enabled:
            filled = self.WIDTH * min(self.done, self.total) // self.total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        """End the line (if anything was drawn)."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()
