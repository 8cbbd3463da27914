"""keycast_tw.config: precedence, the Rust original's environment names, validation messages."""

from __future__ import annotations

import base64
from typing import ClassVar

from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.config import (
    DEFAULT_RELAYS,
    OPTIONS,
    ConfigError,
    KmsConfig,
    check_relay_url,
    config_from,
    option_spec,
)


class TapOptions(usage.Options):
    """What tap.py builds from the table: defaults None, so config_from sees "not given"."""

    optParameters: ClassVar[list[list[str | None]]] = [
        [spec.name, None, None, spec.help_text()] for spec in OPTIONS if not spec.repeatable
    ]

    def opt_relay(self, url: str) -> None:
        """Relay to listen on (repeatable)."""
        self.setdefault("relay", []).append(url)


def error_of(testcase: SynchronousTestCase, options: dict[str, object], env: dict[str, str]) -> str:
    """The message of the ConfigError config_from raises for these inputs."""
    return str(testcase.assertRaises(ConfigError, config_from, options, env))


class DefaultsTests(SynchronousTestCase):
    def test_defaults_match_the_command_contract(self) -> None:
        """With no options and an empty environment every value is DESIGN §4's default."""
        config = config_from({}, {})
        self.assertEqual(config.database_path, "database/keycast.db")
        self.assertEqual(config.master_key_path, "master.key")
        self.assertEqual(
            config.relays, ("wss://relay.damus.io", "wss://nos.lol", "wss://relay.nsec.app")
        )
        self.assertEqual(config.health_endpoint, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.reload_signal_path, "database/.reload_signal")
        self.assertEqual(config.log_format, "text")
        self.assertIs(config.log_level, LogLevel.info)
        self.assertIsNone(config.kms)
        self.assertEqual((config.shard_index, config.shard_count), (0, 1))
        self.assertEqual(config.reload_interval, 0.5)
        self.assertEqual(config.created_at_window, 600)
        self.assertGreaterEqual(config.crypto_threads, 1)

    def test_reload_signal_follows_the_database_directory(self) -> None:
        """The reload signal defaults to .reload_signal next to the database, wherever it is."""
        config = config_from({"database": "/var/lib/keycast/k.db"}, {})
        self.assertEqual(config.reload_signal_path, "/var/lib/keycast/.reload_signal")
        self.assertEqual(config_from({"database": "k.db"}, {}).reload_signal_path, ".reload_signal")

    def test_config_is_frozen(self) -> None:
        """The configuration cannot be changed after validation."""
        config = config_from({}, {})
        self.assertRaises(AttributeError, setattr, config, "database_path", "x")


