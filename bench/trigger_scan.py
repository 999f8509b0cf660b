"""Trigger detection: one text of 10 000 words against 500 trigger phrases.

``python -m bench.trigger_scan [--triggers 500] [--words 10000] [--runs 200]
[--piece 5] [--seed 6]`` builds ``--triggers`` synthetic triggers (phrases of
1-3 words from a vocabulary generated from syllables, the same for the same
seed) and a text of ``--words`` words from the same vocabulary — so most words
start like some phrase and many are a phrase's first word — with a phrase
sprinkled in about every 40 words, in mixed case, some split over a line
break. It prints the time to build the matcher, the time of ``scan`` (all
triggers, and restricted with ``only=`` to half of them) and of a
``StreamScanner`` fed ``--piece`` characters at a time, as p50 / p99 / max over
``--runs`` runs, and the number of matches (the three agree or the run fails).
Target (issue 6): a scan under 5 ms. Bounded: at most 100 000 words, 5000
triggers and 10 000 runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

from bambid.triggers.detect import Match, Matcher

ONSETS = ["b", "br", "c", "ch", "d", "f", "g", "gl", "h", "k", "l", "m", "n", "p", "pr", "qu"]
ONSETS += ["r", "s", "sh", "st", "t", "th", "tr", "v", "w", "y", "z", ""]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
CODAS = ["", "", "n", "r", "s", "t", "l", "m", "ck", "nd"]


def vocabulary(rng: random.Random, size: int) -> list[str]:
    """``size`` distinct pseudo-words of 1-3 syllables."""
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((1, 2, 2, 3))
        words.add("".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)))
    return sorted(words)


def phrases(rng: random.Random, words: list[str], count: int) -> dict[str, str]:
    """``count`` distinct phrases of 1-3 words, phrase → key."""
    found: dict[str, str] = {}
    while len(found) < count:
        phrase = " ".join(rng.choice(words) for _ in range(rng.choice((1, 2, 2, 3))))
        found.setdefault(phrase.title(), f"t{len(found)}")
    return found


def text(rng: random.Random, words: list[str], triggers: list[str], length: int) -> str:
    out: list[str] = []
    while len(out) < length:
        if rng.random() < 0.025:
            phrase = rng.choice(triggers)
            phrase = rng.choice((phrase, phrase.upper(), phrase.lower()))
            out.extend(phrase.replace(" ", "\n", 1).split(" ") if rng.random() < 0.2 else [phrase])
        else:
            word = rng.choice(words)
            out.append(word + rng.choice(("", "", "", "", ",", ".", "s")))
    return " ".join(out)


def timings(fn: Callable[[], list[Match]], runs: int) -> tuple[list[float], list[Match]]:
    result = fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times), result


def streamed(matcher: Matcher, body: str, piece: int, only: frozenset[str] | None) -> list[Match]:
    scanner = matcher.stream(only)
    found = []
    for i in range(0, len(body), piece):
        found += scanner.feed(body[i : i + piece])
    return found + scanner.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trigger_scan", description=__doc__)
    parser.add_argument("--triggers", type=int, default=500)
    parser.add_argument("--words", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--stream-runs", type=int, default=20)
    parser.add_argument("--piece", type=int, default=5, help="stream piece size, characters")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    count = max(1, min(args.triggers, 5000))
    length = max(1, min(args.words, 100_000))
    runs = max(1, min(args.runs, 10_000))
    stream_runs = max(1, min(args.stream_runs, 10_000))

    rng = random.Random(args.seed)
    words = vocabulary(rng, max(2000, count * 2))
    table = phrases(rng, words, count)
    body = text(rng, words, list(table), length)
    half = frozenset(list(table.values())[::2])

    started = time.perf_counter()
    matcher = Matcher(table)
    build = (time.perf_counter() - started) * 1000

    print(f"{count} triggers, a text of {length} words ({len(body)} characters), {runs} runs")
    print(f"(Python {platform.python_version()}, {os.cpu_count()} CPUs)")
    print(f"build the matcher: {build:.1f} ms (first build includes the Unicode tables)")
    started = time.perf_counter()
    Matcher(table)
    print(f"build again:       {(time.perf_counter() - started) * 1000:.1f} ms")
    print()
    header = f"{'':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'matches':>8}"
    print(header)
    print("-" * len(header))
    rows = [
        ("scan", runs, lambda: matcher.scan(body)),
        ("scan only=half", runs, lambda: matcher.scan(body, half)),
        (
            f"stream, {args.piece}-char pieces",
            stream_runs,
            lambda: streamed(matcher, body, args.piece, None),
        ),
    ]
    results = []
    for name, n, fn in rows:
        times, found = timings(fn, n)
        results.append(found)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(
            f"{name:<24} {statistics.median(times):>8.2f} {p99:>8.2f} {times[-1]:>8.2f} "
            f"{len(found):>8}"
        )
    if results[2] != results[0]:
        raise SystemExit("the stream scanner disagrees with scan()")
    if Matcher({p: k for p, k in table.items() if k in half}).scan(body) != results[1]:
        raise SystemExit("scan(only=) disagrees with a matcher of those triggers alone")


if __name__ == "__main__":
    main()
