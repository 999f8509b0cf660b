"""XP, levels and the features they unlock; the server alone awards XP.

``XpTable`` is pure arithmetic over ``[xp]`` (``levels``: ascending thresholds,
``unlocks``: one feature per level). Level 0 is below the first threshold;
reaching ``levels[n]`` XP means level ``n + 1`` and unlocks ``unlocks[: n + 1]``.

``XpService`` awards XP for what people do (so far: posting in public chat),
stores it (``Storage.add_xp``) and tells every connection of the person
(``xp.update``, and ``level.up`` when a threshold is crossed). Guests have no
profile and earn nothing.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from bambid.config import XPConfig
from bambid.identity import Identity
from bambid.models import Profile
from bambid.storage import Storage
from bambid.storage.interface import NotFoundError

#: ``notify(username, type, **fields)``: send a frame to every connection of a person.
Notify = Callable[..., object]

AWARD_WINDOW = 60.0


@attrs.frozen
class Progress:
    """Where an XP total stands: ``next`` is the XP of the next level (None at the top)."""

    xp: int
    level: int
    next: int | None

    def to_json(self) -> dict[str, Any]:
        return {"xp": self.xp, "level": self.level, "next": self.next}


@attrs.frozen
class XpTable:
    """The level thresholds and the feature each level unlocks."""

    levels: tuple[int, ...]
    unlocks: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        if len(self.levels) != len(self.unlocks):
            raise ValueError("one unlocked feature per level is needed")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ValueError("levels must be strictly increasing")

    @classmethod
    def from_config(cls, config: XPConfig) -> XpTable:
        return cls(tuple(config.levels), tuple(config.unlocks))

    def level_for(self, xp: int) -> int:
        """How many thresholds ``xp`` has reached (0 below the first)."""
        return bisect.bisect_right(self.levels, xp)

    def next_for(self, xp: int) -> int | None:
        """The XP of the next level, None at the top."""
        level = self.level_for(xp)
        return self.levels[level] if level < len(self.levels) else None

    def progress(self, xp: int) -> Progress:
        return Progress(xp, self.level_for(xp), self.next_for(xp))

    def unlocked(self, level: int) -> list[str]:
        """Every feature available at ``level``."""
        return list(self.unlocks[: max(0, level)])

    def unlocked_between(self, old_level: int, new_level: int) -> list[str]:
        """The features gained going from ``old_level`` to ``new_level``."""
        return list(self.unlocks[max(0, old_level) : max(0, new_level)])

    def has_feature(self, xp: int, feature: str) -> bool:
        return feature in self.unlocked(self.level_for(xp))


class XpService:
    """Server-authoritative awards.

    ``award_chat_message`` grants ``xp.chat_message`` XP for a posted message,
    at most ``xp.chat_awards_per_minute`` times in any 60 seconds per person
    (a sliding window on ``clock``). ``notify`` is how the person's
    connections are told (the hub's ``send_to_person``).
    """

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        table: XpTable,
        config: XPConfig,
        notify: Notify,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.table = table
        self.config = config
        self.notify = notify
        self._awards: dict[str, collections.deque[float]] = {}
        self._next_sweep = 0.0

    async def progress_of(self, identity: Identity) -> Progress:
        """The person's XP, level and next threshold (0 for guests and people
        without a profile yet)."""
        if identity.guest:
            return self.table.progress(0)
        profile = await self.storage.get_profile(identity.name)
        return self.table.progress(profile.xp if profile is not None else 0)

    async def award_chat_message(self, identity: Identity) -> Progress | None:
        """Award XP for one posted chat message; the new progress, or None
        when nothing was awarded (guest, zero amount, or over the per-minute cap)."""
        amount = self.config.chat_message
        if identity.guest or amount <= 0 or not self._take_chat_award(identity.key):
            return None
        return await self.award(identity, amount)

    async def award(self, identity: Identity, amount: int) -> Progress:
        """Add ``amount`` XP (creating the profile if needed), then send
        ``xp.update`` (and ``level.up`` when a level was reached) to every
        connection of the person."""
        profile = await self._add(identity.name, amount)
        progress = self.table.progress(profile.xp)
        old_level = self.table.level_for(max(0, profile.xp - amount))
        self.notify(identity.name, "xp.update", **progress.to_json())
        if progress.level > old_level:
            self.notify(
                identity.name,
                "level.up",
                level=progress.level,
                unlocked=self.table.unlocked_between(old_level, progress.level),
            )
        return progress

    async def _add(self, username: str, amount: int) -> Profile:
        try:
            return await self.storage.add_xp(username, amount)
        except NotFoundError:
            await self.storage.ensure_profile(username, self.clock.seconds())
            return await self.storage.add_xp(username, amount)

    def _take_chat_award(self, key: str) -> bool:
        cap = self.config.chat_awards_per_minute
        if cap <= 0:
            return False
        now = self.clock.seconds()
        self._sweep(now)
        window = self._awards.setdefault(key, collections.deque())
        while window and window[0] <= now - AWARD_WINDOW:
            window.popleft()
        if len(window) >= cap:
            return False
        window.append(now)
        return True

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + AWARD_WINDOW
        for key in [k for k, w in self._awards.items() if not w or w[-1] <= now - AWARD_WINDOW]:
            del self._awards[key]
