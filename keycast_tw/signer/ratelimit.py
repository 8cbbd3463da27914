"""Per-client token buckets, so one chatty or hostile client cannot monopolise the signer.

Pure bookkeeping on the reactor thread: the caller passes the current time, which comes from the
engine's injected clock, so tests drive it with task.Clock. The number of tracked clients is
bounded (least recently seen first out): a flood of throwaway client keys costs memory only up to
the bound, and a forgotten client simply starts again with a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """Token bucket per key: ``rate`` tokens per second, at most ``burst`` stored.

    A ``rate`` of 0 or less disables limiting (every request is allowed).
    """

    __slots__ = ("_buckets", "_burst", "_max_keys", "_rate")

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if burst < 1 and rate > 0:
            raise ValueError("burst must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        # key -> [tokens, time of last refill]; lists so an update is one item store.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        if self._rate <= 0:
            return True
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self._max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self._burst, now]
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(self._burst, bucket[0] + elapsed * self._rate)
                bucket[1] = now
        if bucket[0] >= 1:
            bucket[0] -= 1
            return True
        return False

    def __len__(self) -> int:
        return len(self._buckets)
