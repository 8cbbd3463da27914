# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The nostrconnect:// flow: `keycast connect`, the queued response, and the daemon sending it.

Real SQLite databases in temp dirs, a synchronous store runner, task.Clock, an inline crypto
runner and fakes for the relay pool; the end-to-end run with nostr-tools is in
tests/test_interop_nostrconnect.py.
"""

from __future__ import annotations

import io
import os
import sqlite3
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.cli.main import run as run_cli
from keycast_tw.connects import RETRY_DELAY, ConnectResponder
from keycast_tw.nostr import nip44, nip46
from keycast_tw.nostr.event import check_event
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer.model import KeyUnavailable, Permission
from keycast_tw.signer.registry import Registry
from keycast_tw.store import admin
from keycast_tw.store.connects import (
    MAX_PENDING_AGE,
    PendingConnect,
    queue_connect_response,
    read_pending_connects,
)
from keycast_tw.store.crypto import (
    SecretCipher,
    connect_secret_aad,
    connect_secret_binding,
    create_master_key_file,
    open_file_cipher,
)
from keycast_tw.store.db import migrations, open_database, schema_version, split_statements
from keycast_tw.store.errors import CiphertextError
from keycast_tw.store.rotation import rotate_master_key
from keycast_tw.store.runner import ConnectionRunner
from keycast_tw.store.service import StoreService
from tests.signer_helpers import World, make_authorization
from tests.test_store_fixtures import NOW, add_authorization, add_user_key, new_cipher

DAEMON_RELAYS = ("wss://relay.example", "ws://127.0.0.1:7777")
RELAY = "wss://relay.example.com"  # the relay of tests.signer_helpers.make_authorization
SECRET = "s3cr3t-0123456789abcdef"
CLIENT = SecretKey.generate()


def nostrconnect_uri(
    relays: tuple[str, ...] = ("wss://relay.example",),
    *,
    secret: str | None = SECRET,
    extra: str = "&perms=sign_event%3A1%2Cnip44_encrypt&name=My+Client",
    client: str = CLIENT.pubkey_hex,
) -> str:
    query = "&".join(f"relay={quote(url, safe='')}" for url in relays)
    if secret is not None:
        query += f"&secret={secret}"
    return f"nostrconnect://{client}?{query}{extra}"


class ConnectAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        path = os.path.join(self.mktemp(), "keycast.db")
        self.conn = open_database(path, create=True)
        self.addCleanup(self.conn.close)
        self.cipher = SecretCipher(os.urandom(32))
        admin.add_key(self.conn, self.cipher, "alice", clock=lambda: NOW)

    def connect(self, uri: str, **kwargs: Any) -> admin.ConnectResult:
        return admin.connect(
            self.conn, self.cipher, "alice", uri, DAEMON_RELAYS, clock=lambda: NOW, **kwargs
        )

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608

    def test_creates_an_authorization_for_the_uri_client_only(self) -> None:
        """One active session for the URI's client, no connect secret, one use, fresh key."""
        result = self.connect(nostrconnect_uri(("wss://relay.example", "wss://elsewhere.example")))
        info = result.authorization
        self.assertEqual(result.client_pubkey, CLIENT.pubkey_hex)
        self.assertEqual(info.relays, ("wss://relay.example",))
        self.assertEqual(result.ignored_relays, ("wss://elsewhere.example",))
        self.assertEqual((info.max_uses, info.uses, info.label), (1, 1, "My Client"))
        self.assertNotEqual(info.bunker_pubkey, info.user_pubkey)
        row = self.conn.execute(
            "SELECT secret_hash FROM authorizations WHERE id = ?", (info.id,)
        ).fetchone()
        self.assertIsNone(row[0])
        sessions = self.conn.execute(
            "SELECT client_pubkey, logged_out_at FROM client_sessions WHERE authorization_id = ?",
            (info.id,),
        ).fetchall()
        self.assertEqual(sessions, [(CLIENT.pubkey_hex, None)])

    def test_queues_the_secret_encrypted_and_bound_to_its_row(self) -> None:
        """The queued secret decrypts only with its own row's associated data."""
        info = self.connect(nostrconnect_uri()).authorization
        client, blob, created_at = self.conn.execute(
            "SELECT client_pubkey, secret_ciphertext, created_at FROM pending_connect_responses"
            " WHERE authorization_id = ?",
            (info.id,),
        ).fetchone()
        self.assertEqual((client, created_at), (CLIENT.pubkey_hex, NOW))
        self.assertNotIn(SECRET.encode(), bytes(blob))
        own = connect_secret_aad(connect_secret_binding(info.id, client))
        self.assertEqual(self.cipher.decrypt(bytes(blob), own), SECRET.encode())
        other = connect_secret_aad(connect_secret_binding(info.id + 1, client))
        self.assertRaises(CiphertextError, self.cipher.decrypt, bytes(blob), other)

    def test_perms_grant_nothing_the_policy_decides(self) -> None:
        """The URI's perms are reported, not granted: the authorization gets --policy only."""
        kinds = Permission("allowed_kinds", {"allowed_kinds": [7]})
        admin.add_policy(self.conn, "social", [kinds])
        result = self.connect(nostrconnect_uri(), policy="social", label="phone")
        self.assertEqual(result.requested_perms, ("sign_event:1", "nip44_encrypt"))
        info = result.authorization
        self.assertEqual((info.policy, info.label), ("social", "phone"))

    def test_legacy_metadata_uri_and_relay_spelling(self) -> None:
        """rust-nostr's metadata JSON form works; relays match ignoring case and a final slash."""
        uri = nostrconnect_uri(
            ("WS://127.0.0.1:7777/",), extra='&metadata={"name":"Rust App","url":"https://a.b"}'
        )
        info = self.connect(uri).authorization
        self.assertEqual((info.relays, info.label), (("ws://127.0.0.1:7777",), "Rust App"))

    def test_relays_stored_in_the_daemon_spelling_once(self) -> None:
        """Two spellings of one daemon relay become that relay's configured URL, once: the
        daemon sends and counts the response on the authorization's relays by their URLs."""
        uri = nostrconnect_uri(("WSS://Relay.example/", "wss://relay.example", "wss://x.example"))
        result = self.connect(uri)
        self.assertEqual(result.authorization.relays, ("wss://relay.example",))
        self.assertEqual(result.ignored_relays, ("wss://x.example",))

    def test_refusals_write_nothing_and_never_quote_the_secret(self) -> None:
        """No secret, a bad URI, or no relay the daemon listens on: InvalidInput, no rows."""
        cases = {
            nostrconnect_uri(secret=None): "has no secret",
            nostrconnect_uri(client="zz"): "not a usable nostrconnect:// URI",
            f"bunker://{CLIENT.pubkey_hex}?relay=wss://relay.example&secret={SECRET}": "URI",
            nostrconnect_uri(secret="x" * 513): "longer than 512",
            nostrconnect_uri(("wss://elsewhere.example",)): (
                "none of the URI's relays (wss://elsewhere.example) is one of the daemon's"
            ),
        }
        for uri, expected in cases.items():
            error = self.assertRaises(admin.InvalidInput, self.connect, uri)
            self.assertIn(expected, str(error))
            self.assertNotIn(SECRET, str(error))
        error = self.assertRaises(
            admin.InvalidInput, self.connect, nostrconnect_uri(("wss://elsewhere.example",))
        )
        self.assertIn("--relay or KEYCAST_RELAYS", str(error))
        self.assertRaises(admin.NotFound, admin.connect, self.conn, self.cipher, "bob",
                          nostrconnect_uri(), DAEMON_RELAYS)
        self.assertEqual(
            (self.count("authorizations"), self.count("pending_connect_responses")), (0, 0)
        )


