"""One set of input limits for every store, checked where a value enters the API (issue 10, defects 6-8).

Every public client entry and every scheduling entry of the orchestration
context either stores a value exactly or refuses it with a typed error that
names the argument, before anything is stored: on memory, SQLite and
PostgreSQL alike. SQLite file trouble (not a database, corrupted, read-only,
another application's schema) is a ``StoreError`` with its own cause and fix.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duroxide_runtime import (
    Client,
    ConfigurationError,
    Event,
    InstanceNotFoundError,
    InvalidInputError,
    OrchestrationContext,
    OrchestrationStatus,
    PayloadError,
    PayloadTooLargeError,
    Provider,
    SqliteProvider,
    StoreError,
)
from duroxide_macros import orchestration
from duroxide_runtime.limits import (
    MAX_ID_CHARS, MAX_NAME_CHARS, MAX_REASON_CHARS, MAX_TIMER_SECONDS, MAX_VERSION_CHARS,
)
from duroxide_runtime.messages import StartOrchestration

from .support import PROVIDERS, Harness, drop_store, eventually, make_store

pytestmark = pytest.mark.timeout(300)

#: Text no store can hold, and the words the error uses for it.
UNSTORABLE = {"nul": "a\x00b", "surrogate": "a\udc80b"}
#: Text an identifier may not hold (payloads may).
NOT_AN_IDENTIFIER = {**UNSTORABLE, "escape": "a\x1b[2Jb", "cr": "a\rb", "newline": "a\nb", "c1": "a\x9bb",
                     "empty": ""}


async def nothing_stored(store: Provider) -> bool:
    """No instance and no visible orchestrator message in ``store``."""
    return not await store.list_instances() and not (await store.fetch_orchestration_items(10, 30.0)).items


# -- the client: ids, names, versions, payloads -------------------------------------------


@pytest.mark.parametrize("kind", sorted(NOT_AN_IDENTIFIER))
async def test_start_refuses_a_bad_identifier_naming_the_field(store: Provider, kind: str) -> None:
    client, bad = Client(store), NOT_AN_IDENTIFIER[kind]
    for kwargs, field in ((dict(instance_id=bad, name="N"), "instance_id"), (dict(instance_id="i", name=bad), "name"),
                          (dict(instance_id="i", name="N", version=bad), "version")):
        with pytest.raises(InvalidInputError) as err:
            await client.start_orchestration(**kwargs)
        assert err.value.field == field and err.value.code == "INVALID_INPUT"
        assert str(err.value).startswith(field) and "Fix:" in str(err.value)
    assert await nothing_stored(store)


async def test_identifier_lengths_are_one_limit_for_every_store(store: Provider) -> None:
    client = Client(store)
    for kwargs, field in ((dict(instance_id="i" * (MAX_ID_CHARS + 1), name="N"), "instance_id"),
                          (dict(instance_id="x" * 10_000, name="N"), "instance_id"),  # PostgreSQL NOTIFY limit
                          (dict(instance_id="x" * 3_000, name="N"), "instance_id"),   # PostgreSQL index limit
                          (dict(instance_id="i", name="n" * (MAX_NAME_CHARS + 1)), "name"),
                          (dict(instance_id="i", name="N", version="1" * (MAX_VERSION_CHARS + 1)), "version")):
        with pytest.raises(InvalidInputError, match="over the limit") as err:
            await client.start_orchestration(**kwargs)
        assert err.value.field == field
    assert await nothing_stored(store)
    longest = "\U0001f600" * MAX_ID_CHARS  # 1,024 UTF-8 bytes
    await client.start_orchestration(longest, "n" * MAX_NAME_CHARS, "", version="1" * MAX_VERSION_CHARS)
    info = await client.get_instance_info(longest)
    assert (info.instance_id, info.name, info.version) == (longest, "n" * MAX_NAME_CHARS, "1" * MAX_VERSION_CHARS)


@pytest.mark.parametrize("kind", sorted(UNSTORABLE))
async def test_payloads_with_nul_or_lone_surrogates_are_refused_at_the_client(store: Provider, kind: str) -> None:
    client, bad = Client(store), UNSTORABLE[kind]
    with pytest.raises(InvalidInputError, match="input") as err:
        await client.start_orchestration("i", "N", bad)
    assert err.value.field == "input" and ("NUL" if kind == "nul" else "surrogate") in str(err.value)
    assert await nothing_stored(store)
    await client.start_orchestration("i", "N", "")
    for call, field in ((client.raise_event("i", "ev", bad), "data"), (client.raise_event("i", bad, "d"), "name"),
                        (client.cancel_instance("i", bad), "reason")):
        with pytest.raises(InvalidInputError) as err:
            await call
        assert err.value.field == field
    with pytest.raises(InvalidInputError, match="reason"):
        await client.cancel_instance("i", "r" * (MAX_REASON_CHARS + 1))
    [item] = (await store.fetch_orchestration_items(10, 30.0)).items
    assert [type(m.message) for m in item.messages] == [StartOrchestration]  # no event, no cancel request


async def test_valid_unicode_round_trips_through_the_client(store: Provider) -> None:
    client = Client(store)
    text = "\t\r\n\x1b[31m\x7f\x85 \u202e\u2028 e\u0301 \u05e9\u05dc\u05d5\u05dd \u65e5\u672c \U0001f600 \U0010ffff"
    iid, name = "id \u65e5\u672c \U0001f600", "\u540d\u524d e\u0301"
    await client.start_orchestration(iid, name, text, version="1.0\u00e9")
    assert await client.read_history(iid) == []  # not started yet
    item = (await store.fetch_orchestration_items(10, 30.0)).items[0]
    assert item.messages[0].message == StartOrchestration(instance_id=iid, name=name, version="1.0\u00e9",
                                                          input=text, trace_context=None)
    assert await client.raise_event(iid, "ev \u00e9", text)
    assert await client.cancel_instance(iid, text)


async def test_lookups_refuse_wrong_types_and_unstorable_ids_but_read_legacy_ids(store: Provider) -> None:
    client = Client(store)
    for call in (client.get_orchestration_status(123), client.wait_for_orchestration(None, 1),  # type: ignore[arg-type]
                 client.get_instance_info(b"x"), client.read_history(1.5),  # type: ignore[arg-type]
                 client.list_executions(["x"]), client.purge(7)):  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match="instance_id must be str"):
            await call
    for bad in UNSTORABLE.values():
        with pytest.raises(InvalidInputError, match="instance_id"):
            await client.get_orchestration_status(bad)
    # An id written before the limits (or by another tool) can still be read and purged.
    legacy = "old\x1bid"
    await store.create_instance(StartOrchestration(instance_id=legacy, name="N", version=None, input=""))
    assert isinstance(await client.get_orchestration_status(legacy), OrchestrationStatus.Pending)
    assert (await client.get_instance_info(legacy)).instance_id == legacy


async def test_list_and_history_parameters_are_checked(store: Provider) -> None:
    client = Client(store)
    await client.start_orchestration("i", "N", "")
    for limit in ("x", 1.5, None, True):
        with pytest.raises(PayloadError, match="limit must be int"):
            await client.list_instances(limit=limit)  # type: ignore[arg-type]
    for limit in (-1, 0, 2**31, 2**70):
        with pytest.raises(InvalidInputError, match="limit") as err:
            await client.list_instances(limit=limit)
        assert err.value.field == "limit"
    with pytest.raises(InvalidInputError, match="status"):
        await client.list_instances(status="Done")
    with pytest.raises(PayloadError, match="name"):
        await client.list_instances(name=5)  # type: ignore[arg-type]
    for execution_id in (2**70, 2**63, 0, -1):
        with pytest.raises(InvalidInputError, match="execution_id"):
            await client.read_history("i", execution_id)
    with pytest.raises(PayloadError, match="execution_id must be int"):
        await client.read_history("i", "1")  # type: ignore[arg-type]
    assert await client.read_history("i", 2**63 - 1) == []
    assert [i.instance_id for i in await client.list_instances(limit=2**31 - 1)] == ["i"]
    with pytest.raises(InvalidInputError, match="force"):
        await client.purge("i", force="yes")  # type: ignore[arg-type]


async def test_wait_timeout_nan_is_refused_and_inf_waits_for_the_end(store: Provider) -> None:
    client = Client(store)
    for timeout in (math.nan, -1, "soon", timedelta(seconds=-1)):
        with pytest.raises(ConfigurationError, match="timeout"):
            await client.wait_for_orchestration("x", timeout)  # type: ignore[arg-type]
    assert await client.wait_for_orchestration("x", math.inf) == OrchestrationStatus.NotFound()


async def test_payload_limit_is_checked_in_bytes_at_the_client(store: Provider) -> None:
    client = Client(store)
    with pytest.raises(PayloadTooLargeError):
        await client.start_orchestration("big", "N", "\u00e9" * ((1 << 19) + 1))  # 1 MiB + 2 bytes
    await client.start_orchestration("big", "N", "x" * (1 << 20))  # exactly 1 MiB
    assert await client.raise_event("big", "ev", "y" * (1 << 20))


# -- the orchestration context -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    what: str
    call: Any


def _refusals(ctx: OrchestrationContext) -> list[tuple[str, Any]]:
    nan, inf = math.nan, math.inf
    return [
        ("activity name NUL", lambda: ctx.schedule_activity("Echo\x00", "x")),
        ("activity name too long", lambda: ctx.schedule_activity("E" * (MAX_NAME_CHARS + 1), "x")),
        ("activity input NUL", lambda: ctx.schedule_activity("Echo", "a\x00b")),
        ("activity input surrogate", lambda: ctx.schedule_activity("Echo", "a\ud800b")),
        ("activity timeout nan", lambda: ctx.schedule_activity("Echo", "x", timeout=nan)),
        ("timer nan", lambda: ctx.schedule_timer(nan)),
        ("timer inf", lambda: ctx.schedule_timer(inf)),
        ("timer 1e20", lambda: ctx.schedule_timer(1e20)),
        ("timer negative", lambda: ctx.schedule_timer(-1)),
        ("timer str", lambda: ctx.schedule_timer("5")),  # type: ignore[arg-type]
        ("wait name empty", lambda: ctx.schedule_wait("")),
        ("wait name escape", lambda: ctx.schedule_wait("go\x1b")),
        ("child id escape", lambda: ctx.schedule_sub_orchestration("Child", "x", instance_id="c\x1b]0;t\x07")),
        ("child id too long", lambda: ctx.schedule_sub_orchestration("Child", "x", instance_id="c" * 10_000)),
        ("child version NUL", lambda: ctx.schedule_sub_orchestration("Child", "x", version="1\x00")),
        ("child input surrogate", lambda: ctx.schedule_sub_orchestration("Child", "\udfff")),
        ("detached name newline", lambda: ctx.start_orchestration("Child\n", "d1", "x")),
        ("detached input NUL", lambda: ctx.start_orchestration("Child", "d1", "\x00")),
        ("custom status NUL", lambda: ctx.set_custom_status("s\x00")),
        ("custom status surrogate", lambda: ctx.set_custom_status("\ud800")),
        ("continue_as_new input NUL", lambda: ctx.continue_as_new("\x00")),
        ("continue_as_new version escape", lambda: ctx.continue_as_new("x", version="\x1b")),
    ]


async def refuser(ctx: OrchestrationContext, _: str) -> str:
    seen = {}
    for what, call in _refusals(ctx):
        try:
            call()
            seen[what] = "accepted"
        except (InvalidInputError, ConfigurationError, PayloadError) as err:
            seen[what] = f"{type(err).__name__}:{err.code}"
    return json.dumps(seen)


async def echo(text: str) -> str:
    return text


async def child(ctx: OrchestrationContext, text: str) -> str:
    return text


async def test_context_refuses_bad_input_at_the_call_site_and_schedules_nothing(harness: Harness) -> None:
    await harness.start({"Refuser": refuser, "Child": child}, {"Echo": echo})
    status = await harness.run("r", "Refuser")
    assert isinstance(status, OrchestrationStatus.Completed), status
    seen = json.loads(status.output)
    assert set(seen) == {what for what, _ in _refusals(None)}  # type: ignore[arg-type]
    accepted = [what for what, verdict in seen.items() if verdict == "accepted"]
    assert not accepted, f"accepted: {accepted}"
    for what, verdict in seen.items():
        want = "ConfigurationError:CONFIG" if "timer" in what or "timeout" in what else "InvalidInputError:INVALID_INPUT"
        assert verdict == want, (what, verdict)
    history = await harness.client.read_history("r")
    assert [type(e).__name__ for e in history] == ["OrchestrationStarted", "OrchestrationCompleted"]
    assert (await harness.client.get_instance_info("r")).custom_status is None
    assert {i.instance_id for i in await harness.client.list_instances()} == {"r"}


async def nan_timer(ctx: OrchestrationContext, _: str) -> str:
    await ctx.schedule_timer(math.nan)
    return "unreachable"


async def long_timer(ctx: OrchestrationContext, _: str) -> str:
    idx, _done = await ctx.select2(ctx.schedule_timer(MAX_TIMER_SECONDS), ctx.schedule_timer(0))
    return str(idx)


async def asyncio_sleep_nan(ctx: OrchestrationContext, _: str) -> str:
    await asyncio.sleep(math.nan)
    return "slept"


async def asyncio_sleep_huge(ctx: OrchestrationContext, _: str) -> str:
    try:
        await asyncio.sleep(1e20)
    except ConfigurationError as exc:
        return f"refused: {exc}"
    return "slept"


async def test_asyncio_sleep_with_a_delay_no_timer_can_hold_fails_at_the_call(harness: Harness) -> None:
    """asyncio.sleep is a durable timer: NaN fails its instance, 1e20 is refused before any store write."""
    await harness.start({"SleepNan": asyncio_sleep_nan, "SleepHuge": asyncio_sleep_huge, "LongTimer": long_timer})
    status = await harness.run("nan", "SleepNan")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "ConfigurationError" and "is NaN" in status.error
    done = await harness.run("huge", "SleepHuge")
    assert isinstance(done, OrchestrationStatus.Completed) and "over the limit" in str(done.output)
    assert await harness.run("long", "LongTimer") == OrchestrationStatus.Completed(output="1")


async def test_an_uncaught_bad_timer_fails_only_its_instance_and_the_longest_timer_is_stored(harness: Harness) -> None:
    await harness.start({"NanTimer": nan_timer, "LongTimer": long_timer})
    status = await harness.run("nan", "NanTimer")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "ConfigurationError" and "timer delay is NaN" in status.error
    assert await harness.run("long", "LongTimer") == OrchestrationStatus.Completed(output="1")


def test_nan_durations_in_options_and_retry_policies_are_refused() -> None:
    from duroxide_runtime import RetryPolicy, RuntimeOptions

    for bad in (dict(backoff=math.nan), dict(max_backoff=math.inf), dict(backoff_coefficient=math.nan)):
        with pytest.raises(ConfigurationError, match="RetryPolicy"):
            RetryPolicy(**bad)  # type: ignore[arg-type]
    for name in ("poll_interval", "orchestration_lock_timeout", "activity_lock_timeout"):
        with pytest.raises(ConfigurationError, match=name):
            RuntimeOptions(**{name: math.nan})  # type: ignore[arg-type]


# -- typed NaN and infinities ------------------------------------------------------------------


def test_typed_nan_and_infinities_are_refused_at_the_call_site() -> None:
    from duroxide_macros.codec import Codec, encode_value

    @dataclass
    class Series:
        value: float | None
        history: list[float]

    codec: Codec[Series] = Codec(Series, "argument 'r' of activity 'record'", root="r")
    for bad, path in ((Series(math.nan, []), "r.value"), (Series(1.0, [0.5, math.inf]), "r.history[1]"),
                      (Series(-math.inf, []), "r.value")):
        with pytest.raises(PayloadError) as err:
            codec.encode(bad)
        assert f"{path} is" in str(err.value) and "math.isfinite" in str(err.value)
    assert json.loads(codec.encode(Series(None, [1.5]))) == {"value": None, "history": [1.5]}
    with pytest.raises(PayloadError, match=r"data\['x'\] is nan"):
        encode_value({"x": math.nan}, "event 'e'", "data")
    with pytest.raises(PayloadError, match="value is inf"):
        Codec[float](float).encode(math.inf)
    assert encode_value({"x": None, "y": 2.0}, "event 'e'") == '{"x":null,"y":2.0}'


@dataclass
class Reading:
    sensor: str
    value: float


@orchestration
async def record_reading(ctx: OrchestrationContext, r: Reading) -> float:
    return r.value


async def test_typed_nan_is_refused_by_the_typed_client_calls_storing_nothing(store: Provider) -> None:
    client = Client(store)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(PayloadError, match=r"\.value is .*JSON cannot represent"):
            await record_reading.start(client, "r-1", Reading("t1", bad))
    assert await nothing_stored(store)
    await record_reading.start(client, "r-1", Reading("t1", 20.5))
    with pytest.raises(PayloadError, match="JSON cannot represent"):
        await record_reading.raise_event(client, "r-1", "calibrate", {"offset": math.nan})
    [item] = (await store.fetch_orchestration_items(10, 30.0)).items
    assert [type(m.message) for m in item.messages] == [StartOrchestration]


# -- SQLite file trouble ----------------------------------------------------------------------

_GENERIC_FIX = "check the file's permissions and free disk space"


async def _open_error(path: Path) -> StoreError:
    with pytest.raises(StoreError) as err:
        store = await SqliteProvider.new(str(path))
        try:
            await Client(store).list_instances()
        finally:
            await store.close()
    assert err.value.fix and _GENERIC_FIX not in err.value.fix
    return err.value


async def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    err = await _open_error(path)
    assert "is not a SQLite database" in err.message and "holds something else" in (err.fix or "")
    assert path.read_text().startswith("these are my notes")  # untouched


async def test_sqlite_corrupted_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = await SqliteProvider.new(str(path))
    client = Client(store)
    for i in range(100):
        await client.start_orchestration(f"i{i}", "N", "x" * 400)
    await store.close()
    with open(path, "r+b") as f:  # overwrite b-tree pages after the header page
        f.seek(4096)
        f.write(b"\xa5" * 4096 * 6)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    err = await _open_error(path)
    assert "is corrupted" in err.message and "backup" in (err.fix or "") and "integrity_check" in (err.fix or "")


async def test_sqlite_database_of_another_application_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE instances (id INTEGER PRIMARY KEY, hostname TEXT)")
    conn.execute("INSERT INTO instances(hostname) VALUES ('web-1')")
    conn.commit()
    conn.close()
    err = await _open_error(path)
    assert "is not a duroxide store" in err.message and "'instances'" in err.message
    assert "a file of its own" in (err.fix or "")
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"instances"}  # nothing was added to the other application's file


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Any]:
    """Makes a path read-only for this process (chmod; as root, which ignores modes, ``chattr +i``)."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                                capture_output=True).returncode != 0:
                pytest.skip("running as root on a file system without chattr +i: cannot make a path read-only")
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


