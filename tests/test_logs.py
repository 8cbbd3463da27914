"""Tests for keycast_tw.logs: text/json observers, journald priorities, redaction, twistd wiring."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import orjson
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw import logs
from keycast_tw.logs import (
    LogConfigError,
    WatchedFile,
    install_for_twistd,
    json_record,
    make_observer,
    parse_level,
    redact,
)

NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"
ALL_LEVELS = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
BUNKER = "bunker://" + "ab" * 32 + "?relay=wss%3A%2F%2Fr.example&secret=s3cr3t-value"


def emit(observer: Any, **event: Any) -> None:
    """Send one event shaped like Logger's, with a fixed time, to ``observer``."""
    event.setdefault("log_time", 1767225600.25)  # 2026-01-01T00:00:00.250Z
    event.setdefault("log_namespace", "keycast_tw.test")
    event.setdefault("log_level", LogLevel.info)
    observer(event)


class TextObserverTests(SynchronousTestCase):
    """Classic text lines, level filtering and journald prefixes."""

    def test_text_line(self) -> None:
        """A text record is Twisted's classic line: time, [namespace#level], message."""
        out = io.StringIO()
        observer = make_observer("text", "info", out=out, environ={})
        emit(observer, log_format="Relay {relay_url} open", relay_url="wss://r.example")
        line = out.getvalue()
        self.assertTrue(line.endswith("[keycast_tw.test#info] Relay wss://r.example open\n"))
        self.assertEqual(line.count("\n"), 1)

    def test_level_filter(self) -> None:
        """Events below the chosen level are dropped, those at or above it are written."""
        out = io.StringIO()
        observer = make_observer("text", "warn", out=out, environ={})
        emit(observer, log_format="quiet", log_level=LogLevel.info)
        emit(observer, log_format="loud", log_level=LogLevel.warn)
        emit(observer, log_format="louder", log_level=LogLevel.error)
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("loud", out.getvalue())
        self.assertIn("louder", out.getvalue())

    def test_debug_level(self) -> None:
        """At debug level, debug events are written."""
        out = io.StringIO()
        emit(
            make_observer("text", "debug", out=out, environ={}),
            log_format="d",
            log_level=LogLevel.debug,
        )
        self.assertIn("[keycast_tw.test#debug] d", out.getvalue())

    def test_client_service_retry_lines_quiet_below_debug(self) -> None:
        """ClientService's retry schedule (our relay logs its own) shows at debug only; its
        warnings always show, and other namespaces keep the chosen level."""
        service = "twisted.application._client_service.ClientService"
        cases = (("info", ["warned", "ours"]), ("debug", ["retry", "warned", "ours"]))
        for level, expected in cases:
            out = io.StringIO()
            observer = make_observer("text", level, out=out, environ={})
            emit(observer, log_namespace=service, log_format="retry")
            emit(observer, log_namespace=service, log_format="warned", log_level=LogLevel.warn)
            emit(observer, log_format="ours")
            messages = [line.rsplit(" ", 1)[1] for line in out.getvalue().splitlines()]
            self.assertEqual(messages, expected, level)

    def test_unused_kwargs_not_written(self) -> None:
        """Keyword arguments that the format string does not name never appear."""
        out = io.StringIO()
        emit(make_observer("text", "info", out=out, environ={}), log_format="hi", extra="zzz")
        self.assertNotIn("zzz", out.getvalue())

    def journal_file(self, **environ: str) -> tuple[Any, dict[str, str]]:
        """A real file and a JOURNAL_STREAM that names it."""
        handle = open(self.mktemp(), "w+", encoding="utf-8")  # noqa: SIM115
        self.addCleanup(handle.close)
        info = os.fstat(handle.fileno())
        return handle, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}", **environ}

    def test_journal_priorities(self) -> None:
        """With stdout on the journal, each line carries its sd-daemon priority prefix."""
        handle, environ = self.journal_file()
        observer = make_observer("text", "debug", out=handle, environ=environ)
        for level in ALL_LEVELS:
            emit(observer, log_format=level.name, log_level=level)
        handle.seek(0)
        prefixes = [line[:3] for line in handle.read().splitlines()]
        self.assertEqual(prefixes, ["<7>", "<6>", "<4>", "<3>", "<2>"])

    def test_journal_traceback_lines_prefixed(self) -> None:
        """Every line of a failure's traceback gets the error priority."""
        handle, environ = self.journal_file()
        observer = make_observer("text", "info", out=handle, environ=environ)
        try:
            1 / 0
        except ZeroDivisionError:
            emit(observer, log_format="boom", log_level=LogLevel.critical, log_failure=Failure())
        handle.seek(0)
        lines = handle.read().splitlines()
        self.assertGreater(len(lines), 3)
        self.assertTrue(all(line.startswith("<2>") for line in lines), lines)

    def test_journal_json(self) -> None:
        """JSON lines on the journal get the prefix too, leaving valid JSON after it."""
        handle, environ = self.journal_file()
        observer = make_observer("json", "info", out=handle, environ=environ)
        emit(observer, log_format="bad", log_level=LogLevel.error)
        handle.seek(0)
        line = handle.read()
        self.assertTrue(line.startswith("<3>{"))
        self.assertEqual(orjson.loads(line[3:])["severity"], "ERROR")

    def test_journal_stream_of_another_file(self) -> None:
        """A JOURNAL_STREAM inherited from a parent but naming another file adds no prefix."""
        out = io.StringIO()
        emit(
            make_observer("text", "info", out=out, environ={"JOURNAL_STREAM": "8:1234"}),
            log_format="plain",
        )
        self.assertNotIn("<6>", out.getvalue())
        _journal, environ = self.journal_file()
        other = open(self.mktemp(), "w+", encoding="utf-8")  # noqa: SIM115
        self.addCleanup(other.close)
        emit(make_observer("text", "info", out=other, environ=environ), log_format="plain")
        other.seek(0)
        self.assertFalse(other.read().startswith("<"))

    def test_text_redacted(self) -> None:
        """An nsec or a bunker secret in a message is masked in text output."""
        out = io.StringIO()
        emit(
            make_observer("text", "info", out=out, environ={}),
            log_format="{a} {b}",
            a=NSEC,
            b=BUNKER,
        )
        self.assertNotIn(NSEC[10:], out.getvalue())
        self.assertNotIn("s3cr3t", out.getvalue())
        self.assertIn("nsec1[redacted]", out.getvalue())
        self.assertIn("&secret=[redacted]", out.getvalue())


