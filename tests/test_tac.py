# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""deployment/keycast.tac runs the daemon as a real process: ``twistd -ny deployment/keycast.tac``.

Real processes on 127.0.0.1 only (a LocalRelay, the ``keycast`` CLI, twistd), bounded waits,
everything stopped in cleanups (tests/interop_harness.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from twisted.trial.unittest import TestCase

from tests.interop_harness import (
    REPO,
    DaemonPaths,
    DaemonProcess,
    InteropFixture,
    _venv_script,
    free_port,
    require_tool,
)

TAC = REPO / "deployment" / "keycast.tac"


class TacDaemon(DaemonProcess):
    """DaemonProcess started from the .tac: every setting through the environment."""

    def __init__(
        self, fixture: InteropFixture, name: str, relays: Sequence[str], env: Mapping[str, str]
    ) -> None:
        require_tool("keycast-daemon")
        port = free_port()
        super().__init__(
            fixture,
            DaemonPaths.under(fixture.root / name),
            relays=relays,
            health_port=port,
            env={"KEYCAST_HEALTH": f"tcp:{port}:interface=127.0.0.1", **env},
        )

    def argv(self) -> list[str]:
        return [_venv_script("twistd"), "-ny", str(TAC), "--pidfile", str(self.paths.pidfile)]


class TacTests(TestCase):
    async def test_tac_serves_and_stops_cleanly(self) -> None:
        """The .tac daemon reaches /ready over a LocalRelay, answers /health, exits 0 on SIGTERM."""
        fx = InteropFixture(self)
        relay = await fx.local_relay()
        daemon = TacDaemon(fx, "tac", [relay.url], {"KEYCAST_LOG_FORMAT": "json"})
        (await daemon.run_cli("init")).check()
        (await daemon.run_cli("key", "add", "alice")).check()
        (await daemon.run_cli("authorize", "alice", "--relay", relay.url)).bunker_uri()
        process = daemon.start()
        ready = await daemon.wait_ready(timeout=30)
        self.assertTrue(ready["ready"], fx.report())
        self.assertEqual(await daemon.get("/health"), (200, "OK"))
        code, body = await daemon.get("/status")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["authorizations"]["total"], 1)
        self.assertTrue(daemon.paths.pidfile.exists())
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(timeout=20), 0, fx.report())
        self.assertFalse(daemon.paths.pidfile.exists())
        # The observer set on the application: JSON lines, with the runbook's messages.
        records = [json.loads(line) for line in process.lines if line.startswith("{")]
        messages = [record.get("message", "") for record in records]
        self.assertIn("Database initialized", messages, fx.report())
        self.assertIn("Unified signer daemon ready", messages, fx.report())

    async def test_tac_bad_setting_one_line(self) -> None:
        """A bad environment value exits 1 with one line naming the variable."""
        fx = InteropFixture(self)
        daemon = TacDaemon(fx, "bad", ["ws://127.0.0.1:9"], {"KEYCAST_SHARD": "3/2"})
        process = daemon.start()
        self.assertEqual(await daemon.wait_exit(timeout=20), 1, fx.report())
        lines = [line for line in process.stderr_lines if line.strip()]
        self.assertEqual(len(lines), 1, fx.report())
        self.assertTrue(lines[0].startswith("keycast: --shard (KEYCAST_SHARD)"), lines[0])
