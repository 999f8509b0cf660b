"""The process that ``test_durability`` kills: ``python tests/durability_writer.py DB``.

Opens ``SQLiteStorage`` on ``DB`` with a real reactor and has several
concurrent writers append chat messages to the room ``durable``, printing (and
flushing) one line per acknowledged append: its sequence number. Concurrent
writers keep group-commit batches in flight, so the kill lands in the middle
of one. Prints ``ready`` once the storage is open. Bounded: it stops by itself
after ``MAX_MESSAGES`` appends.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

from bambid.models import NewChatMessage
from bambid.storage.sqlite import SQLiteStorage

WRITERS = 8
MAX_MESSAGES = 50_000


async def write(storage: SQLiteStorage, clock: IReactorTime, writer: int, count: int) -> None:
    for n in range(count):
        message = await storage.append_chat_message(
            NewChatMessage(
                room="durable",
                username=f"writer{writer}",
                text=f"message {n} from writer {writer}",
                timestamp=clock.seconds(),
            )
        )
        sys.stdout.write(f"{message.seq}\n")
        sys.stdout.flush()


async def main(reactor: IReactorTime, path: str) -> None:
    storage = SQLiteStorage(Path(path), IReactorFromThreads(reactor), batch_max=64)
    await storage.open()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(write(storage, reactor, w, MAX_MESSAGES // WRITERS))
                for w in range(WRITERS)
            ]
        )
    finally:
        await storage.close()


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, sys.argv[1])))
