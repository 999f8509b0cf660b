"""The account rules without a server: names, passwords, the failure
throttle (on a fake clock), CSRF checks and redirect targets."""

from __future__ import annotations

from typing import cast

import pytest
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from bambid.auth.accounts import AccountError, FailureThrottle, check_password, check_username
from bambid.auth.csrf import CSRF_COOKIE, CsrfError, CsrfProtection, session_csrf_token
from bambid.auth.sessions import SESSION_COOKIE
from bambid.web.auth_routes import safe_next


@pytest.mark.parametrize("name", ["abc", "A_b-9", "x" * 32, "___"])
def test_valid_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["ab", "x" * 33, "a b", "abc\n", "ünï", "a.b", "", "ab\u0000c"])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(AccountError) as caught:
        check_username(name, field="name")
    assert (caught.value.code, caught.value.status, caught.value.extra) == (
        "invalid",
        422,
        {"field": "name"},
    )


def test_password_lengths_count_characters() -> None:
    assert check_password("é" * 1024) == "é" * 1024
    for bad in ("1234567", "x" * 1025):
        with pytest.raises(AccountError):
            check_password(bad)
    with pytest.raises(AccountError) as caught:
        check_password(12345678)
    assert caught.value.status == 400


def test_throttle_blocks_after_the_burst_and_refills() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock, rate=1 / 60, burst=2)
    assert throttle.reserve(["a"]) == 0
    assert throttle.reserve(["a"]) == 0
    assert throttle.reserve(["a"]) == pytest.approx(60)
    clock.advance(30)
    assert throttle.reserve(["a"]) == pytest.approx(30)
    clock.advance(30)
    assert throttle.reserve(["a"]) == 0
    assert throttle.reserve(["a"]) > 0


def test_throttle_takes_from_every_key_or_none() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock, rate=1 / 60, burst=1)
    assert throttle.reserve(["user:a", "addr:1"]) == 0
    # addr:1 is empty: nothing is taken from user:b.
    assert throttle.reserve(["user:b", "addr:1"]) > 0
    assert throttle.reserve(["user:b", "addr:2"]) == 0


def test_refund_gives_the_token_back() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock, rate=1 / 60, burst=1)
    for _ in range(5):
        assert throttle.reserve(["a"]) == 0
        throttle.refund(["a"])


def test_reset_refills() -> None:
    throttle = FailureThrottle(Clock(), rate=1 / 60, burst=1)
    assert throttle.reserve(["a"]) == 0
    assert throttle.reserve(["a"]) > 0
    throttle.reset("a")
    assert throttle.reserve(["a"]) == 0


def test_throttle_forgets_refilled_keys() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock, rate=1.0, burst=2)
    for i in range(100):
        throttle.reserve([f"k{i}"])
    assert len(throttle) == 100
    clock.advance(10)
    throttle.reserve(["new"])
    assert len(throttle) == 1


class CookieRequest(DummyRequest):
    """``DummyRequest`` with the cookie lookup of ``twisted.web.http.Request``."""

    def __init__(self, cookies: dict[bytes, bytes]) -> None:
        super().__init__([b"login"])
        self.sent_cookies = cookies

    def getCookie(self, key: bytes) -> bytes | None:
        return self.sent_cookies.get(key)


def request(headers: dict[str, str], cookies: dict[str, str] | None = None) -> IRequest:
    req = CookieRequest({k.encode(): v.encode() for k, v in (cookies or {}).items()})
    req.method = b"POST"
    for name, value in headers.items():
        req.requestHeaders.setRawHeaders(name, [value])
    return cast(IRequest, req)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, True),
        ({"Host": "chat.local:6969", "Origin": "http://chat.local:6969"}, True),
        ({"Host": "chat.local:6969", "Origin": "https://chat.local:6969/"}, True),
        ({"Host": "chat.local:6969", "Origin": "http://chat.local:7000"}, False),
        ({"Host": "chat.local:6969", "Origin": "http://evil.example"}, False),
        ({"Host": "chat.local:6969", "Origin": "null"}, False),
        ({"Origin": "http://chat.local:6969"}, False),
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
    ],
)
def test_origin_check_without_public_url(headers: dict[str, str], ok: bool) -> None:
    csrf = CsrfProtection("", 3600)
    if ok:
        csrf.check_origin(request(headers))
    else:
        with pytest.raises(CsrfError):
            csrf.check_origin(request(headers))


def test_origin_check_with_public_url() -> None:
    csrf = CsrfProtection("https://chat.example/base/", 3600)
    csrf.check_origin(request({"Host": "127.0.0.1:6969", "Origin": "https://chat.example"}))
    with pytest.raises(CsrfError):
        csrf.check_origin(request({"Host": "127.0.0.1:6969", "Origin": "http://127.0.0.1:6969"}))


def test_form_token_is_bound_to_the_session_cookie() -> None:
    csrf = CsrfProtection("", 3600)
    with_session = request({}, {SESSION_COOKIE: "tok", CSRF_COOKIE: "c" * 43})
    assert csrf.expected(with_session) == session_csrf_token("tok")
    assert session_csrf_token("tok") != session_csrf_token("tok2")
    anonymous = request({}, {CSRF_COOKIE: "c" * 43})
    assert csrf.expected(anonymous) == "c" * 43
    assert csrf.expected(request({}, {CSRF_COOKIE: "short"})) is None


def test_a_new_csrf_cookie_is_issued_once_per_request() -> None:
    csrf = CsrfProtection("https://chat.example", 3600)
    req = request({})
    token = csrf.token(req)
    assert csrf.token(req) == token
    (cookie,) = req.responseHeaders.getRawHeaders(b"Set-Cookie") or []
    assert cookie.decode() == (
        f"{CSRF_COOKIE}={token}; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"
    )


def test_check_form_needs_the_token() -> None:
    csrf = CsrfProtection("", 3600)
    req = request({}, {CSRF_COOKIE: "c" * 43})
    with pytest.raises(CsrfError):
        csrf.check_form(req)
    req.args = {b"csrf_token": [b"c" * 43]}
    csrf.check_form(req)
    header = request({"X-CSRF-Token": "c" * 43}, {CSRF_COOKIE: "c" * 43})
    csrf.check_form(header)
    with pytest.raises(CsrfError):
        csrf.check_form(request({"X-CSRF-Token": "c" * 43}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/admin", "/admin"),
        ("/login?next=/x", "/login?next=/x"),
        ("", "/"),
        ("admin", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example", "/"),
        ("/a b", "/"),
        ("/a\r\nSet-Cookie: x", "/"),
    ],
)
def test_safe_next(value: str, expected: str) -> None:
    assert safe_next(value) == expected
