"""Triggers over a real WebSocket: consent (nothing fires until a person
switches a trigger on; in chat only for the recipients who did), the level
gate, validation, every tab told, XP, the persona, reloads by the admin
command and by SIGHUP to the real daemon, and a broken catalog at start-up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from bambid.config import ConfigError
from bambid.models import AudioInteraction
from bambid.service import BambidService
from bambid.storage import Storage
from bambid.triggers.handlers import catalog_path
from tests import wsclient
from tests.chatsupport import add_person, chat_server, connect, expect, join, post
from tests.companionsupport import companion_server, fake_llm, send
from tests.conftest import make_config
from tests.daemon import Daemon, daemon_environment
from tests.fakellm import Stream, sse_events

SHIPPED = json.loads(catalog_path("", Path(".")).read_text())
DEEP_BREATH = next(t for t in SHIPPED["triggers"] if t["name"] == "Deep Breath")


async def person(storage: Storage, name: str, xp: int = 1000, role: str = "user") -> str:
    """An account with ``xp`` (level 1 from 1000, by default) and a session."""
    token = await add_person(storage, name, role=role)
    await storage.ensure_profile(name, 0.0)
    if xp:
        await storage.add_xp(name, xp)
    return token


async def frames_until(client: wsclient.TestClientProtocol, type: str) -> list[dict[str, Any]]:
    """Every frame up to and including the next one of ``type``."""
    frames = [await client.next()]
    while frames[-1]["type"] != type:
        frames.append(await client.next())
    return frames


def of(frames: list[dict[str, Any]], type: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == type]


async def nothing_more(client: wsclient.TestClientProtocol) -> None:
    """The next frame answers a ``triggers.get``: nothing else was queued."""
    answer = await client.request({"type": "triggers.get", "id": "probe"})
    assert answer["type"] == "triggers.state" and answer["id"] == "probe", answer


def catalog_file(tmp_path: Path, *extra: dict[str, Any]) -> Path:
    path = tmp_path / "triggers.json"
    path.write_text(json.dumps({"version": 1, "triggers": [*SHIPPED["triggers"], *extra]}))
    return path


STRETCH = {"name": "Stretch", "description": "Reach up slowly.", "category": "posture"}


# -- consent --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_reply_fires_only_what_the_person_switched_on(tmp_path: Path) -> None:
    split = ["Take a deep br", "EATH, then another dee", "p breath. Sit tall."]
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        storage = r.service.storage
        token = await person(storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)

        fake.script(Stream(sse_events(split)))
        assert (await send(tab1, "breathe with me"))["type"] == "ack"
        for tab in (tab1, tab2):
            frames = await frames_until(tab, "ai.done")
            assert not of(frames, "trigger.fired") and not of(frames, "effect.flash")
            await expect(tab, "xp.update")  # for the reply
        assert "Deep Breath" not in fake.chat_requests[-1].body["messages"][0]["content"]

        answer = await tab1.request({"type": "triggers.set", "id": 1, "enabled": ["deep-breath"]})
        assert answer == {"type": "ack", "id": 1}
        for tab in (tab1, tab2):
            state = await expect(tab, "triggers.state")
            assert state == {
                "type": "triggers.state",
                "enabled": ["deep-breath"],
                "catalog_version": 1,
            }
            assert (await expect(tab, "xp.update"))["xp"] > 1000  # xp.trigger_selection

        fake.script(Stream(sse_events(split)))
        ack = await send(tab1, "again please")
        for tab in (tab1, tab2):
            frames = await frames_until(tab, "ai.done")
            fired = of(frames, "trigger.fired")
            assert fired == [  # twice in the reply, once per cooldown
                {
                    "type": "trigger.fired",
                    "key": "deep-breath",
                    "name": "Deep Breath",
                    "description": DEEP_BREATH["description"],
                    "audio_url": "/static/audio/triggers/deep-breath.mp3",
                    "source": "ai",
                    "reply_id": ack["reply_id"],
                }
            ]
            assert of(frames, "effect.flash") == [
                {"type": "effect.flash", "text": "Deep Breath", "key": "deep-breath"}
            ]
            assert frames[-1]["text"] == "".join(split)
        # The persona got the switched-on trigger, with its description.
        system = fake.chat_requests[-1].body["messages"][0]["content"]
        assert f"- Deep Breath: {DEEP_BREATH['description']}" in system
        await r.service.triggers.engine.idle()
        records = await storage.list_records(AudioInteraction, "Ada", 10)
        triggered = [(e.kind, e.name, e.details) for e in records if e.kind == "trigger"]
        assert triggered == [
            ("trigger", "deep-breath", {"source": "ai", "reply_id": ack["reply_id"]})
        ]


@pytest_twisted.ensureDeferred
async def test_chat_fires_only_for_the_recipients_who_switched_it_on(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        ada_token = await person(storage, "Ada")
        ada, _ = await connect(r, ada_token)
        ada_away, _ = await connect(r, ada_token)  # a tab in no room
        cy, _ = await connect(r, await person(storage, "Cy"))
        bob, _ = await connect(r, await person(storage, "Bob", xp=0))
        for client in (ada, cy, bob):
            await join(client)
        for client, joined in ((ada, ["Cy", "Bob"]), (cy, ["Bob"])):
            for name in joined:
                assert (await expect(client, "presence.update"))["joined"]["name"] == name
        answer = await ada.request({"type": "triggers.set", "id": 1, "enabled": ["let-go"]})
        assert answer["type"] == "ack"
        for tab in (ada, ada_away):
            await expect(tab, "triggers.state")
            await expect(tab, "xp.update")

        ack = await post(bob, "Time to let it go, everyone.")
        assert ack["type"] == "ack"
        frames = await frames_until(ada, "effect.flash")
        assert [f["type"] for f in frames] == ["chat.message", "trigger.fired", "effect.flash"]
        assert frames[1] == {
            "type": "trigger.fired",
            "key": "let-go",
            "name": "Let Go",
            "description": frames[1]["description"],
            "audio_url": "/static/audio/triggers/let-go.mp3",
            "source": "chat",
            "room": "lobby",
            "message_id": ack["message_id"],
            "from": "Bob",
        }
        await r.service.triggers.engine.idle()
        await expect(ada, "xp.update")  # xp.trigger_fired
        await nothing_more(ada)
        await expect(ada_away, "xp.update")  # every tab hears of XP, but no cue
        await nothing_more(ada_away)
        for client in (cy, bob):  # in the room, nothing switched on
            await expect(client, "chat.message")
            await nothing_more(client)


# -- the gate and the request ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_triggers_are_gated_by_level(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        storage = r.service.storage
        low, _ = await connect(r, await person(storage, "Low", xp=999))
        guest, _ = await connect(r, await add_person(storage, "Visitor", guest=True))
        anonymous, _ = await connect(r)
        for client in (low, guest):
            error = await client.request({"type": "triggers.set", "id": 2, "enabled": ["let-go"]})
            assert error == {
                "type": "error",
                "id": 2,
                "code": "level_required",
                "message": "Triggers unlock at level 1",
                "feature": "triggers",
                "level": 1,
            }
        error = await anonymous.request({"type": "triggers.set", "enabled": []})
        assert error["code"] == "unauthenticated"
        for client in (low, guest, anonymous):
            state = await client.request({"type": "triggers.get", "id": 3})
            assert state == {
                "type": "triggers.state",
                "id": 3,
                "enabled": [],
                "catalog_version": 1,
            }
        # Reaching level 1 is enough (XP written straight into storage).
        await storage.add_xp("Low", 1)
        answer = await low.request({"type": "triggers.set", "id": 4, "enabled": ["let-go"]})
        assert answer == {"type": "ack", "id": 4}


@pytest_twisted.ensureDeferred
async def test_triggers_set_is_validated_and_earns_xp_once_a_minute(tmp_path: Path) -> None:
    async with chat_server(tmp_path) as r:
        token = await person(r.service.storage, "Ada")
        ada, _ = await connect(r, token)
        for enabled, words in [
            ("let-go", "list"),
            (None, "list"),
            (["let-go", 3], "list"),
            (["nope"], "no trigger 'nope'"),
            (["let-go", "reset", "let-go"], "'let-go' is listed twice"),
        ]:
            error = await ada.request({"type": "triggers.set", "id": 1, "enabled": enabled})
            assert error["code"] == "bad_request" and words in error["message"], error
        assert (await ada.request({"type": "triggers.get"}))["enabled"] == []

        await ada.request({"type": "triggers.set", "id": 2, "enabled": ["reset", "let-go"]})
        state = await expect(ada, "triggers.state")
        assert state["enabled"] == ["let-go", "reset"]  # catalog order
        assert (await expect(ada, "xp.update"))["xp"] == 1002
        await ada.request({"type": "triggers.set", "id": 3, "enabled": []})
        assert (await expect(ada, "triggers.state"))["enabled"] == []
        await nothing_more(ada)  # no second award within the minute
        profile = await r.service.storage.get_profile("Ada")
        assert profile is not None and profile.preferences["triggers"] == {"enabled": []}


# -- reloading --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_admins_reload_the_catalog_with_a_command(tmp_path: Path) -> None:
    path = catalog_file(tmp_path)
    settings = {"catalog_file": str(path)}
    async with chat_server(tmp_path, auth={"admins": ["Root"]}, triggers=settings) as r:
        storage = r.service.storage
        root, _ = await connect(r, await person(storage, "Root", xp=0))
        mia, _ = await connect(r, await person(storage, "Mia", xp=0, role="moderator"))
        anonymous, _ = await connect(r)
        help = await root.request({"type": "admin.command", "cmd": "help", "args": {}})
        assert "/reload-triggers" in help["result"]["commands"]
        help = await mia.request({"type": "admin.command", "cmd": "help", "args": {}})
        assert "/reload-triggers" not in help["result"]["commands"]
        error = await mia.request({"type": "admin.command", "cmd": "reload-triggers", "args": {}})
        assert error["code"] == "forbidden"

        catalog_file(tmp_path, STRETCH)
        root.send_json({"type": "admin.command", "id": 1, "cmd": "reload-triggers", "args": {}})
        assert await root.next() == {"type": "triggers.catalog", "version": 2}
        assert await root.next() == {
            "type": "ack",
            "id": 1,
            "result": {"version": 2, "triggers": len(SHIPPED["triggers"]) + 1},
        }
        for client in (mia, anonymous):
            assert await client.next() == {"type": "triggers.catalog", "version": 2}
        response = await treq.get(r.http + "/api/triggers")
        document = json.loads(await response.content())
        assert document["version"] == 2 and document["triggers"][-1]["key"] == "stretch"

        # The slash command, typed in chat.
        root.send_json({"type": "chat.send", "id": 2, "room": "lobby", "text": "/reload-triggers"})
        for client in (root, mia, anonymous):
            assert await client.next() == {"type": "triggers.catalog", "version": 3}
        assert (await root.next())["result"]["version"] == 3

        # A broken file: the error names the entry; the catalog stays.
        path.write_text(json.dumps({"triggers": [{**STRETCH, "category": "Bad Category"}]}))
        error = await root.request(
            {"type": "admin.command", "id": 3, "cmd": "reload-triggers", "args": {}}
        )
        assert error["code"] == "bad_request" and error["where"] == "triggers[0].category"
        assert "triggers[0].category" in error["message"]
        await nothing_more(mia)
        assert r.service.triggers.engine.version == 3
        assert "stretch" in r.service.triggers.engine.catalog


def test_a_broken_catalog_stops_start_up_naming_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"triggers": [STRETCH, {**STRETCH, "name": "STRETCH"}]}))
    config = make_config(tmp_path)
    config = attrs.evolve(config, triggers=attrs.evolve(config.triggers, catalog_file=str(bad)))
    with pytest.raises(ConfigError) as caught:
        BambidService(config, reactor, base_dir=tmp_path)
    assert caught.value.key == "triggers.catalog_file"
    assert f"{bad}: triggers[1].name:" in caught.value.problem

    result = subprocess.run(
        [sys.executable, "-m", "twisted", "bambid"],
        cwd=tmp_path,
        env=daemon_environment({"BAMBID_TRIGGERS_CATALOG_FILE": str(bad)}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"bambid: configuration error: triggers.catalog_file: {bad}: triggers[1].name: "
    )


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_the_daemon_s_catalog(tmp_path: Path) -> None:
    path = catalog_file(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {"BAMBID_TRIGGERS_CATALOG_FILE": str(path)}
    with Daemon.start(workdir, env=env) as daemon:
        client = await wsclient.connect(daemon.ws)
        assert (await client.request({"type": "hello"}))["type"] == "welcome"

        catalog_file(tmp_path, STRETCH)
        daemon.process.send_signal(signal.SIGHUP)
        assert await client.next() == {"type": "triggers.catalog", "version": 2}
        response = await treq.get(daemon.http + "/api/triggers")
        document = json.loads(await response.content())
        assert document["version"] == 2 and document["triggers"][-1]["name"] == "Stretch"

        path.write_text("{not json")
        daemon.process.send_signal(signal.SIGHUP)
        await _output_contains(daemon, "was not reloaded (version 2 stays)")
        assert "not valid JSON" in "".join(daemon.output)
        catalog_file(tmp_path)
        daemon.process.send_signal(signal.SIGHUP)
        assert await client.next() == {"type": "triggers.catalog", "version": 3}
        assert daemon.process.poll() is None  # SIGHUP did not end it
        status = await deferToThread(daemon.terminate)
        assert status == 0


async def _output_contains(daemon: Daemon, text: str, turns: int = 3000) -> None:
    """Wait (reactor turns, a few ms each) until the daemon has logged ``text``."""
    for _ in range(turns):
        if text in "".join(daemon.output):
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{text!r} never logged:\n" + "".join(daemon.output))
