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


class ClientError(Exception):
    """A request the server refuses; becomes ``{"type":"error","code":..}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Connection(Protocol):
    """What a handler may do with the connection that sent the message."""

    connection_id: str

    def send(self, type: str, **fields: Any) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


Handler = Callable[[Connection, Mapping[str, Any]], Awaitable[None]]


class Dispatcher:
    """Maps a message ``type`` to its handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, type: str, handler: Handler) -> None:
        if type in self._handlers:
            raise ValueError(f"handler for {type!r} already registered")
        self._handlers[type] = handler

    def types(self) -> list[str]:
        return sorted(self._handlers)

    async def dispatch(self, connection: Connection, message: Mapping[str, Any]) -> None:
        """Run the handler for ``message["type"]``; ``ClientError`` if none."""
        handler = self._handlers.get(message["type"])
        if handler is None:
            raise ClientError("bad_request", f"unknown message type {message['type']!r}")
        await handler(connection, message)
