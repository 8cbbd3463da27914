"""Reconnect schedule of one relay: WS-aware backoff, the two probed Autobahn traps, timeouts."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.pool import RelayPool
from keycast_tw.relay.protocol import MAX_HANDSHAKE_BYTES
from keycast_tw.relay.retry import WebSocketRetryPolicy
from tests.relay_fakes import (
    DropBeforeHandshake,
    FakeEndpoint,
    RefuseHandshake,
    Silent,
    factory_of,
    relay_server_factory,
)

URL = "ws://relay.test"


class PolicyTests(SynchronousTestCase):
    def test_exponential_capped(self) -> None:
        """Delays grow by `factor` from `initial_delay`, are capped, and carry the jitter."""
        seen: list[tuple[int, float]] = []
        policy = WebSocketRetryPolicy(
            initial_delay=1, max_delay=5, factor=2, jitter=lambda: 0.25,
            on_retry=lambda n, d: seen.append((n, d)),
        )
        delays = [policy(1) for _ in range(5)]
        self.assertEqual(delays, [1.25, 2.25, 4.25, 5.25, 5.25])
        self.assertEqual([n for n, _ in seen], [1, 2, 3, 4, 5])

    def test_ignores_client_service_reset(self) -> None:
        """ClientService's attempt (reset on TCP connect) does not shorten the backoff."""
        policy = WebSocketRetryPolicy(initial_delay=1, max_delay=60, factor=2, jitter=lambda: 0)
        self.assertEqual([policy(1), policy(1), policy(1)], [1, 2, 4])

    def test_reset_by_owner(self) -> None:
        """Only the owner's reset starts the schedule over."""
        policy = WebSocketRetryPolicy(initial_delay=1, max_delay=60, factor=2, jitter=lambda: 0)
        policy(1)
        policy(2)
        policy.reset()
        self.assertEqual(policy(1), 1)