class JsonObserverTests(SynchronousTestCase):
    """One JSON object per line with a fixed, safe set of keys."""

    def records(self, out: io.StringIO) -> list[dict[str, Any]]:
        """Parse NDJSON output, asserting there are no RS separators."""
        text = out.getvalue()
        self.assertNotIn("\x1e", text)
        return [orjson.loads(line) for line in text.splitlines()]

    def test_record_shape(self) -> None:
        """A record has severity, rendered message, RFC3339 time, logger and safe fields only."""
        out = io.StringIO()
        observer = make_observer("json", "info", out=out, environ={})
        emit(
            observer,
            log_format="Processing NIP-46 method: {method}",
            method="sign_event",
            plaintext="do not ship",
            secret="nope",
            relay_url="wss://r",
        )
        [record] = self.records(out)
        self.assertEqual(
            record,
            {
                "severity": "INFO",
                "message": "Processing NIP-46 method: sign_event",
                "time": "2026-01-01T00:00:00.250Z",
                "logger": "keycast_tw.test",
                "method": "sign_event",
                "relay_url": "wss://r",
            },
        )

    def test_severity_names(self) -> None:
        """Twisted levels map to Cloud Logging severities."""
        out = io.StringIO()
        observer = make_observer("json", "debug", out=out, environ={})
        for level in ALL_LEVELS:
            emit(observer, log_format="x", log_level=level)
        self.assertEqual(
            [r["severity"] for r in self.records(out)],
            ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        )

    def test_failure_traceback(self) -> None:
        """log.failure adds the rendered traceback as stack_trace, still one line per event."""
        out = io.StringIO()
        log = Logger(
            namespace="keycast_tw.x", observer=make_observer("json", "info", out=out, environ={})
        )
        try:
            raise ValueError("bad thing")
        except ValueError:
            log.failure("Reload failed")
        [record] = self.records(out)
        self.assertEqual(record["severity"], "CRITICAL")
        self.assertEqual(record["message"], "Reload failed")
        self.assertIn("ValueError: bad thing", record["stack_trace"])
        self.assertIn("Traceback", record["stack_trace"])

    def test_json_redacted(self) -> None:
        """Messages, safe fields and tracebacks are redacted."""
        record = json_record(
            {
                "log_format": "uri {reason}",
                "reason": BUNKER,
                "log_level": LogLevel.info,
                "log_namespace": "n",
                "log_time": 0.0,
                "url": NSEC,
            }
        )
        dumped = orjson.dumps(record).decode()
        self.assertNotIn("s3cr3t", dumped)
        self.assertNotIn(NSEC, dumped)

    def test_long_field_truncated(self) -> None:
        """A huge safe field is cut so one event cannot flood the log."""
        record = json_record({"log_format": "x", "reason": "r" * 10_000, "log_time": 0.0})
        self.assertEqual(len(str(record["reason"])), 512)

    def test_legacy_event(self) -> None:
        """A twisted.python.log-style event without a namespace still becomes a valid record."""
        record = json_record(
            {"log_format": "{log_text}", "log_text": "legacy", "log_level": LogLevel.info}
        )
        self.assertEqual((record["message"], record["logger"]), ("legacy", "-"))
        self.assertTrue(str(record["time"]).endswith("Z"))


