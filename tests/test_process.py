"""Tests for keycast_tw.process: stale pidfiles, the instance lock, signals, exit status.

Unit tests use temporary files, a fake /proc and a fake reactor. The real-process tests run
twistd on a tiny .tac file (no network at all) with bounded waits, and kill what they start.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from keycast_tw.process import (
    InstanceLockError,
    acquire_instance_lock,
    clean_stale_pidfile,
    fatal,
    install_signal_handlers,
    lock_path_for,
)
from keycast_tw.process import signals as signals_module

REPO = Path(__file__).resolve().parents[1]
WAIT = 30.0  # seconds; generous for a loaded CI machine, never reached when things work


def no_process(pid: int, sig: int) -> None:
    """A kill() for a PID that does not exist."""
    raise OSError(errno.ESRCH, "No such process")


def other_users_process(pid: int, sig: int) -> None:
    """A kill() for a PID owned by another user."""
    raise OSError(errno.EPERM, "Operation not permitted")


def live_process(pid: int, sig: int) -> None:
    """A kill() for a PID that exists and is ours to signal."""


class StalePidfileTests(SynchronousTestCase):
    """clean_stale_pidfile removes exactly the pidfiles that cannot be live."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=self.events.append)
        self.proc = Path(self.mktemp())
        self.proc.mkdir()
        self.pidfile = Path(self.mktemp())

    def fake_process(self, pid: int, *argv: str) -> None:
        """Make <fake proc>/<pid>/cmdline hold ``argv``."""
        (self.proc / str(pid)).mkdir()
        (self.proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))

    def clean(
        self,
        content: str,
        *,
        kill: Callable[[int, int], None] = live_process,
        getpid: Callable[[], int] = lambda: 4242,
    ) -> bool:
        """Write ``content`` to the pidfile and run the clean-up with the fakes."""
        self.pidfile.write_text(content)
        return clean_stale_pidfile(
            str(self.pidfile), getpid=getpid, kill=kill, proc_root=str(self.proc), log=self.log
        )

    def assertRemoved(self, removed: bool, reason: str) -> None:
        """The pidfile is gone and the warning names the reason."""
        self.assertTrue(removed)
        self.assertFalse(self.pidfile.exists())
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn(reason, event["reason"])

    def assertKept(self, removed: bool) -> None:
        """The pidfile is untouched."""
        self.assertFalse(removed)
        self.assertTrue(self.pidfile.exists())

    def test_missing(self) -> None:
        """No pidfile (or none configured) is nothing to do."""
        self.assertFalse(clean_stale_pidfile(str(self.pidfile), log=self.log))
        self.assertFalse(clean_stale_pidfile(None, log=self.log))
        self.assertEqual(self.events, [])

    def test_empty_or_garbage(self) -> None:
        """An empty, non-numeric or non-positive pidfile is removed."""
        for content in ("", "\n", "abc", "12ab", "-5", "0"):
            self.events.clear()
            self.assertRemoved(self.clean(content), "holds no PID")

    def test_own_pid(self) -> None:
        """A pidfile holding our own PID (PID 1 in a restarted container) is removed."""
        self.fake_process(1, "/app/.venv/bin/python", "/app/.venv/bin/twistd", "-n", "keycast")
        self.assertRemoved(self.clean("1\n", getpid=lambda: 1), "own PID 1")

    def test_dead_pid(self) -> None:
        """A PID that no longer exists is stale."""
        self.assertRemoved(self.clean("31337", kill=no_process), "31337 is not running")

    def test_live_daemon(self) -> None:
        """A live twistd/keycast process keeps its pidfile (twistd then refuses)."""
        self.fake_process(77, "/usr/bin/python3", "/opt/keycast/.venv/bin/twistd", "-n", "keycast")
        self.assertKept(self.clean("77"))
        self.assertEqual(self.events, [])

    def test_live_python_m_twisted(self) -> None:
        """``python -m twisted`` counts as a daemon too."""
        self.fake_process(78, "python3", "-m", "twisted", "keycast")
        self.assertKept(self.clean("78"))

    def test_reused_pid(self) -> None:
        """A PID now used by another program is stale."""
        self.fake_process(80, "/usr/sbin/nginx", "-g", "daemon off;")
        self.assertRemoved(self.clean("80"), "another program")

    def test_zombie_or_vanished(self) -> None:
        """A PID with an empty or missing cmdline (zombie, just exited) is stale."""
        self.fake_process(81)
        self.assertRemoved(self.clean("81"), "81 is not running")
        self.events.clear()
        self.assertRemoved(self.clean("82"), "82 is not running")

    def test_other_user_hidden(self) -> None:
        """Another user's PID hidden by hidepid cannot be judged, so the file stays."""
        self.assertKept(self.clean("83", kill=other_users_process))

    def test_other_user_visible(self) -> None:
        """Another user's visible PID is judged by its cmdline."""
        self.fake_process(84, "/usr/bin/postgres")
        self.assertRemoved(self.clean("84", kill=other_users_process), "another program")

    def test_no_procfs(self) -> None:
        """Without procfs a live PID cannot be judged, so the file stays."""
        self.pidfile.write_text("85")
        removed = clean_stale_pidfile(
            str(self.pidfile), kill=live_process, proc_root=str(self.proc / "nope"), log=self.log
        )
        self.assertKept(removed)

    def test_unreadable(self) -> None:
        """A pidfile that cannot be read is left to twistd, with a warning."""
        self.pidfile.mkdir()
        self.assertFalse(clean_stale_pidfile(str(self.pidfile), log=self.log))
        self.assertEqual(len(self.events), 1)


