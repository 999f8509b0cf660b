"""systemd integration: the notification protocol (READY, WATCHDOG, STOPPING)
spoken by a real daemon to a real datagram socket, socket activation with an
inherited listening socket, and the unit files checked by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from bambid.sdnotify import SystemdNotifier, describe, socket_address, watchdog_interval
from tests.daemon import LISTENING, REPO, Daemon, daemon_environment

#: A watchdog of 0.4 s: a ping every 0.2 s.
WATCHDOG_USEC = "400000"
WAIT = 30.0
TWISTED = (sys.executable, "-m", "twisted", "--log-format=text")


# --- a fake service manager ----------------------------------------------------


class NotifyListener:
    """The service manager's end of ``NOTIFY_SOCKET``: a bound AF_UNIX datagram
    socket that records every message."""

    def __init__(self, address: str) -> None:
        self.value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(address))
        self.sock.settimeout(WAIT)
        self.messages: list[str] = []

    def next(self) -> str:
        message = self.sock.recv(4096).decode("utf-8")
        self.messages.append(message)
        return message

    def wait_for(self, line: str) -> str:
        """Receive until a message has ``line`` among its lines (within WAIT s each)."""
        while True:
            message = self.next()
            if line in message.split("\n"):
                return message

    def drain(self) -> list[str]:
        """Everything already queued, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.next()
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(WAIT)
        return self.messages

    def close(self) -> None:
        self.sock.close()


@contextmanager
def listener(address: str) -> Iterator[NotifyListener]:
    received = NotifyListener(address)
    try:
        yield received
    finally:
        received.close()


def socket_path(tmp_path: Path) -> str:
    """A path for a Unix socket under ``tmp_path``, or under a shorter temporary
    directory when ``tmp_path`` is too long for sun_path (108 bytes)."""
    path = tmp_path / "notify"
    if len(os.fsencode(path)) < 100:
        return str(path)
    return str(Path(tempfile.mkdtemp(prefix="sdn")) / "notify")


def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


# --- the notification protocol from a real daemon --------------------------------


