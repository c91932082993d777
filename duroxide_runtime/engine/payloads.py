"""Checks on values the engine records: text a store can hold, within the size limits.

Example::

    check_size(output, options.max_payload_bytes, "output of 'Hello'")   # PayloadTooLargeError if too big
    text_problem("caf\\udce9")                                           # why no store can encode it
"""

from __future__ import annotations

import traceback

from ..errors import ErrorDetails, PayloadError, PayloadTooLargeError

__all__ = ["check_str", "check_text", "check_size", "text_problem", "storable_text", "safe_error_details"]


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
        # traceback.format_exception calls str(exc) too, but guards it itself.
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001 - diagnostics only
        text = ""
    return ErrorDetails(storable_text(kind), storable_text(message), storable_text(text))


def check_size(value: str, limit: int, what: str) -> None:
    """``value`` is storable text of at most ``limit`` UTF-8 bytes (PayloadTooLargeError)."""
    if isinstance(value, str):
        check_text(value, what)
    size = len(value) if len(value) * 4 <= limit else len(value.encode())
    if size > limit:
        raise PayloadTooLargeError(f"{what} is {size} bytes, over the limit of {limit}",
                                   fix="store large data elsewhere and pass a reference, or raise the limit in RuntimeOptions")

