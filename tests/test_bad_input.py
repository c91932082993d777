"""Bad input: every mistake a user can make is reported clearly, stores nothing it should
not, and never takes down the runtime or other instances."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    ActivityFailed,
    ActivityRegistry,
    Client,
    ConfigurationError,
    CorruptHistoryError,
    Event,
    InMemoryProvider,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    OrchestrationContext,
    OrchestrationRegistry,
    OrchestrationStatus,
    PayloadError,
    Provider,
    RetryPolicy,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    VersionPolicy,
)

from .support import Harness, REPLAY_MODES, eventually


async def count_events(client: Client, iid: str, kind: type) -> int:
    return sum(isinstance(e, kind) for e in await client.read_history(iid))


async def waiter(ctx: OrchestrationContext, inp: str) -> str:
    return f"{inp}:{await ctx.schedule_wait('go')}"


async def echo(inp: str) -> str:
    return inp


@pytest.fixture(params=REPLAY_MODES)
async def sqlite_harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """File SQLite only (tests that reach into the database file), in both replay modes."""
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'bad.db'}")
    h = Harness(store, str(request.param))
    yield h
    await h.stop()
    await store.close()


NOT_STRINGS: list[Any] = [123, 1.5, {"a": 1}, ["x"], b"bytes", None]


# -- non-str payloads ----------------------------------------------------------------------


@pytest.mark.parametrize("value", NOT_STRINGS, ids=lambda v: type(v).__name__)
async def test_start_with_non_str_input_raises_payload_error_and_stores_nothing(store: Provider, value: Any) -> None:
    client = Client(store)
    with pytest.raises(PayloadError) as err:
        await client.start_orchestration("p", "Hello", value)
    text = str(err.value)
    assert "input must be str" in text and type(value).__name__ in text  # the cause
    assert "json.dumps" in text  # and the fix
    assert isinstance(err.value, TypeError)
    assert await client.get_orchestration_status("p") == OrchestrationStatus.NotFound()
    assert await client.list_instances() == []


async def test_start_with_non_str_or_empty_id_or_name_raises_payload_error(store: Provider) -> None:
    client = Client(store)
    for args, what in (((42, "Hello", ""), "instance_id"), (("p", None, ""), "name")):
        with pytest.raises(PayloadError, match=what):
            await client.start_orchestration(*args)
    with pytest.raises(PayloadError):
        await client.start_orchestration("", "Hello", "")
    with pytest.raises(PayloadError):
        await client.start_orchestration("p", "", "")
    with pytest.raises(PayloadError, match="version"):
        await client.start_orchestration("p", "Hello", "", version=2)  # type: ignore[arg-type]
    assert await client.list_instances() == []


async def test_raise_event_with_non_str_data_raises_and_records_nothing(harness: Harness) -> None:
    h = harness
    await h.start({"Waiter": waiter})
    await h.client.start_orchestration("ev", "Waiter", "in")
    await eventually(lambda: count_events(h.client, "ev", Event.EventSubscribed), what="waiting")
    for value in NOT_STRINGS:
        with pytest.raises(PayloadError) as err:
            await h.client.raise_event("ev", "go", value)
        assert "data must be str" in str(err.value) and "json.dumps" in str(err.value)
    with pytest.raises(PayloadError, match="name"):
        await h.client.raise_event("ev", 7, "x")  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="reason"):
        await h.client.cancel_instance("ev", {"why": "no"})  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert await count_events(h.client, "ev", Event.EventRaised) == 0
    assert not (await h.client.get_orchestration_status("ev")).is_terminal
    await h.client.raise_event("ev", "go", "fine")
    assert await h.client.wait_for_orchestration("ev", 10) == OrchestrationStatus.Completed(output="in:fine")


async def test_schedule_activity_with_non_str_input_raises_at_the_call_site(harness: Harness) -> None:
    h = harness
    runs: list[str] = []

    async def work(inp: str) -> str:
        runs.append(inp)
        return inp

    async def catches(ctx: OrchestrationContext, _: str) -> str:
        try:
            ctx.schedule_activity("Work", {"order": 1})  # type: ignore[arg-type]
        except PayloadError as e:
            return f"caught: {e}"
        return "not caught"

    async def does_not_catch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Work", 99)  # type: ignore[arg-type]

    async def bad_child_input(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_sub_orchestration("Catches", ["x"])  # type: ignore[arg-type]

    await h.start({"Catches": catches, "DoesNotCatch": does_not_catch, "BadChild": bad_child_input}, {"Work": work})
    status = await h.run("c1", "Catches")
    assert isinstance(status, OrchestrationStatus.Completed)
    assert "must be str" in status.output and "dict" in status.output and "json.dumps" in status.output
    status = await h.run("c2", "DoesNotCatch")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "PayloadError" and "int" in status.error
    status = await h.run("c3", "BadChild")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "PayloadError" and "list" in status.error
    for iid in ("c1", "c2", "c3"):
        events = await h.client.read_history(iid)
        assert not any(isinstance(e, (Event.ActivityScheduled, Event.SubOrchestrationScheduled)) for e in events)
    assert runs == []
    assert {i.instance_id for i in await h.client.list_instances()} == {"c1", "c2", "c3"}


async def test_non_str_results_are_reported_as_payload_errors(harness: Harness) -> None:
    h = harness

    async def returns_int(inp: str) -> Any:
        return 42

    async def calls_it(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.schedule_activity("ReturnsInt", "")
        except ActivityFailed as e:
            return f"{e.error_type}|{'must return str' in e.details.message}"
        return "no error"

    async def returns_dict(ctx: OrchestrationContext, _: str) -> Any:
        return {"not": "a string"}

    await h.start({"CallsIt": calls_it, "ReturnsDict": returns_dict}, {"ReturnsInt": returns_int})
    assert await h.run("r1", "CallsIt") == OrchestrationStatus.Completed(output="PayloadError|True")
    status = await h.run("r2", "ReturnsDict")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "PayloadError"
    assert "must return str" in status.error and "dict" in status.error


# -- names and ids --------------------------------------------------------------------------


async def test_unknown_orchestration_name_fails_as_poison_after_retries(harness: Harness) -> None:
    h = harness

    async def known(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    await h.start({"Known": known}, max_attempts=3)
    # A client that leaves unknown names to the runtimes (this process's runtime does not run
    # every orchestration): the instance is stored, backed off, and poisoned in the end.
    await Client(h.store, check_names=False).start_orchestration("u1", "NoSuchOrch", "x")
    status = await h.client.wait_for_orchestration("u1", timedelta(seconds=15))
    assert isinstance(status, OrchestrationStatus.Failed), status
    assert status.details is not None and status.details.error_type == "PoisonMessageError"
    assert "NoSuchOrch" in status.error and "Known" in status.error  # what is missing, what is there
    delivered = re.search(r"delivered (\d+) times", status.error)
    assert delivered is not None and int(delivered.group(1)) > 3  # it was retried first
    assert await h.run("u2", "Known", "still serving") == OrchestrationStatus.Completed(output="still serving")


async def test_existing_instance_id_is_refused_and_the_original_runs_once(harness: Harness) -> None:
    h = harness
    runs: Counter[str] = Counter()

    async def work(inp: str) -> str:
        runs[inp] += 1
        return inp

    async def orch(ctx: OrchestrationContext, inp: str) -> str:
        return await ctx.schedule_activity("Work", inp)

    await h.client.start_orchestration("dup", "Orch", "original")
    with pytest.raises(InstanceAlreadyExistsError) as err:
        await h.client.start_orchestration("dup", "Orch", "impostor")
    assert err.value.instance_id == "dup" and "'dup'" in str(err.value) and "purge" in str(err.value)
    with pytest.raises(InstanceAlreadyExistsError):
        await h.client.start_orchestration("dup", "Other", "impostor")
    assert [i.instance_id for i in await h.client.list_instances()] == ["dup"]
    await h.start({"Orch": orch}, {"Work": work})
    assert await h.client.wait_for_orchestration("dup", 10) == OrchestrationStatus.Completed(output="original")
    await asyncio.sleep(0.05)
    assert runs == Counter({"original": 1})


async def test_cancel_raise_and_reads_on_an_unknown_id_raise_instance_not_found(store: Provider) -> None:
    client = Client(store)
    for call, op in ((client.cancel_instance("ghost", "why"), "cancel_instance"),
                     (client.raise_event("ghost", "e", "data"), "raise_event"),
                     (client.read_history("ghost"), "read_history"),
                     (client.get_instance_info("ghost"), "get_instance_info")):
        with pytest.raises(InstanceNotFoundError) as err:
            await call
        assert err.value.instance_id == "ghost"
        assert op in str(err.value) and "'ghost'" in str(err.value) and "list_instances" in str(err.value)
        assert isinstance(err.value, LookupError)
    assert await client.get_orchestration_status("ghost") == OrchestrationStatus.NotFound()
    assert await client.list_instances() == []


# -- a damaged or busy store ------------------------------------------------------------------


async def test_corrupt_history_row_fails_only_that_instance(sqlite_harness: Harness) -> None:
    h = sqlite_harness
    await h.start({"Waiter": waiter})
    for iid in ("bad-first", "bad-later", "good"):
        await h.client.start_orchestration(iid, "Waiter", iid)
    for iid in ("bad-first", "bad-later", "good"):
        await eventually(lambda: count_events(h.client, iid, Event.EventSubscribed), what=f"{iid} waits")
    await h.stop()
    assert isinstance(h.store, SqliteProvider)
    conn = sqlite3.connect(h.store.path, timeout=10)
    with conn:
        for iid, event_id in (("bad-first", 1), ("bad-later", 2)):
            cur = conn.execute("UPDATE history SET event=? WHERE instance_id=? AND event_id=?",
                               (b"\x00\xffgarbage{", iid, event_id))
            assert cur.rowcount == 1
    conn.close()

    for iid in ("bad-first", "bad-later"):
        with pytest.raises(CorruptHistoryError) as err:
            await h.client.read_history(iid)
        assert err.value.instance_id == iid and f"'{iid}'" in str(err.value)
    await h.start({"Waiter": waiter})
    for iid in ("bad-first", "bad-later", "good"):
        assert await h.client.raise_event(iid, "go", "now")
    for iid in ("bad-first", "bad-later"):
        status = await h.client.wait_for_orchestration(iid, 10)
        assert isinstance(status, OrchestrationStatus.Failed), (iid, status)
        assert status.details is not None and status.details.error_type == "CorruptHistoryError"
        assert iid in status.error
    assert await h.client.wait_for_orchestration("good", 10) == OrchestrationStatus.Completed(output="good:now")
    await h.client.start_orchestration("fresh", "Waiter", "f")  # and it keeps taking new work
    await h.client.raise_event("fresh", "go", "x")
    assert await h.client.wait_for_orchestration("fresh", 10) == OrchestrationStatus.Completed(output="f:x")


async def test_busy_locked_database_is_retried_and_instances_complete(sqlite_harness: Harness) -> None:
    h = sqlite_harness

    async def chain(ctx: OrchestrationContext, inp: str) -> str:
        out = inp
        for _ in range(4):
            out = await ctx.schedule_activity("Step", out)
        return out

    async def step(inp: str) -> str:
        await asyncio.sleep(0.05)
        return inp + "+"

    await h.start({"Chain": chain}, {"Step": step})
    await h.client.start_orchestration("before", "Chain", "b")
    await eventually(lambda: count_events(h.client, "before", Event.ActivityScheduled), what="in flight")
    assert isinstance(h.store, SqliteProvider)
    path = h.store.path
    locked = threading.Event()

    def hold_exclusive_lock() -> None:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(1.0)
            conn.execute("COMMIT")
        finally:
            conn.close()

    holder = asyncio.ensure_future(asyncio.to_thread(hold_exclusive_lock))
    await eventually(locked.is_set, what="exclusive lock taken")
    await h.client.start_orchestration("during", "Chain", "d")  # waits for the lock, then succeeds
    await holder
    assert await h.client.wait_for_orchestration("before", 15) == OrchestrationStatus.Completed(output="b++++")
    assert await h.client.wait_for_orchestration("during", 15) == OrchestrationStatus.Completed(output="d++++")
    assert await h.client.list_instances(status="Failed") == []


# -- registry and configuration misuse ----------------------------------------------------------


def test_orchestration_must_be_async_def() -> None:
    def not_async(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    candidates: list[Any] = [not_async, lambda ctx, inp: inp, "NotAFunction"]
    for fn in candidates:
        with pytest.raises(ConfigurationError) as err:
            OrchestrationRegistry.builder().register("Sync", fn)
        assert "async def" in str(err.value)


def test_duplicate_registrations_raise_configuration_error() -> None:
    async def one(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    async def two(ctx: OrchestrationContext, inp: str) -> str:
        return inp

    with pytest.raises(ConfigurationError, match="already registered"):
        OrchestrationRegistry.builder().register("Same", one).register("Same", two)
    with pytest.raises(ConfigurationError, match="already registered"):
        OrchestrationRegistry.builder().register_versioned("Same", "2.0.0", one).register_versioned("Same", "2.0.0", two)
    OrchestrationRegistry.builder().register("Same", one).register_versioned("Same", "2.0.0", two)  # versions coexist
    with pytest.raises(ConfigurationError, match="already registered"):
        ActivityRegistry.builder().register("Act", echo).register("Act", echo)
    r1 = OrchestrationRegistry.builder().register("Same", one).build()
    r2 = OrchestrationRegistry.builder().register("Same", two).build()
    with pytest.raises(ConfigurationError, match="twice"):
        Runtime.builder().orchestrations(r1).orchestrations(r2)

    async def other_echo(inp: str) -> str:
        return inp

    a1 = ActivityRegistry.builder().register("Act", echo).build()
    a2 = ActivityRegistry.builder().register("Act", other_echo).build()
    with pytest.raises(ConfigurationError, match="twice"):
        Runtime.builder().activities(a1).activities(a2)


def test_other_registry_and_option_misuse_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        ActivityRegistry.builder().register("Act", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ActivityRegistry.builder().register("", echo)
    with pytest.raises(ConfigurationError):
        OrchestrationRegistry.builder().register("", waiter)
    registry = OrchestrationRegistry.builder().register("W", waiter).build()
    with pytest.raises(ConfigurationError, match="9.9.9"):
        registry.set_version_policy("W", VersionPolicy.exact("9.9.9"))
    with pytest.raises(ConfigurationError):
        Runtime.builder().store("sqlite:///not-a-provider.db")  # type: ignore[arg-type]
    for bad in (dict(max_attempts=0), dict(orchestration_lock_timeout=0), dict(activity_concurrency=0),
                dict(poll_interval=-1)):
        with pytest.raises(ConfigurationError):
            RuntimeOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_attempts=0)


async def test_runtime_without_store_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="store"):
        await Runtime.builder().start()
    client = Client(InMemoryProvider())
    with pytest.raises(ConfigurationError):
        await client.wait_for_orchestration("x", "soon")  # type: ignore[arg-type]
    assert await client.wait_for_orchestration("x", timedelta(seconds=0)) == OrchestrationStatus.NotFound()


async def test_purging_an_unknown_instance_is_a_typed_error(harness: Harness) -> None:
    with pytest.raises(InstanceNotFoundError) as err:
        await harness.client.purge("never-was")
    assert "never-was" in str(err.value) and "Fix:" in str(err.value)
