"""Browser sessions for the web UI: the API token is exchanged once for a session cookie.

A session is stateless: ``<id>.<expiry>.<mac>`` under a key derived from the API token.
It survives a restart of the peer (same token), so an open browser tab comes back by
itself, and every session dies when the token changes. The CSRF token is derived from
the session id the same way, so it needs no storage either. Logging out revokes the id
in memory (a restart forgets the revocation; the cookie itself is deleted by the browser).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

COOKIE = "nyth_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
DEFAULT_LIFETIME = 12 * 3600
MAX_COOKIE_CHARS = 200
MAX_REVOKED = 10_000


class Sessions:
    def __init__(self, api_token: str, lifetime: int = DEFAULT_LIFETIME) -> None:
        self._token = api_token.encode()
        self._key = hmac.new(self._token, b"nyth-ui-session-v1", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._revoked: OrderedDict[str, None] = OrderedDict()

    def token_matches(self, token: str) -> bool:
        return secrets.compare_digest(token.encode(), self._token)

    def issue(self, now: float | None = None) -> str:
        sid = secrets.token_hex(16)
        expiry = int((time.time() if now is None else now) + self.lifetime)
        return f"{sid}.{expiry}.{self._mac(f'{sid}.{expiry}')}"

    def verify(self, cookie: str | None, now: float | None = None) -> str | None:
        """The session id of a valid, unexpired, unrevoked cookie; None otherwise."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS:
            return None
        sid, _, rest = cookie.partition(".")
        expiry, _, mac = rest.partition(".")
        if not (sid and expiry.isdigit() and mac):
            return None
        if not secrets.compare_digest(mac, self._mac(f"{sid}.{expiry}")):
            return None
        if int(expiry) < (time.time() if now is None else now) or sid in self._revoked:
            return None
        return sid

    def csrf(self, sid: str) -> str:
        return self._mac(f"csrf:{sid}")

    def csrf_matches(self, sid: str, presented: str | None) -> bool:
        return presented is not None and secrets.compare_digest(presented, self.csrf(sid))

    def revoke(self, sid: str) -> None:
        self._revoked[sid] = None
        while len(self._revoked) > MAX_REVOKED:
            self._revoked.popitem(last=False)

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
