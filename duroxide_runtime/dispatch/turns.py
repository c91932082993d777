"""Orchestration turns on a thread of their own, watched by a watchdog.

Orchestration code is user code: it runs until its next ``await`` without
giving control back. Run on the runtime's event loop, a CPU-heavy turn or a
long replay starved lease renewals (another process then took the instance
and, after ping-ponging, poisoned it), and a ``while True:`` hung the
process, shutdown included. So turns run on one daemon thread per runtime
(they are CPU-bound: under the GIL more threads would add switching, not
speed), and the event loop stays free to renew leases, run activities and
shut down while it awaits a batch.

The watchdog counts the orchestration loop's steps (each callback it runs,
each turn it starts). A step that runs longer than ``turn_timeout`` is
stopped by raising :class:`TurnInterrupt` in the turn thread (CPython's
documented ``PyThreadState_SetAsyncExc``, the only way to stop a thread
from outside); the call then reports :class:`Stuck` with the line it was on.
A turn that is slow but keeps stepping is never interrupted. If user code
swallows the interrupt and goes on looping, the thread is given up and a
fresh one takes the next turns.

Short turns first run on the event loop itself (``inline_budget`` > 0): most
turns take tens of microseconds, and the hop to the thread and back cost more
than the turn, on every orchestration's latency and in CPU (GIL hand-offs).
The budget bounds how long the loop is held: at the first step boundary past
it, the orchestration loop raises :class:`TurnPreempted`, the call reports
:class:`Preempted` (its state is to be discarded; the caller redoes it on the
thread with ``inline=False``), and the rest of the batch goes to the thread.
A call that stops stepping on the loop is stopped by a watchdog thread, as
on the turn thread, and turns then stay off the loop for good; a pipeline
whose recent calls were slow, or were preempted, uses the thread for a while.
Code that swallows the watchdog's interrupt on the loop cannot be recovered
from (the log says so, CRITICAL): the runtime cannot give up its own thread.

Example::

    turns = TurnThread(turn_timeout=2.0)
    outcomes = await turns.run([lambda: 1 + 1])   # [Done(value=2)]
    turns.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Generic, TypeVar

from ..steps import StepCounter, TurnInterrupt, TurnPreempted, count_steps_of_this_thread, steps_of_this_thread

__all__ = ["TurnThread", "TurnInterrupt", "Done", "Raised", "Stuck", "Skipped", "Preempted", "TurnOutcome"]

_T = TypeVar("_T")
_log = logging.getLogger("duroxide.dispatcher")

#: Files whose frames are the runtime's or asyncio's, not the line a stuck user was on.
_INTERNAL_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                  os.path.dirname(os.path.abspath(asyncio.__file__)), os.path.abspath(threading.__file__))


@dataclass(frozen=True)
class Done(Generic[_T]):
    """The call returned ``value``."""

    value: _T


@dataclass(frozen=True)
class Raised:
    """The call raised ``error`` (an engine bug: the caller decides what to do)."""

    error: Exception


@dataclass(frozen=True)
class Skipped:
    """The call never ran: the thread before it was given up (redo it)."""


@dataclass(frozen=True)
class Stuck:
    """The watchdog stopped the call after ``seconds`` without a step, on line ``where``."""

    seconds: float
    where: str | None


@dataclass(frozen=True)
class Preempted:
    """The call ran on the event loop past its budget and was stopped at a step boundary:
    discard what it did and redo it on the thread (``run(..., inline=False)``)."""


TurnOutcome = Done[_T] | Raised | Stuck | Skipped | Preempted

#: After a preemption, or a call slower than its budget, this many batches skip the loop.
_THREAD_BATCHES_AFTER_SLOW = 50


@dataclass
class _Job(Generic[_T]):
    calls: Sequence[Callable[[], _T]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[TurnOutcome[_T]]]
    outcomes: list[TurnOutcome[_T]] = field(default_factory=list)
    #: Set when the thread running this job was given up: its remaining calls must not run.
    abandoned: bool = False
    #: The caller's trace and profile functions (a debugger, a tracer), carried to the turn thread.
    trace: Any = None
    profile: Any = None


class _Watched:
    """A thread that runs turn calls, as the watchdog sees it: its steps and its running call."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.steps = StepCounter()
        self.lock = threading.Lock()
        #: The call running now, and the one the watchdog interrupted (identity tokens).
        self.running: object | None = None
        self.interrupted: object | None = None
        self.where: str | None = None
        #: (token, steps) seen by the watchdog, and since when.
        self.seen: tuple[object | None, int] = (None, -1)
        self.seen_since = 0.0
        self.interrupts = 0
        #: A debugger traces this thread: a call stopped at a breakpoint makes no steps.
        self.debugging = False

    def _run_call(self, call: Callable[[], object]) -> TurnOutcome[object]:
        token = object()
        with self.lock:
            self.running = token
            self.steps.count += 1
        started = time.monotonic()
        outcome: TurnOutcome[object] | None = None
        fired = False  # the watchdog's interrupt was raised (and so consumed) in this call
        try:
            try:
                outcome = Done(call())
            except Exception as exc:  # noqa: BLE001 - reported to the caller, per call
                outcome = Raised(exc)
        except TurnPreempted:
            outcome = Preempted()
        except TurnInterrupt:
            fired = True
        while True:  # until the lock is taken, an interrupt may still land here
            try:
                stuck = self._leave(token, fired)
                break
            except TurnInterrupt:
                fired = True
                continue
        if stuck or outcome is None:
            return Stuck(time.monotonic() - started, self.where)
        return outcome

    def _leave(self, token: object, fired: bool) -> bool:
        """End the call; whether the watchdog interrupted it. A pending interrupt fires here."""
        with self.lock:
            stuck = self.interrupted is token
            if stuck:
                self.interrupted = None
                if not fired:
                    _let_pending_interrupt_fire()
            self.running = None
            return stuck

    def check(self, timeout: float) -> bool:
        """Interrupt the running call if it made no step for ``timeout`` seconds.

        Returns ``False`` once the thread must be given up (it ignores interrupts).
        """
        now = time.monotonic()
        with self.lock:
            token = self.running
            seen = (token, self.steps.count)
            if token is None or seen != self.seen:
                self.seen, self.seen_since, self.interrupts = seen, now, 0
                return True
            if now - self.seen_since < timeout * (1 + self.interrupts):
                return True
            if self.interrupts >= 3:
                return False
            if self.interrupts == 0:
                self.where = _line_of(self.thread)
            self.interrupts += 1
            self.interrupted = token
            _set_async_exc(self.thread, TurnInterrupt)
            return True


