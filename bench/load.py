"""Start-up load benchmark: N authorizations in a scratch DB to a ready registry; RSS; reload.

Usage: .venv/bin/python bench/load.py [--sizes 10000,100000,1000000] [--dir $TMPDIR/keycast-bench]

Each size is measured in a fresh subprocess (so RSS is that of a daemon that just loaded N
authorizations) through the real StoreService: adbapi pool, master key check, full load into
the Registry. Then 1,000 authorizations are inserted by another connection and one incremental
reload is timed.

Rows are real: AES-256-GCM bunker secrets bound to their pubkey by AAD, 1,000 real user keys.
Deriving a million bunker pubkeys would take ~20 s of setup and the load never derives (the
pubkey column is trusted because the AAD binds it), so only the first 1,000 authorizations get
derived keypairs; the others store sha256(secret) as their 64-hex "pubkey". Loading cost is
identical; only a first request to one of those would fail the LazyKey pubkey check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.store.crypto import (
    SecretCipher,
    bunker_key_aad,
    create_master_key_file,
    open_file_cipher,
    user_key_aad,
)
from keycast_tw.store.db import open_database, transaction

USER_KEYS = 1000
REAL_BUNKERS = 1000
RELAYS = ['["wss://relay.damus.io"]', '["wss://nos.lol","wss://relay.nsec.app"]', "[]"]


def insert_authorizations(
    conn: sqlite3.Connection, cipher: SecretCipher, count: int, first_id: int, now: int
) -> None:
    """Bulk insert ``count`` authorizations (5 % same-key OAuth) with executemany."""
    rng = random.Random(first_id)
    key_ids = [row[0] for row in conn.execute("SELECT id FROM user_keys LIMIT ?", (USER_KEYS,))]
    policy_ids = [row[0] for row in conn.execute("SELECT id FROM policies")]
    regular: list[tuple[Any, ...]] = []
    oauth_keys: list[tuple[Any, ...]] = []
    oauth: list[tuple[Any, ...]] = []
    for n in range(first_id, first_id + count):
        secret = os.urandom(32)
        if n < REAL_BUNKERS:
            pubkey = SecretKey(secret).pubkey_hex
        else:
            pubkey = hashlib.sha256(secret).hexdigest()
        relays = RELAYS[n % len(RELAYS)]
        expires = now + 86_400 * 30 if n % 10 == 0 else None
        policy = policy_ids[n % len(policy_ids)] if n % 3 == 0 else None
        if n % 20 == 19:
            blob = cipher.encrypt(secret, user_key_aad(pubkey))
            oauth_keys.append((f"oauth-{n}", pubkey, blob, now))
            oauth.append((f"oauth-{n}", pubkey, os.urandom(32), relays, expires, now, now))
        else:
            blob = cipher.encrypt(secret, bunker_key_aad(pubkey))
            regular.append(
                (
                    rng.choice(key_ids),
                    pubkey,
                    blob,
                    os.urandom(32),
                    relays,
                    policy,
                    expires,
                    now,
                    now,
                )
            )
    with transaction(conn):
        conn.executemany(
            "INSERT INTO authorizations (kind, user_key_id, bunker_pubkey,"
            " bunker_secret_ciphertext, secret_hash, relays, policy_id, max_uses, expires_at,"
            " created_at, updated_at) VALUES ('regular', ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            regular,
        )
        conn.executemany(
            "INSERT INTO user_keys (name, pubkey, secret_ciphertext, created_at)"
            " VALUES (?, ?, ?, ?)",
            oauth_keys,
        )
        conn.executemany(
            "INSERT INTO authorizations (kind, user_key_id, bunker_pubkey, secret_hash, relays,"
            " max_uses, expires_at, created_at, updated_at) SELECT 'oauth', id, ?2, ?3, ?4, NULL,"
            " ?5, ?6, ?7 FROM user_keys WHERE name = ?1",
            oauth,
        )


def build(path: str, key_path: str, count: int) -> float:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    create_master_key_file(key_path)
    conn = open_database(path, create=True)
    cipher = open_file_cipher(conn, key_path)
    now = int(time.time())
    started = time.perf_counter()
    with transaction(conn):
        for i in range(USER_KEYS):
            key = SecretKey.generate()
            conn.execute(
                "INSERT INTO user_keys (name, pubkey, secret_ciphertext, created_at)"
                " VALUES (?, ?, ?, ?)",
                (f"user-{i}", key.pubkey_hex,
                 cipher.encrypt(key.to_bytes(), user_key_aad(key.pubkey_hex)), now),
            )  # fmt: skip
        for name, config in (("kinds", '{"allowed_kinds": [1, 7]}'), ("filter", "{}")):
            policy = conn.execute(
                "INSERT INTO policies (name, created_at) VALUES (?, ?)", (name, now)
            ).lastrowid
            conn.execute(
                "INSERT INTO policy_permissions (policy_id, identifier, config) VALUES (?, ?, ?)",
                (policy, "allowed_kinds" if name == "kinds" else "content_filter", config),
            )
    insert_authorizations(conn, cipher, count, 0, now)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(path: str, key_path: str) -> None:
    """Child process: start a StoreService, time ready, RSS, then a reload of 1,000 inserts."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from keycast_tw.signer.registry import Registry
    from keycast_tw.store.service import StoreService

    baseline = status_kb("VmRSS")

    async def main(reactor: Any) -> None:
        registry = Registry()
        service = StoreService(
            database_path=path,
            registry=registry,
            reactor=reactor,
            master_key_path=key_path,
            reload_interval=None,
            sweep_interval=None,
            reconcile_interval=None,
            prune_interval=None,
        )
        started = time.perf_counter()
        service.startService()
        await service.ready
        load_seconds = time.perf_counter() - started
        rss = status_kb("VmRSS")
        peak = status_kb("VmHWM")
        conn = open_database(path)
        cipher = open_file_cipher(conn, key_path)
        first_id = conn.execute("SELECT max(id) FROM authorizations").fetchone()[0] + 1
        insert_authorizations(conn, cipher, 1000, first_id + REAL_BUNKERS, int(time.time()))
        conn.close()
        before = len(registry)
        started = time.perf_counter()
        info = await service.reload()
        reload_seconds = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "loaded": before,
                    "load_seconds": round(load_seconds, 2),
                    "rss_mb": round(rss / 1024),
                    "peak_rss_mb": round(peak / 1024),
                    "baseline_rss_mb": round(baseline / 1024),
                    "bytes_per_auth": round((rss - baseline) * 1024 / max(before, 1)),
                    "reload_upserts": info.upserts,
                    "reload_seconds": round(reload_seconds, 3),
                    "after_reload": len(registry),
                }
            )
        )
        await service.stopService()

    react(lambda r: Deferred.fromCoroutine(main(r)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "keycast-bench"))
    parser.add_argument("--measure", nargs=2, metavar=("DB", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return
    os.makedirs(args.dir, exist_ok=True)
    for size in (int(s) for s in args.sizes.split(",")):
        path = os.path.join(args.dir, f"bench-{size}.db")
        key_path = os.path.join(args.dir, "master.key")
        built = build(path, key_path, size)
        out = subprocess.run(
            [sys.executable, __file__, "--measure", path, key_path],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"N={size:>9,}  build {built:6.1f} s  "
            + "  ".join(f"{k}={v}" for k, v in result.items())
        )


if __name__ == "__main__":
    main()
