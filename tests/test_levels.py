"""The level table people see: ``welcome.levels`` and ``GET /api/levels`` over a real
port, for the default ``[xp]`` and for one set by environment variables, and the labels
of features only the configuration knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from bambid import config as configuration
from bambid.config import XPConfig
from bambid.profiles.gates import FEATURES, UNLOCKS, describe, level_table
from bambid.profiles.xp import XpTable
from tests.chatsupport import add_person, chat_server, connect, expect, join, next_of, post
from tests.test_auth import Browser

#: A custom table, as an operator would set it in the environment.
CUSTOM_ENV = {
    "BAMBID_XP_LEVELS": "5,50,500",
    "BAMBID_XP_UNLOCKS": "spirals,quiet_garden,triggers",
}
CUSTOM = [
    {
        "level": 1,
        "xp": 5,
        "feature": "spirals",
        "label": "Spirals",
        "description": FEATURES["spirals"].description,
    },
    {
        "level": 2,
        "xp": 50,
        "feature": "quiet_garden",
        "label": "Quiet garden",
        "description": "Quiet garden becomes available.",
    },
    {
        "level": 3,
        "xp": 500,
        "feature": "triggers",
        "label": "Triggers",
        "description": FEATURES["triggers"].description,
    },
]


def custom_xp(**more: Any) -> dict[str, Any]:
    """The ``[xp]`` section that ``CUSTOM_ENV`` configures, as ``chat_server`` takes it."""
    xp = configuration.load(None, CUSTOM_ENV).xp
    return {"levels": xp.levels, "unlocks": xp.unlocks, **more}


# --- the table ------------------------------------------------------------------------------


def test_the_default_table() -> None:
    rows = level_table(XpTable.from_config(XPConfig()))
    assert [(r["level"], r["xp"], r["feature"]) for r in rows] == [
        (1, 1000, "triggers"),
        (2, 2500, "collar"),
        (3, 4500, "session_history"),
        (4, 7000, "spirals"),
        (5, 12000, "hypnosis"),
        (6, 36000, "audio_playlist"),
        (7, 112000, "binaural"),
        (8, 332000, "advanced_binaural"),
    ]
    assert [r["label"] for r in rows] == [
        "Triggers",
        "The collar",
        "Session history",
        "Spirals",
        "Hypnosis",
        "The audio playlist",
        "Binaural beats",
        "Binaural sequences",
    ]
    assert all(r["description"].endswith(".") for r in rows)
    # Every feature a level_required error can name has a label, and the two agree.
    assert set(FEATURES) == set(UNLOCKS)
    for feature, sentence in UNLOCKS.items():
        assert sentence.startswith(FEATURES[feature].label + " unlock")


def test_a_table_from_the_environment() -> None:
    table = XpTable.from_config(configuration.load(None, CUSTOM_ENV).xp)
    assert level_table(table) == CUSTOM


@pytest.mark.parametrize(
    ("feature", "label"),
    [
        ("quiet_garden", "Quiet garden"),
        ("breathing-coach", "Breathing coach"),
        ("  _odd__name_ ", "Odd name"),
        ("focusMode", "FocusMode"),
        ("___", "A new feature"),
    ],
)
def test_unknown_features_get_a_readable_label(feature: str, label: str) -> None:
    about = describe(feature)
    assert about.label == label
    assert about.description == f"{label} becomes available."


# --- welcome.levels and GET /api/levels --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_everyone_is_welcomed_with_the_default_table(tmp_path: Path) -> None:
    expected = level_table(XpTable.from_config(XPConfig()))
    async with chat_server(tmp_path) as r:
        account = await add_person(r.service.storage, "Ada")
        guest = await add_person(r.service.storage, "Visitor", guest=True)
        for token in (account, guest, None):
            _, welcome = await connect(r, token)
            assert welcome["type"] == "welcome", welcome
            assert welcome["levels"] == expected

        answer = await Browser(r.http).get("/api/levels")
        assert answer.code == 200
        assert answer.header("content-type") == "application/json; charset=utf-8"
        assert answer.header("cache-control") == "public, max-age=60"
        assert answer.json() == {"levels": expected}


@pytest_twisted.ensureDeferred
async def test_a_custom_table_is_what_welcome_and_the_api_give(tmp_path: Path) -> None:
    async with chat_server(tmp_path, xp=custom_xp(chat_message=5)) as r:
        browser = Browser(r.http)
        assert (await browser.get("/api/levels")).json() == {"levels": CUSTOM}
        head = await browser.request("HEAD", "/api/levels")
        assert head.code == 200 and head.body == b""

        token = await add_person(r.service.storage, "Ada")
        ada, welcome = await connect(r, token)
        assert welcome["levels"] == CUSTOM
        assert welcome["user"]["next"] == CUSTOM[0]["xp"]
        # The table is what the awards follow: one message reaches level 1, unlocking spirals.
        await join(ada)
        await post(ada, "hello")
        assert await next_of(ada, "xp.update") == {
            "type": "xp.update",
            "xp": 5,
            "level": 1,
            "next": 50,
        }
        await expect(ada, "level.up", level=1, unlocked=["spirals"])
        _, again = await connect(r, token)
        assert again["levels"] == CUSTOM and again["user"]["level"] == 1


@pytest_twisted.ensureDeferred
async def test_api_levels_is_read_only(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        answer = await Browser(r.http).api("/api/levels", {"levels": []})
        assert answer.code == 405
        assert answer.json()["error"] == "method_not_allowed"
