"""The manhole: a Python shell inside the running daemon, for its operator.

Built from Twisted Conch's manhole (``twisted.conch.manhole``, the same
pieces ``twisted.conch.manhole_tap`` assembles), with login through
``twisted.cred``:

- Telnet on ``manhole.endpoint`` (default ``tcp:6023:interface=127.0.0.1``),
  only when ``manhole.credentials_file`` names a file of ``user:password``
  lines (``FilePasswordDB``; a password cannot contain ``:``; the file is read
  at each login). The file must exist and be private to its owner (no group
  or other permission bits, ``chmod 600``), else ``ConfigError``.
- SSH, optional, on ``manhole.ssh_endpoint`` when
  ``manhole.ssh_authorized_keys_file`` is set too: any key listed there logs
  in, under any user name (the file is read at each login). The host key is
  ``manhole.ssh_host_key_file``: an Ed25519 key created (mode 0600) on first
  start.

Telnet sends the password in clear text. An endpoint without
``interface=`` would listen on every address: refused (``ConfigError``).
An explicit non-loopback ``interface=`` is taken as meant, with a loud
warning in the log. A failed login is logged and answered only after
``FAILED_LOGIN_DELAY`` seconds.

The namespace (``Toolbox.namespace``): ``service`` (the ``BambidService``),
``config``, ``storage``, and the helpers ``online()``, ``kick(name,
reason="")``, ``notice(text)``, ``reload()``, ``queues()``,
``maintenance(on=None, message=None)``, ``help()``. The manhole shows a
Deferred and, later, its result.
"""

from __future__ import annotations

import ipaddress
import os
import pydoc
import re
import stat
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import interfaces as conch_interfaces
from twisted.conch import manhole, manhole_ssh, telnet
from twisted.conch.error import ValidPublicKey
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import checkers, error, portal
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bambid import signals
from bambid.config import ConfigError, ManholeConfig
from bambid.models import UserInteraction

with warnings.catch_warnings():
    # On Python < 3.13 it imports the deprecated ``spwd`` (for UNIX logins we never use).
    warnings.filterwarnings("ignore", "'spwd' is deprecated", DeprecationWarning)
    from twisted.conch.checkers import (
        IAuthorizedKeysDB,
        SSHPublicKeyChecker,
        readAuthorizedKeyFile,
    )

if TYPE_CHECKING:
    from bambid.service import BambidService

#: Seconds before a failed login is answered (slows down guessing).
FAILED_LOGIN_DELAY = 1.0
#: The longest ``notice`` text.
MAX_NOTICE_LENGTH = 500
#: WebSocket close code of ``kick`` (policy), as moderation's kick.
CLOSE_POLICY = 1008

_INTERFACE = re.compile(r"(?:^|(?<!\\):)interface=((?:\\.|[^:])*)")


# --- configuration checks --------------------------------------------------------------


def resolve(setting: str, base_dir: Path) -> Path:
    """A file setting: absolute, or relative to the daemon's directory."""
    path = Path(setting).expanduser()
    return path if path.is_absolute() else base_dir / path


