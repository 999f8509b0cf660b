"""Generation slots, failover and health checks, on ``task.Clock`` with
in-memory backends whose streams the tests drive by hand."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bambid.ai.llm import BackendError, Completion
from bambid.ai.queue import (
    AllBackendsFailed,
    Busy,
    Generated,
    HealthMonitor,
    NoBackends,
    Router,
    SlotQueue,
)

sync = SynchronousTestCase()


@attrs.define(eq=False)
class Call:
    messages: list[dict[str, str]]
    on_delta: Any
    result: Deferred[Completion]
    cancelled: bool = False


class FakeBackend:
    """Streams only when the test says so; ``fail_models`` makes
    ``resolve_model`` fail as an unreachable server would."""

    def __init__(self, url: str, fail_models: bool = False) -> None:
        self.url = url
        self.fail_models = fail_models
        self.calls: list[Call] = []
        self.health_calls: list[Deferred[dict[str, Any]]] = []

    async def resolve_model(self) -> str:
        if self.fail_models:
            raise BackendError("unavailable", f"{self.url} refused the connection")
        return "model-" + self.url[-1]

    async def stream(self, messages: list[dict[str, str]], on_delta: Any) -> Completion:
        def cancel(_: Deferred[Completion]) -> None:
            call.cancelled = True

        call = Call(messages, on_delta, Deferred(cancel))
        self.calls.append(call)
        return await call.result

    async def health(self) -> dict[str, Any]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.health_calls.append(d)
        return await d


@attrs.define
class Recorder:
    events: list[tuple[str, Any]] = attrs.Factory(list)

    def queued(self, position: int) -> None:
        self.events.append(("queued", position))

    def started(self, backend: str, model: str) -> None:
        self.events.append(("started", backend))

    def delta(self, text: str) -> None:
        self.events.append(("delta", text))


def done(text: str = "ok") -> Completion:
    return Completion(text, "stop", {"total_tokens": 3}, "m")


def generate(router: Router, recorder: Recorder) -> Deferred[Generated]:
    return Deferred.fromCoroutine(router.generate([{"role": "user", "content": "hi"}], recorder))


# -- SlotQueue -------------------------------------------------------------------------


def test_slots_then_fifo_with_positions() -> None:
    queue = SlotQueue(1)
    positions: dict[str, list[int]] = {"b": [], "c": [], "d": []}
    a = sync.successResultOf(queue.acquire())
    b = queue.acquire(positions["b"].append)
    c = queue.acquire(positions["c"].append)
    d = queue.acquire(positions["d"].append)
    assert (queue.running, queue.waiting) == (1, 3)
    assert positions == {"b": [1], "c": [2], "d": [3]}
    sync.assertNoResult(b)

    c.cancel()  # c leaves: d moves up, b stays first
    sync.failureResultOf(c, CancelledError)
    assert positions == {"b": [1], "c": [2], "d": [3, 2]}

    a.release()
    slot_b = sync.successResultOf(b)
    assert positions["d"] == [3, 2, 1]
    a.release()  # a second release does nothing
    assert (queue.running, queue.waiting) == (1, 1)
    slot_b.release()
    sync.successResultOf(d).release()
    assert (queue.running, queue.waiting) == (0, 0)


def test_concurrency_two() -> None:
    queue = SlotQueue(2)
    one = sync.successResultOf(queue.acquire())
    sync.successResultOf(queue.acquire())
    third = queue.acquire()
    sync.assertNoResult(third)
    one.release()
    sync.successResultOf(third)
    assert queue.running == 2


# -- Router: admission ---------------------------------------------------------------------


def test_busy_beyond_max_queue() -> None:
    clock = Clock()
    backend = FakeBackend("http://a/v1")
    router = Router([backend], concurrency=1, max_queue=2, clock=clock, cooloff=30)
    replies = []
    for _ in range(3):
        admission = router.admit()
        replies.append(
            Deferred.fromCoroutine(
                router.generate([{"role": "user", "content": "x"}], Recorder(), admission)
            )
        )
    assert (router.running, router.waiting) == (1, 2)
    with pytest.raises(Busy):
        router.admit()
    backend.calls[0].result.callback(done())
    sync.successResultOf(replies[0])
    assert (router.running, router.waiting) == (1, 1)
    router.admit().release()  # room again; giving the place back is fine
    # Leave nothing suspended: a generate() coroutine collected as garbage
    # would release its slot to waiters that are garbage too.
    for reply in replies[1:]:
        reply.cancel()
        sync.failureResultOf(reply, CancelledError)
    assert (router.running, router.waiting) == (0, 0)


def test_reserved_places_count_before_the_reply_queues() -> None:
    router = Router([FakeBackend("http://a/v1")], 1, 1, Clock(), 30)
    first = router.admit()  # will take the free slot
    second = router.admit()  # will wait: position 1
    with pytest.raises(Busy):
        router.admit()
    first.release()
    second.release()
    second.release()
    assert router.waiting == 0


def test_no_backends() -> None:
    router = Router([], 1, 1, Clock(), 30)
    with pytest.raises(NoBackends):
        router.admit()
    sync.failureResultOf(generate(router, Recorder()), NoBackends)


# -- Router: generating and failing over ----------------------------------------------------


def test_queue_positions_reach_the_listener() -> None:
    backend = FakeBackend("http://a/v1")
    router = Router([backend], 1, 5, Clock(), 30)
    first, second, third = Recorder(), Recorder(), Recorder()
    d1 = generate(router, first)
    d2 = generate(router, second)
    d3 = generate(router, third)
    assert first.events == [("started", "http://a/v1")]
    assert second.events == [("queued", 1)]
    assert third.events == [("queued", 2)]
    backend.calls[0].on_delta("hel")
    backend.calls[0].result.callback(done("hel"))
    assert sync.successResultOf(d1) == Generated(done("hel"), "http://a/v1")
    assert second.events == [("queued", 1), ("started", "http://a/v1")]
    assert third.events == [("queued", 2), ("queued", 1)]
    backend.calls[1].result.callback(done())
    backend.calls[2].result.callback(done())
    sync.successResultOf(d2)
    sync.successResultOf(d3)
    assert router.running == 0


def test_failover_before_the_first_token() -> None:
    clock = Clock()
    down = FakeBackend("http://a/v1", fail_models=True)
    errs = FakeBackend("http://b/v1")
    good = FakeBackend("http://c/v1")
    router = Router([down, errs, good], 1, 5, clock, cooloff=30)
    recorder = Recorder()
    d = generate(router, recorder)
    errs.calls[0].result.errback(BackendError("unavailable", "HTTP 500"))
    good.calls[0].on_delta("fine")
    good.calls[0].result.callback(done("fine"))
    assert sync.successResultOf(d).backend == "http://c/v1"
    assert recorder.events == [
        ("started", "http://b/v1"),
        ("started", "http://c/v1"),
        ("delta", "fine"),
    ]
    assert router.running == 0
    # The two that failed are tried last until the cool-off is over.
    assert [r.url for r in router.order()] == ["http://c/v1", "http://a/v1", "http://b/v1"]
    clock.advance(30)
    assert [r.url for r in router.order()] == ["http://a/v1", "http://b/v1", "http://c/v1"]


def test_all_backends_failing_first() -> None:
    a = FakeBackend("http://a/v1", fail_models=True)
    b = FakeBackend("http://b/v1")
    router = Router([a, b], 1, 5, Clock(), 30)
    d = generate(router, Recorder())
    b.calls[0].result.errback(BackendError("timeout", "no first byte"))
    failure = sync.failureResultOf(d, AllBackendsFailed)
    assert [(url, e.code) for url, e in failure.value.failures] == [
        ("http://a/v1", "unavailable"),
        ("http://b/v1", "timeout"),
    ]
    assert router.running == 0


def test_failure_after_the_first_token_does_not_fail_over() -> None:
    a, b = FakeBackend("http://a/v1"), FakeBackend("http://b/v1")
    router = Router([a, b], 1, 5, Clock(), 30)
    d = generate(router, Recorder())
    a.calls[0].on_delta("half a")
    # Even an error that claims nothing started: a delta was seen.
    a.calls[0].result.errback(BackendError("unavailable", "hung up"))
    assert sync.failureResultOf(d, BackendError).value.code == "unavailable"
    assert b.calls == []
    assert router.running == 0


def test_failover_queues_at_the_next_backend() -> None:
    a, b = FakeBackend("http://a/v1"), FakeBackend("http://b/v1")
    router = Router([a, b], 1, 5, Clock(), 30)
    busy_b = generate(router, Recorder())  # takes a's slot
    # Occupy b's slot directly, then fail a reply over from a to b.
    b_slot = sync.successResultOf(router.routes[1].queue.acquire())
    recorder = Recorder()
    moving = generate(router, recorder)  # waits at a
    a.calls[0].result.callback(done())
    sync.successResultOf(busy_b)
    a.calls[1].result.errback(BackendError("unavailable", "refused"))
    assert recorder.events[-1] == ("queued", 1)  # now waiting at b
    b_slot.release()
    b.calls[0].result.callback(done())
    assert sync.successResultOf(moving).backend == "http://b/v1"


def test_cancel_while_streaming_cancels_the_stream_and_frees_the_slot() -> None:
    backend = FakeBackend("http://a/v1")
    router = Router([backend], 1, 5, Clock(), 30)
    d = generate(router, Recorder())
    backend.calls[0].on_delta("par")
    d.cancel()
    assert backend.calls[0].cancelled
    sync.failureResultOf(d, CancelledError)
    assert router.running == 0


def test_cancel_while_queued_leaves_the_queue() -> None:
    backend = FakeBackend("http://a/v1")
    router = Router([backend], 1, 5, Clock(), 30)
    first = generate(router, Recorder())
    waiting = [Recorder(), Recorder()]
    second = generate(router, waiting[0])
    third = generate(router, waiting[1])
    second.cancel()
    sync.failureResultOf(second, CancelledError)
    assert waiting[1].events == [("queued", 2), ("queued", 1)]
    assert router.waiting == 1
    backend.calls[0].result.callback(done())
    sync.successResultOf(first)
    assert len(backend.calls) == 2  # the cancelled reply never reached the backend
    backend.calls[1].result.callback(done())
    sync.successResultOf(third)


# -- health ----------------------------------------------------------------------------------


def test_health_checks_in_the_background() -> None:
    clock = Clock()
    a, b = FakeBackend("http://a/v1"), FakeBackend("http://b/v1")
    router = Router([a, b], 2, 5, clock, 30)
    router.routes[1].down_until = 100
    monitor = HealthMonitor(router, clock, interval=10)
    assert monitor.report()["backends"][0]["reachable"] is None
    monitor.start()
    assert len(a.health_calls) == len(b.health_calls) == 1
    # b answers, a hangs: the report does not wait for a.
    b.health_calls[0].callback({"url": b.url, "reachable": True, "model": "m", "error": None})
    report = monitor.report()
    assert report["backends"][1]["reachable"] is True
    assert report["backends"][1]["checked_at"] == 0
    assert report["queue"] == {"waiting": 0, "running": 0}
    assert router.routes[1].down_until == 0  # found up again
    clock.advance(10)
    assert len(b.health_calls) == 1  # no overlapping rounds while a hangs
    a.health_calls[0].callback({"url": a.url, "reachable": False, "error": "refused"})
    clock.advance(10)
    assert len(a.health_calls) == len(b.health_calls) == 2
    stopped = Deferred.fromCoroutine(monitor.stop())  # cancels the round in flight
    sync.successResultOf(stopped)
    clock.advance(100)
    assert len(a.health_calls) == 2
    assert monitor.report()["backends"][0]["error"] == "refused"


def test_health_monitor_without_backends_does_nothing() -> None:
    monitor = HealthMonitor(Router([], 1, 1, Clock(), 30), Clock(), 10)
    monitor.start()
    sync.successResultOf(Deferred.fromCoroutine(monitor.stop()))
    assert monitor.report() == {"backends": [], "queue": {"waiting": 0, "running": 0}}
