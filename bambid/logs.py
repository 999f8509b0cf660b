"""Log output for ``twistd``: readable text on a terminal, JSON lines otherwise.

``twist`` already behaves this way (``--log-format`` defaults to JSON when the
log is not a TTY). ``twistd`` does not, so it takes this observer:
``twistd -n --logger=bambid.logs.observer bambid``. Under systemd the JSON
lines go to the journal with every event field preserved.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import (
    ILogObserver,
    jsonFileLogObserver,
    textFileLogObserver,
)


def observer_for(stream: TextIO) -> ILogObserver:
    """Text for a terminal, one JSON object per line for anything else."""
    if stream.isatty():
        return textFileLogObserver(stream)
    return jsonFileLogObserver(stream, recordSeparator="")


def observer() -> ILogObserver:
    """The factory named by ``twistd --logger``; writes to standard output."""
    return observer_for(sys.stdout)
