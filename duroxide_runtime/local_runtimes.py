"""The orchestrations the runtimes running in this process know, per store object.

A :class:`~duroxide_runtime.Runtime` registers its orchestration registry here
for its store when it starts and removes it when it shuts down. A
:class:`~duroxide_runtime.Client` of the same store *object* asks
:func:`refusal` before it creates an instance: when a runtime of that store
runs in this process, a name (or explicit version) none of them registered is
refused at once with :class:`UnknownOrchestrationError`, instead of being
stored and backed off until ``max_attempts`` poisons it.

Without a runtime of that store object in this process (a client-only
process, or a client on a store object of its own) nothing is checked: which
names the other processes know cannot be told from here, so the runtimes back
off until one knows the name (a rolling deploy). Keyed weakly by the store and
by the runtime, as :mod:`duroxide_runtime.wake` is, so a store or runtime that
is dropped without shutting down leaves nothing behind.

Example::

    register(store, rt, rt.orchestration_registry)   # Runtime.start() does this
    refusal(store, "Helo", None)   # UnknownOrchestrationError: ... did you mean 'Hello'? ...
    unregister(store, rt)                            # Runtime.shutdown() does this
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

from collections.abc import Collection, Sequence

from .errors import UnknownOrchestrationError, UnknownQueueError
from .providers.base import LockOffer, OrchestrationItem, Provider
from .queues import DEFAULT_QUEUE

if TYPE_CHECKING:
    from .registry import OrchestrationRegistry

__all__ = ["register", "unregister", "refusal", "queue_refusal", "taker", "Taker"]

_local: weakref.WeakKeyDictionary[Provider, weakref.WeakKeyDictionary[object, OrchestrationRegistry]] = (
    weakref.WeakKeyDictionary())
_queues: weakref.WeakKeyDictionary[Provider, weakref.WeakKeyDictionary[object, frozenset[str]]] = (
    weakref.WeakKeyDictionary())
_takers: weakref.WeakKeyDictionary[Provider, weakref.WeakKeyDictionary[object, Taker]] = weakref.WeakKeyDictionary()


class Taker(Protocol):
    """A dispatcher of this process that takes instances locked for it (eager dispatch)."""

    def lock_offer(self) -> LockOffer | None:
        """What a write may lock for it now (``None``: nothing, it is busy)."""

    async def take_locked(self, items: Sequence[OrchestrationItem]) -> None:
        """Run the turns of ``items``, locked under its offer."""


def register(store: Provider, runtime: object, registry: OrchestrationRegistry,
             queues: Collection[str] = (), taker: Taker | None = None) -> None:
    """``runtime`` runs ``registry``'s orchestrations on ``store`` in this process, with ``queues``
    configured; its dispatcher ``taker`` may be handed the instances a client starts (:func:`taker`)."""
    _local.setdefault(store, weakref.WeakKeyDictionary())[runtime] = registry
    _queues.setdefault(store, weakref.WeakKeyDictionary())[runtime] = frozenset(queues)
    if taker is not None:
        _takers.setdefault(store, weakref.WeakKeyDictionary())[runtime] = taker


def unregister(store: Provider, runtime: object) -> None:
    """``runtime`` no longer runs on ``store`` (harmless if it was not registered)."""
    for table in (_local, _queues, _takers):
        runtimes = table.get(store)
        if runtimes is not None:
            runtimes.pop(runtime, None)


def taker(store: Provider) -> tuple[Taker, LockOffer] | None:
    """A dispatcher of this process running on ``store`` that waits idle, with its offer, or ``None``.

    Example::

        found = taker(store)
        item = await store.create_instance(start, lock=found[1] if found else None)
    """
    for candidate in list((_takers.get(store) or {}).values()):
        offer = candidate.lock_offer()
        if offer is not None:
            return candidate, offer
    return None


def queue_refusal(store: Provider, queue: str) -> UnknownQueueError | None:
    """Why starting an instance in ``queue`` must be refused here, or ``None``.

    ``None`` when no runtime of ``store`` runs in this process, or one configures the queue.
    """
    configured = list((_queues.get(store) or {}).values())
    if not configured or any(queue in q for q in configured):
        return None
    return UnknownQueueError(queue, [DEFAULT_QUEUE, *sorted(set().union(*configured))])


def refusal(store: Provider, name: str, version: str | None) -> UnknownOrchestrationError | None:
    """Why starting ``name`` (at ``version``, or the policy's) must be refused here, or ``None``.

    ``None`` when no runtime of ``store`` runs in this process (nothing to check
    against) or one of them knows the name, and the version if one is given.
    """
    registries = list((_local.get(store) or {}).values())
    if not registries:
        return None
    versions = list(dict.fromkeys(v for r in registries for v in r.versions(name)))  # each oldest first
    if versions and (version is None or version in versions):
        return None
    known = sorted({n for r in registries for n in r.names()})
    return UnknownOrchestrationError(name, version, known, versions=versions)
