"""Reading and tampering with a Redis store behind its back, for tests that do so on every store.

The SQLite and PostgreSQL branches of those tests use SQL; these helpers know the Redis
store's key layout (duroxide_runtime/providers/redis.py) in one place.

Example::

    if isinstance(store, RedisProvider):
        await redis_raw.break_error(store, "bad", b"{not json")
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from duroxide_runtime.history import HistoryEvent, decode_event, encode_event
from duroxide_runtime.providers.redis import RedisProvider


def _client(store: RedisProvider) -> aioredis.Redis:
    return aioredis.Redis.from_url(store.url)


async def rewrite_history(store: RedisProvider, iid: str, execution_id: int,
                          change: Callable[[list[HistoryEvent]], list[HistoryEvent]]) -> None:
    """Replace the events of one execution with ``change(events)``."""
    r = _client(store)
    key = f"{store.prefix}:h:{execution_id}:{iid}"
    try:
        events = change([decode_event(raw) for raw in await r.lrange(key, 0, -1)])
        async with r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if events:
                pipe.rpush(key, *[encode_event(e) for e in events])
            await pipe.execute()
    finally:
        await r.aclose()


async def stored_keys(store: RedisProvider) -> set[str]:
    """The idempotency keys the store holds, expired or not."""
    r = _client(store)
    try:
        return {k.decode() if isinstance(k, bytes) else k for k in await r.hkeys(f"{store.prefix}:keys")}
    finally:
        await r.aclose()


async def break_error(store: RedisProvider, iid: str, raw: bytes) -> None:
    """Overwrite the stored error of ``iid`` with ``raw`` (as text: not JSON the store wrote)."""
    r = _client(store)
    try:
        stored = await r.hget(f"{store.prefix}:inst", iid)
        assert stored is not None, iid
        row = orjson.loads(stored)
        row["err"] = raw.decode("latin-1")
        await r.hset(f"{store.prefix}:inst", iid, orjson.dumps(row))
    finally:
        await r.aclose()


async def locked_until(store: RedisProvider) -> int:
    """The lease expiry of the one activity call in the store."""
    r = _client(store)
    try:
        (raw,) = (await r.hgetall(f"{store.prefix}:work")).values()
        return int(orjson.loads(raw)["u"])
    finally:
        await r.aclose()
