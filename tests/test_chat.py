"""Public chat over a real loopback port with real SQLite: rooms, messages,
ordering, history, presence, typing, mentions, text rules, limits, who may
post."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from bambid.models import UserTagInteraction
from tests import wsclient
from tests.chatsupport import add_person, chat_server, connect, expect, join, next_of, post

FAST = {"chat_burst": 1000, "chat_per_second": 1000.0, "connection_burst": 1000}


@pytest_twisted.ensureDeferred
async def test_welcome_names_the_person_and_the_rooms(tmp_path: Path) -> None:
    async with chat_server(tmp_path, chat={"rooms": ["lobby", "games"]}) as r:
        token = await add_person(r.service.storage, "Ada")
        _, welcome = await connect(r, token, id="h")
        assert welcome["type"] == "welcome"
        assert welcome["id"] == "h"
        assert welcome["user"] == {
            "name": "Ada",
            "role": "user",
            "guest": False,
            "xp": 0,
            "level": 0,
            "next": 1000,
        }
        assert welcome["rooms"] == ["lobby", "games"]
        assert welcome["max_message_length"] == 2000


@pytest_twisted.ensureDeferred
async def test_guest_is_shown_as_guest(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        token = await add_person(r.service.storage, "Visitor7", guest=True)
        ada = await add_person(r.service.storage, "Ada")
        guest, welcome = await connect(r, token)
        assert welcome["user"]["guest"] is True
        assert welcome["user"]["role"] == "user"
        watcher, _ = await connect(r, ada)
        await join(watcher)
        await join(guest)
        update = await expect(watcher, "presence.update")
        assert update["joined"] == {"name": "Visitor7", "role": "user", "guest": True}
        ack = await post(guest, "hi all")
        assert ack["type"] == "ack"
        message = await next_of(watcher, "chat.message")
        assert message["user"] == {"name": "Visitor7", "role": "user", "guest": True}


@pytest_twisted.ensureDeferred
async def test_two_clients_in_a_room(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        ada_token = await add_person(r.service.storage, "Ada")
        bo_token = await add_person(r.service.storage, "Bob", role="moderator")
        ada, _ = await connect(r, ada_token)
        bo, _ = await connect(r, bo_token)
        history = await join(ada)
        assert history["messages"] == [] and history["has_more"] is False
        await join(bo)
        assert (await expect(ada, "presence.update"))["joined"]["name"] == "Bob"

        ack = await post(ada, "  hello Bo  ", id="m1")
        assert ack["type"] == "ack" and ack["id"] == "m1" and ack["seq"] == 1
        for client in (ada, bo):
            message = await expect(client, "chat.message")
            assert message == {
                "type": "chat.message",
                "room": "lobby",
                "seq": 1,
                "message_id": ack["message_id"],
                "kind": "message",
                "user": {"name": "Ada", "role": "user", "guest": False},
                "text": "hello Bo",
                "ts": message["ts"],
                "mentions": [],
                "links": [],
                "deleted": False,
            }
        ack = await post(bo, "hi Ada")
        message = await expect(ada, "chat.message", seq=2)
        assert message["user"] == {"name": "Bob", "role": "moderator", "guest": False}


@pytest_twisted.ensureDeferred
async def test_presence_lists_people_once_and_follows_their_last_tab(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        ada_token = await add_person(r.service.storage, "Ada")
        bo_token = await add_person(r.service.storage, "Bob")
        bo, _ = await connect(r, bo_token)
        await join(bo)
        tab1, _ = await connect(r, ada_token)
        tab2, _ = await connect(r, ada_token)
        anonymous, _ = await connect(r)
        await join(anonymous)  # readers are never shown

        await tab1.request({"type": "room.join", "room": "lobby"})
        await expect(tab1, "chat.history")
        presence = await expect(tab1, "presence")
        assert [u["name"] for u in presence["users"]] == ["Ada", "Bob"]
        assert (await expect(bo, "presence.update"))["joined"]["name"] == "Ada"

        await join(tab2)  # Ada's second tab: nobody is told
        await tab1.request({"type": "room.leave", "id": 9, "room": "lobby"})  # one tab left
        ack = await post(bo, "still here?")
        assert ack["type"] == "ack"
        # Bo's next message is his own, not a presence change.
        assert (await bo.next())["type"] == "chat.message"

        tab2.sendClose()  # Ada's last tab in the room closes
        left = await expect(bo, "presence.update")
        assert left["left"] == {"name": "Ada", "role": "user", "guest": False}
        assert "joined" not in left


@pytest_twisted.ensureDeferred
async def test_many_messages_from_two_senders_arrive_in_seq_order_everywhere(
    tmp_path: Path,
) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        tokens = [await add_person(r.service.storage, n) for n in ("Ada", "Bob", "Cy")]
        ada, bo, cy = [(await connect(r, t))[0] for t in tokens]
        for client in (ada, bo, cy):
            await join(client)
        count = 60
        for i in range(count):  # both senders pipeline everything at once
            ada.send_json({"type": "chat.send", "id": f"a{i}", "room": "lobby", "text": f"a{i}"})
            bo.send_json({"type": "chat.send", "id": f"b{i}", "room": "lobby", "text": f"b{i}"})
        for client in (ada, bo, cy):
            seqs: list[int] = []
            texts: list[str] = []
            while len(seqs) < 2 * count:
                message = await client.next()
                if message["type"] == "chat.message":
                    seqs.append(message["seq"])
                    texts.append(message["text"])
            assert seqs == list(range(1, 2 * count + 1))
            # each sender's messages keep the order they were sent in
            assert [t for t in texts if t[0] == "a"] == [f"a{i}" for i in range(count)]
            assert [t for t in texts if t[0] == "b"] == [f"b{i}" for i in range(count)]


@pytest_twisted.ensureDeferred
async def test_the_ack_comes_before_the_senders_own_message(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        token = await add_person(r.service.storage, "Ada")
        ada, _ = await connect(r, token)
        await join(ada)
        for i in range(20):
            ada.send_json({"type": "chat.send", "id": i, "room": "lobby", "text": f"n{i}"})
        for i in range(20):
            ack = await expect(ada, "ack", id=i)
            message = await expect(ada, "chat.message", seq=ack["seq"])
            assert message["message_id"] == ack["message_id"]


@pytest_twisted.ensureDeferred
async def test_history_pages_backwards(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST, chat={"history_limit": 5}) as r:
        token = await add_person(r.service.storage, "Ada")
        ada, _ = await connect(r, token)
        await join(ada)
        for i in range(12):
            assert (await post(ada, f"m{i + 1}"))["type"] == "ack"
            await expect(ada, "chat.message")
        reader, _ = await connect(r)
        history = await join(reader)
        assert [m["seq"] for m in history["messages"]] == [8, 9, 10, 11, 12]
        assert history["has_more"] is True
        page = await reader.request(
            {"type": "chat.history", "id": "p", "room": "lobby", "before_seq": 8, "limit": 4}
        )
        assert page["id"] == "p"
        assert [m["seq"] for m in page["messages"]] == [4, 5, 6, 7]
        assert [m["text"] for m in page["messages"]] == ["m4", "m5", "m6", "m7"]
        assert page["has_more"] is True
        last = await reader.request(
            {"type": "chat.history", "room": "lobby", "before_seq": 4, "limit": 100}
        )
        assert [m["seq"] for m in last["messages"]] == [1, 2, 3]
        assert last["has_more"] is False
        for bad in ({"before_seq": 0}, {"limit": 0}, {"limit": "x"}, {"before_seq": True}):
            error = await reader.request({"type": "chat.history", "room": "lobby", **bad})
            assert error["code"] == "bad_request"
        error = await reader.request({"type": "chat.history", "room": "nowhere"})
        assert error["code"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_typing_is_relayed_at_most_once_per_interval(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        ada_token = await add_person(r.service.storage, "Ada")
        bo_token = await add_person(r.service.storage, "Bob")
        ada, _ = await connect(r, ada_token)
        ada_tab2, _ = await connect(r, ada_token)
        bo, _ = await connect(r, bo_token)
        await join(bo)
        await join(ada)
        await join(ada_tab2)
        await expect(bo, "presence.update")
        ada.send_json({"type": "chat.typing", "room": "lobby"})
        ada_tab2.send_json({"type": "chat.typing", "room": "lobby"})  # same person: throttled
        ada.send_json({"type": "chat.typing", "room": "lobby"})
        typing = await expect(bo, "chat.typing")
        assert typing == {
            "type": "chat.typing",
            "room": "lobby",
            "user": {"name": "Ada", "role": "user", "guest": False},
        }
        assert (await post(ada, "done typing"))["type"] == "ack"
        assert (await bo.next())["type"] == "chat.message"  # no second chat.typing
        # Ada's own tabs are not told she is typing.
        assert (await ada_tab2.next())["type"] == "chat.message"
        error = await bo.request({"type": "chat.typing", "id": 1, "room": "other"})
        assert error["code"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_mentions_reach_every_tab_and_are_recorded(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        storage = r.service.storage
        ada_token = await add_person(storage, "Ada")
        bo_token = await add_person(storage, "Bob")
        ada, _ = await connect(r, ada_token)
        bo_in_room, _ = await connect(r, bo_token)
        bo_elsewhere, _ = await connect(r, bo_token)  # Bo's other tab, in no room
        await join(ada)
        await join(bo_in_room)
        await expect(ada, "presence.update")
        ack = await post(ada, "hey @bob and @nobody-here, also mail@bob.example")
        assert ack["type"] == "ack"
        message = await next_of(ada, "chat.message")
        assert message["mentions"] == ["Bob"]  # as the account spells it
        for client in (bo_in_room, bo_elsewhere):
            mention = await next_of(client, "mention")
            assert mention == {
                "type": "mention",
                "room": "lobby",
                "message_id": ack["message_id"],
                "seq": ack["seq"],
                "by": "Ada",
                "text": "hey @bob and @nobody-here, also mail@bob.example",
            }
        records = await storage.list_records(UserTagInteraction, "Bob", 10)
        assert [(t.username, t.by, t.room, t.message_id) for t in records] == [
            ("Bob", "Ada", "lobby", ack["message_id"])
        ]


@pytest_twisted.ensureDeferred
async def test_online_guests_can_be_mentioned(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        storage = r.service.storage
        ada, _ = await connect(r, await add_person(storage, "Ada"))
        visitor, _ = await connect(r, await add_person(storage, "Visitor", guest=True))
        await join(ada)
        ack = await post(ada, "welcome @visitor, and @offline-guest")
        message = await next_of(ada, "chat.message")
        assert message["mentions"] == ["Visitor"]
        mention = await next_of(visitor, "mention")
        assert (mention["message_id"], mention["by"]) == (ack["message_id"], "Ada")


@pytest_twisted.ensureDeferred
async def test_text_is_cleaned_filtered_and_limited(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("# ours\nfrobnicate\nbad phrase\n")
    async with chat_server(
        tmp_path,
        limits=FAST,
        chat={"filtered_words_file": str(words), "max_message_length": 20},
    ) as r:
        token = await add_person(r.service.storage, "Ada")
        ada, _ = await connect(r, token)
        await join(ada)

        async def stored(text: str) -> str:
            ack = await post(ada, text)
            assert ack["type"] == "ack", ack
            message = await expect(ada, "chat.message")
            return str(message["text"])

        assert await stored("FROBNICATE it") == "********** it"
        assert await stored("a Bad  Phrase!") == "a ***********!"
        assert await stored("frobnicated") == "frobnicated"
        assert await stored("\x00a\x07b\u202ec\r\nd\te\x1b") == "abc\nd\te"
        assert await stored("x" * 20) == "x" * 20
        for text in ("", "   ", "\x00\x01\n", "x" * 21):
            error = await post(ada, text, id="bad")
            assert error["type"] == "error" and error["code"] == "bad_request", (text, error)
        error = await ada.request({"type": "chat.send", "room": "lobby", "text": 5})
        assert error["code"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_a_reader_without_a_session_can_join_and_read_but_not_post(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        token = await add_person(r.service.storage, "Ada")
        ada, _ = await connect(r, token)
        await join(ada)
        assert (await post(ada, "before")).get("seq") == 1
        await expect(ada, "chat.message")
        reader, welcome = await connect(r)
        assert welcome["user"] is None
        history = await join(reader)
        assert [m["text"] for m in history["messages"]] == ["before"]
        assert (await post(ada, "after")).get("seq") == 2
        assert (await next_of(reader, "chat.message"))["text"] == "after"
        error = await post(reader, "let me in", id="x")
        assert (error["type"], error["code"], error["id"]) == ("error", "unauthenticated", "x")
        error = await reader.request({"type": "chat.typing", "room": "lobby"})
        assert error["code"] == "unauthenticated"
        # a session token nobody issued is no better
        stranger, welcome = await connect(r, "made-up-token")
        assert welcome["user"] is None


@pytest_twisted.ensureDeferred
async def test_posting_needs_membership_and_a_real_room(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        token = await add_person(r.service.storage, "Ada")
        ada, _ = await connect(r, token)
        assert (await post(ada, "hi"))["code"] == "not_in_room"
        assert (await post(ada, "hi", room="nowhere"))["code"] == "not_found"
        error = await ada.request({"type": "room.join", "id": 1, "room": "nowhere"})
        assert (error["code"], error["id"]) == ("not_found", 1)
        error = await ada.request({"type": "room.join", "room": 7})
        assert error["code"] == "bad_request"
        await join(ada)
        await ada.request({"type": "room.leave", "room": "lobby"})
        assert (await post(ada, "hi"))["code"] == "not_in_room"


@pytest_twisted.ensureDeferred
async def test_requests_before_hello_are_refused(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        client = await wsclient.connect(r.ws)
        error = await client.request({"type": "room.join", "room": "lobby"})
        assert error["code"] == "hello_required"


@pytest_twisted.ensureDeferred
async def test_chat_rate_limit_then_auto_mute(tmp_path: Path) -> None:
    limits = {
        "chat_burst": 2,
        "chat_per_second": 0.01,
        "abuse_strikes": 3,
        "abuse_mute_seconds": 120.0,
        "connection_burst": 1000,
    }
    async with chat_server(tmp_path, limits=limits) as r:
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)  # the limit is per person, not per tab
        await join(tab1)
        await join(tab2)
        assert (await post(tab1, "one"))["type"] == "ack"
        await expect(tab1, "chat.message")
        await expect(tab2, "chat.message", seq=1)
        assert (await post(tab2, "two"))["type"] == "ack"
        await expect(tab2, "chat.message", seq=2)
        await expect(tab1, "chat.message", seq=2)
        for attempt in range(2):
            error = await post(tab1, f"three {attempt}")
            assert error["code"] == "rate_limited", error
            assert error["retry_after"] > 0
        # The third refusal in a row mutes: every tab is told, then the answer.
        tab1.send_json({"type": "chat.send", "room": "lobby", "text": "three again"})
        for client in (tab1, tab2):
            notice = await expect(client, "system", level="warning")
            assert "muted for 2 minutes" in notice["message"]
        error = await expect(tab1, "error", code="muted")
        assert error["until"] is not None
        error = await post(tab2, "still muted?")
        assert (error["code"], error["until"]) == ("muted", pytest.approx(error["until"]))
        mute = await r.service.storage.get_sanction("mute", "ada")
        assert mute is not None and mute.by == "system"


@pytest_twisted.ensureDeferred
async def test_a_cookie_does_not_help_a_foreign_origin(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        token = await add_person(r.service.storage, "Ada")
        with pytest.raises(wsclient.HandshakeFailed) as caught:
            await wsclient.connect(r.ws, origin="https://evil.example", cookie=token)
        assert "403" in str(caught.value)


def _texts(history: dict[str, Any]) -> list[str]:
    return [m["text"] for m in history["messages"]]
