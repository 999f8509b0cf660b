"""Routing of parsed client messages to handlers.

A handler is ``async def handler(connection, message) -> None``; it answers
through ``connection.send(...)`` and reports a client mistake by raising
``ClientError``. Any other exception becomes an ``internal`` error frame and a
logged traceback (``protocol.py`` does that). Handlers are registered by
``bambid.service`` so that this layer never imports the domain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from bambid.identity import Identity


class ClientError(Exception):
    """A request the server refuses; becomes ``{"type":"error","code":..}``
    with ``extra`` fields added (e.g. ``retry_after``, ``until``)."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class Connection(Protocol):
    """What a handler may do with the connection that sent the message.

    ``session_token`` is the raw session cookie sent with the handshake (None
    without one); ``identity`` is who the ``hello`` handler found it belongs to
    (None: anonymous); ``greeted`` is set once ``welcome`` was sent;
    ``peer_address`` is the client's IP address as seen by the server.
    """

    connection_id: str
    session_token: str | None
    peer_address: str
    identity: Identity | None
    greeted: bool

    def send(self, type: str, **fields: Any) -> None: ...

    def send_prepared(self, message: PreparedFrame) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class PreparedFrame(Protocol):
    """A frame serialised once and sent to many connections; made by
    ``BambidWebSocketFactory.prepare``. ``size`` is the payload length."""

    @property
    def size(self) -> int: ...


Handler = Callable[[Connection, Mapping[str, Any]], Awaitable[None]]


class Dispatcher:
    """Maps a message ``type`` to its handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._before_hello: set[str] = set()

    def register(
        self, type: str, handler: Handler, before_hello: bool = False, *, replace: bool = False
    ) -> None:
        """Route ``type`` to ``handler``. Only ``before_hello`` types are
        accepted before the connection has been greeted. A type can be
        registered once (``ValueError``), unless ``replace``: then a handler
        for it must already be registered (``ValueError`` otherwise), and the
        new one takes its place (e.g. a wrapper around it)."""
        if replace != (type in self._handlers):
            state = "already registered" if type in self._handlers else "not registered"
            raise ValueError(f"handler for {type!r} {state}")
        self._handlers[type] = handler
        self._before_hello.discard(type)
        if before_hello:
            self._before_hello.add(type)

    def handler(self, type: str) -> Handler | None:
        """The handler registered for ``type``, or None."""
        return self._handlers.get(type)

    def types(self) -> list[str]:
        return sorted(self._handlers)

    async def dispatch(self, connection: Connection, message: Mapping[str, Any]) -> None:
        """Run the handler for ``message["type"]``; ``ClientError`` if none."""
        handler = self._handlers.get(message["type"])
        if handler is None:
            raise ClientError("bad_request", f"unknown message type {message['type']!r}")
        if not connection.greeted and message["type"] not in self._before_hello:
            raise ClientError("hello_required", "send hello first")
        await handler(connection, message)
