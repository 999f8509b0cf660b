"""The WebSocket handlers of public chat, and the object that builds and holds
the chat services (``ChatServices``).

Handlers are thin: check the request's fields, call the hub, moderation or XP
service, answer. Registered types: ``hello`` (``bambid.handshake``),
``room.join``, ``room.leave``, ``chat.send``, ``chat.history``,
``chat.typing``, ``admin.command``.

``chat.send`` order of checks: a signed-in person (``unauthenticated``), a
known room (``not_found``); text starting with ``/`` is a command (see
``moderation``); then membership (``not_in_room``), no active mute (``muted``),
the per-person limit (``rate_limited``; ``limits.abuse_strikes`` refusals in a
row mute the person for ``limits.abuse_mute_seconds``), the text
(``bad_request``). Then: stored, ``ack`` to the sender, ``chat.message`` to the
room, ``mention`` to each mentioned person, XP to the author.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bambid.chat.hub import MAX_HISTORY_LIMIT, ChatHub, Prepare
from bambid.chat.links import LinkChecker
from bambid.chat.mentions import resolve_mentions
from bambid.chat.moderation import Moderation
from bambid.chat.text import TextCleaner, TextRejected, WordFilter
from bambid.config import Config, ConfigError, LimitsConfig
from bambid.handshake import HelloHandler
from bambid.identity import Identity
from bambid.models import ChatMessage, LinkRef, NewChatMessage, UserTagInteraction
from bambid.profiles.xp import XpService, XpTable
from bambid.ratelimit import KeyedLimiter
from bambid.storage import Storage
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

AUTO_MUTE_REASON = "posting too fast"


def _ack(connection: Connection, message: Mapping[str, Any], **fields: Any) -> None:
    if "id" in message:
        fields["id"] = message["id"]
    connection.send("ack", **fields)


def _identity(connection: Connection) -> Identity:
    if connection.identity is None:
        raise ClientError("unauthenticated", "sign in or join as a guest to do that")
    return connection.identity


class ChatServices:
    """The hub, moderation and XP service, and the WebSocket handlers over them."""

    _log = Logger()

    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: IReactorTime,
        hub: ChatHub,
        cleaner: TextCleaner,
        moderation: Moderation,
        xp: XpService,
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.hub = hub
        self.cleaner = cleaner
        self.moderation = moderation
        self.xp = xp
        self.admins = config.auth.admin_keys
        limits = config.limits
        self.chat_limiter = KeyedLimiter(clock, limits.chat_per_second, limits.chat_burst)
        self._strikes: dict[str, int] = {}
        self.hello = HelloHandler(clock, storage, self.admins, hub, xp)

    @classmethod
    def build(
        cls, config: Config, storage: Storage, clock: IReactorTime, prepare: Prepare
    ) -> ChatServices:
        """Everything from the configuration. ``ConfigError`` when the word
        filter or link denylist file cannot be read."""
        chat = config.chat
        try:
            word_filter = WordFilter.load(chat.filtered_words_file)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("chat.filtered_words_file", f"cannot read it: {e}") from None
        try:
            links = LinkChecker.load(chat.link_denylist_file)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("chat.link_denylist_file", f"cannot read it: {e}") from None
        admins = config.auth.admin_keys
        hub = ChatHub(storage, clock, chat, prepare, links, admins)
        cleaner = TextCleaner(word_filter, chat.max_message_length)
        moderation = Moderation(storage, clock, hub, cleaner, admins)
        xp = XpService(
            storage, clock, XpTable.from_config(config.xp), config.xp, hub.send_to_person
        )
        return cls(config, storage, clock, hub, cleaner, moderation, xp)

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("hello", self.hello, before_hello=True)
        dispatcher.register("room.join", self.room_join)
        dispatcher.register("room.leave", self.room_leave)
        dispatcher.register("chat.send", self.chat_send)
        dispatcher.register("chat.history", self.chat_history)
        dispatcher.register("chat.typing", self.chat_typing)
        dispatcher.register("admin.command", self.admin_command)

    def apply_limits(self, limits: LimitsConfig) -> None:
        """Use new ``[limits]`` (SIGHUP): the per-person chat buckets refill
        at the new rate from now on, capped at the new burst; strikes and
        automatic mutes use the new values at their next check."""
        self.config = attrs.evolve(self.config, limits=limits)
        self.chat_limiter.configure(limits.chat_per_second, limits.chat_burst)

    async def start(self) -> None:
        await self.hub.start()

    def stop(self) -> None:
        self.hub.stop()

    # -- rooms ---------------------------------------------------------------------

    async def room_join(self, connection: Connection, message: Mapping[str, Any]) -> None:
        room = self.hub.room(message.get("room"))
        await self.hub.join(connection, room.name, message.get("id"))

    async def room_leave(self, connection: Connection, message: Mapping[str, Any]) -> None:
        room = self.hub.room(message.get("room"))
        self.hub.leave(connection, room.name)
        _ack(connection, message, room=room.name)

    async def chat_history(self, connection: Connection, message: Mapping[str, Any]) -> None:
        room = self.hub.room(message.get("room"))
        before = message.get("before_seq")
        if before is not None and (
            not isinstance(before, int) or isinstance(before, bool) or before < 1
        ):
            raise ClientError("bad_request", "'before_seq' must be a positive integer")
        limit = message.get("limit", self.config.chat.history_limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ClientError("bad_request", "'limit' must be a positive integer")
        messages, has_more = await self.hub.history(
            room.name, before, min(limit, MAX_HISTORY_LIMIT)
        )
        reply: dict[str, Any] = {"room": room.name, "messages": messages, "has_more": has_more}
        if "id" in message:
            reply["id"] = message["id"]
        connection.send("chat.history", **reply)

    async def chat_typing(self, connection: Connection, message: Mapping[str, Any]) -> None:
        room = self.hub.room(message.get("room"))
        self.hub.typing(connection, room.name)

    # -- posting ----------------------------------------------------------------------

    async def chat_send(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        room = self.hub.room(message.get("room"))
        text = message.get("text")
        if not isinstance(text, str):
            raise ClientError("bad_request", "'text' must be a string")
        if text.lstrip().startswith("/"):
            result = await self.moderation.run_slash(identity, text, room.name)
            _ack(connection, message, result=result)
            return
        if not self.hub.is_member(connection, room.name):
            raise ClientError("not_in_room", f"join {room.name!r} first")
        mute = await self.moderation.active_mute(identity.name)
        if mute is not None:
            raise ClientError("muted", "you are muted", until=mute.expires_at)
        await self._limit(identity)
        try:
            cleaned = self.cleaner.clean(text)
        except TextRejected as e:
            raise ClientError("bad_request", str(e)) from None
        found = self.hub.links.find(cleaned)
        mentions = await resolve_mentions(self.storage, cleaned, self.hub.online_guest)
        stored = await self.hub.store(
            NewChatMessage(
                room=room.name,
                username=identity.name,
                text=cleaned,
                timestamp=self.clock.seconds(),
                message_type="user",
                guest=identity.guest,
                mentions=mentions,
                links=tuple(LinkRef(link.url, not link.flagged) for link in found),
            )
        )
        # Stored; now (and in this order, with no await in between) the
        # sender's ack, then everyone's chat.message.
        _ack(connection, message, message_id=stored.message_id, seq=stored.seq)
        self.hub.publish(stored, identity.role, found)
        try:
            await self._after_post(identity, stored)
        except Exception:
            # The message is acked and delivered; a failure here is ours to log.
            self._log.failure("after posting {message_id}", message_id=stored.message_id)

    async def _limit(self, identity: Identity) -> None:
        retry_after = self.chat_limiter.take(identity.key)
        if not retry_after:
            self._strikes.pop(identity.key, None)
            return
        strikes = self._strikes.get(identity.key, 0) + 1
        if strikes >= self.config.limits.abuse_strikes:
            self._strikes.pop(identity.key, None)
            sanction = await self.moderation.auto_mute(
                identity, self.config.limits.abuse_mute_seconds, AUTO_MUTE_REASON
            )
            raise ClientError("muted", "you are muted", until=sanction.expires_at)
        self._strikes[identity.key] = strikes
        raise ClientError("rate_limited", "slow down", retry_after=round(retry_after, 3))

    async def _after_post(self, identity: Identity, stored: ChatMessage) -> None:
        for mention in stored.mentions:
            self.hub.send_to_person(
                mention.username,
                "mention",
                room=stored.room,
                message_id=stored.message_id,
                seq=stored.seq,
                by=identity.name,
                text=stored.text,
            )
        for mention in stored.mentions:
            await self.storage.record(
                UserTagInteraction(
                    username=mention.username,
                    by=identity.name,
                    room=stored.room,
                    message_id=stored.message_id,
                    timestamp=stored.timestamp,
                )
            )
        await self.xp.award_chat_message(identity)

    # -- moderation -------------------------------------------------------------------

    async def admin_command(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        cmd = message.get("cmd")
        args = message.get("args", {})
        if not isinstance(cmd, str) or not isinstance(args, dict):
            raise ClientError("bad_request", "'cmd' must be a string and 'args' an object")
        result = await self.moderation.execute(identity, cmd, args)
        _ack(connection, message, result=result)
