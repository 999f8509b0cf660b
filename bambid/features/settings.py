"""Effect settings kept on the server and synced across tabs.

Three sections, each gated by the level of a feature (docs/protocol.md,
"settings.get / settings.set", is the table this module follows):

- ``spirals`` (``spirals``): ``enabled``, ``spiral1Width`` / ``spiral2Width``
  1-10, ``spiral1Speed`` / ``spiral2Speed`` 5-50;
- ``audio`` (``audio_playlist``): ``volume`` 0-1, ``speed`` 1-10, ``loop``,
  ``background`` (``""``, ``brown-noise``, ``rain``, ``ocean``, ``drone``),
  ``background_volume`` 0-1;
- ``binaural`` (``binaural``): ``preset``, ``beat`` 1-30, ``carrier``
  100-500, ``volume`` 0-1, ``pattern`` (``""`` or a sequence, which needs
  ``advanced_binaural`` too), ``total_minutes`` 5-60, ``transition_seconds``
  10-120.

``settings.set {section, values}``: ``values`` holds any of the section's
settings; a number must be a JSON number (not a bool) within the range,
bounds included, and is kept as sent (an integer stays one); a flag must be
a bool; a choice one of its strings. An unknown section or setting, or a bad
value, is ``bad_request`` naming it, and nothing is stored. The sender gets
``ack``, every tab of the person ``settings.state {section, values}`` with
the whole section (defaults filled in).

``settings.get`` (any level: it only reads) answers ``settings.state {id,
sections}`` with every section.

Stored in ``Profile.preferences["settings"][section]``: only what the person
set, so a stored value that is no longer valid falls back to its default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from bambid.features import ProfilePreferences, ack, identity_of, require_account
from bambid.profiles.gates import Gates
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

#: The key in ``Profile.preferences``.
PREFERENCES_KEY = "settings"


class People(Protocol):
    """What the settings need of the chat hub."""

    def send_to_person(self, username: str, type: str, **fields: Any) -> int: ...


Value = bool | int | float | str


@attrs.frozen
class Setting:
    """One setting: its kind is its default's (a bool flag, a number within
    ``low``-``high``, or a string among ``choices``)."""

    name: str
    default: Value
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid here (a message naming the setting), or None."""
        if isinstance(self.default, bool):
            return None if isinstance(value, bool) else f"'{self.name}' must be true or false"
        if isinstance(self.default, str):
            if isinstance(value, str) and value in self.choices:
                return None
            listed = ", ".join(repr(c) for c in self.choices)
            return f"'{self.name}' must be one of {listed}"
        number = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value)
        )
        if number and self.low <= value <= self.high:
            return None
        return f"'{self.name}' must be a number from {_number(self.low)} to {_number(self.high)}"


@attrs.frozen
class Section:
    name: str
    #: The feature whose level the section needs.
    feature: str
    settings: tuple[Setting, ...]

    @property
    def defaults(self) -> dict[str, Value]:
        return {s.name: s.default for s in self.settings}

    def setting(self, name: str) -> Setting | None:
        for setting in self.settings:
            if setting.name == name:
                return setting
        return None

    def values(self, stored: Any) -> dict[str, Any]:
        """Every setting: the stored value where it is valid, else the default."""
        values: dict[str, Any] = self.defaults
        if isinstance(stored, Mapping):
            for setting in self.settings:
                if setting.name in stored and setting.problem(stored[setting.name]) is None:
                    values[setting.name] = stored[setting.name]
        return values


SECTIONS: dict[str, Section] = {
    section.name: section
    for section in (
        Section(
            "spirals",
            "spirals",
            (
                Setting("enabled", False),
                Setting("spiral1Width", 5, 1, 10),
                Setting("spiral2Width", 3, 1, 10),
                Setting("spiral1Speed", 20, 5, 50),
                Setting("spiral2Speed", 15, 5, 50),
            ),
        ),
        Section(
            "audio",
            "audio_playlist",
            (
                Setting("volume", 0.8, 0, 1),
                Setting("speed", 5, 1, 10),
                Setting("loop", False),
                Setting("background", "", choices=("", "brown-noise", "rain", "ocean", "drone")),
                Setting("background_volume", 0.3, 0, 1),
            ),
        ),
        Section(
            "binaural",
            "binaural",
            (
                Setting("preset", "alpha", choices=("alpha", "theta", "delta", "beta", "custom")),
                Setting("beat", 10, 1, 30),
                Setting("carrier", 200, 100, 500),
                Setting("volume", 0.5, 0, 1),
                Setting("pattern", "", choices=("", "descent", "ascent", "focus", "trance")),
                Setting("total_minutes", 20, 5, 60),
                Setting("transition_seconds", 30, 10, 120),
            ),
        ),
    )
}
#: A binaural ``pattern`` other than "" needs this feature as well.
PATTERN_FEATURE = "advanced_binaural"


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


class SettingsService:
    """``settings.get`` / ``settings.set`` (see the module doc)."""

    def __init__(self, preferences: ProfilePreferences, people: People, gates: Gates) -> None:
        self.preferences = preferences
        self.people = people
        self.gates = gates

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("settings.get", self.get)
        dispatcher.register("settings.set", self.set)

    async def get(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = identity_of(connection)
        stored = await self.preferences.get(identity, PREFERENCES_KEY)
        stored = stored if isinstance(stored, Mapping) else {}
        fields: dict[str, Any] = {}
        if "id" in message:
            fields["id"] = message["id"]
        fields["sections"] = {
            name: section.values(stored.get(name)) for name, section in SECTIONS.items()
        }
        connection.send("settings.state", **fields)

    async def set(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = identity_of(connection)
        name = message.get("section")
        section = SECTIONS.get(name) if isinstance(name, str) else None
        if section is None:
            known = ", ".join(repr(n) for n in SECTIONS)
            raise ClientError("bad_request", f"'section' must be one of {known}")
        await self.gates.require(identity, section.feature)
        require_account(identity, "settings")
        values = message.get("values")
        if not isinstance(values, Mapping):
            raise ClientError("bad_request", "'values' must be an object")
        for key, value in values.items():
            setting = section.setting(key)
            if setting is None:
                raise ClientError("bad_request", f"there is no setting {key!r} in {section.name}")
            problem = setting.problem(value)
            if problem is not None:
                raise ClientError("bad_request", f"{section.name}: {problem}")
        if section.name == "binaural" and values.get("pattern", "") != "":
            await self.gates.require(identity, PATTERN_FEATURE)

        def change(stored: Any) -> dict[str, Any]:
            sections = dict(stored) if isinstance(stored, Mapping) else {}
            before = sections.get(section.name)
            chosen = dict(before) if isinstance(before, Mapping) else {}
            sections[section.name] = {**chosen, **values}
            return sections

        saved = await self.preferences.update(identity, PREFERENCES_KEY, change)
        ack(connection, message)
        self.people.send_to_person(
            identity.name,
            "settings.state",
            section=section.name,
            values=section.values(saved[section.name]),
        )
