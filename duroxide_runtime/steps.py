"""Progress of orchestration code, counted per thread for the turn watchdog.

The orchestration loop adds one per callback it runs; the turn thread adds
one per turn it starts. The watchdog (dispatch/turns.py) reads the count of
the turn thread from the event loop's thread: a count that stops moving
while a turn runs means code that does not yield. Counting per thread keeps
several runtimes in one process (tests, embedded use) apart.

Example::

    counter = StepCounter()
    count_steps_of_this_thread(counter)
    steps_of_this_thread().count += 1      # what the loop does per callback
"""

from __future__ import annotations

import threading

__all__ = ["StepCounter", "TurnInterrupt", "TurnPreempted", "count_steps_of_this_thread", "steps_of_this_thread"]


class TurnInterrupt(BaseException):
    """Raised inside a stuck turn by the watchdog (dispatch/turns.py).

    A ``BaseException``, so that orchestration code's ``except Exception:`` does
    not swallow it; the orchestration loop lets it through as it does
    ``KeyboardInterrupt``.
    """


class TurnPreempted(TurnInterrupt):
    """Raised between two steps of a turn running on the event loop past its budget.

    The turn is given up (its state is discarded) and redone on the turn thread; raised
    by the orchestration loop itself, at a step boundary, never inside user code.
    """


class StepCounter:
    """A step count written by one thread and read by the watchdog (int writes are atomic).

    ``deadline`` (a ``time.monotonic()`` value; 0 for none) is set while a turn runs on
    the event loop: the orchestration loop raises :class:`TurnPreempted` at the first
    step boundary past it.
    """

    __slots__ = ("count", "deadline")

    def __init__(self) -> None:
        self.count = 0
        self.deadline = 0.0


_local = threading.local()
#: Threads that run no watched turns (tests, the replayer) count into this one.
_unwatched = StepCounter()


def count_steps_of_this_thread(counter: StepCounter) -> None:
    """Make ``counter`` the one this thread's orchestration loops add to."""
    _local.counter = counter


def steps_of_this_thread() -> StepCounter:
    """The counter of this thread (a shared unwatched one if none was set)."""
    counter: StepCounter = getattr(_local, "counter", _unwatched)
    return counter
