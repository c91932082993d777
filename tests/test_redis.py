"""The Redis store beyond the conformance suite: bad input at connect, prefix isolation, persistence
checks, fenced leases, dropped connections, and ``duroxide_main(provider="redis")``.

Every test runs on the session's own ``redis-server`` (tests/redis_session.py), under key prefixes of
its own; the persistence tests start servers of their own with other settings.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Self
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis

from duroxide_runtime import Client, Event, OrchestrationContext, OrchestrationStatus, StoreError
from duroxide_runtime.messages import ActivityResult
from duroxide_runtime.providers.base import QueueDepths, WorkCompletion, now_ms
from duroxide_runtime.providers.redis import RedisProvider
from duroxide_runtime.testing import ManualClock
from duroxide_runtime.wake import wake_hub

from .redis_session import REDIS, RedisServer, free_port
from .support import Harness, drop_store, eventually
from .test_duroxide_main import _assert_shut_down, _program, _run, _values
from .test_provider_conformance import activity, commit_for, event_msg, fetch_one, start_msg, started


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


async def _server_keys() -> set[bytes]:
    r = aioredis.Redis.from_url(REDIS.url())
    try:
        return {k async for k in r.scan_iter(count=1000)}
    finally:
        await r.aclose()


# -- bad input at connect ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://", "127.0.0.1:6379", ""])
async def test_a_url_that_is_not_redis_raises_a_store_error_naming_the_fix(url: str) -> None:
    with pytest.raises(StoreError) as info:
        await RedisProvider.new(url)
    assert "redis://" in (info.value.fix or "")


async def test_an_unreachable_server_raises_a_store_error_naming_the_fix() -> None:
    with pytest.raises(StoreError) as info:
        await RedisProvider.new(f"redis://127.0.0.1:{free_port()}/0")
    assert "cannot connect" in str(info.value) and "redis-server" in (info.value.fix or "")


async def test_keys_of_the_wrong_type_under_the_prefix_raise_a_store_error() -> None:
    prefix = _prefix()
    r = aioredis.Redis.from_url(REDIS.url())
    try:
        await r.set(f"{prefix}:inst", "written by another application")
        with pytest.raises(StoreError) as info:
            await RedisProvider.new(REDIS.url(), prefix=prefix)
        assert "holds a string" in str(info.value) and "prefix" in (info.value.fix or "")
    finally:
        await r.delete(f"{prefix}:inst")
        await r.aclose()


async def test_a_server_without_watch_raises_a_store_error_naming_the_fix() -> None:
    server = RedisServer(extra=("--rename-command", "WATCH", ""))
    try:
        with pytest.raises(StoreError) as info:
            await RedisProvider.new(server.url())
        assert "lacks WATCH" in str(info.value) and "Redis 6.2" in (info.value.fix or "")
    finally:
        server.stop()


@pytest.mark.parametrize("prefix", ["", "has space", "tab\there"])
async def test_a_bad_prefix_raises_a_store_error(prefix: str) -> None:
    with pytest.raises(StoreError):
        await RedisProvider.new(REDIS.url(), prefix=prefix)


# -- sharing one server ----------------------------------------------------------------------------


async def test_every_kind_of_call_after_close_raises_a_store_error_naming_the_fix() -> None:
    store = await RedisProvider.new(REDIS.url(), prefix=f"t{uuid.uuid4().hex[:16]}")
    await store.create_instance(start_msg("i1"))
    await store.drop_keys()
    await store.close()
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "a script (fetch)": lambda: store.fetch_orchestration_items(4, 5.0),
        "a script (renewal)": lambda: store.renew_orchestration_items([("i1", "token")], 5.0),
        "a read": lambda: store.get_instance("i1"),
        "a transaction": lambda: store.send(event_msg("i1"))}
    for what, call in calls.items():
        with pytest.raises(StoreError) as caught:
            await call()
        assert "closed" in str(caught.value) and caught.value.fix, what


async def test_a_keyspace_written_before_the_scripts_indexes_is_upgraded_at_connect() -> None:
    prefix = f"t{uuid.uuid4().hex[:16]}"
    store = await RedisProvider.new(REDIS.url(), prefix=prefix)
    try:
        await store.create_instance(start_msg("i1"))
        item = await fetch_one(store, "i1")
        events = [started(), Event.ActivityScheduled(event_id=2, timestamp_ms=now_ms(), name="Act", input="x")]
        assert await store.commit_turns([commit_for(item, new_events=events, activities=[activity("i1", 2)])]) == [True]
    finally:
        await store.close()
    # What the earlier layout lacks: these indexes, and the name, priority and call key in each call.
    raw = aioredis.Redis.from_url(REDIS.url())
    try:
        await raw.delete(*(f"{prefix}:{name}" for name in ("hlen", "wq", "wlease", "wtok", "layout")))
        for wid, entry in (await raw.hgetall(f"{prefix}:work")).items():
            old = {k: v for k, v in orjson.loads(entry).items() if k not in ("n", "p", "k")}
            await raw.hset(f"{prefix}:work", wid, orjson.dumps(old))
    finally:
        await raw.aclose()
    store = await RedisProvider.new(REDIS.url(), prefix=prefix)
    try:
        # The queued call is leased, and a message for the instance comes with its real history length.
        leases = await store.fetch_work_items(4, 30.0)
        assert [(lease.work.instance_id, lease.work.event_id) for lease in leases] == [("i1", 2)]
        await store.send(event_msg("i1"))
        assert (await fetch_one(store, "i1")).history_len == 2
        # The call's result is taken (the completion script finds it by its lease and call key).
        await store.complete_work_items([WorkCompletion(leases[0].lock_token, ActivityResult(
            instance_id="i1", execution_id=1, event_id=2, result="done"))])
        assert await store.queue_depths() == QueueDepths(2, 0, 0, 1)  # the event and the result; no call left
    finally:
        await drop_store(store)


async def test_two_prefixes_share_one_server_and_nothing_is_written_outside_them() -> None:
    before = await _server_keys()
    a = await RedisProvider.new(REDIS.url(), prefix=_prefix())
    b = await RedisProvider.new(REDIS.url(), prefix=_prefix())
    try:
        for store in (a, b):
            harness = Harness(store, "cached")

            async def hello(ctx: OrchestrationContext, name: str) -> str:
                await ctx.schedule_timer(0.01)
                return await ctx.schedule_activity("Greet", name)

            await harness.start({"Hello": hello}, {"Greet": lambda n: f"hi {n}"})
            try:
                status = await harness.run("same-id", "Hello", "x", timeout=30)
                assert status == OrchestrationStatus.Completed(output="hi x")
            finally:
                await harness.stop()
        assert [r.instance_id for r in await a.list_instances()] == ["same-id"]
        assert [r.instance_id for r in await b.list_instances()] == ["same-id"]
        await a.purge_instance("same-id")
        assert await a.get_instance("same-id") is None and await b.get_instance("same-id") is not None
        new = (await _server_keys()) - before
        assert new and all(k.startswith((a.prefix + ":").encode()) or k.startswith((b.prefix + ":").encode())
                           for k in new), new
    finally:
        await drop_store(a)
        await drop_store(b)


# -- persistence settings --------------------------------------------------------------------------


async def test_a_server_without_fsync_always_is_warned_about_or_refused(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(fsync="everysec")
    try:
        url = server.url()
        with caplog.at_level(logging.WARNING, logger="duroxide.redis"):
            store = await RedisProvider.new(url)
        await drop_store(store)
        assert any("appendfsync=everysec" in r.getMessage() for r in caplog.records), caplog.text
        with pytest.raises(StoreError) as info:
            await RedisProvider.new(url, require_fsync_always=True)
        assert "appendfsync always" in (info.value.fix or "")
    finally:
        server.stop()


async def test_the_session_server_with_fsync_always_is_accepted_without_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="duroxide.redis"):
        store = await RedisProvider.new(REDIS.url(), prefix=_prefix(), require_fsync_always=True)
    await drop_store(store)
    assert not caplog.records


# -- fenced leases ------------------------------------------------------------------------------------


async def test_a_runtime_whose_lock_lapsed_cannot_commit_after_another_took_the_instance() -> None:
    clock = ManualClock()
    store = await RedisProvider.new(REDIS.url(), prefix=_prefix(), clock=clock)
    try:
        await store.create_instance(start_msg("i1"))
        late = await fetch_one(store, "i1", lock_timeout=5)
        clock.advance(6)  # the lease lapses; another runtime takes the instance
        taker = await fetch_one(store, "i1", lock_timeout=5)
        assert taker.lock_token != late.lock_token
        assert await store.commit_turns([commit_for(late)]) == [False]
        assert await store.commit_turns([commit_for(taker)]) == [True]
    finally:
        await drop_store(store)


# -- dropped connections ---------------------------------------------------------------------------


async def test_connections_killed_while_turns_commit_are_survived() -> None:
    """CLIENT KILL of every client connection, again and again, while 20 orchestrations run."""
    store = await RedisProvider.new(REDIS.url(), prefix=_prefix())
    harness = Harness(store, "cached")
    runs: dict[str, int] = {}

    def work(n: str) -> str:
        runs[n] = runs.get(n, 0) + 1
        return str(int(n) * 2)

    async def flow(ctx: OrchestrationContext, n: str) -> str:
        total = 0
        for i in range(3):
            total += int(await ctx.schedule_activity("Work", str(int(n) * 10 + i)))
        await ctx.schedule_timer(0.01)
        return str(total)

    admin = aioredis.Redis.from_url(REDIS.url())
    stop = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            # every normal client but this one (SKIPME yes): the store's pipelines and its pub/sub
            kills += await admin.client_kill_filter(_type="normal", skipme=True)
            kills += await admin.client_kill_filter(_type="pubsub", skipme=True)
            await asyncio.sleep(0.05)

    await harness.start({"Flow": flow}, {"Work": work})
    task = asyncio.create_task(killer())
    try:
        client = Client(store)
        for n in range(20):
            await client.start_orchestration(f"k-{n}", "Flow", str(n))
        for n in range(20):
            status = await client.wait_for_orchestration(f"k-{n}", timedelta(seconds=120))
            assert status == OrchestrationStatus.Completed(output=str(sum(2 * (n * 10 + i) for i in range(3))))
        assert kills > 0
        for n in range(20):  # each activity result recorded exactly once in the history
            history = await store.read_history(f"k-{n}")
            assert sum(1 for e in history if type(e).__name__ == "ActivityCompleted") == 3
    finally:
        stop.set()
        await task
        await admin.aclose()
        await harness.stop()
        await drop_store(store)


# -- duroxide_main --------------------------------------------------------------------------------------


def test_duroxide_main_runs_on_redis_from_redis_url(tmp_path: Path) -> None:
    instance = f"dm-redis-{uuid.uuid4().hex}"
    prog = _program(tmp_path, f'''
        @duroxide_main(provider="redis")
        async def main() -> None:
            print("KIND", type(client.store).__name__)
            print("RESULT", await dm_flow.run({instance!r}, 7, timeout=30))
            print("BODY DONE")
            await client.store.drop_keys()

        if __name__ == "__main__":
            main()
    ''')
    proc = _run(tmp_path, prog, REDIS_URL=REDIS.url())
    assert proc.returncode == 0, proc.stderr
    v = _values(proc.stdout)
    assert (v["KIND"], v["RESULT"]) == ("RedisProvider", "15")
    _assert_shut_down(proc.stdout, "RedisProvider", "BODY DONE")
    proc = _run(tmp_path, prog)  # without REDIS_URL: the error names the fix
    assert proc.returncode != 0 and "REDIS_URL" in proc.stderr


def test_redis_url_with_another_provider_is_a_configuration_error() -> None:
    from duroxide_macros.main import duroxide_main
    from duroxide_runtime import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        duroxide_main(provider="sqlite", redis_url="redis://127.0.0.1:6379/0")
    assert "provider='redis'" in (info.value.fix or "")


# -- the duroxide CLI ----------------------------------------------------------------------------------
# (tests/test_cli.py runs every command on a populated Redis store; here: what it refuses)


async def test_the_cli_never_creates_a_redis_store_and_names_an_unreachable_server(tmp_path: Path) -> None:
    from .test_cli import Cli

    cli = Cli([], tmp_path)
    prefix = _prefix()
    missing = await cli("--store", REDIS.url(), "--schema", prefix, "list")
    assert missing.code == 1 and f"no duroxide store under the key prefix '{prefix}'" in missing.err, missing
    assert not [k for k in await _server_keys() if k.startswith(prefix.encode())]
    down = await cli("--json", "--store", f"redis://127.0.0.1:{free_port()}/0", "list")
    assert down.code == 1 and down.err_json()["code"] == "STORE" and "cannot connect to Redis" in down.err_json()["message"]


# -- a reply lost after the server applied the transaction -----------------------------------------


class Proxy:
    """A TCP proxy to a Redis server on a free loopback port (``url``); subclasses pass the bytes on."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port_to = parts.hostname or "127.0.0.1", parts.port or 6379
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Connections still passing bytes (or held frozen) end with the proxy, not at garbage collection.
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handle(cr, cw)
        finally:
            self._connections.discard(task)
            cw.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class LoseExecReply(Proxy):
    """A TCP proxy to the session's server that, once armed, passes one ``EXEC`` on and drops the
    connection before its reply reaches the client: the transaction committed, the client cannot know."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.armed = False
        self.lost = 0

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.port_to)
        cut = asyncio.Event()

        async def up() -> None:
            while data := await cr.read(65536):
                if self.armed and (b"EXEC" in data or b"EVALSHA" in data):
                    self.armed = False
                    cut.set()  # nothing more reaches the client
                    sw.write(data)
                    await sw.drain()
                    await asyncio.sleep(0.3)  # the server applies it
                    self.lost += 1
                    break
                sw.write(data)
                await sw.drain()
            cw.transport.abort()
            sw.close()

        async def down() -> None:
            while data := await sr.read(65536):
                if cut.is_set():
                    break
                cw.write(data)
                await cw.drain()

        await asyncio.gather(up(), down(), return_exceptions=True)


async def test_a_send_whose_reply_was_lost_is_enqueued_once() -> None:
    async with LoseExecReply(REDIS.url()) as proxy:
        store = await RedisProvider.new(proxy.url, prefix=_prefix())
        try:
            await store.create_instance(start_msg("i1"))
            proxy.armed = True
            assert await store.send(event_msg("i1", "e1")) is not None
            assert proxy.lost == 1
            proxy.armed = True
            await store.create_instance(start_msg("i2"))  # not InstanceAlreadyExistsError: it was its own
            assert proxy.lost == 2
            await store.create_instance(start_msg("i3"))
            proxy.armed = True
            assert await store.purge_instance("i3") == ["i3"]  # what the committed purge deleted
            assert proxy.lost == 3
            items = (await store.fetch_orchestration_items(10, 60)).items
            assert {i.instance_id: [type(m.message).__name__ for m in i.messages] for i in items} == {
                "i1": ["StartOrchestration", "ExternalEvent"], "i2": ["StartOrchestration"]}
        finally:
            await drop_store(store)


# -- a pub/sub connection that dies without a word ---------------------------------------------------


class FreezeSubscribers(Proxy):
    """A TCP proxy to the session's server that, once ``freeze()`` is called, stops passing anything on
    the connections that subscribed, in either direction, while keeping their sockets open: what a
    host or a NAT entry that vanished looks like from the client. Other connections keep working."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.frozen = asyncio.Event()
        self.subscribers = 0

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.port_to)
        subscriber = asyncio.Event()
        hold = asyncio.Event()  # never set: a frozen direction waits here for good

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
            while data := await reader.read(65536):
                if upstream and b"SUBSCRIBE" in data and not subscriber.is_set():
                    subscriber.set()
                    self.subscribers += 1
                if subscriber.is_set() and self.frozen.is_set():
                    await hold.wait()
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False), return_exceptions=True)
        finally:
            cw.close()
            sw.close()


