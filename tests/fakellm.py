"""A fake OpenAI-compatible LLM server that speaks real HTTP, for tests.

It serves ``GET /v1/models``, ``POST /v1/chat/completions``, ``GET /health``
and ``GET /_fake/stats`` on a real TCP port, records every request and notices
every client that hangs up before its response was finished (which is how a
test proves that "stop" closed the upstream connection).

In process (pytest-twisted, the test's reactor)::

    fake = FakeLLM(reactor)                  # scenario "normal", model "fake-model"
    await fake.start()                       # 127.0.0.1, a free port
    backend = LLMBackend(fake.url, ...)      # fake.url == "http://127.0.0.1:PORT/v1"

    fake.script(Stream(sse_events(["Hel", "lo"])))       # the next chat request
    fake.script(Stream(split_every(b"".join(sse_events(["a", "b"])), 3), delay=0.0))
    fake.script(JSONReply(503, LLAMACPP_LOADING))        # or ollama_error(...)
    stall = Stall()
    fake.script(Stream([*sse_events(["Hi"], done=False)[:2], stall]))  # ... stall.release()

    request = await fake.next_request()      # or fake.chat_requests[-1]: RecordedRequest
    request.body["messages"], request.headers.get("authorization")
    assert await request.outcome == "disconnected"   # or "finished", "closed"
    await fake.connections_closed()          # no TCP connection left open
    await fake.stop()

Replies (queued with ``script``; each chat request takes the next one, and the
scenario answers when the queue is empty):

``Stream(pieces, end="finish", delay=None, status=200, headers=None, eager_headers=True)``
    Sends the headers at once (with the first bytes if ``eager_headers`` is
    False), then each piece: ``bytes`` are written as they are (so a test
    controls the byte boundaries), ``Pause(seconds)`` waits,
    ``Stall(deferred=None)`` waits until its Deferred fires (``stall.release()``
    for its own). ``delay`` waits that long after every written piece
    (``0.0`` = one reactor turn, so pieces tend to arrive in separate reads).
    ``end``: ``"finish"`` ends the response, ``"close"`` drops the connection
    mid-body, ``"hang"`` leaves it open until the client goes.
``JSONReply(status, body, headers=None)``
    One JSON body (``body`` may be raw ``bytes`` for garbage), e.g. an error
    (``ollama_error``, ``openai_error``, ``LLAMACPP_LOADING``) or a
    non-streamed completion (``completion_json``).

Byte builders: ``chunk(...)`` is one ``chat.completion.chunk`` dict;
``event(payload, event=None, newline="\\n")`` one SSE event (a dict is JSON,
a str is sent as is, e.g. ``"[DONE]"``); ``sse_events(tokens, ...)`` a whole
reply as a list of events (role chunk, optional reasoning, one chunk per
token, finish chunk, usage chunk with ``choices`` ``[]``/``null``/missing,
``[DONE]``), LF/CRLF/CR line ends and ``: ping`` comments on request;
``split_every(data, n)`` and ``split_at(data, *offsets)`` cut bytes anywhere.
``closed_port_url(reactor)`` is a URL where connections are refused.

``fake.models`` (list of ids) answers ``GET /v1/models`` unless
``fake.models_reply`` is set; ``fake.api_key`` makes every request without
``Authorization: Bearer <key>`` a 401.

As a subprocess (browser tests, benchmarks)::

    python -m tests.fakellm --scenario slow --token-delay 0.05 [--port 0] [--model ID]

prints ``listening on PORT`` as its first line and serves until killed.
Scenarios: ``normal`` (a reply of about 20 words, token by token), ``slow``
(the same with ``--token-delay`` seconds between tokens, 0.2 by default),
``fail`` (500 with an OpenAI-style JSON error), ``echo`` (repeats the last user
message, word by word). ``GET /_fake/stats`` returns ``{"requests",
"finished", "disconnected", "closed", "open"}`` counts of chat requests, so a
browser test can check that Stop reached the backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "DEFAULT_MODEL",
    "LLAMACPP_LOADING",
    "NORMAL_REPLY",
    "SCENARIOS",
    "FakeLLM",
    "JSONReply",
    "Pause",
    "RecordedRequest",
    "Stall",
    "Stream",
    "chunk",
    "closed_port_url",
    "completion_json",
    "event",
    "ollama_error",
    "openai_error",
    "split_at",
    "split_every",
    "sse_events",
]

_log = Logger()

DEFAULT_MODEL = "fake-model"
NORMAL_REPLY = (
    "Breathe in slowly, hold it for a moment, and let it go. "
    "You are doing well; stay with the rhythm for a little while longer."
)
LLAMACPP_LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


# --- building what a server sends ------------------------------------------------


def chunk(
    content: str | None = None,
    *,
    role: str | None = None,
    reasoning_content: str | None = None,
    reasoning: str | None = None,
    finish_reason: str | None = None,
    model: str = DEFAULT_MODEL,
    usage: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning_content is not None:
        delta["reasoning_content"] = reasoning_content
    if reasoning is not None:
        delta["reasoning"] = reasoning
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1764121234,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
        **extra,
    }


def event(payload: dict[str, Any] | str, *, event: str | None = None, newline: str = "\n") -> bytes:
    """One SSE event: ``data: <payload>`` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    head = f"event: {event}{newline}" if event is not None else ""
    return f"{head}data: {data}{newline}{newline}".encode()


