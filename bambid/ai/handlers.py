"""The WebSocket handlers of the AI companion, and the object that builds and
holds its parts (``CompanionServices``).

Registered types: ``ai.history``, ``ai.send``, ``ai.stop``, ``ai.regenerate``,
``ai.reset``, ``ai.conversations``, ``ai.load`` (docs/protocol.md, "The AI
companion"). Each needs a signed-in person (``unauthenticated``). Handlers are
thin: check the fields, call the ``Companion``, answer. ``ai.send`` and
``ai.regenerate`` return right after the ``ack``: the reply streams on in the
background, so the same connection can send ``ai.stop`` meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from bambid.ai.companion import (
    CollarOf,
    Companion,
    People,
    ReplyObserverFactory,
    TriggersOf,
)
from bambid.ai.llm import GenerationParams, LLMBackend, Timeouts
from bambid.ai.persona import Persona
from bambid.ai.queue import HealthMonitor, Router
from bambid.chat.text import TextCleaner, WordFilter
from bambid.config import AIConfig
from bambid.identity import Identity
from bambid.profiles.xp import XpService
from bambid.storage import Storage
from bambid.ws.dispatch import ClientError, Connection, Dispatcher


def _identity(connection: Connection) -> Identity:
    if connection.identity is None:
        raise ClientError("unauthenticated", "sign in or join as a guest to talk to the companion")
    return connection.identity


def _ack(connection: Connection, message: Mapping[str, Any], **fields: Any) -> None:
    if "id" in message:
        fields["id"] = message["id"]
    connection.send("ack", **fields)


class CompanionServices:
    """The backends, router, health checks and companion, and the handlers."""

    def __init__(self, companion: Companion, router: Router, monitor: HealthMonitor) -> None:
        self.companion = companion
        self.router = router
        self.monitor = monitor

    @classmethod
    def build(
        cls,
        config: AIConfig,
        storage: Storage,
        reactor: Any,
        people: People,
        word_filter: WordFilter,
        xp: XpService,
        *,
        observers: Sequence[ReplyObserverFactory] = (),
        triggers_of: TriggersOf | None = None,
        collar_of: CollarOf | None = None,
    ) -> CompanionServices:
        """Everything from ``[ai]``: one ``LLMBackend`` per URL (``url``, then
        ``fallback_urls``; empty ones skipped). ``ConfigError`` when the persona
        template cannot be read or is broken. ``observers`` follow each reply
        (the voice pipeline speaks it, the trigger engine fires its triggers);
        ``triggers_of`` and ``collar_of`` feed the persona (none by default)."""
        persona = Persona.load(config.persona_file)
        params = GenerationParams.from_config(config)
        timeouts = Timeouts.from_config(config)
        urls = [url for url in (config.url, *config.fallback_urls) if url]
        backends = [
            LLMBackend(url, config.api_key, config.model, params, timeouts, reactor)
            for url in dict.fromkeys(urls)
        ]
        clock: IReactorTime = reactor
        router = Router(
            backends, config.concurrency, config.max_queue, clock, cooloff=config.health_interval
        )
        monitor = HealthMonitor(router, clock, config.health_interval)
        cleaner = TextCleaner(word_filter, config.max_prompt_length)
        companion = Companion(
            config,
            storage,
            clock,
            people,
            xp,
            cleaner,
            persona,
            router,
            triggers_of,
            collar_of,
            observers=observers,
        )
        return cls(companion, router, monitor)

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("ai.history", self.history)
        dispatcher.register("ai.send", self.send)
        dispatcher.register("ai.stop", self.stop_reply)
        dispatcher.register("ai.regenerate", self.regenerate)
        dispatcher.register("ai.reset", self.reset)
        dispatcher.register("ai.conversations", self.conversations)
        dispatcher.register("ai.load", self.load)

    def start(self) -> None:
        self.monitor.start()

    async def stop(self) -> None:
        """Stop the health checks and every reply (each is stored first)."""
        await self.monitor.stop()
        await self.companion.shutdown()

    def connection_closed(self, connection: Connection) -> None:
        """For the WebSocket factory's ``close_listeners`` (after the hub's)."""
        self.companion.connection_closed(connection)

    def health_report(self) -> dict[str, Any]:
        """The ``ai`` section of ``/health/api``."""
        return self.monitor.report()

    # -- handlers ------------------------------------------------------------------------------

    async def history(self, connection: Connection, message: Mapping[str, Any]) -> None:
        await self.companion.history(_identity(connection), connection, message.get("id"))

    async def send(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        reply = await self.companion.send(identity, connection, message.get("text"))
        _ack(connection, message, reply_id=reply.reply_id, conversation_id=reply.conversation_id)
        self.companion.run(reply)

    async def regenerate(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        reply = await self.companion.regenerate(identity, connection)
        _ack(connection, message, reply_id=reply.reply_id, conversation_id=reply.conversation_id)
        self.companion.run(reply)

    async def stop_reply(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        reply_id = message.get("reply_id")
        if reply_id is not None and not isinstance(reply_id, str):
            raise ClientError("bad_request", "'reply_id' must be a string")
        reply = self.companion.current_reply(identity)
        stopping = reply is not None and reply_id in (None, reply.reply_id)
        _ack(connection, message, reply_id=reply_id, stopped=stopping)
        if reply is not None and stopping:
            self.companion.stop(reply, "ai.stop")

    async def reset(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        conversation = await self.companion.reset(identity)
        _ack(connection, message, conversation_id=conversation.conversation_id)
        self.companion.announce(identity, conversation)

    async def conversations(self, connection: Connection, message: Mapping[str, Any]) -> None:
        listed = await self.companion.conversations(_identity(connection))
        fields: dict[str, Any] = {"conversations": listed}
        if "id" in message:
            fields["id"] = message["id"]
        connection.send("ai.conversations", **fields)

    async def load(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = _identity(connection)
        conversation = await self.companion.load(identity, message.get("conversation_id"))
        _ack(connection, message, conversation_id=conversation.conversation_id)
        self.companion.announce(identity, conversation)
