"""Prometheus metrics of the signer daemon, on a registry of its own.

The daemon owns a private ``CollectorRegistry`` instead of prometheus-client's global one so that
tests (and two daemons in one test process) never see each other's counters, and so that
``/metrics`` exposes exactly what is declared here. Every label value is drawn from a bounded
set: NIP-46 method names outside the known list are folded into ``"other"`` (a client choosing
the method string must not be able to grow the time-series count), outcomes, reload results and
message types are fixed vocabularies, and relay labels come from the operator's configuration.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from keycast_tw.relay.messages import RECEIVED_KINDS

#: The NIP-46 methods the engine answers; anything else is counted as "other".
KNOWN_METHODS = frozenset(
    {
        "connect",
        "ping",
        "get_public_key",
        "sign_event",
        "nip04_encrypt",
        "nip04_decrypt",
        "nip44_encrypt",
        "nip44_decrypt",
        "switch_relays",
        "logout",
        "get_relays",
    }
)

#: Request outcomes: the engine's (keycast_tw.signer.engine.Outcome) and the dispatcher's
#: "overloaded" (refused at the in-flight bound) and "failed" (an engine bug, logged).
OUTCOMES = frozenset({"ok", "error", "ignored", "undecryptable", "overloaded", "failed"})

#: Relay message types counted per relay: exactly what the relay pool reports.
RELAY_MESSAGE_TYPES = RECEIVED_KINDS

#: Results of a reload of the authorizations.
RELOAD_RESULTS = frozenset({"ok", "error"})

#: Kinds of loaded authorizations (the Rust original's "regular" and "oauth").
AUTHORIZATION_KINDS = frozenset({"regular", "oauth"})

#: The content type of :meth:`Metrics.render`'s output. generate_latest's default escaping emits
#: the classic 0.0.4 text format (all our names are legacy-valid), which every Prometheus, the
#: Cloud Monitoring agent and VictoriaMetrics read; "version=1.0.0" would confuse older scrapers.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Signing is sub-millisecond; a slow request waits on the DB or a KMS call, hence the wide range.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    """Return ``value`` if it belongs to ``allowed``, else ``"other"``."""
    return value if value in allowed else "other"


class Metrics:
    """The daemon's counters, gauges and latency histogram, with one small method per event."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "keycast_requests",
            "NIP-46 requests handled, by method and outcome",
            ["method", "outcome"],
            registry=r,
        )
        self._latency = Histogram(
            "keycast_request_seconds",
            "Time from receiving a NIP-46 request to publishing its response",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._relays_connected = Gauge(
            "keycast_relays_connected", "Relays with an open WebSocket", registry=r
        )
        self._relays_subscribed = Gauge(
            "keycast_relays_subscribed",
            "Relays whose subscription is live (EOSE received on the current connection)",
            registry=r,
        )
        self._authorizations = Gauge(
            "keycast_authorizations_loaded",
            "Authorizations currently served, by kind",
            ["kind"],
            registry=r,
        )
        self._reloads = Counter(
            "keycast_reloads", "Reloads of the authorizations, by result", ["result"], registry=r
        )
        self._reconnects = Counter(
            "keycast_relay_reconnects", "Reconnections to a relay", ["relay"], registry=r
        )
        self._relay_messages = Counter(
            "keycast_relay_messages",
            "Frames received from a relay, by message type (rejected: an OK refusing our"
            " event) or by why they were unusable (malformed, binary, oversize)",
            ["relay", "type"],
            registry=r,
        )
        self._published = Counter(
            "keycast_responses_published",
            "NIP-46 response events handed to the relay pool",
            registry=r,
        )
        self._inflight = Gauge(
            "keycast_inflight", "NIP-46 requests being processed right now", registry=r
        )
        self._connected: set[str] = set()
        self._subscribed: set[str] = set()

    def request_handled(self, method: str, outcome: str, seconds: float) -> None:
        """Count one answered request and observe its latency."""
        self._requests.labels(
            method=_bounded(method, KNOWN_METHODS), outcome=_bounded(outcome, OUTCOMES)
        ).inc()
        self._latency.observe(max(seconds, 0.0))

    def track_inflight(self, count: Callable[[], float]) -> None:
        """Read the in-flight gauge from ``count`` at each scrape (the dispatcher's own count,
        so the gauge cannot drift from it)."""
        self._inflight.set_function(count)

    # The next five methods match the relay pool's observer hooks (RelayPool.add_observer), so
    # the daemon can register this object directly and the gauges follow the pool's events.

    def relay_connected(self, url: str) -> None:
        """A WebSocket to ``url`` opened."""
        self._connected.add(url)
        self._relays_connected.set(len(self._connected))

    def relay_disconnected(self, url: str) -> None:
        """The connection to ``url`` closed; its subscription went with it."""
        self._connected.discard(url)
        self._subscribed.discard(url)
        self._relays_connected.set(len(self._connected))
        self._relays_subscribed.set(len(self._subscribed))

    def relay_subscribed(self, url: str) -> None:
        """The subscription on ``url`` is live (EOSE received)."""
        self._subscribed.add(url)
        self._relays_subscribed.set(len(self._subscribed))

    def relay_reconnect(self, url: str) -> None:
        """Count one reconnection attempt to ``url`` (a configured relay URL)."""
        self._reconnects.labels(relay=url).inc()

    def response_published(self, event_id: str, accepted_by: int) -> None:
        """Count one response event handed to the relay pool (the arguments are not labels)."""
        self._published.inc()

    def set_authorizations(self, counts: dict[str, int]) -> None:
        """Record the loaded authorizations per kind ("regular", "oauth", else "other")."""
        totals = dict.fromkeys(AUTHORIZATION_KINDS, 0)
        for kind, count in counts.items():
            label = _bounded(kind, AUTHORIZATION_KINDS)
            totals[label] = totals.get(label, 0) + count
        for label, total in totals.items():
            self._authorizations.labels(kind=label).set(total)

    def reloaded(self, result: str) -> None:
        """Count one reload of the authorizations ("ok" or "error")."""
        self._reloads.labels(result=_bounded(result, RELOAD_RESULTS)).inc()

    def relay_message(self, relay: str, message_type: str) -> None:
        """Count one frame received from ``relay`` (pool hook; types outside the set: "other")."""
        self._relay_messages.labels(
            relay=relay, type=_bounded(message_type, RELAY_MESSAGE_TYPES)
        ).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (serve with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
