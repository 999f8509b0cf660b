"""A fake Kokoro-FastAPI server that speaks real HTTP, for tests and benchmarks.

It serves ``POST /v1/audio/speech``, ``GET /v1/audio/voices``, ``GET /health``
and ``GET /_fake/stats`` on a real TCP port, validates requests the way Kokoro
does (model, voice, speed, format), records every request and notices every
client that hangs up before its answer was finished (how a test proves that
cancelling a synthesis closed the connection).

In process (pytest-twisted, the test's reactor)::

    fake = FakeKokoro(reactor, latency=0.05)     # 127.0.0.1, a free port
    await fake.start()
    backend = KokoroBackend(fake.url, ...)       # fake.url == "http://127.0.0.1:PORT/v1"
    ...
    await fake.stop()

What a speech request gets:

- The audio, after ``fake.latency`` seconds (``reactor.callLater``: no
  sleeping), or after ``fake.latency_for[key]`` for the first key (in
  insertion order) contained in its ``input``: ``fake.latency_for = {"second":
  0.0, "first": 0.3}`` makes the second sentence finish before the first.
- Held back when holding: ``fake.hold()`` parks every answer (once its latency
  has passed) until ``fake.release()`` (all, and stop holding) or
  ``fake.release("second")`` (those whose input contains the text; holding
  goes on). ``fake.held`` lists the parked requests; ``await
  fake.until_held(2)`` waits until at least two are parked.
- A failure mode instead of audio, taken from (first match wins) the queue
  ``fake.script("500", "ok", …)`` (one per request), ``fake.fail_for[key]``
  (the first key contained in the input), or ``fake.fail`` (every request):

  ``"ok"``          the audio (the default);
  ``"400"``         Kokoro's ``{"detail": {"error": "validation_error",
                    "message": …, "type": "invalid_request_error"}}``
                    (``FAIL_MESSAGE``);
  ``"422"``         FastAPI's validation list ``{"detail": [{"loc", "msg",
                    "type"}]}``;
  ``"500"``         Kokoro's ``processing_error``;
  ``"hang"``        never answers (no headers) until the client goes;
  ``"stall"``       headers and half the audio, then silence;
  ``"cut"``         headers and half the audio, then the connection closes;
  ``"drop"``        the connection closes without an answer;
  ``"wrong_type"``  200 with a JSON body (``application/json``);
  ``"empty"``       200 ``audio/mpeg`` with no bytes.

  Requests Kokoro itself refuses get its answers regardless: an unknown
  ``model`` or ``voice`` → 400 (``fake.voices`` are the known voices; mixes
  like ``af_bella(2)+af_sky`` are checked part by part), ``speed`` outside
  0.25-4.0, an unknown ``response_format`` or a missing ``input`` → 422.

The audio is ``fake_audio(format, text, voice, speed)``, a pure function, so
a test can tell which clip it got. ``wav`` is a real tone (8 kHz, 16-bit mono)
and ``mp3`` real silent MPEG-1 Layer III frames after an ID3 tag naming the
text, both playable by a browser, lasting ``duration_for(text)`` seconds;
``opus``, ``aac``, ``flac`` and ``pcm`` only start like their format. Media
types are Kokoro's (``MEDIA_TYPES``: opus is ``audio/opus``).

Voices: ``fake.voices`` (ids; ``DEFAULT_VOICES``) in the v0.4.0 shape
``{"voices": [{"id", "name"}]}``, or the older ``{"voices": ["af_heart", …]}``
when ``fake.voices_shape = "legacy"`` or the query has ``legacy=true``.
``fake.voices_fail``: ``"500"``, ``"hang"``, ``"garbage"`` (200, not JSON) or
``"wrong_shape"`` (200 ``{"data": []}``). ``fake.api_key`` makes every request
without ``Authorization: Bearer <key>`` a 401.

What happened: ``fake.requests`` (every ``RecordedRequest``: ``method``,
``path``, ``headers`` (lower-cased names), ``raw``, ``body`` (parsed JSON or
None), ``text`` (the input), ``state`` and ``outcome`` (a Deferred firing with
``"finished"``, ``"disconnected"`` (the client went) or ``"closed"`` (the fake
closed it)), ``fake.speech_requests``, ``fake.voice_requests``,
``fake.disconnects``, ``await fake.next_request()``, ``await
fake.connections_closed()``, ``fake.open_connections``, ``fake.stats()``.

As a subprocess (browser tests, benchmarks)::

    python -m tests.fakekokoro [--port 0] [--host 127.0.0.1] [--latency-ms 50]
        [--legacy-voices] [--fail MODE] [--api-key KEY]

prints ``listening on PORT http://HOST:PORT/v1`` as its first line and serves
until killed. ``GET /_fake/stats`` returns ``{"requests", "finished",
"disconnected", "closed", "open"}`` counts of speech requests.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import struct
import sys
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "DEFAULT_VOICES",
    "FAIL_MESSAGE",
    "MEDIA_TYPES",
    "MODES",
    "FakeKokoro",
    "RecordedRequest",
    "duration_for",
    "fake_audio",
]

_log = Logger()

DEFAULT_VOICES = (
    "af_heart",
    "af_bella",
    "af_sky",
    "am_michael",
    "bf_emma",
    "bm_george",
    "ef_dora",
    "ff_siwis",
    "jf_alpha",
    "zf_xiaobei",
)
MODELS = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
MODES = ("ok", "400", "422", "500", "hang", "stall", "cut", "drop", "wrong_type", "empty")
VOICE_FAILURES = ("500", "hang", "garbage", "wrong_shape")
FAIL_MESSAGE = "the fake refused this text on purpose"


# --- the audio ------------------------------------------------------------------------


def duration_for(text: str) -> float:
    """How long the fake's clip of ``text`` lasts: 0.1 s plus 20 ms a
    character, at most 2 s."""
    return min(2.0, 0.1 + 0.02 * len(text))


@functools.lru_cache(maxsize=256)
def fake_audio(format: str, text: str, voice: str = "af_heart", speed: float = 1.0) -> bytes:
    """The bytes the fake answers for this request (deterministic)."""
    seed = zlib.crc32(f"{voice}\0{speed}\0{text}".encode())
    seconds = duration_for(text)
    if format == "wav":
        return _wav(seconds, 220.0 + seed % 440)
    if format == "mp3":
        return _id3(text) + _silent_mp3(seconds)
    marker = f"{voice} {speed} {text}".encode()
    if format == "opus":
        return b"OggS\x00\x02" + bytes(20) + b"OpusHead" + marker
    if format == "aac":
        return b"\xff\xf1\x50\x80\x02\x1f\xfc" + marker
    if format == "flac":
        return b"fLaC\x00\x00\x00\x22" + bytes(34) + marker
    if format == "pcm":
        return bytes(int(24000 * seconds) * 2)
    raise ValueError(f"unknown format {format!r}")


def _wav(seconds: float, frequency: float, rate: int = 8000) -> bytes:
    count = int(rate * seconds)
    samples = b"".join(
        struct.pack("<h", int(3000 * math.sin(2 * math.pi * frequency * i / rate)))
        for i in range(count)
    )
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", len(samples)) + samples


def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def _id3(text: str) -> bytes:
    """An ID3v2.4 tag whose title (TIT2, UTF-8) is the text."""
    content = b"\x03" + text.encode("utf-8")
    frame = b"TIT2" + _syncsafe(len(content)) + b"\x00\x00" + content
    return b"ID3\x04\x00\x00" + _syncsafe(len(frame)) + frame


def _silent_mp3(seconds: float) -> bytes:
    """MPEG-1 Layer III, 32 kbit/s, 44.1 kHz, mono: 104-byte frames of
    1152 samples whose side information (all zero) decodes to silence."""
    frame = b"\xff\xfb\x10\xc4" + bytes(100)
    return frame * max(1, round(seconds * 44100 / 1152))


# --- what was asked ---------------------------------------------------------------------


@attrs.define(eq=False)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    raw: bytes
    body: Any  # the parsed JSON, or None
    outcome: Deferred[str] = attrs.field(factory=Deferred)
    state: str = "open"  # then "finished", "disconnected" (the client went) or "closed" (we did)
    _call: IDelayedCall | None = None
    _answer: Any = None  # what to do once released, while held

    @property
    def text(self) -> str:
        value = self.body.get("input") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else ""

    @property
    def disconnected(self) -> bool:
        return self.state == "disconnected"

    def _ended(self, state: str) -> None:
        if self.state not in ("open", "closing"):
            return
        self.state = state
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.outcome.callback(state)


# --- the server ----------------------------------------------------------------------


class _Tracking(WrappingFactory):
    """Counts the open TCP connections and tells when none is left."""

    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self.idle_waiters: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self.idle_waiters = self.idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeKokoro) -> None:
        super().__init__()
        self._fake = fake

    def render(self, request: Request) -> Any:
        return self._fake._handle(request)


def _first_match(table: dict[str, Any], text: str) -> Any:
    for key, value in table.items():
        if key in text:
            return value
    return None


class FakeKokoro:
    """See the module docstring."""

    def __init__(
        self,
        reactor: Any,
        *,
        latency: float = 0.0,
        voices: Iterable[str] = DEFAULT_VOICES,
        voices_shape: str = "new",
        fail: str | None = None,
        api_key: str = "",
    ) -> None:
        self.reactor = reactor
        self.latency = latency
        self.latency_for: dict[str, float] = {}
        self.fail = fail
        self.fail_for: dict[str, str] = {}
        self.voices: list[str] = list(voices)
        self.voices_shape = voices_shape
        self.voices_fail: str | None = None
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._script: deque[str] = deque()
        self._holding = False
        self._held: list[RecordedRequest] = []
        self._held_waiters: list[tuple[int, Deferred[list[RecordedRequest]]]] = []
        self._arrival_waiters: list[Deferred[RecordedRequest]] = []
        self._factory = _Tracking(Site(_Root(self)))
        self._port: Any = None

    # control

    def script(self, *modes: str) -> None:
        """Failure modes (``MODES``) for the next speech requests, in order."""
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        self._script.extend(modes)

    def hold(self) -> None:
        """Park every speech answer, once its latency has passed, until released."""
        self._holding = True

    def release(self, text: str | None = None) -> int:
        """Send the parked answers (those whose input contains ``text``, else
        all, and stop holding). Returns how many were released."""
        if text is None:
            self._holding = False
        chosen = [r for r in self._held if text is None or text in r.text]
        self._held = [r for r in self._held if r not in chosen]
        for record in chosen:
            answer, record._answer = record._answer, None
            if record.state == "open" and answer is not None:
                answer()
        return len(chosen)

    @property
    def held(self) -> list[RecordedRequest]:
        return [r for r in self._held if r.state == "open"]

    def until_held(self, count: int = 1) -> Deferred[list[RecordedRequest]]:
        """Fires with ``fake.held`` once at least ``count`` answers are parked."""
        waiter: Deferred[list[RecordedRequest]] = Deferred()
        self._held_waiters.append((count, waiter))
        self._wake_held()
        return waiter

    def _wake_held(self) -> None:
        held = self.held
        waiting = []
        for count, waiter in self._held_waiters:
            if len(held) >= count:
                waiter.callback(held)
            else:
                waiting.append((count, waiter))
        self._held_waiters = waiting

    async def start(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        endpoint = TCP4ServerEndpoint(self.reactor, port, interface=interface)
        self._port = await endpoint.listen(self._factory)
        return self.port

    async def stop(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
        for record in self.requests:
            if record._call is not None and record._call.active():
                record._call.cancel()
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()

    @property
    def port(self) -> int:
        assert self._port is not None, "not started"
        return int(self._port.getHost().port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # what happened

    @property
    def speech_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/audio/speech")]

    @property
    def voice_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/audio/voices")]

    @property
    def disconnects(self) -> list[RecordedRequest]:
        """Requests whose client hung up before the answer was finished."""
        return [r for r in self.requests if r.disconnected]

    @property
    def open_connections(self) -> int:
        return len(self._factory.protocols)

    def next_request(self) -> Deferred[RecordedRequest]:
        """Fires with the next request to arrive (any path)."""
        waiter: Deferred[RecordedRequest] = Deferred()
        self._arrival_waiters.append(waiter)
        return waiter

    def connections_closed(self) -> Deferred[None]:
        """Fires once no TCP connection to the fake is open."""
        waiter: Deferred[None] = Deferred()
        if not self._factory.protocols:
            waiter.callback(None)
        else:
            self._factory.idle_waiters.append(waiter)
        return waiter

    def stats(self) -> dict[str, int]:
        speech = self.speech_requests
        counts = dict.fromkeys(("finished", "disconnected", "closed", "open"), 0)
        for r in speech:
            counts["closed" if r.state == "closing" else r.state] += 1
        return {"requests": len(speech), **counts}

    # serving

    def _handle(self, request: Request) -> Any:
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method = (request.method or b"").decode("ascii", "replace")
        path = (request.path or b"").decode("utf-8", "replace")
        args: dict[bytes, list[bytes]] = request.args or {}
        query = {
            k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in args.items()
        }
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        record = RecordedRequest(method, path, query, headers, raw, body)
        self.requests.append(record)
        request.notifyFinish().addCallbacks(
            lambda _: record._ended("finished"),
            lambda _: record._ended("closed" if record.state == "closing" else "disconnected"),
        )
        try:
            self._route(request, record)
        except Exception:
            _log.failure("fake Kokoro failed")
            self._json(request, 500, {"detail": "the fake failed"})
        waiters, self._arrival_waiters = self._arrival_waiters, []
        for waiter in waiters:
            waiter.callback(record)
        return NOT_DONE_YET

    def _route(self, request: Request, record: RecordedRequest) -> None:
        if self.api_key and record.headers.get("authorization") != f"Bearer {self.api_key}":
            self._json(request, 401, {"detail": "Invalid API key"})
        elif record.path in ("/health", "/v1/health"):
            self._json(request, 200, {"status": "healthy"})
        elif record.path == "/_fake/stats":
            self._json(request, 200, self.stats())
        elif record.path == "/v1/audio/voices":
            self._voices(request, record)
        elif record.path == "/v1/audio/speech":
            if record.method != "POST":
                self._json(request, 405, {"detail": "Method Not Allowed"})
            else:
                self._speech(request, record)
        else:
            self._json(request, 404, {"detail": "Not Found"})

    def _voices(self, request: Request, record: RecordedRequest) -> None:
        failure = self.voices_fail
        if failure == "500":
            self._json(request, 500, _kokoro_error("processing_error", "voices failed"))
        elif failure == "hang":
            pass
        elif failure == "garbage":
            self._send(request, 200, "text/html", b"<html>not json</html>")
        elif failure == "wrong_shape":
            self._json(request, 200, {"data": []})
        elif self.voices_shape == "legacy" or record.query.get("legacy") == "true":
            self._json(request, 200, {"voices": list(self.voices)})
        else:
            self._json(request, 200, {"voices": [{"id": v, "name": v} for v in self.voices]})

    def _speech(self, request: Request, record: RecordedRequest) -> None:
        refusal = self._refusal(record.body)
        if refusal is not None:
            self._json(request, *refusal)
            return
        if self._script:
            mode = self._script.popleft()
        else:
            mode = _first_match(self.fail_for, record.text) or self.fail or "ok"
        latency = _first_match(self.latency_for, record.text)
        delay = self.latency if latency is None else latency
        record._call = self.reactor.callLater(delay, self._ready, request, record, mode)

    def _ready(self, request: Request, record: RecordedRequest, mode: str) -> None:
        record._call = None
        if record.state != "open":
            return
        if not self._holding:
            self._answer(request, record, mode)
            return
        record._answer = lambda: self._answer(request, record, mode)
        self._held.append(record)
        self._wake_held()

    def _answer(self, request: Request, record: RecordedRequest, mode: str) -> None:
        body = record.body
        format = body.get("response_format", "mp3")
        audio = fake_audio(format, body["input"], body.get("voice", "af_heart"), _speed(body))
        media = MEDIA_TYPES[format]
        if mode == "ok":
            request.setHeader("Content-Disposition", f"attachment; filename=speech.{format}")
            request.setHeader("Cache-Control", "no-cache")
            self._send(request, 200, media, audio)
        elif mode == "400":
            self._json(request, 400, _kokoro_error("validation_error", FAIL_MESSAGE))
        elif mode == "422":
            detail = [{"loc": ["body", "input"], "msg": FAIL_MESSAGE, "type": "value_error"}]
            self._json(request, 422, {"detail": detail})
        elif mode == "500":
            self._json(request, 500, _kokoro_error("processing_error", "the fake broke"))
        elif mode == "hang":
            pass
        elif mode in ("stall", "cut"):
            request.setResponseCode(200)
            request.setHeader("Content-Type", media)
            request.setHeader("Content-Length", str(len(audio)))
            request.write(audio[: len(audio) // 2])
            if mode == "cut":
                record.state = "closing"
                assert request.transport is not None
                request.transport.loseConnection()
        elif mode == "drop":
            record.state = "closing"
            assert request.transport is not None
            request.transport.loseConnection()
        elif mode == "wrong_type":
            self._json(request, 200, {"detail": "this is not audio"})
        elif mode == "empty":
            self._send(request, 200, media, b"")
        else:
            raise ValueError(f"unknown mode {mode!r}")

    def _refusal(self, body: Any) -> tuple[int, Any] | None:
        """Kokoro's own answer to a request it refuses, or None."""
        if not isinstance(body, dict) or not isinstance(body.get("input"), str):
            return 422, _pydantic(["body", "input"], "Field required", "missing")
        if body.get("model", "kokoro") not in MODELS:
            message = f"Unsupported model: {body.get('model')}"
            return 400, _kokoro_error("invalid_model", message)
        if body.get("response_format", "mp3") not in MEDIA_TYPES:
            return 422, _pydantic(
                ["body", "response_format"],
                "Input should be 'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'",
                "enum",
            )
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
            return 422, _pydantic(
                ["body", "speed"], "Input should be between 0.25 and 4.0", "less_than_equal"
            )
        voice = body.get("voice", "af_heart")
        parts = re.split(r"[+-]", voice.replace(" ", "")) if isinstance(voice, str) else [""]
        names = [re.sub(r"\(\d+(\.\d+)?\)$", "", p) for p in parts]
        unknown = [n for n in names if n not in self.voices]
        if unknown:
            message = f"Voice '{unknown[0]}' not found. Available voices: {len(self.voices)}"
            return 400, _kokoro_error("validation_error", message)
        return None

    def _json(self, request: Request, status: int, document: Any) -> None:
        self._send(request, status, "application/json", json.dumps(document).encode())

    def _send(self, request: Request, status: int, media: str, body: bytes) -> None:
        request.setResponseCode(status)
        request.setHeader("Content-Type", media)
        request.setHeader("Content-Length", str(len(body)))
        request.write(body)
        request.finish()


