"""The client's address behind a trusted reverse proxy (``server.trusted_proxies``):
login throttling and the WebSocket's per-address limits key on the visitor the
proxy names, and a header from anyone else is ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from bambid import config as configuration
from bambid.web.proxies import TrustedProxies
from tests import wsclient
from tests.companionsupport import eventually
from tests.test_auth import PASSWORD, Browser, service

LOCAL = TrustedProxies(["127.0.0.1/32", "::1/128"])


def test_the_client_is_the_right_most_untrusted_hop() -> None:
    assert LOCAL.client("127.0.0.1", "203.0.113.5") == "203.0.113.5"
    # A client may write anything on the left; the proxy appended the truth.
    assert LOCAL.client("127.0.0.1", "10.9.9.9, 203.0.113.5") == "203.0.113.5"
    # Proxies in a chain are skipped.
    two = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8"])
    assert two.client("127.0.0.1", "198.51.100.1, 10.1.2.3") == "198.51.100.1"
    assert LOCAL.client("::1", " 2001:db8::7 ") == "2001:db8::7"


def test_an_untrusted_peer_or_a_bad_header_keeps_the_peer() -> None:
    assert LOCAL.client("192.0.2.10", "203.0.113.5") == "192.0.2.10"
    assert LOCAL.client("127.0.0.1", None) == "127.0.0.1"
    assert LOCAL.client("127.0.0.1", "") == "127.0.0.1"
    assert LOCAL.client("127.0.0.1", "not-an-address") == "127.0.0.1"
    assert LOCAL.client("127.0.0.1", "127.0.0.1") == "127.0.0.1"
    assert TrustedProxies().client("127.0.0.1", "203.0.113.5") == "127.0.0.1"


def test_a_bad_network_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(configuration.ConfigError, match="server.trusted_proxies"):
        configuration.load(None, {"BAMBID_SERVER_TRUSTED_PROXIES": "127.0.0.1/33"})
    loaded = configuration.load(None, {"BAMBID_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert loaded.server.trusted_proxies == ["10.0.0.0/8", "::1"]


async def _spray(proxy: Browser, forwarded_for: str) -> None:
    for name in ("Bob", "Cy"):
        response = await proxy.api(
            "/api/auth/login",
            {"username": name, "password": "guess guess"},
            headers={"X-Forwarded-For": forwarded_for},
        )
        assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_login_throttling_keys_on_the_visitor_behind_the_proxy(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        await Browser(running.http).register("Ada")
        proxy = Browser(running.http)  # nginx on the same machine: 127.0.0.1
        await _spray(proxy, "203.0.113.5")
        ada = {"username": "Ada", "password": PASSWORD}
        sprayed = await proxy.api("/api/auth/login", ada, {"X-Forwarded-For": "203.0.113.5"})
        assert sprayed.code == 429
        # Another visitor through the same proxy is not punished for it.
        other = await proxy.api("/api/auth/login", ada, {"X-Forwarded-For": "198.51.100.7"})
        assert other.code == 200


@pytest_twisted.ensureDeferred
async def test_a_header_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    async with service(tmp_path, auth={"login_burst": 2, "login_per_minute": 1.0}) as running:
        await Browser(running.http).register("Ada")
        sprayer = Browser(running.http, source="127.0.0.3")  # not a trusted proxy
        await _spray(sprayer, "203.0.113.5")
        # Changing the header does not give the sprayer a fresh address.
        ada = {"username": "Ada", "password": PASSWORD}
        again = await sprayer.api("/api/auth/login", ada, {"X-Forwarded-For": "198.51.100.9"})
        assert again.code == 429


@pytest_twisted.ensureDeferred
async def test_trusting_nobody_keys_on_the_proxy(tmp_path: Path) -> None:
    async with service(
        tmp_path,
        server={"trusted_proxies": []},
        auth={"login_burst": 2, "login_per_minute": 1.0},
    ) as running:
        await Browser(running.http).register("Ada")
        proxy = Browser(running.http)
        await _spray(proxy, "203.0.113.5")
        ada = {"username": "Ada", "password": PASSWORD}
        other = await proxy.api("/api/auth/login", ada, {"X-Forwarded-For": "198.51.100.7"})
        assert other.code == 429


@pytest_twisted.ensureDeferred
async def test_websocket_connections_know_the_visitor(tmp_path: Path) -> None:
    async with service(tmp_path) as running:
        client = await wsclient.connect(running.ws, headers={"X-Forwarded-For": "203.0.113.5"})
        try:
            factory = running.service.ws_factory

            async def opened() -> bool:
                return bool(factory.connections)

            await eventually(opened)
            (connection,) = factory.connections
            assert connection.peer_address == "203.0.113.5"
        finally:
            client.sendClose()
