"""``Runtime``: the dispatchers of one process, and its builder.

Example::

    rt = await (Runtime.builder()
          .store(store)
          .activities(ActivityRegistry.builder().register("Greet", greet).build())
          .orchestrations(OrchestrationRegistry.builder().register("Hello", hello).build())
          .start())
    ...
    await rt.shutdown()
"""

from __future__ import annotations

import asyncio
import logging

from . import local_runtimes
from .client import Client
from .clock import Clock
from .discovery import discovered_activity_registry, discovered_orchestration_registry
from .dispatch.activities import ActivityWorker
from .dispatch.orchestrations import OrchestrationDispatcher
from .errors import ConfigurationError
from .observe import Observers, RuntimeObserver
from .options import RuntimeOptions
from .providers.base import Provider
from .registry import ActivityRegistry, OrchestrationRegistry
from .scheduler import Scheduler
from .wake import wake_hub

__all__ = ["Runtime", "RuntimeBuilder"]

_log = logging.getLogger("duroxide.runtime")

def _report_crash(task: asyncio.Task[None]) -> None:
    """A runtime loop ended by an error (not a cancel): say so, instead of leaving it to shutdown's gather."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        _log.error("runtime task %s stopped by an unexpected error; this process no longer runs it",
                   task.get_name(), exc_info=exc)


class RuntimeBuilder:
    """Collects the store, registries and options; ``await .start()`` runs the runtime."""

    def __init__(self) -> None:
        self._store: Provider | None = None
        self._activities = ActivityRegistry({})
        self._orchestrations = OrchestrationRegistry({})
        self._options = RuntimeOptions()
        self._observers: list[RuntimeObserver] = []
        self._clock: Clock | None = None

    def observer(self, observer: RuntimeObserver) -> RuntimeBuilder:
        """Add an observer of runtime events (metrics, tracing); several may be added."""
        self._observers.append(observer)
        return self

    def store(self, store: Provider) -> RuntimeBuilder:
        """The store to run on (required)."""
        if not isinstance(store, Provider):
            raise ConfigurationError(f"store must be a Provider, got {type(store).__name__}",
                                     fix="pass SqliteProvider / InMemoryProvider / PostgresProvider")
        self._store = store
        return self

    def clock(self, clock: Clock) -> RuntimeBuilder:
        """The time source of the runtime (default: its store's clock, ``store.clock``).

        The runtime, its store and its clients must share one clock: the store
        stamps locks, leases and due times with it and the runtime waits for
        them with it. So the clock given here must be the store's; ``start()``
        raises :class:`ConfigurationError` if it is not (create the store with
        ``clock=`` instead). Example::

            clock = ManualClock()
            store = InMemoryProvider(clock=clock)
            rt = await Runtime.builder().store(store).clock(clock).start()
        """
        if not isinstance(clock, Clock):
            raise ConfigurationError(f"clock must be a Clock, got {type(clock).__name__}",
                                     fix="pass SystemClock(), a duroxide_runtime.testing.ManualClock, or an object "
                                         "with now_ms(), monotonic(), sleep() and wait()")
        self._clock = clock
        return self

    def activities(self, registry: ActivityRegistry) -> RuntimeBuilder:
        """Add a manual activity registry (mixes with discovery)."""
        self._activities = self._activities.merged(registry)
        return self

    def orchestrations(self, registry: OrchestrationRegistry) -> RuntimeBuilder:
        """Add a manual orchestration registry (mixes with discovery)."""
        self._orchestrations = self._orchestrations.merged(registry)
        return self

    def discover_activities(self) -> RuntimeBuilder:
        """Add every activity the registered discovery sources know (``@activity`` functions
        once ``duroxide_macros`` is imported; see :mod:`duroxide_runtime.discovery`)."""
        self._activities = self._activities.merged(discovered_activity_registry())
        return self

    def discover_orchestrations(self) -> RuntimeBuilder:
        """Add every orchestration the registered discovery sources know (``@orchestration``
        functions once ``duroxide_macros`` is imported)."""
        self._orchestrations = self._orchestrations.merged(discovered_orchestration_registry())
        return self

    def options(self, options: RuntimeOptions) -> RuntimeBuilder:
        """Runtime options (defaults: ``RuntimeOptions()``)."""
        self._options = options
        return self

    async def start(self) -> Runtime:
        """Start the dispatchers and return the running runtime."""
        if self._store is None:
            raise ConfigurationError("Runtime.builder() has no store", fix="call .store(provider) before .start()")
        if self._clock is not None and self._clock != self._store.clock:
            raise ConfigurationError(
                f"the runtime's clock ({self._clock!r}) is not its store's ({self._store.clock!r}): the store "
                "would stamp locks, leases and timers in one time and the runtime wait for them in another",
                fix="create the store with the same clock (e.g. InMemoryProvider(clock=clock), "
                    "SqliteProvider.new(url, clock=clock)), or leave out .clock(...) to use the store's")
        rt = Runtime(self._store, self._activities, self._orchestrations, self._options,
                     Observers(self._observers))
        rt._start()
        return rt


class Runtime:
    """The running dispatchers of this process over one store."""

    def __init__(self, store: Provider, activities: ActivityRegistry, orchestrations: OrchestrationRegistry,
                 options: RuntimeOptions, observer: RuntimeObserver | None = None) -> None:
        self.store = store
        self.options = options
        self.activity_registry = activities
        self.orchestration_registry = orchestrations
        self.observer = observer or Observers()
        #: The runtime's time source: always its store's (see RuntimeBuilder.clock).
        self.clock = store.clock
        self._worker = ActivityWorker(store, activities, options, self.observer, clock=self.clock)
        self._dispatcher = OrchestrationDispatcher(store, orchestrations, options, self._worker,
                                                   self.observer, clock=self.clock)
        self._worker.dispatcher = self._dispatcher
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @staticmethod
    def builder() -> RuntimeBuilder:
        """Start building a runtime."""
        return RuntimeBuilder()

    def client(self) -> Client:
        """A client of this runtime's store."""
        return Client(self.store, max_payload_bytes=self.options.max_payload_bytes)

    def _start(self) -> None:
        # Clients of this store object in this process now refuse names this runtime does not know.
        local_runtimes.register(self.store, self, self.orchestration_registry, self.options.queues,
                                taker=self._dispatcher)
        for i in range(self.options.orchestration_concurrency):
            self._tasks.append(asyncio.create_task(self._dispatcher.run(self._stopping),
                                                   name=f"duroxide-orchestrations-{i}"))
        self._tasks.append(asyncio.create_task(self._worker.run(self._stopping), name="duroxide-activities"))
        if self.options.run_schedules:
            scheduler = Scheduler(self.store, self.orchestration_registry, self.options)
            self._tasks.append(asyncio.create_task(scheduler.run(self._stopping), name="duroxide-schedules"))
        self._flusher = asyncio.create_task(self._worker.flush_results(self._stopping), name="duroxide-results")
        for task in (*self._tasks, self._flusher):
            task.add_done_callback(_report_crash)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop taking work, let running activities finish (up to ``grace`` seconds),
        record their results, and stop. Unfinished work is redelivered later; nothing is lost.

        After ``grace``, ``async def`` activities are cancelled and their calls given back
        at once. A plain ``def`` activity runs in a thread that cannot be interrupted:
        giving its call back would let another process run it at the same time, so it
        keeps its lease (renewed) until it returns, and this waits for it, logging what
        it waits for (``duroxide.worker``, every 10 s).
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        local_runtimes.unregister(self.store, self)
        wake = wake_hub(self.store)
        wake.wake_everyone()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._worker.drain(self.options.shutdown_grace if grace is None else grace)
        try:
            await asyncio.wait_for(self._flusher, timeout=10)
        except asyncio.TimeoutError:
            _log.error("shutdown: activity results could not be recorded in 10 s; they will be redone")
            self._flusher.cancel()
        self._dispatcher.cache.clear()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
