"""The daemon's and the admin CLI's configuration: one frozen value built from options and env.

Both ``twistd keycast`` (tap.py, twisted.python.usage) and the ``keycast`` command (argparse) read
the same table, ``OPTIONS``, so an option has one name, one environment fallback and one default
everywhere. Precedence is command line > environment > default; the environment names of the
Rust original (DATABASE_PATH, MASTER_KEY_PATH, PORT, USE_GCP_KMS, GCP_*) keep working.

``config_from`` does every check up front, so a bad deployment fails at start with one line that
names the option and its environment variable, instead of deep inside a service. It performs no
I/O and touches no file: twistd may fork after it runs, and the CLI uses it before it knows
whether the database exists.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.logger import InvalidLogLevelError, LogLevel

from keycast_tw.store.kms import DEFAULT_API_BASE, kms_key_name

__all__ = [
    "OPTIONS",
    "ConfigError",
    "KeycastConfig",
    "KmsConfig",
    "OptionSpec",
    "check_relay_url",
    "config_from",
    "option_spec",
]

class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the option and env var."""


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One daemon/CLI option: how it is spelled on the command line and in the environment.

    ``name`` is the long option without dashes (``"master-key"``), which is also the key
    ``config_from`` looks up in its ``options`` mapping (``"master_key"`` is accepted too, for
    argparse). ``env`` lists the environment variables tried in order. ``default`` is the value
    shown in help; it is a string as an operator would type it, or None when it is derived
    (``help`` then says from what). ``repeatable`` options take a list on the command line
    (``--relay a --relay b``). ``cli`` marks the options the admin CLI accepts as global options;
    the others only matter to the daemon (their environment variables are still validated).
    ``daemon=False`` marks an option of the CLI alone, which ``twistd keycast`` does not offer.
    """

    name: str
    env: tuple[str, ...]
    default: str | None
    help: str
    metavar: str = "VALUE"
    repeatable: bool = False
    cli: bool = False
    daemon: bool = True

    @property
    def flag(self) -> str:
        """The long command-line flag, e.g. ``--master-key``."""
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        """The attribute name argparse uses, e.g. ``master_key``."""
        return self.name.replace("-", "_")

    def help_text(self) -> str:
        """``help`` followed by the environment variables and the default, for --help output."""
        extra = []
        if self.env:
            extra.append("env " + ", ".join(self.env))
        if self.default is not None:
            extra.append(f"default {self.default}")
        return f"{self.help} [{'; '.join(extra)}]" if extra else self.help

    def describe(self) -> str:
        """How an error message refers to this option: the flag and its environment variables."""
        if self.env:
            return f"{self.flag} ({' / '.join(self.env)})"
        return self.flag


DEFAULT_RELAYS = ("wss://relay.damus.io", "wss://nos.lol", "wss://relay.nsec.app")

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "database", ("DATABASE_PATH",), "database/keycast.db",
        "SQLite database file", "PATH", cli=True,
    ),
    OptionSpec(
        "master-key", ("MASTER_KEY_PATH",), "master.key",
        "file holding the base64 master key (mode 0600); unused with --kms gcp", "PATH",
        cli=True,
    ),
    OptionSpec(
        "relay", ("KEYCAST_RELAYS", "BUNKER_RELAYS"), ", ".join(DEFAULT_RELAYS),
        "relay to listen and answer on, ws:// or wss:// (repeat the option; env: comma list)",
        "URL", repeatable=True,
    ),
    OptionSpec(
        "health", ("KEYCAST_HEALTH", "PORT"), "tcp:8080:interface=127.0.0.1",
        "Twisted endpoint of the HTTP health server (PORT=N means tcp:N on all interfaces; "
        "0 picks a free port)",
        "ENDPOINT", cli=True,
    ),
    OptionSpec(
        "reload-signal", ("KEYCAST_RELOAD_SIGNAL",), None,
        "file whose appearance triggers a reload [default <database dir>/.reload_signal]",
        "PATH",
    ),
    OptionSpec("log-format", ("KEYCAST_LOG_FORMAT",), "text", "log format: text or json", "FORMAT"),
    OptionSpec(
        "log-level", ("KEYCAST_LOG_LEVEL",), "info",
        "lowest level logged: debug, info, warn, error, critical", "LEVEL",
    ),
    OptionSpec(
        "kms", ("USE_GCP_KMS",), "file",
        "where the master key comes from: file, or gcp for Google Cloud KMS envelope "
        "encryption (USE_GCP_KMS=true means gcp)",
        "KIND", cli=True,
    ),
    OptionSpec(
        "kms-project", ("GCP_PROJECT_ID",), None, "GCP project of the KMS key (required with gcp)",
        "ID", cli=True,
    ),
    OptionSpec(
        "kms-location", ("GCP_KMS_LOCATION",), "global", "location of the KMS key ring", "LOC",
        cli=True,
    ),
    OptionSpec(
        "kms-key-ring", ("GCP_KMS_KEY_RING",), "keycast-keys", "KMS key ring", "RING", cli=True,
    ),
    OptionSpec(
        "kms-key-name", ("GCP_KMS_KEY_NAME",), "master-key", "KMS crypto key", "KEY", cli=True,
    ),
    OptionSpec(
        "kms-api-base", ("KEYCAST_KMS_API_BASE",), DEFAULT_API_BASE,
        "base URL of the Cloud KMS REST API (tests, private endpoints)", "URL", cli=True,
    ),
    OptionSpec(
        "shard", ("KEYCAST_SHARD",), "0/1",
        "serve only the bunker pubkeys of shard K out of N daemons sharing one database", "K/N",
    ),
    OptionSpec(
        "reload-interval", ("KEYCAST_RELOAD_INTERVAL",), "0.5",
        "seconds between checks for database changes and the reload signal", "SECONDS",
    ),
    OptionSpec(
        "full-reload-interval", ("KEYCAST_FULL_RELOAD_INTERVAL",), "300",
        "seconds between full reconciles with the database (safety net)", "SECONDS",
    ),
    OptionSpec(
        "created-at-window", ("KEYCAST_CREATED_AT_WINDOW",), "600",
        "requests whose created_at is further than this from now (seconds) are refused",
        "SECONDS",
    ),
    OptionSpec(
        "rate-limit", ("KEYCAST_RATE_LIMIT",), "10",
        "sustained requests per second accepted from one client pubkey (0: no limit)",
        "PER_SECOND",
    ),
    OptionSpec(
        "rate-burst", ("KEYCAST_RATE_BURST",), "50",
        "requests one client pubkey may send in a burst above the rate", "COUNT",
    ),
    OptionSpec(
        "max-inflight", ("KEYCAST_MAX_INFLIGHT",), "256",
        "requests in the engine (crypto and database work) at once; more are refused and "
        "counted",
        "COUNT",
    ),
    OptionSpec(
        "crypto-threads", ("KEYCAST_CRYPTO_THREADS",), None,
        "threads for signing and encryption [default: number of CPUs]", "COUNT",
    ),
    OptionSpec(
        "relay-p-chunk", ("KEYCAST_RELAY_P_CHUNK",), "200",
        "bunker pubkeys per #p filter in a relay subscription", "COUNT",
    ),
    OptionSpec(
        "relay-firehose-threshold", ("KEYCAST_RELAY_FIREHOSE_THRESHOLD",), "auto",
        "above this many bunker pubkeys, subscribe to all kind 24133 events instead of #p "
        "lists (auto: 10 chunks)",
        "COUNT",
    ),
    OptionSpec(
        "relay-handshake-timeout", ("KEYCAST_RELAY_HANDSHAKE_TIMEOUT",), "15",
        "seconds to wait for a relay's WebSocket handshake before retrying", "SECONDS",
    ),
    OptionSpec(
        "ready-timeout", ("KEYCAST_READY_TIMEOUT",), "60",
        "seconds after start within which the daemon should be ready; past it an error is "
        "logged and /ready says so",
        "SECONDS",
    ),
    OptionSpec(
        "shutdown-timeout", ("KEYCAST_SHUTDOWN_TIMEOUT",), "10",
        "seconds SIGTERM waits for in-flight requests before closing relays and the database",
        "SECONDS",
    ),
    OptionSpec(
        "check-timeout", ("KEYCAST_CHECK_TIMEOUT",), "5",
        "seconds `keycast status` and `keycast check` wait for the daemon's HTTP answer",
        "SECONDS", cli=True, daemon=False,
    ),
)

_BY_NAME = {spec.name: spec for spec in OPTIONS}


def option_spec(name: str) -> OptionSpec:
    """The OPTIONS entry called ``name`` (KeyError for an unknown name: a programming error)."""
    return _BY_NAME[name]


@dataclass(frozen=True, slots=True)
class KmsConfig:
    """Google Cloud KMS settings; the daemon wraps its data key with this crypto key."""

    project_id: str
    location: str = "global"
    key_ring: str = "keycast-keys"
    key_name: str = "master-key"
    api_base: str = DEFAULT_API_BASE

    @property
    def key_resource(self) -> str:
        """The crypto key's resource name, as keycast_tw.store.kms.GcpKms takes it."""
        return kms_key_name(self.project_id, self.location, self.key_ring, self.key_name)