def sse_events(
    tokens: Sequence[str],
    *,
    newline: str = "\n",
    model: str = DEFAULT_MODEL,
    role_first: bool = True,
    reasoning: Sequence[str] = (),
    reasoning_field: str = "reasoning_content",
    comments: bool = False,
    finish_reason: str | None = "stop",
    usage: str | None = "[]",
    done: bool = True,
) -> list[bytes]:
    """A whole streamed reply, one element per event.

    ``reasoning`` pieces come first in ``delta.<reasoning_field>``; ``usage``
    is the final chunk's ``choices``: ``"[]"``, ``"null"``, ``"missing"``, or
    None for no usage chunk; ``comments`` puts a ``: ping`` before every event.
    """
    events: list[bytes] = []
    if role_first:
        events.append(event(chunk("", role="assistant", model=model), newline=newline))
    for piece in reasoning:
        thought = chunk(model=model)
        thought["choices"][0]["delta"][reasoning_field] = piece
        events.append(event(thought, newline=newline))
    for token in tokens:
        events.append(event(chunk(token, model=model), newline=newline))
    if finish_reason is not None:
        events.append(event(chunk(finish_reason=finish_reason, model=model), newline=newline))
    if usage is not None:
        figures = {
            "prompt_tokens": 10,
            "completion_tokens": len(tokens),
            "total_tokens": 10 + len(tokens),
        }
        last = chunk(model=model, usage=figures)
        if usage == "[]":
            last["choices"] = []
        elif usage == "null":
            last["choices"] = None
        elif usage == "missing":
            del last["choices"]
        else:
            raise ValueError(f"usage must be '[]', 'null', 'missing' or None, got {usage!r}")
        events.append(event(last, newline=newline))
    if done:
        events.append(event("[DONE]", newline=newline))
    if comments:
        events = [piece for e in events for piece in (f": ping{newline}".encode(), e)]
    return events


