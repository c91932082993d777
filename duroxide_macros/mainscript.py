"""The program's main script, rewritten: ``python app.py`` whose first line is ``import duroxide_macros.install``.

Python has already started running the script when that import runs, so the
script cannot be swapped for its rewritten code. Instead the import compiles
the script (through the cache, like any module), runs it in ``__main__``'s own
namespace and exits when it is done: the original script never gets past its
first line. Anything above that line has already run once and would run again,
so it is reported (see :func:`statements_before_install`).

multiprocessing's ``spawn`` and ``forkserver`` children re-run the main script
as ``__mp_main__`` with ``runpy``, which bypasses the import hook. So the parent
names :mod:`duroxide_macros._spawn_main` as ``__main__.__spec__``: the children
then run that module (``runpy.run_module``), which installs the hook and runs
the rewritten script in its place. The script's path travels in the
``DUROXIDE_MAIN_SCRIPT`` environment variable, which children inherit.
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
import sys
import types
from typing import Any

from .hook import install, load_code
from .problems import Problem

__all__ = ["run_main_if_importer", "run_in_child", "statements_before_install", "imports_install", "ENV_SCRIPT", "ENV_PACKAGE"]

ENV_SCRIPT = "DUROXIDE_MAIN_SCRIPT"
ENV_PACKAGE = "DUROXIDE_MAIN_PACKAGE"
SPAWN_MODULE = "duroxide_macros._spawn_main"


def _importer(frame: types.FrameType | None) -> types.FrameType | None:
    """The frame running the import statement: the first one outside the import machinery."""
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_globals.get("__name__") == "importlib"):
        frame = frame.f_back
    return frame


def imports_install(stmt: ast.stmt) -> bool:
    for node in ast.walk(stmt):
        if isinstance(node, ast.Import):
            if any(a.name == "duroxide_macros.install" or a.name.startswith("duroxide_macros.install.")
                   for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "duroxide_macros.install" or (
                    node.module == "duroxide_macros" and any(a.name == "install" for a in node.names)):
                return True
    return False


def statements_before_install(source: bytes, path: str) -> list[Problem]:
    """Statements above ``import duroxide_macros.install`` that would run twice, as problems.

    Allowed there: the docstring, comments, ``from __future__`` and other imports
    (running an import again finds the module already imported).
    """
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError):
        return []  # the expansion reports it with Python's own message
    index = next((i for i, stmt in enumerate(body) if imports_install(stmt)), None)
    if index is None:
        return []
    text = source.decode("utf-8", "replace").splitlines()
    problems: list[Problem] = []
    for i, stmt in enumerate(body[:index]):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue  # the docstring
        line = text[stmt.lineno - 1].strip() if stmt.lineno <= len(text) else ""
        snippet = line if len(line) <= 60 else line[:57] + "..."
        problems.append(Problem(path, stmt.lineno, stmt.col_offset + 1,
                                f"`{snippet}` runs before `import duroxide_macros.install`, so it would run "
                                "twice: once now, and again in the rewritten script (fix: make "
                                "`import duroxide_macros.install` the first statement of the script, above it)"))
    return problems


def _main_code(source: bytes, path: str, module: str) -> types.CodeType:
    return load_code(source, path, module=module, main=True)


def run_main_if_importer(frame: types.FrameType | None) -> None:
    """If the main script's top level is importing us, run its rewritten code and exit.

    ``frame`` is the frame that imported ``duroxide_macros.install`` (or one of the
    import machinery's frames above it).
    """
    main = sys.modules.get("__main__")
    importer = _importer(frame)
    if main is None or importer is None or importer.f_globals is not vars(main):
        return
    if importer.f_code.co_name != "<module>" or vars(main).get("__duroxide_expanded__"):
        return
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return  # python -c, the REPL, a zip application: nothing to rewrite
    path = str(path)  # pdb's __file__ is a str subclass, which marshal cannot store
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError:
        return
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", "")
    # `python -m pkg.app`: the lint follows helpers and relative imports of pkg, as for any module
    code = _main_code(source, path, name or "__main__")
    namespace = vars(main)
    namespace["__duroxide_expanded__"] = True
    if name != "__main__" and not name.endswith(".__main__"):
        # multiprocessing's children run the module named here instead of the raw script (they
        # never re-run a package's __main__.py, so that case keeps its spec)
        os.environ[ENV_SCRIPT] = path
        os.environ[ENV_PACKAGE] = (spec.parent if spec is not None else "") or ""
        main.__spec__ = importlib.machinery.ModuleSpec(SPAWN_MODULE, None, origin=path)
    exec(code, namespace)
    raise SystemExit(0)


def _script_path() -> str:
    path = os.environ.get(ENV_SCRIPT)
    if path:
        return path
    # The variable was removed from the environment: multiprocessing passed argv and the start directory.
    from multiprocessing import process

    start = getattr(process, "ORIGINAL_DIR", None) or os.getcwd()
    return os.path.join(start, sys.argv[0])


def run_in_child(namespace: dict[str, Any]) -> None:
    """Run the rewritten main script in ``namespace`` (``__mp_main__`` of a spawn or forkserver child)."""
    namespace.pop("run_in_child", None)
    install()
    path = _script_path()
    with open(path, "rb") as f:
        source = f.read()
    code = _main_code(source, path, "__main__")  # the parent checked it; the rewrite is the same
    namespace.update(__file__=path, __cached__=None, __package__=os.environ.get(ENV_PACKAGE, ""),
                     __duroxide_expanded__=True)
    exec(code, namespace)
