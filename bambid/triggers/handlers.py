"""The WebSocket handlers of triggers, and the object that builds and holds
the trigger parts (``TriggerServices``).

Registered types (docs/protocol.md, "Triggers and effects"):

- ``triggers.get`` → ``triggers.state {id, enabled, catalog_version}``;
  anyone may ask (``enabled`` is empty for anonymous connections and below
  the level of ``triggers``).
- ``triggers.set {enabled}``: a signed-in person (``unauthenticated``) who
  has reached ``triggers`` (``level_required``); ``enabled`` a list of
  catalog keys without duplicates (``bad_request`` otherwise, naming the
  key). Stored; ``ack``, then ``triggers.state`` (without ``id``) to every
  tab of the person; ``xp.trigger_selection`` XP at most once a minute.

``TriggerServices.build`` reads the catalog (``triggers.catalog_file``, or the
packaged ``etc/triggers.json``; a relative path is taken from the base
directory) and builds the actions of ``triggers.actions``; a broken catalog
or an unknown action is a ``ConfigError``, so the daemon does not start.
``reload()`` serves SIGHUP (``reload_from_signal``) and the admin command
``reload-triggers`` (``reload_command``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.chat.hub import ChatHub, Prepare
from bambid.config import Config, ConfigError
from bambid.identity import Identity
from bambid.profiles.gates import Gates
from bambid.profiles.xp import XpService
from bambid.storage import Storage
from bambid.triggers.actions import ActionServices, load_actions
from bambid.triggers.catalog import MAX_TRIGGERS, CatalogError
from bambid.triggers.engine import FEATURE, LoadedCatalog, TriggerEngine, read_catalog
from bambid.web.assets import assets_dir
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

SETTING = "triggers.catalog_file"
PACKAGED_NAME = "triggers.json"
#: Seconds between two ``xp.trigger_selection`` awards of one person.
SELECTION_AWARD_INTERVAL = 60.0
MAX_KEY_LENGTH = 100


def catalog_path(setting: str, base_dir: Path) -> Path:
    """The catalog file: ``setting`` (relative to ``base_dir`` unless
    absolute), or the packaged ``etc/triggers.json`` when empty."""
    if not setting:
        return Path(str(files("bambid.etc") / PACKAGED_NAME))
    path = Path(setting).expanduser()
    return path if path.is_absolute() else base_dir / path


def audio_directory() -> Path:
    """Where the catalog's audio files are: the installed
    ``static/audio/triggers/`` (served as ``/static/audio/triggers/``)."""
    return assets_dir() / "static" / "audio" / "triggers"


def _ack(connection: Connection, message: Mapping[str, Any], **fields: Any) -> None:
    if "id" in message:
        fields["id"] = message["id"]
    connection.send("ack", **fields)


class TriggerServices:
    """The engine and the handlers (see the module doc)."""

    _log = Logger()

    def __init__(
        self, engine: TriggerEngine, gates: Gates, xp: XpService, hub: ChatHub, config: Config
    ) -> None:
        self.engine = engine
        self.gates = gates
        self.xp = xp
        self.hub = hub
        self.config = config
        self.clock: IReactorTime = engine.clock
        self._selection_awards: dict[str, float] = {}

    @classmethod
    def build(
        cls,
        config: Config,
        storage: Storage,
        reactor: Any,
        hub: ChatHub,
        xp: XpService,
        connections: Callable[[], Iterable[Connection]],
        prepare: Prepare,
        base_dir: Path,
    ) -> TriggerServices:
        """Everything from ``[triggers]`` (see the module doc). ``reactor``
        gives time and the thread pool reloads read the file in."""
        path = catalog_path(config.triggers.catalog_file, base_dir)
        audio_dir = audio_directory()
        try:
            loaded = read_catalog(path, audio_dir)
        except CatalogError as e:
            raise ConfigError(SETTING, f"{path}: {e}") from None
        actions = load_actions(
            config.triggers.actions, ActionServices(storage, reactor, xp, config.xp)
        )

        def in_thread(read: Callable[[], LoadedCatalog]) -> Deferred[LoadedCatalog]:
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), read)

        gates = Gates(xp)
        engine = TriggerEngine(
            loaded,
            path=path,
            audio_dir=audio_dir,
            config=config.triggers,
            storage=storage,
            clock=reactor,
            hub=hub,
            gates=gates,
            actions=actions,
            connections=connections,
            prepare=prepare,
            in_thread=in_thread,
        )
        return cls(engine, gates, xp, hub, config)

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("triggers.get", self.get)
        dispatcher.register("triggers.set", self.set)

    async def stop(self) -> None:
        """Wait for the actions still running (before storage closes)."""
        await self.engine.stop()

    def connection_closed(self, connection: Connection) -> None:
        """For the WebSocket factory's ``close_listeners`` (after the hub's)."""
        self.engine.connection_closed(connection)

    # -- reloading ---------------------------------------------------------------------

    async def reload_command(self) -> dict[str, Any]:
        """The admin command ``reload-triggers``: ``{version, triggers}``, or
        ``bad_request`` naming the broken entry (the old catalog stays)."""
        try:
            loaded = await self.engine.reload()
        except CatalogError as e:
            raise ClientError(
                "bad_request", f"the trigger catalog was not reloaded: {e}", where=e.where
            ) from None
        return {"version": self.engine.version, "triggers": len(loaded.catalog)}

    def reload_from_signal(self) -> Deferred[None]:
        """SIGHUP: reload; a failure is logged (by the engine) and kept there."""

        async def reload() -> None:
            await self.engine.reload()

        reloading = Deferred.fromCoroutine(reload())
        reloading.addErrback(self._reload_failed)
        return reloading

    def _reload_failed(self, failure: Failure) -> None:
        if not failure.check(CatalogError):
            self._log.failure("reloading the trigger catalog failed", failure)

    # -- handlers ----------------------------------------------------------------------

    def _state(self, enabled: frozenset[str]) -> dict[str, Any]:
        return {
            "enabled": self.engine.loaded.in_order(enabled),
            "catalog_version": self.engine.version,
        }

    async def get(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = connection.identity
        enabled = await self.engine.enabled(identity) if identity is not None else frozenset()
        fields = self._state(enabled)
        if "id" in message:
            fields = {"id": message["id"], **fields}
        connection.send("triggers.state", **fields)

    async def set(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = connection.identity
        if identity is None:
            raise ClientError("unauthenticated", "sign in or join as a guest to choose triggers")
        await self.gates.require(identity, FEATURE)
        keys = self._keys(message.get("enabled"))
        enabled = await self.engine.set_enabled(identity, keys)
        _ack(connection, message)
        self.hub.send_to_person(identity.name, "triggers.state", **self._state(enabled))
        await self._award(identity)

    def _keys(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise ClientError("bad_request", "'enabled' must be a list of trigger keys")
        if len(value) > MAX_TRIGGERS:
            raise ClientError("bad_request", f"'enabled' has more than {MAX_TRIGGERS} keys")
        catalog = self.engine.catalog
        seen: set[str] = set()
        for key in value:
            if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
                raise ClientError("bad_request", "'enabled' must be a list of trigger keys")
            if key not in catalog:
                raise ClientError("bad_request", f"there is no trigger {key!r}")
            if key in seen:
                raise ClientError("bad_request", f"{key!r} is listed twice")
            seen.add(key)
        return list(value)

    async def _award(self, identity: Identity) -> None:
        """``xp.trigger_selection`` XP, at most once per
        ``SELECTION_AWARD_INTERVAL`` per person (accounts only)."""
        amount = self.config.xp.trigger_selection
        if identity.guest or amount <= 0:
            return
        now = self.clock.seconds()
        for key in [
            k for k, t in self._selection_awards.items() if now - t >= SELECTION_AWARD_INTERVAL
        ]:
            del self._selection_awards[key]
        if identity.key in self._selection_awards:
            return
        self._selection_awards[identity.key] = now
        try:
            await self.xp.award(identity, amount)
        except Exception:
            self._log.failure("could not award XP for {person}'s triggers", person=identity.name)