async def test_sqlite_read_only_directory(tmp_path: Path, read_only: Any) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    store = await SqliteProvider.new(str(directory / "existing.db"))
    await Client(store).start_orchestration("i", "N", "")
    await store.close()
    read_only(directory)
    for name in ("new.db", "existing.db"):
        err = await _open_error(directory / name)
        assert "cannot open or create" in err.message and "directory" in (err.fix or "")
        assert "-wal" in (err.fix or "")
    assert not (directory / "new.db").exists()


async def test_sqlite_read_only_file(tmp_path: Path, read_only: Any) -> None:
    path = tmp_path / "frozen.db"
    store = await SqliteProvider.new(str(path))
    await Client(store).start_orchestration("i", "N", "")
    await store.close()
    read_only(path)
    with pytest.raises(StoreError) as err:
        store = await SqliteProvider.new(str(path))
        try:
            await Client(store).start_orchestration("j", "N", "")
        finally:
            await store.close()
    assert "read-only" in err.value.message or "cannot open" in err.value.message
    assert err.value.fix and _GENERIC_FIX not in err.value.fix


# -- hypothesis: hostile text through every entry, on every store ------------------------------

_BIG = "\U0001f600" * (1 << 18)  # 1 MiB of UTF-8, exactly at the payload limit
HOSTILE = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec=None, categories=["Cc", "Cs", "Cf", "Zl", "Zp"]), max_size=8),
    st.sampled_from(["", "\x00", "\ud800", "a\udfffb", "\x1b]0;pwned\x07", "\r\n", "x" * 257, _BIG, _BIG + "x",
                     "\U0010ffff", "e\u0301"]),
)
DURATIONS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2**70),
                      st.sampled_from([math.nan, math.inf, -math.inf, 1e20, MAX_TIMER_SECONDS, 0]))


