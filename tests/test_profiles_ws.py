"""Live likes and loves over a real WebSocket: ``profile.watch`` /
``profile.unwatch`` and the ``profile.reactions`` fan-out after likes given
over HTTP, with who may watch what, the per-connection cap, and watches
ending with their connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from bambid.auth.sessions import SESSION_COOKIE
from bambid.profiles.service import ReactionCounts
from bambid.profiles.watchers import MAX_WATCHES
from tests.conftest import Running
from tests.test_auth import Browser, service
from tests.wsclient import TestClientProtocol, connect


@attrs.define
class Site:
    running: Running
    people: dict[str, Browser]

    async def client(self, name: str | None = None) -> TestClientProtocol:
        """A greeted WebSocket client, anonymous or with ``name``'s session."""
        cookie = None if name is None else self.people[name].cookie(SESSION_COOKIE)
        client = await connect(self.running.ws, cookie=cookie)
        welcome = await client.request({"type": "hello", "protocol": 1})
        assert welcome["type"] == "welcome", welcome
        return client

    async def like(self, who: str, name: str, kind: str = "like", on: bool = True) -> Any:
        response = await self.people[who].request(
            "POST" if on else "DELETE", f"/api/profiles/{name}/{kind}"
        )
        assert response.code == 200, response.body
        return response.json()


@pytest_twisted.async_yield_fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with service(tmp_path, auth={"admins": ["root"]}) as running:
        people = {}
        for name in ("root", "Ada", "Bob"):
            people[name] = Browser(running.http)
            await people[name].register(name)
        yield Site(running, people)


async def watch(client: TestClientProtocol, name: str, id: str = "w") -> dict[str, Any]:
    """Watch ``name``: the ack, then the current counts (returned)."""
    ack = await client.request({"type": "profile.watch", "id": id, "name": name})
    assert ack["type"] == "ack", ack
    assert ack["id"] == id
    counts = await client.next()
    assert counts["type"] == "profile.reactions", counts
    assert counts["name"] == ack["name"]
    return counts


async def open_connections(site: Site, count: int) -> None:
    """Wait (reactor turns, at most ~10 s) until the server has ``count``
    open WebSocket connections."""
    for _ in range(1000):
        if len(site.running.service.ws_factory.connections) == count:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"still {len(site.running.service.ws_factory.connections)} connections")


async def nothing_more(client: TestClientProtocol) -> None:
    """Nothing was queued for ``client``: the next frame answers a probe."""
    probe = await client.request({"type": "profile.unwatch", "id": "probe", "name": "nobody"})
    assert (probe["type"], probe["id"]) == ("ack", "probe"), probe


@pytest_twisted.ensureDeferred
async def test_watchers_see_likes_live(site: Site) -> None:
    reader = await site.client()  # anonymous readers may watch public profiles
    bob_tab = await site.client("Bob")
    ada_tab = await site.client("Ada")
    assert await watch(reader, "ada") == {
        "type": "profile.reactions",
        "name": "Ada",
        "likes": 0,
        "loves": 0,
    }
    await watch(bob_tab, "Ada")
    await watch(ada_tab, "Ada")

    assert await site.like("Bob", "Ada") == {"liked": True, "loved": False, "likes": 1, "loves": 0}
    for client in (reader, bob_tab, ada_tab):
        frame = await client.next()
        assert frame == {"type": "profile.reactions", "name": "Ada", "likes": 1, "loves": 0}
    await site.like("root", "Ada", "love")
    for client in (reader, bob_tab, ada_tab):
        assert (await client.next())["loves"] == 1

    # Giving it again changes nothing and sends nothing.
    await site.like("Bob", "Ada")
    await nothing_more(reader)
    # Taking it back is sent.
    await site.like("Bob", "Ada", on=False)
    for client in (reader, bob_tab, ada_tab):
        frame = await client.next()
        assert (frame["likes"], frame["loves"]) == (0, 1)

    # Unwatching stops it; watching again gives the counts at once.
    ack = await reader.request({"type": "profile.unwatch", "id": "u", "name": "ADA"})
    assert (ack["type"], ack["id"], ack["name"]) == ("ack", "u", "ADA")
    await site.like("Bob", "Ada")
    assert (await bob_tab.next())["likes"] == 1
    await nothing_more(reader)
    assert (await watch(reader, "Ada"))["likes"] == 1
    # Watching twice is acknowledged and counted once.
    await watch(reader, "Ada")
    await site.like("Bob", "Ada", on=False)
    assert (await reader.next())["likes"] == 0
    await nothing_more(reader)