class PrecedenceTests(SynchronousTestCase):
    def test_command_line_beats_environment(self) -> None:
        """An option given on the command line wins over its environment variable."""
        config = config_from({"database": "cli.db"}, {"DATABASE_PATH": "env.db"})
        self.assertEqual(config.database_path, "cli.db")

    def test_environment_beats_default(self) -> None:
        """The Rust original's DATABASE_PATH and MASTER_KEY_PATH are honoured."""
        config = config_from({}, {"DATABASE_PATH": "/data/k.db", "MASTER_KEY_PATH": "/run/mk"})
        self.assertEqual(config.database_path, "/data/k.db")
        self.assertEqual(config.master_key_path, "/run/mk")

    def test_none_means_not_given(self) -> None:
        """usage.Options and argparse report absent options as None: the env then applies."""
        config = config_from({"database": None}, {"DATABASE_PATH": "env.db"})
        self.assertEqual(config.database_path, "env.db")

    def test_argparse_names_are_accepted(self) -> None:
        """Underscored keys (argparse dests) work like the dashed option names."""
        config = config_from({"master_key": "mk", "log_level": "debug"}, {})
        self.assertEqual(config.master_key_path, "mk")
        self.assertIs(config.log_level, LogLevel.debug)

    def test_repeated_relays_on_the_command_line(self) -> None:
        """--relay given several times keeps the order and drops duplicates."""
        config = config_from(
            {"relay": ["wss://a.example", "ws://127.0.0.1:7777", "wss://a.example"]},
            {"KEYCAST_RELAYS": "wss://env.example"},
        )
        self.assertEqual(config.relays, ("wss://a.example", "ws://127.0.0.1:7777"))

    def test_relays_from_a_comma_list(self) -> None:
        """KEYCAST_RELAYS is a comma list; blanks around items are ignored."""
        config = config_from({}, {"KEYCAST_RELAYS": " wss://a.example , wss://b.example,"})
        self.assertEqual(config.relays, ("wss://a.example", "wss://b.example"))

    def test_bunker_relays_of_the_rust_original(self) -> None:
        """BUNKER_RELAYS (the original's later name) is read after KEYCAST_RELAYS."""
        env = {"BUNKER_RELAYS": "wss://b.example"}
        self.assertEqual(config_from({}, env).relays, ("wss://b.example",))
        env["KEYCAST_RELAYS"] = "wss://k.example"
        self.assertEqual(config_from({}, env).relays, ("wss://k.example",))

    def test_port_means_all_interfaces(self) -> None:
        """PORT=N (Cloud Run, the Rust original) becomes tcp:N, listening on all interfaces."""
        self.assertEqual(config_from({}, {"PORT": "9090"}).health_endpoint, "tcp:9090")

    def test_health_option_and_env_beat_port(self) -> None:
        """--health and KEYCAST_HEALTH take precedence over PORT."""
        env = {"PORT": "9090", "KEYCAST_HEALTH": "tcp:7000:interface=127.0.0.1"}
        self.assertEqual(config_from({}, env).health_endpoint, "tcp:7000:interface=127.0.0.1")
        config = config_from({"health": "unix:/run/keycast.sock"}, env)
        self.assertEqual(config.health_endpoint, "unix:/run/keycast.sock")

    def test_numbers_from_the_environment(self) -> None:
        """Tuning options are read from their KEYCAST_* variables and typed."""
        config = config_from(
            {},
            {
                "KEYCAST_RELOAD_INTERVAL": "2",
                "KEYCAST_RATE_LIMIT": "1.5",
                "KEYCAST_RATE_BURST": "7",
                "KEYCAST_CRYPTO_THREADS": "3",
                "KEYCAST_RELAY_P_CHUNK": "100",
                "KEYCAST_RELAY_FIREHOSE_THRESHOLD": "1000",
                "KEYCAST_CHECK_TIMEOUT": "1",
            },
        )
        self.assertEqual(config.reload_interval, 2.0)
        self.assertEqual(config.rate_limit, 1.5)
        self.assertEqual(config.rate_burst, 7)
        self.assertEqual(config.crypto_threads, 3)
        self.assertEqual(config.relay_p_chunk, 100)
        self.assertEqual(config.relay_firehose_threshold, 1000)
        self.assertIsNone(config_from({}, {}).relay_firehose_threshold)
        auto = config_from({}, {"KEYCAST_RELAY_FIREHOSE_THRESHOLD": "Auto"})
        self.assertIsNone(auto.relay_firehose_threshold)
        self.assertEqual(config_from({"rate-limit": "0"}, {}).rate_limit, 0)
        self.assertEqual(config.check_timeout, 1.0)

    def test_log_settings(self) -> None:
        """KEYCAST_LOG_FORMAT/LEVEL are read case-insensitively; 'warning' means warn."""
        config = config_from({}, {"KEYCAST_LOG_FORMAT": "JSON", "KEYCAST_LOG_LEVEL": "Warning"})
        self.assertEqual(config.log_format, "json")
        self.assertIs(config.log_level, LogLevel.warn)

    def test_shard(self) -> None:
        """KEYCAST_SHARD=K/N is split into index and count."""
        config = config_from({}, {"KEYCAST_SHARD": "2/3"})
        self.assertEqual((config.shard_index, config.shard_count), (2, 3))


