"""Running blocking database functions on the single database thread, with bounded waits.

``Runner`` is the seam everything async in the store uses: ``runner(fn, *args)`` calls
``fn(conn, *args)`` with the connection and returns a Deferred. ``PoolRunner`` is the daemon's
(adbapi, one thread, one connection: SQLite has one writer anyway, and one thread makes group
commit and ordering trivial). Tests use a runner over a plain connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from keycast_tw.store.db import BUSY_TIMEOUT_MS, map_sqlite_error
from keycast_tw.store.errors import StoreError

T = TypeVar("T")
DB_TIMEOUT = 10.0


class Runner(Protocol):
    def __call__(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = DB_TIMEOUT
    ) -> Deferred[T]:
        """Run ``fn(conn, *args)`` on the database thread; StoreError on failure."""


class PoolRunner:
    """A Runner over an adbapi ConnectionPool.

    sqlite3 errors (including a failed connect) become StoreError subclasses. A call that takes
    longer than ``timeout`` fails with StoreError so a request never hangs on a stuck disk; the
    thread finishes the work in the background and its result is discarded.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        path: str,
        *,
        clock: IReactorTime,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._pool = pool
        self._path = path
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms

    def __call__(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = DB_TIMEOUT
    ) -> Deferred[T]:
        run_with_connection: Callable[..., Deferred[T]] = self._pool.runWithConnection
        d = run_with_connection(fn, *args)
        return bound_and_map(d, self._path, self._clock, timeout, self._busy_timeout_ms)


def bound_and_map(
    d: Deferred[T],
    path: str,
    clock: IReactorTime | None,
    timeout: float | None,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> Deferred[T]:
    """Map sqlite3 failures to StoreError and bound the wait (shared by every Runner)."""
    if timeout is not None and clock is not None:
        d.addTimeout(timeout, clock)

    def mapped(failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, sqlite3.Error):
            raise map_sqlite_error(error, path, busy_timeout_ms=busy_timeout_ms)
        if isinstance(error, DeferredTimeout):
            raise StoreError(f"database {path} did not answer within {timeout} s")
        return failure

    d.addErrback(mapped)
    return d


class ConnectionRunner:
    """A Runner over one connection used on the calling thread (CLI, synchronous tests)."""

    def __init__(self, conn: sqlite3.Connection, path: str = "database") -> None:
        self.conn = conn
        self._path = path

    def __call__(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = DB_TIMEOUT
    ) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        try:
            result = fn(self.conn, *args)
        except Exception:
            d.errback()
        else:
            d.callback(result)
        return bound_and_map(d, self._path, None, None)
