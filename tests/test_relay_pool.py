"""RelayPool behaviour over in-memory WebSocket connections (iosim + Autobahn, task clock)."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.metrics import Metrics
from keycast_tw.nostr.event import sign_event, verify_event
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.relay.factory import RelayClientFactory
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.pool import RelayPool
from tests.relay_fakes import (
    FakeEndpoint,
    FakeRelayServer,
    LingeringRelayServer,
    Observer,
    relay_server_factory,
)

A = "ws://a.test"
B = "ws://b.test"
START = 1_700_000_000.0
BUNKER_KEY = SecretKey.generate()
CLIENT_KEY = SecretKey.generate()
RELAY_KEY = SecretKey.generate()


def request(content: str = "x", created_at: int = int(START)) -> dict[str, Any]:
    """A kind-24133 request to our bunker (contents are opaque to the pool)."""
    return sign_event(
        {
            "kind": 24133,
            "created_at": created_at,
            "tags": [["p", BUNKER_KEY.pubkey_hex]],
            "content": content,
        },
        CLIENT_KEY,
    )


def keys(n: int) -> frozenset[str]:
    return frozenset(f"{i:064x}" for i in range(n))


class Harness:
    """A started pool whose relays are fake endpoints, plus helpers to play the relay."""

    def __init__(self, test: SynchronousTestCase, urls: tuple[str, ...] = (A,), **opts: Any):
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.endpoints = {url: FakeEndpoint(self.clock) for url in urls}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.refusing = False
        self.auth_templates: list[dict[str, Any]] = []
        defaults: dict[str, Any] = {"auto_ping_interval": 0, "auto_ping_timeout": 0}
        defaults.update(opts)
        self.pool = RelayPool(
            urls,
            reactor=self.clock,
            on_event=self.take_event,
            auth_signer=self.sign_auth,
            endpoint_for_url=lambda reactor, url: self.endpoints[url],
            random=lambda: 0.0,
            options=RelayOptions(**defaults),
        )
        self.observer = Observer()
        self.pool.add_observer(self.observer)
        self.pool.startService()
        test.addCleanup(self.stop)

    def take_event(self, url: str, event: dict[str, Any]) -> bool:
        """The pool's on_event: record the event; refuse it while ``refusing`` is set."""
        if self.refusing:
            return False
        self.events.append((url, event))
        return True

    def sign_auth(self, template: dict[str, Any]) -> dict[str, Any]:
        self.auth_templates.append(template)
        return sign_event(template, RELAY_KEY)

    def connect(self, url: str = A) -> FakeRelayServer:
        attempt = self.endpoints[url].attempts[-1]
        attempt.accept(relay_server_factory(self.clock))
        server: FakeRelayServer = attempt.server
        return server

    def flush(self) -> None:
        for endpoint in self.endpoints.values():
            for attempt in endpoint.attempts:
                if attempt.pump is not None:
                    attempt.pump.flush()

    def send(self, server: FakeRelayServer, *message: Any) -> None:
        server.send(*message)
        self.flush()

    def drop(self, server: FakeRelayServer) -> None:
        server.transport.loseConnection()
        self.flush()

    def status(self, url: str = A) -> dict[str, Any]:
        return next(s for s in self.pool.status() if s["url"] == url)

    def counters(self, url: str = A) -> dict[str, int]:
        return self.pool.message_counts()[url]

    def stop(self) -> None:
        self.pool.stopService()
        self.flush()
        self.clock.advance(0)
        self.flush()


