"""The one place that wires bambid together, and its start/stop order.

Start: open storage (migrations, indexes), open the audio cache and start the
AI and TTS health checks, then listen. Stop (SIGTERM/SIGINT): stop listening,
close every WebSocket with 1001 and wait for them (at most
``server.shutdown_timeout``), stop the AI health checks and every AI reply
(each stored, marked stopped; its speech cancelled), wait for the trigger
actions still running, then stop voice (health checks, synthesis records,
espeak-ng processes), then let storage finish its
queued writes and close. A failure to start is logged as one
critical line and the process exits with status 1.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.ai.handlers import CompanionServices
from bambid.auth.accounts import AccountService
from bambid.auth.passwords import PasswordHashing
from bambid.chat.handlers import ChatServices
from bambid.config import Config, ConfigError
from bambid.features.handlers import FeatureServices, build_collar
from bambid.profiles.gates import Gates
from bambid.storage import Storage
from bambid.storage.factory import make_storage
from bambid.triggers.handlers import TriggerServices
from bambid.voice.handlers import VoiceServices
from bambid.web.admin_routes import install_admin_routes
from bambid.web.app import WebApp
from bambid.web.assets import template_environment
from bambid.web.auth_routes import install_auth_routes
from bambid.web.health import HealthReporter
from bambid.web.links_routes import install_link_routes
from bambid.web.site import BambidSite
from bambid.web.trigger_routes import install_trigger_routes
from bambid.web.voice_routes import install_voice_routes
from bambid.ws.dispatch import Dispatcher
from bambid.ws.protocol import BambidWebSocketFactory

EXIT_START_FAILED = 1


class BambidService(MultiService):
    """The daemon. ``reactor`` provides time, threads and TCP; tests pass the
    global one and listen on ``tcp:0:interface=127.0.0.1``."""

    _log = Logger()

    def __init__(
        self, config: Config, reactor: Any, base_dir: Path, freeze_heap: bool = False
    ) -> None:
        """``freeze_heap`` (the daemon sets it; tests do not): once listening,
        move every object alive after start-up (modules, templates,
        configuration) out of the garbage collector's sight with
        ``gc.freeze()``. A full collection then walks only what requests
        created, a few milliseconds instead of ~50 ms that stalled every
        stream at once (docs/benchmarks.md, "AI streaming overhead")."""
        super().__init__()
        self.freeze_heap = freeze_heap
        self.config = config
        self.reactor = reactor
        self.endpoint = _parse_endpoint(reactor, config.server.endpoint)
        self.storage: Storage = make_storage(config.storage, reactor, base_dir)
        self.dispatcher = Dispatcher()
        self.ws_factory = BambidWebSocketFactory(
            config.server, config.limits, self.dispatcher, reactor
        )
        # Public chat: hello, rooms, messages, moderation, XP (bambid.chat).
        self.chat = ChatServices.build(config, self.storage, reactor, self.ws_factory.prepare)
        self.chat.register(self.dispatcher)
        self.ws_factory.close_listeners.append(self.chat.hub.forget)
        # Voice (bambid.voice): speaks the companion's replies to the hub's people.
        self.voice = VoiceServices.build(
            config.voice,
            self.storage,
            reactor,
            self.chat.hub,
            base_dir,
            read_max_bytes=config.triggers.read_max_bytes,
        )
        self.voice.register(self.dispatcher)
        # Triggers (bambid.triggers): the catalog, consent, detection in replies
        # and chat, the actions; reloaded by SIGHUP (tap) and /reload-triggers.
        self.triggers = TriggerServices.build(
            config,
            self.storage,
            reactor,
            self.chat.hub,
            self.chat.xp,
            self.ws_factory.open_connections,
            self.ws_factory.prepare,
            base_dir,
        )
        self.triggers.register(self.dispatcher)
        self.chat.hub.after_publish.append(self.triggers.engine.message_published)
        self.chat.moderation.reload_triggers = self.triggers.reload_command
        # Level gates and the collar (bambid.features), which the persona reads.
        self.gates = Gates(self.chat.xp)
        self.collar = build_collar(
            config,
            self.storage,
            reactor,
            self.chat.hub,
            self.chat.cleaner.word_filter,
            self.chat.xp,
            self.gates,
        )
        # The AI companion (bambid.ai): after the hub, whose forget must run
        # first when a connection closes.
        self.companion = CompanionServices.build(
            config.ai,
            self.storage,
            reactor,
            self.chat.hub,
            self.chat.cleaner.word_filter,
            self.chat.xp,
            observers=[self.voice.pipeline, self.triggers.engine],
            triggers_of=self.triggers.engine.persona_triggers,
            collar_of=self.collar.collar_of,
        )
        self.companion.register(self.dispatcher)
        # The other gated features (bambid.features): settings, session history;
        # after the companion's handlers, two of which they gate.
        self.features = FeatureServices.build(
            self.collar,
            self.storage,
            self.chat.hub,
            self.gates,
            self.companion.companion,
            self.voice.pipeline,
        )
        self.features.register(self.dispatcher)
        self.ws_factory.close_listeners.append(self.companion.connection_closed)
        self.ws_factory.close_listeners.append(self.voice.connection_closed)
        self.ws_factory.close_listeners.append(self.triggers.connection_closed)
        self.health = HealthReporter(
            storage=self.storage,
            clock=reactor,
            started_at=reactor.seconds(),
            connection_count=lambda: len(self.ws_factory.connections),
            ai_status=self.companion.health_report,
            voice_status=self.voice.health_report,
        )
        self.web = WebApp(template_environment(), self.health, self.ws_factory)
        self.accounts = AccountService(
            self.storage, reactor, PasswordHashing(reactor), config.auth, config.chat, config.xp
        )
        self.auth_routes = install_auth_routes(self.web, self.accounts, config.server.public_url)
        self.admin_routes = install_admin_routes(
            self.web, self.auth_routes, moderation=self.chat.moderation
        )
        install_link_routes(self.web, self.storage, reactor, self.chat.admins, self.chat.hub.links)
        install_voice_routes(self.web, self.voice, self.auth_routes.identify, reactor)
        install_trigger_routes(
            self.web, self.triggers.engine, self.voice.speech, config.triggers.read_max_bytes
        )
        self.site = BambidSite(
            self.web.resource(),
            max_body_size=config.server.max_body_size,
            public_https=config.server.public_url.startswith("https:"),
            reactor=reactor,
        )
        self.port: IListeningPort | None = None
        self.started: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.addCallbacks(self.started.callback, self._start_failed)

    async def _start(self) -> None:
        await self.storage.open()
        self.accounts.start()
        await self.chat.start()
        self.companion.start()
        await self.voice.start()
        self.port = await self.endpoint.listen(self.site)
        if self.freeze_heap:
            gc.collect()
            gc.freeze()
        self._log.info(
            "bambid listening on {address} (storage: {backend})",
            address=str(self.port.getHost()),
            backend=self.storage.backend,
        )

    def _start_failed(self, failure: Failure) -> None:
        self._log.failure("bambid could not start", failure)
        self._log.critical("bambid could not start: {error}", error=failure.getErrorMessage())
        self.started.errback(failure)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, EXIT_START_FAILED)
        self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
            self._log.info("stopped listening")
        await self._close_websockets()
        # Replies are stopped and stored while storage is still open.
        await self.companion.stop()
        await self.triggers.stop()
        await self.voice.stop()
        self.chat.stop()
        await self.accounts.stop()
        await self.storage.close()
        self._log.info("bambid stopped")

    async def _close_websockets(self) -> None:
        connections = list(self.ws_factory.connections)
        if not connections:
            return
        self._log.info("closing {count} WebSocket connections", count=len(connections))
        closed = [c.is_closed for c in connections]
        self.ws_factory.close_all()
        waiting: Deferred[Any] = defer.DeferredList(closed, consumeErrors=True)
        waiting.addTimeout(self.config.server.shutdown_timeout, self.reactor)
        try:
            await waiting
        except defer.TimeoutError:
            self._log.warn("WebSocket clients did not close in time; dropping them")
            for connection in list(self.ws_factory.connections):
                connection.dropConnection(abort=True)


def _parse_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("server.endpoint", f"not a valid endpoint ({e}): {description!r}") from e
    return endpoint
