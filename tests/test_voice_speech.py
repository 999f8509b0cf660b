"""``Speech``: cache hits, one synthesis per key in flight (and what cancelling
a caller does to it), per-backend concurrency, Kokoro → espeak-ng fallback,
records, the voice list. Backends are in memory (``ManualBackend``: the test
ends each synthesis), the cache is the real one in ``tmp_path``, time is a
``task.Clock``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher

from bambid.models import AudioInteraction
from bambid.voice.backend import TTSError, Voice
from bambid.voice.cache import AudioCache
from bambid.voice.speech import OUTAGE_RETRY, VOICES_TTL, Clip, Shared, Speech
from tests.voicesupport import ManualBackend, RecordingStorage, voice_config


async def make_speech(
    tmp_path: Path,
    primary: ManualBackend,
    fallback: ManualBackend | None = None,
    clock: Clock | None = None,
    storage: RecordingStorage | None = None,
    max_bytes: int = 1 << 20,
    **settings: Any,
) -> Speech:
    cache = AudioCache(tmp_path / "tts", max_bytes, reactor)
    await cache.open()
    return Speech(
        primary,  # type: ignore[arg-type]
        fallback,  # type: ignore[arg-type]
        cache,
        voice_config(**settings),
        storage or RecordingStorage(),  # type: ignore[arg-type]
        clock or Clock(),
    )


def speak(speech: Speech, text: str, voice: str | None = None, **kw: Any) -> Deferred[Clip]:
    return Deferred.fromCoroutine(
        speech.speak(text, voice, kw.pop("speed", None), username="ada", details=kw)
    )


@pytest_twisted.ensureDeferred
async def test_a_second_identical_sentence_comes_from_the_cache(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    storage = RecordingStorage()
    speech = await make_speech(tmp_path, kokoro, storage=storage)
    first = await speak(speech, "Breathe in slowly.", reply_id="r1", index=0)
    second = await speak(speech, "  Breathe in slowly.  ")
    assert kokoro.texts == ["Breathe in slowly."]
    assert first == Clip(first.key, "mp3", "Breathe in slowly.", "af_heart", "kokoro", False)
    assert second == Clip(first.key, "mp3", "Breathe in slowly.", "af_heart", "kokoro", True)
    assert first.url == f"/audio/tts/{first.key}.mp3"
    assert AudioCache.is_key(first.key)
    path = speech.cache.lookup(first.key, "mp3")
    assert path is not None and path.read_bytes() == b"kokoro:af_heart:Breathe in slowly."
    await speech.close()
    assert [type(r) for r in storage.records] == [AudioInteraction, AudioInteraction]
    made, hit = storage.records
    assert (made.username, made.kind, made.name) == ("ada", "tts", "af_heart")
    assert made.details == {
        "backend": "kokoro",
        "chars": len("Breathe in slowly."),
        "cached": False,
        "duration_ms": made.details["duration_ms"],
        "error": None,
        "speed": 1.0,
        "reply_id": "r1",
        "index": 0,
    }
    assert hit.details["cached"] is True and hit.details["error"] is None


@pytest_twisted.ensureDeferred
async def test_voice_speed_and_backend_make_different_keys(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    speech = await make_speech(tmp_path, kokoro)
    a = await speak(speech, "Relax your shoulders.")
    b = await speak(speech, "Relax your shoulders.", "bf_emma")
    c = await speak(speech, "Relax your shoulders.", speed=1.25)
    assert len({a.key, b.key, c.key}) == 3
    assert [(call.voice, call.speed) for call in kokoro.calls] == [
        ("af_heart", 1.0),
        ("bf_emma", 1.0),
        ("af_heart", 1.25),
    ]


@pytest_twisted.ensureDeferred
async def test_text_is_capped_and_empty_text_refused(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    speech = await make_speech(tmp_path, kokoro, max_text_length=20)
    clip = await speak(speech, "a" * 30)
    assert clip.text == "a" * 20 and kokoro.texts == ["a" * 20]
    with pytest.raises(TTSError) as e:
        await speak(speech, "   ")
    assert e.value.code == "bad_request"
    assert kokoro.texts == ["a" * 20]


@pytest_twisted.ensureDeferred
async def test_identical_requests_in_flight_share_one_synthesis(tmp_path: Path) -> None:
    kokoro = ManualBackend()
    speech = await make_speech(tmp_path, kokoro)
    one, two = speak(speech, "Let it go."), speak(speech, "Let it go.")
    assert kokoro.texts == ["Let it go."]
    kokoro.succeed("Let it go.")
    first, second = await one, await two
    assert first == second and not first.cached


@pytest_twisted.ensureDeferred
async def test_cancelling_one_caller_keeps_the_shared_synthesis(tmp_path: Path) -> None:
    kokoro = ManualBackend()
    speech = await make_speech(tmp_path, kokoro)
    one, two = speak(speech, "Stay with it."), speak(speech, "Stay with it.")
    one.cancel()
    with pytest.raises(CancelledError):
        await one
    assert not kokoro.call("Stay with it.").cancelled
    kokoro.succeed("Stay with it.")
    clip = await two
    assert clip.text == "Stay with it." and len(kokoro.calls) == 1


@pytest_twisted.ensureDeferred
async def test_the_synthesis_is_cancelled_when_no_caller_is_left(tmp_path: Path) -> None:
    kokoro = ManualBackend()
    storage = RecordingStorage()
    speech = await make_speech(tmp_path, kokoro, storage=storage)
    one, two = speak(speech, "Stay with it."), speak(speech, "Stay with it.")
    one.cancel()
    two.cancel()
    assert kokoro.call("Stay with it.").cancelled
    for d in (one, two):
        with pytest.raises(CancelledError):
            await d
    # A new request starts a new synthesis.
    three = speak(speech, "Stay with it.")
    assert len(kokoro.calls) == 2
    kokoro.succeed("Stay with it.")
    await three
    await speech.close()
    assert [r.details["error"] for r in storage.records] == ["cancelled", "cancelled", None]


@pytest_twisted.ensureDeferred
async def test_at_most_concurrency_syntheses_run_per_backend(tmp_path: Path) -> None:
    kokoro = ManualBackend()
    speech = await make_speech(tmp_path, kokoro, concurrency=2)
    waiting = [speak(speech, f"Sentence number {n}.") for n in range(4)]
    assert kokoro.texts == ["Sentence number 0.", "Sentence number 1."]
    kokoro.succeed("Sentence number 1.")
    await waiting[1]
    assert kokoro.texts[2:] == ["Sentence number 2."]
    # A caller that gives up while waiting for a slot never reaches the backend.
    waiting[3].cancel()
    with pytest.raises(CancelledError):
        await waiting[3]
    kokoro.succeed("Sentence number 0.")
    kokoro.succeed("Sentence number 2.")
    await waiting[0]
    await waiting[2]
    assert kokoro.texts == [f"Sentence number {n}." for n in range(3)]


@pytest_twisted.ensureDeferred
async def test_kokoro_failing_falls_back_to_espeak_with_its_own_voice(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    kokoro.failure = TTSError("unavailable", "the TTS server answered 500")
    espeak = ManualBackend("espeak", "en-us", "mp3", auto=True)
    clock = Clock()
    storage = RecordingStorage()
    speech = await make_speech(tmp_path, kokoro, espeak, clock=clock, storage=storage)
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        clip = await speak(speech, "Breathe out.", "bf_emma", speed=1.5)
        assert (clip.backend, clip.voice, clip.cached) == ("espeak", "en-us", False)
        assert [(c.text, c.voice, c.speed) for c in espeak.calls] == [
            ("Breathe out.", "en-us", 1.5)
        ]
        assert speech.outage
        # While Kokoro is down, sentences go straight to espeak-ng.
        await speak(speech, "Breathe in.")
        assert len(kokoro.calls) == 1 and len(espeak.calls) == 2
        # After OUTAGE_RETRY seconds Kokoro is tried again; it is back.
        clock.advance(OUTAGE_RETRY)
        kokoro.failure = None
        back = await speak(speech, "Breathe in.")
        assert (back.backend, back.voice) == ("kokoro", "af_heart")
        assert not speech.outage
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [e for e in events if e.get("log_namespace", "").endswith("Speech")]
    assert [e["log_level"].name for e in warnings] == ["warn", "info"]  # once per outage
    await speech.close()
    assert [r.details["backend"] for r in storage.records] == ["espeak", "espeak", "kokoro"]
    assert storage.records[0].name == "en-us"


@pytest_twisted.ensureDeferred
async def test_a_refusal_falls_back_but_does_not_skip_kokoro(tmp_path: Path) -> None:
    kokoro = ManualBackend()
    espeak = ManualBackend("espeak", "en-us", auto=True)
    speech = await make_speech(tmp_path, kokoro, espeak)
    first = speak(speech, "One.")
    kokoro.fail("One.", TTSError("bad_request", "Voice not found"))
    assert (await first).backend == "espeak"
    second = speak(speech, "Two.")
    assert kokoro.texts == ["One.", "Two."]
    kokoro.succeed("Two.")
    assert (await second).backend == "kokoro"


@pytest_twisted.ensureDeferred
async def test_the_fallback_clip_is_cached_too(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    kokoro.failure = TTSError("timeout", "too slow")
    espeak = ManualBackend("espeak", "en-us", auto=True)
    speech = await make_speech(tmp_path, kokoro, espeak)
    first = await speak(speech, "Slowly.")
    again = await speak(speech, "Slowly.")
    assert again == Clip(first.key, first.format, "Slowly.", "en-us", "espeak", True)
    assert len(espeak.calls) == 1


@pytest_twisted.ensureDeferred
async def test_without_fallback_the_failure_is_the_callers(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    kokoro.failure = TTSError("unavailable", "connection refused")
    storage = RecordingStorage()
    speech = await make_speech(tmp_path, kokoro, storage=storage)
    with pytest.raises(TTSError) as e:
        await speak(speech, "Rest now.")
    assert e.value.code == "unavailable"
    # No fallback: Kokoro is asked every time.
    with pytest.raises(TTSError):
        await speak(speech, "Rest now.")
    assert len(kokoro.calls) == 2
    await speech.close()
    assert [r.details["error"] for r in storage.records] == ["unavailable: connection refused"] * 2


@pytest_twisted.ensureDeferred
async def test_failing_to_record_is_logged_not_raised(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    speech = await make_speech(tmp_path, kokoro, storage=RecordingStorage(broken=True))
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        clip = await speak(speech, "Still fine.")
        await speech.close()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert clip.text == "Still fine."
    assert any("could not record" in e.get("log_format", "") for e in events)


@pytest_twisted.ensureDeferred
async def test_the_least_recently_used_clip_is_evicted(tmp_path: Path) -> None:
    kokoro = ManualBackend(auto=True)
    speech = await make_speech(tmp_path, kokoro, max_bytes=100)
    texts = [f"Clip number {n} " + "x" * 20 for n in range(4)]  # ~46 bytes of audio each
    clips = [await speak(speech, text) for text in texts]
    assert speech.cache.lookup(clips[0].key, "mp3") is None
    assert speech.cache.lookup(clips[-1].key, "mp3") is not None
    assert speech.cache.stats()["evictions"] >= 2
    again = await speak(speech, texts[0])
    assert not again.cached and kokoro.texts.count(texts[0]) == 2


# -- the voice list -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_voices_are_listed_and_kept_for_a_minute(tmp_path: Path) -> None:
    kokoro = ManualBackend(voices=[Voice("af_heart", "af_heart", "kokoro", "en-us", "female")])
    espeak = ManualBackend("espeak", "en-us")
    clock = Clock()
    speech = await make_speech(tmp_path, kokoro, espeak, clock=clock)
    document = await speech.voices()
    assert document == {
        "backend": "kokoro",
        "default_voice": "af_heart",
        "fallback": "espeak",
        "voices": [
            {
                "id": "af_heart",
                "name": "af_heart",
                "backend": "kokoro",
                "language": "en-us",
                "gender": "female",
            }
        ],
    }
    assert await speech.voices() == document
    assert kokoro.voice_requests == 1
    assert await speech.has_voice("af_heart") and not await speech.has_voice("af_nope")
    clock.advance(VOICES_TTL)
    await speech.voices()
    assert kokoro.voice_requests == 2


@pytest_twisted.ensureDeferred
async def test_espeaks_voices_are_listed_when_kokoro_cannot(tmp_path: Path) -> None:
    kokoro = ManualBackend(voices=TTSError("unavailable", "connection refused"))
    espeak = ManualBackend(
        "espeak", "en-us", voices=[Voice("en-us", "English (America)", "espeak")]
    )
    speech = await make_speech(tmp_path, kokoro, espeak)
    document = await speech.voices()
    assert document["backend"] == "espeak" and document["default_voice"] == "en-us"
    assert document["fallback"] == "espeak"
    assert [v["id"] for v in document["voices"]] == ["en-us"]


@pytest_twisted.ensureDeferred
async def test_no_voice_list_at_all_is_unavailable(tmp_path: Path) -> None:
    kokoro = ManualBackend(voices=TTSError("unavailable", "connection refused"))
    speech = await make_speech(tmp_path, kokoro)
    with pytest.raises(TTSError) as e:
        await speech.voices()
    assert e.value.code == "unavailable"
    espeak = ManualBackend("espeak", voices=TTSError("unavailable", "espeak-ng is not installed"))
    speech = await make_speech(tmp_path, kokoro, espeak)
    with pytest.raises(TTSError) as e:
        await speech.voices()
    assert e.value.code == "unavailable"
    assert speech.fallback is cast(Any, espeak)


@pytest_twisted.ensureDeferred
async def test_health_reports_backends_and_cache(tmp_path: Path) -> None:
    speech = await make_speech(tmp_path, ManualBackend(), ManualBackend("espeak", "en-us"))
    report = await speech.health()
    assert report["backend"] == "kokoro" and report["reachable"] is True
    assert report["fallback"]["backend"] == "espeak"
    assert report["speaking_with_fallback"] is False
    assert set(report["cache"]) >= {"entries", "bytes", "max_bytes", "hits", "misses"}


# -- Shared ---------------------------------------------------------------------------


def test_a_late_caller_of_shared_work_gets_its_result() -> None:
    work: Deferred[int] = Deferred()
    shared = Shared(work)
    first = shared.wait()
    work.callback(7)
    assert first.result == 7
    assert shared.wait().result == 7
