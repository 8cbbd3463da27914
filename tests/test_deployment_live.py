# mypy: disable-error-code="no-untyped-call"
"""The deployment scripts and command lines against the LIVE daemon (real processes).

tests/test_deployment.py checks the artefacts statically and the scripts against stand-ins;
this module runs them against ``twistd keycast`` itself, on 127.0.0.1, with a real relay
(nostr-sdk's LocalRelay) and a real NIP-46 client (nostr-tools, tests/interop/bunker_client.mjs):

- healthcheck.sh, check-signer.sh, ``keycast status`` and ``keycast check`` give the documented
  exit codes for a healthy daemon, one whose relay went down, one that never got a relay, and a
  stopped one; the scripts find the daemon from KEYCAST_HEALTH (or PORT) alone, as keycast
  check does, on TCP and on a UNIX socket; check-signer.sh --max-idle warns about a daemon that
  has been up longer than that without any request;
- backup-db.sh backs the running daemon up with the real ``keycast backup``; the runbook's
  restore steps put the copy under a fresh daemon (new database path, same master key), and a
  client session bound before the backup is served by it, with the same keys; runs within one
  second, one after the other or at once, each keep a file of their own;
- the Dockerfile's CMD, the systemd unit's ExecStart, supervisor's command and the Cloud Run
  wrapper's final exec are parsed from their files and run outside their managers, with the
  environment those files set (paths moved into a temporary directory, relays and the health
  endpoint on loopback): each starts the daemon, which answers /health and exits 0 on SIGTERM;
- the runbook lines docs/operations.md tells operators to grep for are in the daemon's output.

Every wait is bounded and every child is stopped in the test's cleanups (InteropFixture).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.interop_harness import (
    INTEROP_DIR,
    DaemonProcess,
    HarnessError,
    InteropFixture,
    RelayProcess,
    free_port,
    require_tool,
)
from tests.test_deployment import (
    DEPLOY,
    ROOT,
    dockerfile_cmd,
    dockerfile_env,
    dockerfile_stages,
    read_unit,
    unit_environment,
    unit_values,
)

VENV_BIN = Path(sys.executable).parent
HEALTHCHECK = str(DEPLOY / "healthcheck.sh")
CHECK_SIGNER = str(DEPLOY / "check-signer.sh")
BACKUP_DB = str(DEPLOY / "backup-db.sh")
WRAPPER = str(DEPLOY / "cloudrun" / "run-with-litestream.sh")
OPERATIONS = ROOT / "docs" / "operations.md"
SCRIPT_TIMEOUT = 30.0
STATE_TIMEOUT = 20.0

# What the runbook greps for, and the pattern that finds each in the daemon's text log.
RUNBOOK_LINES = {
    "Database initialized": r"Database initialized",
    "Loaded X total authorizations": (
        r"Loaded \d+ total authorizations \(\d+ regular \+ \d+ OAuth\)"
    ),
    "Connected to N relays for redundancy": r"Connected to \d+ relays for redundancy",
    "Subscribing to": r"Subscribing to (ALL )?kind 24133 events",
    "Unified signer daemon ready": r"Unified signer daemon ready",
    "Received NIP-46 request for bunker": r"Received NIP-46 request for bunker: [0-9a-f]",
    "Processing NIP-46 method": r"Processing NIP-46 method: \w+",
    "Sent NIP-46 response": r"Sent NIP-46 response",
}


@dataclass(frozen=True)
class Ran:
    """How a command ended and what it printed."""

    argv: Sequence[str]
    code: int | None
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"{shlex.join(self.argv)} -> {self.code}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


async def run_command(
    fx: InteropFixture,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = SCRIPT_TIMEOUT,
) -> Ran:
    """Run one command to its end (bounded) without blocking the reactor."""
    process = fx.spawn(name, argv, env=env, cwd=cwd)
    code = await process.wait_exit(timeout=timeout)
    return Ran(argv, code, "\n".join(process.stdout_lines), "\n".join(process.stderr_lines))


async def poll(
    check: Callable[[], Awaitable[bool]], what: str, *, timeout: float = STATE_TIMEOUT
) -> None:
    """Return once ``check()`` is true; HarnessError after ``timeout`` seconds."""
    deadline = global_reactor.seconds() + timeout
    while not await check():
        if global_reactor.seconds() >= deadline:
            raise HarnessError(f"{what}: not within {timeout} s")
        await deferLater(global_reactor, 0.1, lambda: None)


async def answers(daemon: DaemonProcess, path: str, code: int) -> bool:
    """True when GET ``path`` answers HTTP ``code``; False when it answers otherwise or not."""
    try:
        got, _ = await daemon.get(path)
    except Exception:
        return False
    return got == code


def script_env(daemon: DaemonProcess, **extra: str) -> dict[str, str]:
    """The daemon's environment (the shell's daemon settings already dropped) for a script."""
    env = dict(daemon.env)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def cli_env(daemon: DaemonProcess) -> dict[str, str]:
    """The CLI's environment on the daemon's host: the health endpoint the daemon listens on,
    as KEYCAST_HEALTH in /etc/keycast/keycast.env would give it, so `keycast status` needs no
    option, as the runbook writes it."""
    return script_env(daemon, KEYCAST_HEALTH=f"tcp:{daemon.health_port}:interface=127.0.0.1")


async def prepared_daemon(
    fx: InteropFixture, relay_url: str, *, name: str = "daemon"
) -> tuple[DaemonProcess, str]:
    """A daemon with one key and one authorization on ``relay_url``, not yet started."""
    daemon = fx.daemon(relays=[relay_url], name=name)
    (await daemon.run_cli("init")).check()
    (await daemon.run_cli("key", "add", "alice")).check()
    uri = (await daemon.run_cli("authorize", "alice", "--relay", relay_url)).bunker_uri()
    return daemon, uri


async def live_daemon(fx: InteropFixture) -> tuple[RelayProcess, DaemonProcess, str]:
    """A relay and a ready daemon serving one authorization on it; returns its bunker URI."""
    relay = await fx.local_relay()
    daemon, uri = await prepared_daemon(fx, relay.url)
    daemon.start()
    await daemon.wait_ready()
    return relay, daemon, uri


class ScriptsAgainstLiveDaemonTests(TestCase):
    """healthcheck.sh, check-signer.sh, keycast status/check: the documented exit codes."""

    timeout = 120

    def setUp(self) -> None:
        self.fx = InteropFixture(self)

    async def scripts(self, daemon: DaemonProcess, *check_args: str) -> dict[str, Ran]:
        """Run the four probes against ``daemon``; keyed by a short name."""
        env = script_env(daemon)
        base = daemon.health_url
        return {
            "healthcheck": await run_command(
                self.fx, "healthcheck", [HEALTHCHECK, "signer"],
                env=dict(env, KEYCAST_HEALTH_URL=f"{base}/health"),
            ),
            "check-signer": await run_command(
                self.fx, "check-signer", [CHECK_SIGNER, "--url", base, *check_args], env=env
            ),
            "status": await run_command(
                self.fx, "keycast-status", [str(VENV_BIN / "keycast"), "status"],
                env=cli_env(daemon),
            ),
            "check": await run_command(
                self.fx, "keycast-check", [str(VENV_BIN / "keycast"), "check"],
                env=cli_env(daemon),
            ),
        }

    def assert_codes(self, ran: Mapping[str, Ran], **codes: int) -> None:
        """Each named probe (check_signer for check-signer) exited with the given code."""
        for name, code in codes.items():
            probe = name.replace("_", "-")
            self.assertEqual(ran[probe].code, code, ran[probe])

    async def test_healthy(self) -> None:
        """A ready daemon: healthcheck 0, check-signer 0 (1 WARNING below --min-relays),
        keycast status prints the counts and relay state, keycast check 0."""
        relay, daemon, _ = await live_daemon(self.fx)
        ran = await self.scripts(daemon, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=0, check_signer=0, check=0, status=0)
        self.assertIn("healthy:", ran["healthcheck"].stdout)
        self.assertIn("1/1 relays connected, 1 subscribed", ran["check-signer"].stdout)
        self.assertIn("OK: keycast signer healthy", ran["check-signer"].stdout)
        self.assertRegex(ran["status"].stdout, r"(?m)^authorizations: total=1, regular=1")
        self.assertIn(relay.url, ran["status"].stdout)
        self.assertIn("OK: keycast daemon", ran["check"].stdout)
        # The default --min-relays is 2: one relay is a WARNING (exit 1), not a failure.
        warned = await run_command(
            self.fx, "check-signer", [CHECK_SIGNER, "--url", daemon.health_url],
            env=script_env(daemon),
        )
        self.assertEqual(warned.code, 1, warned)
        self.assertIn("fewer than 2", warned.stdout)

    async def test_relay_down(self) -> None:
        """The only relay dies: still alive (healthcheck 0), not ready: check-signer 2
        CRITICAL, keycast check 1 NOT READY."""
        relay, daemon, _ = await live_daemon(self.fx)
        await relay.process.stop()
        await poll(lambda: answers(daemon, "/ready", 503), "/ready 503 after the relay died")
        ran = await self.scripts(daemon, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=0, check_signer=2, check=1, status=0)
        self.assertIn("CRITICAL: signer not ready (HTTP 503)", ran["check-signer"].stdout)
        self.assertIn("no relay subscription live", ran["check-signer"].stdout)
        self.assertIn("NOT READY: no relay subscription live", ran["check"].stdout)
        self.assertIn("ready: false", ran["status"].stdout)

    async def test_never_ready(self) -> None:
        """Started while its relay is unreachable: /health answers, /ready never does, so the
        same codes as a relay outage; once the relay comes up the daemon gets ready by itself."""
        port = free_port()
        url = f"ws://127.0.0.1:{port}"
        daemon, _ = await prepared_daemon(self.fx, url)
        daemon.start()
        await poll(lambda: answers(daemon, "/health", 200), "/health 200")
        await daemon.wait_for_log(r"Loaded 1 total authorizations")
        self.assertFalse(await answers(daemon, "/ready", 200))
        ran = await self.scripts(daemon, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=0, check_signer=2, check=1)
        relay = self.fx.spawn(
            "late-relay", [sys.executable, str(INTEROP_DIR / "local_relay.py"), str(port)]
        )
        await relay.wait_for_line(r"^LOCAL_RELAY_READY")
        await daemon.wait_ready(timeout=60)

    async def test_stopped(self) -> None:
        """After SIGTERM (exit 0, pidfile gone): healthcheck 1, check-signer 2 CRITICAL,
        keycast check 2 UNREACHABLE, keycast status 2."""
        _, daemon, _ = await live_daemon(self.fx)
        self.assertTrue(daemon.paths.pidfile.exists())
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0)
        self.assertFalse(daemon.paths.pidfile.exists())
        ran = await self.scripts(daemon, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=1, check_signer=2, check=2, status=2)
        self.assertIn("CRITICAL:", ran["check-signer"].stdout)
        self.assertIn("not responding", ran["check-signer"].stdout)
        self.assertIn("UNREACHABLE", ran["check"].stdout)


    async def probes_from_environment(
        self, env: Mapping[str, str], *check_args: str
    ) -> dict[str, Ran]:
        """healthcheck.sh, check-signer.sh and keycast check with no URL given: each finds the
        daemon from ``env`` (KEYCAST_HEALTH, PORT) alone."""
        return {
            "healthcheck": await run_command(
                self.fx, "healthcheck", [HEALTHCHECK, "signer"], env=env
            ),
            "check-signer": await run_command(
                self.fx, "check-signer", [CHECK_SIGNER, *check_args], env=env
            ),
            "check": await run_command(
                self.fx, "keycast-check", [str(VENV_BIN / "keycast"), "check"], env=env
            ),
        }

    async def test_keycast_health_tcp(self) -> None:
        """A daemon on a port other than 8080, named only by KEYCAST_HEALTH (the setting it
        listens on): both scripts probe it there, as keycast check does, whatever form the
        setting takes (an interface of 0.0.0.0 or none is probed on 127.0.0.1); KEYCAST_HEALTH
        wins over PORT, as in the daemon; PORT alone is used too; a URL wins over both."""
        _, daemon, _ = await live_daemon(self.fx)
        port = daemon.health_port
        closed = free_port()
        for endpoint in (f"tcp:{port}:interface=127.0.0.1", f"tcp:{port}",
                         f"tcp:{port}:interface=0.0.0.0"):
            env = script_env(daemon, KEYCAST_HEALTH=endpoint, PORT=str(closed))
            ran = await self.probes_from_environment(env, "--min-relays", "1")
            self.assert_codes(ran, healthcheck=0, check_signer=0, check=0)
            self.assertIn(f"healthy: http://127.0.0.1:{port}/health answered OK",
                          ran["healthcheck"].stdout)
            self.assertIn("OK: keycast signer healthy", ran["check-signer"].stdout)
        ran = await self.probes_from_environment(
            script_env(daemon, PORT=str(port)), "--min-relays", "1"
        )
        self.assert_codes(ran, healthcheck=0, check_signer=0, check=0)
        # The setting is really read: pointing it elsewhere makes both scripts fail there.
        wrong = script_env(daemon, KEYCAST_HEALTH=f"tcp:{closed}:interface=127.0.0.1")
        ran = await self.probes_from_environment(wrong, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=1, check_signer=2, check=2)
        self.assertIn(f"http://127.0.0.1:{closed}/health not responding",
                      ran["check-signer"].stdout)
        # An explicit URL beats KEYCAST_HEALTH.
        ran = await self.probes_from_environment(
            dict(wrong, KEYCAST_HEALTH_URL=f"{daemon.health_url}/health",
                 KEYCAST_URL=daemon.health_url),
            "--min-relays", "1",
        )
        self.assert_codes(ran, healthcheck=0, check_signer=0)

    async def test_keycast_health_unix(self) -> None:
        """A daemon listening on unix:PATH only: healthcheck.sh and check-signer.sh reach it
        with curl --unix-socket from KEYCAST_HEALTH, as keycast check does."""
        relay = await self.fx.local_relay()
        # AF_UNIX paths are short: not under _trial_temp.
        socket_dir = tempfile.mkdtemp(prefix="kc-health-")
        self.addCleanup(shutil.rmtree, socket_dir, ignore_errors=True)
        endpoint = f"unix:{socket_dir}/health.sock"
        daemon, _ = await prepared_daemon(self.fx, relay.url)
        # The last --health wins: the TCP one the harness gives is replaced.
        daemon.extra_args = ["--health", endpoint]
        daemon.start()
        env = script_env(daemon, KEYCAST_HEALTH=endpoint)

        async def ready() -> bool:
            if daemon.process is not None and daemon.process.ended:
                raise daemon.process.error("ended before it was ready")
            ran = await run_command(
                self.fx, "keycast-check", [str(VENV_BIN / "keycast"), "check"], env=env
            )
            return ran.code == 0

        await poll(ready, "keycast check on the UNIX socket", timeout=60)
        ran = await self.probes_from_environment(env, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=0, check_signer=0, check=0)
        self.assertIn(f"healthy: unix:{socket_dir}/health.sock /health answered OK",
                      ran["healthcheck"].stdout)
        self.assertIn("1/1 relays connected", ran["check-signer"].stdout)
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0)
        ran = await self.probes_from_environment(env, "--min-relays", "1")
        self.assert_codes(ran, healthcheck=1, check_signer=2, check=2)
        self.assertIn(f"CRITICAL: /health on {endpoint} not responding",
                      ran["check-signer"].stdout)

    async def test_max_idle_without_any_request(self) -> None:
        """No NIP-46 request since start-up: --max-idle N is the info line while the daemon
        has been up N s or less, and a WARNING (exit 1) once it has been up longer."""
        _, daemon, _ = await live_daemon(self.fx)
        check = [CHECK_SIGNER, "--url", daemon.health_url, "--min-relays", "1"]
        quiet = await run_command(
            self.fx, "check-signer", [*check, "--max-idle", "3600"], env=script_env(daemon)
        )
        self.assertEqual(quiet.code, 0, quiet)
        self.assertIn("info: no NIP-46 request since start-up", quiet.stdout)

        async def up_for_more_than_a_second() -> bool:
            status = await daemon.status()
            return status["last_request_at"] is None and status["uptime_seconds"] > 1.5

        await poll(up_for_more_than_a_second, "uptime_seconds > 1.5")
        idle = await run_command(
            self.fx, "check-signer", [*check, "--max-idle", "1"], env=script_env(daemon)
        )
        self.assertEqual(idle.code, 1, idle)
        self.assertRegex(
            idle.stdout,
            r"WARNING: no NIP-46 request since start-up \d+ s ago; idle for more than 1 s",
        )
        self.assertIn("WARNING: keycast signer degraded", idle.stdout)
        self.assertNotIn("info: no NIP-46 request", idle.stdout)


class BackupRestoreTests(TestCase):
    """backup-db.sh on the running daemon, restored into a fresh daemon that keeps serving."""

    timeout = 180

    async def test_backup_then_restore_serves_the_same_authorization(self) -> None:
        """A session bound before the backup is served by a fresh daemon on the restored copy:
        same bunker pubkey, same user key; a client that never connected is still refused."""
        require_tool("node-clients")
        fx = InteropFixture(self)
        relay, daemon, uri = await live_daemon(fx)
        client_secret = "11" * 32
        before = await fx.run_client(
            "node", uri, [{"op": "connect"}, {"op": "get_public_key"}], client_secret=client_secret
        )
        self.assertTrue(before.ok, before.report() + fx.report())
        user_pubkey = before.step("get_public_key")["result"]

        # The cron job, while the daemon runs: the real `keycast backup` through backup-db.sh.
        backups = fx.root / "backups"
        ran = await run_command(
            fx, "backup-db", [BACKUP_DB, str(backups)],
            env=script_env(daemon, KEYCAST_BIN=str(VENV_BIN / "keycast")),
        )
        self.assertEqual(ran.code, 0, ran)
        [backup] = list(backups.glob("keycast-*.db"))
        # One line, naming the final file: not keycast backup's temporary one.
        self.assertEqual(ran.stdout.strip(), f"backup written: {backup}")
        self.assertEqual(sorted(backups.iterdir()), [backup])
        self.assertEqual(os.stat(backup).st_mode & 0o777, 0o600)
        self.assertEqual(daemon.process.ended if daemon.process else True, False)
        integrity = await run_command(
            fx, "sqlite3", [shutil.which("sqlite3") or "sqlite3", str(backup),
                            "PRAGMA integrity_check;"], env=script_env(daemon),
        )
        self.assertEqual((integrity.code, integrity.stdout.strip()), (0, "ok"), integrity)

        # Restore, as the runbook does it, into a fresh daemon: new database path, the same
        # master key. The old daemon is stopped first (one signer per bunker key).
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0)
        fresh = fx.daemon(relays=[relay.url], name="restored")
        fresh.paths.database.parent.mkdir(parents=True)
        shutil.copy(daemon.paths.master_key, fresh.paths.master_key)
        os.chmod(fresh.paths.master_key, 0o600)
        database = shlex.quote(str(fresh.paths.database))
        restored = await run_command(
            fx, "restore", ["sh", "-c",
                            f"rm -f {database}-wal {database}-shm && "
                            f"cp {shlex.quote(str(backup))} {database}"],
            env=script_env(fresh),
        )
        self.assertEqual(restored.code, 0, restored)
        fresh.start()
        await fresh.wait_ready()
        status = await run_command(
            fx, "keycast-status", [str(VENV_BIN / "keycast"), "status"], env=cli_env(fresh)
        )
        self.assertRegex(status.stdout, r"(?m)^authorizations: total=1, regular=1", status)

        # The same client, without connecting again: its session came back with the copy.
        after = await fx.run_client(
            "node", uri, [{"op": "get_public_key"}, {"op": "ping"}], client_secret=client_secret
        )
        self.assertTrue(after.ok, after.report() + fx.report())
        self.assertEqual(after.start["bunker_pubkey"], before.start["bunker_pubkey"])
        self.assertEqual(after.step("get_public_key")["result"], user_pubkey)
        # A client the old daemon never bound is refused: the session really came from the copy.
        stranger = await fx.run_client(
            "node", uri, [{"op": "get_public_key"}], client_secret="22" * 32, timeout_ms=5000
        )
        self.assertFalse(stranger.ok, stranger.report())
        self.assertIn("not connected", stranger.step("get_public_key").get("error", ""))


    async def test_backups_in_the_same_second_keep_their_own_names(self) -> None:
        """Four runs that share one second (a stand-in date), two after each other and two at
        once, on the running daemon: keycast-STAMP.db, -2, -3, -4, each a sound copy named by
        the one line its run printed; none replaced, no temporary file left."""
        fx = InteropFixture(self)
        _, daemon, _ = await live_daemon(fx)
        bin_dir = fx.root / "fake-date"
        bin_dir.mkdir()
        (bin_dir / "date").write_text("#!/bin/sh\necho 20250101-020000\n")
        (bin_dir / "date").chmod(0o755)
        env = script_env(daemon, KEYCAST_BIN=str(VENV_BIN / "keycast"))
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        backups = fx.root / "backups"
        argv = [BACKUP_DB, str(backups)]
        ran = [await run_command(fx, "backup-db", argv, env=env) for _ in range(2)]
        together = [fx.spawn(f"backup-db-{i}", argv, env=env) for i in range(2)]
        for process in together:
            code = await process.wait_exit(timeout=SCRIPT_TIMEOUT)
            ran.append(Ran(argv, code, "\n".join(process.stdout_lines),
                           "\n".join(process.stderr_lines)))
        written = []
        for result in ran:
            self.assertEqual(result.code, 0, result)
            line = result.stdout.strip()
            self.assertRegex(line, r"^backup written: \S+$", result)
            written.append(Path(line.split(": ", 1)[1]))
        stem = backups / "keycast-20250101-020000"
        self.assertEqual(written[:2], [Path(f"{stem}.db"), Path(f"{stem}-2.db")])
        self.assertEqual(sorted(written[2:]), [Path(f"{stem}-3.db"), Path(f"{stem}-4.db")])
        self.assertEqual(sorted(backups.iterdir()), sorted(written))  # nothing else left
        for path in written:
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            integrity = await run_command(
                fx, "sqlite3", [shutil.which("sqlite3") or "sqlite3", str(path),
                                "PRAGMA integrity_check;"], env=script_env(daemon),
            )
            self.assertEqual((integrity.code, integrity.stdout.strip()), (0, "ok"), integrity)


class _NotifyListener(DatagramProtocol):
    """Collects sd_notify datagrams, as systemd's NOTIFY_SOCKET would receive them."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        fields = dict(
            line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line
        )
        self.messages.append(fields)


