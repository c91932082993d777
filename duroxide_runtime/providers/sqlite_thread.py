"""``ConnectionThread``: one daemon thread that owns one ``sqlite3`` connection and runs callables on it.

Why a thread of its own: SQLite calls block, so they must not run on the event
loop; and a store operation is a whole transaction written as a plain function
of the connection, so it should cost one hop to the thread and back however
many statements it runs. aiosqlite's public API hops once per statement and
offers no way to run a whole callable, hence this small module over the
standard library alone.

What it promises:

* callables run one at a time, in submission order, on the thread that opened
  the connection (so ``sqlite3``'s same-thread check stays on);
* a callable's exception goes to its caller and never ends the thread;
* a submitted callable always runs to completion: cancelling the awaiting
  coroutine only stops the waiting, so the connection is never left halfway
  through a transaction; a callable that returns (or raises) with a
  transaction still open has it rolled back;
* at most ``max_pending`` callables wait in the queue; further callers wait
  (asynchronously) for room;
* ``close()`` runs what was queued, closes the connection, ends the thread and
  is idempotent; a forgotten ``close()`` never keeps the process alive (daemon
  thread), and a collected ``ConnectionThread`` stops its thread.

Group commit (:meth:`ConnectionThread.write`): a write callable runs inside a
transaction the thread opens. Writes queued together share one transaction and
so one fsync; each caller is answered only after that commit (one wake-up of
its event loop per group). A callable that raises fails alone: the group is
rolled back and its writes run again one transaction each (callables must be
safe to run again after a rollback: they only touch the database). A commit that fails (a full disk) fails every write of the group with
its own error, and nothing committed before is touched. ``durable=True``
writes commit with ``synchronous_sync`` (``FULL``: the write-ahead log is
fsynced at the commit); the others (locks, leases) with ``NORMAL``, which in
WAL mode costs no fsync and, lost on power loss, only lets a lease lapse. A
caller waits at most ``timeout`` seconds and is then told whether its write
could still commit (:class:`~duroxide_runtime.errors.StoreTimeoutError`).

Example::

    db = await ConnectionThread.open(lambda: sqlite3.connect("app.db", isolation_level=None))
    count = await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0])
    await db.close()
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError, StoreError, StoreTimeoutError

__all__ = ["ConnectionThread"]

_T = TypeVar("_T")


#: How many queued writes one group commit takes at most (bounds one transaction's size).
MAX_GROUP = 256
#: Seconds a group may wait for one more write when writes queued up while the last group
#: ran (under load): a caller that group answered and that writes again at once (a loop of
#: one-by-one starts) then shares this commit instead of waiting a whole group for the next.
#: Measured with benchmarks/run.py W2 (SQLite, 2 cores): +10-15 %; W1 (no queue) unchanged.
LINGER = 0.0003


@dataclass(eq=False, slots=True)
class _Job(Generic[_T]):
    """One callable for the thread, and where its outcome goes (nowhere for a finalizer's stop)."""

    fn: Callable[[sqlite3.Connection], _T] | None
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[_T] | None
    stop: bool = False
    #: A write: runs in a group transaction the thread opens (see write()).
    write: bool = False
    durable: bool = False
    #: Set under the channel's lock: the thread claimed it (it runs), or its caller gave up first (it never runs).
    started: bool = False
    withdrawn: bool = False


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    """On the caller's loop: hand over the outcome unless the caller stopped waiting (cancelled)."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], object, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        _settle(future, result, error)


def _deliver_group(group: list[_Job[Any]], results: list[tuple[object, BaseException | None]]) -> None:
    """From the thread: answer a committed group with one wake-up per event loop, not one per write."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object, BaseException | None]]] = {}
    for job, (result, error) in zip(group, results):
        if job.future is None or job.loop is None:
            continue
        if isinstance(error, StopIteration):
            error = RuntimeError(f"the store operation raised StopIteration: {error!r}")
        by_loop.setdefault(job.loop, []).append((job.future, result, error))
    for loop, outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, outcomes)
        except RuntimeError:
            pass  # that event loop is closed: nobody waits for these outcomes any more


def _deliver(job: _Job[Any], result: object, error: BaseException | None) -> None:
    """From the thread: schedule :func:`_settle` on the caller's loop."""
    if job.future is None or job.loop is None:
        return
    if isinstance(error, StopIteration):
        # asyncio futures refuse StopIteration (it would end the awaiting coroutine silently).
        error = RuntimeError(f"the store operation raised StopIteration: {error!r}")
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:
        pass  # the caller's event loop is closed: nobody waits for this outcome any more


