"""The bambid WebSocket protocol (transport side). The contract is docs/protocol.md.

Frames are JSON text objects ``{"type": str, "id": optional, ...}``. A frame is
parsed, checked, then handed to the ``Dispatcher``; handlers run one at a time
per connection, in arrival order. Every failure is answered with an error frame
and the connection stays open:

- not JSON, not an object, no string ``type``, binary frame, unknown type:
  ``{"type":"error","code":"bad_request","message":...}``
- a handler's ``ClientError``: ``{"type":"error","code":<its code>,...}``
- anything else: ``{"type":"error","code":"internal"}``, traceback logged here
  only.
The ``id`` of the request, when it had one, is echoed on its error.

Limits (from ``[server]`` and ``[limits]``): messages over
``max_message_size`` bytes close the connection with 1009; ``Origin`` must be
allowed (see ``OriginPolicy``) or the handshake is refused with 403; pings
every ``ping_interval`` seconds, closing a peer silent for ``ping_timeout``;
each connection has a token bucket (``connection_burst``,
``connection_per_second``): a request over it is answered
``{"code":"rate_limited","retry_after":s}`` and not run, and a connection that
keeps hammering (``abuse_strikes`` refusals in a row) is closed with 1008. A
client that does not read what we send is closed with 1008 once
``send_buffer_bytes`` have piled up beyond the kernel and Twisted buffers. On
shutdown every connection is closed with 1001.

The session cookie (``bambid_session``) is read at the handshake into
``session_token``; the ``hello`` handler turns it into ``identity``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from bambid.auth.sessions import SESSION_COOKIE
from bambid.config import LimitsConfig, ServerConfig
from bambid.identity import Identity
from bambid.jsonutil import dumps
from bambid.ratelimit import KeyedLimiter
from bambid.web.proxies import TrustedProxies
from bambid.ws.dispatch import ClientError, Dispatcher, PreparedFrame

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
MAX_PENDING_PER_CONNECTION = 64


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


@attrs.frozen
class _Prepared:
    """autobahn's PreparedMessage with its payload size (a ``PreparedFrame``)."""

    message: Any
    size: int
    type: str = ""


@implementer(IPushProducer)
class _SendBufferGuard:
    """Registered as the transport's producer: Twisted pauses it when its
    write buffer is full and resumes it once drained. While paused, the
    protocol counts what it still queues; past the cap the peer is too slow."""

    def __init__(self) -> None:
        self.paused = False
        self.queued_while_paused = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued_while_paused = 0

    def stopProducing(self) -> None:
        self.paused = False


