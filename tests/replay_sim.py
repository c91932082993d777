"""A store-less simulator for the engine (used by test_replay_properties).

What the synthetic-history tests of ``test_engine.py`` cannot express: random
programs run against a random outside world, turn after turn. It plays the
dispatcher and the outside world around the engine's turn function:

* a *program* is a list of steps that :func:`make_orchestration` turns into an
  orchestration function (activities, fan-out, select, event waits, guids,
  asyncio.sleep/gather/wait/wait_for, sub-orchestrations, retries, ...);
* the *world* is a tape of small integers: which pending work completes next,
  whether it succeeds, when events are raised, how many messages share a turn,
  duplicates and late completions of cancelled work;
* :func:`run_live` runs a scenario with one ``Execution`` kept live across turns
  (``run_turn``) and records every turn (time, messages delivered, output);
* :func:`run_from_scratch` / :func:`run_from_cut` re-run the recorded turns the
  way a dispatcher without a cache does (``execute``: replay of stored events).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from duroxide_runtime import ErrorDetails, Event, HistoryEvent, OrchestrationContext, RuntimeOptions
from duroxide_runtime.errors import DurableTaskFailed
from duroxide_runtime.messages import (
    ActivityResult,
    CancelRequest,
    ExternalEvent,
    OrchestratorMessage,
    StartOrchestration,
    SubOrchestrationResult,
    TimerFired,
)
from duroxide_runtime.options import RetryPolicy
from duroxide_runtime.engine.execution import Execution, TurnInput, execute
from duroxide_runtime.engine.output import Outcome, TurnOutput

INSTANCE = "inst"
ORCH = "Prog"
VERSION = "1.0.0"
START_MS = 1_000_000
MAX_TURNS = 40
EVENT_NAMES = ("e0", "e1")
OPTIONS = RuntimeOptions()

# -- programs --------------------------------------------------------------------

Step = tuple[Any, ...]


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    end: str = "return"  # or "can" (continue_as_new)


Probe = list[tuple[Any, ...]]


def _err(r: object) -> object:
    return r if isinstance(r, (str, type(None), list)) else f"err:{type(r).__name__}"


def make_orchestration(program: Program, probe: Probe) -> Callable[[OrchestrationContext, str], Any]:
    """The orchestration function for ``program``; ``probe`` records (step, i, is_replaying) and catches."""

    async def orch(ctx: OrchestrationContext, input: str) -> str:
        out: list[Any] = [input]

        def caught(i: int, exc: BaseException) -> None:
            probe.append(("caught", i, type(exc).__name__))
            out.append(f"caught:{type(exc).__name__}")

        spawned: list[asyncio.Future[Any]] = []

        async def background(i: int) -> str:
            r = await ctx.schedule_activity("Bg", f"{i}:b")
            return r + "/" + await ctx.schedule_wait(EVENT_NAMES[i % 2])

        for i, step in enumerate(program.steps):
            probe.append(("step", i, ctx.is_replaying))
            kind = step[0]
            if kind == "act":  # unguarded: a failure fails the orchestration
                out.append(await ctx.schedule_activity(f"A{step[1]}", f"{i}:0"))
            elif kind == "try_act":
                try:
                    out.append(await ctx.schedule_activity(f"A{step[1]}", f"{i}:0"))
                except Exception as exc:  # noqa: BLE001 - deliberately broad: must not swallow replay errors
                    caught(i, exc)
                    out.append(await ctx.schedule_activity("Recover", f"{i}:r"))
            elif kind == "fanout":
                try:
                    out.append(await ctx.join([ctx.schedule_activity(f"A{j % 3}", f"{i}:{j}")
                                               for j in range(step[1])]))
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "sel_act_timer":
                idx, fut = await ctx.select2(ctx.schedule_activity(f"A{step[1]}", f"{i}:0"),
                                             ctx.schedule_timer(step[2]))
                try:
                    out.append([idx, fut.result()])
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "sel_wait_timer":
                idx, fut = await ctx.select2(ctx.schedule_wait(step[1]), ctx.schedule_timer(step[2]))
                out.append([idx, fut.result()])
            elif kind == "wait":
                out.append(await ctx.schedule_wait(step[1]))
            elif kind == "guid":
                out.append(await ctx.new_guid())
            elif kind == "utcnow":
                out.append((await ctx.utc_now()).isoformat())
            elif kind == "sleep":
                await asyncio.sleep(step[1])
                out.append("slept")
            elif kind == "gather":
                async def chain(i: int = i) -> str:
                    r = await ctx.schedule_activity("A1", f"{i}:c")
                    await asyncio.sleep(1)
                    return r

                res = await asyncio.gather(ctx.schedule_activity("A0", f"{i}:g"), ctx.schedule_timer(step[1]),
                                           ctx.new_guid(), chain(), return_exceptions=True)
                out.append([_err(r) for r in res])
            elif kind == "sub":
                try:
                    out.append(await ctx.schedule_sub_orchestration("Child", f"{i}:s"))
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "retry":
                try:
                    out.append(await ctx.schedule_activity("Flaky", f"{i}:0",
                                                           retry=RetryPolicy(max_attempts=2, backoff=1)))
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "timeout":
                try:
                    out.append(await ctx.schedule_activity("Slow", f"{i}:0", timeout=step[1]))
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "wait_first":
                futs = [ctx.schedule_activity("A2", f"{i}:{j}") for j in range(2)]
                done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
                out.append(sorted(j for j, f in enumerate(futs) if f in done))
            elif kind == "wait_for":
                try:
                    out.append(await asyncio.wait_for(ctx.schedule_activity("A0", f"{i}:0"), step[1]))
                except TimeoutError as exc:
                    caught(i, exc)
                except DurableTaskFailed as exc:
                    caught(i, exc)
            elif kind == "sel_sub_timer":
                idx, fut = await ctx.select2(ctx.schedule_sub_orchestration("Child", f"{i}:s"),
                                             ctx.schedule_timer(step[1]))
                try:
                    out.append([idx, fut.result()])
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "sel_coros":  # select between two tasks (coroutines), not durable futures
                async def left(i: int = i) -> str:
                    r = await ctx.schedule_activity("A0", f"{i}:L")
                    await asyncio.sleep(1)
                    return "L" + r

                async def right(i: int = i) -> str:
                    return "R" + await ctx.schedule_wait(EVENT_NAMES[step[1] % 2])

                idx, fut = await ctx.select2(left(), right())
                try:
                    out.append([idx, fut.result()])
                except Exception as exc:  # noqa: BLE001
                    caught(i, exc)
            elif kind == "detached":
                ctx.start_orchestration("Detached", f"{INSTANCE}-d{i}", f"{i}:d")
            elif kind == "spawn":  # a task that runs alongside the following steps
                spawned.append(asyncio.ensure_future(background(i)))
            elif kind == "cancel_act":  # a dropped future cancels its activity
                dropped = ctx.schedule_activity("Dropped", f"{i}:x")
                dropped.cancel()
                out.append(await ctx.schedule_activity("A0", f"{i}:0"))
            elif kind == "status":
                ctx.set_custom_status(f"s{i}")
            elif kind == "trace":
                ctx.trace_info(f"step {i}")
            else:  # pragma: no cover
                raise AssertionError(step)
        for n, task in enumerate(spawned):
            try:
                out.append(await task)
            except Exception as exc:  # noqa: BLE001
                caught(-1 - n, exc)
        if program.end == "can":
            ctx.continue_as_new(json.dumps(out))
        return json.dumps(out)

    return orch


# -- the world -------------------------------------------------------------------


class Tape:
    """Choices of the outside world; 0 (the shrink target) means 'first pending, success, no extras'."""

    def __init__(self, values: Sequence[int]) -> None:
        self.values = list(values)
        self.pos = 0

    def choose(self, n: int) -> int:
        if n <= 1:
            return 0
        v = self.values[self.pos] if self.pos < len(self.values) else 0
        self.pos += 1
        return v % n


@dataclass
class _Pending:
    msg: OrchestratorMessage
    fire_at: int = 0
    cancelled: bool = False
    duplicated: bool = False


@dataclass
class Turn:
    now_ms: int
    messages: list[OrchestratorMessage]
    output: TurnOutput
    history_len_after: int


@dataclass
class Run:
    turns: list[Turn] = field(default_factory=list)
    history: list[HistoryEvent] = field(default_factory=list)
    outcome: Outcome | None = None
    traces: list[str] = field(default_factory=list)


class _TraceCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


class capture_traces:
    """Context manager collecting messages of ``ctx.trace`` (logger ``duroxide.orchestration``)."""

    def __enter__(self) -> list[str]:
        self.handler = _TraceCapture()
        self.logger = logging.getLogger("duroxide.orchestration")
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)
        return self.handler.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)


@contextmanager
def counting_guids(start: int = 0) -> Iterator[None]:
    """``new_guid`` yields 00000000-...-0001, -0002, ... so that two runs generate the same values.

    Replay must hand back the recorded value and never call the generator, so a
    from-scratch run only matches the live run if no value is generated twice.
    """
    count = start
    real = uuid.uuid4

    def fake() -> uuid.UUID:
        nonlocal count
        count += 1
        return uuid.UUID(int=count)

    uuid.uuid4 = fake
    try:
        yield
    finally:
        uuid.uuid4 = real


def new_execution(fn: Callable[..., Any], options: RuntimeOptions = OPTIONS) -> Execution:
    return Execution(fn, INSTANCE, 1, ORCH, VERSION, options)


def start_message() -> StartOrchestration:
    return StartOrchestration(instance_id=INSTANCE, name=ORCH, version=VERSION, input="in", execution_id=1)


class World:
    """Turns the outputs of each turn into pending work and picks the next batch from the tape."""

    def __init__(self, tape: Tape) -> None:
        self.tape = tape
        self.pending: list[_Pending] = []
        self.now = START_MS
        self.raised = 0

    def absorb(self, out: TurnOutput) -> None:
        for work in out.activities:
            attempt_fails = self.tape.choose(4) == 3
            if attempt_fails:
                res = ActivityResult(instance_id=INSTANCE, execution_id=1, event_id=work.event_id,
                                     error=ErrorDetails("ValueError", f"boom {work.name} {work.input}", "tb"))
            else:
                res = ActivityResult(instance_id=INSTANCE, execution_id=1, event_id=work.event_id,
                                     result=f"r:{work.name}:{work.input}")
            self.pending.append(_Pending(res))
        for msg, visible_at in out.messages:
            if isinstance(msg, TimerFired):
                self.pending.append(_Pending(msg, fire_at=visible_at or msg.fire_at_ms))
            elif isinstance(msg, StartOrchestration) and msg.parent_instance_id == INSTANCE:
                assert msg.parent_event_id is not None
                fails = self.tape.choose(4) == 3
                self.pending.append(_Pending(SubOrchestrationResult(
                    instance_id=INSTANCE, execution_id=1, event_id=msg.parent_event_id,
                    result=None if fails else f"child:{msg.input}",
                    error=ErrorDetails("ChildError", f"child {msg.instance_id} failed") if fails else None)))
        for event_id in out.cancelled_activities:
            for p in self.pending:
                if isinstance(p.msg, ActivityResult) and p.msg.event_id == event_id:
                    p.cancelled = True

    def _raise(self, name: str) -> ExternalEvent:
        self.raised += 1
        return ExternalEvent(instance_id=INSTANCE, name=name, data=f"d{self.raised}")

    def next_batch(self, history: Sequence[HistoryEvent]) -> list[OrchestratorMessage]:
        batch: list[OrchestratorMessage] = []
        size = 1 + self.tape.choose(3)
        self.now += 1 + 500 * self.tape.choose(4)
        for _ in range(size):
            extra = self.tape.choose(16)
            if extra == 15:
                batch.append(self._raise(EVENT_NAMES[self.tape.choose(2)]))
                continue
            if extra == 14 and not batch:
                batch.append(CancelRequest(instance_id=INSTANCE, reason="operator"))
                return batch
            if not self.pending:
                break
            p = self.pending[self.tape.choose(len(self.pending))]
            if p.cancelled and self.tape.choose(2) == 0:
                self.pending.remove(p)  # the cancelled work never answers
                continue
            if p.duplicated or self.tape.choose(8) != 7:
                self.pending.remove(p)
            else:
                p.duplicated = True  # at-least-once: it will be delivered again later
            self.now = max(self.now, p.fire_at)
            batch.append(p.msg)
        if not batch:
            # Nothing completes: raise an event somebody waits for (or any event).
            subscribed = {n: 0 for n in EVENT_NAMES}
            for e in history:
                if isinstance(e, Event.EventSubscribed):
                    subscribed[e.name] = subscribed.get(e.name, 0) + 1
                elif isinstance(e, Event.EventRaised):
                    subscribed[e.name] = subscribed.get(e.name, 0) - 1
            owed = [n for n in EVENT_NAMES if subscribed[n] > 0]
            batch.append(self._raise(owed[0] if owed else EVENT_NAMES[self.tape.choose(2)]))
        return batch


def run_live(program: Program, tape_values: Sequence[int], probe: Probe | None = None,
             options: RuntimeOptions = OPTIONS) -> Run:
    """Run a scenario with one live Execution; records each turn's messages and output."""
    probe = probe if probe is not None else []
    world = World(Tape(tape_values))
    run = Run()
    ex = new_execution(make_orchestration(program, probe), options)
    batch: list[OrchestratorMessage] = [start_message()]
    try:
        with capture_traces() as traces, counting_guids():
            while True:
                out = ex.run_turn(TurnInput(now_ms=world.now, messages=batch)).output
                run.turns.append(Turn(world.now, batch, out, len(ex.history)))
                world.absorb(out)
                if ex.outcome is not None or len(run.turns) >= MAX_TURNS:
                    break
                batch = world.next_batch(ex.history)
        run.traces = list(traces)
        run.history = list(ex.history)
        run.outcome = ex.outcome
    finally:
        ex.dispose()
    return run


