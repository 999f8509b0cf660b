"""Maintenance mode: one switch, shared through storage by every instance.

The state ``{on, message, since, by}`` lives in the storage setting
``"maintenance"`` (``Storage.get_setting``), so the admin page, the manhole,
``bambidctl`` and every other instance on the same database switch it alike.
``Maintenance.set`` writes it and applies it here at once; every
``maintenance.poll_seconds`` each instance reads it again and follows (a read
that fails keeps the last state and is logged once, until reads work again).
A missing setting is "off".

While it is on (docs/operations.md, "Maintenance mode"):

- HTTP (``MaintenanceGate``, asked by ``bambid.web.site`` before any route):
  503 with ``Retry-After: maintenance.retry_after_seconds``; JSON
  ``{"error": "maintenance", "message", "retry_after"}`` under ``/api/``, the
  error page elsewhere. Always served: ``OPEN_PATHS`` and ``OPEN_PREFIXES``
  (health, metrics, static files, log in and out, ``/ws``) and every request
  of a signed-in admin (their session cookie, looked up at most every
  ``ADMIN_CACHE_SECONDS``; a failed lookup counts as "not an admin").
- WebSocket: when it switches on, every greeted connection gets
  ``system {message, level: "warning"}``; ``maintenance.close_grace_seconds``
  later every connection that is not an admin's is closed with 1013 ("try
  again later"). A ``hello`` from anyone but an admin is answered
  ``error {code: "maintenance", message, retry_after}`` and closed with 1013
  (``admit``, a ``HelloHandler`` admission check). When it switches off,
  everyone still connected gets ``system {level: "info"}``.

Every switch is logged; ``set`` also records it as a ``UserInteraction``
(``action`` ``moderation.maintenance``, ``username`` who switched it, details
``on``, ``message``, ``via``), like a moderation command (a record that
cannot be stored is logged; the switch stands). A switch seen by polling was
recorded by whoever made it.

Start-up (``bambid.service``): ``load()`` reads the switch and the HTTP gate
is installed before the daemon listens, so no request or ``hello`` gets in
before the stored state is known (a connection queued on a socket-activated
port included); ``start_polling()`` follows once it listens.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from bambid.auth.csrf import read_cookie
from bambid.auth.sessions import SESSION_COOKIE, hash_token
from bambid.config import MaintenanceConfig
from bambid.identity import Identity
from bambid.jsonutil import dumps
from bambid.models import UserInteraction
from bambid.storage import Storage
from bambid.web.app import WebApp
from bambid.web.auth_routes import Notice
from bambid.ws.dispatch import Connection, PreparedFrame

#: The storage setting that holds the state.
SETTING_KEY = "maintenance"
#: WebSocket close code "Try Again Later" (RFC 6455 registry).
CLOSE_TRY_AGAIN_LATER = 1013
#: The longest message people can be shown.
MAX_MESSAGE_LENGTH = 500
#: What a connection is told when maintenance mode ends.
OVER_MESSAGE = "Maintenance is over: everything is available again."
#: Served to everyone during maintenance (exact paths, and prefixes).
OPEN_PATHS = frozenset(
    {b"/health", b"/health/api", b"/metrics", b"/login", b"/logout", b"/ws", b"/ws/"}
)
OPEN_PREFIXES = (b"/static/", b"/vendor/")
#: How long "this session is (not) an admin's" is remembered, and for how many.
ADMIN_CACHE_SECONDS = 10.0
ADMIN_CACHE_SIZE = 1024

Prepare = Callable[..., PreparedFrame]
#: Who a session token belongs to (``AccountService.identify``); may raise.
Identify = Callable[[str | None], Awaitable[Identity | None]]
#: Renders the 503 page for a request: ``(request, message) -> body``.
RenderPage = Callable[[IRequest, str], bytes]


@attrs.frozen
class MaintenanceState:
    """What the ``maintenance`` setting holds: ``since`` is when it was last
    switched (on or off) and ``by`` by whom."""

    on: bool = False
    message: str = ""
    since: float | None = None
    by: str = ""

    def to_document(self) -> dict[str, Any]:
        return {"on": self.on, "message": self.message, "since": self.since, "by": self.by}

    @classmethod
    def from_document(cls, value: Any, default_message: str) -> MaintenanceState:
        """The state a setting holds (None: off); ``ValueError`` when it is not
        an object with a boolean ``on``. Other fields are optional: a missing
        or empty message is ``default_message``."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or not isinstance(value.get("on"), bool):
            raise ValueError(f"the maintenance setting needs a boolean 'on': {value!r:.200}")
        message = value.get("message")
        since = value.get("since")
        by = value.get("by")
        return cls(
            on=value["on"],
            message=message[:MAX_MESSAGE_LENGTH]
            if isinstance(message, str) and message.strip()
            else default_message,
            since=_seconds(since),
            by=by[:64] if isinstance(by, str) else "",
        )


