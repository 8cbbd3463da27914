"""Pure parts of keycast_tw.relay: message codec, subscription plan, since, options, limits."""

from __future__ import annotations

import orjson
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.relay import messages
from keycast_tw.relay.endpoint import RelayURLError, endpoint_for_url, parse_relay_url
from keycast_tw.relay.limits import LogLimiter, TokenBucket
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.subscription import (
    FIREHOSE_ID,
    plan_filters,
    resume_since,
    with_since,
)

EID = "ab" * 32


def _parse(*message: object) -> messages.RelayMessage:
    return messages.parse_relay_message(orjson.dumps(list(message)))


class ParseTests(SynchronousTestCase):
    def test_known_messages(self) -> None:
        """Every relay->client message of NIP-01/NIP-42 becomes its typed value."""
        event = {"id": EID, "kind": 24133}
        self.assertEqual(_parse("EVENT", "s", event), messages.EventMessage("s", event))
        self.assertEqual(_parse("OK", EID, True, ""), messages.OkMessage(EID, True, ""))
        self.assertEqual(_parse("OK", EID, False), messages.OkMessage(EID, False, ""))
        self.assertEqual(_parse("EOSE", "s"), messages.EoseMessage("s"))
        self.assertEqual(_parse("CLOSED", "s", "error: x"), messages.ClosedMessage("s", "error: x"))
        self.assertEqual(_parse("NOTICE", "hi"), messages.NoticeMessage("hi"))
        self.assertEqual(_parse("AUTH", "c"), messages.AuthChallenge("c"))

    def test_malformed(self) -> None:
        """Wrong shapes raise MalformedMessage with a short fixed reason, never the frame."""
        bad = [
            b"not json",
            b"\xff\xfe",
            b"{}",
            b"[]",
            b"[1]",
            orjson.dumps(["EVENT", "s", ["not", "a", "dict"]]),
            orjson.dumps(["EVENT", "s", {"id": "short"}]),
            orjson.dumps(["EVENT", "s", {"id": EID.upper()}]),
            orjson.dumps(["EVENT", 1, {"id": EID}]),
            orjson.dumps(["EVENT", "s"]),
            orjson.dumps(["OK", EID, "true"]),
            orjson.dumps(["EOSE"]),
            orjson.dumps(["CLOSED"]),
            orjson.dumps(["NOTICE", 5]),
            orjson.dumps(["AUTH", {"x": 1}]),
            orjson.dumps(["COUNT", "s", {"count": 1}]),
        ]
        for payload in bad:
            with self.assertRaises(messages.MalformedMessage) as caught:
                messages.parse_relay_message(payload)
            self.assertNotIn("short", caught.exception.reason)

    def test_machine_prefix(self) -> None:
        """The prefix before ':' is what NIP-01/NIP-42 logic keys on."""
        self.assertEqual(messages.machine_prefix("auth-required: please"), "auth-required")
        self.assertEqual(messages.machine_prefix("no prefix here"), "")

    def test_encode(self) -> None:
        """Client messages are compact JSON arrays; over-long subscription ids are refused."""
        self.assertEqual(messages.encode_close("s"), b'["CLOSE","s"]')
        self.assertEqual(messages.encode_req("s", [{"kinds": [1]}]), b'["REQ","s",{"kinds":[1]}]')
        with self.assertRaises(ValueError):
            messages.encode_req("x" * 65, [])