def _storable_text(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)


def _identifier(text: str, limit: int) -> bool:
    return (_storable_text(text) and 0 < len(text) <= limit
            and not any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in text))


def _fits(text: str) -> bool:
    return len(text.encode("utf-8", "surrogatepass")) <= 1 << 20


#: Hostile text for the orchestration of one instance (the runtime runs in this process).
PROBES: dict[str, tuple[str, float]] = {}


async def waiter(ctx: OrchestrationContext, _: str) -> str:
    return await ctx.schedule_wait("never")


async def probe(ctx: OrchestrationContext, _: str) -> str:
    text, delay = PROBES[ctx.instance_id]
    seen: dict[str, Any] = {}
    try:
        seen["activity"] = (await ctx.schedule_activity("Echo", text)) == text
    except PayloadError as err:
        seen["activity"] = err.code
    try:
        ctx.set_custom_status(text)
        seen["status"] = True
    except PayloadError as err:
        seen["status"] = err.code
    try:
        seen["child"] = (await ctx.schedule_sub_orchestration("Child", text)) == text
    except PayloadError as err:
        seen["child"] = err.code
    child_id = f"{ctx.instance_id}-{text}"
    try:
        seen["child id"] = (await ctx.schedule_sub_orchestration("Child", "c", instance_id=child_id)) == "c"
    except PayloadError as err:
        seen["child id"] = err.code
    try:
        wait = ctx.schedule_wait(text)
        seen["wait"] = True
        seen["data"] = await wait
    except PayloadError as err:
        seen["wait"] = err.code
    try:
        idx, _done = await ctx.select2(ctx.schedule_timer(delay), ctx.schedule_timer(0))
        seen["timer"] = True
    except ConfigurationError as err:
        seen["timer"] = err.code
    return json.dumps(seen)


