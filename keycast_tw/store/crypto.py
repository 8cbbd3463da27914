"""Keys at rest: the master key file, AES-256-GCM blobs bound to their row, and the key check.

Blob layout is the Rust original's, nonce(12) || ciphertext || tag(16), but every blob here is
bound by AES-GCM associated data to the pubkey it belongs to (``user_key_aad``,
``bunker_key_aad``, ``relay_identity_aad``; a pending nostrconnect secret to its authorization
and client, ``connect_secret_aad``). Binding lets a loader trust the clear-text pubkey
column without deriving it (deriving a million pubkeys costs ~20 s), because a blob moved to
another row fails to decrypt. The original used no AAD, so its blobs cannot be imported as-is:
decrypt them with AAD b"" and re-encrypt them (docs/storage.md).

``key_check`` in master_key_info is a known plaintext encrypted under the master key: a wrong key
is reported once at start ("master key does not match this database") instead of as a million
per-row failures.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import glob
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred

from keycast_tw.store.db import transaction
from keycast_tw.store.errors import CiphertextError, KmsError, MasterKeyError

if TYPE_CHECKING:
    from keycast_tw.store.kms import GcpKms

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_CHECK_PLAINTEXT = b"keycast-tw key check"
KEY_CHECK_AAD = b"keycast-tw:key_check"
KIND_FILE = "file"
KIND_KMS = "gcp-kms"

T = TypeVar("T")
ConnRunner = Callable[[Callable[[sqlite3.Connection], T]], "Deferred[T]"]


def user_key_aad(pubkey_hex: str) -> bytes:
    return b"keycast-tw:user_key:" + pubkey_hex.encode("ascii")


def bunker_key_aad(pubkey_hex: str) -> bytes:
    return b"keycast-tw:bunker_key:" + pubkey_hex.encode("ascii")


def relay_identity_aad(pubkey_hex: str) -> bytes:
    return b"keycast-tw:relay_identity:" + pubkey_hex.encode("ascii")


def connect_secret_binding(authorization_id: int, client_pubkey: str) -> str:
    """What a pending connect secret is bound to: its row (authorization) and its client.

    The SQL in keycast_tw.store.rotation builds the same text (``id || ':' || client``).
    """
    return f"{authorization_id}:{client_pubkey}"


def connect_secret_aad(binding: str) -> bytes:
    return b"keycast-tw:connect_secret:" + binding.encode("ascii")


class SecretCipher:
    """AES-256-GCM under the 32-byte master (or KMS data) key; random 96-bit nonce per blob."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise MasterKeyError("master key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise CiphertextError("ciphertext too short")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise CiphertextError("ciphertext does not authenticate") from None

    def key_check(self) -> bytes:
        """The master_key_info.key_check blob for this key."""
        return self.encrypt(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)

    def matches(self, key_check: bytes) -> bool:
        try:
            return self.decrypt(key_check, KEY_CHECK_AAD) == KEY_CHECK_PLAINTEXT
        except CiphertextError:
            return False

    def __repr__(self) -> str:
        return "SecretCipher(<hidden>)"


def generate_master_key() -> bytes:
    return os.urandom(KEY_SIZE)


def encode_master_key(key: bytes) -> bytes:
    """The file format: standard base64 with padding and a newline (the original's)."""
    return base64.b64encode(key) + b"\n"


def create_master_key_file(path: str) -> bool:
    """Create a fresh 0600 master key file; False (and untouched) if one already exists."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as error:
        raise MasterKeyError(f"cannot create master key file {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(encode_master_key(generate_master_key()))
        handle.flush()
        os.fsync(handle.fileno())
    return True


def read_master_key_file(path: str) -> bytes:
    """Read and validate the master key: 0600, strict base64 of exactly 32 bytes."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as handle:
            text = handle.read(4096)
    except FileNotFoundError:
        raise MasterKeyError(f"master key file {path} does not exist; run `keycast init`") from None
    except OSError as error:
        raise MasterKeyError(f"cannot read master key file {path}: {error.strerror}") from None
    if mode & 0o044:
        raise MasterKeyError(
            f"master key file {path} is readable by group/others "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 {path}"
        )
    if mode & 0o022:
        raise MasterKeyError(
            f"master key file {path} is writable by group/others "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 {path}"
        )
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise MasterKeyError(f"master key file {path} is not base64 of 32 bytes")
    return key


