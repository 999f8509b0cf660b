"""The hub on its own, with in-memory connections and a ``task.Clock``:
ordering across out-of-order arrivals, presence, typing throttle, people."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock

from bambid.chat.hub import GAP_TIMEOUT, ChatHub
from bambid.chat.links import LinkChecker
from bambid.config import ChatConfig
from bambid.identity import Identity
from bambid.models import ChatMessage
from bambid.storage.sqlite import SQLiteStorage
from bambid.ws.dispatch import ClientError
from tests.chatsupport import FakeConnection, prepare


@pytest_twisted.async_yield_fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    db = SQLiteStorage(tmp_path / "hub.sqlite3", IReactorFromThreads(reactor))
    await db.open()
    yield db
    await db.close()


async def _hub(storage: SQLiteStorage, clock: Clock, **chat: object) -> ChatHub:
    hub = ChatHub(storage, clock, ChatConfig(**chat), prepare, LinkChecker([]))  # type: ignore[arg-type]
    await hub.start()
    return hub


async def _member(hub: ChatHub, name: str | None, room: str = "lobby") -> FakeConnection:
    connection = FakeConnection(Identity(name) if name else None)
    assert hub.register(connection, connection.identity)
    await hub.join(connection, room)
    connection.take()
    return connection


def _message(seq: int) -> ChatMessage:
    return ChatMessage(f"id{seq}", "lobby", seq, "Ada", f"text {seq}", 1.0)


@pytest_twisted.ensureDeferred
async def test_messages_go_out_in_seq_order_even_if_stored_out_of_order(
    storage: SQLiteStorage,
) -> None:
    clock = Clock()
    hub = await _hub(storage, clock)
    reader = await _member(hub, None)
    for seq in (2, 3, 1, 5, 4):
        hub.publish(_message(seq), "user")
    assert [m["seq"] for m in reader.sent] == [1, 2, 3, 4, 5]
    # a sequence number that never comes is given up on after GAP_TIMEOUT
    hub.publish(_message(7), "user")
    hub.publish(_message(8), "user")
    assert [m["seq"] for m in reader.sent] == [1, 2, 3, 4, 5]
    clock.advance(GAP_TIMEOUT)
    assert [m["seq"] for m in reader.sent] == [1, 2, 3, 4, 5, 7, 8]
    hub.publish(_message(6), "user")  # too late, but not lost
    assert [m["seq"] for m in reader.sent] == [1, 2, 3, 4, 5, 7, 8, 6]
    assert not clock.getDelayedCalls()
    hub.stop()


@pytest_twisted.ensureDeferred
async def test_presence_counts_connections_per_person(storage: SQLiteStorage) -> None:
    hub = await _hub(storage, Clock())
    watcher = await _member(hub, "Watcher")
    tab1 = await _member(hub, "Ada")
    tab2 = await _member(hub, "ada")  # same person, another tab
    await _member(hub, None)  # a reader is nobody
    assert [u["name"] for u in hub.present_in("lobby")] == ["Ada", "Watcher"]
    assert watcher.of("presence.update") == [
        {"type": "presence.update", "room": "lobby", "joined": Identity("Ada").public()}
    ]
    hub.forget(tab1)
    assert len(watcher.of("presence.update")) == 1
    assert hub.leave(tab2, "lobby") is True
    assert hub.leave(tab2, "lobby") is False
    assert watcher.of("presence.update")[-1]["left"]["name"] == "Ada"
    assert [u["name"] for u in hub.present_in("lobby")] == ["Watcher"]
    assert hub.connections_of("ADA") == [tab2]
    hub.forget(tab2)
    assert hub.connections_of("Ada") == []


@pytest_twisted.ensureDeferred
async def test_typing_is_throttled_per_person_and_room(storage: SQLiteStorage) -> None:
    clock = Clock()
    hub = await _hub(storage, clock, rooms=["lobby", "games"], typing_interval=3.0)
    bob = await _member(hub, "Bob")
    await hub.join(bob, "games")
    bob.take()
    ada = await _member(hub, "Ada")
    ada_tab = await _member(hub, "Ada")
    await hub.join(ada, "games")
    bob.take()
    assert hub.typing(ada, "lobby") is True
    assert hub.typing(ada_tab, "lobby") is False  # same person
    assert hub.typing(ada, "games") is True  # another room
    clock.advance(2.9)
    assert hub.typing(ada, "lobby") is False
    clock.advance(0.1)
    assert hub.typing(ada, "lobby") is True
    assert [(m["type"], m["room"]) for m in bob.sent] == [
        ("chat.typing", "lobby"),
        ("chat.typing", "games"),
        ("chat.typing", "lobby"),
    ]
    assert ada.of("chat.typing") == [] and ada_tab.of("chat.typing") == []
    with pytest.raises(ClientError) as caught:
        hub.typing(ada_tab, "games")
    assert caught.value.code == "not_in_room"
    reader = await _member(hub, None)
    with pytest.raises(ClientError) as caught:
        hub.typing(reader, "lobby")
    assert caught.value.code == "unauthenticated"


@pytest_twisted.ensureDeferred
async def test_send_to_person_and_close_person(storage: SQLiteStorage) -> None:
    hub = await _hub(storage, Clock())
    tabs = [await _member(hub, "Ada") for _ in range(3)]
    other = await _member(hub, "Bob")
    for tab in tabs:
        tab.take()
    assert hub.send_to_person("ada", "system", message="hi", level="info") == 3
    assert all(t.sent == [{"type": "system", "message": "hi", "level": "info"}] for t in tabs)
    assert other.of("system") == []
    assert hub.close_person("Ada", 1008, "kicked") == 3
    assert all(t.closed == (1008, "kicked") for t in tabs)
    assert hub.send_to_person("Nobody", "system", message="x", level="info") == 0
