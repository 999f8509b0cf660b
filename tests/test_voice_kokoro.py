"""The Kokoro-FastAPI client against the fake Kokoro over real loopback
sockets: the request it sends, both voice-list shapes, Kokoro's error bodies,
deadlines, the byte cap, content checks and cancellation."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred

from bambid.config import VoiceConfig
from bambid.httpclient import Timeouts
from bambid.voice.backend import Audio, TTSError, Voice
from bambid.voice.kokoro import KokoroBackend, parse_voices
from tests.fakekokoro import FAIL_MESSAGE, FakeKokoro, fake_audio
from tests.fakellm import closed_port_url

TEXT = "Breathe in slowly, and let it go."
RELAXED = Timeouts(connect=5, first_byte=5, idle=5, total=20, max_bytes=1 << 20)
TIGHT = Timeouts(connect=5, first_byte=0.2, idle=0.2, total=20, max_bytes=1 << 20)


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeKokoro]:
    server = FakeKokoro(reactor)
    await server.start()
    yield server
    await server.stop()


def kokoro(
    url: str | FakeKokoro,
    *,
    format: str = "mp3",
    key: str = "",
    timeouts: Timeouts = RELAXED,
) -> KokoroBackend:
    base = url.url if isinstance(url, FakeKokoro) else url
    return KokoroBackend(base, key, "af_heart", format, timeouts, reactor)


async def refused(backend: KokoroBackend, voice: str = "af_heart", text: str = TEXT) -> TTSError:
    with pytest.raises(TTSError) as caught:
        await backend.synthesize(text, voice, 1.0)
    return caught.value


# --- synthesis -------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["mp3", "wav", "opus", "aac", "flac"])
@pytest_twisted.ensureDeferred
async def test_a_clip_in_the_configured_format(fake: FakeKokoro, format: str) -> None:
    audio = await kokoro(fake, format=format).synthesize(TEXT, "bf_emma", 1.25)
    assert audio == Audio(fake_audio(format, TEXT, "bf_emma", 1.25), format)
    request = fake.speech_requests[0]
    assert (request.method, request.path) == ("POST", "/v1/audio/speech")
    assert request.body == {
        "model": "kokoro",
        "input": TEXT,
        "voice": "bf_emma",
        "response_format": format,
        "speed": 1.25,
        "stream": False,
    }
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert request.state == "finished"
    await fake.connections_closed()


@pytest_twisted.ensureDeferred
async def test_the_api_key_is_sent_as_a_bearer_token(fake: FakeKokoro) -> None:
    fake.api_key = "kk-local"
    backend = kokoro(fake, key="kk-local")
    await backend.synthesize(TEXT, "af_heart", 1.0)
    await backend.voices()
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer kk-local"] * 2


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_unavailable_and_not_shown(fake: FakeKokoro) -> None:
    fake.api_key = "right"
    error = await refused(kokoro(fake, key="wrong-secret"))
    assert error.code == "unavailable"
    assert "HTTP 401" in error.message
    assert "wrong-secret" not in error.message


@pytest_twisted.ensureDeferred
async def test_kokoros_400_is_a_bad_request_with_its_message(fake: FakeKokoro) -> None:
    fake.script("400")
    error = await refused(kokoro(fake))
    assert error.code == "bad_request"
    assert FAIL_MESSAGE in error.message
    assert "TTS server at" in error.message and "AI backend" not in error.message


@pytest_twisted.ensureDeferred
async def test_an_unknown_voice_is_a_bad_request(fake: FakeKokoro) -> None:
    error = await refused(kokoro(fake), voice="xx_nobody")
    assert error.code == "bad_request"
    assert "xx_nobody" in error.message


@pytest_twisted.ensureDeferred
async def test_a_pydantic_422_is_a_bad_request_with_its_message(fake: FakeKokoro) -> None:
    fake.script("422")
    error = await refused(kokoro(fake))
    assert error.code == "bad_request"
    assert f"input: {FAIL_MESSAGE}" in error.message
    with pytest.raises(TTSError) as caught:
        await kokoro(fake).synthesize(TEXT, "af_heart", 9.0)  # Kokoro's own range check
    assert caught.value.code == "bad_request"
    assert "speed" in caught.value.message


@pytest_twisted.ensureDeferred
async def test_a_500_is_unavailable(fake: FakeKokoro) -> None:
    fake.script("500")
    error = await refused(kokoro(fake))
    assert error.code == "unavailable"
    assert "HTTP 500" in error.message
    assert "the fake broke" in error.message


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_unavailable() -> None:
    url = await closed_port_url(reactor)
    error = await refused(kokoro(url))
    assert error.code == "unavailable"
    assert "the TTS server at" in error.message and "refused" in error.message


@pytest.mark.parametrize("mode", ["drop", "cut"])
@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_is_unavailable(fake: FakeKokoro, mode: str) -> None:
    fake.script(mode)
    error = await refused(kokoro(fake))
    assert error.code == "unavailable"


@pytest.mark.parametrize(("mode", "what"), [("hang", "did not answer"), ("stall", "silent")])
@pytest_twisted.ensureDeferred
async def test_first_byte_and_idle_deadlines(fake: FakeKokoro, mode: str, what: str) -> None:
    fake.script(mode)
    error = await refused(kokoro(fake, timeouts=TIGHT))
    assert error.code == "timeout"
    assert what in error.message
    assert (await fake.speech_requests[0].outcome) == "disconnected"


@pytest_twisted.ensureDeferred
async def test_the_total_deadline(fake: FakeKokoro) -> None:
    fake.latency = 10.0
    timeouts = attrs.evolve(RELAXED, first_byte=20, total=0.2)
    error = await refused(kokoro(fake, timeouts=timeouts))
    assert error.code == "timeout"
    assert "finish" in error.message
    assert (await fake.speech_requests[0].outcome) == "disconnected"


@pytest_twisted.ensureDeferred
async def test_a_clip_over_the_cap_is_too_long(fake: FakeKokoro) -> None:
    text = "Let the shoulders drop and the breath slow down. " * 4
    assert len(fake_audio("wav", text)) > 4096
    capped = kokoro(fake, format="wav", timeouts=attrs.evolve(RELAXED, max_bytes=4096))
    error = await refused(capped, text=text)
    assert error.code == "too_long"
    assert "4096" in error.message
    await fake.connections_closed()


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_audio_is_a_bad_response(fake: FakeKokoro) -> None:
    fake.script("wrong_type", "empty")
    wrong = await refused(kokoro(fake))
    assert (wrong.code, "application/json" in wrong.message) == ("bad_response", True)
    empty = await refused(kokoro(fake))
    assert empty.code == "bad_response"


@pytest_twisted.ensureDeferred
async def test_blank_text_is_refused_without_a_request(fake: FakeKokoro) -> None:
    with pytest.raises(TTSError) as caught:
        await kokoro(fake).synthesize("  \n", "af_heart", 1.0)
    assert caught.value.code == "bad_request"
    assert fake.requests == []


@pytest_twisted.ensureDeferred
async def test_cancelling_closes_the_connection(fake: FakeKokoro) -> None:
    fake.hold()
    parked = fake.until_held()
    speaking = Deferred.fromCoroutine(kokoro(fake).synthesize(TEXT, "af_heart", 1.0))
    await parked
    speaking.cancel()
    with pytest.raises(CancelledError):
        await speaking
    assert (await fake.speech_requests[0].outcome) == "disconnected"
    await fake.connections_closed()


@pytest_twisted.ensureDeferred
async def test_held_answers_go_when_released(fake: FakeKokoro) -> None:
    fake.hold()
    backend = kokoro(fake)
    first = Deferred.fromCoroutine(backend.synthesize("The first sentence.", "af_heart", 1.0))
    second = Deferred.fromCoroutine(backend.synthesize("The second sentence.", "af_heart", 1.0))
    held = await fake.until_held(2)
    assert sorted(r.text for r in held) == ["The first sentence.", "The second sentence."]
    assert fake.release("second") == 1
    assert (await second).data == fake_audio("mp3", "The second sentence.")
    assert not first.called
    assert fake.release() == 1
    assert (await first).data == fake_audio("mp3", "The first sentence.")


@pytest_twisted.ensureDeferred
async def test_out_of_order_completion(fake: FakeKokoro) -> None:
    """The fake's per-text latency lets a later sentence finish first."""
    fake.latency_for = {"first": 0.3, "second": 0.0}
    backend = kokoro(fake)
    done: list[str] = []

    async def speak(text: str) -> None:
        await backend.synthesize(text, "af_heart", 1.0)
        done.append(text)

    first = Deferred.fromCoroutine(speak("The first sentence."))
    second = Deferred.fromCoroutine(speak("The second sentence."))
    await second
    await first
    assert done == ["The second sentence.", "The first sentence."]


