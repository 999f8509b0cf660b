"""What every text-to-speech backend provides, and how it fails.

A backend turns one short text (a sentence, at most ``voice.max_text_length``
characters) into one complete audio clip in the configured format. It never
blocks the reactor: Kokoro is an HTTP exchange, espeak-ng and ffmpeg are
subprocesses. Cancelling the Deferred of a call in progress aborts the work
(the TCP connection is closed, the subprocess killed).
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger()

#: The formats a clip may have, with their media types (Kokoro's table; no pcm,
#: which an ``<audio>`` element cannot play).
MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
}


@attrs.frozen
class Voice:
    """One voice a person can pick. ``id`` is what the backend is asked for;
    ``language`` a BCP 47-ish tag (``en-us``) or ""; ``gender`` ``female``,
    ``male`` or ""."""

    id: str
    name: str
    backend: str
    language: str = ""
    gender: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "backend": self.backend,
            "language": self.language,
            "gender": self.gender,
        }


@attrs.frozen
class Audio:
    """One synthesised clip: the bytes and their format (a ``MEDIA_TYPES`` key)."""

    data: bytes
    format: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


class TTSError(Exception):
    """A synthesis or voice listing failed. ``code``:

    ``unavailable``  the backend cannot be reached, answered non-2xx, or the
                     program is missing or exited non-zero; fallback may help;
    ``timeout``      a deadline passed;
    ``bad_request``  the backend refused this text or voice (Kokoro 400/422);
                     fallback may still help (espeak-ng speaks any text);
    ``too_long``     the clip passed ``voice.max_audio_bytes``;
    ``bad_response`` 2xx with something that is not audio (or not a voice list).

    ``message`` is one line for a person: no traceback, no key.
    """

    CODES = frozenset({"unavailable", "timeout", "bad_request", "too_long", "bad_response"})

    def __init__(self, code: str, message: str) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown TTSError code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TTSBackend(Protocol):
    """A text-to-speech engine (``KokoroBackend``, ``EspeakBackend``)."""

    #: "kokoro" or "espeak": part of every cache key.
    name: str
    #: The voice used when a person has not chosen one (config, else the engine's own).
    default_voice: str
    #: The format of the clips it returns (the configured one; espeak-ng: "wav"
    #: when ffmpeg is missing).
    format: str

    async def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        """One clip of ``text`` spoken by ``voice`` at ``speed`` (0.25-4.0).
        Raises ``TTSError``."""
        ...

    async def voices(self) -> list[Voice]:
        """The voices it offers, sorted by id. Raises ``TTSError``."""
        ...

    async def health(self) -> dict[str, Any]:
        """``{"backend", "reachable", "voices", "latency_ms", "error"}``; never raises."""
        ...


async def voices_health(backend: TTSBackend, clock: IReactorTime, **extra: Any) -> dict[str, Any]:
    """A backend's health: whether its voices can be listed, how many, how long
    it took. ``{"backend", **extra, "reachable", "voices", "latency_ms",
    "error"}``. Never raises (except CancelledError when cancelled)."""
    began = clock.seconds()
    report: dict[str, Any] = {
        "backend": backend.name,
        **extra,
        "reachable": False,
        "voices": 0,
        "latency_ms": 0.0,
        "error": None,
    }
    try:
        voices = await backend.voices()
    except CancelledError:
        raise
    except TTSError as e:
        report["error"] = e.message
    except Exception:
        _log.failure("health check of {backend} failed", backend=backend.name)
        report["error"] = "the health check failed unexpectedly (see the server log)"
    else:
        report.update(reachable=True, voices=len(voices))
    report["latency_ms"] = round((clock.seconds() - began) * 1000.0, 1)
    return report
