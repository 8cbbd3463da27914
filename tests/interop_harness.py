"""Helpers for interop tests: real relays, real NIP-46 clients and the real daemon.

The interop tests run keycast-tw as a separate process (``twistd -n keycast``)
against real relays from PyPI and real client libraries, because that is the
only way to catch disagreements about the wire protocol that unit tests with
fakes cannot see.  Everything here runs on the real reactor inside a
``twisted.trial.unittest.TestCase`` and follows three rules:

- every wait is bounded (``DEFAULT_TIMEOUT`` seconds unless told otherwise) and
  a failed wait raises ``HarnessError`` carrying the tail of the process output;
- every child runs in a session (process group) of its own and is stopped in a
  trial cleanup that is registered before the child starts, so an orphaned
  grandchild (a gunicorn worker, a Node socket) cannot outlive the test, even
  when the test fails;
- everything listens on and connects to 127.0.0.1 only.

Typical use::

    class DaemonInterop(TestCase):
        async def test_sign(self) -> None:
            fx = InteropFixture(self)
            relay = await fx.local_relay()
            daemon = fx.daemon(relays=[relay.url])
            (await daemon.run_cli("init")).check()
            (await daemon.run_cli("key", "add", "alice")).check()
            uri = (await daemon.run_cli("authorize", "alice", "--relay", relay.url)).bunker_uri()
            daemon.start()
            await daemon.wait_ready()
            steps = [{"op": "connect"}, {"op": "sign_event", "event": {"kind": 1}}]
            for kind in CLIENT_KINDS:
                run = await fx.run_client(kind, uri, steps)
                self.assertTrue(run.ok, run.report())

Each process writes its output to ``<test temp dir>/<name>.log`` as well, so
the logs of a failed test stay in ``_trial_temp`` for reading; ``fx.report()``
returns the tails of all of them for assertion messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import string
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import error as net_error
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
INTEROP_DIR = REPO / "tests" / "interop"
DEFAULT_TIMEOUT = 20.0
TAIL_LINES = 40

# Re-exec in a new session so that the child leads its own process group and
# stop() can signal the whole group (Twisted's spawnProcess has no setsid).
_SETSID = (
    sys.executable,
    "-c",
    "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])",
)


class HarnessError(Exception):
    """A process did not do what the test waited for, within the time allowed."""


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tool:
    """Something an interop test needs, how to tell it is there, how to get it."""

    name: str
    present: Callable[[Path], bool]
    remedy: str


def _node_clients_present(repo: Path) -> bool:
    modules = repo / "tests" / "interop" / "node_modules"
    return (
        shutil.which("node") is not None
        and (modules / "nostr-tools" / "package.json").is_file()
        and (modules / "ws" / "package.json").is_file()
    )


def _nostr_sdk_present(repo: Path) -> bool:
    try:
        import nostr_sdk  # noqa: F401
    except ImportError:
        return False
    return True


def _daemon_present(repo: Path) -> bool:
    return (repo / "keycast_tw" / "tap.py").is_file() and (
        repo / "keycast_tw" / "service.py"
    ).is_file()


TOOLS: Mapping[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "node-clients",
            _node_clients_present,
            "install Node 20 and run `npm install` in tests/interop (tests/run.sh does it)",
        ),
        Tool(
            "nostr-relay",
            lambda repo: (repo / ".venv-relay" / "bin" / "nostr-relay").is_file(),
            "create .venv-relay from tests/interop/relay-requirements.txt (tests/run.sh does it)",
        ),
        Tool(
            "nostr-sdk",
            _nostr_sdk_present,
            "pip install nostr-sdk into .venv (it is in the test extra of setup.py)",
        ),
        Tool(
            "keycast-cli",
            lambda repo: (repo / "keycast_tw" / "cli" / "main.py").is_file(),
            "keycast_tw/cli/main.py must exist and `keycast` be installed in .venv",
        ),
        Tool(
            "keycast-daemon",
            _daemon_present,
            "keycast_tw/tap.py and keycast_tw/service.py must exist",
        ),
    )
}


def require_tool(name: str, *, environ: Mapping[str, str] | None = None, repo: Path = REPO) -> None:
    """Skip the test when ``name`` is missing; fail instead when CI=true.

    A developer without Node still gets a green run of everything else, while
    CI, which installs every tool through tests/run.sh, cannot silently lose
    the interop tests to a broken install.
    """
    tool = TOOLS.get(name)
    if tool is None:
        raise ValueError(f"unknown tool {name!r}; known: {', '.join(sorted(TOOLS))}")
    if tool.present(repo):
        return
    reason = f"{name} is missing: {tool.remedy}"
    env = os.environ if environ is None else environ
    if env.get("CI") == "true":
        raise FailTest(f"{reason} (CI=true, so this is a failure, not a skip)")
    raise SkipTest(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it, so parallel test runs do not collide; the small race
    until the child binds it is accepted.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bounded(
    d: Deferred[T], timeout: float, reactor: Any, describe: Callable[[], Exception]
) -> Deferred[T]:
    """Cancel ``d`` after ``timeout`` seconds, failing it with ``describe()``.

    Twisted's own TimeoutError says nothing about what was awaited; the
    replacement names the process or relay and shows what it printed.
    """

    def timed_out(failure: Failure) -> Failure:
        if isinstance(failure.value, TimeoutError):
            raise describe()
        return failure

    d.addTimeout(timeout, reactor)
    d.addErrback(timed_out)
    return d


# ------------------------------------------------------------------------ processes


class ManagedProcess(ProcessProtocol):
    """A child process in a session of its own, with its output kept line by line."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        reactor: Any = global_reactor,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.reactor = reactor
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.log_path = log_path
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.ended = False
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}
        self._line_waiters: list[tuple[re.Pattern[str], int, Deferred[re.Match[str]]]] = []
        self._exit_waiters: list[Deferred[int | None]] = []
        self._log = None if log_path is None else open(log_path, "a", encoding="utf-8")  # noqa: SIM115

    # -- ProcessProtocol

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Split output into lines and wake the waiters they satisfy."""
        buffered = self._buffers.get(childFD, b"") + data
        *complete, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest
        for raw in complete:
            self._add_line(childFD, raw.decode("utf-8", "replace").rstrip("\r"))

    def processEnded(self, reason: Failure) -> None:
        """Record how it ended and fail whoever still waits for a line."""
        for fd, rest in self._buffers.items():
            if rest:
                self._add_line(fd, rest.decode("utf-8", "replace"))
        self._buffers = {}
        self.ended = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exit_signal = getattr(reason.value, "signal", None)
        if self._log is not None:
            self._log.write(f"--- {self.name} ended: {self.describe_exit()}\n")
            self._log.close()
            self._log = None
        waiters, self._line_waiters = self._line_waiters, []
        for pattern, _, d in waiters:
            d.errback(
                self.error(f"ended ({self.describe_exit()}) before printing /{pattern.pattern}/")
            )
        exit_waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in exit_waiters:
            waiter.callback(self.exit_code)

    def _add_line(self, fd: int, line: str) -> None:
        self.lines.append(line)
        (self.stdout_lines if fd == 1 else self.stderr_lines).append(line)
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        index = len(self.lines) - 1
        still_waiting = []
        for pattern, start, d in self._line_waiters:
            match = pattern.search(line) if index >= start else None
            if match is None:
                still_waiting.append((pattern, start, d))
            else:
                d.callback(match)
        self._line_waiters = still_waiting

    # -- control

    def start(self) -> ManagedProcess:
        """Spawn the child; its output starts flowing into ``lines``."""
        argv = [*_SETSID, *self.argv]
        transport = self.reactor.spawnProcess(
            self, argv[0], argv, env=self.env, path=None if self.cwd is None else str(self.cwd)
        )
        self.pid = transport.pid
        return self

    def send_signal(self, signum: int, *, group: bool = False) -> None:
        """Send a signal to the child (or its whole group); a no-op once it is gone."""
        if self.pid is None:
            return
        try:
            if group:
                os.killpg(self.pid, signum)
            elif not self.ended:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def mark(self) -> int:
        """The index of the next output line, for waits that ignore older lines."""
        return len(self.lines)

    def wait_for_line(
        self, pattern: str, *, timeout: float = DEFAULT_TIMEOUT, after: int = 0
    ) -> Deferred[re.Match[str]]:
        """Fire with the first match of ``pattern`` in an output line at index >= after."""
        regex = re.compile(pattern)
        for line in self.lines[after:]:
            match = regex.search(line)
            if match is not None:
                return succeed(match)
        if self.ended:
            return fail(self.error(f"ended ({self.describe_exit()}) without /{pattern}/"))
        d: Deferred[re.Match[str]] = Deferred()
        self._line_waiters.append((regex, after, d))
        return bounded(
            d,
            timeout,
            self.reactor,
            lambda: self.error(f"no line matching /{pattern}/ within {timeout} s"),
        )

    def wait_exit(self, *, timeout: float = DEFAULT_TIMEOUT) -> Deferred[int | None]:
        """Fire with the exit code (None if killed by a signal) once the child ends."""
        if self.ended:
            return succeed(self.exit_code)
        d: Deferred[int | None] = Deferred()
        self._exit_waiters.append(d)
        return bounded(
            d, timeout, self.reactor, lambda: self.error(f"did not exit within {timeout} s")
        )

    async def wait_for_port(self, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once 127.0.0.1:port accepts a TCP connection, or fail if the child ends."""
        deadline = self.reactor.seconds() + timeout
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=2)
        while True:
            if self.ended:
                raise self.error(f"ended ({self.describe_exit()}) before port {port} opened")
            try:
                connected = await endpoint.connect(Factory.forProtocol(Protocol))
            except (net_error.ConnectError, net_error.TimeoutError):
                if self.reactor.seconds() >= deadline:
                    raise self.error(f"port {port} did not open within {timeout} s") from None
                await deferLater(self.reactor, 0.05, lambda: None)
            else:
                assert isinstance(connected, Protocol) and connected.transport is not None
                connected.transport.loseConnection()
                return

    async def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``timeout``; return the exit code.

        The group is always SIGKILLed at the end: a well-behaved leader may
        exit on SIGTERM and still leave children behind.
        """
        if self.pid is None:
            return None
        self.send_signal(signal.SIGTERM, group=True)
        with contextlib.suppress(HarnessError):
            await self.wait_exit(timeout=timeout)
        self.send_signal(signal.SIGKILL, group=True)
        await self.wait_exit(timeout=5.0)
        return self.exit_code

    # -- reporting

    def describe_exit(self) -> str:
        """Human-readable exit status."""
        if not self.ended:
            return "still running"
        if self.exit_signal is not None:
            return f"killed by signal {self.exit_signal}"
        return f"exit status {self.exit_code}"

    def tail(self, count: int = TAIL_LINES) -> str:
        """The last ``count`` lines of output, for error messages."""
        return "\n".join(self.lines[-count:])

    def error(self, what: str) -> HarnessError:
        """A HarnessError naming this process and showing its latest output."""
        return HarnessError(
            f"{self.name} (pid {self.pid}): {what}\n--- last output of {self.name}:\n{self.tail()}"
        )


# --------------------------------------------------------------------------- relays


@dataclass
class RelayProcess:
    """A running relay and the URL clients should use."""

    url: str
    port: int
    process: ManagedProcess


@dataclass
class ClientRun:
    """The JSON lines a scenario client printed, parsed."""

    process: ManagedProcess
    exit_code: int | None
    start: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every step succeeded."""
        return bool(self.end.get("ok")) and self.exit_code == 0

    def step(self, op: str, nth: int = 0) -> dict[str, Any]:
        """The nth step line with this op."""
        found = [s for s in self.steps if s.get("op") == op]
        if len(found) <= nth:
            raise HarnessError(f"no step #{nth} with op {op!r}\n{self.report()}")
        return found[nth]

    def report(self) -> str:
        """Everything the client printed, for assertion messages."""
        return f"{self.process.name} ({self.process.describe_exit()}):\n" + "\n".join(
            self.process.lines
        )

    @classmethod
    def parse(cls, process: ManagedProcess) -> ClientRun:
        """Read the start, step and end lines; other stdout lines are ignored."""
        run = cls(process=process, exit_code=process.exit_code)
        for line in process.stdout_lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("event") == "start":
                run.start = obj
            elif obj.get("event") == "end":
                run.end = obj
            elif "step" in obj:
                run.steps.append(obj)
        return run