def test_ready_watchdog_and_stopping_reach_notify_socket(tmp_path: Path) -> None:
    """WATCHDOG_PID is the daemon's own pid (set by an exec wrapper, as systemd
    does), so the pings are ours."""
    own_pid = ("sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', *TWISTED)
    with listener(socket_path(tmp_path)) as manager:
        env = {"NOTIFY_SOCKET": manager.value, "WATCHDOG_USEC": WATCHDOG_USEC}
        with Daemon.start(workdir(tmp_path), env=env, runner=own_pid) as daemon:
            ready = manager.next()
            assert ready.split("\n") == ["READY=1", f"STATUS=listening on 127.0.0.1:{daemon.port}"]
            assert manager.next() == "WATCHDOG=1"
            assert manager.next() == "WATCHDOG=1"
            assert daemon.terminate() == 0, "".join(daemon.output)
            stopping = manager.wait_for("STOPPING=1")
            assert stopping.split("\n") == ["STOPPING=1", "STATUS=stopping"]
        log = "".join(daemon.output)
        assert "systemd watchdog: pinging every 0.2s" in log
        assert "cannot notify systemd" not in log


def test_abstract_notify_socket(tmp_path: Path) -> None:
    name = f"@bambid-test-{uuid.uuid4().hex}"
    with listener(name) as manager:
        env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": WATCHDOG_USEC}
        with Daemon.start(workdir(tmp_path), env=env) as daemon:
            assert manager.next().startswith("READY=1\n")
            assert manager.next() == "WATCHDOG=1"
            assert daemon.terminate() == 0, "".join(daemon.output)
            manager.wait_for("STOPPING=1")


def test_watchdog_of_another_process_is_not_pinged(tmp_path: Path) -> None:
    with listener(socket_path(tmp_path)) as manager:
        env = {
            "NOTIFY_SOCKET": manager.value,
            "WATCHDOG_USEC": WATCHDOG_USEC,
            "WATCHDOG_PID": str(os.getpid()),  # this test, not the daemon
        }
        with Daemon.start(workdir(tmp_path), env=env) as daemon:
            assert manager.next().startswith("READY=1\n")
            time.sleep(1.0)  # five would-be ping intervals
            assert daemon.terminate() == 0, "".join(daemon.output)
            manager.wait_for("STOPPING=1")
        assert "WATCHDOG=1" not in manager.messages
        assert "systemd watchdog not ours" in "".join(daemon.output)


def test_without_notify_socket_nothing_is_sent_and_nothing_breaks(tmp_path: Path) -> None:
    # An empty NOTIFY_SOCKET hides one the test runner itself might have.
    env = {"NOTIFY_SOCKET": "", "WATCHDOG_USEC": WATCHDOG_USEC}
    with Daemon.start(workdir(tmp_path), env=env) as daemon:
        with urllib.request.urlopen(daemon.http + "/health/api", timeout=WAIT) as response:
            assert response.status == 200
        assert daemon.terminate() == 0
    log = "".join(daemon.output)
    assert "systemd" not in log


def test_unreachable_notify_socket_is_logged_once_and_not_fatal(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"), "WATCHDOG_USEC": WATCHDOG_USEC}
    with Daemon.start(workdir(tmp_path), env=env) as daemon:
        time.sleep(1.0)  # READY and several pings fail meanwhile
        with urllib.request.urlopen(daemon.http + "/health/api", timeout=WAIT) as response:
            assert response.status == 200
        assert daemon.terminate() == 0
    log = "".join(daemon.output)
    assert log.count("cannot notify systemd") == 1, log


# --- the notifier itself, on a fake clock -----------------------------------------


def test_pings_come_only_while_the_reactor_turns(tmp_path: Path) -> None:
    """The pings are reactor timers: no turn of the clock, no ping."""
    clock = Clock()
    with listener(socket_path(tmp_path)) as manager:
        environ = {"NOTIFY_SOCKET": manager.value, "WATCHDOG_USEC": "30000000"}
        notifier = SystemdNotifier.from_environment(environ, clock)
        assert notifier.watchdog == 15.0
        notifier.ready("up")
        assert manager.next() == "READY=1\nSTATUS=up"
        assert manager.next() == "WATCHDOG=1"  # at once, then every 15 s
        clock.advance(14.9)
        assert manager.drain() == ["READY=1\nSTATUS=up", "WATCHDOG=1"]
        clock.advance(0.1)
        assert manager.next() == "WATCHDOG=1"
        notifier.stopping()
        assert manager.next() == "STOPPING=1\nSTATUS=stopping"
        clock.advance(60)
        assert manager.drain()[-1] == "STOPPING=1\nSTATUS=stopping"
        assert clock.getDelayedCalls() == []


def test_a_full_queue_never_blocks_and_is_logged_once(tmp_path: Path) -> None:
    """Nobody reads the socket: sends fail at once (EAGAIN) instead of blocking."""
    with listener(socket_path(tmp_path)) as manager:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": manager.value}, Clock())
        with capturedLogs() as events:
            for _ in range(2000):
                notifier.notify("STATUS=busy")
        warnings = [e for e in events if "cannot notify systemd" in e["log_format"]]
        assert len(warnings) == 1
        assert 0 < len(manager.drain()) < 2000


def test_no_notify_socket_means_no_socket_and_no_timer() -> None:
    clock = Clock()
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "1000000"}, clock)
    assert not notifier.enabled
    notifier.ready("up")
    notifier.stopping()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, 42) == expected


def test_status_line_addresses() -> None:
    assert describe(IPv4Address("TCP", "127.0.0.1", 6969)) == "127.0.0.1:6969"
    assert describe(IPv6Address("TCP", "::1", 6969)) == "[::1]:6969"
    assert describe(UNIXAddress(b"/run/bambid/bambid.sock")) == "/run/bambid/bambid.sock"


def test_socket_address() -> None:
    assert socket_address("@bambid") == "\0bambid"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


# --- socket activation -----------------------------------------------------------

#: Puts the inherited socket at fd 3 and sets LISTEN_FDS, LISTEN_FDNAMES (systemd
#: names it after the socket unit; Twisted wants the name as well as the count) and
#: LISTEN_PID for this very process (the pid survives exec), then runs the daemon.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="bambid.socket", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


