"""Profiles over a real loopback port: the JSON API (view, edit, likes and
loves, the community and the leaderboard), the pages and the edit form, who
may do what, validation, private profiles, and the consent-aware analytics.

People: ``root`` is an admin by ``auth.admins``; Ada, Bob and Cy are users;
guests join with ``/api/auth/guest``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from markupsafe import Markup
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from bambid.chat.links import LinkChecker
from bambid.models import Account, SocialLinks, UserInteraction
from bambid.profiles.bio import BioRenderer
from tests.conftest import Running
from tests.test_auth import Browser, Response, service

PROFILE_KEYS = {
    "name",
    "display_name",
    "bio",
    "bio_html",
    "social_links",
    "profile_style",
    "visibility",
    "level",
    "xp",
    "next_level_xp",
    "likes",
    "loves",
    "stats",
    "joined",
    "last_active",
    "you",
}
SUMMARY_KEYS = {"name", "display_name", "level", "xp", "likes", "loves", "joined", "profile_style"}
NO_LINKS = {"twitter": "", "instagram": "", "discord": "", "reddit": "", "custom": ""}
EVIL = {"Origin": "https://evil.example"}


@attrs.define
class Site:
    running: Running
    people: dict[str, Browser]

    @property
    def storage(self) -> Any:
        return self.running.service.storage

    def browser(self) -> Browser:
        return Browser(self.running.http)

    async def guest(self, name: str = "Wanderer") -> Browser:
        guest = self.browser()
        assert (await guest.api("/api/auth/guest", {"name": name})).code == 201
        return guest


@pytest_twisted.async_yield_fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with service(
        tmp_path, auth={"admins": ["root"]}, profiles={"page_size": 3, "leaderboard_size": 2}
    ) as running:
        people = {}
        for name in ("root", "Ada", "Bob"):
            people[name] = Browser(running.http)
            await people[name].register(name)
        yield Site(running, people)


async def patch(browser: Browser, name: str, body: Any, **kw: Any) -> Response:
    return await browser.request("PATCH", f"/api/profiles/{name}", json=body, **kw)


async def react(browser: Browser, name: str, kind: str, method: str = "POST", **kw: Any) -> Any:
    return await browser.request(method, f"/api/profiles/{name}/{kind}", **kw)


async def consent(site: Site, name: str) -> None:
    await site.storage.set_preference(name, "privacy", {"analytics": True, "decided_at": 0})


async def records(site: Site, name: str) -> list[UserInteraction]:
    found = await site.storage.list_records(UserInteraction, name, 100)
    return [r for r in found if r.action.startswith("profile.")]


# --- viewing ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_profile_json(site: Site) -> None:
    ada = site.people["Ada"]
    account = await site.storage.get_account("Ada")
    response = await ada.get("/api/profiles/ada")
    assert response.code == 200
    assert response.header("cache-control") == "no-store"
    body = response.json()
    assert set(body) == PROFILE_KEYS
    assert body["name"] == "Ada"  # as registered, whatever the case asked
    assert body["display_name"] == "" and body["bio"] == "" and body["bio_html"] == ""
    assert body["social_links"] == NO_LINKS
    assert body["profile_style"] == "classic"  # stored "default" shows as the default theme
    assert body["visibility"] == "public"
    assert (body["level"], body["xp"], body["next_level_xp"]) == (0, 0, 1000)
    assert (body["likes"], body["loves"]) == (0, 0)
    assert body["stats"] == {
        "sessions": 0,
        "time_spent_seconds": 0,
        "triggers_activated": 0,
        "messages_posted": 0,
        "companion_replies": 0,
    }
    assert body["joined"] == pytest.approx(account.created_at)
    assert isinstance(body["last_active"], float)
    assert body["you"] == {"liked": False, "loved": False, "can_edit": True}

    # Anyone may look, signed out included; only the owner may edit.
    for browser in (site.browser(), site.people["Bob"], await site.guest()):
        response = await browser.get("/api/profiles/Ada")
        assert response.code == 200
        assert response.json()["you"] == {"liked": False, "loved": False, "can_edit": False}
    # Admins may edit anyone.
    assert (await site.people["root"].get("/api/profiles/Ada")).json()["you"]["can_edit"]

    # Level and progress come from the XP table; at the top there is no next level.
    await site.storage.add_xp("Ada", 2600)
    body = (await ada.get("/api/profiles/Ada")).json()
    assert (body["level"], body["xp"], body["next_level_xp"]) == (2, 2600, 4500)
    await site.storage.add_xp("Ada", 10_000_000)
    body = (await ada.get("/api/profiles/Ada")).json()
    assert (body["level"], body["next_level_xp"]) == (8, None)

    await site.storage.bump_usage("Ada", reactor.seconds(), sessions=2, seconds=75.4, messages=3)
    stats = (await ada.get("/api/profiles/Ada")).json()["stats"]
    assert (stats["sessions"], stats["time_spent_seconds"], stats["messages_posted"]) == (2, 75, 3)


@pytest_twisted.ensureDeferred
async def test_unknown_names_are_not_found(site: Site) -> None:
    for name in ("nobody", "x", "a" * 40, "b%C3%A9b", "Wanderer"):
        response = await site.people["Ada"].get(f"/api/profiles/{name}")
        assert (response.code, response.json()["error"]) == (404, "not_found"), name
    # A guest has no profile either.
    await site.guest("Wanderer")
    assert (await site.browser().get("/api/profiles/Wanderer")).code == 404
    page = await site.browser().get("/profile/nobody")
    assert page.code == 404 and b"There is no profile called nobody" in page.body


@pytest_twisted.ensureDeferred
async def test_an_account_without_a_profile_row_shows_defaults_without_writing(
    site: Site,
) -> None:
    await site.storage.create_account(Account("Quiet", "x", "user", 1000.0))
    response = await site.browser().get("/api/profiles/quiet")
    assert response.code == 200
    body = response.json()
    assert (body["name"], body["joined"], body["xp"], body["level"]) == ("Quiet", 1000.0, 0, 0)
    assert (await site.browser().get("/profile/Quiet")).code == 200
    assert await site.storage.get_profile("Quiet") is None
    # The first write creates the row, joined when the account was made.
    answer = await react(site.people["Bob"], "Quiet", "like")
    assert answer.json() == {"liked": True, "loved": False, "likes": 1, "loves": 0}
    profile = await site.storage.get_profile("Quiet")
    assert profile is not None and profile.created_at == 1000.0 and profile.likes == 1


# --- editing ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_owner_edits_every_field(site: Site) -> None:
    ada = site.people["Ada"]
    await consent(site, "Ada")
    response = await patch(
        ada,
        "Ada",
        {
            "display_name": "  Ada Lovelace  ",
            "bio": "Hello **there**\r\nsecond line",
            "social_links": {
                "twitter": "@ada_l",
                "instagram": "https://instagram.com/Ada.L/",
                "discord": "@ada.l",
                "reddit": "u/ada-l",
                "custom": "example.org/about",
            },
            "profile_style": "midnight",
            "visibility": "public",
        },
    )
    assert response.code == 200, response.body
    body = response.json()
    assert set(body) == PROFILE_KEYS
    assert body["display_name"] == "Ada Lovelace"
    assert body["bio"] == "Hello **there**\nsecond line"
    assert body["bio_html"] == "<p>Hello <strong>there</strong><br>\nsecond line</p>"
    assert body["social_links"] == {
        "twitter": "https://x.com/ada_l",
        "instagram": "https://www.instagram.com/ada.l/",
        "discord": "ada.l",
        "reddit": "https://www.reddit.com/user/ada-l",
        "custom": "https://example.org/about",
    }
    assert body["profile_style"] == "midnight"
    assert body["you"]["can_edit"] is True
    assert (await site.browser().get("/api/profiles/Ada")).json()["display_name"] == "Ada Lovelace"

    # Social links are partial: only the platforms sent change; "" clears one.
    body = (await patch(ada, "Ada", {"social_links": {"reddit": "u/other", "twitter": ""}})).json()
    assert body["social_links"]["reddit"] == "https://www.reddit.com/user/other"
    assert body["social_links"]["twitter"] == ""
    assert body["social_links"]["custom"] == "https://example.org/about"
    # An empty display name falls back to the name; an empty body changes nothing.
    assert (await patch(ada, "Ada", {"display_name": ""})).json()["display_name"] == ""
    assert (await patch(ada, "Ada", {})).code == 200

    edits = [r for r in await records(site, "Ada") if r.action == "profile.edit"]  # newest first
    assert len(edits) == 3  # the empty edit changed nothing and is not recorded
    assert edits[0].details == {"profile": "Ada", "fields": ["display_name"]}
    assert edits[-1].details == {
        "profile": "Ada",
        "fields": ["bio", "display_name", "profile_style", "social_links", "visibility"],
    }


@pytest_twisted.ensureDeferred
async def test_who_may_edit(site: Site) -> None:
    body = {"display_name": "Changed"}
    response = await patch(site.browser(), "Ada", body)
    assert (response.code, response.json()["error"]) == (401, "unauthenticated")
    guest = await site.guest()
    response = await patch(guest, "Ada", body)
    assert (response.code, response.json()["error"]) == (403, "forbidden")
    response = await patch(guest, "Wanderer", body)  # not even "their own": guests have none
    assert (response.code, response.json()["error"]) == (403, "forbidden")
    bob = site.people["Bob"]
    for name in ("Ada", "nobody"):  # refused before looking: existence is not revealed
        response = await patch(bob, name, body)
        assert (response.code, response.json()["error"]) == (403, "forbidden")
    assert (await site.browser().get("/api/profiles/Ada")).json()["display_name"] == ""

    # CSRF and the body's type.
    response = await patch(site.people["Ada"], "Ada", body, headers=EVIL)
    assert (response.code, response.json()["error"]) == (403, "csrf_failed")
    response = await site.people["Ada"].request("PATCH", "/api/profiles/Ada", data=b"x=1")
    assert response.code == 415
    assert (await site.browser().get("/api/profiles/Ada")).json()["display_name"] == ""

    # The owner, and an admin for anyone (an unknown name is then not found).
    assert (await patch(site.people["Ada"], "ada", body)).code == 200
    root = site.people["root"]
    response = await patch(root, "Ada", {"display_name": "By root"})
    assert (response.code, response.json()["display_name"]) == (200, "By root")
    response = await patch(root, "nobody", body)
    assert (response.code, response.json()["error"]) == (404, "not_found")


BAD_EDITS: list[tuple[dict[str, Any], int, str, str]] = [
    ({"nickname": "x"}, 400, "nickname", "unknown field"),
    ({"display_name": 5}, 400, "display_name", "string"),
    ({"display_name": None}, 400, "display_name", "string"),
    ({"display_name": "x" * 41}, 422, "display_name", "at most 40"),
    ({"display_name": "evil\u202etxt"}, 422, "display_name", "text-direction"),
    ({"display_name": "a\x00b"}, 422, "display_name", "control"),
    ({"display_name": "two\nlines"}, 422, "display_name", "line breaks"),
    ({"bio": ["list"]}, 400, "bio", "string"),
    ({"bio": "x" * 2001}, 422, "bio", "at most 2000"),
    ({"bio": "bell\x07"}, 422, "bio", "control"),
    ({"social_links": "https://x.com/ada"}, 400, "social_links", "object"),
    ({"social_links": {"myspace": "ada"}}, 400, "social_links.myspace", "unknown"),
    ({"social_links": {"twitter": 3}}, 400, "social_links.twitter", "string"),
    ({"social_links": {"twitter": "javascript:alert(1)"}}, 422, "social_links.twitter", "http"),
    ({"social_links": {"twitter": "https://x.com/home"}}, 422, "social_links.twitter", "X"),
    ({"social_links": {"instagram": "a..b"}}, 422, "social_links.instagram", "Instagram"),
    ({"social_links": {"discord": "old#1234"}}, 422, "social_links.discord", "tags"),
    ({"social_links": {"reddit": "u/x"}}, 422, "social_links.reddit", "Reddit"),
    ({"social_links": {"custom": "http://127.0.0.1/"}}, 422, "social_links.custom", "IP"),
    ({"social_links": {"custom": "data:text/html,x"}}, 422, "social_links.custom", "http"),
    ({"profile_style": "neon"}, 422, "profile_style", "classic, midnight"),
    ({"profile_style": 1}, 400, "profile_style", "string"),
    ({"visibility": "friends"}, 422, "visibility", "public or private"),
    ({"visibility": True}, 400, "visibility", "string"),
]


@pytest_twisted.ensureDeferred
async def test_every_field_is_validated_and_named(site: Site) -> None:
    ada = site.people["Ada"]
    before = (await ada.get("/api/profiles/Ada")).json()
    for body, status, field, words in BAD_EDITS:
        response = await patch(ada, "Ada", body)
        answer = response.json()
        expected = "bad_request" if status == 400 else "invalid"
        assert (response.code, answer["error"], answer["field"]) == (status, expected, field), body
        assert words in answer["message"], (body, answer["message"])
        assert answer["problems"][field] in answer["message"]
    assert (await ada.get("/api/profiles/Ada")).json() == before


@pytest_twisted.ensureDeferred
async def test_nothing_is_stored_from_a_partly_bad_edit(site: Site) -> None:
    ada = site.people["Ada"]
    before = await site.storage.get_profile("Ada")
    response = await patch(
        ada,
        "Ada",
        {
            "display_name": "Good name",
            "bio": "a fine bio",
            "social_links": {"twitter": "@good", "custom": "javascript:alert(1)"},
            "profile_style": "forest",
            "visibility": "private",
        },
    )
    answer = response.json()
    assert (response.code, answer["field"]) == (422, "social_links.custom")
    assert list(answer["problems"]) == ["social_links.custom"]
    assert await site.storage.get_profile("Ada") == before
    # A wrong type anywhere wins over a bad value: 400, and still nothing stored.
    response = await patch(ada, "Ada", {"bio": "x" * 3000, "visibility": 1})
    assert (response.code, response.json()["field"]) == (400, "visibility")
    assert set(response.json()["problems"]) == {"bio", "visibility"}
    assert await site.storage.get_profile("Ada") == before


# --- private profiles ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_private_profiles(site: Site) -> None:
    ada, bob, root = site.people["Ada"], site.people["Bob"], site.people["root"]
    secret = "my secret bio"
    response = await patch(ada, "Ada", {"visibility": "private", "bio": secret})
    assert response.code == 200
    for browser in (bob, site.browser(), await site.guest()):
        response = await browser.get("/api/profiles/ada")
        assert (response.code, response.json()) == (200, {"name": "Ada", "visibility": "private"})
        page = await browser.get("/profile/ada")
        assert page.code == 200
        assert "This profile is private" in page.text and "Ada" in page.text
        assert secret not in page.text and 'id="profile-bio"' not in page.text
        assert "/static/js/profile.js" not in page.text
    for browser in (ada, root):
        body = (await browser.get("/api/profiles/Ada")).json()
        assert set(body) == PROFILE_KEYS and body["bio"] == secret
        page = await browser.get("/profile/Ada")
        assert secret in page.text and "This profile is private" not in page.text
        assert 'id="profile-private-note"' in page.text
    # Hidden from the community and the leaderboard, and from likes (as unknown).
    await site.storage.add_xp("Ada", 50_000)
    listing = (await bob.get("/api/profiles?sort=name")).json()
    assert [p["name"] for p in listing["profiles"]] == ["Bob", "root"]
    assert listing["total"] == 2
    leaders = (await bob.get("/api/leaderboard")).json()["leaders"]
    assert "Ada" not in [p["name"] for p in leaders]
    assert "Ada" not in (await bob.get("/profiles?q=ada")).text.split('id="profiles-list"')[1]
    response = await react(bob, "Ada", "like")
    assert (response.code, response.json()["error"]) == (404, "not_found")
    # The owner makes it public again.
    assert (await patch(ada, "Ada", {"visibility": "public"})).code == 200
    assert (await bob.get("/api/profiles/Ada")).json()["bio"] == secret


# --- likes and loves ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_likes_and_loves(site: Site) -> None:
    bob, root = site.people["Bob"], site.people["root"]
    await consent(site, "Bob")
    response = await react(bob, "Ada", "like")
    assert response.code == 200
    assert response.json() == {"liked": True, "loved": False, "likes": 1, "loves": 0}
    # Twice is once; a JSON body is accepted too.
    response = await react(bob, "ada", "like", json={})
    assert response.json() == {"liked": True, "loved": False, "likes": 1, "loves": 0}
    response = await react(bob, "Ada", "love")
    assert response.json() == {"liked": True, "loved": True, "likes": 1, "loves": 1}
    response = await react(root, "Ada", "like")
    assert response.json() == {"liked": True, "loved": False, "likes": 2, "loves": 1}
    you = (await bob.get("/api/profiles/Ada")).json()
    assert (you["likes"], you["loves"], you["you"]) == (
        2,
        1,
        {"liked": True, "loved": True, "can_edit": False},
    )
    # Taking back, twice, is fine.
    for _ in range(2):
        response = await react(bob, "Ada", "like", "DELETE")
        assert response.json() == {"liked": False, "loved": True, "likes": 1, "loves": 1}
    profile = await site.storage.get_profile("Ada")
    assert (profile.likes, profile.loves) == (1, 1)
    reacted = [r for r in await records(site, "Bob") if r.action == "profile.react"][::-1]
    assert [(r.details["kind"], r.details["on"]) for r in reacted] == [
        ("like", True),
        ("love", True),
        ("like", False),
    ]


@pytest_twisted.ensureDeferred
async def test_who_may_like(site: Site) -> None:
    ada, bob = site.people["Ada"], site.people["Bob"]
    for kind in ("like", "love"):
        response = await react(ada, "ADA", kind)
        assert (response.code, response.json()["error"]) == (400, "bad_request")
        assert "own profile" in response.json()["message"]
    guest = await site.guest()
    response = await react(guest, "Ada", "like")
    assert (response.code, response.json()["error"]) == (403, "forbidden")
    assert "sign up" in response.json()["message"]
    response = await react(site.browser(), "Ada", "love")
    assert (response.code, response.json()["error"]) == (401, "unauthenticated")
    for name, kind in (("nobody", "like"), ("Ada", "hug")):
        response = await react(bob, name, kind)
        assert (response.code, response.json()["error"]) == (404, "not_found")
    response = await react(bob, "Ada", "like", headers=EVIL)
    assert (response.code, response.json()["error"]) == (403, "csrf_failed")
    response = await react(bob, "Ada", "like", data=b"not json", headers={"Content-Type": "x/y"})
    assert response.code == 415
    profile = await site.storage.get_profile("Ada")
    assert (profile.likes, profile.loves) == (0, 0)


# --- the community ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_community_paging_sorting_search_and_leaderboard(site: Site) -> None:
    storage = site.storage
    now = reactor.seconds()
    for name, xp in (("Dee", 3000), ("Eve", 100), ("Adam", 1200)):
        await storage.ensure_profile(name, now)
        await storage.add_xp(name, xp)
    await storage.add_xp("Bob", 500)
    for fan in ("Ada", "Bob"):
        await storage.set_reaction(fan, "Eve", "like", True)
    await storage.set_reaction("Bob", "Adam", "like", True)
    await storage.set_reaction("Bob", "Dee", "love", True)
    await storage.update_profile("Eve", {"display_name": "Evening Star"})
    bob = site.people["Bob"]

    async def listing(query: str = "") -> dict[str, Any]:
        response = await bob.get("/api/profiles" + query)
        assert response.code == 200, response.body
        answer: dict[str, Any] = response.json()
        return answer

    first = await listing()
    assert (first["page"], first["pages"], first["total"], first["sort"], first["q"]) == (
        1,
        2,
        6,
        "xp",
        "",
    )
    assert [p["name"] for p in first["profiles"]] == ["Dee", "Adam", "Bob"]
    assert all(set(p) == SUMMARY_KEYS for p in first["profiles"])
    assert first["profiles"][0]["level"] == 2 and first["profiles"][1]["level"] == 1
    second = await listing("?page=2")
    assert [p["name"] for p in second["profiles"]] == ["Eve", "Ada", "root"]
    assert (await listing("?page=3"))["profiles"] == []
    assert [p["name"] for p in (await listing("?sort=level"))["profiles"]] == ["Dee", "Adam", "Bob"]
    assert (await listing("?sort=level"))["sort"] == "level"
    assert [p["name"] for p in (await listing("?sort=likes"))["profiles"]] == ["Eve", "Adam", "Ada"]
    assert [p["name"] for p in (await listing("?sort=loves"))["profiles"]][0] == "Dee"
    names = await listing("?sort=name&page=2")
    assert [p["name"] for p in names["profiles"]] == ["Dee", "Eve", "root"]
    joined = [p["joined"] for p in (await listing("?sort=joined"))["profiles"]]
    assert joined == sorted(joined, reverse=True)
    # Search: name or display name, any case; the query is trimmed and capped.
    found = await listing("?q=AD")
    assert ([p["name"] for p in found["profiles"]], found["total"]) == (["Adam", "Ada"], 2)
    assert [p["name"] for p in (await listing("?q=%20star"))["profiles"]] == ["Eve"]
    assert (await listing("?q=" + "z" * 40))["q"] == "z" * 32

    for query, field in (
        ("?sort=popular", "sort"),
        ("?page=0", "page"),
        ("?page=-1", "page"),
        ("?page=two", "page"),
        ("?page=1.5", "page"),
    ):
        response = await bob.get("/api/profiles" + query)
        assert (response.code, response.json()["error"], response.json()["field"]) == (
            400,
            "bad_request",
            field,
        )

    leaders = (await bob.get("/api/leaderboard")).json()
    assert [p["name"] for p in leaders["leaders"]] == ["Dee", "Adam"]
    assert all(set(p) == SUMMARY_KEYS for p in leaders["leaders"])

    # The page: leaderboard, search box, sort links, pagination, cards linking to profiles.
    page = await site.browser().get("/profiles?sort=name&q=&page=2")
    assert page.code == 200
    text = page.text
    board = text[text.index('id="leaderboard"') :]
    assert board.index("/profile/Dee") < board.index("/profile/Adam")
    assert 'id="profiles-q"' in text and 'name="q"' in text
    for sort in ("xp", "level", "likes", "loves", "joined", "name"):
        assert f"sort={sort}" in text
    cards = text[text.index('id="profiles-list"') : text.index('id="profiles-pages"')]
    assert re.findall(r'href="/profile/([^"]+)"', cards) == ["Dee", "Eve", "root"]
    assert "Evening Star" in cards
    assert "Page 2 of 2" in text and "page=1" in text
    # The page forgives what the API refuses.
    assert (await site.browser().get("/profiles?sort=popular&page=x")).code == 200
    assert "Page 2 of 2" in (await site.browser().get("/profiles?page=99")).text


# --- the pages ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_profile_page(site: Site) -> None:
    storage = site.storage
    await storage.update_profile(
        "Ada",
        {
            "display_name": "Ada <Lovelace>",
            "bio": "I like **calm** evenings. <b>not bold</b>",
            "profile_style": "midnight",
            "social_links": SocialLinks(
                twitter="https://x.com/ada", discord="ada.l", custom="https://example.org/a"
            ),
        },
    )
    await storage.add_xp("Ada", 1500)
    await storage.bump_usage("Ada", reactor.seconds(), sessions=4, seconds=3 * 3600 + 12 * 60 + 5)
    await react(site.people["Bob"], "Ada", "love")

    page = await site.people["Bob"].get("/profile/ada")
    assert page.code == 200
    text = page.text
    assert re.search(r'class="profile-page profile-style-midnight"', text)
    assert "Ada &lt;Lovelace&gt;" in text and "<Lovelace>" not in text
    assert "I like <strong>calm</strong> evenings. &lt;b&gt;not bold&lt;/b&gt;" in text
    assert re.search(r'<progress[^>]*value="500" max="1500"', text)  # 1500 of 1000..2500
    assert 'Level <span id="profile-level">1</span>' in text
    assert "1000 XP to level 2" in text
    assert ">3 h 12 min<" in text and 'id="stat-sessions">4<' in text
    assert re.search(
        r'href="https://x.com/ada" rel="nofollow noopener ugc" target="_blank">@ada<', text
    )
    assert 'rel="nofollow noopener ugc" target="_blank">example.org/a<' in text
    assert '<span class="profile-link-text">ada.l</span>' in text  # a Discord name is no link
    assert re.search(r'<button[^>]*id="profile-love"[^>]*aria-pressed="true"', text)
    assert re.search(r'id="profile-loves">1<', text)
    assert 'id="profile-edit-link"' not in text
    assert "/static/js/profile.js" in text and "/profile-styles.css" in text
    assert "style=" not in text  # the CSP allows no inline styles
    assert re.search(r'id="stat-joined"><time datetime="\d{4}-\d\d-\d\dT[\d:]+Z">', text)

    # Signed out: disabled buttons and a hint; a guest is told to sign up.
    text = (await site.browser().get("/profile/Ada")).text
    assert re.search(r'<button[^>]*id="profile-like"[^>]*disabled', text)
    assert "Log in or register to like" in text
    text = (await (await site.guest()).get("/profile/Ada")).text
    assert re.search(r'<button[^>]*id="profile-love"[^>]*disabled', text)
    assert "Sign up to like" in text
    # The owner: no buttons, the counts, and the edit link; admins get the link too.
    text = (await site.people["Ada"].get("/profile/Ada")).text
    assert 'id="profile-like"' not in text and 'id="profile-loves">1<' in text
    assert 'href="/profile/Ada/edit"' in text
    assert 'href="/profile/Ada/edit"' in (await site.people["root"].get("/profile/Ada")).text
    # The nav bar links to the community and to one's own profile.
    assert 'href="/profiles"' in text and 'id="nav-my-profile" href="/profile/Ada"' in text

    css = await site.browser().get("/profile-styles.css")
    assert css.code == 200 and (css.header("content-type") or "").startswith("text/css")
    assert ".profile-style-midnight {" in css.text and "--profile-accent" in css.text


@pytest_twisted.ensureDeferred
async def test_the_edit_form(site: Site) -> None:
    ada = site.people["Ada"]
    page = await ada.get("/profile/Ada/edit")
    assert page.code == 200
    text = page.text
    assert 'action="/profile/Ada/edit"' in text and 'name="csrf_token"' in text
    for field in ("display_name", "bio", "visibility", "profile_style"):
        assert f'name="{field}"' in text
    for platform in ("twitter", "instagram", "discord", "reddit", "custom"):
        assert f'name="social_{platform}"' in text
    for theme in ("classic", "midnight", "lavender", "forest", "ocean", "sunrise"):
        assert f'value="{theme}"' in text and f"profile-swatch profile-style-{theme}" in text
    assert re.search(r'value="classic" checked', text)

    fields = {
        "display_name": "Ada L",
        "bio": "Breathing\r\nslowly",
        "social_twitter": "@ada_l",
        "social_instagram": "",
        "social_discord": "",
        "social_reddit": "",
        "social_custom": "https://example.org",
        "profile_style": "ocean",
        "visibility": "public",
    }
    # Without the CSRF token: refused, nothing stored.
    response = await ada.request("POST", "/profile/Ada/edit", data=fields)
    assert response.code == 403
    assert (await site.storage.get_profile("Ada")).display_name == ""
    # With it: stored, and 303 to the profile.
    token = await ada.csrf_token("/profile/Ada/edit")
    response = await ada.request("POST", "/profile/Ada/edit", data={**fields, "csrf_token": token})
    assert (response.code, response.header("location")) == (303, "/profile/Ada")
    profile = await site.storage.get_profile("Ada")
    assert (profile.display_name, profile.bio, profile.profile_style) == (
        "Ada L",
        "Breathing\nslowly",
        "ocean",
    )
    assert profile.social_links.twitter == "https://x.com/ada_l"

    # Bad values: the form again with each field's error, 422, nothing stored.
    bad = {**fields, "display_name": "x" * 41, "social_custom": "javascript:alert(1)"}
    response = await ada.request("POST", "/profile/Ada/edit", data={**bad, "csrf_token": token})
    assert response.code == 422
    text = response.text
    assert 'id="edit-display-name-error"' in text and "at most 40" in text
    assert 'id="edit-social-custom-error"' in text and "only http and https" in text
    assert 'value="javascript:alert(1)"' in text  # shown again to correct, as text
    assert await site.storage.get_profile("Ada") == profile
    # A field missing from the post: 400.
    partial = {k: v for k, v in fields.items() if k != "visibility"}
    response = await ada.request("POST", "/profile/Ada/edit", data={**partial, "csrf_token": token})
    assert response.code == 400 and 'id="edit-visibility-error"' in response.text
    assert await site.storage.get_profile("Ada") == profile

    # Who may open it.
    response = await site.browser().get("/profile/Ada/edit")
    assert (response.code, response.header("location")) == (303, "/login?next=/profile/Ada/edit")
    assert (await site.people["Bob"].get("/profile/Ada/edit")).code == 403
    assert (await (await site.guest()).get("/profile/Ada/edit")).code == 403
    root = site.people["root"]
    assert (await root.get("/profile/Ada/edit")).code == 200
    assert (await root.get("/profile/nobody/edit")).code == 404
    bob = site.people["Bob"]
    token = await bob.csrf_token("/profile/Bob/edit")
    response = await bob.request("POST", "/profile/Ada/edit", data={**fields, "csrf_token": token})
    assert response.code == 403
    assert await site.storage.get_profile("Ada") == profile


@pytest_twisted.ensureDeferred
async def test_profile_views_are_recorded_only_with_consent(site: Site) -> None:
    bob = site.people["Bob"]
    assert (await bob.get("/profile/Ada")).code == 200
    assert await records(site, "Bob") == []
    await consent(site, "Bob")
    assert (await bob.get("/profile/Ada")).code == 200
    views = await records(site, "Bob")
    assert [(r.action, r.details) for r in views] == [("profile.view", {"profile": "Ada"})]
    # A "no" stops it again.
    await site.storage.set_preference("Bob", "privacy", {"analytics": False, "decided_at": 1})
    assert (await bob.get("/profile/Ada")).code == 200
    assert len(await records(site, "Bob")) == 1


# --- writes only when valid, edits in turn, API views, one bio rendering --------------------------


@pytest_twisted.ensureDeferred
async def test_a_refused_edit_writes_nothing_not_even_a_profile_row(site: Site) -> None:
    await site.storage.create_account(Account("Quiet", "x", "user", 1000.0))
    root = site.people["root"]
    refused = await patch(root, "Quiet", {"bio": "calm", "visibility": "hidden"})
    assert (refused.code, refused.json()["field"]) == (422, "visibility")
    assert (await patch(root, "Quiet", {})).code == 200  # nothing to change
    assert await site.storage.get_profile("Quiet") is None
    assert (await patch(root, "Quiet", {"bio": "calm"})).code == 200
    profile = await site.storage.get_profile("Quiet")
    assert profile is not None and profile.bio == "calm" and profile.created_at == 1000.0


@pytest_twisted.ensureDeferred
async def test_edits_made_at_once_all_stay(site: Site) -> None:
    ada = site.people["Ada"]
    links = {
        "twitter": "@calm_ada",
        "instagram": "calm.ada",
        "discord": "ada.calm",
        "reddit": "u/calm_ada",
        "custom": "https://example.org/calm",
    }
    edits = [
        *({"social_links": {platform: value}} for platform, value in links.items()),
        {"display_name": "Calm Ada"},
        {"bio": "Slow breaths."},
    ]
    answers = await DeferredList(
        [Deferred.fromCoroutine(patch(ada, "Ada", edit)) for edit in edits],
        consumeErrors=True,
    )
    assert [(ok, getattr(r, "code", r)) for ok, r in answers] == [(True, 200)] * len(edits)
    profile = (await ada.get("/api/profiles/Ada")).json()
    assert all(profile["social_links"][platform] for platform in links), profile["social_links"]
    assert (profile["display_name"], profile["bio"]) == ("Calm Ada", "Slow breaths.")


@pytest_twisted.ensureDeferred
async def test_profile_views_through_the_api_are_recorded_too(site: Site) -> None:
    bob = site.people["Bob"]
    await consent(site, "Bob")
    assert (await bob.get("/api/profiles/Ada")).code == 200
    assert (await bob.request("HEAD", "/api/profiles/Ada")).code == 200  # a HEAD is no view
    await site.storage.update_profile("Ada", {"visibility": "private"})
    assert (await bob.get("/api/profiles/Ada")).json() == {"name": "Ada", "visibility": "private"}
    views = await records(site, "Bob")
    assert [(r.action, r.details) for r in views] == [("profile.view", {"profile": "Ada"})]


class CountingBios(BioRenderer):
    """A ``BioRenderer`` that counts its renderings."""

    def __init__(self, links: LinkChecker) -> None:
        super().__init__(links)
        self.rendered = 0

    def render(self, text: str) -> Markup:
        self.rendered += 1
        return super().render(text)


@pytest_twisted.ensureDeferred
async def test_a_profile_page_renders_the_bio_once(site: Site) -> None:
    await site.storage.update_profile("Ada", {"bio": "I like **calm** evenings."})
    profiles = site.running.service.profiles
    bios = profiles.bios = CountingBios(site.running.service.chat.hub.links)
    page = await site.people["Bob"].get("/profile/Ada")
    assert "I like <strong>calm</strong> evenings." in page.text
    assert bios.rendered == 1