class PlanTests(SynchronousTestCase):
    keys = frozenset(f"{i:064x}" for i in range(5))

    def test_chunks(self) -> None:
        """Pubkeys are sorted into #p chunks of at most chunk_size, ids stable by position."""
        plan = plan_filters(self.keys, chunk_size=2, firehose_threshold=10)
        self.assertEqual(list(plan), ["keycast-p0", "keycast-p1", "keycast-p2"])
        self.assertEqual(plan["keycast-p0"], {"kinds": [24133], "#p": sorted(self.keys)[:2]})
        self.assertEqual(sum(len(f["#p"]) for f in plan.values()), 5)
        self.assertTrue(all(len(sub_id) <= 64 for sub_id in plan))

    def test_firehose_above_threshold(self) -> None:
        """Above the threshold one {"kinds":[24133]} subscription replaces the chunks."""
        self.assertEqual(
            plan_filters(self.keys, chunk_size=2, firehose_threshold=4),
            {FIREHOSE_ID: {"kinds": [24133]}},
        )
        self.assertEqual(len(plan_filters(self.keys, chunk_size=2, firehose_threshold=5)), 3)

    def test_empty(self) -> None:
        """No bunkers, no subscription."""
        self.assertEqual(plan_filters(frozenset(), chunk_size=2, firehose_threshold=4), {})

    def test_auto_threshold(self) -> None:
        """The automatic firehose threshold is ten chunks; an explicit one wins."""
        self.assertEqual(RelayOptions(p_chunk_size=100).effective_firehose_threshold, 1000)
        self.assertEqual(RelayOptions(firehose_threshold=3).effective_firehose_threshold, 3)

    def test_resume_since(self) -> None:
        """since = resume point - skew, never older than max_lookback, never in the future."""
        self.assertEqual(resume_since(1000, 1010, skew=60, max_lookback=900), 940)
        self.assertEqual(resume_since(0, 5000, skew=60, max_lookback=900), 4100)
        self.assertEqual(resume_since(2000, 1000, skew=60, max_lookback=900), 940)
        self.assertEqual(with_since({"kinds": [1]}, 5), {"kinds": [1], "since": 5})


class OptionsTests(SynchronousTestCase):
    def test_invalid(self) -> None:
        """Nonsense values are refused with a message naming the option."""
        for kwargs in (
            {"initial_delay": 0},
            {"p_chunk_size": 0},
            {"factor": 0.5},
            {"since_skew": -1},
            {"max_delay": 0.5},
            {"firehose_threshold": -1},
        ):
            with self.assertRaises(ValueError) as caught:
                RelayOptions(**kwargs)  # type: ignore[arg-type]
            self.assertIn(next(iter(kwargs)), str(caught.exception))


class LimitTests(SynchronousTestCase):
    def test_log_limiter(self) -> None:
        """One line per key and interval; the next allowed line reports the suppressed count."""
        clock = Clock()
        limiter = LogLimiter(clock, interval=60)
        self.assertEqual(limiter.allow("a"), 0)
        self.assertIsNone(limiter.allow("a"))
        self.assertIsNone(limiter.allow("a"))
        self.assertEqual(limiter.allow("b"), 0)
        clock.advance(60)
        self.assertEqual(limiter.allow("a"), 2)

    def test_token_bucket(self) -> None:
        """`rate` per second with a one-second burst, refilled by the clock."""
        clock = Clock()
        bucket = TokenBucket(clock, rate=3)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(1 / 3)
        self.assertTrue(bucket.take())
        self.assertFalse(bucket.take())


class EndpointTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Scheme decides TLS and the default port; IPv6 literals keep their address."""
        self.assertEqual(parse_relay_url("wss://relay.damus.io").port, 443)
        self.assertEqual(parse_relay_url("ws://127.0.0.1:7000/x").port, 7000)
        address = parse_relay_url("wss://[::1]:8443")
        self.assertEqual((address.secure, address.host, address.port), (True, "::1", 8443))

    def test_bad_urls(self) -> None:
        """Wrong scheme, no host or a bad port are a typed, readable error."""
        for url in ("http://relay", "wss://", "ws://host:99999", "relay.damus.io"):
            self.assertRaises(RelayURLError, parse_relay_url, url)

    def test_plain_ws_is_tcp(self) -> None:
        """ws:// is a plain HostnameEndpoint; wss:// wraps it in TLS."""
        reactor = MemoryReactorClock()
        self.assertIsInstance(endpoint_for_url(reactor, "ws://relay:80"), HostnameEndpoint)
        self.assertNotIsInstance(endpoint_for_url(reactor, "wss://relay"), HostnameEndpoint)
