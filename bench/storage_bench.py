"""SQLite append throughput: one writer at a time versus many (group commit).

``python -m bench.storage_bench [--messages N] [--writers 1,8,64] [--batch-max B]
[--dir DIR]`` appends N chat messages to a fresh database for each writer
count: with 1 writer every append waits for its own commit (one fsync each);
with W concurrent writers the database thread commits whatever queued up while
the previous commit was syncing, so one fsync covers many appends. Prints a
table with appends per second and appends per transaction. Bounded: at most
20000 messages per run, and a run stops after 30 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

from bambid.models import NewChatMessage
from bambid.storage.sqlite import SQLiteStorage

MAX_MESSAGES = 20_000
RUN_SECONDS = 30.0


async def one_run(
    reactor: IReactorTime, directory: Path, writers: int, messages: int, batch_max: int
) -> tuple[int, float, int]:
    """Append ``messages`` with ``writers`` concurrent callers; return the count
    done, the seconds taken and the write transactions committed."""
    path = directory / f"bench-{writers}.sqlite3"
    storage = SQLiteStorage(path, IReactorFromThreads(reactor), batch_max=batch_max)
    await storage.open()
    remaining = messages
    started = time.perf_counter()
    deadline = started + RUN_SECONDS
    done = 0

    async def writer(n: int) -> None:
        nonlocal remaining, done
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            await storage.append_chat_message(
                NewChatMessage(
                    room="bench", username=f"w{n}", text="x" * 80, timestamp=reactor.seconds()
                )
            )
            done += 1

    try:
        before = storage.stats.transactions
        await defer.gatherResults([defer.Deferred.fromCoroutine(writer(n)) for n in range(writers)])
        elapsed = time.perf_counter() - started
        transactions = storage.stats.transactions - before
    finally:
        await storage.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return done, elapsed, transactions


async def main(reactor: IReactorTime, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--writers", default="1,4,16,64,256")
    parser.add_argument("--batch-max", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    args = parser.parse_args(argv)
    messages = max(1, min(args.messages, MAX_MESSAGES))
    writer_counts = [max(1, int(w)) for w in args.writers.split(",")]

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bambid-bench-") as tmp:
        directory = Path(tmp)
        print(f"SQLite append_chat_message, {messages} messages per run, in {directory}")
        print(f"(WAL, synchronous=FULL, batch_max={args.batch_max}, {os.cpu_count()} CPUs)")
        print()
        header = (
            f"{'writers':>8} {'appends':>8} {'seconds':>8} {'appends/s':>10} "
            f"{'commits':>8} {'per commit':>10}"
        )
        print(header)
        print("-" * len(header))
        for writers in writer_counts:
            done, elapsed, commits = await one_run(
                reactor, directory, writers, messages, args.batch_max
            )
            print(
                f"{writers:>8} {done:>8} {elapsed:>8.2f} {done / elapsed:>10.0f} "
                f"{commits:>8} {done / max(commits, 1):>10.1f}"
            )


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