def check_private_file(key: str, path: Path, allowed: int = 0o700) -> None:
    """``ConfigError`` naming ``key`` unless ``path`` is a regular file without
    permission bits outside ``allowed`` (default: none for group and others)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(key, f"no such file: {path}") from None
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(key, f"not a regular file: {path}")
    extra = stat.S_IMODE(info.st_mode) & ~allowed
    if extra:
        raise ConfigError(
            key,
            f"{path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"chmod {'600' if allowed == 0o700 else '644'} it",
        )


def check_credentials(key: str, path: Path) -> int:
    """How many ``user:password`` lines ``path`` has; ``ConfigError`` naming
    ``key`` if it is missing, not private or has none."""
    check_private_file(key, path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e}") from None
    users = 0
    for line in lines:
        user, _, password = line.rstrip().partition(b":")
        if user and password and not user.startswith(b"#"):
            users += 1
    if not users:
        raise ConfigError(key, f"{path} has no 'user:password' line")
    return users


def endpoint_interface(description: str) -> str | None:
    """The ``interface=`` of a server endpoint string (unescaped), or None."""
    match = _INTERFACE.search(description)
    return None if match is None else re.sub(r"\\(.)", r"\1", match.group(1))


def is_loopback(interface: str) -> bool:
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def parse_endpoint(key: str, description: str, reactor: Any) -> IStreamServerEndpoint:
    """The endpoint for ``description``. ``ConfigError`` naming ``key`` when it
    is invalid or a TCP endpoint without ``interface=`` (every address); an
    explicit non-loopback interface is logged as a warning."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl"):
        interface = endpoint_interface(description)
        if interface is None:
            raise ConfigError(
                key,
                f"{description!r} would listen on every address; add "
                "interface=127.0.0.1 (or name the address you really mean)",
            )
        if not is_loopback(interface):
            Manhole._log.warn(
                "!!! {key} listens on {interface}, NOT loopback: anyone who can reach it "
                "and log in runs Python inside bambid. Make sure this is what you want. !!!",
                key=key,
                interface=interface,
            )
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(key, f"not a valid endpoint ({e}): {description!r}") from e
    return endpoint


# --- SSH keys ------------------------------------------------------------------------


@implementer(IAuthorizedKeysDB)
@attrs.frozen
class AuthorizedKeysFile:
    """Every key in one ``authorized_keys`` file, for any user name; the file
    is read at each login, so edits apply at once."""

    path: Path

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        try:
            with self.path.open("rb") as f:
                return list(readAuthorizedKeyFile(f))
        except OSError as e:
            Manhole._log.warn("cannot read {path}: {error}", path=str(self.path), error=str(e))
            return []


def check_authorized_keys(key: str, path: Path) -> int:
    """How many keys ``path`` lists; ``ConfigError`` naming ``key`` if it is
    missing, writable by group or others, or lists none."""
    check_private_file(key, path, allowed=0o744)
    found = len(list(AuthorizedKeysFile(path).getAuthorizedKeys(b"")))
    if not found:
        raise ConfigError(key, f"{path} lists no SSH public key")
    return found


def load_or_create_host_key(key: str, path: Path) -> keys.Key:
    """The SSH host key at ``path``: created (Ed25519, mode 0600, its
    directory made if needed) when missing; ``ConfigError`` naming ``key`` if
    it is open to group or others or cannot be read."""
    if not path.exists():
        private = ed25519.Ed25519PrivateKey.generate()
        text = keys.Key(private).toString("openssh")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
        except OSError as e:
            raise ConfigError(key, f"cannot create {path}: {e}") from None
        Manhole._log.info("created the manhole SSH host key {path}", path=str(path))
    check_private_file(key, path)
    try:
        return keys.Key.fromFile(str(path))
    except (OSError, keys.BadKeyError, ValueError) as e:
        raise ConfigError(key, f"cannot load the SSH host key {path}: {e}") from None


# --- cred: checkers and realms -----------------------------------------------------------


@implementer(checkers.ICredentialsChecker)
class AuditedChecker:
    """``checker`` with every login logged; failures answered after ``delay``.

    Conch's ``ValidPublicKey`` (an ``UnauthorizedLogin``) is not a failure:
    it answers the SSH client's offer of a listed key without a signature
    ("sign with it, please"), the first step of every key login; it passes
    through at once, unlogged."""

    _log = Logger()

    def __init__(
        self, checker: checkers.ICredentialsChecker, clock: Any, delay: float, how: str
    ) -> None:
        self.checker = checker
        self.credentialInterfaces = checker.credentialInterfaces
        self.clock = clock
        self.delay = delay
        self.how = how

    def requestAvatarId(self, given: Any) -> Deferred[Any]:
        name = getattr(given, "username", b"?")
        user = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        checking: Deferred[Any] = defer.maybeDeferred(self.checker.requestAvatarId, given)

        def accepted(avatar_id: Any) -> Any:
            self._log.info("manhole: {user} logged in over {how}", user=user, how=self.how)
            return avatar_id

        def refused(failure: Failure) -> Failure | Deferred[Any]:
            if failure.check(ValidPublicKey):
                return failure
            if failure.check(error.UnauthorizedLogin, error.UnhandledCredentials):
                self._log.warn("manhole: failed {how} login as {user}", user=user, how=self.how)
            else:
                self._log.failure("manhole: login check failed", failure)
            return task.deferLater(self.clock, self.delay, lambda: failure)

        return checking.addCallbacks(accepted, refused)


