"""The WebSocket handlers of voice settings, and the object that builds and
holds the voice parts (``VoiceServices``).

Registered types: ``voice.prefs``, ``voice.set``, ``voice.read`` and
``voice.stop`` (docs/protocol.md, "Voice" and "Triggers and effects"); each
needs a signed-in person (``unauthenticated``). ``voice.set`` takes any of
``enabled`` (bool), ``voice`` (a voice id from ``/api/voices``, or "" for the
default), ``speed`` (a number, 0.25-4.0) and ``volume`` (a number, 0-1: the
browsers' playback volume, kept so that it follows the person); anything
else is ``bad_request`` naming the ``field`` and nothing is changed. The
sender gets the ``ack``, then every tab of the person gets ``voice.prefs``
(without ``id``).

``voice.read {text}`` (any level) reads a whole text aloud as a reading
(``VoicePipeline.start_reading``, kind "read"): ``ack {reply_id}``, then
``voice.audio``… ``voice.done`` to every tab. ``text`` must be a non-empty
string of at most ``read_max_bytes`` bytes of UTF-8 (``triggers.read_max_bytes``;
``bad_request`` otherwise). It is spoken even when reply speech is off: the
person asked for it. ``voice.stop {reply_id?}`` cancels the person's reading
or replay (only the one with that id, when given): ``ack {reply_id,
stopped}``; the reading gets ``voice.done`` stopped. A companion reply's
speech is stopped with ``ai.stop``, not here.

``VoiceServices.build`` makes the backends from ``[voice]``: Kokoro-FastAPI
(``backend = "kokoro"``, or a ``url`` set) with espeak-ng as its fallback
when ``voice.fallback`` is on, else espeak-ng alone; the audio cache in
``voice.cache_dir`` (relative to the base directory unless absolute), capped
at ``voice.cache_max_mb``; then ``Speech``, the preferences and the reply
pipeline. The backends are checked every ``HEALTH_INTERVAL`` seconds in the
background, so ``health_report()`` answers at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bambid.config import VoiceConfig
from bambid.identity import Identity
from bambid.storage import Storage
from bambid.voice.backend import TTSBackend, TTSError
from bambid.voice.cache import AudioCache
from bambid.voice.espeak import EspeakBackend
from bambid.voice.kokoro import KokoroBackend
from bambid.voice.pipeline import VoicePipeline
from bambid.voice.preferences import VoicePreferences, VoicePrefs, valid_volume
from bambid.voice.speech import Speech
from bambid.ws.dispatch import ClientError, Connection, Dispatcher

#: Seconds between background health checks of the TTS backends.
HEALTH_INTERVAL = 60.0
#: Seconds ``stop()`` waits for killed espeak-ng processes to be reaped.
REAP_TIMEOUT = 5.0
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_VOICE_LENGTH = 100
#: ``voice.read``'s cap when none is given (``triggers.read_max_bytes``'s default).
READ_MAX_BYTES = 65536


class People(Protocol):
    """What voice needs of the chat hub."""

    def connections_of(self, username: str) -> list[Connection]: ...

    def send_to_person(self, username: str, type: str, **fields: Any) -> int: ...


def _identity(connection: Connection) -> Identity:
    if connection.identity is None:
        raise ClientError("unauthenticated", "sign in or join as a guest to use voice")
    return connection.identity


def valid_speed(value: Any) -> float | None:
    """``value`` as a speed if it is a number within 0.25-4.0, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    speed = float(value)
    if not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        return None
    return speed


def _number(
    values: Mapping[str, Any], field: str, valid: Callable[[Any], float | None], span: str
) -> float | None:
    """``values[field]`` as ``valid`` reads it; None when absent or null; a
    ``bad_request`` naming ``field`` when ``valid`` refuses it (the number
    must be from ``span``)."""
    if values.get(field) is None:
        return None
    number = valid(values[field])
    if number is None:
        raise ClientError("bad_request", f"'{field}' must be a number from {span}", field=field)
    return number


