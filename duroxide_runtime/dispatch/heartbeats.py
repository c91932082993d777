"""Activity heartbeats: from ``activity_context().heartbeat(...)`` to the store, batched and rate-limited.

A running call gets a :class:`CallBeats` (the ``HeartbeatSink`` of its
``ActivityContext``). ``beat`` may be called from the event loop (``async def``
activities) or from a worker thread (plain ``def`` ones): it only notes the
latest details under a lock and wakes the writer, so it never blocks and
costs no store round trip. One writer task per worker writes every call that
has something new in one ``record_heartbeats`` call: the first beat of a call
at once, later ones at most every ``RuntimeOptions.heartbeat_interval`` (a
third of the call's ``heartbeat_timeout`` if that is shorter), so a call that
beats in a tight loop costs one write per interval.

A call with a ``heartbeat_timeout`` holds its lease only through its beats:
each write extends the lease to now + the timeout, and a start beat, written
before the activity runs, sets the lease to the timeout and records that the
attempt started (so a later delivery of the same attempt knows it was lost).
A write the store refuses (lease lost, call cancelled, instance ended) cancels
the call, as a failed lease renewal does.

Example::

    writer = HeartbeatWriter(store, clock, options, observer, on_lost=cancel_call)
    beats = writer.open(lease, actx)          # actx.heartbeat(...) now reaches the store
    ...                                       # the activity runs
    await writer.flush(beats)                 # before a failed attempt's result is recorded
    writer.close(beats)
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable

from ..activity import ActivityContext
from ..clock import Clock
from ..engine.output import LIVE_STATUSES
from ..errors import PayloadTooLargeError
from ..lograte import background_warnings
from ..observe import ActivityHeartbeat, RuntimeObserver
from ..options import RuntimeOptions
from ..providers.base import CallKey, HeartbeatWrite, Provider, WorkLease

__all__ = ["CallBeats", "HeartbeatWriter"]

_log = logging.getLogger("duroxide.worker")


class CallBeats:
    """The heartbeat state of one running call; ``beat`` is its ``HeartbeatSink`` (thread-safe)."""

    def __init__(self, writer: HeartbeatWriter, lease: WorkLease, actx: ActivityContext) -> None:
        self._writer = writer
        self.lease = lease
        self.actx = actx
        work = lease.work
        #: The row all attempts of the call share: keyed by its first attempt's event.
        self.key = CallKey(work.instance_id, work.execution_id, work.call_event_id)
        #: Seconds the lease lasts past a beat (``None``: the worker renews it by itself).
        self.lease_seconds = None if work.heartbeat_timeout_ms is None else work.heartbeat_timeout_ms / 1000
        interval = writer.options.heartbeat_interval
        self.interval = interval if self.lease_seconds is None else min(interval, self.lease_seconds / 3)
        #: The task running the call (cancelled when a beat finds the lease lost).
        self.task: asyncio.Task[None] | None = None
        # Guarded by the writer's lock (beats come from threads):
        self.pending: str | None = None
        self.next_write = -math.inf
        #: A row exists (or may) for this call: its success deletes it.
        self.recorded = False
        self.closed = False

    def beat(self, details: str | None) -> None:
        """Note ``details`` (``None``: only alive) for the next write; raises before noting anything
        if they exceed ``max_payload_bytes``."""
        limit = self._writer.options.max_payload_bytes
        if details is not None and len(details) * 4 > limit and len(details.encode()) > limit:
            raise PayloadTooLargeError(
                f"heartbeat details of activity {self.actx.name!r} are {len(details.encode())} bytes encoded, over "
                f"max_payload_bytes={limit}; nothing was recorded",
                fix="record a small progress marker (a counter, a cursor, a key) rather than the data itself, "
                    "or raise RuntimeOptions.max_payload_bytes")
        if details is None and self.lease_seconds is None:
            return  # the worker renews this call's lease by itself: an "alive" beat changes nothing
        self._writer._note(self, details)


class HeartbeatWriter:
    """Writes the heartbeats of a worker's running calls; see the module docstring."""

    def __init__(self, store: Provider, clock: Clock, options: RuntimeOptions, observer: RuntimeObserver,
                 on_lost: Callable[[CallBeats], None]) -> None:
        self.store = store
        self.clock = clock
        self.options = options
        self.observer = observer
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._dirty: set[CallBeats] = set()
        #: One write at a time: a flush never overtakes an older write of the same call.
        self._writing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def open(self, lease: WorkLease, actx: ActivityContext) -> CallBeats:
        """Connect ``actx.heartbeat`` of a call that starts now to this writer (call on the event loop)."""
        beats = CallBeats(self, lease, actx)
        actx._sink = beats
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="duroxide-heartbeats")
        return beats

    def close(self, beats: CallBeats) -> None:
        """The call ended: later ``heartbeat()`` calls raise, and nothing more of it is written."""
        beats.actx._sink = None
        with self._lock:
            beats.closed = True
            beats.pending = None
            self._dirty.discard(beats)

    async def start(self, beats: CallBeats) -> bool | None:
        """The start beat of a call with a heartbeat timeout: lease set to the timeout, attempt marked started.

        ``True`` if written, ``False`` if the store refused it (the lease is lost or the call
        cancelled), ``None`` if the store could not be reached (the call runs anyway).
        """
        async with self._writing:
            return await self._write([(beats, None)], start=True)

    async def flush(self, beats: CallBeats) -> None:
        """Write ``beats``' noted details now, whatever the rate limit (before a failed attempt's
        result is recorded, or its lease given back: the next attempt must find them)."""
        async with self._writing:
            with self._lock:
                details = beats.pending
                if beats not in self._dirty or details is None:
                    return
                beats.pending = None
                self._dirty.discard(beats)
            await self._write([(beats, details)])

    async def finish(self, beats: CallBeats) -> None:
        """The call succeeded: close it, and wait for a write of it in flight, so that
        ``beats.recorded`` is final (the result then deletes the row it may have made)."""
        self.close(beats)
        if self._writing.locked():  # a write may hold this call: wait for it (nearly never)
            async with self._writing:
                pass

    async def stop(self) -> None:
        """Stop the writer task (the worker has no running calls left)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # -- internals ---------------------------------------------------------------------

    def _note(self, beats: CallBeats, details: str | None) -> None:
        with self._lock:
            if beats.closed:
                return
            if details is not None:
                beats.pending = details
            was_dirty = beats in self._dirty
            self._dirty.add(beats)
        if not was_dirty and self._loop is not None:
            try:
                # From the loop or a worker thread alike; the writer re-checks what is due.
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed: the process is ending, the lease will expire
                pass

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a beat noted after the look sets it again.
            self._wake.clear()
            now = self.clock.monotonic()
            async with self._writing:
                with self._lock:
                    due = [b for b in self._dirty if b.next_write <= now]
                    batch = []
                    for b in due:
                        self._dirty.discard(b)
                        batch.append((b, b.pending))
                        b.pending = None
                        b.next_write = now + b.interval
                if batch:
                    await self._write(batch)
                    continue
            with self._lock:
                later = min((b.next_write for b in self._dirty), default=None)
            if later is None:
                await self._wake.wait()  # idle: no deadline of the clock's (a test clock need not move)
            else:
                await self.clock.wait(self._wake, max(0.0, later - now))

    async def _write(self, batch: list[tuple[CallBeats, str | None]], *, start: bool = False) -> bool | None:
        """Write ``batch`` in one store call; the first beat's outcome (for :meth:`start`)."""
        writes = [HeartbeatWrite(b.lease.lock_token, b.key, b.lease.work.event_id, details, b.lease_seconds)
                  for b, details in batch]
        try:
            held = await self.store.record_heartbeats(writes, only_if_status_in=LIVE_STATUSES)
        except asyncio.CancelledError:
            self._requeue(batch)
            raise
        except Exception:  # noqa: BLE001 - store trouble: the beats are kept and written later
            background_warnings.warning(_log, "worker.heartbeats", "activity heartbeats could not be recorded "
                                        "(retrying)", exc_info=True)
            self._requeue(batch)
            return None
        for (b, details), ok in zip(batch, held):
            if ok:
                b.recorded = True
            if b.closed:
                continue  # the call ended meanwhile (its result removed the lease): nothing to tell
            w = b.lease.work
            self.observer.activity_heartbeat(ActivityHeartbeat(w.name, w.instance_id, w.execution_id, w.event_id,
                                                               w.attempt, details, ok))
            if not ok and not start:
                self._on_lost(b)
        return held[0] if held else None

    def _requeue(self, batch: list[tuple[CallBeats, str | None]]) -> None:
        """Put unwritten beats back, unless newer details were noted meanwhile."""
        with self._lock:
            for b, details in batch:
                if b.closed:
                    continue
                if b.pending is None:
                    b.pending = details
                self._dirty.add(b)
