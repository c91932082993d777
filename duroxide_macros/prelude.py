"""Everything a program needs: ``from duroxide_macros.prelude import *``."""

from datetime import timedelta

from duroxide_runtime import (
    ActivityContext,
    ActivityFailed,
    ActivityRegistry,
    Client,
    DurableTaskFailed,
    Event,
    InMemoryProvider,
    InstanceInfo,
    NonDeterminismError,
    NonRetryableError,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    PostgresProvider,
    RedisProvider,
    Provider,
    RetryPolicy,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    StatusOf,
    SubOrchestrationFailed,
    VersionPolicy,
    activity_context,
    orchestration_context,
)
from . import (
    Activity, ActivityPolicy, ActivityWithOptions, AsyncActivity, DurableNotExpandedError, Orchestration, OrchestrationFailedError, SyncActivity,
    activity, durable, durable_guid, durable_newguid, durable_now, durable_trace_debug, durable_trace_error,
    durable_trace_info, durable_trace_warn, durable_utcnow, orch_debug, orch_error, orch_info, orch_warn,
    orchestration, trace_debug, trace_error, trace_info, trace_warn,
)
from .ambient import client
from .main import duroxide_main
from duroxide_runtime import (  # typed events, state, updates, streams
    PayloadDecodeError, StreamItem, TypedEvent, UpdateAlreadyRepliedError, UpdateRejectedError, UpdateRequest,
    UpdateTimeoutError,
)

__all__ = [
    "timedelta", "ActivityContext", "ActivityFailed", "ActivityRegistry", "Client", "DurableTaskFailed", "Event",
    "InMemoryProvider", "InstanceInfo", "NonDeterminismError", "NonRetryableError", "OrchestrationContext", "OrchestrationRegistry",
    "OrchestrationStatus", "PostgresProvider", "RedisProvider", "Provider", "RetryPolicy", "Runtime", "RuntimeOptions",
    "SqliteProvider", "StatusOf", "SubOrchestrationFailed", "VersionPolicy", "activity_context", "orchestration_context", "duroxide_main", "client",
    "Activity", "ActivityPolicy", "ActivityWithOptions", "AsyncActivity", "DurableNotExpandedError", "Orchestration", "OrchestrationFailedError",
    "SyncActivity", "activity", "durable", "durable_guid", "durable_newguid", "durable_now", "durable_trace_debug",
    "durable_trace_error", "durable_trace_info", "durable_trace_warn", "durable_utcnow", "orch_debug", "orch_error",
    "orch_info", "orch_warn", "orchestration", "trace_debug", "trace_error", "trace_info", "trace_warn",
]
__all__ += ["PayloadDecodeError", "StreamItem", "TypedEvent", "UpdateAlreadyRepliedError", "UpdateRejectedError",
            "UpdateRequest", "UpdateTimeoutError"]
from duroxide_runtime import ClockPart, IdleAwareClock, StoreCheck, VirtualClock  # virtual time (tests)

__all__ += ["VirtualClock", "IdleAwareClock", "ClockPart", "StoreCheck"]
from duroxide_runtime import (  # operating instances (issue 15)
    BulkProgress, InstanceInfoPage, InstanceQuery, InstanceStateError, Operation, StoreOverview, apply_operation, run_bulk,
)

__all__ += ["BulkProgress", "InstanceInfoPage", "InstanceQuery", "InstanceStateError", "Operation", "StoreOverview",
            "apply_operation", "run_bulk"]
from duroxide_runtime import IfExists  # start policies (issue 16)

__all__ += ["IfExists"]
from duroxide_runtime import QueueOptions, RateLimit, UnknownQueueError  # queues (issue 16)

__all__ += ["QueueOptions", "RateLimit", "UnknownQueueError"]
from duroxide_runtime import CatchUp, InvalidScheduleError, ScheduleInfo  # schedules (issue 16)

__all__ += ["CatchUp", "InvalidScheduleError", "ScheduleInfo"]
