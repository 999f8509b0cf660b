"""The HTTP side of triggers over a real port: ``/api/triggers`` (and the
original's ``/config/triggers.json``), ``/audio/triggers/<key>`` redirecting to
a shipped file or to a clip synthesised once by real espeak-ng, and the
trigger-mania page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from bambid.models import AudioInteraction
from bambid.triggers.handlers import catalog_path
from bambid.web.assets import assets_dir
from tests.chatsupport import chat_server
from tests.conftest import Running

SHIPPED = json.loads(catalog_path("", Path(".")).read_text())


async def get(r: Running, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    response = await treq.request(method, r.http + path, allow_redirects=False)
    headers = {
        name.decode().lower(): values[0].decode()
        for name, values in response.headers.getAllRawHeaders()
    }
    return response.code, headers, await response.content()


@pytest_twisted.ensureDeferred
async def test_the_catalog_lists_every_trigger_with_its_audio_url(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        code, headers, body = await get(r, "/api/triggers")
        assert code == 200
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        document = json.loads(body)
        assert document["version"] == 1
        assert document["categories"] == list(
            dict.fromkeys(t["category"] for t in SHIPPED["triggers"])
        )
        assert [t["name"] for t in document["triggers"]] == [t["name"] for t in SHIPPED["triggers"]]
        first = document["triggers"][0]
        assert first == {
            "key": "deep-breath",
            "name": "Deep Breath",
            "aliases": SHIPPED["triggers"][0]["aliases"],
            "description": SHIPPED["triggers"][0]["description"],
            "category": "breathing",
            "audio_url": "/static/audio/triggers/deep-breath.mp3",
        }
        by_key = {t["key"]: t for t in document["triggers"]}
        assert by_key["reset"]["audio_url"] == "/audio/triggers/reset"  # no file: synthesised
        code, _, original = await get(r, "/config/triggers.json")
        assert code == 200 and json.loads(original) == document


@pytest_twisted.ensureDeferred
async def test_a_cue_with_a_file_redirects_to_it(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        for method in ("GET", "HEAD"):
            code, headers, _ = await get(r, "/audio/triggers/deep-breath", method)
            assert code == 302
            assert headers["location"] == "/static/audio/triggers/deep-breath.mp3"
        code, headers, body = await get(r, "/static/audio/triggers/deep-breath.mp3")
        assert code == 200 and headers["content-type"] == "audio/mpeg" and body
        code, _, _ = await get(r, "/audio/triggers/no-such-trigger")
        assert code == 404


@pytest_twisted.ensureDeferred
async def test_a_cue_without_a_file_is_synthesised_once(tmp_path: Path) -> None:
    catalog = tmp_path / "triggers.json"
    catalog.write_text(
        json.dumps(
            {
                "triggers": [
                    {"name": "Reset", "description": "Start again.", "category": "focus"},
                    {
                        "name": "Rest",
                        "description": "A pause.",
                        "category": "focus",
                        "audio": "not-shipped.mp3",
                    },
                ]
            }
        )
    )
    async with chat_server(tmp_path, triggers={"catalog_file": str(catalog)}) as r:
        locations = []
        for key in ("reset", "reset", "rest"):
            code, headers, _ = await get(r, f"/audio/triggers/{key}")
            assert code == 302, key
            locations.append(headers["location"])
        assert locations[0] == locations[1]
        assert re.fullmatch(r"/audio/tts/[0-9a-f]{32}\.\w+", locations[0])
        assert locations[2] != locations[0]
        code, headers, body = await get(r, locations[0])
        assert code == 200 and headers["content-type"].startswith("audio/") and len(body) > 1000
        records: list[AudioInteraction] = await r.service.storage.list_records(
            AudioInteraction, "system", 10
        )
        spoken = sorted((e.details["key"], e.details["source"], e.kind) for e in records)
        assert spoken == [("reset", "trigger", "tts"), ("rest", "trigger", "tts")]
        document = json.loads((await get(r, "/api/triggers"))[2])
        assert [t["audio_url"] for t in document["triggers"]] == [
            "/audio/triggers/reset",
            "/audio/triggers/rest",
        ]


@pytest_twisted.ensureDeferred
async def test_a_failed_synthesis_is_a_502(tmp_path: Path) -> None:
    voice: dict[str, Any] = {"espeak_command": "no-such-espeak-ng"}
    async with chat_server(tmp_path, voice={"speak_replies": False, **voice}) as r:
        code, _, body = await get(r, "/audio/triggers/reset")
        assert code == 502
        code, _, _ = await get(r, "/audio/triggers/deep-breath")  # a file needs no speech
        assert code == 302


@pytest_twisted.ensureDeferred
async def test_the_trigger_mania_page(tmp_path: Path) -> None:
    if not (assets_dir() / "templates" / "trigger-mania.html").exists():
        pytest.skip("the trigger-mania template is not written yet")
    async with chat_server(tmp_path) as r:
        code, headers, body = await get(r, "/psychodelic-trigger-mania")
        assert code == 200, body[:500]
        assert headers["content-type"] == "text/html; charset=utf-8"
