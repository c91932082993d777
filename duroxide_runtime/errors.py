"""Typed errors of the runtime.

Every error a user can meet names its cause and the fix. Each carries a
stable ``code`` (for logs, alerts and the troubleshooting page) and a
``fix`` string, so ``str(err)`` reads as "what happened; how to fix it".

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
    "DuroxideError",
    "ConfigurationError",
    "PayloadError",
    "PayloadTooLargeError",
    "InvalidInputError",
    "InstanceAlreadyExistsError",
    "InstanceNotFoundError",
    "InstanceStillRunningError",
    "UnknownOrchestrationError",
    "UnknownActivityError",
    "NonDeterminismError",
    "NonDeterministicOperationError",
    "CorruptHistoryError",
    "PoisonMessageError",
    "StoreError",
    "DurableTaskFailed",
    "ActivityFailed",
    "SubOrchestrationFailed",
    "OrchestrationCancelled",
    "ActivityTimeoutError",
    "ErrorDetails",
]

from dataclasses import dataclass


class DuroxideError(Exception):
    """Base of every error raised by duroxide.

    Example::

        except DuroxideError as err:
            log.error("%s (code %s)", err, err.code)
    """

    code: str = "DUROXIDE"

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)


class ConfigurationError(DuroxideError):
    """The runtime, a registry or a store was set up wrongly."""

    code = "CONFIG"


class PayloadError(DuroxideError, TypeError):
    """A payload is not what the receiving side can take (wrong type, not encodable)."""

    code = "PAYLOAD"


class PayloadTooLargeError(PayloadError, ValueError):
    """A payload or custom status exceeds its configured limit."""

    code = "PAYLOAD_TOO_LARGE"


class InvalidInputError(PayloadError, ValueError):
    """A value is outside the limits every store can hold (see ``duroxide_runtime.limits``).

    Raised at the call site, before anything is stored: an id, name, version,
    reason or event name that is empty, too long or holds characters a store
    cannot keep (NUL, lone surrogates, control characters in identifiers), a
    payload with NUL or lone surrogates, a duration that is NaN or out of range.
    ``field`` names the argument.
    """

    code = "INVALID_INPUT"

    def __init__(self, field: str, problem: str, *, fix: str) -> None:
        self.field = field
        super().__init__(f"{field} {problem}", fix=fix)


class InstanceAlreadyExistsError(DuroxideError):
    """``start_orchestration`` was given an instance id that is already used."""

    code = "INSTANCE_EXISTS"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"instance {instance_id!r} already exists; it was not started again",
            fix="pick a new instance id, check first with get_instance_info(), "
            "or purge the old instance (client.purge) to reuse its id",
        )


class InstanceNotFoundError(DuroxideError, LookupError):
    """An operation named an instance id the store does not know."""

    code = "INSTANCE_NOT_FOUND"

    def __init__(self, instance_id: str, operation: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"{operation}: no instance {instance_id!r} in this store",
            fix="check the instance id (client.list_instances() shows what exists) "
            "and that the client uses the same store as the runtime",
        )


class InstanceStillRunningError(DuroxideError):
    """Purge was asked for an instance that has not finished."""

    code = "INSTANCE_RUNNING"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"instance {instance_id!r} is still running and was not purged",
            fix="cancel it first (client.cancel_instance) or pass force=True",
        )


class UnknownOrchestrationError(DuroxideError):
    """No orchestration is registered under a name (or name and version)."""

    code = "UNKNOWN_ORCHESTRATION"

    def __init__(self, name: str, version: str | None, known: list[str]) -> None:
        self.name = name
        self.version = version
        what = f"{name!r}" if not version else f"{name!r} version {version!r}"
        super().__init__(
            f"no orchestration {what} is registered in this runtime "
            f"(registered: {', '.join(sorted(known)) or 'none'})",
            fix="register it (OrchestrationRegistry.builder().register(...) or "
            "@orchestration with discover_orchestrations()), or fix the name",
        )


class UnknownActivityError(DuroxideError):
    """No activity is registered under a name."""

    code = "UNKNOWN_ACTIVITY"

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

    code = "NONDETERMINISM"

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            fix="orchestration code must make the same durable calls in the same "
            "order on every replay; register changed code as a new version "
            "(register_versioned) instead of editing a version in use",
        )


class NonDeterministicOperationError(DuroxideError, RuntimeError):
    """Orchestration code tried something that cannot be replayed (real I/O, foreign futures)."""

    code = "NONDETERMINISTIC_OPERATION"

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is not allowed inside an orchestration: it cannot be replayed",
            fix="move I/O and other side effects into an activity and call it with "
            "ctx.schedule_activity(...); use ctx.schedule_timer / asyncio.sleep for waiting",
        )


class CorruptHistoryError(DuroxideError):
    """A stored history row could not be read."""

    code = "CORRUPT_HISTORY"

    def __init__(self, instance_id: str, detail: str) -> None:
        self.instance_id = instance_id
        super().__init__(
            f"history of instance {instance_id!r} is unreadable: {detail}",
            fix="restore the store from a backup, or purge the instance "
            "(client.purge(id, force=True)) and start it again",
        )


class PoisonMessageError(DuroxideError):
    """A message was delivered more than ``max_attempts`` times without success."""

    code = "POISON"


class StoreError(DuroxideError):
    """The store failed in a way retrying did not cure."""

    code = "STORE"


@dataclass(frozen=True)
class ErrorDetails:
    """The stored form of an application error: type name, message, traceback text.

    Example::

        ErrorDetails("ValueError", "bad input", "Traceback ...").to_text()
    """

    error_type: str
    message: str
    traceback: str = ""

    def to_text(self) -> str:
        """One line, as shown in ``OrchestrationStatus.Failed(error=...)``."""
        return f"{self.error_type}: {self.message}"

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorDetails:
        """Capture an exception, with its traceback text."""
        import traceback

        return cls(
            type(exc).__name__,
            str(exc),
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )


class DurableTaskFailed(DuroxideError):
    """A durable task (activity or sub-orchestration) failed; raised in orchestration code.

    Carries the remote error's type name, message and traceback text.
    """

    code = "TASK_FAILED"

    def __init__(self, details: ErrorDetails, *, what: str) -> None:
        self.details = details
        self.error_type = details.error_type
        self.remote_traceback = details.traceback
        super().__init__(f"{what} failed: {details.to_text()}")


class ActivityFailed(DurableTaskFailed):
    """An activity raised (after its retries, if any)."""

    code = "ACTIVITY_FAILED"

    def __init__(self, name: str, details: ErrorDetails) -> None:
        self.name = name
        super().__init__(details, what=f"activity {name!r}")


class SubOrchestrationFailed(DurableTaskFailed):
    """A sub-orchestration ended Failed."""

    code = "SUB_ORCHESTRATION_FAILED"

    def __init__(self, name: str, instance_id: str, details: ErrorDetails) -> None:
        self.name = name
        self.instance_id = instance_id
        super().__init__(details, what=f"sub-orchestration {name!r} ({instance_id})")


class ActivityTimeoutError(DurableTaskFailed):
    """An activity call did not finish within its ``timeout``."""

    code = "ACTIVITY_TIMEOUT"

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        super().__init__(
            ErrorDetails("ActivityTimeoutError", f"no result within {timeout_s:g}s"),
            what=f"activity {name!r}",
        )


class OrchestrationCancelled(DuroxideError):
    """Names the failure of an instance ended by ``cancel_instance``.

    Such an instance ends ``Failed`` with ``error_type == "OrchestrationCancelled"``
    and the reason as message; the class exists so that code and docs can name it.
    """

    code = "CANCELLED"
