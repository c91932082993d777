"""The deterministic event loop orchestrations run on.

An orchestration is ordinary ``async def`` code. It runs on this loop, never
on the application's real asyncio loop, so that:

* the order in which callbacks run depends only on the order of history
  events (a FIFO ready queue, no I/O selector, no wall clock);
* ``asyncio.create_task``, ``gather``, ``wait`` and ``wait_for`` work
  unchanged, because they only need ``call_soon``, ``create_future`` and
  ``create_task``;
* ``asyncio.sleep`` (and every asyncio timeout) becomes a *durable timer*:
  ``call_at`` asks the orchestration for a timer instead of a clock;
* anything that needs real I/O (sockets, threads, subprocesses) raises
  :class:`NonDeterministicOperationError` instead of silently breaking replay.

The loop is driven by the replay engine with :meth:`OrchestrationLoop.run_ready`,
which runs callbacks until nothing is ready: the orchestration is then
"blocked" on durable work.
"""

from __future__ import annotations

import asyncio
import collections
import time
import contextvars
import logging
from asyncio import events
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from . import current
from .errors import NonDeterministicOperationError
from .steps import TurnInterrupt, TurnPreempted, steps_of_this_thread

if TYPE_CHECKING:
    from .context import OrchestrationContext

_T = TypeVar("_T")
_log = logging.getLogger("duroxide.loop")


class running_in_this_thread:  # noqa: N801 - used as a function: `with running_in_this_thread(loop):`
    """Make ``loop`` this thread's running loop for the block, then restore the previous one.

    The one use of asyncio's private API: a loop driven step by step (not by
    ``run_forever``) has no public way to become the running loop, and
    ``asyncio.get_running_loop()``, ``create_task`` and ``sleep`` need it.
    The state is per thread, like asyncio's own. tests/test_asyncio_private_api.py
    fails loudly if asyncio changes it. (A class, not a generator: it is entered
    at every turn.)

    Example::

        with running_in_this_thread(loop):
            assert asyncio.get_running_loop() is loop
    """

    __slots__ = ("_loop", "_previous")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> None:
        self._previous = events._get_running_loop()
        events._set_running_loop(self._loop)

    def __exit__(self, *exc: object) -> None:
        events._set_running_loop(self._previous)


def _describe(exc: BaseException) -> str:
    """``Type: message``, even when the exception's ``__str__`` is broken (user code)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - diagnostics must not fail
        return type(exc).__name__


def _raised_at(exc: BaseException) -> str:
    """`` (at file:line in function)`` of the innermost frame that raised ``exc``."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f" (at {code.co_filename}:{tb.tb_lineno} in {code.co_name})"


def is_foreign_future_error(exc: BaseException) -> bool:
    """Whether ``exc`` is asyncio's error for a task that awaited a future of another loop.

    Orchestration code that awaits real I/O (an ``aiohttp`` call, a queue of the
    application's loop) gets this from asyncio. asyncio gives it no type of its
    own, so this is the one place that recognises it by its text;
    tests/test_asyncio_private_api.py fails loudly if asyncio's wording changes.
    """
    return isinstance(exc, RuntimeError) and "attached to a different loop" in str(exc)


class _Ready(NamedTuple):
    """A scheduled callback: run in ``context`` unless ``handle`` (what the caller got) was cancelled."""

    handle: asyncio.Handle
    callback: Callable[..., object]
    args: tuple[Any, ...]
    context: contextvars.Context


class TimerSource(Protocol):
    """What the loop needs from the orchestration: durable time and timers."""

    def now_seconds(self) -> float: ...

    def durable_timer_at(self, when: float) -> asyncio.Future[Any]: ...

    def on_task_done(self, task: asyncio.Future[Any]) -> None: ...

    def log_fields(self) -> dict[str, Any]:
        """Structured log fields naming the instance (for errors the loop reports)."""
        ...


class _DurableTimerHandle(asyncio.TimerHandle):
    """A ``call_at`` handle backed by a durable timer future."""

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...],
                 loop: OrchestrationLoop, context: contextvars.Context | None) -> None:
        super().__init__(when, callback, args, loop, context=context)
        self._timer_future: asyncio.Future[Any] | None = None

    def cancel(self) -> None:
        if self._timer_future is not None and not self._timer_future.done():
            self._timer_future.cancel()
        super().cancel()


