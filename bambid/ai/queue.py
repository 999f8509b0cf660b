"""Generation slots per backend, failover between backends, and their health.

``SlotQueue`` bounds the replies one backend generates at once
(``ai.concurrency``). A request that finds every slot taken waits in FIFO
order; its ``on_position`` callback hears its place (1 = next) when it starts
waiting and again whenever the place changes. Cancelling the Deferred of a
waiting ``acquire`` removes the waiter (and moves those behind it up).

``Router`` holds one ``SlotQueue`` per backend (``ai.url``, then
``ai.fallback_urls``) and runs a reply through them (``generate``):

- Backends are tried healthy first, each group in configured order. A backend
  that failed before its first token (``BackendError.started`` false, and no
  delta seen) counts as down for ``cooloff`` seconds, or until a health check
  finds it up again: down backends are still tried, after the healthy ones.
- A failure before the first token releases that backend's slot and queues the
  reply at the next backend; a failure after it ends the reply (the partial
  text is the caller's to keep). When every backend failed first,
  ``AllBackendsFailed`` lists what each said.
- ``admit()`` is asked before a reply is accepted: it refuses (``Busy``) when
  the new reply would wait behind more than ``max_queue`` others, and reserves
  its place until ``generate`` queues it (so concurrent sends count).
- Cancelling the Deferred of ``generate`` cancels what it awaits: a waiting
  reply leaves the queue, a streaming one closes its upstream connection (the
  ``LLMBackend.stream`` contract); the slot is released either way.

``HealthMonitor`` asks every backend for ``health()`` every ``interval``
seconds on the injected clock, in the background; ``report()`` returns the
last answers (plus ``checked_at``) and the live queue figures at once, so
``/health`` never waits for a slow backend. A backend found reachable with a
model counts as up again at once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bambid.ai.llm import BackendError, Completion
from bambid.urls import redact_url

#: ``on_delta(text)``: one piece of visible reply text.
OnDelta = Callable[[str], None]


class Backend(Protocol):
    """What the router needs of an ``LLMBackend``."""

    @property
    def url(self) -> str: ...

    async def resolve_model(self) -> str: ...

    async def stream(self, messages: list[dict[str, str]], on_delta: OnDelta) -> Completion: ...

    async def health(self) -> dict[str, Any]: ...


class Listener(Protocol):
    """Told about one reply's progress by ``Router.generate``."""

    def queued(self, position: int) -> None:
        """Waiting for a slot; ``position`` 1 is next."""

    def started(self, backend: str, model: str) -> None:
        """A slot was taken on ``backend`` and its model resolved; streaming
        starts. Called again if the reply fails over before its first token."""

    def delta(self, text: str) -> None:
        """Visible reply text, in order."""


class Busy(Exception):
    """Too many replies are waiting (``ai.max_queue``)."""


class NoBackends(Exception):
    """No backend is configured."""


class AllBackendsFailed(Exception):
    """Every backend failed before its first token. ``failures`` holds
    ``(url, BackendError)`` in the order they were tried."""

    def __init__(self, failures: Sequence[tuple[str, BackendError]]) -> None:
        self.failures = list(failures)
        super().__init__(
            "; ".join(f"{url}: {error.code} ({error.message})" for url, error in failures)
        )


# -- one backend's slots -----------------------------------------------------------------


@attrs.define(eq=False)
class Slot:
    """A generation slot; ``release`` it exactly once (later calls do nothing)."""

    queue: SlotQueue
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.queue._release()


@attrs.define(eq=False)
class _Waiter:
    deferred: Deferred[Slot]
    on_position: Callable[[int], None] | None


class SlotQueue:
    """``concurrency`` slots and a FIFO of waiters (see the module doc)."""

    _log = Logger()

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.running = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def free(self) -> int:
        """Slots a newcomer could take right now."""
        return self.concurrency - self.running if not self._waiters else 0

    def acquire(self, on_position: Callable[[int], None] | None = None) -> Deferred[Slot]:
        """A slot now (an already-fired Deferred) or when one frees up."""
        if self.free > 0:
            self.running += 1
            return defer.succeed(Slot(self))
        waiter = _Waiter(Deferred(lambda d: self._leave(waiter)), on_position)
        self._waiters.append(waiter)
        self._tell(waiter, len(self._waiters))
        return waiter.deferred

    def _leave(self, waiter: _Waiter) -> None:
        """The waiter's Deferred was cancelled: it leaves the queue."""
        try:
            index = self._waiters.index(waiter)
        except ValueError:
            return
        del self._waiters[index]
        self._tell_from(index)

    def _release(self) -> None:
        self.running -= 1
        if self._waiters and self.running < self.concurrency:
            waiter = self._waiters.popleft()
            self.running += 1
            self._tell_from(0)
            waiter.deferred.callback(Slot(self))

    def _tell_from(self, index: int) -> None:
        """Positions changed for every waiter from ``index`` on."""
        for position, waiter in enumerate(list(self._waiters)[index:], start=index + 1):
            self._tell(waiter, position)

    def _tell(self, waiter: _Waiter, position: int) -> None:
        if waiter.on_position is None:
            return
        try:
            waiter.on_position(position)
        except Exception:
            self._log.failure("queue position listener failed")


# -- failover ------------------------------------------------------------------------------


@attrs.define(eq=False)
class Route:
    """A backend, its slots, and until when it counts as down."""

    backend: Backend
    queue: SlotQueue
    down_until: float = 0.0

    @property
    def url(self) -> str:
        return self.backend.url


@attrs.frozen
class Generated:
    """A finished reply and the backend that produced it."""

    completion: Completion
    backend: str