class ConnectCliTests(SynchronousTestCase):
    def setUp(self) -> None:
        home = self.mktemp()
        os.makedirs(home)
        self.environ = {
            "DATABASE_PATH": os.path.join(home, "keycast.db"),
            "MASTER_KEY_PATH": os.path.join(home, "master.key"),
            "KEYCAST_RELAYS": ",".join(DAEMON_RELAYS),
        }
        self.keycast("init")
        self.keycast("key", "add", "alice")

    def keycast(self, *argv: str, stdin: str = "", status: int = 0) -> tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run_cli(list(argv), self.environ, io.StringIO(stdin), out, err, clock=lambda: NOW)
        self.assertEqual(code, status, err.getvalue())
        return out.getvalue(), err.getvalue()

    def test_connect_prints_the_pairing_never_the_secret(self) -> None:
        """`keycast connect` names the client and the requested perms; the secret stays hidden."""
        uri = nostrconnect_uri(("wss://relay.example", "wss://elsewhere.example"))
        out, err = self.keycast("connect", "alice", uri)
        self.assertIn(f"client pubkey: {CLIENT.pubkey_hex} (the only client it accepts)", out)
        self.assertIn("sign_event:1, nip44_encrypt (not granted from the URI", out)
        self.assertIn("wss://elsewhere.example is not one of the daemon's relays", err)
        self.assertNotIn(SECRET, out + err)

    def test_uri_from_stdin(self) -> None:
        """URI '-' reads it from stdin, out of the process list."""
        out, _ = self.keycast("connect", "alice", "-", stdin=nostrconnect_uri() + "\n")
        self.assertIn("Authorization #1", out)
        _, err = self.keycast("connect", "alice", "-", status=2)
        self.assertEqual(err, "keycast: error: URI -: nothing on stdin\n")

    def test_refusal_is_one_line_exit_2(self) -> None:
        """A URI on no relay of the daemon: exit 2, one line naming the relay and the option."""
        _, err = self.keycast(
            "connect", "alice", nostrconnect_uri(("wss://elsewhere.example",)), status=2
        )
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("wss://elsewhere.example", err)
        self.assertIn("KEYCAST_RELAYS", err)


