"""The UI's protections, over a real server and real HTTP: binding, token, host, CSRF, origin, read-only,
headers, and escaping of everything the store holds.

The escaping checks parse each page's HTML (a real parser, as a browser
tokenizes it): no script but the UI's own file, no event-handler attribute, no
``javascript:`` address, and each payload the store holds shows up as text
(escaped), never as markup. The browser tests check that none of it runs.
"""

from __future__ import annotations

import html.parser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from duroxide_runtime import ConfigurationError, Provider, SqliteProvider
from duroxide_runtime.ui import serve
from duroxide_runtime.ui.security import SECURITY_HEADERS, check_binding, is_loopback
from duroxide_runtime.ui.server import UIServer

from .ui_support import PAYLOADS, XSS_ID, Api, World, api, http, server, ui_store, world

__all__ = ["api", "http", "server", "ui_store", "world"]  # fixtures used here

pytestmark = pytest.mark.timeout(120)

TOKEN = "test-token-0123456789-abcdef"


def seg(instance_id: str) -> str:
    return quote(instance_id, safe="")


@pytest.fixture
async def empty_store(tmp_path: Path) -> Any:
    store = await SqliteProvider.new(f"sqlite://{tmp_path / 'ui.db'}")
    try:
        yield store
    finally:
        await store.close()


# -- binding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_binding(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "example.com", "192.168.1.1"])
def test_any_other_host_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigurationError) as err:
        check_binding(host, None)
    assert "without a token" in err.value.message and "--token" in (err.value.fix or "")
    check_binding(host, TOKEN)


@pytest.mark.parametrize("token", ["short", "has a space in it ok?", "x" * 15, "tab\tinside-0123456789"])
def test_a_weak_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_binding("0.0.0.0", token)
    assert "16" in err.value.message and "secrets" in (err.value.fix or "")


async def test_serve_refuses_before_listening(empty_store: Provider) -> None:
    with pytest.raises(ConfigurationError, match="without a token"):
        await serve(empty_store, host="0.0.0.0", port=0)


# -- token ---------------------------------------------------------------------------------------------


