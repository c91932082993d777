"""In-process wake-ups (duroxide_runtime.wake): the runtime's, not the stores'.

A client's start wakes the dispatchers of its process at once, a committed
turn wakes workers and ``wait_for_orchestration`` callers, a purge wakes the
waiters of every purged instance; all clients and runtimes of one store
object share one hub. One idle pipeline of each runtime wakes per wake-up
(the others would fetch for nothing), and no wake-up is lost: one that finds
nobody waiting is kept, one that meets a cancel is passed on. Runs on every
store (the hub never depends on one).
"""

from __future__ import annotations

import asyncio

import pytest

from duroxide_runtime import Client, InMemoryProvider
from duroxide_runtime.messages import ActivityWork, OrchestratorMessage, TimerFired
from duroxide_runtime.providers.base import InstanceUpdate, Provider, TurnCommit
from duroxide_runtime.wake import WakeHub, wake_hub


class _Group:
    """What a runtime passes as its group of waiters (its dispatcher, its worker)."""


def _commit(iid: str, status: str, *, ends: bool = False, activities: bool = False,
            messages: list[tuple[OrchestratorMessage, int | None]] | None = None) -> TurnCommit:
    work = [ActivityWork(instance_id=iid, execution_id=1, event_id=2, name="A", input="")] if activities else []
    return TurnCommit(iid, "token", 1, consumed=[], activities=work, ends_instance=ends, messages=messages or [],
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
    dispatcher, worker = _Group(), _Group()
    hub.join(dispatcher)
    hub.join(worker)
    ended = asyncio.create_task(hub.wait_instance("done", 30))
    running = asyncio.create_task(hub.wait_instance("running", 30))
    lost = asyncio.create_task(hub.wait_instance("lost", 30))
    await asyncio.sleep(0)
    timer = (TimerFired(instance_id="running", execution_id=1, event_id=3, fire_at_ms=0), 10**13)
    hub.after_commit([_commit("done", "Completed", ends=True),
                      _commit("running", "Running", activities=True, messages=[timer]),
                      _commit("lost", "Failed", ends=True)], [True, True, False])
    await asyncio.wait_for(ended, 20)
    await asyncio.wait_for(hub.wait_orchestrator(30, group=dispatcher), 20)  # kept for the group: it joined
    await asyncio.wait_for(hub.wait_worker(30, group=worker), 20)
    await asyncio.sleep(0.01)
    assert not running.done() and not lost.done()  # not ended; not committed
    running.cancel()
    lost.cancel()


async def test_a_commit_without_new_orchestrator_work_leaves_idle_dispatchers_asleep() -> None:
    """The committing pipeline fetches again by itself; waking another only made it fetch for nothing."""
    hub = WakeHub()
    dispatcher, worker = _Group(), _Group()
    hub.join(dispatcher)
    hub.join(worker)
    idle = asyncio.create_task(hub.wait_orchestrator(30, group=dispatcher))
    await asyncio.sleep(0)
    hub.after_commit([_commit("running", "Running", activities=True)], [True])
    await asyncio.wait_for(hub.wait_worker(30, group=worker), 20)  # the activity's worker wakes
    await asyncio.sleep(0.01)
    assert not idle.done()
    idle.cancel()


async def test_one_waiter_of_a_group_wakes_per_notify_and_every_group_wakes() -> None:
    hub = WakeHub()
    runtime_a, runtime_b = _Group(), _Group()
    a1 = asyncio.create_task(hub.wait_orchestrator(30, group=runtime_a))
    a2 = asyncio.create_task(hub.wait_orchestrator(30, group=runtime_a))
    b = asyncio.create_task(hub.wait_orchestrator(30, group=runtime_b))
    await asyncio.sleep(0)
    hub.notify_orchestrator()
    await asyncio.wait_for(b, 20)  # another runtime may be the one that knows the orchestration
    done, pending = await asyncio.wait([a1, a2], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(pending) == 1  # one pipeline of runtime A, not both
    await asyncio.sleep(0.01)
    assert len(pending) == 1 and not next(iter(pending)).done()
    hub.notify_orchestrator()  # the next wake-up goes to the other pipeline
    await asyncio.wait_for(next(iter(pending)), 20)


async def test_a_wake_up_with_no_waiter_is_kept_for_the_groups_next_wait() -> None:
    hub = WakeHub()
    group = _Group()
    hub.join(group)
    hub.notify_worker()  # every pipeline is busy fetching: nobody waits
    await asyncio.wait_for(hub.wait_worker(30, group=group), 20)  # returns at once
    late = asyncio.create_task(hub.wait_worker(30, group=group))
    await asyncio.sleep(0.01)
    assert not late.done()  # the wake-up was used once
    late.cancel()


async def test_a_waiter_woken_and_cancelled_at_once_passes_its_wake_up_on() -> None:
    hub = WakeHub()
    group = _Group()
    first = asyncio.create_task(hub.wait_orchestrator(30, group=group))
    second = asyncio.create_task(hub.wait_orchestrator(30, group=group))
    await asyncio.sleep(0)
    hub.notify_orchestrator()  # wakes `first`...
    first.cancel()  # ...which is cancelled in the same moment (shutdown), before it could fetch
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 20)


async def test_wake_everyone_wakes_every_idle_pipeline_of_every_group() -> None:
    hub = WakeHub()
    group = _Group()
    waiters = [asyncio.create_task(hub.wait_orchestrator(30, group=group)) for _ in range(3)]
    workers = [asyncio.create_task(hub.wait_worker(30, group=group)) for _ in range(2)]
    await asyncio.sleep(0)
    hub.wake_everyone()  # shutdown
    await asyncio.wait_for(asyncio.gather(*waiters, *workers), 20)


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
