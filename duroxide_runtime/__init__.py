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
from .clock import Clock, ClockPart, IdleAwareClock, StoreCheck, SystemClock
from .virtual_time import VirtualClock
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
    InstanceStateError,
    InstanceStillRunningError,
    NonDeterminismError,
    NonDeterministicOperationError,
    NonRetryableError,
    OrchestrationCancelled,
    OrchestrationStuckError,
    PayloadDecodeError,
    PayloadError,
    PayloadTooLargeError,
    InvalidInputError,
    PoisonMessageError,
    StoreError,
    StoreTimeoutError,
    SubOrchestrationFailed,
    UnknownActivityError,
    UnknownOrchestrationError,
    UpdateAlreadyRepliedError,
    UpdateRejectedError,
    UpdateTimeoutError,
)
from .history import Event, HistoryEvent
from .options import RetryPolicy, RuntimeOptions
from .providers.base import Durability, InstanceQuery, Provider, QueueStats, StoreOverview
from .providers.memory import InMemoryProvider
from .providers.sqlite import SqliteProvider
from .registry import ActivityRegistry, OrchestrationRegistry, VersionPolicy
from .runtime import Runtime, RuntimeBuilder
from .status import InstanceInfo, InstanceInfoPage, OrchestrationStatus, StatusOf
from .current import current_orchestration, orchestration_context, skip_trace_frames_of, trace
from .discovery import DiscoverySource, load_discovery_entry_points, register_discovery_source
from .options import to_seconds
from .registry import DEFAULT_VERSION
from .readouts import StreamItem
from .typed import TypedEvent
from .updates import UpdateRequest
from .operations import BulkProgress, Operation, apply_operation, run_bulk
from .start_policy import IfExists
from .queues import DEFAULT_QUEUE, QueueOptions, RateLimit, check_queue_name
from .errors import UnknownQueueError
from .errors import InvalidScheduleError, ScheduleExistsError, ScheduleNotFoundError
from .schedules import CatchUp, ScheduleInfo, check_catch_up, check_cron

if TYPE_CHECKING:
    from .codec import Codec, encode_value
    from .metrics import ActivityMetrics, PrometheusMetrics
    # Importable, but not in __all__: a star import must not need the `otel` extra.
    from .tracing import OpenTelemetryTracing as OpenTelemetryTracing
    from .tracing import current_activity_span as current_activity_span
    from .ui import serve as serve_ui
    from .providers.postgres import PostgresProvider
    from .providers.redis import RedisProvider
else:
    def __getattr__(name: str) -> object:
        # The codec imports pydantic (~70 ms): only for programs that use typed payloads.
        if name in ("Codec", "encode_value"):
            from . import codec

            return getattr(codec, name)
        # These import prometheus_client (~50 ms) or opentelemetry: only for programs that use them.
        if name in ("PrometheusMetrics", "ActivityMetrics"):
            from . import metrics

            return getattr(metrics, name)
        if name in ("OpenTelemetryTracing", "current_activity_span"):
            from . import tracing

            return getattr(tracing, name)
        # The stores with extras: the redis client alone takes ~70 ms to import (asyncpg ~15 ms), paid by
        # every process (the CLI, each worker) that never connects to one.
        if name == "PostgresProvider":
            from .providers.postgres import PostgresProvider

            return PostgresProvider
        if name == "RedisProvider":
            from .providers.redis import RedisProvider

            return RedisProvider
        # The web UI (its server loads aiohttp and Jinja2 only when started).
        if name == "serve_ui":
            from .ui import serve

            return serve
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ActivityContext", "activity_context", "Client", "Clock", "SystemClock", "DurableFuture", "OrchestrationContext",
    "ActivityFailed", "ActivityTimeoutError", "ConfigurationError", "CorruptHistoryError", "DuroxideError",
    "DurableTaskFailed", "ErrorCode", "ErrorDetails", "InstanceAlreadyExistsError", "InstanceNotFoundError",
    "InstanceStateError", "InstanceStillRunningError", "NonDeterminismError", "NonDeterministicOperationError", "NonRetryableError",
    "OrchestrationCancelled",
    "OrchestrationStuckError", "PayloadError", "PayloadTooLargeError", "InvalidInputError", "PoisonMessageError", "StoreError", "StoreTimeoutError",
    "SubOrchestrationFailed",
    "UnknownActivityError", "UnknownOrchestrationError", "Event", "HistoryEvent", "RetryPolicy",
    "RuntimeOptions", "Provider", "Durability", "InMemoryProvider", "SqliteProvider", "PostgresProvider", "RedisProvider", "ActivityRegistry",
    "OrchestrationRegistry", "VersionPolicy", "Runtime", "RuntimeBuilder", "InstanceInfo", "InstanceInfoPage", "OrchestrationStatus", "StatusOf",
]

# Typed events, state, updates and streams (and the codec they decode with).
__all__ += [
    "TypedEvent", "UpdateRequest", "StreamItem", "PayloadDecodeError", "UpdateRejectedError", "UpdateTimeoutError",
    "UpdateAlreadyRepliedError", "Codec", "encode_value",
]

# The layer above the runtime (duroxide_macros) uses these; it imports nothing else.
__all__ += [
    "current_activity", "orchestration_context", "current_orchestration", "trace", "skip_trace_frames_of",
    "DiscoverySource", "register_discovery_source", "load_discovery_entry_points", "to_seconds",
    "DEFAULT_VERSION", "PrometheusMetrics", "ActivityMetrics", "serve_ui", "check_queue_name",
]

# Virtual time (issue 14): the clock that moves by itself, and what the runtime reports to such a clock.
__all__ += ["VirtualClock", "IdleAwareClock", "ClockPart", "StoreCheck"]

# Operating instances (issue 15): recovery operations one by one or by filter, and the store's listing.
__all__ += ["InstanceQuery", "StoreOverview", "Operation", "BulkProgress", "apply_operation", "run_bulk"]

# Start policies (issue 16): what a start does with an id in use (idempotency keys are a parameter).
__all__ += ["IfExists"]

# Queues (issue 16): limits that hold across processes, concurrency keys and priorities.
__all__ += ["QueueOptions", "RateLimit", "UnknownQueueError", "DEFAULT_QUEUE", "QueueStats"]

# Schedules (issue 16): cron schedules that start one instance per tick across processes.
__all__ += ["CatchUp", "ScheduleInfo", "InvalidScheduleError", "ScheduleExistsError", "ScheduleNotFoundError",
            "check_cron", "check_catch_up"]

__version__ = "0.1.0"
