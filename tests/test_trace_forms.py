"""Trace forms on real runtimes: the format rules, and that no format or field name can fail an instance.

This module is rewritten by the pytest plugin's import hook, so the
``durable_trace_*`` / ``trace_*`` / ``orch_*`` forms in orchestration bodies
run as ``ctx.trace_*`` calls; :func:`tf_note` is a plain helper, so its form is
left as written and finds the running orchestration by itself; activities
reach ``ActivityContext.trace``. All three share ``duroxide_runtime.tracefmt``,
and the tests check each path. Every runtime here replays from scratch at each
turn, so "exactly one record" also proves nothing is logged again on replay.

Names of decorated functions start with ``tf_``: discovery is global per process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duroxide_macros.prelude import (
    Client,
    InMemoryProvider,
    OrchestrationContext,
    Runtime,
    RuntimeOptions,
    activity,
    activity_context,
    durable,
    durable_trace_debug,
    durable_trace_error,
    durable_trace_info,
    durable_trace_warn,
    orch_error,
    orchestration,
    trace_info,
    trace_warn,
)

pytestmark = pytest.mark.timeout(60)

SOURCE = Path(__file__).read_text(encoding="utf-8").splitlines()


def line_of(marker: str) -> int:
    """The line number of the one source line that contains ``marker``."""
    lines = [i for i, text in enumerate(SOURCE, start=1) if marker in text and "line_of(" not in text]
    assert len(lines) == 1, (marker, lines)
    return lines[0]


@dataclass
class TfOrder:
    id: str
    total: float


class TfExplosive:
    """A value that cannot be shown: every way of turning it into text raises."""

    def __format__(self, spec: str) -> str:
        raise RuntimeError("format exploded")

    def __repr__(self) -> str:
        raise ValueError("repr exploded")

    __str__ = __repr__


@activity(typed=True)
async def tf_step(order_id: str) -> str:
    durable_trace_info("activity step for {:?}", order_id, name="step-name")       # tf:act-ok
    durable_trace_warn("activity {} of {}", order_id)                                # tf:act-bad
    activity_context().trace("INFO", "direct {:?}", order_id, message="m", level="l")  # the runtime API
    return f"stepped {order_id}"


@activity(typed=True)
def tf_step_sync(order_id: str) -> str:  # plain def: runs in a worker thread
    durable_trace_error("sync step {:.2} {}", 3, TfExplosive())                      # tf:sync-bad
    return f"sync {order_id}"


def tf_note(fmt: str, *args: Any, **fields: Any) -> None:
    """A helper, not an orchestration: the hook leaves its form alone; it runs unrewritten."""
    durable_trace_warn(fmt, *args, **fields)                                         # tf:helper


@orchestration
async def tf_formats(ctx: OrchestrationContext, order: TfOrder) -> str:
    durable_trace_info("Charging ${:.2} for order: {}", order.total, order.id)       # tf:charging
    durable_trace_debug("State: {:?}", order)
    trace_warn("{:.2} | {:.2} | {:.2}", 7, "abcdef", 0.5)
    orch_error("{0}/{0} [{1:>6}] {1:<3}|", "a", "b")
    trace_info("{:.2f} {!r} {} {:#?}", 2.5, "q", None, {"k": [1, 2]})
    durable_trace_info("order {order_id} ready", order_id=order.id)
    durable_trace_info('as written: {"a": 1} {}')
    result = await durable(tf_step(order.id))
    durable_trace_info("after {}", result)
    return result


@orchestration
async def tf_bad_formats(ctx: OrchestrationContext, order: TfOrder) -> str:
    durable_trace_info("Processing {} of {}", 1)
    durable_trace_warn("Processing {}", 1, 2)
    durable_trace_error("count: {:d}", "seven")
    durable_trace_info("value: {}", TfExplosive())
    durable_trace_debug("state: {:?}", TfExplosive())
    durable_trace_info("state: {!r}", TfExplosive())
    durable_trace_info(order)  # type: ignore[arg-type]
    durable_trace_info("unclosed {", order.id)
    durable_trace_info("missing {order_id}", order.id)
    first = await durable(tf_step(order.id))
    second = await durable(tf_step_sync(order.id))
    return f"{first}, {second}"


@orchestration
async def tf_via_helper(ctx: OrchestrationContext, order: TfOrder) -> str:
    tf_note("helper charging ${:.2} for {}", order.total, order.id, name="helper")
    tf_note("helper {} {}", order.id)
    result = await durable(tf_step(order.id))
    tf_note("helper after {}", result)
    return result


COLLIDING: dict[str, Any] = dict(name="n", msg="m", args=("a",), message="mm", levelname="LOUD", exc_info=True,
                                 asctime="then", stack_info="deep", getMessage="g", instance_id="fake",
                                 orchestration="other", trace_problem="none", levelno=99, field_name="own")


@orchestration
async def tf_fields(ctx: OrchestrationContext, order: TfOrder) -> str:
    durable_trace_info("fields of {}", order.id, plain="p", fmt="f", level="lv", **COLLIDING)  # tf:fields
    result = await durable(tf_step(order.id))
    return result


# ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def replaying_runtime() -> AsyncIterator[Client]:
    """A runtime over an in-memory store that replays every turn from scratch."""
    store = InMemoryProvider()
    rt = await (Runtime.builder().store(store).discover_activities().discover_orchestrations()
                .options(RuntimeOptions(replay_from_scratch=True, poll_interval=0.05)).start())
    try:
        yield rt.client()
    finally:
        await rt.shutdown(grace=2)
        await store.close()


def records(caplog: pytest.LogCaptureFixture, instance_id: str, logger: str = "duroxide.orchestration"
            ) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and getattr(r, "instance_id", None) == instance_id]


def messages(caplog: pytest.LogCaptureFixture, instance_id: str, logger: str = "duroxide.orchestration"
             ) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records(caplog, instance_id, logger)]


ORDER = TfOrder("o-1", 12.3456)


async def test_hook_rewrote_the_orchestration_forms_but_not_the_helper() -> None:
    """The paths the other tests rely on: rewritten in orchestrations, left alone in the helper."""
    names = set(tf_formats.fn.__code__.co_names)  # globals and attributes the body uses
    assert {"trace_info", "trace_warn", "trace_error", "trace_debug"} <= names  # ctx.trace_* attributes
    assert not {"durable_trace_info", "durable_trace_debug", "orch_error"} & names  # no form is left
    assert "durable_trace_warn" in tf_note.__code__.co_names


async def test_format_rules_rust_spellings_and_python_specs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="duroxide")
    async with replaying_runtime() as client:
        assert await tf_formats.run(client, "fmt-1", ORDER, timeout=20) == "stepped o-1"

    assert messages(caplog, "fmt-1") == [
        ("INFO", "Charging $12.35 for order: o-1"),          # {:.2} of a float: two decimals, as in Rust
        ("DEBUG", "State: TfOrder(id='o-1', total=12.3456)"),  # {:?}: repr
        ("WARNING", "7.00 | ab | 0.50"),                     # {:.2} of an int too; of text: two characters
        ("ERROR", "a/a [     b] b  |"),                      # indexes, width and alignment as in str.format
        ("INFO", "2.50 'q' None {'k': [1, 2]}"),             # {:.2f}, {!r}, {}, {:#?}
        ("INFO", "order o-1 ready"),                         # a named placeholder takes the keyword field
        ("INFO", 'as written: {"a": 1} {}'),                 # no arguments: logged exactly as written
        ("INFO", "after stepped o-1"),
    ]  # each once, though every turn replayed the orchestration from the start
    assert not [r for r in records(caplog, "fmt-1") if hasattr(r, "trace_problem")]
    first = records(caplog, "fmt-1")[0]
    # The record points at the user's trace call, not at duroxide's internals.
    assert (first.pathname, first.lineno) == (__file__, line_of("# tf:charging"))
    context = (first.instance_id, first.execution_id, first.orchestration)  # type: ignore[attr-defined]
    assert context == ("fmt-1", 1, "tf_formats")
    named = next(r for r in records(caplog, "fmt-1") if r.getMessage() == "order o-1 ready")
    assert named.order_id == "o-1"  # type: ignore[attr-defined]  # a field used by the format stays a field


BAD_FORMATS = [
    # (level, message as logged, a phrase of the problem)
    ("INFO", "Processing {} of {} [args: 1]", "the format has 2 positional placeholders but 1 argument was given"),
    ("WARNING", "Processing {} [args: 1, 2]", "the format has 1 positional placeholder but 2 arguments were given"),
    ("ERROR", "count: {:d} [args: 'seven']", "placeholder {0:d} cannot format str 'seven': ValueError"),
    ("INFO", "value: {} [args: <TfExplosive object; its repr raised ValueError>]",
     "placeholder {0} cannot format TfExplosive"),
    ("DEBUG", "state: {:?} [args: <TfExplosive object; its repr raised ValueError>]", "repr exploded"),
    ("INFO", "state: {!r} [args: <TfExplosive object; its repr raised ValueError>]",
     "placeholder {0!r} cannot convert TfExplosive value: ValueError: repr exploded"),
    ("INFO", "TfOrder(id='o-1', total=12.3456)", "the message is of type TfOrder, not str"),
    ("INFO", "unclosed { [args: 'o-1']", "not a valid format string"),
    ("INFO", "missing {order_id} [args: 'o-1']", "the placeholder {order_id} names no keyword field"),
]


async def test_a_format_that_does_not_apply_never_fails_the_instance(caplog: pytest.LogCaptureFixture) -> None:
    """Each bad trace: the message as written with its arguments, plus one WARNING naming the problem."""
    caplog.set_level(logging.DEBUG, logger="duroxide")
    async with replaying_runtime() as client:
        out = await tf_bad_formats.run(client, "bad-1", ORDER, timeout=20)
    assert out == "stepped o-1, sync o-1"  # the orchestration and both activities completed

    got = records(caplog, "bad-1")
    assert len(got) == 2 * len(BAD_FORMATS), [r.getMessage() for r in got]  # once each: never on replay
    for (level, message, problem), record, warning in zip(BAD_FORMATS, got[::2], got[1::2]):
        assert (record.levelname, record.getMessage()) == (level, message)
        assert problem in record.trace_problem  # type: ignore[attr-defined]
        assert warning.levelname == "WARNING"
        assert warning.trace_problem == record.trace_problem  # type: ignore[attr-defined]
        text = warning.getMessage()
        assert "was logged unformatted" in text and problem in text and "Fix:" in text
        assert (warning.instance_id, warning.orchestration) == ("bad-1", "tf_bad_formats")  # type: ignore[attr-defined]

    # In activities (async, and plain def in a worker thread) too: logged, warned, not failed.
    act = messages(caplog, "bad-1", "duroxide.activity")
    assert ("WARNING", "activity {} of {} [args: 'o-1']") in act
    assert ("ERROR", "sync step {:.2} {} [args: 3, <TfExplosive object; its repr raised ValueError>]") in act
    warnings = [m for lvl, m in act if lvl == "WARNING" and "was logged unformatted" in m]
    assert any("2 positional placeholders but 1 argument" in m for m in warnings)
    assert any("cannot format TfExplosive" in m for m in warnings)
    bad_act = next(r for r in records(caplog, "bad-1", "duroxide.activity")
                   if r.getMessage().startswith("activity {} of {}"))
    assert (bad_act.pathname, bad_act.lineno) == (__file__, line_of("# tf:act-bad"))
    assert (bad_act.activity, bad_act.attempt) == ("tf_step", 1)  # type: ignore[attr-defined]


async def test_unrewritten_form_in_a_helper_shares_the_rules(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="duroxide")
    async with replaying_runtime() as client:
        assert await tf_via_helper.run(client, "helper-1", ORDER, timeout=20) == "stepped o-1"

    got = records(caplog, "helper-1")
    assert [(r.levelname, r.getMessage()) for r in got[:3]] == [
        ("WARNING", "helper charging $12.35 for o-1"),
        ("WARNING", "helper {} {} [args: 'o-1']"),
        ("WARNING", f"trace message 'helper {{}} {{}}' was logged unformatted: {BAD_FORMATS[0][2]}. Fix: "
                    f"{got[2].getMessage().split('Fix: ', 1)[1]}"),
    ]
    assert got[3].getMessage() == "helper after stepped o-1"
    assert len(got) == 4  # once each, although the helper ran again at every replayed turn
    assert got[0].field_name == "helper" and got[0].trace_fields == {"name": "helper"}  # type: ignore[attr-defined]
    assert (got[0].pathname, got[0].lineno) == (__file__, line_of("# tf:helper"))


async def test_fields_named_like_log_record_attributes_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="duroxide")
    async with replaying_runtime() as client:
        assert await tf_fields.run(client, "fields-1", ORDER, timeout=20) == "stepped o-1"

    [rec] = [r for r in records(caplog, "fields-1") if r.getMessage() == "fields of o-1"]
    # logging's own attributes and duroxide's context are intact ...
    assert (rec.name, rec.levelname, rec.exc_info, rec.stack_info) == ("duroxide.orchestration", "INFO", None, None)
    assert (rec.instance_id, rec.orchestration) == ("fields-1", "tf_fields")  # type: ignore[attr-defined]
    assert not hasattr(rec, "trace_problem")  # a field called trace_problem is not a problem report
    # ... each colliding field is kept as field_<name>, a free name as itself, and all in trace_fields.
    renamed = {key: getattr(rec, "field_" + key) for key in COLLIDING if key not in ("name", "field_name")}
    assert renamed == {k: v for k, v in COLLIDING.items() if k not in ("name", "field_name")}
    # field_name= was given as such and keeps it; name= then takes one more prefix.
    assert (rec.field_name, rec.field_field_name) == ("own", "n")  # type: ignore[attr-defined]
    # fmt= and level= are fields too: the trace functions take their own parameters positionally only.
    assert (rec.plain, rec.fmt, rec.level) == ("p", "f", "lv")  # type: ignore[attr-defined]
    assert rec.levelno == logging.INFO
    assert rec.trace_fields == {**COLLIDING, "plain": "p", "fmt": "f", "level": "lv"}  # type: ignore[attr-defined]
    # A handler's formatter can use the record (asctime and message are computed, not the fields).
    line = logging.Formatter("%(asctime)s|%(name)s|%(levelname)s|%(message)s|%(field_field_name)s|%(field_asctime)s"
                             ).format(rec)
    assert line.split("|", 1)[1] == "duroxide.orchestration|INFO|fields of o-1|n|then"
    assert (rec.pathname, rec.lineno) == (__file__, line_of("# tf:fields"))

    # In the activity the same scheme applies: name= did not rename the logger.
    [act] = [r for r in records(caplog, "fields-1", "duroxide.activity")
             if r.getMessage() == "activity step for 'o-1'"]
    assert act.name == "duroxide.activity"
    assert (act.field_name, act.activity) == ("step-name", "tf_step")  # type: ignore[attr-defined]
    assert (act.pathname, act.lineno) == (__file__, line_of("# tf:act-ok"))
    [direct] = [r for r in records(caplog, "fields-1", "duroxide.activity") if r.getMessage() == "direct 'o-1'"]
    assert (direct.field_message, direct.level) == ("m", "l")  # type: ignore[attr-defined]


def test_outside_any_context_the_forms_log_to_duroxide_trace(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="duroxide")
    durable_trace_info("plain {:.2} {:?}", 1.239, "x", name="n", message="m")
    durable_trace_error("plain {} {}", "only one")
    got = [r for r in caplog.records if r.name == "duroxide.trace"]
    assert [(r.levelname, r.getMessage()) for r in got[:2]] == [
        ("INFO", "plain 1.24 'x'"), ("ERROR", "plain {} {} [args: 'only one']")]
    assert (got[0].field_name, got[0].field_message, got[0].trace_fields) == (  # type: ignore[attr-defined]
        "n", "m", {"name": "n", "message": "m"})
    assert got[2].levelname == "WARNING" and "2 positional placeholders" in got[2].getMessage()
    assert len(got) == 3
