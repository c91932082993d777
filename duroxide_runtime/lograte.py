"""One shared rate limit for warnings about trouble in background work.

The runtime's loops (orchestration dispatcher, activity worker, result writer,
lease renewals, metrics sampling) and a store's connections (PostgreSQL's
LISTEN connection, its reconnecting transactions) retry on their own when the
store is in trouble, and can meet the same error many times a second for as
long as the trouble lasts. Each such error is logged at WARNING through
:data:`background_warnings`: at most one record per *kind* per ``interval``
seconds (30 by default). The next record of a kind says how many were
suppressed since the previous one (also in its ``suppressed`` field; its
``warning_kind`` field names the kind), so a burst never floods the log and
never hides that it went on.

Example::

    background_warnings.warning(_log, "postgres.listen", "LISTEN connection lost (%s); reconnecting", exc)

The clock is an attribute, so a test can drive it (``background_warnings.clock = fake``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["WarningLimiter", "background_warnings"]


class WarningLimiter:
    """At most one log record per kind per ``interval`` seconds, counting the ones it holds back."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        #: kind -> (time of its last record, records suppressed since)
        self._state: dict[str, tuple[float, int]] = {}

    def warning(self, logger: logging.Logger, kind: str, msg: str, *args: object, exc_info: Any = None,
                extra: Mapping[str, object] | None = None) -> bool:
        """Log ``msg % args`` at WARNING unless ``kind`` was logged less than ``interval`` s ago.

        Returns whether a record was written (a suppressed one is only counted).
        """
        return self._emit(logger, logging.WARNING, kind, msg, args, exc_info, extra)

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, *args: object, exc_info: Any = None,
            extra: Mapping[str, object] | None = None) -> bool:
        """Like :meth:`warning`, at ``level``."""
        return self._emit(logger, level, kind, msg, args, exc_info, extra)

    def _emit(self, logger: logging.Logger, level: int, kind: str, msg: str, args: tuple[object, ...],
              exc_info: Any, extra: Mapping[str, object] | None) -> bool:
        now = self.clock()
        with self._lock:
            last, suppressed = self._state.get(kind, (None, 0))
            if last is not None and now - last < self.interval:
                self._state[kind] = (last, suppressed + 1)
                return False
            self._state[kind] = (now, 0)
        if not logger.isEnabledFor(level):
            return True
        fields = dict(extra or {})
        fields["warning_kind"] = kind
        fields["suppressed"] = suppressed
        if suppressed and last is not None:
            msg = f"{msg} [{suppressed} similar record(s) suppressed in the last {now - last:.0f} s]"
        logger.log(level, msg, *args, exc_info=exc_info, extra=fields, stacklevel=3)  # the caller of warning()/log()
        return True

    def suppressed(self, kind: str) -> int:
        """How many records of ``kind`` were held back since its last one."""
        with self._lock:
            return self._state.get(kind, (0.0, 0))[1]

    def reset(self) -> None:
        """Forget every kind (tests)."""
        with self._lock:
            self._state.clear()


#: The limiter every background loop and store connection of this process shares.
background_warnings = WarningLimiter()
