"""The in-memory registry routes by bunker pubkey and reports pubkey-set changes once per batch."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.model import OAUTH, Authorization, PlainKey
from keycast_tw.signer.registry import Registry


def _auth(authorization_id: int, *, kind: str = "regular") -> Authorization:
    user = PlainKey(SecretKey.generate())
    return Authorization(
        id=authorization_id,
        bunker_key=PlainKey(SecretKey.generate()),
        user_key=user,
        secret_hash=None,
        kind=kind,
    )


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = Registry()
        self.changes: list[tuple[frozenset[str], frozenset[str]]] = []
        self.registry.add_listener(lambda added, removed: self.changes.append((added, removed)))

    def test_get_by_pubkey_and_id(self) -> None:
        """An added authorization is found by its bunker pubkey and by its id."""
        auth = _auth(1)
        self.registry.put(auth)
        self.assertIs(self.registry.get(auth.bunker_pubkey), auth)
        self.assertIs(self.registry.by_id(1), auth)
        self.assertIsNone(self.registry.get("00" * 32))

    def test_batch_notifies_once(self) -> None:
        """A reload batch of many additions produces a single listener call."""
        auths = [_auth(i) for i in range(5)]
        self.registry.update(auths, [])
        self.assertEqual(self.changes, [(frozenset(a.bunker_pubkey for a in auths), frozenset())])

    def test_replacing_same_pubkey_is_no_change(self) -> None:
        """Re-putting an authorization under the same pubkey (e.g. a policy change) is silent."""
        auth = _auth(1)
        self.registry.put(auth)
        self.changes.clear()
        self.registry.put(auth)
        self.assertEqual(self.changes, [])
        self.assertEqual(len(self.registry), 1)

    def test_remove_reports_removed_pubkey(self) -> None:
        """Revoking removes the pubkey from routing and tells the listeners."""
        auth = _auth(7)
        self.registry.put(auth)
        self.changes.clear()
        self.assertIs(self.registry.remove(7), auth)
        self.assertIsNone(self.registry.get(auth.bunker_pubkey))
        self.assertEqual(self.changes, [(frozenset(), frozenset({auth.bunker_pubkey}))])
        self.assertIsNone(self.registry.remove(7))

    def test_replace_all_and_counts(self) -> None:
        """A full reconcile swaps the content and reports the difference; counts go by kind."""
        old = _auth(1)
        self.registry.put(old)
        self.changes.clear()
        new = [_auth(2), _auth(3, kind=OAUTH)]
        self.registry.replace_all(new)
        self.assertEqual(
            self.changes,
            [(frozenset(a.bunker_pubkey for a in new), frozenset({old.bunker_pubkey}))],
        )
        self.assertEqual(self.registry.counts(), {"regular": 1, "oauth": 1})
        self.assertEqual(self.registry.bunker_pubkeys(), frozenset(a.bunker_pubkey for a in new))

    def test_accept_filters_shards(self) -> None:
        """Authorizations the accept predicate rejects are never indexed nor announced."""
        kept, other = _auth(1), _auth(2)
        registry = Registry(accept=lambda auth: auth.id == 1)
        changes: list[tuple[frozenset[str], frozenset[str]]] = []
        registry.add_listener(lambda added, removed: changes.append((added, removed)))
        registry.update([kept, other], [])
        self.assertIsNone(registry.get(other.bunker_pubkey))
        self.assertEqual(changes, [(frozenset({kept.bunker_pubkey}), frozenset())])
        registry.replace_all([kept, other])
        self.assertEqual(registry.bunker_pubkeys(), frozenset({kept.bunker_pubkey}))
        self.assertEqual(registry.counts(), {"regular": 1})

    def test_counts_follow_changes(self) -> None:
        """Kind counts stay right through adds, replacements and removals."""
        self.registry.update([_auth(1), _auth(2, kind=OAUTH), _auth(3, kind=OAUTH)], [])
        self.registry.update([_auth(3)], [2])
        self.assertEqual(self.registry.counts(), {"regular": 2})

    def test_refused_authorizations_are_held_but_not_counted(self) -> None:
        """A revoked or expired authorization still routes (for its error reply) but is not
        counted as loaded; re-adding it after it expires re-files it."""
        now = [100.0]
        registry = Registry(now=lambda: now[0])
        revoked, expiring = _auth(1), _auth(2)
        revoked.revoked_at = 50
        expiring.expires_at = 150
        registry.update([revoked, expiring], [])
        self.assertIs(registry.get(revoked.bunker_pubkey), revoked)
        self.assertEqual((registry.counts(), registry.refusing_count()), ({"regular": 1}, 1))
        now[0] = 200.0
        registry.put(expiring)
        self.assertEqual((registry.counts(), registry.refusing_count()), ({}, 2))
        registry.update([], [1, 2])
        self.assertEqual((len(registry), registry.refusing_count()), (0, 0))