class MigrationAndRotationTests(SynchronousTestCase):
    def test_version_2_database_with_data_is_migrated(self) -> None:
        """A version-2 database gains an empty pending table and keeps its rows."""
        path = os.path.join(self.mktemp(), "keycast.db")
        os.makedirs(os.path.dirname(path))
        old = sqlite3.connect(path)
        for migration in migrations()[:2]:
            for statement in split_statements(migration.sql):
                old.execute(statement)
        old.execute("PRAGMA user_version = 2")
        old.commit()
        cipher = new_cipher()
        key_id, _ = add_user_key(old, cipher, "alice")
        auth_id, bunker = add_authorization(old, cipher, key_id)
        old.close()
        conn = open_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), 3)
        self.assertEqual(
            conn.execute("SELECT id, bunker_pubkey FROM authorizations").fetchall(),
            [(auth_id, bunker)],
        )
        queue_connect_response(conn, cipher, auth_id, CLIENT.pubkey_hex, SECRET, NOW)
        conn.execute("DELETE FROM authorizations")
        self.assertEqual(
            conn.execute("SELECT COUNT(*) FROM pending_connect_responses").fetchone(), (0,)
        )

    def test_rotation_reencrypts_queued_secrets(self) -> None:
        """After a master key rotation the queued secret reads under the new key."""
        path = os.path.join(self.mktemp(), "keycast.db")
        conn = open_database(path, create=True)
        self.addCleanup(conn.close)
        old, new = new_cipher(), new_cipher()
        key_id, _ = add_user_key(conn, old, "alice")
        auth_id, _ = add_authorization(conn, old, key_id)
        queue_connect_response(conn, old, auth_id, CLIENT.pubkey_hex, SECRET, NOW)
        conn.commit()
        result = rotate_master_key(conn, old, new)
        self.assertEqual(result.connect_secrets, 1)
        found = read_pending_connects(conn, new, NOW)
        self.assertEqual([c.secret for c in found.connects], [SECRET])

    def test_read_drops_stale_rows_and_keeps_undecryptable_ones(self) -> None:
        """Rows older than the bound are deleted; a row another key wrote is kept, reported."""
        path = os.path.join(self.mktemp(), "keycast.db")
        conn = open_database(path, create=True)
        self.addCleanup(conn.close)
        cipher = new_cipher()
        key_id, _ = add_user_key(conn, cipher, "alice")
        ids = [add_authorization(conn, cipher, key_id)[0] for _ in range(3)]
        queue_connect_response(conn, cipher, ids[0], CLIENT.pubkey_hex, SECRET, NOW)
        queue_connect_response(conn, cipher, ids[1], CLIENT.pubkey_hex, SECRET, NOW - 601)
        queue_connect_response(conn, new_cipher(), ids[2], CLIENT.pubkey_hex, SECRET, NOW)
        conn.commit()
        found = read_pending_connects(conn, cipher, NOW, 600)
        self.assertEqual([c.authorization_id for c in found.connects], [ids[0]])
        self.assertEqual((found.stale, found.broken), ([ids[1]], [ids[2]]))
        left = conn.execute("SELECT authorization_id FROM pending_connect_responses").fetchall()
        self.assertEqual(sorted(row[0] for row in left), [ids[0], ids[2]])
        self.assertNotIn(SECRET, repr(found))


