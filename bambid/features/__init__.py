"""The features unlocked by level (docs/protocol.md, "Levels and gated
features" and "Triggers and effects"): the collar (``collar``), effect
settings (``settings``), session history (``history``); ``handlers`` builds
them and registers their WebSocket handlers.

What they share lives here: who sent a request, the ``ack``, and
``ProfilePreferences``, through which they keep their state in an account's
``Profile.preferences`` (one key each).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime

from bambid.identity import Identity
from bambid.storage import Storage
from bambid.ws.dispatch import ClientError, Connection


def identity_of(connection: Connection) -> Identity:
    """Who sent the request; ``unauthenticated`` for an anonymous connection."""
    if connection.identity is None:
        raise ClientError("unauthenticated", "sign in or join as a guest first")
    return connection.identity


def require_account(identity: Identity, what: str) -> None:
    """``forbidden`` for a guest: ``what`` is kept in an account's profile.
    (A gated feature already refuses guests, who are level 0; this holds when
    the operator leaves a feature out of ``xp.unlocks``.)"""
    if identity.guest:
        raise ClientError("forbidden", f"sign up to save {what}; guests have no profile")


def ack(connection: Connection, message: Mapping[str, Any], **fields: Any) -> None:
    """``ack`` with ``fields``, and the request's ``id`` when it had one."""
    if "id" in message:
        fields["id"] = message["id"]
    connection.send("ack", **fields)


class ProfilePreferences:
    """One key of ``Profile.preferences`` per feature, read and changed for
    accounts (guests have no profile: they read None and cannot change).

    A change reads the profile afresh and writes the whole mapping back with
    the other keys as they were; the changes of one person are serialised by
    one ``DeferredLock`` shared by every feature built on this object.
    """

    def __init__(self, storage: Storage, clock: IReactorTime) -> None:
        self.storage = storage
        self.clock = clock
        self._locks: dict[str, DeferredLock] = {}

    async def get(self, identity: Identity, key: str) -> Any:
        """The stored value of ``key`` (None: a guest, no profile, or never set)."""
        if identity.guest:
            return None
        profile = await self.storage.get_profile(identity.name)
        return profile.preferences.get(key) if profile is not None else None

    async def update(self, identity: Identity, key: str, change: Callable[[Any], Any]) -> Any:
        """Store ``change(stored value of key)`` (the profile is created if
        missing) and return it. ``ValueError`` for a guest."""
        if identity.guest:
            raise ValueError("guests have no stored preferences")
        lock = self._locks.setdefault(identity.key, DeferredLock())
        try:
            async with lock:
                profile = await self.storage.get_profile(identity.name)
                if profile is None:
                    profile = await self.storage.ensure_profile(identity.name, self.clock.seconds())
                value = change(profile.preferences.get(key))
                # Only this key is written: other features' keys are never lost.
                await self.storage.set_preference(identity.name, key, value)
                return value
        finally:
            if not lock.locked and not lock.waiting:
                self._locks.pop(identity.key, None)
