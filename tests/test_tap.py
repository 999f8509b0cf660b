"""The plugin, the command-line options and the service tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import IService, IServiceMaker
from twisted.internet import reactor
from twisted.plugin import getPlugins

from bambid import signals, tap
from bambid.service import BambidService
from tests.conftest import make_config


def test_plugin_is_discovered_without_importing_the_app() -> None:
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert "bambid" in makers
    assert makers["bambid"].module == "bambid.tap"  # type: ignore[attr-defined]


def test_options_default_to_no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVER_PORT", "BAMBID_SERVER_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    options = tap.Options()
    options.parseOptions([])
    assert options["config"] is None
    assert options["loaded"].server.endpoint == "tcp:6969:interface=127.0.0.1"


@pytest.mark.parametrize(
    "endpoint",
    ["tcp:7000:interface=127.0.0.1", "unix:/run/bambid/bambid.sock", "systemd:domain=INET:index=0"],
)
def test_port_option_takes_an_endpoint_string(endpoint: str) -> None:
    options = tap.Options()
    options.parseOptions(["--port", endpoint])
    assert options["loaded"].server.endpoint == endpoint


def test_config_option_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[server]\nendpoint = "tcp:7001"\n')
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    assert options["loaded"].server.endpoint == "tcp:7001"


def test_bad_config_exits_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.toml"
    path.write_text("[server]\nping_timeout = 'soon'\n")
    with pytest.raises(SystemExit) as caught:
        tap.Options().parseOptions(["--config", str(path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bambid: configuration error: server.ping_timeout:")
    assert err.count("\n") == 1


def test_make_service_builds_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The graceful-exit signal handlers are for the daemon process, not pytest's.
    installed: list[object] = []
    monkeypatch.setattr(signals, "install", installed.append)
    monkeypatch.chdir(tmp_path)
    options = tap.Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
    service = tap.makeService(options)
    assert IService.providedBy(service)
    assert isinstance(service, BambidService)
    assert installed == [reactor]


@pytest_twisted.ensureDeferred
async def test_service_starts_listens_and_stops(tmp_path: Path) -> None:
    service = BambidService(make_config(tmp_path), reactor, base_dir=tmp_path)
    service.startService()
    await service.started
    assert service.running
    assert service.port is not None
    assert (tmp_path / "bambid.sqlite3").exists()
    await service.stopService()
    assert not service.running
    # storage is closed: further use fails cleanly
    with pytest.raises(Exception):  # noqa: B017 - any StorageError subclass
        await service.storage.ping()
