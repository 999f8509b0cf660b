"""Moderation: bans, kicks, mutes, deletions, notices and who may do them —
over a real port, and with ``task.Clock`` for expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock

from bambid import config as configuration
from bambid.auth.sessions import Banned, identify
from bambid.chat.handlers import ChatServices
from bambid.chat.moderation import describe_duration, parse_duration, parse_slash
from bambid.models import UserInteraction
from bambid.storage.sqlite import SQLiteStorage
from bambid.ws.dispatch import ClientError
from tests.chatsupport import (
    FakeConnection,
    add_person,
    chat_server,
    connect,
    expect,
    join,
    post,
    prepare,
)

FAST = {"chat_burst": 1000, "chat_per_second": 1000.0, "connection_burst": 1000}


def command(cmd: str, id: Any = "c", **args: Any) -> dict[str, Any]:
    return {"type": "admin.command", "id": id, "cmd": cmd, "args": args}


# -- parsing ---------------------------------------------------------------------------


def test_slash_commands_parse_like_admin_command() -> None:
    assert parse_slash("/mute Bob 10m calm  down") == (
        "mute",
        {"user": "Bob", "duration": "10m", "reason": "calm  down"},
    )
    assert parse_slash("/mute Bob") == ("mute", {"user": "Bob"})
    assert parse_slash("/mute Bob be nice") == ("mute", {"user": "Bob", "reason": "be nice"})
    assert parse_slash("/ban Bob 1d spam") == (
        "ban",
        {"user": "Bob", "duration": "1d", "reason": "spam"},
    )
    assert parse_slash("/ban Bob spam links") == ("ban", {"user": "Bob", "reason": "spam links"})
    assert parse_slash("/kick Bob go away") == ("kick", {"user": "Bob", "reason": "go away"})
    assert parse_slash("/UNMUTE Bob") == ("unmute", {"user": "Bob"})
    assert parse_slash("/unban Bob") == ("unban", {"user": "Bob"})
    assert parse_slash("/delete abc123") == ("delete", {"message_id": "abc123"})
    assert parse_slash("/notice Server restarts at  noon") == (
        "notice",
        {"text": "Server restarts at  noon"},
    )
    assert parse_slash("  /help") == ("help", {})
    for bad in ("/shrug", "/mute", "/delete", "/delete a b", "/notice   ", "/"):
        with pytest.raises(ClientError) as caught:
            parse_slash(bad)
        assert caught.value.code == "bad_request"


def test_durations() -> None:
    assert [parse_duration(d) for d in ("30s", "10m", "2h", "7d")] == [30, 600, 7200, 604800]
    for bad in ("", "10", "m", "10x", "-1m", "0s", "400d", 5, None, "1.5h"):
        with pytest.raises(ClientError):
            parse_duration(bad)
    assert describe_duration(600) == "10 minutes"
    assert describe_duration(3600) == "1 hour"
    assert describe_duration(90) == "90 seconds"
    assert describe_duration(86400 * 7) == "7 days"


# -- over a real port ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ban_closes_every_connection_and_keeps_them_out(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        bob = await add_person(storage, "Bob")
        moderator, _ = await connect(r, mia)
        tab1, _ = await connect(r, bob)
        tab2, _ = await connect(r, bob)
        await join(tab1)

        ack = await moderator.request(command("ban", user="bob", reason="spam"))
        assert ack["type"] == "ack" and ack["id"] == "c"
        assert ack["result"] == {
            "user": "Bob",
            "until": None,
            "sessions": 1,
            "connections": 2,
        }
        for tab in (tab1, tab2):
            code, reason = await tab.closed
            assert (code, reason) == (1008, "banned: spam")

        # The session is gone: the old cookie is just anonymous now.
        _, welcome = await connect(r, bob)
        assert welcome["type"] == "welcome" and welcome["user"] is None
        # Any session that still exists is refused at hello, and closed.
        fresh = await add_person(storage, "Bob")
        client, error = await connect(r, fresh, id="h")
        assert error == {
            "type": "error",
            "id": "h",
            "code": "banned",
            "message": "you are banned",
            "reason": "spam",
            "until": None,
        }
        assert await client.closed == (1008, "banned: spam")

        ack = await moderator.request(command("unban", user="Bob"))
        assert ack["result"] == {"user": "Bob", "lifted": True}
        _, welcome = await connect(r, fresh)
        assert welcome["user"]["name"] == "Bob"
        actions = [i.action for i in await storage.list_records(UserInteraction, "Mia", 10)]
        assert actions == ["moderation.unban", "moderation.ban"]


@pytest_twisted.ensureDeferred
async def test_kick_closes_connections_but_they_may_come_back(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        bob = await add_person(storage, "Bob")
        moderator, _ = await connect(r, mia)
        await join(moderator)
        tab1, _ = await connect(r, bob)
        tab2, _ = await connect(r, bob)
        await join(tab1)
        await expect(moderator, "presence.update")
        moderator.send_json(
            {"type": "chat.send", "id": "k", "room": "lobby", "text": "/kick Bob cool off"}
        )
        for tab in (tab1, tab2):
            assert await tab.closed == (1008, "kicked: cool off")
        # The ack and the news that Bob left may come in either order.
        answers = {m["type"]: m for m in [await moderator.next(), await moderator.next()]}
        ack = answers["ack"]
        assert ack["id"] == "k" and ack["result"] == {"user": "Bob", "connections": 2}
        assert answers["presence.update"]["left"]["name"] == "Bob"
        _, welcome = await connect(r, bob)
        assert welcome["user"]["name"] == "Bob"


@pytest_twisted.ensureDeferred
async def test_mute_and_unmute(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        bob = await add_person(storage, "Bob")
        moderator, _ = await connect(r, mia)
        bob_tab, _ = await connect(r, bob)
        await join(bob_tab)
        ack = await moderator.request(command("mute", user="Bob", duration="2h", reason="calm"))
        until = ack["result"]["until"]
        assert ack["result"]["user"] == "Bob" and until > reactor.seconds() + 7000
        notice = await expect(bob_tab, "system", level="warning")
        assert notice["message"] == "You are muted for 2 hours: calm."
        error = await post(bob_tab, "let me speak", id="m")
        assert (error["code"], error["until"], error["id"]) == ("muted", until, "m")
        # the default mute is 10 minutes
        ack = await moderator.request(command("mute", user="Bob"))
        assert ack["result"]["until"] == pytest.approx(reactor.seconds() + 600, abs=5)
        await expect(bob_tab, "system")
        ack = await moderator.request(command("unmute", user="Bob"))
        assert ack["result"] == {"user": "Bob", "lifted": True}
        assert (await expect(bob_tab, "system", level="info"))["message"] == "You can post again."
        assert (await post(bob_tab, "thanks"))["type"] == "ack"
        ack = await moderator.request(command("unmute", user="Bob"))
        assert ack["result"]["lifted"] is False


@pytest_twisted.ensureDeferred
async def test_people_without_the_role_are_forbidden(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        bob = await add_person(storage, "Bob")
        await add_person(storage, "Mia", role="moderator")
        guest = await add_person(storage, "Visitor", guest=True)
        client, _ = await connect(r, bob)
        await join(client)
        for cmd, args in [
            ("mute", {"user": "Mia"}),
            ("ban", {"user": "Mia", "reason": "x"}),
            ("kick", {"user": "Mia"}),
            ("notice", {"text": "hello"}),
            ("delete", {"message_id": "x"}),
            ("unban", {"user": "Mia"}),
        ]:
            error = await client.request(command(cmd, **args))
            assert error["code"] == "forbidden", (cmd, error)
        for text in ("/mute Mia", "/ban Mia 1d bye", "/kick Mia", "/notice hi", "/unmute Bob"):
            error = await post(client, text)
            assert error["code"] == "forbidden", (text, error)
        ack = await post(client, "/help", id="h")
        assert ack["result"]["commands"] == ["/help"]
        assert (await post(client, "/dance"))["code"] == "bad_request"
        guest_client, _ = await connect(r, guest)
        assert (await guest_client.request(command("mute", user="Bob")))["code"] == "forbidden"
        anonymous, _ = await connect(r)
        assert (await anonymous.request(command("help")))["code"] == "unauthenticated"
        error = await client.request({"type": "admin.command", "cmd": "mute", "args": []})
        assert error["code"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_a_demoted_moderator_loses_the_power_on_open_connections(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        await add_person(storage, "Bob")
        moderator, welcome = await connect(r, mia)
        assert welcome["user"]["role"] == "moderator"
        await storage.set_account_role("Mia", "user")
        error = await moderator.request(command("mute", user="Bob"))
        assert error["code"] == "forbidden"


@pytest_twisted.ensureDeferred
async def test_moderators_cannot_act_on_admins(tmp_path: Path) -> None:
    async with chat_server(tmp_path, auth={"admins": ["Root"]}) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        root = await add_person(storage, "Root")  # admin by auth.admins
        boss = await add_person(storage, "Boss", role="admin")  # admin by stored role
        moderator, _ = await connect(r, mia)
        for name in ("Root", "Boss"):
            for cmd, args in [
                ("mute", {}),
                ("kick", {}),
                ("ban", {"reason": "coup"}),
            ]:
                error = await moderator.request(command(cmd, user=name, **args))
                assert (error["code"], error["message"]) == (
                    "forbidden",
                    "moderators cannot act on admins",
                ), (name, cmd)
        assert (await post(moderator, "/ban root 1d coup"))["code"] == "forbidden"
        admin, welcome = await connect(r, root)
        assert welcome["user"]["role"] == "admin"
        ack = await admin.request(command("mute", user="Mia", duration="30s"))
        assert ack["result"]["user"] == "Mia"
        ack = await admin.request(command("mute", user="Boss", duration="30s"))
        assert ack["type"] == "ack"  # an admin may act on another admin
        error = await admin.request(command("mute", user="Root"))
        assert error["code"] == "bad_request"  # not on oneself
        error = await admin.request(command("mute", user="Nobody"))
        assert error["code"] == "not_found"
        error = await admin.request(command("mute", user="Mia", duration="forever"))
        assert error["code"] == "bad_request"
        error = await admin.request(command("ban", user="Mia"))
        assert error["code"] == "bad_request"  # a ban needs a reason
        del boss


@pytest_twisted.ensureDeferred
async def test_delete_and_notice_are_messages_with_their_own_seq(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST, chat={"rooms": ["lobby", "games"]}) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        bob = await add_person(storage, "Bob")
        moderator, _ = await connect(r, mia)
        author, _ = await connect(r, bob)
        await join(author)
        await join(moderator)
        await join(moderator, "games")
        await expect(author, "presence.update")
        ack = await post(author, "something rude https://example.org @Mia")
        target = ack["message_id"]
        await expect(moderator, "chat.message")
        await expect(moderator, "mention", message_id=target)

        moderator.send_json(command("delete", message_id=target))
        # The moderator is in the room: the deletion comes, then the ack.
        deletions = [await expect(moderator, "chat.message")]
        ack = await expect(moderator, "ack")
        assert ack["result"] == {"message_id": target, "room": "lobby", "seq": 2}
        await expect(author, "chat.message", message_id=target)
        deletions.append(await expect(author, "chat.message"))
        for deletion in deletions:
            assert deletion["kind"] == "deletion"
            assert deletion["target"] == target
            assert deletion["seq"] == 2
            assert deletion["user"] == {"name": "Mia", "role": "moderator", "guest": False}
        history = await author.request({"type": "chat.history", "room": "lobby"})
        first, second = history["messages"]
        assert first["deleted"] is True
        assert (first["text"], first["mentions"], first["links"]) == ("", [], [])
        assert second["kind"] == "deletion"
        again = await moderator.request(command("delete", message_id=target))
        assert again["result"]["already_deleted"] is True
        error = await moderator.request(command("delete", message_id=second["message_id"]))
        assert error["code"] == "bad_request"
        error = await moderator.request(command("delete", message_id="nope"))
        assert error["code"] == "not_found"

        # Typed in a room, /notice goes to that room ...
        moderator.send_json(
            {"type": "chat.send", "id": "n", "room": "lobby", "text": "/notice Maintenance at noon"}
        )
        notice = await expect(moderator, "chat.message")
        assert (notice["room"], notice["seq"], notice["kind"]) == ("lobby", 3, "notice")
        assert notice["text"] == "Maintenance at noon"
        assert notice["user"]["name"] == "Mia"
        ack = await expect(moderator, "ack", id="n")
        assert ack["result"]["rooms"] == ["lobby"]
        # ... and admin.command without a room goes to every room.
        moderator.send_json(command("notice", text="Maintenance at noon"))
        for room, seq in (("lobby", 4), ("games", 1)):
            notice = await expect(moderator, "chat.message")
            assert (notice["room"], notice["seq"], notice["kind"]) == (room, seq, "notice")
        ack = await expect(moderator, "ack")
        assert ack["result"]["rooms"] == ["lobby", "games"]
        moderator.send_json(command("notice", text="games only", room="games"))
        await expect(moderator, "chat.message", room="games", seq=2)
        ack = await expect(moderator, "ack")
        assert ack["result"]["rooms"] == ["games"]
        error = await moderator.request(command("notice", text="x", room="nowhere"))
        assert error["code"] == "not_found"
        error = await moderator.request(command("notice", text="   "))
        assert error["code"] == "bad_request"
        actions = [i.action for i in await storage.list_records(UserInteraction, "Mia", 10)]
        assert actions == [
            "moderation.notice",
            "moderation.notice",
            "moderation.notice",
            "moderation.delete",
        ]


@pytest_twisted.ensureDeferred
async def test_a_guest_can_be_muted(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        mia = await add_person(storage, "Mia", role="moderator")
        guest = await add_person(storage, "Visitor9", guest=True)
        moderator, _ = await connect(r, mia)
        visitor, _ = await connect(r, guest)
        await join(visitor)
        ack = await moderator.request(command("mute", user="visitor9", duration="30s"))
        assert ack["result"]["user"] == "Visitor9"
        await expect(visitor, "system")
        assert (await post(visitor, "hi"))["code"] == "muted"


# -- expiry, on a task.Clock ------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    db = SQLiteStorage(tmp_path / "moderation.sqlite3", IReactorFromThreads(reactor))
    await db.open()
    yield db
    await db.close()


async def _services(storage: SQLiteStorage, clock: Clock, **limits: Any) -> ChatServices:
    config = configuration.load(None, {})
    config = attrs.evolve(
        config,
        limits=attrs.evolve(config.limits, **limits),
        xp=attrs.evolve(config.xp, chat_message=0),
    )
    chat = ChatServices.build(config, storage, clock, prepare)
    await chat.start()
    return chat


async def _greet(chat: ChatServices, token: str, room: str | None = "lobby") -> FakeConnection:
    connection = FakeConnection(session_token=token)
    await chat.hello(connection, {"type": "hello"})
    assert connection.greeted
    if room:
        await chat.room_join(connection, {"type": "room.join", "room": room})
    connection.take()
    return connection


async def _send(chat: ChatServices, connection: FakeConnection, text: str) -> dict[str, Any]:
    await chat.chat_send(connection, {"type": "chat.send", "id": 1, "room": "lobby", "text": text})
    return connection.of("ack")[-1]


@pytest_twisted.ensureDeferred
async def test_a_mute_expires(storage: SQLiteStorage) -> None:
    clock = Clock()
    chat = await _services(storage, clock)
    mia = await _greet(chat, await add_person(storage, "Mia", role="moderator"))
    bob = await _greet(chat, await add_person(storage, "Bob"))
    assert mia.identity is not None
    result = await chat.moderation.execute(mia.identity, "mute", {"user": "Bob", "duration": "30s"})
    assert result == {"user": "Bob", "until": 30.0}
    with pytest.raises(ClientError) as caught:
        await _send(chat, bob, "hello?")
    assert (caught.value.code, caught.value.extra) == ("muted", {"until": 30.0})
    clock.advance(29.9)
    with pytest.raises(ClientError):
        await _send(chat, bob, "now?")
    clock.advance(0.1)
    assert (await _send(chat, bob, "free"))["seq"] == 1


@pytest_twisted.ensureDeferred
async def test_a_timed_ban_expires(storage: SQLiteStorage) -> None:
    clock = Clock()
    chat = await _services(storage, clock)
    mia = await _greet(chat, await add_person(storage, "Mia", role="moderator"), room=None)
    await add_person(storage, "Bob")
    assert mia.identity is not None
    await chat.moderation.execute(
        mia.identity, "ban", {"user": "Bob", "duration": "2h", "reason": "x"}
    )
    token = await add_person(storage, "Bob")
    with pytest.raises(Banned):
        await identify(storage, clock, frozenset(), token)
    bob = FakeConnection(session_token=token)
    await chat.hello(bob, {"type": "hello", "id": 4})
    assert bob.sent == [
        {
            "type": "error",
            "code": "banned",
            "message": "you are banned",
            "reason": "x",
            "until": 7200.0,
            "id": 4,
        }
    ]
    assert bob.closed == (1008, "banned: x") and not bob.greeted
    clock.advance(7200)
    identity = await identify(storage, clock, frozenset(), token)
    assert identity is not None and identity.name == "Bob"


@pytest_twisted.ensureDeferred
async def test_auto_mute_after_strikes_then_it_expires(storage: SQLiteStorage) -> None:
    clock = Clock()
    chat = await _services(
        storage, clock, chat_burst=1, chat_per_second=1.0, abuse_strikes=3, abuse_mute_seconds=60.0
    )
    bob = await _greet(chat, await add_person(storage, "Bob"))
    await _send(chat, bob, "one")
    codes = []
    for _ in range(3):
        with pytest.raises(ClientError) as caught:
            await _send(chat, bob, "again")
        codes.append(caught.value.code)
    assert codes == ["rate_limited", "rate_limited", "muted"]
    assert bob.of("system")[-1]["message"] == "You are muted for 1 minute: posting too fast."
    clock.advance(59)
    with pytest.raises(ClientError) as caught:
        await _send(chat, bob, "again")
    assert caught.value.code == "muted"
    clock.advance(1)
    assert (await _send(chat, bob, "calm now"))["seq"] == 2
    records = await storage.list_records(UserInteraction, "system", 5)
    assert [(r.action, r.details["target"]) for r in records] == [("moderation.auto_mute", "Bob")]


@pytest_twisted.ensureDeferred
async def test_a_successful_post_resets_the_strikes(storage: SQLiteStorage) -> None:
    clock = Clock()
    chat = await _services(
        storage, clock, chat_burst=1, chat_per_second=1.0, abuse_strikes=2, abuse_mute_seconds=60.0
    )
    bob = await _greet(chat, await add_person(storage, "Bob"))
    for round in range(3):
        await _send(chat, bob, f"ok {round}")
        with pytest.raises(ClientError) as caught:
            await _send(chat, bob, "too soon")
        assert caught.value.code == "rate_limited"
        assert caught.value.extra["retry_after"] == pytest.approx(1.0)
        clock.advance(1)
    assert await chat.moderation.active_mute("Bob") is None
