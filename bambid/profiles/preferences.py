"""A person's preferences as one object, read whole and changed by a patch.

The object (docs/api.md, "Your preferences") gathers what other modules keep
in ``Profile.preferences``, so that a settings page and every device of the
person see the same thing:

- ``voice``: ``{enabled, voice, speed, volume}`` (``bambid.voice``);
- ``notifications``: ``{mentions, sound, level_up}``, booleans, each true
  unless the person switched it off (``preferences["notifications"]`` keeps
  only what they set);
- ``privacy``: ``{analytics, decided_at}`` (``bambid.profiles.interactions``;
  both null until the person chooses, ``decided_at`` set by the server);
- ``settings``: the effect settings, every section with its defaults filled
  in (``bambid.features.settings``).

``apply(identity, patch)`` takes any of the four keys, each a partial object,
and checks all of it with the rules the WebSocket uses (the voice service's
``check``; the settings' ranges, choices and level gates) before anything is
stored: a refusal (``PreferencesError``) names the ``field`` (e.g.
``notifications.sound``) and changes nothing. Then every connection of the
person gets the frames that tell the change: ``voice.prefs``,
``settings.state {section, values}`` for each section changed, and
``preferences.update {notifications?, privacy?}``; the change is recorded as
interaction analytics (``preferences.change``, with the keys changed) if the
person consented. Guests read their defaults
(and their voice choices of the session) and cannot change anything here.

The WebSocket reads the object with ``preferences.get`` → ``preferences.state``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bambid.errors import CodedError
from bambid.features import ProfilePreferences, identity_of
from bambid.features.settings import PATTERN_FEATURE, SECTIONS, Section
from bambid.features.settings import PREFERENCES_KEY as SETTINGS_KEY
from bambid.identity import Identity
from bambid.profiles.gates import Gates
from bambid.profiles.interactions import PRIVACY_KEY, InteractionRecorder
from bambid.storage import Storage
from bambid.voice.handlers import VoiceServices
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

#: The key of the notification switches in ``Profile.preferences``.
NOTIFICATIONS_KEY = "notifications"
#: The notification switches and their defaults.
NOTIFICATION_DEFAULTS = {"mentions": True, "sound": True, "level_up": True}
#: What ``voice`` may hold in a patch.
VOICE_KEYS = ("enabled", "voice", "speed", "volume")
#: What a patch may hold.
PATCH_KEYS = ("voice", "notifications", "privacy", "settings")
#: The ``UserInteraction.action`` of a change (kept only with consent).
CHANGE_ACTION = "preferences.change"


class PreferencesError(CodedError):
    """A refused patch: ``code`` (a key of ``STATUS``), a message for people,
    and details (``field``; ``feature`` and ``level`` for ``level_required``)."""

    STATUS = {
        "bad_request": 400,
        "forbidden": 403,
        "level_required": 403,
        "invalid": 422,
        "unavailable": 503,
    }


class People(Protocol):
    def send_to_person(self, username: str, type: str, **fields: Any) -> int: ...


class Preferences:
    """Reads and patches the whole preferences object (see the module doc)."""

    _log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        store: ProfilePreferences,
        voice: VoiceServices,
        gates: Gates,
        people: People,
        recorder: InteractionRecorder,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.store = store
        self.voice = voice
        self.gates = gates
        self.people = people
        self.recorder = recorder

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("preferences.get", self.get)

    # -- reading ------------------------------------------------------------------------

    async def read(self, identity: Identity) -> dict[str, Any]:
        """The whole object for ``identity`` (defaults where nothing was chosen)."""
        stored: Mapping[str, Any] = {}
        if not identity.guest:
            profile = await self.storage.get_profile(identity.name)
            if profile is not None:
                stored = profile.preferences
        voice = self.voice.state(await self.voice.preferences.get(identity))
        settings = stored.get(SETTINGS_KEY)
        settings = settings if isinstance(settings, Mapping) else {}
        return {
            "voice": {key: voice[key] for key in VOICE_KEYS},
            "notifications": notifications_of(stored.get(NOTIFICATIONS_KEY)),
            "privacy": privacy_of(stored.get(PRIVACY_KEY)),
            "settings": {
                name: section.values(settings.get(name)) for name, section in SECTIONS.items()
            },
        }

    async def get(self, connection: Connection, message: Mapping[str, Any]) -> None:
        """``preferences.get`` → ``preferences.state`` with the whole object."""
        identity = identity_of(connection)
        fields: dict[str, Any] = {"id": message["id"]} if "id" in message else {}
        connection.send("preferences.state", **fields, **(await self.read(identity)))

    # -- changing -------------------------------------------------------------------------

    async def apply(self, identity: Identity, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Check the whole ``patch``, store it, tell every connection of the
        person; the object afterwards. ``PreferencesError`` before anything
        is stored when any part is refused."""
        if identity.guest:
            raise PreferencesError(
                "forbidden", "sign up to keep preferences; guests have no profile"
            )
        if not patch:
            raise PreferencesError("bad_request", "send at least one of " + ", ".join(PATCH_KEYS))
        for key, value in patch.items():
            if key not in PATCH_KEYS:
                raise PreferencesError("bad_request", f"there is no preference {key!r}", field=key)
            if not isinstance(value, Mapping):
                raise PreferencesError("bad_request", f"'{key}' must be an object", field=key)
        voice = await self._voice_changes(patch.get("voice"))
        notifications = _switches(patch.get("notifications"))
        analytics = _analytics(patch.get("privacy"))
        sections = await self._settings_changes(identity, patch.get("settings"))

        if voice:
            prefs = await self.voice.preferences.update(identity, **voice)
            self.voice.announce(identity, prefs)
        if sections:
            saved = await self.store.update(identity, SETTINGS_KEY, _merged_sections(sections))
            for name in sections:
                self.people.send_to_person(
                    identity.name,
                    "settings.state",
                    section=name,
                    values=SECTIONS[name].values(saved[name]),
                )
        update: dict[str, Any] = {}
        if notifications is not None:
            chosen = await self.store.update(
                identity, NOTIFICATIONS_KEY, _merged_switches(notifications)
            )
            update["notifications"] = notifications_of(chosen)
        if analytics is not None:
            choice = {"analytics": analytics, "decided_at": self.clock.seconds()}
            update["privacy"] = await self.store.update(identity, PRIVACY_KEY, lambda _: choice)
        if update:
            self.people.send_to_person(identity.name, "preferences.update", **update)
        await self._record(identity, patch)
        return await self.read(identity)

    async def _record(self, identity: Identity, patch: Mapping[str, Any]) -> None:
        """A settings change is interaction analytics: kept if the person
        consented (their choice as stored now, this change included)."""
        changed = {key: sorted(patch[key]) for key in PATCH_KEYS if key in patch}
        try:
            await self.recorder.record(identity, CHANGE_ACTION, {"changed": changed})
        except Exception:
            self._log.failure(
                "could not record a preferences change of {person}", person=identity.name
            )

    async def _voice_changes(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        if values is None:
            return {}
        for key in values:
            if key not in VOICE_KEYS:
                raise PreferencesError(
                    "bad_request", f"there is no voice setting {key!r}", field=f"voice.{key}"
                )
        try:
            changes = await self.voice.check(values)
        except ClientError as e:
            code = "unavailable" if e.code == "unavailable" else "invalid"
            field = e.extra.get("field")
            extra = {"field": f"voice.{field}"} if field else {"field": "voice"}
            raise PreferencesError(code, e.message, **extra) from None
        return {key: value for key, value in changes.items() if value is not None}

    async def _settings_changes(
        self, identity: Identity, values: Mapping[str, Any] | None
    ) -> dict[str, dict[str, Any]]:
        """The sections to change, checked as ``settings.set`` checks them."""
        if values is None:
            return {}
        changes: dict[str, dict[str, Any]] = {}
        for name, section_values in values.items():
            section = SECTIONS.get(name) if isinstance(name, str) else None
            field = f"settings.{name}"
            if section is None:
                known = ", ".join(repr(n) for n in SECTIONS)
                raise PreferencesError(
                    "bad_request", f"'settings' sections are {known}", field=field
                )
            await self._require(identity, section.feature, field)
            if not isinstance(section_values, Mapping):
                raise PreferencesError("bad_request", f"'{field}' must be an object", field=field)
            changes[name] = _checked_section(section, section_values)
            if name == "binaural" and section_values.get("pattern", "") != "":
                await self._require(identity, PATTERN_FEATURE, f"{field}.pattern")
        return changes

    async def _require(self, identity: Identity, feature: str, field: str) -> None:
        try:
            await self.gates.require(identity, feature)
        except ClientError as e:
            raise PreferencesError(e.code, e.message, field=field, **e.extra) from None


def notifications_of(stored: Any) -> dict[str, bool]:
    """The switches in effect: what was chosen, the defaults for the rest."""
    switches = dict(NOTIFICATION_DEFAULTS)
    if isinstance(stored, Mapping):
        for key in switches:
            if isinstance(stored.get(key), bool):
                switches[key] = stored[key]
    return switches


def privacy_of(stored: Any) -> dict[str, Any]:
    """``{analytics, decided_at}``; both None before the person chose."""
    if isinstance(stored, Mapping) and isinstance(stored.get("analytics"), bool):
        decided_at = stored.get("decided_at")
        return {
            "analytics": stored["analytics"],
            "decided_at": decided_at if isinstance(decided_at, (int, float)) else None,
        }
    return {"analytics": None, "decided_at": None}


def _switches(values: Mapping[str, Any] | None) -> dict[str, bool] | None:
    if values is None:
        return None
    for key, value in values.items():
        field = f"notifications.{key}"
        if key not in NOTIFICATION_DEFAULTS:
            known = ", ".join(NOTIFICATION_DEFAULTS)
            raise PreferencesError(
                "bad_request", f"the notification switches are {known}", field=field
            )
        if not isinstance(value, bool):
            raise PreferencesError("invalid", f"'{field}' must be true or false", field=field)
    return dict(values)


def _analytics(values: Mapping[str, Any] | None) -> bool | None:
    if values is None:
        return None
    for key in values:
        if key != "analytics":
            raise PreferencesError(
                "bad_request",
                "'privacy' takes only 'analytics' (the server sets 'decided_at')",
                field=f"privacy.{key}",
            )
    value = values.get("analytics")
    if not isinstance(value, bool):
        raise PreferencesError(
            "invalid", "'privacy.analytics' must be true or false", field="privacy.analytics"
        )
    return value


def _checked_section(section: Section, values: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        field = f"settings.{section.name}.{key}"
        setting = section.setting(key) if isinstance(key, str) else None
        if setting is None:
            raise PreferencesError(
                "bad_request", f"there is no setting {key!r} in {section.name}", field=field
            )
        problem = setting.problem(value)
        if problem is not None:
            raise PreferencesError("invalid", f"{section.name}: {problem}", field=field)
    return dict(values)


def _merged_sections(changes: Mapping[str, Mapping[str, Any]]) -> Callable[[Any], Any]:
    def change(stored: Any) -> dict[str, Any]:
        sections = dict(stored) if isinstance(stored, Mapping) else {}
        for name, values in changes.items():
            before = sections.get(name)
            sections[name] = {**(dict(before) if isinstance(before, Mapping) else {}), **values}
        return sections

    return change


def _merged_switches(changes: Mapping[str, bool]) -> Callable[[Any], Any]:
    def change(stored: Any) -> dict[str, Any]:
        chosen = dict(stored) if isinstance(stored, Mapping) else {}
        return {**chosen, **changes}

    return change
