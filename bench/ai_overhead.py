"""What bambid adds to the latency of a streamed companion reply.

``python -m bench.ai_overhead [--conversations N] [--tokens T] [--interval S]
[--rounds R]`` runs a fake OpenAI-compatible backend (``tests.fakellm``) in
this process and ``python -m twisted bambid`` as a subprocess pointed at it
(SQLite in a temporary directory; accounts and sessions written beforehand,
``ai.concurrency`` = N so nobody queues). N signed-in clients each ask the
companion R times; every reply has T tokens, which the fake backend sends one
at a time, ``--interval`` seconds apart, the conversations' schedules spread
evenly over the interval. The conversations start one after another, spread
over one reply's duration, so that one reply ends (stored, recorded, XP) and
the next prompt comes in while the others stream, as with people typing;
``--together`` starts them all at once instead (every reply then ends in the
same interval: a burst).

The fake backend's pieces wait on ``Stall``s that the bench releases: the
time taken just before a release is when the backend sends that token (the
write happens inside the release call; the bytes leave at the next reactor
turn). The client stamps each ``ai.delta`` frame as it is read, before
decoding it. Both clocks are this process's ``perf_counter``. Reported, as
p50/p99/max in milliseconds:

- **first delta**: from the backend's first body byte (its role chunk and
  the first token, sent together) to the client's first ``ai.delta``;
- **per delta**: the same for every later token.

Each figure covers two loopback TCP hops, bambid's SSE and JSON parsing and
frame encoding, and this process's own scheduling and frame reading (it
shares the machine's CPUs with the daemon), so it is an upper bound on what
bambid adds. This process's garbage collector is off while it measures (its
full collections would stall every stream and count as bambid's); the
daemon's is on, as in production. Bounded: at most 500 conversations, 500 tokens, 20 rounds, and
600 seconds overall.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bench.chat_fanout import LeanClient, Stats, cpu_seconds, prepare_database, raise_fd_limit
from tests.daemon import Daemon
from tests.fakellm import SCENARIOS, FakeLLM, RecordedRequest, Stall, Stream, chunk, event

MAX_CONVERSATIONS = 500
MAX_TOKENS = 500
MAX_ROUNDS = 20
OVERALL_DEADLINE = 600.0
SCENARIO = "ai_overhead"
PROMPT = re.compile(r"conversation (\d+) round (\d+)")


class Timeline:
    """When the backend sent each token, and when the client read each delta,
    keyed by (conversation, round, index)."""

    def __init__(self) -> None:
        self.sent: dict[tuple[int, int, int], float] = {}
        self.read: dict[tuple[int, int, int], float] = {}

    def overheads(self) -> tuple[list[float], list[float]]:
        first: list[float] = []
        later: list[float] = []
        for key, read in self.read.items():
            sent = self.sent.get(key)
            if sent is not None:
                (first if key[2] == 1 else later).append(read - sent)
        return sorted(first), sorted(later)


class Backend:
    """Builds each reply as a paced stream: token ``i`` is written when the
    bench releases its stall, ``interval`` seconds after the previous one."""

    def __init__(self, timeline: Timeline, tokens: int, interval: float, people: int) -> None:
        self.timeline = timeline
        self.tokens = tokens
        self.interval = interval
        self.people = people

    def reply(self, fake: FakeLLM, request: RecordedRequest) -> Stream:
        prompt = request.body["messages"][-1]["content"]
        match = PROMPT.search(prompt)
        assert match, prompt
        conversation, round_ = int(match.group(1)), int(match.group(2))
        stalls = [Stall() for _ in range(self.tokens)]
        pieces: list[Any] = []
        for index, stall in enumerate(stalls, start=1):
            text = f" word{index}" if index > 1 else "word1"
            body = event(chunk(text))
            if index == 1:
                body = event(chunk("", role="assistant")) + body
            pieces += [stall, body]
        usage = {"prompt_tokens": 10, "completion_tokens": self.tokens}
        usage["total_tokens"] = 10 + self.tokens
        pieces.append(event(chunk(finish_reason="stop")) + event(chunk(usage=usage)))
        pieces.append(event("[DONE]"))
        # Spread the conversations' schedules evenly over one interval.
        phase = self.interval * (conversation % self.people) / self.people
        for index, stall in enumerate(stalls, start=1):
            reactor.callLater(
                phase + self.interval * index, self.release, (conversation, round_, index), stall
            )
        return Stream(pieces)

    def release(self, key: tuple[int, int, int], stall: Stall) -> None:
        self.timeline.sent[key] = time.perf_counter()
        stall.release()


class Talker(LeanClient):
    """One person's tab: asks, reads the reply, stamps each ``ai.delta``."""

    def __init__(self, host: str, token: str, number: int, timeline: Timeline) -> None:
        super().__init__(host, token, Stats())
        self.number = number
        self.timeline = timeline
        self.round = 0
        self.errors: list[dict[str, Any]] = []

    def _text(self, payload: bytes) -> None:
        read = time.perf_counter()
        message = json.loads(payload)
        kind = message["type"]
        if kind == "ai.delta":
            self.timeline.read[(self.number, self.round, message["index"])] = read
            return
        if kind in ("ai.error", "error"):
            self.errors.append(message)
            kind = "ai.done"  # whoever waits for the end of the reply
        waiter = self.waiting.pop(kind, None)
        if waiter is not None:
            waiter.callback(message)

    async def converse(self, rounds: int, delay: float) -> None:
        if delay:
            await task.deferLater(reactor, delay, lambda: None)
        for round_ in range(1, rounds + 1):
            self.round = round_
            done = self.wait_for("ai.done")
            self.send_json(
                {"type": "ai.send", "text": f"conversation {self.number} round {round_}"}
            )
            await done


