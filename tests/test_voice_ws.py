"""Voice over the WebSocket on a real loopback port: a companion reply spoken
sentence by sentence (fake LLM and fake Kokoro speaking real HTTP, the real
espeak-ng), in order whatever finishes first, stopped by ``ai.stop``,
fallback, speech off; ``voice.prefs`` / ``voice.set``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor

from bambid.models import AudioInteraction
from tests.chatsupport import add_person, connect, expect, next_of
from tests.companionsupport import eventually, fake_llm, send, until
from tests.conftest import Running
from tests.fakekokoro import FakeKokoro, fake_audio
from tests.fakellm import FakeLLM, Stall, Stream, sse_events
from tests.test_voice_pipeline import sentences_of
from tests.voicesupport import read_until_both_done, voice_server

REPLY = (
    "Let's breathe in slowly for four counts. Now hold it gently at the top. "
    "Breathe out through your mouth and let your shoulders drop. You are doing well."
)
SENTENCES = sentences_of(REPLY)
FAST_VOICE = {
    "connect_timeout": 2.0,
    "first_byte_timeout": 5.0,
    "idle_timeout": 5.0,
    "total_timeout": 10.0,
    "concurrency": 4,
}


def words(text: str) -> list[str]:
    """``text`` as streamed tokens: one word (with its space) each."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


@asynccontextmanager
async def spoken_companion(
    tmp_path: Path, kokoro: bool = True, **voice: Any
) -> AsyncIterator[tuple[Running, FakeLLM, FakeKokoro]]:
    """bambid with a fake LLM and (``kokoro``) a fake Kokoro; both started."""
    fake_tts = FakeKokoro(reactor)
    await fake_tts.start()
    try:
        async with fake_llm() as llm:
            settings: dict[str, Any] = {**FAST_VOICE, **voice}
            if kokoro:
                settings = {"backend": "kokoro", "url": fake_tts.url, **settings}
            async with voice_server(tmp_path, voice=settings, ai={"url": llm.url}) as r:
                yield r, llm, fake_tts
    finally:
        await fake_tts.stop()


@pytest_twisted.ensureDeferred
async def test_a_reply_is_spoken_in_order_to_every_tab(tmp_path: Path) -> None:
    assert len(SENTENCES) >= 3
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        llm.script(Stream(sse_events(words(REPLY))))
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        ack = await send(tab1, "Help me breathe.")
        reply_id = ack["reply_id"]
        for tab in (tab1, tab2):
            ai, voice = await read_until_both_done(tab)
            assert ai[-1]["type"] == "ai.done" and ai[-1]["text"] == REPLY
            audio = voice[:-1]
            assert [f["type"] for f in audio] == ["voice.audio"] * len(SENTENCES)
            assert [f["index"] for f in audio] == list(range(len(SENTENCES)))
            assert [f["text"] for f in audio] == SENTENCES
            assert all(f["reply_id"] == reply_id for f in voice)
            assert {(f["voice"], f["backend"]) for f in audio} == {("af_heart", "kokoro")}
            assert voice[-1] == {
                "type": "voice.done",
                "reply_id": reply_id,
                "sentences": len(SENTENCES),
                "stopped": False,
            }
        # Each URL gives the clip of its sentence.
        for frame in audio:
            response = await treq.get(r.http + frame["url"])
            assert response.code == 200
            assert response.headers.getRawHeaders("content-type") == ["audio/mpeg"]
            assert await response.content() == fake_audio("mp3", frame["text"], "af_heart", 1.0)
        assert sorted(req.text for req in kokoro.speech_requests) == sorted(SENTENCES)

        async def recorded() -> bool:
            found = await r.service.storage.list_records(AudioInteraction, "Ada", 50)
            return len(found) == len(SENTENCES)

        await eventually(recorded)
        records = await r.service.storage.list_records(AudioInteraction, "Ada", 50)
        assert sorted(x.details["index"] for x in records) == list(range(len(SENTENCES)))
        assert {x.details["reply_id"] for x in records} == {reply_id}


