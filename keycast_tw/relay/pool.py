"""The relay pool: one reconnecting WebSocket client per relay, behind one small API.

``RelayPool`` is the ``relays`` service of the daemon. Each relay is a named ``ClientService``
(endpoint from the URL, :class:`RelayClientFactory`, the WebSocket-aware retry policy of its
:class:`Relay`) and the pool adds what spans relays: the bunker set to subscribe for (debounced),
de-duplication of events that arrive on several relays, publication tracking and observers.
"""

from __future__ import annotations

import hashlib
import random as _random
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from twisted.application.internet import ClientService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger

from keycast_tw.relay.endpoint import ReportingEndpoint
from keycast_tw.relay.endpoint import endpoint_for_url as _endpoint_for_url
from keycast_tw.relay.factory import RelayClientFactory
from keycast_tw.relay.messages import EVENT_ID
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.relay import AuthSigner, Relay
from keycast_tw.relay.subscription import FIREHOSE_ID, plan_filters

EndpointForURL = Callable[[Any, str], IStreamClientEndpoint]
#: Takes one distinct event from a relay; False means "refused for now" (overloaded, draining),
#: so that a copy arriving later from another relay is offered again instead of dropped.
OnEvent = Callable[[str, dict[str, Any]], bool]


def _no_value(result: object, timeout: float) -> None:
    """``addTimeout``'s ``onTimeoutCancel``: a timed-out wait is not an error."""


@dataclass
class _Publication:
    """One ``publish()`` waiting for every relay's verdict (or ``ok_timeout``)."""

    remaining: set[str]
    timer: IDelayedCall | None = None
    accepted: int = 0


