"""Migrations, change_seq triggers and the mapping of SQLite failures to one-line StoreErrors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.store.db import (
    database_uri,
    mapped_errors,
    migrate,
    migrations,
    open_database,
    schema_version,
    split_statements,
    transaction,
)
from keycast_tw.store.errors import (
    DatabaseCorrupt,
    DatabaseFull,
    DatabaseLocked,
    DatabaseMissing,
    DatabaseReadOnly,
    StoreError,
)
from tests.test_store_fixtures import (
    add_authorization,
    add_policy,
    add_user_key,
    change_seq,
    new_cipher,
    new_database,
)

TABLES = {
    "master_key_info",
    "user_keys",
    "policies",
    "policy_permissions",
    "authorizations",
    "client_sessions",
    "activity_log",
    "seen_requests",
    "change_counter",
}


class MigrationTests(SynchronousTestCase):
    def test_fresh_database_has_every_table(self) -> None:
        """A new database gets every contract table, the latest user_version and WAL mode."""
        _, conn = new_database(self.mktemp())
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        self.assertTrue(names >= TABLES, TABLES - names)
        self.assertIn("authorizations_change_seq", names)
        self.assertEqual(schema_version(conn), migrations()[-1].version)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        self.assertEqual(conn.execute("SELECT value FROM change_counter").fetchone()[0], 0)

    def test_reopen_is_a_no_op(self) -> None:
        """Reopening an up-to-date database applies nothing and keeps the data."""
        path, conn = new_database(self.mktemp())
        add_user_key(conn, new_cipher(), "alice")
        conn.close()
        again = open_database(path)
        self.assertEqual(migrate(again), 0)
        self.assertEqual(again.execute("SELECT count(*) FROM user_keys").fetchone()[0], 1)

    def test_migrations_are_numbered_and_split(self) -> None:
        """Shipped migrations are ordered from 1 and split into statements, triggers whole."""
        found = migrations()
        self.assertEqual([m.version for m in found], list(range(1, len(found) + 1)))
        statements = list(split_statements(found[0].sql))
        triggers = [s for s in statements if s.startswith("CREATE TRIGGER")]
        self.assertEqual(len(triggers), 6)
        self.assertTrue(all(s.endswith("END;") for s in triggers))

    def test_failed_migration_leaves_previous_version(self) -> None:
        """A migration that fails half way rolls back, including user_version."""
        path = os.path.join(self.mktemp(), "x.db")
        os.makedirs(os.path.dirname(path))
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE user_keys (id INTEGER)")  # clashes with migration 1
        conn.commit()
        with self.assertRaises(StoreError):
            open_database(path)
        self.assertEqual(schema_version(conn), 0)
        self.assertEqual(
            conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'policies'").fetchone(),
            (0,),
        )


class ChangeSeqTriggerTests(SynchronousTestCase):
    def setUp(self) -> None:
        _, self.conn = new_database(self.mktemp())
        self.cipher = new_cipher()
        self.key_id, _ = add_user_key(self.conn, self.cipher, "alice")

    def changed_since(self, last: int) -> set[int]:
        rows = self.conn.execute(
            "SELECT id FROM authorizations WHERE change_seq > ? ORDER BY change_seq", (last,)
        )
        return {row[0] for row in rows}

    def test_insert_bumps(self) -> None:
        """Each INSERT gets a new, higher change_seq."""
        first, _ = add_authorization(self.conn, self.cipher, self.key_id)
        second, _ = add_authorization(self.conn, self.cipher, self.key_id)
        self.assertGreater(change_seq(self.conn, second), change_seq(self.conn, first) > 0)
        self.assertEqual(self.changed_since(change_seq(self.conn, first)), {second})

    def test_revoke_bumps(self) -> None:
        """An UPDATE (revoke) moves the row past the last seen change_seq."""
        auth_id, _ = add_authorization(self.conn, self.cipher, self.key_id)
        other, _ = add_authorization(self.conn, self.cipher, self.key_id)
        last = change_seq(self.conn, other)
        self.conn.execute("UPDATE authorizations SET revoked_at = 5 WHERE id = ?", (auth_id,))
        self.conn.commit()
        self.assertEqual(self.changed_since(last), {auth_id})

    def test_policy_permission_changes_bump_users_of_the_policy(self) -> None:
        """Insert, update and delete of a permission, and a rename, bump the policy's users only."""
        policy = add_policy(self.conn, "p", [("allowed_kinds", '{"allowed_kinds":[1]}')])
        user, _ = add_authorization(self.conn, self.cipher, self.key_id, policy_id=policy)
        bystander, _ = add_authorization(self.conn, self.cipher, self.key_id)
        statements = [
            ("INSERT INTO policy_permissions (policy_id, identifier) VALUES (?, 'decrypt_only')",),
            ("UPDATE policy_permissions SET config = '{}' WHERE policy_id = ?",),
            ("DELETE FROM policy_permissions WHERE identifier = 'decrypt_only' AND policy_id = ?",),
            ("UPDATE policies SET name = 'renamed' WHERE id = ?",),
        ]
        for (sql,) in statements:
            last = self.conn.execute("SELECT value FROM change_counter").fetchone()[0]
            self.conn.execute(sql, (policy,))
            self.conn.commit()
            self.assertEqual(self.changed_since(last), {user}, sql)
        self.assertLess(change_seq(self.conn, bystander), change_seq(self.conn, user))

    def test_reencryption_does_not_bump(self) -> None:
        """Re-encrypting a bunker secret (rotation) is not a change the daemon must reload."""
        auth_id, _ = add_authorization(self.conn, self.cipher, self.key_id)
        before = change_seq(self.conn, auth_id)
        self.conn.execute(
            "UPDATE authorizations SET bunker_secret_ciphertext = x'00' WHERE id = ?", (auth_id,)
        )
        self.conn.commit()
        self.assertEqual(change_seq(self.conn, auth_id), before)


