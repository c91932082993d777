"""Property: random interleavings of updates, events, state writes, suspension and cancellation replay identically (SEMANTICS 9).

Hypothesis draws an orchestration program (typed and untyped event waits, update
waits that reply, reject or answer twice, state writes and reads, stream items,
selects of an update against an event or a timer) and a tape for the outside
world (which events and update requests arrive in which turn, repeated request
ids, data that does not decode, timers firing, suspend and resume requests (repeated ones too), a
cancellation with or without a grace period, whose cleanup writes state, emits and waits). The program runs once with one
``Execution`` kept live across turns and once from scratch at every turn
(``execute`` on the events stored so far, as a dispatcher without a cache does):
both must record the same history, turn by turn, and end the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_runtime import (
    Event,
    HistoryEvent,
    OrchestrationContext,
    PayloadDecodeError,
    RuntimeOptions,
    UpdateAlreadyRepliedError,
)
from duroxide_runtime.engine.execution import Execution, TurnInput, execute
from duroxide_runtime.engine.output import Outcome
from duroxide_runtime.messages import (
    CancelRequest, ClientUpdate, ExternalEvent, OrchestratorMessage, ResumeRequest, StartOrchestration,
    SuspendRequest, TimerFired,
)

from .support import normalize

INSTANCE, NAME, VERSION, START_MS, MAX_TURNS = "inst", "Prog", "1.0.0", 1_000_000, 30
EVENTS, UPDATES = ("e0", "e1"), ("u0", "u1")
OPTIONS = RuntimeOptions()


@dataclass
class Point:
    x: int


Step = tuple[Any, ...]

steps = st.one_of(
    st.tuples(st.just("wait"), st.sampled_from(EVENTS)),
    st.tuples(st.just("typed_wait"), st.sampled_from(EVENTS)),
    st.tuples(st.just("update"), st.sampled_from(UPDATES), st.booleans(), st.sampled_from(["reply", "reject", "twice"])),
    st.tuples(st.just("state"), st.integers(0, 2)),
    st.tuples(st.just("emit")),
    st.tuples(st.just("sel_update_event"), st.sampled_from(UPDATES), st.sampled_from(EVENTS)),
    st.tuples(st.just("sel_update_timer"), st.sampled_from(UPDATES), st.integers(1, 30)),
)
programs = st.lists(steps, min_size=1, max_size=8)
tapes = st.lists(st.integers(0, 2**16), max_size=120)


def make_orchestration(program: Sequence[Step]) -> Callable[[OrchestrationContext, str], Any]:
    async def orch(ctx: OrchestrationContext, _: str) -> str:
        out: list[Any] = []
        try:
            return await steps(ctx, out)
        except asyncio.CancelledError:  # cleanup: durable work after the cancellation
            ctx.set_state("cleanup", len(out))
            ctx.emit("cancelled")
            await ctx.select2(ctx.wait_for_event(EVENTS[0]), ctx.schedule_timer(1))
            raise

    async def steps(ctx: OrchestrationContext, out: list[Any]) -> str:
        for i, step in enumerate(program):
            kind = step[0]
            if kind == "wait":
                out.append(await ctx.wait_for_event(step[1]))
            elif kind == "typed_wait":
                try:
                    out.append((await ctx.wait_for_event(step[1], Point)).x)
                except PayloadDecodeError:
                    out.append("bad")
            elif kind == "update":
                typed = await ctx.wait_for_update(step[1], Point) if step[2] else None
                req = typed if typed is not None else await ctx.wait_for_update(step[1])
                out.append(repr(req.data))
                if step[3] == "reject":
                    req.reject(f"no {i}")
                else:
                    req.reply({"step": i, "seen": len(out)})
                if step[3] == "twice":
                    try:
                        req.reply("again")
                    except UpdateAlreadyRepliedError:
                        out.append("twice refused")
            elif kind == "state":
                key = f"k{step[1]}"
                before = ctx.get_state(key)
                ctx.set_state(key, {"step": i, "before": before})
                out.append(before)
            elif kind == "emit":
                ctx.emit(out[-1] if out else i)
            elif kind == "sel_update_event":
                match await ctx.select2(ctx.wait_for_update(step[1]), ctx.wait_for_event(step[2])):
                    case (0, won):
                        won.result().reply("won")
                        out.append(f"update {won.result().request_id}")
                    case (1, event):
                        out.append(f"event {event.result()}")
            elif kind == "sel_update_timer":
                match await ctx.select2(ctx.wait_for_update(step[1]), ctx.schedule_timer(step[2])):
                    case (0, late):
                        late.result().reject("late")
                        out.append(0)
                    case _:
                        out.append(1)
        return json.dumps(out)

    return orch


class World:
    """Picks each turn's messages from the tape: events, update requests (some repeated), due timers."""

    def __init__(self, tape: Sequence[int]) -> None:
        self.tape = list(tape)
        self.pos = 0
        self.now = START_MS
        self.timers: list[TimerFired] = []
        self.request_ids: list[str] = []

    def choose(self, n: int) -> int:
        # Past the tape's end the world keeps varying (deterministically), so runs do not starve.
        v = self.tape[self.pos] if self.pos < len(self.tape) else (self.pos * 2654435761 & 0xFFFFFFFF) >> 11
        self.pos += 1
        return v % n

    def absorb(self, messages: Sequence[tuple[OrchestratorMessage, int | None]]) -> None:
        self.timers += [m for m, _ in messages if isinstance(m, TimerFired)]

    def next_batch(self) -> list[OrchestratorMessage]:
        batch: list[OrchestratorMessage] = []
        self.now += 1 + 1000 * self.choose(3)
        if self.choose(16) == 0:  # seldom: it ends the program
            batch.append(CancelRequest(instance_id=INSTANCE, reason=f"cancel at {self.pos}",
                                       grace_ms=(0, 500, 5000)[self.choose(3)]))
        if self.choose(6) == 0:  # an operator suspends or resumes (either may be stray or repeated)
            batch.append((SuspendRequest if self.choose(2) else ResumeRequest)(instance_id=INSTANCE, reason="op"))
        for _ in range(1 + self.choose(3)):
            what = self.choose(6)
            data = json.dumps({"x": self.choose(9)}) if self.choose(4) else "not a point"
            if what == 0 and self.timers:
                timer = self.timers.pop(0)
                self.now = max(self.now, timer.fire_at_ms)
                batch.append(timer)
            elif what <= 2:  # an event (a timer's slot too, when none is due)
                batch.append(ExternalEvent(instance_id=INSTANCE, name=EVENTS[self.choose(2)], data=data))
            else:
                if self.request_ids and self.choose(4) == 0:
                    rid = self.request_ids[self.choose(len(self.request_ids))]  # a client asking again
                else:
                    rid = f"r{len(self.request_ids)}"
                    self.request_ids.append(rid)
                batch.append(ClientUpdate(instance_id=INSTANCE, request_id=rid, name=UPDATES[self.choose(2)],
                                          data=data))
        return batch