class _Worker(_Watched):
    """One turn thread and what the watchdog knows of it."""

    def __init__(self, name: str) -> None:
        super().__init__(threading.Thread(target=self._main, name=name, daemon=True))
        self.jobs: queue.SimpleQueue[_Job[object] | None] = queue.SimpleQueue()
        self.job: _Job[object] | None = None
        self.thread.start()

    # -- on the turn thread ----------------------------------------------------------

    def _main(self) -> None:
        count_steps_of_this_thread(self.steps)
        while True:
            job: _Job[object] | None = None
            try:
                job = self.jobs.get()
                if job is None:
                    return
                self.job = job
                self._run_job(job)
            except TurnInterrupt:  # cannot happen (pending interrupts are cleared); never die of it
                continue
            except BaseException as exc:  # noqa: BLE001 - the thread outlives any job; its caller hears why
                _log.error("turn thread %s: a batch of turns failed outside any turn; it will be redone",
                           self.thread.name, exc_info=exc)
                if job is not None:
                    job.outcomes = [Raised(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                                    for _ in job.calls]
                    with contextlib.suppress(RuntimeError):  # the runtime's loop is closed
                        job.loop.call_soon_threadsafe(_resolve, job.future, job.outcomes)

    def _run_job(self, job: _Job[object]) -> None:
        # pdb and tracers set on the event loop's thread must see orchestration lines too;
        # a tracer this thread got on its own (coverage's, via threading.settrace) stays.
        own_trace = sys.gettrace() is not None
        if not own_trace:
            sys.settrace(job.trace)
        sys.setprofile(job.profile)
        try:
            for call in job.calls:
                if job.abandoned:
                    return
                job.outcomes.append(self._run_call(call))
        finally:
            if not own_trace:
                sys.settrace(None)
            sys.setprofile(None)
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, job.outcomes)
        except RuntimeError:  # the runtime's loop is closed: nobody waits any more
            pass


