"""The ``duroxide`` console script, run as a real subprocess against real stores.

Each store (a SQLite file, a fresh PostgreSQL schema) is first populated by a
real runtime: a completed instance, a failed one, three waiting on an event,
one that continued as new twice, and a parent with a child. The runtime keeps
running while the tool works, so cancel and raise are seen to take effect.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from duroxide_runtime import Client, OrchestrationContext, OrchestrationStatus
from duroxide_runtime.history import encode_event

from .redis_session import REDIS
from .support import PG_URL, Harness, clean_env, drop_store, eventually, make_store

pytestmark = pytest.mark.timeout(120)

DUROXIDE = Path(sys.executable).parent / "duroxide"


# -- the orchestrations that fill the store ---------------------------------------------------


async def greet(name: str) -> str:
    return f"Hello, {name}!"


async def hello(ctx: OrchestrationContext, name: str) -> str:
    ctx.set_custom_status("greeted")
    greeting = await ctx.schedule_activity("Greet", name)
    await ctx.schedule_timer(0.05)
    return greeting


async def boom(ctx: OrchestrationContext, _: str) -> str:
    raise ValueError("boom")


async def wait_approval(ctx: OrchestrationContext, _: str) -> str:
    ctx.set_custom_status("waiting for approval")
    return await ctx.schedule_wait("approval")


async def counter(ctx: OrchestrationContext, n: str) -> str:
    if int(n) < 2:
        ctx.continue_as_new(str(int(n) + 1))
    return f"counted to {n}"


async def child(ctx: OrchestrationContext, text: str) -> str:
    return text.upper()


async def parent(ctx: OrchestrationContext, text: str) -> str:
    return await ctx.schedule_sub_orchestration("Child", text, instance_id="parent-1-child")


ORCHESTRATIONS = {"Hello": hello, "Boom": boom, "Wait": wait_approval, "Counter": counter, "Child": child,
                  "Parent": parent}
STARTS = [("done-1", "Hello", "World"), ("fail-1", "Boom", ""), ("wait-1", "Wait", ""), ("wait-2", "Wait", ""),
          ("wait-3", "Wait", ""), ("count-1", "Counter", "0"), ("parent-1", "Parent", "abc")]
ALL_IDS = {s[0] for s in STARTS} | {"parent-1-child"}
WAITING = {"wait-1", "wait-2", "wait-3"}


# -- running the tool ------------------------------------------------------------------------


@dataclass
class Result:
    """Exit code and output of one run of the tool."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def err_json(self) -> Any:
        return json.loads(self.err)


@dataclass
class Cli:
    """Runs ``duroxide`` with the store options first (without blocking the runtime's event loop)."""

    store_args: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    async def __call__(self, *args: str, stdin: str | None = None, with_store: bool = True,
                       **env: str) -> Result:
        assert DUROXIDE.exists(), f"console script {DUROXIDE} is not installed (pip install -e .)"
        environ = clean_env(**{**self.env, **env})
        if "DUROXIDE_STORE" not in env:
            environ.pop("DUROXIDE_STORE", None)
        argv = [*(self.store_args if with_store else []), *args]
        proc = await asyncio.create_subprocess_exec(
            str(DUROXIDE), *argv, cwd=self.cwd, env=environ, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), 30)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class World:
    """A populated store, the client and runtime on it, and the tool pointed at it."""

    kind: str
    harness: Harness
    cli: Cli
    url: str

    @property
    def client(self) -> Client:
        return self.harness.client


async def _populate(h: Harness) -> None:
    for instance_id, name, payload in STARTS:
        await h.client.start_orchestration(instance_id, name, payload)
    for instance_id in [*(s[0] for s in STARTS if s[0] not in WAITING), "parent-1-child"]:  # parent first
        status = await h.client.wait_for_orchestration(instance_id, 15)
        assert status.is_terminal, f"{instance_id}: {status}"
    for instance_id in WAITING:
        await eventually(partial(_subscribed, h.client, instance_id), what=f"{instance_id} waiting")


