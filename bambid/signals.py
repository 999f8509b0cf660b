"""SIGTERM and SIGINT mean "shut down gracefully and exit 0".

Twisted's own handlers stop the reactor too, but ``twist`` and ``twistd`` then
re-raise the signal on the way out, so the process dies with status -15/-2
and systemd records a failure for an ordinary stop. These handlers stop the
reactor the same way (every "before shutdown" trigger, so every service's
``stopService``, still runs) without marking the exit as a signal.

SIGHUP means "reload": every callback given to ``on_reload`` is called in the
reactor thread (``bambid.tap`` gives the trigger catalog's reload, and
``bambid.reload``'s: the persona, the word filter, the help pages and
``[limits]``; a broken file is logged and the old one stays). ``on_reload``
only records the callback: the handler itself is installed by ``install``, in
the daemon. ``reload()`` is the one entry point (the manhole calls it too).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

_log = Logger()

#: What SIGHUP calls (see ``on_reload``).
_reloads: list[Callable[[], object]] = []


def on_reload(callback: Callable[[], object]) -> None:
    """Call ``callback()`` (in the reactor thread) on every SIGHUP."""
    _reloads.append(callback)


def reload() -> Deferred[None]:
    """Run every ``on_reload`` callback; one that raises or whose Deferred
    fails is logged. The result fires once every callback's result has."""
    running: list[Deferred[object]] = []
    for callback in list(_reloads):
        result = maybeDeferred(callback)
        result.addErrback(lambda failure: _log.failure("reloading on SIGHUP failed", failure))
        running.append(result)
    done: Deferred[None] = DeferredList(running).addCallback(lambda _: None)
    return done


def install(reactor: Any) -> None:
    """Replace the reactor's SIGTERM/SIGINT handlers and handle SIGHUP
    (``reload``); call once it is running."""

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

    def hangup(number: int, frame: FrameType | None) -> None:
        _log.info("received SIGHUP; reloading")
        reactor.callFromThread(reload)

    signal.signal(signal.SIGHUP, hangup)
