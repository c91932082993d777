"""The one piece of asyncio's private API duroxide relies on still does what it did.

Orchestration code runs on ``OrchestrationLoop``, which the engine drives step
by step instead of with ``run_forever``; asyncio has no public way for such a
loop to become "the running loop", so ``duroxide_runtime.loop.running_in_this_thread``
uses ``asyncio.events._get_running_loop`` / ``_set_running_loop``. If a Python
release changes them, these tests fail with a message naming what changed,
instead of orchestrations failing in obscure ways.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from asyncio import events
from typing import Any

import pytest

from duroxide_runtime.loop import OrchestrationLoop, running_in_this_thread

_WHAT = "duroxide_runtime/loop.py running_in_this_thread() depends on it; "


class _NoTimers:
    def now_seconds(self) -> float:
        return 0.0

    def durable_timer_at(self, when: float) -> asyncio.Future[Any]:
        raise AssertionError("no timers in this test")

    def on_task_done(self, task: asyncio.Future[Any]) -> None:
        pass

    def log_fields(self) -> dict[str, Any]:
        return {"instance_id": "test"}


def _loop() -> OrchestrationLoop:
    return OrchestrationLoop(_NoTimers())  # type: ignore[abstract]


def test_asyncio_still_has_the_private_running_loop_functions() -> None:
    for name in ("_get_running_loop", "_set_running_loop"):
        assert callable(getattr(events, name, None)), (
            f"asyncio.events.{name} is gone or no longer callable in Python {sys.version}: "
            + _WHAT + "find this Python's way to make a step-driven loop the running loop")


def test_setting_the_running_loop_makes_get_running_loop_return_it() -> None:
    loop = _loop()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # precondition: plain test code runs outside any loop
    with running_in_this_thread(loop):
        assert events._get_running_loop() is loop, (
            "asyncio.events._get_running_loop() does not return what _set_running_loop() set: " + _WHAT)
        assert asyncio.get_running_loop() is loop, (
            "asyncio.get_running_loop() no longer returns the loop given to asyncio.events._set_running_loop(): "
            + _WHAT + "orchestration code would not see its loop")
        assert loop.is_running()
    assert events._get_running_loop() is None, "running_in_this_thread() did not restore the previous running loop"


def test_the_running_loop_is_per_thread() -> None:
    # Orchestration turns may run on worker threads: one thread's loop must not leak into another.
    loop = _loop()
    seen: list[object] = []
    inside = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        inside.wait(10)
        seen.append(events._get_running_loop())
        release.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with running_in_this_thread(loop):
        inside.set()
        assert release.wait(10), "the other thread did not report"
    t.join(10)
    assert seen == [None], ("asyncio's running loop is no longer per thread (another thread saw ours): "
                            + _WHAT + "orchestration turns on worker threads would see each other's loop")


def test_tasks_run_on_the_orchestration_loop_see_it_as_running() -> None:
    loop = _loop()
    seen: list[asyncio.AbstractEventLoop] = []

    async def body() -> None:
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        seen.append(asyncio.get_running_loop())

    task: asyncio.Task[None] = loop.create_task(body())
    loop.run_ready()
    assert task.done() and task.exception() is None
    assert seen == [loop, loop], "a task on OrchestrationLoop did not see it as the running loop: " + _WHAT


def test_asyncio_still_words_a_foreign_future_await_as_the_engine_expects() -> None:
    """asyncio's error for awaiting another loop's future has no type of its own;
    ``loop.is_foreign_future_error`` recognises its text (orchestration code doing real I/O)."""
    from duroxide_runtime.loop import is_foreign_future_error

    other = asyncio.new_event_loop()
    try:
        foreign = other.create_future()
        loop = _loop()

        async def awaits_foreign() -> None:
            await foreign

        task = loop.create_task(awaits_foreign())
        loop.run_ready()
        assert task.done(), _WHAT.replace("running_in_this_thread()", "is_foreign_future_error()")
        error = task.exception()
        assert error is not None and is_foreign_future_error(error), (
            "duroxide_runtime/loop.py is_foreign_future_error() no longer recognises asyncio's error for a "
            f"future of another loop: {error!r}; update its text match")
    finally:
        other.close()
