"""``RedisProvider``: a durable store on a Redis server (``redis`` client, asyncio API).

The hot paths (a start without queue, idempotency key or replacement; ``send``; the
orchestration and activity fetches; turn commits; activity results; lock renewals)
are Lua scripts (``redis_scripts``): one round trip each, atomic on the server,
with the lease check inside the script, so a runtime whose lock expired and was
taken over cannot commit, however late its script arrives. Everything else is one
optimistic transaction: ``WATCH`` the store's version key, read what the operation
needs, then ``MULTI`` / the writes / ``INCR`` of the version / ``EXEC``, redone
from its reads when another writer (a script, or another transaction) overtook it.
Reads are plain commands.

Layout, every key under ``<prefix>:`` (``prefix=``, default ``duroxide``), so two
applications can share one server:

* ``inst`` (hash) instance id -> the row (JSON); ``ex:<id>`` (set) its executions;
  ``h:<execution>:<id>`` (list) the events of one execution.
* ``q`` (hash) message id -> the queued orchestrator message; ``qvis`` (sorted set)
  message ids by the time they become visible (``id - 2**53`` for "at once": in
  arrival order): durable timers are entries with a future score; ``qpark`` (sorted
  set) the messages of a lease, by its expiry; ``qi:<id>`` (set) an instance's
  queued message ids; ``tk`` (hash) a timer's key -> its message id (for
  ``delete_timers``); ``hlen`` (hash) instance id -> ``incarnation|execution|length``
  of its current history.
* ``locks`` (hash) instance id -> ``token|until|parked ids``; ``work`` (hash) activity
  calls; ``wq`` / ``wlease`` (sorted sets) the calls to lease (by priority, then id)
  and the leased ones (by lease expiry); ``wtok`` (hash) lease token -> work id;
  ``wcall`` (hash) call key -> work id; ``hb`` (hash) heartbeats.
* ``waiting`` / ``admitted`` (hashes) instances of a queue; ``qleases`` / ``qadm``
  (hashes) the recent lease and admission times of rate-limited queues;
  ``keys`` (hash) idempotency keys; ``debounce`` (hash) debounce windows, ``[name, key]``
  (JSON) -> ``[instance id, message id]``; ``seq`` ids; ``ver`` the transaction fence;
  ``tx:<id>`` short-lived markers of committed transactions (a retry after a lost
  reply finds them); ``wake`` the pub/sub channel that wakes other processes; ``layout``
  the layout version (a keyspace written before the scripts' indexes gets them at connect).

Durability is the server's: see ``docs/redis.md``. With ``appendonly yes`` and
``appendfsync always`` an acknowledged write survives a crash of the server or the
machine; with ``everysec`` up to about a second of acknowledged writes can be lost.
The provider reads the server's settings at connect and warns (or, with
``require_fsync_always=True``, refuses to start) when acknowledged writes could
be lost on restart.

Example::

    store = await RedisProvider.new("redis://127.0.0.1:6379/0", prefix="shop")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import orjson

from ..cancelling import raise_if_cancel_requested
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, InstanceAlreadyExistsError, StoreError
from ..history import HistoryEvent, decode_event, encode_event
from ..messages import ActivityWork, OrchestratorMessage, StartOrchestration, decode_message, encode_message
from ..queues import QueueOptions
from ..start_policy import IDEMPOTENCY_KEY_TTL_MS, IfExists
from .base import (
    MINUTE_MS, WAITING_OFFSET_MS, CallKey, FailureGroup, FetchResult, HeartbeatRecord, HeartbeatWrite,
    InstanceCount, InstancePage, InstanceQuery, InstanceRecord, OrchestrationItem, Provider, QueueDepths,
    QueuedMessage, QueueStats, ScheduleFire, ScheduleRecord, StartOutcome, StoreOverview, TurnCommit, LeaseOffer, LockOffer, WorkCompletion,
    WorkLease, check_debounced_start, check_query,
    decode_error_details, failure_type, make_overview, page_of, status_admits, timer_key,
)
from .queue_slots import QueueSlots, limited_queues
from .redis_scripts import (
    COMMIT, COMPLETE, FETCH_ORCH, FETCH_WORK, FIRST_EXTRA, FIXED, RENEW_ORCH, SEND, START, immediate_score, wq_member,
)

try:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError, TimeoutError as RedisTimeoutError, WatchError
except ModuleNotFoundError:  # the `redis` extra is not installed: importing works, connecting says so
    if TYPE_CHECKING:  # type checkers see redis as always there (it is wherever a store is made)
        raise
    aioredis = None

__all__ = ["RedisProvider"]

_log = logging.getLogger("duroxide.redis")
_T = TypeVar("_T")

_FIX_URL = "pass a URL like redis://127.0.0.1:6379/0 (rediss:// for TLS); for tests set DUROXIDE_REDIS_URL"
#: The layout the scripts read: 2 has the hlen/wq/wlease/wtok indexes (a keyspace without it is upgraded at connect).
_LAYOUT = "2"
#: Separates the parts of a call key in hash fields (ids hold no control characters).
_SEP = "\x1f"


def _require_redis() -> None:
    """Raise :class:`ConfigurationError` naming the ``redis`` extra unless the client is installed."""
    if aioredis is None:
        raise ConfigurationError("Redis stores need the redis package, which is not installed",
                                 fix="pip install 'duroxide[redis]' (or add the `redis` extra to your requirements)")


def _call_field(instance_id: str, execution_id: int, event_id: int) -> str:
    return f"{instance_id}{_SEP}{execution_id}{_SEP}{event_id}"


def _work_key(work: ActivityWork) -> str:
    return _call_field(work.instance_id, work.execution_id, work.event_id)


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


@dataclass
class _Writes:
    """The writes of one transaction, queued while its reads run and sent between MULTI and EXEC."""

    ops: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    #: Wake-ups to publish with the transaction: b"o" orchestrator work, b"w" activity work, b"i:<id>" ended.
    wakes: set[bytes] = field(default_factory=set)

    def __call__(self, command: str, *args: Any) -> None:
        self.ops.append((command, args))


@dataclass
class _Queued:
    id: int
    message: OrchestratorMessage
    raw: bytes
    visible_at: int
    dequeue_count: int
    lock_token: str | None

    def dump(self) -> bytes:
        # "i" (the instance) lets the fetch script group messages without decoding each message.
        return orjson.dumps({"i": self.message.instance_id, "m": self.raw.decode(), "v": self.visible_at,
                             "d": self.dequeue_count, "t": self.lock_token})

    @classmethod
    def load(cls, qid: int, raw: bytes) -> _Queued:
        body = orjson.loads(raw)
        m = body["m"].encode()
        return cls(qid, decode_message(m), m, int(body["v"]), int(body["d"]), body["t"])


@dataclass
class _Work:
    id: int
    work: ActivityWork
    raw: bytes
    visible_at: int
    dequeue_count: int = 0
    lock_token: str | None = None
    locked_until: int = 0
    cancelled: bool = False

    def dump(self) -> bytes:
        # "n", "p", "k" (name, priority, call key) let the scripts filter, order and complete the call
        # without decoding the message itself.
        return orjson.dumps({"w": self.raw.decode(), "v": self.visible_at, "d": self.dequeue_count,
                             "t": self.lock_token, "u": self.locked_until, "c": self.cancelled,
                             "n": self.work.name, "p": self.work.priority, "k": _work_key(self.work)})

    @classmethod
    def load(cls, wid: int, raw: bytes) -> _Work:
        body = orjson.loads(raw)
        w = body["w"].encode()
        return cls(wid, decode_message(w), w, int(body["v"]), int(body["d"]), body["t"], int(body["u"]),
                   bool(body["c"]))


def _dump_row(r: InstanceRecord) -> bytes:
    return orjson.dumps({
        "n": r.name, "v": r.version, "e": r.execution_id, "s": r.status, "o": r.output,
        "err": None if r.error is None else orjson.dumps(r.error.to_dict()).decode(),
        "cs": r.custom_status, "c": r.created_at_ms, "u": r.updated_at_ms, "p": r.parent_instance_id,
        "inc": r.incarnation})


def _load_row(instance_id: str, raw: bytes) -> InstanceRecord:
    b = orjson.loads(raw)
    return InstanceRecord(instance_id, b["n"], b["v"], int(b["e"]), b["s"], b["o"], decode_error_details(b["err"]),
                          b["cs"], int(b["c"]), int(b["u"]), b["p"], b["inc"])


@dataclass(frozen=True)
class _Placement:
    queue: str
    key: str | None
    priority: int
    order: int

    def dump(self) -> bytes:
        return orjson.dumps([self.queue, self.key, self.priority, self.order])

    @classmethod
    def load(cls, raw: bytes) -> _Placement:
        q, k, p, o = orjson.loads(raw)
        return cls(q, k, int(p), int(o))


class _Keys:
    """The names of the store's keys, all under one prefix."""

    def __init__(self, prefix: str) -> None:
        p = prefix + ":"
        self.prefix = prefix
        self.ver, self.seq, self.inst, self.q, self.qvis = p + "ver", p + "seq", p + "inst", p + "q", p + "qvis"
        self.tk, self.locks, self.work, self.wcall, self.hb = p + "tk", p + "locks", p + "work", p + "wcall", p + "hb"
        self.waiting, self.admitted, self.qleases, self.qadm = p + "waiting", p + "admitted", p + "qleases", p + "qadm"
        self.keys, self.wake, self.probe, self.sched = p + "keys", p + "wake", p + "probe", p + "sched"
        #: Debounce windows: orjson ``[name, key]`` -> ``[instance id, queued message id]``.
        self.debounce = p + "debounce"
        #: Lease token -> work id, for the completion script (entries are checked against the item).
        self.wtok = p + "wtok"
        #: The activity calls not done nor cancelled, by priority then id (what the work fetch reads).
        self.wq = p + "wq"
        #: Orchestrator messages of a lease, by its expiry (taken out of qvis while it holds; redis_scripts).
        self.qpark = p + "qpark"
        #: Instance id -> ``incarnation|execution|length`` of its current history (redis_scripts).
        self.hlen = p + "hlen"
        #: The leased activity calls by lease expiry (wq holds those to lease; redis_scripts).
        self.wlease = p + "wlease"
        #: The keyspace's layout version (_LAYOUT once the scripts' indexes were built; _upgrade_layout).
        self.layout = p + "layout"
        #: The keys every script receives (redis_scripts.FIXED), in that order.
        self.fixed = [getattr(self, name) for name in FIXED]
        #: Keys of one fixed type each: what connect checks (a keyspace written by something else).
        self.typed = {self.ver: "string", self.seq: "string", self.inst: "hash", self.q: "hash", self.qvis: "zset",
                      self.tk: "hash", self.locks: "hash", self.work: "hash", self.wcall: "hash", self.hb: "hash",
                      self.waiting: "hash", self.admitted: "hash", self.qleases: "hash", self.qadm: "hash",
                      self.keys: "hash", self.sched: "hash", self.debounce: "hash", self.wtok: "hash",
                      self.wq: "zset", self.qpark: "zset",
                      self.hlen: "hash", self.wlease: "zset", self.layout: "string"}

    def hist(self, instance_id: str, execution_id: int) -> str:
        return f"{self.prefix}:h:{execution_id}:{instance_id}"

    def execs(self, instance_id: str) -> str:
        return f"{self.prefix}:ex:{instance_id}"

    def qi(self, instance_id: str) -> str:
        return f"{self.prefix}:qi:{instance_id}"


