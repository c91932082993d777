"""Which modules the import hook claims, decided as cheaply as possible.

A module is ours only if it imports from ``duroxide_macros`` (a real ``import
duroxide_macros...`` or ``from duroxide_macros... import`` statement); a module
that does not is left to Python's own loaders, and nothing is written for it.
The decision is taken in this order, so most modules are settled before any
file is read:

1. by name: the standard library (``sys.stdlib_module_names``; for a submodule,
   only if its parent package is in the standard library's directory), duroxide's
   own packages and the :data:`SKIPPED` packages are never ours;
2. by location: a file in the standard library's directory is never ours; a
   file under ``site-packages``/``dist-packages`` belongs to an installed
   distribution, and is read only if that distribution declares a ``duroxide``
   entry point or requires the ``duroxide`` distribution (by the packages its
   ``RECORD`` lists: in a namespace package shared with other distributions,
   ``acme.flows`` is read and ``acme.billing`` is not);
3. by content: any other file (the user's project) is read; a bytes search for
   ``duroxide_macros`` rejects almost all of them, and the import statement is
   then confirmed with :mod:`ast` (only where the cache did not already answer).

This module never imports libcst.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sys
from collections.abc import Sequence

__all__ = ["SKIPPED", "skipped_by_name", "may_read", "imports_duroxide_macros", "mentions_duroxide_macros"]

#: Never claimed, by whole dotted name or package (``pydantic`` and ``pydantic.x``, not ``pydantic_orders``):
#: duroxide itself and the libraries the hook and the runtime run on.
SKIPPED = frozenset({
    "duroxide_runtime", "duroxide_macros", "libcst", "pydantic", "pydantic_core", "orjson", "aiosqlite",
    "asyncpg", "typing_extensions", "_pytest", "pytest", "pluggy", "hypothesis",
})

_STDLIB_NAMES = frozenset(sys.stdlib_module_names) | {"__main__", "__mp_main__"}


def _stdlib_dirs() -> tuple[str, ...]:
    # The directory of os.py is the standard library's (lib-dynload is inside it);
    # in a virtual environment it is the base interpreter's.
    base = os.path.dirname(os.__file__)
    return tuple({os.path.normcase(d) + os.sep for d in (base, os.path.realpath(base))})


_STDLIB_DIRS = _stdlib_dirs()
_SITE_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_MARKER = b"duroxide_macros"


def skipped_by_name(fullname: str, path: Sequence[str] | None = None) -> bool:
    """Is ``fullname`` never ours, by its name alone (and, for a submodule, its parent's ``path``)?"""
    top, _, _ = fullname.partition(".")
    if top in SKIPPED:
        return True
    if top in _STDLIB_NAMES:
        # A submodule of a project's own package that shadows a standard-library name
        # (`mailbox.flows`, the project having a `mailbox/` package) is not the standard library's.
        return not path or "." not in fullname or all(os.path.normcase(p).startswith(_STDLIB_DIRS) for p in path)
    if "." in fullname:  # dotted entries of SKIPPED (none today) match whole packages too
        parts = fullname.split(".")
        return any(".".join(parts[:i]) in SKIPPED for i in range(2, len(parts) + 1))
    return False


def may_read(fullname: str, origin: str) -> bool:
    """May the hook read the source at ``origin`` to decide whether ``fullname`` is ours?"""
    norm = os.path.normcase(origin)
    if any(marker in norm for marker in _SITE_MARKERS):
        aware = _aware_top_levels()
        if fullname.partition(".")[0] in aware:
            return True
        # an aware distribution inside a namespace package shared with others (``acme.flows``)
        parts = fullname.split(".")
        return any(".".join(parts[:i]) in aware for i in range(2, len(parts) + 1))
    return not norm.startswith(_STDLIB_DIRS)


def mentions_duroxide_macros(source: bytes) -> bool:
    """The cheap pre-check: no module imports ``duroxide_macros`` without naming it."""
    return _MARKER in source


def imports_duroxide_macros(source: bytes | str) -> bool:
    """Does ``source`` hold an ``import duroxide_macros...`` or ``from duroxide_macros... import`` statement?

    A mention in a comment, a string or a docstring does not count. Source that
    does not parse is not ours (Python's own loader reports the error as usual).
    """
    if not (_MARKER in source if isinstance(source, bytes) else _MARKER.decode() in source):
        return False
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    # Only statements can import: walk statement lists, never into expressions.
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            if any(_ours(alias.name) for alias in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None and _ours(node.module):
                return True
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, name, None)
                if isinstance(children, list):
                    todo.extend(children)
    return False


def _ours(module: str) -> bool:
    return module == "duroxide_macros" or module.startswith("duroxide_macros.")


# -- installed distributions -------------------------------------------------------------

_REQUIRES_DUROXIDE = re.compile(rb"^Requires-Dist:[ \t]*duroxide(?![\w.-])", re.MULTILINE | re.IGNORECASE)
_DUROXIDE_GROUP = re.compile(rb"^\[duroxide\][ \t]*$", re.MULTILINE)


@functools.cache
def _aware_top_levels() -> frozenset[str]:
    """Top-level names of the installed distributions that may use the forms (computed once, lazily).

    A distribution is "aware" if it declares a ``duroxide`` entry point or requires
    ``duroxide``. This reads the ``.dist-info`` folders on ``sys.path`` directly (as
    ``importlib.metadata`` finds them), and of each only ``entry_points.txt`` and the
    headers of ``METADATA``: ``importlib.metadata`` would read every ``METADATA`` whole
    (long descriptions included) and ``packages_distributions()`` every ``RECORD``,
    ten times the cost, paid by the first third-party module imported under the hook.
    """
    tops: set[str] = set()
    for entry in sys.path:
        folder = entry or "."
        try:
            names = os.listdir(folder)
        except OSError:
            continue  # a zip file, a missing directory
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                info = os.path.join(folder, name)
                try:
                    if _declares_entry_point(info) or _requires_duroxide(info):
                        tops.update(_top_levels(info))
                except (OSError, UnicodeDecodeError):
                    continue  # unreadable metadata: its modules stay unread
    return frozenset(tops)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _declares_entry_point(info: str) -> bool:
    text = _read(os.path.join(info, "entry_points.txt"))
    return bool(text and b"[duroxide]" in text and _DUROXIDE_GROUP.search(text))


def _requires_duroxide(info: str) -> bool:
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info, name), "rb") as f:
                headers = b""
                while b"\n\n" not in headers:  # the headers end at the first blank line
                    chunk = f.read(8192)
                    if not chunk:
                        break
                    headers += chunk
        except (FileNotFoundError, NotADirectoryError):
            continue
        headers = headers.split(b"\n\n", 1)[0]
        return b"duroxide" in headers.lower() and bool(_REQUIRES_DUROXIDE.search(headers))
    return False


