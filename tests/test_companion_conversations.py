"""Companion conversations across restarts: stored per person, listed,
loaded, reset; a reply running at shutdown is stopped and kept."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.chatsupport import add_person, connect, expect
from tests.companionsupport import (
    companion_server,
    fake_llm,
    read_reply,
    send,
    stalled,
    until,
)
from tests.fakellm import NORMAL_REPLY


@pytest_twisted.ensureDeferred
async def test_conversations_survive_a_restart(tmp_path: Path) -> None:
    async with fake_llm() as fake:
        async with companion_server(tmp_path, [fake.url]) as r:
            tab, _ = await connect(r, await add_person(r.service.storage, "Ada"))
            ack = await send(tab, "Remember   this\nplease")
            await read_reply(tab)
            await expect(tab, "xp.update")
            zed, _ = await connect(r, await add_person(r.service.storage, "Zed"))
            zed_ack = await send(zed, "Zed's secret")
            await read_reply(zed)
            await expect(zed, "xp.update")
        first = ack["conversation_id"]

        # A new process on the same database.
        async with companion_server(tmp_path, [fake.url]) as r:
            token = await add_person(r.service.storage, "Ada")
            await r.service.storage.add_xp("Ada", 4500)  # level 3: session history
            tab, _ = await connect(r, token)
            history = await tab.request({"type": "ai.history", "id": 1})
            assert history["conversation_id"] == first
            assert history["title"] == "Remember this please"
            turns = [(t["role"], t["content"]) for t in history["turns"]]
            assert turns == [("user", "Remember   this\nplease"), ("assistant", NORMAL_REPLY)]
            assert history["turns"][1]["stopped"] is False
            assert history["turns"][1]["error"] is None

            reset = await tab.request({"type": "ai.reset", "id": 2})
            assert reset["type"] == "ack" and reset["id"] == 2
            second = reset["conversation_id"]
            assert second != first
            fresh = await expect(tab, "ai.conversation")
            assert fresh == {
                "type": "ai.conversation",
                "conversation_id": second,
                "title": "",
                "turns": [],
            }
            # Resetting an empty conversation reuses it.
            again = await tab.request({"type": "ai.reset", "id": 3})
            assert again["conversation_id"] == second
            await expect(tab, "ai.conversation")

            listed = await tab.request({"type": "ai.conversations", "id": 4})
            assert listed["type"] == "ai.conversations" and listed["id"] == 4
            assert [(c["conversation_id"], c["turns"]) for c in listed["conversations"]] == [
                (second, 0),
                (first, 2),
            ]
            assert listed["conversations"][1]["title"] == "Remember this please"

            loaded = await tab.request({"type": "ai.load", "id": 5, "conversation_id": first})
            assert loaded == {"type": "ack", "id": 5, "conversation_id": first}
            shown = await expect(tab, "ai.conversation", conversation_id=first)
            assert len(shown["turns"]) == 2
            listed = await tab.request({"type": "ai.conversations"})
            assert [c["conversation_id"] for c in listed["conversations"]] == [first, second]

            # A reply now continues the loaded conversation.
            await send(tab, "and more")
            await read_reply(tab)
            await expect(tab, "xp.update")
            messages = fake.chat_requests[-1].body["messages"]
            assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]

            for unknown in ("nope", zed_ack["conversation_id"]):
                answer = await tab.request({"type": "ai.load", "conversation_id": unknown})
                assert answer["type"] == "error" and answer["code"] == "not_found"
            bad = await tab.request({"type": "ai.load", "conversation_id": 7})
            assert bad["code"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_other_tabs_follow_reset_and_load(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        token = await add_person(r.service.storage, "Ada", guest=True)
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        await send(tab1, "first topic")
        await read_reply(tab1)
        await read_reply(tab2)
        reset = await tab1.request({"type": "ai.reset", "id": "r"})
        await expect(tab1, "ai.conversation", conversation_id=reset["conversation_id"])
        await expect(tab2, "ai.conversation", conversation_id=reset["conversation_id"])


@pytest_twisted.ensureDeferred
async def test_reset_stops_a_running_reply_and_keeps_it(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        tab, _ = await connect(r, await add_person(r.service.storage, "Ada", guest=True))
        stream, stall = stalled(["par", "tial"], after=1)
        fake.script(stream)
        ack = await send(tab, "start something")
        await until(tab, "ai.delta")
        tab.send_json({"type": "ai.reset", "id": "r"})
        done = await tab.next()
        assert done["type"] == "ai.done" and done["finish_reason"] == "stopped"
        assert done["text"] == "par"
        reset = await tab.next()
        assert reset["type"] == "ack" and reset["conversation_id"] != ack["conversation_id"]
        assert await fake.chat_requests[-1].outcome == "disconnected"
        old = await r.service.storage.get_conversation_by_id(ack["conversation_id"])
        assert old is not None and [t.content for t in old.turns] == ["start something", "par"]
        stall.release()


@pytest_twisted.ensureDeferred
async def test_shutdown_stops_running_replies_and_stores_them(tmp_path: Path) -> None:
    async with fake_llm() as fake:
        stream, stall = stalled(["Hel", "lo", " world"], after=2)
        fake.script(stream)
        async with companion_server(tmp_path, [fake.url]) as r:
            tab, _ = await connect(r, await add_person(r.service.storage, "Ada"))
            await send(tab, "long story")
            await until(tab, "ai.delta")
            await until(tab, "ai.delta")
        assert await fake.chat_requests[-1].outcome == "disconnected"
        stall.release()
        async with companion_server(tmp_path, [fake.url]) as r:
            tab, _ = await connect(r, await add_person(r.service.storage, "Ada"))
            history = await tab.request({"type": "ai.history"})
            assert [t["content"] for t in history["turns"]] == ["long story", "Hello"]
            assert history["turns"][1]["stopped"] is True


@pytest_twisted.ensureDeferred
async def test_a_newcomer_has_an_empty_current_conversation(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        token = await add_person(r.service.storage, "Ada")
        await r.service.storage.ensure_profile("Ada", 0.0)
        await r.service.storage.add_xp("Ada", 4500)  # level 3: session history
        tab, _ = await connect(r, token)
        history = await tab.request({"type": "ai.history", "id": 1})
        assert history["turns"] == [] and history["title"] == ""
        current = history["conversation_id"]
        listed = await tab.request({"type": "ai.conversations"})
        assert [c["conversation_id"] for c in listed["conversations"]] == [current]
        # Not stored until its first prompt, but it can still be "loaded".
        loaded = await tab.request({"type": "ai.load", "id": 2, "conversation_id": current})
        assert loaded == {"type": "ack", "id": 2, "conversation_id": current}
        await expect(tab, "ai.conversation", conversation_id=current)
        ack = await send(tab, "first words")
        assert ack["conversation_id"] == current
        await read_reply(tab)
        assert fake.chat_requests
