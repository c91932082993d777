"""``import duroxide_macros.install``: the first line of a program that uses the ``durable(...)`` forms.

Installs the import hook (idempotent). When the importing module is the
program's main script (``python app.py``) and that script uses the forms,
its body is rewritten and run in its place: the script's own first
statement is this import, so nothing of it has run yet, and the process
exits when the rewritten body is done.
"""

from __future__ import annotations

import sys

from .hook import compile_source, install
from .expand import uses_forms

__all__: list[str] = []

install()


def _importing_main_module() -> bool:
    main = sys.modules.get("__main__")
    frame = sys._getframe(1)
    while frame is not None:
        if main is not None and frame.f_globals is vars(main):
            return frame.f_code.co_name == "<module>"
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _run_main_rewritten() -> None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py") or getattr(main, "__duroxide_expanded__", False):
        return
    if not _importing_main_module():
        return
    with open(path, "rb") as f:
        source = f.read()
    if not uses_forms(source):
        return
    code = compile_source(source, str(path))
    main.__duroxide_expanded__ = True  # type: ignore[attr-defined]
    exec(code, vars(main))
    raise SystemExit(0)


_run_main_rewritten()
