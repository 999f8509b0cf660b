"""What SIGHUP reloads besides the trigger catalog (``bambid.triggers``).

``Reloader.reload`` (registered with ``bambid.signals.on_reload`` by
``bambid.tap``, so ``bambid.signals.reload()`` — SIGHUP, the manhole — runs
it) reloads, in this order:

1. the persona template (``ai.persona_file``, or the packaged one): read and
   checked again like at start-up; a file that cannot be read or a broken
   template is logged with the key and the old template stays;
2. the word filter (``chat.filtered_words_file``, or the packaged list),
   replaced in place: the chat, the companion and the collar share it; an
   unreadable file is logged and the old list stays;
3. the help pages (``HelpCenter.reload``);
4. the rate limits: ``config_source`` builds the configuration again (the
   daemon's ``--config`` file and the environment, as at start-up) and its
   ``[limits]`` go to every object in ``limited`` (``apply_limits``): token
   buckets keep what they had earned, capped at the new burst, and refill at
   the new rate from now on. A configuration that no longer loads is logged
   with the key it names and nothing changes. Other keys that differ are
   named in the log line: they take effect at the next restart.

Files are read (and templates compiled) in the reactor's thread pool. Each
step logs one line saying what changed, or why nothing did, and never raises.
No connection is closed. The file paths are those of the configuration the
daemon started with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bambid.ai.persona import Persona
from bambid.chat.text import WordFilter
from bambid.config import SECTIONS, Config, ConfigError, LimitsConfig
from bambid.web.helpcenter import HelpCenter

T = TypeVar("T")


class UsesLimits(Protocol):
    """Something that holds ``[limits]`` values (the WebSocket factory, the chat)."""

    def apply_limits(self, limits: LimitsConfig) -> None: ...


class UsesPersona(Protocol):
    """Something that renders the persona (the companion)."""

    persona: Persona


class Reloader:
    """The reloads of one service (see the module doc)."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: Config,
        *,
        companion: UsesPersona,
        word_filter: WordFilter,
        help_center: HelpCenter,
        limited: Sequence[UsesLimits],
    ) -> None:
        self.reactor = reactor
        #: The configuration in effect: the start-up one, with the reloaded ``[limits]``.
        self.config = config
        self.companion = companion
        self.word_filter = word_filter
        self.help_center = help_center
        self.limited = list(limited)
        #: Builds the configuration again for ``[limits]``; None: limits are not reloaded.
        self.config_source: Callable[[], Config] | None = None
        #: How ``config_source`` is named in log lines (the ``--config`` path).
        self.config_origin = "the environment"

    def use_config(self, source: Callable[[], Config], origin: str) -> None:
        """Reload ``[limits]`` from ``source()`` (``bambid.tap``: the
        ``--config`` file and the environment), named ``origin`` in logs."""
        self.config_source = source
        self.config_origin = origin

    def reload(self) -> Deferred[None]:
        """Reload everything (see the module doc); fires when done, never fails."""
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> None:
        for step in (self.reload_persona, self.reload_words, self.reload_help, self.reload_limits):
            try:
                await step()
            except Exception:
                self._log.failure("reloading failed in {step}", step=step.__name__)

    def _in_thread(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), function, *args
        )

    async def reload_persona(self) -> None:
        try:
            persona = await self._in_thread(Persona.load, self.config.ai.persona_file)
        except ConfigError as e:
            self._log.error(
                "the persona template was not reloaded (the old one stays): {error}", error=str(e)
            )
            return
        old = self.companion.persona
        self.companion.persona = persona
        self._log.info(
            "persona template reloaded from {origin}: {what}",
            origin=persona.origin,
            what="changed" if persona.source != old.source else "no changes",
        )

    async def reload_words(self) -> None:
        path = self.config.chat.filtered_words_file
        origin = path or "the packaged list"
        try:
            loaded = await self._in_thread(WordFilter.load, path)
        except (OSError, UnicodeDecodeError) as e:
            self._log.error(
                "the word filter was not reloaded (the old one stays): "
                "chat.filtered_words_file: cannot read it: {error}",
                error=str(e),
            )
            return
        before, after = set(self.word_filter.phrases), set(loaded.phrases)
        self.word_filter.replace_with(loaded)
        self._log.info(
            "word filter reloaded from {origin}: {count} words and phrases "
            "({added} added, {removed} removed)",
            origin=origin,
            count=len(after),
            added=len(after - before),
            removed=len(before - after),
        )

    async def reload_help(self) -> None:
        await self.help_center.reload()

    async def reload_limits(self) -> None:
        source = self.config_source
        if source is None:
            self._log.info("limits not reloaded: no configuration to read again")
            return
        try:
            loaded = await self._in_thread(source)
        except ConfigError as e:
            self._log.error(
                "the configuration in {origin} was not reloaded (nothing changes): "
                "{key}: {problem}",
                origin=self.config_origin,
                key=e.key,
                problem=e.problem,
            )
            return
        old, new = self.config.limits, loaded.limits
        changes = [
            f"{field.name} {getattr(old, field.name)} -> {getattr(new, field.name)}"
            for field in attrs.fields(LimitsConfig)
            if getattr(old, field.name) != getattr(new, field.name)
        ]
        if changes:
            for user in self.limited:
                user.apply_limits(new)
            self.config = attrs.evolve(self.config, limits=new)
        later = _changed_keys(self.config, loaded)
        self._log.info(
            "limits reloaded from {origin}: {changes}{later}",
            origin=self.config_origin,
            changes=", ".join(changes) or "no changes",
            later=f"; changed but used only after a restart: {', '.join(later)}" if later else "",
        )


def _changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ (names only: values may be secret)."""
    keys = []
    for name in SECTIONS:
        before, after = getattr(old, name), getattr(new, name)
        for field in attrs.fields(type(before)):
            if getattr(before, field.name) != getattr(after, field.name):
                keys.append(f"{name}.{field.name}")
    return keys
