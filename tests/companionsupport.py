"""Helpers for the companion tests: bambid on 127.0.0.1:0 with ``ai.url``
pointing at in-process fake LLM servers (``tests.fakellm``), and readers for
the frames of one reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor

from tests import wsclient
from tests.chatsupport import chat_server, tick
from tests.conftest import Running
from tests.fakellm import FakeLLM, Stall, Stream, sse_events

#: Small deadlines: a test that goes wrong fails fast instead of hanging.
FAST_AI = {
    "connect_timeout": 2.0,
    "first_byte_timeout": 10.0,
    "idle_timeout": 10.0,
    "total_timeout": 30.0,
    "health_interval": 3600.0,
}


@asynccontextmanager
async def fake_llm(**kw: Any) -> AsyncIterator[FakeLLM]:
    """A started fake OpenAI-compatible server; stopped on exit."""
    fake = FakeLLM(reactor, **kw)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@asynccontextmanager
async def companion_server(
    tmp_path: Path, urls: list[str], ai: dict[str, Any] | None = None, **sections: Any
) -> AsyncIterator[Running]:
    """bambid with ``ai.url`` = ``urls[0]`` and the rest as fallbacks."""
    settings = {**FAST_AI, "url": urls[0], "fallback_urls": urls[1:], **(ai or {})}
    async with chat_server(tmp_path, ai=settings, **sections) as running:
        yield running


@attrs.define
class Reply:
    """The frames of one reply, as one tab saw them (``xp`` holds the
    ``xp.update`` / ``level.up`` frames that came along)."""

    frames: list[dict[str, Any]]
    xp: list[dict[str, Any]]

    @property
    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]

    @property
    def deltas(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "ai.delta"]

    @property
    def end(self) -> dict[str, Any]:
        return self.frames[-1]


async def read_reply(client: wsclient.TestClientProtocol) -> Reply:
    """Frames up to and including ``ai.done`` or ``ai.error``."""
    frames: list[dict[str, Any]] = []
    xp: list[dict[str, Any]] = []
    while True:
        message = await client.next()
        if message["type"] in ("xp.update", "level.up"):
            xp.append(message)
            continue
        frames.append(message)
        if message["type"] in ("ai.done", "ai.error"):
            return Reply(frames, xp)


async def until(client: wsclient.TestClientProtocol, type: str) -> list[dict[str, Any]]:
    """Frames up to and including the next one of ``type``."""
    seen = []
    while True:
        message = await client.next()
        seen.append(message)
        if message["type"] == type:
            return seen


def stalled(tokens: list[str], after: int) -> tuple[Stream, Stall]:
    """A streamed reply of ``tokens`` that stops after the first ``after``
    tokens until the ``Stall`` is released."""
    events = sse_events(tokens)
    stall = Stall()
    cut = 1 + after  # the role chunk, then one event per token
    return Stream([*events[:cut], stall, *events[cut:]]), stall


async def send(client: wsclient.TestClientProtocol, text: str, id: Any = "s") -> dict[str, Any]:
    """``ai.send``; the answer (``ack`` or ``error``)."""
    return await client.request({"type": "ai.send", "id": id, "text": text})


async def eventually(check: Any, turns: int = 20_000) -> None:
    """Await ``check()`` (a coroutine function returning bool) once per reactor
    turn until it is true; fails after ``turns`` turns. For effects that follow
    a frame on the server side (a record written after ``ai.done``)."""
    for _ in range(turns):
        if await check():
            return
        await tick()
    raise AssertionError(f"{check.__name__} never became true")
