"""``VoicePipeline`` / ``ReplyVoice``: sentences spoken as they complete,
frames strictly in index order whatever order the syntheses end in, errors in
their place, cancellation, speech off. In-memory backend (the test ends each
synthesis), people and storage; the real segmenter and cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from bambid.identity import Identity
from bambid.voice.backend import TTSError
from bambid.voice.cache import AudioCache
from bambid.voice.pipeline import ReplyVoice, VoicePipeline
from bambid.voice.preferences import VoicePreferences
from bambid.voice.sentences import SpeechSegmenter
from bambid.voice.speech import Speech
from tests.chatsupport import tick
from tests.voicesupport import FakePeople, ManualBackend, RecordingStorage, voice_config

ADA = Identity("Ada", guest=True)  # a guest: preferences in memory
REPLY = (
    "Let's breathe in slowly for four counts. Now hold it gently at the top. "
    "Breathe out through your mouth and let your shoulders drop. You are doing well."
)


def sentences_of(text: str, pieces: int = 1) -> list[str]:
    """What the real segmenter makes of ``text`` (fed in ``pieces`` parts)."""
    segmenter = SpeechSegmenter(voice_config().max_sentence_length)
    out: list[str] = []
    for piece in _split(text, pieces):
        out += segmenter.feed(piece)
    return out + segmenter.flush()


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


class Setup:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.config = voice_config(**{"concurrency": 10, **settings})
        self.backend = ManualBackend()
        self.people = FakePeople()
        self.storage = RecordingStorage()
        self.speech: Speech | None = None
        self.preferences: VoicePreferences | None = None
        self.pipeline: VoicePipeline | None = None

    async def start(self) -> Setup:
        cache = AudioCache(self.tmp_path / "tts", 1 << 20, reactor)
        await cache.open()
        self.speech = Speech(
            self.backend,  # type: ignore[arg-type]
            None,
            cache,
            self.config,
            self.storage,  # type: ignore[arg-type]
            Clock(),
        )
        self.preferences = VoicePreferences(
            self.storage,  # type: ignore[arg-type]
            Clock(),
            self.config,
            self.backend.default_voice,
        )
        self.pipeline = VoicePipeline(self.speech, self.people, self.preferences)
        return self

    async def begin(self, identity: Identity = ADA, reply_id: str = "r1") -> ReplyVoice:
        assert self.pipeline is not None
        voice = await self.pipeline.begin(identity, reply_id)
        assert voice is not None
        return voice

    def frames(self) -> list[dict[str, Any]]:
        return self.people.frames()


@pytest_twisted.ensureDeferred
async def test_frames_go_out_in_index_order_whatever_finishes_first(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    expected = sentences_of(REPLY, pieces=7)
    assert len(expected) >= 3
    voice = await setup.begin()
    for piece in _split(REPLY, 7):
        voice.feed(piece)
    voice.finish()
    assert setup.backend.texts == expected  # every sentence started at once
    # The syntheses end last first: nothing may go out before index 0.
    for sentence in reversed(expected[1:]):
        setup.backend.succeed(sentence)
    for _ in range(200):
        await tick()
    assert setup.frames() == []
    setup.backend.succeed(expected[0])
    await setup.people.until(len(expected) + 1)
    frames = setup.frames()
    audio = frames[:-1]
    assert [f["type"] for f in audio] == ["voice.audio"] * len(expected)
    assert [f["index"] for f in audio] == list(range(len(expected)))
    assert [f["text"] for f in audio] == expected
    for frame in audio:
        assert frame["reply_id"] == "r1"
        assert frame["url"].startswith("/audio/tts/") and frame["url"].endswith(".mp3")
        assert (frame["voice"], frame["backend"]) == ("af_heart", "kokoro")
    assert frames[-1] == {
        "type": "voice.done",
        "reply_id": "r1",
        "sentences": len(expected),
        "stopped": False,
    }
    assert {name for name, _ in setup.people.sent} == {"Ada"}


@pytest_twisted.ensureDeferred
async def test_a_sentence_starts_as_soon_as_it_is_complete(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    voice = await setup.begin()
    first = sentences_of(REPLY)[0]
    voice.feed(REPLY[: len(first)])
    voice.feed(" Now")
    assert setup.backend.texts == [first]  # before the reply ends
    setup.backend.succeed(first)
    await setup.people.until(1)
    assert setup.frames()[0]["index"] == 0 and setup.frames()[0]["text"] == first


@pytest_twisted.ensureDeferred
async def test_a_failed_sentence_takes_its_place_as_an_error(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    expected = sentences_of(REPLY)
    voice = await setup.begin()
    voice.feed(REPLY)
    voice.finish()
    setup.backend.fail(expected[1], TTSError("unavailable", "the TTS server answered 500"))
    for sentence in expected[2:]:
        setup.backend.succeed(sentence)
    setup.backend.succeed(expected[0])
    await setup.people.until(len(expected) + 1)
    frames = setup.frames()
    assert [f["type"] for f in frames] == (
        ["voice.audio", "voice.error"] + ["voice.audio"] * (len(expected) - 2) + ["voice.done"]
    )
    assert frames[1] == {
        "type": "voice.error",
        "reply_id": "r1",
        "index": 1,
        "code": "unavailable",
        "message": "the TTS server answered 500",
        "text": expected[1],
    }
    assert frames[-1]["sentences"] == len(expected) and frames[-1]["stopped"] is False


@pytest_twisted.ensureDeferred
async def test_an_unexpected_failure_is_internal_and_not_described(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    voice = await setup.begin()
    voice.feed("Breathe in.")
    voice.finish()
    setup.backend.call("Breathe in.").result.errback(RuntimeError("secret detail"))
    await setup.people.until(2)
    error, done = setup.frames()
    assert error["type"] == "voice.error" and error["code"] == "internal"
    assert "secret" not in error["message"]
    assert done["type"] == "voice.done" and done["sentences"] == 1


@pytest_twisted.ensureDeferred
async def test_cancel_drops_pending_speech_and_says_stopped(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    expected = sentences_of(REPLY)
    voice = await setup.begin()
    voice.feed(REPLY)
    setup.backend.succeed(expected[0])
    await setup.people.until(1)
    setup.backend.succeed(expected[2])  # ready, but waits for index 1
    await setup.storage.until(2)
    voice.cancel()
    assert setup.backend.call(expected[1]).cancelled
    frames = setup.frames()
    assert [f["type"] for f in frames] == ["voice.audio", "voice.done"]
    assert frames[-1] == {"type": "voice.done", "reply_id": "r1", "sentences": 1, "stopped": True}
    # Nothing more: not the rest of the text, not a finish, not a second cancel.
    voice.feed(" More words here. And more.")
    voice.finish()
    voice.cancel()
    for _ in range(100):
        await tick()
    assert len(setup.frames()) == 2


@pytest_twisted.ensureDeferred
async def test_finish_with_nothing_to_say_is_done_at_once(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    voice = await setup.begin()
    voice.finish()
    assert setup.frames() == [
        {"type": "voice.done", "reply_id": "r1", "sentences": 0, "stopped": False}
    ]


@pytest_twisted.ensureDeferred
async def test_speech_off_means_no_reply_voice(tmp_path: Path) -> None:
    setup = await Setup(tmp_path, speak_replies=False).start()
    assert setup.pipeline is not None and setup.preferences is not None
    assert await setup.pipeline.begin(ADA, "r1") is None
    await setup.preferences.update(ADA, enabled=True, voice="bf_emma", speed=1.5)
    voice = await setup.begin()
    voice.feed("Hello there.")
    voice.finish()
    call = setup.backend.call("Hello there.")
    assert (call.voice, call.speed) == ("bf_emma", 1.5)


@pytest_twisted.ensureDeferred
async def test_each_sentence_is_recorded_with_its_reply(tmp_path: Path) -> None:
    setup = await Setup(tmp_path).start()
    setup.backend.auto = True
    voice = await setup.begin(Identity("Bo"), "r9")
    voice.feed("Breathe in.")
    voice.finish()
    await setup.people.until(2)
    assert setup.speech is not None
    await setup.speech.close()
    (record,) = setup.storage.records
    assert record.username == "Bo" and record.kind == "tts"
    assert record.details["reply_id"] == "r9" and record.details["index"] == 0
    assert record.details["source"] == "reply"
    guest = await setup.begin(ADA, "r10")
    guest.feed("Breathe out.")
    guest.finish()
    await setup.people.until(4)
    await setup.speech.close()
    assert setup.storage.records[-1].username == "guest:Ada"
