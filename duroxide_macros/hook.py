"""The meta-path import hook that rewrites modules using the ``durable(...)`` forms.

Modelled on pytest's assertion rewriter:

* it claims only modules that import from ``duroxide_macros`` (see
  :mod:`duroxide_macros.ownership` for how that is decided, mostly without
  reading a file); every other module, the standard library and duroxide
  itself are loaded by Python's own loaders, and nothing is written for them;
* it asks the finders after itself on ``sys.meta_path`` for the module (so
  setuptools' editable-install finders and pytest's assertion rewriter keep
  working) and hands their answer back untouched when the module is not ours;
* it caches its output like bytecode (:mod:`duroxide_macros.cache`), in
  ``__pycache__`` under its own file name; the cache is read even under
  ``PYTHONDONTWRITEBYTECODE`` (which only stops writing, as for ``.pyc``);
  libcst is imported only when a module must really be rewritten;
* every line keeps its number, so tracebacks, ``inspect``, debuggers and
  coverage point at the user's own lines;
* its loader is a :class:`importlib.machinery.SourceFileLoader`, so
  ``importlib.resources`` and ``pkgutil.get_data`` work for rewritten packages;
* test modules that pytest would assertion-rewrite get both rewrites.

Problems found while expanding are raised as :class:`DurableExpansionError`
(a ``SyntaxError``), printed as ``path:line:col: message`` for each.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import cache, ownership
from .cache import cache_path
from .problems import Problem

if TYPE_CHECKING:
    from .expand import Expansion

__all__ = ["DurableFinder", "DurableLoader", "DurableExpansionError", "install", "installed",
           "imported_before_install", "cache_path", "compile_source", "load_code"]


class DurableExpansionError(SyntaxError):
    """A module misuses the forms; each problem is listed as ``path:line:col: message``."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        first = problems[0]
        listing = "\n".join(str(p) for p in problems)
        super().__init__(f"duroxide: {len(problems)} problem(s) in {first.path}:\n{listing}",
                         (first.path, first.line, first.column, None))
        self.problems = list(problems)

    def __reduce__(self) -> tuple[type[DurableExpansionError], tuple[list[Problem]]]:
        # SyntaxError's own reduce passes (msg, location) to this one-argument __init__.
        return (type(self), (self.problems,))

    def __str__(self) -> str:
        return str(self.msg)


def _pytest_flavour(pytest_hook: Any) -> str:
    if pytest_hook is None:
        return ""
    import pytest

    return f"pytest-{pytest.__version__}"  # its assertion rewriting changes between versions


def _expand(source: str, path: str, module: str | None) -> Expansion:
    from .expand import expand  # libcst: imported only when a module really is rewritten

    return expand(source, path, module=module)


def compile_source(source: bytes, path: str, pytest_hook: Any = None, *, module: str | None = None,
                   extra_problems: Iterable[Problem] = (),
                   optimize: int = -1) -> tuple[types.CodeType, tuple[str, ...]]:
    """Expand ``source`` and compile it for ``path``: (code, the other files the expansion read).

    Raises :class:`DurableExpansionError` listing ``extra_problems`` and the expansion's problems.
    ``pytest_hook`` is pytest's assertion-rewriting hook, to apply its rewrite too.
    """
    result = _expand(importlib.util.decode_source(source), path, module)
    problems = [*extra_problems, *result.problems]
    if problems:
        raise DurableExpansionError(problems)
    dependencies = tuple(result.dependencies)
    if pytest_hook is not None:
        import ast

        # pytest has no public API to assertion-rewrite a tree: its hook only rewrites
        # the files it loads itself, and the text we compile is not the file's.
        from _pytest.assertion.rewrite import rewrite_asserts

        tree = ast.parse(result.code, path)
        rewrite_asserts(tree, result.code.encode(), path, pytest_hook.config)
        return compile(tree, path, "exec", dont_inherit=True, optimize=optimize), dependencies
    return compile(result.code, path, "exec", dont_inherit=True, optimize=optimize), dependencies


def load_code(source: bytes, path: str, *, module: str | None, pytest_hook: Any = None, main: bool = False,
              force_write: bool = False, optimize: int | None = None) -> types.CodeType:
    """The rewritten code of ``source``: from the cache, or expanded (and cached).

    ``main``: the program's main script, whose statements above ``import
    duroxide_macros.install`` are reported as problems too (it is cached apart, as
    the cache never holds code with problems). The cache is written unless
    ``PYTHONDONTWRITEBYTECODE`` is set (``force_write``: ``duroxide-expand
    --compile``, which pre-builds caches for containers that set it).
    """
    key = cache.cache_key(source, _pytest_flavour(pytest_hook) + ("main" if main else ""))
    where = cache_path(path, optimize)
    code = cache.read_cache(where, key, path)
    if code is not None:
        return code
    extra: Iterable[Problem] = ()
    if main:
        from .mainscript import statements_before_install

        extra = statements_before_install(source, path)
    code, dependencies = compile_source(source, path, pytest_hook, module=module, extra_problems=extra,
                                        optimize=-1 if optimize is None else optimize)
    if force_write or not sys.dont_write_bytecode:
        cache.write_cache(where, key, path, code, dependencies)
    return code


