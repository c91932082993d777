"""``@activity(queue=...)`` and ``@orchestration(queue=...)`` in the macro layer: the calls and
starts go to that queue, ``start()``/``run()`` pass the start options through, and
``duroxide_main`` refuses to start when its options do not configure a declared queue.

This module is rewritten by the pytest plugin's import hook (``durable(...)`` below).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from duroxide_macros import discovery
from duroxide_macros.prelude import (
    ActivityRegistry, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus, QueueOptions,
    UnknownQueueError, activity, durable, orchestration,
)
from duroxide_runtime import Client, Event, InvalidInputError

from .support import Harness, dedent_src, run_cmd


@activity(typed=True, queue="mq_emails")
async def mq_send(to: str) -> str:
    return f"sent to {to}"


# Out of the process-wide registry until a test asks for it: every test module is imported at
# collection, and another test's duroxide_main in this process must not meet this queue.
discovery._activities.pop(mq_send.name)


@orchestration
async def mq_flow(ctx: OrchestrationContext, to: str) -> str:
    return await durable(mq_send(to))


@orchestration(queue="mq_orders")
async def mq_order(ctx: OrchestrationContext, order: str) -> str:
    return f"done {order}"


discovery._orchestrations.pop((mq_order.name, mq_order.version))  # as mq_send: out of other tests' way


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
        discovery.check_declared_queues({"payments"})
    assert info.value.queue == "mq_emails" and "RuntimeOptions(queues=" in str(info.value)
    discovery.check_declared_queues({"payments", "mq_emails"})  # configured: no error


async def test_an_orchestrations_queue_is_the_default_of_its_starts_and_an_explicit_one_wins(
        harness: Harness) -> None:
    orchs = OrchestrationRegistry.builder().register(mq_order.name, mq_order.registered_function).build()
    # The runtime configures no queue: an instance started in "mq_orders" waits; one started
    # with queue="default" runs at once.
    await harness.start(orchs)
    client = Client(harness.store, check_names=False)  # lets a queue no runtime here configures through
    assert await mq_order.start(client, "mqo-1", "a") == "mqo-1"
    assert await mq_order.run(client, "mqo-2", "b", timeout=15, queue="default", concurrency_key="customer-42",
                              priority=7) == "done b"
    stats = {q.queue: q for q in await client.queue_stats()}
    assert stats["mq_orders"].waiting_instances == 1
    assert (await client.get_instance_info("mqo-1")).status == "Pending"
    started = (await client.read_history("mqo-2"))[0]
    assert isinstance(started, Event.OrchestrationStarted)
    assert (started.concurrency_key, started.priority) == ("customer-42", 7)


def test_duroxide_main_refuses_an_orchestration_queue_its_options_do_not_configure(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text(dedent_src('''
        import duroxide_macros.install
        from duroxide_macros.prelude import *

        @orchestration(queue="mq_reports")
        async def mq_report(ctx: OrchestrationContext) -> str:
            return "ok"

        @duroxide_main(provider="memory", log_level="error",
                       options=RuntimeOptions(queues={"mq_other": QueueOptions(concurrency=1)}))
        async def main() -> None:
            print("BODY RAN")

        if __name__ == "__main__":
            main()
    '''))
    proc = run_cmd([sys.executable, str(program)], tmp_path)
    assert proc.returncode != 0 and "BODY RAN" not in proc.stdout
    assert "UnknownQueueError" in proc.stderr and "orchestration 'mq_report'" in proc.stderr, proc.stderr
    assert "RuntimeOptions(queues=" in proc.stderr


def test_a_bad_orchestration_queue_name_is_refused_at_declaration() -> None:
    with pytest.raises(InvalidInputError, match="queue of orchestration 'mq_bad_orch'"):
        @orchestration(queue="bad\x00name")
        async def mq_bad_orch(ctx: OrchestrationContext) -> str:
            return ""


def test_a_bad_queue_name_is_refused_at_declaration() -> None:
    with pytest.raises(InvalidInputError, match="queue of activity 'mq_bad'"):
        @activity(queue="")
        async def mq_bad(x: str) -> str:
            return x
