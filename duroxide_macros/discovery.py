"""Auto-discovery: every decorated function, in this program and in installed packages.

Decorating registers the function here (the Python form of the seed's
link-time slices). Functions in other installed packages are found through
the ``duroxide`` entry-point group: ``discover_*()`` imports each entry
point's module, which registers its decorated functions as it is imported.

Declare them in the package's ``pyproject.toml``::

    [project.entry-points.duroxide]
    provisioning = "infra_provisioning"
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from duroxide_runtime import runtime as _runtime
from duroxide_runtime.errors import ConfigurationError
from duroxide_runtime.registry import ActivityRegistry, OrchestrationRegistry

if TYPE_CHECKING:
    from .decorators import Activity, Orchestration

__all__ = ["register_activity", "register_orchestration", "discovered_activities",
           "discovered_orchestrations", "load_entry_points", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "duroxide"
_log = logging.getLogger("duroxide.discovery")
_activities: dict[str, Activity[Any, Any]] = {}
_orchestrations: dict[tuple[str, str], Orchestration[Any, Any]] = {}
_loaded_entry_points = False


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


def load_entry_points() -> None:
    """Import every module named in the ``duroxide`` entry-point group (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as exc:
            raise ConfigurationError(f"entry point {ep.name!r} ({ep.value}) of group 'duroxide' failed to import: "
                                     f"{type(exc).__name__}: {exc}",
                                     fix="fix or uninstall the package that declares it") from exc


def discovered_activities() -> ActivityRegistry:
    """An ActivityRegistry of every decorated activity."""
    load_entry_points()
    builder = ActivityRegistry.builder()
    for name, act in _activities.items():
        builder.register(name, act.registered_function())
    return builder.build()


def discovered_orchestrations() -> OrchestrationRegistry:
    """An OrchestrationRegistry of every decorated orchestration version."""
    load_entry_points()
    builder = OrchestrationRegistry.builder()
    for (name, version), orch in _orchestrations.items():
        builder.register_versioned(name, version, orch.registered_function)
    return builder.build()


if discovered_activities not in _runtime.activity_discovery:
    _runtime.activity_discovery.append(discovered_activities)
    _runtime.orchestration_discovery.append(discovered_orchestrations)