class DurableLoader(importlib.machinery.SourceFileLoader):
    """Loads one module that imports from ``duroxide_macros``: from the cache, or by expanding it.

    A ``SourceFileLoader`` in every other respect (``get_data``, ``get_source``,
    resource readers), so ``importlib.resources`` and ``pkgutil.get_data`` work.
    """

    def __init__(self, fullname: str, path: str, source: bytes | None = None,
                 code: types.CodeType | None = None, pytest_hook: Any = None) -> None:
        super().__init__(fullname, path)
        self._source = source
        self._code = code
        self._pytest_hook = pytest_hook

    def get_code(self, fullname: str) -> types.CodeType:
        code, self._code = self._code, None
        if code is not None:
            return code
        source, self._source = self._source, None
        if source is None:  # a second exec of the same spec: read the file again
            source = self.get_data(self.path)
        return load_code(source, self.path, module=fullname, pytest_hook=self._pytest_hook)


def _read_whole(path: str) -> bytes:
    """The file's bytes in as few system calls as possible: every project module imported pays this."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) == size:
            return data  # the usual case: one read, to the end of the file
        chunks = [data]  # the file changed under us, or a short read: read on to the end
        while more := os.read(fd, 1 << 16):
            chunks.append(more)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _pytest_rewriter(loader: object) -> bool:
    rewrite = sys.modules.get("_pytest.assertion.rewrite")
    hook = getattr(rewrite, "AssertionRewritingHook", None)
    return hook is not None and isinstance(loader, hook)


class DurableFinder(importlib.abc.MetaPathFinder):
    """Claims modules that import from ``duroxide_macros``; hands everything else back as found."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if ownership.skipped_by_name(fullname, path):
            return None  # the import system asks the next finders, as if we were not there
        found = self._next_spec(fullname, path, target)
        if found is None:
            return None
        spec, source_file, pytest_hook = found
        origin = spec.origin
        if not source_file or origin is None or not ownership.may_read(fullname, origin):
            return spec
        try:
            source = _read_whole(origin)
        except OSError:
            return spec
        if not ownership.mentions_duroxide_macros(source):
            return spec
        # Rewritten before (this very source)? Then it is ours, and the cache has its code.
        code = cache.read_cache(cache_path(origin), cache.cache_key(source, _pytest_flavour(pytest_hook)), origin)
        if code is None and not ownership.imports_duroxide_macros(source):
            return spec
        loader = DurableLoader(fullname, origin, source, code, pytest_hook)
        return importlib.util.spec_from_file_location(fullname, origin, loader=loader,
                                                      submodule_search_locations=spec.submodule_search_locations)

    def _next_spec(self, fullname: str, path: Sequence[str] | None,
                   target: types.ModuleType | None
                   ) -> tuple[importlib.machinery.ModuleSpec, bool, Any] | None:
        """What the finders after us find: (spec, is it a plain source file, pytest's hook or None).

        Asking them ourselves (rather than only ``PathFinder``) keeps editable
        installs' finders and pytest's rewriter in the game; handing their spec
        back when the module is not ours spares the import system a second lookup
        (it is the spec the import system would get if we declined).
        """
        meta = sys.meta_path
        start = next((i + 1 for i, f in enumerate(meta) if f is self), 0)
        for finder in meta[start:]:
            find = getattr(finder, "find_spec", None)
            if find is None:
                return None  # a legacy finder: let the import system handle the rest in order
            spec = find(fullname, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if _pytest_rewriter(loader):
                return spec, True, loader
            # built-in, extension, namespace, zip, sourceless...: never ours
            return spec, type(loader) is importlib.machinery.SourceFileLoader, None
        return None


_finder = DurableFinder()
_modules_before: frozenset[str] | None = None


def install() -> DurableFinder:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    global _modules_before
    if _finder not in sys.meta_path:
        if _modules_before is None:  # remembered to explain a durable() that was not rewritten
            _modules_before = frozenset(sys.modules)
        sys.meta_path.insert(0, _finder)
    return _finder


def installed() -> bool:
    """Is the hook on ``sys.meta_path``?"""
    return _finder in sys.meta_path


def imported_before_install(module: str) -> bool:
    """Was ``module`` already imported when the hook was first installed?"""
    return _modules_before is not None and module in _modules_before