class InstanceLockTests(SynchronousTestCase):
    """Only one daemon per database."""

    def setUp(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        self.database = str(directory / "keycast.db")

    def test_second_lock_refused(self) -> None:
        """A second lock on the same database fails, naming the database and the holder's PID."""
        first = acquire_instance_lock(self.database)
        self.addCleanup(first.release)
        with self.assertRaises(InstanceLockError) as raised:
            acquire_instance_lock(self.database)
        self.assertEqual(
            str(raised.exception),
            f"another keycast daemon is already running on {self.database} (pid {os.getpid()})",
        )

    def test_release(self) -> None:
        """After release the lock can be taken again; release is idempotent."""
        lock = acquire_instance_lock(self.database)
        self.assertTrue(lock.held)
        lock.release()
        lock.release()
        self.assertFalse(lock.held)
        with acquire_instance_lock(self.database) as again:
            self.assertTrue(again.held)
        self.assertFalse(again.held)

    def test_lock_file(self) -> None:
        """The lock file sits next to the database, mode 0600, holding the PID."""
        lock = acquire_instance_lock(self.database)
        self.addCleanup(lock.release)
        path = Path(lock_path_for(self.database))
        self.assertEqual(path.read_text(), f"{os.getpid()}\n")
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)

    def test_missing_directory(self) -> None:
        """A database directory that does not exist is a clear error, not a traceback."""
        with self.assertRaises(InstanceLockError) as raised:
            acquire_instance_lock(os.path.join(self.mktemp(), "keycast.db"))
        self.assertIn("cannot open lock file", str(raised.exception))

    def test_other_process(self) -> None:
        """A lock held by another process refuses us until that process exits."""
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from keycast_tw.process import acquire_instance_lock as a;"
                f"lock = a({self.database!r}); print('locked', flush=True); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        self.addCleanup(stop_child, child)
        read_until(child, b"locked")
        with self.assertRaises(InstanceLockError) as raised:
            acquire_instance_lock(self.database)
        self.assertIn(f"(pid {child.pid})", str(raised.exception))
        assert child.stdin is not None
        child.stdin.close()
        self.assertEqual(child.wait(timeout=WAIT), 0)
        acquire_instance_lock(self.database).release()

    def test_shards_share_a_database_but_not_a_shard(self) -> None:
        """Daemons for different shards run together; the same shard twice, or an unsharded
        daemon beside sharded ones (or the reverse), is refused."""
        first = acquire_instance_lock(self.database, (0, 2))
        self.addCleanup(first.release)
        second = acquire_instance_lock(self.database, (1, 2))
        self.addCleanup(second.release)
        with self.assertRaises(InstanceLockError) as raised:
            acquire_instance_lock(self.database, (1, 2))
        self.assertIn("shard 1/2", str(raised.exception))
        self.assertRaises(InstanceLockError, acquire_instance_lock, self.database)
        first.release()
        second.release()
        whole = acquire_instance_lock(self.database)
        self.addCleanup(whole.release)
        self.assertRaises(InstanceLockError, acquire_instance_lock, self.database, (0, 2))


