"""What each page and its API answer show, read from the store once per request.

The HTML pages and the JSON API share these: :func:`load_instance` (one
instance with its history, what it waits on, its children and the actions
its status allows), :func:`load_overview` (counts, failures, queue depths,
the per-minute chart) and :func:`version_rows`.

Example::

    view = await load_instance(client, "order-1")
    [call.source for call in view.pending]   # ['shop/orders.py:42']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..client import Client
from ..cli_format import event_json
from ..errors import ErrorDetails
from ..history import Event, HistoryEvent
from ..limits import MAX_EXECUTION_ID
from ..pending import PendingCall, pending_calls
from ..providers.base import FailureGroup, QueueDepths, QueueStats
from ..status import InstanceInfo, OrchestrationStatus
from .charts import MinuteChart, per_minute_chart
from .filters import STATUSES
from .httperrors import ApiError

__all__ = ["ACTIONS", "BULK_ACTIONS", "actions_for", "parse_execution", "ChildLink", "InstanceView",
           "load_instance", "history_json", "CountRow", "OverviewView", "load_overview", "version_rows", "jsonable"]

#: Every action on one instance, in the order the page shows them.
ACTIONS = ("suspend", "resume", "rewind", "restart", "cancel", "raise", "purge")
#: The actions a filter can apply to many instances at once.
BULK_ACTIONS = ("suspend", "resume", "rewind", "restart", "cancel", "purge")

_BY_STATUS = {
    "Pending": ("suspend", "cancel", "raise"),
    "Running": ("suspend", "cancel", "raise"),
    "Suspended": ("resume", "cancel", "raise"),
    "Failed": ("rewind", "restart", "purge"),
    "Completed": ("restart", "purge"),
}


def actions_for(status: str) -> tuple[str, ...]:
    """The actions offered for an instance with ``status`` (others answer 409 if tried).

    Example::

        actions_for("Failed")   # ('rewind', 'restart', 'purge')
    """
    return _BY_STATUS.get(status, ())


def parse_execution(text: str | None) -> int | None:
    """The ``execution`` parameter: a whole number from 1, or None when absent; 400 otherwise."""
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_EXECUTION_ID:
        raise ApiError(400, "BAD_EXECUTION", f"execution {text[:30]!r} is not a whole number from 1",
                       fix="pass execution=N with N one of the instance's executions (1 is the first)")
    return int(text)


@dataclass(frozen=True)
class ChildLink:
    """A sub-orchestration (or a detached orchestration) the execution started."""

    instance_id: str
    name: str
    event_id: int
    detached: bool


@dataclass(frozen=True)
class InstanceView:
    """One instance as its page shows it: metadata, the shown execution's history, what it waits on."""

    info: InstanceInfo
    details: ErrorDetails | None
    executions: list[int]
    execution_id: int
    history: list[HistoryEvent]
    input: str | None
    pending: list[PendingCall]
    children: list[ChildLink]
    state: dict[str, str]

    @property
    def is_current(self) -> bool:
        """Whether the shown execution is the instance's current one."""
        return self.execution_id == self.info.execution_id

    @property
    def actions(self) -> tuple[str, ...]:
        """The actions its status allows."""
        return actions_for(self.info.status)

    def as_json(self) -> dict[str, Any]:
        """``GET /api/instances/{id}``."""
        return {"instance": dataclasses.asdict(self.info), "input": self.input,
                "error_details": dataclasses.asdict(self.details) if self.details is not None else None,
                "executions": self.executions, "execution_id": self.execution_id, "state": self.state,
                "pending": [p.as_json() for p in self.pending],
                "parent_instance_id": self.info.parent_instance_id,
                "children": [dataclasses.asdict(c) for c in self.children], "actions": list(self.actions)}


def _children(history: Iterable[HistoryEvent]) -> list[ChildLink]:
    links = []
    for event in history:
        if isinstance(event, Event.SubOrchestrationScheduled):
            links.append(ChildLink(event.instance_id, event.name, event.event_id, False))
        elif isinstance(event, Event.OrchestrationChained):
            links.append(ChildLink(event.instance_id, event.name, event.event_id, True))
    return links


