"""StoreService keeping the registry current through damaged rows: the real loader and database,
a synchronous runner and a Clock driving the reload timers."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.registry import Registry
from keycast_tw.store.crypto import create_master_key_file, open_file_cipher
from keycast_tw.store.runner import ConnectionRunner
from keycast_tw.store.service import StoreService
from tests.test_store_fixtures import NOW, add_authorization, add_user_key, new_database

RELOAD = 0.5


class ServiceTestBase(SynchronousTestCase):
    """A database with alice's key and a file master key; ``start`` runs a StoreService on it."""

    def setUp(self) -> None:
        self.db_path, self.conn = new_database(self.mktemp())
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)
        self.cipher = open_file_cipher(self.conn, self.key_path)
        self.key_id, self.alice = add_user_key(self.conn, self.cipher, "alice")
        self.clock = Clock()
        self.registry = Registry(now=lambda: float(NOW))
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def start(self, **kwargs: Any) -> StoreService:
        options: dict[str, Any] = {
            "database_path": self.db_path,
            "registry": self.registry,
            "reactor": self.clock,
            "master_key_path": self.key_path,
            "runner_factory": lambda service: ConnectionRunner(self.conn, self.db_path),
            "now": lambda: float(NOW),
            "reload_interval": RELOAD,
        }
        options.update(kwargs)
        service = StoreService(**options)
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(service.ready)
        return service

    def other_connection(self) -> sqlite3.Connection:
        """A second connection, like the CLI's or the sqlite3 shell's (foreign keys off)."""
        conn = sqlite3.connect(self.db_path)
        self.addCleanup(conn.close)
        return conn

    def edit(self, query: str, *params: object) -> None:
        conn = self.other_connection()
        conn.execute(query, params)
        conn.commit()

    def errors(self) -> list[str]:
        return [formatEvent(e) for e in self.logged if e["log_level"] == LogLevel.error]

    def revoke(self, authorization_id: int) -> None:
        self.edit("UPDATE authorizations SET revoked_at = ? WHERE id = ?", NOW, authorization_id)

    def revoked_at(self, authorization_id: int) -> int | None:
        auth = self.registry.by_id(authorization_id)
        assert auth is not None
        return auth.revoked_at


class WrongTypeTests(ServiceTestBase):
    """The reviewer's rows: a text date, a text bunker secret, a user key with a text blob."""

    def add_bad_rows(self) -> list[tuple[int, str]]:
        """Three damaged authorizations; returns (id, reason logged) for each."""
        dated, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.edit("UPDATE authorizations SET expires_at = '2030-01-01' WHERE id = ?", dated)
        texted, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.edit(
            "UPDATE authorizations SET bunker_secret_ciphertext = 'oops' WHERE id = ?", texted
        )
        bob_id, _ = add_user_key(self.conn, self.cipher, "bob")
        self.edit("UPDATE user_keys SET secret_ciphertext = 'oops' WHERE id = ?", bob_id)
        bobs, _ = add_authorization(self.conn, self.cipher, bob_id)
        return [
            (dated, "expires_at is not an integer"),
            (texted, "bunker_secret_ciphertext is not a blob"),
            (bobs, f"user key {bob_id}: secret_ciphertext is not a blob"),
        ]

    def assert_skipped_once(self, bad: list[tuple[int, str]]) -> None:
        errors = self.errors()
        for auth_id, reason in bad:
            self.assertEqual(errors.count(f"Skipping authorization {auth_id}: {reason}"), 1)
        self.assertEqual(len(errors), len(bad))

    def test_at_start(self) -> None:
        """The daemon starts (no crash loop) serving every other row; a later revocation
        arrives on the next reload."""
        good, _ = add_authorization(self.conn, self.cipher, self.key_id)
        bad = self.add_bad_rows()
        service = self.start()
        self.assertEqual([auth.id for auth in self.registry], [good])
        self.assert_skipped_once(bad)
        assert service.last_reload is not None
        self.assertEqual(service.last_reload.skipped, len(bad))
        self.revoke(good)
        self.clock.advance(RELOAD)
        self.assertEqual(self.revoked_at(good), NOW)

    def test_in_reload(self) -> None:
        """Rows damaged while the daemon runs are removed, each with one ERROR line; the reload
        advances, so a later revocation still takes effect."""
        good, _ = add_authorization(self.conn, self.cipher, self.key_id)
        service = self.start()
        bad = self.add_bad_rows()
        self.clock.advance(RELOAD)
        assert service.last_reload is not None
        self.assertIsNone(service.last_reload.error)
        self.assertEqual([auth.id for auth in self.registry], [good])
        self.assert_skipped_once(bad)
        self.revoke(good)
        self.clock.advance(RELOAD)
        self.assertIsNone(service.last_reload.error)
        self.assertEqual(self.revoked_at(good), NOW)


class ReusedUserKeyIdTests(ServiceTestBase):
    def test_new_user_signs_with_own_key(self) -> None:
        """The reviewer's scenario: bob is revoked and deleted by hand, carol gets bob's id;
        after one reload carol's authorization signs with carol's key."""
        bob_id, bob = add_user_key(self.conn, self.cipher, "bob")
        bobs, _ = add_authorization(self.conn, self.cipher, bob_id)
        self.start()
        self.revoke(bobs)
        self.clock.advance(RELOAD)
        self.edit("DELETE FROM authorizations WHERE user_key_id = ?", bob_id)
        self.edit("DELETE FROM user_keys WHERE id = ?", bob_id)
        carol_id, carol = add_user_key(self.conn, self.cipher, "carol")
        self.assertEqual(carol_id, bob_id)
        carols, _ = add_authorization(self.conn, self.cipher, carol_id)
        self.clock.advance(RELOAD)
        auth = self.registry.by_id(carols)
        assert auth is not None
        self.assertEqual(auth.user_key.secret_key().pubkey_hex, carol.pubkey_hex)
        self.assertNotEqual(auth.user_pubkey, bob.pubkey_hex)
