# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The real daemon (``twistd -n keycast``) serves real NIP-46 clients through real relays.

Every test starts its own relay and daemon on fresh files (trial's janitor forbids a process
outliving a test, so a class cannot share one), drives the ``keycast`` CLI and one or both
client libraries (nostr-tools' BunkerSigner on Node, nostr-sdk's NostrConnect), and asserts
on what the clients got and on the daemon's own account (/status, /metrics, activity_log).
Waits are on the daemon's state, never on the clock: /ready, the log line that announces a
new subscription plan, /status counters.  Without the tools the tests skip, or fail when
CI=true (see interop_harness.require_tool).
"""

from __future__ import annotations

import signal
import sqlite3
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.interop_harness import (
    DEFAULT_TIMEOUT,
    ClientRun,
    DaemonProcess,
    InteropFixture,
    RelayProcess,
)
from tests.test_interop_harness import verifies

#: A peer whose private key the scenario clients hold, so that each round trip is checked
#: both ways: the peer decrypts what the bunker encrypted, the bunker what the peer did.
PEER_SECRET = "7f" * 32
NOTE: dict[str, Any] = {"kind": 1, "content": "interop note", "tags": [["t", "keycast-interop"]]}


def main_flow(tag: str) -> list[dict[str, Any]]:
    """connect, ping, get_public_key, sign_event and both encryption round trips."""
    return [
        {"op": "connect", "name": f"interop-{tag}"},
        {"op": "ping"},
        {"op": "get_public_key"},
        {"op": "sign_event", "event": {**NOTE, "content": f"interop note from {tag}"}},
        {
            "op": "nip44_roundtrip",
            "plaintext": f"nip44 plaintext {tag} ✓",
            "peer_secret": PEER_SECRET,
        },
        {
            "op": "nip04_roundtrip",
            "plaintext": f"nip04 plaintext {tag}",
            "peer_secret": PEER_SECRET,
        },
    ]


def user_keys() -> tuple[str, str]:
    """A fresh user key from nostr-sdk (independent of our code): (nsec, hex pubkey)."""
    from nostr_sdk import Keys

    keys = Keys.generate()
    return keys.secret_key().to_bech32(), keys.public_key().to_hex()


def request_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """keycast_requests_total samples from /metrics, by (method, outcome)."""
    counts = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "keycast_requests_total":
                counts[(sample.labels["method"], sample.labels["outcome"])] = sample.value
    return counts


def activity(daemon: DaemonProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the daemon's database (read-only, beside the running daemon thanks to WAL)."""
    with sqlite3.connect(f"file:{daemon.paths.database}?mode=ro", uri=True) as db:
        return db.execute(sql, args).fetchall()


async def wait_activity(
    case: TestCase, daemon: DaemonProcess, method: str, count: int
) -> list[tuple[Any, ...]]:
    """Poll activity_log (written in batches) until ``count`` rows for ``method``; no more."""
    reactor = daemon.fixture.reactor
    deadline = reactor.seconds() + DEFAULT_TIMEOUT
    while True:
        rows = activity(daemon, "SELECT outcome FROM activity_log WHERE method = ?", method)
        if len(rows) >= count or reactor.seconds() >= deadline:
            case.assertEqual(len(rows), count, f"{method} rows: {rows}\n{daemon.fixture.report()}")
            return rows
        await deferLater(reactor, 0.1, lambda: None)