async def test_a_pub_sub_connection_that_dies_silently_is_replaced(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RedisProvider, "listen_check", 0.2)
    prefix = f"t{uuid.uuid4().hex[:16]}"
    async with FreezeSubscribers(REDIS.url()) as proxy:
        # A test clock: the hub's waits end only on a wake-up, never by their timeout.
        store = await RedisProvider.new(proxy.url, prefix=prefix, clock=ManualClock())
        other = await RedisProvider.new(REDIS.url(), prefix=prefix)
        try:
            await eventually(lambda: proxy.subscribers == 1, 60, "the listener's subscription")
            with caplog.at_level(logging.WARNING, logger="duroxide.redis"):
                proxy.frozen.set()
                await eventually(lambda: proxy.subscribers == 2, 60, "a new subscription after the old one went silent")
            assert any("pub/sub connection failed" in r.getMessage() for r in caplog.records), caplog.text
            # The new subscription carries other processes' wake-ups again.
            waiting = asyncio.ensure_future(wake_hub(store).wait_worker(3600))
            await asyncio.sleep(0)
            await other.create_instance(start_msg("i1"))  # wakes orchestrators, not workers
            item = await fetch_one(other, "i1")
            await other.commit_turns([commit_for(item, new_events=[started()], activities=[activity("i1", 2)])])
            await asyncio.wait_for(waiting, 60)  # a safety net: the wake-up ends it at once
        finally:
            await other.close()
            await drop_store(store)



async def test_a_listener_whose_read_drops_a_cancel_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py reads through asyncio.wait_for, which on Python 3.11 may return a reply and drop a
    cancel that came with it: the pub/sub listener must still stop (asyncio.run's shutdown, after
    Ctrl-C, waits for every task; the listener used to read on for ever)."""
    from redis.asyncio.client import PubSub

    real = PubSub.get_message
    reading = asyncio.Event()

    async def drops_cancels(self: PubSub, *args: object, **kwargs: object) -> object:
        # (redis-py's own read may drop it already; this makes sure it is dropped every time.)
        reading.set()
        try:
            return await real(self, *args, **kwargs)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            return None  # the reply "came with" the cancel: returned, the cancel dropped

    monkeypatch.setattr(PubSub, "get_message", drops_cancels)
    store = await RedisProvider.new(REDIS.url(), prefix=f"t{uuid.uuid4().hex[:16]}")
    try:
        listener = store._listener  # noqa: SLF001 - the task under test
        assert listener is not None
        await asyncio.wait_for(reading.wait(), 60)
        listener.cancel()
        done, _ = await asyncio.wait({listener}, timeout=30)
        assert done == {listener}, "the listener read on after its cancel was dropped"
    finally:
        await drop_store(store)
