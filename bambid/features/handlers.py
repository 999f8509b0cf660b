"""Builds the gated features and registers their WebSocket handlers.

Registered types: ``collar.get``, ``collar.set``, ``settings.get``,
``settings.set``, ``ai.delete`` and ``voice.replay``; and, replacing the
companion's own (so ``register`` must come after ``CompanionServices.register``),
``ai.conversations`` and ``ai.load`` gated by ``session_history``. The collar
is built first, on its own (``build_collar``): the companion's persona reads
it, and the companion is needed by the session history.
"""

from __future__ import annotations

from typing import Any

from bambid.ai.companion import Companion
from bambid.chat.text import WordFilter
from bambid.config import Config
from bambid.features import ProfilePreferences
from bambid.features.collar import CollarService, People
from bambid.features.history import FEATURE as HISTORY
from bambid.features.history import SessionHistory, gated
from bambid.features.settings import SettingsService
from bambid.profiles.gates import Gates
from bambid.profiles.xp import XpService
from bambid.storage import Storage
from bambid.voice.pipeline import VoicePipeline
from bambid.ws.dispatch import Dispatcher


def build_collar(
    config: Config,
    storage: Storage,
    reactor: Any,
    people: People,
    word_filter: WordFilter,
    xp: XpService,
    gates: Gates,
) -> CollarService:
    """The collar, with the ``ProfilePreferences`` the other features share."""
    preferences = ProfilePreferences(storage, reactor)
    return CollarService(
        config.triggers, config.xp, preferences, people, word_filter, xp, gates, reactor
    )


class FeatureServices:
    """The collar, the effect settings and the session history."""

    def __init__(
        self, collar: CollarService, settings: SettingsService, history: SessionHistory
    ) -> None:
        self.collar = collar
        self.settings = settings
        self.history = history

    @classmethod
    def build(
        cls,
        collar: CollarService,
        storage: Storage,
        people: People,
        gates: Gates,
        companion: Companion,
        pipeline: VoicePipeline,
    ) -> FeatureServices:
        """The other features around the ``collar`` (see ``build_collar``)."""
        settings = SettingsService(collar.preferences, people, gates)
        history = SessionHistory(storage, gates, companion, pipeline)
        return cls(collar, settings, history)

    def register(self, dispatcher: Dispatcher) -> None:
        """After the companion's handlers: two of them are wrapped."""
        self.collar.register(dispatcher)
        self.settings.register(dispatcher)
        dispatcher.register("ai.delete", self.history.delete)
        dispatcher.register("voice.replay", self.history.replay)
        conversations = dispatcher.handler("ai.conversations")
        load = dispatcher.handler("ai.load")
        if conversations is None or load is None:
            raise ValueError("register the companion's handlers first")
        gates = self.history.gates
        dispatcher.register("ai.conversations", gated(conversations, gates, HISTORY), replace=True)
        dispatcher.register("ai.load", self.history.gated_load(load), replace=True)
