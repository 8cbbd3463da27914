"""keycast_tw.signer.engine: connect secrets, sessions, logout, expiry, revocation, rate limits."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.engine import EngineConfig
from keycast_tw.signer.memory import MemoryStore

from .signer_helpers import SECRET, World

NOT_CONNECTED = "not connected: send connect with the bunker secret first"


class ConnectTests(SynchronousTestCase):
    def test_connect_with_secret_binds_client(self) -> None:
        """The right secret answers "ack", records the session, and unlocks other methods."""
        world = World(self)
        client = world.client()
        self.assertEqual(world.connect(client).result, "ack")
        self.assertEqual(world.auth.sessions, {client.pubkey: True})
        self.assertEqual(world.store.sessions, {(world.auth.id, client.pubkey): True})
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.user_key.pubkey_hex)

    def test_wrong_or_missing_secret(self) -> None:
        """A wrong, empty or absent secret is refused with an error and binds nothing."""
        world = World(self)
        client = world.client()
        bad: list[list[str]] = [[world.auth.bunker_pubkey, "nope"], [world.auth.bunker_pubkey, ""]]
        for params in [*bad, [""], []]:
            _, response = world.call(client, "connect", params)
            self.assertEqual((response.result, response.error), ("error", "invalid secret"))
        self.assertIsNone(world.auth.sessions)
        self.assertEqual(world.call(client, "get_public_key")[1].error, NOT_CONNECTED)

    def test_first_param_not_enforced(self) -> None:
        """params[0] may be "", the user pubkey or anything: NDK does not send the bunker key."""
        world = World(self, max_uses=None)
        for first in ("", world.user_key.pubkey_hex, "whatever"):
            _, response = world.call(world.client(), "connect", [first, SECRET])
            self.assertEqual(response.result, "ack")

    def test_secret_single_use_across_clients(self) -> None:
        """With max_uses=1 a second client presenting the same secret is refused."""
        world = World(self)
        world.connected_client()
        response = world.connect(world.client())
        self.assertEqual(response.error, "secret already used by another client")
        self.assertEqual(len(world.auth.sessions or {}), 1)

    def test_max_uses_counts_distinct_clients(self) -> None:
        """max_uses=2 admits two distinct clients, not a third."""
        world = World(self, max_uses=2)
        world.connected_client()
        world.connected_client()
        self.assertEqual(
            world.connect(world.client()).error, "secret already used by another client"
        )

    def test_unlimited_uses(self) -> None:
        """max_uses=None admits any number of clients."""
        world = World(self, max_uses=None)
        for _ in range(5):
            world.connected_client()
        self.assertEqual(len(world.auth.sessions or {}), 5)

    def test_same_client_may_reconnect(self) -> None:
        """The bound client may connect again with the secret, but not with a wrong one."""
        world = World(self)
        client = world.connected_client()
        self.assertEqual(world.connect(client).result, "ack")
        self.assertEqual(world.connect(client, "wrong").error, "invalid secret")
        self.assertEqual(world.auth.sessions, {client.pubkey: True})

    def test_live_session_reconnects_without_secret(self) -> None:
        """A connected client re-sending connect with no secret gets "ack"; after logout it
        needs the secret again, and an unconnected client never gets in without it."""
        world = World(self)
        client = world.connected_client()
        for params in ([world.auth.bunker_pubkey, ""], [world.auth.bunker_pubkey], []):
            self.assertEqual(world.call(client, "connect", params)[1].result, "ack")
        self.assertEqual(world.call(client, "logout")[1].result, "ack")
        self.assertEqual(world.connect(client, "").error, "invalid secret")
        self.assertEqual(world.auth.sessions, {client.pubkey: False})
        self.assertEqual(world.connect(world.client(), "").error, "invalid secret")

    def test_no_secret_accepts_no_new_clients(self) -> None:
        """An authorization without a connect secret binds no new client."""
        world = World(self, secret=None)
        client = world.client()
        response = world.connect(client, "anything")
        self.assertEqual(response.error, "this authorization accepts no new connections")
        self.assertEqual(world.call(client, "get_public_key")[1].error, NOT_CONNECTED)

    def test_restored_session_needs_no_connect(self) -> None:
        """A session loaded from the store is served without a new connect (client restarts)."""
        world = World(self, secret=None)
        client = world.client()
        world.auth.sessions = {client.pubkey: True}
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.user_key.pubkey_hex)
        self.assertEqual(world.connect(client, "").result, "ack")

    def test_racing_connects_cannot_both_win(self) -> None:
        """The session is taken before the store answers, so a second client sees it used."""
        world = World(self)
        pending: Deferred[None] = Deferred()
        world.store.save_session = lambda *args: pending  # type: ignore[method-assign]
        first = world.client()
        first_request = first.request(
            "connect", [world.auth.bunker_pubkey, SECRET], created_at=world.clock.seconds()
        )
        first_result = world.engine.handle_event(first_request)
        self.assertNoResult(first_result)
        self.assertEqual(
            world.connect(world.client()).error, "secret already used by another client"
        )
        pending.callback(None)
        outcome = self.successResultOf(first_result)
        self.assertEqual(first.read(outcome.response, first_request).result, "ack")

    def test_failed_save_rolls_back(self) -> None:
        """If the session cannot be persisted the client gets an error and nothing is bound."""
        world = World(self)
        world.store.save_session = lambda *args: fail(OSError("disk full"))  # type: ignore[method-assign]
        client = world.client()
        self.assertEqual(world.connect(client).error, "could not save the session, try again")
        self.assertEqual(world.auth.sessions, {})
        world.store.save_session = MemoryStore.save_session.__get__(world.store)  # type: ignore[method-assign]
        self.assertEqual(world.connect(world.client()).result, "ack")


class BeforeConnectTests(SynchronousTestCase):
    def test_only_connect_and_ping_before_connect(self) -> None:
        """An unconnected client gets pong for ping and an error for everything else."""
        world = World(self)
        client = world.client()
        self.assertEqual(world.call(client, "ping")[1].result, "pong")
        for method in (
            "get_public_key",
            "sign_event",
            "nip44_encrypt",
            "switch_relays",
            "logout",
            "get_relays",
            "describe",
        ):
            _, response = world.call(client, method, ["x"])
            self.assertEqual((response.result, response.error), ("error", NOT_CONNECTED), method)


class LogoutTests(SynchronousTestCase):
    def test_logout_ends_session(self) -> None:
        """logout answers "ack", then the client is refused until it connects again."""
        world = World(self)
        client = world.connected_client()
        self.assertEqual(world.call(client, "logout")[1].result, "ack")
        self.assertEqual(world.auth.sessions, {client.pubkey: False})
        self.assertEqual(world.store.sessions, {(world.auth.id, client.pubkey): False})
        self.assertEqual(world.call(client, "get_public_key")[1].error, NOT_CONNECTED)
        self.assertEqual(world.connect(client).result, "ack")
        self.assertEqual(world.call(client, "get_public_key")[1].result, world.user_key.pubkey_hex)

    def test_logged_out_client_still_counts_for_max_uses(self) -> None:
        """A logout does not free the secret for another client."""
        world = World(self)
        client = world.connected_client()
        world.call(client, "logout")
        self.assertEqual(
            world.connect(world.client()).error, "secret already used by another client"
        )

    def test_logout_acks_even_if_store_fails(self) -> None:
        """A failed persist of the logout is logged; the client still gets "ack"."""
        world = World(self)
        client = world.connected_client()
        world.store.end_session = lambda *args: fail(OSError("disk full"))  # type: ignore[method-assign]
        self.assertEqual(world.call(client, "logout")[1].result, "ack")
        self.assertTrue(any("log_failure" in event for event in world.events))
        self.assertEqual(world.auth.sessions, {client.pubkey: False})


class LivenessTests(SynchronousTestCase):
    def test_expired_refused_for_every_method(self) -> None:
        """After expires_at every method, ping and connect included, gets an error."""
        world = World(self)
        client = world.connected_client()
        world.auth.expires_at = int(world.clock.seconds()) + 10
        self.assertEqual(world.call(client, "ping")[1].result, "pong")
        world.clock.advance(10)
        for method in ("ping", "connect", "get_public_key", "sign_event"):
            params = [world.auth.bunker_pubkey, SECRET] if method == "connect" else []
            _, response = world.call(client, method, params)
            self.assertEqual(response.error, "authorization expired", method)

    def test_revoked_refused(self) -> None:
        """A revoked authorization answers every request with "authorization revoked"."""
        world = World(self)
        client = world.connected_client()
        world.auth.revoked_at = int(world.clock.seconds())
        for method in ("ping", "get_public_key", "connect"):
            self.assertEqual(world.call(client, method, [])[1].error, "authorization revoked")


class RateLimitTests(SynchronousTestCase):
    def test_rate_limit_per_client(self) -> None:
        """Past its burst a client gets "rate-limited: slow down"; tokens refill with time."""
        world = World(self, config=EngineConfig(rate_per_second=1, rate_burst=2))
        client = world.client()
        results = [world.call(client, "ping")[1] for _ in range(3)]
        self.assertEqual([r.result for r in results], ["pong", "pong", "error"])
        self.assertEqual(results[2].error, "rate-limited: slow down")
        self.assertEqual(world.call(world.client(), "ping")[1].result, "pong")
        world.clock.advance(1)
        self.assertEqual(world.call(client, "ping")[1].result, "pong")

    def test_rate_limited_requests_not_in_activity_log(self) -> None:
        """Refused-for-rate requests are answered but do not flood the activity log."""
        world = World(self, config=EngineConfig(rate_per_second=1, rate_burst=1))
        client = world.client()
        world.call(client, "ping")
        outcome, _ = world.call(client, "ping")
        self.assertEqual((outcome.outcome, outcome.reason), ("error", "rate-limited: slow down"))
        self.assertEqual(len(world.store.activity), 1)
