# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""HealthServer: listening on an endpoint string; a port it cannot bind is reported, not hidden."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import treq
from twisted.internet import error as net_error
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource

from keycast_tw.cli.daemon import fetch, target_from_endpoint
from keycast_tw.metrics import Metrics
from keycast_tw.web.server import HealthServer, QuietSite

#: A listener that accepts connections and ignores them (to hold a port).
NULL_FACTORY: Any = ServerFactory.forProtocol(Protocol)


class TakenPortReactor(MemoryReactorClock):
    """A reactor on which every port is already in use."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise net_error.CannotListenError(interface, port, OSError(98, "Address already in use"))


def health_server(endpoint: str, reactor: Any, errors: list[str]) -> HealthServer:
    return HealthServer(
        endpoint,
        reactor=reactor,
        status=lambda: {},
        readiness=lambda: [],
        metrics=Metrics(),
        on_error=errors.append,
    )


class ListenTests(SynchronousTestCase):
    def test_taken_port_reports_one_line(self) -> None:
        """A port in use calls on_error once with one line naming the endpoint and the cause."""
        errors: list[str] = []
        server = health_server("tcp:8080:interface=127.0.0.1", TakenPortReactor(), errors)
        server.startService()
        self.assertEqual(len(errors), 1)
        self.assertIn("tcp:8080:interface=127.0.0.1", errors[0])
        self.assertIn("Address already in use", errors[0])
        self.assertNotIn("\n", errors[0])
        self.successResultOf(server.stopService())

    def test_invalid_endpoint_reports_one_line(self) -> None:
        """An endpoint string Twisted cannot build (systemd: without LISTEN_FDS, ssl: without
        its certificate) is one error line through on_error, not a traceback out of start."""
        for endpoint in ("systemd:domain=INET:index=0", "ssl:18443:privateKey=/nonexistent.pem"):
            errors: list[str] = []
            server = health_server(endpoint, MemoryReactorClock(), errors)
            server.startService()
            self.assertEqual(len(errors), 1, endpoint)
            self.assertTrue(errors[0].startswith(f"health endpoint {endpoint} is invalid: "))
            self.assertNotIn("\n", errors[0])
            self.successResultOf(server.stopService())

    def test_listens_on_endpoint(self) -> None:
        """The endpoint string decides port and interface."""
        memory = MemoryReactorClock()
        errors: list[str] = []
        server = health_server("tcp:8181:interface=127.0.0.1", memory, errors)
        server.startService()
        self.assertEqual([(p[0], p[3]) for p in memory.tcpServers], [(8181, "127.0.0.1")])
        self.assertEqual(errors, [])
        self.successResultOf(server.stopService())


class SiteLogTests(SynchronousTestCase):
    def test_site_start_and_stop_are_silent(self) -> None:
        """The site adds no "Starting factory" lines: HealthServer logs the endpoint once."""
        site = QuietSite(Resource())
        with capturedLogs() as logs:
            site.doStart()
            site.doStop()
        self.assertEqual(list(logs), [])


class RealListenTests(TestCase):
    """Loopback only: a port really taken by another listener, and a real stop."""

    async def test_taken_port_on_loopback(self) -> None:
        """Binding a port another socket holds reports the error through on_error."""
        taken = reactor.listenTCP(0, NULL_FACTORY, interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port  # type: ignore[attr-defined]
        errors: list[str] = []
        server = health_server(f"tcp:{port}:interface=127.0.0.1", reactor, errors)
        server.startService()
        await server.stopService()
        self.assertEqual(len(errors), 1)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1 cannot listen", errors[0])
        self.assertNotIn("\n", errors[0])

    async def test_serves_then_stop_closes_port(self) -> None:
        """/health answers 200 while running; after stopService the port refuses connections."""
        probe = reactor.listenTCP(0, NULL_FACTORY, interface="127.0.0.1")
        port = probe.getHost().port  # type: ignore[attr-defined]
        await maybeDeferred(probe.stopListening)
        errors: list[str] = []
        server = health_server(f"tcp:{port}:interface=127.0.0.1", reactor, errors)
        server.startService()
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{port}/health", pool=pool, timeout=5)
        self.assertEqual((response.code, await response.text()), (200, "OK"))
        await server.stopService()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        with self.assertRaises(net_error.ConnectionRefusedError):
            await endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(errors, [])

    async def test_unix_socket_reached_by_the_cli(self) -> None:
        """A ``unix:`` health endpoint serves, and the CLI's client dials it by that string."""
        directory = tempfile.mkdtemp(prefix="kc-health-")  # sun_path is short: not _trial_temp
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        endpoint = f"unix:{os.path.join(directory, 'health.sock')}"
        errors: list[str] = []
        server = health_server(endpoint, reactor, errors)
        server.startService()
        self.addCleanup(server.stopService)
        target = target_from_endpoint(endpoint)
        code, body = await deferToThread(fetch, target, "/health", 5.0)
        self.assertEqual((code, body), (200, b"OK"))
        self.assertEqual(errors, [])