async def _subscribed(client: Client, instance_id: str) -> bool:
    return any(type(e).__name__ == "EventSubscribed" for e in await client.read_history(instance_id))


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """A store of each kind, filled by a real runtime that keeps running during the test."""
    kind = str(request.param)
    store = await make_store(kind, tmp_path)  # PostgreSQL unreachable: the test fails here, never skips
    if kind == "sqlite":
        url, store_args = f"sqlite://{tmp_path / 'test.db'}", ["--store", str(tmp_path / "test.db")]
    elif kind == "redis":  # --schema names the key prefix
        url, store_args = REDIS.url(), ["--store", REDIS.url(), "--schema", getattr(store, "prefix")]
    else:
        schema = getattr(store, "schema")
        url, store_args = PG_URL, ["--store", PG_URL, "--schema", schema]
    harness = Harness(store, "cached")
    try:
        await harness.start(ORCHESTRATIONS, {"Greet": greet})
        await _populate(harness)
        yield World(kind, harness, Cli(store_args, tmp_path), url)
    finally:
        await harness.stop()
        await drop_store(store)


# -- list ------------------------------------------------------------------------------------


async def test_list_table_json_and_filters(world: World) -> None:
    text = await world.cli("list")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "VERSION", "STATUS", "EXEC", "CREATED", "UPDATED", "CUSTOM", "STATUS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == ALL_IDS
    assert re.match(r"wait-1\s+Wait\s+1\.0\.0\s+Running\s+1\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+.*"
                    r"'waiting for approval'$", rows["wait-1"])
    assert re.match(r"count-1\s+Counter\s+1\.0\.0\s+Completed\s+3\s", rows["count-1"])

    listed = (await world.cli("list", "--json")).json()
    assert {i["instance_id"] for i in listed} == ALL_IDS
    by_id = {i["instance_id"]: i for i in listed}
    assert by_id["fail-1"]["status"] == "Failed" and by_id["fail-1"]["error"] == "ValueError: boom"
    assert by_id["done-1"] == {**by_id["done-1"], "name": "Hello", "version": "1.0.0", "output": "Hello, World!",
                               "custom_status": "greeted", "execution_id": 1, "parent_instance_id": None}
    assert by_id["parent-1-child"]["parent_instance_id"] == "parent-1"

    running = (await world.cli("--json", "list", "--status", "running")).json()
    assert {i["instance_id"] for i in running} == WAITING
    failed = (await world.cli("list", "--status", "Failed", "--json")).json()
    assert [i["instance_id"] for i in failed] == ["fail-1"]
    counters = (await world.cli("list", "--name", "Counter", "--json")).json()
    assert [(i["instance_id"], i["execution_id"]) for i in counters] == [("count-1", 3)]
    assert len((await world.cli("list", "--limit", "2", "--json")).json()) == 2
    assert (await world.cli("list", "--name", "Nope", "--json")).json() == []
    none = await world.cli("list", "--name", "Nope")
    assert none.code == 0 and none.out.strip() == "no instances match"


async def test_store_from_environment(world: World) -> None:
    extra = [] if world.kind == "sqlite" else ["--schema", world.cli.store_args[-1]]
    result = await world.cli(*extra, "list", "--json", with_store=False, DUROXIDE_STORE=world.url)
    assert result.code == 0, result.err
    assert {i["instance_id"] for i in result.json()} == ALL_IDS


# -- show ------------------------------------------------------------------------------------


def _labelled(out: str) -> dict[str, str]:
    """``label: value`` lines of ``show`` as a dict (traceback lines excluded)."""
    pairs = (re.fullmatch(r"([a-z ]+):\s+(.*)", line) for line in out.splitlines())
    return {m.group(1): m.group(2) for m in pairs if m}


