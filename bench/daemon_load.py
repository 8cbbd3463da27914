"""Daemon under load: sign_event throughput and latency, and /health latency while it runs.

Usage: .venv/bin/python bench/daemon_load.py [--relay local|nostr-relay] [--clients 4]
           [--inflight 5] [--requests 1000] [--max-seconds 60] [--crypto-threads N]

Starts a relay (nostr-sdk's LocalRelay by default, or nostr-relay from .venv-relay) and the
daemon (``twistd -n keycast``) as real processes on 127.0.0.1 in a scratch directory, creates one
authorization per client with the ``keycast`` CLI, then drives bench/roundtrip.mjs (nostr-tools
BunkerSigner clients) while a prober asks GET /health one request at a time. It prints /health
latency at rest, then the driver's requests/s and latency and /health latency during the load.
Everything is bounded (--requests, --max-seconds, per-request timeouts) and stopped at the end.

The daemon runs with ``--rate-limit 0``: the default per-client limit (10/s) would otherwise
refuse a benchmark client. Note LocalRelay adds ~44 ms to each round trip (docs/interop.md), so
use ``--relay nostr-relay`` for latency figures closer to the daemon's own cost. On a small
machine the driver, the relay, the daemon and this prober share the CPUs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.interop_harness import InteropFixture, require_tool
from tests.load_helpers import HealthProbe, run_roundtrip


class ScratchCase:
    """What InteropFixture needs from a TestCase (a temp dir, cleanups), for a script."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cleanups: list[Callable[[], object]] = []

    def mktemp(self) -> str:
        return str(self.root / "run")

    def addCleanup(self, cleanup: Callable[[], object]) -> None:
        self.cleanups.append(cleanup)

    async def clean(self) -> None:
        while self.cleanups:
            result = self.cleanups.pop()()
            if isinstance(result, Deferred):
                await result


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, as bench/roundtrip.mjs computes it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def describe(probe: HealthProbe) -> str:
    lat = probe.latencies_ms
    if not lat:
        return f"no answer ({len(probe.failures)} failures)"
    not_ok = sum(1 for code in probe.codes if code != 200) + len(probe.failures)
    return (
        f"{len(lat)} probes, p50 {percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms,"
        f" max {max(lat):.1f} ms, not 200: {not_ok}"
    )


async def bench(reactor: Any, args: argparse.Namespace, root: Path) -> None:
    case = ScratchCase(root)
    fx = InteropFixture(cast(SynchronousTestCase, case), reactor=reactor)
    try:
        relay = await (fx.nostr_relay() if args.relay == "nostr-relay" else fx.local_relay())
        extra = ["--rate-limit", "0"]
        if args.crypto_threads:
            extra += ["--crypto-threads", str(args.crypto_threads)]
        daemon = fx.daemon(relays=[relay.url], extra_args=extra)
        uris = await daemon.provision(count=args.clients)
        daemon.start()
        await daemon.wait_ready(timeout=30)
        url = f"{daemon.health_url}/health"

        idle = HealthProbe(url, reactor, fx.http_pool).start()
        await deferLater(reactor, 2.0, lambda: None)
        await idle.stop()

        busy = HealthProbe(url, reactor, fx.http_pool).start()
        try:
            result = await run_roundtrip(
                fx,
                uris,
                clients=args.clients,
                inflight=args.inflight,
                requests=args.requests,
                max_seconds=args.max_seconds,
            )
        finally:
            await busy.stop()
        status = await daemon.status()
        daemon.sigterm()
        exit_code = await daemon.wait_exit(timeout=30)

        print(f"relay: {args.relay}; clients {args.clients} x inflight {args.inflight}")
        print(
            f"sign_event: {result['ok']}/{result['requests']} ok, errors {result['errors']},"
            f" timeouts {result['timeouts']}, {result['seconds']} s"
        )
        print(
            f"requests/s {result['rps']}; latency p50 {result['p50_ms']} ms,"
            f" p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
        )
        print(f"/health at rest:     {describe(idle)}")
        print(f"/health during load: {describe(busy)}")
        print(f"daemon /status requests: {status['requests']}; exit status {exit_code}")
    finally:
        await case.clean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--relay", choices=["local", "nostr-relay"], default="local")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-seconds", type=int, default=60)
    parser.add_argument("--crypto-threads", type=int, default=0, help="default: the daemon's")
    args = parser.parse_args()
    try:
        for tool in ("keycast-daemon", "keycast-cli", "node-clients"):
            require_tool(tool)
        require_tool("nostr-relay" if args.relay == "nostr-relay" else "nostr-sdk")
    except SkipTest as missing:
        sys.exit(f"daemon_load: {missing}")
    root = Path(tempfile.mkdtemp(prefix="keycast-daemon-load-"))

    def run(reactor: Any) -> Deferred[None]:
        return ensureDeferred(bench(reactor, args, root))

    try:
        react(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
