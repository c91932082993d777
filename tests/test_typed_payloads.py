"""Typed payloads and the typed helpers of the macro layer, on real runtimes and stores.

Everything here goes through the decorators, the ``durable(...)`` form (this
module is rewritten by the pytest plugin's import hook) and the typed client
helpers; the stored history is checked to see what really was persisted.

Names of decorated functions start with ``tp_`` / ``Tp``: discovery is global
per process, so they must not collide with other test modules.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import types
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Optional, Union
from uuid import UUID

import pytest
from pydantic import BaseModel, TypeAdapter
from typing_extensions import NotRequired, TypedDict

from duroxide_macros import discovered_activities, discovered_orchestrations
from duroxide_macros.prelude import (
    ActivityFailed,
    ActivityRegistry,
    Client,
    DurableTaskFailed,
    Event,
    InMemoryProvider,
    InstanceInfo,
    OrchestrationContext,
    OrchestrationFailedError,
    OrchestrationRegistry,
    OrchestrationStatus,
    Provider,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    SubOrchestrationFailed,
    VersionPolicy,
    activity,
    durable,
    orchestration,
)
from duroxide_runtime import ConfigurationError, PayloadError
from duroxide_runtime.history import HistoryEvent

pytestmark = pytest.mark.timeout(60)

TZ_IST = timezone(timedelta(hours=5, minutes=30))
FAST: dict[str, Any] = dict(poll_interval=0.05, unknown_name_backoff=0.01, unknown_name_max_backoff=0.05)


# ---------------------------------------------------------------------------------------------
# Domain types
# ---------------------------------------------------------------------------------------------


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Level(IntEnum):
    LOW = 1
    HIGH = 3


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    zip: str | None = None


class Item(BaseModel):
    sku: str
    qty: int
    price: float
    tags: list[str] = []


class Meta(TypedDict):
    source: str
    attempts: int
    note: NotRequired[str]


@dataclass
class Bundle:
    id: UUID
    when: datetime
    color: Color
    level: Level
    address: Address
    items: list[Item]
    meta: Meta
    scores: dict[str, float]
    maybe: Optional[int]
    either: Union[int, str]
    places: dict[str, list[Address]]
    optional_address: Address | None
    pair: tuple[int, str]
    nested: list[dict[str, Optional[list[int]]]] = field(default_factory=list)


@dataclass
class Described:
    bundle: Bundle
    types: dict[str, str]
    offset_minutes: int
    shifted: datetime
    next_color: Color
    item: Item
    ids: list[UUID]


def make_bundle(n: int = 1) -> Bundle:
    return Bundle(
        id=UUID(int=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0 + n),
        when=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=TZ_IST),
        color=Color.BLUE,
        level=Level.HIGH,
        address=Address("1 Main St", "Springfield", None),
        items=[Item(sku="A-1", qty=2, price=0.1 + 0.2, tags=["x", "ü"]), Item(sku="B", qty=1, price=1e-7)],
        meta={"source": "web", "attempts": 2},
        scores={"a": 1.5, "b": -0.0, "c": 1e300},
        maybe=None,
        either="42",  # a str that looks like an int must stay a str
        places={"home": [Address("x", "y", "z")], "none": []},
        optional_address=Address("o", "p"),
        pair=(7, "seven"),
        nested=[{"k": [1, 2, 3], "empty": None}, {}],
    )


# ---------------------------------------------------------------------------------------------
# Activities and orchestrations
# ---------------------------------------------------------------------------------------------


@activity(typed=True)
async def tp_echo_bundle(b: Bundle) -> Bundle:
    # The activity must receive real objects, not dicts.
    checks = [isinstance(b, Bundle), isinstance(b.id, UUID), isinstance(b.when, datetime),
              isinstance(b.color, Color), isinstance(b.level, Level), isinstance(b.address, Address),
              all(isinstance(i, Item) for i in b.items), isinstance(b.meta, dict),
              all(isinstance(a, Address) for a in b.places["home"]), isinstance(b.pair, tuple),
              isinstance(b.either, str), b.when.utcoffset() == timedelta(hours=5, minutes=30)]
    if not all(checks):
        raise TypeError(f"activity received wrong types: {checks}")
    return b


@activity(typed=True)
async def tp_describe(u: UUID, when: datetime, color: Color, item: Item, meta: Meta,
                      maybe: Optional[int], either: Union[int, str]) -> dict[str, str]:
    return {"u": type(u).__name__, "when": type(when).__name__, "color": type(color).__name__,
            "item": type(item).__name__, "meta": type(meta).__name__, "maybe": type(maybe).__name__,
            "either": type(either).__name__, "tz": str(when.utcoffset())}


@activity(typed=True)
async def tp_shift(when: datetime, days: int) -> datetime:
    return when + timedelta(days=days)


@activity(typed=True)
async def tp_next_color(c: Color) -> Color:
    return Color.RED if c is Color.BLUE else Color.BLUE


@activity(typed=True)
async def tp_make_item(sku: str, qty: int = 1, price: float = 9.5) -> Item:
    return Item(sku=sku, qty=qty, price=price)


@activity(typed=True)
def tp_make_ids(n: int) -> list[UUID]:  # plain def: runs in a worker thread
    return [UUID(int=i) for i in range(n)]


@orchestration
async def tp_roundtrip(ctx: OrchestrationContext, bundle: Bundle) -> Described:
    echoed = await durable(tp_echo_bundle(bundle))
    types = await durable(tp_describe(echoed.id, echoed.when, echoed.color, echoed.items[0], echoed.meta,
                                      echoed.maybe, echoed.either))
    shifted = await durable(tp_shift(echoed.when, days=1))
    nxt = await durable(tp_next_color(echoed.color))
    item = await durable(tp_make_item("Z-9", 3))
    ids = await durable(tp_make_ids(2))
    offset = shifted.utcoffset()
    minutes = -1 if offset is None else int(offset.total_seconds() // 60)
    return Described(echoed, types, minutes, shifted, nxt, item, ids)


@activity(typed=True)
async def tp_kwonly(sku: str, *, qty: int = 1, note: str | None = None) -> str:
    return f"{sku} x{qty} ({note})"


@orchestration
async def tp_kwonly_orch(ctx: OrchestrationContext, sku: str) -> list[str]:
    return [await durable(tp_kwonly(sku)), await durable(tp_kwonly(sku, qty=3, note="n"))]


@activity
async def tp_shout(text: str) -> str:
    """Untyped: str in, str out, passed through as-is."""
    return text.upper()


@activity
def tp_reverse(text: str) -> str:
    """Untyped plain def."""
    return text[::-1]


@orchestration
async def tp_untyped_chain(ctx: OrchestrationContext, text: str) -> str:
    loud = await durable(tp_shout(text))
    return await durable(tp_reverse(loud))


@dataclass
class ThreadProbe:
    tag: str
    thread_name: str
    is_main_thread: bool
    loop_running: bool


@activity(typed=True)
def tp_thread_probe(tag: str) -> ThreadProbe:
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    t = threading.current_thread()
    return ThreadProbe(tag, t.name, t is threading.main_thread(), running)


@orchestration
async def tp_probe_threads(ctx: OrchestrationContext, tags: list[str]) -> list[ThreadProbe]:
    return list(await asyncio.gather(*(durable(tp_thread_probe(t)) for t in tags)))


@activity(typed=True, name="TpGreetUser")
async def tp_greet_v1(name: str) -> str:
    return f"Hello, {name}!"


@orchestration(name="TpHelloWorld")
async def tp_hello_world_impl(ctx: OrchestrationContext, name: str) -> str:
    return await durable(tp_greet_v1(name))


@dataclass
class VersionedOut:
    version: str
    text: str


@orchestration(name="tp_versioned")
async def tp_versioned_v1(ctx: OrchestrationContext, x: str) -> VersionedOut:
    if x == "wait":
        x = await ctx.schedule_wait("go")
    return VersionedOut(ctx.orchestration_version, f"v1:{x}")


@orchestration(name="tp_versioned", version="2.0.0")
async def tp_versioned_v2(ctx: OrchestrationContext, x: str) -> VersionedOut:
    if x == "wait":
        x = await ctx.schedule_wait("go")
    shouted = await durable(tp_shout(x))
    return VersionedOut(ctx.orchestration_version, f"v2:{shouted}")


# -- call-site encoding failures -------------------------------------------------------------


@activity(typed=True)
async def tp_take_list(values: list[Any]) -> int:
    return len(values)


@activity(typed=True)
async def tp_take_int(n: int) -> int:
    return n + 1


@orchestration
async def tp_child_int(ctx: OrchestrationContext, n: int) -> int:
    return n * 2


@orchestration
async def tp_takes_bundle(ctx: OrchestrationContext, b: Bundle) -> str:
    return str(b.id)


@orchestration
async def tp_takes_int(ctx: OrchestrationContext, n: int) -> int:
    return n


@orchestration
async def tp_bad_call_site(ctx: OrchestrationContext, which: str) -> str:
    """Makes one un-encodable call, catches the error, and reports it."""
    try:
        if which == "object-in-list":
            await durable(tp_take_list([object()]))
        elif which == "int-too-big":
            await durable(tp_take_int(2 ** 70))
        elif which == "untyped-int":
            await durable(tp_shout(123))  # type: ignore[arg-type]
        elif which == "sub-int-too-big":
            await durable(tp_child_int(2 ** 70))
        else:
            raise AssertionError(which)
    except PayloadError as exc:
        return f"PayloadError: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@orchestration
async def tp_bad_output(ctx: OrchestrationContext, x: int) -> Item:
    return object()  # type: ignore[return-value]


# -- decoding failures -----------------------------------------------------------------------


@orchestration
async def tp_raw_to_typed(ctx: OrchestrationContext, raw: str) -> list[str]:
    """Sends a raw string to a typed activity through the string API."""
    try:
        await ctx.schedule_activity("tp_describe", raw)
    except ActivityFailed as exc:
        return [exc.error_type, exc.details.message, exc.name]
    return ["no error"]


async def manual_raw_output(ctx: OrchestrationContext, input: str) -> str:
    return "this is { not json"


async def manual_upper(text: str) -> str:
    return text.upper() + "!"


async def manual_orch_calls_typed(ctx: OrchestrationContext, input: str) -> str:
    # The string API calling a decorated typed activity: JSON text in, JSON text out.
    return await ctx.schedule_activity("TpGreetUser", json.dumps(input))


@orchestration
async def tp_uses_manual(ctx: OrchestrationContext, text: str) -> str:
    return await ctx.schedule_activity("TpManualUpper", text)


# -- remote errors ---------------------------------------------------------------------------


def _deep_failure(kind: str) -> None:
    raise ValueError(f"boom: {kind}")


@activity(typed=True)
async def tp_explode(kind: str) -> int:
    _deep_failure(kind)
    return 0


@activity(typed=True)
def tp_explode_sync(kind: str) -> int:
    raise LookupError(f"sync boom: {kind}")


@dataclass
class Caught:
    cls: str
    error_type: str
    message: str
    traceback: str
    name: str
    is_durable_task_failed: bool
    instance_id: str | None = None


@orchestration
async def tp_catch_activity(ctx: OrchestrationContext, kind: str) -> Caught:
    try:
        if kind == "sync":
            await durable(tp_explode_sync(kind))
        else:
            await durable(tp_explode(kind))
    except ActivityFailed as exc:
        return Caught(type(exc).__name__, exc.error_type, exc.details.message, exc.remote_traceback, exc.name,
                      isinstance(exc, DurableTaskFailed))
    raise AssertionError("activity did not fail")


@orchestration
async def tp_failing_child(ctx: OrchestrationContext, key: str) -> int:
    return {"present": 1}[key]


@orchestration
async def tp_catch_child(ctx: OrchestrationContext, key: str) -> Caught:
    try:
        await durable(tp_failing_child(key))
    except SubOrchestrationFailed as exc:
        return Caught(type(exc).__name__, exc.error_type, exc.details.message, exc.remote_traceback, exc.name,
                      isinstance(exc, DurableTaskFailed), exc.instance_id)
    raise AssertionError("child did not fail")


@orchestration
async def tp_uncaught_activity_failure(ctx: OrchestrationContext, kind: str) -> int:
    return await durable(tp_explode(kind))


@orchestration
async def tp_always_fails(ctx: OrchestrationContext, reason: str) -> int:
    raise RuntimeError(f"refused: {reason}")


# -- helpers, events, sub-orchestrations ------------------------------------------------------


@dataclass
class ApprovalRequest:
    order_id: str
    amount: float


@dataclass
class ApprovalDecision:
    approved: bool
    approver: str
    at: datetime


@dataclass
class ApprovalResult:
    order_id: str
    approved: bool
    approver: str
    at: datetime


@orchestration
async def tp_approval(ctx: OrchestrationContext, req: ApprovalRequest) -> ApprovalResult:
    ctx.set_custom_status("waiting for approval")
    raw = await ctx.schedule_wait("approval")
    decision = TypeAdapter(ApprovalDecision).validate_json(raw)
    ctx.set_custom_status("decided")
    return ApprovalResult(req.order_id, decision.approved, decision.approver, decision.at)


@dataclass
class ChildIn:
    name: str
    n: int


@dataclass
class ChildOut:
    name: str
    doubled: list[int]
    instance_id: str


@orchestration
async def tp_child(ctx: OrchestrationContext, req: ChildIn) -> ChildOut:
    return ChildOut(req.name, [req.n * 2], ctx.instance_id)


@orchestration
async def tp_parent(ctx: OrchestrationContext, n: int) -> list[ChildOut]:
    first = await durable(tp_child(ChildIn("first", n)))
    second = await tp_child.call(ctx, ChildIn("second", n + 1), instance_id=f"{ctx.instance_id}-kid")
    return [first, second]


# -- payload errors name the culprit ----------------------------------------------------------


@dataclass
class TpEarly:
    later: TpLater  # defined below this class and below the activity that uses it


@dataclass
class TpBroken:
    missing: TpNeverDefined  # type: ignore[name-defined]  # noqa: F821 - never defined anywhere


@activity(typed=True)
async def tp_uses_early(e: TpEarly) -> int:
    return e.later.n


@dataclass
class TpLater:
    n: int


class TpPlain:
    """A plain class: pydantic cannot turn it into JSON or back."""

    def __init__(self, handle: int) -> None:
        self.handle = handle


@dataclass
class TpLine:
    sku: str
    price: float
    note: Any = None


@dataclass
class TpOrder:
    id: str
    items: list[TpLine]


@activity(typed=True)
async def tp_charge(order: TpOrder, currency: str = "EUR") -> float:
    return sum(line.price for line in order.items)


def tp_bad_order(which: str) -> TpOrder:
    """An order whose third line is wrong in the way ``which`` says."""
    bad: dict[str, TpLine] = {
        "str-price": TpLine("C", "12.50"),  # type: ignore[arg-type]  # a str where a float is expected
        "object-price": TpLine("C", object()),  # type: ignore[arg-type]
        "object-in-note": TpLine("C", 3.0, note={"gift": [True, object()]}),  # Any, holding something un-encodable
    }
    return TpOrder("o-1", [TpLine("A", 1.0), TpLine("B", 2.0), bad[which]])


@orchestration
async def tp_charge_bad(ctx: OrchestrationContext, which: str) -> str:
    try:
        await durable(tp_charge(tp_bad_order(which)))
    except PayloadError as exc:
        return str(exc)
    return "no error"


@orchestration
async def tp_charge_order(ctx: OrchestrationContext, order: TpOrder) -> float:
    return await durable(tp_charge(order))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class PlainMeta(typing.TypedDict):  # typing's, not typing_extensions'
    source: str
    attempts: int


@asynccontextmanager
async def running(store: Provider, *, replay_from_scratch: bool = False,
                  activities: ActivityRegistry | None = None,
                  orchestrations: OrchestrationRegistry | None = None) -> AsyncIterator[Runtime]:
    builder = Runtime.builder().store(store)
    if activities is not None:
        builder = builder.activities(activities)
    builder = builder.discover_activities().discover_orchestrations()
    if orchestrations is not None:
        builder = builder.orchestrations(orchestrations)
    rt = await builder.options(RuntimeOptions(replay_from_scratch=replay_from_scratch, **FAST)).start()
    try:
        yield rt
    finally:
        await rt.shutdown(grace=2)


async def new_store(kind: str, tmp_path: Path) -> Provider:
    if kind == "memory":
        return InMemoryProvider()
    return await SqliteProvider.new(f"sqlite://{tmp_path / 'typed.db'}")


def events_of(history: list[HistoryEvent], kind: type) -> list[Any]:
    return [e for e in history if isinstance(e, kind)]


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,from_scratch", [("memory", False), ("sqlite", True)])
async def test_typed_values_round_trip_losslessly(kind: str, from_scratch: bool, tmp_path: Path) -> None:
    store = await new_store(kind, tmp_path)
    bundle = make_bundle()
    try:
        async with running(store, replay_from_scratch=from_scratch) as rt:
            client = rt.client()
            out = await tp_roundtrip.run(client, f"rt-{kind}", bundle, timeout=20)
            history = await tp_roundtrip.history(client, f"rt-{kind}")
    finally:
        await store.close()

    assert isinstance(out, Described)
    assert out.bundle == bundle
    # Equality of aware datetimes compares instants; the offset must survive too.
    assert out.bundle.when.utcoffset() == timedelta(hours=5, minutes=30)
    assert out.bundle.when.microsecond == 123456
    assert type(out.bundle.level) is Level and type(out.bundle.color) is Color
    assert type(out.bundle.either) is str and out.bundle.either == "42"
    assert isinstance(out.bundle.items[0], Item) and out.bundle.items[0].price == 0.1 + 0.2
    assert out.bundle.items[1].price == 1e-7 and out.bundle.scores["c"] == 1e300
    assert isinstance(out.bundle.places["home"][0], Address)
    assert out.bundle.pair == (7, "seven") and isinstance(out.bundle.pair, tuple)
    assert out.types == {"u": "UUID", "when": "datetime", "color": "Color", "item": "Item", "meta": "dict",
                         "maybe": "NoneType", "either": "str", "tz": "5:30:00"}
    assert out.shifted == bundle.when + timedelta(days=1) and out.offset_minutes == 330
    assert out.next_color is Color.RED
    assert out.item == Item(sku="Z-9", qty=3, price=9.5)
    assert out.ids == [UUID(int=0), UUID(int=1)] and all(type(i) is UUID for i in out.ids)

    # What was persisted is JSON of the values; multi-parameter calls store a JSON array.
    scheduled = {e.name: e.input for e in events_of(history, Event.ActivityScheduled)}
    assert set(scheduled) == {"tp_echo_bundle", "tp_describe", "tp_shift", "tp_next_color", "tp_make_item",
                              "tp_make_ids"}
    stored_bundle = json.loads(scheduled["tp_echo_bundle"])
    assert stored_bundle["when"] == "2024-05-06T07:08:09.123456+05:30"
    assert stored_bundle["color"] == "blue" and stored_bundle["level"] == 3
    assert stored_bundle["id"] == str(bundle.id) and stored_bundle["either"] == "42"
    assert json.loads(scheduled["tp_shift"]) == ["2024-05-06T07:08:09.123456+05:30", 1]
    assert json.loads(scheduled["tp_next_color"]) == "blue"
    # defaults are applied before encoding
    assert json.loads(scheduled["tp_make_item"]) == ["Z-9", 3, 9.5]
    started = events_of(history, Event.OrchestrationStarted)[0]
    assert json.loads(started.input) == stored_bundle


async def test_keyword_only_activity_parameters(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    out = await tp_kwonly_orch.run(duroxide_client, "kwonly-1", "S", timeout=15)
    assert out == ["S x1 (None)", "S x3 (n)"]


async def test_untyped_activity_passes_str_through_as_is(duroxide_runtime: Runtime,
                                                         duroxide_client: Client) -> None:
    text = '{"not": "encoded"} "quoted" \\n ünïcode'
    out = await tp_untyped_chain.run(duroxide_client, "untyped-1", text, timeout=15)
    assert out == text.upper()[::-1]
    history = await duroxide_client.read_history("untyped-1")
    scheduled = events_of(history, Event.ActivityScheduled)
    completed = events_of(history, Event.ActivityCompleted)
    # Untyped activities get exactly the str: no JSON quoting on the way in or out.
    assert [(e.name, e.input) for e in scheduled] == [("tp_shout", text), ("tp_reverse", text.upper())]
    assert [e.result for e in completed] == [text.upper(), text.upper()[::-1]]
    # ... while the orchestration itself is typed (str input, JSON-encoded in its history)
    assert events_of(history, Event.OrchestrationStarted)[0].input == json.dumps(text, ensure_ascii=False)


async def test_plain_def_activities_run_in_worker_threads(duroxide_runtime: Runtime,
                                                          duroxide_client: Client) -> None:
    probes = await tp_probe_threads.run(duroxide_client, "threads-1", ["a", "b", "c"], timeout=15)
    assert [p.tag for p in probes] == ["a", "b", "c"]
    assert all(isinstance(p, ThreadProbe) for p in probes)
    assert not any(p.is_main_thread for p in probes), probes
    assert not any(p.loop_running for p in probes), probes  # not on the event loop
    # Called directly (outside an orchestration) a plain def activity is just the function.
    direct = tp_thread_probe("direct")
    assert isinstance(direct, ThreadProbe) and direct.is_main_thread


async def test_custom_names(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    assert tp_greet_v1.name == "TpGreetUser" and tp_hello_world_impl.name == "TpHelloWorld"
    assert await tp_hello_world_impl.run(duroxide_client, "named-1", "Alice", timeout=15) == "Hello, Alice!"
    info = await tp_hello_world_impl.metadata(duroxide_client, "named-1")
    assert info.name == "TpHelloWorld" and info.version == "1.0.0"
    history = await duroxide_client.read_history("named-1")
    assert [(e.name, e.input) for e in events_of(history, Event.ActivityScheduled)] == [("TpGreetUser", '"Alice"')]
    # The string API reaches them by their registered names only.
    assert "TpHelloWorld" in duroxide_runtime.orchestration_registry.names()
    assert "tp_hello_world_impl" not in duroxide_runtime.orchestration_registry.names()
    assert "TpGreetUser" in duroxide_runtime.activity_registry.names()
    assert "tp_greet_v1" not in duroxide_runtime.activity_registry.names()
    await duroxide_client.start_orchestration("named-2", "TpHelloWorld", '"Bob"')
    status = await duroxide_client.wait_for_orchestration("named-2", 15)
    assert status == OrchestrationStatus.Completed(output='"Hello, Bob!"')


async def test_versions_coexist_and_new_instances_get_latest(duroxide_runtime: Runtime,
                                                             duroxide_client: Client) -> None:
    client = duroxide_client
    assert duroxide_runtime.orchestration_registry.versions("tp_versioned") == ["1.0.0", "2.0.0"]
    assert (tp_versioned_v1.version, tp_versioned_v2.version) == ("1.0.0", "2.0.0")
    # Started by name without a version: the policy (LATEST by default) picks 2.0.0.
    await client.start_orchestration("ver-latest", "tp_versioned", '"x"')
    assert await tp_versioned_v2.wait(client, "ver-latest", 15) == OrchestrationStatus.Completed(
        output=VersionedOut("2.0.0", "v2:X"))
    assert (await client.get_instance_info("ver-latest")).version == "2.0.0"
    # Each version's helpers start that version.
    assert await tp_versioned_v1.run(client, "ver-1", "y", timeout=15) == VersionedOut("1.0.0", "v1:y")
    assert await tp_versioned_v2.run(client, "ver-2", "y", timeout=15) == VersionedOut("2.0.0", "v2:Y")
    assert (await tp_versioned_v1.metadata(client, "ver-1")).version == "1.0.0"
    # A running v1 instance stays on v1 while v2 is the latest.
    await tp_versioned_v1.start(client, "ver-1-running", "wait")
    await asyncio.sleep(0.2)
    assert await tp_versioned_v1.raise_event(client, "ver-1-running", "go", "later") is True
    assert await tp_versioned_v1.wait(client, "ver-1-running", 15) == OrchestrationStatus.Completed(
        output=VersionedOut("1.0.0", "v1:later"))
    # Pinning through the policy.
    duroxide_runtime.orchestration_registry.set_version_policy("tp_versioned", VersionPolicy.exact("1.0.0"))
    await client.start_orchestration("ver-pinned", "tp_versioned", '"z"')
    assert await tp_versioned_v1.wait(client, "ver-pinned", 15) == OrchestrationStatus.Completed(
        output=VersionedOut("1.0.0", "v1:z"))


# ---------------------------------------------------------------------------------------------
# Encoding and decoding failures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which,cause,scheduled_kind", [
    ("object-in-list", "object", Event.ActivityScheduled),
    ("int-too-big", "64-bit", Event.ActivityScheduled),
    ("untyped-int", "str", Event.ActivityScheduled),
    ("sub-int-too-big", "64-bit", Event.SubOrchestrationScheduled),
])
async def test_unencodable_value_fails_at_the_call_site_in_orchestrations(
        which: str, cause: str, scheduled_kind: type, duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    out = await tp_bad_call_site.run(duroxide_client, f"bad-{which}", which, timeout=15)
    assert out.startswith("PayloadError: "), out
    assert cause in out, out
    history = await duroxide_client.read_history(f"bad-{which}")
    # Nothing was scheduled: the error came before the call reached the history.
    assert events_of(history, scheduled_kind) == []
    assert events_of(history, Event.ActivityScheduled) == []
    assert events_of(history, Event.SubOrchestrationScheduled) == []


async def test_unencodable_input_fails_before_anything_is_persisted(duroxide_runtime: Runtime,
                                                                    duroxide_client: Client) -> None:
    client = duroxide_client
    bad_bundle: Any = object()
    with pytest.raises(PayloadError, match="tp_takes_bundle"):
        await tp_takes_bundle.start(client, "unenc-1", bad_bundle)
    with pytest.raises(PayloadError, match="64-bit"):
        await tp_takes_int.run(client, "unenc-2", 2 ** 70, timeout=5)
    with pytest.raises(PayloadError):
        await tp_child.start(client, "unenc-3", ChildIn("x", 2 ** 80))
    for iid in ("unenc-1", "unenc-2", "unenc-3"):
        assert await tp_takes_bundle.exists(client, iid) is False
        assert isinstance(await tp_takes_bundle.status(client, iid), OrchestrationStatus.NotFound)
    assert await client.list_instances() == []

    # raise_event with an un-encodable value: nothing is delivered.
    await tp_approval.start(client, "unenc-event", ApprovalRequest("o-1", 1.0))
    with pytest.raises(PayloadError):
        await tp_approval.raise_event(client, "unenc-event", "approval", {"at": object()})
    await asyncio.sleep(0.2)
    assert events_of(await client.read_history("unenc-event"), Event.EventRaised) == []
    assert isinstance(await tp_approval.status(client, "unenc-event"),
                      (OrchestrationStatus.Running, OrchestrationStatus.Pending))
    await tp_approval.cancel(client, "unenc-event")


@pytest.mark.parametrize("value", ["not an int", 1.5], ids=["str", "float"])
async def test_value_of_the_wrong_type_fails_at_the_call_site(value: Any, duroxide_runtime: Runtime,
                                                             duroxide_client: Client) -> None:
    """``Codec.encode`` says values are "checked against the annotation first, so bad values fail here"."""
    with pytest.raises(PayloadError):
        await tp_takes_int.start(duroxide_client, "wrong-type", value)
    assert await duroxide_client.list_instances() == []


async def test_unencodable_output_fails_the_orchestration(duroxide_runtime: Runtime,
                                                          duroxide_client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await tp_bad_output.run(duroxide_client, "bad-out", 1, timeout=15)
    assert info.value.details is not None
    assert info.value.details.error_type == "PayloadError"
    assert "output of orchestration 'tp_bad_output'" in info.value.details.message


async def test_undecodable_payloads_give_payload_error_naming_the_cause(duroxide_store: InMemoryProvider,
                                                                       duroxide_client: Client) -> None:
    client = duroxide_client
    manual = OrchestrationRegistry.builder().register("TpRawOutput", manual_raw_output).build()
    async with running(duroxide_store, orchestrations=manual):
        # 1. an orchestration input of the wrong shape (started through the string API)
        await client.start_orchestration("dec-1", "tp_takes_bundle", '{"id": "not-a-uuid", "color": "green"}')
        status = await client.wait_for_orchestration("dec-1", 15)
        assert isinstance(status, OrchestrationStatus.Failed), status
        assert status.details is not None and status.details.error_type == "PayloadError"
        msg = status.details.message
        assert "input of orchestration 'tp_takes_bundle'" in msg
        assert "id" in msg and "color" in msg and "when" in msg  # each bad or missing field is named
        # ... by its path from the parameter (b), in duroxide's words: no pydantic advice or URL
        assert "b.id: Input should be a valid UUID" in msg and "b.when: Field required" in msg, msg
        assert "errors.pydantic.dev" not in msg and "validation error" not in msg
        # 2. an activity argument of the wrong shape: the activity fails with PayloadError
        out = await tp_raw_to_typed.run(client, "dec-2", "[1, 2]", timeout=15)
        assert out[0] == "PayloadError" and out[2] == "tp_describe"
        assert "arguments of activity 'tp_describe'" in out[1]
        # 3. not JSON at all
        await client.start_orchestration("dec-3", "tp_takes_int", "forty-two")
        status = await client.wait_for_orchestration("dec-3", 15)
        assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
        assert status.details.error_type == "PayloadError" and "forty-two" in status.details.message
        # 4. a typed helper reading an output that is not of its type
        await client.start_orchestration("dec-4", "TpRawOutput", "")
        assert isinstance(await client.wait_for_orchestration("dec-4", 15), OrchestrationStatus.Completed)
        with pytest.raises(PayloadError, match="output of orchestration 'tp_takes_int'"):
            await tp_takes_int.status(client, "dec-4")


# ---------------------------------------------------------------------------------------------
# Remote errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_activity_failed_carries_remote_type_message_and_traceback(
        kind: str, duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    caught = await tp_catch_activity.run(duroxide_client, f"catch-{kind}", kind, timeout=15)
    assert caught.cls == "ActivityFailed" and caught.is_durable_task_failed
    if kind == "async":
        assert (caught.error_type, caught.message, caught.name) == ("ValueError", "boom: async", "tp_explode")
        assert "_deep_failure" in caught.traceback and "tp_explode" in caught.traceback
    else:
        assert (caught.error_type, caught.message, caught.name) == ("LookupError", "sync boom: sync",
                                                                    "tp_explode_sync")
        assert "tp_explode_sync" in caught.traceback
    assert "Traceback (most recent call last)" in caught.traceback
    assert __file__ in caught.traceback or "test_typed_payloads.py" in caught.traceback
    history = await duroxide_client.read_history(f"catch-{kind}")
    failed = events_of(history, Event.ActivityFailed)
    assert len(failed) == 1 and failed[0].details.error_type == caught.error_type


async def test_sub_orchestration_failed_carries_remote_error(duroxide_runtime: Runtime,
                                                             duroxide_client: Client) -> None:
    caught = await tp_catch_child.run(duroxide_client, "catch-child", "absent", timeout=15)
    assert caught.cls == "SubOrchestrationFailed" and caught.is_durable_task_failed
    assert caught.error_type == "KeyError" and "absent" in caught.message
    assert caught.name == "tp_failing_child"
    assert "tp_failing_child" in caught.traceback and "Traceback" in caught.traceback
    assert caught.instance_id
    child_status = await tp_failing_child.status(duroxide_client, caught.instance_id)
    assert isinstance(child_status, OrchestrationStatus.Failed) and "KeyError" in child_status.error


async def test_run_raises_orchestration_failed_error(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    with pytest.raises(OrchestrationFailedError) as info:
        await tp_always_fails.run(duroxide_client, "fail-1", "no way", timeout=15)
    err = info.value
    assert err.instance_id == "fail-1" and "refused: no way" in err.error
    assert err.details is not None and err.details.error_type == "RuntimeError"
    assert "tp_always_fails" in err.details.traceback

    with pytest.raises(OrchestrationFailedError) as info2:
        await tp_uncaught_activity_failure.run(duroxide_client, "fail-2", "deep", timeout=15)
    assert "boom: deep" in info2.value.error
    assert info2.value.details is not None and info2.value.details.error_type == "ActivityFailed"

    match await tp_always_fails.wait(duroxide_client, "fail-1", 1):
        case OrchestrationStatus.Failed(error=error, details=details):
            assert "refused: no way" in error and details is not None
        case other:
            pytest.fail(f"unexpected {other}")


# ---------------------------------------------------------------------------------------------
# Client helpers
# ---------------------------------------------------------------------------------------------


async def test_every_client_helper(duroxide_runtime: Runtime, duroxide_client: Client) -> None:
    client = duroxide_client
    iid = "helpers-1"
    assert await tp_approval.exists(client, iid) is False
    match await tp_approval.status(client, iid):
        case OrchestrationStatus.NotFound():
            pass
        case other:
            pytest.fail(f"expected NotFound, got {other}")

    await tp_approval.start(client, iid, ApprovalRequest("o-7", 12.5))
    assert await tp_approval.exists(client, iid) is True
    for _ in range(500):  # until the first turn ran (robust on a loaded machine)
        if events_of(await tp_approval.history(client, iid), Event.EventSubscribed):
            break
        await asyncio.sleep(0.02)
    # Not finished yet: wait with a short timeout returns the non-terminal status.
    match await tp_approval.wait(client, iid, timedelta(milliseconds=200)):
        case OrchestrationStatus.Running() | OrchestrationStatus.Pending():
            pass
        case other:
            pytest.fail(f"expected Running, got {other}")
    info = await tp_approval.metadata(client, iid)
    assert isinstance(info, InstanceInfo)
    assert (info.instance_id, info.name, info.version, info.status) == (iid, "tp_approval", "1.0.0", "Running")
    assert info.custom_status == "waiting for approval"

    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert await tp_approval.raise_event(client, iid, "approval", ApprovalDecision(True, "manager@x", at)) is True
    match await tp_approval.wait(client, iid, 15):
        case OrchestrationStatus.Completed(output=result):
            assert result == ApprovalResult("o-7", True, "manager@x", at)
            assert isinstance(result, ApprovalResult) and result.at.tzinfo is not None
        case other:
            pytest.fail(f"expected Completed, got {other}")
    polled = await tp_approval.poll_until_complete(client, iid, 5, 0.05)
    assert polled == OrchestrationStatus.Completed(output=ApprovalResult("o-7", True, "manager@x", at),
                                                   custom_status="decided")
    assert (await tp_approval.metadata(client, iid)).status == "Completed"
    # raising on a finished instance is a no-op that says so
    assert await tp_approval.raise_event(client, iid, "approval", "late") is False

    history = await tp_approval.history(client, iid)
    assert isinstance(history[0], Event.OrchestrationStarted)
    assert json.loads(history[0].input) == {"order_id": "o-7", "amount": 12.5}
    raised = events_of(history, Event.EventRaised)
    assert [e.name for e in raised] == ["approval"]
    assert json.loads(raised[0].data) == {"approved": True, "approver": "manager@x", "at": "2025-01-02T03:04:05+00:00"}
    assert isinstance(history[-1], Event.OrchestrationCompleted)
    assert json.loads(history[-1].output)["approver"] == "manager@x"

    # cancel
    await tp_approval.start(client, "helpers-2", ApprovalRequest("o-8", 1.0))
    polled = await tp_approval.poll_until_complete(client, "helpers-2", 0.3, 0.05)
    assert not polled.is_terminal
    assert await tp_approval.cancel(client, "helpers-2", "user requested") is True
    match await tp_approval.wait(client, "helpers-2", 15):
        case OrchestrationStatus.Failed(error=error):
            assert "user requested" in error
        case other:
            pytest.fail(f"expected Failed, got {other}")
    assert await tp_approval.cancel(client, "helpers-2", "again") is False

    # run that does not finish in time
    with pytest.raises(OrchestrationFailedError, match="did not finish"):
        await tp_approval.run(client, "helpers-3", ApprovalRequest("o-9", 1.0), timeout=0.3)
    await tp_approval.cancel(client, "helpers-3")


async def test_sub_orchestrations_through_durable_and_call(duroxide_runtime: Runtime,
                                                           duroxide_client: Client) -> None:
    out = await tp_parent.run(duroxide_client, "parent-1", 5, timeout=15)
    assert [type(o) for o in out] == [ChildOut, ChildOut]
    assert [(o.name, o.doubled) for o in out] == [("first", [10]), ("second", [12])]
    assert out[1].instance_id == "parent-1-kid"
    history = await duroxide_client.read_history("parent-1")
    subs = events_of(history, Event.SubOrchestrationScheduled)
    assert [(s.name, json.loads(s.input)) for s in subs] == [("tp_child", {"name": "first", "n": 5}),
                                                             ("tp_child", {"name": "second", "n": 6})]
    assert subs[1].instance_id == "parent-1-kid"
    done = events_of(history, Event.SubOrchestrationCompleted)
    assert [json.loads(d.result)["name"] for d in done] == ["first", "second"]
    kid = await tp_child.metadata(duroxide_client, "parent-1-kid")
    assert kid.parent_instance_id == "parent-1" and kid.name == "tp_child"
    assert await tp_child.wait(duroxide_client, subs[0].instance_id, 5) == OrchestrationStatus.Completed(
        output=out[0])


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


async def test_discovery_mixes_with_manual_registries(duroxide_store: InMemoryProvider,
                                                      duroxide_client: Client) -> None:
    client = duroxide_client
    assert "tp_echo_bundle" in discovered_activities().names()
    assert "TpGreetUser" in discovered_activities().names()
    assert discovered_orchestrations().versions("tp_versioned") == ["1.0.0", "2.0.0"]

    acts = ActivityRegistry.builder().register("TpManualUpper", manual_upper).build()
    orchs = OrchestrationRegistry.builder().register("TpManualOrch", manual_orch_calls_typed).build()
    async with running(duroxide_store, activities=acts, orchestrations=orchs) as rt:
        assert {"TpManualUpper", "TpGreetUser", "tp_shout"} <= set(rt.activity_registry.names())
        assert {"TpManualOrch", "tp_uses_manual", "TpHelloWorld"} <= set(rt.orchestration_registry.names())
        # a decorated orchestration calling a manually registered activity
        assert await tp_uses_manual.run(client, "mix-1", "quiet", timeout=15) == "QUIET!"
        # a manual orchestration calling a decorated typed activity through the string API
        await client.start_orchestration("mix-2", "TpManualOrch", "Zed")
        assert await client.wait_for_orchestration("mix-2", 15) == OrchestrationStatus.Completed(
            output='"Hello, Zed!"')
        # and decorated ones still work next to them
        assert await tp_hello_world_impl.run(client, "mix-3", "Ann", timeout=15) == "Hello, Ann!"


async def test_typing_typeddict_is_supported(tmp_path: Path) -> None:
    """``typing.TypedDict`` is what users write on Python 3.11; the spec lists TypedDict."""
    @activity(typed=True)
    async def tp_plain_typeddict_echo(m: PlainMeta) -> PlainMeta:
        return {"source": m["source"] + "!", "attempts": m["attempts"] + 1}

    @orchestration
    async def tp_plain_typeddict_orch(ctx: OrchestrationContext, m: PlainMeta) -> PlainMeta:
        return await tp_plain_typeddict_echo.call(ctx, m)

    store = InMemoryProvider()
    async with running(store) as rt:
        out = await tp_plain_typeddict_orch.run(rt.client(), "ptd", {"source": "s", "attempts": 1}, timeout=15)
    assert out == {"source": "s!", "attempts": 2}


# ---------------------------------------------------------------------------------------------
# Payload errors name the culprit
# ---------------------------------------------------------------------------------------------


#: Pydantic's own error text (its advice and URLs); "pydantic models" in duroxide's fix is fine.
PYDANTIC_WORDS = ("pydantic-core", "pydantic_core", "arbitrary_types_allowed", "__get_pydantic_core_schema__",
                  "model_config", "errors.pydantic.dev", "https://", "validation error")


def _declare_activity_with_socket_param() -> Any:
    @activity(typed=True)
    async def tp_cfg_socket(host: str, conn: socket.socket) -> int:
        return 0
    return tp_cfg_socket


def _declare_activity_with_plain_param() -> Any:
    @activity(typed=True)
    async def tp_cfg_plain(order_id: str, thing: TpPlain) -> int:
        return 0
    return tp_cfg_plain


def _declare_activity_with_lambda_param() -> Any:
    @activity(typed=True)
    def tp_cfg_lambda(callback: types.LambdaType) -> int:
        return 0
    return tp_cfg_lambda


def _declare_activity_returning_plain_list() -> Any:
    @activity(typed=True)
    async def tp_cfg_returns(n: int) -> list[TpPlain]:
        return []
    return tp_cfg_returns


def _declare_orchestration_with_socket_input() -> Any:
    @orchestration
    async def tp_cfg_orch_in(ctx: OrchestrationContext, conn: socket.socket) -> int:
        return 0
    return tp_cfg_orch_in


def _declare_orchestration_returning_plain() -> Any:
    @orchestration
    async def tp_cfg_orch_out(ctx: OrchestrationContext, n: int) -> TpPlain:
        return TpPlain(n)
    return tp_cfg_orch_out


PLAIN = f"{TpPlain.__module__}.TpPlain"  # pydantic names a class by its full path


@pytest.mark.parametrize("declare,function,where,culprit", [
    (_declare_activity_with_socket_param, "tp_cfg_socket", "parameter 'conn' of activity", "socket.socket"),
    (_declare_activity_with_plain_param, "tp_cfg_plain", "parameter 'thing' of activity", PLAIN),
    (_declare_activity_with_lambda_param, "tp_cfg_lambda", "parameter 'callback' of activity", "function"),
    (_declare_activity_returning_plain_list, "tp_cfg_returns", "return type of activity", PLAIN),
    (_declare_orchestration_with_socket_input, "tp_cfg_orch_in", "parameter 'conn' of orchestration",
     "socket.socket"),
    (_declare_orchestration_returning_plain, "tp_cfg_orch_out", "return type of orchestration", PLAIN),
], ids=["socket-param", "plain-class-param", "lambda-type-param", "list-of-plain-return", "orchestration-input",
        "orchestration-return"])
def test_unserializable_annotation_is_a_configuration_error_at_decoration(
        declare: Any, function: str, where: str, culprit: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        declare()
    err = info.value
    text = str(err)
    # Names the function and the parameter (or the return), and the type at fault, with a fix ...
    assert f"{where} '{function}'" in text and f"function {declare.__name__}.<locals>.{function} at " in text
    assert f"type {culprit}" in text and "cannot be a JSON payload" in text
    assert err.fix is not None and "dataclass" in err.fix
    # ... in duroxide's words: none of pydantic's advice, no URL, no chained pydantic error.
    assert not [w for w in PYDANTIC_WORDS if w in text], text
    assert err.__cause__ is None and err.__suppress_context__
    # Nothing half-declared was registered.
    assert function not in discovered_activities().names()
    assert function not in discovered_orchestrations().names()


def test_unresolvable_annotation_is_a_configuration_error_naming_the_function() -> None:
    with pytest.raises(ConfigurationError) as info:
        @activity(typed=True)
        async def tp_cfg_missing(order: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
            return 0
    text = str(info.value)
    assert "activity 'tp_cfg_missing'" in text and "NoSuchType" in text and "define or import" in text


@pytest.mark.parametrize("which,expected", [
    ("str-price", "argument 'order' of activity 'tp_charge': order.items[2].price: Input should be a valid number, "
                  "got str '12.50'. Fix: pass a value of type TpOrder (fix order.items[2].price)"),
    ("object-price", "argument 'order' of activity 'tp_charge': order.items[2].price holds object <object object"),
    ("object-in-note", "argument 'order' of activity 'tp_charge': order.items[2].note['gift'][1] holds object "),
])
async def test_encode_error_names_the_field_path(which: str, expected: str, duroxide_runtime: Runtime,
                                                 duroxide_client: Client) -> None:
    """In an orchestration: the error names the argument's path; nothing is scheduled."""
    out = await tp_charge_bad.run(duroxide_client, f"path-{which}", which, timeout=15)
    assert out.startswith(expected), out
    if which != "str-price":
        assert "cannot be encoded as JSON" in out and "Fix: put a JSON-friendly value in order.items[2]." in out
    assert not [w for w in PYDANTIC_WORDS if w in out], out
    history = await duroxide_client.read_history(f"path-{which}")
    assert events_of(history, Event.ActivityScheduled) == []


