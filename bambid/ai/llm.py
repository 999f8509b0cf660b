"""The OpenAI-compatible chat client: LM Studio, Ollama, llama.cpp server, vLLM.

One :class:`LLMBackend` talks to one base URL (``http://host:port/v1``). Its
:meth:`~LLMBackend.stream` POSTs ``/chat/completions`` with ``stream: true`` and
hands each piece of reply text to ``on_delta`` as it arrives; the returned
:class:`Completion` holds the whole reply. Every failure is a
:class:`BackendError` whose ``code`` tells the caller what happened:

``unavailable``
    nothing was delivered: the connection failed or was refused, the server
    answered non-2xx (its JSON error message is passed on), or it reported an
    error or hung up before the first piece of text. Safe to fail over.
``interrupted``
    the stream broke (error event, hang-up) after text was delivered.
``timeout``
    a deadline passed (first byte, idle gap, total); ``started`` says whether
    text had been delivered.
``too_long``
    the response body passed ``Timeouts.max_bytes``.
``bad_response``
    the server answered 2xx with something that is neither an event stream of
    OpenAI chunks nor an OpenAI JSON reply.

``message`` is one line meant for a person: no traceback, no key. ``started``
and ``partial_text`` describe what ``on_delta`` received before the failure.

Every request gets a connection of its own (no keep-alive pool) guarded by four
deadlines and a byte cap, because ``Agent``'s own timeout only covers the TCP
connect and nothing covers a body that stalls or never ends:

- ``connect``: the TCP (and TLS) connection;
- ``first_byte``: from the request to the first body byte (prompt processing,
  model loading);
- ``idle``: the longest silence between two body chunks once it has started;
- ``total``: the whole exchange.

Cancelling the Deferred of a call in progress (``Deferred.fromCoroutine(
backend.stream(...)).cancel()``) aborts its TCP connection at once, which is
how every one of these servers learns to stop generating.

Reasoning never reaches ``on_delta``: ``delta.reasoning_content`` (llama.cpp,
DeepSeek), ``delta.reasoning`` (Ollama, LM Studio) and ``<think>…</think>``
inside ``content`` (even with the tags split across chunks) are dropped, and
so is whitespace before the first visible character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    PotentialDataLoss,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from bambid import __version__
from bambid.ai.sse import DEFAULT_MAX_LINE, Event, SSEError, SSEParser
from bambid.config import AIConfig

__all__ = [
    "BackendError",
    "Completion",
    "GenerationParams",
    "LLMBackend",
    "Timeouts",
]

_log = Logger()

ERROR_BODY_CAP = 65536
"""How much of a non-2xx body is read for its error message."""

_MESSAGE_CAP = 300
_USER_AGENT = f"bambid/{__version__}"


# --- the public values ----------------------------------------------------------


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class GenerationParams:
    """Sampling parameters sent with every chat request."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0  # 0: not sent (not every server knows it)
    max_tokens: int = 512
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    @classmethod
    def from_config(cls, ai: AIConfig) -> GenerationParams:
        return cls(
            temperature=ai.temperature,
            top_p=ai.top_p,
            top_k=ai.top_k,
            max_tokens=ai.max_tokens,
            frequency_penalty=ai.frequency_penalty,
            presence_penalty=ai.presence_penalty,
            stop=tuple(ai.stop),
        )

    def payload(self) -> dict[str, Any]:
        """The request-body fields for these parameters."""
        body: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        if self.top_k > 0:
            body["top_k"] = self.top_k
        if self.stop:
            body["stop"] = list(self.stop)
        return body


@attrs.frozen
class Timeouts:
    """The deadlines (seconds) and the body cap (bytes) of every request."""

    connect: float = 5.0
    first_byte: float = 120.0
    idle: float = 60.0
    total: float = 600.0
    max_bytes: int = 4194304

    @classmethod
    def from_config(cls, ai: AIConfig) -> Timeouts:
        return cls(
            connect=ai.connect_timeout,
            first_byte=ai.first_byte_timeout,
            idle=ai.idle_timeout,
            total=ai.total_timeout,
            max_bytes=ai.max_reply_bytes,
        )


