"""Local speech with espeak-ng, converted by ffmpeg (docs/voice.md).

The default backend when no Kokoro is configured, and Kokoro's fallback. Both
programs run through ``reactor.spawnProcess``, so the reactor never waits:
espeak-ng reads the text on stdin (``--stdin``: a text starting with ``-`` is
spoken, never taken as an option) and writes a WAV on stdout, which is piped
into ffmpeg's stdin as it arrives when the clip format is not WAV::

    espeak-ng --stdin -b 1 --stdout -v VOICE -s RATE | ffmpeg -i pipe:0 -f FMT pipe:1

``speed`` maps to espeak-ng's rate in words per minute: ``round(175 * speed)``
within its 80-450. ffmpeg is looked up once, at construction; without it the
clips are WAV (``format`` says so).

One deadline (``voice.total_timeout``) covers a whole synthesis; when it
passes, when the output passes ``max_bytes``, or when the call is cancelled,
the processes are killed. Failures are TTSError: ``unavailable`` for a
missing program or a non-zero exit (with the first line it wrote to stderr),
``bad_request`` for a voice that is not an espeak-ng voice name, ``timeout``,
``too_long``.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.config import VoiceConfig
from bambid.voice.backend import MEDIA_TYPES, Audio, TTSError, Voice, voices_health

__all__ = ["DEFAULT_VOICE", "EspeakBackend", "parse_voices", "rate_for"]

_log = Logger()

DEFAULT_VOICE = "en-us"

_VOICE_ID = re.compile(r"[A-Za-z0-9_+\-]{1,40}")
_BASE_RATE = 175
_MIN_RATE, _MAX_RATE = 80, 450

#: ffmpeg output options per clip format (the input is always espeak-ng's WAV).
_ENCODE: dict[str, list[str]] = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "opus": ["-c:a", "libopus", "-b:a", "48k", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
}

#: The WAV between espeak-ng and ffmpeg is uncompressed: about 44 kB a second.
#: The text is capped upstream (voice.max_text_length), so this only guards
#: against a runaway process.
_WAV_CAP = 64 << 20
_LIST_CAP = 1 << 20
_STDERR_CAP = 4096
#: Passed on to the programs; nothing else of the server's environment (keys).
_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "ESPEAK_DATA_PATH")


def rate_for(speed: float) -> int:
    """espeak-ng's ``-s`` (words per minute) for a speed of 0.25-4.0."""
    return min(_MAX_RATE, max(_MIN_RATE, round(_BASE_RATE * speed)))


