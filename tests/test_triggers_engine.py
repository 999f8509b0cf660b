"""The trigger engine on its own: real SQLite, a real hub with in-memory
connections, a ``task.Clock`` and recording actions. Consent and its storage,
the cooldown, detection in streamed replies and in chat (per recipient), the
persona hook, reload and failure isolation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from zope.interface import implementer

from bambid.ai.persona import PersonaTrigger
from bambid.chat.hub import ChatHub
from bambid.chat.links import LinkChecker
from bambid.config import ChatConfig, TriggersConfig, XPConfig
from bambid.identity import Identity
from bambid.models import ChatMessage
from bambid.profiles.gates import Gates
from bambid.profiles.xp import XpService, XpTable
from bambid.storage.sqlite import SQLiteStorage
from bambid.triggers.actions import FireContext, ITriggerAction
from bambid.triggers.catalog import CatalogError
from bambid.triggers.engine import (
    PREFERENCES_KEY,
    LoadedCatalog,
    TriggerEngine,
    read_catalog,
)
from bambid.triggers.handlers import audio_directory, catalog_path
from tests.chatsupport import FakeConnection, prepare

SHIPPED = catalog_path("", Path("."))
LEVELS = XPConfig(levels=[10, 20], unlocks=["triggers", "collar"])


def write_catalog(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"version": 1, "triggers": list(entries)}))
    return path


def entry(name: str, *aliases: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "aliases": list(aliases),
        "description": f"About {name.lower()}.",
        "category": "relaxation",
        **more,
    }


@implementer(ITriggerAction)
@attrs.define
class Recording:
    """Records each context; ``result`` decides what ``fire`` does."""

    name: str = "recording"
    fired: list[FireContext] = attrs.Factory(list)
    result: str = "ok"  # "ok" | "raise" | "fail" | "hang"
    hanging: list[Deferred[None]] = attrs.Factory(list)

    def fire(self, context: FireContext) -> Deferred[None]:
        self.fired.append(context)
        if self.result == "raise":
            raise RuntimeError(f"{self.name} broke")
        if self.result == "fail":
            return defer.fail(RuntimeError(f"{self.name} failed"))
        if self.result == "hang":
            waiting: Deferred[None] = Deferred()
            self.hanging.append(waiting)
            return waiting
        return defer.succeed(None)

    @property
    def keys(self) -> list[str]:
        return [c.trigger.key for c in self.fired]


@attrs.define
class Setup:
    engine: TriggerEngine
    hub: ChatHub
    clock: Clock
    storage: SQLiteStorage
    actions: list[Recording]
    everyone: list[FakeConnection]

    async def person(self, name: str, xp: int = 10, rooms: tuple[str, ...] = ()) -> Identity:
        """A connected account with ``xp`` (level 1 from 10)."""
        identity = Identity(name)
        await self.storage.ensure_profile(name, 0.0)
        if xp:
            await self.storage.add_xp(name, xp)
        await self.connect(identity, rooms)
        return identity

    async def connect(self, identity: Identity, rooms: tuple[str, ...] = ()) -> FakeConnection:
        connection = FakeConnection(identity)
        assert self.hub.register(connection, identity)
        for room in rooms:
            await self.hub.join(connection, room)
        connection.take()
        self.everyone.append(connection)
        return connection

    def tab(self, identity: Identity) -> FakeConnection:
        found = self.hub.connections_of(identity.name)[0]
        assert isinstance(found, FakeConnection)
        return found


@pytest_twisted.async_yield_fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    db = SQLiteStorage(tmp_path / "triggers.sqlite3", IReactorFromThreads(reactor))
    await db.open()
    yield db
    await db.close()


def in_thread(read: Any) -> Deferred[LoadedCatalog]:
    return threads.deferToThread(read)


async def make(
    storage: SQLiteStorage,
    path: Path = SHIPPED,
    actions: list[Recording] | None = None,
    cooldown: float = 60.0,
    xp: XPConfig = LEVELS,
) -> Setup:
    clock = Clock()
    chat_config = ChatConfig(rooms=["lobby", "other"])
    hub = ChatHub(storage, clock, chat_config, prepare, LinkChecker([]))
    await hub.start()
    service = XpService(storage, clock, XpTable.from_config(xp), xp, hub.send_to_person)
    actions = [Recording()] if actions is None else actions
    everyone: list[FakeConnection] = []
    engine = TriggerEngine(
        read_catalog(path, audio_directory()),
        path=path,
        audio_dir=audio_directory(),
        config=TriggersConfig(catalog_file=str(path), fire_cooldown_seconds=cooldown),
        storage=storage,
        clock=clock,
        hub=hub,
        gates=Gates(service),
        actions=actions,
        connections=lambda: list(everyone),
        prepare=prepare,
        in_thread=in_thread,
    )
    return Setup(engine, hub, clock, storage, actions, everyone)


def chat(text: str, by: str = "Bob", room: str = "lobby", seq: int = 1) -> ChatMessage:
    return ChatMessage(f"m{seq}", room, seq, by, text, 1.0)


# -- consent ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_selection_is_stored_in_the_profile_beside_other_preferences(
    storage: SQLiteStorage,
) -> None:
    s = await make(storage)
    ada = await s.person("Ada")
    await storage.update_profile("Ada", {"preferences": {"voice": {"enabled": True}}})
    assert await s.engine.enabled(ada) == frozenset()
    chosen = await s.engine.set_enabled(ada, ["let-go", "deep-breath"])
    assert chosen == {"let-go", "deep-breath"}
    profile = await storage.get_profile("Ada")
    assert profile is not None
    assert profile.preferences == {
        "voice": {"enabled": True},
        PREFERENCES_KEY: {"enabled": ["deep-breath", "let-go"]},  # catalog order
    }
    # A fresh engine (a restart) reads it back.
    again = await make(storage)
    await again.connect(ada)
    assert await again.engine.enabled(ada) == {"let-go", "deep-breath"}
    assert await again.engine.persona_triggers(ada) == [
        PersonaTrigger("Deep Breath", again.engine.catalog.get("deep-breath").description),  # type: ignore[union-attr]
        PersonaTrigger("Let Go", again.engine.catalog.get("let-go").description),  # type: ignore[union-attr]
    ]


@pytest_twisted.ensureDeferred
async def test_below_the_level_and_for_guests_nothing_is_enabled(storage: SQLiteStorage) -> None:
    s = await make(storage)
    low = await s.person("Low", xp=5)
    await storage.update_profile("Low", {"preferences": {PREFERENCES_KEY: {"enabled": ["let-go"]}}})
    assert await s.engine.enabled(low) == frozenset()
    assert await s.engine.begin(low, "r1") is None
    guest = Identity("Visitor", guest=True)
    await s.connect(guest)
    assert await s.engine.enabled(guest) == frozenset()
    assert await s.engine.persona_triggers(guest) == []
    # The stored selection was not dropped: it counts once the level is reached.
    await storage.add_xp("Low", 5)
    fresh = await make(storage)
    await fresh.connect(low)
    assert await fresh.engine.enabled(low) == {"let-go"}


@pytest_twisted.ensureDeferred
async def test_guests_keep_a_selection_in_memory_when_triggers_are_not_gated(
    storage: SQLiteStorage,
) -> None:
    s = await make(storage, xp=XPConfig(levels=[10], unlocks=["collar"]))
    guest = Identity("Visitor", guest=True)
    tab = await s.connect(guest)
    await s.engine.set_enabled(guest, ["reset"])
    assert await s.engine.enabled(guest) == {"reset"}
    assert await storage.get_profile("Visitor") is None
    s.hub.forget(tab)
    s.engine.connection_closed(tab)
    assert await s.engine.enabled(guest) == frozenset()


# -- detection and firing ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_streamed_reply_fires_enabled_triggers_across_deltas(
    storage: SQLiteStorage,
) -> None:
    s = await make(storage)
    ada = await s.person("Ada")
    await s.engine.set_enabled(ada, ["deep-breath", "let-go"])
    observer = await s.engine.begin(ada, "r1")
    assert observer is not None
    for piece in ["Take a de", "ep BRE", "ath. Now sit tall", " and let", " go"]:
        observer.feed(piece)
    assert s.actions[0].keys == ["deep-breath"]  # "let go" may still go on
    observer.finish()
    assert s.actions[0].keys == ["deep-breath", "let-go"]  # "sit tall" is not enabled
    context = s.actions[0].fired[0]
    assert (context.source, context.reply_id, context.identity) == ("ai", "r1", ada)
    assert context.audio_url == "/static/audio/triggers/deep-breath.mp3"
    assert context.origin == {"source": "ai", "reply_id": "r1"}
    # send goes to every tab of the person
    other = await s.connect(ada)
    context.send("trigger.fired", key="deep-breath")
    assert s.tab(ada).of("trigger.fired") and other.of("trigger.fired")


@pytest_twisted.ensureDeferred
async def test_a_trigger_fires_once_per_person_per_cooldown(storage: SQLiteStorage) -> None:
    s = await make(storage, cooldown=60.0)
    ada = await s.person("Ada")
    bob = await s.person("Bob")
    for person in (ada, bob):
        await s.engine.set_enabled(person, ["let-go", "reset"])

    async def reply(person: Identity, text: str) -> None:
        observer = await s.engine.begin(person, "r")
        assert observer is not None
        observer.feed(text)
        observer.finish()

    await reply(ada, "Let go. Let go again, reset, and let go.")
    assert s.actions[0].keys == ["let-go", "reset"]
    await reply(bob, "let go")  # someone else: their own cooldown
    s.clock.advance(59)
    await reply(ada, "let go, reset")
    assert s.actions[0].keys == ["let-go", "reset", "let-go"]
    s.clock.advance(1)
    await reply(ada, "let go, reset")
    assert s.actions[0].keys == ["let-go", "reset", "let-go", "let-go", "reset"]


@pytest_twisted.ensureDeferred
async def test_a_stopped_reply_fires_nothing_more(storage: SQLiteStorage) -> None:
    s = await make(storage)
    ada = await s.person("Ada")
    await s.engine.set_enabled(ada, ["let-go"])
    observer = await s.engine.begin(ada, "r1")
    assert observer is not None
    observer.feed("let go")  # waits: "let go" might be "let go-kart"
    observer.cancel()
    observer.finish()
    observer.feed(" now let go ")
    assert s.actions[0].fired == []


@pytest_twisted.ensureDeferred
async def test_chat_fires_per_recipient_with_their_own_selection(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    path = write_catalog(
        tmp_path / "catalog.json", entry("Let Go"), entry("Let Go Now"), entry("Calm")
    )
    s = await make(storage, path)
    short = await s.person("Short", rooms=("lobby",))
    long = await s.person("Long", rooms=("lobby",))
    none = await s.person("None", rooms=("lobby",))
    elsewhere = await s.person("Elsewhere", rooms=("other",))
    await s.engine.set_enabled(short, ["let-go"])
    await s.engine.set_enabled(long, ["let-go-now", "calm"])
    await s.engine.set_enabled(elsewhere, ["let-go"])
    # Short's second tab is not in the room: it gets nothing.
    away = await s.connect(short)
    s.engine.message_published(chat("time to LET GO NOW, stay calm", by="Bob", seq=7))
    await s.engine.idle()
    fired = {(c.identity.name, c.trigger.key) for c in s.actions[0].fired}
    assert fired == {("Short", "let-go"), ("Long", "let-go-now"), ("Long", "calm")}
    assert none not in {c.identity for c in s.actions[0].fired}
    context = next(c for c in s.actions[0].fired if c.identity == short)
    assert context.origin == {"source": "chat", "room": "lobby", "message_id": "m7", "from": "Bob"}
    (in_room,) = [c for c in s.hub.connections_of("Short") if c is not away]
    context.send("effect.flash", text="Let Go")
    assert in_room.of("effect.flash") == [{"type": "effect.flash", "text": "Let Go"}]  # type: ignore[attr-defined]
    assert away.of("effect.flash") == []


@pytest_twisted.ensureDeferred
async def test_only_people_s_messages_are_scanned(storage: SQLiteStorage) -> None:
    s = await make(storage)
    ada = await s.person("Ada", rooms=("lobby",))
    await s.engine.set_enabled(ada, ["let-go"])
    notice = attrs.evolve(chat("let go"), message_type="notice")
    s.engine.message_published(notice)
    s.engine.message_published(attrs.evolve(chat("let go", seq=2), deleted=True))
    await s.engine.idle()
    assert s.actions[0].fired == []
    s.engine.message_published(chat("let go", seq=3))
    await s.engine.idle()
    assert s.actions[0].keys == ["let-go"]


@pytest_twisted.ensureDeferred
async def test_a_failing_action_stops_neither_the_others_nor_later_firings(
    storage: SQLiteStorage,
) -> None:
    raising = Recording("raising", result="raise")
    failing = Recording("failing", result="fail")
    hanging = Recording("hanging", result="hang")
    last = Recording("last")
    s = await make(storage, actions=[raising, failing, hanging, last])
    ada = await s.person("Ada")
    await s.engine.set_enabled(ada, ["let-go", "reset"])
    observer = await s.engine.begin(ada, "r1")
    assert observer is not None
    observer.feed("let go and reset ")
    observer.finish()
    for action in (raising, failing, hanging, last):
        assert action.keys == ["let-go", "reset"], action.name
    stopping = Deferred.fromCoroutine(s.engine.stop())
    assert not stopping.called  # waits for the hanging action
    for waiting in hanging.hanging:
        waiting.callback(None)
    await stopping


# -- the catalog changes ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reload_bumps_the_version_and_tells_every_connection(
    storage: SQLiteStorage, tmp_path: Path
) -> None:
    path = write_catalog(tmp_path / "catalog.json", entry("Let Go"), entry("Calm"))
    s = await make(storage, path)
    ada = await s.person("Ada")
    anonymous = FakeConnection()
    s.everyone.append(anonymous)
    await s.engine.set_enabled(ada, ["let-go", "calm"])
    observer = await s.engine.begin(ada, "r1")  # started with version 1

    write_catalog(path, entry("Calm"), entry("Rest", audio="nowhere.mp3"))
    loaded = await s.engine.reload()
    assert s.engine.version == 2
    assert loaded.catalog.keys() == ("calm", "rest")
    for connection in s.everyone:
        assert connection.of("triggers.catalog") == [{"type": "triggers.catalog", "version": 2}]
    # A file that is named but missing: the cue is synthesised.
    assert loaded.audio_url(loaded.catalog.get("rest")) == "/audio/triggers/rest"  # type: ignore[arg-type]
    # "let-go" is gone: dropped when read, and stored so.
    assert await s.engine.enabled(ada) == {"calm"}
    profile = await storage.get_profile("Ada")
    assert profile is not None and profile.preferences[PREFERENCES_KEY] == {"enabled": ["calm"]}
    # The reply that began before goes on with its catalog.
    assert observer is not None
    observer.feed("let go ")
    assert s.actions[0].keys == ["let-go"]

    write_catalog(path, entry("Calm"), entry("calm"))
    with pytest.raises(CatalogError) as caught:
        await s.engine.reload()
    assert caught.value.where == "triggers[1].name"
    assert s.engine.version == 2 and s.engine.catalog.keys() == ("calm", "rest")
    assert [len(c.of("triggers.catalog")) for c in s.everyone] == [1] * len(s.everyone)


def test_a_broken_catalog_names_the_entry(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "bad.json", entry("Calm"), {"name": "Rest"})
    with pytest.raises(CatalogError, match=r"triggers\[1\]\.description: missing"):
        read_catalog(path, audio_directory())
