"""Building Authorization objects from rows: sharing, lazy keys, bad rows, incremental reload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.model import OAUTH, REGULAR, Authorization, KeyUnavailable, LazyKey
from keycast_tw.signer.registry import Registry
from keycast_tw.store.crypto import KIND_FILE, SecretCipher, record_key_info
from keycast_tw.store.expiry import ExpiryQueue
from keycast_tw.store.loader import AuthorizationLoader, MasterKeyRotated
from keycast_tw.store.rotation import rotate_master_key
from tests.test_store_fixtures import (
    NOW,
    add_authorization,
    add_policy,
    add_user_key,
    new_cipher,
    new_database,
)


class LoaderTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        _, self.conn = new_database(self.mktemp())
        self.cipher = new_cipher()
        self.key_id, self.user = add_user_key(self.conn, self.cipher, "alice")
        self.loader = AuthorizationLoader(self.cipher)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def errors(self) -> list[str]:
        return [formatEvent(e) for e in self.logged if e["log_level"] == LogLevel.error]


class FullLoadTests(LoaderTestBase):
    def test_builds_lazy_shared_objects(self) -> None:
        """Bunker keys are LazyKeys; user key, policy and relay tuples are shared objects."""
        policy = add_policy(self.conn, "p", [("allowed_kinds", '{"allowed_kinds": [1, 7]}')])
        first, pub1 = add_authorization(self.conn, self.cipher, self.key_id, policy_id=policy)
        second, _ = add_authorization(self.conn, self.cipher, self.key_id, policy_id=policy)
        result = self.loader.load_all(self.conn, NOW)
        self.assertEqual(result.skipped, 0)
        a, b = sorted(result.authorizations, key=lambda auth: auth.id)
        self.assertEqual((a.id, b.id), (first, second))
        self.assertIsInstance(a.bunker_key, LazyKey)
        self.assertEqual(a.bunker_pubkey, pub1)
        self.assertIs(a.user_key, b.user_key)
        self.assertIs(a.policy, b.policy)
        self.assertIs(a.relays, b.relays)
        self.assertEqual(a.relays, ("wss://relay.example",))
        assert a.policy is not None
        self.assertEqual(a.policy.permissions[0].config, {"allowed_kinds": [1, 7]})
        self.assertIsNone(a.sessions)
        self.assertIs(a.kind, REGULAR)
        self.assertEqual(a.user_key.secret_key().pubkey_hex, self.user.pubkey_hex)
        self.assertEqual(a.bunker_key.secret_key().pubkey_hex, pub1)

    def test_same_key_authorization(self) -> None:
        """NULL bunker secret: the bunker key is the user key source itself."""
        add_authorization(
            self.conn, self.cipher, self.key_id, same_key_pubkey=self.user.pubkey_hex, kind=OAUTH
        )
        (auth,) = self.loader.load_all(self.conn, NOW).authorizations
        self.assertIs(auth.bunker_key, auth.user_key)
        self.assertIs(auth.kind, OAUTH)

    def test_only_live_rows_and_sessions(self) -> None:
        """Rows revoked or expired longer than the refusal grace are not loaded; recent ones
        are, to be refused; sessions map client -> active."""
        grace = self.loader.refusal_grace
        live, _ = add_authorization(self.conn, self.cipher, self.key_id, expires_at=NOW + 10)
        expired, _ = add_authorization(self.conn, self.cipher, self.key_id, expires_at=NOW)
        revoked, _ = add_authorization(self.conn, self.cipher, self.key_id, revoked_at=NOW - 1)
        add_authorization(self.conn, self.cipher, self.key_id, expires_at=NOW - grace)
        add_authorization(self.conn, self.cipher, self.key_id, revoked_at=NOW - grace - 1)
        self.conn.executemany(
            "INSERT INTO client_sessions VALUES (?, ?, 1, 1, ?)",
            [(live, "c1", None), (live, "c2", 5)],
        )
        self.conn.commit()
        auths = {a.id: a for a in self.loader.load_all(self.conn, NOW).authorizations}
        self.assertEqual(sorted(auths), sorted([live, expired, revoked]))
        self.assertEqual([a.id for a in auths.values() if a.is_live(NOW)], [live])
        self.assertEqual(auths[live].sessions, {"c1": True, "c2": False})

    def test_bad_rows_skipped_and_named(self) -> None:
        """Bad relays JSON, bad policy config, wrong same-key pubkey: skipped with ERROR by id."""
        good, _ = add_authorization(self.conn, self.cipher, self.key_id)
        bad_relays, _ = add_authorization(self.conn, self.cipher, self.key_id, relays="[oops")
        not_list, _ = add_authorization(self.conn, self.cipher, self.key_id, relays='{"a": 1}')
        policy = add_policy(self.conn, "broken", [("content_filter", "not json")])
        bad_policy, _ = add_authorization(self.conn, self.cipher, self.key_id, policy_id=policy)
        wrong_same, _ = add_authorization(
            self.conn, self.cipher, self.key_id, same_key_pubkey="ab" * 32
        )
        result = self.loader.load_all(self.conn, NOW)
        self.assertEqual([a.id for a in result.authorizations], [good])
        self.assertEqual(result.skipped, 4)
        errors = self.errors()
        for auth_id in (bad_relays, not_list, bad_policy, wrong_same):
            self.assertTrue(
                any(line.startswith(f"Skipping authorization {auth_id}:") for line in errors)
            )

    def test_undecryptable_key_is_lazy(self) -> None:
        """A blob under another key loads fine and fails only on use, as KeyUnavailable."""
        add_authorization(self.conn, new_cipher(), self.key_id)
        (auth,) = self.loader.load_all(self.conn, NOW).authorizations
        with self.assertRaises(KeyUnavailable):
            auth.bunker_key.secret_key()


class ReloadTests(LoaderTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.auth_id, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.seq = self.loader.load_all(self.conn, NOW).seq

    def test_nothing_changed(self) -> None:
        """No change: same seq, no work."""
        self.assertEqual(self.loader.reload(self.conn, self.seq, NOW), (self.seq, [], []))

    def test_burst_of_inserts_fully_seen(self) -> None:
        """1,000 authorizations inserted between two polls all come back as upserts."""
        key_id, _ = add_user_key(self.conn, self.cipher, "bob")
        ids = {add_authorization(self.conn, self.cipher, key_id)[0] for _ in range(1000)}
        new_seq, upserts, removals = self.loader.reload(self.conn, self.seq, NOW)
        self.assertEqual({a.id for a in upserts}, ids)
        self.assertEqual(removals, [])
        self.assertEqual(self.loader.reload(self.conn, new_seq, NOW), (new_seq, [], []))

    def test_revoked_and_expired_are_refused_then_removed(self) -> None:
        """A revoke and an expiry are upserts the engine refuses; past the grace, removals."""
        other, _ = add_authorization(self.conn, self.cipher, self.key_id)
        seq = self.loader.reload(self.conn, self.seq, NOW).new_seq
        self.conn.execute(
            "UPDATE authorizations SET revoked_at = ? WHERE id = ?", (NOW, self.auth_id)
        )
        self.conn.execute("UPDATE authorizations SET expires_at = ? WHERE id = ?", (NOW, other))
        self.conn.commit()
        _, upserts, removals = self.loader.reload(self.conn, seq, NOW)
        self.assertEqual(sorted(a.id for a in upserts), sorted([self.auth_id, other]))
        self.assertEqual(removals, [])
        self.assertFalse(any(a.is_live(NOW) for a in upserts))
        late = NOW + self.loader.refusal_grace
        _, upserts, removals = self.loader.reload(self.conn, seq, late)
        self.assertEqual((upserts, sorted(removals)), ([], sorted([self.auth_id, other])))

    def test_policy_change_is_reread(self) -> None:
        """Changing a policy's permissions reloads its users with the new permissions."""
        policy = add_policy(self.conn, "p", [("allowed_kinds", '{"allowed_kinds": [1]}')])
        user, _ = add_authorization(self.conn, self.cipher, self.key_id, policy_id=policy)
        seq = self.loader.reload(self.conn, self.seq, NOW).new_seq
        self.conn.execute(
            "UPDATE policy_permissions SET config = '{\"allowed_kinds\": [7]}' WHERE policy_id = ?",
            (policy,),
        )
        self.conn.commit()
        _, upserts, _ = self.loader.reload(self.conn, seq, NOW)
        self.assertEqual([a.id for a in upserts], [user])
        assert upserts[0].policy is not None
        self.assertEqual(upserts[0].policy.permissions[0].config, {"allowed_kinds": [7]})

    def test_row_turned_bad_is_removed(self) -> None:
        """A row edited into something unservable is a removal, not a crash."""
        self.conn.execute("UPDATE authorizations SET relays = 'nope' WHERE id = ?", (self.auth_id,))
        self.conn.commit()
        _, upserts, removals = self.loader.reload(self.conn, self.seq, NOW)
        self.assertEqual((upserts, removals), ([], [self.auth_id]))
        self.assertEqual(self.loader.skipped, 1)

    def test_new_user_key_loaded(self) -> None:
        """An authorization for a user key created after the full load is served."""
        key_id, bob = add_user_key(self.conn, self.cipher, "bob")
        add_authorization(self.conn, self.cipher, key_id)
        _, (auth,), _ = self.loader.reload(self.conn, self.seq, NOW)
        self.assertEqual(auth.user_pubkey, bob.pubkey_hex)

    def test_user_key_shared_with_new_authorizations(self) -> None:
        """A new authorization of a loaded user shares the cached (maybe decrypted) user key."""
        (loaded,) = self.loader.load_all(self.conn, NOW).authorizations
        add_authorization(self.conn, self.cipher, self.key_id)
        _, (added,), _ = self.loader.reload(self.conn, self.seq, NOW)
        self.assertIs(added.user_key, loaded.user_key)

    def test_reused_user_key_id_gets_the_new_key(self) -> None:
        """SQLite gives a deleted user key's id to the next key: the authorization of the new
        key signs with the new key, not the deleted one cached under the same id."""
        bob_id, _ = add_user_key(self.conn, self.cipher, "bob")
        bobs, _ = add_authorization(self.conn, self.cipher, bob_id)
        seq = self.loader.reload(self.conn, self.seq, NOW).new_seq
        self.conn.execute("DELETE FROM authorizations WHERE id = ?", (bobs,))
        self.conn.execute("DELETE FROM user_keys WHERE id = ?", (bob_id,))
        self.conn.commit()
        carol_id, carol = add_user_key(self.conn, self.cipher, "carol")
        self.assertEqual(carol_id, bob_id)
        carols, _ = add_authorization(self.conn, self.cipher, carol_id)
        _, (auth,), _ = self.loader.reload(self.conn, seq, NOW)
        self.assertEqual(auth.id, carols)
        self.assertEqual(auth.user_pubkey, carol.pubkey_hex)
        self.assertEqual(auth.user_key.secret_key().pubkey_hex, carol.pubkey_hex)

    def test_deleted_user_key_not_served_from_cache(self) -> None:
        """A user key deleted by hand (foreign keys off, as in the sqlite3 shell) is gone for
        the changed rows that still name it."""
        self.conn.execute("PRAGMA foreign_keys = OFF")
        self.conn.execute("DELETE FROM user_keys WHERE id = ?", (self.key_id,))
        self.conn.execute("UPDATE authorizations SET label = 'x' WHERE id = ?", (self.auth_id,))
        self.conn.commit()
        _, upserts, removals = self.loader.reload(self.conn, self.seq, NOW)
        self.assertEqual((upserts, removals), ([], [self.auth_id]))
        self.assertIn(
            f"Skipping authorization {self.auth_id}: user key {self.key_id} does not exist",
            self.errors(),
        )


