"""The daemon's relay identity: the one key it signs NIP-42 AUTH events with, kept in the database.

A key made fresh per process would change the signer's pubkey at every restart and break every
relay that allow-lists it. So the key is created once, by ``keycast init`` or by the daemon's
first start, whichever comes first, and stored like every other secret: AES-256-GCM under the
master key, bound to its pubkey by ``relay_identity_aad``. Master key rotation re-encrypts it
with the other keys (keycast_tw.store.rotation).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from keycast_tw.nostr.errors import NostrError
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.store.crypto import SecretCipher, relay_identity_aad
from keycast_tw.store.db import transaction
from keycast_tw.store.errors import CiphertextError


def load_or_create_relay_identity(
    conn: sqlite3.Connection,
    cipher: SecretCipher,
    *,
    clock: Callable[[], float] = time.time,
) -> SecretKey:
    """The stored relay identity, created and stored first if the database has none.

    Read and insert share one BEGIN IMMEDIATE transaction, so a ``keycast init`` and a daemon
    starting together agree on a single key. A row that does not decrypt under a master key that
    passed the key check has been damaged or tampered with: it raises CiphertextError instead of
    being replaced, because a silent new key would break the relays' allow-lists unnoticed.
    """
    with transaction(conn):
        row = conn.execute(
            "SELECT pubkey, secret_ciphertext FROM relay_identity WHERE id = 1"
        ).fetchone()
        if row is None:
            created = SecretKey.generate()
            conn.execute(
                "INSERT INTO relay_identity (id, pubkey, secret_ciphertext, created_at)"
                " VALUES (1, ?, ?, ?)",
                (
                    created.pubkey_hex,
                    cipher.encrypt(created.to_bytes(), relay_identity_aad(created.pubkey_hex)),
                    int(clock()),
                ),
            )
            return created
    pubkey, blob = str(row[0]), bytes(row[1])
    try:
        key: SecretKey | None = SecretKey(cipher.decrypt(blob, relay_identity_aad(pubkey)))
    except (CiphertextError, NostrError):
        key = None
    if key is None or key.pubkey_hex != pubkey:
        raise CiphertextError(
            f"the relay identity {pubkey[:16]}... does not decrypt with this master key; delete"
            " the relay_identity row to create a new one (and update the relays that allow-list"
            " the old pubkey)"
        )
    return key