class OrchestrationLoop(asyncio.AbstractEventLoop):
    """A single-threaded, I/O-free event loop with durable timers.

    Example (what the replay engine does)::

        loop = OrchestrationLoop(timers)
        task = loop.create_task(orchestration(ctx, "input"))
        loop.run_ready()          # runs until the code awaits durable work
    """

    def __init__(self, timers: TimerSource) -> None:
        self._timers = timers
        self._ready: collections.deque[_Ready] = collections.deque()
        self._closed = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._exceptions: list[BaseException] = []

    # -- driving -----------------------------------------------------------------

    def run_ready(self) -> None:
        """Run callbacks until none is ready (the code waits on durable work)."""
        steps = steps_of_this_thread()  # the turn watchdog's view of progress (steps.py)
        with running_in_this_thread(self):
            ready = self._ready
            while ready:
                item = ready.popleft()
                if not item.handle.cancelled():
                    steps.count += 1
                    if steps.deadline and time.monotonic() > steps.deadline:
                        raise TurnPreempted  # on the event loop past its budget: redone on the turn thread
                    self._run(item)

    def _run(self, item: _Ready) -> None:
        """Run one callback; an error is reported to the exception handler, as asyncio's loops do."""
        try:
            item.context.run(item.callback, *item.args)
        except (SystemExit, KeyboardInterrupt, TurnInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - reported, like asyncio.Handle does
            self.call_exception_handler({"message": f"Exception in callback {item.callback!r}",
                                         "exception": exc, "handle": item.handle})

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks created on this loop that have not finished."""
        self._tasks = [t for t in self._tasks if not t.done()]
        return list(self._tasks)

    def take_exceptions(self) -> list[BaseException]:
        """Errors that escaped callbacks since the last call (reported instead of crashing the runtime)."""
        taken, self._exceptions = self._exceptions, []
        return taken

    # -- scheduling --------------------------------------------------------------

    def call_soon(self, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        self._check_open()
        run_in = context if context is not None else contextvars.copy_context()
        handle = asyncio.Handle(callback, args, self, context=run_in)
        self._ready.append(_Ready(handle, callback, args, run_in))
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                   context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        self._check_open()
        run_in = context if context is not None else contextvars.copy_context()
        handle = _DurableTimerHandle(when, callback, args, self, run_in)
        timer = self._timers.durable_timer_at(when)
        handle._timer_future = timer
        item = _Ready(handle, callback, args, run_in)

        def _fire(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and not handle.cancelled():
                self._run(item)

        timer.add_done_callback(_fire)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        # Called by asyncio.TimerHandle.cancel(); the durable timer future was cancelled by the handle itself.
        pass

    def time(self) -> float:
        """Orchestration time in seconds since the epoch (deterministic)."""
        return self._timers.now_seconds()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Coroutine[Any, Any, _T] | Any, *, name: str | None = None,
                    context: contextvars.Context | None = None) -> asyncio.Task[_T]:
        self._check_open()
        task: asyncio.Task[_T] = asyncio.Task(coro, loop=self, name=name, context=context)
        task.add_done_callback(self._timers.on_task_done)  # completion order decides select winners
        self._tasks.append(task)
        return task

    def task_context(self, ctx: OrchestrationContext) -> contextvars.Context:
        """The ``contextvars.Context`` for an orchestration's main task: ``orchestration_context()`` is ``ctx``.

        Tasks the orchestration creates copy it, so they see the same context.
        """
        return current.context_running(ctx)

    # -- state -------------------------------------------------------------------

    def is_running(self) -> bool:
        try:
            return asyncio.get_running_loop() is self
        except RuntimeError:
            return False

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this orchestration execution has ended")

    # -- errors ------------------------------------------------------------------

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Errors asyncio reports, told apart by the keys of ``context`` (never by its text).

        * ``handle`` (from :meth:`_run`): a callback raised. Kept for the engine,
          which decides whether it is control flow or orchestration code's error.
        * ``exception`` without a handle: a background task failed and was never
          awaited (reported when it is garbage-collected, on any thread): logged
          at WARNING with the instance, never silent.
        * neither: a task destroyed while pending, which is how an ended or evicted
          execution lets go of its coroutines.
        """
        exc = context.get("exception")
        if "handle" in context and isinstance(exc, BaseException):
            self._exceptions.append(exc)
        elif isinstance(exc, Exception):
            # Often called from a garbage collection, maybe in the middle of another
            # thread's compile(): no traceback formatting here (in 3.11 it parses source
            # with ast, and a nested AST build fails with "AST constructor recursion depth
            # mismatch"); the line the error came from is enough to find it.
            fields = self._timers.log_fields()
            _log.warning("instance %r: a task of the orchestration failed and nobody awaited it: %s%s",
                         fields.get("instance_id"), _describe(exc), _raised_at(exc), extra=fields)
        elif isinstance(exc, BaseException):
            pass  # the engine's own unwinding (an aborted replay, continue-as-new): not an error
        else:
            _log.debug("orchestration loop: %s", context.get("message", ""))

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def get_exception_handler(self) -> None:
        return None

    def set_exception_handler(self, handler: Any) -> None:
        raise NonDeterministicOperationError("loop.set_exception_handler()")

    def get_task_factory(self) -> None:
        return None

    def set_task_factory(self, factory: Any) -> None:
        raise NonDeterministicOperationError("loop.set_task_factory()")

    # -- everything that needs the outside world ---------------------------------

    def _forbidden(name: str) -> Any:  # type: ignore[misc]
        def method(self: OrchestrationLoop, *args: Any, **kwargs: Any) -> Any:
            raise NonDeterministicOperationError(f"loop.{name}() (real I/O, threads or signals)")

        method.__name__ = name
        return method

    for _name in (
        "run_forever", "run_until_complete", "stop", "shutdown_asyncgens",
        "shutdown_default_executor", "call_soon_threadsafe", "run_in_executor",
        "set_default_executor", "getaddrinfo", "getnameinfo", "create_connection",
        "create_server", "sendfile", "start_tls", "create_unix_connection",
        "create_unix_server", "connect_accepted_socket", "create_datagram_endpoint",
        "connect_read_pipe", "connect_write_pipe", "subprocess_shell", "subprocess_exec",
        "add_reader", "remove_reader", "add_writer", "remove_writer", "sock_recv",
        "sock_recv_into", "sock_recvfrom", "sock_recvfrom_into", "sock_sendall",
        "sock_sendto", "sock_connect", "sock_accept", "sock_sendfile",
        "add_signal_handler", "remove_signal_handler",
    ):
        locals()[_name] = _forbidden(_name)
    del _name, _forbidden