class RotatedKeyTests(LoaderTestBase):
    """The database re-keyed under the loader (`keycast rotate-master-key` while it runs)."""

    def setUp(self) -> None:
        super().setUp()
        record_key_info(self.conn, self.cipher, kind=KIND_FILE)
        self.auth_id, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.seq = self.loader.load_all(self.conn, NOW).seq
        self.new = new_cipher()
        rotate_master_key(self.conn, self.cipher, self.new)

    def test_refused_without_a_matching_key(self) -> None:
        """Without a candidate, or with one that does not match, nothing is built: the loader
        raises MasterKeyRotated and keeps its key."""
        for candidate in (None, new_cipher()):
            with self.assertRaises(MasterKeyRotated):
                self.loader.reload(self.conn, self.seq, NOW, candidate)
            with self.assertRaises(MasterKeyRotated):
                self.loader.load_all(self.conn, NOW, candidate)
        self.assertIs(self.loader.cipher, self.cipher)

    def test_matching_candidate_adopted(self) -> None:
        """The matching candidate becomes the loader's key; keys built from then on decrypt."""
        self.conn.execute("UPDATE authorizations SET label = 'x' WHERE id = ?", (self.auth_id,))
        self.conn.commit()
        _, (auth,), _ = self.loader.reload(self.conn, self.seq, NOW, self.new)
        self.assertIs(self.loader.cipher, self.new)
        self.assertEqual(auth.bunker_key.secret_key().pubkey_hex, auth.bunker_pubkey)
        (auth,) = self.loader.load_all(self.conn, NOW).authorizations
        self.assertEqual(auth.user_key.secret_key().pubkey_hex, self.user.pubkey_hex)