class Maintenance:
    """The switch (see the module doc). ``connections`` lists the open
    WebSocket connections; ``prepare`` frames a broadcast once."""

    _log = Logger()

    def __init__(
        self,
        config: MaintenanceConfig,
        storage: Storage,
        clock: IReactorTime,
        connections: Callable[[], Iterable[Connection]],
        prepare: Prepare,
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.connections = connections
        self.prepare = prepare
        self._state = MaintenanceState()
        self._generation = 0
        self._read_failing = False
        self._bad_value: Any = None
        self._loop: task.LoopingCall | None = None
        self._polling: Deferred[None] | None = None
        self._closing: IDelayedCall | None = None

    @property
    def state(self) -> MaintenanceState:
        return self._state

    @property
    def on(self) -> bool:
        return self._state.on

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """``load()``, then ``start_polling()``."""
        await self.load()
        self.start_polling()

    async def load(self) -> None:
        """Read the switch once, so that a daemon started during maintenance
        starts in it: the service calls this before it listens, so the very
        first request and ``hello`` meet the stored state. A read that fails
        is logged and leaves it off (start-up goes on). Never raises."""
        await self.refresh()

    def start_polling(self) -> None:
        """Read the switch again every ``poll_seconds`` (the first read one
        period from now), until ``stop()``."""
        if self._loop is not None:
            return
        loop = self._loop = task.LoopingCall(self._poll)
        loop.clock = self.clock
        loop.start(self.config.poll_seconds, now=False)

    async def stop(self) -> None:
        """Stop polling (waiting for a read in progress) and the pending close."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._polling is not None:
            await self._polling
        self._cancel_closing()

    def _poll(self) -> Deferred[None]:
        polling = self._polling = Deferred.fromCoroutine(self.refresh())
        # A bug must not stop the LoopingCall (it stops on a failure).
        polling.addErrback(lambda f: self._log.failure("maintenance poll failed", f))

        def done(result: object) -> None:
            self._polling = None

        polling.addBoth(done)
        return polling

    async def refresh(self) -> None:
        """Read the shared switch and follow it. Never raises."""
        generation = self._generation
        try:
            value = await self.storage.get_setting(SETTING_KEY)
        except Exception as e:
            if not self._read_failing:
                self._read_failing = True
                self._log.warn(
                    "cannot read the maintenance switch, keeping it {state}: {error}",
                    state="on" if self.on else "off",
                    error=str(e),
                )
            return
        if self._read_failing:
            self._read_failing = False
            self._log.info("reading the maintenance switch works again")
        if generation != self._generation:
            return  # switched here meanwhile: that write is newer than this read
        try:
            state = MaintenanceState.from_document(value, self.config.message)
        except ValueError as e:
            if value != self._bad_value:
                self._bad_value = value
                self._log.warn("ignoring the maintenance setting: {error}", error=str(e))
            return
        self._bad_value = None
        self._apply(state, seen=True)

    # -- switching ---------------------------------------------------------------------

    async def set(
        self, on: bool, by: str, message: str | None = None, via: str = "manhole"
    ) -> MaintenanceState:
        """Switch maintenance mode on or off as ``by`` (a name, or "manhole")
        through ``via`` ("web", "manhole", ...): written to storage (every
        instance follows within ``poll_seconds``), applied here at once,
        logged and recorded. ``message`` (None or blank: ``maintenance.message``)
        is what people are shown. ``ValueError`` for a message over
        ``MAX_MESSAGE_LENGTH``; ``StorageError`` when the write fails (then
        nothing changed). Once the switch is stored and applied, a record
        that cannot be written is logged and the switch still succeeds."""
        text = message.strip() if isinstance(message, str) and message.strip() else ""
        if len(text) > MAX_MESSAGE_LENGTH:
            raise ValueError(f"the message must be at most {MAX_MESSAGE_LENGTH} characters")
        now = self.clock.seconds()
        state = MaintenanceState(on, text or self.config.message, now, by[:64])
        self._generation += 1
        await self.storage.set_setting(SETTING_KEY, state.to_document())
        self._generation += 1
        self._apply(state, seen=False)
        try:
            await self.storage.record(
                UserInteraction(
                    username=state.by,
                    action="moderation.maintenance",
                    timestamp=now,
                    details={"on": on, "message": state.message, "via": via},
                )
            )
        except Exception:
            # The switch itself is done: reporting a failure would be wrong.
            self._log.failure(
                "maintenance switched {state} by {by}, but its record was not stored",
                state="on" if on else "off",
                by=state.by,
            )
        return state

    def _apply(self, state: MaintenanceState, seen: bool) -> None:
        previous, self._state = self._state, state
        how = "seen in storage" if seen else "here"
        if state.on and not previous.on:
            self._log.warn(
                "maintenance mode ON (by {by}, {how}): {message}",
                by=state.by or "unknown",
                how=how,
                message=state.message,
            )
            self._broadcast(state.message, "warning")
            self._cancel_closing()
            self._closing = self.clock.callLater(
                self.config.close_grace_seconds, self._close_non_admins
            )
        elif previous.on and not state.on:
            self._log.warn(
                "maintenance mode OFF (by {by}, {how})", by=state.by or "unknown", how=how
            )
            self._cancel_closing()
            self._broadcast(OVER_MESSAGE, "info")
        elif state.on and state.message != previous.message:
            self._log.info("maintenance message changed: {message}", message=state.message)
            self._broadcast(state.message, "warning")

    def _broadcast(self, message: str, level: str) -> None:
        frame = self.prepare("system", message=message, level=level)
        for connection in list(self.connections()):
            if connection.greeted:
                connection.send_prepared(frame)

    def _close_non_admins(self) -> None:
        self._closing = None
        if not self.on:
            return
        closed = 0
        for connection in list(self.connections()):
            if connection.greeted and not _is_admin(connection.identity):
                connection.close(CLOSE_TRY_AGAIN_LATER, "maintenance")
                closed += 1
        self._log.info("maintenance: closed {count} WebSocket connections", count=closed)

    def _cancel_closing(self) -> None:
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None

    # -- WebSocket: the hello admission check ----------------------------------------

    def admit(
        self, connection: Connection, identity: Identity | None, message: Mapping[str, Any]
    ) -> bool:
        """For ``HelloHandler``: True to let the ``hello`` go on; False after
        answering ``error {code: "maintenance"}`` and closing with 1013."""
        if not self.on or _is_admin(identity):
            return True
        error: dict[str, Any] = {
            "code": "maintenance",
            "message": self._state.message,
            "retry_after": self.config.retry_after_seconds,
        }
        if "id" in message:
            error["id"] = message["id"]
        connection.send("error", **error)
        connection.close(CLOSE_TRY_AGAIN_LATER, "maintenance")
        return False


class MaintenanceGate:
    """The HTTP side (see the module doc): ``bambid.web.site`` calls it for
    every request before any route runs."""

    _log = Logger()

    def __init__(
        self, maintenance: Maintenance, identify: Identify, render_page: RenderPage
    ) -> None:
        self.maintenance = maintenance
        self.identify = identify
        self.render_page = render_page
        #: token hash -> (is an admin, remembered until)
        self._admins: dict[str, tuple[bool, float]] = {}

    def __call__(self, request: Request) -> Deferred[bool] | None:
        """None: serve ``request`` now. Otherwise a Deferred that fires True
        to serve it (an admin's) or False once the 503 has been sent; it
        never fails."""
        if not self.maintenance.on or is_open_path(request.path):
            return None
        gone: list[object] = []  # the client went away while we looked
        request.notifyFinish().addBoth(gone.append)
        checking = Deferred.fromCoroutine(self._admin_request(request))

        def decide(admin: bool) -> bool:
            if gone:
                return False
            if not admin:
                self._refuse(request)
            return admin

        return checking.addCallback(decide)

    async def _admin_request(self, request: Request) -> bool:
        token = read_cookie(request, SESSION_COOKIE)
        if not token:
            return False
        key = hash_token(token)
        now = self.maintenance.clock.seconds()
        remembered = self._admins.get(key)
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        try:
            admin = _is_admin(await self.identify(token))
        except Exception as e:  # banned, storage down: not let through
            self._log.info("maintenance: no admin session ({error})", error=str(e))
            admin = False
        if len(self._admins) >= ADMIN_CACHE_SIZE:
            self._admins.clear()
        self._admins[key] = (admin, now + ADMIN_CACHE_SECONDS)
        return admin

    def _refuse(self, request: Request) -> None:
        state = self.maintenance.state
        retry_after = self.maintenance.config.retry_after_seconds
        request.setResponseCode(503)
        request.setHeader(b"Retry-After", str(retry_after).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        if request.path.startswith(b"/api/"):
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            body = dumps(
                {"error": "maintenance", "message": state.message, "retry_after": retry_after}
            ).encode("utf-8")
        else:
            try:
                body = self.render_page(request, state.message)
            except Exception:
                self._log.failure("cannot render the maintenance page")
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                body = b"Down for maintenance.\n"
            request.setResponseCode(503)
        request.write(body)
        request.finish()


def _seconds(value: Any) -> float | None:
    """A POSIX time from JSON, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def is_open_path(path: bytes) -> bool:
    """Whether ``path`` is served to everyone during maintenance."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _is_admin(identity: Identity | None) -> bool:
    return identity is not None and identity.is_admin


def error_page(web: WebApp) -> RenderPage:
    """The 503 page: ``error.html`` titled "Down for maintenance" with the message."""

    def render(request: IRequest, message: str) -> bytes:
        return web.render(
            request, "error.html", status=503, title="Down for maintenance", error=Notice(message)
        )

    return render
