"""The OpenAI-compatible chat client: LM Studio, Ollama, llama.cpp server, vLLM.

One :class:`LLMBackend` talks to one base URL (``http://host:port/v1``). Its
:meth:`~LLMBackend.stream` POSTs ``/chat/completions`` with ``stream: true`` and
hands each piece of reply text to ``on_delta`` as it arrives; the returned
:class:`Completion` holds the whole reply. Every failure is a
:class:`BackendError` whose ``code`` tells the caller what happened:

``unavailable``
    nothing was delivered: the connection failed or was refused, the server
    answered non-2xx (its JSON error message is passed on), or it reported an
    error or hung up before the first piece of text. Safe to fail over.
``interrupted``
    the stream broke (error event, hang-up) after text was delivered.
``timeout``
    a deadline passed (first byte, idle gap, total); ``started`` says whether
    text had been delivered.
``too_long``
    the response body passed ``Timeouts.max_bytes``.
``bad_response``
    the server answered 2xx with something that is neither an event stream of
    OpenAI chunks nor an OpenAI JSON reply.

``message`` is one line meant for a person: no traceback, no key. ``started``
and ``partial_text`` describe what ``on_delta`` received before the failure.

Every request gets a connection of its own guarded by four deadlines and a
byte cap (``bambid.httpclient``: connect, first byte, idle gap, total).
Cancelling the Deferred of a call in progress (``Deferred.fromCoroutine(
backend.stream(...)).cancel()``) aborts its TCP connection at once, which is
how every one of these servers learns to stop generating.

Reasoning never reaches ``on_delta``: ``delta.reasoning_content`` (llama.cpp,
DeepSeek), ``delta.reasoning`` (Ollama, LM Studio) and ``<think>…</think>``
inside ``content`` (even with the tags split across chunks) are dropped, and
so is whitespace before the first visible character.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from bambid.ai.sse import DEFAULT_MAX_LINE, Event, SSEError, SSEParser
from bambid.config import AIConfig
from bambid.httpclient import (
    BackendError,
    Exchange,
    JSONExchange,
    Timeouts,
    base_url,
    describe_error,
    one_line,
    request_headers,
)
from bambid.urls import redact_url

__all__ = [
    "BackendError",
    "Completion",
    "GenerationParams",
    "LLMBackend",
    "Timeouts",
]

_log = Logger()


# --- the public values ----------------------------------------------------------


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class GenerationParams:
    """Sampling parameters sent with every chat request."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0  # 0: not sent (not every server knows it)
    max_tokens: int = 512
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    @classmethod
    def from_config(cls, ai: AIConfig) -> GenerationParams:
        return cls(
            temperature=ai.temperature,
            top_p=ai.top_p,
            top_k=ai.top_k,
            max_tokens=ai.max_tokens,
            frequency_penalty=ai.frequency_penalty,
            presence_penalty=ai.presence_penalty,
            stop=tuple(ai.stop),
        )

    def payload(self) -> dict[str, Any]:
        """The request-body fields for these parameters."""
        body: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        if self.top_k > 0:
            body["top_k"] = self.top_k
        if self.stop:
            body["stop"] = list(self.stop)
        return body


@attrs.frozen
class Completion:
    text: str  # the reply, reasoning removed: exactly what on_delta received
    finish_reason: str | None
    usage: dict[str, int] | None
    model: str


# --- the backend ----------------------------------------------------------------


