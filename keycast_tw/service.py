"""The daemon's service tree (DESIGN §3), built from a validated KeycastConfig.

``build_service`` only constructs objects: nothing here starts a thread, opens a file or a
socket until ``startService`` (twistd may fork after makeService). The children are the store
(database, master key, registry load and reload), the sender of queued nostrconnect responses,
the relay pool, the health web server, the
reload-signal watcher and the systemd watchdog; the parent owns what spans them: the instance
lock, the crypto thread pool, signal handlers, readiness, and an ordered graceful stop (drain
in-flight requests, then relays, then the database), which plain MultiService cannot do because
it stops its children all at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from keycast_tw import __version__
from keycast_tw.config import KeycastConfig
from keycast_tw.connects import ConnectResponder
from keycast_tw.dispatch import Dispatcher
from keycast_tw.metrics import Metrics
from keycast_tw.nostr.event import sign_event
from keycast_tw.process import (
    InstanceLock,
    InstanceLockError,
    acquire_instance_lock,
    fatal,
    install_signal_handlers,
)
from keycast_tw.relay.endpoint import endpoint_for_url
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.pool import RelayPool
from keycast_tw.reload import ReloadSignalWatcher
from keycast_tw.signer.crypto import CryptoRunner, ThreadPoolRunner
from keycast_tw.signer.engine import Engine, EngineConfig
from keycast_tw.signer.model import OAUTH, REGULAR, Authorization
from keycast_tw.signer.registry import Registry
from keycast_tw.store.db import require_database
from keycast_tw.store.errors import DatabaseMissing, StoreError
from keycast_tw.store.kms import GcpKms
from keycast_tw.store.runner import Runner
from keycast_tw.store.service import StoreService
from keycast_tw.systemd import SystemdNotifier, WatchdogService
from keycast_tw.web.server import HealthServer

#: How long every relay may stay disconnected before the systemd watchdog stops being fed.
RELAY_OUTAGE_GRACE = 600.0


def shard_of(bunker_pubkey: str, shard_count: int) -> int:
    """The shard serving ``bunker_pubkey``; pubkeys are uniformly random, so a prefix will do."""
    return int(bunker_pubkey[:16], 16) % shard_count


class RequestStats:
    """Counts handled requests by method and outcome for /status and forwards them to metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.counts: dict[str, dict[str, int]] = {}

    def request_handled(self, method: str | None, outcome: str, seconds: float) -> None:
        name = method or "none"
        by_outcome = self.counts.setdefault(name, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        self._metrics.request_handled(name, outcome, seconds)


class KeycastService(MultiService):
    """The root service: owns the cross-cutting pieces and the start/stop order.

    The keyword arguments are seams: ``store_runner`` replaces the database thread (a
    StoreService runner factory) and ``run_crypto`` the crypto thread pool, so that tests can
    drive the whole tree on a fake clock, one step at a time.
    """

    log = Logger()

    def __init__(
        self,
        config: KeycastConfig,
        reactor: Any,
        *,
        relay_endpoint: Callable[..., Any] = endpoint_for_url,
        environ: Mapping[str, str] = os.environ,
        kms: GcpKms | None = None,
        lock: Callable[[str, tuple[int, int] | None], InstanceLock] = acquire_instance_lock,
        install_signals: bool = True,
        store_runner: Callable[[StoreService], Runner] | None = None,
        run_crypto: CryptoRunner | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.setName("keycast")  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._lock_factory = lock
        self._install_signals = install_signals
        self._lock: InstanceLock | None = None
        self._shard = (
            (config.shard_index, config.shard_count) if config.shard_count > 1 else None
        )
        self._started_at = 0.0
        self._ready = False
        self._stopping = False
        self._last_relay_seen = 0.0

        self.metrics = Metrics()
        self.stats = RequestStats(self.metrics)
        self.registry = Registry(
            accept=self._owned if config.shard_count > 1 else None, now=self._clock.seconds
        )
        self.crypto_pool = ThreadPool(
            minthreads=0, maxthreads=config.crypto_threads, name="keycast-crypto"
        )
        self.store = StoreService(
            database_path=config.database_path,
            registry=self.registry,
            reactor=reactor,
            master_key_path=None if config.kms else config.master_key_path,
            kms=kms,
            reload_interval=config.reload_interval,
            reconcile_interval=config.full_reload_interval,
            replay_window=int(config.created_at_window),
            runner_factory=store_runner,
            on_pending_connects=lambda connects: self.connects.offer(connects),
        )
        self.store.setName("store")  # type: ignore[no-untyped-call]
        self.engine = Engine(
            self.registry,
            self.store.store,
            clock=reactor,
            run_crypto=run_crypto or ThreadPoolRunner(reactor, self.crypto_pool),
            config=EngineConfig(
                created_at_window=int(config.created_at_window),
                rate_per_second=config.rate_limit,
                rate_burst=config.rate_burst,
            ),
        )
        self.dispatcher = Dispatcher(
            self.engine,
            lambda event: self.relays.publish(event),
            clock=reactor,
            observer=self.stats,
            max_inflight=config.max_inflight,
        )
        self.metrics.track_inflight(lambda: self.dispatcher.inflight)
        self.relays = RelayPool(
            config.relays,
            reactor=reactor,
            on_event=self.dispatcher.on_event,
            auth_signer=self._sign_relay_auth,
            endpoint_for_url=relay_endpoint,
            options=RelayOptions(
                p_chunk_size=config.relay_p_chunk,
                firehose_threshold=config.relay_firehose_threshold,
                handshake_timeout=config.relay_handshake_timeout,
            ),
        )
        self.relays.add_observer(self.metrics)
        self.relays.add_observer(self)
        self.connects = ConnectResponder(
            registry=self.registry,
            build=self.engine.connect_response,
            publish=lambda event, relays: self.relays.publish(event, counted=relays),
            listening=lambda pubkey, relays: self.relays.listening_for(pubkey, relays),
            forget=self.store.delete_pending_connect,
            clock=reactor,
        )
        self.relays.add_observer(self.connects)
        self.registry.add_listener(self._bunkers_changed)
        self.web = HealthServer(
            config.health_endpoint,
            reactor=reactor,
            status=self.status,
            readiness=self.readiness,
            metrics=self.metrics,
            on_error=self._fatal,
        )
        self.reload_watcher = ReloadSignalWatcher(
            config.reload_signal_path,
            reload=self.full_reload,
            clock=reactor,
            interval=config.reload_interval,
        )
        self.notifier = SystemdNotifier(environ)
        # The relay pool joins the tree once the store is loaded (see _store_loaded).
        for child in (
            self.store,
            self.connects,
            self.web,
            self.reload_watcher,
            WatchdogService(self.notifier, reactor, self.healthy),
        ):
            child.setServiceParent(self)  # type: ignore[no-untyped-call]

    # -- start -------------------------------------------------------------------------------

    def startService(self) -> None:
        self._started_at = self._clock.seconds()
        self._stopping = False
        try:
            require_database(self.config.database_path)
            self._lock = self._lock_factory(self.config.database_path, self._shard)
        except (DatabaseMissing, InstanceLockError) as error:
            Service.startService(self)  # type: ignore[no-untyped-call]
            self._fatal(str(error))
            return
        self.crypto_pool.start()
        self._reactor.addSystemEventTrigger("during", "shutdown", self.crypto_pool.stop)
        if self._install_signals:
            self._reactor.callWhenRunning(
                install_signal_handlers, self._reactor, on_reload=self.full_reload
            )
        super().startService()  # type: ignore[no-untyped-call]
        self.store.ready.addCallbacks(self._store_loaded, self._store_failed)
        self._clock.callLater(self.config.ready_timeout, self._check_ready_timeout)

    def _store_loaded(self, _: object) -> None:
        # Relays start only now: their subscription needs the bunker pubkeys, and NIP-42 AUTH
        # needs the persistent relay identity, which the store loads. The first load may add
        # no pubkey (an empty database): tell the pool either way.
        self.relays.set_bunker_pubkeys(self.registry.bunker_pubkeys())
        self.relays.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.metrics.set_authorizations(self.registry.counts())
        self.metrics.reloaded("ok")
        # systemd's READY=1 means "started": the database is open and loaded. Waiting for a relay
        # too would make a relay outage at boot a start-up failure and a restart loop, which
        # cannot bring a relay back; the watchdog and /ready cover relay health instead.
        self.notifier.ready(f"loaded {sum(self.registry.counts().values())} authorizations")
        self._check_ready()

    def _sign_relay_auth(self, template: dict[str, Any]) -> dict[str, Any]:
        """NIP-42: sign a relay's AUTH challenge with the daemon's persistent relay identity,
        so relays that allow-list the signer's pubkey keep accepting it across restarts."""
        identity = self.store.relay_identity
        if identity is None:  # relays start after the store loaded it; a guard, not a path
            raise RuntimeError("the relay identity is not loaded")
        return sign_event(template, identity)

    def _store_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, StoreError):
            self._fatal(failure.getErrorMessage())
        else:
            self.log.failure("The store failed to start", failure)
            self._fatal(f"the store failed to start: {failure.getErrorMessage()}")

    def _fatal(self, message: str) -> None:
        fatal(self._reactor, f"keycast: {message}")

    def _check_ready_timeout(self) -> None:
        if self.running and not self._ready:
            self.log.error(
                "Not ready {seconds:g}s after start: {reasons}",
                seconds=self.config.ready_timeout,
                reasons="; ".join(self.readiness()),
            )

    # -- relay pool observer hooks ---------------------------------------------------------------

    def relay_connected(self, url: str) -> None:
        self._last_relay_seen = self._clock.seconds()
        self._check_ready()

    def relay_disconnected(self, url: str) -> None:
        self._last_relay_seen = self._clock.seconds()

    def relay_subscribed(self, url: str) -> None:
        self._check_ready()

    # -- readiness and status ----------------------------------------------------------------

    def readiness(self) -> list[str]:
        """Why the daemon is not ready (empty when it is): DESIGN §4's /ready conditions.

        "stopping" comes first from the moment a stop begins: the dispatcher is draining and
        refuses new requests while /ready is still served, and a load balancer (Cloud Run,
        a proxy) must stop routing to the daemon then, not once it is gone.
        """
        reasons = ["stopping"] if self._stopping else []
        if not self.store.ready.called or self.store.last_reload is None:
            reasons.append("authorizations not loaded")
        if len(self.registry) and not self.relays.subscribed_count():
            reasons.append(
                f"no relay subscription live ({self.relays.connected_count()}"
                f"/{len(self.config.relays)} relays connected)"
            )
        elif not self.relays.connected_count():
            reasons.append(f"no relay connected (0/{len(self.config.relays)})")
        return reasons

    def _check_ready(self) -> None:
        if self._ready or self.readiness():
            return
        self._ready = True
        self.log.info("Unified signer daemon ready")
        self.notifier.status(f"serving {sum(self.registry.counts().values())} authorizations")

    def healthy(self) -> bool:
        """Feed the systemd watchdog unless every relay has been gone for a long time."""
        if self.relays.connected_count():
            self._last_relay_seen = self._clock.seconds()
            return True
        last = self._last_relay_seen or self._started_at
        return self._clock.seconds() - last < RELAY_OUTAGE_GRACE

    def status(self) -> dict[str, Any]:
        """The /status document; built from counters, never from keys or request content."""
        counts = self.registry.counts()
        reasons = self.readiness()
        last_reload = self.store.last_reload
        return {
            "version": __version__,
            "ready": not reasons,
            "reasons": reasons,
            "shard": f"{self.config.shard_index}/{self.config.shard_count}",
            "authorizations": {
                "total": sum(counts.values()),
                REGULAR: counts.get(REGULAR, 0),
                OAUTH: counts.get(OAUTH, 0),
                "refusing": self.registry.refusing_count(),
            },
            "relays": self.relays.status(),
            "relays_connected": self.relays.connected_count(),
            "relays_subscribed": self.relays.subscribed_count(),
            "requests": self.stats.counts,
            "inflight": self.dispatcher.inflight,
            "last_request_at": self.dispatcher.last_request_at,
            "last_reload": asdict(last_reload) if last_reload is not None else None,
            "caches": self.engine.cache_stats(),
        }

    # -- reload ------------------------------------------------------------------------------

    def full_reload(self) -> Deferred[Any]:
        """SIGHUP and the reload signal file: re-read every authorization from the database.

        Before the start-up load has finished there is nothing to reload: that load reads
        everything, and later changes reach the registry through the incremental reload.
        """
        if not self.store.ready.called:
            self.log.info("Reload requested during the start-up load, which reads everything")
            return succeed(None)
        d = self.store.reconcile()
        d.addCallback(self._reloaded)
        return d

    def _reloaded(self, info: Any) -> Any:
        self.metrics.reloaded("ok" if getattr(info, "error", None) is None else "error")
        return info

    def _bunkers_changed(self, added: frozenset[str], removed: frozenset[str]) -> None:
        self.relays.set_bunker_pubkeys(self.registry.bunker_pubkeys())
        self.metrics.set_authorizations(self.registry.counts())

    def _owned(self, auth: Authorization) -> bool:
        return shard_of(auth.bunker_pubkey, self.config.shard_count) == self.config.shard_index

    # -- stop --------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Drain in-flight requests, then stop relays, the web server and the database, in order."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self.notifier.stopping()
        if self._lock is None:  # never really started (another daemon holds the database)
            return
        drained = await self.dispatcher.drain(self.config.shutdown_timeout)
        if not drained:
            self.log.warn(
                "Stopping with {count} requests still in flight after {seconds:g}s",
                count=self.dispatcher.inflight,
                seconds=self.config.shutdown_timeout,
            )
        for name in ("reload-signal", "web", "watchdog", "connect-responses", "relays", "store"):
            child = self.namedServices.get(name)
            if child is not None and child.running:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self.log.failure("Stopping {service} failed", service=name)
        self._lock.release()
        self._lock = None
        self.log.info("Stopped")


def build_service(
    config: KeycastConfig,
    reactor: Any,
    *,
    environ: Mapping[str, str] = os.environ,
    **seams: Any,
) -> KeycastService:
    """The daemon for ``config``. ``seams`` are KeycastService keyword arguments, for tests."""
    kms = seams.pop("kms", None)
    if kms is None and config.kms is not None:
        kms = GcpKms(config.kms.key_resource, api_base=config.kms.api_base, clock=reactor)
    return KeycastService(config, reactor, environ=environ, kms=kms, **seams)
