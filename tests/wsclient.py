"""A WebSocket test client over a real socket: queued JSON messages, close info."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint


class HandshakeFailed(Exception):
    """The server closed the connection before the WebSocket opened."""


class TestClientProtocol(WebSocketClientProtocol):
    factory: TestClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.messages: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()

    def onOpen(self) -> None:
        self.factory.ready.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.ready.called:
            self.factory.ready.errback(HandshakeFailed(f"{code} {reason}"))
        self.closed.callback((code, reason))

    def send_json(self, message: Any) -> None:
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        d = self.messages.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send_json(message)
        return await self.next()


class TestClientFactory(WebSocketClientFactory):
    protocol = TestClientProtocol  # type: ignore[assignment]

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ready: Deferred[TestClientProtocol] = Deferred()


async def connect(
    url: str,
    origin: str | None = None,
    timeout: float = 10,
    headers: dict[str, str] | None = None,
    cookie: str | None = None,
) -> TestClientProtocol:
    """Open ``url`` (ws://127.0.0.1:PORT/ws) with extra handshake ``headers``
    and, given ``cookie`` (a session token), ``Cookie: bambid_session=<cookie>``;
    fails with ``HandshakeFailed``."""
    parts = urlsplit(url)
    headers = dict(headers or {})
    if cookie is not None:
        headers["Cookie"] = f"bambid_session={cookie}"
    factory = TestClientFactory(url, origin=origin, headers=headers or None)
    factory.setProtocolOptions(autoPingInterval=0)
    assert parts.hostname and parts.port
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port)
    await endpoint.connect(factory)
    factory.ready.addTimeout(timeout, reactor)
    return await factory.ready
