"""Runtime observers: how metrics (and later tracing) learn what the runtime does.

An observer gets a call for each thing worth counting. Calls happen once per
real event: an orchestration's start and end are reported when the turn that
recorded them is committed, never again on replay.

Example::

    class Printer(RuntimeObserver):
        def orchestration_finished(self, e: OrchestrationFinished) -> None:
            print(e.name, e.status, f"{e.duration_s:.3f}s")

    rt = await Runtime.builder().store(store).observer(Printer()).orchestrations(orchs).start()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RuntimeObserver", "OrchestrationStarted", "OrchestrationFinished", "TurnReplayed",
           "ActivityStarted", "ActivityFinished", "ActivityHeartbeat", "Observers"]

_log = logging.getLogger("duroxide.observe")


@dataclass(frozen=True)
class OrchestrationStarted:
    """An execution began (its ``OrchestrationStarted`` event was committed)."""

    name: str
    version: str
    instance_id: str
    execution_id: int


@dataclass(frozen=True)
class OrchestrationFinished:
    """An execution ended: ``status`` is Completed, Failed or ContinuedAsNew."""

    name: str
    version: str
    instance_id: str
    execution_id: int
    status: str
    duration_s: float
    error_type: str | None = None
    #: When the execution started and ended (ms since the epoch, from its history).
    started_ms: int = 0
    ended_ms: int = 0
    #: Traceparents of the execution and of its starter (see ``tracecontext``).
    trace_context: str | None = None
    parent_trace_context: str | None = None


@dataclass(frozen=True)
class TurnReplayed:
    """An instance was rebuilt from stored history (cache miss or replay-from-scratch mode)."""

    name: str
    instance_id: str
    events: int
    duration_s: float


@dataclass(frozen=True)
class ActivityStarted:
    """An activity call began: ``attempt`` of the call under its ``RetryPolicy`` (1, 2, ...),
    handed to a worker for the ``delivery``-th time (> 1: a worker died or lost the lease)."""

    name: str
    instance_id: str
    attempt: int
    execution_id: int = 0
    event_id: int = 0
    #: Traceparent of the calling execution.
    trace_context: str | None = None
    delivery: int = 1


@dataclass(frozen=True)
class ActivityFinished:
    """An activity call ended (``ok`` False when it raised or was cancelled)."""

    name: str
    instance_id: str
    ok: bool
    duration_s: float
    execution_id: int = 0
    event_id: int = 0
    error_type: str | None = None


@dataclass(frozen=True)
class ActivityHeartbeat:
    """A write of an activity call's heartbeat reached the store.

    ``details`` is the encoded details written (``None``: a beat that only said "alive",
    such as the one a call with a ``heartbeat_timeout`` writes as it starts);
    ``recorded`` is False when the store refused it because the call's lease was lost
    (the call is then cancelled).
    """

    name: str
    instance_id: str
    execution_id: int
    event_id: int
    attempt: int
    details: str | None
    recorded: bool


class RuntimeObserver:
    """Base class: override what you need; every method does nothing by default."""

    def orchestration_started(self, event: OrchestrationStarted) -> None:
        """An execution began."""

    def orchestration_finished(self, event: OrchestrationFinished) -> None:
        """An execution ended."""

    def turn_replayed(self, event: TurnReplayed) -> None:
        """Stored history was replayed to rebuild an instance."""

    def activity_started(self, event: ActivityStarted) -> None:
        """An activity call began."""

    def activity_finished(self, event: ActivityFinished) -> None:
        """An activity call ended."""

    def activity_heartbeat(self, event: ActivityHeartbeat) -> None:
        """An activity call's heartbeat was written (or refused: its lease was lost)."""


class Observers(RuntimeObserver):
    """Fans each call out to several observers; a failing observer is logged, never fatal."""

    def __init__(self, observers: Sequence[RuntimeObserver] = ()) -> None:
        self.observers = list(observers)

    def _each(self, method: str, event: object) -> None:
        for obs in self.observers:
            try:
                getattr(obs, method)(event)
            except Exception:  # noqa: BLE001 - observing must never break the runtime
                _log.exception("observer %r failed in %s", obs, method)

    def orchestration_started(self, event: OrchestrationStarted) -> None:
        self._each("orchestration_started", event)

    def orchestration_finished(self, event: OrchestrationFinished) -> None:
        self._each("orchestration_finished", event)

    def turn_replayed(self, event: TurnReplayed) -> None:
        self._each("turn_replayed", event)

    def activity_started(self, event: ActivityStarted) -> None:
        self._each("activity_started", event)

    def activity_finished(self, event: ActivityFinished) -> None:
        self._each("activity_finished", event)

    def activity_heartbeat(self, event: ActivityHeartbeat) -> None:
        self._each("activity_heartbeat", event)
