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
import contextvars
import logging
from asyncio import events
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from .errors import NonDeterministicOperationError

_T = TypeVar("_T")
_log = logging.getLogger("duroxide.loop")


class TimerSource(Protocol):
    """What the loop needs from the orchestration: durable time and timers."""

    def now_seconds(self) -> float: ...

    def durable_timer_at(self, when: float) -> asyncio.Future[Any]: ...

    def on_task_done(self, task: asyncio.Future[Any]) -> None: ...


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
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._closed = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._exception: BaseException | None = None

    # -- driving -----------------------------------------------------------------

    def run_ready(self) -> None:
        """Run callbacks until none is ready (the code waits on durable work)."""
        previous = events._get_running_loop()
        events._set_running_loop(self)
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            events._set_running_loop(previous)

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks created on this loop that have not finished."""
        self._tasks = [t for t in self._tasks if not t.done()]
        return list(self._tasks)

    def take_exception(self) -> BaseException | None:
        """An error that escaped a callback (reported instead of crashing the runtime)."""
        exc, self._exception = self._exception, None
        return exc

    # -- scheduling --------------------------------------------------------------

    def call_soon(self, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        self._check_open()
        handle = asyncio.Handle(callback, args, self, context=context)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                   context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        self._check_open()
        handle = _DurableTimerHandle(when, callback, args, self, context)
        timer = self._timers.durable_timer_at(when)
        handle._timer_future = timer

        def _fire(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and not handle._cancelled:
                handle._run()

        timer.add_done_callback(_fire)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # the durable timer future was cancelled by the handle itself

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

    # -- state -------------------------------------------------------------------

    def is_running(self) -> bool:
        return events._get_running_loop() is self

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
        exc = context.get("exception")
        message = context.get("message", "")
        if "destroyed but it is pending" in message or "never retrieved" in message:
            _log.debug("orchestration loop: %s", message)
            return
        if isinstance(exc, BaseException) and self._exception is None:
            self._exception = exc
        _log.error("orchestration loop: %s", message, exc_info=exc if isinstance(exc, BaseException) else None)

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
