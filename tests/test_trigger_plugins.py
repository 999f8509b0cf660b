"""Trigger actions as plugins: Twisted's plugin system finds the built-in ones
and an operator's drop-in module, ``package.module:Factory`` names are
imported, unknown names stop start-up, and a failing plugin (one that raises,
one whose Deferred fails) stops neither the audio cue nor the reply."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.plugin import getPlugins
from zope.interface import implementer

import bambid.plugins
from bambid import config as configuration
from bambid.config import ConfigError, XPConfig
from bambid.identity import Identity
from bambid.service import BambidService
from bambid.triggers.actions import (
    ActionServices,
    AudioAction,
    FireContext,
    IActionFactory,
    ITriggerAction,
    load_actions,
)
from bambid.triggers.catalog import Trigger
from tests.chatsupport import add_person, connect, expect
from tests.companionsupport import companion_server, fake_llm, send
from tests.conftest import make_config
from tests.fakellm import Stream, sse_events

# -- plugins for the tests (named as "tests.test_trigger_plugins:...") ----------------------


@implementer(ITriggerAction)
class RaisingAction:
    name = "raising"

    def fire(self, context: FireContext) -> Deferred[None]:
        raise RuntimeError("the raising plugin broke")


@implementer(ITriggerAction)
class FailingAction:
    name = "failing"

    def fire(self, context: FireContext) -> Deferred[None]:
        return defer.fail(RuntimeError("the failing plugin failed later"))


@implementer(IActionFactory)
class Raising:
    """A factory class: made without arguments."""

    name = "raising"

    def build(self, services: ActionServices) -> ITriggerAction:
        return RaisingAction()


@implementer(IActionFactory)
@attrs.frozen
class Failing:
    name: str = "failing"

    def build(self, services: ActionServices) -> ITriggerAction:
        return FailingAction()


FAILING = Failing()  # a factory instance


class NotAFactory:
    pass


@implementer(ILogObserver)
@attrs.define
class Events:
    """Every log event while it observes."""

    seen: list[LogEvent] = attrs.Factory(list)

    def __call__(self, event: LogEvent) -> None:
        self.seen.append(event)


SERVICES = ActionServices(storage=None, clock=Clock(), xp=None, xp_config=XPConfig())  # type: ignore[arg-type]

DROP_IN = '''
"""An operator's action plugin, dropped into a bambid/plugins directory."""

from twisted.internet import defer
from twisted.plugin import IPlugin
from zope.interface import implementer

from bambid.triggers.actions import IActionFactory, ITriggerAction


@implementer(ITriggerAction)
class Chime:
    name = "chime"

    def fire(self, context):
        context.send("effect.chime", key=context.trigger.key)
        return defer.succeed(None)


@implementer(IPlugin, IActionFactory)
class ChimeFactory:
    name = "chime"

    def build(self, services):
        return Chime()


chime = ChimeFactory()
'''


def context(sent: list[tuple[str, dict[str, Any]]]) -> FireContext:
    return FireContext(
        Identity("Ada"),
        Trigger("calm", "Calm", (), "Be calm.", "relaxation"),
        "ai",
        "/audio/triggers/calm",
        Clock(),
        lambda type, **fields: sent.append((type, fields)),
        reply_id="r1",
    )


# -- finding them -------------------------------------------------------------------------


def test_the_built_in_actions_are_twisted_plugins() -> None:
    names = {factory.name for factory in getPlugins(IActionFactory, bambid.plugins)}
    assert {"audio", "flash", "xp", "record"} <= names
    actions = load_actions(["audio", "flash"], SERVICES)
    assert [a.name for a in actions] == ["audio", "flash"]
    assert all(ITriggerAction.providedBy(a) for a in actions)


@pytest.fixture
def drop_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``bambid/plugins`` directory outside the package, on the plugin path
    (as ``pluginPackagePaths`` adds one found on ``sys.path``)."""
    directory = tmp_path / "bambid" / "plugins"
    directory.mkdir(parents=True)
    (directory / "chime_actions.py").write_text(DROP_IN)
    monkeypatch.setattr(bambid.plugins, "__path__", [*bambid.plugins.__path__, str(directory)])
    yield directory
    sys.modules.pop("bambid.plugins.chime_actions", None)


def test_a_dropped_in_plugin_is_found_by_name(drop_in: Path) -> None:
    (chime,) = load_actions(["chime"], SERVICES)
    sent: list[tuple[str, dict[str, Any]]] = []
    result = chime.fire(context(sent))
    assert result.called
    assert sent == [("effect.chime", {"key": "calm"})]


def test_dotted_names_are_imported() -> None:
    actions = load_actions(
        ["tests.test_trigger_plugins:Raising", "tests.test_trigger_plugins:FAILING", "audio"],
        SERVICES,
    )
    assert [type(a) for a in actions] == [RaisingAction, FailingAction, AudioAction]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("fireworks", "unknown action 'fireworks'"),
        ("tests.no_such_module:Factory", "cannot import 'tests.no_such_module'"),
        ("tests.test_trigger_plugins:Missing", "has no 'Missing'"),
        ("tests.test_trigger_plugins:NotAFactory", "is not an IActionFactory"),
        ("tests.test_trigger_plugins:", "is not 'package.module:Factory'"),
    ],
)
def test_an_unknown_action_is_a_configuration_error(name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_actions(["audio", name], SERVICES)
    assert caught.value.key == "triggers.actions"
    assert problem in caught.value.problem


def test_the_daemon_does_not_start_with_an_unknown_action(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = attrs.evolve(config, triggers=attrs.evolve(config.triggers, actions=["fireworks"]))
    with pytest.raises(ConfigError, match=r"^triggers\.actions: unknown action 'fireworks'"):
        BambidService(config, reactor, base_dir=tmp_path)
    # and the shipped defaults are all found
    BambidService(configuration.load(None, {}), reactor, base_dir=tmp_path)


# -- failures stop nothing ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_failing_plugins_stop_neither_the_cue_nor_the_reply(tmp_path: Path) -> None:
    actions = [
        "tests.test_trigger_plugins:Raising",
        "tests.test_trigger_plugins:FAILING",
        "audio",
        "flash",
    ]
    logged = Events()
    globalLogPublisher.addObserver(logged)
    try:
        async with (
            fake_llm() as fake,
            companion_server(tmp_path, [fake.url], triggers={"actions": actions}) as r,
        ):
            storage = r.service.storage
            token = await add_person(storage, "Ada")
            await storage.ensure_profile("Ada", 0.0)
            await storage.add_xp("Ada", 1000)
            ada, _ = await connect(r, token)
            answer = await ada.request({"type": "triggers.set", "id": 1, "enabled": ["let-go"]})
            assert answer == {"type": "ack", "id": 1}
            await expect(ada, "triggers.state")
            await expect(ada, "xp.update")
            fake.script(Stream(sse_events(["Now ", "let", " go."])))
            assert (await send(ada, "help"))["type"] == "ack"
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["type"] != "ai.done":
                frames.append(await ada.next())
            types = [f["type"] for f in frames]
            assert types.count("trigger.fired") == 1 and types.count("effect.flash") == 1
            assert types.index("trigger.fired") < types.index("effect.flash")
            assert frames[-1]["text"] == "Now let go."
            await r.service.triggers.engine.idle()
    finally:
        globalLogPublisher.removeObserver(logged)
    failed = [str(e["action"]) for e in logged.seen if "log_failure" in e and "action" in e]
    assert sorted(failed) == ["failing", "raising"]
