"""keycast_tw.signer.memory: the in-memory SignerStore."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.memory import MemoryStore
from keycast_tw.signer.model import ActivityRecord


class MemoryStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(10_000)
        self.store = MemoryStore(now=self.clock.seconds, claim_window=600, max_activity=3)

    def test_claim_once(self) -> None:
        """An event id can be claimed once."""
        self.assertTrue(self.successResultOf(self.store.claim_request("e1", 10_000)))
        self.assertFalse(self.successResultOf(self.store.claim_request("e1", 10_000)))
        self.assertTrue(self.successResultOf(self.store.claim_request("e2", 10_000)))

    def test_claims_pruned_after_window(self) -> None:
        """Claims older than the window are forgotten; recent ones are kept."""
        self.successResultOf(self.store.claim_request("old", 10_000))
        self.clock.advance(500)
        self.successResultOf(self.store.claim_request("recent", 10_500))
        self.clock.advance(400)
        self.successResultOf(self.store.claim_request("new", 10_900))
        self.assertEqual(self.store.claimed(), 2)
        self.assertFalse(self.successResultOf(self.store.claim_request("recent", 10_500)))

    def test_sessions(self) -> None:
        """save_session and end_session record the session state per authorization."""
        self.successResultOf(self.store.save_session(1, "c", 1))
        self.successResultOf(self.store.save_session(2, "c", 1))
        self.successResultOf(self.store.end_session(2, "c", 2))
        self.assertEqual(self.store.sessions, {(1, "c"): True, (2, "c"): False})

    def test_activity_bounded(self) -> None:
        """Only the most recent activity records are kept."""
        for n in range(5):
            self.store.record_activity(ActivityRecord(1, "c", "ping", "ok", n))
        self.assertEqual([record.created_at for record in self.store.activity], [2, 3, 4])
