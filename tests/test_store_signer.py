"""SqliteSignerStore (group-committed claims, sessions, batched activity) and StoreService."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from keycast_tw.signer.model import ActivityRecord
from keycast_tw.signer.registry import Registry
from keycast_tw.store.crypto import create_master_key_file, open_file_cipher, write_master_key_file
from keycast_tw.store.errors import DatabaseMissing, MasterKeyError, StoreError
from keycast_tw.store.runner import ConnectionRunner, bound_and_map
from keycast_tw.store.service import StoreService
from keycast_tw.store.signer_store import SqliteSignerStore
from tests.test_store_fixtures import (
    NOW,
    add_authorization,
    add_user_key,
    new_cipher,
    new_database,
)


class QueuedRunner:
    """A Runner whose calls wait until the test runs them, like a busy database thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        d: Deferred[Any] = Deferred()
        self.queue.append((fn, args, d))
        return bound_and_map(d, "test.db", None, None)

    def run_next(self) -> None:
        fn, args, d = self.queue.pop(0)
        ConnectionRunner(self.conn)(fn, *args).chainDeferred(d)

    def run_all(self) -> None:
        while self.queue:
            self.run_next()


def record(method: str = "sign_event") -> ActivityRecord:
    return ActivityRecord(1, "c" * 64, method, "ok", NOW, event_kind=1, event_id="e" * 64)


class ClaimTests(SynchronousTestCase):
    def setUp(self) -> None:
        _, self.conn = new_database(self.mktemp())
        self.runner = QueuedRunner(self.conn)
        self.store = SqliteSignerStore(self.runner, clock=Clock())

    def test_group_commit(self) -> None:
        """Claims arriving while a batch is in flight share the next transaction."""
        a = self.store.claim_request("a", NOW)
        b = self.store.claim_request("b", NOW)
        c = self.store.claim_request("c", NOW)
        self.assertFalse(self.successResultOf(self.store.claim_request("b", NOW)))
        self.assertNoResult(a)
        self.runner.run_next()
        self.assertTrue(self.successResultOf(a))
        self.assertNoResult(b)
        self.runner.run_next()
        self.assertEqual([self.successResultOf(b), self.successResultOf(c)], [True, True])
        self.assertEqual(self.store.claim_transactions, 2)
        self.assertEqual(self.runner.queue, [])
        self.assertEqual(self.conn.execute("SELECT count(*) FROM seen_requests").fetchone()[0], 3)

    def test_duplicate_across_restart(self) -> None:
        """A claim persisted by an earlier process is refused by a fresh store."""
        runner = ConnectionRunner(self.conn)
        self.assertTrue(
            self.successResultOf(SqliteSignerStore(runner, clock=Clock()).claim_request("x", NOW))
        )
        again = SqliteSignerStore(runner, clock=Clock())
        self.assertFalse(self.successResultOf(again.claim_request("x", NOW)))

    def test_failure_is_store_error_and_retryable(self) -> None:
        """A database failure errbacks the batch with StoreError; its ids may be claimed again."""
        broken = sqlite3.connect(":memory:")
        broken.close()
        store = SqliteSignerStore(ConnectionRunner(broken), clock=Clock())
        self.failureResultOf(store.claim_request("x", NOW), StoreError)
        store._run = ConnectionRunner(self.conn)  # the database is back
        self.assertTrue(self.successResultOf(store.claim_request("x", NOW)))

    def test_stuck_database_times_out(self) -> None:
        """A call that never comes back fails with StoreError after the timeout, never hangs."""
        clock = Clock()
        d = bound_and_map(Deferred(), "test.db", clock, 10.0)
        clock.advance(10)
        failure = self.failureResultOf(d, StoreError)
        self.assertIn("did not answer within 10.0 s", failure.getErrorMessage())

    def test_prune(self) -> None:
        """Claims older than the cut-off are deleted."""
        runner = ConnectionRunner(self.conn)
        store = SqliteSignerStore(runner, clock=Clock())
        store.claim_request("old", NOW - 5000)
        store.claim_request("new", NOW)
        self.assertEqual(self.successResultOf(store.prune_seen_requests(NOW - 1000)), 1)


