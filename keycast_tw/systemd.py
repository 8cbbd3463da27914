"""sd_notify(3) over NOTIFY_SOCKET, with plain sockets: READY, STATUS, WATCHDOG, STOPPING.

With ``Type=notify`` systemd considers the unit started only when the daemon says READY=1, so
``systemctl start`` and units ordered after it wait for a daemon that really serves (not just
a process that exists). With ``WatchdogSec=`` systemd kills and restarts a daemon that stops
sending WATCHDOG=1; :class:`WatchdogService` sends it from the reactor, and only while the
daemon's own health check passes, so a wedged reactor or a daemon cut off from every relay is
restarted instead of sitting there. Everything is a no-op when NOTIFY_SOCKET is unset (Docker,
supervisor, a terminal), so the same code runs everywhere. The protocol is a few datagrams on
an AF_UNIX socket; no dependency is worth it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def _notify_address(environ: Mapping[str, str]) -> str | None:
    """The datagram address from NOTIFY_SOCKET (``@name`` is the abstract namespace)."""
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _unix_datagram_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


class SystemdNotifier:
    """Sends sd_notify messages; every method is a no-op returning False without NOTIFY_SOCKET.

    Sending never raises: a lost notification must not take the daemon down (systemd will
    time the start out or fire the watchdog, which is the right outcome), so errors are logged.
    """

    log = Logger()

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        socket_factory: Callable[[], socket.socket] = _unix_datagram_socket,
    ) -> None:
        self.environ = environ if environ is not None else os.environ
        self._address = _notify_address(self.environ)
        self._socket_factory = socket_factory
        self._socket: socket.socket | None = None
        if self.environ.get("NOTIFY_SOCKET") and self._address is None:
            self.log.warn(
                "Unsupported NOTIFY_SOCKET {path}; systemd notifications are off",
                path=self.environ["NOTIFY_SOCKET"][:100],
            )

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was handed to the socket."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = self._socket_factory()
            self._socket.sendto(payload, self._address)
        except OSError as error:
            self.log.warn(
                "systemd notification {assignment} not sent: {reason}",
                assignment=assignments[0] if assignments else "",
                reason=error.strerror or str(error),
            )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (and STATUS=): startup is complete and the daemon serves."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=: the one-line state shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the daemon is alive and healthy."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: a graceful stop has begun."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket (a later notification reopens it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    """STATUS values are single lines: a newline would start a new assignment."""
    return " ".join(text.split())[:200]


def watchdog_interval(
    environ: Mapping[str, str] | None = None, *, getpid: Callable[[], int] = os.getpid
) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    None when no watchdog is configured, when the value is invalid, or when WATCHDOG_PID names
    another process (the variables were inherited, not meant for us).
    """
    env = environ if environ is not None else os.environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != getpid()):
        return None
    return int(usec) / 2_000_000


class WatchdogService(Service):
    """Sends WATCHDOG=1 every ``interval`` seconds while ``healthy()`` is true.

    The lead passes a health predicate such as "the reactor turns and a relay is connected or
    was recently"; when it turns false the pings stop and systemd restarts the unit after
    WatchdogSec. The predicate is asked on the reactor, so a wedged reactor also stops them.
    """

    log = Logger()

    def __init__(
        self,
        notifier: SystemdNotifier,
        clock: IReactorTime,
        healthy: Callable[[], bool],
        interval: float | None = None,
    ) -> None:
        self.setName("watchdog")  # type: ignore[no-untyped-call]
        self.notifier = notifier
        self.clock = clock
        self.healthy = healthy
        self.interval = interval if interval is not None else watchdog_interval(notifier.environ)
        self._loop: LoopingCall | None = None
        self._was_healthy = True

    def startService(self) -> None:
        """Start pinging if systemd asked for a watchdog."""
        super().startService()  # type: ignore[no-untyped-call]
        if not self.notifier.enabled or not self.interval:
            return
        self.log.info("systemd watchdog: pinging every {seconds}s", seconds=self.interval)
        self._loop = LoopingCall(self.ping)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """Stop pinging."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()  # type: ignore[no-untyped-call]

    def ping(self) -> None:
        """One watchdog tick: ping if healthy, log once on each health transition."""
        try:
            healthy = bool(self.healthy())
        except Exception:
            self.log.failure("Health check for the systemd watchdog failed")
            healthy = False
        if healthy:
            if not self._was_healthy:
                self.log.info("Healthy again; resuming systemd watchdog pings")
            self.notifier.watchdog()
        elif self._was_healthy:
            self.log.error("Unhealthy; withholding systemd watchdog pings so systemd restarts us")
        self._was_healthy = healthy
