"""Tests for keycast_tw.metrics: names, labels, bounded cardinality and the text exposition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.metrics import CONTENT_TYPE, Metrics


class MetricsTests(SynchronousTestCase):
    """Each recording method moves exactly the metric it names."""

    def setUp(self) -> None:
        self.metrics = Metrics()
        self.registry = self.metrics.registry

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one sample."""
        return self.registry.get_sample_value(name, labels)

    def test_own_registry(self) -> None:
        """Two Metrics objects never share counters (no global registry)."""
        other = Metrics()
        self.metrics.request_handled("ping", "ok", 0.001)
        self.assertEqual(self.value("keycast_requests_total", method="ping", outcome="ok"), 1.0)
        self.assertIsNone(
            other.registry.get_sample_value(
                "keycast_requests_total", {"method": "ping", "outcome": "ok"}
            )
        )

    def test_injected_registry(self) -> None:
        """A registry passed in is the one the metrics are registered on."""
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        metrics.reloaded("ok")
        self.assertEqual(registry.get_sample_value("keycast_reloads_total", {"result": "ok"}), 1.0)

    def test_request_counter_and_histogram(self) -> None:
        """request_handled counts by method and outcome and observes the latency."""
        self.metrics.request_handled("sign_event", "ok", 0.003)
        self.metrics.request_handled("sign_event", "ok", 0.2)
        self.metrics.request_handled("sign_event", "ignored", 0.001)
        self.assertEqual(
            self.value("keycast_requests_total", method="sign_event", outcome="ok"), 2.0
        )
        self.assertEqual(
            self.value("keycast_requests_total", method="sign_event", outcome="ignored"), 1.0
        )
        self.assertEqual(self.value("keycast_request_seconds_count"), 3.0)
        self.assertAlmostEqual(self.value("keycast_request_seconds_sum") or 0.0, 0.204)
        self.assertEqual(self.value("keycast_request_seconds_bucket", le="0.005"), 2.0)

    def test_unknown_method_is_other(self) -> None:
        """Client-chosen method names cannot create new series: they count as "other"."""
        for i in range(50):
            self.metrics.request_handled(f"evil_{i}", "error", 0.0)
        self.assertEqual(
            self.value("keycast_requests_total", method="other", outcome="error"), 50.0
        )
        families = {
            f.name: f for f in text_string_to_metric_families(self.metrics.render().decode())
        }
        methods = {s.labels["method"] for s in families["keycast_requests"].samples}
        self.assertEqual(methods, {"other"})

    def test_unknown_outcome_is_other(self) -> None:
        """Outcome strings outside the vocabulary are folded into "other"."""
        self.metrics.request_handled("ping", "exploded: details", 0.0)
        self.assertEqual(self.value("keycast_requests_total", method="ping", outcome="other"), 1.0)

    def test_inflight(self) -> None:
        """The in-flight gauge reads the tracked count at each scrape."""
        inflight = [2]
        self.metrics.track_inflight(lambda: inflight[0])
        self.assertEqual(self.value("keycast_inflight"), 2.0)
        inflight[0] = 1
        self.assertEqual(self.value("keycast_inflight"), 1.0)

    def test_relay_gauges_follow_pool_events(self) -> None:
        """The relay gauges track connect, subscribe and disconnect events per URL."""
        m = self.metrics
        m.relay_connected("wss://a")
        m.relay_connected("wss://b")
        m.relay_connected("wss://b")
        m.relay_subscribed("wss://a")
        self.assertEqual(self.value("keycast_relays_connected"), 2.0)
        self.assertEqual(self.value("keycast_relays_subscribed"), 1.0)
        m.relay_disconnected("wss://a")
        self.assertEqual(self.value("keycast_relays_connected"), 1.0)
        self.assertEqual(self.value("keycast_relays_subscribed"), 0.0)

    def test_relay_counters(self) -> None:
        """Reconnects and relay messages are counted per relay and type."""
        self.metrics.relay_reconnect("wss://a")
        self.metrics.relay_message("wss://a", "notice")
        self.metrics.relay_message("wss://a", "bogus")
        self.assertEqual(self.value("keycast_relay_reconnects_total", relay="wss://a"), 1.0)
        self.assertEqual(
            self.value("keycast_relay_messages_total", relay="wss://a", type="notice"), 1.0
        )
        self.assertEqual(
            self.value("keycast_relay_messages_total", relay="wss://a", type="other"), 1.0
        )

    def test_published(self) -> None:
        """response_published counts published responses."""
        self.metrics.response_published("ab" * 32, 2)
        self.assertEqual(self.value("keycast_responses_published_total"), 1.0)

    def test_authorizations(self) -> None:
        """Authorization counts are set per kind; unknown kinds add up under "other"."""
        self.metrics.set_authorizations({"regular": 5, "oauth": 2, "team": 1, "x": 2})
        self.assertEqual(self.value("keycast_authorizations_loaded", kind="regular"), 5.0)
        self.assertEqual(self.value("keycast_authorizations_loaded", kind="oauth"), 2.0)
        self.assertEqual(self.value("keycast_authorizations_loaded", kind="other"), 3.0)
        self.metrics.set_authorizations({"regular": 4})
        self.assertEqual(self.value("keycast_authorizations_loaded", kind="regular"), 4.0)
        self.assertEqual(self.value("keycast_authorizations_loaded", kind="oauth"), 0.0)

    def test_reloads(self) -> None:
        """Reloads are counted by result."""
        self.metrics.reloaded("error")
        self.metrics.reloaded("ok")
        self.metrics.reloaded("ok")
        self.assertEqual(self.value("keycast_reloads_total", result="ok"), 2.0)
        self.assertEqual(self.value("keycast_reloads_total", result="error"), 1.0)

    def test_render(self) -> None:
        """render() is parseable Prometheus text naming every declared metric."""
        text = self.metrics.render().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        for name in (
            "keycast_requests",
            "keycast_request_seconds",
            "keycast_relays_connected",
            "keycast_relays_subscribed",
            "keycast_authorizations_loaded",
            "keycast_reloads",
            "keycast_relay_reconnects",
            "keycast_relay_messages",
            "keycast_responses_published",
            "keycast_inflight",
        ):
            self.assertIn(name, names)
        self.assertTrue(CONTENT_TYPE.startswith("text/plain"))
