"""Activity policies (runtime and stores): retries with counted attempts, non-retryable failures,
timeouts and heartbeats.

Every runtime test runs on every store and in both replay modes. Time is the
store's ``ManualClock`` where leases and timeouts matter: the tests move it,
and wait for what the runtime does through events (an activity's own, or the
``activity_heartbeat`` observer hook), never by sleeping. (The macro layer's
spellings are tested in tests/test_macro_activity_policies.py.)
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    ActivityFailed, ActivityTimeoutError, ConfigurationError, ErrorDetails, Event, NonRetryableError,
    OrchestrationContext, OrchestrationStatus, PayloadError, PayloadTooLargeError, RetryPolicy, activity_context,
)
from duroxide_runtime.activity import ActivityContext
from duroxide_runtime.history import decode_event, encode_event
from duroxide_runtime.messages import ActivityWork, decode_message
from duroxide_runtime.observe import ActivityHeartbeat, RuntimeObserver
from duroxide_runtime.providers.base import CallKey
from duroxide_runtime.providers.sqlite import SCHEMA_VERSION, SqliteProvider
from duroxide_runtime.testing import ManualClock
from duroxide_runtime.wake import wake_hub

from . import engine_factories as f
from .support import PG_URL, PROVIDERS, Harness, drop_store

pytestmark = pytest.mark.timeout(120)

#: Real-time bound on waits for the runtime (a safety net; the tests never need it).
BOUND = 30.0


class Beats(RuntimeObserver):
    """Collects heartbeat writes; ``wait_for(pred)`` returns once a matching one has been written."""

    def __init__(self) -> None:
        self.seen: list[ActivityHeartbeat] = []
        self._changed = asyncio.Event()

    def activity_heartbeat(self, event: ActivityHeartbeat) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait_for(self, pred: Callable[[ActivityHeartbeat], bool]) -> ActivityHeartbeat:
        async def look() -> ActivityHeartbeat:
            while True:
                for e in self.seen:
                    if pred(e):
                        return e
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(look(), BOUND)


def advance(h: Harness, clock: ManualClock, seconds: float) -> None:
    """Move time, and have the dispatchers and the worker look at the store again: one that was
    fetching while time moved saw the old time, and its next poll waits for the clock."""
    clock.advance(seconds)
    hub = wake_hub(h.store)
    hub.notify_orchestrator()
    hub.notify_worker()


async def finished(h: Harness, iid: str) -> OrchestrationStatus[str]:
    return await asyncio.wait_for(h.client.wait_for_orchestration(iid, math.inf), BOUND)


def scheduled(history: list[Any]) -> list[Any]:
    return [e for e in history if isinstance(e, Event.ActivityScheduled)]


# -- attempts ------------------------------------------------------------------------------------


async def test_attempts_are_counted_one_to_n_across_the_retries_of_one_call(harness: Harness) -> None:
    seen: list[tuple[str, int, int]] = []

    def flaky(data: str) -> str:  # a plain def: runs in a thread, same context
        actx = activity_context()
        seen.append((data, actx.attempt, actx.event_id))
        if actx.attempt < 3:
            raise RuntimeError(f"attempt {actx.attempt} failed")
        return f"{data} on attempt {actx.attempt}"

    async def orch(ctx: OrchestrationContext, data: str) -> str:
        first = await ctx.schedule_activity("Flaky", data, retry=RetryPolicy(max_attempts=3, backoff=0))
        try:
            await ctx.schedule_activity("Flaky", "again", retry=RetryPolicy(max_attempts=2, backoff=timedelta(0)))
        except ActivityFailed as err:
            return f"{first} | gave up: {err.details.message}"
        return "unreachable"

    await harness.start({"Orch": orch}, {"Flaky": flaky})
    status = await harness.run("a1", "Orch", "x")
    assert status == OrchestrationStatus.Completed(output="x on attempt 3 | gave up: attempt 2 failed")
    calls = scheduled(await harness.client.read_history("a1"))
    assert [(e.attempt, e.first_event_id) for e in calls] == [
        (1, None), (2, calls[0].event_id), (3, calls[0].event_id), (1, None), (2, calls[3].event_id)]
    # Each attempt ran once, knowing its number; a new call starts again at 1.
    assert seen == [("x", 1, calls[0].event_id), ("x", 2, calls[1].event_id), ("x", 3, calls[2].event_id),
                    ("again", 1, calls[3].event_id), ("again", 2, calls[4].event_id)]


async def test_non_retryable_error_stops_the_retries_at_once(harness: Harness) -> None:
    calls: list[str] = []

    class CardDeclined(NonRetryableError):
        pass

    async def charge(data: str) -> str:
        calls.append(data)
        if data == "plain":
            raise NonRetryableError("card declined")
        raise CardDeclined("insufficient funds")

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        out = []
        for data in ("plain", "subclass"):
            try:
                await ctx.schedule_activity("Charge", data, retry=RetryPolicy(max_attempts=5, backoff=0))
            except ActivityFailed as err:
                out.append(f"{err.error_type}: {err.details.message}")
        return " / ".join(out)

    await harness.start({"Orch": orch}, {"Charge": charge})
    status = await harness.run("n1", "Orch")
    assert status == OrchestrationStatus.Completed(
        output="NonRetryableError: card declined / CardDeclined: insufficient funds")
    assert calls == ["plain", "subclass"]  # each ran once, though five attempts were allowed


class OutOfStock(LookupError):
    pass


async def test_non_retryable_list_matches_classes_subclasses_and_names(harness: Harness) -> None:
    calls: dict[str, int] = {}

    async def act(kind: str) -> str:
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "key":
            raise KeyError("sku")  # a subclass of the listed LookupError
        if kind == "stock":
            raise OutOfStock("none left")  # listed by its bare name
        raise RuntimeError("flaky")  # not listed: retried to the limit

    policy = RetryPolicy(max_attempts=3, backoff=0, non_retryable=[LookupError, "OutOfStock"])

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        out = []
        for kind in ("key", "stock", "other"):
            try:
                await ctx.schedule_activity("Act", kind, retry=policy)
            except ActivityFailed as err:
                out.append(err.error_type)
        return ",".join(out)

    await harness.start({"Orch": orch}, {"Act": act})
    status = await harness.run("l1", "Orch")
    assert status == OrchestrationStatus.Completed(output="KeyError,OutOfStock,RuntimeError")
    assert calls == {"key": 1, "stock": 1, "other": 3}
    failure = next(e for e in await harness.client.read_history("l1") if isinstance(e, Event.ActivityFailed))
    assert failure.details.types[:2] == ("KeyError", "LookupError")  # recorded, so replay decides alike


def test_retry_policy_decides_from_the_recorded_failure_only() -> None:
    policy = RetryPolicy(non_retryable=[OutOfStock, "app.errors.Fatal"])
    path = f"{OutOfStock.__module__}.OutOfStock"
    assert not policy.is_retryable(ErrorDetails("OutOfStock", "x", types=(path, "LookupError", "Exception")))
    assert policy.is_retryable(ErrorDetails("OutOfStock", "x", types=("other.OutOfStock", "Exception")))
    assert not policy.is_retryable(ErrorDetails("Fatal", "x", types=("app.errors.Fatal", "Exception")))
    assert policy.is_retryable(ErrorDetails("Fatal", "x", types=("elsewhere.Fatal", "Exception")))
    # Rows recorded without class names (older versions, timeouts): by the bare type name.
    assert not policy.is_retryable(ErrorDetails("OutOfStock", "x"))
    assert not policy.is_retryable(ErrorDetails("NonRetryableError", "x"))
    assert policy.is_retryable(ErrorDetails("ActivityTimeoutError", "x"))
    assert not RetryPolicy(non_retryable=[ActivityTimeoutError]).is_retryable(ErrorDetails("ActivityTimeoutError", "x"))
    # The class names survive the store's JSON form; equality ignores them.
    stored = ErrorDetails("OutOfStock", "x", types=(path,))
    assert ErrorDetails.from_dict(json.loads(json.dumps(stored.to_dict()))).types == (path,)
    assert stored == ErrorDetails("OutOfStock", "x")


def test_retry_policy_spellings_and_bad_values() -> None:
    assert RetryPolicy(backoff=timedelta(seconds=2), max_backoff=timedelta(seconds=5)).backoff_after(1) == 2.0
    assert RetryPolicy(backoff=1.5, backoff_coefficient=3).backoff_after(2) == 4.5
    assert RetryPolicy(backoff=1, max_backoff=10).backoff_after(10_000) == 10.0  # no overflow
    assert RetryPolicy(non_retryable=[KeyError]).non_retryable == (KeyError,)
    hash(RetryPolicy(non_retryable=[KeyError]))
    bad_values: list[dict[str, Any]] = [
        dict(backoff=-1), dict(backoff="1s"), dict(max_attempts=0), dict(max_attempts=2.5),
        dict(non_retryable=KeyError), dict(non_retryable=[42]), dict(non_retryable=[""]), dict(non_retryable=[int])]
    for bad in bad_values:
        with pytest.raises(ConfigurationError) as err:
            RetryPolicy(**bad)
        assert err.value.fix


# -- timeouts ------------------------------------------------------------------------------------


async def test_an_attempt_past_its_timeout_fails_with_activity_timeout_and_is_retried(clocked: Harness,
                                                                                      clock: ManualClock) -> None:
    running = asyncio.Event()
    stopped: list[bool] = []

    async def slow(data: str) -> str:
        actx = activity_context()
        if actx.attempt == 1:
            running.set()
            try:
                await asyncio.Event().wait()  # never finishes by itself
            finally:
                stopped.append(actx.cancelled)
        return f"attempt {actx.attempt}"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Slow", "", retry=RetryPolicy(max_attempts=2, backoff=0),
                                           timeout=timedelta(seconds=5))

    await clocked.start({"Orch": orch}, {"Slow": slow})
    await clocked.client.start_orchestration("t1", "Orch")
    await asyncio.wait_for(running.wait(), BOUND)
    advance(clocked, clock, 5)
    status = await finished(clocked, "t1")
    assert status == OrchestrationStatus.Completed(output="attempt 2")
    assert stopped == [True]  # the timed-out attempt was cancelled
    history = await clocked.client.read_history("t1")
    assert [e.attempt for e in scheduled(history)] == [1, 2]


# -- heartbeats ----------------------------------------------------------------------------------


async def test_next_attempt_sees_the_details_of_an_attempt_lost_to_its_heartbeat_timeout(
        clocked: Harness, clock: ManualClock) -> None:
    hung = asyncio.Event()
    seen: list[tuple[int, Any]] = []
    beats = Beats()

    async def work(_: str) -> str:
        actx = activity_context()
        seen.append((actx.attempt, actx.heartbeat_details))
        if actx.attempt == 1:
            actx.heartbeat({"rows": 3})
            hung.set()
            await asyncio.Event().wait()  # stops beating: the attempt is lost
        return json.dumps(actx.heartbeat_details)

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Work", "", retry=RetryPolicy(max_attempts=2, backoff=0),
                                           heartbeat_timeout=timedelta(seconds=10))

    await clocked.start({"Orch": orch}, {"Work": work}, observers=[beats])
    await clocked.client.start_orchestration("h1", "Orch")
    await asyncio.wait_for(hung.wait(), BOUND)
    await beats.wait_for(lambda e: e.details is not None)  # durable before time moves
    advance(clocked, clock, 10)  # the lease, set by the last beat, runs out
    status = await finished(clocked, "h1")
    assert status == OrchestrationStatus.Completed(output='{"rows": 3}')
    assert seen == [(1, None), (2, {"rows": 3})]
    history = await clocked.client.read_history("h1")
    failed = [e for e in history if isinstance(e, Event.ActivityFailed)]
    assert [e.details.error_type for e in failed] == ["ActivityHeartbeatTimeout"]
    assert [(e.attempt, e.heartbeat_timeout_ms) for e in scheduled(history)] == [(1, 10_000), (2, 10_000)]
    # The call succeeded: its heartbeat row went with its result.
    assert await clocked.store.read_heartbeat(CallKey("h1", 1, scheduled(history)[0].event_id)) is None


async def test_a_lost_attempt_without_retries_fails_the_call(clocked: Harness, clock: ManualClock) -> None:
    hung = asyncio.Event()
    beats = Beats()

    async def work(_: str) -> str:
        hung.set()
        await asyncio.Event().wait()  # never beats
        return "unreachable"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_activity("Work", "", heartbeat_timeout=3)
        except ActivityFailed as err:
            return err.error_type

    await clocked.start({"Orch": orch}, {"Work": work}, observers=[beats])
    await clocked.client.start_orchestration("h2", "Orch")
    await asyncio.wait_for(hung.wait(), BOUND)
    await beats.wait_for(lambda e: e.details is None and e.recorded)  # the start beat: the attempt began
    advance(clocked, clock, 3)
    assert await finished(clocked, "h2") == OrchestrationStatus.Completed(output="ActivityHeartbeatTimeout")


async def test_an_activity_that_heartbeats_keeps_its_lease_past_the_lock_timeout(clocked: Harness,
                                                                                 clock: ManualClock) -> None:
    ran: list[int] = []
    step, go = asyncio.Event(), asyncio.Event()
    beats = Beats()

    async def long_job(_: str) -> str:
        actx = activity_context()
        ran.append(actx.attempt)
        for i in range(6):
            actx.heartbeat(i)
            step.set()
            await go.wait()
            go.clear()
        return f"done after {len(ran)} run(s)"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Long", "", heartbeat_timeout=4)

    await clocked.start({"Orch": orch}, {"Long": long_job}, observers=[beats], activity_lock_timeout=5.0)
    await clocked.client.start_orchestration("k1", "Orch")
    for i in range(6):  # 6 x 3 s: far past the 5 s lock timeout and the 4 s heartbeat timeout
        await asyncio.wait_for(step.wait(), BOUND)
        step.clear()
        await beats.wait_for(lambda e: e.details == str(i) and e.recorded)  # noqa: B023 - awaited at once
        advance(clocked, clock, 3)  # a lapsed lease would be taken over now
        await clock.settle()
        go.set()
    assert await finished(clocked, "k1") == OrchestrationStatus.Completed(output="done after 1 run(s)")
    assert ran == [1]


async def test_heartbeat_from_a_sync_activity_is_batched_and_seen_by_the_retry(harness: Harness) -> None:
    beats = Beats()
    done = threading.Event()

    def crunch(_: str) -> str:  # plain def: a worker thread
        actx = activity_context()
        if actx.attempt == 1:
            for i in range(1, 1001):
                actx.heartbeat({"done": i})
            done.set()
            raise RuntimeError("crashed at the end")
        return json.dumps(actx.heartbeat_details)

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Crunch", "", retry=RetryPolicy(max_attempts=2, backoff=0))

    await harness.start({"Orch": orch}, {"Crunch": crunch}, observers=[beats], heartbeat_interval=60.0)
    status = await harness.run("s1", "Orch")
    assert done.is_set()
    assert status == OrchestrationStatus.Completed(output='{"done": 1000}')  # flushed before the failure
    writes = [e for e in beats.seen if e.attempt == 1]
    assert 1 <= len(writes) <= 2  # the first beat at once, the rest in one write: not a thousand


async def test_bad_heartbeat_details_raise_a_typed_error_and_record_nothing(harness: Harness) -> None:
    beats = Beats()
    errors: dict[str, PayloadError] = {}

    async def bad(_: str) -> str:
        actx = activity_context()
        for label, details in (("set", {1, 2}), ("surrogate", "caf\udce9"), ("huge", "x" * 5000)):
            try:
                actx.heartbeat(details)
            except PayloadError as err:
                errors[label] = err
        raise RuntimeError("keep the row, if any")

    async def good(_: str) -> str:
        activity_context().heartbeat("half way")
        raise RuntimeError("keep the row")

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        results = await asyncio.gather(ctx.schedule_activity("Bad", ""), ctx.schedule_activity("Good", ""),
                                       return_exceptions=True)
        return ",".join(type(r).__name__ for r in results)

    await harness.start({"Orch": orch}, {"Bad": bad, "Good": good}, observers=[beats], max_payload_bytes=4096)
    assert await harness.run("b1", "Orch") == OrchestrationStatus.Completed(output="ActivityFailed,ActivityFailed")
    assert set(errors) == {"set", "surrogate", "huge"}
    assert isinstance(errors["huge"], PayloadTooLargeError)
    for err in errors.values():
        assert "'Bad'" in str(err) and err.fix
    bad_id, good_id = (e.event_id for e in scheduled(await harness.client.read_history("b1")))
    assert await harness.store.read_heartbeat(CallKey("b1", 1, bad_id)) is None
    row = await harness.store.read_heartbeat(CallKey("b1", 1, good_id))
    assert row is not None and row.details == '"half way"'
    assert [e.name for e in beats.seen] == ["Good"]


async def test_heartbeat_outside_a_running_activity_is_a_configuration_error(harness: Harness) -> None:
    with pytest.raises(ConfigurationError):
        activity_context().heartbeat("x")
    with pytest.raises(ConfigurationError):
        ActivityContext("i", 1, 2, "Free", 1).heartbeat("x")  # not attached to a running call
    kept: list[ActivityContext] = []

    async def act(_: str) -> str:
        kept.append(activity_context())
        return "ok"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Act", "")

    await harness.start({"Orch": orch}, {"Act": act})
    assert await harness.run("o1", "Orch") == OrchestrationStatus.Completed(output="ok")
    with pytest.raises(ConfigurationError) as err:
        kept[0].heartbeat("late")  # the call has returned
    assert "'Act'" in str(err.value)


async def test_heartbeat_timeout_must_be_positive(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, kind: str) -> str:
        try:
            ctx.schedule_activity("Act", "", heartbeat_timeout=0 if kind == "zero" else -1)
        except ConfigurationError as err:
            return "refused" if err.fix else "no fix"
        return "accepted"

    await harness.start({"Orch": orch}, {"Act": lambda s: s})
    assert await harness.run("z1", "Orch", "zero") == OrchestrationStatus.Completed(output="refused")
    assert await harness.run("z2", "Orch", "negative") == OrchestrationStatus.Completed(output="refused")


# -- history compatibility ----------------------------------------------------------------------


OLD_SCHEDULED = b'{"type":"ActivityScheduled","event_id":2,"timestamp_ms":5,"name":"A","input":"x"}'


def test_an_old_activity_scheduled_record_decodes_as_attempt_one() -> None:
    event = decode_event(OLD_SCHEDULED)
    assert isinstance(event, Event.ActivityScheduled)
    assert (event.attempt, event.first_event_id, event.heartbeat_timeout_ms) == (1, None, None)
    new = Event.ActivityScheduled(event_id=4, name="A", input="x", attempt=2, first_event_id=2)
    assert decode_event(encode_event(new)) == new
    work = decode_message(b'{"k":"activity","instance_id":"i","execution_id":1,"event_id":2,"name":"A","input":"x"}')
    assert isinstance(work, ActivityWork) and (work.attempt, work.call_event_id) == (1, 2)


def test_an_old_history_of_retries_replays_under_the_retry_loop() -> None:
    """Attempts recorded before the attempt field existed replay without a mismatch."""
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("A", "x", retry=RetryPolicy(max_attempts=3, backoff=1))

    history = [f.started(), decode_event(OLD_SCHEDULED), f.activity_failed(3, 2), f.timer_created(4, 1000),
               f.timer_fired(5, 4, 1000), decode_event(OLD_SCHEDULED.replace(b'"event_id":2', b'"event_id":6'))]
    result = f.turn(orch, history, f.activity_result(6, "ok"))
    assert result.outcome is not None and result.outcome.output == "ok"


# -- store migrations ----------------------------------------------------------------------------


async def test_a_sqlite_store_of_schema_3_gets_the_heartbeat_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await SqliteProvider.new(f"sqlite://{path}")
    await store.close()
    conn = sqlite3.connect(path)  # what duroxide with schema 3 left behind
    conn.execute("DROP TABLE activity_heartbeats")
    conn.execute("UPDATE duroxide_schema SET version=3")
    conn.commit()
    conn.close()
    store = await SqliteProvider.new(f"sqlite://{path}")
    try:
        assert await store.read_heartbeat(CallKey("i", 1, 2)) is None
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT version FROM duroxide_schema").fetchone() == (SCHEMA_VERSION,)
        conn.close()
    finally:
        await store.close()


@pytest.mark.skipif("postgres" not in PROVIDERS, reason="PostgreSQL is not among the test providers")
async def test_a_postgres_schema_at_migration_5_gets_the_heartbeat_table() -> None:
    from duroxide_runtime.providers.postgres import PostgresProvider

    schema = f"t_{uuid.uuid4().hex[:16]}"
    store = await PostgresProvider.new(PG_URL, schema=schema)
    try:
        await store._tx(lambda conn: conn.execute(
            f"DROP TABLE {schema}.activity_heartbeats; DELETE FROM {schema}.schema_migrations WHERE version >= 6"))
        await store.close()
        store = await PostgresProvider.new(PG_URL, schema=schema)
        assert await store.read_heartbeat(CallKey("i", 1, 2)) is None
        newest = await store._tx(lambda conn: conn.fetchval(f"SELECT MAX(version) FROM {schema}.schema_migrations"))
        assert newest >= 6
    finally:
        await drop_store(store)
