"""Cross-site request forgery protection for forms and the JSON API.

Every state-changing request (each ``POST`` the auth and admin routes accept)
passes two checks:

1. **Origin.** When the browser says where the request comes from, it must be
   this site: ``Sec-Fetch-Site``, when present, must be ``same-origin`` or
   ``none`` (typed by the user); ``Origin``, when present, must be the server's
   own origin (``server.public_url``'s origin when configured, else the origin
   the browser used to reach us: ``Host`` with http or https). ``null`` and
   sibling sites (``same-site``) are refused. Non-browser clients send neither
   header and are not subject to CSRF.
2. **Token** (HTML forms only). The form carries ``csrf_token`` (or the request
   an ``X-CSRF-Token`` header) which must equal, compared in constant time:

   - for a browser holding a session cookie: HMAC-SHA256 keyed by the session
     token, so it is bound to the session, cannot be planted by an attacker who
     can only set cookies, and reveals nothing about the session token;
   - otherwise: the value of the ``bambid_csrf`` cookie (a random per-browser
     value set, HttpOnly and SameSite=Lax, on the first page that shows a form
     — the classic double-submit cookie), which a cross-site page can neither
     read nor set.

The JSON API needs no token: its ``POST`` routes only accept
``Content-Type: application/json``, which a cross-site page can only send
after a CORS preflight this server never grants, and they make check 1 too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import weakref
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from bambid.auth.sessions import MAX_TOKEN_LENGTH, SESSION_COOKIE
from bambid.web.args import request_arg

CSRF_COOKIE = "bambid_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAME_SITE_FETCHES = ("same-origin", "none")
_COOKIE_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_SESSION_CSRF_CONTEXT = b"bambid-csrf-v1"


class CsrfError(Exception):
    """A state-changing request that may come from another site; ``str()``
    says which check failed (for logs, not for people)."""


def read_cookie(request: IRequest, name: str) -> str | None:
    """The value of cookie ``name`` sent with ``request`` (ASCII), or None."""
    value = request.getCookie(name.encode("ascii"))
    if not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def set_cookie(request: IRequest, name: str, value: str, max_age: int, secure: bool) -> None:
    """Send cookie ``name`` as HttpOnly, SameSite=Lax, Path=/ for ``max_age``
    seconds (0: delete it now), Secure when ``secure``. ``value`` must be a
    cookie-safe token (URL-safe base64 here)."""
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age}"]
    if max_age <= 0:
        parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    if secure:
        parts.append("Secure")
    parts += ["HttpOnly", "SameSite=Lax"]
    request.responseHeaders.addRawHeader(b"Set-Cookie", "; ".join(parts).encode("ascii"))


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lowercased."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def session_csrf_token(session_token: str) -> str:
    """The form token of a browser holding ``session_token``."""
    return hmac.new(
        session_token.encode("utf-8"), _SESSION_CSRF_CONTEXT, hashlib.sha256
    ).hexdigest()


class CsrfProtection:
    """The checks above, for a server reachable at ``public_url`` ("" when not
    configured). ``cookie_max_age`` is the ``bambid_csrf`` cookie's lifetime."""

    def __init__(self, public_url: str, cookie_max_age: int) -> None:
        self.public_origin = origin_of(public_url) if public_url else None
        self.secure = public_url.startswith("https:")
        self.cookie_max_age = cookie_max_age
        self._issued: weakref.WeakKeyDictionary[IRequest, str] = weakref.WeakKeyDictionary()

    def token(self, request: IRequest) -> str:
        """The token to put in forms on the page answering ``request``. Sets
        the ``bambid_csrf`` cookie when the browser needs one and has none."""
        expected = self.expected(request)
        if expected is not None:
            return expected
        issued = self._issued.get(request)
        if issued is None:
            issued = self._issued[request] = secrets.token_urlsafe(32)
            set_cookie(request, CSRF_COOKIE, issued, self.cookie_max_age, self.secure)
        return issued

    def expected(self, request: IRequest) -> str | None:
        """The token a form posted with ``request``'s cookies must carry; None
        when the browser has neither a session nor a ``bambid_csrf`` cookie."""
        session = read_cookie(request, SESSION_COOKIE)
        if session and len(session) <= MAX_TOKEN_LENGTH:
            return session_csrf_token(session)
        cookie = read_cookie(request, CSRF_COOKIE)
        if cookie and _COOKIE_TOKEN.fullmatch(cookie):
            return cookie
        return None

    def check_origin(self, request: IRequest) -> None:
        """Check 1; raises ``CsrfError``."""
        fetch_site = request.getHeader("sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() not in _SAME_SITE_FETCHES:
            raise CsrfError(f"Sec-Fetch-Site is {fetch_site!r}")
        origin = request.getHeader("origin")
        if origin is None:
            return
        origin = origin.strip().rstrip("/").lower()
        if self.public_origin is not None:
            allowed = {self.public_origin}
        else:
            host = (request.getHeader("host") or "").strip().lower()
            allowed = {f"http://{host}", f"https://{host}"} if host else set()
        if origin not in allowed:
            raise CsrfError(f"Origin {origin!r} is not this site")

    def check_form(self, request: IRequest) -> None:
        """Checks 1 and 2 for a form post; raises ``CsrfError``."""
        self.check_origin(request)
        expected = self.expected(request)
        if expected is None:
            raise CsrfError("no session or CSRF cookie")
        sent = request_arg(request, CSRF_FIELD) or request.getHeader(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent.encode("utf-8"), expected.encode("ascii")):
            raise CsrfError("missing or wrong CSRF token")