class DaemonCase(TestCase):
    """A relay and a daemon with some authorizations of one imported user key."""

    def setUp(self) -> None:
        self.fx = InteropFixture(self)
        self.nsec, self.user_pubkey = user_keys()

    async def start(
        self, relay: RelayProcess, *, count: int = 1, extra_args: tuple[str, ...] = ()
    ) -> tuple[DaemonProcess, list[str]]:
        """Provision ``count`` authorizations, start the daemon, wait for /ready."""
        daemon = self.fx.daemon(relays=[relay.url], extra_args=extra_args)
        uris = await daemon.provision(count=count, nsec=self.nsec)
        daemon.start()
        await daemon.wait_ready()
        return daemon, uris

    def check_main_flow(self, run: ClientRun, kind: str) -> None:
        """Every step succeeded and the results are the user's, verified independently."""
        self.assertTrue(run.ok, run.report() + "\n" + self.fx.report())
        if kind == "node":
            self.assertEqual(run.step("ping")["result"], "pong")
        else:  # nostr-sdk cannot ping; its connect step reports the user key
            self.assertEqual(run.step("ping")["source"], "unsupported")
            self.assertEqual(run.step("connect")["result"], self.user_pubkey)
        self.assertEqual(run.step("get_public_key")["result"], self.user_pubkey)
        signed = run.step("sign_event")["result"]
        self.assertEqual(signed["pubkey"], self.user_pubkey)
        self.assertEqual(signed["kind"], NOTE["kind"])
        self.assertEqual(signed["tags"], NOTE["tags"])
        self.assertTrue(signed["content"].startswith("interop note from"))
        self.assertTrue(verifies(signed), signed)
        for op in ("nip44_roundtrip", "nip04_roundtrip"):
            result = run.step(op)["result"]
            self.assertTrue(result["match"], result)
            self.assertTrue(result["peer_decrypts"], result)
            self.assertTrue(result["bunker_decrypts"], result)
        self.assertIn("?iv=", run.step("nip04_roundtrip")["result"]["ciphertext"])

    async def run_both_clients(self, relay: RelayProcess) -> DaemonProcess:
        """The main flow with nostr-tools and with nostr-sdk, each on its own authorization."""
        daemon, uris = await self.start(relay, count=2)
        for kind, uri in zip(("node", "sdk"), uris, strict=True):
            # The sdk client has no ping: --keep-going runs the rest after that refusal.
            run = await self.fx.run_client(kind, uri, main_flow(kind), keep_going=True)
            if kind == "sdk":
                self.assertEqual(run.exit_code, 1, run.report())
                failed = [s["op"] for s in run.steps if not s["ok"]]
                self.assertEqual(failed, ["ping"], run.report())
                run.end["ok"], run.exit_code = True, 0
            self.check_main_flow(run, kind)
        return daemon


class MainFlowTests(DaemonCase):
    """connect, ping, get_public_key, sign_event, nip44 and nip04 with both client libraries."""

    async def test_local_relay(self) -> None:
        """Both clients complete the main flow via LocalRelay; /metrics and /status count it."""
        relay = await self.fx.local_relay()
        daemon = await self.run_both_clients(relay)
        # Each round trip is an encrypt and a decrypt by the bunker, plus the bunker_decrypts
        # check: nip44 and nip04 decrypt twice per client.
        expected = {
            ("connect", "ok"): 2, ("ping", "ok"): 1, ("get_public_key", "ok"): 2,
            ("sign_event", "ok"): 2, ("nip44_encrypt", "ok"): 2, ("nip44_decrypt", "ok"): 4,
            ("nip04_encrypt", "ok"): 2, ("nip04_decrypt", "ok"): 4,
        }  # fmt: skip
        code, text = await daemon.get("/metrics")
        self.assertEqual(code, 200)
        counts = request_counts(text)
        # nostr-sdk sends connect then get_public_key for its first request; nothing else runs.
        counts.pop(("get_public_key", "ok"), None)
        expected.pop(("get_public_key", "ok"))
        self.assertEqual(counts, {k: float(v) for k, v in expected.items()}, text)
        status = await daemon.status()
        self.assertEqual(status["requests"]["sign_event"], {"ok": 2})
        self.assertEqual(status["requests"]["connect"], {"ok": 2})
        await wait_activity(self, daemon, "sign_event", 2)

    async def test_nostr_relay(self) -> None:
        """Both clients complete the main flow via nostr-relay, which stores every request."""
        relay = await self.fx.nostr_relay()
        daemon = await self.run_both_clients(relay)
        status = await daemon.status()
        self.assertEqual(status["requests"]["sign_event"], {"ok": 2})
        await wait_activity(self, daemon, "sign_event", 2)


