"""Master key file rules, AES-GCM blobs bound to their row, key_check, rotation and backup."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.store import backup as backup_module
from keycast_tw.store import rotation as rotation_module
from keycast_tw.store.backup import backup
from keycast_tw.store.crypto import (
    KIND_FILE,
    MasterKeyFileExists,
    SecretCipher,
    bunker_key_aad,
    create_master_key_file,
    open_cipher,
    open_file_cipher,
    read_key_info,
    read_master_key_file,
    user_key_aad,
    write_master_key_file,
)
from keycast_tw.store.db import open_database
from keycast_tw.store.errors import CiphertextError, MasterKeyError, StoreError
from keycast_tw.store.identity import load_or_create_relay_identity
from keycast_tw.store.rotation import rotate_master_key, rotate_master_key_file
from keycast_tw.store.runner import ConnectionRunner
from tests.test_store_fixtures import add_authorization, add_user_key, new_cipher, new_database

ROTATED_AT = 1_704_164_645.0  # 2024-01-02T03:04:05Z
NOBODY = 65534


class MasterKeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.path = os.path.join(self.dir, "keys", "master.key")

    def test_create_is_0600_and_idempotent(self) -> None:
        """init creates a 0600 base64 key (parent made) and leaves an existing one alone."""
        self.assertTrue(create_master_key_file(self.path))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        key = read_master_key_file(self.path)
        self.assertEqual(len(key), 32)
        self.assertFalse(create_master_key_file(self.path))
        self.assertEqual(read_master_key_file(self.path), key)

    def write(self, content: bytes, mode: int = 0o600) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "wb") as handle:
            handle.write(content)
        os.chmod(self.path, mode)

    def test_whitespace_trimmed(self) -> None:
        """The original's format (openssl rand 32 | base64) with surrounding whitespace reads."""
        key = os.urandom(32)
        self.write(b"  " + base64.b64encode(key) + b"\r\n\n")
        self.assertEqual(read_master_key_file(self.path), key)

    def test_group_readable_refused(self) -> None:
        """A group/world readable key is refused with the chmod remedy."""
        self.write(base64.b64encode(os.urandom(32)), 0o640)
        with self.assertRaises(MasterKeyError) as caught:
            read_master_key_file(self.path)
        self.assertIn("readable by group/others", str(caught.exception))
        self.assertIn(f"chmod 600 {self.path}", str(caught.exception))

    def test_bad_format_refused(self) -> None:
        """Non-base64, 31 or 33 bytes, and base64 with junk are all refused."""
        for content in (
            b"not base64!!",
            base64.b64encode(os.urandom(31)),
            base64.b64encode(os.urandom(33)),
            base64.b64encode(os.urandom(32)) + b"$",
        ):
            self.write(content)
            with self.assertRaises(MasterKeyError) as caught:
                read_master_key_file(self.path)
            self.assertIn("not base64 of 32 bytes", str(caught.exception))

    def test_missing(self) -> None:
        """A missing key file names `keycast init`."""
        with self.assertRaises(MasterKeyError) as caught:
            read_master_key_file(self.path)
        self.assertIn("keycast init", str(caught.exception))

    def test_atomic_write_replaces(self) -> None:
        """write_master_key_file replaces the key with a 0600 file and leaves no temp file."""
        create_master_key_file(self.path)
        key = os.urandom(32)
        write_master_key_file(self.path, key)
        self.assertEqual(read_master_key_file(self.path), key)
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["master.key"])


    def test_write_without_replace_keeps_the_existing_file(self) -> None:
        """replace=False refuses an existing file, leaves it intact and no temp file behind;
        the new file is exactly 0600 even under a permissive umask."""
        create_master_key_file(self.path)
        before = read_master_key_file(self.path)
        with self.assertRaises(MasterKeyFileExists):
            write_master_key_file(self.path, os.urandom(32), replace=False)
        self.assertEqual(read_master_key_file(self.path), before)
        previous = os.umask(0o000)
        self.addCleanup(os.umask, previous)
        write_master_key_file(self.path + ".old", before, replace=False)
        self.assertEqual(stat.S_IMODE(os.stat(self.path + ".old").st_mode), 0o600)
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(self.path))), ["master.key", "master.key.old"]
        )


