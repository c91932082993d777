"""Start policies (issue 16): ``if_exists=`` and ``idempotency_key=`` of ``start_orchestration``, on every store.

``fail`` (the default) refuses a taken id; ``return_existing`` returns it
whatever its state; ``replace`` swaps a finished instance for a fresh one in
one store transaction (no trace of the old one is left) and refuses a live one
without touching it. A repeated start with an idempotency key is a no-op
returning the first start's id: after a lost reply, from many tasks at once,
and from three processes at once on SQLite and PostgreSQL (exactly one
instance is created). Bad input is refused before anything is stored. The
macro layer's ``start``/``run`` pass both through.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from duroxide_macros.prelude import Client, IfExists, OrchestrationContext, orchestration
from duroxide_runtime import (
    Event, InstanceAlreadyExistsError, InstanceStateError, InvalidInputError, OrchestrationStatus, PayloadError,
    Provider,
)
from duroxide_runtime.messages import ExternalEvent, StartOrchestration
from duroxide_runtime.providers.memory import InMemoryProvider
from duroxide_runtime.providers.redis import RedisProvider
from duroxide_runtime.providers.sqlite import SqliteProvider
from duroxide_runtime.start_policy import IDEMPOTENCY_KEY_TTL, MAX_IDEMPOTENCY_KEY_CHARS
from duroxide_runtime.testing import ManualClock

from . import redis_raw
from .support import PROVIDERS, Harness, drop_store, eventually, make_store
from .test_semantics_replay import finish, until_waiting
from .worker_process import release_together

WORKER = Path(__file__).with_name("start_policy_worker.py")


async def _flow(ctx: OrchestrationContext, input: str) -> str:
    """Waits for "go" when told to; fails on "fail"; otherwise calls a child and an activity."""
    if input == "wait":
        await ctx.schedule_wait("go")
    if input == "fail":
        raise ValueError("asked to fail")
    child = await ctx.schedule_sub_orchestration("Child", input, instance_id=f"child-of-{input}")
    return await ctx.schedule_activity("Shout", child)


async def _child(ctx: OrchestrationContext, input: str) -> str:
    return f"child({input})"


async def _shout(text: str) -> str:
    return text.upper()


FUNCTIONS = ({"Flow": _flow, "Child": _child}, {"Shout": _shout})


async def _status(h: Harness, iid: str, status: str) -> None:
    async def check() -> bool:
        return (await h.client.get_instance_info(iid)).status == status
    await eventually(check, 20, f"{iid!r} {status}")


# -- each policy ----------------------------------------------------------------------------


async def test_fail_is_the_default_and_changes_nothing(cached_harness: Harness) -> None:
    client = cached_harness.client
    assert await client.start_orchestration("f-1", "Flow", "one") == "f-1"
    before = await client.get_instance_info("f-1")
    for again in (client.start_orchestration("f-1", "Flow", "two"),
                  client.start_orchestration("f-1", "Flow", "two", if_exists="fail"),
                  client.start_orchestration("f-1", "Flow", "two", if_exists=IfExists.FAIL)):
        with pytest.raises(InstanceAlreadyExistsError) as err:
            await again
        assert err.value.instance_id == "f-1" and "if_exists" in (err.value.fix or "")
    assert await client.get_instance_info("f-1") == before
    await cached_harness.start(*FUNCTIONS)
    assert (await finish(cached_harness, "f-1")) == OrchestrationStatus.Completed(output="CHILD(ONE)")


async def test_return_existing_returns_the_id_whatever_its_state(cached_harness: Harness) -> None:
    h, client = cached_harness, cached_harness.client
    await client.start_orchestration("r-1", "Flow", "wait")

    async def unchanged() -> None:
        info = await client.get_instance_info("r-1")
        history = await client.read_history("r-1")
        assert await client.start_orchestration("r-1", "Flow", "x", if_exists="return_existing") == "r-1"
        assert await client.get_instance_info("r-1") == info
        assert await client.read_history("r-1") == history

    await unchanged()  # Pending: no runtime yet
    await h.start(*FUNCTIONS)
    await until_waiting(h, "r-1", "go")
    await unchanged()  # Running
    await client.suspend_instance("r-1")
    await _status(h, "r-1", "Suspended")
    await unchanged()
    await client.resume_instance("r-1")
    await client.raise_event("r-1", "go")
    assert await finish(h, "r-1") == OrchestrationStatus.Completed(output="CHILD(WAIT)")
    await unchanged()  # Completed: not run again
    await client.start_orchestration("r-2", "Flow", "fail")
    assert isinstance(await finish(h, "r-2"), OrchestrationStatus.Failed)
    assert await client.start_orchestration("r-2", "Flow", "one", if_exists=IfExists.RETURN_EXISTING) == "r-2"
    assert isinstance(await client.get_orchestration_status("r-2"), OrchestrationStatus.Failed)


async def test_replace_of_a_finished_instance_leaves_no_trace_of_the_old(cached_harness: Harness) -> None:
    h, client, store = cached_harness, cached_harness.client, cached_harness.store
    await h.start(*FUNCTIONS)
    assert await h.run("p", "Flow", "one") == OrchestrationStatus.Completed(output="CHILD(ONE)")
    assert await client.get_instance_info("child-of-one") is not None
    old = await store.get_instance("p")
    await h.stop()
    # A message still queued for the old instance (one that arrived after it ended).
    assert await store.send(ExternalEvent(instance_id="p", name="stray", data="old")) is not None

    assert await client.start_orchestration("p", "Flow", "two", if_exists="replace") == "p"
    new = await store.get_instance("p")
    assert old is not None and new is not None
    assert (new.status, new.execution_id, new.output, new.incarnation != old.incarnation) == ("Pending", 1, None, True)
    assert await store.read_history("p") == [] and await store.list_executions("p") == []
    assert await store.get_instance("child-of-one") is None  # its sub-orchestration went with it
    depths = await store.queue_depths()
    assert (depths.orchestrator, depths.timers, depths.worker) == (1, 0, 0)  # the new start, nothing else

    await h.start(*FUNCTIONS)
    assert await finish(h, "p") == OrchestrationStatus.Completed(output="CHILD(TWO)")
    history = await client.read_history("p")
    assert [e.input for e in history if isinstance(e, Event.OrchestrationStarted)] == ["two"]
    assert not any(isinstance(e, Event.EventRaised) for e in history)
    assert await client.list_executions("p") == [1]
    assert sorted(i.instance_id for i in await client.list_instances()) == ["child-of-two", "p"]

    # A Failed instance is replaced too.
    await client.start_orchestration("q", "Flow", "fail")
    assert isinstance(await finish(h, "q"), OrchestrationStatus.Failed)
    await client.start_orchestration("q", "Flow", "three", if_exists=IfExists.REPLACE)
    assert await finish(h, "q") == OrchestrationStatus.Completed(output="CHILD(THREE)")


async def test_replace_of_a_live_instance_is_refused_and_changes_nothing(cached_harness: Harness) -> None:
    h, client = cached_harness, cached_harness.client
    await client.start_orchestration("l-1", "Flow", "wait")

    async def refused(status: str) -> None:
        info = await client.get_instance_info("l-1")
        history = await client.read_history("l-1")
        with pytest.raises(InstanceStateError) as err:
            await client.start_orchestration("l-1", "Flow", "new", if_exists="replace")
        assert (err.value.operation, err.value.status, err.value.instance_id) == ("replace", status, "l-1")
        assert "cancel" in (err.value.fix or "")
        assert await client.get_instance_info("l-1") == info
        assert await client.read_history("l-1") == history

    await refused("Pending")
    await h.start(*FUNCTIONS)
    await until_waiting(h, "l-1", "go")
    await refused("Running")
    await client.suspend_instance("l-1")
    await _status(h, "l-1", "Suspended")
    await refused("Suspended")
    await client.resume_instance("l-1")
    await client.raise_event("l-1", "go")
    assert await finish(h, "l-1") == OrchestrationStatus.Completed(output="CHILD(WAIT)")  # it ran on untouched


# -- idempotency keys ---------------------------------------------------------------------


async def test_a_repeated_start_with_a_key_returns_the_first_instance(cached_harness: Harness) -> None:
    h, client = cached_harness, cached_harness.client
    await h.start(*FUNCTIONS)
    assert await client.start_orchestration("k-1", "Flow", "one", idempotency_key="order-81") == "k-1"
    # The reply was lost: the caller retries (the store is called twice with the key), with the same id
    # or, having made a new one, another; whatever the policy.
    assert await client.start_orchestration("k-1", "Flow", "one", idempotency_key="order-81") == "k-1"
    assert await client.start_orchestration("k-2", "Flow", "two", idempotency_key="order-81") == "k-1"
    assert await client.start_orchestration("k-1", "Flow", "one", idempotency_key="order-81",
                                            if_exists="replace") == "k-1"
    assert await finish(h, "k-1") == OrchestrationStatus.Completed(output="CHILD(ONE)")
    assert await client.start_orchestration("k-1", "Flow", "one", idempotency_key="order-81",
                                            if_exists="replace") == "k-1"  # the key wins: not replaced
    assert await client.list_executions("k-1") == [1]
    assert "k-2" not in {i.instance_id for i in await client.list_instances()}
    started = [e for e in await client.read_history("k-1") if isinstance(e, Event.OrchestrationStarted)]
    assert len(started) == 1
    # A start that failed recorded no key: the key starts an instance next time.
    with pytest.raises(InstanceAlreadyExistsError):
        await client.start_orchestration("k-1", "Flow", "x", idempotency_key="order-82")
    assert await client.start_orchestration("k-3", "Flow", "three", idempotency_key="order-82") == "k-3"
    assert await finish(h, "k-3") == OrchestrationStatus.Completed(output="CHILD(THREE)")


async def test_concurrent_starts_with_one_key_from_many_tasks(store: Provider) -> None:
    client = Client(store)
    ids = await asyncio.gather(*(client.start_orchestration(f"t-{n}", "Flow", "one", idempotency_key="one-key")
                                 for n in range(16)))
    assert len(set(ids)) == 1
    assert [i.instance_id for i in await client.list_instances()] == [ids[0]]


@pytest.mark.parametrize("kind", [k for k in PROVIDERS if k in ("sqlite", "postgres")])
async def test_concurrent_starts_with_one_key_from_three_processes(kind: str, tmp_path: Path) -> None:
    keys, tasks = 8, 3
    store = await make_store(kind, tmp_path)
    try:
        target, schema = (str(getattr(store, "path")), "-") if kind == "sqlite" else (
            str(getattr(store, "url")), str(getattr(store, "schema")))
        argvs = [[kind, target, schema, str(number), str(keys), str(tasks)] for number in range(3)]
        outputs = await release_together(WORKER, argvs, ready_timeout=30, run_timeout=60)
        instances = await store.list_instances()
        assert len(instances) == keys  # exactly one instance per key, whoever made it
        by_key = {i.instance_id.split("-p")[0]: i.instance_id for i in instances}
        for k in range(keys):
            key = f"key-{k}"
            returned = [iid for output in outputs for iid in output[key]]
            assert len(returned) == 3 * tasks and set(returned) == {by_key[key]}, (key, Counter(returned))
    finally:
        await drop_store(store)


async def _stored_keys(store: Provider) -> set[str]:
    """The idempotency keys a store holds, expired or not (read behind its back)."""
    if isinstance(store, InMemoryProvider):
        return set(store._start_keys)
    if isinstance(store, RedisProvider):
        return await redis_raw.stored_keys(store)
    if isinstance(store, SqliteProvider):
        conn = sqlite3.connect(store.path)
        try:
            return {r[0] for r in conn.execute("SELECT idempotency_key FROM start_keys")}
        finally:
            conn.close()
    schema = getattr(store, "schema")
    rows = await getattr(store, "_one")(lambda conn: conn.fetch(f"SELECT idempotency_key FROM {schema}.start_keys"))
    return {r[0] for r in rows}


@pytest.mark.skipif("postgres" not in PROVIDERS, reason="PostgreSQL is not among DUROXIDE_TEST_PROVIDERS")
async def test_a_reply_lost_after_the_commit_reports_the_start_once(tmp_path: Path) -> None:
    """The connection dies after PostgreSQL committed: the retried transaction finds its own start."""
    from .test_postgres_retries import LoseReply, _lost, _queue

    store = await make_store("postgres", tmp_path)
    try:
        client, url = Client(store), str(getattr(store, "url"))
        setattr(store, "_after_commit_hook", hook := LoseReply(url))
        assert await client.start_orchestration("a", "Flow", "", idempotency_key="k") == "a"
        _lost(hook)
        # Without a key, its incarnation tells the retry the row is its own: not a live instance to refuse.
        setattr(store, "_after_commit_hook", hook := LoseReply(url))
        assert await client.start_orchestration("b", "Flow", "", if_exists="replace") == "b"
        _lost(hook)
        setattr(store, "_after_commit_hook", None)
        assert sorted(i.instance_id for i in await client.list_instances()) == ["a", "b"]
        for iid in ("a", "b"):
            assert len(await _queue(store, iid)) == 1  # type: ignore[arg-type]
    finally:
        await drop_store(store)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_expired_keys_are_collected(kind: str, tmp_path: Path) -> None:
    clock = ManualClock()
    store = await make_store(kind, tmp_path, clock=clock)
    try:
        def start(iid: str) -> StartOrchestration:
            return StartOrchestration(instance_id=iid, name="Flow", version=None, input="")

        await store.start_instance(start("a"), idempotency_key="old")
        clock.advance(IDEMPOTENCY_KEY_TTL.total_seconds() / 2)
        await store.start_instance(start("b"), idempotency_key="young")
        assert await _stored_keys(store) == {"old", "young"}
        clock.advance(IDEMPOTENCY_KEY_TTL.total_seconds() / 2 + 61)  # "old" expired, and a collection is due
        await store.start_instance(start("c"), idempotency_key="new")
        assert await _stored_keys(store) == {"young", "new"}
        assert (await store.start_instance(start("d"), idempotency_key="young")).by_key  # kept, and in force
    finally:
        await drop_store(store)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["overwrite", "FAIL", "", None, 1])
async def test_an_unknown_policy_is_refused_before_anything_is_stored(store: Provider, policy: object) -> None:
    client = Client(store)
    with pytest.raises(InvalidInputError) as err:
        await client.start_orchestration("b-1", "Flow", "", if_exists=policy)  # type: ignore[arg-type]
    assert err.value.field == "if_exists"
    assert "'fail', 'return_existing', 'replace'" in str(err.value) and "IfExists.REPLACE" in (err.value.fix or "")
    assert await store.list_instances() == []


@pytest.mark.parametrize("key", ["", "k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1), "a\x00b", "tab\tkey"],
                         ids=["empty", "too-long", "nul", "control"])
async def test_a_bad_idempotency_key_is_refused_before_anything_is_stored(store: Provider, key: str) -> None:
    client = Client(store)
    with pytest.raises(InvalidInputError) as err:
        await client.start_orchestration("b-2", "Flow", "", idempotency_key=key)
    assert err.value.field == "idempotency_key" and err.value.fix
    with pytest.raises(PayloadError, match="idempotency_key"):
        await client.start_orchestration("b-2", "Flow", "", idempotency_key=42)  # type: ignore[arg-type]
    assert await store.list_instances() == []
    # The longest key is fine.
    assert await client.start_orchestration("b-3", "Flow", "",
                                            idempotency_key="k" * MAX_IDEMPOTENCY_KEY_CHARS) == "b-3"


# -- the macro layer ------------------------------------------------------------------------


@orchestration
async def sp_double(ctx: OrchestrationContext, n: int) -> int:
    return 2 * n


async def test_start_and_run_pass_the_policies_through(duroxide_runtime: object, duroxide_client: Client) -> None:
    assert await sp_double.run(duroxide_client, "sp-1", 2, timeout=10, idempotency_key="double") == 4
    # The key's first instance is the one waited for.
    assert await sp_double.run(duroxide_client, "sp-2", 5, timeout=10, idempotency_key="double") == 4
    assert await sp_double.start(duroxide_client, "sp-3", 7, idempotency_key="double") == "sp-1"
    assert await sp_double.start(duroxide_client, "sp-1", 9, if_exists="return_existing") == "sp-1"
    with pytest.raises(InstanceAlreadyExistsError):
        await sp_double.start(duroxide_client, "sp-1", 9)
    assert await sp_double.run(duroxide_client, "sp-1", 9, timeout=10, if_exists=IfExists.REPLACE) == 18
    assert not await sp_double.exists(duroxide_client, "sp-2")