class Admission:
    """A place reserved by ``Router.admit``; given up by ``release`` (which
    ``generate`` does when it queues the reply). Releasing twice is harmless."""

    def __init__(self, router: Router) -> None:
        self._router: Router | None = router

    def release(self) -> None:
        if self._router is not None:
            self._router.reserved -= 1
            self._router = None


class _Progress:
    """Wraps a listener to remember whether any text arrived."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.deltas = 0

    def delta(self, text: str) -> None:
        self.deltas += 1
        self.listener.delta(text)


class Router:
    """The backends in failover order, each with its slots (see the module doc)."""

    _log = Logger()

    def __init__(
        self,
        backends: Sequence[Backend],
        concurrency: int,
        max_queue: int,
        clock: IReactorTime,
        cooloff: float,
    ) -> None:
        self.routes = [Route(backend, SlotQueue(concurrency)) for backend in backends]
        self.max_queue = max_queue
        self.clock = clock
        self.cooloff = cooloff
        self.reserved = 0

    @property
    def waiting(self) -> int:
        """Replies waiting for a slot on any backend, reserved places included."""
        return sum(route.queue.waiting for route in self.routes) + self.reserved

    @property
    def running(self) -> int:
        """Slots in use on all backends."""
        return sum(route.queue.running for route in self.routes)

    def order(self) -> list[Route]:
        """Routes to try: those not marked down first, each group in configured order."""
        now = self.clock.seconds()
        up = [route for route in self.routes if route.down_until <= now]
        return up + [route for route in self.routes if route.down_until > now]

    def admit(self) -> Admission:
        """Reserve a place for a new reply. ``NoBackends`` without backends;
        ``Busy`` when it would wait behind ``max_queue`` or more others."""
        if not self.routes:
            raise NoBackends("no AI backend is configured")
        first = self.order()[0].queue
        position = self.waiting + 1 - first.free
        if position > self.max_queue:
            raise Busy(f"{self.waiting} replies are already waiting")
        self.reserved += 1
        return Admission(self)

    async def generate(
        self,
        messages: list[dict[str, str]],
        listener: Listener,
        admission: Admission | None = None,
    ) -> Generated:
        """Stream one reply (see the module doc). Raises ``BackendError`` for
        a failure after the first token, ``AllBackendsFailed`` when none
        produced one, ``NoBackends`` without backends, ``CancelledError`` when
        cancelled."""
        if not self.routes:
            if admission is not None:
                admission.release()
            raise NoBackends("no AI backend is configured")
        failures: list[tuple[str, BackendError]] = []
        progress = _Progress(listener)
        for route in self.order():
            waiting = route.queue.acquire(listener.queued)
            if admission is not None:
                admission.release()  # the reply now has a real place
                admission = None
            slot = await waiting
            try:
                model = await route.backend.resolve_model()
                listener.started(route.url, model)
                completion = await Deferred.fromCoroutine(
                    route.backend.stream(messages, progress.delta)
                )
            except BackendError as error:
                if error.started or progress.deltas:
                    raise
                route.down_until = self.clock.seconds() + self.cooloff
                failures.append((route.url, error))
                self._log.warn(
                    "AI backend {url} failed before its first token: {code} ({message})",
                    url=route.url,
                    code=error.code,
                    message=error.message,
                )
                continue
            finally:
                slot.release()
            route.down_until = 0.0
            return Generated(completion, route.url)
        raise AllBackendsFailed(failures)


# -- health --------------------------------------------------------------------------------


class HealthMonitor:
    """Background health checks of every backend (see the module doc)."""

    _log = Logger()

    def __init__(self, router: Router, clock: IReactorTime, interval: float) -> None:
        self.router = router
        self.clock = clock
        self.interval = interval
        self.results: list[dict[str, Any]] = [
            {
                "url": redact_url(route.url, mask=""),
                "reachable": None,
                "model": None,
                "models": 0,
                "latency_ms": None,
                "error": "not checked yet",
                "checked_at": None,
            }
            for route in router.routes
        ]
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._stopped: Deferred[Any] | None = None
        self._round: Deferred[Any] | None = None

    def start(self) -> None:
        """Check now, then every ``interval`` seconds."""
        if self.router.routes and not self._loop.running:
            self._stopped = self._loop.start(self.interval, now=True)
            self._stopped.addErrback(lambda f: self._log.failure("AI health checks stopped", f))

    async def stop(self) -> None:
        """Stop checking; an unfinished round is cancelled."""
        if self._loop.running:
            self._loop.stop()
        if self._round is not None:
            self._round.cancel()
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            await stopped

    def check(self) -> Deferred[None]:
        """One round: every backend at once; results stored as they come."""
        rounds = [
            Deferred.fromCoroutine(self._check_one(index, route))
            for index, route in enumerate(self.router.routes)
        ]
        done: Deferred[Any] = defer.DeferredList(rounds, consumeErrors=True)
        self._round = done
        done.addBoth(self._round_over)
        return done

    def _round_over(self, _: object) -> None:
        self._round = None

    async def _check_one(self, index: int, route: Route) -> None:
        try:
            result = dict(await route.backend.health())
        except defer.CancelledError:
            return
        except Exception:  # health() promises not to raise; keep the loop alive anyway
            self._log.failure("health check of {url} failed", url=route.url)
            result = {"reachable": False, "error": "the health check failed"}
        result.setdefault("url", redact_url(route.url, mask=""))
        result["checked_at"] = self.clock.seconds()
        if result.get("reachable") and result.get("model"):
            route.down_until = 0.0
        self.results[index] = result

    def report(self) -> dict[str, Any]:
        """``{"backends": [...], "queue": {"waiting": n, "running": n}}`` now."""
        return {
            "backends": [dict(result) for result in self.results],
            "queue": {"waiting": self.router.waiting, "running": self.router.running},
        }
