"""keycast_tw.store.admin on a real, migrated SQLite database in a temporary directory."""

from __future__ import annotations

import json
import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.nostr.nip19 import encode_npub, encode_nsec
from keycast_tw.signer.model import Permission
from keycast_tw.signer.secrets import connect_secret_matches
from keycast_tw.store import admin
from keycast_tw.store.crypto import SecretCipher, bunker_key_aad, user_key_aad
from keycast_tw.store.db import open_database
from keycast_tw.store.errors import DatabaseLocked

NOW = 1_700_000_000
RELAYS = ("wss://relay.example", "ws://127.0.0.1:7777")


class AdminTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        self.path = os.path.join(directory, "keycast.db")
        self.conn = open_database(self.path, create=True)
        self.addCleanup(self.conn.close)
        self.cipher = SecretCipher(os.urandom(32))
        self.now = NOW

    def clock(self) -> float:
        return self.now

    def add_key(self, name: str = "alice", secret: bytes | None = None) -> admin.KeyInfo:
        return admin.add_key(self.conn, self.cipher, name, secret, clock=self.clock)

    def authorize(
        self, key: str = "alice", **kwargs: object
    ) -> tuple[admin.AuthorizationInfo, str]:
        info, uri = admin.authorize(
            self.conn,
            self.cipher,
            key,
            RELAYS,
            clock=self.clock,
            **kwargs,  # type: ignore[arg-type]
        )
        assert uri.secret is not None
        return info, uri.secret


class KeyTests(AdminTestCase):
    def test_generated_key_is_stored_encrypted(self) -> None:
        """A generated key is stored as a blob that decrypts, with its AAD, to that pubkey's key."""
        info = self.add_key()
        self.assertEqual((info.name, info.created_at), ("alice", NOW))
        blob = self.conn.execute(
            "SELECT secret_ciphertext FROM user_keys WHERE id = ?", (info.id,)
        ).fetchone()[0]
        secret = self.cipher.decrypt(bytes(blob), user_key_aad(info.pubkey))
        self.assertEqual(SecretKey(secret).pubkey_hex, info.pubkey)
        self.assertNotIn(secret, bytes(blob))
        self.assertEqual(info.npub, encode_npub(info.pubkey))

    def test_imported_key(self) -> None:
        """An imported key keeps its pubkey; list_keys returns it without any secret."""
        secret = SecretKey.generate()
        info = self.add_key("bob", secret.to_bytes())
        self.assertEqual(info.pubkey, secret.pubkey_hex)
        self.assertEqual(admin.list_keys(self.conn), [info])

    def test_duplicates_refused(self) -> None:
        """A second key with the same name, or the same key under another name, is refused."""
        secret = SecretKey.generate().to_bytes()
        self.add_key("alice", secret)
        self.assertRaises(admin.AlreadyExists, self.add_key, "alice")
        error = self.assertRaises(admin.AlreadyExists, self.add_key, "other", secret)
        self.assertIn("'alice'", str(error))
        self.assertEqual(len(admin.list_keys(self.conn)), 1)

    def test_invalid_secret(self) -> None:
        """A secret outside the curve order is refused without echoing it."""
        error = self.assertRaises(admin.InvalidInput, self.add_key, "zero", bytes(32))
        self.assertNotIn("00" * 32, str(error))

    def test_bad_names(self) -> None:
        """Names that could be confused with ids, npubs or pubkeys, or are unprintable, fail."""
        for name in ("", " alice", "12", "npub1xyz", "ab" * 32, "a\nb", "x" * 65):
            self.assertRaises(admin.InvalidInput, self.add_key, name)

    def test_find_key_by_every_form(self) -> None:
        """A key is found by name, id, npub or hex pubkey; anything else is NotFound."""
        info = self.add_key()
        for form in ("alice", str(info.id), info.npub, info.pubkey, info.pubkey.upper()):
            self.assertEqual(admin.find_key(self.conn, form), info)
        self.assertRaises(admin.NotFound, admin.find_key, self.conn, "carol")
        self.assertRaises(admin.NotFound, admin.find_key, self.conn, "99")
        self.assertRaises(admin.InvalidInput, admin.find_key, self.conn, "npub1notvalid")

    def test_a_pasted_secret_is_never_repeated(self) -> None:
        """An nsec or hex secret given where a key name belongs never appears in the error."""
        self.add_key()
        secret = SecretKey.generate().to_bytes()
        for pasted in (encode_nsec(secret), secret.hex()):
            with self.assertRaises(admin.AdminError) as caught:
                admin.find_key(self.conn, pasted)
            self.assertNotIn(pasted, str(caught.exception))
        with self.assertRaises(admin.InvalidInput) as named:
            self.add_key(encode_nsec(secret))
        self.assertNotIn(encode_nsec(secret), str(named.exception))
        self.assertEqual([k.name for k in admin.list_keys(self.conn)], ["alice"])


