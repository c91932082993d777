"""Provider conformance: a store's whole contract, tested directly through the ``Provider`` interface.

Runs unchanged on every provider in ``support.PROVIDERS`` (no Runtime, no
provider internals); a new store is done when it passes (docs/providers.md).
Each test pins storage behaviour the runtime relies on: peek-lock delivery
with instance-level exclusivity, atomic turn commits and their intents
(children, cancelled calls, deleted timers), guarded writes
(``only_if_status_in`` / ``only_if_execution``), lock expiry and
redelivery, activity leases and heartbeats, continue-as-new executions, purge of a tree,
and, for a store that hears other processes (``WakeSource``), wake-ups.
Semantics (what is terminal, what a rejected child's parent is told) are the
runtime's and are tested at the runtime level (tests/test_semantics_*.py,
tests/test_wake.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from duroxide_runtime.errors import ErrorDetails, InstanceAlreadyExistsError
from duroxide_runtime.history import Event, HistoryEvent
from duroxide_runtime.messages import (
    ActivityResult, ActivityWork, CancelRequest, ExternalEvent, PoisonNotice, StartOrchestration, SubOrchestrationResult,
    TimerFired,
)
from duroxide_runtime.providers.base import (
    CallKey, ChildStart, HeartbeatRecord, HeartbeatWrite, InstanceUpdate, LeaseOffer, LockOffer, OrchestrationItem,
    Provider, ScheduleFire, ScheduleRecord, StartOutcome, TurnCommit, WorkCompletion, WorkLease, now_ms,
)
from duroxide_runtime.queues import QueueOptions, RateLimit
from duroxide_runtime.start_policy import IDEMPOTENCY_KEY_TTL, IfExists
from duroxide_runtime.wake import WakeSource, wake_hub
from duroxide_runtime.testing import ManualClock

from .support import PROVIDERS, drop_store, make_store

#: Short lock used to provoke expiry, and how far the test clock moves to pass it.
SHORT_LOCK = 0.05
PAST_SHORT_LOCK = 0.15
LONG_LOCK = 30.0
#: Guards as the runtime passes them (the stores never decide these sets).
LIVE = frozenset({"Pending", "Running"})
ENDED = frozenset({"Completed", "Failed"})


@pytest.fixture
def clock() -> ManualClock:
    """The stores' time: tests move it (``clock.advance``) instead of sleeping."""
    return ManualClock()


@pytest.fixture(params=PROVIDERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Provider]:
    """A fresh store of each provider kind on the test's ManualClock (overrides conftest's)."""
    s = await make_store(request.param, tmp_path, clock=clock)
    try:
        yield s
    finally:
        await drop_store(s)


# -- helpers ------------------------------------------------------------------------


def start_msg(iid: str, name: str = "Orch", input: str = "in", **kw: object) -> StartOrchestration:
    return StartOrchestration(instance_id=iid, name=name, version="1.0.0", input=input, **kw)  # type: ignore[arg-type]


def started(event_id: int = 1, name: str = "Orch", input: str = "in") -> HistoryEvent:
    return Event.OrchestrationStarted(event_id=event_id, timestamp_ms=now_ms(), name=name, version="1.0.0",
                                      input=input)


def running(name: str = "Orch", execution_id: int = 1, **kw: object) -> InstanceUpdate:
    return InstanceUpdate(name=name, version="1.0.0", execution_id=execution_id, status="Running", **kw)  # type: ignore[arg-type]


def completed(output: str = "done", name: str = "Orch", execution_id: int = 1) -> InstanceUpdate:
    return InstanceUpdate(name=name, version="1.0.0", execution_id=execution_id, status="Completed", output=output)


def activity(iid: str, event_id: int, execution_id: int = 1, name: str = "Act", input: str = "x") -> ActivityWork:
    return ActivityWork(instance_id=iid, execution_id=execution_id, event_id=event_id, name=name, input=input)


def event_msg(iid: str, name: str = "ev", data: str = "d") -> ExternalEvent:
    return ExternalEvent(instance_id=iid, name=name, data=data)


def commit_for(item: OrchestrationItem, execution_id: int = 1, **kw: object) -> TurnCommit:
    """A commit consuming every message of ``item``."""
    return TurnCommit(instance_id=item.instance_id, lock_token=item.lock_token, execution_id=execution_id,
                      consumed=[m.id for m in item.messages], **kw)  # type: ignore[arg-type]


async def fetch_items(store: Provider, max_items: int = 100, lock_timeout: float = LONG_LOCK) -> dict[str, OrchestrationItem]:
    result = await store.fetch_orchestration_items(max_items, lock_timeout)
    by_id = {i.instance_id: i for i in result.items}
    assert len(by_id) == len(result.items), "an instance appeared twice in one fetch"
    return by_id


async def fetch_one(store: Provider, iid: str, lock_timeout: float = LONG_LOCK) -> OrchestrationItem:
    items = await fetch_items(store, lock_timeout=lock_timeout)
    assert iid in items, f"expected an item for {iid!r}, got {sorted(items)}"
    return items[iid]


async def commit_one(store: Provider, commit: TurnCommit) -> None:
    assert await store.commit_turns([commit]) == [True]


async def begin(store: Provider, iid: str, *, activities: list[ActivityWork] | None = None,
                name: str = "Orch") -> None:
    """Create ``iid`` and commit its first turn (Started [+ ActivityScheduled...], status Running)."""
    await store.create_instance(start_msg(iid, name=name))
    item = await fetch_one(store, iid)
    events: list[HistoryEvent] = [started(name=name)]
    for w in activities or []:
        events.append(Event.ActivityScheduled(event_id=w.event_id, timestamp_ms=now_ms(), name=w.name,
                                              input=w.input))
    await commit_one(store, commit_for(item, new_events=events, activities=list(activities or []),
                                       update=running(name=name)))


async def next_turn(store: Provider, iid: str, lock_timeout: float = LONG_LOCK) -> OrchestrationItem:
    """Provoke a turn for a running instance (by raising an event) and lock it."""
    assert await store.send(event_msg(iid, "poke")) is not None
    return await fetch_one(store, iid, lock_timeout)


async def finish(store: Provider, iid: str, output: str = "done") -> None:
    item = await next_turn(store, iid)
    eid = item.history_len + 1
    await commit_one(store, commit_for(item, new_events=[
        Event.OrchestrationCompleted(event_id=eid, timestamp_ms=now_ms(), output=output)],
        update=completed(output), ends_instance=True))


# -- create_instance / send / get_instance ---------------------------------------------


async def test_create_instance_makes_pending_row_and_enqueues_start(store: Provider, clock: ManualClock) -> None:
    start = start_msg("i1", input="hello")
    await store.create_instance(start)
    rec = await store.get_instance("i1")
    assert rec is not None
    assert (rec.instance_id, rec.name, rec.version, rec.execution_id, rec.status) == ("i1", "Orch", "1.0.0", 1,
                                                                                        "Pending")
    assert rec.parent_instance_id is None and rec.output is None and rec.error is None
    assert rec.created_at_ms == rec.updated_at_ms == clock.now_ms()  # stamped by the store's clock
    item = await fetch_one(store, "i1")
    assert [m.message for m in item.messages] == [start]
    assert item.instance is not None and item.instance.status == "Pending"
    assert item.history_len == 0
    assert item.dequeue_count == 1
    assert await store.get_instance("missing") is None


async def test_create_existing_instance_raises_and_leaves_original_untouched(store: Provider) -> None:
    await store.create_instance(start_msg("i1", name="First", input="one"))
    with pytest.raises(InstanceAlreadyExistsError):
        await store.create_instance(start_msg("i1", name="Second", input="two"))
    rec = await store.get_instance("i1")
    assert rec is not None and rec.name == "First"
    item = await fetch_one(store, "i1")
    assert [m.message for m in item.messages] == [start_msg("i1", name="First", input="one")]

    # Also once it has run to completion: the id stays taken.
    await commit_one(store, commit_for(item, new_events=[started(name="First", input="one")],
                                       update=completed(name="First")))
    with pytest.raises(InstanceAlreadyExistsError):
        await store.create_instance(start_msg("i1", name="Second"))
    rec = await store.get_instance("i1")
    assert rec is not None and rec.status == "Completed" and rec.name == "First"
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []


# -- start_instance (start policies, idempotency keys) -----------------------------------


async def queued_starts(store: Provider) -> dict[str, list[object]]:
    """Every instance with visible messages, and those messages (locks them: read once per test step)."""
    return {iid: [m.message for m in item.messages] for iid, item in (await fetch_items(store)).items()}


async def test_start_instance_on_a_free_id_creates_like_create_instance(store: Provider, clock: ManualClock) -> None:
    for policy in IfExists:
        iid = f"free-{policy.value}"
        outcome = await store.start_instance(start_msg(iid, input=policy.value), if_exists=policy,
                                             replace_if_status_in=ENDED, idempotency_key=f"k-{policy.value}")
        assert outcome == StartOutcome(iid, created=True)
        rec = await store.get_instance(iid)
        assert rec is not None and (rec.status, rec.execution_id, rec.name) == ("Pending", 1, "Orch")
        assert rec.created_at_ms == clock.now_ms() and rec.incarnation
    assert await queued_starts(store) == {f"free-{p.value}": [start_msg(f"free-{p.value}", input=p.value)]
                                          for p in IfExists}


async def test_start_instance_keeps_a_taken_id_and_reports_its_row(store: Provider) -> None:
    await begin(store, "i1")
    before = await store.get_instance("i1")
    for policy in (IfExists.FAIL, IfExists.RETURN_EXISTING):
        outcome = await store.start_instance(start_msg("i1", name="Other"), if_exists=policy,
                                             replace_if_status_in=ENDED)
        assert outcome == StartOutcome("i1", created=False, existing=before)
    # REPLACE of a status not listed (a live instance): nothing changes either.
    outcome = await store.start_instance(start_msg("i1", name="Other"), if_exists=IfExists.REPLACE,
                                         replace_if_status_in=ENDED)
    assert outcome == StartOutcome("i1", created=False, existing=before)
    assert await store.get_instance("i1") == before
    assert len(await store.read_history("i1")) == 1
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []


async def test_replace_deletes_the_finished_tree_and_starts_afresh_atomically(store: Provider) -> None:
    await begin(store, "p", activities=[activity("p", 2)])
    await _spawn_child(store, "p", "c", 3)
    await store.send(event_msg("p", "stale"))  # queued for the old instance: must not reach the new one
    await finish(store, "p")
    await store.send(event_msg("p", "late"))
    await begin(store, "bystander")
    old = await store.get_instance("p")
    assert old is not None and old.status == "Completed"
    fresh = start_msg("p", name="Orch", input="again")
    outcome = await store.start_instance(fresh, if_exists=IfExists.REPLACE, replace_if_status_in=ENDED)
    assert outcome.created and outcome.instance_id == "p" and outcome.existing is None
    assert outcome.replaced[0] == "p" and sorted(outcome.replaced) == ["c", "p"]
    rec = await store.get_instance("p")
    assert rec is not None and (rec.status, rec.execution_id, rec.output) == ("Pending", 1, None)
    assert rec.incarnation != old.incarnation
    assert await store.get_instance("c") is None
    assert await store.read_history("p") == [] and await store.list_executions("p") == []
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    item = await fetch_one(store, "p")
    assert [m.message for m in item.messages] == [fresh] and item.history_len == 0
    assert len(await store.read_history("bystander")) == 1


