"""What happens when a trigger fires: actions, behind a zope.interface.

An action provides ``ITriggerAction``: a ``name`` and ``fire(context) ->
Deferred[None]`` (a coroutine or a plain return are accepted too). Actions are
made at start-up by factories providing ``IActionFactory`` (``name``,
``build(services) -> ITriggerAction``), named in ``triggers.actions``:

- a plain name is looked up among the factories Twisted's plugin system finds
  in the ``bambid.plugins`` package (``twisted.plugin.getPlugins``): the
  built-in ones (``bambid/plugins/bambid_actions.py``) and any module an
  operator drops into a ``bambid/plugins/`` directory on ``sys.path``; a
  plugin object must provide both ``IPlugin`` and ``IActionFactory``;
- ``"package.module:Factory"`` imports that object: a factory, or a class
  whose instances (made without arguments) are factories.

An unknown name, an import that fails or an object that is not a factory is a
``ConfigError`` for ``triggers.actions`` at start-up.

Built in (docs/protocol.md, "Triggers and effects"):

- ``audio``: ``trigger.fired {key, name, description, audio_url, source, …}``;
- ``flash``: ``effect.flash {text, key}``;
- ``xp``: ``xp.trigger_fired`` XP through ``XpService.award`` (accounts only);
- ``record``: an ``AudioInteraction`` (``kind`` "trigger", ``name`` the key,
  ``details`` the source and where it was found).

The engine calls every action in order for each firing, without waiting for
one to finish before starting the next; a failure (an exception or a failed
Deferred) is logged with the action's name and changes nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface, implementer

from bambid.config import ConfigError, XPConfig
from bambid.identity import Identity
from bambid.models import AudioInteraction
from bambid.profiles.xp import XpService
from bambid.storage import Storage
from bambid.triggers.catalog import Trigger

SETTING = "triggers.actions"
SOURCES = ("ai", "chat")


@attrs.frozen
class FireContext:
    """One firing of one trigger for one person.

    ``source`` is ``"ai"`` (a companion reply: ``reply_id``) or ``"chat"`` (a
    public chat message: ``room``, ``message_id`` and ``from_name``, its
    author). ``send(type, **fields)`` reaches the right connections: every tab
    of the person for ``ai``; the person's connections in the room for
    ``chat``. ``audio_url`` is the trigger's cue (docs/api.md)."""

    identity: Identity
    trigger: Trigger
    source: str = attrs.field(validator=attrs.validators.in_(SOURCES))
    audio_url: str
    clock: IReactorTime
    _send: Callable[..., object]
    reply_id: str | None = None
    room: str | None = None
    message_id: str | None = None
    from_name: str | None = None

    def send(self, type: str, **fields: Any) -> None:
        """A frame to the person's connections that this firing concerns."""
        self._send(type, **fields)

    @property
    def origin(self) -> dict[str, Any]:
        """Where it was found, as the protocol says it: ``{source, reply_id}``
        or ``{source, room, message_id, from}``."""
        if self.source == "ai":
            return {"source": "ai", "reply_id": self.reply_id}
        return {
            "source": "chat",
            "room": self.room,
            "message_id": self.message_id,
            "from": self.from_name,
        }


@attrs.frozen
class ActionServices:
    """What a factory may use to build its action."""

    storage: Storage
    clock: IReactorTime
    xp: XpService
    xp_config: XPConfig


class ITriggerAction(Interface):
    """Something done when a trigger fires."""

    name = Attribute("The action's name, for logs.")

    def fire(context: FireContext) -> Deferred[None]:
        """Act for ``context``; the Deferred fires when done. A failure is
        logged by the engine and stops nothing else."""


class IActionFactory(Interface):
    """Makes an action at start-up; what ``triggers.actions`` names."""

    name = Attribute("The name used in triggers.actions.")

    def build(services: ActionServices) -> ITriggerAction:
        """The action, made once."""


# -- the built-in actions ---------------------------------------------------------------


@implementer(ITriggerAction)
@attrs.frozen
class AudioAction:
    """``trigger.fired``: the client plays the cue."""

    name: str = "audio"

    def fire(self, context: FireContext) -> Deferred[None]:
        trigger = context.trigger
        context.send(
            "trigger.fired",
            key=trigger.key,
            name=trigger.name,
            description=trigger.description,
            audio_url=context.audio_url,
            **context.origin,
        )
        return defer.succeed(None)


@implementer(ITriggerAction)
@attrs.frozen
class FlashAction:
    """``effect.flash``: the client shows the trigger's name."""

    name: str = "flash"

    def fire(self, context: FireContext) -> Deferred[None]:
        context.send("effect.flash", text=context.trigger.name, key=context.trigger.key)
        return defer.succeed(None)


