"""The engine's SignerStore on SQLite: replay claims with group commit, sessions, activity log.

Claims are on every request's critical path, so they are batched: while one transaction is on
the database thread, new claims queue up and all go in the next transaction (one fsync for
many requests). Each claim's Deferred fires only after its batch committed, so "True" always
means durably claimed. Ids already claimed in this process are answered from memory.
Activity rows are fire-and-forget, batched by time and size, and never raise.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from keycast_tw.signer.model import ActivityRecord
from keycast_tw.store.db import transaction
from keycast_tw.store.runner import Runner

RECENT_IDS = 65_536
ACTIVITY_INTERVAL = 1.0
ACTIVITY_BATCH = 500
ACTIVITY_BUFFER = 20_000


class SqliteSignerStore:
    """keycast_tw.signer.interfaces.SignerStore over a Runner (the single DB thread)."""

    log = Logger()

    def __init__(
        self,
        runner: Runner,
        *,
        clock: IReactorTime,
        recent_ids: int = RECENT_IDS,
        activity_interval: float = ACTIVITY_INTERVAL,
        activity_batch: int = ACTIVITY_BATCH,
        activity_buffer: int = ACTIVITY_BUFFER,
    ) -> None:
        self._run = runner
        self._clock = clock
        self._recent: dict[str, None] = {}
        self._recent_max = recent_ids
        self._pending: list[tuple[str, int, Deferred[bool]]] = []
        self._claiming = False
        self.claim_transactions = 0
        self._activity: list[tuple[Any, ...]] = []
        self._activity_interval = activity_interval
        self._activity_batch = activity_batch
        self._activity_buffer = activity_buffer
        self._activity_timer: IDelayedCall | None = None
        self._activity_lock = DeferredLock()
        self._activity_failing = False
        self.activity_dropped = 0

    # -- replay protection -------------------------------------------------------------------

    def claim_request(self, event_id: str, created_at: int) -> Deferred[bool]:
        if event_id in self._recent:
            return succeed(False)
        self._remember(event_id)
        d: Deferred[bool] = Deferred()
        self._pending.append((event_id, created_at, d))
        if not self._claiming:
            self._flush_claims()
        return d

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        if len(self._recent) > self._recent_max:
            del self._recent[next(iter(self._recent))]

    def _flush_claims(self) -> None:
        batch, self._pending = self._pending, []
        self._claiming = True
        self.claim_transactions += 1
        rows = [(event_id, created_at) for event_id, created_at, _ in batch]

        def committed(results: list[bool]) -> None:
            for (_, _, d), claimed in zip(batch, results, strict=True):
                d.callback(claimed)

        def failed(failure: Failure) -> None:
            for event_id, _, d in batch:
                self._recent.pop(event_id, None)
                d.errback(failure)

        def next_batch(_: object) -> None:
            self._claiming = False
            if self._pending:
                self._flush_claims()

        d = self._run(_claim_batch, rows)
        d.addCallbacks(committed, failed)
        d.addBoth(next_batch)

    def prune_seen_requests(self, older_than: int) -> Deferred[int]:
        """Forget claims of requests created before ``older_than`` (outside the replay window)."""
        return self._run(_prune_seen, older_than)

    # -- sessions ----------------------------------------------------------------------------

    def save_session(self, authorization_id: int, client_pubkey: str, now: int) -> Deferred[None]:
        return self._run(_save_session, authorization_id, client_pubkey, now)

    def end_session(self, authorization_id: int, client_pubkey: str, now: int) -> Deferred[None]:
        return self._run(_end_session, authorization_id, client_pubkey, now)

    # -- activity log ------------------------------------------------------------------------

    def record_activity(self, record: ActivityRecord) -> None:
        try:
            if len(self._activity) >= self._activity_buffer:
                self.activity_dropped += 1
                return
            self._activity.append(
                (
                    record.authorization_id,
                    record.client_pubkey,
                    record.method,
                    record.event_kind,
                    record.event_id,
                    record.outcome,
                    record.error,
                    record.created_at,
                )
            )
            if len(self._activity) == self._activity_batch:
                self.flush_activity()
            elif self._activity_timer is None:
                self._activity_timer = self._clock.callLater(
                    self._activity_interval, self.flush_activity
                )
        except Exception:
            self.log.failure("Queueing an activity row failed")

    def flush_activity(self) -> Deferred[None]:
        """Write the queued rows now; fires when they are written (or dropped on failure)."""
        if self._activity_timer is not None and self._activity_timer.active():
            self._activity_timer.cancel()
        self._activity_timer = None
        return self._activity_lock.run(self._write_activity)

    def _write_activity(self) -> Deferred[None]:
        if not self._activity:
            return succeed(None)
        rows, self._activity = self._activity, []

        def written(_: object) -> None:
            if self._activity_failing:
                self._activity_failing = False
                self.log.info("Activity log writes recovered")

        def failed(failure: Failure) -> None:
            self.activity_dropped += len(rows)
            if not self._activity_failing:
                self._activity_failing = True
                self.log.error(
                    "Activity log write failed, dropping {count} rows: {error}",
                    count=len(rows),
                    error=failure.getErrorMessage(),
                )

        d: Deferred[None] = self._run(_insert_activity, rows)
        d.addCallbacks(written, failed)
        return d

    def stop(self) -> Deferred[None]:
        """Flush what is queued (service stop)."""
        return self.flush_activity()


def _claim_batch(conn: sqlite3.Connection, rows: list[tuple[str, int]]) -> list[bool]:
    with transaction(conn):
        return [
            conn.execute(
                "INSERT OR IGNORE INTO seen_requests (event_id, created_at) VALUES (?, ?)", row
            ).rowcount
            == 1
            for row in rows
        ]


def _prune_seen(conn: sqlite3.Connection, older_than: int) -> int:
    with transaction(conn):
        return conn.execute(
            "DELETE FROM seen_requests WHERE created_at < ?", (older_than,)
        ).rowcount


def _save_session(conn: sqlite3.Connection, authorization_id: int, client: str, now: int) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO client_sessions (authorization_id, client_pubkey, connected_at,"
            " last_seen_at, logged_out_at) VALUES (?, ?, ?, ?, NULL)"
            " ON CONFLICT (authorization_id, client_pubkey) DO UPDATE SET"
            " last_seen_at = excluded.last_seen_at, logged_out_at = NULL",
            (authorization_id, client, now, now),
        )


def _end_session(conn: sqlite3.Connection, authorization_id: int, client: str, now: int) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE client_sessions SET logged_out_at = ?, last_seen_at = ?"
            " WHERE authorization_id = ? AND client_pubkey = ?",
            (now, now, authorization_id, client),
        )


def _insert_activity(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO activity_log (authorization_id, client_pubkey, method, event_kind,"
            " event_id, outcome, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
