"""What stands between a browser and the UI: the Host check (DNS rebinding), the session
cookie, CSRF on every state-changing request, and the headers every UI answer carries.

A page on another site can make the browser send requests to loopback. The Host check
refuses a name that is not ours (a rebound DNS name points at 127.0.0.1 but keeps its own
name in Host); SameSite=Strict keeps the cookie off cross-site requests; the CSRF token,
which only our own pages hold, is required on every POST besides, and so is a same-origin
Origin (or Sec-Fetch-Site) when the browser sends one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from nyth_peer.web.session import COOKIE, CSRF_FIELD, CSRF_HEADER, Sessions

# No inline script or style anywhere: everything comes from /ui/static, so injected
# markup cannot run. data: images are the QR code's; blob: the scanned photo's.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # not no-referrer: with it chromium sends "Origin: null" on form posts, and our own
    # same-origin check needs the real origin.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class Refused(Exception):
    """A request the UI refuses; rendered as a page (or, for htmx, a login redirect)."""

    def __init__(self, status: int, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.login = login


def host_name(host_header: str) -> str:
    """The name in a Host header, without port, brackets or trailing dot, lowercased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".")


class Guard:
    def __init__(self, sessions: Sessions, hosts: Iterable[str]) -> None:
        self.sessions = sessions
        self.hosts = frozenset(host_name(h) for h in (*DEFAULT_HOSTS, *hosts) if h)

    def check_host(self, request: Request) -> None:
        if host_name(request.headers.get("host", "")) not in self.hosts:
            raise Refused(421, "this peer does not answer to that host name (allowed: "
                               f"{', '.join(sorted(self.hosts))}; NYTH_UI_HOSTS adds names)")

    def session(self, request: Request) -> str:
        sid = self.sessions.verify(request.cookies.get(COOKIE))
        if sid is None:
            raise Refused(401, "log in with the peer's API token first", login=True)
        return sid

    async def check_csrf(self, request: Request, sid: str) -> None:
        self.check_same_origin(request)
        presented = request.headers.get(CSRF_HEADER)
        if presented is None and "form" in request.headers.get("content-type", ""):
            value = (await request.form()).get(CSRF_FIELD)
            presented = value if isinstance(value, str) else None
        if not self.sessions.csrf_matches(sid, presented):
            raise Refused(403, "missing or wrong CSRF token: reload the page and try again")

    @staticmethod
    def check_same_origin(request: Request) -> None:
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            raise Refused(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:20]})")
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise Refused(403, "cross-origin request refused (Origin is not this page's)")

    async def page(self, request: Request) -> str:
        """Dependency for every UI route but login: a known host and a session, and for
        state-changing methods a CSRF token. Returns the session id."""
        self.check_host(request)
        sid = self.session(request)
        if request.method in UNSAFE_METHODS:
            await self.check_csrf(request, sid)
        return sid


def with_security_headers(
        prefix: str) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                 Awaitable[Response]]:
    """HTTP middleware: every answer under prefix carries SECURITY_HEADERS."""
    async def middleware(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(prefix):
            if request.url.path.startswith(f"{prefix}/static/"):
                # Revalidated by ETag: the vendored scripts are not fetched on every page.
                response.headers.setdefault("cache-control", "no-cache")
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    return middleware