# --- voices and health ---------------------------------------------------------------


@pytest.mark.parametrize("shape", ["new", "legacy"])
@pytest_twisted.ensureDeferred
async def test_voices_in_both_shapes(fake: FakeKokoro, shape: str) -> None:
    fake.voices_shape = shape
    fake.voices = ["bm_george", "af_heart", "zf_xiaobei", "custom", "af_heart"]
    voices = await kokoro(fake).voices()
    assert voices == [
        Voice("af_heart", "af_heart", "kokoro", "en-us", "female"),
        Voice("bm_george", "bm_george", "kokoro", "en-gb", "male"),
        Voice("custom", "custom", "kokoro", "", ""),
        Voice("zf_xiaobei", "zf_xiaobei", "kokoro", "zh", "female"),
    ]
    assert fake.voice_requests[0].path == "/v1/audio/voices"


def test_voice_prefixes() -> None:
    ids = ["ef_dora", "ff_siwis", "hm_omega", "im_nicola", "jf_alpha", "pm_alex", "xf_what"]
    parsed = parse_voices({"voices": [{"id": i, "name": i.upper()} for i in ids]})
    assert parsed is not None
    assert [(v.language, v.gender, v.name) for v in parsed] == [
        ("es", "female", "EF_DORA"),
        ("fr", "female", "FF_SIWIS"),
        ("hi", "male", "HM_OMEGA"),
        ("it", "male", "IM_NICOLA"),
        ("ja", "female", "JF_ALPHA"),
        ("pt-br", "male", "PM_ALEX"),
        ("", "", "XF_WHAT"),
    ]
    assert parse_voices({"data": []}) is None
    assert parse_voices(["af_heart"]) is None