class KmsTests(SynchronousTestCase):
    def test_rust_kms_variables(self) -> None:
        """USE_GCP_KMS=true with the GCP_* variables selects KMS with the original's defaults."""
        config = config_from({}, {"USE_GCP_KMS": "true", "GCP_PROJECT_ID": "my-project"})
        self.assertEqual(config.kms, KmsConfig(project_id="my-project"))
        assert config.kms is not None
        self.assertEqual(
            config.kms.key_resource,
            "projects/my-project/locations/global/keyRings/keycast-keys/cryptoKeys/master-key",
        )

    def test_kms_overrides(self) -> None:
        """Location, key ring, key name and the API base URL can all be set."""
        config = config_from(
            {"kms": "gcp", "kms-key-name": "k2"},
            {
                "GCP_PROJECT_ID": "p-1",
                "GCP_KMS_LOCATION": "europe-west1",
                "GCP_KMS_KEY_RING": "ring",
                "GCP_KMS_KEY_NAME": "ignored",
                "KEYCAST_KMS_API_BASE": "http://127.0.0.1:9999/",
            },
        )
        self.assertEqual(
            config.kms,
            KmsConfig("p-1", "europe-west1", "ring", "k2", "http://127.0.0.1:9999"),
        )

    def test_use_gcp_kms_false_and_file(self) -> None:
        """USE_GCP_KMS=false means the file key; --kms file overrides USE_GCP_KMS=true."""
        self.assertIsNone(config_from({}, {"USE_GCP_KMS": "false"}).kms)
        env = {"USE_GCP_KMS": "true", "GCP_PROJECT_ID": "proj-1"}
        self.assertIsNone(config_from({"kms": "file"}, env).kms)

    def test_project_required(self) -> None:
        """KMS without a project is refused with the original's variable name in the message."""
        message = error_of(self, {}, {"USE_GCP_KMS": "true"})
        self.assertIn("(GCP_PROJECT_ID) not set", message)
        self.assertIn("--kms-project", message)

    def test_bad_values(self) -> None:
        """Unknown --kms kinds, bad booleans, bad URLs and bad names are refused."""
        base = {"GCP_PROJECT_ID": "proj-1"}
        self.assertIn("gcp or file", error_of(self, {"kms": "aws"}, base))
        self.assertIn("true or false", error_of(self, {}, {**base, "USE_GCP_KMS": "maybe"}))
        message = error_of(self, {"kms": "gcp"}, {**base, "KEYCAST_KMS_API_BASE": "ftp://x"})
        self.assertIn("KEYCAST_KMS_API_BASE", message)
        message = error_of(self, {"kms": "gcp"}, {**base, "GCP_KMS_KEY_RING": "a/b"})
        self.assertIn("GCP_KMS_KEY_RING", message)


class ValidationTests(SynchronousTestCase):
    def test_relay_scheme(self) -> None:
        """Relays must be ws:// or wss://; the message names --relay and KEYCAST_RELAYS."""
        message = error_of(self, {"relay": ["https://relay.example"]}, {})
        self.assertIn("--relay", message)
        self.assertIn("KEYCAST_RELAYS", message)
        self.assertIn("ws:// or wss://", message)
        self.assertIn("wss://", error_of(self, {}, {"KEYCAST_RELAYS": "relay.example"}))
        self.assertIn("no relay", error_of(self, {}, {"KEYCAST_RELAYS": " , "}))
        self.assertIn("not a valid URL", error_of(self, {"relay": ["wss://h:99999"]}, {}))

    def test_check_relay_url(self) -> None:
        """The shared relay check accepts ws/wss URLs with a host and nothing else."""
        self.assertEqual(check_relay_url("wss://relay.example/path"), "wss://relay.example/path")
        for bad in ("wss://", "http://x", "wss://a b", "wss://a,b", ""):
            self.assertRaises(ValueError, check_relay_url, bad)

    def test_relay_url_with_credentials_refused(self) -> None:
        """A user name or password in a relay URL is refused (it would be shown in logs,
        /status, /metrics and bunker URIs), and the message does not repeat it."""
        message = error_of(self, {"relay": ["wss://user:s3cr3t@relay.example/"]}, {})
        self.assertIn("carries a user name or password", message)
        self.assertNotIn("s3cr3t", message)
        self.assertNotIn("user", message.split("carries")[0])

    def test_shard_k_below_n(self) -> None:
        """--shard needs 0 <= K < N and the K/N form."""
        self.assertIn("0 <= K < N", error_of(self, {"shard": "2/2"}, {}))
        self.assertIn("0 <= K < N", error_of(self, {}, {"KEYCAST_SHARD": "0/0"}))
        message = error_of(self, {}, {"KEYCAST_SHARD": "half"})
        self.assertIn("K/N", message)
        self.assertIn("KEYCAST_SHARD", message)

    def test_health_endpoint_syntax(self) -> None:
        """Endpoint strings are parsed by Twisted's parser; nonsense is refused with the option."""
        for good in (
            "tcp:8080",
            "tcp:0:interface=127.0.0.1",
            "tcp6:8080:interface=\\:\\:1",
            "unix:/run/keycast/health.sock",
            "systemd:domain=INET:index=0",
        ):
            self.assertEqual(config_from({"health": good}, {}).health_endpoint, good)
        for bad in ("8080", "tcp:http", "tcp:80:colour=blue", "bogus:1", "tcp"):
            message = error_of(self, {"health": bad}, {})
            self.assertIn("--health", message)
            self.assertIn("KEYCAST_HEALTH", message)

    def test_port_must_be_a_port(self) -> None:
        """PORT must be a number between 0 (any free port, for tests) and 65535."""
        self.assertEqual(config_from({}, {"PORT": "0"}).health_endpoint, "tcp:0")
        for bad in ("http", "70000", "-1", ""):
            self.assertIn("PORT must be a TCP port", error_of(self, {}, {"PORT": bad}))

    def test_numbers(self) -> None:
        """Numbers must parse and respect their minimum; the env var is named."""
        message = error_of(self, {}, {"KEYCAST_RELOAD_INTERVAL": "soon"})
        self.assertIn("KEYCAST_RELOAD_INTERVAL", message)
        self.assertIn("must be a number", message)
        self.assertIn("--rate-burst", error_of(self, {"rate-burst": "0"}, {}))
        self.assertIn("integer", error_of(self, {"max-inflight": "1.5"}, {}))
        self.assertIn("number", error_of(self, {"reload-interval": "nan"}, {}))
        self.assertIn("number", error_of(self, {"reload-interval": "inf"}, {}))

    def test_log_choices(self) -> None:
        """Unknown log formats and levels are refused with the choices."""
        self.assertIn("text, json", error_of(self, {"log-format": "xml"}, {}))
        self.assertIn("debug, info", error_of(self, {}, {"KEYCAST_LOG_LEVEL": "loud"}))

    def test_empty_paths(self) -> None:
        """An empty database path or reload signal is refused."""
        self.assertIn("DATABASE_PATH", error_of(self, {}, {"DATABASE_PATH": ""}))
        self.assertIn("KEYCAST_RELOAD_SIGNAL", error_of(self, {}, {"KEYCAST_RELOAD_SIGNAL": ""}))

    def test_master_key_content_in_the_path_variable(self) -> None:
        """A key pasted into MASTER_KEY_PATH is refused without echoing it."""
        key = base64.b64encode(bytes(range(32))).decode()
        message = error_of(self, {}, {"MASTER_KEY_PATH": key})
        self.assertIn("holds a key, not a path", message)
        self.assertNotIn(key, message)


