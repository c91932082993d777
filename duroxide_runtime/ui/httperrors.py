"""How the UI answers a request it cannot serve: a 4xx with ``{"error", "message", "fix"}``.

:class:`ApiError` is what the UI's own checks raise (a bad filter, a missing
token, a POST in read-only mode); :func:`status_of` maps the runtime's typed
errors to HTTP: an unknown instance is 404, an instance in the wrong state 409,
bad input 400. Anything else is a fault of the store or of this code: 503 for
the store, 500 otherwise, with no stored text or traceback in the answer.

Example::

    raise ApiError(400, "BAD_FILTER", "status 'Sleeping' is not a status", fix="use one of Running, ...")
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DuroxideError, StoreError

__all__ = ["ApiError", "Problem", "problem_of", "status_of"]


class ApiError(Exception):
    """A request the UI refuses: HTTP ``status``, a stable ``code``, what is wrong and how to fix it.

    Example::

        raise ApiError(403, "READ_ONLY", "this UI is read-only", fix="restart it without --read-only")
    """

    def __init__(self, status: int, code: str, message: str, *, fix: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.fix = fix
        super().__init__(message)


#: Runtime error codes that mean "the request is wrong", by the HTTP status they answer with.
_STATUS_BY_CODE = {
    "INSTANCE_NOT_FOUND": 404,
    "INSTANCE_EXISTS": 409,
    "INSTANCE_RUNNING": 409,
    "INSTANCE_STATE": 409,
    "UPDATE_REJECTED": 409,
    "INVALID_INPUT": 400,
    "PAYLOAD": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "PAYLOAD_DECODE": 400,
    "UNKNOWN_ORCHESTRATION": 400,
    "SCHEDULE_NOT_FOUND": 404,
    "SCHEDULE_EXISTS": 409,
    "INVALID_SCHEDULE": 400,
    "CONFIG": 400,
    "USAGE": 400,
}


def status_of(exc: BaseException) -> int:
    """The HTTP status that answers ``exc``.

    Example::

        status_of(InstanceNotFoundError("x", "get_instance_info"))   # 404
    """
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, StoreError):
        return 503
    if isinstance(exc, DuroxideError):
        code = str(exc.code)
        if code in _STATUS_BY_CODE:
            return _STATUS_BY_CODE[code]
        if code.startswith("INSTANCE_") or "STATE" in code:
            return 409  # a wrong-state error of an operation (its code names the instance's state)
        return 400 if isinstance(exc, (ValueError, TypeError, LookupError)) else 500
    return 500


@dataclass(frozen=True)
class Problem:
    """What the UI answers for an error: status, code, message and fix (as JSON or on an HTML page)."""

    status: int
    code: str
    message: str
    fix: str | None

    def json(self) -> dict[str, str | None]:
        """``{"error": code, "message": ..., "fix": ...}``."""
        return {"error": self.code, "message": self.message, "fix": self.fix}


def problem_of(exc: BaseException) -> Problem:
    """The answer to ``exc``; an unexpected error says only its type (details go to the log).

    Example::

        problem_of(ApiError(400, "BAD_CURSOR", "the cursor is not one this UI gave out")).json()
    """
    status = status_of(exc)
    if isinstance(exc, ApiError):
        return Problem(status, exc.code, exc.message, exc.fix)
    if isinstance(exc, DuroxideError) and status < 500:
        return Problem(status, str(exc.code), exc.message, exc.fix)
    if isinstance(exc, StoreError):
        return Problem(status, str(exc.code), "the store did not answer: " + exc.message,
                       "check that the store is reachable, then retry")
    return Problem(status, "INTERNAL", f"the UI failed on this request ({type(exc).__name__}); see its log",
                   "report it with the log line; the store was not changed by this request unless it says so")
