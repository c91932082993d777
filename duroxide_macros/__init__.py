"""duroxide_macros: decorators, typed helpers and the ``durable(...)`` forms on top of duroxide_runtime.

Example::

    import duroxide_macros.install          # first line of the program: the import hook
    from duroxide_macros.prelude import *

    @activity(typed=True)
    async def greet(name: str) -> str:
        return f"Hello, {name}!"

    @orchestration
    async def hello_world(ctx: OrchestrationContext, name: str) -> str:
        durable_trace_info("Greeting: {}", name)
        return await durable(greet(name))
"""

from .decorators import (
    Activity,
    ActivityWithOptions,
    AsyncActivity,
    DurableNotExpandedError,
    Orchestration,
    OrchestrationFailedError,
    SyncActivity,
    activity,
    orchestration,
)
from .discovery import discovered_activities, discovered_orchestrations
from .policy import ActivityPolicy
from .forms import (
    durable,
    durable_guid,
    durable_newguid,
    durable_now,
    durable_trace_debug,
    durable_trace_error,
    durable_trace_info,
    durable_trace_warn,
    durable_utcnow,
    orch_debug,
    orch_error,
    orch_info,
    orch_warn,
    trace_debug,
    trace_error,
    trace_info,
    trace_warn,
)

__all__ = [
    "Activity", "AsyncActivity", "SyncActivity", "ActivityPolicy", "ActivityWithOptions", "Orchestration",
    "OrchestrationFailedError",
    "DurableNotExpandedError", "activity", "orchestration", "discovered_activities", "discovered_orchestrations",
    "durable", "durable_guid", "durable_newguid", "durable_now", "durable_utcnow", "durable_trace_debug",
    "durable_trace_error", "durable_trace_info", "durable_trace_warn", "orch_debug", "orch_error", "orch_info",
    "orch_warn", "trace_debug", "trace_error", "trace_info", "trace_warn",
]
