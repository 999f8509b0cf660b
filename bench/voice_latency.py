"""How soon a finished sentence is announced as speech, and espeak-ng's speed.

``python -m bench.voice_latency [--conversations N] [--sentences S]
[--rounds R] [--latency-ms L] [--interval S] [--espeak-runs K]`` measures two
things.

**Pipeline overhead.** A fake OpenAI-compatible backend (``tests.fakellm``)
and a fake Kokoro-FastAPI whose every clip takes exactly ``--latency-ms``
(``tests.fakekokoro``) run in this process; ``python -m twisted bambid`` runs
as a subprocess pointed at both (SQLite in a temporary directory, accounts and
sessions written beforehand, ``voice.concurrency`` and ``ai.concurrency`` high
enough that nothing queues). N signed-in clients each ask R times; every
reply has S sentences of eight words, sent one word per token, ``--interval``
seconds apart, and every sentence is different (no cache hits). The
conversations' schedules are spread evenly over one interval; ``--together``
releases every conversation's tokens at the same instants instead (N
sentences complete at once: a burst).

A sentence is complete for the splitter when the token after its full stop
arrives (the next word could have been ``5`` in ``3.5``) — or, for the last
sentence, when the reply ends. That token's release by the bench is the
start; the client's reading of the sentence's ``voice.audio`` frame is the
end. Reported as p50/p99/max in milliseconds: the whole span (which contains
Kokoro's fixed latency), and the span minus that latency — what bambid adds:
splitting, cleaning, the HTTP exchange with Kokoro, writing the clip to the
cache, in-order release and the WebSocket frame. Both clocks are this
process's ``perf_counter``; it shares the machine's CPUs with the daemon, so
the figures are an upper bound.

**espeak-ng.** The time ``EspeakBackend.synthesize`` takes for a 15-word
sentence, in WAV and in MP3 (through ffmpeg), ``--espeak-runs`` times each:
the time to the first audio a person hears with the local engine, since a
sentence's clip is complete before it is announced.

Bounded: at most 100 conversations, 50 sentences, 20 rounds, 600 s overall.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bambid.voice.espeak import EspeakBackend
from bench.ai_overhead import print_result
from bench.ai_overhead import summary as ai_summary
from bench.chat_fanout import LeanClient, Stats, prepare_database, raise_fd_limit
from tests.daemon import Daemon
from tests.fakekokoro import FakeKokoro
from tests.fakellm import SCENARIOS, FakeLLM, RecordedRequest, Stall, Stream, chunk, event

MAX_CONVERSATIONS = 100
MAX_SENTENCES = 50
MAX_ROUNDS = 20
OVERALL_DEADLINE = 600.0
SCENARIO = "voice_latency"
WORDS = ["calm", "slow", "soft", "warm", "steady", "quiet", "gentle", "easy"]
ESPEAK_SENTENCE = (
    "Breathe in slowly through your nose, hold it for a moment, and then let it go completely."
)

Key = tuple[int, int, int]  # conversation, round, sentence index


def sentence_words(conversation: int, round_: int, index: int) -> list[str]:
    """Eight words, the first naming the sentence so every text is new."""
    words = [f"Sentence{conversation}x{round_}x{index}"]
    words += [WORDS[(index + i) % len(WORDS)] for i in range(6)]
    words.append("breath.")
    return words


class Timeline:
    """When each sentence became complete at the backend, and when its
    ``voice.audio`` was read."""

    def __init__(self) -> None:
        self.complete: dict[Key, float] = {}
        self.announced: dict[Key, float] = {}
        self.errors: list[dict[str, Any]] = []

    def spans(self) -> list[float]:
        return sorted(
            self.announced[key] - self.complete[key]
            for key in self.announced
            if key in self.complete
        )


class Backend:
    """Builds each reply as a paced stream of words; records when the token
    completing each sentence is released."""

    def __init__(
        self, timeline: Timeline, sentences: int, interval: float, people: int, together: bool
    ) -> None:
        self.timeline = timeline
        self.sentences = sentences
        self.interval = interval
        self.people = people
        self.together = together

    def reply(self, fake: FakeLLM, request: RecordedRequest) -> Stream:
        prompt = request.body["messages"][-1]["content"]
        conversation, round_ = (int(part) for part in prompt.split()[-2:])
        tokens: list[tuple[str, Key | None]] = []
        for index in range(self.sentences):
            for position, word in enumerate(sentence_words(conversation, round_, index)):
                # The first word of sentence i completes sentence i - 1.
                completes = (conversation, round_, index - 1) if position == 0 and index else None
                tokens.append(((" " if tokens else "") + word, completes))
        pieces: list[Any] = [event(chunk("", role="assistant"))]
        stalls: list[tuple[Stall, Key | None]] = []
        for text, completes in tokens:
            stall = Stall()
            stalls.append((stall, completes))
            pieces += [stall, event(chunk(text))]
        end = Stall()
        last = (conversation, round_, self.sentences - 1)
        stalls.append((end, last))  # the end of the reply completes the last sentence
        pieces += [end, event(chunk(finish_reason="stop")), event("[DONE]")]
        # Spread the conversations' schedules evenly over one interval, as
        # people's replies would be (unless --together: all at the same instants).
        phase = 0.0 if self.together else self.interval * conversation / self.people
        for number, (stall, completes) in enumerate(stalls, start=1):
            reactor.callLater(phase + self.interval * number, self.release, stall, completes)
        return Stream(pieces)

    def release(self, stall: Stall, completes: Key | None) -> None:
        if completes is not None:
            self.timeline.complete[completes] = time.perf_counter()
        stall.release()


class Listener(LeanClient):
    """One person's tab: asks, and stamps each ``voice.audio``."""

    def __init__(self, host: str, token: str, number: int, timeline: Timeline) -> None:
        super().__init__(host, token, Stats())
        self.number = number
        self.timeline = timeline
        self.round = 0

    def _text(self, payload: bytes) -> None:
        read = time.perf_counter()
        message = json.loads(payload)
        kind = message["type"]
        if kind == "voice.audio":
            self.timeline.announced[(self.number, self.round, message["index"])] = read
            return
        if kind in ("voice.error", "ai.error", "error"):
            self.timeline.errors.append(message)
        if kind == "ai.error":
            kind = "voice.done"
        waiter = self.waiting.pop(kind, None)
        if waiter is not None:
            waiter.callback(message)

    async def converse(self, rounds: int) -> None:
        for round_ in range(1, rounds + 1):
            self.round = round_
            done = self.wait_for("voice.done")
            self.send_json({"type": "ai.send", "text": f"speak {self.number} {round_}"})
            await done