class SubscriptionTests(SynchronousTestCase):
    def test_subscribes_on_open(self) -> None:
        """On open every chunk is requested with since = start - since_skew."""
        h = Harness(self, p_chunk_size=2)
        h.pool.set_bunker_pubkeys(keys(3))
        server = h.connect()
        reqs = server.of_type("REQ")
        self.assertEqual([r[1] for r in reqs], ["keycast-p0", "keycast-p1"])
        self.assertEqual(reqs[0][2], {"kinds": [24133], "#p": sorted(keys(3))[:2],
                                      "since": int(START) - 300})
        self.assertEqual(sorted(reqs[1][2]["#p"]), sorted(keys(3))[2:])

    def test_subscribed_after_eose(self) -> None:
        """subscribed turns true only when every subscription has sent EOSE; observers told once."""
        h = Harness(self, p_chunk_size=2)
        h.pool.set_bunker_pubkeys(keys(3))
        server = h.connect()
        self.assertEqual((h.pool.connected_count(), h.pool.subscribed_count()), (1, 0))
        with capturedLogs() as logs:
            h.send(server, "EOSE", "keycast-p0")
            self.assertFalse(h.status()["subscribed"])
            h.send(server, "EOSE", "keycast-p1")
            h.send(server, "EOSE", "keycast-p1")
        self.assertTrue(h.status()["subscribed"])
        self.assertEqual(h.pool.subscribed_count(), 1)
        self.assertEqual(h.observer.of("subscribed"), [("subscribed", A)])
        self.assertEqual(
            [e["relay_url"] for e in logs if "subscribed (EOSE)" in e["log_format"]], [A]
        )

    def test_listening_for_a_pubkey_needs_its_plan_applied_and_eose(self) -> None:
        """listening_for turns true only once a relay got EOSE for a plan with that pubkey;
        applying a plan is announced to observers (pubkeys_applied)."""
        h = Harness(self)
        applied: list[str] = []

        class Applied:
            def pubkeys_applied(self) -> None:
                applied.append("applied")

        h.pool.add_observer(Applied())
        first, second = sorted(keys(2))
        h.pool.set_bunker_pubkeys(frozenset({first}))
        server = h.connect()
        self.assertFalse(h.pool.listening_for(first))
        h.send(server, "EOSE", "keycast-p0")
        self.assertTrue(h.pool.listening_for(first))
        h.pool.set_bunker_pubkeys(frozenset({first, second}))
        self.assertFalse(h.pool.listening_for(second))
        h.clock.advance(0.1)
        h.flush()
        self.assertEqual(applied, ["applied", "applied"])
        self.assertFalse(h.pool.listening_for(second))
        h.send(server, "EOSE", "keycast-p0")
        self.assertTrue(h.pool.listening_for(second))
        self.assertTrue(h.pool.listening_for(second, (A, B)))
        self.assertFalse(h.pool.listening_for(second, (B,)))  # B does not listen

    def test_resubscribe_on_reconnect_since_last_heard(self) -> None:
        """A reconnect resubscribes from the last frame heard on the old connection, minus skew."""
        h = Harness(self)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        h.clock.advance(100)
        h.send(server, "NOTICE", "still here")
        h.clock.advance(500)
        h.drop(server)
        self.assertEqual(h.pool.connected_count(), 0)
        h.clock.advance(1)
        server2 = h.connect()
        self.assertEqual(server2.of_type("REQ")[0][2]["since"], int(START) + 100 - 300)

    def test_lookback_capped(self) -> None:
        """After a long outage the replay window is capped at max_lookback."""
        h = Harness(self, max_lookback=600)
        h.pool.set_bunker_pubkeys(keys(1))
        h.endpoints[A].attempts[-1].refuse()
        h.clock.advance(3600)
        server = h.connect()
        self.assertEqual(server.of_type("REQ")[0][2]["since"], int(START) + 3600 - 600)

    def test_set_change_debounced_and_diffed(self) -> None:
        """Bunker-set changes are coalesced; only changed chunks are re-sent, gone ones CLOSEd."""
        h = Harness(self, p_chunk_size=2, resubscribe_debounce=2)
        h.pool.set_bunker_pubkeys(keys(4))
        server = h.connect()
        server.received.clear()
        h.pool.set_bunker_pubkeys(keys(3))
        h.clock.advance(1)
        h.pool.set_bunker_pubkeys(keys(2))
        h.flush()
        self.assertEqual(server.received, [])
        h.clock.advance(1)
        h.flush()
        self.assertEqual(server.received, [["CLOSE", "keycast-p1"]])

    def test_changed_chunk_replaced_by_id(self) -> None:
        """A chunk whose pubkeys change is re-sent under the same id (REQ replaces it)."""
        h = Harness(self, p_chunk_size=2, resubscribe_debounce=0)
        h.pool.set_bunker_pubkeys(keys(2))
        server = h.connect()
        server.received.clear()
        h.clock.advance(10)
        h.pool.set_bunker_pubkeys(keys(3))
        h.clock.advance(0)
        h.flush()
        reqs = server.of_type("REQ")
        self.assertEqual([r[1] for r in reqs], ["keycast-p1"])
        self.assertEqual(reqs[0][2]["since"], int(START) + 10 - 300)
        self.assertEqual(server.of_type("CLOSE"), [])

    def test_firehose_switch(self) -> None:
        """Above the threshold the chunks are closed and one firehose subscription is sent."""
        h = Harness(self, p_chunk_size=2, firehose_threshold=3, resubscribe_debounce=0)
        with capturedLogs() as logs:
            h.pool.set_bunker_pubkeys(keys(2))
        self.assertIn("filters", logs[-1]["log_format"])
        server = h.connect()
        server.received.clear()
        with capturedLogs() as logs:
            h.pool.set_bunker_pubkeys(keys(4))
            h.clock.advance(0)
        h.flush()
        self.assertIn("Subscribing to ALL kind 24133", logs[0]["log_format"])
        self.assertEqual(server.received[0], ["CLOSE", "keycast-p0"])
        self.assertEqual(server.received[1][:2], ["REQ", "keycast-all"])
        self.assertEqual(server.received[1][2]["kinds"], [24133])
        self.assertNotIn("#p", server.received[1][2])

    def test_eose_timeout_counted(self) -> None:
        """A relay that never sends EOSE is logged and counted; its events are still handled."""
        h = Harness(self, eose_timeout=30)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        with capturedLogs() as logs:
            h.clock.advance(30)
        self.assertEqual(h.counters()["eose_timeout"], 1)
        self.assertEqual(len([e for e in logs if "no EOSE" in e["log_format"]]), 1)
        event = request()
        h.send(server, "EVENT", "keycast-p0", event)
        self.assertEqual(h.events, [(A, event)])