async def open_talker(port: int, token: str, number: int, timeline: Timeline) -> Talker:
    client = Talker(f"127.0.0.1:{port}", token, number, timeline)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await client.opened
    welcome = client.wait_for("welcome")
    client.send_json({"type": "hello"})
    if (await welcome)["user"] is None:
        raise RuntimeError("the session was not recognised")
    return client


def write_config(workdir: Path, url: str, conversations: int, interval: float) -> Path:
    config = workdir / "bambid.toml"
    config.write_text(
        f"""
[storage]
uri = "sqlite:///{workdir}/bambid.sqlite3"

[limits]
connection_burst = 1000
connection_per_second = 1000.0

[ai]
url = "{url}"
concurrency = {conversations}
max_queue = {conversations}
idle_timeout = {max(10.0, interval * 10)}
first_byte_timeout = 30.0
""",
        encoding="utf-8",
    )
    return config


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": statistics.median(values) * 1000,
        "p99_ms": values[max(0, int(len(values) * 0.99) - 1)] * 1000,
        "max_ms": values[-1] * 1000,
    }


def print_result(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            shown = "  ".join(
                f"{k}={v:,.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
            )
        elif isinstance(value, float):
            shown = f"{value:,.3f}"
        else:
            shown = f"{value:,}"
        print(f"  {key:>22}: {shown}")


async def run(stack: ExitStack, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    conversations, tokens, rounds = args.conversations, args.tokens, args.rounds
    timeline = Timeline()
    backend = Backend(timeline, tokens, args.interval, conversations)
    SCENARIOS[SCENARIO] = backend.reply
    fake = FakeLLM(reactor, scenario=SCENARIO)
    await fake.start()
    try:
        names = [f"talker{i:04d}" for i in range(conversations)]
        session_tokens = await prepare_database(workdir / "bambid.sqlite3", names)
        config = write_config(workdir, fake.url, conversations, args.interval)
        daemon = stack.enter_context(Daemon.start(workdir, args=("--config", str(config))))
        pid = daemon.process.pid
        print(
            f"daemon pid {pid} on port {daemon.port}; fake backend at {fake.url}; "
            f"{os.cpu_count()} CPUs shared by the daemon and this process"
        )
        talkers = await defer.gatherResults(
            [
                Deferred.fromCoroutine(open_talker(daemon.port, session_tokens[n], i, timeline))
                for i, n in enumerate(names)
            ],
            consumeErrors=True,
        )
        # The bench's own collector stays out of the measured window: a full
        # collection here would stall every stream and be counted as bambid's.
        gc.collect()
        gc.disable()
        cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
        own_before = time.process_time()
        try:
            # Spread the starts over one reply's duration (unless --together),
            # so that replies end, are stored and are followed by the next
            # prompt at different times, as with people typing.
            spread = 0.0 if args.together else args.interval * tokens / conversations
            await defer.gatherResults(
                [Deferred.fromCoroutine(t.converse(rounds, spread * t.number)) for t in talkers],
                consumeErrors=True,
            )
        finally:
            gc.enable()
        wall = time.perf_counter() - wall_before
        cpu = cpu_seconds(pid) - cpu_before
        own = time.process_time() - own_before
        for talker in talkers:
            talker.close()
        await defer.gatherResults([t.closed for t in talkers], consumeErrors=True)
        daemon.terminate()
    finally:
        await fake.stop()
    first, later = timeline.overheads()
    expected = conversations * rounds * tokens
    return {
        "conversations": conversations,
        "replies": conversations * rounds,
        "deltas_read": len(timeline.read),
        "deltas_expected": expected,
        "errors": sum(len(t.errors) for t in talkers),
        "seconds": wall,
        "deltas_per_second": len(timeline.read) / wall,
        "first_delta": summary(first),
        "per_delta": summary(later),
        "daemon_cpu_share": cpu / wall,
        "bench_cpu_share": own / wall,
        "daemon_cpu_us_per_delta": cpu / len(timeline.read) * 1e6 if timeline.read else 0.0,
        "load_average_1min": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between tokens")
    parser.add_argument("--rounds", type=int, default=3, help="replies per conversation")
    parser.add_argument(
        "--together",
        action="store_true",
        help="start every conversation at once (default: spread over one reply)",
    )
    args = parser.parse_args(argv)
    args.conversations = max(1, min(args.conversations, MAX_CONVERSATIONS))
    args.tokens = max(2, min(args.tokens, MAX_TOKENS))
    args.rounds = max(1, min(args.rounds, MAX_ROUNDS))
    args.interval = max(0.001, min(args.interval, 1.0))
    raise_fd_limit(4 * args.conversations + 256)
    outcome: dict[str, Any] = {}
    failed: list[bool] = []

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
            d = Deferred.fromCoroutine(run(stack, Path(workdir), args))
            d.addTimeout(OVERALL_DEADLINE, reactor)
            d.addBoth(stop)

        reactor.callWhenRunning(go)
        reactor.run()
    if failed:
        raise SystemExit(1)
    print(
        f"AI streaming overhead: {args.conversations} conversations x {args.rounds} replies"
        f" x {args.tokens} tokens, one token every {args.interval * 1000:g} ms each,"
        f" {'started together' if args.together else 'starts spread over one reply'}"
    )
    print_result(outcome)


if __name__ == "__main__":
    main(sys.argv[1:])
