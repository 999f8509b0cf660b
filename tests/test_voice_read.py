"""Readings: ``voice.read`` / ``voice.stop`` over a real WebSocket with a fake
Kokoro speaking real HTTP (spoken in order to every tab even with reply
speech off, capped, stopped, replaced by the next reading, ended with the
last tab), and ``ReplyVoice`` readings in memory (the lookahead, long runs
of cached sentences, texts kept apart)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from bambid.models import AudioInteraction
from bambid.voice.pipeline import READ_LOOKAHEAD
from tests import wsclient
from tests.chatsupport import add_person, chat_server, connect, expect, tick
from tests.conftest import Running
from tests.fakekokoro import FakeKokoro, RecordedRequest
from tests.test_voice_pipeline import ADA, Setup, sentences_of
from tests.test_voice_ws import FAST_VOICE
from tests.voicesupport import read_voice

TEXT = (
    "Sit comfortably and let your hands rest. Breathe in through your nose. "
    "Hold it for a moment. Now breathe out slowly.\n\nNotice how your shoulders drop. "
    "Stay with this calm for a while."
)
SENTENCES = sentences_of(TEXT)


@asynccontextmanager
async def reading_server(
    tmp_path: Path, **triggers: Any
) -> AsyncIterator[tuple[Running, FakeKokoro]]:
    """bambid speaking with a fake Kokoro, reply speech off by default."""
    kokoro = FakeKokoro(reactor)
    await kokoro.start()
    try:
        voice = {"backend": "kokoro", "url": kokoro.url, "speak_replies": False, **FAST_VOICE}
        async with chat_server(tmp_path, voice=voice, triggers=triggers) as running:
            yield running, kokoro
    finally:
        await kokoro.stop()


async def held(kokoro: FakeKokoro, count: int = 1) -> list[RecordedRequest]:
    """The parked speech requests, once there are ``count`` (10 s at most)."""
    waiting = kokoro.until_held(count)
    waiting.addTimeout(10, reactor)
    return await waiting


async def read(client: wsclient.TestClientProtocol, text: Any, id: Any = "r") -> dict[str, Any]:
    return await client.request({"type": "voice.read", "id": id, "text": text})


@pytest_twisted.ensureDeferred
async def test_a_text_is_read_aloud_in_order_to_every_tab(tmp_path: Path) -> None:
    assert len(SENTENCES) > READ_LOOKAHEAD + 2
    async with reading_server(tmp_path) as (r, kokoro):
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        prefs = await tab1.request({"type": "voice.prefs"})
        assert prefs["enabled"] is False  # reply speech is off; a reading is asked for
        ack = await read(tab1, TEXT)
        assert ack["type"] == "ack" and ack["id"] == "r"
        reply_id = ack["reply_id"]
        assert reply_id.startswith("read-")
        for tab in (tab1, tab2):
            frames = await read_voice(tab)
            audio = frames[:-1]
            assert [f["type"] for f in audio] == ["voice.audio"] * len(SENTENCES)
            assert [f["index"] for f in audio] == list(range(len(SENTENCES)))
            assert [f["text"] for f in audio] == SENTENCES
            assert {f["reply_id"] for f in audio} == {reply_id}
            assert frames[-1] == {
                "type": "voice.done",
                "reply_id": reply_id,
                "sentences": len(SENTENCES),
                "stopped": False,
            }
        assert sorted(q.text for q in kokoro.speech_requests) == sorted(SENTENCES)
        records = await r.service.storage.list_records(AudioInteraction, "Ada", 100)
        assert {(x.details["source"], x.details["reply_id"]) for x in records} == {
            ("read", reply_id)
        }


@pytest_twisted.ensureDeferred
async def test_what_cannot_be_read(tmp_path: Path) -> None:
    async with reading_server(tmp_path, read_max_bytes=1024) as (r, kokoro):
        anonymous, _ = await connect(r)
        assert (await read(anonymous, TEXT))["code"] == "unauthenticated"
        tab, _ = await connect(r, await add_person(r.service.storage, "Ada", guest=True))
        for text in ("", " \n ", 5, None):
            answer = await read(tab, text)
            assert answer["type"] == "error" and answer["code"] == "bad_request", answer
        # The cap counts bytes of UTF-8, not characters.
        too_long = await read(tab, "é" * 513)
        assert too_long["code"] == "bad_request" and "1024 bytes" in too_long["message"]
        lone = '{"type": "voice.read", "id": "u", "text": "Breathe \\ud800 in."}'
        tab.sendMessage(lone.encode(), isBinary=False)
        assert (await expect(tab, "error", id="u"))["code"] == "bad_request"
        assert kokoro.speech_requests == []
        ack = await read(tab, "é" * 512)
        assert ack["type"] == "ack"
        done = (await read_voice(tab))[-1]
        assert done["reply_id"] == ack["reply_id"] and done["stopped"] is False


@pytest_twisted.ensureDeferred
async def test_voice_stop_ends_the_reading(tmp_path: Path) -> None:
    async with reading_server(tmp_path) as (r, kokoro):
        tab, _ = await connect(r, await add_person(r.service.storage, "Ada"))
        nothing = await tab.request({"type": "voice.stop", "id": 1})
        assert nothing == {"type": "ack", "id": 1, "reply_id": None, "stopped": False}
        kokoro.hold()
        reply_id = (await read(tab, TEXT))["reply_id"]
        parked = await held(kokoro)
        other = await tab.request({"type": "voice.stop", "id": 2, "reply_id": "read-other"})
        assert other == {"type": "ack", "id": 2, "reply_id": "read-other", "stopped": False}
        bad = await tab.request({"type": "voice.stop", "id": 3, "reply_id": 7})
        assert bad["code"] == "bad_request"
        stop = await tab.request({"type": "voice.stop", "id": 4, "reply_id": reply_id})
        assert stop == {"type": "ack", "id": 4, "reply_id": reply_id, "stopped": True}
        done = await tab.next()
        assert done == {
            "type": "voice.done",
            "reply_id": reply_id,
            "sentences": 0,
            "stopped": True,
        }
        # The synthesis in progress was cancelled: its connection closed.
        assert await parked[0].outcome == "disconnected"
        again = await tab.request({"type": "voice.stop", "id": 5})
        assert again["stopped"] is False
        kokoro.release()


@pytest_twisted.ensureDeferred
async def test_a_new_reading_ends_the_previous_one(tmp_path: Path) -> None:
    async with reading_server(tmp_path) as (r, kokoro):
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        kokoro.hold()
        first = (await read(tab1, TEXT, id="a"))["reply_id"]
        parked = await held(kokoro)
        # From the other tab: one reading per person.
        tab2.send_json({"type": "voice.read", "id": "b", "text": "Relax your jaw. Good."})
        for tab in (tab1, tab2):
            ended = await expect(tab, "voice.done", reply_id=first, stopped=True)
            assert ended["sentences"] == 0
        second = await expect(tab2, "ack", id="b")
        assert second["reply_id"].startswith("read-") and second["reply_id"] != first
        assert await parked[0].outcome == "disconnected"
        kokoro.release()
        for tab in (tab1, tab2):
            frames = await read_voice(tab)
            assert {f["reply_id"] for f in frames} == {second["reply_id"]}
            assert [f["text"] for f in frames[:-1]] == ["Relax your jaw.", "Good."]


@pytest_twisted.ensureDeferred
async def test_the_reading_ends_with_the_last_tab(tmp_path: Path) -> None:
    async with reading_server(tmp_path) as (r, kokoro):
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        kokoro.hold()
        await read(tab1, TEXT)
        parked = await held(kokoro)
        tab1.sendClose()
        await tab1.closed
        # Another tab still listens: the reading goes on.
        assert parked[0].state == "open"
        tab2.sendClose()
        await tab2.closed
        assert await parked[0].outcome == "disconnected"
        kokoro.release()


# -- in memory -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_reading_synthesises_only_a_few_sentences_ahead(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()  # ten syntheses at once allowed
    assert setup.pipeline is not None
    reading = await setup.pipeline.start_reading(ADA, "read")
    reading.say(TEXT)
    reading.finish()
    backend = setup.backend
    assert backend.texts == SENTENCES[:READ_LOOKAHEAD]
    # An answer that cannot be sent yet (index 1 before 0) keeps its place.
    backend.succeed(SENTENCES[1])
    for _ in range(50):
        await tick()
    assert backend.texts == SENTENCES[:READ_LOOKAHEAD]
    for n, sentence in enumerate(SENTENCES):
        if n != 1:
            backend.succeed(sentence)
        sent = 2 if n == 0 else n + 1  # index 1 went out right after index 0
        await setup.people.until(sent)
        await tick()
        assert backend.texts == SENTENCES[: sent + READ_LOOKAHEAD]
    await setup.people.until(len(SENTENCES) + 1)
    frames = setup.frames()
    assert [f["text"] for f in frames[:-1]] == SENTENCES
    assert frames[-1]["type"] == "voice.done" and frames[-1]["stopped"] is False
    assert setup.pipeline.reading_of(ADA) is None


@pytest_twisted.ensureDeferred
async def test_a_long_reading_of_cached_sentences(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    assert setup.pipeline is not None
    setup.backend.auto = True
    text = " ".join(f"Breath number {n} is calm." for n in range(600))
    first = await setup.pipeline.start_reading(ADA, "read")
    first.say(text)
    first.finish()
    await setup.people.until(601)
    # Again after a new first sentence: the others are in the cache now and
    # wait behind it; once it is spoken each lands while it starts.
    setup.backend.auto = False
    second = await setup.pipeline.start_reading(ADA, "read")
    second.say("A new beginning. " + text)
    second.finish()
    setup.backend.succeed("A new beginning.")
    await setup.people.until(601 + 602)
    frames = [f for f in setup.frames() if f["reply_id"] == second.reply_id]
    assert [f["index"] for f in frames[:-1]] == list(range(601))
    assert frames[-1] == {
        "type": "voice.done",
        "reply_id": second.reply_id,
        "sentences": 601,
        "stopped": False,
    }


@pytest_twisted.ensureDeferred
async def test_each_text_of_a_reading_stands_alone(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    assert setup.pipeline is not None
    setup.backend.auto = True
    reading = await setup.pipeline.start_reading(ADA, "replay")
    assert reading.reply_id.startswith("replay-")
    reading.say("Here is some code: ```python")  # a fence never closed
    reading.say("Next turn without a full stop")
    reading.finish()
    await setup.people.until(3)
    texts = [f.get("text") for f in setup.frames()]
    assert texts == ["Here is some code:", "Next turn without a full stop", None]
