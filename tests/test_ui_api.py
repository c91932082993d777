"""The UI's JSON API over a real server and real HTTP, on SQLite and PostgreSQL.

A real runtime leaves instances in every state (tests/ui_support.py); each
endpoint is read back against the store, each action is checked on the store
(not on the answer alone), and every malformed request gets a 4xx naming the
problem, never a 500.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from duroxide_runtime import Client, Event, InstanceNotFoundError
from duroxide_runtime.replayer import history_from_json, replay_history

from .support import eventually
from .ui_support import FLAKY, XSS_ID, Api, World, api, greet, http, server, ui_store, wait_line, world

__all__ = ["api", "http", "server", "ui_store", "world"]  # fixtures used here

pytestmark = pytest.mark.timeout(120)


def seg(instance_id: str) -> str:
    return quote(instance_id, safe="")


async def test_overview_counts_failures_depths_and_minutes(api: Api, world: World) -> None:
    body = await api.get("/api/overview")
    assert body["by_status"] == {"Pending": 1, "Running": 4, "Suspended": 1, "Completed": 1, "Failed": 2}
    names = {r["name"]: r["by_status"] for r in body["by_name"]}
    assert names["Approval"] == {"Running": 2, "Suspended": 1}
    assert {(r["name"], r["version"]) for r in body["by_version"]} >= {("Greet", "1.0.0"), ("Approval", "1.0.0")}
    failures = {f["error_type"]: f for f in body["failures"]}
    assert failures["ValueError"]["last_instance_id"] == XSS_ID and failures["ValueError"]["count"] == 1
    assert set(body["depths"]) == {"orchestrator", "timers", "worker", "active_instances", "waiting_instances"}
    assert body["queues"] == []  # nothing waits for or runs in a queue
    assert len(body["finished_per_minute"]) == 60
    assert sum(m.get("Completed", 0) for m in body["finished_per_minute"]) == 1
    assert sum(m.get("Failed", 0) for m in body["finished_per_minute"]) == 2


async def test_overview_shows_instances_waiting_for_a_queue(api: Api, world: World) -> None:
    starter = Client(world.store, check_names=False)  # the runtime here configures no queue: they wait
    for n in range(3):
        await starter.start_orchestration(f"queued-{n}", "Greet", '{"who": "Q"}', queue="reports")
    body = await api.get("/api/overview")
    assert body["depths"]["waiting_instances"] == 3
    assert body["queues"] == [{"queue": "reports", "waiting_instances": 3, "running_instances": 0,
                               "queued_calls": 0, "running_calls": 0}]
    async with api.http.get(api.base + "/") as response:
        page = await response.text()
    assert 'data-testid="depth-waiting">3<' in page and "<td>reports</td>" in page


async def test_filters_select_by_status_name_version_and_id_text(api: Api, world: World) -> None:
    ids = world.ids

    async def selected(query: str) -> set[str]:
        return {i["instance_id"] for i in (await api.get("/api/instances?" + query))["instances"]}

    assert await selected("status=Failed") == {ids["failed"], ids["fragile"]}
    assert await selected("status=failed") == {ids["failed"], ids["fragile"]}  # case-insensitive
    assert await selected("name=Approval") == {ids["running"], ids["child"], ids["suspended"]}
    assert await selected("name=Approval&status=Suspended") == {ids["suspended"]}
    assert await selected("name=Approval&version=1.0.0&q=approval-") == {ids["running"], ids["suspended"]}
    assert await selected("version=9.9.9") == set()
    assert await selected("q=" + quote("a/b")) == {ids["failed"]}
    assert len(await selected("")) == len(ids)


async def test_cursor_pagination_walks_every_instance_once(api: Api, world: World) -> None:
    seen: list[str] = []
    query = "/api/instances?limit=2"
    pages = 0
    while True:
        body = await api.get(query)
        pages += 1
        assert len(body["instances"]) <= 2
        seen += [i["instance_id"] for i in body["instances"]]
        if body["next_cursor"] is None:
            break
        query = "/api/instances?limit=2&cursor=" + quote(body["next_cursor"])
    assert sorted(seen) == sorted(world.ids.values()) and pages == 5
    created = [i["created_at_ms"] for i in (await api.get("/api/instances"))["instances"]]
    assert created == sorted(created, reverse=True)  # newest first


@pytest.mark.parametrize("query, code", [
    ("status=Sleeping", "BAD_FILTER"), ("limit=abc", "BAD_FILTER"), ("limit=0", "BAD_FILTER"),
    ("limit=100000", "BAD_FILTER"), ("limit=-1", "BAD_FILTER"), ("status=Failed&status=Running", "BAD_FILTER"),
    ("cursor=not-a-cursor", "INVALID_INPUT"), ("cursor=%00", "INVALID_INPUT"), ("name=a%01b", "INVALID_INPUT"),
    ("q=%00", "INVALID_INPUT"), ("version=" + "v" * 100, "INVALID_INPUT"), ("q=" + "x" * 300, "INVALID_INPUT"),
])
async def test_malformed_filters_are_400_naming_the_problem(api: Api, query: str, code: str) -> None:
    body = await api.get("/api/instances?" + query, status=400)
    assert body["error"] == code and body["message"] and body["fix"], body
    name = query.split("=")[0]
    assert name in body["message"], body


async def test_one_instance_says_what_it_waits_on_and_where(api: Api, world: World) -> None:
    ids = world.ids
    running = await api.get(f"/api/instances/{seg(ids['running'])}")
    assert running["instance"]["status"] == "Running" and running["input"] == "</pre><script>window.__xss=5</script>"
    (call,) = running["pending"]
    assert (call["kind"], call["name"], call["source"]) == ("event", "approval", wait_line())
    assert running["actions"] == ["suspend", "cancel", "raise"]
    parent = await api.get(f"/api/instances/{seg(ids['parent'])}")
    assert [c["instance_id"] for c in parent["children"]] == [ids["child"]]
    assert parent["pending"][0]["child_instance_id"] == ids["child"]
    child = await api.get(f"/api/instances/{seg(ids['child'])}")
    assert child["parent_instance_id"] == ids["parent"]
    timer = await api.get(f"/api/instances/{seg(ids['timer'])}")
    assert [c["kind"] for c in timer["pending"]] == ["timer"]
    failed = await api.get(f"/api/instances/{seg(ids['failed'])}")
    assert failed["instance"]["instance_id"] == XSS_ID
    assert failed["error_details"]["error_type"] == "ValueError" and "raise ValueError" in \
        failed["error_details"]["traceback"]
    assert failed["pending"] == [] and failed["actions"] == ["rewind", "restart", "purge"]
    completed = await api.get(f"/api/instances/{seg(ids['completed'])}")
    assert completed["instance"]["output"] == 'Hello, {"who": "World"}!'
    assert completed["instance"]["custom_status"] == "greeting"


async def test_unknown_ids_and_executions_are_404_and_bad_executions_400(api: Api, world: World) -> None:
    body = await api.get("/api/instances/no-such-instance", status=404)
    assert body["error"] == "INSTANCE_NOT_FOUND" and "no-such-instance" in body["message"] and body["fix"]
    await api.get("/api/instances/no-such-instance/history", status=404)
    body = await api.get(f"/api/instances/{seg(world.ids['completed'])}/history?execution=7", status=404)
    assert body["error"] == "EXECUTION_NOT_FOUND" and "1" in body["fix"]
    for bad in ("0", "-1", "x", "1.5", "99999999999999999999999"):
        body = await api.get(f"/api/instances/{seg(world.ids['completed'])}/history?execution={bad}", status=400)
        assert body["error"] == "BAD_EXECUTION"
    await api.get(f"/api/instances/{seg(world.ids['completed'])}/history?download=yes", status=400)
    await api.get("/api/instances/%00", status=400)  # no store can hold NUL: refused before the store
    await api.get("/api/no-such-endpoint", status=404)


async def test_history_download_is_a_file_the_replayer_accepts(api: Api, world: World, tmp_path: Path) -> None:
    path = f"/api/instances/{seg(world.ids['completed'])}/history"
    body = await api.get(path)
    assert body["execution_id"] == 1 and body["events"][0]["type"] == "OrchestrationStarted"
    assert body["events"][-1]["type"] == "OrchestrationCompleted"
    async with api.http.get(api.base + path + "?download=1") as r:
        assert r.status == 200
        assert r.headers["Content-Disposition"].startswith('attachment; filename="greet-1.execution-1.history.json"')
        data = await r.read()
    saved = tmp_path / "greet-1.json"
    saved.write_bytes(data)
    events = history_from_json(data)
    assert events == await world.client.read_history(world.ids["completed"])
    replay_history(greet, saved)  # the code that recorded it replays it
    # An id no file system likes still names a safe file.
    async with api.http.get(api.base + f"/api/instances/{seg(XSS_ID)}/history?download=1") as r:
        disposition = r.headers["Content-Disposition"]
    plain = disposition.split('filename="')[1].split('"')[0]
    assert all(c.isalnum() or c in "._-" for c in plain) and "filename*=UTF-8''" in disposition


async def test_versions_list_every_name_and_version(api: Api, world: World) -> None:
    rows = {(r["name"], r["version"]): r for r in (await api.get("/api/versions"))["versions"]}
    assert rows[("Approval", "1.0.0")]["running"] == 2
    assert rows[("Approval", "1.0.0")]["by_status"] == {"Running": 2, "Suspended": 1}
    assert rows[("NoSuchOrchestration", None)]["by_status"] == {"Pending": 1}
    assert rows[("Greet", "1.0.0")]["total"] == 1


async def test_raise_delivers_the_event_and_records_who(api: Api, world: World) -> None:
    iid = world.ids["running"]
    answer = await api.post(f"/api/instances/{seg(iid)}/raise", {"name": "approval", "data": '"yes"'})
    assert answer == {"ok": True, "action": "raise", "instance_id": iid, "delivered": True}
    status = await world.client.wait_for_orchestration(iid, 15)
    assert status.output == 'approved: "yes"'  # type: ignore[attr-defined]
    raised = [e for e in await world.client.read_history(iid) if isinstance(e, Event.EventRaised)]
    assert raised[0].by == "ui:127.0.0.1"
    body = await api.post(f"/api/instances/{seg(iid)}/raise", {"name": "approval"}, status=409)
    assert body["error"] == "INSTANCE_STATE" and "Completed" in body["message"]


async def test_suspend_and_resume_change_the_store(api: Api, world: World) -> None:
    iid = world.ids["timer"]
    await api.post(f"/api/instances/{seg(iid)}/suspend", {"reason": "look at it"})
    await eventually(lambda: _status(world, iid, "Suspended"), what="suspended")
    body = await api.post(f"/api/instances/{seg(iid)}/suspend", status=409)
    assert body["error"] == "INSTANCE_STATE"
    await api.post(f"/api/instances/{seg(iid)}/resume", {"reason": "done looking"})
    await eventually(lambda: _status(world, iid, "Running"), what="running again")
    history = await world.client.read_history(iid)
    suspended = [e for e in history if isinstance(e, Event.OrchestrationSuspended)]
    assert [(e.reason, e.by) for e in suspended] == [("look at it", "ui:127.0.0.1")]
    body = await api.post(f"/api/instances/{seg(iid)}/resume", status=409)
    assert body["error"] == "INSTANCE_STATE" and body["fix"]


async def test_rewind_repairs_a_failed_instance(api: Api, world: World) -> None:
    iid = world.ids["fragile"]
    FLAKY.failing = False
    await api.post(f"/api/instances/{seg(iid)}/rewind", {"reason": "service fixed"})
    status = await world.client.wait_for_orchestration(iid, 15)
    assert status.output == 'fixed "order-7"'  # type: ignore[attr-defined]
    rewound = [e for e in await world.client.read_history(iid) if isinstance(e, Event.OrchestrationRewound)]
    assert [(e.reason, e.by) for e in rewound] == [("service fixed", "ui:127.0.0.1")]
    body = await api.post(f"/api/instances/{seg(world.ids['completed'])}/rewind", status=409)
    assert body["error"] == "INSTANCE_STATE"


async def test_restart_under_a_new_id_and_purge(api: Api, world: World) -> None:
    iid = world.ids["completed"]
    answer = await api.post(f"/api/instances/{seg(iid)}/restart", {"new_instance_id": "greet-2"})
    assert answer["new_instance_id"] == "greet-2"
    status = await world.client.wait_for_orchestration("greet-2", 15)
    assert status.output.startswith("Hello")  # type: ignore[attr-defined]
    answer = await api.post(f"/api/instances/{seg(iid)}/purge")
    assert answer["purged"] == [iid]
    with pytest.raises(InstanceNotFoundError):
        await world.client.get_instance_info(iid)
    body = await api.post(f"/api/instances/{seg(world.ids['running'])}/purge", status=409)
    assert body["error"] == "INSTANCE_RUNNING"
    await api.post(f"/api/instances/{seg(iid)}/purge", status=404)


async def test_cancel_fails_the_instance_once(api: Api, world: World) -> None:
    iid = world.ids["timer"]
    await api.post(f"/api/instances/{seg(iid)}/cancel", {"reason": "not needed"})
    await eventually(lambda: _status(world, iid, "Failed"), what="cancelled")
    assert "not needed" in ((await world.client.get_instance_info(iid)).error or "")
    body = await api.post(f"/api/instances/{seg(iid)}/cancel", status=409)
    assert body["error"] == "INSTANCE_STATE"


@pytest.mark.parametrize("path, body, code", [
    ("/api/instances/ID/explode", {}, "UNKNOWN_ACTION"),
    ("/api/instances/ID/raise", {}, "INVALID_INPUT"),
    ("/api/instances/ID/raise", {"name": "x", "data": {"not": "text"}}, "BAD_BODY"),
    ("/api/instances/ID/suspend", {"reason": "a\x00b"}, "INVALID_INPUT"),
    ("/api/instances/ID/restart", {"new_instance_id": "bad\nid"}, "INVALID_INPUT"),
    ("/api/bulk/explode", {}, "UNKNOWN_ACTION"),
    ("/api/bulk/cancel", {"status": "Sleeping"}, "BAD_FILTER"),
])
async def test_malformed_actions_are_4xx(api: Api, world: World, path: str, body: dict[str, Any], code: str) -> None:
    path = path.replace("ID", seg(world.ids["running"]))
    async with api.http.post(api.base + path, json=body, headers={"X-CSRF-Token": api.csrf}) as r:
        answer = await r.json()
        assert 400 <= r.status < 500 and answer["error"] == code and answer["fix"], (r.status, answer)


async def test_bodies_that_are_not_json_objects_are_400(api: Api, world: World) -> None:
    url = api.base + f"/api/instances/{seg(world.ids['running'])}/suspend"
    for data, ctype in ((b"{not json", "application/json"), (b"[1, 2]", "application/json"),
                        (b"\xff\xfe", "application/json"), (b"x", "text/plain")):
        async with api.http.post(url, data=data, headers={"X-CSRF-Token": api.csrf, "Content-Type": ctype}) as r:
            assert r.status == 400 and (await r.json())["error"] == "BAD_BODY"
    assert (await world.client.get_instance_info(world.ids["running"])).status == "Running"


async def test_bulk_cancel_reports_progress_until_done(api: Api, world: World) -> None:
    for n in range(6):
        await world.client.start_orchestration(f"bulk-{n}", "Sleeper", "")
    await eventually(lambda: _all_waiting(world, [f"bulk-{n}" for n in range(6)]), what="sleepers waiting")
    job = await api.post("/api/bulk/cancel", {"q": "bulk-", "status": "Running", "reason": "bulk test"}, status=202)
    assert job["action"] == "cancel" and job["filter"]["q"] == "bulk-"
    seen_done: list[int] = []

    async def finished() -> bool:
        state = await api.get(f"/api/bulk/{job['job']}")
        seen_done.append(state["done"])
        return bool(state["finished"])

    await eventually(finished, what="bulk job finished")
    state = await api.get(f"/api/bulk/{job['job']}")
    assert (state["total"], state["done"], state["failed"], state["error"]) == (6, 6, {}, None)
    assert seen_done == sorted(seen_done)
    for n in range(6):
        await eventually(lambda i=f"bulk-{n}": _status(world, i, "Failed"), what="bulk instance cancelled")
    assert (await world.client.get_instance_info(world.ids["timer"])).status == "Running"  # not selected
    body = await api.get("/api/bulk/no-such-job", status=404)
    assert body["error"] == "JOB_NOT_FOUND"


async def test_bulk_reports_instances_in_the_wrong_state(api: Api, world: World) -> None:
    job = await api.post("/api/bulk/resume", {"name": "Approval"}, status=202)
    await eventually(lambda: _job_finished(api, job["job"]), what="bulk job finished")
    state = await api.get(f"/api/bulk/{job['job']}")
    assert state["total"] == 3 and state["done"] == 3
    assert set(state["failed"]) == {world.ids["running"], world.ids["child"]}  # not suspended: refused, named
    await eventually(lambda: _status(world, world.ids["suspended"], "Running"), what="resumed")


async def test_odd_ids_are_reachable(api: Api, world: World) -> None:
    for iid in ("..", ".", "a/b", "ünï cödé ✓", "%2F", "?x=1#y"):
        await world.client.start_orchestration(iid, "Greet", '"x"')
        await world.client.wait_for_orchestration(iid, 15)
        dotted = iid.strip(".") == ""  # no path segment can carry it: ?id= names it
        path, query = ("id", "?id=" + quote(iid, safe="")) if dotted else (seg(iid), "")
        body = await api.get(f"/api/instances/{path}{query}")
        assert body["instance"]["instance_id"] == iid
        history = await api.get(f"/api/instances/{path}/history{query or '?'}&execution=1")
        assert history["instance_id"] == iid


async def _status(world: World, instance_id: str, status: str) -> bool:
    return (await world.client.get_instance_info(instance_id)).status == status


async def _all_waiting(world: World, ids: list[str]) -> bool:
    for iid in ids:
        if not any(isinstance(e, Event.TimerCreated) for e in await world.client.read_history(iid)):
            return False
    return True


async def _job_finished(api: Api, job_id: str) -> bool:
    return bool((await api.get(f"/api/bulk/{job_id}"))["finished"])


def test_the_server_runs_on_the_callers_loop() -> None:
    # serve() is a coroutine on the caller's loop: no thread, no loop of its own.
    async def main() -> str:
        from duroxide_runtime import SqliteProvider
        from duroxide_runtime.ui import serve

        store = await SqliteProvider.new("sqlite::memory:")
        server = await serve(store, port=0)
        try:
            async with aiohttp.ClientSession() as http, http.get(server.url + "api/versions") as r:
                return str((await r.json())["versions"])
        finally:
            await server.close()
            await store.close()

    assert asyncio.run(main()) == "[]"
