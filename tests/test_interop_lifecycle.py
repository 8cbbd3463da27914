# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The daemon as a process: signals, pidfiles, the instance lock, fatal start-up errors,
readiness, and what it never prints.

These run ``twistd -n keycast`` for real, as an operator or a supervisor would, and look only
at what an operator sees: the exit status, the output, the pidfile, the HTTP endpoints.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import deferLater

from tests.interop_harness import DaemonProcess, HarnessError, free_port
from tests.test_interop_daemon import NOTE, DaemonCase, main_flow

#: The one line a fatal start-up error prints (keycast_tw.process.fatal), and what must not.
FATAL_LINE = re.compile(r"\bkeycast: ")
TRACEBACK = "Traceback (most recent call last)"


async def wait_until(daemon: DaemonProcess, check: Any, what: str, timeout: float = 10) -> None:
    """Poll a plain condition (a file appearing or going) with a bound."""
    reactor = daemon.fixture.reactor
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() >= deadline:
            raise HarnessError(
                f"{what} did not happen within {timeout} s\n{daemon.fixture.report()}"
            )
        await deferLater(reactor, 0.05, lambda: None)


def delete_behind_the_daemons_back(daemon: DaemonProcess, authorization_id: int) -> None:
    """Delete a row without bumping the change counter: only a full reload can notice it."""
    with sqlite3.connect(daemon.paths.database, timeout=10) as db:
        db.execute("DELETE FROM authorizations WHERE id = ?", (authorization_id,))


def dead_pid() -> int:
    """The PID of a child that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


#: Debug logging, and a created_at window short enough that a request the relay still
#: delivers can be stale.
DEBUG_ARGS = ("--log-level", "debug", "--created-at-window", "60")


class SignalTests(DaemonCase):
    """SIGTERM stops cleanly; SIGHUP and the reload signal file reload from the database."""

    async def test_sigterm_exits_zero_and_removes_the_pidfile(self) -> None:
        """SIGTERM: exit status 0, the pidfile (holding the daemon's PID) is gone."""
        relay = await self.fx.local_relay()
        daemon, _ = await self.start(relay)
        assert daemon.process is not None
        self.assertEqual(daemon.paths.pidfile.read_text().strip(), str(daemon.process.pid))
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0, self.fx.report())
        self.assertFalse(daemon.paths.pidfile.exists())
        self.assertNotIn(TRACEBACK, "\n".join(daemon.log_lines))

    async def reload_by(self, trigger: str) -> DaemonProcess:
        """Delete an authorization the incremental reload cannot see, then trigger a reload."""
        relay = await self.fx.local_relay()
        daemon, _ = await self.start(relay, count=2)
        delete_behind_the_daemons_back(daemon, 2)
        # One incremental reload tick later the daemon still serves both: only a full
        # reload (what the triggers ask for) re-reads every row.
        before = (await daemon.status())["last_reload"]["at"]
        status = await daemon.wait_status(
            lambda s: s["last_reload"]["at"] > before, "an incremental reload after the delete"
        )
        self.assertEqual(status["authorizations"]["total"], 2, status)
        assert daemon.process is not None
        mark = daemon.process.mark()
        if trigger == "sighup":
            daemon.sighup()
        else:
            signal_file = daemon.paths.database.parent / ".reload_signal"
            signal_file.write_text("")
        await daemon.wait_for_log(r"Loaded 1 total authorizations", after=mark)
        await daemon.wait_serving(1, after=mark)
        return daemon

    async def test_sighup_reloads(self) -> None:
        """SIGHUP re-reads every authorization: a row deleted behind its back is dropped."""
        daemon = await self.reload_by("sighup")
        code, _ = await daemon.get("/ready")
        self.assertEqual(code, 200)

    async def test_reload_signal_file_reloads_and_is_removed(self) -> None:
        """A .reload_signal file beside the database triggers a full reload, then is removed."""
        daemon = await self.reload_by("file")
        signal_file = daemon.paths.database.parent / ".reload_signal"
        await wait_until(daemon, lambda: not signal_file.exists(), "removal of .reload_signal")