def _closed_error() -> StoreError:
    return StoreError("RedisProvider is closed", fix="create a new one with RedisProvider.new(url)")


class _Retry:
    """One operation's retries on connection trouble: 10 ms doubling to 1 s, at most 40.

    Then :class:`StoreError` (the runtime retries whole turns); at once when the
    provider was closed meanwhile.
    """

    def __init__(self, provider: RedisProvider) -> None:
        self._provider = provider
        self._delay = 0.01
        self._failures = 0

    async def after(self, exc: Exception) -> None:
        """Wait before the next attempt after ``exc``, or raise when there is none."""
        if self._provider._closed:
            raise _closed_error() from exc
        raise_if_cancel_requested()  # redis-py's wait_for may have dropped it with the failed reply
        self._failures += 1
        if self._failures > 40:
            raise StoreError(f"Redis at {_redact(self._provider.url)} stayed unreachable: {exc}",
                             fix="check the Redis server and the network; the runtime keeps retrying") from exc
        _log.warning("Redis connection trouble (%s: %s); retrying", type(exc).__name__, exc)
        await asyncio.sleep(self._delay)
        self._delay = min(1.0, self._delay * 2)


class RedisProvider(Provider):
    """A durable provider on Redis; several runtime processes can share one server (and one prefix).

    Build it with :meth:`new`. ``clock`` is the time source of leases, visibility and
    timestamps (default: the system clock; nodes' clocks must agree, as with PostgreSQL).

    Example::

        store = await RedisProvider.new("redis://127.0.0.1:6379/0", require_fsync_always=True)
    """

    #: Seconds of silence on the pub/sub connection before the listener checks it with a ping of its own.
    listen_check = 30.0

    def __init__(self, url: str, prefix: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.url = url
        self.prefix = prefix
        self.clock = clock
        self._k = _Keys(prefix)
        self._r: Any = None
        #: One transaction at a time per process: tasks of one process never overtake each other's WATCH.
        self._tx_lock = asyncio.Lock()
        #: Cleared while a WATCH transaction of this process redoes its reads: this process's scripts
        #: then wait, so that a stream of them cannot starve it (scripts bump the watched version).
        self._scripts_may_run = asyncio.Event()
        self._scripts_may_run.set()
        self._scripts: dict[str, Any] = {}
        self._hubs: list[Any] = []
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._next_key_gc = 0.0

    @classmethod
    async def new(cls, url: str, *, prefix: str = "duroxide", clock: Clock = SYSTEM_CLOCK,
                  require_fsync_always: bool = False) -> RedisProvider:
        """Connect, check the server (commands, persistence, the keyspace) and listen for wake-ups.

        Raises :class:`StoreError` naming the fix for a malformed URL, an unreachable
        server, a server without ``EVAL``/``WATCH``/``PUBLISH``, keys under ``prefix``
        of the wrong type, or (``require_fsync_always``) a server without
        ``appendonly yes`` + ``appendfsync always``.
        """
        _require_redis()
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
            raise StoreError(f"not a Redis URL: {url!r}", fix=_FIX_URL)
        if not isinstance(prefix, str) or not prefix or any(c.isspace() or ord(c) < 32 for c in prefix):
            raise StoreError(f"bad key prefix {prefix!r}", fix="pass a non-empty prefix without spaces, e.g. 'myapp'")
        provider = cls(url, prefix, clock=clock)
        try:
            provider._r = aioredis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=5,
                                                   health_check_interval=30)
            await provider._r.ping()
        except (RedisError, OSError, ValueError) as exc:
            await provider._drop_client()
            raise StoreError(f"cannot connect to Redis at {_redact(url)}: {exc}",
                             fix="check that redis-server runs and the URL (host, port, password, db) is right; "
                                 "for tests set DUROXIDE_REDIS_URL") from exc
        try:
            await provider._check_server(require_fsync_always)
            await provider._upgrade_layout()
        except BaseException:
            await provider._drop_client()
            raise
        provider._listener = asyncio.create_task(provider._listen(), name="duroxide-redis-listener")
        return provider

    async def _upgrade_layout(self) -> None:
        """Build the indexes the scripts read (``hlen``, ``wq``, ``wlease``, ``wtok``) for a keyspace
        written before them; then mark it with ``layout`` = 2. Once per keyspace, in one transaction.

        Without them a fetch would report an existing history as empty (its messages then
        handled as if the instance had no past) and never lease the calls queued before.
        Messages and locks of the earlier layout need nothing: the scripts read both forms.
        """
        k = self._k

        async def body(pipe: Any, w: _Writes) -> None:
            if _text(await pipe.get(k.layout)) == _LAYOUT or not await pipe.exists(k.ver, k.inst):
                return  # upgraded, or nothing written yet (connecting never creates a store: the CLI relies on it)
            rows = await pipe.hgetall(k.inst)
            known = await pipe.hgetall(k.hlen)
            for raw_iid, raw in rows.items():
                if raw_iid in known:
                    continue
                row = orjson.loads(raw)
                iid = raw_iid.decode()
                length = await pipe.llen(k.hist(iid, int(row["e"])))
                w("hset", k.hlen, iid, f"{row.get('inc')}|{row['e']}|{length}")
            indexed = {*await pipe.zrange(k.wlease, 0, -1), *await pipe.zrange(k.wq, 0, -1)}
            for raw_wid, raw in (await pipe.hgetall(k.work)).items():
                item = _Work.load(int(raw_wid), raw)
                member = wq_member(item.id).encode()
                if "k" not in orjson.loads(raw):  # the fields the scripts filter and complete by ("n", "p", "k")
                    w("hset", k.work, item.id, item.dump())
                if item.cancelled or member in indexed:
                    continue
                if item.lock_token is not None:  # leased: back to the queue when the lease lapses
                    w("zadd", k.wlease, {member: item.locked_until})
                    w("hset", k.wtok, item.lock_token, item.id)
                else:
                    w("zadd", k.wq, {member: -item.work.priority})
            w("set", k.layout, _LAYOUT)

        await self._tx(body)

    async def _drop_client(self) -> None:
        if self._r is not None:
            with contextlib.suppress(Exception):
                await self._r.aclose()
            self._r = None

    async def _check_server(self, require_fsync_always: bool) -> None:
        """The commands this store uses, persistence, and the types of the keys under the prefix."""
        try:  # each command the store needs, used once harmlessly (renamed or missing ones fail here)
            async with self._r.pipeline(transaction=True) as pipe:
                await pipe.watch(self._k.probe)  # a key never written: other processes' writes cannot abort this
                pipe.multi()
                pipe.zcount(self._k.qvis, "-inf", "+inf")
                await pipe.execute()
            await self._r.publish(self._k.wake, b"")  # an empty wake-up: listeners ignore it
        except ResponseError as exc:
            raise StoreError(f"the Redis server at {_redact(self.url)} lacks WATCH, MULTI, EXEC, ZCOUNT or PUBLISH: "
                             f"{exc}", fix="use Redis 6.2 or newer (or a compatible server with WATCH/MULTI/EXEC, "
                                           "sorted sets and pub/sub), without those commands renamed") from exc
        await self._check_persistence(require_fsync_always)
        async with self._r.pipeline(transaction=False) as pipe:
            for key in self._k.typed:
                pipe.type(key)
            types = await pipe.execute()
        for (key, want), got in zip(self._k.typed.items(), types):
            got = _text(got)
            if got not in ("none", want):
                raise StoreError(f"Redis key {key!r} holds a {got}, not the {want} this store keeps there: "
                                 f"something else writes under the prefix {self.prefix!r}",
                                 fix="give this store a prefix of its own (RedisProvider.new(url, prefix=...)), "
                                     "or delete the foreign keys")

    async def _check_persistence(self, require_fsync_always: bool) -> None:
        try:
            conf = await self._r.config_get("append*")
        except ResponseError:  # CONFIG disabled (managed services): nothing to check
            conf = {}
        settings = {_text(k): _text(v) for k, v in conf.items()}
        aof, fsync = settings.get("appendonly"), settings.get("appendfsync")
        if aof == "yes" and fsync == "always":
            return
        if aof == "yes":
            loss = "about the last second of acknowledged starts and commits can be lost on power loss or an OS crash"
        else:
            loss = "acknowledged starts and commits since the last snapshot are lost when the server restarts"
        why = f"the Redis server runs with appendonly={aof or '?'} appendfsync={fsync or '?'}: {loss}"
        if require_fsync_always:
            raise StoreError(why, fix="set `appendonly yes` and `appendfsync always` on the server "
                                      "(CONFIG SET or redis.conf), or drop require_fsync_always=True")
        _log.warning("%s (see docs/redis.md; require_fsync_always=True refuses such a server)", why)

    # -- transactions ----------------------------------------------------------------

    async def _tx(self, body: Callable[[Any, _Writes], Awaitable[_T]]) -> _T:
        """Run ``body`` (reads on the watched pipeline, then writes queued in ``_Writes``) atomically.

        Redone from its reads when another writer committed in between (``WatchError``),
        and on a lost connection. Each transaction also writes a marker key of its own
        (expiring after ten minutes): when the connection drops after ``EXEC`` was sent,
        the retry finds the marker if the transaction committed, and returns what it
        computed instead of applying its writes twice (an event sent once, not twice).
        """
        if self._r is None:
            raise _closed_error()
        retry = _Retry(self)
        marker = f"{self.prefix}:tx:{uuid.uuid4().hex}"
        sent: list[_T] = []  # the result of an attempt whose EXEC was sent
        gated = False
        async with self._tx_lock:
            try:
                while True:
                    raise_if_cancel_requested()  # a redo must not outlive its caller (see cancelling.py)
                    try:
                        if sent and await self._r.exists(marker):
                            return sent[0]  # committed; only the reply was lost
                        sent.clear()
                        async with self._r.pipeline(transaction=True) as pipe:
                            await pipe.watch(self._k.ver)
                            writes = _Writes()
                            result = await body(pipe, writes)
                            if not writes.ops and not writes.wakes:
                                await pipe.unwatch()
                                return result
                            pipe.multi()
                            for command, args in writes.ops:
                                getattr(pipe, command)(*args)
                            pipe.incr(self._k.ver)
                            pipe.set(marker, b"1", ex=600)
                            for wake in writes.wakes:
                                pipe.publish(self._k.wake, wake)
                            sent.append(result)
                            await pipe.execute()
                            return result
                    except WatchError:
                        # Overtaken by another writer: redo from the reads. (redis-py also reports a
                        # connection lost during a watched EXEC as a WatchError: the marker check at
                        # the top of the loop tells a transaction that did commit.)
                        if not gated:  # hold this process's scripts back until this transaction is through
                            gated = True
                            self._scripts_may_run.clear()
                        continue
                    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                        await retry.after(exc)
            finally:
                if gated:
                    self._scripts_may_run.set()

    async def _eval(self, source: str, spec: Any, extra_keys: Sequence[str] = ()) -> Any:
        """Run one of ``redis_scripts``' scripts on ``spec`` (JSON) and return its decoded reply.

        One round trip (``EVALSHA``; redis-py loads the script when the server lacks it, e.g.
        after a restart). The script gets a fresh marker key: a retry after a lost reply sends
        the same marker and gets back the reply the applied script stored under it, so a
        script is never applied twice.
        """
        if self._r is None:
            raise _closed_error()
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._r.register_script(source)
        if not self._scripts_may_run.is_set():
            await self._scripts_may_run.wait()
        keys = [f"{self.prefix}:tx:{uuid.uuid4().hex}", *self._k.fixed, *extra_keys]
        args = [self._k.wake, orjson.dumps(spec)]
        retry = _Retry(self)
        while True:
            try:
                return orjson.loads(await script(keys=keys, args=args))
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await retry.after(exc)

    async def _read(self, body: Callable[[Any], Awaitable[_T]]) -> _T:
        """A read-only operation on the client itself (no WATCH, no lock), retried on a lost connection.

        Each command reads atomically; an operation of several reads (a row, then its history)
        is not one snapshot, and needs none: what it reads only grows or is replaced whole.
        """
        if self._r is None:
            raise _closed_error()
        retry = _Retry(self)
        while True:
            try:
                return await body(self._r)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await retry.after(exc)

    async def _ids(self, n: int) -> int:
        """Reserve ``n`` ids (ascending with arrival); the first is returned."""
        if n <= 0:
            return 0
        last = int(await self._tx(lambda pipe, _w: pipe.incrby(self._k.seq, n)))
        return last - n + 1

    # -- shared pieces of transactions ---------------------------------------------

    def _new_row(self, start: StartOrchestration, incarnation: str) -> InstanceRecord:
        now = self.clock.now_ms()
        return InstanceRecord(start.instance_id, start.name, start.version, start.execution_id, "Pending",
                              created_at_ms=now, updated_at_ms=now, parent_instance_id=start.parent_instance_id,
                              incarnation=incarnation)

    def _enqueue(self, w: _Writes, qid: int, message: OrchestratorMessage, visible_at: int | None) -> None:
        raw = encode_message(message)
        vis = visible_at if visible_at is not None else 0
        w("hset", self._k.q, qid, _Queued(qid, message, raw, vis, 0, None).dump())
        w("zadd", self._k.qvis, {str(qid): vis if visible_at is not None else immediate_score(qid)})
        w("sadd", self._k.qi(message.instance_id), qid)
        key = timer_key(message)
        if key is not None:
            w("hset", self._k.tk, _call_field(key.instance_id, key.execution_id, key.event_id), qid)
        w.wakes.add(b"o")

    @staticmethod
    def _entry(message: OrchestratorMessage, visible_at: int | None) -> list[str]:
        """A message as the scripts enqueue it: [stored value, visible-at score, timer field or '']."""
        raw = encode_message(message)
        vis = visible_at if visible_at is not None else 0
        key = timer_key(message)
        tk = "" if key is None else _call_field(key.instance_id, key.execution_id, key.event_id)
        # no score: the script scores it by its id (immediate_score)
        return [_Queued(0, message, raw, vis, 0, None).dump().decode(), "" if visible_at is None else str(vis), tk]

    def _create(self, w: _Writes, start: StartOrchestration, incarnation: str, qid: int, order: int) -> None:
        """The row and the start of a new instance; one naming a queue waits for its admission."""
        w("hset", self._k.inst, start.instance_id, _dump_row(self._new_row(start, incarnation)))
        if start.queue is None:
            self._enqueue(w, qid, start, None)
            return
        place = _Placement(start.queue, start.concurrency_key, start.priority or 0, order)
        w("hset", self._k.waiting, start.instance_id, place.dump())
        self._enqueue(w, qid, start, self.clock.now_ms() + WAITING_OFFSET_MS)

    async def _tree(self, pipe: Any, instance_id: str) -> list[str]:
        """An instance and its descendants (parent chain), the instance first."""
        rows = await pipe.hgetall(self._k.inst)
        children: dict[str, list[str]] = {}
        for iid, raw in rows.items():
            parent = orjson.loads(raw)["p"]
            if parent is not None:
                children.setdefault(parent, []).append(iid.decode())
        doomed, todo = [], [instance_id]
        while todo:
            iid = todo.pop(0)
            doomed.append(iid)
            todo.extend(children.get(iid, []))
        return doomed

    async def _delete_tree(self, pipe: Any, w: _Writes, instance_id: str) -> list[str]:
        doomed = await self._tree(pipe, instance_id)
        k = self._k
        work = await pipe.hgetall(k.work)
        hb = await pipe.hkeys(k.hb)
        for iid in doomed:
            qids = await pipe.smembers(k.qi(iid))
            for qid in qids:
                w("hdel", k.q, qid)
                _zdel(w, k.qvis, qid)
                w("zrem", k.qpark, qid)
            timers = [f for f in await pipe.hkeys(k.tk) if f.decode().split(_SEP)[0] == iid]
            if timers:
                w("hdel", k.tk, *timers)
            for ex in await pipe.smembers(k.execs(iid)):
                w("delete", k.hist(iid, int(ex)))
            w("delete", k.qi(iid), k.execs(iid))
            for name in (k.inst, k.locks, k.waiting, k.admitted, k.hlen):
                w("hdel", name, iid)
        gone = set(doomed)
        for wid, raw in work.items():
            item = _Work.load(int(wid), raw)
            if item.work.instance_id in gone:
                w("hdel", k.work, wid)
                _zdel(w, k.wq, wq_member(int(wid)))
                _zdel(w, k.wlease, wq_member(int(wid)))
                w("hdel", k.wcall, _work_key(item.work))
                if item.lock_token is not None:
                    w("hdel", k.wtok, item.lock_token)
        beats = [f for f in hb if f.decode().split(_SEP)[0] in gone]
        if beats:
            w("hdel", k.hb, *beats)
        # Waiters on a deleted instance (in any process) learn it is gone.
        w.wakes.update(b"i:" + iid.encode() for iid in doomed)
        return doomed

    async def _row(self, pipe: Any, instance_id: str) -> InstanceRecord | None:
        raw = await pipe.hget(self._k.inst, instance_id)
        return None if raw is None else _load_row(instance_id, raw)

    # -- client side -------------------------------------------------------------

    async def create_instance(self, start: StartOrchestration, *,
                              lock: LockOffer | None = None) -> OrchestrationItem | None:
        outcome = await self.start_instance(start)  # a lock offer is declined
        if not outcome.created:
            raise InstanceAlreadyExistsError(start.instance_id)
        return None

    async def start_instance(self, start: StartOrchestration, *, if_exists: IfExists = IfExists.FAIL,
                             replace_if_status_in: Collection[str] = (), idempotency_key: str | None = None,
                             key_ttl_ms: int = IDEMPOTENCY_KEY_TTL_MS,
                             messages: Sequence[tuple[OrchestratorMessage, int | None]] = ()) -> StartOutcome:
        incarnation = uuid.uuid4().hex
        if idempotency_key is None and start.queue is None and if_exists is not IfExists.REPLACE:
            # The common start: one script (the row, the start message and ``messages``).
            extra: list[str] = [self._k.qi(start.instance_id)]
            more = []
            for message, visible_at in messages:
                extra.append(self._k.qi(message.instance_id))
                more.append([FIRST_EXTRA + len(extra) - 1, self._entry(message, visible_at)])
            reply = await self._eval(START, {
                "i": start.instance_id, "inc": incarnation,
                "row": _dump_row(self._new_row(start, incarnation)).decode(), "e": self._entry(start, None),
                "more": more}, extra)
            if reply[0] == "c":
                return StartOutcome(start.instance_id, created=True)
            existing = _load_row(start.instance_id, reply[1].encode())
            return StartOutcome(start.instance_id, created=False, existing=existing)
        first = await self._ids(len(messages) + 2)
        if idempotency_key is not None:
            await self._collect_keys(self.clock.now_ms() - key_ttl_ms)

        async def body(pipe: Any, w: _Writes) -> StartOutcome:
            now = self.clock.now_ms()
            k = self._k
            iid = start.instance_id
            if idempotency_key is not None:
                raw = await pipe.hget(k.keys, idempotency_key)
                if raw is not None:
                    rec_id, at = orjson.loads(raw)
                    if at >= now - key_ttl_ms:
                        return StartOutcome(rec_id, created=False, by_key=True)
            record = await self._row(pipe, iid)
            replaced: list[str] = []
            if record is not None:
                if record.incarnation == incarnation:  # our own commit, whose reply was lost
                    return StartOutcome(iid, created=True)
                if if_exists is not IfExists.REPLACE or record.status not in replace_if_status_in:
                    if if_exists is IfExists.RETURN_EXISTING and idempotency_key is not None:
                        w("hset", k.keys, idempotency_key, orjson.dumps([iid, now]))
                    return StartOutcome(iid, created=False, existing=record)
                replaced = await self._delete_tree(pipe, w, iid)
            self._create(w, start, incarnation, first, first + 1)
            for i, (message, visible_at) in enumerate(messages):
                self._enqueue(w, first + 2 + i, message, visible_at)
            if idempotency_key is not None:
                w("hset", k.keys, idempotency_key, orjson.dumps([iid, now]))
            return StartOutcome(iid, created=True, replaced=tuple(replaced))

        return await self._tx(body)

    async def debounce_start(self, start: StartOrchestration, *, debounce_key: str, quiet_ms: int) -> StartOutcome:
        check_debounced_start(start, quiet_ms)
        incarnation = uuid.uuid4().hex
        qid = await self._ids(1)
        window_field = orjson.dumps([start.name, debounce_key])

        async def body(pipe: Any, w: _Writes) -> StartOutcome:
            # Watched like every write: a concurrent start of the same key (any process) that
            # commits first makes this one redo its reads, and find its window.
            k = self._k
            due = self.clock.now_ms() + quiet_ms
            window = await pipe.hget(k.debounce, window_field)
            if window is not None:
                held_id, held_qid = orjson.loads(window)
                raw = await pipe.hget(k.q, held_qid)
                held = None if raw is None else _Queued.load(held_qid, raw)
                if held is not None and held.dequeue_count == 0 and held.message.instance_id == held_id:
                    message = dataclasses.replace(start, instance_id=held_id)  # the last input wins
                    w("hset", k.q, held_qid, _Queued(held_qid, message, encode_message(message), due, 0,
                                                     held.lock_token).dump())
                    w("zadd", k.qvis, {str(held_qid): due})
                    w.wakes.add(b"o")  # dispatchers re-read the next due time
                    return StartOutcome(held_id, created=False, debounced=True)
            record = await self._row(pipe, start.instance_id)
            if record is not None:
                if record.incarnation == incarnation:  # our own commit, whose reply was lost
                    return StartOutcome(start.instance_id, created=True)
                return StartOutcome(start.instance_id, created=False, existing=record)
            w("hset", k.inst, start.instance_id, _dump_row(self._new_row(start, incarnation)))
            self._enqueue(w, qid, start, due)
            w("hset", k.debounce, window_field, orjson.dumps([start.instance_id, qid]))
            return StartOutcome(start.instance_id, created=True)

        return await self._tx(body)

    async def _collect_keys(self, expired_before: int) -> None:
        """Forget expired idempotency keys, at most once a minute (a scan of every key)."""
        if self.clock.monotonic() < self._next_key_gc:
            return
        self._next_key_gc = self.clock.monotonic() + 60.0

        async def body(pipe: Any, w: _Writes) -> None:
            for key, raw in (await pipe.hgetall(self._k.keys)).items():
                if orjson.loads(raw)[1] < expired_before:
                    w("hdel", self._k.keys, key)

        await self._tx(body)

    async def send(self, message: OrchestratorMessage, *,
                   only_if_status_in: Collection[str] | None = None,
                   set_status: str | None = None) -> InstanceRecord | None:
        spec: dict[str, Any] = {"i": message.instance_id, "now": str(self.clock.now_ms()),
                                "e": self._entry(message, None)}
        if only_if_status_in is not None:
            spec["s"] = list(only_if_status_in)
        if set_status is not None:
            spec["set"] = set_status
        (raw,) = await self._eval(SEND, spec, [self._k.qi(message.instance_id)])
        return None if not raw else _load_row(message.instance_id, raw.encode())

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self._read(lambda pipe: self._row(pipe, instance_id))

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        async def body(pipe: Any) -> list[HistoryEvent]:
            ex = execution_id
            if ex is None:
                record = await self._row(pipe, instance_id)
                if record is None:
                    return []
                ex = record.execution_id
            raws = await pipe.lrange(self._k.hist(instance_id, ex), 0, -1)
            return [decode_event(r, instance_id=instance_id) for r in raws]

        return await self._read(body)

    async def list_executions(self, instance_id: str) -> list[int]:
        async def body(pipe: Any) -> list[int]:
            return sorted(int(x) for x in await pipe.smembers(self._k.execs(instance_id)))

        return await self._read(body)

    async def _all_rows(self) -> list[InstanceRecord]:
        async def body(pipe: Any) -> list[InstanceRecord]:
            rows = await pipe.hgetall(self._k.inst)
            return [_load_row(iid.decode(), raw) for iid, raw in rows.items()]

        return await self._read(body)

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceRecord]:
        rows = [r for r in await self._all_rows()
                if (status is None or r.status == status) and (name is None or r.name == name)]
        rows.sort(key=lambda r: (r.created_at_ms, r.instance_id), reverse=True)
        return rows[:limit]

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        import heapq

        after = check_query(query)
        rows = (r for r in await self._all_rows()
                if (query.status is None or r.status == query.status)
                and (query.name is None or r.name == query.name)
                and (query.version is None or r.version == query.version)
                and (query.q is None or query.q in r.instance_id)
                and (after is None or (r.created_at_ms, r.instance_id) < after))
        return page_of(heapq.nlargest(query.limit + 1, rows, key=lambda r: (r.created_at_ms, r.instance_id)),
                       query.limit)

    async def overview(self, since_ms: int, *, finished_statuses: Collection[str] = ("Completed", "Failed"),
                       failed_status: str = "Failed",
                       active_statuses: Collection[str] = ("Pending", "Running")) -> StoreOverview:
        from collections import Counter

        all_rows = await self._all_rows()
        counts = Counter((r.status, r.name, r.version) for r in all_rows)
        recent = [r for r in all_rows if r.updated_at_ms >= since_ms]
        per_minute = Counter((r.updated_at_ms // MINUTE_MS * MINUTE_MS, r.status)
                             for r in recent if r.status in finished_statuses)
        groups: dict[str, list[InstanceRecord]] = {}
        for r in recent:
            if r.status == failed_status:
                groups.setdefault(failure_type(r.error), []).append(r)
        failures = []
        for error_type, rows in groups.items():
            last = max(rows, key=lambda r: (r.updated_at_ms, r.instance_id))
            failures.append(FailureGroup(error_type, len(rows), last.instance_id,
                                         last.error.message if last.error else "", last.updated_at_ms))
        return make_overview([InstanceCount(s, n, v, c) for (s, n, v), c in counts.items()],
                             [(m, s, c) for (m, s), c in per_minute.items()], failures,
                             await self.queue_depths(active_statuses=active_statuses))

    async def purge_instance(self, instance_id: str, *,
                             only_if_status_in: Collection[str] | None = None) -> list[str] | None:
        async def body(pipe: Any, w: _Writes) -> list[str] | None:
            record = await self._row(pipe, instance_id)
            if record is None:
                return []
            if not status_admits(only_if_status_in, record.status):
                return None
            return await self._delete_tree(pipe, w, instance_id)

        return await self._tx(body)

    # -- orchestration dispatcher --------------------------------------------------

    async def fetch_orchestration_items(self, max_items: int, lock_timeout: float, *,
                                        queues: Mapping[str, QueueOptions] | None = None,
                                        live_statuses: Collection[str] = ()) -> FetchResult:
        k = self._k
        now = self.clock.now_ms()
        n = max(0, max_items)
        reply = await self._eval(FETCH_ORCH, {
            "now": str(now), "until": str(now + int(lock_timeout * 1000)), "max": n, "scan": max(1000, 20 * n),
            "woff": str(WAITING_OFFSET_MS), "tok": uuid.uuid4().hex, "queues": bool(queues)})
        if reply != ["slow"]:  # else waiting instances must be admitted first: the transaction below does that
            return self._fetched(reply)

        async def body(pipe: Any, w: _Writes) -> FetchResult:
            now = self.clock.now_ms()
            waiting = {iid.decode(): _Placement.load(raw) for iid, raw in (await pipe.hgetall(k.waiting)).items()}
            freed: dict[int, _Queued] = {}
            if queues and waiting:
                freed = await self._admit(pipe, w, now, queues, live_statuses, waiting)
            # Messages parked by a lease that lapsed go back to qvis (this path does not park what it leases).
            lapsed = [int(x) for x in await pipe.zrangebyscore(k.qpark, "-inf", now)]
            for qid, raw in zip(lapsed, await pipe.hmget(k.q, lapsed) if lapsed else []):
                w("zrem", k.qpark, qid)
                if raw is not None:
                    v = _Queued.load(qid, raw).visible_at
                    w("zadd", k.qvis, {str(qid): v if v > 0 else immediate_score(qid)})
            # The admitted starts' new visibility is queued in `w`, not yet in the sorted set: merged here.
            due_ids = sorted({int(x) for x in await pipe.zrangebyscore(k.qvis, "-inf", now)} | set(lapsed)
                             | {qid for qid, q in freed.items() if q.visible_at <= now})
            later = await pipe.zrangebyscore(k.qvis, f"({now}", f"({WAITING_OFFSET_MS}", start=0, num=200,
                                             withscores=True)
            raws = await pipe.hmget(k.q, due_ids) if due_ids else []
            locks = {iid.decode(): raw.decode().split("|") for iid, raw in (await pipe.hgetall(k.locks)).items()}
            queued = [freed.get(qid) or _Queued.load(qid, raw) for qid, raw in zip(due_ids, raws) if raw is not None]
            next_due: int | None = None
            if later:
                later_raws = await pipe.hmget(k.q, [m for m, _ in later])
                for (_, score), raw in zip(later, later_raws):
                    if raw is not None and _Queued.load(0, raw).message.instance_id not in waiting:
                        next_due = int(score)
                        break
            chosen: dict[str, list[_Queued]] = {}
            for q in queued:
                iid = q.message.instance_id
                if iid in waiting:
                    continue
                lock = locks.get(iid)
                if lock is not None and int(lock[1]) > now and iid not in chosen:
                    continue
                if iid not in chosen:
                    if len(chosen) >= max_items:
                        continue
                    chosen[iid] = []
                chosen[iid].append(q)
            items = []
            until = now + int(lock_timeout * 1000)
            for iid, msgs in chosen.items():
                token = uuid.uuid4().hex
                w("hset", k.locks, iid, f"{token}|{until}")
                for q in msgs:
                    q.dequeue_count += 1
                    q.lock_token = token
                    w("hset", k.q, q.id, q.dump())
                record = await self._row(pipe, iid)
                hlen = int(await pipe.llen(k.hist(iid, record.execution_id))) if record else 0
                items.append(OrchestrationItem(iid, token, [QueuedMessage(q.id, q.message) for q in msgs], record,
                                               hlen, max(q.dequeue_count for q in msgs)))
            return FetchResult(items, next_due)

        return await self._tx(body)

    @staticmethod
    def _fetched(reply: list[Any]) -> FetchResult:
        """The fetch script's reply as a ``FetchResult``."""
        raw_items, next_due = reply
        items = [OrchestrationItem(iid, token, [QueuedMessage(int(qid), decode_message(m)) for qid, m in _seq(msgs)],
                                   _load_row(iid, row.encode()) if row else None, int(hlen), int(dequeues))
                 for iid, token, msgs, row, dequeues, hlen in _seq(raw_items)]
        return FetchResult(items, None if next_due is False else int(next_due))

    async def _admit(self, pipe: Any, w: _Writes, now: int, queues: Mapping[str, QueueOptions],
                     live_statuses: Collection[str], waiting: dict[str, _Placement]) -> dict[int, _Queued]:
        """Admit the waiting instances of each queue of ``queues`` that its limits let start now.

        Returns the messages made visible (as they will be once written), by id.
        """
        freed: dict[int, _Queued] = {}
        k = self._k
        admitted = {iid.decode(): _Placement.load(raw) for iid, raw in (await pipe.hgetall(k.admitted)).items()}
        for iid, p in list(admitted.items()):
            if p.queue in queues:
                record = await self._row(pipe, iid)
                if record is None or record.status not in live_statuses:
                    del admitted[iid]  # ended: its slot is free for good
                    w("hdel", k.admitted, iid)
        for queue, options in queues.items():
            limits = {queue: options} if options.limited else {}
            running: dict[str | None, int] = {}
            for p in admitted.values():
                if p.queue == queue:
                    running[p.key] = running.get(p.key, 0) + 1
            started = {}
            times: list[int] = []
            if options.rate_limit is not None:
                since = now - options.rate_limit.per_ms
                raw = await pipe.hget(k.qadm, queue)
                times = [t for t in (orjson.loads(raw) if raw else []) if t > since]
                started[queue] = len(times)
            slots = QueueSlots(limits, [(queue, key, n) for key, n in running.items()], started)
            order = sorted((-p.priority, p.order, iid) for iid, p in waiting.items() if p.queue == queue)
            for _, _, iid in order:
                place = waiting[iid]
                if not slots.admits(queue, place.key):
                    continue
                if slots.take(queue, place.key):
                    times.append(now)
                admitted[iid] = waiting.pop(iid)
                w("hdel", k.waiting, iid)
                w("hset", k.admitted, iid, place.dump())
                for qid in await pipe.smembers(k.qi(iid)):
                    raw_q = await pipe.hget(k.q, qid)
                    if raw_q is None:
                        continue
                    q = _Queued.load(int(qid), raw_q)
                    if q.visible_at >= WAITING_OFFSET_MS:
                        q.visible_at -= WAITING_OFFSET_MS
                        w("hset", k.q, q.id, q.dump())
                        w("zadd", k.qvis, {str(q.id): q.visible_at})
                        freed[q.id] = q
            if options.rate_limit is not None:
                w("hset", k.qadm, queue, orjson.dumps(times))
        return freed

    async def read_histories(self, keys: Sequence[tuple[str, int]]) -> dict[str, list[HistoryEvent] | Exception]:
        async def body(pipe: Any) -> dict[str, list[HistoryEvent] | Exception]:
            out: dict[str, list[HistoryEvent] | Exception] = {}
            for iid, ex in keys:
                raws = await pipe.lrange(self._k.hist(iid, ex), 0, -1)
                try:
                    out[iid] = [decode_event(r, instance_id=iid) for r in raws]
                except Exception as exc:  # noqa: BLE001 - a corrupt history is reported per instance
                    out[iid] = exc
            return out

        return await self._read(body)

    async def commit_turns(self, commits: Sequence[TurnCommit], *, lease: LeaseOffer | None = None) -> list[bool]:
        # One script for the batch; each turn is fenced by its own lock and applied whole or not at
        # all, the batch is not one unit. Batches are cut so that one script's work stays bounded.
        results: list[bool] = []
        for start in range(0, len(commits), _COMMIT_BATCH):
            results.extend(await self._commit_batch(commits[start:start + _COMMIT_BATCH]))
        return results

    async def _commit_batch(self, commits: Sequence[TurnCommit]) -> list[bool]:
        keys: dict[str, int] = {}

        def key(name: str) -> int:  # the KEYS index of a per-operation key
            return keys.setdefault(name, FIRST_EXTRA + len(keys))

        k = self._k
        now = self.clock.now_ms()
        turns = []
        for c in commits:
            cancelled = {_call_field(x.instance_id, x.execution_id, x.event_id) for x in c.cancel_activities}
            turn: dict[str, Any] = {
                "i": c.instance_id, "t": c.lock_token, "qi": key(k.qi(c.instance_id)),
                "h": key(k.hist(c.instance_id, c.execution_id)), "x": key(k.execs(c.instance_id)),
                "ex": c.execution_id, "c": list(c.consumed), "ev": [encode_event(e).decode() for e in c.new_events],
                # scheduled and cancelled by one turn: never queued, never leased
                "a": [[_Work(0, work, raw, now).dump().decode(), _work_key(work), work.priority]
                      for work in c.activities if _work_key(work) not in cancelled
                      for raw in (encode_message(work),)],
                "cx": sorted(cancelled),
                "dt": [[_call_field(t.instance_id, t.execution_id, t.event_id), key(k.qi(t.instance_id))]
                       for t in c.delete_timers],
                "ch": [{"i": ch.start.instance_id, "qi": key(k.qi(ch.start.instance_id)),
                        "row": _dump_row(self._new_row(ch.start, uuid.uuid4().hex)).decode(),
                        "e": self._entry(ch.start, None),
                        **({} if ch.if_taken is None else {"tq": key(k.qi(ch.if_taken.instance_id)),
                                                           "it": self._entry(ch.if_taken, None)})}
                       for ch in c.children],
                "m": [[key(k.qi(msg.instance_id)), self._entry(msg, visible_at)] for msg, visible_at in c.messages],
                "fin": c.ends_instance}
            if c.update is not None:
                u = c.update
                turn["u"] = {"n": u.name, "v": u.version, "e": u.execution_id, "s": u.status, "o": u.output,
                             "err": None if u.error is None else orjson.dumps(u.error.to_dict()).decode(),
                             **({"cs": u.custom_status} if u.custom_status_changed else {})}
            turns.append(turn)
        # The marker, the fixed keys, then `keys` in index order (dicts keep insertion order).
        reply = await self._eval(COMMIT, {"now": str(now), "turns": turns}, list(keys))
        return [bool(x) for x in _seq(reply)]

    async def renew_orchestration_items(self, locks: Sequence[tuple[str, str]], lock_timeout: float) -> list[bool]:
        if not locks:
            return []
        until = self.clock.now_ms() + int(lock_timeout * 1000)
        reply = await self._eval(RENEW_ORCH, {"until": str(until), "locks": [list(x) for x in locks]})
        return [bool(x) for x in _seq(reply)]

    async def abandon_orchestration_item(self, instance_id: str, lock_token: str, delay: float) -> None:
        k = self._k

        async def body(pipe: Any, w: _Writes) -> None:
            lock = await pipe.hget(k.locks, instance_id)
            if lock is None or lock.decode().split("|")[0] != lock_token:
                return
            visible = self.clock.now_ms() + int(delay * 1000)
            for qid in await pipe.smembers(k.qi(instance_id)):
                raw = await pipe.hget(k.q, qid)
                if raw is None:
                    continue
                q = _Queued.load(int(qid), raw)
                if q.lock_token == lock_token:
                    q.lock_token = None
                    q.visible_at = max(q.visible_at, visible)
                    w("hset", k.q, q.id, q.dump())
                    w("zrem", k.qpark, q.id)
                    w("zadd", k.qvis, {str(q.id): q.visible_at})
            w("hdel", k.locks, instance_id)
            w.wakes.add(b"o")

        await self._tx(body)

    # -- activity workers ----------------------------------------------------------

    async def _all_work(self, pipe: Any) -> list[_Work]:
        return [_Work.load(int(wid), raw) for wid, raw in (await pipe.hgetall(self._k.work)).items()]

    async def fetch_work_items(self, max_items: int, lock_timeout: float, *,
                               known_names: Collection[str] | None = None,
                               foreign_delay: float = 1.0,
                               queues: Mapping[str, QueueOptions] | None = None) -> list[WorkLease]:
        k = self._k
        limited = limited_queues(queues)
        if not limited:  # one script; queues with limits count their slots in the transaction below
            now = self.clock.now_ms()
            n = max(0, max_items)
            spec: dict[str, Any] = {"now": str(now), "until": str(now + int(lock_timeout * 1000)),
                                    "fb": str(now - int(foreign_delay * 1000)), "max": n, "scan": max(1000, 20 * n),
                                    "tok": uuid.uuid4().hex}
            if known_names is not None:
                spec["names"] = list(known_names)
            return [WorkLease(token, decode_message(raw), int(dequeues))
                    for token, raw, dequeues in _seq(await self._eval(FETCH_WORK, spec))]

        async def body(pipe: Any, w: _Writes) -> list[WorkLease]:
            now = self.clock.now_ms()
            foreign_before = now - int(foreign_delay * 1000)
            leases: list[WorkLease] = []
            items = await self._all_work(pipe)
            slots, times = (await self._slots(pipe, items, now, limited)) if limited else (None, {})
            for item in sorted(items, key=lambda x: (-x.work.priority, x.id)):
                if len(leases) >= max_items:
                    break
                if item.visible_at > now or item.cancelled or (item.lock_token is not None and item.locked_until > now):
                    continue
                if known_names is not None and item.work.name not in known_names and item.visible_at > foreign_before:
                    continue
                if slots is not None:
                    if not slots.admits(item.work.queue, item.work.concurrency_key):
                        continue
                    if slots.take(item.work.queue, item.work.concurrency_key):
                        times.setdefault(item.work.queue, []).append(now)
                if item.lock_token is not None:
                    w("hdel", k.wtok, item.lock_token)
                item.lock_token = uuid.uuid4().hex
                item.locked_until = now + int(lock_timeout * 1000)
                item.dequeue_count += 1
                w("hset", k.work, item.id, item.dump())
                w("hset", k.wtok, item.lock_token, item.id)
                w("zrem", k.wq, wq_member(item.id))
                w("zadd", k.wlease, {wq_member(item.id): item.locked_until})
                leases.append(WorkLease(item.lock_token, item.work, item.dequeue_count))
            for queue, kept in times.items():
                w("hset", k.qleases, queue, orjson.dumps(kept))
            return leases

        return await self._tx(body)

    async def _slots(self, pipe: Any, items: list[_Work], now: int,
                     limited: Mapping[str, QueueOptions]) -> tuple[QueueSlots, dict[str, list[int]]]:
        running: dict[tuple[str, str | None], int] = {}
        for item in items:
            if item.work.queue in limited and item.lock_token is not None and item.locked_until > now:
                key = (item.work.queue, item.work.concurrency_key)
                running[key] = running.get(key, 0) + 1
        started = {}
        times: dict[str, list[int]] = {}
        for queue, options in limited.items():
            if options.rate_limit is not None:
                since = now - options.rate_limit.per_ms
                raw = await pipe.hget(self._k.qleases, queue)
                times[queue] = [t for t in (orjson.loads(raw) if raw else []) if t > since]
                started[queue] = len(times[queue])
        return QueueSlots(limited, [(q, key, n) for (q, key), n in running.items()], started), times

    async def _leased(self, pipe: Any, lock_token: str) -> _Work | None:
        """The work item ``lock_token`` leases now, through the ``wtok`` index (two reads, whatever the
        number of calls in flight: a short transaction that other processes' writes rarely overtake)."""
        wid = await pipe.hget(self._k.wtok, lock_token)
        if wid is None:
            return None
        raw = await pipe.hget(self._k.work, wid)
        if raw is None:
            return None
        item = _Work.load(int(wid), raw)
        return item if item.lock_token == lock_token else None

    async def _held(self, pipe: Any, lock_token: str, only_if_status_in: Collection[str] | None,
                    only_if_execution: int | None) -> _Work | None:
        """The work item ``lock_token`` leases, if the lease and the guards hold."""
        item = await self._leased(pipe, lock_token)
        if item is None:
            return None
        record = await self._row(pipe, item.work.instance_id)
        if (item.cancelled or record is None or not status_admits(only_if_status_in, record.status)
                or (only_if_execution is not None and record.execution_id != only_if_execution)):
            return None
        return item

    async def complete_work_items(self, completions: Sequence[WorkCompletion], *,
                                  only_if_status_in: Collection[str] | None = None,
                                  lock: LockOffer | None = None) -> list[OrchestrationItem]:
        # A lease gone (purged, or taken over by another worker) makes its result stale: the script
        # drops it. The lease token finds the item through the `wtok` index. A lock offer is
        # declined: the dispatcher fetches the instances as usual.
        if not completions:
            return []
        keys: dict[str, int] = {}
        done = []
        for c in completions:
            b = c.forget_heartbeat
            qi = keys.setdefault(self._k.qi(c.result.instance_id), FIRST_EXTRA + len(keys))
            done.append([c.lock_token, "" if b is None else _call_field(b.instance_id, b.execution_id, b.event_id),
                         self._entry(c.result, None), qi, c.result.instance_id])
        spec: dict[str, Any] = {"done": done}
        if only_if_status_in is not None:
            spec["s"] = list(only_if_status_in)
        await self._eval(COMPLETE, spec, list(keys))
        return []

    async def abandon_work_item(self, lock_token: str, delay: float) -> None:
        async def body(pipe: Any, w: _Writes) -> None:
            item = await self._leased(pipe, lock_token)
            if item is None:
                return
            w("hdel", self._k.wtok, lock_token)
            item.lock_token = None
            item.locked_until = 0
            item.visible_at = self.clock.now_ms() + int(delay * 1000)
            w("hset", self._k.work, item.id, item.dump())
            if not item.cancelled:  # to lease again (the scripts' work index)
                w("zrem", self._k.wlease, wq_member(item.id))
                w("zadd", self._k.wq, {wq_member(item.id): -item.work.priority})
            w.wakes.add(b"w")

        await self._tx(body)

    async def renew_work_item(self, lock_token: str, lock_timeout: float, *,
                              only_if_status_in: Collection[str] | None = None,
                              only_if_execution: int | None = None) -> bool:
        async def body(pipe: Any, w: _Writes) -> bool:
            item = await self._held(pipe, lock_token, only_if_status_in, only_if_execution)
            if item is None:
                return False
            item.locked_until = self.clock.now_ms() + int(lock_timeout * 1000)
            w("hset", self._k.work, item.id, item.dump())
            w("zadd", self._k.wlease, {wq_member(item.id): item.locked_until}, False, True)  # XX: only if indexed
            return True

        return await self._tx(body)

    async def record_heartbeats(self, beats: Sequence[HeartbeatWrite], *,
                                only_if_status_in: Collection[str] | None = None) -> list[bool]:
        async def body(pipe: Any, w: _Writes) -> list[bool]:
            now = self.clock.now_ms()
            recorded: list[bool] = []
            for beat in beats:
                item = await self._held(pipe, beat.lock_token, only_if_status_in, beat.call.execution_id)
                if item is None or _work_key(item.work) != _call_field(beat.call.instance_id, beat.call.execution_id,
                                                                       beat.event_id):
                    recorded.append(False)
                    continue
                f = _call_field(beat.call.instance_id, beat.call.execution_id, beat.call.event_id)
                old = await pipe.hget(self._k.hb, f)
                details = beat.details if beat.details is not None else (orjson.loads(old)[0] if old else None)
                w("hset", self._k.hb, f, orjson.dumps([details, beat.event_id, now]))
                if beat.lock_timeout is not None:
                    item.locked_until = now + int(beat.lock_timeout * 1000)
                    w("hset", self._k.work, item.id, item.dump())
                    w("zadd", self._k.wlease, {wq_member(item.id): item.locked_until}, False, True)  # XX
                recorded.append(True)
            return recorded

        return await self._tx(body)

    async def read_heartbeat(self, call: CallKey) -> HeartbeatRecord | None:
        async def body(pipe: Any) -> HeartbeatRecord | None:
            raw = await pipe.hget(self._k.hb, _call_field(call.instance_id, call.execution_id, call.event_id))
            if raw is None:
                return None
            details, event_id, at = orjson.loads(raw)
            return HeartbeatRecord(details, int(event_id), int(at))

        return await self._read(body)

    async def queue_depths(self, *, active_statuses: Collection[str] = ("Pending", "Running")) -> QueueDepths:
        async def body(pipe: Any) -> QueueDepths:
            now = self.clock.now_ms()
            k = self._k
            due = int(await pipe.zcount(k.qvis, "-inf", now))
            later = int(await pipe.zcount(k.qvis, f"({now}", f"({WAITING_OFFSET_MS}"))
            due += int(await pipe.zcard(k.qpark))  # a lease's messages (redis_scripts): visible, only leased
            worker = int(await pipe.hlen(k.work))
            rows = await pipe.hgetall(k.inst)
            active = sum(1 for raw in rows.values() if orjson.loads(raw)["s"] in active_statuses)
            return QueueDepths(due, later, worker, active, int(await pipe.hlen(k.waiting)))

        return await self._read(body)

    async def queue_stats(self, *, live_statuses: Collection[str] = ()) -> list[QueueStats]:
        async def body(pipe: Any) -> list[QueueStats]:
            now = self.clock.now_ms()
            k = self._k
            stats: dict[str, list[int]] = {}
            for raw in (await pipe.hgetall(k.waiting)).values():
                stats.setdefault(_Placement.load(raw).queue, [0, 0, 0, 0])[0] += 1
            for iid, raw in (await pipe.hgetall(k.admitted)).items():
                record = await self._row(pipe, iid.decode())
                if record is not None and record.status in live_statuses:
                    stats.setdefault(_Placement.load(raw).queue, [0, 0, 0, 0])[1] += 1
            for item in await self._all_work(pipe):
                leased = item.lock_token is not None and item.locked_until > now
                stats.setdefault(item.work.queue, [0, 0, 0, 0])[3 if leased else 2] += 1
            return [QueueStats(q, *n) for q, n in sorted(stats.items()) if any(n)]

        return await self._read(body)

    # -- wake-ups and lifecycle ------------------------------------------------------

    def wake_into(self, hub: Any) -> None:
        """Feed ``hub`` the wake-ups every process publishes with its writes (the ``WakeSource`` protocol)."""
        self._hubs.append(hub)

    def _wake(self, notify: Callable[[Any], None]) -> None:
        for hub in self._hubs:
            notify(hub)

    async def _listen(self) -> None:
        """Keep one pub/sub subscription alive; reconnect when it drops (then wake everyone once).

        After :attr:`listen_check` seconds without a message the listener publishes an empty
        one; when that does not come back within as long again, the subscription is dead
        though its socket looks open, and it reconnects.
        """
        delay = 0.05
        while not self._closed:
            pubsub = None
            try:
                pubsub = self._r.pubsub()
                await pubsub.subscribe(self._k.wake)
                self._wake(lambda hub: hub.wake_everyone())
                delay = 0.05
                pinged = False
                while not self._closed:
                    # redis-py's wait_for may drop a cancel that lands with a message: without this
                    # check the listener read on, and asyncio.run's shutdown waited for it for ever.
                    raise_if_cancel_requested()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.listen_check)
                    if message is None:
                        # Silence: a quiet store, or a connection that died without a word (a host
                        # or a NAT entry gone). Our own empty wake-up tells them apart.
                        if pinged:
                            raise RedisConnectionError("the pub/sub connection delivered nothing, not even "
                                                       "this process's own ping")
                        await self._r.publish(self._k.wake, b"")
                        pinged = True
                        continue
                    pinged = False
                    data: bytes = message["data"]
                    if data == b"o":
                        self._wake(lambda hub: hub.notify_orchestrator())
                    elif data == b"w":
                        self._wake(lambda hub: hub.notify_worker())
                    elif data.startswith(b"i:"):
                        iid = data[2:].decode()
                        self._wake(lambda hub, _i=iid: hub.notify_instance(_i))  # type: ignore[misc]
            except asyncio.CancelledError:
                break
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any error
                if not self._closed:
                    _log.warning("Redis pub/sub connection failed (%s: %s); reconnecting", type(exc).__name__, exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            if not self._closed:
                try:
                    raise_if_cancel_requested()
                except asyncio.CancelledError:
                    break
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    # -- schedules (one hash: id -> the row as JSON) -------------------------------

    async def _schedule(self, pipe: Any, schedule_id: str) -> ScheduleRecord | None:
        raw = await pipe.hget(self._k.sched, schedule_id)
        return None if raw is None else ScheduleRecord(**orjson.loads(raw))

    def _put_schedule_row(self, w: _Writes, record: ScheduleRecord) -> None:
        w("hset", self._k.sched, record.schedule_id, orjson.dumps(dataclasses.asdict(record)))

    async def put_schedule(self, record: ScheduleRecord, *, replace: bool = False) -> ScheduleRecord | None:
        async def body(pipe: Any, w: _Writes) -> ScheduleRecord | None:
            now = self.clock.now_ms()
            old = await self._schedule(pipe, record.schedule_id)
            if old is None:
                stored = dataclasses.replace(record, created_at_ms=now, updated_at_ms=now, last_tick_ms=None,
                                             last_instance_id=None, registered_at_ms=None)
            elif not replace:
                return None
            else:  # an unchanged cron keeps its place, so every process may put it at start
                stored = dataclasses.replace(
                    old, cron=record.cron, orchestration=record.orchestration, input=record.input,
                    version=record.version, catch_up=record.catch_up, updated_at_ms=now,
                    next_tick_ms=old.next_tick_ms if old.cron == record.cron else record.next_tick_ms)
            self._put_schedule_row(w, stored)
            return stored

        return await self._tx(body)

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        return await self._read(lambda pipe: self._schedule(pipe, schedule_id))

    async def list_schedules(self) -> list[ScheduleRecord]:
        async def body(pipe: Any) -> list[ScheduleRecord]:
            rows = [ScheduleRecord(**orjson.loads(raw)) for raw in (await pipe.hgetall(self._k.sched)).values()]
            return sorted(rows, key=lambda r: r.schedule_id)

        return await self._read(body)

    async def set_schedule_paused(self, schedule_id: str, paused: bool, *,
                                  next_tick_ms: int | None = None) -> ScheduleRecord | None:
        async def body(pipe: Any, w: _Writes) -> ScheduleRecord | None:
            old = await self._schedule(pipe, schedule_id)
            if old is None:
                return None
            new = dataclasses.replace(old, paused=paused, updated_at_ms=self.clock.now_ms(),
                                      next_tick_ms=old.next_tick_ms if next_tick_ms is None else next_tick_ms)
            self._put_schedule_row(w, new)
            return new

        return await self._tx(body)

    async def delete_schedule(self, schedule_id: str) -> bool:
        async def body(pipe: Any, w: _Writes) -> bool:
            if not await pipe.hexists(self._k.sched, schedule_id):
                return False
            w("hdel", self._k.sched, schedule_id)
            return True

        return await self._tx(body)

    async def fire_schedule(self, fire: ScheduleFire) -> bool:
        first = await self._ids(2 * len(fire.starts))

        async def body(pipe: Any, w: _Writes) -> bool:
            old = await self._schedule(pipe, fire.schedule_id)
            if old is None or old.paused or old.next_tick_ms != fire.expected_next_tick_ms:
                return False
            for i, start in enumerate(fire.starts):
                if await self._row(pipe, start.instance_id) is None:  # an id taken is never replaced
                    self._create(w, start, uuid.uuid4().hex, first + 2 * i, first + 2 * i + 1)
            last = ((fire.last_tick_ms, fire.starts[-1].instance_id) if fire.starts
                    else (old.last_tick_ms, old.last_instance_id))
            self._put_schedule_row(w, dataclasses.replace(
                old, next_tick_ms=fire.next_tick_ms, last_tick_ms=last[0], last_instance_id=last[1],
                updated_at_ms=self.clock.now_ms()))
            return True

        return await self._tx(body)

    async def confirm_schedules(self, schedule_ids: Collection[str]) -> None:
        async def body(pipe: Any, w: _Writes) -> None:
            now = self.clock.now_ms()
            for sid in schedule_ids:
                old = await self._schedule(pipe, sid)
                if old is not None:
                    self._put_schedule_row(w, dataclasses.replace(old, registered_at_ms=now))

        await self._tx(body)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None
        await self._drop_client()

    async def holds_store(self) -> bool:
        """Whether a store was ever written under this prefix (the CLI opens only existing stores)."""
        if self._r is None:
            return False
        return bool(await self._r.exists(self._k.ver, self._k.inst))

    async def drop_keys(self) -> int:
        """Delete every key under this store's prefix (tests; an application leaving a shared server)."""
        if self._r is None:
            return 0
        doomed = [key async for key in self._r.scan_iter(match=_glob_escape(self.prefix) + ":*", count=500)]
        for i in range(0, len(doomed), 500):
            await self._r.delete(*doomed[i:i + 500])
        return len(doomed)


def _zdel(w: _Writes, key: str, member: str | bytes) -> None:
    """Remove ``member`` so that the removal reaches the AOF even if a lease's unreplicated write
    already took it out of memory (the server propagates only writes that change memory; see
    redis_scripts): set it, then remove it."""
    w("zadd", key, {member: 0})
    w("zrem", key, member)


#: Turns per commit script (the runtime's batches are usually smaller).
_COMMIT_BATCH = 64


def _seq(value: Any) -> list[Any]:
    """A list from a script's JSON reply (``cjson`` encodes an empty Lua table as ``{}``)."""
    return value if isinstance(value, list) else []


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _redact(url: str) -> str:
    """The URL without its password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
