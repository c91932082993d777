"""One set of input limits for every store, checked where a value enters the API.

SQLite, PostgreSQL and the in-memory store can hold different things:
PostgreSQL ``text`` cannot hold NUL, its indexes and ``NOTIFY`` payloads have
byte limits, and no store can encode a lone surrogate as UTF-8. So that an
instance never depends on which store it runs on, the client and the
orchestration context check every identifier, text and duration against the
limits below and refuse a bad one with :class:`InvalidInputError` (or
:class:`PayloadError` for a wrong type) before anything is stored. Everything
within the limits is stored faithfully on every store.

Identifiers (instance ids, orchestration and activity names, event names,
versions) are 1 to :data:`MAX_ID_CHARS` / :data:`MAX_NAME_CHARS` /
:data:`MAX_VERSION_CHARS` characters with no control characters (``U+0000``
to ``U+001F``, ``U+007F`` to ``U+009F``) and no lone surrogates. Free text
(payloads, custom status, cancel reasons) may hold any Unicode except NUL
and lone surrogates; its size limits are :class:`RuntimeOptions` fields,
and reasons are at most :data:`MAX_REASON_CHARS` characters. Durations (timer
delays, activity timeouts) are 0 to :data:`MAX_TIMER_SECONDS`; like every
duration setting, a bad one raises :class:`ConfigurationError`.

Example::

    check_identifier("order-1", "instance_id", MAX_ID_CHARS)   # passes
    check_identifier("a\\x00b", "instance_id", MAX_ID_CHARS)    # InvalidInputError naming instance_id
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .errors import ConfigurationError, InvalidInputError, PayloadError

__all__ = [
    "MAX_ID_CHARS", "MAX_NAME_CHARS", "MAX_VERSION_CHARS", "MAX_REASON_CHARS", "MAX_TIMER_SECONDS",
    "MAX_LIST_LIMIT", "MAX_EXECUTION_ID", "check_str", "check_identifier", "check_lookup_id", "check_text",
    "check_seconds", "check_count",
]

#: Longest instance id, in characters (a 4-byte character each still fits PostgreSQL's index and NOTIFY limits).
MAX_ID_CHARS = 256
#: Longest orchestration, activity or event name, in characters.
MAX_NAME_CHARS = 256
#: Longest version string, in characters.
MAX_VERSION_CHARS = 64
#: Longest cancellation reason, in characters.
MAX_REASON_CHARS = 4096
#: Longest timer delay or activity timeout: 100 years, in seconds.
MAX_TIMER_SECONDS = 100 * 365 * 24 * 3600
#: Largest ``limit`` of ``list_instances``.
MAX_LIST_LIMIT = 2**31 - 1
#: Largest execution id (a signed 64-bit integer in every store).
MAX_EXECUTION_ID = 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

_STR_FIX = "encode it first (e.g. json.dumps(value)), or use the typed helpers of @orchestration"


def check_str(value: object, field: str) -> str:
    """``value`` if it is a ``str``; else :class:`PayloadError` naming ``field``."""
    if not isinstance(value, str):
        raise PayloadError(f"{field} must be str, got {type(value).__name__}", fix=_STR_FIX)
    return value


def _unstorable(value: str, field: str) -> None:
    """Refuse characters no store can hold: NUL and lone surrogates."""
    if value.isascii() and "\x00" not in value:
        return  # nearly every value: no surrogate to look for (checked on every command and payload)
    nul = value.find("\x00")
    if nul >= 0:
        raise InvalidInputError(field, f"contains a NUL character (at index {nul}), which PostgreSQL cannot store",
                                fix=f"remove the NUL characters from {field}, or encode binary data "
                                    "(e.g. base64) before passing it")
    m = _SURROGATE.search(value)
    if m is not None:
        raise InvalidInputError(field, f"contains a lone surrogate U+{ord(m.group()):04X} (at index {m.start()}), "
                                       "which is not valid Unicode and cannot be stored as UTF-8",
                                fix=f"pass valid Unicode in {field}: decode bytes with a real encoding "
                                    "(e.g. b.decode('utf-8', 'replace')) rather than os.fsdecode/surrogateescape")


def check_identifier(value: object, field: str, max_chars: int) -> str:
    """An id, name, version or event name: 1..``max_chars`` characters, no control characters."""
    text = check_str(value, field)
    if not text:
        raise InvalidInputError(field, "must not be empty", fix=f"pass a non-empty string as {field}")
    _unstorable(text, field)
    m = _CONTROL.search(text)
    if m is not None:
        raise InvalidInputError(field, f"contains the control character U+{ord(m.group()):04X} "
                                       f"(at index {m.start()})",
                                fix=f"use printable characters in {field} (letters, digits, punctuation, spaces)")
    if len(text) > max_chars:
        raise InvalidInputError(field, f"is {len(text)} characters long, over the limit of {max_chars}",
                                fix=f"use a shorter {field} (at most {max_chars} characters); keep long data "
                                    "in the input instead")
    return text


def check_lookup_id(value: object, field: str = "instance_id") -> str:
    """An id that only looks an instance up: a ``str`` without NUL or lone surrogates."""
    text = check_str(value, field)
    _unstorable(text, field)
    return text


def check_text(value: object, field: str, max_chars: int | None = None) -> str:
    """Free text (payload, custom status, reason): any Unicode except NUL and lone surrogates."""
    text = check_str(value, field)
    _unstorable(text, field)
    if max_chars is not None and len(text) > max_chars:
        raise InvalidInputError(field, f"is {len(text)} characters long, over the limit of {max_chars}",
                                fix=f"shorten {field} to at most {max_chars} characters")
    return text


def check_seconds(value: object, field: str, *, maximum: float = MAX_TIMER_SECONDS,
                  allow_infinite: bool = False) -> float:
    """A duration (``timedelta`` or seconds) from 0 to ``maximum``; else :class:`ConfigurationError`.

    Durations keep the error of every other duration setting (:func:`~duroxide_runtime.options.to_seconds`):
    a wrong type, NaN, a negative or an over-long value raises :class:`ConfigurationError` naming ``field``.
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigurationError(f"{field} must be a timedelta or a number of seconds, got {type(value).__name__}",
                                 fix=f"pass e.g. timedelta(seconds=5) or 5.0 as {field}")
    if isinstance(seconds, float) and math.isnan(seconds):
        raise ConfigurationError(f"{field} is NaN", fix=f"pass a number of seconds from 0 to {maximum:g} as {field}")
    if seconds < 0:
        raise ConfigurationError(f"{field} must not be negative (got {seconds})", fix=f"pass {field} >= 0")
    if seconds > maximum and not (allow_infinite and seconds == math.inf):
        raise ConfigurationError(f"{field} is {seconds:g} seconds, over the limit of {maximum:g} (100 years)",
                                 fix=f"pass at most {maximum:g} seconds as {field}")
    return float(seconds)


def check_count(value: object, field: str, minimum: int, maximum: int) -> int:
    """A whole number from ``minimum`` to ``maximum`` (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{field} must be int, got {type(value).__name__}", fix=f"pass a whole number as {field}")
    if not minimum <= value <= maximum:
        raise InvalidInputError(field, f"is {value}, outside {minimum}..{maximum}",
                                fix=f"pass {field} from {minimum} to {maximum}")
    return value