class StartupTests(DaemonCase):
    """What may and what must not stop the daemon from starting."""

    async def start_over_pidfile(self, content: str) -> None:
        relay = await self.fx.local_relay()
        daemon = self.fx.daemon(relays=[relay.url])
        await daemon.provision()
        daemon.paths.pidfile.write_text(content)
        process = daemon.start()
        await daemon.wait_ready()
        await daemon.wait_for_log(r"Removed stale pidfile")
        self.assertEqual(daemon.paths.pidfile.read_text().strip(), str(process.pid))

    async def test_stale_pidfile_with_a_dead_pid(self) -> None:
        """A pidfile left by a process that is gone does not block the start."""
        await self.start_over_pidfile(f"{dead_pid()}\n")

    async def test_stale_pidfile_with_garbage(self) -> None:
        """A pidfile holding no number does not block the start."""
        await self.start_over_pidfile("not a pid\n")

    async def check_refused(self, daemon: DaemonProcess, cause: str) -> list[str]:
        """The daemon exits non-zero, printing one line that names ``cause``, no traceback."""
        daemon.start()
        code = await daemon.wait_exit()
        output = daemon.log_lines
        self.assertNotIn(code, (0, None), self.fx.report())
        fatal = [line for line in output if FATAL_LINE.search(line)]
        self.assertEqual(len(fatal), 1, "\n".join(output))
        self.assertRegex(fatal[0], cause)
        self.assertNotIn(TRACEBACK, "\n".join(output))
        return output

    async def test_second_daemon_on_the_same_database_is_refused(self) -> None:
        """A second daemon (own or shared pidfile) exits non-zero; the first keeps serving."""
        relay = await self.fx.local_relay()
        first, (uri,) = await self.start(relay)
        assert first.process is not None
        other_pidfile = dataclasses.replace(first.paths, pidfile=first.paths.root / "second.pid")
        second = DaemonProcess(self.fx, other_pidfile, relays=[relay.url], health_port=free_port())
        await self.check_refused(
            second, rf"another keycast daemon is already running .*pid {first.process.pid}"
        )
        self.assertFalse(other_pidfile.pidfile.exists())
        # Same pidfile: refused in one line before twistd's own check (whose advice, another
        # directory or --pidfile, would only lead to the database lock's refusal).
        same = DaemonProcess(self.fx, first.paths, relays=[relay.url], health_port=free_port())
        same.start()
        self.assertNotIn(await same.wait_exit(), (0, None), self.fx.report())
        self.assertIn(
            f"belongs to running process {first.process.pid}", "\n".join(same.log_lines)
        )
        self.assertEqual(first.paths.pidfile.read_text().strip(), str(first.process.pid))
        run = await self.fx.run_client("node", uri, [{"op": "connect"}, {"op": "ping"}])
        self.assertTrue(run.ok, run.report())

    async def provisioned(self) -> DaemonProcess:
        """A daemon with its files in place, pointed at a relay port nobody listens on."""
        daemon = self.fx.daemon(relays=[f"ws://127.0.0.1:{free_port()}"])
        await daemon.provision()
        return daemon

    async def test_missing_master_key(self) -> None:
        """Without its master key the daemon says so in one line and exits non-zero."""
        daemon = await self.provisioned()
        daemon.paths.master_key.unlink()
        await self.check_refused(daemon, r"master key file .* does not exist")
        self.assertFalse(daemon.paths.pidfile.exists())

    async def test_missing_database_directory(self) -> None:
        """A database path in a directory that does not exist is one clear line, and no lock
        file (or anything else) is left behind there."""
        daemon = await self.provisioned()
        missing = daemon.paths.root / "nowhere"
        elsewhere = dataclasses.replace(daemon.paths, database=missing / "keycast.db")
        stray = DaemonProcess(self.fx, elsewhere, relays=daemon.relays, health_port=free_port())
        await self.check_refused(stray, r"database directory .*nowhere does not exist")
        self.assertFalse(missing.exists())

    async def test_missing_database_leaves_no_lock_file(self) -> None:
        """A database that does not exist is the store's one line, with no lock file made."""
        daemon = await self.provisioned()
        for path in daemon.paths.database.parent.iterdir():
            path.unlink()
        await self.check_refused(daemon, r"database .* does not exist; run `keycast init`")
        self.assertEqual(list(daemon.paths.database.parent.iterdir()), [])

    async def test_corrupt_database(self) -> None:
        """A database file that is not SQLite is one clear line and a non-zero exit."""
        daemon = await self.provisioned()
        for extra in Path(f"{daemon.paths.database}-wal"), Path(f"{daemon.paths.database}-shm"):
            extra.unlink(missing_ok=True)
        daemon.paths.database.write_bytes(b"this is not an SQLite database\n" * 200)
        await self.check_refused(daemon, r"database .* is corrupt or not an SQLite database")

    async def test_health_port_already_taken(self) -> None:
        """A health port held by another program is one clear line and a non-zero exit."""
        daemon = await self.provisioned()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", daemon.health_port))
        holder.listen()
        await self.check_refused(daemon, rf"health endpoint .*{daemon.health_port}.* cannot listen")


