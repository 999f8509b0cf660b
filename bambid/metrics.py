"""What bambid counts and times, for Prometheus (``/metrics``, docs/operations.md).

``Metrics`` owns one ``CollectorRegistry`` per service (never the global
default: tests run many services in one process) and offers one small hook
per source, which ``bambid.service`` appends to the hook lists the other
modules already have. Nothing here imports a transport or a feature module.

Label values are bounded: WebSocket message types a client sends count under
their name only when a handler is registered for them (else ``other``); the
types the server sends are its own, capped at ``MAX_TYPES`` names; storage
operations are the ``Storage`` methods; outcomes and error kinds are fixed
sets (see each hook).

Live values (connections, the companion queue, whether each LLM and TTS
backend is up) are read at scrape time from the same callables ``/health``
uses, never polled. The AI and TTS backends' state is the last background
health check's: a backend not checked yet has no ``*_backend_up`` sample.

``TimedStorage`` wraps a ``Storage`` and reports how long every coroutine
method of the interface took, and whether it failed, to its ``observers``.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bambid import __version__
from bambid.identity import Identity
from bambid.models import ChatMessage
from bambid.storage import Storage
from bambid.storage.interface import DuplicateError, NotFoundError, StorageError
from bambid.urls import redact_url

#: Distinct server-sent message types counted by name; later ones are ``other``.
MAX_TYPES = 100
OTHER = "other"

FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
REPLY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

#: ``bambid_ai_requests_total`` outcomes that mean an AI backend failed.
AI_BACKEND_FAILURES = frozenset({"unavailable", "interrupted", "timeout", "too_long"})
#: Outcomes of a TTS request that are not errors.
TTS_SUCCESSES = frozenset({"ok", "cached", "cancelled"})

StatusOf = Callable[[], dict[str, Any]]


class Metrics:
    """The registry and every hook (see the module doc). ``clock`` times
    replies; the reactor in the service."""

    def __init__(self, clock: IReactorTime, version: str = __version__) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.ws_messages = Counter(
            "bambid_websocket_messages",
            "WebSocket messages by direction (in: from clients, out: to clients) and type.",
            ["direction", "type"],
            registry=registry,
        )
        self.chat_messages = Counter(
            "bambid_chat_messages", "Public chat messages published.", registry=registry
        )
        self.ai_requests = Counter(
            "bambid_ai_requests",
            "Companion replies that ended, by outcome: completed, stopped or the error code.",
            ["outcome"],
            registry=registry,
        )
        self.ai_first_token = Histogram(
            "bambid_ai_first_token_seconds",
            "Seconds from accepting a prompt (queue wait included) to the reply's first text.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.ai_reply = Histogram(
            "bambid_ai_reply_seconds",
            "Seconds from accepting a prompt to the end of its reply, whatever the outcome.",
            buckets=REPLY_BUCKETS,
            registry=registry,
        )
        self.tts_seconds = Histogram(
            "bambid_tts_seconds",
            "Seconds to speak one text, by the backend that spoke and the outcome "
            "(ok, cached, cancelled or the error code).",
            ["backend", "outcome"],
            buckets=TTS_BUCKETS,
            registry=registry,
        )
        self.trigger_fires = Counter(
            "bambid_trigger_fires",
            "Triggers fired, by source (ai: a companion reply, chat: a public message).",
            ["source"],
            registry=registry,
        )
        self.storage_seconds = Histogram(
            "bambid_storage_seconds",
            "Seconds each storage operation took (failures included).",
            ["operation"],
            buckets=STORAGE_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "bambid_errors",
            "Errors by kind: ws_<code> (WebSocket error frames), http_5xx, ai_backend, "
            "tts, storage.",
            ["kind"],
            registry=registry,
        )
        self.http_responses = Counter(
            "bambid_http_responses",
            "HTTP responses by status class (2xx, 3xx, 4xx, 5xx).",
            ["status"],
            registry=registry,
        )
        Info("bambid", "The running bambid.", registry=registry).info({"version": version})
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        for kind in ("http_5xx", "ai_backend", "tts", "storage"):
            self.errors.labels(kind=kind)
        for outcome in ("completed", "stopped"):
            self.ai_requests.labels(outcome=outcome)
        for source in ("ai", "chat"):
            self.trigger_fires.labels(source=source)
        self.known_type: Callable[[str], bool] = lambda type: False
        self._sent_types: set[str] = set()

    def watch(
        self,
        *,
        connections: Callable[[], int],
        ai_status: StatusOf | None = None,
        voice_status: StatusOf | None = None,
        known_type: Callable[[str], bool] | None = None,
    ) -> None:
        """Read the live values at each scrape from these callables (the ones
        ``HealthReporter`` uses); ``known_type(type)`` tells whether a client
        message type is one bambid handles."""
        self.registry.register(_Live(connections, ai_status, voice_status))
        if known_type is not None:
            self.known_type = known_type

    def time_storage(self, storage: Storage) -> None:
        """Observe ``storage``'s calls if it is a ``TimedStorage``."""
        if isinstance(storage, TimedStorage):
            storage.observers.append(self.storage_call)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics when ``accept``
        asks for it, else the Prometheus text format)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- hooks ----------------------------------------------------------------------------

    def frame(self, direction: str, type: str) -> None:
        """A WebSocket frame received (``in``) or sent (``out``)."""
        if direction == "in":
            label = type if self.known_type(type) else OTHER
        elif type in self._sent_types:
            label = type
        elif len(self._sent_types) < MAX_TYPES:
            self._sent_types.add(type)
            label = type
        else:
            label = OTHER
        self.ws_messages.labels(direction=direction, type=label).inc()

    def ws_error(self, code: str) -> None:
        """An error frame with ``code`` was sent (codes are the server's own)."""
        self.errors.labels(kind=f"ws_{code}").inc()

    def chat_message(self, message: ChatMessage) -> None:
        """For the hub's ``after_publish``."""
        self.chat_messages.inc()

    def http_response(self, code: int) -> None:
        """An HTTP response with status ``code`` was finished."""
        self.http_responses.labels(status=f"{code // 100}xx").inc()
        if code >= 500:
            self.errors.labels(kind="http_5xx").inc()

    async def begin(self, identity: Identity, reply_id: str) -> _FirstToken:
        """A companion ``ReplyObserverFactory``: times the reply's first text."""
        return _FirstToken(self, self.clock.seconds())

    def reply_ended(self, outcome: str, seconds: float) -> None:
        """A companion reply ended: ``completed``, ``stopped`` or its error code."""
        self.ai_requests.labels(outcome=outcome).inc()
        self.ai_reply.observe(seconds)
        if outcome in AI_BACKEND_FAILURES:
            self.errors.labels(kind="ai_backend").inc()

    def spoken(self, backend: str, outcome: str, seconds: float) -> None:
        """A text was spoken (``ok``, ``cached``), cancelled, or failed with a ``TTSError`` code."""
        self.tts_seconds.labels(backend=backend, outcome=outcome).observe(seconds)
        if outcome not in TTS_SUCCESSES:
            self.errors.labels(kind="tts").inc()

    def trigger_fired(self, context: Any) -> None:
        """For the trigger engine's ``after_fire`` (a ``FireContext``)."""
        self.trigger_fires.labels(source=context.source).inc()

    def storage_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        """A ``TimedStorage`` observer. Expected refusals (a duplicate, a
        missing record) are not errors; any other ``StorageError`` is."""
        self.storage_seconds.labels(operation=operation).observe(seconds)
        if isinstance(error, StorageError) and not isinstance(
            error, (DuplicateError, NotFoundError)
        ):
            self.errors.labels(kind="storage").inc()