class StorePickUpTests(SynchronousTestCase):
    """StoreService hands queued responses over on reload and on a full load."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.db_path = os.path.join(directory, "keycast.db")
        self.conn = open_database(self.db_path, create=True)
        self.addCleanup(self.conn.close)
        self.key_path = os.path.join(directory, "master.key")
        create_master_key_file(self.key_path)
        self.cipher = open_file_cipher(self.conn, self.key_path)
        admin.add_key(self.conn, self.cipher, "alice", clock=lambda: NOW)
        self.now = float(NOW)
        self.offered: list[list[PendingConnect]] = []
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def start(self, registry: Registry | None = None) -> StoreService:
        self.clock = Clock()
        service = StoreService(
            database_path=self.db_path,
            registry=Registry() if registry is None else registry,
            reactor=self.clock,
            master_key_path=self.key_path,
            runner_factory=lambda _: ConnectionRunner(self.conn, self.db_path),
            now=lambda: self.now,
            on_pending_connects=self.offered.append,
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(service.ready)
        return service

    def connect(self) -> int:
        result = admin.connect(
            self.conn, self.cipher, "alice", nostrconnect_uri(), DAEMON_RELAYS,
            clock=lambda: self.now,
        )
        return result.authorization.id

    def test_reload_hands_over_the_new_response(self) -> None:
        """The reload that brings the authorization hands its response over, decrypted."""
        service = self.start()
        self.assertEqual(self.offered, [])
        auth_id = self.connect()
        self.clock.advance(0.5)
        self.assertEqual(len(self.offered), 1)
        (connect,) = self.offered[0]
        self.assertEqual(
            (connect.authorization_id, connect.client_pubkey, connect.secret),
            (auth_id, CLIENT.pubkey_hex, SECRET),
        )
        self.assertIsNotNone(service.registry.by_id(auth_id))
        self.clock.advance(0.5)  # nothing changed: no new read
        self.assertEqual(len(self.offered), 1)

    def test_start_hands_over_what_a_restart_left(self) -> None:
        """A response queued before the daemon started is handed over at the first load."""
        auth_id = self.connect()
        self.start()
        self.assertEqual([c.authorization_id for c in self.offered[0]], [auth_id])

    def test_stale_rows_dropped_with_a_log_line(self) -> None:
        """A response older than the bound is deleted and logged, not handed over."""
        auth_id = self.connect()
        self.now += MAX_PENDING_AGE + 1
        self.start()
        self.assertEqual(self.offered, [])
        lines = [formatEvent(event) for event in self.logged]
        self.assertIn(
            f"Dropped 1 connect responses not sent within {MAX_PENDING_AGE}s (authorizations "
            f"{auth_id}); pair those clients again with `keycast connect`",
            lines,
        )
        self.assertEqual(
            self.conn.execute("SELECT COUNT(*) FROM pending_connect_responses").fetchone(), (0,)
        )

    def test_undecryptable_rows_reported_only_for_served_authorizations(self) -> None:
        """A row another key wrote is an ERROR only for the daemon that serves its
        authorization; other shards' rows are not theirs to report."""
        served = self.connect()
        foreign = self.connect()
        stranger = SecretCipher(os.urandom(32))
        for auth_id in (served, foreign):
            self.conn.execute(
                "UPDATE pending_connect_responses SET secret_ciphertext = ?"
                " WHERE authorization_id = ?",
                (stranger.encrypt(b"x", connect_secret_aad(
                    connect_secret_binding(auth_id, CLIENT.pubkey_hex))), auth_id),
            )
        self.conn.commit()
        self.start(Registry(accept=lambda auth: auth.id == served))  # the shard serving one
        errors = [line for line in map(formatEvent, self.logged) if "does not decrypt" in line]
        self.assertEqual(len(errors), 1)
        self.assertIn(f"authorization {served} ", errors[0])

    def test_delete_pending_connect(self) -> None:
        """delete_pending_connect removes the row (the responder calls it once sent)."""
        service = self.start()
        auth_id = self.connect()
        self.successResultOf(service.delete_pending_connect(auth_id))
        self.assertEqual(
            self.conn.execute("SELECT COUNT(*) FROM pending_connect_responses").fetchone(), (0,)
        )


