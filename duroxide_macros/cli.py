"""``duroxide-expand FILE_OR_MODULE [--diff] [--check]``: show what the import hook makes of a module.

Like ``cargo expand``: prints the rewritten source without running the module.
``--diff`` prints a unified diff instead; ``--check`` only lists problems as
``path:line:col: message`` and exits 1 if there are any.

``duroxide-expand --compile PATH...`` pre-builds the import hook's cache for
every module under the given files or directories that imports from
``duroxide_macros`` (others are left alone), so that a program started later
neither rewrites nor imports libcst; it writes even when
``PYTHONDONTWRITEBYTECODE`` is set (container images often set it; the hook
still reads the caches then). Run it as ``python -O -m duroxide_macros.cli
--compile ...`` for programs that run with ``-O``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tokenize

from . import ownership
from .hook import DurableExpansionError, DurableFinder, load_code

__all__ = ["main"]


def _resolve(target: str) -> tuple[str, str | None]:
    """(source file, module name) of a path or a dotted module name - found without importing anything.

    Every finder on ``sys.meta_path`` is asked, so setuptools' editable installs resolve too.
    """
    if os.path.exists(target):
        return target, _module_name(target)
    search: list[str] | None = None
    origin = None
    parts = target.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[:i + 1])
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None or isinstance(finder, DurableFinder):
                continue
            spec = find(name, search, None)
            if spec is not None:
                break
        if spec is None:
            origin = None
            break
        origin = spec.origin
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
        if search is None and i + 1 < len(parts):
            origin = None
            break
    if origin is None or not origin.endswith(".py"):
        raise SystemExit(f"duroxide-expand: {target!r} is neither a file nor a Python source module "
                         "on the path (run it from the project directory, or pass the file)")
    return origin, target


def _module_name(path: str) -> str | None:
    """The dotted name a file is imported as, from the packages (``__init__.py``) around it."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    if not name.endswith(".py"):
        return None
    parts = [] if name == "__init__.py" else [name[:-3]]
    while os.path.exists(os.path.join(folder, "__init__.py")):
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    return ".".join(parts) or None


def _is_main_script(source: bytes) -> bool:
    """Does the file import ``duroxide_macros.install`` at its top level (a program's main script)?"""
    import ast

    from .mainscript import imports_install

    try:
        return any(imports_install(stmt) for stmt in ast.parse(source).body)
    except (SyntaxError, ValueError):
        return False


def _sources(paths: list[str]) -> list[str]:
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                found.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise SystemExit(f"duroxide-expand: {path!r} does not exist")
    return found


def _compile(paths: list[str]) -> int:
    compiled = skipped = failed = 0
    for path in _sources(paths):
        path = os.path.abspath(path)
        with open(path, "rb") as f:
            source = f.read()
        if not ownership.imports_duroxide_macros(source):
            skipped += 1  # not ours: the hook will never claim it
            continue
        try:
            load_code(source, path, module=_module_name(path), main=_is_main_script(source), force_write=True)
        except DurableExpansionError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            failed += 1
            continue
        except SyntaxError as exc:
            print(f"{path}:{exc.lineno or 1}:{exc.offset or 1}: syntax error: {exc.msg}", file=sys.stderr)
            failed += 1
            continue
        compiled += 1
        print(f"compiled {path}")
    print(f"duroxide-expand: {compiled} module(s) cached, {skipped} left alone (no duroxide_macros import)"
          + (f", {failed} with problems" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duroxide-expand", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", help="a .py file or a dotted module name")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--diff", action="store_true", help="print a unified diff against the original")
    mode.add_argument("--check", action="store_true", help="only report problems (exit 1 if any)")
    mode.add_argument("--compile", nargs="+", metavar="PATH",
                      help="pre-build the import hook's cache for these files and directories (recursively)")
    args = parser.parse_args(argv)
    if args.compile:
        if args.target is not None:
            parser.error("--compile takes paths only")
        return _compile([*args.compile])
    if args.target is None:
        parser.error("give a file or a module name (or --compile PATH...)")
    sys.path.insert(0, os.getcwd())  # like `python -m`: the current directory first
    path, module = _resolve(args.target)
    with tokenize.open(path) as f:  # honours the file's coding declaration
        source = f.read()
    from .hook import _expand  # libcst: only now

    result = _expand(source, path, module)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    if args.check:
        if not result.problems:
            print(f"{path}: ok ({result.rewrites} forms)")
    elif args.diff:
        sys.stdout.writelines(difflib.unified_diff(source.splitlines(keepends=True),
                                                   result.code.splitlines(keepends=True),
                                                   path, f"{path} (expanded)"))
    else:
        sys.stdout.write(result.code)
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