class LLMBackend:
    """One OpenAI-compatible server. Safe to share between concurrent callers."""

    def __init__(
        self,
        url: str,
        api_key: str,
        preferred_model: str,
        params: GenerationParams,
        timeouts: Timeouts,
        reactor: Any,
    ) -> None:
        self.url = base_url(url)
        self.params = params
        self.timeouts = timeouts
        self._api_key = api_key
        self._preferred = preferred_model
        self._reactor = reactor
        self._model: str | None = None

    def __repr__(self) -> str:
        return f"<LLMBackend {self.url}>"

    async def models(self) -> list[str]:
        """The model ids of ``GET {url}/models``, in the server's order."""
        exchange = JSONExchange(self._reactor, self.timeouts, self.url, self._api_key)
        try:
            document = await exchange.run(b"GET", f"{self.url}/models", self._headers(), None)
            return _model_ids(document, self.url)
        except BackendError:
            self._model = None
            raise

    async def resolve_model(self) -> str:
        """The model to ask for: the preferred id, else the first id containing
        it (case-insensitive), else the first listed. Cached until a failure."""
        if self._model is not None:
            return self._model
        ids = await self.models()
        model = _pick_model(ids, self._preferred)
        if model is None:
            raise BackendError("unavailable", f"the AI backend at {self.url} has no model loaded")
        if self._preferred and self._preferred.lower() not in model.lower():
            _log.warn(
                "AI backend {url} has no model like {preferred!r}; using {model!r}",
                url=self.url,
                preferred=self._preferred,
                model=model,
            )
        self._model = model
        return model

    async def health(self) -> dict[str, Any]:
        """Whether the model list can be fetched, and what it says. Never
        raises (except CancelledError when cancelled)."""
        began = self._reactor.seconds()
        report: dict[str, Any] = {
            "url": redact_url(self.url, mask=""),
            "reachable": False,
            "model": None,
            "models": 0,
            "latency_ms": 0.0,
            "error": None,
        }
        try:
            ids = await self.models()
        except CancelledError:
            raise
        except BackendError as e:
            report["error"] = e.message
        except Exception:
            _log.failure("health check of AI backend {url} failed", url=self.url)
            report["error"] = "the health check failed unexpectedly (see the server log)"
        else:
            model = _pick_model(ids, self._preferred)
            report.update(reachable=True, models=len(ids), model=model)
            if model is None:
                report["error"] = "no model loaded"
            else:
                self._model = model
        report["latency_ms"] = round((self._reactor.seconds() - began) * 1000.0, 1)
        return report

    async def stream(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> Completion:
        """Generate a reply to ``messages``, streaming its text to ``on_delta``."""
        try:
            model = await self.resolve_model()
        except BackendError as e:
            self._warn(e)
            raise
        body = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.params.payload(),
        }
        exchange = _ChatExchange(
            self._reactor, self.timeouts, self.url, self._api_key, model, on_delta
        )
        _log.debug("AI request to {url} with {model}", url=self.url, model=model)
        try:
            completion: Completion = await exchange.run(
                b"POST",
                f"{self.url}/chat/completions",
                self._headers("text/event-stream", json_body=True),
                json.dumps(body, ensure_ascii=False).encode("utf-8"),
            )
        except BackendError as e:
            self._model = None
            self._warn(e)
            raise
        return completion

    def _warn(self, error: BackendError) -> None:
        _log.warn(
            "AI backend {url} failed: {code}: {message}",
            url=self.url,
            code=error.code,
            message=error.message,
        )

    def _headers(self, accept: str = "application/json", *, json_body: bool = False) -> Headers:
        return request_headers(self._api_key, accept, json_body=json_body)


def _model_ids(document: Any, url: str) -> list[str]:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise BackendError(
            "bad_response", f"the AI backend at {url} answered /models in an unknown format"
        )
    return [
        entry["id"]
        for entry in data
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]
    ]


def _pick_model(ids: list[str], preferred: str) -> str | None:
    if not ids:
        return None
    if preferred:
        if preferred in ids:
            return preferred
        wanted = preferred.lower()
        for model in ids:
            if wanted in model.lower():
                return model
    return ids[0]


_SSE_STARTS = (b":", b"data", b"event", b"id", b"retry")


