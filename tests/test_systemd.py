"""Tests for keycast_tw.systemd: sd_notify datagrams on a real socket, watchdog on task.Clock."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.systemd import SystemdNotifier, WatchdogService, watchdog_interval


class Listener:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[bytes]:
        """Every datagram received so far."""
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096))
            except BlockingIOError:
                return received

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class NotifierTests(SynchronousTestCase):
    """Datagrams as systemd expects them, and silence without NOTIFY_SOCKET."""

    def listen(self) -> tuple[Listener, SystemdNotifier]:
        """A listener on a filesystem socket and a notifier pointed at it."""
        # sun_path holds 107 bytes and NOTIFY_SOCKET must be absolute: a path under
        # _trial_temp can exceed that on a CI checkout with a longer root, so use /tmp.
        directory = tempfile.mkdtemp(prefix="kc-notify-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "notify")
        listener = Listener(path)
        self.addCleanup(listener.close)
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path})
        self.addCleanup(notifier.close)
        return listener, notifier

    def test_ready_status_watchdog_stopping(self) -> None:
        """Each call sends one datagram with the sd_notify assignments."""
        listener, notifier = self.listen()
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.ready("Serving 3 bunkers"))
        self.assertTrue(notifier.status("2/3 relays\nconnected"))
        self.assertTrue(notifier.watchdog())
        self.assertTrue(notifier.stopping())
        self.assertEqual(
            listener.messages(),
            [
                b"READY=1\nSTATUS=Serving 3 bunkers",
                b"STATUS=2/3 relays connected",
                b"WATCHDOG=1",
                b"STOPPING=1",
            ],
        )

    def test_abstract_namespace(self) -> None:
        """An '@' NOTIFY_SOCKET is the abstract namespace (Linux)."""
        name = f"keycast-test-{os.getpid()}-{id(self)}"
        listener = Listener("\0" + name)
        self.addCleanup(listener.close)
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": "@" + name})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.ready())
        self.assertEqual(listener.messages(), [b"READY=1"])

    def test_disabled_without_socket(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent and no socket is made."""

        def no_socket() -> socket.socket:
            raise AssertionError("no socket should be created")

        notifier = SystemdNotifier(environ={}, socket_factory=no_socket)
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.watchdog())

    def test_unsupported_address(self) -> None:
        """An address kind we do not speak (vsock) disables notifications with a warning."""
        with capturedLogs() as events:
            notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
        self.assertFalse(notifier.enabled)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])

    def test_send_error_logged_not_raised(self) -> None:
        """A socket whose listener vanished gives False and a warning, never an exception."""
        path = os.path.abspath(self.mktemp())
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path})
        self.addCleanup(notifier.close)
        with capturedLogs() as events:
            self.assertFalse(notifier.ready())
        self.assertEqual(events[0]["assignment"], "READY=1")


class WatchdogIntervalTests(SynchronousTestCase):
    """WATCHDOG_USEC and WATCHDOG_PID parsing."""

    def test_half_of_usec(self) -> None:
        """The ping interval is half the watchdog timeout."""
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 15.0)

    def test_pid_must_match(self) -> None:
        """WATCHDOG_PID naming another process means the watchdog is not ours."""
        env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "99"}
        self.assertEqual(watchdog_interval(env, getpid=lambda: 99), 5.0)
        self.assertIsNone(watchdog_interval(env, getpid=lambda: 100))

    def test_absent_or_invalid(self) -> None:
        """No, zero or junk WATCHDOG_USEC means no watchdog."""
        for env in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "x"}):
            self.assertIsNone(watchdog_interval(env))


class RecordingNotifier(SystemdNotifier):
    """A notifier that records instead of sending."""

    def __init__(self, enabled: bool = True, environ: dict[str, str] | None = None) -> None:
        super().__init__(environ=environ or ({"NOTIFY_SOCKET": "/run/x"} if enabled else {}))
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *assignments: str) -> bool:
        """Record the assignments."""
        if not self.enabled:
            return False
        self.sent.append(assignments)
        return True


class WatchdogServiceTests(SynchronousTestCase):
    """Pings on the clock, only while healthy."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.notifier = RecordingNotifier()
        self.healthy = True
        self.events: list[dict[str, Any]] = []
        self.service = WatchdogService(self.notifier, self.clock, lambda: self.healthy, 10.0)
        self.service.log = Logger(observer=self.events.append)

    def pings(self) -> int:
        """WATCHDOG=1 datagrams so far."""
        return self.notifier.sent.count(("WATCHDOG=1",))

    def test_pings_periodically(self) -> None:
        """One ping at start, then one per interval."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(self.pings(), 1)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(self.pings(), 3)

    def test_withholds_while_unhealthy(self) -> None:
        """No pings while unhealthy (logged once), and they resume on recovery."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.healthy = False
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(self.pings(), 1)
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.healthy = True
        self.clock.advance(10)
        self.assertEqual(self.pings(), 2)

    def test_health_check_raising_is_unhealthy(self) -> None:
        """A health predicate that raises withholds the ping and is logged."""

        def broken() -> bool:
            raise RuntimeError("no")

        service = WatchdogService(self.notifier, self.clock, broken, 10.0)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(self.pings(), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop(self) -> None:
        """After stopService no more pings are scheduled."""
        self.service.startService()
        self.service.stopService()
        self.clock.advance(100)
        self.assertEqual(self.pings(), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_watchdog_configured(self) -> None:
        """Without WATCHDOG_USEC (interval None) nothing is scheduled."""
        service = WatchdogService(self.notifier, self.clock, lambda: True)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((self.pings(), self.clock.getDelayedCalls()), (0, []))

    def test_interval_from_environment(self) -> None:
        """The interval defaults to half of WATCHDOG_USEC from the notifier's environment."""
        notifier = RecordingNotifier(
            environ={"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000"}
        )
        service = WatchdogService(notifier, self.clock, lambda: True)
        self.assertEqual(service.interval, 2.0)

    def test_not_under_systemd(self) -> None:
        """Without NOTIFY_SOCKET the service does nothing."""
        service = WatchdogService(RecordingNotifier(enabled=False), self.clock, lambda: True, 5)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(self.clock.getDelayedCalls(), [])