@implementer(portal.IRealm)
class TelnetRealm:
    """Gives a logged-in telnet user a colored manhole on ``namespace``."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    def requestAvatar(
        self, avatar_id: Any, mind: Any, *interfaces: Any
    ) -> tuple[Any, Any, Callable[[], None]]:
        if telnet.ITelnetProtocol not in interfaces:
            raise NotImplementedError("the manhole only speaks telnet here")
        shell = telnet.TelnetBootstrapProtocol(
            insults.ServerProtocol, manhole.ColoredManhole, self.namespace
        )
        return telnet.ITelnetProtocol, shell, lambda: None


def telnet_factory(login: portal.Portal) -> ServerFactory:
    """Telnet with a username/password prompt, then the manhole."""

    def build() -> Protocol:
        protocol: Protocol = telnet.TelnetTransport(telnet.AuthenticatingTelnetProtocol, login)
        return protocol

    factory = ServerFactory()
    factory.protocol = build
    return factory


def ssh_factory(login: portal.Portal, host_key: keys.Key) -> manhole_ssh.ConchFactory:
    """Conch's SSH server with ``host_key`` (its own dicts: the class's are shared)."""
    factory = manhole_ssh.ConchFactory(login)
    kind = host_key.sshType()
    factory.publicKeys = {kind: host_key.public()}
    # Annotated as bytes in Twisted; SSHFactory reads Key objects from it.
    factory.privateKeys = {kind: host_key}  # type: ignore[dict-item]
    return factory


class ManholeSession(manhole_ssh.TerminalSession):
    """Conch's terminal session with the two requests it leaves unimplemented
    (they raise there): a new window size redraws for that size, and the end
    of the client's input ends the session."""

    _shell: manhole_ssh.TerminalSessionTransport | None = None

    def openShell(self, proto: Any) -> None:
        self._shell = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            conch_interfaces.IConchUser(self.original),
            self.width,
            self.height,
        )

    def windowChanged(self, newWindowSize: Any) -> None:
        if self._shell is not None:
            height, width = newWindowSize[:2]
            self._shell.chainedProtocol.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self._shell is not None:
            self._shell.proto.loseConnection()


@implementer(portal.IRealm)
class SSHRealm(manhole_ssh.TerminalRealm):
    """Gives a logged-in SSH user a colored manhole on ``namespace``."""

    sessionFactory = ManholeSession

    def __init__(self, namespace: dict[str, Any]) -> None:
        super().__init__()

        def terminal() -> insults.ServerProtocol:
            return insults.ServerProtocol(manhole.ColoredManhole, namespace)

        # Typed as a class; any callable making the terminal protocol will do.
        self.chainedProtocolFactory = terminal  # type: ignore[assignment]


# --- the service part ----------------------------------------------------------------------


