"""Joining and resuming never lose or repeat a message.

Over a real port (reconnect with ``resume``), and against the hub directly
with the storage read held open while messages are published, which is the
window where a gap or a duplicate would appear."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from bambid.chat.hub import ChatHub
from bambid.chat.links import LinkChecker
from bambid.config import ChatConfig
from bambid.identity import Identity
from bambid.models import ChatMessage, NewChatMessage
from bambid.storage.sqlite import SQLiteStorage
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


async def _post_all(client: Any, texts: list[str]) -> list[int]:
    seqs = []
    for text in texts:
        ack = await post(client, text)
        assert ack["type"] == "ack", ack
        seqs.append(ack["seq"])
        await expect(client, "chat.message", seq=ack["seq"])
    return seqs


@pytest_twisted.ensureDeferred
async def test_resume_replays_what_was_missed_exactly_once_then_goes_live(
    tmp_path: Path,
) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        ada_token = await add_person(r.service.storage, "Ada")
        bob_token = await add_person(r.service.storage, "Bob")
        ada, _ = await connect(r, ada_token)
        bob, _ = await connect(r, bob_token)
        await join(ada)
        await join(bob)
        await expect(ada, "presence.update")
        await _post_all(ada, ["one", "two", "three"])
        seen = [(await expect(bob, "chat.message"))["seq"] for _ in range(3)]
        assert seen == [1, 2, 3]

        bob.sendClose()
        await bob.closed
        assert (await expect(ada, "presence.update"))["left"]["name"] == "Bob"
        await _post_all(ada, ["four", "five", "six", "seven"])

        bob, welcome = await connect(r, bob_token, resume={"lobby": 3})
        assert welcome["type"] == "welcome"
        replay = await expect(bob, "chat.history", room="lobby", resumed=True)
        assert [m["seq"] for m in replay["messages"]] == [4, 5, 6, 7]
        assert [m["text"] for m in replay["messages"]] == ["four", "five", "six", "seven"]
        presence = await expect(bob, "presence")
        assert {u["name"] for u in presence["users"]} == {"Ada", "Bob"}
        assert (await expect(ada, "presence.update"))["joined"]["name"] == "Bob"
        await _post_all(ada, ["eight"])
        await expect(bob, "chat.message", seq=8, text="eight")


@pytest_twisted.ensureDeferred
async def test_resume_while_others_keep_posting_has_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    async with chat_server(tmp_path, limits=FAST) as r:
        ada_token = await add_person(r.service.storage, "Ada")
        bob_token = await add_person(r.service.storage, "Bob")
        ada, _ = await connect(r, ada_token)
        await join(ada)
        await _post_all(ada, [f"old {i}" for i in range(10)])
        bob = await _client(r, bob_token)
        count = 50  # under the 64 requests a connection may have in flight
        # Ada pipelines a burst while Bob's resume is being served.
        for i in range(count):
            ada.send_json({"type": "chat.send", "room": "lobby", "text": f"new {i}"})
            if i == 5:
                bob.send_json({"type": "hello", "resume": {"lobby": 4}})
        seqs: list[int] = []
        while not seqs or seqs[-1] < 10 + count:
            message = await bob.next()
            if message["type"] == "chat.history":
                seqs += [m["seq"] for m in message["messages"]]
            elif message["type"] == "chat.message":
                seqs.append(message["seq"])
        assert seqs == list(range(5, 11 + count))


@pytest_twisted.ensureDeferred
async def test_missing_more_than_the_cap_resets_the_room(tmp_path: Path) -> None:
    async with chat_server(tmp_path, limits=FAST, chat={"resume_cap": 5}) as r:
        ada_token = await add_person(r.service.storage, "Ada")
        ada, _ = await connect(r, ada_token)
        await join(ada)
        await _post_all(ada, [f"m{i}" for i in range(8)])
        bob_token = await add_person(r.service.storage, "Bob")

        bob, welcome = await connect(r, bob_token, resume={"lobby": 2})  # missed 6 > 5
        assert welcome["type"] == "welcome"
        assert await bob.next() == {"type": "chat.reset", "room": "lobby"}
        # not joined: posting says so, and a fresh join works
        assert (await post(bob, "hi"))["code"] == "not_in_room"
        history = await join(bob)
        assert [m["seq"] for m in history["messages"]] == [1, 2, 3, 4, 5, 6, 7, 8]

        again, _ = await connect(r, bob_token, resume={"lobby": 3})  # missed exactly 5
        replay = await expect(again, "chat.history", resumed=True)
        assert [m["seq"] for m in replay["messages"]] == [4, 5, 6, 7, 8]

        ahead, _ = await connect(r, bob_token, resume={"lobby": 99, "nowhere": 1})
        assert await ahead.next() == {"type": "chat.reset", "room": "lobby"}
        assert await ahead.next() == {"type": "chat.reset", "room": "nowhere"}

        error = (await connect(r, bob_token, resume={"lobby": "x"}))[1]
        assert error["code"] == "bad_request"


async def _client(r: Any, token: str) -> Any:
    from tests import wsclient

    return await wsclient.connect(r.ws, cookie=token)


# -- the hub alone, with the read held open ----------------------------------------------


class _Gate:
    """Holds ``chat_history`` / ``chat_since`` reads until released."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage
        self.release: Deferred[None] = Deferred()
        self.waiting: Deferred[None] = Deferred()
        history, since = storage.chat_history, storage.chat_since

        def gated(read: Callable[..., Any]) -> Callable[..., Any]:
            async def run(*args: Any) -> Any:
                self.waiting.callback(None)
                await self.release
                return await read(*args)

            return run

        storage.chat_history = gated(history)  # type: ignore[method-assign]
        storage.chat_since = gated(since)  # type: ignore[method-assign]


