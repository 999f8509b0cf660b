"""The real daemon as a subprocess: ``python -m twisted bambid`` on a free port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests import wsclient
from tests.daemon import Daemon, daemon_environment


@pytest_twisted.ensureDeferred
async def test_health_is_ok(daemon: Daemon) -> None:
    response = await treq.get(daemon.http + "/health/api")
    report = json.loads(await response.content())
    assert response.code == 200
    assert report["status"] == "ok"
    assert report["storage"] == {
        "backend": "sqlite",
        "ok": True,
        "latency_ms": report["storage"]["latency_ms"],
    }
    assert (daemon.workdir / "var" / "bambid.sqlite3").exists()


@pytest_twisted.ensureDeferred
async def test_home_page_and_static_files(daemon: Daemon) -> None:
    response = await treq.get(daemon.http + "/")
    assert response.code == 200
    assert b"connection-state" in await response.content()
    response = await treq.get(daemon.http + "/vendor/bootstrap/css/bootstrap.min.css")
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_websocket_hello_welcome(daemon: Daemon) -> None:
    client = await wsclient.connect(daemon.ws, origin=daemon.http)
    welcome = await client.request({"type": "hello", "protocol": 1, "id": 1})
    assert welcome["type"] == "welcome"
    assert welcome["id"] == 1
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_bad_frames_are_answered(daemon: Daemon) -> None:
    client = await wsclient.connect(daemon.ws)
    for frame in (b"{nope", b"[]", b'{"id": 1}', b'{"type": "what"}'):
        client.sendMessage(frame, isBinary=False)
        error = await client.next()
        assert (error["type"], error["code"]) == ("error", "bad_request")
    assert (await client.request({"type": "hello"}))["type"] == "welcome"
    client.sendClose()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_oversized_frame_is_closed_with_1009(daemon: Daemon) -> None:
    client = await wsclient.connect(daemon.ws)
    client.send_json({"type": "hello", "pad": "x" * 70000})
    code, _ = await client.closed
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused(daemon: Daemon) -> None:
    with pytest.raises(wsclient.HandshakeFailed, match="403"):
        await wsclient.connect(daemon.ws, origin="https://elsewhere.example")


@pytest_twisted.ensureDeferred
async def test_sigterm_closes_websockets_with_1001_and_exits_0(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        client = await wsclient.connect(daemon.ws)
        await client.request({"type": "hello"})
        daemon.process.send_signal(signal.SIGTERM)
        code, _ = await client.closed
        assert code == 1001
        status = await deferToThread(daemon.process.wait, 30)
        assert status == 0, "".join(daemon.output)
        assert "bambid stopped" in "".join(daemon.output)


def test_sigint_exits_0(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        daemon.process.send_signal(signal.SIGINT)
        assert daemon.process.wait(timeout=30) == 0


def test_bad_configuration_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "bambid"],
        cwd=tmp_path,
        env=daemon_environment({"BAMBID_SERVER_MAX_MESSAGE_SIZE": "huge"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "bambid: configuration error: server.max_message_size "
        "(from BAMBID_SERVER_MAX_MESSAGE_SIZE): must be an integer, got 'huge'"
    ]


def test_bad_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bambid.toml"
    config.write_text("[storage]\nuri = 'ftp://nowhere'\n")
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "bambid", "--config", str(config)],
        cwd=tmp_path,
        env=daemon_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "storage.uri" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_endpoint_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "bambid", "--port", "carrier-pigeon:7"],
        cwd=tmp_path,
        env=daemon_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "server.endpoint" in result.stderr


def test_port_in_use_fails_start_up(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with Daemon.start(tmp_path / "first") as first:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "twisted",
                "--log-format=text",
                "bambid",
                "--port",
                f"tcp:{first.port}:interface=127.0.0.1",
            ],
            cwd=tmp_path / "second",
            env=daemon_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "bambid could not start" in result.stdout + result.stderr


def test_twistd_runs_it_too_with_json_logs(tmp_path: Path) -> None:
    twistd = str(Path(sys.executable).parent / "twistd")
    runner = (twistd, "-n", "--pidfile=", "--logger=bambid.logs.observer")
    with Daemon.start(tmp_path, runner=runner) as daemon:
        with urllib.request.urlopen(daemon.http + "/health/api") as response:
            assert json.loads(response.read())["status"] == "ok"
        assert daemon.terminate() == 0
    events = [json.loads(line) for line in daemon.output if line.strip()]
    assert any(e.get("log_format", "").startswith("bambid listening on") for e in events)
