"""The engine core for typed events, state, streams and updates: synthetic history + messages -> events.

Every test runs its turn from scratch and as cached turns (``engine_factories.turn``
checks both give the same output).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from duroxide_runtime import (
    ConfigurationError,
    Event,
    NonDeterminismError,
    OrchestrationContext,
    PayloadDecodeError,
    PayloadError,
    TypedEvent,
    UpdateAlreadyRepliedError,
)
from duroxide_runtime.engine.output import Status
from duroxide_runtime.messages import ClientUpdate, ExternalEvent, StartOrchestration

from .engine_factories import (
    INSTANCE,
    client_update,
    event_raised,
    event_subscribed,
    external,
    kinds,
    start,
    started,
    state_set,
    stream_emitted,
    timer_created,
    turn,
    update_replied,
    update_requested,
    update_subscribed,
)


@dataclass
class Approval:
    approver: str
    ok: bool


APPROVAL = TypedEvent("approval", Approval)


# -- typed events -------------------------------------------------------------------------


async def typed_wait(ctx: OrchestrationContext, _: str) -> str:
    try:
        approval = await ctx.wait_for_event("approval", Approval)
    except PayloadDecodeError as err:
        return f"bad: {err}"
    return f"{approval.approver}:{approval.ok}"


def test_typed_wait_decodes_the_event_data_into_the_type() -> None:
    result = turn(typed_wait, [started(), event_subscribed(2, "approval")],
                  external("approval", '{"approver": "ann", "ok": true}'))
    assert kinds(result.output.new_events) == ["EventRaised", "OrchestrationCompleted"]
    assert result.outcome is not None and result.outcome.output == "ann:True"


def test_typed_wait_given_a_typed_event_decodes_the_same() -> None:
    async def by_key(ctx: OrchestrationContext, _: str) -> str:
        return repr(await ctx.wait_for_event(APPROVAL))

    result = turn(by_key, [started(), event_subscribed(2, "approval"),
                           event_raised(3, "approval", '{"approver": "bo", "ok": false}')])
    assert result.outcome is not None and result.outcome.output == repr(Approval("bo", False))


def test_data_that_does_not_decode_raises_a_catchable_error_naming_instance_event_and_fix() -> None:
    result = turn(typed_wait, [started(), event_subscribed(2, "approval")], external("approval", '{"ok": "maybe"}'))
    assert result.status is Status.COMPLETED and result.outcome is not None
    text = result.outcome.output or ""
    assert text.startswith("bad: ") and repr(INSTANCE) in text and "event 'approval'" in text
    assert "approver" in text and "Fix:" in text


def test_undecodable_data_left_uncaught_fails_only_this_instance_with_the_typed_error() -> None:
    async def unguarded(ctx: OrchestrationContext, _: str) -> str:
        return repr(await ctx.wait_for_event("approval", Approval))

    result = turn(unguarded, [started(), event_subscribed(2, "approval")], external("approval", "not json"))
    assert result.status is Status.FAILED and result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == "PayloadDecodeError"


def test_a_wait_without_a_type_still_yields_the_raw_text_and_str_takes_the_text_as_is() -> None:
    async def both(ctx: OrchestrationContext, _: str) -> str:
        return await ctx.wait_for_event("note") + "|" + await ctx.wait_for_event("note", str)

    result = turn(both, [started()], external("note", '{"a": 1}'), external("note", "plain"))
    assert result.outcome is not None and result.outcome.output == '{"a": 1}|plain'


def test_a_type_that_cannot_be_a_payload_is_refused_before_anything_is_recorded() -> None:
    class Opaque:
        def __init__(self, handle: object) -> None:
            self.handle = handle

    async def opaque(ctx: OrchestrationContext, _: str) -> str:
        try:
            await ctx.wait_for_event("x", Opaque)
        except ConfigurationError:
            return "refused"
        return "waited"

    result = turn(opaque, [], start())
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "OrchestrationCompleted"]


# -- state -------------------------------------------------------------------------------------


@dataclass
class Progress:
    done: int
    total: int


async def counts(ctx: OrchestrationContext, _: str) -> str:
    ctx.set_state("progress", Progress(0, 2))
    await ctx.wait_for_event("tick")
    ctx.set_state("progress", Progress(1, 2))
    ctx.set_state("label", "halfway")
    progress = ctx.get_state("progress", Progress)
    assert progress is not None
    return f"{progress.done}/{progress.total} {ctx.get_state('label')} {ctx.get_state('missing')}"


def test_set_state_records_one_event_per_set_and_get_state_reads_the_latest() -> None:
    result = turn(counts, [], start())
    assert result.output.new_events[1] == Event.StateSet(event_id=2, timestamp_ms=result.output.new_events[1].timestamp_ms,
                                                         key="progress", value='{"done":0,"total":2}')
    later = turn(counts, result.output.new_events, external("tick", ""))
    assert kinds(later.output.new_events) == ["EventRaised", "StateSet", "StateSet", "OrchestrationCompleted"]
    assert later.outcome is not None and later.outcome.output == "1/2 halfway None"


def test_state_set_with_another_value_on_replay_is_nondeterminism() -> None:
    history = [started(), state_set(2, "progress", '{"done":5,"total":2}'), event_subscribed(3, "tick")]
    result = turn(counts, history, external("tick", ""))
    assert result.status is Status.FAILED and result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == NonDeterminismError.__name__
    assert "set_state 'progress'" in result.outcome.error.message


def test_a_value_that_cannot_be_encoded_raises_at_set_state_and_records_nothing() -> None:
    async def bad(ctx: OrchestrationContext, _: str) -> str:
        try:
            ctx.set_state("k", {"when": object()})
        except PayloadError as err:
            return "refused: " + err.message
        return "stored"

    result = turn(bad, [], start())
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "OrchestrationCompleted"]
    assert result.outcome is not None and "refused: state 'k'" in (result.outcome.output or "")


def test_state_from_continue_as_new_is_what_the_next_execution_starts_with() -> None:
    async def carry(ctx: OrchestrationContext, input: str) -> str:
        if input == "first":
            ctx.set_state("n", "1")
            ctx.emit("a")
            ctx.continue_as_new("second")
        ctx.emit("b")
        return f"{ctx.get_state('n')}"

    first = turn(carry, [], start("first"))
    assert first.status is Status.CONTINUED_AS_NEW
    [nxt] = [m for m, _ in first.output.messages if isinstance(m, StartOrchestration)]
    assert (nxt.state, nxt.stream_offset, nxt.execution_id) == ({"n": "1"}, 1, 2)
    second = turn(carry, [], nxt)
    assert second.output.new_events[0].state == {"n": "1"}  # type: ignore[attr-defined]
    assert [(e.offset, e.value) for e in second.output.new_events if isinstance(e, Event.StreamEmitted)] == [(1, "b")]
    assert second.outcome is not None and second.outcome.output == "1"


# -- streams ----------------------------------------------------------------------------------


async def emits(ctx: OrchestrationContext, _: str) -> str:
    for i in range(2):
        ctx.emit(Progress(i, 2))
        await ctx.wait_for_event("tick")
    return "done"


def test_emit_records_items_with_consecutive_offsets_across_turns() -> None:
    history = [started(), stream_emitted(2, 0, '{"done":0,"total":2}'), event_subscribed(3, "tick")]
    result = turn(emits, history, external("tick", ""))
    emitted = [e for e in result.output.new_events if isinstance(e, Event.StreamEmitted)]
    assert [(e.offset, e.value) for e in emitted] == [(1, '{"done":1,"total":2}')]


def test_emitting_another_value_on_replay_is_nondeterminism() -> None:
    history = [started(), stream_emitted(2, 0, '"other"'), event_subscribed(3, "tick")]
    result = turn(emits, history, external("tick", ""))
    assert result.status is Status.FAILED and result.outcome is not None and result.outcome.error is not None
    assert result.outcome.error.error_type == NonDeterminismError.__name__


# -- updates -----------------------------------------------------------------------------------


@dataclass
class Item:
    sku: str
    qty: int


async def cart(ctx: OrchestrationContext, _: str) -> str:
    items: list[Item] = []
    while len(items) < 2:
        req = await ctx.wait_for_update("add_item", Item)
        if req.data.qty <= 0:
            req.reject("quantity must be positive")
            continue
        items.append(req.data)
        req.reply([i.sku for i in items])
    return json.dumps([i.sku for i in items])


def test_an_update_request_is_recorded_taken_by_the_wait_and_replied_in_history() -> None:
    result = turn(cart, [], start(), client_update("r1", "add_item", '{"sku": "a", "qty": 1}'))
    assert kinds(result.output.new_events) == ["OrchestrationStarted", "UpdateSubscribed", "UpdateRequested",
                                               "UpdateReplied", "UpdateSubscribed"]
    replied = result.output.new_events[3]
    assert isinstance(replied, Event.UpdateReplied)
    assert (replied.request_id, replied.name, replied.result, replied.rejected) == ("r1", "add_item", '["a"]', None)


def test_a_repeated_request_id_is_recorded_once_and_answered_once() -> None:
    history = [started(), update_subscribed(2, "add_item"), update_requested(3, "r1", "add_item", '{"sku":"a","qty":1}'),
               update_replied(4, "r1", "add_item", '["a"]'), update_subscribed(5, "add_item")]
    result = turn(cart, history, client_update("r1", "add_item", '{"sku":"a","qty":1}'))
    assert result.output.new_events == []


def test_reject_records_the_reason_and_the_wait_goes_on() -> None:
    result = turn(cart, [], start(), client_update("r1", "add_item", '{"sku": "a", "qty": 0}'))
    [rejected] = [e for e in result.output.new_events if isinstance(e, Event.UpdateReplied)]
    assert (rejected.result, rejected.rejected) == (None, "quantity must be positive")
    assert result.status is Status.RUNNING


def test_a_request_whose_data_does_not_decode_is_rejected_for_the_client_and_the_wait_takes_the_next() -> None:
    result = turn(cart, [], start(), client_update("bad", "add_item", '{"sku": 3}'),
                  client_update("good", "add_item", '{"sku": "b", "qty": 2}'))
    replies = [e for e in result.output.new_events if isinstance(e, Event.UpdateReplied)]
    assert [(r.request_id, r.result) for r in replies] == [("bad", None), ("good", '["b"]')]
    assert replies[0].rejected is not None and "update 'add_item'" in replies[0].rejected
    assert "qty" in replies[0].rejected


def test_requests_sent_before_the_wait_are_kept_fifo() -> None:
    async def later(ctx: OrchestrationContext, _: str) -> str:
        await ctx.wait_for_event("go")
        first = await ctx.wait_for_update("u")
        second = await ctx.wait_for_update("u")
        first.reply("1")
        second.reply("2")
        return first.data + second.data

    result = turn(later, [], start(), client_update("a", "u", "x"), client_update("b", "u", "y"), external("go", ""))
    assert result.outcome is not None and result.outcome.output == "xy"
    replies = [(e.request_id, e.result) for e in result.output.new_events if isinstance(e, Event.UpdateReplied)]
    assert replies == [("a", "1"), ("b", "2")]


def test_a_second_answer_raises_a_typed_error_records_nothing_and_the_instance_goes_on() -> None:
    async def twice(ctx: OrchestrationContext, _: str) -> str:
        req = await ctx.wait_for_update("u")
        req.reply("first")
        try:
            req.reject("second thoughts")
        except UpdateAlreadyRepliedError as err:
            assert err.instance_id == INSTANCE and err.name == "u" and err.request_id == "r1"
            return str(err)
        return "answered twice"

    result = turn(twice, [], start(), client_update("r1", "u", ""))
    assert [e.result for e in result.output.new_events if isinstance(e, Event.UpdateReplied)] == ["first"]
    assert result.status is Status.COMPLETED and result.outcome is not None
    assert "already answered" in (result.outcome.output or "") and "Fix:" in (result.outcome.output or "")


def test_a_select_loser_update_wait_gives_its_request_back() -> None:
    async def race(ctx: OrchestrationContext, _: str) -> str:
        idx, _fut = await ctx.select2(ctx.wait_for_event("go"), ctx.wait_for_update("u"))
        req = await ctx.wait_for_update("u")
        req.reply("late")
        return f"{idx}:{req.request_id}"

    # Both arrive in one turn: the event first, so the update wait loses and gives its request back.
    result = turn(race, [], start(), external("go", ""), client_update("r1", "u", ""))
    assert result.outcome is not None and result.outcome.output == "0:r1"


def test_unanswered_requests_and_state_carry_over_at_continue_as_new() -> None:
    async def rolls(ctx: OrchestrationContext, input: str) -> str:
        await ctx.wait_for_event("go")
        ctx.continue_as_new("next")

    history = [started(), event_subscribed(2, "go")]
    result = turn(rolls, history, client_update("r1", "u", "d"), external("go", ""), client_update("r2", "u", "e"))
    assert result.status is Status.CONTINUED_AS_NEW
    carried = [m for m, _ in result.output.messages if isinstance(m, ClientUpdate)]
    assert [(m.request_id, m.data) for m in carried] == [("r1", "d"), ("r2", "e")]
    assert not [m for m, _ in result.output.messages if isinstance(m, ExternalEvent)]


def test_update_history_replays_without_recording_anything_new() -> None:
    history = [started(), update_subscribed(2, "add_item"), update_requested(3, "r1", "add_item", '{"sku":"a","qty":1}'),
               update_replied(4, "r1", "add_item", '["a"]'), update_subscribed(5, "add_item"),
               update_requested(6, "r2", "add_item", '{"sku":"b","qty":1}'),
               update_replied(7, "r2", "add_item", '["a","b"]')]
    result = turn(cart, history)
    assert result.status is Status.COMPLETED
    assert kinds(result.output.new_events) == ["OrchestrationCompleted"]


def test_a_reply_with_another_value_on_replay_is_nondeterminism() -> None:
    history = [started(), update_subscribed(2, "add_item"), update_requested(3, "r1", "add_item", '{"sku":"a","qty":1}'),
               update_replied(4, "r1", "add_item", '["z"]')]
    result = turn(cart, history)
    assert result.status is Status.FAILED and result.outcome is not None and result.outcome.error is not None
    assert "reply to update request 'r1'" in result.outcome.error.message


def test_an_update_wait_beside_a_timer_replays_by_position() -> None:
    async def with_deadline(ctx: OrchestrationContext, _: str) -> str:
        match await ctx.select2(ctx.wait_for_update("u"), ctx.schedule_timer(5)):
            case (0, done):
                done.result().reply("ok")
                return "replied"
            case _:
                return "timed out"

    history = [started(), update_subscribed(2, "u"), timer_created(3, 5000)]
    result = turn(with_deadline, history, client_update("r1", "u", ""))
    assert kinds(result.output.new_events) == ["UpdateRequested", "UpdateReplied", "OrchestrationCompleted"]
    assert result.outcome is not None and result.outcome.output == "replied"
    assert result.output.cancelled_timers == [3]  # the losing timer is deleted