class RelayPool(MultiService):
    log = Logger()

    def __init__(
        self,
        urls: Sequence[str],
        *,
        reactor: IReactorTime,
        on_event: OnEvent,
        auth_signer: AuthSigner,
        endpoint_for_url: EndpointForURL = _endpoint_for_url,
        random: Callable[[], float] = _random.random,
        options: RelayOptions | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.setName("relays")  # type: ignore[no-untyped-call]
        self._clock = reactor
        self._on_event = on_event
        self._options = options if options is not None else RelayOptions()
        self._relays: dict[str, Relay] = {}
        self._clients: dict[str, ClientService] = {}
        for url in dict.fromkeys(urls):
            relay = Relay(
                url,
                clock=reactor,
                options=self._options,
                auth_signer=auth_signer,
                hub=self,
                jitter=random,
            )
            factory = RelayClientFactory(url, owner=relay, clock=reactor, options=self._options)
            client = ClientService(
                ReportingEndpoint(endpoint_for_url(reactor, url), relay.attempt_failed),
                factory,
                retryPolicy=relay.retry_policy,
                clock=reactor,
            )
            client.setName(f"relay:{url}")  # type: ignore[no-untyped-call]
            client.setServiceParent(self)  # type: ignore[no-untyped-call]
            self._relays[url] = relay
            self._clients[url] = client
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._observers: list[object] = []
        self._pubkeys: frozenset[str] | None = None
        self._pending_pubkeys: frozenset[str] | None = None
        self._debounce: IDelayedCall | None = None
        self._publications: dict[str, _Publication] = {}
        self._announced_connected = 0

    # -- service ----------------------------------------------------------------------------

    def startService(self) -> None:
        for relay in self._relays.values():
            relay.start()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Close every WebSocket cleanly, then stop the ``ClientService`` of each relay.

        MultiService's stop would stop the ClientServices at once, and they drop TCP: relays
        would see no close frame and we would log an abnormal close (1006) on every shutdown.
        Each relay is stopped on its own, as soon as its connection has closed, so that one
        slow relay cannot let another one reconnect in the meantime.
        """
        if self._debounce is not None and self._debounce.active():
            self._debounce.cancel()
        self._debounce = None
        for publication in self._publications.values():
            if publication.timer is not None and publication.timer.active():
                publication.timer.cancel()
        self._publications.clear()
        Service.stopService(self)  # type: ignore[no-untyped-call]
        stopping = [
            Deferred.fromCoroutine(self._stop_relay(url, relay))
            for url, relay in self._relays.items()
        ]
        return gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)

    async def _stop_relay(self, url: str, relay: Relay) -> None:
        closed = relay.stop()
        # Bounded on the injected clock; a relay that never completes the close is dropped.
        closed.addTimeout(self._options.close_timeout, self._clock, onTimeoutCancel=_no_value)
        await closed
        # A completed close resumes here inside the protocol's connectionLost, which
        # ClientService's proxy calls before telling its state machine: stopping now is not
        # re-entrant, and the machine then goes to Stopped without scheduling (and logging) a
        # retry. That last transition fires the stop Deferred from inside the state machine,
        # though: whoever waits on the pool (the daemon's stop, a test's cleanup) might call
        # into the ClientService again, which automat refuses, so resume on the next tick.
        stopped = self._clients[url].stopService()
        if not stopped.called:
            await stopped
            await deferLater(self._clock, 0)

    # -- public API -------------------------------------------------------------------------

    def add_observer(self, observer: object) -> None:
        """Register an object with any of ``relay_connected(url)``, ``relay_disconnected(url)``,
        ``relay_subscribed(url)``, ``relay_reconnect(url)``, ``relay_message(url, kind)``,
        ``response_published(event_id, accepted_by)``, ``pubkeys_applied()`` (a new set of
        bunker pubkeys went out to the relays)."""
        self._observers.append(observer)

    def set_bunker_pubkeys(self, pubkeys: frozenset[str]) -> None:
        """Subscribe for requests to exactly these bunkers.

        The first call applies at once (start-up should not wait); later calls are coalesced
        for ``resubscribe_debounce`` seconds so that a burst of reloads costs one REQ round.
        The window starts with the first change and is not extended, so a steady trickle of
        changes cannot postpone the resubscription forever. A stopped pool records the set at
        once and arms no timer (a reload may still run while the daemon stops).
        """
        if self._pubkeys is None or not self.running:
            self._apply(pubkeys)
            return
        self._pending_pubkeys = pubkeys
        if self._debounce is None:
            self._debounce = self._clock.callLater(
                self._options.resubscribe_debounce, self._apply_pending
            )

    def publish(self, event: dict[str, Any], *, counted: Collection[str] | None = None) -> None:
        """Send ``event`` to every relay; relays that are down get it on their next connection.

        Outcomes are tracked (and reported to observers) only while the pool runs: a response
        finished after the stop began arms no timer that would outlive the pool. ``counted``
        limits the relays whose verdict ``response_published`` reports: a nostrconnect
        response is delivered only if a relay its client reads accepted it.
        """
        event_id = event.get("id") if isinstance(event, dict) else None
        if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
            self.log.error("Refusing to publish an event without a valid id")
            return
        if self.running and event_id not in self._publications:
            relays = self._relays.keys()
            remaining = set(relays) if counted is None else relays & set(counted)
            publication = _Publication(remaining=remaining)
            publication.timer = self._clock.callLater(
                self._options.ok_timeout, self._finish_publication, event_id
            )
            self._publications[event_id] = publication
        for relay in self._relays.values():
            relay.publish(event)

    def listening_for(self, pubkey: str, relays: Collection[str] | None = None) -> bool:
        """Whether a relay (one of ``relays`` when given) has a live subscription (EOSE
        received) covering ``pubkey``.

        A message p-tagging it that a client publishes now on that relay will reach us: the
        nostrconnect flow sends its connect response only then, because the client answers at
        once, and only on the relays the client reads.
        """
        applied = self._pubkeys is not None and pubkey in self._pubkeys
        kept = self._pending_pubkeys is None or pubkey in self._pending_pubkeys
        return (
            applied
            and kept
            and any(
                relay.subscribed
                for url, relay in self._relays.items()
                if relays is None or url in relays
            )
        )

    def status(self) -> list[dict[str, Any]]:
        return [relay.status() for relay in self._relays.values()]

    def connected_count(self) -> int:
        return sum(1 for relay in self._relays.values() if relay.connected)

    def subscribed_count(self) -> int:
        return sum(1 for relay in self._relays.values() if relay.subscribed)

    def message_counts(self) -> dict[str, dict[str, int]]:
        """Per relay, every counter (malformed, binary, oversize, flood_dropped, ...)."""
        return {url: dict(relay.counters) for url, relay in self._relays.items()}

    # -- RelayHub ---------------------------------------------------------------------------

    def relay_event(self, relay: Relay, event: dict[str, Any]) -> None:
        seen_key = _copy_key(event)
        if seen_key in self._seen:
            relay.counters["duplicate"] += 1
            return
        self._seen[seen_key] = None
        if len(self._seen) > self._options.dedup_size:
            self._seen.popitem(last=False)
        with self.log.failuresHandled(
            "Event handler failed for an event from {relay_url}", relay_url=relay.url
        ):
            if not self._on_event(relay.url, event):
                self._seen.pop(seen_key, None)

    def relay_publish_result(self, url: str, event_id: str, accepted: bool | None) -> None:
        publication = self._publications.get(event_id)
        if publication is None or url not in publication.remaining:
            return
        publication.remaining.discard(url)
        if accepted:
            publication.accepted += 1
        if not publication.remaining:
            self._finish_publication(event_id)

    def relay_notify(self, hook: str, *args: object) -> None:
        if hook in ("relay_connected", "relay_disconnected"):
            self._announce_connected()
        for observer in self._observers:
            method = getattr(observer, hook, None)
            if method is None:
                continue
            with self.log.failuresHandled("Relay observer {hook} failed", hook=hook):
                method(*args)

    # -- internals --------------------------------------------------------------------------

    def _apply_pending(self) -> None:
        self._debounce = None
        if self._pending_pubkeys is not None:
            pubkeys, self._pending_pubkeys = self._pending_pubkeys, None
            self._apply(pubkeys)

    def _apply(self, pubkeys: frozenset[str]) -> None:
        changed = pubkeys != self._pubkeys
        self._pubkeys = pubkeys
        if not changed:
            return
        plan = plan_filters(
            pubkeys,
            chunk_size=self._options.p_chunk_size,
            firehose_threshold=self._options.effective_firehose_threshold,
        )
        if FIREHOSE_ID in plan:
            self.log.info(
                "Subscribing to ALL kind 24133 events on {relays} relays"
                " ({count} bunker pubkeys, above the filter threshold of {threshold})",
                relays=len(self._relays),
                count=len(pubkeys),
                threshold=self._options.effective_firehose_threshold,
            )
        else:
            self.log.info(
                "Subscribing to kind 24133 events for {count} bunker pubkeys"
                " in {filters} filters on {relays} relays",
                count=len(pubkeys),
                filters=len(plan),
                relays=len(self._relays),
            )
        for relay in self._relays.values():
            relay.set_wanted(plan)
        self.relay_notify("pubkeys_applied")

    def _finish_publication(self, event_id: str) -> None:
        publication = self._publications.pop(event_id, None)
        if publication is None:
            return
        if publication.timer is not None and publication.timer.active():
            publication.timer.cancel()
        self.relay_notify("response_published", event_id, publication.accepted)

    def _announce_connected(self) -> None:
        """Log the connected count whenever it rises, also back to full after a drop.

        The runbook greps recent logs for "Connected to N relays", so a recovery must say it
        again; a fall only lowers the mark (each lost relay has its own log line).
        """
        connected = self.connected_count()
        if connected > self._announced_connected:
            self.log.info("Connected to {count} relays for redundancy", count=connected)
        self._announced_connected = connected


def _copy_key(event: dict[str, Any]) -> bytes:
    """What makes two relays' copies of an event the same copy: all of it, not just the id.

    Nothing is verified here (the engine does that), so keying on the id alone would let a
    hostile relay's tampered copy, arriving first, shadow the genuine one from another relay.
    """
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()