class TurnThread:
    """Runs batches of turn calls on a daemon thread, under a watchdog; see the module docstring."""

    def __init__(self, turn_timeout: float, name: str = "duroxide-turns", *, inline_budget: float = 0.0) -> None:
        self._timeout = turn_timeout
        self._name = name
        self._worker = _Worker(name)
        self._closed = False
        #: Seconds a batch may hold the event loop (0: every call runs on the thread).
        self._budget = inline_budget
        #: The event loop's thread while it runs a call, for the inline watchdog (made on first use).
        self._on_loop: _Watched | None = None
        #: Batches that go to the thread before the loop is tried again; -1: never again.
        self._thread_batches = 0
        #: The loop ignored the watchdog's interrupts (logged once).
        self._loop_lost = False

    async def run(self, calls: Sequence[Callable[[], _T]], *, inline: bool = True) -> list[TurnOutcome[_T]]:
        """Run ``calls`` one after another; one outcome per call, in order.

        With an ``inline_budget``, calls first run on the event loop (``inline=False``:
        never), the rest of the batch going to the thread once one is preempted.
        """
        if not calls:
            return []
        if self._closed:
            raise RuntimeError("the turn thread is closed")
        if inline and self._budget > 0:
            if self._thread_batches == 0:
                ran = self._run_inline(calls)
                if len(ran) == len(calls):
                    return ran
                return [*ran, *await self._on_thread(calls[len(ran):])]
            if self._thread_batches > 0:
                self._thread_batches -= 1
        return await self._on_thread(calls)

    def _run_inline(self, calls: Sequence[Callable[[], _T]]) -> list[TurnOutcome[_T]]:
        """Run calls on this (the event loop's) thread until one is preempted or the budget is spent."""
        watched = self._on_loop
        if watched is None or watched.thread is not threading.current_thread():
            first = watched is None
            watched = self._on_loop = _Watched(threading.current_thread())
            if first:  # one watchdog thread; it looks at whichever thread _on_loop names
                threading.Thread(target=_watch_the_loop, args=(weakref.ref(self), self._timeout),
                                 name=f"{self._name}-watchdog", daemon=True).start()
        watched.debugging = _debugging(sys.gettrace())
        previous = steps_of_this_thread()
        count_steps_of_this_thread(watched.steps)
        deadline = time.monotonic() + self._budget
        outcomes: list[TurnOutcome[_T]] = []
        try:
            for call in calls:
                watched.steps.deadline = deadline
                outcome = watched._run_call(call)
                outcomes.append(outcome)  # type: ignore[arg-type]
                if isinstance(outcome, Preempted) or time.monotonic() > deadline:
                    self._thread_batches = max(self._thread_batches, _THREAD_BATCHES_AFTER_SLOW)
                    break
                if isinstance(outcome, Stuck):
                    self._loop_stopped_a_turn(outcome)
                    break
        finally:
            watched.steps.deadline = 0.0
            count_steps_of_this_thread(previous)
        return outcomes

    def _loop_stopped_a_turn(self, outcome: Stuck) -> None:
        self._thread_batches = -1
        _log.warning("turn thread %s: a turn stopped stepping on the event loop (%s); turns run on the turn "
                     "thread from now on", self._name, outcome.where or "line unknown")

    async def _on_thread(self, calls: Sequence[Callable[[], _T]]) -> list[TurnOutcome[_T]]:
        loop = asyncio.get_running_loop()
        # Only Python-callable hooks can be carried: cProfile's Profile is a C-level hook
        # that sys.setprofile cannot take back (profile the turn thread with threading.setprofile).
        trace, profile = sys.gettrace(), sys.getprofile()
        job: _Job[_T] = _Job(calls, loop, loop.create_future(), trace=trace if callable(trace) else None,
                             profile=profile if callable(profile) else None)
        # A debugger stopped at a breakpoint makes no steps: stopping it would be wrong.
        watched = not _debugging(job.trace)
        worker = self._worker
        worker.jobs.put(job)  # type: ignore[arg-type]
        interval = max(0.001, self._timeout / 4)
        timer: asyncio.TimerHandle | None = None

        def watch() -> None:
            nonlocal timer
            if job.future.done():
                return
            if watched and worker is self._worker and not worker.check(self._timeout):
                self._give_up(worker)
                return
            timer = loop.call_later(interval, watch)

        # A timer, not asyncio.wait(timeout=...): a turn's round trip is on every
        # orchestration's latency, and this costs one handle instead of a waiter set.
        timer = loop.call_later(interval, watch)
        try:
            return await job.future
        finally:
            if timer is not None:
                timer.cancel()

    def _give_up(self, worker: _Worker) -> None:
        """The running call ignores interrupts: leave it its thread and take a fresh one."""
        _log.error("turn thread %s: orchestration code ignored %d interrupts (does it catch BaseException?); "
                   "the thread is given up and a new one runs the next turns", worker.thread.name, worker.interrupts)
        self._worker = _Worker(self._name)
        job = worker.job
        if job is not None and not job.future.done():
            job.abandoned = True
            ran = list(job.outcomes)
            stuck: TurnOutcome[object] = Stuck(time.monotonic() - worker.seen_since, worker.where)
            rest: list[TurnOutcome[object]] = [Skipped()] * len(job.calls)
            _resolve(job.future, [*ran, stuck, *rest][:len(job.calls)])
        while True:  # jobs queued behind the stuck one move to the new thread
            try:
                queued = worker.jobs.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                self._worker.jobs.put(queued)
        worker.jobs.put(None)

    def close(self) -> None:
        """Let the thread end after its current job (idempotent)."""
        if not self._closed:
            self._closed = True
            self._worker.jobs.put(None)


