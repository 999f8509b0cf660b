"""Interaction analytics, kept only for people who said yes.

What a person does on the site (views a profile, likes one, changes a
setting) is an analytics record (``models.UserInteraction``). bambid keeps it
only when the person chose so: ``Profile.preferences["privacy"]`` is
``{"analytics": bool, "decided_at": float}`` (docs/privacy.md). Nobody is
recorded before choosing, guests never are (they have no profile to keep the
choice in), and a "no" stops the recording from the moment it is stored.

Security and moderation records (sign-ins, bans) are not analytics: they are
kept whatever the choice, and are written elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from bambid.identity import Identity
from bambid.models import Profile, UserInteraction
from bambid.storage import Storage

#: The key in ``Profile.preferences``.
PRIVACY_KEY = "privacy"


def analytics_consented(profile: Profile | None) -> bool:
    """True when the profile's owner chose to have interaction analytics kept."""
    if profile is None:
        return False
    privacy = profile.preferences.get(PRIVACY_KEY)
    return isinstance(privacy, dict) and privacy.get("analytics") is True


class InteractionRecorder:
    """Stores ``UserInteraction`` records for people who consented."""

    def __init__(self, storage: Storage, clock: IReactorTime) -> None:
        self.storage = storage
        self.clock = clock

    async def allowed(self, identity: Identity | None) -> bool:
        """Whether ``identity``'s interactions may be recorded now (reads the
        stored choice afresh, so a change applies to the next record)."""
        if identity is None or identity.guest:
            return False
        return analytics_consented(await self.storage.get_profile(identity.name))

    async def record(
        self, identity: Identity | None, action: str, details: Mapping[str, Any] | None = None
    ) -> bool:
        """Record ``action`` (e.g. ``"profile.view"``) with ``details`` for
        ``identity`` if they consented; True when a record was stored."""
        if not await self.allowed(identity):
            return False
        assert identity is not None
        await self.storage.record(
            UserInteraction(
                username=identity.name,
                action=action,
                timestamp=self.clock.seconds(),
                details=dict(details or {}),
            )
        )
        return True