class EspeakBackend:
    """espeak-ng (and ffmpeg) on this machine; a ``TTSBackend``."""

    name = "espeak"

    def __init__(
        self,
        reactor: Any,
        command: str,
        ffmpeg: str,
        default_voice: str,
        format: str,
        timeout: float,
        max_bytes: int,
    ) -> None:
        if format not in MEDIA_TYPES:
            raise ValueError(f"not an audio format: {format!r}")
        self._reactor = reactor
        self.command = command
        self._program = shutil.which(command)
        self._ffmpeg = shutil.which(ffmpeg) if format != "wav" else None
        self.format = format if self._ffmpeg is not None else "wav"
        self.default_voice = default_voice
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._voices: list[Voice] | None = None
        self._running: set[_Pipeline] = set()
        self._idle_waiters: list[Deferred[None]] = []

    @classmethod
    def from_config(cls, config: VoiceConfig, reactor: Any, *, as_fallback: bool) -> EspeakBackend:
        """``as_fallback``: espeak-ng stands in for Kokoro, so the configured
        default voice (a Kokoro one) is not its own."""
        default_voice = DEFAULT_VOICE
        if not as_fallback and config.default_voice:
            default_voice = config.default_voice
        return cls(
            reactor,
            config.espeak_command,
            config.ffmpeg_command,
            default_voice,
            config.format,
            config.total_timeout,
            config.max_audio_bytes,
        )

    def __repr__(self) -> str:
        return f"<EspeakBackend {self.command} {self.format}>"

    async def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        """One clip of ``text`` in ``self.format``. Raises TTSError."""
        if not _VOICE_ID.fullmatch(voice):
            raise TTSError("bad_request", f"{voice[:40]!r} is not an espeak-ng voice")
        if not text.strip():
            raise TTSError("bad_request", "there is no text to speak")
        program = self._require()
        speak = _Stage(
            "espeak-ng",
            [program, "--stdin", "-b", "1", "--stdout", "-v", voice, "-s", str(rate_for(speed))],
            text.encode("utf-8"),
        )
        stages = [speak]
        if self.format != "wav":
            assert self._ffmpeg is not None
            encode = [self._ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats"]
            encode += ["-f", "wav", "-i", "pipe:0", *_ENCODE[self.format], "pipe:1"]
            stages.append(_Stage("ffmpeg", encode))
        cap = self.max_bytes if self.format != "wav" else min(self.max_bytes, _WAV_CAP)
        try:
            data = await self._run(stages, cap)
        except TTSError as e:
            if e.code == "unavailable" and "voice does not exist" in e.message:
                raise TTSError("bad_request", f"espeak-ng has no voice {voice!r}") from None
            raise
        if not data:
            raise TTSError("unavailable", "espeak-ng produced no audio")
        if self.format == "wav":
            data = _sized_wav(data)
        return Audio(data, self.format)

    async def voices(self) -> list[Voice]:
        """``espeak-ng --voices``, listed once (they do not change while the
        server runs), sorted by id. Raises TTSError."""
        if self._voices is not None:
            return list(self._voices)
        program = self._require()
        listing = await self._run([_Stage("espeak-ng", [program, "--voices"], b"")], _LIST_CAP)
        voices = parse_voices(listing.decode("utf-8", "replace"))
        if not voices:
            raise TTSError("bad_response", "espeak-ng listed no voices")
        self._voices = voices
        return list(voices)

    def has_voice(self, voice: str) -> bool:
        """Whether ``voice`` is one of the listed voice ids; True until
        ``voices()`` has succeeded once (espeak-ng is then the judge)."""
        if self._voices is None:
            return True
        return any(v.id == voice for v in self._voices)

    async def health(self) -> dict[str, Any]:
        """Whether the voices can be listed (``voices_health``). Never raises
        (except CancelledError when cancelled)."""
        return await voices_health(self, self._reactor)

    @property
    def running(self) -> int:
        """Subprocesses started and not yet reaped."""
        return sum(pipeline.alive for pipeline in self._running)

    def idle(self) -> Deferred[None]:
        """Fires once no subprocess of this backend is left (a cancelled or
        timed-out synthesis is killed at once, but reaped a moment later)."""
        waiter: Deferred[None] = Deferred()
        if not self._running:
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter

    def _require(self) -> str:
        if self._program is None:
            raise TTSError("unavailable", f"espeak-ng is not installed ({self.command} not found)")
        return self._program

    def _run(self, stages: list[_Stage], cap: int) -> Deferred[bytes]:
        pipeline = _Pipeline(self._reactor, stages, self.timeout, cap, self._reaped)
        self._running.add(pipeline)
        return pipeline.run()

    def _reaped(self, pipeline: _Pipeline) -> None:
        self._running.discard(pipeline)
        if not self._running:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


def parse_voices(listing: str) -> list[Voice]:
    """The voices of ``espeak-ng --voices`` (columns ``Pty Language
    Age/Gender VoiceName File Other Languages``): the id is the Language
    column, which ``-v`` accepts; the first of a repeated id wins."""
    found: dict[str, Voice] = {}
    for line in listing.splitlines():
        columns = line.split()
        if len(columns) < 5 or not columns[0].isdigit():
            continue  # the header, or something unexpected
        voice_id, age_gender, name = columns[1], columns[2], columns[3]
        if not _VOICE_ID.fullmatch(voice_id) or voice_id in found:
            continue
        sex = age_gender.rpartition("/")[2].upper()
        gender = {"M": "male", "F": "female"}.get(sex, "")
        found[voice_id] = Voice(
            voice_id, name.replace("_", " "), "espeak", voice_id.lower(), gender
        )
    return sorted(found.values(), key=lambda v: v.id)


def _sized_wav(data: bytes) -> bytes:
    """espeak-ng's WAV on a pipe has placeholder sizes (it cannot seek back);
    write the real ones so every player knows the length."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE" or data[36:40] != b"data":
        return data
    sized = bytearray(data)
    sized[4:8] = struct.pack("<I", len(data) - 8)
    sized[40:44] = struct.pack("<I", len(data) - 44)
    return bytes(sized)


# --- running the programs ---------------------------------------------------------


@attrs.define(eq=False)
class _Stage:
    """One program of a pipeline: its label for messages, its argv, and the
    bytes written to its stdin (None: its stdin is the previous stage's
    stdout)."""

    label: str
    argv: list[str]
    stdin: bytes | None = None
    protocol: _Process | None = None
    ended: bool = False


class _Process(ProcessProtocol):
    def __init__(self, pipeline: _Pipeline, index: int) -> None:
        self._pipeline = pipeline
        self._index = index
        self.stderr = bytearray()

    def outReceived(self, data: bytes) -> None:
        self._pipeline.output(self._index, data)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data[: max(0, _STDERR_CAP - len(self.stderr))]

    def processEnded(self, reason: Failure) -> None:
        self._pipeline.ended(self._index, reason)

    def first_error_line(self) -> str:
        text = self.stderr.decode("utf-8", "replace")
        for line in text.splitlines():
            line = line.strip()
            if line:
                return line[:300]
        return ""


class _Pipeline:
    """Programs whose stdouts feed the next one's stdin, the last one's
    stdout collected; one deadline, one byte cap (on every stage's output),
    killed when it fails or is cancelled."""

    def __init__(
        self,
        reactor: Any,
        stages: list[_Stage],
        timeout: float,
        cap: int,
        reaped: Callable[[_Pipeline], None],
    ) -> None:
        self._reactor = reactor
        self._stages = stages
        self._timeout = timeout
        self._cap = cap
        self._reaped = reaped
        self._result: Deferred[bytes] = Deferred(canceller=self._cancelled)
        self._output = bytearray()
        self._sizes = [0] * len(stages)
        self._timer: IDelayedCall | None = None
        self._finished = False

    @property
    def alive(self) -> int:
        return sum(1 for s in self._stages if s.protocol is not None and not s.ended)

    def run(self) -> Deferred[bytes]:
        self._timer = self._reactor.callLater(self._timeout, self._expired)
        env = {k: os.environ[k] for k in _ENVIRONMENT if k in os.environ}
        # The last stage first, so that a stage's output always has somewhere to go.
        for index in reversed(range(len(self._stages))):
            stage = self._stages[index]
            protocol = _Process(self, index)
            try:
                self._reactor.spawnProcess(protocol, stage.argv[0], stage.argv, env=env)
            except OSError as e:
                if isinstance(e, FileNotFoundError):
                    message = f"{stage.label} is not installed ({stage.argv[0]} not found)"
                else:
                    message = f"{stage.label} could not be started: {e.strerror or e}"
                self._fail(TTSError("unavailable", message))
                return self._result
            stage.protocol = protocol
            if stage.stdin is not None:
                assert protocol.transport is not None
                protocol.transport.write(stage.stdin)
                protocol.transport.closeStdin()
        return self._result

    def output(self, index: int, data: bytes) -> None:
        if self._finished:
            return
        self._sizes[index] += len(data)
        last = index == len(self._stages) - 1
        cap = self._cap if last else _WAV_CAP
        if self._sizes[index] > cap:
            label = self._stages[index].label
            self._fail(TTSError("too_long", f"{label}'s audio passed the limit of {cap} bytes"))
            return
        if last:
            self._output += data
            return
        following = self._stages[index + 1].protocol
        if following is not None and following.transport is not None:
            following.transport.write(data)

    def ended(self, index: int, reason: Failure) -> None:
        stage = self._stages[index]
        stage.ended = True
        if self.alive == 0:
            self._reaped(self)
        if self._finished:
            return
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if code != 0 or signal is not None:
            assert stage.protocol is not None
            said = stage.protocol.first_error_line()
            status = f"signal {signal}" if signal is not None else f"status {code}"
            what = (
                f"{stage.label} failed: {said}" if said else f"{stage.label} exited with {status}"
            )
            self._fail(TTSError("unavailable", what))
            return
        if index < len(self._stages) - 1:
            following = self._stages[index + 1].protocol
            if following is not None and following.transport is not None:
                following.transport.closeStdin()
            return
        self._finish()
        self._result.callback(bytes(self._output))

    def _expired(self) -> None:
        self._timer = None
        self._fail(TTSError("timeout", f"espeak-ng did not finish within {self._timeout:g} s"))

    def _fail(self, error: TTSError) -> None:
        if self._finished:
            return
        self._finish()
        self._result.errback(error)

    def _cancelled(self, result: Deferred[bytes]) -> None:
        if not self._finished:
            self._finish()
            _log.debug("espeak-ng synthesis cancelled; processes killed")

    def _finish(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._kill()
        if self.alive == 0:
            self._reaped(self)

    def _kill(self) -> None:
        for stage in self._stages:
            if stage.protocol is None or stage.ended or stage.protocol.transport is None:
                continue
            try:
                stage.protocol.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
