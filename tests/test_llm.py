"""The OpenAI-compatible client against the fake server over real loopback
sockets: streaming, backend quirks, errors, deadlines, the byte cap,
cancellation, model resolution and health."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred

from bambid.ai.llm import (
    BackendError,
    Completion,
    GenerationParams,
    LLMBackend,
    Timeouts,
)
from bambid.config import AIConfig
from tests.fakellm import (
    LLAMACPP_LOADING,
    NORMAL_REPLY,
    FakeLLM,
    JSONReply,
    Pause,
    Stall,
    Stream,
    chunk,
    closed_port_url,
    completion_json,
    event,
    ollama_error,
    openai_error,
    split_at,
    split_every,
    sse_events,
)

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
# Generous deadlines for the tests that must not time out; small ones where a
# timeout is the point (the outcome is asserted, never the duration).
RELAXED = Timeouts(connect=5, first_byte=5, idle=5, total=20, max_bytes=1 << 20)
TIGHT = Timeouts(connect=5, first_byte=0.2, idle=0.2, total=20, max_bytes=1 << 20)


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = FakeLLM(reactor)
    await server.start()
    yield server
    await server.stop()


def backend(
    url: str | FakeLLM,
    *,
    timeouts: Timeouts = RELAXED,
    model: str = "",
    key: str = "",
    params: GenerationParams | None = None,
) -> LLMBackend:
    base = url.url if isinstance(url, FakeLLM) else url
    return LLMBackend(base, key, model, params or GenerationParams(), timeouts, reactor)


async def run(llm: LLMBackend) -> tuple[Completion, list[str]]:
    deltas: list[str] = []
    completion = await llm.stream(MESSAGES, deltas.append)
    assert completion.text == "".join(deltas)
    return completion, deltas


async def failure(llm: LLMBackend) -> tuple[BackendError, list[str]]:
    deltas: list[str] = []
    with pytest.raises(BackendError) as caught:
        await llm.stream(MESSAGES, deltas.append)
    error = caught.value
    assert error.partial_text == "".join(deltas)
    assert error.started == bool(deltas)
    return error, deltas


# --- streaming -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deltas_arrive_in_order(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events(["Hel", "lo", ",", " world"]), delay=0.0))
    completion, deltas = await run(backend(fake))
    assert deltas == ["Hel", "lo", ",", " world"]
    assert completion == Completion(
        "Hello, world",
        "stop",
        {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        "fake-model",
    )
    assert fake.chat_requests[0].state == "finished"
    await fake.connections_closed()  # one connection per request, none left open


@pytest_twisted.ensureDeferred
async def test_the_default_scenario_streams_a_whole_reply(fake: FakeLLM) -> None:
    completion, deltas = await run(backend(fake))
    assert completion.text == NORMAL_REPLY
    assert len(deltas) > 15


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
@pytest_twisted.ensureDeferred
async def test_any_byte_split(fake: FakeLLM, size: int) -> None:
    tokens = ["Ça", " va", " 🌍", " très", " bien", "…"]
    stream = b"".join(sse_events(tokens, newline="\r\n", comments=True))
    fake.script(Stream(split_every(stream, size), delay=0.0))
    completion, deltas = await run(backend(fake))
    assert deltas == tokens
    assert completion.usage is not None


@pytest_twisted.ensureDeferred
async def test_splits_inside_a_character_and_between_cr_and_lf(fake: FakeLLM) -> None:
    stream = b"".join(sse_events(["é", "🌍"], newline="\r\n"))
    crlf = stream.index(b"\r\n")
    emoji = stream.index("🌍".encode())
    fake.script(Stream(split_at(stream, crlf + 1, emoji + 1, emoji + 3), delay=0.0))
    completion, _ = await run(backend(fake))
    assert completion.text == "é🌍"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest_twisted.ensureDeferred
async def test_line_ends(fake: FakeLLM, newline: str) -> None:
    fake.script(Stream(sse_events(["a", "b"], newline=newline)))
    completion, _ = await run(backend(fake))
    assert completion.text == "ab"


@pytest_twisted.ensureDeferred
async def test_comments_and_pings_are_ignored(fake: FakeLLM) -> None:
    events = sse_events(["x", "y"])
    fake.script(Stream([b": ping\n\n", events[0], b":\n", *events[1:]]))
    completion, _ = await run(backend(fake))
    assert completion.text == "xy"


@pytest.mark.parametrize("choices", ["[]", "null", "missing"])
@pytest_twisted.ensureDeferred
async def test_usage_chunk_shapes(fake: FakeLLM, choices: str) -> None:
    fake.script(Stream(sse_events(["a"], usage=choices)))
    completion, _ = await run(backend(fake))
    assert completion.usage == {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    assert completion.finish_reason == "stop"


@pytest_twisted.ensureDeferred
async def test_no_usage_and_llama_cpp_usage_on_the_last_chunk(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events(["a"], usage=None)))
    completion, _ = await run(backend(fake))
    assert completion.usage is None
    last = chunk(finish_reason="length", usage={"prompt_tokens": 3}, timings={"prompt_n": 3})
    last["choices"][0]["delta"] = {}
    fake.script(Stream([event(chunk("b", role="assistant")), event(last), event("[DONE]")]))
    completion, _ = await run(backend(fake))
    assert (completion.text, completion.finish_reason) == ("b", "length")
    assert completion.usage == {"prompt_tokens": 3}


@pytest_twisted.ensureDeferred
async def test_role_chunk_with_null_content_and_unknown_keys(fake: FakeLLM) -> None:
    first = chunk(role="assistant", obfuscation="xyz", moderation={"flagged": False})
    first["choices"][0]["delta"]["content"] = None
    first["choices"][0]["delta"]["refusal"] = None
    fake.script(Stream([event(first), event(chunk("ok", service_tier="x")), event("[DONE]")]))
    completion, deltas = await run(backend(fake))
    assert deltas == ["ok"]
    assert completion.finish_reason is None


@pytest_twisted.ensureDeferred
async def test_the_model_named_by_the_chunks_is_reported(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events(["a"], model="qwen3:8b")))
    completion, _ = await run(backend(fake))
    assert completion.model == "qwen3:8b"


@pytest_twisted.ensureDeferred
async def test_done_without_a_blank_line_and_end_without_done(fake: FakeLLM) -> None:
    fake.script(Stream([*sse_events(["a"], done=False), b"data: [DONE]"]))
    assert (await run(backend(fake)))[0].text == "a"
    fake.script(Stream(sse_events(["b"], done=False)))  # finish_reason, then the body ends
    assert (await run(backend(fake)))[0].text == "b"


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_ends_after_done_is_cut_off(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events(["a"]), end="hang"))
    completion, _ = await run(backend(fake, timeouts=TIGHT))
    assert completion.text == "a"  # at [DONE], without waiting for the body to end
    assert (await fake.chat_requests[0].outcome) == "disconnected"  # after the idle timeout


@pytest_twisted.ensureDeferred
async def test_a_non_streamed_json_reply_is_accepted(fake: FakeLLM) -> None:
    fake.script(JSONReply(200, completion_json("<think>hmm</think>Whole reply.")))
    completion, deltas = await run(backend(fake))
    assert deltas == ["Whole reply."]
    assert completion.finish_reason == "stop"


# --- reasoning -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest_twisted.ensureDeferred
async def test_reasoning_fields_are_not_the_reply(fake: FakeLLM, field: str) -> None:
    stream = sse_events(["The", " answer"], reasoning=["Let me", " think"], reasoning_field=field)
    fake.script(Stream(stream))
    completion, deltas = await run(backend(fake))
    assert deltas == ["The", " answer"]
    assert "think" not in completion.text


@pytest.mark.parametrize(
    "tokens",
    [
        ["<think>secret plan</think>\n\nHello", " there"],
        ["<thi", "nk>secret", " plan</th", "ink>", "\n\nHello there"],
        ["<", "think", ">", "secret plan", "<", "/", "think>", "Hello", " there"],
        ["<think>\nsecret plan\n</think>\nHello there"],
    ],
)
@pytest_twisted.ensureDeferred
async def test_inline_think_is_removed_even_split(fake: FakeLLM, tokens: list[str]) -> None:
    fake.script(Stream(sse_events(tokens), delay=0.0))
    completion, _ = await run(backend(fake))
    assert completion.text == "Hello there"


@pytest_twisted.ensureDeferred
async def test_text_that_only_looks_like_a_tag_is_kept(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events(["a <", "b> <thin", "g> 1 < 2 <th"])))
    completion, _ = await run(backend(fake))
    assert completion.text == "a <b> <thing> 1 < 2 <th"


@pytest_twisted.ensureDeferred
async def test_an_unclosed_think_block_is_all_reasoning(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events(["Hi", " <think>never", " closed"])))
    completion, _ = await run(backend(fake))
    assert completion.text == "Hi "


# --- errors before the reply -------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (JSONReply(500, openai_error("CUDA out of memory")), "CUDA out of memory"),
        (JSONReply(404, ollama_error('model "llama9" not found, try pulling it first')), "llama9"),
        (JSONReply(503, LLAMACPP_LOADING), "Loading model"),
        (JSONReply(400, {"object": "error", "message": "vLLM says no", "code": 400}), "vLLM"),
        (JSONReply(502, b"<html>Bad Gateway</html>"), "HTTP 502"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_http_errors_are_unavailable_with_the_backend_message(
    fake: FakeLLM, reply: JSONReply, expected: str
) -> None:
    fake.script(reply)
    error, _ = await failure(backend(fake))
    assert error.code == "unavailable"
    assert expected in error.message
    assert f"HTTP {reply.status}" in error.message
    assert "<html>" not in error.message


@pytest_twisted.ensureDeferred
async def test_a_long_multi_line_error_becomes_one_short_line(fake: FakeLLM) -> None:
    trace = "boom\nTraceback (most recent call last):\n  File x\n" + "y" * 1000
    fake.script(JSONReply(500, openai_error(trace)))
    error, _ = await failure(backend(fake))
    assert "Traceback" not in error.message
    assert "boom" in error.message
    assert len(error.message) < 400


@pytest_twisted.ensureDeferred
async def test_the_api_key_never_appears_in_a_message(fake: FakeLLM) -> None:
    fake.script(JSONReply(401, openai_error("Incorrect API key provided: sk-secret-123")))
    error, _ = await failure(backend(fake, key="sk-secret-123"))
    assert "sk-secret-123" not in error.message
    assert "HTTP 401" in error.message


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_unavailable() -> None:
    url = await closed_port_url(reactor)
    llm = backend(url, model="any")
    with pytest.raises(BackendError) as caught:
        await llm.stream(MESSAGES, lambda text: None)
    assert caught.value.code == "unavailable"
    assert "refused" in caught.value.message
    assert not caught.value.started


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html><body>Welcome to nginx</body></html>",
        b"Hello, this is not a stream at all\n\n",
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
        b"{ truncated",
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_is_a_bad_response(fake: FakeLLM, body: bytes) -> None:
    fake.script(Stream([body], headers={"Content-Type": "text/html"}))
    error, _ = await failure(backend(fake))
    assert error.code == "bad_response"
    assert not error.started


@pytest_twisted.ensureDeferred
async def test_garbage_after_text_keeps_the_partial_reply(fake: FakeLLM) -> None:
    fake.script(Stream([*sse_events(["Hi"], done=False)[:2], b"data: {oops\n\n"]))
    error, deltas = await failure(backend(fake))
    assert (error.code, error.partial_text) == ("bad_response", "Hi")


@pytest.mark.parametrize("form", ["data", "event"])
@pytest_twisted.ensureDeferred
async def test_an_error_before_the_first_token_is_unavailable(fake: FakeLLM, form: str) -> None:
    role = sse_events([])[0]
    if form == "data":
        bad = event(openai_error("context length exceeded"))
    else:
        bad = event({"message": "context length exceeded"}, event="error")
    fake.script(Stream([role, bad], end="hang"))
    error, _ = await failure(backend(fake))
    assert (error.code, error.started) == ("unavailable", False)
    assert "context length exceeded" in error.message
    assert (await fake.chat_requests[0].outcome) == "disconnected"


@pytest_twisted.ensureDeferred
async def test_a_hang_up_before_the_first_token_is_unavailable(fake: FakeLLM) -> None:
    fake.script(Stream(sse_events([], done=False, finish_reason=None, usage=None), end="close"))
    error, _ = await failure(backend(fake))
    assert (error.code, error.started) == ("unavailable", False)


# --- errors during the reply -------------------------------------------------------


@pytest.mark.parametrize("form", ["data", "event"])
@pytest_twisted.ensureDeferred
async def test_an_error_mid_stream_is_interrupted(fake: FakeLLM, form: str) -> None:
    head = sse_events(["Once", " upon"], done=False, finish_reason=None, usage=None)
    if form == "data":
        bad = event({"error": {"message": "model crashed", "code": 500}})
    else:
        bad = event("model crashed", event="error")
    fake.script(Stream([*head, bad], end="hang"))
    error, deltas = await failure(backend(fake))
    assert (error.code, error.started, error.partial_text) == ("interrupted", True, "Once upon")
    assert "model crashed" in error.message


@pytest_twisted.ensureDeferred
async def test_a_hang_up_mid_stream_is_interrupted(fake: FakeLLM) -> None:
    head = sse_events(["Once", " upon"], done=False, finish_reason=None, usage=None)
    fake.script(Stream(head, end="close"))
    error, _ = await failure(backend(fake))
    assert (error.code, error.partial_text) == ("interrupted", "Once upon")
    assert fake.chat_requests[0].state == "closed"


@pytest_twisted.ensureDeferred
async def test_a_stall_before_the_first_byte_times_out(fake: FakeLLM) -> None:
    fake.script(Stream([Stall()]))  # headers, then nothing
    error, _ = await failure(backend(fake, timeouts=TIGHT))
    assert (error.code, error.started, error.partial_text) == ("timeout", False, "")
    assert (await fake.chat_requests[0].outcome) == "disconnected"


@pytest_twisted.ensureDeferred
async def test_a_stall_mid_stream_times_out_with_the_partial_text(fake: FakeLLM) -> None:
    head = sse_events(["Once", " upon"], done=False, finish_reason=None, usage=None)
    fake.script(Stream([*head, Stall(), b"never sent"]))
    error, _ = await failure(backend(fake, timeouts=TIGHT))
    assert (error.code, error.started, error.partial_text) == ("timeout", True, "Once upon")
    assert (await fake.chat_requests[0].outcome) == "disconnected"


@pytest_twisted.ensureDeferred
async def test_pings_do_not_keep_a_reply_alive_past_the_total(fake: FakeLLM) -> None:
    pings: list[bytes | Pause] = [p for _ in range(200) for p in (b": ping\n\n", Pause(0.01))]
    fake.script(Stream([sse_events(["a"])[1], *pings]))
    timeouts = Timeouts(connect=5, first_byte=5, idle=5, total=0.2, max_bytes=1 << 20)
    error, _ = await failure(backend(fake, timeouts=timeouts))
    assert (error.code, error.partial_text) == ("timeout", "a")
    assert "finish" in error.message


@pytest_twisted.ensureDeferred
async def test_the_byte_cap(fake: FakeLLM) -> None:
    tokens = ["word "] * 400
    fake.script(Stream(sse_events(tokens), delay=0.0))
    capped = Timeouts(connect=5, first_byte=5, idle=5, total=20, max_bytes=4096)
    error, deltas = await failure(backend(fake, timeouts=capped))
    assert error.code == "too_long"
    assert error.started and 0 < len(deltas) < 400
    assert (await fake.chat_requests[0].outcome) == "disconnected"


@pytest_twisted.ensureDeferred
async def test_one_absurd_line_hits_the_cap(fake: FakeLLM) -> None:
    fake.script(Stream([b"data: " + b"x" * 10000]))
    capped = Timeouts(connect=5, first_byte=5, idle=5, total=20, max_bytes=4096)
    error, _ = await failure(backend(fake, timeouts=capped))
    assert error.code == "too_long"


@pytest_twisted.ensureDeferred
async def test_a_line_over_a_mebibyte_is_a_bad_response(fake: FakeLLM) -> None:
    fake.script(Stream([b"data: " + b"x" * (1 << 20) + b"\n\n"], end="hang"))
    error, _ = await failure(backend(fake, timeouts=Timeouts(max_bytes=4 << 20)))
    assert error.code == "bad_response"
    assert (await fake.chat_requests[0].outcome) == "disconnected"


# --- cancellation -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cancel_mid_stream_closes_the_upstream_connection(fake: FakeLLM) -> None:
    head = sse_events(["Once", " upon"], done=False, finish_reason=None, usage=None)
    fake.script(Stream([*head, Stall()]))
    first: Deferred[None] = Deferred()
    deltas: list[str] = []

    def on_delta(text: str) -> None:
        deltas.append(text)
        if text == " upon":
            first.callback(None)

    streaming = Deferred.fromCoroutine(backend(fake).stream(MESSAGES, on_delta))
    await first
    streaming.cancel()
    with pytest.raises(CancelledError):
        await streaming
    assert (await fake.chat_requests[0].outcome) == "disconnected"
    assert fake.disconnects == fake.chat_requests
    await fake.connections_closed()
    assert deltas == ["Once", " upon"]


@pytest.mark.parametrize("eager_headers", [False, True])
@pytest_twisted.ensureDeferred
async def test_cancel_before_the_first_byte_closes_the_connection(
    fake: FakeLLM, eager_headers: bool
) -> None:
    fake.script(Stream([Stall()], eager_headers=eager_headers))
    llm = backend(fake)
    await llm.resolve_model()
    arrived = fake.next_request()
    streaming = Deferred.fromCoroutine(llm.stream(MESSAGES, lambda text: None))
    request = await arrived
    streaming.cancel()
    with pytest.raises(CancelledError):
        await streaming
    assert (await request.outcome) == "disconnected"
    await fake.connections_closed()


@pytest_twisted.ensureDeferred
async def test_cancel_while_connecting_or_resolving_is_clean(fake: FakeLLM) -> None:
    streaming = Deferred.fromCoroutine(backend(fake).stream(MESSAGES, lambda text: None))
    streaming.cancel()
    with pytest.raises(CancelledError):
        await streaming
    await fake.connections_closed()
    assert fake.chat_requests == []


# --- the request ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_request_body(fake: FakeLLM) -> None:
    params = GenerationParams(
        temperature=0.5,
        top_p=0.9,
        top_k=0,
        max_tokens=64,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        stop=("\nUser:",),
    )
    await run(backend(fake, params=params))
    body = fake.chat_requests[0].body
    assert body == {
        "model": "fake-model",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": ["\nUser:"],
    }
    assert fake.chat_requests[0].headers["content-type"] == "application/json"
    await run(backend(fake, params=GenerationParams(top_k=40)))
    body = fake.chat_requests[1].body
    assert body["top_k"] == 40
    assert "stop" not in body


def test_params_and_timeouts_from_config() -> None:
    ai = AIConfig(top_k=20, stop=["###"], idle_timeout=7.0, max_reply_bytes=2048)
    params = GenerationParams.from_config(ai)
    assert (params.top_k, params.stop, params.temperature) == (20, ("###",), ai.temperature)
    timeouts = Timeouts.from_config(ai)
    assert (timeouts.idle, timeouts.max_bytes, timeouts.connect) == (7.0, 2048, ai.connect_timeout)


@pytest_twisted.ensureDeferred
async def test_authorization_only_with_a_key(fake: FakeLLM) -> None:
    await run(backend(fake))
    assert all("authorization" not in r.headers for r in fake.requests)
    await run(backend(fake, key="sk-local"))
    assert [r.headers.get("authorization") for r in fake.requests[2:]] == ["Bearer sk-local"] * 2


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_unavailable(fake: FakeLLM) -> None:
    fake.api_key = "right"
    error, _ = await failure(backend(fake, key="wrong"))
    assert error.code == "unavailable"
    assert "HTTP 401" in error.message


def test_the_url_is_normalised_and_loses_credentials() -> None:
    llm = backend("http://user:pw@127.0.0.1:1234/v1/")
    assert llm.url == "http://127.0.0.1:1234/v1"


# --- models -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ("qwen3:8b", "qwen3:8b"),
        ("QWEN3", "qwen3:14b"),
        ("gemma", "llama-3.1-8b"),
        ("", "llama-3.1-8b"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_model_resolution(fake: FakeLLM, preferred: str, expected: str) -> None:
    fake.models = ["llama-3.1-8b", "qwen3:14b", "qwen3:8b"]
    llm = backend(fake, model=preferred)
    assert await llm.models() == fake.models
    assert await llm.resolve_model() == expected
    await run(llm)
    assert fake.chat_requests[0].body["model"] == expected


@pytest_twisted.ensureDeferred
async def test_no_model_is_unavailable(fake: FakeLLM) -> None:
    fake.models = []
    error, _ = await failure(backend(fake))
    assert error.code == "unavailable"
    assert "no model" in error.message
    assert fake.chat_requests == []


@pytest_twisted.ensureDeferred
async def test_a_broken_model_list(fake: FakeLLM) -> None:
    fake.models_reply = JSONReply(200, {"models": "?"})
    assert (await failure(backend(fake)))[0].code == "bad_response"
    fake.models_reply = JSONReply(503, LLAMACPP_LOADING)
    error, _ = await failure(backend(fake))
    assert (error.code, "Loading model" in error.message) == ("unavailable", True)


@pytest_twisted.ensureDeferred
async def test_the_model_is_cached_and_resolved_again_after_a_failure(fake: FakeLLM) -> None:
    llm = backend(fake)
    await run(llm)
    await run(llm)
    assert len(fake.model_requests) == 1
    fake.script(JSONReply(500, openai_error("boom")))
    await failure(llm)
    fake.models = ["other-model"]
    await run(llm)
    assert len(fake.model_requests) == 2
    assert fake.chat_requests[-1].body["model"] == "other-model"


# --- health -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_reachable(fake: FakeLLM) -> None:
    fake.models = ["a", "b"]
    report = await backend(fake, model="b").health()
    assert report["latency_ms"] >= 0
    del report["latency_ms"]
    assert report == {"url": fake.url, "reachable": True, "model": "b", "models": 2, "error": None}


@pytest_twisted.ensureDeferred
async def test_health_without_models(fake: FakeLLM) -> None:
    fake.models = []
    report = await backend(fake).health()
    assert (report["reachable"], report["model"], report["models"]) == (True, None, 0)
    assert report["error"]


@pytest_twisted.ensureDeferred
async def test_health_unreachable() -> None:
    url = await closed_port_url(reactor)
    report = await backend(url).health()
    assert (report["reachable"], report["model"], report["url"]) == (False, None, url)
    assert "refused" in report["error"]


@pytest_twisted.ensureDeferred
async def test_health_of_a_loading_llama_cpp(fake: FakeLLM) -> None:
    fake.models_reply = JSONReply(503, LLAMACPP_LOADING)
    report = await backend(fake).health()
    assert report["reachable"] is False
    assert "Loading model" in report["error"]


# --- the fake as a subprocess ----------------------------------------------------------------


def _post(port: int, text: str) -> list[dict[str, Any]]:
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        lines = response.read().decode().splitlines()
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def _content(chunks: list[dict[str, Any]]) -> str:
    choices = [c["choices"][0] for c in chunks if c.get("choices")]
    return "".join(choice["delta"].get("content") or "" for choice in choices)


@pytest.mark.parametrize(
    ("scenario", "check"),
    [
        ("echo", lambda port: _content(_post(port, "say this back")) == "say this back"),
        ("normal", lambda port: _content(_post(port, "hi")) == NORMAL_REPLY),
    ],
)
def test_the_fake_runs_as_a_subprocess(scenario: str, check: Callable[[int], bool]) -> None:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakellm", "--scenario", scenario],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("listening on ")
        port = int(first.split()[-1])
        assert check(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=10) as r:
            assert json.load(r)["finished"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)