def completion_json(content: str, *, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` (for servers that ignore ``stream``)."""
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def openai_error(message: str, kind: str = "server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def ollama_error(message: str) -> dict[str, Any]:
    """Ollama's non-200 body on its OpenAI endpoint."""
    return {"error": {"message": message, "type": "api_error", "param": None, "code": None}}


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def split_at(data: bytes, *offsets: int) -> list[bytes]:
    cuts = [0, *sorted(o for o in offsets if 0 < o < len(data)), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


# --- replies ---------------------------------------------------------------------


@attrs.frozen
class Pause:
    seconds: float


class Stall:
    """Wait (mid-stream) until ``deferred`` fires; ``release()`` fires it."""

    def __init__(self, deferred: Deferred[Any] | None = None) -> None:
        self.deferred: Deferred[Any] = deferred if deferred is not None else Deferred()

    def release(self) -> None:
        if not self.deferred.called:
            self.deferred.callback(None)


Piece = bytes | Pause | Stall


@attrs.frozen
class Stream:
    pieces: Sequence[Piece]
    end: str = attrs.field(
        default="finish", validator=attrs.validators.in_(("finish", "close", "hang"))
    )
    delay: float | None = None
    status: int = 200
    headers: dict[str, str] | None = None
    eager_headers: bool = True  # False: the headers wait for the first bytes piece


@attrs.frozen
class JSONReply:
    status: int
    body: Any
    headers: dict[str, str] | None = None


Reply = Stream | JSONReply


@attrs.define(eq=False)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    raw: bytes
    body: Any  # the parsed JSON, or None
    outcome: Deferred[str] = attrs.field(factory=Deferred)
    state: str = "open"  # then "finished", "disconnected" (the client went) or "closed" (we did)
    _waiting: tuple[Deferred[None], IDelayedCall | None] | None = None

    @property
    def disconnected(self) -> bool:
        return self.state == "disconnected"

    def _ended(self, state: str) -> None:
        if self.state not in ("open", "closing"):
            return
        self.state = state
        if self._waiting is not None:
            waiter, call = self._waiting
            self._waiting = None
            if call is not None and call.active():
                call.cancel()
            if not waiter.called:
                waiter.callback(None)
        self.outcome.callback(state)


# --- scenarios ---------------------------------------------------------------------


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if text else []


def _paced(tokens: Sequence[str], delay: float) -> list[Piece]:
    events = sse_events(tokens)
    if delay <= 0:
        return list(events)
    paced: list[Piece] = []
    for e in events:
        paced += [e, Pause(delay)]
    return paced


def _normal(fake: FakeLLM, request: RecordedRequest) -> Reply:
    return Stream(_paced(_words(NORMAL_REPLY), fake.token_delay))


def _slow(fake: FakeLLM, request: RecordedRequest) -> Reply:
    return Stream(_paced(_words(NORMAL_REPLY), fake.token_delay or 0.2))


def _fail(fake: FakeLLM, request: RecordedRequest) -> Reply:
    return JSONReply(500, openai_error("the fake backend failed on purpose"))


def _echo(fake: FakeLLM, request: RecordedRequest) -> Reply:
    messages = request.body.get("messages", []) if isinstance(request.body, dict) else []
    said = [
        m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"
    ]
    return Stream(_paced(_words(str(said[-1]) if said else "(nothing)"), fake.token_delay))


SCENARIOS: dict[str, Callable[[FakeLLM, RecordedRequest], Reply]] = {
    "normal": _normal,
    "slow": _slow,
    "fail": _fail,
    "echo": _echo,
}


# --- the server ----------------------------------------------------------------------


class _Tracking(WrappingFactory):
    """Counts the open TCP connections and tells when none is left."""

    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self.idle_waiters: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self.idle_waiters = self.idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeLLM) -> None:
        super().__init__()
        self._fake = fake

    def render(self, request: Request) -> Any:
        return self._fake._handle(request)


class FakeLLM:
    """See the module docstring."""

    def __init__(
        self,
        reactor: Any,
        *,
        scenario: str = "normal",
        token_delay: float = 0.0,
        models: Iterable[str] = (DEFAULT_MODEL,),
        api_key: str = "",
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        self.reactor = reactor
        self.scenario = scenario
        self.token_delay = token_delay
        self.models: list[str] = list(models)
        self.models_reply: Reply | None = None
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._arrival_waiters: list[Deferred[RecordedRequest]] = []
        self._factory = _Tracking(Site(_Root(self)))
        self._port: Any = None

    # control

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next chat requests, in order."""
        self._script.extend(replies)

    async def start(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        endpoint = TCP4ServerEndpoint(self.reactor, port, interface=interface)
        self._port = await endpoint.listen(self._factory)
        return self.port

    async def stop(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()

    @property
    def port(self) -> int:
        assert self._port is not None, "not started"
        return int(self._port.getHost().port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # what happened

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def model_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/models")]

    @property
    def disconnects(self) -> list[RecordedRequest]:
        """Requests whose client hung up before the response was finished."""
        return [r for r in self.requests if r.disconnected]

    @property
    def open_connections(self) -> int:
        return len(self._factory.protocols)

    def next_request(self) -> Deferred[RecordedRequest]:
        """Fires with the next request to arrive (any path)."""
        waiter: Deferred[RecordedRequest] = Deferred()
        self._arrival_waiters.append(waiter)
        return waiter

    def connections_closed(self) -> Deferred[None]:
        """Fires once no TCP connection to the fake is open."""
        waiter: Deferred[None] = Deferred()
        if not self._factory.protocols:
            waiter.callback(None)
        else:
            self._factory.idle_waiters.append(waiter)
        return waiter

    def stats(self) -> dict[str, int]:
        chats = self.chat_requests
        counts = dict.fromkeys(("finished", "disconnected", "closed", "open"), 0)
        for r in chats:
            counts["closed" if r.state == "closing" else r.state] += 1
        return {"requests": len(chats), **counts}

    # serving

    def _handle(self, request: Request) -> Any:
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method = (request.method or b"").decode("ascii", "replace")
        path = (request.path or b"").decode("utf-8", "replace")
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        record = RecordedRequest(method, path, headers, raw, body)
        self.requests.append(record)
        request.notifyFinish().addCallbacks(
            lambda _: record._ended("finished"),
            lambda _: record._ended("closed" if record.state == "closing" else "disconnected"),
        )
        reply = self._reply_for(record)
        Deferred.fromCoroutine(self._play(request, record, reply)).addErrback(
            lambda f: _log.failure("fake LLM reply failed", f)
        )
        waiters, self._arrival_waiters = self._arrival_waiters, []
        for waiter in waiters:
            waiter.callback(record)
        return NOT_DONE_YET

    def _reply_for(self, record: RecordedRequest) -> Reply:
        if self.api_key and record.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONReply(401, openai_error("Invalid API key", "invalid_request_error"))
        if record.path in ("/health", "/v1/health"):
            return JSONReply(200, {"status": "ok"})
        if record.path == "/_fake/stats":
            return JSONReply(200, self.stats())
        if record.path in ("/v1/models", "/models") and record.method == "GET":
            if self.models_reply is not None:
                return self.models_reply
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            return JSONReply(200, {"object": "list", "data": data})
        if record.path in ("/v1/chat/completions", "/chat/completions"):
            if record.method != "POST":
                return JSONReply(405, openai_error("use POST", "invalid_request_error"))
            if self._script:
                return self._script.popleft()
            return SCENARIOS[self.scenario](self, record)
        return JSONReply(404, openai_error(f"no route for {record.path}", "not_found"))

    async def _play(self, request: Request, record: RecordedRequest, reply: Reply) -> None:
        for name, value in (reply.headers or {}).items():
            request.setHeader(name, value)
        request.setResponseCode(reply.status)
        if isinstance(reply, JSONReply):
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            if reply.headers is None:
                request.setHeader("Content-Type", "application/json")
            request.setHeader("Content-Length", str(len(body)))
            request.write(body)
            request.finish()
            return
        if reply.headers is None:
            request.setHeader("Content-Type", "text/event-stream")
            request.setHeader("Cache-Control", "no-cache")
        if reply.eager_headers:
            request.write(b"")  # the headers go out now
        for piece in reply.pieces:
            if record.state != "open":
                return
            if isinstance(piece, bytes):
                request.write(piece)
                if reply.delay is not None:
                    await self._sleep(record, reply.delay)
            elif isinstance(piece, Pause):
                await self._sleep(record, piece.seconds)
            else:
                await self._stall(record, piece.deferred)
        if record.state != "open":
            return
        if reply.end == "finish":
            request.finish()
        elif reply.end == "close":
            record.state = "closing"
            assert request.transport is not None
            request.transport.loseConnection()

    def _sleep(self, record: RecordedRequest, seconds: float) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        call = self.reactor.callLater(seconds, waiter.callback, None)
        record._waiting = (waiter, call)
        return waiter

    def _stall(self, record: RecordedRequest, until: Deferred[Any]) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()

        def go_on(result: Any) -> Any:
            if not waiter.called:
                waiter.callback(None)
            return result

        record._waiting = (waiter, None)
        until.addBoth(go_on)
        return waiter


async def closed_port_url(reactor: Any) -> str:
    """A base URL on 127.0.0.1 where nothing listens (connections are refused)."""
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(WrappingFactory(Site(Resource())))
    number = port.getHost().port
    await port.stopListening()
    return f"http://127.0.0.1:{number}/v1"


# --- the subprocess ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakellm", description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="normal")
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between tokens (slow: 0.2)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", help="a model id to list (repeatable)")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args(argv)

    from twisted.internet import task

    async def serve(reactor: Any) -> None:
        fake = FakeLLM(
            reactor,
            scenario=args.scenario,
            token_delay=args.token_delay,
            models=args.model or (DEFAULT_MODEL,),
            api_key=args.api_key,
        )
        port = await fake.start(args.port, args.host)
        sys.stdout.write(f"listening on {port}\n")
        sys.stdout.flush()
        await Deferred()  # until killed

    task.react(lambda r: Deferred.fromCoroutine(serve(r)))


if __name__ == "__main__":
    main()