class EngineConnectResponseTests(SynchronousTestCase):
    def test_client_decrypts_its_secret_from_the_bunker(self) -> None:
        """The response is a valid kind-24133 event by the bunker key, p-tagging the client,
        whose NIP-44 content gives the client {"id", "result": secret}."""
        world = World(self)
        event = self.successResultOf(
            world.engine.connect_response(world.auth, CLIENT.pubkey_hex, SECRET)
        )
        check_event(event)
        self.assertEqual(event["kind"], nip46.KIND)
        self.assertEqual(event["pubkey"], world.auth.bunker_pubkey)
        self.assertEqual(event["tags"], [["p", CLIENT.pubkey_hex]])
        self.assertEqual(event["created_at"], int(world.clock.seconds()))
        key = nip44.conversation_key(CLIENT, bytes.fromhex(world.auth.bunker_pubkey))
        response = nip46.parse_response(nip44.decrypt(event["content"], key))
        self.assertEqual((response.result, response.error), (SECRET, None))
        self.assertTrue(response.id)
        self.assertEqual(world.runner.calls, 1)
        self.assertEqual(world.engine.cache_stats()["nip44_keys"], 1)

    def test_client_first_request_reuses_the_key(self) -> None:
        """The client's first request after the response costs no new key derivation."""
        world = World(self, secret=None)
        world.auth.sessions = {CLIENT.pubkey_hex: True}
        self.successResultOf(world.engine.connect_response(world.auth, CLIENT.pubkey_hex, SECRET))
        _, response = world.call(world.client(CLIENT), "get_public_key")
        self.assertEqual(response.result, world.user_key.pubkey_hex)
        self.assertEqual(world.engine.cache_stats()["nip44_misses"], 1)

    def test_unavailable_bunker_key_fails_the_deferred(self) -> None:
        """A bunker key that does not decrypt fails the Deferred with KeyUnavailable."""
        world = World(self)

        class Broken:
            pubkey = world.auth.bunker_pubkey

            def secret_key(self) -> SecretKey:
                raise KeyUnavailable("bunker key does not decrypt")

        world.auth.bunker_key = Broken()
        failure = self.failureResultOf(
            world.engine.connect_response(world.auth, CLIENT.pubkey_hex, SECRET)
        )
        failure.trap(KeyUnavailable)