@pytest.mark.parametrize("kind", PROVIDERS)
def test_hostile_text_round_trips_exactly_or_is_refused_before_storing(kind: str, tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        store = loop.run_until_complete(make_store(kind, tmp_path))
        harness = Harness(store, "cached")
        loop.run_until_complete(harness.start({"Probe": probe, "Child": child, "Waiter": waiter}, {"Echo": echo}))
        try:
            _hostile_examples(loop, harness)
        finally:
            loop.run_until_complete(harness.stop())
            loop.run_until_complete(drop_store(store))
    finally:
        loop.close()


def _hostile_examples(loop: asyncio.AbstractEventLoop, h: Harness) -> None:
    client = h.client
    outcomes: set[str] = set()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(text=HOSTILE, delay=DURATIONS)
    @example(text="\x00", delay=math.nan)
    @example(text="ok \U0001f600 \x1b[2J\r", delay=0.0)
    @example(text=_BIG, delay=1e20)
    def check(text: str, delay: float) -> None:
        loop.run_until_complete(asyncio.wait_for(one(text, delay), 120))

    async def one(text: str, delay: float) -> None:
        before = {i.instance_id for i in await client.list_instances()}
        # Client entries that store the text as an identifier: accepted exactly, or refused storing nothing.
        iid = f"h-{uuid.uuid4().hex}"
        for kwargs in (dict(instance_id=text, name="Probe"), dict(instance_id=iid, name=text),
                       dict(instance_id=iid, name="Probe", version=text)):
            field = next(k for k, v in kwargs.items() if v is text)
            limit = {"instance_id": MAX_ID_CHARS, "name": MAX_NAME_CHARS, "version": MAX_VERSION_CHARS}[field]
            if _identifier(text, limit):
                continue  # storing it would start an instance of an unknown name or version
            with pytest.raises(PayloadError):
                await client.start_orchestration(**kwargs)
        assert {i.instance_id for i in await client.list_instances()} == before
        # The text as input, and (inside the orchestration) as activity input, custom status, child
        # input, event name, and a hostile timer delay.
        PROBES[iid] = (text, delay)
        if not (_storable_text(text) and _fits(text)):
            with pytest.raises(PayloadError):
                await client.start_orchestration(iid, "Probe", text)
            assert {i.instance_id for i in await client.list_instances()} == before
            await client.start_orchestration(iid, "Probe", "")
        else:
            await client.start_orchestration(iid, "Probe", text)
        if _identifier(text, MAX_NAME_CHARS):
            await eventually(lambda: _subscribed(client, iid), timeout=60, what="event wait")
            if _storable_text(text) and _fits(text):
                assert await client.raise_event(iid, text, text)
            else:
                with pytest.raises(PayloadError):
                    await client.raise_event(iid, text, text)
                await client.raise_event(iid, text, "")
        status = await client.wait_for_orchestration(iid, 60)
        assert isinstance(status, OrchestrationStatus.Completed), (status, text[:50], delay)
        seen = json.loads(status.output)
        ok_text = _storable_text(text)
        ok_payload = ok_text and _fits(text)
        outcomes.add("payload stored" if ok_payload else "payload refused")
        outcomes.add("name stored" if _identifier(text, MAX_NAME_CHARS) else "name refused")
        assert seen["activity"] is True if ok_payload else seen["activity"] in ("INVALID_INPUT", "PAYLOAD_TOO_LARGE")
        assert seen["child"] is True if ok_payload else seen["child"] in ("INVALID_INPUT", "PAYLOAD_TOO_LARGE")
        ok_status = ok_text and len(text.encode()) <= 16 * 1024
        assert seen["status"] is True if ok_status else seen["status"] in ("INVALID_INPUT", "PAYLOAD_TOO_LARGE")
        info = await client.get_instance_info(iid)
        assert info.custom_status == (text if ok_status else None)
        if _identifier(text, MAX_NAME_CHARS):
            assert seen["wait"] is True and seen["data"] == (text if ok_payload else "")
        else:
            assert seen["wait"] == "INVALID_INPUT"
        good_delay = (not isinstance(delay, bool) and not (isinstance(delay, float) and math.isnan(delay))
                      and 0 <= delay <= MAX_TIMER_SECONDS)
        assert seen["timer"] is True if good_delay else seen["timer"] == "CONFIG"
        outcomes.add("timer stored" if good_delay else "timer refused")
        history = await client.read_history(iid)
        started = history[0]
        assert isinstance(started, Event.OrchestrationStarted) and started.input == (text if ok_payload else "")
        scheduled = [e for e in history if isinstance(e, Event.ActivityScheduled)]
        assert [e.input for e in scheduled] == ([text] if ok_payload else [])
        child_id = f"{iid}-{text}"
        if _identifier(child_id, MAX_ID_CHARS):
            assert seen["child id"] is True and (await client.get_instance_info(child_id)).parent_instance_id == iid
        else:
            assert seen["child id"] == "INVALID_INPUT"
        del PROBES[iid]
        # Lookups take any storable text; unstorable text is refused, not sent to the store.
        lookups = (client.get_orchestration_status(text), client.wait_for_orchestration(text, 0),
                   client.get_instance_info(text), client.read_history(text), client.list_executions(text),
                   client.purge(text), client.list_instances(name=text), client.raise_event(text, "e", ""),
                   client.cancel_instance(text))
        for lookup in lookups:
            if ok_text:
                try:
                    found = await lookup
                    assert found in ([], OrchestrationStatus.NotFound()) or text in ("Probe", "Child", "Waiter")
                except InstanceNotFoundError:
                    pass
            else:
                with pytest.raises(InvalidInputError):
                    await lookup
        # A cancel reason is stored exactly, or refused.
        wid = f"w-{uuid.uuid4().hex}"
        await client.start_orchestration(wid, "Waiter", "")
        await eventually(lambda: _subscribed(client, wid), timeout=60, what="waiter subscribed")
        reason_ok = ok_text and len(text) <= MAX_REASON_CHARS
        if reason_ok:
            assert await client.cancel_instance(wid, text)
            outcomes.add("reason stored")
        else:
            with pytest.raises(InvalidInputError):
                await client.cancel_instance(wid, text)
            outcomes.add("reason refused")
            assert await client.cancel_instance(wid, "plain")
        status = await client.wait_for_orchestration(wid, 60)
        assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
        assert status.details.message == (text if reason_ok else "plain")

    check()
    assert outcomes == {f"{what} {verdict}" for what in ("payload", "name", "timer", "reason")
                        for verdict in ("stored", "refused")}


async def _subscribed(client: Client, iid: str) -> bool:
    return any(isinstance(e, Event.EventSubscribed) for e in await client.read_history(iid))
