"""What every ``keycast`` command shares: configuration, streams, the database and the cipher.

Commands get a Context instead of reaching for sys.stdout, os.environ or the clock, so the tests
can run them in-process with fakes, and so the one place that opens the database also decides
how errors surface (CliError carries the exit status; main.py prints it without a traceback).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from keycast_tw.cli.output import table, to_json
from keycast_tw.config import KeycastConfig
from keycast_tw.store.crypto import SecretCipher, open_cipher
from keycast_tw.store.db import open_database
from keycast_tw.store.runner import ConnectionRunner

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1  # operational: missing master key, locked database, daemon not ready
EXIT_USAGE = 2  # the operator's input is wrong (and `check`: daemon unreachable)


class CliError(Exception):
    """Stop the command: print ``message`` on stderr and exit with ``status``."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    config: KeycastConfig
    environ: Mapping[str, str] = field(repr=False)  # may hold credentials
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    clock: Callable[[], float] = time.time
    _conn: sqlite3.Connection | None = field(default=None, repr=False)
    _cipher: SecretCipher | None = field(default=None, repr=False)

    def out(self, line: str = "") -> None:
        self.stdout.write(line + "\n")

    def listing(
        self,
        *,
        as_json: bool,
        records: Sequence[object],
        headers: Sequence[str],
        rows: Sequence[Sequence[object]],
        empty: str,
    ) -> int:
        """Print a listing as JSON (``records``), as a table, or ``empty`` when there is none."""
        if as_json:
            self.out(to_json(records))
        elif not rows:
            self.out(empty)
        else:
            for line in table(headers, rows):
                self.out(line)
        return EXIT_OK

    def warn(self, line: str) -> None:
        self.stderr.write(f"keycast: {line}\n")

    def database(self, *, create: bool = False) -> sqlite3.Connection:
        """The database, opened (and migrated) once per command."""
        if self._conn is None:
            self._conn = open_database(self.config.database_path, create=create)
        return self._conn

    def cipher(self) -> SecretCipher:
        """The master key's cipher, from the key file or through one Cloud KMS call.

        KMS needs the reactor (treq); wait_for runs it only in that case, because the file path
        completes synchronously. Opened once per command: a reactor cannot run twice.
        """
        if self._cipher is not None:
            return self._cipher
        kms = None
        if self.config.kms is not None:
            from keycast_tw.store.kms import GcpKms

            show_warnings(self.stderr)
            kms = GcpKms(self.config.kms.key_resource, api_base=self.config.kms.api_base)
        self._cipher = wait_for(
            open_cipher(
                ConnectionRunner(self.database(), self.config.database_path),
                master_key_path=self.config.master_key_path,
                kms=kms,
            )
        )
        return self._cipher

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def show_warnings(stream: TextIO) -> None:
    """Send warnings logged through twisted.logger (KMS retries) to ``stream``.

    A Cloud KMS call may retry for several seconds; without this the operator would stare at a
    silent terminal. Once per process, as twisted.logger allows.
    """
    observer = FilteringLogObserver(
        textFileLogObserver(stream),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def wait_for(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code and return its result.

    A coroutine that never waits on I/O (the file master key) finishes immediately and the
    reactor is not touched. Otherwise the global reactor runs until the result is in; a CLI
    process does this at most once, which is all a reactor allows.
    """
    outcome: list[T | Failure] = []
    deferred = Deferred.fromCoroutine(coroutine)
    deferred.addBoth(outcome.append)
    if not outcome:
        from twisted.internet import reactor

        def stop(_: object) -> None:
            if reactor.running:
                reactor.stop()

        deferred.addBoth(stop)
        reactor.run()
        if not outcome:
            raise CliError("interrupted")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
