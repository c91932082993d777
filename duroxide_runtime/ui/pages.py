"""The HTML pages: overview, instances, one instance, versions. Rendered on the server; the script only adds
the actions, bulk progress and the history filter's instant refresh.

=============================  ======================================================================
``/``                          counts by status, name and version; recent failures by error type;
                               queue depths; finished per minute over the last hour (SVG chart)
``/instances``                 filters in the address, cursor pagination, bulk actions with progress
``/instances/{id}``            input, output, error and traceback, custom status, what it waits on
                               (file:line), a Gantt timeline, the raw history with filters,
                               parent and children, actions, the history as a download
``/versions``                  every orchestration name and version with its instances by status
=============================  ======================================================================

Example::

    app.add_routes(pages.routes)
"""

from __future__ import annotations

from aiohttp import web

from ..cli_format import event_json, execution_outcome
from ..history import Event, HistoryEvent
from ..engine.recovery import voided_events
from .api import instances_page
from .context import UI, instance_id_of, page
from .filters import STATUSES, parse_filter
from .httperrors import ApiError
from .timeline import layout, timeline_of
from .views import ACTIONS, BULK_ACTIONS, load_instance, load_overview, parse_execution, version_rows

__all__ = ["routes", "history_filter"]

routes = web.RouteTableDef()

#: Event type names, for the history filter.
EVENT_KINDS = tuple(sorted(n for n, c in vars(Event).items() if isinstance(c, type) and issubclass(c, HistoryEvent)))
#: Longest text the history filter searches for.
MAX_HISTORY_Q = 200


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    """The overview page."""
    view = await load_overview(request.app[UI].client)
    return page(request, "overview.html", view=view, statuses=STATUSES)


@routes.get("/instances")
async def instances(request: web.Request) -> web.Response:
    """The instances page: one page of the filtered list."""
    flt = parse_filter(request.query)
    rows, next_cursor = await instances_page(request.app[UI].client, flt)
    return page(request, "instances.html", filter=flt, rows=rows, statuses=STATUSES,
                next_href=("/instances?" + flt.with_cursor(next_cursor).query_string()) if next_cursor else None,
                first_href=("/instances?" + flt.query_string(cursor=False)) if flt.cursor else None,
                bulk_actions=BULK_ACTIONS)


def history_filter(events: list[HistoryEvent], kind: str | None, text: str | None) -> list[HistoryEvent]:
    """The events of type ``kind`` (``Activity`` matches every ``Activity*`` type) whose stored form
    contains ``text`` (case-insensitive).

    Example::

        history_filter(events, "Timer", None)   # TimerCreated and TimerFired events
    """
    shown = events
    if kind:
        shown = [e for e in shown if type(e).__name__.startswith(kind)]
    if text:
        needle = text.lower()
        shown = [e for e in shown if needle in str(event_json(e)).lower()]
    return shown


def _history_params(request: web.Request) -> tuple[str | None, str | None]:
    kind = request.query.get("kind") or None
    if kind is not None and not any(k.startswith(kind) for k in EVENT_KINDS):
        raise ApiError(400, "BAD_FILTER", f"kind {kind[:40]!r} is not an event type",
                       fix="use an event type such as ActivityScheduled, or a prefix such as Activity")
    text = request.query.get("hq") or None
    if text is not None and len(text) > MAX_HISTORY_Q:
        raise ApiError(400, "BAD_FILTER", f"hq is {len(text)} characters long, over {MAX_HISTORY_Q}",
                       fix="search for a shorter text")
    return kind, text


@routes.get("/instances/{id}")
async def instance(request: web.Request) -> web.Response:
    """One instance."""
    ui = request.app[UI]
    kind, text = _history_params(request)
    view = await load_instance(ui.client, instance_id_of(request), parse_execution(request.query.get("execution")))
    now = ui.client.clock.now_ms()
    chart = layout(timeline_of(view.history, now_ms=now))
    start = view.history[0].timestamp_ms if view.history else 0
    done = request.query.get("done")
    voided = voided_events(view.history)  # a rewound execution did not end with the failure it voided
    return page(request, "instance.html", view=view, chart=chart, start_ms=start,
                events=history_filter(view.history, kind, text), kind=kind, hq=text, event_kinds=EVENT_KINDS,
                outcome=execution_outcome([e for e in view.history if e.event_id not in voided],
                                          view.info.status if view.is_current else None),
                actions=ACTIONS, done=done if done in ACTIONS else None)


@routes.get("/versions")
async def versions(request: web.Request) -> web.Response:
    """Every orchestration name and version."""
    return page(request, "versions.html", rows=await version_rows(request.app[UI].client), statuses=STATUSES)
