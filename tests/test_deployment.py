"""Static and scripted checks of the deployment artefacts (Dockerfile, deployment/*).

What can be checked without Docker, systemd as PID 1, supervisord, Cloud Run or Litestream is
checked with the real tools where they exist: ``systemd-analyze verify`` on the unit, supervisor's
own configuration parser, ``logrotate -d``, ``shellcheck`` on every script, and the daemon's own
configuration parser (``config_from``) on every environment a deployment sets, so no deployment
sets a variable the daemon ignores (reference B11) or rejects. The scripts themselves run against
a stand-in HTTP server (check-signer.sh, healthcheck.sh), a stand-in ``keycast`` (backup-db.sh)
and a stand-in ``litestream`` that records its arguments (run-with-litestream.sh). Their runs
against the real daemon are in tests/test_deployment_live.py.

A tool that is missing skips its test with the reason, unless CI=true, where it fails.
"""

from __future__ import annotations

import configparser
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from keycast_tw.config import OPTIONS, ConfigError, config_from
from keycast_tw.relay.options import RelayOptions

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deployment"
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
TIMEOUT = 60  # seconds any one child process may take

# Variables the deployments set that the daemon does not read, and who reads them instead.
NOT_DAEMON_ENV = {
    "PYTHONUNBUFFERED": "python",
    "HOME": "supervisor's user switch keeps root's HOME otherwise",
    "LITESTREAM_REPLICA_URL": "litestream.yml",
    "KEYCAST_REQUIRE_REPLICA": "run-with-litestream.sh",
}
DAEMON_ENV = {name for spec in OPTIONS for name in spec.env}


def need_tool(name: str) -> str:
    """The path of ``name``; skip without it, or fail under CI=true."""
    found = shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (tests/run.sh installs it when run as root)"
    if os.environ.get("CI") == "true":
        raise AssertionError(reason)
    raise SkipTest(reason)


