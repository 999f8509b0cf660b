"""The one place that wires bambid together, and its start/stop order.

Start: open storage (migrations, indexes), open the audio cache and start the
AI and TTS health checks, read the maintenance switch and install its HTTP
gate, then listen; then start the usage stats, the maintenance poll and the
manhole, and tell systemd ``READY=1`` (with the watchdog). Stop (SIGTERM,
SIGINT): tell systemd ``STOPPING=1``, write the time online of the people
still connected, stop the manhole and the maintenance poll, stop listening,
close every WebSocket with 1001 and wait for them (at most
``server.shutdown_timeout``), stop the AI health checks and every AI reply
(each stored, marked stopped; its speech cancelled), wait for the trigger
actions still running, then stop voice (health checks, synthesis records,
espeak-ng processes), then let storage finish its queued writes and close. A
failure to start is logged as one critical line and the process exits with
status 1.
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
from bambid.analytics import Analytics
from bambid.auth.accounts import AccountService
from bambid.auth.passwords import PasswordHashing
from bambid.chat.handlers import ChatServices
from bambid.config import Config, ConfigError
from bambid.features.handlers import FeatureServices, build_collar
from bambid.maintenance import Maintenance, MaintenanceGate, error_page
from bambid.manhole import Manhole, Toolbox
from bambid.metrics import Metrics, TimedStorage
from bambid.profiles.bio import BioRenderer
from bambid.profiles.gates import Gates, level_table
from bambid.profiles.interactions import InteractionRecorder
from bambid.profiles.preferences import Preferences
from bambid.profiles.service import ProfileService
from bambid.profiles.usage import UsageTracker
from bambid.profiles.watchers import ProfileWatchers
from bambid.reload import Reloader
from bambid.sdnotify import SystemdNotifier, describe
from bambid.storage import Storage
from bambid.storage.factory import make_storage
from bambid.triggers.handlers import TriggerServices
from bambid.voice.handlers import VoiceServices
from bambid.web.admin_routes import install_admin_routes
from bambid.web.analytics_routes import install_analytics_routes
from bambid.web.app import WebApp
from bambid.web.assets import template_environment
from bambid.web.auth_routes import install_auth_routes
from bambid.web.compression import compressed
from bambid.web.health import HealthReporter
from bambid.web.help_routes import install_help_routes
from bambid.web.helpcenter import HelpCenter
from bambid.web.links_routes import install_link_routes
from bambid.web.me_routes import MeRoutes, install_me_routes
from bambid.web.metrics_routes import counted, install_metrics_routes
from bambid.web.profile_routes import install_profile_routes
from bambid.web.proxies import TrustedProxies
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
        self.storage: Storage = TimedStorage.around(
            make_storage(config.storage, reactor, base_dir), reactor
        )
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
        self._wire_profiles(config, reactor)
        self._wire_operations(config, reactor, base_dir)
        self.site = BambidSite(
            compressed(counted(self.web.resource(), self.metrics.http_response)),
            max_body_size=config.server.max_body_size,
            public_https=config.server.public_url.startswith("https:"),
            proxies=TrustedProxies(config.server.trusted_proxies),
            reactor=reactor,
        )
        self.port: IListeningPort | None = None
        self.started: Deferred[None] = Deferred()

    def _wire_profiles(self, config: Config, reactor: Any) -> None:
        """Profiles, likes and loves, usage stats, preferences, your data, levels."""
        # Analytics are kept only for people who consented (one recorder for all).
        self.interactions = InteractionRecorder(self.storage, reactor)
        self.profiles = ProfileService(
            self.storage,
            reactor,
            self.chat.xp.table,
            config.profiles,
            self.interactions,
            BioRenderer(self.chat.hub.links),
            self.chat.hub.links,
        )
        self.profile_watchers = ProfileWatchers(self.profiles, self.ws_factory.prepare)
        self.profile_watchers.register(self.dispatcher)
        self.profiles.reaction_listeners.append(self.profile_watchers.publish)
        self.ws_factory.close_listeners.append(self.profile_watchers.connection_closed)
        install_profile_routes(self.web, self.auth_routes, self.profiles)
        # Usage stats from what the server sees; preferences on every device;
        # the export and account deletion; /settings.
        self.usage = UsageTracker(
            self.storage, reactor, config.profiles, replies=self.companion.companion
        )
        self.chat.hub.after_register.append(self.usage.greeted)
        self.chat.hub.after_forget.append(self.usage.forgotten)
        self.chat.hub.after_publish.append(self.usage.published)
        self.triggers.engine.after_fire.append(self.usage.fired)
        self.companion.companion.observers.append(self.usage)
        self.preferences = Preferences(
            self.storage,
            reactor,
            self.features.settings.preferences,
            self.voice,
            self.gates,
            self.chat.hub,
            self.interactions,
        )
        self.preferences.register(self.dispatcher)
        install_me_routes(
            MeRoutes(
                self.web,
                self.auth_routes,
                self.preferences,
                self.storage,
                reactor,
                self.chat.hub,
                self.companion.companion,
                self.usage,
                self.profiles,
            )
        )
        self.web.levels = level_table(self.chat.xp.table)

    def _wire_operations(self, config: Config, reactor: Any, base_dir: Path) -> None:
        """Maintenance mode, the manhole, metrics, analytics, help, SIGHUP, systemd."""
        # Maintenance mode (one switch shared through storage: admin page,
        # manhole, bambidctl, other instances) and the manhole.
        self.maintenance = Maintenance(
            config.maintenance,
            self.storage,
            reactor,
            self.ws_factory.open_connections,
            self.ws_factory.prepare,
        )
        self.chat.hello.admission.append(self.maintenance.admit)
        self.maintenance_gate = MaintenanceGate(
            self.maintenance, self.accounts.identify, error_page(self.web)
        )
        self.admin_routes.maintenance = self.maintenance
        self.manhole = Manhole(config.manhole, reactor, base_dir, Toolbox(self).namespace())
        # Prometheus /metrics: one registry per service, fed by the hook lists.
        self.metrics = Metrics(reactor)
        self.metrics.watch(
            connections=lambda: len(self.ws_factory.connections),
            ai_status=self.companion.health_report,
            voice_status=self.voice.health_report,
            known_type=lambda type: self.dispatcher.handler(type) is not None,
        )
        self.metrics.time_storage(self.storage)
        self.ws_factory.frame_listeners.append(self.metrics.frame)
        self.ws_factory.error_listeners.append(self.metrics.ws_error)
        self.chat.hub.after_publish.append(self.metrics.chat_message)
        self.companion.companion.observers.append(self.metrics)
        self.companion.companion.outcome_listeners.append(self.metrics.reply_ended)
        self.voice.speech.spoken_listeners.append(self.metrics.spoken)
        self.triggers.engine.after_fire.append(self.metrics.trigger_fired)
        install_metrics_routes(self.web, self.metrics, config.metrics)
        # /admin/analytics and its JSON: counted by storage, plus who is
        # connected now. (bambidctl is a program of its own on the same storage.)
        self.analytics = Analytics(
            self.storage,
            reactor,
            self.chat.xp.table,
            live=lambda: [c.identity for c in self.ws_factory.open_connections() if c.greeted],
        )
        install_analytics_routes(self.web, self.auth_routes, self.analytics)
        # The user guide at /help, the footer links; what SIGHUP reloads besides
        # the trigger catalog (tap adds the --config file and registers it).
        self.help = HelpCenter.build(config.help, reactor, base_dir)
        install_help_routes(self.web, self.help, config.help)
        self.reloader = Reloader(
            reactor,
            config,
            companion=self.companion.companion,
            word_filter=self.chat.cleaner.word_filter,
            help_center=self.help,
            limited=[self.ws_factory, self.chat],
        )
        # Type=notify: READY/WATCHDOG/STOPPING to NOTIFY_SOCKET, if systemd set it.
        self.sdnotify = SystemdNotifier.from_environment(os.environ, reactor)

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
        # Maintenance mode: the stored switch is read and the HTTP gate
        # installed before listening, so that the very first request and
        # ``hello`` (one queued on a socket-activated port too) meet it.
        self.site.gate = self.maintenance_gate
        await self.maintenance.load()
        self.port = await self.endpoint.listen(self.site)
        self.usage.start()
        self.maintenance.start_polling()
        await self.manhole.start()
        self.sdnotify.ready(f"listening on {describe(self.port.getHost())}")
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
        self.sdnotify.stopping()
        await self.usage.stop()
        await self.manhole.stop()
        await self.maintenance.stop()
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
    except IndexError as e:  # systemd:...:index=N without that inherited socket
        raise ConfigError(
            "server.endpoint",
            f"no inherited socket (LISTEN_FDS) at that index: {description!r}; "
            "start bambid through bambid.socket",
        ) from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("server.endpoint", f"not a valid endpoint ({e}): {description!r}") from e
    return endpoint
