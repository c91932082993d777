"""Typed errors of the runtime.

Every error a user can meet names its cause and the fix. Each carries a
stable ``code`` (an :class:`ErrorCode`, for logs, alerts and the troubleshooting
page) and a ``fix`` string, so ``str(err)`` reads as "what happened; how to fix
it". Tell errors apart by type or code, never by their text; every error pickles.

Two families matter for orchestration authors:

* :class:`DurableTaskFailed` and its subclasses are *application* errors.
  They reach orchestration code as exceptions and may be caught.
* Everything else (non-determinism, poison, corrupt history) is
  *infrastructure*: the runtime ends the instance or retries the turn;
  orchestration code never sees them.

Example::

    try:
        await ctx.schedule_activity("Charge", order_json)
    except ActivityFailed as err:
        ctx.trace("WARN", f"charge failed: {err.error_type}: {err.message}")
"""

from __future__ import annotations

__all__ = [
    "ErrorCode",
    "DuroxideError",
    "ConfigurationError",
    "PayloadError",
    "PayloadTooLargeError",
    "InvalidInputError",
    "InstanceAlreadyExistsError",
    "InstanceNotFoundError",
    "InstanceStillRunningError",
    "InstanceStateError",
    "UnknownOrchestrationError",
    "UnknownActivityError",
    "NonDeterminismError",
    "NonDeterministicOperationError",
    "CorruptHistoryError",
    "PoisonMessageError",
    "StoreError",
    "StoreTimeoutError",
    "DurableTaskFailed",
    "ActivityFailed",
    "SubOrchestrationFailed",
    "OrchestrationCancelled",
    "ActivityTimeoutError",
    "NonRetryableError",
    "OrchestrationStuckError",
    "PayloadDecodeError",
    "UpdateRejectedError",
    "UpdateTimeoutError",
    "UpdateAlreadyRepliedError",
    "UnknownQueueError",
    "InvalidScheduleError",
    "ScheduleNotFoundError",
    "ScheduleExistsError",
    "ErrorDetails",
]

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


@enum.unique
class ErrorCode(enum.StrEnum):
    """The stable code of each error class, as logged, documented and alerted on.

    A ``StrEnum``: a code equals its string (``ErrorCode.CONFIG == "CONFIG"``)
    and formats as it, so logs and alerts written against the strings keep working.

    Example::

        except DuroxideError as err:
            if err.code is ErrorCode.PAYLOAD_TOO_LARGE:
                ...
    """

    DUROXIDE = "DUROXIDE"
    CONFIG = "CONFIG"
    PAYLOAD = "PAYLOAD"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INVALID_INPUT = "INVALID_INPUT"
    INSTANCE_EXISTS = "INSTANCE_EXISTS"
    INSTANCE_NOT_FOUND = "INSTANCE_NOT_FOUND"
    INSTANCE_RUNNING = "INSTANCE_RUNNING"
    INSTANCE_STATE = "INSTANCE_STATE"
    UNKNOWN_ORCHESTRATION = "UNKNOWN_ORCHESTRATION"
    UNKNOWN_ACTIVITY = "UNKNOWN_ACTIVITY"
    NONDETERMINISM = "NONDETERMINISM"
    NONDETERMINISTIC_OPERATION = "NONDETERMINISTIC_OPERATION"
    STUCK = "STUCK"
    CORRUPT_HISTORY = "CORRUPT_HISTORY"
    POISON = "POISON"
    STORE = "STORE"
    STORE_TIMEOUT = "STORE_TIMEOUT"
    TASK_FAILED = "TASK_FAILED"
    ACTIVITY_FAILED = "ACTIVITY_FAILED"
    SUB_ORCHESTRATION_FAILED = "SUB_ORCHESTRATION_FAILED"
    ACTIVITY_TIMEOUT = "ACTIVITY_TIMEOUT"
    NON_RETRYABLE = "NON_RETRYABLE"
    CANCELLED = "CANCELLED"
    PAYLOAD_DECODE = "PAYLOAD_DECODE"
    UPDATE_REJECTED = "UPDATE_REJECTED"
    UPDATE_TIMEOUT = "UPDATE_TIMEOUT"
    UPDATE_ALREADY_REPLIED = "UPDATE_ALREADY_REPLIED"
    UNKNOWN_QUEUE = "UNKNOWN_QUEUE"
    INVALID_SCHEDULE = "INVALID_SCHEDULE"
    SCHEDULE_NOT_FOUND = "SCHEDULE_NOT_FOUND"
    SCHEDULE_EXISTS = "SCHEDULE_EXISTS"
    # Declared by duroxide_macros (decorators.py) and the command-line tool (cli.py).
    DURABLE_NOT_EXPANDED = "DURABLE_NOT_EXPANDED"
    ORCHESTRATION_FAILED = "ORCHESTRATION_FAILED"
    USAGE = "USAGE"
    NO_SUCH_DATABASE = "NO_SUCH_DATABASE"
    ABORTED = "ABORTED"
    # Declared by duroxide_runtime.testing.
    CLOCK_STALLED = "CLOCK_STALLED"


