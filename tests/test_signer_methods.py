"""keycast_tw.signer.engine: every NIP-46 method, end to end through the fake client."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip04, nip44, nip46
from keycast_tw.nostr.event import event_id, verify_event
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.model import Authorization, Permission, PlainKey, Policy
from keycast_tw.signer.secrets import hash_connect_secret

from .signer_helpers import FakeClient, World

TRANSPORT_KEY_DECRYPT = "decrypt refused: this key also serves as a bunker transport key"
SAME_KEY_SECRET = "same-key-bunker-connect-secret"


def template(**fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "kind": 1,
        "content": 'héllo 🌍 \u2028 \\ "',
        "tags": [["e", "a" * 64, "wss://r.example", "reply"], ["t", "x"]],
        "created_at": 1_799_999_000,
    }
    result.update(fields)
    return result


class SimpleMethodTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self, relays=("wss://a.example", "wss://b.example/path"))
        self.client = self.world.connected_client()

    def test_ping(self) -> None:
        """ping answers "pong"."""
        self.assertEqual(self.world.call(self.client, "ping")[1].result, "pong")

    def test_get_public_key(self) -> None:
        """get_public_key answers the user's pubkey in lowercase hex."""
        outcome, response = self.world.call(self.client, "get_public_key")
        self.assertEqual(response.result, self.world.user_key.pubkey_hex)
        self.assertEqual((outcome.method, outcome.outcome), ("get_public_key", "ok"))

    def test_switch_relays(self) -> None:
        """switch_relays answers the authorization's relays as a JSON string."""
        result = self.world.call(self.client, "switch_relays")[1].result
        self.assertEqual(result, '["wss://a.example","wss://b.example/path"]')

    def test_switch_relays_without_relays(self) -> None:
        """With no relays configured switch_relays answers the string "null" (no change)."""
        world = World(self, relays=())
        self.assertEqual(world.call(world.connected_client(), "switch_relays")[1].result, "null")

    def test_get_relays(self) -> None:
        """The legacy get_relays answers {url: {read, write}} as a JSON string."""
        result = self.world.call(self.client, "get_relays")[1].result
        assert result is not None
        self.assertEqual(
            orjson.loads(result),
            {
                "wss://a.example": {"read": True, "write": True},
                "wss://b.example/path": {"read": True, "write": True},
            },
        )

    def test_get_relays_without_relays(self) -> None:
        """With no relays configured get_relays answers an empty JSON object, not an error."""
        world = World(self, relays=())
        self.assertEqual(world.call(world.connected_client(), "get_relays")[1].result, "{}")

    def test_activity_recorded(self) -> None:
        """Each answered request is recorded without content."""
        self.world.call(self.client, "ping")
        record = self.world.store.activity[-1]
        self.assertEqual(
            (record.method, record.outcome, record.client_pubkey),
            ("ping", "ok", self.client.pubkey),
        )


class SignEventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.client = self.world.connected_client()

    def sign(self, unsigned: Any) -> nip46.Response:
        param = unsigned if isinstance(unsigned, str) else orjson.dumps(unsigned).decode()
        return self.world.call(self.client, "sign_event", [param])[1]

    def refused(self, unsigned: Any) -> str:
        response = self.sign(unsigned)
        self.assertEqual(response.result, "error")
        assert response.error is not None
        return response.error

    def test_sign_keeps_fields_exactly(self) -> None:
        """The signed event keeps kind, content, tags and created_at, with the user's pubkey."""
        unsigned = template()
        response = self.sign(unsigned)
        assert response.result is not None
        signed = orjson.loads(response.result)
        self.assertTrue(verify_event(signed))
        self.assertEqual(signed["pubkey"], self.world.user_key.pubkey_hex)
        for field in ("kind", "content", "tags", "created_at"):
            self.assertEqual(signed[field], unsigned[field])
        self.assertEqual(signed["id"], event_id(signed))
        record = self.world.store.activity[-1]
        self.assertEqual((record.event_kind, record.event_id), (1, signed["id"]))

    def test_ndk_template_with_pubkey_id_sig(self) -> None:
        """NDK sends its own pubkey (the user's), id and empty sig; the id it computed matches."""
        unsigned = template(pubkey=self.world.user_key.pubkey_hex, sig="")
        unsigned["id"] = event_id(unsigned)
        response = self.sign(unsigned)
        assert response.result is not None
        self.assertEqual(orjson.loads(response.result)["id"], unsigned["id"])

    def test_template_as_object(self) -> None:
        """Old clients send the template as a JSON object rather than a string."""
        body = orjson.dumps({"id": "o1", "method": "sign_event", "params": [template()]}).decode()
        world = self.world
        request = self.client.request("", created_at=world.clock.seconds(), plaintext=body)
        response = self.client.read(world.handle(request).response, request)
        assert response.result is not None
        self.assertTrue(verify_event(orjson.loads(response.result)))

    def test_missing_created_at_is_now(self) -> None:
        """A template without created_at is signed with the current time."""
        unsigned = template()
        del unsigned["created_at"]
        response = self.sign(unsigned)
        assert response.result is not None
        self.assertEqual(
            orjson.loads(response.result)["created_at"], int(self.world.clock.seconds())
        )

    def test_created_at_bounds(self) -> None:
        """Past dates are signed; far-future, negative or non-integer ones are refused."""
        now = int(self.world.clock.seconds())
        self.assertIsNotNone(self.sign(template(created_at=0)).result)
        self.assertIsNotNone(self.sign(template(created_at=now + 900)).result)
        self.assertEqual(
            self.refused(template(created_at=now + 901)),
            "sign_event: created_at is too far in the future",
        )
        for bad in (-1, 1.5, "1", True):
            self.assertIn("created_at", self.refused(template(created_at=bad)))

    def test_kind_validation(self) -> None:
        """kind must be an integer 0..65535 (no bools, no wrap-around)."""
        self.assertIsNotNone(self.sign(template(kind=65535)).result)
        for bad in (65536, -1, True, "1", 1.0, None):
            self.assertEqual(
                self.refused(template(kind=bad)),
                "sign_event: kind must be an integer from 0 to 65535",
            )

    def test_content_and_tags_validation(self) -> None:
        """content must be a string, tags an array of arrays of strings."""
        self.assertEqual(self.refused(template(content=5)), "sign_event: content must be a string")
        bad_tags: list[Any] = [{}, [["e", 1]], ["e"], "x", [["e", None]], [["e", ["x"]]], None]
        for bad in bad_tags:
            self.assertEqual(
                self.refused(template(tags=bad)),
                "sign_event: tags must be an array of arrays of strings",
            )

    def test_pubkey_must_be_the_user(self) -> None:
        """A template naming another pubkey is refused; the user's or "" is fine."""
        other = SecretKey.generate().pubkey_hex
        self.assertEqual(
            self.refused(template(pubkey=other)), "sign_event: pubkey is not the signer's user key"
        )
        self.assertIsNotNone(self.sign(template(pubkey="")).result)

    def test_unparsable_template(self) -> None:
        """A params[0] that is not a JSON object, or no params at all, is an error reply."""
        self.assertIn("JSON", self.refused("{not json"))
        self.assertIn("JSON object", self.refused("[1]"))
        self.assertEqual(
            self.world.call(self.client, "sign_event", [])[1].error,
            "sign_event: missing event template",
        )


class ThirdPartyCryptoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.client = self.world.connected_client()
        self.third = SecretKey.generate()
        self.user = self.world.user_key

    def call(self, method: str, *params: str) -> nip46.Response:
        return self.world.call(self.client, method, list(params))[1]

    def test_nip44_encrypt_decrypt(self) -> None:
        """nip44_encrypt uses the user key with the third party; nip44_decrypt reverses it."""
        response = self.call("nip44_encrypt", self.third.pubkey_hex, "dm ✉")
        assert response.result is not None
        key = nip44.conversation_key(self.third, self.user.pubkey)
        self.assertEqual(nip44.decrypt(response.result, key), "dm ✉")
        payload = nip44.encrypt("reply", key)
        self.assertEqual(self.call("nip44_decrypt", self.third.pubkey_hex, payload).result, "reply")

    def test_nip04_encrypt_decrypt(self) -> None:
        """nip04_encrypt/decrypt use the user key with the third party."""
        response = self.call("nip04_encrypt", self.third.pubkey_hex, "legacy dm")
        assert response.result is not None
        shared = self.third.shared_x(self.user.pubkey)
        self.assertEqual(nip04.decrypt_with_key(response.result, shared), "legacy dm")
        payload = nip04.encrypt_with_key("back", shared)
        self.assertEqual(self.call("nip04_decrypt", self.third.pubkey_hex, payload).result, "back")

    def test_bad_ciphertext_gets_error(self) -> None:
        """Undecryptable third-party payloads get an error reply, never silence."""
        for method in ("nip44_decrypt", "nip04_decrypt"):
            response = self.call(method, self.third.pubkey_hex, "garbage?iv=AAAA")
            self.assertEqual(response.result, "error")
            assert response.error is not None
            self.assertTrue(response.error.startswith(method))

    def test_bad_pubkey_or_missing_params(self) -> None:
        """A third party that is not a hex pubkey, or missing params, gets an error reply."""
        for method in ("nip44_encrypt", "nip04_decrypt"):
            self.assertEqual(
                self.call(method, "npub1xyz", "x").error,
                f"{method}: params[0] must be a hex public key",
            )
            self.assertEqual(
                self.call(method, self.third.pubkey_hex).error,
                f"{method}: expected [third_party_pubkey, text]",
            )

    def test_empty_plaintext_refused(self) -> None:
        """NIP-44 cannot encrypt an empty plaintext; that is an error reply."""
        response = self.call("nip44_encrypt", self.third.pubkey_hex, "")
        self.assertEqual(response.result, "error")

    def test_empty_decrypted_plaintext_is_an_error(self) -> None:
        """A message that decrypts to "" gets the error "empty plaintext", which every client
        ends its request on (nostr-tools never resolves an empty result)."""
        shared = self.third.shared_x(self.user.pubkey)
        payload = nip04.encrypt_with_key("", shared)
        response = self.call("nip04_decrypt", self.third.pubkey_hex, payload)
        self.assertEqual(
            (response.result, response.error), ("error", "nip04_decrypt: empty plaintext")
        )

    def test_third_party_key_cached(self) -> None:
        """The (user, third party) conversation key is derived once."""
        stats_before = self.world.engine.cache_stats()
        self.call("nip44_encrypt", self.third.pubkey_hex, "a")
        self.call("nip44_encrypt", self.third.pubkey_hex.upper(), "b")
        stats = self.world.engine.cache_stats()
        self.assertEqual(stats["nip44_keys"] - stats_before["nip44_keys"], 1)
        self.assertEqual(
            stats["nip44_hits"] - stats_before["nip44_hits"], 3
        )  # 2 transport, 1 third


class SameKeyTests(SynchronousTestCase):
    def test_encrypt_to_client_with_same_key(self) -> None:
        """With bunker key == user key, transport and third-party keys share the cache safely."""
        world = World(self, same_key=True)
        client = world.connected_client()
        response = world.call(client, "nip44_encrypt", [client.pubkey, "to the client"])[1]
        assert response.result is not None
        key = nip44.conversation_key(client.key, world.user_key.pubkey)
        self.assertEqual(nip44.decrypt(response.result, key), "to the client")