class SessionAndActivityTests(SynchronousTestCase):
    def setUp(self) -> None:
        _, self.conn = new_database(self.mktemp())
        self.clock = Clock()
        self.store = SqliteSignerStore(
            ConnectionRunner(self.conn), clock=self.clock, activity_interval=1.0, activity_batch=3
        )
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_sessions(self) -> None:
        """save_session persists, end_session marks logged out, reconnect reactivates."""
        cipher = new_cipher()
        key_id, _ = add_user_key(self.conn, cipher, "alice")
        auth_id, _ = add_authorization(self.conn, cipher, key_id)
        rows = (
            "SELECT client_pubkey, connected_at, last_seen_at, logged_out_at FROM client_sessions"
        )
        self.successResultOf(self.store.save_session(auth_id, "c1", 10))
        self.successResultOf(self.store.end_session(auth_id, "c1", 20))
        self.assertEqual(self.conn.execute(rows).fetchall(), [("c1", 10, 20, 20)])
        self.successResultOf(self.store.save_session(auth_id, "c1", 30))
        self.assertEqual(self.conn.execute(rows).fetchall(), [("c1", 10, 30, None)])
        self.failureResultOf(self.store.save_session(999, "c1", 30), StoreError)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM activity_log").fetchone()[0])

    def test_activity_batched_by_time(self) -> None:
        """Rows wait for the interval, then go in one write."""
        self.store.record_activity(record())
        self.store.record_activity(record())
        self.assertEqual(self.count(), 0)
        self.clock.advance(1.0)
        self.assertEqual(self.count(), 2)

    def test_activity_batched_by_size(self) -> None:
        """Reaching the batch size writes at once; stop() flushes the rest."""
        for _ in range(4):
            self.store.record_activity(record())
        self.assertEqual(self.count(), 3)
        self.successResultOf(self.store.stop())
        self.assertEqual(self.count(), 4)

    def test_activity_failures_logged_once_never_raise(self) -> None:
        """A failing database drops rows with one ERROR line per outage, never an exception."""
        self.conn.execute("DROP TABLE activity_log")
        for _ in range(6):
            self.store.record_activity(record())
        self.clock.advance(1.0)
        errors = [formatEvent(e) for e in self.logged if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("Activity log write failed", errors[0])
        self.assertEqual(self.store.activity_dropped, 6)


class StoreServiceTests(TestCase):
    """The real thing: adbapi pool with one thread, on the real reactor."""

    def setUp(self) -> None:
        self.db_path, conn = new_database(self.mktemp())
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)
        self.cipher = open_file_cipher(conn, self.key_path)
        self.key_id, self.user = add_user_key(conn, self.cipher, "alice")
        self.regular, _ = add_authorization(conn, self.cipher, self.key_id)
        add_authorization(
            conn, self.cipher, self.key_id, same_key_pubkey=self.user.pubkey_hex, kind="oauth"
        )
        conn.close()
        self.registry = Registry()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def service(self, **kwargs: Any) -> StoreService:
        options: dict[str, Any] = {
            "database_path": self.db_path,
            "registry": self.registry,
            "reactor": reactor,
            "master_key_path": self.key_path,
            "reload_interval": None,
            "sweep_interval": None,
            "reconcile_interval": None,
            "prune_interval": None,
        }
        options.update(kwargs)
        service = StoreService(**options)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path)
        self.addCleanup(conn.close)
        return conn

    async def test_start_loads_registry_and_serves(self) -> None:
        """ready fires with every live authorization loaded and the runbook's log line."""
        service = self.service()
        await service.ready
        self.assertEqual(len(self.registry), 2)
        lines = [formatEvent(e) for e in self.logged]
        self.assertIn("Database initialized", lines)
        self.assertIn("Loaded 2 total authorizations (1 regular + 1 OAuth)", lines)
        claims = [service.store.claim_request(f"id{i}", NOW) for i in range(20)]
        results = [await d for d in claims]
        self.assertEqual(results, [True] * 20)
        self.assertLess(service.store.claim_transactions, 20)
        self.assertFalse(await service.store.claim_request("id3", NOW))

    async def test_reload_sees_cli_changes(self) -> None:
        """Rows added and revoked by another connection reach the registry on reload."""
        service = self.service()
        await service.ready
        conn = self.writer()
        _, pubkey = add_authorization(conn, self.cipher, self.key_id)
        conn.execute("UPDATE authorizations SET revoked_at = 1 WHERE id = ?", (self.regular,))
        conn.commit()
        info = await service.reload()
        self.assertEqual((info.upserts, info.removals, info.error), (1, 1, None))
        self.assertIsNotNone(self.registry.get(pubkey))
        self.assertIsNone(self.registry.by_id(self.regular))
        self.assertIs(service.last_reload, info)

    async def test_reload_keeps_in_memory_sessions(self) -> None:
        """A reload rebuilding a row keeps the sessions the engine recorded in memory."""
        service = self.service()
        await service.ready
        auth = self.registry.by_id(self.regular)
        assert auth is not None
        auth.sessions = {"client": True}
        conn = self.writer()
        conn.execute("UPDATE authorizations SET label = 'x' WHERE id = ?", (self.regular,))
        conn.commit()
        await service.reload()
        rebuilt = self.registry.by_id(self.regular)
        assert rebuilt is not None
        self.assertIsNot(rebuilt, auth)
        self.assertEqual(rebuilt.sessions, {"client": True})

    async def test_expiry_sweep(self) -> None:
        """An expired authorization is refused (not counted) for the grace, then dropped."""
        conn = self.writer()
        expiring, _ = add_authorization(conn, self.cipher, self.key_id, expires_at=NOW + 60)
        now = [float(NOW)]
        self.registry = Registry(now=lambda: now[0])
        service = self.service(now=lambda: now[0], refusal_grace=100)
        await service.ready
        live = sum(self.registry.counts().values())
        self.assertEqual(service.sweep_expired(), [])
        now[0] += 61
        self.assertEqual(service.sweep_expired(), [])
        self.assertIsNotNone(self.registry.by_id(expiring))
        self.assertEqual(sum(self.registry.counts().values()), live - 1)
        self.assertEqual(self.registry.refusing_count(), 1)
        now[0] += 100
        self.assertEqual(service.sweep_expired(), [expiring])
        self.assertIsNone(self.registry.by_id(expiring))
        self.assertEqual(self.registry.refusing_count(), 0)

    async def test_missing_database(self) -> None:
        """A missing database fails ready with DatabaseMissing and creates no file."""
        path = os.path.join(os.path.dirname(self.db_path), "none.db")
        service = self.service(database_path=path)
        with self.assertRaises(DatabaseMissing):
            await service.ready
        self.assertFalse(os.path.exists(path))

    async def test_wrong_master_key(self) -> None:
        """A different master key fails ready with the one-line MasterKeyError."""
        write_master_key_file(self.key_path, os.urandom(32))
        service = self.service()
        with self.assertRaises(MasterKeyError) as caught:
            await service.ready
        self.assertEqual(str(caught.exception), "master key does not match this database")


