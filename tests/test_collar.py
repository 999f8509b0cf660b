"""The collar over a real WebSocket: gated at level 2, cleaned, capped,
stored, synced to every tab, rewarded at most once a minute, and given to
the companion's persona only when enabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from bambid.storage import Storage
from tests import wsclient
from tests.chatsupport import add_person, chat_server, connect, expect
from tests.companionsupport import companion_server, fake_llm, read_reply, send
from tests.conftest import Running


async def at_level(running: Running, name: str, level: int) -> str:
    """An account called ``name`` with just the XP of ``level`` (default
    thresholds from the configuration); its session token."""
    storage: Storage = running.service.storage
    token = await add_person(storage, name)
    await storage.ensure_profile(name, float(reactor.seconds()))
    if level > 0:
        await storage.add_xp(name, running.service.config.xp.levels[level - 1])
    return token


async def collar_set(client: wsclient.TestClientProtocol, **fields: Any) -> dict[str, Any]:
    return await client.request({"type": "collar.set", "id": "c", **fields})


@pytest_twisted.ensureDeferred
async def test_the_collar_unlocks_at_level_2(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        below, _ = await connect(r, await at_level(r, "Ada", 1))
        guest, _ = await connect(r, await add_person(r.service.storage, "Gus", guest=True))
        for client in (below, guest):
            refused = await collar_set(client, text="Sit up straight.", enabled=True)
            assert refused["type"] == "error" and refused["id"] == "c", refused
            assert refused["code"] == "level_required"
            assert (refused["feature"], refused["level"]) == ("collar", 2)
            assert "level 2" in refused["message"]
            # Reading is open to all: nothing was stored.
            state = await client.request({"type": "collar.get", "id": "g"})
            assert state == {"type": "collar.state", "id": "g", "text": "", "enabled": False}
        anonymous, _ = await connect(r)
        answer = await anonymous.request({"type": "collar.get", "id": 1})
        assert answer["code"] == "unauthenticated"

        reached, _ = await connect(r, await at_level(r, "Bea", 2))
        assert (await collar_set(reached, text="Sit up straight.", enabled=True))["type"] == "ack"


@pytest_twisted.ensureDeferred
async def test_a_collar_is_cleaned_stored_and_sent_to_every_tab(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("slouch\n")
    async with chat_server(tmp_path, chat={"filtered_words_file": str(words)}) as r:
        storage = r.service.storage
        token = await at_level(r, "Ada", 2)
        await storage.update_profile("Ada", {"preferences": {"voice": {"speed": 1.5}}})
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)

        ack = await collar_set(tab1, text="  Never\x00 SLOUCH;\u202e sit tall.\r\nBreathe. ")
        assert ack == {"type": "ack", "id": "c"}
        cleaned = "Never ******; sit tall.\nBreathe."
        for tab in (tab1, tab2):
            await expect(tab, "collar.state", text=cleaned, enabled=False)
            xp = await expect(tab, "xp.update")
            assert xp["xp"] == r.service.config.xp.levels[1] + r.service.config.xp.collar
        profile = await storage.get_profile("Ada")
        assert profile is not None
        assert profile.preferences == {
            "voice": {"speed": 1.5},
            "collar": {"text": cleaned, "enabled": False},
        }

        # Only "enabled" this time: the text stays. No XP within the minute.
        assert (await collar_set(tab2, enabled=True))["type"] == "ack"
        for tab in (tab1, tab2):
            await expect(tab, "collar.state", text=cleaned, enabled=True)
        state = await tab2.request({"type": "collar.get", "id": "g"})
        assert state == {"type": "collar.state", "id": "g", "text": cleaned, "enabled": True}

        # Too long (control characters are not counted), or malformed: refused, nothing changed.
        limit = r.service.config.triggers.collar_max_length
        assert (await collar_set(tab1, text="a" * limit + "\x07"))["type"] == "ack"
        await expect(tab1, "collar.state", text="a" * limit)
        for fields in (
            {"text": "a" * (limit + 1)},
            {"text": 7},
            {"enabled": "yes"},
            {},
        ):
            refused = await collar_set(tab1, **fields)
            assert refused["type"] == "error" and refused["code"] == "bad_request", fields
        assert str(limit) in (await collar_set(tab1, text="b" * (limit + 1)))["message"]

        # Cleared, and still there after a reconnect.
        assert (await collar_set(tab1, text="", enabled=False))["type"] == "ack"
        await expect(tab1, "collar.state", text="", enabled=False)
        again, _ = await connect(r, token)
        state = await again.request({"type": "collar.get"})
        assert state == {"type": "collar.state", "text": "", "enabled": False}


PERSONA = "Companion of {{ username }}. Collar: [{{ collar }}]"


@pytest_twisted.ensureDeferred
async def test_the_persona_receives_the_collar_when_enabled(tmp_path: Path) -> None:
    persona = tmp_path / "persona.md.j2"
    persona.write_text(PERSONA)
    async with (
        fake_llm() as fake,
        companion_server(tmp_path, [fake.url], ai={"persona_file": str(persona)}) as r,
    ):
        tab, _ = await connect(r, await at_level(r, "Ada", 2))

        async def system_prompt() -> str:
            await send(tab, "hello")
            await read_reply(tab)
            await expect(tab, "xp.update")  # for the reply
            content: str = fake.chat_requests[-1].body["messages"][0]["content"]
            return content

        assert await system_prompt() == "Companion of Ada. Collar: []"
        await collar_set(tab, text="Remind me to relax my jaw.", enabled=True)
        await expect(tab, "collar.state")
        await expect(tab, "xp.update")
        assert await system_prompt() == "Companion of Ada. Collar: [Remind me to relax my jaw.]"
        await collar_set(tab, enabled=False)
        await expect(tab, "collar.state", enabled=False)
        assert await system_prompt() == "Companion of Ada. Collar: []"

        # A collar stored for someone below level 2 is not used.
        storage = r.service.storage
        token = await at_level(r, "Bob", 1)
        collar = {"text": "Unlocked too early.", "enabled": True}
        await storage.update_profile("Bob", {"preferences": {"collar": collar}})
        bob, _ = await connect(r, token)
        await send(bob, "hello")
        await read_reply(bob)
        assert fake.chat_requests[-1].body["messages"][0]["content"] == (
            "Companion of Bob. Collar: []"
        )


@pytest_twisted.ensureDeferred
async def test_an_ungated_collar_is_for_accounts(tmp_path: Path) -> None:
    xp = {"levels": [1000, 2500], "unlocks": ["triggers", "spirals"]}  # no "collar"
    async with chat_server(tmp_path, xp=xp) as r:
        newcomer, _ = await connect(r, await at_level(r, "Ada", 0))
        assert (await collar_set(newcomer, text="Relax.", enabled=True))["type"] == "ack"
        await expect(newcomer, "collar.state", text="Relax.", enabled=True)
        guest, _ = await connect(r, await add_person(r.service.storage, "Gus", guest=True))
        refused = await collar_set(guest, text="Relax.")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert (await guest.request({"type": "collar.get"}))["text"] == ""