def run_from_scratch(program: Program, live: Run, probe: Probe | None = None,
                     options: RuntimeOptions = OPTIONS) -> Run:
    """Re-run the recorded turns of ``live``; every turn is ``execute`` on the events stored so far."""
    probe = probe if probe is not None else []
    fn = make_orchestration(program, probe)
    run = Run()
    stored: list[HistoryEvent] = []
    with capture_traces() as traces, counting_guids():
        for turn in live.turns:
            result = execute(fn, TurnInput(now_ms=turn.now_ms, messages=turn.messages, history=stored),
                             instance_id=INSTANCE, options=options)
            stored = stored + result.output.new_events
            run.turns.append(Turn(turn.now_ms, turn.messages, result.output, len(stored)))
            run.outcome = result.outcome
    run.traces = list(traces)
    run.history = stored
    return run


# -- normalisation -----------------------------------------------------------------


def _norm_value(v: Any) -> Any:
    if isinstance(v, ErrorDetails):
        return ("ErrorDetails", v.error_type, v.message)
    return v


# Fields that differ between two runs of the same program by design: times, and the
# random trace ids a new execution draws (replay reuses the recorded ones).
_PER_RUN = ("timestamp_ms", "trace_context", "parent_trace_context")


def norm_event(e: HistoryEvent) -> tuple[Any, ...]:
    """Event type, id and every field but per-run ones (error tracebacks left out)."""
    fields = tuple((f.name, _norm_value(getattr(e, f.name))) for f in dataclasses.fields(e)
                   if f.name not in _PER_RUN)
    return (type(e).__name__, *fields)