@attrs.frozen
class Completion:
    text: str  # the reply, reasoning removed: exactly what on_delta received
    finish_reason: str | None
    usage: dict[str, int] | None
    model: str


class BackendError(Exception):
    """A call to the backend failed; see the module docstring for the codes."""

    CODES = frozenset({"unavailable", "interrupted", "timeout", "too_long", "bad_response"})

    def __init__(
        self, code: str, message: str, *, started: bool = False, partial_text: str = ""
    ) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown BackendError code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.started = started
        self.partial_text = partial_text

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --- the backend ----------------------------------------------------------------


class LLMBackend:
    """One OpenAI-compatible server. Safe to share between concurrent callers."""

    def __init__(
        self,
        url: str,
        api_key: str,
        preferred_model: str,
        params: GenerationParams,
        timeouts: Timeouts,
        reactor: Any,
    ) -> None:
        self.url = _base_url(url)
        self.params = params
        self.timeouts = timeouts
        self._api_key = api_key
        self._preferred = preferred_model
        self._reactor = reactor
        self._model: str | None = None

    def __repr__(self) -> str:
        return f"<LLMBackend {self.url}>"

    async def models(self) -> list[str]:
        """The model ids of ``GET {url}/models``, in the server's order."""
        exchange = _JSONExchange(self._reactor, self.timeouts, self.url, self._api_key)
        try:
            document = await exchange.run(b"GET", f"{self.url}/models", self._headers(), None)
            return _model_ids(document, self.url)
        except BackendError:
            self._model = None
            raise

    async def resolve_model(self) -> str:
        """The model to ask for: the preferred id, else the first id containing
        it (case-insensitive), else the first listed. Cached until a failure."""
        if self._model is not None:
            return self._model
        ids = await self.models()
        model = _pick_model(ids, self._preferred)
        if model is None:
            raise BackendError("unavailable", f"the AI backend at {self.url} has no model loaded")
        if self._preferred and self._preferred.lower() not in model.lower():
            _log.warn(
                "AI backend {url} has no model like {preferred!r}; using {model!r}",
                url=self.url,
                preferred=self._preferred,
                model=model,
            )
        self._model = model
        return model

    async def health(self) -> dict[str, Any]:
        """Whether the model list can be fetched, and what it says. Never
        raises (except CancelledError when cancelled)."""
        began = self._reactor.seconds()
        report: dict[str, Any] = {
            "url": self.url,
            "reachable": False,
            "model": None,
            "models": 0,
            "latency_ms": 0.0,
            "error": None,
        }
        try:
            ids = await self.models()
        except CancelledError:
            raise
        except BackendError as e:
            report["error"] = e.message
        except Exception:
            _log.failure("health check of AI backend {url} failed", url=self.url)
            report["error"] = "the health check failed unexpectedly (see the server log)"
        else:
            model = _pick_model(ids, self._preferred)
            report.update(reachable=True, models=len(ids), model=model)
            if model is None:
                report["error"] = "no model loaded"
            else:
                self._model = model
        report["latency_ms"] = round((self._reactor.seconds() - began) * 1000.0, 1)
        return report

    async def stream(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> Completion:
        """Generate a reply to ``messages``, streaming its text to ``on_delta``."""
        try:
            model = await self.resolve_model()
        except BackendError as e:
            self._warn(e)
            raise
        body = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.params.payload(),
        }
        exchange = _ChatExchange(
            self._reactor, self.timeouts, self.url, self._api_key, model, on_delta
        )
        _log.debug("AI request to {url} with {model}", url=self.url, model=model)
        try:
            completion: Completion = await exchange.run(
                b"POST",
                f"{self.url}/chat/completions",
                self._headers("text/event-stream", json_body=True),
                json.dumps(body, ensure_ascii=False).encode("utf-8"),
            )
        except BackendError as e:
            self._model = None
            self._warn(e)
            raise
        return completion

    def _warn(self, error: BackendError) -> None:
        _log.warn(
            "AI backend {url} failed: {code}: {message}",
            url=self.url,
            code=error.code,
            message=error.message,
        )

    def _headers(self, accept: str = "application/json", *, json_body: bool = False) -> Headers:
        headers = Headers({"Accept": [accept], "User-Agent": [_USER_AGENT]})
        if json_body:
            headers.setRawHeaders("Content-Type", ["application/json"])
        if self._api_key:
            headers.setRawHeaders("Authorization", [f"Bearer {self._api_key}"])
        return headers