@dataclass(frozen=True, slots=True)
class KeycastConfig:
    """Every setting of the daemon and the CLI, validated. Durations are float seconds."""

    database_path: str
    master_key_path: str
    relays: tuple[str, ...]
    health_endpoint: str
    reload_signal_path: str
    log_format: str  # "text" or "json"
    log_level: LogLevel
    kms: KmsConfig | None
    shard_index: int
    shard_count: int
    reload_interval: float
    full_reload_interval: float
    created_at_window: float
    rate_limit: float  # per client pubkey, requests per second
    rate_burst: int
    max_inflight: int
    crypto_threads: int
    relay_p_chunk: int
    relay_firehose_threshold: int | None  # None: automatic (RelayOptions decides)
    relay_handshake_timeout: float
    ready_timeout: float
    shutdown_timeout: float
    check_timeout: float


def config_from(options: Mapping[str, object], environ: Mapping[str, str]) -> KeycastConfig:
    """Build the configuration: command line (``options``) > environment > default.

    ``options`` maps option names (``"master-key"`` or ``"master_key"``) to the value given on
    the command line; a missing key or None means "not given". Raises ConfigError.
    """
    source = _Source(options, environ)
    database_path = source.path("database")
    reload_signal = source.raw("reload-signal")
    if reload_signal is None:
        reload_signal = os.path.join(os.path.dirname(database_path), ".reload_signal")
    elif not reload_signal:
        raise ConfigError(f"{option_spec('reload-signal').describe()} must not be empty")
    shard_index, shard_count = _shard(source)
    return KeycastConfig(
        database_path=database_path,
        master_key_path=_master_key_path(source),
        relays=_relays(source),
        health_endpoint=_health(source),
        reload_signal_path=reload_signal,
        log_format=source.choice("log-format", ("text", "json")),
        log_level=_log_level(source),
        kms=_kms(source),
        shard_index=shard_index,
        shard_count=shard_count,
        reload_interval=source.real("reload-interval", minimum=0.01),
        full_reload_interval=source.real("full-reload-interval", minimum=1),
        created_at_window=source.real("created-at-window", minimum=1),
        rate_limit=source.real("rate-limit", minimum=0),
        rate_burst=source.integer("rate-burst", minimum=1),
        max_inflight=source.integer("max-inflight", minimum=1),
        crypto_threads=source.integer(
            "crypto-threads", minimum=1, default=str(os.cpu_count() or 1)
        ),
        relay_p_chunk=source.integer("relay-p-chunk", minimum=1),
        relay_firehose_threshold=_firehose_threshold(source),
        relay_handshake_timeout=source.real("relay-handshake-timeout", minimum=0.1),
        ready_timeout=source.real("ready-timeout", minimum=0.1),
        shutdown_timeout=source.real("shutdown-timeout", minimum=0),
        check_timeout=source.real("check-timeout", minimum=0.1),
    )