@dataclass
class CliResult:
    """Output of one ``keycast`` admin command."""

    argv: list[str]
    exit_code: int | None
    stdout: str
    stderr: str

    def check(self) -> CliResult:
        """Raise HarnessError unless the command exited 0."""
        if self.exit_code != 0:
            raise HarnessError(
                f"{' '.join(self.argv)} exited {self.exit_code}\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            )
        return self

    def bunker_uri(self) -> str:
        """The first stdout line that starts with bunker:// (what `authorize` prints)."""
        self.check()
        for line in self.stdout.splitlines():
            if line.startswith("bunker://"):
                return line.strip()
        raise HarnessError(
            f"no bunker:// line in the output of {' '.join(self.argv)}:\n{self.stdout}"
        )


def _node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise HarnessError("node is not on PATH")
    return [node, str(INTEROP_DIR / "bunker_client.mjs")]


def _sdk_command() -> list[str]:
    return [sys.executable, str(INTEROP_DIR / "sdk_client.py")]


# The scenario clients: the tool each needs and its command line.
CLIENT_KINDS: Mapping[str, tuple[str, Callable[[], list[str]]]] = {
    "node": ("node-clients", _node_command),
    "sdk": ("nostr-sdk", _sdk_command),
}


# --------------------------------------------------------------------------- daemon


@dataclass
class DaemonPaths:
    """Where one daemon under test keeps its files (all inside the test's temp dir)."""

    root: Path
    database: Path
    master_key: Path
    pidfile: Path

    @classmethod
    def under(cls, root: Path) -> DaemonPaths:
        """Lay the files out below ``root``, which is created."""
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            root=root,
            database=root / "database" / "keycast.db",
            master_key=root / "master.key",
            pidfile=root / "twistd.pid",
        )


