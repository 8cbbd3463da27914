"""Consistent copies of a live database with SQLite's online backup API.

The copy is one backup step, which reads a single snapshot: in WAL mode writers carry on
meanwhile and their uncommitted work is not copied. The copy is written to a temp file next to
the destination, created with mode 0600 (it holds every encrypted key: never readable by others,
not even for a moment), fsynced, renamed into place and the directory fsynced, so neither a crash
nor a power cut leaves a half-written or empty file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from keycast_tw.store.crypto import fsync_directory
from keycast_tw.store.db import database_uri, mapped_errors
from keycast_tw.store.errors import DatabaseMissing, StoreError


def backup(source: sqlite3.Connection | str, dest: str, *, overwrite: bool = False) -> None:
    """Copy ``source`` (an open connection or a database path) to ``dest`` (mode 0600).

    Refuses to replace an existing ``dest`` unless ``overwrite``: a backup command that
    silently clobbers yesterday's copy is how backups get lost.
    """
    if os.path.exists(dest) and not overwrite:
        raise StoreError(f"backup destination {dest} exists; remove it or use --force")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise StoreError(f"backup directory {parent} does not exist")
    source_path = source if isinstance(source, str) else "database"
    if isinstance(source, str) and not os.path.exists(source):
        raise DatabaseMissing(f"database {source} does not exist")
    partial = f"{dest}.partial-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    try:
        _write_copy(source, source_path, partial)
        os.replace(partial, dest)
        fsync_directory(parent)
    except OSError as error:
        _remove(partial)
        raise StoreError(f"cannot write backup {dest}: {error.strerror}") from None
    except BaseException:
        _remove(partial)
        raise


def _write_copy(source: sqlite3.Connection | str, source_path: str, partial: str) -> None:
    """The whole copy in ``partial``: created 0600, filled by SQLite, fsynced before its rename
    (else a power cut could leave the final name on an empty file)."""
    fd = create_private(partial)
    try:
        with mapped_errors(source_path):
            _copy(source, partial)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: str) -> int:
    """Create the empty file ``path`` with mode 0600 whatever the umask (SQLite takes an empty
    file as a new database and gives its journal the same mode); its descriptor, kept open to
    fsync the copy."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _copy(source: sqlite3.Connection | str, partial: str) -> None:
    """Copy ``source`` into the (empty) database file ``partial`` in one backup step."""
    conn = (
        sqlite3.connect(database_uri(source, create=False), uri=True)
        if isinstance(source, str)
        else source
    )
    try:
        target = sqlite3.connect(partial)
        try:
            conn.backup(target)
        finally:
            target.close()
    finally:
        if conn is not source:
            conn.close()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
