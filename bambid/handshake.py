"""``hello`` → ``welcome``: the first exchange on every WebSocket connection.

``hello {protocol?, resume?}``: the protocol version is checked, the session
cookie read at the WebSocket handshake is turned into an ``Identity``
(``bambid.auth.sessions.identify``), and the answer is ``welcome {server,
version, protocol, server_time, connection_id, user, rooms, max_message_length,
levels}`` (``levels``: the level table, ``bambid.profiles.gates.level_table``,
the same for everyone, anonymous connections included). A banned person
gets ``error {code: "banned", reason, until}`` and the connection is closed
with 1008. After ``welcome`` the rooms named in ``resume`` are re-joined with
every missed message (docs/protocol.md, "Resume"). A client may say hello
again on the same connection. Once the identity is known, the ``admission``
checks may refuse the connection (maintenance mode, ``bambid.maintenance``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from bambid import __version__
from bambid.auth.sessions import Banned, identify
from bambid.chat.hub import ChatHub
from bambid.identity import Identity
from bambid.profiles.gates import level_table
from bambid.profiles.xp import XpService
from bambid.storage import Storage
from bambid.web.health import PROTOCOL_VERSION
from bambid.ws.dispatch import ClientError, Connection

SUPPORTED_PROTOCOLS = (PROTOCOL_VERSION,)
CLOSE_POLICY = 1008
MAX_RESUME_ROOMS = 32


def negotiate_protocol(message: Mapping[str, Any]) -> int:
    """The protocol version the client asks for (default: ours);
    ``bad_request`` / ``unsupported_protocol`` when we cannot speak it."""
    protocol = message.get("protocol", PROTOCOL_VERSION)
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        raise ClientError("bad_request", "'protocol' must be an integer")
    if protocol not in SUPPORTED_PROTOCOLS:
        raise ClientError(
            "unsupported_protocol",
            f"protocol {protocol} is not supported; this server speaks {SUPPORTED_PROTOCOLS}",
        )
    return protocol


def resume_request(message: Mapping[str, Any]) -> dict[str, int]:
    """``resume`` as ``{room: last seq seen}``; ``bad_request`` if malformed."""
    resume = message.get("resume")
    if resume is None:
        return {}
    if not isinstance(resume, dict) or len(resume) > MAX_RESUME_ROOMS:
        raise ClientError("bad_request", "'resume' must map room names to the last seq seen")
    for room, seq in resume.items():
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not room:
            raise ClientError("bad_request", "'resume' must map room names to the last seq seen")
    return dict(resume)


class HelloHandler:
    """Answers ``hello`` (see the module doc)."""

    def __init__(
        self,
        clock: IReactorTime,
        storage: Storage,
        admins: frozenset[str],
        hub: ChatHub,
        xp: XpService,
    ) -> None:
        self.clock = clock
        self.storage = storage
        self.admins = admins
        self.hub = hub
        self.xp = xp
        self.levels = level_table(xp.table)
        #: Checks run once the identity is known: each returns False after
        #: refusing the connection itself (maintenance mode answers and closes).
        self.admission: list[Callable[[Connection, Identity | None, Mapping[str, Any]], bool]] = []

    async def __call__(self, connection: Connection, message: Mapping[str, Any]) -> None:
        protocol = negotiate_protocol(message)
        resume = resume_request(message)
        try:
            identity = await identify(
                self.storage, self.clock, self.admins, connection.session_token
            )
        except Banned as banned:
            sanction = banned.sanction
            error: dict[str, Any] = {
                "code": "banned",
                "message": "you are banned",
                "reason": sanction.reason,
                "until": sanction.expires_at,
            }
            if "id" in message:
                error["id"] = message["id"]
            connection.send("error", **error)
            connection.close(CLOSE_POLICY, f"banned: {sanction.reason}")
            return
        if not all(admit(connection, identity, message) for admit in self.admission):
            return
        user: dict[str, Any] | None = None
        if identity is not None:
            progress = await self.xp.progress_of(identity)
            user = {**identity.public(), **progress.to_json()}
        if not self.hub.register(connection, identity):
            return  # closed while we looked the session up
        connection.identity = identity
        reply: dict[str, Any] = {
            "server": "bambid",
            "version": __version__,
            "protocol": protocol,
            "server_time": self.clock.seconds(),
            "connection_id": connection.connection_id,
            "user": user,
            "rooms": list(self.hub.rooms),
            "max_message_length": self.hub.config.max_message_length,
            "levels": self.levels,
        }
        if "id" in message:
            reply["id"] = message["id"]
        connection.greeted = True
        connection.send("welcome", **reply)
        for room, seq in resume.items():
            await self.hub.resume(connection, room, seq)
