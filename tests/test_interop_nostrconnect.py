# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The nostrconnect:// flow end to end: a real nostr-tools client, the real daemon and CLI.

The client (tests/interop/bunker_client.mjs --nostrconnect) makes its key and a URI with
nostr-tools' createNostrConnectURI and waits in BunkerSigner.fromURI; the test pairs it with
`keycast connect alice URI` against the running daemon, which must send the connect response
on its own; the client then runs a scenario through the normal request path. Waits are bounded
and on process output, never on the clock; without node the test skips (fails under CI=true).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.trial.unittest import TestCase

from tests.interop_harness import ClientRun, InteropFixture

NOTE: dict[str, Any] = {"kind": 1, "content": "paired through nostrconnect", "tags": []}


class NostrConnectFlowTests(TestCase):
    async def test_nostr_tools_client_is_paired_by_keycast_connect(self) -> None:
        """fromURI gets the daemon's connect response; get_public_key, sign_event and
        switch_relays then work with the user's key; the secret is never printed or logged."""
        fx = InteropFixture(self)
        relay = await fx.local_relay()
        daemon = fx.daemon(relays=[relay.url])
        await daemon.provision(count=0)
        keys = json.loads((await daemon.run_cli("key", "list", "--json")).check().stdout)
        user_pubkey = keys[0]["pubkey"]
        daemon.start()
        await daemon.wait_ready()

        client = fx.nostrconnect_client(
            [relay.url],
            [
                {"op": "get_public_key"},
                {"op": "sign_event", "event": NOTE},
                {"op": "switch_relays"},
            ],
            perms="sign_event:1,nip44_encrypt",
        )
        line = await client.wait_for_line(r'"event":"nostrconnect_uri"')
        uri = json.loads(line.string)["uri"]
        secret = parse_qs(urlsplit(uri).query)["secret"][0]
        mark = daemon.process.mark() if daemon.process else 0
        paired = (await daemon.run_cli("connect", "alice", uri)).check()
        self.assertIn("the only client it accepts", paired.stdout)
        await client.wait_exit(timeout=60)
        run = ClientRun.parse(client)

        self.assertTrue(run.ok, run.report() + "\n" + fx.report())
        self.assertNotEqual(run.start["bunker_pubkey"], user_pubkey)
        self.assertEqual(run.step("get_public_key")["result"], user_pubkey)
        signed = run.step("sign_event")["result"]
        self.assertEqual((signed["pubkey"], signed["content"]), (user_pubkey, NOTE["content"]))
        self.assertEqual(json.loads(run.step("switch_relays")["result"]["reply"]), [relay.url])
        await daemon.wait_for_log(r"Sent the connect response of authorization 1 ", after=mark)

        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0)
        with sqlite3.connect(daemon.paths.database) as conn:
            pending = conn.execute("SELECT COUNT(*) FROM pending_connect_responses").fetchone()
        self.assertEqual(pending[0], 0)
        printed = "\n".join([paired.stdout, paired.stderr, *daemon.log_lines])
        self.assertNotIn(secret, printed)
