"""Consistent copies of a live database with SQLite's online backup API.

The copy is one backup step, which reads a single snapshot: in WAL mode writers carry on
meanwhile and their uncommitted work is not copied. The copy is written next to the destination
and renamed into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from keycast_tw.store.db import database_uri, mapped_errors
from keycast_tw.store.errors import DatabaseMissing, StoreError


def backup(source: sqlite3.Connection | str, dest: str, *, overwrite: bool = False) -> None:
    """Copy ``source`` (an open connection or a database path) to ``dest``.

    Refuses to replace an existing ``dest`` unless ``overwrite``: a backup command that
    silently clobbers yesterday's copy is how backups get lost.
    """
    if os.path.exists(dest) and not overwrite:
        raise StoreError(f"backup destination {dest} exists; remove it or pass overwrite")
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
        with mapped_errors(source_path):
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
        os.replace(partial, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
