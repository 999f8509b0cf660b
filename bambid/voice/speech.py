"""Text to a cached clip: what every spoken sentence goes through.

``Speech.speak(text, voice, speed, ...)`` answers a ``Clip`` (a key in the
audio cache and what made it), never blocking the reactor:

- The text is stripped and capped at ``voice.max_text_length`` characters;
  ``voice`` None or "" means the primary backend's default voice, ``speed``
  None means ``voice.speed``.
- The cache key is ``AudioCache.key_for(backend, voice, speed, format, text)``
  of the backend that actually speaks. A cache hit answers at once
  (``cached=True``).
- A miss synthesises under that backend's ``DeferredSemaphore``
  (``voice.concurrency`` at once; the others wait in order). Identical
  requests in flight (same key) share one synthesis: cancelling one caller
  detaches only that caller, and the synthesis is cancelled (its HTTP
  connection closed, its subprocess killed) when no caller is left.
- Fallback: when the primary is Kokoro and ``voice.fallback`` is on (the
  caller passes a ``fallback`` backend), any ``TTSError`` from Kokoro makes
  espeak-ng speak the same text with *its* default voice, at the same speed
  (its own cache key). A warning is logged once per outage (when it starts;
  an info line when Kokoro speaks again), not per sentence. After an
  ``unavailable`` or ``timeout`` failure Kokoro is skipped for
  ``OUTAGE_RETRY`` seconds (clock injected): sentences go straight to
  espeak-ng instead of each waiting for Kokoro's deadlines; the first one
  after that tries Kokoro again. Kokoro clips already cached are still used.
- Every call is recorded as an ``AudioInteraction`` (``kind`` "tts",
  ``name`` the voice that spoke, ``details`` ``backend``, ``chars``,
  ``cached``, ``duration_ms``, ``error``, ``speed`` and the caller's
  ``details``), in the background; a failure to record is logged, never
  raised. ``close()`` waits for the records still being written.

Failures are ``TTSError`` (the code of the last backend tried);
``CancelledError`` when the caller cancelled.

``voices()`` is the ``/api/voices`` document (docs/api.md), kept for
``VOICES_TTL`` seconds: the primary's voices, or the fallback's when the
primary cannot list them; ``TTSError("unavailable")`` when nothing lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.config import VoiceConfig
from bambid.models import AudioInteraction
from bambid.storage import Storage
from bambid.voice.backend import Audio, TTSBackend, TTSError
from bambid.voice.cache import AudioCache

#: Seconds the primary backend is skipped (when a fallback exists) after it
#: was unreachable or too slow.
OUTAGE_RETRY = 30.0
#: Seconds a voice list is kept.
VOICES_TTL = 60.0
#: Failures that make the primary count as down for ``OUTAGE_RETRY``.
_DOWN_CODES = frozenset({"unavailable", "timeout"})

T = TypeVar("T")


@attrs.frozen
class Clip:
    """A spoken text in the cache: ``/audio/tts/<key>.<format>``. ``voice`` and
    ``backend`` are what spoke it (espeak-ng's when it stood in for Kokoro);
    ``cached`` that it came from the cache without a synthesis."""

    key: str
    format: str
    text: str
    voice: str
    backend: str
    cached: bool

    @property
    def url(self) -> str:
        return f"/audio/tts/{self.key}.{self.format}"


class Shared(Generic[T]):
    """One piece of work awaited by several callers.

    ``wait()`` gives each caller its own Deferred. Cancelling one detaches
    that caller only; the work itself is cancelled when the last caller
    leaves before it is done. A caller that arrives after the work ended gets
    its result at once."""

    def __init__(self, work: Deferred[T]) -> None:
        self.work = work
        self._waiters: list[Deferred[T]] = []
        self._result: T | Failure | None = None
        self._landed = False
        work.addBoth(self._land)

    def wait(self) -> Deferred[T]:
        if self._landed:
            if isinstance(self._result, Failure):
                return defer.fail(self._result)
            return defer.succeed(cast(T, self._result))
        waiter: Deferred[T] = Deferred(self._leave)
        self._waiters.append(waiter)
        return waiter

    def _leave(self, waiter: Deferred[T]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not self._waiters and not self._landed:
            self.work.cancel()

    def _land(self, result: T | Failure) -> None:
        self._landed = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class Speech:
    """See the module doc. ``fallback`` is None unless the primary is Kokoro
    and ``voice.fallback`` is on."""

    _log = Logger()

    def __init__(
        self,
        primary: TTSBackend,
        fallback: TTSBackend | None,
        cache: AudioCache,
        config: VoiceConfig,
        storage: Storage,
        clock: IReactorTime,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.cache = cache
        self.config = config
        self.storage = storage
        self.clock = clock
        self._semaphores: dict[str, DeferredSemaphore] = {}
        self._flights: dict[str, Shared[Clip]] = {}
        self._records: set[Deferred[None]] = set()
        #: Called with (backend, outcome, seconds) of each ``speak``: outcome
        #: "ok", "cached", or the ``TTSError`` code ("cancelled", "internal") (metrics).
        self.spoken_listeners: list[Callable[[str, str, float], object]] = []
        #: Since the primary's last failure, until its next success.
        self.outage = False
        self._skip_until = 0.0
        self._voices: dict[str, Any] | None = None
        self._voices_until = 0.0
        self._listing: Shared[dict[str, Any]] | None = None

    @property
    def default_voice(self) -> str:
        return self.primary.default_voice

    # -- speaking ------------------------------------------------------------------------

    async def speak(
        self,
        text: str,
        voice: str | None,
        speed: float | None,
        *,
        username: str,
        details: dict[str, Any],
    ) -> Clip:
        """``text`` as a clip in the cache (see the module doc)."""
        started = self.clock.seconds()
        text = text.strip()[: self.config.max_text_length].strip()
        voice = voice or self.primary.default_voice
        speed = self.config.speed if speed is None else speed
        clip: Clip | None = None
        error: str | None = None
        try:
            if not text:
                raise TTSError("bad_request", "there is nothing to speak")
            key = AudioCache.key_for(self.primary.name, voice, speed, self.primary.format, text)
            clip = self._cached(self.primary, key, text, voice)
            if clip is None:
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._start(key, text, voice, speed)
                clip = await flight.wait()
            return clip
        except TTSError as e:
            error = f"{e.code}: {e.message}"
            raise
        except CancelledError:
            error = "cancelled"
            raise
        except Exception as e:
            error = f"internal: {type(e).__name__}"
            raise
        finally:
            if clip is not None:
                spoken_by, spoken_with, cached = clip.backend, clip.voice, clip.cached
            else:
                spoken_by = (self.fallback or self.primary).name
                spoken_with, cached = voice, False
            outcome = ("cached" if cached else "ok") if error is None else error.split(":")[0]
            for listener in self.spoken_listeners:
                listener(spoken_by, outcome, self.clock.seconds() - started)
            self._record(
                AudioInteraction(
                    username=username,
                    kind="tts",
                    name=spoken_with,
                    timestamp=started,
                    details={
                        "backend": spoken_by,
                        "chars": len(text),
                        "cached": cached,
                        "duration_ms": round((self.clock.seconds() - started) * 1000, 3),
                        "error": error,
                        "speed": speed,
                        **details,
                    },
                )
            )

    def _start(self, key: str, text: str, voice: str, speed: float) -> Shared[Clip]:
        work: Deferred[Clip] = Deferred.fromCoroutine(self._make(key, text, voice, speed))
        if work.called:
            return Shared(work)

        def landed(result: object) -> object:
            # Before the callers hear of it: one resuming at once and asking
            # again must start afresh, not join the finished work.
            flight = self._flights.get(key)
            if flight is not None and flight.work is work:
                del self._flights[key]
            return result

        work.addBoth(landed)
        flight = self._flights[key] = Shared(work)
        return flight

    def _cached(self, backend: TTSBackend, key: str, text: str, voice: str) -> Clip | None:
        if self.cache.lookup(key, backend.format) is None:
            return None
        return Clip(key, backend.format, text, voice, backend.name, cached=True)

    async def _make(self, key: str, text: str, voice: str, speed: float) -> Clip:
        """One synthesis, by the primary or, failing that, the fallback."""
        fallback = self.fallback
        if fallback is None or self.clock.seconds() >= self._skip_until:
            try:
                audio = await self._synthesize(self.primary, text, voice, speed)
            except TTSError as e:
                if fallback is None:
                    raise
                self._primary_failed(e)
            else:
                self._primary_spoke()
                await self.cache.store(key, audio)
                return Clip(key, audio.format, text, voice, self.primary.name, cached=False)
        assert fallback is not None
        standin = fallback.default_voice
        fallback_key = AudioCache.key_for(fallback.name, standin, speed, fallback.format, text)
        clip = self._cached(fallback, fallback_key, text, standin)
        if clip is not None:
            return clip
        audio = await self._synthesize(fallback, text, standin, speed)
        await self.cache.store(fallback_key, audio)
        return Clip(fallback_key, audio.format, text, standin, fallback.name, cached=False)

    async def _synthesize(self, backend: TTSBackend, text: str, voice: str, speed: float) -> Audio:
        semaphore = self._semaphores.get(backend.name)
        if semaphore is None:
            semaphore = self._semaphores[backend.name] = DeferredSemaphore(self.config.concurrency)
        await semaphore.acquire()
        try:
            return await backend.synthesize(text, voice, speed)
        finally:
            semaphore.release()

    def _primary_failed(self, error: TTSError) -> None:
        if error.code in _DOWN_CODES:
            self._skip_until = self.clock.seconds() + OUTAGE_RETRY
        if not self.outage:
            self.outage = True
            self._log.warn(
                "{backend} could not speak ({error}); {fallback} speaks instead until it recovers",
                backend=self.primary.name,
                error=str(error),
                fallback=self.fallback.name if self.fallback else "-",
            )

    def _primary_spoke(self) -> None:
        self._skip_until = 0.0
        if self.outage:
            self.outage = False
            self._log.info("{backend} speaks again", backend=self.primary.name)

    # -- records --------------------------------------------------------------------------

    def _record(self, entry: AudioInteraction) -> None:
        done: Deferred[None] = Deferred.fromCoroutine(self.storage.record(entry))
        done.addErrback(
            lambda f: self._log.failure(
                "could not record a synthesis for {who}", f, who=entry.username
            )
        )
        if not done.called:
            self._records.add(done)
            done.addBoth(lambda _: self._records.discard(done))

    async def close(self) -> None:
        """Wait for the records still being written (before storage closes)."""
        if self._records:
            await defer.DeferredList(list(self._records), consumeErrors=True)

    # -- voices ---------------------------------------------------------------------------

    async def voices(self) -> dict[str, Any]:
        """The ``/api/voices`` document (see the module doc)."""
        if self._voices is not None and self.clock.seconds() < self._voices_until:
            return self._voices
        listing = self._listing
        if listing is None:
            work: Deferred[dict[str, Any]] = Deferred.fromCoroutine(self._list_voices())
            if not work.called:
                work.addBoth(self._listed)  # before the callers hear of it
            listing = Shared(work)
            if not work.called:
                self._listing = listing
        return await listing.wait()

    def _listed(self, result: object) -> object:
        self._listing = None
        return result

    async def _list_voices(self) -> dict[str, Any]:
        fallback = self.fallback
        try:
            listed, backend = await self.primary.voices(), self.primary
        except TTSError as e:
            if fallback is None:
                self._log.warn("no voice list: {error}", error=str(e))
                raise TTSError("unavailable", f"the voices cannot be listed ({e.message})") from e
            self._log.warn(
                "{backend} cannot list its voices ({error}); listing {fallback}'s",
                backend=self.primary.name,
                error=str(e),
                fallback=fallback.name,
            )
            try:
                listed, backend = await fallback.voices(), fallback
            except TTSError as e2:
                self._log.warn("no voice list: {error}", error=str(e2))
                raise TTSError(
                    "unavailable", f"the voices cannot be listed ({e.message}; {e2.message})"
                ) from e2
        document = {
            "backend": backend.name,
            "default_voice": backend.default_voice,
            "fallback": fallback.name if fallback is not None else None,
            "voices": [v.as_json() for v in listed],
        }
        self._voices = document
        self._voices_until = self.clock.seconds() + VOICES_TTL
        return document

    async def has_voice(self, voice: str) -> bool:
        """Whether ``voice`` is in the ``/api/voices`` list. ``TTSError`` when
        there is no list."""
        document = await self.voices()
        return any(v["id"] == voice for v in document["voices"])

    # -- health ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """The ``voice`` section of ``/health/api``; never raises."""
        checks = [self.primary.health()]
        if self.fallback is not None:
            checks.append(self.fallback.health())
        try:
            results = await defer.gatherResults(
                [Deferred.fromCoroutine(_never_raising(check)) for check in checks],
                consumeErrors=True,
            )
        except defer.FirstError as e:  # only a cancellation gets here
            e.subFailure.raiseException()
        primary = results[0]
        return {
            "backend": self.primary.name,
            "default_voice": self.primary.default_voice,
            "format": self.primary.format,
            "reachable": primary.get("reachable"),
            "latency_ms": primary.get("latency_ms"),
            "voices": primary.get("voices"),
            "error": primary.get("error"),
            "fallback": results[1] if len(results) > 1 else None,
            "speaking_with_fallback": self.outage,
            "cache": self.cache.stats(),
        }


async def _never_raising(check: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = dict(await check)
    except CancelledError:
        raise
    except Exception as e:  # health() promises not to raise; a report is still due
        return {"reachable": False, "error": f"the health check failed: {type(e).__name__}"}
    return result
