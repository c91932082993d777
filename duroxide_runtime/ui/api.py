"""The JSON API under ``/api/``: what the pages' script calls, and what scripts of an operator can call too.

======================================  ===============================================================
``GET /api/overview``                   counts by status, name and version; failures by error type;
                                        queue depths; instances finished per minute (last hour)
``GET /api/instances``                  ``?status=&name=&version=&q=&cursor=&limit=``: one page of
                                        instances, newest first, and ``next_cursor``
``GET /api/instances/{id}``             the instance, its input, error details, state, what it
                                        waits on (with file:line), parent, children, actions
``GET /api/instances/{id}/history``     ``?execution=N``: its events as stored; ``&download=1``: a
                                        JSON file that ``replay_history`` reads
``GET /api/versions``                   every orchestration name and version, instances by status
``GET /api/session``                    the CSRF token actions need, and whether the UI is read-only
``POST /api/instances/{id}/{action}``   suspend, resume, rewind, restart, cancel, raise, purge
``POST /api/bulk/{action}``             the action on every instance a filter selects: a job id
``GET /api/bulk/{job}``                 how far the job got
======================================  ===============================================================

A POST takes a JSON object (or form fields): ``reason`` for every action,
``name`` and ``data`` for ``raise``, ``new_instance_id`` for ``restart``, and
the filter fields for a bulk action. Errors are ``{"error": CODE, "message",
"fix"}`` with 400 (malformed), 401/403 (token, CSRF, read-only), 404 (unknown
id), 409 (wrong state).

Example::

    curl -s -H "Authorization: Bearer $TOKEN" 'http://127.0.0.1:8765/api/instances?status=Failed'
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..client import Client
from ..limits import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_REASON_CHARS, check_identifier, check_text
from ..operations import Operation, apply_operation
from ..replayer import history_to_json
from .context import UI, actor_of, instance_id_of
from .filters import InstanceFilter, parse_filter
from .httperrors import ApiError
from .render import instance_href
from .views import ACTIONS, BULK_ACTIONS, history_json, jsonable, load_instance, load_overview, parse_execution, \
    version_rows

__all__ = ["routes", "body_of", "wants_html", "perform"]

routes = web.RouteTableDef()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


@routes.get("/api/overview")
async def get_overview(request: web.Request) -> web.Response:
    """Counts, failures, depths and the per-minute series."""
    return _json((await load_overview(request.app[UI].client)).as_json())


async def instances_page(client: Client, flt: InstanceFilter) -> tuple[list[Any], str | None]:
    """One page of instances for ``flt``, and the cursor of the next (None on the last page)."""
    page = await client.query_instances(status=flt.status, name=flt.name, version=flt.version, q=flt.q,
                                        cursor=flt.cursor, limit=flt.limit)
    return list(page.instances), page.next_cursor


@routes.get("/api/instances")
async def get_instances(request: web.Request) -> web.Response:
    """One page of instances matching the filter in the query string."""
    flt = parse_filter(request.query)
    instances, next_cursor = await instances_page(request.app[UI].client, flt)
    return _json({"instances": jsonable(instances), "next_cursor": next_cursor,
                  "filter": {**flt.as_json(), "cursor": flt.cursor, "limit": flt.limit}})


@routes.get("/api/instances/{id}")
async def get_instance(request: web.Request) -> web.Response:
    """One instance with what it waits on."""
    view = await load_instance(request.app[UI].client, instance_id_of(request))
    return _json(view.as_json())


_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _download_name(instance_id: str, execution_id: int) -> str:
    """A file name for the history: only safe characters in the plain form, the full id in ``filename*``."""
    plain = _UNSAFE_FILE_CHARS.sub("_", instance_id)[:80].strip("._") or "instance"
    full = f"{instance_id}.execution-{execution_id}.history.json"
    return (f'attachment; filename="{plain}.execution-{execution_id}.history.json"; '
            f"filename*=UTF-8''{quote(full, safe='')}")


@routes.get("/api/instances/{id}/history")
async def get_history(request: web.Request) -> web.StreamResponse:
    """The events of one execution; ``download=1``: as a file ``replay_history`` reads."""
    download = request.query.get("download", "")
    if download not in ("", "0", "1"):
        raise ApiError(400, "BAD_DOWNLOAD", f"download={download[:20]!r} is not 0 or 1", fix="pass download=1")
    view = await load_instance(request.app[UI].client, instance_id_of(request),
                               parse_execution(request.query.get("execution")))
    if download == "1":
        return web.Response(body=history_to_json(view.history), content_type="application/json",
                            headers={"Content-Disposition": _download_name(view.info.instance_id, view.execution_id),
                                     "Cache-Control": "no-store"})
    return _json(history_json(view))


@routes.get("/api/versions")
async def get_versions(request: web.Request) -> web.Response:
    """Every orchestration name and version with its instances by status."""
    return _json({"versions": [r.as_json() for r in await version_rows(request.app[UI].client)]})


@routes.get("/api/session")
async def get_session(request: web.Request) -> web.Response:
    """What a script needs to act: the CSRF token (same-origin reads only) and the read-only flag."""
    security = request.app[UI].security
    return _json({"csrf_token": security.csrf_token, "read_only": security.read_only})


async def body_of(request: web.Request) -> dict[str, str]:
    """A POST's fields: a JSON object of strings (or numbers, booleans), or form fields; 400 otherwise."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError as exc:
            raise ApiError(400, "BAD_BODY", f"the body is not JSON ({exc})", fix="send a JSON object") from None
        if not isinstance(data, dict):
            raise ApiError(400, "BAD_BODY", f"the body is a JSON {type(data).__name__}, not an object",
                           fix='send a JSON object, e.g. {"reason": "..."}')
        fields: dict[str, str] = {}
        for key, value in data.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ApiError(400, "BAD_BODY", f"field {str(key)[:40]!r} is a {type(value).__name__}, not text",
                               fix="send each field as a string (event data as its JSON text)")
            fields[str(key)] = str(value)
        return fields
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        fields = {}
        for key, value in form.items():
            if not isinstance(value, str):
                raise ApiError(400, "BAD_BODY", f"field {key[:40]!r} is a file", fix="send text fields only")
            if key in fields:
                raise ApiError(400, "BAD_BODY", f"field {key[:40]!r} is given twice", fix="give each field once")
            fields[key] = value
        return fields
    if not request.can_read_body:
        return {}
    raise ApiError(400, "BAD_BODY", f"a body of type {request.content_type[:60]!r} is not understood",
                   fix="send application/json or form fields")


