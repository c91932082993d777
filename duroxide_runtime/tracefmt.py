"""Formatting and emitting trace messages: the one path every trace call takes.

``ctx.trace(...)`` in an orchestration, ``ActivityContext.trace(...)`` in an
activity and the ``durable_trace_*`` forms of the macro layer (rewritten or
not) all end in :func:`emit`, so a message reads the same wherever it was
written. A trace is a side channel: it must never fail the orchestration or
activity that writes it, so nothing here raises for a bad format or a field
name - a problem is reported in the log instead.

Format rules (``str.format``, plus the spellings of the Rust design):

* ``{}``, ``{0}``, ``{name}``, ``{!r}``, ``{:>8}``, ``{:.2f}`` ... mean what
  they mean in ``str.format``; positional placeholders take the positional
  arguments, named ones the keyword fields;
* ``{:?}`` is ``repr(value)`` (Rust's Debug); ``{:#?}`` is ``pprint.pformat``;
  a spec before the ``?`` pads the text (``{:>12?}``);
* a precision without a type (``{:.2}``) formats a number with that many
  decimals, as Rust does (``12.3456`` -> ``12.35``; Python alone would give
  ``12``); for text it keeps that many characters, as in both languages;
* a message without positional arguments, whose placeholders name none of its
  keyword fields, is logged exactly as written, so an f-string with braces in
  it needs no escaping (the rule ``logging`` applies to ``%``).

When the format does not apply (too few or too many arguments, a spec the
value rejects, a ``__format__``/``__str__``/``__repr__`` that raises, a
message that is not a ``str``), the record carries the message as written
followed by the arguments' reprs, its ``trace_problem`` attribute names the
problem, and a WARNING record on the same logger says what went wrong.

Keyword fields become attributes of the log record. A field whose name is
taken - by ``logging.LogRecord`` (``name``, ``msg``, ``args``, ``message``,
``levelname``, ``exc_info``, ``asctime``, ``getMessage``, ...), by the
context duroxide attaches (``instance_id``, ``execution_id``,
``orchestration``, ``version``, ``activity``, ``event_id``, ``attempt``) or by
this module (``trace_fields``, ``trace_problem``) - is stored as
``field_<name>`` instead (``name=`` -> ``record.field_name``). Every field,
under the name it was given, is also in the dict ``record.trace_fields``.

A record's ``pathname``/``lineno`` are those of the user's trace call, not of
duroxide's code in between; a level the logger does not log costs no formatting.

Example::

    emit(logger, level_number("INFO"), "charged ${:.2} for {}", (12.3456, "o-1"), {"order_id": "o-1"},
         {"instance_id": "i1"})       # -> "charged $12.35 for o-1", record.order_id == "o-1"
"""

from __future__ import annotations

import decimal
import logging
import numbers
import pprint
import re
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import FrameType
from typing import Any

from .errors import ConfigurationError

__all__ = ["skip_frames_of", "LEVELS", "RESERVED_FIELDS", "FIELD_PREFIX", "level_number", "format_message", "record_extra", "emit",
           "safe_repr"]

LEVELS: Mapping[str, int] = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
                             "WARNING": logging.WARNING, "ERROR": logging.ERROR}

#: Prefix of a keyword field stored under another name because its own is taken.
FIELD_PREFIX = "field_"

_CONTEXT_FIELDS = frozenset({"instance_id", "execution_id", "orchestration", "version", "activity", "event_id",
                             "attempt"})
_OWN_FIELDS = frozenset({"trace_fields", "trace_problem"})
# Everything a LogRecord has or gets: its attributes (``makeRecord`` refuses to overwrite
# them), the two a Formatter adds later, and its methods (``getMessage=`` would break output).
_RECORD_ATTRS = (frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
                 | frozenset(dir(logging.LogRecord)) | {"message", "asctime", "taskName"})
#: Field names that are stored as ``field_<name>`` (and in ``trace_fields``).
RESERVED_FIELDS: frozenset[str] = _RECORD_ATTRS | _CONTEXT_FIELDS | _OWN_FIELDS

_FIX = ("match the placeholders to the arguments ({} or {0} per positional argument, {name} per keyword field; "
        "{:?} is repr, {:.2} two decimals), and write a literal brace as {{ or }}")

# The standard format-spec mini-language, to see whether a spec has a precision but no type.
_SPEC = re.compile(r"(?P<fill_align>.?[<>=^])?(?P<sign>[-+ ])?(?P<z>z)?(?P<alt>\#)?(?P<zero>0)?(?P<width>\d+)?"
                   r"(?P<grouping>[,_])?(?:\.(?P<precision>\d+))?(?P<type>[a-zA-Z%])?", re.DOTALL)
_REPR_LIMIT = 300


