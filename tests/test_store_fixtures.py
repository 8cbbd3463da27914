"""Row builders shared by the store tests (no tests here): real keys, real AES-GCM blobs."""

from __future__ import annotations

import os
import sqlite3

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.store.crypto import SecretCipher, bunker_key_aad, user_key_aad
from keycast_tw.store.db import open_database

NOW = 1_700_000_000


def new_database(directory: str) -> tuple[str, sqlite3.Connection]:
    """A fresh migrated database under ``directory`` (a TestCase.mktemp() path)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "keycast.db")
    return path, open_database(path, create=True)


def new_cipher() -> SecretCipher:
    return SecretCipher(os.urandom(32))


def add_user_key(
    conn: sqlite3.Connection, cipher: SecretCipher, name: str
) -> tuple[int, SecretKey]:
    secret = SecretKey.generate()
    cursor = conn.execute(
        "INSERT INTO user_keys (name, pubkey, secret_ciphertext, created_at) VALUES (?, ?, ?, ?)",
        (
            name,
            secret.pubkey_hex,
            cipher.encrypt(secret.to_bytes(), user_key_aad(secret.pubkey_hex)),
            NOW,
        ),
    )
    conn.commit()
    assert cursor.lastrowid is not None
    return cursor.lastrowid, secret


def add_authorization(
    conn: sqlite3.Connection,
    cipher: SecretCipher,
    user_key_id: int,
    *,
    bunker: SecretKey | None = None,
    same_key_pubkey: str | None = None,
    relays: str = '["wss://relay.example"]',
    policy_id: int | None = None,
    kind: str = "regular",
    expires_at: int | None = None,
    revoked_at: int | None = None,
    label: str | None = None,
) -> tuple[int, str]:
    """Insert an authorization; returns (id, bunker pubkey). same_key_pubkey: no bunker secret."""
    if same_key_pubkey is not None:
        pubkey, blob = same_key_pubkey, None
    else:
        key = bunker or SecretKey.generate()
        pubkey = key.pubkey_hex
        blob = cipher.encrypt(key.to_bytes(), bunker_key_aad(pubkey))
    cursor = conn.execute(
        "INSERT INTO authorizations (kind, user_key_id, bunker_pubkey, bunker_secret_ciphertext,"
        " secret_hash, relays, policy_id, max_uses, expires_at, revoked_at, label, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
        (kind, user_key_id, pubkey, blob, b"\x01" * 32, relays, policy_id, expires_at,
         revoked_at, label, NOW, NOW),
    )  # fmt: skip
    conn.commit()
    assert cursor.lastrowid is not None
    return cursor.lastrowid, pubkey


def add_policy(conn: sqlite3.Connection, name: str, permissions: list[tuple[str, str]]) -> int:
    cursor = conn.execute("INSERT INTO policies (name, created_at) VALUES (?, ?)", (name, NOW))
    policy_id = cursor.lastrowid
    assert policy_id is not None
    conn.executemany(
        "INSERT INTO policy_permissions (policy_id, identifier, config) VALUES (?, ?, ?)",
        [(policy_id, identifier, config) for identifier, config in permissions],
    )
    conn.commit()
    return policy_id


def change_seq(conn: sqlite3.Connection, authorization_id: int) -> int:
    row = conn.execute(
        "SELECT change_seq FROM authorizations WHERE id = ?", (authorization_id,)
    ).fetchone()
    return int(row[0])
