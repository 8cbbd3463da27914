# trial's assertion methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""ReloadSignalWatcher: the signal file is consumed only by a reload that succeeded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.reload import ReloadSignalWatcher

INTERVAL = 0.5


@dataclass
class Info:
    """What StoreService.reconcile fires with, reduced to the field the watcher reads."""

    error: str | None = None


class Reloads:
    """A reload callable whose results the test scripts, one per call."""

    def __init__(self) -> None:
        self.calls = 0
        self.results: list[Any] = []

    def __call__(self) -> Deferred[Any]:
        self.calls += 1
        result = self.results.pop(0) if self.results else succeed(Info())
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, Deferred)
        return result


class WatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.signal = Path(self.mktemp())
        self.reloads = Reloads()
        self.watcher = ReloadSignalWatcher(
            str(self.signal), reload=self.reloads, clock=self.clock, interval=INTERVAL
        )
        self.watcher.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.watcher.running:
            self.watcher.stopService()

    def tick(self) -> None:
        self.clock.advance(INTERVAL)

    def test_no_file_no_reload(self) -> None:
        """Without the signal file nothing is reloaded."""
        for _ in range(3):
            self.tick()
        self.assertEqual(self.reloads.calls, 0)

    def test_file_triggers_reload_then_removed(self) -> None:
        """The file triggers one reload and is removed only once the reload succeeded."""
        pending: Deferred[Any] = Deferred()
        self.reloads.results.append(pending)
        self.signal.write_text("")
        self.tick()
        self.assertEqual(self.reloads.calls, 1)
        self.assertTrue(self.signal.exists(), "removed before the reload finished")
        pending.callback(Info())
        self.assertFalse(self.signal.exists())
        self.tick()
        self.assertEqual(self.reloads.calls, 1)

    def test_reported_error_keeps_file_and_retries(self) -> None:
        """A reload that reports an error keeps the file; the next tick tries again."""
        self.fails_then_recovers(succeed(Info(error="database is locked")))

    def fails_then_recovers(self, first: Any) -> None:
        """The first reload ends with ``first``; the file stays, the next tick retries it."""
        self.reloads.results.append(first)
        self.signal.write_text("")
        with capturedLogs() as events:
            self.tick()
        self.assertTrue(self.signal.exists())
        self.assertTrue(any(e["log_level"] == LogLevel.error for e in events))
        self.tick()
        self.assertEqual(self.reloads.calls, 2)
        self.assertFalse(self.signal.exists())

    def test_failed_deferred_keeps_loop_alive(self) -> None:
        """A reload whose Deferred fails keeps the file and the LoopingCall running."""
        self.fails_then_recovers(fail(RuntimeError("boom")))

    def test_raising_reload_keeps_loop_alive(self) -> None:
        """A reload that raises synchronously is logged and retried, never fatal to the loop."""
        self.fails_then_recovers(RuntimeError("boom"))

    def test_no_overlap(self) -> None:
        """While a reload is running further ticks start no second one."""
        pending: Deferred[Any] = Deferred()
        self.reloads.results.append(pending)
        self.signal.write_text("")
        for _ in range(5):
            self.tick()
        self.assertEqual(self.reloads.calls, 1)
        pending.callback(Info())
        self.signal.write_text("")
        self.tick()
        self.assertEqual(self.reloads.calls, 2)

    def test_unreadable_path_is_absent(self) -> None:
        """An OSError while looking for the file counts as no signal; the loop goes on."""
        errors: list[str] = []

        def lstat(path: str) -> os.stat_result:
            errors.append(path)
            raise PermissionError(13, "Permission denied")

        watcher = ReloadSignalWatcher(
            "/x", reload=self.reloads, clock=self.clock, interval=INTERVAL, lstat=lstat
        )
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.tick()
        self.tick()
        self.assertEqual((len(errors), self.reloads.calls), (2, 0))

    def test_remove_failure_reloads_once_until_the_file_changes(self) -> None:
        """A signal file that cannot be removed is reloaded for once and logged once, not on
        every tick; touching it again (a new mtime) is a new signal."""

        def remove(path: str) -> None:
            raise PermissionError(13, "Permission denied")

        watcher = ReloadSignalWatcher(
            str(self.signal), reload=self.reloads, clock=self.clock, interval=INTERVAL,
            remove=remove,
        )  # fmt: skip
        self.watcher.stopService()
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.signal.write_text("")
        with capturedLogs() as events:
            for _ in range(5):
                self.tick()
        self.assertEqual(self.reloads.calls, 1)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        later = self.signal.stat().st_mtime_ns + 1_000_000
        os.utime(self.signal, ns=(later, later))
        self.tick()
        self.assertEqual(self.reloads.calls, 2)

    def test_directory_is_not_a_signal(self) -> None:
        """A directory (or anything but a regular file) at the path triggers no reload; it is
        reported once, not on every tick."""
        self.signal.mkdir()
        with capturedLogs() as events:
            for _ in range(5):
                self.tick()
        self.assertEqual(self.reloads.calls, 0)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.signal.rmdir()
        self.signal.write_text("")
        self.tick()
        self.assertEqual(self.reloads.calls, 1)

    def test_stop_stops_ticking(self) -> None:
        """After stopService the file is no longer looked at."""
        self.watcher.stopService()
        self.signal.write_text("")
        self.tick()
        self.assertEqual(self.reloads.calls, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
