"""keycast_tw.signer.engine: policies enforced on sign, encrypt and decrypt requests."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip44
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.model import Permission, Policy

from .signer_helpers import FakeClient, World


def world_with(test: SynchronousTestCase, *permissions: tuple[str, dict[str, Any]]) -> World:
    policy = Policy("test", tuple(Permission(i, c) for i, c in permissions))
    return World(test, policy=policy)


class PolicyEnforcementTests(SynchronousTestCase):
    def sign(self, world: World, client: FakeClient, kind: int, content: str = "hi") -> Any:
        note = {"kind": kind, "content": content, "tags": [], "created_at": 1_799_999_999}
        return world.call(client, "sign_event", [orjson.dumps(note).decode()])

    def test_allowed_kinds_on_sign(self) -> None:
        """A kind outside allowed_kinds gets "blocked by allowed_kinds policy"."""
        world = world_with(self, ("allowed_kinds", {"allowed_kinds": [1, 7]}))
        client = world.connected_client()
        self.assertIsNotNone(self.sign(world, client, 7)[1].result)
        outcome, response = self.sign(world, client, 4)
        self.assertEqual(
            (response.result, response.error), ("error", "blocked by allowed_kinds policy")
        )
        self.assertEqual(outcome.outcome, "error")
        self.assertEqual(world.store.activity[-1].error, "blocked by allowed_kinds policy")

    def test_content_filter_on_sign_and_encrypt(self) -> None:
        """content_filter blocks signing and encrypting text with a blocked word, any case."""
        world = world_with(self, ("content_filter", {"blocked_words": ["casino"]}))
        client = world.connected_client()
        self.assertEqual(
            self.sign(world, client, 1, "Best CASINO")[1].error, "blocked by content_filter policy"
        )
        third = SecretKey.generate().pubkey_hex
        response = world.call(client, "nip44_encrypt", [third, "casino night"])[1]
        self.assertEqual(response.error, "blocked by content_filter policy")
        self.assertIsNotNone(world.call(client, "nip44_encrypt", [third, "dinner"])[1].result)

    def test_content_filter_bypasses_are_blocked(self) -> None:
        """The reviewer's bypasses, end to end: a word in a tag, in a JSON escape of kind 0
        content, or split by a soft hyphen is blocked; the event is not signed."""
        world = world_with(self, ("content_filter", {"blocked_words": ["spam"]}))
        client = world.connected_client()
        for template in (
            {"kind": 1, "content": "hello", "tags": [["subject", "spam"], ["t", "spam"]]},
            {"kind": 0, "content": '{"about":"\\u0073pam"}', "tags": []},
            {"kind": 1, "content": "sp\u00adam", "tags": []},
        ):
            outcome, response = world.call(client, "sign_event", [orjson.dumps(template).decode()])
            self.assertEqual(
                (response.result, response.error), ("error", "blocked by content_filter policy")
            )
            self.assertEqual(outcome.outcome, "error")
            self.assertIsNone(world.store.activity[-1].event_id)
        self.assertIsNone(self.sign(world, client, 1, "hello")[1].error)

    def test_encrypt_to_self_uses_user_pubkey(self) -> None:
        """encrypt_to_self allows the USER's pubkey as third party, not the client's."""
        world = world_with(self, ("encrypt_to_self", {}))
        client = world.connected_client()
        user = world.user_key.pubkey_hex
        own = world.call(client, "nip44_encrypt", [user, "note to self"])[1]
        assert own.result is not None
        self.assertEqual(
            nip44.decrypt(
                own.result, nip44.conversation_key(world.user_key, world.user_key.pubkey)
            ),
            "note to self",
        )
        for method in ("nip44_encrypt", "nip04_encrypt", "nip44_decrypt", "nip04_decrypt"):
            response = world.call(client, method, [client.pubkey, "x"])[1]
            self.assertEqual(response.error, "blocked by encrypt_to_self policy", method)

    def test_decrypt_only(self) -> None:
        """decrypt_only signs only NIP-42 AUTH, refuses encryption, allows decryption."""
        world = world_with(self, ("decrypt_only", {}))
        client = world.connected_client()
        self.assertIsNotNone(self.sign(world, client, 22242)[1].result)
        self.assertEqual(self.sign(world, client, 1)[1].error, "blocked by decrypt_only policy")
        third = SecretKey.generate()
        response = world.call(client, "nip44_encrypt", [third.pubkey_hex, "x"])[1]
        self.assertEqual(response.error, "blocked by decrypt_only policy")
        payload = nip44.encrypt("secret dm", nip44.conversation_key(third, world.user_key.pubkey))
        response = world.call(client, "nip44_decrypt", [third.pubkey_hex, payload])[1]
        self.assertEqual(response.result, "secret dm")

    def test_full_access(self) -> None:
        """full_access allows every operation."""
        world = world_with(self, ("full_access", {}))
        client = world.connected_client()
        self.assertIsNotNone(self.sign(world, client, 4)[1].result)
        third = SecretKey.generate().pubkey_hex
        self.assertIsNotNone(world.call(client, "nip04_encrypt", [third, "x"])[1].result)

    def test_permissions_are_and_combined(self) -> None:
        """Every permission must allow the request."""
        world = world_with(
            self,
            ("full_access", {}),
            ("allowed_kinds", {"allowed_kinds": [1]}),
            ("content_filter", {"blocked_words": ["bad"]}),
        )
        client = world.connected_client()
        self.assertIsNotNone(self.sign(world, client, 1, "good")[1].result)
        self.assertEqual(
            self.sign(world, client, 1, "bad")[1].error, "blocked by content_filter policy"
        )
        self.assertEqual(
            self.sign(world, client, 7, "good")[1].error, "blocked by allowed_kinds policy"
        )

    def test_unknown_permission_fails_closed(self) -> None:
        """An unknown identifier denies signing, encrypting and decrypting."""
        world = world_with(self, ("mystery", {}))
        client = world.connected_client()
        reason = "blocked by mystery policy (unknown permission)"
        self.assertEqual(self.sign(world, client, 1)[1].error, reason)
        third = SecretKey.generate().pubkey_hex
        self.assertEqual(world.call(client, "nip44_encrypt", [third, "x"])[1].error, reason)
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.user_key.pubkey_hex)
