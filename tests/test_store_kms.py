"""GcpKms against a fake Cloud KMS on 127.0.0.1, and envelope encryption in open_cipher."""

from __future__ import annotations

import os
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from keycast_tw.store.crypto import KIND_KMS, open_cipher, read_key_info
from keycast_tw.store.errors import KmsError, MasterKeyError
from keycast_tw.store.kms import GcpKms, kms_key_name
from keycast_tw.store.runner import ConnectionRunner
from tests.fake_kms import TEST_TOKEN, FakeKms, listen
from tests.test_store_fixtures import new_database

KEY = kms_key_name("proj", "global", "keycast-keys", "master-key")


class FakeCredentials:
    """google-auth credentials as GcpKms uses them; counts refreshes."""

    def __init__(self, token: str = TEST_TOKEN, valid: bool = True) -> None:
        self.token = token if valid else None
        self._next = token
        self.valid = valid
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = self._next
        self.valid = True


def in_thread_now(fn: Any, *args: Any) -> Deferred[Any]:
    return succeed(fn(*args))


class KmsServerTests(TestCase):
    """Real reactor, real HTTP on 127.0.0.1: the REST shapes and retry behaviour."""

    def setUp(self) -> None:
        self.fake = FakeKms({KEY})
        port, self.url = listen(reactor, self.fake)
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.credentials = FakeCredentials()

    def kms(self, key: str = KEY, **kwargs: Any) -> GcpKms:
        return GcpKms(
            key,
            api_base=self.url,
            credentials=self.credentials,
            treq=self.http,
            to_thread=in_thread_now,
            initial_delay=0.001,
            **kwargs,
        )

    async def test_round_trip(self) -> None:
        """encrypt then decrypt returns the plaintext; the wire format is base64 JSON."""
        data_key = os.urandom(32)
        wrapped = await self.kms().encrypt(data_key)
        self.assertNotEqual(wrapped, data_key)
        self.assertEqual(await self.kms().decrypt(wrapped), data_key)
        self.assertEqual(self.fake.calls, [f"/v1/{KEY}:encrypt", f"/v1/{KEY}:decrypt"])

    async def test_retry_then_success(self) -> None:
        """429, 503 and a dropped connection are retried until the call succeeds."""
        self.fake.fail_next(429, 503, 0)
        self.assertEqual(len(await self.kms().encrypt(b"k" * 32)), 12 + 32 + 16)
        self.assertEqual(len(self.fake.calls), 4)

    async def test_permanent_failure(self) -> None:
        """A server that keeps failing gives KmsError after max_attempts."""
        self.fake.fail_next(*[503] * 10)
        with self.assertRaises(KmsError) as caught:
            await self.kms(max_attempts=3).encrypt(b"k" * 32)
        self.assertIn("after 3 attempts: HTTP 503", str(caught.exception))
        self.assertEqual(len(self.fake.calls), 3)

    async def test_wrong_key_name_is_404(self) -> None:
        """An unknown key fails at once (no retries) with a clear message."""
        wrong = kms_key_name("proj", "global", "keycast-keys", "nope")
        with self.assertRaises(KmsError) as caught:
            await self.kms(wrong).decrypt(b"x" * 40)
        self.assertEqual(str(caught.exception), f"Cloud KMS key {wrong} not found (HTTP 404)")
        self.assertEqual(len(self.fake.calls), 1)

    async def test_expired_token_refreshed(self) -> None:
        """Invalid credentials are refreshed before the call (off the reactor thread)."""
        self.credentials = FakeCredentials(valid=False)
        await self.kms().encrypt(b"k" * 32)
        self.assertEqual(self.credentials.refreshes, 1)

    async def test_envelope_one_kms_call_per_start(self) -> None:
        """A fresh DB wraps a new data key once; each later open costs exactly one decrypt."""
        _, conn = new_database(self.mktemp())
        runner = ConnectionRunner(conn)
        first = await open_cipher(runner, master_key_path=None, kms=self.kms())
        info = read_key_info(conn)
        assert info is not None
        self.assertEqual(info[0], KIND_KMS)
        self.assertEqual(self.fake.calls, [f"/v1/{KEY}:encrypt"])
        second = await open_cipher(runner, master_key_path=None, kms=self.kms())
        self.assertEqual(len(self.fake.calls), 2)
        blob = first.encrypt(b"secret", b"aad")
        self.assertEqual(second.decrypt(blob, b"aad"), b"secret")

    async def test_file_database_refuses_kms(self) -> None:
        """A database initialised with a key file is not silently re-keyed by KMS."""
        _, conn = new_database(self.mktemp())
        conn.execute("INSERT INTO master_key_info VALUES (1, 'file', NULL, x'00', 1)")
        conn.commit()
        with self.assertRaises(MasterKeyError):
            await open_cipher(ConnectionRunner(conn), master_key_path=None, kms=self.kms())


class FakeResponse:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self._body = body

    def content(self) -> Deferred[bytes]:
        return succeed(self._body)


class ScriptedHttp:
    def __init__(self, responses: list[FakeResponse]) -> None:
        self.responses = responses
        self.posts = 0

    def post(self, url: str, **kwargs: Any) -> Deferred[FakeResponse]:
        self.posts += 1
        return succeed(self.responses.pop(0))


class BackoffTests(SynchronousTestCase):
    def test_exponential_delays_on_the_clock(self) -> None:
        """Retries wait initial_delay * 2**n (capped) on the injected clock, no sooner."""
        http = ScriptedHttp(
            [FakeResponse(503, b"{}"), FakeResponse(503, b"{}"),
             FakeResponse(200, b'{"plaintext": "AAAA"}')]
        )  # fmt: skip
        clock = Clock()
        kms = GcpKms(
            KEY,
            credentials=FakeCredentials(),
            treq=http,
            clock=clock,
            to_thread=in_thread_now,
            initial_delay=1.0,
            max_delay=1.5,
        )
        self.assertEqual(kms.backoff_delays(), [1.0, 1.5, 1.5, 1.5])
        d = Deferred.fromCoroutine(kms.decrypt(b"x"))
        self.assertEqual(http.posts, 1)
        clock.advance(0.99)
        self.assertEqual(http.posts, 1)
        clock.advance(0.01)
        self.assertEqual(http.posts, 2)
        clock.advance(1.5)
        self.assertEqual(self.successResultOf(d), b"\x00\x00\x00")

    def test_malformed_answer(self) -> None:
        """A 200 whose field is not base64 is a KmsError, not a crash."""
        http = ScriptedHttp([FakeResponse(200, b'{"plaintext": "***"}')])
        kms = GcpKms(
            KEY, credentials=FakeCredentials(), treq=http, clock=Clock(), to_thread=in_thread_now
        )
        failure = self.failureResultOf(Deferred.fromCoroutine(kms.decrypt(b"x")), KmsError)
        self.assertIn("not base64", failure.getErrorMessage())