class _FirstToken:
    """A companion ``ReplyObserver`` that observes the time to the first delta."""

    def __init__(self, metrics: Metrics, started: float) -> None:
        self.metrics = metrics
        self.started: float | None = started

    def feed(self, text: str) -> None:
        if self.started is not None:
            self.metrics.ai_first_token.observe(self.metrics.clock.seconds() - self.started)
            self.started = None

    def finish(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class _Live(Collector):
    """The values read at scrape time."""

    def __init__(
        self,
        connections: Callable[[], int],
        ai_status: StatusOf | None,
        voice_status: StatusOf | None,
    ) -> None:
        self.connections = connections
        self.ai_status = ai_status
        self.voice_status = voice_status

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "bambid_websocket_connections",
            "Open WebSocket connections.",
            value=self.connections(),
        )
        queue = GaugeMetricFamily(
            "bambid_ai_queue_depth",
            "Companion replies waiting for a generation slot, and generating.",
            labels=["state"],
        )
        ai_up = GaugeMetricFamily(
            "bambid_ai_backend_up",
            "1 if the LLM backend answered its last health check with a model, else 0.",
            labels=["url"],
        )
        if self.ai_status is not None:
            ai = self.ai_status()
            queue.add_metric(["waiting"], ai["queue"]["waiting"])
            queue.add_metric(["running"], ai["queue"]["running"])
            for backend in ai["backends"]:
                if backend.get("reachable") is not None:
                    up = bool(backend["reachable"]) and not backend.get("error")
                    ai_up.add_metric([redact_url(backend["url"], mask="")], 1.0 if up else 0.0)
        yield queue
        yield ai_up
        tts_up = GaugeMetricFamily(
            "bambid_tts_backend_up",
            "1 if the TTS backend could list its voices at its last health check, else 0.",
            labels=["backend"],
        )
        if self.voice_status is not None:
            voice = self.voice_status()
            checks = [voice]
            if voice.get("fallback"):
                checks.append(voice["fallback"])
            for check in checks:
                if check.get("reachable") is not None:
                    tts_up.add_metric([check["backend"]], 1.0 if check["reachable"] else 0.0)
        yield tts_up