async def test_an_idempotency_key_makes_a_repeated_start_a_no_op(store: Provider) -> None:
    first = await store.start_instance(start_msg("a", input="1"), idempotency_key="k1")
    assert first == StartOutcome("a", created=True)
    # The reply was lost; the caller tries again, with the same id or another one, and any policy.
    for iid, policy in (("a", IfExists.FAIL), ("b", IfExists.FAIL), ("b", IfExists.REPLACE)):
        again = await store.start_instance(start_msg(iid, input="2"), if_exists=policy,
                                           replace_if_status_in=ENDED, idempotency_key="k1")
        assert again == StartOutcome("a", created=False, by_key=True)
    assert [r.instance_id for r in await store.list_instances()] == ["a"]
    assert await queued_starts(store) == {"a": [start_msg("a", input="1")]}
    # Another key is another start.
    assert (await store.start_instance(start_msg("b"), idempotency_key="k2")).created


async def test_a_start_that_keeps_the_id_records_its_key_only_when_returning_it(store: Provider) -> None:
    await begin(store, "taken")
    await store.start_instance(start_msg("taken"), if_exists=IfExists.FAIL, idempotency_key="failed")
    await store.start_instance(start_msg("taken"), if_exists=IfExists.REPLACE, replace_if_status_in=ENDED,
                               idempotency_key="refused")
    await store.start_instance(start_msg("taken"), if_exists=IfExists.RETURN_EXISTING, idempotency_key="kept")
    # A start that failed recorded nothing: its key starts the next instance.
    assert (await store.start_instance(start_msg("x"), idempotency_key="failed")).created
    assert (await store.start_instance(start_msg("y"), idempotency_key="refused")).created
    assert await store.start_instance(start_msg("z"), idempotency_key="kept") == StartOutcome(
        "taken", created=False, by_key=True)
    assert await store.get_instance("z") is None


async def test_an_idempotency_key_expires_after_its_ttl(store: Provider, clock: ManualClock) -> None:
    ttl_ms = int(IDEMPOTENCY_KEY_TTL.total_seconds() * 1000)
    await store.start_instance(start_msg("a"), idempotency_key="k")
    clock.advance(ttl_ms / 1000 - 0.001)
    assert (await store.start_instance(start_msg("b"), idempotency_key="k")).by_key
    clock.advance(0.002)
    assert await store.start_instance(start_msg("b"), idempotency_key="k") == StartOutcome("b", created=True)
    # Recorded anew from then on.
    assert await store.start_instance(start_msg("c"), idempotency_key="k") == StartOutcome(
        "b", created=False, by_key=True)
    # A shorter TTL given by the caller counts too.
    clock.advance(10)
    assert (await store.start_instance(start_msg("d"), idempotency_key="k", key_ttl_ms=5_000)).created


async def test_concurrent_starts_with_one_key_create_exactly_one_instance(store: Provider) -> None:
    outcomes = await asyncio.gather(*(store.start_instance(start_msg(f"i{n}"), idempotency_key="k")
                                      for n in range(12)))
    assert sum(o.created for o in outcomes) == 1
    winner = next(o.instance_id for o in outcomes if o.created)
    assert {o.instance_id for o in outcomes} == {winner}
    assert [r.instance_id for r in await store.list_instances()] == [winner]
    # And concurrent replaces of one finished instance: one replaces it, the others find the new one live.
    await begin(store, "r")
    await finish(store, "r")
    replaces = await asyncio.gather(*(store.start_instance(start_msg("r", input=str(n)), if_exists=IfExists.REPLACE,
                                                           replace_if_status_in=ENDED) for n in range(6)))
    assert sum(o.created for o in replaces) == 1
    assert all(o.existing is not None and o.existing.status == "Pending" for o in replaces if not o.created)


# -- debounce_start (debounced starts) ------------------------------------------------------


async def test_a_debounced_start_opens_a_window_whose_start_is_held_until_its_quiet_period_ends(
        store: Provider, clock: ManualClock) -> None:
    outcome = await store.debounce_start(start_msg("d1", input="1"), debounce_key="k", quiet_ms=5_000)
    assert outcome == StartOutcome("d1", created=True)
    rec = await store.get_instance("d1")
    assert rec is not None and rec.status == "Pending"
    result = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert result.items == [] and result.next_due_ms == clock.now_ms() + 5_000
    clock.advance(5)
    item = await fetch_one(store, "d1")
    assert [m.message for m in item.messages] == [start_msg("d1", input="1")]


async def test_a_debounced_start_joins_an_open_window_with_its_input_and_pushes_its_due_time(
        store: Provider, clock: ManualClock) -> None:
    await store.debounce_start(start_msg("d1", input="1"), debounce_key="k", quiet_ms=5_000)
    clock.advance(4)
    # Another id named: the window's instance is returned, with this call's input; nothing else is made.
    joined = await store.debounce_start(start_msg("d2", input="2"), debounce_key="k", quiet_ms=5_000)
    assert joined == StartOutcome("d1", created=False, debounced=True)
    clock.advance(2)  # past the first call's due time, not the second's
    result = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert result.items == [] and result.next_due_ms == clock.now_ms() + 3_000
    clock.advance(3)
    item = await fetch_one(store, "d1")
    assert [m.message for m in item.messages] == [start_msg("d1", input="2")]
    assert [r.instance_id for r in await store.list_instances()] == ["d1"]


async def test_a_window_closes_when_its_start_is_picked_up_and_the_next_start_opens_a_new_one(
        store: Provider, clock: ManualClock) -> None:
    await store.debounce_start(start_msg("d1", input="1"), debounce_key="k", quiet_ms=1_000)
    clock.advance(1)
    item = await fetch_one(store, "d1")
    # Picked up (its turn not committed yet): the window is closed, and an abandoned fetch keeps it so.
    await store.abandon_orchestration_item("d1", item.lock_token, 0)
    second = await store.debounce_start(start_msg("d2", input="2"), debounce_key="k", quiet_ms=1_000)
    assert second == StartOutcome("d2", created=True)
    # The new window's instance id must be free: a taken one is reported, nothing is written.
    await commit_one(store, commit_for(await fetch_one(store, "d1"), new_events=[started(input="1")],
                                       update=running()))
    clock.advance(1)
    await commit_one(store, commit_for(await fetch_one(store, "d2"), new_events=[started(input="2")],
                                       update=running()))
    taken = await store.debounce_start(start_msg("d1", input="3"), debounce_key="k", quiet_ms=1_000)
    assert not taken.created and not taken.debounced and taken.existing is not None
    assert taken.existing.status == "Running"
    assert sorted(r.instance_id for r in await store.list_instances()) == ["d1", "d2"]
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []


async def test_debounce_windows_are_per_orchestration_name_and_key(store: Provider, clock: ManualClock) -> None:
    a = await store.debounce_start(start_msg("a", name="A", input="a"), debounce_key="k", quiet_ms=1_000)
    b = await store.debounce_start(start_msg("b", name="B", input="b"), debounce_key="k", quiet_ms=1_000)
    c = await store.debounce_start(start_msg("c", name="A", input="c"), debounce_key="other", quiet_ms=1_000)
    assert (a.created, b.created, c.created) == (True, True, True)
    clock.advance(1)
    items = await fetch_items(store)
    assert {iid: [m.message.input for m in item.messages if isinstance(m.message, StartOrchestration)]
            for iid, item in items.items()} == {"a": ["a"], "b": ["b"], "c": ["c"]}


async def test_concurrent_debounced_starts_of_one_key_make_one_instance(store: Provider, clock: ManualClock) -> None:
    outcomes = await asyncio.gather(*(store.debounce_start(start_msg(f"d{n}", input=str(n)), debounce_key="k",
                                                           quiet_ms=1_000) for n in range(10)))
    assert sum(o.created for o in outcomes) == 1 and sum(o.debounced for o in outcomes) == 9
    winner = next(o.instance_id for o in outcomes if o.created)
    assert {o.instance_id for o in outcomes} == {winner}
    clock.advance(1)
    item = await fetch_one(store, winner)
    assert len(item.messages) == 1 and [r.instance_id for r in await store.list_instances()] == [winner]


async def test_a_pickup_racing_debounced_starts_either_takes_the_first_input_or_none(
        store: Provider, clock: ManualClock) -> None:
    # The held start is due; a fetch and five debounced starts of its key run at once. A start
    # that joined the window pushed the held start past now, so the fetch cannot have taken it;
    # a fetch that took it closed the window, so every start after it went to one new instance.
    for round_ in range(4):
        key, first = f"k{round_}", f"r{round_}-0"
        await store.debounce_start(start_msg(first, input="first"), debounce_key=key, quiet_ms=1_000)
        clock.advance(1)
        # Tasks start in the order they are made: the fetch first in even rounds, last in odd ones
        # (a store that serialises its calls sees both orders).
        fetch = None if round_ % 2 else asyncio.ensure_future(store.fetch_orchestration_items(100, LONG_LOCK))
        starts = [asyncio.ensure_future(store.debounce_start(start_msg(f"r{round_}-{n}", input=str(n)),
                                                             debounce_key=key, quiet_ms=1_000)) for n in range(1, 6)]
        fetch = fetch or asyncio.ensure_future(store.fetch_orchestration_items(100, LONG_LOCK))
        await asyncio.gather(fetch, *starts)
        fetched, outcomes = fetch.result(), [t.result() for t in starts]
        taken = [m.message for i in fetched.items if i.instance_id == first for m in i.messages
                 if isinstance(m.message, StartOrchestration)]
        joined_first = [o for o in outcomes if o.instance_id == first]
        assert all(o.debounced for o in joined_first)
        if taken:
            assert [m.input for m in taken] == ["first"] and joined_first == []
            created = [o for o in outcomes if o.created]
            assert len(created) == 1 and all(o.debounced for o in outcomes if not o.created), outcomes
            assert {o.instance_id for o in outcomes} == {created[0].instance_id}
        else:
            assert len(joined_first) == 5, outcomes


async def test_send_returns_record_and_enqueues_for_live_instance(store: Provider) -> None:
    await begin(store, "i1")
    rec = await store.send(event_msg("i1", "a", "1"))
    assert rec is not None and rec.instance_id == "i1" and rec.status == "Running"
    assert rec == await store.get_instance("i1")
    await store.send(event_msg("i1", "b", "2"))
    await store.send(event_msg("i1", "a", "3"))
    item = await fetch_one(store, "i1")
    # FIFO: messages in the order they were sent.
    assert [m.message for m in item.messages] == [event_msg("i1", "a", "1"), event_msg("i1", "b", "2"),
                                                   event_msg("i1", "a", "3")]


async def test_send_to_unknown_instance_returns_none_and_enqueues_nothing(store: Provider) -> None:
    assert await store.send(event_msg("ghost")) is None
    result = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert result.items == []
    assert await store.get_instance("ghost") is None
    # Creating the id later must not surface the earlier message.
    await store.create_instance(start_msg("ghost"))
    item = await fetch_one(store, "ghost")
    assert [type(m.message) for m in item.messages] == [StartOrchestration]


