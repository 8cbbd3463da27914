"""Real loopback relays: wss:// verification against a test CA, and an end-to-end reconnect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from OpenSSL.SSL import Error as TLSError
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from keycast_tw.relay.endpoint import endpoint_for_url
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.pool import RelayPool
from tests.relay_fakes import FakeRelayServer, relay_server_factory
from tests.tls_helpers import issue, make_ca, server_options, trust_root

TIMEOUT = 10.0
PUBKEY = "ab" * 32


class LiveRelayServer(FakeRelayServer):
    """FakeRelayServer that tells its factory about every change, for event-driven waits."""

    def onConnect(self, request: Any) -> None:
        super().onConnect(request)
        self.factory.changed()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        super().onMessage(payload, isBinary)
        self.factory.changed()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.lost += 1
        self.factory.changed()


class Waiter:
    """Deferreds that fire once a condition holds, re-checked whenever something changes."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def changed(self, *args: object) -> None:
        still = []
        for condition, d in self._waiting:
            if condition():
                # Resume the test from the reactor, not from inside the caller (which may be a
                # ClientService transition that must not be re-entered by a cleanup).
                reactor.callLater(0, d.callback, None)
            else:
                still.append((condition, d))
        self._waiting = still

    def until(self, condition: Callable[[], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if condition():
            d.callback(None)
        else:
            self._waiting.append((condition, d))
        d.addTimeout(TIMEOUT, reactor)
        return d


class PoolWatcher(Waiter):
    """An observer of the pool that re-checks waiters on every hook."""

    relay_connected = relay_disconnected = relay_subscribed = Waiter.changed

    def __init__(self) -> None:
        super().__init__()
        self.reconnects = 0

    def relay_reconnect(self, url: str) -> None:
        self.reconnects += 1
        self.changed()


class LiveRelayTests(TestCase):
    async def _listen(self, tls: Any = None) -> tuple[WebSocketServerFactory, int]:
        factory = relay_server_factory(reactor)
        factory.protocol = LiveRelayServer
        waiter = Waiter()
        factory.changed = waiter.changed
        factory.until = waiter.until
        factory.lost = 0
        if tls is None:
            endpoint: Any = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        else:
            endpoint = SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
        port: IListeningPort = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    def _pool(self, url: str, trust: Any = None) -> tuple[RelayPool, PoolWatcher]:
        pool = RelayPool(
            [url],
            reactor=reactor,
            on_event=lambda url, event: True,
            auth_signer=lambda template: template,
            endpoint_for_url=lambda r, u: endpoint_for_url(r, u, trust_root=trust, timeout=5),
            options=RelayOptions(initial_delay=0.05, max_delay=0.2, handshake_timeout=5),
            random=lambda: 0.0,
        )
        watcher = PoolWatcher()
        pool.add_observer(watcher)
        pool.set_bunker_pubkeys(frozenset([PUBKEY]))
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool, watcher

    async def _probe(self, url: str, trust: Any) -> BaseException:
        """Connect a bare protocol through endpoint_for_url; return why the connection ended."""
        lost: Deferred[BaseException] = Deferred()

        class Probe(Protocol):
            def connectionLost(self, reason: Failure) -> None:
                lost.callback(reason.value)

        await endpoint_for_url(reactor, url, trust_root=trust).connect(
            Factory.forProtocol(Probe)
        )
        return await lost.addTimeout(TIMEOUT, reactor)

    async def test_wss_verified_subscribes(self) -> None:
        """wss:// with a certificate from the trusted CA for the right name connects,
        subscribes and reports subscribed after EOSE."""
        ca = make_ca()
        factory, port = await self._listen(server_options(issue(ca, "localhost", "127.0.0.1")))
        pool, watcher = self._pool(f"wss://localhost:{port}", trust_root(ca))
        await factory.until(lambda: bool(factory.servers and factory.servers[0].of_type("REQ")))
        req = factory.servers[0].of_type("REQ")[0]
        self.assertEqual(req[2]["#p"], [PUBKEY])
        factory.servers[0].send("EOSE", req[1])
        await watcher.until(lambda: pool.subscribed_count() == 1)
        self.assertTrue(pool.status()[0]["subscribed"])

    async def test_wrong_hostname_refused(self) -> None:
        """A trusted certificate for another name is refused by hostname verification."""
        ca = make_ca()
        _, port = await self._listen(server_options(issue(ca, "other.example")))
        reason = await self._probe(f"wss://localhost:{port}", trust_root(ca))
        self.assertIsInstance(reason, VerificationError)

    async def test_untrusted_certificate_refused(self) -> None:
        """A certificate from a CA we do not trust is refused."""
        _, port = await self._listen(server_options(issue(make_ca("rogue"), "localhost")))
        reason = await self._probe(f"wss://localhost:{port}", trust_root(make_ca()))
        self.assertIsInstance(reason, TLSError)

    async def test_default_trust_store_refuses_test_ca(self) -> None:
        """Without an injected trust root the system store is used, which lacks our test CA."""
        _, port = await self._listen(server_options(issue(make_ca(), "localhost")))
        reason = await self._probe(f"wss://localhost:{port}", None)
        self.assertIsInstance(reason, TLSError)

    async def test_pool_never_opens_untrusted_relay(self) -> None:
        """The pool backs off from a relay whose certificate fails; no WebSocket is opened."""
        factory, port = await self._listen(server_options(issue(make_ca("rogue"), "localhost")))
        with capturedLogs() as logs:
            pool, watcher = self._pool(f"wss://localhost:{port}", trust_root(make_ca()))
            await watcher.until(lambda: watcher.reconnects >= 2)
        self.assertEqual(pool.connected_count(), 0)
        self.assertEqual(factory.servers, [])
        counts = pool.message_counts()[f"wss://localhost:{port}"]
        self.assertGreaterEqual(counts["handshake_failed"], 2)
        # The operator's log says why: the certificate, not just "closed uncleanly".
        retries = [e for e in logs if "reconnect in" in e["log_format"]]
        self.assertTrue(retries)
        for retry in retries:
            self.assertIn("certificate verify failed", retry["failure"])

    async def test_reconnect_end_to_end(self) -> None:
        """The relay closes the connection; the pool reconnects and subscribes again."""
        factory, port = await self._listen()
        pool, watcher = self._pool(f"ws://127.0.0.1:{port}")
        await factory.until(lambda: bool(factory.servers and factory.servers[0].received))
        factory.servers[0].sendClose(code=1000, reason="restarting")
        await factory.until(lambda: len(factory.servers) == 2 and bool(factory.servers[1].received))
        self.assertEqual(factory.servers[1].of_type("REQ")[0][2]["#p"], [PUBKEY])
        self.assertEqual(pool.status()[0]["reconnects"], 1)
        await watcher.until(lambda: pool.connected_count() == 1)
        await pool.stopService()
        await factory.until(lambda: factory.lost == 2)

    async def test_stop_closes_cleanly(self) -> None:
        """Stopping the pool sends the relay a close frame (1000) over real TCP, waits for the
        relay's answer, and logs a clean close with no reconnect."""
        ca = make_ca()
        factory, port = await self._listen(server_options(issue(ca, "localhost")))
        pool, watcher = self._pool(f"wss://localhost:{port}", trust_root(ca))
        await watcher.until(lambda: pool.connected_count() == 1)
        with capturedLogs() as logs:
            await pool.stopService()
        await factory.until(lambda: factory.lost == 1)
        self.assertEqual(factory.servers[0].close_frame, (1000, "keycast shutting down"))
        closes = [e["code"] for e in logs if "closed for shutdown" in e["log_format"]]
        self.assertEqual(closes, [1000])
        self.assertFalse(any("retry" in e["log_format"] for e in logs))
        self.assertEqual(pool.status()[0]["reconnects"], 0)