class InboundTests(SynchronousTestCase):
    def test_dedup_across_relays(self) -> None:
        """The same event from two relays reaches on_event once."""
        h = Harness(self, urls=(A, B))
        h.pool.set_bunker_pubkeys(keys(1))
        sa, sb = h.connect(A), h.connect(B)
        event = request()
        h.send(sa, "EVENT", "keycast-p0", event)
        h.send(sb, "EVENT", "keycast-p0", event)
        self.assertEqual(h.events, [(A, event)])
        self.assertEqual(h.counters(B)["duplicate"], 1)
        self.assertEqual(h.status(A)["last_event_at"], START)

    def test_tampered_copy_cannot_shadow_the_real_one(self) -> None:
        """A hostile relay's copy with the real id but other content, arriving first, does not
        make the genuine copy from another relay a "duplicate": both reach the engine, which
        verifies them."""
        h = Harness(self, urls=(A, B))
        h.pool.set_bunker_pubkeys(keys(1))
        sa, sb = h.connect(A), h.connect(B)
        real = request("real")
        forged = dict(real, content="tampered")
        h.send(sb, "EVENT", "keycast-p0", forged)
        h.send(sa, "EVENT", "keycast-p0", real)
        self.assertEqual(h.events, [(B, forged), (A, real)])
        self.assertNotIn("duplicate", h.counters(A))

    def test_refused_event_is_taken_from_another_relay(self) -> None:
        """An event the handler refuses (overloaded, draining) is forgotten, so the same
        request from a second relay is offered again; once taken, copies are duplicates."""
        h = Harness(self, urls=(A, B))
        h.pool.set_bunker_pubkeys(keys(1))
        sa, sb = h.connect(A), h.connect(B)
        event = request()
        h.refusing = True
        h.send(sa, "EVENT", "keycast-p0", event)
        h.refusing = False
        h.send(sb, "EVENT", "keycast-p0", event)
        h.send(sa, "EVENT", "keycast-p0", event)
        self.assertEqual(h.events, [(B, event)])
        self.assertEqual(h.counters(A)["duplicate"], 1)

    def test_dedup_is_bounded(self) -> None:
        """The dedup memory forgets the oldest ids beyond dedup_size."""
        h = Harness(self, dedup_size=2)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        first, second, third = request("1"), request("2"), request("3")
        for event in (first, second, third, first):
            h.send(server, "EVENT", "keycast-p0", event)
        self.assertEqual([e for _, e in h.events], [first, second, third, first])

    def test_foreign_subscription_ignored(self) -> None:
        """EVENTs for subscription ids that are not ours are not handed to the engine."""
        h = Harness(self)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        h.send(server, "EVENT", "someone-else", request())
        self.assertEqual(h.events, [])
        self.assertEqual(h.counters()["foreign_subscription"], 1)

    def test_garbage_counted_logged_once_connection_survives(self) -> None:
        """Malformed JSON, wrong shapes, non-dict events and binary frames are counted, logged
        once per minute, and never break the connection."""
        h = Harness(self)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        with capturedLogs() as logs:
            for payload in (b"{nope", b'["EVENT","keycast-p0",[1]]', b'{"a":1}', b'["WHAT"]'):
                server.sendMessage(payload)
            server.sendMessage(b"\x00\x01", isBinary=True)
            h.flush()
        self.assertEqual(h.counters()["malformed"], 4)
        self.assertEqual(h.counters()["binary"], 1)
        warnings = [e for e in logs if "unusable message" in e["log_format"]]
        self.assertEqual(len(warnings), 2)
        self.assertNotIn("nope", repr(logs))
        self.assertIn(("message", A, "malformed"), h.observer.calls)
        event = request()
        h.send(server, "EVENT", "keycast-p0", event)
        self.assertEqual(h.events, [(A, event)])
        self.assertEqual(h.pool.connected_count(), 1)

    def test_oversize_frame_refused(self) -> None:
        """A message above max_message_size drops the connection (1009), is counted, and the
        relay is reconnected with backoff."""
        h = Harness(self, max_message_size=1000)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        h.send(server, "EVENT", "keycast-p0", request("x" * 2000))
        h.flush()
        self.assertEqual(h.events, [])
        self.assertEqual(h.pool.connected_count(), 0)
        self.assertEqual(h.counters()["oversize"], 1)
        h.clock.advance(1)
        self.assertEqual(len(h.endpoints[A].attempts), 2)

    def test_flood_is_rate_limited(self) -> None:
        """Beyond max_events_per_second, events from that relay are dropped and counted."""
        h = Harness(self, max_events_per_second=3)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        with capturedLogs() as logs:
            for i in range(6):
                h.send(server, "EVENT", "keycast-p0", request(str(i)))
        self.assertEqual(len(h.events), 3)
        self.assertEqual(h.counters()["flood_dropped"], 3)
        self.assertEqual(len([e for e in logs if "events/s" in e["log_format"]]), 1)

    def test_handler_failure_contained(self) -> None:
        """An exception in on_event or an observer is logged, not raised into the protocol."""
        h = Harness(self)

        def boom(*args: object) -> None:
            raise RuntimeError("handler bug")

        h.pool._on_event = boom
        h.observer.relay_message = boom  # type: ignore[method-assign]
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        h.send(server, "EVENT", "keycast-p0", request())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(h.pool.connected_count(), 1)

    def test_owner_failure_fenced_in_protocol(self) -> None:
        """A bug in the per-relay owner is logged by the protocol, not raised into Autobahn."""
        h = Harness(self)
        server = h.connect()

        def boom(*args: object) -> None:
            raise RuntimeError("owner bug")

        h.pool._relays[A].ws_message = boom  # type: ignore[method-assign]
        h.send(server, "NOTICE", "hello")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.pool.connected_count(), 1)

    def test_notice_and_closed_counted(self) -> None:
        """NOTICE and CLOSED are counted in status; a CLOSED subscription is no longer live."""
        h = Harness(self)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        h.send(server, "EOSE", "keycast-p0")
        self.assertTrue(h.status()["subscribed"])
        h.send(server, "NOTICE", "hello")
        h.send(server, "CLOSED", "keycast-p0", "error: shutting down")
        status = h.status()
        self.assertEqual((status["notices"], status["closed"], status["subscribed"]), (1, 1, False))

    def test_autoping_detects_dead_connection(self) -> None:
        """A relay that stops answering pings is dropped after interval + timeout."""
        h = Harness(self, auto_ping_interval=10, auto_ping_timeout=5)
        h.pool.set_bunker_pubkeys(keys(1))
        h.connect()
        h.clock.advance(10)
        h.clock.advance(4.9)
        self.assertEqual(h.pool.connected_count(), 1)
        h.clock.advance(0.1)
        h.flush()
        self.assertEqual(h.pool.connected_count(), 0)
        self.assertEqual(h.observer.of("disconnected"), [("disconnected", A)])

    def test_autoping_pong_keeps_connection(self) -> None:
        """Pongs keep the connection and move the resume point forward."""
        h = Harness(self, auto_ping_interval=10, auto_ping_timeout=5)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        for _ in range(3):
            h.clock.advance(10)
            h.flush()
        self.assertEqual(h.pool.connected_count(), 1)
        h.drop(server)
        h.clock.advance(1)
        self.assertEqual(h.connect().of_type("REQ")[0][2]["since"], int(START) + 30 - 300)


