"""Each person's voice settings: whether replies are spoken, the voice, the
speed, and the volume their browsers play speech at.

What a person chose is kept apart from the defaults, so a default changed in
the configuration reaches everyone who never chose: accounts keep their
choices in ``Profile.preferences["voice"]`` (``{"enabled": bool, "voice":
str, "speed": float, "volume": float}``, only the keys they set; the other
preference keys are left as they are); guests keep them in memory for the
life of their guest name (``forget_guest`` when their last connection
closes). The defaults are ``voice.speak_replies``, the primary backend's
default voice, ``voice.speed`` and ``DEFAULT_VOLUME``. The volume (0-1) is
kept here only so that it follows the person to every device: browsers
apply it, the server synthesises speech the same whatever it is. Changes of
one person are serialised (``DeferredLock``), so two tabs setting different
keys at once both count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime

from bambid.config import VoiceConfig
from bambid.identity import Identity
from bambid.storage import Storage

#: The key in ``Profile.preferences``.
PREFERENCES_KEY = "voice"
_KEYS = ("enabled", "voice", "speed", "volume")
#: The volume (0-1) of someone who never chose one.
DEFAULT_VOLUME = 1.0


def valid_volume(value: Any) -> float | None:
    """``value`` as a volume if it is a number from 0 to 1, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    volume = float(value)
    if not math.isfinite(volume) or not 0.0 <= volume <= 1.0:
        return None
    return volume


@attrs.frozen
class VoicePrefs:
    """A person's settings in effect: ``voice`` "" means the default voice."""

    enabled: bool
    voice: str
    speed: float
    volume: float = DEFAULT_VOLUME


class VoicePreferences:
    """Read and change people's ``VoicePrefs`` (see the module doc). Values are
    validated by the caller (``VoiceServices``)."""

    def __init__(
        self, storage: Storage, clock: IReactorTime, config: VoiceConfig, default_voice: str
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.config = config
        self.default_voice = default_voice
        self._guests: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, DeferredLock] = {}

    def _in_effect(self, chosen: Mapping[str, Any]) -> VoicePrefs:
        enabled = chosen.get("enabled")
        voice = chosen.get("voice")
        speed = chosen.get("speed")
        volume = valid_volume(chosen.get("volume"))
        return VoicePrefs(
            enabled=enabled if isinstance(enabled, bool) else self.config.speak_replies,
            voice=voice if isinstance(voice, str) else "",
            speed=float(speed)
            if isinstance(speed, (int, float)) and not isinstance(speed, bool)
            else self.config.speed,
            volume=DEFAULT_VOLUME if volume is None else volume,
        )

    async def _chosen(self, identity: Identity) -> dict[str, Any]:
        if identity.guest:
            return dict(self._guests.get(identity.key, {}))
        profile = await self.storage.get_profile(identity.name)
        stored = profile.preferences.get(PREFERENCES_KEY) if profile is not None else None
        return {k: v for k, v in stored.items() if k in _KEYS} if isinstance(stored, dict) else {}

    async def get(self, identity: Identity) -> VoicePrefs:
        """The person's settings in effect."""
        return self._in_effect(await self._chosen(identity))

    async def update(
        self,
        identity: Identity,
        *,
        enabled: bool | None = None,
        voice: str | None = None,
        speed: float | None = None,
        volume: float | None = None,
    ) -> VoicePrefs:
        """Set what is not None (``voice=""`` goes back to the default voice);
        the settings now in effect."""
        lock = self._locks.setdefault(identity.key, DeferredLock())
        try:
            async with lock:
                chosen = await self._chosen(identity)
                if enabled is not None:
                    chosen["enabled"] = enabled
                if speed is not None:
                    chosen["speed"] = speed
                if volume is not None:
                    chosen["volume"] = volume
                if voice == "":
                    chosen.pop("voice", None)
                elif voice is not None:
                    chosen["voice"] = voice
                if identity.guest:
                    self._guests[identity.key] = chosen
                else:
                    await self._store(identity.name, chosen)
                return self._in_effect(chosen)
        finally:
            if not lock.locked and not lock.waiting:
                self._locks.pop(identity.key, None)

    async def _store(self, username: str, chosen: dict[str, Any]) -> None:
        await self.storage.ensure_profile(username, self.clock.seconds())
        await self.storage.set_preference(username, PREFERENCES_KEY, chosen)

    def forget_guest(self, identity: Identity) -> None:
        """The guest's last connection closed: their choices go with the name."""
        if identity.guest:
            self._guests.pop(identity.key, None)

    def document(self, prefs: VoicePrefs, backend: str) -> dict[str, Any]:
        """The fields of a ``voice.prefs`` frame (docs/protocol.md)."""
        return {
            "enabled": prefs.enabled,
            "voice": prefs.voice or self.default_voice,
            "speed": prefs.speed,
            "volume": prefs.volume,
            "backend": backend,
            "default_voice": self.default_voice,
        }
