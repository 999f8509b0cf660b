"""Your data over a real loopback port: consent to interaction analytics
(nothing before choosing, records after "yes", none after "no", never for
guests), the export (every kind of data in the download), account deletion
(the password check and its throttle; what is removed, what stays anonymised,
the open WebSocket closed, the cookie dead) and the /settings page and form."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from bambid.auth.sessions import SESSION_COOKIE
from bambid.identity import Identity
from bambid.models import (
    AIInteraction,
    AudioInteraction,
    ClickedUrl,
    Conversation,
    ConversationTurn,
    Profile,
    Sanction,
    Session,
    UserInteraction,
    UserTagInteraction,
)
from bambid.storage.interface import DELETED_KINDS, EXPORT_KEYS
from bambid.web.me_routes import MeRoutes
from bambid.ws.dispatch import Connection
from tests.chatsupport import FakeConnection, connect, expect, join, next_of, post
from tests.companionsupport import companion_server, eventually, fake_llm, send, stalled
from tests.conftest import Running
from tests.test_auth import PASSWORD, Browser, Response, service

PREFS = "/api/me/preferences"


async def signed_up(running: Running, name: str) -> Browser:
    browser = Browser(running.http)
    await browser.register(name)
    return browser


def token_of(browser: Browser) -> str:
    token = browser.cookie(SESSION_COOKIE)
    assert token
    return token


async def choose(browser: Browser, analytics: bool) -> None:
    response = await browser.request("PATCH", PREFS, json={"privacy": {"analytics": analytics}})
    assert response.code == 200, response.body


async def delete(browser: Browser, password: Any, **kw: Any) -> Response:
    return await browser.request("DELETE", "/api/me", json={"password": password}, **kw)


async def posted_link(running: Running, name: str, browser: Browser) -> str:
    """``name`` posts a message with a link; the ``/go`` address of the link."""
    client, _ = await connect(running, token_of(browser))
    await join(client)
    ack = await post(client, "A calm place: https://example.org/calm")
    assert ack["type"] == "ack", ack
    return f"/go?m={ack['message_id']}&i=0"


@pytest_twisted.ensureDeferred
async def test_analytics_are_kept_only_after_a_yes(running: Running) -> None:
    storage = running.service.storage
    ada = await signed_up(running, "Ada")
    bob = await signed_up(running, "Bob")
    link = await posted_link(running, "Bob", bob)

    async def browse(browser: Browser) -> None:
        assert (await browser.get("/profile/Bob")).code == 200
        assert (await browser.get(link)).code == 302

    async def kept(name: str) -> tuple[int, int, int]:
        """Profile views, link clicks and settings changes recorded."""
        records = await storage.list_records(UserInteraction, name, 100)
        views = [r for r in records if r.action == "profile.view"]
        changes = [r for r in records if r.action == "preferences.change"]
        clicks = await storage.list_records(ClickedUrl, name, 100)
        return len(views), len(clicks), len(changes)

    await browse(ada)  # before choosing: nothing
    assert await kept("Ada") == (0, 0, 0)
    await choose(ada, True)  # this change is the first one kept
    await browse(ada)
    assert await kept("Ada") == (1, 1, 1)
    (click,) = await storage.list_records(ClickedUrl, "Ada", 10)
    assert click.url == "https://example.org/calm"
    await choose(ada, False)  # from now on, nothing more
    await browse(ada)
    assert await kept("Ada") == (1, 1, 1)

    guest = Browser(running.http)
    assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    await browse(guest)
    nobody = Browser(running.http)
    await browse(nobody)
    assert await kept("Wanderer") == (0, 0, 0)
    assert await storage.list_records(ClickedUrl, "anonymous", 10) == []


@pytest_twisted.ensureDeferred
async def test_the_export_holds_every_kind_of_data(running: Running) -> None:
    storage = running.service.storage
    now = running.service.reactor.seconds()
    ada = await signed_up(running, "Ada")
    bob = await signed_up(running, "Bob")
    # Chat: Ada's message mentioning Bob (a tag she made), Bob's mentioning her.
    ada_tab, _ = await connect(running, token_of(ada))
    bob_tab, _ = await connect(running, token_of(bob))
    await join(ada_tab)
    await join(bob_tab)
    await expect(ada_tab, "presence.update")
    assert (await post(ada_tab, "@Bob breathe with me"))["type"] == "ack"
    await next_of(bob_tab, "mention")  # after the chat.message
    assert (await post(bob_tab, "@Ada gladly"))["type"] == "ack"
    await next_of(ada_tab, "mention")
    # A conversation, records of every kind, reactions both ways, a sanction.
    turn = ConversationTurn("user", "a quiet evening", now)
    conversation = Conversation("Ada", "Evening", now, now, turns=(turn,))
    await storage.save_conversation(conversation)
    await storage.record(AIInteraction("Ada", "reply", "a quiet evening", "Rest.", 0.5, now))
    await storage.record(AudioInteraction("Ada", "trigger", "deep-breath", now))
    await choose(ada, True)
    assert (await ada.get(await posted_link(running, "Ada", ada))).code == 302
    await storage.set_reaction("Ada", "Bob", "love", True)
    await storage.set_reaction("Bob", "Ada", "like", True)
    await storage.set_sanction(Sanction("mute", "Ada", "too loud", "Root", now, now + 60))

    async def tagged() -> bool:
        return bool(await storage.list_records(UserTagInteraction, "Ada", 10))

    await eventually(tagged)

    response = await ada.get("/api/me/export")
    assert response.code == 200
    day = time.strftime("%Y-%m-%d", time.gmtime(running.service.reactor.seconds()))
    assert response.header("content-disposition") == (
        f'attachment; filename="bambid-Ada-{day}.json"'
    )
    assert response.header("cache-control") == "no-store"
    assert (response.header("content-type") or "").startswith("application/json")
    exported = response.json()
    assert set(exported) == {"exported_at", *EXPORT_KEYS}
    assert exported["exported_at"] >= now
    for key in EXPORT_KEYS:
        assert exported[key], f"{key} is empty"
    assert exported["username"] == "Ada"
    assert exported["account"]["username"] == "Ada"
    assert exported["profile"]["preferences"]["privacy"]["analytics"] is True
    texts = [m["text"] for m in exported["chat_messages"]]
    assert "@Bob breathe with me" in texts
    assert [c["conversation_id"] for c in exported["conversations"]] == [
        conversation.conversation_id
    ]
    assert exported["ai_interactions"][0]["output_data"] == "Rest."
    assert exported["audio_interactions"][0]["name"] == "deep-breath"
    assert "register" in [r["action"] for r in exported["user_interactions"]]
    assert exported["clicked_urls"][0]["url"] == "https://example.org/calm"
    assert exported["user_tag_interactions"][0]["by"] == "Bob"
    assert exported["user_tags_made"][0]["username"] == "Bob"
    assert exported["reactions_given"] == [{"to_user": "Bob", "kind": "love"}]
    assert exported["reactions_received"] == [{"from_user": "Bob", "kind": "like"}]
    assert exported["sanctions"][0]["reason"] == "too loud"
    # Secrets are not data about the person.
    assert "$argon2" not in response.text and token_of(ada) not in response.text
    assert "password_hash" not in response.text and "token_hash" not in response.text

    guest = Browser(running.http)
    assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    refused = await guest.get("/api/me/export")
    assert (refused.code, refused.json()["error"]) == (403, "forbidden")
    refused = await Browser(running.http).get("/api/me/export")
    assert (refused.code, refused.json()["error"]) == (401, "unauthenticated")


@pytest_twisted.ensureDeferred
async def test_deleting_an_account(running: Running) -> None:
    storage = running.service.storage
    now = running.service.reactor.seconds()
    ada = await signed_up(running, "Ada")
    bob = await signed_up(running, "Bob")
    token = token_of(ada)
    tab, _ = await connect(running, token)
    await join(tab)
    ack = await post(tab, "Ada was here, breathing slowly.")
    await storage.save_conversation(Conversation("Ada", "Evening", now, now))
    await storage.set_reaction("Bob", "Ada", "like", True)
    await storage.set_reaction("Ada", "Bob", "like", True)

    # A wrong password: refused, nothing deleted.
    wrong = await delete(ada, "not my password")
    assert (wrong.code, wrong.json()["error"]) == (403, "invalid_credentials")
    assert await storage.get_account("Ada") is not None
    assert await storage.get_conversation("Ada") is not None
    assert (await storage.get_chat_message(ack["message_id"])).username == "Ada"  # type: ignore[union-attr]
    forged = await delete(ada, PASSWORD, headers={"Origin": "https://evil.example"})
    assert (forged.code, forged.json()["error"]) == (403, "csrf_failed")

    response = await delete(ada, PASSWORD)
    assert response.code == 200, response.body
    counts = response.json()["deleted"]
    assert set(counts) == set(DELETED_KINDS)
    assert counts["account"] == 1 and counts["profile"] == 1 and counts["chat_messages"] == 1
    assert counts["conversations"] == 1 and counts["sessions"] == 1
    cleared = [c for c in response.set_cookies() if c.startswith(SESSION_COOKIE + "=")]
    assert cleared and "Max-Age=0" in cleared[0]
    # The open WebSocket was closed.
    assert await tab.closed == (1008, "account deleted")

    async def gone() -> bool:
        return not running.service.chat.hub.connections_of("Ada")

    await eventually(gone)
    await running.service.usage.idle()
    assert await storage.get_account("Ada") is None
    assert await storage.get_profile("Ada") is None  # not re-created by the usage stats
    assert await storage.list_sessions("Ada") == []
    assert await storage.get_conversation("Ada") is None
    assert await storage.list_records(UserInteraction, "Ada", 10) == []
    assert await storage.reactions_given("Bob", "Ada") == frozenset()
    bob_profile = await storage.get_profile("Bob")
    assert bob_profile is not None and bob_profile.likes == 0
    # The message stays in the room's history, under another name.
    message = await storage.get_chat_message(ack["message_id"])
    assert message is not None and message.text == "Ada was here, breathing slowly."
    assert re.fullmatch(r"deleted-[0-9a-f]{8}", message.username)
    history = await running.service.chat.hub.history("lobby", None, 10)
    assert [m["user"]["name"] for m in history[0]] == [message.username]
    # The session is dead, over HTTP and WebSocket.
    again = await Browser(running.http).get("/api/me", cookies={SESSION_COOKIE: token})
    assert again.code == 401
    client, welcome = await connect(running, token)
    assert welcome["type"] == "welcome" and welcome["user"] is None
    # The name's replacement cannot be taken by someone else.
    taken = await Browser(running.http).api(
        "/api/auth/register", {"username": message.username, "password": PASSWORD}
    )
    assert (taken.code, taken.json()["field"]) == (422, "username")
    assert (await bob.get("/api/me")).code == 200


@pytest_twisted.ensureDeferred
async def test_deletion_is_throttled_like_login_and_only_for_accounts(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2}) as running:
        ada = await signed_up(running, "Ada")
        for _ in range(2):
            assert (await delete(ada, "guess guess")).code == 403
        throttled = await delete(ada, PASSWORD)
        assert (throttled.code, throttled.json()["error"]) == (429, "rate_limited")
        assert int(throttled.header("retry-after") or "0") >= 1
        assert await running.service.storage.get_account("Ada") is not None

        guest = Browser(running.http)
        assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
        refused = await delete(guest, PASSWORD)
        assert (refused.code, refused.json()["error"]) == (403, "forbidden")
        refused = await delete(Browser(running.http), PASSWORD)
        assert refused.code == 401


async def settings_form(browser: Browser, fields: dict[str, str]) -> Response:
    token = await browser.csrf_token("/settings")
    return await browser.request("POST", "/settings/delete", data={**fields, "csrf_token": token})


@pytest_twisted.ensureDeferred
async def test_the_settings_page_and_its_deletion_form(running: Running) -> None:
    nobody = await Browser(running.http).get("/settings")
    assert (nobody.code, nobody.header("location")) == (303, "/login?next=/settings")

    guest = Browser(running.http)
    assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    page = await guest.get("/settings")
    text = " ".join(page.text.split())
    assert page.code == 200 and "Guests are never recorded for analytics" in text
    # What is kept of a guest is said, not denied.
    assert "your conversations with the companion are kept" in text
    assert "a guest cannot download or delete them" in text
    assert 'action="/settings/delete"' not in page.text

    ada = await signed_up(running, "Ada")
    await choose(ada, False)
    page = await ada.get("/settings")
    assert page.code == 200
    for needle in (
        'id="settings-analytics-no" value="no" checked',
        'id="settings-notify-mentions" data-notification="mentions" checked',
        'href="/api/me/export"',
        'action="/settings/delete"',
        'id="nav-settings" href="/settings"',
    ):
        assert needle in page.text, needle

    unconfirmed = await settings_form(ada, {"password": PASSWORD})
    assert unconfirmed.code == 422 and "Tick the box" in unconfirmed.text
    wrong = await settings_form(ada, {"password": "not it at all", "confirm": "yes"})
    assert wrong.code == 403 and "wrong password" in wrong.text
    no_token = await ada.request(
        "POST", "/settings/delete", data={"password": PASSWORD, "confirm": "yes"}
    )
    assert no_token.code == 403
    assert await running.service.storage.get_account("Ada") is not None

    done = await settings_form(ada, {"password": PASSWORD, "confirm": "yes"})
    assert (done.code, done.header("location")) == (303, "/")
    assert ada.cookie(SESSION_COOKIE) is None
    assert await running.service.storage.get_account("Ada") is None
    assert (await ada.get("/settings")).code == 303


@pytest_twisted.ensureDeferred
async def test_deleting_stops_a_running_companion_reply_first(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as running:
        storage = running.service.storage
        ada = await signed_up(running, "Ada")
        tab, _ = await connect(running, token_of(ada))
        stream, stall = stalled(["Breathe ", "in ", "slowly."], after=1)
        fake.script(stream)
        assert (await send(tab, "Help me rest."))["type"] == "ack"
        await next_of(tab, "ai.delta")  # the reply is streaming, then stalls
        response = await delete(ada, PASSWORD)
        assert response.code == 200, response.body
        assert response.json()["deleted"]["conversations"] == 1
        assert await tab.closed == (1008, "account deleted")
        stall.release()
        await running.service.companion.stop()
        await running.service.usage.idle()
        assert await storage.get_conversation("Ada") is None
        assert await storage.list_records(AIInteraction, "Ada", 10) == []
        assert await storage.get_profile("Ada") is None


class LatePeople:
    """The chat hub as deletion sees it, with what can happen meanwhile: right
    after the first close a connection is greeted as the person (a ``hello``
    that had read the session before it was deleted); at the second close an
    XP award still in flight creates their profile row again."""

    def __init__(self, running: Running, identity: Identity) -> None:
        self.hub = running.service.chat.hub
        self.storage = running.service.storage
        self.identity = identity
        self.after_forget = self.hub.after_forget
        self.late = FakeConnection(identity, greeted=True)
        self.sessions_at_close: list[Deferred[list[Session]]] = []
        self.writes: list[Deferred[Profile]] = []

    def connections_of(self, username: str) -> list[Connection]:
        return self.hub.connections_of(username)

    def close_person(self, username: str, code: int, reason: str) -> int:
        self.sessions_at_close.append(Deferred.fromCoroutine(self.storage.list_sessions(username)))
        closed = self.hub.close_person(username, code, reason)
        if len(self.sessions_at_close) == 1:
            assert self.hub.register(self.late, self.identity)
        else:
            now = float(reactor.seconds())
            self.writes.append(Deferred.fromCoroutine(self.storage.ensure_profile(username, now)))
        return closed


@pytest_twisted.ensureDeferred
async def test_deletion_outlasts_what_happens_meanwhile(running: Running) -> None:
    service = running.service
    storage = service.storage
    ada = await signed_up(running, "Ada")
    tab, _ = await connect(running, token_of(ada))
    await join(tab)
    identity = Identity("Ada")
    people = LatePeople(running, identity)
    routes = MeRoutes(
        service.web,
        service.auth_routes,
        service.preferences,
        storage,
        service.reactor,
        people,
        service.companion.companion,
        service.usage,
        service.profiles,
    )
    counts = await routes.delete_account(identity, PASSWORD, "127.0.0.1")
    assert counts["account"] == 1 and counts["sessions"] == 1
    assert await tab.closed == (1008, "account deleted")
    # The sessions were gone before the first close: no new hello finds them.
    assert [await d for d in people.sessions_at_close] == [[], []]
    # The connection greeted meanwhile was closed after the deletion.
    assert people.late.closed == (1008, "account deleted")
    # The profile row written meanwhile (and the late visit's usage) are gone.
    for write in people.writes:
        await write
    service.chat.hub.forget(people.late)
    await service.usage.idle()
    assert await storage.get_profile("Ada") is None
    assert await storage.get_account("Ada") is None


@pytest_twisted.ensureDeferred
async def test_deletion_updates_the_live_counts_of_profiles_they_liked(running: Running) -> None:
    ada = await signed_up(running, "Ada")
    await signed_up(running, "Bob")
    for kind in ("like", "love"):
        assert (await ada.request("POST", f"/api/profiles/Bob/{kind}")).code == 200
    watcher, _ = await connect(running)
    ack = await watcher.request({"type": "profile.watch", "id": "w", "name": "Bob"})
    assert ack["type"] == "ack", ack
    await expect(watcher, "profile.reactions", name="Bob", likes=1, loves=1)
    assert (await delete(ada, PASSWORD)).code == 200
    await expect(watcher, "profile.reactions", name="Bob", likes=0, loves=0)