def level_number(level: object) -> int:
    """The ``logging`` level of a trace level name (``DEBUG``, ``INFO``, ``WARN``/``WARNING``, ``ERROR``)."""
    number = LEVELS.get(level.upper()) if isinstance(level, str) else None
    if number is None:
        raise ConfigurationError(f"unknown trace level {level!r}", fix="use DEBUG, INFO, WARN or ERROR")
    return number


# -- formatting -----------------------------------------------------------------------------


def safe_repr(value: object) -> str:
    """``repr(value)``, shortened; never raises (a repr that raises is described instead)."""
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - any user __repr__ may raise
        text = f"<{type(value).__name__} object; its repr raised {type(exc).__name__}>"
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "..."


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - any user __str__ may raise
        return safe_repr(value)


class _PlaceholderError(Exception):
    """One placeholder could not be filled; says which, with what, and why."""


class _CountError(Exception):
    """Positional arguments were left over."""


class _Formatter(string.Formatter):
    """``str.format`` with the Rust spellings, and errors that name the placeholder."""

    def __init__(self) -> None:
        self.field = ""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        self.field = field_name  # auto-numbered fields arrive here already numbered ("0", "1", ...)
        try:
            return super().get_field(field_name, args, kwargs)
        except (IndexError, KeyError):
            root = _root(field_name)
            if not ((root.isdigit() and int(root) < len(args)) or root in kwargs):
                raise  # no such argument or field: reported as such by format_message
            raise _PlaceholderError(f"placeholder {{{field_name}}} could not be looked up in its argument") from None
        except Exception as exc:  # noqa: BLE001 - a property of the argument raised
            raise _PlaceholderError(f"placeholder {{{field_name}}} could not be looked up: "
                                    f"{type(exc).__name__}: {_safe_str(exc)}") from None

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        try:
            return super().convert_field(value, conversion)
        except Exception as exc:  # noqa: BLE001 - the value's __repr__/__str__ raised
            raise _PlaceholderError(f"placeholder {{{self.field}!{conversion}}} cannot convert "
                                    f"{type(value).__name__} value: {type(exc).__name__}: {_safe_str(exc)}") from None

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return _format_one(value, format_spec)
        except Exception as exc:  # noqa: BLE001 - a spec the value rejects, or a raising __format__
            shown = f"{{{self.field}:{format_spec}}}" if format_spec else f"{{{self.field}}}"
            raise _PlaceholderError(f"placeholder {shown} cannot format "
                                    f"{type(value).__name__} {safe_repr(value)}: "
                                    f"{type(exc).__name__}: {_safe_str(exc)}") from None

    def check_unused_args(self, used_args: set[int | str], args: Sequence[Any],
                          kwargs: Mapping[str, Any]) -> None:
        # Rust refuses extra arguments at compile time; here they would vanish from the log silently.
        if any(i not in used_args for i in range(len(args))):
            raise _CountError()


def _format_one(value: Any, spec: str) -> str:
    """``format(value, spec)`` with ``{:?}``/``{:#?}`` as repr and ``{:.N}`` of a number as N decimals."""
    if spec.endswith("?"):
        inner = spec[:-1]
        m = _SPEC.fullmatch(inner)
        if m is not None and m["precision"] is not None and _is_number(value):
            return _format_one(value, inner)  # Rust's {:.2?} of a float is its {:.2}
        pretty = m is not None and m["alt"] is not None
        text = pprint.pformat(value) if pretty else repr(value)
        if pretty and m is not None:
            inner = inner[:m.start("alt")] + inner[m.end("alt"):]  # '#' means pretty, not a str flag
        return format(text, inner)
    m = _SPEC.fullmatch(spec)
    if m is not None and m["precision"] is not None and m["type"] is None and _is_number(value):
        if isinstance(value, (int, float, decimal.Decimal)):
            return format(value, spec + "f")
        return format(float(value), spec + "f")  # e.g. Fraction, which has no 'f' before Python 3.12
    if m is not None and m["precision"] is not None and isinstance(value, bool):
        return format(str(value), spec)  # Rust pads a bool as text; int's format refuses a precision
    return format(value, spec)


def _is_number(value: object) -> bool:
    return isinstance(value, (numbers.Real, decimal.Decimal)) and not isinstance(value, bool)


def _placeholders(fmt: str) -> Iterable[tuple[str, str]]:
    """``(field name, spec)`` of every placeholder, nested ones in specs included (may raise ValueError)."""
    for _literal, name, spec, _conv in string.Formatter().parse(fmt):
        if name is not None:
            yield name, spec or ""
            if spec and "{" in spec:
                yield from _placeholders(spec)


def _root(field_name: str) -> str:
    return re.split(r"[.\[]", field_name, maxsplit=1)[0]


