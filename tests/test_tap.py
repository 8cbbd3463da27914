# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""keycast_tw.tap: twistd options -> KeycastConfig, one-line errors, the twistd-side hooks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.logger import LogLevel
from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]
from twisted.trial.unittest import SynchronousTestCase, TestCase

from keycast_tw import logs
from keycast_tw.tap import Options
from tests.interop_harness import REPO, InteropFixture, require_tool


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ=environ or {})
    options.parseOptions(argv)
    return options


def keep_log_selection(case: SynchronousTestCase) -> None:
    """install_for_twistd records its choice on a class; put it back after the test."""
    selection = logs._TwistdSelection
    saved = (selection.format, selection.level, selection.logfile)

    def restore() -> None:
        selection.format, selection.level, selection.logfile = saved

    case.addCleanup(restore)


class OptionsTests(SynchronousTestCase):
    def test_options_build_config(self) -> None:
        """Command-line options become the matching KeycastConfig fields."""
        options = parse(
            [
                "--database", "/data/k.db",
                "--master-key", "/keys/m.key",
                "--health", "tcp:9000:interface=127.0.0.1",
                "--log-format", "json",
                "--log-level", "warn",
                "--shard", "1/3",
                "--max-inflight", "7",
            ]
        )  # fmt: skip
        config = options.config
        assert config is not None
        self.assertEqual(config.database_path, "/data/k.db")
        self.assertEqual(config.master_key_path, "/keys/m.key")
        self.assertEqual(config.health_endpoint, "tcp:9000:interface=127.0.0.1")
        self.assertEqual((config.log_format, config.log_level), ("json", LogLevel.warn))
        self.assertEqual((config.shard_index, config.shard_count), (1, 3))
        self.assertEqual(config.max_inflight, 7)
        self.assertEqual(config.reload_signal_path, "/data/.reload_signal")

    def test_relay_repeatable(self) -> None:
        """--relay may be given several times; every URL is kept, in order."""
        options = parse(["--relay", "ws://127.0.0.1:1", "--relay", "wss://relay.example"])
        assert options.config is not None
        self.assertEqual(options.config.relays, ("ws://127.0.0.1:1", "wss://relay.example"))

    def test_environment_fallbacks(self) -> None:
        """Without options the environment names of DESIGN §4 (and the Rust original) apply."""
        options = parse(
            [],
            {
                "DATABASE_PATH": "/env/db.sqlite",
                "MASTER_KEY_PATH": "/env/master.key",
                "KEYCAST_RELAYS": "ws://127.0.0.1:1, ws://127.0.0.1:2",
                "PORT": "8081",
                "KEYCAST_LOG_FORMAT": "json",
                "KEYCAST_SHARD": "2/4",
            },
        )
        config = options.config
        assert config is not None
        self.assertEqual(config.database_path, "/env/db.sqlite")
        self.assertEqual(config.master_key_path, "/env/master.key")
        self.assertEqual(config.relays, ("ws://127.0.0.1:1", "ws://127.0.0.1:2"))
        self.assertEqual(config.health_endpoint, "tcp:8081")
        self.assertEqual(config.log_format, "json")
        self.assertEqual((config.shard_index, config.shard_count), (2, 4))

    def test_option_beats_environment(self) -> None:
        """A command-line --relay replaces KEYCAST_RELAYS instead of adding to it."""
        options = parse(["--relay", "ws://127.0.0.1:3"], {"KEYCAST_RELAYS": "ws://127.0.0.1:1"})
        assert options.config is not None
        self.assertEqual(options.config.relays, ("ws://127.0.0.1:3",))

    def test_defaults(self) -> None:
        """With nothing given the documented defaults are used."""
        config = parse([]).config
        assert config is not None
        self.assertEqual(config.database_path, "database/keycast.db")
        self.assertEqual(config.health_endpoint, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(
            config.relays, ("wss://relay.damus.io", "wss://nos.lol", "wss://relay.nsec.app")
        )

    def test_bad_option_is_one_line(self) -> None:
        """An invalid value exits with one line naming the option, not a usage dump."""
        with self.assertRaises(SystemExit) as caught:
            parse(["--log-format", "xml"])
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("keycast: --log-format"), message)
        self.assertIn("KEYCAST_LOG_FORMAT", message)
        self.assertNotIn("\n", message)
        self.assertNotIn("Usage", message)

    def test_bad_environment_is_one_line(self) -> None:
        """An invalid environment value is reported under its variable name."""
        with self.assertRaises(SystemExit) as caught:
            parse([], {"KEYCAST_RELAYS": "http://127.0.0.1:1"})
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("keycast: "), message)
        self.assertIn("KEYCAST_RELAYS", message)
        self.assertNotIn("\n", message)

    def test_no_parent_touches_nothing(self) -> None:
        """Parsed on its own (the CLI, tests) postOptions neither logs nor removes files."""
        keep_log_selection(self)
        logs._TwistdSelection.format = None
        parse(["--log-format", "json"])
        self.assertIsNone(logs._TwistdSelection.format)