@implementer(ITriggerAction)
@attrs.frozen
class XpAction:
    """``xp.trigger_fired`` XP for accounts (``xp.update`` follows)."""

    xp: XpService
    amount: int
    name: str = "xp"

    def fire(self, context: FireContext) -> Deferred[None]:
        if context.identity.guest or self.amount <= 0:
            return defer.succeed(None)
        return Deferred.fromCoroutine(self._award(context.identity))

    async def _award(self, identity: Identity) -> None:
        await self.xp.award(identity, self.amount)


@implementer(ITriggerAction)
@attrs.frozen
class RecordAction:
    """An ``AudioInteraction`` per firing."""

    storage: Storage
    name: str = "record"

    def fire(self, context: FireContext) -> Deferred[None]:
        details = {k: v for k, v in context.origin.items() if v is not None}
        entry = AudioInteraction(
            username=record_name(context.identity),
            kind="trigger",
            name=context.trigger.key,
            timestamp=context.clock.seconds(),
            details=details,
        )
        return Deferred.fromCoroutine(self.storage.record(entry))


def record_name(identity: Identity) -> str:
    """Who a record belongs to: the account name, or ``guest:<name>``."""
    return f"guest:{identity.name}" if identity.guest else identity.name


@implementer(IPlugin, IActionFactory)
@attrs.frozen
class ActionFactory:
    """A factory from a name and a function of the services."""

    name: str
    make: Callable[[ActionServices], ITriggerAction]

    def build(self, services: ActionServices) -> ITriggerAction:
        return self.make(services)


AUDIO = ActionFactory("audio", lambda services: AudioAction())
FLASH = ActionFactory("flash", lambda services: FlashAction())
XP = ActionFactory("xp", lambda s: XpAction(s.xp, s.xp_config.trigger_fired))
RECORD = ActionFactory("record", lambda services: RecordAction(services.storage))


# -- finding them -------------------------------------------------------------------------


def plugin_factories() -> dict[str, list[IActionFactory]]:
    """Every ``IActionFactory`` plugin in ``bambid.plugins``, by name."""
    import bambid.plugins

    found: dict[str, list[IActionFactory]] = {}
    for factory in getPlugins(IActionFactory, bambid.plugins):
        name = getattr(factory, "name", None)
        if isinstance(name, str) and name:
            same = found.setdefault(name, [])
            if not any(factory is other for other in same):
                same.append(factory)
    return found


def load_actions(names: Sequence[str], services: ActionServices) -> list[ITriggerAction]:
    """The actions ``names`` (``triggers.actions``) call for, built, in order.
    ``ConfigError`` for ``triggers.actions`` when one cannot be found or built."""
    plugins: dict[str, list[IActionFactory]] | None = None
    actions = []
    for name in names:
        if ":" in name:
            factory = _imported(SETTING, name)
        else:
            if plugins is None:
                plugins = plugin_factories()
            candidates = plugins.get(name, [])
            if not candidates:
                known = ", ".join(sorted(plugins)) or "none"
                raise ConfigError(
                    SETTING,
                    f"unknown action {name!r} (plugins found in bambid.plugins: {known}; "
                    "or name one as 'package.module:Factory')",
                )
            if len(candidates) > 1:
                raise ConfigError(
                    SETTING,
                    f"{len(candidates)} plugins are called {name!r}: {_origins(candidates)}",
                )
            factory = candidates[0]
        try:
            action = factory.build(services)
        except Exception as e:
            raise ConfigError(SETTING, f"action {name!r} could not be built: {e!r}") from e
        if not ITriggerAction.providedBy(action):
            raise ConfigError(SETTING, f"{name!r} built {action!r}, which is not an ITriggerAction")
        actions.append(action)
    return actions


def _imported(where: str, dotted: str) -> IActionFactory:
    module_name, _, attribute = dotted.partition(":")
    if not module_name or not attribute:
        raise ConfigError(where, f"{dotted!r} is not 'package.module:Factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(where, f"cannot import {module_name!r}: {e!r}") from e
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(where, f"{module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if IActionFactory.providedBy(target):
        factory: IActionFactory = target
        return factory
    maker: Any = target
    if isinstance(target, type) and IActionFactory.implementedBy(target):
        try:
            made: Any = maker()
        except Exception as e:
            raise ConfigError(where, f"{dotted!r} could not be made: {e!r}") from e
        if IActionFactory.providedBy(made):
            made_factory: IActionFactory = made
            return made_factory
    raise ConfigError(where, f"{dotted!r} is not an IActionFactory")


def _origins(factories: Iterable[object]) -> str:
    return ", ".join(f"{type(f).__module__}.{type(f).__qualname__}" for f in factories)
