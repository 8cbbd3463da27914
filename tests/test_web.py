"""Tests for keycast_tw.web.health: the HTTP endpoints, served in memory through StubTreq."""

from __future__ import annotations

from typing import Any

import orjson
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.metrics import Metrics
from keycast_tw.web.health import HealthApp, UnsafeStatus, check_safe

BASE = "http://127.0.0.1:8080"


class HealthAppTests(SynchronousTestCase):
    """Every route answers with the documented status, type and body."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.status: dict[str, Any] = {"authorizations": {"regular": 2, "oauth": 1}}
        self.reasons: list[str] = []
        self.metrics = Metrics()
        self.health = HealthApp(
            clock=self.clock,
            status=lambda: self.status,
            readiness=lambda: self.reasons,
            metrics=self.metrics,
            version="9.9.9",
        )
        self.treq = StubTreq(self.health.resource())

    def request(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Issue one request and return (code, content type, body)."""
        response = self.successResultOf(self.treq.request(method, BASE + path))
        body = self.successResultOf(response.content())
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
        return response.code, ctype, body

    def test_health(self) -> None:
        """GET /health is 200 "OK" as plain text."""
        code, ctype, body = self.request("GET", "/health")
        self.assertEqual((code, body), (200, b"OK"))
        self.assertTrue(ctype.startswith("text/plain"))

    def test_health_head(self) -> None:
        """HEAD /health is 200 without a body."""
        code, _, body = self.request("HEAD", "/health")
        self.assertEqual((code, body), (200, b""))

    def test_ready(self) -> None:
        """/ready is 200 {"ready": true} when there are no reasons."""
        code, ctype, body = self.request("GET", "/ready")
        self.assertEqual(code, 200)
        self.assertEqual(ctype, "application/json")
        self.assertEqual(orjson.loads(body), {"ready": True})

    def test_not_ready(self) -> None:
        """/ready is 503 with the reasons while something is missing."""
        self.reasons[:] = ["no relay subscription is live", "database not open"]
        code, _, body = self.request("GET", "/ready")
        self.assertEqual(code, 503)
        self.assertEqual(
            orjson.loads(body),
            {"ready": False, "reasons": ["no relay subscription is live", "database not open"]},
        )

    def test_readiness_failure_is_not_ready(self) -> None:
        """A readiness callable that raises makes /ready 503, not a crash."""

        def broken() -> list[str]:
            raise RuntimeError("boom")

        health = HealthApp(
            clock=self.clock, status=dict, readiness=broken, metrics=self.metrics, version="1"
        )
        with capturedLogs() as events:
            response = self.successResultOf(StubTreq(health.resource()).get(BASE + "/ready"))
        self.assertEqual(response.code, 503)
        self.assertEqual(
            orjson.loads(self.successResultOf(response.content()))["reasons"],
            ["readiness check failed"],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e["log_level"] == LogLevel.critical for e in events))

    def test_status(self) -> None:
        """/status carries version, uptime from the clock and the provider's fields."""
        self.clock.advance(61.5)
        code, ctype, body = self.request("GET", "/status")
        self.assertEqual(code, 200)
        self.assertEqual(ctype, "application/json")
        self.assertEqual(
            orjson.loads(body),
            {
                "version": "9.9.9",
                "uptime_seconds": 61.5,
                "authorizations": {"regular": 2, "oauth": 1},
            },
        )

    def test_status_refuses_secret_fields(self) -> None:
        """A status field named like a secret turns /status into a 500 without the value."""
        self.status["relays"] = [{"url": "wss://a", "connect_secret": "hunter2-value"}]
        with capturedLogs() as events:
            code, _, body = self.request("GET", "/status")
        self.assertEqual(code, 500)
        self.assertNotIn(b"hunter2", body)
        self.assertEqual(orjson.loads(body), {"error": "status unavailable"})
        logged = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(logged), 1)
        self.assertIn("relays[0].connect_secret", logged[0]["reason"])
        self.assertNotIn("hunter2", repr(logged[0]))

    def test_status_provider_failure(self) -> None:
        """A status provider that raises gives a 500 JSON error, logged once."""

        def broken() -> dict[str, Any]:
            raise ValueError("bad")

        health = HealthApp(
            clock=self.clock, status=broken, readiness=list, metrics=self.metrics, version="1"
        )
        response = self.successResultOf(StubTreq(health.resource()).get(BASE + "/status"))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_metrics(self) -> None:
        """/metrics serves the Prometheus text with its content type."""
        self.metrics.request_handled("ping", "ok", 0.01)
        code, ctype, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"))
        self.assertIn(b'keycast_requests_total{method="ping",outcome="ok"} 1.0', body)

    def test_unknown_path(self) -> None:
        """An unknown path is a plain 404."""
        code, ctype, body = self.request("GET", "/admin")
        self.assertEqual((code, body), (404, b"Not Found"))
        self.assertTrue(ctype.startswith("text/plain"))

    def test_post_not_allowed(self) -> None:
        """Only GET and HEAD are served: POST is 405 with an Allow header."""
        for path in ("/health", "/ready", "/status", "/metrics"):
            response = self.successResultOf(self.treq.post(BASE + path, data=b"x"))
            self.assertEqual(response.code, 405, path)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
            self.successResultOf(response.content())


class CheckSafeTests(SynchronousTestCase):
    """The defensive secret guard on status output."""

    def test_accepts_plain_status(self) -> None:
        """Ordinary nested status data passes."""
        check_safe({"relays": [{"url": "wss://x", "connected": True}], "keys": 3, "pubkey": "ab"})

    def test_forbidden_names(self) -> None:
        """Keys containing secret/private/nsec/password are refused, at any depth."""
        for name in ("secret", "PrivateKey", "user_nsec", "db_password", "privkey"):
            with self.assertRaises(UnsafeStatus) as raised:
                check_safe({"a": {"b": [{name: 1}]}})
            self.assertEqual(raised.exception.path, f"a.b[0].{name}")

    def test_nsec_values(self) -> None:
        """A string value that is an nsec is refused and not repeated in the error."""
        with self.assertRaises(UnsafeStatus) as raised:
            check_safe({"note": "nsec1qqqqsecretvalue"})
        self.assertNotIn("nsec1qqqq", str(raised.exception))
