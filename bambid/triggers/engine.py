"""The trigger engine: the catalog in effect, each person's consent, detection
in companion replies and public chat, and firing the actions.

Catalog. ``LoadedCatalog`` is a ``Catalog`` with its ``Matcher`` and the
triggers whose audio file exists under ``web/static/audio/triggers/``
(``read_catalog``, blocking). The engine starts with one (``version`` 1);
``reload()`` reads the file again in a thread: on success the new one takes
effect at once, ``version`` goes up by one and every connection gets
``triggers.catalog {version}``; on a ``CatalogError`` the old one stays (the
error is logged and raised to the caller, naming the entry). Replies being
scanned finish with the catalog they started with.

Consent. Nothing fires for a person who has not switched that trigger on.
A person's selection is ``Profile.preferences["triggers"] = {"enabled":
[keys]}`` for accounts (the other preference keys are kept), in memory for
guests (for the life of their guest name); it is empty below the level that
unlocks ``triggers`` (guests are level 0). Selections of connected people are
cached (dropped when their last connection closes). Keys no longer in the
catalog are dropped lazily: when a selection is read, and then stored so.

Detection. ``begin(identity, reply_id)`` is a companion reply observer
(``bambid.ai.companion.ReplyObserverFactory``): it scans the streamed reply
with ``Matcher.stream(only=enabled)`` (phrases split across deltas are found)
and fires each match for the person (``source`` "ai"; frames to every tab).
``message_published(message)`` is a hub ``after_publish`` listener: a public
chat message (kind ``message``) is scanned once; when it holds any phrase,
each person with a connection in the room gets the matches of
``Matcher.scan(text, only=their enabled)`` (``source`` "chat"; frames to
their connections in that room). Scanning per selection, not filtering one
scan, is what the detector's ``only`` is for: a longer phrase that someone
has not switched on must not hide a shorter one they have.

Firing. A trigger fires at most once per person per
``triggers.fire_cooldown_seconds`` (clock injected). Each action is called in
order with a ``FireContext``; a failure (exception or failed Deferred) is
logged with the action's name and stops neither the others nor the reply.
``stop()`` waits for the actions still running. ``after_fire`` listeners are
called with each firing's ``FireContext`` (once per firing, not per action;
the usage stats count them); one that raises is logged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.ai.persona import PersonaTrigger
from bambid.chat.hub import ChatHub, Prepare
from bambid.config import TriggersConfig
from bambid.identity import Identity
from bambid.models import ChatMessage
from bambid.profiles.gates import Gates
from bambid.storage import Storage
from bambid.triggers.actions import FireContext, ITriggerAction
from bambid.triggers.catalog import Catalog, Trigger, load_catalog
from bambid.triggers.detect import Match, Matcher, StreamScanner
from bambid.ws.dispatch import Connection

#: The key in ``Profile.preferences``.
PREFERENCES_KEY = "triggers"
#: The gated feature (``xp.unlocks``).
FEATURE = "triggers"
#: Where a trigger's cue is served when it has no file (docs/api.md).
SYNTHESISED_URL = "/audio/triggers/{key}"
STATIC_URL = "/static/audio/triggers/{file}"

#: ``in_thread(f)``: run the blocking ``f`` off the reactor thread.
InThread = Callable[[Callable[[], "LoadedCatalog"]], "Deferred[LoadedCatalog]"]


@attrs.frozen
class LoadedCatalog:
    """A catalog ready for use: its matcher, and the keys of the triggers whose
    audio file exists (the others' cue is synthesised)."""

    catalog: Catalog
    matcher: Matcher
    with_files: frozenset[str]
    keys: frozenset[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "keys", frozenset(self.catalog.keys()))

    def audio_url(self, trigger: Trigger) -> str:
        """The URL of the trigger's cue: its static file when it exists, else
        ``/audio/triggers/<key>`` (synthesised on first use)."""
        if trigger.key in self.with_files:
            return STATIC_URL.format(file=trigger.audio)
        return SYNTHESISED_URL.format(key=trigger.key)

    def in_order(self, keys: Iterable[str]) -> list[str]:
        """``keys`` that are in the catalog, in catalog order."""
        wanted = set(keys)
        return [t.key for t in self.catalog.triggers if t.key in wanted]


def read_catalog(path: Path, audio_dir: Path) -> LoadedCatalog:
    """Load and validate ``path`` (``CatalogError``), compile its matcher and
    look for the audio files in ``audio_dir``. Blocking."""
    catalog = load_catalog(path)
    matcher = Matcher(catalog.phrases())
    with_files = frozenset(
        t.key for t in catalog.triggers if t.audio and (audio_dir / t.audio).is_file()
    )
    return LoadedCatalog(catalog, matcher, with_files)


class TriggerEngine:
    """See the module doc."""

    _log = Logger()

    def __init__(
        self,
        loaded: LoadedCatalog,
        *,
        path: Path,
        audio_dir: Path,
        config: TriggersConfig,
        storage: Storage,
        clock: IReactorTime,
        hub: ChatHub,
        gates: Gates,
        actions: Sequence[ITriggerAction],
        connections: Callable[[], Iterable[Connection]],
        prepare: Prepare,
        in_thread: InThread,
    ) -> None:
        self.loaded = loaded
        self.version = 1
        self.path = path
        self.audio_dir = audio_dir
        self.config = config
        self.storage = storage
        self.clock = clock
        self.hub = hub
        self.gates = gates
        self.actions = list(actions)
        self.connections = connections
        self.prepare = prepare
        self.in_thread = in_thread
        self._selections: dict[str, frozenset[str]] = {}  # connected people
        self._guests: dict[str, frozenset[str]] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._fired: dict[tuple[str, str], float] = {}
        self._next_sweep = 0.0
        self._pending: set[Deferred[Any]] = set()
        self._reloading = DeferredLock()
        #: Called with the ``FireContext`` of each firing (see the module doc).
        self.after_fire: list[Callable[[FireContext], object]] = []

    @property
    def catalog(self) -> Catalog:
        return self.loaded.catalog

    # -- reloading -------------------------------------------------------------------------

    async def reload(self) -> LoadedCatalog:
        """Read the catalog file again (see the module doc). Raises the
        ``CatalogError`` (old catalog kept) or any other failure to read it."""
        async with self._reloading:
            try:
                loaded = await self.in_thread(
                    functools.partial(read_catalog, self.path, self.audio_dir)
                )
            except Exception as e:
                self._log.error(
                    "the trigger catalog {path} was not reloaded (version {version} stays): "
                    "{error}",
                    path=str(self.path),
                    version=self.version,
                    error=str(e),
                )
                raise
            self.loaded = loaded
            self.version += 1
            self._log.info(
                "trigger catalog {path} reloaded: version {version}, {count} triggers",
                path=str(self.path),
                version=self.version,
                count=len(loaded.catalog),
            )
            frame = self.prepare("triggers.catalog", version=self.version)
            for connection in list(self.connections()):
                connection.send_prepared(frame)
            return loaded

    # -- consent -----------------------------------------------------------------------------

    def _lock(self, identity: Identity) -> DeferredLock:
        return self._locks.setdefault(identity.key, DeferredLock())

    def _release(self, identity: Identity) -> None:
        lock = self._locks.get(identity.key)
        if lock is not None and not lock.locked and not lock.waiting:
            del self._locks[identity.key]

    def _connected(self, identity: Identity) -> bool:
        return bool(self.hub.connections_of(identity.name))

    async def enabled(self, identity: Identity) -> frozenset[str]:
        """The keys the person has switched on that are in the catalog now
        (empty below the level of ``triggers``)."""
        keys = self.loaded.keys
        if identity.guest:
            if self.gates.level_needed(FEATURE) > 0:
                return frozenset()
            return self._guests.get(identity.key, frozenset()) & keys
        selection = self._selections.get(identity.key)
        if selection is not None and selection <= keys:
            return selection
        try:
            async with self._lock(identity):
                selection = self._selections.get(identity.key)
                if selection is None:
                    selection, stored = await self._read(identity)
                else:
                    stored = True
                current = selection & keys
                if current != selection and stored:
                    await self._store(identity, current)  # keys that disappeared
                if self._connected(identity):
                    self._selections[identity.key] = current
                return current
        finally:
            self._release(identity)

    async def _read(self, identity: Identity) -> tuple[frozenset[str], bool]:
        """The stored selection, and whether it is what is stored (False: the
        person is below the level, so nothing counts but nothing is dropped)."""
        profile = await self.storage.get_profile(identity.name)
        if profile is None:
            return frozenset(), False
        needed = self.gates.level_needed(FEATURE)
        if needed and self.gates.xp.table.level_for(profile.xp) < needed:
            return frozenset(), False
        stored = profile.preferences.get(PREFERENCES_KEY)
        listed = stored.get("enabled") if isinstance(stored, dict) else None
        if not isinstance(listed, list):
            return frozenset(), False
        return frozenset(k for k in listed if isinstance(k, str)), True

    async def _store(self, identity: Identity, keys: frozenset[str]) -> None:
        await self.storage.ensure_profile(identity.name, self.clock.seconds())
        stored = {"enabled": self.loaded.in_order(keys)}
        await self.storage.set_preference(identity.name, PREFERENCES_KEY, stored)

    async def set_enabled(self, identity: Identity, keys: Iterable[str]) -> frozenset[str]:
        """Replace the person's selection (the caller has checked the level and
        that every key is in the catalog); the selection now in effect."""
        selection = frozenset(keys) & self.loaded.keys
        if identity.guest:
            self._guests[identity.key] = selection
            return selection
        try:
            async with self._lock(identity):
                await self._store(identity, selection)
                if self._connected(identity):
                    self._selections[identity.key] = selection
                else:
                    self._selections.pop(identity.key, None)
        finally:
            self._release(identity)
        return selection

    async def persona_triggers(self, identity: Identity) -> list[PersonaTrigger]:
        """The switched-on triggers as the persona template sees them, in
        catalog order."""
        enabled = await self.enabled(identity)
        return [
            PersonaTrigger(t.name, t.description) for t in self.catalog.triggers if t.key in enabled
        ]

    def connection_closed(self, connection: Connection) -> None:
        """A close listener (after the hub's ``forget``): the cached
        selection of a person goes with their last connection (a guest's
        selection with it)."""
        identity = connection.identity
        if identity is None or self._connected(identity):
            return
        self._selections.pop(identity.key, None)
        self._guests.pop(identity.key, None)

    # -- detection ----------------------------------------------------------------------------

    async def begin(self, identity: Identity, reply_id: str) -> ReplyTriggers | None:
        """A reply observer for the companion: None when the person has
        nothing switched on."""
        enabled = await self.enabled(identity)
        if not enabled:
            return None
        loaded = self.loaded
        return ReplyTriggers(self, identity, reply_id, loaded, loaded.matcher.stream(enabled))

    def message_published(self, message: ChatMessage) -> None:
        """A hub ``after_publish`` listener (see the module doc)."""
        if message.message_type != "user" or message.deleted or not message.text:
            return
        scanning = Deferred.fromCoroutine(self._scan_chat(message))
        scanning.addErrback(
            lambda f: self._log.failure(
                "scanning chat message {id} for triggers", f, id=message.message_id
            )
        )
        self._track(scanning)

    async def _scan_chat(self, message: ChatMessage) -> None:
        loaded = self.loaded
        text = message.text
        if not loaded.matcher.scan(text):
            return  # no phrase at all: no selection can find one
        room = self.hub.rooms.get(message.room)
        if room is None:
            return
        people: dict[str, Identity] = {}
        for connection in list(room.members):
            identity = self.hub.identity_of(connection)
            if identity is not None:
                people.setdefault(identity.key, identity)
        found: dict[frozenset[str], list[str]] = {}
        for identity in people.values():
            enabled = await self.enabled(identity)
            if not enabled:
                continue
            keys = found.get(enabled)
            if keys is None:
                matches = loaded.matcher.scan(text, only=enabled)
                keys = found[enabled] = list(dict.fromkeys(m.key for m in matches))
            for key in keys:
                trigger = loaded.catalog.get(key)
                if trigger is None:
                    continue
                self.fire(
                    identity,
                    trigger,
                    loaded.audio_url(trigger),
                    self._room_sender(identity, message.room),
                    source="chat",
                    room=message.room,
                    message_id=message.message_id,
                    from_name=message.username,
                )

    def _room_sender(self, identity: Identity, room: str) -> Callable[..., None]:
        def send(type: str, **fields: Any) -> None:
            for connection in self.hub.connections_of(identity.name):
                if self.hub.is_member(connection, room):
                    connection.send(type, **fields)

        return send

    def _person_sender(self, identity: Identity) -> Callable[..., None]:
        def send(type: str, **fields: Any) -> None:
            self.hub.send_to_person(identity.name, type, **fields)

        return send

    # -- firing --------------------------------------------------------------------------------

    def fire(
        self,
        identity: Identity,
        trigger: Trigger,
        audio_url: str,
        send: Callable[..., object],
        *,
        source: str,
        **where: Any,
    ) -> bool:
        """Run every action for one firing, unless the trigger fired for the
        person less than ``fire_cooldown_seconds`` ago. True if it fired."""
        now = self.clock.seconds()
        self._sweep(now)
        key = (identity.key, trigger.key)
        last = self._fired.get(key)
        if last is not None and now - last < self.config.fire_cooldown_seconds:
            return False
        self._fired[key] = now
        context = FireContext(identity, trigger, source, audio_url, self.clock, send, **where)
        for action in self.actions:
            name = getattr(action, "name", type(action).__name__)
            running: Deferred[None] = defer.maybeDeferred(action.fire, context)
            running.addErrback(self._action_failed, name, context)
            self._track(running)
        for listener in self.after_fire:
            try:
                listener(context)
            except Exception:
                self._log.failure("after firing {key}", key=trigger.key)
        return True

    def _action_failed(self, failure: Failure, name: str, context: FireContext) -> None:
        self._log.failure(
            "trigger action {action} failed ({key} for {person}, {source})",
            failure,
            action=name,
            key=context.trigger.key,
            person=context.identity.name,
            source=context.source,
        )

    def _sweep(self, now: float) -> None:
        """Forget firings older than the cooldown, once per cooldown."""
        if now < self._next_sweep:
            return
        cooldown = self.config.fire_cooldown_seconds
        self._next_sweep = now + max(cooldown, 1.0)
        for key in [k for k, t in self._fired.items() if now - t >= cooldown]:
            del self._fired[key]

    def _track(self, running: Deferred[Any]) -> None:
        if running.called:
            return
        self._pending.add(running)
        running.addBoth(self._untrack, running)

    def _untrack(self, result: object, running: Deferred[Any]) -> None:
        self._pending.discard(running)

    async def idle(self) -> None:
        """Wait until the actions and chat scans running now are over."""
        while self._pending:
            await defer.DeferredList(list(self._pending), consumeErrors=True)

    async def stop(self) -> None:
        """At shutdown, before storage closes: wait for the running actions."""
        await self.idle()


class ReplyTriggers:
    """Scans one companion reply as it streams and fires what it finds for
    the person (a ``ReplyObserver``; never raises)."""

    _log = Logger()

    def __init__(
        self,
        engine: TriggerEngine,
        identity: Identity,
        reply_id: str,
        loaded: LoadedCatalog,
        scanner: StreamScanner,
    ) -> None:
        self.engine = engine
        self.identity = identity
        self.reply_id = reply_id
        self.loaded = loaded
        self.scanner = scanner
        self.done = False
        self._send = engine._person_sender(identity)

    def feed(self, text: str) -> None:
        if self.done:
            return
        try:
            self._found(self.scanner.feed(text))
        except Exception:
            self._log.failure("trigger detection in reply {id} failed", id=self.reply_id)
            self.done = True

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self._found(self.scanner.flush())
        except Exception:
            self._log.failure("trigger detection in reply {id} failed", id=self.reply_id)

    def cancel(self) -> None:
        self.done = True

    def _found(self, matches: list[Match]) -> None:
        for match in matches:
            trigger = self.loaded.catalog.get(match.key)
            if trigger is None:
                continue
            self.engine.fire(
                self.identity,
                trigger,
                self.loaded.audio_url(trigger),
                self._send,
                source="ai",
                reply_id=self.reply_id,
            )