# -- storage timing ------------------------------------------------------------------------

#: ``observer(operation, seconds, error)``: ``error`` is what the call raised, or None.
StorageObserver = Callable[[str, float, BaseException | None], object]


class TimedStorage(Storage):
    """A ``Storage`` (``isinstance`` holds) that forwards every call to
    ``inner`` and tells each of ``observers`` how long every coroutine method
    of the interface took, failures and cancellations included. Anything else
    (a backend's own attributes) is read from ``inner``. Make one with
    ``TimedStorage.around(inner, clock)``. An observer that raises is logged;
    the call's own result or error is unchanged."""

    _log = Logger()

    def __init__(self, inner: Storage, clock: IReactorTime) -> None:
        self.inner = inner
        self.clock = clock
        self.backend = inner.backend
        self.observers: list[StorageObserver] = []

    @classmethod
    def around(cls, inner: Storage, clock: IReactorTime) -> TimedStorage:
        # The interface's methods are filled in below the class, out of mypy's sight.
        make = cast("Callable[[Storage, IReactorTime], TimedStorage]", cls)
        return make(inner, clock)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (while unpickling or copying)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _observe(self, operation: str, seconds: float, error: BaseException | None) -> None:
        for observer in self.observers:
            try:
                observer(operation, seconds, error)
            except Exception:  # timing must never break storage
                self._log.failure("storage observer failed after {operation}", operation=operation)


def _timed(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: TimedStorage, *args: Any, **kwargs: Any) -> Any:
        started = self.clock.seconds()
        error: BaseException | None = None
        try:
            return await getattr(self.inner, name)(*args, **kwargs)
        except BaseException as e:
            error = e
            raise
        finally:
            self._observe(name, self.clock.seconds() - started, error)

    method.__name__ = name
    method.__qualname__ = f"TimedStorage.{name}"
    method.__doc__ = getattr(Storage, name).__doc__
    return method


for _name, _ in inspect.getmembers(Storage, inspect.iscoroutinefunction):
    setattr(TimedStorage, _name, _timed(_name))
abc.update_abstractmethods(cast("type[Any]", TimedStorage))
