"""The engine core as a function: synthetic history + new messages -> events and work (SEMANTICS 1-9, 19-22).

Every test runs its turn from scratch and as cached turns (``engine_factories.turn``
checks both give the same output).
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from duroxide_runtime import OrchestrationContext, RuntimeOptions
from duroxide_runtime.engine.execution import Execution, TurnInput
from duroxide_runtime.engine.output import Status
from duroxide_runtime.errors import ActivityFailed, SubOrchestrationFailed
from duroxide_runtime.messages import CancelRequest, ExternalEvent, StartOrchestration, SubOrchestrationResult, TimerFired

from .engine_factories import (
    INSTANCE,
    NOW,
    T0,
    activity_completed,
    activity_result,
    activity_scheduled,
    cancel,
    event_raised,
    event_subscribed,
    external,
    kinds,
    poison,
    start,
    started,
    sub_result,
    sub_scheduled,
    system_call,
    timer_created,
    timer_fired,
    timer_message,
    turn,
)


ROOT = Path(__file__).resolve().parent.parent


async def one_activity(ctx: OrchestrationContext, input: str) -> str:
    return await ctx.schedule_activity("A", input)


async def guarded_activity(ctx: OrchestrationContext, input: str) -> str:
    try:
        return await ctx.schedule_activity("A", input)
    except ActivityFailed as err:
        return f"caught {err.error_type}"


async def act_or_timer(ctx: OrchestrationContext, _: str) -> str:
    idx, fut = await ctx.select2(ctx.schedule_activity("A", "x"), ctx.schedule_timer(5))
    return f"{idx}:{fut.result()}"


async def waits_twice(ctx: OrchestrationContext, _: str) -> str:
    return await ctx.schedule_wait("go") + "," + await ctx.schedule_wait("go")


# -- one _apply_* per message kind ----------------------------------------------------------


def test_start_records_started_and_the_first_command() -> None:
    result = turn(one_activity, [], start("x"))
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "ActivityScheduled"]
    [work] = result.output.activities
    assert (work.event_id, work.name, work.input) == (2, "A", "x")
    assert result.status is Status.RUNNING


def test_activity_result_completes_the_activity() -> None:
    result = turn(one_activity, [started("x"), activity_scheduled(2, "A", "x")], activity_result(2, "r"))
    assert kinds(result.output.new_events) == ["ActivityCompleted", "OrchestrationCompleted"]
    assert result.outcome is not None and (result.status, result.outcome.output) == (Status.COMPLETED, "r")


def test_activity_error_reaches_the_code_as_activity_failed() -> None:
    result = turn(guarded_activity, [started("x"), activity_scheduled(2, "A", "x")], activity_result(2, error="no"))
    assert kinds(result.output.new_events) == ["ActivityFailed", "OrchestrationCompleted"]
    assert result.outcome is not None and result.outcome.output == "caught ValueError"


def test_timer_fired_wakes_asyncio_sleep() -> None:
    async def sleeper(ctx: OrchestrationContext, _: str) -> str:
        await asyncio.sleep(2)
        return "woke"

    history = [started(), timer_created(2, 2000)]
    result = turn(sleeper, history, timer_message(2, 2000))
    assert kinds(result.output.new_events) == ["TimerFired", "OrchestrationCompleted"]
    assert result.outcome is not None and result.outcome.output == "woke"


@pytest.mark.parametrize(("message", "expected"), [(sub_result(2, "child out"), "child out"),
                                                    (sub_result(2, error="bad"), "failed inst::sub::2")])
def test_sub_orchestration_result_completes_the_child_call(message: SubOrchestrationResult, expected: str) -> None:
    async def parent(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await ctx.schedule_sub_orchestration("Child", "c")
        except SubOrchestrationFailed as err:
            return f"failed {err.instance_id}"

    result = turn(parent, [started(), sub_scheduled(2, "Child", "c")], message)
    assert result.outcome is not None and result.outcome.output == expected


def test_external_events_are_kept_fifo_until_waited_for() -> None:
    async def act_then_wait(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_activity("A", "x")
        return await waits_twice(ctx, "")

    result = turn(act_then_wait, [started(), activity_scheduled(2, "A", "x")],
                  external("go", "1"), external("go", "2"), activity_result(2, "r"))
    assert kinds(result.output.new_events) == ["EventRaised", "EventRaised", "ActivityCompleted", "EventSubscribed",
                                               "EventSubscribed", "OrchestrationCompleted"]
    assert result.outcome is not None and result.outcome.output == "1,2"


def test_cancel_request_fails_the_instance_and_cancels_its_work() -> None:
    async def fan(ctx: OrchestrationContext, _: str) -> str:
        await ctx.join([ctx.schedule_activity("A", "x"), ctx.schedule_sub_orchestration("Child", "c")])
        return "done"

    result = turn(fan, [started(), activity_scheduled(2, "A", "x"), sub_scheduled(3, "Child", "c")],
                  cancel("stop"))
    assert kinds(result.output.new_events) == ["OrchestrationCancelRequested", "OrchestrationFailed"]
    assert result.outcome is not None and result.outcome.error is not None
    assert (result.outcome.error.error_type, result.outcome.error.message) == ("OrchestrationCancelled", "stop")
    assert result.output.cancelled_activities == [2]
    assert [(m.instance_id, type(m)) for m, _ in result.output.messages] == [("inst::sub::3", CancelRequest)]


def test_poison_notice_fails_without_an_event_of_its_own() -> None:
    result = turn(one_activity, [started(), activity_scheduled(2, "A", "in")], poison("looping"))
    assert kinds(result.output.new_events) == ["OrchestrationFailed"]
    assert result.outcome is not None and result.outcome.error is not None
    assert (result.outcome.error.error_type, result.outcome.error.message) == ("PoisonMessageError", "looping")


def test_duplicate_start_unknown_and_duplicate_completions_are_dropped() -> None:
    history = [started(), activity_scheduled(2, "A", "in")]
    result = turn(waits_twice, [started(), event_subscribed(2, "go")],
                  start(), activity_result(9, "stray"), timer_message(2, 10))
    assert result.output.is_empty()
    result = turn(one_activity, history, activity_result(2, "r"), activity_result(2, "again"))
    assert kinds(result.output.new_events) == ["ActivityCompleted", "OrchestrationCompleted"]


# -- one test per command kind ---------------------------------------------------------------


def test_create_timer_sends_a_timer_message_due_at_its_time() -> None:
    async def timer(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_timer(5)
        return "t"

    result = turn(timer, [started(), timer_created(2, 5000)])
    assert result.output.is_empty()  # replayed: its message was sent when it was recorded
    result = turn(timer, [], start())
    [(msg, visible_at)] = result.output.messages
    assert isinstance(msg, TimerFired) and msg.event_id == 2 and visible_at == msg.fire_at_ms == NOW + 5000


def test_sub_orchestration_starts_the_child_with_its_parent() -> None:
    async def parent(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_sub_orchestration("Child", "c")

    result = turn(parent, [], start())
    [(msg, _)] = result.output.messages
    assert isinstance(msg, StartOrchestration)
    assert (msg.instance_id, msg.name, msg.input, msg.parent_instance_id, msg.parent_event_id) == \
        ("inst::sub::2", "Child", "c", INSTANCE, 2)


def test_detached_start_records_a_chained_event_and_no_parent() -> None:
    async def detached(ctx: OrchestrationContext, _: str) -> str:
        ctx.start_orchestration("Audit", "audit-1", "a")
        return "started"

    result = turn(detached, [], start())
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "OrchestrationChained",
                                               "OrchestrationCompleted"]
    [(msg, _)] = result.output.messages
    assert isinstance(msg, StartOrchestration) and (msg.instance_id, msg.parent_instance_id) == ("audit-1", None)


def test_wait_for_event_records_its_subscription() -> None:
    result = turn(waits_twice, [], start())
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "EventSubscribed"]


def test_system_calls_replay_their_recorded_values() -> None:
    async def values(ctx: OrchestrationContext, _: str) -> str:
        return f"{await ctx.new_guid()}|{int((await ctx.utc_now()).timestamp() * 1000)}"

    history = [started(), system_call(2, "guid", "g-1"), system_call(3, "utcnow", "123456")]
    result = turn(values, history)
    assert result.outcome is not None and result.outcome.output == "g-1|123456"
    fresh = turn(values, [], start())
    assert fresh.outcome is not None and str(fresh.outcome.output).endswith(f"|{NOW}")


def test_custom_status_is_part_of_the_output_once() -> None:
    async def status(ctx: OrchestrationContext, _: str) -> str:
        ctx.set_custom_status("working")
        return await ctx.schedule_activity("A", "x")

    assert turn(status, [], start()).output.custom_status == "working"
    replayed = turn(status, [started(), activity_scheduled(2, "A", "x")])
    assert not replayed.output.custom_status_changed  # set on replay: already committed


# -- replay matching and each NonDeterminismError ---------------------------------------------


@pytest.mark.parametrize(("recorded", "named"), [
    (activity_scheduled(2, "B", "in"), ["'A'", "'B'"]),
    (activity_scheduled(2, "A", "other"), ["'in'", "'other'"]),
    (timer_created(2, 1000), ["a timer", "activity 'A'"]),
    (event_subscribed(2, "go"), ["a wait for event 'go'", "activity 'A'"]),
])
def test_a_changed_command_is_nondeterminism_naming_both_sides(recorded: object, named: list[str]) -> None:
    result = turn(one_activity, [started(), recorded])  # type: ignore[list-item]
    assert kinds(result.output.new_events) == ["OrchestrationFailed"]
    assert result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "NonDeterminismError"
    assert all(n in result.outcome.error.message for n in named), result.outcome.error.message
    assert not result.output.activities


def test_a_recorded_call_the_code_no_longer_makes_is_nondeterminism() -> None:
    result = turn(waits_twice, [started(), event_subscribed(2, "go"), activity_scheduled(3, "B", "x")])
    assert result.outcome is not None and result.outcome.error is not None
    assert "history records activity 'B'" in result.outcome.error.message


def test_a_call_where_history_has_none_is_nondeterminism() -> None:
    async def two(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_activity("A", "x")
        return await ctx.schedule_activity("B", "y")

    history = [started(), activity_scheduled(2, "A", "x"), event_raised(3, "go", "d"), activity_completed(4, 2, "r")]
    result = turn(two, history)
    assert result.outcome is None  # B comes after the last recorded event: new work
    result = turn(two, history[:2] + [activity_completed(3, 2, "r"), event_raised(4, "go", "d")])
    assert result.outcome is not None and result.outcome.error is not None
    assert "schedules activity 'B' with input 'y' where history has no such call" in result.outcome.error.message


@pytest.mark.parametrize(("completion", "problem"), [
    (timer_fired(3, 2, 0), "a activity schedule"),
    (activity_completed(3, 9, "r"), "no open schedule"),
])
def test_a_completion_of_the_wrong_kind_or_of_nothing_is_nondeterminism(completion: object, problem: str) -> None:
    result = turn(one_activity, [started(), activity_scheduled(2, "A", "in"), completion])  # type: ignore[list-item]
    assert result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "NonDeterminismError" and problem in result.outcome.error.message


def test_history_the_code_no_longer_reaches_is_fine() -> None:
    history = [started(), activity_scheduled(2, "A", "in"), activity_completed(3, 2, "r"),
               activity_scheduled(4, "Later", "y")]
    result = turn(one_activity, history)
    assert result.outcome is not None and (result.status, result.outcome.output) == (Status.COMPLETED, "r")


# -- select and wait_for losers ------------------------------------------------------------------


def test_select_loser_activity_is_cancelled_and_timer_deleted() -> None:
    history = [started(), activity_scheduled(2, "A", "x"), timer_created(3, 5000)]
    timer_won = turn(act_or_timer, history, timer_message(3, 5000))
    assert timer_won.outcome is not None and timer_won.outcome.output == "1:None"
    assert timer_won.output.cancelled_activities == [2]
    activity_won = turn(act_or_timer, history, activity_result(2, "r"))
    assert activity_won.outcome is not None and activity_won.outcome.output == "0:r"
    assert activity_won.output.cancelled_timers == [3]  # its TimerFired, queued earlier, is deleted


def test_select_winner_is_the_earliest_completion_in_history() -> None:
    history = [started(), activity_scheduled(2, "A", "x"), timer_created(3, 5000), timer_fired(4, 3, 5000),
               activity_completed(5, 2, "r")]
    result = turn(act_or_timer, history)
    assert result.outcome is not None and result.outcome.output == "1:None"
    assert kinds(result.output.new_events) == ["OrchestrationCompleted"]
    assert not result.output.cancelled_activities  # the loser was cancelled on replay: no side effect


def test_wait_for_timeout_cancels_the_activity() -> None:
    async def bounded(ctx: OrchestrationContext, _: str) -> str:
        try:
            return await asyncio.wait_for(ctx.schedule_activity("A", "x"), 2)
        except TimeoutError:
            return "timed out"

    history = [started(), activity_scheduled(2, "A", "x"), timer_created(3, 2000)]
    result = turn(bounded, history, timer_message(3, 2000), activity_result(2, "late"))
    assert result.outcome is not None and result.outcome.output == "timed out"
    assert result.output.cancelled_activities == [2]
    assert kinds(result.output.new_events) == ["TimerFired", "OrchestrationCompleted"]  # the late result is dropped


def test_a_select_loser_wait_does_not_consume_the_event() -> None:
    async def wait_loses(ctx: OrchestrationContext, _: str) -> str:
        idx, _f = await ctx.select2(ctx.schedule_wait("go"), ctx.schedule_timer(1))
        return f"{idx}:" + await ctx.schedule_wait("go")

    history = [started(), event_subscribed(2, "go"), timer_created(3, 1000), timer_fired(4, 3, 1000),
               event_subscribed(5, "go")]
    result = turn(wait_loses, history, external("go", "d"))
    assert result.outcome is not None and result.outcome.output == "1:d"


# -- how executions end ------------------------------------------------------------------------


def test_continue_as_new_starts_the_next_execution_and_carries_events_over() -> None:
    async def loop(ctx: OrchestrationContext, input: str) -> str:
        await ctx.schedule_wait("tick")
        ctx.continue_as_new(input + "+")

    result = turn(loop, [started("n"), event_subscribed(2, "tick")],
                  external("other", "kept"), external("tick", "t"), external("late", "after"))
    assert kinds(result.output.new_events) == ["EventRaised", "EventRaised", "OrchestrationContinuedAsNew"]
    assert result.status is Status.CONTINUED_AS_NEW
    sent = [m for m, _ in result.output.messages]
    assert isinstance(sent[0], StartOrchestration) and (sent[0].execution_id, sent[0].input) == (2, "n+")
    assert [(m.name, m.data) for m in sent[1:] if isinstance(m, ExternalEvent)] == [("other", "kept"),
                                                                                  ("late", "after")]


def test_a_child_reports_its_end_to_its_parent() -> None:
    result = turn(one_activity, [started("x", parent=("parent", 1, 7)), activity_scheduled(2, "A", "x")],
                  activity_result(2, "r"))
    [(msg, _)] = result.output.messages
    assert isinstance(msg, SubOrchestrationResult) and (msg.instance_id, msg.event_id, msg.result) == ("parent", 7, "r")


def test_the_history_limit_fails_the_execution_and_sends_no_work_past_it() -> None:
    async def two(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_activity("A", "x")
        return await ctx.schedule_activity("B", "y")

    result = turn(two, [started(), activity_scheduled(2, "A", "x")], activity_result(2, "r"),
                  options=RuntimeOptions(max_history_events=3))
    assert result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "HistoryTooLongError"
    assert kinds(result.output.new_events) == ["ActivityCompleted", "ActivityScheduled", "OrchestrationFailed"]
    assert result.output.activities == []


@pytest.mark.parametrize(("body", "error_type"), [("raise", "ValueError"), ("int", "PayloadError")])
def test_an_escaping_exception_or_a_non_str_result_fails_with_its_type(body: str, error_type: str) -> None:
    async def bad(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_activity("A", "x")
        if body == "raise":
            raise ValueError("nope")
        return 42  # type: ignore[return-value]

    result = turn(bad, [started(), activity_scheduled(2, "A", "x"), activity_completed(3, 2, "r")])
    assert result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == error_type


def test_a_live_execution_costs_only_its_new_messages() -> None:
    ex = Execution(one_activity, INSTANCE, 1, "Orch", "1.0.0", RuntimeOptions())
    try:
        first = ex.run_turn(TurnInput(now_ms=T0, messages=[start("x")]))
        assert first.replayed is None and kinds(first.output.new_events)[-1] == "ActivityScheduled"
        second = ex.run_turn(TurnInput(now_ms=T0 + 5, messages=[activity_result(2, "r")]))
        assert second.replayed is None and second.status is Status.COMPLETED
        assert not ex.reusable
    finally:
        ex.dispose()


# -- import directions (LAYOUT.md) ------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports, relative ones resolved against the ``duroxide_runtime`` package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(f"{base}.{node.module}" if node.level and node.module else node.module or base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_context_imports_the_commands_not_the_execution() -> None:
    engine = {m for m in _imports(ROOT / "duroxide_runtime" / "context.py") if ".engine" in m or m.endswith("replay")}
    assert engine == {"duroxide_runtime.engine.commands"}, engine


def test_the_engine_does_no_io_and_never_imports_dispatch_or_stores() -> None:
    forbidden = ("providers", "dispatch", "client", "observe", "metrics", "tracing", "runtime", "replay")
    for path in (ROOT / "duroxide_runtime" / "engine").glob("*.py"):
        bad = [m for m in _imports(path) if m.startswith("duroxide_runtime.")
               and m.split(".")[1] in forbidden]
        assert not bad, f"{path.name} imports {bad}"
