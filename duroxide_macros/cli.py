"""``duroxide-expand FILE_OR_MODULE [--diff] [--check]``: show what the import hook makes of a module.

Like ``cargo expand``: prints the rewritten source without running the module.
``--diff`` prints a unified diff instead; ``--check`` only lists problems as
``path:line:col: message`` and exits 1 if there are any.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.machinery
import tokenize
import os
import sys

from .expand import expand

__all__ = ["main"]


def _resolve(target: str) -> str:
    """A file path, or the source file of a dotted module name - found without importing anything."""
    if os.path.exists(target):
        return target
    search: list[str] | None = [os.getcwd(), *sys.path]  # like `python -m`: the current directory first
    origin = None
    for part in target.split("."):
        if search is None:
            origin = None
            break
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            origin = None
            break
        origin = spec.origin
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    if origin is None or not origin.endswith(".py"):
        raise SystemExit(f"duroxide-expand: {target!r} is neither a file nor a Python source module "
                         "on the path (run it from the project directory, or pass the file)")
    return origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duroxide-expand", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a .py file or a dotted module name")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--diff", action="store_true", help="print a unified diff against the original")
    mode.add_argument("--check", action="store_true", help="only report problems (exit 1 if any)")
    args = parser.parse_args(argv)
    path = _resolve(args.target)
    with tokenize.open(path) as f:  # honours the file's coding declaration
        source = f.read()
    result = expand(source, path)
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
