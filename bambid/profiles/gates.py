"""Features gated by level, enforced on the server.

The features and the level each needs come from ``[xp]`` (``unlocks[n]``
unlocks at level ``n + 1``). A feature that is not in the table is open to
everyone. Guests are level 0, so every gated feature is closed to them.
"""

from __future__ import annotations

from bambid.identity import Identity
from bambid.profiles.xp import XpService
from bambid.ws.dispatch import ClientError

#: How a ``level_required`` message says that each feature unlocks.
UNLOCKS = {
    "triggers": "Triggers unlock",
    "collar": "The collar unlocks",
    "session_history": "Session history unlocks",
    "spirals": "Spirals unlock",
    "hypnosis": "Hypnosis unlocks",
    "audio_playlist": "The audio playlist unlocks",
    "binaural": "Binaural beats unlock",
    "advanced_binaural": "Binaural sequences unlock",
}


class Gates:
    """Answers "may this person use that feature?" from their stored XP."""

    def __init__(self, xp: XpService) -> None:
        self.xp = xp

    def level_needed(self, feature: str) -> int:
        """The level that unlocks ``feature`` (0: not gated)."""
        unlocks = self.xp.table.unlocks
        return unlocks.index(feature) + 1 if feature in unlocks else 0

    async def level_of(self, identity: Identity) -> int:
        return (await self.xp.progress_of(identity)).level

    async def allows(self, identity: Identity, feature: str) -> bool:
        needed = self.level_needed(feature)
        return needed == 0 or await self.level_of(identity) >= needed

    async def require(self, identity: Identity, feature: str) -> None:
        """Return if the person has reached ``feature``'s level; otherwise
        raise ``ClientError("level_required", …, feature=, level=)``."""
        needed = self.level_needed(feature)
        if needed == 0 or await self.level_of(identity) >= needed:
            return
        what = UNLOCKS.get(feature, feature.replace("_", " ").capitalize() + " unlocks")
        raise ClientError(
            "level_required",
            f"{what} at level {needed}",
            feature=feature,
            level=needed,
        )
