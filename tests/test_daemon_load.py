# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""Under a burst of concurrent requests every request is answered and /health keeps answering.

Real processes on 127.0.0.1 (LocalRelay, the daemon, nostr-tools clients through
bench/roundtrip.mjs). The reactor must stay free while crypto runs on the CPU pool and database
work on the DB thread; this asserts outcomes (answers, 200s), never timings.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.interop_harness import InteropFixture, require_tool
from tests.load_helpers import HealthProbe, run_roundtrip

CLIENTS = 3
INFLIGHT = 6
REQUESTS = 90


class BurstTests(TestCase):
    async def test_burst_answered_and_health_keeps_answering(self) -> None:
        """Every sign_event of a concurrent burst is answered; every /health probe gets 200."""
        require_tool("node-clients")
        fx = InteropFixture(self)
        relay = await fx.local_relay()
        daemon = fx.daemon(relays=[relay.url], extra_args=["--crypto-threads", "2"])
        uris = await daemon.provision(count=CLIENTS)
        daemon.start()
        await daemon.wait_ready()
        probe = HealthProbe(f"{daemon.health_url}/health", fx.reactor, fx.http_pool).start()
        try:
            result = await run_roundtrip(
                fx, uris, clients=CLIENTS, inflight=INFLIGHT, requests=REQUESTS, max_seconds=60
            )
        finally:
            await probe.stop()
        self.assertEqual(
            (result["ok"], result["errors"], result["timeouts"], result["exit_code"]),
            (REQUESTS, 0, 0, 0),
            f"{result}\n{fx.report()}",
        )
        self.assertEqual(probe.failures, [], fx.report())
        self.assertGreater(len(probe.codes), 0)
        self.assertEqual(set(probe.codes), {200})
        status = await daemon.status()
        self.assertEqual(status["requests"]["sign_event"].get("ok"), REQUESTS, status)
        self.assertEqual(status["inflight"], 0)
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0, fx.report())
