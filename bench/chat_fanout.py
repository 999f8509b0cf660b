"""Public-chat fan-out benchmark against a real daemon subprocess.

``python -m bench.chat_fanout [--clients N] [--publishers P] [--rate R]
[--seconds S] [--idle M]`` starts ``python -m twisted bambid`` on a free
loopback port with SQLite in a temporary directory whose accounts and sessions
were written beforehand (no password hashing, no login rate limit), then:

1. **Idle memory**: opens M signed-in connections that say ``hello`` and stay
   in no room, and reports the daemon's RSS growth per connection
   (``/proc/<pid>/status`` VmRSS before and after). They are closed again.
2. **Fan-out**: N signed-in clients join ``lobby`` (P of them publish), then
   the publishers post R messages a second in total for S seconds. Each
   message carries its send time; every client records the delay until its
   ``chat.message`` arrives. Reported: delivery latency p50/p99/max,
   deliveries per second, and the daemon's CPU seconds (utime + stime from
   ``/proc/<pid>/stat``) per 1000 deliveries during the measured window.

The client side is one Python process sharing the machine with the daemon, so
its own decoding time is part of the measured latency. Bounded: at most 5000
clients or idle connections, 60 seconds of publishing, 600 seconds overall;
the file-descriptor limit is raised to what the run needs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.protocol import Protocol

from bambid.auth.sessions import hash_token
from bambid.models import Account, Session
from bambid.storage.sqlite import SQLiteStorage
from tests.daemon import Daemon

MAX_CONNECTIONS = 5000
MAX_SECONDS = 60.0
OVERALL_DEADLINE = 600.0
WARMUP = 1.0
CONNECT_BATCH = 100
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# -- the daemon, from the outside ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def prepare_database(path: Path, names: list[str]) -> dict[str, str]:
    """Accounts and one session each, written straight into the daemon's
    future database; returns name -> session token."""
    storage = SQLiteStorage(path, IReactorFromThreads(reactor), batch_max=512)
    await storage.open()
    now = time.time()
    tokens = {name: secrets.token_urlsafe(32) for name in names}
    writes = []
    for name, token in tokens.items():
        writes.append(
            Deferred.fromCoroutine(storage.create_account(Account(name, "-", "user", now)))
        )
        writes.append(
            Deferred.fromCoroutine(
                storage.create_session(Session(hash_token(token), name, now, now + 86400))
            )
        )
    await defer.gatherResults(writes, consumeErrors=True)
    await storage.close()
    return tokens


def write_config(workdir: Path) -> Path:
    config = workdir / "bambid.toml"
    config.write_text(
        f"""
[storage]
uri = "sqlite:///{workdir}/bambid.sqlite3"