async def test_show_text_and_json(world: World) -> None:
    done = await world.cli("show", "done-1")
    assert done.code == 0, done.err
    fields = _labelled(done.out)
    assert fields["status"] == "Completed" and fields["custom status"] == "greeted"
    assert fields["output"] == "Hello, World!" and fields["version"] == "1.0.0" and fields["parent"] == "-"

    failed = await world.cli("show", "fail-1")
    assert failed.code == 0
    assert "error:         ValueError: boom" in failed.out
    assert "traceback:" in failed.out and 'raise ValueError("boom")' in failed.out

    body = (await world.cli("show", "fail-1", "--json")).json()
    assert body["status"] == "Failed" and body["executions"] == [1]
    assert body["error_details"]["error_type"] == "ValueError" and body["error_details"]["message"] == "boom"
    assert "Traceback (most recent call last)" in body["error_details"]["traceback"]

    counted = (await world.cli("--json", "show", "count-1")).json()
    assert counted["executions"] == [1, 2, 3] and counted["execution_id"] == 3
    assert counted["output"] == "counted to 2" and counted["error_details"] is None
    assert (await world.cli("--json", "show", "parent-1-child")).json()["parent_instance_id"] == "parent-1"
    waiting = await world.cli("show", "wait-1")
    assert "status:        Running" in waiting.out and "custom status: waiting for approval" in waiting.out
    assert "execution:     1 (executions: 1)" in waiting.out
    # Where it stands in the code: the wait's file:line, as the history recorded it.
    assert f"waiting on:    event 'approval' at {_line_of(wait_approval, 'schedule_wait')}" in waiting.out
    [call] = (await world.cli("--json", "show", "wait-1")).json()["waiting_on"]
    assert call["kind"] == "event" and call["name"] == "approval"
    assert call["source"] == _line_of(wait_approval, "schedule_wait")
    assert (await world.cli("--json", "show", "count-1")).json()["waiting_on"] == []  # it has ended


# -- history ---------------------------------------------------------------------------------


def _timeline(out: str) -> list[tuple[int, float, str]]:
    """``(event id, offset in ms, description)`` per timeline line (after the header), without the source."""
    return [row[:3] for row in _timeline_at(out)]


def _timeline_at(out: str) -> list[tuple[int, float, str, str | None]]:
    """``(event id, offset in ms, description, "file:line" or None)`` per timeline line (after the header)."""
    rows = []
    for line in out.splitlines()[1:]:
        m = re.fullmatch(r"\s*#(\d+)\s+\+(\d+\.\d+) (ms|s)\s+(.*?)(?:  at (\S+:\d+))?", line)
        assert m, f"not a timeline line: {line!r}"
        scale = 1.0 if m.group(3) == "ms" else 1000.0
        rows.append((int(m.group(1)), float(m.group(2)) * scale, m.group(4), m.group(5)))
    return rows


def _line_of(fn: Any, needle: str) -> str:
    """``file:line`` (as the runtime records it) of the line of ``fn`` that contains ``needle``."""
    lines, first = inspect.getsourcelines(fn)
    number = first + next(i for i, text in enumerate(lines) if needle in text)
    path = os.path.abspath(inspect.getfile(fn))
    relative = os.path.relpath(path)
    return f"{path if relative.startswith(os.pardir) else relative}:{number}"


