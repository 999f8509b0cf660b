"""Shared fixtures: an in-process service on a real loopback port, and a real
daemon subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from playwright.sync_api import Browser
from twisted.internet import reactor
from twisted.internet.address import IPv4Address

from bambid import config as configuration
from bambid.service import BambidService
from tests.browsersupport import launch, screenshot_dir
from tests.daemon import Daemon


def make_config(tmp_path: Path, **server: Any) -> configuration.Config:
    """A configuration on a free loopback port with SQLite under ``tmp_path``."""
    config = configuration.load(None, {})
    return attrs.evolve(
        config,
        server=attrs.evolve(config.server, endpoint="tcp:0:interface=127.0.0.1", **server),
        storage=attrs.evolve(config.storage, uri=f"sqlite:///{tmp_path}/bambid.sqlite3"),
    )


@attrs.define
class Running:
    service: BambidService

    @property
    def port(self) -> int:
        assert self.service.port is not None
        address = self.service.port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@pytest_twisted.async_yield_fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """bambid started in this process (this reactor) on 127.0.0.1:0."""
    service = BambidService(make_config(tmp_path), reactor, base_dir=tmp_path)
    service.startService()
    await service.started
    yield Running(service)
    await service.stopService()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real ``python -m twisted bambid`` subprocess with its own working directory."""
    workdir = tmp_path_factory.mktemp("daemon")
    with Daemon.start(workdir) as running_daemon:
        yield running_daemon


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, one per test module."""
    with launch() as instance:
        yield instance


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go (see ``browsersupport.screenshot_dir``)."""
    return screenshot_dir(tmp_path)
