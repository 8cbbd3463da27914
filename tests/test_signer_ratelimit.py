"""keycast_tw.signer.ratelimit: per-client token buckets."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.ratelimit import RateLimiter


class RateLimiterTests(SynchronousTestCase):
    def test_burst_then_refusal(self) -> None:
        """A client may send ``burst`` requests at once, then is refused."""
        limiter = RateLimiter(1.0, 3)
        self.assertEqual([limiter.allow("a", 100.0) for _ in range(4)], [True, True, True, False])

    def test_refill_over_time(self) -> None:
        """Tokens come back at ``rate`` per second, capped at ``burst``."""
        limiter = RateLimiter(2.0, 2)
        self.assertTrue(limiter.allow("a", 0.0))
        self.assertTrue(limiter.allow("a", 0.0))
        self.assertFalse(limiter.allow("a", 0.0))
        self.assertTrue(limiter.allow("a", 0.5))
        self.assertFalse(limiter.allow("a", 0.5))
        self.assertEqual([limiter.allow("a", 100.0) for _ in range(3)], [True, True, False])

    def test_clients_are_independent(self) -> None:
        """One client's empty bucket does not affect another."""
        limiter = RateLimiter(1.0, 1)
        self.assertTrue(limiter.allow("a", 0.0))
        self.assertFalse(limiter.allow("a", 0.0))
        self.assertTrue(limiter.allow("b", 0.0))

    def test_tracked_clients_are_bounded(self) -> None:
        """The least recently seen client is forgotten when the bound is reached."""
        limiter = RateLimiter(1.0, 1, max_keys=2)
        limiter.allow("a", 0.0)
        limiter.allow("b", 0.0)
        limiter.allow("a", 0.0)
        limiter.allow("c", 0.0)
        self.assertEqual(len(limiter), 2)
        self.assertTrue(limiter.allow("b", 0.0))  # forgotten, so a fresh bucket
        self.assertFalse(limiter.allow("c", 0.0))

    def test_zero_rate_disables(self) -> None:
        """A rate of zero turns limiting off."""
        limiter = RateLimiter(0, 0)
        self.assertTrue(all(limiter.allow("a", 0.0) for _ in range(1000)))

    def test_invalid_settings(self) -> None:
        """A burst below one or a non-positive bound is a configuration error."""
        self.assertRaises(ValueError, RateLimiter, 1.0, 0.5)
        self.assertRaises(ValueError, RateLimiter, 1.0, 1, max_keys=0)
