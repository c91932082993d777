"""``Problem``: one import-time error of a module that uses duroxide, printed like a compiler's.

Kept apart from the rewrite (which needs libcst) so that the import hook can
report problems without importing libcst.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem"]


@dataclass(frozen=True, order=True)
class Problem:
    """``path:line:col: message`` - the message ends with ``(fix: ...)``."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"
