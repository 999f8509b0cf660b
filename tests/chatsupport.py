"""Helpers for the chat tests: a service with chosen settings on a real port,
people with sessions written straight into storage, signed-in WebSocket
clients, and in-memory connections for unit tests of the hub."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.task import deferLater

from bambid.auth.sessions import hash_token
from bambid.config import Config
from bambid.identity import Identity
from bambid.models import Account, Session
from bambid.service import BambidService
from bambid.storage import Storage
from tests import wsclient
from tests.conftest import Running, make_config

#: The effect settings of a person who never changed them (``settings.state``
#: sections; ``settings`` of ``GET /api/me/preferences``), written out here so
#: that a changed default fails the tests.
SETTINGS_DEFAULTS: dict[str, dict[str, Any]] = {
    "spirals": {
        "enabled": False,
        "spiral1Width": 5,
        "spiral2Width": 3,
        "spiral1Speed": 20,
        "spiral2Speed": 15,
    },
    "audio": {"volume": 0.8, "speed": 5, "loop": False, "background": "", "background_volume": 0.3},
    "binaural": {
        "preset": "alpha",
        "beat": 10,
        "carrier": 200,
        "volume": 0.5,
        "pattern": "",
        "total_minutes": 20,
        "transition_seconds": 30,
    },
}


@asynccontextmanager
async def chat_server(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    """bambid on 127.0.0.1:0 with ``sections`` overriding settings, e.g.
    ``limits={"chat_burst": 100}``; stopped on exit. Posting earns no XP
    unless ``xp`` says otherwise (``xp.update`` frames would interleave)."""
    config = make_config(tmp_path)
    sections = {"xp": {"chat_message": 0}, "voice": {"speak_replies": False}, **sections}
    for name, values in sections.items():
        config = attrs.evolve(config, **{name: attrs.evolve(getattr(config, name), **values)})
    async with serving(config, tmp_path) as running:
        yield running


@asynccontextmanager
async def serving(config: Config, base_dir: Path) -> AsyncIterator[Running]:
    """bambid with ``config`` started in this process (this reactor), its
    relative paths under ``base_dir``; stopped on exit."""
    service = BambidService(config, reactor, base_dir=base_dir)
    service.startService()
    await service.started
    try:
        yield Running(service)
    finally:
        await service.stopService()


async def add_person(storage: Storage, name: str, role: str = "user", guest: bool = False) -> str:
    """An account (unless ``guest``) and a fresh session for ``name``; the token."""
    now = float(reactor.seconds())
    if not guest and await storage.get_account(name) is None:
        await storage.create_account(Account(name, "not-a-real-hash", role, now))
    token = secrets.token_urlsafe(32)
    await storage.create_session(Session(hash_token(token), name, now, now + 3600, guest=guest))
    return token


async def connect(
    running: Running, token: str | None = None, **hello: Any
) -> tuple[wsclient.TestClientProtocol, dict[str, Any]]:
    """A client with the session cookie ``token`` (none: anonymous), greeted;
    returns it and the ``welcome`` (or the error answering ``hello``)."""
    client = await wsclient.connect(running.ws, cookie=token)
    answer = await client.request({"type": "hello", **hello})
    return client, answer


async def join(client: wsclient.TestClientProtocol, room: str = "lobby") -> dict[str, Any]:
    """``room.join`` and its three answers; returns the ``chat.history``."""
    ack = await client.request({"type": "room.join", "id": f"join-{room}", "room": room})
    assert ack == {"type": "ack", "id": f"join-{room}", "room": room}, ack
    history = await expect(client, "chat.history")
    await expect(client, "presence")
    return history


async def expect(client: wsclient.TestClientProtocol, type: str, **fields: Any) -> dict[str, Any]:
    """The next message, which must be of ``type`` with ``fields``."""
    message = await client.next()
    assert message["type"] == type, message
    for key, value in fields.items():
        assert message.get(key) == value, (key, message)
    return message


async def next_of(client: wsclient.TestClientProtocol, type: str) -> dict[str, Any]:
    """The next message of ``type``, skipping others."""
    while True:
        message = await client.next()
        if message["type"] == type:
            return message


async def post(
    client: wsclient.TestClientProtocol, text: str, room: str = "lobby", id: Any = None
) -> dict[str, Any]:
    """``chat.send``; returns the answer (``ack`` or ``error``)."""
    return await client.request(
        {"type": "chat.send", "id": id or text[:20], "room": room, "text": text}
    )


async def tick() -> None:
    """Let the reactor run once (no waiting on the clock)."""
    await deferLater(reactor, 0, lambda: None)


@attrs.frozen
class FakeFrame:
    """What the fake ``prepare`` makes: the frame as a dict."""

    frame: dict[str, Any]

    @property
    def size(self) -> int:
        return len(repr(self.frame))


def prepare(type: str, **fields: Any) -> FakeFrame:
    return FakeFrame({"type": type, **fields})


@attrs.define(eq=False)
class FakeConnection:
    """An in-memory ``bambid.ws.dispatch.Connection`` recording what it got."""

    identity: Identity | None = None
    session_token: str | None = None
    peer_address: str = "127.0.0.1"
    greeted: bool = False
    connection_id: str = attrs.Factory(lambda: secrets.token_hex(4))
    sent: list[dict[str, Any]] = attrs.Factory(list)
    closed: tuple[int, str] | None = None

    def send(self, type: str, **fields: Any) -> None:
        if self.closed is None:
            self.sent.append({"type": type, **fields})

    def send_prepared(self, message: Any) -> None:
        if self.closed is None:
            self.sent.append(message.frame)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of(self, type: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == type]

    def take(self) -> list[dict[str, Any]]:
        sent, self.sent = self.sent, []
        return sent