class Manhole:
    """The telnet and SSH listeners (see the module doc). The constructor
    checks the configuration (``ConfigError``); ``start`` listens."""

    _log = Logger()

    def __init__(
        self, config: ManholeConfig, reactor: Any, base_dir: Path, namespace: dict[str, Any]
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.namespace = namespace
        self.ports: list[IListeningPort] = []
        #: (what, endpoint, factory) for each listener to start.
        self.listeners: list[tuple[str, IStreamServerEndpoint, Factory]] = []
        if config.credentials_file:
            key = "manhole.credentials_file"
            path = resolve(config.credentials_file, base_dir)
            check_credentials(key, path)
            endpoint = parse_endpoint("manhole.endpoint", config.endpoint, reactor)
            password_db = checkers.FilePasswordDB(str(path))
            checker = AuditedChecker(password_db, reactor, FAILED_LOGIN_DELAY, "telnet")
            login = portal.Portal(TelnetRealm(namespace), [checker])
            self.listeners.append(("telnet", endpoint, telnet_factory(login)))
        if bool(config.ssh_endpoint) != bool(config.ssh_authorized_keys_file):
            missing = "ssh_authorized_keys_file" if config.ssh_endpoint else "ssh_endpoint"
            raise ConfigError(f"manhole.{missing}", "the SSH manhole needs both ssh_ settings")
        if config.ssh_endpoint:
            keys_path = resolve(config.ssh_authorized_keys_file, base_dir)
            check_authorized_keys("manhole.ssh_authorized_keys_file", keys_path)
            endpoint = parse_endpoint("manhole.ssh_endpoint", config.ssh_endpoint, reactor)
            host_key = load_or_create_host_key(
                "manhole.ssh_host_key_file", resolve(config.ssh_host_key_file, base_dir)
            )
            key_checker = AuditedChecker(
                SSHPublicKeyChecker(AuthorizedKeysFile(keys_path)),
                reactor,
                FAILED_LOGIN_DELAY,
                "ssh",
            )
            login = portal.Portal(SSHRealm(namespace), [key_checker])
            self.listeners.append(("ssh", endpoint, ssh_factory(login, host_key)))

    @property
    def enabled(self) -> bool:
        return bool(self.listeners)

    async def start(self) -> None:
        for what, endpoint, factory in self.listeners:
            port = await endpoint.listen(factory)
            self.ports.append(port)
            self._log.info(
                "manhole ({what}) listening on {address}", what=what, address=str(port.getHost())
            )

    async def stop(self) -> None:
        """Stop listening (sessions still open end with the process)."""
        ports, self.ports = self.ports, []
        for port in ports:
            await defer.maybeDeferred(port.stopListening)


# --- the namespace -----------------------------------------------------------------------------


class _Text(str):
    """Text that the manhole shows as it is, not as a quoted ``repr``."""

    def __repr__(self) -> str:
        return str(self)


class Toolbox:
    """The helpers of the manhole namespace, over the running ``service``."""

    _log = Logger()

    def __init__(self, service: BambidService) -> None:
        self.service = service

    def namespace(self) -> dict[str, Any]:
        """What a manhole session starts with (shared by every session)."""
        return {
            "service": self.service,
            "config": self.service.config,
            "storage": self.service.storage,
            "online": self.online,
            "kick": self.kick,
            "notice": self.notice,
            "reload": self.reload,
            "queues": self.queues,
            "maintenance": self.maintenance,
            "help": self.help,
        }

    def online(self) -> list[dict[str, Any]]:
        """Who is connected over WebSocket, one entry per person.

        Each entry: name, role, guest, the rooms they are in, how many
        connections; sorted by name, then one entry named None counting the
        anonymous and not yet greeted connections."""
        hub = self.service.chat.hub
        people: dict[str, dict[str, Any]] = {}
        anonymous: dict[str, Any] = {
            "name": None,
            "role": None,
            "guest": None,
            "rooms": [],
            "connections": 0,
        }
        for connection in list(self.service.ws_factory.connections):
            identity = hub.identity_of(connection)
            if identity is None:
                anonymous["connections"] += 1
                continue
            entry = people.setdefault(
                identity.key, {**identity.public(), "rooms": set(), "connections": 0}
            )
            entry["rooms"] |= hub.rooms_of(connection)
            entry["connections"] += 1
        listing = [
            {**entry, "rooms": sorted(entry["rooms"])}
            for _, entry in sorted(people.items(), key=lambda item: item[0])
        ]
        if anonymous["connections"]:
            listing.append(anonymous)
        return listing

    def kick(self, name: str, reason: str = "") -> int:
        """Disconnect every connection of a person; returns how many.

        As moderation's kick: WebSocket close 1008 "kicked: reason"; recorded
        as ``moderation.kick`` by "manhole"."""
        reason = str(reason)[:MAX_NOTICE_LENGTH]
        closed = self.service.chat.hub.close_person(
            name, CLOSE_POLICY, f"kicked: {reason}" if reason else "kicked"
        )
        self._record("kick", {"target": name, "reason": reason, "connections": closed})
        return closed

    def notice(self, text: str) -> int:
        """Send a system notice to everyone connected; returns how many got it.

        The frame is ``system {message: text, level: "info"}``
        (docs/protocol.md, "Server notices"), to every greeted WebSocket
        connection. ``ValueError`` for empty text or more than 500 characters."""
        text = str(text).strip()
        if not text or len(text) > MAX_NOTICE_LENGTH:
            raise ValueError(f"a notice is 1 to {MAX_NOTICE_LENGTH} characters")
        frame = self.service.ws_factory.prepare("system", message=text, level="info")
        sent = 0
        for connection in list(self.service.ws_factory.connections):
            if connection.greeted:
                connection.send_prepared(frame)
                sent += 1
        self._record("system_notice", {"text": text, "connections": sent})
        return sent

    def reload(self) -> str:
        """Reload what SIGHUP reloads (the trigger catalog, ...).

        ``bambid.signals.reload``: a failing reload is logged, and the old
        state stays."""
        signals.reload()
        return _Text("reloaded (see the log for problems)")

    def queues(self) -> dict[str, Any]:
        """What is waiting and running: companion, voice, WebSocket.

        Companion replies waiting for a slot and generating, voice syntheses
        in flight, WebSocket connections (and how many are greeted)."""
        router = self.service.companion.router
        speech = self.service.voice.speech
        # Speech keeps no public counter; this debugging view reads its table.
        flights = getattr(speech, "_flights", None)
        return {
            "companion": {"waiting": router.waiting, "running": router.running},
            "voice": {"in_flight": None if flights is None else len(flights)},
            "websocket": {
                "connections": len(self.service.ws_factory.connections),
                "greeted": sum(1 for c in self.service.ws_factory.connections if c.greeted),
            },
        }

    def maintenance(self, on: bool | None = None, message: str | None = None) -> Any:
        """Show maintenance mode, or switch it for every instance.

        ``maintenance()``: the state ``{on, message, since, by}``.
        ``maintenance(True, "back at 5")`` / ``maintenance(False)``: switch it
        (docs/operations.md, "Maintenance mode"); answers a Deferred of the
        new state."""
        switch = self.service.maintenance
        if on is None:
            return switch.state.to_document()
        switching = Deferred.fromCoroutine(switch.set(bool(on), "manhole", message, via="manhole"))
        return switching.addCallback(lambda state: state.to_document())

    def help(self, thing: Any = None) -> Any:
        """``help()``: the helpers; ``help(x)``: the documentation of ``x``."""
        if thing is not None:
            return _Text(pydoc.plain(pydoc.render_doc(thing)))
        lines = ["bambid manhole. Names: service, config, storage, and:"]
        for name, value in self.namespace().items():
            if callable(value) and name != "help":
                summary = (value.__doc__ or "").strip().split("\n")[0]
                lines.append(f"  {name}(): {summary}")
        lines.append("help(x) shows the documentation of x; Ctrl-D on an empty line leaves.")
        return _Text("\n".join(lines))

    def _record(self, cmd: str, details: dict[str, Any]) -> None:
        entry = UserInteraction(
            username="manhole",
            action=f"moderation.{cmd}",
            timestamp=self.service.reactor.seconds(),
            details=details,
        )
        recording = Deferred.fromCoroutine(self.service.storage.record(entry))
        recording.addErrback(
            lambda f: self._log.failure("manhole: cannot record {cmd}", f, cmd=cmd)
        )
