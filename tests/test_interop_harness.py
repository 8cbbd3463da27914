# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The interop harness works: relays start, clients reach them, everything is cleaned up.

These tests run real processes (two relays from PyPI, nostr-tools on Node,
nostr-sdk) on 127.0.0.1 with bounded waits, so that the daemon's interop tests
can rely on the harness instead of debugging it.  Where a tool is missing they
skip, or fail when CI=true (see interop_harness.require_tool).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase, TestCase

from tests.interop_harness import (
    CLIENT_KINDS,
    REPO,
    ClientRun,
    CliResult,
    DaemonPaths,
    DaemonProcess,
    HarnessError,
    InteropFixture,
    RelayProbe,
    free_port,
    require_tool,
)


def signed_note(content: str) -> dict[str, Any]:
    """A kind-1 event signed by a fresh key (nostr-sdk, independent of our code)."""
    from nostr_sdk import EventBuilder, Keys, Kind

    event = EventBuilder(Kind(1), content).finalize(Keys.generate())
    result: dict[str, Any] = json.loads(event.as_json())
    return result


def new_pubkey() -> str:
    """A valid x-only public key nobody answers for."""
    from nostr_sdk import Keys

    pubkey: str = Keys.generate().public_key().to_hex()
    return pubkey


def verifies(event: dict[str, Any]) -> bool:
    """Whether nostr-sdk accepts the event's id and signature."""
    from nostr_sdk import Event

    ok: bool = Event.from_json(json.dumps(event)).verify()
    return ok


def process_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class RequireToolTests(SynchronousTestCase):
    def test_missing_tool_skips_outside_ci(self) -> None:
        """A missing tool skips the test and says how to install it."""
        empty = Path(self.mktemp())
        empty.mkdir()
        with self.assertRaises(SkipTest) as caught:
            require_tool("nostr-relay", environ={}, repo=empty)
        self.assertIn("relay-requirements.txt", str(caught.exception))

    def test_missing_tool_fails_on_ci(self) -> None:
        """With CI=true a missing tool is a failure, so CI cannot lose interop tests."""
        empty = Path(self.mktemp())
        empty.mkdir()
        with self.assertRaises(FailTest) as caught:
            require_tool("node-clients", environ={"CI": "true"}, repo=empty)
        self.assertIn("npm install", str(caught.exception))

    def test_present_tool_passes(self) -> None:
        """A tool that is there lets the test run, on CI too (no SkipTest, no FailTest)."""
        require_tool("nostr-sdk", environ={"CI": "true"})

    def test_unknown_tool_is_rejected(self) -> None:
        """A typo in a tool name is a programming error, not a skip."""
        with self.assertRaises(ValueError):
            require_tool("nodejs")

    def test_free_port_is_bindable_on_loopback(self) -> None:
        """free_port returns a port that 127.0.0.1 can bind right away."""
        port = free_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        self.assertGreater(port, 0)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


