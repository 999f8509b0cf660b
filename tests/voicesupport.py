"""Helpers for the voice tests: an in-memory TTS backend whose syntheses the
test completes one by one (ordering under out-of-order completion, without
timing), in-memory people and storage for unit tests of ``Speech`` and the
pipeline, a service with chosen ``[voice]`` settings, and readers for the
``voice.*`` frames of a reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from bambid import config as configuration
from bambid.config import VoiceConfig
from bambid.voice.backend import Audio, TTSError, Voice
from tests import wsclient
from tests.chatsupport import chat_server
from tests.companionsupport import FAST_AI
from tests.conftest import Running


def voice_config(**settings: Any) -> VoiceConfig:
    """The default ``[voice]`` with ``settings`` changed."""
    return attrs.evolve(configuration.load(None, {}).voice, **settings)


@attrs.define(eq=False)
class Call:
    """One ``synthesize`` call of a ``ManualBackend``."""

    text: str
    voice: str
    speed: float
    result: Deferred[Audio]
    cancelled: bool = False


class ManualBackend:
    """A ``TTSBackend`` whose syntheses end when the test says so
    (``succeed``/``fail``), or at once with ``auto=True``. Cancelling a call
    marks it ``cancelled``."""

    def __init__(
        self,
        name: str = "kokoro",
        default_voice: str = "af_heart",
        format: str = "mp3",
        *,
        auto: bool = False,
        voices: list[Voice] | TTSError | None = None,
    ) -> None:
        self.name = name
        self.default_voice = default_voice
        self.format = format
        self.auto = auto
        self.calls: list[Call] = []
        self.voice_list: list[Voice] | TTSError = (
            voices if voices is not None else [Voice(default_voice, default_voice, name)]
        )
        self.voice_requests = 0
        self.failure: TTSError | None = None

    def synthesize(self, text: str, voice: str, speed: float) -> Deferred[Audio]:
        def cancel(d: Deferred[Audio]) -> None:
            call.cancelled = True

        result: Deferred[Audio] = Deferred(cancel)
        call = Call(text, voice, speed, result)
        self.calls.append(call)
        if self.failure is not None:
            result.errback(self.failure)
        elif self.auto:
            result.callback(self.audio_for(text, voice))
        return result

    def audio_for(self, text: str, voice: str) -> Audio:
        return Audio(f"{self.name}:{voice}:{text}".encode(), self.format)

    def call(self, text: str) -> Call:
        """The last pending call for ``text``."""
        for call in reversed(self.calls):
            if call.text == text:
                return call
        raise AssertionError(f"{text!r} was never asked for: {[c.text for c in self.calls]}")

    def succeed(self, text: str) -> None:
        call = self.call(text)
        call.result.callback(self.audio_for(text, call.voice))

    def fail(self, text: str, error: TTSError) -> None:
        self.call(text).result.errback(error)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.calls]

    async def voices(self) -> list[Voice]:
        self.voice_requests += 1
        if isinstance(self.voice_list, TTSError):
            raise self.voice_list
        return list(self.voice_list)

    async def health(self) -> dict[str, Any]:
        ok = not isinstance(self.voice_list, TTSError)
        return {
            "backend": self.name,
            "reachable": ok,
            "voices": len(self.voice_list) if ok else 0,  # type: ignore[arg-type]
            "latency_ms": 0.0,
            "error": None if ok else str(self.voice_list),
        }


@attrs.define(eq=False)
class FakePeople:
    """The hub as the pipeline sees it: records what each person was sent."""

    sent: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    _waiters: list[tuple[int, Deferred[None]]] = attrs.Factory(list)

    def send_to_person(self, username: str, type: str, **fields: Any) -> int:
        self.sent.append((username, {"type": type, **fields}))
        count = len(self.frames())
        ready = [w for w in self._waiters if w[0] <= count]
        self._waiters = [w for w in self._waiters if w[0] > count]
        for _, waiter in ready:
            waiter.callback(None)
        return 1

    def until(self, count: int) -> Deferred[None]:
        """Fires once ``count`` ``voice.*`` frames were sent."""
        waiter: Deferred[None] = Deferred()
        if len(self.frames()) >= count:
            waiter.callback(None)
        else:
            self._waiters.append((count, waiter))
        waiter.addTimeout(10, reactor)
        return waiter

    def connections_of(self, username: str) -> list[Any]:
        return []

    def frames(self, type_prefix: str = "voice.") -> list[dict[str, Any]]:
        return [frame for _, frame in self.sent if frame["type"].startswith(type_prefix)]


@attrs.define(eq=False)
class RecordingStorage:
    """What ``Speech`` and the preferences need of storage, in memory."""

    records: list[Any] = attrs.Factory(list)
    broken: bool = False
    _waiters: list[tuple[int, Deferred[None]]] = attrs.Factory(list)

    async def record(self, entry: Any) -> None:
        if self.broken:
            raise RuntimeError("storage is down")
        self.records.append(entry)
        ready = [w for w in self._waiters if w[0] <= len(self.records)]
        self._waiters = [w for w in self._waiters if w[0] > len(self.records)]
        for _, waiter in ready:
            waiter.callback(None)

    def until(self, count: int) -> Deferred[None]:
        """Fires once ``count`` records were written (``Speech`` records a
        synthesis just before its caller gets the clip)."""
        waiter: Deferred[None] = Deferred()
        if len(self.records) >= count:
            waiter.callback(None)
        else:
            self._waiters.append((count, waiter))
        waiter.addTimeout(10, reactor)
        return waiter

    async def get_profile(self, username: str) -> None:
        return None


@asynccontextmanager
async def voice_server(
    tmp_path: Path,
    voice: dict[str, Any] | None = None,
    ai: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[Running]:
    """bambid with ``[voice]`` = ``voice`` (speech on by default) and, when
    ``ai`` has a ``url``, the companion talking to it."""
    settings: dict[str, Any] = {"speak_replies": True, **(voice or {})}
    ai_settings = {**FAST_AI, **(ai or {})}
    async with chat_server(tmp_path, voice=settings, ai=ai_settings, **sections) as running:
        yield running


async def read_voice(client: wsclient.TestClientProtocol) -> list[dict[str, Any]]:
    """The ``voice.*`` frames up to and including ``voice.done``, skipping others."""
    frames: list[dict[str, Any]] = []
    while True:
        message = await client.next()
        if message["type"].startswith("voice."):
            frames.append(message)
            if message["type"] == "voice.done":
                return frames


async def read_until_both_done(
    client: wsclient.TestClientProtocol,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every frame up to both ``ai.done``/``ai.error`` and ``voice.done`` (in
    whichever order they come); returns (ai.* frames, voice.* frames)."""
    ai: list[dict[str, Any]] = []
    voice: list[dict[str, Any]] = []
    ai_over = voice_over = False
    while not (ai_over and voice_over):
        message = await client.next()
        if message["type"].startswith("voice."):
            voice.append(message)
            voice_over = voice_over or message["type"] == "voice.done"
        elif message["type"].startswith("ai."):
            ai.append(message)
            ai_over = ai_over or message["type"] in ("ai.done", "ai.error")
    return ai, voice