def _restore_error(cls: type[DuroxideError], args: tuple[Any, ...], state: Mapping[str, Any]) -> DuroxideError:
    """Rebuild a pickled or copied error from its ``args`` and attributes (see ``DuroxideError.__reduce__``)."""
    err = cls.__new__(cls, *args)  # BaseException.__new__ sets .args; __init__ is not run again
    err.__dict__.update(state)
    return err


class DuroxideError(Exception):
    """Base of every error raised by duroxide.

    Every error pickles and deep-copies to an equal error (same type, ``args``,
    ``message``, ``fix``, ``code`` and extra attributes), so it can cross a
    process boundary (multiprocessing, a pytest-xdist worker, a task queue).

    Example::

        except DuroxideError as err:
            log.error("%s (code %s)", err, err.code)
    """

    code: ClassVar[ErrorCode] = ErrorCode.DUROXIDE

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)

    def __reduce__(self) -> tuple[Callable[..., DuroxideError], tuple[type[Self], tuple[Any, ...], dict[str, Any]]]:
        # BaseException.__reduce__ calls cls(*self.args): that passes the formatted text to
        # constructors that take other arguments (an instance id, a name and a list, ...).
        # Every attribute an __init__ sets lives in __dict__ and args, so restore those
        # without calling __init__ again; this works for subclasses of any signature.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


class ConfigurationError(DuroxideError):
    """The runtime, a registry or a store was set up wrongly."""

    code = ErrorCode.CONFIG


class PayloadError(DuroxideError, TypeError):
    """A payload is not what the receiving side can take (wrong type, not encodable)."""

    code = ErrorCode.PAYLOAD