class _Source:
    """Looks values up by precedence and remembers where each came from, for error messages."""

    def __init__(self, options: Mapping[str, object], environ: Mapping[str, str]) -> None:
        self._options = options
        self._environ = environ

    def lookup(self, name: str) -> tuple[object, str] | None:
        """The first value given for ``name`` and a description of where it came from."""
        spec = option_spec(name)
        for key in (spec.name, spec.dest):
            value = self._options.get(key)
            if value is not None:
                return value, spec.flag
        for env in spec.env:
            env_value = self._environ.get(env)
            if env_value is not None:
                return env_value, env
        return None

    def raw(self, name: str) -> str | None:
        found = self.lookup(name)
        if found is None:
            return None
        value, _ = found
        return str(value).strip()

    def text(self, name: str) -> str:
        """A non-empty string: the given value or the default."""
        value = self._given_or_default(name)
        if not value:
            raise ConfigError(f"{option_spec(name).describe()} must not be empty")
        return value

    def path(self, name: str) -> str:
        value = self.text(name)
        if "\x00" in value:
            raise ConfigError(f"{option_spec(name).describe()} contains a NUL byte")
        return value

    def choice(self, name: str, choices: Sequence[str]) -> str:
        value = self.text(name).lower()
        if value not in choices:
            raise ConfigError(
                f"{option_spec(name).describe()} must be one of {', '.join(choices)}, "
                f"not {_quote(value)}"
            )
        return value

    def integer(self, name: str, *, minimum: int, default: str | None = None) -> int:
        return int(self._number(name, int, "an integer", minimum, default))

    def real(self, name: str, *, minimum: float) -> float:
        return self._number(name, float, "a number", minimum, None)

    def _number(
        self,
        name: str,
        parse: Callable[[str], float],
        kind: str,
        minimum: float,
        default: str | None,
    ) -> float:
        """``parse`` of the given value or default: finite and >= ``minimum``, else ConfigError."""
        value = self._given_or_default(name, default)
        assert value is not None, f"{name} has neither a default nor a derived default"
        try:
            number = parse(value)
        except ValueError:
            number = math.nan
        if not minimum <= number < math.inf:  # False for NaN too; exact for huge integers
            raise ConfigError(
                f"{option_spec(name).describe()} must be {kind} >= {minimum:g}, "
                f"not {_quote(value)}"
            )
        return number

    def _given_or_default(self, name: str, default: str | None = None) -> str | None:
        """The given value, else ``default`` (a derived default), else the table's default."""
        value = self.raw(name)
        if value is not None:
            return value
        return default if default is not None else option_spec(name).default