class ManagedProcessTests(TestCase):
    def setUp(self) -> None:
        self.fx = InteropFixture(self)

    async def test_wait_for_line_returns_the_match(self) -> None:
        """A ready line printed by the child resolves the wait with its match."""
        process = self.fx.spawn("ready", _python("print('READY 42', flush=True)"))
        match = await process.wait_for_line(r"READY (\d+)", timeout=10)
        self.assertEqual(match.group(1), "42")

    async def test_timeout_carries_the_output(self) -> None:
        """A wait that times out raises HarnessError showing what the child printed."""
        process = self.fx.spawn(
            "quiet", _python("import time; print('hello there', flush=True); time.sleep(60)")
        )
        await process.wait_for_line("hello")
        with self.assertRaises(HarnessError) as caught:
            await process.wait_for_line("never printed", timeout=0.3)
        self.assertIn("hello there", str(caught.exception))
        self.assertIn("within 0.3 s", str(caught.exception))

    async def test_early_exit_fails_the_wait(self) -> None:
        """A child that dies before its ready line fails the wait at once with its status."""
        process = self.fx.spawn(
            "crash", _python("import sys; print('boom', flush=True); sys.exit(3)")
        )
        with self.assertRaises(HarnessError) as caught:
            await process.wait_for_line("READY", timeout=10)
        self.assertIn("exit status 3", str(caught.exception))
        self.assertIn("boom", str(caught.exception))

    async def test_stop_kills_the_whole_group(self) -> None:
        """stop() leaves no grandchild behind, even when the child ignores SIGTERM."""
        process = self.fx.spawn(
            "parent",
            _python(
                "import signal, subprocess, sys, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                "print('CHILD', child.pid, flush=True)\n"
                "time.sleep(60)\n"
            ),
        )
        grandchild = int((await process.wait_for_line(r"CHILD (\d+)")).group(1))
        self.assertEqual(os.getpgid(grandchild), process.pid)
        await process.stop(timeout=0.5)
        self.assertEqual(process.exit_signal, signal.SIGKILL)
        for _ in range(100):  # init reaps the orphan shortly after; bounded
            if not process_alive(grandchild):
                break
            await deferLater(self.fx.reactor, 0.05, lambda: None)
        self.assertFalse(process_alive(grandchild))

    async def test_wait_for_port(self) -> None:
        """wait_for_port returns once the child listens on 127.0.0.1."""
        port = free_port()
        process = self.fx.spawn(
            "listener",
            _python(
                "import socket, time\n"
                "time.sleep(0.2)\n"
                f"s = socket.create_server(('127.0.0.1', {port}))\n"
                "time.sleep(60)\n"
            ),
        )
        await process.wait_for_port(port, timeout=10)
        self.assertFalse(process.ended)


class RelayTests(TestCase):
    """Both relays validate, acknowledge and deliver live, as the daemon will need."""

    def setUp(self) -> None:
        self.fx = InteropFixture(self)

    async def check_ok_and_live_delivery(self, url: str) -> None:
        reader = await self.fx.probe(url)
        writer = await self.fx.probe(url)
        stored = await reader.subscribe("live", {"kinds": [1]})
        self.assertEqual(stored, [])
        event = signed_note("interop harness")
        ok = await writer.publish(event)
        self.assertEqual(ok[:3], ["OK", event["id"], True], ok)
        delivered = await reader.expect(lambda m: m[:2] == ["EVENT", "live"])
        self.assertEqual(delivered[2], event)

    async def test_local_relay(self) -> None:
        """LocalRelay answers OK true to a signed event and delivers it to a subscriber."""
        require_tool("nostr-sdk")
        relay = await self.fx.local_relay()
        self.assertEqual(relay.url, f"ws://127.0.0.1:{relay.port}")
        await self.check_ok_and_live_delivery(relay.url)

    async def test_nostr_relay(self) -> None:
        """nostr-relay answers OK true to a signed event and delivers it to a subscriber."""
        require_tool("nostr-relay")
        relay = await self.fx.nostr_relay()
        await self.check_ok_and_live_delivery(relay.url)

    async def test_local_relay_rejects_a_bad_signature(self) -> None:
        """LocalRelay says OK false for a tampered event: the probe sees relay verdicts."""
        require_tool("nostr-sdk")
        relay = await self.fx.local_relay()
        probe = await self.fx.probe(relay.url)
        event = signed_note("original")
        event["sig"] = ("0" if event["sig"][0] != "0" else "1") + event["sig"][1:]
        ok = await probe.publish(event)
        self.assertEqual(ok[:3], ["OK", event["id"], False], ok)

    async def test_local_relay_nip42(self) -> None:
        """With --nip42 both, LocalRelay challenges and refuses an unauthenticated REQ."""
        require_tool("nostr-sdk")
        relay = await self.fx.local_relay(nip42="both")
        probe = await self.fx.probe(relay.url)
        probe.send(["REQ", "s", {"kinds": [24133]}])
        challenge = await probe.expect(lambda m: m[0] == "AUTH")
        self.assertIsInstance(challenge[1], str)
        closed = await probe.expect(lambda m: m[:2] == ["CLOSED", "s"])
        self.assertTrue(closed[2].startswith("auth-required"), closed)

    async def test_nostr_relay_auth(self) -> None:
        """nostr-relay with auth=True sends a NIP-42 challenge as soon as a client connects."""
        require_tool("nostr-relay")
        relay = await self.fx.nostr_relay(auth=True)
        probe = await self.fx.probe(relay.url)
        challenge = await probe.expect(lambda m: m[0] == "AUTH")
        self.assertIsInstance(challenge[1], str)


