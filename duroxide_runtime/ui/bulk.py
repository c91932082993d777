"""Bulk actions in the background: one job per request, its progress read by the page while it runs.

``POST /api/bulk/cancel`` with a filter starts a job that applies the
operation to every instance the filter selects (``operations.run_bulk``) and
answers at once with the job's id; ``GET /api/bulk/{job}`` reports how far it
got, which instances failed and why, and whether it finished. The server keeps
the last :data:`MAX_JOBS` jobs and cancels those still running when it closes.

Example::

    jobs = BulkJobs(client)
    job = jobs.start(Operation.CANCEL, InstanceFilter(status="Running"), reason="maintenance", by="ui:127.0.0.1")
    jobs.get(job.job_id).as_json()   # {"job": ..., "done": 3, "total": 10, "finished": False, ...}
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..client import Client
from ..operations import BulkProgress, Operation, run_bulk
from .filters import InstanceFilter
from .httperrors import ApiError, Problem, problem_of

__all__ = ["BulkJob", "BulkJobs", "MAX_JOBS"]

_log = logging.getLogger("duroxide.ui")
#: Jobs remembered (finished ones are forgotten oldest first).
MAX_JOBS = 100


@dataclass
class BulkJob:
    """One bulk action: what, on which filter, and how far it got."""

    job_id: str
    action: str
    filter: InstanceFilter
    started_at_ms: int
    total: int | None = None
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    problem: Problem | None = None
    task: asyncio.Task[None] | None = None

    def progressed(self, progress: BulkProgress) -> None:
        """The operation reports its progress (after each instance)."""
        self.total = progress.total
        self.done = progress.done
        self.failed = dict(progress.failed)

    def as_json(self) -> dict[str, Any]:
        """The job as ``GET /api/bulk/{job}`` answers it."""
        return {"job": self.job_id, "action": self.action, "filter": self.filter.as_json(),
                "started_at_ms": self.started_at_ms, "total": self.total, "done": self.done,
                "failed": self.failed, "finished": self.finished,
                "error": self.problem.json() if self.problem is not None else None}


class BulkJobs:
    """The jobs of one UI server.

    Example::

        job = jobs.start(Operation.SUSPEND, parse_filter(request.query), reason="", by="ui:127.0.0.1")
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._jobs: collections.OrderedDict[str, BulkJob] = collections.OrderedDict()

    def start(self, op: Operation, flt: InstanceFilter, *, reason: str, by: str) -> BulkJob:
        """Start ``op`` on every instance ``flt`` selects (from its first page; its cursor and limit are ignored)."""
        self._forget_finished()
        job = BulkJob(secrets.token_hex(8), str(op), flt, self._client.clock.now_ms())
        job.task = asyncio.get_running_loop().create_task(self._run(job, op, reason, by),
                                                          name=f"duroxide ui bulk {op}")
        self._jobs[job.job_id] = job
        return job

    async def _run(self, job: BulkJob, op: Operation, reason: str, by: str) -> None:
        query = job.filter.with_cursor(None).query()
        try:
            result = await run_bulk(self._client, op, query, reason=reason, by=by, progress=job.progressed)
            job.progressed(result)
        except asyncio.CancelledError:
            job.problem = Problem(503, "CANCELLED", "the UI stopped before the bulk action finished",
                                  "run it again: instances already done are in the wrong state for it now "
                                  "and are reported as failures")
            raise
        except Exception as exc:  # noqa: BLE001 - reported on the job, not lost in a task nobody awaits
            _log.warning("bulk %s failed: %s", op, exc, exc_info=not isinstance(exc, ApiError))
            job.problem = problem_of(exc)
        finally:
            job.finished = True

    def get(self, job_id: str) -> BulkJob:
        """The job ``job_id``; 404 if this server has no such job."""
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, "JOB_NOT_FOUND", f"no bulk job {job_id[:40]!r} on this UI",
                           fix="start one with POST /api/bulk/ACTION; jobs are forgotten when the UI restarts")
        return job

    def _forget_finished(self) -> None:
        while len(self._jobs) >= MAX_JOBS:
            oldest = next((k for k, j in self._jobs.items() if j.finished), None)
            if oldest is None:
                raise ApiError(429, "TOO_MANY_JOBS", f"{MAX_JOBS} bulk jobs are still running",
                               fix="wait for some to finish")
            del self._jobs[oldest]

    async def close(self) -> None:
        """Cancel the jobs still running and wait for them to stop."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
