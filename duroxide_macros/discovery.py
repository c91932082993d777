"""Auto-discovery: every decorated function, in this program and in installed packages.

Decorating registers the function here (the Python form of the seed's
link-time slices); importing this module registers it with the runtime as a
:class:`duroxide_runtime.DiscoverySource`, which ``RuntimeBuilder.discover_*()``
consults. Functions in other installed packages are found through the
``duroxide`` entry-point group: ``discover_*()`` imports each entry point's
module, which registers its decorated functions as it is imported.

Declare them in the package's ``pyproject.toml``::

    [project.entry-points.duroxide]
    provisioning = "infra_provisioning"
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from duroxide_runtime import (
    DEFAULT_QUEUE,
    ActivityRegistry,
    Client,
    ConfigurationError,
    DiscoverySource,
    OrchestrationRegistry,
    UnknownQueueError,
    load_discovery_entry_points,
    register_discovery_source,
)

if TYPE_CHECKING:
    from .decorators import Activity, Orchestration

__all__ = ["register_activity", "register_orchestration", "discovered_activities",
           "discovered_orchestrations", "check_declared_queues", "create_declared_schedules"]

_log = logging.getLogger("duroxide.discovery")
_activities: dict[str, Activity[Any, Any]] = {}
_orchestrations: dict[tuple[str, str], Orchestration[Any, Any]] = {}


def _origin(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def register_activity(act: Activity[Any, Any]) -> None:
    """Record a decorated activity (a module imported twice re-registers the same function)."""
    old = _activities.get(act.name)
    if old is not None and _origin(old.fn) != _origin(act.fn):
        raise ConfigurationError(
            f"activity name {act.name!r} is used by both {_origin(old.fn)} and {_origin(act.fn)}",
            fix="give one of them another name: @activity(name=...)")
    _activities[act.name] = act


def register_orchestration(orch: Orchestration[Any, Any]) -> None:
    """Record a decorated orchestration version."""
    key = (orch.name, orch.version)
    old = _orchestrations.get(key)
    if old is not None and _origin(old.fn) != _origin(orch.fn):
        raise ConfigurationError(
            f"orchestration {orch.name!r} version {orch.version!r} is declared by both {_origin(old.fn)} "
            f"and {_origin(orch.fn)}", fix="give one of them another version or name")
    _orchestrations[key] = orch


def discovered_activities() -> ActivityRegistry:
    """An ActivityRegistry of every decorated activity."""
    load_discovery_entry_points()
    builder = ActivityRegistry.builder()
    for name, act in _activities.items():
        builder.register(name, act.registered_function())
    return builder.build()


def check_declared_queues(queues: Collection[str]) -> None:
    """Refuse to start when a decorated activity or orchestration names a queue ``queues`` does not configure.

    Raises :class:`UnknownQueueError` naming the first such queue and who declared it, so a
    misspelt ``@activity(queue=...)`` or ``@orchestration(queue=...)`` stops the program at
    start, not at its first call or start.
    """
    declared = [(act.queue, f"activity {act.name!r}") for act in _activities.values()]
    declared += [(orch.queue, f"orchestration {orch.name!r}") for orch in _orchestrations.values()]
    for queue, who in declared:
        if queue is not None and queue != DEFAULT_QUEUE and queue not in queues:
            raise UnknownQueueError(queue, [DEFAULT_QUEUE, *sorted(queues)], declared_by=who)


def discovered_orchestrations() -> OrchestrationRegistry:
    """An OrchestrationRegistry of every decorated orchestration version."""
    load_discovery_entry_points()
    builder = OrchestrationRegistry.builder()
    for (name, version), orch in _orchestrations.items():
        builder.register_versioned(name, version, orch.registered_function)
    return builder.build()


async def create_declared_schedules(client: Client) -> list[str]:
    """Create or update the schedule of every ``@orchestration(schedule=...)``; returns their ids.

    The id is the orchestration's name. ``replace=True``: a schedule whose cron is unchanged
    keeps its next tick, so every process of a deployment may do this at start. A
    schedule whose declaration was removed stays in the store (delete it with
    ``duroxide schedule delete STORE ID`` or ``client.delete_schedule``).
    """
    made = []
    for orch in _orchestrations.values():
        if orch.schedule is not None:
            await client.create_schedule(orch.name, orch.schedule.cron, orch.name, orch.schedule.input,
                                         catch_up=orch.schedule.catch_up, replace=True)
            made.append(orch.name)
    return made


register_discovery_source(DiscoverySource(
    "duroxide_macros", activities=discovered_activities, orchestrations=discovered_orchestrations))
