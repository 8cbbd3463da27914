"""keycast_tw.signer.crypto: the crypto-runner seam and the bounded key cache."""

from __future__ import annotations

import threading

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.crypto import KeyCache, run_inline


class RunInlineTests(SynchronousTestCase):
    def test_result(self) -> None:
        """run_inline runs the function now, on this thread, and delivers its result."""
        thread = self.successResultOf(run_inline(threading.get_ident))
        self.assertEqual(thread, threading.get_ident())

    def test_exception(self) -> None:
        """An exception becomes a failed Deferred, not a raise."""
        failure = self.failureResultOf(run_inline(int, "x"), ValueError)
        self.assertIn("invalid literal", str(failure.value))


class KeyCacheTests(SynchronousTestCase):
    def test_least_recently_used_is_evicted(self) -> None:
        """At the bound, the entry used least recently goes first."""
        cache: KeyCache[str, bytes] = KeyCache(2)
        cache.put("a", b"1")
        cache.put("b", b"2")
        self.assertEqual(cache.get("a"), b"1")
        cache.put("c", b"3")
        self.assertIsNone(cache.get("b"))
        self.assertEqual(cache.get("a"), b"1")
        self.assertEqual(cache.get("c"), b"3")
        self.assertEqual(len(cache), 2)
        self.assertEqual((cache.hits, cache.misses), (3, 1))

    def test_put_existing_refreshes(self) -> None:
        """Putting a key again replaces its value without growing the cache."""
        cache: KeyCache[str, bytes] = KeyCache(2)
        cache.put("a", b"1")
        cache.put("a", b"2")
        self.assertEqual((len(cache), cache.get("a")), (1, b"2"))

    def test_zero_size_disables(self) -> None:
        """A cache of size 0 stores nothing."""
        cache: KeyCache[str, bytes] = KeyCache(0)
        cache.put("a", b"1")
        self.assertIsNone(cache.get("a"))
        self.assertRaises(ValueError, KeyCache, -1)

    def test_repr_hides_entries(self) -> None:
        """The repr never shows the cached key material."""
        cache: KeyCache[str, bytes] = KeyCache(2)
        cache.put("a", b"secret-material")
        self.assertNotIn("secret-material", repr(cache))