@pytest_twisted.ensureDeferred
async def test_who_may_watch_what(site: Site) -> None:
    reader = await site.client()
    for message, code in (
        ({"name": "nobody"}, "not_found"),
        ({"name": "x"}, "not_found"),
        ({}, "bad_request"),
        ({"name": 7}, "bad_request"),
        ({"name": "y" * 65}, "bad_request"),
    ):
        error = await reader.request({"type": "profile.watch", "id": "e", **message})
        assert (error["type"], error["code"], error["id"]) == ("error", code, "e"), message
    error = await reader.request({"type": "profile.unwatch", "id": "e"})
    assert (error["type"], error["code"]) == ("error", "bad_request")

    # A private profile: unknown to others, watched by its owner and admins only.
    response = await site.people["Ada"].request(
        "PATCH", "/api/profiles/Ada", json={"visibility": "private"}
    )
    assert response.code == 200
    bob_tab = await site.client("Bob")
    for client in (reader, bob_tab):
        error = await client.request({"type": "profile.watch", "id": "p", "name": "Ada"})
        assert (error["type"], error["code"]) == ("error", "not_found")
    ada_tab = await site.client("Ada")
    root_tab = await site.client("root")
    await watch(ada_tab, "Ada")
    await watch(root_tab, "Ada")


@pytest_twisted.ensureDeferred
async def test_a_profile_made_private_is_no_longer_sent_to_others(site: Site) -> None:
    reader = await site.client()
    ada_tab = await site.client("Ada")
    await watch(reader, "Ada")
    await watch(ada_tab, "Ada")
    response = await site.people["Ada"].request(
        "PATCH", "/api/profiles/Ada", json={"visibility": "private"}
    )
    assert response.code == 200
    await site.like("root", "Ada")  # an admin may still react
    assert (await ada_tab.next())["likes"] == 1
    await nothing_more(reader)


@pytest_twisted.ensureDeferred
async def test_at_most_sixteen_watches_per_connection(site: Site) -> None:
    storage = site.running.service.storage
    names = [f"person-{i:02d}" for i in range(MAX_WATCHES + 1)]
    for name in names:
        await storage.ensure_profile(name, reactor.seconds())
    client = await site.client()
    for name in names[:MAX_WATCHES]:
        await watch(client, name)
    await watch(client, names[0])  # watching one again is fine
    error = await client.request({"type": "profile.watch", "id": "x", "name": names[-1]})
    assert (error["type"], error["code"]) == ("error", "bad_request")
    assert str(MAX_WATCHES) in error["message"]
    # After unwatching one there is room again; another connection has its own 16.
    ack = await client.request({"type": "profile.unwatch", "name": names[0]})
    assert ack["type"] == "ack"
    await watch(client, names[-1])
    other = await site.client()
    await watch(other, names[-1])


@pytest_twisted.ensureDeferred
async def test_watches_end_with_the_connection(site: Site) -> None:
    watchers = site.running.service.profile_watchers
    counts = ReactionCounts("Ada", 5, 5, private=False, owner_key="ada")
    client = await site.client()
    await watch(client, "Ada")
    other = await site.client("Bob")
    await watch(other, "Ada")
    assert watchers.publish(counts) == 2
    assert (await client.next())["likes"] == 5
    client.sendClose(1000)
    await client.closed
    await open_connections(site, 1)  # the server has seen it close
    assert watchers.publish(counts) == 1
    assert (await other.next())["likes"] == 5
    other.sendClose(1000)
    await other.closed
    await open_connections(site, 0)
    assert watchers.publish(counts) == 0


@pytest_twisted.ensureDeferred
async def test_watching_needs_hello_first(site: Site) -> None:
    client = await connect(site.running.ws)
    error = await client.request({"type": "profile.watch", "name": "Ada"})
    assert (error["type"], error["code"]) == ("error", "hello_required")
