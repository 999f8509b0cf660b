"""systemd's notification protocol (``Type=notify``), without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a file system path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` and sometimes
``WATCHDOG_PID``. The daemon sends newline-separated ``KEY=value`` datagrams
there: ``READY=1`` once it listens, ``WATCHDOG=1`` at half the watchdog
interval, ``STOPPING=1`` when it begins to shut down, ``STATUS=...`` for
``systemctl status``.

Contract: without ``NOTIFY_SOCKET`` every method does nothing, so the daemon
runs the same outside systemd. Sending never blocks (a non-blocking AF_UNIX
datagram socket) and never raises: the first failure is logged, later ones
are dropped silently. The watchdog pings come from a ``LoopingCall`` on the
reactor, so a reactor that stops turning stops the pings and systemd restarts
the daemon: that is the point of the watchdog.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def socket_address(value: str) -> str:
    """``NOTIFY_SOCKET`` as an AF_UNIX address: ``@name`` is the abstract
    socket ``\\0name``, anything else a path."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def describe(address: object) -> str:
    """``host:port`` of an IPv4/IPv6 address, a UNIX socket's path, else ``str()``."""
    host, port, name = (getattr(address, a, None) for a in ("host", "port", "name"))
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if name is not None:
        return name.decode() if isinstance(name, bytes) else str(name)
    return str(address)


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``WATCHDOG_USEC``; ``None``
    when there is no watchdog, when the value is not a positive integer, or when
    ``WATCHDOG_PID`` names another process (the watchdog is not ours)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(usec) / 2 / 1_000_000


class SystemdNotifier:
    """Talks to the service manager. ``address`` ``None`` means "not under
    systemd" (nothing is ever sent); ``reactor`` runs the watchdog."""

    _log = Logger()

    def __init__(self, address: str | None, watchdog: float | None, reactor: Any) -> None:
        self.address = address
        self.watchdog = watchdog if address is not None else None
        self._reactor = reactor
        self._socket: socket.socket | None = None
        self._failed = False
        self._pinger: LoopingCall | None = None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], reactor: Any, pid: int | None = None
    ) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
        (``pid`` defaults to this process's)."""
        value = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        pid = os.getpid() if pid is None else pid
        interval = watchdog_interval(environ, pid)
        if address is not None and interval is None and environ.get("WATCHDOG_USEC"):
            cls._log.info(
                "systemd watchdog not ours (WATCHDOG_PID={owner}, this is {pid}) "
                "or WATCHDOG_USEC={usec} not a positive integer: no pings",
                owner=environ.get("WATCHDOG_PID", ""),
                pid=pid,
                usec=environ["WATCHDOG_USEC"],
            )
        return cls(address, interval, reactor)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> None:
        """Send ``KEY=value`` lines as one datagram; never raises."""
        if self.address is None:
            return
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                self._log.warn(
                    "cannot notify systemd at {address}: {error} (further failures are not logged)",
                    address=self.address.replace("\0", "@"),
                    error=e,
                )

    def ready(self, status: str) -> None:
        """``READY=1`` with a status line, then start the watchdog pings
        (systemd arms the watchdog once start-up is complete)."""
        self.notify("READY=1", f"STATUS={status}")
        if self.watchdog is not None and self._pinger is None:
            self._log.info("systemd watchdog: pinging every {interval}s", interval=self.watchdog)
            self._pinger = LoopingCall(self.notify, "WATCHDOG=1")
            self._pinger.clock = self._reactor
            self._pinger.start(self.watchdog, now=True)

    def stopping(self, status: str = "stopping") -> None:
        """``STOPPING=1``: stop the pings, tell systemd, close the socket."""
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self.notify("STOPPING=1", f"STATUS={status}")
        if self._socket is not None:
            self._socket.close()
            self._socket = None
