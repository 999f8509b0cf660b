"""Moderation: ``admin.command``, the slash commands of chat, and auto-mutes.

``Moderation.execute(actor, cmd, args)`` is the one entry point, shared by the
WebSocket ``admin.command``, the slash commands typed in chat (``run_slash``)
and the admin web page. It returns the ``result`` of the ``ack`` and raises
``ClientError`` for every refusal:

- ``forbidden``: the actor is not a moderator or admin, or a moderator acts on
  an admin; ``bad_request``: missing or malformed arguments, an unknown
  command, acting on oneself; ``not_found``: no such person, message or room.

Commands (docs/protocol.md, "Moderation"): ``delete``, ``mute``, ``unmute``,
``kick``, ``ban``, ``unban``, ``notice``; ``help`` is open to everyone.
``reload-triggers`` (admins only) reloads the trigger catalog through the
``reload_triggers`` hook the service sets (``bambid.triggers.handlers``):
``{version, triggers}``, or ``bad_request`` naming the broken entry.
Durations are ``<n>s|m|h|d`` (``30s``, ``10m``, ``2h``, ``7d``), at most a year.
Every action that changed something is recorded as a ``UserInteraction``
(``username`` = the actor, ``action`` = ``moderation.<cmd>``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from bambid.auth.sessions import role_for
from bambid.chat.hub import ChatHub
from bambid.chat.text import TextCleaner, TextRejected
from bambid.identity import Identity
from bambid.models import LinkRef, NewChatMessage, Sanction, UserInteraction, username_key
from bambid.storage import Storage
from bambid.ws.dispatch import ClientError

CLOSE_POLICY = 1008
DEFAULT_MUTE = 600.0
MAX_DURATION = 365 * 86400.0
MAX_REASON = 500
SYSTEM = "system"

_DURATION = re.compile(r"^([0-9]{1,7})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_NAMES = {"s": "second", "m": "minute", "h": "hour", "d": "day"}

USAGE = {
    "help": "/help",
    "delete": "/delete MESSAGE_ID",
    "mute": "/mute NAME [DURATION] [REASON]",
    "unmute": "/unmute NAME",
    "kick": "/kick NAME [REASON]",
    "ban": "/ban NAME [DURATION] REASON",
    "unban": "/unban NAME",
    "notice": "/notice TEXT",
    "reload-triggers": "/reload-triggers",
}
#: Commands only admins may run (and see in ``help``).
ADMIN_ONLY = frozenset({"reload-triggers"})


def is_duration(text: str) -> bool:
    return bool(_DURATION.match(text))


def parse_duration(text: Any) -> float:
    """Seconds for ``30s``, ``10m``, ``2h``, ``7d``; ``bad_request`` otherwise."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ClientError("bad_request", "a duration looks like 30s, 10m, 2h or 7d")
    seconds = float(int(match.group(1)) * _UNITS[match.group(2)])
    if not 0 < seconds <= MAX_DURATION:
        raise ClientError("bad_request", "a duration must be more than 0 and at most 365d")
    return seconds


