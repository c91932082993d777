"""Typed events, state, updates and streams end to end, on every store and in both replay modes.

What a client relies on: a typed wait decodes the event (a bad payload is the
orchestration's catchable error, not the instance's end); state is readable while
the instance runs and after it ends, and carries over at continue-as-new; an
update's reply is returned once and recorded once, however often the client asks;
a stream yields every item in order and ends when the instance ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duroxide_runtime import (
    Client,
    ConfigurationError,
    Event,
    InMemoryProvider,
    InstanceNotFoundError,
    InvalidInputError,
    OrchestrationContext,
    OrchestrationStatus,
    PayloadDecodeError,
    PayloadError,
    StreamItem,
    UpdateRejectedError,
    UpdateTimeoutError,
)
from .support import Harness, clean_env, drop_store, make_store

pytestmark = pytest.mark.timeout(120)


@dataclass
class Approval:
    approver: str
    ok: bool


@dataclass
class Progress:
    done: int
    total: int


@dataclass
class Item:
    sku: str
    qty: int


async def approvals(ctx: OrchestrationContext, _: str) -> str:
    seen = []
    for _i in range(2):
        try:
            approval = await ctx.wait_for_event("approval", Approval)
            seen.append(f"{approval.approver}:{approval.ok}")
        except PayloadDecodeError as err:
            seen.append(f"bad payload for {err.source}")
    return ",".join(seen)


async def test_typed_event_decodes_and_a_bad_payload_is_caught_by_the_orchestration(harness: Harness) -> None:
    await harness.start({"Approvals": approvals})
    client = harness.client
    await client.start_orchestration("a-1", "Approvals")
    assert await client.raise_event("a-1", "approval", '{"approver": 7}')
    assert await client.raise_event("a-1", "approval", json.dumps({"approver": "ann", "ok": True}))
    status = await client.wait_for_orchestration("a-1", 30)
    assert status == OrchestrationStatus.Completed(output="bad payload for event 'approval',ann:True")


async def progress(ctx: OrchestrationContext, input: str) -> str:
    total = int(input)
    ctx.set_state("label", "starting")
    for done in range(total):
        ctx.set_state("progress", Progress(done, total))
        ctx.emit(Progress(done, total))
        req = await ctx.wait_for_update("next")  # the client paces the work
        req.reply(done)
    ctx.set_state("progress", Progress(total, total))
    ctx.emit(Progress(total, total))
    if ctx.execution_id == 1:
        ctx.continue_as_new(input)  # state and the stream's offsets carry over
    return "done"


async def test_state_is_readable_while_running_and_after_the_end_and_carries_over(harness: Harness) -> None:
    await harness.start({"Progress": progress})
    client = harness.client
    await client.start_orchestration("p-1", "Progress", "2")
    # The reply is committed with the turn that goes on to set the next progress.
    assert await client.update("p-1", "next", timeout=30) == "0"
    assert await client.get_state("p-1", "progress", Progress) == Progress(1, 2)
    assert await client.get_state("p-1", "progress") == '{"done":1,"total":2}'
    assert await client.get_state("p-1", "label") == "starting"
    assert await client.get_state("p-1", "missing") is None
    for expected in ("1", "0", "1"):  # the rest of execution 1, then execution 2
        assert await client.update("p-1", "next", timeout=30) == expected
    status = await client.wait_for_orchestration("p-1", 30)
    assert isinstance(status, OrchestrationStatus.Completed)
    assert await client.list_executions("p-1") == [1, 2]
    assert await client.get_states("p-1") == {"label": "starting", "progress": '{"done":2,"total":2}'}
    started = (await client.read_history("p-1"))[0]
    assert isinstance(started, Event.OrchestrationStarted) and started.state is not None
    assert started.state["label"] == "starting" and started.stream_offset == 3
    with pytest.raises(InstanceNotFoundError):
        await client.get_state("nobody", "progress")


async def test_a_stream_yields_every_item_in_order_and_ends_with_the_instance(harness: Harness) -> None:
    await harness.start({"Progress": progress})
    client = harness.client
    await client.start_orchestration("s-1", "Progress", "2")
    items: list[StreamItem[Progress]] = []

    async def follow() -> None:
        async for item in client.stream("s-1", item_type=Progress):
            items.append(item)
            if item.value.done < item.value.total:
                await client.update("s-1", "next", timeout=30)  # each item lets the next one come

    await asyncio.wait_for(follow(), 60)
    assert [(i.offset, i.execution_id, i.value) for i in items] == [
        (0, 1, Progress(0, 2)), (1, 1, Progress(1, 2)), (2, 1, Progress(2, 2)),
        (3, 2, Progress(0, 2)), (4, 2, Progress(1, 2)), (5, 2, Progress(2, 2))]
    assert isinstance(await client.get_orchestration_status("s-1"), OrchestrationStatus.Completed)
    # From an offset, after the end: what is left, then the end.
    assert [(i.offset, i.value) async for i in client.stream("s-1", from_offset=4)] == [
        (4, '{"done":1,"total":2}'), (5, '{"done":2,"total":2}')]
    with pytest.raises(InstanceNotFoundError):
        async for _ in client.stream("nobody"):
            pass


async def cart(ctx: OrchestrationContext, _: str) -> str:
    items: list[str] = []
    while True:
        req = await ctx.wait_for_update("add_item", Item)
        if req.data.qty <= 0:
            req.reject("quantity must be positive")
            continue
        items.append(req.data.sku)
        req.reply(items)
        if req.data.sku == "last":
            return json.dumps(items)


async def test_update_replies_rejects_and_a_repeated_ask_gets_the_recorded_reply(harness: Harness) -> None:
    await harness.start({"Cart": cart})
    client = harness.client
    await client.start_orchestration("c-1", "Cart")
    first = json.dumps({"sku": "a", "qty": 1})
    assert await client.update("c-1", "add_item", first, timeout=30, request_id="r1", result_type=list[str]) == ["a"]
    # Asked again (a client that restarted): the recorded reply; the item is not added twice.
    assert await client.update("c-1", "add_item", first, timeout=30, request_id="r1") == '["a"]'
    with pytest.raises(UpdateRejectedError) as rejected:
        await client.update("c-1", "add_item", json.dumps({"sku": "b", "qty": 0}), timeout=30)
    assert rejected.value.reason == "quantity must be positive" and rejected.value.instance_id == "c-1"
    with pytest.raises(UpdateRejectedError) as undecodable:
        await client.update("c-1", "add_item", '{"sku": "b"}', timeout=30)
    assert "qty" in undecodable.value.reason
    assert await client.update("c-1", "add_item", json.dumps({"sku": "last", "qty": 1}), timeout=30) == '["a","last"]'
    assert isinstance(await client.wait_for_orchestration("c-1", 30), OrchestrationStatus.Completed)
    history = await client.read_history("c-1")
    assert sum(isinstance(e, Event.UpdateRequested) and e.request_id == "r1" for e in history) == 1
    assert sum(isinstance(e, Event.UpdateReplied) and e.request_id == "r1" for e in history) == 1
    # The instance has ended: an update is refused at once, and an old request's reply is still there.
    with pytest.raises(UpdateRejectedError, match="already ended"):
        await client.update("c-1", "add_item", first, timeout=30)
    assert await client.update("c-1", "add_item", first, timeout=30, request_id="r1") == '["a"]'
    with pytest.raises(InstanceNotFoundError):
        await client.update("nobody", "add_item", first, timeout=1)


async def never_asks(ctx: OrchestrationContext, _: str) -> str:
    return await ctx.wait_for_event("stop")


async def test_an_update_nobody_waits_for_times_out_and_its_reply_comes_once_it_is_answered(harness: Harness) -> None:
    await harness.start({"NeverAsks": never_asks, "Cart": cart})
    client = harness.client
    await client.start_orchestration("n-1", "NeverAsks")
    with pytest.raises(UpdateTimeoutError) as timed_out:
        await client.update("n-1", "add_item", "{}", timeout=0.3, request_id="q1")
    assert timed_out.value.request_id == "q1" and "wait_for_update" in str(timed_out.value)
    await client.raise_event("n-1", "stop", "")
    assert isinstance(await client.wait_for_orchestration("n-1", 30), OrchestrationStatus.Completed)
    with pytest.raises(UpdateRejectedError, match="without answering"):
        await client.update("n-1", "add_item", "{}", timeout=30, request_id="q1")


async def test_a_request_sent_while_no_runtime_runs_is_answered_once_after_a_restart(harness: Harness) -> None:
    await harness.start({"Cart": cart})
    client = harness.client
    await client.start_orchestration("r-1", "Cart")
    assert await client.update("r-1", "add_item", json.dumps({"sku": "a", "qty": 1}), timeout=30) == '["a"]'
    await harness.stop()
    data = json.dumps({"sku": "b", "qty": 1})
    with pytest.raises(UpdateTimeoutError):
        await client.update("r-1", "add_item", data, timeout=0.2, request_id="again")
    await harness.start({"Cart": cart})
    # The client asks again with the same id (the first ask is still queued): one request, one reply.
    assert await client.update("r-1", "add_item", data, timeout=30, request_id="again") == '["a","b"]'
    history = await client.read_history("r-1")
    assert [e.request_id for e in history if isinstance(e, Event.UpdateRequested)].count("again") == 1
    assert [e.result for e in history if isinstance(e, Event.UpdateReplied)] == ['["a"]', '["a","b"]']


async def test_cli_show_lists_the_state_and_history_names_the_new_events(tmp_path: Path) -> None:
    # The CLI formats what any store holds; shown on a SQLite file, with the real console script.
    store = await make_store("sqlite", tmp_path)
    h = Harness(store, "cached")
    try:
        await h.start({"Progress": progress})
        await h.client.start_orchestration("cli-1", "Progress", "1")
        assert await h.client.update("cli-1", "next", timeout=30) == "0"
        assert await h.client.update("cli-1", "next", timeout=30) == "0"  # execution 2
        await h.client.wait_for_orchestration("cli-1", 30)
    finally:
        await h.stop()
        await drop_store(store)
    db = str(tmp_path / "test.db")
    show = await _duroxide(tmp_path, "--store", db, "show", "cli-1")
    assert "state:         label = 'starting'" in show, show
    assert """               progress = '{"done":1,"total":1}'""" in show, show
    shown = json.loads(await _duroxide(tmp_path, "--store", db, "--json", "show", "cli-1"))
    assert shown["state"] == {"label": "starting", "progress": '{"done":1,"total":1}'}
    text = await _duroxide(tmp_path, "--store", db, "history", "cli-1", "--execution", "1")
    for line in ("StateSet 'label' = 'starting'", "StreamEmitted #0 ", "UpdateSubscribed 'next'",
                 "UpdateRequested 'next' ", "UpdateReplied 'next' "):
        assert line in text, text


async def _duroxide(cwd: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / "duroxide"), *args, cwd=cwd,
                                                env=clean_env(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    store = InMemoryProvider()
    client = Client(store)
    await client.start_orchestration("b-1", "Anything")
    calls: list[Coroutine[Any, Any, object]] = [
        client.update("b-1", "", "x"), client.update("b-1", "u", "\x00"),
        client.update("b-1", "u", "x", request_id=""), client.get_state("b-1", ""),
        client.update("b-1", "u", "x", timeout=-1)]
    for call in calls:
        with pytest.raises((InvalidInputError, ConfigurationError)):
            await call
    with pytest.raises(InvalidInputError):
        client.stream("b-1", from_offset=-1)
    not_text: Any = 5
    with pytest.raises(PayloadError):
        await client.update("b-1", "u", not_text)
    fetched = await store.fetch_orchestration_items(10, 5.0)
    assert [type(m.message).__name__ for item in fetched.items for m in item.messages] == ["StartOrchestration"]