class ClientTests(TestCase):
    """Both NIP-46 clients put a well-formed connect request on the relay."""

    def setUp(self) -> None:
        self.fx = InteropFixture(self)
        self.bunker = new_pubkey()

    def uri(self, relay_url: str) -> str:
        return f"bunker://{self.bunker}?relay={relay_url}&secret=harness-secret"

    def check_request(self, run: ClientRun, message: list[Any]) -> None:
        """The request is a signed kind 24133 from the client, p-tagged to the bunker."""
        event = message[2]
        self.assertEqual(event["kind"], 24133)
        self.assertIn(["p", self.bunker], event["tags"])
        self.assertEqual(event["pubkey"], run.start["client_pubkey"])
        self.assertNotIn("?iv=", event["content"])  # both clients speak NIP-44
        self.assertTrue(verifies(event))

    def check_timed_out(self, run: ClientRun) -> None:
        """Nobody answers, so the client reports a bounded timeout, not a hang."""
        connect = run.step("connect")
        self.assertFalse(connect["ok"], run.report())
        self.assertEqual(connect["source"], "timeout", run.report())
        self.assertEqual(run.exit_code, 1, run.report())

    async def run_against_local_relay(self, client: str) -> None:
        relay = await self.fx.local_relay()
        probe = await self.fx.probe(relay.url)
        # LocalRelay keeps no ephemeral events: subscribe before the client sends.
        await probe.subscribe("req", {"kinds": [24133], "#p": [self.bunker]})
        run = await self.fx.run_client(
            client, self.uri(relay.url), [{"op": "connect"}], timeout_ms=3000
        )
        self.check_timed_out(run)
        message = await probe.expect(lambda m: m[:2] == ["EVENT", "req"], timeout=5)
        self.check_request(run, message)

    async def test_node_client_reaches_local_relay(self) -> None:
        """nostr-tools BunkerSigner publishes its connect request to the relay of the URI."""
        require_tool("node-clients")
        await self.run_against_local_relay("node")

    async def test_sdk_client_reaches_local_relay(self) -> None:
        """nostr-sdk NostrConnect publishes its connect request to the relay of the URI."""
        require_tool("nostr-sdk")
        await self.run_against_local_relay("sdk")

    async def test_nostr_relay_replays_stored_requests(self) -> None:
        """nostr-relay stores kind 24133 and replays it to a later REQ (replay tests rely on it)."""
        require_tool("node-clients")
        relay = await self.fx.nostr_relay()
        uri = self.uri(relay.url)
        run = await self.fx.run_client("node", uri, [{"op": "connect"}], timeout_ms=3000)
        self.check_timed_out(run)
        probe = await self.fx.probe(relay.url)
        stored = await probe.subscribe("late", {"kinds": [24133], "#p": [self.bunker]})
        self.assertEqual(len(stored), 1, stored)
        self.check_request(run, stored[0])

    async def test_clients_reject_a_bad_scenario(self) -> None:
        """An unknown op is a usage error (exit 2) before anything is sent."""
        require_tool("node-clients")
        uri = self.uri("ws://127.0.0.1:9")
        for kind in CLIENT_KINDS:
            run = await self.fx.run_client(kind, uri, [{"op": "sing_event"}])
            self.assertEqual(run.exit_code, 2, run.report())
            self.assertEqual(run.steps, [])

    async def test_clients_refuse_relays_off_loopback(self) -> None:
        """A URI naming a relay off this machine is refused before any connection."""
        require_tool("node-clients")
        uri = f"bunker://{self.bunker}?relay=wss://relay.example.com"
        for kind in CLIENT_KINDS:
            run = await self.fx.run_client(kind, uri, [{"op": "connect"}])
            self.assertEqual(run.exit_code, 2, run.report())
            self.assertIn("not on loopback", run.report())


