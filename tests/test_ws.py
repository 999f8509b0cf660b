"""The WebSocket foundation over a real loopback port, in this process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from bambid.ws.dispatch import ClientError, Connection
from tests import wsclient
from tests.conftest import Running


async def greeted(url: str) -> wsclient.TestClientProtocol:
    client = await wsclient.connect(url)
    assert (await client.request({"type": "hello"}))["type"] == "welcome"
    return client


@pytest_twisted.ensureDeferred
async def test_anything_before_hello_is_refused(running: Running) -> None:
    async def noop(connection: Connection, message: Mapping[str, Any]) -> None:
        connection.send("noop")

    running.service.dispatcher.register("test.noop", noop)
    client = await wsclient.connect(running.ws)
    error = await client.request({"type": "test.noop", "id": 1})
    assert (error["code"], error["id"]) == ("hello_required", 1)
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_hello_is_answered_with_welcome(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    welcome = await client.request({"type": "hello", "protocol": 1, "id": "h1"})
    assert welcome["type"] == "welcome"
    assert welcome["id"] == "h1"
    assert welcome["server"] == "bambid"
    assert welcome["protocol"] == 1
    assert welcome["version"]
    assert isinstance(welcome["server_time"], float)
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_unsupported_protocol_is_refused(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    error = await client.request({"type": "hello", "protocol": 99, "id": 7})
    assert error == {
        "type": "error",
        "id": 7,
        "code": "unsupported_protocol",
        "message": error["message"],
    }
    client.sendClose()
    await client.closed


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[1, 2]",
        b'"hello"',
        b"{}",
        b'{"type": 5}',
        b'{"type": ""}',
        b'{"type": "no.such.thing"}',
        b'{"type": "hello", "id": {"x": 1}}',
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_frames_get_bad_request_and_the_connection_stays_open(
    running: Running, frame: bytes
) -> None:
    client = await wsclient.connect(running.ws)
    client.sendMessage(frame, isBinary=False)
    error = await client.next()
    assert error["type"] == "error"
    assert error["code"] == "bad_request"
    assert error["message"]
    welcome = await client.request({"type": "hello"})
    assert welcome["type"] == "welcome"
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_binary_frames_get_bad_request(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    client.sendMessage(b"\x00\x01", isBinary=True)
    error = await client.next()
    assert error["code"] == "bad_request"
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_unknown_type_echoes_the_id(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    error = await client.request({"type": "nope", "id": "x-1"})
    assert (error["code"], error["id"]) == ("bad_request", "x-1")
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_handler_failure_is_an_internal_error_frame(running: Running) -> None:
    async def explode(connection: Connection, message: Mapping[str, Any]) -> None:
        raise RuntimeError("secret detail")

    running.service.dispatcher.register("test.explode", explode)
    client = await greeted(running.ws)
    error = await client.request({"type": "test.explode", "id": 3})
    assert error == {
        "type": "error",
        "id": 3,
        "code": "internal",
        "message": "internal server error",
    }
    assert "secret" not in str(error)
    # still open
    assert (await client.request({"type": "hello"}))["type"] == "welcome"
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_client_errors_carry_their_code(running: Running) -> None:
    async def refuse(connection: Connection, message: Mapping[str, Any]) -> None:
        raise ClientError("forbidden", "not for you")

    running.service.dispatcher.register("test.refuse", refuse)
    client = await greeted(running.ws)
    error = await client.request({"type": "test.refuse"})
    assert (error["code"], error["message"]) == ("forbidden", "not for you")
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_handlers_run_in_order_per_connection(running: Running) -> None:
    release: Deferred[None] = Deferred()

    async def slow(connection: Connection, message: Mapping[str, Any]) -> None:
        await release
        connection.send("done", which="slow")

    async def fast(connection: Connection, message: Mapping[str, Any]) -> None:
        connection.send("done", which="fast")

    running.service.dispatcher.register("test.slow", slow)
    running.service.dispatcher.register("test.fast", fast)
    client = await greeted(running.ws)
    client.send_json({"type": "test.slow"})
    client.send_json({"type": "test.fast"})
    # Give the server every chance to run "fast" early, then let "slow" finish.
    await deferLater(reactor, 0.05, lambda: None)
    release.callback(None)
    first, second = await client.next(), await client.next()
    assert [first["which"], second["which"]] == ["slow", "fast"]
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_with_1009(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    limit = running.service.config.server.max_message_size
    client.send_json({"type": "hello", "pad": "x" * limit})
    code, _ = await client.closed
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_message_just_under_the_limit_is_fine(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    limit = running.service.config.server.max_message_size
    padding = "x" * (limit - 100)
    welcome = await client.request({"type": "hello", "pad": padding})
    assert welcome["type"] == "welcome"
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused_at_the_handshake(running: Running) -> None:
    with pytest.raises(wsclient.HandshakeFailed) as caught:
        await wsclient.connect(running.ws, origin="https://evil.example")
    assert "403" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_own_origin_is_allowed(running: Running) -> None:
    client = await wsclient.connect(running.ws, origin=running.http)
    assert (await client.request({"type": "hello"}))["type"] == "welcome"
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_connections_are_counted_in_health(running: Running) -> None:
    client = await wsclient.connect(running.ws)
    await client.request({"type": "hello"})
    report = await running.service.health.report()
    assert report["connections"] == 1
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_websockets_with_1001(tmp_path: Any) -> None:
    from bambid.service import BambidService
    from tests.conftest import make_config

    service = BambidService(make_config(tmp_path), reactor, base_dir=tmp_path)
    service.startService()
    await service.started
    assert service.port is not None
    address = service.port.getHost()
    assert isinstance(address, IPv4Address)
    client = await wsclient.connect(f"ws://127.0.0.1:{address.port}/ws")
    await client.request({"type": "hello"})
    await service.stopService()
    code, _ = await client.closed
    assert code == 1001
