"""The page templates: a Jinja2 environment with autoescaping on, and the filters the templates use.

Everything the store holds is untrusted. Templates print it only through
autoescaping (``{{ value }}``; never ``|safe``), put it into URLs only through
:func:`instance_href` and friends (each path segment percent-encoded, query
strings built by ``urlencode``), and never embed JSON in a page: the scripts
read what they need from ``data-`` attributes or from the JSON API.

Example::

    env = environment()
    html = env.get_template("versions.html").render(rows=rows, ui=ui_globals)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2

from ..cli_format import describe, format_offset, format_time, inert
from ..history import HistoryEvent

__all__ = ["environment", "instance_href", "instance_api_href", "pretty", "TEMPLATES", "STATIC"]

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
#: Longest payload a page shows in full (the API and the download have all of it).
MAX_SHOWN_CHARS = 64 * 1024


def _segment(instance_id: str) -> tuple[str, str]:
    """The path segment for an id, and the query that names it when no segment can (``.``, ``..``, ``""``).

    Browsers resolve ``.`` and ``..`` segments (even percent-encoded) before sending a request, so
    such ids travel as ``?id=``, which the handlers prefer to the path.
    """
    if instance_id.strip(".") == "":
        return "id", "?" + urlencode({"id": instance_id})
    return quote(instance_id, safe=""), ""


def instance_href(instance_id: str, **params: str | int | None) -> str:
    """The instance page's address: ``/instances/<id percent-encoded>[?params]``.

    Example::

        instance_href("a/b <c>")   # '/instances/a%2Fb%20%3Cc%3E'
    """
    segment, query = _segment(instance_id)
    extra = urlencode([(k, str(v)) for k, v in params.items() if v is not None])
    if extra:
        query = (query + "&" if query else "?") + extra
    return f"/instances/{segment}{query}"


def instance_api_href(instance_id: str, *tail: str, **params: str | int | None) -> str:
    """An API address about one instance: ``/api/instances/<id>/<tail...>[?params]``.

    Example::

        instance_api_href("a/b", "history", download=1)   # '/api/instances/a%2Fb/history?download=1'
    """
    segment, query = _segment(instance_id)
    extra = urlencode([(k, str(v)) for k, v in params.items() if v is not None])
    if extra:
        query = (query + "&" if query else "?") + extra
    path = "/".join([segment, *(quote(t, safe="") for t in tail)])
    return f"/api/instances/{path}{query}"


def pretty(text: str | None) -> str:
    """A payload for reading: JSON indented, anything else as it is; cut at :data:`MAX_SHOWN_CHARS`.

    Example::

        pretty('{"a":1}')   # '{\\n  "a": 1\\n}'
    """
    if text is None:
        return ""
    shown = text
    if len(text) <= MAX_SHOWN_CHARS:
        try:
            shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            shown = text
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[:MAX_SHOWN_CHARS] + f"\n... ({len(shown) - MAX_SHOWN_CHARS} more characters; download it)"
    return shown


def _describe(event: HistoryEvent, start_ms: int) -> str:
    return describe(event, start_ms)


def _time(ms: int | None) -> str:
    return "-" if ms is None else format_time(ms)


def _duration(ms: int | float) -> str:
    return format_offset(ms).lstrip("+")


def _kind(event: HistoryEvent) -> str:
    return type(event).__name__


def environment() -> jinja2.Environment:
    """The templates, autoescaped, with the UI's filters (``instance_href``, ``pretty``, ``time``, ...)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    filters: dict[str, Any] = {
        "instance_href": instance_href, "instance_api_href": instance_api_href, "pretty": pretty,
        "time": _time, "duration": _duration, "describe": _describe, "kind": _kind, "label": inert,
        "segment": lambda text: quote(str(text), safe=""),
    }
    env.filters.update(filters)
    return env