class ReadinessTests(DaemonCase):
    """/ready reflects the relay subscription; /metrics and /health are always served."""

    async def test_ready_only_once_a_relay_is_subscribed(self) -> None:
        """/ready is 503 with a reason while the relay is down, 200 once it is up."""
        port = free_port()
        daemon = self.fx.daemon(relays=[f"ws://127.0.0.1:{port}"])
        await daemon.provision()
        daemon.start()
        await daemon.wait_for_log(r"Loaded 1 total authorizations")
        await daemon.wait_for_log(r"Health endpoint listening")
        code, body = await daemon.get("/ready")
        self.assertEqual(code, 503, body)
        self.assertIn("relay", json.dumps(json.loads(body)).lower())
        code, _ = await daemon.get("/health")
        self.assertEqual(code, 200)
        status = await daemon.status()
        self.assertEqual((status["ready"], status["relays_connected"]), (False, 0), status)
        await self.fx.local_relay(port=port)
        ready = await daemon.wait_ready(timeout=30)
        self.assertTrue(ready.get("ready", True), ready)
        status = await daemon.status()
        self.assertEqual((status["ready"], status["relays_subscribed"]), (True, 1), status)


class SecretTests(DaemonCase):
    """Nothing secret reaches the output, even at debug level, or the HTTP endpoints."""

    async def test_no_secret_in_output_or_endpoints(self) -> None:
        """A whole debug session leaks no secret, key, plaintext or request content."""
        from nostr_sdk import EventBuilder, Keys, Kind, SecretKey, Tag, Timestamp

        relay = await self.fx.local_relay()
        daemon, uris = await self.start(relay, count=2, extra_args=DEBUG_ARGS)
        node_flow, sdk_flow = main_flow("node"), main_flow("sdk")
        runs = [
            await self.fx.run_client("node", uris[0], node_flow),
            await self.fx.run_client("sdk", uris[1], sdk_flow, keep_going=True),
            # Error paths log too: a reused secret, and requests before connect.
            await self.fx.run_client("node", uris[0], [{"op": "connect"}]),
            await self.fx.run_client("node", uris[1], [{"op": "sign_event", "event": NOTE}]),
        ]
        self.assertTrue(runs[0].ok, runs[0].report())
        self.assertFalse(runs[2].ok, runs[2].report())
        self.assertFalse(runs[3].ok, runs[3].report())
        # A stale request makes the engine log at debug level, proving debug is on. It must be
        # younger than the subscription's `since` (now - 300 s) for the relay to deliver it.
        bunker = uris[0][len("bunker://") :].split("?")[0]
        stale = EventBuilder(Kind(24133), "stale").tags([Tag.parse(["p", bunker])])
        stale = stale.custom_created_at(Timestamp.from_secs(int(time.time()) - 150))
        probe = await self.fx.probe(relay.url)
        ok = await probe.publish(json.loads(stale.finalize(Keys.generate()).as_json()))
        self.assertTrue(ok[2], ok)
        await daemon.wait_for_log(r"#debug\].*stale created_at")

        endpoints = [(await daemon.get(path))[1] for path in ("/status", "/metrics", "/ready")]
        daemon.sigterm()
        self.assertEqual(await daemon.wait_exit(), 0, self.fx.report())
        output = "\n".join(daemon.log_lines)
        haystacks = {
            "daemon output": output,
            **dict(zip(("/status", "/metrics", "/ready"), endpoints, strict=True)),
        }

        self.assertIn("Processing NIP-46 method: nip04_decrypt", output)  # it did the work
        forbidden = [
            ("user nsec", self.nsec),
            ("user private key (hex)", SecretKey.parse(self.nsec).to_hex()),
            ("master key file", daemon.paths.master_key.read_text().strip()),
        ]
        forbidden += [
            ("connect secret", parse_qs(urlsplit(uri).query)["secret"][0]) for uri in uris
        ]
        for step in [*node_flow, *sdk_flow, {"op": "sign_event", "event": NOTE}]:
            if "plaintext" in step:
                forbidden.append((f"{step['op']} plaintext", step["plaintext"]))
            if step["op"] == "sign_event":
                # Public once published, but the daemon only sees it inside an encrypted
                # request and returns it encrypted: it has no reason to log or show it.
                forbidden.append(("content to sign", step["event"]["content"]))
        for where, text in haystacks.items():
            for what, value in forbidden:
                self.assertNotIn(value.lower(), text.lower(), f"{what} {value!r} found in {where}")
