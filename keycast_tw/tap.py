"""``twistd -n keycast``: command-line options and makeService, and nothing else.

The options come from keycast_tw.config.OPTIONS, the table the ``keycast`` CLI reads too, so
each has one name, one environment fallback and one default. ``postOptions`` validates them into
a KeycastConfig and deals with two things that must happen before twistd goes on: a stale
pidfile is removed before twistd's own check refuses to start on it (a pidfile holding our own
PID, as PID 1 in a container, B9), and our log observer is selected. makeService does no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from keycast_tw.config import OPTIONS, ConfigError, KeycastConfig, config_from, option_spec
from keycast_tw.logs import LogConfigError, install_for_twistd
from keycast_tw.process import clean_stale_pidfile, pidfile_holder


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the keycast NIP-46 remote signer. Every option falls back to the environment "
        "variable named in its help, then to the default. Create the database and master key "
        "first with `keycast init`."
    )
    optParameters: ClassVar[list[list[str | None]]] = [
        [spec.name, None, None, spec.help_text()]
        for spec in OPTIONS
        if spec.daemon and not spec.repeatable
    ]

    def __init__(self, *, environ: Mapping[str, str] = os.environ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._environ = environ
        for spec in OPTIONS:
            if spec.repeatable:
                self[spec.name] = []
        self.config: KeycastConfig | None = None

    def opt_relay(self, url: str) -> None:
        self["relay"].append(url)

    # usage.Options shows a handler's docstring as its help: the table's, env and default too.
    opt_relay.__doc__ = option_spec("relay").help_text()

    def postOptions(self) -> None:
        given = {key: value for key, value in self.items() if value not in (None, [])}
        try:
            self.config = config_from(given, self._environ)
        except ConfigError as error:
            # One clear line and a non-zero exit, rather than twistd's usage dump.
            raise SystemExit(f"keycast: {error}") from None
        server_options: Any = getattr(self, "parent", None)
        if server_options is None:
            return
        pidfile = server_options.get("pidfile")
        clean_stale_pidfile(pidfile)
        holder = pidfile_holder(pidfile)
        if holder is not None:
            # twistd's own refusal advises another directory or --pidfile, which only leads
            # to the database lock's refusal; say what is going on instead.
            raise SystemExit(
                f"keycast: pidfile {pidfile} belongs to running process {holder}, probably"
                " another keycast daemon; stop it first"
            )
        try:
            install_for_twistd(
                server_options, format=self.config.log_format, level=self.config.log_level
            )
        except LogConfigError as error:
            raise SystemExit(f"keycast: {error}") from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from keycast_tw.service import build_service

    assert options.config is not None, "postOptions builds the configuration"
    return build_service(options.config, reactor)
