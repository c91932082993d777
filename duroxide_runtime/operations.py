"""Operator actions by name, one instance or every instance a filter selects (the CLI and the UI use these).

Each :class:`Operation` maps to one :class:`~duroxide_runtime.client.Client`
method. :func:`run_bulk` first takes a snapshot of the ids the filter selects
(so instances leaving the filter as they are acted on, say suspended ones
under ``status=Running``, neither stop nor repeat the walk), then applies the
operation to each in turn: one instance that cannot be acted on fails alone,
with its reason, and the others go on.

Example::

    report = await run_bulk(client, Operation.SUSPEND, InstanceQuery(status="Running", name="Order"),
                            reason="payment provider down", progress=lambda p: print(p.done, "/", p.total))
    report.failed        # {"order-7": "cannot suspend instance 'order-7': it is Completed ..."}
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from .client import Client
from .errors import DuroxideError
from .providers.base import InstanceQuery

__all__ = ["Operation", "BulkProgress", "apply_operation", "run_bulk", "select_ids"]

#: Ids read per page while taking the snapshot of a filter.
_PAGE = 500


class Operation(enum.StrEnum):
    """An operator's action on an instance; the value is its name in the CLI and the UI's API."""

    SUSPEND = "suspend"
    RESUME = "resume"
    REWIND = "rewind"
    RESTART = "restart"
    CANCEL = "cancel"
    PURGE = "purge"


@dataclass
class BulkProgress:
    """How far a bulk operation is: ``done`` of ``total`` instances acted on; ``failed`` maps id -> why."""

    total: int
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Every selected instance was acted on (or failed)."""
        return self.done >= self.total


async def apply_operation(client: Client, operation: Operation, instance_id: str, *, reason: str = "",
                          by: str | None = None) -> None:
    """Apply ``operation`` to one instance; raises what the client method raises (typed errors).

    ``reason`` empty: the client method's default reason. Restart reuses the instance id;
    cancel that finds the instance already finished raises nothing (as ``cancel_instance``).

    Example::

        await apply_operation(client, Operation.REWIND, "order-1", reason="tax service fixed", by="ui:10.0.0.7")
    """
    if operation is Operation.SUSPEND:
        await client.suspend_instance(instance_id, reason or "suspended", by=by)
    elif operation is Operation.RESUME:
        await client.resume_instance(instance_id, reason or "resumed", by=by)
    elif operation is Operation.REWIND:
        await client.rewind_instance(instance_id, reason or "rewound", by=by)
    elif operation is Operation.RESTART:
        await client.restart_instance(instance_id, reason=reason or "restarted", by=by)
    elif operation is Operation.CANCEL:
        await client.cancel_instance(instance_id, reason or "cancelled", by=by)
    else:
        await client.purge(instance_id)


async def select_ids(client: Client, query: InstanceQuery) -> list[str]:
    """Every instance id ``query``'s filters select (its ``cursor`` and ``limit`` are ignored), newest first."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await client.query_instances(status=query.status, name=query.name, version=query.version,
                                            q=query.q, cursor=cursor, limit=_PAGE)
        ids.extend(info.instance_id for info in page.instances)
        cursor = page.next_cursor
        if cursor is None:
            return ids


async def run_bulk(client: Client, operation: Operation, query: InstanceQuery, *, reason: str = "",
                   by: str | None = None,
                   progress: Callable[[BulkProgress], None] | None = None) -> BulkProgress:
    """Apply ``operation`` to every instance ``query`` selects; returns (and reports after each) the progress.

    An instance that cannot be acted on (wrong state, gone meanwhile) is recorded in
    ``failed`` with the error's text and the walk goes on.
    """
    ids = await select_ids(client, query)
    report = BulkProgress(total=len(ids))
    if progress is not None:
        progress(report)
    for instance_id in ids:
        try:
            await apply_operation(client, operation, instance_id, reason=reason, by=by)
        except DuroxideError as err:
            report.failed[instance_id] = str(err)
        report.done += 1
        if progress is not None:
            progress(report)
    return report
