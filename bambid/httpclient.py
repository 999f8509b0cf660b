"""One outbound HTTP exchange under deadlines and a byte cap, shared by the LLM
client (``bambid.ai.llm``) and the Kokoro TTS client (``bambid.voice.kokoro``).

Every request gets a connection of its own (no keep-alive pool) guarded by four
deadlines and a byte cap, because ``Agent``'s own timeout only covers the TCP
connect and nothing covers a body that stalls or never ends:

- ``connect``: the TCP (and TLS) connection;
- ``first_byte``: from the request to the first body byte (prompt processing,
  model loading, synthesis);
- ``idle``: the longest silence between two body chunks once it has started;
- ``total``: the whole exchange.

Cancelling the Deferred of :meth:`Exchange.run` aborts the TCP connection at
once, which is how the servers learn to stop working on the request.

Every failure is a :class:`BackendError`. Its ``message`` is one line for a
person naming the service (``"the AI backend at http://…"``, ``"the TTS server
at http://…"``), never containing the API key; ``status`` is the HTTP status
when the server answered non-2xx (0 otherwise), so a caller can tell a refused
request (400, 422) from a broken server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, succeed
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
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from bambid import __version__
from bambid.config import AIConfig, VoiceConfig

__all__ = [
    "ERROR_BODY_CAP",
    "USER_AGENT",
    "BackendError",
    "BytesExchange",
    "Exchange",
    "HTTPBody",
    "JSONExchange",
    "Timeouts",
    "base_url",
    "describe_error",
    "error_detail",
    "one_line",
    "request_headers",
]

_log = Logger()

ERROR_BODY_CAP = 65536
"""How much of a non-2xx body is read for its error message."""

USER_AGENT = f"bambid/{__version__}"

_MESSAGE_CAP = 300


@attrs.frozen
class Timeouts:
    """The deadlines (seconds) and the body cap (bytes) of every request."""

    connect: float = 5.0
    first_byte: float = 120.0
    idle: float = 60.0
    total: float = 600.0
    max_bytes: int = 4194304

    @classmethod
    def from_config(cls, section: AIConfig | VoiceConfig) -> Timeouts:
        """The ``[ai]`` deadlines with ``max_reply_bytes``, or the ``[voice]``
        ones with ``max_audio_bytes``."""
        if isinstance(section, VoiceConfig):
            max_bytes = section.max_audio_bytes
        else:
            max_bytes = section.max_reply_bytes
        return cls(
            connect=section.connect_timeout,
            first_byte=section.first_byte_timeout,
            idle=section.idle_timeout,
            total=section.total_timeout,
            max_bytes=max_bytes,
        )


class BackendError(Exception):
    """An exchange failed. ``code``: ``unavailable`` (unreachable, refused,
    non-2xx, dropped), ``interrupted`` (a stream broke after delivering
    something; LLM only), ``timeout``, ``too_long`` (past ``max_bytes``),
    ``bad_response`` (2xx with something unexpected).

    ``started`` and ``partial_text`` describe what a streaming caller had
    received before the failure; ``status`` is the HTTP status of a non-2xx
    answer, else 0.
    """

    CODES = frozenset({"unavailable", "interrupted", "timeout", "too_long", "bad_response"})

    def __init__(
        self,
        code: str,
        message: str,
        *,
        started: bool = False,
        partial_text: str = "",
        status: int = 0,
    ) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown BackendError code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.started = started
        self.partial_text = partial_text
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def base_url(url: str) -> str:
    """``url`` without a trailing slash or credentials (it is shown to people,
    and Agent would not send them anyway)."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def request_headers(
    api_key: str, accept: str = "application/json", *, json_body: bool = False
) -> Headers:
    """``Accept``, ``User-Agent``, and ``Content-Type`` / ``Authorization:
    Bearer`` when there is a JSON body / a key."""
    headers = Headers({"Accept": [accept], "User-Agent": [USER_AGENT]})
    if json_body:
        headers.setRawHeaders("Content-Type", ["application/json"])
    if api_key:
        headers.setRawHeaders("Authorization", [f"Bearer {api_key}"])
    return headers


