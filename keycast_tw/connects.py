"""Sending the connect responses of the nostrconnect:// flow, once the daemon can hear the client.

``keycast connect`` queues a response in the database (keycast_tw.store.connects); the store
hands the queued ones to ``ConnectResponder.offer`` on the reload that brings their
authorization (and at every full load, so a restart sends again what was not sent). A response
goes out only when a relay subscription covers the new bunker key: the client sends its first
request the moment it reads the response, and a relay that does not store ephemeral events
would lose a request sent before our REQ. It is deleted from the database once a relay accepted
it (at least once: a crash in between sends it again, and clients ignore a repeat), and given
up after ``max_age`` seconds, when no client is waiting any more. Both the readiness check and
the acceptance count only the authorization's relays (the URI's relays the daemon uses): a
response accepted elsewhere never reaches the client.

Each entry holds the client's secret in memory, so none outlives ``max_age`` or the service:
expiry timers run only while the service runs, and offers that arrive after the stop (the store
stops last) are not taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from keycast_tw.signer.model import Authorization
from keycast_tw.signer.registry import Registry
from keycast_tw.store.connects import MAX_PENDING_AGE, PendingConnect

WAITING = "waiting"  # for a subscription on one of its relays
BUILDING = "building"  # signing in the crypto pool
PUBLISHED = "published"  # waiting for the relays' verdict
FORGETTING = "forgetting"  # row being deleted: neither sent again nor expired meanwhile

#: First delay before sending again a response no relay accepted; doubles up to the maximum,
#: so a relay that rejects it for good costs a handful of signatures before ``max_age``.
RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 120.0


@dataclass(slots=True, repr=False)
class _Entry:
    connect: PendingConnect
    timer: IDelayedCall | None = None  # expiry, armed while the service runs
    state: str = WAITING
    failures: int = 0  # publications no relay of the authorization accepted
    retry: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"_Entry({self.connect!r}, state={self.state!r})"


class ConnectResponder(Service):
    """Relay-pool observer (``relay_subscribed``, ``pubkeys_applied``, ``response_published``)
    that sends each offered connect response once the daemon listens for its bunker key."""

    log = Logger()

    def __init__(
        self,
        *,
        registry: Registry,
        build: Callable[[Authorization, str, str], Deferred[dict[str, Any]]],
        publish: Callable[[dict[str, Any], tuple[str, ...]], None],
        listening: Callable[[str, tuple[str, ...]], bool],
        forget: Callable[[int], Deferred[None]],
        clock: IReactorTime,
        max_age: int = MAX_PENDING_AGE,
    ) -> None:
        self.setName("connect-responses")  # type: ignore[no-untyped-call]
        self._registry = registry
        self._build = build
        self._publish = publish
        self._listening = listening
        self._forget = forget
        self._clock = clock
        self._max_age = max_age
        self._entries: dict[int, _Entry] = {}
        self._by_event: dict[str, int] = {}
        self._stopped = False

    @property
    def pending(self) -> int:
        """Responses offered and not yet sent (or given up)."""
        return len(self._entries)

    def offer(self, connects: list[PendingConnect]) -> None:
        """Take responses read from the database; those already here, for authorizations this
        daemon does not serve (another shard) or too old to matter are left alone. Offers that
        come before the start are kept (the start arms their expiry), after the stop dropped."""
        if self._stopped:
            return
        now = self._clock.seconds()
        for connect in connects:
            authorization_id = connect.authorization_id
            if authorization_id in self._entries or self._registry.by_id(authorization_id) is None:
                continue
            if connect.created_at + self._max_age <= now:
                continue  # the next read deletes the row as stale, with its log line
            entry = self._entries[authorization_id] = _Entry(connect)
            if self.running:
                self._arm(authorization_id, entry)
        self.send_ready()

    def send_ready(self) -> None:
        """Send every waiting response whose bunker key a relay subscription covers."""
        if not self.running:
            return
        for authorization_id, entry in list(self._entries.items()):
            if entry.state == WAITING:
                self._try(authorization_id, entry)

    # -- relay pool observer hooks -----------------------------------------------------------

    def relay_subscribed(self, url: str) -> None:
        self.send_ready()

    def pubkeys_applied(self) -> None:
        self.send_ready()

    def response_published(self, event_id: str, accepted_by: int) -> None:
        authorization_id = self._by_event.pop(event_id, None)
        entry = self._entries.get(authorization_id) if authorization_id is not None else None
        if authorization_id is None or entry is None:
            return
        if not accepted_by:
            # Rejected, or no verdict in time (a relay that is slow or just went down): try
            # again at the next subscription, or after a growing delay if none comes.
            entry.state = WAITING
            entry.failures += 1
            delay = min(RETRY_DELAY * 2 ** (entry.failures - 1), MAX_RETRY_DELAY)
            entry.retry = self._clock.callLater(delay, self._retry, authorization_id, entry)
            self.log.warn(
                "No relay of authorization {authorization} accepted its connect response;"
                " sending it again in {seconds}s or when a relay subscribes",
                authorization=authorization_id,
                seconds=delay,
            )
            return
        self.log.info(
            "Sent the connect response of authorization {authorization} to client {client}",
            authorization=authorization_id,
            client=entry.connect.client_pubkey[:8] + "…",
        )
        self._done(authorization_id)

    # -- internals ---------------------------------------------------------------------------

    def _try(self, authorization_id: int, entry: _Entry) -> None:
        auth = self._registry.by_id(authorization_id)
        if auth is None or not auth.is_live(self._clock.seconds()):
            self.log.warn(
                "Not sending the connect response of authorization {authorization}:"
                " it is no longer served (revoked or expired)",
                authorization=authorization_id,
            )
            self._done(authorization_id)
            return
        if not self._listening(auth.bunker_pubkey, auth.relays):
            return
        if entry.retry is not None and entry.retry.active():
            entry.retry.cancel()  # a subscription came first
        entry.retry = None
        entry.state = BUILDING
        connect = entry.connect
        d = self._build(auth, connect.client_pubkey, connect.secret)
        d.addCallback(self._built, authorization_id, entry)
        d.addErrback(self._build_failed, authorization_id, entry)

    def _built(self, event: dict[str, Any], authorization_id: int, entry: _Entry) -> None:
        if self._entries.get(authorization_id) is not entry or not self.running:
            return  # given up or stopped meanwhile
        auth = self._registry.by_id(authorization_id)
        if auth is None or not auth.is_live(self._clock.seconds()):
            entry.state = WAITING  # revoked while signing: the next try drops it, with its log
            self._try(authorization_id, entry)
            return
        entry.state = PUBLISHED
        self._by_event[event["id"]] = authorization_id
        self._publish(event, auth.relays)

    def _build_failed(self, failure: Failure, authorization_id: int, entry: _Entry) -> None:
        # The bunker key does not decrypt: retrying cannot help. The row stays until it is
        # stale, so a restarted daemon (after a key problem is fixed) can still send it.
        self.log.error(
            "Cannot build the connect response of authorization {authorization}: {error}",
            authorization=authorization_id,
            error=failure.getErrorMessage(),
        )
        if self._entries.get(authorization_id) is entry:
            self._disarm(entry)
            del self._entries[authorization_id]

    def _expire(self, authorization_id: int) -> None:
        entry = self._entries.get(authorization_id)
        if entry is None:
            return
        self.log.warn(
            "Dropped the connect response of authorization {authorization}: not sent within"
            " {seconds}s; pair the client again with `keycast connect`",
            authorization=authorization_id,
            seconds=self._max_age,
        )
        self._done(authorization_id)

    def _done(self, authorization_id: int) -> None:
        """Delete the row, then forget the entry: a reload that reads the table meanwhile
        finds the entry here and does not send the response again."""
        entry = self._entries.get(authorization_id)
        if entry is None or entry.state == FORGETTING:
            return
        self._disarm(entry)
        for event_id in [e for e, a in self._by_event.items() if a == authorization_id]:
            del self._by_event[event_id]

        def forget(result: object) -> None:
            if self._entries.get(authorization_id) is entry:
                del self._entries[authorization_id]
            if isinstance(result, Failure):
                self.log.error(
                    "Could not delete the queued connect response of authorization"
                    " {authorization}: {error}",
                    authorization=authorization_id,
                    error=result.getErrorMessage(),
                )

        entry.state = FORGETTING
        self._forget(authorization_id).addBoth(forget)

    def _retry(self, authorization_id: int, entry: _Entry) -> None:
        entry.retry = None
        if self._entries.get(authorization_id) is entry and entry.state == WAITING:
            self._try(authorization_id, entry)

    def _arm(self, authorization_id: int, entry: _Entry) -> None:
        left = entry.connect.created_at + self._max_age - self._clock.seconds()
        entry.timer = self._clock.callLater(max(left, 0), self._expire, authorization_id)

    @staticmethod
    def _disarm(entry: _Entry) -> None:
        for timer in (entry.timer, entry.retry):
            if timer is not None and timer.active():
                timer.cancel()
        entry.timer = entry.retry = None

    def startService(self) -> None:
        self._stopped = False
        super().startService()  # type: ignore[no-untyped-call]
        for authorization_id, entry in list(self._entries.items()):
            if entry.timer is None:
                self._arm(authorization_id, entry)
        self.send_ready()

    def stopService(self) -> None:
        """Cancel every timer and forget every secret; the rows stay for the next start."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        for entry in self._entries.values():
            self._disarm(entry)
        self._entries.clear()
        self._by_event.clear()
