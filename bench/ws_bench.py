"""WebSocket round-trip benchmark against a real daemon subprocess.

``python -m bench.ws_bench [--clients N] [--rounds M]`` starts ``python -m twisted
bambid`` on a free loopback port with SQLite in a temporary directory, opens N
WebSocket clients and has each send M ``hello`` requests one after another, then
prints connection time, throughput and latency percentiles. Bounded: at most
200 clients x 10000 rounds, and it gives up after 120 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor

from tests import wsclient
from tests.daemon import Daemon


async def client_run(url: str, rounds: int, latencies: list[float]) -> None:
    client = await wsclient.connect(url)
    for _ in range(rounds):
        started = time.perf_counter()
        answer = await client.request({"type": "hello"})
        latencies.append(time.perf_counter() - started)
        assert answer["type"] == "welcome"
    client.sendClose()
    await client.closed


async def run(url: str, clients: int, rounds: int) -> dict[str, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    runs = [
        defer.Deferred.fromCoroutine(client_run(url, rounds, latencies)) for _ in range(clients)
    ]
    await defer.gatherResults(runs, consumeErrors=True)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    clients, rounds = min(args.clients, 200), min(args.rounds, 10000)
    with tempfile.TemporaryDirectory() as workdir, Daemon.start(Path(workdir)) as daemon:

        async def go() -> None:
            result = await run(daemon.ws, clients, rounds)
            print(f"clients={clients} rounds={rounds}")
            for key, value in result.items():
                print(f"  {key:>10}: {value:,.2f}")

        def stop(_: object) -> None:
            reactor.stop()

        d = defer.Deferred.fromCoroutine(go())
        d.addTimeout(120, reactor)
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr)).addBoth(stop)
        reactor.run()
        daemon.terminate()


if __name__ == "__main__":
    main(sys.argv[1:])
