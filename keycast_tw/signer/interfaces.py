"""The persistence the NIP-46 engine needs, as a typing Protocol.

The engine keeps no durable state of its own: sessions and replay protection must survive a
restart, so it awaits these calls. keycast_tw.signer.memory implements them in memory (tests,
benchmarks); keycast_tw.store implements them on SQLite.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from keycast_tw.signer.model import ActivityRecord


class SignerStore(Protocol):
    def claim_request(self, event_id: str, created_at: int) -> Deferred[bool]:
        """Record that request ``event_id`` is being handled; False if it was claimed before.

        This is what makes handling at-most-once across relays and across restarts: the engine
        executes a request only after its claim fired True. Claims older than the created_at
        window may be pruned.
        """

    def save_session(self, authorization_id: int, client_pubkey: str, now: int) -> Deferred[None]:
        """Persist that ``client_pubkey`` redeemed the connect secret (or reconnected)."""

    def end_session(self, authorization_id: int, client_pubkey: str, now: int) -> Deferred[None]:
        """Persist a ``logout``: the session stays counted for max_uses but is no longer active."""

    def record_activity(self, record: ActivityRecord) -> None:
        """Queue an activity-log row. Fire and forget: must never raise or block."""
