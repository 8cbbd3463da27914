"""StoreService keeping the registry current through damaged rows: the real loader and database,
a synchronous runner and a Clock driving the reload timers."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.model import Authorization
from keycast_tw.signer.registry import Registry
from keycast_tw.store.crypto import (
    KIND_KMS,
    SecretCipher,
    create_master_key_file,
    generate_master_key,
    open_file_cipher,
    write_master_key_file,
)
from keycast_tw.store.db import open_database
from keycast_tw.store.rotation import rotate_master_key, rotate_master_key_file
from keycast_tw.store.runner import ConnectionRunner
from keycast_tw.store.service import StoreService
from tests.test_store_fixtures import (
    NOW,
    add_authorization,
    add_user_key,
    new_cipher,
    new_database,
)

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

    def cli_connection(self) -> sqlite3.Connection:
        """A second connection opened like the CLI's (`keycast rotate-master-key`)."""
        conn = open_database(self.db_path)
        self.addCleanup(conn.close)
        return conn

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


def assert_decrypts(case: SynchronousTestCase, auth: Authorization | None) -> None:
    """Both keys of ``auth`` decrypt to their pubkeys (else KeyUnavailable is raised)."""
    assert auth is not None
    case.assertEqual(auth.bunker_key.secret_key().pubkey_hex, auth.bunker_pubkey)
    case.assertEqual(auth.user_key.secret_key().pubkey_hex, auth.user_pubkey)


class FileKeyRotationTests(ServiceTestBase):
    """`keycast rotate-master-key` through another connection while the daemon runs."""

    def setUp(self) -> None:
        super().setUp()
        self.first, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.same_key, _ = add_authorization(
            self.conn, self.cipher, self.key_id, same_key_pubkey=self.alice.pubkey_hex
        )

    def rotated_cipher(self) -> SecretCipher:
        """Rotate like the CLI does and return the new key's cipher."""
        conn = self.cli_connection()
        rotate_master_key_file(conn, self.key_path)
        return open_file_cipher(conn, self.key_path)

    def assert_switched(self, service: StoreService, before: SecretCipher | None) -> None:
        """The service uses another key now, and said so once."""
        self.assertIsNot(service.cipher, before)
        lines = [formatEvent(e) for e in self.logged]
        self.assertEqual(sum("The master key was rotated" in line for line in lines), 1)

    def test_reconcile_after_rotation(self) -> None:
        """The hourly reconcile after a rotation builds every key with the new key."""
        service = self.start(reload_interval=None)
        before = service.cipher
        self.rotated_cipher()
        info = self.successResultOf(service.reconcile())
        self.assertIsNone(info.error)
        self.assertEqual(len(self.registry), 2)
        for auth in self.registry:
            assert_decrypts(self, auth)
        self.assert_switched(service, before)

    def test_reload_after_rotation(self) -> None:
        """New and changed rows after a rotation decrypt; rows not changed are not rebuilt."""
        service = self.start()
        before = service.cipher
        untouched = self.registry.by_id(self.same_key)
        new_cipher = self.rotated_cipher()
        self.edit("UPDATE authorizations SET label = 'renamed' WHERE id = ?", self.first)
        added, _ = add_authorization(self.conn, new_cipher, self.key_id)
        dave_id, _ = add_user_key(self.conn, new_cipher, "dave")
        daves, _ = add_authorization(self.conn, new_cipher, dave_id)
        self.clock.advance(RELOAD)
        assert service.last_reload is not None
        self.assertIsNone(service.last_reload.error)
        for auth_id in (self.first, added, daves, self.same_key):
            assert_decrypts(self, self.registry.by_id(auth_id))
        self.assertIs(self.registry.by_id(self.same_key), untouched)
        self.assert_switched(service, before)

    def test_key_file_not_matching(self) -> None:
        """A database re-keyed under a key the daemon's file does not hold: the reload fails
        with one ERROR line and the registry as it was; once the file holds the key, the next
        reload applies what changed meanwhile."""
        service = self.start()
        cipher = service.cipher
        before = self.registry.by_id(self.first)
        new_key = generate_master_key()
        rotate_master_key(self.cli_connection(), self.cipher, SecretCipher(new_key))
        self.revoke(self.first)
        for _ in range(4):
            self.clock.advance(RELOAD)
        message = (
            f"master key was rotated and the key file {self.key_path} does not match;"
            " restart with the new key"
        )
        assert service.last_reload is not None
        self.assertEqual(service.last_reload.error, message)
        self.assertEqual(self.errors(), [f"Reload failed: {message}"])
        self.assertIs(self.registry.by_id(self.first), before)
        self.assertIs(service.cipher, cipher)
        write_master_key_file(self.key_path, new_key)
        self.clock.advance(RELOAD)
        self.assertIsNone(service.last_reload.error)
        self.assertEqual(self.revoked_at(self.first), NOW)
        self.assert_switched(service, cipher)


class FakeKms:
    """Cloud KMS in memory: wrapping is a lookup table; ``hold`` keeps decrypts pending."""

    def __init__(self) -> None:
        self._keys: dict[bytes, bytes] = {}
        self.decrypts = 0
        self.hold = False
        self.held: list[Deferred[bytes]] = []

    def wrap(self, plaintext: bytes) -> bytes:
        wrapped = os.urandom(16)
        self._keys[wrapped] = plaintext
        return wrapped

    def encrypt(self, plaintext: bytes) -> Deferred[bytes]:
        return succeed(self.wrap(plaintext))

    def decrypt(self, ciphertext: bytes) -> Deferred[bytes]:
        self.decrypts += 1
        if not self.hold:
            return succeed(self._keys[ciphertext])
        d: Deferred[bytes] = Deferred()
        d.addCallback(lambda _: self._keys[ciphertext])
        self.held.append(d)
        return d


