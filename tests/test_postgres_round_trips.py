"""PostgreSQL: how many statements each store step sends, counted on the real server (issue 13).

Every statement is a network round trip, and on a busy server or across a network
they are what a turn costs. docs/postgres.md ("Round trips") lists the count of each
step; these tests hold the store to them, so a change that adds a statement (a
BEGIN/COMMIT pair, a second query, a NOTIFY of its own, the pool's reset query)
fails here. They count with asyncpg's public query logging
(``Connection.add_query_logger``) on a store whose pool has one connection, after
one warm-up pass: the first use of a statement on a new connection costs asyncpg's
prepare (and, once, a type lookup), which the docs mention but no step repeats.

Also here: the ``durability=`` option's effect on the store's connections, and the
one path that sends more than one statement on purpose: a batch of turns the server
refuses is retried turn by turn, so only the turn at fault fails.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import pytest

from duroxide_runtime import Durability
from duroxide_runtime.history import Event
from duroxide_runtime.messages import ActivityResult, ActivityWork, CancelRequest, ExternalEvent, StartOrchestration
from duroxide_runtime.providers.base import InstanceUpdate, LeaseOffer, LockOffer, TurnCommit, WorkCompletion, now_ms
from duroxide_runtime.providers.postgres import PostgresProvider

from .support import PG_URL, PROVIDERS, drop_store

pytestmark = pytest.mark.skipif("postgres" not in PROVIDERS, reason="PostgreSQL is not among the test providers")

_T = TypeVar("_T")
LIVE = frozenset({"Pending", "Running"})
#: What no step may send: transaction control (a single statement is its own transaction)...
TRANSACTION_CONTROL = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}
#: ...and the pool's reset query (the store leaves no session state to reset).
RESET = "pg_advisory_unlock_all"


@dataclass
class Counted:
    """A store whose one pooled connection logs every statement it sends."""

    store: PostgresProvider
    sent: list[str] = field(default_factory=list)

    async def step(self, call: Awaitable[_T]) -> tuple[_T, list[str]]:
        """Run one store call; return its result and the statements it sent."""
        await _drain_log()
        self.sent.clear()
        result = await call
        await _drain_log()
        return result, list(self.sent)

    async def expect(self, count: int, call: Awaitable[_T]) -> _T:
        """Run one store call and check that it sent ``count`` statements, none of them forbidden."""
        result, sent = await self.step(call)
        assert len(sent) == count, f"expected {count} statement(s), got {len(sent)}: {_heads(sent)}"
        for query in sent:
            assert query.split()[0].upper() not in TRANSACTION_CONTROL, f"transaction control: {query[:80]}"
            assert RESET not in query, f"the pool's reset query: {query[:80]}"
        return result


async def _drain_log() -> None:
    # asyncpg hands each record to the logger with loop.call_soon: yielding to the loop
    # runs the callbacks already queued (an ordering guarantee, not a wait).
    for _ in range(3):
        await asyncio.sleep(0)


def _heads(sent: list[str]) -> list[str]:
    return [" ".join(q.split())[:60] for q in sent]


@pytest.fixture
async def counted() -> AsyncIterator[Counted]:
    store = await PostgresProvider.new(PG_URL, schema=f"t_{uuid.uuid4().hex[:16]}", pool_size=1)
    try:
        counted = Counted(store)
        # The pool's only connection: every store call below runs on it. (The LISTEN
        # connection is separate; it only listens.)
        async with store._pool.acquire() as conn:  # type: ignore[union-attr]
            conn.add_query_logger(lambda record: counted.sent.append(record.query))
        yield counted
    finally:
        await drop_store(store)


def start(iid: str) -> StartOrchestration:
    return StartOrchestration(instance_id=iid, name="Orch", version="1.0.0", input="in")


def first_turn(iid: str, token: str, consumed: list[int]) -> TurnCommit:
    """Started, one activity scheduled, status Running."""
    return TurnCommit(iid, token, 1, consumed, new_events=[
        Event.OrchestrationStarted(event_id=1, timestamp_ms=now_ms(), name="Orch", version="1.0.0", input="in"),
        Event.ActivityScheduled(event_id=2, timestamp_ms=now_ms(), name="Act", input="x")],
        activities=[ActivityWork(instance_id=iid, execution_id=1, event_id=2, name="Act", input="x")],
        update=InstanceUpdate(name="Orch", version="1.0.0", execution_id=1, status="Running"))


def last_turn(iid: str, token: str, consumed: list[int], output: str = "done") -> TurnCommit:
    return TurnCommit(iid, token, 1, consumed, new_events=[
        Event.ActivityCompleted(event_id=3, timestamp_ms=now_ms(), source_event_id=2, result="y"),
        Event.OrchestrationCompleted(event_id=4, timestamp_ms=now_ms(), output=output)],
        update=InstanceUpdate(name="Orch", version="1.0.0", execution_id=1, status="Completed", output=output),
        ends_instance=True)


async def one_orchestration(c: Counted, iid: str) -> dict[str, int]:
    """The store steps of one orchestration calling one activity, with what each sent."""
    counts: dict[str, int] = {}

    async def step(name: str, call: Awaitable[_T]) -> _T:
        result, sent = await c.step(call)
        counts[name] = len(sent)
        return result

    s = c.store
    await step("client start", s.create_instance(start(iid)))
    (item,) = (await step("fetch", s.fetch_orchestration_items(10, 30))).items
    await step("history read", s.read_histories([(iid, 1)]))
    assert await step("turn commit", s.commit_turns([first_turn(iid, item.lock_token, [m.id for m in item.messages])])) \
        == [True]
    (lease,) = await step("activity fetch", s.fetch_work_items(10, 30, known_names={"Act"}))
    await step("activity completion", s.complete_work_items([WorkCompletion(lease.lock_token, ActivityResult(
        instance_id=iid, execution_id=1, event_id=2, result="y"))], only_if_status_in=LIVE))
    (item,) = (await step("fetch", s.fetch_orchestration_items(10, 30))).items
    assert [type(m.message) for m in item.messages] == [ActivityResult]
    assert await step("turn commit", s.commit_turns([last_turn(iid, item.lock_token, [m.id for m in item.messages])])) \
        == [True]
    record = await step("status read", s.get_instance(iid))
    assert record is not None and record.status == "Completed"
    await step("empty fetch", s.fetch_orchestration_items(10, 30))
    return counts


async def test_each_step_of_an_orchestration_is_one_statement(counted: Counted) -> None:
    await one_orchestration(counted, "warm-up")  # prepares each statement on the connection
    counts = await one_orchestration(counted, "counted")
    assert counts == {"client start": 1, "fetch": 1, "history read": 1, "turn commit": 1, "activity fetch": 1,
                      "activity completion": 1, "status read": 1, "empty fetch": 1}, counts
    # The same, with the checks of the forbidden statements.
    await one_orchestration(counted, "warm-2")
    s = counted.store
    await counted.expect(1, s.create_instance(start("x")))
    (item,) = (await counted.expect(1, s.fetch_orchestration_items(10, 30))).items
    await counted.expect(1, s.read_histories([("x", 1)]))
    assert await counted.expect(1, s.commit_turns([first_turn("x", item.lock_token, [m.id for m in item.messages])])) \
        == [True]
    (lease,) = await counted.expect(1, s.fetch_work_items(10, 30))
    await counted.expect(1, s.complete_work_items([WorkCompletion(lease.lock_token, ActivityResult(
        instance_id="x", execution_id=1, event_id=2, result="y"))], only_if_status_in=LIVE))
    await counted.expect(1, s.get_instance("x"))


async def eager_orchestration(c: Counted, iid: str) -> list[int]:
    """One orchestration calling one activity with eager dispatch: the statements of each step."""
    s = c.store
    sent = []
    _, n = await c.step(s.create_instance(start(iid)))
    sent.append(len(n))
    fetched, n = await c.step(s.fetch_orchestration_items(10, 30))
    sent.append(len(n))
    first = first_turn(iid, fetched.items[0].lock_token, [m.id for m in fetched.items[0].messages])
    ok, n = await c.step(s.commit_turns([first], lease=LeaseOffer(10, 30, frozenset({"Act"}))))
    sent.append(len(n))
    assert ok == [True] and [lease.work.event_id for lease in first.leased] == [2]
    items, n = await c.step(s.complete_work_items([WorkCompletion(first.leased[0].lock_token, ActivityResult(
        instance_id=iid, execution_id=1, event_id=2, result="y"))], only_if_status_in=LIVE,
        lock=LockOffer(10, 30, frozenset({"Orch"}))))
    sent.append(len(n))
    assert [type(m.message) for m in items[0].messages] == [ActivityResult]
    ok, n = await c.step(s.commit_turns([last_turn(iid, items[0].lock_token, [m.id for m in items[0].messages])]))
    sent.append(len(n))
    assert ok == [True]
    record, n = await c.step(s.get_instance(iid))
    sent.append(len(n))
    assert record is not None and record.status == "Completed"
    return sent


async def test_eager_dispatch_spares_the_activity_fetch_and_the_second_fetch(counted: Counted) -> None:
    """docs/postgres.md: 6 statements from start to observed completion when worker and dispatcher are idle."""
    await eager_orchestration(counted, "warm-up")
    assert await eager_orchestration(counted, "counted") == [1] * 6


async def test_client_writes_and_lease_operations_are_one_statement_each(counted: Counted) -> None:
    s = counted.store
    for warm in ("a", "b"):  # the second pass is counted
        n = 1 if warm == "b" else None

        async def expect(call: Awaitable[_T]) -> _T:
            if n is None:
                return await call
            return await counted.expect(n, call)

        iid = f"client-{warm}"
        await expect(s.create_instance(start(iid)))
        record = await expect(s.send(ExternalEvent(instance_id=iid, name="e", data="d"), only_if_status_in=LIVE))
        assert record is not None and record.status == "Pending"
        assert await expect(s.send(CancelRequest(instance_id=iid, reason="r"), only_if_status_in=LIVE)) is not None
        assert await expect(s.send(ExternalEvent(instance_id="nobody", name="e", data="d"))) is None
        (item,) = (await expect(s.fetch_orchestration_items(10, 30))).items
        assert len(item.messages) == 3
        assert await expect(s.renew_orchestration_items([(iid, item.lock_token)], 30)) == [True]
        await expect(s.abandon_orchestration_item(iid, item.lock_token, 0))
        (item,) = (await expect(s.fetch_orchestration_items(10, 30))).items
        assert await expect(s.commit_turns([first_turn(iid, item.lock_token, [m.id for m in item.messages])])) \
            == [True]
        (lease,) = await expect(s.fetch_work_items(1, 30))
        assert await expect(s.renew_work_item(lease.lock_token, 30, only_if_status_in=LIVE)) is True
        await expect(s.abandon_work_item(lease.lock_token, 0))
        await expect(s.read_history(iid))
        assert len(await expect(s.list_instances())) >= 1
        await expect(s.queue_depths())


async def test_many_turns_commit_in_one_statement_and_many_starts_share_one(counted: Counted) -> None:
    s = counted.store
    ids = [f"b{i}" for i in range(5)]

    async def start_all(batch: list[str]) -> None:
        # (A coroutine: gather() starts its tasks only once counting has begun.)
        await asyncio.gather(*(s.create_instance(start(i)) for i in batch))

    for warm in (True, False):
        batch = ids if not warm else ["w0", "w1"]
        if warm:
            await start_all(batch)
        else:
            # Starts waiting at the same moment are written by one statement.
            await counted.expect(1, start_all(batch))
        fetched = await counted.expect(1, s.fetch_orchestration_items(10, 30)) if not warm \
            else await s.fetch_orchestration_items(10, 30)
        assert sorted(i.instance_id for i in fetched.items) == sorted(batch)
        commits = [first_turn(i.instance_id, i.lock_token, [m.id for m in i.messages]) for i in fetched.items]
        committed = await counted.expect(1, s.commit_turns(commits)) if not warm else await s.commit_turns(commits)
        assert committed == [True] * len(batch)
        leases = await s.fetch_work_items(10, 30)
        completions = [WorkCompletion(lease.lock_token, ActivityResult(instance_id=lease.work.instance_id,
                       execution_id=1, event_id=2, result="y")) for lease in leases]
        if warm:  # dropped (the status is not listed): the warm-up leaves nothing queued
            await s.complete_work_items(completions, only_if_status_in={"Completed"})
        else:
            await counted.expect(1, s.complete_work_items(completions, only_if_status_in=LIVE))
    depths = await s.queue_depths()
    assert depths.orchestrator == len(ids) and depths.worker == 0


async def test_a_refused_turn_fails_alone_and_costs_one_statement_per_turn(counted: Counted) -> None:
    """PostgreSQL's text columns cannot hold NUL: the batch statement fails as a whole, and the
    store then commits each turn by itself, so that only the turn carrying it is refused."""
    s = counted.store
    ids = ["r1", "r2", "r3"]
    for iid in ids:
        await s.create_instance(start(iid))
    fetched = {i.instance_id: i for i in (await s.fetch_orchestration_items(10, 30)).items}
    commits = [first_turn(iid, fetched[iid].lock_token, [m.id for m in fetched[iid].messages]) for iid in ids]
    await s.commit_turns(commits)
    await s.complete_work_items([WorkCompletion(lease.lock_token, ActivityResult(
        instance_id=lease.work.instance_id, execution_id=1, event_id=2, result="y"))
        for lease in await s.fetch_work_items(10, 30)], only_if_status_in=LIVE)
    fetched = {i.instance_id: i for i in (await s.fetch_orchestration_items(10, 30)).items}
    ends = [last_turn(iid, fetched[iid].lock_token, [m.id for m in fetched[iid].messages],
                      output="a\x00b" if iid == "r2" else "ok") for iid in ids]
    result, sent = await counted.step(s.commit_turns(ends))
    assert result == [True, False, True]
    assert len(sent) == 1 + len(ids), _heads(sent)  # the batch, then each turn by itself
    assert ends[1].refused is not None and "0x00" in ends[1].refused
    assert ends[0].refused is None and ends[2].refused is None
    statuses: dict[str, Any] = {iid: (await s.get_instance(iid)) for iid in ids}
    assert [statuses[i].status for i in ids] == ["Completed", "Running", "Completed"]
    # The refused turn changed nothing: its lock still holds, its messages are still queued.
    assert await s.renew_orchestration_items([("r2", fetched["r2"].lock_token)], 30) == [True]
    assert len(await s.read_history("r2")) == 2


@pytest.mark.parametrize("durability, expected", [(Durability.FULL, None), (Durability.RELAXED, "off")])
async def test_durability_sets_synchronous_commit_of_the_store_connections(durability: Durability,
                                                                           expected: str | None) -> None:
    """FULL leaves the server's setting (``on`` unless the server says otherwise); RELAXED
    turns it off for this store's connections only."""
    plain = await asyncpg.connect(PG_URL)
    try:
        server_default = await plain.fetchval("SHOW synchronous_commit")
    finally:
        await plain.close()
    store = await PostgresProvider.new(PG_URL, schema=f"t_{uuid.uuid4().hex[:16]}", durability=durability)
    try:
        assert store.durability is durability
        seen = await store._one(lambda conn: conn.fetchval("SHOW synchronous_commit"))
        assert seen == (expected or server_default)
    finally:
        await drop_store(store)


def test_durability_must_be_a_durability() -> None:
    from duroxide_runtime.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as err:
        PostgresProvider(PG_URL, "dx", 1, durability="relaxed")  # type: ignore[arg-type]
    assert err.value.fix and "Durability.RELAXED" in err.value.fix
