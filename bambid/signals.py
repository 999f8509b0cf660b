"""SIGTERM and SIGINT mean "shut down gracefully and exit 0".

Twisted's own handlers stop the reactor too, but ``twist`` and ``twistd`` then
re-raise the signal on the way out, so the process dies with status -15/-2
and systemd records a failure for an ordinary stop. These handlers stop the
reactor the same way (every "before shutdown" trigger, so every service's
``stopService``, still runs) without marking the exit as a signal.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

_log = Logger()


def install(reactor: Any) -> None:
    """Replace the reactor's SIGTERM/SIGINT handlers; call once it is running."""

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while already stopping

    def handler(number: int, frame: FrameType | None) -> None:
        _log.info("received {signal}; shutting down", signal=signal.Signals(number).name)
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
