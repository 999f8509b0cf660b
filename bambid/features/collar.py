"""The collar: a short directive a person writes for their companion.

``collar.set {text?, enabled?}`` (level ``collar``; at least one of the two,
the other keeps its stored value): ``text`` has its control characters
removed (newlines and tabs kept, bidi controls removed, as in chat) and is
trimmed; more than ``triggers.collar_max_length`` characters then is
``bad_request``; the chat word filter masks filtered words. ``""`` clears it.
``enabled`` is a bool. Stored in ``Profile.preferences["collar"]`` (``{"text":
str, "enabled": bool}``; never set: ``""`` and false). The sender gets
``ack``, every tab of the person ``collar.state {text, enabled}``. Saving
earns ``xp.collar`` XP at most once a minute per person.

``collar.get`` (any level: it only reads) answers ``collar.state`` with the
request's ``id``.

``collar_of(identity)`` is what the companion's persona receives: the text
when the collar is enabled and the person has reached its level, else ``""``
(guests always). It never raises: the reply goes on without the collar if
it cannot be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bambid.chat.text import WordFilter, remove_control_characters
from bambid.config import TriggersConfig, XPConfig
from bambid.features import ProfilePreferences, ack, identity_of, require_account
from bambid.identity import Identity
from bambid.profiles.gates import Gates
from bambid.profiles.xp import XpService
from bambid.ratelimit import KeyedLimiter
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

FEATURE = "collar"
#: The key in ``Profile.preferences``.
PREFERENCES_KEY = "collar"
#: Seconds between two XP awards for saving a collar.
AWARD_INTERVAL = 60.0


class People(Protocol):
    """What the collar needs of the chat hub."""

    def send_to_person(self, username: str, type: str, **fields: Any) -> int: ...


@attrs.frozen
class Collar:
    text: str = ""
    enabled: bool = False

    @classmethod
    def from_stored(cls, stored: Any) -> Collar:
        """The collar from ``Profile.preferences``; odd values count as unset."""
        if not isinstance(stored, Mapping):
            return cls()
        text, enabled = stored.get("text"), stored.get("enabled")
        return cls(
            text if isinstance(text, str) else "",
            enabled if isinstance(enabled, bool) else False,
        )

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "enabled": self.enabled}


class CollarService:
    """``collar.get`` / ``collar.set`` and ``collar_of`` (see the module doc)."""

    _log = Logger()

    def __init__(
        self,
        config: TriggersConfig,
        xp_config: XPConfig,
        preferences: ProfilePreferences,
        people: People,
        word_filter: WordFilter,
        xp: XpService,
        gates: Gates,
        clock: IReactorTime,
    ) -> None:
        self.max_length = config.collar_max_length
        self.award = xp_config.collar
        self.preferences = preferences
        self.people = people
        self.word_filter = word_filter
        self.xp = xp
        self.gates = gates
        self._awards = KeyedLimiter(clock, 1 / AWARD_INTERVAL, 1)

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("collar.get", self.get)
        dispatcher.register("collar.set", self.set)

    def clean(self, text: str) -> str:
        """The stored form of ``text``; ``bad_request`` when it is too long."""
        cleaned = remove_control_characters(text).strip()
        if len(cleaned) > self.max_length:
            raise ClientError(
                "bad_request", f"the collar is longer than {self.max_length} characters"
            )
        return self.word_filter.apply(cleaned)

    async def collar_of(self, identity: Identity) -> str:
        """The text the persona receives (see the module doc)."""
        if identity.guest:
            return ""
        try:
            if not await self.gates.allows(identity, FEATURE):
                return ""
            collar = Collar.from_stored(await self.preferences.get(identity, PREFERENCES_KEY))
        except Exception:
            self._log.failure("could not read the collar of {person}", person=identity.name)
            return ""
        return collar.text if collar.enabled else ""

    # -- handlers ----------------------------------------------------------------------

    async def get(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = identity_of(connection)
        collar = Collar.from_stored(await self.preferences.get(identity, PREFERENCES_KEY))
        fields = collar.to_json()
        if "id" in message:
            fields["id"] = message["id"]
        connection.send("collar.state", **fields)

    async def set(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = identity_of(connection)
        await self.gates.require(identity, FEATURE)
        require_account(identity, "a collar")
        text, enabled = message.get("text"), message.get("enabled")
        if text is None and enabled is None:
            raise ClientError("bad_request", "give 'text', 'enabled' or both")
        if text is not None and not isinstance(text, str):
            raise ClientError("bad_request", "'text' must be a string")
        if enabled is not None and not isinstance(enabled, bool):
            raise ClientError("bad_request", "'enabled' must be true or false")
        cleaned = self.clean(text) if text is not None else None

        def change(stored: Any) -> dict[str, Any]:
            collar = Collar.from_stored(stored)
            if cleaned is not None:
                collar = attrs.evolve(collar, text=cleaned)
            if enabled is not None:
                collar = attrs.evolve(collar, enabled=enabled)
            return collar.to_json()

        saved = await self.preferences.update(identity, PREFERENCES_KEY, change)
        ack(connection, message)
        self.people.send_to_person(identity.name, "collar.state", **saved)
        if self.award > 0 and not self._awards.take(identity.key):
            try:
                await self.xp.award(identity, self.award)
            except Exception:
                self._log.failure("could not award XP for {person}'s collar", person=identity.name)