def _closed_error(name: str) -> StoreError:
    return StoreError(f"the SQLite connection ({name}) is closed",
                      fix="do not use a store after close(); open a new one (e.g. SqliteProvider.new(url))")


class _Channel:
    """The job queue between the event loop and the thread, bounded by a count of waiting jobs.

    A stop job is always accepted, so ``close()`` never waits for room.
    """

    def __init__(self, max_pending: int) -> None:
        self._jobs: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._max = max_pending
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def offer(self, job: _Job[Any]) -> bool:
        """Queue ``job`` if there is room (always for a stop job); ``False`` if the queue is full."""
        with self._lock:
            if self._pending >= self._max and not job.stop:
                return False
            self._pending += 1
            self._jobs.put(job)  # under the lock: queue order is admission order
        return True

    def wait_for_room(self, loop: asyncio.AbstractEventLoop, room: asyncio.Future[None]) -> bool:
        """Register ``room`` to be woken at the next take; ``False`` (not registered) if there is room now."""
        with self._lock:
            if self._pending < self._max:
                return False
            self._room_waiters.append((loop, room))
            return True

    def take(self, block: bool = True, timeout: float | None = None) -> _Job[Any] | None:
        """On the thread: the next job (``None`` if ``block`` is false and none is queued, or none
        came within ``timeout``), claimed as started unless its caller withdrew it; wakes every
        caller that waits for room."""
        if not block and not self._pending:
            return None  # the common case when gathering a group, without raising queue.Empty
        try:
            job = self._jobs.get(block, timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._pending -= 1
            job.started = not job.withdrawn
            if not self._room_waiters:
                return job
            waiters, self._room_waiters = self._room_waiters, []
        # All of them, not one: a woken waiter may have been cancelled meanwhile, and a lost
        # wake-up would strand the others; they race for the room and the losers wait again.
        for loop, room in waiters:
            try:
                loop.call_soon_threadsafe(_settle, room, None, None)
            except RuntimeError:
                pass  # that caller's loop is closed
        return job

    def pending(self) -> int:
        """Jobs waiting to be taken."""
        return self._pending

    def withdraw(self, job: _Job[Any]) -> bool:
        """From the caller: make sure ``job`` never runs; ``False`` if the thread already started it."""
        with self._lock:
            if job.started:
                return False
            job.withdrawn = True
            return True

    def leftovers(self) -> list[_Job[Any]]:
        """On the thread after its stop job: the jobs still queued (callers racing close() from elsewhere)."""
        jobs = []
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                return jobs


def _serve(channel: _Channel, connect: Callable[[], sqlite3.Connection], opened: _Job[None], name: str,
           durable_sync: str) -> None:
    """The thread's body: open the connection, run jobs until a stop job, close it."""
    conn: sqlite3.Connection | None = None
    try:
        conn = connect()
    except BaseException as exc:  # noqa: BLE001 - the opener gets whatever connecting raised
        _deliver(opened, None, exc)
    else:
        _deliver(opened, None, None)
    sync: list[str | None] = [None]  # the connection's synchronous setting, set lazily
    carried: _Job[Any] | None = None  # taken while gathering a group, run next
    answered = False  # the last job was a group of writes that ran while more writes queued up
    while True:
        job = carried or channel.take()
        carried = None
        assert job is not None
        if job.withdrawn:
            continue  # its caller gave up before it ran, and was told so
        if job.write and conn is not None:
            group = [job]
            lingered = not answered
            while len(group) < MAX_GROUP:
                more = channel.take(block=False)
                if more is None and not lingered:
                    lingered = True  # see LINGER
                    more = channel.take(timeout=LINGER)
                if more is None:
                    break
                if more.withdrawn:
                    continue
                if not more.write:
                    carried = more
                    break
                group.append(more)
            _commit_group(conn, group, durable_sync, sync)
            answered = channel.pending() > 0  # under load: more writes waited while this group ran
            continue
        answered = False
        if job.stop:
            error: BaseException | None = None
            try:
                if conn is not None:
                    conn.close()
            except BaseException as exc:  # noqa: BLE001 - the closer gets it; the thread ends anyway
                error = exc
            for late in channel.leftovers():
                _deliver(late, None, _closed_error(name))
            _deliver(job, None, error)
            return
        if conn is None or job.fn is None:
            _deliver(job, None, _closed_error(name))  # opening failed: answer until stopped
            continue
        result: object = None
        error = None
        try:
            result = job.fn(conn)
        except BaseException as exc:  # noqa: BLE001 - the caller's error, not the thread's
            error = exc
        _deliver(job, result, _end_open_transaction(conn, error))


def _commit_group(conn: sqlite3.Connection, group: list[_Job[Any]], durable_sync: str,
                  sync: list[str | None]) -> None:
    """Run ``group``'s write callables in one transaction; answer each after COMMIT.

    Writes nearly never fail, so the group runs without a savepoint per write (two
    statements each). When one raises, the whole transaction is rolled back and the
    writes are run again one transaction each: the failing one gets its error alone
    and the others commit, as if each had had its own savepoint.
    """
    wanted = durable_sync if any(j.durable for j in group) else "NORMAL"
    outcomes: list[tuple[object, BaseException | None]] = []
    try:
        if sync[0] != wanted:
            conn.execute(f"PRAGMA synchronous={wanted}")
            sync[0] = wanted
        conn.execute("BEGIN IMMEDIATE")
    except BaseException as exc:  # noqa: BLE001 - busy or broken: each caller decides (busy is retried)
        _fail_group(group, exc)
        return
    for job in group:
        assert job.fn is not None
        try:
            outcomes.append((job.fn(conn), None))
        except BaseException as exc:  # noqa: BLE001 - this caller's error; the others go on
            _rollback(conn)
            if len(group) == 1 or not _is_own_error(exc):
                # Alone, or SQLite failed the transaction itself (a full disk, an I/O
                # error): every write of the group gets this error.
                _fail_group(group, exc)
            else:
                for one in group:
                    _commit_group(conn, [one], durable_sync, sync)
            return
    try:
        conn.execute("COMMIT")
    except BaseException as exc:  # noqa: BLE001 - nothing of this group committed
        _rollback(conn)
        _fail_group(group, exc)
        return
    _deliver_group(group, outcomes)


def _is_own_error(exc: BaseException) -> bool:
    """Whether a write's error is its own (its data, its code), not the database's (busy, disk, I/O)."""
    if isinstance(exc, sqlite3.OperationalError):
        return False  # locked, busy, disk full, I/O error: the transaction is in doubt for all
    return not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError)


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed group's transaction, if SQLite has not already."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is broken: the next BEGIN reports it to its callers