def _base_url(url: str) -> str:
    """``url`` without a trailing slash or credentials (it is shown to people,
    and Agent would not send them anyway)."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def _model_ids(document: Any, url: str) -> list[str]:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise BackendError(
            "bad_response", f"the AI backend at {url} answered /models in an unknown format"
        )
    return [
        entry["id"]
        for entry in data
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]
    ]


def _pick_model(ids: list[str], preferred: str) -> str | None:
    if not ids:
        return None
    if preferred:
        if preferred in ids:
            return preferred
        wanted = preferred.lower()
        for model in ids:
            if wanted in model.lower():
                return model
    return ids[0]


# --- one HTTP exchange ----------------------------------------------------------


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory (FileBodyProducer would need the
    global cooperator, hence the global reactor)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class _Remembering:
    """An endpoint that remembers the protocols it connects, so that their
    transports can be aborted (Agent exposes no way to reach them)."""

    def __init__(self, endpoint: Any, protocols: list[Any]) -> None:
        self._endpoint = endpoint
        self._protocols = protocols

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        def remember(protocol: Any) -> Any:
            self._protocols.append(protocol)
            return protocol

        d: Deferred[Any] = self._endpoint.connect(protocolFactory)
        return d.addCallback(remember)


@implementer(IAgentEndpointFactory)
class _Connections:
    """The endpoints of one exchange, with the connect timeout."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._protocols: list[Any] = []

    def endpointForURI(self, uri: Any) -> Any:
        endpoint: Any = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            creator = BrowserLikePolicyForHTTPS().creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return _Remembering(endpoint, self._protocols)

    def abort(self) -> None:
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()


class _BodyReader(Protocol):
    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def dataReceived(self, data: bytes) -> None:
        self._exchange.body_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._exchange.body_ended(reason)


