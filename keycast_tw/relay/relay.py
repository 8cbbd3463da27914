"""Per-relay state: one connection at a time, its subscriptions, NIP-42, the publish queue.

A :class:`Relay` is the owner of whatever :class:`RelayClientProtocol` its ``ClientService``
currently has. It survives reconnects, so it carries what must outlive a connection: the wanted
subscriptions, the point to resume from (``since``), the bounded publish queue, counters. Nothing
here raises into the protocol: every relay misbehaviour is counted and logged at most once a
minute per kind, and never with event contents.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from keycast_tw.relay import messages
from keycast_tw.relay.limits import LogLimiter, TokenBucket
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.protocol import RelayClientProtocol
from keycast_tw.relay.retry import WebSocketRetryPolicy
from keycast_tw.relay.subscription import Filter, resume_since, with_since

KIND_AUTH = 22242
#: The close code and reason sent to every relay when the daemon stops (RFC 6455 "normal").
CLOSE_NORMAL = 1000
CLOSE_REASON = "keycast shutting down"
_MAX_LOGGED_TEXT = 200
_MAX_CHALLENGE = 1024
#: Challenges answered per second and connection: each answer is a signature on the reactor
#: thread, far costlier than the frame that asks for it, so a relay repeating AUTH at wire
#: speed would otherwise stall the daemon. Relays send one per connection.
AUTH_ANSWERS_PER_SECOND = 1.0

AuthSigner = Callable[[dict[str, Any]], dict[str, Any]]
#: An event to publish and the time it was first queued.
_Queued = tuple[float, dict[str, Any]]


class RelayHub(Protocol):
    """What a relay reports to (the pool)."""

    def relay_event(self, relay: Relay, event: dict[str, Any]) -> None: ...

    def relay_publish_result(self, url: str, event_id: str, accepted: bool | None) -> None: ...

    def relay_notify(self, hook: str, *args: object) -> None: ...


def _short(text: str | None) -> str:
    """Relay-supplied text, truncated so a hostile relay cannot bloat the log."""
    return (text or "")[:_MAX_LOGGED_TEXT]


class Relay:
    log = Logger()

    def __init__(
        self,
        url: str,
        *,
        clock: IReactorTime,
        options: RelayOptions,
        auth_signer: AuthSigner,
        hub: RelayHub,
        jitter: Callable[[], float],
    ) -> None:
        self.url = url
        self._clock = clock
        self._options = options
        self._auth_signer = auth_signer
        self._hub = hub
        self.retry_policy = WebSocketRetryPolicy(
            initial_delay=options.initial_delay,
            max_delay=options.max_delay,
            factor=options.factor,
            jitter=jitter,
            on_retry=self._retry_scheduled,
        )
        self._resubscribe_delay = backoffPolicy(
            initialDelay=options.initial_delay,
            maxDelay=options.max_delay,
            factor=options.factor,
            jitter=jitter,
        )
        self._log_limiter = LogLimiter(clock)
        self._flood = TokenBucket(clock, options.max_events_per_second)
        self.counters: Counter[str] = Counter()
        self.reconnects = 0
        self._last_failure: str | None = None
        self.last_event_at: float | None = None
        self.last_connected_at: float | None = None
        self._wanted: dict[str, Filter] = {}
        self._queue: deque[_Queued] = deque()
        self._resume_at = clock.seconds()
        self._stopping = False
        self._closed: Deferred[None] | None = None
        self._reset_connection_state()

    def _reset_connection_state(self) -> None:
        self._connection: RelayClientProtocol | None = None
        self._since = 0
        self._active: dict[str, Filter] = {}
        self._eosed: set[str] = set()
        self._auth_closed: set[str] = set()
        # Sent events awaiting OK, with the time they were first queued: a re-send after a
        # drop keeps that time, so publish_queue_max_age bounds the whole delivery attempt.
        self._unacked: OrderedDict[str, _Queued] = OrderedDict()
        self._auth_retry: dict[str, _Queued] = {}
        self._auth_event_id: str | None = None
        self._auth_budget = TokenBucket(self._clock, AUTH_ANSWERS_PER_SECOND)
        self._authenticated = False
        self._subscribed = False
        self._last_heard_at = self._clock.seconds()
        self._eose_timer: IDelayedCall | None = None
        # Subscriptions the relay CLOSED for a reason other than "auth-required" before we
        # authenticated, each with when it closed: asked for again after a backoff, from then.
        self._closed_subs: dict[str, float] = {}
        self._resubscribe_failures = 0
        self._resubscribe_timer: IDelayedCall | None = None

    # -- lifecycle driven by the pool -------------------------------------------------------

    def start(self) -> None:
        """Mark the start time: the first subscription looks back from here."""
        self._resume_at = self._clock.seconds()
        self._stopping = False

    def stop(self) -> Deferred[None]:
        """Close the open WebSocket with a close frame (1000); fire once it has closed.

        Fires at once when no WebSocket is open. The caller bounds the wait (cancelling the
        Deferred stops waiting) and then stops the ``ClientService``, which drops whatever is
        left. From here on, the reconnect that ``ClientService`` schedules when the connection
        closes is not reported: it is cancelled by that stop.
        """
        self._stopping = True
        self._cancel_timers()
        if self._connection is None:
            return succeed(None)
        self._closed = Deferred(lambda _: self._forget_closed())
        self._connection.close_with(CLOSE_NORMAL, CLOSE_REASON)
        return self._closed

    def _forget_closed(self) -> None:
        self._closed = None

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "connected": self.connected,
            "subscribed": self._subscribed,
            "reconnects": self.reconnects,
            "last_event_at": self.last_event_at,
            "last_connected_at": self.last_connected_at,
            "ok": self.counters["ok"],
            "rejected": self.counters["rejected"],
            "notices": self.counters["notice"],
            "closed": self.counters["closed"],
            "queued": len(self._queue),
        }

    def set_wanted(self, wanted: dict[str, Filter]) -> None:
        """Replace the wanted subscriptions; on a live connection send only the difference."""
        self._wanted = dict(wanted)
        if self._connection is None:
            return
        since = resume_since(
            self._clock.seconds(),
            self._clock.seconds(),
            skew=self._options.since_skew,
            max_lookback=self._options.max_lookback,
        )
        for sub_id in [s for s in self._active if s not in self._wanted]:
            self._send(messages.encode_close(sub_id))
            del self._active[sub_id]
            self._eosed.discard(sub_id)
        self._auth_closed &= set(self._wanted)
        for sub_id, flt in self._wanted.items():
            if self._active.get(sub_id) != flt and sub_id not in self._auth_closed:
                self._req(sub_id, flt, since)
        self._update_subscribed()

    def publish(self, event: dict[str, Any]) -> None:
        """Send now if connected, otherwise queue (bounded, oldest dropped first)."""
        now = self._clock.seconds()
        if self._connection is not None and self._send_event(event, now):
            return
        self._queue.append((now, event))
        self._trim_queue()

    # -- RelayConnectionOwner ---------------------------------------------------------------

    def ws_open(self, connection: RelayClientProtocol) -> None:
        now = self._clock.seconds()
        self._reset_connection_state()
        self._connection = connection
        self.last_connected_at = now
        self._last_heard_at = now
        self.log.info("Relay {relay_url} connected", relay_url=self.url)
        self._hub.relay_notify("relay_connected", self.url)
        self._since = resume_since(
            self._resume_at,
            now,
            skew=self._options.since_skew,
            max_lookback=self._options.max_lookback,
        )
        for sub_id, flt in self._wanted.items():
            self._req(sub_id, flt, self._since)
        self._flush_queue(now)

    def ws_alive(self, connection: RelayClientProtocol) -> None:
        if connection is self._connection:
            self._last_heard_at = self._clock.seconds()

    def ws_oversize(self, connection: RelayClientProtocol, size: int) -> None:
        self.counters["oversize"] += 1
        self._notify_message("oversize")
        self._warn_limited(
            "oversize",
            "Relay {relay_url} sent a {size}-byte message, over the {limit}-byte limit;"
            " dropping the connection",
            size=size,
            limit=self._options.max_message_size,
        )

    def ws_closed(
        self, connection: RelayClientProtocol, opened: bool, code: int | None, reason: str | None
    ) -> None:
        if connection is not self._connection:
            if not opened:
                self.counters["handshake_failed"] += 1
                self._last_failure = _short(connection.lost_reason or reason)
                self._warn_limited(
                    "handshake_failed",
                    "Relay {relay_url} closed before the WebSocket handshake completed"
                    " (code {code}): {reason}",
                    code=code,
                    reason=self._last_failure,
                )
            return
        self._resume_at = self._last_heard_at
        if self.last_connected_at is not None and (
            self._clock.seconds() - self.last_connected_at >= self._options.stable_connection
        ):
            self.retry_policy.reset()
        if self._stopping:
            self.log.info("Relay {relay_url} closed for shutdown (code {code})",
                          relay_url=self.url, code=code)
        else:
            self.log.info(
                "Relay {relay_url} disconnected (code {code}: {reason})",
                relay_url=self.url,
                code=code,
                reason=_short(reason),
            )
        # Unacknowledged events may never have reached the relay: send them again next time.
        self._queue.extendleft(reversed([*self._unacked.values(), *self._auth_retry.values()]))
        self._trim_queue()
        self._cancel_timers()
        self._reset_connection_state()
        self._hub.relay_notify("relay_disconnected", self.url)
        closed, self._closed = self._closed, None
        if closed is not None:
            closed.callback(None)

    def ws_message(self, connection: RelayClientProtocol, payload: bytes, binary: bool) -> None:
        if connection is not self._connection:
            return
        self._last_heard_at = self._clock.seconds()
        if binary:
            self._misbehaved("binary", "binary frame")
            return
        try:
            message = messages.parse_relay_message(payload)
        except messages.MalformedMessage as e:
            self._misbehaved("malformed", e.reason)
            return
        if isinstance(message, messages.EventMessage):
            self._on_event(message)
        elif isinstance(message, messages.OkMessage):
            self._on_ok(message)
        elif isinstance(message, messages.EoseMessage):
            self._on_eose(message)
        elif isinstance(message, messages.ClosedMessage):
            self._on_closed(message)
        elif isinstance(message, messages.NoticeMessage):
            self._on_notice(message)
        else:
            self._on_auth(message)

    # -- relay -> us ------------------------------------------------------------------------

    def _on_event(self, message: messages.EventMessage) -> None:
        self._notify_message("event")
        if message.subscription_id not in self._active:
            self.counters["foreign_subscription"] += 1
            return
        if not self._flood.take():
            self.counters["flood_dropped"] += 1
            self._warn_limited(
                "flood", "Relay {relay_url} exceeds {rate} events/s; dropping events",
                rate=self._options.max_events_per_second,
            )
            return
        self.counters["event"] += 1
        self.last_event_at = self._clock.seconds()
        self._hub.relay_event(self, message.event)

    def _on_ok(self, message: messages.OkMessage) -> None:
        self._notify_message("ok" if message.accepted else "rejected")
        if message.event_id == self._auth_event_id:
            self._on_auth_result(message)
            return
        unacked = self._unacked.pop(message.event_id, None)
        prefix = messages.machine_prefix(message.message)
        if message.accepted or prefix == "duplicate":
            self.counters["ok"] += 1
            self._hub.relay_publish_result(self.url, message.event_id, True)
            return
        if prefix == "auth-required" and unacked is not None and not self._authenticated:
            self._auth_retry[message.event_id] = unacked
            if len(self._auth_retry) > self._options.publish_queue_limit:
                # A relay that demands AUTH and never challenges must not grow this.
                oldest = next(iter(self._auth_retry))
                del self._auth_retry[oldest]
                self.counters["queue_dropped"] += 1
                self._hub.relay_publish_result(self.url, oldest, None)
            return
        self.counters["rejected"] += 1
        self._warn_limited(
            "rejected",
            "Relay {relay_url} rejected event {event_id}: {message}",
            event_id=_short(message.event_id),
            message=_short(message.message),
        )
        self._hub.relay_publish_result(self.url, message.event_id, False)

    def _on_eose(self, message: messages.EoseMessage) -> None:
        self._notify_message("eose")
        if message.subscription_id in self._active:
            self._eosed.add(message.subscription_id)
            self._update_subscribed()

    def _on_closed(self, message: messages.ClosedMessage) -> None:
        self._notify_message("closed")
        self.counters["closed"] += 1
        sub_id = message.subscription_id
        if sub_id not in self._active:
            return
        del self._active[sub_id]
        self._eosed.discard(sub_id)
        if messages.machine_prefix(message.message) == "auth-required" and not self._authenticated:
            self._auth_closed.add(sub_id)
            self.log.info(
                "Relay {relay_url} wants AUTH before subscription {subscription_id}",
                relay_url=self.url,
                subscription_id=sub_id,
            )
        else:
            self._warn_limited(
                "closed",
                "Relay {relay_url} closed subscription {subscription_id}: {message}",
                subscription_id=sub_id,
                message=_short(message.message),
            )
            # The connection stays up, so no reconnect would ever ask again: without this a
            # relay's "rate-limited:" or "error:" would leave its chunk of bunkers deaf.
            self._closed_subs.setdefault(sub_id, self._clock.seconds())
            self._schedule_resubscribe()
        self._update_subscribed()

    def _schedule_resubscribe(self) -> None:
        if self._resubscribe_timer is not None and self._resubscribe_timer.active():
            return
        delay = self._resubscribe_delay(self._resubscribe_failures)
        self._resubscribe_failures += 1
        self._resubscribe_timer = self._clock.callLater(delay, self._resubscribe_closed)

    def _resubscribe_closed(self) -> None:
        """REQ again what the relay closed and we still want, from when it was closed."""
        self._resubscribe_timer = None
        closed, self._closed_subs = self._closed_subs, {}
        now = self._clock.seconds()
        for sub_id, closed_at in sorted(closed.items()):
            wanted = self._wanted.get(sub_id)
            if wanted is None or sub_id in self._active:
                continue
            since = resume_since(
                closed_at,
                now,
                skew=self._options.since_skew,
                max_lookback=self._options.max_lookback,
            )
            self._req(sub_id, wanted, since)

    def _on_notice(self, message: messages.NoticeMessage) -> None:
        self._notify_message("notice")
        self.counters["notice"] += 1
        self._warn_limited(
            "notice", "Relay {relay_url} notice: {notice}", notice=_short(message.message)
        )

    def _on_auth(self, message: messages.AuthChallenge) -> None:
        self._notify_message("auth")
        if not message.challenge or len(message.challenge) > _MAX_CHALLENGE:
            self._misbehaved("malformed", "unusable AUTH challenge")
            return
        if not self._auth_budget.take():
            self.counters["auth_ignored"] += 1
            self._warn_limited(
                "auth_ignored",
                "Relay {relay_url} repeats AUTH challenges; answering at most {rate:g} per second",
                rate=AUTH_ANSWERS_PER_SECOND,
            )
            return
        template = {
            "kind": KIND_AUTH,
            "created_at": int(self._clock.seconds()),
            "tags": [["relay", self.url], ["challenge", message.challenge]],
            "content": "",
        }
        try:
            signed = self._auth_signer(template)
            event_id = signed["id"]
        except Exception:
            self.counters["auth_failed"] += 1
            self.log.failure("Relay {relay_url} AUTH: signing the challenge failed",
                             relay_url=self.url)
            return
        self._auth_event_id = event_id
        self._authenticated = False
        self._send(messages.encode_auth(signed))
        self.log.info("Relay {relay_url} AUTH challenge answered", relay_url=self.url)

    def _on_auth_result(self, message: messages.OkMessage) -> None:
        self._auth_event_id = None
        if not message.accepted:
            self.counters["auth_failed"] += 1
            self.log.warn(
                "Relay {relay_url} AUTH rejected: {message}",
                relay_url=self.url,
                message=_short(message.message),
            )
            waiting, self._auth_retry = self._auth_retry, {}
            for event_id in waiting:
                self.counters["rejected"] += 1
                self._hub.relay_publish_result(self.url, event_id, False)
            return
        self._authenticated = True
        self.counters["auth_ok"] += 1
        self.log.info("Relay {relay_url} AUTH accepted", relay_url=self.url)
        closed, self._auth_closed = self._auth_closed, set()
        for sub_id in sorted(closed):
            if sub_id in self._wanted:
                self._req(sub_id, self._wanted[sub_id], self._since)
        waiting, self._auth_retry = self._auth_retry, {}
        for queued_at, event in waiting.values():
            if not self._send_event(event, queued_at):
                self._queue.append((queued_at, event))

    # -- us -> relay ------------------------------------------------------------------------

    def _send(self, payload: bytes) -> bool:
        return self._connection is not None and self._connection.send_text(payload)

    def _req(self, sub_id: str, flt: Filter, since: int) -> None:
        if self._send(messages.encode_req(sub_id, [with_since(flt, since)])):
            self._active[sub_id] = flt
            self._eosed.discard(sub_id)
            self._arm_eose_timer()

    def _send_event(self, event: dict[str, Any], queued_at: float) -> bool:
        if not self._send(messages.encode_event(event)):
            return False
        self._unacked[event["id"]] = (queued_at, event)
        if len(self._unacked) > self._options.publish_queue_limit:
            # A relay that never answers OK must not grow this without bound.
            self._unacked.popitem(last=False)
        return True

    def _trim_queue(self) -> None:
        """Drop the oldest queued events beyond ``publish_queue_limit``, reporting each one."""
        while len(self._queue) > self._options.publish_queue_limit:
            _, dropped = self._queue.popleft()
            self.counters["queue_dropped"] += 1
            self._warn_limited(
                "queue_dropped", "Relay {relay_url} publish queue full; dropped the oldest event"
            )
            self._hub.relay_publish_result(self.url, dropped["id"], None)

    def _flush_queue(self, now: float) -> None:
        queued, self._queue = self._queue, deque()
        for enqueued_at, event in queued:
            if now - enqueued_at > self._options.publish_queue_max_age:
                self.counters["queue_expired"] += 1
                self._hub.relay_publish_result(self.url, event["id"], None)
            elif not self._send_event(event, enqueued_at):
                self._queue.append((enqueued_at, event))

    # -- bookkeeping ------------------------------------------------------------------------

    def _update_subscribed(self) -> None:
        subscribed = (
            self._connection is not None
            and bool(self._wanted)
            and set(self._wanted) == set(self._active) == self._eosed
        )
        if subscribed and not self._subscribed:
            self._cancel_eose_timer()
            self.log.info(
                "Relay {relay_url} subscribed (EOSE) with {count} subscriptions",
                relay_url=self.url,
                count=len(self._active),
            )
            self._subscribed = True
            self._hub.relay_notify("relay_subscribed", self.url)
        self._subscribed = subscribed

    def _cancel_timers(self) -> None:
        """Cancel the timers that belong to the current connection."""
        self._cancel_eose_timer()
        if self._resubscribe_timer is not None and self._resubscribe_timer.active():
            self._resubscribe_timer.cancel()
        self._resubscribe_timer = None

    def _arm_eose_timer(self) -> None:
        if self._eose_timer is None or not self._eose_timer.active():
            self._eose_timer = self._clock.callLater(self._options.eose_timeout, self._eose_overdue)

    def _cancel_eose_timer(self) -> None:
        if self._eose_timer is not None and self._eose_timer.active():
            self._eose_timer.cancel()
        self._eose_timer = None

    def _eose_overdue(self) -> None:
        self._eose_timer = None
        if self._connection is None or self._subscribed:
            return
        missing = set(self._active) - self._eosed
        if missing:
            self.counters["eose_timeout"] += 1
            self._warn_limited(
                "eose_timeout",
                "Relay {relay_url} sent no EOSE within {timeout} s for {count} subscriptions;"
                " live events are still handled",
                timeout=self._options.eose_timeout,
                count=len(missing),
            )

    def attempt_failed(self, reason: str) -> None:
        """A connection attempt failed before TCP (and TLS) was up: DNS, refused, timeout."""
        self._last_failure = _short(reason)

    def _retry_scheduled(self, failures: int, delay: float) -> None:
        if self._stopping:
            return  # the pool stops the ClientService on the next tick, cancelling this retry
        self.reconnects += 1
        failure, self._last_failure = self._last_failure, None
        self.log.info(
            "Relay {relay_url} reconnect in {delay:.1f} s (attempt {attempt})"
            + (" after: {failure}" if failure else ""),
            relay_url=self.url,
            delay=delay,
            attempt=failures,
            failure=failure,
        )
        self._hub.relay_notify("relay_reconnect", self.url)

    def _misbehaved(self, kind: str, reason: str) -> None:
        self.counters[kind] += 1
        self._notify_message(kind)
        self._warn_limited(
            kind, "Relay {relay_url} sent an unusable message: {reason}", reason=reason
        )

    def _notify_message(self, kind: str) -> None:
        """Tell observers about one received frame; ``kind`` is one of RECEIVED_KINDS."""
        self._hub.relay_notify("relay_message", self.url, kind)

    def _warn_limited(self, key: str, fmt: str, **fields: object) -> None:
        suppressed = self._log_limiter.allow(key)
        if suppressed is None:
            return
        if suppressed:
            fmt += " ({suppressed} similar lines suppressed)"
        self.log.warn(fmt, relay_url=self.url, suppressed=suppressed, **fields)
