"""The in-memory index of live authorizations, by bunker pubkey, that the engine routes on.

The store fills it at start and keeps it current on reload; the relay pool listens to it to keep
its subscriptions matching the set of bunker pubkeys. Only touched on the reactor thread.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from keycast_tw.signer.model import Authorization

PubkeySetListener = Callable[[frozenset[str], frozenset[str]], None]


class Registry:
    """Authorizations by bunker pubkey and by id.

    ``accept`` decides which authorizations this daemon serves at all: with ``--shard K/N`` the
    others are never indexed, so the engine cannot route to them and the relays never subscribe
    for them, whatever the loader hands over.

    Revoked or expired authorizations may be held too, for a while, so their clients get an
    error reply instead of silence; ``counts`` leaves them out (they are ``refusing_count``).
    Whether one is live is decided when it is added, with ``now``; the store re-adds an
    authorization when it expires.

    Same-key authorizations (bunker key == user key) are also remembered by pubkey when another
    shard serves them: their user key is a transport key, which the engine must know on every
    shard (see ``bunker_key_owner``). There are few of them, so this costs little memory.
    """

    def __init__(
        self,
        accept: Callable[[Authorization], bool] | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._by_pubkey: dict[str, Authorization] = {}
        self._by_id: dict[int, Authorization] = {}
        self._kinds: Counter[str] = Counter()
        self._refusing: set[int] = set()
        # Same-key authorizations handed over, served here or not: pubkey -> id, id -> pubkey.
        self._same_key: dict[str, int] = {}
        self._same_key_ids: dict[int, str] = {}
        self._now = now
        self._accept = accept
        self._listeners: list[PubkeySetListener] = []

    def get(self, bunker_pubkey: str) -> Authorization | None:
        """The authorization served under ``bunker_pubkey``, if we manage it."""
        return self._by_pubkey.get(bunker_pubkey)

    def bunker_key_owner(self, pubkey: str) -> int | None:
        """The id of an authorization whose bunker (transport) key is ``pubkey``, if any.

        Looks at the authorizations served here and at same-key ones served by any shard. When
        a user key is also a transport key, a third-party decrypt with that user key opens the
        transport traffic of that bunker, so the engine asks this before decrypting.
        """
        auth = self._by_pubkey.get(pubkey)
        if auth is not None:
            return auth.id
        return self._same_key.get(pubkey)

    def by_id(self, authorization_id: int) -> Authorization | None:
        return self._by_id.get(authorization_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Authorization]:
        return iter(list(self._by_id.values()))

    def bunker_pubkeys(self) -> frozenset[str]:
        return frozenset(self._by_pubkey)

    def counts(self) -> dict[str, int]:
        """Live authorizations by kind (regular, oauth); kept as they change, not counted."""
        return {kind: count for kind, count in self._kinds.items() if count}

    def refusing_count(self) -> int:
        """Revoked or expired authorizations still held to answer their clients with an error."""
        return len(self._refusing)

    def add_listener(self, listener: PubkeySetListener) -> None:
        """Call ``listener(added, removed)`` whenever the set of bunker pubkeys changes."""
        self._listeners.append(listener)

    def put(self, auth: Authorization) -> None:
        """Add ``auth`` or replace the authorization with the same id."""
        self.update([auth], [])

    def remove(self, authorization_id: int) -> Authorization | None:
        """Stop serving an authorization (revoked, expired, deleted); returns what was removed."""
        auth = self._by_id.get(authorization_id)
        self.update([], [authorization_id])
        return auth

    def update(self, upserts: Iterable[Authorization], removals: Iterable[int]) -> None:
        """Apply a batch of changes and notify listeners once, so a reload burst is one event.

        Costs O(changes), not O(registry): reload runs every half second on a million entries.
        """
        dropped: set[str] = set()
        for authorization_id in removals:
            dropped.update(self._drop(authorization_id))
        added: set[str] = set()
        for auth in upserts:
            dropped.update(self._drop(auth.id))
            self._remember_same_key(auth)
            if self._accept is None or self._accept(auth):
                self._add(auth)
                added.add(auth.bunker_pubkey)
        self._notify(frozenset(added - dropped), frozenset(dropped - added))

    def replace_all(self, auths: Iterable[Authorization]) -> None:
        """Swap the whole content (start-up load, periodic full reconcile)."""
        before = self._by_pubkey.keys()
        accept = self._accept
        auths = list(auths)
        by_id = {auth.id: auth for auth in auths if accept is None or accept(auth)}
        by_pubkey = {auth.bunker_pubkey: auth for auth in by_id.values()}
        # A comprehension, not a method call per authorization: this runs over a million.
        same_key = [
            (pubkey, auth.id)
            for auth in auths
            if (pubkey := auth.bunker_key.pubkey) == auth.user_key.pubkey
        ]
        self._same_key = dict(same_key)
        self._same_key_ids = {authorization_id: pubkey for pubkey, authorization_id in same_key}
        added = frozenset(by_pubkey.keys() - before) if self._listeners else frozenset()
        removed = frozenset(before - by_pubkey.keys()) if self._listeners else frozenset()
        self._by_id = by_id
        self._by_pubkey = by_pubkey
        now = self._now()
        self._refusing = {auth.id for auth in by_id.values() if not auth.is_live(now)}
        self._kinds = Counter(auth.kind for auth in by_id.values() if auth.id not in self._refusing)
        self._notify(added, removed)

    def _add(self, auth: Authorization) -> None:
        self._by_id[auth.id] = auth
        self._by_pubkey[auth.bunker_pubkey] = auth
        if auth.is_live(self._now()):
            self._kinds[auth.kind] += 1
        else:
            self._refusing.add(auth.id)

    def _remember_same_key(self, auth: Authorization) -> None:
        pubkey = auth.bunker_pubkey
        if pubkey == auth.user_pubkey:
            self._same_key[pubkey] = auth.id
            self._same_key_ids[auth.id] = pubkey

    def _drop(self, authorization_id: int) -> tuple[str, ...]:
        same_key = self._same_key_ids.pop(authorization_id, None)
        if same_key is not None and self._same_key.get(same_key) == authorization_id:
            del self._same_key[same_key]
        old = self._by_id.pop(authorization_id, None)
        if old is not None:
            if authorization_id in self._refusing:
                self._refusing.discard(authorization_id)
            else:
                self._kinds[old.kind] -= 1
        if old is not None and self._by_pubkey.get(old.bunker_pubkey) is old:
            del self._by_pubkey[old.bunker_pubkey]
            return (old.bunker_pubkey,)
        return ()

    def _notify(self, added: frozenset[str], removed: frozenset[str]) -> None:
        if added or removed:
            for listener in self._listeners:
                listener(added, removed)