async def test_guarded_send_enqueues_only_for_a_listed_status(store: Provider) -> None:
    await begin(store, "i1")
    await finish(store, "i1")
    rec = await store.send(event_msg("i1"), only_if_status_in=LIVE)
    assert rec is not None and rec.status == "Completed"
    rec = await store.send(CancelRequest(instance_id="i1", reason="late"), only_if_status_in=LIVE)
    assert rec is not None and rec.status == "Completed"
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    assert await store.send(event_msg("ghost"), only_if_status_in=LIVE) is None
    # Unguarded, the row's existence is the only condition; a listed status admits it too.
    rec = await store.send(event_msg("i1", "a"))
    assert rec is not None and rec.status == "Completed"
    assert await store.send(event_msg("i1", "b"), only_if_status_in=ENDED) is not None
    item = await fetch_one(store, "i1")
    assert [m.message for m in item.messages] == [event_msg("i1", "a"), event_msg("i1", "b")]


# -- fetch_orchestration_items ------------------------------------------------------------


async def test_locked_instance_is_not_fetched_again_but_others_are(store: Provider) -> None:
    await store.create_instance(start_msg("a"))
    first = await fetch_items(store)
    assert list(first) == ["a"]
    await store.create_instance(start_msg("b"))
    await store.send(event_msg("a"))  # visible, but "a" is locked
    second = await fetch_items(store)
    assert list(second) == ["b"]
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []


async def test_messages_arriving_during_a_turn_wait_for_the_next_one(store: Provider) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1")
    late = event_msg("i1", "late", "x")
    await store.send(late)
    assert [type(m.message) for m in item.messages] == [StartOrchestration]
    await commit_one(store, commit_for(item, new_events=[started()], update=running()))
    nxt = await fetch_one(store, "i1")
    assert [m.message for m in nxt.messages] == [late]
    assert nxt.dequeue_count == 1
    assert nxt.history_len == 1
    assert nxt.lock_token != item.lock_token


async def test_lock_expiry_redelivers_with_new_token_and_higher_dequeue_count(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    first = await fetch_one(store, "i1", lock_timeout=SHORT_LOCK)
    assert first.dequeue_count == 1
    assert (await store.fetch_orchestration_items(10, SHORT_LOCK)).items == []
    clock.advance(PAST_SHORT_LOCK)
    second = await fetch_one(store, "i1", lock_timeout=LONG_LOCK)
    assert second.lock_token != first.lock_token
    assert second.dequeue_count == 2
    assert [m.message for m in second.messages] == [m.message for m in first.messages]
    # The old token can no longer commit; the new one can.
    assert await store.commit_turns([commit_for(first, new_events=[started()], update=running())]) == [False]
    await commit_one(store, commit_for(second, new_events=[started()], update=running()))
    assert len(await store.read_history("i1")) == 1


async def test_renewed_instance_lock_outlives_its_first_timeout(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    await store.create_instance(start_msg("i2"))
    item = await fetch_one(store, "i1", lock_timeout=SHORT_LOCK)
    assert await store.renew_orchestration_items([(item.instance_id, item.lock_token), ("i2", "not-a-token")],
                                                 LONG_LOCK) == [True, False]
    clock.advance(PAST_SHORT_LOCK)
    assert [i.instance_id for i in (await store.fetch_orchestration_items(10, LONG_LOCK)).items] == ["i2"]
    await commit_one(store, commit_for(item, new_events=[started()], update=running()))
    # Committed: the lock is gone, and renewing it again says so.
    assert await store.renew_orchestration_items([(item.instance_id, item.lock_token)], LONG_LOCK) == [False]
    assert await store.renew_orchestration_items([], LONG_LOCK) == []


async def test_renewal_of_a_lock_another_fetch_took_over_fails(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    first = await fetch_one(store, "i1", lock_timeout=SHORT_LOCK)
    clock.advance(PAST_SHORT_LOCK)
    second = await fetch_one(store, "i1", lock_timeout=LONG_LOCK)
    assert await store.renew_orchestration_items([("i1", first.lock_token)], LONG_LOCK) == [False]
    assert await store.renew_orchestration_items([("i1", second.lock_token)], LONG_LOCK) == [True]


async def test_fetch_respects_max_items(store: Provider) -> None:
    for iid in ("a", "b", "c"):
        await store.create_instance(start_msg(iid))
        await store.send(event_msg(iid))
    first = await store.fetch_orchestration_items(2, LONG_LOCK)
    assert len(first.items) == 2
    # Each item carries all of its instance's visible messages.
    assert all(len(i.messages) == 2 for i in first.items)
    second = await store.fetch_orchestration_items(2, LONG_LOCK)
    assert len(second.items) == 1
    ids = {i.instance_id for i in first.items} | {i.instance_id for i in second.items}
    assert ids == {"a", "b", "c"}
    one = await store.fetch_orchestration_items(1, LONG_LOCK)
    assert one.items == []


async def test_delayed_message_is_invisible_until_due_and_next_due_is_reported(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1")
    item = await next_turn(store, "i1")
    fire_at = clock.now_ms() + 300
    timer = TimerFired(instance_id="i1", execution_id=1, event_id=3, fire_at_ms=fire_at)
    await commit_one(store, commit_for(item, new_events=[
        Event.EventRaised(event_id=2, timestamp_ms=now_ms(), name="poke", data="d"),
        Event.TimerCreated(event_id=3, timestamp_ms=now_ms(), fire_at_ms=fire_at)],
        messages=[(timer, fire_at)], update=running()))
    early = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert early.items == []
    assert early.next_due_ms == fire_at
    clock.advance(0.299)
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []  # a millisecond early
    clock.advance(0.001)
    due = await fetch_one(store, "i1")
    assert [m.message for m in due.messages] == [timer]
    assert clock.now_ms() == fire_at


async def test_next_due_is_none_when_nothing_is_pending(store: Provider) -> None:
    result = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert result.items == [] and result.next_due_ms is None


# -- commit_turns ----------------------------------------------------------------------------


async def test_commit_appends_history_consumes_enqueues_and_updates(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1")
    fire_at = clock.now_ms() + 60_000
    events = [started(), Event.ActivityScheduled(event_id=2, timestamp_ms=now_ms(), name="Act", input="x"),
              Event.TimerCreated(event_id=3, timestamp_ms=now_ms(), fire_at_ms=fire_at)]
    work = activity("i1", 2)
    timer = TimerFired(instance_id="i1", execution_id=1, event_id=3, fire_at_ms=fire_at)
    await commit_one(store, commit_for(item, new_events=events, activities=[work], messages=[(timer, fire_at)],
                                       update=running(custom_status="step1", custom_status_changed=True)))
    assert await store.read_history("i1") == events
    assert await store.read_history("i1", 1) == events
    rec = await store.get_instance("i1")
    assert rec is not None and rec.status == "Running" and rec.custom_status == "step1"
    assert rec.version == "1.0.0" and rec.execution_id == 1
    leases = await store.fetch_work_items(10, LONG_LOCK)
    assert [lease.work for lease in leases] == [work]
    assert leases[0].dequeue_count == 1
    # Start consumed; timer not yet due; lock released (nothing visible, nothing locked).
    result = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert result.items == [] and result.next_due_ms == fire_at


async def test_commit_releases_the_lock(store: Provider) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1", lock_timeout=LONG_LOCK)
    await commit_one(store, commit_for(item, new_events=[started()], update=running()))
    await store.send(event_msg("i1"))
    nxt = await fetch_one(store, "i1")  # immediately, not after the 30 s lock
    assert [type(m.message) for m in nxt.messages] == [ExternalEvent]


async def test_commit_consumes_only_listed_messages(store: Provider) -> None:
    await store.create_instance(start_msg("i1"))
    await store.send(event_msg("i1", "e1"))
    item = await fetch_one(store, "i1")
    assert len(item.messages) == 2
    start_id = item.messages[0].id
    await commit_one(store, TurnCommit(instance_id="i1", lock_token=item.lock_token, execution_id=1,
                                       consumed=[start_id], new_events=[started()], update=running()))
    nxt = await fetch_one(store, "i1")
    assert [m.message for m in nxt.messages] == [event_msg("i1", "e1")]


async def test_history_event_ids_and_history_len_across_turns(store: Provider) -> None:
    await begin(store, "i1")
    item = await next_turn(store, "i1")
    assert item.history_len == 1
    more = [Event.EventRaised(event_id=2, timestamp_ms=now_ms(), name="poke", data="d"),
            Event.SystemCall(event_id=3, timestamp_ms=now_ms(), op="guid", value="abc")]
    await commit_one(store, commit_for(item, new_events=more, update=running()))
    item = await next_turn(store, "i1")
    assert item.history_len == 3
    history = await store.read_history("i1")
    assert [e.event_id for e in history] == [1, 2, 3]
    assert history[1:] == more
    await store.abandon_orchestration_item("i1", item.lock_token, 0)


async def test_custom_status_written_only_when_changed(store: Provider) -> None:
    await begin(store, "i1")
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, update=running(custom_status="a", custom_status_changed=True)))
    assert (await store.get_instance("i1")).custom_status == "a"  # type: ignore[union-attr]
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, update=running(custom_status=None, custom_status_changed=False)))
    assert (await store.get_instance("i1")).custom_status == "a"  # type: ignore[union-attr]
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, update=running(custom_status="zzz", custom_status_changed=False)))
    assert (await store.get_instance("i1")).custom_status == "a"  # type: ignore[union-attr]
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, update=running(custom_status=None, custom_status_changed=True)))
    assert (await store.get_instance("i1")).custom_status is None  # type: ignore[union-attr]


async def test_failed_update_stores_error_details(store: Provider) -> None:
    await begin(store, "i1")
    item = await next_turn(store, "i1")
    details = ErrorDetails("ValueError", "boom", "Traceback ...")
    await commit_one(store, commit_for(item, new_events=[
        Event.OrchestrationFailed(event_id=2, timestamp_ms=now_ms(), details=details)],
        update=InstanceUpdate(name="Orch", version="1.0.0", execution_id=1, status="Failed", error=details)))
    rec = await store.get_instance("i1")
    assert rec is not None and rec.status == "Failed" and rec.error == details and rec.output is None
    last = (await store.read_history("i1"))[-1]
    assert isinstance(last, Event.OrchestrationFailed) and last.details == details


async def test_child_start_creates_child_row_with_parent(store: Provider) -> None:
    await store.create_instance(start_msg("parent"))
    item = await fetch_one(store, "parent")
    child_start = StartOrchestration(instance_id="child", name="Child", version="2.0.0", input="ci",
                                     parent_instance_id="parent", parent_execution_id=1, parent_event_id=2)
    await commit_one(store, commit_for(item, new_events=[
        started(), Event.SubOrchestrationScheduled(event_id=2, timestamp_ms=now_ms(), name="Child",
                                                   version="2.0.0", instance_id="child", input="ci")],
        children=[ChildStart(child_start, if_taken=event_msg("parent", "taken"))], update=running()))
    child = await store.get_instance("child")
    assert child is not None
    assert (child.name, child.version, child.status, child.parent_instance_id) == ("Child", "2.0.0", "Pending",
                                                                                   "parent")
    items = await fetch_items(store)
    assert "parent" not in items  # if_taken is not sent when the child was created
    assert [m.message for m in items["child"].messages] == [child_start]


