"""When authorizations change state without a database change: expiry, and the end of refusal.

An authorization that expires (or is revoked) stays in the registry for a grace period so its
clients get an "authorization expired/revoked" error reply rather than silence; the engine checks
liveness per request. At ``expires_at`` the registry re-files it as refused (so the loaded-count
gauges drop); at the end of the grace it leaves the registry and the relay subscription. A heap
keeps each sweep O(due · log n) instead of O(registry) on a million entries.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from keycast_tw.signer.model import Authorization
from keycast_tw.signer.registry import Registry

_EXPIRE = 0
_DROP = 1


def refused_until(auth: Authorization, grace: int) -> int | None:
    """When a revoked or expiring authorization stops being answered at all."""
    ends = [t for t in (auth.revoked_at, auth.expires_at) if t is not None]
    return min(ends) + grace if ends else None


class ExpiryQueue:
    def __init__(self, grace: int) -> None:
        self._grace = grace
        self._heap: list[tuple[int, int, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def reset(self, auths: Iterable[Authorization]) -> None:
        """Start over from a full load (heapify is O(n))."""
        self._heap = [entry for auth in auths for entry in self._entries(auth)]
        heapq.heapify(self._heap)

    def track(self, auths: Iterable[Authorization]) -> None:
        for auth in auths:
            for entry in self._entries(auth):
                heapq.heappush(self._heap, entry)

    def _entries(self, auth: Authorization) -> Iterator[tuple[int, int, int]]:
        if auth.expires_at is not None:
            yield (auth.expires_at, auth.id, _EXPIRE)
        end = refused_until(auth, self._grace)
        if end is not None:
            yield (end, auth.id, _DROP)

    def due(self, registry: Registry, now: float) -> tuple[list[Authorization], list[int]]:
        """(authorizations that just expired, ids whose refusal period is over).

        Entries left behind by a reload that changed or removed the authorization are dropped.
        """
        expired: list[Authorization] = []
        dropped: list[int] = []
        while self._heap and self._heap[0][0] <= now:
            when, authorization_id, action = heapq.heappop(self._heap)
            auth = registry.by_id(authorization_id)
            if auth is None:
                continue
            if action == _EXPIRE and auth.expires_at == when:
                expired.append(auth)
            elif action == _DROP and refused_until(auth, self._grace) == when:
                dropped.append(authorization_id)
        return [auth for auth in expired if auth.id not in dropped], dropped
