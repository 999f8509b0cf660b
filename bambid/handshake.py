"""``hello`` → ``welcome``: the first exchange on every WebSocket connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from bambid import __version__
from bambid.web.health import PROTOCOL_VERSION
from bambid.ws.dispatch import ClientError, Connection

SUPPORTED_PROTOCOLS = (PROTOCOL_VERSION,)


class HelloHandler:
    """Answers ``hello {protocol}`` with ``welcome {server, version, protocol,
    server_time}``. A client may say hello again (after a reconnect)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    async def __call__(self, connection: Connection, message: Mapping[str, Any]) -> None:
        protocol = message.get("protocol", PROTOCOL_VERSION)
        if isinstance(protocol, bool) or not isinstance(protocol, int):
            raise ClientError("bad_request", "'protocol' must be an integer")
        if protocol not in SUPPORTED_PROTOCOLS:
            raise ClientError(
                "unsupported_protocol",
                f"protocol {protocol} is not supported; this server speaks {SUPPORTED_PROTOCOLS}",
            )
        reply: dict[str, Any] = {
            "server": "bambid",
            "version": __version__,
            "protocol": protocol,
            "server_time": self.clock.seconds(),
            "connection_id": connection.connection_id,
        }
        if "id" in message:
            reply["id"] = message["id"]
        connection.greeted = True
        connection.send("welcome", **reply)