class MasterKeyFileExists(MasterKeyError):
    """``write_master_key_file(..., replace=False)`` found the file already there."""


def write_master_key_file(
    path: str, key: bytes, *, replace: bool = True, owner: tuple[int, int] | None = None
) -> None:
    """Write ``key`` to ``path`` durably: a 0600 temp file, fsync, rename, fsync the directory.

    A crash therefore leaves either the previous file or the whole new key under ``path``.
    ``replace=False`` never overwrites anything: the temp file is hard-linked to ``path``, which
    fails atomically (:class:`MasterKeyFileExists`) when ``path`` exists. Rotation relies on it,
    because an earlier key may be the only one that opens an old backup.

    ``owner`` (uid, gid) is given to the file before it gets its name: rotation run as root
    must leave a key the daemon's user (systemd's ``User=keycast``) can still read.
    """
    temp = f"{path}.tmp-{os.getpid()}"
    created = False
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        created = True
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                _give_owner(handle.fileno(), owner, path)
            _write_private(handle, encode_master_key(key))
        _publish(temp, path, replace=replace)
        fsync_directory(os.path.dirname(os.path.abspath(path)))
    except OSError as error:
        raise MasterKeyError(f"cannot write master key file {path}: {error.strerror}") from None
    finally:
        if created:  # gone already after a rename; still there after a link or a failure
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _give_owner(fd: int, owner: tuple[int, int], path: str) -> None:
    """Make the open file ``fd`` (to become ``path``) belong to ``owner`` (uid, gid).

    Nothing to do when it already does (a rotation run as the key's own user). Only root may
    give a file away; anyone else gets an error naming the user to run as, except that a
    group that cannot be set is let go when the uid matches: a 0600 file ignores its group.
    """
    uid, gid = owner
    current = os.fstat(fd)
    if (current.st_uid, current.st_gid) == owner:
        return
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        if current.st_uid == uid:
            return
        raise MasterKeyError(
            f"cannot give {path} the owner of the current key (uid {uid}, gid {gid}); run"
            f" this as root or as uid {uid}"
        ) from None


def _write_private(handle: BinaryIO, data: bytes) -> None:
    """Write ``data`` to the new file with mode exactly 0600 (whatever the umask), then fsync
    it, so the key is on disk before any name points at it."""
    os.fchmod(handle.fileno(), 0o600)
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def _publish(temp: str, path: str, *, replace: bool) -> None:
    """Give the finished ``temp`` its final name: rename over ``path``, or link without
    overwriting (:class:`MasterKeyFileExists` when ``path`` is taken)."""
    if replace:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise MasterKeyFileExists(f"{path} exists and is kept as it is") from None


