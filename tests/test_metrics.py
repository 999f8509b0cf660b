"""``/metrics`` on a real service: the Prometheus text parses, real activity
(a chat message over the WebSocket, a companion reply from the fake LLM, a
trigger firing in it, an espeak-ng synthesis, an error frame, a 5xx) moves
the counters and histograms, and access follows ``metrics.allow``,
``metrics.token`` and ``metrics.enabled``. Plus the pieces alone: the
storage wrapper, bounded labels, the ``metrics.allow`` check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock

from bambid import __version__
from bambid import config as configuration
from bambid.metrics import MAX_TYPES, Metrics, TimedStorage
from bambid.models import Account
from bambid.storage import Storage
from bambid.storage.interface import DuplicateError, StorageError
from bambid.storage.sqlite import SQLiteStorage
from tests import wsclient
from tests.chatsupport import add_person, chat_server
from tests.companionsupport import companion_server, eventually, fake_llm, until
from tests.conftest import Running
from tests.fakellm import Stream, sse_events

#: Families every scrape has (samples or not).
REQUIRED = {
    "bambid_websocket_connections",
    "bambid_websocket_messages",
    "bambid_chat_messages",
    "bambid_ai_requests",
    "bambid_ai_first_token_seconds",
    "bambid_ai_reply_seconds",
    "bambid_ai_queue_depth",
    "bambid_ai_backend_up",
    "bambid_tts_seconds",
    "bambid_tts_backend_up",
    "bambid_trigger_fires",
    "bambid_storage_seconds",
    "bambid_errors",
    "bambid_info",
    "process_resident_memory_bytes",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    response = await treq.get(url, **kw)
    body = await response.content()
    headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body


async def scrape(running: Running, **kw: Any) -> tuple[set[str], Samples]:
    """The family names and every sample of ``/metrics``."""
    code, headers, body = await get(running.http + "/metrics", **kw)
    assert code == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(body.decode()))
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families
        for s in family.samples
    }
    return {family.name for family in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest_twisted.ensureDeferred
async def test_scrape_from_loopback_parses(running: Running) -> None:
    names, samples = await scrape(running)
    assert names >= REQUIRED, REQUIRED - names
    assert value(samples, "bambid_info", version=__version__) == 1
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "bambid_websocket_connections") == 0
    assert value(samples, "bambid_ai_queue_depth", state="waiting") == 0
    # Timed at start-up: storage was opened and pinged through the wrapper.
    assert value(samples, "bambid_storage_seconds_count", operation="open") == 1

    async def espeak_checked() -> bool:
        # The default espeak-ng backend is checked in the background from the start.
        _, now = await scrape(running)
        return value(now, "bambid_tts_backend_up", backend="espeak") == 1

    await eventually(espeak_checked, turns=2000)


@pytest_twisted.ensureDeferred
async def test_activity_moves_the_counters(tmp_path: Path) -> None:
    reply = ["Take a deep breath. ", "Let your shoulders drop."]
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        _, before = await scrape(r)
        url = fake.url
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        await storage.ensure_profile("Ada", 0.0)
        await storage.add_xp("Ada", 1000)  # level 1: triggers
        client = await wsclient.connect(r.ws, cookie=token)
        client.send_json({"type": "hello"})
        await until(client, "welcome")

        # A public chat message.
        client.send_json({"type": "room.join", "id": "j", "room": "lobby"})
        await until(client, "presence")
        client.send_json({"type": "chat.send", "id": "c", "room": "lobby", "text": "hello all"})
        await until(client, "chat.message")
        # An error frame.
        client.send_json({"type": "no.such.thing", "id": "e"})
        error = await until(client, "error")
        assert error[-1]["code"] == "bad_request"
        # A trigger switched on, then a companion reply that fires it.
        client.send_json({"type": "triggers.set", "id": "t", "enabled": ["deep-breath"]})
        await until(client, "triggers.state")
        fake.script(Stream(sse_events(reply)))
        client.send_json({"type": "ai.send", "id": "a", "text": "breathe with me"})
        frames = await until(client, "ai.done")
        assert [f for f in frames if f["type"] == "trigger.fired"]
        # An espeak-ng synthesis over HTTP.
        code, _, _ = await get(r.http + "/api/tts?text=Breathe%20out%20slowly.")
        assert code == 200

        async def reply_counted() -> bool:
            _, now = await scrape(r)
            return value(now, "bambid_ai_requests_total", outcome="completed") == 1

        await eventually(reply_counted, turns=2000)
        _, after = await scrape(r)
        client.sendClose()
        await client.closed

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("bambid_chat_messages_total") == 1
    assert moved("bambid_websocket_messages_total", direction="in", type="chat.send") == 1
    assert moved("bambid_websocket_messages_total", direction="in", type="other") == 1
    assert moved("bambid_websocket_messages_total", direction="out", type="chat.message") == 1
    assert moved("bambid_websocket_messages_total", direction="out", type="ai.delta") == 2
    assert moved("bambid_errors_total", kind="ws_bad_request") == 1
    assert moved("bambid_ai_requests_total", outcome="completed") == 1
    assert moved("bambid_ai_first_token_seconds_count") == 1
    assert moved("bambid_ai_reply_seconds_count") == 1
    assert moved("bambid_ai_reply_seconds_sum") > 0
    assert moved("bambid_trigger_fires_total", source="ai") == 1
    assert moved("bambid_tts_seconds_count", backend="espeak", outcome="ok") == 1
    assert moved("bambid_storage_seconds_count", operation="append_chat_message") == 1
    assert moved("bambid_storage_seconds_count", operation="save_conversation") >= 2
    assert moved("bambid_http_responses_total", status="2xx") >= 2  # scrapes, /api/tts
    assert value(after, "bambid_websocket_connections") == 1
    # The fake LLM answered its health check at start: the backend is up.
    assert value(after, "bambid_ai_backend_up", url=url) == 1
    assert value(after, "bambid_ai_queue_depth", state="running") == 0


@pytest_twisted.ensureDeferred
async def test_server_errors_and_storage_failures_are_counted(running: Running) -> None:
    await running.service.storage.close()
    code, _, _ = await get(running.http + "/health/api")
    assert code == 503
    _, samples = await scrape(running)
    assert value(samples, "bambid_errors_total", kind="http_5xx") == 1
    assert value(samples, "bambid_http_responses_total", status="5xx") == 1
    assert value(samples, "bambid_errors_total", kind="storage") >= 1


# -- access -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_address_outside_the_allowlist_needs_the_token(tmp_path: Path) -> None:
    metrics = {"allow": ["10.0.0.0/8", "fd00::/8"], "token": "s3cret-token"}
    async with chat_server(tmp_path, metrics=metrics) as r:
        url = r.http + "/metrics"
        code, headers, body = await get(url)
        assert code == 403
        assert headers["content-type"].startswith("application/json")
        assert b'"error":"forbidden"' in body.replace(b" ", b"")
        assert b"bambid_" not in body
        code, _, body = await get(url, headers={"Authorization": "Bearer s3cret-token"})
        assert code == 200 and b"bambid_info" in body
        for wrong in ("Bearer s3cret-tokeN", "Bearer ", "Basic s3cret-token", "s3cret-token"):
            code, _, _ = await get(url, headers={"Authorization": wrong})
            assert code == 403, wrong


@pytest_twisted.ensureDeferred
async def test_a_request_relayed_by_a_proxy_needs_the_token(tmp_path: Path) -> None:
    # Behind nginx on the same machine every request comes from 127.0.0.1.
    async with chat_server(tmp_path, metrics={"token": "s3cret-token"}) as r:
        url = r.http + "/metrics"
        assert (await get(url))[0] == 200
        for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
            code, _, _ = await get(url, headers={header: "203.0.113.9"})
            assert code == 403, header
        relayed = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer s3cret-token"}
        assert (await get(url, headers=relayed))[0] == 200


@pytest_twisted.ensureDeferred
async def test_without_a_token_only_the_allowlist_counts(tmp_path: Path) -> None:
    async with chat_server(tmp_path, metrics={"allow": ["192.0.2.0/24"]}) as r:
        code, _, _ = await get(r.http + "/metrics", headers={"Authorization": "Bearer "})
        assert code == 403
    async with chat_server(tmp_path, metrics={"allow": ["127.0.0.0/8"]}) as r:
        code, _, _ = await get(r.http + "/metrics")
        assert code == 200


@pytest_twisted.ensureDeferred
async def test_disabled_metrics_are_not_found(tmp_path: Path) -> None:
    async with chat_server(tmp_path, metrics={"enabled": False}) as r:
        code, _, body = await get(r.http + "/metrics")
        assert code == 404
        assert b"bambid_" not in body


def test_a_bad_network_in_the_allowlist_is_a_config_error() -> None:
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(None, {"BAMBID_METRICS_ALLOW": '["127.0.0.1/32", "localhost"]'})
    assert str(caught.value).startswith("metrics.allow: ")
    assert "'localhost'" in str(caught.value)
    loaded = configuration.load(None, {"BAMBID_METRICS_ALLOW": '["10.1.2.3", "::1/128"]'})
    assert loaded.metrics.allow == ["10.1.2.3", "::1/128"]


# -- the pieces ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_timed_storage_is_a_storage_that_reports_every_call(tmp_path: Path) -> None:
    clock = Clock()
    inner = SQLiteStorage(tmp_path / "t.sqlite3", IReactorFromThreads(reactor))
    storage = TimedStorage.around(inner, clock)
    assert isinstance(storage, Storage)
    assert storage.backend == "sqlite"
    assert storage.path == inner.path  # the backend's own attributes
    calls: list[tuple[str, float, type[BaseException] | None]] = []
    storage.observers.append(lambda op, s, e: calls.append((op, s, type(e) if e else None)))
    await storage.open()
    try:
        await storage.create_account(Account("Bo", "not-a-hash", "user", 0.0))
        assert (await storage.get_account("bo")) is not None
        with pytest.raises(DuplicateError):
            await storage.create_account(Account("Bo", "not-a-hash", "user", 0.0))
    finally:
        await storage.close()
    assert calls == [
        ("open", 0.0, None),
        ("create_account", 0.0, None),
        ("get_account", 0.0, None),
        ("create_account", 0.0, DuplicateError),
        ("close", 0.0, None),
    ]
    with pytest.raises(StorageError):
        await storage.ping()  # closed: the failure goes through, and is reported
    assert calls[-1][0] == "ping" and calls[-1][2] is not None


def test_client_message_types_are_bounded() -> None:
    metrics = Metrics(Clock())
    metrics.known_type = lambda type: type == "chat.send"
    for type in ("chat.send", "x" * 200, "whatever"):
        metrics.frame("in", type)
    for n in range(MAX_TYPES + 5):
        metrics.frame("out", f"server.type{n}")
    families = list(text_string_to_metric_families(metrics.exposition(None)[0].decode()))
    (messages,) = [f for f in families if f.name == "bambid_websocket_messages"]
    counted = {
        (s.labels["direction"], s.labels["type"]): s.value
        for s in messages.samples
        if s.name.endswith("_total")
    }
    assert counted[("in", "chat.send")] == 1
    assert counted[("in", "other")] == 2
    assert counted[("out", "other")] == 5
    assert len([k for k in counted if k[0] == "out"]) == MAX_TYPES + 1


def test_each_service_has_its_own_registry() -> None:
    one, two = Metrics(Clock()), Metrics(Clock())
    one.chat_messages.inc()
    assert one.registry is not two.registry
    assert two.registry.get_sample_value("bambid_chat_messages_total") == 0
    assert one.registry.get_sample_value("bambid_chat_messages_total") == 1
