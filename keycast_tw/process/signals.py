"""Signals and exit status: graceful stop that exits 0, SIGHUP reload, fatal errors that exit 1.

twistd's reactor handles SIGTERM/SIGINT by stopping and *recording* the signal; after shutdown
twistd re-raises it on itself, so a clean ``systemctl stop``/``docker stop`` ends with status
143 (or 130) instead of 0. :func:`install_signal_handlers` replaces those two handlers once the
reactor runs: same graceful stop (twistd's "before shutdown" trigger stops the service tree,
which drains), nothing recorded, exit status 0. A second signal while stopping is logged and
ignored; the drain is bounded by the service tree, and a supervisor's SIGKILL remains the
last resort.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger(namespace="keycast_tw.process")

SignalInstaller = Callable[[int, Callable[[int, FrameType | None], Any]], Any]


def _stop(reactor: IReactorCore) -> None:
    """Stop the reactor unless it is already stopping."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        _log.info("Already shutting down")


def _reload_failed(failure: Failure, log: Logger) -> None:
    """A reload that fails later (its Deferred) is logged like one that raises at once."""
    log.failure("Reload requested by SIGHUP failed", failure)


def install_signal_handlers(
    reactor: IReactorCore,
    *,
    on_reload: Callable[[], object],
    install: SignalInstaller = signal.signal,
    log: Logger = _log,
) -> None:
    """SIGTERM/SIGINT stop the reactor gracefully (exit status 0); SIGHUP calls ``on_reload``.

    Call it through ``reactor.callWhenRunning`` so that it runs after the reactor installed its
    own handlers. The Python-level handlers only hand work to the reactor with
    ``callFromThread``, which is safe from a signal handler and wakes the event loop.
    """
    from_thread = IReactorFromThreads(reactor)
    stopping = False

    def request_stop(number: int, frame: FrameType | None) -> None:
        nonlocal stopping
        name = signal.Signals(number).name
        if stopping:
            log.warn("Received {signal} again; shutdown already in progress", signal=name)
            return
        stopping = True
        log.info("Received {signal}, shutting down gracefully", signal=name)
        from_thread.callFromThread(_stop, reactor)

    def run_reload() -> None:
        try:
            result = on_reload()
        except Exception:
            log.failure("Reload requested by SIGHUP failed")
            return
        if isinstance(result, Deferred):
            result.addErrback(_reload_failed, log)

    def request_reload(number: int, frame: FrameType | None) -> None:
        log.info("Received SIGHUP, reloading")
        from_thread.callFromThread(run_reload)

    install(signal.SIGTERM, request_stop)
    install(signal.SIGINT, request_stop)
    install(signal.SIGHUP, request_reload)


class _ExitCode:
    """The status the process will end with once twistd has finished its own shutdown."""

    code: int | None = None


def _exit_now(exit: Callable[[int], Any]) -> None:
    """The atexit hook: flush what Python would flush, then end with the recorded status."""
    code = _ExitCode.code
    if code is None:
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    exit(code)


def fatal(
    reactor: IReactorCore,
    message: str,
    code: int = 1,
    *,
    log: Logger = _log,
    register: Callable[..., Any] = atexit.register,
    exit: Callable[[int], Any] = os._exit,
) -> None:
    """Log ``message`` as one critical line, stop the reactor, and make the process exit ``code``.

    Why an atexit hook that calls ``os._exit``: twistd's ``run()`` always returns normally (its
    only other ending re-raises a recorded signal), and after the reactor stops it still has
    work to do that must not be skipped: removing the pidfile and flushing the log. Exiting
    from a shutdown trigger would skip both; raising SystemExit inside the reactor is caught
    and logged. An atexit hook runs after all of that, when nothing but interpreter teardown is
    left, so it flushes stdio and ends the process with ``code``: a supervisor sees a failure
    (status 1) instead of the Rust original's status 0 (B14), and ``Restart=on-failure``,
    Docker restart policies and Cloud Run act on it.

    Safe before the reactor runs (a failing ``startService``): the stop is deferred until it
    does. Calling it again keeps the first status and logs the new message.
    """
    log.critical("{fatal_error}", fatal_error=message)
    if _ExitCode.code is None:
        _ExitCode.code = code
        register(_exit_now, exit)
    if reactor.running:
        _stop(reactor)
    else:
        reactor.callWhenRunning(_stop, reactor)
