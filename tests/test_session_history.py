"""Session history over a real WebSocket: listing, loading, deleting and
replaying past conversations need level 3 (the current conversation stays
open); deleting one's own conversations, the current one included; a replay
speaks the companion's turns in order."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from bambid.models import Conversation, ConversationTurn
from bambid.storage import Storage
from bambid.ws.dispatch import Connection, Dispatcher
from tests.chatsupport import add_person, chat_server, connect, expect
from tests.test_collar import at_level
from tests.test_voice_pipeline import sentences_of
from tests.test_voice_read import held, reading_server
from tests.voicesupport import read_voice


async def stored(storage: Storage, owner: str, age: float, *turns: tuple[str, str]) -> Conversation:
    """A conversation of ``owner`` last updated ``age`` seconds ago."""
    when = float(reactor.seconds()) - age
    conversation = Conversation(
        owner=owner,
        title=turns[0][1] if turns else "",
        created_at=when,
        updated_at=when,
        turns=tuple(ConversationTurn(role, text, when) for role, text in turns),
    )
    await storage.save_conversation(conversation)
    return conversation


@pytest_twisted.ensureDeferred
async def test_session_history_unlocks_at_level_3(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        for name, level in (("Ada", 2), ("Bea", 3)):
            old = await stored(storage, name, 200, ("user", "old"), ("assistant", "Old."))
            current = await stored(storage, name, 100, ("user", "new"), ("assistant", "New."))
            tab, _ = await connect(r, await at_level(r, name, level))
            requests = [
                {"type": "ai.conversations"},
                {"type": "voice.replay", "conversation_id": old.conversation_id},
                {"type": "ai.load", "conversation_id": old.conversation_id},
                # No longer the current one once "old" is loaded.
                {"type": "ai.delete", "conversation_id": current.conversation_id},
            ]
            for request in requests:
                answer = await tab.request({**request, "id": "h"})
                if level < 3:
                    assert answer["type"] == "error" and answer["id"] == "h", answer
                    assert answer["code"] == "level_required"
                    assert (answer["feature"], answer["level"]) == ("session_history", 3)
                    assert "level 3" in answer["message"]
                else:
                    assert answer["type"] in ("ai.conversations", "ack"), answer
                    if request["type"] == "ai.load":
                        await expect(tab, "ai.conversation", conversation_id=old.conversation_id)
                    if request["type"] == "voice.replay":
                        await read_voice(tab)
            if level < 3:
                # The current conversation loads at any level; the rest stays open.
                loaded = await tab.request(
                    {"type": "ai.load", "id": 1, "conversation_id": current.conversation_id}
                )
                assert loaded == {
                    "type": "ack",
                    "id": 1,
                    "conversation_id": current.conversation_id,
                }
                await expect(tab, "ai.conversation", conversation_id=current.conversation_id)
                bad = await tab.request({"type": "ai.load", "id": 2, "conversation_id": 7})
                assert bad["code"] == "bad_request"
                history = await tab.request({"type": "ai.history"})
                assert history["conversation_id"] == current.conversation_id
                assert await storage.get_conversation_by_id(old.conversation_id) == old
            else:
                assert await storage.get_conversation_by_id(current.conversation_id) is None

        guest, _ = await connect(r, await add_person(storage, "Gus", guest=True))
        answer = await guest.request({"type": "ai.conversations"})
        assert answer["code"] == "level_required"
        anonymous, _ = await connect(r)
        for kind in ("ai.conversations", "ai.load", "ai.delete", "voice.replay"):
            answer = await anonymous.request({"type": kind, "conversation_id": "x"})
            assert answer["code"] == "unauthenticated", answer


@pytest_twisted.ensureDeferred
async def test_deleting_conversations(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        old = await stored(storage, "Ada", 300, ("user", "old"), ("assistant", "Old."))
        current = await stored(storage, "Ada", 200, ("user", "new"), ("assistant", "New."))
        zeds = await stored(storage, "Zed", 100, ("user", "mine"))
        guests = await stored(storage, "guest:Ada", 100, ("user", "not hers"))
        token = await at_level(r, "Ada", 3)
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)

        for unknown in (zeds.conversation_id, guests.conversation_id, "nope"):
            answer = await tab1.request({"type": "ai.delete", "conversation_id": unknown})
            assert answer["type"] == "error" and answer["code"] == "not_found", answer
        for bad in (None, 7, ""):
            answer = await tab1.request({"type": "ai.delete", "conversation_id": bad})
            assert answer["code"] == "bad_request", answer
        assert await storage.get_conversation_by_id(zeds.conversation_id) == zeds

        # A past one: gone, and the current one stays current.
        ack = await tab1.request(
            {"type": "ai.delete", "id": 1, "conversation_id": old.conversation_id}
        )
        assert ack == {"type": "ack", "id": 1, "conversation_id": old.conversation_id}
        assert await storage.get_conversation_by_id(old.conversation_id) is None
        listed = await tab2.request({"type": "ai.conversations"})
        assert [c["conversation_id"] for c in listed["conversations"]] == [current.conversation_id]

        # The current one: a new, empty one becomes current in every tab.
        ack = await tab2.request(
            {"type": "ai.delete", "id": 2, "conversation_id": current.conversation_id}
        )
        assert ack == {"type": "ack", "id": 2, "conversation_id": current.conversation_id}
        shown = [await expect(tab, "ai.conversation") for tab in (tab1, tab2)]
        fresh = shown[0]["conversation_id"]
        assert fresh != current.conversation_id
        assert (
            shown[0]
            == shown[1]
            == {
                "type": "ai.conversation",
                "conversation_id": fresh,
                "title": "",
                "turns": [],
            }
        )
        assert await storage.get_conversation_by_id(current.conversation_id) is None
        listed = await tab1.request({"type": "ai.conversations"})
        assert [c["conversation_id"] for c in listed["conversations"]] == [fresh]
        assert await storage.list_conversations("ada", 10) == [
            await storage.get_conversation_by_id(fresh)
        ]


@pytest_twisted.ensureDeferred
async def test_a_replay_speaks_the_companions_turns_in_order(tmp_path: Path) -> None:
    turns = [
        ("user", "Help me relax."),
        ("assistant", "Let us start with the breath. Breathe in slowly."),
        ("user", "And then?"),
        ("assistant", ""),  # stopped before the first word
        ("user", "Again?"),
        ("assistant", "Now breathe out.\n- Drop your shoulders\n- Unclench your jaw"),
    ]
    expected = [s for role, text in turns if role == "assistant" for s in sentences_of(text)]
    async with reading_server(tmp_path) as (r, kokoro):
        storage = r.service.storage
        conversation = await stored(storage, "Ada", 100, *turns)
        zeds = await stored(storage, "Zed", 100, ("assistant", "Not for Ada."))
        token = await at_level(r, "Ada", 3)
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        answer = await tab1.request(
            {"type": "voice.replay", "id": 1, "conversation_id": zeds.conversation_id}
        )
        assert answer["code"] == "not_found"

        ack = await tab1.request(
            {"type": "voice.replay", "id": 2, "conversation_id": conversation.conversation_id}
        )
        assert ack["type"] == "ack" and ack["id"] == 2
        reply_id = ack["reply_id"]
        assert reply_id.startswith("replay-")
        for tab in (tab1, tab2):
            frames = await read_voice(tab)
            assert [f["type"] for f in frames[:-1]] == ["voice.audio"] * len(expected)
            assert [f["text"] for f in frames[:-1]] == expected
            assert [f["index"] for f in frames[:-1]] == list(range(len(expected)))
            assert frames[-1] == {
                "type": "voice.done",
                "reply_id": reply_id,
                "sentences": len(expected),
                "stopped": False,
            }

        # voice.stop ends a replay as it ends a reading (new words: not cached).
        other = await stored(storage, "Ada", 50, ("assistant", "Rest your eyes. Relax."))
        kokoro.hold()
        ack = await tab1.request(
            {"type": "voice.replay", "id": 3, "conversation_id": other.conversation_id}
        )
        await held(kokoro)
        stop = await tab1.request({"type": "voice.stop", "id": 4, "reply_id": ack["reply_id"]})
        assert stop["stopped"] is True
        await expect(tab1, "voice.done", reply_id=ack["reply_id"], stopped=True)
        kokoro.release()


def test_a_registered_handler_can_be_wrapped() -> None:
    async def original(connection: Connection, message: Mapping[str, Any]) -> None: ...

    async def wrapper(connection: Connection, message: Mapping[str, Any]) -> None: ...

    dispatcher = Dispatcher()
    with pytest.raises(ValueError, match="not registered"):
        dispatcher.register("ai.load", wrapper, replace=True)
    dispatcher.register("ai.load", original)
    with pytest.raises(ValueError, match="already registered"):
        dispatcher.register("ai.load", wrapper)
    assert dispatcher.handler("ai.load") is original
    dispatcher.register("ai.load", wrapper, replace=True)
    assert dispatcher.handler("ai.load") is wrapper
    assert dispatcher.handler("ai.nothing") is None
    assert dispatcher.types() == ["ai.load"]