@contextmanager
def activated_daemon(cwd: Path, listening: socket.socket) -> Iterator[Daemon]:
    """The real daemon given ``listening`` the way systemd passes a socket."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ACTIVATE,
            str(listening.fileno()),
            *TWISTED,
            "bambid",
            "--port",
            "systemd:domain=INET:index=0",
        ],
        cwd=cwd,
        env=daemon_environment(),
        pass_fds=(listening.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        port = None
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match:
                port = int(match.group(1))
                break
        assert port is not None, "daemon exited before listening:\n" + "".join(output)
        stream = process.stdout
        threading.Thread(target=lambda: output.extend(stream), daemon=True).start()
        yield Daemon(process, port, cwd, output)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)


def http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return read_all(client)


def read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_socket_activation_serves_the_inherited_socket(tmp_path: Path) -> None:
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        port = listening.getsockname()[1]
        with activated_daemon(workdir(tmp_path), listening) as daemon:
            assert daemon.port == port
            assert http_get(port, "/health/api").startswith(b"HTTP/1.0 200 ")
            assert daemon.terminate() == 0, "".join(daemon.output)

        # Between two daemons the socket stays open (systemd holds it): a client
        # connects, waits in the backlog, and the next daemon answers it.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as waiting:
            waiting.sendall(b"GET /health/api HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            with activated_daemon(tmp_path / "work", listening):
                assert read_all(waiting).startswith(b"HTTP/1.0 200 ")


def test_systemd_endpoint_without_a_socket_is_a_configuration_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TWISTED, "bambid", "--port", "systemd:domain=INET:index=0"],
        cwd=tmp_path,
        env=daemon_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("bambid: configuration error: server.endpoint: ")
    assert "LISTEN_FDS" in result.stderr


# --- the unit files -----------------------------------------------------------------

SYSTEMD = REPO / "systemd"
DROP_IN = "bambid.service.d/socket-activation.conf"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key`` -> every value it is given (repeated keys accumulate)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_unit_is_notify_and_hardened() -> None:
    unit = unit_settings(SYSTEMD / "bambid.service")
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30s"],
        "Restart": ["on-failure"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "StateDirectory": ["bambid"],
        "User": ["bambid"],
        "UMask": ["0077"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectKernelLogs": ["yes"],
        "ProtectControlGroups": ["yes"],
        "RestrictNamespaces": ["yes"],
        "LockPersonality": ["yes"],
        "RestrictRealtime": ["yes"],
        "RestrictSUIDSGID": ["yes"],
        "CapabilityBoundingSet": [""],
        "SystemCallArchitectures": ["native"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert "MemoryDenyWriteExecute" not in unit  # see the comment in the unit
    (command,) = unit["ExecStart"]
    assert re.fullmatch(r"/\S+/twist bambid --config /etc/bambid/bambid\.toml", command)


def test_socket_unit_and_its_drop_in() -> None:
    socket_unit = unit_settings(SYSTEMD / "bambid.socket")
    assert socket_unit["ListenStream"] == ["127.0.0.1:6969"]
    assert socket_unit["Before"] == ["bambid.service"]
    drop_in = unit_settings(SYSTEMD / DROP_IN)
    assert drop_in["Requires"] == ["bambid.socket"]
    assert drop_in["After"] == ["bambid.socket"]
    reset, command = drop_in["ExecStart"]
    assert reset == ""
    (original,) = unit_settings(SYSTEMD / "bambid.service")["ExecStart"]
    assert command == original + " --port systemd:domain=INET:index=0"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Copies with ExecStart pointing at a program that exists here, so the only
    thing left to complain about is the units themselves."""
    exists = shutil.which("true")
    assert exists is not None
    for name in ("bambid.service", "bambid.socket", DROP_IN):
        target = tmp_path / name
        target.parent.mkdir(exist_ok=True)
        text = (SYSTEMD / name).read_text()
        target.write_text(re.sub(r"(?m)^ExecStart=/\S+", f"ExecStart={exists}", text))
    result = subprocess.run(
        ["systemd-analyze", "verify", tmp_path / "bambid.service", tmp_path / "bambid.socket"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