class TwistdParentTests(SynchronousTestCase):
    """postOptions under twistd's real ServerOptions (the plugin found through twisted.plugins)."""

    def setUp(self) -> None:
        keep_log_selection(self)
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.pidfile = self.directory / "twistd.pid"

    def server_options(self, *argv: str) -> ServerOptions:
        options = ServerOptions()
        options.parseOptions(
            ["-n", "--pidfile", str(self.pidfile), *argv, "keycast", "--relay", "ws://127.0.0.1:1"]
        )
        return options

    def test_stale_pidfile_with_own_pid_removed(self) -> None:
        """A pidfile holding our own PID (PID 1 in a container) is removed before twistd checks."""
        self.pidfile.write_text(f"{os.getpid()}\n")
        self.server_options()
        self.assertFalse(self.pidfile.exists())

    def test_garbage_pidfile_removed(self) -> None:
        """A pidfile that holds no PID at all is removed too."""
        self.pidfile.write_text("not a pid")
        self.server_options()
        self.assertFalse(self.pidfile.exists())

    def test_live_pidfile_refused_in_one_line(self) -> None:
        """A pidfile naming a live daemon-like process stops the start with our one line
        (twistd's own refusal would advise another directory or pidfile)."""
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()", "keycast"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.addCleanup(holder.wait, 10)
        self.addCleanup(holder.stdout.close)  # type: ignore[union-attr]
        self.addCleanup(holder.stdin.close)  # type: ignore[union-attr]
        holder.stdout.readline()  # type: ignore[union-attr]  # running, past exec
        self.pidfile.write_text(f"{holder.pid}\n")
        with self.assertRaises(SystemExit) as raised:
            self.server_options()
        self.assertEqual(
            str(raised.exception),
            f"keycast: pidfile {self.pidfile} belongs to running process {holder.pid}, probably"
            " another keycast daemon; stop it first",
        )
        self.assertTrue(self.pidfile.exists())

    def test_selects_log_observer(self) -> None:
        """Our observer becomes twistd's logger, with the format and level asked for."""
        options = self.server_options()
        self.assertIs(options["logger"], logs.observer)
        self.assertEqual(logs._TwistdSelection.format, "text")
        self.assertEqual(logs._TwistdSelection.level, LogLevel.info)

    def test_explicit_logger_wins(self) -> None:
        """An operator's own --logger is left alone."""
        options = self.server_options("--logger", "twisted.logger.textFileLogObserver")
        self.assertIsNot(options["logger"], logs.observer)

    def test_make_service_builds_tree(self) -> None:
        """makeService returns the keycast service tree without starting anything."""
        from keycast_tw.tap import makeService

        options = self.server_options()
        service = makeService(options.subOptions)
        self.assertEqual(service.name, "keycast")
        self.assertFalse(service.running)
        names = {child.name for child in service}  # type: ignore[attr-defined]
        # The relay pool joins the tree only once the store has loaded (see service.py).
        self.assertLessEqual({"store", "web", "reload-signal"}, names)
        self.assertEqual(service.relays.name, "relays")  # type: ignore[attr-defined]


class TwistdHelpTests(TestCase):
    """The real twistd command line (a subprocess): the plugin is listed and documented."""

    async def run_twistd(self, *argv: str) -> tuple[int | None, str, str]:
        """Run twistd to its end in a temp dir; (exit code, stdout, stderr)."""
        require_tool("keycast-daemon")
        fx = InteropFixture(self)
        env = fx.base_env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        twistd = str(Path(sys.executable).parent / "twistd")
        process = fx.spawn("twistd", [twistd, *argv], env=env, cwd=fx.root)
        code = await process.wait_exit(timeout=30)
        return code, "\n".join(process.stdout_lines), "\n".join(process.stderr_lines)

    async def test_twistd_help_lists_keycast(self) -> None:
        """`twistd --help` lists the keycast command and its description."""
        code, out, _ = await self.run_twistd("--help")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"keycast\s+NIP-46 remote signer")

    async def test_keycast_help_lists_options_and_env(self) -> None:
        """`twistd -n keycast --help` shows every option with its environment variable."""
        code, out, _ = await self.run_twistd("-n", "keycast", "--help")
        self.assertEqual(code, 0)
        for option, env in [
            ("--database", "DATABASE_PATH"),
            ("--master-key", "MASTER_KEY_PATH"),
            ("--relay", "KEYCAST_RELAYS"),
            ("--health", "PORT"),
            ("--reload-signal", "KEYCAST_RELOAD_SIGNAL"),
            ("--log-format", "KEYCAST_LOG_FORMAT"),
            ("--kms", "USE_GCP_KMS"),
            ("--shard", "KEYCAST_SHARD"),
            ("--relay", "BUNKER_RELAYS"),
        ]:
            self.assertIn(option, out)
            self.assertIn(env, out)
        self.assertIn("wss://relay.damus.io", " ".join(out.split()))
        self.assertNotIn("--check-timeout", out)  # the CLI's, not the daemon's

    async def test_bad_option_exits_with_one_line(self) -> None:
        """A bad value makes twistd exit 1 with one line on stderr and no usage text."""
        code, out, err = await self.run_twistd("-n", "keycast", "--shard", "5/2")
        self.assertEqual(code, 1)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("keycast: --shard"), err)
        self.assertNotIn("Usage", out + err)