@pytest_twisted.async_yield_fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    db = SQLiteStorage(tmp_path / "hub.sqlite3", IReactorFromThreads(reactor))
    await db.open()
    yield db
    await db.close()


async def _say(hub: ChatHub, text: str) -> ChatMessage:
    stored = await hub.store(NewChatMessage("lobby", "Ada", text, 1.0))
    hub.publish(stored, "user")
    return stored


def _seqs(connection: FakeConnection) -> list[int]:
    seqs = []
    for frame in connection.sent:
        if frame["type"] == "chat.history":
            seqs += [m["seq"] for m in frame["messages"]]
        elif frame["type"] == "chat.message":
            seqs.append(frame["seq"])
    return seqs


@pytest_twisted.ensureDeferred
async def test_join_while_messages_are_published_during_the_history_read(
    storage: SQLiteStorage,
) -> None:
    hub = ChatHub(storage, reactor, ChatConfig(history_limit=50), prepare, LinkChecker([]))
    await hub.start()
    for i in range(3):
        await _say(hub, f"before {i}")
    bob = FakeConnection(Identity("Bob"))
    hub.register(bob, bob.identity)
    gate = _Gate(storage)
    joining = Deferred.fromCoroutine(hub.join(bob, "lobby", 1))
    await gate.waiting  # subscribed; the read has not run yet
    for i in range(3):  # stored before the read: in history AND buffered
        await _say(hub, f"during {i}")
    gate.release.callback(None)
    # stored after the read was queued: only in the buffer
    late = Deferred.fromCoroutine(_say(hub, "late"))
    await joining
    await late
    await _say(hub, "live")
    assert [f["type"] for f in bob.sent[:3]] == ["ack", "chat.history", "presence"]
    assert _seqs(bob) == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest_twisted.ensureDeferred
async def test_resume_while_messages_are_published_during_the_read(
    storage: SQLiteStorage,
) -> None:
    hub = ChatHub(storage, reactor, ChatConfig(resume_cap=100), prepare, LinkChecker([]))
    await hub.start()
    for i in range(5):
        await _say(hub, f"before {i}")
    bob = FakeConnection(Identity("Bob"))
    hub.register(bob, bob.identity)
    gate = _Gate(storage)
    resuming = Deferred.fromCoroutine(hub.resume(bob, "lobby", 2))
    await gate.waiting
    said = [Deferred.fromCoroutine(_say(hub, f"during {i}")) for i in range(4)]
    gate.release.callback(None)
    await resuming
    await defer.gatherResults(said)
    assert bob.sent[0]["resumed"] is True
    assert _seqs(bob) == [3, 4, 5, 6, 7, 8, 9]


@pytest_twisted.ensureDeferred
async def test_a_connection_that_closes_during_the_read_is_forgotten(
    storage: SQLiteStorage,
) -> None:
    hub = ChatHub(storage, reactor, ChatConfig(), prepare, LinkChecker([]))
    await hub.start()
    ada, bob = FakeConnection(Identity("Ada")), FakeConnection(Identity("Bob"))
    hub.register(ada, ada.identity)
    await hub.join(ada, "lobby")
    hub.register(bob, bob.identity)
    gate = _Gate(storage)
    joining = Deferred.fromCoroutine(hub.join(bob, "lobby"))
    await gate.waiting
    hub.forget(bob)  # closed
    gate.release.callback(None)
    await joining
    assert [f["type"] for f in bob.sent] == ["ack"]
    assert hub.present_in("lobby") == [{"name": "Ada", "role": "user", "guest": False}]
    assert [f.get("joined", f.get("left")) for f in ada.of("presence.update")] == [
        {"name": "Bob", "role": "user", "guest": False}
    ] * 2
    assert hub.register(bob, bob.identity) is False  # a late hello does not revive it
    assert hub.connections_of("Bob") == []