async def test_child_with_taken_id_enqueues_if_taken_instead(store: Provider) -> None:
    await begin(store, "taken", name="Other")
    await store.create_instance(start_msg("parent"))
    item = await fetch_one(store, "parent")
    clash = StartOrchestration(instance_id="taken", name="Child", version="1.0.0", input="ci",
                               parent_instance_id="parent", parent_execution_id=1, parent_event_id=2)
    answer = SubOrchestrationResult(instance_id="parent", execution_id=1, event_id=2,
                                    error=ErrorDetails("InstanceAlreadyExistsError", "taken"))
    detached = StartOrchestration(instance_id="taken", name="Chained", version="1.0.0", input="")
    await commit_one(store, commit_for(item, new_events=[
        started(), Event.SubOrchestrationScheduled(event_id=2, timestamp_ms=now_ms(), name="Child",
                                                   version="1.0.0", instance_id="taken", input="ci")],
        children=[ChildStart(clash, if_taken=answer), ChildStart(detached, if_taken=None)], update=running()))
    # The existing instance is untouched and gets no message.
    taken = await store.get_instance("taken")
    assert taken is not None and taken.name == "Other" and taken.parent_instance_id is None
    items = await fetch_items(store)
    assert "taken" not in items
    # The message the runtime chose is enqueued verbatim, once; None enqueues nothing.
    assert [m.message for m in items["parent"].messages] == [answer]


async def test_children_are_created_before_the_turns_messages(store: Provider) -> None:
    await store.create_instance(start_msg("parent"))
    item = await fetch_one(store, "parent")
    kid = StartOrchestration(instance_id="kid", name="Child", version="1.0.0", input="",
                             parent_instance_id="parent", parent_execution_id=1, parent_event_id=2)
    # A message to the new child in the same commit lands behind its start.
    await commit_one(store, commit_for(item, new_events=[started()], children=[ChildStart(kid)],
                                       messages=[(event_msg("kid"), None)], update=running()))
    kitem = await fetch_one(store, "kid")
    assert [m.message for m in kitem.messages] == [kid, event_msg("kid")]


async def test_stale_lock_token_commit_returns_false_and_changes_nothing(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    stale = await fetch_one(store, "i1", lock_timeout=SHORT_LOCK)
    clock.advance(PAST_SHORT_LOCK)
    fresh = await fetch_one(store, "i1", lock_timeout=LONG_LOCK)
    child = StartOrchestration(instance_id="kid", name="Child", version="1.0.0", input="",
                               parent_instance_id="i1", parent_execution_id=1, parent_event_id=3)
    bad = commit_for(stale, new_events=[started(), Event.ActivityScheduled(event_id=2, timestamp_ms=now_ms(),
                                                                        name="Act", input="x")],
                     activities=[activity("i1", 2)], children=[ChildStart(child)],
                     update=completed("stale"))
    assert await store.commit_turns([bad]) == [False]
    assert await store.read_history("i1") == []
    assert await store.list_executions("i1") == []
    rec = await store.get_instance("i1")
    assert rec is not None and rec.status == "Pending" and rec.output is None
    assert await store.get_instance("kid") is None
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    # The fresh lock still holds and still works; the start message was not consumed.
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    await commit_one(store, commit_for(fresh, new_events=[started()], update=running()))
    assert len(await store.read_history("i1")) == 1


async def test_token_commits_at_most_once(store: Provider) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1")
    c = commit_for(item, new_events=[started()], update=running())
    await commit_one(store, c)
    again = commit_for(item, new_events=[Event.EventRaised(event_id=2, timestamp_ms=now_ms(), name="x", data="")],
                       update=completed())
    assert await store.commit_turns([again]) == [False]
    assert len(await store.read_history("i1")) == 1
    assert (await store.get_instance("i1")).status == "Running"  # type: ignore[union-attr]


async def test_batch_with_stale_and_valid_commit_applies_only_the_valid_one(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("a"))
    stale_a = await fetch_one(store, "a", lock_timeout=SHORT_LOCK)
    clock.advance(PAST_SHORT_LOCK)
    await store.create_instance(start_msg("b"))
    items = await fetch_items(store)
    assert set(items) == {"a", "b"}
    results = await store.commit_turns([
        commit_for(stale_a, new_events=[started()], activities=[activity("a", 2)], update=running()),
        commit_for(items["b"], new_events=[started()], activities=[activity("b", 2)], update=running()),
    ])
    assert results == [False, True]
    assert await store.read_history("a") == []
    assert (await store.get_instance("a")).status == "Pending"  # type: ignore[union-attr]
    assert len(await store.read_history("b")) == 1
    assert (await store.get_instance("b")).status == "Running"  # type: ignore[union-attr]
    assert [lease.work.instance_id for lease in await store.fetch_work_items(10, LONG_LOCK)] == ["b"]
    # "a" is still locked by its fresh token, which still commits.
    assert await store.commit_turns([commit_for(items["a"], new_events=[started()], update=running())]) == [True]


async def test_batch_commits_many_instances(store: Provider) -> None:
    for iid in ("a", "b", "c"):
        await store.create_instance(start_msg(iid))
    items = await fetch_items(store)
    results = await store.commit_turns([commit_for(items[i], new_events=[started()], update=running())
                                        for i in ("a", "b", "c")])
    assert results == [True, True, True]
    histories = await store.read_histories([("a", 1), ("b", 1), ("c", 1), ("nobody", 1)])
    for iid in ("a", "b", "c"):
        assert histories[iid] == await store.read_history(iid)
        assert len(histories[iid]) == 1  # type: ignore[arg-type]
    assert histories.get("nobody", []) == []


# -- abandon_orchestration_item ------------------------------------------------------------


async def test_abandon_releases_with_delay_and_keeps_messages(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1")
    # A wrong token changes nothing: the instance stays locked.
    await store.abandon_orchestration_item("i1", "not-the-token", 0)
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    before = clock.now_ms()
    await store.abandon_orchestration_item("i1", item.lock_token, 0.3)
    hidden = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert hidden.items == []
    assert hidden.next_due_ms == before + 300
    clock.advance(0.299)
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    clock.advance(0.001)
    again = await fetch_one(store, "i1")
    assert [m.message for m in again.messages] == [m.message for m in item.messages]
    assert again.dequeue_count == 2
    assert await store.commit_turns([commit_for(item, new_events=[started()])]) == [False]
    await commit_one(store, commit_for(again, new_events=[started()], update=running()))


async def test_abandon_without_delay_is_immediately_fetchable(store: Provider) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1")
    await store.abandon_orchestration_item("i1", item.lock_token, 0)
    again = await fetch_one(store, "i1")
    assert again.lock_token != item.lock_token and again.dequeue_count == 2


async def test_abandon_with_superseded_token_does_not_unlock_new_holder(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    stale = await fetch_one(store, "i1", lock_timeout=SHORT_LOCK)
    clock.advance(PAST_SHORT_LOCK)
    fresh = await fetch_one(store, "i1", lock_timeout=LONG_LOCK)
    await store.abandon_orchestration_item("i1", stale.lock_token, 0)
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    await commit_one(store, commit_for(fresh, new_events=[started()], update=running()))


# -- executions / continue-as-new ------------------------------------------------------------


async def test_continue_as_new_moves_to_next_execution_and_keeps_old_history(store: Provider) -> None:
    await begin(store, "i1")
    item = await next_turn(store, "i1")
    can = Event.OrchestrationContinuedAsNew(event_id=2, timestamp_ms=now_ms(), input="next")
    nxt_start = StartOrchestration(instance_id="i1", name="Orch", version="1.0.0", input="next", execution_id=2)
    await commit_one(store, commit_for(item, new_events=[can], messages=[(nxt_start, None)],
                                       update=running(execution_id=2)))
    rec = await store.get_instance("i1")
    assert rec is not None and rec.execution_id == 2 and rec.status == "Running"
    old = await store.read_history("i1", 1)
    assert [type(e).__name__ for e in old] == ["OrchestrationStarted", "OrchestrationContinuedAsNew"]
    assert await store.read_history("i1") == []  # current execution has no events yet
    assert await store.list_executions("i1") == [1]

    item2 = await fetch_one(store, "i1")
    assert [m.message for m in item2.messages] == [nxt_start]
    assert item2.instance is not None and item2.instance.execution_id == 2
    assert item2.history_len == 0
    first2 = Event.OrchestrationStarted(event_id=1, timestamp_ms=now_ms(), name="Orch", version="1.0.0",
                                        input="next")
    await commit_one(store, commit_for(item2, execution_id=2, new_events=[first2], update=running(execution_id=2)))
    assert await store.read_history("i1") == [first2]
    assert await store.read_history("i1", 2) == [first2]
    assert await store.read_history("i1", 1) == old
    assert await store.list_executions("i1") == [1, 2]
    hs = await store.read_histories([("i1", 1)])
    assert hs["i1"] == old
    item3 = await next_turn(store, "i1")
    assert item3.history_len == 1


async def test_read_history_of_unknown_instance_is_empty(store: Provider) -> None:
    assert await store.read_history("nope") == []
    assert await store.read_history("nope", 3) == []
    assert await store.list_executions("nope") == []


# -- activity work queue ---------------------------------------------------------------------


async def test_work_lease_is_exclusive(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    one = await store.fetch_work_items(1, LONG_LOCK)
    assert len(one) == 1
    rest = await store.fetch_work_items(10, LONG_LOCK)
    assert len(rest) == 1
    assert {one[0].work.event_id, rest[0].work.event_id} == {2, 3}
    assert one[0].lock_token != rest[0].lock_token
    assert await store.fetch_work_items(10, LONG_LOCK) == []


async def test_work_lease_expiry_redelivers_with_dequeue_count(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    first = await store.fetch_work_items(10, SHORT_LOCK)
    assert len(first) == 1 and first[0].dequeue_count == 1
    assert await store.fetch_work_items(10, SHORT_LOCK) == []
    clock.advance(PAST_SHORT_LOCK)
    second = await store.fetch_work_items(10, LONG_LOCK)
    assert len(second) == 1
    assert second[0].work == first[0].work
    assert second[0].dequeue_count == 2
    assert second[0].lock_token != first[0].lock_token
    # The lost lease cannot be renewed; the current one can.
    assert await store.renew_work_item(first[0].lock_token, LONG_LOCK) is False
    assert await store.renew_work_item(second[0].lock_token, LONG_LOCK) is True


async def test_renew_extends_the_lease(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, 0.2))[0]
    clock.advance(0.1)
    assert await store.renew_work_item(lease.lock_token, 1.0) is True  # now until 1.1 s
    clock.advance(0.999)  # long past the original 0.2 s lease
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    clock.advance(0.001)  # the renewed lease ends: the call is redelivered
    assert [w.dequeue_count for w in await store.fetch_work_items(10, LONG_LOCK)] == [2]
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    assert await store.renew_work_item("unknown-token", 1.0) is False


async def test_abandon_work_item_delay_is_honoured(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, LONG_LOCK))[0]
    await store.abandon_work_item(lease.lock_token, 0.3)
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    clock.advance(0.299)
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    clock.advance(0.001)
    again = await store.fetch_work_items(10, LONG_LOCK)
    assert len(again) == 1 and again[0].work == lease.work and again[0].dequeue_count == 2


async def test_complete_work_enqueues_result_and_removes_item(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, SHORT_LOCK))[0]
    result = ActivityResult(instance_id="i1", execution_id=1, event_id=2, result="42")
    await store.complete_work_items([WorkCompletion(lease.lock_token, result)])
    item = await fetch_one(store, "i1")
    assert [m.message for m in item.messages] == [result]
    clock.advance(PAST_SHORT_LOCK)  # even after the lease would have expired
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    assert await store.renew_work_item(lease.lock_token, LONG_LOCK) is False


async def test_complete_work_batch_and_error_result(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    leases = sorted(await store.fetch_work_items(10, LONG_LOCK), key=lambda lease: lease.work.event_id)
    ok = ActivityResult(instance_id="i1", execution_id=1, event_id=2, result="r")
    bad = ActivityResult(instance_id="i1", execution_id=1, event_id=3,
                         error=ErrorDetails("RuntimeError", "nope", "tb"))
    await store.complete_work_items([WorkCompletion(leases[0].lock_token, ok),
                                     WorkCompletion(leases[1].lock_token, bad)])
    item = await fetch_one(store, "i1")
    assert sorted((m.message for m in item.messages), key=lambda m: m.event_id) == [ok, bad]  # type: ignore[attr-defined]


async def test_poison_notice_completion_is_enqueued(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, LONG_LOCK))[0]
    notice = PoisonNotice(instance_id="i1", execution_id=1, reason="delivered too often")
    await store.complete_work_items([WorkCompletion(lease.lock_token, notice)])
    item = await fetch_one(store, "i1")
    assert [m.message for m in item.messages] == [notice]
    assert await store.fetch_work_items(10, LONG_LOCK) == []


async def test_guarded_completion_for_an_unlisted_status_enqueues_nothing(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    leases = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, SHORT_LOCK)}
    lease = leases[2]
    await finish(store, "i1")
    assert await store.renew_work_item(lease.lock_token, LONG_LOCK, only_if_status_in=LIVE) is False
    result = ActivityResult(instance_id="i1", execution_id=1, event_id=2, result="late")
    await store.complete_work_items([WorkCompletion(lease.lock_token, result)], only_if_status_in=LIVE)
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    # Unguarded, the lease alone decides: renewal works and the result is enqueued.
    assert await store.renew_work_item(leases[3].lock_token, SHORT_LOCK) is True
    other = ActivityResult(instance_id="i1", execution_id=1, event_id=3, result="r")
    await store.complete_work_items([WorkCompletion(leases[3].lock_token, other)])
    assert [m.message for m in (await fetch_one(store, "i1")).messages] == [other]
    clock.advance(PAST_SHORT_LOCK)
    assert await store.fetch_work_items(10, LONG_LOCK) == []


async def test_renew_fails_after_continue_as_new(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, LONG_LOCK))[0]
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, new_events=[
        Event.OrchestrationContinuedAsNew(event_id=3, timestamp_ms=now_ms(), input="")],
        messages=[(StartOrchestration(instance_id="i1", name="Orch", version="1.0.0", input="", execution_id=2),
                   None)], update=running(execution_id=2)))
    assert await store.renew_work_item(lease.lock_token, LONG_LOCK, only_if_execution=1) is False
    assert await store.renew_work_item(lease.lock_token, LONG_LOCK, only_if_execution=2,
                                       only_if_status_in=LIVE) is True
    assert await store.renew_work_item(lease.lock_token, LONG_LOCK) is True