async def load_instance(client: Client, instance_id: str, execution: int | None = None) -> InstanceView:
    """Instance ``instance_id`` with execution ``execution`` (default: the current one); 404 if either is unknown."""
    info = await client.get_instance_info(instance_id)
    executions = await client.list_executions(instance_id)
    shown = execution if execution is not None else info.execution_id
    if execution is not None and execution not in executions:
        raise ApiError(404, "EXECUTION_NOT_FOUND", f"instance {instance_id[:80]!r} has no execution {execution}",
                       fix=f"pick one of: {', '.join(map(str, executions)) or 'none recorded yet'}")
    history = await client.read_history(instance_id, shown) if shown in executions else []
    status = await client.get_orchestration_status(instance_id)
    details = status.details if isinstance(status, OrchestrationStatus.Failed) else None
    started = next((e for e in history if isinstance(e, Event.OrchestrationStarted)), None)
    current = shown == info.execution_id
    return InstanceView(info, details, executions, shown, history, started.input if started else None,
                        pending_calls(history) if current else [], _children(history),
                        await client.get_states(instance_id) if current else {})


def history_json(view: InstanceView) -> dict[str, Any]:
    """``GET /api/instances/{id}/history``: the shown execution's events as stored."""
    return {"instance_id": view.info.instance_id, "execution_id": view.execution_id,
            "executions": view.executions, "events": [event_json(e) for e in view.history]}


@dataclass(frozen=True)
class CountRow:
    """Instances of one name (and version), by status."""

    name: str
    version: str | None
    by_status: dict[str, int]

    @property
    def total(self) -> int:
        """All its instances."""
        return sum(self.by_status.values())

    def as_json(self) -> dict[str, Any]:
        """The row as the API answers it."""
        return {"name": self.name, "version": self.version, "by_status": self.by_status, "total": self.total,
                "running": self.by_status.get("Running", 0)}


@dataclass(frozen=True)
class OverviewView:
    """The overview page: counts, failures by error type, queue depths and the last hour's chart."""

    by_status: dict[str, int]
    by_name: list[CountRow]
    by_version: list[CountRow]
    failures: list[FailureGroup]
    depths: QueueDepths
    chart: MinuteChart
    #: Per queue holding work: instances waiting for a slot or running, calls queued or running.
    queues: list[QueueStats]

    def as_json(self) -> dict[str, Any]:
        """``GET /api/overview``."""
        return {"by_status": self.by_status, "by_name": [r.as_json() for r in self.by_name],
                "by_version": [r.as_json() for r in self.by_version],
                "failures": [jsonable(f) for f in self.failures], "depths": jsonable(self.depths),
                "queues": [jsonable(q) for q in self.queues],
                "finished_per_minute": [{"minute_ms": b.minute_ms, **{s.status: s.count for s in b.segments}}
                                        for b in self.chart.bars]}


def _rows(counts: Iterable[Any], *, with_version: bool) -> list[CountRow]:
    table: dict[tuple[str, str | None], dict[str, int]] = {}
    for c in counts:
        key = (c.name, c.version if with_version else None)
        by_status = table.setdefault(key, {})
        by_status[c.status] = by_status.get(c.status, 0) + c.count
    return [CountRow(name, version, by_status)
            for (name, version), by_status in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]


async def load_overview(client: Client) -> OverviewView:
    """The overview of the last hour, as of now."""
    overview = await client.overview(since=timedelta(hours=1))
    by_status = {s: 0 for s in STATUSES}
    for c in overview.counts:
        by_status[c.status] = by_status.get(c.status, 0) + c.count
    return OverviewView(by_status, _rows(overview.counts, with_version=False),
                        _rows(overview.counts, with_version=True), list(overview.failures), overview.depths,
                        per_minute_chart(overview.finished_per_minute, now_ms=client.clock.now_ms()),
                        await client.queue_stats())


async def version_rows(client: Client) -> list[CountRow]:
    """Every orchestration name and version with its instances by status."""
    overview = await client.overview(since=timedelta(minutes=1))
    return _rows(overview.counts, with_version=True)


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and lists as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
