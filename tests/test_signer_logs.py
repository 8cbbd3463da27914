"""keycast_tw.signer.engine: no secret ever reaches a log event, at any level."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip04, nip44
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.methods import MethodResult
from keycast_tw.signer.model import KeyUnavailable

from .signer_helpers import SECRET, World

SIGN_CONTENT = "sign-me-plaintext-4f1e"
ENCRYPT_TEXT = "encrypt-me-plaintext-9a2b"
DM_TEXT = "dm-plaintext-77c3"
LEGACY_TEXT = "legacy-plaintext-1d0e"


class NoSecretsInLogsTests(SynchronousTestCase):
    def test_whole_session_logs_no_secret(self) -> None:
        """A full session at debug level logs no secret, plaintext, request body or key."""
        world = World(self)
        client = world.client()
        third = SecretKey.generate()
        now = world.clock.seconds()
        world.call(client, "get_public_key")
        world.call(client, "connect", [world.auth.bunker_pubkey, SECRET + "x"])
        world.connect(client)
        note = {"kind": 1, "content": SIGN_CONTENT, "tags": [], "created_at": int(now)}
        world.call(client, "sign_event", [orjson.dumps(note).decode()])
        world.call(client, "sign_event", [orjson.dumps({**note, "kind": -1}).decode()])
        world.call(client, "nip44_encrypt", [third.pubkey_hex, ENCRYPT_TEXT])
        dm = nip44.encrypt(DM_TEXT, nip44.conversation_key(third, world.user_key.pubkey))
        world.call(client, "nip44_decrypt", [third.pubkey_hex, dm])
        legacy = nip04.encrypt_with_key(LEGACY_TEXT, third.shared_x(world.user_key.pubkey))
        world.call(client, "nip04_decrypt", [third.pubkey_hex, legacy], scheme="nip04")
        world.call(client, "nip04_encrypt", [third.pubkey_hex, ENCRYPT_TEXT], scheme="nip04")
        world.call(client, "describe", [SECRET])
        body = orjson.dumps({"id": "m", "method": 1, "params": [SECRET]}).decode()
        world.handle(client.request("", created_at=now, plaintext=body))
        world.handle(client.request("", created_at=now, plaintext=SECRET))
        duplicate = client.request("connect", ["", SECRET], created_at=now)
        world.handle(duplicate)
        world.handle(duplicate)
        world.handle(client.request("ping", [SECRET], created_at=now - 3600))
        world.call(client, "logout")
        world.auth.user_key = _Broken(world.user_key.pubkey_hex)
        world.connect(client)
        world.call(client, "sign_event", [orjson.dumps(note).decode()])

        self.assertGreater(len(world.events), 10)
        self.assertIn("Received NIP-46 request for bunker: {bunker}", _formats(world.events))
        self.assertIn("Processing NIP-46 method: {method}", _formats(world.events))
        forbidden = {
            "connect secret": SECRET,
            "sign content": SIGN_CONTENT,
            "encrypt plaintext": ENCRYPT_TEXT,
            "decrypted dm": DM_TEXT,
            "decrypted legacy dm": LEGACY_TEXT,
            "user key": world.user_key.to_bytes().hex(),
            "bunker key": world.bunker_key.to_bytes().hex(),
            "client key": client.key.to_bytes().hex(),
            "third-party key": third.to_bytes().hex(),
        }
        for event in world.events:
            texts = [formatEvent(event)] + [_text(value) for value in event.values()]
            for text in texts:
                for name, secret in forbidden.items():
                    self.assertNotIn(secret.lower(), text.lower(), f"{name} in {event!r}")


class _Broken:
    def __init__(self, pubkey: str) -> None:
        self.pubkey = pubkey

    def secret_key(self) -> SecretKey:
        raise KeyUnavailable("gone")


def _formats(events: list[dict[str, Any]]) -> set[str]:
    return {event.get("log_format", "") for event in events}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex() + repr(value)
    failure_text = getattr(value, "getTraceback", None)
    if callable(failure_text):
        return str(failure_text())
    return repr(value) + str(value)


class ReprTests(SynchronousTestCase):
    def test_method_result_repr_hides_value_and_key(self) -> None:
        """A MethodResult's repr shows neither the (possibly decrypted) value nor the key."""
        key = bytes(range(32))
        text = repr(MethodResult(DM_TEXT, derived_key=key))
        self.assertNotIn(DM_TEXT, text)
        self.assertNotIn(key.hex(), text)
        self.assertNotIn(repr(key)[2:20], text)
