"""Small guards that keep one misbehaving relay from flooding the logs or the engine."""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime


class LogLimiter:
    """Allow one log line per key and interval, and say how many were suppressed meanwhile.

    A relay that sends garbage at wire speed would otherwise write one line per frame.
    """

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """Return the number of suppressed lines if this one may be logged, else None."""
        now = self._clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``rate`` banked (a 1 s burst)."""

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self._clock = clock
        self._rate = rate
        self._tokens = rate
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """Consume one token; False when the bucket is empty (the caller drops the work)."""
        now = self._clock.seconds()
        self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