async def test_renew_fails_once_the_instance_is_gone(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, LONG_LOCK))[0]
    await store.purge_instance("i1")
    assert await store.renew_work_item(lease.lock_token, LONG_LOCK) is False


async def test_delete_timers_deletes_exactly_the_named_queued_timers(store: Provider) -> None:
    await begin(store, "i1")
    await begin(store, "i2")
    later = store.clock.now_ms() + 3_600_000
    timers = [TimerFired(instance_id=i, execution_id=x, event_id=e, fire_at_ms=later)
              for i, x, e in (("i1", 1, 2), ("i1", 1, 3), ("i1", 2, 2), ("i2", 1, 2))]
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, messages=[(t, later) for t in timers[:3]], update=running()))
    item = await next_turn(store, "i2")
    await commit_one(store, commit_for(item, messages=[(timers[3], later)], update=running()))
    assert (await store.queue_depths()).timers == 4
    item = await next_turn(store, "i1")
    # Only queued TimerFired match (the poke just consumed is no timer); a key may name another instance's.
    await commit_one(store, commit_for(item, delete_timers=[CallKey("i1", 1, 2), CallKey("i2", 1, 2)],
                                       update=running()))
    depths = await store.queue_depths()
    assert (depths.timers, depths.orchestrator) == (2, 0)


async def test_queue_depths_count_what_waits_and_the_listed_statuses(store: Provider) -> None:
    await begin(store, "run", activities=[activity("run", 2)])
    await store.create_instance(start_msg("pending"))
    await begin(store, "done")
    await finish(store, "done")
    later = store.clock.now_ms() + 3_600_000
    item = await next_turn(store, "run")
    await commit_one(store, commit_for(item, messages=[
        (TimerFired(instance_id="run", execution_id=1, event_id=3, fire_at_ms=later), later)], update=running()))
    depths = await store.queue_depths()
    assert (depths.orchestrator, depths.timers, depths.worker, depths.active_instances) == (1, 1, 1, 2)
    assert (await store.queue_depths(active_statuses=ENDED)).active_instances == 1
    assert (await store.queue_depths(active_statuses=["Running"])).active_instances == 1


async def test_cancelled_activities_delete_unleased_work(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    await begin(store, "other", activities=[activity("other", 2)])
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, cancel_activities=[CallKey("i1", 1, 2)], update=running()))
    leases = await store.fetch_work_items(10, LONG_LOCK)
    assert sorted((lease.work.instance_id, lease.work.event_id) for lease in leases) == [("i1", 3), ("other", 2)]


async def test_cancel_activities_match_their_exact_keys(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    await begin(store, "other", activities=[activity("other", 2)])
    item = await next_turn(store, "i1")
    # Keys of another execution, or of an event that was never scheduled, match nothing;
    # a key may name another instance's call.
    await commit_one(store, commit_for(item, cancel_activities=[
        CallKey("i1", 2, 2), CallKey("i1", 1, 9), CallKey("other", 1, 2)], update=running()))
    leases = await store.fetch_work_items(10, LONG_LOCK)
    assert sorted((lease.work.instance_id, lease.work.execution_id, lease.work.event_id) for lease in leases) == [
        ("i1", 1, 2), ("i1", 1, 3)]


async def test_cancelling_leased_activity_makes_renew_fail(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    leases = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, LONG_LOCK)}
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, cancel_activities=[CallKey("i1", 1, 2)], update=running()))
    assert await store.renew_work_item(leases[2].lock_token, LONG_LOCK) is False
    assert await store.renew_work_item(leases[3].lock_token, LONG_LOCK) is True
    # Its completion is still accepted (the call's cancellation result reaches the instance).
    result = ActivityResult(instance_id="i1", execution_id=1, event_id=2,
                            error=ErrorDetails("ActivityCancelled", "no longer awaited"))
    await store.complete_work_items([WorkCompletion(leases[2].lock_token, result)], only_if_status_in=LIVE)
    assert [m.message for m in (await fetch_one(store, "i1")).messages] == [result]


async def test_cancelled_leased_activity_is_not_redelivered_after_lease_expiry(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, SHORT_LOCK))[0]
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, cancel_activities=[CallKey("i1", 1, 2)], update=running()))
    clock.advance(PAST_SHORT_LOCK)  # the worker died without completing
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    assert lease.work.event_id == 2


# -- eager dispatch: calls leased by their commit, instances locked by their results ------------
# A store may decline either offer (then everything is queued and fetched as usual); these tests
# hold whether it takes them or not: nothing is ever both handed out and left to fetch.


