"""The turn thread and its watchdog (dispatch/turns.py), on their own.

Orchestration turns run off the event loop, so that the loop keeps renewing
leases while a turn computes, and a turn that stops stepping is interrupted
with the line it was on. The runtime-level behaviour (a ``while True:``
orchestration beside healthy ones, a slow turn with two processes) is in
tests/test_engine_watchdog.py.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from duroxide_runtime.dispatch.turns import Done, Raised, Skipped, Stuck, TurnInterrupt, TurnThread
from duroxide_runtime.steps import steps_of_this_thread

from .support import Ticker, run_cmd


def _spin_forever() -> None:
    while True:  # the line the watchdog must name
        pass


def _step_for(seconds: float) -> str:
    """Compute for ``seconds`` while stepping, as an orchestration loop does between callbacks."""
    end = time.monotonic() + seconds
    counter = steps_of_this_thread()
    while time.monotonic() < end:
        counter.count += 1
        sum(range(1000))
    return "stepped"


async def test_calls_run_in_order_off_the_event_loop() -> None:
    turns = TurnThread(turn_timeout=5.0)
    loop_thread = threading.get_ident()
    try:
        outcomes = await turns.run([lambda: 1, lambda: threading.get_ident(), lambda: 1 // 0])
    finally:
        turns.close()
    assert outcomes[0] == Done(1)
    assert isinstance(outcomes[1], Done) and outcomes[1].value != loop_thread
    assert isinstance(outcomes[2], Raised) and isinstance(outcomes[2].error, ZeroDivisionError)


async def test_a_call_that_never_steps_is_stopped_with_its_line_and_the_rest_of_the_batch_runs() -> None:
    turns = TurnThread(turn_timeout=1.0)  # generous: "before" and "after" must never look stuck on a busy machine
    try:
        outcomes = await asyncio.wait_for(turns.run([lambda: "before", _spin_forever, lambda: "after"]), 60)
        again = await asyncio.wait_for(turns.run([lambda: "next batch"]), 60)
    finally:
        turns.close()
    assert outcomes[0] == Done("before") and outcomes[2] == Done("after")
    stuck = outcomes[1]
    assert isinstance(stuck, Stuck) and stuck.seconds >= 1.0
    assert stuck.where is not None and "test_turn_watchdog.py" in stuck.where and "_spin_forever" in stuck.where
    assert again == [Done("next batch")]


_SWALLOWING = '''
import asyncio, os, threading
from duroxide_runtime.dispatch.turns import Skipped, Stuck, TurnThread

def spin_swallowing():
    while True:
        try:
            while True:
                pass
        except BaseException:  # what a hostile orchestration does
            continue

async def main():
    turns = TurnThread(turn_timeout=0.3, name="duroxide-turns-test-swallow")  # the next batch must not look stuck
    outcomes = await asyncio.wait_for(turns.run([spin_swallowing, lambda: "never ran"]), 60)
    again = await asyncio.wait_for(turns.run([lambda: threading.current_thread().name]), 60)
    turns.close()
    print("first:", type(outcomes[0]).__name__, outcomes[1] == Skipped(), "again:", again[0].value, flush=True)

asyncio.run(main())
os._exit(0)  # the swallowing thread spins for good: end the process without joining it
'''


def test_code_that_swallows_the_interrupt_costs_its_thread_not_the_runtime(tmp_path: Path) -> None:
    # In a process of its own: the thread it costs spins, holding the GIL half the time, until the process ends.
    script = tmp_path / "swallowing.py"
    script.write_text(_SWALLOWING)
    proc = run_cmd([sys.executable, str(script)], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first: Stuck True again: duroxide-turns-test-swallow" in proc.stdout, proc.stdout + proc.stderr


async def test_a_slow_call_that_keeps_stepping_is_never_interrupted_and_the_loop_stays_free() -> None:
    turns = TurnThread(turn_timeout=1.0)
    try:
        async with Ticker(0.01).running() as ticker:
            outcomes = await asyncio.wait_for(turns.run([lambda: _step_for(2.5)]), 60)
    finally:
        turns.close()
    assert outcomes == [Done("stepped")]
    assert ticker.ticks > 10  # the event loop ran while the turn computed


async def test_with_an_inline_budget_short_calls_run_on_the_event_loop() -> None:
    turns = TurnThread(turn_timeout=5.0, inline_budget=5.0)  # no call here comes near 5 s
    try:
        outcomes = await turns.run([lambda: threading.get_ident(), lambda: 1 // 0])
        forced = await turns.run([lambda: threading.get_ident()], inline=False)
    finally:
        turns.close()
    assert outcomes[0] == Done(threading.get_ident())  # no hop to a thread and back
    assert isinstance(outcomes[1], Raised) and isinstance(outcomes[1].error, ZeroDivisionError)
    assert isinstance(forced[0], Done) and forced[0].value != threading.get_ident()


async def test_a_call_that_never_steps_on_the_event_loop_is_stopped_and_turns_leave_the_loop() -> None:
    turns = TurnThread(turn_timeout=1.0, inline_budget=5.0)
    try:
        outcomes = await asyncio.wait_for(turns.run([_spin_forever, lambda: threading.get_ident()]), 60)
        later = await asyncio.wait_for(turns.run([lambda: threading.get_ident()]), 60)
    finally:
        turns.close()
    stuck = outcomes[0]
    assert isinstance(stuck, Stuck) and stuck.where is not None and "_spin_forever" in stuck.where
    # The rest of that batch, and every later one, runs on the turn thread.
    assert isinstance(outcomes[1], Done) and outcomes[1].value != threading.get_ident()
    assert isinstance(later[0], Done) and later[0].value != threading.get_ident()


def test_the_interrupt_is_not_an_exception_orchestration_code_catches_by_accident() -> None:
    assert not issubclass(TurnInterrupt, Exception)


@pytest.mark.parametrize("timeout", [0.05])
async def test_a_closed_turn_thread_refuses_work(timeout: float) -> None:
    turns = TurnThread(turn_timeout=timeout)
    turns.close()
    turns.close()
    with pytest.raises(RuntimeError, match="closed"):
        await turns.run([lambda: None])


async def test_a_profiler_on_the_event_loop_thread_does_not_break_turns() -> None:
    """cProfile installs a C-level hook that cannot be carried to another thread; turns still run."""
    import cProfile

    turns = TurnThread(turn_timeout=5.0)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        outcomes = await asyncio.wait_for(turns.run([lambda: "ran"]), 60)
    finally:
        profiler.disable()
        turns.close()
    assert outcomes == [Done("ran")]


_AFTER_A_STOP = '''
import asyncio, cProfile, threading
from duroxide_runtime.dispatch.turns import Stuck, TurnThread

def spin_forever():
    while True:
        pass

async def main(inline):
    turns = TurnThread(turn_timeout=0.5, inline_budget=5.0 if inline else 0.0)
    outcomes = await turns.run([spin_forever])
    turns.close()
    assert isinstance(outcomes[0], Stuck), outcomes
    profiler = cProfile.Profile()  # profiled code looped forever at a function's start
    profiler.enable()
    total = sum(len(str(i)) for i in range(1000))
    profiler.disable()
    print("after the stop:", total)

asyncio.run(main({inline}))
'''


@pytest.mark.parametrize("inline", [True, False])
def test_a_stopped_call_leaves_no_interrupt_signal_behind(tmp_path: Path, inline: bool) -> None:
    """The watchdog's interrupt is raised and caught, never cancelled half-way.

    Cancelling a pending one with PyThreadState_SetAsyncExc(id, NULL) left CPython's
    interpreter-wide pending flag set: every thread took the slow path at each check,
    and profiled code hung at the start of its next function.
    """
    script = tmp_path / "after_a_stop.py"
    script.write_text(_AFTER_A_STOP.format(inline=inline))
    proc = run_cmd([sys.executable, str(script)], tmp_path, timeout=120)
    assert proc.returncode == 0 and "after the stop: 2890" in proc.stdout, proc.stdout + proc.stderr
