"""keycast_tw.signer.engine: the request pipeline (filters, verification, replay, transport)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from twisted.internet.defer import Deferred, fail
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip44, nip46
from keycast_tw.nostr.event import sign_event
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.engine import EngineConfig
from keycast_tw.signer.model import Authorization, KeyUnavailable

from .signer_helpers import CountingKey, FakeClient, World, make_authorization


class ForeignTrafficTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        bunker_key = self.world.auth.bunker_key
        assert isinstance(bunker_key, CountingKey)
        self.bunker_key = bunker_key

    def assertNoWork(self) -> None:
        self.assertEqual(self.world.runner.calls, 0)
        self.assertEqual(self.bunker_key.uses, 0)
        self.assertEqual(self.world.store.claimed(), 0)

    def test_foreign_p_tag_ignored_without_crypto(self) -> None:
        """A request for a bunker we do not manage is ignored before any crypto or claim."""
        client = FakeClient(SecretKey.generate().pubkey_hex)
        outcome = self.world.handle(client.request("ping", created_at=self.world.clock.seconds()))
        self.assertEqual(
            (outcome.outcome, outcome.reason, outcome.response), ("ignored", "not ours", None)
        )
        self.assertNoWork()

    def test_wrong_kind_ignored(self) -> None:
        """Only kind 24133 is handled."""
        client = self.world.client()
        event = client.request("ping", created_at=self.world.clock.seconds())
        event = sign_event({**event, "kind": 1}, client.key)
        self.assertEqual(self.world.handle(event).outcome, "ignored")
        self.assertNoWork()

    def test_missing_or_malformed_p_tags_ignored(self) -> None:
        """Events without a usable p tag are not ours, whatever else their tags hold."""
        client = self.world.client()
        for tags in ([], [["e", "x"]], [["p"]], [["p", 5]], "p", [None, ["p"]]):
            event = client.request("ping", created_at=self.world.clock.seconds())
            event["tags"] = tags
            self.assertEqual(self.world.handle(event).reason, "not ours")
        self.assertNoWork()

    def test_any_p_tag_naming_our_bunker_routes(self) -> None:
        """The first p tag that names a managed bunker is used, after foreign ones."""
        client = self.world.client()
        tags = [["p", "f" * 64], ["p", self.world.auth.bunker_pubkey]]
        event = client.request("ping", created_at=self.world.clock.seconds(), tags=tags)
        outcome = self.world.handle(event)
        self.assertEqual(outcome.outcome, "ok")

    def test_event_from_own_bunker_ignored(self) -> None:
        """An event authored by one of our bunker keys is never answered (no reply loops)."""
        world = self.world
        other, _, _ = make_authorization(authorization_id=2)
        world.registry.put(other)
        bunker_client = FakeClient(world.auth.bunker_pubkey, key=world.bunker_key)
        event = bunker_client.request("ping", created_at=world.clock.seconds())
        event = sign_event({**event, "tags": [["p", other.bunker_pubkey]]}, world.bunker_key)
        outcome = world.handle(event)
        self.assertEqual(
            (outcome.outcome, outcome.reason), ("ignored", "from one of our own bunkers")
        )

    def test_malformed_fields_ignored(self) -> None:
        """A managed p tag with a malformed pubkey, content, id or created_at is dropped cheaply."""
        client = self.world.client()
        for field, value in (
            ("pubkey", 1),
            ("content", None),
            ("id", []),
            ("created_at", "1"),
            ("created_at", True),
        ):
            event = client.request("ping", created_at=self.world.clock.seconds())
            event[field] = value
            self.assertEqual(self.world.handle(event).outcome, "ignored", field)
        self.assertNoWork()

    def test_oversized_content_ignored_before_decrypting(self) -> None:
        """Content over the configured limit is not decrypted at all."""
        world = World(self, config=EngineConfig(max_content_length=1000))
        client = world.client()
        event = client.request("sign_event", ["x" * 2000], created_at=world.clock.seconds())
        outcome = world.handle(event)
        self.assertEqual((outcome.outcome, outcome.reason), ("ignored", "content too large"))
        self.assertEqual(world.runner.calls, 0)

    def test_stale_created_at_ignored(self) -> None:
        """Requests older or newer than the window are dropped; inside it they are served."""
        world = self.world
        client = world.client()
        now = world.clock.seconds()
        for created_at in (now - 601, now + 601):
            outcome = world.handle(client.request("ping", created_at=created_at))
            self.assertEqual((outcome.outcome, outcome.reason), ("ignored", "stale created_at"))
        self.assertNoWork()
        for created_at in (now - 600, now + 600):
            self.assertEqual(
                world.handle(client.request("ping", created_at=created_at)).outcome, "ok"
            )

    def test_window_is_configurable(self) -> None:
        """created_at_window sets the accepted skew."""
        world = World(self, config=EngineConfig(created_at_window=30))
        client = world.client()
        event = client.request("ping", created_at=world.clock.seconds() - 31)
        self.assertEqual(world.handle(event).reason, "stale created_at")


class VerificationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def test_bad_signature_ignored_and_not_claimed(self) -> None:
        """A forged signature is dropped, and does not block the genuine event with that id."""
        world = self.world
        client = world.client()
        event = client.request("ping", created_at=world.clock.seconds())
        forged = {**event, "sig": ("0" if event["sig"][0] != "0" else "1") + event["sig"][1:]}
        outcome = world.handle(forged)
        self.assertEqual(outcome.outcome, "ignored")
        self.assertIn("invalid event", outcome.reason)
        self.assertIsNone(outcome.response)
        self.assertEqual(world.store.claimed(), 0)
        self.assertEqual(client.read(world.handle(event).response, event).result, "pong")

    def test_tampered_content_ignored(self) -> None:
        """Content that does not match the id is dropped."""
        client = self.world.client()
        event = client.request("ping", created_at=self.world.clock.seconds())
        event["content"] = client.encrypt(nip46.build_request("x", "ping", []))
        self.assertEqual(self.world.handle(event).outcome, "ignored")

    def test_duplicate_handled_once(self) -> None:
        """The same event id (e.g. from a second relay) is executed and answered once."""
        world = self.world
        client = world.connected_client()
        event = client.request("sign_event", [_note()], created_at=world.clock.seconds())
        first = world.handle(event)
        second = world.handle(dict(event))
        self.assertEqual(first.outcome, "ok")
        self.assertEqual(
            (second.outcome, second.reason, second.response), ("ignored", "duplicate", None)
        )
        self.assertEqual(sum(1 for a in world.store.activity if a.method == "sign_event"), 1)


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def test_nip44_request_gets_nip44_reply(self) -> None:
        """A NIP-44 request is answered with NIP-44, signed by the bunker, tagged p and e."""
        outcome, response = self.world.call(self.world.client(), "ping")
        self.assertEqual(response.result, "pong")
        self.assertIsNone(response.error)
        assert outcome.response is not None
        self.assertEqual(outcome.response["created_at"], int(self.world.clock.seconds()))
        self.assertEqual((outcome.method, outcome.outcome), ("ping", "ok"))

    def test_nip04_request_gets_nip04_reply(self) -> None:
        """A legacy NIP-04 request ("?iv=") is answered with NIP-04."""
        world = self.world
        client = world.client()
        self.assertEqual(world.connect(client).result, "ack")
        _, response = world.call(client, "get_public_key", scheme="nip04")
        self.assertEqual(response.result, world.user_key.pubkey_hex)

    def test_undecryptable_gets_no_reply(self) -> None:
        """Content encrypted to another key cannot be read, so it gets no reply."""
        world = self.world
        client = world.client()
        stranger = SecretKey.generate()
        content = nip44.encrypt(
            nip46.build_request("1", "ping", []),
            nip44.conversation_key(client.key, stranger.pubkey),
        )
        template = {
            "kind": 24133,
            "content": content,
            "created_at": int(world.clock.seconds()),
            "tags": [["p", world.auth.bunker_pubkey]],
        }
        outcome = world.handle(sign_event(template, client.key))
        self.assertEqual((outcome.outcome, outcome.response), ("undecryptable", None))
        self.assertEqual(outcome.client, client.pubkey)

    def test_malformed_json_with_id_gets_error(self) -> None:
        """A request whose id is readable but whose body is invalid gets an error reply."""
        world = self.world
        client = world.client()
        body = orjson.dumps({"id": "abc", "method": 5, "params": []}).decode()
        event = client.request("", created_at=world.clock.seconds(), plaintext=body)
        outcome = world.handle(event)
        response = client.read(outcome.response, event)
        self.assertEqual((response.id, outcome.outcome), ("abc", "error"))
        assert response.error is not None
        self.assertTrue(response.error.startswith("malformed request"))

    def test_unreadable_json_gets_no_reply(self) -> None:
        """Plaintext that is not JSON at all has no id to answer to."""
        world = self.world
        client = world.client()
        event = client.request("", created_at=world.clock.seconds(), plaintext="not json")
        outcome = world.handle(event)
        self.assertEqual((outcome.outcome, outcome.response), ("error", None))

    def test_overlong_request_id_gets_no_reply(self) -> None:
        """An id no client would send is unreadable: no reply, one warning, no traceback. Over
        65,535 bytes (a NIP-44 request with the extended length prefix) it could not even be
        echoed in an encrypted error reply."""
        world = self.world
        client = world.connected_client()
        for length in (nip46.MAX_REQUEST_ID_LENGTH + 1, 70_000):
            plaintext = nip46.build_request("x" * length, "ping", [])
            outcome = world.handle(_extended_request(world, client, plaintext))
            self.assertEqual(
                (outcome.outcome, outcome.reason, outcome.response),
                ("error", "malformed request: request id is too long", None),
            )
        warnings = [e for e in world.events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertFalse(any("log_failure" in event for event in world.events))

    def test_error_reply_too_large_to_encrypt(self) -> None:
        """If even the error reply cannot be encrypted, there is no reply and one warning, not
        a critical traceback. Only an id near the transport limit can cause that, so the id
        bound is lifted here to reach this safety net."""
        self.patch(nip46, "MAX_REQUEST_ID_LENGTH", 10**6)
        world = self.world
        client = world.connected_client()
        plaintext = nip46.build_request("x" * 70_000, "get_public_key", [])
        outcome = world.handle(_extended_request(world, client, plaintext))
        self.assertEqual(
            (outcome.outcome, outcome.reason, outcome.response),
            ("error", "response too large for the transport encryption", None),
        )
        warnings = [e for e in world.events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.assertEqual(world.store.activity[-1].error, outcome.reason)

    def test_unknown_method_gets_error(self) -> None:
        """An unknown method is answered with an error, never silence."""
        world = self.world
        client = world.connected_client()
        outcome, response = world.call(client, "describe")
        self.assertEqual(
            (response.result, response.error), ("error", "unsupported method: describe")
        )
        self.assertEqual(outcome.method, "unsupported")

    def test_conversation_key_cache(self) -> None:
        """The transport key is derived once per client and then reused."""
        world = self.world
        client = world.client()
        for _ in range(3):
            world.call(client, "ping")
        stats = world.engine.cache_stats()
        self.assertEqual(
            (stats["nip44_keys"], stats["nip44_hits"], stats["nip44_misses"]), (1, 2, 1)
        )

    def test_conversation_key_cache_is_bounded(self) -> None:
        """key_cache_size bounds the cache; evicted clients are still served."""
        world = World(self, config=EngineConfig(key_cache_size=2))
        clients = [world.client() for _ in range(4)]
        for client in clients + clients:
            self.assertEqual(world.call(client, "ping")[1].result, "pong")
        self.assertEqual(world.engine.cache_stats()["nip44_keys"], 2)

    def test_nip04_cache_separate(self) -> None:
        """NIP-04 shared secrets are cached apart from NIP-44 conversation keys."""
        world = self.world
        client = world.client()
        world.call(client, "ping", scheme="nip04")
        world.call(client, "ping", scheme="nip04")
        world.call(client, "ping")
        stats = world.engine.cache_stats()
        self.assertEqual((stats["nip04_keys"], stats["nip04_hits"], stats["nip44_keys"]), (1, 1, 1))

    def test_response_too_large_gets_error(self) -> None:
        """A result too large for NIP-44 is replaced by an error reply, not dropped."""
        world = self.world
        client = world.connected_client()
        third = SecretKey.generate().pubkey_hex
        outcome, response = world.call(client, "nip44_encrypt", [third, "y" * 50_000])
        self.assertEqual(response.error, "response too large for the transport encryption")
        self.assertEqual(outcome.outcome, "error")


class KeyTests(SynchronousTestCase):
    def test_separate_bunker_and_user_keys(self) -> None:
        """With separate keys, replies come from the bunker key and signing uses the user key."""
        world = World(self)
        self.assertNotEqual(world.bunker_key.pubkey_hex, world.user_key.pubkey_hex)
        client = world.connected_client()
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.user_key.pubkey_hex)
        signed = orjson.loads(_sign(world, client))
        self.assertEqual(signed["pubkey"], world.user_key.pubkey_hex)

    def test_same_bunker_and_user_key(self) -> None:
        """Old clients need bunker key == user key; that works too."""
        world = World(self, same_key=True)
        client = world.connected_client()
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.auth.bunker_pubkey)
        self.assertEqual(orjson.loads(_sign(world, client))["pubkey"], world.auth.bunker_pubkey)

    def test_bunker_key_unavailable(self) -> None:
        """Without the bunker key nothing can be decrypted: no reply, an error outcome, a log."""
        world = World(self)
        world.auth.bunker_key = _BrokenKey(world.bunker_key.pubkey_hex)
        outcome = world.handle(world.client().request("ping", created_at=world.clock.seconds()))
        self.assertEqual((outcome.outcome, outcome.response), ("error", None))
        self.assertIn("cannot be decrypted", outcome.reason)
        self.assertIn("unavailable", " ".join(e["log_format"] for e in world.events))

    def test_user_key_unavailable(self) -> None:
        """Without the user key, signing gets an error reply; get_public_key still works."""
        world = World(self)
        client = world.connected_client()
        world.auth.user_key = _BrokenKey(world.user_key.pubkey_hex)
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.user_key.pubkey_hex)
        outcome, response = world.call(client, "sign_event", [_note()])
        self.assertEqual(response.error, "signing key unavailable")
        self.assertEqual(outcome.outcome, "error")

    def test_unexpected_failure_gets_error_reply(self) -> None:
        """A bug while executing a method still produces an error reply and a logged failure."""
        world = World(self)
        client = world.connected_client()
        world.auth.user_key = _ExplodingKey(world.user_key.pubkey_hex)
        outcome, response = world.call(client, "sign_event", [_note()])
        self.assertEqual((response.error, outcome.outcome), ("internal error", "error"))
        self.assertTrue(any("log_failure" in event for event in world.events))

    def test_unexpected_failure_before_decrypting(self) -> None:
        """A bug in the first crypto step is an error outcome, logged, never an exception."""
        world = World(self)
        world.auth.bunker_key = _ExplodingKey(world.bunker_key.pubkey_hex)
        outcome = world.handle(world.client().request("ping", created_at=world.clock.seconds()))
        self.assertEqual((outcome.outcome, outcome.reason), ("error", "internal error"))
        self.assertTrue(any("log_failure" in event for event in world.events))


class RobustnessTests(SynchronousTestCase):
    def test_non_mapping_event_ignored(self) -> None:
        """Something that is not an event object is ignored, not an exception."""
        world = World(self)
        for junk in (None, [], "event", 5):
            outcome = self.successResultOf(world.engine.handle_event(junk))  # type: ignore[arg-type]
            self.assertEqual(outcome.outcome, "ignored")

    def test_claim_failure_executes_nothing(self) -> None:
        """If the store cannot claim the event, it is not executed (no at-most-once otherwise)."""
        world = World(self)
        client = world.connected_client()
        world.store.claim_request = lambda *args: fail(OSError("db locked"))  # type: ignore[method-assign]
        note = orjson.dumps({"kind": 1, "content": "x", "tags": []}).decode()
        outcome = world.handle(
            client.request("sign_event", [note], created_at=world.clock.seconds())
        )
        self.assertEqual(
            (outcome.outcome, outcome.reason, outcome.response),
            ("error", "store unavailable", None),
        )
        self.assertTrue(any("log_failure" in event for event in world.events))

    def test_malformed_requests_are_rate_limited(self) -> None:
        """Malformed requests count against the client's rate limit too."""
        world = World(self, config=EngineConfig(rate_per_second=1, rate_burst=1))
        client = world.client()
        body = orjson.dumps({"id": "m", "method": 7}).decode()
        errors = []
        for _ in range(2):
            event = client.request("", created_at=world.clock.seconds(), plaintext=body)
            errors.append(client.read(world.handle(event).response, event).error)
        self.assertEqual(errors[1], "rate-limited: slow down")

    def test_undecryptable_flood_is_rate_limited(self) -> None:
        """500 undecryptable events from one pubkey cost at most its burst of claims and WARN
        lines; the rest are dropped at debug level, and its bucket is empty for real requests
        too (which still get the "rate-limited" reply)."""
        world = World(self, config=EngineConfig(rate_per_second=1, rate_burst=5))
        client = world.client()
        outcomes = [world.handle(_undecryptable(world, client)).outcome for _ in range(500)]
        self.assertEqual(outcomes.count("undecryptable"), 5)
        self.assertEqual(outcomes.count("ignored"), 495)
        self.assertEqual(world.store.claimed(), 5)
        self.assertEqual(world.log_levels().count(LogLevel.warn), 5)
        self.assertEqual(world.call(client, "ping")[1].error, "rate-limited: slow down")
        self.assertEqual(world.call(world.client(), "ping")[1].result, "pong")

    def test_unreadable_flood_is_rate_limited(self) -> None:
        """Decryptable plaintext that is no request (no id to answer) is limited the same way."""
        world = World(self)
        client = world.client()
        for _ in range(100):
            event = client.request("", created_at=world.clock.seconds(), plaintext="not json")
            world.handle(event)
        self.assertEqual(world.store.claimed(), 40)
        self.assertEqual(world.log_levels().count(LogLevel.warn), 40)
        world.clock.advance(1)
        event = client.request("", created_at=world.clock.seconds(), plaintext="not json")
        self.assertEqual(world.handle(event).reason, "malformed request: request is not valid JSON")

    def test_forged_events_do_not_drain_a_clients_bucket(self) -> None:
        """Events with a client's pubkey but a bad signature are dropped before the limiter, so a
        forger cannot silence that client."""
        world = World(self, config=EngineConfig(rate_per_second=1, rate_burst=2))
        client = world.client()
        for _ in range(10):
            forged = dict(_undecryptable(world, client), sig="00" * 64)
            self.assertEqual(world.handle(forged).outcome, "ignored")
        self.assertEqual(world.call(client, "ping")[1].result, "pong")

    def test_authorization_removed_while_claiming(self) -> None:
        """An authorization removed while its request was in flight answers "revoked"."""
        world = World(self)
        client = world.connected_client()
        pending: Deferred[bool] = Deferred()
        world.store.claim_request = lambda *args: pending  # type: ignore[method-assign]
        request = client.request("get_public_key", created_at=world.clock.seconds())
        result = world.engine.handle_event(request)
        world.registry.remove(world.auth.id)
        pending.callback(True)
        response = client.read(self.successResultOf(result).response, request)
        self.assertEqual(response.error, "authorization revoked")

    def test_created_at_beyond_float_range_is_stale(self) -> None:
        """A created_at too large for a float is stale, not an OverflowError."""
        world = World(self)
        event = world.client().request("ping", created_at=world.clock.seconds())
        for created_at in (10**400, -(10**400)):
            outcome = world.handle(dict(event, created_at=created_at))
            self.assertEqual((outcome.outcome, outcome.reason), ("ignored", "stale created_at"))

    def test_event_whose_fields_cannot_be_read(self) -> None:
        """A mapping that raises when read is an error outcome with a logged failure."""
        world = World(self)
        outcome = world.handle(_UnreadableEvent())
        self.assertEqual((outcome.outcome, outcome.reason), ("error", "internal error"))
        self.assertTrue(any("log_failure" in event for event in world.events))

    def test_bug_after_decrypting_is_error_outcome(self) -> None:
        """An exception on the reactor side (corrupt expires_at) ends as a logged error."""
        world = World(self)
        client = world.connected_client()
        world.auth.expires_at = "soon"  # type: ignore[assignment]
        outcome = world.handle(client.request("ping", created_at=world.clock.seconds()))
        self.assertEqual(
            (outcome.outcome, outcome.reason, outcome.response), ("error", "internal error", None)
        )
        self.assertTrue(any("log_failure" in event for event in world.events))

    def test_activity_log_failure_keeps_the_reply(self) -> None:
        """A store whose record_activity raises still lets the signed reply go out."""
        world = World(self)
        client = world.connected_client()

        def broken(record: object) -> None:
            raise OSError("disk full")

        world.store.record_activity = broken  # type: ignore[method-assign]
        outcome, response = world.call(client, "ping")
        self.assertEqual((outcome.outcome, response.result), ("ok", "pong"))
        self.assertTrue(any("log_failure" in event for event in world.events))

    def test_undecryptable_requests_reuse_the_transport_key(self) -> None:
        """The transport key derived for an undecryptable request is cached: one ECDH per client."""
        world = World(self)
        client = world.client()
        wrong_key = nip44.conversation_key(client.key, SecretKey.generate().pubkey)
        for _ in range(3):
            template = {
                "kind": 24133,
                "content": nip44.encrypt(nip46.build_request("1", "ping", []), wrong_key),
                "created_at": int(world.clock.seconds()),
                "tags": [["p", world.auth.bunker_pubkey]],
            }
            self.assertEqual(
                world.handle(sign_event(template, client.key)).outcome, "undecryptable"
            )
        stats = world.engine.cache_stats()
        self.assertEqual((stats["nip44_keys"], stats["nip44_misses"]), (1, 1))


