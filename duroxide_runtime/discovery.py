"""Discovery: where ``RuntimeBuilder.discover_*()`` finds functions it was not given.

The runtime knows nothing about decorators. A layer above it (``duroxide_macros``)
registers a :class:`DiscoverySource` when it is imported; ``discover_*()`` merges
what every registered source returns. Before that, the modules named in the
``duroxide`` entry-point group of installed packages are imported, so that
packages the program never imports register their functions too (declared in
their ``pyproject.toml``)::

    [project.entry-points.duroxide]
    provisioning = "infra_provisioning"

Example (what ``duroxide_macros`` does at import)::

    register_discovery_source(DiscoverySource(
        "duroxide_macros", activities=discovered_activities, orchestrations=discovered_orchestrations))
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from .errors import ConfigurationError
from .registry import ActivityRegistry, OrchestrationRegistry

__all__ = ["DiscoverySource", "register_discovery_source", "load_discovery_entry_points",
           "discovered_activity_registry", "discovered_orchestration_registry", "ENTRY_POINT_GROUP"]

#: The entry-point group whose modules discovery imports.
ENTRY_POINT_GROUP = "duroxide"

_sources: dict[str, DiscoverySource] = {}
_entry_points_lock = threading.Lock()
_entry_points_loaded = False


@dataclass(frozen=True)
class DiscoverySource:
    """One place discovery looks: callables returning the registrations it knows now.

    ``name`` identifies the source (registering the same name again replaces it,
    so a module imported twice registers once).

    Example::

        DiscoverySource("my_plugins", activities=lambda: my_activities, orchestrations=lambda: my_orchs)
    """

    name: str
    activities: Callable[[], ActivityRegistry]
    orchestrations: Callable[[], OrchestrationRegistry]


def register_discovery_source(source: DiscoverySource) -> None:
    """Make ``discover_*()`` consult ``source`` (replaces a source of the same name).

    Example::

        register_discovery_source(DiscoverySource("my_plugins", activities=..., orchestrations=...))
    """
    if not isinstance(source, DiscoverySource):
        raise ConfigurationError(f"a discovery source must be a DiscoverySource, got {type(source).__name__}",
                                 fix="wrap the two callables: DiscoverySource(name, activities=..., orchestrations=...)")
    _sources[source.name] = source


def load_discovery_entry_points() -> None:
    """Import every module named in the ``duroxide`` entry-point group (once per process).

    A module that fails to import is a :class:`ConfigurationError` naming the entry point.

    Example::

        load_discovery_entry_points()   # what discover_*() does first
    """
    global _entry_points_loaded
    with _entry_points_lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True  # a failing entry point is reported once, not on every discover_*()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as exc:
            raise ConfigurationError(f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} "
                                     f"failed to import: {type(exc).__name__}: {exc}",
                                     fix="fix or uninstall the package that declares it") from exc


def _sources_for(what: str) -> list[DiscoverySource]:
    load_discovery_entry_points()
    if not _sources:
        raise ConfigurationError(
            f"{what}() has nothing to discover from: no discovery source is registered "
            "(duroxide_macros is not imported, and no installed package names one in the 'duroxide' entry points)",
            fix="import duroxide_macros (or the modules that declare your @activity / @orchestration functions) "
                "before building the runtime, or register functions manually with .activities(...) / "
                ".orchestrations(...)")
    return list(_sources.values())


def discovered_activity_registry() -> ActivityRegistry:
    """Every source's activities, merged (what ``discover_activities()`` adds).

    Example::

        registry = discovered_activity_registry()
    """
    merged = ActivityRegistry({})
    for source in _sources_for("discover_activities"):
        merged = merged.merged(source.activities())
    return merged


def discovered_orchestration_registry() -> OrchestrationRegistry:
    """Every source's orchestrations, merged (what ``discover_orchestrations()`` adds).

    Example::

        registry = discovered_orchestration_registry()
    """
    merged = OrchestrationRegistry({})
    for source in _sources_for("discover_orchestrations"):
        merged = merged.merged(source.orchestrations())
    return merged