def _fail_group(group: list[_Job[Any]], cause: BaseException) -> None:
    """Every write of a group whose transaction was lost is answered with the cause.

    The store turns it into an error of each caller's own (SqliteProvider wraps it in a
    fresh ``StoreError``, or retries it when the database was only busy).
    """
    _deliver_group(group, [(None, cause)] * len(group))


def _end_open_transaction(conn: sqlite3.Connection, error: BaseException | None) -> BaseException | None:
    """Roll back a transaction a callable left open, so the next callable starts clean.

    Store callables commit or roll back themselves; one that did not (a failed COMMIT,
    a bug) would otherwise make every later ``BEGIN`` fail.
    """
    try:
        if not conn.in_transaction:
            return error
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return error if error is not None else exc
    if error is not None:
        return error
    return StoreError("a store operation returned with its SQLite transaction still open; it was rolled back",
                      fix="this is a bug in the store code: report it with the traceback")


def _stop_quietly(channel: _Channel) -> None:
    """Finalizer of a collected, never-closed ConnectionThread: let its thread close the connection and end."""
    channel.offer(_Job(None, None, None, stop=True))


class _Deadlines:
    """The bounds of the writes waiting on one event loop, kept with one timer, not one per write.

    A timer per write cost a heap push and a cancel on every store call; here a write
    costs a dict entry, and the one timer is moved only when a write's deadline comes
    before it. Each write still expires exactly at its deadline.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: dict[_Job[Any], tuple[float, Callable[[], None]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, job: _Job[Any], deadline: float, expire: Callable[[], None]) -> None:
        self._waiting[job] = (deadline, expire)
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._fire)

    def discard(self, job: _Job[Any]) -> None:
        self._waiting.pop(job, None)

    def _fire(self) -> None:
        self._timer = None
        now = self.loop.time()
        due = [(job, expire) for job, (deadline, expire) in self._waiting.items() if deadline <= now]
        for job, expire in due:
            del self._waiting[job]
            expire()
        if self._waiting:
            self._timer = self.loop.call_at(min(d for d, _ in self._waiting.values()), self._fire)


class ConnectionThread:
    """A ``sqlite3`` connection on a daemon thread of its own; ``await run(fn)`` runs ``fn(conn)`` there.

    Open it with :meth:`open`, which runs ``connect`` on the new thread.

    Example::

        db = await ConnectionThread.open(lambda: sqlite3.connect("app.db", isolation_level=None))

        def add(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(v) VALUES ('x')")
            conn.execute("COMMIT")
            return conn.total_changes

        changes = await db.run(add)       # one hop for the whole transaction
        await db.close()
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, name: str = "duroxide-sqlite",
                 max_pending: int = 1024, durable_sync: str = "FULL") -> None:
        if durable_sync not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigurationError(f"durable_sync must be FULL, NORMAL or EXTRA, got {durable_sync!r}",
                                     fix="pass the PRAGMA synchronous level of durable writes, e.g. 'FULL'")
        self._durable_sync = durable_sync
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be at least 1, got {max_pending}",
                                     fix="pass the number of callables that may wait in the queue, e.g. 1024")
        self.name = name
        self._connect = connect
        self._channel = _Channel(max_pending)
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._deadlines: _Deadlines | None = None
        # Stop the thread when this object is collected without close(); not at interpreter
        # exit, where the daemon thread simply dies (SQLite's journal makes that safe).
        self._finalizer = weakref.finalize(self, _stop_quietly, self._channel)
        self._finalizer.atexit = False

    @classmethod
    async def open(cls, connect: Callable[[], sqlite3.Connection], *, name: str = "duroxide-sqlite",
                   max_pending: int = 1024, durable_sync: str = "FULL") -> ConnectionThread:
        """Start the thread and open the connection on it; raises what ``connect`` raised."""
        db = cls(connect, name=name, max_pending=max_pending, durable_sync=durable_sync)
        await db._start()
        return db

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        opened: _Job[None] = _Job(None, loop, loop.create_future())
        self._thread = threading.Thread(target=_serve, args=(self._channel, self._connect, opened, self.name, self._durable_sync),
                                        name=self.name, daemon=True)
        self._thread.start()
        assert opened.future is not None
        try:
            await opened.future
        except BaseException:
            # Failed or cancelled: nobody will hold this object, so stop the thread now
            # (it answers nothing but the stop once opening failed).
            self._closed = True
            self._finalizer()
            raise

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` was called (or opening failed)."""
        return self._closed

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` on the thread and return its result (or raise its exception).

        Cancelling the caller does not stop ``fn`` once it is queued: it runs to completion
        and its outcome is dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        await self._submit(_Job(fn, loop, future))
        return await future

    async def write(self, fn: Callable[[sqlite3.Connection], _T], *, durable: bool, what: str,
                    timeout: float) -> _T:
        """Run ``fn(conn)`` inside a transaction shared with the writes queued beside it (group commit).

        ``fn`` must not begin or end transactions (savepoints are fine), and must be
        safe to run again after a rollback (it only touches the database): if a write
        of its group raises, the group is rolled back and each write is run again in a
        transaction of its own. Its result is returned once its transaction committed;
        if ``fn`` raised, the error is raised here, and the other writes are unaffected.
        ``durable`` writes are committed with the thread's ``durable_sync`` level.
        Waits at most ``timeout`` seconds, then raises
        :class:`~duroxide_runtime.errors.StoreTimeoutError` naming ``what`` and saying
        whether the write may still commit.

        Example::

            await db.write(lambda conn: conn.execute("INSERT INTO t(v) VALUES (1)"), durable=True,
                           what="an insert", timeout=60)
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        job = _Job(fn, loop, future, write=True, durable=durable)
        channel = self._channel

        def expire() -> None:
            # Answer the caller now; the thread's late outcome finds the future done and is dropped.
            if not future.done():
                committed = False if channel.withdraw(job) else None
                future.set_exception(StoreTimeoutError(what, timeout, committed))

        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:  # a store is nearly always used from one loop
            deadlines = self._deadlines = _Deadlines(loop)
        deadlines.add(job, loop.time() + timeout, expire)
        try:
            await self._submit(job)
            return await future
        finally:
            deadlines.discard(job)

    async def _submit(self, job: _Job[Any]) -> None:
        """Queue ``job``, waiting (asynchronously) for room when the queue is full."""
        if self._closed:
            raise _closed_error(self.name)
        assert job.loop is not None
        while not self._channel.offer(job):
            room: asyncio.Future[None] = job.loop.create_future()
            if self._channel.wait_for_room(job.loop, room):
                await room
            if self._closed:
                raise _closed_error(self.name)

    async def close(self) -> None:
        """Run the callables already queued, close the connection and end the thread; idempotent."""
        if self._stopped is None:
            self._closed = True
            if self._thread is None or not self._finalizer.alive:
                return  # never started, or told to stop when opening failed
            self._finalizer.detach()
            loop = asyncio.get_running_loop()
            self._stopped = loop.create_future()
            self._channel.offer(_Job(None, loop, self._stopped, stop=True))
        # shield: a cancelled close() must not cancel the future another close() awaits
        await asyncio.shield(self._stopped)
        assert self._thread is not None
        self._thread.join()  # it has delivered the stop's outcome and is returning