class DaemonProcess:
    """``twistd -n keycast`` under test, plus the ``keycast`` CLI on the same files.

    The daemon is given absolute paths for everything and only 127.0.0.1
    endpoints.  ``PYTHONPATH`` points at the repository so that twistd finds
    twisted/plugins/keycast_plugin.py whatever way the package was installed
    (a PEP 660 editable install hides plugins).  The CLI gets the database and
    master key through ``DATABASE_PATH``/``MASTER_KEY_PATH`` (the documented
    environment fallbacks), so these helpers do not depend on where the CLI
    accepts its global options.  Settings inherited from the shell running the
    tests (KEYCAST_*, PORT, NOTIFY_SOCKET, ...) are dropped; pass ``env`` to
    set one on purpose.
    """

    def __init__(
        self,
        fixture: InteropFixture,
        paths: DaemonPaths,
        *,
        relays: Sequence[str],
        health_port: int,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.fixture = fixture
        self.paths = paths
        self.relays = list(relays)
        self.health_port = health_port
        self.extra_args = list(extra_args)
        inherited = {k: v for k, v in fixture.base_env().items() if not _daemon_setting(k)}
        self.env = {**inherited, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p
        )
        # The CLI warns when an authorization names a relay the daemon does not
        # use; this keeps both sides of the test agreeing on the relays.
        self.env["KEYCAST_RELAYS"] = ",".join(self.relays)
        self.env["DATABASE_PATH"] = str(paths.database)
        self.env["MASTER_KEY_PATH"] = str(paths.master_key)
        self.process: ManagedProcess | None = None
        self.starts = 0

    @property
    def health_url(self) -> str:
        """Base URL of the daemon's HTTP endpoints."""
        return f"http://127.0.0.1:{self.health_port}"

    def argv(self) -> list[str]:
        """The full twistd command line."""
        relay_args = [arg for url in self.relays for arg in ("--relay", url)]
        return [
            _venv_script("twistd"),
            "-n",
            "--pidfile",
            str(self.paths.pidfile),
            "keycast",
            "--database",
            str(self.paths.database),
            "--master-key",
            str(self.paths.master_key),
            *relay_args,
            "--health",
            f"tcp:{self.health_port}:interface=127.0.0.1",
            *self.extra_args,
        ]

    def start(self) -> ManagedProcess:
        """Start (or restart) the daemon; it is stopped in the test's cleanups."""
        self.starts += 1
        name = "keycast" if self.starts == 1 else f"keycast-{self.starts}"
        self.process = self.fixture.spawn(name, self.argv(), env=self.env, cwd=self.paths.root)
        return self.process

    def _running(self) -> ManagedProcess:
        if self.process is None:
            raise HarnessError("the daemon was not started")
        return self.process

    async def wait_ready(self, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Poll GET /ready until it answers 200 and return its JSON body."""
        process = self._running()
        reactor = self.fixture.reactor
        deadline = reactor.seconds() + timeout
        last = "no answer yet"
        while True:
            if process.ended:
                raise process.error(f"ended ({process.describe_exit()}) before /ready was 200")
            try:
                response = await treq.get(
                    f"{self.health_url}/ready",
                    timeout=2,
                    reactor=reactor,
                    pool=self.fixture.http_pool,
                )
                body = await response.text()
            except Exception as e:  # connection refused while starting, etc.
                last = f"{type(e).__name__}: {e}"
            else:
                if response.code == 200:
                    result: dict[str, Any] = json.loads(body)
                    return result
                last = f"{response.code} {body}"
            if reactor.seconds() >= deadline:
                raise process.error(f"/ready not 200 within {timeout} s; last: {last}")
            await deferLater(reactor, 0.1, lambda: None)

    async def get(self, path: str) -> tuple[int, str]:
        """GET one of the HTTP endpoints; returns (status, body text)."""
        response = await treq.get(
            f"{self.health_url}{path}",
            timeout=5,
            reactor=self.fixture.reactor,
            pool=self.fixture.http_pool,
        )
        return response.code, await response.text()

    async def status(self) -> dict[str, Any]:
        """The daemon's GET /status document."""
        code, body = await self.get("/status")
        if code != 200:
            raise self._running().error(f"/status answered {code}: {body}")
        result: dict[str, Any] = json.loads(body)
        return result

    async def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Poll /status until ``predicate`` holds and return that document.

        Tests wait on the daemon's own account of its state (authorizations
        loaded, relays subscribed, requests counted) instead of sleeping.
        """
        process = self._running()
        deadline = self.fixture.reactor.seconds() + timeout
        while True:
            if process.ended:
                raise process.error(f"ended ({process.describe_exit()}) while waiting for {what}")
            status = await self.status()
            if predicate(status):
                return status
            if self.fixture.reactor.seconds() >= deadline:
                raise process.error(
                    f"/status did not show {what} within {timeout} s; last: {json.dumps(status)}"
                )
            await deferLater(self.fixture.reactor, 0.1, lambda: None)

    async def wait_serving(
        self, count: int, *, after: int, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Wait until ``count`` authorizations are loaded and subscribed on every relay.

        /status alone cannot tell: for the short debounce between a reload and
        the new REQ it still shows the old subscription as live.  The pool logs
        its new plan in the same reactor turn that sends the REQ and clears the
        subscribed flag, so once that line (printed after ``after``, see
        ``ManagedProcess.mark``) is seen, "subscribed" in /status means the new
        filter got its EOSE.
        """
        await self.wait_for_log(
            rf"Subscribing to .*\b{count} bunker pubkeys", timeout=timeout, after=after
        )
        relays = len(self.relays)
        return await self.wait_status(
            lambda s: s["authorizations"]["total"] == count and s["relays_subscribed"] == relays,
            f"{count} authorizations subscribed on {relays} relays",
            timeout=timeout,
        )

    def sigterm(self) -> None:
        """Ask the daemon (not its group) to shut down gracefully."""
        self._running().send_signal(signal.SIGTERM)

    def sighup(self) -> None:
        """Ask the daemon to reload."""
        self._running().send_signal(signal.SIGHUP)

    def wait_exit(self, *, timeout: float = DEFAULT_TIMEOUT) -> Deferred[int | None]:
        """Fire with the daemon's exit code."""
        return self._running().wait_exit(timeout=timeout)

    def wait_for_log(
        self, pattern: str, *, timeout: float = DEFAULT_TIMEOUT, after: int = 0
    ) -> Deferred[re.Match[str]]:
        """Wait for a log line matching ``pattern`` (see ManagedProcess.mark)."""
        return self._running().wait_for_line(pattern, timeout=timeout, after=after)

    @property
    def log_lines(self) -> list[str]:
        """Everything the current daemon process logged so far."""
        return self._running().lines

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; the exit code."""
        return await self._running().stop()

    async def provision(
        self, *, count: int = 1, nsec: str | None = None, key: str = "alice"
    ) -> list[str]:
        """``keycast init``, ``key add`` (importing ``nsec`` if given) and ``count``
        single-use authorizations on the daemon's relays; their bunker:// URIs."""
        (await self.run_cli("init")).check()
        (await self.run_cli("key", "add", key, *(("--nsec", nsec) if nsec else ()))).check()
        return [await self.authorize(key) for _ in range(count)]

    async def authorize(self, key: str = "alice", *args: str) -> str:
        """``keycast authorize KEY --relay ...`` on the daemon's relays; the bunker:// URI."""
        relay_args = [arg for url in self.relays for arg in ("--relay", url)]
        return (await self.run_cli("authorize", key, *relay_args, *args)).bunker_uri()

    async def run_cli(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> CliResult:
        """Run ``keycast ARGS`` on this daemon's database and master key."""
        argv = [_venv_script("keycast"), *args]
        process = self.fixture.spawn(f"cli-{args[0] if args else 'keycast'}", argv, env=self.env)
        try:
            code = await process.wait_exit(timeout=timeout)
        finally:
            await process.stop()
        return CliResult(
            argv=argv,
            exit_code=code,
            stdout="\n".join(process.stdout_lines),
            stderr="\n".join(process.stderr_lines),
        )


# Settings the daemon and the CLI read from the environment (DESIGN.md §4) and
# systemd's hand-over variables: none may leak in from the developer's shell.
_DAEMON_ENV_PREFIXES = ("KEYCAST_", "GCP_")
_DAEMON_ENV_NAMES = frozenset(
    {
        "DATABASE_PATH",
        "MASTER_KEY_PATH",
        "PORT",
        "USE_GCP_KMS",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    }
)


def _daemon_setting(name: str) -> bool:
    return name in _DAEMON_ENV_NAMES or name.startswith(_DAEMON_ENV_PREFIXES)


def _venv_script(name: str) -> str:
    """A console script installed beside the running interpreter (twistd, keycast)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.is_file() else shutil.which(name)
    if found is None:
        raise HarnessError(f"no {name} script beside {sys.executable} or on PATH")
    return found


# -------------------------------------------------------------------------- fixture


class InteropFixture:
    """Starts relays, clients and the daemon for one TestCase and cleans them up."""

    def __init__(
        self,
        case: SynchronousTestCase,
        *,
        reactor: Any = global_reactor,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.case = case
        self.reactor = reactor
        self.environ = dict(os.environ if environ is None else environ)
        self.root = Path(case.mktemp()).resolve()  # type: ignore[no-untyped-call]
        self.root.mkdir(parents=True)
        self.processes: list[ManagedProcess] = []
        # Non-persistent, so no idle HTTP connection outlives the test.
        self.http_pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
        case.addCleanup(self.http_pool.closeCachedConnections)

    def base_env(self) -> dict[str, str]:
        """The environment for children: ours, minus what would change their output."""
        env = dict(self.environ)
        env.pop("NODE_OPTIONS", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start a child whose group is killed in the test's cleanups."""
        process = ManagedProcess(
            name,
            argv,
            reactor=self.reactor,
            env=self.base_env() if env is None else env,
            cwd=cwd,
            log_path=self.root / f"{name}.{len(self.processes)}.log",
        )
        self.case.addCleanup(lambda: Deferred.fromCoroutine(process.stop()))
        self.processes.append(process)
        return process.start()

    def report(self) -> str:
        """The tails of every process's output, for assertion messages."""
        return "\n".join(f"--- {p.name} ({p.describe_exit()}):\n{p.tail()}" for p in self.processes)

    # -- relays

    async def local_relay(
        self, *, nip42: str | None = None, port: int | None = None
    ) -> RelayProcess:
        """nostr-sdk's LocalRelay: validating, in memory, drops ephemeral events.

        Pass the ``port`` of a relay that was stopped to restart it where the
        daemon expects it (relay outage tests), or a port nothing listens on yet.
        """
        require_tool("nostr-sdk")
        port = free_port() if port is None else port
        argv = [sys.executable, str(INTEROP_DIR / "local_relay.py"), str(port)]
        if nip42 is not None:
            argv += ["--nip42", nip42]
        process = self.spawn("local-relay", argv)
        match = await process.wait_for_line(r"^LOCAL_RELAY_READY (\S+)")
        return RelayProcess(url=match.group(1).rstrip("/"), port=port, process=process)

    async def nostr_relay(self, *, auth: bool = False, port: int | None = None) -> RelayProcess:
        """nostr-relay from PyPI: stores and replays kind 24133, throttles bad clients.

        Started again with the ``port`` of a stopped one, it reopens the same
        SQLite file, so the events stored before the outage are replayed after it.
        """
        require_tool("nostr-relay")
        port = free_port() if port is None else port
        directory = self.root / f"nostr-relay-{port}"
        directory.mkdir(exist_ok=True)
        template = string.Template((INTEROP_DIR / "nostr-relay.yaml.template").read_text())
        config = directory / "config.yaml"
        config.write_text(
            template.substitute(
                port=port,
                database_url=f"sqlite+aiosqlite:///{directory / 'nostr.sqlite3'}",
                auth_enabled="true" if auth else "false",
            )
        )
        argv = [str(REPO / ".venv-relay" / "bin" / "nostr-relay"), "-c", str(config), "serve"]
        process = self.spawn("nostr-relay", argv, cwd=directory)
        await process.wait_for_line(r"Booting worker with pid")
        await process.wait_for_port(port)
        return RelayProcess(url=f"ws://127.0.0.1:{port}", port=port, process=process)

    async def probe(self, url: str) -> RelayProbe:
        """A RelayProbe on ``url`` that is closed in the test's cleanups."""
        probe = await RelayProbe.open(url, reactor=self.reactor)
        self.case.addCleanup(lambda: Deferred.fromCoroutine(probe.close()))
        return probe

    # -- clients

    async def run_client(
        self,
        kind: str,
        uri: str,
        steps: Iterable[dict[str, Any]],
        *,
        timeout_ms: int = 10_000,
        client_secret: str | None = None,
        keep_going: bool = False,
    ) -> ClientRun:
        """Run one scenario client to the end and parse what it printed.

        ``kind`` is "node" (tests/interop/bunker_client.mjs, nostr-tools
        BunkerSigner) or "sdk" (tests/interop/sdk_client.py, nostr-sdk
        NostrConnect); see CLIENT_KINDS.
        """
        if kind not in CLIENT_KINDS:
            raise ValueError(f"unknown client {kind!r}; known: {', '.join(CLIENT_KINDS)}")
        tool, command = CLIENT_KINDS[kind]
        require_tool(tool)
        step_list = list(steps)
        argv = [*command(), "--uri", uri, "--scenario", json.dumps(step_list)]
        argv += ["--timeout-ms", str(timeout_ms)]
        if client_secret is not None:
            argv += ["--client-secret", client_secret]
        if keep_going:
            argv.append("--keep-going")
        process = self.spawn(f"{kind}-client", argv)
        # Each step is bounded by the client itself; this outer bound only
        # catches a client that hangs outside a step (start-up, shutdown).
        budget = len(step_list) * (timeout_ms / 1000 + 1) + 15
        await process.wait_exit(timeout=budget)
        return ClientRun.parse(process)

    def nostrconnect_client(
        self,
        relays: Sequence[str],
        steps: Iterable[dict[str, Any]],
        *,
        wait_ms: int = 20_000,
        timeout_ms: int = 10_000,
        name: str = "keycast interop",
        perms: str = "",
    ) -> ManagedProcess:
        """Start the nostr-tools client in its nostrconnect:// mode (not waited for).

        It prints ``{"event": "nostrconnect_uri", "uri": ...}`` once it listens, then waits
        at most ``wait_ms`` in BunkerSigner.fromURI and runs ``steps``. Wait for the URI line
        with ``wait_for_line``, pair it (``keycast connect``), then ``wait_exit`` and
        ``ClientRun.parse``.
        """
        require_tool("node-clients")
        argv = [*_node_command(), "--scenario", json.dumps(list(steps))]
        for url in relays:
            argv += ["--nostrconnect", url]
        argv += ["--wait-ms", str(wait_ms), "--timeout-ms", str(timeout_ms), "--name", name]
        if perms:
            argv += ["--perms", perms]
        return self.spawn("nostrconnect-client", argv)

    # -- daemon

    def daemon(
        self,
        *,
        relays: Sequence[str],
        name: str = "daemon",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> DaemonProcess:
        """A daemon configured on fresh files below the test's temp dir (not started)."""
        require_tool("keycast-daemon")
        return DaemonProcess(
            self,
            DaemonPaths.under(self.root / name),
            relays=relays,
            health_port=free_port(),
            extra_args=extra_args,
            env=env,
        )


# ---------------------------------------------------------------------------- probe


class _ProbeProtocol(WebSocketClientProtocol):
    factory: _ProbeFactory

    def onOpen(self) -> None:
        self.factory.probe.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.probe.received(json.loads(payload))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.factory.probe.lost()


class _ProbeFactory(WebSocketClientFactory):
    def __init__(self, url: str, probe: RelayProbe) -> None:
        super().__init__(url)  # type: ignore[no-untyped-call]
        self.protocol = _ProbeProtocol
        self.probe = probe


class RelayProbe:
    """A bare NIP-01 WebSocket client for looking at what reaches a relay.

    It keeps every message the relay sends; ``expect`` takes the first one
    that matches, including messages that arrived before the call.
    """

    def __init__(self, url: str, *, reactor: Any = global_reactor) -> None:
        self.url = url
        self.reactor = reactor
        self.messages: list[list[Any]] = []
        self.closed = False
        self._protocol: _ProbeProtocol | None = None
        self._waiters: list[tuple[Callable[[list[Any]], bool], Deferred[list[Any]]]] = []
        self._open_waiters: list[Deferred[None]] = []
        self._close_waiters: list[Deferred[None]] = []

    @classmethod
    async def open(
        cls, url: str, *, reactor: Any = global_reactor, timeout: float = DEFAULT_TIMEOUT
    ) -> RelayProbe:
        """Connect to a ws://127.0.0.1 relay and complete the WebSocket handshake."""
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"the probe only talks to ws://127.0.0.1:PORT, not {url!r}")
        probe = cls(url, reactor=reactor)
        opened: Deferred[None] = Deferred()
        probe._open_waiters.append(opened)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", parts.port, timeout=timeout)
        await endpoint.connect(_ProbeFactory(url, probe))
        await bounded(opened, timeout, reactor, lambda: probe.error("no WebSocket handshake"))
        return probe

    def error(self, what: str) -> HarnessError:
        """A HarnessError naming the relay and showing the unclaimed messages."""
        seen = "\n".join(json.dumps(m)[:300] for m in self.messages[-10:])
        return HarnessError(f"probe of {self.url}: {what}; unclaimed messages:\n{seen}")

    def opened(self, protocol: _ProbeProtocol) -> None:
        """The handshake completed."""
        self._protocol = protocol
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(None)

    def received(self, message: Any) -> None:
        """Hand a relay message to the first waiter that wants it, or keep it."""
        if not isinstance(message, list):
            return
        for index, (predicate, d) in enumerate(self._waiters):
            if predicate(message):
                del self._waiters[index]
                d.callback(message)
                return
        self.messages.append(message)

    def lost(self) -> None:
        """The TCP connection is gone: fail every waiter."""
        self.closed = True
        pending: list[Deferred[Any]] = [*self._open_waiters, *(d for _, d in self._waiters)]
        self._open_waiters, self._waiters = [], []
        for d in pending:
            d.errback(self.error("connection lost"))
        closing, self._close_waiters = self._close_waiters, []
        for d in closing:
            d.callback(None)

    def send(self, message: list[Any]) -> None:
        """Send one NIP-01 message (a JSON array)."""
        if self._protocol is None or self.closed:
            raise self.error("not open")
        self._protocol.sendMessage(json.dumps(message).encode())  # type: ignore[no-untyped-call]

    def expect(
        self, predicate: Callable[[list[Any]], bool], *, timeout: float = DEFAULT_TIMEOUT
    ) -> Deferred[list[Any]]:
        """Fire with the first unclaimed relay message satisfying ``predicate``."""
        for index, message in enumerate(self.messages):
            if predicate(message):
                del self.messages[index]
                return succeed(message)
        if self.closed:
            return fail(self.error("closed"))
        d: Deferred[list[Any]] = Deferred()
        self._waiters.append((predicate, d))

        def describe() -> Exception:
            self._waiters = [(p, w) for p, w in self._waiters if w is not d]
            return self.error(f"no matching message within {timeout} s")

        return bounded(d, timeout, self.reactor, describe)

    async def subscribe(
        self, sub_id: str, *filters: dict[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> list[list[Any]]:
        """REQ and wait for EOSE; return the stored events the relay sent before it."""
        self.send(["REQ", sub_id, *filters])
        await self.expect(lambda m: m[:2] == ["EOSE", sub_id], timeout=timeout)
        stored = [m for m in self.messages if m[:2] == ["EVENT", sub_id]]
        self.messages = [m for m in self.messages if m[:2] != ["EVENT", sub_id]]
        return stored

    async def publish(
        self, event: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Any]:
        """EVENT and return the relay's OK message for it."""
        self.send(["EVENT", event])
        return await self.expect(lambda m: m[:2] == ["OK", event["id"]], timeout=timeout)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Drop the connection and wait until the socket is gone (idempotent).

        Waiting matters: trial reports a socket still open after the test as
        a dirty reactor.
        """
        if self._protocol is None or self._protocol.transport is None or self.closed:
            return
        gone: Deferred[None] = Deferred()
        self._close_waiters.append(gone)
        self._protocol.transport.loseConnection()
        await bounded(gone, timeout, self.reactor, lambda: self.error("did not close"))
