"""Effect settings over a real WebSocket: defaults, the level of each section
(and of binaural patterns), validation naming the field, storage across
reconnects and the sync of every tab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from tests import wsclient
from tests.chatsupport import SETTINGS_DEFAULTS, add_person, chat_server, connect, expect
from tests.test_collar import at_level


async def settings_set(
    client: wsclient.TestClientProtocol, section: Any, values: Any
) -> dict[str, Any]:
    return await client.request(
        {"type": "settings.set", "id": "s", "section": section, "values": values}
    )


async def sections(client: wsclient.TestClientProtocol) -> dict[str, Any]:
    state = await client.request({"type": "settings.get", "id": "g"})
    assert state["type"] == "settings.state" and state["id"] == "g", state
    result: dict[str, Any] = state["sections"]
    return result


@pytest_twisted.ensureDeferred
async def test_everyone_reads_the_defaults(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        guest, _ = await connect(r, await add_person(r.service.storage, "Gus", guest=True))
        newcomer, _ = await connect(r, await at_level(r, "Ada", 0))
        for client in (guest, newcomer):
            assert await sections(client) == SETTINGS_DEFAULTS
        anonymous, _ = await connect(r)
        assert (await anonymous.request({"type": "settings.get"}))["code"] == "unauthenticated"


@pytest_twisted.ensureDeferred
async def test_each_section_unlocks_at_its_level(tmp_path: Path) -> None:
    changes: dict[str, dict[str, Any]] = {
        "spirals": {"spiral1Width": 6},
        "audio": {"loop": True},
        "binaural": {"preset": "theta"},
    }
    needed = {"spirals": 4, "audio": 6, "binaural": 7}
    async with chat_server(tmp_path) as r:
        for level in (0, 3, 4, 6, 7):
            client, _ = await connect(r, await at_level(r, f"level{level}", level))
            for section, values in changes.items():
                answer = await settings_set(client, section, values)
                if level >= needed[section]:
                    assert answer == {"type": "ack", "id": "s"}, (level, section, answer)
                    state = await expect(client, "settings.state", section=section)
                    assert state["values"] == {**SETTINGS_DEFAULTS[section], **values}
                else:
                    assert answer["code"] == "level_required", (level, section, answer)
                    assert answer["level"] == needed[section]
                    assert f"level {needed[section]}" in answer["message"]

        # A binaural pattern needs level 8; "" (none) does not.
        seven, _ = await connect(r, await at_level(r, "seven", 7))
        refused = await settings_set(seven, "binaural", {"pattern": "descent", "beat": 4})
        assert refused["code"] == "level_required" and refused["level"] == 8
        assert refused["feature"] == "advanced_binaural"
        assert (await settings_set(seven, "binaural", {"pattern": ""}))["type"] == "ack"
        await expect(seven, "settings.state")
        # beat 4 was refused too
        assert (await sections(seven))["binaural"] == SETTINGS_DEFAULTS["binaural"]
        eight, _ = await connect(r, await at_level(r, "eight", 8))
        assert (await settings_set(eight, "binaural", {"pattern": "descent"}))["type"] == "ack"
        state = await expect(eight, "settings.state", section="binaural")
        assert state["values"]["pattern"] == "descent"


@pytest_twisted.ensureDeferred
async def test_bad_values_are_refused_by_name(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        client, _ = await connect(r, await at_level(r, "Ada", 8))
        cases: list[tuple[Any, Any, str]] = [
            ("colours", {}, "section"),
            (None, {}, "section"),
            ("spirals", [1], "values"),
            ("spirals", {"spiral3Width": 2}, "spiral3Width"),
            ("spirals", {"spiral1Width": 11}, "spiral1Width"),
            ("spirals", {"spiral1Width": 0.5}, "spiral1Width"),
            ("spirals", {"spiral2Speed": 4}, "spiral2Speed"),
            ("spirals", {"spiral1Speed": "20"}, "spiral1Speed"),
            ("spirals", {"spiral1Speed": True}, "spiral1Speed"),
            ("spirals", {"spiral1Speed": 10**400}, "spiral1Speed"),
            ("spirals", {"enabled": 1}, "enabled"),
            ("audio", {"volume": 1.01}, "volume"),
            ("audio", {"background": "thunder"}, "background"),
            ("binaural", {"carrier": 99}, "carrier"),
            ("binaural", {"preset": "gamma"}, "preset"),
            ("binaural", {"pattern": "spiral"}, "pattern"),
            ("binaural", {"total_minutes": 61}, "total_minutes"),
            ("binaural", {"transition_seconds": 9.9}, "transition_seconds"),
            # One bad value among good ones: nothing is stored.
            ("spirals", {"enabled": True, "spiral1Width": 2, "spiral2Width": -1}, "spiral2Width"),
        ]
        for section, values, named in cases:
            answer = await settings_set(client, section, values)
            assert answer["type"] == "error" and answer["code"] == "bad_request", answer
            assert named in answer["message"], (named, answer)
        not_a_number = '{"type": "settings.set", "section": "audio", "values": {"speed": NaN}}'
        client.sendMessage(not_a_number.encode(), isBinary=False)
        assert "speed" in (await expect(client, "error", code="bad_request"))["message"]
        assert await sections(client) == SETTINGS_DEFAULTS

        # The bounds themselves are fine; an integer stays one.
        edges = {"volume": 0, "speed": 10, "background_volume": 1, "background": "rain"}
        assert (await settings_set(client, "audio", edges))["type"] == "ack"
        state = await expect(client, "settings.state", section="audio")
        assert state["values"] == {**SETTINGS_DEFAULTS["audio"], **edges}
        assert isinstance(state["values"]["volume"], int)


@pytest_twisted.ensureDeferred
async def test_settings_are_stored_and_synced_across_tabs(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        token = await at_level(r, "Ada", 8)
        await storage.update_profile("Ada", {"preferences": {"voice": {"enabled": False}}})
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        spirals = {"enabled": True, "spiral1Width": 6, "spiral2Speed": 32.5}
        assert (await settings_set(tab1, "spirals", spirals))["type"] == "ack"
        for tab in (tab1, tab2):
            state = await expect(tab, "settings.state", section="spirals")
            assert "id" not in state
            assert state["values"] == {**SETTINGS_DEFAULTS["spirals"], **spirals}
        # Any subset: the rest stays as it was.
        assert (await settings_set(tab2, "spirals", {"spiral1Width": 9}))["type"] == "ack"
        expected = {**SETTINGS_DEFAULTS["spirals"], **spirals, "spiral1Width": 9}
        for tab in (tab1, tab2):
            assert (await expect(tab, "settings.state"))["values"] == expected
        assert (await settings_set(tab2, "binaural", {"beat": 4.5}))["type"] == "ack"
        for tab in (tab1, tab2):
            await expect(tab, "settings.state", section="binaural")

        profile = await storage.get_profile("Ada")
        assert profile is not None
        assert profile.preferences == {
            "voice": {"enabled": False},
            "settings": {
                "spirals": {"enabled": True, "spiral1Width": 9, "spiral2Speed": 32.5},
                "binaural": {"beat": 4.5},
            },
        }
        for tab in (tab1, tab2):
            tab.sendClose()
            await tab.closed
        again, _ = await connect(r, token)
        assert await sections(again) == {
            "spirals": expected,
            "audio": SETTINGS_DEFAULTS["audio"],
            "binaural": {**SETTINGS_DEFAULTS["binaural"], "beat": 4.5},
        }
