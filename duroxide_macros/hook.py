"""The meta-path import hook that rewrites modules using the ``durable(...)`` forms.

Modelled on pytest's assertion rewriter:

* it claims only modules whose source mentions a form; every other module
  (and the standard library, and duroxide itself) is loaded by the normal
  ``SourceFileLoader``, and an empty ``...duroxide-1.<mtime>-<size>.noforms``
  file beside its ``.pyc`` remembers the verdict, so the source is not read
  again until it changes;
* it caches its output like bytecode, in ``__pycache__`` under its own file
  name (``mod.cpython-311.duroxide-1.pyc``, with ``.opt-N`` for ``-O``),
  keyed by a hash of the source; writes are atomic and errors writing are
  ignored; ``PYTHONDONTWRITEBYTECODE`` and ``sys.pycache_prefix`` are honoured;
* every line keeps its number, so tracebacks, ``inspect``, debuggers and
  coverage point at the user's own lines;
* test modules that pytest would assertion-rewrite get both rewrites.

Problems found while expanding are raised as :class:`DurableExpansionError`
(a ``SyntaxError``), printed as ``path:line:col: message`` for each.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import sysconfig
import tempfile
import types
from collections.abc import Sequence
from typing import Any

from .expand import EXPANDER_VERSION, Problem, expand, uses_forms

__all__ = ["DurableFinder", "DurableLoader", "DurableExpansionError", "install", "cache_path", "compile_source"]

_MAGIC = b"DRXC" + importlib.util.MAGIC_NUMBER
_SKIP_PREFIXES = ("duroxide_runtime", "duroxide_macros", "_pytest", "pytest", "pluggy", "libcst", "pydantic",
                  "asyncpg", "aiosqlite", "orjson", "hypothesis", "typing_extensions")


class DurableExpansionError(SyntaxError):
    """A module misuses the forms; each problem is listed as ``path:line:col: message``."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        first = problems[0]
        listing = "\n".join(str(p) for p in problems)
        super().__init__(f"duroxide: {len(problems)} problem(s) in {first.path}:\n{listing}",
                         (first.path, first.line, first.column, None))
        self.problems = list(problems)

    def __str__(self) -> str:
        return str(self.msg)


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {p for k in ("stdlib", "platstdlib") for p in (paths[k], os.path.realpath(paths[k]))}
    return tuple(os.path.normcase(d) + os.sep for d in dirs)


_STDLIB = _stdlib_dirs()


def cache_path(source_path: str) -> str:
    """Where the rewritten code of ``source_path`` is cached (follows ``sys.pycache_prefix`` and ``-O``)."""
    pyc = importlib.util.cache_from_source(source_path)
    return f"{pyc[:-4]}.duroxide-{EXPANDER_VERSION}.pyc"


def _pytest_rewriter(fullname: str, path: Sequence[str] | None) -> Any:
    """pytest's assertion-rewriting hook, if it would rewrite this module."""
    for finder in sys.meta_path:
        if type(finder).__name__ == "AssertionRewritingHook":
            try:
                if finder.find_spec(fullname, path) is not None:
                    return finder
            except Exception:  # noqa: BLE001 - pytest internals changed: fall back to our rewrite only
                return None
    return None


def compile_source(source: bytes, path: str, pytest_hook: Any = None) -> types.CodeType:
    """Expand ``source`` and compile it for ``path`` (raises DurableExpansionError on problems)."""
    result = expand(importlib.util.decode_source(source), path)
    if result.problems:
        raise DurableExpansionError(result.problems)
    if pytest_hook is not None:
        import ast

        from _pytest.assertion.rewrite import rewrite_asserts

        tree = ast.parse(result.code, path)
        rewrite_asserts(tree, result.code.encode(), path, pytest_hook.config)
        return compile(tree, path, "exec", dont_inherit=True)
    return compile(result.code, path, "exec", dont_inherit=True)


def _no_forms_marker(source_path: str, st: os.stat_result) -> str:
    """An empty file whose name says "this source, at this mtime and size, uses no form".

    Checking it costs one stat instead of reading and scanning the source, which
    keeps the hook's cost for ordinary modules near zero; an edit changes the
    name, so a stale verdict is never used.
    """
    return f"{cache_path(source_path)[:-4]}.{st.st_mtime_ns}-{st.st_size}.noforms"


