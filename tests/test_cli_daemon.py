"""``keycast status``/``check`` against a local HTTP server, and the CLI's Cloud KMS path.

The CLI runs as a real process (spawned through the reactor, so the in-process servers keep
answering); the servers bind 127.0.0.1 on port 0 and serve canned answers.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

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