class _Exchange:
    """One request on a connection of its own, under the deadlines and the cap.

    ``run()`` returns a Deferred that fires with whatever the subclass passes
    to ``_succeed``, or fails with a BackendError; cancelling it aborts the
    connection. Subclasses read a 2xx body through ``_on_data`` / ``_on_end``
    and may raise BackendError from them; a non-2xx body is read here for its
    error message.
    """

    def __init__(self, reactor: Any, timeouts: Timeouts, url: str, secret: str) -> None:
        self._reactor = reactor
        self._timeouts = timeouts
        self._url = url
        self._secret = secret
        self._connections = _Connections(reactor, timeouts.connect)
        self._result: Deferred[Any] = Deferred(canceller=self._cancelled)
        self._request: Deferred[Any] | None = None
        self._timers: dict[str, IDelayedCall] = {}
        self._finished = False
        self._body_over = False
        self._received = 0
        self._status = 0
        self._phrase = ""
        self._error_body: bytearray | None = None

    # hooks

    def _on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_end(self, clean: bool) -> None:
        raise NotImplementedError

    def _started(self) -> bool:
        return False

    def _partial(self) -> str:
        return ""

    # the exchange

    def run(self, method: bytes, url: str, headers: Headers, body: bytes | None) -> Deferred[Any]:
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        agent = Agent.usingEndpointFactory(self._reactor, self._connections, pool=pool)
        t = self._timeouts
        self._timer("total", t.total, f"the AI backend did not finish within {t.total:g} s")
        self._timer(
            "first_byte", t.first_byte, f"the AI backend did not answer within {t.first_byte:g} s"
        )
        producer = _Body(body) if body is not None else None
        self._request = agent.request(method, url.encode("utf-8"), headers, producer)
        self._request.addCallbacks(self._response, self._request_failed)
        return self._result

    def _response(self, response: IResponse) -> None:
        if self._finished:  # gave up while the headers were on their way
            self._connections.abort()
            return
        self._status = response.code
        self._phrase = response.phrase.decode("latin-1", "replace")
        if not 200 <= response.code < 300:
            self._error_body = bytearray()
        response.deliverBody(_BodyReader(self))

    def _request_failed(self, failure: Failure) -> None:
        if self._finished:
            return
        _log.debug(
            "AI backend {url} request failed: {reason}",
            url=self._url,
            reason=failure.getErrorMessage() or failure.type.__name__,
        )
        if failure.check(net_error.ConnectionRefusedError):
            what = "refused the connection"
        elif failure.check(net_error.TimeoutError):
            what = f"did not accept the connection within {self._timeouts.connect:g} s"
        elif failure.check(net_error.DNSLookupError):
            what = "has a host name that does not resolve"
        elif failure.check(ResponseNeverReceived):
            what = "closed the connection without answering"
        elif failure.check(ResponseFailed) and not _lost_connection(failure):
            self._fail(self._error("bad_response", f"the AI backend at {self._url} is not HTTP"))
            return
        elif failure.check(RequestTransmissionFailed, ResponseFailed):
            what = "dropped the connection"
        else:
            what = "could not be reached"
        self._fail(self._error("unavailable", f"the AI backend at {self._url} {what}"))

    def body_data(self, data: bytes) -> None:
        if self._finished:
            return
        first = self._received == 0
        self._received += len(data)
        if first:
            self._cancel_timer("first_byte")
        idle = self._timeouts.idle
        self._timer("idle", idle, f"the AI backend went silent for {idle:g} s")
        if self._received > self._timeouts.max_bytes:
            limit = self._timeouts.max_bytes
            self._fail(self._error("too_long", f"the reply passed the limit of {limit} bytes"))
            return
        if self._error_body is not None:
            self._error_body += data[: ERROR_BODY_CAP - len(self._error_body)]
            if len(self._error_body) >= ERROR_BODY_CAP:
                self._fail(self._http_error())
            return
        self._guarded(self._on_data, data)

    def body_ended(self, reason: Failure) -> None:
        self._body_over = True
        self._cancel_timer("linger")
        if self._finished:
            return
        if self._error_body is not None:
            self._fail(self._http_error())
            return
        self._guarded(self._on_end, reason.check(ResponseDone, PotentialDataLoss) is not None)

    def _guarded(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except BackendError as e:
            self._fail(e)
        except SSEError as e:
            self._fail(self._error("bad_response", f"the AI backend sent a broken stream: {e}"))
        except Exception:
            self._fail(Failure())  # a bug, or on_delta raised: the caller sees it as is

    def _succeed(self, value: Any) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_timers()
        if not self._body_over:
            # Finished before the body (e.g. at [DONE]): let the server end the
            # response, but do not keep a connection that never closes.
            linger = self._reactor.callLater(self._timeouts.idle, self._connections.abort)
            self._timers["linger"] = linger
        self._result.callback(value)

    def _fail(self, error: BackendError | Failure) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_timers()
        self._abort()
        self._result.errback(error)

    def _cancelled(self, result: Deferred[Any]) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_timers()
        self._abort()
        _log.info("AI request to {url} cancelled; connection closed", url=self._url)

    def _abort(self) -> None:
        if self._request is not None and not self._request.called:
            self._request.cancel()
        self._connections.abort()

    def _error(self, code: str, message: str) -> BackendError:
        return BackendError(code, message, started=self._started(), partial_text=self._partial())

    def _http_error(self) -> BackendError:
        detail = _error_detail(bytes(self._error_body or b""), self._secret)
        status = f"HTTP {self._status} {self._phrase}".rstrip()
        message = f"the AI backend at {self._url} answered {status}"
        return self._error("unavailable", f"{message}: {detail}" if detail else message)

    def _timer(self, name: str, seconds: float, message: str) -> None:
        timer = self._timers.get(name)
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            self._timers[name] = self._reactor.callLater(seconds, self._expired, name, message)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _stop_timers(self) -> None:
        for name in list(self._timers):
            self._cancel_timer(name)

    def _expired(self, name: str, message: str) -> None:
        self._timers.pop(name, None)
        _log.debug("AI backend {url}: {message}", url=self._url, message=message)
        self._fail(self._error("timeout", message))


def _lost_connection(failure: Failure) -> bool:
    reasons = getattr(failure.value, "reasons", None) or []
    return any(
        isinstance(r, Failure)
        and r.check(net_error.ConnectionDone, net_error.ConnectionLost) is not None
        for r in reasons
    )


class _JSONExchange(_Exchange):
    """A JSON document (``GET /models``)."""

    def __init__(self, reactor: Any, timeouts: Timeouts, url: str, secret: str) -> None:
        super().__init__(reactor, timeouts, url, secret)
        self._buffer = bytearray()

    def _on_data(self, data: bytes) -> None:
        self._buffer += data

    def _on_end(self, clean: bool) -> None:
        if not clean:
            raise self._error(
                "unavailable", f"the AI backend at {self._url} dropped the connection"
            )
        try:
            document = json.loads(self._buffer)
        except ValueError:
            raise self._error(
                "bad_response", f"the AI backend at {self._url} did not answer with JSON"
            ) from None
        self._succeed(document)


_SSE_STARTS = (b":", b"data", b"event", b"id", b"retry")


class _ChatExchange(_Exchange):
    """A streamed chat completion. The body is sniffed: an event stream (the
    normal case) or one JSON document (an error, or a server that ignored
    ``stream: true``); anything else is a bad response."""

    def __init__(
        self,
        reactor: Any,
        timeouts: Timeouts,
        url: str,
        secret: str,
        model: str,
        on_delta: Callable[[str], None],
    ) -> None:
        super().__init__(reactor, timeouts, url, secret)
        self._model = model
        self._on_delta = on_delta
        self._mode = "sniff"  # then "sse" or "json"
        self._head = bytearray()
        self._sse = SSEParser(max_line=min(timeouts.max_bytes, DEFAULT_MAX_LINE))
        self._think = _ThinkFilter()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: dict[str, int] | None = None
        self._saw_chunk = False

    def _started(self) -> bool:
        return bool(self._parts)

    def _partial(self) -> str:
        return "".join(self._parts)

    def _on_data(self, data: bytes) -> None:
        if self._mode == "sniff":
            self._head += data
            head = bytes(self._head).lstrip()
            if not head:
                return
            if head[:1] in (b"{", b"["):
                self._mode = "json"
                return
            if not any(head.startswith(s) for s in _SSE_STARTS):
                if any(s.startswith(head) for s in _SSE_STARTS):
                    return  # too short to tell yet
                raise self._bad("did not answer with an event stream")
            self._mode = "sse"
            data, self._head = bytes(self._head), bytearray()
        if self._mode == "json":
            self._head += data
            return
        for event in self._sse.feed(data):
            self._event(event)
            if self._finished:
                return

    def _on_end(self, clean: bool) -> None:
        if self._mode == "json":
            if not clean:
                raise self._error(
                    "unavailable", f"the AI backend at {self._url} dropped the connection"
                )
            self._json_reply(bytes(self._head))
            return
        if self._mode == "sse" and clean:
            for event in self._sse.close():
                self._event(event)
                if self._finished:
                    return
        if self._finish_reason is not None:
            self._finish()  # no [DONE] (or usage), but the reply itself had ended
        elif self._parts:
            raise self._error("interrupted", "the AI backend stopped in the middle of the reply")
        elif self._saw_chunk or not bytes(self._head).strip():
            what = "closed the connection before replying"
            raise self._error("unavailable", f"the AI backend at {self._url} {what}")
        else:
            raise self._bad("did not answer with an event stream")

    def _event(self, event: Event) -> None:
        if event.event == "error":
            try:
                detail = _describe(json.loads(event.data), self._secret)
            except ValueError:
                detail = _one_line(event.data, self._secret)
            raise self._stream_error(detail)
        data = event.data.strip()
        if not data:
            return
        if data.startswith("[DONE]"):
            self._finish()
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise self._bad("sent an event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise self._bad("sent an event that is not a JSON object")
        self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("error") is not None:
            raise self._stream_error(_describe(chunk["error"], self._secret))
        self._saw_chunk = True
        self._note(chunk)
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self._deliver(self._think.feed(content))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason

    def _note(self, document: dict[str, Any]) -> None:
        model = document.get("model")
        if isinstance(model, str) and model:
            self._model = model
        usage = _usage(document.get("usage"))
        if usage is not None:
            self._usage = usage

    def _json_reply(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            raise self._bad("did not answer with an event stream") from None
        if isinstance(document, dict) and document.get("error") is not None:
            detail = _describe(document["error"], self._secret)
            raise self._error("unavailable", f"the AI backend at {self._url} failed: {detail}")
        choices = document.get("choices") if isinstance(document, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(document, dict) or not isinstance(content, str):
            raise self._bad("answered with JSON that is not a chat completion")
        self._note(document)
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        self._finish_reason = reason if isinstance(reason, str) else None
        self._deliver(self._think.feed(content))
        self._finish()

    def _deliver(self, text: str) -> None:
        if not self._parts:
            text = text.lstrip()
        if text:
            self._parts.append(text)
            self._on_delta(text)

    def _finish(self) -> None:
        self._deliver(self._think.flush())
        self._succeed(
            Completion("".join(self._parts), self._finish_reason, self._usage, self._model)
        )

    def _stream_error(self, detail: str) -> BackendError:
        code = "interrupted" if self._parts else "unavailable"
        message = f"the AI backend at {self._url} reported an error"
        return self._error(code, f"{message}: {detail}" if detail else message)

    def _bad(self, what: str) -> BackendError:
        return self._error("bad_response", f"the AI backend at {self._url} {what}")


# --- reading what the servers send ----------------------------------------------


class _ThinkFilter:
    """Removes ``<think>…</think>`` from streamed text, even with a tag split
    across pieces: a piece ending in what may be the start of a tag is held
    back until the next piece tells."""

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._inside = False
        self._held = ""

    def feed(self, text: str) -> str:
        text, self._held = self._held + text, ""
        visible: list[str] = []
        while text:
            tag = self.CLOSE if self._inside else self.OPEN
            at = text.find(tag)
            if at >= 0:
                if not self._inside:
                    visible.append(text[:at])
                text = text[at + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _tag_prefix_at_end(text, tag)
            if not self._inside:
                visible.append(text[: len(text) - keep])
            self._held = text[len(text) - keep :] if keep else ""
            break
        return "".join(visible)

    def flush(self) -> str:
        """At the end: text held back was not a tag after all (unless inside
        an unclosed think block, which is all reasoning)."""
        held, self._held = self._held, ""
        return "" if self._inside else held


def _tag_prefix_at_end(text: str, tag: str) -> int:
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    usage = {k: v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
    return usage or None


def _error_detail(body: bytes, secret: str) -> str:
    """The message of a JSON error body (OpenAI, Ollama, llama.cpp and vLLM
    shapes), or "" when there is none to trust."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    return _describe(document, secret)


def _describe(value: Any, secret: str) -> str:
    """One safe line from an error value: a string, or an object holding
    ``message`` / ``error`` / ``detail``, possibly nested."""
    if isinstance(value, str):
        return _one_line(value, secret)
    if isinstance(value, dict):
        for key in ("message", "error", "detail"):
            found = _describe(value.get(key), secret)
            if found:
                return found
    return ""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _one_line(text: str, secret: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    if secret:
        line = line.replace(secret, "***")
    line = _CONTROL.sub(" ", line).strip()
    if len(line) > _MESSAGE_CAP:
        line = line[: _MESSAGE_CAP - 1] + "…"
    return line
