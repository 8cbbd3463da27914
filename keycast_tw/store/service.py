"""StoreService: opens the database, checks the master key, loads the registry, keeps it current.

Before ``ready`` it also loads (or, on the first start, creates) the relay identity, the key
the daemon signs NIP-42 AUTH with: ``relay_identity``.

All I/O happens after startService, on the single database thread: twistd may fork after
makeService, and a blocking open on the reactor would stall health checks. ``ready`` fires once
the registry holds every live authorization (or fails with a StoreError whose message is the
one line to print). After that, timers on the injected clock run the incremental reload, the
expiry sweep, the replay-window pruning and a periodic full reconcile (the safety net for rows
deleted outright, which leave no change_seq behind). A reload that brings authorizations, and
every full load, also reads the queued nostrconnect responses (keycast_tw.store.connects) and
hands them to ``on_pending_connects``.

A master key rotation under the running daemon (`keycast rotate-master-key`) is followed: when
the loader finds the database re-keyed, the key the configuration gives now (the key file read
again, or Cloud KMS asked again for the wrapped data key) is obtained on the reactor side and
the load runs again with it (``_load``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.model import OAUTH, REGULAR, Authorization
from keycast_tw.signer.registry import Registry
from keycast_tw.store.connects import (
    MAX_PENDING_AGE,
    PendingConnect,
    delete_pending_connect,
    read_pending_connects,
)
from keycast_tw.store.crypto import (
    KIND_KMS,
    SecretCipher,
    open_cipher,
    read_key_info,
    read_master_key_file,
)
from keycast_tw.store.db import BUSY_TIMEOUT_MS, connection_init, database_uri, prepare_database
from keycast_tw.store.errors import MasterKeyError
from keycast_tw.store.expiry import ExpiryQueue
from keycast_tw.store.identity import load_or_create_relay_identity
from keycast_tw.store.kms import GcpKms
from keycast_tw.store.loader import REFUSAL_GRACE, AuthorizationLoader, MasterKeyRotated
from keycast_tw.store.runner import DB_TIMEOUT, PoolRunner, Runner
from keycast_tw.store.signer_store import SqliteSignerStore


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadInfo:
    """The outcome of the last reload or reconcile, for /status."""

    at: float
    kind: str  # "reload" | "reconcile" | "load"
    seq: int
    upserts: int
    removals: int
    skipped: int
    seconds: float
    error: str | None = None
    #: The last full reload (reconcile) failed: its error and time, carried by every record
    #: until one succeeds, so /status keeps showing it between the incremental reloads.
    reconcile_error: str | None = None
    reconcile_failed_at: float | None = None


class StoreService(Service):
    """The ``store`` child of the daemon's MultiService (DESIGN §3)."""

    log = Logger()

    def __init__(
        self,
        *,
        database_path: str,
        registry: Registry,
        reactor: Any,
        master_key_path: str | None = None,
        kms: GcpKms | None = None,
        reload_interval: float | None = 0.5,
        sweep_interval: float | None = 30.0,
        reconcile_interval: float | None = 3600.0,
        prune_interval: float | None = 300.0,
        replay_window: int = 600,
        refusal_grace: int = REFUSAL_GRACE,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        runner_factory: Callable[[StoreService], Runner] | None = None,
        now: Callable[[], float] = time.time,
        on_pending_connects: Callable[[list[PendingConnect]], None] | None = None,
        pending_connect_max_age: int = MAX_PENDING_AGE,
    ) -> None:
        self.database_path = database_path
        self.registry = registry
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._master_key_path = master_key_path
        self._kms = kms
        self._intervals = (reload_interval, sweep_interval, reconcile_interval, prune_interval)
        self._replay_window = replay_window
        self._busy_timeout_ms = busy_timeout_ms
        self._runner_factory = runner_factory or _pool_runner
        self._now = now
        self._on_pending_connects = on_pending_connects
        self._pending_connect_max_age = pending_connect_max_age
        self._pool: ConnectionPool | None = None
        self._runner: Runner | None = None
        self._loader: AuthorizationLoader | None = None
        self._refusal_grace = refusal_grace
        self._expiry = ExpiryQueue(refusal_grace)
        self._lock = DeferredLock()
        self._loops: list[LoopingCall] = []
        self._seq = 0
        self.cipher: SecretCipher | None = None
        #: The daemon's NIP-42 AUTH key, the same across restarts; set before ``ready`` fires.
        self.relay_identity: SecretKey | None = None
        self.ready: Deferred[None] = Deferred()
        self.last_reload: ReloadInfo | None = None
        self._reload_failing = False
        self._failed_reconcile: ReloadInfo | None = None
        self.store = SqliteSignerStore(self._run, clock=self._clock)

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._runner = self._runner_factory(self)
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed_start)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        d = self._lock.run(self._finish_work)
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: self._close_pool())
        return d

    def _finish_work(self) -> Deferred[None]:
        """Flush queued activity rows; runs under the reload lock, after any reload in flight.

        The pool's one thread runs calls in order, so once this flush is written every earlier
        call is done too. Closing the pool joins that thread on the reactor thread: it must find
        it idle, or the reactor would block on a database call.
        """
        return self.store.stop() if self._runner is not None else succeed(None)

    def open_pool(self) -> ConnectionPool:
        """The adbapi pool: one thread, one connection, created at start (never in makeService).

        It never creates the database file: `keycast init` does. A daemon that made an empty
        database on a fresh volume would serve zero authorizations (reference B22).
        """
        pool = ConnectionPool(  # type: ignore[no-untyped-call]
            "sqlite3",
            database_uri(self.database_path, create=False),
            uri=True,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=functools.partial(connection_init, busy_timeout_ms=self._busy_timeout_ms),
            cp_reactor=self._reactor,
        )
        self._pool = pool
        return pool

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()  # type: ignore[no-untyped-call]
            self._pool = None

    def _run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = DB_TIMEOUT) -> Any:
        if self._runner is None:
            raise RuntimeError("the store has not started")
        return self._runner(fn, *args, timeout=timeout)

    async def _start(self) -> None:
        await self._run(prepare_database, self.database_path, timeout=None)
        self.cipher = await open_cipher(
            functools.partial(self._run, timeout=None),
            master_key_path=self._master_key_path,
            kms=self._kms,
        )
        # Only now: the runbook reads this line as "the database and its key are usable".
        self.log.info("Database initialized")
        self.relay_identity = await self._run(
            load_or_create_relay_identity, self.cipher, timeout=None
        )
        self._loader = AuthorizationLoader(self.cipher, refusal_grace=self._refusal_grace)
        await self.reconcile()
        reload_interval, sweep_interval, reconcile_interval, prune_interval = self._intervals
        self._every(reload_interval, self.reload)
        self._every(sweep_interval, self.sweep_expired)
        self._every(reconcile_interval, self.reconcile)
        self._every(prune_interval, self.prune_seen_requests)
        self.ready.callback(None)

    def _failed_start(self, failure: Failure) -> None:
        self.ready.errback(failure)

    def _never_fails(self, work: Callable[[], object]) -> Deferred[None]:
        """Run one periodic task; a LoopingCall stops on a failure, so log it and carry on."""
        d: Deferred[object] = maybeDeferred(work)
        d.addErrback(
            lambda failure: self.log.error(
                "Periodic store task failed: {error}", error=failure.getErrorMessage()
            )
        )
        return d.addCallback(lambda _: None)

    def _every(self, interval: float | None, work: Callable[[], object]) -> None:
        if interval is None:
            return
        loop = LoopingCall(self._never_fails, work)
        loop.clock = self._clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    # -- keeping the registry current --------------------------------------------------------

    def reload(self) -> Deferred[ReloadInfo]:
        """Apply what changed since the last reload (O(changes)); serialised with reconcile."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._reload()))

    def reconcile(self) -> Deferred[ReloadInfo]:
        """Reload everything and swap the registry content (start-up, periodic safety net)."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._reconcile()))

    async def _reload(self) -> ReloadInfo:
        loader = self._require_loader()
        started = self._now()
        try:
            result = await self._load(loader.reload, self._seq, int(started))
        except Exception as error:
            return self._record(ReloadInfo(started, "reload", self._seq, 0, 0, 0, 0.0, str(error)))
        if result.upserts or result.removals:
            self.registry.update(_merge_sessions(self.registry, result.upserts), result.removals)
            self._expiry.track(result.upserts)
        self._seq = result.new_seq
        if result.upserts:
            # `keycast connect` queues its response with the new authorization, in one commit.
            await self._pick_up_connects()
        return self._record(
            ReloadInfo(
                started,
                "reload",
                result.new_seq,
                len(result.upserts),
                len(result.removals),
                loader.skipped,
                self._now() - started,
            )
        )

    async def _reconcile(self) -> ReloadInfo:
        """A full load; once started, a failure is recorded (and returned), not raised.

        The start-up load raises, so that ``ready`` fails with its one line. A periodic or
        SIGHUP reconcile that fails leaves the registry as it was and returns the failure like
        an incremental reload does: /status shows it, the reload metric counts it as an error,
        and the reload signal file is kept for a retry.
        """
        started = self._now()
        first = self.last_reload is None
        try:
            return await self._full_load(started, first)
        except Exception as error:
            if first:
                raise
            failed = ReloadInfo(
                started, "reconcile", self._seq, 0, 0, 0, self._now() - started, _message(error)
            )
            return self._record(failed)

    async def _full_load(self, started: float, first: bool) -> ReloadInfo:
        loader = self._require_loader()
        result = await self._load(loader.load_all, int(started), timeout=None)
        auths = (
            result.authorizations
            if first
            else _merge_sessions(self.registry, result.authorizations)
        )
        self.registry.replace_all(auths)
        self._expiry.reset(auths)
        self._seq = result.seq
        await self._pick_up_connects()
        counts = self.registry.counts()
        self.log.info(
            "Loaded {total} total authorizations ({regular} regular + {oauth} OAuth)",
            total=sum(counts.values()),
            regular=counts.get(REGULAR, 0),
            oauth=counts.get(OAUTH, 0),
        )
        return self._record(
            ReloadInfo(
                started,
                "load" if first else "reconcile",
                result.seq,
                len(auths),
                0,
                result.skipped,
                self._now() - started,
            )
        )

    async def _load(
        self, work: Callable[..., Any], *args: Any, timeout: float | None = DB_TIMEOUT
    ) -> Any:
        """Run a loader call; after a master key rotation, again with the key in force now.

        The loader raises MasterKeyRotated, before building anything, when the database's
        key_check is not its key. The new key is obtained here, outside the database thread
        (a Cloud KMS decrypt is asynchronous), and passed as the candidate the loader adopts
        only if it matches key_check in that call's own snapshot. No match fails this load
        with one clear MasterKeyError and the registry as it was.
        """
        try:
            return await self._run(work, *args, timeout=timeout)
        except MasterKeyRotated:
            candidate = await self._current_cipher()
        try:
            result = await self._run(work, *args, candidate, timeout=timeout)
        except MasterKeyRotated:
            raise MasterKeyError(self._rotated_message()) from None
        self._adopt_loader_cipher()
        return result

    async def _current_cipher(self) -> SecretCipher:
        """The key the configuration gives now, unverified: the loader checks it.

        The key file is read on the database thread (blocking I/O, like at start); the KMS
        decrypt of the wrapped data key runs on the reactor, like at start.
        """
        if self._kms is None:
            path = self._master_key_path
            if path is None:
                raise MasterKeyError("no master key file and no KMS configured")
            key: bytes = await self._run(lambda conn: read_master_key_file(path))
            return SecretCipher(key)
        info = await self._run(read_key_info)
        if info is None or info[0] != KIND_KMS or info[1] is None:
            raise MasterKeyError(self._rotated_message())
        return SecretCipher(await self._kms.decrypt(bytes(info[1])))

    def _rotated_message(self) -> str:
        if self._kms is None:
            return (
                f"master key was rotated and the key file {self._master_key_path} does not"
                " match; restart with the new key"
            )
        return "master key was rotated and Cloud KMS gave no matching data key; restart the daemon"

    def _adopt_loader_cipher(self) -> None:
        """Use the key the loader switched to for everything else (queued connect secrets)."""
        cipher = self._require_loader().cipher
        if cipher is not self.cipher:
            self.cipher = cipher
            self.log.info(
                "The master key was rotated; switched to the new key (keys already loaded"
                " keep working with the old one)"
            )

    async def _pick_up_connects(self) -> None:
        """Hand the queued nostrconnect responses to ``on_pending_connects`` (never fails).

        Read after the registry holds their authorizations; the receiver sends those of the
        authorizations this daemon serves. Stale rows are dropped here, with a log line.
        """
        if self._on_pending_connects is None:
            return
        try:
            found = await self._run(
                read_pending_connects,
                self._require_cipher(),
                int(self._now()),
                self._pending_connect_max_age,
            )
        except Exception as error:
            self.log.error("Reading queued connect responses failed: {error}", error=str(error))
            return
        if found.stale:
            self.log.warn(
                "Dropped {count} connect responses not sent within {seconds}s"
                " (authorizations {ids}); pair those clients again with `keycast connect`",
                count=len(found.stale),
                seconds=self._pending_connect_max_age,
                ids=", ".join(map(str, found.stale)),
            )
        for authorization_id in found.broken:
            if self.registry.by_id(authorization_id) is None:
                continue  # another shard's (or a revoked) authorization: not ours to report
            self.log.error(
                "The queued connect response of authorization {authorization} does not"
                " decrypt with this master key (damaged, or written under another key)",
                authorization=authorization_id,
            )
        if found.connects:
            self._on_pending_connects(found.connects)

    def delete_pending_connect(self, authorization_id: int) -> Deferred[None]:
        """Forget a queued connect response: it was sent, or never will be."""
        d: Deferred[None] = self._run(delete_pending_connect, authorization_id)
        return d

    def sweep_expired(self) -> list[int]:
        """Re-file authorizations that expired as refused, and drop those refused long enough.

        Returns the ids dropped from the registry.
        """
        expired, dropped = self._expiry.due(self.registry, self._now())
        if expired or dropped:
            self.registry.update(expired, dropped)
        if dropped:
            self.log.info(
                "Dropped {count} authorizations revoked or expired over {days:g} days ago",
                count=len(dropped),
                days=self._refusal_grace / 86400,
            )
        return dropped

    def prune_seen_requests(self) -> Deferred[int]:
        """Forget replay claims older than twice the created_at window."""
        return self.store.prune_seen_requests(int(self._now()) - 2 * self._replay_window)

    def _record(self, info: ReloadInfo) -> ReloadInfo:
        """Make ``info`` the last_reload /status shows; log failures once per outage.

        Incremental reloads and full reloads are followed apart: a reconcile that fails while
        the incremental reloads succeed is logged, and stays visible in every later record
        (``reconcile_error``) until a reconcile succeeds.
        """
        if info.kind == "reload":
            self._log_transition("Reload", self._reload_failing, info.error)
            self._reload_failing = info.error is not None
        else:
            failing = self._failed_reconcile is not None
            self._log_transition("Full reload", failing, info.error)
            self._failed_reconcile = info if info.error is not None else None
        if self._failed_reconcile is not None:
            info = dataclasses.replace(
                info,
                reconcile_error=self._failed_reconcile.error,
                reconcile_failed_at=self._failed_reconcile.at,
            )
        if info.error is None and info.kind == "reload" and (info.upserts or info.removals):
            self.log.info(
                "Reloaded authorizations: {upserts} added or changed, {removals} removed",
                upserts=info.upserts,
                removals=info.removals,
            )
        self.last_reload = info
        return info

    def _log_transition(self, what: str, was_failing: bool, error: str | None) -> None:
        if error is not None and not was_failing:
            self.log.error("{what} failed: {error}", what=what, error=error)
        elif error is None and was_failing:
            self.log.info("{what} recovered", what=what)

    def _require_cipher(self) -> SecretCipher:
        if self.cipher is None:
            raise RuntimeError("the store has not loaded its master key yet")
        return self.cipher

    def _require_loader(self) -> AuthorizationLoader:
        if self._loader is None:
            raise RuntimeError("the store has not loaded its master key yet")
        return self._loader


def _message(error: Exception) -> str:
    """The one line /status shows for a failure (StoreErrors are written to be shown as-is)."""
    return str(error) or type(error).__name__


def _pool_runner(service: StoreService) -> Runner:
    return PoolRunner(
        service.open_pool(),
        service.database_path,
        clock=service._clock,
        busy_timeout_ms=service._busy_timeout_ms,
    )


def _merge_sessions(registry: Registry, auths: list[Authorization]) -> list[Authorization]:
    """Keep sessions the engine recorded in memory while the rows were being read.

    The engine updates Authorization.sessions first and persists afterwards, so a reload that
    read the row just before the write would otherwise forget a client that just connected.
    Memory wins for clients it knows; the database adds clients written by other processes.
    """
    for auth in auths:
        old = registry.by_id(auth.id)
        if old is not None and old.sessions:
            auth.sessions = {**(auth.sessions or {}), **old.sessions}
    return auths