async def test_a_lease_offer_hands_out_each_call_at_most_once(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    item = await fetch_one(store, "i1")
    calls = [activity("i1", 2), activity("i1", 3, name="Other"), queued("i1", 4, queue="limited"),
             activity("i1", 5), activity("i1", 6)]
    commit = commit_for(item, new_events=[started()], activities=calls, update=running())
    offer = LeaseOffer(2, SHORT_LOCK, frozenset({"Act"}), limited_queues=frozenset({"limited"}))
    assert await store.commit_turns([commit], lease=offer) == [True]
    leased = commit.leased
    assert len(leased) <= 2
    assert all(lease.work.name == "Act" and lease.work.queue != "limited" and lease.dequeue_count == 1
               for lease in leased), "only calls the offer admits are leased"
    fetched = await store.fetch_work_items(10, LONG_LOCK)
    assert sorted(w.work.event_id for w in [*leased, *fetched]) == [2, 3, 4, 5, 6], "every call exactly once"
    # A leased call is an ordinary lease: completed like one, or redelivered once it lapses.
    if leased:
        await store.complete_work_items([WorkCompletion(leased[0].lock_token, ActivityResult(
            instance_id="i1", execution_id=1, event_id=leased[0].work.event_id, result="r"))])
        clock.advance(PAST_SHORT_LOCK)
        again = await store.fetch_work_items(10, LONG_LOCK)
        assert [(w.work.event_id, w.dequeue_count) for w in again] == [(w.work.event_id, 2) for w in leased[1:]]
        assert await store.renew_work_item(leased[0].lock_token, LONG_LOCK) is False


async def test_a_lease_offer_is_void_for_a_turn_whose_lock_is_lost(store: Provider, clock: ManualClock) -> None:
    await store.create_instance(start_msg("i1"))
    stale = await fetch_one(store, "i1", SHORT_LOCK)
    clock.advance(PAST_SHORT_LOCK)
    await fetch_one(store, "i1")  # another dispatcher took the instance over
    commit = commit_for(stale, new_events=[started()], activities=[activity("i1", 2)], update=running())
    assert await store.commit_turns([commit], lease=LeaseOffer(5, LONG_LOCK, frozenset({"Act"}))) == [False]
    assert commit.leased == []
    assert await store.fetch_work_items(10, LONG_LOCK) == []


async def test_a_lock_offer_hands_out_the_instance_at_most_once(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    await begin(store, "other", activities=[activity("other", 2)], name="Unknown")
    leases = {w.work.instance_id: w for w in await store.fetch_work_items(10, LONG_LOCK)}
    results = [ActivityResult(instance_id=i, execution_id=1, event_id=2, result=i) for i in ("i1", "other")]
    assert await store.send(event_msg("i1")) is not None
    items = await store.complete_work_items([WorkCompletion(leases[r.instance_id].lock_token, r) for r in results],
                                            lock=LockOffer(5, SHORT_LOCK, frozenset({"Orch"})))
    assert [i.instance_id for i in items] in ([], ["i1"]), "only instances of the named orchestrations"
    fetched = await fetch_items(store)
    assert sorted([*fetched, *(i.instance_id for i in items)]) == ["i1", "other"], "each instance locked once"
    mine = items[0] if items else fetched["i1"]
    assert sorted(type(m.message).__name__ for m in mine.messages) == ["ActivityResult", "ExternalEvent"]
    assert mine.instance is not None and mine.instance.status == "Running" and mine.history_len == 2
    if items:  # an ordinary lock: it lapses like one, and the messages come back
        clock.advance(PAST_SHORT_LOCK)
        again = await fetch_one(store, "i1")
        assert len(again.messages) == 2 and again.dequeue_count == 2
        assert await store.commit_turns([commit_for(items[0])]) == [False]
        await commit_one(store, commit_for(again))


async def test_a_lock_offer_leaves_a_locked_instance_alone(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    lease = (await store.fetch_work_items(10, LONG_LOCK))[0]
    held = await next_turn(store, "i1")  # a dispatcher holds the instance
    result = ActivityResult(instance_id="i1", execution_id=1, event_id=2, result="r")
    assert await store.complete_work_items([WorkCompletion(lease.lock_token, result)],
                                           lock=LockOffer(5, LONG_LOCK, frozenset({"Orch"}))) == []
    await commit_one(store, commit_for(held))
    assert [m.message for m in (await fetch_one(store, "i1")).messages] == [result]


# -- queue limits (fetch_work_items(queues=...)) -------------------------------------------------


def queued(iid: str, event_id: int, queue: str = "q", key: str | None = None, priority: int = 0) -> ActivityWork:
    return ActivityWork(instance_id=iid, execution_id=1, event_id=event_id, name="Act", input="x", queue=queue,
                        concurrency_key=key, priority=priority)


async def test_queue_concurrency_counts_leases_of_every_fetch(store: Provider, clock: ManualClock) -> None:
    limits = {"q": QueueOptions(concurrency=2)}
    await begin(store, "i1", activities=[queued("i1", n) for n in range(2, 7)])
    first = await store.fetch_work_items(1, SHORT_LOCK, queues=limits)
    second = await store.fetch_work_items(10, LONG_LOCK, queues=limits)  # another process, say
    assert [len(first), len(second)] == [1, 1]
    assert await store.fetch_work_items(10, LONG_LOCK, queues=limits) == []
    # A lapsed lease frees its slot; a completed call frees its own.
    clock.advance(PAST_SHORT_LOCK)
    again = await store.fetch_work_items(10, LONG_LOCK, queues=limits)
    assert [w.work.event_id for w in again] == [2]
    await store.complete_work_items([WorkCompletion(second[0].lock_token, ActivityResult(
        instance_id="i1", execution_id=1, event_id=second[0].work.event_id, result="ok"))])
    assert [w.work.event_id for w in await store.fetch_work_items(10, LONG_LOCK, queues=limits)] == [4]


async def test_a_full_queue_does_not_hold_back_other_queues(store: Provider) -> None:
    limits = {"q": QueueOptions(concurrency=1)}
    backlog = [queued("i1", n) for n in range(2, 40)]
    await begin(store, "i1", activities=[*backlog, queued("i1", 40, queue="other"), queued("i1", 41, queue="default")])
    leased = await store.fetch_work_items(5, LONG_LOCK, queues=limits)
    assert sorted(w.work.event_id for w in leased) == [2, 40, 41]
    assert {w.work.queue for w in leased} == {"q", "other", "default"}


async def test_per_key_concurrency_limits_each_key_alone(store: Provider) -> None:
    limits = {"q": QueueOptions(per_key_concurrency=1)}
    await begin(store, "i1", activities=[queued("i1", 2, key="a"), queued("i1", 3, key="a"), queued("i1", 4, key="b"),
                                         queued("i1", 5, key=None), queued("i1", 6, key=None)])
    leased = await store.fetch_work_items(10, LONG_LOCK, queues=limits)
    # One call per key; calls without a key are bound only by the queue's concurrency (none here).
    assert sorted(w.work.event_id for w in leased) == [2, 4, 5, 6]
    assert await store.fetch_work_items(10, LONG_LOCK, queues=limits) == []


async def test_rate_limit_counts_leases_in_a_sliding_window(store: Provider, clock: ManualClock) -> None:
    limits = {"q": QueueOptions(rate_limit=RateLimit(2, per=timedelta(seconds=10)))}
    await begin(store, "i1", activities=[queued("i1", n) for n in range(2, 8)])
    assert len(await store.fetch_work_items(10, LONG_LOCK, queues=limits)) == 2
    clock.advance(6)
    assert await store.fetch_work_items(10, LONG_LOCK, queues=limits) == []
    assert len(await store.fetch_work_items(1, LONG_LOCK, queues={})) == 1  # no limit given: none applies
    clock.advance(4)  # the first two leases leave the window
    assert len(await store.fetch_work_items(10, LONG_LOCK, queues=limits)) == 2
    assert await store.fetch_work_items(10, LONG_LOCK, queues=limits) == []


async def test_work_is_leased_by_priority_then_arrival(store: Provider) -> None:
    # (The calls of one batch may come back in any order: fetch them one at a time.)
    one_by_one = []
    await begin(store, "i2", activities=[queued("i2", 2, priority=0), queued("i2", 3, priority=5),
                                         queued("i2", 4, priority=-1), queued("i2", 5, priority=5)])
    for _ in range(4):
        (lease,) = await store.fetch_work_items(1, LONG_LOCK)
        one_by_one.append(lease.work.event_id)
    assert one_by_one == [3, 5, 2, 4]


async def test_queued_work_keeps_its_queue_key_and_priority(store: Provider) -> None:
    await begin(store, "i1", activities=[queued("i1", 2, queue="payments", key="customer-42", priority=7)])
    (lease,) = await store.fetch_work_items(10, LONG_LOCK, queues={"payments": QueueOptions(concurrency=5)})
    assert (lease.work.queue, lease.work.concurrency_key, lease.work.priority) == ("payments", "customer-42", 7)


async def test_a_start_in_a_queue_waits_until_a_fetch_admits_it(store: Provider, clock: ManualClock) -> None:
    jobs = {"jobs": QueueOptions(concurrency=1)}
    await store.create_instance(start_msg("w1", queue="jobs", concurrency_key="k", priority=1))
    await store.start_instance(start_msg("w2", queue="jobs", priority=5))
    await store.send(event_msg("w2", "early"))  # waits with its instance
    # Not fetched without the queue's options; no timer is reported for the held starts.
    result = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert result.items == [] and result.next_due_ms is None
    depths = await store.queue_depths()
    assert (depths.orchestrator, depths.timers, depths.waiting_instances) == (1, 0, 2)
    # Admitted by priority: w2 first; then the queue is full.
    (item,) = (await store.fetch_orchestration_items(10, LONG_LOCK, queues=jobs, live_statuses=LIVE)).items
    assert item.instance_id == "w2"
    assert [type(m.message).__name__ for m in item.messages] == ["StartOrchestration", "ExternalEvent"]
    await commit_one(store, commit_for(item, new_events=[started()], update=running()))
    assert (await store.fetch_orchestration_items(10, LONG_LOCK, queues=jobs, live_statuses=LIVE)).items == []
    stats = await store.queue_stats(live_statuses=LIVE)
    assert [(q.queue, q.waiting_instances, q.running_instances) for q in stats] == [("jobs", 1, 1)]
    # w2 ends: its slot is free, w1 goes.
    item = await next_turn(store, "w2")
    await commit_one(store, commit_for(item, update=completed(), ends_instance=True))
    (item,) = (await store.fetch_orchestration_items(10, LONG_LOCK, queues=jobs, live_statuses=LIVE)).items
    assert item.instance_id == "w1"
    assert (await store.queue_depths()).waiting_instances == 0


async def test_waiting_instances_can_be_purged_and_replaced(store: Provider) -> None:
    await store.create_instance(start_msg("w1", queue="jobs"))
    assert await store.purge_instance("w1") == ["w1"]
    await store.create_instance(start_msg("w1"))  # the id is free again, and this start does not wait
    assert (await fetch_items(store))["w1"].instance is not None
    assert await store.queue_stats(live_statuses=LIVE) == []


async def test_queue_stats_count_calls_per_queue(store: Provider) -> None:
    await begin(store, "i1", activities=[queued("i1", 2, queue="payments"), queued("i1", 3, queue="payments"),
                                         queued("i1", 4, queue="default")])
    await store.fetch_work_items(1, LONG_LOCK, queues={"payments": QueueOptions(concurrency=1)})
    stats = {q.queue: (q.queued_calls, q.running_calls) for q in await store.queue_stats(live_statuses=LIVE)}
    assert stats == {"payments": (1, 1), "default": (1, 0)}  # the oldest call (event 2) was leased


# -- purge_instance ------------------------------------------------------------------------------


async def test_guarded_purge_of_an_unlisted_status_deletes_nothing(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    assert await store.purge_instance("i1", only_if_status_in=ENDED) is None
    rec = await store.get_instance("i1")
    assert rec is not None and rec.status == "Running"
    assert len(await store.read_history("i1")) == 2
    assert len(await store.fetch_work_items(10, LONG_LOCK)) == 1
    await store.create_instance(start_msg("pending"))
    assert await store.purge_instance("pending", only_if_status_in=ENDED) is None
    assert await store.get_instance("pending") is not None
    assert await store.purge_instance("never-existed", only_if_status_in=ENDED) == []


async def test_purge_terminal_instance_removes_everything(store: Provider) -> None:
    await begin(store, "i1")
    await finish(store, "i1")
    assert await store.purge_instance("i1", only_if_status_in=ENDED) == ["i1"]
    assert await store.get_instance("i1") is None
    assert await store.read_history("i1", 1) == []
    assert await store.list_executions("i1") == []
    assert await store.list_instances() == []
    assert await store.purge_instance("i1") == []
    assert await store.purge_instance("never-existed") == []


async def test_unguarded_purge_removes_queued_messages_and_work(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    await store.send(event_msg("i1"))
    item = await next_turn(store, "i1")  # locked at purge time
    await store.send(event_msg("i1", "queued"))
    assert await store.purge_instance("i1") == ["i1"]
    assert await store.get_instance("i1") is None
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    # An in-flight commit cannot resurrect the instance.
    assert await store.commit_turns([commit_for(item, new_events=[
        Event.EventRaised(event_id=3, timestamp_ms=now_ms(), name="ev", data="d")],
        activities=[activity("i1", 4)], update=running())]) == [False]
    assert await store.get_instance("i1") is None
    assert await store.read_history("i1", 1) == []
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    # Re-creating the id starts clean: only the new start message, empty history.
    await store.create_instance(start_msg("i1", input="again"))
    fresh = await fetch_one(store, "i1")
    assert [m.message for m in fresh.messages] == [start_msg("i1", input="again")]
    assert fresh.history_len == 0 and fresh.dequeue_count == 1


async def _spawn_child(store: Provider, parent: str, child: str, event_id: int) -> None:
    item = await next_turn(store, parent)
    start = StartOrchestration(instance_id=child, name="Child", version="1.0.0", input="",
                               parent_instance_id=parent, parent_execution_id=1, parent_event_id=event_id)
    await commit_one(store, commit_for(item, new_events=[
        Event.SubOrchestrationScheduled(event_id=event_id, timestamp_ms=now_ms(), name="Child",
                                        version="1.0.0", instance_id=child, input="")],
        children=[ChildStart(start)], update=running()))
    citem = await fetch_one(store, child)
    await commit_one(store, commit_for(citem, new_events=[started(name="Child", input="")],
                                       update=running(name="Child")))


async def test_purge_cascades_to_children_and_grandchildren(store: Provider) -> None:
    await begin(store, "p")
    await _spawn_child(store, "p", "c", 2)
    await _spawn_child(store, "c", "g", 3)
    await begin(store, "bystander")
    assert await store.purge_instance("p", only_if_status_in=ENDED) is None
    assert await store.get_instance("c") is not None
    deleted = await store.purge_instance("p")
    assert deleted is not None and sorted(deleted) == ["c", "g", "p"]
    for iid in ("p", "c", "g"):
        assert await store.get_instance(iid) is None
        assert await store.list_executions(iid) == []
    assert [r.instance_id for r in await store.list_instances()] == ["bystander"]
    assert len(await store.read_history("bystander")) == 1


async def test_guarded_purge_of_a_finished_tree_takes_every_descendant(store: Provider) -> None:
    await begin(store, "p")
    await _spawn_child(store, "p", "c", 2)
    await finish(store, "c")
    await finish(store, "p")
    assert sorted(await store.purge_instance("p", only_if_status_in=ENDED) or []) == ["c", "p"]
    assert await store.get_instance("c") is None


# -- list_instances -----------------------------------------------------------------------------


async def test_list_instances_filters_and_orders_newest_first(store: Provider, clock: ManualClock) -> None:
    for iid, name in (("a", "Alpha"), ("b", "Beta"), ("c", "Alpha")):
        await store.create_instance(start_msg(iid, name=name))
        clock.advance(0.005)
    items = await fetch_items(store)
    await commit_one(store, commit_for(items["b"], new_events=[started(name="Beta")], update=completed(name="Beta")))
    await store.abandon_orchestration_item("a", items["a"].lock_token, 0)
    await store.abandon_orchestration_item("c", items["c"].lock_token, 0)
    assert [r.instance_id for r in await store.list_instances()] == ["c", "b", "a"]
    assert [r.instance_id for r in await store.list_instances(name="Alpha")] == ["c", "a"]
    assert [r.instance_id for r in await store.list_instances(status="Completed")] == ["b"]
    assert [r.instance_id for r in await store.list_instances(status="Pending")] == ["c", "a"]
    assert [r.instance_id for r in await store.list_instances(status="Pending", name="Beta")] == []
    assert [r.instance_id for r in await store.list_instances(limit=2)] == ["c", "b"]
    b = (await store.list_instances(status="Completed"))[0]
    assert b == await store.get_instance("b") and b.output == "done"


# -- wake-ups of other processes' writes (stores that are a WakeSource) --------------------------


async def test_a_wake_source_wakes_hubs_for_writes_it_did_not_report_itself(store: Provider) -> None:
    """What reaches a hub through the store alone (as another process's writes would)."""
    if not isinstance(store, WakeSource):
        pytest.skip("this store hears no other process; the runtime's own wake-ups suffice")
    hub = wake_hub(store)
    await hub.wait_orchestrator(0)
    orch = asyncio.create_task(hub.wait_orchestrator(10))
    await asyncio.sleep(0.05)
    await store.create_instance(start_msg("i1"))
    await asyncio.wait_for(orch, 20)  # milliseconds; on the ManualClock the wait never times out by itself

    item = await fetch_one(store, "i1")
    await hub.wait_worker(0)
    worker = asyncio.create_task(hub.wait_worker(10))
    await asyncio.sleep(0.05)
    await commit_one(store, commit_for(item, new_events=[started()], activities=[activity("i1", 2)],
                                       update=running()))
    await asyncio.wait_for(worker, 20)

    item = await next_turn(store, "i1")
    ended = asyncio.create_task(hub.wait_instance("i1", 10))
    await asyncio.sleep(0.05)
    await commit_one(store, commit_for(item, new_events=[
        Event.OrchestrationCompleted(event_id=3, timestamp_ms=now_ms(), output="x")], update=completed("x"),
        ends_instance=True))
    await asyncio.wait_for(ended, 20)

    purged = asyncio.create_task(hub.wait_instance("i1", 10))
    await asyncio.sleep(0.05)
    assert await store.purge_instance("i1") == ["i1"]
    await asyncio.wait_for(purged, 20)


# -- one set of input limits for every store (duroxide_runtime.limits) ------------------------

#: Valid Unicode no store may alter: every control character but NUL, format and
#: separator characters, combining marks, right-to-left text, noncharacters, astral planes.
WILD_TEXT = ("".join(chr(c) for c in range(1, 32)) + "\x7f\x80\x85\x9b\x9f \u00a0\u200b\u200d\u202e\u2028\u2029"
             "\ufeff\ufffe\uffff e\u0301 \u05e9\u05dc\u05d5\u05dd \u65e5\u672c\u8a9e \U0001f600\U0001f44d\U0001f3fd "
             "\U000e0001\U0010ffff \\ ' \" % _ ?")


async def test_valid_unicode_at_the_limits_is_stored_faithfully(store: Provider) -> None:
    from duroxide_runtime.limits import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_VERSION_CHARS

    iid = "\U0001f600" * MAX_ID_CHARS  # the longest id, 4 UTF-8 bytes a character (PostgreSQL index and NOTIFY)
    name = "\u540d" * MAX_NAME_CHARS
    version = "v" + "\u00e9" * (MAX_VERSION_CHARS - 1)
    start = StartOrchestration(instance_id=iid, name=name, version=version, input=WILD_TEXT)
    await store.create_instance(start)
    rec = await store.get_instance(iid)
    assert rec is not None and (rec.instance_id, rec.name, rec.version) == (iid, name, version)
    item = await fetch_one(store, iid)
    assert [m.message for m in item.messages] == [start]
    events: list[HistoryEvent] = [
        Event.OrchestrationStarted(event_id=1, timestamp_ms=now_ms(), name=name, version=version, input=WILD_TEXT),
        Event.ActivityScheduled(event_id=2, timestamp_ms=now_ms(), name=name, input=WILD_TEXT)]
    work = ActivityWork(instance_id=iid, execution_id=1, event_id=2, name=name, input=WILD_TEXT)
    await commit_one(store, commit_for(item, new_events=events, activities=[work], update=InstanceUpdate(
        name=name, version=version, execution_id=1, status="Running", custom_status=WILD_TEXT,
        custom_status_changed=True)))
    assert [lease.work for lease in await store.fetch_work_items(10, LONG_LOCK)] == [work]
    assert await store.send(ExternalEvent(instance_id=iid, name=name, data=WILD_TEXT)) is not None
    item = await fetch_one(store, iid)
    assert [m.message for m in item.messages] == [ExternalEvent(instance_id=iid, name=name, data=WILD_TEXT)]
    done = Event.OrchestrationCompleted(event_id=3, timestamp_ms=now_ms(), output=WILD_TEXT)
    await commit_one(store, commit_for(item, new_events=[done], update=InstanceUpdate(
        name=name, version=version, execution_id=1, status="Completed", output=WILD_TEXT),
        ends_instance=True))  # NOTIFY names iid
    rec = await store.get_instance(iid)
    assert rec is not None and rec.status == "Completed"
    assert (rec.output, rec.custom_status) == (WILD_TEXT, WILD_TEXT)
    assert await store.read_history(iid) == [*events, done]
    assert [r.instance_id for r in await store.list_instances(name=name)] == [iid]
    assert await store.purge_instance(iid, only_if_status_in=ENDED) == [iid]


# -- activity heartbeats -----------------------------------------------------------------------


def beat(lease: WorkLease, details: str | None = None, *, call: int | None = None,
         lock_timeout: float | None = None) -> HeartbeatWrite:
    """A heartbeat of ``lease``'s attempt, for the call first scheduled as event ``call`` (default: itself)."""
    w = lease.work
    return HeartbeatWrite(lease.lock_token, CallKey(w.instance_id, w.execution_id, call or w.event_id), w.event_id,
                          details, lock_timeout)


async def test_heartbeat_is_recorded_while_the_lease_holds_and_read_back(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    (lease,) = await store.fetch_work_items(10, LONG_LOCK)
    key = CallKey("i1", 1, 2)
    assert await store.read_heartbeat(key) is None
    assert await store.record_heartbeats([beat(lease, '{"page":1}')], only_if_status_in=LIVE) == [True]
    assert await store.read_heartbeat(key) == HeartbeatRecord('{"page":1}', 2, clock.now_ms())
    clock.advance(1)
    assert await store.record_heartbeats([beat(lease)]) == [True]  # alive only: the details stay
    assert await store.read_heartbeat(key) == HeartbeatRecord('{"page":1}', 2, clock.now_ms())
    assert await store.record_heartbeats([beat(lease, "\"\u00e9t\u00e9 \u2603\"")]) == [True]
    rec = await store.read_heartbeat(key)
    assert rec is not None and rec.details == "\"\u00e9t\u00e9 \u2603\""
    assert await store.record_heartbeats([]) == []


async def test_heartbeat_with_a_lock_timeout_extends_the_lease_and_one_without_does_not(
        store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    leases = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, 0.2)}
    clock.advance(0.1)
    assert await store.record_heartbeats([beat(leases[2], "a", lock_timeout=1.0), beat(leases[3], "b")]) == [True, True]
    clock.advance(0.1)  # event 3's lease (0.2 s) ends; event 2's now lasts until 1.1 s
    assert [w.work.event_id for w in await store.fetch_work_items(10, LONG_LOCK)] == [3]
    clock.advance(0.899)
    assert await store.fetch_work_items(10, LONG_LOCK) == []
    clock.advance(0.001)
    assert [(w.work.event_id, w.dequeue_count) for w in await store.fetch_work_items(10, LONG_LOCK)] == [(2, 2)]


async def test_heartbeat_of_a_lost_cancelled_or_ended_call_records_nothing(store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3), activity("i1", 4)])
    leases = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, SHORT_LOCK)}
    clock.advance(PAST_SHORT_LOCK)
    retaken = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, LONG_LOCK)}
    # The old token of event 2 lost its lease; a beat naming another call than its lease's is refused.
    assert await store.record_heartbeats([beat(leases[2], "old"), beat(retaken[2], "new"),
                                          HeartbeatWrite(retaken[3].lock_token, CallKey("i1", 1, 4), 4, "x")]) == [
        False, True, False]
    assert (await store.read_heartbeat(CallKey("i1", 1, 2)) or HeartbeatRecord(None, 0, 0)).details == "new"
    assert await store.read_heartbeat(CallKey("i1", 1, 4)) is None
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, cancel_activities=[CallKey("i1", 1, 3)], update=running()))
    assert await store.record_heartbeats([beat(retaken[3], "c")]) == [False]  # cancelled
    await finish(store, "i1")
    assert await store.record_heartbeats([beat(retaken[4], "d")], only_if_status_in=LIVE) == [False]  # ended
    assert await store.record_heartbeats([beat(retaken[4], "d")]) == [True]  # unguarded: the lease decides
    await store.purge_instance("i1")
    assert await store.record_heartbeats([beat(retaken[4], "e")]) == [False]  # gone
    assert await store.read_heartbeat(CallKey("i1", 1, 4)) is None


