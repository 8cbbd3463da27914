"""An in-memory SignerStore: for tests, benchmarks and a daemon run without a database.

It keeps exactly what the SQLite store persists, with the same semantics, so the engine's tests
exercise the contract the real store must meet: claims are at-most-once and are pruned once they
are older than the created_at window (an older request is refused by the window check anyway),
sessions are recorded per authorization, and the activity log is bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from keycast_tw.signer.model import ActivityRecord


class MemoryStore:
    """SignerStore in memory. ``now`` is only used to prune claims; inject the engine's clock.

    ``claim_window`` must be at least the engine's created_at window.
    """

    def __init__(
        self,
        *,
        now: Callable[[], float],
        claim_window: int = 600,
        max_activity: int = 10_000,
    ) -> None:
        self._now = now
        self._claim_window = claim_window
        self._claims: dict[str, int] = {}
        self._next_prune = 0.0
        #: (authorization id, client pubkey) -> active; what the store would reload at start.
        self.sessions: dict[tuple[int, str], bool] = {}
        #: the most recent activity records, oldest first.
        self.activity: deque[ActivityRecord] = deque(maxlen=max_activity)

    def claim_request(self, event_id: str, created_at: int) -> Deferred[bool]:
        now = self._now()
        if now >= self._next_prune:
            self._prune(now)
        if event_id in self._claims:
            return succeed(False)
        self._claims[event_id] = created_at
        return succeed(True)

    def save_session(self, authorization_id: int, client_pubkey: str, now: int) -> Deferred[None]:
        self.sessions[(authorization_id, client_pubkey)] = True
        return succeed(None)

    def end_session(self, authorization_id: int, client_pubkey: str, now: int) -> Deferred[None]:
        self.sessions[(authorization_id, client_pubkey)] = False
        return succeed(None)

    def record_activity(self, record: ActivityRecord) -> None:
        self.activity.append(record)

    def claimed(self) -> int:
        """How many claims are currently remembered (for tests of the pruning)."""
        return len(self._claims)

    def _prune(self, now: float) -> None:
        """Forget claims older than the window: a request that old fails the engine's window
        check before it is ever claimed. Runs at most once per window, so it is amortised."""
        horizon = now - self._claim_window
        self._claims = {
            event_id: created_at
            for event_id, created_at in self._claims.items()
            if created_at >= horizon
        }
        self._next_prune = now + self._claim_window