class OpenErrorTests(SynchronousTestCase):
    def test_missing(self) -> None:
        """Without create, a missing file is DatabaseMissing naming `keycast init`; no file made."""
        path = os.path.join(self.mktemp(), "nope.db")
        with self.assertRaises(DatabaseMissing) as caught:
            open_database(path)
        self.assertIn("keycast init", str(caught.exception))
        self.assertFalse(os.path.exists(path))

    def test_garbage_bytes_are_corrupt(self) -> None:
        """A file of random bytes is DatabaseCorrupt with a one-line message."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "bad.db")
        with open(path, "wb") as handle:
            handle.write(os.urandom(8192))
        with self.assertRaises(DatabaseCorrupt) as caught:
            open_database(path)
        self.assertIn("not a database", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_locked(self) -> None:
        """A second connection holding BEGIN EXCLUSIVE beyond busy_timeout is DatabaseLocked."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "locked.db")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        self.addCleanup(holder.close)
        with self.assertRaises(DatabaseLocked) as caught:
            open_database(path, busy_timeout_ms=20)
        self.assertIn("locked by another process", str(caught.exception))

    def test_locked_writer_at_run_time(self) -> None:
        """On an open WAL database a writer blocked past busy_timeout gets DatabaseLocked."""
        path, conn = new_database(self.mktemp())
        conn.execute("PRAGMA busy_timeout = 20")
        holder = open_database(path)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        with self.assertRaises(DatabaseLocked), mapped_errors(path), transaction(conn):
            conn.execute("INSERT INTO seen_requests VALUES ('a', 1)")

    def test_full(self) -> None:
        """SQLITE_FULL (here: max_page_count reached) is DatabaseFull, and rolled back."""
        path, conn = new_database(self.mktemp())
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with self.assertRaises(DatabaseFull), mapped_errors(path), transaction(conn):
            conn.executemany(
                "INSERT INTO seen_requests VALUES (?, 1)",
                ((os.urandom(32).hex(),) for _ in range(5000)),
            )
        self.assertEqual(conn.execute("SELECT count(*) FROM seen_requests").fetchone()[0], 0)

    def test_read_only_connection(self) -> None:
        """A write refused by SQLite as read-only is DatabaseReadOnly."""
        path, conn = new_database(self.mktemp())
        conn.close()
        reader = sqlite3.connect(
            database_uri(path, create=False).replace("mode=rw", "mode=ro"), uri=True
        )
        self.addCleanup(reader.close)
        with self.assertRaises(DatabaseReadOnly), mapped_errors(path):
            reader.execute("INSERT INTO seen_requests VALUES ('a', 1)")

    def test_read_only_directory(self) -> None:
        """Creating a database on a read-only directory is DatabaseReadOnly."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.assertEqual(
            _open_read_only(directory, os.path.join(directory, "new.db"), create=True),
            "DatabaseReadOnly",
        )

    def test_read_only_file(self) -> None:
        """An existing database on a read-only directory is DatabaseReadOnly at open.

        (In a writable directory SQLite's WAL mode keeps writing to the -wal file, so the
        file mode alone does not make a database read-only.)
        """
        path, conn = new_database(self.mktemp())
        conn.close()
        path = os.path.abspath(path)
        self.assertEqual(_open_read_only(os.path.dirname(path), path), "DatabaseReadOnly")


def _open_read_only(directory: str, path: str, *, create: bool = False) -> str:
    """Make ``directory`` read-only, run open_database(path) in a child, return the name of
    what it raised ("ok" when nothing).

    Root (as CI runs) writes through any file mode, so there the child gets a private mount
    namespace in which ``directory`` is a read-only bind mount, as on a read-only volume;
    otherwise the directory's mode is 0555.
    """
    code = (
        "import sys\n"
        "from keycast_tw.store.db import open_database\n"
        "try:\n"
        "    open_database(sys.argv[1], create=sys.argv[2] == '1').close()\n"
        "    print('ok')\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
    )
    python = [sys.executable, "-c", code, path, "1" if create else "0"]
    if os.geteuid() == 0:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        argv = ["unshare", "--mount", "sh", "-c", script, directory, *python]
    else:
        os.chmod(directory, 0o555)  # noqa: S103 (read-only for everyone is the point)
        argv = python
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": REPO},
        )
    finally:
        os.chmod(directory, 0o755)  # noqa: S103 (back to the usual mode for clean-up)
    return result.stdout.strip() or result.stderr.strip()


REPO = str(Path(__file__).resolve().parents[1])