class AuthorizationTests(DaemonCase):
    """Single-use connect secrets, and the CLI changing authorizations under a running daemon."""

    async def test_second_client_reusing_the_secret_is_refused(self) -> None:
        """Another client presenting a used secret gets an error reply; the first may reconnect."""
        relay = await self.fx.local_relay()
        daemon, (uri,) = await self.start(relay)
        first_secret = "11" * 32
        first = await self.fx.run_client(
            "node", uri, [{"op": "connect"}], client_secret=first_secret
        )
        self.assertTrue(first.ok, first.report())
        for kind in ("node", "sdk"):
            second = await self.fx.run_client(
                kind, uri, [{"op": "connect"}, {"op": "get_public_key"}]
            )
            connect = second.step("connect")
            self.assertFalse(connect["ok"], second.report())
            self.assertEqual(connect["source"], "bunker", second.report())
            self.assertIn("secret", connect["error"].lower(), second.report())
        again = await self.fx.run_client(
            "node", uri, [{"op": "connect"}, {"op": "get_public_key"}], client_secret=first_secret
        )
        self.assertTrue(again.ok, again.report())
        self.assertEqual(again.step("get_public_key")["result"], self.user_pubkey)
        # nostr-sdk retries connect for its second step, so only the successes are exact:
        # the first connect and the reconnect; the refused clients got nothing else either.
        status = await daemon.status()
        self.assertEqual(status["requests"]["connect"]["ok"], 2, status)
        self.assertGreaterEqual(status["requests"]["connect"]["error"], 2, status)
        self.assertEqual(status["requests"]["get_public_key"], {"ok": 1, "error": 1}, status)

    async def test_authorization_created_while_running_is_served(self) -> None:
        """`keycast authorize` against the running daemon: the new URI works without a signal."""
        relay = await self.fx.local_relay()
        daemon, _ = await self.start(relay)
        mark = daemon.process.mark() if daemon.process else 0
        uri = await daemon.authorize()
        await daemon.wait_serving(2, after=mark)
        run = await self.fx.run_client(
            "sdk", uri, [{"op": "connect"}, {"op": "sign_event", "event": NOTE}]
        )
        self.assertTrue(run.ok, run.report())
        self.assertEqual(run.step("sign_event")["result"]["pubkey"], self.user_pubkey)

    async def test_revoked_authorization_is_refused(self) -> None:
        """After `keycast revoke` a connected client gets error replies naming the revocation,
        not even a pong, and no silence; the other authorization keeps working."""
        relay = await self.fx.local_relay()
        daemon, (kept_uri, revoked_uri) = await self.start(relay, count=2)
        client_secret = "22" * 32
        steps: list[dict[str, Any]] = [{"op": "connect"}, {"op": "sign_event", "event": NOTE}]
        run = await self.fx.run_client("node", revoked_uri, steps, client_secret=client_secret)
        self.assertTrue(run.ok, run.report())
        (await daemon.run_cli("revoke", "2")).check()  # a fresh database numbers them 1, 2
        await daemon.wait_status(
            lambda s: s["authorizations"]["total"] == 1 and s["authorizations"]["refusing"] == 1,
            "the revocation loaded",
        )
        refused = await self.fx.run_client(
            "node",
            revoked_uri,
            [{"op": "ping"}, {"op": "sign_event", "event": NOTE}],
            client_secret=client_secret,
            keep_going=True,
        )
        for step in refused.steps:
            self.assertFalse(step["ok"], refused.report())
            self.assertEqual(step["source"], "bunker", refused.report())
            self.assertIn("revoked", step["error"].lower(), refused.report())
        status = await daemon.status()
        self.assertEqual(status["requests"]["sign_event"], {"ok": 1, "error": 1}, status)
        kept = await self.fx.run_client("node", kept_uri, [{"op": "connect"}, {"op": "ping"}])
        self.assertTrue(kept.ok, kept.report())