class TransportKeyDecryptTests(SynchronousTestCase):
    """A user key that is also a bunker transport key must not decrypt for other bunkers.

    Authorization 1 (the World's, kind 1 only) serves user U under its own bunker key; a second,
    same-key authorization serves U under U itself. U's key with any client Y is then also that
    bunker's transport key with Y, so a third-party decrypt on authorization 1 would read Y's
    requests to it, connect secret included.
    """

    def setUp(self) -> None:
        kind_1_only = Policy("kind 1", (Permission("allowed_kinds", {"allowed_kinds": [1]}),))
        self.world = World(self, policy=kind_1_only, accept=lambda auth: auth.id != 3)
        self.attacker = self.world.connected_client()
        self.user = self.world.user_key

    def same_key_authorization(self, authorization_id: int = 2) -> Authorization:
        auth = Authorization(
            id=authorization_id,
            bunker_key=PlainKey(self.user),
            user_key=PlainKey(self.user),
            secret_hash=hash_connect_secret(SAME_KEY_SECRET),
            max_uses=None,
        )
        self.world.registry.put(auth)
        return auth

    def victim_connect(self, scheme: str = "nip44") -> tuple[FakeClient, dict[str, Any]]:
        """A client of the same-key bunker connects; its request is public on the relays."""
        world = self.world
        victim = FakeClient(self.user.pubkey_hex)
        request = victim.request(
            "connect",
            [self.user.pubkey_hex, SAME_KEY_SECRET],
            created_at=world.clock.seconds(),
            scheme=scheme,
        )
        self.assertEqual(victim.read(world.handle(request).response, request).result, "ack")
        return victim, request

    def decrypt(self, method: str, peer: str, payload: str) -> nip46.Response:
        return self.world.call(self.attacker, method, [peer, payload])[1]

    def test_cannot_read_the_same_key_bunkers_traffic(self) -> None:
        """The reviewer's oracle: decrypting a victim's connect request to the same-key bunker
        is refused, in both schemes, and the reply does not carry the secret."""
        self.same_key_authorization()
        for method, scheme in (("nip44_decrypt", "nip44"), ("nip04_decrypt", "nip04")):
            victim, request = self.victim_connect(scheme)
            response = self.decrypt(method, victim.pubkey, request["content"])
            self.assertEqual((response.result, response.error), ("error", TRANSPORT_KEY_DECRYPT))
            self.assertNotIn(SAME_KEY_SECRET, repr(response) + str(response.error))

    def test_same_key_bunker_on_another_shard(self) -> None:
        """The refusal holds when another shard serves the same-key bunker (not routed here),
        and ends once that authorization is gone."""
        self.same_key_authorization(authorization_id=3)
        self.assertIsNone(self.world.registry.get(self.user.pubkey_hex))
        peer = SecretKey.generate()
        payload = nip44.encrypt("hi", nip44.conversation_key(peer, self.user.pubkey))
        self.assertEqual(
            self.decrypt("nip44_decrypt", peer.pubkey_hex, payload).error, TRANSPORT_KEY_DECRYPT
        )
        self.world.registry.remove(3)
        self.assertEqual(self.decrypt("nip44_decrypt", peer.pubkey_hex, payload).result, "hi")

    def test_full_reload_keeps_the_refusal(self) -> None:
        """replace_all (start-up, full reconcile) rebuilds what the refusal depends on."""
        world = self.world
        same_key = self.same_key_authorization(authorization_id=3)
        peer = SecretKey.generate()
        payload = nip44.encrypt("hi", nip44.conversation_key(peer, self.user.pubkey))
        world.registry.replace_all([world.auth])
        self.assertEqual(self.decrypt("nip44_decrypt", peer.pubkey_hex, payload).result, "hi")
        world.registry.replace_all([world.auth, same_key])
        self.assertEqual(
            self.decrypt("nip44_decrypt", peer.pubkey_hex, payload).error, TRANSPORT_KEY_DECRYPT
        )

    def test_decrypt_works_without_a_same_key_authorization(self) -> None:
        """Another authorization of the same user under its own bunker key changes nothing."""
        world = self.world
        world.registry.put(
            Authorization(
                id=2,
                bunker_key=PlainKey(SecretKey.generate()),
                user_key=PlainKey(self.user),
                secret_hash=None,
            )
        )
        peer = SecretKey.generate()
        payload = nip44.encrypt("hi", nip44.conversation_key(peer, self.user.pubkey))
        self.assertEqual(self.decrypt("nip44_decrypt", peer.pubkey_hex, payload).result, "hi")

    def test_encrypt_stays_allowed(self) -> None:
        """Encrypting to a client of the same-key bunker reveals nothing and is still served."""
        self.same_key_authorization()
        victim, _ = self.victim_connect()
        response = self.world.call(self.attacker, "nip44_encrypt", [victim.pubkey, "hello"])[1]
        assert response.result is not None
        key = nip44.conversation_key(victim.key, self.user.pubkey)
        self.assertEqual(nip44.decrypt(response.result, key), "hello")

    def test_no_kind_24133_signed_with_a_transport_key(self) -> None:
        """A user key that is also a bunker's transport key signs no kind 24133 (it would be a
        forged reply of that bunker, to its clients), for any client; other kinds still sign."""
        world = World(self)
        client = world.connected_client()

        def sign(kind: int) -> nip46.Response:
            template = {"kind": kind, "content": "x", "tags": [], "created_at": 1}
            return world.call(client, "sign_event", [orjson.dumps(template).decode()])[1]

        self.assertIsNone(sign(24133).error)
        world.registry.put(
            Authorization(
                id=2,
                bunker_key=PlainKey(world.user_key),
                user_key=PlainKey(world.user_key),
                secret_hash=None,
            )
        )
        self.assertEqual(
            sign(24133).error,
            "sign_event: kind 24133 with a key that is also a bunker transport key",
        )
        self.assertIsNone(sign(1).error)
        same_key = World(self, same_key=True)
        own_client = same_key.connected_client()
        template = {"kind": 24133, "content": "x", "tags": [], "created_at": 1}
        response = same_key.call(own_client, "sign_event", [orjson.dumps(template).decode()])[1]
        self.assertIsNotNone(response.error)

    def test_decrypt_inside_the_same_key_bunker(self) -> None:
        """The same-key bunker's own clients may still decrypt: they share its one policy."""
        world = World(self, same_key=True)
        client = world.connected_client()
        peer = SecretKey.generate()
        payload = nip44.encrypt("hi", nip44.conversation_key(peer, world.user_key.pubkey))
        response = world.call(client, "nip44_decrypt", [peer.pubkey_hex, payload])[1]
        self.assertEqual(response.result, "hi")
