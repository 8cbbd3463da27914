"""Master key rotation: every stored key re-encrypted in one transaction, all or nothing.

File procedure (``rotate_master_key_file``), ordered so that no crash loses a key that opens
the database or one of its backups:
1. the new key is written to ``<path>.new`` (0600, fsync; never over an existing file);
2. the current key is copied to ``<path>.old-<UTC time>`` (0600, fsync), e.g.
   ``master.key.old-20250101T020000Z``; it is never written over an earlier old key, since each
   one opens the backups taken before the rotation that retired it;
3. one transaction re-encrypts user keys, bunker keys, the relay identity, queued connect
   secrets and key_check, then commits;
4. ``<path>.new`` is renamed over ``<path>`` (atomic, directory fsynced).
Both new files get the current key file's owner and group, so that a rotation run as root
(the systemd layout: the key's directory is root's) leaves a key the daemon's user can read.
A failure before the commit removes the two new files (the database still uses ``<path>``).
A crash or failure after it leaves the database under the key in ``<path>.new``; the error
says so, and start-up says "master key does not match this database; a rotation was
interrupted: <path>.new may hold the matching key".

A running daemon keeps working: keys it already loaded hold their old ciphertext and the old
cipher, and re-encryption does not bump change_seq; its next reload sees the new key_check and
reads the key file again (keycast_tw.store.service), which is why the new file must keep the
owner the daemon reads it as.
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
    MasterKeyFileExists,
    SecretCipher,
    bunker_key_aad,
    connect_secret_aad,
    fsync_directory,
    generate_master_key,
    open_file_cipher,
    read_key_info,
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


class FileRotationResult(NamedTuple):
    counts: RotationResult
    old_key_path: str  # where the retired key was kept (<path>.old-<UTC time>)


#: How many ``-N`` suffixes to try when old keys of the same second exist.
_OLD_KEY_ATTEMPTS = 100


def rotate_master_key_file(
    conn: sqlite3.Connection, path: str, *, now: Callable[[], float] = time.time
) -> FileRotationResult:
    """Rotate the file master key at ``path`` (see the module docstring for the order)."""
    old_cipher = open_file_cipher(conn, path)
    old_key = read_master_key_file(path)
    owner = _owner_of(path)
    new_key = generate_master_key()
    new_cipher = SecretCipher(new_key)
    staged = f"{path}.new"
    try:
        write_master_key_file(staged, new_key, replace=False, owner=owner)
    except MasterKeyFileExists:
        raise MasterKeyError(
            f"{staged} exists (an interrupted rotation?); check which key opens the database"
        ) from None
    try:
        kept = _keep_old_key(path, old_key, now(), owner)
    except BaseException:
        _remove(staged)
        raise
    try:
        counts = rotate_master_key(conn, old_cipher, new_cipher)
    except BaseException as error:
        committed = _abandon(conn, new_cipher, staged, kept)
        if committed is not False:
            raise _unfinished(path, kept, _describe(error), committed) from None
        raise
    _install(staged, path, kept)
    return FileRotationResult(counts, kept)


def old_key_name(path: str, when: float, attempt: int = 1) -> str:
    """``<path>.old-<UTC time>``, sortable by time; later attempts add ``-2``, ``-3``..."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return f"{path}.old-{stamp}" if attempt == 1 else f"{path}.old-{stamp}-{attempt}"


def _owner_of(path: str) -> tuple[int, int]:
    """The key file's (uid, gid), which the new key and the old key's copy get too, and a
    clear refusal when its directory is not writable (the usual mistake: rotating as the
    service user in the systemd layout, where the key sits in root's /opt/keycast)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK):
        raise MasterKeyError(
            f"cannot write to {directory}, where the new key and a copy of the old one go: run"
            " rotate-master-key as a user who can (root, with sudo, in the systemd layout)"
        )
    info = os.stat(path)
    return info.st_uid, info.st_gid


def _keep_old_key(path: str, old_key: bytes, when: float, owner: tuple[int, int]) -> str:
    """Copy the retiring key under a name no earlier rotation used; its path."""
    for attempt in range(1, _OLD_KEY_ATTEMPTS + 1):
        kept = old_key_name(path, when, attempt)
        try:
            write_master_key_file(kept, old_key, replace=False, owner=owner)
        except MasterKeyFileExists:
            continue
        return kept
    raise MasterKeyError(f"too many old keys named {old_key_name(path, when)}*; tidy them up")


def _abandon(
    conn: sqlite3.Connection, new_cipher: SecretCipher, staged: str, kept: str
) -> bool | None:
    """After a failed re-encryption, whether the database is under the new key (None: it
    cannot be read, so nobody knows). Only when it is not (False) are the staged key and the
    copy of the old one removed: a failure in or after COMMIT must not lose the new key."""
    try:
        if conn.in_transaction:
            conn.rollback()
        info = read_key_info(conn)
    except (sqlite3.Error, StoreError):
        return None
    if info is not None and new_cipher.matches(info[2]):
        return True
    _remove(staged)
    _remove(kept)
    return False


def _install(staged: str, path: str, kept: str) -> None:
    """Rename the new key over the old one; the database is under it already, so any failure
    here is reported as such (the daemon cannot start until the key is in place)."""
    try:
        os.replace(staged, path)
    except OSError as error:
        raise _unfinished(path, kept, f"renaming it failed: {error.strerror}", True) from None
    try:
        fsync_directory(os.path.dirname(os.path.abspath(path)))
    except OSError as error:
        raise StoreError(
            f"the database is now encrypted under the NEW key, renamed from {staged} to {path},"
            f" but the directory could not be synced ({error.strerror}); run sync, or a crash"
            f" may bring back {staged} and the previous key in {path}; the previous key is"
            f" kept in {kept}"
        ) from None


def _unfinished(path: str, kept: str, why: str, committed: bool | None) -> StoreError:
    """The error for a failure once the database is (``committed``), or may be (None), under
    the new key: it says plainly where each key is and what to do."""
    if committed:
        return StoreError(
            f"the database is now encrypted under the NEW key in {path}.new, but the rotation"
            f" did not finish ({why}); move that key into place (mv {path}.new {path}) before"
            f" starting the daemon; the previous key is kept in {kept}"
        )
    return StoreError(
        f"the rotation failed ({why}) and the database could not be read to tell which key it"
        f" is under: the NEW key is in {path}.new, the previous one in {path} and {kept};"
        " keep all three until `keycast key list` works with one of them as the master key"
    )


def _describe(error: BaseException) -> str:
    """A secret-free one-liner for an error: store errors are, other types are only named."""
    if isinstance(error, StoreError | sqlite3.Error):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