class WrongTypeTests(LoaderTestBase):
    """SQLite keeps whatever a hand edit writes: a wrong type costs its row, never the load."""

    def set_column(self, table: str, column: str, value: object, row_id: int) -> None:
        query = f"UPDATE {table} SET {column} = ? WHERE id = ?"  # noqa: S608
        self.conn.execute(query, (value, row_id))
        self.conn.commit()

    def assert_skipped(self, auth_id: int, reason: str) -> None:
        self.assertIn(f"Skipping authorization {auth_id}: {reason}", self.errors())

    def test_wrong_types_skipped_at_load(self) -> None:
        """Text dates and counts, a real date, text blobs and a user key with a text blob are
        each skipped with one ERROR line naming the row; the registry and expiry queue take the
        rest."""
        good, _ = add_authorization(self.conn, self.cipher, self.key_id, expires_at=NOW + 10)
        bob_id, _ = add_user_key(self.conn, self.cipher, "bob")
        self.conn.execute("PRAGMA foreign_keys = OFF")  # as in the sqlite3 shell
        cases = [
            ("authorizations", "expires_at", "2030-01-01", "expires_at is not an integer"),
            ("authorizations", "revoked_at", "yesterday", "revoked_at is not an integer"),
            ("authorizations", "expires_at", NOW + 0.5, "expires_at is not an integer"),
            ("authorizations", "max_uses", "many", "max_uses is not an integer"),
            ("authorizations", "policy_id", "p", "policy_id is not an integer"),
            ("authorizations", "bunker_secret_ciphertext", "oops",
             "bunker_secret_ciphertext is not a blob"),
            ("authorizations", "secret_hash", "oops", "secret_hash is not a blob"),
        ]  # fmt: skip
        bad = []
        for table, column, value, reason in cases:
            auth_id, _ = add_authorization(self.conn, self.cipher, self.key_id)
            self.set_column(table, column, value, auth_id)
            bad.append((auth_id, reason))
        bobs, _ = add_authorization(self.conn, self.cipher, bob_id)
        self.set_column("user_keys", "secret_ciphertext", "oops", bob_id)
        bad.append((bobs, f"user key {bob_id}: secret_ciphertext is not a blob"))
        result = self.loader.load_all(self.conn, NOW)
        self.assertEqual([a.id for a in result.authorizations], [good])
        self.assertEqual(result.skipped, len(bad))
        self.assertEqual(len(self.errors()), len(bad))
        for auth_id, reason in bad:
            self.assert_skipped(auth_id, reason)
        registry = Registry()
        registry.replace_all(result.authorizations)
        ExpiryQueue(grace=50).reset(result.authorizations)
        self.assertEqual(len(registry), 1)

    def test_malformed_user_key_pubkey(self) -> None:
        """A user key whose pubkey is not lowercase hex costs its authorizations, by id."""
        bob_id, bob = add_user_key(self.conn, self.cipher, "bob")
        bobs, _ = add_authorization(self.conn, self.cipher, bob_id)
        self.set_column("user_keys", "pubkey", bob.pubkey_hex.upper(), bob_id)
        self.assertEqual(self.loader.load_all(self.conn, NOW).authorizations, [])
        self.assert_skipped(bobs, f"user key {bob_id}: pubkey is not 64 lowercase hex characters")

    def test_row_turned_wrong_type_is_a_removal_and_reload_goes_on(self) -> None:
        """A reload over a row edited to a text date removes that row and advances, so a later
        revocation of another row still arrives."""
        edited, _ = add_authorization(self.conn, self.cipher, self.key_id)
        other, _ = add_authorization(self.conn, self.cipher, self.key_id)
        seq = self.loader.load_all(self.conn, NOW).seq
        self.set_column("authorizations", "expires_at", "2030-01-01", edited)
        seq, upserts, removals = self.loader.reload(self.conn, seq, NOW)
        self.assertEqual((upserts, removals), ([], [edited]))
        self.assert_skipped(edited, "expires_at is not an integer")
        self.set_column("authorizations", "revoked_at", NOW, other)
        _, upserts, removals = self.loader.reload(self.conn, seq, NOW)
        self.assertEqual(([(a.id, a.revoked_at) for a in upserts], removals), ([(other, NOW)], []))

    def test_user_key_turned_wrong_type_in_reload(self) -> None:
        """A new user key with a text blob is a skip of the authorization using it, by id."""
        seq = self.loader.load_all(self.conn, NOW).seq
        bob_id, _ = add_user_key(self.conn, self.cipher, "bob")
        self.set_column("user_keys", "secret_ciphertext", "oops", bob_id)
        bobs, _ = add_authorization(self.conn, self.cipher, bob_id)
        _, upserts, removals = self.loader.reload(self.conn, seq, NOW)
        self.assertEqual((upserts, removals), ([], [bobs]))
        self.assert_skipped(bobs, f"user key {bob_id}: secret_ciphertext is not a blob")

    def test_unforeseen_type_error_is_a_skip_without_values(self) -> None:
        """A TypeError or ValueError nobody foresaw skips that row; the line names the error's
        class only, never its message (which could quote the row)."""
        typed, _ = add_authorization(self.conn, self.cipher, self.key_id)
        valued, _ = add_authorization(self.conn, self.cipher, self.key_id)
        good, _ = add_authorization(self.conn, self.cipher, self.key_id)
        errors = {typed: TypeError("row value 1234"), valued: ValueError("row value 5678")}
        loader = _FailingLoader(self.cipher, errors)
        result = loader.load_all(self.conn, NOW)
        self.assertEqual([a.id for a in result.authorizations], [good])
        self.assert_skipped(typed, "unexpected TypeError while reading the row")
        self.assert_skipped(valued, "unexpected ValueError while reading the row")
        self.assertFalse([line for line in self.errors() if "row value" in line])