class PolicyTests(AdminTestCase):
    def test_policy_round_trip(self) -> None:
        """Permissions are normalised and read back as stored."""
        info = admin.add_policy(
            self.conn,
            "social",
            [
                Permission("allowed_kinds", {"allowed_kinds": [7, 1, 7]}),
                Permission("content_filter", {"blocked_words": [" spam ", "scam"]}),
                Permission("encrypt_to_self"),
            ],
            clock=self.clock,
        )
        expected = (
            Permission("allowed_kinds", {"allowed_kinds": [1, 7]}),
            Permission("content_filter", {"blocked_words": ["spam", "scam"]}),
            Permission("encrypt_to_self", {}),
        )
        self.assertEqual(info.permissions, expected)
        self.assertEqual(admin.list_policies(self.conn), [info])
        rows = self.conn.execute("SELECT identifier, config FROM policy_permissions").fetchall()
        self.assertEqual(json.loads(rows[0][1]), {"allowed_kinds": [1, 7]})

    def test_invalid_policies(self) -> None:
        """Unknown identifiers, bad configs, duplicates and empty policies are refused."""
        bad: list[list[Permission]] = [
            [],
            [Permission("sign_anything")],
            [Permission("allowed_kinds", {"allowed_kinds": []})],
            [Permission("allowed_kinds", {"allowed_kinds": [70000]})],
            [Permission("allowed_kinds", {"allowed_kinds": [True]})],
            [Permission("allowed_kinds", {"kinds": [1]})],
            [Permission("content_filter", {"blocked_words": [""]})],
            [Permission("content_filter", {})],
            [Permission("encrypt_to_self", {"x": 1})],
            [Permission("decrypt_only"), Permission("decrypt_only")],
            [Permission("full_access"), Permission("decrypt_only")],
        ]
        for permissions in bad:
            self.assertRaises(admin.InvalidInput, admin.add_policy, self.conn, "p", permissions)
        self.assertEqual(admin.list_policies(self.conn), [])

    def test_duplicate_policy_name(self) -> None:
        """Policy names are unique."""
        admin.add_policy(self.conn, "p", [Permission("full_access")])
        self.assertRaises(
            admin.AlreadyExists, admin.add_policy, self.conn, "p", [Permission("full_access")]
        )


class AuthorizeTests(AdminTestCase):
    def test_fresh_bunker_key_and_hashed_secret(self) -> None:
        """authorize stores a new encrypted bunker key and only the hash of the connect secret."""
        user = self.add_key()
        info, secret = self.authorize()
        self.assertNotEqual(info.bunker_pubkey, user.pubkey)
        self.assertFalse(info.same_key)
        row = self.conn.execute(
            "SELECT bunker_secret_ciphertext, secret_hash, relays, max_uses FROM authorizations"
        ).fetchone()
        bunker_secret = self.cipher.decrypt(bytes(row[0]), bunker_key_aad(info.bunker_pubkey))
        self.assertEqual(SecretKey(bunker_secret).pubkey_hex, info.bunker_pubkey)
        self.assertTrue(connect_secret_matches(secret, bytes(row[1])))
        self.assertEqual(json.loads(row[2]), list(RELAYS))
        self.assertEqual(row[3], 1)
        dump = "\n".join(self.conn.iterdump())
        self.assertNotIn(secret, dump)
        self.assertEqual(
            (info.status, info.uses, info.key_name, info.relays), ("live", 0, "alice", RELAYS)
        )

    def test_uri(self) -> None:
        """The returned URI names the bunker pubkey, the relays and the secret."""
        self.add_key()
        info, uri = admin.authorize(self.conn, self.cipher, "alice", RELAYS, clock=self.clock)
        self.assertEqual((uri.pubkey, uri.relays), (info.bunker_pubkey, RELAYS))
        self.assertTrue(uri.to_string().startswith(f"bunker://{info.bunker_pubkey}?relay="))

    def test_each_authorization_gets_its_own_bunker_key(self) -> None:
        """Two authorizations of one key have different bunker pubkeys and secrets."""
        self.add_key()
        first, first_secret = self.authorize()
        second, second_secret = self.authorize()
        self.assertNotEqual(first.bunker_pubkey, second.bunker_pubkey)
        self.assertNotEqual(first_secret, second_secret)

    def test_same_key(self) -> None:
        """same_key serves under the user key and stores no bunker secret; only once per key."""
        user = self.add_key()
        info, _ = self.authorize(same_key=True)
        self.assertEqual(info.bunker_pubkey, user.pubkey)
        self.assertTrue(info.same_key)
        row = self.conn.execute("SELECT bunker_secret_ciphertext FROM authorizations").fetchone()
        self.assertIsNone(row[0])
        self.assertRaises(admin.AlreadyExists, self.authorize, same_key=True)

    def test_options(self) -> None:
        """Policy, max uses, expiry and label are stored and reported."""
        self.add_key()
        admin.add_policy(self.conn, "social", [Permission("full_access")])
        info, _ = self.authorize(policy="social", max_uses=None, expires_at=NOW + 60, label="phone")
        self.assertEqual(
            (info.policy, info.max_uses, info.expires_at, info.label),
            ("social", None, NOW + 60, "phone"),
        )

    def test_invalid_requests(self) -> None:
        """Unknown key or policy, bad relays or limits, past expiry: refused, nothing stored."""
        self.add_key()
        self.assertRaises(admin.NotFound, self.authorize, "bob")
        self.assertRaises(admin.NotFound, self.authorize, policy="nope")
        self.assertRaises(admin.InvalidInput, self.authorize, max_uses=0)
        self.assertRaises(admin.InvalidInput, self.authorize, expires_at=NOW)
        self.assertRaises(admin.InvalidInput, self.authorize, label="a\x00b")
        for relays in ((), ("https://relay.example",)):
            self.assertRaises(
                admin.InvalidInput, admin.authorize, self.conn, self.cipher, "alice", relays
            )
        self.assertEqual(admin.list_authorizations(self.conn), [])