class KmsRotationTests(ServiceTestBase):
    """A database under a KMS-wrapped data key, re-keyed while the daemon runs."""

    def setUp(self) -> None:
        super().setUp()
        self.db_path, self.conn = new_database(self.mktemp())
        self.kms = FakeKms()
        self.service = self.start(kms=self.kms, master_key_path=None)
        assert self.service.cipher is not None
        self.cipher = self.service.cipher
        self.key_id, self.alice = add_user_key(self.conn, self.cipher, "alice")
        self.first, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.clock.advance(RELOAD)

    def rotate(self) -> SecretCipher:
        new_key = generate_master_key()
        rotate_master_key(
            self.cli_connection(),
            self.cipher,
            SecretCipher(new_key),
            kind=KIND_KMS,
            wrapped_data_key=self.kms.wrap(new_key),
        )
        return SecretCipher(new_key)

    def test_new_data_key_from_kms(self) -> None:
        """The daemon asks Cloud KMS for the new wrapped data key, off the database thread:
        until KMS answers, the registry is as it was; then the change is applied."""
        before = self.registry.by_id(self.first)
        new_cipher = self.rotate()
        added, _ = add_authorization(self.conn, new_cipher, self.key_id)
        self.kms.hold = True
        self.clock.advance(RELOAD)
        self.assertEqual(len(self.kms.held), 1)
        self.assertIsNone(self.registry.by_id(added))
        self.kms.held.pop().callback(None)
        for auth_id in (self.first, added):
            assert_decrypts(self, self.registry.by_id(auth_id))
        self.assertIs(self.registry.by_id(self.first), before)
        self.assertIsNot(self.service.cipher, self.cipher)
        self.assertEqual(self.kms.decrypts, 1)

    def test_wrapped_key_not_matching(self) -> None:
        """A wrapped key that unwraps to another key fails the reload with the KMS message."""
        rotate_master_key(
            self.cli_connection(),
            self.cipher,
            new_cipher(),
            kind=KIND_KMS,
            wrapped_data_key=self.kms.wrap(generate_master_key()),
        )
        self.clock.advance(RELOAD)
        assert self.service.last_reload is not None
        self.assertEqual(
            self.service.last_reload.error,
            "master key was rotated and Cloud KMS gave no matching data key; restart the daemon",
        )
        assert_decrypts(self, self.registry.by_id(self.first))


class FailedReconcileTests(ServiceTestBase):
    """A full reload that fails after start-up shows in last_reload, like a failed reload."""

    def setUp(self) -> None:
        super().setUp()
        self.auth_id, _ = add_authorization(self.conn, self.cipher, self.key_id)

    def break_full_load(self) -> None:
        """Only the full load reads client_sessions when nothing changed."""
        self.conn.execute("ALTER TABLE client_sessions RENAME TO moved")

    def repair(self) -> None:
        self.conn.execute("ALTER TABLE moved RENAME TO client_sessions")

    def test_periodic_reconcile_failure_recorded(self) -> None:
        """The hourly reconcile's failure is last_reload (error and time), logged once; the
        registry keeps what it had."""
        service = self.start(reload_interval=None, reconcile_interval=10)
        before = self.registry.by_id(self.auth_id)
        self.break_full_load()
        self.clock.advance(10)
        info = service.last_reload
        assert info is not None
        self.assertEqual((info.kind, info.at), ("reconcile", NOW))
        self.assertIn("client_sessions", str(info.error))
        self.assertEqual(self.errors(), [f"Full reload failed: {info.error}"])
        self.assertIs(self.registry.by_id(self.auth_id), before)
        self.clock.advance(10)
        self.assertEqual(len(self.errors()), 1)

    def test_failure_stays_visible_until_a_reconcile_succeeds(self) -> None:
        """A SIGHUP reconcile returns its failure; the incremental reloads that follow carry it
        in reconcile_error until a reconcile succeeds."""
        service = self.start()
        self.break_full_load()
        failed = self.successResultOf(service.reconcile())
        self.assertIsNotNone(failed.error)
        self.assertIs(service.last_reload, failed)
        self.clock.advance(RELOAD)
        info = service.last_reload
        assert info is not None
        self.assertEqual((info.kind, info.error), ("reload", None))
        self.assertEqual((info.reconcile_error, info.reconcile_failed_at), (failed.error, NOW))
        self.repair()
        recovered = self.successResultOf(service.reconcile())
        self.assertEqual((recovered.error, recovered.reconcile_error), (None, None))
        self.assertIn("Full reload recovered", [formatEvent(e) for e in self.logged])

    def test_start_up_load_failure_still_fails_ready(self) -> None:
        """The first load is not recorded as a reconcile failure: ready fails with it."""
        self.break_full_load()
        service = StoreService(
            database_path=self.db_path,
            registry=self.registry,
            reactor=self.clock,
            master_key_path=self.key_path,
            runner_factory=lambda service: ConnectionRunner(self.conn, self.db_path),
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.failureResultOf(service.ready)
        self.assertIsNone(service.last_reload)


class StartLogTests(ServiceTestBase):
    def test_database_initialized_only_with_a_matching_key(self) -> None:
        """"Database initialized" means the database and its master key are usable: a start
        with the wrong key fails without that line."""
        create_master_key_file(wrong := self.key_path + ".wrong")
        service = StoreService(
            database_path=self.db_path,
            registry=self.registry,
            reactor=self.clock,
            master_key_path=wrong,
            runner_factory=lambda service: ConnectionRunner(self.conn, self.db_path),
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.failureResultOf(service.ready)
        self.assertNotIn("Database initialized", [formatEvent(e) for e in self.logged])
        self.start()
        self.assertIn("Database initialized", [formatEvent(e) for e in self.logged])
