"""What every handler of one UI server shares: the client, the security settings, templates and bulk jobs.

Example::

    ui = request.app[UI]
    info = await ui.client.get_instance_info(instance_id)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from ..client import Client
from .bulk import BulkJobs
from .security import CSRF_FIELD, CSRF_HEADER, Security

__all__ = ["UIContext", "UI", "page", "instance_id_of", "actor_of"]


@dataclass
class UIContext:
    """The parts of one UI server."""

    client: Client
    security: Security
    templates: jinja2.Environment
    jobs: BulkJobs

    def globals(self) -> dict[str, Any]:
        """What every template gets as ``ui``: read-only mode and the CSRF token."""
        return {"read_only": self.security.read_only, "csrf_token": self.security.csrf_token,
                "csrf_field": CSRF_FIELD, "csrf_header": CSRF_HEADER}


#: The request's UI context: ``request.app[UI]``.
UI = web.AppKey("duroxide_ui", UIContext)


def page(request: web.Request, template: str, *, status: int = 200, **values: Any) -> web.Response:
    """Render ``template`` with ``values`` (and ``ui``, ``request_path``) as an HTML answer."""
    ui = request.app[UI]
    html = ui.templates.get_template(template).render(ui=ui.globals(), request_path=request.path, **values)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def instance_id_of(request: web.Request) -> str:
    """The instance a request names: ``?id=`` when given (ids no path segment can carry), else the path's."""
    given = request.query.get("id")
    return given if given is not None else request.match_info["id"]


def actor_of(request: web.Request) -> str:
    """Who did it, as recorded in the instance's history: ``ui:`` and the remote address."""
    return f"ui:{request.remote or 'unknown'}"
