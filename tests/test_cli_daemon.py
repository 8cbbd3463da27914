"""``keycast status``/``check`` against a local HTTP server, ``authorize``/``connect`` asking it
for the daemon's relays, and the CLI's Cloud KMS path.

The CLI runs as a real process (spawned through the reactor, so the in-process servers keep
answering); the servers bind 127.0.0.1 on port 0 and serve canned answers.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from keycast_tw.config import DEFAULT_RELAYS
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.nostr.nip46 import parse_bunker_uri
from tests.test_cli import clean_environ

PROCESS_TIMEOUT = 60


class Canned(Resource):
    """Answers GET PATH with the (code, body) in ``answers``; 404 otherwise."""

    isLeaf = True

    def __init__(self, answers: dict[bytes, tuple[int, bytes]]) -> None:
        super().__init__()
        self.answers = answers

    def render_GET(self, request: Request) -> bytes:
        code, body = self.answers.get(request.path, (404, b"Not Found"))
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return body


class FakeGoogle(Resource):
    """A token endpoint and a Cloud KMS key whose 'wrapping' is a reversible marker."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.unavailable = 0  # answer this many decrypts with 503 first

    def render_POST(self, request: Request) -> bytes:
        path = request.path.decode()
        request.setHeader(b"Content-Type", b"application/json")
        if path == "/token":
            self.calls.append("token")
            return json.dumps({"access_token": "test-token", "expires_in": 3600}).encode()
        if request.getHeader("Authorization") != "Bearer test-token":
            request.setResponseCode(401)
            return b"{}"
        assert request.content is not None
        body = json.loads(request.content.read())
        if path.endswith(":encrypt"):
            self.calls.append("encrypt:" + path.split("/v1/")[1].rsplit(":", 1)[0])
            wrapped = b"wrapped:" + base64.b64decode(body["plaintext"])
            return json.dumps({"ciphertext": base64.b64encode(wrapped).decode()}).encode()
        if path.endswith(":decrypt"):
            self.calls.append("decrypt")
            if self.unavailable:
                self.unavailable -= 1
                request.setResponseCode(503)
                return b"{}"
            data = base64.b64decode(body["ciphertext"])
            if not data.startswith(b"wrapped:"):
                request.setResponseCode(400)
                return b'{"error": {"message": "bad ciphertext"}}'
            plaintext = base64.b64encode(data[len(b"wrapped:"):]).decode()
            return json.dumps({"plaintext": plaintext}).encode()
        request.setResponseCode(404)
        return b"{}"


class DaemonCommandTestCase(TestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.environ = clean_environ()
        self.environ["DATABASE_PATH"] = os.path.join(self.home, "keycast.db")
        self.environ["MASTER_KEY_PATH"] = os.path.join(self.home, "master.key")

    def listen(self, resource: Resource) -> int:
        port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Site(resource), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def closed_port(self) -> int:
        """A port number on 127.0.0.1 that nothing listens on any more."""
        port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Site(Resource()), interface="127.0.0.1"
        )
        number = int(port.getHost().port)
        await port.stopListening()
        return number

    async def keycast(self, *args: str, **env: str) -> tuple[str, str, int]:
        deferred: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            sys.executable,
            ["-m", "keycast_tw.cli.main", *args],
            env={**self.environ, **env},
            path=self.home,
        )
        deferred.addTimeout(PROCESS_TIMEOUT, reactor)
        out, err, code = await deferred
        self.assertNotIn(b"Traceback", err)
        return out.decode(), err.decode(), code


def health_answers(
    ready: tuple[int, Any] = (200, {"ready": True}), health: int = 200
) -> dict[bytes, tuple[int, bytes]]:
    return {
        b"/health": (health, b"OK"),
        b"/ready": (ready[0], json.dumps(ready[1]).encode()),
        b"/status": (
            200,
            json.dumps(
                {
                    "version": "0.1.0",
                    "uptime_seconds": 90,
                    "authorizations": {"total": 2, "regular": 2, "oauth": 0},
                    "relays": [{"url": "wss://a.example", "connected": True}],
                }
            ).encode(),
        ),
    }


