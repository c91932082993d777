"""In-process wake-ups (duroxide_runtime.wake): the runtime's, not the stores'.

A client's start wakes the dispatchers of its process at once, a committed
turn wakes workers and ``wait_for_orchestration`` callers, a purge wakes the
waiters of every purged instance; all clients and runtimes of one store
object share one hub. Runs on every store (the hub never depends on one).
"""

from __future__ import annotations

import asyncio

from duroxide_runtime import Client, InMemoryProvider
from duroxide_runtime.providers.base import InstanceUpdate, Provider, TurnCommit
from duroxide_runtime.wake import WakeHub, wake_hub


def _commit(iid: str, status: str, *, ends: bool = False, activities: bool = False) -> TurnCommit:
    from duroxide_runtime.messages import ActivityWork

    work = [ActivityWork(instance_id=iid, execution_id=1, event_id=2, name="A", input="")] if activities else []
    return TurnCommit(iid, "token", 1, consumed=[], activities=work, ends_instance=ends,
                      update=InstanceUpdate(name="N", version="1", execution_id=1, status=status))


async def test_notify_instance_wakes_only_that_instances_waiters() -> None:
    hub = WakeHub()
    waiter = asyncio.create_task(hub.wait_instance("i1", 30))
    other = asyncio.create_task(hub.wait_instance("i2", 30))
    await asyncio.sleep(0)
    hub.notify_instance("i1")
    await asyncio.wait_for(waiter, 20)  # a wake-up takes milliseconds; the safety net stays under the waits' own 30 s
    await asyncio.sleep(0.01)
    assert not other.done()
    hub.notify_instance("i2")
    await asyncio.wait_for(other, 20)


async def test_a_committed_batch_wakes_dispatchers_workers_and_the_ended_instances_waiters() -> None:
    hub = WakeHub()
    ended = asyncio.create_task(hub.wait_instance("done", 30))
    running = asyncio.create_task(hub.wait_instance("running", 30))
    lost = asyncio.create_task(hub.wait_instance("lost", 30))
    await asyncio.sleep(0)
    hub.after_commit([_commit("done", "Completed", ends=True), _commit("running", "Running", activities=True),
                      _commit("lost", "Failed", ends=True)], [True, True, False])
    await asyncio.wait_for(ended, 20)
    await asyncio.wait_for(hub.wait_orchestrator(30), 20)
    await asyncio.wait_for(hub.wait_worker(30), 20)
    await asyncio.sleep(0.01)
    assert not running.done() and not lost.done()  # not ended; not committed
    running.cancel()
    lost.cancel()


async def test_a_store_has_one_hub_for_all_its_clients_and_runtimes() -> None:
    store, other = InMemoryProvider(), InMemoryProvider()
    assert wake_hub(store) is wake_hub(store)
    assert wake_hub(store) is not wake_hub(other)


async def test_a_client_start_wakes_the_dispatchers_of_its_process(store: Provider) -> None:
    hub = wake_hub(store)
    await hub.wait_orchestrator(0)
    waiting = asyncio.create_task(hub.wait_orchestrator(30))
    await asyncio.sleep(0.01)
    await Client(store).start_orchestration("i1", "Orch", "")
    await asyncio.wait_for(waiting, 20)


async def test_a_delivered_event_wakes_the_dispatchers_of_its_process(store: Provider) -> None:
    client = Client(store)
    await client.start_orchestration("i1", "Orch", "")
    hub = wake_hub(store)
    await hub.wait_orchestrator(0)
    waiting = asyncio.create_task(hub.wait_orchestrator(30))
    await asyncio.sleep(0.01)
    assert await client.raise_event("i1", "go", "")
    await asyncio.wait_for(waiting, 20)


async def test_a_purge_wakes_the_waiters_of_every_purged_instance(store: Provider) -> None:
    client = Client(store)
    await client.start_orchestration("i1", "Orch", "")
    waiting = asyncio.create_task(client.wait_for_orchestration("i1", 30))
    await asyncio.sleep(0.05)
    assert await client.purge("i1", force=True) == ["i1"]
    status = await asyncio.wait_for(waiting, 20)
    assert type(status).__name__ == "NotFound"