def run(
    argv: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a child to completion within TIMEOUT seconds, capturing text output."""
    return subprocess.run(
        argv, env=None if env is None else dict(env), cwd=cwd, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )


def read_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}: keys repeat, so no configparser."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    """Every value given to ``key`` in ``section``, in order."""
    return [value for k, value in unit.get(section, []) if k == key]


def unit_environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """The Environment= assignments of the [Service] section."""
    env = {}
    for value in unit_values(unit, "Service", "Environment"):
        for word in shlex.split(value):
            name, _, setting = word.partition("=")
            env[name] = setting
    return env


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """The instructions of each named stage; the unnamed last stage is under ""."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in dockerfile_instructions(text):
        if instruction == "FROM":
            match = re.search(r"\s+AS\s+(\S+)$", args, re.IGNORECASE)
            current = stages.setdefault(match.group(1) if match else "", [])
        current.append((instruction, args))
    return stages


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV settings among ``instructions``."""
    env = {}
    for instruction, args in instructions:
        if instruction == "ENV":
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def dockerfile_cmd() -> list[str]:
    """The runtime stage's CMD, which must be in exec (JSON) form."""
    stages = dockerfile_stages((ROOT / "Dockerfile").read_text())
    cmds = [args for instruction, args in stages["runtime"] if instruction == "CMD"]
    return list(json.loads(cmds[-1]))


def check_daemon_env(test: SynchronousTestCase, env: Mapping[str, str], where: str) -> None:
    """Every variable in ``env`` is read by someone, and the daemon accepts the whole set."""
    unknown = set(env) - DAEMON_ENV - set(NOT_DAEMON_ENV)
    test.assertEqual(unknown, set(), f"{where} sets variables nothing reads")
    try:
        config_from({}, dict(env))
    except ConfigError as error:
        test.fail(f"{where}: the daemon rejects its environment: {error}")


class ShellScriptTests(SynchronousTestCase):
    """Every shell script is executable and shellcheck-clean."""

    def test_scripts_present(self) -> None:
        """The scripts the issue asks for exist and are executable."""
        names = {path.relative_to(DEPLOY).as_posix() for path in SCRIPTS}
        self.assertTrue({
            "healthcheck.sh", "check-signer.sh", "backup-db.sh", "install-systemd.sh",
            "cloudrun/run-with-litestream.sh",
        } <= names, names)
        for path in SCRIPTS:
            self.assertTrue(os.access(path, os.X_OK), f"{path} is not executable")

    def test_shellcheck(self) -> None:
        """shellcheck finds nothing in any script (all severities)."""
        shellcheck = need_tool("shellcheck")
        result = run([shellcheck, "--external-sources", *map(str, SCRIPTS)])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class SystemdUnitTests(SynchronousTestCase):
    """keycast-signer.service: valid for systemd, with the guide's policy and real paths."""

    def setUp(self) -> None:
        self.text = (DEPLOY / "keycast-signer.service").read_text()
        self.unit = read_unit(self.text)
        self.env = unit_environment(self.unit)

    def one(self, section: str, key: str) -> str:
        values = unit_values(self.unit, section, key)
        self.assertEqual(len(values), 1, f"{section}.{key}: {values}")
        return values[0]

    def test_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify accepts the unit without a single warning.

        verify insists that the ExecStart binary exists, so it checks a temporary copy whose
        /opt/keycast/venv/bin/twistd is this virtualenv's twistd; nothing else is changed.
        """
        analyze = need_tool("systemd-analyze")
        twistd = Path(sys.executable).with_name("twistd")
        self.assertTrue(twistd.exists(), twistd)
        self.assertIn("/opt/keycast/venv/bin/twistd ", self.text)
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        copy = tmp / "keycast-signer.service"
        copy.write_text(self.text.replace("/opt/keycast/venv/bin/twistd", str(twistd)))
        result = run([analyze, "verify", "--man=no", str(copy)])
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_notify_and_watchdog(self) -> None:
        """Type=notify with a watchdog, and the notify socket's address family allowed."""
        self.assertEqual(self.one("Service", "Type"), "notify")
        self.assertEqual(self.one("Service", "NotifyAccess"), "main")
        self.assertTrue(self.one("Service", "WatchdogSec"))
        self.assertIn("AF_UNIX", self.one("Service", "RestrictAddressFamilies").split())

    def test_restart_policy(self) -> None:
        """Restart on failure after 5 s, at most 5 starts in 60 s (in [Unit], where it works)."""
        self.assertEqual(self.one("Service", "Restart"), "on-failure")
        self.assertEqual(self.one("Service", "RestartSec"), "5s")
        self.assertEqual(self.one("Unit", "StartLimitBurst"), "5")
        self.assertEqual(self.one("Unit", "StartLimitIntervalSec"), "60s")
        self.assertEqual(self.one("Service", "KillSignal"), "SIGTERM")

    def test_hardening_and_limits(self) -> None:
        """The guide's hardening directives and resource limits are all set."""
        for key, value in [
            ("NoNewPrivileges", "true"), ("PrivateTmp", "true"), ("ProtectSystem", "strict"),
            ("ProtectHome", "true"), ("MemoryMax", "1G"), ("LimitNOFILE", "65536"),
        ]:
            self.assertEqual(self.one("Service", key), value, key)
        self.assertIn("@system-service", unit_values(self.unit, "Service", "SystemCallFilter"))

    def test_paths_really_read(self) -> None:
        """The database, reload signal and pidfile are writable; every path is one the daemon
        reads, and the master key sits where the install script puts it."""
        writable = self.one("Service", "ReadWritePaths").split()
        database = self.env["DATABASE_PATH"]
        self.assertIn(os.path.dirname(database), writable)
        self.assertIn(os.path.dirname(self.env["KEYCAST_RELOAD_SIGNAL"]), writable)
        self.assertEqual(self.env["MASTER_KEY_PATH"], "/opt/keycast/master.key")
        argv = shlex.split(self.one("Service", "ExecStart"))
        pidfile = [a.split("=", 1)[1] for a in argv if a.startswith("--pidfile=")]
        runtime = "/run/" + self.one("Service", "RuntimeDirectory")
        self.assertEqual(pidfile, [self.one("Service", "PIDFile")])
        self.assertEqual(os.path.dirname(pidfile[0]), runtime)
        self.assertEqual(argv[-1], "keycast")
        self.assertIn("--nodaemon", argv)
        check_daemon_env(self, self.env, "keycast-signer.service")


class SupervisorTests(SynchronousTestCase):
    """supervisor-signer.conf: parsed by supervisor itself, equivalent to the systemd unit."""

    def parsed(self) -> dict[str, Any]:
        """The program section as supervisord sees it, parsed in a child process.

        supervisor checks that the user and the log directory exist, so the copy it reads has
        user= set to the current user and /var/log/keycast moved into a temporary directory.
        """
        try:
            import supervisor  # noqa: F401
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            raise SkipTest("supervisor is not installed in this virtualenv") from None
        tmp = Path(self.mktemp()).resolve()
        (tmp / "log").mkdir(parents=True)
        text = (DEPLOY / "supervisor-signer.conf").read_text()
        user = pwd.getpwuid(os.getuid()).pw_name
        text = re.sub(r"(?m)^user=.*$", f"user={user}", text)
        (tmp / "signer.conf").write_text(text.replace("/var/log/keycast", str(tmp / "log")))
        (tmp / "supervisord.conf").write_text(
            f"[supervisord]\nlogfile={tmp}/supervisord.log\npidfile={tmp}/supervisord.pid\n"
            f"[include]\nfiles={tmp}/signer.conf\n"
        )
        probe = (
            "import json, sys\n"
            "from supervisor.options import ServerOptions\n"
            "o = ServerOptions()\n"
            "o.realize(args=['-c', sys.argv[1]])\n"
            "[p] = [p for g in o.process_group_configs for p in g.process_configs]\n"
            "print(json.dumps({'name': p.name, 'command': p.command, 'stopsignal': p.stopsignal,"
            " 'autorestart': p.autorestart.__name__, 'exitcodes': p.exitcodes,"
            " 'stdout': p.stdout_logfile, 'stderr': p.stderr_logfile,"
            " 'stdout_maxbytes': p.stdout_logfile_maxbytes, 'environment': p.environment,"
            " 'startretries': p.startretries, 'stopwaitsecs': p.stopwaitsecs,"
            " 'directory': p.directory, 'umask': p.umask}))\n"
        )
        result = run([sys.executable, "-c", probe, str(tmp / "supervisord.conf")])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        parsed: dict[str, Any] = json.loads(result.stdout)
        parsed["logdir"] = str(tmp / "log")
        return parsed

    def test_supervisor_parses_it(self) -> None:
        """supervisor's parser accepts the file: TERM to stop, restart only after a failure."""
        p = self.parsed()
        self.assertEqual(p["name"], "keycast-signer")
        self.assertEqual(p["stopsignal"], 15)
        self.assertEqual(p["autorestart"], "RestartWhenExitUnexpected")
        self.assertEqual(p["exitcodes"], [0])
        self.assertEqual(p["stopwaitsecs"], 30)
        self.assertEqual(p["umask"], 0o77)
        self.assertEqual(p["stdout"], p["logdir"] + "/signer.out.log")
        self.assertEqual(p["stderr"], p["logdir"] + "/signer.err.log")
        self.assertEqual(p["stdout_maxbytes"], 0)

    def test_same_daemon_as_systemd(self) -> None:
        """Same twistd command (pidfile aside), directory and daemon settings as the unit."""
        p = self.parsed()
        unit = read_unit((DEPLOY / "keycast-signer.service").read_text())
        [exec_start] = unit_values(unit, "Service", "ExecStart")

        def no_pidfile(command: str) -> list[str]:
            return [a for a in shlex.split(command) if not a.startswith("--pidfile=")]

        self.assertEqual(no_pidfile(p["command"]), no_pidfile(exec_start))
        self.assertEqual(p["directory"], unit_values(unit, "Service", "WorkingDirectory")[0])
        env = p["environment"]
        unit_env = unit_environment(unit)
        for name in ("DATABASE_PATH", "MASTER_KEY_PATH", "KEYCAST_RELOAD_SIGNAL"):
            self.assertEqual(env[name], unit_env[name], name)
        pidfile = [a for a in shlex.split(p["command"]) if a.startswith("--pidfile=")]
        self.assertEqual(
            os.path.dirname(pidfile[0].split("=", 1)[1]), os.path.dirname(env["DATABASE_PATH"])
        )
        check_daemon_env(self, env, "supervisor-signer.conf")

    def test_no_duplicate_keys(self) -> None:
        """No key is given twice (the original's duplicate stopwaitsecs, reference B25)."""
        parser = configparser.RawConfigParser(strict=True)
        parser.read_string((DEPLOY / "supervisor-signer.conf").read_text())
        self.assertEqual(parser.sections(), ["program:keycast-signer"])


class LogrotateTests(SynchronousTestCase):
    """logrotate/keycast: valid for logrotate, and its postrotate signals supervisord."""

    def test_logrotate_accepts_it(self) -> None:
        """logrotate -d parses the policy with no error (paths and owner moved to a temp dir)."""
        logrotate = need_tool("logrotate")
        tmp = Path(self.mktemp()).resolve()
        (tmp / "log").mkdir(parents=True)
        (tmp / "log" / "signer.out.log").write_text("line\n")
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        text = (DEPLOY / "logrotate" / "keycast").read_text()
        text = text.replace("/var/log/keycast", str(tmp / "log"))
        text = text.replace("keycast keycast", f"{user} {group}")
        (tmp / "keycast").write_text(text)
        result = run([logrotate, "-d", "-s", str(tmp / "state"), str(tmp / "keycast")])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("error", result.stdout + result.stderr)

    def test_postrotate_reopens_supervisor_logs(self) -> None:
        """postrotate sends SIGUSR2 (supervisord reopens child logs) to supervisord's pidfile,
        the pidfile Debian's supervisord.conf names."""
        text = (DEPLOY / "logrotate" / "keycast").read_text()
        script = text.split("postrotate", 1)[1].split("endscript", 1)[0]
        self.assertIn("kill -USR2", script)
        self.assertIn("/var/run/supervisord.pid", script)
        self.assertIn("/var/log/keycast/*.log {", text)


class ComposeTests(SynchronousTestCase):
    """docker-compose.yml: the guide's restart, health check and log rotation."""

    def setUp(self) -> None:
        self.compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
        self.service = self.compose["services"]["keycast-signer"]

    def test_restart_and_healthcheck(self) -> None:
        """unless-stopped; health every 10 s, 5 s timeout, 3 retries, a long start period."""
        self.assertEqual(self.service["restart"], "unless-stopped")
        check = self.service["healthcheck"]
        self.assertEqual(check["test"], ["CMD", "/usr/local/bin/healthcheck.sh", "signer"])
        self.assertEqual(
            (check["interval"], check["timeout"], check["retries"]), ("10s", "5s", 3)
        )
        self.assertGreaterEqual(int(check["start_period"].rstrip("s")), 60)

    def test_log_rotation(self) -> None:
        """json-file logs, 10 MB x 3, compressed."""
        self.assertEqual(self.service["logging"], {
            "driver": "json-file",
            "options": {"max-size": "10m", "max-file": "3", "compress": "true"},
        })

    def test_volumes_hold_database_and_key(self) -> None:
        """The database and the master key live in named volumes, and the daemon accepts the
        environment."""
        env = self.service["environment"]
        targets = {v.split(":")[1]: v.split(":")[0] for v in self.service["volumes"]}
        self.assertIn(os.path.dirname(env["DATABASE_PATH"]), targets)
        self.assertIn(os.path.dirname(env["MASTER_KEY_PATH"]), targets)
        self.assertTrue(set(targets.values()) <= set(self.compose["volumes"]))
        self.assertEqual(self.service["stop_signal"], "SIGTERM")
        check_daemon_env(self, env, "docker-compose.yml")

    def test_builds_the_top_level_dockerfile(self) -> None:
        """The build context is the repository root and its Dockerfile."""
        build = self.service["build"]
        self.assertEqual((DEPLOY / build["context"]).resolve(), ROOT)
        self.assertTrue((DEPLOY / build["context"] / build["dockerfile"]).exists())


class DockerfileTests(SynchronousTestCase):
    """The top-level Dockerfile: non-root, twistd as PID 1, health check, no secrets."""

    def setUp(self) -> None:
        self.text = (ROOT / "Dockerfile").read_text()
        self.stages = dockerfile_stages(self.text)
        self.runtime = self.stages["runtime"]

    def test_stages(self) -> None:
        """build -> runtime (the default target) and cloudrun (runtime + Litestream)."""
        self.assertTrue({"build", "runtime", "cloudrun", ""} <= set(self.stages))
        self.assertEqual(self.stages[""], [("FROM", "runtime")])
        self.assertEqual(self.stages["cloudrun"][0], ("FROM", "runtime AS cloudrun"))

    def test_non_root(self) -> None:
        """The runtime stage runs as an unprivileged uid."""
        users = [args for instruction, args in self.runtime if instruction == "USER"]
        self.assertEqual(len(users), 1)
        self.assertNotIn(users[0].split(":")[0], ("0", "root"))

    def test_daemon_is_pid_1(self) -> None:
        """CMD is exec form (no shell in between), runs twistd in the foreground, no ENTRYPOINT
        wraps it in the default image, and the stop signal is SIGTERM."""
        cmd = dockerfile_cmd()
        self.assertEqual(cmd[0], "twistd")
        self.assertIn("--nodaemon", cmd)
        self.assertEqual(cmd[-1], "keycast")
        self.assertNotIn("ENTRYPOINT", [i for i, _ in self.runtime])
        self.assertIn(("STOPSIGNAL", "SIGTERM"), self.runtime)

    def test_healthcheck(self) -> None:
        """HEALTHCHECK runs healthcheck.sh, which the image copies to /usr/local/bin."""
        [check] = [args for instruction, args in self.runtime if instruction == "HEALTHCHECK"]
        self.assertIn('CMD ["/usr/local/bin/healthcheck.sh", "signer"]', check)
        for option in ("--interval=10s", "--timeout=5s", "--retries=3"):
            self.assertIn(option, check)
        copies = [args for instruction, args in self.runtime if instruction == "COPY"]
        self.assertTrue(any(
            "deployment/healthcheck.sh" in c and c.endswith("/usr/local/bin/") for c in copies
        ))

    def test_volumes_and_environment(self) -> None:
        """The database and master key directories are volumes; the daemon accepts the ENV."""
        env = dockerfile_env(self.runtime)
        [volumes] = [json.loads(a) for i, a in self.runtime if i == "VOLUME"]
        self.assertIn(os.path.dirname(env["DATABASE_PATH"]), volumes)
        self.assertIn(os.path.dirname(env["MASTER_KEY_PATH"]), volumes)
        env.pop("PATH")
        check_daemon_env(self, env, "Dockerfile")

    def test_no_secret_baked_in(self) -> None:
        """Every COPY source exists and passes .dockerignore; keys and databases never do."""
        ignore = (ROOT / ".dockerignore").read_text().split()
        for pattern in ("**/*.key", "**/*.db", "**/*.db-wal", "**/.reload_signal"):
            self.assertIn(pattern, ignore)
        included = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
        for instruction, args in dockerfile_instructions(self.text):
            if instruction != "COPY" or args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for source in sources:
                self.assertTrue((ROOT / source).exists(), source)
                self.assertIn(source.split("/")[0].rstrip("/"), included, source)
                self.assertNotRegex(source, r"\.(key|db)$")
        self.assertNotRegex(self.text, r"(?i)(nsec1|BEGIN .*PRIVATE|MASTER_KEY=)")

    def test_command_line_parses_outside_docker(self) -> None:
        """twistd's own option parser accepts the image's CMD (the keycast plugin included)."""
        try:
            import keycast_tw.tap  # noqa: F401
        except ImportError:
            raise SkipTest("keycast_tw.tap (the daemon) is not in this tree yet") from None
        probe = (
            "import json, sys\n"
            "from twisted.scripts.twistd import ServerOptions\n"
            "o = ServerOptions()\n"
            "o.parseOptions(json.loads(sys.argv[1])[1:])\n"
            "print(json.dumps([o['pidfile'], o['nodaemon'], o.subCommand]))\n"
        )
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        env = dict(os.environ, DATABASE_PATH=str(tmp / "keycast.db"),
                   MASTER_KEY_PATH=str(tmp / "master.key"), PORT="0")
        result = run([sys.executable, "-c", probe, json.dumps(dockerfile_cmd())], env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout.splitlines()[-1]), ["", 1, "keycast"])