def _count_problem(fmt: str, given: int) -> str:
    auto = manual = 0
    for name, _spec in _placeholders(fmt):
        root = _root(name)
        if root == "":
            auto += 1
        elif root.isdigit():
            manual = max(manual, int(root) + 1)
    needed = max(auto, manual)
    return (f"the format has {needed} positional placeholder{'s' * (needed != 1)} but "
            f"{given} argument{'s' * (given != 1)} {'was' if given == 1 else 'were'} given")


def format_message(fmt: object, args: Sequence[Any], fields: Mapping[str, Any]) -> tuple[str, str | None]:
    """The message of a trace call, and the problem that kept it from being formatted (or ``None``).

    Never raises. On a problem the message is ``fmt`` as written followed by the
    arguments' reprs, so nothing the caller wanted to log is lost.
    """
    if not isinstance(fmt, str):
        return _unformatted(_safe_str(fmt), args), f"the message is of type {type(fmt).__name__}, not str"
    if not args:
        try:
            named = {_root(name) for name, _spec in _placeholders(fmt)}
        except ValueError:
            return fmt, None  # not a format string, and nothing to fill in: it is plain text
        if not named & fields.keys():
            return fmt, None
    try:
        return _Formatter().vformat(fmt, tuple(args), dict(fields)), None
    except _PlaceholderError as exc:
        problem = str(exc)
    except (_CountError, IndexError):
        try:
            problem = _count_problem(fmt, len(args))
        except ValueError as exc:
            problem = f"not a valid format string: {exc}"
    except KeyError as exc:
        problem = f"the placeholder {{{_safe_str(exc.args[0]) if exc.args else '?'}}} names no keyword field"
    except ValueError as exc:
        problem = f"not a valid format string: {exc}"
    except Exception as exc:  # noqa: BLE001 - whatever else user values can raise
        problem = f"{type(exc).__name__}: {_safe_str(exc)}"
    return _unformatted(fmt, args), problem


def _unformatted(text: str, args: Sequence[Any]) -> str:
    if not args:
        return text
    return f"{text} [args: {', '.join(safe_repr(a) for a in args)}]"


# -- the record -----------------------------------------------------------------------------


def record_extra(context: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra`` of a trace record: ``context``, each field as an attribute, all fields in ``trace_fields``.

    A field whose name is in :data:`RESERVED_FIELDS` becomes ``field_<name>`` (more
    prefixes if that is taken too), so ``logging`` never refuses the record and the
    context attached by duroxide is never overwritten.
    """
    extra: dict[str, Any] = dict(context)
    renamed: list[tuple[str, Any]] = []
    for key, value in fields.items():
        if key in RESERVED_FIELDS or key in context:
            renamed.append((key, value))
        else:
            extra[key] = value
    for key, value in renamed:
        target = FIELD_PREFIX + key
        while target in extra or target in RESERVED_FIELDS:
            target = FIELD_PREFIX + target
        extra[target] = value
    extra["trace_fields"] = dict(fields)
    return extra


#: Modules whose frames a record skips to reach the user's trace call; a layer above the runtime
#: that wraps the trace calls adds its own with :func:`skip_frames_of` (the runtime never names it).
_INTERNAL_MODULES = {__name__, "duroxide_runtime.context", "duroxide_runtime.activity"}


def skip_frames_of(module: str) -> None:
    """Make records skip the frames of ``module``, a wrapper of the trace calls: ``skip_frames_of(__name__)``."""
    _INTERNAL_MODULES.add(module)


def _stacklevel() -> int:
    """The ``stacklevel`` that makes the record point at the user's trace call, not at duroxide."""
    frame: FrameType | None = sys._getframe(1)  # emit()
    level = 1
    while frame is not None and frame.f_globals.get("__name__") in _INTERNAL_MODULES and frame.f_back is not None:
        frame = frame.f_back
        level += 1
    return level


def emit(logger: logging.Logger, level: int, fmt: object, args: Sequence[Any], fields: Mapping[str, Any],
         context: Mapping[str, Any]) -> None:
    """Log one trace record (and a WARNING if its format did not apply); never raises for ``fmt`` or ``fields``.

    ``context`` is what duroxide attaches (instance id, ...); see the module docstring for the rules.
    """
    if not logger.isEnabledFor(level):
        return  # like logging itself: a disabled level costs no formatting
    message, problem = format_message(fmt, args, fields)
    extra = record_extra(context, fields)
    stacklevel = _stacklevel()
    if problem is not None:
        extra["trace_problem"] = problem
    logger.log(level, message, extra=extra, stacklevel=stacklevel)
    if problem is not None:
        warning = {**context, "trace_problem": problem, "trace_fields": {}}
        logger.warning(f"trace message {safe_repr(fmt)} was logged unformatted: {problem}. Fix: {_FIX}",
                       extra=warning, stacklevel=stacklevel)