async def test_history_timeline(world: World) -> None:
    result = await world.cli("history", "done-1")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "done-1 (Hello) execution 1 of 1, Completed"
    rows = _timeline(result.out)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0][1] == 0.0 and [r[1] for r in rows] == sorted(r[1] for r in rows)
    what = [r[2] for r in rows]
    assert what[:3] == ["OrchestrationStarted Hello@1.0.0('World')", "ActivityScheduled Greet('World')",
                        "ActivityCompleted #2 -> 'Hello, World!'"]
    fires = re.fullmatch(r"TimerCreated fires at \+(\d+\.\d) ms", what[3])
    assert fires and float(fires.group(1)) >= 50.0
    assert what[4:] == ["TimerFired #4", "OrchestrationCompleted -> 'Hello, World!'"]
    assert rows[4][1] >= float(fires.group(1))  # the timer fired no earlier than it was due
    # Schedule events say which line of the orchestration made them; the others do not.
    sources = [r[3] for r in _timeline_at(result.out)]
    assert sources == [None, _line_of(hello, "schedule_activity"), None, _line_of(hello, "schedule_timer"), None, None]

    assert _timeline((await world.cli("history", "fail-1")).out)[-1][2] == "OrchestrationFailed ValueError: boom"
    parent_rows = [r[2] for r in _timeline((await world.cli("history", "parent-1")).out)]
    assert parent_rows[1:] == ["SubOrchestrationScheduled Child('abc') as 'parent-1-child'",
                               "SubOrchestrationCompleted #2 -> 'ABC'", "OrchestrationCompleted -> 'ABC'"]
    child_rows = _timeline((await world.cli("history", "parent-1-child")).out)
    assert child_rows[0][2] == "OrchestrationStarted Child@1.0.0('abc') (child of 'parent-1')"
    waiting = await world.cli("history", "wait-1")
    assert [r[2] for r in _timeline(waiting.out)][1:] == ["EventSubscribed 'approval'"]
    assert _timeline_at(waiting.out)[1][3] == _line_of(wait_approval, "schedule_wait")
    assert _timeline_at((await world.cli("history", "parent-1")).out)[1][3] == _line_of(parent, "schedule_sub")

    current = await world.cli("history", "count-1")
    assert current.out.splitlines()[0] == "count-1 (Counter) execution 3 of 3, Completed"
    assert _timeline(current.out)[0][2] == "OrchestrationStarted Counter@1.0.0('2')"
    first_run = await world.cli("history", "count-1", "--execution", "1")
    first = [r[2] for r in _timeline(first_run.out)]
    assert first == ["OrchestrationStarted Counter@1.0.0('0')", "OrchestrationContinuedAsNew with '1'"]
    # An earlier execution is labelled by how it ended, not by the instance's (current) status.
    assert first_run.out.splitlines()[0] == "count-1 (Counter) execution 1 of 3, ContinuedAsNew"
    second = await world.cli("history", "count-1", "--execution", "2")
    assert second.out.splitlines()[0] == "count-1 (Counter) execution 2 of 3, ContinuedAsNew"
    last = await world.cli("history", "count-1", "--execution", "3")
    assert last.out.splitlines()[0] == "count-1 (Counter) execution 3 of 3, Completed"

    missing = await world.cli("history", "count-1", "--execution", "9")
    assert missing.code == 1 and "no execution 9" in missing.err and "fix: pick one of: 1, 2, 3" in missing.err


async def test_history_json_is_the_stored_events(world: World) -> None:
    for instance_id, execution in (("done-1", None), ("fail-1", None), ("count-1", 2)):
        args = ["history", instance_id, "--json"] + (["--execution", str(execution)] if execution else [])
        result = await world.cli(*args)
        assert result.code == 0, result.err
        stored = await world.client.read_history(instance_id, execution)
        assert result.json() == [json.loads(encode_event(e)) for e in stored]
    scheduled = [e for e in (await world.cli("history", "done-1", "--json")).json() if e["type"] == "ActivityScheduled"]
    assert [e["source"] for e in scheduled] == [_line_of(hello, "schedule_activity")]
    events = (await world.cli("--json", "history", "fail-1")).json()
    assert events[-1]["type"] == "OrchestrationFailed"
    assert events[-1]["details"]["error_type"] == "ValueError" and "Traceback" in events[-1]["details"]["traceback"]


# -- cancel and raise ------------------------------------------------------------------------