class CloudRunTests(SynchronousTestCase):
    """cloudrun/service.yaml, cloudbuild.yaml and litestream.yml."""

    def setUp(self) -> None:
        self.service = yaml.safe_load((DEPLOY / "cloudrun" / "service.yaml").read_text())
        self.template = self.service["spec"]["template"]
        [self.container] = self.template["spec"]["containers"]

    def env(self) -> dict[str, str]:
        """The container's environment, secrets replaced by plausible values."""
        samples = {"GCP_PROJECT_ID": "example-project", "GCP_KMS_LOCATION": "global",
                   "GCP_KMS_KEY_RING": "keycast-keys", "GCP_KMS_KEY_NAME": "master-key"}
        env = {}
        for item in self.container["env"]:
            if "valueFrom" in item:
                self.assertIn("secretKeyRef", item["valueFrom"], item["name"])
                env[item["name"]] = samples[item["name"]]
            else:
                env[item["name"]] = item["value"]
        return env

    def test_probes(self) -> None:
        """Startup probe on /ready (with time for a restore and a large load), liveness on
        /health."""
        startup, live = self.container["startupProbe"], self.container["livenessProbe"]
        self.assertEqual(startup["httpGet"]["path"], "/ready")
        self.assertEqual(live["httpGet"]["path"], "/health")
        self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"], 120)
        self.assertEqual(startup["httpGet"]["port"], self.container["ports"][0]["containerPort"])

    def test_one_warm_instance(self) -> None:
        """Exactly one instance, always on, CPU not throttled between requests."""
        annotations = self.template["metadata"]["annotations"]
        self.assertEqual(annotations["autoscaling.knative.dev/minScale"], "1")
        self.assertEqual(annotations["autoscaling.knative.dev/maxScale"], "1")
        self.assertEqual(annotations["run.googleapis.com/cpu-throttling"], "false")

    def test_same_command_as_the_image(self) -> None:
        """The container runs the image's daemon command (under the Litestream entrypoint)."""
        self.assertEqual(self.container["args"], dockerfile_cmd())
        self.assertNotIn("command", self.container)
        stages = dockerfile_stages((ROOT / "Dockerfile").read_text())
        self.assertIn(
            ("ENTRYPOINT", '["/usr/local/bin/run-with-litestream.sh"]'), stages["cloudrun"]
        )

    def test_environment(self) -> None:
        """KMS settings come from Secret Manager; the daemon accepts the environment; the
        replica path is this service's own."""
        env = self.env()
        self.assertEqual(env["USE_GCP_KMS"], "true")
        self.assertEqual(env["KEYCAST_LOG_FORMAT"], "json")
        self.assertNotIn("PORT", env)  # Cloud Run sets it; setting it is an error there
        self.assertTrue(env["LITESTREAM_REPLICA_URL"].endswith("/keycast-signer/keycast.db"))
        check_daemon_env(self, env, "cloudrun/service.yaml")
        # Cloud Run kills 10 s after SIGTERM: the drain and the relays' close frames must leave
        # Litestream time for its last sync.
        budget = float(env["KEYCAST_SHUTDOWN_TIMEOUT"]) + RelayOptions().close_timeout
        self.assertLessEqual(budget, 8.0)

    def test_litestream_config(self) -> None:
        """litestream.yml replicates the daemon's database to the URL the service sets."""
        config = yaml.safe_load((DEPLOY / "litestream.yml").read_text())
        [db] = config["dbs"]
        self.assertEqual(db["path"], "${DATABASE_PATH}")
        [replica] = db["replicas"]
        self.assertEqual(replica["url"], "${LITESTREAM_REPLICA_URL}")
        self.assertEqual(replica["retention"], "168h")
        env = self.env()
        text = (DEPLOY / "litestream.yml").read_text()
        for name in re.findall(r"\$\{(\w+)\}", text):
            self.assertIn(name, env)

    def test_cloudbuild_renders_and_deploys(self) -> None:
        """The render step, run here by bash, fills every @TOKEN@ of service.yaml; the build
        targets the cloudrun stage and the deploy step replaces the rendered service."""
        build = yaml.safe_load((DEPLOY / "cloudrun" / "cloudbuild.yaml").read_text())
        steps = {step["id"]: step for step in build["steps"]}
        self.assertIn("--target=cloudrun", steps["build"]["args"])
        self.assertEqual(steps["deploy"]["args"][:4],
                         ["run", "services", "replace", "/workspace/service.rendered.yaml"])
        values = dict(build["substitutions"], PROJECT_ID="example-project", BUILD_ID="b-1")
        command = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], steps["render"]["args"][1])
        tmp = Path(self.mktemp()).resolve()
        (tmp / "deployment" / "cloudrun").mkdir(parents=True)
        shutil.copy(DEPLOY / "cloudrun" / "service.yaml", tmp / "deployment" / "cloudrun")
        command = command.replace("/workspace/", f"{tmp}/")
        result = run(["bash", "-c", command], cwd=tmp)
        self.assertEqual(result.returncode, 0, result.stderr)
        rendered_text = (tmp / "service.rendered.yaml").read_text()
        self.assertNotIn("@", rendered_text.replace("@example-project.iam", ""))
        rendered = yaml.safe_load(rendered_text)
        [container] = rendered["spec"]["template"]["spec"]["containers"]
        image = "us-central1-docker.pkg.dev/example-project/docker/keycast-signer:b-1"
        self.assertEqual(container["image"], image)
        self.assertEqual(build["images"], [image.replace("example-project", "${PROJECT_ID}")
                                           .replace("b-1", "${BUILD_ID}")
                                           .replace("us-central1", "${_REGION}")
                                           .replace("/docker/", "/${_REPOSITORY}/")
                                           .replace("keycast-signer:", "${_SERVICE}:")])