def _speed(body: dict[str, Any]) -> float:
    return float(body.get("speed", 1.0))


def _kokoro_error(kind: str, message: str) -> dict[str, Any]:
    server = kind == "processing_error"
    error_type = "server_error" if server else "invalid_request_error"
    return {"detail": {"error": kind, "message": message, "type": error_type}}


def _pydantic(loc: list[str], message: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"type": kind, "loc": loc, "msg": message, "input": None}]}


# --- the subprocess ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakekokoro", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="per speech request")
    parser.add_argument("--legacy-voices", action="store_true", help='{"voices": ["id", …]}')
    parser.add_argument("--fail", choices=MODES, default=None, help="every speech request")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args(argv)

    from twisted.internet import task

    async def serve(reactor: Any) -> None:
        fake = FakeKokoro(
            reactor,
            latency=args.latency_ms / 1000.0,
            voices_shape="legacy" if args.legacy_voices else "new",
            fail=args.fail,
            api_key=args.api_key,
        )
        port = await fake.start(args.port, args.host)
        sys.stdout.write(f"listening on {port} http://{args.host}:{port}/v1\n")
        sys.stdout.flush()
        await Deferred()  # until killed

    task.react(lambda r: Deferred.fromCoroutine(serve(r)))


if __name__ == "__main__":
    main()