async def test_cancel_and_raise_reach_running_instances(world: World) -> None:
    cancel = await world.cli("cancel", "wait-2", "--reason", "ops said so")
    assert (cancel.code, cancel.out.strip()) == (0, "cancel requested for wait-2"), cancel.err
    status = await world.client.wait_for_orchestration("wait-2", 15)
    assert isinstance(status, OrchestrationStatus.Failed) and "ops said so" in status.error

    raised = await world.cli("raise", "wait-1", "approval", "yes")
    assert (raised.code, raised.out.strip()) == (0, "event 'approval' raised on wait-1"), raised.err
    assert await world.client.wait_for_orchestration("wait-1", 15) == OrchestrationStatus.Completed(
        output="yes", custom_status="waiting for approval")

    piped = await world.cli("--json", "raise", "wait-3", "approval", "-", stdin='{"ok": true}\n')
    assert piped.code == 0 and piped.json() == {"instance_id": "wait-3", "delivered": True}, piped.err
    done = await world.client.wait_for_orchestration("wait-3", 15)
    assert isinstance(done, OrchestrationStatus.Completed) and done.output == '{"ok": true}\n'
    history = [r[2] for r in _timeline((await world.cli("history", "wait-3")).out)]
    assert "EventRaised 'approval' '{\"ok\": true}\\n'" in history


async def test_cancel_and_raise_on_finished_instances_do_nothing(world: World) -> None:
    cancel = await world.cli("cancel", "done-1")
    assert cancel.code == 0 and cancel.out == "" and "done-1: already Completed; nothing done" in cancel.err
    raised = await world.cli("raise", "fail-1", "approval", "x", "--json")
    assert raised.code == 0 and raised.json() == {"instance_id": "fail-1", "delivered": False, "status": "Failed"}
    assert "already Failed; nothing done" in raised.err
    assert await world.client.get_orchestration_status("done-1") == OrchestrationStatus.Completed(
        output="Hello, World!", custom_status="greeted")


# -- purge ------------------------------------------------------------------------------------


async def _ids(world: World, *args: str) -> set[str]:
    return {i["instance_id"] for i in (await world.cli("list", "--json", *args)).json()}


async def test_purge_one_instance(world: World) -> None:
    running = await world.cli("purge", "wait-1")
    assert running.code == 1
    assert "error: instance 'wait-1' is still running and was not purged" in running.err
    assert "fix: cancel it first (`duroxide cancel ID`) or pass --force" in running.err

    tree = await world.cli("purge", "parent-1", "--json")
    assert tree.code == 0 and sorted(tree.json()["purged"]) == ["parent-1", "parent-1-child"], tree.err
    gone = await world.cli("show", "parent-1-child")
    assert gone.code == 1 and "no instance 'parent-1-child'" in gone.err

    forced = await world.cli("purge", "wait-1", "--force")
    assert (forced.code, forced.out.strip()) == (0, "purged 1 instance(s): wait-1"), forced.err
    assert await _ids(world) == ALL_IDS - {"parent-1", "parent-1-child", "wait-1"}


async def test_bulk_purge(world: World) -> None:
    before = await _ids(world)
    declined = await world.cli("purge", "--status", "Completed")  # stdin is empty: no confirmation
    assert declined.code == 1 and "purge 4 Completed instance(s), with their sub-orchestrations? [y/N]" in declined.err
    assert "error: nothing was purged" in declined.err and "--yes" in declined.err
    assert await _ids(world) == before

    recent = await world.cli("purge", "--status", "Failed", "--older-than", "3600", "--yes")
    assert (recent.code, recent.out.strip()) == (0, "no Failed instances to purge")

    bulk = await world.cli("purge", "--status", "completed", "--older-than", "0", "--yes", "--progress", "--json")
    assert bulk.code == 0, bulk.err
    assert sorted(bulk.json()["purged"]) == ["count-1", "done-1", "parent-1", "parent-1-child"]
    assert "purging [##############################] 4/4" in bulk.err
    assert await _ids(world, "--status", "Completed") == set()

    quiet = await world.cli("purge", "--status", "Failed", stdin="y\n")  # stderr is a pipe: no progress
    assert (quiet.code, quiet.out.strip()) == (0, "purged 1 instance(s)"), quiet.err
    assert "[y/N]" in quiet.err and "purging" not in quiet.err
    assert await _ids(world) == WAITING


