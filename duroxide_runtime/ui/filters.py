"""The instance filter of the instances page, its API and bulk actions: parsed from a URL, checked, and written back.

Filters live in the address (``/instances?status=Failed&name=Charge``) so they
can be shared. A malformed one (an unknown status, a limit that is not a number,
a value given twice, text no store can hold) is refused with a 400 naming the
parameter; nothing malformed reaches the store.

Example::

    f = parse_filter({"status": "failed", "name": "Charge"})
    f.status            # 'Failed'
    f.query_string()    # 'status=Failed&name=Charge'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from ..limits import MAX_NAME_CHARS, MAX_VERSION_CHARS, check_identifier, check_text
from ..providers.base import InstanceQuery
from .httperrors import ApiError

__all__ = ["STATUSES", "InstanceFilter", "parse_filter", "DEFAULT_LIMIT", "MAX_LIMIT"]

#: Every status an instance can have, in the order the UI lists them.
STATUSES = ("Pending", "Running", "Suspended", "Completed", "Failed")
#: Instances per page unless ``limit`` says otherwise, and the most one page shows.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Longest free-text search and cursor accepted.
MAX_Q_CHARS = 256
MAX_CURSOR_CHARS = 2048
#: The parameters a filter reads (the rest of a query string is someone else's).
FILTER_KEYS = ("status", "name", "version", "q", "cursor", "limit")


@dataclass(frozen=True)
class InstanceFilter:
    """A checked filter: which instances, from which cursor, how many.

    Example::

        InstanceFilter(status="Running", name="Charge").query()   # the InstanceQuery for the client
    """

    status: str | None = None
    name: str | None = None
    version: str | None = None
    q: str | None = None
    cursor: str | None = None
    limit: int = DEFAULT_LIMIT

    def query(self) -> InstanceQuery:
        """The store query of this filter."""
        return InstanceQuery(status=self.status, name=self.name, version=self.version, q=self.q,
                             cursor=self.cursor, limit=self.limit)

    def params(self, *, cursor: bool = True) -> list[tuple[str, str]]:
        """The non-default parameters, in a stable order (the cursor left out when ``cursor`` is False)."""
        pairs = [(k, v) for k, v in (("status", self.status), ("name", self.name), ("version", self.version),
                                     ("q", self.q)) if v is not None]
        if cursor and self.cursor is not None:
            pairs.append(("cursor", self.cursor))
        if self.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(self.limit)))
        return pairs

    def query_string(self, *, cursor: bool = True) -> str:
        """``status=Failed&name=...`` (URL-encoded), for links that keep the filter."""
        return urlencode(self.params(cursor=cursor))

    def with_cursor(self, cursor: str | None) -> InstanceFilter:
        """The same filter at another page."""
        return replace(self, cursor=cursor)

    def as_json(self) -> dict[str, Any]:
        """The filter as a JSON object (what a bulk job reports it ran on)."""
        return {"status": self.status, "name": self.name, "version": self.version, "q": self.q}

    @property
    def is_empty(self) -> bool:
        """True when it selects every instance."""
        return self.status is None and self.name is None and self.version is None and self.q is None


def _bad(key: str, problem: str, fix: str) -> ApiError:
    return ApiError(400, "BAD_FILTER", f"filter {key!r} {problem}", fix=fix)


def _one(values: Mapping[str, Any], key: str) -> str | None:
    """The single non-empty value of ``key``; a key given twice (a query string's multidict) is refused."""
    getall = getattr(values, "getall", None)
    if getall is not None:
        got = list(getall(key, []))
        if len(got) > 1:
            raise _bad(key, f"is given {len(got)} times", f"give {key} once")
        value = got[0] if got else None
    else:
        value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(key, f"must be text, got {type(value).__name__}", f"pass {key} as a string")
    value = value.strip()
    return value or None


def _status(text: str | None) -> str | None:
    if text is None:
        return None
    for status in STATUSES:
        if text.lower() == status.lower():
            return status
    raise _bad("status", f"is {text[:40]!r}, not a status", "use one of " + ", ".join(STATUSES))


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise _bad("limit", f"is {text[:20]!r}, not a whole number from 1 to {MAX_LIMIT}",
                   f"pass limit from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")
    return int(text)


def parse_filter(values: Mapping[str, Any]) -> InstanceFilter:
    """Check the filter parameters in ``values`` (a request's query or a JSON body); 400 on a bad one.

    Example::

        parse_filter(request.query)
    """
    name, version, q, cursor = (_one(values, k) for k in ("name", "version", "q", "cursor"))
    # The limits of the store's own checks, as a 400 that names the parameter (InvalidInputError).
    if name is not None:
        check_identifier(name, "filter 'name'", MAX_NAME_CHARS)
    if version is not None:
        check_identifier(version, "filter 'version'", MAX_VERSION_CHARS)
    if q is not None:
        check_text(q, "filter 'q'", MAX_Q_CHARS)
    if cursor is not None:
        check_text(cursor, "filter 'cursor'", MAX_CURSOR_CHARS)
    return InstanceFilter(status=_status(_one(values, "status")), name=name, version=version, q=q,
                          cursor=cursor, limit=_limit(_one(values, "limit")))
