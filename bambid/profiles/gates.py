"""Features gated by level, enforced on the server, and how they are named.

The features and the level each needs come from ``[xp]`` (``unlocks[n]``
unlocks at level ``n + 1``). A feature that is not in the table is open to
everyone. Guests are level 0, so every gated feature is closed to them.

``level_table`` is the table people see (``welcome.levels``, ``GET
/api/levels``): every level with its XP, the feature it unlocks and that
feature's label and one-line description (``FEATURES``; a feature named only
in the configuration gets a label made from its name).
"""

from __future__ import annotations

from typing import Any

import attrs

from bambid.identity import Identity
from bambid.profiles.xp import XpService, XpTable
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


@attrs.frozen
class Feature:
    """How a gated feature is shown to people: a short label and one line about it."""

    label: str
    description: str


#: The features bambid knows, as the level table names them.
FEATURES = {
    "triggers": Feature("Triggers", "Switch on trigger phrases and hear their audio cues."),
    "collar": Feature("The collar", "A short note your companion keeps in mind in every reply."),
    "session_history": Feature(
        "Session history", "Reopen, replay and delete your past conversations."
    ),
    "spirals": Feature("Spirals", "Two turning spirals to watch while you relax."),
    "hypnosis": Feature("Hypnosis", "Guided relaxation sessions with your companion."),
    "audio_playlist": Feature(
        "The audio playlist", "Loop trigger cues, set their pace and add a background sound."
    ),
    "binaural": Feature("Binaural beats", "A calm tone in each ear; headphones needed."),
    "advanced_binaural": Feature(
        "Binaural sequences", "Timed plans that glide from one beat to the next."
    ),
}


def describe(feature: str) -> Feature:
    """``FEATURES[feature]``, or for a name only the configuration knows a
    label made from it ("my_garden" → "My garden") and a generic line."""
    known = FEATURES.get(feature)
    if known is not None:
        return known
    words = " ".join(feature.replace("_", " ").replace("-", " ").split())
    label = words[:1].upper() + words[1:] if words else "A new feature"
    return Feature(label, f"{label} becomes available.")


def level_table(table: XpTable) -> list[dict[str, Any]]:
    """``[{level, xp, feature, label, description}]``: level ``n + 1`` needs
    ``table.levels[n]`` XP and unlocks ``table.unlocks[n]``."""
    rows = []
    for index, (xp, feature) in enumerate(zip(table.levels, table.unlocks, strict=True)):
        about = describe(feature)
        rows.append(
            {
                "level": index + 1,
                "xp": xp,
                "feature": feature,
                "label": about.label,
                "description": about.description,
            }
        )
    return rows


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
        what = UNLOCKS.get(feature, describe(feature).label + " unlocks")
        raise ClientError(
            "level_required",
            f"{what} at level {needed}",
            feature=feature,
            level=needed,
        )
