"""Operators repair instances: suspend, resume, rewind, restart (issue 15), on every store and in both replay modes.

Each operation is recorded in the history (who, why, when), is refused with a
typed error on an instance in the wrong state, and goes through the instance's
queue, so it never races a turn: the store's instance lock orders them.
"""

from __future__ import annotations

import asyncio

import pytest

from duroxide_runtime import Event, InstanceAlreadyExistsError, InstanceNotFoundError, OrchestrationContext
from duroxide_runtime import OrchestrationStatus
from duroxide_runtime.errors import InstanceStateError

from .support import Harness, eventually
from .test_semantics_replay import finish, history_of, until_recorded, until_waiting


async def _until_status(h: Harness, iid: str, status: str) -> None:
    async def check() -> bool:
        return (await h.client.get_instance_info(iid)).status == status
    await eventually(check, 20, f"{iid!r} {status}")


# -- suspend / resume -------------------------------------------------------------------


async def test_a_suspended_instance_runs_no_code_and_gets_what_arrived_when_it_resumes(harness: Harness) -> None:
    shipped: list[str] = []

    async def ship(order: str) -> str:
        shipped.append(order)
        return f"shipped {order}"

    async def order(ctx: OrchestrationContext, order_id: str) -> str:
        approval = await ctx.schedule_wait("approved")
        return await ctx.schedule_activity("Ship", f"{order_id} by {approval}")

    await harness.start({"Order": order}, {"Ship": ship})
    await harness.client.start_orchestration("o-1", "Order", "o-1")
    await until_waiting(harness, "o-1", "approved")
    await harness.client.suspend_instance("o-1", "fraud check", by="ana@ops")
    await _until_status(harness, "o-1", "Suspended")
    assert isinstance(await harness.client.get_orchestration_status("o-1"), OrchestrationStatus.Suspended)

    assert await harness.client.raise_event("o-1", "approved", "bob")  # kept: the instance is live
    await until_recorded(harness, "o-1", lambda e: isinstance(e, Event.EventRaised), "the event")
    # The turn that recorded the event ran no code: nothing was scheduled after it.
    history = await history_of(harness, "o-1")
    assert not any(isinstance(e, Event.ActivityScheduled) for e in history)
    assert shipped == []
    assert (await harness.client.get_instance_info("o-1")).status == "Suspended"

    await harness.client.resume_instance("o-1", "cleared", by="ana@ops")
    status = await finish(harness, "o-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "shipped o-1 by bob"
    assert shipped == ["o-1 by bob"]
    kinds = [type(e).__name__ for e in await history_of(harness, "o-1")]
    assert kinds.index("OrchestrationSuspended") < kinds.index("EventRaised") < kinds.index("OrchestrationResumed") \
        < kinds.index("ActivityScheduled")
    suspended = next(e for e in await history_of(harness, "o-1") if isinstance(e, Event.OrchestrationSuspended))
    assert (suspended.reason, suspended.by) == ("fraud check", "ana@ops")


async def test_results_of_work_running_at_suspension_are_kept_until_resume(harness: Harness) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(x: str) -> str:
        started.set()
        await release.wait()
        return x.upper()

    async def after(x: str) -> str:
        return x + "!"

    async def orch(ctx: OrchestrationContext, x: str) -> str:
        first = await ctx.schedule_activity("Slow", x)
        return await ctx.schedule_activity("After", first)

    await harness.start({"Orch": orch}, {"Slow": slow, "After": after})
    await harness.client.start_orchestration("s-1", "Orch", "abc")
    await asyncio.wait_for(started.wait(), 20)
    await harness.client.suspend_instance("s-1")
    await _until_status(harness, "s-1", "Suspended")
    release.set()
    await until_recorded(harness, "s-1", lambda e: isinstance(e, Event.ActivityCompleted), "Slow's result")
    assert sum(isinstance(e, Event.ActivityScheduled) for e in await history_of(harness, "s-1")) == 1
    await harness.client.resume_instance("s-1")
    status = await finish(harness, "s-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "ABC!"


async def test_cancelling_a_suspended_instance_ends_it(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("never")

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("c-1", "Orch")
    await until_waiting(harness, "c-1", "never")
    await harness.client.suspend_instance("c-1")
    await _until_status(harness, "c-1", "Suspended")
    assert await harness.client.cancel_instance("c-1", "give up", by="ops")
    status = await finish(harness, "c-1")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    assert status.details.error_type == "OrchestrationCancelled"
    cancel = next(e for e in await history_of(harness, "c-1") if isinstance(e, Event.OrchestrationCancelRequested))
    assert cancel.by == "ops"


async def test_suspend_and_resume_refuse_an_instance_in_the_wrong_state(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, x: str) -> str:
        return x

    await harness.start({"Orch": orch})
    assert isinstance(await harness.run("done-1", "Orch", "x"), OrchestrationStatus.Completed)
    with pytest.raises(InstanceStateError) as err:
        await harness.client.suspend_instance("done-1")
    assert (err.value.operation, err.value.status, err.value.code) == ("suspend", "Completed", "INSTANCE_STATE")
    with pytest.raises(InstanceStateError, match="not Suspended"):
        await harness.client.resume_instance("done-1")
    with pytest.raises(InstanceNotFoundError):
        await harness.client.suspend_instance("nobody")
    assert [type(e).__name__ for e in await history_of(harness, "done-1")][-1] == "OrchestrationCompleted"


async def test_suspending_twice_is_refused_and_records_one_suspension(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("go")

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("t-1", "Orch")
    await until_waiting(harness, "t-1", "go")
    await harness.client.suspend_instance("t-1")
    await _until_status(harness, "t-1", "Suspended")
    with pytest.raises(InstanceStateError, match="Suspended"):
        await harness.client.suspend_instance("t-1")
    await harness.client.resume_instance("t-1")
    await harness.client.raise_event("t-1", "go", "done")
    status = await finish(harness, "t-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "done"
    assert sum(isinstance(e, Event.OrchestrationSuspended) for e in await history_of(harness, "t-1")) == 1


async def test_many_suspends_and_resumes_while_work_completes_lose_and_repeat_nothing(harness: Harness) -> None:
    calls: list[int] = []

    async def work(i: str) -> str:
        calls.append(int(i))
        return i

    async def fan(ctx: OrchestrationContext, _: str) -> str:
        results = await asyncio.gather(*(ctx.schedule_activity("Work", str(i)) for i in range(12)))
        return ",".join(results)

    await harness.start({"Fan": fan}, {"Work": work})
    await harness.client.start_orchestration("f-1", "Fan")
    last_accepted = None
    for _ in range(6):  # each request is refused or applied whole, whatever the turns are doing
        for op in (harness.client.suspend_instance, harness.client.resume_instance):
            try:
                await op("f-1")
                last_accepted = op
            except InstanceStateError:
                pass
    # The instance ends up suspended when the last accepted request was a suspend (one accepted
    # while an earlier one was still queued is dropped by the engine), unless its work all came in
    # and it completed in the turn before the suspend's.
    if last_accepted == harness.client.suspend_instance:
        async def settled() -> bool:
            return (await harness.client.get_instance_info("f-1")).status in ("Suspended", "Completed")
        await eventually(settled, 20, "'f-1' suspended or completed")
        if (await harness.client.get_instance_info("f-1")).status == "Suspended":
            await harness.client.resume_instance("f-1")
    status = await finish(harness, "f-1", timeout=30)
    assert isinstance(status, OrchestrationStatus.Completed)
    assert status.output == ",".join(str(i) for i in range(12))
    assert sorted(calls) == list(range(12))


# -- rewind ---------------------------------------------------------------------------


async def test_rewind_sends_the_failed_activity_again_and_the_instance_completes(harness: Harness) -> None:
    broken = {"tax": True}
    calls: list[str] = []

    async def tax(order: str) -> str:
        calls.append(order)
        if broken["tax"]:
            raise RuntimeError("tax service down")
        return "7%"

    async def reserve(order: str) -> str:
        return "reserved"

    async def order(ctx: OrchestrationContext, order_id: str) -> str:
        reserved = await ctx.schedule_activity("Reserve", order_id)
        rate = await ctx.schedule_activity("Tax", order_id)
        return f"{reserved} at {rate}"

    await harness.start({"Order": order}, {"Tax": tax, "Reserve": reserve})
    failed = await harness.run("r-1", "Order", "r-1")
    assert isinstance(failed, OrchestrationStatus.Failed) and "tax service down" in failed.error
    before = await history_of(harness, "r-1")

    broken["tax"] = False
    await harness.client.rewind_instance("r-1", "tax is back", by="ana@ops")
    status = await finish(harness, "r-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "reserved at 7%"
    assert calls == ["r-1", "r-1"]
    after = await history_of(harness, "r-1")
    assert after[:len(before)] == before  # the history before the rewind is kept as it was
    rewound = next(e for e in after if isinstance(e, Event.OrchestrationRewound))
    failure = next(e for e in before if isinstance(e, Event.ActivityFailed))
    assert rewound.voided == [failure.event_id, before[-1].event_id]
    assert (rewound.reason, rewound.by) == ("tax is back", "ana@ops")
    assert isinstance(after[-1], Event.OrchestrationCompleted)
    assert sum(isinstance(e, Event.ActivityScheduled) and e.name == "Reserve" for e in after) == 1


async def test_rewind_of_a_failure_in_the_code_replays_with_the_fixed_code(harness: Harness) -> None:
    bug = {"present": True}

    async def double(x: str) -> str:
        return x * 2

    async def orch(ctx: OrchestrationContext, x: str) -> str:
        doubled = await ctx.schedule_activity("Double", x)
        if bug["present"]:
            raise ValueError("bug in the orchestration")
        return doubled + "!"

    await harness.start({"Orch": orch}, {"Double": double})
    assert isinstance(await harness.run("b-1", "Orch", "ab"), OrchestrationStatus.Failed)
    bug["present"] = False  # "deploy the fix"
    await harness.client.rewind_instance("b-1")
    status = await finish(harness, "b-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "abab!"
    assert sum(isinstance(e, Event.ActivityScheduled) for e in await history_of(harness, "b-1")) == 1


async def test_rewinding_a_parent_rewinds_its_failed_child(harness: Harness) -> None:
    broken = {"on": True}

    async def flaky(x: str) -> str:
        if broken["on"]:
            raise RuntimeError("flaky")
        return x + " ok"

    async def child(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_activity("Flaky", x)

    async def parent(ctx: OrchestrationContext, x: str) -> str:
        return "parent got " + await ctx.schedule_sub_orchestration("Child", x, instance_id="p-1-child")

    await harness.start({"Parent": parent, "Child": child}, {"Flaky": flaky})
    assert isinstance(await harness.run("p-1", "Parent", "job"), OrchestrationStatus.Failed)
    assert (await harness.client.get_instance_info("p-1-child")).status == "Failed"
    broken["on"] = False
    await harness.client.rewind_instance("p-1", by="ana@ops")
    status = await finish(harness, "p-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "parent got job ok"
    assert (await harness.client.get_instance_info("p-1-child")).status == "Completed"
    child_history = await history_of(harness, "p-1-child")
    rewound = next(e for e in child_history if isinstance(e, Event.OrchestrationRewound))
    # The child's rewind names the operator who rewound the parent, and the parent's reason.
    parent_rewound = next(e for e in await history_of(harness, "p-1") if isinstance(e, Event.OrchestrationRewound))
    assert rewound.by == parent_rewound.by == "ana@ops"
    assert rewound.reason == parent_rewound.reason


async def test_rewind_refuses_what_did_not_fail_and_what_was_cancelled(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, x: str) -> str:
        if x == "wait":
            return await ctx.schedule_wait("never")
        return x

    await harness.start({"Orch": orch})
    assert isinstance(await harness.run("ok-1", "Orch", "x"), OrchestrationStatus.Completed)
    with pytest.raises(InstanceStateError, match="only a Failed instance"):
        await harness.client.rewind_instance("ok-1")
    await harness.client.start_orchestration("w-1", "Orch", "wait")
    await until_waiting(harness, "w-1", "never")
    with pytest.raises(InstanceStateError, match="Running"):
        await harness.client.rewind_instance("w-1")
    await harness.client.cancel_instance("w-1", "stop", grace=0)
    assert isinstance(await finish(harness, "w-1"), OrchestrationStatus.Failed)
    with pytest.raises(InstanceStateError, match="cancelled") as err:
        await harness.client.rewind_instance("w-1")
    assert "restart" in (err.value.fix or "")
    with pytest.raises(InstanceNotFoundError):
        await harness.client.rewind_instance("nobody")


async def test_a_rewound_instance_that_fails_again_can_be_rewound_again(harness: Harness) -> None:
    attempts: list[int] = []

    async def shaky(_: str) -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)} failed")
        return "finally"

    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("Shaky", "")

    await harness.start({"Orch": orch}, {"Shaky": shaky})
    assert isinstance(await harness.run("a-1", "Orch"), OrchestrationStatus.Failed)
    await harness.client.rewind_instance("a-1")
    again = await finish(harness, "a-1")
    assert isinstance(again, OrchestrationStatus.Failed) and "attempt 2 failed" in again.error
    await harness.client.rewind_instance("a-1")
    status = await finish(harness, "a-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "finally"
    history = await history_of(harness, "a-1")
    assert sum(isinstance(e, Event.OrchestrationRewound) for e in history) == 2
    assert len(attempts) == 3


# -- restart --------------------------------------------------------------------------


async def test_restart_runs_a_new_execution_with_the_original_input(harness: Harness) -> None:
    seen: list[str] = []

    async def record(x: str) -> str:
        seen.append(x)
        return x

    async def orch(ctx: OrchestrationContext, x: str) -> str:
        return await ctx.schedule_activity("Record", x)

    await harness.start({"Orch": orch}, {"Record": record})
    assert isinstance(await harness.run("rs-1", "Orch", "input-1"), OrchestrationStatus.Completed)
    assert await harness.client.restart_instance("rs-1", by="ops") == "rs-1"
    await eventually(lambda: _executions(harness, "rs-1", 2), 20, "execution 2 of rs-1")
    status = await finish(harness, "rs-1")
    assert isinstance(status, OrchestrationStatus.Completed) and status.output == "input-1"
    assert seen == ["input-1", "input-1"]
    first = await history_of(harness, "rs-1", 1)
    assert isinstance(first[-1], Event.OrchestrationRestarted)
    assert (first[-1].by, first[-1].next_execution_id) == ("ops", 2)
    assert (await harness.client.get_instance_info("rs-1")).execution_id == 2


async def _executions(h: Harness, iid: str, n: int) -> bool:
    return len(await h.client.list_executions(iid)) >= n


async def test_restart_under_a_new_id_leaves_the_old_instance_as_it_was(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, x: str) -> str:
        if x == "fail":
            raise RuntimeError("boom")
        return x

    await harness.start({"Orch": orch})
    assert isinstance(await harness.run("old-1", "Orch", "fail"), OrchestrationStatus.Failed)
    assert await harness.client.restart_instance("old-1", "new-1") == "new-1"
    status = await finish(harness, "new-1")
    assert isinstance(status, OrchestrationStatus.Failed) and "boom" in status.error  # same input, same path
    await until_recorded(harness, "old-1", lambda e: isinstance(e, Event.OrchestrationRestarted), "the restart")
    old = await history_of(harness, "old-1")
    assert isinstance(old[-1], Event.OrchestrationRestarted) and old[-1].new_instance_id == "new-1"
    assert (await harness.client.get_instance_info("old-1")).status == "Failed"
    with pytest.raises(InstanceAlreadyExistsError):
        await harness.client.restart_instance("old-1", "new-1")


async def test_restart_refuses_a_running_instance(harness: Harness) -> None:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("never")

    await harness.start({"Orch": orch})
    await harness.client.start_orchestration("run-1", "Orch")
    await until_waiting(harness, "run-1", "never")
    with pytest.raises(InstanceStateError, match="cancel it first"):
        await harness.client.restart_instance("run-1")
    assert await harness.client.list_executions("run-1") == [1]
