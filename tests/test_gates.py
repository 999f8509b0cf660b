"""Level gates: the level each feature needs and the error a person below it gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads

from bambid.config import XPConfig
from bambid.identity import Identity
from bambid.profiles.gates import Gates
from bambid.profiles.xp import XpService, XpTable
from bambid.storage.sqlite import SQLiteStorage
from bambid.ws.dispatch import ClientError


async def gates_with(tmp_path: Path, xp: int) -> tuple[Gates, SQLiteStorage]:
    storage = SQLiteStorage(tmp_path / "g.sqlite3", IReactorFromThreads(reactor))
    await storage.open()
    await storage.ensure_profile("ada", 0.0)
    if xp:
        await storage.add_xp("ada", xp)
    config = XPConfig()
    service = XpService(storage, reactor, XpTable.from_config(config), config, lambda *a, **k: 0)
    return Gates(service), storage


@pytest_twisted.ensureDeferred
async def test_levels_follow_the_unlock_table(tmp_path: Path) -> None:
    gates, storage = await gates_with(tmp_path, 0)
    try:
        assert gates.level_needed("triggers") == 1
        assert gates.level_needed("collar") == 2
        assert gates.level_needed("advanced_binaural") == 8
        assert gates.level_needed("chat") == 0
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_below_the_level_is_refused_with_the_level(tmp_path: Path) -> None:
    gates, storage = await gates_with(tmp_path, 1000)  # level 1
    ada = Identity("ada", "user", False)
    try:
        await gates.require(ada, "triggers")
        assert await gates.allows(ada, "triggers")
        with pytest.raises(ClientError) as caught:
            await gates.require(ada, "collar")
        assert caught.value.code == "level_required"
        assert caught.value.extra == {"feature": "collar", "level": 2}
        assert caught.value.message == "The collar unlocks at level 2"
        with pytest.raises(ClientError) as caught:
            await gates.require(ada, "spirals")
        assert caught.value.message == "Spirals unlock at level 4"
        await gates.require(ada, "not-gated")
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_guests_are_level_zero(tmp_path: Path) -> None:
    gates, storage = await gates_with(tmp_path, 0)
    try:
        guest = Identity("visitor", "user", True)
        assert not await gates.allows(guest, "triggers")
        with pytest.raises(ClientError):
            await gates.require(guest, "triggers")
    finally:
        await storage.close()
