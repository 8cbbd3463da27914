"""The ``keycast`` command run as a real process on a temporary database and master key."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Mapping

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.nostr.nip19 import encode_npub, encode_nsec
from keycast_tw.nostr.nip46 import parse_bunker_uri
from keycast_tw.store.crypto import (
    SecretCipher,
    create_master_key_file,
    read_master_key_file,
    relay_identity_aad,
)

RELAY = "wss://relay.example"
_CONFIG_ENV = {
    "DATABASE_PATH", "MASTER_KEY_PATH", "PORT", "USE_GCP_KMS", "BUNKER_RELAYS",
}


def clean_environ() -> dict[str, str]:
    """The test process's environment without any keycast setting that could leak in."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in _CONFIG_ENV and not name.startswith(("KEYCAST_", "GCP_"))
    }


class CliTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.database = os.path.join(self.home, "database", "keycast.db")
        self.master_key = os.path.join(self.home, "master.key")
        self.environ = clean_environ()
        self.environ.update(
            DATABASE_PATH=self.database, MASTER_KEY_PATH=self.master_key, KEYCAST_RELAYS=RELAY
        )

    def keycast(
        self, *args: str, stdin: str = "", env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``keycast ARGS`` (bounded wait) and check it never prints a traceback."""
        result = subprocess.run(
            [sys.executable, "-m", "keycast_tw.cli.main", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.environ, **(env or {})},
            cwd=self.home,
            timeout=60,
        )
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("Traceback", result.stdout)
        return result

    def ok(self, *args: str, stdin: str = "") -> str:
        result = self.keycast(*args, stdin=stdin)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def fails(self, status: int, *args: str, stdin: str = "") -> str:
        """Run a command that must fail with ``status``; return its one-line error."""
        result = self.keycast(*args, stdin=stdin)
        self.assertEqual(result.returncode, status, result.stdout + result.stderr)
        return result.stderr

    def bunker_uri(self, output: str) -> str:
        lines = [line for line in output.splitlines() if line.startswith("bunker://")]
        self.assertEqual(len(lines), 1, output)
        return lines[0]


class InitTests(CliTestCase):
    def test_init_creates_database_and_private_master_key(self) -> None:
        """init creates the directory, the database and a 0600 master key, and says so."""
        output = self.ok("init")
        self.assertIn(f"Created database {self.database}", output)
        self.assertIn(f"Created master key {self.master_key} (mode 0600)", output)
        self.assertIn("Database initialized", output)
        self.assertEqual(stat.S_IMODE(os.stat(self.master_key).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.database).st_mode), 0o600)

    def test_init_is_idempotent(self) -> None:
        """A second init changes nothing and reports what exists."""
        self.ok("init")
        with open(self.master_key, "rb") as handle:
            key = handle.read()
        output = self.ok("init")
        self.assertIn("exists", output)
        self.assertIn("Master key matches the database", output)
        with open(self.master_key, "rb") as handle:
            self.assertEqual(handle.read(), key)

    def test_init_refuses_a_new_key_for_a_database_with_keys(self) -> None:
        """A lost master key is not silently replaced by a new one that cannot decrypt."""
        self.ok("init")
        self.ok("key", "add", "alice")
        os.unlink(self.master_key)
        error = self.fails(1, "init")
        self.assertIn("restore that key file", error)
        self.assertFalse(os.path.exists(self.master_key))

    def test_commands_need_init(self) -> None:
        """Before init, commands fail with exit 1 and tell the operator to run init."""
        self.assertIn("run `keycast init`", self.fails(1, "key", "list"))
        self.assertFalse(os.path.exists(self.database))


class KeyTests(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("init")

    def test_generate_and_list(self) -> None:
        """key add prints the new npub; key list shows it (table and JSON)."""
        output = self.ok("key", "add", "alice")
        npub = output.splitlines()[-1]
        self.assertTrue(npub.startswith("npub1"), output)
        self.assertIn(npub, self.ok("key", "list"))
        listed = json.loads(self.ok("key", "list", "--json"))
        self.assertEqual([(k["name"], k["npub"]) for k in listed], [("alice", npub)])

    def test_import_from_stdin(self) -> None:
        """--nsec - reads the key from stdin and never prints it."""
        secret = SecretKey.generate()
        nsec = encode_nsec(secret.to_bytes())
        result = self.keycast("key", "add", "bob", "--nsec", "-", stdin=nsec + "\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[-1], encode_npub(secret.pubkey_hex))
        self.assertNotIn(nsec, result.stdout + result.stderr)
        self.assertEqual(result.stderr, "")

    def test_import_from_argument_warns(self) -> None:
        """A key given on the command line works, with a warning about shell history."""
        secret = SecretKey.generate()
        result = self.keycast("key", "add", "bob", "--nsec", secret.to_bytes().hex())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("shell history", result.stderr)
        self.assertNotIn(secret.to_bytes().hex(), result.stdout + result.stderr)

    def test_mistakes(self) -> None:
        """Bad keys, empty stdin and duplicate names are usage errors with one clear line."""
        self.assertIn("nsec is not valid", self.fails(2, "key", "add", "b", "--nsec", "nsec1xx"))
        self.assertIn("nothing on stdin", self.fails(2, "key", "add", "b", "--nsec", "-"))
        self.ok("key", "add", "alice")
        self.assertIn("already exists", self.fails(2, "key", "add", "alice"))
        self.assertIn("cannot be a number", self.fails(2, "key", "add", "42"))


class AuthorizationTests(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("init")
        self.ok("key", "add", "alice")

    def test_authorize_list_revoke(self) -> None:
        """The URI is printed once; listings and the database never show its secret."""
        output = self.ok("authorize", "alice", "--relay", RELAY, "--label", "phone")
        uri = parse_bunker_uri(self.bunker_uri(output))
        secret = uri.secret
        assert secret is not None
        self.assertEqual(uri.relays, (RELAY,))
        self.assertIn("  policy: none (full access); max uses: 1;", output)
        listing = self.ok("authorizations")
        self.assertIn("live", listing)
        self.assertIn("phone", listing)
        records = json.loads(self.ok("authorizations", "--json"))
        self.assertEqual(records[0]["bunker_pubkey"], uri.pubkey)
        self.assertEqual(records[0]["max_uses"], 1)
        for text in (listing, json.dumps(records), self._database_bytes().decode("latin-1")):
            self.assertNotIn(secret, text)
        auth_id = str(records[0]["id"])
        self.assertIn("Revoked authorization #" + auth_id, self.ok("revoke", auth_id))
        self.assertIn("already revoked", self.ok("revoke", auth_id))
        self.assertIn("revoked", self.ok("authorizations"))

    def test_default_relays_and_options(self) -> None:
        """Without --relay the daemon's relays are advertised; the options are stored."""
        self.ok("policy", "add", "social", "--allow-kinds", "1,7")
        output = self.ok(
            "authorize", "alice", "--policy", "social", "--max-uses", "unlimited",
            "--expires", "30d", "--same-key",
        )
        uri = parse_bunker_uri(self.bunker_uri(output))
        self.assertEqual(uri.relays, (RELAY,))
        self.assertIn("  policy: social; max uses: unlimited;", output)
        record = json.loads(self.ok("authorizations", "--json"))[0]
        self.assertEqual(record["policy"], "social")
        self.assertIsNone(record["max_uses"])
        self.assertTrue(record["same_key"])
        self.assertEqual(record["bunker_pubkey"], record["user_pubkey"])
        self.assertGreater(record["expires_at"], record["created_at"] + 29 * 86400)

    def test_foreign_relay_warning(self) -> None:
        """Advertising a relay the daemon does not listen on is allowed with a warning."""
        result = self.keycast("authorize", "alice", "--relay", "wss://elsewhere.example")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("not one of the daemon's relays", result.stderr)

    def test_qr(self) -> None:
        """--qr draws a QR code below the URI."""
        output = self.ok("authorize", "alice", "--qr")
        after = output.split(self.bunker_uri(output), 1)[1]
        self.assertGreater(len(after.splitlines()), 10)
        self.assertTrue(any(ch in after for ch in "█▀▄"), after)

    def test_mistakes(self) -> None:
        """Unknown keys, bad relays, bad WHEN and bad ids are usage errors without traces."""
        self.assertIn("no key 'bob'", self.fails(2, "authorize", "bob"))
        self.assertIn("ws://", self.fails(2, "authorize", "alice", "--relay", "https://x"))
        self.assertIn("--expires", self.fails(2, "authorize", "alice", "--expires", "soon"))
        self.assertIn("in the past", self.fails(2, "authorize", "alice", "--expires", "2001-01-01"))
        self.assertIn("unlimited", self.fails(2, "authorize", "alice", "--max-uses", "0"))
        self.assertIn("no policy", self.fails(2, "authorize", "alice", "--policy", "nope"))
        self.assertIn("invalid int", self.fails(2, "revoke", "first"))
        self.assertIn("no authorization #9", self.fails(2, "revoke", "9"))

    def _database_bytes(self) -> bytes:
        data = b""
        for suffix in ("", "-wal"):
            path = self.database + suffix
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    data += handle.read()
        return data


class PolicyTests(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("init")

    def test_add_and_list(self) -> None:
        """policy add combines the flags; policy list shows them."""
        output = self.ok(
            "policy", "add", "social", "--allow-kinds", "1,7", "--allow-kinds", "3",
            "--block-words", "spam,scam", "--encrypt-to-self",
        )
        self.assertIn("Created policy 'social'", output)
        listing = self.ok("policy", "list")
        self.assertIn("allowed_kinds 1,3,7; content_filter spam,scam; encrypt_to_self", listing)
        policies = json.loads(self.ok("policy", "list", "--json"))
        self.assertEqual(policies[0]["name"], "social")

    def test_mistakes(self) -> None:
        """Policies without permissions or with bad kinds are refused."""
        self.assertIn("at least one permission", self.fails(2, "policy", "add", "empty"))
        self.assertIn("comma list", self.fails(2, "policy", "add", "p", "--allow-kinds", "x"))
        self.assertIn("0..65535", self.fails(2, "policy", "add", "p", "--allow-kinds", "70000"))
        self.assertIn(
            "cannot be combined",
            self.fails(2, "policy", "add", "p", "--full-access", "--decrypt-only"),
        )


class MaintenanceTests(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("init")
        self.ok("key", "add", "alice")

    def test_backup(self) -> None:
        """backup writes a private, complete copy and refuses to overwrite without --force."""
        dest = os.path.join(self.home, "copy.db")
        self.assertIn("Backed up", self.ok("backup", dest))
        self.assertEqual(stat.S_IMODE(os.stat(dest).st_mode), 0o600)
        copy = sqlite3.connect(dest)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("SELECT name FROM user_keys").fetchall(), [("alice",)])
        self.assertIn("exists; remove it or use --force", self.fails(1, "backup", dest))
        self.ok("backup", dest, "--force")

    def test_rotate_master_key(self) -> None:
        """rotate-master-key replaces the key file (0600), keeps the old key under a name of its
        own that it prints, and keys still work; a second rotation keeps both old keys."""
        with open(self.master_key, "rb") as handle:
            old = handle.read()
        output = self.ok("rotate-master-key")
        self.assertIn("Re-encrypted 1 user keys", output)
        with open(self.master_key, "rb") as handle:
            self.assertNotEqual(handle.read(), old)
        (kept,) = self.old_keys()
        self.assertIn(f"The previous key is in {kept}:", output)
        self.assertIn("switches to the new key at its next reload", output)
        with open(kept, "rb") as handle:
            self.assertEqual(handle.read(), old)
        self.assertEqual(stat.S_IMODE(os.stat(self.master_key).st_mode), 0o600)
        self.bunker_uri(self.ok("authorize", "alice"))
        self.ok("rotate-master-key")
        self.assertEqual(len(self.old_keys()), 2)
        self.assertIn(kept, self.old_keys())

    def old_keys(self) -> list[str]:
        """The kept old keys, <master key>.old-<UTC time>[-N]."""
        prefix = os.path.basename(self.master_key) + ".old-"
        return sorted(
            os.path.join(self.home, name)
            for name in os.listdir(self.home)
            if name.startswith(prefix)
        )

    def restore(self, copy: str) -> None:
        """Put backup ``copy`` in place of the database, as a restore does."""
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.database + suffix):
                os.unlink(self.database + suffix)
        shutil.copyfile(copy, self.database)

    def test_restored_pre_rotation_backup_points_at_the_old_keys(self) -> None:
        """A database older than a rotation does not open with the current key; the error says
        that one of the kept <key>.old-* keys may, and that key does open it."""
        copy = os.path.join(self.home, "before.db")
        self.ok("backup", copy)
        self.ok("rotate-master-key")
        self.restore(copy)
        hint = (
            "; if this database is older than a key rotation, one of "
            f"{self.master_key}.old-* may match"
        )
        for command in (("key", "add", "bob"), ("authorize", "alice"), ("rotate-master-key",)):
            error = self.fails(1, *command)
            self.assertIn("master key does not match this database" + hint, error)
            self.assertEqual(error.count("\n"), 1, error)
        (old,) = self.old_keys()
        result = self.keycast("identity", "--master-key", old)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_wrong_key_without_old_keys_has_no_rotation_hint(self) -> None:
        """With no <key>.old-* beside the key there is nothing to point at."""
        os.unlink(self.master_key)
        create_master_key_file(self.master_key)
        error = self.fails(1, "key", "add", "bob")
        self.assertIn("master key does not match this database", error)
        self.assertNotIn(".old-", error)

    def test_master_key_problems_are_operational_errors(self) -> None:
        """A readable-by-others or missing master key fails with exit 1 and the remedy."""
        os.chmod(self.master_key, 0o644)
        self.assertIn("chmod 600", self.fails(1, "key", "add", "bob"))
        os.unlink(self.master_key)
        self.assertIn("does not exist", self.fails(1, "authorize", "alice"))


class IdentityTests(CliTestCase):
    def stored_identity(self) -> tuple[str, bytes]:
        """(pubkey, secret) of the relay identity row, decrypted with the current master key."""
        conn = sqlite3.connect(self.database)
        self.addCleanup(conn.close)
        row = conn.execute("SELECT pubkey, secret_ciphertext FROM relay_identity").fetchone()
        pubkey, blob = row
        cipher = SecretCipher(read_master_key_file(self.master_key))
        return pubkey, cipher.decrypt(blob, relay_identity_aad(pubkey))

    def test_init_creates_it_and_identity_prints_it(self) -> None:
        """init creates the relay identity; `identity` prints its npub and hex, never the secret."""
        init = self.ok("init")
        pubkey, secret = self.stored_identity()
        self.assertIn(f"Relay AUTH identity {encode_npub(pubkey)}", init)
        output = self.ok("identity")
        self.assertEqual(output.splitlines(), [f"npub: {encode_npub(pubkey)}", f"hex:  {pubkey}"])
        self.assertEqual(
            json.loads(self.ok("identity", "--json")),
            {"npub": encode_npub(pubkey), "pubkey": pubkey},
        )
        for printed in (init, output):
            self.assertNotIn(secret.hex(), printed)
            self.assertNotIn(encode_nsec(secret), printed)
        self.ok("init")
        self.assertEqual(self.stored_identity(), (pubkey, secret))

    def test_survives_rotation(self) -> None:
        """rotate-master-key re-encrypts the identity: same pubkey, readable under the new key."""
        self.ok("init")
        before = self.stored_identity()
        self.assertIn("and the relay identity", self.ok("rotate-master-key"))
        self.assertEqual(self.stored_identity(), before)
        self.assertIn(before[0], self.ok("identity"))

    def test_needs_init(self) -> None:
        """Without a database, identity fails with exit 1 and creates nothing."""
        self.assertIn("run `keycast init`", self.fails(1, "identity"))
        self.assertFalse(os.path.exists(self.database))


class UsageTests(CliTestCase):
    def test_help(self) -> None:
        """--help lists the commands; a command's --help explains its options."""
        output = self.ok("--help")
        for command in ("init", "key", "authorize", "authorizations", "revoke", "policy",
                        "backup", "rotate-master-key", "identity", "status", "check"):
            self.assertIn(command, output)
        self.assertIn("DATABASE_PATH", output)
        self.assertIn("WHEN is a duration", self.ok("authorize", "--help"))

    def test_usage_errors(self) -> None:
        """No command, an unknown command or a bad environment value exit 2 with a message."""
        self.fails(2)
        self.fails(2, "frobnicate")
        result = self.keycast("key", "list", env={"KEYCAST_RELAYS": "https://relay.example"})
        self.assertEqual(result.returncode, 2)
        self.assertIn("KEYCAST_RELAYS", result.stderr)

    def test_global_options_after_the_command(self) -> None:
        """--database works after the command name and beats DATABASE_PATH."""
        other = os.path.join(self.home, "other.db")
        self.assertIn(other, self.fails(1, "key", "list", "--database", other))
        self.ok("--database", other, "init")
        self.assertIn(other, self.ok("init", "--database", other))