def rewrite(value: str, moves: Mapping[str, str]) -> str:
    """``value`` with each path prefix in ``moves`` replaced (longest prefix first)."""
    for old in sorted(moves, key=len, reverse=True):
        value = value.replace(old, moves[old])
    return value


class CommandLineTests(TestCase):
    """The deployments' daemon command lines, parsed from their files and run here."""

    timeout = 120

    def setUp(self) -> None:
        self.fx = InteropFixture(self)

    async def start_as_deployed(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path,
        relay: RelayProcess,
        health_port: int,
    ) -> DaemonProcess:
        """Create the database and key with `keycast init` in that environment (the documented
        first step), start ``argv`` and wait until /health and /ready answer 200.

        Returns a DaemonProcess whose process is the one started, for its HTTP helpers.
        """
        env = dict(env)
        init = await run_command(
            self.fx, f"{name}-init", [str(VENV_BIN / "keycast"), "init"], env=env, cwd=cwd
        )
        self.assertEqual(init.code, 0, init)
        handle = self.fx.daemon(relays=[relay.url], name=f"{name}-handle")
        handle.health_port = health_port
        process = handle.process = self.fx.spawn(name, argv, env=env, cwd=cwd)

        async def alive() -> bool:
            if process.ended:
                raise process.error(f"ended ({process.describe_exit()}) before /health")
            return await answers(handle, "/health", 200)

        await poll(alive, f"{name}: /health 200")
        await handle.wait_ready()
        return handle

    def deployed_env(
        self, settings: Mapping[str, str], moves: Mapping[str, str], relay: RelayProcess
    ) -> tuple[dict[str, str], int]:
        """The deployment's own settings, paths moved, plus loopback relay and health port.

        PORT (all interfaces in the daemon) stays set, moved to the test port, for the scripts
        that read it; KEYCAST_HEALTH, which the daemon prefers, keeps the listener on 127.0.0.1.
        """
        port = free_port()
        env = {
            k: v for k, v in self.fx.base_env().items()
            if not (k.startswith(("KEYCAST_", "GCP_")) or k in (
                "DATABASE_PATH", "MASTER_KEY_PATH", "PORT", "USE_GCP_KMS", "NOTIFY_SOCKET",
                "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"))
        }
        env.update({k: rewrite(v, moves) for k, v in settings.items()})
        if "PORT" in env:
            env["PORT"] = str(port)
        env["KEYCAST_HEALTH"] = f"tcp:{port}:interface=127.0.0.1"
        env["KEYCAST_RELAYS"] = relay.url
        # twistd finds the keycast plugin and --logger=keycast_tw.logs.observer in the tree.
        env["PYTHONPATH"] = str(ROOT)
        return env, port

    async def stop_cleanly(self, handle: DaemonProcess, pidfile: Path | None = None) -> None:
        """SIGTERM: exit status 0, and the pidfile (if any) removed."""
        if pidfile is not None:
            self.assertTrue(pidfile.exists(), pidfile)
        handle.sigterm()
        self.assertEqual(await handle.wait_exit(), 0, self.fx.report())
        if pidfile is not None:
            self.assertFalse(pidfile.exists(), pidfile)

    async def test_dockerfile_cmd(self) -> None:
        """The image's CMD with the image's ENV (/data and /keys moved) starts the daemon; the
        image's HEALTHCHECK command passes; SIGTERM exits 0."""
        relay = await self.fx.local_relay()
        runtime = dockerfile_stages((ROOT / "Dockerfile").read_text())["runtime"]
        image_env = dockerfile_env(runtime)
        [workdir] = [args for instruction, args in runtime if instruction == "WORKDIR"]
        root = self.fx.root / "image"
        moves = {"/data": str(root / "data"), "/keys": str(root / "keys"),
                 "/opt/keycast/venv/bin": str(VENV_BIN)}
        for directory in ("/data", "/keys"):
            Path(moves[directory]).mkdir(parents=True, mode=0o700)
        image_env["PATH"] = image_env["PATH"].replace("$PATH", os.environ.get("PATH", ""))
        env, port = self.deployed_env(image_env, moves, relay)
        self.assertEqual(env["DATABASE_PATH"], str(root / "data" / "keycast.db"))
        cmd = dockerfile_cmd()
        handle = await self.start_as_deployed(
            "image", cmd, env, cwd=Path(rewrite(workdir, moves)), relay=relay, health_port=port
        )
        [check] = [args for instruction, args in runtime if instruction == "HEALTHCHECK"]
        probe = re.search(r'CMD (\[.*\])', check)
        assert probe is not None
        healthcheck = [rewrite(a, {"/usr/local/bin": str(DEPLOY)}) for a in yaml.safe_load(
            probe.group(1))]
        ran = await run_command(self.fx, "image-healthcheck", healthcheck, env=env)
        self.assertEqual(ran.code, 0, ran)
        await self.stop_cleanly(handle)

    async def test_systemd_exec_start(self) -> None:
        """ExecStart with the unit's Environment= (paths under /opt/keycast and /run/keycast
        moved): READY=1 reaches NOTIFY_SOCKET after the load, the pidfile is written, SIGTERM
        sends STOPPING=1, exits 0 and removes the pidfile."""
        relay = await self.fx.local_relay()
        unit = read_unit((DEPLOY / "keycast-signer.service").read_text())
        [exec_start] = unit_values(unit, "Service", "ExecStart")
        [workdir] = unit_values(unit, "Service", "WorkingDirectory")
        root = self.fx.root / "systemd"
        moves = {"/opt/keycast/venv/bin": str(VENV_BIN), "/opt/keycast": str(root / "opt"),
                 "/run/keycast": str(root / "run")}
        (root / "opt" / "database").mkdir(parents=True, mode=0o700)
        (root / "run").mkdir(mode=0o750)  # RuntimeDirectory=keycast
        env, port = self.deployed_env(unit_environment(unit), moves, relay)
        # systemd's notification socket; AF_UNIX paths are short, so not in _trial_temp.
        socket_dir = tempfile.mkdtemp(prefix="kc-notify-")
        self.addCleanup(shutil.rmtree, socket_dir, ignore_errors=True)
        listener = _NotifyListener()
        unix_reactor: Any = global_reactor
        port_object = unix_reactor.listenUNIXDatagram(os.path.join(socket_dir, "notify"), listener)
        self.addCleanup(port_object.stopListening)
        env["NOTIFY_SOCKET"] = os.path.join(socket_dir, "notify")
        argv = [rewrite(a, moves) for a in shlex.split(exec_start)]
        pidfile = Path(rewrite("/run/keycast/keycast.pid", moves))
        self.assertIn(f"--pidfile={pidfile}", argv)
        handle = await self.start_as_deployed(
            "systemd", argv, env, cwd=Path(rewrite(workdir, moves)), relay=relay,
            health_port=port,
        )
        await poll(self.ready_sent(listener), "READY=1 on NOTIFY_SOCKET")
        log = handle.log_lines
        loaded = next(i for i, line in enumerate(log) if "total authorizations" in line)
        ready_logged = next(i for i, line in enumerate(log) if "signer daemon ready" in line)
        self.assertLess(loaded, ready_logged)
        self.assertTrue(Path(rewrite(env["KEYCAST_RELOAD_SIGNAL"], moves)).parent.is_dir())
        await self.stop_cleanly(handle, pidfile)
        self.assertTrue(any(m.get("STOPPING") == "1" for m in listener.messages))

    @staticmethod
    def ready_sent(listener: _NotifyListener) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return any(m.get("READY") == "1" for m in listener.messages)
        return check

    async def test_supervisor_command(self) -> None:
        """supervisor's command= with its environment= (paths moved) starts the daemon, which
        writes the pidfile beside the database and removes it on SIGTERM, exiting 0."""
        relay = await self.fx.local_relay()
        import configparser

        parser = configparser.RawConfigParser()
        parser.read_string((DEPLOY / "supervisor-signer.conf").read_text())
        program = parser["program:keycast-signer"]
        settings = {
            name: value
            for name, value in re.findall(r'(\w+)="([^"]*)"', program["environment"])
        }
        root = self.fx.root / "supervisor"
        moves = {"/opt/keycast/venv/bin": str(VENV_BIN), "/opt/keycast": str(root / "opt")}
        (root / "opt" / "database").mkdir(parents=True, mode=0o700)
        env, port = self.deployed_env(settings, moves, relay)
        argv = [rewrite(a, moves) for a in shlex.split(program["command"])]
        pidfile = root / "opt" / "database" / ".signer.pid"
        self.assertIn(f"--pidfile={pidfile}", argv)
        handle = await self.start_as_deployed(
            "supervisor", argv, env, cwd=Path(rewrite(program["directory"], moves)),
            relay=relay, health_port=port,
        )
        await self.stop_cleanly(handle, pidfile)

    async def test_cloud_run_wrapper(self) -> None:
        """run-with-litestream.sh with service.yaml's args and rendered env: its final exec
        (`litestream replicate -exec CMD`; the stand-in litestream execs CMD where the real one
        would run it as a child) starts the daemon, which logs JSON and exits 0 on SIGTERM."""
        relay = await self.fx.local_relay()
        service = yaml.safe_load((DEPLOY / "cloudrun" / "service.yaml").read_text())
        [container] = service["spec"]["template"]["spec"]["containers"]
        # KMS settings come from Secret Manager; the file master key stands in for KMS here.
        # Rendered as cloudbuild.yaml's render step does, with its default substitutions.
        build = yaml.safe_load((DEPLOY / "cloudrun" / "cloudbuild.yaml").read_text())
        substitutions = build["substitutions"]
        settings = {
            item["name"]: re.sub(
                r"@(\w+)@", lambda m: substitutions["_" + m.group(1)], item["value"]
            )
            for item in container["env"]
            if "value" in item and not item["name"].startswith(("USE_GCP_KMS", "GCP_"))
        }
        root = self.fx.root / "cloudrun"
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True)
        fake = bin_dir / "litestream"
        fake.write_text(
            f"#!{sys.executable}\n"
            "# restore: nothing to restore; replicate -exec: become the command, as the\n"
            "# daemon's signals then reach it directly.\n"
            "import os, shlex, sys\n"
            "if sys.argv[1] == 'replicate':\n"
            "    command = shlex.split(sys.argv[sys.argv.index('-exec') + 1])\n"
            "    os.execvp(command[0], command)\n"
        )
        fake.chmod(0o755)
        moves = {"/data": str(root / "data")}
        env, port = self.deployed_env(settings, moves, relay)
        env["PATH"] = f"{bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["MASTER_KEY_PATH"] = str(root / "master.key")
        env["LITESTREAM_CONFIG"] = str(DEPLOY / "litestream.yml")
        argv = [WRAPPER, *container["args"]]
        (root / "data").mkdir(mode=0o700)
        handle = await self.start_as_deployed(
            "cloudrun", argv, env, cwd=root, relay=relay, health_port=port
        )
        self.assertTrue(any('"severity"' in line for line in handle.log_lines))
        await self.stop_cleanly(handle)


