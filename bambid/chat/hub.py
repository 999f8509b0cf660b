"""Rooms, membership, presence, history and live fan-out of public chat.

The hub knows every greeted connection (``register`` at ``hello``, ``forget``
when it closes: the service adds ``forget`` to the WebSocket factory's
``close_listeners``), which rooms each connection has joined, and who is
present in each room. It never imports transport classes: connections are
``bambid.ws.dispatch.Connection`` objects and broadcasts are built once with
the injected ``prepare(type, **fields)`` and sent with ``send_prepared``.

Guarantees (docs/protocol.md, "Public chat"):

- ``publish`` sends the ``chat.message`` of each room in ``seq`` order. A
  message that arrives ahead of a missing ``seq`` is held until the gap is
  filled, or for at most ``GAP_TIMEOUT`` seconds (a backend that consumed a
  sequence number without storing a message). SQLite never leaves gaps.
- ``join`` and ``resume`` never lose or repeat a message: the connection is
  subscribed first, with live messages buffered, then history is read and
  sent, then the buffered messages not already sent (and newer than the
  history's first ``seq``) are flushed, in order, and the member goes live.
- A person is present in a room while any of their connections is in it:
  ``presence.update {joined}`` when the first one joins, ``{left}`` when the
  last one leaves or closes. Anonymous connections read but are never shown.
- ``after_publish`` listeners (the trigger engine) are called with each
  message given to ``publish``, right after its ``chat.message`` went out (or
  was queued behind a missing ``seq``); one that raises is logged.
- ``after_register`` listeners are called with ``(connection, identity)``
  once a connection is recorded as greeted (not again for a repeated
  ``hello`` as the same person), ``after_forget`` listeners with the same
  pair once a recorded connection is forgotten (it closed, or was greeted
  again as someone else); identity None is an anonymous connection. The usage
  stats (``bambid.profiles.usage``) follow people's visits this way; a
  listener that raises is logged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from bambid.auth.sessions import role_for
from bambid.chat.links import FoundLink, LinkChecker
from bambid.config import ChatConfig
from bambid.identity import Identity
from bambid.models import ChatMessage, NewChatMessage, username_key
from bambid.storage import Storage
from bambid.ws.dispatch import ClientError, Connection, PreparedFrame

#: ``prepare(type, **fields)``: a frame serialised once for many connections.
Prepare = Callable[..., PreparedFrame]

GAP_TIMEOUT = 2.0
ROLE_TTL = 60.0
MAX_CACHED_ROLES = 10_000
MAX_HISTORY_LIMIT = 100

_KINDS = {"user": "message", "notice": "notice", "deletion": "deletion"}


@attrs.define(eq=False)
class _Member:
    """One connection in one room. ``buffer`` is not None while the member is
    being synchronised: live messages are kept there as ``(seq, frame)``."""

    connection: Connection
    identity: Identity | None
    buffer: list[tuple[int, PreparedFrame]] | None = None


@attrs.define(eq=False)
class Room:
    name: str
    members: dict[Connection, _Member] = attrs.Factory(dict)
    #: person key -> (identity, how many of their connections are in the room)
    present: dict[str, tuple[Identity, int]] = attrs.Factory(dict)
    #: highest seq whose chat.message has gone out (every lower one has too)
    published: int = 0
    pending: dict[int, PreparedFrame] = attrs.Factory(dict)
    gap_timer: IDelayedCall | None = None


class ChatHub:
    """The rooms of ``config.rooms`` and who is in them (see the module doc)."""

    _log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        config: ChatConfig,
        prepare: Prepare,
        links: LinkChecker,
        admins: frozenset[str] = frozenset(),
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.config = config
        self.prepare = prepare
        self.links = links
        self.admins = admins
        self.rooms: dict[str, Room] = {name: Room(name) for name in config.rooms}
        self._connections: dict[Connection, Identity | None] = {}
        self._joined: dict[Connection, set[str]] = {}
        self._people: dict[str, set[Connection]] = {}
        self._gone: weakref.WeakSet[Any] = weakref.WeakSet()
        self._typing: dict[tuple[str, str], float] = {}
        self._next_typing_sweep = 0.0
        self._roles: dict[str, tuple[str, float]] = {}
        #: Called with each published message (see the module doc).
        self.after_publish: list[Callable[[ChatMessage], object]] = []
        #: Called with ``(connection, identity)`` as connections are greeted
        #: and forgotten (see the module doc).
        self.after_register: list[Callable[[Connection, Identity | None], object]] = []
        self.after_forget: list[Callable[[Connection, Identity | None], object]] = []

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Learn each room's last ``seq`` (the point live messages continue from)."""
        for room in self.rooms.values():
            room.published = await self.storage.last_seq(room.name)

    def stop(self) -> None:
        for room in self.rooms.values():
            if room.gap_timer is not None and room.gap_timer.active():
                room.gap_timer.cancel()
            room.gap_timer = None

    # -- connections and people -----------------------------------------------------

    def register(self, connection: Connection, identity: Identity | None) -> bool:
        """Record a greeted connection and who it belongs to (None: anonymous).
        A connection greeted again as someone else leaves its rooms first.
        False (and nothing recorded) if the connection has already closed."""
        if connection in self._gone:
            return False
        if connection in self._connections:
            previous = self._connections[connection]
            if previous == identity:
                return True
            self.forget(connection)
            self._gone.discard(connection)
        self._connections[connection] = identity
        self._joined[connection] = set()
        if identity is not None:
            self._people.setdefault(identity.key, set()).add(connection)
            self._remember_role(identity.name, identity.role)
        self._notify(self.after_register, connection, identity)
        return True

    def forget(self, connection: Connection) -> None:
        """The connection has closed: leave its rooms, forget it. Idempotent."""
        self._gone.add(connection)
        for name in list(self._joined.get(connection, ())):
            self.leave(connection, name)
        self._joined.pop(connection, None)
        registered = connection in self._connections
        identity = self._connections.pop(connection, None)
        if identity is not None:
            others = self._people.get(identity.key)
            if others is not None:
                others.discard(connection)
                if not others:
                    del self._people[identity.key]
        if registered:
            self._notify(self.after_forget, connection, identity)

    def _notify(
        self,
        listeners: list[Callable[[Connection, Identity | None], object]],
        connection: Connection,
        identity: Identity | None,
    ) -> None:
        for listener in listeners:
            try:
                listener(connection, identity)
            except Exception:
                self._log.failure("connection listener {listener}", listener=repr(listener))

    def identity_of(self, connection: Connection) -> Identity | None:
        return self._connections.get(connection)

    def connections_of(self, username: str) -> list[Connection]:
        """Every open, greeted connection of a person (all their tabs)."""
        return list(self._people.get(username_key(username), ()))

    def online_guest(self, username: str) -> str | None:
        """The name of the guest called ``username`` if they are connected now."""
        for connection in self._people.get(username_key(username), ()):
            identity = self._connections.get(connection)
            if identity is not None and identity.guest:
                return identity.name
        return None

    def send_to_person(self, username: str, type: str, **fields: Any) -> int:
        """Send ``{"type": type, **fields}`` to every connection of a person;
        returns how many got it."""
        connections = self.connections_of(username)
        if len(connections) > 1:
            frame = self.prepare(type, **fields)
            for connection in connections:
                connection.send_prepared(frame)
        elif connections:
            connections[0].send(type, **fields)
        return len(connections)

    def close_person(self, username: str, code: int, reason: str) -> int:
        """Close every connection of a person; returns how many."""
        connections = self.connections_of(username)
        for connection in connections:
            connection.close(code, reason)
        return len(connections)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- rooms --------------------------------------------------------------------------

    def room(self, name: Any) -> Room:
        """The room called ``name``; ``bad_request`` / ``not_found`` otherwise."""
        if not isinstance(name, str) or not name:
            raise ClientError("bad_request", "'room' must be a room name")
        room = self.rooms.get(name)
        if room is None:
            raise ClientError("not_found", f"there is no room {name!r}")
        return room

    def is_member(self, connection: Connection, room: str) -> bool:
        return room in self._joined.get(connection, ())

    def rooms_of(self, connection: Connection) -> set[str]:
        return set(self._joined.get(connection, ()))

    async def join(self, connection: Connection, room_name: str, correlation: Any = None) -> None:
        """``room.join``: ``ack``, the latest ``chat.history``, ``presence``,
        then live messages. Joining a room again re-sends all three."""
        room = self.room(room_name)
        member = self._subscribe(room, connection)
        ack: dict[str, Any] = {"room": room.name}
        if correlation is not None:
            ack["id"] = correlation
        connection.send("ack", **ack)
        if member is None:
            return
        limit = self.config.history_limit
        rows = await self.storage.chat_history(room.name, None, limit + 1)
        has_more = len(rows) > limit
        rows = [m for m in rows[-limit:] if m.seq <= room.published]
        messages = await self.payloads(rows)
        if not self._still(room, member):
            return
        connection.send("chat.history", room=room.name, messages=messages, has_more=has_more)
        self._go_live(room, member, rows, floor=rows[0].seq if rows else 0)

    async def resume(self, connection: Connection, room_name: str, after_seq: int) -> None:
        """Re-join after a reconnect: every message after ``after_seq`` in one
        ``chat.history {resumed: true}``, then ``presence``, then live. More
        than ``resume_cap`` missed (or a ``seq`` the room never reached):
        ``chat.reset {room}`` and the room is not joined."""
        room = self.rooms.get(room_name)
        cap = self.config.resume_cap
        if room is None or after_seq > room.published or room.published - after_seq > cap:
            connection.send("chat.reset", room=room_name)
            return
        member = self._subscribe(room, connection)
        if member is None:
            return
        rows = await self.storage.chat_since(room.name, after_seq, cap + 1)
        if len(rows) > cap:
            if self._still(room, member):
                self.leave(connection, room.name)
                connection.send("chat.reset", room=room.name)
            return
        rows = [m for m in rows if m.seq <= room.published]
        messages = await self.payloads(rows)
        if not self._still(room, member):
            return
        connection.send(
            "chat.history", room=room.name, messages=messages, has_more=False, resumed=True
        )
        self._go_live(room, member, rows, floor=after_seq)

    def leave(self, connection: Connection, room_name: str) -> bool:
        """Leave a room; False if the connection was not in it."""
        room = self.rooms.get(room_name)
        if room is None:
            return False
        member = room.members.pop(connection, None)
        joined = self._joined.get(connection)
        if joined is not None:
            joined.discard(room_name)
        if member is None:
            return False
        identity = member.identity
        if identity is not None:
            who, count = room.present[identity.key]
            if count > 1:
                room.present[identity.key] = (who, count - 1)
            else:
                del room.present[identity.key]
                self._to_room(
                    room, self.prepare("presence.update", room=room.name, left=who.public())
                )
        return True

    def _subscribe(self, room: Room, connection: Connection) -> _Member | None:
        if connection not in self._connections:
            return None  # closed meanwhile
        identity = self._connections[connection]
        member = room.members.get(connection)
        if member is not None:
            member.buffer = []  # re-join: synchronise again
            return member
        member = room.members[connection] = _Member(connection, identity, buffer=[])
        self._joined[connection].add(room.name)
        if identity is not None:
            entry = room.present.get(identity.key)
            if entry is None:
                room.present[identity.key] = (identity, 1)
                frame = self.prepare("presence.update", room=room.name, joined=identity.public())
                self._to_room(room, frame, skip=connection)
            else:
                room.present[identity.key] = (entry[0], entry[1] + 1)
        return member

    def _still(self, room: Room, member: _Member) -> bool:
        return room.members.get(member.connection) is member

    def _go_live(
        self, room: Room, member: _Member, sent: Sequence[ChatMessage], floor: int
    ) -> None:
        member.connection.send("presence", room=room.name, users=self.present_in(room.name))
        seen = {m.seq for m in sent}
        buffered, member.buffer = member.buffer or [], None
        for seq, frame in buffered:
            if seq > floor and seq not in seen:
                member.connection.send_prepared(frame)

    def present_in(self, room_name: str) -> list[dict[str, object]]:
        """Who is in the room, as ``{name, role, guest}``, sorted by name."""
        room = self.rooms[room_name]
        people = sorted(room.present.values(), key=lambda entry: entry[0].key)
        return [identity.public() for identity, _ in people]

    # -- history ----------------------------------------------------------------------------

    async def history(
        self, room_name: str, before_seq: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` messages before ``before_seq`` (the latest when
        None), oldest first, as protocol payloads; and whether older exist."""
        room = self.room(room_name)
        limit = max(1, min(limit, MAX_HISTORY_LIMIT))
        rows = await self.storage.chat_history(room.name, before_seq, limit + 1)
        has_more = len(rows) > limit
        return await self.payloads(rows[-limit:]), has_more

    async def payloads(self, messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
        """Stored messages as ``chat.message`` payloads (without ``type``)."""
        messages = list(messages)
        roles: dict[str, str] = {}
        for message in messages:
            key = username_key(message.username)
            if key not in roles:
                roles[key] = await self._role_of(message.username, message.guest)
        return [self.payload(m, roles[username_key(m.username)]) for m in messages]

    def payload(
        self, message: ChatMessage, role: str, found: Sequence[FoundLink] | None = None
    ) -> dict[str, Any]:
        """One message in protocol form. ``found`` (the links as detected when
        posting) saves re-checking each link for its reason."""
        links = []
        for index, link in enumerate(message.links):
            reason = None
            if not link.is_clean:
                if found is not None and index < len(found):
                    reason = found[index].reason
                reason = reason or self.links.reason(link.url) or "denylisted"
            links.append(
                {
                    "url": link.url,
                    "href": f"/go?m={message.message_id}&i={index}",
                    "flagged": not link.is_clean,
                    "reason": reason,
                }
            )
        payload: dict[str, Any] = {
            "room": message.room,
            "seq": message.seq,
            "message_id": message.message_id,
            "kind": _KINDS.get(message.message_type, "message"),
            "user": {"name": message.username, "role": role, "guest": message.guest},
            "text": message.text,
            "ts": message.timestamp,
            "mentions": [m.username for m in message.mentions],
            "links": links,
            "deleted": message.deleted,
        }
        if message.message_type == "deletion":
            payload["target"] = message.reply_to
        return payload

    async def _role_of(self, username: str, guest: bool) -> str:
        if guest:
            return "user"
        key = username_key(username)
        now = self.clock.seconds()
        cached = self._roles.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        account = await self.storage.get_account(username)
        role = role_for(account.username, account.role, self.admins) if account else "user"
        self._remember_role(username, role)
        return role

    def _remember_role(self, username: str, role: str) -> None:
        if len(self._roles) >= MAX_CACHED_ROLES:
            self._roles.clear()
        self._roles[username_key(username)] = (role, self.clock.seconds() + ROLE_TTL)

    # -- posting and fan-out -------------------------------------------------------------------

    async def store(self, message: NewChatMessage) -> ChatMessage:
        """Store a message (it gets its ``seq``); tell no one yet."""
        self.room(message.room)
        return await self.storage.append_chat_message(message)

    def publish(
        self, message: ChatMessage, role: str, found: Sequence[FoundLink] | None = None
    ) -> None:
        """Send ``chat.message`` to every connection in the room, in ``seq``
        order across calls (see the module doc). ``role`` is the author's."""
        room = self.rooms[message.room]
        frame = self.prepare("chat.message", **self.payload(message, role, found))
        if message.seq <= room.published:
            # Late: its gap was given up on. Better out of order than lost.
            self._deliver(room, message.seq, frame)
            self._published(message)
            return
        room.pending[message.seq] = frame
        self._drain(room)
        self._published(message)

    def _published(self, message: ChatMessage) -> None:
        for listener in self.after_publish:
            try:
                listener(message)
            except Exception:
                self._log.failure("after publishing {id}", id=message.message_id)

    def _drain(self, room: Room) -> None:
        while room.published + 1 in room.pending:
            room.published += 1
            self._deliver(room, room.published, room.pending.pop(room.published))
        if room.pending:
            if room.gap_timer is None or not room.gap_timer.active():
                room.gap_timer = self.clock.callLater(GAP_TIMEOUT, self._skip_gap, room)
        elif room.gap_timer is not None:
            if room.gap_timer.active():
                room.gap_timer.cancel()
            room.gap_timer = None

    def _skip_gap(self, room: Room) -> None:
        room.gap_timer = None
        if room.pending:
            self._log.warn(
                "room {room}: gave up waiting for seq {seq}", room=room.name, seq=room.published + 1
            )
            room.published = min(room.pending) - 1
            self._drain(room)

    def _deliver(self, room: Room, seq: int, frame: PreparedFrame) -> None:
        for member in list(room.members.values()):
            if member.buffer is not None:
                member.buffer.append((seq, frame))
            else:
                member.connection.send_prepared(frame)

    def _to_room(
        self, room: Room, frame: PreparedFrame, skip: Connection | None = None, skip_key: str = ""
    ) -> None:
        """A non-message event to the live members (buffering ones get a fresh
        snapshot when they go live)."""
        for member in list(room.members.values()):
            if member.buffer is not None or member.connection is skip:
                continue
            if skip_key and member.identity is not None and member.identity.key == skip_key:
                continue
            member.connection.send_prepared(frame)

    # -- typing -------------------------------------------------------------------------------

    def typing(self, connection: Connection, room_name: str) -> bool:
        """``chat.typing``: tell the others in the room, at most once per
        ``typing_interval`` per person and room. True if it was sent."""
        room = self.room(room_name)
        identity = self._connections.get(connection)
        if identity is None:
            raise ClientError("unauthenticated", "sign in to chat")
        if not self.is_member(connection, room.name):
            raise ClientError("not_in_room", f"join {room.name!r} first")
        now = self.clock.seconds()
        self._sweep_typing(now)
        key = (identity.key, room.name)
        last = self._typing.get(key)
        if last is not None and now - last < self.config.typing_interval:
            return False
        self._typing[key] = now
        frame = self.prepare("chat.typing", room=room.name, user=identity.public())
        self._to_room(room, frame, skip_key=identity.key)
        return True

    def _sweep_typing(self, now: float) -> None:
        if now < self._next_typing_sweep:
            return
        interval = max(self.config.typing_interval, 1.0)
        self._next_typing_sweep = now + interval
        for key in [k for k, t in self._typing.items() if now - t >= interval]:
            del self._typing[key]
