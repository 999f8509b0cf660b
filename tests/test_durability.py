"""kill -9 durability of SQLiteStorage: every append acknowledged to a caller is
in the database after the process is killed without warning.

A real subprocess (``tests/durability_writer.py``) appends chat messages and
prints each acknowledged sequence number; the test reads them until it has
enough, sends SIGKILL, and checks the file with its own SQLite connection.
Three rounds on one file: each writer resumes after the previous one was
killed, so recovery after a crash is exercised too.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRITER = REPO / "tests" / "durability_writer.py"


def acknowledged_then_killed(db: Path, log: Path, wanted: int) -> list[int]:
    """Run the writer until it has acknowledged ``wanted`` appends, kill -9 it,
    and return every sequence number it acknowledged."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with log.open("ab") as stderr:
        writer = subprocess.Popen(
            [sys.executable, str(WRITER), str(db)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
    acknowledged: list[int] = []
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n", log.read_text()
        while len(acknowledged) < wanted:
            line = writer.stdout.readline()
            assert line, f"writer exited early:\n{log.read_text()}"
            acknowledged.append(int(line))
        writer.send_signal(signal.SIGKILL)
        # Whatever it printed before dying was acknowledged too.
        acknowledged.extend(int(line) for line in writer.stdout.read().split())
        assert writer.wait(timeout=60) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    return acknowledged


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "durable.sqlite3"
    log = tmp_path / "writer.log"
    acknowledged: list[int] = []
    for wanted in (200, 300, 200):
        acknowledged += acknowledged_then_killed(db, log, wanted)

        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            stored = [
                seq
                for (seq,) in conn.execute(
                    "SELECT seq FROM chat_messages WHERE room = 'durable' ORDER BY seq"
                )
            ]
        finally:
            conn.close()
        missing = sorted(set(acknowledged) - set(stored))
        assert missing == [], f"acknowledged but lost: {missing[:20]}"
        assert len(acknowledged) == len(set(acknowledged))  # never acknowledged twice
        assert stored == list(range(1, len(stored) + 1))  # and no gaps