class RegistryChangeTests(SynchronousTestCase):
    def test_removed_authorization_not_served(self) -> None:
        """Once removed from the registry a bunker's requests are no longer ours."""
        world = World(self)
        client = world.connected_client()
        world.registry.remove(world.auth.id)
        outcome = world.handle(client.request("ping", created_at=world.clock.seconds()))
        self.assertEqual(outcome.reason, "not ours")

    def test_replaced_authorization_used(self) -> None:
        """A reload that replaces the authorization object takes effect for the next request."""
        world = World(self)
        client = world.connected_client()
        old = world.auth
        replacement = Authorization(
            id=old.id,
            bunker_key=old.bunker_key,
            user_key=old.user_key,
            secret_hash=old.secret_hash,
            relays=("wss://new.example",),
            sessions=dict(old.sessions or {}),
        )
        world.registry.put(replacement)
        self.assertEqual(world.call(client, "switch_relays")[1].result, '["wss://new.example"]')


class _UnreadableEvent(Mapping[str, Any]):
    """An event-like mapping that fails on every read (a bug in a caller's event type)."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("bug")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("bug")

    def __len__(self) -> int:
        return 7


class _BrokenKey:
    def __init__(self, pubkey: str) -> None:
        self._pubkey = pubkey

    @property
    def pubkey(self) -> str:
        return self._pubkey

    def secret_key(self) -> SecretKey:
        raise KeyUnavailable(f"key {self._pubkey[:8]} cannot be decrypted")


class _ExplodingKey(_BrokenKey):
    def secret_key(self) -> SecretKey:
        raise RuntimeError("bug")


def _undecryptable(world: World, client: FakeClient) -> dict[str, Any]:
    """A signed request from ``client`` encrypted to a stranger, so the bunker cannot read it."""
    wrong_key = nip44.conversation_key(client.key, SecretKey.generate().pubkey)
    template = {
        "kind": 24133,
        "content": nip44.encrypt(nip46.build_request("1", "ping", []), wrong_key),
        "created_at": int(world.clock.seconds()),
        "tags": [["p", world.auth.bunker_pubkey]],
    }
    return sign_event(template, client.key)


def _extended_request(world: World, client: FakeClient, plaintext: str) -> dict[str, Any]:
    """A request whose NIP-44 content may exceed 65,535 bytes (the extended length prefix,
    which the decrypting side accepts)."""
    key = nip44.conversation_key(client.key, bytes.fromhex(client.bunker_pubkey))
    content = nip44.encrypt(plaintext, key, max_plaintext=nip44.MAX_PLAINTEXT_EXTENDED)
    template = {
        "kind": 24133,
        "content": content,
        "created_at": int(world.clock.seconds()),
        "tags": [["p", client.bunker_pubkey]],
    }
    return sign_event(template, client.key)


def _note(**fields: Any) -> str:
    template = {"kind": 1, "content": "hello", "tags": [], "created_at": 1_800_000_000}
    template.update(fields)
    return orjson.dumps(template).decode()


def _sign(world: World, client: FakeClient) -> str:
    response = world.call(client, "sign_event", [_note()])[1]
    assert response.result is not None
    return response.result
