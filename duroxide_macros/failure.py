"""Where a failed orchestration failed: the user's frames of the traceback it recorded.

A Failed instance records its traceback as text (``ErrorDetails.traceback``),
written where it failed - maybe in another process. The text holds duroxide's
and asyncio's frames too and, when an activity or sub-orchestration failure
ended it, the task's own traceback before the orchestration's (the runtime
links them as Python links a ``__cause__``). :func:`failure_site` reads that
text back: the user's frames of the causal chain in call order, from the
orchestration down to the line that raised, and that innermost line.

Frames of ``duroxide_runtime``, ``duroxide_macros`` and the standard library
(``asyncio``, ``concurrent.futures``, ...) are not the user's. Frames of
installed libraries (``site-packages``) are shown, but the innermost line
named is in the user's own code when there is one.

Example::

    site = failure_site(status.details.traceback)
    site.innermost.location()   # 'app/orders.py:14 in charge_payment'
    print(site.describe())      # the lines OrchestrationFailedError adds to its message
"""

from __future__ import annotations

import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path, PurePath

import duroxide_runtime

__all__ = ["Frame", "FailureSite", "failure_site"]

#: How many of the user's frames the message shows (the innermost ones).
SHOWN_FRAMES = 5

_FILE_LINE = re.compile(r'^[\s|+\-]*File "(?P<path>.+)", line (?P<line>\d+), in (?P<function>.+)$')
_HEADER = "Traceback (most recent call last):"
# The links that make the exception above the cause of the one below (Python's explicit
# ``raise ... from``, and the runtime's link from a durable task to its awaiter);
# "During handling of the above exception" is a context, not a cause.
_CAUSE_LINK = "The above exception was the direct cause of the following exception:"
_TASK_LINK = re.compile(r"^The above exception was raised in (?P<task>.+); orchestration code received it")
_CONTEXT_LINK = "During handling of the above exception, another exception occurred:"
_MARKERS = re.compile(r"^[\s^~\-+|]*$")  # the ^^^^ / ~~~~ lines under a source line


def _internal_dirs() -> tuple[Path, ...]:
    dirs = {Path(duroxide_runtime.__file__).resolve().parent, Path(__file__).resolve().parent}
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(Path(path).resolve())
    return tuple(dirs)


_INTERNAL_DIRS = _internal_dirs()
_INTERNAL_PACKAGES = frozenset({"duroxide_runtime", "duroxide_macros"})
_LIBRARY_DIRS = frozenset({"site-packages", "dist-packages"})


@dataclass(frozen=True)
class Frame:
    """One frame of a recorded traceback: file, line, function, source line, and the task it ran in.

    Example::

        Frame("app/orders.py", 14, "charge", 'raise ValueError("declined")', "activity 'charge'").location()
        # 'app/orders.py:14 in charge'
    """

    path: str
    line: int
    function: str
    source: str = ""
    #: ``"activity 'charge'"`` or ``"sub-orchestration 'ship' (order-1::ship)"`` when the frame
    #: ran in that durable task, not in the failed orchestration itself.
    task: str | None = None

    def location(self) -> str:
        """``file:line in function``."""
        return f"{self.path}:{self.line} in {self.function}"

    @property
    def is_library(self) -> bool:
        """The frame is in an installed library (``site-packages``), not in the application."""
        return not _LIBRARY_DIRS.isdisjoint(PurePath(self.path).parts)


@dataclass(frozen=True)
class FailureSite:
    """The user's frames of a failure, outermost call first, and the innermost line of the user's own code.

    Example::

        site = failure_site(traceback_text)
        if site.innermost is not None:
            print("failed at", site.innermost.location())
    """

    frames: tuple[Frame, ...]
    innermost: Frame | None

    def describe(self) -> str:
        """The lines added to an error message: where, then the last frames (empty if none is known)."""
        if self.innermost is None:
            return ""
        lines = [f"  at {self.innermost.location()}",
                 "  last frames of its code (most recent call last; the full traceback is in "
                 "err.details.traceback):"]
        for frame in self.frames[-SHOWN_FRAMES:]:
            lines.append(f"    {frame.location()}" + (f" [{frame.task}]" if frame.task else ""))
            if frame.source:
                lines.append(f"      {frame.source}")
        return "\n".join(lines)


@dataclass
class _Section:
    """One ``Traceback (most recent call last):`` block and how it links to the block before it."""

    frames: list[Frame]
    caused_by_previous: bool
    task: str | None = None


def _is_user_path(path: str) -> bool:
    if path.startswith("<frozen "):
        return False
    if not _INTERNAL_PACKAGES.isdisjoint(PurePath(path).parts):
        return False  # also a traceback recorded by a duroxide installed elsewhere (another machine)
    if not _LIBRARY_DIRS.isdisjoint(PurePath(path).parts):
        return True
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return True
    return not any(resolved.is_relative_to(d) for d in _INTERNAL_DIRS)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" |+-"))


def _sections(text: str) -> list[_Section]:
    sections: list[_Section] = []
    caused = False
    task_start = 0  # the first section of the text the next task link closes
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip(" |")
        if line.endswith(_HEADER):
            sections.append(_Section([], caused))
            caused = False
            continue
        task = _TASK_LINK.match(line)
        if task is not None or line == _CAUSE_LINK:
            caused = True
            if task is not None:
                # Every block since the previous task link is that task's traceback (its own
                # chain, or a nested task's blocks, which keep the innermost task's name).
                for inner in sections[task_start:]:
                    inner.task = inner.task or task["task"]
                task_start = len(sections)
            continue
        if line == _CONTEXT_LINK:
            caused = False
            continue
        match = _FILE_LINE.match(raw)
        if match is None:
            continue
        if not sections:  # a shortened traceback that lost its header
            sections.append(_Section([], False))
        following = lines[i + 1] if i + 1 < len(lines) else ""
        # The source line is indented deeper than its File line; without one (no source file),
        # the next line is another frame or the exception's own line.
        deeper = _indent(following) > _indent(raw)
        source = following.strip(" |") if deeper and not _MARKERS.match(following) else ""
        sections[-1].frames.append(Frame(match["path"], int(match["line"]), match["function"], source))
    return sections


def failure_site(traceback_text: str) -> FailureSite:
    """The user's frames of a recorded traceback, outermost call first, and the innermost user line.

    Follows the causal chain back from the exception that ended the instance:
    through an activity or sub-orchestration failure to the task's own frames,
    and through ``raise ... from``; an exception that was only being handled
    (``During handling of the above exception ...``) is not followed.
    """
    sections = _sections(traceback_text)
    chain: list[_Section] = []
    for section in reversed(sections):  # from the exception that ended the instance back to its first cause
        chain.append(section)
        if not section.caused_by_previous:
            break
    frames = tuple(Frame(f.path, f.line, f.function, f.source, s.task)
                   for s in chain for f in s.frames if _is_user_path(f.path))
    own = [f for f in frames if not f.is_library]
    innermost = own[-1] if own else (frames[-1] if frames else None)
    return FailureSite(frames, innermost)

