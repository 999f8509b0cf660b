"""The manhole against a real service on loopback ports: telnet login with the
credentials file, the helpers (``online()``, ``notice()``, ``maintenance()``,
``help()``), refusals (wrong password, no credentials, a file others can
read, an endpoint on every address), and the SSH manhole with a generated key
through Conch's own SSH client."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import telnet
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from bambid.config import ConfigError
from bambid.manhole import (
    FAILED_LOGIN_DELAY,
    AuditedChecker,
    AuthorizedKeysFile,
    SSHPublicKeyChecker,
    endpoint_interface,
    is_loopback,
)
from bambid.service import BambidService
from tests.chatsupport import add_person, connect, join, next_of, serving
from tests.conftest import Running, make_config

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[78=>]")
PASSWORD = "s3cret horse"


def credentials(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "manhole.passwd"
    path.write_text(f"# operators\nops:{PASSWORD}\n")
    path.chmod(mode)
    return path


def manhole_config(tmp_path: Path, **manhole: Any) -> Any:
    config = make_config(tmp_path)
    manhole = {"endpoint": "tcp:0:interface=127.0.0.1", **manhole}
    return attrs.evolve(config, manhole=attrs.evolve(config.manhole, **manhole))


def manhole_port(running: Running, index: int = 0) -> int:
    address = running.service.manhole.ports[index].getHost()
    assert isinstance(address, IPv4Address)
    return address.port


# --- a telnet client -------------------------------------------------------------------------


class Terminal:
    """What a terminal shows: the bytes received, escape sequences removed."""

    def __init__(self) -> None:
        self.screen = b""
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def received(self, data: bytes) -> None:
        self.screen += ANSI.sub(b"", data.replace(b"\r", b""))
        for item in list(self._waiting):
            if item[0] in self.screen:
                self._waiting.remove(item)
                item[1].callback(None)

    async def shows(self, text: bytes, timeout: float = 10) -> None:
        """Wait until ``text`` is on the screen, then forget the screen so far."""
        if text not in self.screen:
            seen: Deferred[None] = Deferred()
            self._waiting.append((text, seen))
            seen.addTimeout(timeout, reactor)
            try:
                await seen
            except defer.TimeoutError:
                raise AssertionError(f"never saw {text!r}; screen: {self.screen!r}") from None
        self.screen = self.screen[self.screen.index(text) + len(text) :]


class TelnetClient(telnet.TelnetProtocol):
    """Accepts the server's echo and go-ahead suppression, refuses the rest."""

    def __init__(self) -> None:
        self.terminal = Terminal()

    def enableRemote(self, option: bytes) -> bool:
        return option in (telnet.ECHO, telnet.SGA)

    def enableLocal(self, option: bytes) -> bool:
        return False

    def disableRemote(self, option: bytes) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.terminal.received(data)

    def type(self, line: str) -> None:
        assert self.transport is not None
        self.transport.write(line.encode() + b"\n")

    def hang_up(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


async def telnet_to(port: int) -> TelnetClient:
    client = TelnetClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, telnet.TelnetTransport(lambda: client))
    return client


async def logged_in(port: int) -> TelnetClient:
    client = await telnet_to(port)
    await client.terminal.shows(b"Username: ")
    client.type("ops")
    await client.terminal.shows(b"Password: ")
    client.type(PASSWORD)
    await client.terminal.shows(b">>> ")
    return client


# --- telnet ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_telnet_manhole_runs_the_helpers(tmp_path: Path) -> None:
    config = manhole_config(tmp_path, credentials_file=str(credentials(tmp_path)))
    async with serving(config, tmp_path) as running:
        token = await add_person(running.service.storage, "Alice")
        alice, welcome = await connect(running, token)
        assert welcome["type"] == "welcome"
        await join(alice)
        shell = await logged_in(manhole_port(running))

        shell.type("online()")
        await shell.terminal.shows(
            b"[{'name': 'Alice', 'role': 'user', 'guest': False, 'rooms': ['lobby'], "
            b"'connections': 1}]"
        )
        shell.type('notice("hello")')
        await shell.terminal.shows(b"\n1\n")
        notice = await next_of(alice, "system")
        assert notice == {"type": "system", "message": "hello", "level": "info"}

        shell.type("help()")
        await shell.terminal.shows(b"online(): Who is connected")
        shell.type("queues()['companion']")
        await shell.terminal.shows(b"{'waiting': 0, 'running': 0}")
        shell.type("service.port is not None, storage is service.storage")
        await shell.terminal.shows(b"(True, True)")

        shell.type("maintenance(True, 'Quick fix')")
        await shell.terminal.shows(b"'on': True, 'message': 'Quick fix'")
        assert running.service.maintenance.on
        assert running.service.maintenance.state.by == "manhole"
        assert (await next_of(alice, "system"))["message"] == "Quick fix"
        shell.type("maintenance(False)")
        await shell.terminal.shows(b"'on': False")
        assert not running.service.maintenance.on

        shell.type("kick('Alice', 'bye')")
        await shell.terminal.shows(b"\n1\n")
        assert await alice.closed == (1008, "kicked: bye")
        shell.hang_up()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_refused(tmp_path: Path) -> None:
    config = manhole_config(tmp_path, credentials_file=str(credentials(tmp_path)))
    async with serving(config, tmp_path) as running:
        client = await telnet_to(manhole_port(running))
        await client.terminal.shows(b"Username: ")
        client.type("ops")
        await client.terminal.shows(b"Password: ")
        client.type("not the password")
        await client.terminal.shows(b"Authentication failed")
        await client.terminal.shows(b"Username: ")
        client.type("nobody")
        await client.terminal.shows(b"Password: ")
        client.type(PASSWORD)
        await client.terminal.shows(b"Authentication failed")
        assert b">>>" not in client.terminal.screen
        client.hang_up()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest_twisted.ensureDeferred
