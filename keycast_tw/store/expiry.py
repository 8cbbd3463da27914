"""Finds authorizations that expired since they were loaded, without scanning the registry.

The engine already refuses an expired authorization per request (Authorization.is_live); this
sweep removes it from the registry so the relay subscription stops listing its bunker pubkey.
A heap keeps each sweep O(expired · log n) instead of O(registry) on a million entries.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from keycast_tw.signer.model import Authorization
from keycast_tw.signer.registry import Registry


class ExpiryQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def reset(self, auths: Iterable[Authorization]) -> None:
        """Start over from a full load (heapify is O(n))."""
        self._heap = [(a.expires_at, a.id) for a in auths if a.expires_at is not None]
        heapq.heapify(self._heap)

    def track(self, auths: Iterable[Authorization]) -> None:
        for auth in auths:
            if auth.expires_at is not None:
                heapq.heappush(self._heap, (auth.expires_at, auth.id))

    def due(self, registry: Registry, now: float) -> list[int]:
        """Ids in ``registry`` whose expiry has passed; stale heap entries are dropped."""
        expired = []
        while self._heap and self._heap[0][0] <= now:
            expires_at, authorization_id = heapq.heappop(self._heap)
            auth = registry.by_id(authorization_id)
            if auth is not None and auth.expires_at == expires_at and not auth.is_live(now):
                expired.append(authorization_id)
        return expired
