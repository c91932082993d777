"""``Client``: start, observe and steer instances in any store.

A client needs only the store, so it works in processes that run no
runtime. Waiting is cheap: in the process that runs the instance a
completion wakes waiters at once; otherwise the wait re-reads the store at a
short, bounded interval.

Example::

    client = Client(store)
    await client.start_orchestration("inst-1", "Hello", "World")
    status = await client.wait_for_orchestration("inst-1", timedelta(seconds=10))
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import timedelta

from .engine.output import LIVE_STATUSES, TERMINAL_STATUSES
from .errors import InstanceNotFoundError, InstanceStillRunningError, InvalidInputError, PayloadTooLargeError
from .history import HistoryEvent
from . import local_runtimes
from .limits import (
    MAX_EXECUTION_ID, MAX_ID_CHARS, MAX_LIST_LIMIT, MAX_NAME_CHARS, MAX_REASON_CHARS, MAX_VERSION_CHARS,
    check_count, check_identifier, check_lookup_id, check_seconds, check_text,
)
from .messages import CancelRequest, ExternalEvent, StartOrchestration
from .options import RuntimeOptions
from .providers.base import InstanceRecord, Provider
from .status import InstanceInfo, OrchestrationStatus
from .tracecontext import current_traceparent
from .wake import wake_hub

__all__ = ["Client"]

_log = logging.getLogger("duroxide.client")
#: Upper bound on the re-read interval while waiting on a store another process writes.
_MAX_POLL = 0.25
#: Statuses ``list_instances(status=...)`` accepts.
_STATUSES = ("Pending", "Running", "Completed", "Failed")


class Client:
    """Client of one store. Payloads are strings, passed through untouched.

    Every argument is checked against :mod:`duroxide_runtime.limits` before the
    store is touched: a wrong type raises :class:`PayloadError`, a value no
    store can hold (NUL, lone surrogates, an over-long id, a count out of
    range) raises :class:`InvalidInputError` naming the argument; a NaN or
    negative duration raises :class:`ConfigurationError`, like every duration.

    ``check_names`` (default ``True``): while a runtime of this same store
    object runs in this process, ``start_orchestration`` refuses a name (or
    explicit version) none of them registered with
    :class:`UnknownOrchestrationError` ("did you mean ...?"), before anything
    is stored. ``False`` leaves such names to the runtimes, which back off
    until one knows them: for a process whose runtime runs only some of the
    orchestrations while others run elsewhere. Without a runtime of this store
    object in this process nothing is checked either way (see
    :mod:`duroxide_runtime.local_runtimes`).
    """

    def __init__(self, store: Provider, *, max_payload_bytes: int = RuntimeOptions.max_payload_bytes,
                 check_names: bool = True) -> None:
        self.store = store
        self.check_names = check_names
        #: Times waits (``wait_for_orchestration``): the store's clock, so a test clock drives both.
        self.clock = store.clock
        #: Shared with every runtime and client of this store in this process: a start wakes
        #: the dispatchers at once, a finished instance wakes wait_for_orchestration.
        self._wake = wake_hub(store)
        self._max_payload = max_payload_bytes

    async def start_orchestration(self, instance_id: str, name: str, input: str = "", *,
                                  version: str | None = None) -> None:
        """Create instance ``instance_id`` running orchestration ``name`` with ``input``.

        ``version`` pins a version (default: the runtime's version policy picks).
        Raises :class:`InstanceAlreadyExistsError` if the id is taken (nothing changes).
        An unregistered ``name`` (or ``version``) raises :class:`UnknownOrchestrationError`
        when a runtime of this store object runs in this process (see ``check_names``);
        otherwise the instance is created and the runtimes back off until one knows it,
        failing it after ``max_attempts``.
        """
        check_identifier(instance_id, "instance_id", MAX_ID_CHARS)
        check_identifier(name, "name", MAX_NAME_CHARS)
        if version is not None:
            check_identifier(version, "version", MAX_VERSION_CHARS)
        check_text(input, "input")
        self._check_size(input, "input")
        if self.check_names:
            refused = local_runtimes.refusal(self.store, name, version)
            if refused is not None:
                raise refused
        await self.store.create_instance(StartOrchestration(instance_id=instance_id, name=name,
                                                            version=version, input=input,
                                                            trace_context=current_traceparent()))
        self._wake.notify_orchestrator()

    async def raise_event(self, instance_id: str, name: str, data: str = "") -> bool:
        """Deliver external event ``name`` to a running instance.

        Returns ``True`` when delivered (kept until a wait consumes it) and ``False``
        when the instance has already finished (a no-op, logged). Raises
        :class:`InstanceNotFoundError` for an unknown id.
        """
        check_lookup_id(instance_id)
        check_identifier(name, "name", MAX_NAME_CHARS)
        check_text(data, "data")
        self._check_size(data, "event data")
        record = await self.store.send(ExternalEvent(instance_id=instance_id, name=name, data=data),
                                       only_if_status_in=LIVE_STATUSES)
        return self._delivered(record, instance_id, "raise_event")

    async def cancel_instance(self, instance_id: str, reason: str = "cancelled") -> bool:
        """Ask a running instance to end Failed with a cancellation error carrying ``reason``.

        Cascades to its sub-orchestrations and signals its running activities.
        Returns ``False`` (a no-op) if it already finished; raises
        :class:`InstanceNotFoundError` for an unknown id. Repeating it is harmless.
        """
        check_lookup_id(instance_id)
        check_text(reason, "reason", MAX_REASON_CHARS)
        record = await self.store.send(CancelRequest(instance_id=instance_id, reason=reason),
                                       only_if_status_in=LIVE_STATUSES)
        return self._delivered(record, instance_id, "cancel_instance")

    async def get_orchestration_status(self, instance_id: str) -> OrchestrationStatus[str]:
        """Current status (``NotFound`` for an unknown id)."""
        check_lookup_id(instance_id)
        return _status_of(await self.store.get_instance(instance_id))

    status = get_orchestration_status

    async def wait_for_orchestration(self, instance_id: str,
                                     timeout: timedelta | float = 30.0) -> OrchestrationStatus[str]:
        """Wait until the instance is Completed or Failed, or ``timeout`` passes.

        Returns the status at that moment: a terminal one, or ``Running``/``Pending``
        on timeout, or ``NotFound`` for an unknown id. ``timeout`` is a number of
        seconds or a ``timedelta`` from 0 up (``math.inf`` waits until the end);
        NaN and negative values raise :class:`ConfigurationError`.
        """
        check_lookup_id(instance_id)
        clock = self.clock
        deadline = clock.monotonic() + check_seconds(timeout, "timeout", maximum=math.inf, allow_infinite=True)
        poll = 0.005
        while True:
            status = await self.get_orchestration_status(instance_id)
            remaining = deadline - clock.monotonic()
            if status.is_terminal or isinstance(status, OrchestrationStatus.NotFound) or remaining <= 0:
                return status
            try:
                # The timeout is the clock's (a test clock decides when it passes); the
                # re-reads are real time: they catch a wake-up missed while the status was
                # being read, or a completion in another process, whatever the clock does.
                async with asyncio.timeout(poll):
                    await self._wake.wait_instance(instance_id, remaining)
            except TimeoutError:
                pass
            poll = min(_MAX_POLL, poll * 2)

    async def get_instance_info(self, instance_id: str) -> InstanceInfo:
        """Metadata of an instance; raises :class:`InstanceNotFoundError` if unknown."""
        check_lookup_id(instance_id)
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise InstanceNotFoundError(instance_id, "get_instance_info")
        return _info_of(record)

    async def read_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        """Events of the current execution (or of ``execution_id``); raises for an unknown id.

        An unreadable stored row raises :class:`CorruptHistoryError`.
        """
        check_lookup_id(instance_id)
        if execution_id is not None:
            check_count(execution_id, "execution_id", 1, MAX_EXECUTION_ID)
        if await self.store.get_instance(instance_id) is None:
            raise InstanceNotFoundError(instance_id, "read_history")
        return await self.store.read_history(instance_id, execution_id)

    async def list_executions(self, instance_id: str) -> list[int]:
        """Execution ids of an instance (more than one after continue-as-new)."""
        check_lookup_id(instance_id)
        return await self.store.list_executions(instance_id)

    async def list_instances(self, *, status: str | None = None, name: str | None = None,
                             limit: int = 1000) -> list[InstanceInfo]:
        """Instances, newest first, filtered by status and/or name; ``limit`` is 1 to 2**31-1."""
        if status is not None and status not in _STATUSES:
            raise InvalidInputError("status", f"is {repr(status)[:60]}, not one of {', '.join(_STATUSES)}",
                                    fix="pass None or one of " + ", ".join(_STATUSES))
        if name is not None:
            check_lookup_id(name, "name")
        check_count(limit, "limit", 1, MAX_LIST_LIMIT)
        return [_info_of(r) for r in await self.store.list_instances(status=status, name=name, limit=limit)]

    async def purge(self, instance_id: str, *, force: bool = False) -> list[str]:
        """Delete a finished instance, its children, history and messages; returns the ids deleted.

        A running instance is refused with :class:`InstanceStillRunningError` unless ``force``;
        an unknown id raises :class:`InstanceNotFoundError`, like every other call naming one.
        """
        check_lookup_id(instance_id)
        if not isinstance(force, bool):
            raise InvalidInputError("force", f"must be True or False, got {type(force).__name__}",
                                    fix="pass force=True or force=False")
        deleted = await self.store.purge_instance(
            instance_id, only_if_status_in=None if force else TERMINAL_STATUSES)
        if deleted is None:
            raise InstanceStillRunningError(instance_id)
        if not deleted:
            raise InstanceNotFoundError(instance_id, "purge")
        for iid in deleted:
            self._wake.notify_instance(iid)
        return deleted

    def _check_size(self, value: str, what: str) -> None:
        size = len(value.encode())
        if size > self._max_payload:
            raise PayloadTooLargeError(f"{what} is {size} bytes, over the limit of {self._max_payload}",
                                       fix="store large data elsewhere and pass a reference")

    def _delivered(self, record: InstanceRecord | None, instance_id: str, operation: str) -> bool:
        if record is None:
            raise InstanceNotFoundError(instance_id, operation)
        if record.status not in LIVE_STATUSES:
            _log.info("%s: instance %r already %s; nothing was done", operation, instance_id, record.status)
            return False
        self._wake.notify_orchestrator()
        return True


def _status_of(record: InstanceRecord | None) -> OrchestrationStatus[str]:
    if record is None:
        return OrchestrationStatus.NotFound()
    if record.status == "Completed":
        return OrchestrationStatus.Completed(output=record.output or "", custom_status=record.custom_status)
    if record.status == "Failed":
        text = record.error.to_text() if record.error else "unknown error"
        return OrchestrationStatus.Failed(error=text, details=record.error, custom_status=record.custom_status)
    if record.status == "Pending":
        return OrchestrationStatus.Pending(custom_status=record.custom_status)
    return OrchestrationStatus.Running(custom_status=record.custom_status)


def _info_of(r: InstanceRecord) -> InstanceInfo:
    return InstanceInfo(r.instance_id, r.name, r.version, r.status, r.execution_id, r.output,
                        r.error.to_text() if r.error else None, r.custom_status, r.created_at_ms,
                        r.updated_at_ms, r.parent_instance_id)
