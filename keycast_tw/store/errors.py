"""The store's exceptions: one clear line each and never a secret, so they can be printed as-is.

Operators meet these at start-up ("database is locked", "master key does not match this
database") and the message is the whole diagnosis: no traceback is needed to act on them.
"""

from __future__ import annotations


class StoreError(Exception):
    """A storage failure with a one-line, secret-free message."""


class DatabaseLocked(StoreError):
    """Another process held a lock on the database for longer than busy_timeout."""


class DatabaseReadOnly(StoreError):
    """The database file or its directory cannot be written."""


class DatabaseCorrupt(StoreError):
    """The file is not an SQLite database or its pages are damaged."""


class DatabaseFull(StoreError):
    """The disk (or the database's max_page_count) is full."""


class DatabaseMissing(StoreError):
    """The database does not exist and we were not asked to create it."""


class MasterKeyError(StoreError):
    """The master key is missing, unsafe, malformed, or does not match the database."""


class KmsError(StoreError):
    """Cloud KMS refused or failed a request after retries."""


class CiphertextError(StoreError):
    """One stored blob failed to decrypt (corrupt row or wrong associated data)."""
