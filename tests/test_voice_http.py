"""Voice over HTTP on a real loopback port: ``/audio/tts/<key>.<ext>`` (Range,
ETag, cache headers, 404s), ``/api/tts`` (bytes, limits, errors, fallback)
and ``/api/voices``, with the fake Kokoro speaking real HTTP and the real
espeak-ng and ffmpeg."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from bambid.models import AudioInteraction
from tests.chatsupport import add_person
from tests.companionsupport import eventually
from tests.conftest import Running
from tests.fakekokoro import FakeKokoro, fake_audio
from tests.fakellm import closed_port_url
from tests.voicesupport import voice_server

TEXT = "Breathe in slowly and let your shoulders drop."
#: Small deadlines so that a failing test fails fast.
FAST_VOICE = {
    "connect_timeout": 2.0,
    "first_byte_timeout": 5.0,
    "idle_timeout": 5.0,
    "total_timeout": 10.0,
}


@asynccontextmanager
async def fake_kokoro(**kw: Any) -> AsyncIterator[FakeKokoro]:
    fake = FakeKokoro(reactor, **kw)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@asynccontextmanager
async def kokoro_server(tmp_path: Path, url: str, **voice: Any) -> AsyncIterator[Running]:
    settings = {**FAST_VOICE, "backend": "kokoro", "url": url, **voice}
    async with voice_server(tmp_path, voice=settings) as running:
        yield running


async def get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    response = await treq.get(url, allow_redirects=False, **kw)
    body = await response.content()
    headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body


async def tts(r: Running, **query: str) -> tuple[int, dict[str, str], bytes]:
    parts = "&".join(f"{k}={quote(v)}" for k, v in query.items())
    return await get(f"{r.http}/api/tts?{parts}")


def raw_get(port: int, path: str) -> bytes:
    """A GET with ``path`` sent exactly as given (no client normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest_twisted.ensureDeferred
async def test_api_tts_answers_the_clip_and_caches_it(tmp_path: Path) -> None:
    async with fake_kokoro() as fake, kokoro_server(tmp_path, fake.url) as r:
        code, headers, body = await tts(r, text=TEXT)
        assert code == 200, body
        assert body == fake_audio("mp3", TEXT, "af_heart", 1.0)
        assert headers["content-type"] == "audio/mpeg"
        assert headers["x-bambid-voice-backend"] == "kokoro"
        url = headers["x-bambid-audio-url"]
        key = url.removeprefix("/audio/tts/").removesuffix(".mp3")
        assert url == f"/audio/tts/{key}.mp3" and len(key) == 32
        assert headers["etag"] == f'"{key}"'
        (request,) = fake.speech_requests
        assert request.body["input"] == TEXT and request.body["voice"] == "af_heart"
        # Again: from the cache (the fake sees no second request).
        code, again, body2 = await tts(r, text=TEXT)
        assert (code, body2, again["x-bambid-audio-url"]) == (200, body, url)
        assert len(fake.speech_requests) == 1
        # The clip's own URL serves the same bytes, for a year.
        code, clip_headers, clip = await get(r.http + url)
        assert (code, clip) == (200, body)
        assert clip_headers["content-type"] == "audio/mpeg"
        assert clip_headers["cache-control"] == "public, max-age=31536000, immutable"
        assert clip_headers["etag"] == f'"{key}"'
        assert clip_headers["accept-ranges"] == "bytes"

        async def recorded() -> bool:
            return len(await r.service.storage.list_records(AudioInteraction, "anonymous", 10)) == 2

        await eventually(recorded)
        records = await r.service.storage.list_records(AudioInteraction, "anonymous", 10)
        assert sorted(x.details["cached"] for x in records) == [False, True]
        assert {(x.kind, x.name, x.details["source"]) for x in records} == {
            ("tts", "af_heart", "api")
        }


@pytest_twisted.ensureDeferred
async def test_clips_answer_ranges_and_revalidation(tmp_path: Path) -> None:
    async with fake_kokoro() as fake, kokoro_server(tmp_path, fake.url) as r:
        _, headers, body = await tts(r, text=TEXT)
        url = r.http + headers["x-bambid-audio-url"]
        etag = headers["etag"]
        code, part_headers, part = await get(url, headers={"Range": "bytes=0-9"})
        assert (code, part) == (206, body[:10])
        assert part_headers["content-range"] == f"bytes 0-9/{len(body)}"
        code, part_headers, part = await get(url, headers={"Range": "bytes=10-"})
        assert (code, part) == (206, body[10:])
        code, bad_headers, _ = await get(url, headers={"Range": f"bytes={len(body) + 10}-"})
        assert code == 416
        assert bad_headers["content-range"] == f"bytes */{len(body)}"
        code, not_modified, nothing = await get(url, headers={"If-None-Match": etag})
        assert (code, nothing) == (304, b"")
        assert not_modified["etag"] == etag
        code, _, again = await get(
            url, headers={"If-None-Match": '"0123456789abcdef0123456789abcdef"'}
        )
        assert (code, again) == (200, body)
        response = await treq.head(url)
        assert response.code == 200
        assert response.headers.getRawHeaders("content-length") == [str(len(body))]


@pytest_twisted.ensureDeferred
async def test_unknown_clips_and_other_names_are_404(tmp_path: Path) -> None:
    async with voice_server(tmp_path) as r:
        (tmp_path / "secret.mp3").write_bytes(b"not for you")
        for name in (
            "0123456789abcdef0123456789abcdef.mp3",  # a key, not cached
            "0123456789ABCDEF0123456789ABCDEF.mp3",
            "0123456789abcdef0123456789abcdef.exe",
            "0123456789abcdef0123456789abcdef",
            "secret.mp3",
            "..%2Fsecret.mp3",
            "..%2F..%2Fbambid.sqlite3",
        ):
            code, _, _ = await get(f"{r.http}/audio/tts/{name}")
            assert code == 404, name
        for path in ("/audio/tts/../secret.mp3", "/audio/tts/%2e%2e/%2e%2e/bambid.sqlite3"):
            answer = await deferToThread(raw_get, r.port, path)
            assert answer.startswith(b"HTTP/1.1 404"), (path, answer[:200])
            assert b"not for you" not in answer and b"SQLite" not in answer


@pytest_twisted.ensureDeferred
async def test_api_tts_refuses_bad_requests(tmp_path: Path) -> None:
    async with fake_kokoro() as fake, kokoro_server(tmp_path, fake.url) as r:
        cases = [
            ({}, 400, "bad_request"),
            ({"text": "   "}, 400, "bad_request"),
            ({"text": "🙂🙂🙂"}, 400, "bad_request"),  # nothing speakable
            ({"text": "a" * 501}, 413, "too_long"),
            ({"text": TEXT, "speed": "fast"}, 400, "bad_request"),
            ({"text": TEXT, "speed": "4.5"}, 400, "bad_request"),
            ({"text": TEXT, "speed": "nan"}, 400, "bad_request"),
            ({"text": TEXT, "voice": "zz_nobody"}, 400, "bad_request"),
        ]
        for query, status, error in cases:
            code, headers, body = await tts(r, **query)
            assert code == status, (query, body)
            assert headers["content-type"].startswith("application/json")
            assert json.loads(body)["error"] == error, body
        assert fake.speech_requests == []
        # A voice from the list and a speed are passed on.
        code, _, body = await tts(r, text=TEXT, voice="bf_emma", speed="1.25")
        assert code == 200
        assert body == fake_audio("mp3", TEXT, "bf_emma", 1.25)


@pytest_twisted.ensureDeferred
async def test_api_tts_is_rate_limited_per_address_and_per_person(tmp_path: Path) -> None:
    async with (
        fake_kokoro() as fake,
        kokoro_server(tmp_path, fake.url, api_burst=2, api_per_minute=0.1) as r,
    ):
        for n in range(2):
            code, _, _ = await tts(r, text=f"Sentence number {n}.")
            assert code == 200
        code, headers, body = await tts(r, text="One more.")
        assert code == 429, body
        assert int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"] == "rate_limited"
        # A signed-in person has a bucket of their own.
        token = await add_person(r.service.storage, "Ada")
        code, _, _ = await get(f"{r.http}/api/tts?text=Hello.", cookies={"bambid_session": token})
        assert code == 200


@pytest_twisted.ensureDeferred
async def test_api_tts_uses_the_persons_voice_and_records_them(tmp_path: Path) -> None:
    async with fake_kokoro() as fake, kokoro_server(tmp_path, fake.url) as r:
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        await storage.ensure_profile("Ada", 0.0)
        await storage.update_profile(
            "Ada", {"preferences": {"theme": "dark", "voice": {"voice": "bf_emma", "speed": 0.75}}}
        )
        code, _, body = await get(
            f"{r.http}/api/tts?text=Hello.", cookies={"bambid_session": token}
        )
        assert code == 200 and body == fake_audio("mp3", "Hello.", "bf_emma", 0.75)

        async def recorded() -> bool:
            return bool(await storage.list_records(AudioInteraction, "Ada", 10))

        await eventually(recorded)
        (record,) = await storage.list_records(AudioInteraction, "Ada", 10)
        assert record.name == "bf_emma" and record.details["speed"] == 0.75


@pytest_twisted.ensureDeferred
async def test_kokoro_failing_without_fallback_is_502(tmp_path: Path) -> None:
    async with (
        fake_kokoro(fail="500") as fake,
        kokoro_server(tmp_path, fake.url, fallback=False) as r,
    ):
        code, headers, body = await tts(r, text=TEXT)
        assert code == 502, body
        assert json.loads(body)["error"] == "tts_failed"
        assert headers["content-type"].startswith("application/json")


@pytest_twisted.ensureDeferred
async def test_kokoro_too_slow_without_fallback_is_504(tmp_path: Path) -> None:
    async with (
        fake_kokoro(fail="hang") as fake,
        kokoro_server(tmp_path, fake.url, fallback=False, first_byte_timeout=0.2) as r,
    ):
        code, _, body = await tts(r, text=TEXT)
        assert code == 504, body
        assert json.loads(body)["error"] == "tts_timeout"


@pytest_twisted.ensureDeferred
async def test_espeak_speaks_when_kokoro_fails_or_is_down(tmp_path: Path) -> None:
    async with fake_kokoro(fail="500") as fake, kokoro_server(tmp_path / "a", fake.url) as r:
        code, headers, body = await tts(r, text=TEXT)
        assert code == 200, body
        assert headers["x-bambid-voice-backend"] == "espeak"
        assert headers["content-type"] == "audio/mpeg"
        assert body[:3] == b"ID3" or body[0] == 0xFF  # real MP3 from ffmpeg
        assert len(fake.speech_requests) == 1
    down = await closed_port_url(reactor)
    async with kokoro_server(tmp_path / "b", down) as r:
        code, headers, body = await tts(r, text=TEXT)
        assert code == 200 and headers["x-bambid-voice-backend"] == "espeak"


@pytest_twisted.ensureDeferred
async def test_voices_in_both_kokoro_shapes(tmp_path: Path) -> None:
    for shape in ("new", "legacy"):
        async with (
            fake_kokoro(voices_shape=shape) as fake,
            kokoro_server(tmp_path / shape, fake.url) as r,
        ):
            code, headers, body = await get(r.http + "/api/voices")
            assert code == 200, body
            document = json.loads(body)
            assert document["backend"] == "kokoro"
            assert document["default_voice"] == "af_heart"
            assert document["fallback"] == "espeak"
            assert {
                "id": "bf_emma",
                "name": "bf_emma",
                "backend": "kokoro",
                "language": "en-gb",
                "gender": "female",
            } in document["voices"]
            assert [v["id"] for v in document["voices"]] == sorted(fake.voices)
            code, _, same = await get(r.http + "/api/tts/voices")
            assert (code, same) == (200, body)
            assert len(fake.voice_requests) <= 2  # kept: at most the health check and one listing


@pytest_twisted.ensureDeferred
async def test_voices_fall_back_to_espeak_and_fallback_off_is_null(tmp_path: Path) -> None:
    down = await closed_port_url(reactor)
    async with kokoro_server(tmp_path / "a", down) as r:
        code, _, body = await get(r.http + "/api/voices")
        document = json.loads(body)
        assert code == 200 and document["backend"] == "espeak"
        assert document["default_voice"] == "en-us"
        assert any(v["id"] == "en-us" for v in document["voices"])
        assert all(v["backend"] == "espeak" for v in document["voices"])
    async with kokoro_server(tmp_path / "b", down, fallback=False) as r:
        code, _, body = await get(r.http + "/api/voices")
        assert code == 503 and json.loads(body)["error"] == "unavailable"
    async with fake_kokoro() as fake, kokoro_server(tmp_path / "c", fake.url, fallback=False) as r:
        code, _, body = await get(r.http + "/api/voices")
        assert code == 200 and json.loads(body)["fallback"] is None


@pytest_twisted.ensureDeferred
async def test_espeak_alone_lists_and_speaks(tmp_path: Path) -> None:
    async with voice_server(tmp_path, voice={"format": "wav"}) as r:
        code, _, body = await get(r.http + "/api/voices")
        document = json.loads(body)
        assert code == 200
        assert (document["backend"], document["default_voice"]) == ("espeak", "en-us")
        assert document["fallback"] is None
        code, headers, body = await tts(r, text=TEXT)
        assert code == 200 and headers["content-type"] == "audio/wav"
        assert body[:4] == b"RIFF" and headers["x-bambid-voice-backend"] == "espeak"
    async with voice_server(tmp_path / "none", voice={"espeak_command": "no-such-espeak"}) as r:
        code, _, body = await get(r.http + "/api/voices")
        assert code == 503
        code, _, body = await tts(r, text=TEXT)
        assert code == 502 and b"not installed" in body


@pytest_twisted.ensureDeferred
async def test_health_has_a_voice_section(tmp_path: Path) -> None:
    async with fake_kokoro() as fake, kokoro_server(tmp_path, fake.url) as r:
        await tts(r, text=TEXT)
        code, _, body = await get(r.http + "/health/api")
        report = json.loads(body)
        assert code == 200
        voice = report["voice"]
        assert voice["backend"] == "kokoro" and voice["default_voice"] == "af_heart"
        assert voice["cache"]["entries"] == 1
        assert voice["speaking_with_fallback"] is False

        async def checked() -> bool:
            return r.service.voice.health_report()["reachable"] is True

        await eventually(checked)
        report = r.service.voice.health_report()
        assert report["fallback"]["backend"] == "espeak"
        assert report["checked_at"] is not None


@pytest_twisted.ensureDeferred
async def test_an_evicted_clip_is_404(tmp_path: Path) -> None:
    # A clip of almost the whole cap (1 MiB) is there from before the start.
    old_key = "ab" + "0" * 30
    (tmp_path / "var" / "tts-cache" / "ab").mkdir(parents=True)
    (tmp_path / "var" / "tts-cache" / "ab" / f"{old_key}.mp3").write_bytes(b"\xff" * 1_047_000)
    async with fake_kokoro() as fake, kokoro_server(tmp_path, fake.url, cache_max_mb=1) as r:
        code, _, old = await get(f"{r.http}/audio/tts/{old_key}.mp3")
        assert (code, len(old)) == (200, 1_047_000)
        code, headers, _ = await tts(r, text=TEXT)  # the new clip pushes the old one out
        assert code == 200
        code, _, _ = await get(f"{r.http}/audio/tts/{old_key}.mp3")
        assert code == 404
        code, _, _ = await get(r.http + headers["x-bambid-audio-url"])
        assert code == 200
        assert r.service.voice.health_report()["cache"]["evictions"] == 1