class ConfigTests(SynchronousTestCase):
    """Format and level names, and the twistd --logger wiring."""

    def setUp(self) -> None:
        for name in ("format", "level", "logfile"):
            self.patch(logs._TwistdSelection, name, None)

    def test_parse_level(self) -> None:
        """Level names and aliases parse; LogLevel passes through; junk is a LogConfigError."""
        self.assertIs(parse_level("WARNING"), LogLevel.warn)
        self.assertIs(parse_level("error"), LogLevel.error)
        self.assertIs(parse_level(LogLevel.debug), LogLevel.debug)
        with self.assertRaises(LogConfigError) as raised:
            parse_level("loud")
        self.assertIn("debug, info, warn, error", str(raised.exception))

    def test_bad_format(self) -> None:
        """An unknown format is a LogConfigError naming the choices."""
        with self.assertRaises(LogConfigError) as raised:
            make_observer("xml", "info", out=io.StringIO())
        self.assertIn("text or json", str(raised.exception))

    def test_observer_reads_environment(self) -> None:
        """The zero-argument factory follows KEYCAST_LOG_FORMAT and KEYCAST_LOG_LEVEL."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(os, "environ", {"KEYCAST_LOG_FORMAT": "json", "KEYCAST_LOG_LEVEL": "error"})
        observer = logs.observer()
        emit(observer, log_format="dropped", log_level=LogLevel.warn)
        emit(observer, log_format="kept", log_level=LogLevel.error)
        [line] = out.getvalue().splitlines()
        self.assertEqual(orjson.loads(line)["message"], "kept")

    def test_observer_bad_environment(self) -> None:
        """A bad KEYCAST_LOG_LEVEL stops twistd with one line instead of a traceback."""
        self.patch(os, "environ", {"KEYCAST_LOG_LEVEL": "chatty"})
        with self.assertRaises(SystemExit) as raised:
            logs.observer()
        self.assertIn("cannot set up logging: log level must be", str(raised.exception))

    def test_install_for_twistd(self) -> None:
        """install_for_twistd names our factory, which twistd's own options then import."""
        options = ServerOptions()
        options["nodaemon"] = True
        self.assertTrue(install_for_twistd(options, format="json", level="debug"))
        options.postOptions()
        self.assertIs(options["logger"], logs.observer)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        emit(logs.observer(), log_format="dbg", log_level=LogLevel.debug)
        self.assertEqual(orjson.loads(out.getvalue())["severity"], "DEBUG")

    def test_install_respects_operator_choice(self) -> None:
        """An explicit --logger or --syslog is left alone."""
        self.assertFalse(install_for_twistd({"logger": "x.y"}, format="json", level="info"))
        self.assertFalse(install_for_twistd({"syslog": True}, format="json", level="info"))
        self.assertIsNone(logs._TwistdSelection.format)

    def test_install_with_logfile(self) -> None:
        """A twistd --logfile gets our format, written through a WatchedFile."""
        path = self.mktemp()
        opened: list[WatchedFile] = []

        class ClosedAfterTest(WatchedFile):
            def __init__(self, path: str) -> None:
                super().__init__(path)
                opened.append(self)

        self.patch(logs, "WatchedFile", ClosedAfterTest)
        self.addCleanup(lambda: [f.close() for f in opened])
        options = {"logfile": path, "nodaemon": True}
        install_for_twistd(options, format="json", level="info")
        observer = logs.observer()
        self.assertEqual(len(opened), 1)
        emit(observer, log_format="to file")
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(orjson.loads(handle.read())["message"], "to file")

    def test_install_daemon_default_logfile(self) -> None:
        """Without -n and --logfile, the log goes to twistd's default twistd.log."""
        install_for_twistd({"nodaemon": False}, format="text", level="info")
        self.assertEqual(logs._TwistdSelection.logfile, "twistd.log")