def fsync_directory(directory: str) -> None:
    """Make a rename or link in ``directory`` durable (the entry, not only the file's data)."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_key_info(conn: sqlite3.Connection) -> tuple[str, bytes | None, bytes] | None:
    """(kind, wrapped_data_key, key_check) of the database, None before the first key is set."""
    row = conn.execute(
        "SELECT kind, wrapped_data_key, key_check FROM master_key_info WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    return str(row[0]), row[1], bytes(row[2])


def verify_keys(conn: sqlite3.Connection, cipher: SecretCipher, *, hint: str = "") -> None:
    """Check the master key against key_check once, instead of failing on every row later.

    A database without key_check (created by an older tool) is checked against one stored
    user key instead; a database without any key has nothing to contradict.
    """
    info = read_key_info(conn)
    if info is not None:
        if not cipher.matches(info[2]):
            raise MasterKeyError("master key does not match this database" + hint)
        return
    row = conn.execute("SELECT pubkey, secret_ciphertext FROM user_keys LIMIT 1").fetchone()
    if row is not None:
        try:
            cipher.decrypt(bytes(row[1]), user_key_aad(str(row[0])))
        except CiphertextError:
            raise MasterKeyError("master key does not match this database" + hint) from None


def record_key_info(
    conn: sqlite3.Connection,
    cipher: SecretCipher,
    *,
    kind: str,
    wrapped_data_key: bytes | None = None,
    now: int | None = None,
) -> bool:
    """Store kind and key_check on a database that has none; False if another writer won."""
    created = int(time.time()) if now is None else now
    with transaction(conn):
        cursor = conn.execute(
            "INSERT OR IGNORE INTO master_key_info (id, kind, wrapped_data_key, key_check,"
            " created_at) VALUES (1, ?, ?, ?, ?)",
            (kind, wrapped_data_key, cipher.key_check(), created),
        )
        return cursor.rowcount == 1


def _mismatch_hint(master_key_path: str) -> str:
    """What to try when the key file does not open the database: a key a rotation left beside it.

    An interrupted rotation leaves the database under ``<key>.new``; a database restored from a
    backup older than a rotation opens with the key that rotation kept as
    ``<key>.old-<UTC time>`` (keycast_tw.store.rotation).
    """
    if os.path.exists(master_key_path + ".new"):
        return f"; a rotation was interrupted: {master_key_path}.new may hold the matching key"
    if glob.glob(glob.escape(master_key_path) + ".old-*"):
        return (
            f"; if this database is older than a key rotation, one of {master_key_path}.old-*"
            " may match (try it with --master-key)"
        )
    return ""


def open_file_cipher(conn: sqlite3.Connection, master_key_path: str) -> SecretCipher:
    """The synchronous file-key path (CLI, daemon's DB thread): read, verify or record key_check."""
    cipher = SecretCipher(read_master_key_file(master_key_path))
    info = read_key_info(conn)
    if info is not None and info[0] != KIND_FILE:
        raise MasterKeyError(
            f"this database is encrypted with {info[0]}, not a master key file; use --kms gcp"
        )
    hint = _mismatch_hint(master_key_path)
    verify_keys(conn, cipher, hint=hint)
    if info is None:
        record_key_info(conn, cipher, kind=KIND_FILE)
        verify_keys(conn, cipher, hint=hint)
    return cipher


async def open_cipher(
    conn_runner: ConnRunner[Any],
    *,
    master_key_path: str | None,
    kms: GcpKms | None,
) -> SecretCipher:
    """The cipher for this database, from a master key file or from Cloud KMS.

    ``conn_runner(fn)`` runs ``fn(conn)`` with the database connection and returns a Deferred of
    its result: any keycast_tw.store.runner.Runner (``PoolRunner`` in the daemon,
    ``ConnectionRunner(conn)`` for a connection used directly, as in the CLI).

    KMS: envelope encryption. A random 32-byte data key is wrapped by Cloud KMS once and stored
    in master_key_info.wrapped_data_key; start-up costs one KMS decrypt, not one per key.
    """
    if kms is None:
        if master_key_path is None:
            raise MasterKeyError("no master key file and no KMS configured")
        path = master_key_path
        result: SecretCipher = await conn_runner(lambda conn: open_file_cipher(conn, path))
        return result
    info = await conn_runner(read_key_info)
    if info is None:
        data_key = generate_master_key()
        wrapped = await kms.encrypt(data_key)
        cipher = SecretCipher(data_key)
        stored = await conn_runner(
            lambda conn: record_key_info(conn, cipher, kind=KIND_KMS, wrapped_data_key=wrapped)
        )
        if stored:
            return cipher
        info = await conn_runner(read_key_info)
        assert info is not None
    kind, wrapped_key, key_check = info
    if kind != KIND_KMS or wrapped_key is None:
        raise MasterKeyError(f"this database is encrypted with a {kind} master key, not Cloud KMS")
    data_key = await kms.decrypt(bytes(wrapped_key))
    if len(data_key) != KEY_SIZE:
        raise KmsError("Cloud KMS returned a data key that is not 32 bytes")
    cipher = SecretCipher(data_key)
    if not cipher.matches(key_check):
        raise MasterKeyError("master key does not match this database")
    return cipher