def norm_history(history: Sequence[HistoryEvent]) -> list[tuple[Any, ...]]:
    return [norm_event(e) for e in history]


def _norm_msg(m: Any) -> Any:
    if dataclasses.is_dataclass(m):
        return (type(m).__name__, tuple((f.name, _norm_value(getattr(m, f.name))) for f in dataclasses.fields(m)
                                        if f.name not in _PER_RUN))
    return m


def norm_output(out: TurnOutput) -> dict[str, Any]:
    """What a turn hands to the dispatcher (events compared separately)."""
    return {
        "events": norm_history(out.new_events),
        "activities": [_norm_msg(a) for a in out.activities],
        "messages": [(_norm_msg(m), at) for m, at in out.messages],
        "cancelled": list(out.cancelled_activities),
        "custom_status": (out.custom_status, out.custom_status_changed),
    }


def norm_outcome(o: Outcome | None) -> Any:
    if o is None:
        return None
    return (o.status, o.output, _norm_value(o.error), o.next_input, o.next_version)


def is_empty(out: TurnOutput) -> bool:
    return out.is_empty()


@dataclass
class CutRun:
    replay_output: TurnOutput
    replay_probe: Probe
    turns: list[Turn]
    history: list[HistoryEvent]
    outcome: Outcome | None
    replaying_after_replay: bool


def run_from_cut(program: Program, live: Run, cut: int) -> CutRun:
    """Replay ``live`` history up to the end of turn ``cut`` in a fresh Execution, then deliver the rest live."""
    probe: Probe = []
    ex = new_execution(make_orchestration(program, probe))
    prefix = live.history[:live.turns[cut].history_len_after]
    generated = sum(1 for e in prefix if isinstance(e, Event.SystemCall) and e.op == "guid")
    following = live.turns[cut + 1:]
    try:
        with counting_guids(generated):
            now = following[0].now_ms if following else live.turns[cut].now_ms + 1
            replay_out = ex.run_turn(TurnInput(now_ms=now, history=prefix)).output
            replay_probe = list(probe)
            replaying_after = ex.ctx.is_replaying
            probe.clear()
            turns = [Turn(t.now_ms, t.messages, ex.run_turn(TurnInput(now_ms=t.now_ms, messages=t.messages)).output,
                          len(ex.history)) for t in following]
        assert all(not p[2] for p in probe if p[0] == "step"), f"is_replaying True while running new code: {probe}"
        return CutRun(replay_out, replay_probe, turns, list(ex.history), ex.outcome, replaying_after)
    finally:
        ex.dispose()