async def test_heartbeat_of_an_older_execution_records_nothing(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    (lease,) = await store.fetch_work_items(10, LONG_LOCK)
    item = await next_turn(store, "i1")
    await commit_one(store, commit_for(item, new_events=[
        Event.OrchestrationContinuedAsNew(event_id=3, timestamp_ms=now_ms(), input="")],
        messages=[(StartOrchestration(instance_id="i1", name="Orch", version="1.0.0", input="", execution_id=2),
                   None)], update=running(execution_id=2)))
    assert await store.record_heartbeats([beat(lease, "late")]) == [False]
    assert await store.read_heartbeat(CallKey("i1", 1, 2)) is None


async def test_attempts_of_one_call_share_the_row_of_its_first_attempt(store: Provider) -> None:
    retry = ActivityWork(instance_id="i1", execution_id=1, event_id=4, name="Act", input="x", attempt=2,
                         first_event_id=2)
    await begin(store, "i1", activities=[activity("i1", 2), retry])
    leases = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, LONG_LOCK)}
    assert leases[4].work == retry and leases[4].work.call_event_id == 2
    assert await store.record_heartbeats([beat(leases[2], "from attempt 1")]) == [True]
    assert await store.record_heartbeats([beat(leases[4], call=2)]) == [True]
    rec = await store.read_heartbeat(CallKey("i1", 1, 2))
    assert rec is not None and (rec.details, rec.event_id) == ("from attempt 1", 4)
    assert await store.read_heartbeat(CallKey("i1", 1, 4)) is None


