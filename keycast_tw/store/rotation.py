"""Master key rotation: every stored key re-encrypted in one transaction, all or nothing.

File procedure (``rotate_master_key_file``), ordered so that no crash loses the key that opens
the database:
1. the new key is written to ``<path>.new`` (0600, fsync);
2. one transaction re-encrypts user keys, bunker keys, the relay identity and key_check, then
   commits;
3. the current file is copied to ``<path>.old`` (kept: it opens backups taken before rotation);
4. ``<path>.new`` is renamed over ``<path>`` (atomic).
A crash between 2 and 4 leaves the database under the new key and ``<path>.new`` beside it;
start-up then says "master key does not match this database; a rotation was interrupted:
<path>.new may hold the matching key".

A running daemon keeps working: keys it already loaded hold their old ciphertext and the old
cipher, and re-encryption does not bump change_seq; restart it to switch to the new key.
Cloud KMS: rotate the KMS key itself (Cloud KMS keeps old versions for decrypt); moving a
database between the file key and KMS is not provided.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple

from keycast_tw.store.crypto import (
    KIND_FILE,
    SecretCipher,
    bunker_key_aad,
    connect_secret_aad,
    generate_master_key,
    open_file_cipher,
    read_master_key_file,
    relay_identity_aad,
    user_key_aad,
    write_master_key_file,
)
from keycast_tw.store.db import transaction
from keycast_tw.store.errors import CiphertextError, MasterKeyError, StoreError


class RotationResult(NamedTuple):
    user_keys: int
    bunker_keys: int
    relay_identities: int  # 0 before the first `keycast init` or daemon start, else 1
    connect_secrets: int = 0  # queued nostrconnect responses (keycast_tw.store.connects)


def rotate_master_key(
    conn: sqlite3.Connection,
    old_cipher: SecretCipher,
    new_cipher: SecretCipher,
    *,
    kind: str = KIND_FILE,
    wrapped_data_key: bytes | None = None,
    now: int | None = None,
) -> RotationResult:
    """Re-encrypt every secret from ``old_cipher`` to ``new_cipher`` in ONE transaction.

    Any failure (a row that does not decrypt, a full disk) rolls everything back, so the
    database is never half under one key and half under another.
    """
    created = int(time.time()) if now is None else now
    with transaction(conn):
        info = conn.execute("SELECT key_check FROM master_key_info WHERE id = 1").fetchone()
        if info is not None and not old_cipher.matches(bytes(info[0])):
            raise MasterKeyError("master key does not match this database")
        users = _reencrypt(
            conn,
            old_cipher,
            new_cipher,
            user_key_aad,
            "SELECT id, pubkey, secret_ciphertext FROM user_keys",
            "UPDATE user_keys SET secret_ciphertext = ? WHERE id = ?",
            "user key",
        )
        bunkers = _reencrypt(
            conn,
            old_cipher,
            new_cipher,
            bunker_key_aad,
            "SELECT id, bunker_pubkey, bunker_secret_ciphertext FROM authorizations"
            " WHERE bunker_secret_ciphertext IS NOT NULL",
            "UPDATE authorizations SET bunker_secret_ciphertext = ? WHERE id = ?",
            "authorization",
        )
        identities = _reencrypt(
            conn,
            old_cipher,
            new_cipher,
            relay_identity_aad,
            "SELECT id, pubkey, secret_ciphertext FROM relay_identity",
            "UPDATE relay_identity SET secret_ciphertext = ? WHERE id = ?",
            "relay identity",
        )
        # Bound to "<authorization id>:<client pubkey>" (crypto.connect_secret_binding).
        connects = _reencrypt(
            conn,
            old_cipher,
            new_cipher,
            connect_secret_aad,
            "SELECT authorization_id, authorization_id || ':' || client_pubkey,"
            " secret_ciphertext FROM pending_connect_responses",
            "UPDATE pending_connect_responses SET secret_ciphertext = ?"
            " WHERE authorization_id = ?",
            "pending connect response of authorization",
        )
        conn.execute(
            "INSERT OR REPLACE INTO master_key_info (id, kind, wrapped_data_key, key_check,"
            " created_at) VALUES (1, ?, ?, ?, ?)",
            (kind, wrapped_data_key, new_cipher.key_check(), created),
        )
    return RotationResult(users, bunkers, identities, connects)


def rotate_master_key_file(conn: sqlite3.Connection, path: str) -> RotationResult:
    """Rotate the file master key at ``path`` (see the module docstring for the order)."""
    old_cipher = open_file_cipher(conn, path)
    old_key = read_master_key_file(path)
    new_key = generate_master_key()
    staged = f"{path}.new"
    if os.path.exists(staged):
        raise MasterKeyError(
            f"{staged} exists (an interrupted rotation?); check which key opens the database"
        )
    write_master_key_file(staged, new_key)
    try:
        result = rotate_master_key(conn, old_cipher, SecretCipher(new_key))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise
    write_master_key_file(f"{path}.old", old_key)
    try:
        os.replace(staged, path)
    except OSError as error:
        raise StoreError(
            f"database now uses the key in {staged} but it could not be renamed to {path}:"
            f" {error.strerror}; rename it by hand"
        ) from None
    return result


def _reencrypt(
    conn: sqlite3.Connection,
    old_cipher: SecretCipher,
    new_cipher: SecretCipher,
    aad_for: Callable[[str], bytes],
    select: str,
    update: str,
    what: str,
) -> int:
    """Re-encrypt every (id, pubkey, blob) row ``select`` yields; returns the count."""
    rows = conn.execute(select).fetchall()
    for row_id, pubkey, blob in rows:
        aad = aad_for(pubkey)
        try:
            secret = old_cipher.decrypt(bytes(blob), aad)
        except CiphertextError:
            raise CiphertextError(
                f"{what} {row_id} does not decrypt with the current key"
            ) from None
        conn.execute(update, (new_cipher.encrypt(secret, aad), row_id))
    return len(rows)
