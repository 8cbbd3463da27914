"""The dispatcher bounds in-flight requests, publishes responses and drains on stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.dispatch import Dispatcher


@dataclass
class FakeOutcome:
    response: dict[str, Any] | None
    method: str | None
    outcome: str


class FakeEngine:
    def __init__(self) -> None:
        self.pending: list[Deferred[FakeOutcome]] = []

    def handle_event(self, event: Any) -> Deferred[FakeOutcome]:
        d: Deferred[FakeOutcome] = Deferred()
        self.pending.append(d)
        return d


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str, float]] = []

    def request_handled(self, method: str | None, outcome: str, seconds: float) -> None:
        self.calls.append((method, outcome, seconds))


class DispatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.engine = FakeEngine()
        self.published: list[dict[str, Any]] = []
        self.observer = RecordingObserver()
        self.dispatcher = Dispatcher(
            self.engine,
            self.published.append,
            clock=self.clock,
            observer=self.observer,
            max_inflight=2,
        )

    def test_response_is_published_and_timed(self) -> None:
        """An engine response is published and the request's latency is reported."""
        self.dispatcher.on_event("ws://r", {"id": "e1"})
        self.clock.advance(0.25)
        self.engine.pending[0].callback(FakeOutcome({"id": "resp"}, "ping", "ok"))
        self.assertEqual(self.published, [{"id": "resp"}])
        self.assertEqual(self.observer.calls, [("ping", "ok", 0.25)])
        self.assertEqual(self.dispatcher.inflight, 0)
        self.assertEqual(self.dispatcher.last_request_at, 0.25)

    def test_ignored_events_do_not_count_as_activity(self) -> None:
        """Foreign or stale events publish nothing and leave last_request_at alone."""
        self.dispatcher.on_event("ws://r", {})
        self.engine.pending[0].callback(FakeOutcome(None, None, "ignored"))
        self.assertEqual(self.published, [])
        self.assertIsNone(self.dispatcher.last_request_at)

    def test_overload_is_refused_not_queued(self) -> None:
        """Beyond max_inflight an event is refused and counted instead of piling up."""
        taken = [self.dispatcher.on_event("ws://r", {}) for _ in range(3)]
        self.assertEqual(taken, [True, True, False])
        self.assertEqual(len(self.engine.pending), 2)
        self.assertEqual(self.observer.calls, [(None, "overloaded", 0.0)])

    def test_engine_failure_is_logged_and_survived(self) -> None:
        """An unexpected engine error is logged once and the dispatcher keeps working."""

        class BrokenEngine:
            def handle_event(self, event: Any) -> Deferred[FakeOutcome]:
                return fail(RuntimeError("bug"))

        dispatcher = Dispatcher(
            BrokenEngine(), self.published.append, clock=self.clock, observer=self.observer
        )
        dispatcher.on_event("ws://r", {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.observer.calls, [(None, "failed", 0.0)])
        self.assertEqual(dispatcher.inflight, 0)

    def test_drain_waits_for_inflight_then_refuses(self) -> None:
        """Drain fires once in-flight work is done; new events are refused meanwhile."""
        self.dispatcher.on_event("ws://r", {})
        drained = self.dispatcher.drain(5.0)
        self.assertNoResult(drained)
        self.assertFalse(self.dispatcher.on_event("ws://r", {}))
        self.assertEqual(len(self.engine.pending), 1)
        self.engine.pending[0].callback(FakeOutcome({"id": "r"}, "sign_event", "ok"))
        self.assertIs(self.successResultOf(drained), True)
        self.assertEqual(self.published, [{"id": "r"}])

    def test_drain_times_out(self) -> None:
        """A request that never finishes cannot hold the shutdown beyond the timeout."""
        self.dispatcher.on_event("ws://r", {})
        drained = self.dispatcher.drain(5.0)
        self.clock.advance(5.0)
        self.assertIs(self.successResultOf(drained), False)

    def test_drain_when_idle(self) -> None:
        """Draining an idle dispatcher completes at once."""
        self.assertIs(self.successResultOf(self.dispatcher.drain(5.0)), True)