class BenchDriverTests(TestCase):
    """bench/roundtrip.mjs refuses unbounded or off-machine runs before sending anything."""

    async def run_bench(self, *args: str) -> tuple[int | None, str]:
        require_tool("node-clients")
        node = shutil.which("node")
        assert node is not None
        fx = InteropFixture(self)
        process = fx.spawn("bench", [node, str(REPO / "bench" / "roundtrip.mjs"), *args])
        code = await process.wait_exit()
        return code, "\n".join(process.lines)

    async def test_requires_a_uri(self) -> None:
        """Without --uri the driver exits 2 with a usage message."""
        code, output = await self.run_bench()
        self.assertEqual(code, 2, output)
        self.assertIn("--uri", output)

    async def test_rejects_a_non_positive_bound(self) -> None:
        """A zero request count is refused rather than treated as unbounded."""
        code, output = await self.run_bench("--uri", "bunker://x", "--requests", "0")
        self.assertEqual(code, 2, output)
        self.assertIn("--requests", output)

    async def test_refuses_relays_off_loopback(self) -> None:
        """A bunker URI naming a remote relay is refused before any connection."""
        uri = f"bunker://{new_pubkey()}?relay=wss://relay.example.com"
        code, output = await self.run_bench("--uri", uri)
        self.assertEqual(code, 1, output)
        self.assertIn("not on loopback", output)


class DaemonHelperTests(SynchronousTestCase):
    """The daemon helpers follow the command contract (DESIGN.md §4) before the daemon exists."""

    def make_daemon(
        self, env: dict[str, str] | None = None, outer: dict[str, str] | None = None
    ) -> DaemonProcess:
        fx = InteropFixture(self, environ=outer)
        paths = DaemonPaths.under(fx.root / "daemon")
        return DaemonProcess(
            fx,
            paths,
            relays=["ws://127.0.0.1:7001", "ws://127.0.0.1:7002"],
            health_port=7010,
            env=env,
        )

    def test_argv_follows_the_command_contract(self) -> None:
        """twistd -n --pidfile P keycast --database D --master-key K --relay ... --health ..."""
        daemon = self.make_daemon()
        argv = daemon.argv()
        paths = daemon.paths
        self.assertTrue(argv[0].endswith("twistd"))
        self.assertEqual(
            argv[1:],
            [
                "-n", "--pidfile", str(paths.pidfile), "keycast",
                "--database", str(paths.database), "--master-key", str(paths.master_key),
                "--relay", "ws://127.0.0.1:7001", "--relay", "ws://127.0.0.1:7002",
                "--health", "tcp:7010:interface=127.0.0.1",
            ],
        )  # fmt: skip
        self.assertEqual(daemon.health_url, "http://127.0.0.1:7010")

    def test_environment_is_the_tests_not_the_shells(self) -> None:
        """Shell settings are dropped; the CLI gets the daemon's files; the plugin is findable."""
        leaked = {"KEYCAST_SHARD": "1/2", "PORT": "80", "NOTIFY_SOCKET": "/x"}
        daemon = self.make_daemon(
            env={"KEYCAST_LOG_FORMAT": "json"}, outer={**leaked, "HOME": "/h"}
        )
        for name in leaked:
            self.assertNotIn(name, daemon.env)
        self.assertEqual(daemon.env["HOME"], "/h")
        self.assertEqual(daemon.env["KEYCAST_LOG_FORMAT"], "json")
        self.assertEqual(daemon.env["DATABASE_PATH"], str(daemon.paths.database))
        self.assertEqual(daemon.env["MASTER_KEY_PATH"], str(daemon.paths.master_key))
        self.assertEqual(daemon.env["KEYCAST_RELAYS"], "ws://127.0.0.1:7001,ws://127.0.0.1:7002")
        self.assertEqual(daemon.env["PYTHONPATH"].split(os.pathsep)[0], str(REPO))

    def test_bunker_uri_is_taken_from_authorize_output(self) -> None:
        """CliResult.bunker_uri finds the bunker:// line and refuses a failed command."""
        good = CliResult(["keycast", "authorize"], 0, "Authorization 3\nbunker://ab?relay=x\n", "")
        self.assertEqual(good.bunker_uri(), "bunker://ab?relay=x")
        failed = CliResult(["keycast", "authorize"], 1, "", "no such key: alice")
        with self.assertRaises(HarnessError) as caught:
            failed.bunker_uri()
        self.assertIn("no such key: alice", str(caught.exception))
        with self.assertRaises(HarnessError):
            CliResult(["keycast", "authorize"], 0, "done\n", "").bunker_uri()


