"""Who may act through the web UI, and the defences of every response.

Reading is open to whoever reaches the address (it binds to 127.0.0.1 by
default). Acting (cancel, resume) is allowed only when ``ORCHESTRATOR_UI_TOKEN``
is set and the UI was not started ``--read-only``, and only to a request that
carries the token:

* a script sends ``Authorization: Bearer <token>``: browsers never attach that
  header by themselves, so a cross-site page cannot forge it;
* a person logs in with the token once; the browser then holds a session cookie
  (``HttpOnly``, ``SameSite=Strict``, signed with the token, valid 12 hours) and
  every form carries a CSRF token derived from the session.

Every state-changing request must also come from the UI's own origin
(``Origin``, else ``Sec-Fetch-Site``, else ``Referer``, when the browser sends
them). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "orchestrator_ui_session"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

# No inline script, no asset from elsewhere: the page works offline and an injected tag does nothing.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class Refused(Exception):
    """A request the UI will not serve: ``status`` and a message for the person or the script."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Guard:
    """The UI's token and mode, and the checks built on them."""

    token: str | None
    read_only: bool

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None and not self.read_only

    def _mac(self, purpose: str, value: str) -> str:
        key = (self.token or "").encode()
        return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        """A session cookie value: issue time, a random nonce and their signature."""
        body = f"{int(time.time())}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session', body)}"

    def session(self, request: Request) -> str | None:
        """The valid session of ``request`` (its cookie's body), else ``None``."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        body, _, mac = cookie.rpartition(".")
        if self.token is None or not body or not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        issued = body.split(".", 1)[0]
        if not issued.isdigit() or time.time() - int(issued) > SESSION_SECONDS:
            return None
        return body

    def csrf_token(self, session: str | None) -> str:
        return self._mac("csrf", session) if session else ""

    def require_same_origin(self, request: Request) -> None:
        """Refuse a request a browser marked as coming from another site."""
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        origin = request.headers.get("origin")
        if origin == "null":
            raise Refused(403, "cross-site request refused (opaque Origin)")
        if origin is not None:
            if origin != expected:
                raise Refused(403, "cross-site request refused (its Origin is not this UI)")
            return
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            if site not in ("same-origin", "none"):
                raise Refused(403, "cross-site request refused (Sec-Fetch-Site)")
            return
        referer = request.headers.get("referer")
        if referer:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}" != expected:
                raise Refused(403, "cross-site request refused (its Referer is not this UI)")

    def authorize(self, request: Request, csrf: str | None) -> None:
        """Allow an action or raise :class:`Refused` saying why not."""
        if self.read_only:
            raise Refused(403, "this UI is read-only (started with --read-only)")
        if self.token is None:
            raise Refused(403, "actions are disabled: set ORCHESTRATOR_UI_TOKEN to allow them")
        self.require_same_origin(request)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(given.strip()):
            return
        session = self.session(request)
        if session is None:
            raise Refused(401, "the UI token is required: log in with ORCHESTRATOR_UI_TOKEN")
        sent = csrf or request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, self.csrf_token(session)):
            raise Refused(403, "missing or wrong CSRF token: reload the page and try again")


def safe_next(target: str | None) -> str:
    """A local path to go back to after logging in; anything else (another site) becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target
