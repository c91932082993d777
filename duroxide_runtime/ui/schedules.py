"""The schedules page and its API: every cron schedule, and pause, resume and delete.

=====================================  ==================================================================
``/schedules``                         every schedule: cron, orchestration, catch-up, paused, next and
                                       last tick, last instance; one whose orchestration no running
                                       runtime registers is marked "not registered"
``GET /api/schedules``                 the same as JSON (every ``ScheduleInfo`` field)
``POST /api/schedules/{action}``       ``pause``, ``resume`` or ``delete`` the schedule named by the
                                       ``schedule_id`` field (same token, origin and CSRF checks as
                                       every action; refused when read-only)
=====================================  ==================================================================

Example::

    curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8765/api/schedules
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from ..limits import check_lookup_id
from ..schedules import ScheduleInfo
from .api import body_of, wants_html
from .context import UI, page
from .httperrors import ApiError

__all__ = ["routes", "SCHEDULE_ACTIONS", "schedule_json"]

routes = web.RouteTableDef()

#: What the page and ``POST /api/schedules/{action}`` can do to a schedule.
SCHEDULE_ACTIONS = ("pause", "resume", "delete")


def schedule_json(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule as the API answers it (every :class:`ScheduleInfo` field; the policy as its string)."""
    return {**dataclasses.asdict(info), "catch_up": info.catch_up.value}


@routes.get("/schedules")
async def schedules_page(request: web.Request) -> web.Response:
    """The schedules page."""
    schedules = await request.app[UI].client.list_schedules()
    return page(request, "schedules.html", schedules=schedules, actions=SCHEDULE_ACTIONS,
                done=request.query.get("done") if request.query.get("done") in SCHEDULE_ACTIONS else None)


@routes.get("/api/schedules")
async def get_schedules(request: web.Request) -> web.Response:
    """Every schedule as JSON."""
    schedules = await request.app[UI].client.list_schedules()
    return web.json_response({"schedules": [schedule_json(s) for s in schedules]},
                             headers={"Cache-Control": "no-store"})


@routes.post("/api/schedules/{action}")
async def post_schedule_action(request: web.Request) -> web.StreamResponse:
    """Pause, resume or delete one schedule."""
    action = request.match_info["action"]
    if action not in SCHEDULE_ACTIONS:
        raise ApiError(404, "UNKNOWN_ACTION", f"{action[:40]!r} is not an action here",
                       fix="use one of " + ", ".join(SCHEDULE_ACTIONS))
    body = await body_of(request)
    schedule_id = check_lookup_id(body.get("schedule_id", ""), "schedule_id")
    client = request.app[UI].client
    result: dict[str, Any] = {"ok": True, "action": action, "schedule_id": schedule_id}
    if action == "delete":
        await client.delete_schedule(schedule_id)
    else:
        info = await (client.pause_schedule if action == "pause" else client.resume_schedule)(schedule_id)
        result["schedule"] = schedule_json(info)
    if wants_html(request):
        return web.Response(status=303, headers={"Location": f"/schedules?done={action}"})
    return web.json_response(result, headers={"Cache-Control": "no-store"})
