"""SIGHUP reloads (``bambid.reload``): the persona template, the word filter,
the help pages and ``[limits]`` — in a real daemon process with a connected
WebSocket client, and in process for the failure cases; and token buckets
given new limits while in use."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from bambid import config as configuration
from bambid.config import ConfigError
from bambid.ratelimit import KeyedLimiter
from tests import wsclient
from tests.chatsupport import add_person, chat_server, connect, expect, join, post
from tests.companionsupport import FAST_AI, fake_llm, read_reply, send
from tests.daemon import Daemon
from tests.fakellm import FakeLLM


@implementer(ILogObserver)
@attrs.define
class _Lines:
    lines: list[str] = attrs.Factory(list)

    def __call__(self, event: LogEvent) -> None:
        self.lines.append(formatEvent(event))


@contextmanager
def logged() -> Iterator[list[str]]:
    """The text of every log event while inside."""
    observer = _Lines()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer.lines
    finally:
        globalLogPublisher.removeObserver(observer)


def one(lines: list[str], text: str) -> str:
    """The one line containing ``text``."""
    found = [line for line in lines if text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


def system_prompt(fake: FakeLLM) -> str:
    messages = fake.chat_requests[-1].body["messages"]
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


# -- token buckets ---------------------------------------------------------------------------


def test_new_limits_apply_to_buckets_in_use_from_now_on() -> None:
    clock = Clock()
    limiter = KeyedLimiter(clock, rate=1.0, burst=10)
    for _ in range(4):
        assert limiter.take("ada") == 0.0  # 6 left
    clock.advance(2)  # +2 at the old rate: 8
    limiter.configure(rate=0.5, burst=3)  # capped at the new burst
    assert [limiter.take("ada") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("ada") == 2.0  # one token at the new rate takes 2 s
    clock.advance(2)
    assert limiter.take("ada") == 0.0
    assert [limiter.take("bo") for _ in range(3)] == [0.0, 0.0, 0.0]  # new: the new burst
    assert limiter.take("bo") > 0
    limiter.configure(rate=0.5, burst=20)  # a bigger burst fills up by refills only
    assert limiter.take("bo") > 0


# -- the real daemon ---------------------------------------------------------------------------


def daemon_config(path: Path, llm_url: str, words: Path, persona: Path, chat_burst: Any) -> None:
    ai = {**FAST_AI, "url": llm_url, "persona_file": str(persona)}
    lines = ["[ai]", *(f"{key} = {json.dumps(value)}" for key, value in ai.items())]
    lines += ["[chat]", f"filtered_words_file = {json.dumps(str(words))}"]
    lines += ["[voice]", "speak_replies = false"]
    lines += ["[limits]", f"chat_burst = {json.dumps(chat_burst)}", "chat_per_second = 0.01"]
    path.write_text("\n".join(lines) + "\n")


async def guest_session(daemon: Daemon, name: str) -> str:
    response = await treq.post(daemon.http + "/api/auth/guest", json={"name": name})
    assert response.code == 201, await response.text()
    await response.content()
    for header in response.headers.getRawHeaders("set-cookie") or []:
        name_value = header.split(";", 1)[0]
        if name_value.startswith("bambid_session="):
            return name_value.split("=", 1)[1]
    raise AssertionError("no session cookie")


async def logged_after(daemon: Daemon, start: int, text: str, seconds: float = 60) -> list[str]:
    """Wait until the daemon has logged ``text`` since line ``start``; the
    lines logged since then."""
    for _ in range(int(seconds / 0.02)):
        lines = daemon.output[start:]
        if any(text in line for line in lines):
            return lines
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{text!r} never logged:\n" + "".join(daemon.output[start:]))


async def hang_up(daemon: Daemon, *waiting_for: str) -> list[str]:
    """SIGHUP; the lines logged until every text of ``waiting_for`` was."""
    start = len(daemon.output)
    os.kill(daemon.process.pid, signal.SIGHUP)
    lines: list[str] = []
    for text in waiting_for:
        lines = await logged_after(daemon, start, text)
    return lines


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_words_persona_and_limits_without_dropping_the_client(
    tmp_path: Path,
) -> None:
    words = tmp_path / "words.txt"
    words.write_text("oldword\n")
    persona = tmp_path / "persona.md.j2"
    persona.write_text("You are Persona One, talking with {{ username }}.\n")
    config = tmp_path / "bambid.toml"
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with fake_llm() as fake:
        daemon_config(config, fake.url, words, persona, chat_burst=20)
        with Daemon.start(workdir, args=("--config", str(config))) as daemon:
            client = await wsclient.connect(daemon.ws, cookie=await guest_session(daemon, "Calm"))
            assert (await client.request({"type": "hello"}))["type"] == "welcome"
            await join(client)

            assert (await post(client, "oldword and newword", id=1))["type"] == "ack"
            await expect(client, "chat.message", text="******* and newword")
            assert (await send(client, "Hello"))["type"] == "ack"
            assert (await read_reply(client)).end["type"] == "ai.done"
            assert system_prompt(fake) == "You are Persona One, talking with Calm."

            # New words, persona and limits; one SIGHUP.
            words.write_text("oldword\nnewword\n")
            persona.write_text("You are Persona Two, with {{ username }} at level {{ level }}.\n")
            daemon_config(config, fake.url, words, persona, chat_burst=3)
            lines = await hang_up(
                daemon,
                "persona template reloaded",
                "word filter reloaded",
                "help pages reloaded",
                "limits reloaded",
            )
            one(lines, f"persona template reloaded from {persona}: changed")
            added = "2 words and phrases (1 added, 0 removed)"
            one(lines, f"word filter reloaded from {words}: {added}")
            one(lines, "help pages reloaded from the packaged guide: 8 pages (no changes)")
            one(lines, f"limits reloaded from {config}: chat_burst 20 -> 3")
            await expect(client, "triggers.catalog", version=2)  # SIGHUP reloads it too

            # The same connection, still in the room: the new filter...
            assert (await post(client, "oldword and newword", id=2))["type"] == "ack"
            await expect(client, "chat.message", text="******* and *******")
            # ... the new limit: 18 tokens left became 3, of which one is spent.
            for number in (3, 4):
                assert (await post(client, f"breathe {number}", id=number))["type"] == "ack"
                await expect(client, "chat.message")
            refused = await post(client, "breathe 5", id=5)
            assert (refused["type"], refused["code"]) == ("error", "rate_limited"), refused
            # ... and the new persona.
            assert (await send(client, "Hello again"))["type"] == "ack"
            assert (await read_reply(client)).end["type"] == "ai.done"
            assert system_prompt(fake) == "You are Persona Two, with Calm at level 0."

            # A broken persona and a broken config file: logged, the old ones stay.
            persona.write_text("{% if %}\n")
            config.write_text(config.read_text().replace("chat_burst = 3", 'chat_burst = "many"'))
            lines = await hang_up(
                daemon, "persona template was not reloaded", "was not reloaded (nothing changes)"
            )
            line = one(lines, "the persona template was not reloaded (the old one stays)")
            assert f"ai.persona_file: {persona}, line 1:" in line
            line = one(lines, "was not reloaded (nothing changes)")
            assert "limits.chat_burst: must be an integer, got 'many'" in line
            await expect(client, "triggers.catalog", version=3)
            assert (await send(client, "Still there?"))["type"] == "ack"
            assert (await read_reply(client)).end["type"] == "ai.done"
            assert system_prompt(fake) == "You are Persona Two, with Calm at level 0."

            assert not client.closed.called
            assert daemon.process.poll() is None
            client.sendClose()
            await client.closed
            assert daemon.terminate() == 0


# -- in process: what each reload does, and its failures -----------------------------------


@pytest_twisted.ensureDeferred
async def test_the_word_filter_is_replaced_for_chat_companion_and_collar(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("# ours\nfirstword\n")
    async with chat_server(tmp_path, chat={"filtered_words_file": str(words)}) as r:
        service = r.service
        shared = service.chat.cleaner.word_filter
        assert service.companion.companion.cleaner.word_filter is shared
        words.write_text("secondword\nthird phrase\n")
        with logged() as lines:
            await service.reloader.reload()
        one(lines, f"word filter reloaded from {words}: 2 words and phrases (2 added, 1 removed)")
        assert service.chat.cleaner.word_filter is shared
        assert service.chat.cleaner.clean("firstword secondword THIRD  phrase") == (
            "firstword ********** *************"
        )
        assert service.collar.word_filter.apply("secondword") == "**********"

        words.unlink()
        with logged() as lines:
            await service.reloader.reload()
        line = one(lines, "the word filter was not reloaded (the old one stays)")
        assert "chat.filtered_words_file: cannot read it:" in line
        assert shared.apply("secondword") == "**********"


@pytest_twisted.ensureDeferred
async def test_a_broken_persona_keeps_the_old_one(tmp_path: Path) -> None:
    persona = tmp_path / "persona.md.j2"
    persona.write_text("Be calm with {{ username }}.")
    async with chat_server(tmp_path, ai={"persona_file": str(persona)}) as r:
        companion = r.service.companion.companion
        for broken in ("{{ nobody_gave_me }}", "{% for %}"):
            persona.write_text(broken)
            with logged() as lines:
                await r.service.reloader.reload()
            line = one(lines, "the persona template was not reloaded (the old one stays)")
            assert f"ai.persona_file: {persona}" in line
            assert companion.persona.render("Ada", 1) == "Be calm with Ada."
        persona.write_text("Breathe slowly, {{ username }}.")
        with logged() as lines:
            await r.service.reloader.reload()
        one(lines, f"persona template reloaded from {persona}: changed")
        assert companion.persona.render("Ada", 1) == "Breathe slowly, Ada."


@pytest_twisted.ensureDeferred
async def test_limits_come_from_the_config_source_and_a_bad_one_changes_nothing(
    tmp_path: Path,
) -> None:
    limits = {"chat_burst": 10, "chat_per_second": 0.01}
    async with chat_server(tmp_path, limits=limits) as r:
        service = r.service
        ada, _ = await connect(r, await add_person(service.storage, "Ada"))
        await join(ada)
        assert (await post(ada, "one", id=1))["type"] == "ack"
        await expect(ada, "chat.message")

        with logged() as lines:
            await service.reloader.reload()
        one(lines, "limits not reloaded: no configuration to read again")

        reloaded = attrs.evolve(
            service.config,
            limits=attrs.evolve(
                service.config.limits, chat_burst=2, connection_burst=50, abuse_strikes=3
            ),
            ai=attrs.evolve(service.config.ai, model="another-model"),
        )
        service.reloader.use_config(lambda: reloaded, "test.toml")
        with logged() as lines:
            await service.reloader.reload()
        line = one(lines, "limits reloaded from test.toml: ")
        assert "connection_burst 30 -> 50, chat_burst 10 -> 2, abuse_strikes 10 -> 3" in line
        assert "changed but used only after a restart: ai.model" in line
        assert service.ws_factory.limits.connection_burst == 50
        assert service.ws_factory.connection_limiter.burst == 50
        assert service.chat.config.limits.abuse_strikes == 3
        for number in (2, 3):
            assert (await post(ada, f"msg {number}", id=number))["type"] == "ack"
            await expect(ada, "chat.message")
        assert (await post(ada, "too many", id=4))["code"] == "rate_limited"

        def broken() -> configuration.Config:
            raise ConfigError("limits.chat_burst", "must be >= 1, got 0")

        service.reloader.use_config(broken, "test.toml")
        with logged() as lines:
            await service.reloader.reload()
        line = one(lines, "the configuration in test.toml was not reloaded (nothing changes)")
        assert "limits.chat_burst: must be >= 1, got 0" in line
        assert service.chat.chat_limiter.burst == 2
        assert service.reloader.config.limits.chat_burst == 2
        assert not ada.closed.called


@pytest_twisted.ensureDeferred
async def test_help_pages_are_reloaded_and_a_broken_page_keeps_the_old_ones(
    tmp_path: Path,
) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "start.md").write_text("# Start\n\nFirst version.\n\n## Part\n\nText.\n")
    async with chat_server(tmp_path, help={"pages_dir": str(pages)}) as r:
        (pages / "start.md").write_text("# Start\n\nSecond version.\n\n## Part\n\nText.\n")
        (pages / "more.md").write_text("# More\n\n## Detail\n\nMore text.\n")
        with logged() as lines:
            await r.service.reloader.reload()
        one(lines, f"help pages reloaded from {pages}: 2 pages (added more; changed start)")
        body = await (await treq.get(r.http + "/help/start")).text()
        assert "Second version." in body
        assert (await treq.get(r.http + "/help/more")).code == 200

        (pages / "more.md").write_text("No title any more.\n")
        with logged() as lines:
            await r.service.reloader.reload()
        line = one(lines, "help pages were not reloaded (the old ones stay)")
        assert f"help.pages_dir: {pages}: more.md: a page needs a '# Title' heading" in line
        response = await treq.get(r.http + "/help/more")
        assert response.code == 200
        assert "More text." in await response.text()