class KeyOwnerTests(SynchronousTestCase):
    """A key file written for rotation takes the owner of the key it replaces."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "master.key")
        self.chowns: list[tuple[int, int]] = []

    def fake_fchown(self, error: OSError | None = None) -> None:
        """Record os.fchown calls instead of making them (or fail them with ``error``)."""

        def fchown(fd: int, uid: int, gid: int) -> None:
            self.chowns.append((uid, gid))
            if error is not None:
                raise error

        self.patch(os, "fchown", fchown)

    def test_owner_given_before_the_name(self) -> None:
        """Another owner is set with fchown on the still-unnamed file; the mode stays 0600."""
        self.fake_fchown()
        write_master_key_file(self.path, os.urandom(32), owner=(4242, 4343))
        self.assertEqual(self.chowns, [(4242, 4343)])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_same_owner_needs_no_chown(self) -> None:
        """A rotation run as the key's own user changes no ownership."""
        self.fake_fchown()
        write_master_key_file(self.path, os.urandom(32), owner=(os.getuid(), os.getgid()))
        self.assertEqual(self.chowns, [])

    def test_not_permitted_names_the_user_and_leaves_nothing(self) -> None:
        """Without the right to give the file away, the error says whom to run as and no file
        (named or temporary) is left."""
        self.fake_fchown(PermissionError(1, "Operation not permitted"))
        with self.assertRaises(MasterKeyError) as caught:
            write_master_key_file(self.path, os.urandom(32), owner=(os.getuid() + 1, 0))
        self.assertIn(f"run this as root or as uid {os.getuid() + 1}", str(caught.exception))
        self.assertEqual(os.listdir(self.dir), [])

    def test_group_not_permitted_for_the_same_user_is_let_go(self) -> None:
        """Same uid, a group we may not set: the 0600 key is readable by its owner anyway."""
        self.fake_fchown(PermissionError(1, "Operation not permitted"))
        write_master_key_file(self.path, os.urandom(32), owner=(os.getuid(), os.getgid() + 1))
        self.assertEqual(len(self.chowns), 1)
        self.assertTrue(os.path.exists(self.path))


class CipherTests(SynchronousTestCase):
    def test_round_trip_and_layout(self) -> None:
        """Blobs are nonce12||ct||tag16 and a fresh nonce each time."""
        cipher = new_cipher()
        blob = cipher.encrypt(b"k" * 32, b"aad")
        self.assertEqual(len(blob), 12 + 32 + 16)
        self.assertNotEqual(blob, cipher.encrypt(b"k" * 32, b"aad"))
        self.assertEqual(cipher.decrypt(blob, b"aad"), b"k" * 32)

    def test_rust_layout_decrypts_with_empty_aad(self) -> None:
        """A blob laid out as the Rust original does (no AAD) reads only with AAD b''."""
        key, nonce, secret = os.urandom(32), os.urandom(12), os.urandom(32)
        rust_blob = nonce + AESGCM(key).encrypt(nonce, secret, None)
        cipher = SecretCipher(key)
        self.assertEqual(cipher.decrypt(rust_blob, b""), secret)
        with self.assertRaises(CiphertextError):
            cipher.decrypt(rust_blob, bunker_key_aad("ab" * 32))

    def test_blob_bound_to_its_pubkey(self) -> None:
        """A blob moved to another row (other pubkey or other role) does not decrypt."""
        cipher = new_cipher()
        blob = cipher.encrypt(b"s" * 32, bunker_key_aad("aa" * 32))
        for aad in (bunker_key_aad("bb" * 32), user_key_aad("aa" * 32)):
            with self.assertRaises(CiphertextError):
                cipher.decrypt(blob, aad)
        with self.assertRaises(CiphertextError):
            cipher.decrypt(b"short", b"")

    def test_repr_hides_key(self) -> None:
        """The cipher's repr shows no key bytes."""
        key = os.urandom(32)
        self.assertNotIn(key.hex(), repr(SecretCipher(key)))
        self.assertNotIn(base64.b64encode(key).decode(), repr(SecretCipher(key)))


class KeyCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db_path, self.conn = new_database(self.mktemp())
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)

    def test_first_open_records_key_check(self) -> None:
        """Opening with the file key writes kind=file and a key_check that matches."""
        cipher = open_file_cipher(self.conn, self.key_path)
        info = read_key_info(self.conn)
        assert info is not None
        self.assertEqual(info[0], KIND_FILE)
        self.assertTrue(cipher.matches(info[2]))

    def test_wrong_key_fails_at_start(self) -> None:
        """Another master key gives one MasterKeyError, not per-row failures."""
        open_file_cipher(self.conn, self.key_path)
        write_master_key_file(self.key_path, os.urandom(32))
        with self.assertRaises(MasterKeyError) as caught:
            open_file_cipher(self.conn, self.key_path)
        self.assertEqual(str(caught.exception), "master key does not match this database")

    def test_legacy_database_checked_against_a_user_key(self) -> None:
        """Without key_check, a stored user key must decrypt before key_check is recorded."""
        add_user_key(self.conn, new_cipher(), "alice")
        with self.assertRaises(MasterKeyError):
            open_file_cipher(self.conn, self.key_path)
        self.assertIsNone(read_key_info(self.conn))

    def test_open_cipher_through_a_runner(self) -> None:
        """open_cipher with a file key completes synchronously through a ConnectionRunner."""
        d = open_cipher(ConnectionRunner(self.conn), master_key_path=self.key_path, kms=None)
        cipher = self.successResultOf(Deferred.fromCoroutine(d))
        self.assertIsInstance(cipher, SecretCipher)


class RotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db_path, self.conn = new_database(self.mktemp())
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)
        self.old = open_file_cipher(self.conn, self.key_path)
        self.key_id, self.user = add_user_key(self.conn, self.old, "alice")
        self.auth_id, self.bunker_pubkey = add_authorization(self.conn, self.old, self.key_id)

    def blobs(self) -> tuple[bytes, bytes, bytes]:
        user = self.conn.execute("SELECT secret_ciphertext FROM user_keys").fetchone()[0]
        bunker = self.conn.execute(
            "SELECT bunker_secret_ciphertext FROM authorizations"
        ).fetchone()[0]
        check = self.conn.execute("SELECT key_check FROM master_key_info").fetchone()[0]
        return bytes(user), bytes(bunker), bytes(check)

    def test_rotate_reencrypts_everything(self) -> None:
        """Every user key, bunker key and key_check moves to the new key."""
        new = new_cipher()
        result = rotate_master_key(self.conn, self.old, new)
        self.assertEqual((result.user_keys, result.bunker_keys), (1, 1))
        user, bunker, check = self.blobs()
        self.assertEqual(
            new.decrypt(user, user_key_aad(self.user.pubkey_hex)), self.user.to_bytes()
        )
        self.assertEqual(len(new.decrypt(bunker, bunker_key_aad(self.bunker_pubkey))), 32)
        self.assertTrue(new.matches(check))

    def test_failure_midway_changes_nothing(self) -> None:
        """A row that fails to decrypt half way rolls the whole rotation back."""
        add_authorization(self.conn, new_cipher(), self.key_id)  # encrypted under another key
        before = self.blobs()
        with self.assertRaises(CiphertextError) as caught:
            rotate_master_key(self.conn, self.old, new_cipher())
        self.assertIn("authorization", str(caught.exception))
        self.assertEqual(self.blobs(), before)
        self.assertFalse(self.conn.in_transaction)

    def test_relay_identity_moves_with_the_rest(self) -> None:
        """The relay identity is re-encrypted in the same transaction as every other key."""
        identity = load_or_create_relay_identity(self.conn, self.old)
        new = new_cipher()
        self.assertEqual(rotate_master_key(self.conn, self.old, new), (1, 1, 1, 0))
        self.assertEqual(
            load_or_create_relay_identity(self.conn, new).to_bytes(), identity.to_bytes()
        )

    def test_undecryptable_relay_identity_rolls_everything_back(self) -> None:
        """A relay identity that fails last undoes the user and bunker keys already done."""
        key = SecretKey.generate()
        self.conn.execute(
            "INSERT INTO relay_identity VALUES (1, ?, ?, 1)",
            (key.pubkey_hex, new_cipher().encrypt(key.to_bytes(), b"other key")),
        )
        self.conn.commit()
        before = self.blobs()
        with self.assertRaises(CiphertextError) as caught:
            rotate_master_key(self.conn, self.old, new_cipher())
        self.assertIn("relay identity", str(caught.exception))
        self.assertEqual(self.blobs(), before)

    def test_rotate_file(self) -> None:
        """The file rotation keeps the old key as .old-<UTC time> and the new key opens the
        database; no staged or temp file is left."""
        old_key = read_master_key_file(self.key_path)
        rotation = rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
        self.assertEqual(rotation.old_key_path, self.key_path + ".old-20240102T030405Z")
        self.assertEqual(read_master_key_file(rotation.old_key_path), old_key)
        self.assertEqual(stat.S_IMODE(os.stat(rotation.old_key_path).st_mode), 0o600)
        self.assertEqual(rotation.counts.user_keys, 1)
        self.assertNotEqual(read_master_key_file(self.key_path), old_key)
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(self.key_path))),
            ["keycast.db", "keycast.db-shm", "keycast.db-wal", "master.key",
             "master.key.old-20240102T030405Z"],
        )  # fmt: skip
        open_file_cipher(self.conn, self.key_path)

    def test_two_rotations_keep_both_old_keys(self) -> None:
        """A second rotation (even in the same second) keeps the first's old key: each old key
        still opens the backup taken before the rotation that retired it."""
        directory = os.path.dirname(self.key_path)
        backups = [os.path.join(directory, f"backup-{n}.db") for n in (1, 2)]
        kept = []
        for dest in backups:
            backup(self.conn, dest)
            kept.append(
                rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
            )
        self.assertEqual(
            [rotation.old_key_path for rotation in kept],
            [self.key_path + ".old-20240102T030405Z", self.key_path + ".old-20240102T030405Z-2"],
        )
        for dest, rotation in zip(backups, kept, strict=True):
            copy = open_database(dest)
            self.addCleanup(copy.close)
            cipher = open_file_cipher(copy, rotation.old_key_path)
            (blob,) = copy.execute("SELECT secret_ciphertext FROM user_keys").fetchone()
            self.assertEqual(
                cipher.decrypt(bytes(blob), user_key_aad(self.user.pubkey_hex)),
                self.user.to_bytes(),
            )

    def test_old_key_kept_before_the_commit(self) -> None:
        """The old key is on disk (complete, 0600) when the transaction commits."""
        old_key = read_master_key_file(self.key_path)
        seen: list[bytes] = []

        def rotate(*args: object, **kwargs: object) -> object:
            seen.append(read_master_key_file(self.key_path + ".old-20240102T030405Z"))
            return rotate_master_key(*args, **kwargs)  # type: ignore[arg-type]

        self.patch(rotation_module, "rotate_master_key", rotate)
        rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
        self.assertEqual(seen, [old_key])

    def test_failure_before_commit_leaves_no_key_files(self) -> None:
        """A rotation that rolls back removes its staged key and its copy of the old key."""
        add_authorization(self.conn, new_cipher(), self.key_id)  # does not decrypt
        with self.assertRaises(CiphertextError):
            rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
        self.assertEqual(
            [name for name in os.listdir(os.path.dirname(self.key_path)) if "master" in name],
            ["master.key"],
        )
        open_file_cipher(self.conn, self.key_path)

    def test_failure_after_commit_says_where_the_key_is(self) -> None:
        """A failure once the database is under the new key keeps <path>.new and says plainly
        that the database now uses it."""

        def commit_then_fail(*args: object, **kwargs: object) -> object:
            rotate_master_key(*args, **kwargs)  # type: ignore[arg-type]
            raise StoreError("disk I/O error")

        self.patch(rotation_module, "rotate_master_key", commit_then_fail)
        with self.assertRaises(StoreError) as caught:
            rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
        staged = self.key_path + ".new"
        message = str(caught.exception)
        self.assertIn(f"the database is now encrypted under the NEW key in {staged}", message)
        self.assertIn(f"mv {staged} {self.key_path}", message)
        self.assertIn(self.key_path + ".old-20240102T030405Z", message)
        self.assertTrue(os.path.exists(self.key_path + ".old-20240102T030405Z"))
        os.replace(staged, self.key_path)
        open_file_cipher(self.conn, self.key_path)

    def test_rename_failure_after_commit_says_where_the_key_is(self) -> None:
        """The rename of <path>.new failing (after the commit) names <path>.new as the key."""

        def refuse(source: str, dest: str) -> None:
            raise PermissionError(1, "Operation not permitted")

        self.patch(rotation_module.os, "replace", refuse)
        with self.assertRaises(StoreError) as caught:
            rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
        self.assertIn(
            f"now encrypted under the NEW key in {self.key_path}.new", str(caught.exception)
        )
        self.assertIn("Operation not permitted", str(caught.exception))

    def test_root_rotation_keeps_the_key_owner(self) -> None:
        """Run as root on a key owned by another user (the systemd layout: keycast's key in
        root's directory), the new key and the old key's copy keep that owner, mode 0600."""
        if os.getuid() != 0:
            raise SkipTest("needs root to chown a file to another user")
        os.chown(self.key_path, NOBODY, NOBODY)
        rotation = rotate_master_key_file(self.conn, self.key_path, now=lambda: ROTATED_AT)
        for path in (self.key_path, rotation.old_key_path):
            info = os.stat(path)
            self.assertEqual((info.st_uid, info.st_gid), (NOBODY, NOBODY), path)
            self.assertEqual(stat.S_IMODE(info.st_mode), 0o600, path)

    def test_unwritable_key_directory_says_who_should_run_it(self) -> None:
        """The service user cannot write root's key directory: the rotation refuses before
        anything is written, and says to run it as root."""
        self.patch(os, "access", lambda path, mode: False)
        with self.assertRaises(MasterKeyError) as caught:
            rotate_master_key_file(self.conn, self.key_path)
        self.assertIn("root, with sudo, in the systemd layout", str(caught.exception))
        self.assertEqual(
            [name for name in os.listdir(os.path.dirname(self.key_path)) if "master" in name],
            ["master.key"],
        )

    def test_interrupted_rotation_is_explained(self) -> None:
        """DB rotated but key not renamed: the start error points at <path>.new."""
        new_key = os.urandom(32)
        write_master_key_file(self.key_path + ".new", new_key)
        rotate_master_key(self.conn, self.old, SecretCipher(new_key))
        with self.assertRaises(MasterKeyError) as caught:
            open_file_cipher(self.conn, self.key_path)
        self.assertIn(".new may hold the matching key", str(caught.exception))

    def test_database_older_than_a_rotation_is_explained(self) -> None:
        """The key file does not open a database restored from before a rotation: the error
        (at daemon start as in the CLI) points at the <path>.old-* keys kept beside it."""
        write_master_key_file(self.key_path + ".old-20260101T000000Z", os.urandom(32))
        os.unlink(self.key_path)
        write_master_key_file(self.key_path, os.urandom(32))
        with self.assertRaises(MasterKeyError) as caught:
            open_file_cipher(self.conn, self.key_path)
        self.assertIn(
            f"one of {self.key_path}.old-* may match (try it with --master-key)",
            str(caught.exception),
        )


class BackupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db_path, self.conn = new_database(self.mktemp())
        self.dest = os.path.join(os.path.dirname(self.db_path), "copy.db")
        add_user_key(self.conn, new_cipher(), "alice")

    def test_backup_while_a_writer_is_mid_transaction(self) -> None:
        """The copy holds committed rows only while another connection has a write open."""
        writer = open_database(self.db_path)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO user_keys (name, pubkey, secret_ciphertext, created_at)"
            " VALUES ('bob', 'ff', x'00', 1)"
        )
        backup(self.db_path, self.dest)
        writer.commit()
        copy = sqlite3.connect(self.dest)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual([r[0] for r in copy.execute("SELECT name FROM user_keys")], ["alice"])
        self.assertEqual(self.conn.execute("SELECT count(*) FROM user_keys").fetchone()[0], 2)

    def test_backup_from_open_connection(self) -> None:
        """An open connection can be the source."""
        backup(self.conn, self.dest)
        copy = sqlite3.connect(self.dest)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("SELECT count(*) FROM user_keys").fetchone()[0], 1)

    def test_refuses_to_overwrite(self) -> None:
        """An existing destination is kept unless overwrite is passed; the refusal names the
        CLI's option (--force)."""
        with open(self.dest, "wb") as handle:
            handle.write(b"precious")
        with self.assertRaises(StoreError) as caught:
            backup(self.db_path, self.dest)
        self.assertEqual(
            str(caught.exception),
            f"backup destination {self.dest} exists; remove it or use --force",
        )
        with open(self.dest, "rb") as handle:
            self.assertEqual(handle.read(), b"precious")
        backup(self.db_path, self.dest, overwrite=True)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.dest)))[0], "copy.db")

    def test_copy_is_private_from_creation(self) -> None:
        """Under a umask that would allow 0644, the temp copy is already 0600 when SQLite opens
        it, and so is the final file."""
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        modes: list[int] = []
        connect = sqlite3.connect

        def spy(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            if ".partial-" in str(database):
                modes.append(stat.S_IMODE(os.stat(database).st_mode))
            return connect(database, *args, **kwargs)

        self.patch(sqlite3, "connect", spy)
        backup(self.db_path, self.dest)
        self.assertEqual(modes, [0o600])
        self.assertEqual(stat.S_IMODE(os.stat(self.dest).st_mode), 0o600)

    def test_copy_fsynced_before_rename_and_directory_after(self) -> None:
        """The copy's data is fsynced before it takes the final name, then the directory."""
        events: list[tuple[str, int]] = []
        fsync, replace = os.fsync, os.replace

        def record_fsync(fd: int) -> None:
            info = os.fstat(fd)
            events.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
            fsync(fd)

        def record_replace(source: str, dest: str) -> None:
            events.append(("rename", os.stat(source).st_ino))
            replace(source, dest)

        self.patch(os, "fsync", record_fsync)
        self.patch(os, "replace", record_replace)
        backup(self.conn, self.dest)
        copy, directory = os.stat(self.dest).st_ino, os.stat(os.path.dirname(self.dest)).st_ino
        self.assertEqual(events, [("file", copy), ("rename", copy), ("dir", directory)])

    def test_unwritable_destination_is_a_store_error(self) -> None:
        """A destination directory that refuses the temp file gives one line naming the
        backup, and leaves nothing behind."""

        def refuse(path: str) -> int:
            raise PermissionError(13, "Permission denied")

        self.patch(backup_module, "create_private", refuse)
        with self.assertRaises(StoreError) as caught:
            backup(self.db_path, self.dest)
        self.assertEqual(
            str(caught.exception), f"cannot write backup {self.dest}: Permission denied"
        )
        self.assertFalse(os.path.exists(self.dest))