class LitestreamWrapperTests(SynchronousTestCase):
    """run-with-litestream.sh, run with a stand-in litestream that records its arguments."""

    DAEMON: ClassVar[list[str]] = [
        "twistd", "--nodaemon", "--pidfile=", "--umask=0077",
        "--logger=keycast_tw.logs.observer", "keycast",
    ]

    def wrapper(self, *args: str, restore_status: int = 0,
                **env: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        """Run the wrapper; return its result and the calls the fake litestream saw."""
        tmp = Path(self.mktemp()).resolve()
        bin_dir = tmp / "bin"
        bin_dir.mkdir(parents=True)
        log = tmp / "calls.jsonl"
        fake = bin_dir / "litestream"
        fake.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            "    f.write(json.dumps({'argv': sys.argv[1:], 'pid': os.getpid(),"
            " 'ppid': os.getppid()}) + '\\n')\n"
            f"sys.exit({restore_status} if sys.argv[1] == 'restore' else 0)\n"
        )
        fake.chmod(0o755)
        environ = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "DATABASE_PATH": str(tmp / "data" / "keycast.db"),
            "LITESTREAM_REPLICA_URL": "gcs://bucket/keycast-signer/keycast.db",
        }
        environ.update(env)
        environ = {k: v for k, v in environ.items() if v != "-"}
        result = run([str(DEPLOY / "cloudrun" / "run-with-litestream.sh"), *args], env=environ)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        self.tmp = tmp
        return result, calls

    def test_restores_then_execs_replicate(self) -> None:
        """Restore (only when no database and a replica exist), then exec litestream replicate
        with the daemon command as -exec: litestream replaces the wrapper (same pid)."""
        result, calls = self.wrapper(*self.DAEMON)
        self.assertEqual(result.returncode, 0, result.stderr)
        restore, replicate = calls
        self.assertEqual(restore["argv"], [
            "restore", "-config", "/etc/litestream.yml", "-if-db-not-exists",
            "-if-replica-exists", str(self.tmp / "data" / "keycast.db"),
        ])
        self.assertEqual(replicate["argv"], [
            "replicate", "-config", "/etc/litestream.yml", "-exec", " ".join(self.DAEMON),
        ])
        # The wrapper ran restore as its child, then became replicate (exec): same pid, and
        # replicate's parent is this test process.
        self.assertEqual(replicate["pid"], restore["ppid"])
        self.assertEqual(replicate["ppid"], os.getpid())
        self.assertTrue((self.tmp / "data").is_dir())

    def test_required_replica(self) -> None:
        """KEYCAST_REQUIRE_REPLICA=true drops -if-replica-exists: no replica, no start."""
        result, calls = self.wrapper(*self.DAEMON, KEYCAST_REQUIRE_REPLICA="true",
                                     LITESTREAM_CONFIG="/config/ls.yml")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(calls[0]["argv"], [
            "restore", "-config", "/config/ls.yml", "-if-db-not-exists",
            str(self.tmp / "data" / "keycast.db"),
        ])

    def test_failed_restore_stops_the_start(self) -> None:
        """A failing restore exits non-zero and the daemon never starts (reference B22)."""
        result, calls = self.wrapper(*self.DAEMON, restore_status=1)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual([c["argv"][0] for c in calls], ["restore"])

    def test_refuses_bad_input(self) -> None:
        """Unquotable arguments, no command, no replica URL or a bad flag: exit non-zero and
        litestream is never run."""
        cases: list[tuple[list[str], dict[str, str]]] = [
            (["twistd", "--relay", "wss://a b"], {}),
            (["twistd", "--x='y'"], {}),
            (["twistd", "$HOME"], {}),
            ([], {}),
            (self.DAEMON, {"LITESTREAM_REPLICA_URL": "-"}),
            (self.DAEMON, {"KEYCAST_REQUIRE_REPLICA": "yes"}),
        ]
        for args, env in cases:
            result, calls = self.wrapper(*args, **env)
            self.assertNotEqual(result.returncode, 0, (args, env))
            self.assertEqual(calls, [], (args, env))
            self.assertTrue(result.stderr.strip(), (args, env))