class VoiceServices:
    """The backends, cache, speech, preferences and pipeline; the handlers."""

    _log = Logger()

    def __init__(
        self,
        config: VoiceConfig,
        speech: Speech,
        preferences: VoicePreferences,
        pipeline: VoicePipeline,
        people: People,
        clock: IReactorTime,
        *,
        read_max_bytes: int = READ_MAX_BYTES,
    ) -> None:
        self.config = config
        self.speech = speech
        self.cache = speech.cache
        self.preferences = preferences
        self.pipeline = pipeline
        self.people = people
        self.clock = clock
        self.read_max_bytes = read_max_bytes
        self._health: dict[str, Any] | None = None
        self._checked_at: float | None = None
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._looping: Deferred[Any] | None = None
        self._checking: Deferred[None] | None = None

    @classmethod
    def build(
        cls,
        config: VoiceConfig,
        storage: Storage,
        reactor: Any,
        people: People,
        base_dir: Path,
        *,
        read_max_bytes: int = READ_MAX_BYTES,
    ) -> VoiceServices:
        """Everything from ``[voice]`` (see the module doc); ``read_max_bytes``
        is ``triggers.read_max_bytes``."""
        primary: TTSBackend
        fallback: TTSBackend | None = None
        if config.effective_backend == "kokoro":
            primary = KokoroBackend.from_config(config, reactor)
            if config.fallback:
                fallback = EspeakBackend.from_config(config, reactor, as_fallback=True)
        else:
            primary = EspeakBackend.from_config(config, reactor, as_fallback=False)
        directory = Path(config.cache_dir)
        if not directory.is_absolute():
            directory = base_dir / directory
        cache = AudioCache(directory, config.cache_max_mb * 1024 * 1024, reactor)
        clock: IReactorTime = reactor
        speech = Speech(primary, fallback, cache, config, storage, clock)
        preferences = VoicePreferences(storage, clock, config, primary.default_voice)
        pipeline = VoicePipeline(speech, people, preferences)
        return cls(
            config, speech, preferences, pipeline, people, clock, read_max_bytes=read_max_bytes
        )

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("voice.prefs", self.prefs)
        dispatcher.register("voice.set", self.set)
        dispatcher.register("voice.read", self.read)
        dispatcher.register("voice.stop", self.stop_reading)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the cache (before the server listens); start the health checks."""
        await self.cache.open()
        self._looping = self._loop.start(HEALTH_INTERVAL, now=True)
        self._looping.addErrback(lambda f: self._log.failure("voice health checks stopped", f))

    async def stop(self) -> None:
        """Stop the health checks; wait for the records being written, the
        cache's background work and the espeak-ng processes to be reaped.
        Called after the companion stopped (its replies' speech is cancelled
        by then)."""
        self.pipeline.stop()
        if self._loop.running:
            self._loop.stop()
        if self._checking is not None:
            self._checking.cancel()
        await self.speech.close()
        await self.cache.idle()
        idle = [
            backend.idle()
            for backend in (self.speech.primary, self.speech.fallback)
            if isinstance(backend, EspeakBackend)
        ]
        if idle:
            waiting: Deferred[Any] = defer.DeferredList(idle, consumeErrors=True)
            waiting.addTimeout(REAP_TIMEOUT, self.clock)
            try:
                await waiting
            except defer.TimeoutError:
                self._log.warn("espeak-ng processes were still running at shutdown")

    def _check(self) -> Deferred[None]:
        checking = Deferred.fromCoroutine(self._check_now())
        self._checking = checking
        checking.addErrback(lambda f: f.trap(defer.CancelledError))
        checking.addErrback(lambda f: self._log.failure("voice health check failed", f))

        def over(_: object) -> None:
            if self._checking is checking:
                self._checking = None

        checking.addBoth(over)
        return checking

    async def _check_now(self) -> None:
        self._health = await self.speech.health()
        self._checked_at = self.clock.seconds()

    def health_report(self) -> dict[str, Any]:
        """The ``voice`` section of ``/health/api``: the last background check,
        with the cache figures and the fallback state as they are now."""
        speech = self.speech
        report: dict[str, Any] = {
            "backend": speech.primary.name,
            "default_voice": speech.primary.default_voice,
            "format": speech.primary.format,
            "reachable": None,
            "latency_ms": None,
            "voices": None,
            "error": "not checked yet",
            "fallback": None,
        }
        if self._health is not None:
            report.update(self._health)
        report["speaking_with_fallback"] = speech.outage
        report["cache"] = self.cache.stats()
        report["checked_at"] = self._checked_at
        return report

    def connection_closed(self, connection: Connection) -> None:
        """For the WebSocket factory's ``close_listeners`` (after the hub's):
        with a person's last connection go their reading and, for a guest,
        their choices."""
        identity = connection.identity
        if identity is None:
            return
        others = [c for c in self.people.connections_of(identity.name) if c is not connection]
        if not others:
            self.pipeline.forget(identity)
            self.preferences.forget_guest(identity)

    # -- handlers ----------------------------------------------------------------------

    def _frame(self, prefs: Any) -> dict[str, Any]:
        return self.preferences.document(prefs, self.speech.primary.name)

    async def prefs(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        fields = self._frame(await self.preferences.get(identity))
        if "id" in message:
            fields = {"id": message["id"], **fields}
        connection.send("voice.prefs", **fields)

    async def set(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        changes = await self.check(message)
        prefs = await self.preferences.update(identity, **changes)
        ack: dict[str, Any] = {"id": message["id"]} if "id" in message else {}
        connection.send("ack", **ack)
        self.announce(identity, prefs)

    async def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The changes ``values`` asks for (``enabled``, ``voice``, ``speed``,
        ``volume``; absent or null: unchanged), as keywords of
        ``VoicePreferences.update``; other keys are ignored. A bad value is
        ``ClientError("bad_request", ..., field=<key>)`` and nothing changes;
        ``unavailable`` when a voice is named and no voice list can be read.
        The HTTP preferences API checks with this too."""
        enabled = values.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ClientError("bad_request", "'enabled' must be true or false", field="enabled")
        speed = _number(values, "speed", valid_speed, "0.25 to 4.0")
        volume = _number(values, "volume", valid_volume, "0 to 1")
        voice = values.get("voice")
        if voice is not None:
            if not isinstance(voice, str) or len(voice) > MAX_VOICE_LENGTH:
                raise ClientError("bad_request", "'voice' must be a voice id", field="voice")
            if voice and not await self._known(voice):
                raise ClientError("bad_request", f"there is no voice {voice!r}", field="voice")
        return {"enabled": enabled, "voice": voice, "speed": speed, "volume": volume}

    def state(self, prefs: VoicePrefs) -> dict[str, Any]:
        """The fields of a ``voice.prefs`` frame for ``prefs``."""
        return self._frame(prefs)

    def announce(self, identity: Identity, prefs: VoicePrefs) -> None:
        """Every tab of the person gets ``voice.prefs`` (after a change)."""
        self.people.send_to_person(identity.name, "voice.prefs", **self._frame(prefs))

    async def _known(self, voice: str) -> bool:
        try:
            return await self.speech.has_voice(voice)
        except TTSError:
            raise ClientError(
                "unavailable", "the voices cannot be listed right now; try again later"
            ) from None

    async def read(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ClientError("bad_request", "'text' must be a text to read")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ClientError("bad_request", "'text' is not valid Unicode") from None
        if size > self.read_max_bytes:
            raise ClientError(
                "bad_request", f"'text' is longer than {self.read_max_bytes} bytes of UTF-8"
            )
        reading = await self.pipeline.start_reading(identity, "read")
        ack: dict[str, Any] = {"id": message["id"]} if "id" in message else {}
        connection.send("ack", reply_id=reading.reply_id, **ack)
        reading.say(text)
        reading.finish()

    async def stop_reading(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        reply_id = message.get("reply_id")
        if reply_id is not None and not isinstance(reply_id, str):
            raise ClientError("bad_request", "'reply_id' must be a string")
        ack: dict[str, Any] = {"id": message["id"]} if "id" in message else {}
        reading = self.pipeline.reading_of(identity)
        stopping = reading is not None and reply_id in (None, reading.reply_id)
        connection.send("ack", reply_id=reply_id, stopped=stopping, **ack)
        if stopping:
            self.pipeline.stop_reading(identity, reply_id)