class CheckTests(DaemonCommandTestCase):
    async def test_ready(self) -> None:
        """check exits 0 with one OK line when /health and /ready answer 200."""
        port = self.listen(Canned(health_answers()))
        out, _, code = await self.keycast("check", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual((code, out.count("\n")), (0, 1))
        self.assertTrue(out.startswith("OK:"), out)

    async def test_not_ready(self) -> None:
        """check exits 1 and prints the daemon's reasons when /ready answers 503."""
        answers = health_answers(ready=(503, {"ready": False, "reasons": ["no relay subscribed"]}))
        port = self.listen(Canned(answers))
        out, _, code = await self.keycast("check", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(code, 1)
        self.assertEqual(out, "NOT READY: no relay subscribed\n")

    async def test_unhealthy(self) -> None:
        """check exits 1 when /health itself fails."""
        port = self.listen(Canned(health_answers(health=500)))
        out, _, code = await self.keycast("check", "--url", f"http://127.0.0.1:{port}")
        self.assertEqual(code, 1)
        self.assertTrue(out.startswith("UNHEALTHY:"), out)

    async def test_unreachable(self) -> None:
        """check exits 2 when nothing listens (PORT, as in the Rust original's deployments)."""
        port = await self.closed_port()
        out, _, code = await self.keycast("check", PORT=str(port))
        self.assertEqual(code, 2)
        self.assertTrue(out.startswith("UNREACHABLE:"), out)


class StatusTests(DaemonCommandTestCase):
    async def test_summary(self) -> None:
        """status prints a short summary of /status."""
        port = self.listen(Canned(health_answers()))
        out, _, code = await self.keycast("status", "--health", f"tcp:{port}")
        self.assertEqual(code, 0)
        self.assertEqual(
            out.splitlines(),
            [
                "keycast-tw 0.1.0, up 1m 30s",
                "authorizations: total=2, regular=2, oauth=0",
                "relays:",
                "  wss://a.example: connected=true",
            ],
        )

    async def test_times_are_readable(self) -> None:
        """Epoch seconds print as UTC ISO-8601 with an age and durations with a unit, not as
        raw floats; --json keeps the numbers for scripts."""
        connected_at = time.time() - 5
        document = {
            "version": "0.1.0",
            "uptime_seconds": 90.123,
            "relays": [
                {"url": "wss://a.example", "connected": True, "last_connected_at": connected_at}
            ],
            "last_request_at": None,
            "last_reload": {"at": 1795744735.8179433, "kind": "reload", "seconds": 0.0024178},
        }
        port = self.listen(Canned({b"/status": (200, json.dumps(document).encode())}))
        out, _, code = await self.keycast("status", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertRegex(
            lines[2],
            r"^  wss://a\.example: connected=true, last_connected_at="
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \((\d+m )?\d+s ago\)$",
        )
        self.assertEqual(lines[3], "last_request_at: never")
        self.assertRegex(
            lines[4],
            r"^last_reload: at=2026-11-27T01:58:55Z \((in )?[0-9dhms ]+( ago)?\), kind=reload, "
            r"seconds=2\.4 ms$",
        )
        self.assertEqual(len(lines), 5, out)
        self.assertNotIn("1795744735", out)
        self.assertNotIn("0.0024", out)
        out, _, code = await self.keycast("status", "--json", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(json.loads(out)["last_reload"]["at"], 1795744735.8179433)

    async def test_json(self) -> None:
        """status --json prints the daemon's document."""
        port = self.listen(Canned(health_answers()))
        out, _, code = await self.keycast("status", "--json", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["version"], "0.1.0")

    async def test_unreachable(self) -> None:
        """status on a closed port exits 2 with one error line."""
        port = await self.closed_port()
        _, err, code = await self.keycast("status", "--url", f"http://127.0.0.1:{port}")
        self.assertEqual(code, 2)
        self.assertIn("cannot reach the daemon", err)


DAEMON_RELAY = "ws://127.0.0.1:7777"


def daemon_status(*relays: str) -> dict[bytes, tuple[int, bytes]]:
    """A daemon started with ``--relay`` on its own command line: /status is where it shows."""
    relay_state = [{"url": url, "connected": True, "subscribed": True} for url in relays]
    return {b"/status": (200, json.dumps({"version": "0.1.0", "relays": relay_state}).encode())}


class DaemonRelaysTests(DaemonCommandTestCase):
    """Without KEYCAST_RELAYS in its environment, the CLI asks the running daemon."""

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        for args in (("init",), ("key", "add", "alice")):
            _, err, code = await self.keycast(*args)
            self.assertEqual(code, 0, err)

    async def test_authorize_advertises_the_daemons_relays(self) -> None:
        """The URI carries the relays the daemon reports, not the built-in defaults."""
        port = self.listen(Canned(daemon_status(DAEMON_RELAY, "wss://second.example")))
        out, err, code = await self.keycast("authorize", "alice", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(code, 0, err)
        self.assertEqual(err, "")
        uri = parse_bunker_uri(next(x for x in out.splitlines() if x.startswith("bunker://")))
        self.assertEqual(uri.relays, (DAEMON_RELAY, "wss://second.example"))
        self.assertIn("  policy: none (full access); max uses: 1", out)

    async def test_authorize_url_option(self) -> None:
        """--url reaches a daemon the health setting does not point at, as for `status`."""
        port = self.listen(Canned(daemon_status(DAEMON_RELAY)))
        closed = await self.closed_port()
        out, err, code = await self.keycast(
            "authorize", "alice", "--url", f"http://127.0.0.1:{port}", PORT=str(closed)
        )
        self.assertEqual(code, 0, err)
        self.assertIn("relay=" + quote(DAEMON_RELAY, safe=""), out)

    async def test_foreign_relay_is_checked_against_the_daemon(self) -> None:
        """An explicit --relay the daemon does not use gets the warning; one it uses none."""
        port = self.listen(Canned(daemon_status(DAEMON_RELAY)))
        _, err, code = await self.keycast(
            "authorize", "alice", "--relay", DEFAULT_RELAYS[0], KEYCAST_HEALTH=f"tcp:{port}"
        )
        self.assertEqual(code, 0, err)
        self.assertIn(f"{DEFAULT_RELAYS[0]} is not one of the daemon's relays", err)
        self.assertIn(DAEMON_RELAY, err)
        _, err, code = await self.keycast(
            "authorize", "alice", "--relay", DAEMON_RELAY, "--max-uses", "2",
            KEYCAST_HEALTH=f"tcp:{port}",
        )
        self.assertEqual((code, err), (0, ""))

    async def test_unreachable_daemon_falls_back_with_one_warning(self) -> None:
        """No daemon: the defaults, and one stderr line saying so and how to choose."""
        port = await self.closed_port()
        out, err, code = await self.keycast("authorize", "alice", KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(code, 0, err)
        uri = parse_bunker_uri(next(x for x in out.splitlines() if x.startswith("bunker://")))
        self.assertEqual(uri.relays, DEFAULT_RELAYS)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("cannot ask the daemon at", err)
        self.assertIn("using the default relays", err)
        self.assertIn("--relay", err)
        self.assertIn("KEYCAST_RELAYS", err)

    async def test_environment_is_not_second_guessed(self) -> None:
        """KEYCAST_RELAYS given to the CLI is what it uses, with no request to the daemon."""
        port = await self.closed_port()
        out, err, code = await self.keycast(
            "authorize", "alice", KEYCAST_HEALTH=f"tcp:{port}", KEYCAST_RELAYS=DAEMON_RELAY
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("relay=" + quote(DAEMON_RELAY, safe=""), out)

    async def test_connect_accepts_the_daemons_relays(self) -> None:
        """connect checks the URI's relays against the relays the daemon reports."""
        port = self.listen(Canned(daemon_status(DAEMON_RELAY)))
        client = SecretKey.generate().pubkey_hex
        uri = (
            f"nostrconnect://{client}?relay={quote(DAEMON_RELAY, safe='')}"
            "&relay=wss%3A%2F%2Fother.example&secret=s3cr3t&perms=sign_event%3A1&name=App"
        )
        out, err, code = await self.keycast("connect", "alice", uri, KEYCAST_HEALTH=f"tcp:{port}")
        self.assertEqual(code, 0, err)
        self.assertIn(f"  relays: {DAEMON_RELAY}\n", out)
        self.assertIn("the policy decides: none (full access))", out)
        self.assertIn("wss://other.example is not one of the daemon's relays", err)
        self.assertNotIn("s3cr3t", out + err)


class KmsTests(DaemonCommandTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.google = FakeGoogle()
        port = self.listen(self.google)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        account = os.path.join(self.home, "account.json")
        with open(account, "w") as handle:
            json.dump(
                {
                    "type": "service_account",
                    "project_id": "test-project",
                    "private_key_id": "1",
                    "private_key": pem,
                    "client_email": "keycast@test-project.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": f"http://127.0.0.1:{port}/token",
                },
                handle,
            )
        self.environ.update(
            USE_GCP_KMS="true",
            GCP_PROJECT_ID="test-project",
            KEYCAST_KMS_API_BASE=f"http://127.0.0.1:{port}",
            GOOGLE_APPLICATION_CREDENTIALS=account,
        )

    async def test_init_and_use_with_kms(self) -> None:
        """With KMS, init wraps one data key and each later command makes one decrypt call."""
        out, err, code = await self.keycast("init")
        self.assertEqual(code, 0, err)
        self.assertIn("Cloud KMS key projects/test-project/locations/global", out)
        self.assertFalse(os.path.exists(self.environ["MASTER_KEY_PATH"]))
        self.assertEqual(
            self.google.calls,
            [
                "token",
                "encrypt:projects/test-project/locations/global/keyRings/keycast-keys"
                "/cryptoKeys/master-key",
            ],
        )
        del self.google.calls[:]
        out, err, code = await self.keycast("key", "add", "alice")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.splitlines()[-1].startswith("npub1"))
        self.assertEqual(self.google.calls, ["token", "decrypt"])
        out, err, code = await self.keycast("rotate-master-key")
        self.assertEqual(code, 1)
        self.assertIn("rotate the KMS key in Cloud KMS", err)

    async def test_kms_retry_is_visible(self) -> None:
        """A transient KMS failure is retried, and the retry is shown on stderr."""
        _, err, code = await self.keycast("init")
        self.assertEqual(code, 0, err)
        self.google.unavailable = 1
        del self.google.calls[:]
        _, err, code = await self.keycast("key", "list")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.google.calls, [])  # listing needs no key
        _, err, code = await self.keycast("key", "add", "alice")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.google.calls, ["token", "decrypt", "decrypt"])
        self.assertIn("Cloud KMS decrypt failed (HTTP 503); retry 1", err)
