"""duroxide_runtime: deterministic-replay durable execution for Python.

Orchestrations are ``async def`` functions whose progress is recorded as
history in a store; after a crash they resume by replaying it. This package
is the engine with string names and string payloads; ``duroxide_macros``
adds typed decorators on top.

Example::

    async def greet(name: str) -> str:
        return f"Hello, {name}!"

    async def hello(ctx: OrchestrationContext, name: str) -> str:
        return await ctx.schedule_activity("Greet", name)

    store = await SqliteProvider.new("sqlite:///app.db")
    rt = await (Runtime.builder().store(store)
                .activities(ActivityRegistry.builder().register("Greet", greet).build())
                .orchestrations(OrchestrationRegistry.builder().register("Hello", hello).build())
                .start())
    client = Client(store)
    await client.start_orchestration("inst-1", "Hello", "World")
    print(await client.wait_for_orchestration("inst-1", 10))
    await rt.shutdown()
"""

from typing import TYPE_CHECKING

from .activity import ActivityContext, activity_context, current_activity
from .client import Client
from .clock import Clock, SystemClock
from .context import DurableFuture, OrchestrationContext
from .errors import (
    ActivityFailed,
    ActivityTimeoutError,
    ConfigurationError,
    CorruptHistoryError,
    DuroxideError,
    DurableTaskFailed,
    ErrorCode,
    ErrorDetails,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStillRunningError,
    NonDeterminismError,
    NonDeterministicOperationError,
    OrchestrationCancelled,
    OrchestrationStuckError,
    PayloadError,
    PayloadTooLargeError,
    InvalidInputError,
    PoisonMessageError,
    StoreError,
    StoreTimeoutError,
    SubOrchestrationFailed,
    UnknownActivityError,
    UnknownOrchestrationError,
)
from .history import Event, HistoryEvent
from .options import RetryPolicy, RuntimeOptions
from .providers.base import Durability, Provider
from .providers.memory import InMemoryProvider
from .providers.postgres import PostgresProvider
from .providers.sqlite import SqliteProvider
from .registry import ActivityRegistry, OrchestrationRegistry, VersionPolicy
from .runtime import Runtime, RuntimeBuilder
from .status import InstanceInfo, OrchestrationStatus, StatusOf
from .current import current_orchestration, orchestration_context, skip_trace_frames_of, trace
from .discovery import DiscoverySource, load_discovery_entry_points, register_discovery_source
from .options import to_seconds
from .registry import DEFAULT_VERSION

if TYPE_CHECKING:
    from .metrics import PrometheusMetrics
else:
    def __getattr__(name: str) -> object:
        # PrometheusMetrics imports prometheus_client (~50 ms): only for programs that use it.
        if name == "PrometheusMetrics":
            from .metrics import PrometheusMetrics

            return PrometheusMetrics
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ActivityContext", "activity_context", "Client", "Clock", "SystemClock", "DurableFuture", "OrchestrationContext",
    "ActivityFailed", "ActivityTimeoutError", "ConfigurationError", "CorruptHistoryError", "DuroxideError",
    "DurableTaskFailed", "ErrorCode", "ErrorDetails", "InstanceAlreadyExistsError", "InstanceNotFoundError",
    "InstanceStillRunningError", "NonDeterminismError", "NonDeterministicOperationError", "OrchestrationCancelled",
    "OrchestrationStuckError", "PayloadError", "PayloadTooLargeError", "InvalidInputError", "PoisonMessageError", "StoreError", "StoreTimeoutError",
    "SubOrchestrationFailed",
    "UnknownActivityError", "UnknownOrchestrationError", "Event", "HistoryEvent", "RetryPolicy",
    "RuntimeOptions", "Provider", "Durability", "InMemoryProvider", "SqliteProvider", "PostgresProvider", "ActivityRegistry",
    "OrchestrationRegistry", "VersionPolicy", "Runtime", "RuntimeBuilder", "InstanceInfo", "OrchestrationStatus", "StatusOf",
]

# The layer above the runtime (duroxide_macros) uses these; it imports nothing else.
__all__ += [
    "current_activity", "orchestration_context", "current_orchestration", "trace", "skip_trace_frames_of",
    "DiscoverySource", "register_discovery_source", "load_discovery_entry_points", "to_seconds",
    "DEFAULT_VERSION", "PrometheusMetrics",
]

__version__ = "0.1.0"