class StoreServiceTimerTests(SynchronousTestCase):
    """StoreService with a synchronous runner and a Clock: the periodic tasks."""

    def setUp(self) -> None:
        self.db_path, self.conn = new_database(self.mktemp())
        self.key_path = os.path.join(os.path.dirname(self.db_path), "master.key")
        create_master_key_file(self.key_path)
        self.cipher = open_file_cipher(self.conn, self.key_path)
        self.key_id, _ = add_user_key(self.conn, self.cipher, "alice")
        self.clock = Clock()
        self.registry = Registry()
        self.service = StoreService(
            database_path=self.db_path,
            registry=self.registry,
            reactor=self.clock,
            master_key_path=self.key_path,
            runner_factory=lambda service: ConnectionRunner(self.conn, self.db_path),
            now=lambda: float(NOW),
        )
        self.service.startService()
        self.successResultOf(self.service.ready)

    def test_reload_timer_picks_up_changes(self) -> None:
        """Within one reload interval a new row is served, with no signal."""
        _, pubkey = add_authorization(self.conn, self.cipher, self.key_id)
        self.assertIsNone(self.registry.get(pubkey))
        self.clock.advance(0.5)
        self.assertIsNotNone(self.registry.get(pubkey))

    def test_reload_failure_keeps_timer(self) -> None:
        """A failing reload is recorded and logged; the next tick recovers."""
        self.conn.execute("ALTER TABLE change_counter RENAME TO moved")
        self.clock.advance(0.5)
        assert self.service.last_reload is not None
        self.assertIsNotNone(self.service.last_reload.error)
        self.conn.execute("ALTER TABLE moved RENAME TO change_counter")
        _, pubkey = add_authorization(self.conn, self.cipher, self.key_id)
        self.clock.advance(0.5)
        self.assertIsNone(self.service.last_reload.error)
        self.assertIsNotNone(self.registry.get(pubkey))


class StoreServiceStopTests(SynchronousTestCase):
    """Stopping while the database thread is busy."""

    def test_stop_waits_for_a_reload_in_flight(self) -> None:
        """stopService closes the pool only after a running reload is done, never mid-call."""
        db_path, conn = new_database(self.mktemp())
        key_path = os.path.join(os.path.dirname(db_path), "master.key")
        create_master_key_file(key_path)
        runner = QueuedRunner(conn)
        service = StoreService(
            database_path=db_path,
            registry=Registry(),
            reactor=Clock(),
            master_key_path=key_path,
            runner_factory=lambda service: runner,
        )
        service.startService()
        runner.run_all()
        self.successResultOf(service.ready)
        reloading = service.reload()
        stopping = service.stopService()
        self.assertNoResult(stopping)
        runner.run_next()
        self.successResultOf(reloading)
        self.successResultOf(stopping)