class RelayOutageTests(DaemonCase):
    """The relay goes away mid-session and comes back on the same port."""

    async def test_relay_killed_and_restarted(self) -> None:
        """Requests work again after the daemon reconnects; the replayed ones are not re-run."""
        relay = await self.fx.nostr_relay()
        daemon, (uri,) = await self.start(relay)
        client_secret = "33" * 32
        before = await self.fx.run_client(
            "node", uri, [{"op": "connect"}, {"op": "sign_event", "event": NOTE}],
            client_secret=client_secret,
        )  # fmt: skip
        self.assertTrue(before.ok, before.report())
        relay.process.send_signal(signal.SIGKILL, group=True)
        await relay.process.wait_exit()
        await daemon.wait_status(lambda s: s["relays_connected"] == 0, "the relay lost")
        restarted = await self.fx.nostr_relay(port=relay.port)
        self.assertEqual(restarted.url, relay.url)
        await daemon.wait_status(
            lambda s: s["relays_subscribed"] == 1 and s["relays"][0]["reconnects"] >= 1,
            "the relay reconnected and subscribed",
            timeout=2 * DEFAULT_TIMEOUT,  # the reconnect backoff grew while the relay was down
        )
        # The session survives the outage: no connect this time.
        after = await self.fx.run_client(
            "node", uri, [{"op": "get_public_key"}, {"op": "sign_event", "event": NOTE}],
            client_secret=client_secret,
        )  # fmt: skip
        self.assertTrue(after.ok, after.report())
        # nostr-relay replayed the stored connect and sign_event to the new subscription:
        # each request was still handled exactly once.
        status = await daemon.status()
        self.assertEqual(status["requests"]["sign_event"], {"ok": 2}, status)
        self.assertEqual(status["requests"]["connect"], {"ok": 1}, status)
        await wait_activity(self, daemon, "sign_event", 2)
        await wait_activity(self, daemon, "connect", 1)


class DaemonRestartTests(DaemonCase):
    """Claims and sessions are persisted: a restarted daemon neither repeats nor forgets."""

    async def test_stored_request_is_not_executed_again_after_restart(self) -> None:
        """nostr-relay replays old requests to the new daemon; each is handled once in total."""
        relay = await self.fx.nostr_relay()
        daemon, (uri,) = await self.start(relay)
        steps: list[dict[str, Any]] = [{"op": "connect"}, {"op": "sign_event", "event": NOTE}]
        run = await self.fx.run_client("node", uri, steps)
        self.assertTrue(run.ok, run.report())
        bunker = run.start["bunker_pubkey"]
        probe = await self.fx.probe(relay.url)
        stored = await probe.subscribe("stored", {"kinds": [24133], "#p": [bunker]})
        self.assertEqual(len(stored), 2, stored)  # the relay does hold both requests
        replies = await probe.subscribe("replies", {"kinds": [24133], "authors": [bunker]})
        self.assertEqual(len(replies), 2, replies)
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0, self.fx.report())
        await wait_activity(self, daemon, "sign_event", 1)

        daemon.start()
        await daemon.wait_ready()
        status = await daemon.wait_status(
            lambda s: s["requests"].get("none", {}).get("ignored", 0) >= 2,
            "both replayed requests ignored",
        )
        self.assertEqual(status["requests"], {"none": {"ignored": 2}}, status)
        await wait_activity(self, daemon, "sign_event", 1)
        await wait_activity(self, daemon, "connect", 1)
        again = await probe.subscribe("replies-after", {"kinds": [24133], "authors": [bunker]})
        self.assertEqual(len(again), 2, "the restarted daemon answered a replayed request")

    async def test_session_survives_restart(self) -> None:
        """A client bound by connect is served by the restarted daemon without a new connect."""
        relay = await self.fx.local_relay()
        daemon, (uri,) = await self.start(relay)
        client_secret = "44" * 32
        run = await self.fx.run_client(
            "node", uri, [{"op": "connect"}], client_secret=client_secret
        )
        self.assertTrue(run.ok, run.report())
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0, self.fx.report())
        daemon.start()
        await daemon.wait_ready()
        run = await self.fx.run_client(
            "node", uri, [{"op": "get_public_key"}, {"op": "sign_event", "event": NOTE}],
            client_secret=client_secret,
        )  # fmt: skip
        self.assertTrue(run.ok, run.report())
        self.assertEqual(run.step("get_public_key")["result"], self.user_pubkey)
        stranger = await self.fx.run_client(
            "node", uri, [{"op": "get_public_key", "timeout_ms": 5000}]
        )
        self.assertEqual(stranger.step("get_public_key")["source"], "bunker", stranger.report())
        status = await daemon.status()
        self.assertNotIn("connect", status["requests"], status)
        self.assertEqual(status["requests"]["get_public_key"], {"ok": 1, "error": 1}, status)
