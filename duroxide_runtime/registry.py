"""Registries: which code runs for an activity or orchestration name (and version).

Example::

    activities = ActivityRegistry.builder().register("Greet", greet).build()
    orchestrations = (OrchestrationRegistry.builder()
                      .register("Hello", hello)                       # version 1.0.0
                      .register_versioned("Hello", "2.0.0", hello_v2)
                      .build())
    orchestrations.set_version_policy("Hello", VersionPolicy.exact("1.0.0"))
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from .errors import ConfigurationError
from .engine.execution import OrchestrationFn

__all__ = ["ActivityRegistry", "ActivityRegistryBuilder", "OrchestrationRegistry",
           "OrchestrationRegistryBuilder", "VersionPolicy", "ActivityFn", "DEFAULT_VERSION"]

ActivityFn = Callable[[str], Union[Awaitable[str], str]]
DEFAULT_VERSION = "1.0.0"


def _version_key(version: str) -> tuple[Any, ...]:
    # "1.10.0" sorts after "1.9.0"; non-numeric parts compare as text after numbers.
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+]", version))


@dataclass(frozen=True)
class VersionPolicy:
    """Which version a *new* instance (or a continue-as-new) gets.

    Example::

        registry.set_version_policy("Hello", VersionPolicy.exact("1.0.0"))
    """

    exact_version: str | None = None
    LATEST: ClassVar[VersionPolicy]

    @staticmethod
    def exact(version: str) -> VersionPolicy:
        """Always start ``version``."""
        return VersionPolicy(version)


VersionPolicy.LATEST = VersionPolicy(None)


class ActivityRegistry:
    """Activity name -> callable taking the input string and returning a string."""

    def __init__(self, activities: dict[str, ActivityFn]) -> None:
        self._activities = dict(activities)

    @staticmethod
    def builder() -> ActivityRegistryBuilder:
        """Start an empty builder."""
        return ActivityRegistryBuilder()

    def get(self, name: str) -> ActivityFn | None:
        """The callable for ``name``, or ``None``."""
        return self._activities.get(name)

    def names(self) -> list[str]:
        """Registered names."""
        return sorted(self._activities)

    def merged(self, other: ActivityRegistry) -> ActivityRegistry:
        """A registry with both; a name registered twice must be the same function."""
        merged = dict(self._activities)
        for name, fn in other._activities.items():
            if name in merged and merged[name] is not fn:
                raise ConfigurationError(f"activity {name!r} is registered twice with different functions",
                                         fix="give one of them another name")
            merged[name] = fn
        return ActivityRegistry(merged)


class ActivityRegistryBuilder:
    """Builds an :class:`ActivityRegistry`."""

    def __init__(self) -> None:
        self._activities: dict[str, ActivityFn] = {}

    def register(self, name: str, fn: ActivityFn) -> ActivityRegistryBuilder:
        """Add ``fn`` (``async def`` or plain ``def``, one ``str`` in, ``str`` out) under ``name``."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"activity name must be a non-empty str, got {name!r}", fix="pass a name")
        if not callable(fn):
            raise ConfigurationError(f"activity {name!r}: {fn!r} is not callable", fix="register a function")
        if name in self._activities:
            raise ConfigurationError(f"activity {name!r} is already registered", fix="register each name once")
        self._activities[name] = fn
        return self

    def build(self) -> ActivityRegistry:
        """The finished registry."""
        return ActivityRegistry(self._activities)


class OrchestrationRegistry:
    """Orchestration name -> versions -> ``async def fn(ctx, input: str) -> str``."""

    def __init__(self, orchestrations: dict[str, dict[str, OrchestrationFn]]) -> None:
        self._orchestrations = {n: dict(v) for n, v in orchestrations.items()}
        self._policies: dict[str, VersionPolicy] = {}

    @staticmethod
    def builder() -> OrchestrationRegistryBuilder:
        """Start an empty builder."""
        return OrchestrationRegistryBuilder()

    def names(self) -> list[str]:
        """Registered names."""
        return sorted(self._orchestrations)

    def versions(self, name: str) -> list[str]:
        """Registered versions of ``name``, oldest first."""
        return sorted(self._orchestrations.get(name, {}), key=_version_key)

    def set_version_policy(self, name: str, policy: VersionPolicy) -> None:
        """Choose which version new instances of ``name`` get (running ones keep theirs)."""
        if policy.exact_version is not None and policy.exact_version not in self._orchestrations.get(name, {}):
            raise ConfigurationError(
                f"version policy for {name!r} names version {policy.exact_version!r}, which is not registered "
                f"(registered: {', '.join(self.versions(name)) or 'none'})",
                fix="register that version first, or pick a registered one")
        self._policies[name] = policy

    def pick_version(self, name: str) -> str | None:
        """The version a new instance of ``name`` gets, or ``None`` if ``name`` is unknown."""
        versions = self.versions(name)
        if not versions:
            return None
        policy = self._policies.get(name, VersionPolicy.LATEST)
        return policy.exact_version or versions[-1]

    def get(self, name: str, version: str) -> OrchestrationFn | None:
        """The function for ``name`` at ``version``, or ``None``."""
        return self._orchestrations.get(name, {}).get(version)

    def merged(self, other: OrchestrationRegistry) -> OrchestrationRegistry:
        """A registry with both; one (name, version) registered twice must be the same function."""
        merged = {n: dict(v) for n, v in self._orchestrations.items()}
        for name, versions in other._orchestrations.items():
            for version, fn in versions.items():
                existing = merged.setdefault(name, {}).get(version)
                if existing is not None and existing is not fn:
                    raise ConfigurationError(
                        f"orchestration {name!r} version {version!r} is registered twice with different functions",
                        fix="give one of them another version or name")
                merged[name][version] = fn
        result = OrchestrationRegistry(merged)
        result._policies = {**self._policies, **other._policies}
        return result


class OrchestrationRegistryBuilder:
    """Builds an :class:`OrchestrationRegistry`."""

    def __init__(self) -> None:
        self._orchestrations: dict[str, dict[str, OrchestrationFn]] = {}

    def register(self, name: str, fn: OrchestrationFn) -> OrchestrationRegistryBuilder:
        """Add ``fn`` as version 1.0.0 of ``name``."""
        return self.register_versioned(name, DEFAULT_VERSION, fn)

    def register_versioned(self, name: str, version: str, fn: OrchestrationFn) -> OrchestrationRegistryBuilder:
        """Add ``fn`` as ``version`` of ``name``; several versions of one name coexist."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"orchestration name must be a non-empty str, got {name!r}", fix="pass a name")
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"orchestration {name!r}: {getattr(fn, '__qualname__', fn)!r} is not an async def function",
                fix="declare it as `async def fn(ctx: OrchestrationContext, input: str) -> str`")
        versions = self._orchestrations.setdefault(name, {})
        if version in versions:
            raise ConfigurationError(f"orchestration {name!r} version {version!r} is already registered",
                                     fix="register each (name, version) once")
        versions[version] = fn
        return self

    def build(self) -> OrchestrationRegistry:
        """The finished registry."""
        return OrchestrationRegistry(self._orchestrations)