class PublishTests(SynchronousTestCase):
    def test_publish_to_every_connected_relay(self) -> None:
        """publish() reaches every connected relay; OKs are counted and reported once."""
        h = Harness(self, urls=(A, B))
        sa, sb = h.connect(A), h.connect(B)
        event = request()
        h.pool.publish(event)
        h.flush()
        self.assertEqual(sa.of_type("EVENT"), [["EVENT", event]])
        self.assertEqual(sb.of_type("EVENT"), [["EVENT", event]])
        h.send(sa, "OK", event["id"], True, "")
        self.assertEqual(h.observer.of("published"), [])
        h.send(sb, "OK", event["id"], False, "blocked: no")
        self.assertEqual(h.observer.of("published"), [("published", event["id"], 1)])
        self.assertEqual((h.status(A)["ok"], h.status(B)["rejected"]), (1, 1))

    def test_publish_counts_only_the_given_relays(self) -> None:
        """publish(counted=...) still sends everywhere, but reports only those relays' verdicts:
        an OK from another relay does not count."""
        h = Harness(self, urls=(A, B))
        sa, sb = h.connect(A), h.connect(B)
        event = request()
        h.pool.publish(event, counted=(B,))
        h.flush()
        self.assertEqual(sa.of_type("EVENT"), [["EVENT", event]])
        h.send(sa, "OK", event["id"], True, "")
        self.assertEqual(h.observer.of("published"), [])
        h.send(sb, "OK", event["id"], False, "blocked: no")
        self.assertEqual(h.observer.of("published"), [("published", event["id"], 0)])

    def test_publication_times_out(self) -> None:
        """Relays that never answer OK do not hold the report back beyond ok_timeout."""
        h = Harness(self, ok_timeout=10)
        h.connect()
        event = request()
        h.pool.publish(event)
        h.clock.advance(10)
        self.assertEqual(h.observer.of("published"), [("published", event["id"], 0)])

    def test_queued_while_disconnected(self) -> None:
        """With no connection the event is queued (bounded, oldest dropped) and sent on open."""
        h = Harness(self, publish_queue_limit=2)
        events = [request(str(i)) for i in range(3)]
        for event in events:
            h.pool.publish(event)
        self.assertEqual(h.status()["queued"], 2)
        self.assertEqual(h.counters()["queue_dropped"], 1)
        server = h.connect()
        self.assertEqual(server.of_type("EVENT"), [["EVENT", e] for e in events[1:]])
        self.assertEqual(h.status()["queued"], 0)

    def test_queue_expires(self) -> None:
        """Queued responses older than publish_queue_max_age are not sent (clients gave up)."""
        h = Harness(self, publish_queue_max_age=60)
        h.pool.publish(request())
        h.endpoints[A].attempts[-1].refuse()
        h.clock.advance(61)
        server = h.connect()
        self.assertEqual(server.of_type("EVENT"), [])
        self.assertEqual(h.counters()["queue_expired"], 1)

    def test_unacknowledged_resent_after_reconnect(self) -> None:
        """An event without OK when the connection drops is sent again on the next one."""
        h = Harness(self)
        server = h.connect()
        event = request()
        h.pool.publish(event)
        h.drop(server)
        self.assertEqual(h.status()["queued"], 1)
        h.clock.advance(1)
        self.assertEqual(h.connect().of_type("EVENT"), [["EVENT", event]])

    def test_resent_event_keeps_its_age(self) -> None:
        """An unacknowledged event put back after a drop keeps the time it was first queued,
        so a flapping relay cannot keep a stale response alive past publish_queue_max_age."""
        h = Harness(self, publish_queue_max_age=60)
        server = h.connect()
        h.pool.publish(request())
        h.clock.advance(50)
        h.drop(server)
        h.clock.advance(1)
        h.endpoints[A].attempts[-1].refuse()
        h.clock.advance(10)
        server = h.connect()
        self.assertEqual(server.of_type("EVENT"), [])
        self.assertEqual(h.counters()["queue_expired"], 1)

    def test_invalid_event_not_published(self) -> None:
        """An event without a valid id is refused with a log line, never an exception."""
        h = Harness(self)
        h.connect()
        h.pool.publish({"id": "nope"})
        self.assertEqual(h.status()["queued"], 0)

    def test_send_on_closing_connection_queues(self) -> None:
        """A publish that crosses a closing handshake is queued, not raised (Disconnected)."""
        h = Harness(self)
        server = h.connect()
        attempt = h.endpoints[A].attempts[-1]
        attempt.client.sendClose()
        h.pool.publish(request())
        self.assertEqual(h.status()["queued"], 1)
        h.drop(server)


