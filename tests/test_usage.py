"""Usage stats from real events over real WebSockets: sessions (two tabs are
one visit; a reconnect within the grace continues it, a later one starts the
next), time online counted once and written while online and at stop, chat
messages, fired triggers and finished companion replies; guests change nothing.

The tracker's clock is a ``task.Clock`` (the connections are real), so the
times are exact and the grace period passes when the test says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.task import Clock

from bambid.storage import Storage
from tests import wsclient
from tests.chatsupport import add_person, chat_server, connect, join, next_of, post
from tests.companionsupport import companion_server, eventually, fake_llm, read_reply, send
from tests.conftest import Running
from tests.fakellm import Stream, sse_events

START = 1000.0


@asynccontextmanager
async def tracked(tmp_path: Path, **sections: Any) -> AsyncIterator[tuple[Running, Clock]]:
    """A chat server whose usage tracker runs on a ``Clock`` set to ``START``."""
    async with chat_server(tmp_path, **sections) as running:
        clock = Clock()
        clock.advance(START)
        running.service.usage.clock = clock
        running.service.usage.start()
        yield running, clock


async def stats_are(storage: Storage, name: str, **expected: Any) -> None:
    """Wait until ``name``'s usage stats have the ``expected`` values."""

    async def matches() -> bool:
        profile = await storage.get_profile(name)
        if profile is None:
            return False
        stats = attrs.asdict(profile.usage_stats)
        return all(stats[key] == value for key, value in expected.items())

    await eventually(matches)


async def close(running: Running, client: wsclient.TestClientProtocol, name: str) -> None:
    """Close ``client`` and wait until the server has forgotten it."""
    before = len(running.service.chat.hub.connections_of(name))
    client.sendClose()
    await client.closed

    async def forgotten() -> bool:
        return len(running.service.chat.hub.connections_of(name)) == before - 1

    await eventually(forgotten)


@pytest_twisted.ensureDeferred
async def test_two_tabs_are_one_session_and_their_time_counts_once(tmp_path: Path) -> None:
    async with tracked(tmp_path) as (r, clock):
        storage = r.service.storage
        grace = r.service.config.profiles.session_grace_seconds
        token = await add_person(storage, "Ada")
        tab1, _ = await connect(r, token)
        await stats_are(storage, "Ada", sessions_count=1, total_time_spent=0.0)
        clock.advance(10)
        tab2, _ = await connect(r, token)  # a second tab: the same visit
        clock.advance(20)
        await close(r, tab2, "Ada")
        clock.advance(5)
        await close(r, tab1, "Ada")
        # Online from 1000 to 1035: two tabs overlapping count once.
        await stats_are(storage, "Ada", sessions_count=1, total_time_spent=35.0)
        profile = await storage.get_profile("Ada")
        assert profile is not None and profile.last_active == START + 35

        # Back within the grace: the same session; the time away is not counted.
        clock.advance(grace - 1)
        tab3, _ = await connect(r, token)
        clock.advance(15)
        await close(r, tab3, "Ada")
        await stats_are(storage, "Ada", sessions_count=1, total_time_spent=50.0)

        # Back after the grace: a new session.
        clock.advance(grace + 1)
        assert not r.service.usage.online("Ada")
        await connect(r, token)
        await stats_are(storage, "Ada", sessions_count=2, total_time_spent=50.0)


@pytest_twisted.ensureDeferred
async def test_time_is_written_while_online_and_when_the_service_stops(tmp_path: Path) -> None:
    async with tracked(tmp_path) as (r, clock):
        storage = r.service.storage
        flush = r.service.config.profiles.usage_flush_seconds
        await connect(r, await add_person(storage, "Ada"))
        await stats_are(storage, "Ada", sessions_count=1)
        clock.advance(flush)
        await stats_are(storage, "Ada", total_time_spent=flush)
        clock.advance(42)
        await r.service.usage.stop()  # what the service does first when it stops
        await stats_are(storage, "Ada", sessions_count=1, total_time_spent=flush + 42)


