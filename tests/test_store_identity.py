"""The relay identity (NIP-42 AUTH key): migration 0002, load-or-create, and StoreService."""

from __future__ import annotations

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.registry import Registry
from keycast_tw.store.crypto import (
    bunker_key_aad,
    create_master_key_file,
    open_file_cipher,
    relay_identity_aad,
)
from keycast_tw.store.db import migrations, open_database, schema_version, split_statements
from keycast_tw.store.errors import CiphertextError
from keycast_tw.store.identity import load_or_create_relay_identity
from keycast_tw.store.runner import ConnectionRunner
from keycast_tw.store.service import StoreService
from tests.test_store_fixtures import (
    NOW,
    add_authorization,
    add_user_key,
    change_seq,
    new_cipher,
    new_database,
)


def version_1_database(path: str) -> sqlite3.Connection:
    """A database as schema version 1 left it (before the relay_identity table)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path)
    for statement in split_statements(migrations()[0].sql):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    return conn


class MigrationTests(SynchronousTestCase):
    def test_version_1_database_with_data_is_migrated(self) -> None:
        """Opening a version-1 database adds an empty relay_identity and keeps every row."""
        path = os.path.join(self.mktemp(), "keycast.db")
        old = version_1_database(path)
        cipher = new_cipher()
        key_id, user = add_user_key(old, cipher, "alice")
        auth_id, bunker_pubkey = add_authorization(old, cipher, key_id)
        seq = change_seq(old, auth_id)
        old.close()
        conn = open_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), len(migrations()))
        self.assertEqual(conn.execute("SELECT count(*) FROM relay_identity").fetchone(), (0,))
        self.assertEqual(
            conn.execute("SELECT name, pubkey FROM user_keys").fetchall(),
            [("alice", user.pubkey_hex)],
        )
        blob = conn.execute("SELECT bunker_secret_ciphertext FROM authorizations").fetchone()[0]
        self.assertEqual(len(cipher.decrypt(blob, bunker_key_aad(bunker_pubkey))), 32)
        self.assertEqual(change_seq(conn, auth_id), seq)
        key = load_or_create_relay_identity(conn, cipher)
        self.assertEqual(
            conn.execute("SELECT pubkey FROM relay_identity").fetchone(), (key.pubkey_hex,)
        )


class LoadOrCreateTests(SynchronousTestCase):
    def setUp(self) -> None:
        _, self.conn = new_database(self.mktemp())
        self.cipher = new_cipher()

    def test_created_once_then_loaded(self) -> None:
        """The first call stores a new key (encrypted, bound to its pubkey); later calls load it."""
        created = load_or_create_relay_identity(self.conn, self.cipher, clock=lambda: NOW)
        loaded = load_or_create_relay_identity(self.conn, self.cipher)
        self.assertIsInstance(loaded, SecretKey)
        self.assertEqual(loaded.to_bytes(), created.to_bytes())
        ((row_id, pubkey, blob, created_at),) = self.conn.execute(
            "SELECT id, pubkey, secret_ciphertext, created_at FROM relay_identity"
        ).fetchall()
        self.assertEqual((row_id, pubkey, created_at), (1, created.pubkey_hex, NOW))
        self.assertNotIn(created.to_bytes(), bytes(blob))
        self.assertEqual(
            self.cipher.decrypt(bytes(blob), relay_identity_aad(pubkey)), created.to_bytes()
        )
        self.assertFalse(self.conn.in_transaction)

    def test_damaged_row_is_an_error_not_a_new_key(self) -> None:
        """A row that does not decrypt raises CiphertextError (no secret in it) and stays."""
        key = load_or_create_relay_identity(self.conn, self.cipher)
        self.conn.execute(
            "UPDATE relay_identity SET secret_ciphertext = ?",
            (new_cipher().encrypt(key.to_bytes(), relay_identity_aad(key.pubkey_hex)),),
        )
        self.conn.commit()
        with self.assertRaises(CiphertextError) as caught:
            load_or_create_relay_identity(self.conn, self.cipher)
        self.assertIn("delete the relay_identity row", str(caught.exception))
        self.assertNotIn(key.to_bytes().hex(), str(caught.exception))
        self.assertEqual(
            self.conn.execute("SELECT pubkey FROM relay_identity").fetchall(),
            [(key.pubkey_hex,)],
        )

    def test_pubkey_column_must_match_the_secret(self) -> None:
        """A secret re-filed under another pubkey (with matching aad) is refused too."""
        key, other = SecretKey.generate(), SecretKey.generate()
        self.conn.execute(
            "INSERT INTO relay_identity VALUES (1, ?, ?, ?)",
            (
                other.pubkey_hex,
                self.cipher.encrypt(key.to_bytes(), relay_identity_aad(other.pubkey_hex)),
                NOW,
            ),
        )
        self.conn.commit()
        with self.assertRaises(CiphertextError):
            load_or_create_relay_identity(self.conn, self.cipher)


class StoreServiceIdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db_path, self.conn = new_database(self.mktemp())
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)

    def start(self) -> tuple[StoreService, list[SecretKey | None]]:
        """A started StoreService and what relay_identity held when ready fired."""
        service = StoreService(
            database_path=self.db_path,
            registry=Registry(),
            reactor=Clock(),
            master_key_path=self.key_path,
            runner_factory=lambda service: ConnectionRunner(self.conn, self.db_path),
        )
        at_ready: list[SecretKey | None] = []
        service.ready.addCallback(lambda _: at_ready.append(service.relay_identity))
        self.assertIsNone(service.relay_identity)
        service.startService()
        self.successResultOf(service.ready)
        self.addCleanup(service.stopService)
        return service, at_ready

    def test_set_before_ready_and_kept_across_restarts(self) -> None:
        """relay_identity is the stored key when ready fires, and the same after a restart."""
        first, at_ready = self.start()
        assert first.relay_identity is not None
        self.assertIs(at_ready[0], first.relay_identity)
        stored = self.conn.execute("SELECT pubkey FROM relay_identity").fetchone()[0]
        self.assertEqual(first.relay_identity.pubkey_hex, stored)
        second, _ = self.start()
        assert second.relay_identity is not None
        self.assertEqual(second.relay_identity.to_bytes(), first.relay_identity.to_bytes())

    def test_created_by_init_is_the_one_served(self) -> None:
        """A key made beforehand (keycast init) is the one the service loads."""
        made = load_or_create_relay_identity(self.conn, open_file_cipher(self.conn, self.key_path))
        service, _ = self.start()
        assert service.relay_identity is not None
        self.assertEqual(service.relay_identity.pubkey_hex, made.pubkey_hex)
