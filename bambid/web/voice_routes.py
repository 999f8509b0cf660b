"""HTTP routes of voice (docs/api.md, "Voice"): cached clips, ``/api/tts``
and the voice list.

``GET /audio/tts/<key>.<ext>`` serves a clip from the audio cache with
``twisted.web.static.File``, which does ``Range`` (206, 416 for an
unsatisfiable range, ``Accept-Ranges``), HEAD and ``Last-Modified``; this
module adds what it lacks: the media type of the extension, the immutable
``Cache-Control`` and a strong ``ETag`` (the key, quoted) answered with 304
by ``Request.setETag``. A name that is not ``<32 hex>.<format>``, or a clip
not (or no longer) in the cache: the 404 page.

``GET /api/tts`` speaks ``text`` through ``Speech`` (so from the cache when
it was spoken before) and answers the clip itself, the same way, with
``X-Bambid-Audio-Url`` and ``X-Bambid-Voice-Backend``. Checks, in order:
``text`` present (400) and not over ``voice.max_text_length`` (413),
``speed`` (400), something left after cleaning (400), the rate limit (429,
``voice.api_burst`` then ``voice.api_per_minute`` per person, or per address
when signed out), ``voice`` in the voice list (400; not checked when there
is no list: the backend judges). Synthesis failures: 504 ``tts_timeout``,
else 502 ``tts_failed``.

``GET /api/voices`` and ``GET /api/tts/voices``: ``Speech.voices()``; 503
``unavailable`` when nothing can list voices.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.static import File
from werkzeug.exceptions import NotFound

from bambid.auth.accounts import AccountError
from bambid.identity import Identity
from bambid.ratelimit import KeyedLimiter
from bambid.voice.backend import MEDIA_TYPES, TTSError
from bambid.voice.cache import AudioCache
from bambid.voice.handlers import VoiceServices, valid_speed
from bambid.voice.pipeline import record_name
from bambid.voice.sentences import clean_for_speech
from bambid.voice.speech import Clip
from bambid.web.app import ApiError, WebApp, json_response
from bambid.web.auth_routes import api_error, client_address

#: Clips never change under their name (the name is the hash of what made them).
CLIP_CACHE_CONTROL = b"public, max-age=31536000, immutable"
#: /api/tts answers depend on the person (their voice, their speed).
API_CACHE_CONTROL = b"private, no-cache"
ANONYMOUS = "anonymous"

Identify = Callable[[IRequest], Awaitable[Identity | None]]


class VoiceRoutes:
    """The voice routes (see the module doc)."""

    _log = Logger()

    def __init__(self, voice: VoiceServices, identify: Identify, clock: IReactorTime) -> None:
        self.voice = voice
        self.speech = voice.speech
        self.cache = voice.cache
        self.config = voice.config
        self.identify = identify
        self.limiter = KeyedLimiter(
            clock, voice.config.api_per_minute / 60.0, voice.config.api_burst
        )

    # -- clips ---------------------------------------------------------------------------

    def clip(self, request: IRequest, name: str) -> Any:
        key, dot, extension = name.partition(".")
        if not dot or not AudioCache.is_key(key) or extension not in MEDIA_TYPES:
            raise NotFound()
        return self._serve(request, key, extension, CLIP_CACHE_CONTROL)

    def _serve(self, request: IRequest, key: str, extension: str, cache_control: bytes) -> Any:
        path = self.cache.lookup(key, extension)
        if path is None:
            raise NotFound()
        if not path.is_file():  # deleted behind the cache's back
            self.cache.forget(key)
            raise NotFound()
        request.setHeader(b"Cache-Control", cache_control)
        if request.setETag(f'"{key}"'.encode("ascii")) is http.CACHED:
            return b""
        return _clip_file(str(path), extension)

    # -- /api/tts --------------------------------------------------------------------------

    async def tts(self, request: IRequest) -> Any:
        text = _arg(request, "text")
        if text is None or not text.strip():
            raise ApiError(400, "bad_request", "'text' is required")
        limit = self.config.max_text_length
        if len(text) > limit:
            raise ApiError(413, "too_long", f"'text' is longer than {limit} characters")
        speed_text = _arg(request, "speed")
        speed = None
        if speed_text:
            try:
                speed = valid_speed(float(speed_text))
            except ValueError:
                speed = None
            if speed is None:
                raise ApiError(400, "bad_request", "'speed' must be a number from 0.25 to 4.0")
        spoken = clean_for_speech(text)
        if not spoken:
            raise ApiError(400, "bad_request", "'text' has nothing to speak")
        try:
            identity = await self.identify(request)
        except AccountError as e:
            raise api_error(e) from None
        bucket = f"person:{identity.key}" if identity else f"address:{client_address(request)}"
        wait = self.limiter.take(bucket)
        if wait > 0:
            raise ApiError(
                429, "rate_limited", "too many speech requests; wait a moment", retry_after=wait
            )
        voice = _arg(request, "voice") or None
        if voice is not None and not await self._known(voice):
            raise ApiError(400, "bad_request", f"there is no voice {voice[:100]!r}")
        if identity is not None and (voice is None or speed is None):
            prefs = await self.voice.preferences.get(identity)
            voice = voice or prefs.voice or None
            speed = prefs.speed if speed is None else speed
        clip = await self._speak(spoken, voice, speed, identity)
        request.setHeader(b"X-Bambid-Audio-Url", clip.url.encode("ascii"))
        request.setHeader(b"X-Bambid-Voice-Backend", clip.backend.encode("ascii"))
        try:
            return self._serve(request, clip.key, clip.format, API_CACHE_CONTROL)
        except NotFound:  # evicted at once: a cache far too small for its traffic
            raise ApiError(503, "unavailable", "the audio cache is full; try again later") from None

    async def _known(self, voice: str) -> bool:
        try:
            return await self.speech.has_voice(voice)
        except TTSError:
            return True  # no list to check against: the backend judges

    async def _speak(
        self, text: str, voice: str | None, speed: float | None, identity: Identity | None
    ) -> Clip:
        try:
            return await self.speech.speak(
                text,
                voice,
                speed,
                username=record_name(identity) if identity else ANONYMOUS,
                details={"source": "api"},
            )
        except TTSError as e:
            if e.code == "timeout":
                raise ApiError(504, "tts_timeout", e.message) from None
            raise ApiError(502, "tts_failed", e.message) from None

    # -- voices ------------------------------------------------------------------------------

    async def voices(self, request: IRequest) -> bytes:
        try:
            document = await self.speech.voices()
        except TTSError as e:
            raise ApiError(503, "unavailable", e.message) from None
        return json_response(request, 200, document)


def _clip_file(path: str, extension: str) -> IResource:
    """The file as a resource whose type is the extension's media type (not
    the ``mimetypes`` guess: ``audio/x-wav``, ``audio/opus``)."""
    clip = File(path, defaultType=MEDIA_TYPES[extension])
    clip.contentTypes = {}  # always the default type
    clip.contentEncodings = {}
    return clip


def _arg(request: IRequest, name: str) -> str | None:
    """The first value of query argument ``name``; None when absent;
    ``ApiError`` 400 when it is not UTF-8."""
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    try:
        value: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", f"'{name}' is not UTF-8") from None
    return value


def install_voice_routes(
    web: WebApp, voice: VoiceServices, identify: Identify, clock: IReactorTime
) -> VoiceRoutes:
    """Add ``/audio/tts/<name>``, ``/api/tts``, ``/api/voices`` and
    ``/api/tts/voices`` to ``web.app``. ``identify`` tells who sent a request
    (``AuthRoutes.identify``)."""
    routes = VoiceRoutes(voice, identify, clock)
    get = ["GET", "HEAD"]
    app = web.app
    app.route("/audio/tts/<name>", methods=get, endpoint="voice_clip")(routes.clip)
    app.route("/api/tts", methods=get, endpoint="voice_tts")(routes.tts)
    app.route("/api/voices", methods=get, endpoint="voice_voices")(routes.voices)
    app.route("/api/tts/voices", methods=get, endpoint="voice_tts_voices")(routes.voices)
    return routes
