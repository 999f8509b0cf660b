"""Accounts over a real loopback port: register, login, logout, guests,
sessions and their cookies, CSRF, throttling and bans.

The helpers at the top (``Browser``, ``service``) are shared with
``test_admin_page.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool

from bambid.auth.csrf import CSRF_COOKIE
from bambid.auth.sessions import SESSION_COOKIE, hash_token, new_session
from bambid.models import Conversation, Sanction
from bambid.service import BambidService
from tests.conftest import Running, make_config

CSRF_INPUT = re.compile(rb'name="csrf_token" value="([^"]+)"')


@attrs.frozen
class Response:
    code: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def set_cookies(self) -> list[str]:
        return self.headers.get("set-cookie", [])

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class _BoundEndpoints:
    """An ``Agent`` endpoint factory whose connections come from ``source``
    (another loopback address looks like another client)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(
            reactor, uri.host.decode(), uri.port, bindAddress=(self.source, 0)
        )


class Browser:
    """One browser: its own cookie jar, no connection reuse, redirects not
    followed (tests look at them)."""

    def __init__(self, base: str, source: str = "127.0.0.1") -> None:
        self.base = base
        self.jar = IndexableCookieJar()
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, _BoundEndpoints(source), pool=pool)
        self.client = HTTPClient(agent, cookiejar=self.jar)

    def cookie(self, name: str) -> str | None:
        for cookie in self.jar:
            if cookie.name == name:
                return cookie.value
        return None

    async def request(self, method: str, path: str, **kw: Any) -> Response:
        response = await self.client.request(method, self.base + path, allow_redirects=False, **kw)
        body = await response.content()
        headers = {
            k.decode().lower(): [v.decode() for v in values]
            for k, values in response.headers.getAllRawHeaders()
        }
        return Response(response.code, headers, body)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def api(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        """POST ``body`` as JSON."""
        return await self.request(
            "POST", path, json={} if body is None else body, headers=headers or {}
        )

    async def csrf_token(self, page: str = "/login") -> str:
        """The token the forms of ``page`` carry."""
        response = await self.get(page)
        match = CSRF_INPUT.search(response.body)
        assert match, f"no csrf_token in {page}"
        return match.group(1).decode()

    async def form(self, path: str, fields: dict[str, str], token: bool = True) -> Response:
        """POST an HTML form; with ``token`` the CSRF token is fetched first
        (from /login) and added."""
        data = dict(fields)
        if token:
            data.setdefault("csrf_token", await self.csrf_token())
        return await self.request("POST", path, data=data)

    async def register(self, name: str, password: str = "correct horse") -> Response:
        response = await self.api("/api/auth/register", {"username": name, "password": password})
        assert response.code == 201, response.body
        return response


@asynccontextmanager
async def service(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    """bambid on 127.0.0.1:0 with sections changed, e.g. ``auth={"login_burst": 2}``."""
    config = make_config(tmp_path)
    changes = {
        name: attrs.evolve(getattr(config, name), **values) for name, values in sections.items()
    }
    svc = BambidService(attrs.evolve(config, **changes), reactor, base_dir=tmp_path)
    svc.startService()
    await svc.started
    try:
        yield Running(svc)
    finally:
        await svc.stopService()


# --- tests ------------------------------------------------------------------------

PASSWORD = "correct horse"
DAY = 86400


def cookie_header(response: Response, name: str) -> str:
    (header,) = [c for c in response.set_cookies() if c.startswith(name + "=")]
    return header


def cookie_attributes(header: str) -> dict[str, str]:
    attributes = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        attributes[key.lower()] = value
    return attributes


@pytest_twisted.ensureDeferred
async def test_register_me_logout_login(running: Running) -> None:
    ada = Browser(running.http)
    response = await ada.api("/api/auth/register", {"username": "Ada", "password": PASSWORD})
    assert response.code == 201
    user = {"name": "Ada", "role": "user", "guest": False, "xp": 0, "level": 0, "next": 1000}
    assert response.json() == {"user": user}
    token = ada.cookie(SESSION_COOKIE)
    assert token
    # Storage keeps only the token's hash.
    sessions = await running.service.storage.list_sessions("ada")
    assert [s.token_hash for s in sessions] == [hash_token(token)]
    assert token not in str(sessions)
    account = await running.service.storage.get_account("ADA")
    assert account is not None and account.password_hash.startswith("$argon2id$")

    response = await ada.get("/api/me")
    assert (response.code, response.json()) == (200, {"user": user})
    assert response.header("cache-control") == "no-store"

    response = await ada.api("/api/auth/logout")
    assert (response.code, response.json()) == (200, {"ok": True})
    assert cookie_attributes(cookie_header(response, SESSION_COOKIE))["max-age"] == "0"
    assert ada.cookie(SESSION_COOKIE) is None
    assert await running.service.storage.get_session(hash_token(token)) is None
    response = await ada.get("/api/me")
    assert (response.code, response.json()["error"]) == (401, "unauthenticated")
    # The old token is dead even when replayed.
    replay = await ada.get("/api/me", cookies={SESSION_COOKIE: token})
    assert replay.code == 401

    response = await ada.api("/api/auth/login", {"username": "aDA", "password": PASSWORD})
    assert (response.code, response.json()["user"]["name"]) == (200, "Ada")
    assert ada.cookie(SESSION_COOKIE) not in (None, token)
    assert (await ada.get("/api/me")).json()["user"]["name"] == "Ada"


@pytest_twisted.ensureDeferred
async def test_me_reports_xp_level_and_next(running: Running) -> None:
    ada = Browser(running.http)
    await ada.register("Ada")
    await running.service.storage.add_xp("Ada", 2600)
    user = (await ada.get("/api/me")).json()["user"]
    assert (user["xp"], user["level"], user["next"]) == (2600, 2, 4500)


@pytest_twisted.ensureDeferred
async def test_login_again_replaces_the_session(running: Running) -> None:
    ada = Browser(running.http)
    await ada.register("Ada")
    first = ada.cookie(SESSION_COOKIE)
    assert first
    response = await ada.api("/api/auth/login", {"username": "Ada", "password": PASSWORD})
    assert response.code == 200
    assert await running.service.storage.get_session(hash_token(first)) is None
    assert len(await running.service.storage.list_sessions("Ada")) == 1


@pytest_twisted.ensureDeferred
async def test_names_are_unique_regardless_of_case(running: Running) -> None:
    await Browser(running.http).register("Ada")
    response = await Browser(running.http).api(
        "/api/auth/register", {"username": "ADA", "password": PASSWORD}
    )
    assert response.code == 409
    assert response.json()["error"] == "name_taken"
    assert response.json()["field"] == "username"


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        ({"username": "ab", "password": PASSWORD}, 422, "invalid", "username"),
        ({"username": "a" * 33, "password": PASSWORD}, 422, "invalid", "username"),
        ({"username": "two words", "password": PASSWORD}, 422, "invalid", "username"),
        ({"username": "Zoë", "password": PASSWORD}, 422, "invalid", "username"),
        ({"username": "ada\n", "password": PASSWORD}, 422, "invalid", "username"),
        ({"username": "<b>x</b>", "password": PASSWORD}, 422, "invalid", "username"),
        ({"username": "Ada", "password": "short"}, 422, "invalid", "password"),
        ({"username": "Ada", "password": "x" * 1025}, 422, "invalid", "password"),
        ({"password": PASSWORD}, 400, "bad_request", "username"),
        ({"username": 7, "password": PASSWORD}, 400, "bad_request", "username"),
        ({"username": "Ada", "password": None}, 400, "bad_request", "password"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_registrations_name_the_field(
    running: Running, body: dict[str, Any], status: int, error: str, field: str
) -> None:
    response = await Browser(running.http).api("/api/auth/register", body)
    assert response.code == status
    assert (response.header("content-type") or "").startswith("application/json")
    assert (response.json()["error"], response.json()["field"]) == (error, field)
    assert await running.service.storage.count_accounts() == 0


@pytest_twisted.ensureDeferred
async def test_edge_lengths_are_accepted(running: Running) -> None:
    await Browser(running.http).register("a_-", "x" * 8)
    await Browser(running.http).register("B" * 32, "é" * 1024)


@pytest_twisted.ensureDeferred
async def test_api_wants_json(running: Running) -> None:
    response = await Browser(running.http).request(
        "POST", "/api/auth/register", data={"username": "Ada", "password": PASSWORD}
    )
    assert (response.code, response.json()["error"]) == (415, "unsupported_media_type")


@pytest_twisted.ensureDeferred
async def test_login_failure_does_not_say_whether_the_name_exists(running: Running) -> None:
    await Browser(running.http).register("Ada")
    wrong = await Browser(running.http).api(
        "/api/auth/login", {"username": "Ada", "password": "not the password"}
    )
    unknown = await Browser(running.http).api(
        "/api/auth/login", {"username": "Nobody", "password": "not the password"}
    )
    malformed = await Browser(running.http).api(
        "/api/auth/login", {"username": "x", "password": "y" * 2000}
    )
    assert wrong.code == unknown.code == malformed.code == 401
    assert wrong.body == unknown.body == malformed.body
    assert wrong.json()["error"] == "invalid_credentials"
    assert wrong.set_cookies() == []


@pytest_twisted.ensureDeferred
async def test_session_cookie_flags(running: Running) -> None:
    ada = Browser(running.http)
    response = await ada.register("Ada")
    header = cookie_header(response, SESSION_COOKIE)
    attributes = cookie_attributes(header)
    assert attributes["path"] == "/"
    assert attributes["max-age"] == str(30 * DAY)
    assert attributes["samesite"] == "Lax"
    assert "httponly" in attributes
    assert "secure" not in attributes


@pytest_twisted.ensureDeferred
async def test_cookies_are_secure_behind_https(tmp_path: Path) -> None:
    public = "https://chat.example"
    async with service(tmp_path, server={"public_url": public}) as running:
        browser = Browser(running.http)
        response = await browser.api(
            "/api/auth/register", {"username": "Ada", "password": PASSWORD}, {"Origin": public}
        )
        assert response.code == 201
        assert "secure" in cookie_attributes(cookie_header(response, SESSION_COOKIE))
        page = await browser.get("/login")
        assert "secure" in cookie_attributes(cookie_header(page, CSRF_COOKIE))
        # Behind a proxy the public URL is the origin, not the Host header.
        refused = await browser.api(
            "/api/auth/login",
            {"username": "Ada", "password": PASSWORD},
            {"Origin": running.http},
        )
        assert (refused.code, refused.json()["error"]) == (403, "csrf_failed")


@pytest_twisted.ensureDeferred
async def test_guest_session_lifetime(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"guest_session_days": 0.5}) as running:
        response = await Browser(running.http).api("/api/auth/guest", {"name": "Wanderer"})
        assert response.code == 201
        assert cookie_attributes(cookie_header(response, SESSION_COOKIE))["max-age"] == str(
            DAY // 2
        )


@pytest_twisted.ensureDeferred
async def test_expired_sessions_are_refused(running: Running) -> None:
    ada = Browser(running.http)
    await ada.register("Ada")
    now = reactor.seconds()
    expired_token, expired = new_session("Ada", now - 100, 50)
    live_token, live = new_session("Ada", now, 3600)
    await running.service.storage.create_session(expired)
    await running.service.storage.create_session(live)
    assert (await ada.get("/api/me", cookies={SESSION_COOKIE: live_token})).code == 200
    response = await Browser(running.http).get("/api/me", cookies={SESSION_COOKIE: expired_token})
    assert (response.code, response.json()["error"]) == (401, "unauthenticated")
    page = await Browser(running.http).get("/", cookies={SESSION_COOKIE: expired_token})
    assert b'href="/login"' in page.body
    assert b"Log out" not in page.body


@pytest_twisted.ensureDeferred
async def test_garbage_session_cookies_are_anonymous(running: Running) -> None:
    for value in ("nonsense", "x" * 500):
        response = await Browser(running.http).get("/api/me", cookies={SESSION_COOKIE: value})
        assert response.code == 401


# -- CSRF ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_forms_without_the_csrf_token_are_refused(running: Running) -> None:
    browser = Browser(running.http)
    await browser.get("/login")  # has the CSRF cookie now
    assert browser.cookie(CSRF_COOKIE)
    fields = {"username": "Ada", "password": PASSWORD, "password_confirm": PASSWORD}
    for sent in ({}, {"csrf_token": "wrong"}, {"csrf_token": ""}):
        response = await browser.form("/register", {**fields, **sent}, token=False)
        assert response.code == 403
        assert (response.header("content-type") or "").startswith("text/html")
        assert b"expired" in response.body
        assert b"Traceback" not in response.body
    # A browser without the cookie cannot use someone else's token either.
    token = await browser.csrf_token()
    other = Browser(running.http)
    response = await other.form("/register", {**fields, "csrf_token": token}, token=False)
    assert response.code == 403
    assert await running.service.storage.count_accounts() == 0

    response = await browser.form("/register", fields)
    assert response.code == 303
    assert await running.service.storage.get_account("Ada") is not None


@pytest_twisted.ensureDeferred
async def test_csrf_cookie_flags_and_session_bound_token(running: Running) -> None:
    browser = Browser(running.http)
    page = await browser.get("/login")
    attributes = cookie_attributes(cookie_header(page, CSRF_COOKIE))
    assert "httponly" in attributes
    assert attributes["samesite"] == "Lax"
    assert attributes["path"] == "/"
    anonymous_token = await browser.csrf_token()
    assert anonymous_token == browser.cookie(CSRF_COOKIE)
    await browser.register("Ada")
    signed_in_token = await browser.csrf_token("/")
    assert signed_in_token != anonymous_token
    assert signed_in_token != browser.cookie(SESSION_COOKIE)
    # The old, cookie-bound token no longer works once a session exists.
    response = await browser.form("/logout", {"csrf_token": anonymous_token}, token=False)
    assert response.code == 403
    assert (await browser.get("/api/me")).code == 200


@pytest_twisted.ensureDeferred
async def test_form_from_another_origin_is_refused_even_with_the_token(
    running: Running,
) -> None:
    browser = Browser(running.http)
    token = await browser.csrf_token()
    data = {"username": "Ada", "password": PASSWORD, "password_confirm": PASSWORD}
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = await browser.request(
            "POST", "/register", data={**data, "csrf_token": token}, headers=headers
        )
        assert response.code == 403
    response = await browser.request(
        "POST",
        "/register",
        data={**data, "csrf_token": token},
        headers={"Origin": running.http, "Sec-Fetch-Site": "same-origin"},
    )
    assert response.code == 303


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
@pytest_twisted.ensureDeferred
async def test_cross_origin_json_posts_are_refused(
    running: Running, headers: dict[str, str]
) -> None:
    ada = Browser(running.http)
    await ada.register("Ada")
    for path, body in [
        ("/api/auth/register", {"username": "Bob", "password": PASSWORD}),
        ("/api/auth/login", {"username": "Ada", "password": PASSWORD}),
        ("/api/auth/guest", {"name": "Wanderer"}),
        ("/api/auth/logout", {}),
    ]:
        response = await ada.api(path, body, headers)
        assert (response.code, response.json()["error"]) == (403, "csrf_failed"), path
    assert (await ada.get("/api/me")).code == 200  # not logged out
    assert await running.service.storage.get_account("Bob") is None


@pytest_twisted.ensureDeferred
async def test_same_origin_json_posts_are_accepted(running: Running) -> None:
    response = await Browser(running.http).api(
        "/api/auth/register",
        {"username": "Ada", "password": PASSWORD},
        {"Origin": running.http, "Sec-Fetch-Site": "same-origin"},
    )
    assert response.code == 201


# -- throttling ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_throttled_per_account(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        await Browser(running.http).register("Ada")
        attacker = Browser(running.http, source="127.0.0.1")
        for _ in range(2):
            response = await attacker.api(
                "/api/auth/login", {"username": "ada", "password": "guess guess"}
            )
            assert response.code == 401
        # From another address, even the right password waits: the account is throttled.
        owner = Browser(running.http, source="127.0.0.2")
        response = await owner.api("/api/auth/login", {"username": "Ada", "password": PASSWORD})
        assert response.code == 429
        assert response.json()["error"] == "rate_limited"
        retry_after = response.json()["retry_after"]
        assert 1 <= retry_after <= 60
        assert response.header("retry-after") == str(retry_after)
        # Other accounts are not affected from that address.
        await Browser(running.http, source="127.0.0.2").register("Bob")
        response = await Browser(running.http, source="127.0.0.2").api(
            "/api/auth/login", {"username": "Bob", "password": PASSWORD}
        )
        assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_throttled_per_address(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        await Browser(running.http).register("Ada")
        sprayer = Browser(running.http, source="127.0.0.3")
        for name in ("Bob", "Cy"):
            response = await sprayer.api(
                "/api/auth/login", {"username": name, "password": "guess guess"}
            )
            assert response.code == 401
        response = await sprayer.api("/api/auth/login", {"username": "Ada", "password": PASSWORD})
        assert response.code == 429
        assert int(response.header("retry-after") or 0) >= 1
        # The HTML form says so too.
        page = await sprayer.form("/login", {"username": "Ada", "password": PASSWORD})
        assert page.code == 429
        assert page.header("retry-after")
        assert b"too many failed logins" in page.body
        # Ada from her own address is fine.
        response = await Browser(running.http, source="127.0.0.4").api(
            "/api/auth/login", {"username": "Ada", "password": PASSWORD}
        )
        assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_own_logins_between_guesses_do_not_reset_the_address(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        await Browser(running.http).register("Eve")
        eve = Browser(running.http, source="127.0.0.5")
        guess = {"password": "guess guess"}
        assert (await eve.api("/api/auth/login", {"username": "Bob", **guess})).code == 401
        own = {"username": "Eve", "password": PASSWORD}
        assert (await eve.api("/api/auth/login", own)).code == 200
        assert (await eve.api("/api/auth/login", {"username": "Cy", **guess})).code == 401
        assert (await eve.api("/api/auth/login", own)).code == 429


@pytest_twisted.ensureDeferred
async def test_a_successful_login_forgives_the_account_failures(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        await Browser(running.http).register("Ada")
        wrong = {"username": "Ada", "password": "typo typo"}
        right = {"username": "Ada", "password": PASSWORD}
        ada = Browser(running.http, source="127.0.0.6")
        assert (await ada.api("/api/auth/login", wrong)).code == 401
        assert (await ada.api("/api/auth/login", right)).code == 200
        # The account starts afresh; from another address two more typos are allowed.
        elsewhere = Browser(running.http, source="127.0.0.7")
        assert (await elsewhere.api("/api/auth/login", wrong)).code == 401
        assert (await elsewhere.api("/api/auth/login", wrong)).code == 401
        assert (await elsewhere.api("/api/auth/login", right)).code == 429


@pytest_twisted.ensureDeferred
async def test_successful_logins_are_not_throttled(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        ada = Browser(running.http)
        await ada.register("Ada")
        for _ in range(5):
            response = await ada.api("/api/auth/login", {"username": "Ada", "password": PASSWORD})
            assert response.code == 200


# -- guests --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_guest_session(running: Running) -> None:
    guest = Browser(running.http)
    response = await guest.api("/api/auth/guest", {"name": "Wanderer"})
    assert response.code == 201
    user = {"name": "Wanderer", "role": "user", "guest": True, "xp": 0, "level": 0, "next": 1000}
    assert response.json() == {"user": user}
    assert (await guest.get("/api/me")).json() == {"user": user}
    (session,) = await running.service.storage.list_sessions("wanderer")
    assert session.guest
    assert session.expires_at - session.created_at == pytest.approx(DAY)
    assert await running.service.storage.get_account("Wanderer") is None


@pytest_twisted.ensureDeferred
async def test_a_new_guest_never_inherits_an_earlier_guests_conversations(
    running: Running,
) -> None:
    storage = running.service.storage
    first = Browser(running.http)
    assert (await first.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    said = Conversation(owner="guest:Wanderer", title="mine", created_at=1.0, updated_at=1.0)
    await storage.save_conversation(said)
    # The same browser claiming its own name again keeps its conversation.
    assert (await first.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    assert await storage.get_conversation("guest:Wanderer") == said
    # Once that guest has gone, whoever takes the name starts afresh.
    assert (await first.api("/api/auth/logout")).code == 200
    newcomer = Browser(running.http)
    assert (await newcomer.api("/api/auth/guest", {"name": "WANDERER"})).code == 201
    assert await storage.get_conversation("guest:WANDERER") is None
    assert await storage.list_conversations("guest:Wanderer", 10) == []


@pytest_twisted.ensureDeferred
async def test_guest_names_collide_with_accounts_and_live_guests(running: Running) -> None:
    await Browser(running.http).register("Ada")
    response = await Browser(running.http).api("/api/auth/guest", {"name": "ADA"})
    assert (response.code, response.json()["error"], response.json()["field"]) == (
        409,
        "name_taken",
        "name",
    )
    first = Browser(running.http)
    assert (await first.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    response = await Browser(running.http).api("/api/auth/guest", {"name": "wanderer"})
    assert (response.code, response.json()["error"]) == (409, "name_taken")
    response = await Browser(running.http).api(
        "/api/auth/register", {"username": "WANDERER", "password": PASSWORD}
    )
    assert (response.code, response.json()["error"]) == (409, "name_taken")
    # The guest themself may take the name again, or register it.
    assert (await first.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    assert (await first.register("Wanderer")).json()["user"]["guest"] is False
    assert len(await running.service.storage.list_sessions("Wanderer")) == 1


@pytest_twisted.ensureDeferred
async def test_guest_names_are_free_after_logout_or_expiry(running: Running) -> None:
    first = Browser(running.http)
    assert (await first.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    assert (await first.api("/api/auth/logout")).code == 200
    second = Browser(running.http)
    assert (await second.api("/api/auth/guest", {"name": "Wanderer"})).code == 201

    _, expired = new_session("Drifter", reactor.seconds() - 100, 50, guest=True)
    await running.service.storage.create_session(expired)
    assert (await Browser(running.http).api("/api/auth/guest", {"name": "Drifter"})).code == 201


@pytest_twisted.ensureDeferred
async def test_guest_names_follow_the_username_rules(running: Running) -> None:
    for name, status in (("ab", 422), ("no spaces", 422), (None, 400)):
        response = await Browser(running.http).api("/api/auth/guest", {"name": name})
        assert (response.code, response.json()["field"]) == (status, "name")


@pytest_twisted.ensureDeferred
async def test_guests_can_be_switched_off(tmp_path: Path) -> None:
    async with service(tmp_path, chat={"allow_guests": False}) as running:
        browser = Browser(running.http)
        response = await browser.api("/api/auth/guest", {"name": "Wanderer"})
        assert (response.code, response.json()["error"]) == (403, "guests_disabled")
        page = await browser.get("/login")
        assert b"guest-form" not in page.body
        response = await browser.form("/guest", {"name": "Wanderer"})
        assert response.code == 403


# -- bans ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_banned_people_cannot_log_in(running: Running) -> None:
    ada = Browser(running.http)
    await ada.register("Ada")
    until = reactor.seconds() + 3600
    await running.service.storage.set_sanction(
        Sanction("ban", "ada", "spam", "Mod", reactor.seconds(), until)
    )
    response = await Browser(running.http).api(
        "/api/auth/login", {"username": "Ada", "password": PASSWORD}
    )
    assert response.code == 403
    body = response.json()
    assert (body["error"], body["reason"]) == ("banned", "spam")
    assert body["until"] == pytest.approx(until)
    assert response.set_cookies() == []
    # The live session is refused too, and the pages treat them as nobody.
    response = await ada.get("/api/me")
    assert (response.code, response.json()["error"]) == (403, "banned")
    assert b"Log out" not in (await ada.get("/")).body
    # Nor can they come back as a guest under that name.
    response = await Browser(running.http).api("/api/auth/guest", {"name": "ADA"})
    assert (response.code, response.json()["error"]) == (403, "banned")


@pytest_twisted.ensureDeferred
async def test_lifted_or_expired_bans_do_not_count(running: Running) -> None:
    await Browser(running.http).register("Ada")
    now = reactor.seconds()
    await running.service.storage.set_sanction(
        Sanction("ban", "Ada", "old", "Mod", now - 20, now - 10)
    )
    response = await Browser(running.http).api(
        "/api/auth/login", {"username": "Ada", "password": PASSWORD}
    )
    assert response.code == 200


# -- pages ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_register_login_and_logout_with_the_forms(running: Running) -> None:
    browser = Browser(running.http)
    page = await browser.get("/register")
    assert page.code == 200
    assert b'name="password_confirm"' in page.body
    response = await browser.form(
        "/register", {"username": "Ada", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert (response.code, response.header("location")) == (303, "/")
    home = await browser.get("/")
    assert b"Ada" in home.body
    assert b'action="/logout"' in home.body
    assert b'href="/admin"' not in home.body

    token = await browser.csrf_token("/")
    response = await browser.form("/logout", {"csrf_token": token}, token=False)
    assert (response.code, response.header("location")) == (303, "/")
    assert browser.cookie(SESSION_COOKIE) is None
    home = await browser.get("/")
    assert b'href="/login"' in home.body
    assert b'action="/logout"' not in home.body

    response = await browser.form(
        "/login", {"username": "ada", "password": PASSWORD, "next": "/health"}
    )
    assert (response.code, response.header("location")) == (303, "/health")
    assert (await browser.get("/api/me")).code == 200


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil", "x"])
@pytest_twisted.ensureDeferred
async def test_login_redirects_only_to_this_site(running: Running, target: str) -> None:
    browser = Browser(running.http)
    await Browser(running.http).register("Ada")
    response = await browser.form(
        "/login", {"username": "Ada", "password": PASSWORD, "next": target}
    )
    assert (response.code, response.header("location")) == (303, "/")


@pytest_twisted.ensureDeferred
async def test_form_errors_are_shown_escaped(running: Running) -> None:
    browser = Browser(running.http)
    response = await browser.form(
        "/register",
        {"username": "<script>x</script>", "password": PASSWORD, "password_confirm": PASSWORD},
    )
    assert response.code == 422
    assert b"<script>x" not in response.body
    assert b"&lt;script&gt;x" in response.body
    assert b"letters, digits" in response.body
    response = await browser.form(
        "/register", {"username": "Ada", "password": PASSWORD, "password_confirm": "other one"}
    )
    assert response.code == 422
    assert b"the two passwords differ" in response.body
    response = await browser.form("/login", {"username": "Ada", "password": "wrong password"})
    assert response.code == 401
    assert b"wrong username or password" in response.body
    await Browser(running.http).register("Bob")
    response = await browser.form("/guest", {"name": "bob"})
    assert response.code == 409
    assert b"already taken" in response.body


@pytest_twisted.ensureDeferred
async def test_guest_form(running: Running) -> None:
    browser = Browser(running.http)
    page = await browser.get("/login")
    assert b"Continue as guest" in page.body
    response = await browser.form("/guest", {"name": "Wanderer"})
    assert response.code == 303
    home = await browser.get("/")
    assert b"Wanderer" in home.body
    assert b"guest" in home.body


@pytest_twisted.ensureDeferred
async def test_pages_have_no_inline_scripts_or_styles(running: Running) -> None:
    browser = Browser(running.http)
    for path in ("/login", "/register"):
        page = await browser.get(path)
        assert page.code == 200
        assert not re.search(rb"<script(?![^>]*\bsrc=)", page.body), path
        assert b"<style" not in page.body
        assert b" style=" not in page.body


@pytest_twisted.ensureDeferred
async def test_the_service_hashes_on_its_own_bounded_pool(running: Running) -> None:
    passwords = running.service.accounts.passwords
    assert passwords.running
    assert passwords.pool.max == 2
    await Browser(running.http).register("Ada")
    threads = passwords.pool.threads
    assert threads and all(t.ident != threading.get_ident() for t in threads)
    assert all(t.name.startswith("PoolThread-bambid-passwords") for t in threads)