async def test_without_credentials_nothing_listens(tmp_path: Path) -> None:
    port = free_port()
    config = manhole_config(tmp_path, endpoint=f"tcp:{port}:interface=127.0.0.1")
    async with serving(config, tmp_path) as running:
        assert not running.service.manhole.enabled
        assert running.service.manhole.ports == []
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_open_to_others_are_a_config_error(tmp_path: Path, mode: int) -> None:
    config = manhole_config(tmp_path, credentials_file=str(credentials(tmp_path, mode)))
    with pytest.raises(ConfigError) as caught:
        BambidService(config, reactor, base_dir=tmp_path)
    assert caught.value.key == "manhole.credentials_file"
    assert "chmod 600" in str(caught.value)


def test_bad_manhole_settings_are_config_errors(tmp_path: Path) -> None:
    def problem(**manhole: Any) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            BambidService(manhole_config(tmp_path, **manhole), reactor, base_dir=tmp_path)
        return caught.value

    assert problem(credentials_file="missing.passwd").key == "manhole.credentials_file"
    empty = tmp_path / "empty.passwd"
    empty.write_text("# nobody yet\n")
    empty.chmod(0o600)
    assert "no 'user:password'" in str(problem(credentials_file=str(empty)))
    every_address = problem(credentials_file=str(credentials(tmp_path)), endpoint="tcp:0")
    assert every_address.key == "manhole.endpoint" and "every address" in str(every_address)
    assert problem(ssh_endpoint="tcp:0:interface=127.0.0.1").key == (
        "manhole.ssh_authorized_keys_file"
    )


def test_endpoint_interfaces() -> None:
    assert endpoint_interface("tcp:6023:interface=127.0.0.1") == "127.0.0.1"
    assert endpoint_interface(r"tcp6:6023:interface=\:\:1") == "::1"
    assert endpoint_interface("tcp:6023") is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")


# --- SSH -------------------------------------------------------------------------------------


class _Shell(channel.SSHChannel):
    name = b"session"

    def __init__(self, terminal: Terminal, opened: Deferred[_Shell], **kw: Any) -> None:
        super().__init__(**kw)
        self.terminal = terminal
        self.opened = opened
        self.ended: Deferred[None] = Deferred()

    def channelOpen(self, specificData: bytes) -> None:
        assert self.conn is not None
        pty = session.packRequest_pty_req(b"xterm", (24, 120, 0, 0), b"")
        asking = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        asking.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        asking.addCallbacks(lambda _: self.opened.callback(self), self.opened.errback)

    def dataReceived(self, data: bytes) -> None:
        self.terminal.received(data)

    def type(self, line: str) -> None:
        self.write(line.encode() + b"\r")

    def resize(self, rows: int, columns: int) -> Deferred[Any]:
        """A window-change request; fails unless the server says it handled it."""
        assert self.conn is not None
        size = session.packRequest_window_change((rows, columns, 0, 0))
        answer: Deferred[Any] = self.conn.sendRequest(self, b"window-change", size, wantReply=True)
        return answer

    def end_input(self) -> None:
        assert self.conn is not None
        self.conn.sendEOF(self)

    def closed(self) -> None:
        super().closed()
        self.ended.callback(None)


class _Connection(connection.SSHConnection):
    def __init__(self, terminal: Terminal, opened: Deferred[_Shell]) -> None:
        super().__init__()
        self.terminal = terminal
        self.opened = opened

    def serviceStarted(self) -> None:
        self.openChannel(_Shell(self.terminal, self.opened, conn=self))


class _KeyAuth(userauth.SSHUserAuthClient):
    def __init__(self, key: keys.Key, instance: connection.SSHConnection) -> None:
        super().__init__(b"ops", instance)
        self.key = key

    def getPublicKey(self) -> Any:
        if self.lastPublicKey is not None:
            return None  # one key only
        return self.key.public()

    def getPrivateKey(self) -> Deferred[keys.Key]:
        return defer.succeed(self.key)

    def getPassword(self, prompt: bytes | None = None) -> None:
        return None  # no password authentication


