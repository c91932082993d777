"""A store holding instances in every state, made by a real runtime, for the UI's tests (API, security, browser).

:func:`build_world` starts a runtime on the store with a few orchestrations and
leaves behind: a Completed instance, a Failed one whose id, input and error are
HTML and script payloads, a Failed one that a rewind repairs (its activity fails
until ``FLAKY.failing`` is set False), Running ones waiting on an external event
(the line of the wait is :func:`wait_line`), on a timer and on a child, a
Suspended one and a Pending one (an orchestration no runtime knows, retried only
after a long back-off). The runtime keeps running: actions act for real.

Example::

    world = await build_world(store)
    async with UIServer(store, port=0) as server:
        ...
    await world.stop()
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from duroxide_runtime import Client, OrchestrationContext, Provider
from duroxide_runtime.ui.server import UIServer

from .support import Harness, drop_store, eventually, make_store

__all__ = ["World", "build_world", "wait_line", "PAYLOADS", "FLAKY", "XSS_ID", "Api", "ui_store", "world", "server",
           "http", "api"]

_HERE = Path(__file__)

#: Strings that would run script if a page put them into HTML unescaped (in text, in an attribute, in a URL).
PAYLOADS = (
    "<script>window.__xss = 1</script>",
    '"><img src=x onerror="window.__xss=2">',
    "'><svg onload=window.__xss=3>",
    "javascript:window.__xss=4",
    "</pre><script>window.__xss=5</script>",
)
#: The id of the Failed instance whose id, input and error are payloads (it has a slash and a space too).
XSS_ID = '<script>window.__xss=6</script> a/b"\'&'


@dataclass
class Flaky:
    """Whether the ``Flaky`` activity fails (the test sets it False before rewinding)."""

    failing: bool = True
    calls: int = 0


FLAKY = Flaky()


def wait_line() -> str:
    """``file:line`` of the ``wait_for_event`` call in :func:`approval`, as the runtime records it."""
    (line,) = [n for n, text in enumerate(_HERE.read_text().splitlines(), 1) if text.rstrip().endswith("# MARK:wait")]
    relative = os.path.relpath(_HERE)
    return f"{_HERE if relative.startswith(os.pardir) else relative}:{line}"


async def hello(name: str) -> str:
    """Activity: a greeting."""
    return f"Hello, {name}!"


async def flaky(name: str) -> str:
    """Activity: fails while ``FLAKY.failing``."""
    FLAKY.calls += 1
    if FLAKY.failing:
        raise RuntimeError(f"the flaky service is down ({name})")
    return f"fixed {name}"


async def greet(ctx: OrchestrationContext, name: str) -> str:
    """Completes with the greeting."""
    ctx.set_custom_status("greeting")
    return await ctx.schedule_activity("Hello", name)


async def boom(ctx: OrchestrationContext, text: str) -> str:
    """Fails with ``text`` as the error message."""
    raise ValueError(text)


async def approval(ctx: OrchestrationContext, _: str) -> str:
    """Waits for the external event ``approval``, then completes with its data."""
    ctx.set_custom_status("waiting for approval")
    data = await ctx.wait_for_event("approval")  # MARK:wait
    return f"approved: {data}"


async def fragile(ctx: OrchestrationContext, name: str) -> str:
    """Calls ``Flaky``: Failed while it fails; a rewind once it works completes it."""
    return await ctx.schedule_activity("Flaky", name)


async def sleeper(ctx: OrchestrationContext, _: str) -> str:
    """Waits on a one-hour timer."""
    await ctx.schedule_timer(timedelta(hours=1))
    return "woke"


async def parent(ctx: OrchestrationContext, child_id: str) -> str:
    """Waits for a child ``Approval`` with id ``child_id``."""
    return await ctx.schedule_sub_orchestration("Approval", "", instance_id=child_id)


ORCHESTRATIONS = {"Greet": greet, "Boom": boom, "Approval": approval, "Fragile": fragile, "Sleeper": sleeper,
                  "Parent": parent}
ACTIVITIES = {"Hello": hello, "Flaky": flaky}


@dataclass
class World:
    """The store, a client, the running harness, and the instance id of each role."""

    store: Provider
    client: Client
    harness: Harness
    ids: dict[str, str] = field(default_factory=dict)

    async def stop(self) -> None:
        """Shut the runtime down (the store stays open)."""
        await self.harness.stop()


async def build_world(store: Provider) -> World:
    """Instances in every state on ``store`` (see the module docstring); the runtime keeps running."""
    FLAKY.failing, FLAKY.calls = True, 0
    harness = Harness(store, "cached")
    # Pending: a name no runtime knows, tried again only after a long back-off.
    await harness.start(ORCHESTRATIONS, ACTIVITIES, unknown_name_backoff=600.0, unknown_name_max_backoff=600.0)
    client = harness.client
    world = World(store, client, harness)
    ids = world.ids
    ids.update(completed="greet-1", failed=XSS_ID, fragile="fragile-1", running="approval-1", timer="sleeper-1",
               parent="parent-1", child="parent-1-child", suspended="approval-suspended", pending="pending-1")
    await harness.run(ids["completed"], "Greet", '{"who": "World"}')
    await harness.run(ids["failed"], "Boom", PAYLOADS[0] + PAYLOADS[1])
    await harness.run(ids["fragile"], "Fragile", '"order-7"')
    for role, name, payload in (("running", "Approval", PAYLOADS[4]), ("timer", "Sleeper", ""),
                                ("parent", "Parent", ids["child"]), ("suspended", "Approval", "")):
        await client.start_orchestration(ids[role], name, payload)
    await Client(store, check_names=False).start_orchestration(ids["pending"], "NoSuchOrchestration", PAYLOADS[2])

    async def waiting(instance_id: str) -> bool:
        history = await client.read_history(instance_id)
        return any(e.is_schedule and type(e).__name__ in ("EventSubscribed", "TimerCreated",
                                                          "SubOrchestrationScheduled") for e in history)

    for role in ("running", "timer", "parent", "child", "suspended"):
        await eventually(lambda r=role: waiting(ids[r]), what=f"{role} instance waiting")
    await client.suspend_instance(ids["suspended"], "maintenance <b>window</b>", by="test")
    await eventually(lambda: _status_is(client, ids["suspended"], "Suspended"), what="suspended")
    expected = {"completed": "Completed", "failed": "Failed", "fragile": "Failed", "running": "Running",
                "timer": "Running", "parent": "Running", "child": "Running", "suspended": "Suspended",
                "pending": "Pending"}
    got = {role: (await client.get_instance_info(ids[role])).status for role in expected}
    assert got == expected, got
    return world


async def _status_is(client: Client, instance_id: str, status: str) -> bool:
    return (await client.get_instance_info(instance_id)).status == status


# -- fixtures (import them into a test module to use them) ------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def ui_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    """A fresh SQLite, PostgreSQL or Redis store."""
    store = await make_store(request.param, tmp_path)
    try:
        yield store
    finally:
        await drop_store(store)


@pytest.fixture
async def world(ui_store: Provider) -> AsyncIterator[World]:
    """Instances in every state; the runtime keeps running."""
    w = await build_world(ui_store)
    try:
        yield w
    finally:
        await w.stop()


@pytest.fixture
async def server(world: World) -> AsyncIterator[UIServer]:
    """The UI on a free loopback port."""
    async with UIServer(world.store, port=0) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """Calls on one server, with the CSRF token its pages carry."""

    def __init__(self, http: aiohttp.ClientSession, server: UIServer) -> None:
        self.http = http
        self.base = server.url.rstrip("/")
        self.csrf = server.security.csrf_token

    async def get(self, path: str, status: int = 200) -> Any:
        async with self.http.get(self.base + path) as r:
            body = await r.json()
            assert r.status == status, (path, r.status, body)
            return body

    async def post(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        async with self.http.post(self.base + path, json=body or {}, headers={"X-CSRF-Token": self.csrf}) as r:
            answer = await r.json()
            assert r.status == status, (path, r.status, answer)
            return answer


@pytest.fixture
def api(http: aiohttp.ClientSession, server: UIServer) -> Api:
    return Api(http, server)