class ScheduleTests(SynchronousTestCase):
    """ClientServiceTests-style: a fake endpoint and a clock, asserting when we dial."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint(self.clock)
        self.options = RelayOptions(
            initial_delay=1, factor=2, max_delay=30, handshake_timeout=5,
            auto_ping_interval=0, auto_ping_timeout=0,
        )
        self.pool = RelayPool(
            [URL],
            reactor=self.clock,
            on_event=lambda url, event: True,
            auth_signer=lambda template: template,
            endpoint_for_url=self._endpoint_for,
            random=lambda: 0.0,
            options=self.options,
        )
        self.pool.startService()
        self.addCleanup(self.pool.stopService)

    def _endpoint_for(self, reactor: Any, url: str) -> FakeEndpoint:
        return self.endpoint

    def _fail_each(self, how: Any, count: int) -> None:
        for _ in range(count):
            how(self.endpoint.attempts[-1])
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())

    def test_connection_refused_backs_off(self) -> None:
        """TCP failures back off exponentially up to the cap."""
        self._fail_each(lambda a: a.refuse(), 7)
        self.assertEqual(self.endpoint.times, [0, 1, 3, 7, 15, 31, 61, 91])

    def test_drop_before_handshake_does_not_wedge(self) -> None:
        """Trap 1: a relay that hangs up before `101` is retried (ClientService not wedged)."""
        self._fail_each(lambda a: a.accept(factory_of(DropBeforeHandshake)), 3)
        self.assertEqual(self.endpoint.times, [0, 1, 3, 7])
        self.assertEqual(self.pool.connected_count(), 0)
        self.assertEqual(self.pool.message_counts()[URL]["handshake_failed"], 3)

    def test_refused_handshake_backs_off(self) -> None:
        """Trap 2: TCP accepted, upgrade answered 503 -> backoff, not a redial every 1.5 s."""
        self._fail_each(lambda a: a.accept(factory_of(RefuseHandshake)), 6)
        self.assertEqual(self.endpoint.times, [0, 1, 3, 7, 15, 31, 61])
        self.assertEqual(self.pool.status()[0]["reconnects"], 6)

    def test_handshake_timeout(self) -> None:
        """A relay that accepts TCP and never answers is dropped after handshake_timeout."""
        attempt = self.endpoint.attempts[0]
        attempt.accept(factory_of(Silent))
        self.clock.advance(4.9)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(0.1)
        assert attempt.pump is not None
        attempt.pump.flush()
        self.clock.advance(1)
        self.assertEqual(self.endpoint.times, [0, 6])

    def test_reset_after_a_stable_connection(self) -> None:
        """After failures, a WebSocket that stayed up stable_connection (30 s) resets the
        delay: its drop is retried at 1 s."""
        self._fail_each(lambda a: a.refuse(), 3)
        self.assertEqual(self.endpoint.times, [0, 1, 3, 7])
        attempt = self.endpoint.attempts[-1]
        pump = attempt.accept(relay_server_factory(self.clock))
        self.assertEqual(self.pool.connected_count(), 1)
        self.clock.advance(30)
        attempt.server.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.pool.connected_count(), 0)
        self.clock.advance(1)
        self.assertEqual(self.endpoint.times, [0, 1, 3, 7, 38])

    def test_open_then_hang_up_keeps_backing_off(self) -> None:
        """A relay that completes the upgrade and hangs up at once is not re-dialled every
        second: short-lived connections count as failures."""
        for _ in range(4):
            attempt = self.endpoint.attempts[-1]
            pump = attempt.accept(relay_server_factory(self.clock))
            attempt.server.transport.loseConnection()
            pump.flush()
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.assertEqual(self.endpoint.times, [0, 1, 3, 7, 15])

    def test_retry_line_says_why(self) -> None:
        """Each retry line names why the attempt failed: refused TCP, a refused upgrade."""
        with capturedLogs() as logs:
            self._fail_each(lambda a: a.refuse(), 1)
            self._fail_each(lambda a: a.accept(factory_of(RefuseHandshake)), 1)
        retries = [e for e in logs if "reconnect in" in e["log_format"]]
        self.assertEqual(
            [e["failure"] for e in retries],
            [
                "Connection was refused by other side: 111: Connection refused.",
                'connection was closed uncleanly ("WebSocket connection upgrade failed [503]:'
                ' Service Unavailable")',
            ],
        )
        self.assertTrue(all("after: {failure}" in e["log_format"] for e in retries))

    def test_retry_after_a_drop_names_no_stale_failure(self) -> None:
        """A failure is reported once: the retry after a later clean drop carries none."""
        self._fail_each(lambda a: a.refuse(), 1)
        attempt = self.endpoint.attempts[-1]
        pump = attempt.accept(relay_server_factory(self.clock))
        with capturedLogs() as logs:
            attempt.server.transport.loseConnection()
            pump.flush()
        [retry] = [e for e in logs if "reconnect in" in e["log_format"]]
        self.assertIsNone(retry["failure"])
        self.assertNotIn("after:", retry["log_format"])

    def test_endless_handshake_header_is_cut_off(self) -> None:
        """A relay streaming an unbounded upgrade response is dropped once it passes the
        handshake bound, and the retry says why (instead of buffering and rescanning it)."""
        attempt = self.endpoint.attempts[0]
        pump = attempt.accept(factory_of(Silent))
        client = attempt.client
        with capturedLogs() as logs:
            client.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nX-Filler: ")
            for _ in range(4):
                client.dataReceived(b"a" * (MAX_HANDSHAKE_BYTES // 3))
            pump.flush()
        self.assertLessEqual(len(client.data), MAX_HANDSHAKE_BYTES)
        self.assertEqual(self.pool.message_counts()[URL]["handshake_failed"], 1)
        [retry] = [e for e in logs if "reconnect in" in e["log_format"]]
        self.assertEqual(retry["failure"], f"handshake response over {MAX_HANDSHAKE_BYTES} bytes")