@pytest.mark.parametrize(
    ("failure", "code"),
    [("500", "unavailable"), ("garbage", "bad_response"), ("wrong_shape", "bad_response")],
)
@pytest_twisted.ensureDeferred
async def test_voice_list_failures(fake: FakeKokoro, failure: str, code: str) -> None:
    fake.voices_fail = failure
    with pytest.raises(TTSError) as caught:
        await kokoro(fake).voices()
    assert caught.value.code == code


@pytest_twisted.ensureDeferred
async def test_health(fake: FakeKokoro) -> None:
    report = await kokoro(fake).health()
    assert report["reachable"] is True
    assert report["voices"] == len(fake.voices)
    assert (report["backend"], report["error"]) == ("kokoro", None)
    assert report["latency_ms"] >= 0
    fake.voices_fail = "500"
    report = await kokoro(fake).health()
    assert report["reachable"] is False
    assert "HTTP 500" in report["error"]


def test_from_config() -> None:
    config = VoiceConfig(
        url="http://kokoro.local:8880/v1/",
        format="opus",
        idle_timeout=7.0,
        max_audio_bytes=70000,
        api_key="k",
    )
    backend = KokoroBackend.from_config(config, reactor)
    assert (backend.url, backend.format, backend.default_voice) == (
        "http://kokoro.local:8880/v1",
        "opus",
        "af_heart",
    )
    assert (backend.timeouts.idle, backend.timeouts.max_bytes) == (7.0, 70000)
    chosen = KokoroBackend.from_config(attrs.evolve(config, default_voice="af_sky"), reactor)
    assert chosen.default_voice == "af_sky"


# --- the fake as a subprocess -------------------------------------------------------------


def test_the_fake_runs_as_a_subprocess() -> None:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakekokoro", "--latency-ms", "10", "--legacy-voices"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("listening on ")
        url = first.split()[-1]
        with urllib.request.urlopen(f"{url}/audio/voices", timeout=10) as answer:
            assert b'"af_heart"' in answer.read()
        request = urllib.request.Request(
            f"{url}/audio/speech",
            data=b'{"input": "Hello there.", "response_format": "wav", "stream": false}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.headers["Content-Type"] == "audio/wav"
            assert answer.read()[:4] == b"RIFF"
    finally:
        process.terminate()
        process.wait(10)
