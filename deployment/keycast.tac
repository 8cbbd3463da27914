"""keycast as a .tac file: ``twistd -ny deployment/keycast.tac [--pidfile PATH]``.

The same service tree as ``twistd -n keycast`` (keycast_tw.service.build_service), for
deployments that prefer a .tac to the plugin: the configuration comes from the environment only
(DATABASE_PATH, MASTER_KEY_PATH, KEYCAST_RELAYS, PORT or KEYCAST_HEALTH, KEYCAST_LOG_FORMAT, ...:
the names in docs/cli.md), since twistd passes no options to a .tac. A bad setting exits 1 with
one line. The log observer is set on the application, which twistd uses unless ``--logger`` is
given. Unlike the plugin, a .tac is loaded after twistd's pidfile check, so a stale pidfile
cannot be cleaned up from here: pass ``--pidfile`` on a tmpfs (or ``--pidfile ''``).
"""

import os

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import ILogObserver

from keycast_tw.config import ConfigError, config_from
from keycast_tw.logs import make_observer
from keycast_tw.service import build_service

try:
    config = config_from({}, os.environ)
except ConfigError as error:
    raise SystemExit(f"keycast: {error}") from None

application = Application("keycast")
application.setComponent(ILogObserver, make_observer(config.log_format, config.log_level))
build_service(config, reactor).setServiceParent(application)