def describe_duration(seconds: float) -> str:
    """``600`` → ``10 minutes`` (the largest whole unit)."""
    for unit in "dhms":
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0 or unit == "s":
            count = int(seconds // size)
            name = _UNIT_NAMES[unit]
            return f"{count} {name}" + ("" if count == 1 else "s")
    raise AssertionError("unreachable")


@attrs.frozen
class Target:
    """The person a command acts on."""

    name: str
    role: str
    guest: bool


def parse_slash(text: str) -> tuple[str, dict[str, Any]]:
    """``/mute Bo 10m be nice`` → ``("mute", {"user": "Bo", "duration": "10m",
    "reason": "be nice"})``. ``bad_request`` for an unknown command or
    missing arguments (with the command's usage)."""
    body = text.strip()[1:]
    name, _, rest = body.partition(" ")
    cmd = name.strip().lower()
    rest = rest.strip()
    if cmd not in USAGE:
        raise ClientError("bad_request", f"unknown command /{cmd}; try /help")
    args: dict[str, Any] = {}
    words = rest.split(None, 1)
    first = words[0] if words else ""
    tail = words[1] if len(words) > 1 else ""
    if cmd in ("mute", "ban", "kick", "unmute", "unban"):
        if not first:
            raise ClientError("bad_request", f"usage: {USAGE[cmd]}")
        args["user"] = first
        if cmd in ("mute", "ban"):
            duration, _, reason = tail.partition(" ")
            if duration and is_duration(duration):
                args["duration"] = duration
                tail = reason.strip()
        if cmd in ("mute", "ban", "kick") and tail:
            args["reason"] = tail
    elif cmd == "delete":
        if not first or tail:
            raise ClientError("bad_request", f"usage: {USAGE[cmd]}")
        args["message_id"] = first
    elif cmd == "notice":
        if not rest:
            raise ClientError("bad_request", f"usage: {USAGE[cmd]}")
        args["text"] = rest
    return cmd, args


def _string(args: Mapping[str, Any], key: str, required: bool = True, limit: int = 64) -> str:
    value = args.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ClientError("bad_request", f"'{key}' must be a non-empty string")
    if len(value) > limit:
        raise ClientError("bad_request", f"'{key}' is longer than {limit} characters")
    return value.strip()


class Moderation:
    """Runs moderation commands (see the module doc)."""

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        hub: ChatHub,
        cleaner: TextCleaner,
        admins: frozenset[str] = frozenset(),
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.hub = hub
        self.cleaner = cleaner
        self.admins = admins
        #: Reloads the trigger catalog: ``{version, triggers}`` (set by the service).
        self.reload_triggers: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self._commands: dict[
            str, Callable[[Identity, Mapping[str, Any]], Awaitable[dict[str, Any]]]
        ] = {
            "delete": self._delete,
            "mute": self._mute,
            "unmute": self._unmute,
            "kick": self._kick,
            "ban": self._ban,
            "unban": self._unban,
            "notice": self._notice,
            "reload-triggers": self._reload_triggers,
        }

    async def execute(self, actor: Identity, cmd: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``cmd`` with ``args`` as ``actor``; the result for the ``ack``."""
        if not isinstance(cmd, str) or not isinstance(args, Mapping):
            raise ClientError("bad_request", "'cmd' must be a string and 'args' an object")
        if cmd == "help":
            return self.help(actor)
        command = self._commands.get(cmd)
        if command is None:
            raise ClientError("bad_request", f"unknown command {cmd!r}")
        actor = await self._as_stored_now(actor)
        if not actor.is_moderator:
            raise ClientError("forbidden", "only moderators and admins may do that")
        if cmd in ADMIN_ONLY and not actor.is_admin:
            raise ClientError("forbidden", "only admins may do that")
        return await command(actor, args)

    async def _as_stored_now(self, actor: Identity) -> Identity:
        """``actor`` with the role storage holds now: a connection keeps the
        identity of its ``hello``, and a moderator demoted since must not keep
        moderating from an open tab."""
        if actor.guest:
            return actor
        account = await self.storage.get_account(actor.name)
        if account is None:
            return attrs.evolve(actor, role="user")
        return attrs.evolve(actor, role=role_for(account.username, account.role, self.admins))

    async def run_slash(
        self, actor: Identity, text: str, room: str | None = None
    ) -> dict[str, Any]:
        """A slash command typed in chat (``/mute Bo 10m``), run as ``execute``.
        Non-moderators get ``forbidden`` for anything but ``/help``. A
        ``/notice`` goes to ``room``, the room it was typed in."""
        cmd, args = parse_slash(text)
        if cmd == "notice" and room is not None:
            args["room"] = room
        return await self.execute(actor, cmd, args)

    def help(self, actor: Identity) -> dict[str, Any]:
        commands = [USAGE["help"]]
        if actor.is_moderator:
            commands += [
                usage
                for cmd, usage in USAGE.items()
                if cmd != "help" and (actor.is_admin or cmd not in ADMIN_ONLY)
            ]
        return {"commands": commands, "durations": ["30s", "10m", "2h", "7d"]}

    # -- sanctions others read ---------------------------------------------------------

    async def active_mute(self, username: str) -> Sanction | None:
        mute = await self.storage.get_sanction("mute", username)
        return mute if mute is not None and mute.active_at(self.clock.seconds()) else None

    async def auto_mute(self, identity: Identity, seconds: float, reason: str) -> Sanction:
        """Mute someone who kept posting into the rate limit (by ``system``)."""
        now = self.clock.seconds()
        sanction = Sanction("mute", identity.name, reason, SYSTEM, now, now + seconds)
        await self.storage.set_sanction(sanction)
        self.hub.send_to_person(
            identity.name,
            "system",
            message=f"You are muted for {describe_duration(seconds)}: {reason}.",
            level="warning",
        )
        await self._record(
            SYSTEM, "auto_mute", {"target": identity.name, "seconds": seconds, "reason": reason}
        )
        return sanction

    # -- the commands ------------------------------------------------------------------

    async def _delete(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        message_id = _string(args, "message_id")
        message = await self.storage.get_chat_message(message_id)
        if message is None:
            raise ClientError("not_found", "no such message")
        if message.message_type == "deletion":
            raise ClientError("bad_request", "a deletion cannot be deleted")
        if message.deleted:
            return {"message_id": message_id, "room": message.room, "already_deleted": True}
        await self.storage.delete_chat_message(message_id)
        deletion = await self.hub.store(
            NewChatMessage(
                room=message.room,
                username=actor.name,
                text="",
                timestamp=self.clock.seconds(),
                message_type="deletion",
                guest=actor.guest,
                reply_to=message_id,
            )
        )
        self.hub.publish(deletion, actor.role)
        await self._record(
            actor.name,
            "delete",
            {"target": message.username, "message_id": message_id, "room": message.room},
        )
        return {"message_id": message_id, "room": message.room, "seq": deletion.seq}

    async def _mute(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        target = await self._target(actor, _string(args, "user"))
        duration = args.get("duration")
        seconds = parse_duration(duration) if duration is not None else DEFAULT_MUTE
        reason = _string(args, "reason", required=False, limit=MAX_REASON)
        now = self.clock.seconds()
        until = now + seconds
        await self.storage.set_sanction(
            Sanction("mute", target.name, reason, actor.name, now, until)
        )
        told = f"You are muted for {describe_duration(seconds)}" + (
            f": {reason}." if reason else "."
        )
        self.hub.send_to_person(target.name, "system", message=told, level="warning")
        await self._record(
            actor.name, "mute", {"target": target.name, "seconds": seconds, "reason": reason}
        )
        return {"user": target.name, "until": until}

    async def _unmute(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        target = await self._target(actor, _string(args, "user"), must_exist=False)
        lifted = await self.storage.remove_sanction("mute", target.name)
        if lifted:
            self.hub.send_to_person(
                target.name, "system", message="You can post again.", level="info"
            )
            await self._record(actor.name, "unmute", {"target": target.name})
        return {"user": target.name, "lifted": lifted}

    async def _kick(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        target = await self._target(actor, _string(args, "user"))
        reason = _string(args, "reason", required=False, limit=MAX_REASON)
        closed = self.hub.close_person(
            target.name, CLOSE_POLICY, f"kicked: {reason}" if reason else "kicked"
        )
        await self._record(
            actor.name, "kick", {"target": target.name, "reason": reason, "connections": closed}
        )
        return {"user": target.name, "connections": closed}

    async def _ban(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        target = await self._target(actor, _string(args, "user"))
        reason = _string(args, "reason", limit=MAX_REASON)
        duration = args.get("duration")
        seconds = parse_duration(duration) if duration is not None else None
        now = self.clock.seconds()
        until = now + seconds if seconds is not None else None
        await self.storage.set_sanction(
            Sanction("ban", target.name, reason, actor.name, now, until)
        )
        sessions = await self.storage.delete_sessions(target.name)
        closed = self.hub.close_person(target.name, CLOSE_POLICY, f"banned: {reason}")
        await self._record(
            actor.name,
            "ban",
            {"target": target.name, "reason": reason, "seconds": seconds, "sessions": sessions},
        )
        return {"user": target.name, "until": until, "sessions": sessions, "connections": closed}

    async def _unban(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        target = await self._target(actor, _string(args, "user"), must_exist=False)
        lifted = await self.storage.remove_sanction("ban", target.name)
        if lifted:
            await self._record(actor.name, "unban", {"target": target.name})
        return {"user": target.name, "lifted": lifted}

    async def _notice(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        raw = args.get("text")
        if not isinstance(raw, str):
            raise ClientError("bad_request", "'text' must be a string")
        try:
            text = self.cleaner.clean(raw)
        except TextRejected as e:
            raise ClientError("bad_request", str(e)) from None
        rooms = [self.hub.room(args["room"]).name] if args.get("room") is not None else None
        found = self.hub.links.find(text)
        links = tuple(LinkRef(link.url, not link.flagged) for link in found)
        message_ids = []
        for room in rooms or list(self.hub.rooms):
            stored = await self.hub.store(
                NewChatMessage(
                    room=room,
                    username=actor.name,
                    text=text,
                    timestamp=self.clock.seconds(),
                    message_type="notice",
                    guest=actor.guest,
                    links=links,
                )
            )
            self.hub.publish(stored, actor.role, found)
            message_ids.append(stored.message_id)
        await self._record(actor.name, "notice", {"rooms": rooms or list(self.hub.rooms)})
        return {"rooms": rooms or list(self.hub.rooms), "message_ids": message_ids}

    async def _reload_triggers(self, actor: Identity, args: Mapping[str, Any]) -> dict[str, Any]:
        if self.reload_triggers is None:
            raise ClientError("unavailable", "there is no trigger catalog to reload")
        result = await self.reload_triggers()
        await self._record(actor.name, "reload-triggers", dict(result))
        return result

    # -- helpers -------------------------------------------------------------------------

    async def _target(self, actor: Identity, name: str, must_exist: bool = True) -> Target:
        """Who ``name`` is: an account, else a guest with a session. Refuses
        acting on oneself and a moderator acting on an admin."""
        account = await self.storage.get_account(name)
        if account is not None:
            target = Target(
                account.username, role_for(account.username, account.role, self.admins), False
            )
        else:
            sessions = await self.storage.list_sessions(name)
            guest = next((s for s in sessions if s.guest), None)
            if guest is not None:
                target = Target(guest.username, "user", True)
            elif must_exist:
                raise ClientError("not_found", f"no such person: {name}")
            else:
                target = Target(name, "user", False)
        if target.role == "admin" and not actor.is_admin:
            raise ClientError("forbidden", "moderators cannot act on admins")
        if username_key(target.name) == actor.key and must_exist:
            raise ClientError("bad_request", "you cannot do that to yourself")
        return target

    async def _record(self, actor: str, cmd: str, details: dict[str, Any]) -> None:
        await self.storage.record(
            UserInteraction(
                username=actor,
                action=f"moderation.{cmd}",
                timestamp=self.clock.seconds(),
                details=details,
            )
        )