# -- errors ----------------------------------------------------------------------------------


async def test_unknown_instance_is_exit_1_with_fix(world: World) -> None:
    for args in (["show", "nope"], ["history", "nope"], ["cancel", "nope"], ["raise", "nope", "x"],
                 ["purge", "nope"]):
        result = await world.cli(*args)
        assert result.code == 1, (args, result)
        assert result.out == ""
        assert re.search(r"^error: .*no instance 'nope' in this store$", result.err, re.M), result.err
        assert "fix: check the instance id (`duroxide list` shows what exists)" in result.err
    as_json = await world.cli("--json", "show", "nope")
    assert as_json.code == 1 and as_json.out == ""
    body = as_json.err_json()
    assert body["code"] == "INSTANCE_NOT_FOUND" and "no instance 'nope'" in body["message"]
    assert "duroxide list" in body["fix"]


async def test_missing_sqlite_database_is_reported_not_created(tmp_path: Path) -> None:
    cli = Cli([], tmp_path)
    for spec in ("missing.db", f"sqlite://{tmp_path / 'missing.db'}", "sqlite:missing.db"):
        result = await cli("--store", spec, "list")
        assert result.code == 1, result
        assert "error: no such database: " in result.err and "missing.db" in result.err
        assert "fix: " in result.err and "never creates a store" in result.err
    body = (await cli("--store", "missing.db", "--json", "list")).err_json()
    assert body["code"] == "NO_SUCH_DATABASE" and body["fix"]
    (tmp_path / "notes.txt").write_text("not a database\n")
    garbage = await cli("--store", "notes.txt", "show", "x")
    assert garbage.code == 1 and "notes.txt is not a SQLite database" in garbage.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


async def test_postgres_missing_schema_and_server(tmp_path: Path) -> None:
    cli = Cli([], tmp_path)
    schema = "t_cli_absent_schema"
    result = await cli("--store", PG_URL, "--schema", schema, "list")
    assert result.code == 1 and f"error: no duroxide store in schema '{schema}'" in result.err, result
    conn = await asyncpg.connect(PG_URL)  # a missing server fails here
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname=$1", schema) is None
    finally:
        await conn.close()
    down = await cli("--json", "--store", "postgresql://postgres@127.0.0.1:1/test", "list")
    assert down.code == 1 and down.err_json()["code"] == "STORE"
    assert "cannot connect to PostgreSQL" in down.err_json()["message"]


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["list"], "no store given: pass --store URL_OR_PATH or set DUROXIDE_STORE"),
    (["--store", "x.db", "list", "--status", "Bogus"], "'Bogus' is not one of Pending, Running, Completed, Failed"),
    (["--store", "x.db", "list", "--limit", "0"], "'0' must be 1 or more"),
    (["--store", "x.db", "show"], "the following arguments are required: ID"),
    (["--store", "x.db", "history", "i", "--execution", "x"], "'x' is not a whole number"),
    (["--store", "x.db", "purge"], "purge takes either an instance ID or --status Completed|Failed"),
    (["--store", "x.db", "purge", "i", "--status", "Failed"], "purge takes either an instance ID or --status"),
    (["--store", "x.db", "purge", "--status", "Running"], "bulk purge takes Completed or Failed, not Running"),
    (["--store", "x.db", "purge", "--status", "Failed", "--older-than", "-1"], "'-1' must be 0 or more"),
    (["--store", "x.db", "purge", "i", "--yes"], "--older-than and --yes go with --status"),
    (["--store", "x.db", "purge", "--status", "Failed", "--force"], "--force goes with a single instance ID"),
    (["--store", "x.db", "--schema", "s", "list"], "--schema applies to PostgreSQL stores only"),
    (["--store", "mysql://h/db", "list"], "unsupported store 'mysql://h/db'"),
    (["--store", PG_URL, "--schema", "Bad-Name", "list"], "schema name 'Bad-Name' is not a plain lower-case"),
])
async def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    cli = Cli([], tmp_path)
    result = await cli(*args)
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith("error: ") and message in result.err, result.err
    as_json = await cli("--json", *args)
    assert as_json.code == 2 and as_json.err_json()["code"] == "USAGE" and message in as_json.err_json()["message"]
    assert not (tmp_path / "x.db").exists()