class _ChatExchange(Exchange):
    """A streamed chat completion. The body is sniffed: an event stream (the
    normal case) or one JSON document (an error, or a server that ignored
    ``stream: true``); anything else is a bad response."""

    def __init__(
        self,
        reactor: Any,
        timeouts: Timeouts,
        url: str,
        secret: str,
        model: str,
        on_delta: Callable[[str], None],
    ) -> None:
        super().__init__(reactor, timeouts, url, secret)
        self._model = model
        self._on_delta = on_delta
        self._mode = "sniff"  # then "sse" or "json"
        self._head = bytearray()
        self._sse = SSEParser(max_line=min(timeouts.max_bytes, DEFAULT_MAX_LINE))
        self._think = _ThinkFilter()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: dict[str, int] | None = None
        self._saw_chunk = False

    def _started(self) -> bool:
        return bool(self._parts)

    def _partial(self) -> str:
        return "".join(self._parts)

    def _on_data(self, data: bytes) -> None:
        if self._mode == "sniff":
            self._head += data
            head = bytes(self._head).lstrip()
            if not head:
                return
            if head[:1] in (b"{", b"["):
                self._mode = "json"
                return
            if not any(head.startswith(s) for s in _SSE_STARTS):
                if any(s.startswith(head) for s in _SSE_STARTS):
                    return  # too short to tell yet
                raise self._bad("did not answer with an event stream")
            self._mode = "sse"
            data, self._head = bytes(self._head), bytearray()
        if self._mode == "json":
            self._head += data
            return
        for event in self._parsed(self._sse.feed, data):
            self._event(event)
            if self._finished:
                return

    def _on_end(self, clean: bool) -> None:
        if self._mode == "json":
            if not clean:
                raise self._error(
                    "unavailable", f"the AI backend at {self._url} dropped the connection"
                )
            self._json_reply(bytes(self._head))
            return
        if self._mode == "sse" and clean:
            for event in self._parsed(self._sse.close):
                self._event(event)
                if self._finished:
                    return
        if self._finish_reason is not None:
            self._finish()  # no [DONE] (or usage), but the reply itself had ended
        elif self._parts:
            raise self._error("interrupted", "the AI backend stopped in the middle of the reply")
        elif self._saw_chunk or not bytes(self._head).strip():
            what = "closed the connection before replying"
            raise self._error("unavailable", f"the AI backend at {self._url} {what}")
        else:
            raise self._bad("did not answer with an event stream")

    def _parsed(self, step: Callable[..., list[Event]], *args: Any) -> list[Event]:
        try:
            return step(*args)
        except SSEError as e:
            message = f"the AI backend sent a broken stream: {e}"
            raise self._error("bad_response", message) from None

    def _event(self, event: Event) -> None:
        if event.event == "error":
            try:
                detail = describe_error(json.loads(event.data), self._secret)
            except ValueError:
                detail = one_line(event.data, self._secret)
            raise self._stream_error(detail)
        data = event.data.strip()
        if not data:
            return
        if data.startswith("[DONE]"):
            self._finish()
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise self._bad("sent an event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise self._bad("sent an event that is not a JSON object")
        self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("error") is not None:
            raise self._stream_error(describe_error(chunk["error"], self._secret))
        self._saw_chunk = True
        self._note(chunk)
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self._deliver(self._think.feed(content))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason

    def _note(self, document: dict[str, Any]) -> None:
        model = document.get("model")
        if isinstance(model, str) and model:
            self._model = model
        usage = _usage(document.get("usage"))
        if usage is not None:
            self._usage = usage

    def _json_reply(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            raise self._bad("did not answer with an event stream") from None
        if isinstance(document, dict) and document.get("error") is not None:
            detail = describe_error(document["error"], self._secret)
            raise self._error("unavailable", f"the AI backend at {self._url} failed: {detail}")
        choices = document.get("choices") if isinstance(document, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(document, dict) or not isinstance(content, str):
            raise self._bad("answered with JSON that is not a chat completion")
        self._note(document)
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        self._finish_reason = reason if isinstance(reason, str) else None
        self._deliver(self._think.feed(content))
        self._finish()

    def _deliver(self, text: str) -> None:
        if not self._parts:
            text = text.lstrip()
        if text:
            self._parts.append(text)
            self._on_delta(text)

    def _finish(self) -> None:
        self._deliver(self._think.flush())
        self._succeed(
            Completion("".join(self._parts), self._finish_reason, self._usage, self._model)
        )

    def _stream_error(self, detail: str) -> BackendError:
        code = "interrupted" if self._parts else "unavailable"
        message = f"the AI backend at {self._url} reported an error"
        return self._error(code, f"{message}: {detail}" if detail else message)

    def _bad(self, what: str) -> BackendError:
        return self._error("bad_response", f"the AI backend at {self._url} {what}")


# --- reading what the servers send ----------------------------------------------


class _ThinkFilter:
    """Removes ``<think>…</think>`` from streamed text, even with a tag split
    across pieces: a piece ending in what may be the start of a tag is held
    back until the next piece tells."""

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._inside = False
        self._held = ""

    def feed(self, text: str) -> str:
        text, self._held = self._held + text, ""
        visible: list[str] = []
        while text:
            tag = self.CLOSE if self._inside else self.OPEN
            at = text.find(tag)
            if at >= 0:
                if not self._inside:
                    visible.append(text[:at])
                text = text[at + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _tag_prefix_at_end(text, tag)
            if not self._inside:
                visible.append(text[: len(text) - keep])
            self._held = text[len(text) - keep :] if keep else ""
            break
        return "".join(visible)

    def flush(self) -> str:
        """At the end: text held back was not a tag after all (unless inside
        an unclosed think block, which is all reasoning)."""
        held, self._held = self._held, ""
        return "" if self._inside else held


def _tag_prefix_at_end(text: str, tag: str) -> int:
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    usage = {k: v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
    return usage or None