class WatchedFileTests(SynchronousTestCase):
    """The log file follows logrotate's create and copytruncate modes."""

    def test_created_without_world_access(self) -> None:
        """A log file it creates, at start or after rotation, is 0640 under a 022 umask."""
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        path = self.mktemp()
        watched = WatchedFile(path)
        self.addCleanup(watched.close)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        os.rename(path, path + ".1")
        watched.write("two\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)

    def test_reopens_after_rename(self) -> None:
        """After the file is renamed away, the next write creates and uses a new file."""
        path = self.mktemp()
        watched = WatchedFile(path)
        self.addCleanup(watched.close)
        watched.write("one\n")
        watched.flush()
        os.rename(path, path + ".1")
        watched.write("two\n")
        watched.flush()
        with open(path + ".1", encoding="utf-8") as old, open(path, encoding="utf-8") as new:
            self.assertEqual((old.read(), new.read()), ("one\n", "two\n"))

    def test_reopens_after_delete(self) -> None:
        """A deleted log file is recreated on the next write."""
        path = self.mktemp()
        watched = WatchedFile(path)
        self.addCleanup(watched.close)
        os.remove(path)
        watched.write("back\n")
        watched.flush()
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "back\n")

    def test_copytruncate(self) -> None:
        """After an external truncate, writes land at the start (O_APPEND), not at a hole."""
        path = self.mktemp()
        watched = WatchedFile(path)
        self.addCleanup(watched.close)
        watched.write("x" * 100 + "\n")
        watched.flush()
        os.truncate(path, 0)
        watched.write("after\n")
        watched.flush()
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "after\n")


class RedactTests(SynchronousTestCase):
    """The last-line guard against secrets in log text."""

    def test_redact(self) -> None:
        """nsec/ncryptsec keys and secret= parameters are masked; other text is untouched."""
        self.assertEqual(redact(f"key {NSEC}."), "key nsec1[redacted].")
        self.assertEqual(
            redact(
                "ncryptsec1qgg9947rlpvqu76pj5ecreduf9jxhselq2nae2kghhvd5g7dgjtcxfqtd67p9m0w57lspw8gsq6yphnm8623nsl8xn9j4jdzz84zm3frztj3z7s35vpzmqf6ksu8r89qk5z2zxfmu5gv8th8wclt0h4p"
            ),
            "ncryptsec1[redacted]",
        )
        self.assertEqual(
            redact("a?secret=abc&b=1 c&SECRET=zz"), "a?secret=[redacted]&b=1 c&SECRET=[redacted]"
        )
        self.assertEqual(redact("npub1abc secretary=x"), "npub1abc secretary=x")


class ControlCharacterTests(SynchronousTestCase):
    def test_outside_text_cannot_forge_a_line(self) -> None:
        """A relay's text with newlines, carriage returns or Unicode line separators stays on
        its one line, escaped, so a grep for a runbook line cannot match a forged one."""
        out = io.StringIO()
        observer = make_observer("text", "info", out=out, environ={})
        forged = "hi\n2026-01-01 [keycast_tw.service#info] Unified signer daemon ready\r\u2028x"
        emit(observer, log_format="Relay notice: {notice}", notice=forged)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        expected = (
            "Relay notice: hi\\x0a2026-01-01 [keycast_tw.service#info]"
            " Unified signer daemon ready\\x0d\\u2028x"
        )
        self.assertTrue(lines[0].endswith(expected))

    def test_tracebacks_keep_their_lines(self) -> None:
        """Only field values are escaped: a failure's traceback is still multi-line."""
        out = io.StringIO()
        observer = make_observer("text", "info", out=out, environ={})
        try:
            raise ValueError("boom")
        except ValueError:
            emit(observer, log_format="failed", log_failure=Failure(), log_level=LogLevel.error)
        self.assertGreater(len(out.getvalue().splitlines()), 2)
