"""Hands relay events to the NIP-46 engine and its responses back to the relays.

This is where the daemon bounds its work: at most ``max_inflight`` requests are in the engine at
once (the rest are refused and counted rather than queued without limit, the Rust original's
B17), and where a graceful stop waits for in-flight requests so their responses still go out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class Outcome(Protocol):
    """What the engine reports for one event (keycast_tw.signer.engine.Outcome)."""

    @property
    def response(self) -> dict[str, Any] | None: ...

    @property
    def method(self) -> str | None: ...

    @property
    def outcome(self) -> str: ...


class Engine(Protocol):
    def handle_event(self, event: Mapping[str, Any]) -> Deferred[Any]: ...


class RequestObserver(Protocol):
    """Metrics hook: told about every handled request and every refused one."""

    def request_handled(self, method: str | None, outcome: str, seconds: float) -> None: ...


class Dispatcher:
    log = Logger()

    def __init__(
        self,
        engine: Engine,
        publish: Callable[[dict[str, Any]], None],
        *,
        clock: IReactorTime,
        observer: RequestObserver,
        max_inflight: int = 256,
    ) -> None:
        self._engine = engine
        self._publish = publish
        self._clock = clock
        self._observer = observer
        self._max_inflight = max_inflight
        self._inflight = 0
        self._accepting = True
        self._idle_waiters: list[Deferred[None]] = []
        self.last_request_at: float | None = None

    @property
    def inflight(self) -> int:
        return self._inflight

    def on_event(self, relay_url: str, event: Mapping[str, Any]) -> bool:
        """Relay pool callback for each distinct kind-24133 event; never raises.

        False when the event is refused (draining, or too many in flight): the pool then
        forgets it, so the same request arriving from another relay later is taken.
        """
        if not self._accepting:
            return False
        if self._inflight >= self._max_inflight:
            self.log.warn(
                "Refusing NIP-46 event from {relay_url}: {inflight} requests in flight",
                relay_url=relay_url,
                inflight=self._inflight,
            )
            self._observer.request_handled(None, "overloaded", 0.0)
            return False
        self._inflight += 1
        started = self._clock.seconds()
        d = self._engine.handle_event(event)
        d.addCallback(self._handled, started)
        d.addErrback(self._failed, started)
        d.addBoth(self._done)
        return True

    def _handled(self, outcome: Outcome, started: float) -> None:
        response = outcome.response
        if response is not None:
            self._publish(response)
            self.log.info("Sent NIP-46 response", method=outcome.method)
        if outcome.outcome != "ignored":
            self.last_request_at = self._clock.seconds()
        self._observer.request_handled(
            outcome.method, outcome.outcome, self._clock.seconds() - started
        )

    def _failed(self, failure: Any, started: float) -> None:
        # The engine answers every request it can; reaching here is a bug, never a crash.
        self.log.failure("NIP-46 engine failed on an event", failure)
        self._observer.request_handled(None, "failed", self._clock.seconds() - started)

    def _done(self, _: object) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self, timeout: float) -> Deferred[bool]:
        """Stop taking events; fire True once in-flight requests are done, False on timeout."""
        self._accepting = False
        if self._inflight == 0:
            return succeed(True)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        result: Deferred[bool] = waiter.addCallback(lambda _: True)
        result.addTimeout(timeout, self._clock, onTimeoutCancel=lambda *_: False)
        return result
