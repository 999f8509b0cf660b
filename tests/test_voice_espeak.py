"""The espeak-ng backend with the real espeak-ng and ffmpeg of this machine
(and small shell scripts standing in for them where a program must fail or
never finish)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred

from bambid.config import VoiceConfig
from bambid.voice.backend import TTSError, Voice
from bambid.voice.espeak import EspeakBackend, parse_voices, rate_for

TEXT = "Breathe in slowly, and let it go."
MAGIC = {
    "mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3"),
    "opus": (b"OggS",),
    "aac": (b"\xff\xf1", b"\xff\xf9"),
    "flac": (b"fLaC",),
}


def espeak(
    format: str = "wav",
    *,
    command: str = "espeak-ng",
    ffmpeg: str = "ffmpeg",
    timeout: float = 30.0,
    max_bytes: int = 1 << 24,
) -> EspeakBackend:
    return EspeakBackend(reactor, command, ffmpeg, "en-us", format, timeout, max_bytes)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def never_ending(tmp_path: Path) -> str:
    """A program that never finishes (until killed), standing in for espeak-ng
    or ffmpeg. ``exec``: no child of its own that killing it would orphan."""
    return script(tmp_path, "forever", "exec sleep 600")


def wav_frames(data: bytes) -> int:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[36:40] == b"data"
    riff, size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
    assert (riff, size) == (len(data) - 8, len(data) - 44)  # the real sizes, not placeholders
    return size // 2


# --- speaking -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_wav_clip() -> None:
    audio = await espeak().synthesize(TEXT, "en-us", 1.0)
    assert audio.format == "wav"
    assert audio.media_type == "audio/wav"
    assert wav_frames(audio.data) > 22050 // 2  # more than half a second of speech


@pytest.mark.parametrize("format", ["mp3", "opus", "aac", "flac"])
@pytest_twisted.ensureDeferred
async def test_other_formats_through_ffmpeg(format: str) -> None:
    backend = espeak(format)
    assert backend.format == format
    audio = await backend.synthesize(TEXT, "en-us", 1.0)
    assert audio.format == format
    assert audio.data.startswith(MAGIC[format])
    assert len(audio.data) > 1000


@pytest_twisted.ensureDeferred
async def test_without_ffmpeg_the_clips_are_wav() -> None:
    backend = espeak("mp3", ffmpeg="/nonexistent/ffmpeg")
    assert backend.format == "wav"
    audio = await backend.synthesize(TEXT, "en-us", 1.0)
    assert (audio.format, audio.data[:4]) == ("wav", b"RIFF")


@pytest.mark.parametrize("text", ["--version", "-h", "-v xx --help"])
@pytest_twisted.ensureDeferred
async def test_text_starting_with_a_dash_is_spoken(text: str) -> None:
    audio = await espeak().synthesize(text, "en-us", 1.0)
    assert wav_frames(audio.data) > 1000  # speech, not a version or help text


@pytest_twisted.ensureDeferred
async def test_speed_maps_to_the_rate() -> None:
    assert [rate_for(s) for s in (0.25, 0.5, 1.0, 1.5, 2.6, 4.0)] == [80, 88, 175, 262, 450, 450]
    backend = espeak()
    normal = await backend.synthesize(TEXT, "en-us", 1.0)
    fast = await backend.synthesize(TEXT, "en-us", 2.0)
    assert wav_frames(fast.data) < wav_frames(normal.data)


@pytest.mark.parametrize("voice", ["en us", "en-us;rm", "", "x" * 41, "../en"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_voice_is_a_bad_request(voice: str) -> None:
    with pytest.raises(TTSError) as caught:
        await espeak().synthesize(TEXT, voice, 1.0)
    assert caught.value.code == "bad_request"


@pytest_twisted.ensureDeferred
async def test_an_unknown_voice_is_a_bad_request() -> None:
    with pytest.raises(TTSError) as caught:
        await espeak("mp3").synthesize(TEXT, "xx-nobody", 1.0)
    assert caught.value.code == "bad_request"
    assert "xx-nobody" in caught.value.message


@pytest_twisted.ensureDeferred
async def test_a_missing_program_is_unavailable() -> None:
    backend = espeak(command="/nonexistent/espeak")
    with pytest.raises(TTSError) as caught:
        await backend.synthesize(TEXT, "en-us", 1.0)
    assert caught.value.code == "unavailable"
    assert "espeak-ng is not installed" in caught.value.message
    with pytest.raises(TTSError):
        await backend.voices()
    report = await backend.health()
    assert report["reachable"] is False
    assert "espeak-ng is not installed" in report["error"]


@pytest_twisted.ensureDeferred
async def test_a_failing_program_is_unavailable_with_its_first_error_line(
    tmp_path: Path,
) -> None:
    broken = script(tmp_path, "espeak-broken", "echo 'no sound today' >&2\necho more >&2\nexit 3")
    with pytest.raises(TTSError) as caught:
        await espeak("mp3", command=broken).synthesize(TEXT, "en-us", 1.0)
    assert caught.value.code == "unavailable"
    assert caught.value.message == "espeak-ng failed: no sound today"
    silent = script(tmp_path, "ffmpeg-broken", "cat >/dev/null\nexit 1")
    with pytest.raises(TTSError) as caught:
        await espeak("mp3", ffmpeg=silent).synthesize(TEXT, "en-us", 1.0)
    assert caught.value.code == "unavailable"
    assert caught.value.message == "ffmpeg exited with status 1"


@pytest_twisted.ensureDeferred
async def test_audio_over_the_cap_is_too_long() -> None:
    backend = espeak(max_bytes=4096)
    with pytest.raises(TTSError) as caught:
        await backend.synthesize(TEXT, "en-us", 1.0)
    assert caught.value.code == "too_long"
    await backend.idle().addTimeout(30, reactor)
    assert backend.running == 0


@pytest_twisted.ensureDeferred
async def test_blank_text_is_a_bad_request() -> None:
    with pytest.raises(TTSError) as caught:
        await espeak().synthesize(" \n ", "en-us", 1.0)
    assert caught.value.code == "bad_request"


# --- killing ---------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["wav", "mp3"])
@pytest_twisted.ensureDeferred
async def test_cancelling_kills_the_processes(tmp_path: Path, format: str) -> None:
    if format == "wav":
        backend = espeak(format, command=never_ending(tmp_path))
    else:  # the real espeak-ng, into an ffmpeg that never ends
        backend = espeak(format, ffmpeg=never_ending(tmp_path))
    speaking = Deferred.fromCoroutine(backend.synthesize(TEXT, "en-us", 1.0))
    assert backend.running == (1 if format == "wav" else 2)
    speaking.cancel()
    with pytest.raises(CancelledError):
        await speaking
    # Without the kill, the stand-in would keep running for ten minutes.
    await backend.idle().addTimeout(30, reactor)
    assert backend.running == 0


@pytest_twisted.ensureDeferred
async def test_the_deadline_kills_the_processes(tmp_path: Path) -> None:
    backend = espeak("mp3", ffmpeg=never_ending(tmp_path), timeout=0.3)
    with pytest.raises(TTSError) as caught:
        await backend.synthesize(TEXT, "en-us", 1.0)
    assert caught.value.code == "timeout"
    await backend.idle().addTimeout(30, reactor)
    assert backend.running == 0


# --- voices -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_voices_are_listed_once() -> None:
    backend = espeak()
    assert backend.has_voice("anything")  # not listed yet: espeak-ng judges
    voices = await backend.voices()
    us = next(v for v in voices if v.id == "en-us")
    assert us == Voice("en-us", "English (America)", "espeak", "en-us", "male")
    assert [v.id for v in voices] == sorted({v.id for v in voices})
    assert backend.has_voice("en-us") and not backend.has_voice("xx-nobody")
    assert backend.running == 0
    assert await backend.voices() == voices
    report = await backend.health()
    assert (report["reachable"], report["voices"], report["error"]) == (True, len(voices), None)


def test_parse_voices() -> None:
    listing = (
        "Pty Language       Age/Gender VoiceName          File                 Other Languages\n"
        " 5  af              --/M      Afrikaans          gmw/af               \n"
        " 2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)\n"
        " 5  fr-fr           40/F      French_(France)    roa/fr               (fr 5)\n"
        " 5  yue             --/M      Chinese_(Cantonese) sit/yue              (zh-yue 5)\n"
        " 5  yue             --/M      Chinese_(Jyutping) sit/yue-Latn-jyutping\n"
        "garbage\n"
    )
    assert parse_voices(listing) == [
        Voice("af", "Afrikaans", "espeak", "af", "male"),
        Voice("en-gb", "English (Great Britain)", "espeak", "en-gb", "male"),
        Voice("fr-fr", "French (France)", "espeak", "fr-fr", "female"),
        Voice("yue", "Chinese (Cantonese)", "espeak", "yue", "male"),
    ]


def test_from_config() -> None:
    config = VoiceConfig(default_voice="en-gb", format="opus", total_timeout=9.0)
    primary = EspeakBackend.from_config(config, reactor, as_fallback=False)
    assert (primary.default_voice, primary.format, primary.timeout) == ("en-gb", "opus", 9.0)
    assert primary.max_bytes == config.max_audio_bytes
    fallback = EspeakBackend.from_config(config, reactor, as_fallback=True)
    assert fallback.default_voice == "en-us"
    unset = EspeakBackend.from_config(VoiceConfig(), reactor, as_fallback=False)
    assert unset.default_voice == "en-us"
