"""``twist bambid`` / ``twistd -n bambid``: command-line options and the service tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from twisted.application.service import IService
from twisted.python import usage

from bambid import config as configuration


class Options(usage.Options):
    """Options of the bambid plugin. Everything else lives in the config file."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (optional; see etc/bambid.toml.example)."],
        [
            "port",
            "p",
            None,
            "Listening endpoint, overriding server.endpoint "
            "(e.g. tcp:6969:interface=127.0.0.1, unix:/run/bambid.sock, "
            "systemd:domain=INET:index=0).",
        ],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded"] = self.load_configuration()
        except configuration.ConfigError as e:
            fail_configuration(e)

    def load_configuration(self) -> configuration.Config:
        """The configuration these options name (``--config``, the environment,
        ``--port``): at start-up, and again on SIGHUP. ``ConfigError``."""
        loaded = configuration.load(self["config"], os.environ)
        if self["port"]:
            loaded = configuration.with_endpoint(loaded, self["port"])
        return loaded


def makeService(options: Options) -> IService:
    """Build the whole daemon. Imports are local so ``twist --help`` stays light."""
    from twisted.internet import reactor

    from bambid import signals
    from bambid.service import BambidService

    loaded: configuration.Config = options["loaded"]
    try:
        service = BambidService(loaded, reactor, base_dir=Path.cwd(), freeze_heap=True)
    except configuration.ConfigError as e:
        fail_configuration(e)
    reactor.callWhenRunning(signals.install, reactor)
    signals.on_reload(service.triggers.reload_from_signal)
    # The persona, the word filter, the help pages and [limits] (bambid.reload).
    origin = options["config"] or "the environment"
    service.reloader.use_config(options.load_configuration, origin)
    signals.on_reload(service.reloader.reload)
    return service


def fail_configuration(error: configuration.ConfigError) -> NoReturn:
    """Stop start-up with one line naming the key, and exit status 2."""
    sys.stderr.write(f"bambid: configuration error: {error}\n")
    raise SystemExit(2)