def _top_levels(info: str) -> set[str]:
    """The (dotted) names of a distribution's packages and modules.

    From ``RECORD`` where there is one: ``top_level.txt`` names a namespace package shared
    with other distributions (``acme`` for ``acme/flows/...``), and their modules are not ours
    to read; the package that has an ``__init__.py`` (``acme.flows``) is the distribution's.
    """
    record = _read(os.path.join(info, "RECORD"))
    if record is None:
        declared = _read(os.path.join(info, "top_level.txt"))
        if declared:
            return {line.strip() for line in declared.decode().splitlines() if line.strip()}
        record = _read(os.path.join(info, "SOURCES.txt")) or b""
    paths = [line.split(",", 1)[0].strip().strip('"').replace("\\", "/") for line in record.decode().splitlines()]
    files = set(paths)
    tops: set[str] = set()
    for path in paths:
        parts = path.split("/")
        first = parts[0]
        if not first or first in ("..", "__pycache__") or first.endswith((".dist-info", ".egg-info")):
            continue
        if len(parts) == 1:
            if first.endswith(".py"):
                tops.add(first[:-3])
            continue
        depth = 1  # down through namespace packages (folders without __init__.py)
        while depth < len(parts) - 1 and "/".join(parts[:depth]) + "/__init__.py" not in files:
            depth += 1
        if "/".join(parts[:depth]) + "/__init__.py" in files:
            tops.add(".".join(parts[:depth]))
        elif parts[-1].endswith(".py"):  # a module right inside a namespace package
            tops.add(".".join([*parts[:-1], parts[-1][:-3]]))
    return tops
