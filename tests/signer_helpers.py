"""Test doubles for the NIP-46 engine: a fake client that speaks the real protocol, and a world.

``FakeClient`` builds real, signed kind-24133 requests encrypted with NIP-44 or NIP-04, and reads
responses the way a real client does: it checks the author, the p tag, the signature, and
decrypts the content. ``World`` wires an Engine to a Registry, a MemoryStore, a task.Clock and
captured log events, with one authorization to talk to.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip04, nip44, nip46
from keycast_tw.nostr.event import sign_event, verify_event
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.crypto import CryptoRunner, run_inline
from keycast_tw.signer.engine import Engine, EngineConfig, Outcome
from keycast_tw.signer.memory import MemoryStore
from keycast_tw.signer.model import Authorization, PlainKey, Policy
from keycast_tw.signer.registry import Registry
from keycast_tw.signer.secrets import hash_connect_secret

START = 1_800_000_000.0
SECRET = "Zk3-connect-secret_0123456789abcdef"
_serial = itertools.count(1)


class FakeClient:
    """A NIP-46 client with its own key, talking to one bunker pubkey."""

    def __init__(self, bunker_pubkey: str, *, key: SecretKey | None = None) -> None:
        self.key = key or SecretKey.generate()
        self.pubkey = self.key.pubkey_hex
        self.bunker_pubkey = bunker_pubkey

    def encrypt(self, plaintext: str, scheme: str = "nip44") -> str:
        peer = bytes.fromhex(self.bunker_pubkey)
        if scheme == "nip04":
            return nip04.encrypt_with_key(plaintext, self.key.shared_x(peer))
        return nip44.encrypt(plaintext, nip44.conversation_key(self.key, peer))

    def request(
        self,
        method: str,
        params: tuple[str, ...] | list[str] = (),
        *,
        created_at: float,
        scheme: str = "nip44",
        request_id: str | None = None,
        plaintext: str | None = None,
        tags: list[list[str]] | None = None,
    ) -> dict[str, Any]:
        """A signed request event; ``plaintext`` replaces the JSON body (to test bad input)."""
        if plaintext is None:
            request_id = request_id or f"req-{next(_serial)}"
            plaintext = nip46.build_request(request_id, method, list(params))
        template = {
            "kind": nip46.KIND,
            "content": self.encrypt(plaintext, scheme),
            "tags": tags if tags is not None else [["p", self.bunker_pubkey]],
            "created_at": int(created_at),
        }
        return sign_event(template, self.key)

    def read(
        self, response: Mapping[str, Any] | None, request: Mapping[str, Any]
    ) -> nip46.Response:
        """Check ``response`` answers ``request`` the way clients check it, and decrypt it."""
        if response is None:
            raise AssertionError("no response")
        if not verify_event(response):
            raise AssertionError("response signature or id is invalid")
        if response["kind"] != nip46.KIND or response["pubkey"] != self.bunker_pubkey:
            raise AssertionError("response has the wrong kind or author")
        if response["tags"] != [["p", self.pubkey], ["e", request["id"]]]:
            raise AssertionError(f"unexpected response tags {response['tags']!r}")
        peer = bytes.fromhex(self.bunker_pubkey)
        content = response["content"]
        if nip04.is_nip04(request["content"]):
            if not nip04.is_nip04(content):
                raise AssertionError("a NIP-04 request got a NIP-44 reply")
            plaintext = nip04.decrypt_with_key(content, self.key.shared_x(peer))
        else:
            if nip04.is_nip04(content):
                raise AssertionError("a NIP-44 request got a NIP-04 reply")
            plaintext = nip44.decrypt(content, nip44.conversation_key(self.key, peer))
        return nip46.parse_response(plaintext)


class CountingKey:
    """A KeySource that counts how often its secret is asked for (to prove no crypto ran)."""

    def __init__(self, secret: SecretKey) -> None:
        self._secret = secret
        self.uses = 0

    @property
    def pubkey(self) -> str:
        return self._secret.pubkey_hex

    def secret_key(self) -> SecretKey:
        self.uses += 1
        return self._secret


class CountingRunner:
    """An inline CryptoRunner that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: Callable[..., Any], /, *args: object) -> Deferred[Any]:
        self.calls += 1
        return run_inline(f, *args)


def make_authorization(
    *,
    authorization_id: int = 1,
    same_key: bool = False,
    secret: str | None = SECRET,
    max_uses: int | None = 1,
    policy: Policy | None = None,
    relays: tuple[str, ...] = ("wss://relay.example.com",),
    expires_at: int | None = None,
) -> tuple[Authorization, SecretKey, SecretKey]:
    """An authorization with fresh keys: (authorization, bunker key, user key)."""
    user = SecretKey.generate()
    bunker = user if same_key else SecretKey.generate()
    auth = Authorization(
        id=authorization_id,
        bunker_key=CountingKey(bunker),
        user_key=PlainKey(user),
        secret_hash=hash_connect_secret(secret) if secret is not None else None,
        relays=relays,
        policy=policy,
        max_uses=max_uses,
        expires_at=expires_at,
    )
    return auth, bunker, user


class World:
    """An engine on a task.Clock with one authorization, a MemoryStore and captured logs."""

    def __init__(
        self,
        test: SynchronousTestCase,
        *,
        config: EngineConfig | None = None,
        run_crypto: CryptoRunner | None = None,
        accept: Callable[[Authorization], bool] | None = None,
        **auth_options: Any,
    ) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(START)
        self.events: list[dict[str, Any]] = []
        self.registry = Registry(accept)
        self.store = MemoryStore(now=self.clock.seconds)
        self.auth, self.bunker_key, self.user_key = make_authorization(**auth_options)
        self.registry.put(self.auth)
        self.runner = CountingRunner()
        self.engine = Engine(
            self.registry,
            self.store,
            clock=self.clock,
            run_crypto=run_crypto or self.runner,
            config=config or EngineConfig(),
            log=Logger(observer=cast(ILogObserver, self.events.append)),
        )

    def client(self, key: SecretKey | None = None) -> FakeClient:
        return FakeClient(self.auth.bunker_pubkey, key=key)

    def handle(self, event: Mapping[str, Any]) -> Outcome:
        """Run the engine on ``event``; with the inline runner the outcome is immediate."""
        outcome: Outcome = self.test.successResultOf(self.engine.handle_event(event))
        return outcome

    def call(
        self, client: FakeClient, method: str, params: tuple[str, ...] | list[str] = (), **kw: Any
    ) -> tuple[Outcome, nip46.Response]:
        """Send one request and read its reply (fails the test if there is none)."""
        request = client.request(method, params, created_at=self.clock.seconds(), **kw)
        outcome = self.handle(request)
        return outcome, client.read(outcome.response, request)

    def connect(self, client: FakeClient, secret: str = SECRET) -> nip46.Response:
        return self.call(client, "connect", [self.auth.bunker_pubkey, secret])[1]

    def connected_client(self) -> FakeClient:
        client = self.client()
        response = self.connect(client)
        self.test.assertEqual(response.result, "ack")
        return client

    def log_levels(self) -> list[LogLevel]:
        return [event["log_level"] for event in self.events]
