# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""KeycastService: the whole service tree on a fake clock, a fake relay and a real temp database.

The database is real (SQLite under the test's temp dir, rows written with the store's own
crypto), but it is used on the test thread through a ConnectionRunner, crypto runs inline or
waits until the test releases it, and the relay is an in-memory Autobahn server behind a fake
endpoint: every step is deterministic and nothing touches the network.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.config import config_from
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.service import KeycastService, build_service, shard_of
from keycast_tw.signer.crypto import run_inline
from keycast_tw.store.crypto import SecretCipher, create_master_key_file, open_file_cipher
from keycast_tw.store.runner import ConnectionRunner
from tests.relay_fakes import FakeEndpoint, FakeRelayServer, Observer, relay_server_factory
from tests.signer_helpers import FakeClient
from tests.test_store_fixtures import add_authorization, add_user_key, new_database

RELAY = "ws://relay.test"
HEALTH = "http://127.0.0.1:8080"
START = 1_700_000_000.0


class HeldCrypto:
    """A CryptoRunner that runs inline, or, while ``holding``, waits until the test releases it."""

    def __init__(self) -> None:
        self.holding = False
        self.queue: list[tuple[Callable[..., Any], tuple[object, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], /, *args: object) -> Deferred[Any]:
        if not self.holding:
            return run_inline(f, *args)
        d: Deferred[Any] = Deferred()
        self.queue.append((f, args, d))
        return d

    def release_one(self) -> None:
        f, args, d = self.queue.pop(0)
        run_inline(f, *args).chainDeferred(d)


class FakeLock:
    """The instance lock; on release it records what ``observe`` says about the service."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.shard: tuple[int, int] | None = None
        self.released: dict[str, Any] | None = None
        self.observe: Callable[[], dict[str, Any]] = dict

    def __call__(self, database_path: str, shard: tuple[int, int] | None) -> FakeLock:
        self.path = database_path
        self.shard = shard
        return self

    def release(self) -> None:
        self.released = self.observe()


class Daemon:
    """A KeycastService over a temp database with ``count`` authorizations, not started."""

    def __init__(
        self,
        case: SynchronousTestCase,
        *,
        count: int = 2,
        options: dict[str, Any] | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.case = case
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.db_path, self.conn = new_database(case.mktemp())
        case.addCleanup(self.conn.close)
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)
        self.cipher: SecretCipher = open_file_cipher(self.conn, self.key_path)
        self.user_key_id, self.user = add_user_key(self.conn, self.cipher, "alice")
        self.bunkers: list[SecretKey] = []
        for _ in range(count):
            self.add_authorization()
        given: dict[str, Any] = {
            "database": self.db_path,
            "master-key": self.key_path,
            "relay": [RELAY],
            "health": "tcp:0:interface=127.0.0.1",
            **(options or {}),
        }
        self.config = config_from(given, {})
        self.endpoint = FakeEndpoint(self.clock)
        self.lock = FakeLock()
        self.crypto = HeldCrypto()
        self.service: KeycastService = build_service(
            self.config,
            self.clock,
            environ=environ or {},
            relay_endpoint=lambda reactor, url: self.endpoint,
            lock=self.lock,
            install_signals=False,
            store_runner=lambda store: ConnectionRunner(self.conn, self.db_path),
            run_crypto=self.crypto,
        )
        self.server: FakeRelayServer | None = None

    def add_authorization(self) -> str:
        bunker = SecretKey.generate()
        self.bunkers.append(bunker)
        add_authorization(
            self.conn, self.cipher, self.user_key_id, bunker=bunker, relays=f'["{RELAY}"]'
        )
        return bunker.pubkey_hex

    def start(self) -> None:
        self.service.startService()
        self.case.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            self.case.successResultOf(self.stop_deferred())

    def stop_deferred(self) -> Deferred[None]:
        return self.settle(self.service.stopService())

    def settle(self, d: Deferred[Any]) -> Deferred[Any]:
        """Turn the clock and the relay pumps (at most 10 fake seconds) until ``d`` fires."""
        for _ in range(100):
            if d.called:
                break
            self.flush()
            self.clock.advance(0.1)
        return d

    def release_crypto(self) -> None:
        """Let every held crypto call run, and whatever they start after them."""
        while self.crypto.queue:
            self.crypto.release_one()
            self.flush()

    def connect_relay(self) -> FakeRelayServer:
        attempt = self.endpoint.attempts[-1]
        attempt.accept(relay_server_factory(self.clock))
        self.server = attempt.server
        assert self.server is not None
        return self.server

    def flush(self) -> None:
        self.clock.advance(0)
        for attempt in self.endpoint.attempts:
            if attempt.pump is not None:
                attempt.pump.flush()

    def eose_all(self) -> None:
        server = self.require_server()
        for req in server.of_type("REQ"):
            server.send("EOSE", req[1])
        self.flush()

    def require_server(self) -> FakeRelayServer:
        assert self.server is not None, "connect_relay first"
        return self.server

    def subscribed_pubkeys(self) -> set[str]:
        """Every bunker pubkey named in a #p filter the relay was sent."""
        return {
            pubkey
            for req in self.require_server().of_type("REQ")
            for filt in req[2:]
            for pubkey in filt.get("#p", [])
        }

    def deliver(self, event: dict[str, Any]) -> None:
        server = self.require_server()
        sub_id = server.of_type("REQ")[-1][1]
        server.send("EVENT", sub_id, event)
        self.flush()

    def published(self) -> list[dict[str, Any]]:
        return [m[1] for m in self.require_server().of_type("EVENT")]


def notify_socket(case: SynchronousTestCase) -> tuple[socket.socket, str]:
    """A datagram socket in the abstract namespace standing in for systemd's NOTIFY_SOCKET."""
    name = f"keycast-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    case.addCleanup(sock.close)
    return sock, "@" + name


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


class ReadinessTests(SynchronousTestCase):
    def test_reasons_before_start(self) -> None:
        """Before start the authorizations are not loaded and no relay is connected."""
        daemon = Daemon(self)
        self.assertEqual(
            daemon.service.readiness(),
            ["authorizations not loaded", "no relay connected (0/1)"],
        )

    def test_reasons_through_start(self) -> None:
        """Loaded -> waiting for a subscription -> connected but no EOSE -> ready."""
        daemon = Daemon(self)
        daemon.start()
        self.assertEqual(
            daemon.service.readiness(), ["no relay subscription live (0/1 relays connected)"]
        )
        daemon.connect_relay()
        daemon.flush()
        self.assertEqual(
            daemon.service.readiness(), ["no relay subscription live (1/1 relays connected)"]
        )
        daemon.eose_all()
        self.assertEqual(daemon.service.readiness(), [])
        self.assertTrue(daemon.service.status()["ready"])

    def test_empty_database_needs_a_connection_only(self) -> None:
        """With no authorization there is nothing to subscribe to: a connected relay is enough."""
        daemon = Daemon(self, count=0)
        daemon.start()
        self.assertEqual(daemon.service.readiness(), ["no relay connected (0/1)"])
        daemon.connect_relay()
        daemon.flush()
        self.assertEqual(daemon.service.readiness(), [])

    def test_ready_sent_once_to_notify_socket(self) -> None:
        """READY=1 goes out once the database is loaded, even with no relay yet, and only once;
        readiness for requests is then reported as a STATUS update."""
        sock, address = notify_socket(self)
        daemon = Daemon(self, environ={"NOTIFY_SOCKET": address})
        daemon.start()
        daemon.flush()
        ready = [m for m in received(sock) if "READY=1" in m]
        self.assertEqual(len(ready), 1)
        self.assertIn("STATUS=loaded 2 authorizations", ready[0])
        self.assertNotEqual(daemon.service.readiness(), [])
        daemon.connect_relay()
        daemon.flush()
        daemon.eose_all()
        self.assertIn("STATUS=serving 2 authorizations", received(sock))
        # Another subscription round (a reconnect, a reload) is not a second start.
        daemon.service.relay_subscribed(RELAY)
        daemon.service.relay_connected(RELAY)
        self.assertEqual([m for m in received(sock) if "READY=1" in m], [])
        daemon.stop()
        self.assertIn("STOPPING=1", received(sock))


class WatchdogStopTests(SynchronousTestCase):
    def test_watchdog_pings_stop_with_the_service(self) -> None:
        """WATCHDOG=1 is sent while running and never after the stop (systemd must not see a
        healthy process while it shuts down)."""
        sock, address = notify_socket(self)
        daemon = Daemon(self, environ={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
        daemon.start()
        daemon.flush()
        self.assertIn("WATCHDOG=1", received(sock))
        daemon.stop()
        self.assertIn("STOPPING=1", received(sock))
        daemon.clock.advance(10)
        self.assertNotIn("WATCHDOG=1", received(sock))


class RelayIdentityTests(SynchronousTestCase):
    def test_auth_signed_with_the_persistent_identity(self) -> None:
        """NIP-42 AUTH is signed by the store's relay identity, the same after a restart."""
        daemon = Daemon(self)
        daemon.start()
        daemon.flush()
        identity = daemon.service.store.relay_identity
        assert identity is not None
        server = daemon.connect_relay()
        server.send("AUTH", "challenge-1")
        daemon.flush()
        (auth,) = server.of_type("AUTH")
        self.assertEqual(auth[1]["kind"], 22242)
        self.assertEqual(auth[1]["pubkey"], identity.pubkey_hex)
        daemon.stop()
        again = build_service(
            daemon.config,
            daemon.clock,
            environ={},
            relay_endpoint=lambda reactor, url: daemon.endpoint,
            lock=FakeLock(),
            install_signals=False,
            store_runner=lambda store: ConnectionRunner(daemon.conn, daemon.db_path),
            run_crypto=run_inline,
        )
        again.startService()
        self.addCleanup(lambda: daemon.settle(again.stopService()))
        daemon.flush()
        assert again.store.relay_identity is not None
        self.assertEqual(again.store.relay_identity.pubkey_hex, identity.pubkey_hex)


class StatusTests(SynchronousTestCase):
    def test_status_keys(self) -> None:
        """/status carries the documented sections."""
        daemon = Daemon(self)
        daemon.start()
        status = daemon.service.status()
        self.assertLessEqual(
            {
                "version", "ready", "reasons", "shard", "authorizations", "relays",
                "relays_connected", "relays_subscribed", "requests", "inflight",
                "last_request_at", "last_reload", "caches",
            },
            set(status),
        )  # fmt: skip
        self.assertEqual(
            status["authorizations"], {"total": 2, "regular": 2, "oauth": 0, "refusing": 0}
        )
        self.assertEqual(status["shard"], "0/1")
        self.assertEqual(status["last_reload"]["kind"], "load")
        self.assertEqual([r["url"] for r in status["relays"]], [RELAY])

    def test_inflight_metric_follows_dispatcher(self) -> None:
        """keycast_inflight shows the request being processed, and 0 once it is answered."""
        daemon = Daemon(self)
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        registry = daemon.service.metrics.registry
        daemon.crypto.holding = True
        daemon.deliver(FakeClient(daemon.bunkers[0].pubkey_hex).request("ping", created_at=START))
        self.assertEqual(registry.get_sample_value("keycast_inflight"), 1.0)
        daemon.release_crypto()
        self.assertEqual(registry.get_sample_value("keycast_inflight"), 0.0)

    def test_status_has_no_secrets(self) -> None:
        """No key material or connect secret appears in /status, even after a request."""
        daemon = Daemon(self)
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        client = FakeClient(daemon.bunkers[0].pubkey_hex)
        daemon.deliver(client.request("connect", [daemon.bunkers[0].pubkey_hex, "wrong"],
                                      created_at=START))  # fmt: skip
        text = orjson.dumps(daemon.service.status()).decode().lower()
        master_key = Path(daemon.key_path).read_text().strip().lower()
        secrets = [daemon.user.to_bytes().hex(), master_key, client.key.to_bytes().hex()]
        secrets += [bunker.to_bytes().hex() for bunker in daemon.bunkers]
        for secret in secrets:
            self.assertNotIn(secret, text)
        self.assertIn("connect", daemon.service.status()["requests"])


class ShardTests(SynchronousTestCase):
    def test_shard_of(self) -> None:
        """shard_of uses the pubkey's leading 64 bits modulo the shard count."""
        self.assertEqual(shard_of("00000000000000ff" + "0" * 48, 4), 3)
        self.assertEqual(shard_of("ffffffffffffffff" + "0" * 48, 1), 0)

    def test_only_own_shard_served(self) -> None:
        """With --shard 1/2 the registry and the subscription hold exactly shard 1's bunkers."""
        daemon = Daemon(self, count=12, options={"shard": "1/2"})
        daemon.start()
        daemon.connect_relay()
        daemon.flush()
        mine = {b.pubkey_hex for b in daemon.bunkers if shard_of(b.pubkey_hex, 2) == 1}
        self.assertTrue(0 < len(mine) < 12, "random keys should fall in both shards")
        self.assertEqual(daemon.service.registry.bunker_pubkeys(), frozenset(mine))
        self.assertEqual(daemon.subscribed_pubkeys(), mine)
        self.assertEqual(daemon.service.status()["shard"], "1/2")
        self.assertEqual(daemon.lock.shard, (1, 2))

    def test_single_shard_serves_all(self) -> None:
        """The default 0/1 serves every authorization and takes the database-wide lock."""
        daemon = Daemon(self, count=5)
        daemon.start()
        self.assertEqual(len(daemon.service.registry), 5)
        self.assertIsNone(daemon.lock.shard)


class ReloadTests(SynchronousTestCase):
    def test_full_reload_before_the_start_up_load(self) -> None:
        """SIGHUP (or the signal file) before the start-up load has finished is a no-op with an
        info line: that load reads everything. No failure escapes."""
        daemon = Daemon(self)
        with capturedLogs() as logs:
            self.assertIsNone(self.successResultOf(daemon.service.full_reload()))
        self.assertEqual(
            [e["log_format"] for e in logs],
            ["Reload requested during the start-up load, which reads everything"],
        )

    def test_full_reload_serves_new_rows(self) -> None:
        """full_reload (SIGHUP, the signal file) loads a new row and resubscribes with it."""
        daemon = Daemon(self, options={"reload-interval": "1000"})
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        added = daemon.add_authorization()
        self.assertNotIn(added, daemon.service.registry.bunker_pubkeys())
        info = self.successResultOf(daemon.service.full_reload())
        self.assertEqual((info.kind, info.error), ("reconcile", None))
        self.assertIn(added, daemon.service.registry.bunker_pubkeys())
        self.assertEqual(daemon.service.status()["authorizations"]["total"], 3)
        daemon.clock.advance(5)
        daemon.flush()
        self.assertIn(added, daemon.subscribed_pubkeys())
        metrics = daemon.service.metrics.render().decode()
        self.assertRegex(metrics, r'keycast_reloads_total\{result="ok"\} 2\.0')

    def test_reload_signal_file_triggers_full_reload(self) -> None:
        """The signal file runs the same full reload and is removed after it."""
        daemon = Daemon(self, options={"reload-interval": "1000"})
        daemon.start()
        added = daemon.add_authorization()
        Path(daemon.config.reload_signal_path).write_text("")
        daemon.clock.advance(1000)
        self.assertIn(added, daemon.service.registry.bunker_pubkeys())
        self.assertFalse(os.path.exists(daemon.config.reload_signal_path))


class StopTests(SynchronousTestCase):
    def test_stop_order(self) -> None:
        """In-flight requests finish and are answered before relays stop; the store stops last."""
        daemon = Daemon(self)
        daemon.start()
        server = daemon.connect_relay()
        daemon.eose_all()
        service = daemon.service
        observer = Observer()
        store_running_when_relay_closed: list[bool] = []
        observer.relay_disconnected = lambda url: store_running_when_relay_closed.append(  # type: ignore[method-assign]
            bool(service.store.running)
        )
        service.relays.add_observer(observer)
        daemon.lock.observe = lambda: {
            "relays": service.relays.running,
            "store": service.store.running,
        }
        client = FakeClient(daemon.bunkers[0].pubkey_hex)
        daemon.crypto.holding = True
        request = client.request("ping", created_at=START)
        daemon.deliver(request)
        self.assertEqual(service.dispatcher.inflight, 1)

        stopping = service.stopService()
        daemon.flush()
        self.assertNoResult(stopping)
        self.assertTrue(service.relays.running, "relays stopped with a request in flight")
        self.assertTrue(service.store.running)
        self.assertIsNone(daemon.lock.released)
        daemon.release_crypto()
        responses = [e for e in daemon.published() if e.get("pubkey") == client.bunker_pubkey]
        self.assertEqual(len(responses), 1)
        self.assertEqual(client.read(responses[0], request).result, "pong")
        self.successResultOf(daemon.settle(stopping))
        self.assertEqual(store_running_when_relay_closed, [True])
        self.assertEqual(daemon.lock.released, {"relays": False, "store": False})
        self.assertFalse(service.web.running)
        self.assertFalse(service.reload_watcher.running)
        self.assertEqual(service.relays.connected_count(), 0)
        self.assertEqual(server.state, server.STATE_CLOSED)

    def test_not_ready_from_the_moment_stop_begins(self) -> None:
        """While in-flight requests drain (the web server still answers), /ready is 503 with
        "stopping", so a load balancer stops routing before the daemon is gone."""
        daemon = Daemon(self)
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        ready = StubTreq(daemon.service.web.app.resource())
        self.assertEqual(self.successResultOf(ready.get(HEALTH + "/ready")).code, 200)
        daemon.crypto.holding = True
        daemon.deliver(FakeClient(daemon.bunkers[0].pubkey_hex).request("ping", created_at=START))
        stopping = daemon.service.stopService()
        daemon.flush()
        self.assertNoResult(stopping)
        self.assertTrue(daemon.service.web.running)
        response = self.successResultOf(ready.get(HEALTH + "/ready"))
        self.assertEqual(response.code, 503)
        body = orjson.loads(self.successResultOf(response.content()))
        self.assertEqual(body, {"ready": False, "reasons": ["stopping"]})
        self.assertFalse(daemon.service.status()["ready"])
        daemon.release_crypto()
        self.successResultOf(daemon.settle(stopping))

    def test_events_after_stop_are_not_taken(self) -> None:
        """Once stopping, new requests are not started."""
        daemon = Daemon(self)
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        daemon.crypto.holding = True
        first = FakeClient(daemon.bunkers[0].pubkey_hex)
        daemon.deliver(first.request("ping", created_at=START))
        stopping = daemon.service.stopService()
        daemon.deliver(FakeClient(daemon.bunkers[1].pubkey_hex).request("ping", created_at=START))
        self.assertEqual(daemon.service.dispatcher.inflight, 1)
        daemon.release_crypto()
        self.successResultOf(daemon.settle(stopping))

    def test_drain_is_bounded(self) -> None:
        """A request that never finishes holds the stop only for --shutdown-timeout."""
        daemon = Daemon(self, options={"shutdown-timeout": "3"})
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        daemon.crypto.holding = True
        daemon.deliver(FakeClient(daemon.bunkers[0].pubkey_hex).request("ping", created_at=START))
        stopping = daemon.service.stopService()
        daemon.clock.advance(2.9)
        daemon.flush()
        self.assertNoResult(stopping)
        daemon.clock.advance(0.2)
        self.successResultOf(daemon.settle(stopping))
        self.assertIsNotNone(daemon.lock.released)

    def test_lock_path_is_database(self) -> None:
        """The instance lock is taken on the configured database at start."""
        daemon = Daemon(self)
        daemon.start()
        self.assertEqual(daemon.lock.path, daemon.db_path)



class ThreadTests(SynchronousTestCase):
    def test_crypto_pool_bounded_by_config(self) -> None:
        """At most --crypto-threads crypto threads and --max-inflight requests in the engine."""
        daemon = Daemon(self, options={"crypto-threads": "3", "max-inflight": "4"})
        self.assertEqual(daemon.service.crypto_pool.max, 3)
        self.assertEqual(daemon.service.crypto_pool.name, "keycast-crypto")
        daemon.start()
        daemon.connect_relay()
        daemon.eose_all()
        daemon.crypto.holding = True
        bunker = daemon.bunkers[0].pubkey_hex
        for _ in range(6):
            daemon.deliver(FakeClient(bunker).request("ping", created_at=START))
        self.assertEqual(daemon.service.dispatcher.inflight, 4)
        self.assertEqual(daemon.service.stats.counts["none"]["overloaded"], 2)
        daemon.release_crypto()
        self.assertEqual(daemon.service.dispatcher.inflight, 0)
