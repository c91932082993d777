"""``duroxide suspend|resume|rewind|restart`` and bulk ``cancel`` (issue 15), run as a real subprocess.

Each store (a SQLite file, a fresh PostgreSQL schema) is filled by a real runtime
that keeps running while the tool works: three instances waiting for an event, two
failed by a broken "tax service" activity, one completed. The tool only writes
requests to the store; the runtime applies them, so every test asserts on the store
and the history (who asked, why), not on printed text alone.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from duroxide_runtime import Client, Event, OrchestrationContext, OrchestrationStatus
from duroxide_runtime.history import HistoryEvent
from duroxide_runtime.operator import operator_name

from .support import PG_URL, Harness, drop_store, eventually, make_store
from .test_cli import Cli

pytestmark = pytest.mark.timeout(180)

#: What the tool records as ``by``: the subprocess runs as this user on this host.
BY = "cli:" + operator_name()
#: The tax service is down until a test "repairs" it.
TAX = {"broken": True}


async def tax(order: str) -> str:
    if TAX["broken"]:
        raise RuntimeError("tax service down")
    return f"{order}: 7%"


async def order(ctx: OrchestrationContext, order_id: str) -> str:
    return await ctx.schedule_activity("Tax", order_id)


async def wait_go(ctx: OrchestrationContext, _: str) -> str:
    return await ctx.schedule_wait("go")


async def hello(ctx: OrchestrationContext, name: str) -> str:
    return f"Hello, {name}!"


ORCHESTRATIONS = {"Order": order, "Wait": wait_go, "Hello": hello}
WAITING = ["wait-1", "wait-2", "wait-3"]
FAILED = ["tax-1", "tax-2"]


@dataclass
class World:
    """A filled store, the client and runtime on it, and the tool pointed at it."""

    harness: Harness
    cli: Cli

    @property
    def client(self) -> Client:
        return self.harness.client


async def _subscribed(client: Client, instance_id: str) -> bool:
    return any(isinstance(e, Event.EventSubscribed) for e in await client.read_history(instance_id))


@pytest.fixture(params=["sqlite", "postgres"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    kind = str(request.param)
    store = await make_store(kind, tmp_path)  # PostgreSQL unreachable: the test fails here, never skips
    store_args = (["--store", str(tmp_path / "test.db")] if kind == "sqlite"
                  else ["--store", PG_URL, "--schema", getattr(store, "schema")])
    harness = Harness(store, "cached")
    TAX["broken"] = True
    try:
        await harness.start(ORCHESTRATIONS, {"Tax": tax})
        for instance_id in WAITING:
            await harness.client.start_orchestration(instance_id, "Wait")
        for instance_id in FAILED:
            assert isinstance(await harness.run(instance_id, "Order", instance_id), OrchestrationStatus.Failed)
        assert isinstance(await harness.run("done-1", "Hello", "World"), OrchestrationStatus.Completed)
        for instance_id in WAITING:
            await eventually(partial(_subscribed, harness.client, instance_id), 20, f"{instance_id} waiting")
        yield World(harness, Cli(store_args, tmp_path))
    finally:
        await harness.stop()
        await drop_store(store)


async def _status_is(client: Client, instance_id: str, status: str) -> bool:
    return (await client.get_instance_info(instance_id)).status == status


async def until_status(world: World, instance_id: str, status: str) -> None:
    await eventually(partial(_status_is, world.client, instance_id, status), 20, f"{instance_id} {status}")


def _one(events: list[HistoryEvent], kind: type[HistoryEvent]) -> HistoryEvent:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, (kind.__name__, events)
    return found[0]


def _timeline(out: str) -> list[str]:
    """The descriptions of ``history``'s lines (after the header), without ids and times."""
    rows = []
    for line in out.splitlines()[1:]:
        m = re.fullmatch(r"\s*#\d+\s+\+\d+\.\d+ m?s\s+(.*?)(?:  at \S+:\d+)?", line)
        assert m, f"not a timeline line: {line!r}"
        rows.append(m.group(1))
    return rows


# -- one instance ------------------------------------------------------------------------------