class InstanceLockPathTests(SynchronousTestCase):
    """One database reached by several paths is still locked once."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        (self.root / "real").mkdir(parents=True)
        (self.root / "other").mkdir()
        self.database = str(self.root / "real" / "keycast.db")
        conn = sqlite3.connect(self.database)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()

    def hold(self, path: str, shard: tuple[int, int] | None = None) -> None:
        lock = acquire_instance_lock(path, shard)
        self.addCleanup(lock.release)

    def test_symlinked_file_refused(self) -> None:
        """A second daemon through a symlink to the database file finds the same lock file,
        and the refusal names both paths and the holder."""
        link = self.root / "other" / "link.db"
        link.symlink_to(self.database)
        self.hold(self.database)
        self.assertEqual(lock_path_for(str(link)), lock_path_for(self.database))
        with self.assertRaises(InstanceLockError) as raised:
            acquire_instance_lock(str(link))
        self.assertEqual(
            str(raised.exception),
            f"another keycast daemon is already running on {link} (= {self.database})"
            f" (pid {os.getpid()})",
        )

    def test_symlinked_directory_refused(self) -> None:
        """The same through a symlinked directory, first the link then the real path."""
        directory = self.root / "linked"
        directory.symlink_to(self.root / "real")
        self.hold(str(directory / "keycast.db"))
        self.assertRaises(InstanceLockError, acquire_instance_lock, self.database)

    def test_hard_link_refused(self) -> None:
        """A hard link is the same inode under another name: the database file's own flock
        refuses the second daemon though the lock files differ."""
        link = self.root / "other" / "keycast.db"
        os.link(self.database, link)
        self.hold(self.database)
        self.assertNotEqual(lock_path_for(str(link)), lock_path_for(self.database))
        with self.assertRaises(InstanceLockError) as raised:
            acquire_instance_lock(str(link))
        self.assertIn("reached through another path", str(raised.exception))

    def test_hard_link_shards_and_whole(self) -> None:
        """Sharded daemons share the database file's lock; an unsharded one through a hard link
        is refused beside them, and they beside it."""
        link = str(self.root / "other" / "keycast.db")
        os.link(self.database, link)
        self.hold(self.database, (0, 2))
        self.hold(link, (1, 2))
        self.assertRaises(InstanceLockError, acquire_instance_lock, link)
        whole_dir = self.root / "third"
        whole_dir.mkdir()
        os.link(self.database, whole_dir / "keycast.db")
        self.assertRaises(InstanceLockError, acquire_instance_lock, str(whole_dir / "keycast.db"))

    def test_refusal_releases_what_it_took(self) -> None:
        """A refusal on the database file leaves the lock file of the refused path unlocked."""
        link = str(self.root / "other" / "keycast.db")
        os.link(self.database, link)
        first = acquire_instance_lock(self.database)
        self.assertRaises(InstanceLockError, acquire_instance_lock, link)
        first.release()
        acquire_instance_lock(link).release()

    def test_sqlite_unaffected_by_the_lock(self) -> None:
        """Another process writes the database while a daemon holds the lock (flock and SQLite's
        fcntl locks are independent), and the lock never writes into the database file."""
        with open(self.database, "rb") as handle:
            before = handle.read()
        lock = acquire_instance_lock(self.database)
        self.addCleanup(lock.release)
        with open(self.database, "rb") as handle:
            self.assertEqual(handle.read(), before)
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0);"
            " c.execute('INSERT INTO t VALUES (1)'); c.commit(); print('written')"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, self.database],
            capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        self.assertEqual(result.stdout.strip(), "written", result.stderr)


@implementer(IReactorCore, IReactorFromThreads)

class FakeReactor:
    """Records stop() and queues callFromThread/callWhenRunning calls."""

    def __init__(self, running: bool = True) -> None:
        self.running = running
        self.stops = 0
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.when_running: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def stop(self) -> None:
        """Stop once; a second stop raises like the real reactor."""
        if self.stops:
            raise ReactorNotRunning()
        self.stops += 1

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        """Queue a call for the reactor thread."""
        self.queued.append((f, args))

    def callWhenRunning(self, f: Callable[..., Any], *args: Any) -> None:
        """Queue a call for reactor start."""
        self.when_running.append((f, args))

    def run_queued(self) -> None:
        """Run what signal handlers handed to the reactor thread."""
        queued, self.queued = self.queued, []
        for f, args in queued:
            f(*args)


class SignalHandlerTests(SynchronousTestCase):
    """SIGTERM/SIGINT stop gracefully, SIGHUP reloads; all work happens on the reactor."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.handlers: dict[int, Callable[[int, Any], None]] = {}
        self.reloads = 0
        self.events: list[dict[str, Any]] = []
        install_signal_handlers(
            self.reactor,
            on_reload=self.reload,
            install=self.handlers.__setitem__,
            log=Logger(observer=self.events.append),
        )

    def reload(self) -> None:
        """Count reloads."""
        self.reloads += 1

    def test_installs_three(self) -> None:
        """Handlers are installed for SIGTERM, SIGINT and SIGHUP."""
        self.assertEqual(set(self.handlers), {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    def test_sigterm_stops_via_reactor_thread(self) -> None:
        """SIGTERM queues reactor.stop through callFromThread; nothing runs in the handler."""
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(self.reactor.stops, 0)
        self.reactor.run_queued()
        self.assertEqual(self.reactor.stops, 1)
        self.assertIn("SIGTERM", [e.get("signal") for e in self.events])

    def test_second_signal_ignored(self) -> None:
        """A second SIGINT during shutdown does not stop again and is logged."""
        self.handlers[signal.SIGINT](signal.SIGINT, None)
        self.handlers[signal.SIGINT](signal.SIGINT, None)
        self.reactor.run_queued()
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.events[-1]["log_level"], LogLevel.warn)

    def test_stop_when_already_stopping(self) -> None:
        """If something else stopped the reactor first, the signal's stop is harmless."""
        self.reactor.stop()
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.reactor.run_queued()
        self.assertEqual(self.reactor.stops, 1)

    def test_sighup_reloads(self) -> None:
        """SIGHUP calls on_reload on the reactor thread."""
        self.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(self.reloads, 0)
        self.reactor.run_queued()
        self.assertEqual(self.reloads, 1)
        self.assertEqual(self.reactor.stops, 0)

    def test_sighup_reload_failure_logged(self) -> None:
        """A failing reload is logged, not raised into the reactor."""
        handlers: dict[int, Callable[[int, Any], None]] = {}

        def broken() -> None:
            raise RuntimeError("db locked")

        install_signal_handlers(self.reactor, on_reload=broken, install=handlers.__setitem__)
        handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.reactor.run_queued()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_sighup_later_reload_failure_logged(self) -> None:
        """A reload whose Deferred fails later is logged as a failed reload (one error line),
        not left to Twisted's critical "Unhandled error in Deferred"."""
        handlers: dict[int, Callable[[int, Any], None]] = {}
        pending: Deferred[None] = Deferred()
        events: list[dict[str, Any]] = []
        install_signal_handlers(
            self.reactor,
            on_reload=lambda: pending,
            install=handlers.__setitem__,
            log=Logger(observer=events.append),
        )
        handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.reactor.run_queued()
        pending.errback(RuntimeError("db locked"))
        failed = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual([e["log_format"] for e in failed], ["Reload requested by SIGHUP failed"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)


class FatalTests(SynchronousTestCase):
    """fatal() logs one critical line, stops the reactor and arranges the exit status."""

    def setUp(self) -> None:
        self.patch(signals_module._ExitCode, "code", None)
        self.registered: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.exits: list[int] = []
        self.events: list[dict[str, Any]] = []

    def fatal(self, reactor: FakeReactor, message: str, code: int = 1) -> None:
        """Call fatal() with recording seams."""
        fatal(
            reactor,
            message,
            code,
            log=Logger(observer=self.events.append),
            register=lambda f, *a: self.registered.append((f, a)),
            exit=self.exits.append,
        )

    def run_atexit(self) -> None:
        """Run the registered hooks as the interpreter would."""
        for f, args in reversed(self.registered):
            f(*args)

    def test_running_reactor(self) -> None:
        """A fatal error while running stops the reactor and exits 1 at interpreter exit."""
        reactor = FakeReactor()
        self.fatal(reactor, "cannot open database /x: permission denied")
        self.assertEqual(reactor.stops, 1)
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertEqual(event["fatal_error"], "cannot open database /x: permission denied")
        self.assertEqual(self.exits, [])
        self.run_atexit()
        self.assertEqual(self.exits, [1])

    def test_before_reactor_runs(self) -> None:
        """Before the reactor runs, the stop waits for it to start."""
        reactor = FakeReactor(running=False)
        self.fatal(reactor, "bad", 3)
        self.assertEqual(reactor.stops, 0)
        [(f, args)] = reactor.when_running
        f(*args)
        self.assertEqual(reactor.stops, 1)
        self.run_atexit()
        self.assertEqual(self.exits, [3])

    def test_twice(self) -> None:
        """A second fatal error keeps the first status, registers once, and stops only once."""
        reactor = FakeReactor()
        self.fatal(reactor, "first", 2)
        self.fatal(reactor, "second", 5)
        self.assertEqual(len(self.registered), 1)
        self.assertEqual(
            [e["fatal_error"] for e in self.events if "fatal_error" in e], ["first", "second"]
        )
        self.run_atexit()
        self.assertEqual(self.exits, [2])


def read_until(
    child: subprocess.Popen[bytes],
    marker: bytes,
    *,
    seen: bytearray | None = None,
    timeout: float = WAIT,
) -> bytes:
    """Read the child's stdout until ``marker`` appears; fail after ``timeout`` seconds."""
    assert child.stdout is not None
    buffer = seen if seen is not None else bytearray()
    deadline = time.monotonic() + timeout
    fd = child.stdout.fileno()
    while marker not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; output: {bytes(buffer)!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"child exited before {marker!r}; output: {bytes(buffer)!r}")
            buffer.extend(chunk)
    return bytes(buffer)


def finish(child: subprocess.Popen[bytes], seen: bytearray) -> tuple[int, bytes]:
    """Wait (bounded) for the child to exit; return its status and all its output."""
    assert child.stdout is not None
    status = child.wait(timeout=WAIT)
    seen.extend(child.stdout.read())
    return status, bytes(seen)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Kill a child that is still running and close its pipes (test clean-up)."""
    if child.poll() is None:
        child.kill()
        child.wait(timeout=WAIT)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


TAC = """
import os
from twisted.application import service
from twisted.internet import reactor
from keycast_tw.process import fatal, install_signal_handlers

mode = os.environ["TEST_MODE"]


class Probe(service.Service):
    def startService(self):
        if mode == "fatal-at-start":
            fatal(reactor, "cannot open database /nonexistent/keycast.db: no such directory")
            return
        if mode == "fatal-running":
            reactor.callLater(0, fatal, reactor, "relay pool crashed: giving up", 4)
            return
        reactor.callWhenRunning(
            install_signal_handlers, reactor, on_reload=lambda: print("RELOADED", flush=True)
        )
        reactor.callWhenRunning(print, "READY", flush=True)


application = service.Application("probe")
Probe().setServiceParent(application)
"""

RUN_TWISTD = """
import os, sys
pidfile, tac, mode = sys.argv[1:4]
if mode != "no-clean":
    # A container restart: the pidfile left behind holds what is now our own PID.
    with open(pidfile, "w") as handle:
        handle.write(str(os.getpid()))
    from keycast_tw.process import clean_stale_pidfile
    clean_stale_pidfile(pidfile)
else:
    with open(pidfile, "w") as handle:
        handle.write(str(os.getpid()))
sys.argv = ["twistd", "-n", "--pidfile", pidfile, "-y", tac]
from twisted.scripts.twistd import run
run()
"""


class RealProcessTests(SynchronousTestCase):
    """twistd with our handlers: SIGTERM/SIGINT exit 0 and remove the pidfile; fatal exits 1."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir()
        self.tac = self.directory / "probe.tac"
        self.tac.write_text(TAC)
        self.pidfile = self.directory / "twistd.pid"

    def start(
        self, mode: str, *, runner: str = "twistd", **environ: str
    ) -> subprocess.Popen[bytes]:
        """Start twistd on the probe .tac; output goes to one pipe."""
        env = {**os.environ, "TEST_MODE": mode, "PYTHONPATH": str(REPO), **environ}
        env.pop("JOURNAL_STREAM", None)
        if runner == "twistd":
            argv = [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile",
                str(self.pidfile),
                "-y",
                str(self.tac),
            ]
        else:
            argv = [sys.executable, "-c", RUN_TWISTD, str(self.pidfile), str(self.tac), runner]
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            env=env,
        )
        self.addCleanup(stop_child, child)
        return child

    def graceful(self, sig: signal.Signals, runner: str = "twistd") -> None:
        """Start, check the pidfile, send ``sig``, expect status 0 and no pidfile."""
        child = self.start("serve", runner=runner)
        seen = bytearray()
        read_until(child, b"READY", seen=seen)
        self.assertEqual(self.pidfile.read_text().strip(), str(child.pid))
        child.send_signal(signal.SIGHUP)
        read_until(child, b"RELOADED", seen=seen)
        child.send_signal(sig)
        status, output = finish(child, seen)
        self.assertEqual(status, 0, output.decode(errors="replace"))
        self.assertFalse(self.pidfile.exists())
        self.assertIn(f"Received {sig.name}, shutting down gracefully".encode(), output)

    def test_sigterm_exits_zero(self) -> None:
        """SIGTERM: graceful stop, exit status 0 (not 143), pidfile removed."""
        self.graceful(signal.SIGTERM)

    def test_sigint_exits_zero(self) -> None:
        """SIGINT: graceful stop, exit status 0 (not 130), pidfile removed."""
        self.graceful(signal.SIGINT)

    def test_own_pid_pidfile_then_sigterm(self) -> None:
        """A pidfile holding our own PID (container restart) does not block the start."""
        self.graceful(signal.SIGTERM, runner="clean")

    def test_own_pid_pidfile_blocks_twistd_alone(self) -> None:
        """Control: without the clean-up, twistd refuses to start against its own PID."""
        child = self.start("serve", runner="no-clean")
        status, output = finish(child, bytearray())
        self.assertEqual(status, 1)
        self.assertIn(b"Another twistd server is running", output)

    def fatal_run(self, mode: str, message: str, code: int) -> None:
        """Run a fatal mode with JSON logs; expect ``code``, one critical record, no pidfile."""
        child = self.start(mode, KEYCAST_LOG_FORMAT="json")
        status, output = finish(child, bytearray())
        text = output.decode(errors="replace")
        self.assertEqual(status, code, text)
        self.assertFalse(self.pidfile.exists())
        self.assertNotIn("Traceback", text)
        lines = [line for line in text.splitlines() if message in line]
        self.assertEqual(len(lines), 1, text)

    def test_fatal_at_start_exits_one(self) -> None:
        """fatal() during startService: one line, exit status 1, pidfile removed."""
        self.fatal_run(
            "fatal-at-start", "cannot open database /nonexistent/keycast.db: no such directory", 1
        )

    def test_fatal_while_running_exits_code(self) -> None:
        """fatal() while running exits with the given status after twistd's shutdown."""
        self.fatal_run("fatal-running", "relay pool crashed: giving up", 4)

    def test_fatal_json_record(self) -> None:
        """Under the JSON observer the fatal line is one CRITICAL record."""
        self.tac.write_text(TAC)
        env = {"KEYCAST_LOG_FORMAT": "json"}
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--logger",
                "keycast_tw.logs.observer",
                "--pidfile",
                str(self.pidfile),
                "-y",
                str(self.tac),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            env={**os.environ, "TEST_MODE": "fatal-at-start", "PYTHONPATH": str(REPO), **env},
        )
        self.addCleanup(stop_child, child)
        status, output = finish(child, bytearray())
        self.assertEqual(status, 1, output)
        records = [orjson.loads(line) for line in output.splitlines() if line.strip()]
        critical = [r for r in records if r["severity"] == "CRITICAL"]
        self.assertEqual(len(critical), 1, records)
        self.assertEqual(
            critical[0]["message"],
            "cannot open database /nonexistent/keycast.db: no such directory",
        )