def _touch(path: str) -> None:
    """Create a marker, removing the markers of earlier versions of the same source."""
    folder, name = os.path.split(path)
    stem = name.rsplit(".", 2)[0] + "."
    try:
        os.makedirs(folder, exist_ok=True)
        for old in os.listdir(folder):
            if old.startswith(stem) and old.endswith(".noforms"):
                os.unlink(os.path.join(folder, old))
        with open(path, "wb"):
            pass
    except OSError:
        pass  # a read-only tree only costs the scan next time


class DurableLoader(importlib.abc.SourceLoader):
    """Loads one module whose source uses the forms: from the cache, or by expanding it."""

    def __init__(self, fullname: str, path: str, source: bytes, pytest_hook: Any = None) -> None:
        self.name = fullname
        self.path = path
        self._source = source
        self._pytest_hook = pytest_hook

    def get_filename(self, fullname: str | None = None) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def get_code(self, fullname: str) -> types.CodeType:
        source = self._source
        digest = hashlib.blake2b(source, digest_size=16,
                                 person=b"pytest" if self._pytest_hook else b"").digest()
        cached = cache_path(self.path)
        code = _read_cache(cached, digest)
        if code is None:
            code = compile_source(source, self.path, self._pytest_hook)
            if not sys.dont_write_bytecode:
                _write_cache(cached, digest, code)
        return code


def _read_cache(path: str, digest: bytes) -> types.CodeType | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = len(_MAGIC)
    if data[:head] != _MAGIC or data[head:head + 16] != digest:
        return None
    try:
        code = marshal.loads(data[head + 16:])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) else None


def _write_cache(path: str, digest: bytes, code: types.CodeType) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".duroxide-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + digest + marshal.dumps(code))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only tree only costs the rewrite next time


class DurableFinder(importlib.abc.MetaPathFinder):
    """Claims modules whose source uses a form; everything else goes to the normal finders."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(_SKIP_PREFIXES):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if (spec is None or spec.origin is None or not spec.origin.endswith(".py")
                or not isinstance(spec.loader, importlib.machinery.SourceFileLoader)):
            return None
        origin = spec.origin
        if os.path.normcase(origin).startswith(_STDLIB) and "-packages" + os.sep not in origin:
            return None  # the standard library never uses the forms
        try:
            st = os.stat(origin)
            marker = _no_forms_marker(origin, st)
            if os.path.exists(marker):  # seen before, unchanged, and without forms
                return spec if self._only_trivial_finders_before_path_finder() else None
            with open(origin, "rb") as f:
                source = f.read()
        except OSError:
            return None
        if not uses_forms(source):
            if not sys.dont_write_bytecode:
                _touch(marker)
            return spec if self._only_trivial_finders_before_path_finder() else None
        loader = DurableLoader(fullname, origin, source, _pytest_rewriter(fullname, path))
        new_spec = importlib.util.spec_from_file_location(fullname, origin, loader=loader,
                                                          submodule_search_locations=spec.submodule_search_locations)
        return new_spec


    def _only_trivial_finders_before_path_finder(self) -> bool:
        """Would the normal import system find exactly ``PathFinder``'s spec after us?

        Then we hand that spec back instead of declining, which spares a second
        lookup of the same file (the hook's main cost for modules without forms).
        Any other finder in between (pytest's assertion rewriter, say) must get its turn.
        """
        seen_self = False
        for finder in sys.meta_path:
            if finder is self:
                seen_self = True
            elif finder is importlib.machinery.PathFinder:
                return seen_self
            elif seen_self and not _trivial_finder(finder):
                return False
        return False


def _trivial_finder(finder: object) -> bool:
    # Finders that only ever claim built-in, frozen or setuptools' own distutils modules.
    return (finder in (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter)
            or type(finder).__name__ == "DistutilsMetaFinder")


_finder = DurableFinder()


def install() -> DurableFinder:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    return _finder