@pytest_twisted.ensureDeferred
async def test_a_later_sentence_ready_first_waits_for_the_earlier(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        kokoro.hold()
        llm.script(Stream(sse_events(words(REPLY))))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        await send(tab, "Help me breathe.")
        # Every sentence reaches Kokoro; the last is answered first, the first last.
        await kokoro.until_held(len(SENTENCES))
        for sentence in reversed(SENTENCES):
            (request,) = [q for q in kokoro.held if q.text == sentence]
            kokoro.release(sentence)
            assert await request.outcome == "finished"
        ai, voice = await read_until_both_done(tab)
        assert [f["index"] for f in voice if f["type"] == "voice.audio"] == list(
            range(len(SENTENCES))
        )
        assert [f["text"] for f in voice if f["type"] == "voice.audio"] == SENTENCES
        assert voice[-1]["stopped"] is False


@pytest_twisted.ensureDeferred
async def test_ai_stop_drops_pending_speech(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        first = SENTENCES[0]
        tokens = words(REPLY)
        spoken = len(words(first)) + 1  # the first sentence and the next word
        events = sse_events(tokens)
        stall = Stall()
        llm.script(Stream([*events[: 1 + spoken], stall, *events[1 + spoken :]]))
        kokoro.hold()
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        ack = await send(tab, "Help me breathe.")
        (held,) = await kokoro.until_held(1)
        assert held.text == first
        answer = await tab.request({"type": "ai.stop", "id": "x", "reply_id": ack["reply_id"]})
        while answer["type"] != "ack":
            answer = await tab.next()
        ai, voice = await read_until_both_done(tab)
        assert ai[-1]["type"] == "ai.done" and ai[-1]["finish_reason"] == "stopped"
        assert voice == [
            {"type": "voice.done", "reply_id": ack["reply_id"], "sentences": 0, "stopped": True}
        ]
        # The synthesis in progress was cancelled: its connection closed.
        assert await held.outcome == "disconnected"
        stall.release()


@pytest_twisted.ensureDeferred
async def test_espeak_speaks_when_kokoro_fails(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        kokoro.fail = "500"
        llm.script(Stream(sse_events(words("Breathe in slowly. Breathe out."))))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        await send(tab, "Help me breathe.")
        _, voice = await read_until_both_done(tab)
        audio = [f for f in voice if f["type"] == "voice.audio"]
        assert [f["text"] for f in audio] == ["Breathe in slowly.", "Breathe out."]
        assert {(f["backend"], f["voice"]) for f in audio} == {("espeak", "en-us")}
        response = await treq.get(r.http + audio[0]["url"])
        assert response.code == 200
        assert len(await response.content()) > 100


@pytest_twisted.ensureDeferred
async def test_espeak_alone_speaks_a_reply(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path, kokoro=False, format="wav") as (r, llm, _):
        llm.script(Stream(sse_events(words("Breathe in slowly. Breathe out."))))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        await send(tab, "Help me breathe.")
        _, voice = await read_until_both_done(tab)
        audio = [f for f in voice if f["type"] == "voice.audio"]
        assert [(f["index"], f["backend"]) for f in audio] == [(0, "espeak"), (1, "espeak")]
        response = await treq.get(r.http + audio[1]["url"])
        assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
        assert (await response.content())[:4] == b"RIFF"


@pytest_twisted.ensureDeferred
async def test_a_failing_sentence_is_a_voice_error_without_fallback(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path, fallback=False) as (r, llm, kokoro):
        kokoro.fail_for = {"out": "500"}
        llm.script(Stream(sse_events(words("Breathe in slowly. Breathe out. Rest."))))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        await send(tab, "Help me breathe.")
        ai, voice = await read_until_both_done(tab)
        assert ai[-1]["text"] == "Breathe in slowly. Breathe out. Rest."  # text unaffected
        assert [(f["type"], f["index"]) for f in voice[:-1]] == [
            ("voice.audio", 0),
            ("voice.error", 1),
            ("voice.audio", 2),
        ]
        assert voice[1]["code"] == "unavailable" and voice[1]["text"] == "Breathe out."
        assert voice[-1]["sentences"] == 3


@pytest_twisted.ensureDeferred
async def test_speech_off_sends_no_voice_frames(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        llm.script(Stream(sse_events(words(REPLY))))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        assert (await tab.request({"type": "voice.set", "id": 1, "enabled": False}))[
            "type"
        ] == "ack"
        await expect(tab, "voice.prefs", enabled=False)
        await send(tab, "Help me breathe.")
        seen = []
        while True:
            frame = await tab.next()
            seen.append(frame)
            if frame["type"] == "ai.done":
                break
        # Anything sent after ai.done (xp.update…) comes before this answer.
        tab.send_json({"type": "voice.prefs", "id": 2})
        seen += await until(tab, "voice.prefs")
        assert not [f for f in seen if f["type"] in ("voice.audio", "voice.error", "voice.done")]
        assert kokoro.speech_requests == []


@pytest_twisted.ensureDeferred
async def test_default_speech_comes_from_the_config(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path, speak_replies=False) as (r, llm, kokoro):
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        prefs = await tab.request({"type": "voice.prefs", "id": 1})
        assert prefs == {
            "type": "voice.prefs",
            "id": 1,
            "enabled": False,
            "voice": "af_heart",
            "speed": 1.0,
            "volume": 1.0,
            "backend": "kokoro",
            "default_voice": "af_heart",
        }


@pytest_twisted.ensureDeferred
async def test_voice_set_is_stored_for_an_account_and_reaches_every_tab(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        await storage.ensure_profile("Ada", 0.0)
        await storage.update_profile("Ada", {"preferences": {"theme": "dark"}})
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        ack = await tab1.request(
            {"type": "voice.set", "id": 8, "enabled": True, "voice": "bf_emma", "speed": 1.25}
        )
        assert ack == {"type": "ack", "id": 8}
        expected = {
            "type": "voice.prefs",
            "enabled": True,
            "voice": "bf_emma",
            "speed": 1.25,
            "volume": 1.0,
            "backend": "kokoro",
            "default_voice": "af_heart",
        }
        assert await next_of(tab1, "voice.prefs") == expected
        assert await next_of(tab2, "voice.prefs") == expected
        profile = await storage.get_profile("Ada")
        assert profile is not None
        assert profile.preferences == {
            "theme": "dark",
            "voice": {"enabled": True, "voice": "bf_emma", "speed": 1.25},
        }
        # A new connection (a new session) sees the same.
        tab3, _ = await connect(r, await add_person(storage, "Ada"))
        answer = await tab3.request({"type": "voice.prefs", "id": 9})
        assert answer == {**expected, "id": 9}
        # "" goes back to the default voice; the rest stays.
        await tab3.request({"type": "voice.set", "id": 10, "voice": ""})
        assert (await next_of(tab3, "voice.prefs"))["voice"] == "af_heart"
        profile = await storage.get_profile("Ada")
        assert profile is not None
        assert profile.preferences["voice"] == {"enabled": True, "speed": 1.25}
        # The reply is spoken at the chosen speed.
        llm.script(Stream(sse_events(words("Breathe in slowly."))))
        await send(tab3, "Help me breathe.")
        _, voice = await read_until_both_done(tab3)
        assert voice[0]["type"] == "voice.audio"
        (request,) = kokoro.speech_requests
        assert request.body["speed"] == 1.25 and request.body["voice"] == "af_heart"


@pytest_twisted.ensureDeferred
async def test_voice_set_validation(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        tab, _ = await connect(r, token)
        for bad in (
            {"enabled": "yes"},
            {"speed": 5},
            {"speed": 0.1},
            {"speed": "fast"},
            {"speed": True},
            {"voice": 3},
            {"voice": "zz_nobody"},
            {"voice": "x" * 200},
            {"volume": 1.5},
            {"volume": -0.1},
            {"volume": "loud"},
        ):
            answer = await tab.request({"type": "voice.set", "id": "v", **bad})
            assert answer["type"] == "error" and answer["code"] == "bad_request", (bad, answer)
            assert answer["id"] == "v"
        assert await storage.get_profile("Ada") is None or (
            "voice" not in (await storage.get_profile("Ada")).preferences  # type: ignore[union-attr]
        )
        anonymous, _ = await connect(r)
        for type in ("voice.prefs", "voice.set"):
            answer = await anonymous.request({"type": type, "id": 1, "enabled": False})
            assert answer["type"] == "error" and answer["code"] == "unauthenticated"


@pytest_twisted.ensureDeferred
async def test_guest_choices_last_as_long_as_the_guest(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        storage = r.service.storage
        token = await add_person(storage, "Wanderer", guest=True)
        tab, _ = await connect(r, token)
        await tab.request({"type": "voice.set", "id": 1, "speed": 0.75})
        assert (await next_of(tab, "voice.prefs"))["speed"] == 0.75
        assert await storage.get_profile("Wanderer") is None
        other, _ = await connect(r, token)
        assert (await other.request({"type": "voice.prefs", "id": 2}))["speed"] == 0.75
        for client in (tab, other):
            client.sendClose()
            await client.closed
        again, _ = await connect(r, token)

        async def forgotten() -> bool:
            answer = await again.request({"type": "voice.prefs", "id": 3})
            return bool(answer["speed"] == 1.0)

        await eventually(forgotten)


@pytest_twisted.ensureDeferred
async def test_changes_from_two_tabs_at_once_are_both_kept(tmp_path: Path) -> None:
    async with spoken_companion(tmp_path) as (r, llm, kokoro):
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        tab1.send_json({"type": "voice.set", "id": 1, "speed": 1.5})
        tab2.send_json({"type": "voice.set", "id": 2, "voice": "bf_emma"})
        for tab in (tab1, tab2):
            await next_of(tab, "ack")
        profile = await storage.get_profile("Ada")
        assert profile is not None
        assert profile.preferences["voice"] == {"speed": 1.5, "voice": "bf_emma"}
