"""``@activity(queue=...)`` in the macro layer: the calls go to that queue, and ``duroxide_main``
refuses to start when its options do not configure it.

This module is rewritten by the pytest plugin's import hook (``durable(...)`` below).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duroxide_macros import discovery
from duroxide_macros.prelude import (
    ActivityRegistry, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus, QueueOptions,
    UnknownQueueError, activity, durable, orchestration,
)
from duroxide_runtime import Event, InvalidInputError

from .support import Harness


@activity(typed=True, queue="mq_emails")
async def mq_send(to: str) -> str:
    return f"sent to {to}"


# Out of the process-wide registry until a test asks for it: every test module is imported at
# collection, and another test's duroxide_main in this process must not meet this queue.
discovery._activities.pop(mq_send.name)


@orchestration
async def mq_flow(ctx: OrchestrationContext, to: str) -> str:
    return await durable(mq_send(to))


@pytest.fixture
def registered_queue_activity() -> Iterator[None]:
    """This module's queued activity stays registered only for the tests that use it (so that
    other tests' ``duroxide_main`` in this process never sees its queue)."""
    discovery.register_activity(mq_send)
    try:
        yield
    finally:
        discovery._activities.pop(mq_send.name, None)


async def test_a_decorated_activity_runs_in_its_queue(harness: Harness) -> None:
    acts = ActivityRegistry.builder().register(mq_send.name, mq_send.registered_function()).build()
    orchs = OrchestrationRegistry.builder().register(mq_flow.name, mq_flow.registered_function).build()
    await harness.start(orchs, acts, queues={"mq_emails": QueueOptions(concurrency=1)})
    status = await harness.run("mq-1", mq_flow.name, '"ann@example.com"')
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == '"sent to ann@example.com"'
    scheduled = [e for e in await harness.store.read_history("mq-1") if isinstance(e, Event.ActivityScheduled)]
    assert [e.queue for e in scheduled] == ["mq_emails"]


def test_an_unconfigured_queue_stops_the_program_at_start(registered_queue_activity: None) -> None:
    with pytest.raises(UnknownQueueError) as info:
        discovery.check_activity_queues({"payments"})
    assert info.value.queue == "mq_emails" and "RuntimeOptions(queues=" in str(info.value)
    discovery.check_activity_queues({"payments", "mq_emails"})  # configured: no error


def test_a_bad_queue_name_is_refused_at_declaration() -> None:
    with pytest.raises(InvalidInputError, match="queue of activity 'mq_bad'"):
        @activity(queue="")
        async def mq_bad(x: str) -> str:
            return x
