"""Log observers for the edge of the daemon: text for humans and journald, JSON for log shippers.

Nothing in the daemon configures logging; twistd does, with one of these observers:

* ``twistd --logger keycast_tw.logs.observer -n keycast`` reads ``KEYCAST_LOG_FORMAT`` (text|json)
  and ``KEYCAST_LOG_LEVEL`` (debug|info|warn|error|critical) from the environment;
* :func:`install_for_twistd`, called from the keycast ``Options.postOptions``, selects the same
  observer for the command-line ``--log-format``/``--log-level`` unless the operator chose
  ``--logger`` or ``--syslog``; a twistd ``--logfile`` is honoured (see
  :class:`WatchedFile`);
* :func:`make_observer` builds one explicitly (a .tac file, tests).

Two things differ from Twisted's own observers on purpose. The JSON observer writes a fixed set
of keys plus whitelisted fields, one object per line: ``jsonFileLogObserver`` serialises every
key of every event (a secret passed as an unused keyword argument would be shipped) and separates
records with ``\\x1e``, which Cloud Logging and ``jq`` do not expect. And both formats pass their
output through :func:`redact`, a last guard that masks nsec keys and ``secret=`` URI parameters
should a bug ever put one into a message.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any, cast

import orjson
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    InvalidLogLevelError,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure

FORMATS = ("text", "json")

_LEVEL_ALIASES = {"warning": "warn", "fatal": "critical", "err": "error"}

#: sd-daemon(3) priority prefixes; journald strips them and files the line at that priority,
#: which is what makes ``journalctl -p err`` find our errors.
_JOURNAL_PRIORITY = {
    LogLevel.debug: "<7>",
    LogLevel.info: "<6>",
    LogLevel.warn: "<4>",
    LogLevel.error: "<3>",
    LogLevel.critical: "<2>",
}

#: Twisted namespaces whose info lines repeat one of ours in a less useful form; below debug
#: they show only warnings and up. ClientService's "Scheduling retry N to connect
#: <HostnameEndpoint ...>" duplicates the relay's "Relay URL reconnect in S s (attempt N)".
_DUPLICATING_NAMESPACES = ("twisted.application._client_service.ClientService",)

#: Cloud Logging's severity names.
_SEVERITY = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARNING",
    LogLevel.error: "ERROR",
    LogLevel.critical: "CRITICAL",
}

#: Event fields copied into JSON records. Only names whose values are public by construction
#: (URLs, public keys, ids, counts, durations, reasons) are listed; everything else stays out
#: even if a caller passes it as a keyword argument.
SAFE_FIELDS = frozenset(
    {
        "accepted_by",
        "attempt",
        "authorization_id",
        "bunker",
        "client",
        "code",
        "count",
        "database",
        "delay",
        "elapsed",
        "endpoint",
        "event_id",
        "kind",
        "method",
        "oauth",
        "outcome",
        "path",
        "pid",
        "reason",
        "regular",
        "relay",
        "relay_url",
        "relays",
        "request_id",
        "result",
        "seconds",
        "status",
        "total",
        "url",
        "version",
    }
)

_MAX_FIELD_CHARS = 512

#: C0 controls, DEL, NEL and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_NSEC = re.compile(r"\b(nsec|ncryptsec)1[02-9ac-hj-np-z]{6,}", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"([?&]secret=)[^&\s\"'<>]+", re.IGNORECASE)


class LogConfigError(ValueError):
    """An unknown log format or level; the message names the accepted values."""


def redact(text: str) -> str:
    """Mask nsec/ncryptsec keys and ``secret=`` URI parameters in ``text``."""
    text = _NSEC.sub(lambda m: m.group(1).lower() + "1[redacted]", text)
    return _SECRET_PARAM.sub(r"\1[redacted]", text)


def parse_level(level: str | LogLevel) -> LogLevel:
    """A LogLevel from its name (debug, info, warn/warning, error, critical) or itself."""
    if not isinstance(level, str):
        return level
    name = level.strip().lower()
    try:
        found: LogLevel = LogLevel.levelWithName(_LEVEL_ALIASES.get(name, name))
    except InvalidLogLevelError:
        raise LogConfigError(
            f"log level must be one of debug, info, warn, error, critical, not {level[:20]!r}"
        ) from None
    return found


def _level_of(event: LogEvent) -> LogLevel:
    level = event.get("log_level")
    return cast(LogLevel, level) if level in _SEVERITY else LogLevel.info


def journal_stream_matches(out: IO[Any], environ: Mapping[str, str]) -> bool:
    """True when ``out`` is the journald stream systemd announced in ``JOURNAL_STREAM``.

    systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` for the service's stdout/stderr. The variable
    is inherited by children whose output may go elsewhere (supervisor under systemd, a shell
    redirect), so the descriptor is compared, as systemd.exec(5) recommends, before any line
    gets a ``<N>`` prefix that would otherwise litter a plain file.
    """
    announced = environ.get("JOURNAL_STREAM", "")
    if not announced:
        return False
    try:
        info = os.fstat(out.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return announced == f"{info.st_dev}:{info.st_ino}"


def format_text(event: LogEvent) -> str | None:
    """Twisted's classic text line (continuation lines tab-indented), redacted.

    Control characters in field values are escaped first: values can carry text from the
    outside (a relay's NOTICE or CLOSED reason), and a newline there would start what looks
    like a log line of our own to the runbook's greps ("Unified signer daemon ready").
    """
    text = formatEventAsClassicLogText(_with_escaped_controls(event))
    return None if text is None else redact(text)


def _with_escaped_controls(event: LogEvent) -> LogEvent:
    escaped = {
        key: _CONTROL.sub(_escape_control, value)
        for key, value in event.items()
        if isinstance(value, str) and not key.startswith("log_") and _CONTROL.search(value)
    }
    return {**event, **escaped} if escaped else event


def _escape_control(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def with_journal_priority(
    formatter: Callable[[LogEvent], str | None],
) -> Callable[[LogEvent], str | None]:
    """Prefix every output line with the event's sd-daemon priority (``<3>`` for errors...)."""

    def prefixed(event: LogEvent) -> str | None:
        text = formatter(event)
        if text is None:
            return None
        prefix = _JOURNAL_PRIORITY.get(_level_of(event), "<6>")
        # Every physical line gets the prefix: journald files each line as its own entry, and a
        # traceback's lines must sort with the error that produced them.
        return "".join(prefix + line for line in text.splitlines(keepends=True))

    return prefixed


def _rfc3339(timestamp: object) -> str:
    seconds = timestamp if isinstance(timestamp, int | float) else datetime.now(UTC).timestamp()
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _safe_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value)[:_MAX_FIELD_CHARS])


def json_record(event: LogEvent) -> dict[str, object]:
    """The JSON record of one event: fixed keys, whitelisted fields, a traceback for failures."""
    record: dict[str, object] = {
        "severity": _SEVERITY.get(_level_of(event), "INFO"),
        "message": redact(
            eventAsText(event, includeTimestamp=False, includeSystem=False, includeTraceback=False)
        ),
        "time": _rfc3339(event.get("log_time")),
        "logger": str(event.get("log_namespace", "-")),
    }
    for name in SAFE_FIELDS.intersection(event):
        record[name] = _safe_value(event[name])
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        # "stack_trace" is the field Cloud Error Reporting reads from a JSON payload.
        record["stack_trace"] = redact(failure.getTraceback())
    return record


def format_json(event: LogEvent) -> str | None:
    """One JSON object and a newline per event (NDJSON), or None for an empty event."""
    record = json_record(event)
    if not record["message"] and "stack_trace" not in record:
        return None
    return orjson.dumps(record, default=str).decode("utf-8") + "\n"


class WatchedFile:
    """An append-only log file that reopens its path when log rotation moved the file away.

    Before each write the path is stat()ed and compared with the open descriptor (the idea of
    the stdlib's WatchedFileHandler). logrotate's default ``create`` mode therefore needs no
    signal and no ``postrotate`` step, and ``copytruncate`` works too because the file is opened
    with O_APPEND. One stat per log line is negligible next to the write itself. A file it
    creates is 0640 (owner and group, like the files logrotate creates): twistd's umask does not
    apply to a log opened before it daemonises, and a log says who uses the signer and when.
    """

    encoding = "utf-8"

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = self._open()

    def _open(self) -> IO[str]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")

    def _moved(self) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        current = os.fstat(self._file.fileno())
        return (on_disk.st_dev, on_disk.st_ino) != (current.st_dev, current.st_ino)

    def write(self, text: str) -> None:
        """Write ``text``, first reopening the path if the file was rotated."""
        if self._moved():
            self._file.close()
            self._file = self._open()
        self._file.write(text)

    def flush(self) -> None:
        """Flush to the OS (FileLogObserver calls this after every event)."""
        self._file.flush()

    def fileno(self) -> int:
        """The current descriptor (for the JOURNAL_STREAM comparison)."""
        return self._file.fileno()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def make_observer(
    format: str = "text",
    level: str | LogLevel = "info",
    out: IO[Any] | WatchedFile | None = None,
    environ: Mapping[str, str] | None = None,
) -> ILogObserver:
    """An observer writing ``format`` lines at ``level`` and above to ``out`` (default stdout).

    ``out`` is resolved when the observer is made, not per event: twistd later replaces
    ``sys.stdout`` with a file that logs, and writing our output there would loop.
    """
    if format not in FORMATS:
        raise LogConfigError(f"log format must be text or json, not {format[:20]!r}")
    threshold = parse_level(level)
    stream = cast(IO[Any], out if out is not None else sys.stdout)
    env = environ if environ is not None else os.environ
    formatter: Callable[[LogEvent], str | None] = format_json if format == "json" else format_text
    if journal_stream_matches(stream, env):
        # JSON lines too: journald strips the prefix, so MESSAGE stays valid JSON while
        # ``journalctl -p err`` still finds the errors.
        formatter = with_journal_priority(formatter)
    return FilteringLogObserver(FileLogObserver(stream, formatter), [_level_filter(threshold)])


def _level_filter(threshold: LogLevel) -> LogLevelFilterPredicate:
    """``threshold`` everywhere, raised to warn for the namespaces that duplicate our lines."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=threshold)
    if threshold > LogLevel.debug:
        for namespace in _DUPLICATING_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, max(threshold, LogLevel.warn))
    return predicate


class _TwistdSelection:
    """What :func:`install_for_twistd` chose, read back by :func:`observer` inside twistd."""

    format: str | None = None
    level: str | LogLevel | None = None
    logfile: str | None = None


def observer() -> ILogObserver:
    """Zero-argument factory for ``twistd --logger keycast_tw.logs.observer``.

    Uses the choice made by :func:`install_for_twistd` when there is one, otherwise
    ``KEYCAST_LOG_FORMAT`` and ``KEYCAST_LOG_LEVEL`` (defaults text and info).
    """
    environ = os.environ
    fmt = _TwistdSelection.format or environ.get("KEYCAST_LOG_FORMAT", "text").strip().lower()
    level = _TwistdSelection.level or environ.get("KEYCAST_LOG_LEVEL", "info")
    try:
        out = WatchedFile(_TwistdSelection.logfile) if _TwistdSelection.logfile else None
        return make_observer(fmt, level, out=out, environ=environ)
    except (LogConfigError, OSError) as error:
        # twistd would print a traceback for an operator's typo; one line and status 1 instead.
        raise SystemExit(f"keycast: cannot set up logging: {error}") from None


def install_for_twistd(
    server_options: MutableMapping[str, Any], *, format: str, level: str | LogLevel
) -> bool:
    """Make twistd log through :func:`observer` with ``format`` and ``level``.

    Call it from the plugin's ``Options.postOptions`` with ``self.parent`` (twistd's own
    options, still unprocessed at that point: twistd turns the ``logger`` name into the factory
    right after). An explicit ``--logger`` or ``--syslog`` wins and nothing is changed (returns
    False). A ``--logfile`` other than ``-`` becomes a :class:`WatchedFile`, so logs keep the
    chosen format and level there too and survive logrotate.
    """
    if server_options.get("logger") or server_options.get("syslog"):
        return False
    if format not in FORMATS:
        raise LogConfigError(f"log format must be text or json, not {format[:20]!r}")
    _TwistdSelection.format = format
    _TwistdSelection.level = parse_level(level)
    logfile = server_options.get("logfile")
    if not logfile and not server_options.get("nodaemon"):
        logfile = "twistd.log"  # twistd's own default: a daemon has no stdout
    _TwistdSelection.logfile = logfile if logfile and logfile != "-" else None
    server_options["logger"] = f"{__name__}.observer"
    return True