async def test_a_completion_forgets_its_heartbeat_row_only_while_its_lease_holds(
        store: Provider, clock: ManualClock) -> None:
    await begin(store, "i1", activities=[activity("i1", 2), activity("i1", 3)])
    leases = {lease.work.event_id: lease for lease in await store.fetch_work_items(10, SHORT_LOCK)}
    assert await store.record_heartbeats([beat(leases[2], "a"), beat(leases[3], "b")]) == [True, True]
    ok = ActivityResult(instance_id="i1", execution_id=1, event_id=2, result="r")
    await store.complete_work_items([WorkCompletion(leases[2].lock_token, ok, forget_heartbeat=CallKey("i1", 1, 2))])
    assert await store.read_heartbeat(CallKey("i1", 1, 2)) is None
    clock.advance(PAST_SHORT_LOCK)
    (retaken,) = await store.fetch_work_items(10, LONG_LOCK)
    stale = ActivityResult(instance_id="i1", execution_id=1, event_id=3, result="late")
    await store.complete_work_items([WorkCompletion(leases[3].lock_token, stale,
                                                    forget_heartbeat=CallKey("i1", 1, 3))])
    assert await store.read_heartbeat(CallKey("i1", 1, 3)) is not None  # the stale result changed nothing
    failed = ActivityResult(instance_id="i1", execution_id=1, event_id=3, error=ErrorDetails("E", "m"))
    await store.complete_work_items([WorkCompletion(retaken.lock_token, failed)])
    assert await store.read_heartbeat(CallKey("i1", 1, 3)) is not None  # kept for a next attempt


async def test_purge_deletes_the_heartbeats_of_the_purged_instance_only(store: Provider) -> None:
    await begin(store, "i1", activities=[activity("i1", 2)])
    await begin(store, "i2", activities=[activity("i2", 2)])
    leases = {lease.work.instance_id: lease for lease in await store.fetch_work_items(10, LONG_LOCK)}
    assert await store.record_heartbeats([beat(leases["i1"], "a"), beat(leases["i2"], "b")]) == [True, True]
    assert await store.purge_instance("i1") == ["i1"]
    assert await store.read_heartbeat(CallKey("i1", 1, 2)) is None
    assert await store.read_heartbeat(CallKey("i2", 1, 2)) is not None


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b", "a\x1bb", "a\nb", "x" * 10_000, ""],
                         ids=["nul", "surrogate", "escape", "newline", "10000-chars", "empty"])
async def test_the_client_refuses_what_a_store_cannot_hold_before_storing_it(store: Provider, bad: str) -> None:
    from duroxide_runtime import Client
    from duroxide_runtime.errors import InvalidInputError

    client = Client(store)
    for call, field in ((client.start_orchestration(bad, "Orch", "in"), "instance_id"),
                        (client.start_orchestration("i1", bad, "in"), "name"),
                        (client.start_orchestration("i1", "Orch", "in", version=bad), "version")):
        with pytest.raises(InvalidInputError) as err:
            await call
        assert err.value.field == field and field in str(err.value) and err.value.fix
    if bad in ("a\x00b", "a\ud800b"):  # payloads may hold any other character
        with pytest.raises(InvalidInputError, match="input"):
            await client.start_orchestration("i1", "Orch", bad)
    assert await store.list_instances() == []
    assert (await store.fetch_orchestration_items(10, LONG_LOCK)).items == []


# -- schedules ------------------------------------------------------------------------


def schedule_row(sid: str = "nightly", *, cron: str = "0 2 * * *", next_tick: int = 10_000,
                 orchestration: str = "Orch") -> ScheduleRecord:
    return ScheduleRecord(sid, cron, orchestration, "in", None, "skip", False, next_tick)


async def test_a_schedule_is_put_once_and_read_back_and_listed_by_id(store: Provider, clock: ManualClock) -> None:
    created = await store.put_schedule(schedule_row("b"))
    assert created is not None and created.created_at_ms == clock.now_ms() == created.updated_at_ms
    assert (created.cron, created.next_tick_ms, created.paused, created.last_tick_ms) == ("0 2 * * *", 10_000, False, None)
    await store.put_schedule(schedule_row("a", cron="* * * * *"))
    assert await store.put_schedule(schedule_row("b", cron="5 * * * *")) is None  # taken: nothing changes
    assert await store.get_schedule("b") == created
    assert [r.schedule_id for r in await store.list_schedules()] == ["a", "b"]
    assert await store.get_schedule("nope") is None


async def test_replacing_a_schedule_keeps_its_next_tick_unless_the_cron_changed(store: Provider,
                                                                                clock: ManualClock) -> None:
    await store.put_schedule(schedule_row(next_tick=10_000))
    await store.fire_schedule(ScheduleFire("nightly", 10_000, [start_msg("nightly@1")], 10_000, 20_000))
    await store.set_schedule_paused("nightly", True)
    clock.advance(5)
    same = await store.put_schedule(dataclasses.replace(schedule_row(next_tick=99_000), input="new"), replace=True)
    assert same is not None and (same.next_tick_ms, same.input, same.paused) == (20_000, "new", True)
    assert (same.last_tick_ms, same.last_instance_id) == (10_000, "nightly@1")
    assert same.updated_at_ms == clock.now_ms() > same.created_at_ms
    changed = await store.put_schedule(schedule_row(cron="0 3 * * *", next_tick=99_000), replace=True)
    assert changed is not None and (changed.cron, changed.next_tick_ms) == ("0 3 * * *", 99_000)


async def test_pause_resume_and_delete_of_a_schedule(store: Provider) -> None:
    await store.put_schedule(schedule_row(next_tick=10_000))
    paused = await store.set_schedule_paused("nightly", True)
    assert paused is not None and paused.paused and paused.next_tick_ms == 10_000
    resumed = await store.set_schedule_paused("nightly", False, next_tick_ms=50_000)
    assert resumed is not None and not resumed.paused and resumed.next_tick_ms == 50_000
    assert await store.set_schedule_paused("nope", True) is None
    await store.fire_schedule(ScheduleFire("nightly", 50_000, [start_msg("nightly@5")], 50_000, 60_000))
    assert await store.delete_schedule("nightly") is True
    assert await store.delete_schedule("nightly") is False
    assert await store.get_schedule("nightly") is None
    assert await store.get_instance("nightly@5") is not None  # its instances stay


async def test_fire_schedule_starts_the_ticks_and_moves_on_only_from_the_expected_tick(store: Provider) -> None:
    await store.put_schedule(schedule_row(next_tick=10_000))
    fire = ScheduleFire("nightly", 10_000, [start_msg("nightly@1"), start_msg("nightly@2")], 11_000, 12_000)
    assert await store.fire_schedule(fire) is True
    row = await store.get_schedule("nightly")
    assert row is not None and (row.next_tick_ms, row.last_tick_ms, row.last_instance_id) == (12_000, 11_000, "nightly@2")
    for iid in ("nightly@1", "nightly@2"):
        record = await store.get_instance(iid)
        assert record is not None and record.status == "Pending" and record.name == "Orch"
    # The same pass again (another process, or a retry): the tick moved, nothing is written.
    assert await store.fire_schedule(dataclasses.replace(fire, starts=[start_msg("nightly@3")])) is False
    assert await store.get_instance("nightly@3") is None
    # A pass that starts nothing (a skipped tick) still moves the next tick, keeping the last.
    assert await store.fire_schedule(ScheduleFire("nightly", 12_000, [], None, 13_000)) is True
    row = await store.get_schedule("nightly")
    assert row is not None and (row.next_tick_ms, row.last_instance_id) == (13_000, "nightly@2")
    item = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert sorted(i.instance_id for i in item.items) == ["nightly@1", "nightly@2"]


async def test_fire_schedule_never_replaces_an_instance_and_never_fires_a_paused_or_gone_schedule(
        store: Provider) -> None:
    await store.create_instance(start_msg("nightly@1", input="first"))
    await store.put_schedule(schedule_row(next_tick=10_000))
    assert await store.fire_schedule(ScheduleFire("nightly", 10_000, [start_msg("nightly@1", input="x")],
                                                  10_000, 11_000)) is True
    assert len(await store.list_instances()) == 1
    await store.set_schedule_paused("nightly", True)
    assert await store.fire_schedule(ScheduleFire("nightly", 11_000, [start_msg("nightly@2")], 11_000, 12_000)) is False
    await store.delete_schedule("nightly")
    assert await store.fire_schedule(ScheduleFire("nightly", 11_000, [start_msg("nightly@2")], 11_000, 12_000)) is False
    assert await store.get_instance("nightly@2") is None


async def test_concurrent_passes_of_one_tick_start_it_exactly_once(store: Provider) -> None:
    await store.put_schedule(schedule_row(next_tick=10_000))
    results = await asyncio.gather(*(
        store.fire_schedule(ScheduleFire("nightly", 10_000, [start_msg("nightly@1", input=str(n))], 10_000, 11_000))
        for n in range(8)))
    assert results.count(True) == 1
    assert [r.instance_id for r in await store.list_instances()] == ["nightly@1"]
    items = await store.fetch_orchestration_items(10, LONG_LOCK)
    assert [len(i.messages) for i in items.items] == [1]


async def test_confirm_schedules_stamps_the_listed_schedules_now(store: Provider, clock: ManualClock) -> None:
    await store.put_schedule(schedule_row("a"))
    await store.put_schedule(schedule_row("b"))
    clock.advance(3)
    await store.confirm_schedules(["a", "missing"])
    await store.confirm_schedules([])
    a, b = await store.get_schedule("a"), await store.get_schedule("b")
    assert a is not None and a.registered_at_ms == clock.now_ms()
    assert b is not None and b.registered_at_ms is None