class AuthTests(SynchronousTestCase):
    def test_auth_flow_resends_closed_and_rejected(self) -> None:
        """AUTH is answered with a signed kind 22242; after OK, auth-required REQs and EVENTs
        are sent again."""
        h = Harness(self)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        event = request()
        h.pool.publish(event)
        h.clock.advance(5)
        with capturedLogs() as logs:
            h.send(server, "AUTH", "challenge-1")
        auth = server.of_type("AUTH")[0][1]
        self.assertTrue(verify_event(auth))
        self.assertEqual(auth["kind"], 22242)
        self.assertEqual(auth["created_at"], int(START) + 5)
        self.assertEqual(auth["tags"], [["relay", A], ["challenge", "challenge-1"]])
        self.assertTrue(any("AUTH" in e["log_format"] for e in logs))
        h.send(server, "CLOSED", "keycast-p0", "auth-required: please")
        h.send(server, "OK", event["id"], False, "auth-required: please")
        self.assertEqual(h.status()["rejected"], 0)
        server.received.clear()
        h.send(server, "OK", auth["id"], True, "")
        self.assertEqual([m[0] for m in server.received], ["REQ", "EVENT"])
        self.assertEqual(server.received[0][1], "keycast-p0")
        self.assertEqual(server.received[0][2]["since"], int(START) - 300)
        h.send(server, "EOSE", "keycast-p0")
        self.assertTrue(h.status()["subscribed"])

    def test_auth_required_events_bounded(self) -> None:
        """A relay that answers every event "auth-required" and never challenges cannot grow
        the events held for AUTH beyond publish_queue_limit; the oldest are given up."""
        h = Harness(self, publish_queue_limit=3)
        server = h.connect()
        events = [request(str(i)) for i in range(5)]
        for event in events:
            h.pool.publish(event)
            h.send(server, "OK", event["id"], False, "auth-required: sign in")
        self.assertEqual(h.counters()["queue_dropped"], 2)
        h.drop(server)
        self.assertEqual(h.status()["queued"], 3)

    def test_auth_rejected(self) -> None:
        """A refused AUTH is logged; events waiting for it are reported rejected."""
        h = Harness(self)
        server = h.connect()
        event = request()
        h.pool.publish(event)
        h.send(server, "AUTH", "c")
        h.send(server, "OK", event["id"], False, "auth-required: please")
        auth = server.of_type("AUTH")[0][1]
        h.send(server, "OK", auth["id"], False, "restricted: not you")
        self.assertEqual(h.status()["rejected"], 1)
        self.assertEqual(h.counters()["auth_failed"], 1)
        h.clock.advance(10)
        self.assertEqual(h.observer.of("published"), [("published", event["id"], 0)])

    def test_repeated_challenges_answered_once_a_second(self) -> None:
        """A relay repeating AUTH cannot make us sign at wire speed: one answer per second."""
        h = Harness(self)
        server = h.connect()
        with capturedLogs() as logs:
            for i in range(5):
                h.send(server, "AUTH", f"c{i}")
        self.assertEqual(len(server.of_type("AUTH")), 1)
        self.assertEqual(h.counters()["auth_ignored"], 4)
        self.assertEqual(len([e for e in logs if "repeats AUTH" in e["log_format"]]), 1)
        h.clock.advance(1)
        h.send(server, "AUTH", "later")
        self.assertEqual(len(server.of_type("AUTH")), 2)
        self.assertEqual(h.pool.connected_count(), 1)

    def test_rejection_log_bounds_relay_text(self) -> None:
        """An OK refusing an unknown, huge event id logs at most 200 characters of it."""
        h = Harness(self)
        server = h.connect()
        with capturedLogs() as logs:
            h.send(server, "OK", "f" * 5000, False, "invalid: no")
        logged = [e["event_id"] for e in logs if "rejected event" in e["log_format"]]
        self.assertEqual([len(i) for i in logged], [200])

    def test_auth_signer_failure_contained(self) -> None:
        """If signing the challenge fails, it is logged and counted; the connection stays."""
        h = Harness(self)

        def broken(template: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("no key")

        h.pool._relays[A]._auth_signer = broken
        server = h.connect()
        h.send(server, "AUTH", "c")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(server.of_type("AUTH"), [])
        self.assertEqual(h.pool.connected_count(), 1)


class StatusTests(SynchronousTestCase):
    def test_status_shape(self) -> None:
        """status() has exactly the contract's keys per relay."""
        h = Harness(self, urls=(A, B))
        h.connect(A)
        self.assertEqual(
            set(h.status()),
            {"url", "connected", "subscribed", "reconnects", "last_event_at",
             "last_connected_at", "ok", "rejected", "notices", "closed", "queued"},
        )
        self.assertEqual(h.status(A)["last_connected_at"], START)
        self.assertEqual([s["connected"] for s in h.pool.status()], [True, False])

    def test_observers_and_redundancy_log(self) -> None:
        """Observers see connect/disconnect/reconnect; the pool logs the connected count."""
        h = Harness(self, urls=(A, B))
        with capturedLogs() as logs:
            sa = h.connect(A)
            h.connect(B)
        counts = [e["count"] for e in logs if "for redundancy" in e["log_format"]]
        self.assertEqual(counts, [1, 2])
        h.drop(sa)
        self.assertEqual(
            h.observer.calls[-4:],
            [("connected", A), ("connected", B), ("disconnected", A), ("reconnect", A)],
        )

    def test_redundancy_logged_again_after_recovery(self) -> None:
        """A relay that drops and comes back makes the pool say "Connected to 2" again."""
        h = Harness(self, urls=(A, B))
        sa = h.connect(A)
        h.connect(B)
        with capturedLogs() as logs:
            h.drop(sa)
            h.clock.advance(120)
            h.connect(A)
        counts = [e["count"] for e in logs if "for redundancy" in e["log_format"]]
        self.assertEqual(counts, [2])

    def test_logs_never_carry_event_contents(self) -> None:
        """Nothing the pool logs contains an event's content or the event itself."""
        h = Harness(self, max_events_per_second=1)
        h.pool.set_bunker_pubkeys(keys(1))
        with capturedLogs() as logs:
            server = h.connect()
            secret = "SECRET-CONTENT"
            for i in range(3):
                h.send(server, "EVENT", "keycast-p0", request(f"{secret}{i}"))
            event = request(secret)
            h.pool.publish(event)
            h.send(server, "OK", event["id"], False, "invalid: bad")
            h.drop(server)
        self.assertNotIn(secret, orjson.dumps(logs, default=repr).decode())

    def test_stop_leaves_clean_clock(self) -> None:
        """Stopping the pool cancels every timer (debounce, EOSE, publications, retries, pings)."""
        h = Harness(self, auto_ping_interval=10, auto_ping_timeout=5, resubscribe_debounce=5)
        h.pool.set_bunker_pubkeys(keys(1))
        h.connect()
        h.pool.set_bunker_pubkeys(keys(2))
        h.pool.publish(request())
        self.assertNotEqual(h.clock.getDelayedCalls(), [])
        stopped = h.pool.stopService()
        h.flush()
        h.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class StopTests(SynchronousTestCase):
    def test_stop_sends_close_frame(self) -> None:
        """Stopping closes each open WebSocket with code 1000 and logs a clean close, no 1006
        and no reconnect; the ClientService stops once the relay has answered."""
        h = Harness(self, urls=(A, B))
        h.pool.set_bunker_pubkeys(keys(1))
        sa, sb = h.connect(A), h.connect(B)
        with capturedLogs() as logs:
            stopped = h.pool.stopService()
            self.assertNoResult(stopped)
            h.flush()
            h.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(sa.close_frame, (1000, "keycast shutting down"))
        self.assertEqual(sb.close_frame, (1000, "keycast shutting down"))
        closes = [e for e in logs if "closed for shutdown" in e["log_format"]]
        self.assertEqual(sorted(e["relay_url"] for e in closes), [A, B])
        self.assertEqual({e["code"] for e in closes}, {1000})
        self.assertEqual(h.observer.of("reconnect"), [])
        self.assertFalse(any("retry" in e["log_format"] or "reconnect" in e["log_format"]
                             for e in logs))
        self.assertEqual(h.status(A)["reconnects"], 0)
        self.assertEqual(h.pool.connected_count(), 0)
        self.assertFalse(any(client.running for client in h.pool))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_completion_may_stop_again(self) -> None:
        """Whoever waits on the stop may call into the pool again (no automat re-entrancy)."""
        h = Harness(self)
        h.connect()
        again: list[object] = []
        stopped = h.pool.stopService()
        stopped.addCallback(lambda _: h.pool.stopService()).addCallback(again.append)
        h.flush()
        h.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(again, [None])

    def test_no_timer_after_stop(self) -> None:
        """A reload or a late response after the stop arms no timer on the clock."""
        h = Harness(self, resubscribe_debounce=5)
        h.pool.set_bunker_pubkeys(keys(1))
        self.successResultOf(h.pool.stopService())
        h.pool.set_bunker_pubkeys(keys(2))
        h.pool.publish(request())
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_without_connection_is_immediate(self) -> None:
        """With no WebSocket open there is nothing to close: the stop completes at once."""
        h = Harness(self, urls=(A, B))
        h.endpoints[A].attempts[-1].refuse()
        stopped = h.pool.stopService()
        self.successResultOf(stopped)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_bounded_when_relay_never_answers(self) -> None:
        """A relay that never answers the close frame is dropped after close_timeout."""
        h = Harness(self, close_timeout=0.5)
        h.connect()
        stopped = h.pool.stopService()
        h.clock.advance(0.4)
        self.assertNoResult(stopped)
        h.clock.advance(0.1)
        h.flush()
        h.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(h.pool.connected_count(), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_slow_relay_does_not_let_another_reconnect(self) -> None:
        """A relay that closed is stopped at once, even while another one is still closing."""
        h = Harness(self, urls=(A, B), initial_delay=0.1, close_timeout=1.0)
        h.connect(A)
        h.connect(B)
        stopped = h.pool.stopService()
        pump_a = h.endpoints[A].attempts[-1].pump
        assert pump_a is not None
        pump_a.flush()
        h.clock.advance(0)
        h.clock.advance(0.5)
        self.assertNoResult(stopped)
        self.assertEqual(len(h.endpoints[A].attempts), 1)
        h.flush()
        h.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class MessageMetricsTests(SynchronousTestCase):
    def test_every_kind_reaches_the_metrics_text(self) -> None:
        """Each kind of frame a relay sends is counted under its own type in
        keycast_relay_messages_total, end to end from the pool to /metrics; none is "other"."""
        h = Harness(self, max_message_size=5000)
        metrics = Metrics()
        h.pool.add_observer(metrics)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        event = request()
        h.pool.publish(event)
        h.send(server, "EVENT", "keycast-p0", request())
        h.send(server, "OK", event["id"], True, "")
        h.send(server, "OK", event["id"], False, "blocked: no")
        h.send(server, "EOSE", "keycast-p0")
        h.send(server, "NOTICE", "hello")
        h.send(server, "CLOSED", "keycast-p0", "error: bye")
        h.send(server, "AUTH", "challenge")
        server.sendMessage(b"{nope")
        server.sendMessage(b"\x00", isBinary=True)
        h.flush()
        h.send(server, "NOTICE", "x" * 6000)
        families = {
            f.name: f for f in text_string_to_metric_families(metrics.render().decode())
        }
        counted = {
            s.labels["type"]: s.value
            for s in families["keycast_relay_messages"].samples
            if s.name == "keycast_relay_messages_total" and s.labels["relay"] == A
        }
        self.assertEqual(
            counted,
            {kind: 1.0 for kind in ("event", "ok", "rejected", "eose", "notice", "closed",
                                    "auth", "malformed", "binary", "oversize")},
        )


class ClosedSubscriptionTests(SynchronousTestCase):
    def test_closed_subscription_requested_again_with_backoff(self) -> None:
        """A subscription the relay CLOSED on a live connection is asked for again after the
        backoff, with since covering the time it was closed; repeated closes back off."""
        h = Harness(self, initial_delay=1, factor=2, max_delay=8)
        h.pool.set_bunker_pubkeys(keys(1))
        server = h.connect()
        h.send(server, "EOSE", "keycast-p0")
        h.clock.advance(100)
        server.received.clear()
        h.send(server, "CLOSED", "keycast-p0", "rate-limited: slow down")
        self.assertFalse(h.status()["subscribed"])
        h.clock.advance(1)
        h.flush()
        [req] = server.of_type("REQ")
        self.assertEqual(req[1], "keycast-p0")
        self.assertEqual(req[2]["since"], int(START) + 100 - 300)
        h.send(server, "EOSE", "keycast-p0")
        self.assertTrue(h.status()["subscribed"])
        h.send(server, "CLOSED", "keycast-p0", "error: again")
        h.clock.advance(1)
        h.flush()
        self.assertEqual(len(server.of_type("REQ")), 1)
        h.clock.advance(1)
        h.flush()
        self.assertEqual(len(server.of_type("REQ")), 2)

    def test_no_re_request_once_unwanted_or_after_a_drop(self) -> None:
        """A closed subscription that is no longer wanted is not asked for again, and a drop
        leaves no re-REQ timer behind (the reconnect subscribes afresh)."""
        h = Harness(self, initial_delay=1, p_chunk_size=1)
        h.pool.set_bunker_pubkeys(keys(2))
        server = h.connect()
        h.send(server, "CLOSED", "keycast-p1", "error: no")
        h.pool.set_bunker_pubkeys(keys(1))
        h.clock.advance(5)
        h.flush()
        self.assertEqual([m[1] for m in server.of_type("REQ")], ["keycast-p0", "keycast-p1"])
        h.send(server, "CLOSED", "keycast-p0", "error: no")
        h.drop(server)
        h.clock.advance(1)
        server = h.connect()
        h.clock.advance(10)
        h.flush()
        self.assertEqual([m[1] for m in server.of_type("REQ")], ["keycast-p0"])


class RelayClosesTests(SynchronousTestCase):
    def test_relay_that_closes_but_keeps_tcp_is_dropped(self) -> None:
        """After the relay's close frame is answered, TCP is dropped by us within
        close_timeout if the relay does not, even with keep-alive pings off; then the relay is
        retried like any lost connection."""
        h = Harness(self, close_timeout=2)
        factory = relay_server_factory(h.clock)
        factory.protocol = LingeringRelayServer
        attempt = h.endpoints[A].attempts[-1]
        attempt.accept(factory)
        attempt.server.sendClose(code=1000, reason="going away")
        h.flush()
        h.clock.advance(1.9)
        h.flush()
        self.assertEqual(len(h.observer.of("disconnected")), 0)
        h.clock.advance(0.1)
        h.flush()
        self.assertEqual(h.pool.connected_count(), 0)
        self.assertEqual(h.observer.of("disconnected"), [("disconnected", A)])
        self.assertEqual(h.observer.of("reconnect"), [("reconnect", A)])


class FactoryLogTests(SynchronousTestCase):
    def test_attempts_log_nothing_of_their_own(self) -> None:
        """ClientService starts and stops the factory on every attempt: that stays silent (the
        relay logs its own connect and retry lines)."""
        factory = RelayClientFactory(
            A, owner=Observer(), clock=MemoryReactorClock(), options=RelayOptions()
        )
        with capturedLogs() as logs:
            for _ in range(3):
                factory.doStart()
                factory.doStop()
        self.assertEqual(list(logs), [])
