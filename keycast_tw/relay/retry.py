"""A WebSocket-aware retry policy for ``ClientService``.

``ClientService`` resets its failure counter when TCP connects. For a WebSocket relay that is
too early: a relay (or a proxy in front of it) that accepts TCP and then answers 429/503 would be
re-dialled at the initial delay forever. So this policy keeps its own count of consecutive
failures, ignoring ``ClientService``'s ``attempt`` argument, and only the relay's owner resets it,
when a WebSocket connection that stayed up for a while ends (an upgrade that succeeds and is
hung up at once, or a relay that keeps sending oversize frames, keeps backing off).
``ClientService`` consults the policy exactly once per failed or lost connection, which is what
makes counting calls correct. No ``prepareConnection`` is used: waiting on ``is_open`` there
wedges the service when a relay drops before the handshake (see the style anchors, section 2.1).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import backoffPolicy


class WebSocketRetryPolicy:
    """``retryPolicy`` callable: capped exponential backoff with jitter, reset by the owner."""

    def __init__(
        self,
        *,
        initial_delay: float,
        max_delay: float,
        factor: float,
        jitter: Callable[[], float],
        on_retry: Callable[[int, float], None] = lambda failures, delay: None,
    ) -> None:
        self._backoff = backoffPolicy(
            initialDelay=initial_delay, maxDelay=max_delay, factor=factor, jitter=jitter
        )
        self._on_retry = on_retry
        self.failures = 0

    def __call__(self, attempt: int) -> float:
        self.failures += 1
        delay = self._backoff(self.failures - 1)
        self._on_retry(self.failures, delay)
        return delay

    def reset(self) -> None:
        """Start the backoff over: the last connection was a healthy one."""
        self.failures = 0
