"""Opening the SQLite database: pragmas, versioned migrations, and errors an operator can act on.

Synchronous on purpose: the daemon calls these on its single database thread, the CLI calls them
directly. Every sqlite3 failure leaves this module as a StoreError subclass whose message names
the file and the remedy, because "sqlite3.OperationalError: unable to open database file" is what
made the original's crash loops hard to diagnose.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from importlib import resources
from typing import NamedTuple

from keycast_tw.store.errors import (
    DatabaseCorrupt,
    DatabaseFull,
    DatabaseLocked,
    DatabaseMissing,
    DatabaseReadOnly,
    StoreError,
)

BUSY_TIMEOUT_MS = 5000

# Primary result codes (sqlite3.h); extended codes carry them in the low byte.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_AUTH = 23
_SQLITE_NOTADB = 26


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def connection_init(conn: sqlite3.Connection, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """Apply the per-connection pragmas (the contract's; usable as adbapi ``cp_openfun``).

    wal_autocheckpoint keeps SQLite's default: the original set it to 0 for Litestream and grew
    the WAL without bound wherever Litestream was not running (reference B23). Litestream copes
    with automatic checkpoints.
    """
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def database_uri(path: str, *, create: bool) -> str:
    """An SQLite URI that creates the file only when asked (mode=rwc) and never otherwise."""
    mode = "rwc" if create else "rw"
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


def require_database(path: str) -> None:
    """Raise DatabaseMissing, naming what to do, unless the database file exists.

    The daemon asks this before anything else touches the database's directory (the instance
    lock file lives there), so a mistyped path leaves no stray files and gets the same line as
    the store would give.
    """
    if os.path.exists(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DatabaseMissing(
            f"database directory {parent} does not exist; check the path or run `keycast init`"
        )
    raise DatabaseMissing(f"database {path} does not exist; run `keycast init`")


def open_database(
    path: str, *, create: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """Open (or create) the database, apply pragmas and pending migrations.

    ``create=False`` refuses to conjure an empty database: an empty file on a fresh volume is how
    the original ended up serving zero authorizations in production (reference B22).
    """
    if not create:
        require_database(path)
    if create:
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as error:
            raise DatabaseReadOnly(
                f"cannot create the database directory {parent}: {error.strerror}"
            ) from None
    conn: sqlite3.Connection | None = None
    with mapped_errors(path, busy_timeout_ms=busy_timeout_ms):
        try:
            conn = sqlite3.connect(
                database_uri(path, create=create), uri=True, check_same_thread=False
            )
            connection_init(conn, busy_timeout_ms=busy_timeout_ms)
            migrate(conn)
            ensure_writable(conn)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
    return conn


def prepare_database(conn: sqlite3.Connection, path: str) -> int:
    """Migrate an already-open connection (the daemon's pool connection); returns the version."""
    with mapped_errors(path):
        migrate(conn)
        ensure_writable(conn)
        return schema_version(conn)


def ensure_writable(conn: sqlite3.Connection) -> None:
    """Take and drop the write lock, so a read-only or locked database fails now, at start.

    SQLite silently opens a file it cannot write read-only; without this check the first
    write (a client's connect) would be where the operator learns of it.
    """
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrations() -> list[Migration]:
    """The migrations shipped in the package, ordered by their NNNN_ prefix."""
    found = []
    for entry in resources.files("keycast_tw.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append(Migration(int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns how many ran. A no-op on an up-to-date database.

    The version is re-read under BEGIN IMMEDIATE so that a CLI and a daemon starting together
    cannot both apply the same migration (the original let both race, reference B23). Each
    migration and its user_version bump commit together, so a failure leaves the previous
    version intact.
    """
    pending = [m for m in migrations() if m.version > schema_version(conn)]
    if not pending:
        return 0
    applied = 0
    with transaction(conn):
        current = schema_version(conn)
        for migration in pending:
            if migration.version <= current:
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version}")
            applied += 1
    return applied


def split_statements(sql: str) -> Iterator[str]:
    """Split a script into statements; sqlite3.complete_statement knows trigger bodies.

    executescript() cannot be used: it commits first, which would let another process slip in
    between our version check and the migration.
    """
    buffer = ""
    for line in sql.splitlines(keepends=True):
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError("migration ends with an incomplete statement")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception: all or nothing.

    IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN (after
    busy_timeout) instead of half way through.
    """
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


@contextlib.contextmanager
def mapped_errors(path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Iterator[None]:
    """Turn sqlite3 errors raised inside the block into StoreError subclasses."""
    try:
        yield
    except sqlite3.Error as error:
        raise map_sqlite_error(error, path, busy_timeout_ms=busy_timeout_ms) from None


def map_sqlite_error(
    error: sqlite3.Error, path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> StoreError:
    """One clear line for the failures an operator can fix; the SQLite text for the rest."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DatabaseLocked(
            f"database {path} is locked by another process "
            f"(waited {busy_timeout_ms} ms); is another keycast or sqlite3 shell holding it?"
        )
    if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_AUTH):
        return DatabaseReadOnly(
            f"database {path} is read-only; check the permissions of the file and its directory"
        )
    if primary == _SQLITE_FULL:
        return DatabaseFull(f"database {path}: disk full (SQLITE_FULL); free space and retry")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DatabaseCorrupt(
            f"database {path} is corrupt or not an SQLite database ({error}); "
            "restore it from a backup"
        )
    if primary == _SQLITE_CANTOPEN:
        if not os.path.exists(path):
            parent = os.path.dirname(os.path.abspath(path))
            if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
                return DatabaseReadOnly(
                    f"cannot create database {path}: directory {parent} is not writable"
                )
            if os.path.isdir(parent):
                return DatabaseMissing(f"database {path} does not exist; run `keycast init`")
            return DatabaseMissing(f"database directory {parent} does not exist")
        return DatabaseReadOnly(
            f"cannot open database {path}; check the permissions of the file and its directory"
        )
    return StoreError(f"database {path}: {error}")
