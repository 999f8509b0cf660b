"""XP: the table, the per-minute cap on a clock, and awards over a real port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock

from bambid.config import XPConfig
from bambid.identity import Identity
from bambid.profiles import XpService, XpTable
from bambid.storage.sqlite import SQLiteStorage
from tests.chatsupport import add_person, chat_server, connect, expect, join, post

LOW = {"levels": [3, 6, 10], "unlocks": ["triggers", "collar", "spirals"]}


def test_the_table() -> None:
    table = XpTable.from_config(XPConfig())
    assert table.level_for(0) == 0
    assert table.level_for(999) == 0
    assert table.level_for(1000) == 1
    assert table.level_for(332000) == 8
    assert table.next_for(0) == 1000
    assert table.next_for(1000) == 2500
    assert table.next_for(10**9) is None
    assert table.progress(2600).to_json() == {"xp": 2600, "level": 2, "next": 4500}
    assert table.unlocked(2) == ["triggers", "collar"]
    assert table.unlocked(0) == []
    assert table.unlocked_between(1, 3) == ["collar", "session_history"]
    assert table.has_feature(2500, "collar") and not table.has_feature(2499, "collar")
    with pytest.raises(ValueError):
        XpTable((1, 2), ("a",))
    with pytest.raises(ValueError):
        XpTable((2, 1), ("a", "b"))


@pytest_twisted.async_yield_fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    db = SQLiteStorage(tmp_path / "xp.sqlite3", IReactorFromThreads(reactor))
    await db.open()
    yield db
    await db.close()


@pytest_twisted.ensureDeferred
async def test_chat_awards_are_capped_per_person_per_minute(storage: SQLiteStorage) -> None:
    clock = Clock()
    config = XPConfig(levels=[100], unlocks=["triggers"], chat_message=5, chat_awards_per_minute=3)
    sent: list[tuple[str, str, dict[str, Any]]] = []
    xp = XpService(
        storage,
        clock,
        XpTable.from_config(config),
        config,
        lambda n, t, **f: sent.append((n, t, f)),
    )
    ada, bob = Identity("Ada"), Identity("Bob")
    totals = []
    for _ in range(4):
        progress = await xp.award_chat_message(ada)
        totals.append(progress.xp if progress else None)
        clock.advance(10)
    assert totals == [5, 10, 15, None]
    assert (await xp.award_chat_message(bob)) is not None  # the cap is per person
    clock.advance(20)  # 60 s after the first award: one slot is free again
    assert (await xp.award_chat_message(ada)) is not None
    assert (await xp.award_chat_message(ada)) is None
    assert (await storage.get_profile("Ada")).xp == 20  # type: ignore[union-attr]
    assert [t for n, t, _ in sent if n == "Ada"] == ["xp.update"] * 4
    guest = Identity("Visitor", guest=True)
    assert await xp.award_chat_message(guest) is None
    assert await storage.get_profile("Visitor") is None
    assert (await xp.progress_of(guest)).to_json() == {"xp": 0, "level": 0, "next": 100}


@pytest_twisted.ensureDeferred
async def test_a_level_up_names_what_it_unlocked(storage: SQLiteStorage) -> None:
    config = XPConfig(levels=[3, 6, 10], unlocks=["a", "b", "c"], chat_message=1)
    sent: list[tuple[str, dict[str, Any]]] = []
    xp = XpService(
        storage, Clock(), XpTable.from_config(config), config, lambda n, t, **f: sent.append((t, f))
    )
    await xp.award(Identity("Ada"), 2)
    await xp.award(Identity("Ada"), 9)  # 11: straight past two thresholds
    assert sent == [
        ("xp.update", {"xp": 2, "level": 0, "next": 3}),
        ("xp.update", {"xp": 11, "level": 3, "next": None}),
        ("level.up", {"level": 3, "unlocked": ["a", "b", "c"]}),
    ]


@pytest_twisted.ensureDeferred
async def test_posting_earns_xp_on_every_tab_and_levels_up(tmp_path: Path) -> None:
    xp = {**LOW, "chat_message": 2, "chat_awards_per_minute": 3}
    limits = {"chat_burst": 100, "chat_per_second": 100.0}
    async with chat_server(tmp_path, xp=xp, limits=limits) as r:
        token = await add_person(r.service.storage, "Ada")
        ada, welcome = await connect(r, token)
        assert welcome["user"]["xp"] == 0 and welcome["user"]["next"] == 3
        other_tab, _ = await connect(r, token)  # in no room
        await join(ada)

        async def say(text: str) -> None:
            assert (await post(ada, text))["type"] == "ack"
            await expect(ada, "chat.message")

        await say("one")
        for client in (ada, other_tab):
            assert await client.next() == {"type": "xp.update", "xp": 2, "level": 0, "next": 3}
        await say("two")
        for client in (ada, other_tab):
            assert await client.next() == {"type": "xp.update", "xp": 4, "level": 1, "next": 6}
            assert await client.next() == {
                "type": "level.up",
                "level": 1,
                "unlocked": ["triggers"],
            }
        await say("three")
        for client in (ada, other_tab):
            assert (await expect(client, "xp.update"))["xp"] == 6
            assert (await expect(client, "level.up"))["unlocked"] == ["collar"]
        await say("four: over the per-minute cap")
        # nothing more: the next thing Ada gets answers her next request
        answer = await ada.request({"type": "chat.history", "id": "h", "room": "lobby"})
        assert answer["type"] == "chat.history"
        profile = await r.service.storage.get_profile("Ada")
        assert profile is not None and profile.xp == 6
        _, welcome = await connect(r, token)
        assert welcome["user"]["xp"] == 6 and welcome["user"]["level"] == 2


@pytest_twisted.ensureDeferred
async def test_guests_earn_nothing(tmp_path: Path) -> None:
    async with chat_server(tmp_path, xp={**LOW, "chat_message": 2}) as r:
        token = await add_person(r.service.storage, "Visitor", guest=True)
        guest, welcome = await connect(r, token)
        assert welcome["user"] == {
            "name": "Visitor",
            "role": "user",
            "guest": True,
            "xp": 0,
            "level": 0,
            "next": 3,
        }
        await join(guest)
        await post(guest, "hello")
        await expect(guest, "chat.message")
        answer = await guest.request({"type": "chat.history", "room": "lobby"})
        assert answer["type"] == "chat.history"
        assert await r.service.storage.get_profile("Visitor") is None
