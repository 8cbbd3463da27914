"""A local stand-in for the Cloud KMS REST API, for tests on 127.0.0.1.

Implements POST /v1/{key_name}:encrypt and :decrypt with base64 JSON fields, checks the bearer
token, answers 404 for unknown keys, and can be told to fail the next requests with a status
(429/503...) or by dropping the connection.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

TEST_TOKEN = "test-token"


class FakeKms(Resource):
    isLeaf = True

    def __init__(self, key_names: set[str], *, token: str = TEST_TOKEN) -> None:
        super().__init__()
        self.key_names = key_names
        self.token = token
        self.failures: list[int] = []  # statuses for the next requests; 0 drops the connection
        self.calls: list[str] = []
        self._aead = AESGCM(os.urandom(32))

    def fail_next(self, *statuses: int) -> None:
        self.failures.extend(statuses)

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode()
        self.calls.append(path)
        if self.failures:
            status = self.failures.pop(0)
            if status == 0:
                assert request.channel is not None
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
                return NOT_DONE_YET
            return self._error(request, status, "injected failure")
        if request.getHeader("authorization") != f"Bearer {self.token}":
            return self._error(request, 401, "Request had invalid authentication credentials.")
        key_name, _, operation = path.removeprefix("/v1/").partition(":")
        if key_name not in self.key_names:
            return self._error(request, 404, f"CryptoKey {key_name} not found.")
        body = orjson.loads(request.content.read() if request.content else b"{}")
        if operation == "encrypt":
            nonce = os.urandom(12)
            blob = nonce + self._aead.encrypt(
                nonce, base64.b64decode(body["plaintext"]), key_name.encode()
            )
            return self._json(
                request, {"name": key_name, "ciphertext": base64.b64encode(blob).decode()}
            )
        if operation == "decrypt":
            blob = base64.b64decode(body["ciphertext"])
            try:
                plain = self._aead.decrypt(blob[:12], blob[12:], key_name.encode())
            except InvalidTag:
                return self._error(request, 400, "Decryption failed: the ciphertext is invalid.")
            return self._json(request, {"plaintext": base64.b64encode(plain).decode()})
        return self._error(request, 404, "unknown method")

    def _json(self, request: Request, body: dict[str, Any]) -> bytes:
        request.setHeader("content-type", "application/json")
        return orjson.dumps(body)

    def _error(self, request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        return self._json(request, {"error": {"code": status, "message": message}})


def listen(reactor: Any, kms: FakeKms) -> tuple[IListeningPort, str]:
    """Serve ``kms`` on 127.0.0.1 port 0; returns the port (stopListening it) and the base URL."""
    site = Site(kms)
    site.displayTracebacks = False
    port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