class OptionTableTests(SynchronousTestCase):
    def test_every_option_feeds_config_from(self) -> None:
        """Each non-path OPTIONS entry is read: a bad value is reported under its flag."""
        for spec in OPTIONS:
            if spec.name in ("database", "master-key", "reload-signal"):
                continue  # any non-empty path is valid; see test_empty_paths
            if spec.name in ("kms-project", "kms-location", "kms-key-ring", "kms-key-name"):
                options: dict[str, object] = {"kms": "gcp", "kms-project": "proj-1"}
                options[spec.name] = "bad/value"
            elif spec.name == "kms-api-base":
                options = {"kms": "gcp", "kms-project": "proj-1", spec.name: "bad/value"}
            else:
                options = {spec.name: "bad/value"}
            self.assertIn(spec.flag, error_of(self, options, {}), spec.name)

    def test_help_text_names_env_and_default(self) -> None:
        """The help shared by tap.py and the CLI shows the env fallbacks and the default."""
        spec = option_spec("database")
        self.assertEqual((spec.flag, spec.dest), ("--database", "database"))
        self.assertIn("DATABASE_PATH", spec.help_text())
        self.assertIn("database/keycast.db", spec.help_text())
        self.assertEqual(option_spec("master-key").dest, "master_key")
        self.assertEqual(option_spec("relay").default, ", ".join(DEFAULT_RELAYS))
        self.assertTrue(option_spec("relay").repeatable)

    def test_usage_options_from_the_table(self) -> None:
        """A twisted usage.Options built from OPTIONS feeds config_from directly."""
        options = TapOptions()
        options.parseOptions(
            ["--database", "/d/k.db", "--relay", "wss://a.example", "--relay", "wss://b.example"]
        )
        config = config_from(options, {"DATABASE_PATH": "env.db", "KEYCAST_SHARD": "1/2"})
        self.assertEqual(config.database_path, "/d/k.db")
        self.assertEqual(config.relays, ("wss://a.example", "wss://b.example"))
        self.assertEqual((config.shard_index, config.shard_count), (1, 2))