class _Client(transport.SSHClientTransport):
    def __init__(self, key: keys.Key, opened: Deferred[_Shell], failed: Deferred[Any]) -> None:
        self.key = key
        self.terminal = Terminal()
        self.opened = opened
        self.failed = failed
        self.host_key: bytes | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        self.host_key = hostKey
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(_KeyAuth(self.key, _Connection(self.terminal, self.opened)))

    def hang_up(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if not self.failed.called:
            self.failed.callback(None)


def new_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


async def ssh_shell(port: int, key: keys.Key) -> tuple[_Client, Deferred[_Shell], Deferred[Any]]:
    opened: Deferred[_Shell] = Deferred()
    failed: Deferred[Any] = Deferred()
    client = _Client(key, opened, failed)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client, opened, failed


@pytest_twisted.ensureDeferred
async def test_ssh_manhole_with_an_authorized_key(tmp_path: Path) -> None:
    allowed, stranger = new_key(), new_key()
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(allowed.public().toString("openssh") + b" ops@laptop\n")
    host_key_file = tmp_path / "var" / "manhole_host_key"
    config = manhole_config(
        tmp_path,
        ssh_endpoint="tcp:0:interface=127.0.0.1",
        ssh_authorized_keys_file=str(authorized),
        ssh_host_key_file="var/manhole_host_key",
    )
    async with serving(config, tmp_path) as running:
        assert not host_key_file.stat().st_mode & 0o077  # created, private
        port = manhole_port(running)  # no telnet here: the SSH port comes first

        client, opened, _ = await ssh_shell(port, allowed)
        shell = await opened
        assert client.host_key == keys.Key.fromFile(str(host_key_file)).public().blob()
        await client.terminal.shows(b">>> ")
        shell.type("1 + 1")
        await client.terminal.shows(b"\n2\n")
        shell.type("online()")
        await client.terminal.shows(b"[]")
        await shell.resize(40, 100)  # Conch's own session refuses this
        shell.type("3 * 3")
        await client.terminal.shows(b"\n9\n")
        shell.end_input()  # and raises at this, leaving the session open
        await shell.ended
        client.hang_up()

        client, opened, failed = await ssh_shell(port, stranger)
        await failed
        assert not opened.called  # no key but the listed ones logs in

    # The host key is kept: the next start presents the same one.
    async with serving(config, tmp_path) as running:
        client, opened, _ = await ssh_shell(manhole_port(running), allowed)
        await opened
        assert client.host_key == keys.Key.fromFile(str(host_key_file)).public().blob()
        client.hang_up()


def test_authorized_keys_file_is_read_at_each_login(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text("# none yet\n")
    db = AuthorizedKeysFile(path)
    assert list(db.getAuthorizedKeys(b"ops")) == []
    key = new_key()
    path.write_bytes(key.public().toString("openssh") + b"\n")
    assert list(db.getAuthorizedKeys(b"anyone")) == [key.public()]
    path.unlink()
    assert list(db.getAuthorizedKeys(b"ops")) == []


def test_a_key_offer_without_signature_is_answered_at_once_and_not_logged(
    tmp_path: Path,
) -> None:
    """Every SSH key login starts with the key offered unsigned, which Conch
    answers with ``ValidPublicKey``: that is no failed login."""
    allowed, stranger = new_key(), new_key()
    path = tmp_path / "authorized_keys"
    path.write_bytes(allowed.public().toString("openssh") + b"\n")
    clock = task.Clock()
    checker = AuditedChecker(
        SSHPublicKeyChecker(AuthorizedKeysFile(path)), clock, FAILED_LOGIN_DELAY, "ssh"
    )
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("bambid.manhole"):
            events.append(event)

    def offer(key: keys.Key, signed: bool) -> SSHPrivateKey:
        blob = key.public().blob()
        data = b"session data" if signed else None
        signature = key.sign(data) if data is not None else None
        return SSHPrivateKey(b"ops", b"ssh-ed25519", blob, data, signature)

    case = SynchronousTestCase()
    globalLogPublisher.addObserver(observe)
    try:
        unsigned = checker.requestAvatarId(offer(allowed, signed=False))
        case.failureResultOf(unsigned, ValidPublicKey)  # at once: no delay
        assert events == []
        signed = checker.requestAvatarId(offer(allowed, signed=True))
        assert case.successResultOf(signed) == b"ops"
        assert [e["log_format"] for e in events] == ["manhole: {user} logged in over {how}"]
        events.clear()
        refused = checker.requestAvatarId(offer(stranger, signed=True))
        case.assertNoResult(refused)  # failures wait
        clock.advance(FAILED_LOGIN_DELAY)
        failure = case.failureResultOf(refused, UnauthorizedLogin)
        assert not failure.check(ValidPublicKey)
        assert [e["log_format"] for e in events] == ["manhole: failed {how} login as {user}"]
    finally:
        globalLogPublisher.removeObserver(observe)