async def test_encode_error_names_the_field_path_at_the_client(duroxide_runtime: Runtime,
                                                               duroxide_client: Client) -> None:
    """Starting an instance with a bad input: the path starts at the orchestration's parameter."""
    with pytest.raises(PayloadError) as info:
        await tp_charge_order.start(duroxide_client, "path-client", tp_bad_order("str-price"))
    assert str(info.value).startswith("input of orchestration 'tp_charge_order': order.items[2].price: "
                                      "Input should be a valid number, got str '12.50'")
    with pytest.raises(PayloadError, match=r"order\.items\[2\]\.note\['gift'\]\[1\] holds object"):
        await tp_charge_order.start(duroxide_client, "path-client", tp_bad_order("object-in-note"))
    assert await duroxide_client.list_instances() == []
    # A good order still goes through.
    assert await tp_charge_order.run(duroxide_client, "path-ok", TpOrder("o-2", [TpLine("A", 1.5)]),
                                     timeout=15) == 1.5


@orchestration
async def tp_calls_early(ctx: OrchestrationContext, n: int) -> int:
    return await durable(tp_uses_early(TpEarly(TpLater(n))))


async def test_field_types_defined_later_work_and_undefined_ones_are_named(duroxide_runtime: Runtime,
                                                                           duroxide_client: Client) -> None:
    # A field type defined after the decorated function is fine: it exists by the first payload.
    assert await tp_calls_early.run(duroxide_client, "early-1", 7, timeout=15) == 7
    # One that never exists is a ConfigurationError naming it and the parameter, in duroxide's words.
    @activity(typed=True)
    async def tp_uses_broken(b: TpBroken) -> int:
        return 0

    with pytest.raises(ConfigurationError) as info:
        tp_uses_broken.encode_input(TpBroken(1))
    text = str(info.value)
    assert "parameter 'b' of activity 'tp_uses_broken'" in text and "type TpNeverDefined (in TpBroken)" in text
    assert not [w for w in PYDANTIC_WORDS if w in text], text
