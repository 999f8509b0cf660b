"""Links in chat: which are found, which are flagged and why, and ``/go``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from bambid.chat.links import LinkChecker, find_urls, location_header
from bambid.models import ClickedUrl
from tests.chatsupport import add_person, chat_server, connect, expect, join, post

FAST = {"chat_burst": 1000, "chat_per_second": 1000.0, "connection_burst": 1000}


def test_only_http_and_https_urls_are_links() -> None:
    text = (
        "see https://example.org. and (http://example.net/a_(b)) or HTTPS://Ex.com/P?q=1#f; "
        "but not javascript:alert(1) ftp://files.example data:text/html,hi xhttps://a.com "
        "https:// or http://[broken"
    )
    assert find_urls(text) == [
        "https://example.org",
        "http://example.net/a_(b)",
        "HTTPS://Ex.com/P?q=1#f",
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://example.org/path", None),
        ("https://пример.рф/", None),  # a name in one script is fine
        ("https://café.example/", None),
        ("https://malware.test/x", "denylisted"),
        ("https://deep.sub.MALWARE.test./x", "denylisted"),
        ("https://notmalware.test/", None),
        ("http://127.0.0.1:8080/", "ip_address"),
        ("http://2130706433/", "ip_address"),
        ("http://0x7f.1/", "ip_address"),
        ("http://[::1]/", "ip_address"),
        ("http://[2001:db8::1]:80/", "ip_address"),
        ("https://bank.example@evil.example/", "credentials"),
        ("https://user:pw@example.org/", "credentials"),
        ("https://xn--80ak6aa92e.com/", "lookalike"),  # punycode
        ("https://аррӏе.com/", "lookalike"),  # all Cyrillic look-alikes
        ("https://pаypal.com/", "lookalike"),  # a Cyrillic а among Latin letters
        ("https://gοοgle.com/", "lookalike"),  # Greek omicrons
    ],
)
def test_flags(url: str, reason: str | None) -> None:
    checker = LinkChecker.load()
    assert checker.reason(url) == reason
    (found,) = checker.find(f"look: {url} !")
    assert (found.flagged, found.reason) == (reason is not None, reason)


def test_an_operator_denylist(tmp_path: Path) -> None:
    listing = tmp_path / "deny.txt"
    listing.write_text("# ours\nBad.Example\n", encoding="utf-8")
    checker = LinkChecker.load(str(listing))
    assert checker.reason("https://www.bad.example/") == "denylisted"
    assert checker.reason("https://malware.test/") is None


def test_location_header_is_ascii() -> None:
    assert location_header("https://пример.рф/путь?q=я#x") == (
        b"https://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C?q=%D1%8F#x"
    )
    assert location_header("https://example.org:8443/a b?c=d&e") == (
        b"https://example.org:8443/a%20b?c=d&e"
    )


async def get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    response = await treq.get(url, allow_redirects=False, **kw)
    body = await response.content()
    headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_links_in_messages_and_the_go_route(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        ada, _ = await connect(r, token)
        await join(ada)
        text = (
            "clean https://example.org/a?b=c then http://10.0.0.1/admin then "
            'https://login.malware.test/<b>"x" and https://x@example.org'
        )
        ack = await post(ada, text)
        message = await expect(ada, "chat.message")
        mid = ack["message_id"]
        assert message["links"] == [
            {
                "url": "https://example.org/a?b=c",
                "href": f"/go?m={mid}&i=0",
                "flagged": False,
                "reason": None,
            },
            {
                "url": "http://10.0.0.1/admin",
                "href": f"/go?m={mid}&i=1",
                "flagged": True,
                "reason": "ip_address",
            },
            {
                "url": "https://login.malware.test/",
                "href": f"/go?m={mid}&i=2",
                "flagged": True,
                "reason": "denylisted",
            },
            {
                "url": "https://x@example.org",
                "href": f"/go?m={mid}&i=3",
                "flagged": True,
                "reason": "credentials",
            },
        ]
        history = await ada.request({"type": "chat.history", "room": "lobby"})
        assert history["messages"][0]["links"] == message["links"]

        # A clean link: recorded (as the person behind the cookie, who chose
        # to have analytics kept: docs/privacy.md), then redirected.
        await storage.ensure_profile("Ada", 0.0)
        await storage.set_preference("Ada", "privacy", {"analytics": True, "decided_at": 1.0})
        code, headers, body = await get(
            r.http + message["links"][0]["href"], cookies={"bambid_session": token}
        )
        assert code == 302
        assert headers["location"] == "https://example.org/a?b=c"
        assert headers["referrer-policy"] == "no-referrer"
        assert "no-store" in headers["cache-control"]

        # A flagged link: a warning page with the URL as text, the reason, a way on and back.
        code, headers, body = await get(r.http + message["links"][1]["href"])
        assert code == 200
        assert headers["content-type"].startswith("text/html")
        assert headers["referrer-policy"] == "no-referrer"
        page = body.decode()
        assert "http://10.0.0.1/admin" in page
        assert "bare IP address" in page
        assert 'href="http://10.0.0.1/admin"' in page
        assert 'rel="noopener noreferrer nofollow"' in page
        assert 'href="/"' in page
        assert "location" not in headers

        code, _, body = await get(r.http + message["links"][2]["href"])
        assert code == 200 and b"list of sites known" in body
        code, _, body = await get(r.http + message["links"][3]["href"])
        assert code == 200 and b"user name or password" in body

        # a HEAD (a link preview) gets the same answer but is not a click
        response = await treq.head(r.http + message["links"][0]["href"], allow_redirects=False)
        assert response.code == 302

        clicks = await storage.list_records(ClickedUrl, "Ada", 10)
        assert [(c.url, c.message_id) for c in clicks] == [("https://example.org/a?b=c", mid)]
        # Signed-out visitors are never recorded.
        assert await storage.list_records(ClickedUrl, "anonymous", 10) == []

        for bad in (
            f"/go?m={mid}&i=4",
            f"/go?m={mid}&i=-1",
            f"/go?m={mid}",
            "/go?m=nope&i=0",
            "/go",
            f"/go?m={mid}&i=x",
        ):
            code, _, body = await get(r.http + bad)
            assert code == 404, bad
            assert b"Page not found" in body


@pytest_twisted.ensureDeferred
async def test_links_of_a_deleted_message_are_gone(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        ada, _ = await connect(r, token)
        await join(ada)
        ack = await post(ada, "https://example.org")
        await storage.delete_chat_message(ack["message_id"])
        code, _, _ = await get(f"{r.http}/go?m={ack['message_id']}&i=0")
        assert code == 404