@dataclass
class Run:
    turns: list[tuple[int, list[OrchestratorMessage], list[HistoryEvent]]] = field(default_factory=list)
    history: list[HistoryEvent] = field(default_factory=list)
    outcome: Outcome | None = None


def run_live(program: Sequence[Step], tape: Sequence[int]) -> Run:
    world, run = World(tape), Run()
    ex = Execution(make_orchestration(program), INSTANCE, 1, NAME, VERSION, OPTIONS)
    batch: list[OrchestratorMessage] = [StartOrchestration(instance_id=INSTANCE, name=NAME, version=VERSION,
                                                           input="", execution_id=1)]
    try:
        while True:
            out = ex.run_turn(TurnInput(now_ms=world.now, messages=batch)).output
            run.turns.append((world.now, batch, out.new_events))
            world.absorb(out.messages)
            if ex.outcome is not None or len(run.turns) >= MAX_TURNS:
                break
            batch = world.next_batch()
        run.history, run.outcome = list(ex.history), ex.outcome
    finally:
        ex.dispose()
    return run


def run_from_scratch(program: Sequence[Step], live: Run) -> Run:
    fn, run = make_orchestration(program), Run()
    stored: list[HistoryEvent] = []
    for now, messages, _ in live.turns:
        result = execute(fn, TurnInput(now_ms=now, messages=messages, history=stored), instance_id=INSTANCE,
                         options=OPTIONS)
        stored = stored + result.output.new_events
        run.turns.append((now, messages, result.output.new_events))
        run.outcome = result.outcome
    run.history = stored
    return run


PROPS = settings(max_examples=int(os.environ.get("REPLAY_PROP_EXAMPLES", "300")), deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(programs, tapes)
def test_live_and_from_scratch_replay_record_the_same_history(program: list[Step], tape: list[int]) -> None:
    live = run_live(program, tape)
    scratch = run_from_scratch(program, live)
    for (_, _, a), (_, _, b) in zip(live.turns, scratch.turns):
        assert normalize(a) == normalize(b)
    assert normalize(live.history) == normalize(scratch.history)
    assert (live.outcome.status if live.outcome else None) == (scratch.outcome.status if scratch.outcome else None)
    assert (live.outcome.output if live.outcome else None) == (scratch.outcome.output if scratch.outcome else None)
    # Whatever the interleaving: each request is recorded once and answered at most once, and no
    # failure but a cancellation (nondeterminism, a crash of the engine) ends it.
    requested = [e.request_id for e in live.history if isinstance(e, Event.UpdateRequested)]
    replied = [e.request_id for e in live.history if isinstance(e, Event.UpdateReplied)]
    assert len(requested) == len(set(requested)) and len(replied) == len(set(replied))
    assert set(replied) <= set(requested)
    # While suspended the code does not run: nothing is scheduled until it resumes or is cancelled.
    suspended = False
    for event in live.history:
        if isinstance(event, Event.OrchestrationSuspended):
            assert not suspended, "a repeated suspend is not recorded"
            suspended = True
        elif isinstance(event, (Event.OrchestrationResumed, Event.OrchestrationCancelRequested)):
            suspended = False
        else:
            assert not (suspended and event.is_schedule), f"{event} scheduled while suspended"
    cancels = [e for e in live.history if isinstance(e, Event.OrchestrationCancelRequested)]
    assert len(cancels) <= 1  # a repeated cancel during cleanup is not recorded
    if live.outcome is not None and live.outcome.error is not None:
        assert cancels and live.outcome.error.error_type == "OrchestrationCancelled", live.outcome.error
    if cancels and live.outcome is not None:
        assert live.outcome.error is not None and live.outcome.error.message.startswith(cancels[0].reason)
