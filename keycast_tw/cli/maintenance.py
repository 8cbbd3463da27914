"""``keycast init``, ``backup`` and ``rotate-master-key``: the database and its master key."""

from __future__ import annotations

import argparse
import os

from keycast_tw.cli.context import EXIT_OK, CliError, Context
from keycast_tw.cli.parsing import Commands, add_command
from keycast_tw.nostr.nip19 import encode_npub
from keycast_tw.store.backup import backup
from keycast_tw.store.crypto import create_master_key_file, read_key_info
from keycast_tw.store.db import schema_version
from keycast_tw.store.identity import load_or_create_relay_identity
from keycast_tw.store.rotation import rotate_master_key_file


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    add_command(
        commands, "init", common, init_database,
        help="create the database and the master key if missing",
        description="Create the database directory, the database (with its schema) and a "
        "random master key file (mode 0600) when they do not exist yet. Safe to run again: "
        "nothing existing is changed, and the master key is checked against the database.",
    )
    copy = add_command(
        commands, "backup", common, backup_database,
        help="copy the live database to DEST",
        description="Copy the database with SQLite's online backup API; the daemon may keep "
        "running. The copy is encrypted under the same master key: keep the key too, apart "
        "from the copy.",
    )
    copy.add_argument("dest", metavar="DEST", help="file to create")
    copy.add_argument("--force", action="store_true", help="replace DEST if it exists")
    add_command(
        commands, "rotate-master-key", common, rotate_key,
        help="re-encrypt every key under a new master key",
        description="Generate a new master key file and re-encrypt every stored key under it in "
        "one transaction; the previous key is kept as <master key>.old-<UTC time> (never "
        "overwritten: each one opens the backups taken before its rotation). A running daemon "
        "switches to the new key at its next reload. With Cloud KMS, rotate the KMS key in "
        "Cloud KMS instead.",
    )


def init_database(ctx: Context, args: argparse.Namespace) -> int:
    config = ctx.config
    existed = os.path.exists(config.database_path)
    conn = ctx.database(create=True)
    if not existed:
        os.chmod(config.database_path, 0o600)
    version = schema_version(conn)
    if existed:
        ctx.out(f"Database {config.database_path} exists (schema version {version})")
    else:
        ctx.out(f"Created database {config.database_path} (schema version {version})")
    if config.kms is None:
        path = config.master_key_path
        if not os.path.exists(path) and _holds_keys(ctx):
            raise CliError(
                f"master key file {path} does not exist but database {config.database_path} "
                "already holds keys encrypted under a master key; restore that key file "
                "(a new key could not decrypt them)"
            )
        if create_master_key_file(path):
            ctx.out(f"Created master key {path} (mode 0600); back it up apart from the database")
        else:
            ctx.out(f"Master key {path} exists")
        ctx.cipher()
        ctx.out("Master key matches the database")
    else:
        ctx.cipher()
        ctx.out(f"Data key is protected by Cloud KMS key {config.kms.key_resource}")
    identity = load_or_create_relay_identity(ctx.database(), ctx.cipher(), clock=ctx.clock)
    ctx.out(f"Relay AUTH identity {encode_npub(identity.pubkey_hex)} (see `keycast identity`)")
    ctx.out("Database initialized")
    return EXIT_OK


def _holds_keys(ctx: Context) -> bool:
    conn = ctx.database()
    if read_key_info(conn) is not None:
        return True
    return conn.execute("SELECT 1 FROM user_keys LIMIT 1").fetchone() is not None


def backup_database(ctx: Context, args: argparse.Namespace) -> int:
    backup(ctx.database(), args.dest, overwrite=args.force)  # created 0600
    ctx.out(f"Backed up {ctx.config.database_path} to {args.dest}")
    return EXIT_OK


def rotate_key(ctx: Context, args: argparse.Namespace) -> int:
    config = ctx.config
    if config.kms is not None:
        raise CliError(
            "the database uses Cloud KMS: rotate the KMS key in Cloud KMS (old versions keep "
            "decrypting); there is no file master key to rotate"
        )
    rotation = rotate_master_key_file(ctx.database(), config.master_key_path, now=ctx.clock)
    result = rotation.counts
    identity = " and the relay identity" if result.relay_identities else ""
    if result.connect_secrets:
        identity += f" (and {result.connect_secrets} queued connect responses)"
    ctx.out(
        f"Re-encrypted {result.user_keys} user keys, {result.bunker_keys} bunker keys{identity} "
        f"under a new master key in {config.master_key_path}"
    )
    ctx.out(
        f"The previous key is in {rotation.old_key_path}: it opens backups taken before "
        "now; keep it as long as those backups, stored apart from them"
    )
    ctx.out("A running daemon switches to the new key at its next reload (no restart needed)")
    return EXIT_OK