class _FailingLoader(AuthorizationLoader):
    """A loader whose _build raises the given error for some rows."""

    def __init__(self, cipher: SecretCipher, errors: dict[int, Exception]) -> None:
        super().__init__(cipher)
        self._errors = errors

    def _build(self, row: Sequence[Any], sessions: dict[int, dict[str, bool]]) -> Authorization:
        error = self._errors.get(row[0])
        if error is not None:
            raise error
        return super()._build(row, sessions)


class ExpiryQueueTests(LoaderTestBase):
    def test_due_only_when_expired_and_current(self) -> None:
        """Expiry comes out once, then the end of refusal; removed entries are ignored."""
        soon, _ = add_authorization(self.conn, self.cipher, self.key_id, expires_at=NOW + 10)
        later, _ = add_authorization(self.conn, self.cipher, self.key_id, expires_at=NOW + 100)
        add_authorization(self.conn, self.cipher, self.key_id)
        registry = Registry()
        auths = self.loader.load_all(self.conn, NOW).authorizations
        registry.replace_all(auths)
        queue = ExpiryQueue(grace=50)
        queue.reset(auths)
        self.assertEqual(len(queue), 4)
        self.assertEqual(queue.due(registry, NOW + 9), ([], []))
        expired, dropped = queue.due(registry, NOW + 10)
        self.assertEqual(([a.id for a in expired], dropped), ([soon], []))
        self.assertEqual(queue.due(registry, NOW + 60), ([], [soon]))
        registry.remove(later)
        self.assertEqual(queue.due(registry, NOW + 1000), ([], []))
        self.assertEqual(len(queue), 0)
