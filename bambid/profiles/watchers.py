"""Live likes and loves over the WebSocket: ``profile.watch`` and
``profile.unwatch``, and the ``profile.reactions`` fan-out.

``profile.watch {name}`` → ``ack {name}`` then at once ``profile.reactions
{name, likes, loves}`` with the current counts; afterwards every change of
those counts (``ProfileService.react``) is sent to each connection watching,
anonymous readers included. A connection may watch what it may see: any
public profile, a private one only as its owner or an admin (anything else
is ``not_found``, as for an unknown name). At most ``MAX_WATCHES`` profiles per
connection (one more is ``bad_request``); watching again is a no-op that is
acknowledged. ``profile.unwatch {name}`` → ``ack {name}``, also for a profile
not watched. Watches end with the connection (``connection_closed``, a close
listener of the WebSocket factory).

A private profile's counts go only to the watchers who may see it now (the
connection's identity at the moment of the change), so a profile made private
after someone started watching stops being reported to them.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from bambid.chat.hub import Prepare
from bambid.models import username_key
from bambid.profiles.service import ProfileError, ProfileService, ReactionCounts
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

MAX_WATCHES = 16


class ProfileWatchers:
    """Who watches which profile (by username key), and the fan-out."""

    _log = Logger()

    def __init__(self, profiles: ProfileService, prepare: Prepare) -> None:
        self.profiles = profiles
        self.prepare = prepare
        self._watchers: dict[str, set[Connection]] = {}
        self._watching: dict[Connection, set[str]] = {}
        self._gone: weakref.WeakSet[Any] = weakref.WeakSet()

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("profile.watch", self.watch)
        dispatcher.register("profile.unwatch", self.unwatch)

    def watching(self, connection: Connection) -> frozenset[str]:
        """The profile keys ``connection`` watches."""
        return frozenset(self._watching.get(connection, ()))

    # -- handlers -------------------------------------------------------------------

    async def watch(self, connection: Connection, message: Mapping[str, Any]) -> None:
        name = _name(message)
        key = username_key(name)
        if key not in self._watching.get(connection, ()) and self._full(connection):
            raise ClientError(
                "bad_request",
                f"a connection watches at most {MAX_WATCHES} profiles; unwatch one first",
            )
        try:
            counts = await self.profiles.counts_for(connection.identity, name)
        except ProfileError as e:
            raise ClientError(e.code, e.message) from None
        if connection in self._gone:
            return  # closed while we looked the profile up
        self._watchers.setdefault(key, set()).add(connection)
        self._watching.setdefault(connection, set()).add(key)
        _ack(connection, message, name=counts.name)
        connection.send(
            "profile.reactions", name=counts.name, likes=counts.likes, loves=counts.loves
        )

    async def unwatch(self, connection: Connection, message: Mapping[str, Any]) -> None:
        name = _name(message)
        self._drop(connection, username_key(name))
        _ack(connection, message, name=name)

    # -- life cycle and fan-out ---------------------------------------------------------

    def connection_closed(self, connection: Connection) -> None:
        """Forget every watch of ``connection``. Idempotent."""
        self._gone.add(connection)
        for key in self._watching.pop(connection, set()):
            self._remove(connection, key)

    def publish(self, counts: ReactionCounts) -> int:
        """Send ``profile.reactions`` to each connection watching ``counts.name``
        that may see it; how many got it."""
        connections = [
            c
            for c in self._watchers.get(username_key(counts.name), ())
            if counts.may_see(c.identity)
        ]
        fields = {"name": counts.name, "likes": counts.likes, "loves": counts.loves}
        if len(connections) > 1:
            frame = self.prepare("profile.reactions", **fields)
            for connection in connections:
                connection.send_prepared(frame)
        elif connections:
            connections[0].send("profile.reactions", **fields)
        return len(connections)

    def _full(self, connection: Connection) -> bool:
        return len(self._watching.get(connection, ())) >= MAX_WATCHES

    def _drop(self, connection: Connection, key: str) -> None:
        keys = self._watching.get(connection)
        if keys is None or key not in keys:
            return
        keys.discard(key)
        if not keys:
            del self._watching[connection]
        self._remove(connection, key)

    def _remove(self, connection: Connection, key: str) -> None:
        watchers = self._watchers.get(key)
        if watchers is None:
            return
        watchers.discard(connection)
        if not watchers:
            del self._watchers[key]


def _name(message: Mapping[str, Any]) -> str:
    name = message.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ClientError("bad_request", "'name' must be a profile name")
    return name


def _ack(connection: Connection, message: Mapping[str, Any], **fields: Any) -> None:
    if "id" in message:
        fields["id"] = message["id"]
    connection.send("ack", **fields)