class FakeDaemon:
    """A stand-in for the daemon's HTTP endpoints on 127.0.0.1: canned (status, body) by path.

    The scripts under test are separate processes that block on HTTP, so the server runs in a
    thread of its own instead of on the reactor the test would have to spin.
    """

    def __init__(self, routes: dict[str, tuple[int, str]]) -> None:
        self.routes = routes
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = daemon.routes.get(self.path, (404, "not found"))
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT)


def status_json(*, connected: int = 3, ok: int = 100, error: int = 0,
                last_request_at: float | None = None, uptime: float = 100.0) -> str:
    """A /status body in the daemon's shape."""
    relays = [
        {"url": f"wss://relay{i}.example", "connected": i < connected,
         "subscribed": i < connected, "reconnects": 0, "last_event_at": None}
        for i in range(3)
    ]
    return json.dumps({
        "version": "0.1.0", "uptime_seconds": uptime, "ready": connected > 0,
        "authorizations": {"total": 2, "regular": 2, "oauth": 0},
        "relays": relays,
        "requests": {"sign_event": {"ok": ok, "error": error}, "connect": {"ok": 1, "error": 0}},
        "last_request_at": last_request_at, "last_reload": {},
    })


class MonitoringScriptTests(SynchronousTestCase):
    """healthcheck.sh and check-signer.sh against a stand-in daemon: exit codes and messages."""

    def daemon(self, **routes: tuple[int, str]) -> FakeDaemon:
        need_tool("curl")
        defaults = {"/health": (200, "OK"), "/ready": (200, '{"ready": true}'),
                    "/status": (200, status_json(last_request_at=time.time()))}
        defaults.update({"/" + k: v for k, v in routes.items()})
        fake = FakeDaemon(defaults)
        self.addCleanup(fake.close)
        return fake

    def check(self, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": os.environ["PATH"], "KEYCAST_URL": url, **env}
        return run([str(DEPLOY / "check-signer.sh"), *args], env=environ)

    def closed_url(self) -> str:
        """A 127.0.0.1 URL where nothing listens."""
        fake = FakeDaemon({})
        url = fake.url
        fake.close()
        return url

    def test_healthcheck(self) -> None:
        """healthcheck.sh: 0 when /health answers 200, 1 on 500 or when nothing listens."""
        good = self.daemon()
        bad = self.daemon(health=(500, "no"))
        for url, expected in [(good.url, 0), (bad.url, 1), (self.closed_url(), 1)]:
            env = {"PATH": os.environ["PATH"], "KEYCAST_HEALTH_URL": url + "/health"}
            result = run([str(DEPLOY / "healthcheck.sh"), "signer"], env=env)
            self.assertEqual(result.returncode, expected, (url, result.stdout, result.stderr))
        result = run([str(DEPLOY / "healthcheck.sh"), "api"])
        self.assertEqual(result.returncode, 2)

    def test_all_good(self) -> None:
        """Healthy, ready, every relay up, no errors, recent activity: exit 0, OK."""
        result = self.check(self.daemon().url)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("3/3 relays connected", result.stdout)
        self.assertTrue(result.stdout.rstrip().splitlines()[-1].startswith("OK:"))

    def test_critical(self) -> None:
        """Not alive, not ready (reasons shown) or no relay connected: exit 2, CRITICAL."""
        not_ready = self.daemon(ready=(503, '{"ready": false, "reasons": ["no relay"]}'))
        no_relay = self.daemon(status=(200, status_json(connected=0)))
        for url, text in [(self.closed_url(), "not responding"),
                          (not_ready.url, "no relay"), (no_relay.url, "0/3 relays")]:
            result = self.check(url)
            self.assertEqual(result.returncode, 2, result.stdout)
            self.assertIn("CRITICAL", result.stdout)
            self.assertIn(text, result.stdout)

    def test_warnings(self) -> None:
        """Too few relays, a high error rate or a long silence: exit 1, WARNING."""
        cases = [
            (status_json(connected=1), [], "fewer than 2"),
            (status_json(ok=50, error=50, last_request_at=time.time()), [], "above 10%"),
            (status_json(last_request_at=time.time() - 7200), ["--max-idle", "3600"],
             "idle for more than 3600 s"),
        ]
        for body, args, text in cases:
            result = self.check(self.daemon(status=(200, body)).url, *args)
            self.assertEqual(result.returncode, 1, result.stdout)
            self.assertIn("WARNING: ", result.stdout)
            self.assertIn(text, result.stdout)

    def test_thresholds_from_environment(self) -> None:
        """Thresholds come from the environment too; few requests are not judged."""
        body = status_json(ok=1, error=4, connected=1)
        url = self.daemon(status=(200, body)).url
        result = self.check(url, KEYCAST_CHECK_MIN_RELAYS="1")
        self.assertEqual(result.returncode, 0, result.stdout)
        result = self.check(url, KEYCAST_CHECK_MIN_RELAYS="1", KEYCAST_CHECK_MIN_REQUESTS="5")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("no NIP-46 request since start-up", result.stdout)

    def test_state_file_measures_since_previous_run(self) -> None:
        """With --state the error rate is that of the requests since the previous run."""
        fake = self.daemon(status=(200, status_json(ok=1000, error=100)))
        state = Path(self.mktemp()).resolve()
        first = self.check(fake.url, "--state", str(state), "--max-error-rate", "5")
        self.assertEqual(first.returncode, 1, first.stdout)
        fake.routes["/status"] = (200, status_json(ok=1100, error=101))
        second = self.check(fake.url, "--state", str(state), "--max-error-rate", "5")
        self.assertEqual(second.returncode, 0, second.stdout)
        self.assertIn("1 of 101 NIP-46 requests answered with an error since the previous",
                      second.stdout)
        self.assertEqual(json.loads(state.read_text()), {"ok": 1101, "error": 101})

    def test_unknown(self) -> None:
        """Unreadable /status or bad usage: exit 3, UNKNOWN, no traceback."""
        garbage = self.daemon(status=(200, "<html>"))
        for args in [[], ["--bogus"], ["--min-relays", "two"]]:
            url = garbage.url
            result = self.check(url, *args)
            self.assertEqual(result.returncode, 3, (args, result.stdout, result.stderr))
            self.assertIn("UNKNOWN", result.stdout + result.stderr)
            self.assertNotIn("Traceback", result.stdout + result.stderr)


    def test_max_idle_without_any_request(self) -> None:
        """No request since start-up (last_request_at null): with --max-idle N a daemon up for
        more than N s is a WARNING like an idle one; up for N s or less, or without --max-idle,
        it is the info line and exit 0."""
        cases = [
            (7200.5, ["--max-idle", "3600"], 1,
             "WARNING: no NIP-46 request since start-up 7200 s ago; idle for more than 3600 s"),
            (3600.0, ["--max-idle", "3600"], 0, "info: no NIP-46 request since start-up"),
            (7200.5, [], 0, "info: no NIP-46 request since start-up"),
        ]
        for uptime, args, code, text in cases:
            body = status_json(last_request_at=None, uptime=uptime)
            result = self.check(self.daemon(status=(200, body)).url, *args)
            self.assertEqual(result.returncode, code, (uptime, args, result.stdout))
            self.assertIn(text, result.stdout)
        body = status_json(last_request_at=None, uptime=7200)
        result = self.check(self.daemon(status=(200, body)).url, KEYCAST_CHECK_MAX_IDLE="60")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("idle for more than 60 s", result.stdout)


class EndpointDerivationTests(SynchronousTestCase):
    """healthcheck.sh and check-signer.sh find the daemon as `keycast check` does: from
    KEYCAST_HEALTH, then PORT, then the default, unless a URL is given (KEYCAST_HEALTH_URL,
    KEYCAST_URL, --url). A stand-in curl records what the scripts ask for."""

    ENDPOINTS: ClassVar[list[str]] = [
        "tcp:18080:interface=127.0.0.1",
        "tcp:18080",
        "tcp:018080",
        "tcp:18080:interface=0.0.0.0",
        "tcp:18080:backlog=50:interface=10.1.2.3",
        "tcp:interface=127.0.0.1:18080",
        "tcp6:18080",
        "tcp6:18080:interface=\\:\\:",
        "tcp6:18080:interface=\\:\\:1",
        "tcp6:18080:interface=fe80\\:\\:1%eth0",
        "unix:/run/keycast/health.sock",
        "unix:/run/keycast/a\\:b.sock:mode=0660",
        "unix:relative.sock",
    ]

    def fake_curl(self) -> tuple[Path, Path]:
        """A bin directory whose curl appends its argv (JSON) to a log and fails like an
        unreachable server (exit 7), and that log."""
        bin_dir = Path(self.mktemp()).resolve()
        bin_dir.mkdir()
        log = bin_dir / "calls.jsonl"
        curl = bin_dir / "curl"
        curl.write_text(
            f"#!{sys.executable}\n"
            "import json, sys\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            "sys.stderr.write('curl: (7) Failed to connect\\n')\n"
            "sys.exit(7)\n"
        )
        curl.chmod(0o755)
        return bin_dir, log

    def probe(self, script: str, env: Mapping[str, str], *args: str) -> tuple[
            subprocess.CompletedProcess[str], tuple[str, str | None]]:
        """Run ``script`` with the stand-in curl; (its result, (URL, --unix-socket or None))."""
        bin_dir, log = self.fake_curl()
        environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
        result = run([str(DEPLOY / script), *args], env=environ)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        self.assertEqual(len(calls), 1, (script, env, calls, result.stdout, result.stderr))
        [argv] = calls
        socket = argv[argv.index("--unix-socket") + 1] if "--unix-socket" in argv else None
        return result, (argv[-1], socket)

    @staticmethod
    def expected(endpoint: str) -> tuple[str, str | None]:
        """Where `keycast check` dials ``endpoint``, as a base URL and a UNIX socket path."""
        from keycast_tw.cli.daemon import target_from_endpoint

        target = target_from_endpoint(endpoint)
        if target.unix_path is not None:
            return "http://localhost", target.unix_path
        host = target.host.replace("%", "%25")
        return f"http://{f'[{host}]' if ':' in host else host}:{target.port}", None

    def test_keycast_health_as_the_cli_reads_it(self) -> None:
        """Every dialable endpoint form gives the address target_from_endpoint gives, in both
        scripts; a PORT beside KEYCAST_HEALTH is ignored, as by the daemon."""
        for endpoint in self.ENDPOINTS:
            base, socket = self.expected(endpoint)
            env = {"KEYCAST_HEALTH": endpoint, "PORT": "9999", "KEYCAST_HEALTH_TIMEOUT": "1"}
            result, got = self.probe("healthcheck.sh", env)
            self.assertEqual(got, (base + "/health", socket), endpoint)
            self.assertEqual(result.returncode, 1, (endpoint, result.stderr))
            self.assertIn("unhealthy: ", result.stderr)
            result, got = self.probe("check-signer.sh", env)
            self.assertEqual(got, (base + "/health", socket), endpoint)
            self.assertEqual(result.returncode, 2, (endpoint, result.stdout))
            where = f"/health on unix:{socket}" if socket else f"{base}/health"
            self.assertIn(f"CRITICAL: {where} not responding", result.stdout)

    def test_parser_installed_beside_both_scripts(self) -> None:
        """Both scripts source health-endpoint.sh from their own directory, and every install
        (the image, install-systemd.sh) puts it there with them."""
        for name in ("healthcheck.sh", "check-signer.sh"):
            self.assertIn('. "$(dirname -- "$0")/health-endpoint.sh"', (DEPLOY / name).read_text())
        dockerfile = " ".join((ROOT / "Dockerfile").read_text().split("\\\n"))
        copy = r"COPY [^\n]*deployment/health-endpoint\.sh[^\n]*/usr/local/bin/"
        self.assertRegex(dockerfile, copy)
        self.assertIn('"$here/health-endpoint.sh"', (DEPLOY / "install-systemd.sh").read_text())

    def test_precedence(self) -> None:
        """A URL beats KEYCAST_HEALTH, which beats PORT, which beats the daemon's default."""
        health = {"KEYCAST_HEALTH": "tcp:18081", "PORT": "18082"}
        cases: list[tuple[str, dict[str, str], list[str], str]] = [
            ("healthcheck.sh", {**health, "KEYCAST_HEALTH_URL": "http://h:1/health"}, [],
             "http://h:1/health"),
            ("healthcheck.sh", health, [], "http://127.0.0.1:18081/health"),
            ("healthcheck.sh", {"PORT": "18082"}, [], "http://127.0.0.1:18082/health"),
            ("healthcheck.sh", {}, [], "http://127.0.0.1:8080/health"),
            ("check-signer.sh", {**health, "KEYCAST_URL": "http://h:2/"}, [],
             "http://h:2/health"),
            ("check-signer.sh", {**health, "KEYCAST_URL": "http://h:2"},
             ["--url", "http://h:3"], "http://h:3/health"),
            ("check-signer.sh", health, [], "http://127.0.0.1:18081/health"),
            ("check-signer.sh", {"PORT": "18082"}, [], "http://127.0.0.1:18082/health"),
            ("check-signer.sh", {}, [], "http://127.0.0.1:8080/health"),
        ]
        for script, env, args, url in cases:
            _, got = self.probe(script, env, *args)
            self.assertEqual(got, (url, None), (script, env, args))

    def test_endpoint_it_cannot_dial(self) -> None:
        """ssl:, systemd: or a malformed setting: one line naming the setting and what to set
        instead, healthcheck.sh 1 (unhealthy), check-signer.sh 3 (UNKNOWN); nothing probed."""
        bin_dir, log = self.fake_curl()
        path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        for env in [{"KEYCAST_HEALTH": "ssl:8443:privateKey=k.pem"},
                    {"KEYCAST_HEALTH": "systemd:domain=INET:index=0"},
                    {"KEYCAST_HEALTH": "tcp:http"}, {"PORT": "eighty"}]:
            result = run([str(DEPLOY / "healthcheck.sh")], env={"PATH": path, **env})
            self.assertEqual(result.returncode, 1, (env, result.stderr))
            self.assertIn("KEYCAST_HEALTH_URL", result.stderr)
            self.assertIn(next(iter(env)), result.stderr)
            result = run([str(DEPLOY / "check-signer.sh")], env={"PATH": path, **env})
            self.assertEqual(result.returncode, 3, (env, result.stdout))
            self.assertIn("UNKNOWN: cannot dial the health endpoint", result.stdout)
            self.assertIn("--url", result.stdout)
        self.assertFalse(log.exists(), log.read_text() if log.exists() else "")

    def test_against_a_stand_in_daemon(self) -> None:
        """With the real curl: a daemon on 127.0.0.1 found through KEYCAST_HEALTH alone (an
        interface of 0.0.0.0 is probed on loopback)."""
        need_tool("curl")
        fake = FakeDaemon({"/health": (200, "OK"), "/ready": (200, '{"ready": true}'),
                           "/status": (200, status_json(last_request_at=time.time()))})
        self.addCleanup(fake.close)
        port = fake.url.rsplit(":", 1)[1]
        for endpoint in (f"tcp:{port}:interface=127.0.0.1", f"tcp:{port}:interface=0.0.0.0"):
            env = {"PATH": os.environ["PATH"], "KEYCAST_HEALTH": endpoint}
            result = run([str(DEPLOY / "healthcheck.sh")], env=env)
            self.assertEqual(result.returncode, 0, (endpoint, result.stderr))
            self.assertIn(f"healthy: http://127.0.0.1:{port}/health answered OK", result.stdout)
            result = run([str(DEPLOY / "check-signer.sh")], env=env)
            self.assertEqual(result.returncode, 0, (endpoint, result.stdout))


class BackupScriptTests(SynchronousTestCase):
    """backup-db.sh with a stand-in keycast: verified copies, 7 days kept, failures reported."""

    def backup(
        self, behaviour: str, backups: Path, *, stamp: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run backup-db.sh; the fake keycast writes a good database, garbage, or fails.

        With ``stamp``, a stand-in ``date`` prints it, so runs share a second."""
        bin_dir = Path(self.mktemp()).resolve()
        bin_dir.mkdir()
        if stamp is not None:
            fake_date = bin_dir / "date"
            fake_date.write_text(f"#!/bin/sh\necho {stamp}\n")
            fake_date.chmod(0o755)
        fake = bin_dir / "keycast"
        fake.write_text(
            f"#!{sys.executable}\n"
            "import sqlite3, sys\n"
            "assert sys.argv[1] == 'backup', sys.argv\n"
            f"behaviour = {behaviour!r}\n"
            "if behaviour == 'fail':\n"
            "    sys.exit('keycast: database locked')\n"
            "if behaviour == 'garbage':\n"
            "    open(sys.argv[2], 'wb').write(b'SQLite format 3\\x00' + b'\\xff' * 4000)\n"
            "else:\n"
            "    db = sqlite3.connect(sys.argv[2])\n"
            "    db.execute('create table t (x)'); db.commit(); db.close()\n"
            "    print(f'Backed up database to {sys.argv[2]}')\n"
        )
        fake.chmod(0o755)
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "KEYCAST_BIN": str(fake),
               "DATABASE_PATH": str(bin_dir / "keycast.db")}
        return run([str(DEPLOY / "backup-db.sh"), str(backups)], env=env)

    def old_backups(self, backups: Path) -> dict[str, int]:
        """Backups dated 3, 6, 7 and 10 days ago, plus an unrelated file."""
        backups.mkdir(parents=True)
        ages = {"keycast-a.db": 3, "keycast-b.db": 6, "keycast-c.db": 7, "keycast-d.db": 10,
                "notes.txt": 30}
        for name, days in ages.items():
            path = backups / name
            path.write_text("x")
            when = time.time() - days * 86400 - 60
            os.utime(path, (when, when))
        return ages

    def test_backup_and_retention(self) -> None:
        """A verified 0600 copy is written; backups 7 or more days old are deleted."""
        backups = Path(self.mktemp()).resolve()
        self.old_backups(backups)
        result = self.backup("good", backups)
        self.assertEqual(result.returncode, 0, result.stderr)
        new = [p for p in backups.glob("keycast-2*.db")]
        self.assertEqual(len(new), 1, list(backups.iterdir()))
        self.assertEqual(stat.S_IMODE(new[0].stat().st_mode), 0o600)
        names = {p.name for p in backups.iterdir()}
        self.assertEqual(names, {new[0].name, "keycast-a.db", "keycast-b.db", "notes.txt"})
        self.assertIn("pruned: ", result.stdout)
        self.assertEqual(result.stdout.splitlines()[0], f"backup written: {new[0]}")

    def test_same_second_names(self) -> None:
        """Runs within one second get keycast-STAMP.db, then -2, -3: none replaces another,
        and each prints one line naming its own file (not keycast's temporary one)."""
        backups = Path(self.mktemp()).resolve()
        backups.mkdir()
        taken = backups / "keycast-20250101-020000.db"
        taken.write_text("an older backup")
        expected = [backups / "keycast-20250101-020000-2.db",
                    backups / "keycast-20250101-020000-3.db"]
        for path in expected:
            result = self.backup("good", backups, stamp="20250101-020000")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stdout, f"backup written: {path}\n")
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(taken.read_text(), "an older backup")
        self.assertEqual(sorted(p.name for p in backups.iterdir()),
                         sorted(p.name for p in [taken, *expected]))

    def test_failures_keep_old_backups(self) -> None:
        """A failed or corrupt copy exits 1, leaves nothing behind and prunes nothing."""
        for behaviour in ("fail", "garbage"):
            backups = Path(self.mktemp()).resolve()
            ages = self.old_backups(backups)
            result = self.backup(behaviour, backups)
            self.assertEqual(result.returncode, 1, (behaviour, result.stdout, result.stderr))
            self.assertEqual({p.name for p in backups.iterdir()}, set(ages), behaviour)
            self.assertIn("backup-db.sh:", result.stderr)

    def test_bad_retention(self) -> None:
        """A retention that is not a whole number of days >= 1 is refused (exit 2)."""
        for keep in ("0", "seven", "-1"):
            env = {"PATH": os.environ["PATH"], "KEYCAST_BACKUP_KEEP_DAYS": keep}
            result = run([str(DEPLOY / "backup-db.sh"), os.path.abspath(self.mktemp())], env=env)
            self.assertEqual(result.returncode, 2, keep)
            self.assertIn("KEYCAST_BACKUP_KEEP_DAYS", result.stderr)


class InstallScriptTests(SynchronousTestCase):
    """install-systemd.sh into a staging root: user, directories, modes, files."""

    def install(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        if os.getuid() != 0:
            raise SkipTest("install-systemd.sh chowns files: run the suite as root")
        user = pwd.getpwuid(os.getuid()).pw_name
        return run([str(DEPLOY / "install-systemd.sh"), "--root", str(root), "--user", user,
                    "--no-venv", *args])

    def walk_modes(self, root: Path) -> Iterator[tuple[str, int]]:
        for path in sorted(root.rglob("*")):
            yield "/" + path.relative_to(root).as_posix(), stat.S_IMODE(path.stat().st_mode)

    def test_layout(self) -> None:
        """Directories, modes and files match the unit's paths; a rerun changes nothing."""
        root = Path(self.mktemp()).resolve()
        root.mkdir()
        key = Path(self.mktemp()).resolve()
        key.write_text("A" * 43 + "=\n")
        result = self.install(root, "--master-key", str(key))
        self.assertEqual(result.returncode, 0, result.stderr)
        modes = dict(self.walk_modes(root))
        expected = {
            "/opt/keycast": 0o755, "/opt/keycast/database": 0o700,
            "/opt/keycast/backups": 0o700, "/opt/keycast/master.key": 0o600,
            "/var/log/keycast": 0o750, "/etc/keycast": 0o750,
            "/etc/keycast/keycast.env": 0o640,
            "/etc/systemd/system/keycast-signer.service": 0o644,
            "/opt/keycast/scripts/check-signer.sh": 0o755,
            "/opt/keycast/scripts/backup-db.sh": 0o755,
            "/opt/keycast/scripts/healthcheck.sh": 0o755,
        }
        for path, mode in expected.items():
            self.assertEqual(oct(modes.get(path, 0)), oct(mode), path)
        self.assertEqual(
            (root / "etc/systemd/system/keycast-signer.service").read_text(),
            (DEPLOY / "keycast-signer.service").read_text(),
        )
        unit = read_unit((DEPLOY / "keycast-signer.service").read_text())
        env = unit_environment(unit)
        self.assertTrue((root / env["MASTER_KEY_PATH"].lstrip("/")).exists())
        self.assertTrue((root / os.path.dirname(env["DATABASE_PATH"]).lstrip("/")).is_dir())
        self.assertIn("EnvironmentFile=-/etc/keycast/keycast.env",
                      (DEPLOY / "keycast-signer.service").read_text())
        (root / "etc/keycast/keycast.env").write_text("KEYCAST_LOG_LEVEL=debug\n")
        again = self.install(root, "--master-key", str(key))
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(dict(self.walk_modes(root)), modes)
        self.assertEqual((root / "etc/keycast/keycast.env").read_text(),
                         "KEYCAST_LOG_LEVEL=debug\n")

    def test_refuses_to_replace_a_master_key(self) -> None:
        """A different master key is never written over the installed one."""
        root = Path(self.mktemp()).resolve()
        root.mkdir()
        first, second = Path(self.mktemp()).resolve(), Path(self.mktemp()).resolve()
        first.write_text("A" * 43 + "=\n")
        second.write_text("B" * 43 + "=\n")
        self.assertEqual(self.install(root, "--master-key", str(first)).returncode, 0)
        result = self.install(root, "--master-key", str(second))
        self.assertEqual(result.returncode, 1)
        self.assertIn("refusing to replace", result.stderr)
        self.assertEqual((root / "opt/keycast/master.key").read_text(), first.read_text())

    def test_bad_usage(self) -> None:
        """Unknown arguments and a missing key file are refused with a message."""
        root = Path(self.mktemp()).resolve()
        root.mkdir()
        for args in (["--bogus"], ["--master-key", "/nonexistent/key"]):
            result = self.install(root, *args)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn("install-systemd.sh:", result.stderr)


class RunbookTests(SynchronousTestCase):
    """docs/operations.md names only artefacts that exist."""

    def test_referenced_files_exist(self) -> None:
        """Every deployment/ path and script the runbook names is in the tree."""
        text = (ROOT / "docs" / "operations.md").read_text()
        paths = set(re.findall(r"deployment/[\w./-]*\w", text))
        self.assertTrue(paths)
        for path in paths:
            self.assertTrue((ROOT / path).exists(), path)
        for script in re.findall(r"/opt/keycast/scripts/([\w-]+\.sh)", text):
            self.assertTrue((DEPLOY / script).exists(), script)
