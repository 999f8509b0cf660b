"""Speaking a companion reply while it streams (docs/protocol.md, "Voice").

``VoicePipeline.begin(identity, reply_id)`` is asked when a reply is
accepted; it answers None when the person has speech off, else a
``ReplyVoice`` for that reply. The companion feeds it every ``ai.delta``
text, then calls ``finish()`` when the reply ends (normally, or failing with
text) or ``cancel()`` when it is stopped.

``ReplyVoice`` splits the text with a ``SpeechSegmenter``
(``voice.max_sentence_length``): each complete sentence gets the next index
(0, 1, 2…) and its ``Speech.speak`` starts at once, in the person's voice and
speed as they were when the reply began. Results go to every tab of the
person (``send_to_person``) strictly in index order: a sentence synthesised
early waits for those before it. A ``TTSError`` becomes ``voice.error`` with
its code; any other exception ``voice.error`` with code ``internal`` (the
traceback is logged, never sent). Once ``finish()`` was called and every
index is sent: ``voice.done {reply_id, sentences, stopped: false}``.

``cancel()`` cancels the syntheses still running (which stops them unless
another caller shares them, see ``Speech``), drops every result not yet sent
and sends ``voice.done`` with ``stopped: true`` at once (``sentences``: the
indexes sent so far; clips already announced stay playable). After
``voice.done`` nothing more is sent. None of the methods raises: a failure of
the pipeline itself is logged and ends the reply's speech.

Readings (``voice.read``, ``voice.replay``): ``VoicePipeline.start_reading``
gives a ``ReplyVoice`` that speaks whole texts (``say``) as a reply would, with
the reply id ``<kind>-<hex>``. A person has at most one reading: a new one
cancels the previous (``voice.done`` stopped), and so do ``stop_reading`` and
the close of their last connection (``forget``). A reading is spoken even when
the person switched reply speech off (they asked for it), in their voice and
speed. Its syntheses are started at most ``READ_LOOKAHEAD`` sentences ahead of
those sent, so a long text never fills the TTS queue ahead of other people's
replies.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.identity import Identity
from bambid.voice.backend import TTSError
from bambid.voice.preferences import VoicePreferences
from bambid.voice.sentences import SpeechSegmenter
from bambid.voice.speech import Clip, Speech


class People(Protocol):
    """What the pipeline needs of the chat hub."""

    def send_to_person(self, username: str, type: str, **fields: Any) -> int: ...


def record_name(identity: Identity) -> str:
    """Who an ``AudioInteraction`` belongs to: the account name, or
    ``guest:<name>`` (as for the companion's records)."""
    return f"guest:{identity.name}" if identity.guest else identity.name


#: Sentences of a reading synthesised or waiting to be sent at any time.
READ_LOOKAHEAD = 2


class VoicePipeline:
    """Makes a ``ReplyVoice`` per spoken reply or reading (see the module doc)."""

    def __init__(self, speech: Speech, people: People, preferences: VoicePreferences) -> None:
        self.speech = speech
        self.people = people
        self.preferences = preferences
        #: The reading of each person (by ``Identity.key``) until it ends.
        self._readings: dict[str, ReplyVoice] = {}

    async def begin(self, identity: Identity, reply_id: str) -> ReplyVoice | None:
        """The speech of a reply just accepted, or None when speech is off for
        the person."""
        prefs = await self.preferences.get(identity)
        if not prefs.enabled:
            return None
        return ReplyVoice(
            self.speech,
            self.people,
            identity,
            reply_id,
            voice=prefs.voice or None,
            speed=prefs.speed,
        )

    # -- readings ------------------------------------------------------------------------

    async def start_reading(self, identity: Identity, kind: str) -> ReplyVoice:
        """A new reading for the person (``kind``: "read" or "replay", the
        prefix of its reply id), in their voice and speed whether or not reply
        speech is on; their previous reading is cancelled. The caller
        announces the reply id, then ``say``s the texts and ``finish``es."""
        prefs = await self.preferences.get(identity)
        self.stop_reading(identity)
        reading = ReplyVoice(
            self.speech,
            self.people,
            identity,
            f"{kind}-{secrets.token_hex(8)}",
            voice=prefs.voice or None,
            speed=prefs.speed,
            source=kind,
            lookahead=READ_LOOKAHEAD,
            on_end=self._reading_ended,
        )
        self._readings[identity.key] = reading
        return reading

    def reading_of(self, identity: Identity) -> ReplyVoice | None:
        """The person's reading in progress, or None."""
        return self._readings.get(identity.key)

    def stop_reading(self, identity: Identity, reply_id: str | None = None) -> bool:
        """Cancel the person's reading (only if its id is ``reply_id``, when
        given); whether one was cancelled."""
        reading = self._readings.get(identity.key)
        if reading is None or reply_id not in (None, reading.reply_id):
            return False
        reading.cancel()
        return True

    def forget(self, identity: Identity) -> None:
        """The person's last connection closed: nobody is left to listen."""
        self.stop_reading(identity)

    def stop(self) -> None:
        """Shutdown: cancel every reading."""
        for reading in list(self._readings.values()):
            reading.cancel()

    def _reading_ended(self, reading: ReplyVoice) -> None:
        if self._readings.get(reading.identity.key) is reading:
            del self._readings[reading.identity.key]


class ReplyVoice:
    """The speech of one reply or reading (see the module doc).

    ``source`` goes into each synthesis record's details. ``lookahead`` (None:
    no limit) caps the sentences synthesised or ready but not yet sent; the
    others wait their turn. ``on_end`` is called once, right after
    ``voice.done`` was sent."""

    _log = Logger()

    def __init__(
        self,
        speech: Speech,
        people: People,
        identity: Identity,
        reply_id: str,
        voice: str | None,
        speed: float,
        *,
        source: str = "reply",
        lookahead: int | None = None,
        on_end: Callable[[ReplyVoice], None] | None = None,
    ) -> None:
        self.speech = speech
        self.people = people
        self.identity = identity
        self.reply_id = reply_id
        self.voice = voice
        self.speed = speed
        self.source = source
        self.lookahead = lookahead
        self.on_end = on_end
        self._segmenter = SpeechSegmenter(speech.config.max_sentence_length)
        #: Sentences given an index but not started yet (``lookahead``), in order.
        self._waiting: deque[tuple[int, str]] = deque()
        #: Syntheses still running, by index.
        self._pending: dict[int, Deferred[Clip]] = {}
        #: Frames ready but waiting for an earlier index, by index.
        self._ready: dict[int, tuple[str, dict[str, Any]]] = {}
        self._started = 0  # indexes given out
        self._sent = 0  # indexes sent
        self._finished = False
        self._pumping = False
        self.done = False

    @property
    def sentences(self) -> int:
        """Indexes sent so far."""
        return self._sent

    def feed(self, text: str) -> None:
        """Reply text, in order: the sentences it completes start speaking."""
        if self._finished or self.done:
            return
        try:
            for sentence in self._segmenter.feed(text):
                self._speak(sentence)
        except Exception:
            self._log.failure("speech of reply {id} failed", id=self.reply_id)
            self._give_up()

    def say(self, text: str) -> None:
        """A whole text (one of a reading): all its sentences, the last one
        included, are spoken after those before. The next text starts afresh
        (an unclosed code fence here does not swallow it)."""
        if self._finished or self.done:
            return
        try:
            for sentence in self._segmenter.feed(text) + self._segmenter.flush():
                self._speak(sentence)
        except Exception:
            self._log.failure("speech of reply {id} failed", id=self.reply_id)
            self._give_up()

    def finish(self) -> None:
        """The reply ended: its last words are spoken, then ``voice.done``."""
        if self._finished or self.done:
            return
        try:
            for sentence in self._segmenter.flush():
                self._speak(sentence)
        except Exception:
            self._log.failure("speech of reply {id} failed", id=self.reply_id)
            self._give_up()
            return
        self._finished = True
        self._pump()

    def cancel(self) -> None:
        """The reply was stopped: drop what was not sent, ``voice.done`` stopped."""
        if self.done:
            return
        self._finished = True
        self._end(stopped=True)

    # -- inside ------------------------------------------------------------------------

    def _speak(self, sentence: str) -> None:
        """Give the sentence the next index; it starts when there is room."""
        self._waiting.append((self._started, sentence))
        self._started += 1
        self._pump()

    def _has_room(self) -> bool:
        in_flight = len(self._pending) + len(self._ready)
        return self.lookahead is None or in_flight < self.lookahead

    def _start(self, index: int, sentence: str) -> None:
        speaking = Deferred.fromCoroutine(
            self.speech.speak(
                sentence,
                self.voice,
                self.speed,
                username=record_name(self.identity),
                details={"source": self.source, "reply_id": self.reply_id, "index": index},
            )
        )
        if not speaking.called:
            self._pending[index] = speaking
        speaking.addCallbacks(
            self._spoken,
            self._failed,
            callbackArgs=(index, sentence),
            errbackArgs=(index, sentence),
        )

    def _spoken(self, clip: Clip, index: int, sentence: str) -> None:
        self._pending.pop(index, None)
        if self.done:
            return
        self._ready[index] = (
            "voice.audio",
            {
                "reply_id": self.reply_id,
                "index": index,
                "url": clip.url,
                "text": clip.text,
                "voice": clip.voice,
                "backend": clip.backend,
            },
        )
        self._pump()

    def _failed(self, failure: Failure, index: int, sentence: str) -> None:
        self._pending.pop(index, None)
        if self.done or failure.check(CancelledError):
            return
        error = failure.value
        if isinstance(error, TTSError):
            code, message = error.code, error.message
            self._log.info(
                "sentence {index} of reply {id} was not spoken: {error}",
                index=index,
                id=self.reply_id,
                error=str(error),
            )
        else:
            self._log.failure(
                "sentence {index} of reply {id} failed", failure, index=index, id=self.reply_id
            )
            code, message = "internal", "internal error"
        self._ready[index] = (
            "voice.error",
            {
                "reply_id": self.reply_id,
                "index": index,
                "code": code,
                "message": message,
                "text": sentence,
            },
        )
        self._pump()

    def _pump(self) -> None:
        """Start the waiting sentences there is room for, send what is ready
        in index order; ``voice.done`` when all is sent. A loop, not a
        recursion: a cached clip lands while it is being started, and its
        ``_pump`` call returns at once."""
        if self._pumping:
            return
        self._pumping = True
        try:
            moved = True
            while moved and not self.done:
                moved = False
                while self._waiting and self._has_room() and not self.done:
                    self._start(*self._waiting.popleft())
                    moved = True
                while self._sent in self._ready and not self.done:
                    type, fields = self._ready.pop(self._sent)
                    self._sent += 1
                    self._send(type, **fields)
                    moved = True
        finally:
            self._pumping = False
        if self._finished and not self.done and self._sent == self._started:
            self._end(stopped=False)

    def _give_up(self) -> None:
        """The pipeline itself broke: stop speaking this reply."""
        self._finished = True
        self._end(stopped=False)

    def _end(self, stopped: bool) -> None:
        self.done = True
        self._ready.clear()
        self._waiting.clear()
        pending, self._pending = self._pending, {}
        for speaking in pending.values():
            speaking.cancel()
        self._send("voice.done", reply_id=self.reply_id, sentences=self._sent, stopped=stopped)
        if self.on_end is not None:
            try:
                self.on_end(self)
            except Exception:
                self._log.failure("end of reply {id}", id=self.reply_id)

    def _send(self, type: str, **fields: Any) -> None:
        try:
            self.people.send_to_person(self.identity.name, type, **fields)
        except Exception:
            self._log.failure("could not send {type} of reply {id}", type=type, id=self.reply_id)