class ListAndRevokeTests(AdminTestCase):
    def test_status_and_uses(self) -> None:
        """Listings count client sessions and report live, expired and revoked."""
        self.add_key()
        live, _ = self.authorize()
        expiring, _ = self.authorize(expires_at=NOW + 10)
        revoked, _ = self.authorize()
        admin.revoke(self.conn, revoked.id, clock=self.clock)
        with self.conn:
            self.conn.executemany(
                "INSERT INTO client_sessions VALUES (?, ?, ?, ?, NULL)",
                [(live.id, "aa" * 32, NOW, NOW), (live.id, "bb" * 32, NOW, NOW)],
            )
        self.now = NOW + 10
        infos = admin.list_authorizations(self.conn, clock=self.clock)
        self.assertEqual([i.status for i in infos], ["live", "expired", "revoked"])
        self.assertEqual([i.uses for i in infos], [2, 0, 0])
        self.assertEqual(infos[0].id, live.id)
        self.assertEqual(infos[1].id, expiring.id)

    def test_revoke_is_idempotent(self) -> None:
        """Revoking twice keeps the first revocation time; unknown ids are NotFound."""
        self.add_key()
        info, _ = self.authorize()
        first = admin.revoke(self.conn, info.id, clock=self.clock)
        self.assertEqual((first.status, first.revoked_at), ("revoked", NOW))
        self.now = NOW + 100
        again = admin.revoke(self.conn, info.id, clock=self.clock)
        self.assertEqual(again.revoked_at, NOW)
        self.assertRaises(admin.NotFound, admin.revoke, self.conn, 999)
        self.assertRaises(admin.NotFound, admin.get_authorization, self.conn, 999)

    def test_changes_reach_the_daemon(self) -> None:
        """authorize and revoke advance change_seq, which the daemon's reload follows."""
        self.add_key()
        info, _ = self.authorize()
        seq = self.conn.execute("SELECT change_seq FROM authorizations").fetchone()[0]
        admin.revoke(self.conn, info.id, clock=self.clock)
        after = self.conn.execute("SELECT change_seq FROM authorizations").fetchone()[0]
        self.assertGreater(after, seq)

    def test_locked_database(self) -> None:
        """A write while another process holds the lock fails as DatabaseLocked, not a crash."""
        self.add_key()
        impatient = open_database(self.path, busy_timeout_ms=10)
        self.addCleanup(impatient.close)
        blocker = sqlite3.connect(self.path)
        self.addCleanup(blocker.close)
        blocker.execute("BEGIN IMMEDIATE")
        self.addCleanup(blocker.rollback)
        self.assertRaises(DatabaseLocked, admin.add_key, impatient, self.cipher, "bob")
