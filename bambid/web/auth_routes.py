"""HTTP routes for accounts: the JSON API under ``/api/auth`` and ``/api/me``,
and the ``/login``, ``/register``, ``/guest`` and ``/logout`` pages and forms.

Thin adapters over ``AccountService``: they read the request, check CSRF
(``bambid.auth.csrf``), call the service and set or clear the session cookie.
``docs/api.md`` is the contract. The session cookie is ``bambid_session``:
HttpOnly, SameSite=Lax, Path=/, Max-Age the session's lifetime, Secure when
``server.public_url`` is https.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from bambid.auth.accounts import AccountError, AccountService, SignedIn, banned_error
from bambid.auth.csrf import CsrfError, CsrfProtection, read_cookie, set_cookie
from bambid.auth.sessions import SESSION_COOKIE, Banned
from bambid.identity import Identity
from bambid.storage import StorageError
from bambid.web.app import ApiError, WebApp, json_response, read_json
from bambid.web.args import request_arg
from bambid.web.site import BambidSite

CSRF_MESSAGE = (
    "This form has expired or was not sent from this site. Reload the page and try again."
)


@attrs.frozen
class Notice:
    """Something for ``error.html`` to show (it reads ``description``)."""

    description: str


def form_value(request: IRequest, name: str) -> str:
    """The first value of form field ``name`` ("" when absent or not UTF-8)."""
    return request_arg(request, name) or ""


def client_address(request: IRequest) -> str:
    """The client's IP address (what login throttling keys on): the peer's,
    or behind a trusted reverse proxy the client it names in
    ``X-Forwarded-For`` (``server.trusted_proxies``, ``bambid.web.proxies``)."""
    address = request.getClientAddress()
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return "local"
    site = getattr(getattr(request, "channel", None), "site", None)
    if not isinstance(site, BambidSite):
        return address.host
    return site.proxies.client(address.host, request.getHeader("x-forwarded-for"))


def safe_next(value: str) -> str:
    """``value`` if it is a path on this site, else "/" (no open redirects)."""
    if (
        not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or len(value) > 512
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)
    ):
        return "/"
    return value


def redirect(request: IRequest, location: str) -> bytes:
    """``303 See Other`` to ``location`` (a local path)."""
    request.setResponseCode(303)
    request.setHeader(b"Location", location.encode("utf-8"))
    request.setHeader(b"Cache-Control", b"no-store")
    return b""


def api_error(error: AccountError) -> ApiError:
    return ApiError(error.status, error.code, error.message, **error.extra)


class AuthRoutes:
    """The account routes, and what other routes need to know about the
    person making a request (``identify``, ``csrf``)."""

    _log = Logger()

    def __init__(self, web: WebApp, accounts: AccountService, csrf: CsrfProtection) -> None:
        self.web = web
        self.accounts = accounts
        self.csrf = csrf

    # -- for every route -------------------------------------------------------------

    async def identify(self, request: IRequest) -> Identity | None:
        """Who sent ``request`` (its session cookie); None for nobody.
        A banned person gets ``AccountError("banned")``."""
        try:
            return await self.accounts.identify(read_cookie(request, SESSION_COOKIE))
        except Banned as e:
            raise banned_error(e.sanction) from None

    async def page_context(self, request: IRequest) -> dict[str, Any]:
        """``{"user": Identity | None, "csrf_token": str}`` for every page.
        Pages are per person, so they are not to be cached."""
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            user = await self.identify(request)
        except AccountError:
            user = None
        except StorageError:
            self._log.failure("could not identify the person for a page")
            user = None
        return {"user": user, "csrf_token": self.csrf.token(request)}

    def check_origin(self, request: IRequest) -> None:
        """CSRF check for a JSON API call; ``ApiError`` 403 ``csrf_failed``."""
        try:
            self.csrf.check_origin(request)
        except CsrfError as e:
            self._log.info("refused {path}: {why}", path=request.path, why=str(e))
            raise ApiError(403, "csrf_failed", "cross-site request refused") from None

    def check_form(self, request: IRequest) -> None:
        """CSRF check for a form post; ``ApiError`` 403 (an error page)."""
        try:
            self.csrf.check_form(request)
        except CsrfError as e:
            self._log.info("refused {path}: {why}", path=request.path, why=str(e))
            raise ApiError(403, "csrf_failed", CSRF_MESSAGE) from None

    def set_session_cookie(self, request: IRequest, signed_in: SignedIn) -> None:
        set_cookie(request, SESSION_COOKIE, signed_in.token, signed_in.max_age, self.csrf.secure)

    def clear_session_cookie(self, request: IRequest) -> None:
        set_cookie(request, SESSION_COOKIE, "", 0, self.csrf.secure)

    # -- JSON API --------------------------------------------------------------------

    async def api_register(self, request: IRequest) -> bytes:
        self.check_origin(request)
        body = read_json(request)
        try:
            signed_in = await self.accounts.register(
                body.get("username"), body.get("password"), read_cookie(request, SESSION_COOKIE)
            )
        except AccountError as e:
            raise api_error(e) from None
        return await self._signed_in_json(request, 201, signed_in)

    async def api_login(self, request: IRequest) -> bytes:
        self.check_origin(request)
        body = read_json(request)
        try:
            signed_in = await self.accounts.login(
                body.get("username"),
                body.get("password"),
                client_address(request),
                read_cookie(request, SESSION_COOKIE),
            )
        except AccountError as e:
            raise api_error(e) from None
        return await self._signed_in_json(request, 200, signed_in)

    async def api_guest(self, request: IRequest) -> bytes:
        self.check_origin(request)
        body = read_json(request)
        try:
            signed_in = await self.accounts.guest(
                body.get("name"), read_cookie(request, SESSION_COOKIE)
            )
        except AccountError as e:
            raise api_error(e) from None
        return await self._signed_in_json(request, 201, signed_in)

    async def api_logout(self, request: IRequest) -> bytes:
        self.check_origin(request)
        read_json(request)
        await self.accounts.logout(read_cookie(request, SESSION_COOKIE))
        self.clear_session_cookie(request)
        return json_response(request, 200, {"ok": True})

    async def api_me(self, request: IRequest) -> bytes:
        try:
            identity = await self.identify(request)
        except AccountError as e:
            raise api_error(e) from None
        if identity is None:
            raise ApiError(401, "unauthenticated", "not signed in")
        return json_response(request, 200, {"user": await self.accounts.me(identity)})

    async def _signed_in_json(self, request: IRequest, status: int, signed_in: SignedIn) -> bytes:
        self.set_session_cookie(request, signed_in)
        return json_response(request, status, {"user": await self.accounts.me(signed_in.identity)})

    # -- pages and forms --------------------------------------------------------------

    async def login_page(self, request: IRequest) -> bytes:
        next_path = safe_next(form_value(request, "next"))
        return await self._login(request, 200, next_path=next_path)

    async def register_page(self, request: IRequest) -> bytes:
        return await self._register(request, 200)

    async def login_form(self, request: IRequest) -> bytes:
        self.check_form(request)
        username = form_value(request, "username")
        next_path = safe_next(form_value(request, "next"))
        try:
            signed_in = await self.accounts.login(
                username,
                form_value(request, "password"),
                client_address(request),
                read_cookie(request, SESSION_COOKIE),
            )
        except AccountError as e:
            return await self._login(
                request, e.status, next_path=next_path, username=username, error=e
            )
        self.set_session_cookie(request, signed_in)
        return redirect(request, next_path)

    async def guest_form(self, request: IRequest) -> bytes:
        self.check_form(request)
        name = form_value(request, "name")
        next_path = safe_next(form_value(request, "next"))
        try:
            signed_in = await self.accounts.guest(name, read_cookie(request, SESSION_COOKIE))
        except AccountError as e:
            return await self._login(
                request, e.status, next_path=next_path, guest_name=name, guest_error=e
            )
        self.set_session_cookie(request, signed_in)
        return redirect(request, next_path)

    async def register_form(self, request: IRequest) -> bytes:
        self.check_form(request)
        username = form_value(request, "username")
        password = form_value(request, "password")
        try:
            if password != form_value(request, "password_confirm"):
                raise AccountError("invalid", "the two passwords differ", field="password_confirm")
            signed_in = await self.accounts.register(
                username, password, read_cookie(request, SESSION_COOKIE)
            )
        except AccountError as e:
            return await self._register(request, e.status, username=username, error=e)
        self.set_session_cookie(request, signed_in)
        return redirect(request, "/")

    async def logout_form(self, request: IRequest) -> bytes:
        self.check_form(request)
        await self.accounts.logout(read_cookie(request, SESSION_COOKIE))
        self.clear_session_cookie(request)
        return redirect(request, "/")

    async def _login(
        self,
        request: IRequest,
        status: int,
        next_path: str = "/",
        username: str = "",
        guest_name: str = "",
        error: AccountError | None = None,
        guest_error: AccountError | None = None,
    ) -> bytes:
        _retry_after(request, error or guest_error)
        return await self.web.page(
            request,
            "login.html",
            status=status,
            title="Log in",
            next_path=next_path,
            username=username,
            guest_name=guest_name,
            error=error,
            guest_error=guest_error,
            allow_guests=self.accounts.allow_guests,
        )

    async def _register(
        self,
        request: IRequest,
        status: int,
        username: str = "",
        error: AccountError | None = None,
    ) -> bytes:
        return await self.web.page(
            request,
            "register.html",
            status=status,
            title="Register",
            username=username,
            error=error,
        )


def install_auth_routes(web: WebApp, accounts: AccountService, public_url: str = "") -> AuthRoutes:
    """Add the account routes to ``web.app`` and the ``user``/``csrf_token``
    page context; returns the routes object (the admin pages use it)."""
    csrf = CsrfProtection(public_url, cookie_max_age=int(accounts.session_lifetime))
    routes = AuthRoutes(web, accounts, csrf)
    app = web.app
    post, get = ["POST"], ["GET", "HEAD"]
    app.route("/api/auth/register", methods=post, endpoint="auth_api_register")(routes.api_register)
    app.route("/api/auth/login", methods=post, endpoint="auth_api_login")(routes.api_login)
    app.route("/api/auth/guest", methods=post, endpoint="auth_api_guest")(routes.api_guest)
    app.route("/api/auth/logout", methods=post, endpoint="auth_api_logout")(routes.api_logout)
    app.route("/api/me", methods=get, endpoint="auth_api_me")(routes.api_me)
    app.route("/login", methods=get, endpoint="auth_login_page")(routes.login_page)
    app.route("/login", methods=post, endpoint="auth_login_form")(routes.login_form)
    app.route("/register", methods=get, endpoint="auth_register_page")(routes.register_page)
    app.route("/register", methods=post, endpoint="auth_register_form")(routes.register_form)
    app.route("/guest", methods=post, endpoint="auth_guest_form")(routes.guest_form)
    app.route("/logout", methods=post, endpoint="auth_logout_form")(routes.logout_form)
    web.context_providers.append(routes.page_context)
    return routes


def _retry_after(request: IRequest, error: AccountError | None) -> None:
    if error is not None and "retry_after" in error.extra:
        request.setHeader(b"Retry-After", str(error.extra["retry_after"]).encode("ascii"))
