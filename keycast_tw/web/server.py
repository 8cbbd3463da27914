"""Serves the health app on a Twisted endpoint string; a port that cannot be bound is fatal.

StreamServerEndpointService would only log a failed listen and leave the daemon running blind
(the Rust original's bind panic exited 0, B14): here it is reported through ``on_error`` so the
daemon exits non-zero with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from keycast_tw.metrics import Metrics
from keycast_tw.web.health import HealthApp


class QuietSite(Site):
    """A Site without an access log: probes every few seconds would drown the runbook's lines."""

    noisy = False  # "Health endpoint listening on ..." says it once, with the endpoint string

    def log(self, request: Any) -> None:
        """Write no access-log line (the health app logs its own failures)."""


class HealthServer(Service):
    log = Logger()

    def __init__(
        self,
        endpoint: str,
        *,
        reactor: Any,
        status: Callable[[], dict[str, Any]],
        readiness: Callable[[], list[str]],
        metrics: Metrics,
        on_error: Callable[[str], None],
    ) -> None:
        self.setName("web")  # type: ignore[no-untyped-call]
        self.endpoint = endpoint
        self._reactor = reactor
        self._on_error = on_error
        self.app = HealthApp(clock=reactor, status=status, readiness=readiness, metrics=metrics)
        self._port: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        site = QuietSite(self.app.resource())  # type: ignore[no-untyped-call]
        try:
            endpoint = serverFromString(self._reactor, self.endpoint)  # type: ignore[no-untyped-call]
        except Exception as error:  # ssl: without its files, systemd: without LISTEN_FDS...
            self._on_error(f"health endpoint {self.endpoint} is invalid: {error}")
            return
        d = endpoint.listen(site)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: Any) -> None:
        self._port = port
        self.log.info("Health endpoint listening on {endpoint}", endpoint=self.endpoint)
        if not self.running:
            port.stopListening()

    def _failed(self, failure: Failure) -> None:
        self._on_error(
            f"health endpoint {self.endpoint} cannot listen: {failure.getErrorMessage()}"
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        # IListeningPort.stopListening may return a Deferred or None.
        return maybeDeferred(port.stopListening)