# --- the plumbing ----------------------------------------------------------------


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
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def dataReceived(self, data: bytes) -> None:
        self._exchange.body_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._exchange.body_ended(reason)


# --- one exchange ----------------------------------------------------------------


class _QuietFactory(_HTTP11ClientFactory):
    """Twisted's client factory without its "Starting factory" / "Stopping
    factory" log lines, which would otherwise come with every request (each
    exchange has a connection of its own)."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class Exchange:
    """One request on a connection of its own, under the deadlines and the cap.

    ``run()`` returns a Deferred that fires with whatever the subclass passes
    to ``_succeed``, or fails with a BackendError; cancelling it aborts the
    connection. Subclasses may inspect a 2xx response's headers in
    ``_on_headers``, read its body through ``_on_data`` / ``_on_end``, and
    raise BackendError from any of them; a non-2xx body is read here for its
    error message. ``service`` names the server in every message ("AI
    backend", "TTS server"); ``subject`` names what the body is ("reply").
    """

    subject = "reply"

    def __init__(
        self,
        reactor: Any,
        timeouts: Timeouts,
        url: str,
        secret: str,
        *,
        service: str = "AI backend",
    ) -> None:
        self._reactor = reactor
        self._timeouts = timeouts
        self._url = url
        self._secret = secret
        self._service = service
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

    def _on_headers(self, response: IResponse) -> None:
        """A 2xx response's status line and headers, before any body."""

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
        pool = _QuietPool(self._reactor, persistent=False)
        agent = Agent.usingEndpointFactory(self._reactor, self._connections, pool=pool)
        t = self._timeouts
        self._timer("total", t.total, f"the {self._service} did not finish within {t.total:g} s")
        self._timer(
            "first_byte",
            t.first_byte,
            f"the {self._service} did not answer within {t.first_byte:g} s",
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
        else:
            self._guarded(self._on_headers, response)
            if self._finished:
                return
        response.deliverBody(_BodyReader(self))

    def _request_failed(self, failure: Failure) -> None:
        if self._finished:
            return
        _log.debug(
            "{service} {url} request failed: {reason}",
            service=self._service,
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
            self._fail(self._error("bad_response", f"{self._where} is not HTTP"))
            return
        elif failure.check(RequestTransmissionFailed, ResponseFailed):
            what = "dropped the connection"
        else:
            what = "could not be reached"
        self._fail(self._error("unavailable", f"{self._where} {what}"))

    @property
    def _where(self) -> str:
        return f"the {self._service} at {self._url}"

    def body_data(self, data: bytes) -> None:
        if self._finished:
            return
        first = self._received == 0
        self._received += len(data)
        if first:
            self._cancel_timer("first_byte")
        idle = self._timeouts.idle
        self._timer("idle", idle, f"the {self._service} went silent for {idle:g} s")
        if self._received > self._timeouts.max_bytes:
            limit = self._timeouts.max_bytes
            self._fail(
                self._error("too_long", f"the {self.subject} passed the limit of {limit} bytes")
            )
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
        except Exception:
            self._fail(Failure())  # a bug, or a callback raised: the caller sees it as is

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
        _log.info(
            "{service} request to {url} cancelled; connection closed",
            service=self._service,
            url=self._url,
        )

    def _abort(self) -> None:
        if self._request is not None and not self._request.called:
            self._request.cancel()
        self._connections.abort()

    def _error(self, code: str, message: str) -> BackendError:
        return BackendError(
            code,
            message,
            started=self._started(),
            partial_text=self._partial(),
            status=self._status if self._error_body is not None else 0,
        )

    def _http_error(self) -> BackendError:
        detail = error_detail(bytes(self._error_body or b""), self._secret)
        status = f"HTTP {self._status} {self._phrase}".rstrip()
        message = f"{self._where} answered {status}"
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
        _log.debug(
            "{service} {url}: {message}", service=self._service, url=self._url, message=message
        )
        self._fail(self._error("timeout", message))


def _lost_connection(failure: Failure) -> bool:
    reasons = getattr(failure.value, "reasons", None) or []
    return any(
        isinstance(r, Failure)
        and r.check(net_error.ConnectionDone, net_error.ConnectionLost) is not None
        for r in reasons
    )


class JSONExchange(Exchange):
    """A JSON document (``GET /models``, ``GET /audio/voices``)."""

    def __init__(
        self,
        reactor: Any,
        timeouts: Timeouts,
        url: str,
        secret: str,
        *,
        service: str = "AI backend",
    ) -> None:
        super().__init__(reactor, timeouts, url, secret, service=service)
        self._buffer = bytearray()

    def _on_data(self, data: bytes) -> None:
        self._buffer += data

    def _on_end(self, clean: bool) -> None:
        if not clean:
            raise self._error("unavailable", f"{self._where} dropped the connection")
        try:
            document = json.loads(self._buffer)
        except ValueError:
            raise self._error("bad_response", f"{self._where} did not answer with JSON") from None
        self._succeed(document)


@attrs.frozen
class HTTPBody:
    """A whole 2xx body and its ``Content-Type`` (as sent, or "")."""

    data: bytes
    content_type: str

    @property
    def media_type(self) -> str:
        """The content type without parameters, lower-cased (``audio/mpeg``)."""
        return self.content_type.split(";", 1)[0].strip().lower()


class BytesExchange(Exchange):
    """A whole binary body (an audio clip), returned as an :class:`HTTPBody`.

    ``accept`` (media-type predicate) is checked against the response's
    ``Content-Type`` before any body is read: a 2xx of another type is a
    ``bad_response`` at once, without reading up to ``max_bytes`` of it.
    """

    def __init__(
        self,
        reactor: Any,
        timeouts: Timeouts,
        url: str,
        secret: str,
        *,
        service: str,
        subject: str = "response",
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(reactor, timeouts, url, secret, service=service)
        self.subject = subject
        self._accept = accept
        self._content_type = ""
        self._chunks: list[bytes] = []

    def _on_headers(self, response: IResponse) -> None:
        values = response.headers.getRawHeaders(b"content-type") or [b""]
        self._content_type = values[-1].decode("latin-1", "replace").strip()
        media = self._content_type.split(";", 1)[0].strip().lower()
        if self._accept is not None and not self._accept(media):
            shown = one_line(media, self._secret) or "no content type"
            raise self._error("bad_response", f"{self._where} answered {shown}, not {self.subject}")
        limit = self._timeouts.max_bytes
        if isinstance(response.length, int) and response.length > limit:
            raise self._error("too_long", f"the {self.subject} passed the limit of {limit} bytes")

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)

    def _on_end(self, clean: bool) -> None:
        if not clean:
            raise self._error("unavailable", f"{self._where} dropped the connection")
        self._succeed(HTTPBody(b"".join(self._chunks), self._content_type))


# --- reading error bodies -------------------------------------------------------------


def error_detail(body: bytes, secret: str) -> str:
    """The message of a JSON error body (OpenAI, Ollama, llama.cpp, vLLM and
    FastAPI shapes), or "" when there is none to trust."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    return describe_error(document, secret)


def describe_error(value: Any, secret: str) -> str:
    """One safe line from an error value: a string, an object holding
    ``message`` / ``error`` / ``detail`` / ``msg`` (possibly nested), or a
    list of those (FastAPI's validation errors: ``[{"loc": [...], "msg": …}]``,
    the first one given, with where it applies)."""
    if isinstance(value, str):
        return one_line(value, secret)
    if isinstance(value, dict):
        for key in ("message", "error", "detail", "msg"):
            found = describe_error(value.get(key), secret)
            if found:
                if key == "msg" and isinstance(value.get("loc"), list):
                    where = ".".join(str(part) for part in value["loc"] if part != "body")
                    if where:
                        return one_line(f"{where}: {found}", secret)
                return found
    if isinstance(value, list):
        for item in value:
            found = describe_error(item, secret)
            if found:
                return found
    return ""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text: str, secret: str) -> str:
    """The first line of ``text``, the secret masked, control characters
    removed, at most 300 characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if secret:
        line = line.replace(secret, "***")
    line = _CONTROL.sub(" ", line).strip()
    if len(line) > _MESSAGE_CAP:
        line = line[: _MESSAGE_CAP - 1] + "…"
    return line
