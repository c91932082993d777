"""Typed errors: stable codes, pickling, and failures stored with their code and fix (issue 11)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

import duroxide_runtime
from duroxide_macros.decorators import DurableNotExpandedError, OrchestrationFailedError
from duroxide_macros.hook import DurableExpansionError
from duroxide_macros.problems import Problem
from duroxide_runtime import errors
from duroxide_runtime.cli import Aborted, StoreNotFoundError, UsageError
from duroxide_runtime.errors import (
    ActivityFailed,
    InstanceStateError,
    ActivityTimeoutError,
    ConfigurationError,
    CorruptHistoryError,
    DurableTaskFailed,
    DuroxideError,
    ErrorCode,
    ErrorDetails,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStillRunningError,
    InvalidInputError,
    NonDeterminismError,
    NonDeterministicOperationError,
    OrchestrationCancelled,
    OrchestrationStuckError,
    PayloadError,
    PayloadTooLargeError,
    PoisonMessageError,
    StoreError,
    StoreTimeoutError,
    SubOrchestrationFailed,
    UnknownActivityError,
    UnknownOrchestrationError,
)
from duroxide_runtime.history import Event, decode_event, encode_event
from duroxide_runtime.providers.base import decode_error_details
from duroxide_runtime import OrchestrationContext, OrchestrationStatus, SqliteProvider
from duroxide_runtime.replayer import replay_history
from duroxide_runtime.testing import ClockStalledError

from .support import Harness

REMOTE = ErrorDetails("ValueError", "bad input", "Traceback (most recent call last):\n  ...\nValueError: bad input\n")

#: One instance of every error class users can meet, with its extra constructor arguments.
EXAMPLES: list[BaseException] = [
    DuroxideError("plain"),
    DuroxideError("with a fix", fix="do this"),
    ConfigurationError("no store", fix="call .store(...)"),
    PayloadError("not JSON", fix="pass JSON"),
    PayloadTooLargeError("input is 9 bytes, over the limit of 8", fix="make it smaller"),
    InvalidInputError("instance_id", "is empty", fix="pass a non-empty id"),
    InstanceAlreadyExistsError("order-1"),
    InstanceNotFoundError("order-1", "cancel_instance"),
    InstanceStillRunningError("order-1"),
    InstanceStateError("order-1", "resume", "Running", "it is Running, not Suspended", fix="suspend it first"),
    UnknownOrchestrationError("Checkout", "2.0.0", ["Hello", "Refund"]),
    UnknownOrchestrationError("Checkout", None, []),
    UnknownActivityError("Charge", ["Greet"]),
    NonDeterminismError("replay of 'order-1': expected activity 'a' (event 2) from history"),
    NonDeterministicOperationError("loop.create_connection()"),
    OrchestrationStuckError("order-1", 2.0, "app/orders.py:41 in process_order"),
    OrchestrationStuckError("order-2", 0.05),
    CorruptHistoryError("order-1", "JSONDecodeError in row b'{'"),
    PoisonMessageError("delivered 11 times", fix="see the log"),
    StoreError("disk full", fix="free space"),
    StoreTimeoutError("a start", 120.0, committed=False),
    StoreTimeoutError("a commit of turns", 0.5, committed=None),
    DurableTaskFailed(REMOTE, what="a task"),
    ActivityFailed("Charge", REMOTE),
    SubOrchestrationFailed("Child", "order-1-child", REMOTE),
    ActivityTimeoutError("Charge", 1.5),
    errors.NonRetryableError("card declined"),
    OrchestrationCancelled("cancelled by the operator"),
    errors.PayloadDecodeError("order-1", "event 'approval'", "cannot decode 'x' as Approval", fix="send JSON"),
    errors.UpdateRejectedError("cart-1", "add_item", "r-7", "sold out"),
    errors.UpdateTimeoutError("cart-1", "add_item", "r-7", 10.0),
    errors.UpdateAlreadyRepliedError("cart-1", "add_item", "r-7"),
    errors.UnknownQueueError("paymnets", ["default", "payments"]),
    errors.InvalidScheduleError("cron", "*/0 * * * *", "step '0' is not acceptable"),
    errors.ScheduleNotFoundError("nightly", "pause_schedule"),
    errors.ScheduleExistsError("nightly"),
    # duroxide_macros and the command-line tool
    DurableNotExpandedError("durable(charge(...))"),
    DurableNotExpandedError("durable(charge(...))", "a cause", "a fix"),
    OrchestrationFailedError("order-1", "ValueError: bad input", REMOTE),
    UsageError("no such command", fix="see --help"),
    StoreNotFoundError("no database 'x'", fix="check the path"),
    ClockStalledError(60.0, 12.5, 10.0),
    Aborted("declined"),
]


def _error_classes() -> list[type[DuroxideError]]:
    """Every DuroxideError class of the runtime, the macros and the CLI (all are imported above)."""
    seen: list[type[DuroxideError]] = []
    todo: list[type[DuroxideError]] = [DuroxideError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__.startswith(("duroxide_runtime", "duroxide_macros"))]


def _same_error(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert a.args == b.args and str(a) == str(b)
    assert vars(a) == vars(b)  # message, fix and each extra attribute (instance_id, details, ...)
    if isinstance(a, DuroxideError):
        assert isinstance(b, DuroxideError)
        assert (a.code, a.message, a.fix) == (b.code, b.message, b.fix)


def test_every_error_class_has_an_example() -> None:
    exported = {getattr(errors, n) for n in errors.__all__}
    classes = {c for c in exported if inspect.isclass(c) and issubclass(c, BaseException)}
    classes |= set(_error_classes())
    assert classes - {type(e) for e in EXAMPLES} == set(), "add an example of each new error class"


@pytest.mark.parametrize("err", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("protocol", [0, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_every_error_pickles_to_an_equal_error(err: BaseException, protocol: int) -> None:
    _same_error(err, pickle.loads(pickle.dumps(err, protocol=protocol)))


@pytest.mark.parametrize("err", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_survives_deepcopy_and_copy(err: BaseException) -> None:
    deep = copy.deepcopy(err)
    _same_error(err, deep)
    if isinstance(err, (DurableTaskFailed, OrchestrationFailedError)):
        assert isinstance(deep, (DurableTaskFailed, OrchestrationFailedError))
        assert deep.details == err.details and deep.details is not err.details
    _same_error(err, copy.copy(err))


def test_pickling_keeps_attributes_set_after_construction_and_raised_errors() -> None:
    err = InstanceNotFoundError("order-1", "purge")
    err.add_note("while purging a batch")
    try:
        raise err
    except InstanceNotFoundError as raised:
        back = pickle.loads(pickle.dumps(raised))
    _same_error(err, back)
    assert back.__notes__ == ["while purging a batch"]


def test_expansion_error_pickles() -> None:
    err = DurableExpansionError([Problem("app/flows.py", 3, 4, "durable() needs a call (fix: write durable(f(x)))")])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DurableExpansionError and str(back) == str(err)
    assert (back.problems, back.filename, back.lineno, back.offset) == (err.problems, "app/flows.py", 3, 4)


def test_error_codes_are_an_enum_that_equals_the_old_strings() -> None:
    assert all(member.value == member.name for member in ErrorCode)
    assert ConfigurationError("x").code == "CONFIG" and ConfigurationError.code is ErrorCode.CONFIG
    assert f"{PayloadTooLargeError.code}" == "PAYLOAD_TOO_LARGE" and str(StoreError.code) == "STORE"
    assert orjson.loads(orjson.dumps({"code": InstanceAlreadyExistsError.code})) == {"code": "INSTANCE_EXISTS"}
    assert duroxide_runtime.ErrorCode is ErrorCode and "ErrorCode" in duroxide_runtime.__all__


def test_every_error_class_declares_its_own_code() -> None:
    classes = _error_classes()
    codes = [ErrorCode(c.__dict__["code"]) for c in classes]  # KeyError: a class without its own code
    assert len(set(codes)) == len(codes), "two classes share a code"
    assert set(codes) == set(ErrorCode), "a code no class uses"
    runtime_classes = [c for c in classes if c.__module__ == "duroxide_runtime.errors"]
    assert all(isinstance(c.code, ErrorCode) for c in runtime_classes)


def test_stuck_error_names_instance_duration_place_and_fix() -> None:
    err = OrchestrationStuckError("order-1", 2.0, "app/orders.py:41 in process_order")
    assert err.message == ("instance 'order-1': orchestration code ran 2.0 s without yielding "
                           "(at app/orders.py:41 in process_order)")
    assert err.code == "STUCK" and (err.instance_id, err.seconds, err.where) == ("order-1", 2.0,
                                                                                "app/orders.py:41 in process_order")
    assert err.fix is not None and "move the work into an activity" in err.fix and "turn_timeout" in err.fix
    assert str(OrchestrationStuckError("o", 0.05)).startswith("instance 'o': orchestration code ran 0.05 s "
                                                               "without yielding. Fix: ")
    assert duroxide_runtime.OrchestrationStuckError is OrchestrationStuckError


# -- ErrorDetails: code and fix, stored only when present ------------------------------------------


def test_details_of_a_duroxide_error_keep_message_code_and_fix_apart() -> None:
    err = PayloadTooLargeError("output is 9 bytes, over the limit of 8", fix="return less")
    details = ErrorDetails.from_exception(err)
    assert (details.error_type, details.message, details.code, details.fix) == (
        "PayloadTooLargeError", "output is 9 bytes, over the limit of 8", "PAYLOAD_TOO_LARGE", "return less")
    assert details.to_text() == f"PayloadTooLargeError: {err}"  # what users see keeps the fix
    plain = ErrorDetails.from_exception(ValueError("bad. Fix: not a duroxide fix"))
    assert (plain.message, plain.code, plain.fix) == ("bad. Fix: not a duroxide fix", None, None)
    assert plain.to_text() == "ValueError: bad. Fix: not a duroxide fix"
    no_fix = ErrorDetails.from_exception(OrchestrationCancelled("stop"))
    assert (no_fix.code, no_fix.fix, no_fix.to_text()) == ("CANCELLED", None, "OrchestrationCancelled: stop")


def _failed_event(details: ErrorDetails) -> Event.ActivityFailed:
    return Event.ActivityFailed(event_id=3, timestamp_ms=1_700_000_000_000, source_event_id=2, details=details)


def test_history_encoding_round_trips_details_with_and_without_code_and_fix() -> None:
    structured = ErrorDetails.from_exception(NonDeterminismError("replay of 'o': changed"))
    for details in (REMOTE, structured):
        event = _failed_event(details)
        assert decode_event(encode_event(event)) == event
    # Without code and fix the row is byte for byte what versions before them wrote.
    assert encode_event(_failed_event(REMOTE)) == orjson.dumps({
        "type": "ActivityFailed", "event_id": 3, "timestamp_ms": 1_700_000_000_000, "source_event_id": 2,
        "details": {"error_type": "ValueError", "message": "bad input", "traceback": REMOTE.traceback}})
    stored = orjson.loads(encode_event(_failed_event(structured)))["details"]
    assert (stored["code"], stored["fix"]) == ("NONDETERMINISM", NonDeterminismError.FIX)


def test_old_and_future_stored_details_still_decode() -> None:
    old = b'{"error_type": "ValueError", "message": "boom", "traceback": "Traceback ..."}'
    assert decode_error_details(old) == ErrorDetails("ValueError", "boom", "Traceback ...")
    assert decode_error_details(b'{"error_type": "E", "message": "m"}') == ErrorDetails("E", "m")
    # Written by a store that encodes every field (nulls), or by a newer version with more fields.
    nulls = b'{"error_type": "E", "message": "m", "traceback": "", "code": null, "fix": null}'
    assert decode_error_details(nulls) == ErrorDetails("E", "m")
    newer = b'{"error_type": "E", "message": "m", "code": "STORE", "fix": "f", "retry_after": 3}'
    assert decode_error_details(newer) == ErrorDetails("E", "m", code="STORE", fix="f")
    old_event = (b'{"type": "OrchestrationFailed", "event_id": 4, "timestamp_ms": 5, '
                 b'"details": {"error_type": "ValueError", "message": "boom", "traceback": ""}}')
    assert decode_event(old_event) == Event.OrchestrationFailed(
        event_id=4, timestamp_ms=5, details=ErrorDetails("ValueError", "boom"))


@pytest.mark.parametrize("raw", [b'["E", "m"]', b'{"message": "m"}', b'{"error_type": "E", "message": 5}',
                                 b'{"error_type": "E", "message": "m", "fix": ["x"]}', b"{nope"])
def test_unreadable_stored_details_become_a_placeholder_or_corrupt_history(raw: bytes) -> None:
    details = decode_error_details(raw)
    assert details is not None and details.error_type == "CorruptHistoryError"
    assert "the stored error is unreadable" in details.message
    event = b'{"type": "OrchestrationFailed", "event_id": 4, "details": ' + raw + b"}"
    with pytest.raises(CorruptHistoryError):
        decode_event(event, instance_id="o")


# -- through the runtime and real stores -------------------------------------------------------------


async def returns_a_dict(ctx: OrchestrationContext, _: str) -> Any:
    return {"not": "a string"}


async def test_a_failed_instance_keeps_code_and_fix_in_every_store(cached_harness: Harness) -> None:
    h = cached_harness
    await h.start({"ReturnsDict": returns_a_dict})
    status = await h.run("bad-output", "ReturnsDict")
    assert isinstance(status, OrchestrationStatus.Failed) and status.details is not None
    details = status.details
    assert (details.error_type, details.code) == ("PayloadError", "PAYLOAD")
    assert "must return str" in details.message and "Fix:" not in details.message
    assert details.fix is not None and "json.dumps" in details.fix
    assert status.error == details.to_text() and f". Fix: {details.fix}" in status.error
    info = await h.client.get_instance_info("bad-output")
    assert info.error == status.error
    failed = (await h.client.read_history("bad-output"))[-1]
    assert isinstance(failed, Event.OrchestrationFailed) and failed.details == details


async def test_rows_written_before_code_and_fix_existed_read_back(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'old.db'}"
    store = await SqliteProvider.new(url)
    h = Harness(store, "cached")
    try:
        await h.start({"ReturnsDict": returns_a_dict})
        await h.run("old-row", "ReturnsDict")
        await h.stop()
        # Rewrite the instance row and the OrchestrationFailed event as an older version stored them.
        old = {"error_type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
        with contextlib.closing(sqlite3.connect(tmp_path / "old.db")) as db, db:
            db.execute("UPDATE instances SET error = ? WHERE instance_id = 'old-row'", (orjson.dumps(old),))
            (last, raw), = db.execute("SELECT event_id, event FROM history WHERE instance_id = 'old-row' "
                                      "ORDER BY event_id DESC LIMIT 1").fetchall()
            body = orjson.loads(raw)
            body["details"] = old
            db.execute("UPDATE history SET event = ? WHERE instance_id = 'old-row' AND event_id = ?",
                       (orjson.dumps(body), last))
        status = await h.client.get_orchestration_status("old-row")
        assert status == OrchestrationStatus.Failed(error="ValueError: boom",
                                                    details=ErrorDetails("ValueError", "boom", "Traceback ..."))
        failed = (await h.client.read_history("old-row"))[-1]
        assert isinstance(failed, Event.OrchestrationFailed)
        assert failed.details == ErrorDetails("ValueError", "boom", "Traceback ...")
    finally:
        await h.stop()
        await store.close()


# -- the replayer rebuilds the error from its details, not from its text ----------------------------------


async def v1(ctx: OrchestrationContext, data: str) -> str:
    return await ctx.schedule_activity("Double", data)


async def v2(ctx: OrchestrationContext, data: str) -> str:
    return await ctx.schedule_activity("Triple", data)


async def double(x: str) -> str:
    return x * 2


async def test_replayer_raises_nondeterminism_with_the_original_message_and_fix(cached_harness: Harness) -> None:
    harness = cached_harness
    await harness.start({"V1": v1}, {"Double": double})
    await harness.run("r1", "V1", "ab")
    events = await harness.client.read_history("r1")
    with pytest.raises(NonDeterminismError) as raised:
        replay_history(v2, events, instance_id="r1")
    err = raised.value
    assert err.message.startswith("replay of 'r1': expected activity 'Double'") and "'Triple'" in err.message
    assert "Fix:" not in err.message and err.fix == NonDeterminismError.FIX
    assert str(err) == f"{err.message}. Fix: {NonDeterminismError.FIX}"  # the fix once, not twice
    assert err.code == ErrorCode.NONDETERMINISM