class PayloadTooLargeError(PayloadError, ValueError):
    """A payload or custom status exceeds its configured limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class InvalidInputError(PayloadError, ValueError):
    """A value is outside the limits every store can hold (see ``duroxide_runtime.limits``).

    Raised at the call site, before anything is stored: an id, name, version,
    reason or event name that is empty, too long or holds characters a store
    cannot keep (NUL, lone surrogates, control characters in identifiers), a
    payload with NUL or lone surrogates, a duration that is NaN or out of range.
    ``field`` names the argument.
    """

    code = ErrorCode.INVALID_INPUT

    def __init__(self, field: str, problem: str, *, fix: str) -> None:
        self.field = field
        super().__init__(f"{field} {problem}", fix=fix)


class InstanceAlreadyExistsError(DuroxideError):
    """``start_orchestration`` was given an instance id that is already used."""

    code = ErrorCode.INSTANCE_EXISTS

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"instance {instance_id!r} already exists; it was not started again",
            fix="pick a new instance id, start with if_exists='return_existing' (to use the instance there) "
            "or if_exists='replace' (to run a finished one afresh), or purge the old instance (client.purge)",
        )


class InstanceNotFoundError(DuroxideError, LookupError):
    """An operation named an instance id the store does not know."""

    code = ErrorCode.INSTANCE_NOT_FOUND

    def __init__(self, instance_id: str, operation: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"{operation}: no instance {instance_id!r} in this store",
            fix="check the instance id (client.list_instances() shows what exists) "
            "and that the client uses the same store as the runtime",
        )


class InstanceStillRunningError(DuroxideError):
    """Purge was asked for an instance that has not finished."""

    code = ErrorCode.INSTANCE_RUNNING

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"instance {instance_id!r} is still running and was not purged",
            fix="cancel it first (client.cancel_instance) or pass force=True",
        )


class InstanceStateError(DuroxideError):
    """An operation was asked of an instance in a state that does not allow it.

    ``operation`` is what was asked (``"suspend"``, ``"rewind"``, ...), ``status`` the
    instance's status when asked, ``why`` what is wrong with it.

    Example::

        try:
            await client.resume_instance("order-1")
        except InstanceStateError as err:
            print(err.status)          # "Running": it was not suspended
    """

    code = ErrorCode.INSTANCE_STATE

    def __init__(self, instance_id: str, operation: str, status: str, why: str, *, fix: str) -> None:
        self.instance_id = instance_id
        self.operation = operation
        self.status = status
        self.why = why
        super().__init__(f"cannot {operation} instance {instance_id!r}: {why}", fix=fix)


class UnknownOrchestrationError(DuroxideError):
    """No orchestration is registered under a name (or name and version).

    ``known`` are the registered names; ``versions`` the registered versions of
    ``name`` when the name is known and only the version is not (the message then
    lists those). For an unknown name the message suggests the closest registered
    one (``did you mean 'Hello'?``), also kept in ``suggestion``.

    Example::

        UnknownOrchestrationError("Helo", None, ["Hello", "Refund"])
        # no orchestration 'Helo' is registered in this runtime; did you mean 'Hello'? (registered: Hello, Refund)
    """

    code = ErrorCode.UNKNOWN_ORCHESTRATION

    def __init__(self, name: str, version: str | None, known: list[str], *,
                 versions: list[str] | None = None) -> None:
        import difflib

        self.name = name
        self.version = version
        what = f"{name!r}" if not version else f"{name!r} version {version!r}"
        if versions:
            listed = f"registered versions of {name!r}: {', '.join(versions)}"
        else:
            listed = f"registered: {', '.join(sorted(known)) or 'none'}"
        # Versions differ by a digit by design ("2.0.0" is no typo of "3.0.0"): names only.
        close = [] if versions or name in known else difflib.get_close_matches(name, known, n=1)
        #: The registered name closest to ``name`` when the name is unknown and one is close.
        self.suggestion = close[0] if close else None
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        super().__init__(
            f"no orchestration {what} is registered in this runtime{hint} ({listed})",
            fix="register it (OrchestrationRegistry.builder().register(...) or "
            "@orchestration with discover_orchestrations()), or fix the name; a process whose "
            "runtime runs only some orchestrations starts the others with Client(store, check_names=False)",
        )


class UnknownActivityError(DuroxideError):
    """No activity is registered under a name."""

    code = ErrorCode.UNKNOWN_ACTIVITY

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"no activity {name!r} is registered in this runtime "
            f"(registered: {', '.join(sorted(known)) or 'none'})",
            fix="register it (ActivityRegistry.builder().register(...) or @activity "
            "with discover_activities()), or fix the name",
        )


class NonDeterminismError(DuroxideError):
    """Replay of an orchestration did not match its recorded history.

    The instance is failed with this error; orchestration code cannot catch it.
    """

    code = ErrorCode.NONDETERMINISM

    #: The fix every replay mismatch shares.
    FIX: ClassVar[str] = (
        "orchestration code must make the same durable calls in the same "
        "order on every replay; register changed code as a new version "
        "(register_versioned) instead of editing a version in use"
    )

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        # ``fix`` is given when the error is rebuilt from stored ErrorDetails (replayer.py).
        super().__init__(message, fix=fix or self.FIX)


class NonDeterministicOperationError(DuroxideError, RuntimeError):
    """Orchestration code tried something that cannot be replayed (real I/O, foreign futures)."""

    code = ErrorCode.NONDETERMINISTIC_OPERATION

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is not allowed inside an orchestration: it cannot be replayed",
            fix="move I/O and other side effects into an activity and call it with "
            "ctx.schedule_activity(...); use ctx.schedule_timer / asyncio.sleep for waiting",
        )


class OrchestrationStuckError(DuroxideError):
    """A turn of orchestration code ran longer than RuntimeOptions.turn_timeout without yielding.

    The runtime's watchdog raises it; ``where`` names the code location
    (``file:line in function``) when it is known.

    Example::

        OrchestrationStuckError("order-1", 2.0, "app/orders.py:41 in process_order")
    """

    code = ErrorCode.STUCK

    def __init__(self, instance_id: str, seconds: float, where: str | None = None) -> None:
        self.instance_id = instance_id
        self.seconds = seconds
        self.where = where
        at = f" (at {where})" if where else ""
        # One decimal reads well for seconds; sub-second timeouts (tests) keep two digits.
        took = f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2g}"
        super().__init__(
            f"instance {instance_id!r}: orchestration code ran {took} s without yielding{at}",
            fix="orchestration code must not compute for long or loop without awaiting "
            "durable work: move the work into an activity, await between steps, or raise "
            "RuntimeOptions.turn_timeout if a turn is legitimately long",
        )


class CorruptHistoryError(DuroxideError):
    """A stored history row could not be read."""

    code = ErrorCode.CORRUPT_HISTORY

    def __init__(self, instance_id: str, detail: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"history of instance {instance_id!r} is unreadable: {detail}",
            fix="restore the store from a backup, or purge the instance "
            "(client.purge(id, force=True)) and start it again",
        )


class PoisonMessageError(DuroxideError):
    """A message was delivered more than ``max_attempts`` times without success."""

    code = ErrorCode.POISON


class StoreError(DuroxideError):
    """The store failed in a way retrying did not cure."""

    code = ErrorCode.STORE


class StoreTimeoutError(StoreError):
    """A write was not confirmed within its bound (a stalled disk, a long fsync).

    ``committed`` says what is known: ``False`` when the write was withdrawn before it
    ran (it will never commit: retrying is safe), ``None`` when it was already being
    committed (it may have committed: read before you retry).

    Example::

        try:
            await client.start_orchestration("order-1", "Order", data)
        except StoreTimeoutError as err:
            if err.committed is None and await client.get_status("order-1") is not None:
                ...  # it was started after all
    """

    code = ErrorCode.STORE_TIMEOUT

    def __init__(self, what: str, seconds: float, committed: bool | None) -> None:
        self.what = what
        self.seconds = seconds
        self.committed = committed
        outcome = ("it was withdrawn before it ran and will not commit" if committed is False
                   else "it was being committed and may have committed")
        super().__init__(
            f"the store did not confirm {what} within {seconds:g} s; {outcome}",
            fix="check the disk or database server (a full or stalled disk, a slow fsync); "
                + ("retrying is safe" if committed is False else "read the state before retrying"))


_TEXT_FIELDS = ("error_type", "message", "traceback", "code", "fix")


def class_path(cls: type) -> str:
    """How a class is named across processes: ``module.QualName``, a builtin by its bare name.

    Example: ``class_path(ValueError) == "ValueError"``, ``class_path(NonRetryableError) ==
    "duroxide_runtime.errors.NonRetryableError"``.
    """
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def exception_types(exc_type: type[BaseException]) -> tuple[str, ...]:
    """The :func:`class_path` of ``exc_type`` and of each of its base classes, most derived first
    (``object`` left out): what ``ErrorDetails.types`` records, so that a failure read in another
    process can still be matched by class, subclasses included (``RetryPolicy.non_retryable``)."""
    return tuple(class_path(c) for c in exc_type.__mro__ if c is not object)


@dataclass(frozen=True)
class ErrorDetails:
    """The stored form of a failure: type name, message, traceback text; code and fix of a DuroxideError.

    For a :class:`DuroxideError`, ``message`` is its message without the fix, ``code``
    its :class:`ErrorCode` value and ``fix`` its fix, so the error can be told by
    type and code and rebuilt; for other exceptions both are ``None``.
    :meth:`to_text` is the line users see either way.

    Example::

        ErrorDetails("ValueError", "bad input", "Traceback ...").to_text()  # 'ValueError: bad input'
        ErrorDetails.from_exception(NonDeterminismError("changed")).code     # 'NONDETERMINISM'
    """

    error_type: str
    message: str
    traceback: str = ""
    code: str | None = field(default=None, kw_only=True)
    fix: str | None = field(default=None, kw_only=True)
    #: The exception's class and base classes (:func:`exception_types`), as recorded for an
    #: activity's failure; ``()`` where unknown (other failures, rows of older versions).
    #: Not part of equality: two records of the same failure compare equal either way.
    types: tuple[str, ...] = field(default=(), kw_only=True, compare=False)

    def to_text(self) -> str:
        """One line, as shown in ``OrchestrationStatus.Failed(error=...)``: ``"Type: message[. Fix: fix]"``."""
        text = f"{self.error_type}: {self.message}"
        return f"{text}. Fix: {self.fix}" if self.fix else text

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorDetails:
        """Capture an exception, with its traceback text (and code and fix, for a DuroxideError)."""
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        message = getattr(exc, "message", None)
        if isinstance(exc, DuroxideError) and isinstance(message, str):  # (a subclass may skip __init__)
            fix = getattr(exc, "fix", None)
            return cls(type(exc).__name__, message, text, code=str(exc.code),
                       fix=fix if isinstance(fix, str) else None)
        return cls(type(exc).__name__, str(exc), text)

    def to_dict(self) -> dict[str, str | list[str]]:
        """The stored form: ``code``, ``fix`` and ``types`` only when set.

        Leaving them out keeps the rows of other errors exactly as versions before
        them wrote (and read) them.
        """
        stored: dict[str, str | list[str]] = {"error_type": self.error_type, "message": self.message,
                                              "traceback": self.traceback}
        if self.code is not None:
            stored["code"] = self.code
        if self.fix is not None:
            stored["fix"] = self.fix
        if self.types:
            stored["types"] = list(self.types)
        return stored

    @classmethod
    def from_dict(cls, stored: object) -> ErrorDetails:
        """Read :meth:`to_dict` output, or a row written before ``code`` and ``fix`` existed.

        Unknown keys are ignored (a newer version may add some); a row that is not
        an object, lacks ``error_type`` or ``message``, or holds a non-text value
        raises ``TypeError``.
        """
        if not isinstance(stored, Mapping):
            raise TypeError(f"stored error details are a {type(stored).__name__}, not an object")
        values = {k: stored[k] for k in _TEXT_FIELDS if stored.get(k) is not None}
        missing = [k for k in ("error_type", "message") if k not in values]
        wrong = [k for k, v in values.items() if not isinstance(v, str)]
        if missing or wrong:
            raise TypeError(f"stored error details lack {missing} or hold non-text {wrong}")
        types = stored.get("types")
        if isinstance(types, list) and all(isinstance(t, str) for t in types):
            return cls(**values, types=tuple(types))
        return cls(**values)


class DurableTaskFailed(DuroxideError):
    """A durable task (activity or sub-orchestration) failed; raised in orchestration code.

    Carries the remote error's type name, message and traceback text.
    """

    code = ErrorCode.TASK_FAILED

    def __init__(self, details: ErrorDetails, *, what: str) -> None:
        self.details = details
        self.error_type = details.error_type
        self.remote_traceback = details.traceback
        super().__init__(f"{what} failed: {details.to_text()}")


class ActivityFailed(DurableTaskFailed):
    """An activity raised (after its retries, if any)."""

    code = ErrorCode.ACTIVITY_FAILED

    def __init__(self, name: str, details: ErrorDetails) -> None:
        self.name = name
        super().__init__(details, what=f"activity {name!r}")


class SubOrchestrationFailed(DurableTaskFailed):
    """A sub-orchestration ended Failed."""

    code = ErrorCode.SUB_ORCHESTRATION_FAILED

    def __init__(self, name: str, instance_id: str, details: ErrorDetails) -> None:
        self.name = name
        self.instance_id = instance_id
        super().__init__(details, what=f"sub-orchestration {name!r} ({instance_id})")


class ActivityTimeoutError(DurableTaskFailed):
    """An activity call did not finish within its ``timeout``."""

    code = ErrorCode.ACTIVITY_TIMEOUT

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        super().__init__(
            ErrorDetails("ActivityTimeoutError", f"no result within {timeout_s:g}s"),
            what=f"activity {name!r}",
        )


class NonRetryableError(DuroxideError):
    """Raised by an activity: this failure must not be retried, whatever the call's ``RetryPolicy``.

    The retry loop stops at once and the orchestration gets ``ActivityFailed`` with this
    error's type name (a subclass keeps its own name) and message. Subclass it for
    failures of your own that are never worth retrying.

    Example::

        async def charge(order_json: str) -> str:
            if declined(order_json):
                raise NonRetryableError("card declined")
            ...
    """

    code = ErrorCode.NON_RETRYABLE


class OrchestrationCancelled(DuroxideError):
    """Names the failure of an instance ended by ``cancel_instance``.

    Such an instance ends ``Failed`` with ``error_type == "OrchestrationCancelled"``
    and the reason as message; the class exists so that code and docs can name it.
    """

    code = ErrorCode.CANCELLED


class PayloadDecodeError(PayloadError):
    """A typed wait, state read or update got a payload that does not decode into the type asked for.

    Raised where the value is asked for - in orchestration code at the
    ``await ctx.wait_for_event(name, T)`` (which may catch it: the event is
    consumed, the instance is unharmed), at ``ctx.get_state(key, T)``, or in the
    client (``client.get_state(..., T)``, ``client.update(..., result_type=T)``).
    ``instance_id`` and ``source`` (``"event 'approval'"``, ``"state 'progress'"``)
    say where the payload came from.

    Example::

        try:
            approval = await ctx.wait_for_event("approval", Approval)
        except PayloadDecodeError as err:
            ctx.trace_warn("bad approval payload: {}", err.message)
    """

    code = ErrorCode.PAYLOAD_DECODE

    def __init__(self, instance_id: str, source: str, problem: str, *, fix: str) -> None:
        self.instance_id = instance_id
        self.source = source
        super().__init__(f"instance {instance_id!r}: {source}: {problem}", fix=fix)


class UpdateRejectedError(DuroxideError):
    """``client.update`` got no reply: the orchestration rejected the update, or ended without replying.

    ``reason`` is what ``req.reject(reason)`` said (or why the runtime rejected it:
    a payload that does not decode, an instance that ended).

    Example::

        try:
            cart = await client.update("cart-1", "add_item", item_json, timeout=10)
        except UpdateRejectedError as err:
            print("not added:", err.reason)
    """

    code = ErrorCode.UPDATE_REJECTED

    def __init__(self, instance_id: str, name: str, request_id: str, reason: str) -> None:
        self.instance_id = instance_id
        self.name = name
        self.request_id = request_id
        self.reason = reason
        super().__init__(f"update {name!r} of instance {instance_id!r} (request {request_id!r}) was rejected: "
                         f"{reason}", fix="read the reason; change the request, or send it to an instance that "
                                         "accepts it")


class UpdateTimeoutError(DuroxideError):
    """``client.update`` got no reply within its ``timeout``.

    The request stays with the instance: an orchestration that waits for it later
    still replies, and asking again with the same ``request_id`` returns that reply
    (it is recorded once and never applied twice).
    """

    code = ErrorCode.UPDATE_TIMEOUT

    def __init__(self, instance_id: str, name: str, request_id: str, timeout_s: float) -> None:
        self.instance_id = instance_id
        self.name = name
        self.request_id = request_id
        super().__init__(
            f"update {name!r} of instance {instance_id!r} (request {request_id!r}) got no reply within "
            f"{timeout_s:g} s", fix=f"check that the orchestration waits for it (ctx.wait_for_update({name!r})); "
                                   f"ask again with request_id={request_id!r} to get the reply once it is sent")


class UpdateAlreadyRepliedError(DuroxideError):
    """Orchestration code replied to (or rejected) an update it had already answered.

    Raised at the second ``req.reply``/``req.reject``; nothing is recorded, the
    first answer stands and the instance goes on (the code may catch it).
    """

    code = ErrorCode.UPDATE_ALREADY_REPLIED

    def __init__(self, instance_id: str, name: str, request_id: str) -> None:
        self.instance_id = instance_id
        self.name = name
        self.request_id = request_id
        super().__init__(f"instance {instance_id!r}: update {name!r} (request {request_id!r}) was already answered; "
                         "this second answer is ignored",
                         fix="answer each request once (reply or reject, not both)")


class UnknownQueueError(DuroxideError):
    """Work names a queue that ``RuntimeOptions(queues=...)`` does not configure.

    Raised where the work is declared or started, before anything is stored, so that
    a misspelt queue name never silently escapes its limits.
    """

    code = ErrorCode.UNKNOWN_QUEUE

    def __init__(self, queue: str, known: list[str], *, declared_by: str | None = None) -> None:
        listed = ", ".join(repr(q) for q in known)
        by = "" if declared_by is None else f" ({declared_by} names it)"
        super().__init__(f"queue {queue!r}{by} is not configured (configured: {listed})",
                         fix=f"add {queue!r}: QueueOptions(...) to RuntimeOptions(queues=...) in every process, "
                             "or name a configured queue")
        self.queue = queue


class InvalidScheduleError(InvalidInputError):
    """A schedule's cron expression (or catch-up policy) cannot be used.

    Raised by ``Client.create_schedule`` and by ``@orchestration(schedule=...)`` at
    decoration, before anything is stored. ``field`` names the argument (``"cron"``,
    ``"catch_up"``), ``value`` is what was given.

    Example::

        InvalidScheduleError("cron", "*/0 * * * *", "step '0' in field 0 is not acceptable")
    """

    code = ErrorCode.INVALID_SCHEDULE

    def __init__(self, field: str, value: str, problem: str, *, fix: str | None = None) -> None:
        self.value = value
        super().__init__(
            field, f"{value[:80]!r} is not a usable schedule: {problem}",
            fix=fix or "write 5 fields 'minute hour day-of-month month day-of-week' (e.g. '*/5 * * * *'), or 6 "
                       "with seconds first ('*/10 * * * * *' = every 10 s); times are UTC")


class ScheduleNotFoundError(DuroxideError, LookupError):
    """An operation named a schedule id the store does not know."""

    code = ErrorCode.SCHEDULE_NOT_FOUND

    def __init__(self, schedule_id: str, operation: str) -> None:
        self.schedule_id = schedule_id
        super().__init__(f"{operation}: no schedule {schedule_id!r} in this store",
                         fix="check the id (client.list_schedules() or `duroxide schedules STORE` shows what exists)")


class ScheduleExistsError(DuroxideError):
    """``create_schedule`` was given an id that is already used (and not ``replace=True``)."""

    code = ErrorCode.SCHEDULE_EXISTS

    def __init__(self, schedule_id: str) -> None:
        self.schedule_id = schedule_id
        super().__init__(f"schedule {schedule_id!r} already exists; it was not changed",
                         fix="pass replace=True to change it (its next tick is kept if the cron is unchanged), "
                             "delete it first, or pick another id")