@pytest_twisted.ensureDeferred
async def test_chat_messages_count_for_accounts_and_guests_change_nothing(
    tmp_path: Path,
) -> None:
    async with tracked(tmp_path) as (r, clock):
        storage = r.service.storage
        ada, _ = await connect(r, await add_person(storage, "Ada"))
        await join(ada)
        assert (await post(ada, "Good morning, everyone."))["type"] == "ack"
        await stats_are(storage, "Ada", sessions_count=1, messages_posted=1)

        guest, _ = await connect(r, await add_person(storage, "Wanderer", guest=True))
        anonymous, _ = await connect(r)
        await join(guest)
        assert (await post(guest, "Hello from a guest."))["type"] == "ack"
        clock.advance(30)
        await close(r, guest, "Wanderer")
        anonymous.sendClose()
        await anonymous.closed
        await r.service.usage.idle()
        assert await storage.get_profile("Wanderer") is None
        await stats_are(storage, "Ada", sessions_count=1, messages_posted=1)


@pytest_twisted.ensureDeferred
async def test_a_fired_trigger_counts_for_the_person_it_fired_for(tmp_path: Path) -> None:
    async with tracked(tmp_path) as (r, clock):
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        await storage.ensure_profile("Ada", 0.0)
        await storage.add_xp("Ada", 1000)  # level 1: triggers
        ada, _ = await connect(r, token)
        answer = await ada.request({"type": "triggers.set", "id": 1, "enabled": ["let-go"]})
        assert answer == {"type": "ack", "id": 1}
        await next_of(ada, "xp.update")  # after triggers.state: XP for choosing
        await join(ada)
        bob, _ = await connect(r, await add_person(storage, "Bob"))
        await join(bob)
        assert (await post(bob, "Time to let it go, everyone."))["type"] == "ack"
        await stats_are(storage, "Ada", triggers_activated=1, messages_posted=0)
        await stats_are(storage, "Bob", triggers_activated=0, messages_posted=1)


@pytest_twisted.ensureDeferred
async def test_a_finished_companion_reply_counts(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        storage = r.service.storage
        ada, _ = await connect(r, await add_person(storage, "Ada"))
        fake.script(Stream(sse_events(["Breathe in, ", "and out slowly."])))
        assert (await send(ada, "Help me relax."))["type"] == "ack"
        assert (await read_reply(ada)).end["type"] == "ai.done"
        await stats_are(storage, "Ada", sessions_count=1, companion_replies=1)

        guest, _ = await connect(r, await add_person(storage, "Visitor", guest=True))
        fake.script(Stream(sse_events(["Hello there."])))
        assert (await send(guest, "Hello?"))["type"] == "ack"
        assert (await read_reply(guest)).end["type"] == "ai.done"
        await r.service.usage.idle()
        assert await storage.get_profile("Visitor") is None
        await stats_are(storage, "Ada", companion_replies=1)


@pytest_twisted.ensureDeferred
async def test_a_companion_reply_that_broke_off_does_not_count(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        storage = r.service.storage
        ada, _ = await connect(r, await add_person(storage, "Ada"))
        complete = Stream(sse_events(["Breathe in, ", "and out slowly."]))
        broken = Stream(sse_events(["Let your ", "shoulders"], done=False)[:3], end="close")
        fake.script(complete, broken, complete)
        for n, ending in enumerate(("ai.done", "ai.error", "ai.done")):
            ada.send_json({"type": "ai.send", "id": n, "text": "Help me relax."})
            await next_of(ada, "ack")  # past the XP frames of the reply before
            assert (await read_reply(ada)).end["type"] == ending
        # The broken-off reply's text arrived, but only the two completed replies count.
        await stats_are(storage, "Ada", companion_replies=2)
        await r.service.usage.idle()
        await stats_are(storage, "Ada", companion_replies=2)


@pytest_twisted.ensureDeferred
async def test_events_of_someone_without_a_visit_write_nothing(tmp_path: Path) -> None:
    async with tracked(tmp_path) as (r, clock):
        storage = r.service.storage
        ada, _ = await connect(r, await add_person(storage, "Ada"))
        await join(ada)
        assert (await post(ada, "Good morning, everyone."))["type"] == "ack"
        await stats_are(storage, "Ada", sessions_count=1, messages_posted=1)
        # Their visit ends unwritten (what account deletion does first): a
        # message still being handled, and the connection closing, write nothing.
        r.service.usage.forget_person("Ada")
        assert not r.service.usage.online("Ada")
        ada.send_json({"type": "chat.send", "id": "more", "room": "lobby", "text": "One more."})
        assert (await next_of(ada, "ack"))["id"] == "more"  # and published
        clock.advance(30)
        await close(r, ada, "Ada")
        await r.service.usage.idle()
        await stats_are(storage, "Ada", sessions_count=1, messages_posted=1, total_time_spent=0.0)