async def open_listener(port: int, token: str, number: int, timeline: Timeline) -> Listener:
    client = Listener(f"127.0.0.1:{port}", token, number, timeline)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await client.opened
    welcome = client.wait_for("welcome")
    client.send_json({"type": "hello"})
    if (await welcome)["user"] is None:
        raise RuntimeError("the session was not recognised")
    return client


def write_config(workdir: Path, llm_url: str, tts_url: str, conversations: int) -> Path:
    config = workdir / "bambid.toml"
    config.write_text(
        f"""
[storage]
uri = "sqlite:///{workdir}/bambid.sqlite3"

[limits]
connection_burst = 1000
connection_per_second = 1000.0

[ai]
url = "{llm_url}"
concurrency = {conversations}
max_queue = {conversations}

[voice]
backend = "kokoro"
url = "{tts_url}"
fallback = false
concurrency = {conversations * 4}
cache_dir = "{workdir}/tts-cache"
""",
        encoding="utf-8",
    )
    return config


def summary(values: list[float], minus: float = 0.0) -> dict[str, float]:
    """``bench.ai_overhead.summary`` of ``values`` less ``minus`` each."""
    return ai_summary(sorted(v - minus for v in values))


async def pipeline(stack: ExitStack, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    timeline = Timeline()
    backend = Backend(timeline, args.sentences, args.interval, args.conversations, args.together)
    SCENARIOS[SCENARIO] = backend.reply
    llm = FakeLLM(reactor, scenario=SCENARIO)
    await llm.start()
    latency = args.latency_ms / 1000
    kokoro = FakeKokoro(reactor, latency=latency)
    await kokoro.start()
    try:
        names = [f"listener{i:03d}" for i in range(args.conversations)]
        tokens = await prepare_database(workdir / "bambid.sqlite3", names)
        config = write_config(workdir, llm.url, kokoro.url, args.conversations)
        daemon = stack.enter_context(Daemon.start(workdir, args=("--config", str(config))))
        print(
            f"daemon pid {daemon.process.pid} on port {daemon.port}; fake LLM {llm.url}; "
            f"fake Kokoro {kokoro.url} ({args.latency_ms:g} ms a clip); "
            f"{os.cpu_count()} CPUs shared by the daemon and this process"
        )
        listeners = await defer.gatherResults(
            [
                Deferred.fromCoroutine(open_listener(daemon.port, tokens[name], i, timeline))
                for i, name in enumerate(names)
            ],
            consumeErrors=True,
        )
        gc.collect()
        gc.disable()
        began = time.perf_counter()
        try:
            await defer.gatherResults(
                [Deferred.fromCoroutine(t.converse(args.rounds)) for t in listeners],
                consumeErrors=True,
            )
        finally:
            gc.enable()
        seconds = time.perf_counter() - began
        for listener in listeners:
            listener.close()
        await defer.gatherResults([t.closed for t in listeners], consumeErrors=True)
        daemon.terminate()
    finally:
        await llm.stop()
        await kokoro.stop()
    spans = timeline.spans()
    return {
        "sentences_expected": args.conversations * args.rounds * args.sentences,
        "announced": len(timeline.announced),
        "errors": len(timeline.errors),
        "kokoro_requests": len(kokoro.speech_requests),
        "seconds": seconds,
        "complete_to_voice_audio": summary(spans),
        "minus_kokoro_latency": summary(spans, latency),
    }


async def espeak(workdir: Path, runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for format in ("wav", "mp3"):
        engine = EspeakBackend(reactor, "espeak-ng", "ffmpeg", "en-us", format, 30.0, 1 << 24)
        await engine.synthesize("Warming up.", "en-us", 1.0)
        times = []
        for run in range(runs):
            began = time.perf_counter()
            audio = await engine.synthesize(f"{ESPEAK_SENTENCE} {run}", "en-us", 1.0)
            times.append(time.perf_counter() - began)
        result[f"espeak_{format}_15_words"] = summary(times) | {"bytes": len(audio.data)}
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--sentences", type=int, default=6, help="sentences per reply")
    parser.add_argument("--rounds", type=int, default=3, help="replies per conversation")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="fake Kokoro latency")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--espeak-runs", type=int, default=10)
    parser.add_argument(
        "--together",
        action="store_true",
        help="release every conversation's tokens at the same instants (a burst)",
    )
    args = parser.parse_args(argv)
    args.conversations = max(1, min(args.conversations, MAX_CONVERSATIONS))
    args.sentences = max(1, min(args.sentences, MAX_SENTENCES))
    args.rounds = max(1, min(args.rounds, MAX_ROUNDS))
    args.interval = max(0.001, min(args.interval, 1.0))
    args.espeak_runs = max(1, min(args.espeak_runs, 100))
    raise_fd_limit(4 * args.conversations + 256)
    outcome: dict[str, Any] = {}
    failed: list[bool] = []

    async def run(stack: ExitStack, workdir: Path) -> dict[str, Any]:
        measured = await pipeline(stack, workdir, args)
        measured.update(await espeak(workdir, args.espeak_runs))
        return measured

    with tempfile.TemporaryDirectory() as workdir, ExitStack() as stack:

        def stop(result: object) -> None:
            if hasattr(result, "getTraceback"):
                print(result.getTraceback(), file=sys.stderr)
                failed.append(True)
            else:
                assert isinstance(result, dict)
                outcome.update(result)
            reactor.stop()

        def go() -> None:
            d = Deferred.fromCoroutine(run(stack, Path(workdir)))
            d.addTimeout(OVERALL_DEADLINE, reactor)
            d.addBoth(stop)

        reactor.callWhenRunning(go)
        reactor.run()
    if failed:
        raise SystemExit(1)
    print(
        f"Voice latency: {args.conversations} conversations x {args.rounds} replies"
        f" x {args.sentences} sentences, one word every {args.interval * 1000:g} ms,"
        f" fake Kokoro {args.latency_ms:g} ms a clip"
        f"{', released together' if args.together else ''}"
    )
    print_result(outcome)


if __name__ == "__main__":
    main(sys.argv[1:])
