"""Runs the real daemon as a subprocess (``python -m twisted bambid``) on a free
port and tells the tests where it listens."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"bambid listening on .*port=(\d+)")


def daemon_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAMBID_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


@attrs.define
class Daemon:
    process: subprocess.Popen[str]
    port: int
    workdir: Path
    output: list[str]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @classmethod
    @contextmanager
    def start(
        cls,
        workdir: Path,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        runner: tuple[str, ...] = (sys.executable, "-m", "twisted", "--log-format=text"),
    ) -> Iterator[Daemon]:
        """Start ``RUNNER bambid --port tcp:0:interface=127.0.0.1 ARGS`` in ``workdir``."""
        process = subprocess.Popen(
            [*runner, "bambid", "--port", "tcp:0:interface=127.0.0.1", *args],
            cwd=workdir,
            env=daemon_environment(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output: list[str] = []
        try:
            port = cls._wait_for_port(process, output)
            daemon = cls(process, port, workdir, output)
            drain = threading.Thread(target=daemon._drain, daemon=True)
            drain.start()
            yield daemon
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)

    @staticmethod
    def _wait_for_port(process: subprocess.Popen[str], output: list[str]) -> int:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match:
                return int(match.group(1))
        raise RuntimeError("daemon exited before listening:\n" + "".join(output))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)
