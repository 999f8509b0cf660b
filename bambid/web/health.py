"""What ``/health`` and ``/health/api`` report."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from bambid import __version__
from bambid.storage import Storage

PROTOCOL_VERSION = 1


def memory_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``), else the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@attrs.define
class HealthReporter:
    """Builds the health report. ``status`` is ``ok`` or ``down`` (storage
    unreachable: answered with HTTP 503); only storage decides it.

    ``ai_status`` and ``voice_status``, when given, return the ``ai`` and
    ``voice`` sections at once (the AI and TTS backends are checked in the
    background, never while /health waits). ``fanout_status`` returns the
    ``fanout`` section: how chat reaches the other instances
    (``{"mode": "local"}``: this process alone)."""

    storage: Storage
    clock: IReactorTime
    started_at: float
    connection_count: Callable[[], int]
    storage_timeout: float = 5.0
    ai_status: Callable[[], dict[str, Any]] | None = None
    voice_status: Callable[[], dict[str, Any]] | None = None
    fanout_status: Callable[[], dict[str, Any]] = lambda: {"mode": "local"}

    async def report(self) -> dict[str, Any]:
        storage = await self._check_storage()
        report = {
            "status": "ok" if storage["ok"] else "down",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime_s": round(self.clock.seconds() - self.started_at, 3),
            "server_time": self.clock.seconds(),
            "storage": storage,
            "connections": self.connection_count(),
            "memory_rss_bytes": memory_rss_bytes(),
            "fanout": self.fanout_status(),
        }
        if self.ai_status is not None:
            report["ai"] = self.ai_status()
        if self.voice_status is not None:
            report["voice"] = self.voice_status()
        return report

    async def _check_storage(self) -> dict[str, Any]:
        started = self.clock.seconds()
        result: dict[str, Any] = {"backend": self.storage.backend}
        try:
            ping: Deferred[None] = Deferred.fromCoroutine(self.storage.ping())
            ping.addTimeout(self.storage_timeout, self.clock)
            await ping
        except Exception as e:  # any failure means "down"; the reason is shown to operators
            result.update(ok=False, error=type(e).__name__ + (f": {e}" if str(e) else ""))
        else:
            result["ok"] = True
        result["latency_ms"] = round((self.clock.seconds() - started) * 1000, 3)
        return result
