"""Who may use the UI, and how each answer protects the browser that shows it.

* **Binding.** The UI listens on loopback by default; :func:`check_binding`
  refuses any other address unless a token is set (anyone who can reach the
  port could otherwise read every payload and steer every instance).
* **Token.** With a token every request needs it: ``Authorization: Bearer
  TOKEN``, or once ``?token=TOKEN`` on a GET, which sets an HttpOnly,
  SameSite=Strict cookie and redirects to the same address without it (so the
  token leaves the address bar and the history). The cookie holds an HMAC of a
  per-server secret, not the token.
* **Host.** Without a token only loopback ``Host`` names are served, so a page
  elsewhere cannot reach the UI through DNS rebinding.
* **Actions.** Every action is a POST carrying the per-server CSRF token (a
  hidden form field or the ``X-CSRF-Token`` header, compared with
  :func:`hmac.compare_digest`); a browser's ``Origin`` and ``Sec-Fetch-Site``
  must say the same origin. In read-only mode every POST is refused with 403.
* **Headers.** Every answer carries a Content-Security-Policy that allows
  scripts from the UI itself only (no inline script, so stored text that
  slips into a page still cannot run), ``frame-ancestors 'none'``,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.

Example::

    security = Security(token=None, read_only=True, bound_host="127.0.0.1")
    app = web.Application(middlewares=[security.guard])
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import ConfigurationError
from .httperrors import ApiError

__all__ = ["Security", "check_binding", "is_loopback", "SECURITY_HEADERS", "CSRF_HEADER", "CSRF_FIELD",
           "MIN_TOKEN_CHARS"]

#: Header and form field that carry the CSRF token of an action.
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
#: Shortest token accepted: a guessable one would protect nothing.
MIN_TOKEN_CHARS = 16

#: Sent with every answer (see the module docstring).
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_TOKEN_FIX = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only.

    Example::

        is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")   # (True, True, False)
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, and refuse a token too short to protect anything.

    Raises :class:`ConfigurationError` naming the fix.

    Example::

        check_binding("0.0.0.0", None)   # ConfigurationError: ... pass --token TOKEN
    """
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError(f"the UI host {host!r} is not a host name or address",
                                 fix="pass --host 127.0.0.1 (the default), or the address to listen on")
    if token is not None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isprintable() \
                or any(c.isspace() for c in token):
            raise ConfigurationError(f"the UI token must be at least {MIN_TOKEN_CHARS} printable characters "
                                     "without spaces", fix=_TOKEN_FIX)
        return
    if not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the UI on {host!r} without a token: anyone who can reach it could read every "
            "instance and act on it",
            fix=f"pass --token TOKEN (token=... in Python) to serve on {host!r}, or bind to 127.0.0.1; "
                + _TOKEN_FIX)


def _hostname(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8765`` -> ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two strings (any characters)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


class Security:
    """The per-server secrets and the checks of every request (see the module docstring).

    Example::

        security = Security(token="s3cret-s3cret-s3cret", read_only=False, bound_host="0.0.0.0")
        security.csrf_token    # what pages put in their forms
    """

    def __init__(self, *, token: str | None, read_only: bool, bound_host: str, port: int = 0) -> None:
        self.token = token
        self.read_only = read_only
        self.bound_host = bound_host
        #: Set once the port is known (the session cookie is named after it: two UIs on one host keep theirs).
        self.port = port
        #: Random per server: a restart invalidates every page's forms and every session cookie.
        self.csrf_token = secrets.token_urlsafe(32)
        self._secret = secrets.token_bytes(32)

    @property
    def cookie_name(self) -> str:
        """The session cookie's name (one per port)."""
        return f"duroxide_ui_{self.port}"

    def _session_value(self) -> str:
        return hmac.new(self._secret, b"session", hashlib.sha256).hexdigest()

    def authorized(self, request: web.Request) -> bool:
        """Whether ``request`` carries the token (header) or the session cookie; always True without a token."""
        if self.token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip(), self.token):
            return True
        cookie = request.cookies.get(self.cookie_name)
        return cookie is not None and _same(cookie, self._session_value())

    def _check_host(self, request: web.Request) -> None:
        if self.token is not None:
            return  # the token (or its cookie, bound to the name it was set for) protects the UI
        host = _hostname(request.host)
        if not (is_loopback(host) or host.lower() == self.bound_host.lower()):
            raise ApiError(403, "HOST_NOT_ALLOWED", f"this UI answers only to loopback host names, not {host[:80]!r}",
                           fix="open it as http://127.0.0.1:PORT/ or http://localhost:PORT/, or serve it with "
                               "--token to reach it under other names")

    def _token_login(self, request: web.Request) -> web.StreamResponse:
        """``?token=`` on a GET: set the session cookie and send the browser to the address without it."""
        given = request.query.get("token", "")
        if self.token is None or not _same(given, self.token):
            raise ApiError(401, "BAD_TOKEN", "the token in the address is not this UI's token",
                           fix="open the address `duroxide ui` printed, or send Authorization: Bearer TOKEN")
        rest = [(k, v) for k, v in request.query.items() if k != "token"]
        path = request.rel_url.raw_path
        if not path.startswith("/") or path.startswith(("//", "/\\")):
            path = "/"  # never a redirect to another site (//evil.example)
        location = path + ("?" + urlencode(rest) if rest else "")
        response = web.Response(status=303, headers={"Location": location})
        response.set_cookie(self.cookie_name, self._session_value(), httponly=True, samesite="Strict", path="/")
        return response

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        own = f"{request.scheme}://{request.host}"
        if origin is not None and origin != own:
            raise ApiError(403, "BAD_ORIGIN", f"an action from another origin ({origin[:80]!r}) was refused",
                           fix="use the UI's own pages, or call the API without an Origin header")
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise ApiError(403, "BAD_ORIGIN", f"an action from a {site[:40]} page was refused",
                           fix="use the UI's own pages")

    async def _check_csrf(self, request: web.Request) -> None:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            field = (await request.post()).get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        if given is None or not _same(given, self.csrf_token):
            raise ApiError(403, "CSRF", "the action carries no valid CSRF token",
                           fix=f"send the token of the UI's pages in the {CSRF_HEADER} header "
                               f"(or a {CSRF_FIELD} form field); reload the page after a restart of the UI")

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The checks of every request, in order: host, token, then for a POST read-only, origin and CSRF."""
        self._check_host(request)
        if self.token is not None:
            if request.method in ("GET", "HEAD") and "token" in request.query:
                return self._token_login(request)
            if not self.authorized(request):
                raise ApiError(401, "UNAUTHORIZED", "this UI needs its token",
                               fix="open the address `duroxide ui` printed (with ?token=...), or send "
                                   "Authorization: Bearer TOKEN")
        if request.method not in ("GET", "HEAD"):
            if self.read_only:
                raise ApiError(403, "READ_ONLY", "this UI is read-only: actions are refused",
                               fix="serve it without --read-only to act on instances")
            self._check_origin(request)
            await self._check_csrf(request)
        return await handler(request)
