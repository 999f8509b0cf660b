"""The Kokoro-FastAPI client (docs/voice.md; facts in backends.md §C7).

One :class:`KokoroBackend` talks to one base URL ending in ``/v1``. A synthesis
is ``POST {url}/audio/speech`` with ``"stream": false``, so the answer is one
whole clip; its ``Content-Type`` must be ``audio/*`` (or
``application/octet-stream``) and it must not be empty. Each request gets a
connection of its own under the ``[voice]`` deadlines and ``max_audio_bytes``
(``bambid.httpclient``); cancelling a call closes the connection, and Kokoro
stops generating when its client goes.

Failures are :class:`~bambid.voice.backend.TTSError`: 400 and 422 (a voice it
does not have, a speed out of range) are ``bad_request`` with Kokoro's own
message; any other non-2xx, a refused or dropped connection are
``unavailable``; a deadline is ``timeout``; a clip over the cap ``too_long``;
a 2xx that is not audio ``bad_response``.

Nothing is cached here: ``Speech`` caches clips and the voice list.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.logger import Logger

from bambid.config import VoiceConfig
from bambid.httpclient import (
    BackendError,
    BytesExchange,
    HTTPBody,
    JSONExchange,
    Timeouts,
    base_url,
    request_headers,
)
from bambid.urls import redact_url
from bambid.voice.backend import MEDIA_TYPES, Audio, TTSError, Voice, voices_health

__all__ = ["DEFAULT_VOICE", "LANGUAGES", "KokoroBackend", "parse_voices"]

_log = Logger()

DEFAULT_VOICE = "af_heart"

#: The first letter of a Kokoro voice id: its language.
LANGUAGES: dict[str, str] = {
    "a": "en-us",
    "b": "en-gb",
    "e": "es",
    "f": "fr",
    "h": "hi",
    "i": "it",
    "j": "ja",
    "p": "pt-br",
    "z": "zh",
}
_GENDERS = {"f": "female", "m": "male"}

_SERVICE = "TTS server"
_VOICE_LIST_CAP = 1 << 20
_ACCEPT = "audio/*, application/octet-stream;q=0.9"


def _is_audio(media_type: str) -> bool:
    return media_type.startswith("audio/") or media_type == "application/octet-stream"


class KokoroBackend:
    """One Kokoro-FastAPI server; a ``TTSBackend``. Safe to share between
    concurrent callers (Kokoro itself queues parallel requests)."""

    name = "kokoro"

    def __init__(
        self,
        url: str,
        api_key: str,
        default_voice: str,
        format: str,
        timeouts: Timeouts,
        reactor: Any,
    ) -> None:
        if format not in MEDIA_TYPES:
            raise ValueError(f"not an audio format: {format!r}")
        self.url = base_url(url)
        self.default_voice = default_voice
        self.format = format
        self.timeouts = timeouts
        self._api_key = api_key
        self._reactor = reactor

    @classmethod
    def from_config(cls, config: VoiceConfig, reactor: Any) -> KokoroBackend:
        return cls(
            config.url,
            config.api_key,
            config.default_voice or DEFAULT_VOICE,
            config.format,
            Timeouts.from_config(config),
            reactor,
        )

    def __repr__(self) -> str:
        return f"<KokoroBackend {self.url}>"

    async def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        """One clip of ``text`` in ``self.format``. Raises TTSError."""
        if not text.strip():
            raise TTSError("bad_request", "there is no text to speak")
        payload = {
            "model": "kokoro",
            "input": text,
            "voice": voice,
            "response_format": self.format,
            "speed": speed,
            "stream": False,
        }
        exchange = BytesExchange(
            self._reactor,
            self.timeouts,
            self.url,
            self._api_key,
            service=_SERVICE,
            subject="audio",
            accept=_is_audio,
        )
        try:
            body: HTTPBody = await exchange.run(
                b"POST",
                f"{self.url}/audio/speech",
                request_headers(self._api_key, _ACCEPT, json_body=True),
                json.dumps(payload, ensure_ascii=False).encode("utf-8"),
            )
        except BackendError as e:
            raise self._failed(e) from None
        if not body.data:
            raise self._failed(BackendError("bad_response", f"{self._where} sent an empty clip"))
        return Audio(body.data, self.format)

    async def voices(self) -> list[Voice]:
        """``GET {url}/audio/voices`` (either shape), sorted by id. Raises TTSError."""
        timeouts = attrs.evolve(
            self.timeouts, max_bytes=min(self.timeouts.max_bytes, _VOICE_LIST_CAP)
        )
        exchange = JSONExchange(self._reactor, timeouts, self.url, self._api_key, service=_SERVICE)
        try:
            document = await exchange.run(
                b"GET", f"{self.url}/audio/voices", request_headers(self._api_key), None
            )
        except BackendError as e:
            raise self._failed(e, log=False) from None
        voices = parse_voices(document)
        if voices is None:
            message = f"{self._where} answered /audio/voices in an unknown format"
            raise TTSError("bad_response", message)
        return voices

    async def health(self) -> dict[str, Any]:
        """Whether the voices can be listed (``voices_health``). Never raises
        (except CancelledError when cancelled)."""
        return await voices_health(self, self._reactor, url=redact_url(self.url, mask=""))

    @property
    def _where(self) -> str:
        return f"the {_SERVICE} at {self.url}"

    def _failed(self, error: BackendError, *, log: bool = True) -> TTSError:
        """The TTSError for a failed exchange (400 and 422 are the caller's
        fault, not the server's). Logged at debug level only: ``Speech``
        reports an outage once, not once per sentence."""
        if error.status in (400, 422):
            code = "bad_request"
        elif error.code == "interrupted":
            code = "unavailable"
        else:
            code = error.code
        if not log:
            return TTSError(code, error.message)
        _log.debug(
            "TTS server {url} failed: {code}: {message}",
            url=self.url,
            code=code,
            message=error.message,
        )
        return TTSError(code, error.message)


def parse_voices(document: Any) -> list[Voice] | None:
    """Kokoro's voice list, ``{"voices": [{"id", "name"}, …]}`` (v0.4.0 on) or
    ``{"voices": ["af_heart", …]}`` (older), as Voices sorted by id; None when
    the document is neither."""
    entries = document.get("voices") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return None
    found: dict[str, Voice] = {}
    for entry in entries:
        if isinstance(entry, str):
            voice_id, name = entry, entry
        elif isinstance(entry, dict) and isinstance(entry.get("id"), str):
            voice_id = entry["id"]
            given = entry.get("name")
            name = given if isinstance(given, str) else voice_id
        else:
            continue
        voice_id = voice_id.strip()
        if voice_id and voice_id not in found:
            found[voice_id] = _voice(voice_id, name.strip() or voice_id)
    return sorted(found.values(), key=lambda v: v.id)


def _voice(voice_id: str, name: str) -> Voice:
    """Language and gender from the id's prefix: ``af_heart`` is US English,
    female; anything else (a mix, a custom pack) has neither."""
    language = gender = ""
    prefix, underscore, _ = voice_id.partition("_")
    if underscore and len(prefix) == 2 and prefix[0] in LANGUAGES and prefix[1] in _GENDERS:
        language, gender = LANGUAGES[prefix[0]], _GENDERS[prefix[1]]
    return Voice(voice_id, name, "kokoro", language, gender)