async def test_suspend_and_resume_one_instance(world: World) -> None:
    suspend = await world.cli("suspend", "wait-1", "--reason", "fraud check")
    assert (suspend.code, suspend.out.strip()) == (0, "suspend requested for wait-1"), suspend.err
    await until_status(world, "wait-1", "Suspended")
    suspended = _one(await world.client.read_history("wait-1"), Event.OrchestrationSuspended)
    assert isinstance(suspended, Event.OrchestrationSuspended)
    assert (suspended.reason, suspended.by) == ("fraud check", BY)

    show = await world.cli("show", "wait-1")
    assert "status:        Suspended" in show.out, show.err
    assert re.search(rf"^suspended:     since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ by {re.escape(BY)}: 'fraud check'$",
                     show.out, re.M), show.out
    body = (await world.cli("--json", "show", "wait-1")).json()
    assert body["status"] == "Suspended"
    assert body["suspended"] == {"reason": "fraud check", "by": BY, "at_ms": suspended.timestamp_ms}
    assert (await world.cli("--json", "show", "wait-2")).json()["suspended"] is None
    listed = (await world.cli("--json", "list", "--status", "suspended")).json()
    assert [i["instance_id"] for i in listed] == ["wait-1"]

    resume = await world.cli("--json", "resume", "wait-1")
    assert resume.code == 0 and resume.json() == {"instance_id": "wait-1", "operation": "resume"}, resume.err
    await until_status(world, "wait-1", "Running")
    raised = await world.cli("raise", "wait-1", "go", "approved")
    assert raised.code == 0, raised.err
    done = await world.client.wait_for_orchestration("wait-1", 20)
    assert isinstance(done, OrchestrationStatus.Completed) and done.output == "approved"

    history = await world.client.read_history("wait-1")
    resumed = _one(history, Event.OrchestrationResumed)
    assert isinstance(resumed, Event.OrchestrationResumed) and (resumed.reason, resumed.by) == ("resumed by operator", BY)
    event = _one(history, Event.EventRaised)
    assert isinstance(event, Event.EventRaised) and event.by == BY
    lines = _timeline((await world.cli("history", "wait-1")).out)
    assert f"OrchestrationSuspended 'fraud check' by {BY}" in lines
    assert f"OrchestrationResumed 'resumed by operator' by {BY}" in lines


async def test_rewind_one_failed_instance(world: World) -> None:
    before = await world.client.read_history("tax-1")
    TAX["broken"] = False  # "the tax service is back"
    rewind = await world.cli("rewind", "tax-1", "--reason", "tax is back")
    assert (rewind.code, rewind.out.strip()) == (0, "rewind requested for tax-1"), rewind.err
    done = await world.client.wait_for_orchestration("tax-1", 20)
    assert isinstance(done, OrchestrationStatus.Completed) and done.output == "tax-1: 7%"

    after = await world.client.read_history("tax-1")
    assert after[:len(before)] == before
    rewound = _one(after, Event.OrchestrationRewound)
    assert isinstance(rewound, Event.OrchestrationRewound)
    failure = _one(before, Event.ActivityFailed)
    assert (rewound.reason, rewound.by, rewound.voided) == ("tax is back", BY, [failure.event_id, before[-1].event_id])
    history = await world.cli("history", "tax-1")
    assert history.out.splitlines()[0] == "tax-1 (Order) execution 1 of 1, Completed"
    assert (f"OrchestrationRewound 'tax is back' by {BY}; voided #{failure.event_id}, #{before[-1].event_id}"
            in _timeline(history.out))


async def test_restart_one_instance_as_a_new_execution_or_a_new_instance(world: World) -> None:
    restart = await world.cli("restart", "done-1")
    assert (restart.code, restart.out.strip()) == (0, "restart requested for done-1 (as a new execution)"), restart.err
    await eventually(partial(_executions, world.client, "done-1", 2), 20, "execution 2 of done-1")
    done = await world.client.wait_for_orchestration("done-1", 20)
    assert isinstance(done, OrchestrationStatus.Completed) and done.output == "Hello, World!"
    first = await world.client.read_history("done-1", 1)
    assert isinstance(first[-1], Event.OrchestrationRestarted)
    assert (first[-1].by, first[-1].reason, first[-1].next_execution_id) == (BY, "restarted by operator", 2)
    earlier = await world.cli("history", "done-1", "--execution", "1")
    assert earlier.out.splitlines()[0] == "done-1 (Hello) execution 1 of 2, Completed"
    assert _timeline(earlier.out)[-1] == f"OrchestrationRestarted as execution 2 'restarted by operator' by {BY}"

    TAX["broken"] = False
    again = await world.cli("--json", "restart", "tax-2", "--new-id", "tax-2-retry", "--reason", "retry it")
    assert again.code == 0, again.err
    assert again.json() == {"instance_id": "tax-2", "operation": "restart", "runs_as": "tax-2-retry"}
    retried = await world.client.wait_for_orchestration("tax-2-retry", 20)
    assert isinstance(retried, OrchestrationStatus.Completed) and retried.output == "tax-2: 7%"
    assert (await world.client.get_instance_info("tax-2")).status == "Failed"  # the old one is left as it was

    taken = await world.cli("restart", "tax-2", "--new-id", "tax-2-retry")
    assert taken.code == 1 and "already exists" in taken.err, taken
    assert "fix: pick another --new-id, or purge the instance that has it (`duroxide purge ID`)" in taken.err


