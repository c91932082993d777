"""Property-based tests of the replay engine (SEMANTICS 1-9), driven without a store.

``replay_sim`` plays the dispatcher and the outside world around the engine's
turn function; hypothesis generates orchestration programs and the world's choices.
Hand-written histories are in ``test_engine.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from duroxide_runtime import ErrorDetails, Event, HistoryEvent, OrchestrationContext, RuntimeOptions
from duroxide_runtime.engine.execution import TurnInput, execute
from duroxide_runtime.errors import ActivityFailed
from duroxide_runtime.messages import ActivityResult, ExternalEvent, StartOrchestration, TimerFired

from .replay_sim import (
    EVENT_NAMES,
    INSTANCE,
    START_MS,
    VERSION,
    Program,
    Run,
    is_empty,
    make_orchestration,
    new_execution,
    norm_history,
    norm_outcome,
    norm_output,
    run_from_cut,
    run_from_scratch,
    run_live,
)

# -- strategies ---------------------------------------------------------------------

_names = st.integers(0, 2)
_secs = st.integers(1, 5)
_event = st.sampled_from(EVENT_NAMES)

steps = st.one_of(
    st.tuples(st.just("act"), _names),
    st.tuples(st.just("try_act"), _names),
    st.tuples(st.just("fanout"), st.integers(1, 4)),
    st.tuples(st.just("sel_act_timer"), _names, _secs),
    st.tuples(st.just("sel_wait_timer"), _event, _secs),
    st.tuples(st.just("wait"), _event),
    st.just(("guid",)),
    st.just(("utcnow",)),
    st.tuples(st.just("sleep"), _secs),
    st.tuples(st.just("gather"), _secs),
    st.just(("sub",)),
    st.just(("retry",)),
    st.tuples(st.just("timeout"), _secs),
    st.just(("wait_first",)),
    st.tuples(st.just("wait_for"), _secs),
    st.tuples(st.just("sel_sub_timer"), _secs),
    st.just(("detached",)),
    st.tuples(st.just("sel_coros"), st.integers(0, 1)),
    st.just(("spawn",)),
    st.just(("cancel_act",)),
    st.just(("status",)),
    st.just(("trace",)),
)
programs = st.builds(Program, st.lists(steps, min_size=2, max_size=10).map(tuple), st.sampled_from(["return", "can"]))
tapes = st.lists(st.integers(0, 255), min_size=30, max_size=150)

#: REPLAY_PROP_EXAMPLES=5000 for a long hunt; the default keeps the file well under 60 s.
PROPS = settings(max_examples=int(os.environ.get("REPLAY_PROP_EXAMPLES", "500")), deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


def _compare_runs(a: Run, b: Run) -> None:
    assert norm_history(b.history) == norm_history(a.history)
    assert len(b.turns) == len(a.turns)
    for n, (ta, tb) in enumerate(zip(a.turns, b.turns)):
        assert norm_output(tb.output) == norm_output(ta.output), f"turn {n} differs"
    assert norm_outcome(b.outcome) == norm_outcome(a.outcome)


# -- (1) live vs from scratch -------------------------------------------------------


@PROPS
@given(programs, tapes)
def test_live_and_from_scratch_replay_agree(program: Program, tape: list[int]) -> None:
    probe: list[tuple[Any, ...]] = []
    live = run_live(program, tape, probe)
    assert all(not p[2] for p in probe if p[0] == "step"), "live code must never see is_replaying"
    scratch = run_from_scratch(program, live)
    _compare_runs(live, scratch)
    # SEMANTICS 7: traces are emitted once per turn that first runs the code, never on replay.
    assert scratch.traces == live.traces
    assert len(live.traces) == len(set(live.traces))


# -- (2) cut anywhere -----------------------------------------------------------------


@PROPS
@given(programs, tapes, st.data())
def test_replaying_a_prefix_repeats_nothing_and_resumes_identically(program: Program, tape: list[int],
                                                                   data: st.DataObject) -> None:
    live = run_live(program, tape)
    assume(len(live.turns) >= 2)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(live.turns) - 2), min_size=1, max_size=3))))
    for cut in cuts:
        res = run_from_cut(program, live, cut)
        assert is_empty(res.replay_output), f"replay of turns 0..{cut} produced output {res.replay_output}"
        steps_run = [p for p in res.replay_probe if p[0] == "step"]
        assert steps_run, "replay must re-run the code"
        assert all(p[2] for p in steps_run), f"is_replaying was False during replay: {res.replay_probe}"
        assert not res.replaying_after_replay
        assert norm_history(res.history) == norm_history(live.history)
        for ta, tb in zip(live.turns[cut + 1:], res.turns):
            assert norm_output(tb.output) == norm_output(ta.output)
        assert norm_outcome(res.outcome) == norm_outcome(live.outcome)


# -- (4) history shape ------------------------------------------------------------------

_COMPLETION_OF = {
    Event.ActivityCompleted: Event.ActivityScheduled,
    Event.ActivityFailed: Event.ActivityScheduled,
    Event.TimerFired: Event.TimerCreated,
    Event.SubOrchestrationCompleted: Event.SubOrchestrationScheduled,
    Event.SubOrchestrationFailed: Event.SubOrchestrationScheduled,
}
_TERMINAL = (Event.OrchestrationCompleted, Event.OrchestrationFailed, Event.OrchestrationContinuedAsNew)


def check_history_shape(history: list[HistoryEvent]) -> None:
    assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    assert isinstance(history[0], Event.OrchestrationStarted)
    completed: set[int] = set()
    for e in history:
        if type(e) in _COMPLETION_OF:
            src = e.source_event_id  # type: ignore[attr-defined]
            assert 0 < src < e.event_id, f"{e} completes a later or unknown event"
            assert isinstance(history[src - 1], _COMPLETION_OF[type(e)]), f"{e} completes {history[src - 1]}"
            assert src not in completed, f"event {src} completed twice"
            completed.add(src)
    terminals = [e for e in history if isinstance(e, _TERMINAL)]
    assert len(terminals) <= 1 and (not terminals or terminals[0] is history[-1])
    ts = [e.timestamp_ms for e in history]
    assert ts == sorted(ts)


@PROPS
@given(programs, tapes)
def test_history_ids_are_consecutive_and_completions_match_their_schedules(program: Program,
                                                                          tape: list[int]) -> None:
    live = run_live(program, tape)
    check_history_shape(live.history)
    assert live.outcome is None or isinstance(live.history[-1], _TERMINAL)
    # each turn's output continues the history where the previous turn left it
    flat = [e for t in live.turns for e in t.output.new_events]
    assert norm_history(flat) == norm_history(live.history)
    # one activity work item per ActivityScheduled, with the same id, name and input
    work = [(a.event_id, a.name, a.input) for t in live.turns for a in t.output.activities]
    assert work == [(e.event_id, e.name, e.input) for e in live.history if isinstance(e, Event.ActivityScheduled)]


@PROPS
@given(programs, tapes, st.integers(3, 15))
def test_history_limit_fails_the_same_way_live_and_from_scratch(program: Program, tape: list[int],
                                                                 limit: int) -> None:
    options = RuntimeOptions(max_history_events=limit)
    live = run_live(program, tape, options=options)
    _compare_runs(live, run_from_scratch(program, live, options=options))
    check_history_shape(live.history)
    # at most the event that crosses the limit, then the terminal failure
    assert len(live.history) <= limit + 2, f"{len(live.history)} events with max_history_events={limit}"
    if live.outcome is not None and live.outcome.error is not None \
            and live.outcome.error.error_type == "HistoryTooLongError":
        # nothing is sent out for events past the limit: the execution has failed
        last = live.turns[-1].output
        assert all(a.event_id <= limit for a in last.activities), last.activities
        assert not [m for m, _ in last.messages
                    if (isinstance(m, TimerFired) and m.event_id > limit)
                    or (isinstance(m, StartOrchestration) and (m.parent_event_id or 0) > limit)], last.messages


@pytest.mark.parametrize("second", ["activity", "sub", "timer"])
def test_history_limit_sends_no_work_for_the_event_past_the_limit(second: str) -> None:
    """max_history_events=3: Started, ActivityScheduled, ActivityCompleted, then the 4th event crosses it."""

    async def two_calls(ctx: OrchestrationContext, _: str) -> str:
        await ctx.schedule_activity("A", "x")
        if second == "activity":
            await ctx.schedule_activity("B", "y")
        elif second == "sub":
            await ctx.schedule_sub_orchestration("Child", "y")
        else:
            await ctx.schedule_timer(5)
        return "done"

    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x")]
    result = execute(two_calls, TurnInput(now_ms=T0 + 1, history=history, messages=[
        ActivityResult(instance_id=INSTANCE, execution_id=1, event_id=2, result="r")]),
        instance_id=INSTANCE, options=RuntimeOptions(max_history_events=3))
    out = result.output
    assert result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "HistoryTooLongError"
    assert type(out.new_events[-1]).__name__ == "OrchestrationFailed"
    # the failed execution must not start work it will never wait for
    assert out.activities == [], out.activities
    assert out.messages == [], out.messages


# -- (3) non-determinism ------------------------------------------------------------------


APPLICATION_ERRORS = {"ActivityFailed", "SubOrchestrationFailed", "ActivityTimeoutError", "TimeoutError"}


def _key(e: HistoryEvent) -> tuple[Any, ...]:
    if isinstance(e, Event.ActivityScheduled):
        return ("activity", e.name, e.input)
    if isinstance(e, Event.SubOrchestrationScheduled):
        return ("sub", e.name, e.input)
    if isinstance(e, Event.OrchestrationChained):
        return ("detached", e.name, e.input)
    if isinstance(e, Event.EventSubscribed):
        return ("wait", e.name)
    if isinstance(e, Event.SystemCall):
        return ("system", e.op)
    if isinstance(e, Event.TimerCreated):
        return ("timer",)
    raise AssertionError(e)


def _tokens(e: HistoryEvent) -> list[str]:
    k = _key(e)
    return [k[0]] if k[0] == "timer" else [str(x) for x in k[1:]]


def _mentions(message: str, token: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(token)}(?![\w])", message) is not None


def _renamed(e: HistoryEvent, how: int) -> HistoryEvent:
    if isinstance(e, (Event.ActivityScheduled, Event.SubOrchestrationScheduled, Event.OrchestrationChained)):
        return dataclasses.replace(e, name=e.name + "X") if how == 0 else dataclasses.replace(e, input=e.input + "X")
    if isinstance(e, Event.EventSubscribed):
        return dataclasses.replace(e, name=e.name + "X")
    if isinstance(e, Event.SystemCall):
        return dataclasses.replace(e, op="utcnow" if e.op == "guid" else "guid")
    raise AssertionError(e)


def _as_other(e: HistoryEvent, like: HistoryEvent) -> HistoryEvent:
    """``like``'s content at ``e``'s position."""
    return dataclasses.replace(like, event_id=e.event_id, timestamp_ms=e.timestamp_ms)


@PROPS
@given(programs, tapes, st.data())
def test_mutated_schedule_fails_with_nondeterminism(program: Program, tape: list[int], data: st.DataObject) -> None:
    live = run_live(program, tape)
    hist = live.history
    sched = [i for i, e in enumerate(hist) if e.is_schedule]
    renamable = [i for i in sched if not isinstance(hist[i], Event.TimerCreated)]
    swappable = [(i, j) for a, i in enumerate(sched) for j in sched[a + 1:] if _key(hist[i]) != _key(hist[j])]
    droppable = [(i, j) for a, i in enumerate(sched) for j in sched[a + 1:a + 2] if _key(hist[i]) != _key(hist[j])]
    kinds = [k for k, ok in (("rename", renamable), ("swap", swappable), ("drop", droppable),
                             ("extra", sched[1:])) if ok]
    assume(kinds)
    kind = data.draw(st.sampled_from(kinds))
    mutated = list(hist)
    if kind == "rename":
        i = data.draw(st.sampled_from(renamable))
        mutated[i] = _renamed(hist[i], data.draw(st.integers(0, 1)))
        last, expected, came = i, mutated[i], hist[i]
    elif kind == "swap":
        i, j = data.draw(st.sampled_from(swappable))
        mutated[i], mutated[j] = _as_other(hist[i], hist[j]), _as_other(hist[j], hist[i])
        last, expected, came = j, hist[j], hist[i]
    elif kind == "drop":
        i, j = data.draw(st.sampled_from(droppable))
        del mutated[i]
        last, expected, came = j - 1, hist[j], hist[i]
    else:  # a recorded call the code never makes, just before one it does make
        j = data.draw(st.sampled_from(sched[1:]))
        ghost = Event.ActivityScheduled(event_id=hist[j].event_id, timestamp_ms=hist[j].timestamp_ms,
                                        name="Ghost", input="boo")
        mutated.insert(j, ghost)
        last, expected, came = j, ghost, hist[j]
    # a turn boundary at or after the mutation (the full history included)
    offset = len(mutated) - len(hist)
    ends = [t.history_len_after + offset for t in live.turns if t.history_len_after + offset > last]
    prefix = mutated[:data.draw(st.sampled_from(ends))]

    probe: list[tuple[Any, ...]] = []
    ex = new_execution(make_orchestration(program, probe))
    try:
        out = ex.run_turn(TurnInput(now_ms=START_MS + 10**7, history=prefix)).output  # must not raise
        assert ex.outcome is not None and ex.outcome.status == "Failed", ex.outcome
        assert ex.outcome.error is not None and ex.outcome.error.error_type == "NonDeterminismError", ex.outcome
        message = ex.outcome.error.message
        for token in _tokens(expected):
            assert _mentions(message, token), f"{message!r} does not name the recorded {token!r}"
        for token in _tokens(came):
            assert _mentions(message, token), f"{message!r} does not name the scheduled {token!r}"
        # user code's `except Exception` never saw the replay failure: it only ever caught application errors
        caught = {p[2] for p in probe if p[0] == "caught"}
        assert caught <= APPLICATION_ERRORS, caught
        # the failure is recorded once; no work leaves a nondeterministic turn
        assert [type(e).__name__ for e in out.new_events] == ["OrchestrationFailed"], out.new_events
        assert not out.activities and not out.messages, out
        # later messages are no-ops
        late = ExternalEvent(instance_id=INSTANCE, name="e0", data="late")
        assert is_empty(ex.run_turn(TurnInput(now_ms=START_MS + 10**7 + 1, messages=[late])).output)
    finally:
        ex.dispose()


@pytest.mark.parametrize("end", ["return", "can"])
def test_replaying_a_finished_history_adds_nothing(end: str) -> None:
    """A history that already ends in a terminal event replays to the same outcome, with no side effect
    (replay has no side effects; ``replay_history`` replays finished histories)."""
    program = Program((("act", 0),), end)
    live = run_live(program, [])
    assert live.outcome is not None and live.outcome.status == ("Completed" if end == "return" else "ContinuedAsNew")
    ex = new_execution(make_orchestration(program, []))
    try:
        out = ex.run_turn(TurnInput(now_ms=START_MS + 10**7, history=live.history)).output
        assert norm_outcome(ex.outcome) == norm_outcome(live.outcome)
        assert out.new_events == [], out.new_events
        assert out.messages == [], out.messages  # e.g. no second StartOrchestration for the next execution
        assert norm_history(ex.history) == norm_history(live.history)
    finally:
        ex.dispose()


# -- hand-written histories (durabletask style) ---------------------------------------------

T0 = START_MS


def _started(input: str = "in") -> HistoryEvent:
    return Event.OrchestrationStarted(event_id=1, timestamp_ms=T0, name="Prog", version=VERSION, input=input)


def _replay(fn: Any, history: list[HistoryEvent], *messages: Any) -> tuple[Any, Any]:
    result = execute(fn, TurnInput(now_ms=T0 + 100_000, messages=messages, history=history), instance_id=INSTANCE)
    return result.outcome, result.output


async def _select_act_timer(ctx: OrchestrationContext, _: str) -> str:
    idx, fut = await ctx.select2(ctx.schedule_activity("A", "x"), ctx.schedule_timer(5))
    return f"{idx}:{fut.result()}"


def _act_vs_timer(timer_first: bool) -> list[HistoryEvent]:
    fired = Event.TimerFired(event_id=0, timestamp_ms=T0 + 5000, source_event_id=3, fire_at_ms=T0 + 5000)
    done = Event.ActivityCompleted(event_id=0, timestamp_ms=T0 + 5000, source_event_id=2, result="r")
    tail = [fired, done] if timer_first else [done, fired]
    return [_started(),
            Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"),
            Event.TimerCreated(event_id=3, timestamp_ms=T0, fire_at_ms=T0 + 5000),
            *(dataclasses.replace(e, event_id=4 + n) for n, e in enumerate(tail))]


@pytest.mark.parametrize(("timer_first", "expected"), [(True, "1:None"), (False, "0:r")])
def test_select_winner_is_earliest_completion_in_history(timer_first: bool, expected: str) -> None:
    outcome, out = _replay(_select_act_timer, _act_vs_timer(timer_first))
    assert outcome is not None and (outcome.status, outcome.output) == ("Completed", expected)
    assert not out.activities and not out.cancelled_activities  # the loser was cancelled on replay: no side effect


def test_select_winner_in_one_batch_is_the_first_message() -> None:
    history = _act_vs_timer(True)[:3]
    outcome, out = _replay(_select_act_timer, history,
                           TimerFired(instance_id=INSTANCE, execution_id=1, event_id=3, fire_at_ms=T0 + 5000),
                           ActivityResult(instance_id=INSTANCE, execution_id=1, event_id=2, result="r"))
    assert outcome is not None and outcome.output == "1:None"
    # the activity result arrives after the orchestration ended: dropped, not recorded
    assert [type(e).__name__ for e in out.new_events] == ["TimerFired", "OrchestrationCompleted"]
    assert out.cancelled_activities == [2]  # the loser's activity is cancelled


async def _join_three(ctx: OrchestrationContext, _: str) -> str:
    return ",".join(await ctx.join([ctx.schedule_activity("A", str(i)) for i in range(3)]))


def test_join_results_are_in_schedule_order_whatever_the_completion_order() -> None:
    history: list[HistoryEvent] = [_started()] + [
        Event.ActivityScheduled(event_id=2 + i, timestamp_ms=T0, name="A", input=str(i)) for i in range(3)]
    for n, src in enumerate((4, 2, 3)):
        history.append(Event.ActivityCompleted(event_id=5 + n, timestamp_ms=T0 + 1, source_event_id=src,
                                               result=f"r{src - 2}"))
    outcome, out = _replay(_join_three, history)
    assert outcome is not None and outcome.output == "r0,r1,r2"
    assert [type(e).__name__ for e in out.new_events] == ["OrchestrationCompleted"]


async def _guid_and_time(ctx: OrchestrationContext, _: str) -> str:
    g = await ctx.new_guid()
    t = await ctx.utc_now()
    return f"{g}|{int(t.timestamp() * 1000)}"


def test_guid_and_utc_now_replay_the_recorded_values() -> None:
    history = [_started(),
               Event.SystemCall(event_id=2, timestamp_ms=T0, op="guid", value="fixed-guid"),
               Event.SystemCall(event_id=3, timestamp_ms=T0, op="utcnow", value="123456")]
    outcome, _ = _replay(_guid_and_time, history)
    assert outcome is not None and outcome.output == "fixed-guid|123456"


async def _act_then_wait(ctx: OrchestrationContext, _: str) -> str:
    a = await ctx.schedule_activity("A", "x")
    return a + "+" + await ctx.schedule_wait("go")


def test_event_raised_before_the_wait_is_delivered_to_it() -> None:
    history = [_started(),
               Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"),
               Event.EventRaised(event_id=3, timestamp_ms=T0 + 1, name="go", data="early"),
               Event.ActivityCompleted(event_id=4, timestamp_ms=T0 + 2, source_event_id=2, result="r"),
               Event.EventSubscribed(event_id=5, timestamp_ms=T0 + 2, name="go")]
    outcome, _ = _replay(_act_then_wait, history)
    assert outcome is not None and outcome.output == "r+early"


async def _wait_loses_then_waits(ctx: OrchestrationContext, _: str) -> str:
    idx, _f = await ctx.select2(ctx.schedule_wait("go"), ctx.schedule_timer(1))
    return f"{idx}:" + await ctx.schedule_wait("go")


def test_select_loser_wait_does_not_consume_the_event() -> None:
    history = [_started(),
               Event.EventSubscribed(event_id=2, timestamp_ms=T0, name="go"),
               Event.TimerCreated(event_id=3, timestamp_ms=T0, fire_at_ms=T0 + 1000),
               Event.TimerFired(event_id=4, timestamp_ms=T0 + 1000, source_event_id=3, fire_at_ms=T0 + 1000),
               Event.EventSubscribed(event_id=5, timestamp_ms=T0 + 1000, name="go")]
    outcome, _ = _replay(_wait_loses_then_waits, history,
                         ExternalEvent(instance_id=INSTANCE, name="go", data="d"))
    assert outcome is not None and outcome.output == "1:d"


SWALLOWED: list[str] = []


async def _one_activity(ctx: OrchestrationContext, _: str) -> str:
    try:
        return await ctx.schedule_activity("A", "x")
    except Exception as exc:  # noqa: BLE001 - must not swallow replay errors
        SWALLOWED.append(type(exc).__name__)
        return "swallowed"


@pytest.mark.parametrize(("completion", "problem"), [
    (Event.TimerFired(event_id=3, timestamp_ms=T0, source_event_id=2, fire_at_ms=T0), "activity"),
    (Event.ActivityCompleted(event_id=3, timestamp_ms=T0, source_event_id=99, result="r"), "no open schedule"),
])
def test_completion_of_wrong_kind_or_unknown_schedule_is_nondeterminism(completion: HistoryEvent,
                                                                        problem: str) -> None:
    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"), completion]
    outcome, _ = _replay(_one_activity, history)
    assert outcome is not None and outcome.status == "Failed"
    assert outcome.error.error_type == "NonDeterminismError" and problem in outcome.error.message


def test_duplicate_completion_in_history_is_nondeterminism() -> None:
    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"),
               Event.ActivityCompleted(event_id=3, timestamp_ms=T0, source_event_id=2, result="r"),
               Event.ActivityCompleted(event_id=4, timestamp_ms=T0, source_event_id=2, result="r")]
    # the code finishes at event 3, so event 4 is history it no longer reaches (SEMANTICS 4) ...
    outcome, _ = _replay(_one_activity, history)
    assert outcome is not None and outcome.status == "Completed"

    async def two(ctx: OrchestrationContext, _: str) -> str:
        a = await ctx.schedule_activity("A", "x")
        return a + await ctx.schedule_wait("go")

    # ... but while the code still runs, a second completion of one schedule is corrupt history.
    outcome, _ = _replay(two, history)
    assert outcome is not None and outcome.status == "Failed"
    assert outcome.error.error_type == "NonDeterminismError", outcome.error


def test_renamed_activity_is_not_swallowed_by_except_exception() -> None:
    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="B", input="x")]
    SWALLOWED.clear()
    outcome, out = _replay(_one_activity, history)
    assert SWALLOWED == [], "the except-Exception branch ran"
    assert outcome is not None and outcome.status == "Failed"
    assert outcome.error.error_type == "NonDeterminismError"
    assert "'A'" in outcome.error.message and "'B'" in outcome.error.message
    assert not out.activities


def test_history_the_code_no_longer_reaches_is_fine() -> None:
    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"),
               Event.ActivityCompleted(event_id=3, timestamp_ms=T0, source_event_id=2, result="r"),
               Event.ActivityScheduled(event_id=4, timestamp_ms=T0, name="Later", input="y")]
    outcome, _ = _replay(_one_activity, history)
    assert outcome is not None and (outcome.status, outcome.output) == ("Completed", "r")


def test_recorded_call_the_code_never_makes_is_nondeterminism() -> None:
    async def waits(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("go")

    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x")]
    outcome, _ = _replay(waits, history)
    assert outcome is not None and outcome.error is not None and outcome.error.error_type == "NonDeterminismError"


def test_activity_failure_reaches_code_and_unhandled_fails_with_type() -> None:
    async def unguarded(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_activity("A", "x")

    history = [_started(), Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"),
               Event.ActivityFailed(event_id=3, timestamp_ms=T0, source_event_id=2,
                                    details=ErrorDetails("ValueError", "boom", "tb"))]
    outcome, _ = _replay(_one_activity, history)
    assert outcome is not None and outcome.output == "swallowed"
    outcome, _ = _replay(unguarded, history)
    assert outcome is not None and outcome.status == "Failed"
    assert outcome.error.error_type == ActivityFailed.__name__ and "boom" in outcome.error.message
    assert outcome.error.traceback


def test_asyncio_sleep_is_a_durable_timer_replayed_by_position() -> None:
    async def sleeper(ctx: OrchestrationContext, _: str) -> str:
        await asyncio.sleep(2)
        return "woke"

    history = [_started(), Event.TimerCreated(event_id=2, timestamp_ms=T0, fire_at_ms=T0 + 2000)]
    outcome, out = _replay(sleeper, history)
    assert outcome is None and is_empty(out)
    outcome, out = _replay(sleeper, history,
                           TimerFired(instance_id=INSTANCE, execution_id=1, event_id=2, fire_at_ms=T0 + 2000))
    assert outcome is not None and outcome.output == "woke"


def test_select_of_two_already_completed_futures_picks_the_earlier_completion() -> None:
    async def late_select(ctx: OrchestrationContext, _: str) -> str:
        a = ctx.schedule_activity("A", "x")
        t = ctx.schedule_timer(5)
        await ctx.schedule_activity("C", "y")
        idx, fut = await ctx.select2(a, t)
        return f"{idx}:{fut.result()}"

    head = [_started(),
            Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="A", input="x"),
            Event.TimerCreated(event_id=3, timestamp_ms=T0, fire_at_ms=T0 + 5000),
            Event.ActivityScheduled(event_id=4, timestamp_ms=T0, name="C", input="y")]
    fired = Event.TimerFired(event_id=0, timestamp_ms=T0 + 5000, source_event_id=3, fire_at_ms=T0 + 5000)
    a_done = Event.ActivityCompleted(event_id=0, timestamp_ms=T0 + 5000, source_event_id=2, result="r")
    c_done = Event.ActivityCompleted(event_id=0, timestamp_ms=T0 + 5000, source_event_id=4, result="c")
    for order, expected in (((fired, a_done), "1:None"), ((a_done, fired), "0:r")):
        history = head + [dataclasses.replace(e, event_id=5 + n) for n, e in enumerate((*order, c_done))]
        outcome, _ = _replay(late_select, history)
        assert outcome is not None and outcome.output == expected, (order, outcome)


def test_select_loser_that_already_received_an_event_gives_it_back() -> None:
    async def both_done(ctx: OrchestrationContext, _: str) -> str:
        w = ctx.schedule_wait("go")
        t = ctx.schedule_timer(1)
        await ctx.schedule_activity("C", "y")
        idx, _f = await ctx.select2(w, t)
        return f"{idx}:" + await ctx.schedule_wait("go")

    history = [_started(),
               Event.EventSubscribed(event_id=2, timestamp_ms=T0, name="go"),
               Event.TimerCreated(event_id=3, timestamp_ms=T0, fire_at_ms=T0 + 1000),
               Event.ActivityScheduled(event_id=4, timestamp_ms=T0, name="C", input="y"),
               Event.TimerFired(event_id=5, timestamp_ms=T0 + 1000, source_event_id=3, fire_at_ms=T0 + 1000),
               Event.EventRaised(event_id=6, timestamp_ms=T0 + 1001, name="go", data="d"),
               Event.ActivityCompleted(event_id=7, timestamp_ms=T0 + 1002, source_event_id=4, result="c"),
               Event.EventSubscribed(event_id=8, timestamp_ms=T0 + 1002, name="go")]
    outcome, _ = _replay(both_done, history)
    assert outcome is not None and outcome.output == "1:d", outcome


def test_recorded_call_after_the_point_where_the_code_blocks_is_nondeterminism() -> None:
    async def waits(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.schedule_wait("go")

    history = [_started(), Event.EventSubscribed(event_id=2, timestamp_ms=T0, name="go"),
               Event.ActivityScheduled(event_id=3, timestamp_ms=T0, name="B", input="x")]
    outcome, out = _replay(waits, history)
    assert outcome is not None and outcome.error is not None and outcome.error.error_type == "NonDeterminismError"
    assert "'B'" in outcome.error.message
    assert [type(e).__name__ for e in out.new_events] == ["OrchestrationFailed"]


def test_select_of_two_coroutines_picks_the_one_that_finished_first_in_history() -> None:
    async def race(ctx: OrchestrationContext, _: str) -> str:
        async def left() -> str:
            return "L" + await ctx.schedule_activity("A", "x")

        async def right() -> str:
            return "R" + await ctx.schedule_activity("B", "y")

        c = ctx.schedule_activity("C", "z")
        lt, rt = asyncio.ensure_future(left()), asyncio.ensure_future(right())
        await c  # both tasks may finish before the select looks at them
        idx, fut = await ctx.select2(lt, rt)
        return f"{idx}:{fut.result()}"

    head = [_started(),
            Event.ActivityScheduled(event_id=2, timestamp_ms=T0, name="C", input="z"),
            Event.ActivityScheduled(event_id=3, timestamp_ms=T0, name="A", input="x"),
            Event.ActivityScheduled(event_id=4, timestamp_ms=T0, name="B", input="y")]
    a = Event.ActivityCompleted(event_id=0, timestamp_ms=T0 + 1, source_event_id=3, result="a")
    b = Event.ActivityCompleted(event_id=0, timestamp_ms=T0 + 1, source_event_id=4, result="b")
    c = Event.ActivityCompleted(event_id=0, timestamp_ms=T0 + 1, source_event_id=2, result="c")
    for order, expected in (((b, a, c), "1:Rb"), ((a, b, c), "0:La"), ((b, c, a), "1:Rb")):
        history = head + [dataclasses.replace(e, event_id=5 + n) for n, e in enumerate(order)]
        outcome, _ = _replay(race, history)
        assert outcome is not None and outcome.output == expected, (order, outcome)