def runbook_greps(text: str) -> list[str]:
    """The patterns the runbook pipes log output through: `... | grep [-E] "PATTERN"`."""
    return [pattern for _, pattern in re.findall(r'\|\s*grep (-E )?"([^"]+)"', text)]


def runbook_startup_lines(text: str) -> list[str]:
    """The start-up lines the runbook shows ("The log shows ..."), as regular expressions:
    counts (X, Y, Z, digits) match any number."""
    block = re.search(r"The log shows.*?```\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/operations.md lost its start-up log block"
    patterns = []
    for line in block.group(1).strip().splitlines():
        pattern = re.escape(line.strip())
        pattern = re.sub(r"\b(X|Y|Z|N|F|\d+)\b", r"\\d+", pattern)
        patterns.append(pattern)
    return patterns


class RunbookLogLineTests(TestCase):
    """The log lines docs/operations.md greps for are what the daemon really logs."""

    timeout = 120

    async def test_runbook_lines_in_live_output(self) -> None:
        """Every runbook line (the issue's list, each named in docs/operations.md), every
        `| grep` pattern and every start-up line the runbook shows appears in the output of a
        daemon that starts and serves one client request."""
        require_tool("node-clients")
        text = OPERATIONS.read_text()
        for line in RUNBOOK_LINES:
            self.assertIn(re.split(r" [XN] ", line)[0], text, line)
        greps = runbook_greps(text)
        startup = runbook_startup_lines(text)
        self.assertGreaterEqual(len(greps), 5, greps)
        fx = InteropFixture(self)
        _, daemon, uri = await live_daemon(fx)
        run = await fx.run_client("node", uri, [{"op": "connect"}, {"op": "ping"}])
        self.assertTrue(run.ok, run.report())
        await daemon.wait_for_log(r"Sent NIP-46 response")
        output = "\n".join(daemon.log_lines)
        for line, pattern in RUNBOOK_LINES.items():
            self.assertRegex(output, pattern, f"runbook line {line!r} not in the daemon's log")
        for pattern in greps + startup:
            self.assertRegex(output, pattern, f"the runbook's {pattern!r} finds nothing")