async def test_with_a_token_every_request_needs_it(empty_store: Provider) -> None:
    async with UIServer(empty_store, host="0.0.0.0", port=0, token=TOKEN) as ui:
        base = f"http://127.0.0.1:{ui.port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/instances", "/api/overview", "/api/instances", "/static/app.js", "/nope"):
                async with http.get(base + path) as r:
                    assert r.status == 401, path
                    assert r.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
            async with http.get(base + "/api/overview") as r:
                assert (await r.json())["error"] == "UNAUTHORIZED"
            async with http.get(base + "/api/overview", headers={"Authorization": "Bearer wrong-token-0123456789"}) as r:
                assert r.status == 401
            async with http.get(base + "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            async with http.get(base + "/?token=wrong", allow_redirects=False) as r:
                assert r.status == 401
            # Any Host name works with a token (the token, not the name, protects it).
            async with http.get(base + "/api/versions", headers={"Authorization": f"Bearer {TOKEN}",
                                                                 "Host": "ops.example.com"}) as r:
                assert r.status == 200


async def test_the_token_in_the_address_sets_a_strict_cookie_and_leaves_the_address(empty_store: Provider) -> None:
    async with UIServer(empty_store, port=0, token=TOKEN) as ui:
        base = ui.url.rstrip("/")
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(base + f"/instances?status=Failed&token={TOKEN}", allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/instances?status=Failed"
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
            async with http.get(base + "/instances?status=Failed") as r:
                assert r.status == 200 and "Instances" in await r.text()
            # The cookie is this server's: another server (another secret) refuses it.
        async with UIServer(empty_store, port=0, token=TOKEN) as other:
            async with aiohttp.ClientSession() as http:
                name = f"duroxide_ui_{ui.port}"
                value = jar.filter_cookies(aiohttp.client.URL(base))[name].value
                async with http.get(other.url + "api/versions", headers={"Cookie": f"duroxide_ui_{other.port}={value}"}) as r:
                    assert r.status == 401


async def test_a_redirect_never_leaves_the_site(empty_store: Provider) -> None:
    async with UIServer(empty_store, port=0, token=TOKEN) as ui:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ui.port}//evil.example/?token={TOKEN}",
                                allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/"


# -- host (DNS rebinding) ------------------------------------------------------------------------------


async def test_without_a_token_only_loopback_host_names_are_served(api: Api) -> None:
    for host in ("evil.example", "evil.example:8765", "10.0.0.7"):
        async with api.http.get(api.base + "/api/overview", headers={"Host": host}) as r:
            assert r.status == 403 and (await r.json())["error"] == "HOST_NOT_ALLOWED"
    port = api.base.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        async with api.http.get(api.base + "/api/versions", headers={"Host": host}) as r:
            assert r.status == 200


# -- CSRF, origin ----------------------------------------------------------------------------------------


async def test_actions_need_the_csrf_token(api: Api, world: World) -> None:
    url = api.base + f"/api/instances/{seg(world.ids['running'])}/suspend"
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
        async with api.http.post(url, json={}, headers=headers) as r:
            assert r.status == 403 and (await r.json())["error"] == "CSRF"
    async with api.http.post(url, data={"csrf_token": "forged"}) as r:
        assert r.status == 403
    async with api.http.post(url, data="reason=x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 403  # what a cross-site form can send: refused before the body is read
    assert (await world.client.get_instance_info(world.ids["running"])).status == "Running"


async def test_actions_from_another_origin_are_refused(api: Api, world: World) -> None:
    url = api.base + f"/api/instances/{seg(world.ids['running'])}/suspend"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        async with api.http.post(url, json={}, headers={"X-CSRF-Token": api.csrf, **headers}) as r:
            assert r.status == 403 and (await r.json())["error"] == "BAD_ORIGIN", headers
    assert (await world.client.get_instance_info(world.ids["running"])).status == "Running"
    async with api.http.post(url, json={}, headers={"X-CSRF-Token": api.csrf, "Origin": api.base,
                                                     "Sec-Fetch-Site": "same-origin"}) as r:
        assert r.status == 200


async def test_a_plain_form_post_with_the_token_acts_and_redirects(api: Api, world: World) -> None:
    iid = world.ids["running"]
    async with api.http.post(api.base + f"/api/instances/{seg(iid)}/raise",
                             data={"csrf_token": api.csrf, "name": "approval", "data": "form"},
                             headers={"Accept": "text/html"}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == f"/instances/{iid}?done=raise"
    status = await world.client.wait_for_orchestration(iid, 15)
    assert status.output == "approved: form"  # type: ignore[attr-defined]
    # A refused form post is a page too (no JSON for a browser without script).
    async with api.http.post(api.base + f"/api/instances/{seg(iid)}/resume", data={"csrf_token": api.csrf},
                             headers={"Accept": "text/html"}) as r:
        assert r.status == 409 and r.content_type == "text/html" and "INSTANCE_STATE" in await r.text()


# -- read-only ---------------------------------------------------------------------------------------------


async def test_read_only_hides_and_refuses_every_action(world: World, http: aiohttp.ClientSession) -> None:
    async with UIServer(world.store, port=0, read_only=True) as ui:
        base = ui.url.rstrip("/")
        csrf = ui.security.csrf_token
        for action in ("suspend", "cancel", "raise", "purge", "rewind", "restart", "resume"):
            for iid in world.ids.values():
                async with http.post(base + f"/api/instances/{seg(iid)}/{action}", json={"name": "approval"},
                                     headers={"X-CSRF-Token": csrf}) as r:
                    assert r.status == 403 and (await r.json())["error"] == "READ_ONLY"
        async with http.post(base + "/api/bulk/cancel", json={}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 403
        statuses = {iid: (await world.client.get_instance_info(iid)).status for iid in world.ids.values()}
        assert statuses[world.ids["running"]] == "Running" and statuses[world.ids["completed"]] == "Completed"
        pages = ["/", "/instances", "/versions"] + [f"/instances/{seg(i)}" for i in world.ids.values()]
        for path in pages:
            async with http.get(base + path) as r:
                text = await r.text()
                assert r.status == 200, path
                assert "<form" not in text.replace('<form class="filters"', "").replace(
                    '<form class="history-filter"', ""), path
                assert 'data-testid="action-' not in text and 'data-testid="bulk' not in text
                assert "csrf" not in text.lower() and 'data-testid="read-only-banner"' in text
        async with http.get(base + "/api/session") as r:
            assert (await r.json())["read_only"] is True


# -- headers -------------------------------------------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(api: Api, world: World) -> None:
    paths = ["/", "/instances", "/versions", f"/instances/{seg(world.ids['failed'])}", "/api/overview",
             "/api/instances?status=Nope", "/api/instances/none", "/static/app.js", "/static/app.css", "/no/such"]
    for path in paths:
        async with api.http.get(api.base + path) as r:
            for name, value in SECURITY_HEADERS.items():
                assert r.headers.get(name) == value, (path, name)
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    async with api.http.get(api.base + "/static/app.js") as r:
        assert r.content_type in ("application/javascript", "text/javascript")
    async with api.http.get(api.base + "/static/../security.py") as r:
        assert r.status in (403, 404)


# -- escaping ---------------------------------------------------------------------------------------------------


class _Markup(html.parser.HTMLParser):
    """What a browser would treat as markup: tags with their attributes, and the text between them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_inert(page: str, where: str) -> str:
    """Assert the page holds no markup but the UI's own; returns its text (what a reader sees)."""
    parser = _Markup()
    parser.feed(page)
    allowed_tags = {"html", "head", "meta", "title", "link", "script", "body", "header", "a", "nav", "span",
                    "main", "h1", "h2", "p", "section", "form", "input", "button", "ul", "li", "strong", "code",
                    "div", "pre", "details", "summary", "table", "thead", "tbody", "tr", "th", "td", "svg", "g",
                    "text", "rect", "title", "line", "label", "select", "option", "dl", "dt", "dd", "progress"}
    for tag, attrs in parser.tags:
        assert tag in allowed_tags, f"{where}: unexpected <{tag}> {attrs}"
        if tag == "script":
            assert attrs == {"src": "/static/app.js", "defer": None}, f"{where}: {attrs}"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"{where}: <{tag} {name}={value!r}>"
            if name in ("href", "src", "action") and value:
                assert value.startswith(("/", "data:,")) and not value.startswith("//"), f"{where}: {name}={value!r}"
    return "".join(parser.text)


async def test_payloads_in_ids_inputs_and_errors_are_shown_as_text(api: Api, world: World) -> None:
    ids = world.ids
    await world.client.raise_event(ids["timer"], PAYLOADS[1], PAYLOADS[0])  # an event name and data
    pages = ["/", "/instances", "/versions", "/instances?status=Failed&q=" + quote("<script>"),
             "/instances?name=" + quote(PAYLOADS[1]), "/api/instances/none?x=" + quote(PAYLOADS[0])]
    pages += [f"/instances/{seg(i)}" for i in ids.values()]
    for path in pages:
        async with api.http.get(api.base + path, headers={"Accept": "text/html"}) as r:
            assert r.status in (200, 404), path
            page = await r.text()
        check_inert(page, path)
        assert "<script>window" not in page and "<img" not in page and "<svg onload" not in page, path
    failed = await _page(api, f"/instances/{seg(XSS_ID)}")
    text = check_inert(failed, "failed instance")
    assert XSS_ID in text and PAYLOADS[0] in text and PAYLOADS[1] in text  # shown, as text
    running = await _page(api, f"/instances/{seg(ids['running'])}")
    assert PAYLOADS[4] in check_inert(running, "running instance")
    listing = await _page(api, "/instances")
    assert XSS_ID in check_inert(listing, "instances") and f'href="/instances/{seg(XSS_ID)}"' in listing


async def test_no_request_gets_a_500(api: Api, world: World) -> None:
    paths = ["/api/instances/%FF%FE", "/instances/%00", "/instances/%ED%A0%80", "/api/instances?limit=%00",
             "/api/instances?status=%FF", "/api/instances/x/history?execution=" + "9" * 40, "/instances/" + "x" * 5000,
             "/api/instances?cursor=" + "A" * 5000, "/instances?q=%ED%A0%80", "/instances/id?id=%00",
             "/api/bulk/" + "x" * 3000, "/api/instances/a/history?download=%00", "/instances/x?kind=Nope",
             "/instances/x?hq=" + "y" * 500, "/instances/" + seg(world.ids["completed"]) + "?execution=2"]
    for path in paths:
        async with api.http.get(api.base + path) as r:
            # Undecodable bytes read as U+FFFD (a plain, harmless value); the rest is refused as a 4xx.
            assert r.status < 500, (path, r.status, (await r.text())[:300])
    async with api.http.post(api.base + "/api/instances/%00/suspend", json={},
                             headers={"X-CSRF-Token": api.csrf}) as r:
        assert r.status == 400
    async with api.http.post(api.base + "/api/instances/x/raise", data=b"x" * (5 * 1024 * 1024),
                             headers={"X-CSRF-Token": api.csrf, "Content-Type": "application/json"}) as r:
        assert r.status == 413


async def _page(api: Api, path: str) -> str:
    async with api.http.get(api.base + path) as r:
        assert r.status == 200, path
        return await r.text()
