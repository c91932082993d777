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

from .activity import ActivityContext, activity_context
from .client import Client
from .context import DurableFuture, OrchestrationContext
from .errors import (
    ActivityFailed,
    ActivityTimeoutError,
    ConfigurationError,
    CorruptHistoryError,
    DuroxideError,
    DurableTaskFailed,
    ErrorDetails,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStillRunningError,
    NonDeterminismError,
    NonDeterministicOperationError,
    OrchestrationCancelled,
    PayloadError,
    PayloadTooLargeError,
    InvalidInputError,
    PoisonMessageError,
    StoreError,
    SubOrchestrationFailed,
    UnknownActivityError,
    UnknownOrchestrationError,
)
from .history import Event, HistoryEvent
from .options import RetryPolicy, RuntimeOptions
from .providers.base import Provider
from .providers.memory import InMemoryProvider
from .providers.postgres import PostgresProvider
from .providers.sqlite import SqliteProvider
from .registry import ActivityRegistry, OrchestrationRegistry, VersionPolicy
from .runtime import Runtime, RuntimeBuilder
from .status import InstanceInfo, OrchestrationStatus, StatusOf

__all__ = [
    "ActivityContext", "activity_context", "Client", "DurableFuture", "OrchestrationContext",
    "ActivityFailed", "ActivityTimeoutError", "ConfigurationError", "CorruptHistoryError", "DuroxideError",
    "DurableTaskFailed", "ErrorDetails", "InstanceAlreadyExistsError", "InstanceNotFoundError",
    "InstanceStillRunningError", "NonDeterminismError", "NonDeterministicOperationError", "OrchestrationCancelled",
    "PayloadError", "PayloadTooLargeError", "InvalidInputError", "PoisonMessageError", "StoreError", "SubOrchestrationFailed",
    "UnknownActivityError", "UnknownOrchestrationError", "Event", "HistoryEvent", "RetryPolicy",
    "RuntimeOptions", "Provider", "InMemoryProvider", "SqliteProvider", "PostgresProvider", "ActivityRegistry",
    "OrchestrationRegistry", "VersionPolicy", "Runtime", "RuntimeBuilder", "InstanceInfo", "OrchestrationStatus", "StatusOf",
]

__version__ = "0.1.0"
