"""The UI's schedules page and API (SQLite and PostgreSQL, a real runtime): the list with the
"not registered" mark, pause, resume and delete, with the same security as every action."""

from __future__ import annotations

import aiohttp

from duroxide_runtime import Client
from duroxide_runtime.ui.server import UIServer

from .support import eventually
from .ui_support import Api, World, api, http, server, ui_store, world

__all__ = ["api", "http", "server", "ui_store", "world"]  # fixtures used here


async def _two_schedules(world: World) -> None:
    await world.client.create_schedule("hourly", "0 * * * *", "Greet", '{"who": "cron"}', catch_up="all")
    await Client(world.store, check_names=False).create_schedule("ghost", "*/5 * * * *", "NoSuchOrchestration")

    async def confirmed() -> bool:  # the runtime's scheduler says it registers Greet
        return (await world.client.get_schedule("hourly")).orchestration_registered

    await eventually(confirmed, what="the runtime confirming the schedule")


async def test_the_api_lists_schedules_and_marks_the_unregistered_one(api: Api, world: World) -> None:
    assert (await api.get("/api/schedules")) == {"schedules": []}
    await _two_schedules(world)
    listed = (await api.get("/api/schedules"))["schedules"]
    assert [(s["schedule_id"], s["orchestration"], s["catch_up"], s["orchestration_registered"], s["paused"])
            for s in listed] == [("ghost", "NoSuchOrchestration", "skip", False, False),
                                 ("hourly", "Greet", "all", True, False)]
    async with api.http.get(api.base + "/schedules") as r:
        text = await r.text()
        assert r.status == 200
    assert 'data-schedule-id="ghost" data-registered="no"' in text
    assert 'data-schedule-id="hourly" data-registered="yes"' in text
    assert text.count('data-testid="schedule-unregistered"') == 1 and 'data-testid="nav-schedules"' in text


async def test_pause_resume_and_delete_act_and_need_the_csrf_token(api: Api, world: World) -> None:
    await _two_schedules(world)
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        async with api.http.post(api.base + "/api/schedules/pause", json={"schedule_id": "hourly"},
                                 headers=headers) as r:
            assert r.status == 403 and (await r.json())["error"] == "CSRF"
    assert not (await world.client.get_schedule("hourly")).paused
    paused = await api.post("/api/schedules/pause", {"schedule_id": "hourly"})
    assert paused["schedule"]["paused"] is True and (await world.client.get_schedule("hourly")).paused
    resumed = await api.post("/api/schedules/resume", {"schedule_id": "hourly"})
    assert resumed["schedule"]["paused"] is False
    # A plain form post (no script) acts and comes back to the page.
    async with api.http.post(api.base + "/api/schedules/delete",
                             data={"csrf_token": api.csrf, "schedule_id": "ghost"},
                             headers={"Accept": "text/html"}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/schedules?done=delete"
    assert [s.schedule_id for s in await world.client.list_schedules()] == ["hourly"]
    missing = await api.post("/api/schedules/delete", {"schedule_id": "ghost"}, status=404)
    assert missing["error"] == "SCHEDULE_NOT_FOUND" and "list_schedules" in missing["fix"]
    assert (await api.post("/api/schedules/explode", {"schedule_id": "hourly"}, status=404))["error"] == \
        "UNKNOWN_ACTION"


async def test_read_only_shows_schedules_without_actions_and_refuses_them(world: World,
                                                                         http: aiohttp.ClientSession) -> None:
    await _two_schedules(world)
    async with UIServer(world.store, port=0, read_only=True) as ui:
        base = ui.url.rstrip("/")
        async with http.post(base + "/api/schedules/delete", json={"schedule_id": "hourly"},
                             headers={"X-CSRF-Token": ui.security.csrf_token}) as r:
            assert r.status == 403 and (await r.json())["error"] == "READ_ONLY"
        async with http.get(base + "/schedules") as r:
            text = await r.text()
        assert 'data-testid="schedule-row"' in text and "<form" not in text and "csrf" not in text.lower()
    assert len(await world.client.list_schedules()) == 2