async def test_help_exits_0(tmp_path: Path) -> None:
    result = await Cli([], tmp_path)("--help")
    assert result.code == 0 and "usage: duroxide" in result.out
    for command in ("list", "show", "history", "cancel", "raise", "purge"):
        assert command in result.out
    sub = await Cli([], tmp_path)("purge", "--help")
    assert sub.code == 0 and "--older-than SECONDS" in sub.out


# -- queues ----------------------------------------------------------------------------------


async def test_queues_shows_instances_waiting_for_a_queue_no_runtime_serves(world: World) -> None:
    assert (await world.cli("queues")).out.strip() == "no queued or running work"
    starter = Client(world.harness.store, check_names=False)  # the runtime here configures no queue
    for n in range(2):
        await starter.start_orchestration(f"queued-{n}", "Hello", '"x"', queue="jobs", priority=n)
    text = await world.cli("queues")
    assert text.code == 0, text.err
    assert text.out.splitlines() == [
        "QUEUE  INSTANCES WAITING  INSTANCES RUNNING  CALLS QUEUED  CALLS RUNNING",
        "jobs   2                  0                  0             0"]
    data = await world.cli("--json", "queues")
    assert data.json() == [{"queue": "jobs", "waiting_instances": 2, "running_instances": 0, "queued_calls": 0,
                            "running_calls": 0}]


# -- schedules -------------------------------------------------------------------------------


async def test_schedules_table_flags_an_unregistered_orchestration_and_pause_resume_delete(world: World) -> None:
    assert (await world.cli("schedules")).out.strip() == "no schedules"
    await world.client.create_schedule("hourly", "0 * * * *", "Hello", '"x"', catch_up="latest")
    await Client(world.harness.store, check_names=False).create_schedule("typo", "0 * * * *", "Helo")

    async def confirmed() -> bool:  # the runtime's scheduler says it registers Hello
        return (await world.client.get_schedule("hourly")).orchestration_registered

    await eventually(confirmed, what="the runtime confirming the schedule")
    text = await world.cli("schedules")
    assert text.code == 0, text.err
    header, hourly, typo = text.out.splitlines()
    assert header.split() == ["ID", "CRON", "(UTC)", "ORCHESTRATION", "CATCH-UP", "STATE", "NEXT", "TICK", "LAST",
                              "TICK", "LAST", "INSTANCE"]
    assert hourly.startswith("hourly") and "0 * * * *" in hourly and " latest " in hourly
    assert " active " in hourly and "NOT REGISTERED" not in hourly
    assert typo.startswith("typo") and "active, NOT REGISTERED" in typo
    assert "not registered by any running runtime" in text.err and "typo -> Helo" in text.err
    data = (await world.cli("--json", "schedules")).json()
    assert [(d["schedule_id"], d["orchestration_registered"], d["catch_up"]) for d in data] == [
        ("hourly", True, "latest"), ("typo", False, "skip")]

    paused = await world.cli("schedule", "pause", world.url, "hourly")
    assert paused.code == 0 and paused.out.strip() == "schedule hourly: paused", paused.err
    assert (await world.client.get_schedule("hourly")).paused
    resumed = await world.cli("--json", "schedule", "resume", world.url, "hourly")
    assert resumed.code == 0 and resumed.json()["paused"] is False, resumed.err
    deleted = await world.cli("schedule", "delete", world.url, "typo")
    assert deleted.code == 0 and deleted.out.strip() == "deleted schedule typo"
    assert [s.schedule_id for s in await world.client.list_schedules()] == ["hourly"]
    missing = await world.cli("schedule", "delete", world.url, "typo")
    assert missing.code == 1 and "no schedule 'typo'" in missing.err and "list_schedules" in missing.err
