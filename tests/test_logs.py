"""Logging: text on a terminal, JSON lines otherwise."""

from __future__ import annotations

import io
import json
import os
import pty

from twisted.logger import Logger, LogLevel

from bambid.logs import observer_for


def test_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    observer = observer_for(stream)
    Logger(namespace="bambid.test", observer=observer).info("hello {who}", who="operator")
    line = stream.getvalue().strip()
    event = json.loads(line)
    assert event["who"] == "operator"
    assert event["log_level"]["name"] == LogLevel.info.name
    assert "\n" not in line


def test_text_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        observer = observer_for(terminal)
        Logger(namespace="bambid.test", observer=observer).info("hello {who}", who="operator")
        terminal.flush()
    text = os.read(leader, 4096).decode()
    os.close(leader)
    assert "hello operator" in text
    assert "{" not in text
