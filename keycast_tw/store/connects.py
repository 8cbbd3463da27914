"""Connect responses waiting to be sent: the database half of the nostrconnect:// flow.

In that flow the client shows a URI with its pubkey and a secret, and the signer speaks first:
it sends an unsolicited response whose result is the secret. ``keycast connect`` cannot send it
(it has no relay connection and the daemon must already listen for the bunker key when the
client answers), so it queues one row in ``pending_connect_responses`` next to the new
authorization; the daemon that serves the authorization reads it on its next reload, sends the
response and deletes the row. The secret is encrypted under the master key and bound to its
row and client, like every other secret at rest.

Functions run on a sqlite3 connection (the CLI's, or the daemon's database thread).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from keycast_tw.store.crypto import connect_secret_aad, connect_secret_binding
from keycast_tw.store.db import transaction
from keycast_tw.store.errors import CiphertextError

#: How long a queued response may wait to be sent. Clients give up long before: nostr-tools'
#: BunkerSigner.fromURI waits 300 s by default; a response sent later would only confuse.
MAX_PENDING_AGE = 600


class _Encrypter(Protocol):
    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes: ...


class _Decrypter(Protocol):
    def decrypt(self, blob: bytes, aad: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True, repr=False)
class PendingConnect:
    """One response to send: ``secret`` goes back to ``client_pubkey`` as the result."""

    authorization_id: int
    client_pubkey: str
    secret: str
    created_at: int

    def __repr__(self) -> str:
        return (
            f"PendingConnect(authorization_id={self.authorization_id}, "
            f"client_pubkey={self.client_pubkey[:8]!r}…, secret=<hidden>)"
        )


class PendingRead(NamedTuple):
    """What ``read_pending_connects`` found: responses to send, rows dropped as stale, and
    rows that do not decrypt (authorization ids)."""

    connects: list[PendingConnect]
    stale: list[int]
    broken: list[int]


def queue_connect_response(
    conn: sqlite3.Connection,
    cipher: _Encrypter,
    authorization_id: int,
    client_pubkey: str,
    secret: str,
    now: int,
) -> None:
    """Queue the response inside the caller's transaction (the one creating the authorization),
    so a daemon never sees the authorization without its response or the other way round."""
    aad = connect_secret_aad(connect_secret_binding(authorization_id, client_pubkey))
    conn.execute(
        "INSERT INTO pending_connect_responses"
        " (authorization_id, client_pubkey, secret_ciphertext, created_at) VALUES (?, ?, ?, ?)",
        (authorization_id, client_pubkey, cipher.encrypt(secret.encode("utf-8"), aad), now),
    )


def read_pending_connects(
    conn: sqlite3.Connection, cipher: _Decrypter, now: int, max_age: int = MAX_PENDING_AGE
) -> PendingRead:
    """Every queued response younger than ``max_age``, decrypted.

    Older rows are deleted (no client waits that long). Rows that do not decrypt are kept and
    reported: after a master key rotation a daemon still on the old key cannot read them, and
    the restarted daemon can; they are deleted once stale like the others.
    """
    with transaction(conn):
        rows = conn.execute(
            "SELECT authorization_id, client_pubkey, secret_ciphertext, created_at"
            " FROM pending_connect_responses ORDER BY authorization_id"
        ).fetchall()
        connects: list[PendingConnect] = []
        stale: list[int] = []
        broken: list[int] = []
        for authorization_id, client_pubkey, blob, created_at in rows:
            if created_at < now - max_age:
                stale.append(authorization_id)
                continue
            aad = connect_secret_aad(connect_secret_binding(authorization_id, client_pubkey))
            try:
                secret = cipher.decrypt(bytes(blob), aad).decode("utf-8")
            except (CiphertextError, UnicodeDecodeError):
                broken.append(authorization_id)
                continue
            connects.append(PendingConnect(authorization_id, client_pubkey, secret, created_at))
        conn.executemany(
            "DELETE FROM pending_connect_responses WHERE authorization_id = ?",
            [(authorization_id,) for authorization_id in stale],
        )
    return PendingRead(connects, stale, broken)


def delete_pending_connect(conn: sqlite3.Connection, authorization_id: int) -> None:
    """The response was sent (or can never be): forget it."""
    with transaction(conn):
        conn.execute(
            "DELETE FROM pending_connect_responses WHERE authorization_id = ?",
            (authorization_id,),
        )