def _watch_the_loop(turns_ref: weakref.ref[TurnThread], timeout: float) -> None:
    """Thread body: stop a call that stops stepping on the event loop, while the TurnThread lives.

    The loop cannot watch itself while a call holds it, so this thread does what the
    loop's timer does for the turn thread.
    """
    while True:
        time.sleep(max(0.001, timeout / 4))
        turns = turns_ref()  # no strong reference is kept across the sleep
        if turns is None or turns._closed:
            return
        _check_the_loop(turns, timeout)
        del turns


def _check_the_loop(turns: TurnThread, timeout: float) -> None:
    """One look of the loop's watchdog; a loop that ignores its interrupts is logged once, CRITICAL."""
    watched = turns._on_loop
    if watched is None or watched.debugging or watched.check(timeout) or turns._loop_lost:
        return
    turns._loop_lost = True
    _log.critical("turn thread %s: orchestration code on the event loop ignores the watchdog's interrupts "
                  "(does it catch BaseException?) at %s; the runtime cannot take its own thread back: "
                  "restart the process, and fix that code", turns._name, watched.where or "line unknown")


def _debugging(trace: object) -> bool:
    """Whether a debugger runs: pdb (any ``bdb.Bdb``) traces the caller, or debugpy is loaded."""
    if "pydevd" in sys.modules:
        return True
    owner = getattr(trace, "__self__", None)
    bdb = sys.modules.get("bdb")
    return bdb is not None and isinstance(owner, bdb.Bdb)


def _resolve(future: asyncio.Future[_T], value: _T) -> None:
    if not future.done():
        future.set_result(value)


def _set_async_exc(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise ``exc`` in ``thread`` at its next bytecode."""
    ident = thread.ident
    if ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


def _let_pending_interrupt_fire() -> None:
    """Let the watchdog's interrupt, set but not yet raised in this thread, fire here.

    Cancelling it with ``PyThreadState_SetAsyncExc(id, NULL)`` would leave CPython's
    (3.11) interpreter-wide "asynchronous exception pending" flag set with nothing to
    raise: every thread then takes the slow path at each check, and profiled code
    loops forever at the start of a function. Raised and caught, the flag is cleared.
    The loop is bounded in case user code already caught the interrupt.
    """
    try:
        for _ in range(1_000_000):
            pass
    except TurnInterrupt:
        pass


def _line_of(thread: threading.Thread) -> str | None:
    """``file:line in function`` of the innermost frame of user code running in ``thread``.

    ``sys._current_frames`` is documented in the ``sys`` module (for debuggers
    and watchdogs like this one).
    """
    frame: FrameType | None = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_INTERNAL_DIRS):
            return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return None
