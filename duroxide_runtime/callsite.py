"""Where orchestration code made a durable call: the ``file:line`` a schedule event records.

:func:`caller_source` walks the call stack outward from the command buffer and
returns the first frame that is neither duroxide (``duroxide_runtime``,
``duroxide_macros``) nor ``asyncio``: the user's ``ctx.schedule_activity(...)``,
the ``durable(f(x))`` line (the import hook keeps line numbers, and the
``f.call(ctx, x)`` it becomes runs through ``duroxide_macros``), or the
``await asyncio.sleep(5)`` (which reaches the buffer through asyncio and the
orchestration loop). The walk stops at the orchestration loop's callback runner:
below it are the engine and the application, never the orchestration's code. The
command buffer asks only while the loop runs orchestration code, so a command the
engine issues on its own (a cancellation's grace timer) has no source.

The buffer asks only when it records an event live (replay never records); the
context asks up front for a call with a retry policy or timeout, whose attempts
run in a task of their own. A look-up costs a dict look-up per frame (a few
frames): each code object is classified once, and each of its lines formatted
once. Paths are relative to the working directory when inside it (short), else
absolute.

Example::

    caller_source()   # 'shop/orders.py:42'
"""

from __future__ import annotations

import asyncio
import inspect
import os
from types import CodeType

__all__ = ["caller_source", "stop_at"]

_USER, _SKIP, _STOP = 0, 1, 2

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
# Package directories whose frames are never the user's call, with a trailing separator (a
# user's `asyncio_helpers/` is not asyncio). duroxide_macros is installed next to
# duroxide_runtime; its directory is named, never imported (the runtime does not import it).
_SKIPPED_DIRS: tuple[str, ...] = tuple(d + os.sep for d in (
    _RUNTIME_DIR,
    os.path.join(os.path.dirname(_RUNTIME_DIR), "duroxide_macros"),
    os.path.dirname(os.path.abspath(asyncio.__file__)),
))

class _Code:
    """What is known of one code object: whether it is the user's, and its lines formatted so far."""

    __slots__ = ("code", "kind", "lines")

    def __init__(self, code: CodeType, kind: int) -> None:
        self.code = code  # held, so that its id is not reused while cached
        self.kind = kind
        self.lines: dict[int, str] = {}


# Keyed by id(): hashing a code object hashes its constants, names and bytecode at every look-up.
_known: dict[int, _Code] = {}
_stops: dict[int, _Code] = {}
# Code compiled on the fly (exec, per-test modules) must not grow the cache forever.
_MAX_CACHED = 20_000


def stop_at(*codes: CodeType) -> None:
    """Mark the code objects below which orchestration code never runs (the loop's callback runner)."""
    for code in codes:
        _stops[id(code)] = _known[id(code)] = _Code(code, _STOP)


def _classify(code: CodeType) -> _Code:
    directory = os.path.dirname(os.path.abspath(code.co_filename)) + os.sep
    if len(_known) >= _MAX_CACHED:
        _known.clear()
        _known.update(_stops)
    known = _known[id(code)] = _Code(code, _SKIP if directory.startswith(_SKIPPED_DIRS) else _USER)
    return known


def _format(known: _Code, line: int) -> str:
    filename = known.code.co_filename
    if not filename.startswith("<"):
        absolute = os.path.abspath(filename)
        try:
            relative = os.path.relpath(absolute)
        except ValueError:  # another drive (Windows)
            relative = absolute
        filename = absolute if relative.startswith(os.pardir) else relative
    text = known.lines[line] = f"{filename}:{line}"
    return text


def caller_source() -> str | None:
    """``path:line`` of the orchestration code on the stack that made the current call, or ``None``."""
    frame = inspect.currentframe()
    known_codes = _known
    while frame is not None:
        code = frame.f_code
        known = known_codes.get(id(code))
        if known is None or known.code is not code:
            known = _classify(code)
        kind = known.kind
        if kind == _USER:
            line = frame.f_lineno
            text = known.lines.get(line)
            return text if text is not None else _format(known, line)
        if kind == _STOP:
            return None
        frame = frame.f_back
    return None
