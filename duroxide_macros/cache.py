"""The cache of rewritten modules: where it lives, what keys it, how it is read and written.

Like CPython's bytecode cache, and beside it: ``__pycache__/mod.cpython-311.duroxide-1.pyc``
(``.opt-N`` for ``-O``; under ``sys.pycache_prefix`` when that is set). A cache file holds

* a magic number (ours plus the interpreter's bytecode magic),
* a 16-byte key: a hash of the source text, the duroxide version, :data:`EXPANDER_VERSION`
  and the flavour (pytest's assertion rewriting, say),
* the ``(path, mtime_ns, size)`` stamp of every other source file the expansion read
  (``Expansion.dependencies``; stored relative to the module's directory, so a moved
  project keeps its cache), and the marshalled code.

The source is hashed rather than stamped because an edit that keeps the size and
the mtime must still invalidate the cache. This module never imports libcst: a
program whose rewritten modules are all cached never pays for it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import os
import tempfile
import types
from collections.abc import Iterable

__all__ = ["EXPANDER_VERSION", "cache_path", "cache_key", "read_cache", "write_cache", "fix_filenames"]

EXPANDER_VERSION = 4  # bump when expand()'s output changes: it keys the cache

_MAGIC = b"DRXC" + importlib.util.MAGIC_NUMBER
_KEY_SIZE = 16

Stamp = tuple[str, int, int]


def cache_path(source_path: str, optimization: int | None = None) -> str:
    """Where the rewritten code of ``source_path`` is cached (follows ``sys.pycache_prefix`` and ``-O``).

    ``optimization`` is the ``-O`` level to name (default: this interpreter's).
    """
    if optimization is None:
        pyc = importlib.util.cache_from_source(source_path)
    else:
        pyc = importlib.util.cache_from_source(source_path, optimization=optimization or "")
    return f"{pyc[:-4]}.duroxide-{EXPANDER_VERSION}.pyc"


@functools.cache
def _duroxide_version() -> str:
    # Read once per process, and only when a module is rewritten or loaded from the cache:
    # an upgrade of duroxide may change what the rewritten code calls.
    import importlib.metadata

    try:
        return importlib.metadata.version("duroxide")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path
        return "unknown"


def cache_key(source: bytes, flavour: str = "") -> bytes:
    """The key of ``source`` rewritten in ``flavour`` by this duroxide and this expander."""
    h = hashlib.blake2b(digest_size=_KEY_SIZE)
    h.update(f"{_duroxide_version()}\0{EXPANDER_VERSION}\0{flavour}\0".encode())
    h.update(source)
    return h.digest()


def _stamp(path: str, base: str) -> Stamp:
    st = os.stat(path)
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive (Windows): keep it absolute
        rel = os.path.abspath(path)
    return (rel, st.st_mtime_ns, st.st_size)


def _fresh(stamps: object, base: str) -> bool:
    if not isinstance(stamps, tuple):
        return False
    for stamp in stamps:
        if not (isinstance(stamp, tuple) and len(stamp) == 3 and isinstance(stamp[0], str)):
            return False
        try:
            st = os.stat(os.path.join(base, stamp[0]))
        except OSError:
            return False  # a dependency vanished
        if (st.st_mtime_ns, st.st_size) != stamp[1:]:
            return False
    return True


def read_cache(path: str, key: bytes, source_path: str) -> types.CodeType | None:
    """The cached code for ``key``, or None if absent, stale or corrupt.

    Read even under ``PYTHONDONTWRITEBYTECODE``, as CPython reads ``.pyc`` files.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = len(_MAGIC)
    if data[:head] != _MAGIC or data[head:head + _KEY_SIZE] != key:
        return None
    try:
        payload = marshal.loads(data[head + _KEY_SIZE:])
    except (EOFError, ValueError, TypeError):
        return None
    if not (isinstance(payload, tuple) and len(payload) == 2 and isinstance(payload[1], types.CodeType)):
        return None
    stamps, code = payload
    if not _fresh(stamps, os.path.dirname(source_path)):
        return None
    return fix_filenames(code, source_path)


def write_cache(path: str, key: bytes, source_path: str, code: types.CodeType,
                dependencies: Iterable[str] = ()) -> bool:
    """Store ``code`` atomically; False if it could not be written (a read-only tree only costs a rewrite)."""
    base = os.path.dirname(source_path)
    try:
        stamps = tuple(_stamp(dep, base) for dep in dependencies)
    except OSError:
        return False  # a dependency vanished while we expanded: don't record a verdict on it
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".duroxide-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + key + marshal.dumps((stamps, code)))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


def fix_filenames(code: types.CodeType, path: str) -> types.CodeType:
    """``code`` with ``co_filename`` set to ``path`` throughout (the project moved since it was cached).

    What CPython does for moved ``.pyc`` files, with the public ``code.replace``.
    """
    if code.co_filename == path:
        return code
    consts = tuple(fix_filenames(c, path) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=path, co_consts=consts)