@attrs.frozen
class OriginPolicy:
    """Which browser origins may open a WebSocket.

    With no configured origins, only the server's own origin is allowed: the
    ``public_url`` origin, or the origin the browser used to reach us (the
    ``Host`` header with http/https). A request without ``Origin`` comes from a
    non-browser client and is allowed: cross-site WebSocket hijacking needs a
    browser, and browsers always send ``Origin``.
    """

    allowed: frozenset[str]
    public_origin: str | None

    @classmethod
    def from_config(cls, server: ServerConfig) -> OriginPolicy:
        public = _origin_of(server.public_url) if server.public_url else None
        return cls(frozenset(o.rstrip("/").lower() for o in server.allowed_origins), public)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """``origin`` is the header value ("" or None when absent; "null" for
        opaque origins, which are refused unless listed)."""
        if not origin:
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed or origin in self.allowed:
            return True
        if self.allowed:
            return False
        if self.public_origin is not None:
            return origin == self.public_origin
        return host is not None and origin in (f"http://{host.lower()}", f"https://{host.lower()}")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class BambidServerProtocol(WebSocketServerProtocol):
    """One browser tab or client. Thin: parse, check, dispatch, send."""

    # autobahn owns ``self.log``; ours is ``_log``.
    _log = Logger()
    factory: BambidWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.connection_id = secrets.token_hex(8)
        self.session_token: str | None = None
        self.peer_address = ""
        self.identity: Identity | None = None
        self.greeted = False
        self._tail: Deferred[None] = succeed(None)
        self._pending = 0
        self._strikes = 0
        self._guard = _SendBufferGuard()

    # -- autobahn hooks -------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        # request.host has the port stripped; the origin check needs host:port.
        host = request.headers.get("host")
        if not self.factory.origin_policy.allows(request.origin, host):
            self._log.info(
                "refused WebSocket from origin {origin} (host {host})",
                origin=request.origin,
                host=host,
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        self.session_token = _cookie(request.headers.get("cookie"), SESSION_COOKIE)
        # request.peer is "tcp4:1.2.3.4:5678"; the address is what limits key on.
        _, _, address_port = request.peer.partition(":")
        peer = address_port.rpartition(":")[0].strip("[]")
        # Behind a trusted reverse proxy, the client it names (bambid.web.proxies).
        self.peer_address = self.factory.proxies.client(
            peer, request.headers.get("x-forwarded-for")
        )

    def onOpen(self) -> None:
        self.factory.connections.add(self)
        transport: Any = self.transport
        # twisted.web's HTTPChannel was the transport's producer; the WebSocket
        # has taken the transport over, so the flow-control guard replaces it.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self._guard, True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connections.discard(self)
        for listener in self.factory.close_listeners:
            try:
                listener(self)
            except Exception:
                self._log.failure("close listener failed")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            message = self._parse(payload, isBinary)
        except ClientError as e:
            self._send_error(e.code, e.message, None)
            return
        for listener in self.factory.frame_listeners:
            listener("in", message["type"])
        if self._pending >= MAX_PENDING_PER_CONNECTION:
            self._send_error("busy", "too many requests in flight", message.get("id"))
            return
        retry_after = self.factory.connection_limiter.take(self.connection_id)
        if retry_after:
            self._strikes += 1
            if self._strikes >= self.factory.limits.abuse_strikes:
                self.close(CLOSE_POLICY, "too many requests")
                return
            self._send_error(
                "rate_limited",
                "slow down",
                message.get("id"),
                retry_after=round(retry_after, 3),
            )
            return
        self._strikes = 0
        self._pending += 1
        self._tail.addCallback(lambda _: self._run(message))

    # -- the one way out --------------------------------------------------------

    def send(self, type: str, **fields: Any) -> None:
        """Send one frame ``{"type": type, **fields}``; a no-op once closed."""
        if self.state != self.STATE_OPEN:
            return
        payload = dumps({"type": type, **fields}).encode("utf-8")
        if self._may_queue(len(payload)):
            self.sendMessage(payload, isBinary=False)
            for listener in self.factory.frame_listeners:
                listener("out", type)

    def send_prepared(self, message: PreparedFrame) -> None:
        """Send a frame prepared once for many connections (broadcasts)."""
        if self.state != self.STATE_OPEN:
            return
        assert isinstance(message, _Prepared)
        if self._may_queue(message.size):
            self.sendPreparedMessage(message.message)
            for listener in self.factory.frame_listeners:
                listener("out", message.type)

    def _may_queue(self, size: int) -> bool:
        if not self._guard.paused:
            return True
        self._guard.queued_while_paused += size
        if self._guard.queued_while_paused <= self.factory.limits.send_buffer_bytes:
            return True
        self._log.info(
            "closing {connection}: peer does not read fast enough", connection=self.connection_id
        )
        self.close(CLOSE_POLICY, "too slow: messages piled up unread")
        return False

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any code, server codes (1001,
        1008, 1011) included, which autobahn's ``sendClose`` refuses."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    # -- internals --------------------------------------------------------------

    @staticmethod
    def _parse(payload: bytes, is_binary: bool) -> dict[str, Any]:
        if is_binary:
            raise ClientError("bad_request", "binary frames are not accepted; send JSON text")
        try:
            message = json.loads(payload)
        except ValueError:
            raise ClientError("bad_request", "frame is not valid JSON") from None
        if not isinstance(message, dict):
            raise ClientError("bad_request", "frame must be a JSON object")
        if not isinstance(message.get("type"), str) or not message["type"]:
            raise ClientError("bad_request", "frame needs a string 'type'")
        correlation = message.get("id")
        if correlation is not None and not isinstance(correlation, (str, int)):
            raise ClientError("bad_request", "'id' must be a string or an integer")
        return message

    def _run(self, message: dict[str, Any]) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.factory.dispatcher.dispatch(self, message))
        d.addErrback(self._report, message)
        d.addBoth(self._finished)
        return d

    def _finished(self, _: object) -> None:
        self._pending -= 1

    def _report(self, failure: Any, message: dict[str, Any]) -> None:
        error = failure.value
        if isinstance(error, ClientError):
            self._send_error(error.code, error.message, message.get("id"), **error.extra)
            return
        self._log.failure(
            "handler for {type!r} failed", failure, type=message.get("type"), id=message.get("id")
        )
        self._send_error("internal", "internal server error", message.get("id"))

    def _send_error(
        self, code: str, text: str, correlation: str | int | None, **extra: Any
    ) -> None:
        fields: dict[str, Any] = {"code": code, "message": text, **extra}
        if correlation is not None:
            fields["id"] = correlation
        for listener in self.factory.error_listeners:
            listener(code)
        self.send("error", **fields)