class FakeRelays:
    """The relay pool as the responder sees it: which relays listen, what went out where."""

    def __init__(self) -> None:
        self.listening = False
        self.listening_on = {RELAY}
        self.published: list[dict[str, Any]] = []
        self.counted: list[tuple[str, ...]] = []
        self.forgotten: list[int] = []
        self.built: list[tuple[int, str, str]] = []
        self.build_result: Deferred[dict[str, Any]] | None = None

    def build(self, auth: Any, client: str, secret: str) -> Deferred[dict[str, Any]]:
        self.built.append((auth.id, client, secret))
        if self.build_result is not None:
            return self.build_result
        return succeed({"id": f"{len(self.built):064x}", "kind": nip46.KIND})

    def forget(self, authorization_id: int) -> Deferred[None]:
        self.forgotten.append(authorization_id)
        return succeed(None)

    def publish(self, event: dict[str, Any], relays: tuple[str, ...]) -> None:
        self.published.append(event)
        self.counted.append(relays)

    def listening_for(self, pubkey: str, relays: tuple[str, ...]) -> bool:
        return self.listening and bool(self.listening_on & set(relays))


class ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW + 10)
        self.registry = Registry(now=self.clock.seconds)
        self.auth, _, _ = make_authorization(authorization_id=7, secret=None)
        self.registry.put(self.auth)
        self.relays = FakeRelays()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.responder = ConnectResponder(
            registry=self.registry,
            build=self.relays.build,
            publish=self.relays.publish,
            listening=lambda pubkey, relays: (
                pubkey == self.auth.bunker_pubkey and self.relays.listening_for(pubkey, relays)
            ),
            forget=self.relays.forget,
            clock=self.clock,
        )
        self.responder.startService()
        self.addCleanup(self.responder.stopService)
        self.pending = PendingConnect(7, CLIENT.pubkey_hex, SECRET, NOW)

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.logged]

    def test_sends_once_listening_and_deletes_once_accepted(self) -> None:
        """Nothing goes out before a relay subscription covers the bunker; the row is deleted
        only after a relay accepted the response."""
        self.responder.offer([self.pending])
        self.assertEqual(self.relays.published, [])
        self.relays.listening = True
        self.responder.relay_subscribed("wss://relay.example")
        self.assertEqual(self.relays.built, [(7, CLIENT.pubkey_hex, SECRET)])
        (event,) = self.relays.published
        self.responder.offer([self.pending])  # a reload meanwhile: not sent twice
        self.responder.pubkeys_applied()
        self.assertEqual(len(self.relays.published), 1)
        self.assertEqual(self.relays.forgotten, [])
        self.responder.response_published(event["id"], 1)
        self.assertEqual((self.relays.forgotten, self.responder.pending), ([7], 0))
        self.assertIn(
            f"Sent the connect response of authorization 7 to client {CLIENT.pubkey_hex[:8]}…",
            self.lines(),
        )
        self.assertFalse(any(SECRET in line for line in self.lines()))

    def test_not_accepted_is_sent_again(self) -> None:
        """When no relay accepted it, the response goes out again on the next subscription."""
        self.relays.listening = True
        self.responder.offer([self.pending])
        self.responder.response_published(self.relays.published[0]["id"], 0)
        self.assertEqual(self.relays.forgotten, [])
        self.responder.relay_subscribed("wss://relay.example")
        self.assertEqual(len(self.relays.published), 2)

    def test_expires_after_the_bound(self) -> None:
        """Unsent after max_age: dropped from memory and the database, with a log line."""
        self.responder.offer([self.pending])
        self.clock.advance(MAX_PENDING_AGE - 10)
        self.assertEqual(self.relays.forgotten, [7])
        self.assertEqual(self.responder.pending, 0)
        self.assertIn(
            f"Dropped the connect response of authorization 7: not sent within "
            f"{MAX_PENDING_AGE}s; pair the client again with `keycast connect`",
            self.lines(),
        )
        self.relays.listening = True
        self.responder.relay_subscribed("wss://relay.example")
        self.assertEqual(self.relays.published, [])

    def test_revoked_or_unknown_authorizations(self) -> None:
        """A revoked authorization's response is dropped; another shard's is left alone."""
        self.relays.listening = True
        self.responder.offer([PendingConnect(99, CLIENT.pubkey_hex, SECRET, NOW)])
        self.assertEqual((self.relays.built, self.relays.forgotten), ([], []))
        self.auth.revoked_at = NOW
        self.responder.offer([self.pending])
        self.assertEqual((self.relays.published, self.relays.forgotten), ([], [7]))

    def test_stale_offer_is_ignored(self) -> None:
        """A response already older than the bound is not taken (the store drops the row)."""
        self.relays.listening = True
        self.responder.offer([PendingConnect(7, CLIENT.pubkey_hex, SECRET, NOW - MAX_PENDING_AGE)])
        self.assertEqual((self.relays.built, self.responder.pending), ([], 0))

    def test_build_failure_is_logged_and_forgotten(self) -> None:
        """A bunker key that does not decrypt: one ERROR line, nothing published, row kept."""
        self.relays.listening = True
        self.relays.build_result = fail(KeyUnavailable("bunker key does not decrypt"))
        self.responder.offer([self.pending])
        self.assertEqual((self.relays.published, self.relays.forgotten), ([], []))
        self.assertEqual(self.responder.pending, 0)
        self.assertIn(
            "Cannot build the connect response of authorization 7: bunker key does not decrypt",
            self.lines(),
        )

    def test_only_the_authorization_relays_count(self) -> None:
        """A subscription on a relay the client does not read does not release the response;
        once released, only the authorization's relays count for its acceptance."""
        self.relays.listening = True
        self.relays.listening_on = {"wss://other.example"}
        self.responder.offer([self.pending])
        self.assertEqual(self.relays.published, [])
        self.relays.listening_on = {RELAY}
        self.responder.relay_subscribed(RELAY)
        self.assertEqual(self.relays.counted, [(RELAY,)])

    def test_unaccepted_response_is_retried_with_a_growing_delay(self) -> None:
        """Without any new subscription, a response no relay accepted goes out again after
        RETRY_DELAY, then after twice that."""
        self.relays.listening = True
        self.responder.offer([self.pending])
        self.responder.response_published(self.relays.published[-1]["id"], 0)
        self.clock.advance(RETRY_DELAY)
        self.assertEqual(len(self.relays.published), 2)
        self.responder.response_published(self.relays.published[-1]["id"], 0)
        self.clock.advance(RETRY_DELAY)
        self.assertEqual(len(self.relays.published), 2)
        self.clock.advance(RETRY_DELAY)
        self.assertEqual(len(self.relays.published), 3)
        self.assertFalse(any(SECRET in line for line in self.lines()))

    def test_revoked_while_signing_is_not_published(self) -> None:
        """An authorization revoked while its response was being signed: nothing goes out, the
        row is deleted."""
        self.relays.listening = True
        self.relays.build_result = Deferred()
        self.responder.offer([self.pending])
        self.auth.revoked_at = NOW
        self.relays.build_result.callback({"id": "f" * 64, "kind": nip46.KIND})
        self.assertEqual((self.relays.published, self.relays.forgotten), ([], [7]))

    def test_offers_before_start_and_after_stop(self) -> None:
        """An offer before the start waits for it (no timer until then); one after the stop is
        not taken, so no secret or timer outlives the service."""
        self.responder.stopService()
        self.responder.offer([self.pending])
        self.assertEqual((self.responder.pending, self.clock.getDelayedCalls()), (0, []))
        fresh = ConnectResponder(
            registry=self.registry,
            build=self.relays.build,
            publish=self.relays.publish,
            listening=self.relays.listening_for,
            forget=self.relays.forget,
            clock=self.clock,
        )
        self.relays.listening = True
        fresh.offer([self.pending])
        self.assertEqual((fresh.pending, self.clock.getDelayedCalls()), (1, []))
        fresh.startService()
        self.addCleanup(fresh.stopService)
        self.assertEqual(len(self.relays.published), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_stop_cancels_retry_timers(self) -> None:
        """A retry scheduled after an unaccepted response does not outlive stopService."""
        self.relays.listening = True
        self.responder.offer([self.pending])
        self.responder.response_published(self.relays.published[-1]["id"], 0)
        self.responder.relay_subscribed(RELAY)  # the retry is replaced, not left behind
        self.responder.response_published(self.relays.published[-1]["id"], 0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # expiry and one retry
        self.responder.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_timers(self) -> None:
        """stopService leaves no delayed call behind."""
        self.responder.offer([self.pending])
        self.responder.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