class CliTests(TestCase):
    """run_cli drives the real ``keycast`` admin command on the daemon's files."""

    async def test_authorize_gives_a_uri_the_clients_use(self) -> None:
        """init, key add and authorize yield a bunker:// URI whose requests reach the relay."""
        require_tool("keycast-cli")
        require_tool("node-clients")
        fx = InteropFixture(self)
        relay = await fx.local_relay()
        daemon = DaemonProcess(
            fx, DaemonPaths.under(fx.root / "daemon"), relays=[relay.url], health_port=free_port()
        )
        (await daemon.run_cli("init")).check()
        (await daemon.run_cli("key", "add", "alice")).check()
        result = await daemon.run_cli("authorize", "alice", "--relay", relay.url)
        uri = result.bunker_uri()
        self.assertNotIn("warning", result.stderr)
        self.assertTrue(daemon.paths.database.is_file())
        bunker = uri[len("bunker://") :].split("?")[0]
        probe = await fx.probe(relay.url)
        await probe.subscribe("req", {"kinds": [24133], "#p": [bunker]})
        run = await fx.run_client("node", uri, [{"op": "connect"}], timeout_ms=3000)
        self.assertEqual(run.start["bunker_pubkey"], bunker)
        self.assertEqual(run.start["relays"], [relay.url])
        message = await probe.expect(lambda m: m[:2] == ["EVENT", "req"], timeout=5)
        self.assertEqual(message[2]["pubkey"], run.start["client_pubkey"])


class WaitReadyTests(TestCase):
    """wait_ready polls /ready until 200 and gives up early when the daemon dies."""

    def setUp(self) -> None:
        self.fx = InteropFixture(self)
        self.daemon = DaemonProcess(
            self.fx,
            DaemonPaths.under(self.fx.root / "daemon"),
            relays=[],
            health_port=free_port(),
        )

    def fake_daemon(self, code: str) -> None:
        """Stand in for twistd with a small HTTP server on the health port."""
        self.daemon.process = self.fx.spawn("fake-daemon", _python(code))

    async def test_waits_through_503_for_200(self) -> None:
        """503 answers are retried; the 200 JSON body is returned."""
        self.fake_daemon(
            "import http.server, json\n"
            "count = [0]\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        count[0] += 1\n"
            "        ready = count[0] > 2\n"
            "        body = json.dumps({'ready': ready, 'polls': count[0]}).encode()\n"
            "        self.send_response(200 if ready else 503)\n"
            "        self.send_header('Content-Length', str(len(body)))\n"
            "        self.end_headers()\n"
            "        self.wfile.write(body)\n"
            f"http.server.HTTPServer(('127.0.0.1', {self.daemon.health_port}), H).serve_forever()\n"
        )
        body = await self.daemon.wait_ready(timeout=10)
        self.assertEqual(body, {"ready": True, "polls": 3})

    async def test_daemon_exit_fails_fast(self) -> None:
        """A daemon that exits during start-up fails wait_ready with its last output."""
        self.fake_daemon("import sys; print('fatal: no master key', flush=True); sys.exit(1)")
        with self.assertRaises(HarnessError) as caught:
            await self.daemon.wait_ready(timeout=10)
        self.assertIn("exit status 1", str(caught.exception))
        self.assertIn("fatal: no master key", str(caught.exception))


class ProbeTests(TestCase):
    async def test_probe_refuses_other_hosts(self) -> None:
        """The probe only connects to ws://127.0.0.1, never anywhere else."""
        with self.assertRaises(ValueError):
            await RelayProbe.open("ws://example.com:80")

    async def test_unknown_client_kind_is_rejected(self) -> None:
        """A typo in a client kind is a programming error, not a skip."""
        with self.assertRaises(ValueError):
            await InteropFixture(self).run_client("rust", "bunker://x", [])


class LayoutTests(SynchronousTestCase):
    def test_lockfile_pins_what_package_json_names(self) -> None:
        """package-lock.json is committed and pins the exact nostr-tools and ws versions."""
        interop = REPO / "tests" / "interop"
        wanted = json.loads((interop / "package.json").read_text())["dependencies"]
        lock = json.loads((interop / "package-lock.json").read_text())["packages"]
        for name, version in wanted.items():
            self.assertEqual(lock[f"node_modules/{name}"]["version"], version)