def _firehose_threshold(source: _Source) -> int | None:
    """An explicit bunker count (0: always the firehose), or None for the relay pool's automatic
    choice, which follows the chunk size."""
    value = source.raw("relay-firehose-threshold")
    if value is None or value.lower() == "auto":
        return None
    return source.integer("relay-firehose-threshold", minimum=0)


def _master_key_path(source: _Source) -> str:
    """The master key path, refusing a key pasted where its path belongs.

    Deployments of the Rust original set MASTER_KEY_PATH to the key itself (Cloud Run secrets);
    the original ignored the variable so it did not matter. Here it would fail later with a
    confusing "file not found" that prints the key; say what is wrong instead, without the value.
    """
    value = source.path("master-key")
    if len(value) == 44 and value.endswith("="):
        try:
            decoded = base64.b64decode(value, validate=True)
        except binascii.Error:
            decoded = b""
        if len(decoded) == 32:
            raise ConfigError(
                f"{option_spec('master-key').describe()} holds a key, not a path: write the key "
                "to a file with mode 0600 and give the file's path"
            )
    return value


def check_relay_url(url: str) -> str:
    """Return ``url`` if it is a usable relay URL (ws:// or wss:// with a host), else ValueError.

    Shared by the configuration and by ``keycast authorize``, which advertises relays in URIs.
    """
    if any(ch.isspace() for ch in url) or "," in url:
        raise ValueError(f"relay URL {_quote(url)} contains spaces or commas")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"relay URL {_quote(url)} is not a valid URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"relay URL {_quote(url)} must start with ws:// or wss:// and name a host")
    if "@" in parts.netloc:
        # The URL is shown in logs, /status and /metrics labels, and handed to clients in
        # bunker URIs: a password in it would be published. Relays authenticate with NIP-42.
        raise ValueError(
            f"relay URL {_quote(_without_userinfo(parts))} carries a user name or password;"
            " relays authenticate the daemon with NIP-42 instead"
        )
    return url


def _without_userinfo(parts: SplitResult) -> str:
    """The URL with its ``user:password@`` replaced, for an error message."""
    return parts._replace(netloc="…@" + parts.netloc.rpartition("@")[2]).geturl()


def _relays(source: _Source) -> tuple[str, ...]:
    spec = option_spec("relay")
    found = source.lookup("relay")
    if found is None:
        return DEFAULT_RELAYS
    value, origin = found
    items: list[str] = []
    given = list(value) if isinstance(value, list | tuple) else [value]
    for item in given:
        items.extend(part.strip() for part in str(item).split(","))
    relays = [item for item in items if item]
    if not relays:
        raise ConfigError(f"{spec.describe()}: {origin} lists no relay")
    for url in relays:
        try:
            check_relay_url(url)
        except ValueError as error:
            raise ConfigError(f"{spec.describe()}: {error}") from None
    return tuple(dict.fromkeys(relays))


_ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "systemd")


def _health(source: _Source) -> str:
    """The health endpoint string; PORT (the Rust/Cloud Run variable) means tcp:PORT everywhere."""
    spec = option_spec("health")
    found = source.lookup("health")
    if found is None:
        assert spec.default is not None
        return spec.default
    value, origin = found
    text = str(value).strip()
    if origin == "PORT":
        if not text.isdigit() or int(text) > 65535:
            raise ConfigError(
                f"{spec.describe()}: PORT must be a TCP port number, not {_quote(text)}"
            )
        return f"tcp:{int(text)}"
    check_endpoint(text, spec.describe())
    return text


def check_endpoint(description: str, what: str) -> None:
    """Check a server endpoint string's syntax without I/O, plugin scans or file access.

    tcp, tcp6 and unix are parsed by Twisted's own parser against a MemoryReactor (which builds
    the endpoint object and nothing else). ssl and systemd are accepted by type only: parsing
    them reads certificate files or the plugin cache; the daemon reports their errors at start.
    """
    kind, _, rest = description.partition(":")
    if kind not in _ENDPOINT_TYPES or not rest:
        raise ConfigError(
            f"{what}: {_quote(description)} is not an endpoint string such as "
            "tcp:8080:interface=127.0.0.1 (types: " + ", ".join(_ENDPOINT_TYPES) + ")"
        )
    if kind in ("ssl", "systemd"):
        return
    try:
        serverFromString(  # type: ignore[no-untyped-call]
            MemoryReactor(),  # type: ignore[no-untyped-call]
            "tcp:" + rest if kind == "tcp6" else description,
        )
    except (ValueError, TypeError, IndexError) as error:
        raise ConfigError(f"{what}: bad endpoint {_quote(description)} ({error})") from None


def _log_level(source: _Source) -> LogLevel:
    spec = option_spec("log-level")
    name = source.text("log-level").lower()
    name = {"warning": "warn", "fatal": "critical"}.get(name, name)
    try:
        level: LogLevel = LogLevel.levelWithName(name)
    except InvalidLogLevelError:
        raise ConfigError(
            f"{spec.describe()} must be one of debug, info, warn, error, critical, "
            f"not {_quote(name)}"
        ) from None
    return level


_TRUE = ("true", "1", "yes", "on", "gcp")
_FALSE = ("false", "0", "no", "off", "", "file")


def _kms(source: _Source) -> KmsConfig | None:
    spec = option_spec("kms")
    found = source.lookup("kms")
    if found is None:
        return None
    value, origin = found
    text = str(value).strip().lower()
    if origin == spec.flag and text not in ("gcp", "file"):
        raise ConfigError(f"{spec.describe()} must be gcp or file, not {_quote(text)}")
    if text in _FALSE:
        return None
    if text not in _TRUE:
        raise ConfigError(f"{spec.describe()}: {origin} must be true or false, not {_quote(text)}")
    project = source.raw("kms-project")
    if not project:
        raise ConfigError(
            f"{option_spec('kms-project').describe()} not set; it is required with "
            f"{spec.describe()}"
        )
    api_base = source.text("kms-api-base").rstrip("/")
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{option_spec('kms-api-base').describe()} must be an http(s) URL, not "
            f"{_quote(api_base)}"
        )
    names = {}
    for name in ("kms-location", "kms-key-ring", "kms-key-name"):
        part = source.text(name)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            raise ConfigError(
                f"{option_spec(name).describe()} may hold only letters, digits, _ and -, "
                f"not {_quote(part)}"
            )
        names[name] = part
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", project):
        raise ConfigError(
            f"{option_spec('kms-project').describe()} is not a GCP project id: {_quote(project)}"
        )
    return KmsConfig(
        project_id=project,
        location=names["kms-location"],
        key_ring=names["kms-key-ring"],
        key_name=names["kms-key-name"],
        api_base=api_base,
    )


def _shard(source: _Source) -> tuple[int, int]:
    spec = option_spec("shard")
    text = source.text("shard")
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise ConfigError(f"{spec.describe()} must look like K/N (e.g. 0/2), not {_quote(text)}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ConfigError(f"{spec.describe()}: need 0 <= K < N, got {index}/{count}")
    return index, count


def _quote(value: str) -> str:
    """A value for an error message, shortened so a pasted secret cannot flood a log line."""
    return repr(value if len(value) <= 80 else value[:77] + "...")
