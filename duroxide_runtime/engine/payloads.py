"""Checks on values the engine records: text a store can hold, within the size limits.

Example::

    check_size(output, options.max_payload_bytes, "output of 'Hello'")   # PayloadTooLargeError if too big
    text_problem("caf\\udce9")                                           # why no store can encode it
"""

from __future__ import annotations

import traceback

from ..errors import (ActivityFailed, DurableTaskFailed, ErrorDetails, PayloadError, PayloadTooLargeError,
                      SubOrchestrationFailed)

__all__ = ["check_str", "check_text", "check_size", "text_problem", "storable_text", "safe_error_details",
           "traceback_text"]


def check_str(value: object, what: str) -> None:
    """``value`` is text a store can hold (the context checks first; this guards direct callers)."""
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be str, got {type(value).__name__}",
                           fix="encode it first (e.g. json.dumps(value)), or use the typed @activity/@orchestration helpers")
    check_text(value, what)


def text_problem(text: str) -> str | None:
    """Why a store cannot hold ``text`` (``None`` if it can).

    Every store writes UTF-8; a lone surrogate (what ``os.fsdecode`` or
    ``errors="surrogateescape"`` make of bytes that are not UTF-8) has no UTF-8
    form, and would fail the whole write it is part of.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"it contains the lone surrogate {text[err.start]!r} at index {err.start}, which no store can "
                "encode (text decoded with errors='surrogateescape', e.g. os.fsdecode() of bytes that are not UTF-8)")
    return None


def check_text(value: str, what: str) -> None:
    """``value`` has no character a store cannot encode (PayloadError naming it)."""
    problem = text_problem(value)
    if problem is not None:
        raise PayloadError(f"{what} cannot be stored: {problem}",
                           fix="pass valid Unicode text: decode bytes with errors='replace', or carry binary "
                               "data as base64")


def storable_text(text: str) -> str:
    """``text`` with anything a store cannot encode made visible as an escape (``\\udcff``).

    For diagnostics (error messages, tracebacks), where showing the text matters
    more than keeping it byte for byte.
    """
    return text if text_problem(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_error_details(exc: BaseException) -> ErrorDetails:
    """``ErrorDetails.from_exception`` that never raises and always gives storable text.

    An exception's ``__str__`` is user code: it may raise, or return text with
    lone surrogates. Either used to escape recording, so the call or turn was
    redone until it was poisoned (issue 10, defects 1 and 10b); the error is
    recorded with a fallback message instead.
    """
    kind = type(exc).__name__
    try:
        message = str(exc)
    except Exception as err:  # noqa: BLE001 - a broken __str__ must not stop recording the failure
        message = f"<str() of this {kind} raised {type(err).__name__}; the message is lost>"
    try:
        text = traceback_text(exc)
    except Exception:  # noqa: BLE001 - diagnostics only
        text = ""
    return ErrorDetails(storable_text(kind), storable_text(message), storable_text(text))


#: At most this many characters of a durable task's own traceback are carried into its
#: awaiter's: a failure passed up through many levels of sub-orchestrations stays bounded.
_REMOTE_TRACEBACK_CHARS = 16_000


def traceback_text(exc: BaseException) -> str:
    """The traceback text of ``exc``, with the tracebacks of the durable tasks whose failure it carries.

    An activity or sub-orchestration fails in another turn, often another process:
    the :class:`DurableTaskFailed` raised where orchestration code awaited it has
    only that code's frames, and the task's own traceback (``remote_traceback``)
    would be lost when the orchestration fails in turn. It is put before the
    exception it caused, as Python puts a ``__cause__`` - so the text reads
    from where the failure began (the activity's ``raise``) to where it ended.
    Without such an exception in the chain this is ``traceback.format_exception``.

    Example::

        traceback_text(activity_failed)
        # Traceback ... File "app/orders.py", line 14, in charge ... ValueError: declined
        # The above exception was raised in activity 'charge'; orchestration code received it as:
        # Traceback ... File "app/orders.py", line 30, in process_order ... ActivityFailed: ...
    """
    chain = _exception_chain(exc)
    if not any(isinstance(e, DurableTaskFailed) and e.remote_traceback for e in chain):
        # traceback.format_exception calls str(exc) too, but guards it itself.
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    parts: list[str] = []
    for i, (link, e) in enumerate(zip(_links(chain), chain)):
        if i:
            parts.append(link)
        if isinstance(e, DurableTaskFailed) and e.remote_traceback:
            remote = e.remote_traceback
            if len(remote) > _REMOTE_TRACEBACK_CHARS:
                cut = len(remote) - _REMOTE_TRACEBACK_CHARS
                remote = f"[{cut} characters of this traceback left out]\n" + remote[cut:]
            parts.append(remote.rstrip("\n") + "\n")
            parts.append(f"\nThe above exception was raised in {_task_of(e)}; orchestration code "
                         "received it as the following exception:\n\n")
        parts.append("".join(traceback.format_exception(type(e), e, e.__traceback__, chain=False)))
    return "".join(parts)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, the first cause first."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ if current.__cause__ is not None else (
            None if current.__suppress_context__ else current.__context__)
    return chain[::-1]


def _links(chain: list[BaseException]) -> list[str]:
    """The line Python prints before each exception of ``chain``, naming how the one before led to it."""
    return ["" if i == 0 else
            "\nThe above exception was the direct cause of the following exception:\n\n"
            if e.__cause__ is chain[i - 1] else
            "\nDuring handling of the above exception, another exception occurred:\n\n"
            for i, e in enumerate(chain)]


def _task_of(err: DurableTaskFailed) -> str:
    if isinstance(err, SubOrchestrationFailed):
        return f"sub-orchestration {err.name!r} ({err.instance_id})"
    if isinstance(err, ActivityFailed):
        return f"activity {err.name!r}"
    return "a durable task"


def check_size(value: str, limit: int, what: str) -> None:
    """``value`` is storable text of at most ``limit`` UTF-8 bytes (PayloadTooLargeError)."""
    if isinstance(value, str):
        check_text(value, what)
    size = len(value) if len(value) * 4 <= limit else len(value.encode())
    if size > limit:
        raise PayloadTooLargeError(f"{what} is {size} bytes, over the limit of {limit}",
                                   fix="store large data elsewhere and pass a reference, or raise the limit in RuntimeOptions")