class BambidWebSocketFactory(WebSocketServerFactory):
    """Shared state for every connection: the dispatcher, limits, the registry."""

    protocol = BambidServerProtocol  # type: ignore[assignment]  # twisted types it as a generic factory callable

    def __init__(
        self, server: ServerConfig, limits: LimitsConfig, dispatcher: Dispatcher, reactor: Any
    ) -> None:
        super().__init__(reactor=reactor)
        self.dispatcher = dispatcher
        self.limits = limits
        self.origin_policy = OriginPolicy.from_config(server)
        self.proxies = TrustedProxies(server.trusted_proxies)
        self.connections: set[BambidServerProtocol] = set()
        #: Called with each connection as it closes (the hub forgets it).
        self.close_listeners: list[Callable[[BambidServerProtocol], None]] = []
        #: Told of each frame: ("in", type) once parsed, ("out", type) once sent (metrics).
        self.frame_listeners: list[Callable[[str, str], object]] = []
        #: Told the code of each error frame sent to a client (metrics).
        self.error_listeners: list[Callable[[str], object]] = []
        self.connection_limiter = KeyedLimiter(
            reactor, limits.connection_per_second, limits.connection_burst
        )
        self.setProtocolOptions(
            maxMessagePayloadSize=server.max_message_size,
            maxFramePayloadSize=server.max_message_size,
            autoPingInterval=server.ping_interval,
            autoPingTimeout=server.ping_timeout,
            openHandshakeTimeout=10,
            # Send a close frame (e.g. 1009) when failing a connection, not a bare TCP drop.
            failByDrop=False,
            closeHandshakeTimeout=5,
        )

    def apply_limits(self, limits: LimitsConfig) -> None:
        """Use new ``[limits]`` (SIGHUP) for every connection, open ones
        included: the connection buckets refill at the new rate from now on
        (``KeyedLimiter.configure``); strikes and the send buffer use the new
        values at their next check."""
        self.limits = limits
        self.connection_limiter.configure(limits.connection_per_second, limits.connection_burst)

    def prepare(self, type: str, **fields: Any) -> PreparedFrame:
        """Serialise and frame ``{"type": type, **fields}`` once, for
        ``send_prepared`` to many connections."""
        payload = dumps({"type": type, **fields}).encode("utf-8")
        return _Prepared(self.prepareMessage(payload, isBinary=False), len(payload), type)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for connection in list(self.connections):
            connection.close(code, reason)

    def open_connections(self) -> Iterable[BambidServerProtocol]:
        return iter(self.connections)