async def _executions(client: Client, instance_id: str, n: int) -> bool:
    return len(await client.list_executions(instance_id)) >= n


async def test_cancel_records_who_asked(world: World) -> None:
    cancel = await world.cli("cancel", "wait-2", "--reason", "customer asked")
    assert (cancel.code, cancel.out.strip()) == (0, "cancel requested for wait-2"), cancel.err
    assert isinstance(await world.client.wait_for_orchestration("wait-2", 20), OrchestrationStatus.Failed)
    requested = _one(await world.client.read_history("wait-2"), Event.OrchestrationCancelRequested)
    assert isinstance(requested, Event.OrchestrationCancelRequested)
    assert (requested.reason, requested.by) == ("customer asked", BY)
    assert f"OrchestrationCancelRequested 'customer asked' by {BY}" in _timeline(
        (await world.cli("history", "wait-2")).out)


# -- wrong state, unknown instance ---------------------------------------------------------------


async def test_wrong_state_is_exit_1_with_the_typed_error_and_a_fix_for_the_shell(world: World) -> None:
    resume = await world.cli("resume", "done-1")
    assert (resume.code, resume.out) == (1, ""), resume
    assert "error: cannot resume instance 'done-1': it is Completed, not Suspended\n" in resume.err
    assert "fix: suspend it first (`duroxide suspend ID`)\n" in resume.err
    restart = await world.cli("--json", "restart", "wait-3")
    assert restart.code == 1 and restart.out == ""
    assert restart.err_json() == {
        "code": "INSTANCE_STATE",
        "message": "cannot restart instance 'wait-3': it is Running: only a finished instance (Completed or Failed) "
                   "can be restarted",
        "fix": "cancel it first (`duroxide cancel ID`) and wait for it to end"}
    rewind = await world.cli("rewind", "wait-3")
    assert rewind.code == 1 and "only a Failed instance can be rewound" in rewind.err
    # Nothing was recorded and nothing changed.
    assert [type(e).__name__ for e in await world.client.read_history("wait-3")] == [
        "OrchestrationStarted", "EventSubscribed"]
    assert (await world.client.get_instance_info("done-1")).status == "Completed"


async def test_unknown_instance_is_exit_1_with_fix(world: World) -> None:
    for args in (["suspend", "nope"], ["resume", "nope"], ["rewind", "nope"], ["restart", "nope"],
                 ["restart", "nope", "--new-id", "nope-2"]):
        result = await world.cli(*args)
        assert (result.code, result.out) == (1, ""), (args, result)
        assert re.search(r"^error: .*no instance 'nope' in this store$", result.err, re.M), result.err
        assert "fix: check the instance id (`duroxide list` shows what exists)" in result.err
    assert (await world.client.get_orchestration_status("nope-2")) == OrchestrationStatus.NotFound()


# -- bulk --------------------------------------------------------------------------------------


async def test_bulk_suspend_and_resume_by_filter(world: World) -> None:
    declined = await world.cli("suspend", "--name", "Wait")  # stdin is empty: no confirmation
    assert declined.code == 1 and "suspend 3 instance(s) matching --name Wait? [y/N]" in declined.err, declined
    assert "error: nothing was done: suspend not confirmed" in declined.err and "--yes" in declined.err
    assert all(isinstance(e, Event.EventSubscribed)
               for e in (await world.client.read_history("wait-1"))[1:])  # nothing was requested

    bulk = await world.cli("suspend", "--name", "Wait", "--reason", "maintenance", "--yes", "--progress", "--json")
    assert bulk.code == 0, bulk.err
    assert bulk.json() == {"operation": "suspend", "total": 3, "done": sorted(WAITING, reverse=True),
                           "skipped": [], "failed": {}}
    assert "suspending [##############################] 3/3" in bulk.err
    for instance_id in WAITING:
        await until_status(world, instance_id, "Suspended")
        suspended = _one(await world.client.read_history(instance_id), Event.OrchestrationSuspended)
        assert isinstance(suspended, Event.OrchestrationSuspended)
        assert (suspended.reason, suspended.by) == ("maintenance", BY)
    assert {i.status for i in await world.client.list_instances(name="Order")} == {"Failed"}  # untouched

    resumed = await world.cli("resume", "--status", "Suspended", "--q", "wait-", stdin="y\n")
    assert (resumed.code, resumed.out.strip()) == (0, "resume requested for 3 instance(s)"), resumed.err
    assert "resume 3 instance(s) matching --status Suspended, --q wait-? [y/N]" in resumed.err
    assert "resuming" not in resumed.err  # stderr is a pipe: no progress without --progress
    for instance_id in WAITING:
        await until_status(world, instance_id, "Running")

    none = await world.cli("resume", "--status", "Suspended", "--yes")
    assert (none.code, none.out.strip()) == (0, "no instances match --status Suspended; nothing done")