[limits]
connection_burst = 1000
connection_per_second = 1000.0
chat_burst = 1000
chat_per_second = 1000.0
""",
        encoding="utf-8",
    )
    return config


# -- lean clients --------------------------------------------------------------------------
#
# A minimal RFC 6455 client: the bench must not spend more time decoding a
# frame than the server spends sending it, or it measures itself. Server
# frames are unmasked and unfragmented; ours are masked as the RFC requires.


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.deliveries = 0
        self.errors = 0

    def record(self, delay: float) -> None:
        if self.measuring:
            self.latencies.append(delay)
            self.deliveries += 1


_STAMP = b'"text":"t='


class LeanClient(Protocol):
    """One WebSocket connection: handshake with the session cookie, then
    frames. ``chat.message`` frames carrying a send time are timed without
    decoding the JSON; other frames wake whoever waits for their type."""

    def __init__(self, host: str, token: str, stats: Stats) -> None:
        self.host = host
        self.token = token
        self.stats = stats
        self.opened: Deferred[LeanClient] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.waiting: dict[str, Deferred[dict[str, Any]]] = {}
        self._buffer = bytearray()
        self._open = False

    def connectionMade(self) -> None:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: bambid_session={self.token}\r\n\r\n"
        )
        assert self.transport is not None
        self.transport.write(request.encode())

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at = 0
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.opened.errback(RuntimeError(bytes(buffer[:end]).decode(errors="replace")))
                return
            self._open = True
            at = end + 4
            self.opened.callback(self)
        size = len(buffer)
        while size - at >= 2:
            opcode = buffer[at] & 0x0F
            length = buffer[at + 1] & 0x7F
            head = 2
            if length == 126:
                if size - at < 4:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 4], "big")
                head = 4
            elif length == 127:
                if size - at < 10:
                    break
                length = int.from_bytes(buffer[at + 2 : at + 10], "big")
                head = 10
            if size - at < head + length:
                break
            payload = bytes(buffer[at + head : at + head + length])
            at += head + length
            if opcode == 1:
                self._text(payload)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                assert self.transport is not None
                self.transport.loseConnection()
        del buffer[:at]

    def _text(self, payload: bytes) -> None:
        stamp = payload.find(_STAMP)
        if stamp >= 0:
            begin = stamp + len(_STAMP)
            sent = float(payload[begin : payload.index(b'"', begin)])
            self.stats.record(time.perf_counter() - sent)
            return
        message = json.loads(payload)
        waiter = self.waiting.pop(message["type"], None)
        if waiter is not None:
            waiter.callback(message)
        elif message["type"] == "error":
            self.stats.errors += 1

    def connectionLost(self, reason: Any = None) -> None:
        if not self.opened.called:
            self.opened.errback(RuntimeError("connection lost during the handshake"))
        self.closed.callback(None)

    def wait_for(self, kind: str) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.waiting[kind] = d
        return d

    def send_json(self, message: dict[str, Any]) -> None:
        self._send(0x1, json.dumps(message).encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = secrets.token_bytes(4)
        length = len(payload)
        if length < 126:
            head = bytes([0x80 | opcode, 0x80 | length])
        elif length < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            length, "big"
        )
        assert self.transport is not None
        self.transport.write(head + mask + masked)

    def close(self) -> None:
        self._send(0x8, (1000).to_bytes(2, "big"))


async def open_client(port: int, stats: Stats, token: str, room: str | None) -> LeanClient:
    client = LeanClient(f"127.0.0.1:{port}", token, stats)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await client.opened
    welcome = client.wait_for("welcome")
    client.send_json({"type": "hello"})
    if (await welcome)["user"] is None:
        raise RuntimeError("the session was not recognised")
    if room is not None:
        presence = client.wait_for("presence")
        client.send_json({"type": "room.join", "room": room})
        await presence
    return client


async def open_many(
    port: int, stats: Stats, tokens: list[str], room: str | None
) -> list[LeanClient]:
    clients: list[LeanClient] = []
    for start in range(0, len(tokens), CONNECT_BATCH):
        batch = tokens[start : start + CONNECT_BATCH]
        clients += await defer.gatherResults(
            [Deferred.fromCoroutine(open_client(port, stats, t, room)) for t in batch],
            consumeErrors=True,
        )
    return clients


async def close_all(clients: list[LeanClient]) -> None:
    for client in clients:
        client.close()
    await defer.gatherResults([c.closed for c in clients], consumeErrors=True)


async def settle(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# -- the phases ------------------------------------------------------------------------------


async def idle_phase(pid: int, port: int, tokens: list[str]) -> dict[str, float]:
    await settle(1.0)
    before = rss_bytes(pid)
    started = time.perf_counter()
    clients = await open_many(port, Stats(), tokens, None)
    opened = time.perf_counter() - started
    await settle(2.0)
    after = rss_bytes(pid)
    await close_all(clients)
    return {
        "connections": len(clients),
        "seconds_to_open": opened,
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "bytes_per_connection": (after - before) / len(clients),
    }


async def fanout_phase(
    pid: int, port: int, tokens: list[str], publishers: int, rate: float, seconds: float
) -> dict[str, float]:
    stats = Stats()
    started = time.perf_counter()
    clients = await open_many(port, stats, tokens, "lobby")
    joined = time.perf_counter() - started
    await settle(1.0)
    senders = clients[:publishers]
    sent = 0

    def publish() -> None:
        nonlocal sent
        sender = senders[sent % len(senders)]
        sender.send_json(
            {"type": "chat.send", "room": "lobby", "text": f"t={time.perf_counter():.6f}"}
        )
        sent += 1

    loop = task.LoopingCall(publish)
    loop.clock = reactor
    loop.start(1.0 / rate, now=True)
    await settle(WARMUP)
    stats.measuring = True
    cpu_before, wall_before, sent_before = cpu_seconds(pid), time.perf_counter(), sent
    own_before = time.process_time()
    await settle(seconds)
    cpu_after, wall_after, sent_after = cpu_seconds(pid), time.perf_counter(), sent
    own_after = time.process_time()
    loop.stop()
    await settle(0.5)  # let the last messages arrive (they are still counted)
    stats.measuring = False
    await close_all(clients)
    wall = wall_after - wall_before
    ordered = sorted(stats.latencies)
    expected = (sent_after - sent_before) * len(clients)
    return {
        "clients": len(clients),
        "publishers": len(senders),
        "seconds_to_join": joined,
        "messages_per_second": (sent_after - sent_before) / wall,
        "deliveries_per_second": stats.deliveries / wall,
        "delivered_of_expected": stats.deliveries / expected if expected else 0.0,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000 if ordered else float("nan"),
        "max_ms": ordered[-1] * 1000 if ordered else float("nan"),
        "server_cpu_share": (cpu_after - cpu_before) / wall,
        "client_cpu_share": (own_after - own_before) / wall,
        "cpu_s_per_1000_deliveries": (cpu_after - cpu_before) / stats.deliveries * 1000
        if stats.deliveries
        else float("nan"),
        "errors": stats.errors,
        "load_average_1min": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def print_result(title: str, result: dict[str, float]) -> None:
    print(title)
    for key, value in result.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        print(f"  {key:>28}: {shown}")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        raise SystemExit(f"need {needed} file descriptors, the hard limit is {hard}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second, total")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (0: skip)")
    args = parser.parse_args(argv)
    clients = max(1, min(args.clients, MAX_CONNECTIONS))
    idle = max(0, min(args.idle, MAX_CONNECTIONS))
    publishers = max(1, min(args.publishers, clients))
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    raise_fd_limit(2 * max(clients, idle) + 256)  # both ends live on this machine

    outcome: dict[str, Any] = {}

    async def run(stack: ExitStack, workdir: Path) -> None:
        names = [f"bench{i:05d}" for i in range(max(clients, idle))]
        tokens = await prepare_database(workdir / "bambid.sqlite3", names)
        config = write_config(workdir)
        daemon = stack.enter_context(Daemon.start(workdir, args=("--config", str(config))))
        pid = daemon.process.pid
        print(
            f"daemon pid {pid} on port {daemon.port}; {os.cpu_count()} CPUs shared with this client"
        )
        token_list = [tokens[n] for n in names]
        if idle:
            result = await idle_phase(pid, daemon.port, token_list[:idle])
            print_result(f"idle signed-in connections (hello, no room): {idle}", result)
            outcome["idle"] = result
        result = await fanout_phase(
            pid, daemon.port, token_list[:clients], publishers, args.rate, seconds
        )
        print_result(
            f"fan-out: {clients} clients in one room, {publishers} publishers, "
            f"{args.rate:g} messages/s for {seconds:g} s",
            result,
        )
        outcome["fanout"] = result
        daemon.terminate()

    with tempfile.TemporaryDirectory() as workdir, ExitStack() as stack:
        failed: list[Callable[[], None]] = []

        def stop(result: object) -> None:
            if hasattr(result, "getTraceback"):
                print(result.getTraceback(), file=sys.stderr)
                failed.append(lambda: None)
            reactor.stop()

        def go() -> None:
            d = Deferred.fromCoroutine(run(stack, Path(workdir)))
            d.addTimeout(OVERALL_DEADLINE, reactor)
            d.addBoth(stop)

        reactor.callWhenRunning(go)
        reactor.run()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