def wants_html(request: web.Request) -> bool:
    """A browser's plain form submission (no script): it is answered with a page, not JSON."""
    return (request.method == "POST" and request.content_type == "application/x-www-form-urlencoded"
            and "X-CSRF-Token" not in request.headers and "text/html" in request.headers.get("Accept", ""))


def _reason(body: dict[str, str]) -> str:
    return check_text(body.get("reason", ""), "reason", MAX_REASON_CHARS)


async def perform(client: Client, action: str, instance_id: str, body: dict[str, str], by: str) -> dict[str, Any]:
    """Apply ``action`` to one instance; what the answer adds to ``{"ok": true}``.

    A raise or cancel that finds the instance already finished is a 409 (the client calls
    return False there); the other operations raise their typed errors themselves.
    """
    if action == "raise":
        name = check_identifier(body.get("name", ""), "event name", MAX_NAME_CHARS)
        if not await client.raise_event(instance_id, name, body.get("data", ""), by=by):
            raise await _ended(client, instance_id, "raise an event on")
        return {"delivered": True}
    reason = _reason(body)
    if action == "cancel":
        if not await client.cancel_instance(instance_id, reason or "cancelled", by=by):
            raise await _ended(client, instance_id, "cancel")
        return {}
    if action == "restart":
        new_id = body.get("new_instance_id") or None
        if new_id is not None:
            check_identifier(new_id, "new_instance_id", MAX_ID_CHARS)
        return {"new_instance_id": await client.restart_instance(instance_id, new_id, reason=reason or "restarted",
                                                                 by=by)}
    if action == "purge":
        return {"purged": await client.purge(instance_id)}
    await apply_operation(client, Operation(action), instance_id, reason=reason, by=by)
    return {}


async def _ended(client: Client, instance_id: str, what: str) -> ApiError:
    status = (await client.get_instance_info(instance_id)).status
    return ApiError(409, "INSTANCE_STATE", f"cannot {what} instance {instance_id[:80]!r}: it is {status}",
                    fix="act on Pending, Running or Suspended instances only")


def _action(request: web.Request, allowed: tuple[str, ...]) -> str:
    action = request.match_info["action"]
    if action not in allowed:
        raise ApiError(404, "UNKNOWN_ACTION", f"{action[:40]!r} is not an action here",
                       fix="use one of " + ", ".join(allowed))
    return action


@routes.post("/api/instances/{id}/{action}")
async def post_action(request: web.Request) -> web.StreamResponse:
    """One action on one instance."""
    action = _action(request, ACTIONS)
    instance_id = instance_id_of(request)
    body = await body_of(request)
    result = await perform(request.app[UI].client, action, instance_id, body, actor_of(request))
    if wants_html(request):
        target = result.get("new_instance_id", instance_id)
        location = "/instances" if action == "purge" else instance_href(target, done=action)
        return web.Response(status=303, headers={"Location": location})
    return _json({"ok": True, "action": action, "instance_id": instance_id, **result})


@routes.post("/api/bulk/{action}")
async def post_bulk(request: web.Request) -> web.Response:
    """Start a bulk action on a filter; answers 202 with the job (poll ``GET /api/bulk/{job}``)."""
    action = _action(request, BULK_ACTIONS)
    body = await body_of(request)
    flt = parse_filter({k: v for k, v in body.items() if k in ("status", "name", "version", "q")})
    ui = request.app[UI]
    job = ui.jobs.start(Operation(action), flt, reason=_reason(body), by=actor_of(request))
    return _json(job.as_json(), status=202)


@routes.get("/api/bulk/{job}")
async def get_bulk(request: web.Request) -> web.Response:
    """How far a bulk job got."""
    return _json(request.app[UI].jobs.get(request.match_info["job"]).as_json())