async def test_bulk_with_failures_reports_each_and_exits_1(world: World) -> None:
    TAX["broken"] = False
    mixed = await world.cli("rewind", "--q", "-1", "--yes")  # wait-1 Running, tax-1 Failed, done-1 Completed
    assert mixed.code == 1, mixed
    lines = mixed.out.splitlines()
    assert lines[:2] == ["rewind requested for 1 of 3 instance(s)", "2 failed:"]
    assert sorted(lines[2:]) == [
        "  done-1: cannot rewind instance 'done-1': it is Completed: only a Failed instance can be rewound",
        "  wait-1: cannot rewind instance 'wait-1': it is Running: only a Failed instance can be rewound"]
    done = await world.client.wait_for_orchestration("tax-1", 20)
    assert isinstance(done, OrchestrationStatus.Completed)
    assert (await world.client.get_instance_info("tax-2")).status == "Failed"  # not selected

    as_json = await world.cli("--json", "suspend", "--q", "-2", "--yes")  # wait-2 Running, tax-2 Failed
    assert as_json.code == 1
    body = as_json.json()
    assert (body["done"], list(body["failed"])) == (["wait-2"], ["tax-2"])
    assert body["failed"]["tax-2"]["code"] == "INSTANCE_STATE"
    assert "only a Pending or Running instance can be suspended" in body["failed"]["tax-2"]["message"]
    assert "client." not in body["failed"]["tax-2"]["fix"]


async def test_bulk_cancel_leaves_finished_instances_alone(world: World) -> None:
    assert (await world.cli("raise", "wait-3", "go", "done")).code == 0
    assert isinstance(await world.client.wait_for_orchestration("wait-3", 20), OrchestrationStatus.Completed)
    cancel = await world.cli("--json", "cancel", "--name", "Wait", "--reason", "shutting down", "--yes")
    assert cancel.code == 0, cancel.err
    assert cancel.json() == {"operation": "cancel", "total": 3, "done": ["wait-2", "wait-1"],
                             "skipped": ["wait-3"], "failed": {}}
    for instance_id in ("wait-1", "wait-2"):
        status = await world.client.wait_for_orchestration(instance_id, 20)
        assert isinstance(status, OrchestrationStatus.Failed) and "shutting down" in status.error
        requested = _one(await world.client.read_history(instance_id), Event.OrchestrationCancelRequested)
        assert isinstance(requested, Event.OrchestrationCancelRequested) and requested.by == BY
    text = await world.cli("cancel", "--status", "Failed", "--name", "Order", "--yes")
    assert text.code == 0 and text.out.splitlines() == [
        "cancel requested for 0 of 2 instance(s)", "2 already finished, left alone: tax-2, tax-1"], text


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["suspend"], "suspend needs an instance ID or a filter: pass ID, or at least one of --status, --name, "
                  "--version, --q (an empty filter would select every instance)"),
    (["cancel"], "cancel needs an instance ID or a filter"),
    (["restart", "--yes"], "restart needs an instance ID or a filter"),
    (["resume", "x", "--status", "Suspended"], "resume takes either an instance ID or filters (--status), not both"),
    (["rewind", "x", "--yes"], "--yes and --progress go with filters (bulk)"),
    (["restart", "--new-id", "y", "--status", "Failed"], "--new-id goes with a single instance ID"),
    (["suspend", "--status", "Bogus"], "'Bogus' is not one of Pending, Running, Completed, Failed, Suspended"),
    (["suspend", "x", "--new-id", "y"], "unrecognized arguments: --new-id y"),
])
async def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    cli = Cli(["--store", "x.db"], tmp_path)
    result = await cli(*args)
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith("error: ") and message in result.err, result.err
    as_json = await cli("--json", *args)
    assert as_json.code == 2 and as_json.err_json()["code"] == "USAGE" and message in as_json.err_json()["message"]
    assert not (tmp_path / "x.db").exists()


async def test_help_lists_the_operations(tmp_path: Path) -> None:
    result = await Cli([], tmp_path)("--help")
    assert result.code == 0
    for command in ("suspend", "resume", "rewind", "restart"):
        assert command in result.out
    sub = await Cli([], tmp_path)("restart", "--help")
    assert sub.code == 0 and "--new-id NEW" in sub.out and "--q TEXT" in sub.out and "--progress" in sub.out
