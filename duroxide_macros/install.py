"""``import duroxide_macros.install``: the first line of a program that uses the ``durable(...)`` forms.

Installs the import hook (idempotent). When the importing module is the
program's main script (``python app.py``), its body is rewritten and run in
its place (see :mod:`duroxide_macros.mainscript`): the script's own first
statement is this import, so nothing else of it has run yet, and the process
exits when the rewritten body is done.
"""

from __future__ import annotations

import sys

from .hook import install
from .mainscript import run_main_if_importer

__all__: list[str] = []

install()
run_main_if_importer(sys._getframe(1))
